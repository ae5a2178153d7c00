"""OCP MX block formats: hand-derived spec examples, scale rules, saturation, specials."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refquant import RefquantError
from refquant.formats import get_format, list_formats
from refquant.formats.mx import MX_FORMATS, dequantize_mx, quantize_mx, shared_exponent

NAMES = sorted(MX_FORMATS)


def test_mx_formats_are_registered_as_blocks_with_bits_per_element():
    assert set(NAMES) <= set(list_formats("block"))
    assert get_format("mxfp4").bits == 4.25 and get_format("mxfp8_e4m3").bits == 8.25
    assert get_format("mxfp6_e3m2").bits == 6.25
    # emax_elem of OCP MX v1.0 Table 2 / microxcaling's _get_format_params
    assert [MX_FORMATS[n].emax_elem for n in ("mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4",
                                              "mxint8")] == [8, 15, 4, 2, 2, 0]


def block(*vals):
    x = np.zeros(32, np.float32)
    x[: len(vals)] = vals
    return x


def test_mxfp8_e4m3_scale_is_floor_log2_amax_minus_8_and_ties_follow_rounding():
    x = block(100.0, 1.0)
    codes, scales = quantize_mx(x, "mxfp8_e4m3")
    assert scales.tolist() == [127 + 6 - 8]  # floor(log2 100) = 6
    # 100 / 2^-2 = 400, halfway between 384 (1.100b x 2^8, even) and 416
    assert dequantize_mx(codes, scales, "mxfp8_e4m3")[:2].tolist() == [96.0, 1.0]
    c2, s2 = quantize_mx(x, "mxfp8_e4m3", rounding="half_away")
    assert dequantize_mx(c2, s2, "mxfp8_e4m3")[0] == 104.0


def test_mxfp4_floor_rule_saturates_and_ceil_rule_does_not():
    x = block(7.0, 1.0)
    c, s = quantize_mx(x, "mxfp4")
    assert s.tolist() == [127] and dequantize_mx(c, s, "mxfp4")[:2].tolist() == [6.0, 1.0]  # 7 clamped to 6
    c, s = quantize_mx(x, "mxfp4", scale_rule="ceil")
    # 7 / 6 = 1.17 -> 2^1; 7 / 2 = 3.5 ties to 4 (even mantissa): 8; 1 / 2 = 0.5 exactly
    assert s.tolist() == [128] and dequantize_mx(c, s, "mxfp4")[:2].tolist() == [8.0, 1.0]


def test_mxint8_is_fixed_point_1_6_clamped_symmetric():
    x = block(3.0, -1.0, 0.015625)
    c, s = quantize_mx(x, "mxint8")
    assert c.dtype == np.int8 and s.tolist() == [128]  # floor(log2 3) = 1, emax 0
    assert c[:3].tolist() == [96, -32, 0]  # 1.5 * 64; -0.5 * 64; 0.0078125 * 64 = 0.5 -> 0 (even)
    c, s = quantize_mx(block(1.9999, -1.9999), "mxint8")
    assert c[:2].tolist() == [127, -127]


def test_all_zero_block_gets_the_smallest_scale_and_nan_block_the_nan_scale():
    x = np.concatenate([np.zeros(32), block(np.nan, 1.0), block(np.inf)])
    c, s = quantize_mx(x, "mxfp8_e5m2")
    assert s.tolist() == [0, 255, 255]
    d = dequantize_mx(c, s, "mxfp8_e5m2")
    assert (d[:32] == 0).all() and np.isnan(d[32:]).all()


def test_partial_last_block_along_axis_0_has_its_own_scale():
    x = np.ones((40, 2), np.float32)
    x[35, 1] = 64.0
    c, s = quantize_mx(x, "mxfp6_e3m2", axis=0)
    assert s.shape == (2, 2) and s.tolist() == [[123, 123], [123, 129]]  # 0 - 4 and 6 - 4, +127
    assert np.array_equal(dequantize_mx(c, s, "mxfp6_e3m2", axis=0), x)


def test_shared_exponent_is_exact_below_a_power_of_two():
    a = np.float32(2.0**20) - np.float32(0.0625)  # log2 rounds to 20.0 in float32
    assert shared_exponent([a], "mxint8").tolist() == [19.0]
    assert shared_exponent([2.0**-140], "mxfp4").tolist() == [-127.0]


@given(
    st.sampled_from(NAMES),
    st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=70),
    st.sampled_from(["floor", "ceil"]),
)
def test_elements_are_the_nearest_grid_values_at_the_block_scale(name, xs, rule):
    fmt = MX_FORMATS[name]
    x = np.array(xs, np.float32)
    c, s = quantize_mx(x, name, scale_rule=rule)
    d = dequantize_mx(c, s, name).astype(np.float64)
    scale = np.repeat(np.ldexp(1.0, s.astype(int) - 127), 32)[: x.size]
    if fmt.element == "int8":
        grid = np.arange(-127, 128) / 64
    else:
        from refquant.formats.floats import decode

        v = decode(np.arange(1 << fmt.element_format.bits), fmt.element_format).astype(np.float64)
        grid = np.unique(v[np.isfinite(v)])
    y = np.clip(x / scale, grid.min(), grid.max())
    best = np.abs(y[:, None] - grid[None, :]).min(axis=1)
    assert np.allclose(np.abs(d / scale - y), best, rtol=0, atol=1e-12)
    if rule == "ceil":
        assert (np.abs(x) <= scale * fmt.element_max).all()


def test_bad_arguments():
    with pytest.raises(RefquantError, match="not an MX format"):
        quantize_mx([1.0], "mxfp3")
    with pytest.raises(RefquantError, match="scale_rule"):
        quantize_mx([1.0], "mxfp4", scale_rule="round")
    c, s = quantize_mx(np.ones(64), "mxfp4")
    with pytest.raises(RefquantError, match="scales"):
        dequantize_mx(c, s[:1], "mxfp4")


def test_ceil_rule_whose_float32_quotient_underflows_gets_the_smallest_scale():
    # 2^-149 / 6 is 0 in float32: ceil(log2(amax / 6)) is about -152, clamped to -127
    # (code 0, as ONNX Cast to FLOAT8E8M0 round_mode="up" makes of a zero quotient), not 2^0.
    assert shared_exponent([np.float32(2.0**-149)], "mxfp4", "ceil").tolist() == [-127.0]
    c, s = quantize_mx(block(2.0**-149, -(2.0**-149)), "mxfp4", scale_rule="ceil")
    assert s.tolist() == [0] and c[:2].tolist() == [0, 0x8]  # 2^-22 at scale 2^-127 rounds to -+0
    # a float64 amax beyond float32 makes the float32 quotient Inf: NaN, not 2^0
    assert np.isnan(shared_exponent([1e39], "mxfp8_e4m3", "ceil")).all()


def test_dequantize_block_size_must_be_a_positive_integer():
    c, s = quantize_mx(np.ones(4), "mxfp4")
    for k in (0, -32, 2.5, True):
        with pytest.raises(RefquantError, match="block_size"):
            dequantize_mx(c, s, "mxfp4", block_size=k)


def test_empty_rows_quantize_and_dequantize_to_empty():
    # (3, 0) with blocks along axis 0: one (empty) block per column; reshape(-1) of 0 elements
    # used to raise numpy's "cannot reshape array of size 0"
    c, s = quantize_mx(np.zeros((3, 0)), "mxfp4", axis=0)
    assert c.shape == (3, 0) and s.shape == (1, 0)
    assert dequantize_mx(c, s, "mxfp4", axis=0).shape == (3, 0)


@pytest.mark.parametrize("fmt", ["mxfp4", "mxint8"])
def test_stochastic_element_rounding_is_reproducible_from_a_seed(fmt):
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    a = quantize_mx(x, fmt, rounding="stochastic", seed=5)
    b = quantize_mx(x, fmt, rounding="stochastic", seed=5)
    c = quantize_mx(x, fmt, rounding="stochastic", seed=6)
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


def test_scales_of_the_wrong_rank_and_a_huge_block_size_are_handled():
    # 1-D scales for 2-D codes raised numpy's AxisError; a block longer than the row is one
    # partial block (the spec's zero padding), so 10**30 must not allocate 10**30 zeros
    codes = np.uint8([[1, 2, 3], [4, 5, 6]])
    with pytest.raises(RefquantError, match="scales"):
        dequantize_mx(codes, np.uint8([127, 127]), "mxfp4")
    x = np.float32([[1.5, -3.0, 0.25], [6.0, 0.0, 1.0]])
    c_big, s_big = quantize_mx(x, "mxfp4", block_size=10**30)
    c_3, s_3 = quantize_mx(x, "mxfp4", block_size=3)
    np.testing.assert_array_equal(c_big, c_3)
    np.testing.assert_array_equal(s_big, s_3)
    np.testing.assert_array_equal(dequantize_mx(c_big, s_big, "mxfp4", block_size=10**30),
                                  dequantize_mx(c_3, s_3, "mxfp4", block_size=3))


@pytest.mark.parametrize("kw", [{"scale_rule": np.array([1.0, 2.0])}, {"rounding": np.array([])},
                                {"rounding": ["half_even"]}])
def test_an_array_for_an_option_name_is_a_refquant_error(kw):
    # numpy's ambiguous-truth ValueError came out of ``value not in (names...)``
    with pytest.raises(RefquantError):
        quantize_mx(np.float32([1.0, 2.0]), "mxfp4", **kw)
    if "scale_rule" in kw:
        with pytest.raises(RefquantError):
            shared_exponent(1.0, "mxfp4", kw["scale_rule"])
