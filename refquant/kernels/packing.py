"""Bit packing: several sub-byte codes per storage word, and back.

Codes of ``bits`` bits (1, 2, 4 or 8) are packed along one axis into words of
8, 32 or 64 bits. ``per = word_bits // bits`` consecutive codes fill one word;
a length that is not a multiple of ``per`` is padded at the end with ``pad``
(0 by default) and :func:`unpack` takes the original length back.

``order`` says where the first code of a word goes::

    4-bit codes c0 c1 into one uint8 word:

      order="low_first"  (ONNX int4 raw data, ggml, compressed-tensors, NumPy bitorder="little")
        bit  7 6 5 4 3 2 1 0
            [  c1   |  c0   ]

      order="high_first" (bitsandbytes' 4-bit, NumPy packbits bitorder="big")
        bit  7 6 5 4 3 2 1 0
            [  c0   |  c1   ]

    1-bit codes b0..b31 into one uint32 word:

      order="low_first":  bit i holds b_i          (b0 is the least significant bit)
      order="high_first": bit 31 - i holds b_i     (b0 is the most significant bit)

Words are integers in the machine's native byte order. Signed codes are stored
in two's complement within their field (int4 -8 -> 0b1000) and sign-extended by
``unpack(..., signed=True)``.
"""

from __future__ import annotations

import operator

import numpy as np

from .._core.granularity import normalize_axis
from .._errors import RefquantError
from ._backend import resolve_backend

__all__ = [
    "pack",
    "unpack",
    "pack_nibbles",
    "unpack_nibbles",
    "pack_bits",
    "unpack_bits",
    "pack_int4_to_int32",
    "unpack_int4_from_int32",
]

#: codes from which ``backend="auto"`` runs the Numba kernels of :mod:`refquant.kernels.cpu.packing`
#: (:func:`pack` / :func:`unpack` take ``backend=``: ``"numpy"`` the NumPy body, the reference;
#: ``"cpu"`` the kernel, bit-identical; ``REFQUANT_BACKEND=numpy`` forces the reference)
KERNEL_THRESHOLD = 1 << 16

