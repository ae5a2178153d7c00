"""The NumPy reference of the quantization formulas."""

from . import calibration  # noqa: E402,F401  (registers its range methods with choose_qparams)
from .affine import dequantize, fake_quantize, quantize
from .metrics import error_in_steps, max_abs_error, mse, sqnr_db
from .qparams import QParams, choose_qparams, minmax_range, qparams_from_range
from .rounding import ROUNDING_MODES, round_to_int

__all__ = [
    "quantize", "dequantize", "fake_quantize",
    "QParams", "choose_qparams", "qparams_from_range", "minmax_range",
    "ROUNDING_MODES", "round_to_int",
    "mse", "sqnr_db", "max_abs_error", "error_in_steps",
]
