"""Kernels: the same results as the NumPy references, faster (Numba on the CPU, numba.cuda).

Importing this package compiles nothing and imports no Numba: each kernel module
is imported, and its Numba code compiled or loaded from the disk cache, on the
first call that runs it (``warmup()`` does it up front).
"""

# The public names load their module on first use (PEP 562): refquant.formats imports
# kernels._backend, and the kernel modules import refquant.formats back, so nothing here
# may import them eagerly.
_EXPORTS = {
    "matmul_int": "matmul", "matmul_int_requant": "matmul",
    "matmul_int4": "int4", "INT4_LAYOUTS": "int4",
    "matmul_ggml": "ggml_dot", "GGML_MATMUL_TYPES": "ggml_dot",
    "pack_signs": "binary", "matmul_binary": "binary", "pack_ternary": "binary",
    "matmul_ternary": "binary",
}

__all__ = ["matmul_int", "matmul_int_requant", "matmul_int4", "matmul_ggml", "pack_signs",
           "matmul_binary", "pack_ternary", "matmul_ternary", "INT4_LAYOUTS",
           "GGML_MATMUL_TYPES", "warmup"]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


def warmup() -> None:
    """Compile every CPU kernel this machine runs now (or load it from Numba's disk cache).

    Otherwise the first call of each kernel pays its compilation (seconds on a
    first run, a fraction of a second once the cache under ``__pycache__`` exists).
    """
    from . import binary, ggml_dot, int4, matmul

    matmul.warmup()
    binary._warmup()
    int4._warmup()
    ggml_dot._warmup()
