"""Uniform (affine) integer quantization: quantize, dequantize, fake-quantize.

The affine map between a real value ``x`` and an integer code ``q`` is

.. math::

    q = \\mathrm{clamp}\\big(\\mathrm{round}(x / s) + z,\\; q_{min},\\; q_{max}\\big),
    \\qquad \\hat{x} = (q - z)\\, s

with scale ``s > 0`` and zero point ``z`` (``z = 0``: symmetric). Peers agree on
this formula and disagree on the details, so each detail is a named argument:

==========================  ==================================================
argument                    choices (default first)
==========================  ==================================================
``rounding``                half_even, half_away, half_up, half_down, half_zero,
                            floor, ceil, trunc, stochastic (see ``rounding.py``)
``scale_op``                ``"divide"`` x / s, ``"reciprocal"`` x * (1 / s)
                            with the reciprocal rounded to ``precision`` first
                            (PyTorch, pytorch#139464)
``precision``               ``"float64"`` (the exact quotient of float32 inputs
                            is rounded correctly: no false ties below 2^26),
                            ``"float32"`` (x, s and x / s rounded to float32, as
                            ONNX, onnxruntime and PyTorch compute)
``zero_point_stage``        ``"after_rounding"`` round(x/s) + z,
                            ``"before_rounding"`` round(x/s + z) (float zero
                            points), ``"fused"`` round(fma(x, 1/s, z)) with one
                            rounding of the multiply-add (PyTorch's AVX2
                            quint8/qint8 kernel; needs scale_op="reciprocal",
                            precision="float32")
``clamp_stage``             ``"after_rounding"``, ``"before_rounding"``
``overflow``                ``"saturate"`` clamp to [qmin, qmax], ``"wrap"``
                            (two's complement at the format's width), ``"raise"``
``nan``                     ``"raise"``, ``"zero"`` (code 0), ``"zero_point"``,
                            ``"qmin"``, ``"qmax"``
``inf``                     ``"saturate"`` (±Inf go to the ends of the range,
                            also under overflow="wrap"), ``"raise"``
==========================  ==================================================
"""

from __future__ import annotations

import math

import numpy as np

from .._core.granularity import (
    as_array,
    broadcast_param,
    check_block_size,
    normalize_axis,
    param_shape,
)
from .._core.rounding import ROUNDING_MODES, round_to_int
from .._errors import RefquantError
from ..formats.integer import IntFormat, int_format
from ..kernels._backend import resolve_backend
from ._float32 import fma_f32

__all__ = ["quantize", "dequantize", "fake_quantize", "KERNEL_THRESHOLD"]

#: elements from which ``backend="auto"`` runs the Numba kernel: below, the NumPy body is
#: as fast, and a small call never pays a kernel's first compile
KERNEL_THRESHOLD = 1 << 16

_PRECISIONS = {"float64": np.float64, "float32": np.float32}
_CHOICES = {
    "scale_op": ("divide", "reciprocal"),
    "zero_point_stage": ("after_rounding", "before_rounding", "fused"),
    "clamp_stage": ("after_rounding", "before_rounding"),
    "overflow": ("saturate", "wrap", "raise"),
    "nan": ("raise", "zero", "zero_point", "qmin", "qmax"),
    "inf": ("saturate", "raise"),
}


def _choice(name, value):
    if not isinstance(value, str) or value not in _CHOICES[name]:
        raise RefquantError(f"{name} must be one of {', '.join(_CHOICES[name])}; got {value!r}")


def _as_float_array(x, name, keep_int=False):
    a = as_array(x, name)
    if a.dtype.kind == "f" or a.dtype.name in ("bfloat16",):
        return a
    if a.dtype.kind in "iub":
        return a if keep_int else a.astype(np.float64)
    raise RefquantError(
        f"{name} must be an array of real numbers (floating-point, integer or bool), "
        f"got dtype {a.dtype}"
    )


