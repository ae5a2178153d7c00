"""AWQ: activation-aware weight quantization (Lin et al. 2023).

A linear layer ``y = x W^T`` (``W`` of shape ``(out, in)``) is quantized as
``W' = Q(W diag(s)) diag(s)^{-1}``: input channels that see large activations
are scaled up before round-to-nearest so that their relative rounding error
shrinks, and ``1/s`` is folded into the operation that produces ``x`` (the
previous linear layer's rows or a norm's weight), so at run time the layer
computes ``(x / s) Q(W s)^T``.

Steps of :func:`awq`:

1. ``x_mean[j] = mean |x_j|`` over every calibration row, streamed batch by
   batch by :class:`ActivationMeanAccumulator`;
2. for each ``alpha`` of the grid ``{0, 1/n_grid, ..., (n_grid-1)/n_grid}``
   (``{0, 0.05, ..., 0.95}`` for ``n_grid=20``)::

       s = clamp(x_mean ** alpha, min=1e-4)
       s = s / sqrt(max(s) * min(s))
       loss(alpha) = mean((x W^T - x (Q(W s) / s)^T) ** 2)

3. the ``alpha`` with the smallest loss wins (the first one on ties).

``Q`` is :func:`awq_pseudo_quantize`: asymmetric min-max round-to-nearest per
group of ``group_size`` input channels, as AutoAWQ's ``pseudo_quantize_tensor``.

References
----------
Lin et al., "AWQ: Activation-aware Weight Quantization for LLM Compression and
Acceleration", MLSys 2024 (arXiv:2306.00978), section 3.

AutoAWQ 0.2 ``awq/quantize/quantizer.py``: ``AwqQuantizer._search_best_scale``
(grid ``ratio = i / n_grid`` for ``i in range(20)``, ``x_max.pow(ratio).clamp(min=1e-4)``,
normalised by ``(max * min).sqrt()``, loss ``(org_out - out).float().pow(2).mean()``)
and ``pseudo_quantize_tensor`` (below). With ``duo_scaling=True`` (AutoAWQ's and
llmcompressor's default) ``s = clamp(x_mean**a / (w_mean**(1-a) + 1e-4), 1e-4)``
where ``w_mean`` is the mean over output rows of ``|W|`` normalised by each
group's max ``|W|``; the paper's formula is ``duo_scaling=False``, our default.

Where llmcompressor 0.14 (``modifiers/transform/awq/base.py``,
``AWQModifier._compute_best_scale``) departs from the paper and AutoAWQ:

* its grid is ``i / (n_grid - 1)`` for ``i in range(n_grid)``: ``{0, 1/19, ..., 1}``,
  which includes ``alpha = 1`` (``grid="llmcompressor"`` here);
* ``duo_scaling`` defaults to ``True`` (and may be ``"both"``);
* ``Inf`` / ``NaN`` scales after normalisation are set to 1;
* ``Q`` is compressed-tensors' min-max observer, whose range always contains 0
  (``min(lo, 0)``, ``max(hi, 0)``) and whose rounding is ``torch.round`` of
  ``x / scale + zp`` after clamping, not AutoAWQ's ``round(x / scale) + zeros``;
* it has no clipping search (AutoAWQ's ``_search_best_clip``, here
  :func:`awq_clip_search` and ``awq(..., clip=True)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._errors import RefquantError

__all__ = [
    "ActivationMeanAccumulator",
    "AWQResult",
    "awq",
    "awq_pseudo_quantize",
    "awq_grid",
    "awq_clip_search",
    "AWQ_BITS",
]

AWQ_BITS = (2, 3, 4, 5, 6, 7, 8)
_MIN_SCALE = 1e-4


def _check_bits(bits):
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits not in AWQ_BITS:
        raise RefquantError(f"bits must be one of {AWQ_BITS}, got {bits!r}")
    return int(bits)


def _check_group_size(group_size, width):
    if group_size is None or group_size == -1:
        return width
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) \
            or group_size <= 0:
        raise RefquantError(f"group_size must be a positive int or -1, got {group_size!r}")
    return int(group_size)


def _check_weight(weight):
    """GPTQ's weight check (a finite, non-empty 2-D real matrix), as float64."""
    from .gptq import _check_weight as checked

    return checked(weight).astype(np.float64)


