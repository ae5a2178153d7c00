"""Kernels: the same results as the NumPy references, faster (Numba on the CPU, numba.cuda).

Importing this package compiles nothing and imports no Numba: each kernel module
is imported, and its Numba code compiled or loaded from the disk cache, on the
first call that runs it (``warmup()`` does it up front).
"""

from .matmul import matmul_int, matmul_int_requant, warmup

__all__ = ["matmul_int", "matmul_int_requant", "warmup"]
