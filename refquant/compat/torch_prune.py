"""``torch.nn.utils.prune`` on dicts of NumPy arrays: the same masks, by torch's names.

A *module* here is any mutable mapping of names to arrays (``{"weight": w,
"bias": b}``, a state dict). Like torch, the functions modify the module in
place and return it; the arrays themselves are never written to (new arrays are
stored). After pruning ``name``:

==================  ===========================================  ===========================
``naming``          keys in the module                           torch
==================  ===========================================  ===========================
``"torch"``         ``name`` (= ``name_orig * name_mask``),       the module's attributes;
                    ``name_orig``, ``name_mask``                 its ``state_dict`` holds
                                                                 ``name_orig``, ``name_mask``
``"plain"``         ``name`` (pruned), ``name_mask``             (compact; no original kept)
==================  ===========================================  ===========================

Masks have the weight's dtype (0.0 / 1.0), as torch's ``ones_like(orig)`` on a
first unstructured pruning. torch's stored mask takes the *importance scores'*
dtype instead wherever it builds the mask from them: ``ln_structured`` (and
``random_structured``) ``zeros_like(t)``, and every repeated pruning
(``PruningContainer`` casts the mask ``.to(dtype=t.dtype)``); float64
importance scores on a float32 weight give torch a float64 ``weight_mask``.
The values, and the pruned weight (torch casts the mask to the weight's dtype
before multiplying), are the same. The pruned weight is torch's product
``mask * orig``, so a pruned negative weight is -0.0 and a pruned NaN stays NaN
(``refquant.prune.apply_mask`` gives +0 instead).

Semantics matched (torch 2.x ``torch/nn/utils/prune.py``):

* ``amount``: an ``int`` is a count, a ``float`` a fraction turned into a count
  by Python's ``round`` (half to even): ``_compute_nparams_toprune``. ``bool``
  is an int to torch, but ``True`` reaches ``torch.topk`` / ``torch.kthvalue``
  as ``k``, which refuse a bool: ``TypeError`` in the unstructured and random
  methods, while ``ln_structured`` (``k`` = channels kept, an int) prunes one.
  A NaN ``amount`` fails in ``round`` with torch's ValueError message. Errors
  carry torch's messages; type errors are also ``TypeError`` and bad dims
  ``IndexError``.
* Repeated pruning goes through torch's ``PruningContainer``: unstructured
  methods choose among the still-unpruned entries and count ``amount`` on them;
  structured methods among the channels not yet entirely zero; the importance
  of the next round is the *pruned* weight (``getattr(module, name)``).
* ``l1_unstructured`` ranks ``|importance|`` (so negative custom importance
  scores are ranked by magnitude); ``ln_structured`` keeps the channels of
  largest norm (``torch.topk(norm, k=n_keep)``).
* Ties: ``torch.topk`` documents no order; refquant prunes the lower flat index
  first (keeps the higher). On tie-free inputs the masks are identical.
* Random methods draw from ``numpy.random.default_rng(seed)``: they cannot
  reproduce torch's RNG stream (``torch.rand_like``), only its distribution and
  counts. ``random_unstructured`` prunes the ``k`` largest of one uniform draw
  per entry; ``random_structured`` keeps the channels whose draw is above the
  ``k``-th smallest, as torch does.
* ``global_unstructured`` takes ``(module, name)`` pairs; because dicts cannot
  be dict keys, its ``importance_scores`` is a list aligned with ``parameters``
  or a dict keyed by ``name`` (names must then be unique).
* ``ln_structured``'s ``n`` accepts numbers (negative ones too, as torch.norm
  does), ``inf``, ``-inf`` and ``"fro"`` (= 2); ``"nuc"`` is refused. Norms are
  computed in float64; torch computes float32 weights' norms in float32
  (squares underflow below about 1e-19 and overflow above about 1.8e19:
  ``[[1e-30, 1e-30], [2e-30, 0]]`` has norms ``[0, 0]`` in torch; partly
  subnormal squares lose precision and can reorder channels, e.g. entries
  near 1e-22), so on such weights torch may see ties where refquant does not,
  or rank differently. Channels whose norms agree to float32 rounding are
  ranked by torch's rounding, which refquant does not reproduce: two
  channels holding the same magnitudes in another order (equal norms in exact
  arithmetic; refquant's float64 sums agree to the last bit or two) get L0.5
  norms two float32 ulps apart in torch
  (``[1, 2, 0, 2, -2, 2, -3, -3, 1, 3, 2, -3]`` and
  ``[1, -2, 3, 2, -2, -3, -3, -2, 0, 2, -3, -1]``: 255.97667 vs 255.97665).
  float16 / bfloat16 weights are accumulated in float32 by torch and match
  on tie-free norms.
* A failed call leaves the module as it was. torch does not quite: when a
  *repeated* pruning fails (``l1_unstructured(m, "weight", 4)`` on a 2×2
  weight, then ``l1_unstructured(m, "weight", 1)``: "amount=1 should be
  smaller than the number of parameters to prune=0"), torch has already
  removed the pruning hook, so ``is_pruned(m)`` turns False while
  ``weight_orig`` / ``weight_mask`` remain and ``prune.remove`` then raises.
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Iterable, MutableMapping

import numpy as np

from .._errors import RefquantError
from ..prune.scores import ln_norm

__all__ = [
    "PruneTypeError",
    "PruneIndexError",
    "L1Unstructured",
    "RandomUnstructured",
    "LnStructured",
    "RandomStructured",
    "CustomFromMask",
    "Identity",
    "identity",
    "random_unstructured",
    "l1_unstructured",
    "random_structured",
    "ln_structured",
    "global_unstructured",
    "custom_from_mask",
    "remove",
    "is_pruned",
]


class PruneTypeError(RefquantError, TypeError):
    """torch raises ``TypeError`` here; this is both a RefquantError and a TypeError."""


class PruneIndexError(RefquantError, IndexError):
    """torch raises ``IndexError`` here; this is both a RefquantError and an IndexError."""


# --------------------------------------------------------------------------- torch helpers
def _validate_pruning_amount_init(amount) -> None:
    if not isinstance(amount, numbers.Real):
        raise PruneTypeError(f"Invalid type for amount: {amount}. Must be int or float.")
    if (isinstance(amount, numbers.Integral) and amount < 0) or (
        not isinstance(amount, numbers.Integral) and (float(amount) > 1.0 or float(amount) < 0.0)
    ):
        raise RefquantError(
            f"amount={amount} should either be a float in the range [0, 1] or a non-negative integer"
        )


def _validate_pruning_amount(amount, tensor_size) -> None:
    if isinstance(amount, numbers.Integral) and amount > tensor_size:
        raise RefquantError(
            f"amount={amount} should be smaller than the number of parameters to prune={tensor_size}"
        )


def _compute_nparams_toprune(amount, tensor_size) -> int:
    # torch: an Integral is a count; anything else round(amount * size), half to even.
    if isinstance(amount, numbers.Integral):
        return amount if isinstance(amount, bool) else int(amount)
    try:
        return round(amount * tensor_size)
    except ValueError as e:  # nan: torch's own ValueError, as a RefquantError
        raise RefquantError(str(e)) from None


def _check_k(k, op: str) -> None:
    """torch hands the count to ``torch.topk`` / ``torch.kthvalue``, which refuse a bool."""
    if isinstance(k, bool):
        raise PruneTypeError(f"{op}(): argument 'k' must be int, not bool")


def _compute_norm(t: np.ndarray, n, dim: int) -> np.ndarray:
    """torch ``_compute_norm``: ``torch.norm(t, p=n, dim=all but dim)``.

    Beyond :func:`refquant.prune.ln_norm`: channels with no entries have norm 0,
    and ``n < 0`` is :math:`(\\sum |x|^n)^{1/n}` (a zero entry gives ``inf``, so
    the norm 0), both as torch.norm computes them.
    """
    if t.size == 0:
        return np.zeros(t.shape[dim])
    if isinstance(n, numbers.Real) and not isinstance(n, bool) and -np.inf < float(n) < 0:
        a = np.moveaxis(np.abs(np.asarray(t, dtype=np.float64)), dim, 0).reshape(t.shape[dim], -1)
        with np.errstate(divide="ignore", over="ignore"):
            return np.sum(a ** float(n), axis=1) ** (1.0 / float(n))
    return ln_norm(t, n, axis=dim)


def _validate_structured_pruning(t: np.ndarray) -> None:
    if t.ndim <= 1:
        raise RefquantError(
            "Structured pruning can only be applied to multidimensional tensors. "
            f"Found tensor of shape {t.shape} with {t.ndim} dims"
        )


def _as_tensor(x, what: str) -> np.ndarray:
    """``np.asarray(x)`` of a real (or bool) array; anything else is refused, naming ``what``."""
    try:
        a = np.asarray(x)
    except (ValueError, TypeError, OverflowError) as e:
        raise RefquantError(f"{what} must be an array of numbers: {e}") from None
    if a.dtype.kind not in "biuf" and not a.dtype.name.startswith(("float", "bfloat")):  # ml_dtypes too
        raise PruneTypeError(f"{what} must be an array of real numbers, got dtype {a.dtype}")
    return a


def _rng(seed):
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as e:
        raise RefquantError(f"seed must be None, a non-negative int or a numpy Generator, got {seed!r:.60}: {e}") from None


def _validate_pruning_dim(t: np.ndarray, dim: int) -> int:
    if isinstance(dim, bool):
        dim = int(dim)
    try:
        dim = operator.index(dim)
    except TypeError:
        raise PruneTypeError(f"dim must be an int, got {dim!r:.60}") from None
    if dim >= t.ndim or dim < -t.ndim:
        raise PruneIndexError(f"Invalid index {dim} for tensor of size {t.shape}")
    return dim % t.ndim


def _lowest(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k lowest values; ties: lower index first (stable)."""
    return np.argsort(values, kind="stable")[:k]


