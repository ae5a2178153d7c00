"""Schedules: Zhu & Gupta, tfmot's PolynomialDecay / ConstantSparsity, lottery-ticket rates.

The ``TFMOT_*`` tables were recorded from tensorflow-model-optimization 0.8.1 on
TensorFlow 2.21 (CPU): ``PolynomialDecay(...)(tf.constant(step, tf.int64))``, its
validation messages, and ``pruning_impl``'s kept count
``max(tf.math.round(float32(n) * (1 - sparsity)), 1)``. They are peer outputs,
kept here because TensorFlow is not a test dependency.
"""

import math

import numpy as np
import pytest

from refquant import RefquantError
from refquant.prune.masks import prune_count, unstructured_mask
from refquant.prune.schedules import (
    ConstantSparsity,
    PolynomialDecay,
    gradual_sparsity,
    iterative_rate,
    iterative_sparsity,
)


def test_zhu_gupta_cubic_by_hand():
    kw = dict(initial_sparsity=0.0, final_sparsity=0.8, begin_step=0, n_steps=10, frequency=1)
    assert gradual_sparsity(5, **kw) == pytest.approx(0.8 - 0.8 * 0.5**3, abs=1e-15)  # 0.7
    assert gradual_sparsity(0, **kw) == 0.0
    assert gradual_sparsity(10, **kw) == 0.8
    assert gradual_sparsity(-4, **kw) == 0.0 and gradual_sparsity(99, **kw) == 0.8
    out = gradual_sparsity(np.array([0, 20, 40]), initial_sparsity=0.2, final_sparsity=0.6,
                           begin_step=0, n_steps=2, frequency=20)
    np.testing.assert_allclose(out, [0.2, 0.6 - 0.4 / 8, 0.6], rtol=1e-15)


def test_zhu_gupta_is_monotone_from_initial_to_final():
    t = np.arange(0, 1001)
    s = gradual_sparsity(t, initial_sparsity=0.1, final_sparsity=0.9, n_steps=10, frequency=100)
    assert np.all(np.diff(s) >= 0) and s[-1] == 0.9
    assert s[0] == 0.9 + (0.1 - 0.9)  # evaluated as written: 0.09999999999999998


def test_polynomial_decay_halfway_is_seven_eighths_of_the_way():
    # p = 0.5: 0.5 + (0 - 0.5) * 0.5^3 = 0.4375 exactly
    assert PolynomialDecay(0.0, 0.5, 0, 1000)(500) == (True, np.float32(0.4375))


# (initial, final, begin, end, power, frequency), step, should_prune, float32 sparsity
TFMOT_POLY = [
    ((0.0, 0.5, 0, 1000, 3, 100), 132, False, 0.17301395535469055),
    ((0.0, 0.5, 0, 1000, 3, 100), 186, False, 0.2303234040737152),
    ((0.0, 0.5, 0, 1000, 3, 100), 213, False, 0.25627827644348145),
    ((0.0, 0.5, 0, 1000, 3, 100), 321, False, 0.3434765636920929),
    ((0.1, 0.9, 10, 777, 3, 7), 228, False, 0.6066264510154724),
    ((0.3, 0.6, 7, 7, 3, 1), 6, False, 0.30000001192092896),
    ((0.3, 0.6, 7, 7, 3, 1), 7, True, float("nan")),  # end == begin: 0/0
    ((0.3, 0.6, 7, 7, 3, 1), 8, False, 0.6000000238418579),
]


@pytest.mark.parametrize("args, step, prune, value", TFMOT_POLY)
def test_polynomial_decay_matches_tfmot_in_float32(args, step, prune, value):
    got_prune, got = PolynomialDecay(*args)(step)
    assert got_prune == prune and got.dtype == np.float32
    assert np.array_equal(got, np.float32(value), equal_nan=True)


@pytest.mark.parametrize(
    "step, expected",
    [(-100, False), (0, True), (50, False), (100, True), (1000, True), (1100, False), (999, False)],
)
def test_should_prune_in_step_every_frequency_within_begin_and_end(step, expected):
    assert PolynomialDecay(0.0, 0.5, 0, 1000, frequency=100).should_prune_in_step(step) is expected


def test_constant_sparsity_without_end_prunes_forever_from_begin():
    s = ConstantSparsity(0.5, 10, frequency=7)
    assert s(10) == (True, np.float32(0.5))
    assert s(10 + 7 * 10**6)[0] is True
    assert s(3)[0] is False and s(11)[0] is False


TFMOT_ERRORS = [
    (dict(begin_step=-1, end_step=10), "begin_step should be >= 0"),
    (dict(begin_step=0, end_step=-1), "end_step cannot be -1."),
    (dict(begin_step=0, end_step=-2), "end_step can be -1 or >= 0"),
    (dict(begin_step=5, end_step=4), "begin_step should be <= end_step if end_step != -1"),
    (dict(begin_step=0, end_step=4, frequency=0), "frequency should be > 0"),
    (dict(begin_step=0, end_step=4, final_sparsity=1.0), "final_sparsity must be in range [0,1)"),
    (dict(begin_step=0, end_step=4, initial_sparsity=-0.1), "initial_sparsity must be in range [0,1)"),
]


