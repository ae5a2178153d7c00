"""NumPy reference of the int4 weight-only matmul (W4A16 / W4A32), with a fixed summation order.

Weights are 4-bit codes ``q`` in 0..15 with one float32 scale ``s`` and one
float32 zero point ``z`` per group of ``group_size`` consecutive weights along
K (per output row n); activations ``x`` are float32 (float16 / bfloat16
activations are widened to float32 first, exactly). Everything is float32:

1. dequantize: ``w[n, k] = (float32(q[n, k]) - z[n, g]) * s[n, g]`` with
   ``g = k // group_size``; two float32 roundings (the subtraction is exact
   when ``z`` is an integer, as GPTQ's / AWQ's / compressed-tensors' are);
2. products ``x[m, k] * w[n, k]``, each rounded to float32 (no fused multiply-add);
3. sixteen lanes: lane ``j`` sums the products with ``k % 16 == j`` in
   increasing k, one float32 rounding per addition, starting from +0.0;
4. the lanes are reduced as a tree of float32 additions:
   ``l[j] + l[j + 8]`` (8 values), then ``+ [j + 4]`` (4), ``+ [j + 2]`` (2),
   and ``l[0] + l[1]``.

This order is the one a 16-wide SIMD accumulator gives (one 512-bit register of
float32, or two 256-bit ones), so the Numba kernel reproduces it bit for bit
without reassociating anything. Peers differ: GPTQ / AWQ CUDA kernels
accumulate in float16 or in float32 over other splits; torchao's
``_weight_int4pack_mm_for_cpu`` uses the form ``(q - 8) * s + z`` in bfloat16 /
float32 with its own blocking; their results differ from this one by summation
rounding (a few ULPs of the largest partial sum), never by the formula.
"""

from __future__ import annotations

import numpy as np

__all__ = ["LANES", "dequantize_int4", "matmul_int4"]

LANES = 16


def dequantize_int4(codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray,
                    group_size: int) -> np.ndarray:
    """``(float32(q) - z) * s`` per group: float32 (N, K) from codes (N, K) in 0..15."""
    g = np.arange(codes.shape[1]) // group_size
    return (codes.astype(np.float32) - zeros[:, g]) * scales[:, g]


def matmul_int4(x: np.ndarray, codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray,
                group_size: int) -> np.ndarray:
    """``x @ dequantize_int4(...).T`` in float32, summed in the module's fixed order.

    x float32 (M, K); codes uint8 (N, K); scales, zeros float32 (N, K // group_size).
    """
    m, k = x.shape
    n = codes.shape[0]
    w = dequantize_int4(codes, scales, zeros, group_size)
    lanes = np.zeros((m, n, LANES), np.float32)
    for k0 in range(0, k, LANES):
        width = min(LANES, k - k0)
        prod = x[:, None, k0:k0 + width] * w[None, :, k0:k0 + width]  # (m, n, width) float32
        lanes[:, :, :width] += prod
    half = LANES
    while half > 1:
        half //= 2
        lanes = lanes[:, :, :half] + lanes[:, :, half:2 * half]
    return lanes[:, :, 0].astype(np.float32)
