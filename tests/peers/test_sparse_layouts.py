"""Sparse layouts against scipy.sparse, and against compressed-tensors' bitmask code re-expressed.

compressed-tensors needs torch and transformers to import, so its bitmask
functions (neuralmagic/compressed-tensors, compressors/sparse_compressors/
sparse_bitmask.py and sparse_24_bitmask.py, utils/helpers.py) are re-expressed
below with NumPy in place of torch, line by line.
"""

import numpy as np
import pytest
from helpers import import_peer
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refquant.prune.layouts import (
    bitmask_compress,
    bitmask_decompress,
    sparse24_bitmask_compress,
    to_scipy_sparse,
)

pytestmark = pytest.mark.peer


def ct_bitmask_compress(tensor):
    bytemasks = tensor != 0
    row_counts = bytemasks.sum(axis=-1)
    row_offsets = np.cumsum(row_counts, 0) - row_counts
    values = tensor[bytemasks]
    bitmasks_packed = np.packbits(bytemasks, axis=-1, bitorder="little")
    return values, bitmasks_packed, row_offsets


def ct_bitmask_decompress(values, bitmasks, original_shape):
    unpacked = np.unpackbits(bitmasks, axis=-1, count=original_shape[-1], bitorder="little")
    out = np.zeros(original_shape, dtype=values.dtype)
    out[unpacked.reshape(original_shape).astype(bool)] = values
    return out


def ct_get_24_bytemasks_via_torch(tensor):
    torch = import_peer("torch")
    t = torch.from_numpy(tensor.copy())
    reshaped = t.view(-1, 4)
    topk = reshaped.abs().topk(2, dim=1).indices
    mask = torch.zeros_like(reshaped, dtype=torch.bool)
    mask.scatter_(1, topk, True)
    return mask.view(t.shape).numpy()


ELEMENTS = st.sampled_from([0.0, 1.0, -2.5, 3.0, np.inf, -np.inf])


@settings(max_examples=40)
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(1, 12)), elements=ELEMENTS),
       st.sampled_from(["csr", "csc"]))
def test_csr_and_csc_arrays_equal_scipy_built_from_dense(x, fmt):
    sp = import_peer("scipy.sparse")
    ours = to_scipy_sparse(x, fmt)
    theirs = (sp.csr_array if fmt == "csr" else sp.csc_array)(x)
    assert np.array_equal(ours.indptr, theirs.indptr)
    assert np.array_equal(ours.indices, theirs.indices)
    assert np.array_equal(ours.data, theirs.data)


@settings(max_examples=30)
@given(hnp.arrays(np.float32, (4, 6), elements=st.sampled_from([0.0, 0.0, 1.0, -7.0])))
def test_bsr_arrays_equal_scipy_built_from_dense_once_scipy_sorts_its_indices(x):
    sp = import_peer("scipy.sparse")
    ours = to_scipy_sparse(x, "bsr", blocksize=(2, 3))
    theirs = sp.bsr_array(x, blocksize=(2, 3))
    # scipy 1.17 builds BSR from dense with unsorted block indices in a row
    # (x[0, 3] and x[1, 0] non-zero gives indices [1, 0]); refquant's are sorted.
    theirs.sort_indices()
    assert np.array_equal(ours.indptr, theirs.indptr)
    assert np.array_equal(ours.indices, theirs.indices)
    assert np.array_equal(ours.data, theirs.data)


def test_explicit_zeros_survive_scipy_conversions_only_when_kept():
    sp = import_peer("scipy.sparse")
    x = np.array([[0.0, 1.0], [2.0, 0.0]])
    s = to_scipy_sparse(x, "csr", mask=np.ones((2, 2), bool), explicit_zeros="keep")
    assert s.nnz == 4
    assert sp.csr_array(s.toarray()).nnz == 2  # scipy's own construction drops them


@settings(max_examples=40)
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 20)), elements=ELEMENTS))
def test_bitmask_layout_equals_compressed_tensors(x):
    ours = bitmask_compress(x)
    theirs = ct_bitmask_compress(x)
    for a, b in zip(ours, theirs, strict=True):
        assert np.array_equal(a, b)
    assert np.array_equal(bitmask_decompress(*ours[:2], x.shape), ct_bitmask_decompress(*theirs[:2], x.shape))


@settings(max_examples=30)
@given(st.integers(0, 10**6))
def test_sparse24_mask_equals_compressed_tensors_on_tie_free_rows(seed):
    rng = np.random.default_rng(seed)
    x = (rng.permutation(np.arange(1, 33)) * rng.choice([-1, 1], 32)).reshape(4, 8).astype(np.float32)
    values, bitmask = sparse24_bitmask_compress(x)
    mask = ct_get_24_bytemasks_via_torch(x)
    assert np.array_equal(values, x[mask].reshape(4, 4))
    assert np.array_equal(bitmask, np.packbits(mask, axis=-1, bitorder="little"))


def test_torch_topk_ties_follow_no_index_rule_so_compressed_tensors_24_masks_differ_on_ties():
    """Measured on torch 2.13 CPU: the quirk behind refquant's explicit tie_break."""
    x = np.array([[1.0, 1.0, 1.0, 1.0], [3.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.5]], np.float32)
    theirs = ct_get_24_bytemasks_via_torch(x)
    assert theirs.astype(int).tolist() == [[0, 0, 1, 1], [1, 0, 1, 0], [0, 0, 1, 1]]
    values, bitmask = sparse24_bitmask_compress(x)
    ours = np.unpackbits(bitmask, axis=-1, count=4, bitorder="little").astype(bool)
    assert ours.astype(int).tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 0, 1]]
