"""Numba kernels for the OCP MX block formats: shared E8M0 exponent per block, element encode, decode.

Each kernel is the exact twin of :func:`refquant.formats.mx.quantize_mx` /
:func:`~refquant.formats.mx.dequantize_mx` (the NumPy reference) on a 2-D array of
rows whose last axis is the block axis: per block of ``k`` elements the float64
absmax (NaN propagating, as ``np.max``), the shared exponent by the ``floor`` or
``ceil`` rule, the E8M0 scale code, and each element divided by the exact power
of two ``2^e`` in float64 and encoded with :func:`refquant.kernels.cpu.floats.encode_one`
(saturating) or, for MXINT8, rounded by the named mode and clipped to [-127, 127].
Blocks are independent: the outer loop is a ``prange`` over rows.

The input is read in its own dtype and widened one element at a time (no float64
copy of the array). Nothing here imports from ``refquant.formats``; nothing
compiles at import (``cache=True``).

Reference: :mod:`refquant.formats.mx` (OCP MX v1.0 §6.3; microxcaling ``_quantize_mx``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .floats import _EMIN, _M, _MAXCODE, _NANKIND, _SIGNBIT, _pow2, decode_one, encode_one

__all__ = ["quantize_into", "dequantize_into"]

_OPTS = dict(cache=True, nogil=True, error_model="numpy")
_PAR = dict(cache=True, nogil=True, error_model="numpy", parallel=True)


@njit(**_OPTS)
def _shared_exponent(a, ceil_rule, emax_elem, elem_max32):
    """formats.mx.shared_exponent for one float64 amax: (exponent, is_nan_block)."""
    bad = not (a - a == 0.0)  # NaN or Inf
    safe = 1.0 if (bad or a == 0.0) else a
    if not ceil_rule:
        _, ex = math.frexp(safe)
        e = (ex - 1) - emax_elem
    else:
        q = np.float64(np.float32(np.float32(safe) / elem_max32))
        if math.isinf(q):
            bad = True
            e = 0
        elif q == 0.0:
            e = -127
        else:
            mq, ex = math.frexp(q)
            e = ex - 1 if mq == 0.5 else ex
    if a == 0.0:
        e = -127
    e = max(e, -127)
    return e, bad or e > 127


@njit(**_OPTS)
def _round_int(v, mode, u):
    """refquant._core.rounding.round_to_int for one finite float64 (``u``: the stochastic draw)."""
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
    elif mode == 3:
        step = (a >= 0.5) if neg else (a > 0.5)
    else:
        step = u < a
    return t + math.copysign(1.0 if step else 0.0, v)


@njit(**_OPTS)
def _encode_sat(v, m, emin, max_code, sign_bit, fnuz, mode):
    """encode_one(v, saturate=True) for a finite float64 ``v`` and a deterministic mode,
    without branches on the data (so that a block's loop vectorises): finite input never
    reaches Inf / NaN, so only the rounding, the clamp to max and fnuz's lost -0 remain."""
    b = np.float64(v).view(np.int64)
    neg = b < 0
    a = b & 0x7FFFFFFFFFFFFFFF
    expf = a >> 52
    sig = (a & 0xFFFFFFFFFFFFF) | ((expf != 0) * 0x10000000000000)
    e = max(expf, 1) - 1023
    e_eff = max(e, emin)
    shift = min(52 - m + e_eff - e, 63)
    kept = sig >> shift
    rem = sig & ((np.int64(1) << shift) - 1)
    half = np.int64(1) << (shift - 1)
    above = rem > half
    tie = rem == half
    nz = rem != 0
    step = ((mode <= 4) & above) | (tie & (((mode == 0) & ((kept & 1) == 1)) | (mode == 1)
                                           | ((mode == 2) & (not neg)) | ((mode == 3) & neg))) \
        | (nz & (((mode == 5) & neg) | ((mode == 6) & (not neg))))
    mag = ((e_eff - emin) << m) + kept + np.int64(step)
    mag = max_code if mag > max_code else mag
    code = (sign_bit * neg) | mag
    return 0 if (fnuz & (mag == 0)) else code


@njit(**_OPTS)
def _row(x, conv, table, r, n, k, nb, ceil_rule, emax_elem, elem_max32, p, is_int, mode, du, df, dr,
         codes, scales):
    for b in range(nb):
        lo = b * k
        hi = min(lo + k, n)
        amax = 0.0
        for i in range(lo, hi):
            v = table[np.int64(x[r, i])] if conv else np.float64(x[r, i])
            av = abs(v)
            if av != av:
                amax = av
                break
            if av > amax:
                amax = av
        e, bad = _shared_exponent(amax, ceil_rule, emax_elem, elem_max32)
        scales[r, b] = 0xFF if bad else e + 127
        div = _pow2(0 if bad else e)
        if not is_int and mode != 8:  # the common case: a loop LLVM vectorises
            if bad:
                for i in range(lo, hi):
                    codes[r, i] = 0  # +0.0 encodes as 0 in every element format
            else:
                m, emin, max_code, sign_bit, fnuz = p[_M], p[_EMIN], p[_MAXCODE], p[_SIGNBIT], p[_NANKIND] == 2
                for i in range(lo, hi):
                    v = table[np.int64(x[r, i])] if conv else np.float64(x[r, i])
                    codes[r, i] = _encode_sat(v / div, m, emin, max_code, sign_bit, fnuz, mode)
            continue
        for i in range(lo, hi):
            if bad:
                s = 0.0
            else:
                v = table[np.int64(x[r, i])] if conv else np.float64(x[r, i])
                s = v / div
            j = b * k + (i - lo)  # position in the padded row: the stochastic draw's index
            if is_int:
                q = _round_int(s * 64.0, mode, df[dr, j] if mode == 8 else 0.0)
                codes[r, i] = np.int64(min(max(q, -127.0), 127.0))
            else:
                codes[r, i] = encode_one(s, p, mode, True, False, du[dr, j] if mode == 8 else np.uint64(0))


@njit(**_PAR)
def quantize_into(x, conv, table, k, ceil_rule, emax_elem, elem_max32, p, is_int, mode, du, df, row0,
                  codes, scales):
    """Rows ``x[r]`` (blocks of ``k`` along the last axis) -> element codes and E8M0 scale codes.

    ``conv``: read ``x`` through the float64 ``table`` (float16) instead of widening it.
    ``du`` / ``df``: stochastic draws (uint64 for float elements, float64 for MXINT8) of
    rows ``row0 ..`` of the zero-padded blocked array, in C order.
    """
    rows, n = x.shape
    nb = scales.shape[1]
    for r in prange(rows):
        _row(x, conv, table, r, n, k, nb, ceil_rule, emax_elem, elem_max32, p, is_int, mode, du, df,
             r - row0 if mode == 8 else 0, codes, scales)


@njit(**_PAR)
def dequantize_into(c, s, k, p, is_int, out):
    """``out[r, i] = float32(2^(s - 127) * value(c[r, i]))``; scale 0xFF is NaN."""
    rows, n = c.shape
    for r in prange(rows):
        for i in range(n):
            sc = np.int64(s[r, i // k])
            xs = np.nan if sc == 0xFF else _pow2(sc - 127)
            v = np.float64(c[r, i]) / 64.0 if is_int else np.float64(decode_one(np.int64(c[r, i]), p))
            out[r, i] = np.float32(v * xs)
