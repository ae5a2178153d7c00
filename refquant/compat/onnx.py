"""ONNX's quantization operators, by the operator's own names and attribute names.

One function per operator, read beside its spec (``onnx/defs/quantization/defs.cc``
and ``old.cc``; the rendered text is ``onnx.defs.get_schema(op, opset).doc``):

=========================  ============================================================
function                   operator (opsets whose semantics it covers)
=========================  ============================================================
:func:`quantize_linear`    QuantizeLinear 10, 13, 19, 21, 23, 24, 25, 28
:func:`dequantize_linear`  DequantizeLinear 10, 13, 19, 21, 23, 24, 25, 28
:func:`dynamic_quantize_linear`  DynamicQuantizeLinear 11
:func:`matmul_integer`     MatMulInteger 10
:func:`qlinear_matmul`     QLinearMatMul 10, 21 (integer types)
=========================  ============================================================

``opset=`` is the model's ai.onnx opset, 10 to 28 (the newest of onnx 1.23), and selects
the operator version that opset resolves to, as a runtime does: opsets 26 and 27
run QuantizeLinear-25, opset 22 runs QuantizeLinear-21.

The functions pass ONNX's own backend node tests for these operators (onnx 1.23's
``onnx/backend/test/case/node``; ``tests/peers/test_onnx_conformance.py``). Where
those tests and refquant's reading of the spec disagreed, refquant follows the
tests, and each function's docstring says where.

Types are TensorProto enum values (``3``), their names (``"INT8"``, ``"int8"``,
``"float8e4m3fn"``), refquant format names (``"float8_e4m3fn"``) or NumPy /
ml_dtypes dtypes. Results carry the ONNX element type as a NumPy or ml_dtypes
dtype (``ml_dtypes.int4`` for INT4, ``ml_dtypes.float8_e4m3fn`` for
FLOAT8E4M3FN), so they feed straight back into :func:`dequantize_linear`.

The arithmetic is refquant's core (:func:`refquant.quantize`,
:func:`refquant.dequantize`, :func:`refquant.qparams_from_range`, the float
formats of :mod:`refquant.formats.floats`); this module only fixes its arguments
the way the spec reads. Where ``onnx.reference`` (the NumPy reference evaluator)
departs from the spec, the spec is the default and ``reference_quirks=True``
gives the evaluator's result; every such departure is listed in the function's
docstring with its cause.
"""

from __future__ import annotations

import functools
import operator

import ml_dtypes
import numpy as np

from .._core.granularity import broadcast_param, broadcasts_to, normalize_axis
from .._core.rounding import round_to_int
from .._errors import RefquantError
from ..formats.integer import int_format
from ..quant.affine import check_scale, dequantize, quantize
from ..quant.integer import integer_matmul
from ..quant.qparams import minmax_range, qparams_from_range

__all__ = [
    "TENSOR_TYPES",
    "quantize_linear",
    "dequantize_linear",
    "dynamic_quantize_linear",
    "matmul_integer",
    "qlinear_matmul",
]

#: TensorProto.DataType enum values of the types these operators use (onnx/onnx.proto).
TENSOR_TYPES = {
    "float": 1, "uint8": 2, "int8": 3, "uint16": 4, "int16": 5, "int32": 6,
    "double": 11, "float16": 10, "bfloat16": 16, "float8e4m3fn": 17, "float8e4m3fnuz": 18,
    "float8e5m2": 19, "float8e5m2fnuz": 20, "uint4": 21, "int4": 22, "float4e2m1": 23,
    "float8e8m0": 24, "uint2": 25, "int2": 26, "float6e2m3": 27, "float6e3m2": 28,
}
_BY_ENUM = {v: k for k, v in TENSOR_TYPES.items()}

_NUMPY = {
    "float": np.dtype(np.float32), "double": np.dtype(np.float64),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16), "int32": np.dtype(np.int32),
    "uint8": np.dtype(np.uint8), "int8": np.dtype(np.int8),
    "uint16": np.dtype(np.uint16), "int16": np.dtype(np.int16),
    "uint4": np.dtype(ml_dtypes.uint4), "int4": np.dtype(ml_dtypes.int4),
    "uint2": np.dtype(ml_dtypes.uint2), "int2": np.dtype(ml_dtypes.int2),
    "float8e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8e4m3fnuz": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "float8e5m2": np.dtype(ml_dtypes.float8_e5m2),
    "float8e5m2fnuz": np.dtype(ml_dtypes.float8_e5m2fnuz),
    "float4e2m1": np.dtype(ml_dtypes.float4_e2m1fn),
    "float8e8m0": np.dtype(ml_dtypes.float8_e8m0fnu),
    "float6e2m3": np.dtype(ml_dtypes.float6_e2m3fn),
    "float6e3m2": np.dtype(ml_dtypes.float6_e3m2fn),
}
_BY_NUMPY = {v: k for k, v in _NUMPY.items()}

# refquant.formats.floats names of the ONNX float types.
_FLOAT_FORMATS = {
    "float8e4m3fn": "float8_e4m3fn", "float8e4m3fnuz": "float8_e4m3fnuz",
    "float8e5m2": "float8_e5m2", "float8e5m2fnuz": "float8_e5m2fnuz",
    "float4e2m1": "float4_e2m1fn", "float6e2m3": "float6_e2m3fn", "float6e3m2": "float6_e3m2fn",
}
# The float types without Inf / NaN encodings: saturate has no effect, and the zero point
# is added to the quotient (see quantize_linear's Notes).
_NO_INF_FORMATS = ("float4e2m1", "float6e2m3", "float6e3m2")
_INTEGER_OUTPUTS = ("uint8", "int8", "uint16", "int16", "uint4", "int4", "uint2", "int2")
_PRECISIONS = ("float", "float16", "bfloat16")

# QuantizeLinear / DequantizeLinear: the opset that first allows each quantized type
# (the T2 / T3 type constraints in defs.cc and old.cc).
_TYPE_SINCE = {
    "uint8": 10, "int8": 10, "int32": 10,
    "float8e4m3fn": 19, "float8e4m3fnuz": 19, "float8e5m2": 19, "float8e5m2fnuz": 19,
    "uint16": 21, "int16": 21, "uint4": 21, "int4": 21,
    "float4e2m1": 23,
    "uint2": 25, "int2": 25,
    "float6e2m3": 28, "float6e3m2": 28,
    "float8e8m0": 24,  # as a scale (T2)
}
# ... and each attribute.
_ATTR_SINCE = {"axis": 13, "saturate": 19, "block_size": 21, "output_dtype": 21, "precision": 23}
# The versions of QuantizeLinear / DequantizeLinear (onnx.defs.get_schema(op, v).since_version),
# and the newest ai.onnx opset of the pinned onnx release (1.23: 28).
_VERSIONS = (10, 13, 19, 21, 23, 24, 25, 28)
_MAX_OPSET = 28


