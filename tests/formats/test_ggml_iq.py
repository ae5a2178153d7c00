"""The lattice IQ formats offline: grid tables, IQ3's neighbour tables, quirks and bad input.

The comparison with libggml itself is tests/peers/test_ggml_iq_libggml.py (live) and
tests/formats/test_ggml_vectors.py (frozen vectors).
"""

from __future__ import annotations

import numpy as np
import pytest

from refquant import RefquantError
from refquant.compat import ggml
from refquant.formats import _iq_grids as G
from refquant.formats import get_format
from refquant.formats.ggml_iq import IQ_FORMATS, iq3_tables

IQ_NAMES = [f.name for f in IQ_FORMATS]


def _levels(kgrid, bits, width):
    k = kgrid.astype(np.int64)[:, None]
    return (k >> (bits * np.arange(width))) & ((1 << bits) - 1)


def _bytes(grid, width, signed=False):
    raw = np.ascontiguousarray(grid.astype(f"<u{width}")).view(np.int8 if signed else np.uint8)
    return raw.reshape(-1, width).astype(np.int64)


@pytest.mark.parametrize(
    "kgrid, grid, bits, width, values",
    [
        (G.KGRID_2BIT_256, G.IQ2XXS_GRID, 2, 8, [8, 25, 43]),
        (G.KGRID_2BIT_512, G.IQ2XS_GRID, 2, 8, [8, 25, 43]),
        (G.KGRID_2BIT_1024, G.IQ2S_GRID, 2, 8, [8, 25, 43]),
        (G.KGRID_IQ3_256, G.IQ3XXS_GRID, 3, 4, [4, 12, 20, 28, 36, 44, 52, 62]),
        (G.KGRID_IQ3_512, G.IQ3S_GRID, 3, 4, [1, 3, 5, 7, 9, 11, 13, 15]),
        (G.KGRID_1BIT_2048, G.IQ1S_GRID, 2, 8, [-1, 0, 1]),
    ],
)
def test_the_quantizers_index_tables_and_the_grids_name_the_same_points(kgrid, grid, bits, width, values):
    # two tables copied separately (ggml-quants.c's kgrid_* and ggml-common.h's grids): level l
    # of entry k must be grid byte values[l] of entry k, for every entry and coordinate
    lv = _levels(kgrid, bits, width)
    gb = _bytes(grid, width, signed=min(values) < 0)
    assert grid.size == kgrid.size and np.unique(kgrid).size == kgrid.size
    np.testing.assert_array_equal(gb, np.asarray(values)[lv])


def test_ksigns_store_seven_signs_and_make_the_count_even():
    i = np.arange(128)
    assert np.array_equal(G.KSIGNS_IQ2XS & 127, i)
    assert np.all(np.bitwise_count(G.KSIGNS_IQ2XS) % 2 == 0)
    assert G.KMASK_IQ2XS.tolist() == [1 << j for j in range(8)]
    assert G.IQ1S_DELTA == G.IQ1M_DELTA == np.float32(0.125)


@pytest.mark.parametrize("grid_size, nwant", [(256, 2), (512, 3)])
def test_iq3_neighbour_lists_are_the_nearest_grid_points_in_ggml_order(grid_size, nwant):
    grid, kmap, neighbours, counts = iq3_tables(grid_size)
    on = kmap >= 0
    assert on.sum() == grid_size and np.all(grid[kmap[on]] == 2 * _levels(np.flatnonzero(on), 3, 4) + 1)
    assert np.all(counts[on] == 0) and np.all(counts[~on] > 0)
    rng = np.random.default_rng(0)
    for u in rng.choice(np.flatnonzero(~on), 200, replace=False):
        pos = 2 * _levels(np.array([u]), 3, 4)[0] + 1
        d2 = ((grid - pos) ** 2).sum(axis=1)
        lst = neighbours[u, : counts[u]]
        assert np.all(neighbours[u, counts[u] :] == -1)
        # ordered by (distance, index), and exactly the points at the nwant smallest distances
        key = list(zip(d2[lst].tolist(), lst.tolist(), strict=True))
        assert key == sorted(key)
        assert set(lst.tolist()) == set(np.flatnonzero(d2 <= np.unique(d2)[nwant - 1]).tolist())


