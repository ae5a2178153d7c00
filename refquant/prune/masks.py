"""Unstructured and global masks: which weights to prune, from any score.

A mask is a boolean array, ``True`` where the weight is **kept**; the lowest
scores are pruned. (For GraSP, whose paper prunes the highest, pass minus the
score.)

How ``amount`` becomes a count
------------------------------
An ``int`` amount is a count of weights to prune (``0 <= amount <= N``); a
``float`` is a fraction in ``[0, 1]`` turned into a count by the named ``rule``:

=================  ====================================================  ====================================
rule               weights pruned from :math:`N` at fraction :math:`s`     peer
=================  ====================================================  ====================================
``"torch"``        :math:`\\mathrm{round}(sN)`, ties to even (float64)    ``torch.nn.utils.prune._compute_nparams_toprune``
``"tfmot"``        :math:`N - \\max(\\mathrm{rint}(N(1-s)), 1)` in float32  tfmot ``pruning_impl.Pruning._update_mask``
``"floor"``        :math:`\\lfloor sN \\rfloor` (``int(s * N)``)           wanda ``prune_wanda``, SparseGPT
``"torch_pruning"``  :math:`N - \\lfloor N_0 (1 - s) \\rfloor`             Torch-Pruning ``BasePruner._prune``
=================  ====================================================  ====================================

(:math:`N_0` is the initial size; the rules evaluate the peers' float
expressions exactly as the peers do, so ``int(10 * (1 - 0.7)) = 3`` because
``1 - 0.7 = 0.30000000000000004``.)

Ties
----
Deterministic: scores are ordered by a **stable** ascending sort, so among equal
scores the **lower flat index is pruned first** (for :func:`global_mask`, the
lower index in the concatenation of the tensors in the dict's order). Peers
differ: ``torch.topk`` documents no tie order, tfmot keeps every weight equal to
its threshold (so it may prune fewer), Torch-Pruning's global pruning prunes
every score ``<=`` its threshold (so it may prune more).

Repeated pruning
----------------
With ``previous_mask``, already-pruned weights stay pruned and the new weights
are chosen among the survivors; ``relative_to="remaining"`` counts ``amount``
on the survivors (torch's ``PruningContainer``: 50 % then 50 % leaves 25 %),
``relative_to="initial"`` on the original size (Torch-Pruning and tfmot: 50 %
then 50 % leaves 50 %; a target below what is already pruned prunes nothing
more and revives nothing).
"""

from __future__ import annotations

import numbers

import numpy as np

from .._errors import RefquantError
from ._arrays import as_array, as_count, is_choice

__all__ = [
    "COUNT_RULES",
    "prune_count",
    "unstructured_mask",
    "global_mask",
    "apply_mask",
    "sparsity",
]

COUNT_RULES = ("torch", "tfmot", "floor", "torch_pruning")


def _check_amount(amount, what: str = "amount"):
    """Validate the amount's type and range; returns it (int count or float fraction)."""
    if isinstance(amount, (bool, np.bool_)) or not isinstance(amount, numbers.Real):
        raise RefquantError(f"{what} must be an int count or a float fraction, got {amount!r}")
    if isinstance(amount, numbers.Integral):
        if amount < 0:
            raise RefquantError(f"{what}={amount} is a negative count; expected a count >= 0")
        return int(amount)
    a = float(amount)
    if not 0.0 <= a <= 1.0:  # NaN fails too
        raise RefquantError(f"{what}={amount} is a fraction outside [0, 1]")
    return a


def prune_count(amount, n: int, *, rule: str = "torch", initial: int | None = None) -> int:
    """How many of ``n`` candidates to prune for ``amount`` under ``rule``.

    Parameters
    ----------
    amount : int or float
        A count (``int``, returned as is after checking ``amount <= n``) or a
        fraction in ``[0, 1]`` (``float``).
    n : int
        Number of candidates (the size, or what remains).
    rule : {"torch", "tfmot", "floor", "torch_pruning"}
    initial : int, optional
        The initial size :math:`N_0` for ``"torch_pruning"`` (default ``n``);
        its kept count is :math:`\\lfloor N_0(1-s)\\rfloor` and the count to prune
        now is ``n`` minus that (at least 0).

    Formula
    -------
    torch :math:`\\mathrm{round\\_half\\_even}(s n)`; tfmot
    :math:`n - \\max(\\mathrm{rint}_{f32}(n (1 - s)), 1)`; floor
    :math:`\\lfloor s n\\rfloor`; torch_pruning :math:`\\max(n - \\lfloor N_0 (1 - s)\\rfloor, 0)`.
    tfmot keeps at least one weight, so its count is ``n - 1`` at ``s = 1``
    (and 0 for ``n = 0``).

    Reference
    ---------
    torch ``_compute_nparams_toprune`` (``round(amount * tensor_size)``); tfmot
    ``pruning_impl.py`` ``_update_mask`` (``tf.math.round`` rounds half to even,
    on float32 ``size * (1 - sparsity)``); locuslab/wanda ``prune_wanda``
    (``int(W_metric.shape[1] * sparsity_ratio)``); Torch-Pruning
    ``base_pruner.py`` (``n_pruned = len(concat_imp) - int(initial * (1 - ratio))``).
    """
    if not is_choice(rule, COUNT_RULES):
        raise RefquantError(f"rule must be one of {COUNT_RULES}, got {rule!r}")
    n = as_count(n, "n")
    a = _check_amount(amount)
    if isinstance(a, int):
        if a > n:
            raise RefquantError(f"amount={a} is more than the {n} weights that can be pruned")
        return a
    if rule == "torch":
        k = round(a * n)
    elif rule == "floor":
        k = int(a * n)
    elif rule == "tfmot":
        if n == 0:
            return 0
        keep_f = np.float32(n) * (np.float32(1.0) - np.float32(a))
        keep = max(int(np.rint(keep_f)), 1)
        k = n - keep
    else:
        n0 = n if initial is None else int(initial)
        if n0 < n:
            raise RefquantError(f"initial={n0} is smaller than the current size n={n}")
        k = max(n - int(n0 * (1.0 - a)), 0)
    return min(max(int(k), 0), n)