def _precision(precision):
    try:
        return _PRECISIONS[precision]
    except KeyError:
        raise RefquantError(
            f"precision must be one of {', '.join(_PRECISIONS)}; got {precision!r}"
        ) from None


def check_scale(scale, name: str = "scale") -> np.ndarray:
    """``scale`` as a float array; every element must be finite and > 0."""
    s = as_array(scale, name)
    if s.dtype.kind not in "fiu" and s.dtype.name != "bfloat16":
        raise RefquantError(f"{name} must be a real number or array, got dtype {s.dtype}")
    if s.size == 1:  # per tensor: a Python comparison, not four array operations
        v = float(s.reshape(-1)[0])
        if math.isfinite(v) and v > 0:
            return s
    s64 = s.astype(np.float64)
    bad = ~(np.isfinite(s64) & (s64 > 0))
    if bad.any():
        first = s64.reshape(-1)[np.flatnonzero(bad.reshape(-1))[0]]
        raise RefquantError(
            f"{name} must be finite and > 0; found {first.item()!r} "
            f"({int(bad.sum())} of {s64.size} element(s) invalid)"
        )
    return s


def check_zero_point(zero_point, fmt: IntFormat, *, allow_float: bool, name="zero_point"):
    """``zero_point`` as an int64 array inside [qmin, qmax] (or float64 if allowed)."""
    z = as_array(zero_point, name)
    if z.dtype.kind == "f" or z.dtype.name == "bfloat16":
        z64 = z.astype(np.float64)
        if not np.isfinite(z64).all():
            raise RefquantError(f"{name} must be finite, got {z64[~np.isfinite(z64)][0].item()!r}")
        far = (z64 < fmt.qmin) | (z64 > fmt.qmax)  # before an int64 cast (1e30 is undefined)
        if far.any():
            raise RefquantError(
                f"{name} {z64[far].reshape(-1)[0].item()!r} is outside the range "
                f"[{fmt.qmin}, {fmt.qmax}] of {fmt.name}"
            )
        if allow_float:
            return z64
        if not (z64 == np.round(z64)).all():
            raise RefquantError(
                f"{name} must be integral when added after rounding; got "
                f"{z64[z64 != np.round(z64)][0].item()!r} (use zero_point_stage='before_rounding' "
                "for float zero points)"
            )
        z = z64
    elif z.dtype.kind not in "iub" and z.dtype.kind != "V":
        raise RefquantError(f"{name} must be an integer or array of integers, got dtype {z.dtype}")
    elif z.size == 1 and z.dtype.kind in "iu" and fmt.qmin <= int(z.reshape(-1)[0]) <= fmt.qmax:
        return z.astype(np.int64)  # per tensor, in range: no array comparisons
    zi = z.astype(np.int64)
    out = (zi < fmt.qmin) | (zi > fmt.qmax)
    if out.any():
        raise RefquantError(
            f"{name} {int(zi[out].reshape(-1)[0])} is outside the range "
            f"[{fmt.qmin}, {fmt.qmax}] of {fmt.name}"
        )
    return zi


def _granularity(x, axis, block_size):
    if axis is not None:
        axis = normalize_axis(axis, x.ndim)
    block_size = check_block_size(block_size, axis)
    return axis, block_size


