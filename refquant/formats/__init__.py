"""Number formats: what each format's codes are and what values they stand for.

Formats are registered under exact names (``int8``, ``uint4``, ...); see
:func:`get_format` and :func:`list_formats`. Each family lives in its own module.
"""

from . import (
    codebook,  # noqa: F401  (registers nf4, bnb_fp4, bnb_dynamic8)
    floats,  # noqa: F401  (registers float8_*, float6_*, float4_*, bfloat16, float16)
    ggml,  # noqa: F401  (registers q4_0 ... q8_k, tq1_0, tq2_0, ggml_mxfp4, iq4_nl, iq4_xs)
    ggml_iq,  # noqa: F401  (registers iq2_xxs, iq2_xs, iq2_s, iq3_xxs, iq3_s, iq1_s, iq1_m)
    mx,  # noqa: F401  (registers mxfp8_e4m3, mxfp8_e5m2, mxfp6_*, mxfp4, mxint8)
    nvfp4,  # noqa: F401  (registers nvfp4)
)
from ._registry import NumberFormat, get_format, list_formats, register
from .integer import IntFormat, IntRange, int_format

__all__ = ["NumberFormat", "get_format", "list_formats", "register", "IntFormat", "IntRange", "int_format"]
