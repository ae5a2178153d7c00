"""Wanda pruning of a weight from its scores: per-row unstructured or N:M.

Scores come from :func:`refquant.prune.scores.wanda` (all calibration rows at
once) or :class:`refquant.prune.scores.WandaRowScalars` (streamed batches).
"""

from __future__ import annotations

import numpy as np

from .._errors import RefquantError
from ._arrays import check_prune_nm

__all__ = ["wanda_prune"]


def wanda_prune(w, scores, *, sparsity=0.5, prune_n=0, prune_m=0):
    """Zero the lowest-scoring weights of every row; returns ``(pruned weight, mask)``.

    Parameters
    ----------
    w : array_like (out, in)
    scores : array_like (out, in)
        Wanda scores, larger = more important.
    sparsity : float
        Unstructured: ``floor(in * sparsity)`` weights pruned in every row.
    prune_n, prune_m : int
        N:M: ``prune_n`` lowest of every ``prune_m`` consecutive weights of a row
        (a partial last group prunes ``min(prune_n, its width)``).

    Formula
    -------
    :math:`M_{ij} = [\\,\\mathrm{rank}_j(S_{i\\cdot}) < \\lfloor c \\cdot s \\rfloor\\,]`
    (ascending rank, comparison within each row).

    Reference
    ---------
    Sun et al. 2023 (per-output comparison group); llmcompressor 0.14.0.1
    ``wanda_sparsify.sparsify_weight``: ``torch.sort(stable=True)`` per row, so ties
    prune the lower column first, as here; N:M by ``torch.topk(largest=False)``
    (tie order unspecified; here the lower column). The mask is True where pruned.
    """
    wa = np.asarray(w)
    s = np.asarray(scores, dtype=np.float64)
    if wa.ndim != 2 or s.shape != wa.shape:
        raise RefquantError(
            f"scores has shape {s.shape} and w has shape {wa.shape}; expected the same 2-D shape"
        )
    if np.isnan(s).any():
        raise RefquantError("scores contain NaN; expected real scores")
    check_prune_nm(prune_n, prune_m)
    mask = np.zeros(wa.shape, bool)
    if prune_n:
        for c in range(0, wa.shape[1], prune_m):
            blk = s[:, c:c + prune_m]
            idx = np.argsort(blk, axis=1, kind="stable")[:, :prune_n]
            np.put_along_axis(mask[:, c:c + prune_m], idx, True, axis=1)
    else:
        if not (isinstance(sparsity, (int, float)) and 0 <= sparsity <= 1):
            raise RefquantError(f"sparsity must be a number in [0, 1], got {sparsity!r}")
        k = int(wa.shape[1] * sparsity)
        idx = np.argsort(s, axis=1, kind="stable")[:, :k]
        np.put_along_axis(mask, idx, True, axis=1)
    out = np.where(mask, np.zeros((), wa.dtype), wa)
    return out, mask
