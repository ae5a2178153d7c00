"""Scaled float quantization: x / scale rounded to FP8, FP6, FP4, bfloat16 or float16.

Granularity follows :mod:`refquant.quant._granularity`: per tensor (``axis=None``),
per channel (``axis=a``: one scale per index along ``a``), or per block
(``axis=a, block_size=B``: blocks of ``B`` along ``a``, the last one partial with
its own scale, as ONNX-21 blocked quantization).

The scale maps the group's absolute maximum onto the format's largest finite
value, :math:`s = \\mathrm{amax} / \\mathrm{max}_{fmt}` (the "delayed / current
scaling" recipe of Transformer Engine and torchao, written with a divide), or a
power of two near it. A group of zeros (amax = 0) gets scale 1.

PyTorch: ``(x / s).to(torch.float8_e4m3fn)`` saturates (values above 448 and ±Inf
become ±448, NaN stays NaN), which is ``saturate=True`` here; PyTorch's
``float8_e5m2`` and the fnuz casts do not saturate (overflow -> Inf / NaN),
``saturate=False``. torchao multiplies by ``max / amax`` (``scale_op="reciprocal"``:
the float64 quotient rounded once to float32, as its ``amax_to_scale``), which can
differ by one code from a divide.
"""

from __future__ import annotations

import numpy as np

from .._core.granularity import (
    broadcast_param,
    check_block_size,
    normalize_axis,
    param_shape,
    reduce_groups,
)
from .._errors import RefquantError
from ..formats.floats import decode, encode, float_format
from .pow2 import pow2_exponent

__all__ = ["float_scale", "quantize_float", "dequantize_float"]

_POW2 = (None, "ceil", "floor", "nearest")


def _granularity(x, axis, block_size):
    ax = None if axis is None else normalize_axis(axis, x.ndim)
    bs = check_block_size(block_size, ax)
    if bs is not None and bs > x.shape[ax]:  # one partial block, whatever its nominal length
        bs = max(x.shape[ax], 1)
    return ax, bs


def _scale32(scale) -> np.ndarray:
    try:
        with np.errstate(over="ignore"):
            return np.asarray(scale, dtype=np.float32)
    except (TypeError, ValueError):
        raise RefquantError(f"scale must be a real number or array, got {scale!r}") from None


def _group_amax(xa, ax, bs) -> np.ndarray:
    """float64 absolute maximum of each group of ``|x|`` (0 for an empty group)."""
    if xa.size:
        return np.asarray(reduce_groups(xa, ax, bs, np.maximum), dtype=np.float64)
    return np.zeros(param_shape(xa.shape, ax, bs))  # np.maximum has no identity


def float_scale(x, fmt, *, axis=None, block_size=None, power_of_two=None) -> np.ndarray:
    """The scale that maps each group's absolute maximum onto ``fmt``'s max.

    Parameters
    ----------
    x : array_like of float
    fmt : str or FloatFormat
    axis, block_size : int, optional
        Granularity (see the module docstring).
    power_of_two : {None, "ceil", "floor", "nearest"}
        None: :math:`s = \\mathrm{amax}/\\mathrm{max}` in float32. ``"ceil"``:
        :math:`2^{\\lceil \\log_2(\\mathrm{amax}/\\mathrm{max}) \\rceil}` (never overflows);
        ``"floor"``: :math:`2^{\\lfloor \\cdot \\rfloor}` (the largest values may saturate);
        ``"nearest"``: the exponent nearest :math:`\\log_2` (never a tie: up from
        :math:`\\sqrt 2 \\cdot 2^k`). Each is decided exactly on the float64 quotient
        ``amax / max`` (:func:`refquant.quant.pow2.pow2_exponent`), not on a rounded log2.

    Returns
    -------
    numpy.ndarray of float32, the parameter shape of the granularity.

    Formula
    -------
    :math:`s_g = \\max_{i \\in g} |x_i| \\, / \\, \\mathrm{max}_{fmt}`, 1 where the group is all zero,
    at least :math:`2^{-149}` (a quotient that underflows float32 is not a usable scale).

    Reference
    ---------
    NVIDIA Transformer Engine, "Using FP8" (amax-based scaling);
    torchao ``float8`` ``amax_to_scale``.
    """
    f = float_format(fmt)
    if not (power_of_two is None or isinstance(power_of_two, str)) or power_of_two not in _POW2:
        raise RefquantError(f"power_of_two must be one of {_POW2}, got {power_of_two!r}")
    xa = np.asarray(x)
    if xa.dtype.kind not in "fiu" and xa.dtype.name != "bfloat16":
        raise RefquantError(f"x must be a real array, got dtype {xa.dtype}")
    xa = np.abs(xa.astype(np.float64))
    if not np.isfinite(xa).all():
        raise RefquantError("x contains NaN or Inf; a scale cannot be computed from it")
    ax, bs = _granularity(xa, axis, block_size)
    amax = _group_amax(xa, ax, bs)
    ratio = np.where(amax > 0, amax / f.max, 1.0)
    if power_of_two is not None:
        # exact, from the bits of the float64 quotient (np.log2 rounds: log2(4 fl(sqrt 2)) == 2.5)
        if power_of_two == "nearest":
            ex = pow2_exponent(ratio, boundary="log")
        else:
            ex = pow2_exponent(ratio, boundary="floor")
            if power_of_two == "ceil":
                ex = ex + (ratio > np.ldexp(1.0, ex))
        ratio = np.ldexp(1.0, ex)
    # a quotient below float32's range would give scale 0, which quantize_float refuses:
    # the smallest positive float32 instead (a power of two; amax / s stays below max / 2)
    return np.asarray(np.maximum(ratio.astype(np.float32), np.float32(2.0**-149)))


