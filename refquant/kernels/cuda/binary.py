"""Binary (XNOR-popcount) GEMM on a CUDA GPU: tiled shared memory, 64-bit ``popc``.

Both operands are sign bits packed along K into uint64 words, as
``refquant.kernels.pack_signs`` writes them (Larq Compute Engine's order):

    word w of a row:  bit 63 ..................... bit 1   bit 0
                      x[64w + 63] < 0  ...  x[64w + 1] < 0   x[64w] < 0

with the padding bits past K zero in both operands. For ±1 vectors, a product
is -1 exactly where the two sign bits differ, so

    dot(x, y) = (K - d) - d = K - 2 d,   d = popcount(x_bits XOR y_bits),

and zero padding bits XOR to zero, adding nothing to d.

Launch configuration (:data:`._config.BINARY_TILES`): blocks of 16 x 16
threads, grid ``(ceil(N / 64), ceil(M / 64))``; each block stages 64 rows of
``a_packed`` and 64 rows of ``b_packed``, 8 words (512 bits of K) each, in
shared memory, and each thread keeps a 4 x 4 tile of int32 popcount sums. The
words stay uint64 everywhere: the simulator's ``popc`` (``bin(x).count("1")``)
miscounts a negative int64.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ..._errors import RefquantError
from . import _config
from ._runtime import finish, get_cuda, is_device_array, to_device

__all__ = ["matmul_binary"]

cuda = None  # numba.cuda, bound by _kernel() on first use (the simulator swaps this global)


@functools.cache
def _kernel(tiles: _config.Tiles):
    global cuda
    cuda = get_cuda()
    return _source(tiles, cuda)


def _source(tiles, cuda_module, jit=True):
    """Build the kernel's Python function (``jit=False``: undecorated, for
    ``cuda.compile_ptx``)."""
    int32 = cuda_module.types.int32
    int64 = cuda_module.types.int64
    uint64 = cuda_module.types.uint64
    tx_n, ty_n = tiles.threads_x, tiles.threads_y
    tm, tn = tiles.thread_m, tiles.thread_n
    bm, bn, bw = tiles.block_m, tiles.block_n, tiles.block_k
    nthreads = tx_n * ty_n

    def gemm(a, b, k, out):
        sa = cuda.shared.array((bm, bw), dtype=uint64)
        sb = cuda.shared.array((bn, bw), dtype=uint64)
        acc = cuda.local.array((tm, tn), dtype=int32)
        m, words = a.shape
        n = b.shape[0]
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * tx_n + tx
        row0 = cuda.blockIdx.y * bm
        col0 = cuda.blockIdx.x * bn
        zero = uint64(0)
        for i in range(tm):
            for j in range(tn):
                acc[i, j] = 0
        for w0 in range(0, words, bw):
            # neighbouring threads read neighbouring words of a row
            for t in range(tid, bm * bw, nthreads):
                r = t // bw
                c = t - r * bw
                if row0 + r < m and w0 + c < words:
                    sa[r, c] = a[row0 + r, w0 + c]
                else:
                    sa[r, c] = zero
            for t in range(tid, bn * bw, nthreads):
                r = t // bw
                c = t - r * bw
                if col0 + r < n and w0 + c < words:
                    sb[r, c] = b[col0 + r, w0 + c]
                else:
                    sb[r, c] = zero
            cuda.syncthreads()
            for c in range(bw):
                for i in range(tm):
                    wa = sa[ty + ty_n * i, c]
                    for j in range(tn):
                        acc[i, j] += cuda.popc(wa ^ sb[tx + tx_n * j, c])
            cuda.syncthreads()
        for i in range(tm):
            gr = row0 + ty + ty_n * i
            if gr < m:
                for j in range(tn):
                    gc = col0 + tx + tx_n * j
                    if gc < n:
                        out[gr, gc] = int64(k) - 2 * int64(acc[i, j])

    if not jit:
        return gemm
    return cuda_module.jit(gemm)


def matmul_binary(a_packed, b_packed, k, *, tiles=None):
    """``k - 2 * popcount(a XOR b)`` summed over the words, for every row pair.

    Parameters
    ----------
    a_packed : (M, W) uint64, NumPy or device array
        Sign bits of the rows of the left operand, packed along K (bit ``j`` of
        word ``w`` is ``x[64 w + j] < 0``), padding bits zero.
    b_packed : (N, W) uint64, NumPy or device array
        The same for the columns of the right operand (row-major: one row of
        words per output column).
    k : int
        The unpacked length K, ``64 (W - 1) < K <= 64 W``.
    tiles : _config.Tiles, optional
        Launch configuration; default :data:`._config.BINARY_TILES`
        (``block_k`` counts words).

    Returns
    -------
    (M, N) int32: a NumPy array, or a device array when an operand is one.

    Formula
    -------
    :math:`c_{mn} = K - 2 \\sum_w \\operatorname{popcount}(a_{mw} \\oplus b_{nw})
    = \\sum_k \\operatorname{sign}(x_{mk}) \\operatorname{sign}(y_{nk})` with
    :math:`\\operatorname{sign}(v) = -1` for :math:`v < 0` and :math:`+1`
    otherwise. Exact integer arithmetic, no rounding.

    Reference
    ---------
    XNOR-Net (Rastegari et al., 2016, eq. 8's binary dot product); Larq Compute
    Engine's bitpacking (sign bit set for negative values, least significant bit
    first); PTX ISA ``popc.b64``.
    """
    tiles = _config.BINARY_TILES if tiles is None else tiles
    for name, x in (("a_packed", a_packed), ("b_packed", b_packed)):
        if np.dtype(x.dtype) != np.uint64:
            raise RefquantError(f"{name} must be uint64 (unsigned words), got {x.dtype}")
    m, words = a_packed.shape
    n, words_b = b_packed.shape
    if words_b != words:
        raise RefquantError(f"a_packed has {words} words per row but b_packed has {words_b}")
    device_out = is_device_array(a_packed) or is_device_array(b_packed)
    gemm = _kernel(tiles)
    cuda_module = get_cuda()
    out = cuda_module.device_array((m, n), dtype=np.int32)
    if m == 0 or n == 0:
        return finish(out, device_out)
    d_a, d_b = to_device(a_packed, np.uint64), to_device(b_packed, np.uint64)
    grid = (math.ceil(n / tiles.block_n), math.ceil(m / tiles.block_m))
    gemm[grid, (tiles.threads_x, tiles.threads_y)](d_a, d_b, np.int64(k), out)
    return finish(out, device_out)
