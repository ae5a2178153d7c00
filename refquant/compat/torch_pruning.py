"""Torch-Pruning's importance classes on dicts of NumPy arrays.

Torch-Pruning (VainF/Torch-Pruning, ``torch_pruning/pruner/importance.py``)
scores a *group* of coupled layers found by its dependency graph. Here the
group is given explicitly, as a list of ``(tensor name, axis)`` pairs: the
tensors whose ``axis`` runs over the channels being scored, in the group's
order (the root first), e.g. for ``Linear(8, 6) -> BatchNorm1d(6) -> Linear(6, 4)``
scored on the 6 hidden channels::

    group = [("0.weight", 0), ("1.weight", 0), ("3.weight", 1)]

(Discovering groups from a model is structured pruning's job:
``refquant.prune.structured``.)

Semantics matched (Torch-Pruning 1.6):

* local score of one entry: a 1-D tensor (normalisation scale) scores
  :math:`|t_c|^p`; otherwise the channel slice along ``axis`` is flattened
  and scores :math:`\\sum |t|^p` (**no root**: ``p=2`` is the squared L2 norm);
* with ``bias=True`` an entry ``("x.weight", 0)`` (output channels, or a 1-D
  scale) is followed by ``("x.bias", 0)`` when ``x.bias`` exists, as
  Torch-Pruning appends the layer's bias after its weight (input-channel
  entries get none);
* reductions ``sum``/``mean``/``max``/``prod``/``first`` accumulate in
  **float32**; ``max`` starts from -99999 (so all-lower scores give -99999);
  ``mean`` divides by the number of entries;
* normalisers ``sum``, ``mean``, ``max``, ``gaussian`` (unbiased std + 1e-8),
  ``standarization`` (sic: min-max + 1e-8), ``lamp`` (0/0 gives NaN, and the
  sort is not stable in torch: refquant orders ties by index), or a callable;
* ``TaylorImportance``: :math:`\\sum |w g|` per channel (``multivariable=True``:
  :math:`|\\sum w g|`). Torch-Pruning's Taylor branch for normalisation
  layers tests ``prune_groupnorm_out_channels``, so **BatchNorm scales are
  ignored** by its TaylorImportance: leave them out of the group to match it;
* ``BNScaleImportance`` uses only the 1-D entries (Torch-Pruning: only
  BatchNorm layers; a LayerNorm scale listed here would count);
* ``RandomImportance`` draws from ``numpy.random.default_rng(seed)`` (not
  torch's stream).
* Not covered: transposed convolutions (give their output channels as
  ``axis=1``; the bias is then not added by ``bias=True``), grouped-convolution
  index repetition, ``HessianImportance``, ``OBDCImportance``, ``FPGMImportance``.

Other Torch-Pruning behaviour worth knowing (1.6.0, ``base_pruner.py``): the
pruner keeps ``int(N0 * (1 - ratio))`` channels of the *initial* count ``N0``
(``refquant.prune.prune_count(..., rule="torch_pruning")``), so ratio 0.9 of 10
channels computes ``int(0.9999999999999998) = 0`` kept, and then prunes nothing
because a group may not lose all its channels; ``manual_prune_width(layer, fn,
0.3)`` prunes ``int(N * (1 - 0.3))`` channels, i.e. 7 of 10, not 3.

Local scores are computed in float64 and rounded to float32 (torch sums in
float32 in its own order). The normalisers' element-wise steps run in float32
as torch's do; their reductions are refquant's correctly rounded float64 sum /
mean / std, not torch's float32 ones. Measured against Torch-Pruning 1.6.1 (torch
2.13, ``tests/peers/test_torch_pruning.py``): ``None``, ``max`` and ``standarization``
agree bit for bit (every reduction, p and bias, on random MLP and Conv groups of width
1 to 40); on the suite's two reference models ``sum`` is within 2 ulp (71 % exact),
``mean`` within 2 ulp (55 % exact; TaylorImportance with it likewise), ``lamp`` (evaluated
in float64, :func:`tp_lamp`) within 7 ulp, and ``gaussian``, which subtracts the mean so
that one ulp of torch's float32 mean becomes many on scores near it, within 15 float32
spacings of the largest score (48 % exact). Rankings agree wherever the scores are
apart by more than that.
"""

from __future__ import annotations

import numpy as np

from .._core.granularity import normalize_axis
from .._errors import RefquantError

__all__ = [
    "MagnitudeImportance",
    "GroupMagnitudeImportance",
    "TaylorImportance",
    "GroupTaylorImportance",
    "BNScaleImportance",
    "LAMPImportance",
    "RandomImportance",
    "tp_lamp",
]

_REDUCTIONS = ("sum", "mean", "max", "prod", "first")
_NORMALIZERS = (None, "sum", "mean", "max", "gaussian", "standarization", "lamp")


