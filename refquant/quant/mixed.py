"""Mixed precision: one bit width (or format) per layer under a total size budget.

Every layer ``l`` has a few *choices* ``c`` (int2 ... int8 per group, or any
format), each with a stored size ``s[l, c]`` in bits and a *sensitivity*
``e[l, c]``: the damage that quantizing the layer that way does. The plan picks
one choice per layer minimising the total damage under the budget::

    minimise  sum_l e[l, c_l]   subject to   sum_l s[l, c_l] <= B

a multiple-choice knapsack. :func:`allocate` solves it exactly by dynamic
programming over the (integer) sizes when the table is small enough, and by the
convex-hull greedy otherwise (never better than the optimum, feasible, and
within one upgrade of the LP bound).

Sensitivity (:func:`sensitivity`), with ``E = W - Q(W)`` (out, in) and ``H`` the
layer Hessian ``(2/n) sum x x^T`` of its calibration inputs:

``"weight"``        ``||E||_F^2`` (``H = I``: no calibration data)
``"hessian_diag"``  ``sum_ij H_jj E_ij^2``: the diagonal (OBS / GPTQ saliency) term
``"hessian_trace"`` ``tr(H) / in * ||E||_F^2``: HAWQ-V2's average-trace weighting
``"hessian"``       ``tr(E H E^T)``: the layer's output squared error, ``2/n`` scaled
``"output"``        ``mean((x E^T)^2)`` measured on the calibration rows ``x``

Sizes are what a choice stores: for :func:`integer_choices` ``b`` bits per
weight plus, per group, a float16 scale and (asymmetric) a ``b``-bit zero point
(the GPTQ / AWQ checkpoint layouts); for the compression pipeline the scheme's
stored parts (:mod:`refquant.compress.schemes`).

Reference
---------
Dong et al., "HAWQ-V2: Hessian Aware trace-Weighted Quantization of Neural
Networks", NeurIPS 2020 (trace-weighted sensitivity, Pareto-frontier
allocation); Sinha & Zoltners, "The multiple-choice knapsack problem",
Operations Research 27(3), 1979 (LP relaxation by the convex hull, greedy);
Frantar et al., GPTQ / OBS (the ``H_jj`` saliency).
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._errors import RefquantError

__all__ = ["Choice", "integer_choices", "sensitivity", "allocate", "LayerPlan",
           "MixedPrecisionPlan", "plan_mixed_precision", "plan_from_table",
           "load_plan", "lp_lower_bound", "plan_pattern", "METRICS"]

METRICS = ("weight", "hessian_diag", "hessian_trace", "hessian", "output")
#: DP table entries (layers x capacity) above which method="auto" uses the greedy
DP_MAX_CELLS = 20_000_000


# --------------------------------------------------------------------------- choices
@dataclass(frozen=True)
class Choice:
    """One way to store a layer: a name, its size in bits for a shape, its round trip.

    ``size_bits(shape)`` is an int; ``quantize(w)`` returns the dequantized float
    weights ``Q(w)`` of ``w`` (out, in).
    """

    name: str
    size_bits: Callable[[tuple], int]
    quantize: Callable[[np.ndarray], np.ndarray]


def _int_choice(bits: int, group_size: int | None, symmetric: bool) -> Choice:
    from .qparams import choose_qparams

    fmt = f"int{bits}" if symmetric else f"uint{bits}"
    name = f"int{bits}" + (f"-g{group_size}" if group_size else "")

    def size(shape):
        rows, cols = shape[0], int(np.prod(shape[1:])) if len(shape) > 1 else 1
        groups = rows * (-(-cols // group_size) if group_size else 1)
        return rows * cols * bits + groups * (16 + (0 if symmetric else bits))

    def quantize(w):
        w2 = np.asarray(w, np.float64).reshape(w.shape[0], -1)
        if group_size is None:
            qp = choose_qparams(w2, dtype=fmt, symmetric=symmetric, axis=0)
        else:
            qp = choose_qparams(w2, dtype=fmt, symmetric=symmetric, axis=1,
                                block_size=group_size)
        return np.asarray(qp.fake_quantize(w2), np.float64).reshape(w.shape)

    return Choice(name, size, quantize)


def integer_choices(bits: Sequence[int] = (2, 3, 4, 5, 6, 8), *, group_size: int | None = 128,
                    symmetric: bool = False) -> list[Choice]:
    """Round-to-nearest integer choices, min-max per group of ``group_size`` inputs.

    Parameters
    ----------
    bits : sequence of int
        Widths from 2 to 16.
    group_size : int or None
        Inputs per group (a partial last group is its own group); None: per channel.
    symmetric : bool
        Symmetric ``int{b}`` (no zero point) or asymmetric ``uint{b}`` (default).

    Formula
    -------
    size = ``out * in * b + groups * (16 + b)`` bits (``16``: float16 scale;
    ``b``: the zero point, asymmetric only); ``Q(w)`` = :func:`refquant.choose_qparams`'s
    fake quantization (round half to even).
    """
    bl = list(bits) if not isinstance(bits, (int, np.integer)) else [bits]
    if not bl:
        raise RefquantError("bits must name at least one width, got an empty sequence")
    for b in bl:
        if not isinstance(b, (int, np.integer)) or isinstance(b, bool) or not 2 <= b <= 16:
            raise RefquantError(f"bits must be integers from 2 to 16, got {b!r}")
    if group_size is not None and (not isinstance(group_size, (int, np.integer))
                                   or isinstance(group_size, bool) or group_size < 1):
        raise RefquantError(f"group_size must be a positive int or None, got {group_size!r}")
    return [_int_choice(int(b), None if group_size is None else int(group_size), symmetric)
            for b in bl]


# --------------------------------------------------------------------------- sensitivity
def _as_weight(weight, name="weight") -> np.ndarray:
    w = np.asarray(weight)
    if w.ndim != 2 or w.dtype.kind not in "fiu":
        raise RefquantError(f"{name} must be a real 2-D array (out, in), got "
                            f"{w.dtype}{w.shape}")
    w = w.astype(np.float64)
    if not np.isfinite(w).all():
        raise RefquantError(f"{name} holds NaN or Inf at index "
                            f"{tuple(int(i) for i in np.argwhere(~np.isfinite(w))[0])}")
    return w


def sensitivity(weight, w_hat, *, metric="weight", hessian=None, x=None) -> float:
    """How much quantizing ``weight`` to ``w_hat`` hurts (see the module docstring).

    Parameters
    ----------
    weight, w_hat : array_like (out, in)
    metric : {"weight", "hessian_diag", "hessian_trace", "hessian", "output"}
    hessian : array_like (in, in), optional
        ``(2/n) sum x x^T`` (:class:`refquant.quant.gptq.HessianAccumulator`), for
        the ``hessian*`` metrics.
    x : array_like (n, in), optional
        Calibration rows, for ``"output"``.

    Returns
    -------
    float, >= 0
    """
    w = _as_weight(weight)
    wh = _as_weight(w_hat, "w_hat")
    if wh.shape != w.shape:
        raise RefquantError(f"w_hat has shape {wh.shape}, weight {w.shape}; expected the same")
    if metric not in METRICS:
        raise RefquantError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    e = w - wh
    if metric == "weight":
        return float(np.einsum("ij,ij->", e, e))
    if metric == "output":
        if x is None:
            raise RefquantError("metric 'output' needs the calibration rows x=")
        xa = np.asarray(x, np.float64).reshape(-1, np.shape(x)[-1]) if np.ndim(x) else None
        if xa is None or xa.shape[1] != w.shape[1]:
            raise RefquantError(f"x must have last axis {w.shape[1]} (the weight's input "
                                f"width), got shape {np.shape(x)}")
        if not np.isfinite(xa).all():
            raise RefquantError("x holds NaN or Inf; expected finite calibration rows")
        y = xa @ e.T
        return float(np.mean(y * y)) if y.size else 0.0
    if hessian is None:
        raise RefquantError(f"metric {metric!r} needs hessian= (in, in)")
    h = np.asarray(getattr(hessian, "hessian", hessian), np.float64)
    if h.shape != (w.shape[1], w.shape[1]):
        raise RefquantError(f"hessian must have shape {(w.shape[1], w.shape[1])}, got "
                            f"{h.shape}")
    if not np.isfinite(h).all():
        raise RefquantError("hessian holds NaN or Inf")
    if metric == "hessian_diag":
        return float(np.einsum("ij,ij,j->", e, e, np.diag(h)))
    if metric == "hessian_trace":
        return float(np.trace(h) / w.shape[1] * np.einsum("ij,ij->", e, e))
    return float(max(np.einsum("ij,jk,ik->", e, h, e), 0.0))


# --------------------------------------------------------------------------- allocation
def _check_table(errors, sizes):
    if len(errors) != len(sizes):
        raise RefquantError(f"errors has {len(errors)} layers, sizes {len(sizes)}; expected "
                            "one row of choices per layer in both")
    if not len(errors):
        raise RefquantError("no layers to allocate; expected at least one")
    E, S = [], []
    for i, (er, sz) in enumerate(zip(errors, sizes, strict=True)):
        er = np.asarray(er, np.float64).reshape(-1)
        sz = np.asarray(sz).reshape(-1)
        if er.size == 0 or er.size != sz.size:
            raise RefquantError(f"layer {i}: {er.size} errors and {sz.size} sizes; expected "
                                "the same number (at least one choice)")
        if not np.isfinite(er).all() or (er < 0).any():
            raise RefquantError(f"layer {i}: errors must be finite and >= 0, got {er.tolist()}")
        if sz.dtype.kind not in "iu" and not (sz.dtype.kind == "f" and
                                               np.all(sz == np.round(sz))):
            raise RefquantError(f"layer {i}: sizes must be whole numbers of bits, got "
                                f"{sz.tolist()}")
        sz = sz.astype(np.int64)
        if (sz < 0).any():
            raise RefquantError(f"layer {i}: sizes must be >= 0, got {sz.tolist()}")
        E.append(er)
        S.append(sz)
    return E, S


def _min_total(S) -> int:
    return int(sum(int(s.min()) for s in S))


def _dp(E, S, budget) -> list[int]:
    """Exact multiple-choice knapsack over integer sizes (sizes shifted by each layer's
    smallest choice and divided by their gcd, so the table is as small as it can be)."""
    base = [int(s.min()) for s in S]
    rel = [s - b for s, b in zip(S, base, strict=True)]
    cap_bits = budget - sum(base)
    g = 0
    for r in rel:
        for v in r:
            g = math.gcd(g, int(v))
    g = g or 1
    cap = cap_bits // g
    units = [(r // g).astype(np.int64) for r in rel]
    # a choice larger than the whole spare capacity can never be taken
    cap = int(min(cap, sum(int(u.max()) for u in units)))
    n = cap + 1
    if len(E) * n > DP_MAX_CELLS:
        raise RefquantError(f"the exact knapsack needs {len(E)} x {n} table cells (more than "
                            f"DP_MAX_CELLS = {DP_MAX_CELLS}); use method='greedy'")
    best = np.zeros(n)  # best[c]: least error of the layers so far within c units
    picks = np.empty((len(E), n), np.int32)
    for li, (er, u) in enumerate(zip(E, units, strict=True)):
        new = np.full(n, np.inf)
        pick = np.full(n, -1, np.int32)
        for ci in range(er.size):
            k = int(u[ci])
            if k > cap:
                continue
            cand = np.full(n, np.inf)
            cand[k:] = best[:n - k] + er[ci]
            better = cand < new  # strict: the earlier choice wins ties
            new[better] = cand[better]
            pick[better] = ci
        best, picks[li] = new, pick
    c = n - 1
    out = [0] * len(E)
    for li in range(len(E) - 1, -1, -1):
        ci = int(picks[li, c])
        out[li] = ci
        c -= int(units[li][ci])
    return out


def _hull(er, sz):
    """Indices of the lower convex hull of (size, error), by increasing size, error falling."""
    order = sorted(range(er.size), key=lambda i: (int(sz[i]), er[i], i))
    pts = []
    for i in order:
        if pts and int(sz[i]) == int(sz[pts[-1]]):
            continue  # same size, not smaller error (sorted)
        if pts and er[i] >= er[pts[-1]]:
            continue  # larger and no better: dominated
        while len(pts) >= 2:
            a, b = pts[-2], pts[-1]
            # drop b when it lies on or above the segment a -> i
            lhs = (er[a] - er[b]) * (int(sz[i]) - int(sz[a]))
            rhs = (er[a] - er[i]) * (int(sz[b]) - int(sz[a]))
            if lhs <= rhs:
                pts.pop()
            else:
                break
        pts.append(i)
    return pts


def _greedy(E, S, budget, *, lp=False):
    """Convex-hull greedy: start every layer at its cheapest choice, then take upgrades by
    error saved per bit while they fit; then any upgrade that still fits. With ``lp`` the
    LP relaxation's optimum (a lower bound on the knapsack optimum) instead."""
    hulls = [_hull(er, sz) for er, sz in zip(E, S, strict=True)]
    cur = [h[0] for h in hulls]
    pos = [0] * len(E)
    left = budget - sum(int(S[i][c]) for i, c in enumerate(cur))
    total = float(sum(E[i][c] for i, c in enumerate(cur)))
    heap = []

    def push(li):
        h = hulls[li]
        if pos[li] + 1 < len(h):
            a, b = h[pos[li]], h[pos[li] + 1]
            ds = int(S[li][b]) - int(S[li][a])
            heapq.heappush(heap, (-(E[li][a] - E[li][b]) / ds, li))

    for li in range(len(E)):
        push(li)
    while heap:
        _, li = heapq.heappop(heap)
        a, b = hulls[li][pos[li]], hulls[li][pos[li] + 1]
        ds = int(S[li][b]) - int(S[li][a])
        if ds > left:
            if lp:  # the fractional step, then stop: the LP optimum
                return total - (E[li][a] - E[li][b]) * left / ds
            continue
        left -= ds
        total -= E[li][a] - E[li][b]
        pos[li] += 1
        cur[li] = b
        push(li)
    if lp:
        return total
    changed = True
    while changed:  # spend what is left on the best single upgrade that still fits
        changed = False
        best = None
        for li in range(len(E)):
            c0 = cur[li]
            for ci in range(E[li].size):
                ds = int(S[li][ci]) - int(S[li][c0])
                gain = E[li][c0] - E[li][ci]
                if gain > 0 and ds <= left and (best is None or gain > best[0]):
                    best = (gain, li, ci, ds)
        if best is not None:
            _, li, ci, ds = best
            cur[li], left, changed = ci, left - ds, True
    return cur


