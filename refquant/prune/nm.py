"""N:M semi-structured sparsity, transposable N:M masks and block sparsity.

Every mask here is a boolean array, ``True`` where a weight is **kept**.

The peers' naming clash
-----------------------
"N:M" means different things in different code bases; refquant therefore takes
two explicit keywords, ``keep=`` (non-zeros per group) and ``group=`` (group
length), and converts each peer's spelling with :func:`nm_keywords`:

================================  =================  ===========================
peer spelling                     meaning            refquant keywords
================================  =================  ===========================
NVIDIA / apex ASP ``"2:4"``,      keep N of M        ``keep=2, group=4``
``m4n2_1d`` (M=4, N=2 kept)
PyTorch semi-structured (2:4)     keep 2 of 4        ``keep=2, group=4``
wanda ``--sparsity_type 1:4``     prune_n = 1 pruned ``keep=3, group=4``
(``prune_n, prune_m``)            of prune_m
tfmot ``sparsity_m_by_n=(1, 4)``  m zeros in every   ``keep=3, group=4``
                                  n consecutive
================================  =================  ===========================

Only for N = M/2 ("2:4") do the three agree. wanda (locuslab/wanda
``lib/prune.py``, ``prune_wanda``) marks ``torch.topk(tmp, prune_n, largest=False)``
of each ``prune_m`` columns as pruned, so its N counts zeros; tfmot
(``pruning_utils.generate_m_by_n_mask``) keeps ``n - m`` values by
``tf.math.top_k`` and asserts ``m < n`` (so (4, 4) is refused), pads a partial
last group with zeros, and works on the TFLite layout ``(C_out, ..., C_in)``
(groups along the input channels).

Ties
----
The default ``tie_break="lower_index_pruned"`` follows refquant's rule (a stable
ascending sort: among equal scores the element with the lower index is pruned
first). ``"lower_index_kept"`` is the rule of ``tf.math.top_k`` ("if two
elements are equal, the lower-index element appears first") and of torch's
``_sparse_semi_structured_tile`` (a stable descending sort). ``torch.topk``
documents no tie rule.
"""

from __future__ import annotations

import itertools
import operator
from math import comb

import numpy as np

from .._core.granularity import normalize_axis, positive_int
from .._errors import RefquantError
from ._arrays import as_array, is_choice

__all__ = [
    "nm_keywords",
    "nm_mask",
    "is_nm_sparse",
    "transposable_nm_mask",
    "valid_2d_patterns",
    "block_scores",
    "block_mask",
]

_TIE_BREAKS = ("lower_index_pruned", "lower_index_kept")


# --------------------------------------------------------------------------- helpers


def _as_scores(x, name: str) -> np.ndarray:
    a = as_array(x, name)
    if a.dtype == np.bool_ or a.dtype.kind in "OSUMmc":
        raise RefquantError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    if a.size == 0:
        raise RefquantError(f"{name} is empty (shape {a.shape}); expected at least one element")
    a = a.astype(np.float64)
    if np.isnan(a).any():
        raise RefquantError(
            f"{name} holds {int(np.isnan(a).sum())} NaN value(s); scores must be ordered"
        )
    return a


def _check_nm(keep, group) -> tuple[int, int]:
    g = positive_int(group, "group")
    try:
        n = operator.index(keep)
    except TypeError:
        raise RefquantError(f"keep must be an integer in [0, group], got {keep!r}") from None
    if not 0 <= n <= g:
        raise RefquantError(f"keep={n} must lie in [0, group={g}] (keep is the count of non-zeros)")
    return n, g


def _check_tie_break(tie_break: str) -> str:
    if not is_choice(tie_break, _TIE_BREAKS):
        raise RefquantError(f"tie_break must be one of {_TIE_BREAKS}, got {tie_break!r}")
    return tie_break


def _order_ascending(values: np.ndarray, tie_break: str) -> np.ndarray:
    """Indices along the last axis from least to most important, ties resolved.

    ``lower_index_pruned``: stable ascending sort (equal values: lower index first,
    so it is pruned first). ``lower_index_kept``: the reverse of a stable
    descending sort (equal values: higher index first in the ascending order).
    """
    if tie_break == "lower_index_pruned":
        return np.argsort(values, axis=-1, kind="stable")
    rev = values[..., ::-1]
    order = np.argsort(rev, axis=-1, kind="stable")
    return values.shape[-1] - 1 - order