_WORDS = {"uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64}
_ORDERS = ("low_first", "high_first")


def _check(bits, order, word):
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits not in (1, 2, 4, 8):
        raise RefquantError(f"bits must be 1, 2, 4 or 8; got {bits!r}")
    bits = int(bits)
    if order not in _ORDERS:
        raise RefquantError(f"order must be 'low_first' or 'high_first'; got {order!r}")
    try:
        wt = np.dtype(_WORDS[word] if isinstance(word, str) else word)
    except (KeyError, TypeError):
        raise RefquantError(f"word must be one of {', '.join(_WORDS)}; got {word!r}") from None
    if wt.name not in _WORDS:
        raise RefquantError(f"word must be one of {', '.join(_WORDS)}; got {word!r}")
    wbits = wt.itemsize * 8
    if bits > wbits:
        raise RefquantError(f"{bits}-bit codes do not fit a {wt.name} word")
    return wt, wbits // bits, bits


def _shifts(per, bits, order, wt):
    s = np.arange(per, dtype=np.uint64) * np.uint64(bits)
    if order == "high_first":
        s = s[::-1]
    return s.astype(wt)


def pack(codes, bits, *, axis=-1, order="low_first", word="uint8", pad=0, backend="auto") -> np.ndarray:
    """Pack ``bits``-wide codes along ``axis`` into words.

    Parameters
    ----------
    codes : array_like of integers
        Unsigned codes in ``[0, 2^bits)`` or signed codes in
        ``[-2^(bits-1), 2^(bits-1))`` (stored in two's complement).
    bits : {1, 2, 4, 8}
    axis : int
        Axis along which consecutive codes share a word.
    order : "low_first" or "high_first"
        Where the first code of a word goes (see the module diagram).
    word : "uint8", "uint16", "uint32" or "uint64"
    pad : int
        Code used to fill the last word when the length is not a multiple.
    backend : {"auto", "numpy", "cpu"}
        ``"numpy"`` the NumPy body (the reference), ``"cpu"`` the Numba kernel
        (bit-identical, no int64 copy), ``"auto"`` the kernel from :data:`KERNEL_THRESHOLD` codes.

    Returns
    -------
    numpy.ndarray of ``word``: the shape of ``codes`` with ``ceil(n / per)``
    along ``axis``.

    Reference
    ---------
    ONNX IR "int4 ... packed two per byte, the first element in the low nibble";
    numpy.packbits (``bitorder``); compressed-tensors ``pack_to_int32``.
    """
    wt, per, bits = _check(bits, order, word)
    try:
        c = np.asarray(codes)
    except (TypeError, ValueError):
        raise RefquantError("codes must be a rectangular array of integers") from None
    if c.dtype.kind not in "iub" and c.dtype.name not in ("int4", "uint4", "int2", "uint2"):
        raise RefquantError(f"codes must be integers, got dtype {c.dtype}")
    if c.dtype == bool:
        c = c.astype(np.uint8)
    if c.ndim == 0:
        raise RefquantError("codes must have at least one dimension")
    ax = normalize_axis(axis, c.ndim)
    lo, hi = -(1 << (bits - 1)), (1 << bits) - 1
    if c.size and (int(c.min()) < lo or int(c.max()) > hi):  # in the codes' own dtype: no wrap
        bad = c[(c < lo) | (c > hi)].reshape(-1)[0]
        raise RefquantError(
            f"code {int(bad)} does not fit {bits} bits (allowed {lo} .. {hi})"
        )
    try:
        pad = operator.index(pad)
    except TypeError:
        raise RefquantError(f"pad must be an integer, got {pad!r}") from None
    if not lo <= pad <= hi:
        raise RefquantError(f"pad {pad} does not fit {bits} bits")
    if resolve_backend(backend, c.size, threshold=KERNEL_THRESHOLD, cuda=False) == "cpu":
        return _pack_cpu(c, bits, ax, order, wt, per, pad)
    c = c.astype(np.int64)
    c = np.moveaxis(c, ax, -1)
    n = c.shape[-1]
    nw = -(-n // per)
    if nw * per != n:
        c = np.concatenate([c, np.full(c.shape[:-1] + (nw * per - n,), pad, np.int64)], axis=-1)
    field = (c & ((1 << bits) - 1)).astype(wt).reshape(c.shape[:-1] + (nw, per))
    words = np.bitwise_or.reduce(field << _shifts(per, bits, order, wt), axis=-1)
    return np.moveaxis(words.astype(wt), -1, ax)


def _pack_cpu(c, bits, ax, order, wt, per, pad):
    from .cpu.packing import pack_into

    if c.dtype.kind not in "iu":  # ml_dtypes int4 / uint4 / int2 / uint2: one code per byte
        c = c.astype(np.int8 if c.dtype.name.startswith("int") else np.uint8)
    cm = np.moveaxis(c, ax, -1)
    lead, n = cm.shape[:-1], cm.shape[-1]
    rows = int(np.prod(lead, dtype=np.int64))
    nw = -(-n // per)
    out = np.empty((rows, nw), wt)
    pack_into(np.ascontiguousarray(cm).reshape(rows, n), bits, _shifts(per, bits, order, np.dtype(np.int64)), pad,
              out)
    return np.moveaxis(out.reshape(lead + (nw,)), -1, ax)


def unpack(packed, bits, n=None, *, axis=-1, order="low_first", signed=False, backend="auto") -> np.ndarray:
    """Inverse of :func:`pack`: the first ``n`` codes along ``axis`` (all when None).

    Returns uint8 codes, or int8 codes sign-extended from ``bits`` when
    ``signed``. The word type is the dtype of ``packed``. ``backend`` as in :func:`pack`.

    Formula
    -------
    :math:`c_j = (w \\gg \\mathrm{shift}_j)\\ \\&\\ (2^{b} - 1)`, then
    :math:`c_j - 2^{b}` where :math:`c_j \\ge 2^{b-1}` when signed.

    Reference
    ---------
    As :func:`pack`; ``numpy.unpackbits`` for one-bit codes.
    """
    w = np.asarray(packed)
    if w.dtype.name not in _WORDS:
        raise RefquantError(f"packed must be uint8, uint16, uint32 or uint64 words, got dtype {w.dtype}")
    wt, per, bits = _check(bits, order, w.dtype.name)
    if w.ndim == 0:
        raise RefquantError("packed must have at least one dimension")
    ax = normalize_axis(axis, w.ndim)
    w = np.moveaxis(w, ax, -1)
    total = w.shape[-1] * per
    if n is None:
        n = total
    try:
        n = operator.index(n)
    except TypeError:
        raise RefquantError(f"n must be an integer or None, got {n!r}") from None
    if not 0 <= n <= total:
        raise RefquantError(
            f"n {n} is out of range: {w.shape[-1]} word(s) hold at most {total} codes"
        )
    if resolve_backend(backend, n * max(1, w.size // max(w.shape[-1], 1)), threshold=KERNEL_THRESHOLD,
                       cuda=False) == "cpu":
        from .cpu.packing import unpack_into

        lead = w.shape[:-1]
        rows = int(np.prod(lead, dtype=np.int64))
        out = np.empty((rows, n), np.int8 if signed else np.uint8)
        unpack_into(np.ascontiguousarray(w).reshape(rows, w.shape[-1]), bits,
                    _shifts(per, bits, order, np.dtype(np.int64)), bool(signed), out)
        return np.moveaxis(out.reshape(lead + (n,)), -1, ax)
    fields = (w[..., None] >> _shifts(per, bits, order, wt)) & wt.type((1 << bits) - 1)
    c = fields.reshape(w.shape[:-1] + (total,))[..., :n]
    if signed:
        c = c.astype(np.int16)
        c = np.where(c >= (1 << (bits - 1)), c - (1 << bits), c).astype(np.int8)
    else:
        c = c.astype(np.uint8)
    return np.moveaxis(c, -1, ax)


def pack_nibbles(codes, *, axis=-1, order="low_first", pad=0, backend="auto") -> np.ndarray:
    """Two 4-bit codes per byte (int4 / uint4); an odd length is padded with ``pad``.

    Reference
    ---------
    ``order="low_first"``: ONNX IR int4/uint4 raw data; ``"high_first"``:
    bitsandbytes' 4-bit quantization (first element in the high nibble).
    """
    return pack(codes, 4, axis=axis, order=order, word="uint8", pad=pad, backend=backend)


def unpack_nibbles(packed, n=None, *, axis=-1, order="low_first", signed=False, backend="auto") -> np.ndarray:
    """Inverse of :func:`pack_nibbles` (``signed`` sign-extends int4 codes).

    Reference
    ---------
    As :func:`pack_nibbles`.
    """
    p = np.asarray(packed)
    if p.dtype != np.uint8:  # an integer array of byte values (a list of ints) is taken, nothing else
        if p.dtype.kind not in "iu" or (p.size and (int(p.min()) < 0 or int(p.max()) > 255)):
            raise RefquantError(f"packed must be bytes (uint8, or integers in 0 .. 255), got dtype {p.dtype}"
                                + (f" with values {int(p.min())} .. {int(p.max())}" if p.dtype.kind in "iu" else ""))
        p = p.astype(np.uint8)
    return unpack(p, 4, n, axis=axis, order=order, signed=signed, backend=backend)


def pack_bits(bits_, *, axis=-1, order="low_first", word="uint8") -> np.ndarray:
    """One bit per element (0/1 or bool) into words; pads with 0 bits.

    Reference
    ---------
    ``numpy.packbits`` (``order="low_first"`` is ``bitorder="little"``, ``"high_first"``
    is ``"big"``); wider words hold the same bits in native byte order.
    """
    b = np.asarray(bits_)
    if b.dtype == bool:
        b = b.astype(np.uint8)
    return pack(b, 1, axis=axis, order=order, word=word)


def unpack_bits(packed, n=None, *, axis=-1, order="low_first") -> np.ndarray:
    """Inverse of :func:`pack_bits`, as uint8 0/1.

    Reference
    ---------
    ``numpy.unpackbits``.
    """
    return unpack(packed, 1, n, axis=axis, order=order)


def pack_int4_to_int32(codes, *, axis=-1) -> np.ndarray:
    """compressed-tensors ``pack-quantized``: eight int4 codes per int32 along ``axis``.

    Signed codes in [-8, 7] are first offset by +8 to [0, 15] (as compressed-tensors'
    ``pack_to_int32`` does for signed types), then packed low nibble first into
    uint32 words that are returned viewed as int32.

    Reference
    ---------
    neuralmagic/compressed-tensors, ``compressors/quantized_compressors/pack_quantized.py``.
    """
    c = np.asarray(codes)
    if c.dtype.kind not in "iu":
        raise RefquantError(f"codes must be integers, got dtype {c.dtype}")
    c = c.astype(np.int64)
    if c.size and (c.min() < -8 or c.max() > 7):
        raise RefquantError(f"int4 codes must be in [-8, 7]; got {int(c[(c < -8) | (c > 7)][0])}")
    return pack(c + 8, 4, axis=axis, order="low_first", word="uint32").view(np.int32)


def unpack_int4_from_int32(packed, n, *, axis=-1) -> np.ndarray:
    """Inverse of :func:`pack_int4_to_int32`: int8 codes in [-8, 7].

    Reference
    ---------
    compressed-tensors ``unpack_from_int32``.
    """
    w = np.asarray(packed)
    if w.dtype != np.int32:
        raise RefquantError(f"packed must be int32, got dtype {w.dtype}")
    u = unpack(w.view(np.uint32), 4, n, axis=axis, order="low_first")
    return (u.astype(np.int16) - 8).astype(np.int8)
