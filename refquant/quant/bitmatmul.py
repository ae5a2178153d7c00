"""NumPy references for bit-packed binary and ternary matmuls (slow and obvious on purpose).

The Numba kernels in ``refquant.kernels.cpu.binary`` reproduce these bit for
bit; the public functions that validate and pick a backend are in
``refquant.kernels.binary``. Inputs here are already validated: C-contiguous
``uint64`` words, padding bits zero.

Bit layout of a packed row (Larq Compute Engine's, widened to 64-bit words)::

    word w of a row, element x[64*w + j] -> bit j (least significant first)

      bit   63 ...  2  1  0
          [ x63 ... x2 x1 x0 ]     bit = 1  <=>  x < 0  (the code -1)
                                   bit = 0  <=>  x >= 0 (the code +1); padding is 0

A ternary row is two such planes of the same shape: ``nonzero`` (bit = 1 where
w != 0) and ``negative`` (bit = 1 where w < 0, never where w == 0).

The references unpack every bit to an integer and multiply in int64, so they
state the result by its definition (a sum of products of ±1 / {-1, 0, +1} /
int8 codes); the xor-popcount identity that the kernels use is derived in
:func:`matmul_binary`'s docstring and is not used here.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "unpack_sign_codes",
    "ternary_codes",
    "matmul_binary",
    "matmul_ternary_binary",
    "matmul_ternary_int8",
]


def unpack_sign_codes(packed: np.ndarray, k: int) -> np.ndarray:
    """The ±1 codes (int64) of the first ``k`` bits of each row of uint64 words."""
    rows = packed.shape[0]
    bytes_ = np.ascontiguousarray(packed).astype("<u8").view(np.uint8).reshape(rows, packed.shape[1] * 8)
    bits = np.unpackbits(bytes_, axis=1, bitorder="little")[:, :k]
    return 1 - 2 * bits.astype(np.int64)


def matmul_binary(a_packed: np.ndarray, b_packed: np.ndarray, k: int) -> np.ndarray:
    """Binary matmul of ±1 codes packed along K: ``A @ B.T`` as int32.

    Formula
    -------
    :math:`C_{mn} = \\sum_{i<k} a_{mi} b_{ni}` with :math:`a, b \\in \\{-1, +1\\}`.
    Two codes agree where their bits are equal, so with :math:`d` the number of
    disagreeing positions (:math:`d = \\mathrm{popcount}(A_m \\oplus B_n)`, the
    padding bits being zero in both), :math:`C_{mn} = (k - d) - d = k - 2d`.
    """
    a = unpack_sign_codes(a_packed, k)
    b = unpack_sign_codes(b_packed, k)
    return (a @ b.T).astype(np.int32)


def ternary_codes(nonzero: np.ndarray, negative: np.ndarray, k: int) -> np.ndarray:
    """The {-1, 0, +1} codes (int64) of two ternary bit planes, first ``k`` per row."""
    nz = (1 - unpack_sign_codes(nonzero, k)) // 2  # bit 1 -> code -1 -> 1
    sg = unpack_sign_codes(negative, k)
    return nz * sg


def matmul_ternary_binary(a_packed, nonzero, negative, k: int) -> np.ndarray:
    """±1 activations (packed) times ternary weights (two planes): int32 (M, N).

    Formula
    -------
    :math:`C_{mn} = \\sum_{i<k} a_{mi} t_{ni}`, :math:`t = [\\mathrm{nz}]\\,(1 - 2\\,\\mathrm{neg})`;
    the kernels compute it as
    :math:`\\mathrm{popcount}(\\mathrm{nz}_n) - 2\\,\\mathrm{popcount}(\\mathrm{nz}_n \\wedge
    (A_m \\oplus \\mathrm{neg}_n))`.
    """
    a = unpack_sign_codes(a_packed, k)
    t = ternary_codes(nonzero, negative, k)
    return (a @ t.T).astype(np.int32)


def matmul_ternary_int8(x: np.ndarray, nonzero, negative, k: int) -> np.ndarray:
    """int8 activations (M, k) times ternary weights (two planes): exact int32 (M, N)."""
    t = ternary_codes(nonzero, negative, k)
    return (x.astype(np.int64) @ t.T).astype(np.int32)
