"""ggml's grid quantizers IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M: Numba kernel = NumPy reference.

The NumPy reference (``backend="numpy"``, :mod:`refquant.formats._iq_quant`) defines the
bytes; the kernels (``backend="cpu"``, :mod:`refquant.kernels.cpu.ggml_iq_quant`) must give
the same bytes on every drawn block, with and without quant_weights, and the kernel bodies
run as plain Python (``NUMBA_DISABLE_JIT=1``) must give them too. The tables of
``iq2xs_init_impl`` are checked against the dequantizers' grids of ggml-common.h.
libggml itself: tests/peers/test_ggml_iq_quant.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import run_without_jit
from hypothesis import given, settings
from hypothesis import strategies as st

from refquant import RefquantError
from refquant.formats import _iq_grids as G
from refquant.formats import get_format
from refquant.formats._iq_quant import KMAP_SIZE, iq2xs_tables

TYPES = ["iq2_xxs", "iq2_xs", "iq2_s", "iq1_s", "iq1_m"]
NO_IMATRIX = ["iq2_s", "iq1_m"]  # ggml_quantize_requires_imatrix is false for these
KINDS = ["normal", "zero_sub", "ties", "equal", "spike", "tiny", "wide", "all_zero"]


def drawn_blocks(seed, kind, nb):
    """nb blocks of 256 of one kind: where the searches' ties, skips and scale edges live."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((nb, 256)) * rng.uniform(0.01, 100, (nb, 1))
    if kind == "zero_sub":  # a zero sub-block (skipped), -0.0 included
        x[:, 16:48] = 0
        x[:, 20] = -0.0
    elif kind == "ties":  # equal values and exact halves: the sort's and nearest_int's ties
        x = np.round(x * 2) / 2
    elif kind == "equal":
        x[:] = rng.choice([-3.0, 0.5, 7.25])
    elif kind == "spike":  # one large value among zeros and small ones
        x[:] = 0
        x[:, rng.integers(0, 256)] = rng.choice([-100.0, 37.5, 1e6])
        x[:, 200:208] = 1e-3
    elif kind == "tiny":  # scales near and below the skip thresholds (1e-15 ... 1e-7)
        x = x * 1e-9
    elif kind == "wide":  # magnitudes from 1e-6 to 1e9 in one block
        x = x * 10.0 ** rng.integers(-6, 10, x.shape)
    elif kind == "all_zero":
        x[:] = 0
    return x.astype(np.float32)


def drawn_weights(seed, nb, kind):
    rng = np.random.default_rng(seed + 1)
    if kind == "ones":
        return np.ones((nb, 256), np.float32)
    w = rng.uniform(0, 5, (nb, 256)).astype(np.float32)
    if kind == "holes":  # zeros: single weights, a whole group of 8, a whole sub-block
        w[:, rng.integers(0, 256, 20)] = 0
        w[:, 64:72] = 0
        w[:, 128:160] = 0
    elif kind == "zero":
        w[:] = 0
    return w


def _both(fmt, x, w):
    ref = fmt.quantize_blocks_weighted(x, w, backend="numpy")
    ker = fmt.quantize_blocks_weighted(x, w, backend="cpu")
    return ref, ker


@pytest.mark.parametrize("name", TYPES)
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(KINDS), nb=st.integers(1, 3),
       wkind=st.sampled_from(["uniform", "holes", "ones", "zero"]))
def test_kernel_matches_reference_with_imatrix(name, seed, kind, nb, wkind):
    fmt = get_format(name)
    x = drawn_blocks(seed, kind, nb)
    ref, ker = _both(fmt, x, drawn_weights(seed, nb, wkind))
    assert ref.shape == (nb, fmt.type_size) and ref.dtype == np.uint8
    np.testing.assert_array_equal(ker, ref)


@pytest.mark.parametrize("name", NO_IMATRIX)
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(KINDS), nb=st.integers(1, 3))
def test_kernel_matches_reference_without_imatrix(name, seed, kind, nb):
    fmt = get_format(name)
    x = drawn_blocks(seed, kind, nb)
    ref, ker = _both(fmt, x, None)
    np.testing.assert_array_equal(ker, ref)
    np.testing.assert_array_equal(fmt.quantize_blocks(x, backend="cpu"), ref)


