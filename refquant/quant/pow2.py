"""Power-of-two (logarithmic) quantization: x ≈ sign(x)·2^k.

The exponent is found exactly: ``frexp`` gives ``|x| = m·2^e`` with
``m ∈ [1, 2)`` (after renormalising), and the rounding of ``log2|x|`` is decided
on ``m`` alone:

* ``boundary="log"`` rounds ``log2|x|`` to nearest: up when ``m ≥ √2``. √2 is
  irrational, so no float is a tie; the comparison ``m ≥ fl(√2)`` is exact
  because ``fl(√2) > √2`` and no float lies between them.
* ``boundary="linear"`` rounds ``|x|`` to the nearer power of two: up when
  ``m ≥ 1.5`` (the tie at exactly 1.5·2^k goes up, to the larger magnitude).
* ``boundary="floor"`` truncates the exponent (``floor(log2|x|)``).

Then the exponent is clipped to ``[min_exp, max_exp]``. Zero stays zero.
"""

from __future__ import annotations

import operator

import numpy as np

from .._errors import RefquantError

__all__ = ["pow2_exponent", "pow2_quantize", "fsr_exponent_range", "article_binary_formula"]

_SQRT2 = np.sqrt(2.0)  # fl(√2) = 1.4142135623730951 > √2


def _real(x) -> np.ndarray:
    try:
        xa = np.asarray(x)
    except (TypeError, ValueError):
        raise RefquantError("x must be a rectangular real array") from None
    if xa.dtype.kind not in "fiub":
        raise RefquantError(f"x must be a real array, got dtype {xa.dtype}")
    return xa


def pow2_exponent(x, *, boundary="log") -> np.ndarray:
    """Integer exponent k of the power of two nearest ``|x|`` (int64; 0 where x is 0).

    NaN and ±Inf raise RefquantError (they have no exponent).

    Formula
    -------
    With :math:`|x| = m\\,2^e`, :math:`m \\in [1, 2)` (exact, from ``frexp``):
    :math:`k = e + [m \\ge \\sqrt2]` (log), :math:`e + [m \\ge 1.5]` (linear), :math:`e` (floor).

    Reference
    ---------
    Miyashita, Lee & Murmann, 2016, eq. (3) (Round(log2|x|)).
    """
    xa = _real(x)
    a = np.abs(xa.astype(np.float64))
    if not np.isfinite(a).all():
        raise RefquantError("x must be finite for power-of-two quantization (found NaN or Inf)")
    if boundary not in ("log", "linear", "floor"):
        raise RefquantError(f"boundary must be 'log', 'linear' or 'floor'; got {boundary!r}")
    m, e = np.frexp(a)  # a = m·2^e, m in [0.5, 1)
    m2, k = m * 2.0, e.astype(np.int64) - 1  # a = m2·2^k, m2 in [1, 2)
    if boundary == "log":
        k = k + (m2 >= _SQRT2)
    elif boundary == "linear":
        k = k + (m2 >= 1.5)
    return np.where(a == 0, 0, k)


def pow2_quantize(x, *, min_exp=-126, max_exp=127, boundary="log", underflow="clamp"):
    """Quantize to signed powers of two: sign(x)·2^clip(round(log2|x|), min_exp, max_exp).

    Parameters
    ----------
    x : array_like of float (finite)
    min_exp, max_exp : int
        Exponent range (see :func:`fsr_exponent_range` for Miyashita's FSR rule).
    boundary : {"log", "linear", "floor"}
        Where a value between 2^k and 2^(k+1) switches (module docstring).
    underflow : {"clamp", "zero"}
        Exponents below ``min_exp``: clamp to ``min_exp`` (Miyashita et al.'s
        Clip) or flush the value to zero.

    Returns
    -------
    values : float64 array of signed powers of two (or 0)
    exponents : int64 array (0 where the value is 0)

    Formula
    -------
    :math:`\\tilde{x} = \\mathrm{sign}(x)\\,2^{\\mathrm{clip}(\\mathrm{round}(\\log_2|x|),\\,
    e_{min},\\, e_{max})}`, with :math:`\\tilde{x} = 0` for :math:`x = 0`.

    Reference
    ---------
    Miyashita, Lee & Murmann, "Convolutional Neural Networks using Logarithmic
    Data Representation", 2016, eq. (3).
    """
    try:
        ok = int(min_exp) == min_exp and int(max_exp) == max_exp and min_exp <= max_exp
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok or not -(2**62) <= int(min_exp) <= int(max_exp) <= 2**62:
        raise RefquantError(
            f"need integers min_exp <= max_exp within +-2^62, got min_exp={min_exp!r}, max_exp={max_exp!r}"
        )
    min_exp, max_exp = int(min_exp), int(max_exp)  # 3.0 -> 3: ldexp needs integer exponents
    if underflow not in ("clamp", "zero"):
        raise RefquantError(f"underflow must be 'clamp' or 'zero'; got {underflow!r}")
    k = pow2_exponent(x, boundary=boundary)
    xa = np.asarray(x).astype(np.float64)
    zero = xa == 0
    if underflow == "zero":
        zero = zero | (k < min_exp)
    k = np.clip(k, min_exp, max_exp)
    vals = np.where(zero, 0.0, np.copysign(np.ldexp(1.0, k), xa))
    return vals, np.where(zero, 0, k)


def fsr_exponent_range(fsr: int, bits: int) -> tuple[int, int]:
    """Miyashita et al.'s exponent range for a full-scale range ``fsr`` and ``bits``.

    Formula
    -------
    :math:`[\\mathrm{FSR} - 2^{b},\\ \\mathrm{FSR}]`.

    Reference
    ---------
    Miyashita, Lee & Murmann, 2016, eq. (3) (the Clip of LogQuant).
    """
    try:
        fsr, bits = operator.index(fsr), operator.index(bits)
    except TypeError:
        raise RefquantError(f"fsr and bits must be integers, got fsr={fsr!r}, bits={bits!r}") from None
    if bits < 1:
        raise RefquantError(f"bits must be >= 1, got {bits}")
    return int(fsr) - (1 << int(bits)), int(fsr)


def article_binary_formula(x) -> np.ndarray:
    """The founding article's "binary quantization", literally: sign(x)·2^(sign(x)·floor(log2|x|)).

    What it does: for x > 0 it is 2^floor(log2 x), the power of two at or
    below x — a power-of-two (logarithmic) quantizer, not a binary one. For
    x < 0 the exponent is multiplied by sign(x) = -1 and flips: x = -0.3 has
    floor(log2 0.3) = -2, so the result is -2^2 = -4 instead of -0.25; small
    negative weights become large. At x = 0, log2 0 = -inf and 0·(-inf) is NaN,
    so the formula gives NaN. What was meant is
    ``sign(x)·2^floor(log2|x|)`` (:func:`pow2_quantize` with
    ``boundary="floor"``), and binary quantization proper is
    :func:`refquant.quant.binary.binarize_xnor`.

    Formula
    -------
    :math:`x_{bin} = \\mathrm{sign}(x) \\times 2^{\\mathrm{sign}(x) \\times \\lfloor \\log_2 |x| \\rfloor}`
    (article §3.1.2), evaluated in float64 as written.
    """
    xa = _real(x).astype(np.float64)
    s = np.sign(xa)
    with np.errstate(divide="ignore", invalid="ignore"):
        return s * np.exp2(s * np.floor(np.log2(np.abs(xa))))
