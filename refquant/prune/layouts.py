"""Sparse storage layouts: CSR / CSC / BSR, compressed-tensors bitmasks, PyTorch's 2:4 layout.

Every ``*_compress`` / ``to_*`` function has an inverse that returns the dense
array bit for bit (values are copied, never rounded).

==========================  ======================================  =====================================
layout                      stored                                  peer
==========================  ======================================  =====================================
CSR / CSC / BSR             data, indices, indptr (+ block shape)   ``scipy.sparse.csr_array`` / ...
sparse-bitmask              values (1-D), bitmask uint8 (R, ⌈C/8⌉),  compressed-tensors
                            row_offsets int64 (R,)                  ``sparse_bitmask.bitmask_compress``
sparse-24-bitmask           values (R, C/2), bitmask uint8          compressed-tensors
                                                                    ``sparse24_bitmask_compress``
2:4 semi-structured         values (R, C/2), metadata int16/int32,  torch ``sparse_semi_structured_
(CUTLASS)                   reordered for the tensor-core kernels   from_dense_cutlass``
==========================  ======================================  =====================================
"""

from __future__ import annotations

import operator

import numpy as np

from .._errors import RefquantError
from ._arrays import as_array, as_shape, is_choice
from .nm import nm_mask

__all__ = [
    "to_scipy_sparse",
    "from_scipy_sparse",
    "bitmask_compress",
    "bitmask_decompress",
    "sparse24_bitmask_compress",
    "sparse24_bitmask_decompress",
    "semi_structured_meta_offsets",
    "semi_structured_compress",
    "semi_structured_decompress",
]


def _dense2d(x, name: str) -> np.ndarray:
    a = as_array(x, name)
    if a.ndim != 2:
        raise RefquantError(f"{name} must be 2-D, got shape {a.shape}")
    if a.size == 0:
        raise RefquantError(f"{name} is empty (shape {a.shape})")
    return a


def _structure(a: np.ndarray, mask, explicit_zeros: str, name: str = "mask") -> np.ndarray:
    """Which positions are stored: the mask (or ``a != 0``), minus zeros if dropped."""
    if not is_choice(explicit_zeros, ("keep", "drop")):
        raise RefquantError(f"explicit_zeros must be 'keep' or 'drop', got {explicit_zeros!r}")
    if mask is None:
        keep = a != 0
    else:
        keep = as_array(mask, name)
        if keep.dtype != np.bool_:
            raise RefquantError(f"{name} must be a boolean array, got dtype {keep.dtype}")
        if keep.shape != a.shape:
            raise RefquantError(f"{name} has shape {keep.shape} but the tensor has shape {a.shape}")
        if explicit_zeros == "drop":
            keep = keep & (a != 0)
    return keep


# --------------------------------------------------------------------------- scipy.sparse


