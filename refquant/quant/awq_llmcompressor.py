"""AWQ's scale search as llmcompressor 0.14 runs it, in its float32 / float64 arithmetic.

:func:`refquant.quant.awq.awq` is the float64 reference of the paper and
AutoAWQ; this module follows ``AWQModifier._compute_best_scale``
(llmcompressor 0.14.0.1, ``modifiers/transform/awq/base.py``) op by op for one
balance layer whose parent is the layer itself:

1. ``x_mean``: per batch ``|x|.float().sum(0)`` (float32), summed over batches
   (float32), divided by the row count (``cache_smooth_activations_hook``);
2. ``w_mean`` (``duo_scaling``): ``|W| / (amax(|W|) + 1e-6)`` per group (float32),
   summed over rows in float64 (``get_high_precision()``), divided by the row count
   (``_compute_layer_means``);
3. the grid (``_get_grid_search_params``): ``duo_scaling=True``:
   ``[(0, False)] + [(i / (n_grid - 2), True) for i < n_grid - 1]``; ``False``:
   ``i / (n_grid - 1)``; ``"both"``: ``i / (n_grid // 2 - 1)`` for each of
   ``False, True``;
4. scales: ``x_mean.pow(r) / (w_mean.pow(1 - r) + 1e-4)`` (float32 / float64 →
   float64) or ``x_mean.pow(r)`` (float32), ``clamp(min=1e-4)``, divided by
   ``sqrt(max * min)``, Inf / NaN → 1;
5. ``W s`` rounded to float32 (``weight.data.copy_``), compressed-tensors'
   min-max qparams and fake-quantize (as :func:`refquant.quant.gptq.gptq`'s),
   ``/ s`` and rounded to float32;
6. loss: ``sum((x W^T - x W'^T)^2)`` over batches (float32) divided by the
   element count; the first minimum wins (strict ``<``).

Not bit-identical with torch: the float32 column sums of step 1 (torch's order
vs NumPy's; refquant sums in float64 and rounds once per batch), ``pow`` (torch's
vectorised SLEEF; refquant rounds a float64 ``pow`` once, exact for the exponents
0, 1, 2) and the matmuls of step 6
(MKL vs OpenBLAS). A scale one ulp apart can flip a code at a rounding tie of
``Q``, which moves a grid point's loss by up to ~2e-3 relative, so when two grid
points are that close the chosen one can differ.
tests/peers/test_awq_sq_llmcompressor.py states the bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._errors import RefquantError
from .awq import _batches, _check_bits, _check_group_size
from .gptq import _check_weight, _fake_quantize, _group_qparams

__all__ = ["AWQLLMCompressorResult", "awq_llmcompressor", "awq_llmcompressor_grid"]


def awq_llmcompressor_grid(n_grid=20, duo_scaling=True):
    """``(ratio, use_duo_scaling)`` pairs of ``AWQModifier._get_grid_search_params``."""
    if isinstance(n_grid, bool) or not isinstance(n_grid, (int, np.integer)) or n_grid < 3:
        raise RefquantError(f"n_grid must be an int >= 3, got {n_grid!r}")
    if duo_scaling == "both":
        half = int(n_grid / 2)
        return [(i / (half - 1), d) for i in range(half) for d in (False, True)]
    if duo_scaling is False:
        return [(i / (n_grid - 1), False) for i in range(n_grid)]
    if duo_scaling is True:
        return [(0.0, False)] + [(i / (n_grid - 2), True) for i in range(n_grid - 1)]
    raise RefquantError(f"duo_scaling must be True, False or 'both', got {duo_scaling!r}")


def _pow32(a: np.ndarray, e: float) -> np.ndarray:
    """torch's float32 ``pow(tensor, scalar)`` to one ulp (see smoothquant._pow32)."""
    if e == 0:
        return np.ones_like(a)
    if e == 1:
        return a.copy()
    if e == 2:
        return a * a
    return np.power(a.astype(np.float64), float(np.float32(e))).astype(np.float32)


def _pow64(a: np.ndarray, e: float) -> np.ndarray:
    if e == 0.5:
        return np.sqrt(a)
    return np.power(a, e)


@dataclass(frozen=True)
class AWQLLMCompressorResult:
    """What :func:`awq_llmcompressor` returns.

    Attributes
    ----------
    scales : ndarray (in,)
        The best scales (float64 with duo scaling, float32 without, as the modifier).
    ratio : float
    duo_scaling : bool
        Whether the chosen grid point divided by ``w_mean``.
    losses : ndarray
        The loss of every grid point (float64 holding float32 values).
    grid : list of (float, bool)
    x_mean : ndarray (in,), float32
    weight_scaled : ndarray (out, in), float32
        ``W s`` (fold ``1 / s`` into the previous operation).
    weight_quantized : ndarray (out, in), float32
        ``Q(W s)`` (the fake-quantized folded weights).
    """

    scales: np.ndarray
    ratio: float
    duo_scaling: bool
    losses: np.ndarray
    grid: list
    x_mean: np.ndarray
    weight_scaled: np.ndarray
    weight_quantized: np.ndarray


