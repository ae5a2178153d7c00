"""Structured (channel) pruning of named arrays, with dependency groups described declaratively.

Removing output channel c of a layer must also remove everything indexed by
that channel: its bias entry, the normalisation parameters and running
statistics of that channel, the input slice c of every consumer, and, when
tensors are tied by an addition (a residual connection), channel c of every
tensor on the same residual stream. Torch-Pruning discovers these couplings by
tracing a graph; here they are written down as a small dictionary::

    couplings = {
        "conv1.weight:0": ["conv1.bias:0", "bn1.weight:0", "bn1.bias:0",
                           "bn1.running_mean:0", "bn1.running_var:0",
                           "conv2.weight:1"],
        "conv2.weight:0": [{"tensor": "fc.weight", "axis": 1, "repeat": 16,
                            "order": "channel_major"}],        # after a flatten
    }

Each key and each entry names one axis of one tensor, ``"name:axis"`` (or a
tuple ``(name, axis)``, or a dict with the optional fields below). Every key
and entry mentioned together is one *group*; groups that share a member are
merged (the union of the couplings), which is how residual ties are written:
list the output axis of every tensor that is added into the stream under one
key.

Member fields
-------------
``repeat`` (default 1) and ``order``: after a flatten of a (C, H, W) feature
map, channel c owns ``repeat = H*W`` columns of the next dense weight. Both
C-order flatten conventions are supported:

* ``order="channel_major"`` — flatten of NCHW (PyTorch ``x.flatten(1)``):
  channel c → columns ``c*R, c*R+1, …, (c+1)*R-1``;
* ``order="channel_minor"`` — flatten of NHWC (Keras ``Flatten`` on
  channels-last): channel c → columns ``c, c+C, c+2C, …, c+(R-1)C``.

``depthwise=True`` marks a depthwise convolution weight (C, 1, kh, kw) that
follows along axis 0; its ``groups`` argument shrinks with the channels and is
reported in :attr:`StructuredPruning.depthwise_groups`.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import numpy as np

from .._errors import RefquantError
from ._arrays import as_array, as_count, is_choice

__all__ = [
    "Coupling",
    "DependencyGroup",
    "StructuredPruning",
    "channel_to_columns",
    "build_dependency_groups",
    "group_channel_scores",
    "structured_prune",
]

_ORDERS = ("channel_major", "channel_minor")
_NORMS = ("l1", "l2", "l2_squared", "linf")
_REDUCTIONS = ("sum", "mean", "max")
# the same names as refquant.prune.masks.COUNT_RULES (computed here independently)
_COUNT_RULES = ("torch", "tfmot", "floor", "torch_pruning")


@dataclass(frozen=True)
class Coupling:
    """One axis of one tensor that follows a group's channels.

    ``repeat`` slots per channel along ``axis`` (flatten expansion) in the given
    ``order``; ``depthwise`` for a (C, 1, kh, kw) depthwise weight.
    """

    tensor: str
    axis: int
    repeat: int = 1
    order: str = "channel_major"
    depthwise: bool = False

    @property
    def key(self) -> str:
        return f"{self.tensor}:{self.axis}"


@dataclass(frozen=True)
class DependencyGroup:
    """Tensors whose ``axis`` slices are removed together; ``channels`` is the group size."""

    name: str
    members: tuple[Coupling, ...]
    channels: int


@dataclass
class StructuredPruning:
    """Result of :func:`structured_prune`.

    masks : dict name -> bool array of the tensor's shape (False = removed slice)
    arrays : dict name -> the physically smaller array (untouched tensors are
        passed through as the same objects)
    kept : dict group name -> sorted int64 indices of the kept channels
    scores : dict group name -> float64 channel scores that were ranked
    groups : the dependency groups
    depthwise_groups : dict depthwise tensor name -> its new ``groups`` value
    """

    masks: dict
    arrays: dict
    kept: dict
    scores: dict
    groups: list = field(default_factory=list)
    depthwise_groups: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- parsing


def _parse_member(spec, where: str) -> Coupling:
    if isinstance(spec, Coupling):
        return spec
    if isinstance(spec, str):
        if ":" not in spec:
            raise RefquantError(f"{where}: coupling {spec!r} must look like 'tensor_name:axis'")
        name, ax = spec.rsplit(":", 1)
        try:
            return Coupling(name, int(ax))
        except ValueError:
            raise RefquantError(f"{where}: coupling {spec!r} has a non-integer axis {ax!r}") from None
    if isinstance(spec, dict):
        unknown = set(spec) - {"tensor", "axis", "repeat", "order", "depthwise"}
        if unknown or "tensor" not in spec or "axis" not in spec:
            raise RefquantError(
                f"{where}: coupling {spec!r} needs keys 'tensor' and 'axis' "
                f"(optional 'repeat', 'order', 'depthwise'); unknown keys: {sorted(unknown)}"
            )
        return Coupling(str(spec["tensor"]), spec["axis"], spec.get("repeat", 1),
                        spec.get("order", "channel_major"), bool(spec.get("depthwise", False)))
    if isinstance(spec, tuple) and 2 <= len(spec) <= 4:
        return Coupling(str(spec[0]), *spec[1:])
    raise RefquantError(f"{where}: cannot read coupling {spec!r}; use 'name:axis', (name, axis) or a dict")


def _validate_member(c: Coupling, shapes: dict, where: str) -> tuple[Coupling, int]:
    """Normalise the axis; return the member and its channel count."""
    if c.tensor not in shapes:
        raise RefquantError(f"{where}: coupling names tensor {c.tensor!r}, which is not among the arrays")
    shape = shapes[c.tensor]
    try:
        ax = operator.index(c.axis)
    except TypeError:
        raise RefquantError(f"{where}: axis {c.axis!r} of {c.tensor!r} is not an integer") from None
    if not -len(shape) <= ax < len(shape):
        raise RefquantError(
            f"{where}: axis {ax} does not exist for tensor {c.tensor!r} of shape {tuple(shape)}"
        )
    ax %= len(shape)
    try:
        rep = operator.index(c.repeat)
    except TypeError:
        raise RefquantError(f"{where}: repeat {c.repeat!r} of {c.tensor!r} is not an integer") from None
    if rep <= 0:
        raise RefquantError(f"{where}: repeat of {c.tensor!r} must be positive, got {rep}")
    if c.order not in _ORDERS:
        raise RefquantError(f"{where}: order of {c.tensor!r} must be one of {_ORDERS}, got {c.order!r}")
    if shape[ax] % rep:
        raise RefquantError(
            f"{where}: axis {ax} of {c.tensor!r} has length {shape[ax]}, not a multiple of repeat={rep}"
        )
    if c.depthwise and (ax != 0 or len(shape) < 2 or shape[1] != 1):
        raise RefquantError(
            f"{where}: depthwise weight {c.tensor!r} must have shape (C, 1, ...) and follow axis 0, "
            f"got shape {tuple(shape)} axis {ax}"
        )
    return Coupling(c.tensor, ax, rep, c.order, c.depthwise), shape[ax] // rep


def build_dependency_groups(arrays, couplings) -> list[DependencyGroup]:
    """Merge the declared couplings into groups (union of all couplings sharing a member).

    Parameters
    ----------
    arrays : dict name -> array (or anything with ``.shape``)
    couplings : dict key -> list of members (see the module docstring)

    Returns
    -------
    list of DependencyGroup, in the order their first key appears; each group's
    name is the key of its first member.

    Formula
    -------
    Union-find over the members :math:`(t, a)`: :math:`\\text{key} \\sim e` for
    every entry :math:`e` of a key; a group is an equivalence class, and every
    member must index the same number of channels
    :math:`C = \\text{shape}_t[a] / \\text{repeat}`.

    Reference
    ---------
    Torch-Pruning (Fang et al. 2023, "DepGraph"): ``DependencyGraph.get_pruning_group``
    discovers the same groups by tracing; here they are declared.
    """
    if not isinstance(couplings, dict) or not couplings:
        raise RefquantError("couplings must be a non-empty dict 'name:axis' -> list of followers")
    shapes = {k: tuple(np.shape(v)) for k, v in arrays.items()}
    parent: dict[str, str] = {}
    members: dict[str, Coupling] = {}
    counts: dict[str, int] = {}
    order: list[str] = []

    def find(k):
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    def add(spec, where):
        c, n = _validate_member(_parse_member(spec, where), shapes, where)
        k = c.key
        if k in members:
            if members[k] != c:
                raise RefquantError(
                    f"{where}: {k!r} is declared twice with different repeat/order/depthwise: "
                    f"{members[k]} vs {c}"
                )
        else:
            members[k], counts[k], parent[k] = c, n, k
            order.append(k)
        return k

    for root, followers in couplings.items():
        rk = add(root, f"coupling key {root!r}")
        if isinstance(followers, (str, dict, tuple, Coupling)):
            followers = [followers]
        for f in followers:
            fk = add(f, f"coupling {root!r} -> {f!r}")
            a, b = find(rk), find(fk)
            if a != b:
                parent[b] = a
    classes: dict[str, list[str]] = {}
    for k in order:
        classes.setdefault(find(k), []).append(k)
    groups = []
    for ks in sorted(classes.values(), key=lambda g: order.index(g[0])):
        sizes = {k: counts[k] for k in ks}
        if len(set(sizes.values())) != 1:
            raise RefquantError(
                f"coupled tensors index different numbers of channels (mismatched lengths): {sizes}"
            )
        groups.append(DependencyGroup(ks[0], tuple(members[k] for k in ks), counts[ks[0]]))
    return groups


# --------------------------------------------------------------------------- index maths


def channel_to_columns(channels, n_channels: int, repeat: int, order: str = "channel_major") -> np.ndarray:
    """Flat indices along an axis owned by ``channels`` when each channel spans ``repeat`` slots.

    Formula
    -------
    ``channel_major`` (flatten of NCHW): :math:`\\{cR + s\\}_{s<R}`;
    ``channel_minor`` (flatten of NHWC): :math:`\\{sC + c\\}_{s<R}`; returned sorted.

    Reference
    ---------
    PyTorch ``torch.flatten`` and NumPy ``reshape`` (C order) of (C, H, W) and (H, W, C) maps.
    """
    if not isinstance(order, str) or order not in _ORDERS:
        raise RefquantError(f"order must be one of {_ORDERS}, got {order!r:.60}")
    n_channels = as_count(n_channels, "n_channels")
    repeat = as_count(repeat, "repeat")
    ch = as_array(channels, "channels").reshape(-1)
    if ch.size and (ch.dtype.kind not in "iu" or ch.min() < 0 or ch.max() >= n_channels):
        raise RefquantError(f"channels must be integers in [0, {n_channels}), got {channels!r:.60}")
    ch = ch.astype(np.int64)
    s = np.arange(repeat, dtype=np.int64)
    if order == "channel_major":
        idx = ch[:, None] * repeat + s[None, :]
    elif order == "channel_minor":
        idx = s[None, :] * n_channels + ch[:, None]
    else:
        raise RefquantError(f"order must be one of {_ORDERS}, got {order!r}")
    return np.sort(idx.ravel())


def _per_channel(w: np.ndarray, c: Coupling, n: int) -> np.ndarray:
    """(n, -1) view of the slices of ``w`` owned by each of the n channels of member ``c``."""
    moved = np.moveaxis(np.asarray(w, dtype=np.float64), c.axis, 0)
    rest = moved.shape[1:]
    if c.order == "channel_major":
        g = moved.reshape(n, c.repeat, *rest)
    else:
        g = np.moveaxis(moved.reshape(c.repeat, n, *rest), 1, 0)
    return g.reshape(n, -1)


def group_channel_scores(arrays, group: DependencyGroup, *, norm: str = "l2",
                         reduce: str = "sum", members=None) -> np.ndarray:
    """Score of each channel of a group: a per-channel norm of each member, reduced over members.

    Parameters
    ----------
    norm : {"l1", "l2", "l2_squared", "linf"}
        Per member and channel over all the channel's elements: :math:`\\sum|w|`,
        :math:`\\sqrt{\\sum w^2}`, :math:`\\sum w^2` (root-free; Torch-Pruning's
        ``p=2`` "L2" magnitude), :math:`\\max|w|`.
    reduce : {"sum", "mean", "max"}
        Over the members (Torch-Pruning's ``group_reduction``).
    members : iterable of str, optional
        Only these tensors (names) or keys (``"name:axis"``) contribute; default
        all members.

    Formula
    -------
    .. math:: s_c = \\operatorname{reduce}_{t \\in G} \\lVert W_t[\\ldots, c, \\ldots] \\rVert

    Reference
    ---------
    Torch-Pruning ``GroupMagnitudeImportance`` (``local_imp = w.abs().pow(p).sum(1)``
    per dependency, ``group_reduction`` over the group; no root).
    """
    if not is_choice(norm, _NORMS):
        raise RefquantError(f"norm must be one of {_NORMS}, got {norm!r}")
    if not is_choice(reduce, _REDUCTIONS):
        raise RefquantError(f"reduce must be one of {_REDUCTIONS}, got {reduce!r}")
    chosen = [c for c in group.members
              if members is None or c.tensor in members or c.key in members]
    if not chosen:
        raise RefquantError(f"members {members!r} selects no tensor of group {group.name!r}")
    per = []
    for c in chosen:
        w = arrays[c.tensor]
        if np.size(w) == 0:
            raise RefquantError(f"tensor {c.tensor!r} is empty (shape {np.shape(w)})")
        g = _per_channel(w, c, group.channels)
        if np.isnan(g).any():
            raise RefquantError(f"tensor {c.tensor!r} holds NaN; channel scores would be unordered")
        a = np.abs(g)
        if norm == "l1":
            per.append(a.sum(axis=1))
        elif norm == "l2":
            per.append(np.sqrt((a * a).sum(axis=1)))
        elif norm == "l2_squared":
            per.append((a * a).sum(axis=1))
        else:
            per.append(a.max(axis=1))
    stack = np.stack(per)
    return {"sum": stack.sum, "mean": stack.mean, "max": stack.max}[reduce](axis=0)


def _channel_count(amount, n: int, rule: str = "torch") -> int:
    """How many of ``n`` channels an ``amount`` removes, by a named rule.

    ``amount`` is a fraction (float in [0, 1]) or a count (int in [0, n]); a
    count is used as is. The rule names are those of
    ``refquant.prune.masks.COUNT_RULES``:

    * ``torch``: :math:`\\operatorname{round}_{\\text{even}}(sN)` pruned (torch.nn.utils.prune);
    * ``floor``: :math:`\\lfloor sN \\rfloor` pruned (``int(s*N)``, wanda);
    * ``torch_pruning``: :math:`N - \\lfloor (1-s)N \\rfloor` pruned (Torch-Pruning);
    * ``tfmot``: :math:`N - \\max(\\operatorname{rint}_{f32}((1-s)N), 1)` pruned (tfmot).

    Reference
    ---------
    torch ``prune._compute_nparams_toprune`` (``round(amount * tensor_size)``),
    Torch-Pruning ``MetaPruner`` (``int(initial_channels * (1 - ratio))`` kept),
    tfmot ``pruning_impl._update_mask`` (float32, ``tf.math.round``).
    """
    if not is_choice(rule, _COUNT_RULES):
        raise RefquantError(f"count_rule must be one of {_COUNT_RULES}, got {rule!r}")
    if isinstance(amount, (bool, np.bool_)):
        raise RefquantError(f"amount must be a float fraction or an int count, got {amount!r}")
    if isinstance(amount, (int, np.integer)):
        if not 0 <= amount <= n:
            raise RefquantError(f"amount={int(amount)} as a count must lie in [0, {n}]")
        return int(amount)
    try:
        s = float(amount)
    except (TypeError, ValueError):
        raise RefquantError(f"amount must be a float fraction or an int count, got {amount!r}") from None
    if not 0.0 <= s <= 1.0:
        raise RefquantError(f"amount={s} as a fraction must lie in [0, 1]")
    if rule == "torch":
        return int(round(s * n))
    if rule == "floor":
        return int(s * n)
    if rule == "torch_pruning":
        return n - int((1.0 - s) * n)
    # tfmot: k = max(round(float32(size) * (1 - sparsity)), 1) in float32, half to even
    kept = np.rint(np.float32(n) * (np.float32(1.0) - np.float32(s)))
    return n - max(int(kept), 1)


# --------------------------------------------------------------------------- pruning


def structured_prune(arrays, couplings, amount, *, norm: str = "l2", reduce: str = "sum",
                     scores=None, score_members=None,
                     count_rule: str = "torch") -> StructuredPruning:
    """Remove the lowest-scoring channels of every dependency group, masks and smaller arrays.

    Parameters
    ----------
    arrays : dict name -> numpy array
        Never modified.
    couplings : dict
        The declarative description (module docstring).
    amount : float, int or dict
        Fraction or count of channels removed per group; a dict maps group name
        (its first key, e.g. ``"fc1.weight:0"``) to an amount, groups left out
        are not pruned.
    norm, reduce, score_members
        How the channel score is computed (:func:`group_channel_scores`).
    scores : array or dict, optional
        Precomputed channel scores (one group: an array; else dict group name
        -> array of length C). They replace the norm.
    count_rule : {"torch", "floor", "torch_pruning", "tfmot"}
        How a fraction becomes a count: torch's round-half-even of
        :math:`sC`, ``int(sC)``, Torch-Pruning's kept count
        :math:`\\lfloor (1-s)C \\rfloor`, tfmot's kept
        :math:`\\max(\\operatorname{rint}_{f32}((1-s)C), 1)`; names as in
        ``refquant.prune.masks.COUNT_RULES``.

    Returns
    -------
    StructuredPruning

    Formula
    -------
    :math:`k = \\text{count}(\\text{amount}, C)`; pruned set = the first k of the
    stable ascending order of :math:`s` (ties: the lower channel index is
    pruned first); every member drops the slices of the pruned channels,
    expanded by :func:`channel_to_columns`.

    Reference
    ---------
    Li et al. 2017, "Pruning Filters for Efficient ConvNets" (L1 filter norms);
    Fang et al. 2023, "DepGraph" / Torch-Pruning (groups, group reduction);
    Liu et al. 2017, "Network Slimming" (normalisation parameters follow).
    """
    if not isinstance(arrays, dict):
        raise RefquantError(f"arrays must be a dict name -> array, got {type(arrays).__name__}")
    groups = build_dependency_groups(arrays, couplings)
    names = [g.name for g in groups]
    if isinstance(amount, dict):
        unknown = set(amount) - set(names)
        if unknown:
            raise RefquantError(f"amount names unknown group(s) {sorted(unknown)}; groups are {names}")
    if scores is not None and not isinstance(scores, dict):
        if len(groups) != 1:
            raise RefquantError(
                f"scores is one array but there are {len(groups)} groups {names}; pass a dict"
            )
        scores = {names[0]: scores}
    if scores is not None:
        unknown = set(scores) - set(names)
        if unknown:
            raise RefquantError(f"scores names unknown group(s) {sorted(unknown)}; groups are {names}")

    keep_idx: dict[str, list[tuple[int, np.ndarray]]] = {}
    kept, used = {}, {}
    dw = {}
    for g in groups:
        amt = amount.get(g.name, 0) if isinstance(amount, dict) else amount
        if scores is not None and g.name in scores:
            s = np.asarray(scores[g.name])
            if s.dtype == np.bool_ or s.dtype.kind in "OSUMmcV":
                raise RefquantError(f"scores[{g.name!r}] must be numeric, got dtype {s.dtype}")
            s = s.astype(np.float64)
            if s.shape != (g.channels,):
                raise RefquantError(
                    f"scores[{g.name!r}] has shape {s.shape}, expected ({g.channels},) for the group's channels"
                )
            if np.isnan(s).any():
                raise RefquantError(f"scores[{g.name!r}] holds NaN; channel scores must be ordered")
        else:
            s = group_channel_scores(arrays, g, norm=norm, reduce=reduce, members=score_members)
        k = _channel_count(amt, g.channels, count_rule)
        order = np.argsort(s, kind="stable")
        keep = np.sort(order[k:]).astype(np.int64)
        kept[g.name], used[g.name] = keep, s
        for c in g.members:
            idx = channel_to_columns(keep, g.channels, c.repeat, c.order)
            keep_idx.setdefault(c.tensor, []).append((c.axis, idx))
            if c.depthwise:
                dw[c.tensor] = int(keep.size)

    masks, out = {}, dict(arrays)
    for name, per_axis in keep_idx.items():
        w = np.asarray(arrays[name])
        mask = np.ones(w.shape, dtype=bool)
        small = w
        for ax, idx in per_axis:
            sel = np.zeros(w.shape[ax], dtype=bool)
            sel[idx] = True
            shape = [1] * w.ndim
            shape[ax] = w.shape[ax]
            mask &= sel.reshape(shape)
            small = np.take(small, idx, axis=ax)
        masks[name], out[name] = mask, small
    return StructuredPruning(masks, out, kept, used, groups, dw)
