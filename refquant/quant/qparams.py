"""Quantization parameters: from a clipping range to (scale, zero point), and back to codes.

:func:`qparams_from_range` is the one place where a range [lo, hi] becomes a
scale and zero point; every calibration method (min-max, percentile, MSE,
histogram, entropy) only chooses the range and hands it here.

Symmetric (zero point fixed at the middle of the grid):

.. math:: s = \\max(\\max(|lo|, |hi|) / d,\\; \\epsilon),\\qquad z = z_{mid}

with divisor ``d = q_max - z_mid`` (``symmetric_divisor="qmax"``: amax maps onto
the top code, as ONNX Runtime's quantization tools, TensorRT and most LLM
quantizers do) or ``d = (q_max - q_min) / 2`` (``"half_span"``: PyTorch's
observers, 127.5 for int8). ``z_mid`` is 0 for signed formats and
``(q_min + q_max + 1) // 2`` for unsigned ones (128 for uint8, as PyTorch).

Affine (asymmetric):

.. math:: s = \\max\\big((hi - lo) / (q_{max} - q_{min}),\\; \\epsilon\\big),\\qquad
          z = \\mathrm{clamp}\\big(q_{min} - \\mathrm{round}(lo / s), q_{min}, q_{max}\\big)

(``zero_point_formula="qmin_minus_round"``, PyTorch) or
``clamp(round(q_min - lo / s))`` (``"round_difference"``, ONNX
DynamicQuantizeLinear). Both round half to even; they differ only when ``q_min``
is odd. With ``include_zero=True`` (the default) the range is first widened to
contain 0, so that 0 is exactly representable (zero padding, ReLU outputs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .._core.granularity import (
    as_array,
    check_block_size,
    normalize_axis,
    param_shape,
    reduce_groups,
)
from .._core.rounding import round_to_int
from .._errors import RefquantError
from ..formats.integer import IntFormat, IntRange, int_format, integral
from ..kernels._backend import resolve_backend
from .affine import (
    KERNEL_THRESHOLD,
    _flat,
    _kernel_dtype,
    _layout,
    dequantize,
    fake_quantize,
    quantize,
)

__all__ = ["QParams", "qparams_from_range", "minmax_range", "choose_qparams"]

FLOAT32_EPS = float(np.finfo(np.float32).eps)


@dataclass(frozen=True)
class QParams:
    """Scale and zero point of one quantization, with the grid and granularity they belong to.

    ``scale`` is a float32 array (0-d for per tensor), ``zero_point`` an int64
    array of the same shape (float64 for float zero points). ``semantics`` holds
    extra keyword arguments for :func:`quantize` (rounding, scale_op, ...), so a
    QParams reproduces the exact quantization it was made for.
    """

    scale: np.ndarray
    zero_point: np.ndarray
    dtype: IntFormat
    axis: int | None = None
    block_size: int | None = None
    semantics: dict = field(default_factory=dict, compare=False)

    def quantize(self, x, **overrides) -> np.ndarray:
        """Codes of ``x`` under these parameters (overrides replace stored semantics)."""
        kw = {**self.semantics, **overrides}
        return quantize(
            x, self.scale, self.zero_point, dtype=self.dtype, axis=self.axis,
            block_size=self.block_size, **kw,
        )

    def dequantize(self, q, out_dtype=np.float32) -> np.ndarray:
        """Real values of codes ``q``."""
        return dequantize(
            q, self.scale, self.zero_point, axis=self.axis, block_size=self.block_size,
            out_dtype=out_dtype,
        )

    def fake_quantize(self, x, **overrides) -> np.ndarray:
        """``dequantize(quantize(x))`` as float32."""
        kw = {**self.semantics, **overrides}
        return fake_quantize(
            x, self.scale, self.zero_point, dtype=self.dtype, axis=self.axis,
            block_size=self.block_size, **kw,
        )

    @property
    def qmin(self) -> int:
        return self.dtype.qmin

    @property
    def qmax(self) -> int:
        return self.dtype.qmax


def minmax_range(x, *, axis=None, block_size=None, backend="auto"):
    """Per-group minimum and maximum of ``x`` (NaN ignored), parameter-shaped.

    An empty group (an empty tensor) gives lo = hi = 0. A group that is all NaN
    raises RefquantError. ±Inf are kept (and rejected later by the scale check).
    ``backend`` as for :func:`refquant.quant.affine.quantize`: the Numba reduction
    (:func:`refquant.kernels.cpu.affine.minmax_kernel`) or the NumPy body.

    Formula
    -------
    :math:`lo_g = \\min_{i \\in g} x_i`, :math:`hi_g = \\max_{i \\in g} x_i` over the non-NaN
    elements of each group (tensor, channel or block).

    Reference
    ---------
    PyTorch ``MinMaxObserver`` (``torch.aminmax``); ONNX DynamicQuantizeLinear's min / max.
    """
    lo, hi = _minmax(x, axis, block_size, backend)
    if np.any(np.asarray(lo) > np.asarray(hi)):
        raise RefquantError("x has a group whose values are all NaN; no range can be computed")
    return lo, hi


def _minmax(x, axis, block_size, backend):
    """(lo, hi) of :func:`minmax_range` without its all-NaN check: such a group is (+Inf, -Inf)."""
    x = as_array(x, "x")
    if x.dtype.kind not in "fiub":
        raise RefquantError(f"x must be a real array, got dtype {x.dtype}")
    if axis is not None:
        axis = normalize_axis(axis, x.ndim)
    block_size = check_block_size(block_size, axis)
    if x.size == 0:
        shape = param_shape(x.shape, axis, block_size)
        z = np.zeros(shape, dtype=np.float32)
        return z, z.copy()
    if (resolve_backend(backend, x.size, threshold=KERNEL_THRESHOLD, cuda=False) == "cpu"
            and _kernel_dtype(x.dtype) is not None):
        return _minmax_cpu(x, axis, block_size)
    x = x.astype(np.float64) if x.dtype.kind != "f" else x
    nan = np.isnan(x)
    lo = reduce_groups(np.where(nan, np.inf, x), axis, block_size, np.minimum)
    hi = reduce_groups(np.where(nan, -np.inf, x), axis, block_size, np.maximum)
    return np.asarray(lo), np.asarray(hi)


def _minmax_cpu(x, axis, block_size):
    """The Numba reduction: float64 cells, returned in the reference's dtype and shape."""
    from ..kernels.cpu.affine import minmax_kernel, run_tasks

    a, n, c, b = _layout(x.shape, axis, block_size)
    if axis is None:
        cells = (1, -(-n // b), 1)
    elif block_size is None:
        cells = (1, n, 1)
    else:
        cells = (a, -(-n // b), c)
    lo = np.full(cells, np.inf)
    hi = np.full(cells, -np.inf)
    run_tasks(minmax_kernel, cells[0] * cells[1], x.size, _flat(x), _kernel_dtype(x.dtype)[1], a,
              n, c, b, lo, hi)
    dt = x.dtype if x.dtype.kind == "f" else np.dtype(np.float64)
    if axis is None:
        lo, hi = np.minimum.reduce(lo.reshape(-1)), np.maximum.reduce(hi.reshape(-1))
    return (np.asarray(lo.reshape(param_shape(x.shape, axis, block_size))).astype(dt),
            np.asarray(hi.reshape(param_shape(x.shape, axis, block_size))).astype(dt))


def _integral(value, name) -> int:
    """``value`` (a number or a one-element array) as an int; integral floats accepted."""
    v = as_array(value, name)
    if v.size != 1 or v.dtype.kind not in "fiu":
        raise RefquantError(f"{name} must be one integer, got {value!r}")
    return integral(v.reshape(-1)[0], name)


def qparams_from_range(
    lo,
    hi,
    *,
    dtype="int8",
    symmetric=True,
    narrow_range=None,
    reduce_range=False,
    include_zero=True,
    eps=FLOAT32_EPS,
    symmetric_divisor="qmax",
    zero_point_formula="qmin_minus_round",
    precision="float32",
    axis=None,
    block_size=None,
    quant_min=None,
    quant_max=None,
    semantics=None,
) -> QParams:
    """Scale and zero point that map the range [lo, hi] onto ``dtype``'s grid.

    Parameters
    ----------
    lo, hi : float or array_like
        Range per group (same shape). Must be finite with lo <= hi.
    dtype : str or IntFormat
    symmetric : bool
        Zero point at the grid's middle (see module docstring) or fitted.
    narrow_range : bool, optional
        Override the format's narrow range.
    reduce_range : bool
        Use one bit less of range (PyTorch's ``reduce_range`` for x86 fbgemm
        without VNNI): int8 becomes [-64, 63], uint8 [0, 127].
    include_zero : bool
        Widen the range to contain 0 before computing parameters.
    eps : float
        Floor of the scale (PyTorch observers: float32 eps). 0 disables it; then
        a scale that is 0 gives scale 1: a zero range (nothing to resolve), and
        also a nonzero range whose scale underflows in ``precision`` (uint8 on
        [0, 1e-43] in float32: 1e-43 / 255 rounds to 0; ONNX's peers keep scale 0
        and zero point 255 there).
    symmetric_divisor : "qmax" or "half_span"
    zero_point_formula : "qmin_minus_round" or "round_difference"
    precision : "float32" or "float64"
        Arithmetic of the scale computation; float32 reproduces peers that
        compute on float32 tensors. The scale is returned as float32 either way.
    axis, block_size : granularity the parameters belong to (stored in the result).
    quant_min, quant_max : int, optional
        A custom grid inside the format (PyTorch's quant_min / quant_max).
    semantics : dict, optional
        Keyword arguments stored for :meth:`QParams.quantize`.

    Formula
    -------
    See the module docstring.

    Reference
    ---------
    PyTorch ``torch/ao/quantization/observer.py``, ``_calculate_qparams``; ONNX
    DynamicQuantizeLinear-11.
    """
    fmt = int_format(dtype, narrow_range)
    qmin, qmax = fmt.qmin, fmt.qmax
    if reduce_range:
        if fmt.signed:
            qmin, qmax = -(1 << (fmt.bits - 2)), (1 << (fmt.bits - 2)) - 1
        else:
            qmin, qmax = 0, (1 << (fmt.bits - 1)) - 1
    if quant_min is not None or quant_max is not None:
        qmin = qmin if quant_min is None else _integral(quant_min, "quant_min")
        qmax = qmax if quant_max is None else _integral(quant_max, "quant_max")
        if not fmt.qmin <= qmin < qmax <= fmt.qmax:
            raise RefquantError(
                f"quant_min {qmin} and quant_max {qmax} must satisfy "
                f"{fmt.qmin} <= quant_min < quant_max <= {fmt.qmax} for {fmt.name}"
            )
    if symmetric_divisor not in ("qmax", "half_span"):
        raise RefquantError(
            f"symmetric_divisor must be 'qmax' or 'half_span'; got {symmetric_divisor!r}"
        )
    if zero_point_formula not in ("qmin_minus_round", "round_difference"):
        raise RefquantError(
            "zero_point_formula must be 'qmin_minus_round' or 'round_difference'; "
            f"got {zero_point_formula!r}"
        )
    ft = {"float32": np.float32, "float64": np.float64}.get(precision)
    if ft is None:
        raise RefquantError(f"precision must be 'float32' or 'float64'; got {precision!r}")
    lo = as_array(lo, "lo", np.float64)
    hi = as_array(hi, "hi", np.float64)
    e = as_array(eps, "eps", np.float64)
    if e.size != 1 or not (np.isfinite(e).all() and (e >= 0).all()):
        raise RefquantError(f"eps must be one finite number >= 0, got {eps!r}")
    eps = float(e.reshape(-1)[0])
    if lo.shape != hi.shape:
        raise RefquantError(f"lo has shape {lo.shape} but hi has shape {hi.shape}")
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise RefquantError("the range [lo, hi] must be finite (the input holds ±Inf or NaN)")
    if np.any(lo > hi):
        raise RefquantError("lo must be <= hi in every group")
    lo, hi = lo.astype(ft), hi.astype(ft)
    if include_zero:
        lo, hi = np.minimum(lo, ft(0)), np.maximum(hi, ft(0))
    if symmetric:
        zmid = 0 if fmt.signed else (qmin + qmax + 1) // 2
        div = ft(qmax - zmid) if symmetric_divisor == "qmax" else ft((qmax - qmin) / 2)
        if div <= 0:
            raise RefquantError(
                f"symmetric quantization onto [{qmin}, {qmax}] has no code above the middle "
                f"{zmid}, so amax has nothing to map onto (symmetric_divisor={symmetric_divisor!r})"
            )
        amax = np.maximum(-lo, hi)
        scale = (amax / div).astype(ft)
        zp = np.full(scale.shape, zmid, dtype=np.int64)
    else:
        with np.errstate(over="ignore"):
            width = (hi - lo).astype(ft)
        if not np.isfinite(width).all():
            raise RefquantError(
                f"the range [lo, hi] is wider than the largest {precision} "
                f"(hi - lo overflows: [{lo[~np.isfinite(width)].reshape(-1)[0]}, "
                f"{hi[~np.isfinite(width)].reshape(-1)[0]}]); no finite scale maps it"
            )
        scale = (width / ft(qmax - qmin)).astype(ft)
    if eps > 0:
        scale = np.maximum(scale, ft(eps)).astype(ft)
    else:
        scale = np.where(scale > 0, scale, ft(1)).astype(ft)
    if not symmetric:
        # the rounded values are integral; subtract and clamp in float64, where
        # every integer below 2^53 is exact (float32 would round qmin - r for
        # 32-bit grids), and convert only after clamping
        if zero_point_formula == "qmin_minus_round":
            zp = qmin - round_to_int((lo / scale).astype(ft)).astype(np.float64)
        else:
            zp = round_to_int((ft(qmin) - lo / scale).astype(ft)).astype(np.float64)
        zp = np.clip(zp, qmin, qmax).astype(np.int64)
    with np.errstate(over="ignore"):
        s32 = np.asarray(scale).astype(np.float32)
    if not np.isfinite(s32).all():
        raise RefquantError(
            f"the scale {np.asarray(scale)[~np.isfinite(s32)].reshape(-1)[0].item()!r} of the range "
            "[lo, hi] overflows float32, in which scales are returned"
        )
    grid = (fmt if (qmin, qmax) == (fmt.qmin, fmt.qmax)
            else IntRange(qmin, qmax, fmt.storage_dtype, f"{fmt.name}[{qmin}:{qmax}]"))
    return QParams(
        scale=s32,
        zero_point=np.asarray(zp),
        dtype=grid,
        axis=axis,
        block_size=block_size,
        semantics=dict(semantics or {}),
    )


# Range methods other than min-max, by name. :mod:`refquant.quant.calibration` registers
# its own here when it is imported (``refquant.quant`` imports it), so this module never
# imports the calibration module that builds on it: the import points one way.
_RANGE_METHODS: dict = {}


def register_range_method(name: str, fn) -> None:
    """Make ``choose_qparams(method=name)`` call ``fn(x, name, dtype=, symmetric=, axis=,
    block_size=, **options)`` for the ``(lo, hi)`` range."""
    _RANGE_METHODS[name] = fn


def choose_qparams(
    x,
    *,
    dtype="int8",
    symmetric=True,
    axis=None,
    block_size=None,
    method="minmax",
    method_options=None,
    backend="auto",
    **kwargs,
) -> QParams:
    """Calibrate: pick a range of ``x`` per group with ``method``, then scale and zero point.

    Parameters
    ----------
    x : array_like of float
        Calibration data (weights, or activations gathered over batches).
    dtype, symmetric, axis, block_size
        Grid and granularity.
    method : str
        ``"minmax"`` or any method registered in
        :mod:`refquant.quant.calibration` (percentile, mse, histogram, entropy).
    method_options : dict, optional
        Options for the range method (``{"percentile": 99.99}``).
    backend : {"auto", "numpy", "cpu"}
        Of the min-max reduction (see :func:`minmax_range`).
    **kwargs
        Passed to :func:`qparams_from_range` (narrow_range, reduce_range,
        include_zero, eps, symmetric_divisor, zero_point_formula, precision,
        quant_min, quant_max, semantics).

    Reference
    ---------
    See :func:`qparams_from_range` and each calibration method.
    """
    xa = as_array(x, "x")
    if axis is not None:
        axis = normalize_axis(axis, xa.ndim)
    block_size = check_block_size(block_size, axis)
    if method_options is not None and not isinstance(method_options, dict):
        raise RefquantError(
            f"method_options must be a dict of option names, got {type(method_options).__name__}"
        )
    opts = dict(method_options or {})
    if method == "minmax":
        if opts:
            raise RefquantError(f"method 'minmax' takes no method_options, got {sorted(opts)}")
        lo, hi = minmax_range(xa, axis=axis, block_size=block_size, backend=backend)
    else:
        range_method = _RANGE_METHODS.get(method)
        if range_method is None:
            raise RefquantError(
                f"method must be one of minmax, {', '.join(_RANGE_METHODS)}; got {method!r}"
            )
        lo, hi = range_method(
            xa, method, dtype=dtype, symmetric=symmetric, axis=axis, block_size=block_size,
            **opts,
        )
    return qparams_from_range(
        lo, hi, dtype=dtype, symmetric=symmetric, axis=axis, block_size=block_size, **kwargs
    )