def _check_batch(x, width, name="x"):
    a = np.asarray(x)
    if a.dtype.kind not in "biuf" or a.ndim < 1 or a.shape[-1] != width:
        raise RefquantError(
            f"{name} must be a real array of shape (..., {width}), got shape {a.shape} "
            f"dtype {a.dtype}"
        )
    a = a.reshape(-1, width).astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise RefquantError(f"{name} contains NaN or Inf; expected finite activations")
    return a


def _batches(x, width):
    """``x`` as a list of (rows, width) float64 batches: one array or a sequence of them."""
    if isinstance(x, np.ndarray) or np.isscalar(x):
        out = [_check_batch(x, width)]
    else:
        try:
            out = [_check_batch(b, width, name=f"x[{i}]") for i, b in enumerate(x)]
        except TypeError:
            raise RefquantError(f"x must be an array or a sequence of arrays, got {x!r}") from None
    if not out or sum(b.shape[0] for b in out) == 0:
        raise RefquantError("x holds no calibration rows; expected at least one")
    return out


# --------------------------------------------------------------------------- statistic
class ActivationMeanAccumulator:
    """Running per-input-channel mean of ``|x|``, fed batch by batch.

    Formula
    -------
    After batches holding ``n`` rows in all, ``mean[j] = (1/n) sum_k |x_kj|``
    (every leading axis of a batch counts as rows). Only the ``(in,)`` sum and
    the row count are held, so calibration data larger than memory can be
    streamed.

    Reference
    ---------
    llmcompressor 0.14 ``AWQModifier`` (``cache_smooth_activations_hook``: a sum of
    ``|x|`` and a count per channel, divided at the end); AutoAWQ ``get_act_scale``
    (``x.abs().view(-1, x.shape[-1]).mean(0)`` on one batch).
    """

    def __init__(self, in_features):
        if isinstance(in_features, bool) or not isinstance(in_features, (int, np.integer)) \
                or in_features <= 0:
            raise RefquantError(f"in_features must be a positive int, got {in_features!r}")
        self.in_features = int(in_features)
        self._sum = np.zeros(self.in_features, np.float64)
        self.count = 0

    def update(self, x) -> None:
        a = _check_batch(x, self.in_features)
        self._sum += np.abs(a).sum(axis=0)
        self.count += a.shape[0]

    @property
    def mean(self) -> np.ndarray:
        if self.count == 0:
            raise RefquantError("ActivationMeanAccumulator has seen no rows; call update first")
        return self._sum / self.count


# --------------------------------------------------------------------------- Q
def awq_pseudo_quantize(weight, *, bits=4, group_size=128, zero_point=True):
    """Fake-quantize ``weight`` (out, in) per group of input channels, as AutoAWQ does.

    Parameters
    ----------
    weight : array_like, shape (out, in)
    bits : int
        2 to 8.
    group_size : int
        Channels per group along ``in``; -1 or None for one group per row. When it
        does not divide ``in`` the last group is partial (AutoAWQ requires it to
        divide; its qparams come from the columns it has).
    zero_point : bool
        Asymmetric (the AWQ default) or symmetric (``max|w| / (2**(bits-1) - 1)``).

    Returns
    -------
    ndarray, float64, shape (out, in)

    Formula
    -------
    Asymmetric, per group::

        scale = max(max(w) - min(w), 1e-5) / (2**bits - 1)
        zero  = clip(-round(min(w) / scale), 0, 2**bits - 1)
        w'    = (clip(round(w / scale) + zero, 0, 2**bits - 1) - zero) * scale

    Symmetric: ``scale = max(max|w|, 1e-5) / (2**(bits-1) - 1)``,
    ``w' = clip(round(w / scale), -2**(bits-1), 2**(bits-1) - 1) * scale``.

    Reference
    ---------
    AutoAWQ 0.2 ``AwqQuantizer.pseudo_quantize_tensor``. ``round`` is half to
    even (``torch.round``, ``np.round``). The range does not have to contain 0
    (unlike compressed-tensors' observer).
    """
    w = _check_weight(weight)
    bits = _check_bits(bits)
    g = _check_group_size(group_size, w.shape[1])
    out = np.empty_like(w)
    for c0 in range(0, w.shape[1], g):
        blk = w[:, c0:c0 + g]
        if zero_point:
            hi = blk.max(axis=1, keepdims=True)
            lo = blk.min(axis=1, keepdims=True)
            qmax = 2 ** bits - 1
            scale = np.maximum(hi - lo, 1e-5) / qmax
            zero = np.clip(-np.round(lo / scale), 0, qmax)
            out[:, c0:c0 + g] = (np.clip(np.round(blk / scale) + zero, 0, qmax) - zero) * scale
        else:
            qmax = 2 ** (bits - 1) - 1
            scale = np.maximum(np.abs(blk).max(axis=1, keepdims=True), 1e-5) / qmax
            out[:, c0:c0 + g] = np.clip(np.round(blk / scale), -qmax - 1, qmax) * scale
    return out


