"""compressed-tensors sparse checkpoints: ``sparse-bitmask`` and ``sparse-24-bitmask``.

Per module ``base`` (weight of shape (N, K), any float dtype; the parts carry no
``.weight`` in their names):

=================  =========================  ===============================================
tensor             dtype                      shape
=================  =========================  ===============================================
base.shape         int64                      (2,) sparse-bitmask; (2, 1) sparse-24-bitmask
base.compressed    the weight's dtype         (nnz,) sparse-bitmask; (N, K/2) sparse-24-bitmask
base.bitmask       uint8                      (N, ceil(K/8)), bit k%8 of byte k//8 (LSB first)
base.row_offsets   int64                      (N,), sparse-bitmask: where each row starts
=================  =========================  ===============================================

compressed-tensors wrote and read these with ``BitmaskCompressor`` and
``Sparse24BitMaskCompressor`` up to 0.14; 0.15 - 0.20 keep the format names but
no compressor (``ModelCompressor.from_compression_config`` refuses a sparsity
config), and transformers 5.23 with compressed-tensors 0.20 loads such a
checkpoint without an error but with every sparse weight newly initialized
(reported only as missing keys; pinned in tests/peers/test_layouts_ct_sparse.py).
The peer is compressed-tensors 0.14.0.1, recorded by scripts/record_ct_sparse.py.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from ..._errors import RefquantError
from ._base import LayoutView, Scheme

__all__ = ["CTSparseView", "SPARSE_FORMATS", "sparse_bitmask_tensors", "sparse24_bitmask_tensors",
           "sparse_config", "mask_24"]

SPARSE_FORMATS = ("sparse-bitmask", "sparse-24-bitmask")
_E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
_VALUES = (np.float32, np.float16, ml_dtypes.bfloat16, _E4M3, np.float64)


class CTSparseView(LayoutView):
    """Logical weights of a compressed-tensors ``sparse-bitmask`` / ``sparse-24-bitmask`` checkpoint.

    Notes
    -----
    **Formula** (``bitmask_decompress`` / ``sparse24_bitmask_decompress``)::

        mask = unpackbits(bitmask, count=K, bitorder="little")          (N, K) bool
        W = zeros((N, K), dtype of compressed); W[mask] = compressed    (row-major order)

    returned as float32 (every stored dtype converts exactly). The counts must
    agree (torch's index-put raises otherwise); ``row_offsets`` must be the
    exclusive cumulative row counts (the decompressor ignores them, so a file
    whose offsets disagree was not written by the compressor: refused).

    **Reference**: compressed-tensors 0.14.0.1 ``compressors/sparse_compressors/
    sparse_bitmask.py``, ``sparse_24_bitmask.py``; ``utils/helpers.py``
    (``pack_bitmasks``, ``unpack_bitmasks``).
    """

    name = "compressed-tensors sparse"

    def __init__(self, ck, config, qcfg):
        super().__init__(ck, config)
        sc = qcfg.get("sparsity_config") or {}
        fmt = sc.get("format")
        if fmt not in SPARSE_FORMATS:
            raise RefquantError(f"{ck.path}: sparsity_config format {fmt!r}; refquant reads {SPARSE_FORMATS}")
        bases = sorted(n[: -len(".bitmask")] for n in ck if n.endswith(".bitmask"))
        if not bases:
            raise RefquantError(f"{ck.path}: sparsity_config names {fmt!r} but no tensor ends in '.bitmask'")
        for base in bases:
            self._add_module(base, fmt)

    def _add_module(self, base, fmt):
        ck = self.ck
        bm = base + ".bitmask"
        shp = self.need(base + ".shape", bm)
        vals = self.need(base + ".compressed", bm)
        self.expect_dtype(bm, (np.uint8,), "bitmasks")
        self.expect_dtype(shp, (np.int64, np.int32), "the dense shape")
        self.expect_dtype(vals, _VALUES, "the kept values")
        want_shape = (2,) if fmt == "sparse-bitmask" else (2, 1)
        self.expect_shape(shp, want_shape, f"{fmt} stores the dense (rows, cols) so")
        n, k = (int(v) for v in np.asarray(ck[shp]).reshape(-1))
        if n < 0 or k < 0:
            raise self.err(shp, f"dense shape {(n, k)} is negative")
        self.expect_shape(bm, (n, -(-k // 8)), f"one bit per weight of {(n, k)}, LSB first")
        ro = None
        if fmt == "sparse-bitmask":
            ro = self.need(base + ".row_offsets", bm)
            self.expect_dtype(ro, (np.int64, np.int32), "row offsets")
            self.expect_shape(ro, (n,), "one offset per row")
            if len(ck.info(vals).shape) != 1:
                raise self.err(vals, f"shape {tuple(ck.info(vals).shape)}; sparse-bitmask stores the "
                                     "kept values flat (1-D)")
        else:
            if k % 4:
                raise self.err(bm, f"dense width {k} is not a multiple of 4 (2:4 groups)")
            self.expect_shape(vals, (n, k // 2), "two kept values of every four")
        self.add(base + ".weight",
                 Scheme(format=fmt, bits=8 * ck.info(vals).dtype.itemsize, group_size=None,
                        symmetric=True, act_order=False,
                        packing="kept values row-major + uint8 bitmask LSB first", strategy="sparse",
                        shape=(n, k), block=(1, 4) if fmt == "sparse-24-bitmask" else None),
                 {"shape": shp, "values": vals, "bitmask": bm, "row_offsets": ro})

    def _dequantize(self, name, e):
        ck, r = self.ck, e.roles
        n, k = e.scheme.shape
        mask = unpack_mask(ck[r["bitmask"]], k)
        vals = np.asarray(ck[r["values"]]).reshape(-1)
        rows = mask.sum(axis=1, dtype=np.int64)
        if int(rows.sum()) != vals.size:
            raise self.err(r["values"], f"{vals.size} kept values; the bitmask of {name!r} sets "
                                        f"{int(rows.sum())} bits")
        if r["row_offsets"] is not None:
            ro = np.asarray(ck[r["row_offsets"]]).astype(np.int64)
            want = np.cumsum(rows) - rows
            bad = np.flatnonzero(ro != want)
            if bad.size:
                raise self.err(r["row_offsets"], f"row_offsets[{bad[0]}] = {ro[bad[0]]}; the bitmask "
                                                 f"puts row {bad[0]} at {want[bad[0]]}")
        out = np.zeros((n, k), np.float32)
        out[mask] = vals.astype(np.float32)
        return out


def unpack_mask(bitmask, count) -> np.ndarray:
    """``numpy.unpackbits(bitmask, axis=-1, count=count, bitorder="little")`` as bool."""
    return np.unpackbits(np.asarray(bitmask, np.uint8), axis=-1, count=count, bitorder="little").astype(bool)


def _nonzero(d):
    if d.dtype == _E4M3:  # e4m3 != 0: every byte but 0x00 and 0x80 (-0.0)
        b = d.view(np.uint8)
        return (b & 0x7F) != 0
    return d != 0  # NaN is kept, -0.0 is dropped


def sparse_bitmask_tensors(base, dense):
    """Raw ``sparse-bitmask`` tensors of one module: its non-zero values, bitmask and row offsets.

    Notes
    -----
    **Formula** (``bitmask_compress``): ``mask = W != 0`` (NaN kept, -0.0 dropped),
    ``compressed = W[mask]`` row-major, ``bitmask = packbits(mask, bitorder="little")``,
    ``row_offsets = cumsum(rows) - rows``; ``shape`` the dense (N, K) as int64.

    **Reference**: compressed-tensors 0.14.0.1 ``BitmaskTensor.from_dense`` / ``dict``.
    """
    d = _dense(base, dense)
    mask = _nonzero(d)
    rows = mask.sum(axis=1, dtype=np.int64)
    return {base + ".shape": np.array(d.shape, np.int64), base + ".compressed": d[mask],
            base + ".bitmask": np.packbits(mask, axis=-1, bitorder="little"),
            base + ".row_offsets": np.cumsum(rows) - rows}


def mask_24(dense) -> np.ndarray:
    """compressed-tensors' ``get_24_bytemasks``: the two largest magnitudes of every four.

    Formula
    -------
    ``topk(|w|, 2)`` over consecutive groups of four of the flattened weight, NaN
    the largest. Which of equal magnitudes are kept is what torch's CPU ``topk``
    keeps: for k = 2 of 4 it runs ``std::nth_element`` (libstdc++ introselect: a
    median-of-three pivot, an unguarded partition, then insertion sort) on the
    (value, index) pairs with ``x > y`` (NaN first) and keeps the first two, so
    [1, 1, 1, 1] keeps elements 2 and 3 but [2, 1, 1, 0] keeps 0 and 1. float8_e4m3fn
    weights are ranked by the absolute value of their bytes read as int8
    (``tensor.view(torch.int8).abs()``): a negative value ranks by 256 minus its
    byte, and -0.0 (int8 -128, whose absolute value wraps to -128) lowest.

    Reference
    ---------
    compressed-tensors 0.14.0.1 ``sparse_24_bitmask.get_24_bytemasks``; PyTorch
    ``aten/src/ATen/native/TopKImpl.h`` (``topk_impl_loop``); libstdc++
    ``bits/stl_algo.h`` (``__introselect``, ``__unguarded_partition_pivot``,
    ``__move_median_to_first``, ``__insertion_sort``).
    """
    d = np.asarray(dense)
    if d.size % 4:
        raise RefquantError(f"weight of shape {d.shape}: {d.size} elements are not whole 2:4 groups")
    if d.dtype == _E4M3:
        key = np.abs(d.view(np.int8).astype(np.int16))
        key = np.where(key == 128, -128, key).astype(np.float64)
    else:
        key = np.abs(d.astype(np.float64))
    g = key.reshape(-1, 4)
    m = np.zeros(g.shape, bool)
    for r in range(g.shape[0]):
        m[r, _nth_element_top2(g[r].tolist())] = True
    return m.reshape(d.shape)


def _nth_element_top2(vals):
    """Indices in the first two slots after libstdc++ ``nth_element(q, q + 1, q + 4, gt)``."""
    q = [(v, i) for i, v in enumerate(vals)]

    def gt(a, b):
        an, bn = a[0] != a[0], b[0] != b[0]
        return (an and not bn) or a[0] > b[0]

    first, last = 0, 4
    while last - first > 3:  # __introselect (depth limit 2*log2(4) = 4 is never reached here)
        a, b, c = first + 1, first + (last - first) // 2, last - 1  # __move_median_to_first
        if gt(q[a], q[b]):
            pick = b if gt(q[b], q[c]) else (c if gt(q[a], q[c]) else a)
        else:
            pick = a if gt(q[a], q[c]) else (c if gt(q[b], q[c]) else b)
        q[first], q[pick] = q[pick], q[first]
        lo, hi = first + 1, last  # __unguarded_partition around q[first]
        while True:
            while gt(q[lo], q[first]):
                lo += 1
            hi -= 1
            while gt(q[first], q[hi]):
                hi -= 1
            if not lo < hi:
                break
            q[lo], q[hi] = q[hi], q[lo]
            lo += 1
        if lo <= 1:  # the cut is at or before nth (= 1)
            first = lo
        else:
            last = lo
    for i in range(first + 1, last):  # __insertion_sort
        v = q[i]
        if gt(v, q[first]):
            q[first + 1:i + 1] = q[first:i]
            q[first] = v
        else:
            j = i
            while gt(v, q[j - 1]):
                q[j] = q[j - 1]
                j -= 1
            q[j] = v
    return [q[0][1], q[1][1]]


def sparse24_bitmask_tensors(base, dense):
    """Raw ``sparse-24-bitmask`` tensors of one module: two kept values of every four and the bitmask.

    Notes
    -----
    **Formula** (``sparse24_bitmask_compress``): ``mask = mask_24(W)`` (kept values
    may be zero), ``compressed = W[mask].reshape(N, K/2)``, ``bitmask = packbits(mask)``
    LSB first, ``shape`` = (N, K) as int64 (2, 1).

    **Reference**: compressed-tensors 0.14.0.1 ``Sparse24BitMaskTensor.from_dense`` / ``dict``.
    """
    d = _dense(base, dense)
    if d.shape[1] % 4:
        raise RefquantError(f"weight {base!r}: width {d.shape[1]} is not a multiple of 4 (2:4 groups)")
    mask = mask_24(d)
    return {base + ".shape": np.array(d.shape, np.int64).reshape(-1, 1),
            base + ".compressed": d[mask].reshape(d.shape[0], d.shape[1] // 2),
            base + ".bitmask": np.packbits(mask, axis=-1, bitorder="little")}


def _dense(base, dense):
    d = np.asarray(dense)
    if d.ndim != 2 or d.dtype not in [np.dtype(t) for t in _VALUES]:
        raise RefquantError(f"weight {base!r}: a 2-D float32 / float16 / bfloat16 / float8_e4m3fn "
                            f"weight, got {d.dtype} {d.shape}")
    return d


def sparse_config(fmt, ignore=("lm_head",), global_sparsity=0.0):
    """``quantization_config`` of a compressed-tensors checkpoint with sparsity only."""
    if fmt not in SPARSE_FORMATS:
        raise RefquantError(f"sparsity format {fmt!r}; expected one of {SPARSE_FORMATS}")
    return {"quant_method": "compressed-tensors", "format": "dense",
            "sparsity_config": {"format": fmt, "global_sparsity": float(global_sparsity),
                                "sparsity_structure": "2:4" if fmt == "sparse-24-bitmask" else "unstructured",
                                "targets": ["Linear"], "ignore": list(ignore),
                                "registry_requires_subclass": False}}
