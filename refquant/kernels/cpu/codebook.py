"""Numba kernels for codebook formats (NF4, bitsandbytes FP4, the dynamic-8 map): assign and decode.

Each kernel is the exact twin of a function of :mod:`refquant.formats.codebook` (the
NumPy reference) or of :mod:`refquant.compat.bnb`:

* :func:`nearest_index_into` — ``nearest_index``: the exact nearest value, distances
  compared on (rounded float64 difference, its TwoSum error), ties to the lower index;
* :func:`threshold_index_into` — ``threshold_index``: the count of *sorted* float32
  thresholds strictly below ``float32(x)`` (``searchsorted(side="left")``), mapped
  through ``order``;
* :func:`blockwise_absmax_into` — ``quantize_blockwise_absmax``: per block the float32
  absmax, the float32 scale (``x * float32(1 / d)`` or ``x / d``), the clip to
  [-1, 1] and one of the two assignments, fused (no temporaries);
* :func:`bnb_4bit_packed_into` — bitsandbytes' default backend ``quantize_4bit``
  (full blocks by reciprocal, the partial last block divided, its stored absmax
  clamped; NaN propagating through the absmax into the last bucket; codes packed
  two per byte, first element high), fused with the packing;
* :func:`dequantize_into` — ``values[q] * absmax[block]`` in float32.

Every float operation is a float32 (or, for ``nearest``, float64) operation in the
reference's order; fastmath is off. Nothing here imports from ``refquant.formats``
or ``refquant.compat``: the public functions validate and pass contiguous arrays
and plain numbers. Nothing compiles at import (``cache=True``, compiled on first call).

Reference: :mod:`refquant.formats.codebook`; bitsandbytes 0.50 ``backends/default/ops.py``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["nearest_index_into", "threshold_index_into", "blockwise_absmax_into", "bnb_4bit_packed_into",
           "dequantize_into"]

_OPTS = dict(cache=True, nogil=True, error_model="numpy")
_PAR = dict(cache=True, nogil=True, error_model="numpy", parallel=True)
_F32 = np.float32


@njit(**_OPTS)
def _nearest(a, c):
    """Lowest index j minimising |a - c_j| exactly (float64 a and c; formats.codebook.nearest_index)."""
    best = 0
    best_d = np.inf
    best_s = np.inf
    for j in range(c.size):
        cj = c[j]
        hi = a - cj  # TwoSum: a - cj = hi + lo exactly
        bb = hi - a
        lo = (a - (hi - bb)) + (-cj - bb)
        d = abs(hi)
        s = np.sign(hi) * lo
        if d < best_d or (d == best_d and s < best_s):
            best, best_d, best_s = j, d, s
    return best


@njit(**_OPTS)
def _count_below(t, v):
    """#{j : t_j < v} for sorted float32 ``t`` (searchsorted side="left"); NaN counts all."""
    if v != v:
        return t.size
    if t.size <= 32:  # few thresholds: a branch-free count (the same number for sorted t)
        k = 0
        for j in range(t.size):
            k += t[j] < v
        return k
    lo = 0
    hi = t.size
    while lo < hi:
        mid = (lo + hi) >> 1
        if t[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(**_PAR)
def nearest_index_into(x, c, out):
    """``out[i] = nearest(float64(x[i]), c)``; ``x`` any numeric dtype Numba reads."""
    for i in prange(x.size):
        out[i] = _nearest(np.float64(x[i]), c)


@njit(**_PAR)
def nearest_index_table_into(x, table, c, out):
    """As :func:`nearest_index_into` for a dtype widened through ``table`` (float16)."""
    for i in prange(x.size):
        out[i] = _nearest(table[np.int64(x[i])], c)


@njit(**_PAR)
def threshold_index_into(x, t, order, use_order, out):
    """``out[i] = order[#{j : t_j < float32(x[i])}]`` (``order`` unused unless ``use_order``)."""
    for i in prange(x.size):
        k = _count_below(t, np.float32(x[i]))
        out[i] = order[k] if use_order else k


@njit(**_PAR)
def threshold_index_table_into(x, table, t, order, use_order, out):
    """As :func:`threshold_index_into` for a dtype widened through ``table`` (float16, float32 values)."""
    for i in prange(x.size):
        k = _count_below(t, np.float32(table[np.int64(x[i])]))
        out[i] = order[k] if use_order else k


@njit(**_PAR)
def blockwise_absmax_into(a, block, zero_absmax, reciprocal, midpoints, t, order, c, codes, absmax):
    """formats.codebook.quantize_blockwise_absmax on finite float32 ``a``, block by block."""
    n = a.size
    nb = absmax.size
    z = np.float32(zero_absmax)
    one = np.float32(1.0)
    for b in prange(nb):
        lo = b * block
        hi = min(lo + block, n)
        m = np.float32(0.0)
        for i in range(lo, hi):
            v = abs(a[i])
            if v > m:
                m = v
        absmax[b] = m
        d = m if m > z else z
        r = np.float32(one / d)
        for i in range(lo, hi):
            s = np.float32(a[i] * r) if reciprocal else np.float32(a[i] / d)
            s = min(max(s, -one), one)
            if midpoints:
                codes[i] = order[_count_below(t, s)]
            else:
                codes[i] = _nearest(np.float64(s), c)


@njit(**_PAR)
def bnb_4bit_packed_into(a, block, t, order, pad, packed, absmax):
    """bitsandbytes' default-backend ``quantize_4bit`` on float32 ``a``, packed high nibble first.

    Full blocks: ``s = a * float32(1 / max(absmax, 1e-38))``; the partial last block
    ``s = a / max(absmax, 1e-38)`` and its stored absmax is the clamped one; NaN in a
    block makes its absmax NaN (``torch.max``) and every ``s`` of it NaN; ``s`` is
    clipped to [-1, 1] (NaN stays) and bucketed (NaN last); an odd count pairs the
    last code with ``pad``.
    """
    n = a.size
    nb = absmax.size
    full = n // block
    tiny = np.float32(1e-38)
    one = np.float32(1.0)
    for b in prange(nb):
        lo = b * block
        hi = min(lo + block, n)
        m = np.float32(0.0)
        isnan = False
        for i in range(lo, hi):
            v = abs(a[i])
            if v != v:
                isnan = True
            elif v > m:
                m = v
        if isnan:
            m = np.float32(np.nan)
        d = np.float32(np.nan) if isnan else (m if m > tiny else tiny)
        partial = b >= full
        absmax[b] = d if partial else m
        r = np.float32(one / d)
        # blocks hold an even count except the last one, so pairs never straddle blocks
        for i in range(lo, hi, 2):
            s = np.float32(a[i] / d) if partial else np.float32(a[i] * r)
            s = min(max(s, -one), one) if s == s else s
            q0 = order[_count_below(t, s)]
            if i + 1 < hi:
                s = np.float32(a[i + 1] / d) if partial else np.float32(a[i + 1] * r)
                s = min(max(s, -one), one) if s == s else s
                q1 = order[_count_below(t, s)]
            else:
                q1 = pad
            packed[i >> 1] = ((q0 & 0xF) << 4) | (q1 & 0xF)


@njit(**_PAR)
def dequantize_into(q, absmax, c, block, out):
    """``out[i] = c[q[i]] * absmax[i // block]`` in float32."""
    n = q.size
    for b in prange(absmax.size):
        am = absmax[b]
        for i in range(b * block, min(b * block + block, n)):
            out[i] = np.float32(c[np.int64(q[i])] * am)


@njit(**_PAR)
def dequantize_4bit_packed_into(packed, absmax, c, block, n, out):
    """bitsandbytes' ``dequantize_4bit``: high nibble first, ``c[q] * absmax[i // block]`` in float32.

    ``block`` is even (bitsandbytes' block sizes), so a byte never straddles two blocks.
    """
    for b in prange(absmax.size):
        am = absmax[b]
        lo = b * block
        hi = min(lo + block, n)
        for i in range(lo, hi - 1, 2):
            byte = np.int64(packed[i >> 1])
            out[i] = np.float32(c[byte >> 4] * am)
            out[i + 1] = np.float32(c[byte & 0xF] * am)
        if (hi - lo) & 1:
            out[hi - 1] = np.float32(c[np.int64(packed[(hi - 1) >> 1]) >> 4] * am)


@njit(**_PAR)
def bnb_default_codes_into(a, block, t, codes, absmax):
    """bitsandbytes' default-backend ``quantize_blockwise``: as :func:`bnb_4bit_packed_into`
    (full blocks by reciprocal, the partial one divided and its absmax clamped, NaN last),
    one unpacked code per element, the count of sorted thresholds below the scaled value."""
    n = a.size
    full = n // block
    tiny = np.float32(1e-38)
    one = np.float32(1.0)
    for b in prange(absmax.size):
        lo = b * block
        hi = min(lo + block, n)
        m = np.float32(0.0)
        isnan = False
        for i in range(lo, hi):
            v = abs(a[i])
            if v != v:
                isnan = True
            elif v > m:
                m = v
        if isnan:
            m = np.float32(np.nan)
        d = np.float32(np.nan) if isnan else (m if m > tiny else tiny)
        partial = b >= full
        absmax[b] = d if partial else m
        r = np.float32(one / d)
        for i in range(lo, hi):
            s = np.float32(a[i] / d) if partial else np.float32(a[i] * r)
            s = min(max(s, -one), one) if s == s else s
            codes[i] = _count_below(t, s)


@njit(**_PAR)
def bnb_cpu_lut_into(a, block, lut, codes, absmax):
    """libbitsandbytes_cpu ``quantize_cpu_impl`` (compat.bnb._quantize_blockwise_cpu).

    absmax skips NaN (``std::max`` from 0); ``v = x * float32(1 / absmax)`` clamped to
    [-1, 1] (NaN stays), ``t = (v + 1) * 0.5`` in float32, ``w = float32(t * 65535 + 0.5)``
    (one rounding: exact in float64, as the fma), index ``trunc(w) & 0xFFFF`` (NaN: 0), code
    ``lut[index]``; an all-zero block writes zeros.
    """
    n = a.size
    one = np.float32(1.0)
    half = np.float32(0.5)
    for b in prange(absmax.size):
        lo = b * block
        hi = min(lo + block, n)
        m = np.float32(0.0)
        for i in range(lo, hi):
            v = abs(a[i])
            if v > m:  # False for NaN: m is kept
                m = v
        absmax[b] = m
        if m == 0:
            for i in range(lo, hi):
                codes[i] = 0
            continue
        inv = np.float32(one / m)
        for i in range(lo, hi):
            v = np.float32(a[i] * inv)
            if v < -one:
                v = -one
            elif v > one:
                v = one
            tt = np.float32(np.float32(v + one) * half)
            w = np.float32(np.float64(tt) * 65535.0 + 0.5)
            idx = 0 if w != w else np.int64(w) & 0xFFFF
            codes[i] = lut[idx]
