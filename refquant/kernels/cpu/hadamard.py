"""Numba kernel of the Hadamard transform, bit for bit with ``refquant.quant.rotation``.

Input (validated by ``refquant.quant.rotation``): ``x`` float32 or float64 of
shape (rows, n), C-contiguous, transformed in place; ``base`` the K x K ±1
matrix in ``x``'s dtype; ``n = K * 2**m``.

Per row (``prange``): the butterflies ``a + b``, ``a - b`` on pairs at
distance ``c = 1, 2, 4, ... , n / (2K)`` (each a single rounding, no multiply),
then the K-point stage: output ``j * (n/K) + t`` is
``sum_k base[j, k] * v[k * (n/K) + t]`` accumulated for ``k = 0, 1, ..., K-1``
in that order starting from ``0.0`` (the reference's order; the products by ±1
are exact, so no fused multiply-add can change a rounding, and fastmath is
off). With ``K = 1`` the stage is skipped. Then, when ``scale`` is not zero,
each element is divided by ``scale``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["hadamard_rows"]


@njit(cache=True, parallel=True)
def hadamard_rows(x, base, scale):
    rows, n = x.shape
    k = base.shape[0]
    width = n // k
    for r in prange(rows):
        v = x[r]
        c = 1
        while c < width:
            for start in range(0, n, 2 * c):
                for t in range(c):
                    a = v[start + t]
                    b = v[start + c + t]
                    v[start + t] = a + b
                    v[start + c + t] = a - b
            c *= 2
        if k > 1:
            tmp = np.zeros(n, x.dtype)
            for j in range(k):
                for t in range(width):
                    acc = tmp[j * width + t]
                    for q in range(k):
                        acc = acc + base[j, q] * v[q * width + t]
                    tmp[j * width + t] = acc
            for i in range(n):
                v[i] = tmp[i]
        if scale != 0:
            for i in range(n):
                v[i] = v[i] / scale