def nm_keywords(spec, convention: str) -> dict:
    """A peer's N:M spelling as refquant's explicit ``keep=``, ``group=`` keywords.

    Parameters
    ----------
    spec : str or tuple of two ints
        ``"2:4"`` or ``(2, 4)`` as the peer writes it.
    convention : {"nvidia", "apex", "torch", "wanda", "tfmot"}
        Whose meaning of the two numbers: ``nvidia`` / ``apex`` / ``torch`` (first
        number = kept), ``wanda`` (first number = pruned: ``prune_n``), ``tfmot``
        (first number = zeros: ``sparsity_m_by_n=(m, n)``, which also requires
        ``m < n``).

    Returns
    -------
    dict
        ``{"keep": N_kept, "group": M}``.

    Formula
    -------
    .. math:: \\text{keep} = \\begin{cases} a & \\text{nvidia, apex, torch} \\\\
              b - a & \\text{wanda, tfmot} \\end{cases},\\quad \\text{group} = b

    Reference
    ---------
    NVIDIA apex ``apex/contrib/sparsity/sparse_masklib.py`` (``m4n2_1d``: m = 4
    group, n = 2 kept); locuslab/wanda ``lib/prune.py`` (``prune_n`` smallest of
    each ``prune_m`` are masked); tensorflow/model-optimization
    ``pruning_utils.generate_m_by_n_mask`` ("m zeros in every n consecutive
    values, m must be smaller than n").
    """
    if isinstance(spec, str):
        parts = spec.split(":")
        if len(parts) != 2:
            raise RefquantError(f"spec {spec!r} must look like 'N:M'")
        try:
            a, b = int(parts[0]), int(parts[1])
        except ValueError:
            raise RefquantError(f"spec {spec!r} must look like 'N:M' with integers") from None
    else:
        try:
            a, b = (operator.index(v) for v in spec)
        except (TypeError, ValueError):
            raise RefquantError(f"spec must be 'N:M' or a pair of ints, got {spec!r}") from None
    b = positive_int(b, "spec group size")
    if not 0 <= a <= b:
        raise RefquantError(f"spec {spec!r}: the first number must lie in [0, {b}]")
    if convention in ("nvidia", "apex", "torch"):
        keep = a
    elif convention == "wanda":
        keep = b - a
    elif convention == "tfmot":
        if not a < b:
            raise RefquantError(f"tfmot sparsity_m_by_n {spec!r} needs m < n (tfmot asserts it)")
        keep = b - a
    else:
        raise RefquantError(
            f"convention must be one of 'nvidia', 'apex', 'torch', 'wanda', 'tfmot', got {convention!r}"
        )
    return {"keep": keep, "group": b}


# --------------------------------------------------------------------------- 1-D N:M


def nm_mask(scores, *, keep: int, group: int, axis: int = -1,
            tie_break: str = "lower_index_pruned") -> np.ndarray:
    """Keep the ``keep`` highest scores in every ``group`` consecutive elements along ``axis``.

    Parameters
    ----------
    scores : array_like
        Importance of each weight (pass ``abs(w)`` for magnitude N:M, or a Wanda
        score). NaN is refused.
    keep, group : int
        N (non-zeros kept per group) and M (group length); ``0 <= keep <= group``.
    axis : int
        Axis along which the groups run (consecutive elements). Its length must
        be a multiple of ``group``.
    tie_break : {"lower_index_pruned", "lower_index_kept"}
        Among equal scores inside a group, which is pruned first.

    Returns
    -------
    numpy.ndarray of bool, same shape as ``scores``: True where kept.

    Formula
    -------
    For group :math:`G_j = \\{jM, \\dots, jM+M-1\\}` along the axis,

    .. math:: \\text{mask}_i = [\\, \\operatorname{rank}_{G_j}(s_i) \\ge M - N \\,]

    where rank is the position in the tie-broken ascending order (0 = least
    important); exactly N elements per group are kept.

    Reference
    ---------
    Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks" (2:4); apex
    ``mn_1d_best`` (argmax of :math:`|w| \\cdot p` over all patterns, equal to the
    top-N on tie-free input); wanda ``prune_wanda`` with ``prune_n = M - N``.
    """
    s = _as_scores(scores, "scores")
    n, m = _check_nm(keep, group)
    _check_tie_break(tie_break)
    ax = normalize_axis(axis, s.ndim)
    length = s.shape[ax]
    if length % m:
        raise RefquantError(
            f"length {length} of axis {ax} of scores (shape {s.shape}) is not a multiple of group={m}"
        )
    moved = np.moveaxis(s, ax, -1)
    g = moved.reshape(*moved.shape[:-1], length // m, m)
    order = _order_ascending(g, tie_break)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(m), axis=-1)
    keep_mask = ranks >= m - n
    return np.moveaxis(keep_mask.reshape(moved.shape), -1, ax)