def _quantize(ws, bits, symmetric, g):
    """compressed-tensors' min-max qparams per group of ``ws`` (float32), then fake-quantize."""
    out = np.empty_like(ws)
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    for c0 in range(0, ws.shape[1], g):
        blk = ws[:, c0:c0 + g]
        s, z = _group_qparams(blk, bits, symmetric)
        for c in range(blk.shape[1]):
            out[:, c0 + c] = _fake_quantize(blk[:, c], s, z, qmin, qmax, symmetric)[1]
    return out


def awq_llmcompressor(weight, x, *, bits=4, symmetric=False, group_size=128, n_grid=20,
                      duo_scaling=True) -> AWQLLMCompressorResult:
    """llmcompressor 0.14's AWQ scale search for one linear layer, in its float32 arithmetic.

    Parameters
    ----------
    weight : array_like (out, in)
    x : array_like (..., in) or a sequence of batches
        Each batch is one forward pass of the modifier (its loss and statistic
        are summed batch by batch).
    bits, symmetric, group_size
        compressed-tensors INT weights (``group_size=None``: per channel).
    n_grid, duo_scaling
        The modifier's options (defaults 20, True).

    Returns
    -------
    AWQLLMCompressorResult

    Formula
    -------
    ``s(r) = clamp(x_mean**r / (w_mean**(1-r) + 1e-4), 1e-4) / sqrt(max * min)``;
    ``loss(r) = sum_b ||x_b W^T - x_b (Q(W s) / s)^T||^2 / N``; first minimum.

    Reference
    ---------
    llmcompressor 0.14.0.1 ``AWQModifier._compute_best_scale``,
    ``_compute_layer_means``, ``_get_grid_search_params``, ``_compute_loss``;
    compressed-tensors 0.19 ``calculate_qparams`` / ``fake_quantize``.
    """
    w = _check_weight(weight).astype(np.float32)
    bits = _check_bits(bits)
    g = w.shape[1] if group_size is None else _check_group_size(group_size, w.shape[1])
    grid = awq_llmcompressor_grid(n_grid, duo_scaling)
    batches = [b.astype(np.float32) for b in _batches(x, w.shape[1])]
    x_sum = np.zeros(w.shape[1], np.float32)
    count = 0
    for b in batches:
        x_sum += np.sum(np.abs(b), axis=0, dtype=np.float64).astype(np.float32)
        count += b.shape[0]
    if count == 0:
        raise RefquantError("x holds no calibration rows")
    x_mean = x_sum / np.float32(count)
    aw = np.abs(w)
    wn = np.empty_like(aw)
    for c0 in range(0, w.shape[1], g):
        blk = aw[:, c0:c0 + g]
        wn[:, c0:c0 + g] = blk / (blk.max(axis=1, keepdims=True) + np.float32(1e-6))
    w_mean = np.sum(wn, axis=0, dtype=np.float64) / w.shape[0]
    ref = [b @ w.T for b in batches]
    n_el = sum(r.size for r in ref)

    def scales_for(ratio, duo):
        if duo:
            s = _pow32(x_mean, ratio).astype(np.float64) / (_pow64(w_mean, 1 - ratio) + 1e-4)
            s = np.maximum(s, 1e-4)
        else:
            s = np.maximum(_pow32(x_mean, ratio), np.float32(1e-4))
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            s = s / np.sqrt(s.max() * s.min())
        s[~np.isfinite(s)] = 1
        return s

    losses = np.empty(len(grid))
    best, best_loss = -1, math.inf
    for i, (ratio, duo) in enumerate(grid):
        s = scales_for(ratio, duo)
        ws = (w * s).astype(np.float32)
        wq = (_quantize(ws, bits, symmetric, g) / s).astype(np.float32)
        total = np.float32(0)
        for b, r in zip(batches, ref, strict=True):
            d = r - b @ wq.T
            total = np.float32(total + np.float32(np.sum(d.astype(np.float64) ** 2)))
        loss = float(total / np.float32(n_el))
        losses[i] = loss
        if loss < best_loss:
            best, best_loss = i, loss
    if best < 0:
        raise RefquantError("no finite loss on the grid; check x and weight")
    ratio, duo = grid[best]
    s = scales_for(ratio, duo)
    ws = (w * s).astype(np.float32)
    return AWQLLMCompressorResult(
        scales=s, ratio=float(ratio), duo_scaling=bool(duo), losses=losses, grid=grid,
        x_mean=x_mean, weight_scaled=ws, weight_quantized=_quantize(ws, bits, symmetric, g))
