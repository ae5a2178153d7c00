"""refquant's 2:4 layout against torch's CPU semi-structured conversion functions, bit for bit.

torch/sparse/_semi_structured_conversions.py: sparse_semi_structured_from_dense_cutlass,
sparse_semi_structured_to_dense_cutlass, _calculate_meta_reordering_scatter_offsets and
_sparse_semi_structured_tile all run on the CPU.
"""

import ml_dtypes
import numpy as np
import pytest
from helpers import import_peer
from hypothesis import given, settings
from hypothesis import strategies as st

from refquant import RefquantError
from refquant.prune.layouts import (
    semi_structured_compress,
    semi_structured_decompress,
    semi_structured_meta_offsets,
)
from refquant.prune.nm import nm_mask, transposable_nm_mask

pytestmark = pytest.mark.peer

_NP_TO_TORCH_VIEW = {"float16": "int16", "bfloat16": "int16", "float32": "int32", "int8": "int8"}


def _torch():
    torch = import_peer("torch")
    conv = import_peer("torch.sparse._semi_structured_conversions")
    return torch, conv


def _to_torch(torch, x):
    """A bit-exact torch tensor of the same dtype (bfloat16 through its int16 view)."""
    if x.dtype.name == "bfloat16":
        return torch.from_numpy(x.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(x.copy())


def _bits(torch, t, like):
    """torch tensor -> numpy array of ``like``'s dtype, via an integer view (bit exact)."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(like.dtype)
    return t.numpy()


def _two_four(rng, dtype, m, k, special=()):
    if dtype == np.int8:
        x = rng.integers(-128, 128, (m, k)).astype(np.int8)
    else:
        x = rng.standard_normal((m, k)).astype(dtype)
    flat = x.reshape(-1)
    for i, v in enumerate(special):
        flat[(7 * i + 1) % flat.size] = v
    keep, group = (1, 2) if dtype == np.float32 else (2, 4)
    with np.errstate(invalid="ignore"):
        s = np.abs(x.astype(np.float64))
    s = np.where(np.isnan(s), np.inf, s)
    return np.where(nm_mask(s, keep=keep, group=group), x, 0).astype(dtype)


CASES = [(np.float16, 32, 32), (ml_dtypes.bfloat16, 64, 32), (np.float32, 32, 48), (np.int8, 16, 64),
         (np.int8, 48, 128), (np.float16, 96, 96)]


@pytest.mark.parametrize(("dtype", "m", "k"), CASES)
def test_compressed_values_and_reordered_metadata_equal_torch(dtype, m, k):
    torch, conv = _torch()
    rng = np.random.default_rng(m * k)
    x = _two_four(rng, dtype, m, k)
    values, meta = semi_structured_compress(x)
    tv, tm = conv.sparse_semi_structured_from_dense_cutlass(_to_torch(torch, x))
    assert np.array_equal(values.view(np.uint8), _bits(torch, tv, values).view(np.uint8))
    assert meta.dtype == tm.numpy().dtype
    assert np.array_equal(meta, tm.numpy())


@pytest.mark.parametrize(("dtype", "m", "k"), CASES)
def test_decompression_equals_torch_including_its_nan_payload_rewrites(dtype, m, k):
    torch, conv = _torch()
    rng = np.random.default_rng(m + k)
    special = {
        np.dtype(np.float16): [np.float16(np.inf), -np.float16(0.0), np.uint16(0x7D6A).view(np.float16),
                               np.float16(65504)],
        np.dtype(np.float32): [np.float32(np.inf), np.uint32(0x3FB37D6A).view(np.float32),
                               np.uint32(0x7F800001).view(np.float32)],
        np.dtype(ml_dtypes.bfloat16): [np.uint16(0x7F81).view(ml_dtypes.bfloat16),
                                       ml_dtypes.bfloat16(-np.inf)],
    }.get(np.dtype(dtype), [])
    x = _two_four(rng, dtype, m, k, special)
    values, meta = semi_structured_compress(x)
    tv, tm = conv.sparse_semi_structured_from_dense_cutlass(_to_torch(torch, x))
    theirs = _bits(torch, conv.sparse_semi_structured_to_dense_cutlass(tv, tm), x)
    ours = semi_structured_decompress(values, meta, nan_payloads="torch_cpu")
    assert np.array_equal(ours.view(np.uint8), theirs.view(np.uint8))
    exact = semi_structured_decompress(values, meta)
    assert np.array_equal(exact.view(np.uint8), x.view(np.uint8))


def test_torch_float32_round_trip_changes_a_value_whose_low_half_is_a_float16_snan():
    torch, conv = _torch()
    x = np.zeros((32, 16), np.float32)
    x[0, 0] = np.uint32(0x3FB37D6A).view(np.float32)  # 1.4022648
    tv, tm = conv.sparse_semi_structured_from_dense_cutlass(torch.from_numpy(x))
    back = conv.sparse_semi_structured_to_dense_cutlass(tv, tm).numpy()
    assert back[0, 0].view(np.uint32) == 0x3FB37F6A  # quieted: bit 9 of the low half set
    values, meta = semi_structured_compress(x)
    assert semi_structured_decompress(values, meta, nan_payloads="torch_cpu")[0, 0].view(np.uint32) == 0x3FB37F6A
    assert semi_structured_decompress(values, meta)[0, 0].view(np.uint32) == 0x3FB37D6A


@pytest.mark.parametrize("pattern", range(16))
def test_every_nonzero_pattern_of_a_group_encodes_like_torch(pattern):
    """Groups with fewer or more than 2 non-zeros follow torch's table too."""
    torch, conv = _torch()
    flags = [(pattern >> i) & 1 for i in range(4)]
    x = np.tile(np.array([f * (i + 1) for i, f in enumerate(flags)], dtype=np.float16), (32, 8))
    values, meta = semi_structured_compress(x)
    tv, tm = conv.sparse_semi_structured_from_dense_cutlass(torch.from_numpy(x))
    assert np.array_equal(values, tv.numpy()) and np.array_equal(meta, tm.numpy())


@pytest.mark.parametrize(("dtype", "k"), [(np.float16, 16), (np.int8, 32)])
def test_torch_fails_on_an_odd_number_of_metadata_columns_and_refquant_refuses_it(dtype, k):
    torch, conv = _torch()
    x = np.zeros((32, k), dtype)
    with pytest.raises(RuntimeError, match="out of bounds"):
        conv.sparse_semi_structured_from_dense_cutlass(torch.from_numpy(x))
    with pytest.raises(RefquantError, match="even number"):
        semi_structured_compress(x)


@pytest.mark.parametrize(("m", "ncols", "itemsize"), [(32, 1, 2), (64, 3, 2), (16, 2, 4), (48, 5, 4)])
def test_meta_reordering_offsets_equal_torch(m, ncols, itemsize):
    torch, conv = _torch()
    theirs = conv._calculate_meta_reordering_scatter_offsets(
        m, ncols, torch.int16 if itemsize == 2 else torch.int32, "cpu"
    ).numpy()
    assert np.array_equal(semi_structured_meta_offsets(m, ncols, itemsize), theirs)


@settings(max_examples=25)
@given(st.integers(0, 10**6), st.sampled_from([0.0, 1.0, -1.0, None]))
def test_transposable_greedy_equals_torch_sparse_semi_structured_tile_including_ties(seed, fill):
    """torch's tile uses a stable descending sort: ties keep the lower index first."""
    torch, conv = _torch()
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, (8, 8)).astype(np.float32)  # many ties
    if fill is not None:
        x[:4, :4] = fill
    theirs = conv._sparse_semi_structured_tile(torch.from_numpy(x.copy())).numpy()
    ours = transposable_nm_mask(x, method="greedy", tie_break="lower_index_kept")
    # torch ranks the signed values (x.sort(descending=True)), not magnitudes
    assert np.array_equal(np.where(ours, x, 0), theirs)


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_compressing_random_bit_patterns_equals_torch_including_nans(dtype):
    # every 16-bit pattern class, NaNs included (1 in 32 of random float16 bits)
    torch, conv = _torch()
    rng = np.random.default_rng(7)
    x = rng.integers(0, 1 << 16, (64, 64)).astype(np.uint16).view(dtype)
    x[rng.random(x.shape) < 0.5] = 0
    values, meta = semi_structured_compress(x, nan_payloads="torch_cpu")
    tv, tm = conv.sparse_semi_structured_from_dense_cutlass(_to_torch(torch, x))
    assert np.array_equal(values.view(np.uint16), _bits(torch, tv, values).view(np.uint16))
    assert np.array_equal(meta, tm.numpy())