def _type_name(t, argname: str) -> str:
    """ONNX type name of ``t`` (enum value, name, refquant name or dtype)."""
    if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
        if int(t) in _BY_ENUM:
            return _BY_ENUM[int(t)]
        raise RefquantError(f"{argname} {int(t)} is not a TensorProto type these operators take")
    if isinstance(t, str):
        key = t.lower().replace("_", "")
        key = {"float32": "float", "float4e2m1fn": "float4e2m1", "float8e8m0fnu": "float8e8m0",
               "float6e2m3fn": "float6e2m3", "float6e3m2fn": "float6e3m2"}.get(key, key)
        if key in TENSOR_TYPES:
            return key
        raise RefquantError(f"{argname} {t!r} is not an ONNX type name (e.g. 'int8', 'float8e4m3fn')")
    try:
        dt = np.dtype(t)
    except TypeError:
        raise RefquantError(f"{argname} {t!r} is not an ONNX type") from None
    if dt in _BY_NUMPY:
        return _BY_NUMPY[dt]
    raise RefquantError(f"{argname} has dtype {dt}, which is not an ONNX type these operators take")


def _check_attributes(**attrs) -> None:
    """Attributes are single values (an int, a type name, a dtype), never sequences."""
    for name, v in attrs.items():
        if isinstance(v, (list, tuple, dict, set)) or (isinstance(v, np.ndarray) and v.ndim):
            raise RefquantError(f"{name} must be a single value (an ONNX attribute), got {v!r}")


def _op_version(opset) -> int:
    """The operator version a model at ai.onnx ``opset`` runs (the newest since_version <= opset)."""
    try:
        o = operator.index(opset)
    except TypeError:
        raise RefquantError(f"opset must be an integer, got {opset!r}") from None
    if not _VERSIONS[0] <= o <= _MAX_OPSET:
        raise RefquantError(
            f"opset must be an ai.onnx opset from {_VERSIONS[0]} (the first with these "
            f"operators) to {_MAX_OPSET} (the newest of onnx 1.23), got {o}"
        )
    return max(v for v in _VERSIONS if v <= o)


def _check_opset(opset, used: dict, types: tuple) -> int:
    """Check attributes and types against ``opset``; return the operator version it runs."""
    version = _op_version(opset)
    for attr, given in used.items():
        if given and opset < _ATTR_SINCE[attr]:
            raise RefquantError(
                f"attribute {attr} needs opset >= {_ATTR_SINCE[attr]}; got opset {opset}"
            )
    for t in types:
        if opset < _TYPE_SINCE.get(t, 0):
            raise RefquantError(f"type {t} needs opset >= {_TYPE_SINCE[t]}; got opset {opset}")
    return version


def _check_float_types(opset, x_type, scale_type, xname, sname):
    """The float types of x / scale an opset allows (T1 / T2 of defs.cc and old.cc).

    Before opset 19 the scale is float only (and QuantizeLinear's x float or int32);
    at opsets 19 and 21 QuantizeLinear's x and y_scale share one type constraint T1.
    """
    for name, t in ((xname, x_type), (sname, scale_type)):
        if name and t in ("float16", "bfloat16") and opset < 19:
            raise RefquantError(f"{name} of type {t} needs opset >= 19; got opset {opset}")
    if xname and opset in (19, 21) and x_type != "int32" and x_type != scale_type:
        raise RefquantError(
            f"opset {opset} takes x and y_scale of one type (T1); got {x_type} and {scale_type} "
            "(different types came with opset 23)"
        )


def _scale_values(scale):
    """(scale, ONNX type name): a float8e8m0 scale becomes its float32 values, which are exact.

    Every float8e8m0 value (2^-127 .. 2^127) is a float32 (2^-127 a subnormal one); its
    NaN (0xFF) becomes a float32 NaN, which check_scale refuses.
    """
    a = np.asarray(scale)
    if a.dtype == _NUMPY["float8e8m0"]:
        return a.astype(np.float32), "float8e8m0"
    return scale, None


def _zero_point_shape(zp, s, ax, zname, sname):
    """The zero point, checked against the scale's shape (the spec: "Shape must match").

    Per tensor, ONNX's backend node tests (``test_quantizelinear_e4m3fn``,
    ``test_dequantizelinear_uint4``, ...) pass a zero point of shape (1,) with a scalar
    scale, which onnx.reference and onnxruntime accept: refquant follows them and takes
    a scale and a zero point of one element each, whatever their shapes.
    """
    if zp is None:
        return None
    if ax is None and s.size == 1 and zp.size == 1:
        return zp.reshape(s.shape)
    if zp.shape != s.shape:
        raise RefquantError(
            f"{zname} has shape {zp.shape} but {sname} has shape {s.shape}: "
            "the spec requires the same shape"
        )
    return zp


def _check_per_axis_opset(opset, ax, argname):
    if ax is not None and opset < 13:
        raise RefquantError(
            f"{argname} is not a scalar, but opset {opset} quantizes per tensor only "
            "(per-axis scales came with opset 13)"
        )


