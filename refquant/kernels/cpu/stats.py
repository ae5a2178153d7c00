"""Numba kernel of the compression report's error sums (``refquant.compress``).

``error_sums(w, w_hat)`` returns ``(sum w**2, sum (w - w_hat)**2)`` over two 1-D
C-contiguous arrays of the same length (float32 or float64 each). Every element is read
in float64 (exact), the difference ``w - w_hat`` and each square are rounded once to
float64, as ``np.float64(w) - w_hat`` and ``d * d`` are in NumPy.

The order of the sums is fixed by this code, not by the CPU: element ``i`` goes to
accumulator ``i % LANES`` (``LANES = 256`` sequential float64 sums, kept in two small
arrays), and the accumulators are then added in order, ``0`` to ``LANES - 1``. Each lane
adds in the same order whatever vector width LLVM gives the inner loop (and fastmath is
off, so nothing is reassociated): the figures are the same on every CPU. Numba leaves
LLVM's SLP vectoriser off, so eight scalar accumulators stayed scalar (12 ms for 16M
float32 pairs on a Zen 5 core); the lane loop is vectorised by the loop vectoriser
(5.8 ms, the speed of reading the two arrays).

One pass over the two arrays, without temporaries: the report used to build float64
copies block by block and sum them with ``np.einsum`` (36 ms for the same arrays), whose
pairwise order is NumPy's own; the figures agree with it to float64 rounding (the tests
bound the difference at 1e-12 relative), not bit for bit.

``max_steps`` (the report's largest error in quantization steps) is below.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["error_sums", "max_steps"]


#: accumulators per sum: element i is added to lane i % LANES
LANES = 256


@njit(cache=True, nogil=True, error_model="numpy")
def error_sums(w, w_hat):
    n = w.size
    nb = n // LANES
    s = np.zeros(LANES)  # sum of w**2, per lane
    e = np.zeros(LANES)  # sum of (w - w_hat)**2, per lane
    for j in range(nb):
        wb = w[j * LANES:(j + 1) * LANES]
        hb = w_hat[j * LANES:(j + 1) * LANES]
        for k in range(LANES):
            a = np.float64(wb[k])
            d = a - np.float64(hb[k])
            s[k] += a * a
            e[k] += d * d
    for i in range(nb * LANES, n):
        a = np.float64(w[i])
        d = a - np.float64(w_hat[i])
        s[i - nb * LANES] += a * a
        e[i - nb * LANES] += d * d
    signal = 0.0
    noise = 0.0
    for k in range(LANES):
        signal += s[k]
        noise += e[k]
    return signal, noise


@njit(cache=True, nogil=True, error_model="numpy")
def max_steps(w, w_hat, steps, group):
    """``max |w - w_hat| / step`` over ``w``, ``w_hat`` of shape (rows, cols) (float32 or
    float64), element ``(r, c)`` divided by ``steps[r, c // group]`` (float64, ``steps`` of
    shape (rows, ceil(cols / group)); ``group = cols`` for one step per row): the difference
    and its absolute value in float64, one division, the maximum exact, the same value as
    ``(np.abs(w64 - w_hat) / steps_expanded).max()``. NaN anywhere gives NaN (as NumPy's
    ``max``); no element gives 0."""
    rows, cols = w.shape
    m = 0.0
    nan = False
    buf = np.empty(_CHUNK)
    bits = buf.view(np.int64)
    for r in range(rows):
        for g in range(steps.shape[1]):
            st = steps[r, g]
            c0 = g * group
            ws = w[r, c0:min(c0 + group, cols)]
            hs = w_hat[r, c0:min(c0 + group, cols)]
            if st > 0 and st < np.inf:
                # a / st rounds monotonically in a: the largest quotient is that of the
                # largest |error|, so one division per group. The largest |error| is taken on
                # the bits: a non-negative float64's bits order as its value, and a NaN's lie
                # above +Inf's; an integer max vectorises where a float one may not (NaN)
                top = np.int64(0)
                for k0 in range(0, ws.size, _CHUNK):
                    k1 = min(k0 + _CHUNK, ws.size)
                    for c in range(k1 - k0):
                        buf[c] = abs(np.float64(ws[k0 + c]) - np.float64(hs[k0 + c]))
                    for c in range(k1 - k0):
                        top = bits[c] if bits[c] > top else top
                if top > _INF_BITS:
                    nan = True
                    continue
                bits[0] = top
                e = buf[0] / st
                m = e if e > m else m
            else:  # a zero, infinite or NaN step: every quotient as it comes
                for c in range(ws.size):
                    e = abs(np.float64(ws[c]) - np.float64(hs[c])) / st
                    nan |= e != e
                    m = e if e > m else m
    return np.nan if nan else m


_CHUNK = 256
_INF_BITS = np.int64(0x7FF0000000000000)
