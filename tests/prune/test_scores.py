"""Importance scores: hand-worked values from each paper's formula, and invariants."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refquant import RefquantError
from refquant.prune import scores as S


def test_magnitude_is_the_absolute_value_in_float64():
    out = S.magnitude(np.array([-2, 3], dtype=np.int8))
    assert out.dtype == np.float64 and out.tolist() == [2.0, 3.0]


W = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, -1.0]])


@pytest.mark.parametrize(
    "p, axis, expected",
    [
        (2, 0, [5.0, 0.0, math.sqrt(2)]),
        (2, 1, [math.sqrt(10), math.sqrt(17)]),
        (1, 0, [7.0, 0.0, 2.0]),
        (np.inf, 0, [4.0, 0.0, 1.0]),
        (-np.inf, 1, [0.0, 0.0]),
        (0, 0, [2.0, 0.0, 2.0]),
        (3, 0, [(27 + 64) ** (1 / 3), 0.0, 2 ** (1 / 3)]),
    ],
)
def test_ln_norm_per_unit_keeps_the_unit_axis(p, axis, expected):
    np.testing.assert_allclose(S.ln_norm(W, p, axis=axis), expected, rtol=1e-15)


def test_lp_power_sum_is_torch_pruning_l2_without_the_root():
    assert S.lp_power_sum(W, 2, axis=0).tolist() == [25.0, 0.0, 2.0]
    assert S.lp_power_sum(W, 1, axis=1).tolist() == [4.0, 5.0]


def test_ln_norm_with_axis_none_scores_each_weight():
    assert S.ln_norm([-2.0, 1.0], 2, axis=None).tolist() == [2.0, 1.0]


def test_random_scores_are_seeded_and_in_unit_interval():
    a, b = S.random_scores((3, 4), seed=7), S.random_scores((3, 4), seed=7)
    assert np.array_equal(a, b) and a.shape == (3, 4) and (a >= 0).all() and (a < 1).all()
    assert not np.array_equal(a, S.random_scores((3, 4), seed=8))


# w * g = [[0.5, -2], [3, -2]]
TW = np.array([[1.0, 2.0], [3.0, -1.0]])
TG = np.array([[0.5, -1.0], [1.0, 2.0]])


@pytest.mark.parametrize(
    "reduction, axis, expected",
    [
        ("squared_sum", 0, [2.25, 1.0]),  # (0.5 - 2)^2, (3 - 2)^2
        ("sum_abs", 0, [2.5, 5.0]),
        ("abs_sum", 0, [1.5, 1.0]),
        ("squared_sum", 1, [12.25, 16.0]),  # (0.5 + 3)^2, (-2 - 2)^2
        ("sum_abs", None, [[0.5, 2.0], [3.0, 2.0]]),
        ("squared_sum", None, [[0.25, 4.0], [9.0, 4.0]]),
    ],
)
def test_taylor_variants(reduction, axis, expected):
    assert S.taylor(TW, TG, axis=axis, reduction=reduction).tolist() == expected


def test_obd_fisher_and_param_mix_by_hand():
    assert S.obd([2.0, -1.0], [3.0, 4.0]).tolist() == [6.0, 2.0]  # 0.5*3*4, 0.5*4*1
    # mean g^2 = [(1+9)/2, (0+4)/2] = [5, 2]
    assert S.fisher([2.0, 1.0], [[1.0, 0.0], [3.0, 2.0]]).tolist() == [20.0, 2.0]
    assert S.llm_pruner_param_mix([2.0], [3.0], [4.0]).tolist() == [2.0]  # |6 - 0.5*4*4|


def test_snip_normalises_over_all_weights_of_all_tensors():
    np.testing.assert_allclose(S.snip([1.0, -2.0], [3.0, 1.0]), [0.6, 0.4], rtol=1e-15)
    out = S.snip({"a": [1.0], "b": [2.0]}, {"a": [1.0], "b": [1.0]})
    np.testing.assert_allclose([out["a"][0], out["b"][0]], [1 / 3, 2 / 3], rtol=1e-15)
    assert S.snip([0.0], [5.0]).tolist() == [0.0]


def test_grasp_is_minus_theta_times_hg():
    assert S.grasp([1.0, -2.0], [3.0, 1.0]).tolist() == [-3.0, 2.0]


def test_movement_scores_accumulate_minus_g_times_w():
    m = S.MovementScore()
    m.update([1.0, 2.0], [0.5, -1.0]).update([2.0, 1.0], [1.0, 1.0])
    assert m.scores.tolist() == [-2.5, 1.0] and m.steps == 2
    with pytest.raises(RefquantError, match="call update"):
        _ = S.MovementScore().scores


@pytest.mark.parametrize(
    "w, expected",
    [
        ([1.0, 2.0, 3.0], [1 / 14, 4 / 13, 1.0]),
        ([-3.0, 1.0, 2.0], [1.0, 1 / 14, 4 / 13]),
        ([1.0, 1.0], [0.5, 1.0]),  # tie: the lower index sorts first, scores lower
        ([0.0, 2.0], [0.0, 1.0]),
        ([0.0, 0.0], [0.0, 0.0]),  # 0/0 defined as 0
        ([1e-200, 2e-200], [0.2, 1.0]),  # squares would underflow to 0
        ([1e200, 3e200], [0.1, 1.0]),  # squares would overflow to inf
    ],
)
def test_lamp_by_hand_including_ties_and_the_all_zero_tail(w, expected):
    np.testing.assert_allclose(S.lamp(w), expected, rtol=1e-15)


def test_lamp_without_squaring_uses_the_scores_as_they_are():
    np.testing.assert_allclose(S.lamp([1.0, 2.0, 3.0], square=False), [1 / 6, 2 / 5, 1.0], rtol=1e-15)
    with pytest.raises(RefquantError, match="non-negative"):
        S.lamp([-1.0, 2.0], square=False)


@settings(max_examples=50)
@given(hnp.arrays(np.float64, st.integers(1, 30), elements=st.floats(-1e3, 1e3)))
def test_lamp_ranks_like_magnitude_and_its_largest_is_one(w):
    out = S.lamp(w)
    # weakly monotone in |w| (a score may underflow to a tie: w = [1, 2.6e-177, 0])
    a = np.abs(w)
    smaller = a[:, None] < a[None, :]
    assert not np.any(smaller & (out[:, None] > out[None, :]))
    if np.any(w != 0):
        assert out.max() == 1.0
    assert np.all((out >= 0) & (out <= 1))


def test_wanda_multiplies_by_the_input_column_norm():
    w = np.array([[1.0, -2.0], [3.0, 0.5]])
    x = np.array([[3.0, 0.0], [4.0, 1.0]])  # column norms 5, 1
    assert S.wanda(w, x).tolist() == [[5.0, 2.0], [15.0, 0.5]]
    with pytest.raises(RefquantError, match="tokens, in"):
        S.wanda(w, x[:, :1])


def test_network_slimming_is_abs_gamma():
    assert S.network_slimming([-0.5, 2.0]).tolist() == [0.5, 2.0]
    with pytest.raises(RefquantError, match="1-D"):
        S.network_slimming([[1.0]])


def test_outlier_ratio_counts_strictly_above_m_times_mean_in_percent():
    assert S.outlier_ratio([1.0, 1.0, 1.0, 1.0, 16.0], m=3) == 20.0  # mean 4, 16 > 12
    assert S.outlier_ratio([0.0, 0.0, 0.0, 3.0], m=4) == 0.0  # 3 > 3 is false
    assert S.outlier_ratio([np.array([1.0, 1.0]), np.array([[1.0, 1.0, 16.0]])], m=3) == 20.0


def test_owl_layer_sparsity_by_hand():
    # r = (D - 1)/4 * 0.2 = [0, .1, .2]; r - mean + 0.5 = [.4, .5, .6]; S = 1 - r
    np.testing.assert_allclose(S.owl_layer_sparsity([1.0, 3.0, 5.0], 0.5, lam=0.1), [0.6, 0.5, 0.4],
                               rtol=1e-14)
    assert S.owl_layer_sparsity([2.0, 2.0], 0.7).tolist() == [0.7, 0.7]


@settings(max_examples=40)
@given(hnp.arrays(np.float64, st.integers(2, 12), elements=st.floats(0, 100)),
       st.floats(0.1, 0.9), st.floats(0, 0.1))
def test_owl_keeps_the_mean_and_spans_two_lambda(d, s, lam):
    out = S.owl_layer_sparsity(d, s, lam)
    assert abs(out.mean() - s) < 1e-12
    span = out.max() - out.min()
    assert abs(span - (2 * lam if np.ptp(d) > 0 else 0.0)) < 1e-12


def test_owl_with_a_subnormal_span_keeps_the_mean_instead_of_nan():
    # hypothesis find: 1 / 2.2e-309 overflows to inf and (0 * inf) gave NaN
    out = S.owl_layer_sparsity([2.22507386e-309, 0.0], 0.5, 0.0)
    assert out.tolist() == [0.5, 0.5]
    out = S.owl_layer_sparsity([2.22507386e-309, 0.0], 0.5, 0.05)
    np.testing.assert_allclose(out, [0.45, 0.55], rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    "reduction, expected",
    [("sum", [4.0, 6.0]), ("mean", [2.0, 3.0]), ("max", [3.0, 4.0]), ("prod", [3.0, 8.0]),
     ("first", [1.0, 2.0])],
)
def test_group_reductions(reduction, expected):
    assert S.group_reduce([[1.0, 2.0], [3.0, 4.0]], reduction).tolist() == expected


@pytest.mark.parametrize(
    "normalizer, expected",
    [
        (None, [1.0, 2.0, 3.0]),
        ("sum", [1 / 6, 2 / 6, 3 / 6]),
        ("mean", [0.5, 1.0, 1.5]),
        ("max", [1 / 3, 2 / 3, 1.0]),
        ("gaussian", [-1 / (1 + 1e-8), 0.0, 1 / (1 + 1e-8)]),  # unbiased std of 1,2,3 is 1
        ("min_max", [0.0, 1 / (2 + 1e-8), 2 / (2 + 1e-8)]),
        ("lamp", [1 / 6, 2 / 5, 1.0]),
    ],
)
def test_normalizers_as_torch_pruning_defines_them(normalizer, expected):
    np.testing.assert_allclose(S.normalize_scores([1.0, 2.0, 3.0], normalizer), expected, rtol=1e-15)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: S.taylor([1.0, 2.0], [1.0]), "shape"),
        (lambda: S.taylor([1.0], [1.0], reduction="sum"), "reduction"),
        (lambda: S.obd([], []), "empty"),
        (lambda: S.fisher([1.0, 2.0], [1.0, 2.0]), "n_samples"),
        (lambda: S.ln_norm([[1.0]], 2, axis=3), "axis"),
        (lambda: S.ln_norm([[1.0]], -1, axis=0), "p must be"),
        (lambda: S.lp_power_sum([[1.0]], np.inf), "finite"),
        (lambda: S.group_reduce([[1.0], [1.0, 2.0]], "sum"), r"scores\[1\]"),
        (lambda: S.group_reduce([[1.0]], "median"), "reduction"),
        (lambda: S.normalize_scores([1.0], "l2"), "normalizer"),
        (lambda: S.snip({"a": [1.0]}, {"b": [1.0]}), "keys"),
        (lambda: S.owl_layer_sparsity([1.0, 2.0], 1.5), "sparsity"),
        (lambda: S.outlier_ratio([1.0, np.nan]), "NaN"),
        (lambda: S.magnitude(["x"]), "numeric"),
    ],
)
def test_bad_input_is_refused_naming_the_argument(call, match):
    with pytest.raises(RefquantError, match=match):
        call()


def test_scores_do_not_modify_inputs():
    w = np.array([[1.0, -2.0], [3.0, 4.0]])
    g = np.array([[0.1, 0.2], [0.3, 0.4]])
    before = (w.copy(), g.copy())
    S.taylor(w, g, axis=0)
    S.lamp(w)
    S.wanda(w, g)
    assert np.array_equal(w, before[0]) and np.array_equal(g, before[1])


@pytest.mark.parametrize("call", [
    lambda: S.owl_layer_sparsity([1.0, 2.0], "x"),
    lambda: S.owl_layer_sparsity([1.0, 2.0], [0.5]),
    lambda: S.owl_layer_sparsity([1.0, 2.0], 0.5, lam=None),
    lambda: S.group_reduce(np.array(1.0)),
    lambda: S.group_reduce(3),
])
def test_non_numeric_sparsity_lam_and_non_sequence_scores_are_refquant_errors(call):
    # float("x") / float([0.5]) / iterating a 0-d array raised ValueError / TypeError
    with pytest.raises(RefquantError):
        call()


@pytest.mark.parametrize(
    "call, match",
    [
        # OverflowError / ValueError / TypeError from float() or default_rng before
        (lambda: S.ln_norm(np.ones((2, 2)), 10**400), "p"),
        (lambda: S.lp_power_sum(np.ones((2, 2)), 10**400), "p"),
        (lambda: S.outlier_ratio(np.ones(4), "a"), "m"),
        (lambda: S.outlier_ratio(np.ones(4), None), "m"),
        (lambda: S.outlier_ratio(np.ones(4), 10**400), "m"),
        (lambda: S.random_scores((2, 2), seed="a"), "seed"),
        (lambda: S.random_scores((2, 2), seed=-1), "seed"),
        (lambda: S.random_scores(10**400), "shape"),
    ],
)
def test_unconvertible_numbers_and_seeds_are_refused(call, match):
    with pytest.raises(RefquantError, match=match):
        call()