@pytest.mark.parametrize("name", TYPES)
def test_one_weight_vector_is_every_blocks_and_empty_input_is_empty(name):
    fmt = get_format(name)
    x = drawn_blocks(3, "normal", 2)
    w = drawn_weights(3, 1, "holes")[0]
    for backend in ("numpy", "cpu"):
        np.testing.assert_array_equal(fmt.quantize_blocks_weighted(x, w, backend=backend),
                                      fmt.quantize_blocks_weighted(x, np.tile(w, (2, 1)), backend=backend))
        out = fmt.quantize_blocks_weighted(np.zeros((0, 256), np.float32), w, backend=backend)
        assert out.shape == (0, fmt.type_size)


# magnitudes at which libggml 0.20.2 aborts on drawn_blocks(5, "normal", 1) with unit weights
# (tests/peers/test_ggml_iq_quant.py checks, in a child process, that it does exactly there)
ABORTS = [("iq2_xxs", 1e15), ("iq2_xs", 1e15), ("iq2_s", 1e20), ("iq1_m", 1e20)]


@pytest.mark.parametrize("name,scale", ABORTS)
def test_where_ggml_aborts_refquant_raises(name, scale):
    # float32 sums of w*x^2 overflow, every neighbour distance is Inf or NaN and ggml's
    # GGML_ASSERT(grid_index >= 0) kills the process: refquant raises instead
    fmt = get_format(name)
    x = drawn_blocks(5, "normal", 1) * np.float32(scale)
    for backend in ("numpy", "cpu"):
        with pytest.raises(RefquantError, match="ggml aborts"):
            fmt.quantize_blocks_weighted(x, np.ones(256, np.float32), backend=backend)


@pytest.mark.parametrize("name", sorted(set(TYPES) - set(NO_IMATRIX)))
def test_types_that_ggml_requires_an_imatrix_for_refuse_without(name):
    fmt = get_format(name)
    x = drawn_blocks(1, "normal", 1)
    with pytest.raises(RefquantError, match="requires an importance matrix"):
        fmt.quantize_blocks(x)
    with pytest.raises(RefquantError, match="requires an importance matrix"):
        fmt.quantize_blocks_weighted(x, None)


@pytest.mark.parametrize("name", TYPES)
def test_bad_weights_and_blocks_are_refused(name):
    fmt = get_format(name)
    x = drawn_blocks(1, "normal", 2)
    with pytest.raises(RefquantError, match="shape"):
        fmt.quantize_blocks_weighted(x, np.ones(128, np.float32))
    with pytest.raises(RefquantError, match="finite and >= 0"):
        fmt.quantize_blocks_weighted(x, np.full(256, -1, np.float32))
    with pytest.raises(RefquantError, match="finite and >= 0"):
        fmt.quantize_blocks_weighted(x, np.full(256, np.nan, np.float32))
    x[1, 7] = np.inf
    with pytest.raises(RefquantError, match="non-finite"):
        fmt.quantize_blocks_weighted(x, np.ones(256, np.float32))


# the dequantizers' grid bytes for the quantizer's levels l = 0, 1, 2 (ggml-common.h)
_DEQ = {
    "iq2_xxs": (G.IQ2XXS_GRID, [8, 25, 43]),
    "iq2_xs": (G.IQ2XS_GRID, [8, 25, 43]),
    "iq2_s": (G.IQ2S_GRID, [8, 25, 43]),
    "iq1_s": (G.IQ1S_GRID, [255, 0, 1]),  # int8 -1, 0, 1
}


