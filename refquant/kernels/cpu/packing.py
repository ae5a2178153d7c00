"""Numba kernels for bit packing: ``per`` codes of ``bits`` bits into one word, and back.

The exact twins of :func:`refquant.kernels.packing.pack` / :func:`~refquant.kernels.packing.unpack`
(the NumPy reference) on 2-D arrays whose last axis is the packing axis: word ``w`` of
a row holds codes ``w * per .. w * per + per - 1``, code ``j`` of a word in the
field at bit ``shifts[j]`` (``j * bits`` for ``low_first``, ``(per - 1 - j) * bits``
for ``high_first``), the last word padded with ``pad``. Integer arithmetic only; rows
are independent (``prange``). The public functions validate (code ranges, dtypes,
``n``) and call these with contiguous arrays; nothing compiles at import.

Reference: :mod:`refquant.kernels.packing`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["pack_into", "unpack_into"]

_PAR = dict(cache=True, nogil=True, parallel=True)


@njit(**_PAR)
def pack_into(c, bits, shifts, pad, out):
    """``out[r, w] = OR_j ((c[r, w * per + j] & mask) << shifts[j])`` (``pad`` past the end)."""
    rows, n = c.shape
    nw = out.shape[1]
    per = shifts.size
    imask = (np.int64(1) << bits) - 1  # two's complement field of a signed code: mask in int64
    padf = np.uint64(np.int64(pad) & imask)
    for r in prange(rows):
        for w in range(nw):
            acc = np.uint64(0)
            base = w * per
            for j in range(per):
                i = base + j
                f = np.uint64(np.int64(c[r, i]) & imask) if i < n else padf
                acc |= f << np.uint64(shifts[j])
            out[r, w] = acc


@njit(**_PAR)
def unpack_into(words, bits, shifts, signed, out):
    """``out[r, i]`` = field ``i % per`` of word ``i // per``, sign-extended when ``signed``."""
    rows, n = out.shape
    per = shifts.size
    mask = (np.uint64(1) << np.uint64(bits)) - np.uint64(1)
    top = np.int64(1) << (bits - 1)
    full = np.int64(1) << bits
    for r in prange(rows):
        for i in range(n):
            f = np.int64((np.uint64(words[r, i // per]) >> np.uint64(shifts[i % per])) & mask)
            if signed and f >= top:
                f -= full
            out[r, i] = f