def _as_scores(scores, name: str) -> np.ndarray:
    s = as_array(scores, name)
    if s.dtype.kind not in "biuf":
        raise RefquantError(f"{name} must be a real numeric array, got dtype {s.dtype}")
    if s.size == 0:
        raise RefquantError(f"{name} is empty (shape {s.shape}); expected at least one score")
    s = s.astype(np.float64)
    if np.isnan(s).any():
        raise RefquantError(f"{name} contains NaN at flat index {int(np.flatnonzero(np.isnan(s))[0])}")
    return s


def _as_mask(mask, shape, name: str) -> np.ndarray:
    m = as_array(mask, name)
    if m.shape != tuple(shape):
        raise RefquantError(f"{name} has shape {m.shape}; expected {tuple(shape)}")
    if m.dtype.kind == "b":
        return m.copy()
    if m.dtype.kind not in "biuf" or not np.all((m == 0) | (m == 1)):
        raise RefquantError(f"{name} must hold only 0/1 or True/False")
    return m != 0


def _select(flat_scores: np.ndarray, alive: np.ndarray, amount, rule: str, relative_to: str):
    """Flat boolean mask over one comparison group."""
    n_total = flat_scores.size
    cand = np.flatnonzero(alive)
    n_alive = cand.size
    if relative_to == "remaining":
        k = prune_count(amount, n_alive, rule=rule)
    elif rule == "torch_pruning" and not isinstance(amount, numbers.Integral):
        k = prune_count(amount, n_alive, rule=rule, initial=n_total)
    else:
        k = max(prune_count(amount, n_total, rule=rule) - (n_total - n_alive), 0)
    out = alive.copy()
    if k:
        order = np.argsort(flat_scores[cand], kind="stable")
        out[cand[order[:k]]] = False
    return out


def _check_opts(rule: str, relative_to: str) -> None:
    if not is_choice(rule, COUNT_RULES):
        raise RefquantError(f"rule must be one of {COUNT_RULES}, got {rule!r}")
    if not is_choice(relative_to, ("remaining", "initial")):
        raise RefquantError(f"relative_to must be 'remaining' or 'initial', got {relative_to!r}")


def unstructured_mask(scores, amount, *, rule="torch", previous_mask=None,
                      relative_to="remaining", per_row=False) -> np.ndarray:
    """Keep-mask pruning the ``amount`` lowest scores of one tensor.

    Parameters
    ----------
    scores : array_like
        Importance of every weight (higher is kept); NaN is refused.
    amount : int or float
        Count or fraction to prune (see the module docstring for ``rule``).
    rule : {"torch", "tfmot", "floor", "torch_pruning"}
        How a fraction becomes a count.
    previous_mask : array_like of bool, optional
        Mask of an earlier round; its pruned entries stay pruned.
    relative_to : {"remaining", "initial"}
        Whether ``amount`` counts the survivors of ``previous_mask`` (torch's
        PruningContainer) or the whole tensor (Torch-Pruning, tfmot).
    per_row : bool
        Compare each row (the slice ``scores[i]``, flattened) on its own, with
        the count computed on the row's length: Wanda's per-output comparison,
        available for any score.

    Returns
    -------
    numpy.ndarray of bool, the shape of ``scores``: ``True`` = kept.

    Formula
    -------
    With :math:`k` from the count rule, prune the :math:`k` candidates of
    lowest score: :math:`m_i = 0 \\iff i \\in \\mathrm{argsort}_{\\text{stable}}(s)[:k]`.
    Ties: the lower flat index is pruned first.

    Reference
    ---------
    ``torch.nn.utils.prune.L1Unstructured.compute_mask`` (``torch.topk(...,
    largest=False)``) and ``PruningContainer.compute_mask`` (``slc = mask == 1``);
    locuslab/wanda ``prune_wanda`` (per row, ``torch.sort(W_metric, dim=-1,
    stable=True)``).
    """
    _check_opts(rule, relative_to)
    s = _as_scores(scores, "scores")
    _check_amount(amount)
    alive = np.ones(s.shape, bool) if previous_mask is None else _as_mask(
        previous_mask, s.shape, "previous_mask")
    if not per_row:
        return _select(s.ravel(), alive.ravel(), amount, rule, relative_to).reshape(s.shape)
    if s.ndim < 2:
        raise RefquantError(f"per_row needs scores with at least 2 dimensions, got shape {s.shape}")
    s2 = s.reshape(s.shape[0], -1)
    a2 = alive.reshape(s.shape[0], -1)
    rows = [_select(s2[i], a2[i], amount, rule, relative_to) for i in range(s2.shape[0])]
    return np.stack(rows).reshape(s.shape)


