"""Properties every registered format must have: a new format is tested the moment it registers.

Each family is driven through one small adapter (how to round values to the
format and back); the properties themselves are the same for every format.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refquant as rq
from refquant.formats import floats
from refquant.formats.codebook import nearest_index
from refquant.formats.mx import dequantize_mx, quantize_mx
from refquant.formats.nvfp4 import dequantize_nvfp4, quantize_nvfp4

ALL = rq.list_formats()
ELEMENT = [n for n in ALL if rq.get_format(n).family in ("integer", "float", "codebook")]
BLOCK = [n for n in ALL if rq.get_format(n).family == "block"]


def test_registry_holds_every_family():
    fams = {rq.get_format(n).family for n in ALL}
    assert fams == {"integer", "float", "codebook", "block"}
    for must in ("int8", "uint4", "float8_e4m3fn", "float4_e2m1fn", "nf4", "mxfp4", "q4_0",
                 "q4_k", "tq2_0"):
        assert must in ALL


@pytest.mark.parametrize("name", ALL)
def test_format_is_found_by_its_exact_name(name):
    f = rq.get_format(name)
    assert f.name == name and rq.get_format(f) is f
    assert 1 <= f.bits <= 32


# ----------------------------------------------------------------- element formats


def _grid(f):
    """Every finite value of an element format, sorted."""
    if f.family == "integer":
        return np.arange(f.qmin, f.qmax + 1, dtype=np.float64)
    if f.family == "float":
        n = 1 << (f.bits if f.bits <= 8 else 16)
        dt = np.uint16 if f.bits > 8 else np.uint8
        v = floats.decode(np.arange(n).astype(dt), f.name).astype(np.float64)
        return np.unique(v[np.isfinite(v)])
    return np.unique(f.values.astype(np.float64))


def _round(f, x):
    """x rounded to the format (values inside its range), as float64."""
    if f.family == "integer":
        return rq.fake_quantize(x, 1.0, dtype=f, out_dtype=np.float64)
    if f.family == "float":
        return floats.decode(floats.encode(x, f.name, saturate=True), f.name).astype(np.float64)
    return f.values[nearest_index(x, f.values)].astype(np.float64)


def _inputs(f, data):
    g = _grid(f)
    lo, hi = g[0], g[-1]
    pick = data.draw(hnp.arrays(np.int64, 24, elements=st.integers(0, g.size - 1)))
    frac = data.draw(hnp.arrays(np.float64, 24, elements=st.floats(0, 1)))
    mids = g[pick] + (g[np.minimum(pick + 1, g.size - 1)] - g[pick]) * frac
    exact_mid = (g[pick] + g[np.minimum(pick + 1, g.size - 1)]) / 2
    x = np.concatenate([g[pick], mids, exact_mid, [lo, hi]])
    if f.family == "float" and f.bits == 8 and f.name.endswith("e8m0fnu"):
        x = x[x > 0]
    return x.astype(np.float32).astype(np.float64), g


@settings(max_examples=25)
@given(data=st.data())
@pytest.mark.parametrize("name", ELEMENT)
def test_element_format_rounds_to_a_nearest_representable_value(name, data):
    f = rq.get_format(name)
    x, g = _inputs(f, data)
    y = _round(f, x)
    assert np.isin(y, g).all(), "rounded values must lie on the grid"
    nearest = np.min(np.abs(x[:, None] - g[None, :]), axis=1)
    np.testing.assert_array_equal(np.abs(x - y), nearest)


@pytest.mark.parametrize("name", ELEMENT)
def test_element_format_round_trip_is_exact_on_the_grid_and_idempotent(name):
    f = rq.get_format(name)
    g = _grid(f)
    np.testing.assert_array_equal(_round(f, g), g)
    x = np.linspace(g[0], g[-1], 301)
    y = _round(f, x)
    np.testing.assert_array_equal(_round(f, y), y)
    assert np.all(np.diff(y) >= 0), "rounding must be monotone"


# ----------------------------------------------------------------- block formats


def _q8_1_by_hand(raw, x):
    """block_q8_1 decoded from its bytes (ggml has no dequantizer): | d fp16 | s fp16 | qs[32] |."""
    d = raw[:, 0:2].copy().view(np.float16).astype(np.float32)
    s = raw[:, 2:4].copy().view(np.float16)
    q = raw[:, 4:36].copy().view(np.int8).astype(np.float32)
    # quantize_row_q8_1_ref: s = fp16(sum(q) * d) with d = amax / 127 in float32, before
    # d itself is rounded to fp16
    d32 = (np.abs(x).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)
    np.testing.assert_array_equal(s, (q.sum(axis=1, keepdims=True) * d32).astype(np.float16))
    return q * d


def _block_round_trip(f, x):
    if type(f).__name__ == "MXFormat":
        codes, scales = quantize_mx(x, f)
        return dequantize_mx(codes, scales, f)
    if f.name == "nvfp4":  # one global scale over the tensor
        return dequantize_nvfp4(*quantize_nvfp4(x))
    raw = f.quantize_blocks(x.reshape(-1, f.block_size))
    if f.name == "q8_1":
        return _q8_1_by_hand(raw, x.reshape(-1, f.block_size)).reshape(x.shape)
    assert f.has_dequantize, f"{f.name}: a block format without a dequantizer needs one here"
    return f.dequantize_blocks(raw).reshape(x.shape)


def _max_error_per_amax(f):
    """A bound on |error| / block amax, from the format's grid.

    MX (a power-of-two scale 2^e with amax / 2^e in [2^emax, 2^(emax+1))): the top binade's
    half step, 2^-(m+1) of amax for m mantissa (fraction) bits, or the clamp of amax down
    to the element maximum, 1 - max / 2^(emax+1) (e2m1: 6 of 8), whichever is larger.
    ggml integer grids of b bits over [-amax, amax]: the step is about 2 amax / 2^b, so
    rounding costs amax 2^-b, and the clamped end of an asymmetric grid (q4_0's -8..7) one
    more step: 2^(2-b), with room for the fp16 rounding of the scales. Ternary (tq*): every
    |x| < amax / 2 goes to 0, so amax / 2.
    """
    name = f.name
    if name in ("mxfp4", "ggml_mxfp4", "nvfp4"):  # nvfp4: half of e2m1's top step, e4m3 scale
        return 0.25
    if type(f).__name__ == "MXFormat":
        el = f.element_format
        m = el.mantissa_bits if el is not None else f.element_bits - 2  # int8: 1.6 fixed point
        return max(2.0 ** -(m + 1), 1 - f.element_max / 2.0 ** (f.emax_elem + 1))
    if name.startswith("tq"):
        return 0.5 * (1 + 2.0**-10)
    b = int("".join(ch for ch in name.split("_")[0] if ch.isdigit()))  # q4_0 -> 4, q6_k -> 6
    return 2.0 ** (2 - b) * (1 + 2.0**-10)


@settings(max_examples=10)
@given(data=st.data())
@pytest.mark.parametrize("name", BLOCK)
def test_block_format_round_trip_keeps_shape_zeros_and_bounds(name, data):
    f = rq.get_format(name)
    if not getattr(f, "has_quantize", True):
        pytest.skip(f"{name}: refquant dequantizes it but has no quantizer")
    if hasattr(f, "requires_imatrix"):
        # ggml's IQ2 / IQ1 grid quantizers (bit-exact with libggml: tests/peers/test_ggml_iq_quant.py)
        # decode a lone spike with an error above max|x| (IQ1_M: 111 for a -100 among zeros)
        pytest.skip(f"{name}: the grid quantizers' error is not bounded by max|x| in ggml either")
    n = f.block_size * data.draw(st.integers(2, 3))
    x = data.draw(hnp.arrays(np.float32, (2, n), elements=st.floats(-100, 100, width=32)))
    x[:, : f.block_size] = 0  # a whole zero block
    x[:, f.block_size] = data.draw(st.sampled_from([-100.0, -1.0, 1.0, 37.5]))  # a block with scale
    y = _block_round_trip(f, x)
    assert y.shape == x.shape and np.isfinite(y).all()
    np.testing.assert_array_equal(y[:, : f.block_size], 0)
    if name in _LATTICE:
        return
    xb = x.reshape(-1, f.block_size).astype(np.float64)
    err = np.abs(y.reshape(-1, f.block_size) - xb)
    amax = np.abs(xb).max(axis=1, keepdims=True)
    assert np.all(err <= amax * 1.01 + 1e-30) or name in _FITTED_MIN
    # blocks whose scales sit in float16's normal range (ggml stores them as fp16; a block
    # of 1e-12s flushes to zero): better than nothing, i.e. less error energy than the block
    # itself (an all-zero output has exactly as much, and fails), and within the grid's bound
    live = amax[:, 0] >= 1
    assert live.sum() >= 2
    assert np.all((err[live] ** 2).sum(axis=1) < (xb[live] ** 2).sum(axis=1))
    if name not in _FITTED_MIN:
        r = _max_error_per_amax(f)
        assert np.all(err[live] <= r * amax[live]), ((err / np.maximum(amax, 1e-30))[live].max(), r)


# ggml's K-quants with a min fit scale and min by least squares (make_qkx2_quants), and the
# fitted min may lie beyond the data: a q4_k block of 255 x -1e-5 and one 0 decodes the 0 as
# -1.1265278e-05 in libggml itself (error 1.13 * amax), so the amax bound does not hold there.
_FITTED_MIN = ("q2_k", "q4_k", "q5_k")
# ggml's lattice IQ types (formats.ggml_iq) meet neither bound: their grids hold no 0 (a block
# of one spike decodes its zeros to ±4 d), IQ3_XXS stores 1.0125 times the fitted scale, and
# IQ3_S shifts the sub-blocks after an all-zero one (ggml's pointer quirk). Their bytes are
# checked against libggml instead (tests/peers/test_ggml_iq_libggml.py).
_LATTICE = ("iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs", "iq3_s", "iq1_s", "iq1_m")


def test_fitted_min_k_quants_can_land_beyond_the_block_range():
    x = np.full((1, 256), -1e-5, np.float32)
    x[0, 100] = 0.0
    f = rq.get_format("q4_k")
    y = f.dequantize_blocks(f.quantize_blocks(x))
    # the sub-block holding the 0 gets scale code 0, so every value in it is -dmin * m < -1e-5
    assert y[0, 100] < -1e-5 and np.all(y[0, 96:128] == y[0, 100])


@pytest.mark.parametrize("name", BLOCK)
def test_block_format_bits_per_weight_counts_the_scales(name):
    f = rq.get_format(name)
    assert f.bits > getattr(f, "element_bits", 1)