def awq_grid(n_grid=20, *, grid="autoawq"):
    """The ``alpha`` values searched: ``i / n_grid`` (AutoAWQ, the paper) for
    ``i < n_grid``, or ``i / (n_grid - 1)`` (llmcompressor 0.14, ends at 1)."""
    if isinstance(n_grid, bool) or not isinstance(n_grid, (int, np.integer)) or n_grid < 1:
        raise RefquantError(f"n_grid must be a positive int, got {n_grid!r}")
    if grid == "autoawq":
        return np.arange(n_grid, dtype=np.float64) / n_grid
    if grid == "llmcompressor":
        if n_grid < 2:
            raise RefquantError(f"n_grid must be >= 2 for grid='llmcompressor', got {n_grid}")
        return np.arange(n_grid, dtype=np.float64) / (n_grid - 1)
    raise RefquantError(f"grid must be 'autoawq' or 'llmcompressor', got {grid!r}")


def _w_mean(w, g):
    """AutoAWQ's ``w_mean``: |W| over each group's max |W|, averaged over rows."""
    wn = np.empty_like(w)
    for c0 in range(0, w.shape[1], g):
        blk = np.abs(w[:, c0:c0 + g])
        wn[:, c0:c0 + g] = blk / (blk.max(axis=1, keepdims=True) + 1e-6)
    return wn.mean(axis=0)


def _scales(x_mean, w_mean, alpha):
    if w_mean is None:
        s = np.maximum(x_mean ** alpha, _MIN_SCALE)
    else:
        s = np.maximum(x_mean ** alpha / (w_mean ** (1 - alpha) + 1e-4), _MIN_SCALE)
    s = s / math.sqrt(s.max() * s.min())
    s[~np.isfinite(s)] = 1.0
    return s


@dataclass(frozen=True)
class AWQResult:
    """What :func:`awq` returns.

    Attributes
    ----------
    scales : ndarray (in,)
        ``s``: multiply ``W``'s columns by it and divide the previous operation's
        output channels (its weight rows and bias, or a norm's weight) by it.
    alpha : float
        The chosen grid point.
    loss : float
        Its output MSE, ``losses[alphas == alpha]`` (the grid's minimum).
    alphas, losses : ndarray
        The grid and the loss at every point.
    weight_scaled : ndarray (out, in)
        ``W diag(s)``, the folded weights.
    weight_quantized : ndarray (out, in)
        ``Q(W diag(s))``, the quantized folded weights (used with ``x / s``);
        with ``clip=True`` ``Q(clip(W diag(s), -clip_max, clip_max))``.
    clip_max : ndarray (out, n_groups) or None
        The clipping search's threshold per row and group (``clip=True``).
    """

    scales: np.ndarray
    alpha: float
    loss: float
    alphas: np.ndarray
    losses: np.ndarray
    weight_scaled: np.ndarray
    weight_quantized: np.ndarray
    clip_max: np.ndarray | None = None

    @property
    def weight_effective(self) -> np.ndarray:
        """``Q(W diag(s)) diag(s)^{-1}``: the weights seen by the unscaled input."""
        return self.weight_quantized / self.scales


