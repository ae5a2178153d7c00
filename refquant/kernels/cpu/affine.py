"""Numba kernels of the affine integer quantizer, bit for bit with ``refquant.quant.affine``.

The public ``quantize`` / ``dequantize`` (``refquant.quant.affine``) validate
their arguments and hand these kernels plain arrays:

* ``x`` (or ``q``) flat and C-contiguous in its own dtype (float32, float64,
  integers; bfloat16 and float16 as their uint16 bits, ``xkind`` 1 and 2), so no
  float64 copy of the input is ever made: each element is widened in registers;
* the parameters *compact*, shape ``(PA, PN, PC)`` for ``x`` seen as
  ``(A, N, C)`` with blocks of ``B`` along ``N`` (``PA`` 1 or ``A``, ``PN`` 1 or
  ``ceil(N / B)``, ``PC`` 1 or ``C``): per tensor ``A = C = 1`` and ``B`` a chunk
  for the threads; per axis ``B = 1``; blocked ``B = block_size``, the last block
  partial. Nothing is broadcast to the input's size.

Each task is one (row ``i``, block ``jb``) pair; where the parameters
do not vary along ``C`` the task is one contiguous run with constant parameters,
a loop that LLVM vectorises.

The semantic choices that shape the inner loop (precision, scale op, zero point
stage, clamp stage, rounding mode, overflow) are compile-time constants: a
kernel is built per combination by :func:`quantize_kernel` (closures over the
choices; Numba's disk cache keys them by their cell contents), so each loop
holds only the arithmetic of its combination. Per element it computes exactly
what the NumPy reference computes on whole arrays, in the same order and in the
same precision (a float32 step is a float32 operation; the float32 fused
multiply-add is ``llvm.fma.f32``, one rounding). Conditions the reference raises
on (NaN or ±Inf with a "raise" policy, overflow="raise", a wrap beyond 2^62)
are only *flagged* here: the caller then runs the reference, which raises with
its own message.

This module imports nothing from ``refquant.quant``.
"""

from __future__ import annotations

import functools
import itertools
import math

import numba
import numpy as np
from numba import config, njit, types
from numba.extending import intrinsic

__all__ = ["ROUNDING_IDS", "quantize_kernel", "dequantize_kernel", "minmax_kernel", "run_tasks",
           "FLAG_INF", "FLAG_NAN", "FLAG_RANGE", "FLAG_WRAP", "FLAG_NAN_CODE"]

ROUNDING_IDS = {"half_even": 0, "half_away": 1, "half_up": 2, "half_down": 3, "half_zero": 4,
                "floor": 5, "ceil": 6, "trunc": 7}
SCALE_OPS = {"divide": 0, "reciprocal": 1}
ZP_STAGES = {"after_rounding": 0, "before_rounding": 1, "fused": 2}
OVERFLOWS = {"saturate": 0, "wrap": 1, "raise": 2}
SATURATE_F32 = 3  # overflow="saturate" computed in float32 (see _code)

FLAG_INF = 1  # x (in the working precision) holds ±Inf
FLAG_NAN = 2  # x holds NaN
FLAG_RANGE = 4  # a code fell outside [qmin, qmax] (overflow="raise")
FLAG_WRAP = 8  # |round(x / s) + z| >= 2^62 (overflow="wrap")
FLAG_NAN_CODE = 16  # some code was NaN (filled by the NaN policy)

_OPTS = dict(cache=True, error_model="numpy")
# The kernels run tasks [t0, t1) without the GIL; :func:`run_tasks` spreads the tasks over
# threads. (A prange loop compiled 2-3x slower, one kernel per combination of choices.)
_TASKS = dict(cache=True, error_model="numpy", nogil=True)

if config.DISABLE_JIT:  # pragma: no cover - exercised in a subprocess

    def _fma32(a, b, c):
        """Correctly rounded float32 fma (the product is exact in float64, the sum is
        rounded to odd, then once to float32)."""
        p = float(a) * float(b)
        s = p + float(c)
        if not math.isfinite(s):
            return np.float32(s)
        bb = s - p
        err = (p - (s - bb)) + (float(c) - bb)
        if err != 0 and not (int(np.float64(s).view(np.uint64)) & 1):
            s = math.nextafter(s, math.inf if err > 0 else -math.inf)
        return np.float32(s)

