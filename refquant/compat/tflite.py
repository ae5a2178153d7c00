"""TensorFlow Lite (and gemmlowp) integer-only semantics, by TFLite's names.

Everything here reproduces TFLite's reference kernels bit for bit, built on
:mod:`refquant.quant.integer` (the fixed-point core) and
:mod:`refquant.quant.rounding`; ``affine_quantize``, ``fully_connected`` and
``conv2d`` also reproduce LiteRT's other CPU kernels (``kernel="optimized"``: the
builtin kernels without delegates, ruy on x86-64; ``kernel="xnnpack"``: the
default XNNPACK delegate), measured against ai-edge-litert 2.3.0. TFLite's
quirks, each named where it matters:

- ``TfLiteRound`` is ``std::round``: ties go **away from zero** (ONNX and
  PyTorch round half to even), in float quantization, in ``QuantizeMultiplier``
  and in bias quantization.
- Fixed-point requantization rounds **twice** by default (gemmlowp's
  ``SaturatingRoundingDoublingHighMul`` then ``RoundingDivideByPOT``, both half
  away from zero); builds with ``TFLITE_SINGLE_ROUNDING=1`` (TFLite Micro, some
  delegates) round once, half up. The two differ by one step on some inputs.
- LiteRT's reference FULLY_CONNECTED requantizes with the **real** multiplier in
  double, ``round(double(acc) * M)`` (half away), not with the fixed-point
  ``(multiplier, shift)`` it also prepares; its reference CONV_2D uses the fixed
  point (:func:`fully_connected`'s ``input_scale=`` / ``output_multiplier=``).
- Float-to-int casts of values beyond int32 (and NaN) are undefined in C++; on
  x86 ``cvttss2si`` returns ``INT32_MIN``, so a huge positive input quantizes
  to ``qmin`` (``cast="x86"``); ARM's ``fcvtzs`` saturates and maps NaN to 0
  (``cast="arm"``).
- TF's fake-quant nudges the zero point to an integer (``Nudge``), computes in
  float32 and rounds with ``floor(x + 0.5)`` (ties up).

Argument names follow TFLite's C++ (``input_offset`` is minus the input zero
point, ``output_offset`` the output zero point); ``filter`` / ``input`` /
``min`` / ``max`` are spelled ``filter_data`` / ``input_data`` / ``min_`` /
``max_`` so as not to shadow Python builtins.
"""

from __future__ import annotations

import numpy as np

from .._core.rounding import round_to_int
from .._errors import RefquantError
from ..formats.integer import int_format
from ..quant.integer import (
    INT32_MAX,
    INT32_MIN,
    _int,
    _real,
    integer_matmul,
    multiply_by_quantized_multiplier,
    multiply_by_quantized_multiplier_int64,
    quantize_bias,
    quantize_multiplier,
    requantize,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)

__all__ = [
    "quantize_multiplier",
    "multiply_by_quantized_multiplier",
    "multiply_by_quantized_multiplier_int64",
    "saturating_rounding_doubling_high_mul",
    "rounding_divide_by_pot",
    "affine_quantize",
    "nudge",
    "fake_quant_with_min_max_args",
    "symmetric_bias_quantize",
    "populate_convolution_quantization_params",
    "calculate_activation_range_quantized",
    "compute_padding",
    "xnnpack_requantization_scale",
    "xnnpack_activation_range",
    "fully_connected",
    "conv2d",
]

_CASTS = ("x86", "arm")


def _float_to_int32(v: np.ndarray, cast: str) -> np.ndarray:
    """``static_cast<int32_t>(float)`` of integral floats, as the named CPU does it."""
    finite_in = np.isfinite(v) & (v >= -(2.0**31)) & (v < 2.0**31)
    safe = np.where(finite_in, v, 0.0).astype(np.int64)
    if cast == "x86":  # cvttss2si: the "integer indefinite" value 0x80000000
        return np.where(finite_in, safe, INT32_MIN)
    sat = np.where(np.isnan(v), 0, np.where(v > 0, INT32_MAX, INT32_MIN))
    return np.where(finite_in, safe, sat)


def _f32_scalar(v, name) -> np.float32:
    """A single real number as float32 (``static_cast<float>``); RefquantError otherwise."""
    a = _real(v, name)
    if a.size != 1:
        raise RefquantError(f"{name} must be a single number, got shape {a.shape}")
    return np.float32(a.reshape(-1)[0])


def _check_positive(**scales) -> None:
    """Every named scale (scalar or array) finite and > 0; RefquantError naming the first that is not."""
    for name, v in scales.items():
        if not (np.isfinite(v) & (v > 0)).all():
            raise RefquantError(f"{name} must be finite and > 0; got {v!r}")


def _integer_codes(a, name) -> np.ndarray:
    """``a`` as an array of an integer dtype (quantized codes); RefquantError otherwise."""
    a = np.asarray(a)
    if a.dtype.kind not in "iu":
        raise RefquantError(f"{name} must hold integer codes, got dtype {a.dtype}")
    return a


def _wrap32(v):
    return (np.asarray(v, dtype=np.int64) + 2**31) % 2**32 - 2**31


