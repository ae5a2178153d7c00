"""The founding article's integer-quantization recipe, named and explained.

The article ("模型优化与加速", §3.1.1) gives three steps — normalise the
weights to [-1, 1], convert to integers with ``x_int = round(x_float × scale)``,
rescale — and a PyTorch snippet meant to implement them. This module makes the
recipe precise and shows what it is: symmetric per-tensor quantization.
"""

from __future__ import annotations

import math
import operator

import numpy as np

from .._core.rounding import round_to_int
from .._errors import RefquantError
from .affine import dequantize

__all__ = ["article_integer_quantize", "article_integer_dequantize"]


def article_integer_quantize(w, levels=127, *, rounding="half_even"):
    """Normalise to [-1, 1], round(x·levels), keep the normaliser: symmetric quantization.

    Parameters
    ----------
    w : array_like of float
        Weights (finite).
    levels : int
        The article's ``scale``: the integer that ±1 maps to (127 for int8;
        the article's snippet uses 10).
    rounding : str
        The article's ``round``; half to even by default (``torch.round``).

    Returns
    -------
    q : int64 codes in [-levels, levels]
    a : float, the normaliser max|w|: the number the article forgets to keep.
        Without it the codes cannot be turned back into weights.

    Formula
    -------
    :math:`a = \\max|w|`, :math:`x = w / a \\in [-1, 1]`,
    :math:`q = \\mathrm{round}(x \\cdot L)`, :math:`\\hat w = q \\cdot a / L`.
    This is symmetric per-tensor quantization with scale :math:`s = a / L` and
    zero point 0 — ``refquant.quantize(w, a / L, dtype=...)`` gives the same
    codes up to the rounding of the quotient (it divides once, by s, instead of
    dividing by a and multiplying by L; with ``precision="float64"`` both are
    the correctly rounded value of w·L/a except at rare double-rounding cases,
    so the two are compared on data in the tests).

    What the article leaves out, and what its snippet gets wrong:

    * the normaliser ``a`` (and ``L``) must be stored with the codes, or
      dequantization is impossible — the snippet overwrites the weights with
      ``round(x·10)`` and keeps nothing, so the layer's outputs are scaled by an
      unknown factor;
    * the snippet normalises with ``(p - mean) / std``, which does not map into
      [-1, 1] (values beyond one standard deviation exceed 1) and shifts by the
      mean, which would then need a zero point;
    * ``torch.mean(model.parameters())`` passes a generator to ``torch.mean``
      and raises ``TypeError``; the snippet never runs;
    * no clamp is needed only because |x| <= 1 after dividing by max|w|.

    Reference
    ---------
    The founding article, §3.1.1 and §4.1; symmetric quantization as in
    Jacob et al., CVPR 2018 (zero point 0).
    """
    levels = _levels(levels)
    try:
        wa = np.asarray(w, dtype=np.float64)
    except (TypeError, ValueError):
        raise RefquantError("w must be a rectangular array of real numbers") from None
    if not np.isfinite(wa).all():
        raise RefquantError("w must be finite (found NaN or Inf)")
    a = float(np.max(np.abs(wa))) if wa.size else 0.0
    if a == 0.0:
        return np.zeros(wa.shape, dtype=np.int64), 0.0
    x = wa / a
    q = round_to_int(x * levels, rounding).astype(np.int64)
    return q, a


def article_integer_dequantize(q, a, levels=127) -> np.ndarray:
    """Rescale the article's codes back to weights (float32).

    Formula
    -------
    :math:`\\hat w = q \\cdot a / L`, evaluated as :func:`refquant.dequantize` with
    scale :math:`a / L` (exact product, one rounding).

    Reference
    ---------
    The founding article, §3.1.1 step 3 ("rescale").
    """
    levels = _levels(levels)
    try:
        a = float(a)
        qa = np.asarray(q)
        qf = qa.astype(np.float64)
    except (TypeError, ValueError):
        raise RefquantError("q must be integer codes and a a real number") from None
    if qa.dtype.kind not in "iub" and not (np.isfinite(qf).all() and (qf == np.round(qf)).all()):
        raise RefquantError(f"q must hold integer codes, got non-integral values of dtype {qa.dtype}")
    if a == 0:
        return np.zeros(qa.shape, dtype=np.float32)
    return dequantize(qa.astype(np.int64), np.float64(a) / levels)


def _levels(levels) -> int:
    """``levels`` as an int in [1, 2^62] (integral floats accepted); RefquantError otherwise."""
    if isinstance(levels, bool):
        raise RefquantError(f"levels must be a positive integer, got {levels!r}")
    try:
        v = operator.index(levels)
    except TypeError:
        try:
            f = float(levels)
        except (TypeError, ValueError):
            raise RefquantError(f"levels must be a positive integer, got {levels!r}") from None
        if not (math.isfinite(f) and f == int(f)):
            raise RefquantError(f"levels must be a positive integer, got {levels!r}") from None
        v = int(f)
    if not 1 <= v <= 2**62:
        raise RefquantError(f"levels must be a positive integer <= 2^62, got {levels!r}")
    return v