def global_mask(scores: dict, amount, *, rule="torch", previous_masks=None,
                relative_to="remaining") -> dict:
    """Keep-masks pruning the ``amount`` lowest scores across several named tensors.

    Parameters
    ----------
    scores : dict of str -> array_like
        Scores of each tensor. They are ranked together, concatenated in the
        dict's order (this order decides ties: lower concatenated index pruned
        first), as ``torch.nn.utils.prune.global_unstructured`` concatenates
        with ``parameters_to_vector`` in the order of ``parameters``.
    amount, rule, relative_to
        As for :func:`unstructured_mask`; counts run over all tensors together.
    previous_masks : dict of str -> array_like of bool, optional
        Masks of an earlier round (missing names: nothing pruned yet).

    Returns
    -------
    dict of str -> numpy.ndarray of bool (``True`` = kept).

    Formula
    -------
    :func:`unstructured_mask` of the concatenation
    :math:`s = (s^{(1)}, s^{(2)}, \\dots)`, split back into tensors.

    Reference
    ---------
    ``torch.nn.utils.prune.global_unstructured``.
    """
    _check_opts(rule, relative_to)
    if not isinstance(scores, dict) or not scores:
        raise RefquantError("scores must be a non-empty dict of named arrays")
    previous_masks = {} if previous_masks is None else previous_masks
    unknown = set(previous_masks) - set(scores)
    if unknown:
        raise RefquantError(f"previous_masks names tensors that are not in scores: {sorted(unknown)}")
    arrs, alive = [], []
    for k, v in scores.items():
        a = _as_scores(v, f"scores[{k!r}]")
        arrs.append(a)
        pm = previous_masks.get(k)
        alive.append(np.ones(a.shape, bool) if pm is None else _as_mask(pm, a.shape, f"previous_masks[{k!r}]"))
    flat = np.concatenate([a.ravel() for a in arrs])
    flat_alive = np.concatenate([m.ravel() for m in alive])
    _check_amount(amount)
    m = _select(flat, flat_alive, amount, rule, relative_to)
    out, pos = {}, 0
    for k, a in zip(scores, arrs, strict=True):
        out[k] = m[pos:pos + a.size].reshape(a.shape)
        pos += a.size
    return out


def apply_mask(w, mask) -> np.ndarray:
    """Weights with the pruned entries set to +0 (a new array, the dtype of ``w``).

    Formula
    -------
    :math:`w'_i = w_i` where :math:`m_i`, else :math:`+0`. Unlike torch's
    ``mask * orig``, a pruned negative weight becomes +0 (not -0) and a pruned
    NaN or Inf becomes 0 (not NaN): see
    :mod:`refquant.compat.torch_prune` for torch's product.

    Reference
    ---------
    ``torch.nn.utils.prune.BasePruningMethod.apply_mask`` (differs as stated).
    """
    w = as_array(w, "w")
    m = _as_mask(mask, w.shape, "mask")
    return np.where(m, w, np.zeros((), dtype=w.dtype))


def sparsity(mask) -> float:
    """Fraction of pruned entries of a keep-mask (or of a dict of masks, together).

    Formula
    -------
    :math:`\\#\\{i : m_i = 0\\} / N` (0 for an empty mask).

    Reference
    ---------
    The usual definition (tfmot logs ``1 - reduce_mean(mask)``).
    """
    if isinstance(mask, dict):
        arrs = [as_array(m, f"mask[{k!r}]") for k, m in mask.items()]
        total = sum(a.size for a in arrs)
        return float(sum(np.count_nonzero(a == 0) for a in arrs)) / total if total else 0.0
    a = as_array(mask, "mask")
    return float(np.count_nonzero(a == 0)) / a.size if a.size else 0.0
