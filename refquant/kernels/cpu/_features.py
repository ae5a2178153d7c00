"""The host CPU's instruction-set features, read once from LLVM (as Numba compiles for them).

Kernels choose an implementation path from these at run time (the CPU changes
between machines, and CI may run on any). ``REFQUANT_CPU_PATH`` may name a
path to force (for tests: a portable path must give the same results), but
never one the CPU cannot run.
"""

from __future__ import annotations

import functools
import os

__all__ = ["cpu_features", "has_feature", "cpu_name"]


@functools.cache
def cpu_features() -> frozenset[str]:
    """LLVM's names of the features this CPU has (``"avx512vnni"``, ``"amx-int8"``, ...)."""
    import llvmlite.binding as llvm  # numba's own dependency: always present

    return frozenset(k for k, v in llvm.get_host_cpu_features().items() if v)


@functools.cache
def cpu_name() -> str:
    """LLVM's name for this CPU (``"emeraldrapids"``, ``"znver5"``, ...)."""
    import llvmlite.binding as llvm

    return llvm.get_host_cpu_name()


def has_feature(*names: str) -> bool:
    """True when the CPU has every one of the LLVM feature ``names``."""
    feats = cpu_features()
    return all(n in feats for n in names)


def forced_path() -> str | None:
    """The implementation path that ``REFQUANT_CPU_PATH`` forces, if set."""
    return os.environ.get("REFQUANT_CPU_PATH") or None
