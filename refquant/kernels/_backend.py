"""Which implementation runs a kernel: the NumPy reference, Numba on the CPU, or numba.cuda.

Every public kernel takes ``backend=``:

``"numpy"``
    the NumPy reference (the definition of the result);
``"cpu"``
    the Numba kernel (bit-identical to the reference);
``"cuda"``
    the numba.cuda kernel (bit-identical; needs a GPU or ``NUMBA_ENABLE_CUDASIM=1``);
``"auto"``
    ``"cpu"`` when the work is large enough to pay for the call, else ``"numpy"``.

``REFQUANT_BACKEND=numpy`` in the environment forces the reference everywhere
(``"auto"``, ``"cpu"`` and ``"cuda"`` alike), so a user can rule the kernels out
when a result surprises them. Nothing here imports Numba: selecting a backend
is free, and Numba is imported (and compiles) only when a kernel first runs.
"""

from __future__ import annotations

import functools
import os

from .._errors import RefquantError

__all__ = ["BACKENDS", "resolve_backend", "cuda_available", "forced_backend"]

BACKENDS = ("auto", "numpy", "cpu", "cuda")


def forced_backend() -> str | None:
    """The backend that ``REFQUANT_BACKEND`` forces, or None (only "numpy" is honoured)."""
    env = os.environ.get("REFQUANT_BACKEND", "").strip().lower()
    if not env or env == "auto":
        return None
    if env != "numpy":
        raise RefquantError(
            f"REFQUANT_BACKEND={env!r} is not understood: it may only be 'numpy' (force the "
            "NumPy reference) or unset"
        )
    return "numpy"


@functools.cache
def _cuda_state() -> tuple[bool, str]:
    try:
        from numba import cuda  # numba-cuda redirects this import to itself
    except Exception as exc:  # noqa: BLE001 - any import failure means no CUDA
        return False, f"numba.cuda cannot be imported ({exc}); install refquant[cuda]"
    try:
        if cuda.is_available():
            return True, ""
    except Exception as exc:  # noqa: BLE001
        return False, f"numba.cuda reports no usable GPU ({exc})"
    return False, "no CUDA GPU is available (set NUMBA_ENABLE_CUDASIM=1 for the simulator)"


def cuda_available() -> bool:
    """True when numba.cuda can run kernels here (a GPU, or the simulator)."""
    return _cuda_state()[0]


def resolve_backend(backend, work: int, *, threshold: int, cuda: bool = True) -> str:
    """The backend that runs a call: "numpy", "cpu" or "cuda".

    Parameters
    ----------
    backend : str
        One of :data:`BACKENDS`, as the user passed it.
    work : int
        A measure of the call's size (multiply-adds for a matmul, elements for
        an element-wise kernel); ``"auto"`` picks ``"cpu"`` from ``threshold`` on.
    threshold : int
        The size from which the Numba kernel pays for its call overhead.
    cuda : bool
        Whether this kernel has a CUDA implementation at all.
    """
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise RefquantError(f"backend must be one of {BACKENDS}, got {backend!r}")
    forced = forced_backend()
    if forced is not None:
        return forced
    if backend == "auto":
        return "cpu" if work >= threshold else "numpy"
    if backend == "cuda":
        if not cuda:
            raise RefquantError("this kernel has no CUDA implementation; use backend='cpu'")
        ok, why = _cuda_state()
        if not ok:
            raise RefquantError(f"backend='cuda' was asked for, but {why}")
    return backend