def quantize(
    x,
    scale,
    zero_point=0,
    *,
    dtype="int8",
    axis=None,
    block_size=None,
    rounding="half_even",
    narrow_range=None,
    scale_op="divide",
    precision="float64",
    zero_point_stage="after_rounding",
    clamp_stage="after_rounding",
    overflow="saturate",
    nan="raise",
    inf="saturate",
    seed=None,
    rng=None,
    out_dtype=None,
    out=None,
    backend="auto",
) -> np.ndarray:
    """Quantize real values to integer codes of ``dtype``.

    Parameters
    ----------
    x : array_like of float
        Values to quantize (integers are converted to float64). Never modified.
    scale : float or array_like
        Step size; scalar (per tensor), 1-D of ``x.shape[axis]`` (per axis) or
        ``x``'s shape with ``ceil(n / block_size)`` along ``axis`` (blocked).
        Every element finite and > 0.
    zero_point : int or array_like, default 0
        Same shape rules as ``scale``; inside [qmin, qmax] of ``dtype``. Float
        zero points are allowed with ``zero_point_stage="before_rounding"``.
    dtype : str, IntFormat or integer dtype, default "int8"
        The code grid (``"int4"``, ``"uint8"``, ``IntFormat(6)``, ...).
    axis, block_size : int, optional
        Granularity (see ``_granularity.py``); negative axes count from the end.
    rounding : str, default "half_even"
        Rounding of ``x / s`` (see :func:`refquant.quant.rounding.round_to_int`).
    narrow_range : bool, optional
        Override the format's narrow range (int8 in [-127, 127]).
    scale_op, precision, zero_point_stage, clamp_stage, overflow, nan, inf
        The semantic choices tabulated in this module's docstring.
    seed, rng
        For ``rounding="stochastic"`` only.
    out_dtype : dtype, optional
        Output dtype; default the format's storage dtype (int4 -> int8).
    out : numpy.ndarray, optional
        Where to write the codes: C-contiguous, writeable, ``x``'s shape, the output
        dtype, sharing no memory with ``x``; returned. Reusing one buffer saves the
        page faults of a fresh output (a third of the time of a 64M-element int8
        call). As with NumPy's ``out=``, a call that raises may have written part of it.
    backend : {"auto", "numpy", "cpu"}
        ``"numpy"``: the NumPy body below (the reference); ``"cpu"``: the Numba
        kernel (:mod:`refquant.kernels.cpu.affine`, bit for bit the same codes);
        ``"auto"``: the kernel from :data:`KERNEL_THRESHOLD` elements on.
        Stochastic rounding and output dtypes other than NumPy integers always run
        the NumPy body. ``REFQUANT_BACKEND=numpy`` forces the reference.

    Returns
    -------
    numpy.ndarray of integers, same shape as ``x``.

    Formula
    -------
    :math:`q = \\mathrm{clamp}(\\mathrm{round}(x / s) + z, q_{min}, q_{max})`
    (with the stages and operations chosen by the arguments).

    Reference
    ---------
    ONNX QuantizeLinear-21 ("saturate(round(x / y_scale) + y_zero_point)", round
    half to even); Jacob et al., "Quantization and Training of Neural Networks for
    Efficient Integer-Arithmetic-Only Inference", CVPR 2018, eq. (1).
    """
    fmt = int_format(dtype, narrow_range)
    for name, val in (
        ("scale_op", scale_op),
        ("zero_point_stage", zero_point_stage),
        ("clamp_stage", clamp_stage),
        ("overflow", overflow),
        ("nan", nan),
        ("inf", inf),
    ):
        _choice(name, val)
    ft = _precision(precision)
    if zero_point_stage == "fused" and (scale_op, precision) != ("reciprocal", "float32"):
        raise RefquantError(
            "zero_point_stage='fused' computes fma(x, float32(1/s), z) and needs "
            f"scale_op='reciprocal' and precision='float32'; got {scale_op!r}, {precision!r}"
        )
    xa = _as_float_array(x, "x", keep_int=True)
    axis, block_size = _granularity(xa, axis, block_size)
    sc = check_scale(scale)
    sk = _compact_param(sc, xa.shape, axis, block_size, "scale")
    zc = check_zero_point(zero_point, fmt, allow_float=zero_point_stage != "after_rounding")
    zk = _compact_param(zc, xa.shape, axis, block_size, "zero_point")
    try:
        odt = np.dtype(fmt.storage_dtype if out_dtype is None else out_dtype)
    except TypeError:
        odt = None  # the reference's astype says what is wrong with it
    if out is not None:
        _check_out(out, xa, odt)
    if (resolve_backend(backend, xa.size, threshold=KERNEL_THRESHOLD, cuda=False) == "cpu"
            and isinstance(rounding, str) and rounding in ROUNDING_MODES
            and rounding != "stochastic" and odt in _NP_INT_DTYPES
            and _kernel_dtype(xa.dtype) is not None):
        q = _quantize_cpu(xa, sk, zk, fmt, ft, _layout(xa.shape, axis, block_size), odt,
                          rounding, scale_op, zero_point_stage, clamp_stage, overflow, nan, inf,
                          dest=out)
        if q is not None:
            return q
        # the kernel flagged what the reference raises on: the reference says it
    q = _quantize_numpy(xa, sc, zc, fmt, ft, axis, block_size, rounding, scale_op,
                        zero_point_stage, clamp_stage, overflow, nan, inf, seed, rng, out_dtype)
    if out is None:
        return q
    np.copyto(out, q, casting="no")
    return out


