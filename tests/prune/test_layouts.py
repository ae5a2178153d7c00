"""Sparse layouts: hand-worked encodings and round trips back to dense."""

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refquant import RefquantError
from refquant.prune.layouts import (
    bitmask_compress,
    bitmask_decompress,
    from_scipy_sparse,
    semi_structured_compress,
    semi_structured_decompress,
    semi_structured_meta_offsets,
    sparse24_bitmask_compress,
    sparse24_bitmask_decompress,
    to_scipy_sparse,
)
from refquant.prune.nm import nm_mask

# --------------------------------------------------------------------------- CSR / CSC / BSR


def test_csr_hand_example():
    x = np.array([[0.0, 2.0, 0.0], [1.0, 0.0, 3.0]])
    s = to_scipy_sparse(x, "csr")
    assert s.indptr.tolist() == [0, 1, 3]
    assert s.indices.tolist() == [1, 0, 2]
    assert s.data.tolist() == [2.0, 1.0, 3.0]


def test_csc_hand_example():
    x = np.array([[0.0, 2.0, 0.0], [1.0, 0.0, 3.0]])
    s = to_scipy_sparse(x, "csc")
    assert s.indptr.tolist() == [0, 1, 2, 3]
    assert s.indices.tolist() == [1, 0, 1]
    assert s.data.tolist() == [1.0, 2.0, 3.0]


def test_explicit_zeros_kept_or_dropped_by_parameter():
    x = np.array([[0.0, 2.0], [0.0, 0.0]])
    mask = np.array([[True, True], [False, False]])  # x[0, 0] is kept but happens to be 0
    kept = to_scipy_sparse(x, "csr", mask=mask, explicit_zeros="keep")
    dropped = to_scipy_sparse(x, "csr", mask=mask, explicit_zeros="drop")
    assert kept.nnz == 2 and kept.indices.tolist() == [0, 1] and kept.data.tolist() == [0.0, 2.0]
    assert dropped.nnz == 1 and dropped.indices.tolist() == [1]
    assert np.array_equal(from_scipy_sparse(kept), x) and np.array_equal(from_scipy_sparse(dropped), x)


def test_bsr_stores_whole_blocks_with_their_zeros():
    x = np.zeros((4, 4))
    x[0, 1] = 5.0
    x[3, 3] = 7.0
    s = to_scipy_sparse(x, "bsr", blocksize=(2, 2))
    assert s.indptr.tolist() == [0, 1, 2] and s.indices.tolist() == [0, 1]
    assert s.data.tolist() == [[[0.0, 5.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 7.0]]]


@settings(max_examples=30)
@given(
    hnp.arrays(np.float32, (4, 6), elements=st.sampled_from([0.0, 1.5, -2.0, np.inf])),
    st.sampled_from(["csr", "csc", "bsr"]),
)
def test_scipy_layouts_round_trip_bit_for_bit(x, fmt):
    s = to_scipy_sparse(x, fmt, blocksize=(2, 3) if fmt == "bsr" else None)
    assert np.array_equal(from_scipy_sparse(s), x)
    assert from_scipy_sparse(s).dtype == np.float32


@pytest.mark.parametrize(
    ("x", "kwargs", "match"),
    [
        (np.ones(3), {}, "2-D"),
        (np.ones((0, 3)), {}, "empty"),
        (np.ones((2, 2)), {"fmt": "coo"}, "fmt"),
        (np.ones((2, 2)), {"fmt": "bsr"}, "blocksize"),
        (np.ones((2, 3)), {"fmt": "bsr", "blocksize": (2, 2)}, "divide"),
        (np.ones((2, 2)), {"mask": np.ones((2, 3), bool)}, "shape"),
        (np.ones((2, 2)), {"mask": np.ones((2, 2))}, "boolean"),
        (np.ones((2, 2)), {"explicit_zeros": "maybe"}, "explicit_zeros"),
    ],
)
def test_bad_scipy_arguments_are_named(x, kwargs, match):
    with pytest.raises(RefquantError, match=match):
        to_scipy_sparse(x, **kwargs)