@pytest.mark.parametrize("kw, message", TFMOT_ERRORS)
def test_polynomial_decay_validation_matches_tfmot_messages(kw, message):
    args = dict(initial_sparsity=0.0, final_sparsity=0.5) | kw
    with pytest.raises(RefquantError) as e:
        PolynomialDecay(**args)
    assert str(e.value) == message


def test_constant_sparsity_allows_end_minus_one_but_not_sparsity_one():
    ConstantSparsity(0.9, 0, -1)
    with pytest.raises(RefquantError, match=r"target_sparsity must be in range \[0,1\)"):
        ConstantSparsity(1.0, 0)


# n, sparsity, weights kept by tfmot
TFMOT_KEPT = [
    (1, 0.99, 1), (2, 0.25, 2), (2, 0.75, 1), (3, 0.5, 2), (5, 0.5, 2), (5, 0.75, 1),
    (7, 0.5, 4), (7, 1.0, 1), (10, 0.3, 7), (10, 0.75, 2), (101, 0.5, 50), (101, 0.7, 30),
]


@pytest.mark.parametrize("n, s, kept", TFMOT_KEPT)
def test_tfmot_count_rule_matches_tfmot(n, s, kept):
    assert n - prune_count(s, n, rule="tfmot") == kept


def test_lottery_ticket_rates():
    assert iterative_sparsity(0.5, 3) == 0.875
    assert iterative_rate(0.875, 3) == pytest.approx(0.5, abs=1e-15)
    assert iterative_rate(0.9, 1) == pytest.approx(0.9, abs=1e-15)
    np.testing.assert_allclose(iterative_sparsity(0.2, np.arange(4)), [0, 0.2, 0.36, 0.488])
    p = iterative_rate(0.99, 7)
    assert iterative_sparsity(p, 7) == pytest.approx(0.99, abs=1e-12)


def test_per_round_counts_rounded_by_torch_drift_from_the_closed_form():
    # 100 weights, 20 % of the remainder per round: 20, round(16.0) = 16, round(12.8) = 13
    s = np.arange(100.0)
    m = None
    for _ in range(3):
        m = unstructured_mask(s, 0.2, previous_mask=m)
    assert np.count_nonzero(~m) == 49
    assert math.isclose(iterative_sparsity(0.2, 3) * 100, 48.8)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: gradual_sparsity(1, final_sparsity=1.2, n_steps=3), "final_sparsity"),
        (lambda: gradual_sparsity(1, final_sparsity=0.5, n_steps=0), "n_steps"),
        (lambda: iterative_rate(0.5, 0), "rounds"),
        (lambda: iterative_sparsity(0.5, -1), "rounds"),
        (lambda: iterative_sparsity(1.5, 2), "rate"),
        (lambda: PolynomialDecay(0.0, 0.5, 0.5, 10), "begin_step"),
    ],
)
def test_bad_schedule_arguments_are_refused(call, match):
    with pytest.raises(RefquantError, match=match):
        call()


@pytest.mark.parametrize(
    "call, match",
    [
        # each raised ValueError / TypeError / OverflowError instead
        (lambda: ConstantSparsity("a", 0), "target_sparsity"),
        (lambda: ConstantSparsity(None, 0), "target_sparsity"),
        (lambda: ConstantSparsity([0.5], 0), "target_sparsity"),
        (lambda: PolynomialDecay(0.1, "x", 0, 10), "final_sparsity"),
        (lambda: PolynomialDecay(0.1, 0.5, 0, 10, power="a"), "power"),
        (lambda: PolynomialDecay(0.1, 0.5, 0, 10, power=None), "power"),
        (lambda: gradual_sparsity("a", final_sparsity=0.5, n_steps=3), "step"),
        (lambda: gradual_sparsity([1, [2]], final_sparsity=0.5, n_steps=3), "step"),
        (lambda: gradual_sparsity(np.nan, final_sparsity=0.5, n_steps=3), "step"),
        (lambda: gradual_sparsity(10**400, final_sparsity=0.5, n_steps=3), "step"),
        (lambda: gradual_sparsity(1, final_sparsity=0.5, n_steps=3, power="x"), "power"),
        (lambda: iterative_sparsity(0.5, [[1], [1, 2]]), "rounds"),
        (lambda: iterative_rate(0.5, 10**400), "rounds"),
        (lambda: PolynomialDecay(0.1, 0.5, 0, 10).sparsity(10**400), "step"),
    ],
)
def test_bad_schedule_arguments_are_refusals_not_numpy_or_python_errors(call, match):
    with pytest.raises(RefquantError, match=match):
        call()


@pytest.mark.parametrize("call", [
    lambda: gradual_sparsity(1, initial_sparsity=10**400, final_sparsity=0.5, n_steps=3),
    lambda: iterative_rate(10**400, 2),
    lambda: iterative_sparsity(10**400, 2),
])
def test_fraction_beyond_float_range_is_refused(call):
    # float(10**400) raised OverflowError
    with pytest.raises(RefquantError, match="must be in range"):
        call()
