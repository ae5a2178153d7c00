"""refquant.quant.integer against gemmlowp's / TFLite's definitions evaluated on Python ints."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refquant.quant.integer as I
from refquant import RefquantError
from refquant.quant.integer import (
    INT32_MAX,
    INT32_MIN,
    accumulator_range,
    int32_accumulation_fits,
    integer_matmul,
    max_int32_depth,
    multiply_by_quantized_multiplier,
    multiply_by_quantized_multiplier_int64,
    quantize_bias,
    quantize_multiplier,
    requantize,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)

i32 = st.integers(INT32_MIN, INT32_MAX)
i32_edge = st.one_of(i32, st.sampled_from([INT32_MIN, INT32_MIN + 1, -1, 0, 1, INT32_MAX,
                                           INT32_MAX - 1, 2**30, -(2**30)]))
mult = st.one_of(st.integers(0, INT32_MAX), st.integers(2**31 - 2**16, INT32_MAX),
                 st.sampled_from([0, 1, 2**30, 2**31 - 1, 0x7FFF0000, 0x7FFEFFFF]))


# --- literal Python-int transcriptions of the C++ (the oracle) -----------------------------

def c_div(a, b):  # C++ integer division: truncation toward zero
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def wrap32(v):
    return (v + 2**31) % 2**32 - 2**31


def srdhm(a, b):
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    return c_div(ab + nudge, 1 << 31)


def rdbpot(x, e):
    mask = (1 << e) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if remainder > threshold else 0)


def mbqm_double(x, m, shift):
    left = shift if shift > 0 else 0
    right = 0 if shift > 0 else -shift
    return rdbpot(srdhm(wrap32(x * (1 << left)), m), right)


def mbqm_single(x, m, shift):
    total = 31 - shift
    return wrap32((x * m + (1 << (total - 1))) >> total)


def mbqm_int64(x, m, shift):
    reduced = (m + (1 << 15)) >> 16 if m < 0x7FFF0000 else 0x7FFF
    total = 15 - shift
    return wrap32((x * reduced + (1 << (total - 1))) >> total)


# --- fixed point ----------------------------------------------------------------------------

def test_srdhm_int32_min_squared_saturates():
    assert saturating_rounding_doubling_high_mul(INT32_MIN, INT32_MIN) == INT32_MAX


def test_srdhm_rounds_ties_up_toward_plus_infinity():
    # a*b / 2^31 = ±0.5, ±1.5 exactly: the nudge 1 - 2^30 for negatives plus C++'s
    # truncating division sends every tie toward +Inf (not away from zero)
    assert saturating_rounding_doubling_high_mul(1, 2**30) == 1
    assert saturating_rounding_doubling_high_mul(-1, 2**30) == 0
    assert saturating_rounding_doubling_high_mul(3, 2**30) == 2
    assert saturating_rounding_doubling_high_mul(-3, 2**30) == -1


@given(i32_edge, i32_edge)
def test_srdhm_matches_gemmlowp_definition(a, b):
    assert int(saturating_rounding_doubling_high_mul(a, b)) == srdhm(a, b)


@given(i32_edge, st.integers(0, 31))
def test_rounding_divide_by_pot_matches_gemmlowp_definition(x, e):
    assert int(rounding_divide_by_pot(x, e)) == rdbpot(x, e)


def test_rounding_divide_by_pot_ties_away_from_zero():
    np.testing.assert_array_equal(rounding_divide_by_pot([5, -5, 6, -6, 7], 1), [3, -3, 3, -3, 4])


@given(i32_edge, st.one_of(i32_edge, mult), st.integers(-31, 30))
def test_double_rounding_mbqm_matches_literal_definition(x, m, shift):
    assert int(multiply_by_quantized_multiplier(x, m, shift)) == mbqm_double(x, m, shift)


@given(i32_edge, mult, st.integers(-31, 30))
def test_single_rounding_mbqm_matches_literal_definition(x, m, shift):
    got = multiply_by_quantized_multiplier(x, m, shift, single_rounding=True)
    assert int(got) == mbqm_single(x, m, shift)


@given(st.integers(-(2**47), 2**47 - 1), mult, st.integers(-31, 7))
def test_int64_mbqm_matches_literal_definition(x, m, shift):
    assert int(multiply_by_quantized_multiplier_int64(x, m, shift)) == mbqm_int64(x, m, shift)


def test_double_rounding_tie_is_created_by_the_first_rounding():
    # exact x*M = 3 (2^31 - 1) / 2^32 = 1.4999999993: the right answer is 1.
    # Double: SRDHM gives 2.9999999986 -> 3, then RDBPOT(3, 1) = 1.5 -> 2 (away).
    x2, m2 = 3, 2**31 - 1
    assert int(multiply_by_quantized_multiplier(x2, m2, -1)) == 2
    assert int(multiply_by_quantized_multiplier(x2, m2, -1, single_rounding=True)) == 1


def test_mbqm_rejects_out_of_range_shift_and_negative_single_rounding_multiplier():
    with pytest.raises(RefquantError, match="shift"):
        multiply_by_quantized_multiplier(1, 2**30, 31)
    with pytest.raises(RefquantError, match="shift"):
        multiply_by_quantized_multiplier(1, 2**30, -32)
    with pytest.raises(RefquantError, match=">= 0"):
        multiply_by_quantized_multiplier(1, -5, 0, single_rounding=True)
    with pytest.raises(RefquantError, match="int32"):
        multiply_by_quantized_multiplier(2**31, 2**30, 0)


# --- quantize_multiplier ----------------------------------------------------------------------

def test_quantize_multiplier_hand_values():
    assert quantize_multiplier(0.5) == (2**30, 0)
    assert quantize_multiplier(1.0) == (2**30, 1)
    assert quantize_multiplier(0.75) == (3 * 2**29, 0)
    assert quantize_multiplier(0.0) == (0, 0)


def test_quantize_multiplier_rounding_up_to_2_pow_31_renormalises():
    # q = 1 - 2^-40 -> q * 2^31 rounds to 2^31 -> (2^30, shift + 1)
    assert quantize_multiplier(1 - 2.0**-40) == (2**30, 1)


def test_quantize_multiplier_flushes_shift_below_minus_31_to_zero():
    assert quantize_multiplier(2.0**-32) == (2**30, -31)  # frexp exponent -31: kept
    assert quantize_multiplier(2.0**-33) == (0, 0)


def test_quantize_multiplier_single_rounding_clamps_large_shift():
    assert quantize_multiplier(2.0**31) == (2**30, 32)
    assert quantize_multiplier(2.0**31, single_rounding=True) == (2**31 - 1, 30)


def test_quantize_multiplier_ties_away_from_zero():
    # 0.5 + 2^-32 + 2^-33: q*2^31 = 2^30 + 0.5 + 0.25 -> no tie; 0.5 + 2^-32: + 0.5 tie -> up
    assert quantize_multiplier(0.5 + 2.0**-32) == (2**30 + 1, 0)


@given(st.floats(2.0**-40, 2.0**40, allow_nan=False))
def test_quantize_multiplier_matches_frexp_definition(m):
    q, e = math.frexp(m)
    f = Fraction(q) * 2**31
    qf = math.floor(f + Fraction(1, 2))  # q > 0: half away == half up
    if qf == 2**31:
        qf, e = qf // 2, e + 1
    if e < -31:
        qf, e = 0, 0
    assert quantize_multiplier(m) == (qf, e)
    assert quantize_multiplier(np.array([m]))[0][0] == qf


def test_quantize_multiplier_rejects_nonfinite():
    with pytest.raises(RefquantError, match="finite"):
        quantize_multiplier(float("inf"))


# --- integer matmul ---------------------------------------------------------------------------

def test_integer_matmul_hand_example_with_zero_points():
    a = np.array([[1, 2], [3, 4]], np.int8)
    b = np.array([[5, 6], [7, 8]], np.uint8)
    # (a - 1) @ (b - 128) = [[0,1],[2,3]] @ [[-123,-122],[-121,-120]]
    np.testing.assert_array_equal(integer_matmul(a, b, 1, 128), [[-121, -120], [-609, -604]])


def test_integer_matmul_per_row_and_per_column_zero_points():
    a = np.array([[1, 1], [2, 2]])
    b = np.array([[1, 2], [3, 4]])
    out = integer_matmul(a, b, np.array([1, 0]), np.array([1, 2]))
    # row 0: a - 1 = 0 -> 0; row 1: [2,2] @ [[0,0],[2,2]] = [4, 4]
    np.testing.assert_array_equal(out, [[0, 0], [4, 4]])


@given(st.integers(1, 5), st.integers(1, 6), st.integers(1, 4), st.integers(0, 2**31 - 1),
       st.integers(-128, 127), st.integers(-128, 127))
def test_integer_matmul_is_exact_against_python_ints(m, k, n, seed, za, zb):
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, (m, k)).astype(np.int8)
    b = rng.integers(-128, 128, (k, n)).astype(np.int8)
    want = [[sum((int(a[i, t]) - za) * (int(b[t, j]) - zb) for t in range(k)) for j in range(n)]
            for i in range(m)]
    np.testing.assert_array_equal(integer_matmul(a, b, za, zb), want)


def test_integer_matmul_beyond_2_pow_53_stays_exact():
    # products of 2^30-sized int32 values exceed float64's exact range: the int64 path
    a = np.array([[2**30 + 1, -(2**30) - 3]], np.int32)
    b = np.array([[2**30 - 5], [2**29 + 7]], np.int32)
    want = (2**30 + 1) * (2**30 - 5) + (-(2**30) - 3) * (2**29 + 7)
    assert int(integer_matmul(a, b)[0, 0]) == want


def test_integer_matmul_int32_wrap_and_checked():
    k = 131073
    a = np.full((1, k), -128, np.int8)
    b = np.full((k, 1), -128, np.int8)
    exact = 16384 * k  # 2147500032 > INT32_MAX
    assert integer_matmul(a, b)[0, 0] == exact
    assert integer_matmul(a, b, accumulate="int32_wrap")[0, 0] == exact - 2**32
    with pytest.raises(RefquantError, match="overflow int32"):
        integer_matmul(a, b, accumulate="int32_checked")


def test_integer_matmul_rejects_float_and_mismatched_shapes():
    with pytest.raises(RefquantError, match="integer array"):
        integer_matmul(np.ones((2, 2)), np.ones((2, 2), np.int8))
    with pytest.raises(RefquantError, match="inner dimensions"):
        integer_matmul(np.ones((2, 3), np.int8), np.ones((2, 2), np.int8))


def test_int32_depth_bound_for_int8_is_131071():
    assert max_int32_depth("int8", "int8") == 131071
    assert int32_accumulation_fits(131071)
    assert not int32_accumulation_fits(131072)
    # uint8 activations with zero point 0 against int8 weights: worst term 255 * -128
    assert accumulator_range(1, "uint8", "int8") == (-32640, 32385)
    assert max_int32_depth("uint8", "int8") == 2**31 // 32640


# --- requantize and bias -----------------------------------------------------------------------

def test_requantize_fixed_point_hand_example():
    # M = 0.25: acc 10 -> 2.5 -> single rounding half up 3, double: SRDHM(10, 2^30) = 5 then
    # RDBPOT(5, 1) = 3 (away). acc -10 -> -2.5: single -> -2, double -> -3.
    acc = np.array([10, -10, 1000])
    np.testing.assert_array_equal(requantize(acc, 0.25, 5), [8, 2, 127])
    np.testing.assert_array_equal(requantize(acc, 0.25, 5, single_rounding=True), [8, 3, 127])


def test_requantize_float_rounds_half_even_and_clamps_activation():
    acc = np.array([10, 14, -10, 400])
    np.testing.assert_array_equal(
        requantize(acc, 0.25, 0, method="float"), [2, 4, -2, 100])
    np.testing.assert_array_equal(
        requantize(acc, 0.25, 0, method="float", activation_min=0, activation_max=6), [2, 4, 0, 6])


def test_requantize_per_channel_multiplier_along_axis():
    acc = np.array([[8, 8], [8, 8]])
    np.testing.assert_array_equal(requantize(acc, [0.5, 0.25], 0, axis=1, dtype="uint8"),
                                  [[4, 2], [4, 2]])


def test_quantize_bias_ties_even_vs_away_and_narrow_range():
    b = np.array([0.5, 1.5, -0.5, 1e12])
    np.testing.assert_array_equal(quantize_bias(b, 0.5, 2.0), [0, 2, 0, INT32_MAX])
    np.testing.assert_array_equal(quantize_bias(b, 0.5, 2.0, rounding="half_away"),
                                  [1, 2, -1, INT32_MAX])
    assert quantize_bias([-1e12], 1.0, 1.0, narrow_range=True)[0] == -INT32_MAX
    assert quantize_bias([-1e12], 1.0, 1.0)[0] == INT32_MIN


def test_quantize_bias_per_channel_scales():
    np.testing.assert_array_equal(quantize_bias([1.0, 1.0], 0.5, [0.5, 0.25]), [4, 8])


@pytest.mark.parametrize("call", [
    lambda: I.multiply_by_quantized_multiplier(np.int32([1, 2, 3]), np.int32([1 << 30] * 2), 0),
    lambda: I.saturating_rounding_doubling_high_mul(np.int32([1, 2, 3]), np.int32([1, 2])),
    lambda: I.rounding_divide_by_pot(np.int32([1, 2, 3]), np.int32([1, 2])),
    lambda: I.multiply_by_quantized_multiplier_int64(np.int64([1, 2, 3]), np.int32([1, 2]), 0),
    lambda: I.integer_matmul(np.int8(np.ones((2, 1, 2))), np.int8(np.ones((3, 2, 1)))),
    lambda: I.requantize(np.int32([1]), "a"),
    lambda: I.requantize(np.int32([1]), 0.1, "a"),
    lambda: I.quantize_bias(np.float32([1]), "a", 0.1),
    lambda: I.accumulator_range("a"),
    lambda: I.accumulator_range(4, bias_range=5),
])
def test_shapes_that_do_not_broadcast_and_non_numbers_raise_refquant_error(call):
    # once NumPy's ValueError ("operands could not be broadcast") or TypeError
    with pytest.raises(RefquantError):
        call()
