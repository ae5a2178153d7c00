import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refquant import RefquantError
from refquant.quant.pow2 import (
    article_binary_formula,
    fsr_exponent_range,
    pow2_exponent,
    pow2_quantize,
)


def test_log_and_linear_boundaries_differ_between_sqrt2_and_1_5():
    x = np.array([1.4, 1.45, 1.5, 1.6])
    np.testing.assert_array_equal(pow2_quantize(x, boundary="log")[0], [1, 2, 2, 2])
    np.testing.assert_array_equal(pow2_quantize(x, boundary="linear")[0], [1, 1, 2, 2])
    np.testing.assert_array_equal(pow2_quantize(x, boundary="floor")[0], [1, 1, 1, 1])


def test_sqrt2_neighbours_are_split_exactly():
    up = math.sqrt(2)  # fl(sqrt 2) > sqrt 2
    down = np.nextafter(up, 0)
    np.testing.assert_array_equal(pow2_exponent([up, down, -4 * up, 4 * down]), [1, 0, 3, 2])


@given(st.floats(1e-300, 1e300))
def test_log_boundary_gives_the_nearest_power_in_log_distance(v):
    k = int(pow2_exponent([v])[0])
    d = abs(math.log2(v) - k)
    assert d <= 0.5 + 1e-12
    assert abs(math.log2(v) - (k + 1)) >= 0.5 - 1e-12 and abs(math.log2(v) - (k - 1)) >= 0.5 - 1e-12


def test_clipping_and_underflow():
    x = np.array([1e-9, 1e9, 0.0, -3.0])
    v, k = pow2_quantize(x, min_exp=-4, max_exp=4)
    np.testing.assert_array_equal(v, [2**-4, 16, 0, -4])
    v, _ = pow2_quantize(x, min_exp=-4, max_exp=4, underflow="zero")
    assert v[0] == 0


def test_miyashita_fsr_range():
    assert fsr_exponent_range(0, 3) == (-8, 0)


def test_article_formula_flips_the_exponent_of_negative_values():
    out = article_binary_formula(np.array([0.3, -0.3, 5.0, -5.0, 0.0]))
    np.testing.assert_array_equal(out[:4], [0.25, -4.0, 4.0, -0.25])
    assert np.isnan(out[4])
    intended, _ = pow2_quantize(np.array([0.3, -0.3, 5.0, -5.0]), boundary="floor")
    np.testing.assert_array_equal(intended, [0.25, -0.25, 4.0, -4.0])


def test_bad_input():
    with pytest.raises(RefquantError, match="finite"):
        pow2_quantize([np.inf])
    with pytest.raises(RefquantError, match="boundary"):
        pow2_quantize([1.0], boundary="round")
    with pytest.raises(RefquantError, match="min_exp <= max_exp"):
        pow2_quantize([1.0], min_exp=3, max_exp=1)


def test_exponent_bounds_that_are_not_integers_raise_refquant_errors():
    for bad in (None, "a", float("inf"), 1.5):
        with pytest.raises(RefquantError, match="min_exp"):
            pow2_quantize([1.0], min_exp=bad)
    with pytest.raises(RefquantError, match="x must be"):
        pow2_exponent("a")


def test_integral_float_bounds_and_huge_bounds():
    # max_exp=np.float64(3.0) passed the integer check, then made ldexp raise a TypeError;
    # min_exp=10**30 raised OverflowError inside np.clip
    vals, ks = pow2_quantize(np.array([3.0, 100.0]), min_exp=np.int64(-3), max_exp=np.float64(3.0))
    assert vals.tolist() == [4.0, 8.0] and ks.tolist() == [2, 3]
    with pytest.raises(RefquantError, match="min_exp"):
        pow2_quantize([1.0], min_exp=10**30, max_exp=10**31)


def test_fsr_range_bad_arguments_and_ragged_or_text_input_raise_refquant_errors():
    # bits='a' raised TypeError, fsr='a' ValueError, bits=2.5 was truncated to 2;
    # a ragged list raised NumPy's ValueError in pow2_exponent / pow2_quantize / article formula
    for fsr, bits in (("a", 3), (5, "a"), (5, 2.5), (5.5, 3), (5, None)):
        with pytest.raises(RefquantError, match="fsr|bits"):
            fsr_exponent_range(fsr, bits)
    assert fsr_exponent_range(np.int64(5), np.int64(3)) == (-3, 5)
    for fn in (pow2_exponent, pow2_quantize, article_binary_formula):
        with pytest.raises(RefquantError, match="x must be"):
            fn([[1.0], [2.0, 3.0]])
    with pytest.raises(RefquantError, match="x must be"):
        article_binary_formula(["a"])