def _output_mse(batches, w, w_hat):
    d = (w - w_hat).T
    total = 0.0
    n = 0
    for b in batches:
        e = b @ d
        total += float(np.sum(e * e))
        n += e.size
    return total / n


def awq(weight, x, *, bits=4, group_size=128, zero_point=True, n_grid=20, grid="autoawq",
        duo_scaling=False, clip=False) -> AWQResult:
    """Search AWQ's per-input-channel scales for one linear layer and quantize it.

    Parameters
    ----------
    weight : array_like, shape (out, in)
    x : array_like (..., in), or a sequence of such batches
        The layer's calibration input. Batches are read twice: once for the
        ``mean |x|`` statistic, and once per grid point for the loss (nothing
        larger than one batch times ``out`` is held).
    bits, group_size, zero_point
        ``Q``, see :func:`awq_pseudo_quantize` (asymmetric int4, group 128 by default).
    n_grid, grid
        The ``alpha`` grid, see :func:`awq_grid`.
    duo_scaling : bool
        ``False``: the paper's ``s = x_mean**alpha``; ``True``: AutoAWQ's and
        llmcompressor's default, divided by ``w_mean**(1 - alpha) + 1e-4``.
    clip : bool
        After the scale search, run :func:`awq_clip_search` on ``W s`` with the
        input ``x / s`` (AutoAWQ's order) and quantize the clipped weights.
        ``loss`` and ``losses`` stay the scale search's (unclipped).

    Returns
    -------
    AWQResult

    Formula
    -------
    ``s(a) = clamp(x_mean**a, 1e-4) / sqrt(max * min)``;
    ``loss(a) = mean((x W^T - x (Q(W s) / s)^T)**2)`` over rows and outputs (the
    bias cancels); ``alpha = argmin loss`` (first minimum). At ``a = 0`` ``s = 1``
    and ``W' = Q(W)``, plain round-to-nearest, so the chosen loss is never above RTN's
    (on the grid starting at 0).

    Reference
    ---------
    Lin et al. 2023, section 3.2 (the search). AutoAWQ 0.2
    ``AwqQuantizer._search_best_scale``; llmcompressor 0.14
    ``AWQModifier._compute_best_scale`` (its departures: module docstring).
    Computed in float64 (the peers run the layer's dtype).
    """
    w = _check_weight(weight)
    bits = _check_bits(bits)
    g = _check_group_size(group_size, w.shape[1])
    alphas = awq_grid(n_grid, grid=grid)
    batches = _batches(x, w.shape[1])
    acc = ActivationMeanAccumulator(w.shape[1])
    for b in batches:
        acc.update(b)
    x_mean = acc.mean
    w_mean = _w_mean(w, g) if duo_scaling else None

    losses = np.empty(alphas.size)
    for i, a in enumerate(alphas):
        s = _scales(x_mean, w_mean, a)
        wq = awq_pseudo_quantize(w * s, bits=bits, group_size=g, zero_point=zero_point)
        losses[i] = _output_mse(batches, w, wq / s)
    if not np.any(np.isfinite(losses)):
        raise RefquantError("no finite loss on the alpha grid; check x and weight")
    best = int(np.nanargmin(losses))
    s = _scales(x_mean, w_mean, alphas[best])
    ws = w * s
    clip_max = None
    wc = ws
    if clip:
        clip_max, wc = awq_clip_search(ws, [b / s for b in batches], bits=bits, group_size=g,
                                       zero_point=zero_point)
    return AWQResult(
        scales=s, alpha=float(alphas[best]), loss=float(losses[best]), alphas=alphas,
        losses=losses, weight_scaled=ws,
        weight_quantized=awq_pseudo_quantize(wc, bits=bits, group_size=g, zero_point=zero_point),
        clip_max=clip_max,
    )