def allocate(errors, sizes, budget, *, method="auto", names=None) -> tuple[list[int], str]:
    """Pick one choice per layer: least total error with total size <= ``budget``.

    Parameters
    ----------
    errors : sequence of sequences of float
        ``errors[l][c]``: layer ``l``'s sensitivity under choice ``c`` (>= 0).
    sizes : sequence of sequences of int
        ``sizes[l][c]``: its stored size in bits.
    budget : int
        Total bits allowed.
    method : {"auto", "dp", "greedy", "brute"}
        ``"dp"``: exact dynamic programming (at most :data:`DP_MAX_CELLS` table
        cells); ``"greedy"``: convex-hull greedy; ``"brute"``: every combination
        (tests; at most 10^6); ``"auto"``: dp when it fits, else greedy.
    names : sequence of str, optional
        Layer names for the messages.

    Returns
    -------
    (choice index per layer, method used)

    Formula
    -------
    DP: ``best_l(c) = min_j best_{l-1}(c - s_lj) + e_lj`` over integer capacities
    (sizes less each layer's cheapest, over their gcd); ties keep the earlier choice.

    Reference
    ---------
    Sinha & Zoltners 1979 (multiple-choice knapsack: dominance, LP hull, greedy).
    """
    E, S = _check_table(errors, sizes)
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer, float)) or not (
            math.isfinite(budget)):
        raise RefquantError(f"budget must be a number of bits, got {budget!r}")
    budget = int(math.floor(budget))
    need = _min_total(S)
    if budget < need:
        nm = list(names) if names is not None else [f"layer {i}" for i in range(len(E))]
        worst = max(range(len(E)), key=lambda i: int(S[i].min()))
        raise RefquantError(
            f"budget {budget} bits is below the smallest choice: every layer at its cheapest "
            f"choice takes {need} bits (the largest, {nm[worst]!r}, {int(S[worst].min())} "
            "bits); raise the budget or add a smaller choice")
    if method not in ("auto", "dp", "greedy", "brute"):
        raise RefquantError(f"method must be 'auto', 'dp', 'greedy' or 'brute', got {method!r}")
    if method == "brute":
        combos = math.prod(e.size for e in E)
        if combos > 1_000_000:
            raise RefquantError(f"method 'brute' would try {combos} combinations (> 10^6)")
        best, pick = None, None
        for combo in itertools.product(*(range(e.size) for e in E)):
            if sum(int(S[i][c]) for i, c in enumerate(combo)) > budget:
                continue
            tot = 0.0
            for i, c in enumerate(combo):
                tot += E[i][c]
            if best is None or tot < best:
                best, pick = tot, list(combo)
        return pick, "brute"
    if method == "auto":
        try:
            return _dp(E, S, budget), "dp"
        except RefquantError:
            return _greedy(E, S, budget), "greedy"
    if method == "dp":
        return _dp(E, S, budget), "dp"
    return _greedy(E, S, budget), "greedy"


