"""Binary and ternary quantization: one or two thresholds and a scale.

Binary codes are {-1, +1} (or {-1, 0, +1} when zero is kept as 0); ternary
codes are {-1, 0, +1}. Every function returns integer codes (int8) and, where
the method has one, the scale α with which ``α · codes`` approximates ``w``.

The founding article calls ``sign(x)·2^(sign(x)·floor(log2|x|))`` "binary
quantization"; that formula is a power-of-two quantizer with a sign error, see
:func:`refquant.quant.pow2.article_binary_formula`. The methods here are what
the literature means by binary and ternary weights.
"""

from __future__ import annotations

import numpy as np

from .._core.granularity import broadcasts_to, normalize_axis
from .._core.rounding import round_to_int
from .._errors import RefquantError

__all__ = [
    "binarize",
    "binarize_xnor",
    "binarize_stochastic",
    "ternarize_twn",
    "ternarize_absmean",
    "ternarize_threshold",
]

_ZERO = {"+1": 1, "0": 0, "-1": -1}


def _weights(w, name="w"):
    try:
        a = np.asarray(w)
    except (TypeError, ValueError):
        raise RefquantError(f"{name} must be a rectangular real array") from None
    if a.dtype.kind not in "fiu":
        raise RefquantError(f"{name} must be a real array, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if np.isnan(a).any():
        raise RefquantError(f"{name} contains NaN; binary and ternary codes have no NaN")
    return a


def _reduce_axes(a, axis):
    """Axes to average over: all (per tensor) or all but ``axis`` (per channel)."""
    if axis is None:
        return None
    ax = normalize_axis(axis, a.ndim)
    return tuple(i for i in range(a.ndim) if i != ax)


def _mean_abs(a, axis):
    red = _reduce_axes(a, axis)
    if a.size == 0:  # the keepdims shape np.mean would give, without its NaN and warning
        shape = () if axis is None else tuple(1 if i in red else n for i, n in enumerate(a.shape))
        return np.zeros(shape)
    return np.mean(np.abs(a), axis=red, keepdims=axis is not None)


def binarize(w, *, zero="+1") -> np.ndarray:
    """Sign binarization with a named convention for zero.

    Parameters
    ----------
    w : array_like of float
    zero : {"+1", "0", "-1"}
        Code of an exact zero (and of -0.0): ``"+1"`` as BinaryConnect and
        BinaryNet define sign (x >= 0 -> +1), ``"0"`` as ``torch.sign`` and
        XNOR-Net's reference code (sign(0) = 0, a third level), ``"-1"``.

    Returns
    -------
    int8 codes in {-1, +1} (or {-1, 0, +1} for ``zero="0"``).

    Formula
    -------
    :math:`b = +1` if :math:`w > 0`, :math:`-1` if :math:`w < 0`, ``zero`` if :math:`w = 0`.

    Reference
    ---------
    Courbariaux et al., "BinaryConnect", NeurIPS 2015, eq. (1);
    Hubara et al., "Binarized Neural Networks", NeurIPS 2016, eq. (1).
    """
    if not isinstance(zero, str) or zero not in _ZERO:
        raise RefquantError(f"zero must be one of '+1', '0', '-1'; got {zero!r}")
    a = _weights(w)
    return np.where(a > 0, 1, np.where(a < 0, -1, _ZERO[zero])).astype(np.int8)


def binarize_xnor(w, *, axis=0, zero="+1"):
    """XNOR-Net weight binarization: codes sign(W) and scale α = mean|W|.

    Parameters
    ----------
    w : array_like of float
        Weights, output channels along ``axis`` (PyTorch layout: axis 0).
    axis : int or None
        One α per index of ``axis`` (per output channel), or None for one α per tensor.
    zero : see :func:`binarize`.

    Returns
    -------
    codes : int8 array, shape of ``w``
    alpha : float64 array, broadcastable against ``w`` (keepdims) or scalar

    Formula
    -------
    :math:`\\alpha^* = \\frac{1}{n}\\lVert W \\rVert_{\\ell_1}`, :math:`B^* = \\mathrm{sign}(W)`:
    the minimiser of :math:`\\lVert W - \\alpha B \\rVert_2^2` over
    :math:`\\alpha \\ge 0, B \\in \\{\\pm 1\\}^n`.

    Reference
    ---------
    Rastegari et al., "XNOR-Net", ECCV 2016, §3.1, eq. (3)-(4).
    """
    a = _weights(w)
    return binarize(a, zero=zero), _mean_abs(a, axis)


def binarize_stochastic(w, *, seed=None, rng=None) -> np.ndarray:
    """BinaryConnect's stochastic binarization: +1 with probability hard_sigmoid(w).

    Formula
    -------
    :math:`P(b = +1) = \\sigma(w) = \\mathrm{clip}((w + 1)/2, 0, 1)`, else :math:`-1`.
    One uniform draw ``u`` per element in C order; ``b = +1`` iff ``u < σ(w)``.

    Reference
    ---------
    Courbariaux et al., "BinaryConnect", NeurIPS 2015, eq. (2)-(3).
    """
    a = _weights(w)
    gen = rng if rng is not None else np.random.default_rng(seed)
    if not isinstance(gen, np.random.Generator):
        raise RefquantError(f"rng must be a numpy.random.Generator, got {type(gen).__name__}")
    p = np.clip((a + 1.0) / 2.0, 0.0, 1.0)
    return np.where(gen.random(size=a.shape) < p, 1, -1).astype(np.int8)


def ternarize_threshold(w, threshold, alpha=None, *, axis=None):
    """Ternary codes with an explicit threshold Δ: sign(w) where |w| > Δ, else 0.

    ``alpha`` defaults to the mean of |w| over the kept weights (0 where none
    is kept). ``threshold`` is a scalar or, with ``axis``, one value per index
    of ``axis``.

    Returns
    -------
    codes : int8, alpha : float64 (keepdims per channel)

    Formula
    -------
    :math:`t_i = \\mathrm{sign}(w_i)\\,[|w_i| > \\Delta]`,
    :math:`\\alpha = \\frac{1}{|I_\\Delta|}\\sum_{i \\in I_\\Delta} |w_i|`. A weight exactly at
    the threshold goes to 0 (strict inequality).

    Reference
    ---------
    Li, Zhang & Liu, "Ternary Weight Networks", 2016, eq. (3) and (5).
    """
    a = _weights(w)
    try:
        t = np.asarray(threshold, dtype=np.float64)
    except (TypeError, ValueError):
        raise RefquantError(f"threshold must be a real number or array, got {threshold!r}") from None
    if axis is not None and t.ndim == 1:
        ax = normalize_axis(axis, a.ndim)
        shape = [1] * a.ndim
        shape[ax] = -1
        t = t.reshape(shape)
    if not broadcasts_to(t.shape, a.shape):
        raise RefquantError(
            f"threshold of shape {np.shape(threshold)} does not fit weights of shape {a.shape}"
            + ("" if axis is None else f" along axis {axis}")
        )
    if np.any(~np.isfinite(t)) or np.any(t < 0):
        raise RefquantError(f"threshold must be finite and >= 0, got {threshold!r}")
    keep = np.abs(a) > t
    codes = (np.sign(a) * keep).astype(np.int8)
    if alpha is None:
        red = _reduce_axes(a, axis)
        n = np.sum(keep, axis=red, keepdims=axis is not None)
        s = np.sum(np.abs(a) * keep, axis=red, keepdims=axis is not None)
        alpha = np.divide(s, n, out=np.zeros(np.shape(s)), where=n > 0)
    try:
        alpha = np.asarray(alpha, dtype=np.float64)
    except (TypeError, ValueError):
        raise RefquantError(f"alpha must be a real number or array, got {alpha!r}") from None
    return codes, alpha


def ternarize_twn(w, *, axis=None, delta_factor=0.7):
    """Ternary Weight Networks: Δ = 0.7·mean|W|, α = mean of |W| above Δ.

    Returns
    -------
    codes : int8 in {-1, 0, +1}
    alpha : float64 (0 where no weight exceeds Δ: all-zero or all-equal-to-zero
        groups quantize to zero instead of dividing by zero)
    delta : float64

    Formula
    -------
    :math:`\\Delta^* \\approx 0.7\\,E|W|`, :math:`I_\\Delta = \\{i : |W_i| > \\Delta\\}`,
    :math:`\\alpha^* = \\frac{1}{|I_\\Delta|}\\sum_{i \\in I_\\Delta} |W_i|`.

    Reference
    ---------
    Li, Zhang & Liu, "Ternary Weight Networks", 2016, eq. (5)-(7).
    """
    a = _weights(w)
    try:
        delta_ok = float(delta_factor) >= 0
    except (TypeError, ValueError):
        delta_ok = False
    if not delta_ok:
        raise RefquantError(f"delta_factor must be a number >= 0, got {delta_factor!r}")
    delta = float(delta_factor) * _mean_abs(a, axis)
    codes, alpha = ternarize_threshold(a, delta, axis=None)
    if axis is not None:
        red = _reduce_axes(a, axis)
        keep = codes != 0
        n = np.sum(keep, axis=red, keepdims=True)
        s = np.sum(np.abs(a) * keep, axis=red, keepdims=True)
        alpha = np.divide(s, n, out=np.zeros(np.shape(s)), where=n > 0)
    return codes, alpha, delta


def ternarize_absmean(w, *, eps=1e-5, eps_rule="add", rounding="half_even"):
    """BitNet b1.58's absmean ternarization: RoundClip(W / (γ + ε), -1, 1), γ = mean|W|.

    Parameters
    ----------
    eps_rule : {"add", "clamp"}
        ``"add"``: divide by γ + ε, as the paper writes it; ``"clamp"``:
        multiply by the reciprocal 1 / max(γ, ε), as the authors' released
        training code does (``s = 1.0 / w.abs().mean().clamp_(min=1e-5)``,
        ``(w * s).round()``; near a tie the product and the quotient can round
        apart: w = [0.4, -0.6, 0.2] gives 0.2·(1/γ) = 0.5 -> 0, 0.2/γ -> 1).
        γ is the float64 mean of |W| (NumPy's pairwise sum); the released
        code's float32 ``mean`` sums in PyTorch's order, which can differ in
        the last bit.
    rounding : str
        Rounding of W / γ (PyTorch's ``round``: half to even).

    Returns
    -------
    codes : int8 in {-1, 0, +1}
    gamma : float (the scale: W ≈ gamma · codes)

    Reference
    ---------
    Ma et al., "The Era of 1-bit LLMs", 2024, eq. (1)-(3).
    """
    if eps_rule not in ("add", "clamp"):
        raise RefquantError(f"eps_rule must be 'add' or 'clamp'; got {eps_rule!r}")
    try:
        eps_ok = float(eps) > 0
    except (TypeError, ValueError):
        eps_ok = False
    if not eps_ok:
        raise RefquantError(f"eps must be a number > 0, got {eps!r}")
    a = _weights(w)
    if np.isinf(a).any():
        raise RefquantError("w contains Inf: gamma = mean|W| would be Inf and W / gamma NaN")
    eps = float(eps)
    gamma = float(np.mean(np.abs(a))) if a.size else 0.0
    if eps_rule == "add":
        denom = gamma + eps
        scaled = a / denom
    else:  # the released code: s = 1 / mean.clamp(min=eps); (w * s).round()
        denom = max(gamma, eps)
        scaled = a * (1.0 / denom)
    codes = np.clip(round_to_int(scaled, rounding), -1, 1).astype(np.int8)
    return codes, denom
