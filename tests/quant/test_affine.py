from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refquant import IntFormat, RefquantError, dequantize, fake_quantize, quantize


def _exact_quantize(x, s, z, qmin, qmax):
    """round_half_even(x / s) + z, clamped, in exact rational arithmetic."""
    out = []
    for v, sc, zp in zip(np.ravel(x), np.ravel(s), np.ravel(z), strict=True):
        r = round(Fraction(float(v)) / Fraction(float(sc)))  # Python rounds half to even
        out.append(min(max(r + int(zp), qmin), qmax))
    return np.array(out, dtype=np.int64).reshape(np.shape(x))


def test_hand_worked_example():
    # x / s = [0.5, 1.5, 2.5, -0.5, 12.8, -13]: ties to even, then +z, then clamp
    x = np.array([0.125, 0.375, 0.625, -0.125, 3.2, -3.25], dtype=np.float64)
    q = quantize(x, 0.25, 3, dtype="int4")
    np.testing.assert_array_equal(q, [3, 5, 5, 3, 7, -8])
    assert q.dtype == np.int8
    np.testing.assert_array_equal(dequantize(q, 0.25, 3), [0.0, 0.5, 0.5, 0.0, 1.0, -2.75])


scales = st.floats(2.0**-13, 10.0, width=32)


@st.composite
def tie_heavy_inputs(draw):
    s = np.float32(draw(scales))
    n = draw(st.integers(1, 40))
    ks = draw(hnp.arrays(np.int64, n, elements=st.integers(-400, 400)))
    kind = draw(hnp.arrays(np.int8, n, elements=st.integers(0, 3)))
    noise = draw(hnp.arrays(np.float32, n, elements=st.floats(-1e6, 1e6, width=32)))
    # exact ties (k + 0.5) * s where representable, values far outside, arbitrary values
    x = np.where(kind == 0, (ks + 0.5) * np.float64(s), np.where(kind == 1, noise, ks * 0.37))
    return x.astype(np.float32), s


@settings(max_examples=150)
@given(tie_heavy_inputs(), st.sampled_from(["int8", "uint8", "int4", "uint4", "int2", "int16"]),
       st.data())
def test_float64_precision_equals_exact_rational_rounding(inp, dtype, data):
    x, s = inp
    fmt = IntFormat(int(dtype.lstrip("uint")), signed=not dtype.startswith("u"))
    z = data.draw(st.integers(fmt.qmin, fmt.qmax))
    q = quantize(x, s, z, dtype=dtype)
    np.testing.assert_array_equal(q, _exact_quantize(x, np.full(x.shape, s), np.full(x.shape, z),
                                                     fmt.qmin, fmt.qmax))


@settings(max_examples=100)
@given(tie_heavy_inputs())
def test_float32_precision_rounds_the_float32_quotient(inp):
    x, s = inp
    q = quantize(x, s, dtype="int8", precision="float32")
    ref = np.clip(np.rint(x / s), -128, 127)  # NumPy float32 division, then half-even
    np.testing.assert_array_equal(q, ref)


def test_reciprocal_multiply_differs_from_division_on_pytorchs_example():
    # pytorch#139464: x * float32(1/s) rounds to 128 where x / s rounds to 127
    x = np.float32(0.273939937)
    s = np.float32(0.00214854861)
    div = quantize(x, s, dtype="int16", precision="float32")
    rec = quantize(x, s, dtype="int16", precision="float32", scale_op="reciprocal")
    assert (int(div), int(rec)) == (127, 128)


def test_per_axis_uses_one_parameter_per_index_of_any_axis():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    s = np.array([1.0, 2.0, 4.0])
    z = np.array([0, 1, -1])
    for axis in (1, -2):
        q = quantize(x, s, z, axis=axis)
        np.testing.assert_array_equal(q, np.rint(x / s[None, :, None]) + z[None, :, None])