def _check_group(params, group) -> list[tuple[str, int, np.ndarray]]:
    if not isinstance(params, dict):
        raise RefquantError(f"params must be a dict of named arrays, got {type(params).__name__}")
    if not group:
        raise RefquantError("group is empty; expected a list of (tensor name, axis) pairs")
    out = []
    n = None
    for entry in group:
        try:
            name, axis = entry
        except (TypeError, ValueError):
            raise RefquantError(f"group entry {entry!r} is not a (tensor name, axis) pair") from None
        if name not in params:
            raise RefquantError(f"group names tensor {name!r}, which is not in params ({sorted(params)})")
        t = np.asarray(params[name])
        if t.dtype.kind not in "biuf" or t.size == 0:
            raise RefquantError(f"params[{name!r}] must be a non-empty real array")
        a = normalize_axis(axis, t.ndim, name=f"axis of {name!r}")
        if n is None:
            n = t.shape[a]
        elif t.shape[a] != n:
            raise RefquantError(
                f"{name!r} has {t.shape[a]} channels along axis {a}; the group's first entry has {n}"
            )
        out.append((name, a, t))
    return out


def _channels_first(t: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(t.astype(np.float64), axis, 0).reshape(t.shape[axis], -1)


def _with_bias(params, entries, bias: bool):
    if not bias:
        return entries
    out = []
    for name, a, t in entries:
        out.append((name, a, t))
        if name.endswith("weight") and a == 0:
            bname = name[: -len("weight")] + "bias"
            if bname in params:
                out.append((bname, 0, np.asarray(params[bname])))
    return out


def tp_lamp(scores) -> np.ndarray:
    """Torch-Pruning's ``_lamp`` normaliser: :math:`s_{(u)} / \\sum_{v \\ge u} s_{(v)}`, 0/0 = NaN.

    Reference
    ---------
    ``GroupMagnitudeImportance._lamp`` (ascending ``sort``, ``scores.sum() -
    exclusive cumsum``); the tail sum here is a reverse cumulative sum and ties
    are ordered by index.
    """
    s = np.asarray(scores, dtype=np.float64)
    flat = s.ravel()
    order = np.argsort(flat, kind="stable")
    srt = flat[order]
    tail = np.cumsum(srt[::-1])[::-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        val = srt / tail
    out = np.empty_like(flat)
    out[order] = val
    return out.reshape(s.shape)


class GroupMagnitudeImportance:
    """Torch-Pruning ``MagnitudeImportance(p=2, group_reduction="mean", normalizer="mean", bias=False)``.

    ``scorer(params, group)`` returns the float32 score of each channel.

    Formula
    -------
    :math:`I_c = \\mathrm{norm}\\big(\\mathrm{reduce}_k \\sum_{i \\in c} |t^{(k)}_i|^p\\big)`.

    Reference
    ---------
    VainF/Torch-Pruning ``torch_pruning/pruner/importance.py``,
    ``GroupMagnitudeImportance`` (``__call__``, ``_reduce``, ``_normalize``).
    """

    def __init__(self, p=2, group_reduction="mean", normalizer="mean", bias=False):
        if group_reduction not in _REDUCTIONS:
            raise RefquantError(f"group_reduction must be one of {_REDUCTIONS}, got {group_reduction!r}")
        if not (callable(normalizer) or normalizer in _NORMALIZERS):
            raise RefquantError(f"normalizer must be one of {_NORMALIZERS} or a callable, got {normalizer!r}")
        self.p = p
        self.group_reduction = group_reduction
        self.normalizer = normalizer
        self.bias = bias

    # -- pieces shared by the subclasses
    def _local(self, t: np.ndarray, axis: int, grad=None) -> np.ndarray:
        return np.sum(np.abs(_channels_first(t, axis)) ** self.p, axis=1)

    def _reduce(self, imps: list[np.ndarray]) -> np.ndarray:
        f32 = np.float32
        r = self.group_reduction
        if r == "prod":
            acc = np.ones(imps[0].shape, f32)
        elif r == "max":
            acc = np.full(imps[0].shape, -99999, f32)
        else:
            acc = np.zeros(imps[0].shape, f32)
        for i, imp in enumerate(imps):
            imp = imp.astype(f32)
            if r in ("sum", "mean"):
                acc = acc + imp
            elif r == "max":
                acc = np.maximum(acc, imp)
            elif r == "prod":
                acc = acc * imp
            elif i == 0:  # first
                acc = imp.copy()
        if r == "mean":
            acc = acc / f32(len(imps))
        return acc

    def _normalize(self, s: np.ndarray) -> np.ndarray:
        n = self.normalizer
        if n is None:
            return s
        if callable(n):
            return n(s)
        # torch evaluates each expression in float32: the element-wise steps are done
        # here in float32 as well (the subtraction of the mean or the min cancels in
        # float32 in torch; evaluating it in float64 was hundreds of ulps off for
        # scores near the mean). Only the reductions differ: refquant rounds the
        # float64 sum / mean / std once, torch reduces in float32 in its own order.
        f32 = np.float32
        x = s.astype(f32)
        x64 = x.astype(np.float64)
        eps = f32(1e-8)  # torch adds the Python scalar 1e-8 to a float32 tensor in float32
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if n == "sum":
                out = x / f32(np.sum(x64))
            elif n == "mean":
                out = x / f32(np.mean(x64))
            elif n == "max":
                out = x / np.max(x)
            elif n == "gaussian":
                sd = f32(np.std(x64, ddof=1)) if x.size > 1 else f32(np.nan)
                out = (x - f32(np.mean(x64))) / (sd + eps)
            elif n == "standarization":
                out = (x - x.min()) / ((x.max() - x.min()) + eps)
            else:
                out = tp_lamp(x64)
        return np.asarray(out).astype(f32)

    def _entries(self, params, group):
        return _with_bias(params, _check_group(params, group), self.bias)

    def __call__(self, params, group) -> np.ndarray:
        entries = self._entries(params, group)
        imps = [self._local(t, a) for _, a, t in entries]
        return self._normalize(self._reduce(imps))


class MagnitudeImportance(GroupMagnitudeImportance):
    """Alias of :class:`GroupMagnitudeImportance`, as in Torch-Pruning."""


class LAMPImportance(GroupMagnitudeImportance):
    """Torch-Pruning ``LAMPImportance(p=2, group_reduction="mean", normalizer="lamp", bias=False)``.

    Reference
    ---------
    Torch-Pruning ``LAMPImportance`` (asserts ``normalizer == "lamp"``).
    """

    def __init__(self, p=2, group_reduction="mean", normalizer="lamp", bias=False):
        if normalizer != "lamp":
            raise RefquantError(f"LAMPImportance needs normalizer='lamp', got {normalizer!r}")
        super().__init__(p, group_reduction, normalizer, bias)


class BNScaleImportance(GroupMagnitudeImportance):
    """Torch-Pruning ``BNScaleImportance(group_reduction="mean", normalizer="mean")``: :math:`|\\gamma|`.

    Only the group's 1-D entries (normalisation scales) are scored.

    Reference
    ---------
    Torch-Pruning ``BNScaleImportance`` (p=1, ``target_types`` BatchNorm only);
    Liu et al. 2017 (network slimming).
    """

    def __init__(self, group_reduction="mean", normalizer="mean"):
        super().__init__(1, group_reduction, normalizer, False)

    def __call__(self, params, group) -> np.ndarray:
        entries = [e for e in _check_group(params, group) if e[2].ndim == 1]
        if not entries:
            raise RefquantError("BNScaleImportance needs at least one 1-D (scale) tensor in the group")
        return self._normalize(self._reduce([np.abs(t.astype(np.float64)) for _, _, t in entries]))


class GroupTaylorImportance(GroupMagnitudeImportance):
    """Torch-Pruning ``TaylorImportance(group_reduction="mean", normalizer="mean", multivariable=False, bias=False)``.

    ``scorer(params, group, grads)`` with ``grads`` a dict of gradients of the
    same names and shapes.

    Formula
    -------
    ``multivariable=False``: :math:`\\sum_{i\\in c} |w_i g_i|`;
    ``True``: :math:`|\\sum_{i\\in c} w_i g_i|`; 1-D entries :math:`|w_c g_c|`.

    Reference
    ---------
    Torch-Pruning ``GroupTaylorImportance.__call__``; Molchanov et al. 2019.
    """

    def __init__(self, group_reduction="mean", normalizer="mean", multivariable=False, bias=False):
        super().__init__(1, group_reduction, normalizer, bias)
        self.multivariable = multivariable

    def __call__(self, params, group, grads) -> np.ndarray:
        if not isinstance(grads, dict):
            raise RefquantError(f"grads must be a dict of named arrays, got {type(grads).__name__}")
        imps = []
        for name, a, t in self._entries(params, group):
            if name not in grads:
                raise RefquantError(f"grads has no gradient for {name!r}")
            g = np.asarray(grads[name])
            if g.shape != t.shape:
                raise RefquantError(f"grads[{name!r}] has shape {g.shape}; expected {t.shape}")
            prod = _channels_first(t, a) * _channels_first(g, a)
            if self.multivariable:
                imps.append(np.abs(np.sum(prod, axis=1)))
            else:
                imps.append(np.sum(np.abs(prod), axis=1))
        return self._normalize(self._reduce(imps))


class TaylorImportance(GroupTaylorImportance):
    """Alias of :class:`GroupTaylorImportance`, as in Torch-Pruning."""


class RandomImportance:
    """Torch-Pruning ``RandomImportance``: uniform [0, 1) per channel, from ``default_rng(seed)``.

    Reference
    ---------
    Torch-Pruning ``RandomImportance`` (``torch.rand(len(idxs))``: another stream).
    """

    def __init__(self, seed=None):
        self._rng = np.random.default_rng(seed)

    def __call__(self, params, group) -> np.ndarray:
        entries = _check_group(params, group)
        _, a, t = entries[0]
        return self._rng.random(t.shape[a]).astype(np.float32)
