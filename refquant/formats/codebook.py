"""Codebook formats: a table of values, each element stored as the index of one.

Registered codebooks (exact float32 constants):

=================  ====  =====================================================
name               bits  values
=================  ====  =====================================================
``nf4``            4     bitsandbytes' NormalFloat4 (QLoRA), sorted, index 7 is 0
``bnb_fp4``        4     bitsandbytes' FP4 (e2m1 with bias 3: 0, 0.0625, 2, 3, 4,
                         6, 8, 12) / 12 in *bit-pattern* order, sign in bit 3;
                         index 8 is a second +0 (bitsandbytes writes ``-0`` as
                         the Python int 0)
``bnb_dynamic8``   8     bitsandbytes' 8-bit dynamic map ``create_dynamic_map()``
                         (signed, 7 exponent bits), sorted, 255 values plus a 0
=================  ====  =====================================================

Assignment rules
----------------
:func:`nearest_index` — the exact nearest value (distances in float64, exact for
float32 data); a value equally far from two entries takes the **lower index**.

:func:`threshold_index` — bitsandbytes' rule: count the thresholds ``t_j`` with
``x > t_j`` on the codebook sorted by value (``torch.bucketize(x, t, right=False)``,
and the CUDA decision trees ``if (x > t)``); a value exactly on a threshold takes
the lower *value*. The thresholds are float32 midpoints ``(c_j + c_{j+1}) / 2``
or a kernel's literal constants, which can be an ulp off the exact midpoint, so
this is not always the exact nearest.

Blockwise absmax
----------------
:func:`quantize_blockwise_absmax` splits the flattened array into blocks of
``block_size`` (the last one partial with its own absmax), divides each block by
its absolute maximum (or multiplies by its float32 reciprocal, as bitsandbytes
does), clamps to [-1, 1] and assigns codes; :func:`dequantize_blockwise_absmax`
is ``codebook[q] * absmax`` in float32.

Reference
---------
Dettmers et al., "QLoRA" (2023) §3 (NF4, double quantization); Dettmers et al.,
"8-bit Optimizers via Block-wise Quantization" (2022) (dynamic map); bitsandbytes
``functional.py`` ``get_4bit_type``, ``create_dynamic_map``,
``backends/default/ops.py`` ``quantize_4bit``, ``csrc/kernels.cu`` ``dQuantizeNF4``.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import numpy as np

from .._errors import RefquantError
from ..kernels._backend import resolve_backend
from ._registry import register

__all__ = [
    "Codebook",
    "NF4_VALUES",
    "BNB_FP4_VALUES",
    "create_dynamic_map",
    "nearest_index",
    "threshold_index",
    "midpoint_thresholds",
    "quantize_blockwise_absmax",
    "dequantize_blockwise_absmax",
    "kmeans_codebook",
    "codebook",
    "KERNEL_THRESHOLD",
]

#: elements from which ``backend="auto"`` runs the Numba kernels of
#: :mod:`refquant.kernels.cpu.codebook` (every public function here takes ``backend=``:
#: ``"numpy"`` the NumPy body, the reference; ``"cpu"`` the kernel, bit-identical;
#: ``REFQUANT_BACKEND=numpy`` forces the reference)
KERNEL_THRESHOLD = 1 << 16

# bitsandbytes functional.get_4bit_type("nf4") (== csrc/kernels.cu dDequantizeNF4), as float32.
NF4_VALUES = np.array(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    dtype=np.float32,
)

# bitsandbytes functional.get_4bit_type("fp4"): these numbers divided by 12 in float32.
#   index bits  S E E M:  0b000 = 0, 0b001 = 0.0625, 0b010 = 8, 0b011 = 12,
#                         0b100 = 4, 0b101 = 6, 0b110 = 2, 0b111 = 3; bit 3 = sign
BNB_FP4_VALUES = (
    np.array([0, 0.0625, 8, 12, 4, 6, 2, 3, 0, -0.0625, -8, -12, -4, -6, -2, -3], dtype=np.float32)
    / np.float32(12)
).astype(np.float32)


def create_dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> np.ndarray:
    """bitsandbytes' dynamic quantization map (sorted float32, ``2**total_bits`` entries).

    Exponent ``i`` of ``max_exponent_bits`` covers the decade :math:`10^{i-(E-1)}`
    with :math:`2^{i + 7 - E}` (+1) linearly spaced bin centres between 0.1 and 1
    (``torch.linspace`` in float32, centres ``(b_k + b_{k+1}) / 2`` in float32, then
    scaled by a Python float and rounded to float32); 0 and 1.0 are added and the
    list is padded with zeros to 256 and sorted.

    Formula
    -------
    :math:`v = \\pm 10^{i - E + 1} \\cdot (b_k + b_{k+1}) / 2`, :math:`b = \\mathrm{linspace}(0.1, 1, n_i)`.

    Reference
    ---------
    bitsandbytes ``functional.create_dynamic_map``; Dettmers (2016), "8-Bit
    Approximations for Parallelism in Deep Learning".
    """
    try:
        max_exponent_bits = operator.index(max_exponent_bits)  # range() in bitsandbytes
        tb_ok = int(total_bits) == total_bits  # only arithmetic: bitsandbytes takes 8.0
    except (TypeError, ValueError, OverflowError):
        tb_ok = False
    if not tb_ok:
        raise RefquantError(f"max_exponent_bits must be an integer and total_bits an integral "
                            f"number, got {max_exponent_bits!r}, {total_bits!r}")
    total_bits = int(total_bits)
    if max_exponent_bits <= 0 and 2 ** (total_bits - 1 - max_exponent_bits) - 1 > 0:
        raise RefquantError(f"max_exponent_bits={max_exponent_bits} with total_bits={total_bits}: "
                            "bitsandbytes fails here (the padding items reuse an exponent never set)")
    data: list[float] = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    i = 0
    for i in range(max_exponent_bits):
        n_items = int(
            2 ** (i + non_sign_bits - max_exponent_bits) + 1
            if signed
            else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1
        )
        means = _linspace_means(n_items)
        data += _scaled(means, 10 ** (-(max_exponent_bits - 1) + i), signed)
    if additional_items > 0:
        means = _linspace_means(additional_items + 1)
        data += _scaled(means, 10 ** (-(max_exponent_bits - 1) + i), signed)
    data += [0.0, 1.0]
    if len(data) != 2**total_bits:
        raise RefquantError(f"dynamic map with these arguments has {len(data)} values, not {2**total_bits}")
    data += [0.0] * (256 - len(data))
    return np.array(sorted(data), dtype=np.float32)


def _scaled(means, factor, signed) -> list[float]:
    # torch: float32 tensor * Python scalar multiplies in float32 (the scalar rounded to float32)
    f = np.float32(factor)
    out = [float(np.float32(m) * f) for m in means]
    if signed:
        out += [float(np.float32(m) * -f) for m in means]
    return out


def _linspace_means(steps: int) -> list[float]:
    # torch.linspace(0.1, 1, steps, dtype=float32) on the CPU (RangeFactoriesKernel.cpp):
    # step = (end - start) / (steps - 1) in float32; element i is start + step * i for
    # i < steps // 2, else end - step * (steps - 1 - i), each compiled to one fused
    # multiply-add (a single rounding: computed exactly in float64, then rounded).
    start, end = np.float32(0.1), np.float32(1.0)
    step = np.float32((end - start) / np.float32(steps - 1))
    i = np.arange(steps)
    exact = np.where(
        i < steps // 2,
        np.float64(start) + np.float64(step) * i,
        np.float64(end) - np.float64(step) * (steps - 1 - i),
    )
    b = exact.astype(np.float32)
    means = ((b[:-1] + b[1:]) / np.float32(2.0)).astype(np.float32)
    return [float(m) for m in means]


@dataclass(frozen=True, eq=False)
class Codebook:
    """A named table of float32 values; codes are indices into it."""

    name: str
    values: np.ndarray = field(repr=False)
    family: str = "codebook"

    def __post_init__(self):
        try:
            v = np.asarray(self.values, dtype=np.float32)
        except (TypeError, ValueError):
            raise RefquantError(f"codebook values must be real numbers, got {self.values!r}") from None
        if v.ndim != 1 or v.size < 2 or not np.isfinite(v).all():
            raise RefquantError(f"codebook values must be a 1-D finite array of >= 2 values, got {v!r}")
        v = v.copy()
        v.setflags(write=False)
        object.__setattr__(self, "values", v)

    @property
    def bits(self) -> int:
        return int(np.ceil(np.log2(self.values.size)))

    def __repr__(self) -> str:
        return f"Codebook({self.name!r}, {self.values.size} values)"


NF4 = register(Codebook("nf4", NF4_VALUES))
BNB_FP4 = register(Codebook("bnb_fp4", BNB_FP4_VALUES))
BNB_DYNAMIC8 = register(Codebook("bnb_dynamic8", create_dynamic_map()))


def codebook(cb) -> np.ndarray:
    """The float32 values of a codebook given by name, :class:`Codebook` or array."""
    if isinstance(cb, Codebook):
        return cb.values
    if isinstance(cb, str):
        from ._registry import get_format

        f = get_format(cb)
        if not isinstance(f, Codebook):
            raise RefquantError(f"format {cb!r} is not a codebook (family {f.family!r})")
        return f.values
    return Codebook("user", cb).values


def _finite(x, argname="x"):
    try:
        a = np.asarray(x)
    except (TypeError, ValueError):
        raise RefquantError(f"{argname} must be a rectangular real array") from None
    if a.dtype.kind not in "fiu":
        raise RefquantError(f"{argname} must be a real array, got dtype {a.dtype}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise RefquantError(f"{argname} contains NaN or Inf; codebooks have neither")
    return a


def _use_kernel(backend, a) -> bool:
    """Whether the Numba kernel runs on the validated array ``a`` (it reads every dtype but longdouble)."""
    if resolve_backend(backend, a.size, threshold=KERNEL_THRESHOLD, cuda=False) != "cpu":
        return False
    return a.dtype.itemsize <= 8


def _kernel_source(a):
    """(flat array the kernel reads, float64 widening table or None): float16 is read through a table."""
    flat = np.ascontiguousarray(a).reshape(-1)
    if a.dtype == np.float16:
        from ..kernels.cpu.floats import widening_table

        return flat.view(np.uint16), widening_table(np.float16)
    return flat, None


def nearest_index(x, values, *, backend: str = "auto") -> np.ndarray:
    """Index of the nearest codebook value; ties go to the lower index.

    Formula
    -------
    :math:`q = \\min \\arg\\min_j |x - c_j|`, decided exactly: each difference is formed in
    float64 together with its rounding error (TwoSum), and distances are compared on
    (rounded value, error), so 1 - 1e-20 and 1 + 1e-20 do not tie.

    Reference
    ---------
    Nearest-neighbour vector quantization, scalar case (Gersho & Gray, 1992).

    ``backend``: ``"numpy"`` (the reference), ``"cpu"`` (Numba, no n x K temporaries),
    ``"auto"`` (the kernel from :data:`KERNEL_THRESHOLD` elements).
    """
    c = codebook(values).astype(np.float64)
    a = _finite(x)
    if _use_kernel(backend, a):
        from ..kernels.cpu import codebook as kc

        src, table = _kernel_source(a)
        out = np.empty(src.size, np.uint8 if c.size <= 256 else np.int64)
        if table is None:
            kc.nearest_index_into(src, c, out)
        else:
            kc.nearest_index_table_into(src, table, c, out)
        return out.reshape(a.shape)
    a = a.astype(np.float64)[..., None]
    hi = a - c  # TwoSum: a - c = hi + lo exactly
    bb = hi - a
    lo = (a - (hi - bb)) + (-c - bb)
    dist = np.abs(hi)
    tied = dist == dist.min(axis=-1, keepdims=True, initial=np.inf)
    # |a - c| = |hi| + sign(hi) * lo, and rounding is monotone: order by |hi|, then by sign(hi) * lo
    second = np.where(tied, np.sign(hi) * lo, np.inf)
    return np.argmin(second, axis=-1).astype(np.uint8 if c.size <= 256 else np.int64)  # first minimum


def midpoint_thresholds(values) -> tuple[np.ndarray, np.ndarray]:
    """``(thresholds, order)``: float32 midpoints of the value-sorted codebook and the sort order.

    ``order`` is a stable argsort (equal values keep index order: bitsandbytes' FP4
    zeros 0 then 8, as ``torch.argsort`` returns them).
    """
    c = codebook(values)
    order = np.argsort(c, kind="stable")
    s = c[order]
    return ((s[:-1] + s[1:]) / np.float32(2)).astype(np.float32), order


def threshold_index(x, thresholds, order=None, *, backend: str = "auto") -> np.ndarray:
    """bitsandbytes' assignment: the number of thresholds strictly below ``x``, mapped through ``order``.

    Formula
    -------
    :math:`k = \\#\\{j : x > t_j\\}`, :math:`q = \\mathrm{order}[k]`: a value exactly on
    :math:`t_j` takes the lower-valued neighbour.

    Reference
    ---------
    ``torch.bucketize(x, t, right=False)`` in bitsandbytes' default backend;
    ``dQuantizeNF4`` / ``dQuantize`` in ``csrc/kernels.cu``.

    ``backend`` as in :func:`nearest_index`; the kernel's binary search needs sorted
    thresholds, so unsorted ones (for which ``searchsorted``'s answer is its own
    algorithm's) always run the reference.
    """
    t = _finite(thresholds, "thresholds").astype(np.float32)
    if t.ndim != 1:
        raise RefquantError(f"thresholds must be 1-D, got shape {t.shape}")
    a = _finite(x)
    if order is not None:
        order = np.asarray(order)
        if order.shape != (t.size + 1,) or order.dtype.kind not in "iu":
            raise RefquantError(
                f"order must hold {t.size + 1} integer indices (one per bucket of {t.size} thresholds), "
                f"got shape {order.shape} of {order.dtype}"
            )
    if _use_kernel(backend, a) and not np.any(t[1:] < t[:-1]):
        return _threshold_kernel(a, t, order)
    a = a.astype(np.float32)
    k = np.searchsorted(t, a, side="left")  # count of t_j < x
    if order is not None:
        k = order[k]
    return k.astype(np.uint8)


def _threshold_kernel(a, t, order):
    from ..kernels.cpu import codebook as kc

    src, table = _kernel_source(a)
    out = np.empty(src.size, np.uint8)
    use = order is not None
    o = np.asarray(order).astype(np.int64) if use else np.zeros(1, np.int64)
    if table is None:
        kc.threshold_index_into(src, t, o, use, out)
    else:
        kc.threshold_index_table_into(src, table, t, o, use, out)
    return out.reshape(a.shape)


def _blocks(n, block_size):
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size <= 0:
        raise RefquantError(f"block_size must be a positive integer, got {block_size!r}")
    return -(-n // block_size)


def quantize_blockwise_absmax(x, values, block_size: int = 64, *, scale_op: str = "reciprocal",
                              assign: str = "midpoints", zero_absmax: float = 1e-38, backend: str = "auto"):
    """Blockwise absmax quantization of the flattened ``x`` onto a codebook.

    Parameters
    ----------
    x : array_like of float
        Flattened in C order; not modified.
    values : codebook name, :class:`Codebook` or array
        Values in [-1, 1].
    block_size : int
        Elements per block; the last block may be partial (its own absmax).
    scale_op : {"reciprocal", "divide"}
        ``x * float32(1 / absmax)`` (bitsandbytes' CUDA kernel and default backend's
        full blocks) or ``x / absmax`` (its native CPU 8-bit code, its default
        backend's partial last block).
    assign : {"midpoints", "nearest"}
        :func:`threshold_index` on float32 midpoints (bitsandbytes) or
        :func:`nearest_index` (exact, ties to the lower index).
    zero_absmax : float
        The smallest divisor: each block divides by ``max(absmax, zero_absmax)``
        (bitsandbytes' ``absmax.clamp(min=1e-38)``), so an all-zero block and a
        block whose absmax is below it (float32 subnormals: [1e-40, -5e-41] codes
        as [0, 0]) both use it. The absmax returned is the unclamped one (0 for an
        all-zero block).
    backend : {"auto", "numpy", "cpu"}
        As in :func:`nearest_index`; the kernel works block by block (no float64 or
        padded copy of ``x``).

    Returns
    -------
    codes : uint8 array of shape ``(x.size,)``
    absmax : float32 array of shape ``(ceil(n / block_size),)``

    Formula
    -------
    :math:`a_b = \\max_{i \\in b} |x_i|`, :math:`q_i = \\mathrm{assign}(\\mathrm{clip}(x_i / a_b, -1, 1))`.

    Reference
    ---------
    bitsandbytes ``backends/default/ops.py`` ``quantize_blockwise`` / ``quantize_4bit``.
    """
    a = _finite(x)
    if a.dtype.kind == "f" and a.size and max(-a.min(), a.max()) > np.finfo(np.float32).max:
        raise RefquantError(
            f"x holds {float(max(-a.min(), a.max()))!r}, beyond float32 (blockwise absmax works in float32)"
        )
    a = np.ascontiguousarray(a, dtype=np.float32).reshape(-1)
    n = a.size
    nb = _blocks(n, block_size)
    try:
        with np.errstate(over="ignore"):
            z32 = np.float32(zero_absmax)
        zero_ok = bool(z32 > 0 and np.isfinite(z32))  # 1e-50 is 0 in float32
    except (TypeError, ValueError):
        zero_ok = False
    if not zero_ok:
        raise RefquantError(f"zero_absmax must be a positive float32 number, got {zero_absmax!r}")
    if scale_op not in ("reciprocal", "divide"):
        raise RefquantError(f"scale_op must be 'reciprocal' or 'divide', got {scale_op!r}")
    if assign not in ("midpoints", "nearest"):
        raise RefquantError(f"assign must be 'midpoints' or 'nearest', got {assign!r}")
    if resolve_backend(backend, n, threshold=KERNEL_THRESHOLD, cuda=False) == "cpu":
        from ..kernels.cpu import codebook as kc

        t, order = midpoint_thresholds(values)
        codes = np.empty(n, np.uint8)
        absmax = np.empty(nb, np.float32)
        kc.blockwise_absmax_into(a, int(block_size), z32, scale_op == "reciprocal", assign == "midpoints", t,
                                 order.astype(np.int64), codebook(values).astype(np.float64), codes, absmax)
        return codes, absmax
    pad = nb * block_size - n
    ab = np.abs(np.concatenate([a, np.zeros(pad, np.float32)])).reshape(nb, block_size)
    absmax = ab.max(axis=1) if n else np.zeros(0, np.float32)
    div = np.maximum(absmax, np.float32(zero_absmax)).astype(np.float32)
    per = np.repeat(div, block_size)[:n]
    if scale_op == "reciprocal":
        scaled = a * (np.float32(1) / per)
    else:
        scaled = a / per
    scaled = np.clip(scaled, np.float32(-1), np.float32(1)).astype(np.float32)
    if assign == "midpoints":
        t, order = midpoint_thresholds(values)
        codes = threshold_index(scaled, t, order)
    else:
        codes = nearest_index(scaled, values)
    return codes.astype(np.uint8), absmax.astype(np.float32)


def dequantize_blockwise_absmax(codes, absmax, values, block_size: int = 64, *,
                                backend: str = "auto") -> np.ndarray:
    """``values[codes] * absmax`` per block, float32, flat.

    Formula
    -------
    :math:`\\hat x_i = c_{q_i} \\cdot a_{\\lfloor i / B \\rfloor}` (one float32 multiply).

    Reference
    ---------
    bitsandbytes ``dequantize_blockwise`` / ``dequantize_4bit``.

    ``backend`` as in :func:`quantize_blockwise_absmax`.
    """
    c = codebook(values)
    try:
        q = np.asarray(codes).ravel()
    except (TypeError, ValueError):
        raise RefquantError("codes must be a rectangular array of integers") from None
    if q.dtype.kind not in "iu" or (q.size and (q.min() < 0 or q.max() >= c.size)):
        raise RefquantError(f"codes must be integers in [0, {c.size}), got dtype {q.dtype}")
    try:
        am = np.asarray(absmax, dtype=np.float32).ravel()
    except (TypeError, ValueError):
        raise RefquantError(f"absmax must be real numbers, got {absmax!r}") from None
    nb = _blocks(q.size, block_size)
    if am.size != nb:
        raise RefquantError(f"absmax has {am.size} values but {q.size} codes in blocks of {block_size} need {nb}")
    if resolve_backend(backend, q.size, threshold=KERNEL_THRESHOLD, cuda=False) == "cpu":
        from ..kernels.cpu import codebook as kc

        out = np.empty(q.size, np.float32)
        kc.dequantize_into(np.ascontiguousarray(q), np.ascontiguousarray(am), c, int(block_size), out)
        return out
    return (c[q] * np.repeat(am, block_size)[: q.size]).astype(np.float32)


def kmeans_codebook(x, k: int, *, iters: int = 50, seed: int = 0, sample: int | None = 100_000) -> np.ndarray:
    """A ``k``-value codebook fitted to ``x`` by Lloyd's algorithm (1-D k-means), deterministic.

    Initialisation: the ``(j + 1/2) / k`` quantiles of the data (no randomness);
    ``seed`` only picks the subsample when ``x`` has more than ``sample`` values.
    Assignment by :func:`nearest_index`'s rule (ties to the lower index); an empty
    cluster keeps its previous centre. Stops after ``iters`` rounds or when no
    assignment changes. Returns the sorted float32 centres.

    Formula
    -------
    :math:`\\min_c \\sum_i \\min_j (x_i - c_j)^2`; update :math:`c_j = \\mathrm{mean}\\{x_i : q_i = j\\}`.

    Reference
    ---------
    Lloyd (1982), "Least squares quantization in PCM"; Han et al. (2016), "Deep
    Compression" (weight sharing by k-means).
    """
    a = _finite(x).astype(np.float64).ravel()
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 2 <= k <= 256:
        raise RefquantError(f"k must be an integer in 2..256, got {k!r}")
    if a.size < k:
        raise RefquantError(f"x has {a.size} values, fewer than k = {k}")
    if isinstance(iters, bool) or not isinstance(iters, (int, np.integer)) or iters < 0:
        raise RefquantError(f"iters must be a non-negative integer, got {iters!r}")
    if sample is not None and (isinstance(sample, bool) or not isinstance(sample, (int, np.integer))
                               or sample < k):
        raise RefquantError(f"sample must be None or an integer >= k = {k}, got {sample!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise RefquantError(f"seed must be a non-negative integer, got {seed!r}")
    if sample is not None and a.size > sample:
        a = np.random.default_rng(seed).choice(a, size=sample, replace=False)
    c = np.quantile(a, (np.arange(k) + 0.5) / k)
    assign = None
    for _ in range(iters):
        new = np.argmin(np.abs(a[:, None] - c[None, :]), axis=1)
        if assign is not None and np.array_equal(new, assign):
            break
        assign = new
        sums = np.bincount(assign, weights=a, minlength=k)
        counts = np.bincount(assign, minlength=k)
        c = np.where(counts > 0, sums / np.maximum(counts, 1), c)
    return np.sort(c).astype(np.float32)