def test_blocked_with_partial_last_block():
    x = np.arange(10, dtype=np.float32).reshape(2, 5) + 0.5
    s = np.array([[1.0, 0.5, 2.0], [1.0, 1.0, 0.25]])  # blocks [0:2], [2:4], [4:5]
    q = quantize(x, s, axis=1, block_size=2, dtype="int16")
    expanded = np.repeat(s, 2, axis=1)[:, :5]
    np.testing.assert_array_equal(q, np.rint(x / expanded))
    np.testing.assert_array_equal(dequantize(q, s, axis=1, block_size=2),
                                  (q * expanded).astype(np.float32))


@pytest.mark.parametrize("mode,expected", [("half_even", [0, 2]), ("half_away", [1, 2]),
                                           ("half_up", [1, 2]), ("floor", [0, 1]),
                                           ("trunc", [0, 1])])
def test_rounding_is_a_named_choice(mode, expected):
    np.testing.assert_array_equal(quantize([0.5, 1.5], 1.0, rounding=mode), expected)


def test_zero_point_before_rounding_changes_ties_for_odd_zero_points():
    # round(0.5) + 1 = 1 but round(0.5 + 1) = 2
    assert quantize(0.5, 1.0, 1) == 1
    assert quantize(0.5, 1.0, 1, zero_point_stage="before_rounding") == 2
    # float zero points only make sense before rounding
    assert quantize(0.5, 1.0, 0.75, dtype="uint8", zero_point_stage="before_rounding") == 1
    with pytest.raises(RefquantError, match="integral"):
        quantize(0.5, 1.0, 0.75)


def test_saturation_wrap_and_raise():
    x = np.array([200.0, -300.0, 127.0])
    np.testing.assert_array_equal(quantize(x, 1.0), [127, -128, 127])
    np.testing.assert_array_equal(quantize(x, 1.0, overflow="wrap"), [-56, -44, 127])
    with pytest.raises(RefquantError, match="2 value\\(s\\) fall outside \\[-128, 127\\]"):
        quantize(x, 1.0, overflow="raise")



def test_wrap_of_a_narrow_grid_is_twos_complement_at_the_full_width():
    # 128 wraps to -128 in 8-bit two's complement (and 200 to -56, 383 to 127); wrapping
    # from the narrow qmin (-127) gave 128, a value no int8 holds (out_dtype=int64)
    x = np.array([128.0, 200.0, 383.0, -129.0])
    for kw in ({"narrow_range": True}, {"dtype": "int8_narrow"}):
        got = quantize(x, 1.0, overflow="wrap", out_dtype=np.int64, **kw)
        np.testing.assert_array_equal(got, [-128, -56, 127, 127])

def test_narrow_range_never_produces_the_most_negative_code():
    assert quantize(-1000.0, 1.0, narrow_range=True) == -127
    assert quantize(-1000.0, 1.0, dtype="int8_narrow") == -127


def test_nan_policies():
    x = np.array([np.nan, 1.0])
    with pytest.raises(RefquantError, match="NaN"):
        quantize(x, 1.0)
    assert quantize(x, 1.0, nan="zero")[0] == 0
    assert quantize(x, 1.0, 7, nan="zero_point")[0] == 7
    assert quantize(x, 1.0, nan="qmin", dtype="uint4")[0] == 0
    assert quantize(x, 1.0, nan="qmax", dtype="uint4")[0] == 15


def test_inf_saturates_or_raises():
    x = np.array([np.inf, -np.inf])
    np.testing.assert_array_equal(quantize(x, 1.0), [127, -128])
    np.testing.assert_array_equal(quantize(x, 1.0, overflow="wrap"), [127, -128])
    with pytest.raises(RefquantError, match="Inf"):
        quantize(x, 1.0, inf="raise")


def test_input_is_never_modified():
    x = np.array([0.3, 0.7, np.nan], dtype=np.float32)
    before = x.copy()
    quantize(x, 0.1, nan="zero")
    fake_quantize(x, 0.1, nan="zero")
    np.testing.assert_array_equal(x, before)


def test_empty_input_gives_empty_codes():
    q = quantize(np.zeros((0, 3), np.float32), np.ones(3), axis=1)
    assert q.shape == (0, 3) and q.dtype == np.int8
    assert dequantize(q, np.ones(3), axis=1).shape == (0, 3)


