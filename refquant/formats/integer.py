"""Integer grids: signed and unsigned, 2 to 16 bits, full or narrow range.

An integer format is the set of codes ``{qmin, ..., qmax}``:

=========  ===========  ==================  ======================
signed     narrow_range  qmin                qmax
=========  ===========  ==================  ======================
yes        no            -2^(b-1)            2^(b-1) - 1
yes        yes           -(2^(b-1) - 1)      2^(b-1) - 1
no         no            0                   2^b - 1
no         yes           0                   2^b - 2
=========  ===========  ==================  ======================

Narrow range drops the most negative signed code so that the grid is symmetric
(int8 in [-127, 127], as TensorRT and TFLite's symmetric weights use it); for
unsigned formats it drops the top code (TF's ``narrow_range`` fake-quant).
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

import numpy as np

from .._errors import RefquantError
from ._registry import register

__all__ = ["IntFormat", "IntRange", "int_format", "integral"]

_NAME = re.compile(r"^(u?)int(\d+)(_narrow)?$")


@dataclass(frozen=True)
class IntFormat:
    """A ``bits``-wide integer grid, signed or unsigned, optionally narrow range."""

    bits: int
    signed: bool = True
    narrow_range: bool = False
    family: str = "integer"

    def __post_init__(self):
        if isinstance(self.bits, bool) or not isinstance(self.bits, (int, np.integer)):
            raise RefquantError(f"bits must be an integer, got {self.bits!r}")
        if not 2 <= self.bits <= 16:
            raise RefquantError(f"bits must be in 2..16, got {self.bits}")
        object.__setattr__(self, "bits", int(self.bits))

    @property
    def name(self) -> str:
        return f"{'' if self.signed else 'u'}int{self.bits}{'_narrow' if self.narrow_range else ''}"

    @property
    def qmin(self) -> int:
        if not self.signed:
            return 0
        return -(1 << (self.bits - 1)) + (1 if self.narrow_range else 0)

    @property
    def qmax(self) -> int:
        if self.signed:
            return (1 << (self.bits - 1)) - 1
        return (1 << self.bits) - 1 - (1 if self.narrow_range else 0)

    @property
    def levels(self) -> int:
        """Number of codes, ``qmax - qmin + 1``."""
        return self.qmax - self.qmin + 1

    @property
    def storage_dtype(self) -> np.dtype:
        """The smallest NumPy integer dtype that holds every code (int4 -> int8)."""
        if self.bits <= 8:
            return np.dtype(np.int8 if self.signed else np.uint8)
        return np.dtype(np.int16 if self.signed else np.uint16)

    def __repr__(self) -> str:
        return f"IntFormat({self.name!r}, qmin={self.qmin}, qmax={self.qmax})"


def integral(v, name: str) -> int:
    """``v`` as an int: any integer, or a float with an integral value (``15.0``)."""
    try:
        return operator.index(v)
    except TypeError:
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            return int(v)
        raise RefquantError(f"{name} must be an integer, got {v!r}") from None


class IntRange(IntFormat):
    """A custom integer grid ``[qmin, qmax]`` held in a NumPy integer ``storage`` dtype.

    For ranges that are not a full (or narrow) ``bits``-wide format: PyTorch's
    ``quant_min`` / ``quant_max`` (a 4-bit grid [0, 15] in a quint8 tensor),
    ``reduce_range``, and 32-bit grids such as PyTorch's qint32. It works
    everywhere an :class:`IntFormat` does; ``bits`` is the storage width, which
    is also the width at which ``overflow="wrap"`` wraps. Not registered.
    """

    def __init__(self, qmin: int, qmax: int, storage=None, name: str | None = None):
        qmin, qmax = integral(qmin, "quant_min"), integral(qmax, "quant_max")
        if qmin > qmax:
            raise RefquantError(f"quant_min {qmin} must be <= quant_max {qmax}")
        if storage is None:
            for cand in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64):
                info = np.iinfo(cand)
                if info.min <= qmin and qmax <= info.max:
                    storage = cand
                    break
            else:
                raise RefquantError(f"[{qmin}, {qmax}] does not fit any integer storage up to int64")
        try:
            st = np.dtype(storage)
        except TypeError:
            raise RefquantError(f"storage must be an integer dtype, got {storage!r}") from None
        if st.kind not in "iu":
            raise RefquantError(f"storage must be an integer dtype, got {st}")
        info = np.iinfo(st)
        if not info.min <= qmin <= qmax <= info.max:
            raise RefquantError(f"[{qmin}, {qmax}] does not fit the storage dtype {st}")
        object.__setattr__(self, "bits", st.itemsize * 8)
        object.__setattr__(self, "signed", info.min < 0)
        object.__setattr__(self, "narrow_range", False)
        object.__setattr__(self, "family", "integer")
        object.__setattr__(self, "_qmin", qmin)
        object.__setattr__(self, "_qmax", qmax)
        object.__setattr__(self, "_storage", st)
        object.__setattr__(self, "_name", name or f"{st.name}[{qmin}:{qmax}]")

    @property
    def qmin(self) -> int:
        return self._qmin

    @property
    def qmax(self) -> int:
        return self._qmax

    @property
    def storage_dtype(self) -> np.dtype:
        return self._storage

    @property
    def name(self) -> str:
        return self._name

    def __eq__(self, other):
        return isinstance(other, IntRange) and (self.qmin, self.qmax, self.storage_dtype) == (
            other.qmin, other.qmax, other.storage_dtype)

    def __hash__(self):
        return hash((IntRange, self._qmin, self._qmax, self._storage))

    def __repr__(self) -> str:
        return f"IntRange({self.qmin}, {self.qmax}, storage={self.storage_dtype.name})"


def int_format(dtype, narrow_range: bool | None = None) -> IntFormat:
    """Resolve ``dtype`` to an :class:`IntFormat`.

    ``dtype`` is a name (``"int8"``, ``"uint4"``, ``"int8_narrow"``), an
    :class:`IntFormat`, or a NumPy / ml_dtypes integer dtype (``np.int8``,
    ``ml_dtypes.int4``). ``narrow_range``, when given, overrides the format's.
    """
    if isinstance(dtype, IntRange):
        if narrow_range:
            raise RefquantError(f"narrow_range does not apply to the custom range {dtype.name}")
        return dtype
    if isinstance(dtype, IntFormat):
        fmt = dtype
    elif isinstance(dtype, str):
        m = _NAME.match(dtype)
        if not m:
            raise RefquantError(
                f"dtype {dtype!r} is not an integer format name (expected e.g. 'int8', 'uint4', "
                "'int8_narrow' with 2 to 16 bits)"
            )
        fmt = IntFormat(int(m.group(2)), signed=not m.group(1), narrow_range=bool(m.group(3)))
    else:
        try:
            npdt = np.dtype(dtype)
        except TypeError:
            raise RefquantError(f"dtype {dtype!r} is not an integer format") from None
        name = npdt.name
        m = _NAME.match(name)
        if npdt.kind not in "iuV" or not m:
            raise RefquantError(f"dtype {dtype!r} is not an integer format with 2 to 16 bits")
        fmt = IntFormat(int(m.group(2)), signed=not m.group(1))
    if narrow_range is not None and narrow_range != fmt.narrow_range:
        fmt = IntFormat(fmt.bits, fmt.signed, bool(narrow_range))
    return fmt


for _bits in range(2, 17):
    for _signed in (True, False):
        for _narrow in (False, True):
            register(IntFormat(_bits, _signed, _narrow))
del _bits, _signed, _narrow
