"""The founding article's weight pruning recipe, and what its PyTorch snippet does instead.

The article (a Chinese overview of model optimisation and acceleration, section
3.2.1 "权重剪枝", weight pruning) gives three steps:

1. normalise the weights to [-1, 1] (对模型的权重进行归一化，使其取值在[-1, 1]之间);
2. compute each weight's importance, "usually with L1 or L2 regularisation"
   (计算每个权重的重要性，通常使用L1或L2正则化来衡量);
3. delete the weights of lowest importance (删除重要性最低的权重).

:func:`article_weight_pruning` does exactly that. Its section 4.2 then shows
this PyTorch code::

    parameters = model.parameters()
    importance = torch.sum(parameters, dim=0)
    threshold = 0.1
    unimportant = torch.where(importance < threshold, parameters, torch.zeros_like(parameters))
    model.weight.data = unimportant

which does not implement the recipe:

* ``model.parameters()`` is a *generator*; ``torch.sum`` of it raises
  ``TypeError`` (the snippet never runs);
* even with ``parameters = model.weight``, ``torch.sum(w, dim=0)`` is the
  signed *sum* of each column, not an L1 or L2 norm, and no normalisation
  happens: weights +0.5 and -0.5 in a column cancel to an "importance" of 0;
* ``torch.where(importance < threshold, parameters, 0)`` **keeps** the weights
  whose importance is *below* 0.1, the unimportant ones, and zeroes the
  important ones (the variable is even named ``unimportant``); the threshold
  0.1 is absolute, so how much is pruned depends on the weights' scale, not on
  a chosen amount.

:func:`article_snippet_as_written` reproduces that behaviour on NumPy arrays
(with ``parameters`` taken as the weight matrix, the only reading under which
the snippet runs), so the tutorial can show the difference.
"""

from __future__ import annotations

import numbers

import numpy as np

from .._errors import RefquantError
from ._arrays import as_array, is_choice
from .masks import apply_mask, unstructured_mask
from .scores import ln_norm

__all__ = ["article_weight_pruning", "article_snippet_as_written"]


def article_weight_pruning(w, amount, *, norm="l1", axis=None, rule="torch"):
    """The article's recipe: normalise to [-1, 1], score by L1 or L2, drop the lowest.

    Parameters
    ----------
    w : array_like
        Weights.
    amount : int or float
        Count or fraction of weights (or of units, with ``axis``) to drop; a
        fraction becomes a count by ``rule`` (default torch's round half to even).
    norm : {"l1", "l2"}
        Importance measure: :math:`|\\hat w|` or :math:`\\hat w^2` per weight
        (identical rankings: with ``axis=None`` the choice cannot change the
        mask), or the L1 / L2 norm of each unit with ``axis``.
    axis : int or None
        ``None``: every weight is scored alone (the article's "每个权重").
        An int: whole units along ``axis`` are scored by their norm over the
        other axes and dropped together.
    rule : str
        Count rule, see :func:`refquant.prune.masks.prune_count`.

    Returns
    -------
    (pruned, mask) : the weights in their original scale with dropped entries
        set to 0, and the boolean keep-mask.

    Formula
    -------
    :math:`\\hat w = w / \\max|w|` (into [-1, 1]; an all-zero ``w`` stays 0);
    importance :math:`\\|\\hat w_u\\|_1` or :math:`\\|\\hat w_u\\|_2^2`; drop the
    :math:`k` lowest (ties: the lower index first). The normalisation is a
    positive scaling and changes no ranking; it is kept because the article
    prescribes it.

    Reference
    ---------
    The founding article, section 3.2.1 (权重剪枝): steps 1-3 and
    :math:`x_{prune} = x_{orig} - x_{unimportant}`.
    """
    w = as_array(w, "w")
    if w.dtype.kind not in "biuf" or w.size == 0:
        raise RefquantError(f"w must be a non-empty real array, got dtype {w.dtype}, shape {w.shape}")
    if not is_choice(norm, ("l1", "l2")):
        raise RefquantError(f"norm must be 'l1' or 'l2', got {norm!r}")
    wf = w.astype(np.float64)
    peak = np.max(np.abs(wf))
    w_hat = wf / peak if peak > 0 else wf
    if axis is None:
        imp = np.abs(w_hat) if norm == "l1" else w_hat * w_hat
        mask = unstructured_mask(imp, amount, rule=rule)
    else:
        imp = ln_norm(w_hat, 1 if norm == "l1" else 2, axis=axis)
        if norm == "l2":
            imp = imp * imp
        unit_mask = unstructured_mask(imp, amount, rule=rule)
        shape = [1] * w.ndim
        shape[axis] = -1
        mask = np.broadcast_to(unit_mask.reshape(shape), w.shape).copy()
    return apply_mask(w, mask), mask


def article_snippet_as_written(w, threshold=0.1):
    """What the article's PyTorch pruning snippet computes, with ``parameters = model.weight``.

    Parameters
    ----------
    w : array_like, shape (out, in)
        A ``torch.nn.Linear`` weight.
    threshold : float
        The snippet's 0.1.

    Returns
    -------
    numpy.ndarray : ``w`` with every column whose signed sum is **at least**
    ``threshold`` zeroed, the rest (the "unimportant" columns) kept.

    Formula
    -------
    :math:`c_j = \\sum_i w_{ij}` (``torch.sum(w, dim=0)``);
    :math:`w'_{ij} = w_{ij}` if :math:`c_j < \\tau` else 0
    (``torch.where(importance < threshold, parameters, zeros)``, ``importance``
    broadcast along the rows).

    Reference
    ---------
    The founding article, section 4.2 (剪枝代码实例). As written it raises
    ``TypeError`` (``torch.sum`` of the generator ``model.parameters()``).
    """
    w = as_array(w, "w")
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise RefquantError(f"threshold must be a real number, got {threshold!r:.60}")
    if w.ndim != 2:
        raise RefquantError(f"w must be a 2-D (out, in) weight, got shape {w.shape}")
    importance = np.sum(w, axis=0)
    return np.where(importance[None, :] < threshold, w, np.zeros((), dtype=w.dtype))
