"""numba.cuda kernels: int8 GEMM (dp4a), binary GEMM (popc), int4 weight-only GEMM.

The low-level entry points that the public functions of ``refquant.kernels``
call with ``backend="cuda"``, after validating their arguments:

``matmul_int(a, b, za, zb)`` (:mod:`.int8`)
    (M, K) and (K, N) uint8 / int8, za (M,) and zb (N,) int32 -> int32 (M, N),
    exact ``(a - za) @ (b - zb)`` (modulo 2^32 when it would not fit int32).
``matmul_binary(a_packed, b_packed, k)`` (:mod:`.binary`)
    (M, W) and (N, W) uint64 sign words -> int32 (M, N), ``k - 2 popcount(a ^ b)``.
``matmul_int4(x, codes, scales, zeros, group_size)`` (:mod:`.int4`)
    float32 (M, K), uint8 codes (N, K), float32 (N, K // group_size) scales and
    zeros -> float32 (M, N), in a fixed order of float32 operations.

NumPy arrays in, NumPy arrays out; numba device arrays (or any object with
``__cuda_array_interface__``) are accepted for any argument without a copy,
and when an operand (``a`` / ``b``, ``a_packed`` / ``b_packed``, ``x`` /
``codes``) is a device array the result stays on the device as a numba device
array. Every launch configuration (threads per block, tile sizes, dp4a on or
off) lives in :mod:`._config`: 16 x 16 threads per block, a 64 x 64 output tile
per block, 4 x 4 outputs per thread, K staged through shared memory in steps of
32 bytes (int8), 8 words (binary) or 16 floats (int4).

Importing this package imports neither numba nor numba.cuda: the kernels are
built (and numba.cuda imported) on their first call. Under
``NUMBA_ENABLE_CUDASIM=1`` they run in numba-cuda's simulator, with plain device
functions in place of inline PTX and libdevice, giving the same results.
"""

from .binary import matmul_binary
from .int4 import matmul_int4
from .int8 import matmul_int

__all__ = ["matmul_int", "matmul_binary", "matmul_int4"]