def _channel_slice(ndim: int, dim: int, sel) -> tuple:
    slc = [slice(None)] * ndim
    slc[dim] = sel
    return tuple(slc)


# --------------------------------------------------------------------------- methods
class _Method:
    PRUNING_TYPE = "unstructured"

    def compute_mask(self, t: np.ndarray, default_mask: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class Identity(_Method):
    """torch ``prune.Identity``: the mask is the previous mask (ones the first time)."""

    def compute_mask(self, t, default_mask):
        return default_mask


class L1Unstructured(_Method):
    """torch ``prune.L1Unstructured(amount)``: prune the ``amount`` entries of lowest ``|t|``."""

    def __init__(self, amount):
        _validate_pruning_amount_init(amount)
        self.amount = amount

    def compute_mask(self, t, default_mask):
        k = _compute_nparams_toprune(self.amount, t.size)
        _validate_pruning_amount(k, t.size)
        mask = default_mask.copy()
        if k:
            _check_k(k, "topk")
            mask.reshape(-1)[_lowest(np.abs(t).reshape(-1), k)] = 0
        return mask


class RandomUnstructured(_Method):
    """torch ``prune.RandomUnstructured(amount)`` with a NumPy ``seed`` (a different stream)."""

    def __init__(self, amount, seed=None):
        _validate_pruning_amount_init(amount)
        self.amount = amount
        self.seed = seed

    def compute_mask(self, t, default_mask):
        k = _compute_nparams_toprune(self.amount, t.size)
        _validate_pruning_amount(k, t.size)
        mask = default_mask.copy()
        if k:
            _check_k(k, "topk")
            prob = _rng(self.seed).random(t.size)
            mask.reshape(-1)[np.argsort(-prob, kind="stable")[:k]] = 0
        return mask


def _structured_count(t, amount, dim):
    """torch's shared prelude of the structured methods: (dim, channels, channels to prune)."""
    _validate_structured_pruning(t)
    dim = _validate_pruning_dim(t, dim)
    size = t.shape[dim]
    k = _compute_nparams_toprune(amount, size)
    _validate_pruning_amount(k, size)
    return dim, size, k


class LnStructured(_Method):
    """torch ``prune.LnStructured(amount, n, dim=-1)``: drop the channels of lowest L``n`` norm."""

    PRUNING_TYPE = "structured"

    def __init__(self, amount, n, dim=-1):
        _validate_pruning_amount_init(amount)
        if isinstance(n, str):
            if n != "fro":
                raise RefquantError(f"n={n!r} is not supported; expected a number, ±inf or 'fro'")
            n = 2
        try:
            ok = isinstance(n, numbers.Real) and not np.isnan(float(n))
        except OverflowError:  # an int beyond float range
            ok = False
        if not ok:
            raise RefquantError(f"n={n!r:.60} is not supported; expected a number, ±inf or 'fro'")
        self.amount = amount
        self.n = n
        self.dim = dim

    def compute_mask(self, t, default_mask):
        dim, size, k = _structured_count(t, self.amount, self.dim)
        if k == 0:
            return default_mask
        norm = _compute_norm(t, self.n, dim)
        keep = np.ones(size, bool)
        keep[_lowest(norm, k)] = False
        mask = np.zeros_like(default_mask)
        mask[_channel_slice(t.ndim, dim, keep)] = 1
        return mask * default_mask


class RandomStructured(_Method):
    """torch ``prune.RandomStructured(amount, dim=-1)`` with a NumPy ``seed``."""

    PRUNING_TYPE = "structured"

    def __init__(self, amount, dim=-1, seed=None):
        _validate_pruning_amount_init(amount)
        self.amount = amount
        self.dim = dim
        self.seed = seed

    def compute_mask(self, t, default_mask):
        dim, size, k = _structured_count(t, self.amount, self.dim)
        if k == 0:
            return default_mask
        _check_k(k, "kthvalue")
        prob = _rng(self.seed).random(size)
        threshold = np.sort(prob)[k - 1]  # torch.kthvalue(prob, k)
        mask = np.zeros_like(default_mask)
        mask[_channel_slice(t.ndim, dim, prob > threshold)] = 1
        return mask * default_mask


class CustomFromMask(_Method):
    """torch ``prune.CustomFromMask(mask)``: the previous mask times ``mask``."""

    PRUNING_TYPE = "global"

    def __init__(self, mask):
        self.mask = _as_tensor(mask, "mask")

    def compute_mask(self, t, default_mask):
        if default_mask.shape != self.mask.shape:
            raise RefquantError(
                f"default_mask shape {default_mask.shape} must match mask shape {self.mask.shape}"
            )
        return default_mask * self.mask.astype(default_mask.dtype)


def _combine(method: _Method, t: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """torch ``PruningContainer.compute_mask`` for the latest method."""
    new_mask = mask.copy()
    if method.PRUNING_TYPE == "unstructured":
        slc = mask == 1
    elif method.PRUNING_TYPE == "structured":
        dim = _validate_pruning_dim(t, method.dim)
        others = tuple(d for d in range(t.ndim) if d != dim)
        keep_channel = mask.sum(axis=others) != 0
        slc = _channel_slice(t.ndim, dim, keep_channel)
    else:
        slc = (slice(None),) * t.ndim
    new_mask[slc] = method.compute_mask(t[slc], mask[slc])
    return new_mask


# --------------------------------------------------------------------------- module plumbing
def _check_module(module, name: str) -> None:
    if not isinstance(module, MutableMapping):
        raise RefquantError(f"module must be a mutable mapping of names to arrays, got {type(module).__name__}")
    if not isinstance(name, str):
        raise PruneTypeError(f"name must be a str, got {name!r:.60}")  # torch: getattr's TypeError
    if name not in module and name + "_orig" not in module:
        raise RefquantError(f"module has no tensor named {name!r}; it has {sorted(module)}")


def _current(module, name: str) -> np.ndarray:
    """``getattr(module, name)``: the pruned tensor if pruned, else the tensor."""
    if name + "_mask" in module:
        if name + "_orig" in module:
            return (_as_tensor(module[name + "_mask"], f"module[{name + '_mask'!r}]")
                    * _as_tensor(module[name + "_orig"], f"module[{name + '_orig'!r}]"))
        return _as_tensor(module[name], f"module[{name!r}]")
    return _as_tensor(module[name], f"module[{name!r}]")


def _apply(module, name: str, method: _Method, importance_scores=None, naming: str = "torch"):
    if naming not in ("torch", "plain"):
        raise RefquantError(f"naming must be 'torch' or 'plain', got {naming!r}")
    _check_module(module, name)
    current = _current(module, name)
    if importance_scores is not None:
        importance_scores = _as_tensor(importance_scores, "importance_scores")
        if importance_scores.shape != current.shape:
            raise RefquantError(
                f"importance_scores should have the same shape as parameter {name}, "
                f"got {importance_scores.shape} vs {current.shape}"
            )
    else:
        importance_scores = current
    pruned_before = name + "_mask" in module
    if pruned_before:
        orig = np.asarray(module[name + "_orig"]) if name + "_orig" in module else current
        default_mask = np.array(module[name + "_mask"], dtype=orig.dtype)
        mask = _combine(method, importance_scores, default_mask)
    else:
        orig = current
        mask = method.compute_mask(importance_scores, np.ones(orig.shape, dtype=orig.dtype))
    mask = np.asarray(mask, dtype=orig.dtype)
    pruned = mask * orig
    had_orig = name + "_orig" in module
    if naming == "torch" or had_orig:
        module[name + "_orig"] = orig
    module[name + "_mask"] = mask
    module[name] = pruned
    return module


# --------------------------------------------------------------------------- public functions
def identity(module, name, *, naming="torch"):
    """torch ``prune.identity``: reparametrise ``name`` with a mask of ones.

    Formula
    -------
    :math:`m = \\mathbf 1` (or the existing mask when already pruned).

    Reference
    ---------
    ``torch.nn.utils.prune.identity``.
    """
    return _apply(module, name, Identity(), naming=naming)


def random_unstructured(module, name, amount, *, seed=None, naming="torch"):
    """torch ``prune.random_unstructured``: prune ``amount`` random (unpruned) entries.

    Formula
    -------
    :math:`k` = ``amount`` (int) or :math:`\\mathrm{round}(s N)`; prune the
    :math:`k` largest of :math:`u_i \\sim U[0,1)` drawn from
    ``default_rng(seed)`` (torch draws ``torch.rand_like``: same law, other
    stream).

    Reference
    ---------
    ``torch.nn.utils.prune.RandomUnstructured.compute_mask``.
    """
    return _apply(module, name, RandomUnstructured(amount, seed=seed), naming=naming)


def l1_unstructured(module, name, amount, importance_scores=None, *, naming="torch"):
    """torch ``prune.l1_unstructured``: prune the ``amount`` entries of lowest ``|importance|``.

    Formula
    -------
    :math:`k` = ``amount`` (int) or :math:`\\mathrm{round\\_half\\_even}(s N)` with
    :math:`N` the number of still-unpruned entries; prune the :math:`k` smallest
    :math:`|s_i|` among them (ties: lower flat index first).

    Reference
    ---------
    ``torch.nn.utils.prune.L1Unstructured.compute_mask`` and
    ``PruningContainer.compute_mask``.
    """
    return _apply(module, name, L1Unstructured(amount), importance_scores, naming=naming)


def random_structured(module, name, amount, dim, *, seed=None, naming="torch"):
    """torch ``prune.random_structured``: prune ``amount`` random channels along ``dim``.

    Formula
    -------
    Draw :math:`u_c \\sim U[0,1)` per channel; keep :math:`u_c > u_{(k)}`, the
    :math:`k`-th smallest (``torch.kthvalue``).

    Reference
    ---------
    ``torch.nn.utils.prune.RandomStructured.compute_mask``.
    """
    return _apply(module, name, RandomStructured(amount, dim, seed=seed), naming=naming)


def ln_structured(module, name, amount, n, dim, importance_scores=None, *, naming="torch"):
    """torch ``prune.ln_structured``: prune the ``amount`` channels along ``dim`` of lowest L``n`` norm.

    Formula
    -------
    :math:`\\nu_c = \\|t_{[c]}\\|_n` over all axes but ``dim``; keep the
    :math:`C - k` channels of largest :math:`\\nu` (ties: the lower index is
    pruned first). Already-zero channels are excluded on repeated pruning.

    Reference
    ---------
    ``torch.nn.utils.prune.LnStructured.compute_mask`` and ``_compute_norm``.
    """
    return _apply(module, name, LnStructured(amount, n, dim), importance_scores, naming=naming)


def custom_from_mask(module, name, mask, *, naming="torch"):
    """torch ``prune.custom_from_mask``: apply a given mask (times any previous one).

    Formula
    -------
    :math:`m' = m_{\\text{previous}} \\cdot m`.

    Reference
    ---------
    ``torch.nn.utils.prune.CustomFromMask``.
    """
    _check_module(module, name)
    mask = _as_tensor(mask, "mask")
    if mask.shape != _current(module, name).shape:
        raise RefquantError(f"mask has shape {mask.shape}; expected {_current(module, name).shape}")
    return _apply(module, name, CustomFromMask(mask), naming=naming)


def global_unstructured(parameters, pruning_method, importance_scores=None, *, naming="torch",
                        **kwargs) -> None:
    """torch ``prune.global_unstructured``: rank the entries of several tensors together.

    Parameters
    ----------
    parameters : iterable of (module, name)
    pruning_method : class
        :class:`L1Unstructured` or :class:`RandomUnstructured` (or any method
        with ``PRUNING_TYPE = "unstructured"``), called with ``**kwargs``
        (``amount=...``, and ``seed=...`` for the random one). A name such as
        ``"l1_unstructured"`` is refused with a :class:`PruneTypeError` naming the
        class to pass: torch 2.13 takes only the class (a string dies there with
        ``TypeError: 'str' object is not callable``), and code written for refquant
        should run on torch unchanged.
    importance_scores : list aligned with ``parameters``, or dict keyed by name, optional

    Formula
    -------
    Concatenate the (pruned) tensors and their masks in the order of
    ``parameters``; compute the method's mask on the still-unpruned entries;
    split it back and apply it to each tensor with :func:`custom_from_mask`.

    Reference
    ---------
    ``torch.nn.utils.prune.global_unstructured``.
    """
    if not isinstance(parameters, Iterable):
        raise PruneTypeError("global_unstructured(): parameters is not an Iterable")
    try:
        parameters = list(parameters)
    except TypeError:  # a 0-d array is an Iterable that cannot be iterated
        raise PruneTypeError("global_unstructured(): parameters is not an Iterable") from None
    if not parameters:
        raise RefquantError("torch.cat(): expected a non-empty list of Tensors")  # torch's ValueError
    for item in parameters:
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise PruneTypeError(f"global_unstructured(): parameters must hold (module, name) pairs, got {item!r:.60}")
    for module, name in parameters:
        _check_module(module, name)
    if importance_scores is None:
        scores = [None] * len(parameters)
    elif isinstance(importance_scores, dict):
        names = [n for _, n in parameters]
        if len(set(names)) != len(names):
            raise RefquantError("importance_scores keyed by name needs unique names; pass a list")
        scores = [importance_scores.get(n) for n in names]
    elif isinstance(importance_scores, (list, tuple)) and len(importance_scores) == len(parameters):
        scores = list(importance_scores)
    else:
        raise PruneTypeError(
            "global_unstructured(): importance_scores must be a list aligned with parameters "
            "or a dict keyed by name"
        )
    if isinstance(pruning_method, str) or not callable(pruning_method):
        # torch 2.13 calls pruning_method(**kwargs) and dies with "'str' object is not
        # callable"; refquant takes the class as torch does, and says which
        hint = ""
        if isinstance(pruning_method, str):
            cls = {"l1_unstructured": "L1Unstructured", "random_unstructured": "RandomUnstructured",
                   "identity": "Identity"}.get(pruning_method.lower())
            hint = f" (for {pruning_method!r} pass refquant.compat.torch_prune.{cls})" if cls else ""
        raise PruneTypeError(
            "global_unstructured(): pruning_method must be a pruning method class, as in torch: "
            "L1Unstructured, RandomUnstructured, Identity, or a class with PRUNING_TYPE = "
            f"'unstructured'; got {pruning_method!r:.60}{hint}"
        )
    method = pruning_method(**kwargs)
    if method.PRUNING_TYPE != "unstructured":
        raise PruneTypeError(
            'Only "unstructured" PRUNING_TYPE supported for the `pruning_method`. '
            f"Found method {pruning_method} of type {method.PRUNING_TYPE}"
        )
    currents = [_current(m, n) for m, n in parameters]
    imps = []
    for (_, n), cur, s in zip(parameters, currents, scores, strict=True):
        s = cur if s is None else _as_tensor(s, f"importance_scores for {n!r}")
        if s.shape != cur.shape:
            raise RefquantError(f"importance_scores for {n!r} has shape {s.shape}; expected {cur.shape}")
        imps.append(np.asarray(s, dtype=np.float64).reshape(-1))
    masks = [np.asarray(m[n + "_mask"], dtype=np.float64).reshape(-1) if n + "_mask" in m
             else np.ones(cur.size) for (m, n), cur in zip(parameters, currents, strict=True)]
    final = _combine(method, np.concatenate(imps), np.concatenate(masks))
    pos = 0
    for (module, name), cur in zip(parameters, currents, strict=True):
        custom_from_mask(module, name, final[pos:pos + cur.size].reshape(cur.shape), naming=naming)
        pos += cur.size


def remove(module, name):
    """torch ``prune.remove``: make the pruning permanent.

    ``name`` becomes ``name_orig * name_mask`` (or stays the pruned ``name``
    in the plain layout); ``name_orig`` and ``name_mask`` are deleted.

    Reference
    ---------
    ``torch.nn.utils.prune.remove`` / ``BasePruningMethod.remove``.
    """
    if not isinstance(module, MutableMapping) or name + "_mask" not in module:
        raise RefquantError(
            f"Parameter '{name}' of module has to be pruned before pruning can be removed"
        )
    module[name] = _current(module, name)
    module.pop(name + "_orig", None)
    del module[name + "_mask"]
    return module


def is_pruned(module) -> bool:
    """torch ``prune.is_pruned``: whether any tensor of the module carries a ``*_mask``."""
    return any(isinstance(k, str) and k.endswith("_mask") and k[:-5] in module for k in module)
