"""Numba kernels for llama.cpp's (ggml's) block formats: quantize and dequantize at C speed.

Each kernel is the exact twin of a format class in :mod:`refquant.formats.ggml` (the
NumPy reference), and therefore of ggml's ``quantize_row_<type>_ref`` /
``dequantize_row_<type>``: float32 blocks in, uint8 blocks out, and back. Blocks
are independent, so the outer loop is a ``prange`` over blocks; inside a block
the code follows ggml-quants.c statement by statement.

How bit-exactness is kept (the same rules as the reference):

* Every float is a float32 and every operation a float32 operation in C's order
  (``w*x[i]*l`` is ``(w*x)*float(l)``); no Python float or int meets a float32
  without an explicit ``np.float32`` (Numba would widen to float64).
* Sums are C's sequential loops. ``fastmath`` is off (no reassociation, no FMA
  contraction: libggml's C reference is built without contraction; checked with
  ``inspect_asm`` in the tests: no ``vfmadd``).
* ``error_model="numpy"``: a float division by zero gives ±Inf/NaN as in C
  (Numba's default would raise ``ZeroDivisionError``).
* ``nearest_int`` is ggml's bit trick (add 1.5·2^23, read the low mantissa bits);
  C's float -> int conversions that ggml leaves undefined (NaN, Inf, out of
  range) follow x86-64's ``cvttss2si`` (INT32_MIN), as the reference does.
* fp16 scales: float32 -> fp16 by round to nearest even with overflow to ±Inf
  (``GGML_FP32_TO_FP16``); fp16 -> float32 through a 65536-entry table (exact).

Nothing here imports from ``refquant.quant``, ``refquant.formats`` or
``refquant.compat``: the format classes validate and call :func:`quantize_blocks`
/ :func:`dequantize_blocks` with a contiguous float32 / uint8 2-D array. Importing
this module imports Numba but compiles nothing: each kernel compiles on its
first call (and is cached on disk, ``cache=True``).

Reference: ggml-org/llama.cpp ``ggml/src/ggml-quants.c`` (``quantize_row_*_ref``,
``dequantize_row_*``, ``make_qx_quants``, ``make_q3_quants``, ``make_qkx2_quants``),
``ggml/src/ggml-common.h`` (block layouts; diagrams in :mod:`refquant.formats.ggml`).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = [
    "QUANTIZE_KERNELS",
    "DEQUANTIZE_KERNELS",
    "FINITE_CHECKING",
    "all_finite",
    "quantize_blocks",
    "quantize_finite_blocks",
    "dequantize_blocks",
]

_F32 = np.float32
QK_K = 256
_EPS = np.float32(1e-15)  # GROUP_MAX_EPS
_MAGIC = np.float32(12582912.0)  # 1.5 * 2^23, nearest_int
_TWO24 = np.float32(16777216.0)
_I32_LIMIT = np.float32(2147483648.0)
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)
_TENTH = np.float32(0.1)

# every fp16 bit pattern -> its float32 value (GGML_FP16_TO_FP32 is exact)
_FP16_TABLE = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(_F32)

# fastmath off (the default), float division by zero gives Inf/NaN as in C
_OPTS = dict(cache=True, nogil=True, error_model="numpy")
_PAR = dict(cache=True, nogil=True, error_model="numpy", parallel=True)
_CHUNK = 64  # blocks per prange step of the K-quant kernels (scratch allocated once per step)


# --------------------------------------------------------------------------- scalar helpers
@njit(**_OPTS)
def _nearest_int(v):
    """ggml's nearest_int: round half to even for |v| < 2^22, C's bits beyond."""
    s = np.float32(np.float32(v) + _MAGIC)
    i = np.int64(np.float32(s).view(np.int32))
    return (i & 0x007FFFFF) - 0x00400000


@njit(**_OPTS)
def _nearest_int32(v):
    """:func:`_nearest_int` in int32 arithmetic (the same bits): loops over it vectorize."""
    s = np.float32(np.float32(v) + _MAGIC)
    return (s.view(np.int32) & np.int32(0x007FFFFF)) - np.int32(0x00400000)


@njit(**_OPTS)
def _cvtt(v):
    """C float -> int32 on x86-64 (cvttss2si): truncation; NaN, Inf, out of range -> INT32_MIN."""
    if abs(v) < _I32_LIMIT:
        return np.int64(v)
    return np.int64(-2147483648)


@njit(**_OPTS)
def _lroundf_int(v):
    """(int)lroundf(v): half away from zero (exact in float64); NaN/Inf -> LONG_MIN -> low 32 bits 0."""
    a = abs(np.float64(v))
    if not a < 1e300:  # Inf or NaN
        return np.int64(0)
    r = np.floor(a + 0.5)
    if v < 0:
        r = -r
    return np.int64(r)


@njit(**_OPTS)
def _roundf_cvtt(v):
    """``(int8_t)roundf(v)`` as x86-64 does it: roundf half away from zero, then cvttss2si."""
    a = abs(np.float64(v))
    if not a < 2147483648.0:  # huge, Inf or NaN: roundf keeps it, cvttss2si gives INT32_MIN
        return np.int64(-2147483648)
    r = np.floor(a + 0.5)
    if v < 0:
        r = -r
    if not abs(r) < 2147483648.0:
        return np.int64(-2147483648)
    return np.int64(r)


@njit(**_OPTS)
def _fp16_bits(f):
    """GGML_FP32_TO_FP16 of a float32: round to nearest even, overflow to ±Inf (uint16 bits)."""
    b = np.int64(np.float32(f).view(np.uint32))
    sign = (b >> 16) & 0x8000
    a = b & 0x7FFFFFFF
    if a > 0x7F800000:  # NaN: quiet, top mantissa bits kept
        return sign | 0x7E00 | ((a >> 13) & 0x3FF)
    if a >= 0x477FF000:  # >= 65520 rounds to Inf
        return sign | 0x7C00
    if a < 0x38800000:  # below 2^-14: an fp16 subnormal (or zero); |f| * 2^24 is exact
        q = np.rint(np.float32(abs(np.float32(f)) * _TWO24))
        return sign | np.int64(q)
    r = a - 0x38000000  # rebias the exponent from 127 to 15
    r = r + 0xFFF + ((r >> 13) & 1)  # round the 13 dropped bits to nearest even
    return sign | (r >> 13)


@njit(**_OPTS)
def _put_u16(out, off, v):
    out[off] = v & 0xFF
    out[off + 1] = (v >> 8) & 0xFF


@njit(**_OPTS)
def _get_u16(raw, off):
    return np.int64(raw[off]) | (np.int64(raw[off + 1]) << 8)


@njit(**_OPTS)
def _first_absmax(x, start, n):
    """``if (fabsf(v) > amax) {amax = fabsf(v); max = v;}`` from 0: (amax, signed max).

    Computed in two passes that vectorize: the largest |v| as the integer maximum of
    the bits of |v| (the same order as the floats for finite values), then the first
    element of that magnitude. An all-zero group gives (+0, +0), as in C.
    """
    top = 0
    for j in range(start, start + n):
        b = np.int64(np.float32(x[j]).view(np.uint32)) & 0x7FFFFFFF
        top = b if b > top else top
    if top == 0:
        return _ZERO, _ZERO
    for j in range(start, start + n):
        if (np.int64(np.float32(x[j]).view(np.uint32)) & 0x7FFFFFFF) == top:
            return abs(x[j]), x[j]
    return _ZERO, _ZERO


@njit(**_OPTS)
def _absmax(x):
    """``amax = MAX(amax, fabsf(v))`` from 0."""
    amax = _ZERO
    for j in range(x.shape[0]):
        ax = abs(x[j])
        if amax <= ax:  # MAX(a, b) = a > b ? a : b
            amax = ax
    return amax


@njit(**_OPTS)
def _nonfinite(x):
    """1 if the float32 row ``x`` holds a NaN / ±Inf (an all-ones exponent), else 0.

    The legacy kernels run it on each block while it is in L1 and sum it over the
    blocks: the finiteness check folded into the kernel instead of a pass of its own.
    """
    bad = np.int32(0)
    for j in range(x.shape[0]):
        bad |= np.int32((np.float32(x[j]).view(np.int32) & np.int32(0x7F800000)) == np.int32(0x7F800000))
    return bad


# --------------------------------------------------------------------------- legacy formats
@njit(**_OPTS)
def _cvtt_byte(v):
    """``(int8_t)(int)v`` as a byte, branch-free so that code loops vectorize (cvttps2dq).

    x86-64's cvttss2si truncates; NaN, Inf and |v| >= 2^31 give INT32_MIN, whose low byte
    is 0: the conversion sees 0 there instead (in range, so LLVM's fptosi is defined).
    """
    ok = abs(v) < _I32_LIMIT
    return np.int32(v if ok else _ZERO) & np.int32(0xFF)


@njit(**_OPTS)
def _q_sym_scale(x, nmax):
    """Q4_0 / Q5_0: (d, id) with d = max/-nmax, max the signed value of largest |x| (first one).

    C's loop as it stands (``if (amax < fabsf(v)) {amax = fabsf(v); max = v;}``): measured on
    Zen 5 faster than two vectorized passes (int max of the bits, then the first index).
    """
    amax = _ZERO
    mx = _ZERO
    for j in range(32):
        v = x[j]
        if amax < abs(v):
            amax = abs(v)
            mx = v
    d = np.float32(mx / np.float32(-nmax))
    return d, (np.float32(_ONE / d) if d != 0 else _ZERO)


@njit(**_OPTS)
def _wild(t):
    """1 where cvttss2si of ``t`` is out of range (NaN, ±Inf, |t| >= 2^31), else 0.

    The legacy kernels OR it over a block's code arguments: a NaN / ±Inf input always
    makes one of them NaN (NaN*id, Inf*0 with id = 1/Inf = 0, or (v - min)*id likewise),
    so a block with no flag is finite; a flagged one may still be finite (id = 1/d
    overflowing for a tiny block) and the caller then looks at the bits.
    """
    return np.int32(t != t)


@njit(**_OPTS)
def _q_sym_arg(v, idd, nmax):
    """v*id + nmax + 0.5 in float32, as C computes it."""
    return np.float32(np.float32(v * idd) + np.float32(nmax + 0.5))


@njit(**_OPTS)
def _q_sym_byte(t, nmax):
    """MIN(2nmax-1, (int8_t)t) as a byte: a negative int8 passes through MIN."""
    c = _cvtt_byte(t)
    return c if c >= 128 else min(np.int32(2 * nmax - 1), c)


@njit(**_PAR)
def _quantize_q4_0(x, out):
    nbad = 0
    for i in prange(x.shape[0]):
        d, idd = _q_sym_scale(x[i], 8)
        _put_u16(out[i], 0, _fp16_bits(d))
        bad = np.int32(0)
        for j in range(16):
            t0 = _q_sym_arg(x[i, j], idd, 8)
            t1 = _q_sym_arg(x[i, j + 16], idd, 8)
            bad |= _wild(t0) | _wild(t1)
            c0 = _q_sym_byte(t0, 8)
            c1 = _q_sym_byte(t1, 8)
            out[i, 2 + j] = (c0 | (c1 << 4)) & 0xFF
        nbad += bad
    return nbad


@njit(**_PAR)
def _quantize_q5_0(x, out):
    nbad = 0
    for i in prange(x.shape[0]):
        d, idd = _q_sym_scale(x[i], 16)
        _put_u16(out[i], 0, _fp16_bits(d))
        qh = 0
        bad = np.int32(0)
        for j in range(16):
            t0 = _q_sym_arg(x[i, j], idd, 16)
            t1 = _q_sym_arg(x[i, j + 16], idd, 16)
            bad |= _wild(t0) | _wild(t1)
            c0 = _q_sym_byte(t0, 16)
            c1 = _q_sym_byte(t1, 16)
            qh |= (((c0 >> 4) & 1) << j) | (((c1 >> 4) & 1) << (j + 16))
            out[i, 6 + j] = (c0 & 0xF) | ((c1 & 0xF) << 4)
        for k in range(4):
            out[i, 2 + k] = (qh >> (8 * k)) & 0xFF
        nbad += bad
    return nbad


@njit(**_OPTS)
def _q_affine_scale(x, levels):
    """Q4_1 / Q5_1: (d, id, min) with d = (max - min)/levels.

    C's ``if (v < min) min = v; if (v > max) max = v;`` as it stands (from x[0] instead of
    ±FLT_MAX: the same bits for finite x; the first of +0/-0 met is kept, as in C).
    """
    mn = x[0]
    mx = x[0]
    for j in range(1, 32):
        v = x[j]
        if v < mn:
            mn = v
        if v > mx:
            mx = v
    d = np.float32(np.float32(mx - mn) / np.float32(levels))
    return d, (np.float32(_ONE / d) if d != 0 else _ZERO), mn


@njit(**_OPTS)
def _q_affine_arg(v, mn, idd):
    """(v - min)*id + 0.5 in float32 (what C's (int) then truncates)."""
    return np.float32(np.float32(np.float32(v - mn) * idd) + _HALF)


@njit(**_PAR)
def _quantize_q4_1(x, out):
    nbad = 0
    for i in prange(x.shape[0]):
        d, idd, mn = _q_affine_scale(x[i], 15)
        _put_u16(out[i], 0, _fp16_bits(d))
        _put_u16(out[i], 2, _fp16_bits(mn))
        bad = np.int32(0)
        for j in range(16):
            t0 = _q_affine_arg(x[i, j], mn, idd)
            t1 = _q_affine_arg(x[i, j + 16], mn, idd)
            bad |= _wild(t0) | _wild(t1)
            c0 = _cvtt_byte(t0)
            c1 = _cvtt_byte(t1)
            c0 = c0 if c0 >= 128 else min(np.int32(15), c0)  # MIN(15, (int8_t)...)
            c1 = c1 if c1 >= 128 else min(np.int32(15), c1)
            out[i, 4 + j] = (c0 | (c1 << 4)) & 0xFF
        nbad += bad
    return nbad


@njit(**_PAR)
def _quantize_q5_1(x, out):
    nbad = 0
    for i in prange(x.shape[0]):
        d, idd, mn = _q_affine_scale(x[i], 31)
        _put_u16(out[i], 0, _fp16_bits(d))
        _put_u16(out[i], 2, _fp16_bits(mn))
        qh = 0
        bad = np.int32(0)
        for j in range(16):
            t0 = _q_affine_arg(x[i, j], mn, idd)
            t1 = _q_affine_arg(x[i, j + 16], mn, idd)
            bad |= _wild(t0) | _wild(t1)
            c0 = _cvtt_byte(t0)  # (uint8_t)(...): no clamp in C
            c1 = _cvtt_byte(t1)
            qh |= (((c0 >> 4) & 1) << j) | (((c1 >> 4) & 1) << (j + 16))
            out[i, 8 + j] = (c0 & 0xF) | ((c1 & 0xF) << 4)
        for k in range(4):
            out[i, 4 + k] = (qh >> (8 * k)) & 0xFF
        nbad += bad
    return nbad


@njit(**_OPTS)
def _q8_codes(x, out, off):
    """Q8_0 / Q8_1: d = amax/127, byte = (int8_t)roundf(x*id); returns (d, sum of the int8 codes)."""
    d = np.float32(_absmax(x) / np.float32(127))
    idd = np.float32(_ONE / d) if d != 0 else _ZERO
    total = 0
    for j in range(32):
        c = _roundf_cvtt(np.float32(x[j] * idd)) & 0xFF
        out[off + j] = c
        total += c - 256 if c >= 128 else c
    return d, total


@njit(**_PAR)
def _quantize_q8_0(x, out):
    nbad = 0
    for i in prange(x.shape[0]):
        nbad += _nonfinite(x[i])
        d, _ = _q8_codes(x[i], out[i], 2)
        _put_u16(out[i], 0, _fp16_bits(d))
    return nbad


@njit(**_PAR)
def _quantize_q8_1(x, out):
    nbad = 0
    for i in prange(x.shape[0]):
        nbad += _nonfinite(x[i])
        d, total = _q8_codes(x[i], out[i], 4)
        _put_u16(out[i], 0, _fp16_bits(d))
        _put_u16(out[i], 2, _fp16_bits(np.float32(np.float32(total) * d)))
    return nbad


@njit(**_PAR)
def _dequantize_q4_0(raw, out, t16):
    for i in prange(raw.shape[0]):
        d = t16[_get_u16(raw[i], 0)]
        for j in range(16):
            b = np.int64(raw[i, 2 + j])
            out[i, j] = np.float32((b & 0xF) - 8) * d
            out[i, j + 16] = np.float32((b >> 4) - 8) * d


@njit(**_PAR)
def _dequantize_q4_1(raw, out, t16):
    for i in prange(raw.shape[0]):
        d = t16[_get_u16(raw[i], 0)]
        m = t16[_get_u16(raw[i], 2)]
        for j in range(16):
            b = np.int64(raw[i, 4 + j])
            out[i, j] = np.float32(np.float32(b & 0xF) * d) + m
            out[i, j + 16] = np.float32(np.float32(b >> 4) * d) + m


@njit(**_PAR)
def _dequantize_q5_0(raw, out, t16):
    for i in prange(raw.shape[0]):
        d = t16[_get_u16(raw[i], 0)]
        qh = _get_u16(raw[i], 2) | (_get_u16(raw[i], 4) << 16)
        for j in range(16):
            b = np.int64(raw[i, 6 + j])
            lo = (b & 0xF) | (((qh >> j) & 1) << 4)
            hi = (b >> 4) | (((qh >> (j + 16)) & 1) << 4)
            out[i, j] = np.float32(lo - 16) * d
            out[i, j + 16] = np.float32(hi - 16) * d


@njit(**_PAR)
def _dequantize_q5_1(raw, out, t16):
    for i in prange(raw.shape[0]):
        d = t16[_get_u16(raw[i], 0)]
        m = t16[_get_u16(raw[i], 2)]
        qh = _get_u16(raw[i], 4) | (_get_u16(raw[i], 6) << 16)
        for j in range(16):
            b = np.int64(raw[i, 8 + j])
            lo = (b & 0xF) | (((qh >> j) & 1) << 4)
            hi = (b >> 4) | (((qh >> (j + 16)) & 1) << 4)
            out[i, j] = np.float32(np.float32(lo) * d) + m
            out[i, j + 16] = np.float32(np.float32(hi) * d) + m


@njit(**_OPTS)
def _dequantize_q8_into(raw, off, d, out):
    for j in range(out.shape[0]):
        c = np.int64(raw[off + j])
        out[j] = np.float32(c - 256 if c >= 128 else c) * d


@njit(**_PAR)
def _dequantize_q8_0(raw, out, t16):
    for i in prange(raw.shape[0]):
        _dequantize_q8_into(raw[i], 2, t16[_get_u16(raw[i], 0)], out[i])


@njit(**_PAR)
def _dequantize_q8_1(raw, out, t16):
    for i in prange(raw.shape[0]):
        _dequantize_q8_into(raw[i], 4, t16[_get_u16(raw[i], 0)], out[i])


# --------------------------------------------------------------------------- K-quant searches
@njit(**_OPTS)
def _make_qx_lanes(xt, nmax, Lt, scales):
    """ggml's make_qx_quants(n, nmax, x, L, rmse_type=1, NULL) on S sub-blocks at once (``xt[i, s]``: element i of sub-block s).

    Bit-identical lane by lane (each sum its own float32 chain, in order); the inner
    loops run across lanes so that LLVM vectorizes them. Lanes with max|x| < 1e-15,
    which C leaves early, run along and are reset to L = 0, scale 0.
    """
    n, S = xt.shape
    amax = np.zeros(S, np.float32)
    mx = np.zeros(S, np.float32)
    for i in range(n):
        for s in range(S):
            v = xt[i, s]
            ax = abs(v)
            big = ax > amax[s]
            amax[s] = ax if big else amax[s]
            mx[s] = v if big else mx[s]
    iscale = np.empty(S, np.float32)
    sumlx = np.zeros(S, np.float32)
    suml2 = np.zeros(S, np.float32)
    for s in range(S):
        iscale[s] = np.float32(np.float32(-nmax) / mx[s])
    for i in range(n):
        for s in range(S):
            v = xt[i, s]
            lq = max(-nmax, min(nmax - 1, _nearest_int(np.float32(iscale[s] * v))))
            Lt[i, s] = lq + nmax
            w = np.float32(v * v)
            lf = np.float32(lq)
            sumlx[s] = np.float32(sumlx[s] + np.float32(np.float32(w * v) * lf))
            suml2[s] = np.float32(suml2[s] + np.float32(np.float32(w * lf) * lf))
    scale = np.empty(S, np.float32)
    best = np.empty(S, np.float32)
    for s in range(S):
        scale[s] = np.float32(sumlx[s] / suml2[s]) if suml2[s] != 0 else _ZERO
        best[s] = np.float32(scale[s] * sumlx[s])
    for step in range(-9, 10):
        if step == 0:
            continue
        num = -np.float32(np.float32(nmax) + np.float32(_TENTH * np.float32(step)))
        for s in range(S):
            iscale[s] = np.float32(num / mx[s])
            sumlx[s] = _ZERO
            suml2[s] = _ZERO
        for i in range(n):
            for s in range(S):
                v = xt[i, s]
                lq = max(-nmax, min(nmax - 1, _nearest_int(np.float32(iscale[s] * v))))
                w = np.float32(v * v)
                lf = np.float32(lq)
                sumlx[s] = np.float32(sumlx[s] + np.float32(np.float32(w * v) * lf))
                suml2[s] = np.float32(suml2[s] + np.float32(np.float32(w * lf) * lf))
        for s in range(S):
            if suml2[s] > 0 and np.float32(sumlx[s] * sumlx[s]) > np.float32(best[s] * suml2[s]):
                for i in range(n):
                    lq = _nearest_int(np.float32(iscale[s] * xt[i, s]))
                    Lt[i, s] = nmax + max(-nmax, min(nmax - 1, lq))
                scale[s] = np.float32(sumlx[s] / suml2[s])
                best[s] = np.float32(scale[s] * sumlx[s])
    for s in range(S):
        if amax[s] < _EPS:
            for i in range(n):
                Lt[i, s] = 0
            scales[s] = _ZERO
        else:
            scales[s] = scale[s]


@njit(**_OPTS)
def _make_q3_lanes(xt, nmax, Lt, scales):
    """ggml's make_q3_quants(n, nmax, x, L, do_rmse=true) on S sub-blocks at once (``xt[i, s]``: element i of sub-block s).

    Each lane runs its own sub-block's coordinate descent: every conditional update of C
    becomes a select on that lane (computed always, kept only where C would take the
    branch), and a lane stops after its first sweep without change, as C's ``break``
    does; sums stay each lane's own float32 chain, in order, so the results are bit-identical.
    """
    n, S = xt.shape
    amax = np.zeros(S, np.float32)
    mx = np.zeros(S, np.float32)
    for i in range(n):
        for s in range(S):
            v = xt[i, s]
            ax = abs(v)
            big = ax > amax[s]
            amax[s] = ax if big else amax[s]
            mx[s] = v if big else mx[s]
    lo = np.int32(-nmax)
    hi = np.int32(nmax - 1)
    iscale = np.empty(S, np.float32)
    sumlx = np.zeros(S, np.float32)
    suml2 = np.zeros(S, np.float32)
    for s in range(S):
        iscale[s] = np.float32(np.float32(-nmax) / mx[s])
    for i in range(n):
        for s in range(S):
            v = xt[i, s]
            lq = max(lo, min(hi, _nearest_int32(np.float32(iscale[s] * v))))
            Lt[i, s] = lq
            w = np.float32(v * v)
            lf = np.float32(lq)
            sumlx[s] = np.float32(sumlx[s] + np.float32(np.float32(w * v) * lf))
            suml2[s] = np.float32(suml2[s] + np.float32(np.float32(w * lf) * lf))
    active = np.ones(S, np.int32)
    changed = np.empty(S, np.int32)
    for _ in range(5):
        for s in range(S):
            changed[s] = 0
        for i in range(n):
            for s in range(S):
                v = xt[i, s]
                w = np.float32(v * v)
                li = Lt[i, s]
                lf = np.float32(li)
                slx = np.float32(sumlx[s] - np.float32(np.float32(w * v) * lf))
                sl2 = np.float32(suml2[s] - np.float32(np.float32(w * lf) * lf))
                new_l = max(lo, min(hi, _nearest_int32(np.float32(np.float32(v * sl2) / slx))))
                nf = np.float32(new_l)
                slx2 = np.float32(slx + np.float32(np.float32(w * v) * nf))
                sl22 = np.float32(sl2 + np.float32(np.float32(w * nf) * nf))
                ok = (
                    (active[s] != 0) & (slx > 0) & (new_l != li) & (sl22 > 0)
                    & (np.float32(np.float32(slx2 * slx2) * suml2[s])
                       > np.float32(np.float32(sumlx[s] * sumlx[s]) * sl22))
                )  # fmt: skip  (no short-circuit: every term is computed, as selects)
                Lt[i, s] = new_l if ok else li
                sumlx[s] = slx2 if ok else sumlx[s]
                suml2[s] = sl22 if ok else suml2[s]
                changed[s] = 1 if ok else changed[s]
        alive = 0
        for s in range(S):
            active[s] = active[s] & changed[s]
            alive += active[s]
        if alive == 0:
            break
    for s in range(S):
        if amax[s] < _EPS:
            for i in range(n):
                Lt[i, s] = 0
            scales[s] = _ZERO
        else:
            for i in range(n):
                Lt[i, s] += nmax
            scales[s] = np.float32(sumlx[s] / suml2[s]) if suml2[s] > 0 else _ZERO


@njit(**_OPTS)
def _make_qkx2_lanes(xt, w, nmax, rmin, rdelta, nstep, use_mad, Lt, scales, mins):
    """make_qkx2_quants on S sub-blocks at once: ``xt[i, s]`` is element i of sub-block s.

    Per sub-block (C's order): min = min(x, 0), scale = (max - min)/nmax; then for
    is = 0..nstep, iscale = (rmin + rdelta*is + nmax)/(max - min) with the best min so
    far, the weighted 2x2 least-squares (scale, min) of those codes (min clamped to <= 0),
    kept when its weighted |error| (use_mad) or error^2 is strictly smaller. Outputs:
    ``Lt`` codes 0..nmax, ``scales``, ``mins`` = -min.

    Each lane s runs exactly the scalar sequence of its own sub-block (every sum is still
    its own left-to-right float32 chain), so the results are bit-identical; the inner
    loops run across the lanes, which LLVM turns into SIMD (independent chains, no
    reassociation). Lanes that C would leave early (max == min) run along and are reset.
    """
    n, S = xt.shape
    mn = np.empty(S, np.float32)
    mx = np.empty(S, np.float32)
    sum_w = np.empty(S, np.float32)
    sum_x = np.empty(S, np.float32)
    for s in range(S):
        mn[s] = xt[0, s]
        mx[s] = xt[0, s]
        sum_w[s] = w[0, s]
        sum_x[s] = np.float32(w[0, s] * xt[0, s])
    for i in range(1, n):
        for s in range(S):
            v = xt[i, s]
            mn[s] = v if v < mn[s] else mn[s]
            mx[s] = v if v > mx[s] else mx[s]
            sum_w[s] = np.float32(sum_w[s] + w[i, s])
            sum_x[s] = np.float32(sum_x[s] + np.float32(w[i, s] * v))
    iscale = np.empty(S, np.float32)
    scale = np.empty(S, np.float32)
    best = np.zeros(S, np.float32)
    mn0 = np.empty(S, np.float32)
    for s in range(S):
        if mn[s] > 0:
            mn[s] = _ZERO
        mn0[s] = mn[s]
        iscale[s] = np.float32(np.float32(nmax) / np.float32(mx[s] - mn[s]))
        scale[s] = np.float32(_ONE / iscale[s])
    for i in range(n):
        for s in range(S):
            v = xt[i, s]
            lq = max(0, min(nmax, _nearest_int(np.float32(iscale[s] * np.float32(v - mn[s])))))
            Lt[i, s] = lq
            diff = np.float32(np.float32(np.float32(scale[s] * np.float32(lq)) + mn[s]) - v)
            diff = abs(diff) if use_mad else np.float32(diff * diff)
            best[s] = np.float32(best[s] + np.float32(w[i, s] * diff))
    laux = np.empty((n, S), np.int32)
    sum_l = np.empty(S, np.float32)
    sum_l2 = np.empty(S, np.float32)
    sum_xl = np.empty(S, np.float32)
    this_scale = np.empty(S, np.float32)
    this_min = np.empty(S, np.float32)
    cur = np.empty(S, np.float32)
    for step in range(nstep + 1):
        num = np.float32(np.float32(rmin + np.float32(rdelta * np.float32(step))) + np.float32(nmax))
        for s in range(S):
            iscale[s] = np.float32(num / np.float32(mx[s] - mn[s]))  # min: the best so far
            sum_l[s] = _ZERO
            sum_l2[s] = _ZERO
            sum_xl[s] = _ZERO
        for i in range(n):
            for s in range(S):
                v = xt[i, s]
                lq = max(0, min(nmax, _nearest_int(np.float32(iscale[s] * np.float32(v - mn[s])))))
                laux[i, s] = lq
                wl = np.float32(w[i, s] * np.float32(lq))
                sum_l[s] = np.float32(sum_l[s] + wl)
                sum_l2[s] = np.float32(sum_l2[s] + np.float32(wl * np.float32(lq)))
                sum_xl[s] = np.float32(sum_xl[s] + np.float32(wl * v))
        for s in range(S):
            det = np.float32(np.float32(sum_w[s] * sum_l2[s]) - np.float32(sum_l[s] * sum_l[s]))
            ts = np.float32(
                np.float32(np.float32(sum_w[s] * sum_xl[s]) - np.float32(sum_x[s] * sum_l[s])) / det
            )
            tm = np.float32(
                np.float32(np.float32(sum_l2[s] * sum_x[s]) - np.float32(sum_l[s] * sum_xl[s])) / det
            )
            if tm > 0:
                tm = _ZERO
                ts = np.float32(sum_xl[s] / sum_l2[s])
            this_scale[s] = ts
            this_min[s] = tm
            cur[s] = _ZERO if det > 0 else np.float32(np.inf)  # det <= 0: never better
        for i in range(n):
            for s in range(S):
                diff = np.float32(
                    np.float32(np.float32(this_scale[s] * np.float32(laux[i, s])) + this_min[s])
                    - xt[i, s]
                )
                diff = abs(diff) if use_mad else np.float32(diff * diff)
                cur[s] = np.float32(cur[s] + np.float32(w[i, s] * diff))
        for s in range(S):
            if cur[s] < best[s]:
                for i in range(n):
                    Lt[i, s] = laux[i, s]
                best[s] = cur[s]
                scale[s] = this_scale[s]
                mn[s] = this_min[s]
    for s in range(S):
        if mx[s] == mn0[s]:  # C returns early: L = 0, scale 0, the_min = -min
            for i in range(n):
                Lt[i, s] = 0
            scales[s] = _ZERO
            mins[s] = np.float32(-mn0[s])
        else:
            scales[s] = scale[s]
            mins[s] = np.float32(-mn[s])


# --------------------------------------------------------------------------- K-quants
@njit(**_OPTS)
def _pack_2bit_128(L, out, off):
    """Per 128 values: byte l = L[l] | L[l+32]<<2 | L[l+64]<<4 | L[l+96]<<6."""
    for j in range(0, QK_K, 128):
        for k in range(32):
            b = L[j + k] | (L[j + k + 32] << 2) | (L[j + k + 64] << 4) | (L[j + k + 96] << 6)
            out[off + j // 4 + k] = b & 0xFF


@njit(**_PAR)
def _quantize_q2_k(x, out, t16):
    for i in prange(x.shape[0]):
        xb = x[i]
        o = out[i]
        L = np.empty(QK_K, np.int64)
        xt = np.empty((16, 16), np.float32)  # xt[k, j] = x[16 j + k]: the 16 sub-blocks as lanes
        w = np.empty((16, 16), np.float32)
        for k in range(16):
            for j in range(16):
                xt[k, j] = xb[16 * j + k]
                w[k, j] = abs(xb[16 * j + k])
        Lt = np.empty((16, 16), np.int32)
        scales = np.empty(16, np.float32)
        mins = np.empty(16, np.float32)
        _make_qkx2_lanes(xt, w, 3, np.float32(-0.5), _TENTH, 15, True, Lt, scales, mins)
        max_scale = _ZERO
        max_min = _ZERO
        for j in range(16):
            for k in range(16):
                L[16 * j + k] = Lt[k, j]
            if scales[j] > max_scale:
                max_scale = scales[j]
            if mins[j] > max_min:
                max_min = mins[j]
        sc = np.zeros(16, np.int64)
        if max_scale > 0:
            iscale = np.float32(np.float32(15) / max_scale)
            for j in range(16):
                sc[j] = _nearest_int(np.float32(iscale * scales[j])) & 0xFF
            d16 = _fp16_bits(np.float32(max_scale / np.float32(15)))
        else:
            d16 = _fp16_bits(_ZERO)
        if max_min > 0:
            iscale = np.float32(np.float32(15) / max_min)
            for j in range(16):
                sc[j] = (sc[j] | (_nearest_int(np.float32(iscale * mins[j])) << 4)) & 0xFF
            m16 = _fp16_bits(np.float32(max_min / np.float32(15)))
        else:
            m16 = _fp16_bits(_ZERO)
        for j in range(16):
            d = np.float32(t16[d16] * np.float32(sc[j] & 0xF))
            if d == 0:
                continue
            dm = np.float32(t16[m16] * np.float32(sc[j] >> 4))
            for k in range(16):
                v = np.float32(np.float32(xb[16 * j + k] + dm) / d)
                L[16 * j + k] = max(0, min(3, _nearest_int(v)))
        for j in range(16):
            o[j] = sc[j]
        _pack_2bit_128(L, o, 16)
        _put_u16(o, 80, d16)
        _put_u16(o, 82, m16)


@njit(**_OPTS)
def _q3_k_block(xb, o, t16, L, xt, Lt, scales, sb):
    """One Q3_K block into ``o``; L, xt, Lt, scales, sb: scratch reused across blocks."""
    for k in range(16):
        for j in range(16):
            xt[k, j] = xb[16 * j + k]
    _make_q3_lanes(xt, 4, Lt, scales)
    amax = _ZERO
    max_scale = _ZERO
    for j in range(16):
        for k in range(16):
            L[16 * j + k] = Lt[k, j]
        s = scales[j]
        if abs(s) > amax:
            amax = abs(s)
            max_scale = s
    for k in range(12):
        sb[k] = 0
    if max_scale != 0:
        iscale = np.float32(np.float32(-32) / max_scale)
        for j in range(16):
            l8 = _nearest_int(np.float32(iscale * scales[j])) & 0xFF
            if l8 >= 128:
                l8 -= 256  # int8_t
            lv = max(-32, min(31, l8)) + 32
            if j < 8:
                sb[j] = lv & 0xF
            else:
                sb[j - 8] |= (lv & 0xF) << 4
            sb[8 + j % 4] |= (lv >> 4) << (2 * (j // 4))
        d16 = _fp16_bits(np.float32(_ONE / iscale))
    else:
        d16 = _fp16_bits(_ZERO)
    for j in range(16):
        lo = sb[j] & 0xF if j < 8 else sb[j - 8] >> 4
        s6 = (lo | (((sb[8 + j % 4] >> (2 * (j // 4))) & 3) << 4)) - 32
        d = np.float32(t16[d16] * np.float32(s6))
        if d == 0:
            continue
        for k in range(16):
            lq = _nearest_int32(np.float32(xb[16 * j + k] / d))
            L[16 * j + k] = max(np.int32(-4), min(np.int32(3), lq)) + 4
    # hmask bit b of byte m = (L[32 b + m] > 3), then L -= 4 there; L is 0..7, so both are
    # bit 2 of L (branch-free: the branch on random codes mispredicts half the time)
    for m in range(32):
        o[m] = 0
    for b in range(8):
        for m in range(32):
            h = L[32 * b + m] >> 2
            o[m] |= h << b
            L[32 * b + m] &= 3
    _pack_2bit_128(L, o, 32)
    for k in range(12):
        o[96 + k] = sb[k] & 0xFF
    _put_u16(o, 108, d16)


@njit(**_PAR)
def _quantize_q3_k(x, out, t16):
    # prange over chunks of blocks: the scratch arrays are allocated once per chunk, not per block
    nblk = x.shape[0]
    for c in prange((nblk + _CHUNK - 1) // _CHUNK):
        L = np.empty(QK_K, np.int64)
        xt = np.empty((16, 16), np.float32)  # xt[k, j] = x[16 j + k]: the 16 sub-blocks as lanes
        Lt = np.empty((16, 16), np.int32)
        scales = np.empty(16, np.float32)
        sb = np.empty(12, np.int64)
        for i in range(c * _CHUNK, min(nblk, (c + 1) * _CHUNK)):
            _q3_k_block(x[i], out[i], t16, L, xt, Lt, scales, sb)


@njit(**_OPTS)
def _qk_affine(xb, nmax, rmin, nstep, L, sc, mn, t16):
    """Q4_K / Q5_K's search: 8 sub-blocks of 32, weights av_x + |x|; returns (d16, m16); sc, mn get 0..63."""
    xt = np.empty((32, 8), np.float32)  # xt[i, j] = x[32 j + i]: the 8 sub-blocks as lanes
    w = np.empty((32, 8), np.float32)
    sum_x2 = np.zeros(8, np.float32)
    for i in range(32):
        for j in range(8):
            v = xb[32 * j + i]
            xt[i, j] = v
            sum_x2[j] = np.float32(sum_x2[j] + np.float32(v * v))
    for j in range(8):
        av_x = np.float32(np.sqrt(np.float32(sum_x2[j] / np.float32(32))))
        for i in range(32):
            w[i, j] = np.float32(av_x + abs(xt[i, j]))
    Lt = np.empty((32, 8), np.int32)
    scales = np.empty(8, np.float32)
    mins = np.empty(8, np.float32)
    _make_qkx2_lanes(xt, w, nmax, rmin, _TENTH, nstep, False, Lt, scales, mins)
    max_scale = _ZERO
    max_min = _ZERO
    for j in range(8):
        for i in range(32):
            L[32 * j + i] = Lt[i, j]
        if scales[j] > max_scale:
            max_scale = scales[j]
        if mins[j] > max_min:
            max_min = mins[j]
    inv_s = np.float32(np.float32(63) / max_scale) if max_scale > 0 else _ZERO
    inv_m = np.float32(np.float32(63) / max_min) if max_min > 0 else _ZERO
    for j in range(8):
        sc[j] = min(63, _nearest_int(np.float32(inv_s * scales[j])) & 0xFF)
        mn[j] = min(63, _nearest_int(np.float32(inv_m * mins[j])) & 0xFF)
    d16 = _fp16_bits(np.float32(max_scale / np.float32(63)))
    m16 = _fp16_bits(np.float32(max_min / np.float32(63)))
    for j in range(8):
        d = np.float32(t16[d16] * np.float32(sc[j]))
        if d == 0:
            continue
        dm = np.float32(t16[m16] * np.float32(mn[j]))
        for k in range(32):
            v = np.float32(np.float32(xb[32 * j + k] + dm) / d)
            L[32 * j + k] = max(0, min(nmax, _nearest_int(v)))
    return d16, m16


@njit(**_OPTS)
def _k4_pack(sc, mn, o, off):
    """8 six-bit scales and mins -> 12 bytes (get_scale_min_k4's layout)."""
    for j in range(4):
        o[off + j] = (sc[j] | ((sc[j + 4] >> 4) << 6)) & 0xFF
        o[off + 4 + j] = (mn[j] | ((mn[j + 4] >> 4) << 6)) & 0xFF
        o[off + 8 + j] = ((sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4)) & 0xFF


@njit(**_PAR)
def _quantize_q4_k(x, out, t16):
    for i in prange(x.shape[0]):
        o = out[i]
        L = np.empty(QK_K, np.int64)
        sc = np.empty(8, np.int64)
        mn = np.empty(8, np.int64)
        d16, m16 = _qk_affine(x[i], 15, np.float32(-1.0), 20, L, sc, mn, t16)
        _put_u16(o, 0, d16)
        _put_u16(o, 2, m16)
        _k4_pack(sc, mn, o, 4)
        for j in range(4):
            for k in range(32):
                o[16 + 32 * j + k] = L[64 * j + k] | (L[64 * j + 32 + k] << 4)


@njit(**_PAR)
def _quantize_q5_k(x, out, t16):
    for i in prange(x.shape[0]):
        o = out[i]
        L = np.empty(QK_K, np.int64)
        sc = np.empty(8, np.int64)
        mn = np.empty(8, np.int64)
        d16, m16 = _qk_affine(x[i], 31, np.float32(-0.5), 15, L, sc, mn, t16)
        _put_u16(o, 0, d16)
        _put_u16(o, 2, m16)
        _k4_pack(sc, mn, o, 4)
        for k in range(32):
            o[16 + k] = 0
        for j in range(4):
            for k in range(32):
                l1 = L[64 * j + k]
                l2 = L[64 * j + 32 + k]
                o[16 + k] |= (((l1 >> 4) & 1) << (2 * j)) | (((l2 >> 4) & 1) << (2 * j + 1))
                o[48 + 32 * j + k] = (l1 & 0xF) | ((l2 & 0xF) << 4)


@njit(**_PAR)
def _quantize_q6_k(x, out, t16):
    for i in prange(x.shape[0]):
        xb = x[i]
        o = out[i]
        L = np.empty(QK_K, np.int64)
        xt = np.empty((16, 16), np.float32)  # xt[k, j] = x[16 j + k]: the 16 sub-blocks as lanes
        for k in range(16):
            for j in range(16):
                xt[k, j] = xb[16 * j + k]
        Lt = np.empty((16, 16), np.int32)
        scales = np.empty(16, np.float32)
        _make_qx_lanes(xt, 32, Lt, scales)
        for j in range(16):
            for k in range(16):
                L[16 * j + k] = Lt[k, j]
        q6_k_finish(xb, scales, L, o, t16)


@njit(**_OPTS)
def q6_k_finish(xb, scales, L, o, t16):
    """The rest of a Q6_K block once its 16 sub-block scales are chosen (``quantize_row_q6_K_ref``
    and ``quantize_row_q6_K_impl`` share it): the scale of scales from the largest |scale| (the
    first one wins a tie, C's strict ``>``), the int8 scales, the codes requantized against them,
    the 4 + 2-bit packing and the fp16 d. An all-tiny block is written as zeros."""
    max_abs = _ZERO
    max_scale = _ZERO
    for j in range(16):
        s = scales[j]
        if abs(s) > max_abs:
            max_abs = abs(s)
            max_scale = s
    if max_abs < _EPS:
        for k in range(210):
            o[k] = 0
        return
    iscale = np.float32(np.float32(-128) / max_scale)
    d16 = _fp16_bits(np.float32(_ONE / iscale))
    for j in range(16):
        s8 = min(127, _nearest_int(np.float32(iscale * scales[j]))) & 0xFF
        o[192 + j] = s8
        if s8 >= 128:
            s8 -= 256
        d = np.float32(t16[d16] * np.float32(s8))
        if d == 0:
            continue
        for k in range(16):
            lq = _nearest_int(np.float32(xb[16 * j + k] / d))
            L[16 * j + k] = max(-32, min(31, lq)) + 32
    for h in range(2):
        for k in range(32):
            b = 128 * h + k
            o[64 * h + k] = (L[b] & 0xF) | ((L[b + 64] & 0xF) << 4)
            o[64 * h + 32 + k] = (L[b + 32] & 0xF) | ((L[b + 96] & 0xF) << 4)
            o[128 + 32 * h + k] = (
                (L[b] >> 4) | ((L[b + 32] >> 4) << 2) | ((L[b + 64] >> 4) << 4)
                | ((L[b + 96] >> 4) << 6)
            )  # fmt: skip
    _put_u16(o, 208, d16)


@njit(**_PAR)
def _quantize_q8_k(x, out):
    for i in prange(x.shape[0]):
        xb = x[i]
        o = out[i]
        amax, mx = _first_absmax(xb, 0, QK_K)
        if amax == 0:
            for k in range(292):
                o[k] = 0
            continue
        iscale = np.float32(np.float32(-127) / mx)
        dbits = np.float32(_ONE / iscale).view(np.int32)
        for k in range(4):
            o[k] = np.uint8((dbits >> (8 * k)) & 0xFF)
        # the codes first (a loop that vectorizes), then bsums from the stored int8 codes
        for j in range(QK_K):
            o[4 + j] = np.uint8(min(np.int32(127), _nearest_int32(np.float32(iscale * xb[j]))) & np.int32(0xFF))
        for g in range(16):
            total = np.int32(0)
            for k in range(16):
                total += np.int32(np.int8(o[4 + 16 * g + k]))
            o[260 + 2 * g] = np.uint8(total & 0xFF)
            o[261 + 2 * g] = np.uint8((total >> 8) & 0xFF)


@njit(**_OPTS)
def _k4_unpack(r, off, j):
    """get_scale_min_k4(j, q): (scale, min) of sub-block j."""
    if j < 4:
        return np.int64(r[off + j]) & 63, np.int64(r[off + j + 4]) & 63
    sc = (np.int64(r[off + j + 4]) & 0xF) | ((np.int64(r[off + j - 4]) >> 6) << 4)
    m = (np.int64(r[off + j + 4]) >> 4) | ((np.int64(r[off + j]) >> 6) << 4)
    return sc, m


@njit(**_PAR)
def _dequantize_q2_k(raw, out, t16):
    for i in prange(raw.shape[0]):
        r = raw[i]
        y = out[i]
        d = t16[_get_u16(r, 80)]
        dmin = t16[_get_u16(r, 82)]
        for j in range(16):  # sub-block j: 16 weights, 2-bit codes at shift 2*((j % 8) // 2)
            s = np.int64(r[j])
            dl = np.float32(d * np.float32(s & 0xF))
            ml = np.float32(dmin * np.float32(s >> 4))
            base = 16 + 32 * (j // 8) + 16 * (j % 2)
            shift = 2 * ((j % 8) // 2)
            for k in range(16):
                q = (np.int64(r[base + k]) >> shift) & 3
                y[16 * j + k] = np.float32(dl * np.float32(q)) - ml


@njit(**_PAR)
def _dequantize_q3_k(raw, out, t16):
    for i in prange(raw.shape[0]):
        r = raw[i]
        y = out[i]
        d = t16[_get_u16(r, 108)]
        for j in range(16):
            lo = np.int64(r[96 + j]) & 0xF if j < 8 else np.int64(r[96 + j - 8]) >> 4
            s6 = (lo | (((np.int64(r[104 + j % 4]) >> (2 * (j // 4))) & 3) << 4)) - 32
            dl = np.float32(d * np.float32(s6))
            base = 32 + 32 * (j // 8) + 16 * (j % 2)
            shift = 2 * ((j % 8) // 2)
            hbit = j // 2  # element e = 16 j + k sits in hmask byte e % 32, bit e // 32
            hoff = 16 * (j % 2)
            for k in range(16):
                low = (np.int64(r[base + k]) >> shift) & 3
                hb = (np.int64(r[hoff + k]) >> hbit) & 1
                y[16 * j + k] = np.float32(dl * np.float32(low - 4 + 4 * hb))


@njit(**_OPTS)
def _dequantize_k4(r, y, t16, five):
    d = t16[_get_u16(r, 0)]
    dmin = t16[_get_u16(r, 2)]
    qoff = 48 if five else 16
    for j in range(8):
        sc, m = _k4_unpack(r, 4, j)
        d1 = np.float32(d * np.float32(sc))
        m1 = np.float32(dmin * np.float32(m))
        for k in range(32):
            b = np.int64(r[qoff + 32 * (j // 2) + k])
            q = (b >> 4) if j % 2 else (b & 0xF)
            if five:
                q |= ((np.int64(r[16 + k]) >> j) & 1) << 4
            y[32 * j + k] = np.float32(d1 * np.float32(q)) - m1


@njit(**_PAR)
def _dequantize_q4_k(raw, out, t16):
    for i in prange(raw.shape[0]):
        _dequantize_k4(raw[i], out[i], t16, False)


@njit(**_PAR)
def _dequantize_q5_k(raw, out, t16):
    for i in prange(raw.shape[0]):
        _dequantize_k4(raw[i], out[i], t16, True)


@njit(**_PAR)
def _dequantize_q6_k(raw, out, t16):
    for i in prange(raw.shape[0]):
        r = raw[i]
        y = out[i]
        d = t16[_get_u16(r, 208)]
        for j in range(16):  # sub-block j: half h, group g of 32, 16 weights at k0
            h = j // 8
            g = (j % 8) // 2
            k0 = 16 * (j % 2)
            s = np.int64(r[192 + j])
            dl = np.float32(d * np.float32(s - 256 if s >= 128 else s))
            qlo = 64 * h + 32 * (g % 2)
            nib = 4 * (g // 2)
            for k in range(k0, k0 + 16):
                low = (np.int64(r[qlo + k]) >> nib) & 0xF
                high = (np.int64(r[128 + 32 * h + k]) >> (2 * g)) & 3
                y[128 * h + 32 * g + k] = np.float32(dl * np.float32((low | (high << 4)) - 32))


@njit(**_PAR)
def _dequantize_q8_k(raw, out):
    for i in prange(raw.shape[0]):
        d = raw[i, 0:4].copy().view(np.float32)[0]
        _dequantize_q8_into(raw[i], 4, d, out[i])


# --------------------------------------------------------------------------- ternary
@njit(**_OPTS)
def _tq_trit(v, idd):
    """lroundf(v * id) + 1: -1, 0, 1 -> 0, 1, 2 (half away from zero)."""
    return _lroundf_int(np.float32(v * idd)) + 1


@njit(**_OPTS)
def _tq_scale(xb):
    d = _absmax(xb)
    return d, (np.float32(_ONE / d) if d != 0 else _ZERO)


@njit(**_OPTS)
def _base3_byte(q):
    """ceil(q * 256 / 243) of the uint8 Horner sum, stored as a byte."""
    return (((q & 0xFF) * 256 + 242) // 243) & 0xFF


@njit(**_PAR)
def _quantize_tq1_0(x, out):
    for i in prange(x.shape[0]):
        xb = x[i]
        o = out[i]
        d, idd = _tq_scale(xb)
        for m in range(32):  # qs[0:32]: x[m + 32 n], n = 0..4, first trit most significant
            q = 0
            for n in range(5):
                q = (q * 3 + _tq_trit(xb[m + 32 * n], idd)) & 0xFF
            o[m] = _base3_byte(q)
        for m in range(16):  # qs[32:48]: x[160 + m + 16 n]
            q = 0
            for n in range(5):
                q = (q * 3 + _tq_trit(xb[160 + m + 16 * n], idd)) & 0xFF
            o[32 + m] = _base3_byte(q)
        for j in range(4):  # qh[0:4]: x[240 + j + 4 n], n = 0..3, then one trit up
            q = 0
            for n in range(4):
                q = (q * 3 + _tq_trit(xb[240 + j + 4 * n], idd)) & 0xFF
            o[48 + j] = _base3_byte((q * 3) & 0xFF)
        _put_u16(o, 52, _fp16_bits(d))


@njit(**_PAR)
def _quantize_tq2_0(x, out):
    for i in prange(x.shape[0]):
        xb = x[i]
        o = out[i]
        d, idd = _tq_scale(xb)
        for h in range(2):
            for m in range(32):
                q = 0
                for n in range(4):
                    q += (_tq_trit(xb[128 * h + m + 32 * n], idd) & 3) << (2 * n)
                o[32 * h + m] = q & 0xFF
        _put_u16(o, 64, _fp16_bits(d))


@njit(**_OPTS)
def _base3_trit(b, n):
    """Trit n of a TQ1_0 byte: ((uint8)(b * 3^n) * 3) >> 8."""
    p = 1
    for _ in range(n):
        p *= 3
    return (((b * p) & 0xFF) * 3) >> 8


@njit(**_PAR)
def _dequantize_tq1_0(raw, out, t16):
    for i in prange(raw.shape[0]):
        r = raw[i]
        y = out[i]
        d = t16[_get_u16(r, 52)]
        for n in range(5):
            for m in range(32):
                y[32 * n + m] = np.float32(_base3_trit(np.int64(r[m]), n) - 1) * d
            for m in range(16):
                y[160 + 16 * n + m] = np.float32(_base3_trit(np.int64(r[32 + m]), n) - 1) * d
        for n in range(4):
            for j in range(4):
                y[240 + 4 * n + j] = np.float32(_base3_trit(np.int64(r[48 + j]), n) - 1) * d


@njit(**_PAR)
def _dequantize_tq2_0(raw, out, t16):
    for i in prange(raw.shape[0]):
        r = raw[i]
        y = out[i]
        d = t16[_get_u16(r, 64)]
        for h in range(2):
            for n in range(4):
                for m in range(32):
                    q = (np.int64(r[32 * h + m]) >> (2 * n)) & 3
                    y[128 * h + 32 * n + m] = np.float32(q - 1) * d


# --------------------------------------------------------------------------- ggml MXFP4
# ggml-common.h kvalues_mxfp4: the e2m1 values doubled, sign in bit 3
_KVALUES_MXFP4 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.float32)


@njit(**_OPTS)
def _e8m0_half(e):
    """GGML_E8M0_TO_FP32_HALF: 2^(e - 128) from the bits (e < 2: the subnormals 2^-128, 2^-127)."""
    bits = (0x00200000 << e) if e < 2 else ((e - 1) << 23)
    return np.uint32(bits).view(np.float32)


@njit(**_PAR)
def _quantize_ggml_mxfp4(x, out, kv):
    for i in prange(x.shape[0]):
        xb = x[i]
        o = out[i]
        amax = _ZERO
        for j in range(32):
            if amax < abs(xb[j]):
                amax = abs(xb[j])
        e = 0
        if amax > 0:  # floorf(log2f(amax)) - 2 + 127, log2f correctly rounded to float32
            lg = np.float32(np.log2(np.float64(amax)))
            ev = np.float32(np.float32(np.floor(lg) - np.float32(2)) + np.float32(127))
            e = _cvtt(ev) & 0xFF
        d = _e8m0_half(e)
        o[0] = e
        grid = np.empty(16, np.float32)
        for k in range(16):
            grid[k] = np.float32(kv[k] * d)
        idx = np.empty(32, np.int32)
        for j in range(32):  # best_index_mxfp4, branch-free so that it vectorizes over j
            v = xb[j]
            best = 0
            best_err = abs(np.float32(grid[0] - v))
            for k in range(1, 16):
                err = abs(np.float32(grid[k] - v))
                lt = err < best_err
                best = k if lt else best
                best_err = err if lt else best_err
            idx[j] = best
        for j in range(16):
            o[1 + j] = idx[j] | (idx[j + 16] << 4)


@njit(**_PAR)
def _dequantize_ggml_mxfp4(raw, out, kv):
    for i in prange(raw.shape[0]):
        d = _e8m0_half(np.int64(raw[i, 0]))
        for j in range(16):
            b = np.int64(raw[i, 1 + j])
            out[i, j] = np.float32(kv[b & 0xF] * d)
            out[i, j + 16] = np.float32(kv[b >> 4] * d)


# --------------------------------------------------------------------------- IQ4_NL / IQ4_XS
# ggml-common.h kvalues_iq4nl: the 16 non-uniform levels, as float32 (exact)
_KVALUES_IQ4NL = np.array(
    [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float32
)


@njit(**_OPTS)
def _best_index_iq4(v, kv):
    """best_index_int8(16, kvalues_iq4nl, v): binary search, then the nearer level, ties up."""
    if v <= kv[0]:
        return 0
    if v >= kv[15]:
        return 15
    ml = 0
    mu = 15
    while mu - ml > 1:
        mav = (ml + mu) // 2
        if v < kv[mav]:
            mu = mav
        else:
            ml = mav
    return mu - 1 if np.float32(v - kv[mu - 1]) < np.float32(kv[mu] - v) else mu


@njit(**_OPTS)
def _iq4_sub_block(xb, start, kv, ntry, L):
    """quantize_row_iq4_nl_impl's per-32 search without an imatrix (w = x^2): the scale d.

    Codes of the first fit go to ``L[start:start+32]``; a sub-block with
    max|x| < 1e-15 gets d = 0 and codes 8 (refquant's choice where the ref leaves them).
    """
    amax, mx = _first_absmax(xb, start, 32)
    if amax < _EPS:
        for j in range(start, start + 32):
            L[j] = 8
        return _ZERO
    d = np.float32((-mx if ntry > 0 else mx) / kv[0])
    idd = np.float32(_ONE / d)
    sumqx = _ZERO
    sumq2 = _ZERO
    for j in range(start, start + 32):
        v = xb[j]
        lq = _best_index_iq4(np.float32(idd * v), kv)
        L[j] = lq
        q = kv[lq]
        wq = np.float32(np.float32(v * v) * q)
        sumqx = np.float32(sumqx + np.float32(wq * v))
        sumq2 = np.float32(sumq2 + np.float32(wq * q))
    d = np.float32(sumqx / sumq2) if sumq2 > 0 else _ZERO
    best = np.float32(d * sumqx)
    for itry in range(-ntry, ntry + 1):
        idn = np.float32(np.float32(itry + np.float32(kv[0])) / mx)
        sumqx = _ZERO
        sumq2 = _ZERO
        for j in range(start, start + 32):
            v = xb[j]
            q = kv[_best_index_iq4(np.float32(idn * v), kv)]
            wq = np.float32(np.float32(v * v) * q)
            sumqx = np.float32(sumqx + np.float32(wq * v))
            sumq2 = np.float32(sumq2 + np.float32(wq * q))
        if sumq2 > 0 and np.float32(sumqx * sumqx) > np.float32(best * sumq2):
            d = np.float32(sumqx / sumq2)
            best = np.float32(d * sumqx)
    return d


@njit(**_OPTS)
def _iq4_pack(L, o, off, n):
    for i in range(n // 32):
        for j in range(16):
            o[off + 16 * i + j] = L[32 * i + j] | (L[32 * i + 16 + j] << 4)


@njit(**_PAR)
def _quantize_iq4_nl(x, out, kv):
    for i in prange(x.shape[0]):
        L = np.empty(32, np.int64)
        d = _iq4_sub_block(x[i], 0, kv, -1, L)  # quantize_row_iq4_nl_ref: ntry = -1
        _put_u16(out[i], 0, _fp16_bits(d))
        _iq4_pack(L, out[i], 2, 32)


@njit(**_PAR)
def _quantize_iq4_xs(x, out, kv):
    for i in prange(x.shape[0]):
        xb = x[i]
        o = out[i]
        L = np.empty(QK_K, np.int64)
        scales = np.empty(8, np.float32)
        amax = _ZERO
        max_scale = _ZERO
        for ib in range(8):
            sd = _iq4_sub_block(xb, 32 * ib, kv, 7, L)
            scales[ib] = sd
            if abs(sd) > amax:
                amax = abs(sd)
                max_scale = sd
        d = np.float32(-max_scale / np.float32(32))
        idd = np.float32(_ONE / d) if d != 0 else _ZERO
        scales_h = 0
        for k in range(4):
            o[4 + k] = 0
        for ib in range(8):
            lv = max(-32, min(31, _nearest_int(np.float32(idd * scales[ib]))))
            dl = np.float32(d * np.float32(lv))
            idl = np.float32(_ONE / dl) if dl != 0 else _ZERO
            for j in range(32 * ib, 32 * ib + 32):
                L[j] = _best_index_iq4(np.float32(idl * xb[j]), kv)
            lv += 32
            o[4 + ib // 2] |= (lv & 0xF) << (4 * (ib % 2))
            scales_h |= (lv >> 4) << (2 * ib)
        _put_u16(o, 0, _fp16_bits(d))
        _put_u16(o, 2, scales_h)
        _iq4_pack(L, o, 8, QK_K)


@njit(**_PAR)
def _dequantize_iq4_nl(raw, out, t16, kv):
    for i in prange(raw.shape[0]):
        d = t16[_get_u16(raw[i], 0)]
        for j in range(16):
            b = np.int64(raw[i, 2 + j])
            out[i, j] = np.float32(d * kv[b & 0xF])
            out[i, j + 16] = np.float32(d * kv[b >> 4])


@njit(**_PAR)
def _dequantize_iq4_xs(raw, out, t16, kv):
    for i in prange(raw.shape[0]):
        r = raw[i]
        d = t16[_get_u16(r, 0)]
        sh = _get_u16(r, 2)
        for ib in range(8):
            ls = ((np.int64(r[4 + ib // 2]) >> (4 * (ib % 2))) & 0xF) | (((sh >> (2 * ib)) & 3) << 4)
            dl = np.float32(d * np.float32(ls - 32))
            for j in range(16):
                b = np.int64(r[8 + 16 * ib + j])
                out[i, 32 * ib + j] = np.float32(dl * kv[b & 0xF])
                out[i, 32 * ib + 16 + j] = np.float32(dl * kv[b >> 4])


# --------------------------------------------------------------------------- validation help
@njit(**_OPTS)
def _all_finite(b):
    """No float32 of bits ``b`` (int32) has an all-ones exponent (no NaN, no ±Inf)."""
    bad = np.int32(0)
    for i in range(b.shape[0]):
        bad |= np.int32((b[i] & np.int32(0x7F800000)) == np.int32(0x7F800000))
    return bad == 0


def all_finite(x: np.ndarray) -> bool:
    """Whether C-contiguous float32 ``x`` holds no NaN / ±Inf (what the caller then refuses)."""
    return bool(x.size == 0 or _all_finite(x.reshape(-1).view(np.int32)))


# --------------------------------------------------------------------------- dispatch
def _with_table(kernel):
    return lambda a, out: kernel(a, out, _FP16_TABLE)


def _iq3(name, quantize):
    """IQ3_XXS / IQ3_S: kernels in :mod:`refquant.kernels.cpu.ggml_iq` (imported on first use)."""

    def run(a, out):
        from . import ggml_iq

        (ggml_iq.quantize_iq3 if quantize else ggml_iq.dequantize_iq3)(name, a, out)

    return run


#: ggml type (refquant's format name) -> callable(x float32 (n, block), out uint8 (n, type_size))
QUANTIZE_KERNELS = {
    "q4_0": _quantize_q4_0,
    "q4_1": _quantize_q4_1,
    "q5_0": _quantize_q5_0,
    "q5_1": _quantize_q5_1,
    "q8_0": _quantize_q8_0,
    "q8_1": _quantize_q8_1,
    "q2_k": _with_table(_quantize_q2_k),
    "q3_k": _with_table(_quantize_q3_k),
    "q4_k": _with_table(_quantize_q4_k),
    "q5_k": _with_table(_quantize_q5_k),
    "q6_k": _with_table(_quantize_q6_k),
    "q8_k": _quantize_q8_k,
    "tq1_0": _quantize_tq1_0,
    "tq2_0": _quantize_tq2_0,
    "ggml_mxfp4": lambda a, out: _quantize_ggml_mxfp4(a, out, _KVALUES_MXFP4),
    "iq4_nl": lambda a, out: _quantize_iq4_nl(a, out, _KVALUES_IQ4NL),
    "iq4_xs": lambda a, out: _quantize_iq4_xs(a, out, _KVALUES_IQ4NL),
    "iq3_xxs": _iq3("iq3_xxs", True),
    "iq3_s": _iq3("iq3_s", True),
}

#: ggml type -> callable(raw uint8 (n, type_size), out float32 (n, block))
DEQUANTIZE_KERNELS = {
    "q4_0": _with_table(_dequantize_q4_0),
    "q4_1": _with_table(_dequantize_q4_1),
    "q5_0": _with_table(_dequantize_q5_0),
    "q5_1": _with_table(_dequantize_q5_1),
    "q8_0": _with_table(_dequantize_q8_0),
    "q8_1": _with_table(_dequantize_q8_1),
    "q2_k": _with_table(_dequantize_q2_k),
    "q3_k": _with_table(_dequantize_q3_k),
    "q4_k": _with_table(_dequantize_q4_k),
    "q5_k": _with_table(_dequantize_q5_k),
    "q6_k": _with_table(_dequantize_q6_k),
    "q8_k": _dequantize_q8_k,
    "tq1_0": _with_table(_dequantize_tq1_0),
    "tq2_0": _with_table(_dequantize_tq2_0),
    "ggml_mxfp4": lambda a, out: _dequantize_ggml_mxfp4(a, out, _KVALUES_MXFP4),
    "iq4_nl": lambda a, out: _dequantize_iq4_nl(a, out, _FP16_TABLE, _KVALUES_IQ4NL),
    "iq4_xs": lambda a, out: _dequantize_iq4_xs(a, out, _FP16_TABLE, _KVALUES_IQ4NL),
    "iq3_xxs": _iq3("iq3_xxs", False),
    "iq3_s": _iq3("iq3_s", False),
}


def quantize_blocks(name: str, x: np.ndarray, type_size: int) -> np.ndarray:
    """``(n, block)`` C-contiguous finite float32 -> ``(n, type_size)`` uint8 (no validation here)."""
    out = np.empty((x.shape[0], type_size), dtype=np.uint8)
    if x.shape[0]:
        with np.errstate(all="ignore"):  # only matters under NUMBA_DISABLE_JIT=1
            QUANTIZE_KERNELS[name](x, out)
    return out


#: the types whose quantize kernel also returns how many blocks may hold a NaN / ±Inf
#: (0: none does; Q4/Q5 flag any block whose code arguments leave cvttss2si's range, a
#: superset, Q8 test the bits): their finiteness check costs no pass of its own
FINITE_CHECKING = frozenset({"q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q8_1"})


def quantize_finite_blocks(name: str, x: np.ndarray, type_size: int):
    """:func:`quantize_blocks` of float32 ``x`` that may hold NaN / ±Inf: None if it does.

    For :data:`FINITE_CHECKING` types the kernel flags blocks as it goes (their kernels
    are total: any float input gives some bytes), and only a flagged run pays for
    :func:`all_finite`; for the others :func:`all_finite` runs first.
    """
    if name not in FINITE_CHECKING:
        return quantize_blocks(name, x, type_size) if all_finite(x) else None
    out = np.empty((x.shape[0], type_size), dtype=np.uint8)
    if x.shape[0]:
        with np.errstate(all="ignore"):
            flagged = QUANTIZE_KERNELS[name](x, out)
        if flagged and not all_finite(x):
            return None
    return out


def dequantize_blocks(name: str, raw: np.ndarray, block_size: int) -> np.ndarray:
    """``(n, type_size)`` C-contiguous uint8 -> ``(n, block_size)`` float32 (no validation here)."""
    out = np.empty((raw.shape[0], block_size), dtype=np.float32)
    if raw.shape[0]:
        with np.errstate(all="ignore"):
            DEQUANTIZE_KERNELS[name](raw, out)
    return out
