"""Layer (depth) pruning: how much each whole block matters, and which blocks to drop.

Three criteria:

* **ablation** — drop each block (or each candidate set of blocks) and measure
  a held-out metric through a user-supplied ``evaluate(skip=...)``; the
  founding article's "cross-validation" criterion for layer pruning.
* **Block Influence** (ShortGPT, Men et al. 2024) from recorded hidden states:
  :math:`BI_i = 1 - \\mathbb{E}_t \\cos(x_i^{(t)}, x_{i+1}^{(t)})`.
* **angular distance** (Gromov et al. 2024, "The Unreasonable Ineffectiveness
  of the Deeper Layers"): :math:`d(x^\\ell, x^{\\ell+n}) = \\arccos(\\cos)/\\pi`
  on the last token, for every span of n blocks; the span with the smallest
  distance is the one to drop.

``hidden`` is always the list of L+1 hidden states: the input of block 0, then
the output of each block (what ``refquant.models.digits_mlp_forward(...,
return_hidden=True)`` returns). Each state is (tokens, d) or (batch, seq, d).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np

from .._core.granularity import positive_int
from .._errors import RefquantError

__all__ = [
    "LayerAblation",
    "ablation_importance",
    "block_influence",
    "angular_distances",
    "choose_layers_to_drop",
    "choose_span_to_drop",
]


@dataclass
class LayerAblation:
    """Result of :func:`ablation_importance`.

    baseline : metric with nothing skipped
    candidates : list of tuples of block indices that were skipped
    metrics : metric with each candidate skipped
    importance : loss of metric caused by skipping each candidate
        (``baseline - metric`` when higher is better, else ``metric - baseline``)
    """

    baseline: float
    candidates: list
    metrics: np.ndarray
    importance: np.ndarray


def _progress(progress, total):
    """A (update, close) pair: tqdm bar, user callback(done, total), or nothing."""
    if progress is None or progress is False:
        return (lambda done: None), (lambda: None)
    if callable(progress):
        return (lambda done: progress(done, total)), (lambda: None)
    if progress is True:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # tqdm is optional: no bar, no print
            return (lambda done: None), (lambda: None)
        bar = tqdm(total=total, desc="layer ablation", leave=False)
        return (lambda done: bar.update(1)), bar.close
    raise RefquantError(f"progress must be None, True (tqdm) or a callable(done, total), got {progress!r}")


def ablation_importance(n_layers: int, evaluate, *, candidates=None, higher_is_better: bool = True,
                        progress=None) -> LayerAblation:
    """Importance of each block as the metric lost when it is skipped.

    Parameters
    ----------
    n_layers : int
        Number of blocks; the default candidates are ``(0,), (1,), …``.
    evaluate : callable
        ``evaluate(skip=tuple_of_block_indices) -> float``, the metric on held-out
        data with those blocks skipped (``skip=()`` is the full model). Called
        ``len(candidates) + 1`` times.
    candidates : iterable of iterables of int, optional
        Sets of blocks to skip together (e.g. contiguous spans).
    higher_is_better : bool
        True for accuracy, False for a loss or perplexity.
    progress : None, True or callable
        True shows a tqdm bar when tqdm is installed (silently nothing when not);
        a callable is called as ``progress(done, total)`` after each evaluation.
        Nothing is printed.

    Returns
    -------
    LayerAblation

    Formula
    -------
    .. math:: I_S = \\begin{cases} f(\\varnothing) - f(S) & \\text{higher is better} \\\\
              f(S) - f(\\varnothing) & \\text{else} \\end{cases}

    Reference
    ---------
    Ablation ("leave one block out") as in Gromov et al. 2024 §3 and
    ShortGPT's layer-removal baselines; the founding article's validation
    ("cross-validation") criterion for layer pruning.
    """
    n = positive_int(n_layers, "n_layers")
    if not callable(evaluate):
        raise RefquantError(f"evaluate must be callable as evaluate(skip=...), got {evaluate!r}")
    if candidates is None:
        cands = [(i,) for i in range(n)]
    else:
        cands = []
        for c in candidates:
            t = tuple(int(operator.index(i)) for i in (c if np.ndim(c) else [c]))
            bad = [i for i in t if not 0 <= i < n]
            if bad or not t:
                raise RefquantError(f"candidate {c!r} must name blocks in [0, {n}), got {t}")
            cands.append(t)
    update, close = _progress(progress, len(cands) + 1)
    try:
        base = float(evaluate(skip=()))
        update(1)
        vals = []
        for j, c in enumerate(cands):
            vals.append(float(evaluate(skip=c)))
            update(j + 2)
    finally:
        close()
    vals = np.asarray(vals, dtype=np.float64)
    if np.isnan(vals).any() or np.isnan(base):
        raise RefquantError("evaluate returned NaN; ablation scores must be ordered")
    imp = base - vals if higher_is_better else vals - base
    return LayerAblation(base, cands, vals, imp)


def _states(hidden, name: str = "hidden") -> list[np.ndarray]:
    try:
        hs = [np.asarray(h, dtype=np.float64) for h in hidden]
    except (TypeError, ValueError):
        raise RefquantError(f"{name} must be a list of arrays of equal shape") from None
    if len(hs) < 2:
        raise RefquantError(f"{name} must hold at least 2 hidden states (L+1 for L blocks), got {len(hs)}")
    shp = hs[0].shape
    for i, h in enumerate(hs):
        if h.shape != shp:
            raise RefquantError(f"{name}[{i}] has shape {h.shape}, but {name}[0] has shape {shp}")
        if h.ndim not in (2, 3) or h.size == 0:
            raise RefquantError(f"{name}[{i}] must be a non-empty (tokens, d) or (batch, seq, d) array, got {h.shape}")
        if np.isnan(h).any():
            raise RefquantError(f"{name}[{i}] holds NaN")
    return hs


def _cosine(a: np.ndarray, b: np.ndarray, zero_cos: float) -> np.ndarray:
    """Row-wise cosine; a zero vector (0/0) gives ``zero_cos`` (ShortGPT's nan_to_num(0.5))."""
    num = (a * b).sum(axis=-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = num / den
    return np.where(den == 0, zero_cos, cos)


def block_influence(hidden, *, zero_cos: float = 0.5) -> np.ndarray:
    """ShortGPT's Block Influence of each block from its input and output hidden states.

    Parameters
    ----------
    hidden : list of L+1 arrays, each (tokens, d) or (batch, seq, d)
    zero_cos : float
        Cosine used when a state is the zero vector; 0.5 is what the public
        ShortGPT code does (``sim.nan_to_num(nan=0.5)``).

    Returns
    -------
    numpy.ndarray (L,), float64: higher means the block changes its input more.

    Formula
    -------
    .. math:: BI_i = 1 - \\frac{1}{T}\\sum_{t=1}^{T}
              \\frac{x_{i,t}^T x_{i+1,t}}{\\lVert x_{i,t}\\rVert_2 \\lVert x_{i+1,t}\\rVert_2}

    over every token t of every sample.

    Reference
    ---------
    Men et al. 2024, "ShortGPT: Layers in Large Language Models are More
    Redundant Than You Expect", eq. 1; ``block_influence`` in the public
    reproduction (sramshetty/ShortGPT ``metrics.py``), which sums per batch;
    this is the mean over all tokens.
    """
    hs = _states(hidden)
    d = hs[0].shape[-1]
    out = []
    for x_in, x_out in zip(hs[:-1], hs[1:], strict=True):
        cos = _cosine(x_in.reshape(-1, d), x_out.reshape(-1, d), zero_cos)
        out.append(1.0 - cos.mean())
    return np.asarray(out)


def angular_distances(hidden, n: int, *, token: int | None = -1, zero_cos: float = 0.5) -> np.ndarray:
    """Gromov et al.'s angular distance between the input of block ℓ and the output of block ℓ+n-1.

    Parameters
    ----------
    hidden : list of L+1 arrays
    n : int
        Span length (number of blocks that would be dropped), 1 <= n <= L.
    token : int or None
        For (batch, seq, d) states, the token position used (``-1``: the last
        token, as in the paper); ``None`` averages over all tokens. (tokens, d)
        states are one token per sample.
    zero_cos : float
        Cosine for a zero vector.

    Returns
    -------
    numpy.ndarray (L - n + 1,): entry ℓ is the mean distance for dropping blocks
    ℓ … ℓ+n-1.

    Formula
    -------
    .. math:: d(x^{\\ell}, x^{\\ell+n}) = \\frac{1}{\\pi}\\arccos\\left(
              \\frac{x^{\\ell} \\cdot x^{\\ell+n}}{\\lVert x^{\\ell}\\rVert \\lVert x^{\\ell+n}\\rVert}\\right)

    averaged over samples; the cosine is clipped to [-1, 1] before arccos.

    Reference
    ---------
    Gromov, Tirumala, Shapourian, Glorioso, Roberts 2024, "The Unreasonable
    Ineffectiveness of the Deeper Layers", eq. (7) and Algorithm 1 step 2.
    """
    hs = _states(hidden)
    L = len(hs) - 1
    try:
        nn = operator.index(n)
    except TypeError:
        raise RefquantError(f"n must be an integer in [1, {L}], got {n!r}") from None
    if not 1 <= nn <= L:
        raise RefquantError(f"n={nn} must lie in [1, {L}] (the number of blocks)")
    d = hs[0].shape[-1]
    if hs[0].ndim == 3 and token is not None:
        seq = hs[0].shape[1]
        if not -seq <= token < seq:
            raise RefquantError(f"token {token} is out of range for sequence length {seq}")
        hs = [h[:, token, :] for h in hs]
    out = []
    for ell in range(L - nn + 1):
        cos = _cosine(hs[ell].reshape(-1, d), hs[ell + nn].reshape(-1, d), zero_cos)
        out.append(np.mean(np.arccos(np.clip(cos, -1.0, 1.0)) / np.pi))
    return np.asarray(out)


def choose_layers_to_drop(importance, n: int) -> np.ndarray:
    """The ``n`` least important blocks (sorted indices); ties: the lower index is dropped first.

    Formula
    -------
    The first n of the stable ascending order of the importance.

    Reference
    ---------
    ShortGPT §3.2: remove the layers of lowest Block Influence.
    """
    try:
        s = np.asarray(importance, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as e:
        raise RefquantError(f"importance must be a 1-D array of numbers: {e}") from None
    if s.ndim != 1 or s.size == 0:
        raise RefquantError(f"importance must be a non-empty 1-D array, got shape {s.shape}")
    if np.isnan(s).any():
        raise RefquantError("importance holds NaN; scores must be ordered")
    try:
        k = operator.index(n)
    except TypeError:
        raise RefquantError(f"n must be an integer in [0, {s.size}], got {n!r}") from None
    if not 0 <= k <= s.size:
        raise RefquantError(f"n={k} must lie in [0, {s.size}]")
    return np.sort(np.argsort(s, kind="stable")[:k])


def choose_span_to_drop(hidden, n: int, *, token: int | None = -1) -> tuple[int, np.ndarray]:
    """Gromov et al.'s choice: the start ℓ* of the n contiguous blocks whose removal moves the state least.

    Returns ``(start, distances)``; blocks ``start … start+n-1`` are dropped.
    Ties: the lowest start.

    Formula
    -------
    .. math:: \\ell^*(n) = \\arg\\min_{\\ell} d(x^{\\ell}, x^{\\ell+n})

    Reference
    ---------
    Gromov et al. 2024, Algorithm 1.
    """
    dist = angular_distances(hidden, n, token=token)
    return int(np.argmin(dist)), dist
