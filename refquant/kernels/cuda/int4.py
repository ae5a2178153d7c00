"""Int4 weight-only GEMM on a CUDA GPU: float32 activations times 4-bit codes
with per-group scales and zero points, dequantized in shared memory.

The weights arrive unpacked, one code 0..15 per uint8 (``refquant.kernels.int4``
was not written when this kernel was: the public function unpacks whatever
layout it was given, GPTQ / AWQ / compressed-tensors, first), row ``n`` holding
output column ``n`` along K, with the "float zero point" form

    w[n, k] = (codes[n, k] - zeros[n, g]) * scales[n, g],   g = k // group_size.

Order of the float32 operations (fixed, so that the result is reproducible):

    w[n, k]   = fl(fl(float32(codes[n, k]) - zeros[n, g]) * scales[n, g])
    acc       = +0.0
    acc       = fl(acc + fl(x[m, k] * w[n, k]))      for k = 0, 1, ..., K - 1
    out[m, n] = acc

each ``fl`` one float32 operation rounded to nearest even, never fused: on a
GPU the multiply and the add go through libdevice's ``__nv_fmul_rn`` /
``__nv_fadd_rn``, which NVVM never contracts into an FMA; the simulator
computes in NumPy float32. So the kernel equals, bit for bit, the NumPy loop
``acc = acc + x[:, k, None] * w[None, :, k]`` in float32 over k (the test pins
this), on a GPU and in the simulator alike.

Bound against the exact value (float64 dequantize-then-matmul is exact to well
below it): with u = 2^-24 and gamma_n = n u / (1 - n u),

    |out[m, n] - sum_k x[m, k] (codes[n, k] - zeros[n, g]) scales[n, g]|
        <= gamma_(K+2) * sum_k |x[m, k]| |(codes[n, k] - zeros[n, g]) scales[n, g]|

(Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., section
3.1: K - 1 rounded additions, one rounded product and two roundings in the
dequantization per term), while nothing overflows or underflows.

Launch configuration (:data:`._config.INT4_TILES`): blocks of 16 x 16 threads,
grid ``(ceil(N / 64), ceil(M / 64))``; each block stages 64 rows of x and 64
dequantized weight rows, 16 elements of K each, in shared memory; each thread
keeps a 4 x 4 tile of float32 accumulators. K past the end is staged as zeros,
and ``+0.0 + 0.0 * 0.0`` leaves every accumulator as it was (an accumulator that
starts at +0.0 is never -0.0 under round-to-nearest).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ..._errors import RefquantError
from . import _config
from ._runtime import finish, float_ops, get_cuda, is_device_array, to_device

__all__ = ["matmul_int4"]

cuda = None  # numba.cuda, bound by _kernel() on first use (the simulator swaps this global)


@functools.cache
def _kernel(tiles: _config.Tiles):
    global cuda
    cuda = get_cuda()
    return _source(tiles, float_ops(True), cuda)


def _source(tiles, ops, cuda_module, jit=True):
    """Build the kernel's Python function (``jit=False``: undecorated, for
    ``cuda.compile_ptx``)."""
    fmul, fadd = ops
    float32 = cuda_module.types.float32
    tx_n, ty_n = tiles.threads_x, tiles.threads_y
    tm, tn = tiles.thread_m, tiles.thread_n
    bm, bn, bk = tiles.block_m, tiles.block_n, tiles.block_k
    nthreads = tx_n * ty_n

    def gemm(x, codes, scales, zeros, group_size, out):
        sx = cuda.shared.array((bm, bk), dtype=float32)
        sw = cuda.shared.array((bn, bk), dtype=float32)
        acc = cuda.local.array((tm, tn), dtype=float32)
        m, k = x.shape
        n = codes.shape[0]
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * tx_n + tx
        row0 = cuda.blockIdx.y * bm
        col0 = cuda.blockIdx.x * bn
        zero = float32(0.0)
        for i in range(tm):
            for j in range(tn):
                acc[i, j] = zero
        for k0 in range(0, k, bk):
            for t in range(tid, bm * bk, nthreads):
                r = t // bk
                c = t - r * bk
                if row0 + r < m and k0 + c < k:
                    sx[r, c] = x[row0 + r, k0 + c]
                else:
                    sx[r, c] = zero
            for t in range(tid, bn * bk, nthreads):
                r = t // bk
                c = t - r * bk
                gn = col0 + r
                kk = k0 + c
                if gn < n and kk < k:
                    g = kk // group_size
                    q = float32(codes[gn, kk]) - zeros[gn, g]
                    sw[r, c] = fmul(q, scales[gn, g])
                else:
                    sw[r, c] = zero
            cuda.syncthreads()
            for c in range(bk):
                for i in range(tm):
                    xv = sx[ty + ty_n * i, c]
                    for j in range(tn):
                        acc[i, j] = fadd(acc[i, j], fmul(xv, sw[tx + tx_n * j, c]))
            cuda.syncthreads()
        for i in range(tm):
            gr = row0 + ty + ty_n * i
            if gr < m:
                for j in range(tn):
                    gc = col0 + tx + tx_n * j
                    if gc < n:
                        out[gr, gc] = acc[i, j]

    if not jit:
        return gemm
    return cuda_module.jit(gemm)


def matmul_int4(x, codes, scales, zeros, group_size, *, tiles=None):
    """Float activations times int4 weights, dequantized per group: float32 (M, N).

    Parameters
    ----------
    x : (M, K) float32, NumPy or device array
    codes : (N, K) uint8 holding 0..15, NumPy or device array
        One code per byte (unpacked), row ``n`` = output column ``n``.
    scales : (N, K // group_size) float32
    zeros : (N, K // group_size) float32
        Zero points in the float form ``w = (q - z) * s``.
    group_size : int
        Divides K (the public function checks).
    tiles : _config.Tiles, optional
        Launch configuration; default :data:`._config.INT4_TILES`.

    Returns
    -------
    (M, N) float32: a NumPy array, or a device array when ``x`` or ``codes`` is one.

    Formula
    -------
    :math:`y_{mn} = \\sum_k x_{mk} (q_{nk} - z_{n,g(k)}) s_{n,g(k)}`, in float32
    in the order the module docstring fixes (dequantize, multiply, add in
    increasing k, every operation rounded to nearest even, no FMA); error at most
    :math:`\\gamma_{K+2} \\sum_k |x_{mk}| |(q_{nk} - z) s|` from the exact sum.

    Reference
    ---------
    The weight-only (W4A16 / W4A32) GEMM of GPTQ / AWQ kernels with per-group
    scales and zero points (dequantize to float, then multiply-accumulate);
    libdevice ``__nv_fmul_rn`` / ``__nv_fadd_rn`` (never contracted into FMA).
    """
    tiles = _config.INT4_TILES if tiles is None else tiles
    expected = (
        ("x", x, np.float32),
        ("codes", codes, np.uint8),
        ("scales", scales, np.float32),
        ("zeros", zeros, np.float32),
    )
    for name, arr, dt in expected:
        if np.dtype(arr.dtype) != dt:
            raise RefquantError(f"{name} must be {np.dtype(dt)}, got {arr.dtype}")
    m, k = x.shape
    n, k_w = codes.shape
    group_size = int(group_size)
    if k_w != k:
        raise RefquantError(f"x has K={k} but codes has K={k_w}")
    if group_size <= 0 or k % group_size:
        raise RefquantError(f"group_size {group_size} does not divide K={k}")
    groups = k // group_size
    for name, arr in (("scales", scales), ("zeros", zeros)):
        if tuple(arr.shape) != (n, groups):
            raise RefquantError(f"{name} has shape {tuple(arr.shape)}, expected {(n, groups)}")
    device_out = is_device_array(x) or is_device_array(codes)
    gemm = _kernel(tiles)
    cuda_module = get_cuda()
    out = cuda_module.device_array((m, n), dtype=np.float32)
    if m == 0 or n == 0:
        return finish(out, device_out)
    args = [to_device(arr, dt) for _, arr, dt in expected]
    grid = (math.ceil(n / tiles.block_n), math.ceil(m / tiles.block_m))
    gemm[grid, (tiles.threads_x, tiles.threads_y)](*args, np.int64(group_size), out)
    return finish(out, device_out)