def lp_lower_bound(errors, sizes, budget) -> float:
    """The LP relaxation's optimum: no plan under ``budget`` has a smaller total error."""
    E, S = _check_table(errors, sizes)
    if int(budget) < _min_total(S):
        raise RefquantError(f"budget {budget} bits is below the smallest choice "
                            f"({_min_total(S)} bits)")
    return _greedy(E, S, int(budget), lp=True)


# --------------------------------------------------------------------------- the plan
@dataclass
class LayerPlan:
    """One layer of a plan: the choice taken, and every candidate's size and error."""

    name: str
    numel: int
    choice: str
    size_bits: int
    error: float
    candidates: dict = field(default_factory=dict)  # choice -> {"size_bits":, "error":}

    @property
    def bits_per_weight(self) -> float:
        return self.size_bits / self.numel if self.numel else 0.0


@dataclass
class MixedPrecisionPlan:
    """Per-layer choices under a size budget (:func:`plan_mixed_precision`).

    ``save(path)`` writes JSON (``.json``) or TOML (``.toml``: also a recipe that
    ``refquant compress --recipe`` reads, one required rule per layer); :func:`load_plan`
    reads either back.
    """

    layers: list[LayerPlan]
    budget_bits: int
    average_bits: float | None
    method: str
    metric: str = "weight"

    @property
    def total_bits(self) -> int:
        return sum(lp.size_bits for lp in self.layers)

    @property
    def total_error(self) -> float:
        return float(sum(lp.error for lp in self.layers))

    @property
    def numel(self) -> int:
        return sum(lp.numel for lp in self.layers)

    @property
    def bits_per_weight(self) -> float:
        return self.total_bits / self.numel if self.numel else 0.0

    def choices(self) -> dict[str, str]:
        return {lp.name: lp.choice for lp in self.layers}

    def table(self) -> str:
        rows = [(lp.name, lp.choice, f"{lp.bits_per_weight:.3f}", f"{lp.size_bits / 8:,.0f}",
                 f"{lp.error:.4g}") for lp in self.layers]
        head = ("layer", "choice", "bits/w", "bytes", "error")
        rows.append(("total", f"{self.method}", f"{self.bits_per_weight:.3f}",
                     f"{self.total_bits / 8:,.0f}", f"{self.total_error:.4g}"))
        wd = [max(len(str(r[i])) for r in [head, *rows]) for i in range(5)]
        fmt = "  ".join(f"{{:{'<' if i < 2 else '>'}{wd[i]}}}" for i in range(5))
        budget = (f"{self.average_bits:g} bits/weight average, " if self.average_bits else "")
        lines = [f"mixed-precision plan: {budget}budget {self.budget_bits / 8:,.0f} bytes, "
                 f"metric {self.metric}", fmt.format(*head)]
        lines += [fmt.format(*r) for r in rows[:-1]]
        lines.append("-" * len(lines[1]))
        lines.append(fmt.format(*rows[-1]))
        return "\n".join(lines)

    __str__ = table

    def to_dict(self) -> dict:
        return {"version": 1, "budget_bits": self.budget_bits, "average_bits": self.average_bits,
                "method": self.method, "metric": self.metric,
                "layers": [{"name": lp.name, "numel": lp.numel, "choice": lp.choice,
                            "size_bits": lp.size_bits, "error": lp.error,
                            "candidates": lp.candidates} for lp in self.layers]}

    @classmethod
    def from_dict(cls, d, where="plan") -> MixedPrecisionPlan:
        try:
            layers = [LayerPlan(str(x["name"]), int(x["numel"]), str(x["choice"]),
                                int(x["size_bits"]), float(x["error"]),
                                {str(k): {"size_bits": int(v["size_bits"]),
                                          "error": float(v["error"])}
                                 for k, v in dict(x.get("candidates", {})).items()})
                      for x in d["layers"]]
            avg = d.get("average_bits")
            return cls(layers, int(d["budget_bits"]), None if avg is None else float(avg),
                       str(d["method"]), str(d.get("metric", "weight")))
        except (KeyError, TypeError, ValueError) as e:
            raise RefquantError(f"{where}: not a mixed-precision plan ({type(e).__name__}: "
                                f"{e})") from None

    def save(self, path) -> Path:
        from ..io._common import atomic_write

        p = Path(path)
        if p.suffix == ".json":
            text = json.dumps(self.to_dict(), indent=1, allow_nan=False)
        elif p.suffix == ".toml":
            text = self._toml()
        else:
            raise RefquantError(f"plan path {str(p)!r}: name it *.json or *.toml")
        return atomic_write(p, lambda f: f.write(text.encode("utf-8")), overwrite=True)

    def _toml(self) -> str:
        def s(v):
            return json.dumps(v)  # a TOML basic string is a JSON string

        out = ["# refquant mixed-precision plan; also a recipe: refquant compress --recipe THIS",
               'scheme = "keep"', "", "[mixed_precision]", f"budget_bits = {self.budget_bits}"]
        if self.average_bits is not None:
            out.append(f"average_bits = {self.average_bits!r}")
        out += [f"method = {s(self.method)}", f"metric = {s(self.metric)}", ""]
        for lp in self.layers:
            out += ["[[mixed_precision.layers]]", f"name = {s(lp.name)}", f"numel = {lp.numel}",
                    f"choice = {s(lp.choice)}", f"size_bits = {lp.size_bits}",
                    f"error = {lp.error!r}"]
            for k, v in lp.candidates.items():
                out.append(f"candidates.{s(k)} = {{ size_bits = {v['size_bits']}, error = "
                           f"{v['error']!r} }}")
            out.append("")
        for lp in self.layers:
            out += ["[[rules]]", f"pattern = {s(plan_pattern(lp.name))}",
                    f"scheme = {s(lp.choice)}", "required = true", ""]
        return "\n".join(out)


