"""Bit-packed binary and ternary matmuls: pack signs into words, multiply by xor and popcount.

Packed layout (Larq Compute Engine's, in 64-bit words; see
``refquant.quant.bitmatmul`` for the diagram): element ``x[64*w + j]`` of a row
is bit ``j`` of word ``w``, least significant bit first; a set bit means the
code -1 (``x < 0``), a clear bit +1; the padding bits of the last word are 0.
Both operands of a matmul are packed along K: ``a_packed`` is (M, W) and
``b_packed`` is (N, W) row-major, so the result is ``A @ B.T``.

Ternary weights are two planes of that layout: ``nonzero`` (bit set where
``w != 0``) and ``negative`` (bit set where ``w < 0``).

Backends (``backend=``): ``"numpy"`` (the reference in
``refquant.quant.bitmatmul``, which unpacks every bit), ``"cpu"`` (Numba,
``refquant.kernels.cpu.binary``), ``"auto"`` (``"cpu"`` from about 2^16
word operations). ``path=`` picks the CPU kernel's implementation:
``"avx512"`` (512-bit tiles written in LLVM IR, ``vpopcntq zmm``; needs
AVX-512F and VPOPCNTDQ), ``"popcnt"`` (``llvm.ctpop.i64`` in a Numba loop) or
``"portable"`` (a byte-table popcount); ``None`` reads ``REFQUANT_CPU_PATH``
and defaults to ``"avx512"`` where the CPU has it, else ``"popcnt"``. All give
the same integers. (``path`` applies to ``matmul_binary``; the ternary
kernels have ``"popcnt"`` and ``"portable"``, and take ``"avx512"`` as ``"popcnt"``.)
Non-contiguous inputs are copied to C order first.
"""

from __future__ import annotations

import operator

import numpy as np

from .._errors import RefquantError
from ..quant import bitmatmul as _ref
from ._backend import resolve_backend
from .cpu._features import forced_path
from .packing import pack_bits

__all__ = ["pack_signs", "matmul_binary", "pack_ternary", "matmul_ternary"]

_WORD_NAMES = ("uint8", "uint16", "uint32", "uint64")
_PATHS = ("avx512", "popcnt", "portable")
_THRESHOLD = 1 << 16
_INT32_MAX = 2**31 - 1


def _real(x, name):
    try:
        a = np.asarray(x)
    except (TypeError, ValueError):
        raise RefquantError(f"{name} must be a rectangular real array") from None
    if a.dtype.kind not in "fiub":
        raise RefquantError(f"{name} must be a real array, got dtype {a.dtype}")
    if a.ndim == 0:
        raise RefquantError(f"{name} must have at least one dimension, got a scalar")
    return a


def _word(word):
    if not isinstance(word, str) or word not in _WORD_NAMES:
        raise RefquantError(f"word must be one of {_WORD_NAMES}, got {word!r}")
    return word


def pack_signs(x, *, axis=-1, word="uint64") -> np.ndarray:
    """Pack the signs of ``x`` along ``axis``: one bit per element, set where ``x < 0``.

    Parameters
    ----------
    x : array_like of real numbers
    axis : int
        The axis that is packed (K, the reduction axis of the later matmul).
    word : {"uint64", "uint32", "uint16", "uint8"}

    Returns
    -------
    numpy.ndarray of ``word``: the shape of ``x`` with ``ceil(n / bits)`` along ``axis``.

    Formula
    -------
    bit ``j`` of word ``w`` is :math:`[x_{\\mathrm{bits}\\cdot w + j} < 0]`; padding bits 0.

    Notes
    -----
    ``-0.0`` packs as +1 (bit 0): ``-0.0 < 0`` is false, as in Larq Compute
    Engine's portable ``bitpack_bitfield`` (its aarch64 assembly path reads the
    IEEE sign bit instead and would give -1). ``±inf`` pack by their sign. NaN
    has no sign to binarize and is refused with :class:`RefquantError` (LCE's
    comparison would silently give +1).

    Reference
    ---------
    larq/compute-engine ``core/bitpacking/bitpack.h`` (``bitpack_bitfield``:
    ``in[i] < 0`` into bit ``i`` of a 32-bit word, least significant first;
    ``bitpack_array`` pads the last word with zeros). A uint64 word on a
    little-endian machine holds the same bytes as two of LCE's 32-bit words.
    """
    a = _real(x, "x")
    word = _word(word)
    if a.dtype.kind == "f" and np.isnan(a).any():
        idx = tuple(int(i) for i in np.argwhere(np.isnan(a))[0])
        raise RefquantError(f"x contains NaN (first at index {idx}); a NaN has no sign to pack")
    return pack_bits(a < 0, axis=axis, order="low_first", word=word)