def affine_quantize(input_data, scale, zero_point, *, dtype="int8", cast="x86",
                    kernel="reference") -> np.ndarray:
    """TFLite's ``AffineQuantize``: float32 to int8 / uint8 / int16 codes.

    Parameters
    ----------
    input_data : array_like of float (converted to float32)
    scale : float (converted to float32, as ``static_cast<float>(op_params.scale)``)
    zero_point : int
    dtype : {"int8", "uint8", "int16"}
    cast : {"x86", "arm"}
        How ``static_cast<int32_t>`` treats NaN and values beyond int32 (see the
        module docstring): on x86 they become ``INT32_MIN`` before the zero point
        is added (with wraparound) and the clamp, so +Inf and 1e10 give ``qmin``
        (or ``qmax`` when ``zero_point < 0``: ``INT32_MIN - 1`` wraps).
    kernel : {"reference", "optimized", "xnnpack"}
        Which of LiteRT's QUANTIZE kernels: ``"reference"`` (``BUILTIN_REF``:
        ``x / scale`` in float32, ``TfLiteRound``: half away from zero),
        ``"optimized"`` (``BUILTIN`` without delegates: a vector loop over whole
        groups of 8 elements in C order computes ``x * (1 / scale)`` with a float32
        reciprocal and rounds ties to even (``RoundToNearest``); the last
        ``size % 8`` elements are divided by the scale **in double** and rounded
        half away (``optimized_ops.h`` holds the scale as a double); the same
        int32 cast), ``"xnnpack"``
        (the default delegate: the reciprocal product, ties to even, and values
        beyond the range, ±Inf and NaN saturate instead of going through the
        int32 cast; NaN gives qmax). For int16 outputs XNNPACK does not take the
        operator and LiteRT runs the optimized kernel.
        Measured against ai-edge-litert 2.3.0 on x86-64 (tests/peers/test_tflite_litert.py).

    Formula
    -------
    :math:`q = \\mathrm{clamp}(\\mathrm{int32}(\\mathrm{round}(x / s)) + z, q_{min}, q_{max})`
    with :math:`x / s` a float32 division and round half **away from zero**.

    Reference
    ---------
    TFLite ``tensorflow/lite/kernels/internal/reference/quantize.h`` and
    ``optimized/optimized_ops.h``, ``AffineQuantize``; ``cppmath.h`` ``TfLiteRound``.
    """
    if cast not in _CASTS:
        raise RefquantError(f"cast must be one of {', '.join(_CASTS)}; got {cast!r}")
    fmt = int_format(dtype)
    x = np.asarray(input_data)
    if x.dtype.kind not in "fiu":
        raise RefquantError(f"input_data must be real numbers, got dtype {x.dtype}")
    s = _f32_scalar(scale, "scale")
    _check_positive(scale=s)
    z = _int(zero_point, "zero_point")
    if not fmt.qmin <= z <= fmt.qmax:
        raise RefquantError(f"zero_point {z} is outside [{fmt.qmin}, {fmt.qmax}] of {fmt.name}")
    if kernel not in ("reference", "optimized", "xnnpack"):
        raise RefquantError(f"kernel must be 'reference', 'optimized' or 'xnnpack'; got {kernel!r}")
    if kernel == "xnnpack" and fmt.bits == 16:
        kernel = "optimized"  # XNNPACK takes no int16 QUANTIZE: LiteRT's builtin kernel runs
    xf = x.astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        scalar = round_to_int(xf / s, "half_away")  # TfLiteRound(val / scale)
        simd = round_to_int(xf * np.float32(np.float32(1) / s), "half_even")
    if kernel == "reference":
        v = scalar
    elif kernel == "xnnpack":
        v = simd
    else:  # NEON loop (SSE through neon2sse on x86) over whole groups of 8, scalar tail
        n_simd = (xf.size // 8) * 8
        with np.errstate(over="ignore", invalid="ignore"):  # tail: val / (double) scale
            tail = round_to_int(xf.astype(np.float64) / np.float64(s), "half_away")
        v = np.where((np.arange(xf.size) < n_simd).reshape(xf.shape), simd, tail)
    v = v.astype(np.float64)
    if kernel == "xnnpack":
        v = np.where(np.isnan(v), np.inf, v)
        q = np.clip(np.clip(v, -(2.0**40), 2.0**40).astype(np.int64) + z, fmt.qmin, fmt.qmax)
        return q.astype(fmt.storage_dtype)
    q = _wrap32(_float_to_int32(v, cast) + z)
    return np.clip(q, fmt.qmin, fmt.qmax).astype(fmt.storage_dtype)


def nudge(min_, max_, quant_min, quant_max):
    """TF's ``Nudge``: a float32 scale and a range whose zero is exactly on the grid.

    Returns
    -------
    (nudged_min, nudged_max, scale, inv_scale) : numpy.float32

    Formula
    -------
    In float32: :math:`s = (max - min) / (q_{max} - q_{min})`,
    :math:`s^{-1} = (q_{max} - q_{min}) / (max - min)` (computed separately, not
    as ``1 / s``), :math:`z_f = q_{min} - min / s`, :math:`z = q_{min}` if
    :math:`z_f < q_{min}`, :math:`q_{max}` if :math:`z_f > q_{max}`, else
    ``std::round`` (half away) of :math:`z_f`;
    :math:`min' = (q_{min} - z) s`, :math:`max' = (q_{max} - z) s`.

    Reference
    ---------
    TensorFlow ``tensorflow/core/kernels/fake_quant_ops_functor.h``, ``Nudge``;
    TFLite ``quantization_util.cc`` ``NudgeQuantizationRange``.
    """
    f32 = np.float32
    lo, hi = f32(min_), f32(max_)
    qmin_f, qmax_f = f32(quant_min), f32(quant_max)
    scale = f32((hi - lo) / (qmax_f - qmin_f))
    inv_scale = f32((qmax_f - qmin_f) / (hi - lo))
    zp_from_min = f32(qmin_f - f32(lo / scale))
    if zp_from_min < qmin_f:
        zp = int(quant_min)
    elif zp_from_min > qmax_f:
        zp = int(quant_max)
    else:
        zp = int(round_to_int(np.float64(zp_from_min), "half_away"))
    nudged_min = f32(f32(qmin_f - f32(zp)) * scale)
    nudged_max = f32(f32(qmax_f - f32(zp)) * scale)
    return nudged_min, nudged_max, scale, inv_scale


def fake_quant_with_min_max_args(inputs, min_=-6.0, max_=6.0, num_bits=8, narrow_range=False):
    """TF's ``tf.quantization.fake_quant_with_min_max_args`` (float32 in, float32 out).

    Parameters
    ----------
    inputs : array_like of float (converted to float32)
    min_, max_ : float
        TF's ``min`` and ``max`` attributes; ``min_ < max_`` required (TF's
        ``InvalidArgument``). TF's functor asserts ``min <= 0 <= max`` only in
        debug builds; outside that the nudged zero point clamps to the grid's end.
    num_bits : int in [2, 16]
    narrow_range : bool
        Grid ``[1, 2^b - 1]`` instead of ``[0, 2^b - 1]``.

    Formula
    -------
    With :func:`nudge`'s :math:`min', max', s, s^{-1}` and
    :math:`z_0 = \\lfloor -min' s^{-1} + 0.5 \\rfloor`:
    :math:`y = (\\lfloor (\\mathrm{clamp}(x, min', max') - min') s^{-1} - z_0 + 0.5 \\rfloor) s`,
    every operation rounded to float32 (no fused multiply-add). The rounding is
    ``floor(v + 0.5)``: ties go up (toward +Inf). NaN inputs give NaN (Eigen's
    scalar ``cwiseMin``/``cwiseMax`` are ``std::min``/``std::max``, which return
    their first operand, the input, when a comparison involves NaN).

    Reference
    ---------
    TensorFlow ``tensorflow/core/kernels/fake_quant_ops_functor.h``,
    ``FakeQuantWithMinMaxArgsFunctor``; ``fake_quant_ops.cc`` (attribute checks).
    """
    nb = _int(num_bits, "num_bits")
    if not 2 <= nb <= 16:
        raise RefquantError(f"num_bits is out of range, expected between 2 and 16, was: {num_bits}")
    lo, hi = _f32_scalar(min_, "min_"), _f32_scalar(max_, "max_")
    if not lo < hi:
        raise RefquantError(f"min has to be smaller than max, was: {min_} >= {max_}")
    quant_min = 1 if narrow_range else 0
    quant_max = (1 << nb) - 1
    nmin, nmax, scale, inv_scale = nudge(lo, hi, quant_min, quant_max)
    f32 = np.float32
    quant_zero = f32(np.floor(f32(f32(-nmin * inv_scale) + f32(0.5))))
    x = np.asarray(inputs)
    if x.dtype.kind not in "fiu":
        raise RefquantError(f"inputs must be real numbers, got dtype {x.dtype}")
    x = x.astype(np.float32)
    clamped = np.where(np.isnan(x), x, np.minimum(np.maximum(x, nmin), nmax)).astype(f32)
    shifted = (clamped - nmin).astype(f32)
    v = ((shifted * inv_scale).astype(f32) - quant_zero).astype(f32)
    v = np.floor((v + f32(0.5)).astype(f32)).astype(f32)
    return (v * scale).astype(f32)


def symmetric_bias_quantize(bias, input_scale, weight_scale) -> np.ndarray:
    """TFLite converter's int32 bias: ``round_half_away(b * float(1 / float(s_in * s_w)))``.

    Formula
    -------
    :math:`\\sigma = \\mathrm{fl}_{32}(s_{in} s_w)`,
    :math:`\\iota = \\mathrm{fl}_{32}(1 / \\sigma)` (division in double),
    :math:`b_q = \\mathrm{clamp}(\\mathrm{round}(\\mathrm{fl}_{32}(b \\iota)), -(2^{31}-1), 2^{31}-1)`,
    round half away from zero.

    Reference
    ---------
    TFLite ``tensorflow/lite/tools/optimize/quantization_utils.cc``,
    ``SymmetricPerLayerBiasQuantize`` / ``SymmetricPerChannelBiasQuantize``.
    """
    return quantize_bias(bias, input_scale, weight_scale, rounding="half_away",
                         scale_op="reciprocal", precision="float32", narrow_range=True)


def populate_convolution_quantization_params(input_scale, filter_scale, output_scale, *,
                                             single_rounding=False):
    """Per-channel ``(output_multiplier, output_shift)`` as TFLite's kernels prepare them.

    Formula
    -------
    :math:`M_c = \\mathrm{double}(s_{in}) \\cdot \\mathrm{double}(s_{w,c}) / \\mathrm{double}(s_{out})`
    in double, then :func:`quantize_multiplier`.

    Reference
    ---------
    TFLite ``tensorflow/lite/kernels/kernel_util.cc``, ``PopulateConvolutionQuantizationParams``.
    """
    qm, sh = quantize_multiplier(_effective_output_scale(input_scale, filter_scale, output_scale),
                                 single_rounding=single_rounding)
    return qm, sh


def _effective_output_scale(input_scale, filter_scale, output_scale) -> np.ndarray:
    """``double(s_in) * double(s_w) / double(s_out)`` from float32 scales, shape (1,) or (C,).

    ``s_in s_w`` is exact in double (two 24-bit significands); the division rounds once.
    """
    s_in = np.float64(_f32_scalar(input_scale, "input_scale"))
    s_w = _real(filter_scale, "filter_scale", np.float32).astype(np.float64)
    s_out = np.float64(_f32_scalar(output_scale, "output_scale"))
    if s_w.ndim > 1:
        raise RefquantError(f"filter_scale must be a scalar or 1-D (one per channel); got shape {s_w.shape}")
    _check_positive(input_scale=s_in, filter_scale=s_w, output_scale=s_out)
    return np.atleast_1d(s_in * s_w / s_out)


_ACTIVATIONS = {"NONE": None, "RELU": (0.0, None), "RELU6": (0.0, 6.0), "RELU_N1_TO_1": (-1.0, 1.0)}


def calculate_activation_range_quantized(activation, output_scale, output_zero_point, dtype="int8"):
    """``(output_activation_min, output_activation_max)`` of a fused activation.

    Formula
    -------
    Each real bound :math:`r` becomes :math:`z + \\mathrm{int}(\\mathrm{round}(r / s))`
    (float32 division, half away), intersected with :math:`[q_{min}, q_{max}]`.

    Reference
    ---------
    TFLite ``kernel_util.cc``, ``CalculateActivationRangeQuantized`` (``Quantize`` helper).
    """
    if activation not in _ACTIVATIONS:
        raise RefquantError(f"activation must be one of {', '.join(_ACTIVATIONS)}; got {activation!r}")
    fmt = int_format(dtype)
    lo, hi = fmt.qmin, fmt.qmax
    bounds = _ACTIVATIONS[activation]
    if bounds is None:
        return lo, hi
    s = _f32_scalar(output_scale, "output_scale")
    _check_positive(output_scale=s)
    z = _int(output_zero_point, "output_zero_point")

    def q(r):
        return z + int(round_to_int(np.float32(np.float32(r) / s), "half_away"))

    lo = max(lo, q(bounds[0]))
    if bounds[1] is not None:
        hi = min(hi, q(bounds[1]))
    return lo, hi


def xnnpack_requantization_scale(input_scale, filter_scale, output_scale) -> np.ndarray:
    """XNNPACK's float32 requantization scale of a quantized FULLY_CONNECTED / CONV_2D.

    Returns
    -------
    numpy.ndarray of float32, one value per filter scale (shape ``(1,)`` per tensor).

    Formula
    -------
    :math:`\\sigma_c = \\mathrm{fl}_{32}(\\mathrm{fl}_{32}(s_{in} s_{w,c}) / s_{out})`: every
    scale is a float32 and each operation rounds to float32 (left to right, as C
    evaluates ``input_scale * kernel_scale / output_scale``). XNNPACK refuses
    :math:`\\sigma \\ge 256` (LiteRT's delegate then leaves the operator to the builtin
    kernel); so does this function, with a RefquantError.

    Reference
    ---------
    XNNPACK ``src/operators/fully-connected-nc.c`` (``create_fully_connected_nc_qs8``,
    ``..._qs8_qc8w``) and ``convolution-nhwc.c``: ``const float requantization_scale =
    input_scale * kernel_scale / output_scale``.
    """
    s_in = _f32_scalar(input_scale, "input_scale")
    s_w = np.atleast_1d(_real(filter_scale, "filter_scale", np.float32)).reshape(-1)
    s_out = _f32_scalar(output_scale, "output_scale")
    _check_positive(input_scale=s_in, filter_scale=s_w, output_scale=s_out)
    with np.errstate(over="ignore", under="ignore"):
        sigma = ((s_in * s_w).astype(np.float32) / s_out).astype(np.float32)
    if not (sigma < 256).all():
        raise RefquantError(f"requantization scale {float(sigma.max())!r} is >= 256: XNNPACK rejects "
                            "the operator and LiteRT runs its builtin kernel (kernel='optimized')")
    return sigma


def xnnpack_activation_range(activation, output_scale, output_zero_point, dtype="int8"):
    """``(output_min, output_max)`` of a fused activation as LiteRT's XNNPACK delegate sets them.

    Differs from :func:`calculate_activation_range_quantized` (TFLite's builtin kernels)
    where :math:`r / s` lands on a half: XNNPACK rounds ties to even **after** adding the
    zero point (``output_scale=12, output_zero_point=0`` with RELU6: ``(0, 0)`` here,
    ``(0, 1)`` in the builtin kernels; with ``output_zero_point=1``: ``(1, 2)`` in both).

    Formula
    -------
    Each real bound :math:`r` becomes
    :math:`\\mathrm{rint}(\\mathrm{fl}_{32}(\\mathrm{fl}_{32}(r / s) + z))` (round half to even),
    clamped to :math:`[q_{min}, q_{max}]`; a missing bound (RELU's upper) is the grid's end.

    Reference
    ---------
    TFLite ``delegates/xnnpack/xnnpack_delegate.cc`` (``ConvertActivationToOutputRange``:
    float bounds 0, 6, -1, 1, ±Inf); XNNPACK ``xnn_qs8_quantize`` in
    ``src/xnnpack/quantization.h``: ``lrintf(value / scale + (float) zero_point)`` clamped.
    """
    if activation not in _ACTIVATIONS:
        raise RefquantError(f"activation must be one of {', '.join(_ACTIVATIONS)}; got {activation!r}")
    fmt = int_format(dtype)
    bounds = _ACTIVATIONS[activation]
    if bounds is None:
        return fmt.qmin, fmt.qmax
    s = _f32_scalar(output_scale, "output_scale")
    _check_positive(output_scale=s)
    z = _int(output_zero_point, "output_zero_point")

    def q(r):
        v = np.float32(np.float32(np.float32(r) / s) + np.float32(z))
        return int(np.clip(round_to_int(np.float64(v), "half_even"), fmt.qmin, fmt.qmax))

    return q(bounds[0]), (fmt.qmax if bounds[1] is None else q(bounds[1]))


def _mbqm_srdhm_half_up_shift(acc, m, e):
    """``RoundingShiftRight(SRDHM(acc << l, m), r)``: SRDHM, then a shift rounding half up."""
    left = np.maximum(e, 0)
    right = np.maximum(-e, 0)
    high = saturating_rounding_doubling_high_mul(_wrap32(acc << left), m).astype(np.float64)
    # high / 2^right is exact in float64 (|high| < 2^31); half_up = floor(v + 1/2)
    return round_to_int(high / np.exp2(right), "half_up").astype(np.int64)


_FC_KERNELS = ("reference", "optimized", "xnnpack")


def fully_connected(input_data, filter_data, bias_data=None, *, input_offset=0, filter_offset=0,
                    output_offset=0, output_multiplier=None, output_shift=None,
                    output_activation_min=None, output_activation_max=None,
                    single_rounding=False, output_dtype="int8", kernel="reference",
                    requantization_scale=None, input_scale=None, filter_scale=None,
                    output_scale=None, cast="x86") -> np.ndarray:
    """TFLite's integer ``FullyConnected`` (per tensor or per channel), kernel by kernel.

    Parameters
    ----------
    input_data : array_like of int8 / uint8 / int16, shape (..., accum_depth)
    filter_data : array_like of int8 (uint8 with uint8 inputs), shape (output_depth, accum_depth)
    bias_data : array_like of int32 (or int64), shape (output_depth,), optional
    input_offset, filter_offset : int
        Minus the zero points (TFLite's convention); int8 per-channel filters are
        symmetric (``filter_offset=0``).
    output_offset : int
        The output zero point.
    output_multiplier, output_shift : int or array of shape (output_depth,)
        From :func:`populate_convolution_quantization_params`; required by
        ``kernel="optimized"``, and by ``kernel="reference"`` unless the float scales
        are given instead.
    output_activation_min, output_activation_max : int, optional
        From :func:`calculate_activation_range_quantized` (builtin kernels) or
        :func:`xnnpack_activation_range` (``kernel="xnnpack"``); default: the range
        of ``output_dtype``.
    single_rounding : bool
        ``TFLITE_SINGLE_ROUNDING`` builds; ``kernel="reference"`` with
        ``output_multiplier`` only.
    output_dtype : str
    kernel : {"reference", "optimized", "xnnpack"}
        Which requantization (the accumulator is the same wrapping int32 sum in all; int64
        with an int64 bias and float scales):

        - ``"reference"`` with ``input_scale``, ``filter_scale``, ``output_scale``:
          LiteRT's ``BUILTIN_REF`` FULLY_CONNECTED (``kernels/fully_connected.cc``,
          ``kReference``), which calls the **float-scale** overloads of
          ``reference_integer_ops::FullyConnected`` / ``FullyConnectedPerChannel``
          (int8, int16 activations) and ``reference_ops::FullyConnected`` (uint8):
          :math:`M_c = \\mathrm{double}(s_{in})\\,\\mathrm{double}(s_{w,c}) / \\mathrm{double}(s_{out})`,
          :math:`\\mathrm{static\\_cast<int32>}(\\mathrm{round}(\\mathrm{double}(\\mathrm{acc}) \\cdot M_c))`:
          the product rounded to double, then to an integer **half away from zero** (C
          ``round``): the real multiplier, not the quantized ``(m, shift)`` the op also prepares
          (``acc = -1``, :math:`M = 1/2` gives -1; :math:`M = (1 - 2^{-40})/2`, whose
          quantized multiplier is exactly 1/2, is no tie). A product beyond int32 goes
          through the C++ cast, undefined behaviour: ``cast="x86"`` (``cvttsd2si``) gives
          ``INT32_MIN``, so a huge positive result comes out as the activation minimum
          (the int32 addition of the zero point wraps, as in :func:`affine_quantize`);
          ``cast="arm"`` saturates. With an int64 ``bias_data`` the accumulator is int64
          (``BiasType``; LiteRT's int16 op without a bias and without
          ``quantized_bias_type`` also accumulates in int64: pass a zero int64 bias; an
          int32 bias in such a model is read as int64, ``[5, 1]`` as ``5 + 2^32`` with the
          last element past the buffer, unless ``quantized_bias_type`` is INT32).
        - ``"reference"`` with ``output_multiplier`` / ``output_shift``: the fixed-point
          overloads of the same functions (the only ones in older TensorFlow releases'
          ``tensorflow/lite/kernels/internal/reference/integer_ops/fully_connected.h``),
          gemmlowp's ``MultiplyByQuantizedMultiplier`` (double rounding, or
          single with ``single_rounding=True``); LiteRT 2.3's reference CONV_2D
          (:func:`conv2d`) is this with double rounding.
        - ``"optimized"`` (LiteRT ``BUILTIN_WITHOUT_DEFAULT_DELEGATES``, ruy on x86-64):
          :math:`h = \\mathrm{SRDHM}(\\mathrm{acc} \\ll l, m)` (ties toward +Inf), then
          :math:`\\lfloor (h + 2^{r-1}) / 2^r \\rfloor`: the right shift rounds half **up**
          (the arithmetic of ARM's ``SQRDMULH`` then ``SRSHL``), where gemmlowp's ``RoundingDivideByPOT`` rounds half away from
          zero. Two roundings: it is one step above both the double- and the
          single-rounding result when :math:`\\mathrm{acc}\\,M` lies just below a half
          (within :math:`2^{-r-1}`), and on exact negative ties. Pinned by experiment
          (per tensor, per channel, batch 1 and more): the x86 kernels of google/ruy
          as published (``kernel_avx512.cc``: ``((acc << l) m + 2^{30+r}) >> (31 + r)``)
          round once, which the wheel's results refute; which source it was built
          from is not known.
        - ``"xnnpack"`` (LiteRT's default delegate): float32 arithmetic,
          :math:`y = \\mathrm{rint}(\\mathrm{fl}_{32}(\\mathrm{fl}_{32}(\\mathrm{acc})\\,\\sigma_c)) + o_y`,
          ties to even, clamped; ``requantization_scale`` :math:`\\sigma` from
          :func:`xnnpack_requantization_scale` replaces the fixed-point multiplier.
        Measured bit-exact against ai-edge-litert 2.3.0 on x86-64 (AVX-512), see
        ``tests/peers/test_tflite_litert.py``.
    requantization_scale : float or array of shape (output_depth,), float32
        ``kernel="xnnpack"`` only (and required there).
    input_scale, output_scale : float (float32); filter_scale : float or array of shape (output_depth,)
        ``kernel="reference"`` only: selects LiteRT's float-scale reference (above).
    cast : {"x86", "arm"}
        The float-scale reference's ``static_cast<int32_t>`` of a product beyond int32.

    Returns
    -------
    numpy.ndarray of shape (..., output_depth), the output dtype.

    Formula
    -------
    :math:`\\mathrm{acc} = \\sum_d (w_{cd} + o_w)(x_{bd} + o_x) + \\mathrm{bias}_c` in a
    wrapping int32 accumulator (int64 with an int64 bias and float scales);
    :math:`y = \\mathrm{clamp}(\\mathrm{wrap}_{32}(\\mathrm{S}(\\mathrm{acc}) + o_y), a_{min}, a_{max})`
    with S the kernel's requantization: LiteRT's reference
    :math:`\\mathrm{int32}(\\mathrm{round\\_half\\_away}(\\mathrm{fl}_{64}(\\mathrm{acc}\\,M_c)))`,
    or :math:`\\mathrm{MBQM}(\\mathrm{acc}, m_c, e_c)` in the fixed-point kernels above
    (:math:`l = \\max(e, 0)`, :math:`r = \\max(-e, 0)`, :math:`\\mathrm{acc} \\ll l`
    wrapping in int32).

    Reference
    ---------
    LiteRT ``tflite/kernels/fully_connected.cc`` (``EvalQuantized``, ``FullyConnectedInt8``,
    ``FullyConnectedPerChannelInt8``, ``FullyConnectedInt16`` with ``kReference``);
    ``reference/integer_ops/fully_connected.h`` (``FullyConnected``,
    ``FullyConnectedPerChannel``, both overloads); ``reference/fully_connected.h`` (uint8);
    ``optimized/integer_ops/fully_connected.h`` through
    ``cpu_backend_gemm_x86.h`` (int8 always goes to ruy) and ruy's 8-bit kernels;
    gemmlowp ``fixedpoint.h`` ``SaturatingRoundingDoublingHighMul``; XNNPACK
    ``src/qs8-gemm`` fp32-requantization micro-kernels (``vfpacc = (float) vacc * vscale``,
    ``min`` with ``output_max - zero_point``, ``cvtps``/``lrintf``, saturating packs, ``max``
    with ``output_min``).
    """
    if kernel not in _FC_KERNELS:
        raise RefquantError(f"kernel must be one of {', '.join(_FC_KERNELS)}; got {kernel!r}")
    if single_rounding and kernel != "reference":
        raise RefquantError(f"single_rounding=True applies to kernel='reference' only; got kernel={kernel!r}")
    if cast not in _CASTS:
        raise RefquantError(f"cast must be one of {', '.join(_CASTS)}; got {cast!r}")
    scales = (input_scale, filter_scale, output_scale)
    float_scales = any(v is not None for v in scales)
    if float_scales:
        if kernel != "reference":
            raise RefquantError(f"input_scale / filter_scale / output_scale select kernel='reference''s "
                                f"float-scale path; got kernel={kernel!r}")
        if any(v is None for v in scales):
            raise RefquantError("the float-scale reference needs all of input_scale, filter_scale and "
                                "output_scale")
        if output_multiplier is not None or output_shift is not None or single_rounding:
            raise RefquantError("give either input_scale / filter_scale / output_scale (LiteRT's "
                                "float-scale reference) or output_multiplier / output_shift "
                                "(single_rounding), not both")
    fmt = int_format(output_dtype)
    x = np.asarray(input_data)
    w = np.asarray(filter_data)
    if w.ndim != 2:
        raise RefquantError(f"filter_data must be 2-D (output_depth, accum_depth); got shape {w.shape}")
    if x.ndim < 1 or x.shape[-1] != w.shape[1]:
        raise RefquantError(
            f"input_data's last dimension {x.shape[-1] if x.ndim else None} must equal "
            f"filter_data's accum_depth {w.shape[1]}"
        )
    n_out = w.shape[0]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, w.shape[1])
    b = None
    if bias_data is not None:
        b = np.asarray(bias_data)
        if b.shape != (n_out,):
            raise RefquantError(f"bias_data must have shape ({n_out},); got {b.shape}")
        if b.dtype.kind not in "iu":
            raise RefquantError(f"bias_data must be int32, got dtype {b.dtype}")
    wide = float_scales and b is not None and b.dtype == np.int64  # BiasType int64: int64 acc
    acc = integer_matmul(x2, w.T, -_int(input_offset, "input_offset"),
                         -_int(filter_offset, "filter_offset"),
                         accumulate="int64" if wide else "int32_wrap")
    acc = acc.astype(np.int64)
    if b is not None:
        acc = acc + b.astype(np.int64) if wide else _wrap32(acc + b.astype(np.int64))
    lo, hi = fmt.qmin, fmt.qmax
    if output_activation_min is not None:
        lo = max(lo, _int(output_activation_min, "output_activation_min"))
    if output_activation_max is not None:
        hi = min(hi, _int(output_activation_max, "output_activation_max"))
    if lo > hi:
        raise RefquantError(f"output_activation_min {output_activation_min} > output_activation_max "
                            f"{output_activation_max}")
    z = _int(output_offset, "output_offset")
    if kernel == "xnnpack":
        if requantization_scale is None:
            raise RefquantError("kernel='xnnpack' needs requantization_scale "
                                "(xnnpack_requantization_scale(input_scale, filter_scale, output_scale))")
        sigma = np.atleast_1d(_real(requantization_scale, "requantization_scale", np.float32))
        if sigma.shape not in ((1,), (n_out,)):
            raise RefquantError(f"requantization_scale must be a scalar or have output_depth = {n_out} "
                                f"values; got shape {sigma.shape}")
        out = requantize(acc, np.broadcast_to(sigma, (n_out,)), z, dtype=fmt, axis=-1, method="float",
                         rounding="half_even", precision="float32", activation_min=lo,
                         activation_max=hi)
        return out.reshape(*lead, n_out)
    if float_scales:
        eff = _effective_output_scale(input_scale, filter_scale, output_scale)
        if eff.shape not in ((1,), (n_out,)):
            raise RefquantError(f"filter_scale must be a scalar or have output_depth = {n_out} values; "
                                f"got shape {eff.shape}")
        # static_cast<int32_t>(round(static_cast<double>(acc) * effective_output_scale))
        with np.errstate(over="ignore", invalid="ignore"):
            v = round_to_int(acc.astype(np.float64) * eff[None, :], "half_away")
        scaled = _float_to_int32(v, cast)
    else:
        scaled = _requantize_fixed_point(acc, output_multiplier, output_shift, n_out, kernel,
                                         single_rounding)
    out = np.clip(_wrap32(scaled + z), lo, hi)
    return out.reshape(*lead, n_out).astype(fmt.storage_dtype)