def to_scipy_sparse(x, fmt: str = "csr", *, mask=None, explicit_zeros: str = "drop",
                    blocksize: tuple[int, int] | None = None):
    """A 2-D array as a ``scipy.sparse`` CSR / CSC / BSR array, built from refquant's own arrays.

    Parameters
    ----------
    x : array_like, 2-D
    fmt : {"csr", "csc", "bsr"}
    mask : bool array, optional
        Positions to store (a pruning mask). Without it the stored positions are
        ``x != 0`` (NaN is non-zero and stored).
    explicit_zeros : {"drop", "keep"}
        With a mask, ``keep`` stores kept weights that happen to equal zero as
        explicit zeros (the structure is exactly the mask); ``drop`` leaves them
        out. For BSR, a block is stored when any of its positions is; a stored
        block always carries its zeros.
    blocksize : (int, int)
        BSR block shape; must divide the shape.

    Returns
    -------
    scipy.sparse.csr_array, csc_array or bsr_array (canonical: sorted indices,
    no duplicates).

    Formula
    -------
    CSR: ``indptr[i+1] - indptr[i]`` entries in row i, at columns ``indices``,
    row-major order. CSC: the same on the transpose. BSR: CSR over the grid of
    blocks, ``data`` of shape (nnz_blocks, bh, bw).

    Reference
    ---------
    SciPy ``scipy.sparse`` compressed formats; ``csr_array(dense)`` stores
    ``dense != 0`` (it drops zeros), the ``explicit_zeros="drop"`` case.
    """
    import scipy.sparse as sp

    a = _dense2d(x, "x")
    keep = _structure(a, mask, explicit_zeros)
    r, c = a.shape
    if fmt == "csr":
        rows, cols = np.nonzero(keep)
        indptr = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int64)
        return sp.csr_array((a[rows, cols], cols.astype(np.int64), indptr), shape=(r, c))
    if fmt == "csc":
        cols, rows = np.nonzero(keep.T)
        indptr = np.concatenate([[0], np.cumsum(keep.sum(axis=0))]).astype(np.int64)
        return sp.csc_array((a[rows, cols], rows.astype(np.int64), indptr), shape=(r, c))
    if fmt == "bsr":
        if blocksize is None:
            raise RefquantError("blocksize is required for fmt='bsr'")
        try:
            bh, bw = (operator.index(b) for b in blocksize)
        except TypeError:
            raise RefquantError(f"blocksize must be a pair of ints, got {blocksize!r}") from None
        if bh <= 0 or bw <= 0 or r % bh or c % bw:
            raise RefquantError(f"blocksize {(bh, bw)} must be positive and divide the shape {a.shape}")
        kb = keep.reshape(r // bh, bh, c // bw, bw).any(axis=(1, 3))
        brow, bcol = np.nonzero(kb)
        tiles = a.reshape(r // bh, bh, c // bw, bw).transpose(0, 2, 1, 3)
        data = tiles[brow, bcol]
        indptr = np.concatenate([[0], np.cumsum(kb.sum(axis=1))]).astype(np.int64)
        return sp.bsr_array((data, bcol.astype(np.int64), indptr), shape=(r, c), blocksize=(bh, bw))
    raise RefquantError(f"fmt must be 'csr', 'csc' or 'bsr', got {fmt!r}")


def from_scipy_sparse(s) -> np.ndarray:
    r"""Back to dense: explicit zeros become zeros; duplicates are summed (scipy's rule).

    Formula
    -------
    :math:`x_{ij} = \sum_{e:\,(r_e, c_e) = (i, j)} d_e`, else 0.

    Reference
    ---------
    SciPy ``scipy.sparse.*_array.toarray``.
    """
    import scipy.sparse as sp

    if not sp.issparse(s):
        raise RefquantError(f"s must be a scipy.sparse array or matrix, got {type(s).__name__}")
    return np.asarray(s.toarray())


# --------------------------------------------------------------------------- compressed-tensors bitmask
#
# sparse-bitmask, one row of C = 10 columns (bits packed little-endian per row,
# numpy.packbits(bitorder="little"): column j is bit (j % 8) of byte j // 8):
#
#     row:      a 0 b 0 0 c 0 0 | d 0            (| = byte boundary)
#     byte 0:   bit7 ... bit0 = 0 0 1 0 0 1 0 1  -> 0x25
#     byte 1:   bit7 ... bit0 = 0 0 0 0 0 0 0 1  -> 0x01 (bits past C are 0)
#     values:   [a, b, c, d] (row-major), row_offsets[i] = kept count before row i


def bitmask_compress(x, *, mask=None):
    """compressed-tensors' sparse-bitmask layout of a 1-D or 2-D tensor.

    Parameters
    ----------
    x : array_like, 1-D (treated as one row) or 2-D
    mask : bool array, optional
        Positions kept; default ``x != 0`` (compressed-tensors' "unstructured"
        structure). Kept zeros are stored as explicit zeros.

    Returns
    -------
    values : 1-D array of ``x``'s dtype, the kept values in row-major order
    bitmask : uint8 array (R, ceil(C/8)), bits little-endian within each byte
    row_offsets : int64 array (R,), index in ``values`` where each row starts

    Formula
    -------
    .. math:: \\text{row\\_offsets}_i = \\sum_{i' < i} \\sum_j m_{i'j}, \\quad
              \\text{bitmask}_{i,b} = \\sum_{t=0}^{7} m_{i,8b+t}\\,2^t

    Reference
    ---------
    neuralmagic/compressed-tensors (repository; the 0.20.0 wheel on PyPI no
    longer ships the sparse compressors, only their configs and
    ``utils.helpers.pack_bitmasks``)
    ``compressors/sparse_compressors/sparse_bitmask.py``: ``bitmask_compress``
    (``row_offsets = cumsum(row_counts) - row_counts``, ``values = tensor[bytemasks]``)
    and ``pack_bitmasks`` (``numpy.packbits(..., axis=-1, bitorder="little")``).
    """
    a = as_array(x, "x")
    if a.ndim == 1:
        a = a[None, :]
    a = _dense2d(a, "x")
    if mask is not None:
        mask = as_array(mask, "mask")
        if mask.ndim == 1:
            mask = mask[None, :]
    keep = _structure(a, mask, "keep")
    counts = keep.sum(axis=1).astype(np.int64)
    row_offsets = np.cumsum(counts) - counts
    return a[keep].copy(), np.packbits(keep, axis=-1, bitorder="little"), row_offsets


def bitmask_decompress(values, bitmask, shape) -> np.ndarray:
    """Inverse of :func:`bitmask_compress` (compressed-tensors ``bitmask_decompress``).

    Formula
    -------
    .. math:: x_{ij} = \\begin{cases} \\text{values}_{k(i,j)} & m_{ij} = 1 \\\\ 0 & \\text{else}\\end{cases}

    Reference
    ---------
    compressed-tensors ``unpack_bitmasks`` (``numpy.unpackbits(..., count=C,
    bitorder="little")``) then ``decompressed[bytemasks] = values``.
    """
    v = as_array(values, "values")
    bm = as_array(bitmask, "bitmask")
    shp = as_shape(shape)
    if len(shp) not in (1, 2):
        raise RefquantError(f"shape must be 1-D or 2-D, got {shp}")
    r, c = (1, shp[0]) if len(shp) == 1 else shp
    if bm.dtype != np.uint8 or bm.shape != (r, -(-c // 8)):
        raise RefquantError(
            f"bitmask must be uint8 of shape {(r, -(-c // 8))} for shape {shp}, got {bm.dtype} {bm.shape}"
        )
    keep = np.unpackbits(bm, axis=-1, count=c, bitorder="little").astype(bool)
    if v.ndim != 1 or v.size != int(keep.sum()):
        raise RefquantError(
            f"values must be 1-D with {int(keep.sum())} entries (the set bits), got shape {v.shape}"
        )
    out = np.zeros((r, c), dtype=v.dtype)
    out[keep] = v
    return out.reshape(shp)


def sparse24_bitmask_compress(x, *, tie_break: str = "lower_index_kept"):
    """compressed-tensors' sparse-24-bitmask layout: exactly 2 kept of every 4 in each row.

    The mask is the top-2 ``|x|`` of every 4 consecutive elements (kept even when
    zero); values are reshaped to (R, C/2).

    Parameters
    ----------
    x : array_like, 2-D with C a multiple of 4
    tie_break : {"lower_index_kept", "lower_index_pruned"}
        compressed-tensors uses ``torch.topk(2)``, whose tie order is not
        documented and follows no index rule: measured on torch 2.13's CPU,
        ``[1, 1, 1, 1]`` keeps positions 2 and 3, ``[3, 1, 1, 1]`` keeps 0 and 2,
        ``[0, 0, 0, 0.5]`` keeps 3 and 2. refquant's default here is
        ``lower_index_kept`` (``tf.math.top_k``'s rule); on tie-free groups all agree.

    Returns
    -------
    values : (R, C/2) array; bitmask : uint8 (R, C/8)

    Formula
    -------
    :math:`m = \\operatorname{nm\\_mask}(|x|, 2, 4)`, then as :func:`bitmask_compress`.

    Reference
    ---------
    compressed-tensors ``sparse_24_bitmask.py``: ``get_24_bytemasks``
    (``abs().topk(2, dim=1)`` on ``view(-1, 4)``) and ``sparse24_bitmask_compress``.
    For FP8 it ranks the **int8 view** of the bytes, which orders negative
    values backwards; refquant ranks the values.
    """
    a = _dense2d(x, "x")
    if a.shape[1] % 4:
        raise RefquantError(f"x has {a.shape[1]} columns; sparse-24-bitmask needs a multiple of 4")
    keep = nm_mask(np.abs(a.astype(np.float64)), keep=2, group=4, axis=1, tie_break=tie_break)
    return a[keep].reshape(a.shape[0], a.shape[1] // 2), np.packbits(keep, axis=-1, bitorder="little")


def sparse24_bitmask_decompress(values, bitmask, shape) -> np.ndarray:
    """Inverse of :func:`sparse24_bitmask_compress`.

    Formula
    -------
    As :func:`bitmask_decompress` with ``values`` flattened row-major.

    Reference
    ---------
    compressed-tensors ``sparse24_bitmask_decompress`` (``values.flatten()`` then
    ``decompressed[bytemasks] = values``).
    """
    return bitmask_decompress(as_array(values, "values").reshape(-1), bitmask, shape)


# --------------------------------------------------------------------------- PyTorch / CUTLASS 2:4
#
# One group of 4 consecutive 16-bit values keeps 2; its 4-bit metadata holds the
# two kept positions, the lower one in bits 0-1:
#
#     dense group:  [a, 0, b, 0]   -> values [a, b], meta nibble = idx0 | idx1 << 2
#                                     = 0 | 2 << 2 = 0b1000
#
# Four nibbles make one int16 metadata word (groups g0..g3 of 16 columns):
#
#     bit: 15..12  11..8  7..4  3..0
#          g3      g2     g1    g0
#
# (int8 data: eight nibbles in an int32 word, 32 columns). float32 is stored
# 1:2: each pair of floats is encoded as four 16-bit halves [a, a, b, b].
# The words are then scattered into CUTLASS's ColumnMajorInterleaved<2> order
# (semi_structured_meta_offsets).

# Kept positions (idx0, idx1) for each 4-bit non-zero pattern m0 | m1<<1 | m2<<2 | m3<<3,
# torch's table: fewer than 2 non-zeros are padded with zero positions, more than
# 2 are cut (sparse_semi_structured_from_dense_cutlass's comment table).
_META_TABLE = {
    (0, 0, 0, 0): (2, 3), (0, 0, 0, 1): (2, 3), (0, 0, 1, 0): (2, 3), (0, 0, 1, 1): (2, 3),
    (0, 1, 0, 0): (1, 2), (0, 1, 0, 1): (1, 3), (0, 1, 1, 0): (1, 2), (0, 1, 1, 1): (1, 3),
    (1, 0, 0, 0): (0, 2), (1, 0, 0, 1): (0, 3), (1, 0, 1, 0): (0, 2), (1, 0, 1, 1): (0, 3),
    (1, 1, 0, 0): (0, 1), (1, 1, 0, 1): (0, 1), (1, 1, 1, 0): (0, 1), (1, 1, 1, 1): (0, 1),
}
_IDX = np.zeros((16, 2), dtype=np.int64)
for _bits, _pair in _META_TABLE.items():
    _IDX[_bits[0] | _bits[1] << 1 | _bits[2] << 2 | _bits[3] << 3] = _pair


def semi_structured_meta_offsets(m: int, meta_ncols: int, meta_itemsize: int) -> np.ndarray:
    """Scatter offsets of CUTLASS's interleaved metadata order (flat, length m * meta_ncols).

    ``meta_reordered.flat[offsets[i]] = meta.flat[i]``.

    Formula
    -------
    With :math:`G = 32, I = 4` for 2-byte metadata (:math:`G = 16, I = 2` for 4-byte):
    :math:`r' = \\lfloor r/G \\rfloor G + (r \\bmod 8) I + \\lfloor (r \\bmod G)/8 \\rfloor`;
    then the 2×2 swizzle :math:`t = [r' \\text{ even} \\wedge c \\text{ odd}]`,
    :math:`b = [r' \\text{ odd} \\wedge c \\text{ even}]`,
    :math:`r'' = r' + t - b`, :math:`c' = c - t + b`; offset
    :math:`= \\lfloor c'/2 \\rfloor \\cdot 2m + 2 r'' + (c' \\bmod 2)`.

    Reference
    ---------
    torch ``torch/sparse/_semi_structured_conversions.py``:
    ``_calculate_meta_reordering_scatter_offsets`` (from CUTLASS
    ``tools/util/include/cutlass/util/host_reorder.h``, ``reorder_meta``).
    """
    if meta_itemsize not in (2, 4):
        raise RefquantError(f"meta_itemsize must be 2 (int16) or 4 (int32), got {meta_itemsize}")
    rows = np.repeat(np.arange(m, dtype=np.int64)[:, None], meta_ncols, axis=1)
    cols = np.tile(np.arange(meta_ncols, dtype=np.int64), (m, 1))
    group, interweave = (32, 4) if meta_itemsize == 2 else (16, 2)
    rows = rows // group * group + (rows % 8) * interweave + (rows % group) // 8
    topright = ((rows % 2 == 0) & (cols % 2 == 1)).astype(np.int64)
    bottomleft = ((rows % 2 == 1) & (cols % 2 == 0)).astype(np.int64)
    rows = rows + topright - bottomleft
    cols = cols - (topright - bottomleft)
    interleave = 2
    return ((cols // interleave) * m * interleave + rows * interleave + cols % interleave).ravel()


def _meta_kind(dtype) -> tuple[int, int, bool]:
    """(quadbits per meta word, meta itemsize, is float32) for a dense dtype, as torch chooses."""
    dt = np.dtype(dtype)
    if dt == np.int8:
        return 8, 4, False
    if dt == np.float32:
        return 4, 2, True
    if dt == np.float16 or dt.name == "bfloat16":
        return 4, 2, False
    raise RefquantError(
        f"dense dtype {dt} is not supported; torch's 2:4 layout takes int8, float16, bfloat16 or float32"
    )


def semi_structured_compress(dense, *, reorder: bool = True, nan_payloads: str = "exact"):
    """PyTorch's 2:4 semi-structured (CUTLASS) layout: kept values and metadata, bit for bit.

    Parameters
    ----------
    dense : array_like, 2-D (m, k)
        int8 (m % 16 == 0, k % 64 == 0), float16 / bfloat16 (m % 32, k % 32) or
        float32 (m % 32, k % 16; stored 1:2). torch itself checks k % 32 / k % 16
        only and then fails (RuntimeError: index out of bounds) when the metadata has an odd
        number of columns (int8 k = 32, float16 k = 16); refquant refuses those. It should already be 2:4 sparse;
        otherwise torch's table decides (groups with more than 2 non-zeros lose
        the higher ones, groups with fewer keep zeros at fixed positions).
    reorder : bool
        Scatter the metadata into CUTLASS's interleaved order (what torch
        returns); ``False`` gives the plain row-major metadata words.
    nan_payloads : {"exact", "torch_cpu"}
        ``"exact"`` (default) keeps every value's bits. torch's CPU ``gather``
        / ``stack`` of 16-bit floats rewrite NaN bit patterns as its
        ``scatter_`` does (see :func:`semi_structured_decompress`): a float16
        signalling NaN is quieted (0x7c01 -> 0x7e01), every bfloat16 NaN becomes
        0xffff; ``"torch_cpu"`` reproduces that. float32 values are kept in
        both (measured, torch 2.13).

    Returns
    -------
    values : (m, k/2) array of ``dense``'s dtype
    meta : (m, k/16) int16 (16-bit and float32 data) or (m, k/32) int32 (int8)

    Formula
    -------
    Values bit for bit (NaN payloads: see ``nan_payloads``).
    Per group of 4 with non-zero flags :math:`(f_0..f_3)`: kept positions
    :math:`(i_0, i_1) = T(f)`, nibble :math:`i_0 | i_1 \\ll 2`; word
    :math:`= \\sum_q \\text{nibble}_q \\ll 4q` (two's complement wrap to int16 /
    int32), then ``meta_reordered.flat[offsets] = meta.flat``.

    Reference
    ---------
    torch ``torch/sparse/_semi_structured_conversions.py``:
    ``sparse_semi_structured_from_dense_cutlass`` (its Espresso-minimised
    boolean formulas equal the table ``_META_TABLE`` here).
    """
    if not is_choice(nan_payloads, ("exact", "torch_cpu")):
        raise RefquantError(f"nan_payloads must be 'exact' or 'torch_cpu', got {nan_payloads!r}")
    a = _dense2d(dense, "dense")
    quadbits, itemsize, is_f32 = _meta_kind(a.dtype)
    m, k = a.shape
    row_mult = 16 if itemsize == 4 else 32
    if m % row_mult:
        raise RefquantError(f"dense has {m} rows; torch's layout needs a multiple of {row_mult}")
    # torch checks k % (4 * quadbits) only, but an odd number of metadata columns
    # makes its ColumnMajorInterleaved<2> scatter run out of bounds (RuntimeError),
    # so the real rule is an even number of metadata words per row.
    col_mult = 16 if is_f32 else 8 * quadbits
    if k % col_mult:
        raise RefquantError(
            f"dense has {k} columns; torch's layout needs a multiple of {col_mult} "
            f"(an even number of {8 * itemsize}-bit metadata words per row)"
        )
    if is_f32:
        pairs = a.reshape(m, k // 2, 2)
        with np.errstate(invalid="ignore"):  # NaN != 0 is True, as in torch
            nz = pairs != 0
        flags = np.stack([nz[..., 0], nz[..., 0], nz[..., 1], nz[..., 1]], axis=-1)
    else:
        quads = a.reshape(m, k // 4, 4)
        with np.errstate(invalid="ignore"):
            flags = quads != 0
    code = (flags[..., 0] * 1 + flags[..., 1] * 2 + flags[..., 2] * 4 + flags[..., 3] * 8).astype(np.int64)
    idx0, idx1 = _IDX[code, 0], _IDX[code, 1]
    if is_f32:
        values = np.take_along_axis(pairs, (idx0 // 2)[..., None], axis=-1).reshape(m, k // 2)
    else:
        v0 = np.take_along_axis(quads, idx0[..., None], axis=-1)
        v1 = np.take_along_axis(quads, idx1[..., None], axis=-1)
        values = np.concatenate([v0, v1], axis=-1).reshape(m, k // 2)
        if nan_payloads == "torch_cpu" and values.dtype.itemsize == 2:  # float16 / bfloat16
            kind = "float16" if values.dtype == np.float16 else "bfloat16"
            values = _torch_cpu_scatter_nans(values.view(np.uint16), kind).view(values.dtype)
    nib = (idx0 | (idx1 << 2)).reshape(m, -1, quadbits)
    meta_ncols = nib.shape[1]
    word = np.zeros((m, meta_ncols), dtype=np.int64)
    for q in range(quadbits):
        word |= nib[..., q] << (4 * q)
    bits = 16 if itemsize == 2 else 32
    word = np.where(word >= 1 << (bits - 1), word - (1 << bits), word)  # two's complement wrap
    meta = word.astype(np.int16 if itemsize == 2 else np.int32)
    if not reorder:
        return values, meta
    out = np.empty(m * meta_ncols, dtype=meta.dtype)
    out[semi_structured_meta_offsets(m, meta_ncols, itemsize)] = meta.ravel()
    return values, out.reshape(m, meta_ncols)


def _torch_cpu_scatter_nans(bits: np.ndarray, kind: str) -> np.ndarray:
    """What torch's CPU ``scatter_`` does to NaN payloads of 16-bit floats (measured, torch 2.13).

    float16: a signalling NaN (exponent 0x1f, mantissa != 0, bit 9 clear) gets
    bit 9 set (quieted), sign and payload kept. bfloat16: every NaN becomes
    0xffff.
    """
    if kind == "float16":
        snan = ((bits & 0x7C00) == 0x7C00) & ((bits & 0x03FF) != 0) & ((bits & 0x0200) == 0)
        return np.where(snan, bits | 0x0200, bits).astype(np.uint16)
    nan = ((bits & 0x7F80) == 0x7F80) & ((bits & 0x007F) != 0)
    return np.where(nan, np.uint16(0xFFFF), bits).astype(np.uint16)


def semi_structured_decompress(values, meta, *, reordered: bool = True,
                               nan_payloads: str = "exact") -> np.ndarray:
    """Inverse of :func:`semi_structured_compress`: the dense (m, 2k) array, bit for bit.

    ``nan_payloads="torch_cpu"`` reproduces torch's CPU result exactly, whose
    ``scatter_`` on 16-bit floats rewrites NaN bit patterns: a float16 signalling
    NaN is quieted (bit 9 set), a bfloat16 NaN becomes 0xffff. float32 data is
    moved as two float16 halves there, so a float32 whose low or high 16 bits
    look like a float16 signalling NaN comes back changed (1.4022648 =
    0x3fb37d6a returns as 1.4023259 = 0x3fb37f6a). ``"exact"`` (default) moves
    the bits unchanged.

    Formula
    -------
    Undo the reordering (gather at the scatter offsets), read the 2-bit indices
    :math:`i` of each word from bit 0 up, and place value :math:`j` at dense
    position :math:`4\\lfloor j/2 \\rfloor + i_j` (in 16-bit units for float32,
    whose 32-bit values are moved as two halves).

    Reference
    ---------
    torch ``sparse_semi_structured_to_dense_cutlass``.
    """
    v = _dense2d(values, "values")
    mt = _dense2d(meta, "meta")
    if mt.dtype not in (np.int16, np.int32):
        raise RefquantError(f"meta must be int16 or int32, got {mt.dtype}")
    quadbits = mt.dtype.itemsize * 8 // 4
    is_f32 = v.dtype == np.float32
    ksparse = 2 if is_f32 else 4
    m, k = v.shape
    if mt.shape[0] != m:
        raise RefquantError(f"meta has {mt.shape[0]} rows, values has {m}")
    if mt.shape[1] * ksparse * quadbits != 2 * k:
        raise RefquantError(
            f"meta of shape {mt.shape} does not match values of shape {v.shape} "
            f"(expected {2 * k // (ksparse * quadbits)} meta columns)"
        )
    meta_ncols = mt.shape[1]
    flat = mt.ravel()
    if reordered:
        flat = flat[semi_structured_meta_offsets(m, meta_ncols, mt.dtype.itemsize)]
    words = flat.astype(np.int64) & ((1 << (8 * mt.dtype.itemsize)) - 1)
    shifts = 2 * np.arange(2 * quadbits, dtype=np.int64)
    idx = ((words[:, None] >> shifts) & 0b11).reshape(-1)
    slots = np.arange(idx.size, dtype=np.int64)
    offsets = idx + 4 * (slots // 2)
    if not is_choice(nan_payloads, ("exact", "torch_cpu")):
        raise RefquantError(f"nan_payloads must be 'exact' or 'torch_cpu', got {nan_payloads!r}")
    if is_f32:
        src = v.view(np.uint16).ravel()  # each float32 as two 16-bit halves (native order)
        if nan_payloads == "torch_cpu":
            src = _torch_cpu_scatter_nans(src, "float16")
        dense = np.zeros(m * 2 * k * 2, dtype=np.uint16)
        dense[offsets] = src
        return dense.view(np.float32).reshape(m, 2 * k)
    if nan_payloads == "torch_cpu" and v.dtype.itemsize == 2:
        kind = "float16" if v.dtype == np.float16 else "bfloat16"
        src = _torch_cpu_scatter_nans(v.view(np.uint16).ravel(), kind)
        dense = np.zeros(m * 2 * k, dtype=np.uint16)
        dense[offsets] = src
        return dense.view(v.dtype).reshape(m, 2 * k)
    dense = np.zeros(m * 2 * k, dtype=v.dtype)
    dense[offsets] = v.ravel()
    return dense.reshape(m, 2 * k)