def awq_clip_search(weight, x, *, bits=4, group_size=128, zero_point=True, n_grid=20,
                    max_shrink=0.5, n_sample_token=512):
    """AWQ's weight clipping search: a threshold per row and group of ``weight``.

    Parameters
    ----------
    weight : array_like (out, in)
        The (already scaled) weights.
    x : array_like (..., in), or a sequence of batches
        The layer's input (already divided by the scales). Only every
        ``step``-th row is kept, ``step = max(1, n_rows // n_sample_token)``
        counted over all batches, as AutoAWQ subsamples tokens.
    bits, group_size, zero_point
        ``Q``, see :func:`awq_pseudo_quantize`.
    n_grid, max_shrink
        Thresholds ``m0 * (1 - i / n_grid)`` for ``i < int(max_shrink * n_grid)``,
        ``m0 = max|w|`` of the group.

    Returns
    -------
    clip_max : ndarray (out, n_groups)
    clipped : ndarray (out, in)
        ``clip(weight, -clip_max, clip_max)`` group by group.

    Formula
    -------
    For each row ``r`` and group ``G``, with ``w_c = clip(w_rG, -m, m)``::

        err(m) = mean_k (x_kG . Q(w_c) - x_kG . w_rG) ** 2

    over the kept rows ``k``; ``m`` is the threshold with the smallest error, the
    larger one on ties (a later threshold must be strictly better, ``err < best``).
    ``Q`` quantizes the group alone (a partial last group is its own group).

    Reference
    ---------
    Lin et al. 2023 (the released code's clipping step); AutoAWQ 0.2
    ``AwqQuantizer._compute_best_clip`` and ``apply_clip``. AutoAWQ processes rows
    in batches of 64 or 256 and skips q/k projections; neither changes the result
    here, which treats all rows.
    """
    w = _check_weight(weight)
    bits = _check_bits(bits)
    g = _check_group_size(group_size, w.shape[1])
    if isinstance(n_grid, bool) or not isinstance(n_grid, (int, np.integer)) or n_grid < 1:
        raise RefquantError(f"n_grid must be a positive int, got {n_grid!r}")
    if not 0.0 < float(max_shrink) <= 1.0 or int(max_shrink * n_grid) < 1:
        raise RefquantError(f"max_shrink must be in (0, 1] with max_shrink * n_grid >= 1, got "
                            f"{max_shrink!r}")
    if isinstance(n_sample_token, bool) or not isinstance(n_sample_token, (int, np.integer)) \
            or n_sample_token < 1:
        raise RefquantError(f"n_sample_token must be a positive int, got {n_sample_token!r}")
    batches = _batches(x, w.shape[1])
    n = sum(b.shape[0] for b in batches)
    step = max(1, n // n_sample_token)
    kept, start = [], 0
    for b in batches:
        first = (-start) % step
        kept.append(b[first::step])
        start += b.shape[0]
    xs = np.concatenate(kept)
    n_groups = -(-w.shape[1] // g)
    clip_max = np.empty((w.shape[0], n_groups))
    clipped = np.empty_like(w)
    for gi in range(n_groups):
        cols = slice(gi * g, (gi + 1) * g)
        wg, xg = w[:, cols], xs[:, cols]
        org_out = xg @ wg.T
        m0 = np.abs(wg).max(axis=1)
        best_m = m0.copy()
        best_err = np.full(w.shape[0], 1e9)
        for i in range(int(max_shrink * n_grid)):
            m = m0 * (1 - i / n_grid)
            wc = np.clip(wg, -m[:, None], m[:, None])
            q = awq_pseudo_quantize(wc, bits=bits, group_size=-1, zero_point=zero_point)
            err = np.mean((xg @ q.T - org_out) ** 2, axis=0)
            better = err < best_err
            best_err[better] = err[better]
            best_m[better] = m[better]
        clip_max[:, gi] = best_m
        clipped[:, cols] = np.clip(wg, -best_m[:, None], best_m[:, None])
    return clip_max, clipped