# --------------------------------------------------------------------------- compressed-tensors bitmask


def test_bitmask_hand_example_packs_little_endian_per_row():
    x = np.array([[1.0, 0, 2.0, 0, 0, 3.0, 0, 0, 4.0, 0], [0, 0, 0, 0, 0, 0, 0, 0, 0, 5.0]])
    values, bitmask, offsets = bitmask_compress(x)
    assert values.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    # row 0: columns 0, 2, 5 -> 0b00100101 = 0x25; column 8 -> bit 0 of byte 1
    # row 1: column 9 -> bit 1 of byte 1
    assert bitmask.tolist() == [[0x25, 0x01], [0x00, 0x02]]
    assert offsets.tolist() == [0, 4]
    assert np.array_equal(bitmask_decompress(values, bitmask, x.shape), x)


def test_bitmask_with_a_mask_stores_kept_zeros():
    x = np.array([0.0, 3.0, 0.0])
    values, bitmask, offsets = bitmask_compress(x, mask=np.array([True, True, False]))
    assert values.tolist() == [0.0, 3.0] and bitmask.tolist() == [[0b011]] and offsets.tolist() == [0]
    assert np.array_equal(bitmask_decompress(values, bitmask, (3,)), x)


@settings(max_examples=30)
@given(hnp.arrays(np.float16, st.tuples(st.integers(1, 4), st.integers(1, 19)),
                  elements=st.sampled_from([0.0, 1.0, -0.5, 65504.0])))
def test_bitmask_round_trip(x):
    v, b, o = bitmask_compress(x)
    assert b.shape == (x.shape[0], -(-x.shape[1] // 8))
    assert np.array_equal(bitmask_decompress(v, b, x.shape), x)


def test_bitmask_decompress_checks_sizes():
    v, b, _ = bitmask_compress(np.array([[1.0, 0.0, 2.0]]))
    with pytest.raises(RefquantError, match="values"):
        bitmask_decompress(v[:1], b, (1, 3))
    with pytest.raises(RefquantError, match="bitmask"):
        bitmask_decompress(v, b, (2, 3))


def test_sparse24_bitmask_keeps_two_largest_of_four_even_when_zero():
    x = np.array([[1.0, 0.0, 2.0, 0.0, -3.0, 0.0, 0.0, 4.0], [0.0, 0.0, 0.0, 0.5, 9.0, 8.0, 7.0, 6.0]])
    values, bitmask = sparse24_bitmask_compress(x)
    # row 1, group 0: |0.5| and then a tie of zeros: lower index kept (column 0)
    assert values.tolist() == [[1.0, 2.0, -3.0, 4.0], [0.0, 0.5, 9.0, 8.0]]
    assert bitmask.tolist() == [[0b10010101], [0b00111001]]
    dense = sparse24_bitmask_decompress(values, bitmask, x.shape)
    assert np.array_equal(dense, np.where(nm_mask(np.abs(x), keep=2, group=4, tie_break="lower_index_kept"), x, 0))


def test_sparse24_needs_columns_in_fours():
    with pytest.raises(RefquantError, match="multiple of 4"):
        sparse24_bitmask_compress(np.ones((2, 6)))


# --------------------------------------------------------------------------- PyTorch 2:4


def test_semi_structured_metadata_nibbles_by_hand():
    # 32 x 16 float16, every row the same four groups
    row = np.array([1, 0, 2, 0,  0, 3, 0, 4,  0, 0, 5, 6,  7, 8, 0, 0], dtype=np.float16)
    dense = np.tile(row, (32, 2))
    values, meta = semi_structured_compress(dense, reorder=False)
    assert values[0].tolist() == [1, 2, 3, 4, 5, 6, 7, 8] * 2
    # nibbles idx0 | idx1 << 2: (0,2)=0b1000, (1,3)=0b1101, (2,3)=0b1110, (0,1)=0b0100
    word = 0b1000 | 0b1101 << 4 | 0b1110 << 8 | 0b0100 << 12
    assert meta.dtype == np.int16 and meta.shape == (32, 2)
    assert int(meta[0, 0]) == word  # 0x4ed8 < 0x8000: no sign wrap
    assert np.array_equal(semi_structured_decompress(values, meta, reordered=False), dense)


def test_semi_structured_meta_word_wraps_to_negative_int16():
    row = np.array([0, 0, 1, 2] * 4, dtype=np.float16)  # every nibble 0b1110 -> 0xEEEE
    _, meta = semi_structured_compress(np.tile(row, (32, 2)), reorder=False)
    assert int(meta[0, 0]) == 0xEEEE - 0x10000


def test_meta_reordering_is_a_permutation_with_hand_checked_entries():
    off = semi_structured_meta_offsets(32, 2, 2)
    assert sorted(off.tolist()) == list(range(64))
    # row 0 col 0 -> 0; row 0 col 1 (top-right swizzle: row 1, col 0) -> 2*1 + 0 = 2
    # row 1 col 0 -> row' = 4 (interweave 4), stays -> 2*4 = 8
    assert off[0] == 0 and off[1] == 2 and off[2] == 8


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float32, np.int8])
def test_semi_structured_round_trips(dtype):
    rng = np.random.default_rng(3)
    m, k = (32, 64) if dtype != np.int8 else (16, 64)
    x = rng.integers(-100, 100, (m, k)).astype(dtype)
    keep, group = (1, 2) if dtype == np.float32 else (2, 4)
    x = np.where(nm_mask(np.abs(x.astype(np.float64)), keep=keep, group=group), x, 0).astype(dtype)
    values, meta = semi_structured_compress(x)
    assert values.shape == (m, k // 2)
    assert meta.dtype == (np.int32 if dtype == np.int8 else np.int16)
    assert np.array_equal(semi_structured_decompress(values, meta).view(np.uint8), x.view(np.uint8))


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.ones((16, 16), np.float16), "multiple of 32"),
        (np.ones((32, 16), np.float16), "multiple of 32"),
        (np.ones((16, 32), np.int8), "multiple of 64"),
        (np.ones((16, 64), np.int8)[:15], "multiple of 16"),
        (np.ones((32, 16), np.float64), "not supported"),
    ],
)
def test_semi_structured_shape_and_dtype_rules(x, match):
    with pytest.raises(RefquantError, match=match):
        semi_structured_compress(x)


