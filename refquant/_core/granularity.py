"""Broadcasting quantization parameters over a tensor: per tensor, per axis, per block.

=============  =========================  =======================================
granularity    arguments                  parameter shape for x of shape S
=============  =========================  =======================================
per tensor     axis=None, block_size=None  () (or any shape of size 1)
per axis       axis=a                      (S[a],)
blocked        axis=a, block_size=B        S with S[a] replaced by ceil(S[a] / B)
=============  =========================  =======================================

Blocks run along ``axis`` from index 0; when ``B`` does not divide ``S[a]`` the
last block is partial and has a parameter of its own, as ONNX opset 21 defines
blocked quantization (DequantizeLinear-21). A scalar parameter is shared by every
channel or block (a zero point of 0 with per-channel scales).
"""

from __future__ import annotations

import operator

import numpy as np

from .._errors import RefquantError

__all__ = ["as_array", "normalize_axis", "positive_int", "check_block_size", "param_shape", "broadcast_param",
           "broadcasts_to", "reduce_groups"]


def as_array(value, name: str, dtype=None) -> np.ndarray:
    """``np.asarray(value, dtype)``; a ragged list, text or an impossible conversion is a
    RefquantError naming ``name`` (NumPy raises ValueError / TypeError)."""
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        raise RefquantError(f"{name} must be a rectangular array of real numbers") from None


def normalize_axis(axis, ndim: int, name: str = "axis") -> int:
    """``axis`` as a non-negative int in ``range(ndim)``; negative counts from the end."""
    try:
        a = operator.index(axis)
    except TypeError:
        raise RefquantError(f"{name} must be an integer, got {axis!r}") from None
    if not -ndim <= a < ndim:
        raise RefquantError(f"{name} {a} is out of range for an array of {ndim} dimension(s)")
    return a % ndim


def positive_int(value, name: str) -> int:
    """``value`` as a Python int > 0; RefquantError naming ``name`` otherwise."""
    try:
        i = operator.index(value)
    except TypeError:
        raise RefquantError(f"{name} must be a positive integer, got {value!r}") from None
    if i <= 0:
        raise RefquantError(f"{name} must be a positive integer, got {i}")
    return int(i)


def check_block_size(block_size, axis) -> int | None:
    if block_size is None:
        return None
    b = positive_int(block_size, "block_size")
    if axis is None:
        raise RefquantError("block_size needs an axis along which the blocks run; axis is None")
    return b


def param_shape(shape, axis, block_size) -> tuple:
    """Shape of a parameter for an array of ``shape`` at the given granularity."""
    if axis is None:
        return ()
    if block_size is None:
        return (shape[axis],)
    out = list(shape)
    out[axis] = -(-shape[axis] // block_size)
    return tuple(out)


def broadcasts_to(small_shape, shape) -> bool:
    """Whether an array of ``small_shape`` broadcasts to exactly ``shape`` (NumPy's rules)."""
    try:
        return np.broadcast_shapes(tuple(small_shape), tuple(shape)) == tuple(shape)
    except ValueError:
        return False


def broadcast_param(p, shape, axis, block_size, name: str) -> np.ndarray:
    """Expand parameter ``p`` to ``shape`` for the given granularity (a view where possible).

    ``axis`` must already be normalised (see :func:`normalize_axis`) or None.
    """
    p = np.asarray(p)
    if axis is None:
        if p.size != 1:
            raise RefquantError(
                f"{name} has shape {p.shape} but a per-tensor {name} must be a scalar; "
                "pass axis= for per-axis or axis= and block_size= for blocked parameters"
            )
        return p.reshape(())
    want = param_shape(shape, axis, block_size)
    if p.ndim == 0 or p.shape == (1,):
        return p.reshape(())  # one value shared by every channel or block
    if block_size is None:
        if p.shape != want:
            raise RefquantError(
                f"{name} has shape {p.shape} but per-axis parameters along axis {axis} of an "
                f"array of shape {tuple(shape)} need shape {want}"
            )
        view = [1] * len(shape)
        view[axis] = shape[axis]
        return p.reshape(view)
    if p.shape != want:
        raise RefquantError(
            f"{name} has shape {p.shape} but blocks of {block_size} along axis {axis} of an "
            f"array of shape {tuple(shape)} need shape {want}"
        )
    # a block longer than the axis is one partial block: repeat no further than the axis
    return np.repeat(p, min(block_size, max(shape[axis], 1)), axis=axis)[
        tuple(slice(0, n) if i == axis else slice(None) for i, n in enumerate(shape))
    ]


def reduce_groups(x: np.ndarray, axis, block_size, ufunc) -> np.ndarray:
    """Reduce ``x`` with ``ufunc`` (``np.minimum``, ``np.maximum``, ``np.add``) per group.

    Returns the parameter-shaped result for the granularity: a scalar for per
    tensor, shape ``(S[axis],)`` for per axis, the blocked shape for blocks. An
    empty group reduces to the ufunc's identity, which callers must handle.
    """
    if axis is None:
        return ufunc.reduce(x, axis=None)
    if block_size is None:
        others = tuple(i for i in range(x.ndim) if i != axis)
        return ufunc.reduce(x, axis=others) if others else x.copy()
    n = x.shape[axis]
    if n == 0:
        shape = list(x.shape)
        shape[axis] = 0
        return np.empty(shape, dtype=x.dtype)
    starts = np.arange(0, n, min(block_size, n))  # a block longer than the axis: one block
    return ufunc.reduceat(x, starts, axis=axis)
