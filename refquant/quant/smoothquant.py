"""SmoothQuant: migrate activation outliers into the weights (Xiao et al. 2023).

For a linear layer ``y = x W^T`` (``W`` of shape ``(out, in)``), the per-input-
channel factor ``s`` divides the activations and multiplies the weight columns,
``y = (x / s)(W s)^T``, so channels with large activations become easier to
quantize at the cost of the weights. ``1/s`` is folded into the operation that
produces ``x`` (:func:`fold_smoothing`).

Formula (``statistic="paper"``, the authors' ``smooth_lm``)::

    s_j = clamp(max|X_j| ** alpha / clamp(max|W_j|, 1e-5) ** (1 - alpha), min=1e-5)

``statistic="llmcompressor"`` (llmcompressor 0.14 ``SmoothQuantModifier``) departs:
the activation statistic is the channel's dynamic range ``max X_j - min X_j``,
the weight statistic is ``2 max|W_j|`` (unclamped; where it is 0, ``s_j`` is the
activation range), and the result is clamped to ``>= 1e-5``.

:func:`smoothquant` searches ``alpha`` on a grid for the smallest output MSE of
the W8A8 layer: weights int8 symmetric per output row, activations int8
symmetric per tensor with the static scale ``max|X / s| / 127`` taken from the
calibration statistics; rounding half to even.

References
----------
Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization for
Large Language Models", ICML 2023 (arXiv:2211.10438), eq. (4).
mit-han-lab/smoothquant ``smoothquant/smooth.py`` (``smooth_ln_fcs``: weight
maxima ``clamp(min=1e-5)``, scales ``clamp(min=1e-5)``).
llmcompressor 0.14 ``modifiers/transform/smoothquant/base.py``
(``_calculate_smoothing_scales``, ``MINIMUM_SMOOTHING_SCALE = 1e-5``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._errors import RefquantError
from .awq import _batches, _check_batch, _check_weight

__all__ = [
    "ActivationRangeAccumulator",
    "SmoothQuantResult",
    "smoothing_scales",
    "fold_smoothing",
    "smoothquant",
]

_MIN = 1e-5


class ActivationRangeAccumulator:
    """Running per-input-channel minimum and maximum of ``x``, fed batch by batch.

    Formula
    -------
    ``min_j = min_k x_kj``, ``max_j = max_k x_kj`` over every row seen;
    ``absmax = max(|min|, |max|)`` (the paper's ``max|X_j|``) and
    ``range = max - min`` (llmcompressor's statistic).

    Reference
    ---------
    llmcompressor 0.14 ``SmoothQuantModifier`` hooks (running ``torch.minimum`` /
    ``torch.maximum`` per channel); mit-han-lab ``get_act_scales`` (running max of
    ``|x|``).
    """

    def __init__(self, in_features):
        if isinstance(in_features, bool) or not isinstance(in_features, (int, np.integer)) \
                or in_features <= 0:
            raise RefquantError(f"in_features must be a positive int, got {in_features!r}")
        self.in_features = int(in_features)
        self.min = np.full(self.in_features, np.inf)
        self.max = np.full(self.in_features, -np.inf)
        self.count = 0

    def update(self, x) -> None:
        a = _check_batch(x, self.in_features)
        if a.shape[0]:
            np.minimum(self.min, a.min(axis=0), out=self.min)
            np.maximum(self.max, a.max(axis=0), out=self.max)
        self.count += a.shape[0]

    def _check(self):
        if self.count == 0:
            raise RefquantError("ActivationRangeAccumulator has seen no rows; call update first")

    @property
    def absmax(self) -> np.ndarray:
        self._check()
        return np.maximum(np.abs(self.min), np.abs(self.max))

    @property
    def range(self) -> np.ndarray:
        self._check()
        return self.max - self.min


def _check_alpha(alpha, name="alpha"):
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise RefquantError(f"{name} must be a float in [0, 1], got {alpha!r}") from None
    if not 0.0 <= a <= 1.0:
        raise RefquantError(f"{name} must be a float in [0, 1], got {alpha!r}")
    return a


def _pow32(a, e):
    """torch's float32 ``pow(tensor, scalar)``: exponents 0, 1, 2 exactly, others as a
    float64 ``pow`` with the exponent rounded to float32, rounded once. torch 2.13's
    CPU float32 ``pow`` (1 ulp; at 0.5 it is ``torch.sqrt``, which is not correctly rounded
    either) differs from it by one ulp
    on 1-15 % of inputs (measured: 15 % at 0.5, 2 % at 0.8, 1 % at 0.35)."""
    if e == 0:
        return np.ones_like(a)
    if e == 1:
        return a.copy()
    if e == 2:
        return a * a
    return np.power(a.astype(np.float64), float(np.float32(e))).astype(np.float32)


def _scales_float32(a, wmax, alpha):
    """llmcompressor 0.14's float32 arithmetic (``_calculate_smoothing_scales``)."""
    a = a.astype(np.float32)
    wstat = np.float32(2.0) * wmax.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = _pow32(a, alpha) / _pow32(wstat, 1 - alpha)
    s = np.where(wstat > np.float32(0), s, a)
    return np.maximum(s, np.float32(_MIN))


def smoothing_scales(act_stat, weight, alpha=0.5, *, statistic="paper", precision="float64"):
    """Per-input-channel smoothing factors ``s`` (see the module docstring).

    Parameters
    ----------
    act_stat : array_like (in,)
        ``max|X_j|`` (``statistic="paper"``) or ``max X_j - min X_j``
        (``statistic="llmcompressor"``), from :class:`ActivationRangeAccumulator`.
    weight : array_like (out, in), or a list of them (layers sharing the input:
        the column maxima are taken over all of them)
    alpha : float in [0, 1]
        Migration strength.
    statistic : {"paper", "llmcompressor"}
    precision : {"float64", "float32"}
        ``"float32"`` (with ``statistic="llmcompressor"`` only) follows
        llmcompressor's float32 arithmetic: ``2 max|W|``, ``pow`` with torch's
        special exponents (0.5 is ``sqrt``) and one rounding otherwise, the
        quotient, ``where``, ``maximum(s, float32(1e-5))``; within 4 ulp of
        llmcompressor 0.14 (torch's ``pow`` rounds differently by one ulp on a few
        per cent of values; tests/peers).

    Returns
    -------
    ndarray (in,), float64 (or float32)

    Formula
    -------
    paper: ``clamp(a**alpha / clamp(max|W_j|, 1e-5)**(1-alpha), 1e-5)``;
    llmcompressor: ``w = 2 max|W_j|``, ``where(w > 0, a**alpha / w**(1-alpha), a)``,
    clamped to ``>= 1e-5``.

    Reference
    ---------
    Xiao et al. 2023 eq. (4); mit-han-lab ``smooth_ln_fcs``; llmcompressor 0.14
    ``SmoothQuantModifier._calculate_smoothing_scales`` and ``_apply_smoothing``.
    """
    ws = weight if isinstance(weight, (list, tuple)) else [weight]
    if not ws:
        raise RefquantError("weight must be a matrix or a non-empty list of matrices")
    ws = [_check_weight(w) for w in ws]
    width = ws[0].shape[1]
    if any(w.shape[1] != width for w in ws):
        raise RefquantError(f"weight matrices must share in_features, got "
                            f"{[w.shape for w in ws]}")
    a = np.asarray(act_stat, dtype=np.float64)
    if a.shape != (width,) or not np.all(np.isfinite(a)) or np.any(a < 0):
        raise RefquantError(f"act_stat must be finite and >= 0 with shape ({width},), got "
                            f"shape {a.shape}")
    alpha = _check_alpha(alpha)
    wmax = np.max([np.abs(w).max(axis=0) for w in ws], axis=0)
    if precision == "float32":
        if statistic != "llmcompressor":
            raise RefquantError("precision='float32' follows llmcompressor: use "
                                "statistic='llmcompressor'")
        # rounding is monotonic: float32(max|W|) = max|float32(W)|
        return _scales_float32(np.asarray(act_stat).astype(np.float32),
                               wmax.astype(np.float32), alpha)
    if precision != "float64":
        raise RefquantError(f"precision must be 'float64' or 'float32', got {precision!r}")
    if statistic == "paper":
        s = a ** alpha / np.maximum(wmax, _MIN) ** (1 - alpha)
    elif statistic == "llmcompressor":
        wstat = 2.0 * wmax
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.where(wstat > 0, a ** alpha / wstat ** (1 - alpha), a)
    else:
        raise RefquantError(f"statistic must be 'paper' or 'llmcompressor', got {statistic!r}")
    return np.maximum(s, _MIN)


def fold_smoothing(scales, prev_weight, prev_bias=None):
    """Divide the previous operation's output channels by ``s``.

    ``prev_weight`` is a linear layer's ``(in, k)`` weight (its rows are divided)
    or a norm's ``(in,)`` weight; ``prev_bias`` (``(in,)``) is divided too. Returns
    ``(weight, bias)`` (``bias`` None when none was given). Then the previous
    operation outputs ``x / s`` (for a norm or a linear layer followed directly by
    the smoothed layer; not through a nonlinearity other than positive-homogeneous ones
    such as ReLU with ``s > 0``).
    """
    s = np.asarray(scales, dtype=np.float64)
    if s.ndim != 1 or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise RefquantError(f"scales must be a 1-D array of finite positive values, got {s!r}")
    w = np.asarray(prev_weight, dtype=np.float64)
    if w.ndim not in (1, 2) or w.shape[0] != s.size:
        raise RefquantError(f"prev_weight must have shape ({s.size},) or ({s.size}, k), got "
                            f"{w.shape}")
    w = w / s if w.ndim == 1 else w / s[:, None]
    b = None
    if prev_bias is not None:
        b = np.asarray(prev_bias, dtype=np.float64)
        if b.shape != s.shape:
            raise RefquantError(f"prev_bias must have shape ({s.size},), got {b.shape}")
        b = b / s
    return w, b


def _int8_sym(v, scale):
    return np.clip(np.round(v / scale), -127, 127) * scale


@dataclass(frozen=True)
class SmoothQuantResult:
    """What :func:`smoothquant` returns: ``scales`` (``s``, to fold with
    :func:`fold_smoothing`), the chosen ``alpha`` and its ``loss`` (the grid's
    minimum), the grid ``alphas`` and ``losses``, and ``weight_smoothed = W diag(s)``."""

    scales: np.ndarray
    alpha: float
    loss: float
    alphas: np.ndarray
    losses: np.ndarray
    weight_smoothed: np.ndarray


def smoothquant(weight, x, *, alphas=None, statistic="paper") -> SmoothQuantResult:
    """Search SmoothQuant's ``alpha`` for one linear layer on its calibration input.

    Parameters
    ----------
    weight : array_like (out, in)
    x : array_like (..., in), or a sequence of batches (read once for the
        statistics, then once per grid point)
    alphas : array_like, optional
        The grid; default ``{0, 0.05, ..., 1}``.
    statistic : {"paper", "llmcompressor"}
        See :func:`smoothing_scales`.

    Returns
    -------
    SmoothQuantResult

    Formula
    -------
    ``loss(a) = mean((x W^T - Qa(x / s) Qw(W s)^T)**2)``: ``Qw`` int8 symmetric per
    output row (scale ``max|row| / 127``), ``Qa`` int8 symmetric per tensor with
    the static scale ``max_j(absmax_j / s_j) / 127``; both round half to even and
    clip to ``[-127, 127]``. ``alpha = argmin loss`` (first minimum).

    Reference
    ---------
    Xiao et al. 2023, section 4 and the alpha sweep of fig. 10 (the paper picks
    alpha by hand per model; the search is ours, on the layer's output error).
    """
    w = _check_weight(weight)
    batches = _batches(x, w.shape[1])
    acc = ActivationRangeAccumulator(w.shape[1])
    for b in batches:
        acc.update(b)
    grid = np.arange(21) / 20 if alphas is None else np.asarray(alphas, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0:
        raise RefquantError(f"alphas must be a non-empty 1-D grid, got {alphas!r}")
    for a in grid:
        _check_alpha(a, "alphas")
    stat = acc.absmax if statistic == "paper" else acc.range
    absmax = acc.absmax
    losses = np.empty(grid.size)
    for i, a in enumerate(grid):
        s = smoothing_scales(stat, w, a, statistic=statistic)
        ws = w * s
        wscale = np.maximum(np.abs(ws).max(axis=1, keepdims=True), _MIN) / 127
        wq = _int8_sym(ws, wscale)
        xscale = max(float(np.max(absmax / s)), _MIN) / 127
        total, n = 0.0, 0
        for b in batches:
            e = b @ w.T - _int8_sym(b / s, xscale) @ wq.T
            total += float(np.sum(e * e))
            n += e.size
        losses[i] = total / n
    best = int(np.argmin(losses))
    s = smoothing_scales(stat, w, grid[best], statistic=statistic)
    return SmoothQuantResult(scales=s, alpha=float(grid[best]), loss=float(losses[best]),
                             alphas=grid, losses=losses, weight_smoothed=w * s)