else:

    @intrinsic
    def _fma32(typingctx, a, b, c):
        """``llvm.fma.f32``: ``a * b + c`` rounded once (vfmadd on x86). float64 arguments
        (typed for the float64 kernels, which never take this branch) get ``llvm.fma.f64``."""
        if all(t == types.float32 for t in (a, b, c)):
            ty, name = types.float32, "llvm.fma.f32"
        elif all(t == types.float64 for t in (a, b, c)):
            ty, name = types.float64, "llvm.fma.f64"
        else:
            return None

        def codegen(context, builder, signature, args):
            from llvmlite import ir

            ft = ir.FloatType() if ty == types.float32 else ir.DoubleType()
            mod = builder.module
            fn = mod.globals.get(name)
            if fn is None:  # a plain declaration (llvmlite's declare_intrinsic upsets numba)
                fn = ir.Function(mod, ir.FunctionType(ft, [ft, ft, ft]), name)
            return builder.call(fn, list(args))

        return ty(ty, ty, ty), codegen


#: elements below which a call runs on the calling thread alone
PARALLEL_MIN = 1 << 17
#: about how many elements one claimed chunk of :func:`run_tasks` covers
CHUNK_ELEMENTS = 1 << 18


@functools.cache
def _pool():
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max(1, numba.config.NUMBA_NUM_THREADS - 1),
                              thread_name_prefix="refquant-affine")