def quantize_float(x, fmt, scale=None, *, axis=None, block_size=None, saturate=True, rounding="half_even",
                   power_of_two=None, scale_op="divide", precision="float32", seed=None, rng=None):
    """Quantize ``x`` to float codes of ``fmt``: ``encode(x / scale)``.

    Parameters
    ----------
    x : array_like of float
        Not modified.
    fmt : str or FloatFormat
        ``"float8_e4m3fn"``, ``"float4_e2m1fn"``, ... (E8M0 is a scale format, not accepted).
    scale : array_like, optional
        Per the granularity; computed with :func:`float_scale` when None.
    axis, block_size : int, optional
    saturate, rounding
        As :func:`refquant.formats.floats.encode` (saturating, round half to even by default).
    power_of_two : optional
        Passed to :func:`float_scale` when the scale is computed.
    scale_op : {"divide", "reciprocal"}
        ``x / s`` or ``x * r`` (torchao's multiply) with ``r = fl32(max / amax)`` (the float64
        quotient rounded once, torchao's ``amax_to_scale``) when the scale is computed here
        without ``power_of_two``, else ``r = fl32(1 / s)``. torchao's clamp of amax at 1e-12
        is not reproduced (a group of zeros gets ``r = 1``).
    precision : {"float32", "float64"}
        Where the quotient is formed; it is then rounded once to ``fmt``.
    seed, rng
        For ``rounding="stochastic"`` only (as :func:`refquant.formats.floats.encode`).

    Returns
    -------
    codes : numpy.ndarray of uint8 (uint16 for bfloat16 / float16)
    scale : numpy.ndarray of float32

    Formula
    -------
    :math:`q = \\mathrm{encode}_{fmt}(x / s)`, rounded half to even, saturating to
    :math:`\\pm\\mathrm{max}_{fmt}` when ``saturate``.

    Reference
    ---------
    OCP OFP8 rev. 1.0; PyTorch ``Tensor.to(torch.float8_e4m3fn)``; ONNX QuantizeLinear-21
    with a float8 zero point.
    """
    f = float_format(fmt)
    if not f.signed:
        raise RefquantError(f"fmt {f.name} is a scale format; pick an element format such as float8_e4m3fn")
    if not isinstance(scale_op, str) or scale_op not in ("divide", "reciprocal"):
        raise RefquantError(f"scale_op must be 'divide' or 'reciprocal', got {scale_op!r}")
    if not isinstance(precision, str) or precision not in ("float32", "float64"):
        raise RefquantError(f"precision must be 'float32' or 'float64', got {precision!r}")
    dt = np.float32 if precision == "float32" else np.float64
    xa = np.asarray(x)
    if xa.dtype.kind not in "fiu":
        raise RefquantError(f"x must be a real array, got dtype {xa.dtype}")
    ax, bs = _granularity(xa, axis, block_size)
    recip = None
    if scale is None:
        scale = float_scale(xa, f, axis=ax, block_size=bs, power_of_two=power_of_two)
        if scale_op == "reciprocal" and power_of_two is None:
            # torchao's amax_to_scale: max / amax in float64, rounded once to float32, not
            # 1 / fl32(amax / max) (one ulp apart about a quarter of the time). A power-of-two
            # scale has an exact reciprocal either way.
            amax = _group_amax(np.abs(xa.astype(np.float64)), ax, bs)
            with np.errstate(over="ignore"):
                recip = np.where(amax > 0, f.max / np.where(amax > 0, amax, 1.0), 1.0).astype(np.float32)
    s = _scale32(scale)
    if not (np.isfinite(s).all() and (s > 0).all()):
        raise RefquantError(f"scale must be finite and positive, got {s.ravel()[:4]}")
    sb = broadcast_param(s, xa.shape, ax, bs, "scale").astype(dt)
    with np.errstate(over="ignore"):
        if scale_op == "divide":
            y = xa.astype(dt) / sb
        else:
            if recip is None:
                recip = np.float32(1) / s
            y = xa.astype(dt) * broadcast_param(recip, xa.shape, ax, bs, "scale").astype(dt)
    return encode(y, f, saturate=saturate, rounding=rounding, seed=seed, rng=rng), s


def dequantize_float(codes, fmt, scale, *, axis=None, block_size=None) -> np.ndarray:
    """``decode(codes) * scale`` in float32.

    Formula
    -------
    :math:`\\hat x = \\mathrm{decode}_{fmt}(q) \\cdot s` (one float32 multiply, exact
    when ``s`` is a power of two and the product is normal).

    Reference
    ---------
    ONNX DequantizeLinear-21 (float8 input).
    """
    f = float_format(fmt)
    v = decode(codes, f)
    ax, bs = _granularity(v, axis, block_size)
    s = _scale32(scale)
    return (v * broadcast_param(s, v.shape, ax, bs, "scale")).astype(np.float32)