def _check_out(out, xa, odt):
    if not isinstance(out, np.ndarray):
        raise RefquantError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != xa.shape or out.dtype != odt:
        raise RefquantError(f"out must have x's shape {xa.shape} and the output dtype {odt}; "
                            f"got {out.shape} {out.dtype}")
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise RefquantError("out must be C-contiguous and writeable")
    if np.shares_memory(out, xa):
        raise RefquantError("out shares memory with x, which quantize never modifies")


def _quantize_numpy(xa, sc, zc, fmt, ft, axis, block_size, rounding, scale_op,
                    zero_point_stage, clamp_stage, overflow, nan, inf, seed, rng, out_dtype):
    """The reference body of :func:`quantize` (after its validation)."""
    xa = _as_float_array(xa, "x")
    s = broadcast_param(sc, xa.shape, axis, block_size, "scale").astype(ft)
    z = broadcast_param(zc, xa.shape, axis, block_size, "zero_point")

    xf = xa.astype(ft)
    if inf == "raise" and np.isinf(xf).any():
        raise RefquantError("x contains ±Inf and inf='raise'")
    if nan == "raise" and np.isnan(xf).any():
        raise RefquantError(
            f"x contains {int(np.isnan(xf).sum())} NaN value(s) and nan='raise'; choose a NaN "
            "policy (nan='zero', 'zero_point', 'qmin' or 'qmax') to quantize them"
        )
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if zero_point_stage == "fused":
            v = fma_f32(xf, (ft(1) / s).astype(ft), z.astype(ft))
        else:
            v = xf / s if scale_op == "divide" else xf * (ft(1) / s).astype(ft)
            if zero_point_stage == "before_rounding":
                v = (v + z.astype(ft)).astype(ft)
        # the clamp bounds of v: the grid itself once z is in, else the grid shifted by -z
        if zero_point_stage == "after_rounding":
            lo, hi = fmt.qmin - z, fmt.qmax - z
        else:
            lo, hi = fmt.qmin, fmt.qmax
        if clamp_stage == "before_rounding":
            v = np.clip(v, lo, hi).astype(ft)
        r = round_to_int(v, rounding, seed=seed, rng=rng).astype(np.float64)
        if zero_point_stage == "after_rounding":
            r = r + z
    nan_mask = np.isnan(r)
    r = np.where(nan_mask, 0.0, r)
    inf_mask = np.isinf(r)
    if overflow == "saturate" or inf_mask.any():
        sat = np.clip(r, fmt.qmin, fmt.qmax)
        r = sat if overflow == "saturate" else np.where(inf_mask, sat, r)
    if overflow == "raise":
        bad = (r < fmt.qmin) | (r > fmt.qmax)
        if bad.any():
            raise RefquantError(
                f"{int(bad.sum())} value(s) fall outside [{fmt.qmin}, {fmt.qmax}] of {fmt.name} "
                f"(first: code {r[bad].reshape(-1)[0]:.17g}) and overflow='raise'"
            )
    qi = r.astype(np.int64) if overflow != "wrap" else _wrap(r, fmt)
    if nan_mask.any():
        fill = {"zero": 0, "qmin": fmt.qmin, "qmax": fmt.qmax}.get(nan)
        qi = np.where(nan_mask, z if fill is None else fill, qi)
        if nan == "zero" and not fmt.qmin <= 0 <= fmt.qmax:
            raise RefquantError(f"nan='zero' but code 0 is outside the range of {fmt.name}")
    qi = np.asarray(qi)
    return qi.astype(fmt.storage_dtype if out_dtype is None else out_dtype)


