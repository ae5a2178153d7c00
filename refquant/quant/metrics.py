"""Error metrics of a quantization: MSE, SQNR, max absolute error, error in steps."""

from __future__ import annotations

import numpy as np

from .._core.granularity import broadcast_param, check_block_size, normalize_axis
from .._errors import RefquantError
from .affine import check_scale

__all__ = ["mse", "sqnr_db", "max_abs_error", "error_in_steps"]


def _pair(x, y):
    try:
        a = np.asarray(x, dtype=np.float64)
        b = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError):
        raise RefquantError("x and y must be rectangular arrays of real numbers") from None
    if a.shape != b.shape:
        raise RefquantError(f"shapes differ: {a.shape} (reference) vs {b.shape} (approximation)")
    return a, b


def mse(x, y) -> float:
    """Mean squared error between a reference ``x`` and an approximation ``y``.

    Formula
    -------
    :math:`\\frac1n \\sum_i (x_i - y_i)^2`, in float64; 0 for empty input.

    Reference
    ---------
    The usual definition (e.g. ``torch.nn.functional.mse_loss``, reduction="mean").
    """
    a, b = _pair(x, y)
    return float(np.mean((a - b) ** 2)) if a.size else 0.0


def sqnr_db(x, y) -> float:
    """Signal-to-quantization-noise ratio in dB.

    ``x`` is the reference signal, ``y`` its quantized approximation. Returns
    +inf when the error is zero, -inf when the signal is zero and the error is not.

    Formula
    -------
    :math:`10 \\log_{10}\\big(\\sum_i x_i^2 / \\sum_i (x_i - y_i)^2\\big)`, sums in float64.
    Where the squares overflow or underflow float64, both sums are taken on
    :math:`x` and :math:`y` scaled by one power of two (the ratio is unchanged).
    A uniform quantizer gains :math:`20\\log_{10} 2 \\approx 6.02` dB per bit.

    Reference
    ---------
    Gray & Neuhoff, "Quantization", IEEE Trans. Inf. Theory 44(6), 1998 (the 6 dB/bit rule).
    """
    a, b = _pair(x, y)
    with np.errstate(over="ignore", under="ignore"):
        sig = float(np.sum(a * a))
        err = float(np.sum((a - b) ** 2))
        finite = bool(np.isfinite(a).all() and np.isfinite(b).all())
        if finite and (not np.isfinite(sig) or not np.isfinite(err)
                       or (sig == 0 and a.any()) or (err == 0 and (a != b).any())):
            # the squares overflowed or underflowed float64 (|x| > 1e154 or < 1e-154):
            # scale both by the same power of two, exactly, so that the largest is ~1
            e = int(np.frexp(max(np.abs(a).max(), np.abs(b).max()))[1])
            a2, b2 = np.ldexp(a, -e), np.ldexp(b, -e)
            sig = float(np.sum(a2 * a2))
            err = float(np.sum((a2 - b2) ** 2))
    if err == 0:
        return float("inf")
    if sig == 0:
        return float("-inf")
    return 10.0 * float(np.log10(sig / err))


def max_abs_error(x, y) -> float:
    """Largest absolute error.

    Formula
    -------
    :math:`\\max_i |x_i - y_i|` in float64; 0 for empty input.

    Reference
    ---------
    ``numpy.testing.assert_allclose``'s "Max absolute difference".
    """
    a, b = _pair(x, y)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def error_in_steps(x, y, scale, *, axis=None, block_size=None) -> np.ndarray:
    """Elementwise error measured in quantization steps (LSB): :math:`|x - y| / s`.

    ``scale`` follows the granularity rules of :func:`refquant.quantize` (every
    element finite and > 0, else RefquantError). A
    round-to-nearest quantizer inside its range has errors <= 0.5 step.

    Formula
    -------
    :math:`e_i = |x_i - y_i| / s_i` with :math:`s_i` the step that applies to element i.

    Reference
    ---------
    The LSB error of ADC testing (IEEE Std 1241-2010, "code transition error in LSB").
    """
    a, b = _pair(x, y)
    if axis is not None:
        axis = normalize_axis(axis, a.ndim)
    block_size = check_block_size(block_size, axis)
    s = broadcast_param(check_scale(scale).astype(np.float64), a.shape, axis, block_size, "scale")
    return np.abs(a - b) / s
