"""Codebooks: the published tables, assignment and tie rules, blockwise absmax, k-means."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refquant import RefquantError
from refquant.formats import get_format, list_formats
from refquant.formats.codebook import (
    BNB_FP4_VALUES,
    NF4_VALUES,
    codebook,
    create_dynamic_map,
    dequantize_blockwise_absmax,
    kmeans_codebook,
    midpoint_thresholds,
    nearest_index,
    quantize_blockwise_absmax,
    threshold_index,
)


def test_codebooks_are_registered():
    assert {"nf4", "bnb_fp4", "bnb_dynamic8"} <= set(list_formats("codebook"))
    assert get_format("nf4").bits == 4 and get_format("bnb_dynamic8").bits == 8


def test_nf4_table_is_sorted_symmetric_ends_and_zero_at_7():
    assert NF4_VALUES[0] == -1.0 and NF4_VALUES[15] == 1.0 and NF4_VALUES[7] == 0.0
    assert np.all(np.diff(NF4_VALUES) > 0)
    # QLoRA: 0.7229568362236023 is the 15th of 16 positive-side quantile points (bitsandbytes functional.py)
    assert NF4_VALUES[14] == np.float32(0.7229568362236023)


def test_bnb_fp4_table_is_e2m1_bias3_over_12_in_bit_order():
    # 0b000 0, 0b001 0.0625, 0b010 8, 0b011 12, 0b100 4, 0b101 6, 0b110 2, 0b111 3; then /12
    mags = [0, 0.0625, 8, 12, 4, 6, 2, 3]
    assert BNB_FP4_VALUES[:8].tolist() == [np.float32(np.float32(m) / np.float32(12)) for m in mags]
    assert np.array_equal(BNB_FP4_VALUES[8:], -BNB_FP4_VALUES[:8])


def test_dynamic_map_has_256_sorted_values_one_zero_from_construction_and_ends():
    m = create_dynamic_map()
    assert m.shape == (256,) and m.dtype == np.float32 and np.all(np.diff(m) >= 0)
    assert m[-1] == 1.0 and m[0] == np.float32(-0.992968738079071)
    # the smallest positive value: 1e-6 * (0.1 + 1) / 2 = 5.5e-7, computed in float32
    assert m[m > 0].min() == np.float32(np.float32(0.55) * np.float32(1e-6))


def test_nearest_index_breaks_ties_to_the_lower_index():
    cb = np.array([0.0, 1.0, 2.0, 1.0])
    assert nearest_index([0.5, 1.5, 1.0, 3.0, -1.0], cb).tolist() == [0, 1, 1, 2, 0]


def test_threshold_index_puts_an_exact_midpoint_in_the_lower_value():
    t, order = midpoint_thresholds(NF4_VALUES)
    assert np.array_equal(order, np.arange(16))
    got = threshold_index(t, t)
    assert got.tolist() == list(range(15))  # value on t_j -> code j (the lower neighbour)
    assert threshold_index(np.nextafter(t, np.float32(2)), t).tolist() == list(range(1, 16))


def test_fp4_zeros_sort_index_0_before_8_so_small_positives_get_code_8():
    t, order = midpoint_thresholds(BNB_FP4_VALUES)
    assert threshold_index([0.0, 1e-4, -1e-4, 1.0, -1.0], t, order).tolist() == [0, 8, 0, 3, 11]


def test_blockwise_absmax_with_a_partial_last_block():
    x = np.array([1.0, -0.5, 0.25, 2.0, 0.0, 0.0, -3.0], np.float32)
    codes, absmax = quantize_blockwise_absmax(x, NF4_VALUES, block_size=4)
    assert absmax.tolist() == [2.0, 3.0]
    # 1/2 -> 0.5 is nearer 0.4407 (12) than 0.5626, -0.25 -> -0.2844 (4), 0.125 -> 0.1609 (9); -1 -> 0
    assert codes.tolist() == [12, 4, 9, 15, 7, 7, 0]
    back = dequantize_blockwise_absmax(codes, absmax, NF4_VALUES, 4)
    assert back[3] == 2.0 and back[6] == -3.0


def test_all_zero_block_codes_zero_and_dequantizes_to_zero():
    codes, absmax = quantize_blockwise_absmax(np.zeros(5), NF4_VALUES, block_size=4)
    assert codes.tolist() == [7] * 5 and absmax.tolist() == [0, 0]
    assert (dequantize_blockwise_absmax(codes, absmax, NF4_VALUES, 4) == 0).all()


@given(st.lists(st.floats(-100, 100, width=32), min_size=1, max_size=130), st.sampled_from([32, 64]))
def test_nearest_assignment_has_the_smallest_error_of_any_code(xs, bs):
    x = np.array(xs, np.float32)
    codes, absmax = quantize_blockwise_absmax(x, NF4_VALUES, bs, assign="nearest", scale_op="divide")
    per = np.repeat(np.maximum(absmax, 1e-38), bs)[: x.size].astype(np.float32)
    s = np.clip(x / per, -1, 1).astype(np.float64)
    err = np.abs(s - NF4_VALUES[codes])
    best = np.abs(s[:, None] - NF4_VALUES[None, :].astype(np.float64)).min(axis=1)
    assert np.array_equal(err, best)


def test_kmeans_is_deterministic_and_recovers_separated_clusters():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 0.01, 200) for c in (-3.0, 0.0, 1.0, 5.0)])
    a = kmeans_codebook(x, 4)
    assert np.array_equal(a, kmeans_codebook(x, 4))
    assert np.allclose(a, [-3, 0, 1, 5], atol=0.01)


def test_bad_inputs_raise():
    with pytest.raises(RefquantError, match="NaN"):
        nearest_index([np.nan], NF4_VALUES)
    with pytest.raises(RefquantError, match="block_size"):
        quantize_blockwise_absmax([1.0], NF4_VALUES, 0)
    with pytest.raises(RefquantError, match="absmax"):
        dequantize_blockwise_absmax(np.zeros(5, np.uint8), [1.0], NF4_VALUES, 4)
    with pytest.raises(RefquantError, match="k must"):
        kmeans_codebook([1.0, 2.0], 1)
    with pytest.raises(RefquantError, match="not a codebook"):
        nearest_index([1.0], "int8")


def test_bad_codebook_arguments_raise_refquant_errors():
    # each of these raised ValueError / IndexError / TypeError, or blamed NaN the caller never passed
    with pytest.raises(RefquantError, match="values"):
        codebook(["a", "b"])
    with pytest.raises(RefquantError, match="thresholds"):
        threshold_index([0.1], "a")
    with pytest.raises(RefquantError, match="order"):
        threshold_index([0.1, 2.0], [0.0, 1.0], order=[0])  # 2 thresholds need 3 order entries
    with pytest.raises(RefquantError, match="zero_absmax"):
        quantize_blockwise_absmax(np.zeros(4), "nf4", zero_absmax=0)
    with pytest.raises(RefquantError, match="zero_absmax"):
        quantize_blockwise_absmax(np.zeros(4), "nf4", zero_absmax="a")
    with pytest.raises(RefquantError, match="float32"):
        quantize_blockwise_absmax(np.array([1e39, 1.0]), "nf4")  # finite, but not a float32
    with pytest.raises(RefquantError, match="absmax"):
        dequantize_blockwise_absmax(np.zeros(3, np.uint8), ["a"], "nf4")
    with pytest.raises(RefquantError, match="sample"):
        kmeans_codebook(np.arange(10.0), 2, sample=0)
    with pytest.raises(RefquantError, match="iters"):
        kmeans_codebook(np.arange(10.0), 2, iters="a")


def test_nearest_index_is_exact_when_the_float64_distances_round_to_a_tie():
    # 1e-20 is nearer +1 than -1, but 1 + 1e-20 and 1 - 1e-20 are both 1.0 in float64:
    # the rounded distances tied and the lower index (-1) won
    x = np.array([1e-20, -1e-20, 2.0**-149, 0.0], np.float32)
    assert nearest_index(x, [-1.0, 1.0]).tolist() == [1, 0, 1, 0]  # exact tie at 0: lower index
    assert nearest_index(np.array([0.5 + 2.0**-53]), [0.0, 1.0]).tolist() == [1]


def test_dynamic_map_bad_arguments_raise_refquant_errors():
    # max_exponent_bits=2.0 / 'a' raised TypeError; max_exponent_bits=0 with total_bits=8 returned a
    # map where bitsandbytes' create_dynamic_map fails (UnboundLocalError: i is never set)
    for kw in ({"max_exponent_bits": 2.0}, {"max_exponent_bits": "a"}, {"total_bits": "a"},
               {"max_exponent_bits": 0}, {"max_exponent_bits": 2.5}):
        with pytest.raises(RefquantError, match="max_exponent_bits|total_bits"):
            create_dynamic_map(**kw)
    # bitsandbytes computes these: 8.0 works as 8, and max_exponent_bits=0 with 1 bit gives [0, 1, 0...]
    assert np.array_equal(create_dynamic_map(total_bits=8.0), create_dynamic_map())
    m = create_dynamic_map(max_exponent_bits=0, total_bits=1)
    assert m.size == 256 and m[-1] == 1 and (m[:-1] == 0).all()


def test_ragged_input_raises_refquant_error():
    with pytest.raises(RefquantError, match="x must be"):
        nearest_index([[0.1], [0.2, 0.3]], "nf4")
    with pytest.raises(RefquantError, match="x must be"):
        quantize_blockwise_absmax([[0.1], [0.2, 0.3]], "nf4")


def test_a_subnormal_block_divides_by_zero_absmax_too():
    # as bitsandbytes' absmax.clamp(min=1e-38): 1e-40 / 1e-38 = 0.01 -> NF4 code 7 (0.0)
    codes, absmax = quantize_blockwise_absmax(np.float32([1e-40, -5e-41]), "nf4", 2)
    assert codes.tolist() == [7, 7] and absmax.tolist() == [np.float32(1e-40)]


def test_more_bad_arguments_raise_refquant_errors():
    # seed='a' raised TypeError, seed=-1 ValueError; ragged codes ValueError; zero_absmax=1e-50
    # passed as 'positive' but is 0 in float32, so an all-zero block divided 0 by 0
    for seed in ("a", -1, 1.5):
        with pytest.raises(RefquantError, match="seed"):
            kmeans_codebook(np.arange(10.0), 2, seed=seed, sample=3)
    with pytest.raises(RefquantError, match="codes must be"):
        dequantize_blockwise_absmax([[1], [1, 2]], [1.0], "nf4")
    with pytest.raises(RefquantError, match="zero_absmax"):
        quantize_blockwise_absmax(np.zeros(3), "nf4", 64, zero_absmax=1e-50)
