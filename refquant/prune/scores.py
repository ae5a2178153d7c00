"""Importance scores: how much each weight (or unit, or layer) matters.

Every score here is a float64 array in which **a larger value means more
important**; the mask builders of :mod:`refquant.prune.masks` prune the lowest
scores. The one exception is named where it occurs: GraSP's score, which its
paper prunes from the top (:func:`grasp`).

=====================================  =================================================  ==========================
score                                  formula                                            source
=====================================  =================================================  ==========================
:func:`magnitude`                      :math:`|w|`                                        Han et al. 2015
:func:`ln_norm`                        :math:`(\\sum |w|^p)^{1/p}` per unit               torch ``_compute_norm``
:func:`lp_power_sum`                   :math:`\\sum |w|^p` per unit (Torch-Pruning "L2")   Torch-Pruning
:func:`random_scores`                  :math:`U[0, 1)`, seeded                            baseline
:func:`taylor`                         :math:`(\\sum g w)^2`, :math:`\\sum |g w|`,           Molchanov et al. 2019
                                       :math:`|\\sum g w|`
:func:`obd`                            :math:`\\tfrac12 h w^2`                              LeCun et al. 1989
:func:`fisher`                         :math:`w^2 \\,\\overline{g^2}`                        Theis et al. 2018
:func:`llm_pruner_param_mix`           :math:`|w g - \\tfrac12 w^2 F|`                      LLM-Pruner (Ma et al. 2023)
:func:`snip`                           :math:`|g w| / \\sum |g w|`                          Lee et al. 2019
:func:`grasp`                          :math:`-\\theta \\odot H g`                           Wang et al. 2020
:class:`MovementScore`                 :math:`-\\sum_t g_t \\odot w_t`                       Sanh et al. 2020
:func:`lamp`                           :math:`w_u^2 / \\sum_{v \\ge u} w_v^2`                Lee et al. 2021
:func:`wanda`                          :math:`|W_{ij}| \\, \\|X_j\\|_2`                      Sun et al. 2023
:class:`WandaRowScalars`               streaming :math:`\\overline{X_j^2}` for wanda       llmcompressor 0.14
:func:`network_slimming`               :math:`|\\gamma|`                                    Liu et al. 2017
:func:`outlier_ratio`,                 layer sparsities from outlier ratios               OWL (Yin et al. 2023)
:func:`owl_layer_sparsity`
:func:`group_reduce`,                  over coupled tensors                               Torch-Pruning
:func:`normalize_scores`
=====================================  =================================================  ==========================

"Per unit" scores keep one axis (the unit: an output channel is ``axis=0`` of a
``(out, in)`` weight, an input channel ``axis=1``) and reduce over all others,
like ``torch.nn.utils.prune._compute_norm``. Scores are computed in float64;
sums run in NumPy's pairwise order (relative error below ``n * 2**-53``).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable

import numpy as np

from .._core.granularity import normalize_axis
from .._errors import RefquantError
from ._arrays import as_shape, is_choice

__all__ = [
    "magnitude",
    "ln_norm",
    "lp_power_sum",
    "random_scores",
    "TAYLOR_REDUCTIONS",
    "taylor",
    "obd",
    "fisher",
    "llm_pruner_param_mix",
    "snip",
    "grasp",
    "MovementScore",
    "lamp",
    "wanda",
    "WandaRowScalars",
    "network_slimming",
    "outlier_ratio",
    "owl_layer_sparsity",
    "GROUP_REDUCTIONS",
    "group_reduce",
    "NORMALIZERS",
    "normalize_scores",
]

TAYLOR_REDUCTIONS = ("squared_sum", "sum_abs", "abs_sum")
GROUP_REDUCTIONS = ("sum", "mean", "max", "prod", "first")
NORMALIZERS = (None, "sum", "mean", "max", "gaussian", "min_max", "lamp")


# --------------------------------------------------------------------------- helpers
def _as_float(x, name: str, *, allow_empty: bool = False) -> np.ndarray:
    try:
        a = np.asarray(x)
    except Exception as e:  # pragma: no cover - numpy gives a clear message
        raise RefquantError(f"{name} must be an array of numbers: {e}") from None
    if a.dtype.kind not in "biuf":
        raise RefquantError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    if a.size == 0 and not allow_empty:
        raise RefquantError(f"{name} is empty (shape {a.shape}); expected at least one element")
    return a.astype(np.float64)


def _same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise RefquantError(
            f"{name_b} has shape {b.shape} but {name_a} has shape {a.shape}; expected the same shape"
        )


def _reduce_axes(ndim: int, axis) -> tuple[int, ...] | None:
    """Axes to sum over so that ``axis`` (the unit axis) is kept; None: elementwise."""
    if axis is None:
        return None
    a = normalize_axis(axis, ndim)
    return tuple(d for d in range(ndim) if d != a)


def _per_unit_sum(x: np.ndarray, axis) -> np.ndarray:
    axes = _reduce_axes(x.ndim, axis)
    if axes is None:
        return x
    return np.sum(x, axis=axes)


# --------------------------------------------------------------------------- magnitude
def magnitude(w) -> np.ndarray:
    """Magnitude :math:`|w|` of every weight (float64).

    Formula
    -------
    :math:`s_i = |w_i|`

    Reference
    ---------
    Han et al., "Learning both Weights and Connections for Efficient Neural
    Networks", NeurIPS 2015; ``torch.nn.utils.prune.L1Unstructured`` ranks by
    ``torch.abs(t)``.
    """
    return np.abs(_as_float(w, "w"))


def _check_p(p, name: str = "p") -> float:
    try:
        ok = not isinstance(p, bool) and isinstance(p, numbers.Real) and not np.isnan(float(p))
    except OverflowError:  # an int beyond float range (10**400)
        ok = False
    if not ok:
        raise RefquantError(f"{name} must be a real number (or ±inf) in float range, got {p!r:.60}")
    return float(p)


def ln_norm(w, p=2, axis=0) -> np.ndarray:
    """The :math:`L_p` norm of each unit along ``axis`` (with the root).

    Parameters
    ----------
    w : array_like
    p : float
        ``p > 0``, ``inf`` (max of |w|), ``-inf`` (min of |w|) or ``0`` (count
        of non-zeros), the values ``torch.norm`` accepts as numbers.
    axis : int or None
        The unit axis, kept; the norm runs over all other axes. ``None`` gives
        the norm of every element alone, :math:`|w|`.

    Formula
    -------
    :math:`s_u = \\big(\\sum_{i \\in u} |w_i|^p\\big)^{1/p}`

    Reference
    ---------
    ``torch.nn.utils.prune._compute_norm`` (``torch.norm(t, p=n, dim=all but dim)``),
    used by ``ln_structured``.
    """
    a = np.abs(_as_float(w, "w"))
    p = _check_p(p)
    axes = _reduce_axes(a.ndim, axis)
    if axes is None:
        return a if p != 0 else (a != 0).astype(np.float64)
    if p == np.inf:
        return np.max(a, axis=axes) if axes else a
    if p == -np.inf:
        return np.min(a, axis=axes) if axes else a
    if p == 0:
        return np.sum(a != 0, axis=axes).astype(np.float64)
    if p < 0:
        raise RefquantError(f"p must be > 0, 0 or ±inf, got {p}")
    if p == 1:
        return np.sum(a, axis=axes)
    if p == 2:
        return np.sqrt(np.sum(a * a, axis=axes))
    return np.sum(a**p, axis=axes) ** (1.0 / p)


def lp_power_sum(w, p=2, axis=0) -> np.ndarray:
    """Root-free :math:`\\sum |w|^p` per unit: what Torch-Pruning calls the "L2" (p=2) norm.

    Torch-Pruning's ``MagnitudeImportance(p=2)`` (``GroupMagnitudeImportance``)
    scores a channel by ``w.abs().pow(p).sum(1)``, the *p-th power* of the norm.
    For ranking the channels of one tensor this is equivalent to :func:`ln_norm`;
    it is not once scores of several tensors are added (group reduction) or
    normalised.

    Formula
    -------
    :math:`s_u = \\sum_{i \\in u} |w_i|^p`

    Reference
    ---------
    VainF/Torch-Pruning ``torch_pruning/pruner/importance.py``,
    ``GroupMagnitudeImportance.__call__`` (``local_imp = w.abs().pow(self.p).sum(1)``).
    """
    a = np.abs(_as_float(w, "w"))
    p = _check_p(p)
    if not p > 0 or p == np.inf:
        raise RefquantError(f"p must be a finite number > 0, got {p}")
    return _per_unit_sum(a**p, axis)


def random_scores(shape, seed=None) -> np.ndarray:
    """Uniform random scores in [0, 1), from ``np.random.default_rng(seed)``, in C order.

    Formula
    -------
    :math:`s_i \\sim U[0, 1)` independently.

    Reference
    ---------
    The random baseline of every pruning paper; torch's ``RandomUnstructured``
    prunes the largest of ``torch.rand_like(t)`` (a different generator: the
    streams cannot agree).
    """
    shape = as_shape(shape)
    try:
        rng = np.random.default_rng(seed)
    except (TypeError, ValueError) as e:
        raise RefquantError(f"seed must be None, a non-negative int or a numpy Generator / SeedSequence, "
                            f"got {seed!r:.60}: {e}") from None
    try:
        return rng.random(shape)
    except ValueError as e:  # "Maximum allowed dimension exceeded"
        raise RefquantError(f"shape {shape!r:.60} is too large: {e}") from None


# --------------------------------------------------------------------------- gradients
def taylor(w, g, *, axis=None, reduction="squared_sum") -> np.ndarray:
    """First-order Taylor importance from weights ``w`` and loss gradients ``g``.

    Parameters
    ----------
    w, g : array_like of the same shape
    axis : int or None
        Unit axis (kept); the products :math:`g w` are combined over all other
        axes. ``None``: every weight is its own unit.
    reduction : {"squared_sum", "sum_abs", "abs_sum"}
        ``"squared_sum"``: Molchanov et al.'s :math:`(\\sum g w)^2`;
        ``"sum_abs"``: :math:`\\sum |g w|` (Torch-Pruning ``TaylorImportance``,
        ``multivariable=False``; LLM-Pruner ``param_first``);
        ``"abs_sum"``: :math:`|\\sum g w|` (Torch-Pruning ``multivariable=True``;
        LLM-Pruner ``vectorize``).

    Formula
    -------
    :math:`I_u = \\big(\\sum_{i\\in u} g_i w_i\\big)^2`,
    :math:`\\sum_{i\\in u} |g_i w_i|` or :math:`\\big|\\sum_{i\\in u} g_i w_i\\big|`.

    Reference
    ---------
    Molchanov et al., "Importance Estimation for Neural Network Pruning", CVPR
    2019, eq. 8 (group contribution); Torch-Pruning ``GroupTaylorImportance``.
    """
    w = _as_float(w, "w")
    g = _as_float(g, "g")
    _same_shape(w, g, "w", "g")
    if not is_choice(reduction, TAYLOR_REDUCTIONS):
        raise RefquantError(f"reduction must be one of {TAYLOR_REDUCTIONS}, got {reduction!r}")
    gw = g * w
    if reduction == "sum_abs":
        return _per_unit_sum(np.abs(gw), axis)
    s = _per_unit_sum(gw, axis)
    return s * s if reduction == "squared_sum" else np.abs(s)


def obd(w, h) -> np.ndarray:
    """Optimal Brain Damage saliency :math:`\\tfrac12 h w^2` from the Hessian diagonal ``h``.

    Formula
    -------
    :math:`s_i = \\tfrac12 \\, h_{ii} \\, w_i^2`

    Reference
    ---------
    LeCun, Denker, Solla, "Optimal Brain Damage", NIPS 1989, eq. 5.
    Torch-Pruning's ``HessianImportance`` sums :math:`w^2 h` per channel without
    the ½ (a common factor, same ranking).
    """
    w = _as_float(w, "w")
    h = _as_float(h, "h")
    _same_shape(w, h, "w", "h")
    return 0.5 * h * w * w


def fisher(w, grads) -> np.ndarray:
    """Empirical-Fisher saliency :math:`w^2 \\cdot \\mathrm{mean}_n(g_n^2)`.

    Parameters
    ----------
    w : array_like, shape S
    grads : array_like, shape (n_samples, *S)
        Per-sample gradients; the Fisher diagonal is their mean square (the
        diagonal Hessian approximation of the OBD saliency, without the ½).

    Formula
    -------
    :math:`s_i = w_i^2 \\, \\frac1N \\sum_n g_{n,i}^2`

    Reference
    ---------
    Theis et al., "Faster gaze prediction with dense networks and Fisher
    pruning", 2018; Torch-Pruning ``HessianImportance.accumulate_grad`` (mean of
    squared per-sample gradients) times :math:`w^2`.
    """
    w = _as_float(w, "w")
    g = _as_float(grads, "grads")
    if g.shape[1:] != w.shape or g.ndim != w.ndim + 1:
        raise RefquantError(
            f"grads has shape {g.shape}; expected (n_samples, *{w.shape}) for w of shape {w.shape}"
        )
    return w * w * np.mean(g * g, axis=0)


def llm_pruner_param_mix(w, g, fisher_diag) -> np.ndarray:
    """LLM-Pruner's element-wise ``param_mix`` importance :math:`|w g - \\tfrac12 w^2 F|`.

    Parameters
    ----------
    w, g, fisher_diag : array_like of one shape
        Weights, gradient, and the accumulated squared gradients (LLM-Pruner's
        ``weight.acc_grad``, the Fisher diagonal standing in for the Hessian).

    Formula
    -------
    :math:`s_i = \\big| w_i g_i - \\tfrac12 w_i^2 F_{ii} \\big|`, the absolute value of
    the second-order Taylor expansion of the loss change (LLM-Pruner eq. 5).
    Sum it over a unit with ``.sum(axis)`` for LLM-Pruner's group score.

    Reference
    ---------
    horseee/LLM-Pruner ``LLMPruner/pruner/hf_llama_pruner.py``,
    ``TaylorImportance``: ``salience = w * grad; salience = salience - 0.5 * w *
    acc_grad * w``, then ``salience.abs()``.
    """
    w = _as_float(w, "w")
    g = _as_float(g, "g")
    f = _as_float(fisher_diag, "fisher_diag")
    _same_shape(w, g, "w", "g")
    _same_shape(w, f, "w", "fisher_diag")
    return np.abs(w * g - 0.5 * w * w * f)


def _named_or_single(x, name: str):
    if isinstance(x, dict):
        if not x:
            raise RefquantError(f"{name} is an empty dict; expected at least one tensor")
        return x, True
    return {"": x}, False


def snip(w, g):
    """SNIP connection sensitivity :math:`|g w|` normalised to sum 1 over **all** weights.

    Parameters
    ----------
    w, g : array_like, or dicts of named arrays with the same keys
        With dicts the normalisation runs over every tensor together (SNIP
        ranks all connections of the network globally); a dict is returned.

    Formula
    -------
    :math:`s_j = |g_j w_j| \\,/\\, \\sum_k |g_k w_k|` over every weight :math:`k`.
    An all-zero :math:`g w` (0/0) gives all-zero scores.

    Reference
    ---------
    Lee, Ajanthan, Torr, "SNIP: Single-shot Network Pruning based on Connection
    Sensitivity", ICLR 2019, eq. 6.
    """
    wd, is_dict = _named_or_single(w, "w")
    gd, _ = _named_or_single(g, "g")
    if set(wd) != set(gd):
        raise RefquantError(f"g has keys {sorted(gd)} but w has keys {sorted(wd)}")
    raw = {}
    for k in wd:
        wk, gk = _as_float(wd[k], f"w[{k!r}]"), _as_float(gd[k], f"g[{k!r}]")
        _same_shape(wk, gk, f"w[{k!r}]", f"g[{k!r}]")
        raw[k] = np.abs(gk * wk)
    total = float(np.sum([np.sum(v) for v in raw.values()]))
    out = {k: (v / total if total > 0 else np.zeros_like(v)) for k, v in raw.items()}
    return out if is_dict else out[""]


def grasp(w, hg) -> np.ndarray:
    """GraSP score :math:`S = -\\theta \\odot H g` given the Hessian-gradient product ``hg``.

    **GraSP prunes the largest scores** (removing a weight with large S reduces
    gradient flow the least), the opposite of every other score here: to prune
    with :mod:`refquant.prune.masks` (lowest pruned) pass ``-grasp(w, hg)``.

    Formula
    -------
    :math:`S(-\\theta) = -\\theta \\odot H g`

    Reference
    ---------
    Wang, Zhang, Grosse, "Picking Winning Tickets Before Training by Preserving
    Gradient Flow", ICLR 2020, eq. 8; alecwangcq/GraSP keeps scores at or below
    the threshold of the top ``num_params_to_rm`` and removes the rest.
    """
    w = _as_float(w, "w")
    hg = _as_float(hg, "hg")
    _same_shape(w, hg, "w", "hg")
    return -w * hg


class MovementScore:
    """Movement pruning scores accumulated over training steps.

    Call :meth:`update` once per optimisation step with the weights and the
    loss gradient of that step; :attr:`scores` holds the running sum.

    Formula
    -------
    :math:`S^{(T)}_i = -\\sum_{t \\le T} \\frac{\\partial L}{\\partial w_i}^{(t)} \\, w_i^{(t)}`

    Reference
    ---------
    Sanh, Wolf, Rush, "Movement Pruning: Adaptive Sparsity by Fine-Tuning",
    NeurIPS 2020, eq. 4 (the score of a weight moving away from zero grows).
    """

    def __init__(self, shape=None):
        self._scores = None if shape is None else np.zeros(shape, dtype=np.float64)
        self.steps = 0

    def update(self, w, g) -> MovementScore:
        """Add :math:`-g \\odot w` of one step; returns ``self``."""
        w = _as_float(w, "w")
        g = _as_float(g, "g")
        _same_shape(w, g, "w", "g")
        if self._scores is None:
            self._scores = np.zeros(w.shape, dtype=np.float64)
        _same_shape(self._scores, w, "the accumulated scores", "w")
        self._scores = self._scores - g * w
        self.steps += 1
        return self

    @property
    def scores(self) -> np.ndarray:
        """A copy of the accumulated scores (zeros before the first update)."""
        if self._scores is None:
            raise RefquantError("MovementScore has no shape yet: call update(w, g) first")
        return self._scores.copy()


# --------------------------------------------------------------------------- LAMP
def lamp(w, *, square=True) -> np.ndarray:
    """LAMP score of every weight: its square over the sum of squares of the ones not smaller.

    Parameters
    ----------
    w : array_like
        Weights (``square=True``) or already non-negative scores such as
        Torch-Pruning's channel scores (``square=False``: used as they are).
    square : bool

    Formula
    -------
    Sort :math:`s = w^2` ascending, :math:`s_{(1)} \\le \\dots \\le s_{(n)}`;
    :math:`\\mathrm{LAMP}(u) = s_{(u)} / \\sum_{v \\ge u} s_{(v)}`. The largest
    weight scores 1; within a tensor the ranking equals the magnitude ranking,
    and the scores are comparable *across* tensors (prune them globally).

    Ties: the sort is stable, so among equal values the **lower flat index
    comes first** and gets the smaller score (it is the one pruned first),
    e.g. ``lamp([1, 1]) = [0.5, 1.0]``.

    The 0/0 case: :math:`\\sum_{v\\ge u} s_{(v)} = 0` only if every value from
    :math:`u` on is 0, and then (the order being ascending) the whole tensor is
    0. refquant defines those scores as **0** (a zero weight is as unimportant
    as any); Torch-Pruning's ``_lamp`` divides and returns NaN.

    Reference
    ---------
    Lee, Park, Mo, Ahn, Shin, "Layer-adaptive Sparsity for the Magnitude-based
    Pruning", ICLR 2021, eq. 2; Torch-Pruning ``GroupMagnitudeImportance._lamp``
    (which divides by ``scores.sum() - exclusive cumsum``; refquant sums the tail
    directly, a reverse cumulative sum, so no cancellation, after dividing by
    the largest magnitude so that squares neither underflow nor overflow).
    """
    a = _as_float(w, "w")
    if not square and np.any(a < 0):
        raise RefquantError("w must be non-negative scores when square=False")
    # LAMP is scale-invariant; dividing by the largest |w| first keeps w**2 from
    # underflowing (w = 1e-200) or overflowing (w = 1e200).
    peak = np.max(np.abs(a)) if a.size else 0.0
    if peak > 0 and np.isfinite(peak):
        a = a / peak
    s = a * a if square else a
    flat = s.ravel()
    order = np.argsort(flat, kind="stable")
    srt = flat[order]
    tail = np.cumsum(srt[::-1])[::-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        val = np.where(tail > 0, srt / np.where(tail > 0, tail, 1.0), 0.0)
    out = np.empty_like(flat)
    out[order] = val
    return out.reshape(s.shape)


# --------------------------------------------------------------------------- activations
def wanda(w, x) -> np.ndarray:
    """Wanda score :math:`|W_{ij}| \\cdot \\|X_j\\|_2` from calibration activations.

    Parameters
    ----------
    w : array_like, shape (out, in)
        A linear layer's weight (``y = x @ w.T``).
    x : array_like, shape (tokens, in)
        Inputs of that layer on calibration data.

    Formula
    -------
    :math:`S_{ij} = |W_{ij}| \\, \\big(\\sum_t X_{tj}^2\\big)^{1/2}`.
    Wanda compares scores **within each output row** (prune with
    ``per_row=True`` in :func:`refquant.prune.masks.unstructured_mask`).
    locuslab/wanda keeps ``scaler_row`` = running mean of :math:`X_{tj}^2` and
    uses its square root: a constant factor :math:`1/\\sqrt{N}` per layer, the
    same ranking within a row.

    Reference
    ---------
    Sun, Liu, Bair, Kolter, "A Simple and Effective Pruning Approach for Large
    Language Models", ICLR 2024, eq. 1; locuslab/wanda ``lib/prune.py``
    ``prune_wanda``.
    """
    w = _as_float(w, "w")
    x = _as_float(x, "x")
    if w.ndim != 2 or x.ndim != 2 or x.shape[1] != w.shape[1]:
        raise RefquantError(
            f"x has shape {x.shape} and w has shape {w.shape}; expected w (out, in) "
            f"and x (tokens, in) with the same in"
        )
    return np.abs(w) * np.sqrt(np.sum(x * x, axis=0))[None, :]


class WandaRowScalars:
    """Streaming mean of :math:`X_{tj}^2` per input channel, for :func:`wanda` on batches.

    ``update(x)`` takes a batch ``(..., in_features)``; ``scores(w)`` gives
    :math:`|W_{ij}| \\sqrt{S_j}` with :math:`S_j = \\frac1N \\sum_t X_{tj}^2`, which ranks
    every row exactly as :func:`wanda` on all rows at once (a factor
    :math:`1/\\sqrt N`). Only ``in_features`` numbers are held.

    ``count="rows"`` counts every row of a batch as a sample; ``count="sequences"``
    counts the leading axis of a 3-D batch (a 2-D batch is one sequence), as
    llmcompressor and locuslab/wanda do: the statistic is then
    :math:`\\frac{1}{N_{seq}} \\sum_t X_{tj}^2`, the same ranking.

    Formula
    -------
    .. math:: S \\leftarrow S\\,\\frac{N}{N + m} + \\frac{1}{N + m}\\sum_{t \\in batch} X_t^2

    Reference
    ---------
    llmcompressor 0.14.0.1 ``modifiers/pruning/wanda/wanda_sparsify.py``
    ``accumulate_row_scalars`` (``row_scalars *= n / (n + m)``; ``n += m``;
    ``row_scalars += ||inp||_2^2 / n`` in float32); locuslab/wanda ``WrappedGPT.add_batch``.
    """

    def __init__(self, in_features: int, *, count: str = "rows", precision: str = "float64"):
        if isinstance(in_features, bool) or not isinstance(in_features, (int, np.integer)) \
                or in_features < 1:
            raise RefquantError(f"in_features must be a positive int, got {in_features!r}")
        if count not in ("rows", "sequences"):
            raise RefquantError(f"count must be 'rows' or 'sequences', got {count!r}")
        if precision not in ("float64", "float32"):
            raise RefquantError(f"precision must be 'float32' or 'float64', got {precision!r}")
        self.in_features = int(in_features)
        self.count = count
        self._dtype = np.dtype(precision).type
        self.row_scalars = np.zeros(self.in_features, self._dtype)
        self.n_samples = 0

    def update(self, x) -> WandaRowScalars:
        """Add a batch (shape ``(..., in_features)``)."""
        from ..quant.gptq import calibration_rows

        shape = np.shape(x)
        a = calibration_rows(x, self.in_features, self._dtype)
        m = (shape[0] if len(shape) == 3 else 1) if self.count == "sequences" \
            else int(np.prod(shape[:-1]))
        if a.shape[0] == 0:
            return self
        total = self.n_samples + m
        self.row_scalars *= self._dtype(self.n_samples / total)
        self.row_scalars += np.sum(a * a, axis=0) / self._dtype(total)
        self.n_samples = total
        return self

    def scores(self, w) -> np.ndarray:
        """Wanda scores :math:`|W_{ij}|\\sqrt{S_j}` (float64) of a weight ``(out, in)``."""
        w = _as_float(w, "w")
        if w.ndim != 2 or w.shape[1] != self.in_features:
            raise RefquantError(
                f"w has shape {w.shape}; expected (out, {self.in_features})"
            )
        return np.abs(w) * np.sqrt(self.row_scalars.astype(np.float64))[None, :]


def network_slimming(gamma) -> np.ndarray:
    """Network slimming channel score :math:`|\\gamma|` of a normalisation layer's scale.

    Formula
    -------
    :math:`s_c = |\\gamma_c|`

    Reference
    ---------
    Liu et al., "Learning Efficient Convolutional Networks through Network
    Slimming", ICCV 2017; Torch-Pruning ``BNScaleImportance`` (p=1).
    """
    g = _as_float(gamma, "gamma")
    if g.ndim != 1:
        raise RefquantError(f"gamma must be 1-D (one scale per channel), got shape {g.shape}")
    return np.abs(g)


def outlier_ratio(scores, m=5.0) -> float:
    """OWL's layer outlier ratio (in percent): share of scores above ``m`` times their mean.

    Parameters
    ----------
    scores : array_like or sequence of arrays
        Wanda scores of every sublayer of one layer (arrays are flattened and
        joined, as OWL concatenates a decoder layer's sublayers).
    m : float
        OWL's ``Hyper_m`` (M, 3 to 10 in the paper).

    Formula
    -------
    :math:`D = 100 \\cdot \\frac1n \\#\\{ i : s_i > M \\cdot \\bar s \\}` (strictly greater).

    Reference
    ---------
    Yin et al., "Outlier Weighed Layerwise Sparsity (OWL)", ICML 2024, eq. for
    LOD; luuyin/OWL ``lib/prune_all.py`` ``check_outlier_mean``.
    """
    if isinstance(scores, (list, tuple)):
        parts = [_as_float(s, f"scores[{i}]").ravel() for i, s in enumerate(scores)]
        s = np.concatenate(parts) if parts else np.empty(0)
    else:
        s = _as_float(scores, "scores").ravel()
    if s.size == 0:
        raise RefquantError("scores is empty; expected at least one score")
    if np.isnan(s).any():
        raise RefquantError("scores contains NaN")
    m = _check_p(m, "m")
    return float(np.count_nonzero(s > np.mean(s) * m)) / s.size * 100.0


def owl_layer_sparsity(outlier_ratios, sparsity, lam=0.08) -> np.ndarray:
    """OWL's per-layer sparsities from the layers' outlier ratios.

    Layers with more outliers get a lower sparsity; the mean stays at
    ``sparsity`` and the values span exactly ``2 * lam`` (the paper's
    "[S - λ, S + λ]" holds when the ratios are spread symmetrically; with
    skewed ratios the interval shifts, e.g. D = [0, 1, 1], S = 0.5,
    λ = 0.0625 gives [0.5833, 0.4583, 0.4583]).

    Formula
    -------
    :math:`r_l = 2\\lambda \\, (D_l - \\min D) / (\\max D - \\min D)`,
    :math:`r_l \\leftarrow r_l - \\bar r + (1 - S)`, sparsity :math:`S_l = 1 - r_l`.
    When all :math:`D_l` are equal (OWL divides 0 by 0 and gets NaN) refquant
    returns :math:`S` for every layer; when :math:`\\max D - \\min D` is so small
    that its reciprocal overflows (a subnormal span, where OWL gets
    :math:`0 \\cdot \\infty` = NaN) refquant divides by it instead.

    Reference
    ---------
    Yin et al. 2023 (OWL), section 3; luuyin/OWL ``lib/prune_all.py``
    ``prune_wanda_outlier`` (``all_layer_ratio`` with ``args.Lamda``), then
    ``layer_sparsity_ratio = 1 - all_layer_ratio[i]``.
    """
    d = _as_float(outlier_ratios, "outlier_ratios")
    if d.ndim != 1:
        raise RefquantError(f"outlier_ratios must be 1-D (one per layer), got shape {d.shape}")
    s = _check_p(sparsity, "sparsity")
    if not 0.0 <= s <= 1.0:
        raise RefquantError(f"sparsity must be in [0, 1], got {sparsity!r}")
    lam = _check_p(lam, "lam")
    if not lam >= 0:
        raise RefquantError(f"lam must be >= 0, got {lam!r}")
    span = d.max() - d.min()
    if span == 0:
        return np.full(d.shape, s)
    with np.errstate(over="ignore", invalid="ignore"):
        scale = 1.0 / span * lam * 2
    if np.isfinite(scale):
        r = (d - d.min()) * scale
    else:  # a subnormal span: OWL's 1 / span overflows and 0 * inf gives NaN
        r = (d - d.min()) / span * (lam * 2)
    r = r - np.mean(r) + (1.0 - s)
    return 1.0 - r


# --------------------------------------------------------------------------- groups
def group_reduce(scores, reduction="mean") -> np.ndarray:
    """Combine the per-channel scores of coupled tensors into one score per channel.

    Parameters
    ----------
    scores : sequence of 1-D arrays of one length
        One entry per coupled tensor, in the group's order (the root first).
    reduction : {"sum", "mean", "max", "prod", "first"}

    Formula
    -------
    sum :math:`\\sum_k s_k`, mean :math:`\\frac1K\\sum_k s_k`, max
    :math:`\\max_k s_k`, prod :math:`\\prod_k s_k`, first :math:`s_1`.

    Reference
    ---------
    Torch-Pruning ``GroupMagnitudeImportance._reduce``; it accumulates in
    float32 and starts ``max`` at -99999 (see
    :class:`refquant.compat.torch_pruning.MagnitudeImportance`); here float64
    and a plain maximum.
    """
    if not is_choice(reduction, GROUP_REDUCTIONS):
        raise RefquantError(f"reduction must be one of {GROUP_REDUCTIONS}, got {reduction!r}")
    if isinstance(scores, np.ndarray) and scores.ndim == 0 or not isinstance(scores, Iterable):
        raise RefquantError(f"scores must be a sequence of 1-D arrays, got {type(scores).__name__}")
    arrs = [_as_float(s, f"scores[{i}]") for i, s in enumerate(scores)]
    if not arrs:
        raise RefquantError("scores is empty; expected the scores of at least one tensor")
    for i, a in enumerate(arrs):
        if a.ndim != 1 or a.shape != arrs[0].shape:
            raise RefquantError(
                f"scores[{i}] has shape {a.shape}; expected 1-D of shape {arrs[0].shape}"
            )
    stack = np.stack(arrs)
    if reduction == "sum":
        return np.sum(stack, axis=0)
    if reduction == "mean":
        return np.sum(stack, axis=0) / len(arrs)
    if reduction == "max":
        return np.max(stack, axis=0)
    if reduction == "prod":
        return np.prod(stack, axis=0)
    return arrs[0].copy()


def normalize_scores(scores, normalizer="mean", *, eps=1e-8) -> np.ndarray:
    """Normalise a score vector as Torch-Pruning's ``_normalize`` does.

    Parameters
    ----------
    scores : array_like
    normalizer : {None, "sum", "mean", "max", "gaussian", "min_max", "lamp"}
        ``"min_max"`` is Torch-Pruning's ``"standarization"`` (sic).
    eps : float
        The 1e-8 Torch-Pruning adds to the ``gaussian`` and ``min_max``
        denominators.

    Formula
    -------
    sum :math:`s/\\sum s`; mean :math:`s/\\bar s`; max :math:`s/\\max s`;
    gaussian :math:`(s - \\bar s)/(\\sigma + \\epsilon)` with the **unbiased**
    :math:`\\sigma` (``torch.std``, ddof 1); min_max
    :math:`(s - \\min s)/(\\max s - \\min s + \\epsilon)`; lamp :func:`lamp` with
    ``square=False``. Division by a zero sum, mean or max gives inf/NaN, as in
    the peer.

    Reference
    ---------
    Torch-Pruning ``GroupMagnitudeImportance._normalize``.
    """
    s = _as_float(scores, "scores")
    if not is_choice(normalizer, NORMALIZERS):
        raise RefquantError(f"normalizer must be one of {NORMALIZERS}, got {normalizer!r}")
    with np.errstate(divide="ignore", invalid="ignore"):
        if normalizer is None:
            return s
        if normalizer == "sum":
            return s / np.sum(s)
        if normalizer == "mean":
            return s / np.mean(s)
        if normalizer == "max":
            return s / np.max(s)
        if normalizer == "gaussian":
            sd = np.std(s, ddof=1) if s.size > 1 else np.nan
            return (s - np.mean(s)) / (sd + eps)
        if normalizer == "min_max":
            return (s - np.min(s)) / (np.max(s) - np.min(s) + eps)
    return lamp(s, square=False)
