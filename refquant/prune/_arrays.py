"""Argument conversion shared by the pruning modules: bad input becomes a RefquantError."""

from __future__ import annotations

import operator

import numpy as np

from .._errors import RefquantError

__all__ = ["as_array", "as_shape", "as_count", "is_choice", "check_prune_nm"]


def as_array(x, name: str) -> np.ndarray:
    """``np.asarray(x)``; a ragged or otherwise unconvertible input names ``name``."""
    try:
        return np.asarray(x)
    except (ValueError, TypeError, OverflowError) as e:
        raise RefquantError(f"{name} must be an array of numbers: {e}") from None


def as_count(value, name: str) -> int:
    """``value`` as a Python int >= 0 (ints only: 3.7 is refused, not truncated)."""
    if isinstance(value, bool | np.bool_):
        raise RefquantError(f"{name} must be an integer >= 0, got {value!r}")
    try:
        i = operator.index(value)
    except TypeError:
        raise RefquantError(f"{name} must be an integer >= 0, got {value!r:.60}") from None
    if i < 0:
        raise RefquantError(f"{name} must be an integer >= 0, got {i}")
    return i


def as_shape(shape, name: str = "shape") -> tuple[int, ...]:
    """A shape: one count or a sequence of counts, each an integer >= 0."""
    if not isinstance(shape, list | tuple) and np.ndim(shape) == 0:
        return (as_count(shape, name),)
    try:
        dims = list(shape)
    except TypeError:
        raise RefquantError(f"{name} must be an integer or a sequence of integers, got {shape!r:.60}") from None
    return tuple(as_count(d, f"{name}[{i}]") for i, d in enumerate(dims))


def is_choice(value, choices) -> bool:
    """Whether ``value`` is one of the option names ``choices`` (str, or None where listed).

    ``value in choices`` is not enough: an array compared with the names raises
    numpy's "truth value of an array is ambiguous" ValueError.
    """
    return (value is None and None in choices) or (isinstance(value, str) and value in choices)


def check_prune_nm(prune_n, prune_m) -> None:
    """``prune_n`` of every ``prune_m`` (N:M), or both 0 (unstructured); else RefquantError."""
    for name, v in (("prune_n", prune_n), ("prune_m", prune_m)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise RefquantError(f"{name} must be an int >= 0, got {v!r}")
    if (prune_n == 0) != (prune_m == 0) or prune_n > prune_m:
        raise RefquantError(
            f"prune_n, prune_m = {prune_n}, {prune_m}; expected 0 < prune_n <= prune_m "
            "(N:M) or both 0 (unstructured)"
        )