def _requantize_fixed_point(acc, output_multiplier, output_shift, n_out, kernel, single_rounding):
    """``fully_connected``'s fixed-point kernels: gemmlowp's MBQM or LiteRT's ruy variant."""
    if output_multiplier is None or output_shift is None:
        raise RefquantError(f"kernel={kernel!r} needs output_multiplier and output_shift "
                            "(populate_convolution_quantization_params)"
                            + (" or input_scale, filter_scale and output_scale" if kernel == "reference"
                               else ""))
    try:
        m = np.broadcast_to(np.asarray(output_multiplier), (n_out,))[None, :]
        e = np.broadcast_to(np.asarray(output_shift), (n_out,))[None, :]
    except ValueError:
        raise RefquantError(
            f"output_multiplier {np.shape(output_multiplier)} and output_shift "
            f"{np.shape(output_shift)} must be scalars or have output_depth = {n_out} values"
        ) from None
    if kernel == "optimized":
        m = _integer_codes(m, "output_multiplier").astype(np.int64)
        e = _integer_codes(e, "output_shift").astype(np.int64)
        if m.min() < 0 or m.max() > INT32_MAX or e.min() < -31 or e.max() > 30:
            raise RefquantError("output_multiplier must be in [0, 2^31 - 1] and output_shift in [-31, 30]")
        scaled = _mbqm_srdhm_half_up_shift(acc, m, e)
    else:
        scaled = multiply_by_quantized_multiplier(acc, m, e,
                                                  single_rounding=single_rounding).astype(np.int64)
    return scaled