def pack_ternary(w, *, axis=-1, word="uint64") -> tuple[np.ndarray, np.ndarray]:
    """Pack ternary codes {-1, 0, +1} along ``axis`` into two bit planes.

    Returns
    -------
    (nonzero, negative) : two arrays of ``word`` of the same shape: bit set
    where ``w != 0``, and where ``w < 0``.

    Formula
    -------
    :math:`\\mathrm{nz}_j = [w_j \\ne 0]`, :math:`\\mathrm{neg}_j = [w_j < 0]`;
    :math:`w_j = \\mathrm{nz}_j (1 - 2\\,\\mathrm{neg}_j)`.

    Notes
    -----
    ``w`` must hold exactly the values -1, 0 and +1 (integers or floats; -0.0
    is 0); anything else is refused: quantize first
    (``refquant.quant.binary.ternarize_absmean`` for BitNet b1.58).

    Reference
    ---------
    The two-plane form of TBN / "Ternary-Binary Networks" (Wan et al., ECCV
    2018) bit-operation kernels; BitNet b1.58's own CPU format (I2_S) stores
    ``w + 1`` in two bits instead, with the same products.
    """
    a = _real(w, "w")
    word = _word(word)
    bad = ~((a == -1) | (a == 0) | (a == 1))
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise RefquantError(
            f"w must hold only -1, 0 and +1; got {a[idx].item()!r} at index {idx}"
        )
    nz = pack_bits(a != 0, axis=axis, order="low_first", word=word)
    neg = pack_bits(a < 0, axis=axis, order="low_first", word=word)
    return nz, neg


# --------------------------------------------------------------------------- validation


def _as_k(k):
    try:
        kk = operator.index(k)
    except TypeError:
        raise RefquantError(f"k must be an integer, got {k!r}") from None
    if kk < 0:
        raise RefquantError(f"k must be >= 0, got {kk}")
    if kk > _INT32_MAX:
        raise RefquantError(f"k {kk} does not fit the int32 result (at most {_INT32_MAX})")
    return kk


