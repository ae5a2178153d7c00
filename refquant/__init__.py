"""refquant: the reference for the arithmetic of model compression.

Quantization and pruning formulas written once, exactly and readably, on plain
NumPy arrays; peers' semantics by name in :mod:`refquant.compat`; checkpoint
readers in :mod:`refquant.io`; checks for other implementations in
:mod:`refquant.testing`.
"""

from ._errors import RefquantError
from .formats import IntFormat, get_format, list_formats
from .quant import (
    ROUNDING_MODES,
    QParams,
    choose_qparams,
    dequantize,
    error_in_steps,
    fake_quantize,
    max_abs_error,
    mse,
    qparams_from_range,
    quantize,
    round_to_int,
    sqnr_db,
)
from .quant.binary import binarize, binarize_xnor, ternarize_absmean, ternarize_twn
from .quant.calibration import MovingAverageMinMax, calibrate_range
from .quant.dynamic import dynamic_quantize, dynamic_quantize_per_token
from .quant.floatq import dequantize_float, quantize_float
from .quant.integer import (
    integer_matmul,
    multiply_by_quantized_multiplier,
    quantize_bias,
    quantize_multiplier,
    requantize,
)
from .quant.pow2 import pow2_quantize

__version__ = "0.1.0"

__all__ = [
    "RefquantError",
    "IntFormat",
    "get_format",
    "list_formats",
    "quantize",
    "dequantize",
    "fake_quantize",
    "choose_qparams",
    "qparams_from_range",
    "QParams",
    "ROUNDING_MODES",
    "round_to_int",
    "mse",
    "sqnr_db",
    "max_abs_error",
    "error_in_steps",
    "calibrate_range",
    "MovingAverageMinMax",
    "dynamic_quantize",
    "dynamic_quantize_per_token",
    "quantize_float",
    "dequantize_float",
    "binarize",
    "binarize_xnor",
    "ternarize_twn",
    "ternarize_absmean",
    "pow2_quantize",
    "integer_matmul",
    "requantize",
    "quantize_multiplier",
    "multiply_by_quantized_multiplier",
    "quantize_bias",
]