def compute_padding(padding, in_size, filter_size, stride, dilation):
    """TFLite's output size and (before) padding for one spatial dimension.

    Formula
    -------
    :math:`k' = (k - 1) d + 1`; SAME: :math:`o = \\lceil n / s \\rceil`; VALID:
    :math:`o = \\lfloor (n - k') / s \\rfloor + 1`; total padding
    :math:`\\max(0, (o - 1) s + k' - n)`, of which :math:`\\lfloor t/2 \\rfloor` goes
    before and the rest after (the odd element at the end).

    Reference
    ---------
    TFLite ``kernels/padding.h``, ``ComputeOutSize``, ``ComputePaddingWithOffset``.
    """
    if padding not in ("SAME", "VALID"):
        raise RefquantError(f"padding must be 'SAME' or 'VALID'; got {padding!r}")
    in_size, filter_size = _int(in_size, "in_size"), _int(filter_size, "filter_size")
    stride, dilation = _int(stride, "stride"), _int(dilation, "dilation")
    if stride < 1 or dilation < 1:
        raise RefquantError(f"stride and dilation must be >= 1; got {stride}, {dilation}")
    if in_size < 1 or filter_size < 1:
        raise RefquantError(f"in_size and filter_size must be >= 1; got {in_size}, {filter_size}")
    eff = (filter_size - 1) * dilation + 1
    if padding == "SAME":
        out = (in_size + stride - 1) // stride
    else:
        out = (in_size + stride - eff) // stride
    if out < 1:
        raise RefquantError(f"VALID convolution of size {in_size} with an effective filter of {eff} "
                            "has no output")
    total = max(0, (out - 1) * stride + eff - in_size)
    return out, total // 2