def _as_words(p, name, k):
    """A (rows, ceil(k/64)) C-contiguous uint64 copy of packed words of any width."""
    try:
        a = np.asarray(p)
    except (TypeError, ValueError):
        raise RefquantError(f"{name} must be an array of packed words") from None
    if a.dtype.name not in _WORD_NAMES:
        raise RefquantError(
            f"{name} must be packed unsigned words (uint8/16/32/64, as pack_signs "
            f"returns), got dtype {a.dtype}"
        )
    if a.ndim != 2:
        raise RefquantError(f"{name} must be 2-D (rows, words), got shape {a.shape}")
    bits = a.dtype.itemsize * 8
    need = -(-k // bits)
    if a.shape[1] != need:
        raise RefquantError(
            f"{name} has {a.shape[1]} {a.dtype} words per row; k = {k} needs {need} "
            f"(ceil(k / {bits}))"
        )
    if k % bits and a.shape[0]:
        pad_mask = ~((1 << (k % bits)) - 1) & ((1 << bits) - 1)
        last = a[:, -1].astype(np.uint64) & np.uint64(pad_mask)
        if last.any():
            r = int(np.argmax(last != 0))
            raise RefquantError(
                f"{name} row {r} has padding bits set beyond k = {k} "
                f"(last word {int(a[r, -1]):#x}); padding bits must be zero"
            )
    a = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("="), copy=False)  # native order
    if a.dtype != np.uint64:  # little-endian bytes, zero-padded to whole 64-bit words
        b = a.astype(a.dtype.newbyteorder("<")).view(np.uint8).reshape(a.shape[0], -1)
        nw = -(-k // 64)
        b = np.concatenate([b, np.zeros((a.shape[0], nw * 8 - b.shape[1]), np.uint8)], axis=1)
        a = np.ascontiguousarray(b).view("<u8").astype(np.uint64)
    return a


def _path(path):
    p = path
    if p is None:  # REFQUANT_CPU_PATH is shared with the int8 kernels: honour only our names
        env = forced_path()
        p = env if env in _PATHS else None
    if p is None:
        from .cpu._features import has_feature

        return "avx512" if has_feature("avx512f", "avx512vpopcntdq") else "popcnt"
    if p not in _PATHS:
        raise RefquantError(f"path must be one of {_PATHS} (or None), got {p!r}")
    if p == "avx512":
        from .cpu._features import has_feature

        if not has_feature("avx512f", "avx512vpopcntdq"):
            raise RefquantError(
                "path='avx512' needs a CPU with AVX-512F and AVX-512 VPOPCNTDQ; this one has "
                "not both (use 'popcnt' or 'portable')"
            )
    return p


def _scale(acc, alpha):
    """float32(acc) * alpha (one float32 rounding), or (float32(acc) * row) * col."""
    m, n = acc.shape
    f = acc.astype(np.float32)
    if isinstance(alpha, tuple):
        if len(alpha) != 2:
            raise RefquantError(f"alpha as a tuple must be (rows, columns), got {len(alpha)} items")
        row = _alpha_array(alpha[0], "alpha[0]", (m,)).reshape(m, 1)
        col = _alpha_array(alpha[1], "alpha[1]", (n,)).reshape(1, n)
        return (f * row) * col
    al = _alpha_array(alpha, "alpha", None)
    try:
        np.broadcast_shapes(al.shape, (m, n))
        if np.broadcast_shapes(al.shape, (m, n)) != (m, n):
            raise ValueError
    except ValueError:
        raise RefquantError(
            f"alpha of shape {al.shape} does not broadcast to the output shape {(m, n)}: "
            f"give a scalar, ({m}, 1) per row, ({n},) per column, or ({m}, {n})"
        ) from None
    return f * al


def _alpha_array(x, name, shape):
    try:
        a = np.asarray(x)
    except (TypeError, ValueError):
        raise RefquantError(f"{name} must be a real array") from None
    if a.dtype.kind not in "fiu":
        raise RefquantError(f"{name} must be real, got dtype {a.dtype}")
    a = a.astype(np.float32)
    if shape is not None and a.shape != shape:
        raise RefquantError(f"{name} must have shape {shape}, got {a.shape}")
    return a


def _dispatch(backend, work, cuda=False):
    return resolve_backend(backend, work, threshold=_THRESHOLD, cuda=cuda)


# --------------------------------------------------------------------------- matmuls


def matmul_binary(a_packed, b_packed, k, *, alpha=None, backend="auto", path=None):
    """Binary matmul on packed signs: ``k - 2·popcount(a ⊕ b)`` per (row, column).

    Parameters
    ----------
    a_packed : (M, W) unsigned words
        Rows of A packed along K by :func:`pack_signs` (any word width; the
        kernels work on uint64: narrower words are widened, a copy).
    b_packed : (N, W) unsigned words
        Rows of B (the columns of the right-hand operand), packed along K.
    k : int
        The number of packed elements per row; ``W = ceil(k / word bits)``.
    alpha : None, array or (rows, columns) tuple
        XNOR-Net's scaling: None returns the int32 sums; an array broadcasting
        to (M, N) (scalar, (M, 1) per row, (N,) per column) gives
        ``float32(C) * alpha``; a tuple ``(row (M,), col (N,))`` gives
        ``(float32(C) * row) * col``, evaluated in that order.
    backend : {"auto", "numpy", "cpu"}
    path : {"popcnt", "portable"} or None
        The CPU kernel's implementation (see the module docstring).

    Returns
    -------
    int32 (M, N), or float32 (M, N) when ``alpha`` is given.

    Formula
    -------
    :math:`C_{mn} = \\sum_{i<k} a_{mi} b_{ni} = k - 2\\,\\mathrm{popcount}(A_m \\oplus B_n)`
    for codes :math:`a, b \\in \\{\\pm 1\\}` (bit 1 = -1; padding bits are zero
    in both operands and never differ).

    Rounding: the int32 sum is exact. With ``alpha``, ``float32(C)`` is exact
    for :math:`|C| \\le 2^{24}` (rounded to nearest even beyond) and each
    multiplication by a float32 scale rounds once to nearest even; the same
    NumPy expression runs after every backend, so all agree bit for bit.

    Reference
    ---------
    Rastegari et al., "XNOR-Net", ECCV 2016, §3.2 (binary dot product as
    XNOR + popcount, scaled by α and K); Larq Compute Engine
    ``core/bgemm`` (``k - 2 * popcount(a ^ b)`` on packed rows).
    """
    kk = _as_k(k)
    a = _as_words(a_packed, "a_packed", kk)
    b = _as_words(b_packed, "b_packed", kk)
    p = _path(path)
    m, w = a.shape
    n = b.shape[0]
    be = _dispatch(backend, m * n * max(w, 1), cuda=True)
    if be == "numpy" or m == 0 or n == 0:
        acc = _ref.matmul_binary(a, b, kk)
    elif be == "cuda":
        from .cuda import matmul_binary as _cuda_binary  # numba.cuda only when asked for

        acc = _cuda_binary(np.ascontiguousarray(a, np.uint64), np.ascontiguousarray(b, np.uint64),
                           kk)
    else:
        from .cpu import binary as _cpu

        if p == "avx512":
            if w % 8:  # zero words to a whole 512-bit vector: popcount(0 ^ 0) = 0
                a = np.concatenate([a, np.zeros((m, 8 - w % 8), np.uint64)], axis=1)
                b = np.concatenate([b, np.zeros((n, 8 - w % 8), np.uint64)], axis=1)
            acc = _cpu.matmul_binary_avx512(a, b, np.int64(kk))
        else:
            f = _cpu.matmul_binary_popcnt if p == "popcnt" else _cpu.matmul_binary_portable
            acc = f(a, b, np.int64(kk))
    return acc if alpha is None else _scale(acc, alpha)


def matmul_ternary(x, w_planes, k, *, alpha=None, backend="auto", path=None):
    """Activations times ternary weights {-1, 0, +1} held in two bit planes.

    Parameters
    ----------
    x : (M, W) unsigned words, or (M, k) int8
        ±1 activations packed by :func:`pack_signs`, or int8 activation codes
        (BitNet b1.58's per-token absmax int8 quantization, computed by the caller).
    w_planes : (nonzero, negative)
        The planes :func:`pack_ternary` returns, each (N, W) packed along K.
    k : int
        The reduction length.
    alpha, backend, path
        As :func:`matmul_binary` (``path`` applies to packed activations).

    Returns
    -------
    int32 (M, N) (exact), or float32 with ``alpha``.

    Formula
    -------
    :math:`C_{mn} = \\sum_{i<k} x_{mi} t_{ni}`. Packed ±1 activations:
    :math:`\\mathrm{popcount}(\\mathrm{nz}_n) - 2\\,\\mathrm{popcount}(\\mathrm{nz}_n \\wedge
    (X_m \\oplus \\mathrm{neg}_n))`. int8 activations: the plain integer dot.

    Reference
    ---------
    microsoft/BitNet ``src/ggml-bitnet-mad.cpp``: ``quantize_i2_s`` stores
    ``w + 1`` in {0, 1, 2} two bits per weight, ``ggml_vec_dot_i2_i8_s``
    sums ``(w + 1) · y`` over int8 activations y with ``maddubs`` (exact in
    int32 at these ranges), and ggml's ``mul_mat`` for I2_S then forms
    ``(dot - act_sum) * scale``: ``dot - act_sum`` is exactly the int32
    :math:`\\sum_i w_i y_i` returned here; the float scales (the activation's
    ``127 / max|x|`` and the weight's absmean) are the caller's ``alpha``.
    """
    kk = _as_k(k)
    if not isinstance(w_planes, (tuple, list)) or len(w_planes) != 2:
        raise RefquantError("w_planes must be the (nonzero, negative) pair pack_ternary returns")
    nz = _as_words(w_planes[0], "w_planes[0] (nonzero)", kk)
    neg = _as_words(w_planes[1], "w_planes[1] (negative)", kk)
    if nz.shape != neg.shape:
        raise RefquantError(f"the planes differ in shape: {nz.shape} and {neg.shape}")
    if (neg & ~nz).any():
        r = int(np.argmax((neg & ~nz).any(axis=1)))
        raise RefquantError(
            f"w_planes row {r} has a negative bit where the nonzero bit is clear "
            "(a zero weight cannot be negative)"
        )
    p = _path(path)
    try:
        xa = np.asarray(x)
    except (TypeError, ValueError):
        raise RefquantError("x must be packed words or an int8 array") from None
    n = nz.shape[0]
    if xa.dtype == np.int8:
        if xa.ndim != 2 or xa.shape[1] != kk:
            raise RefquantError(f"int8 x must have shape (M, k={kk}), got {xa.shape}")
        if kk * 128 > _INT32_MAX:
            raise RefquantError(f"k {kk} is too long for an exact int32 sum of int8 x ternary")
        xa = np.ascontiguousarray(xa)
        m = xa.shape[0]
        be = _dispatch(backend, m * n * max(kk, 1) // 16)
        if be == "numpy" or m == 0 or n == 0:
            acc = _ref.matmul_ternary_int8(xa, nz, neg, kk)
        else:
            from .cpu import binary as _cpu

            t = _ref.ternary_codes(nz, neg, kk).astype(np.int8)
            acc = _cpu.matmul_ternary_int8(xa, np.ascontiguousarray(t))
    else:
        if xa.dtype.kind in "if" and xa.dtype.name not in _WORD_NAMES:
            raise RefquantError(
                f"x must be packed unsigned words (pack_signs) or int8 codes, got dtype {xa.dtype}"
            )
        a = _as_words(xa, "x", kk)
        m = a.shape[0]
        be = _dispatch(backend, m * n * max(a.shape[1], 1))
        if be == "numpy" or m == 0 or n == 0:
            acc = _ref.matmul_ternary_binary(a, nz, neg, kk)
        else:
            from .cpu import binary as _cpu

            f = (_cpu.matmul_ternary_binary_portable if p == "portable"
                 else _cpu.matmul_ternary_binary_popcnt)
            acc = f(a, nz, neg)
    return acc if alpha is None else _scale(acc, alpha)


def _warmup() -> None:
    """Compile (or load from the disk cache) every binary / ternary kernel this CPU can run."""
    from .cpu._features import has_feature

    x = pack_signs(np.ones((4, 70)))
    planes = pack_ternary(np.ones((4, 70)))
    paths = ["popcnt", "portable"] + (["avx512"] if has_feature("avx512f", "avx512vpopcntdq") else [])
    for p in paths:
        matmul_binary(x, x, 70, backend="cpu", path=p)
        matmul_ternary(x, planes, 70, backend="cpu", path=p)
    matmul_ternary(np.ones((4, 70), np.int8), planes, 70, backend="cpu")
