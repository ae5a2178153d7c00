"""Exact int8 GEMM with zero points on a CUDA GPU: tiled shared memory, ``dp4a``.

The kernel computes, for a (M, K) and b (K, N) each uint8 or int8,

    c[m, n] = sum_k (a[m, k] - za[m]) * (b[k, n] - zb[n])

through the expansion that integer GEMM libraries use (gemmlowp
``doc/low-precision.md``; ONNX Runtime's MatMulInteger):

    c[m, n] = sum_k a[m, k] b[k, n]  -  za[m] * colsum_b[n]  -  zb[n] * rowsum_a[m]
              +  K * za[m] * zb[n]

The raw products are summed by ``dp4a`` on the bytes as stored (signed or
unsigned as the dtypes say: one of the four ``dp4a.{u,s}32.{u,s}32`` forms), so
no operand is widened. The row and column sums come from a first, small kernel
(one thread per row of a / column of b, int64). The raw sum wraps modulo 2^32
in the dp4a accumulator; the corrections are added in int64 and the total is
wrapped to int32 once. Addition and multiplication modulo 2^32 form a ring, so
the result is ``integer_matmul(a, b, za, zb, accumulate="int32_wrap")`` for
every input, and the exact value whenever the exact value fits int32 (the
public function refuses the shapes where it could not).

Launch configuration (:data:`._config.INT8_TILES`): blocks of 16 x 16 threads,
grid ``(ceil(N / 64), ceil(M / 64))``; each block stages 64 rows of a and 64
columns of b, 32 bytes of K each, as dp4a words in shared memory (b's columns
are transposed into words as they are loaded, so that both tiles are read along
K), and each thread keeps a 4 x 4 tile of int32 accumulators in registers.
K that is not a multiple of 32 is padded with zero bytes, which add nothing to
any sum.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ..._errors import RefquantError
from . import _config
from ._runtime import dp4a_function, finish, get_cuda, is_device_array, to_device

__all__ = ["matmul_int"]

cuda = None  # numba.cuda, bound by _kernels() on first use (the simulator swaps this global)


@functools.cache
def _kernels(a_signed: bool, b_signed: bool, tiles: _config.Tiles, use_dp4a: bool):
    """The (sums, gemm) kernels for one signedness pair and tile shape."""
    global cuda
    cuda = get_cuda()
    return _sources(a_signed, b_signed, tiles, dp4a_function(a_signed, b_signed, use_dp4a), cuda)


def _sources(a_signed, b_signed, tiles, dp4a, cuda_module, jit=True):
    """Build the kernels' Python functions (``jit=False``: undecorated, for
    ``cuda.compile_ptx``)."""
    int32 = cuda_module.types.int32
    int64 = cuda_module.types.int64
    uint32 = cuda_module.types.uint32
    tx_n, ty_n = tiles.threads_x, tiles.threads_y
    tm, tn = tiles.thread_m, tiles.thread_n
    bm, bn, bk = tiles.block_m, tiles.block_n, tiles.block_k
    if bk % 4:
        raise RefquantError(f"int8 tiles: block_k must be a multiple of 4, got {bk}")
    bkw = bk // 4  # dp4a words per K step
    nthreads = tx_n * ty_n

    def sums(a, b, rowsum_a, colsum_b):
        # one thread per row of a, then per column of b; exact in int64
        i = cuda.grid(1)
        m, k = a.shape
        n = b.shape[1]
        if i < m:
            s = int64(0)
            for kk in range(k):
                s += int64(a[i, kk])
            rowsum_a[i] = s
        if i < n:
            s = int64(0)
            for kk in range(k):
                s += int64(b[kk, i])
            colsum_b[i] = s

    def gemm(a, b, za, zb, rowsum_a, colsum_b, out):
        # shared tiles of dp4a words: sa[row][word] along K, sb[column][word] along K
        sa = cuda.shared.array((bm, bkw), dtype=uint32)
        sb = cuda.shared.array((bn, bkw), dtype=uint32)
        acc = cuda.local.array((tm, tn), dtype=int32)
        m, k = a.shape
        n = b.shape[1]
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * tx_n + tx
        row0 = cuda.blockIdx.y * bm
        col0 = cuda.blockIdx.x * bn
        for i in range(tm):
            for j in range(tn):
                acc[i, j] = 0
        for k0 in range(0, k, bk):
            # stage a: bm x bkw words, four consecutive bytes of a row each
            for w in range(tid, bm * bkw, nthreads):
                r = w // bkw
                kw = w - r * bkw
                gr = row0 + r
                word = int64(0)
                if gr < m:
                    for j in range(4):
                        kk = k0 + 4 * kw + j
                        if kk < k:
                            word |= (int64(a[gr, kk]) & 0xFF) << (8 * j)
                sa[r, kw] = word
            # stage b: bn x bkw words, four consecutive K bytes of one column each
            # (w runs along the columns, so neighbouring threads read neighbouring bytes)
            for w in range(tid, bn * bkw, nthreads):
                kw = w // bn
                c = w - kw * bn
                gc = col0 + c
                word = int64(0)
                if gc < n:
                    for j in range(4):
                        kk = k0 + 4 * kw + j
                        if kk < k:
                            word |= (int64(b[kk, gc]) & 0xFF) << (8 * j)
                sb[c, kw] = word
            cuda.syncthreads()
            for kw in range(bkw):
                for i in range(tm):
                    wa = sa[ty + ty_n * i, kw]
                    for j in range(tn):
                        acc[i, j] = dp4a(wa, sb[tx + tx_n * j, kw], acc[i, j])
            cuda.syncthreads()
        for i in range(tm):
            gr = row0 + ty + ty_n * i
            if gr < m:
                zam = int64(za[gr])
                for j in range(tn):
                    gc = col0 + tx + tx_n * j
                    if gc < n:
                        zbn = int64(zb[gc])
                        v = (
                            int64(acc[i, j])
                            - zam * colsum_b[gc]
                            - zbn * rowsum_a[gr]
                            + int64(k) * zam * zbn
                        )
                        # modulo 2^32, two's complement (exact when the value fits)
                        out[gr, gc] = ((v + 0x80000000) & 0xFFFFFFFF) - 0x80000000

    if not jit:
        return sums, gemm
    return cuda_module.jit(sums), cuda_module.jit(gemm)


_INT8 = {np.dtype(np.uint8): False, np.dtype(np.int8): True}


def matmul_int(a, b, za, zb, *, tiles=None, use_dp4a=None):
    """Exact ``(a - za) @ (b - zb)`` in int32 on the GPU (or the CUDA simulator).

    Parameters
    ----------
    a : (M, K) uint8 or int8, NumPy or device array
    b : (K, N) uint8 or int8, NumPy or device array
    za : (M,) int32
        Zero point per row of ``a`` (the public function broadcasts a scalar).
    zb : (N,) int32
        Zero point per column of ``b``.
    tiles : _config.Tiles, optional
        Launch configuration; default :data:`._config.INT8_TILES`.
    use_dp4a : bool, optional
        Use the ``dp4a`` instruction; default :data:`._config.USE_DP4A`. The
        simulator always runs the plain device function.

    Returns
    -------
    (M, N) int32: a NumPy array, or a device array when ``a`` or ``b`` is one.

    Formula
    -------
    :math:`c_{mn} = \\sum_k a_{mk} b_{kn} - z_{a,m} \\sum_k b_{kn} - z_{b,n}
    \\sum_k a_{mk} + K z_{a,m} z_{b,n}`, evaluated modulo :math:`2^{32}`: equal
    to the exact :math:`\\sum_k (a_{mk} - z_{a,m})(b_{kn} - z_{b,n})` whenever
    that fits int32, and to ``integer_matmul(..., accumulate="int32_wrap")``
    always. No rounding anywhere.

    Reference
    ---------
    ``refquant.quant.integer.integer_matmul``; ONNX MatMulInteger-10; PTX ISA
    ``dp4a``; gemmlowp ``doc/low-precision.md`` (the zero-point expansion).
    """
    tiles = _config.INT8_TILES if tiles is None else tiles
    use_dp4a = _config.USE_DP4A if use_dp4a is None else use_dp4a
    a_dt, b_dt = np.dtype(a.dtype), np.dtype(b.dtype)
    if a_dt not in _INT8 or b_dt not in _INT8:
        raise RefquantError(f"a and b must be uint8 or int8, got {a_dt} and {b_dt}")
    m, k = a.shape
    k_b, n = b.shape
    if k_b != k:
        raise RefquantError(f"a has K={k} but b has K={k_b}")
    device_out = is_device_array(a) or is_device_array(b)
    sums, gemm = _kernels(_INT8[a_dt], _INT8[b_dt], tiles, bool(use_dp4a))
    cuda_module = get_cuda()
    out = cuda_module.device_array((m, n), dtype=np.int32)
    if m == 0 or n == 0:
        return finish(out, device_out)
    d_a, d_b = to_device(a, a_dt), to_device(b, b_dt)
    d_za, d_zb = to_device(za, np.int32), to_device(zb, np.int32)
    rowsum_a = cuda_module.device_array(m, dtype=np.int64)
    colsum_b = cuda_module.device_array(n, dtype=np.int64)
    threads = min(_config.SUM_THREADS, max(m, n))
    sums[math.ceil(max(m, n) / threads), threads](d_a, d_b, rowsum_a, colsum_b)
    grid = (math.ceil(n / tiles.block_n), math.ceil(m / tiles.block_m))
    gemm[grid, (tiles.threads_x, tiles.threads_y)](d_a, d_b, d_za, d_zb, rowsum_a, colsum_b, out)
    return finish(out, device_out)