def conv2d(input_data, filter_data, bias_data=None, *, stride_width=1, stride_height=1,
           padding="VALID", dilation_width_factor=1, dilation_height_factor=1, input_offset=0,
           output_offset=0, output_multiplier=None, output_shift=None, output_activation_min=None,
           output_activation_max=None, single_rounding=False, output_dtype="int8",
           kernel="reference", requantization_scale=None) -> np.ndarray:
    """TFLite's int8 ``Conv`` (``ConvPerChannel``) via im2col and :func:`fully_connected`.

    Parameters
    ----------
    input_data : int8 array, NHWC (batches, height, width, in_channels)
    filter_data : int8 array, OHWI (out_channels, kh, kw, in_channels), symmetric
    bias_data : int32 array (out_channels,), optional
    stride_width, stride_height, dilation_width_factor, dilation_height_factor : int
    padding : {"SAME", "VALID"}
    input_offset, output_offset, output_multiplier, output_shift,
    output_activation_min, output_activation_max, single_rounding, output_dtype
        As for :func:`fully_connected`.
    kernel : {"reference", "optimized", "xnnpack"}
        The requantization of :func:`fully_connected`'s kernel of that name: LiteRT's
        optimized ``ConvPerChannel`` is im2col plus the same ruy GEMM
        (``optimized/integer_ops/conv.h``), XNNPACK's ``qs8``/``qc8w`` convolution the same
        fp32 requantization (``requantization_scale``). Measured against ai-edge-litert 2.3.0.
    requantization_scale : float32 array (out_channels,), ``kernel="xnnpack"`` only

    Formula
    -------
    :math:`\\mathrm{acc}_{b,y,x,c} = \\sum_{i,j,k} w_{c,i,j,k}(x_{b, ys - p_h + i d_h, xs - p_w + j d_w, k} + o_x)`
    over the taps inside the image (TFLite skips the others, which equals padding
    with the input zero point, as done here), then requantized as in
    :func:`fully_connected`.

    Reference
    ---------
    TFLite ``reference/integer_ops/conv.h`` (``ConvPerChannel``), ``kernels/padding.h``.
    """
    x = _integer_codes(input_data, "input_data")
    w = _integer_codes(filter_data, "filter_data")
    if x.ndim != 4 or w.ndim != 4:
        raise RefquantError(f"input_data (NHWC) and filter_data (OHWI) must be 4-D; got {x.shape}, {w.shape}")
    nb, ih, iw, ic = x.shape
    oc, kh, kw, fc = w.shape
    if fc != ic:
        raise RefquantError(f"filter_data has {fc} input channels, input_data has {ic}")
    oh, ph = compute_padding(padding, ih, kh, stride_height, dilation_height_factor)
    ow, pw = compute_padding(padding, iw, kw, stride_width, dilation_width_factor)
    ys = np.arange(oh)[:, None] * stride_height - ph + np.arange(kh)[None, :] * dilation_height_factor
    xs = np.arange(ow)[:, None] * stride_width - pw + np.arange(kw)[None, :] * dilation_width_factor
    pad_val = -int(input_offset)  # (pad_val + input_offset) == 0: the tap contributes nothing
    x64 = x.astype(np.int64)
    yin = (ys >= 0) & (ys < ih)
    xin = (xs >= 0) & (xs < iw)
    yc = np.clip(ys, 0, ih - 1)
    xc = np.clip(xs, 0, iw - 1)
    # patches[b, oy, ox, i, j, k]
    patches = x64[:, yc[:, None, :, None], xc[None, :, None, :], :]
    inside = (yin[:, None, :, None] & xin[None, :, None, :])[None, ..., None]
    patches = np.where(inside, patches, pad_val)
    cols = patches.reshape(nb, oh, ow, kh * kw * ic)
    return fully_connected(cols, w.reshape(oc, kh * kw * ic), bias_data, input_offset=input_offset,
                           filter_offset=0, output_offset=output_offset,
                           output_multiplier=output_multiplier, output_shift=output_shift,
                           output_activation_min=output_activation_min,
                           output_activation_max=output_activation_max,
                           single_rounding=single_rounding, output_dtype=output_dtype,
                           kernel=kernel, requantization_scale=requantization_scale)