def test_out_dtype_and_ml_dtypes_codes():
    import ml_dtypes

    q = quantize([1.0, -2.0], 1.0, dtype="int4", out_dtype=ml_dtypes.int4)
    assert q.dtype == ml_dtypes.int4
    np.testing.assert_array_equal(dequantize(q, 0.5), [0.5, -1.0])


@pytest.mark.parametrize("scale", [0.0, -1.0, np.nan, np.inf, [1.0, 0.0]])
def test_bad_scales_are_refused_with_the_value(scale):
    with pytest.raises(RefquantError, match="scale must be finite and > 0"):
        quantize(np.ones(2), scale, axis=0 if np.ndim(scale) else None)


def test_zero_point_outside_the_grid_is_refused():
    with pytest.raises(RefquantError, match="zero_point 300 is outside the range \\[0, 255\\]"):
        quantize(1.0, 1.0, 300, dtype="uint8")
    with pytest.raises(RefquantError, match="zero_point -9 is outside"):
        quantize(1.0, 1.0, -9, dtype="int4")


def test_axis_and_shape_errors_name_the_argument():
    x = np.ones((2, 3))
    with pytest.raises(RefquantError, match="axis 2 is out of range"):
        quantize(x, np.ones(3), axis=2)
    with pytest.raises(RefquantError, match="scale has shape \\(2,\\).*need shape \\(3,\\)"):
        quantize(x, np.ones(2), axis=1)
    with pytest.raises(RefquantError, match="need shape \\(2, 2\\)"):
        quantize(x, np.ones((2, 3)), axis=1, block_size=2)
    with pytest.raises(RefquantError, match="block_size must be a positive integer, got 0"):
        quantize(x, np.ones((2, 3)), axis=1, block_size=0)
    with pytest.raises(RefquantError, match="block_size needs an axis"):
        quantize(x, 1.0, block_size=2)
    with pytest.raises(RefquantError, match="per-tensor scale must be a scalar"):
        quantize(x, np.ones(3))


def test_choice_arguments_are_validated():
    for kw in ({"scale_op": "mul"}, {"overflow": "clip"}, {"nan": "drop"}, {"precision": "f16"}):
        with pytest.raises(RefquantError, match=next(iter(kw))):
            quantize(1.0, 1.0, **kw)


@settings(max_examples=60)
@given(hnp.arrays(np.float32, st.integers(0, 50), elements=st.floats(-100, 100, width=32)),
       scales, st.sampled_from(["int8", "uint8", "int4", "int16"]))
def test_fake_quantize_is_the_nearest_grid_point_inside_the_range(x, s, dtype):
    fmt = {"int8": IntFormat(8), "uint8": IntFormat(8, False), "int4": IntFormat(4),
           "int16": IntFormat(16)}[dtype]
    y = fake_quantize(x, s, dtype=dtype).astype(np.float64)
    lo, hi = fmt.qmin * np.float64(s), fmt.qmax * np.float64(s)
    inside = (x >= lo) & (x <= hi)
    assert np.all(np.abs(y[inside] - x[inside]) <= 0.5 * np.float64(s) * (1 + 1e-6))
    assert np.all((y >= np.float32(lo) * (1 + 1e-6) - 1e-30) | ~np.isfinite(y))


def test_fused_zero_point_rounds_the_multiply_add_once():
    # x * (1/s) + z: with s = 1 - 2^-23, 1/s rounds to 1 + 2^-23 in float32; for
    # x = -127.5 + 2^-16 the exact fma lands just below -127.5 + 128 = 0.5 + ...
    s = np.float32(1 - 2.0**-23)
    x = np.float32(-127.5 + 2.0**-16)
    inv = np.float32(1) / s
    exact = float(np.float64(x) * np.float64(inv) + 128)  # exact in float64 here
    two_roundings = float(np.float32(np.float32(x * inv) + np.float32(128)))
    fused = quantize(x, s, 128, dtype="uint8", scale_op="reciprocal", precision="float32",
                     zero_point_stage="fused")
    assert int(fused) == round(exact) and round(exact) != round(two_roundings)
    with pytest.raises(RefquantError, match="fused"):
        quantize(x, s, 128, dtype="uint8", zero_point_stage="fused")