def is_nm_sparse(x, *, keep: int, group: int, axis: int = -1) -> bool:
    """Whether every group of ``group`` consecutive elements along ``axis`` has at most ``keep`` non-zeros.

    Formula
    -------
    .. math:: \\forall j:\\ \\#\\{i \\in G_j : x_i \\ne 0\\} \\le N

    Reference
    ---------
    tfmot ``pruning_utils.is_pruned_m_by_n`` (at least m zeros per n) and
    compressed-tensors ``tensor_follows_mask_structure``; NaN counts as non-zero.
    """
    a = as_array(x, "x")
    n, m = _check_nm(keep, group)
    if a.ndim == 0:
        raise RefquantError("x must have at least one dimension")
    ax = normalize_axis(axis, a.ndim)
    if a.shape[ax] % m:
        raise RefquantError(f"length {a.shape[ax]} of axis {ax} is not a multiple of group={m}")
    moved = np.moveaxis(a != 0, ax, -1)
    g = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
    return bool((g.sum(axis=-1) <= n).all())


# --------------------------------------------------------------------------- transposable 2-D N:M


def valid_2d_patterns(keep: int = 2, group: int = 4) -> np.ndarray:
    """Every M×M 0/1 tile whose rows and columns each keep exactly N, in a documented order.

    Returns an array of shape (P, M, M) of bool. The order is ascending
    lexicographic order of the row-major flattened tile read as a 0/1 tuple, so
    the first patterns keep the **later** positions; :func:`transposable_nm_mask`
    takes the first pattern of maximal score, which on ties prunes lower indices
    first. For (2, 4) there are 90 patterns.

    Formula
    -------
    .. math:: \\mathcal{P} = \\{P \\in \\{0,1\\}^{M\\times M} : P\\mathbf{1} = N\\mathbf{1},\\ \\mathbf{1}^T P = N\\mathbf{1}^T\\}

    Reference
    ---------
    apex ``compute_valid_2d_patterns(m, n)``: rows drawn from the
    :math:`\\binom{M}{N}` 1-D patterns, kept when every column sum is :math:`\\le N`
    (which, with N per row, means exactly N). apex's own order comes from a
    Python ``set`` of permutations and is not documented.
    """
    n, m = _check_nm(keep, group)
    rows = [r for r in itertools.product((0, 1), repeat=m) if sum(r) == n]
    if comb(m, n) ** m > 2_000_000:
        raise RefquantError(
            f"exhaustive search over {comb(m, n)}**{m} row combinations for keep={n}, group={m} is too large"
        )
    pats = [
        p for p in itertools.product(rows, repeat=m)
        if all(sum(r[c] for r in p) == n for c in range(m))
    ]
    arr = np.array(pats, dtype=bool).reshape(-1, m, m)
    keys = [tuple(p.ravel().astype(int)) for p in arr]
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return arr[order]