def _granularity(x_shape, scale, axis, block_size, argname):
    """(axis, block_size) for the core from the shape of the scale, as the spec defines.

    Scalar scale: per tensor. 1-D scale and block_size 0: per axis. Scale of x's
    rank and block_size > 0: blocked, with block_size in the spec's accepted range
    ``[ceil(Di/Si), ceil(Di/(Si-1)) - 1]``.
    """
    try:
        b = operator.index(block_size)
    except TypeError:
        raise RefquantError(f"block_size must be an integer, got {block_size!r}") from None
    if b < 0:
        raise RefquantError(f"block_size must be 0 (not blocked) or positive, got {b}")
    s = np.asarray(scale)
    if b == 0:
        if s.size == 1:
            return None, None
        if s.ndim != 1:
            raise RefquantError(
                f"{argname} has shape {s.shape}; without block_size it must be a scalar "
                "(per tensor) or a 1-D tensor (per axis)"
            )
        a = normalize_axis(axis, len(x_shape))
        if s.shape[0] != x_shape[a]:
            raise RefquantError(
                f"{argname} has length {s.shape[0]} but per-axis quantization along axis {a} "
                f"of an input of shape {tuple(x_shape)} needs length {x_shape[a]}"
            )
        return a, None
    a = normalize_axis(axis, len(x_shape))
    if s.ndim != len(x_shape):
        raise RefquantError(
            f"{argname} has shape {s.shape}; blocked quantization needs the rank of the input "
            f"{tuple(x_shape)}"
        )
    for i, (d, n) in enumerate(zip(x_shape, s.shape, strict=True)):
        if i != a and d != n:
            raise RefquantError(
                f"{argname} has shape {s.shape}; blocked quantization along axis {a} needs it to "
                f"equal the input's shape {tuple(x_shape)} except along axis {a}"
            )
    di, si = x_shape[a], s.shape[a]
    lo = -(-di // si) if si else 0
    hi = (-(-di // (si - 1)) - 1) if si > 1 else None
    if si == 0 or b < lo or (hi is not None and b > hi):
        rng = f"[{lo}, {'inf' if hi is None else hi}]"
        raise RefquantError(
            f"block_size {b} is not in the accepted range {rng} = [ceil(Di/Si), "
            f"ceil(Di/(Si-1))-1] for Di = {di} (input length along axis {a}) and Si = {si} "
            f"({argname} length along axis {a})"
        )
    # one block (Si = 1) for every b >= Di: the same as b = Di, which the core can hold
    return a, (min(b, di) if si == 1 else b)


def _divide_in(x, scale_b, ptype: str) -> np.ndarray:
    """``x / y_scale`` in ``ptype`` (float, double, float16, bfloat16): one rounded quotient.

    Private stand-in until the core's ``precision=`` takes "float16" and
    "bfloat16" (refquant.quant.affine._PRECISIONS); the float32 case goes through
    the core directly. NumPy and ml_dtypes divide float16 / bfloat16 through
    float32, which rounds the quotient correctly (24 >= 2*11 + 2 bits).
    """
    dt = _NUMPY[ptype]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return (np.asarray(x).astype(dt) / np.asarray(scale_b).astype(dt)).astype(dt)


def _precision(x, y_scale, precision, reference_quirks, e8m0_dtype=None) -> str:
    """ONNX type name of the division's precision.

    ``e8m0_dtype``: the float8e8m0 dtype when y_scale came as one (``y_scale`` then holds
    its float32 values).
    """
    if precision:
        p = _type_name(precision, "precision")
    elif reference_quirks:
        # onnx/reference/ops/op_quantize_linear.py: ``x = x / y_scale``, in the dtype NumPy's
        # division returns (np.result_type has no common type for float16 and bfloat16, but
        # ml_dtypes' division loop for them returns float32; bfloat16 by float8e8m0 stays
        # bfloat16, float16 or float32 by float8e8m0 is float32)
        sdt = e8m0_dtype if e8m0_dtype is not None else y_scale.dtype
        p = _type_name((np.ones(1, x.dtype) / np.ones(1, sdt)).dtype, "precision")
    elif e8m0_dtype is not None:
        # "The type of y_scale determines the precision of the division": float8e8m0 has no
        # significand bits and no sign, so read it as float32, which holds every value of it
        # and is what onnx.reference divides a float32 or float16 x in
        p = "float"
    else:
        p = _type_name(y_scale.dtype, "y_scale")
    if p == "double" and not precision and not reference_quirks:
        raise RefquantError(
            "y_scale is float64, which ONNX does not allow (float, float16, bfloat16); pass "
            "np.float32(scale) or an array of the scale's ONNX type"
        )
    if p not in _PRECISIONS and not (reference_quirks and p == "double"):
        raise RefquantError(
            f"the division x / y_scale would run in {p}; the spec defines it for float, "
            "float16 and bfloat16 (pass precision= for an integer y_scale)"
        )
    return p


def quantize_linear(
    x,
    y_scale,
    y_zero_point=None,
    axis=1,
    saturate=1,
    block_size=0,
    output_dtype=0,
    precision=0,
    *,
    opset=28,
    reference_quirks=False,
):
    """QuantizeLinear: ``y = saturate(round(x / y_scale) + y_zero_point)``.

    Parameters
    ----------
    x : array_like (float32, float16, bfloat16 or int32)
    y_scale : array_like
        Scalar (per tensor), 1-D of ``x.shape[axis]`` (per axis) or ``x``'s shape
        with ``ceil(Di / block_size)`` along ``axis`` (blocked). Its type sets the
        precision of the division unless ``precision`` is given; a float8e8m0 scale
        (``ml_dtypes.float8_e8m0fnu``, opset 24 on) divides in float32 (see Notes).
    y_zero_point : array_like, optional
        Same shape as ``y_scale`` (per tensor: one element each, see Notes). Its dtype
        (``np.int8``, ``ml_dtypes.int4``, ...) is the output type; a Python int or int64
        array is read in ``output_dtype``. Must be ±0 for float8 / float6 / float4 outputs.
    axis, saturate, block_size, output_dtype, precision
        The operator's attributes, with its defaults. ``output_dtype`` and
        ``precision`` are TensorProto enum values or names; 0 means unset.
    opset : int, default 28
        The model's ai.onnx opset (10 to 28), which runs QuantizeLinear-10, -13, -19, -21,
        -23, -24, -25 or -28; types and attributes that version does not have are rejected.
    reference_quirks : bool, default False
        Reproduce ``onnx.reference`` (the NumPy reference evaluator) where it departs
        from the spec (see Notes).

    Returns
    -------
    numpy.ndarray of the output type (``ml_dtypes`` types for int4, int2, float8, float6,
    float4).

    Formula
    -------
    Integer outputs:
    :math:`y = \\mathrm{clamp}(\\mathrm{rne}(x \\oslash_P s) + z, q_{min}, q_{max})`
    where :math:`\\oslash_P` is division rounded once to the precision ``P`` (the
    type of ``y_scale``, or ``precision``) and rne rounds half to even ("For
    (x / y_scale), it rounds to the nearest even"). ±Inf saturate to the ends of
    the range (spec: "saturate"); NaN, which the spec leaves undefined, gives
    ``qmin`` as onnxruntime's MLAS kernels do.
    Float outputs: :math:`y = \\mathrm{cast}(x \\oslash_P s)` rounded to nearest
    even, with the Cast operator's saturation table: ``saturate=1`` sends ±Inf and
    values whose rounding exceeds the largest finite value to ±max; ``saturate=0``
    sends them to ±Inf (float8e5m2) or NaN (the others). NaN stays NaN.
    float4e2m1, float6e2m3 and float6e3m2 (no Inf or NaN): always saturate, and
    :math:`y = \\mathrm{cast}(x \\oslash_P s + z)` when a zero point is given.

    Notes
    -----
    Where ONNX's backend node tests (onnx 1.23) and refquant's earlier reading of the
    spec disagreed, refquant follows the tests:

    * Per tensor, a zero point of shape (1,) with a scalar scale
      (``test_quantizelinear_e4m3fn``, ``_e5m2``) is accepted, against "Shape must match
      y_scale": a scale and a zero point of one element each, whatever their shapes
      (onnx.reference takes any such shapes; onnxruntime wants rank 0 or 1). The output
      has ``x``'s shape.
    * float4e2m1 (and the float6 types, which onnx.reference treats the same): the
      zero point is added to the quotient, as the formula ``(x / y_scale) + y_zero_point``
      reads, so ``-0.0`` quantizes to ``+0.0`` (``test_quantizelinear_float4e2m1``
      expects code 0 for ``x = -0.0``). Without a zero point ``-0.0`` stays ``-0.0``.
      For float8 outputs, where no conformance test has a ``-0.0``, refquant keeps the
      sign of zero as both onnx.reference and onnxruntime do (they do not add it).

    float8e8m0 scales (opset 24 on): the spec's "the type of y_scale determines the
    precision of the division" has no meaning for a type with no significand and no
    sign; refquant divides in float32, which holds every float8e8m0 value exactly and
    is what onnx.reference computes for float32 and float16 ``x``. ``precision`` overrides
    it as for any scale. onnxruntime 1.32 has no kernel for float8e8m0 scales, nor for
    float4e2m1 / float6 outputs ("Could not find an implementation", "MLDataType for:
    tensor(float6e2m3) is not currently registered").

    Departures of ``onnx.reference`` (``onnx/reference/ops/op_quantize_linear.py``,
    ``_CommonQuantizeLinear._run``; line numbers of onnx 1.23), reproduced with
    ``reference_quirks=True``:

    * ``xi = np.rint(x).astype(np.int32)`` (line 89) then ``xi += zero_point`` (91) then
      ``np.clip``: a quotient that is NaN, ±Inf or outside the int32 range becomes
      INT32_MIN (x86-64's conversion of an out-of-range float; the C cast is
      undefined, other CPUs saturate), and the int32 sum with the zero point wraps.
      So ``x / y_scale >= 2**31`` and ``+Inf`` give ``qmin`` instead of ``qmax``
      (int8, zero point 0: ``+Inf -> -128``); with a negative zero point every such
      value wraps past INT32_MIN and gives ``qmax`` (zero point -100: ``-Inf -> 127``).
      A bfloat16 quotient (bfloat16 ``x`` and ``y_scale`` at opsets 19 / 21,
      ``precision`` bfloat16 from 23) is cast by ml_dtypes, not NumPy, and what
      ml_dtypes gives for NaN, ±Inf and out-of-range values depends on its version:
      INT32_MIN before 0.7 (a C++ ``static_cast`` through float on x86-64), 0 from
      0.7.0 on (int8, zero point 3: ``x = 1.5e9``, ``y_scale = 0.5`` gives -128 with
      ml_dtypes 0.6 and 3 with 0.7). refquant makes that cast through the installed
      ml_dtypes, so the result follows its version as onnx.reference's does.
    * ``x = x / y_scale`` (line 86) runs in the type NumPy's division gives x and y_scale,
      not in y_scale's type: float64 for an int32 x, float32 for float32 x with a float16
      y_scale and for float16 with bfloat16 (either way round). A float64 quotient is then
      cast to a float8 / float6 / float4 output by ml_dtypes, whose float64 cast depends on
      its version: through float32 before 0.7 (two roundings), once from 0.7.0 on
      (int32 ``x = 2**26 + 2**22 + 1``, ``y_scale = 2**26``, float8e4m3fn: the quotient
      1 + 2^-4 + 2^-26 gives 1.0 (0x38) with ml_dtypes 0.6 and 1.125 (0x39) with 0.7).
      refquant probes the installed ml_dtypes and casts the same way.
      A float8e8m0 scale divides in NumPy's promotion too: float32 for float32 and
      float16 ``x``, bfloat16 for bfloat16 ``x``, float64 for int32 ``x``.
    * For float8 outputs the zero point is ignored; refquant rejects a non-zero one.
    * float4e2m1 and the float6 types have no NaN; the spec leaves NaN undefined and
      refquant raises. The evaluator casts with ml_dtypes, which gives a zero
      (NaN -> -0.0, float4e2m1 code 0x8); ``reference_quirks=True`` gives that.

    onnxruntime (``QuantizeLinear`` CPU kernel, MLAS) saturates ±Inf and
    out-of-range values as the spec says and maps NaN to ``qmin``. At opsets 19 and
    21 (its QuantizeLinear-19 / -21 kernels) it departs from the spec for float16 ``x``
    and ``y_scale``: it divides in float32, not float16 (``274 / 0.1`` in float16: spec
    and onnx.reference 2740, onnxruntime 2741); ``precision=1`` (float, which needs
    ``opset >= 23`` here) reproduces it. From opset 23 on it divides in ``y_scale``'s
    type (or ``precision``) as the spec says. It also refuses ``block_size > 0`` with a
    one-element 1-D scale ("block_size must be 0 for per-tensor quantization"),
    which the spec's shape rule accepts. With ``saturate=0`` its float8 overflow
    departs from the Cast table: float8e4m3fn ``x / y_scale`` in [480, 496) gives
    ±448 instead of NaN, float8e5m2 in [61440, 65536) gives NaN instead of ±Inf.

    Reference
    ---------
    ONNX QuantizeLinear-28 (``onnx/defs/quantization/defs.cc``); earlier versions in
    ``onnx/defs/quantization/old.cc``; Cast-25 for the float8 saturation tables; the
    backend node tests ``onnx/backend/test/case/node/quantizelinear.py`` (onnx 1.23.2).
    """
    _check_attributes(axis=axis, saturate=saturate, block_size=block_size,
                      output_dtype=output_dtype, precision=precision, opset=opset)
    x = np.asarray(x)
    zp = None if y_zero_point is None else np.asarray(y_zero_point)
    out = _output_type(zp, output_dtype)
    scale_vals, e8m0 = _scale_values(y_scale)
    version = _check_opset(
        opset,
        {"axis": axis != 1, "saturate": saturate != 1, "block_size": bool(block_size),
         "output_dtype": bool(output_dtype), "precision": bool(precision)},
        (out,) + ((e8m0,) if e8m0 else ()),
    )
    if _type_name(x.dtype, "x") not in ("float", "float16", "bfloat16", "int32"):
        raise RefquantError(f"x must be float32, float16, bfloat16 or int32, got {x.dtype}")
    s = check_scale(scale_vals, "y_scale")
    _check_float_types(version, _type_name(x.dtype, "x"), e8m0 or _type_name(s.dtype, "y_scale"),
                       "x", "y_scale")
    ax, bs = _granularity(x.shape, s, axis, block_size, "y_scale")
    _check_per_axis_opset(version, ax, "y_scale")
    if ax is None:
        s = s.reshape(())  # per tensor: the output has x's shape, whatever the scale's
    zp = _zero_point_shape(zp, s, ax, "y_zero_point", "y_scale")
    p = _precision(x, s, precision, reference_quirks,
                   np.asarray(y_scale).dtype if e8m0 else None)
    if out in _FLOAT_FORMATS:
        return _quantize_float(x, s, zp, ax, bs, out, saturate, p, reference_quirks)
    fmt = int_format(out)
    z = 0 if zp is None else zp.astype(np.int64)
    # the storage dtype holds every saturated code (int64 only for the reference's int32 wrap)
    codes = np.int64 if reference_quirks else fmt.storage_dtype
    if p in ("float", "double"):
        q = quantize(x, s, z, dtype=fmt, axis=ax, block_size=bs, rounding="half_even",
                     precision="float32" if p == "float" else "float64", nan="qmin",
                     inf="saturate", overflow="saturate", out_dtype=codes)
    else:
        v = _divide_in(x, broadcast_param(s, x.shape, ax, bs, "y_scale"), p)
        q = quantize(v, 1.0, z, dtype=fmt, axis=ax, block_size=bs, rounding="half_even",
                     precision="float64", nan="qmin", inf="saturate", overflow="saturate",
                     out_dtype=codes)
    if reference_quirks:
        q = _reference_int32_wrap(x, s, z, ax, bs, p, fmt, q)
    return q.astype(_NUMPY[out], copy=False)


def _output_type(zp, output_dtype) -> str:
    """QuantizeLinear's output type: y_zero_point's type, else output_dtype, else uint8."""
    want = _type_name(output_dtype, "output_dtype") if output_dtype else None
    if zp is not None and np.dtype(zp.dtype) in _BY_NUMPY:
        ztype = _BY_NUMPY[np.dtype(zp.dtype)]
        if want is not None and want != ztype:
            raise RefquantError(
                f"output_dtype {want} and y_zero_point of type {ztype} disagree: the spec "
                "requires output_dtype to equal the type of y_zero_point when both are given"
            )
        want = ztype
    elif zp is not None:
        if zp.dtype.kind not in "iu" or want is None:
            raise RefquantError(
                f"y_zero_point of dtype {zp.dtype} has no ONNX quantized type; pass it with "
                "the output type's dtype (np.int8, ml_dtypes.int4, ...) or give output_dtype"
            )
    want = want or "uint8"
    if want not in _INTEGER_OUTPUTS and want not in _FLOAT_FORMATS:
        raise RefquantError(f"output type {want} is not a QuantizeLinear output type")
    return want


def _quantize_float(x, s, zp, ax, bs, out, saturate, p, reference_quirks):
    """Float8 / float6 / float4 outputs: the spec's cast of ``x / y_scale`` (plus the zero
    point for float6 / float4) with the saturate flag."""
    if zp is not None and np.any(zp.astype(np.float32) != 0):
        raise RefquantError(
            f"y_zero_point must be 0 for {out} outputs (the spec: the zero point is not used "
            "for float8, float6 and float4 types); got a non-zero value"
        )
    if saturate not in (0, 1):
        raise RefquantError(f"saturate must be 0 or 1, got {saturate!r}")
    from ..formats import floats  # the float formats module (refquant/formats/floats.py)

    v = _divide_in(x, broadcast_param(s, x.shape, ax, bs, "y_scale"), p)
    if out in _NO_INF_FORMATS and zp is not None:
        # y = cast(x / y_scale + y_zero_point), as test_quantizelinear_float4e2m1 requires: the
        # zero point is ±0, so only the sign of a zero quotient changes (-0.0 + 0 = +0.0)
        zf = zp.astype(np.float32)
        zb = zf.reshape(()) if ax is None else broadcast_param(zf, x.shape, ax, bs,
                                                                "y_zero_point")
        v = (v if v.dtype == np.float64 else v.astype(np.float32)) + zb  # exact: z is ±0
    # float4e2m1 and the float6 types have no Inf/NaN encoding: saturate has no effect
    # (QuantizeLinear-28's text). A float64 quotient (reference_quirks with an int32 x) is
    # cast the way the installed ml_dtypes casts float64: through float32 before 0.7, once
    # from float64 from 0.7.0 on.
    if v.dtype != np.float64 or _ml_dtypes_rounds_float64_through_float32(out):
        v = v.astype(np.float32)
    codes = floats.encode(v, _FLOAT_FORMATS[out],
                          saturate=bool(saturate) or out in _NO_INF_FORMATS,
                          rounding="half_even", nan="ml_dtypes" if reference_quirks else "raise")
    return np.asarray(codes, dtype=np.uint8).view(_NUMPY[out])


@functools.cache
def _ml_dtypes_rounds_float64_through_float32(out: str) -> bool:
    """Whether the installed ml_dtypes casts float64 to ``out`` through float32 (two roundings).

    ml_dtypes before 0.7 did (float64 1 + 2^-4 + 2^-40 -> float8e4m3fn 1.0, code 0x38: the
    float32 value is the tie 1 + 2^-4, broken to even); 0.7.0 rounds once (1.125, 0x39).
    Probed on the installed version with 1 + 2^-(m+1) + 2^-40, m the format's mantissa bits.
    """
    dt = _NUMPY[out]
    m = ml_dtypes.finfo(dt).nmant
    probe = np.array([1 + 2.0 ** -(m + 1) + 2.0**-40], np.float64)
    return float(probe.astype(dt).astype(np.float64)[0]) == 1.0


def _reference_int32_wrap(x, s, z, ax, bs, p, fmt, q):
    """onnx.reference's int32 arithmetic: out-of-range quotients become INT32_MIN (or what
    ml_dtypes gives for a bfloat16 quotient), sums wrap.

    Elements whose rounded quotient and sum with the zero point stay inside int32
    are untouched (they equal the spec's result, ``q``).
    """
    v = _divide_in(x, broadcast_param(s, x.shape, ax, bs, "y_scale"), p)
    r = round_to_int(v.astype(np.float64))
    zb = np.broadcast_to(np.asarray(z) if ax is None else broadcast_param(
        z, x.shape, ax, bs, "y_zero_point"), x.shape).astype(np.int64)
    with np.errstate(invalid="ignore"):
        bad = ~((r >= -(2.0**31)) & (r < 2.0**31))
    r32 = np.where(bad, -(2**31), np.where(bad, 0, r).astype(np.int64))
    if p == "bfloat16" and bad.any():
        # ml_dtypes casts bfloat16 to int32 itself (the evaluator's np.rint(x).astype(np.int32)
        # on a bfloat16 array): INT32_MIN for NaN / ±Inf / out of range before ml_dtypes 0.7,
        # 0 from 0.7.0 on. Cast the same way so the result follows the installed version.
        with np.errstate(invalid="ignore", over="ignore"):
            cast = np.rint(np.asarray(v)).astype(np.int32).astype(np.int64)
        r32 = np.where(bad, cast, r32)
    total = r32 + zb
    wrapped = (total + 2**31) % 2**32 - 2**31
    touched = bad | (wrapped != total)
    return np.where(touched, np.clip(wrapped, fmt.qmin, fmt.qmax), q)


def dequantize_linear(x, x_scale, x_zero_point=None, axis=1, block_size=0, output_dtype=0,
                      *, opset=28, reference_quirks=False):
    """DequantizeLinear: ``y = (x - x_zero_point) * x_scale``.

    Parameters
    ----------
    x : array_like
        Codes whose dtype is the ONNX input type: int8, uint8, int16, uint16, int32,
        ``ml_dtypes`` int4 / uint4 / int2 / uint2, float8 types, float6_e2m3fn /
        float6_e3m2fn (opset 28) or float4_e2m1fn.
    x_scale : array_like (float32, float16, bfloat16; float8e8m0 from opset 24)
        Shape rules as for :func:`quantize_linear`. A float8e8m0 scale
        (``ml_dtypes.float8_e8m0fnu``) needs ``output_dtype``: its own type is not an
        output type, and ONNX's type inference refuses the node without one.
    x_zero_point : array_like, optional
        Same type as ``x`` and same shape as ``x_scale`` (per tensor: one element each,
        as ONNX's backend node tests pass it); must be 0 for int32 and float inputs.
    axis, block_size, output_dtype : the operator's attributes (0: unset).
    opset : int, default 28
        The model's ai.onnx opset (10 to 28), as for :func:`quantize_linear`.
    reference_quirks : bool, default False
        For float16 / bfloat16 outputs, round the product to float32 first and then
        to the output type, as onnx.reference and onnxruntime do (see Notes).

    Returns
    -------
    numpy.ndarray of ``output_dtype`` (default: ``x_scale``'s type).

    Formula
    -------
    :math:`y = (x - z)\\cdot s`, the product rounded once to the output type ("The
    output type also determines the precision of the multiplication"). For integer
    inputs :math:`x - z` is exact. An int32 ``x`` is read in float32 (exact below
    :math:`2^{24}`: ``x = 16777217 -> 16777216``) and multiplied in float32, the
    product then rounded to the output type, which is what onnx.reference and
    onnxruntime compute; for float16 / bfloat16 outputs that is a second rounding
    (int32 ``x = 28677``, float16 ``x_scale = 0.1``: 2868, where int16 ``x`` gives 2866).

    Notes
    -----
    For float16 / bfloat16 outputs refquant rounds the exact product once to the
    output type. onnx.reference (``op_dequantize_linear.py`` line 42:
    ``dx = x.astype(np.float32) - zero_point``,
    ``y = dx * x_scale``, ``y.astype(output type)``) and onnxruntime both round it
    to float32 first: a double rounding that differs about once in 20000 int16
    codes (int16 ``x = 28677``, float16 ``x_scale = 0.1``: the product
    2866.99988 is 2866 in float16, but 2867.0 in float32 and then 2868, a tie
    broken to even). ``reference_quirks=True`` gives the peers' result. Float16
    arithmetic on float16 operands (a literal reading of "the output type
    determines the precision of the multiplication") is implemented by neither
    peer: it would round :math:`x - z` to float16 first.

    Reference
    ---------
    ONNX DequantizeLinear-28 (``onnx/defs/quantization/defs.cc``);
    ``onnx/reference/ops/op_dequantize_linear.py``; the backend node tests
    ``onnx/backend/test/case/node/dequantizelinear.py`` (onnx 1.23.2), whose zero points of
    shape (1,) with scalar scales (``test_dequantizelinear_uint4``, ``_int2``,
    ``_float4e2m1``, ``_e4m3fn_zero_point``, ...) refquant accepts, against "Shape must
    match x_scale", as onnx.reference and onnxruntime do. A float8e8m0 scale is exact in
    float32, so the product is the same as with its float32 value.
    """
    _check_attributes(axis=axis, block_size=block_size, output_dtype=output_dtype, opset=opset)
    x = np.asarray(x)
    xt = _type_name(x.dtype, "x")
    if xt not in _INTEGER_OUTPUTS and xt not in _FLOAT_FORMATS and xt != "int32":
        raise RefquantError(f"x has type {xt}; DequantizeLinear takes quantized types")
    scale_vals, e8m0 = _scale_values(x_scale)
    s = check_scale(scale_vals, "x_scale")
    st = e8m0 or _type_name(s.dtype, "x_scale")
    if e8m0 and not output_dtype:
        raise RefquantError(
            "a float8e8m0 x_scale needs output_dtype (float, float16 or bfloat16): the output "
            "type defaults to x_scale's type, which is not an output type (T3), and ONNX's "
            "type inference refuses it"
        )
    out = _type_name(output_dtype, "output_dtype") if output_dtype else st
    if out not in _PRECISIONS:
        raise RefquantError(f"output type {out} must be float, float16 or bfloat16")
    version = _check_opset(opset, {"axis": axis != 1, "block_size": bool(block_size),
                                   "output_dtype": bool(output_dtype)},
                           (xt,) + ((e8m0,) if e8m0 else ()))
    _check_float_types(version, xt, st, None, "x_scale")
    ax, bs = _granularity(x.shape, s, axis, block_size, "x_scale")
    _check_per_axis_opset(version, ax, "x_scale")
    if ax is None:
        s = s.reshape(())  # per tensor: the output has x's shape, whatever the scale's
    zp = None if x_zero_point is None else np.asarray(x_zero_point)
    zp = _zero_point_shape(zp, s, ax, "x_zero_point", "x_scale")
    if zp is not None:
        zt = _type_name(zp.dtype, "x_zero_point")
        if zt != xt:
            raise RefquantError(
                f"x_zero_point has type {zt} but x has type {xt}: the spec requires the same type"
            )
        if (xt == "int32" or xt in _FLOAT_FORMATS) and np.any(zp.astype(np.float32) != 0):
            raise RefquantError(
                f"x_zero_point must be 0 for {xt} inputs (the spec: there is no zero point for "
                "int32; it is not used for float8, float6 and float4 types)"
            )
    odt = _NUMPY[out]
    # "exact": (x - z) * s rounded once to the output type. "float32": both steps in float32,
    # then the output type: int32 codes (the spec's float32 product) and the peers'
    # float16 / bfloat16 results (reference_quirks).
    prec = "float32" if xt == "int32" or (reference_quirks and out != "float") else "exact"
    if xt in _FLOAT_FORMATS:
        # refquant.dequantize takes integer codes only: the decoded float8 value (exact in
        # float32 and float64) times the scale, rounded to the output type.
        from ..formats import floats

        vals = floats.decode(x.view(np.uint8), _FLOAT_FORMATS[xt])
        sb = broadcast_param(s, x.shape, ax, bs, "x_scale")
        wide = np.float32 if prec == "float32" else np.float64
        return (vals.astype(wide) * sb.astype(wide)).astype(odt)
    z = 0 if zp is None or xt == "int32" else zp.astype(np.int64)
    return dequantize(x, s, z, axis=ax, block_size=bs, out_dtype=odt,
                      precision=prec)


def dynamic_quantize_linear(x, *, reference_quirks=False):
    """DynamicQuantizeLinear: uint8 codes with a scale and zero point from the range of x.

    Parameters
    ----------
    x : array_like of float32
        Must be finite (the spec's min/max of NaN or ±Inf give a NaN or infinite scale).
    reference_quirks : bool, default False
        Give onnx.reference's scale for an input whose range is [0, 0] (see Notes).

    Returns
    -------
    (y, y_scale, y_zero_point) : uint8 array, float32 scalar array, uint8 scalar array

    Formula
    -------
    In float32, with :math:`q_{min} = 0, q_{max} = 255`:
    :math:`s = (\\max(0, \\max x) - \\min(0, \\min x)) / (q_{max} - q_{min})`,
    :math:`z = \\mathrm{rne}(\\mathrm{clamp}(q_{min} - \\min(0, \\min x) / s, q_{min}, q_{max}))`,
    :math:`y = \\mathrm{clamp}(\\mathrm{rne}(x / s) + z, q_{min}, q_{max})`; rne rounds
    half to even. This is :func:`refquant.qparams_from_range` with
    ``symmetric=False, zero_point_formula="round_difference", precision="float32"``
    and :func:`refquant.quantize` with ``precision="float32"``.

    Notes
    -----
    For an all-zero input the spec's formula gives :math:`s = 0` and a 0/0 zero
    point. refquant gives ``s = 1, z = 0``, as onnxruntime does
    (``onnxruntime/core/util/qmath.h``, ``GetQuantizationParameter``:
    ``scale = max == min ? 1.0f : (max - min) / float(qmax - qmin)``).
    ``onnx.reference`` (``op_dynamic_quantize_linear.py``, line 17) quotes that line but
    divides the 1.0 by 255 as well, giving ``s = 1/255`` (float32
    0.003921569); ``reference_quirks=True`` gives that. A non-zero range so small that
    ``s`` underflows to 0 (all of x within a few subnormals of 0) gives ``s = 0``,
    ``z = 255`` and ``y = 255`` where ``x > 0``, else 0: the spec's formula in IEEE
    arithmetic, with the saturation of the NaN zero point (``min = 0``) as both
    onnxruntime and onnx.reference do it. A range so wide that
    :math:`\\max - \\min` overflows float32 gives, as the formula does in IEEE
    arithmetic and both peers compute, ``s = inf``, ``z = 0`` and ``y = 0``.

    Reference
    ---------
    ONNX DynamicQuantizeLinear-11 (``onnx/defs/quantization/defs.cc``).
    """
    xa = np.asarray(x)
    if xa.dtype != np.float32:
        raise RefquantError(f"x must be float32 (the spec's T1), got {xa.dtype}")
    if not np.isfinite(xa).all():
        raise RefquantError(
            "x holds NaN or ±Inf: the spec's scale would be NaN or infinite"
        )
    lo, hi = minmax_range(xa)
    lo32, hi32 = np.minimum(np.float32(lo), np.float32(0)), np.maximum(np.float32(hi), np.float32(0))
    with np.errstate(over="ignore"):
        span = np.float32(hi32 - lo32)
    if hi32 > lo32 and span / np.float32(255) == 0:
        # s underflows to 0: the spec's z = sat(rne(0 - min / 0)) is sat(+inf) = 255, or
        # sat(NaN) when min = 0, which both peers also saturate to 255; then x / 0 is +inf
        # (code 255) for x > 0 and -inf or NaN (code 0) otherwise, in both peers
        return (np.where(xa > 0, np.uint8(255), np.uint8(0)), np.array(0, dtype=np.float32),
                np.array(255, dtype=np.uint8))
    if not np.isfinite(span):
        # max - min overflows float32: the spec's s = inf, z = rne(0 - min / inf) = 0 and
        # x / inf = ±0 for every finite x, so y = 0 (onnxruntime and onnx.reference agree)
        return (np.zeros(xa.shape, np.uint8), np.array(np.inf, dtype=np.float32),
                np.array(0, dtype=np.uint8))
    qp = qparams_from_range(lo, hi, dtype="uint8", symmetric=False, eps=0.0,
                            zero_point_formula="round_difference", precision="float32")
    scale = np.float32(qp.scale)
    if reference_quirks and hi32 == lo32:
        scale = np.float32(1.0) / np.float32(255)  # op_dynamic_quantize_linear.py
    y = quantize(xa, scale, qp.zero_point, dtype="uint8", rounding="half_even",
                 precision="float32", out_dtype=np.uint8)
    return y, np.array(scale, dtype=np.float32), np.array(qp.zero_point, dtype=np.uint8)


def _matmul_zero_point(z, name, m, rows: bool):
    """A zero point as an array broadcastable against its matrix (per row / per column)."""
    return _matmul_param(np.asarray(z).astype(np.int64), name, m, rows)


def _matmul_param(z, name, m, rows: bool):
    """A zero point or scale, reshaped to broadcast against its matrix (per row / column)."""
    z = np.asarray(z)
    if z.ndim == 1 and z.size > 1 and m.ndim == 2:
        z = z.reshape(-1, 1) if rows else z.reshape(1, -1)
    if not broadcasts_to(z.shape, m.shape):
        raise RefquantError(
            f"{name} of shape {z.shape} does not fit a matrix of shape {m.shape} "
            f"(scalar, {'M' if rows else 'N'} elements, or the matrix's rank with size 1 along "
            f"the {'columns' if rows else 'rows'})"
        )
    return z


def matmul_integer(A, B, a_zero_point=None, b_zero_point=None):
    """MatMulInteger: ``(A - a_zero_point) @ (B - b_zero_point)`` as int32.

    Parameters
    ----------
    A, B : array_like of int8 or uint8 (numpy.matmul broadcasting)
    a_zero_point : optional, A's type: scalar, M elements (per row) or ``[..., M, 1]``
    b_zero_point : optional, B's type: scalar, N elements (per column) or ``[..., 1, N]``

    Returns
    -------
    numpy.ndarray of int32

    Formula
    -------
    :math:`Y_{ij} = \\sum_k (A_{ik} - z^A_i)(B_{kj} - z^B_j)`, accumulated exactly
    and reduced to int32 by two's-complement wrapping ("The accumulation may
    overflow if and only if in 32 bits"; wrapping arithmetic makes the result
    independent of the order of summation).

    Notes
    -----
    A per-row ``a_zero_point`` of M elements is subtracted from each row, as the
    spec says. Neither peer does that: ``onnx.reference`` (``A32 -= a_zero_point``)
    broadcasts it along the last axis, subtracting it per column, which runs when
    M = K and gives another result (``A = [[1, 2], [3, 4]]``, ``B = I``,
    ``a_zero_point = [1, 2]``: spec ``[[0, 1], [1, 2]]``, reference ``[[0, 0], [2, 2]]``);
    onnxruntime 1.32 refuses any ``a_zero_point`` that is not a scalar, and a per-column
    ``b_zero_point`` of N elements when ``B`` has batch dimensions ("B zero point is not
    valid"; ``[..., 1, N]`` it takes), which the spec and onnx.reference apply per column.

    Reference
    ---------
    ONNX MatMulInteger-10; ``onnx/reference/ops/op_matmul_integer.py``.
    """
    a, b = np.asarray(A), np.asarray(B)
    for name, m in (("A", a), ("B", b)):
        if m.dtype not in (np.int8, np.uint8):
            raise RefquantError(f"{name} must be int8 or uint8, got {m.dtype}")
    da, db = a.astype(np.int64), b.astype(np.int64)
    for name, z, m in (("a_zero_point", a_zero_point, a), ("b_zero_point", b_zero_point, b)):
        if z is not None and np.asarray(z).dtype != m.dtype:
            raise RefquantError(
                f"{name} has dtype {np.asarray(z).dtype} but its matrix has dtype {m.dtype}: "
                "the spec requires the same type"
            )
    if a_zero_point is not None:
        da = da - _matmul_zero_point(a_zero_point, "a_zero_point", a, rows=True)
    if b_zero_point is not None:
        db = db - _matmul_zero_point(b_zero_point, "b_zero_point", b, rows=False)
    return integer_matmul(da, db, accumulate="int32_wrap")


def qlinear_matmul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point,
                   *, reference_quirks=False):
    """QLinearMatMul: integer matmul requantized to y's grid (int8 / uint8 types).

    Parameters
    ----------
    a, b : int8 or uint8 arrays
    a_scale, b_scale, y_scale : float32 scalars (per tensor); ``b_scale`` may hold
        one value per column of b (N elements or ``[..., 1, N]``) and ``a_scale`` one
        per row of a (M elements or ``[..., M, 1]``).
    a_zero_point, b_zero_point, y_zero_point : zero points of the same types as
        a, b and the output (int8 or uint8); shapes as the scales.
    reference_quirks : bool, default False
        Multiply in float64 and add the zero point before rounding, as
        ``onnx.reference`` does (see Notes).

    Returns
    -------
    numpy.ndarray of y_zero_point's type.

    Formula
    -------
    :math:`C = (a - z_a)(b - z_b)` exactly (int32 wrap, as :func:`matmul_integer`),
    :math:`M = \\mathrm{fl}_{32}(\\mathrm{fl}_{32}(s_a s_b) / s_y)`,
    :math:`y = \\mathrm{clamp}(\\mathrm{rne}(\\mathrm{fl}_{32}(\\mathrm{fl}_{32}(C)\\,M)) + z_y,
    q_{min}, q_{max})`: the spec's ``saturate((x / y_scale) + y_zero_point)`` on the
    real product, evaluated in float32 as onnxruntime does (the multiplier
    ``a_scale * b_scale / y_scale`` first, then one float32 product per element,
    round half to even; MLAS ``MlasRequantizeOutput``).

    Notes
    -----
    ``onnx.reference`` (``op_qlinear_matmul.py``, line 22) computes ``C * (a_scale * b_scale /
    y_scale)`` with an int32 ``C`` and a float32 multiplier, which NumPy promotes to
    float64: the product is rounded to float64 instead of float32, so a product
    within half a float32 ulp of a tie can round the other way. The spec does not
    say which precision. It also adds ``y_zero_point`` before rounding
    (``D += y_zero_point``, line 24, then ``np.rint(D)``), against the spec's
    ``round(x / y_scale) + y_zero_point``: a tie with an odd zero point rounds the
    other way (C = 2, multiplier 0.25, zero point 1: spec and onnxruntime 1,
    reference 2). ``reference_quirks=True`` gives both departures. A 1-D ``a`` gives
    ``numpy.matmul``'s shape (``(K,) @ (K, N)`` is ``(N,)``, as in onnxruntime) also with a
    ``b_scale`` of shape ``(1, N)``, which onnx.reference broadcasts to ``(1, N)`` (and
    refuses for a batched ``b``); that shape quirk is not reproduced.

    Reference
    ---------
    ONNX QLinearMatMul-21 (``onnx/defs/math/defs.cc``).
    """
    a, b = np.asarray(a), np.asarray(b)
    zy = np.asarray(y_zero_point)
    if zy.dtype not in (np.int8, np.uint8):
        raise RefquantError(
            f"y_zero_point must be int8 or uint8, got {zy.dtype} (the float8 types of "
            "QLinearMatMul-21 are not implemented here)"
        )
    c = matmul_integer(a, b, np.asarray(a_zero_point), np.asarray(b_zero_point)).astype(np.int64)
    sa = _matmul_param(check_scale(a_scale, "a_scale").astype(np.float32), "a_scale", a, True)
    sb = _matmul_param(check_scale(b_scale, "b_scale").astype(np.float32), "b_scale", b, False)
    sy = check_scale(y_scale, "y_scale").astype(np.float32)
    if sy.size != 1 or zy.size != 1:
        raise RefquantError(
            f"y_scale and y_zero_point must be scalars (per tensor), got shapes {sy.shape} and "
            f"{zy.shape}"
        )
    for name, sc, m in (("a_scale", sa, a), ("b_scale", sb, b)):
        if m.ndim == 1 and sc.size != 1:
            raise RefquantError(f"{name} must be a scalar for a 1-D {name[0]} (it has no "
                                f"{'rows' if name[0] == 'a' else 'columns'}), got shape {sc.shape}")
    mult = ((sa * sb).astype(np.float32) / sy.reshape(())).astype(np.float32)
    # the multiplier is laid out as (..., M, N); numpy.matmul drops the M axis of a 1-D a
    # and the N axis of a 1-D b, and so must the multiplier
    if a.ndim == 1 and mult.ndim >= 2:
        mult = mult[..., 0, :]
    if b.ndim == 1 and mult.ndim >= 1:
        mult = mult[..., 0] if mult.ndim >= 2 else mult.reshape(())
    if reference_quirks:
        real = c.astype(np.float64) * mult.astype(np.float64)
    else:
        real = (c.astype(np.float32) * mult).astype(np.float32)
    # `real` is the spec's x / y_scale: quantize it with scale 1 and y's zero point.
    return quantize(real, 1.0, zy.reshape(()).astype(np.int64), dtype=int_format(zy.dtype),
                    rounding="half_even", precision="float64", out_dtype=zy.dtype,
                    zero_point_stage="before_rounding" if reference_quirks else "after_rounding")