_NP_INTS = ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64")
_NP_INT_DTYPES = frozenset(np.dtype(n) for n in _NP_INTS)
_CHUNK = 1 << 15  # elements per thread task of a per-tensor kernel


def _kernel_dtype(dt):
    """(view dtype, xkind) under which the kernels read ``dt``, or None (the reference runs)."""
    if dt == np.float32 or dt == np.float64 or dt in _NP_INT_DTYPES:
        return dt, 0
    if dt == np.bool_:
        return np.dtype(np.uint8), 0
    if dt.name == "bfloat16":
        return np.dtype(np.uint16), 1
    if dt == np.float16:
        return np.dtype(np.uint16), 2
    return None


def _flat(a):
    """``a`` flat, C-contiguous, in the view dtype the kernels read (no copy if contiguous)."""
    view, _ = _kernel_dtype(a.dtype)
    return np.ascontiguousarray(a).reshape(-1).view(view)


def _layout(shape, axis, block_size):
    """``(A, N, C, B)``: the array seen as (A, N, C) with blocks of B along N (see the kernels)."""
    if axis is None:
        return 1, int(np.prod(shape, dtype=np.int64)), 1, _CHUNK
    a = int(np.prod(shape[:axis], dtype=np.int64))
    c = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return a, int(shape[axis]), c, (1 if block_size is None else block_size)


def _compact_param(p, shape, axis, block_size, name):
    """Parameter ``p`` as a compact ``(PA, PN, PC)`` array for :func:`_layout`'s view, after
    the checks of :func:`broadcast_param` (which raises its messages); nothing is expanded."""
    p = np.asarray(p)
    if p.size == 1 and (axis is None or p.ndim == 0 or p.shape == (1,)):
        return p.reshape(1, 1, 1)
    if axis is None or p.shape != param_shape(shape, axis, block_size):
        broadcast_param(p, shape, axis, block_size, name)  # raises
    if block_size is None:
        return p.reshape(1, -1, 1)
    a, _, c, _ = _layout(shape, axis, block_size)
    return p.reshape(a, p.shape[axis], c)


