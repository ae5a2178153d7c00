"""Dynamic (run-time) quantization: parameters computed from the tensor being quantized.

Static quantization calibrates once and reuses the parameters
(:mod:`refquant.quant.calibration`); dynamic quantization computes them for
every tensor at run time, from its own min and max, and returns the codes with
the parameters needed to dequantize them:

=================  =====================================  ===============================
granularity        arguments                              as in
=================  =====================================  ===============================
per tensor         ``axis=None`` (defaults: uint8,        ONNX DynamicQuantizeLinear-11
                   affine)
per row / channel  ``axis=a``                             per-channel dynamic quantization
per token          :func:`dynamic_quantize_per_token`     LLM activation quantization
                   (one scale per row of the last axis)   (LLM.int8(), SmoothQuant)
=================  =====================================  ===============================
"""

from __future__ import annotations

import numpy as np

from .._core.granularity import as_array
from .._errors import RefquantError
from .qparams import QParams, _minmax, qparams_from_range

__all__ = ["dynamic_quantize", "dynamic_quantize_per_token"]


def dynamic_quantize(
    x,
    *,
    dtype="uint8",
    symmetric=False,
    axis=None,
    block_size=None,
    rounding="half_even",
    nan="raise",
    backend="auto",
    **qparams_kwargs,
) -> tuple[np.ndarray, QParams]:
    """Quantize ``x`` with parameters computed from ``x`` itself → ``(codes, QParams)``.

    Parameters
    ----------
    x : array_like of float
        Never modified. NaN is ignored by the range and handled by ``nan`` when
        quantizing.
    dtype : str, default "uint8"
    symmetric : bool, default False
    axis, block_size : granularity (one parameter per index of ``axis``, or per block)
    rounding : str, default "half_even"
    nan : NaN policy of :func:`refquant.quant.affine.quantize`
    backend : {"auto", "numpy", "cpu"}
        Of the min-max reduction and the quantization (see
        :func:`refquant.quant.affine.quantize`).
    **qparams_kwargs
        Passed to :func:`qparams_from_range`. Defaults here follow ONNX
        DynamicQuantizeLinear: ``zero_point_formula="round_difference"``,
        ``eps=0`` (a zero range, or a subnormal one whose float32 scale underflows
        to 0, gives scale 1 instead of dividing by 0; ONNX's peers return scale 0 there),
        ``precision="float32"``; the codes are ``x / s`` in float32, rounded
        half to even, saturated.

    Returns
    -------
    codes : integer array of ``x.shape``
    qparams : QParams (its ``semantics`` reproduce the quantization)

    Formula
    -------
    :math:`s = (\\max(x_{max}, 0) - \\min(x_{min}, 0)) / (q_{max} - q_{min})`,
    :math:`z = \\mathrm{clamp}(\\mathrm{rint}(q_{min} - x_{min}^- / s))`,
    :math:`q = \\mathrm{clamp}(\\mathrm{rint}(x / s) + z)` (affine); symmetric:
    :math:`s = \\max|x| / q_{max}`, :math:`z = 0` (signed).

    Reference
    ---------
    ONNX DynamicQuantizeLinear-11 (onnx/defs/quantization/defs.cc): "y_scale =
    (maximum(0, max(x)) - minimum(0, min(x))) / (qmax - qmin)", "intermediate_zero_point
    = qmin - min(x) / y_scale", "y_zero_point = cast(round(saturate(itermediate_zero_point)))",
    "y = saturate(round(x / y_scale) + y_zero_point)".
    """
    xa = as_array(x, "x")
    if xa.dtype.kind not in "fiub":
        raise RefquantError(f"x must be a real array, got dtype {xa.dtype}")
    kw = {
        "zero_point_formula": "round_difference",
        "eps": 0.0,
        "precision": "float32",
        **qparams_kwargs,
    }
    lo, hi = _minmax(xa, axis, block_size, backend)
    # ±Inf in x <=> a group with a value (lo <= hi) whose lo or hi is infinite
    if np.any((lo <= hi) & (np.isinf(lo) | np.isinf(hi))):
        raise RefquantError("x contains ±Inf: a dynamic range would be infinite")
    if np.any(lo > hi):
        raise RefquantError("x has a group whose values are all NaN; no range can be computed")
    qp = qparams_from_range(
        lo,
        hi,
        dtype=dtype,
        symmetric=symmetric,
        axis=axis,
        block_size=block_size,
        semantics={"rounding": rounding, "precision": "float32", "nan": nan},
        **kw,
    )
    return qp.quantize(xa, backend=backend), qp


def dynamic_quantize_per_token(
    x, *, dtype="int8", symmetric=True, rounding="half_even", nan="raise", backend="auto",
    **qparams_kwargs,
) -> tuple[np.ndarray, QParams]:
    """Per-token dynamic quantization: one scale (and zero point) per row of the last axis.

    For activations of shape ``(..., tokens, hidden)`` every token vector gets
    its own parameters, computed at run time. Expressed as blocked quantization
    along the last axis with one block per row (``axis=-1``,
    ``block_size=hidden``), so the returned QParams have shape
    ``x.shape[:-1] + (1,)`` and dequantize any batch shape.

    Formula
    -------
    :math:`s_t = \\max_j |x_{t,j}| / q_{max}` (symmetric int8 by default),
    :math:`q_{t,j} = \\mathrm{clamp}(\\mathrm{rint}(x_{t,j} / s_t))`.

    Reference
    ---------
    Dettmers et al., "LLM.int8()", NeurIPS 2022 (vector-wise quantization);
    Xiao et al., "SmoothQuant", ICML 2023 (per-token dynamic activation scales).
    """
    xa = as_array(x, "x")
    if xa.ndim == 0:
        raise RefquantError("per-token quantization needs at least one axis; x is a scalar")
    hidden = xa.shape[-1]
    if hidden == 0:
        raise RefquantError("the last axis of x is empty: there is no token vector to quantize")
    return dynamic_quantize(
        xa,
        dtype=dtype,
        symmetric=symmetric,
        axis=xa.ndim - 1,
        block_size=hidden,
        rounding=rounding,
        nan=nan,
        backend=backend,
        **qparams_kwargs,
    )
