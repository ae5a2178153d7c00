"""Scaled float quantization: scales per tensor / channel / block, round trips, saturation."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refquant import RefquantError
from refquant.formats.floats import decode
from refquant.quant.floatq import dequantize_float, float_scale, quantize_float


def test_per_tensor_scale_maps_amax_to_448():
    x = np.array([[-896.0, 1.0], [2.0, 3.0]])
    codes, s = quantize_float(x, "float8_e4m3fn")
    assert s == np.float32(2.0)
    assert codes[0, 0] == 0xFE  # -448
    assert dequantize_float(codes, "float8_e4m3fn", s).tolist() == [[-896.0, 1.0], [2.0, 3.0]]


def test_per_channel_scale_is_one_per_row():
    x = np.array([[6.0, -3.0], [0.5, 0.25], [0.0, 0.0]])
    s = float_scale(x, "float4_e2m1fn", axis=0)
    assert s.tolist() == [1.0, np.float32(0.5 / 6), 1.0]  # the all-zero row gets scale 1


def test_blocks_with_a_partial_last_block_get_their_own_scale():
    x = np.arange(1, 11, dtype=np.float64).reshape(1, 10)
    s = float_scale(x, "float8_e4m3fn", axis=1, block_size=4)
    assert s.shape == (1, 3)
    assert s.ravel().tolist() == [np.float32(4 / 448), np.float32(8 / 448), np.float32(10 / 448)]
    codes, _ = quantize_float(x, "float8_e4m3fn", axis=1, block_size=4)
    assert codes[0, [3, 7, 9]].tolist() == [0x7E] * 3


def test_power_of_two_scales():
    x = np.array([100.0])
    assert float_scale(x, "float8_e4m3fn", power_of_two="ceil")[()] == 0.25  # 100/448 = 0.223
    assert float_scale(x, "float8_e4m3fn", power_of_two="floor")[()] == 0.125
    codes, s = quantize_float(x, "float8_e4m3fn", power_of_two="floor")
    assert decode(codes, "float8_e4m3fn")[0] == 448.0  # 800 saturates


def test_saturating_vs_not_with_a_given_scale():
    x = np.array([1000.0, -1000.0])
    assert quantize_float(x, "float8_e4m3fn", 1.0)[0].tolist() == [0x7E, 0xFE]
    assert quantize_float(x, "float8_e4m3fn", 1.0, saturate=False)[0].tolist() == [0x7F, 0xFF]


@given(
    st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=1, max_size=40),
    st.sampled_from(["float8_e4m3fn", "float8_e5m2", "float6_e2m3fn", "float4_e2m1fn"]),
)
def test_dequantized_error_is_at_most_half_a_step_of_the_scaled_grid(xs, fmt):
    x = np.array(xs, np.float32)
    codes, s = quantize_float(x, fmt)
    q = decode(codes, fmt).astype(np.float64)
    y = x / s
    v = decode(np.arange(256 if fmt.startswith("float8") else 64 if "6" in fmt else 16), fmt)
    grid = np.sort(v[np.isfinite(v)].astype(np.float64))
    for yi, qi in zip(y, q, strict=True):
        nearest = np.abs(grid - yi).min()
        assert abs(qi - yi) == pytest.approx(nearest, abs=1e-6 * max(1.0, abs(float(yi))))


def test_bad_scale_and_format_are_errors():
    with pytest.raises(RefquantError, match="scale"):
        quantize_float([1.0], "float8_e4m3fn", 0.0)
    with pytest.raises(RefquantError, match="scale format"):
        quantize_float([1.0], "float8_e8m0fnu")
    with pytest.raises(RefquantError, match="NaN"):
        float_scale([np.nan], "float8_e4m3fn")


def test_empty_inputs_quantize_to_empty_codes_with_unit_scales():
    # amax of an empty group used to raise numpy's "zero-size array to reduction operation"
    c, s = quantize_float(np.zeros(0), "float8_e4m3fn")
    assert c.shape == (0,) and s.tolist() == 1.0
    c, s = quantize_float(np.zeros((3, 0)), "float8_e4m3fn", axis=0)
    assert c.shape == (3, 0) and s.tolist() == [1.0, 1.0, 1.0]
    assert float_scale(np.zeros((0, 2)), "float4_e2m1fn", axis=1).tolist() == [1.0, 1.0]


def test_a_scale_that_is_not_numeric_raises_refquant_error():
    with pytest.raises(RefquantError, match="scale"):
        quantize_float(np.ones(3), "float8_e4m3fn", scale="a")
    with pytest.raises(RefquantError, match="scale"):
        dequantize_float(np.ones(3, np.uint8), "float8_e4m3fn", "a")


def test_power_of_two_exponents_are_decided_exactly_on_the_quotient():
    # amax / 448 = 4 * fl(sqrt 2) exactly, above 2^2.5: the nearest exponent is 3, but float64
    # log2 returns 2.5 and rint took 2
    amax = 2534.2707037725863
    assert amax / 448 == 4 * np.sqrt(2.0) and np.log2(amax / 448) == 2.5
    assert float_scale(np.array([amax]), "float8_e4m3fn", power_of_two="nearest") == 8.0
    # 448 * 16 * (1 + 2^-52) / 448 is just above 16: ceil is 32 (float64 log2 rounds to 4.0)
    up = 448 * 16 * (1 + 2.0**-52)
    assert up / 448 > 16 and float_scale(np.array([up]), "float8_e4m3fn", power_of_two="ceil") == 32.0
    # 448 * (2 - 2^-52) * 2 / 448 is just below 4: floor is 2 (float64 log2 rounds to 2.0)
    down = 448 * (2 - 2.0**-52) * 2
    assert down / 448 < 4 and float_scale(np.array([down]), "float8_e4m3fn", power_of_two="floor") == 2.0


def test_a_scale_that_underflows_float32_becomes_the_smallest_positive_float32():
    # amax 3.26e-41 / 57344 is 0 in float32: the computed scale was 0 and quantize_float
    # refused its own scale ("scale must be finite and positive")
    x = np.array([3.2608215264838493e-41], np.float32)
    assert float_scale(x, "float8_e5m2") == np.float32(2.0**-149)
    codes, s = quantize_float(x, "float8_e5m2")
    assert s == np.float32(2.0**-149) and decode(codes, "float8_e5m2")[0] == 24576.0  # 23270 -> 24576


def test_stochastic_rounding_is_reproducible_from_a_seed():
    x = np.random.default_rng(0).standard_normal(256).astype(np.float32)
    a, _ = quantize_float(x, "float8_e4m3fn", rounding="stochastic", seed=3)
    b, _ = quantize_float(x, "float8_e4m3fn", rounding="stochastic", seed=3)
    c, _ = quantize_float(x, "float8_e4m3fn", rounding="stochastic", seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_non_numeric_x_raises_refquant_error():
    for x in ("a", ["x", "y"]):
        with pytest.raises(RefquantError, match="x"):
            float_scale(x, "float8_e4m3fn")
        with pytest.raises(RefquantError, match="x"):
            quantize_float(x, "float8_e4m3fn")


@pytest.mark.parametrize("kw", [{"power_of_two": np.array([1.0, 2.0])}, {"scale_op": np.array([])},
                                {"precision": np.array(["float32", "float64"])},
                                {"rounding": np.array([1.0, 2.0])}])
def test_an_array_for_an_option_name_is_a_refquant_error(kw):
    with pytest.raises(RefquantError):
        quantize_float(np.float32([1.0, -3.0]), "float8_e4m3fn", **kw)


def test_a_block_longer_than_the_axis_is_one_partial_block():
    # block_size=10**30 raised TypeError (object-dtype repeat counts) in the granularity helpers
    x = np.float32([[1.0, -448.0, 3.0], [0.5, 2.0, -0.25]])
    s_big = float_scale(x, "float8_e4m3fn", axis=1, block_size=10**30)
    assert s_big.tolist() == [[1.0], [float(np.float32(2.0 / 448))]] == float_scale(x, "float8_e4m3fn", axis=1,
                                                                  block_size=3).tolist()
    c_big, _ = quantize_float(x, "float8_e4m3fn", axis=1, block_size=10**30)
    c_3, _ = quantize_float(x, "float8_e4m3fn", axis=1, block_size=3)
    np.testing.assert_array_equal(c_big, c_3)
    np.testing.assert_array_equal(dequantize_float(c_big, "float8_e4m3fn", s_big, axis=1,
                                                   block_size=10**30),
                                  dequantize_float(c_3, "float8_e4m3fn", s_big, axis=1, block_size=3))
