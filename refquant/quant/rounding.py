"""Rounding to integers, every mode by name (public home of :mod:`refquant._core.rounding`).

The implementation sits in the base layer so that ``formats/`` and ``kernels/`` can use
it without importing ``quant/``; this module keeps the documented public path.
"""

from .._core.rounding import ROUNDING_MODES, round_to_int

__all__ = ["ROUNDING_MODES", "round_to_int"]