@pytest.mark.parametrize("name", list(_DEQ))
def test_init_tables_agree_with_the_dequantizers_grid(name):
    grid, kmap, neigh = iq2xs_tables(name)
    deq, values = _DEQ[name]
    # grid point k of the quantizer (2l + 1) is entry k of the dequantizer's grid
    deq_bytes = np.ascontiguousarray(deq.astype("<u8")).view(np.uint8).reshape(-1, 8)
    np.testing.assert_array_equal(np.array(values)[(grid.astype(np.int64) - 1) // 2], deq_bytes)
    u = ((grid.astype(np.int64) - 1) // 2 << (2 * np.arange(8))).sum(axis=1)
    np.testing.assert_array_equal(kmap[u], np.arange(grid.shape[0]))
    assert (kmap >= 0).sum() == grid.shape[0] and kmap.shape == (KMAP_SIZE,)


@pytest.mark.parametrize("name,nwant", [("iq2_xxs", 2), ("iq2_s", 1), ("iq1_s", 3)])
def test_neighbour_lists_are_the_nwant_nearest_distances_in_index_order(name, nwant):
    grid, kmap, neigh = iq2xs_tables(name)
    g = grid.astype(np.int64)
    rng = np.random.default_rng(0)
    for u in rng.choice(np.flatnonzero(kmap < 0), 40, replace=False):
        off = -kmap[u] - 1
        lst = neigh[off + 1 : off + 1 + neigh[off]]
        pos = 2 * ((u >> (2 * np.arange(8))) & 3) + 1
        d2 = ((g - pos) ** 2).sum(axis=1)
        cut = np.unique(d2)[:nwant][-1]
        want = np.lexsort((np.arange(g.shape[0]), d2))
        np.testing.assert_array_equal(lst, want[d2[want] <= cut])


def test_kernels_without_jit_match_the_reference():
    # the kernel bodies as plain Python (NUMBA_DISABLE_JIT=1): the same bytes, one block each
    code = f"""
import numpy as np
from refquant.formats import get_format
import sys; sys.path[:0] = [{repr(__file__.rsplit("/", 1)[0])}, {repr(__file__.rsplit("/", 2)[0])}]
from test_ggml_iq_quant import drawn_blocks, drawn_weights
x = np.concatenate([drawn_blocks(11, "ties", 1)[:, :], drawn_blocks(12, "zero_sub", 1)])
w = drawn_weights(11, 2, "holes")
for name in {TYPES!r}:
    fmt = get_format(name)
    nb = 1 if name == "iq1_m" else 2  # iq1_m's split search is ~150k Python steps a block
    for qw in ([w[:nb]] + ([None] if name in {NO_IMATRIX!r} else [])):
        a = fmt.quantize_blocks_weighted(x[:nb], qw, backend="cpu")
        b = fmt.quantize_blocks_weighted(x[:nb], qw, backend="numpy")
        assert np.array_equal(a, b), name
print("ok")
"""
    assert run_without_jit(code, timeout=600).strip().endswith("ok")


@pytest.mark.parametrize("kernel,name", [("_quantize_iq2_xxs", "iq2_xxs"), ("_quantize_iq1_m", "iq1_m")])
def test_kernels_have_no_contracted_fma(kernel, name):
    # libggml-base is built without FMA contraction: a fused multiply-add would round once
    # where C rounds twice and change bytes (the machine code of a fresh compile, callees linked in)
    import re

    import numba

    from refquant.kernels.cpu import ggml_iq_quant as K

    fn = getattr(K, kernel)
    x = np.ones((1, 256), np.float32)
    out = np.zeros((1, get_format(name).type_size), np.uint8)
    st_ = np.zeros(1, np.int8)
    args = (x, x, out, *iq2xs_tables(name), st_) if name == "iq2_xxs" else (x, x, True, out, *iq2xs_tables(name), st_)
    fresh = numba.njit(error_model="numpy", parallel=True)(fn.py_func)
    fresh(*args)
    asm = "\n".join(fresh.inspect_asm().values())
    assert re.search(r"\bv?mulss\b", asm) and re.search(r"\bv?sqrtss\b|\bv?sqrtsd\b", asm), "wrong code inspected"
    assert not re.search(r"vf(n)?m(add|sub)", asm), f"{name}: contracted FMA in the kernel"