def test_dequantize_float32_precision_rounds_q_minus_z_first():
    q = np.array([2**24 + 1], dtype=np.int64)
    assert dequantize(q, 1.0, 0, out_dtype=np.float64)[0] == 2**24 + 1
    assert dequantize(q, 1.0, 0, out_dtype=np.float64, precision="float32")[0] == 2**24
    with pytest.raises(RefquantError, match="precision"):
        dequantize(q, 1.0, precision="half")


def test_dequantize_rounds_the_exact_product_once():
    # s = float64((1 + 2^-24) / 3): 3 * s = 1 + 2^-24 + e with e > 0, which rounds to
    # exactly 1 + 2^-24 in float64, a float32 tie that goes to 1.0 (even); the exact
    # product is above the tie, so one rounding gives 1 + 2^-23
    s = float(Fraction(1 + 2.0**-24) / 3)
    assert Fraction(s) * 3 > Fraction(1 + 2.0**-24) and 3 * s == 1 + 2.0**-24
    assert dequantize(np.array([3]), s)[0] == np.float32(1 + 2.0**-23)
    assert dequantize(np.array([3]), s, out_dtype=np.float64)[0] == 3 * s
    # below a tie whose even neighbour is above: s = float64((1 + 3 * 2^-24) / 3)
    s = float(Fraction(1 + 3 * 2.0**-24) / 3)
    assert Fraction(s) * 3 < Fraction(1 + 3 * 2.0**-24)
    assert dequantize(np.array([3]), s)[0] == np.float32(1 + 2.0**-23)


@pytest.mark.parametrize(
    "call",
    [
        # ragged lists raised NumPy's ValueError
        lambda: quantize([[1.0], [1.0, 2.0]], 0.1),
        lambda: quantize(np.ones(2), [[1.0], [1.0, 2.0]]),
        lambda: quantize(np.ones(2), 0.1, [[1], [1, 2]]),
        lambda: dequantize([[1], [1, 2]], 0.1),
        # a float zero point beyond int64 (1e30) was cast with a RuntimeWarning, then compared
        lambda: quantize(np.ones(2), 0.1, 1e30, zero_point_stage="before_rounding"),
        # a uint64 code 2^64 - 1 wrapped to -1 in q - z
        lambda: dequantize(np.array([2**64 - 1], np.uint64), 1.0),
        # seed 'a' / -1 raised NumPy's TypeError / ValueError
        lambda: quantize(np.ones(2), 0.1, rounding="stochastic", seed="a"),
        lambda: quantize(np.ones(2), 0.1, rounding="stochastic", seed=-1),
    ],
)
def test_bad_arrays_zero_points_codes_and_seeds_raise_refquant_error(call):
    with pytest.raises(RefquantError):
        call()


def test_dequantize_to_bfloat16_rounds_once_whatever_the_ml_dtypes_release():
    # ml_dtypes < 0.7 casts float64 -> bfloat16 through float32; where float32(p) lands
    # exactly on a bfloat16 midpoint, that second rounding goes the wrong way. refquant
    # rounds to odd at float32's width first, so every release gives the one rounding.
    import ml_dtypes

    rng = np.random.default_rng(1)
    codes = rng.integers(-32768, 32768, 400_000).astype(np.int16)
    scale = np.float32(0.3712)
    p = codes.astype(np.float64) * np.float64(scale)  # exact: 16 x 24 bits
    f = p.astype(np.float32)
    on_mid = ((f.view(np.uint32) & 0xFFFF) == 0x8000) & (f.astype(np.float64) != p)
    assert on_mid.sum() > 20  # the cases that double rounding gets wrong
    got = dequantize(codes[on_mid], scale, out_dtype=ml_dtypes.bfloat16).view(np.uint16)
    # the bfloat16 neighbours of the midpoint f: truncate, then step away from zero when
    # |p| > |f| (p lies beyond the midpoint)
    low = (f[on_mid].view(np.uint32) >> 16).astype(np.uint16)
    beyond = np.abs(p[on_mid]) > np.abs(f[on_mid].astype(np.float64))
    want = np.where(beyond, low + 1, low).astype(np.uint16)
    assert np.array_equal(got, want)