def transposable_nm_mask(scores, *, keep: int = 2, group: int = 4, method: str = "greedy",
                         tie_break: str = "lower_index_pruned") -> np.ndarray:
    """A 2-D mask in which every row and every column of each M×M tile keeps at most N.

    Such a mask stays N:M along the rows after transposition (apex ASP's "2d"
    masks, for the transposed weight of the backward pass).

    Parameters
    ----------
    scores : array_like, 2-D
        Importance (``abs(w)`` for apex). Both dimensions must be multiples of
        ``group`` (apex leaves partial tiles dense in its greedy search and fails
        on them in the exhaustive one; refquant refuses them).
    keep, group : int
        N and M.
    method : {"greedy", "exhaustive"}
        ``greedy`` (apex ``mn_2d_greedy``): visit a tile's elements from the
        largest score down, keep one when its row and its column hold fewer than N
        kept; it can stop with fewer than N in a row. ``exhaustive`` (apex
        ``mn_2d_best``): the pattern of :func:`valid_2d_patterns` with the
        largest sum of kept scores (exactly N per row and column).
    tie_break : {"lower_index_pruned", "lower_index_kept"}
        Greedy: the visiting order among equal scores (``lower_index_kept`` is
        torch's ``_sparse_semi_structured_tile``: a stable descending sort).
        Exhaustive: ``lower_index_pruned`` takes the first maximum in the
        documented pattern order; ``lower_index_kept`` the last.

    Returns
    -------
    numpy.ndarray of bool, same shape as ``scores``.

    Formula
    -------
    Exhaustive, per tile :math:`T`: :math:`P^* = \\arg\\max_{P \\in \\mathcal{P}} \\sum_{ij} T_{ij} P_{ij}`.
    Greedy: for :math:`(i, j)` in decreasing :math:`T_{ij}`, keep if
    :math:`r_i < N` and :math:`c_j < N`, then increment :math:`r_i, c_j`.

    Reference
    ---------
    NVIDIA apex ``apex/contrib/sparsity/sparse_masklib.py``: ``m4n2_2d_greedy``,
    ``m4n2_2d_best``, ``compute_valid_2d_patterns``. apex's greedy uses
    ``np.argsort`` (quicksort, not stable), so on ties its order is unspecified;
    on tie-free input both methods give apex's mask.
    """
    s = _as_scores(scores, "scores")
    n, m = _check_nm(keep, group)
    _check_tie_break(tie_break)
    if s.ndim != 2:
        raise RefquantError(f"scores must be 2-D for a transposable mask, got shape {s.shape}")
    r, c = s.shape
    if r % m or c % m:
        raise RefquantError(f"scores shape {s.shape}: both dimensions must be multiples of group={m}")
    tiles = s.reshape(r // m, m, c // m, m).transpose(0, 2, 1, 3).reshape(-1, m * m)
    if method == "greedy":
        out = _greedy_tiles(tiles, n, m, tie_break)
    elif method == "exhaustive":
        pats = valid_2d_patterns(n, m).reshape(-1, m * m)
        # float64 sums: totals that are equal in exact arithmetic but round
        # differently are not ties (exact for integer-valued scores)
        totals = tiles @ pats.T.astype(np.float64)
        if tie_break == "lower_index_pruned":
            best = np.argmax(totals, axis=1)
        else:
            best = totals.shape[1] - 1 - np.argmax(totals[:, ::-1], axis=1)
        out = pats[best]
    else:
        raise RefquantError(f"method must be 'greedy' or 'exhaustive', got {method!r}")
    return out.reshape(r // m, c // m, m, m).transpose(0, 2, 1, 3).reshape(r, c)


def _greedy_tiles(tiles: np.ndarray, n: int, m: int, tie_break: str) -> np.ndarray:
    """Greedy row/column-capped selection on each flattened M×M tile (rows of ``tiles``)."""
    order = _order_ascending(tiles, tie_break)[:, ::-1]  # most important first
    out = np.zeros(tiles.shape, dtype=bool)
    for t in range(tiles.shape[0]):
        rows = [0] * m
        cols = [0] * m
        for flat in order[t]:
            i, j = divmod(int(flat), m)
            if rows[i] < n and cols[j] < n:
                out[t, flat] = True
                rows[i] += 1
                cols[j] += 1
    return out


# --------------------------------------------------------------------------- block sparsity


def block_scores(weights, block: tuple[int, int], pooling: str = "avg") -> np.ndarray:
    """Pool ``|w|`` over non-overlapping blocks of a 2-D tensor (tfmot's block pruning).

    Parameters
    ----------
    weights : array_like, 2-D
    block : (int, int)
        Block height and width; a partial last block (shape not a multiple) is
        pooled over its valid elements only (TensorFlow's ``SAME`` padding).
    pooling : {"avg", "max"}

    Returns
    -------
    numpy.ndarray of float64, shape ``(ceil(R/bh), ceil(C/bw))``.

    Formula
    -------
    .. math:: S_{IJ} = \\operatorname{avg\\ or\\ max}_{(i,j) \\in B_{IJ}} |w_{ij}|

    Reference
    ---------
    tfmot ``pruning_impl.Pruning._maybe_update_block_mask`` with
    ``pruning_utils.factorized_pool(abs_weights, window_shape=block_size,
    pooling_type='AVG'|'MAX', strides=block_size, padding='SAME')``: a 1×bh
    pool then a 1×bw pool; TensorFlow's SAME average excludes the padding from
    the count, which is the same as the mean over the valid elements. The two
    float32 stages of TF may round differently from this float64 mean.
    """
    w = _as_scores(weights, "weights")
    if w.ndim != 2:
        raise RefquantError(f"weights must be 2-D for block sparsity (as in tfmot), got shape {w.shape}")
    try:
        bh, bw = (positive_int(b, "block") for b in block)
    except TypeError:
        raise RefquantError(f"block must be a pair of positive integers, got {block!r}") from None
    if not is_choice(pooling, ("avg", "max")):
        raise RefquantError(f"pooling must be 'avg' or 'max', got {pooling!r}")
    a = np.abs(w)
    r, c = a.shape
    rb, cb = -(-r // bh), -(-c // bw)
    pad = np.full((rb * bh, cb * bw), np.nan)
    pad[:r, :c] = a
    tiles = pad.reshape(rb, bh, cb, bw)
    if pooling == "max":
        return np.nanmax(tiles, axis=(1, 3))
    return np.nansum(tiles, axis=(1, 3)) / (~np.isnan(tiles)).sum(axis=(1, 3))


def block_mask(weights, block: tuple[int, int], sparsity: float, *, pooling: str = "avg",
               ties: str = "stable") -> np.ndarray:
    """tfmot's block-sparse magnitude mask: prune whole blocks of lowest pooled ``|w|``.

    Parameters
    ----------
    weights : array_like, 2-D
    block : (int, int)
        Block shape; ``(1, 1)`` is element-wise magnitude pruning.
    sparsity : float in [0, 1]
        Target fraction of blocks pruned. tfmot's count rule: keep
        :math:`k = \\max(\\operatorname{round}(B(1-s)), 1)` blocks, with
        round-half-even (``tf.math.round``) and :math:`B` the number of blocks.
    pooling : {"avg", "max"}
    ties : {"stable", "threshold"}
        ``stable``: exactly k blocks kept, lower flat block index pruned first
        among equal scores. ``threshold``: tfmot's rule, keep every block whose
        score is ``>=`` the k-th largest (more than k on ties).

    Returns
    -------
    numpy.ndarray of bool, shape of ``weights``: True where kept.

    Formula
    -------
    .. math:: k = \\max(\\lfloor B(1-s) \\rceil_{\\text{even}}, 1),\\quad
              M_{ij} = [\\,S_{\\lfloor i/b_h\\rfloor \\lfloor j/b_w\\rfloor}\\ \\text{among the top } k\\,]

    Reference
    ---------
    tfmot ``pruning_impl.Pruning._update_mask`` (the threshold is the k-th value
    of ``tf.math.top_k``; ``mask = abs >= threshold``) and
    ``pruning_utils.expand_tensor`` (Kronecker product with ones, then sliced to
    the weight shape).
    """
    sc = block_scores(weights, block, pooling)
    try:
        sp = float(sparsity)
    except (TypeError, ValueError, OverflowError):
        raise RefquantError(f"sparsity must be a float in [0, 1], got {sparsity!r:.60}") from None
    if not 0.0 <= sp <= 1.0:
        raise RefquantError(f"sparsity must lie in [0, 1], got {sp}")
    if not is_choice(ties, ("stable", "threshold")):
        raise RefquantError(f"ties must be 'stable' or 'threshold', got {ties!r}")
    nb = sc.size
    # tfmot computes size * (1 - sparsity) in float32 and rounds half to even
    k = max(int(np.round(np.float32(nb) * (np.float32(1.0) - np.float32(sp)))), 1)
    flat = sc.ravel()
    if ties == "threshold":
        thr = np.sort(flat)[::-1][k - 1]
        kept = flat >= thr
    else:
        order = np.argsort(flat, kind="stable")
        kept = np.zeros(nb, dtype=bool)
        kept[order[nb - k:]] = True
    bm = kept.reshape(sc.shape)
    bh, bw = (int(b) for b in block)
    w = np.asarray(weights)
    return np.kron(bm, np.ones((bh, bw), dtype=bool))[: w.shape[0], : w.shape[1]]