@pytest.mark.parametrize("dtype, bits, torch_bits", [
    (np.float16, 0x7C01, 0x7E01),            # signalling NaN: bit 9 set by torch
    (np.float16, 0x7E00, 0x7E00),            # quiet NaN: kept
    (ml_dtypes.bfloat16, 0x7F81, 0xFFFF),    # every bfloat16 NaN: 0xffff
    (ml_dtypes.bfloat16, 0x3F80, 0x3F80),    # 1.0: kept
])
def test_compress_nan_payloads_exact_or_as_torch_cpu(dtype, bits, torch_bits):
    # torch's CPU gather/stack rewrite 16-bit NaNs (measured: 0x7c01 -> 0x7e01,
    # bf16 0x7f81 -> 0xffff); compress had no torch_cpu mode, so "bit for bit"
    # with sparse_semi_structured_from_dense_cutlass failed on such values
    x = np.zeros((32, 32), np.uint16)
    x[0, 0] = bits
    x = x.view(dtype)
    exact, _ = semi_structured_compress(x)
    torchlike, _ = semi_structured_compress(x, nan_payloads="torch_cpu")
    assert exact.view(np.uint16)[0, 0] == bits
    assert torchlike.view(np.uint16)[0, 0] == torch_bits
    with pytest.raises(RefquantError, match="nan_payloads"):
        semi_structured_compress(x, nan_payloads="cuda")


def test_ragged_bitmask_mask_is_refused():
    # np.asarray of the ragged mask raised numpy's ValueError
    with pytest.raises(RefquantError, match="mask"):
        bitmask_compress(np.ones((2, 2)), mask=[[True], [True, False]])