def plan_pattern(name: str) -> str:
    """A recipe pattern matching exactly ``name`` (a glob unless it holds glob characters)."""
    import re

    if any(c in name for c in "*?[]") or name.startswith("re:"):
        return "re:" + re.escape(name)
    return name


def load_plan(path) -> MixedPrecisionPlan:
    """Read a plan saved by :meth:`MixedPrecisionPlan.save` (``.json`` or ``.toml``)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RefquantError(f"plan {str(p)!r}: cannot read: {e}") from None
    if p.suffix == ".toml":
        import tomllib

        try:
            d = tomllib.loads(text).get("mixed_precision")
        except tomllib.TOMLDecodeError as e:
            raise RefquantError(f"plan {str(p)!r}: not valid TOML: {e}") from None
        if not isinstance(d, dict):
            raise RefquantError(f"plan {str(p)!r}: no [mixed_precision] table")
    else:
        try:
            d = json.loads(text)
        except ValueError as e:
            raise RefquantError(f"plan {str(p)!r}: not valid JSON: {e}") from None
    return MixedPrecisionPlan.from_dict(d, f"plan {str(p)!r}")


def plan_from_table(names, numels, candidates, *, budget_bits=None, average_bits=None,
                    method="auto", metric="weight") -> MixedPrecisionPlan:
    """A plan from measured candidates: ``candidates[l] = {choice: (size_bits, error)}``.

    Give the budget as ``budget_bits`` (total) or ``average_bits`` (per weight, over
    ``sum(numels)``).
    """
    names = [str(n) for n in names]
    numels = [int(n) for n in numels]
    if not (len(names) == len(numels) == len(candidates)):
        raise RefquantError(f"names ({len(names)}), numels ({len(numels)}) and candidates "
                            f"({len(candidates)}) must have one entry per layer")
    if len(set(names)) != len(names):
        raise RefquantError("layer names must be unique")
    if (budget_bits is None) == (average_bits is None):
        raise RefquantError("give exactly one of budget_bits= and average_bits=")
    if average_bits is not None:
        if isinstance(average_bits, bool) or not isinstance(average_bits, (int, float)) or (
                not math.isfinite(average_bits)) or average_bits <= 0:
            raise RefquantError(f"average_bits must be a positive number, got {average_bits!r}")
        budget_bits = int(math.floor(average_bits * sum(numels)))
    keys = [list(c) for c in candidates]
    for n, k in zip(names, keys, strict=True):
        if not k:
            raise RefquantError(f"layer {n!r} has no candidate choice")
    errors = [[float(candidates[i][k][1]) for k in ks] for i, ks in enumerate(keys)]
    sizes = [[int(candidates[i][k][0]) for k in ks] for i, ks in enumerate(keys)]
    try:
        pick, used = allocate(errors, sizes, budget_bits, method=method, names=names)
    except RefquantError as e:
        if average_bits is not None and "below the smallest choice" in str(e):
            need = sum(min(s) for s in sizes)
            raise RefquantError(f"average_bits {average_bits!r} is below the smallest choice: "
                                f"{need / sum(numels):.4g} bits/weight with every layer at its "
                                f"cheapest ({', '.join(sorted({keys[i][int(np.argmin(s))] for i, s in enumerate(sizes)}))})"
                                ) from None
        raise
    layers = [LayerPlan(names[i], numels[i], keys[i][c], sizes[i][c], errors[i][c],
                        {k: {"size_bits": sizes[i][j], "error": errors[i][j]}
                         for j, k in enumerate(keys[i])})
              for i, c in enumerate(pick)]
    return MixedPrecisionPlan(layers, int(budget_bits), None if average_bits is None else
                              float(average_bits), used, metric)


def plan_mixed_precision(layers, *, average_bits=None, budget_bits=None, choices=None,
                         metric=None, hessians=None, inputs=None,
                         method="auto") -> MixedPrecisionPlan:
    """Measure every layer under every choice and allocate bits under the budget.

    Parameters
    ----------
    layers : mapping name -> array (out, in)
    average_bits, budget_bits : float, int
        The budget: bits per weight on average over all layers, or total bits.
    choices : list of Choice, optional
        Default :func:`integer_choices` ``(2, 3, 4, 5, 6, 8)``, group 128.
    metric : str, optional
        See :func:`sensitivity`; default ``"hessian_diag"`` with ``hessians``,
        ``"output"`` with ``inputs``, else ``"weight"``.
    hessians : mapping name -> (in, in), optional
    inputs : mapping name -> (n, in), optional
        The layer's calibration input rows.
    method : see :func:`allocate`

    Returns
    -------
    MixedPrecisionPlan

    Formula
    -------
    ``e[l, c] = sensitivity(W_l, Q_c(W_l))``; sizes ``Choice.size_bits``; then
    :func:`allocate`.

    Reference
    ---------
    HAWQ-V2 (Dong et al. 2020) for the Hessian-weighted sensitivity.
    """
    if not hasattr(layers, "items") or not len(layers):
        raise RefquantError("layers must be a non-empty mapping name -> weight (out, in)")
    choices = integer_choices() if choices is None else list(choices)
    if not choices or not all(isinstance(c, Choice) for c in choices):
        raise RefquantError("choices must be a non-empty list of refquant.quant.mixed.Choice")
    if len({c.name for c in choices}) != len(choices):
        raise RefquantError("choices must have distinct names")
    if metric is None:
        metric = "hessian_diag" if hessians is not None else "output" if inputs is not None \
            else "weight"
    if metric not in METRICS:
        raise RefquantError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    names, numels, cands = [], [], []
    for name, weight in layers.items():
        w = _as_weight(weight, f"layers[{name!r}]")
        h = x = None
        if metric.startswith("hessian"):
            if hessians is None or name not in hessians:
                raise RefquantError(f"metric {metric!r}: no Hessian for layer {name!r} in "
                                    "hessians=")
            h = hessians[name]
        if metric == "output":
            if inputs is None or name not in inputs:
                raise RefquantError(f"metric 'output': no calibration input for layer {name!r}"
                                    " in inputs=")
            x = inputs[name]
        c = {}
        for ch in choices:
            c[ch.name] = (int(ch.size_bits(w.shape)),
                          sensitivity(w, ch.quantize(w), metric=metric, hessian=h, x=x))
        names.append(str(name))
        numels.append(w.size)
        cands.append(c)
    return plan_from_table(names, numels, cands, budget_bits=budget_bits,
                           average_bits=average_bits, method=method, metric=metric)
