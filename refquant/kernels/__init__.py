"""Kernels: the same results as the NumPy references, faster (Numba on the CPU, numba.cuda).

Importing this package compiles nothing and imports no Numba: each kernel module
is imported, and its Numba code compiled or loaded from the disk cache, on the
first call that runs it (``warmup()`` does it up front).
"""

from .binary import matmul_binary, matmul_ternary, pack_signs, pack_ternary
from .ggml_dot import GGML_MATMUL_TYPES, matmul_ggml
from .int4 import INT4_LAYOUTS, matmul_int4
from .matmul import matmul_int, matmul_int_requant
from .matmul import warmup as _warmup_int8

__all__ = ["matmul_int", "matmul_int_requant", "matmul_int4", "matmul_ggml", "pack_signs",
           "matmul_binary", "pack_ternary", "matmul_ternary", "INT4_LAYOUTS",
           "GGML_MATMUL_TYPES", "warmup"]


def warmup() -> None:
    """Compile every CPU kernel this machine runs now (or load it from Numba's disk cache).

    Otherwise the first call of each kernel pays its compilation (seconds on a
    first run, a fraction of a second once the cache under ``__pycache__`` exists).
    """
    from . import binary, ggml_dot, int4

    _warmup_int8()
    binary._warmup()
    int4._warmup()
    ggml_dot._warmup()