def test_iq3_s_all_zero_sub_block_shifts_the_next_ones_like_ggml():
    # quantize_row_iq3_s_impl `continue`s on a sub-block with max == 0 before advancing its
    # qs / signs pointers: sub-block 2's grid indices land in slot 1, and the last slot stays 0
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 256)).astype(np.float32)
    f = get_format("iq3_s")
    full = f.quantize_blocks(x)
    x0 = x.copy()
    x0[0, 32:64] = 0
    holed = f.quantize_blocks(x0)
    qs_full, qs_holed = full[0, 2:66].reshape(8, 8), holed[0, 2:66].reshape(8, 8)
    np.testing.assert_array_equal(qs_holed[0], qs_full[0])
    np.testing.assert_array_equal(qs_holed[1:7], qs_full[2:8])
    assert not qs_holed[7].any() and holed[0, 66 + 1] == 0  # qh of sub-block 1 stays 0
    np.testing.assert_array_equal(holed[0, 74:106].reshape(8, 4)[1:7], full[0, 74:106].reshape(8, 4)[2:8])


def test_iq3_xxs_zero_sub_block_stores_index_zero_and_no_signs():
    x = np.random.default_rng(2).standard_normal((1, 256)).astype(np.float32)
    x[0, 64:96] = 1e-9  # below GROUP_MAX_EPS_IQ3_XXS = 1e-8
    raw = get_format("iq3_xxs").quantize_blocks(x)
    assert not raw[0, 2 + 16 : 2 + 24].any()  # qs of sub-block 2
    aux = raw[0, 66:98].copy().view("<u4")
    assert aux[2] == 0  # signs 0, scale code nearest_int(-0.5) = 0


@pytest.mark.parametrize("name", ["iq3_xxs", "iq3_s"])
def test_all_zero_blocks_give_zero_bytes_and_decode_to_zero(name):
    f = get_format(name)
    raw = f.quantize_blocks(np.zeros((2, 256), np.float32))
    assert not raw.any()
    assert not f.dequantize_blocks(raw).any()


@pytest.mark.parametrize("name", ["iq3_xxs", "iq3_s"])
def test_overflowing_input_is_refused_where_ggml_aborts(name):
    x = np.random.default_rng(4).standard_normal((1, 256)).astype(np.float32) * np.float32(1e30)
    with pytest.raises(RefquantError, match="ggml aborts"):
        get_format(name).quantize_blocks(x)
    with pytest.raises(RefquantError, match="ggml aborts"):
        ggml.quantize(x, name.upper())


@pytest.mark.parametrize("name", ["iq2_xxs", "iq2_xs", "iq1_s"])
def test_types_ggml_quantizes_only_with_an_imatrix_refuse_without(name):
    f = get_format(name)
    assert f.has_quantize and f.has_dequantize and f.requires_imatrix
    with pytest.raises(RefquantError, match="requires an importance matrix"):
        f.quantize_blocks(np.zeros((1, 256), np.float32))
    with pytest.raises(RefquantError, match="requires an importance matrix"):
        ggml.quantize(np.zeros(256, np.float32), name)
    assert ggml.quantize(np.zeros(256, np.float32), name, imatrix=np.ones(256)).shape == (f.type_size,)


@pytest.mark.parametrize("name", ["iq3_xxs", "iq3_s"])
def test_imatrix_path_validates_and_null_equals_the_ref(name):
    f = get_format(name)
    x = np.random.default_rng(5).standard_normal((2, 256)).astype(np.float32)
    np.testing.assert_array_equal(f.quantize_blocks_weighted(x), f.quantize_blocks(x))
    w = np.random.default_rng(6).random(256).astype(np.float32)
    assert np.any(f.quantize_blocks_weighted(x, w) != f.quantize_blocks(x))
    np.testing.assert_array_equal(f.quantize_blocks_weighted(x, np.tile(w, (2, 1))), f.quantize_blocks_weighted(x, w))
    np.testing.assert_array_equal(
        ggml.quantize(x.reshape(1, 512), name, imatrix=np.tile(w, 2)).reshape(2, -1),
        f.quantize_blocks_weighted(x, w),
    )
    for bad, msg in ((np.ones(128), "shape"), (-w, ">= 0"), (np.full(256, np.nan), "finite")):
        with pytest.raises(RefquantError, match=msg):
            f.quantize_blocks_weighted(x, bad)


@pytest.mark.parametrize("name", IQ_NAMES)
def test_block_sizes_are_ggml_common_h_structs(name):
    # sizeof(block_iq*) from ggml-common.h's static_asserts
    sizes = {"iq2_xxs": 66, "iq2_xs": 74, "iq2_s": 82, "iq3_xxs": 98, "iq3_s": 110, "iq1_s": 50, "iq1_m": 56}
    f = get_format(name)
    assert (f.block_size, f.type_size) == (256, sizes[name])
    assert ggml.resolve_type(name.upper()) is f and ggml.resolve_type(f.type_id) is f
    raw = np.zeros((3, f.type_size), np.uint8)
    assert f.dequantize_blocks(raw).shape == (3, 256)
    with pytest.raises(RefquantError, match="shape"):
        f.dequantize_blocks(np.zeros((3, f.type_size + 1), np.uint8))