def _quantize_cpu(xa, s, z, fmt, ft, lay, odt, rounding, scale_op, zero_point_stage,
                  clamp_stage, overflow, nan, inf, dest=None):
    """The Numba kernel's codes, or None where it flagged a condition the reference raises on."""
    from ..kernels.cpu import affine as kern

    view, xkind = _kernel_dtype(xa.dtype)
    f32 = ft is np.float32
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        sf = s.astype(ft)
        rcp = (ft(1) / sf).astype(ft)
        zft = z.astype(ft)
    zf = z.astype(np.float64)
    if zero_point_stage == "after_rounding":  # z is int64 here
        lo = (fmt.qmin - z).astype(np.float64)
        hi = (fmt.qmax - z).astype(np.float64)
    else:
        lo = np.full((1, 1, 1), fmt.qmin, np.float64)
        hi = np.full((1, 1, 1), fmt.qmax, np.float64)
    zfill = np.trunc(zf).astype(np.int64) if z.dtype.kind == "f" else z.astype(np.int64)
    # one compact shape for all: the kernel indexes every parameter array alike
    if not (sf.shape == zft.shape == lo.shape == (1, 1, 1)):  # per tensor: they already are
        sf, rcp, zft, zf, lo, hi, zfill = (np.ascontiguousarray(a) for a in np.broadcast_arrays(
            sf, rcp, zft, zf, lo, hi, zfill))
    fills = {"zero": 0, "qmin": fmt.qmin, "qmax": fmt.qmax}
    width = 1 << fmt.bits
    wlow = -(width >> 1) if fmt.signed else 0
    kernel = kern.quantize_kernel(xkind, f32, kern.SCALE_OPS[scale_op],
                                  kern.ZP_STAGES[zero_point_stage],
                                  clamp_stage == "before_rounding", kern.ROUNDING_IDS[rounding],
                                  kern.SATURATE_F32 if f32 and overflow == "saturate"
                                  and max(-fmt.qmin, fmt.qmax) < 2**24
                                  else kern.OVERFLOWS[overflow],
                                  # the flags matter only where the reference may raise
                                  inf == "raise" or nan in ("raise", "zero")
                                  or overflow != "saturate")
    out = np.empty(xa.size, odt) if dest is None else dest.reshape(-1)
    a, n, c, b = lay
    flags = kern.run_tasks(kernel, a * -(-n // b), xa.size, _flat(xa), out, a, n, c, b, sf, rcp,
                           zft, zf, lo, hi, zfill, fmt.qmin, fmt.qmax, wlow, width,
                           nan not in fills, fills.get(nan, 0))
    if ((inf == "raise" and flags & kern.FLAG_INF) or (nan == "raise" and flags & kern.FLAG_NAN)
            or flags & (kern.FLAG_RANGE | kern.FLAG_WRAP)
            or (nan == "zero" and flags & kern.FLAG_NAN_CODE and not fmt.qmin <= 0 <= fmt.qmax)):
        return None
    return out.reshape(xa.shape) if dest is None else dest


def _wrap(r: np.ndarray, fmt: IntFormat) -> np.ndarray:
    """Two's-complement wrap of integral floats to the format's width (exact for |r| < 2^63)."""
    big = np.abs(r) >= 2.0**62
    if big.any():
        raise RefquantError(
            f"overflow='wrap' needs |round(x / s) + z| < 2^62; got {r[big].reshape(-1)[0]:.17g}"
        )
    span = 1 << fmt.bits
    # the width's own range, not a narrow grid's: int8_narrow wraps 128 to -128, as a C cast does
    low = -(span >> 1) if fmt.signed else 0
    w = np.mod(r.astype(np.int64) - low, span) + low
    return w


def dequantize(
    q, scale, zero_point=0, *, axis=None, block_size=None, out_dtype=np.float32,
    precision="exact", backend="auto",
) -> np.ndarray:
    """Map integer codes back to real values: ``(q - z) * s``.

    Parameters
    ----------
    q : array_like of integers (NumPy or ml_dtypes integer types)
    scale, zero_point, axis, block_size
        As for :func:`quantize`. Float zero points are accepted here.
    out_dtype : float dtype, default float32
    precision : {"exact", "float32"}
        ``"exact"``: the exact ``q - z`` times ``s``, rounded once to
        ``out_dtype``. ``"float32"``: ``float32(q - z) * float32(s)`` with both
        steps rounded to float32 (they differ only for ``|q - z| >= 2^24``,
        i.e. 32-bit codes: PyTorch's qint32, int32 accumulators).
    backend : {"auto", "numpy", "cpu"}
        As for :func:`quantize` (the kernel writes float32 and float64 outputs;
        other output dtypes run the NumPy body).

    Formula
    -------
    :math:`\\hat{x} = (q - z)\\,s`, evaluated as the exact integer ``q - z`` times
    ``s`` rounded once to ``out_dtype``. For float32 scales and ``|q - z| < 2^24``
    this equals the float32 product ``float32(q - z) * s`` (ONNX DequantizeLinear,
    onnx.reference), since both are the correctly rounded exact product.

    Reference
    ---------
    ONNX DequantizeLinear-21: "y = (x - x_zero_point) * x_scale".
    """
    qa = as_array(q, "q")
    if qa.dtype.kind not in "iub" and qa.dtype.name not in ("int2", "int4", "uint2", "uint4"):
        raise RefquantError(f"q must be an array of integer codes, got dtype {qa.dtype}")
    if qa.dtype == np.uint64 and qa.size and int(qa.max()) > 2**63 - 1:
        raise RefquantError(f"q holds codes above 2^63 - 1 ({int(qa.max())}); q - z is formed in int64")
    if precision not in ("exact", "float32"):
        raise RefquantError(f"precision must be 'exact' or 'float32'; got {precision!r}")
    axis, block_size = _granularity(qa, axis, block_size)
    sc = check_scale(scale)
    sk = _compact_param(sc, qa.shape, axis, block_size, "scale")
    z = as_array(zero_point, "zero_point")
    if z.dtype.kind != "f" and z.dtype.kind not in "iub" and z.dtype.kind != "V":
        raise RefquantError(f"zero_point must be integers, got dtype {z.dtype}")
    zk = _compact_param(z, qa.shape, axis, block_size, "zero_point")
    try:
        odt = np.dtype(out_dtype)
    except TypeError:
        odt = None
    if (odt in (np.float32, np.float64)
            and resolve_backend(backend, qa.size, threshold=KERNEL_THRESHOLD, cuda=False) == "cpu"):
        return _dequantize_cpu(qa, sk, zk, _layout(qa.shape, axis, block_size), odt,
                               precision == "float32")
    s = broadcast_param(sc, qa.shape, axis, block_size, "scale")
    if z.dtype.kind == "f":
        diff = qa.astype(np.float64) - broadcast_param(z, qa.shape, axis, block_size, "zero_point")
    else:
        if z.dtype.kind not in "iub" and z.dtype.kind != "V":
            raise RefquantError(f"zero_point must be integers, got dtype {z.dtype}")
        diff = qa.astype(np.int64) - broadcast_param(
            z.astype(np.int64), qa.shape, axis, block_size, "zero_point"
        )
    if precision == "float32":
        return (diff.astype(np.float32) * s.astype(np.float32)).astype(out_dtype)
    return _round_product(diff.astype(np.float64), s.astype(np.float64), out_dtype)


def _dequantize_cpu(qa, s, z, lay, odt, prec32):
    """The Numba kernel's ``(q - z) * s`` (``s``, ``z`` compact) as ``odt`` (float32 / float64)."""
    from ..kernels.cpu import affine as kern

    if qa.dtype.kind == "V":  # ml_dtypes int2/int4/uint2/uint4: their exact values in a byte
        qa = qa.astype(np.int8 if qa.dtype.name.startswith("int") else np.uint8)
    zfloat = z.dtype.kind == "f"
    zk = z.astype(np.float64) if zfloat else z.astype(np.int64)
    if (not prec32 and odt == np.float32 and not zfloat and qa.dtype.itemsize <= 2
            and qa.dtype.kind in "iub" and np.abs(zk).max(initial=0) < 2**20):
        # the exact (q - z) * s rounded once to float32 IS float32(q - z) * float32(s) when
        # |q - z| < 2^24 (exact in float32) and s is a float32 (then the float32 product is
        # the correctly rounded exact one): the float32 kernel, which vectorises
        s64 = s.astype(np.float64)
        s32 = s64.astype(np.float32)
        prec32 = bool(np.array_equal(s32.astype(np.float64), s64))
    sk = s.astype(np.float32) if prec32 else s.astype(np.float64)
    out = np.empty(qa.size, odt)
    a, n, c, b = lay
    q = np.ascontiguousarray(qa).reshape(-1)
    if q.dtype == np.bool_:
        q = q.view(np.uint8)
    kern.run_tasks(kern.dequantize_kernel(prec32, odt == np.float64, zfloat), a * -(-n // b),
                   q.size, q, out, a, n, c, b, sk, zk)
    return out.reshape(qa.shape)


def _round_product(a: np.ndarray, b: np.ndarray, out_dtype) -> np.ndarray:
    """``a * b`` (float64 arrays, ``a`` integral) rounded once to ``out_dtype``.

    The float64 product ``p`` is rounded; Dekker's TwoProduct gives its error
    ``e`` exactly (``a * b = p + e``), and ``p`` is moved one ulp toward ``e``
    when ``e != 0`` and ``p`` is even: round-to-odd at 53 bits, which then rounds
    correctly to any format of at most 51 bits (Boldo & Melquiond, 2008). Without
    it ``float32(float64(3 * s))`` rounds twice: s = float64((1 + 2^-24) / 3) gave
    1.0 where the exact product rounds to 1 + 2^-23.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        p = a * b
        if np.dtype(out_dtype) == np.float64:
            return p
        c = 134217729.0  # 2^27 + 1: Veltkamp splitting into 26-bit halves
        ta, tb = c * a, c * b
        ah = ta - (ta - a)
        bh = tb - (tb - b)
        al, bl = a - ah, b - bh
        e = ((ah * bh - p) + ah * bl + al * bh) + al * bl
        odd = (np.asarray(p).view(np.int64) & 1) == 1
        step = np.isfinite(p) & np.isfinite(e) & (e != 0) & ~odd
        p = np.where(step, np.nextafter(p, np.where(e > 0, np.inf, -np.inf)), p)
        if np.dtype(out_dtype).name == "bfloat16":
            # ml_dtypes before 0.7 casts float64 -> bfloat16 through float32 (two roundings);
            # round to odd at float32's 24 bits first, after which every release's
            # float32 -> bfloat16 cast (8 bits) rounds correctly.
            f = np.asarray(p).astype(np.float32)
            inexact = np.isfinite(f) & (f.astype(np.float64) != p)
            even = (f.view(np.int32) & 1) == 0
            toward = np.where(p > f, np.float32(np.inf), np.float32(-np.inf))
            p = np.where(inexact & even, np.nextafter(f, toward), f)
    return np.asarray(p).astype(out_dtype)


def fake_quantize(
    x,
    scale,
    zero_point=0,
    *,
    dtype="int8",
    axis=None,
    block_size=None,
    rounding="half_even",
    out_dtype=np.float32,
    backend="auto",
    **semantics,
) -> np.ndarray:
    """Quantize then dequantize: the value ``x`` takes on the grid, as a float array.

    Takes every argument of :func:`quantize` (``**semantics``), ``out_dtype`` and
    ``backend`` (both steps run on it; on the kernels the codes in between are
    held in the format's storage dtype, one byte per int8 code, not int64).

    Formula
    -------
    :math:`\\tilde{x} = (\\mathrm{clamp}(\\mathrm{round}(x/s) + z, q_{min}, q_{max}) - z)\\,s`

    Reference
    ---------
    PyTorch ``torch.fake_quantize_per_tensor_affine`` (with scale_op="reciprocal",
    precision="float32"); TF ``fake_quant_with_min_max_vars``.
    """
    xa = as_array(x, "x")
    codes = np.int64
    if (resolve_backend(backend, xa.size, threshold=KERNEL_THRESHOLD, cuda=False) == "cpu"
            and rounding != "stochastic"):
        codes = None  # the storage dtype holds every code (saturated or wrapped to the width)
    q = quantize(
        xa,
        scale,
        zero_point,
        dtype=dtype,
        axis=axis,
        block_size=block_size,
        rounding=rounding,
        out_dtype=codes,
        backend=backend,
        **semantics,
    )
    return dequantize(q, scale, zero_point, axis=axis, block_size=block_size, out_dtype=out_dtype,
                      backend=backend)