def run_tasks(kernel, ntask, size, *args):
    """``kernel(*args, t0, t1)`` over tasks ``[0, ntask)``; returns the OR of the kernels' results
    (flags; 0 for None).

    Below :data:`PARALLEL_MIN` elements, or with one Numba thread, the calling thread runs them
    all. Otherwise the tasks are cut into contiguous chunks of about :data:`CHUNK_ELEMENTS`
    elements (at least four per thread), and the calling thread and ``numba.get_num_threads() -
    1`` pool threads claim chunks in order until none is left. The claiming is dynamic because a
    pool thread that has slept (between two calls of a user's loop) can take a few hundred
    microseconds to run again on a virtual machine: with a fixed half each, the call waited for
    it; now the caller takes its share of the work meanwhile. The kernels write disjoint parts of
    their outputs, so which thread runs a chunk does not change a byte.
    """
    n = min(numba.get_num_threads(), ntask) if size >= PARALLEL_MIN else 1
    if n <= 1:
        return kernel(*args, 0, ntask) or 0
    nchunk = min(ntask, max(4 * n, size // CHUNK_ELEMENTS))
    bounds = [ntask * i // nchunk for i in range(nchunk + 1)]
    claim = itertools.count()

    def work():
        flags = 0
        c = next(claim)
        while c < nchunk:
            flags |= kernel(*args, bounds[c], bounds[c + 1]) or 0
            c = next(claim)
        return flags

    futures = [_pool().submit(work) for _ in range(n - 1)]
    flags = work()
    for f in futures:
        flags |= f.result()
    return flags


@njit(**_OPTS)
def _bf16(bits):
    return np.uint32(np.uint32(bits) << np.uint32(16))


@njit(**_OPTS)
def _f16_to_f64(h):
    """An IEEE binary16 from its bits, exactly (every binary16 is a float64)."""
    h = np.int64(h)
    sign = -1.0 if h & 0x8000 else 1.0
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    if e == 0x1F:
        return sign * np.inf if m == 0 else np.nan
    if e == 0:
        return sign * m * 2.0**-24
    return sign * (1024 + m) * 2.0 ** (e - 25)


@njit(**_OPTS)
def _load(x, e, xkind):
    """Element ``e`` of ``x`` as a float64 (exact; integers as NumPy's int -> float64 cast)."""
    if xkind == 1:
        return np.float64(np.uint32(_bf16(x[e])).view(np.float32))
    if xkind == 2:
        return _f16_to_f64(x[e])
    return np.float64(x[e])


@njit(**_OPTS)
def _round(v, mode):
    """``round_to_int`` of a float64 ``v`` with mode ``ROUNDING_IDS[...]`` (exact: the
    fraction ``v - trunc(v)`` is exact, as in ``refquant._core.rounding``)."""
    if mode == 0:
        return np.rint(v)
    if mode == 5:
        return np.floor(v)
    if mode == 6:
        return np.ceil(v)
    if mode == 7:
        return np.trunc(v)
    t = np.trunc(v)
    a = abs(v - t)
    neg = v < 0
    if mode == 1:
        step = a >= 0.5
    elif mode == 4:
        step = a > 0.5
    elif mode == 2:
        step = (a > 0.5) if neg else (a >= 0.5)
    else:
        step = (a >= 0.5) if neg else (a > 0.5)
    out = t + (math.copysign(1.0, v) if step else 0.0)
    return out if math.isfinite(v) else v


@njit(**_OPTS)
def _code(xv, FT, SCALE_OP, ZPS, CLAMP, MODE, OVF, s, rcp, zft, zf, lo, hi, zfill, qmin, qmax,
          wlow, wspan, nanfill_z, nanfill):
    """(code, flags) of one element ``xv`` (float64, exact) under one set of parameters.

    ``FT`` the working precision (np.float32 / np.float64) and the upper-case choices
    are the kernel's compile-time constants; this is the reference's array formula
    (``refquant.quant.affine.quantize``) for one element, step by step.
    """
    xf = FT(xv)  # x.astype(ft)
    flags = 0
    if math.isinf(xf):
        flags |= FLAG_INF
    elif math.isnan(xf):
        flags |= FLAG_NAN
    if ZPS == 2:
        v = _fma32(xf, rcp, zft)  # fma_f32(x, float32(1 / s), float32(z))
    else:
        if SCALE_OP == 0:
            v = FT(xf / s)
        else:
            v = FT(xf * rcp)
        if ZPS == 1:
            v = FT(v + zft)
    if CLAMP:  # np.clip(v, lo, hi).astype(ft): the clip is exact in float64
        w = np.float64(v)
        if w < lo:
            w = lo
        if w > hi:
            w = hi
        v = FT(w)
    if OVF == 3:
        # saturate in float32 (float32 kernels on grids inside ±2^24, chosen by the caller):
        # the same codes as the float64 steps below. rint(v) is a float32 integer; with
        # |z|, |qmin|, |qmax| < 2^24 the float32 sum r + z is exact while |r + z| <= 2^24,
        # and beyond it rounds to a value still beyond the grid, which saturates alike.
        r32 = np.float32(_round(np.float64(v), MODE))
        if ZPS == 0:
            r32 = np.float32(r32 + np.float32(zf))
        isn32 = r32 != r32
        if isn32:
            r32 = np.float32(0)
            flags |= FLAG_NAN_CODE
        r32 = min(max(r32, np.float32(qmin)), np.float32(qmax))
        q32 = np.int64(np.int32(r32))
        if isn32:
            q32 = zfill if nanfill_z else nanfill
        return q32, flags
    r = _round(np.float64(v), MODE)
    if ZPS == 0:
        r = r + zf
    isn = r != r
    if isn:
        r = 0.0
        flags |= FLAG_NAN_CODE
    if OVF == 0 or math.isinf(r):
        r = min(max(r, np.float64(qmin)), np.float64(qmax))
    if OVF == 1:
        if abs(r) >= 2.0**62:
            flags |= FLAG_WRAP
            q = np.int64(0)
        else:
            q = (np.int64(r) - wlow) % wspan + wlow
    else:
        if OVF == 2 and (r < qmin or r > qmax):
            flags |= FLAG_RANGE
            r = 0.0
        q = np.int64(r)
    if isn:
        q = zfill if nanfill_z else nanfill
    return q, flags


@njit(**_OPTS)
def _row_f32_saturate(xs, os, s, rcp, zf, qmin, qmax, fill, SCALE_OP, MODE):
    """The codes of a contiguous float32 run ``xs`` with one set of parameters into ``os``:
    :func:`_code` (``xkind`` 0) with ``FT`` float32, ``ZPS`` 0 (after rounding), no clamp before rounding,
    ``OVF`` :data:`SATURATE_F32`, and no flags (the caller needs none).

    Step for step the same float32 operations as :func:`_code`; only the data types of the
    loop differ: the codes stay int32 (the grid is inside ±2^24) and the NaN fill is given as
    the int32 that the output's store truncates alike (``os`` at most 4 bytes wide), so no
    lane is widened to int64 and LLVM vectorises the loop at full width (zmm on AVX-512:
    vdivps, vrndscaleps, vcvttps2dq, vpmovdb).
    """
    fz = np.float32(zf)
    lo = np.float32(qmin)
    hi = np.float32(qmax)
    for e in range(xs.size):
        xf = np.float32(np.float64(xs[e]))  # _load then FT: no-op casts for float32 ``xs``
        if SCALE_OP == 0:
            v = np.float32(xf / s)
        else:
            v = np.float32(xf * rcp)
        r = np.float32(np.float32(_round(np.float64(v), MODE)) + fz)
        isn = r != r
        r = min(max(r, lo), hi)
        q = np.int32(r)
        os[e] = fill if isn else q


def quantize_kernel(xkind: int, f32: bool, scale_op: int, zp_stage: int, clamp_before: bool,
                    rounding: int, overflow: int, flags: bool = True):
    """The Numba kernel of one combination of the compile-time choices (a closure over plain
    values only: Numba's disk cache keys a closure by its pickled cells).

    ``kernel(x, out, A, N, C, B, s, rcp, zft, zf, lo, hi, zfill, qmin, qmax, wlow, wspan,
    nanfill_z, nanfill) -> flags`` writes the codes of flat ``x`` into flat ``out``
    (any integer dtype: the int64 code is cast as NumPy's ``astype`` casts).
    ``flags=False`` promises that the caller needs no flag (it returns 0) and, for ``x`` read
    plainly (``xkind`` 0) in float32 with the zero point after rounding, no clamp before rounding,
    ``overflow`` :data:`SATURATE_F32` and an ``out`` at most 4 bytes wide, lets the
    contiguous runs take :func:`_row_f32_saturate`.
    Parameters ``s``, ``rcp`` (``1 / s``), ``zft`` (``z``) in the working precision,
    ``zf`` (``z``), ``lo``, ``hi`` (clamp bounds before rounding) float64, ``zfill``
    (``z`` as the NaN code) int64, all compact. ``wlow``, ``wspan``: the two's
    complement wrap (overflow="wrap"). NaN codes are ``zfill`` if ``nanfill_z``
    else ``nanfill``. Stochastic rounding is not here (it draws NumPy's stream).
    """
    # one cache entry however ``flags`` is passed (positionally, by name or left out)
    return _quantize_kernel(xkind, bool(f32), scale_op, zp_stage, bool(clamp_before), rounding,
                            overflow, bool(flags))


@functools.cache
def _quantize_kernel(xkind, f32, scale_op, zp_stage, clamp_before, rounding, overflow, flags):
    if zp_stage == 2 and not (f32 and scale_op == 1):
        raise ValueError("fused needs scale_op reciprocal and float32")
    if rounding not in range(8):
        raise ValueError(f"rounding id {rounding} has no kernel")
    FT = np.float32 if f32 else np.float64
    # only plain values in the closure: Numba's disk cache keys a closure by its cells
    XK, SCALE_OP, ZPS, CLAMP, MODE, OVF = (xkind, scale_op, zp_stage, clamp_before, rounding,
                                           overflow)
    FAST = (not flags and xkind == 0 and f32 and zp_stage == 0 and not clamp_before
            and overflow == SATURATE_F32)

    @njit(**_TASKS)
    def kernel(x, out, A, N, C, B, s, rcp, zft, zf, lo, hi, zfill, qmin, qmax, wlow, wspan,
               nanfill_z, nanfill, t0, t1):
        nbt = (N + B - 1) // B
        pa_on, pn_on, pc_on = s.shape[0] > 1, s.shape[1] > 1, s.shape[2] > 1
        flags = 0
        for t in range(t0, t1):
            i = t // nbt
            jb = t - i * nbt
            j0 = jb * B
            j1 = min(j0 + B, N)
            pa = i if pa_on else 0
            pn = jb if pn_on else 0
            # slices indexed from 0: LLVM then knows no index is negative (no wraparound
            # selects, no gathers) and vectorises the loops
            if not pc_on:
                ps, prc, pzft = s[pa, pn, 0], rcp[pa, pn, 0], zft[pa, pn, 0]
                pzf, plo, phi, pzfill = zf[pa, pn, 0], lo[pa, pn, 0], hi[pa, pn, 0], zfill[pa, pn, 0]
                xs = x[(i * N + j0) * C:(i * N + j1) * C]
                os = out[(i * N + j0) * C:(i * N + j1) * C]
                if FAST and out.itemsize <= 4:
                    fill = np.int32(pzfill if nanfill_z else nanfill)  # the store truncates alike
                    _row_f32_saturate(xs, os, ps, prc, pzf, qmin, qmax, fill, SCALE_OP, MODE)
                    continue
                for e in range(xs.size):
                    q, g = _code(_load(xs, e, XK), FT, SCALE_OP, ZPS, CLAMP, MODE, OVF, ps, prc,
                                 pzft, pzf, plo, phi, pzfill, qmin, qmax, wlow, wspan, nanfill_z,
                                 nanfill)
                    os[e] = q
                    flags |= g
            else:
                for j in range(j0, j1):
                    xs = x[(i * N + j) * C:(i * N + j + 1) * C]
                    os = out[(i * N + j) * C:(i * N + j + 1) * C]
                    ss, rs, zs = s[pa, pn], rcp[pa, pn], zft[pa, pn]
                    fs, ls, hs, ws = zf[pa, pn], lo[pa, pn], hi[pa, pn], zfill[pa, pn]
                    for k in range(C):
                        q, g = _code(_load(xs, k, XK), FT, SCALE_OP, ZPS, CLAMP, MODE, OVF,
                                     ss[k], rs[k], zs[k], fs[k], ls[k], hs[k], ws[k], qmin, qmax,
                                     wlow, wspan, nanfill_z, nanfill)
                        os[k] = q
                        flags |= g
        return flags

    return kernel


@njit(**_OPTS)
def _round_product_f32(a, b):
    """``a * b`` (float64, ``a`` integral) rounded once to float32: the float64 product
    rounded to odd with Dekker's exact error, then to float32 (Boldo & Melquiond 2008)."""
    p = a * b
    if not math.isfinite(p):
        return np.float32(p)
    c = 134217729.0
    ta = c * a
    tb = c * b
    ah = ta - (ta - a)
    bh = tb - (tb - b)
    al = a - ah
    bl = b - bh
    err = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    if math.isfinite(err) and err != 0:
        bits = np.float64(p).view(np.int64)
        if (bits & 1) == 0:
            # one ulp toward the exact product: up in magnitude when err has p's sign
            bits = bits + 1 if (err > 0) == (p > 0) else bits - 1
            p = np.int64(bits).view(np.float64)
    return np.float32(p)


@njit(**_OPTS)
def _dequantize_one(qv, sv, zv, P32, O64, ZF):
    """``(q - z) * s`` of one code (see :func:`dequantize_kernel`), as a float64 that the
    output holds exactly."""
    if ZF:
        df = np.float64(qv) - zv
        if P32:
            return np.float64(np.float32(df) * np.float32(sv))
        a = df
    else:
        di = np.int64(qv) - zv  # exact; cast once to the working precision
        if P32:
            return np.float64(np.float32(di) * np.float32(sv))
        a = np.float64(di)
    if O64:
        return a * sv
    return np.float64(_round_product_f32(a, sv))


@functools.cache
def dequantize_kernel(prec32: bool, out64: bool, zfloat: bool):
    """``kernel(q, out, A, N, C, B, s, z)``: ``(q - z) * s`` per element into ``out``.

    ``prec32``: ``float32(q - z) * float32(s)`` (``s`` given as float32); else the
    exact product rounded once to the output (``s`` float64; ``out64``: the float64
    product, else :func:`_round_product_f32`). ``z`` int64 (``q - z`` the exact
    int64 difference) or, ``zfloat``, float64 (``float64(q) - z``).
    """
    P32, O64, ZF = prec32, out64, zfloat  # plain values only in the closure (see above)

    @njit(**_TASKS)
    def kernel(q, out, A, N, C, B, s, z, t0, t1):
        nbt = (N + B - 1) // B
        pa_on, pn_on, pc_on = s.shape[0] > 1, s.shape[1] > 1, s.shape[2] > 1
        za_on, zn_on, zc_on = z.shape[0] > 1, z.shape[1] > 1, z.shape[2] > 1
        for t in range(t0, t1):
            i = t // nbt
            jb = t - i * nbt
            j0 = jb * B
            j1 = min(j0 + B, N)
            pa = i if pa_on else 0
            pn = jb if pn_on else 0
            qa = i if za_on else 0
            qn = jb if zn_on else 0
            if not (pc_on or zc_on):
                sv = s[pa, pn, 0]
                zv = z[qa, qn, 0]
                qs = q[(i * N + j0) * C:(i * N + j1) * C]
                os = out[(i * N + j0) * C:(i * N + j1) * C]
                for e in range(qs.size):
                    os[e] = _dequantize_one(qs[e], sv, zv, P32, O64, ZF)
            else:
                for j in range(j0, j1):
                    qs = q[(i * N + j) * C:(i * N + j + 1) * C]
                    os = out[(i * N + j) * C:(i * N + j + 1) * C]
                    ss, zs = s[pa, pn], z[qa, qn]
                    for k in range(C):
                        os[k] = _dequantize_one(qs[k], ss[k if pc_on else 0],
                                                zs[k if zc_on else 0], P32, O64, ZF)

    return kernel


#: lanes of :func:`_minmax_run` (element e of a run goes to lane e % _MM_LANES)
_MM_LANES = 64


@njit(**_OPTS)
def _minmax_run(x, xkind, i0, i1, e0, e1, stride):
    """NaN-ignoring (min, max) as float64 of the elements ``[i * stride + e0, i * stride + e1)``
    for ``i`` in ``[i0, i1)`` (+Inf, -Inf if there is none).

    Lane ``k`` keeps the min / max of the elements at ``e % _MM_LANES == k`` with a select,
    not a branch, so the loop vectorises (3 ms for 16M float32 on two Zen 5 cores, against
    19 ms for 15M on one with the scalar scan it replaces). The values are exact; only the
    sign of a zero result is left to the order of the comparisons, as NumPy's
    ``minimum.reduce`` (the reference) leaves it to its SIMD loop on the CPU at hand.
    """
    lmn = np.full(_MM_LANES, np.inf)
    lmx = np.full(_MM_LANES, -np.inf)
    n = e1 - e0
    nl = n - n % _MM_LANES
    for i in range(i0, i1):
        xs = x[i * stride + e0:i * stride + e1]
        for b in range(nl // _MM_LANES):
            blk = xs[b * _MM_LANES:(b + 1) * _MM_LANES]
            for k in range(_MM_LANES):
                v = _load(blk, k, xkind)
                lmn[k] = v if v <= lmn[k] else lmn[k]
                lmx[k] = v if v >= lmx[k] else lmx[k]
        for e in range(nl, n):
            v = _load(xs, e, xkind)
            lmn[e - nl] = v if v <= lmn[e - nl] else lmn[e - nl]
            lmx[e - nl] = v if v >= lmx[e - nl] else lmx[e - nl]
    mn = np.inf
    mx = -np.inf
    for k in range(_MM_LANES):
        mn = lmn[k] if lmn[k] < mn else mn
        mx = lmx[k] if lmx[k] > mx else mx
    return mn, mx


@njit(**_TASKS)
def minmax_kernel(x, xkind, A, N, C, B, lo, hi, t0, t1):
    """Per-group NaN-ignoring min and max (float64) into ``lo``, ``hi`` (filled with
    +Inf / -Inf by the caller) of shape ``(PA, ceil(N / B), PC)``, ``PA`` 1 or ``A``,
    ``PC`` 1 or ``C``; an all-NaN group keeps (+Inf, -Inf).

    Each task owns one ``(pa, jb)`` cell row, so no two tasks write the same cell:
    with ``PA = 1`` (per axis, per tensor) a task reduces over every ``i``.
    """
    nbt = (N + B - 1) // B
    pa_on = lo.shape[0] > 1
    pc_on = lo.shape[2] > 1
    for t in range(t0, t1):
        pa = t // nbt
        jb = t - pa * nbt
        j0 = jb * B
        j1 = min(j0 + B, N)
        i0, i1 = (pa, pa + 1) if pa_on else (0, A)
        if not pc_on:
            mn, mx = _minmax_run(x, xkind, i0, i1, (j0 * C), (j1 * C), N * C)
            lo[pa, jb, 0] = mn
            hi[pa, jb, 0] = mx
        else:
            ls, hs = lo[pa, jb], hi[pa, jb]
            for i in range(i0, i1):
                for j in range(j0, j1):
                    xs = x[(i * N + j) * C:(i * N + j + 1) * C]
                    for k in range(C):
                        v = _load(xs, k, xkind)
                        if v <= ls[k]:
                            ls[k] = v
                        if v >= hs[k]:
                            hs[k] = v
