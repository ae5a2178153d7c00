import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refquant import RefquantError
from refquant.quant.binary import (
    binarize,
    binarize_stochastic,
    binarize_xnor,
    ternarize_absmean,
    ternarize_threshold,
    ternarize_twn,
)

W = np.array([[0.5, -0.2, 0.0, 0.1], [1.0, 1.0, -1.0, -0.0]])


@pytest.mark.parametrize("zero,code", [("+1", 1), ("0", 0), ("-1", -1)])
def test_zero_takes_the_named_code_and_negative_zero_too(zero, code):
    b = binarize(W, zero=zero)
    assert b[0, 2] == code and b[1, 3] == code
    np.testing.assert_array_equal(b[0, :2], [1, -1])


def test_xnor_alpha_is_mean_abs_per_output_channel():
    codes, alpha = binarize_xnor(W, axis=0)
    np.testing.assert_allclose(alpha.ravel(), [0.2, 0.75])
    _, alpha_t = binarize_xnor(W, axis=None)
    assert alpha_t == pytest.approx(3.8 / 8)


@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(1, 9)),
                  elements=st.floats(-10, 10)))
def test_xnor_alpha_minimises_the_l2_error_over_scales(w):
    codes, alpha = binarize_xnor(w, axis=0)
    err = ((w - alpha * codes) ** 2).sum(axis=1)
    for f in (0.9, 1.1):
        assert np.all(err <= ((w - f * alpha * codes) ** 2).sum(axis=1) + 1e-9)


def test_stochastic_binarization_follows_hard_sigmoid():
    w = np.full(100_000, 0.5)  # P(+1) = 0.75
    b = binarize_stochastic(w, seed=3)
    assert abs((b == 1).mean() - 0.75) < 0.01
    np.testing.assert_array_equal(b, binarize_stochastic(w, seed=3))
    np.testing.assert_array_equal(binarize_stochastic(np.array([-2.0, 2.0]), seed=0), [-1, 1])


def test_twn_hand_example():
    w = np.array([0.5, -0.2, 0.0, 0.1, 1.0, 1.0, -1.0, 0.0])
    codes, alpha, delta = ternarize_twn(w)
    # mean|w| = 3.8 / 8 = 0.475, delta = 0.3325: kept 0.5, 1, 1, -1 -> alpha = 3.5 / 4
    assert delta == pytest.approx(0.3325)
    np.testing.assert_array_equal(codes, [1, 0, 0, 0, 1, 1, -1, 0])
    assert alpha == pytest.approx(0.875)


def test_twn_all_zero_group_gets_alpha_zero_not_nan():
    codes, alpha, _ = ternarize_twn(np.zeros((2, 3)), axis=0)
    assert not codes.any() and np.all(alpha == 0)


def test_absmean_hand_example_and_eps_rules():
    w = np.array([0.3, -0.1, 0.05, -0.9])  # gamma = 0.3375
    codes, g = ternarize_absmean(w)
    np.testing.assert_array_equal(codes, [1, 0, 0, -1])
    assert g == pytest.approx(0.3375 + 1e-5)
    codes0, g0 = ternarize_absmean(np.zeros(4), eps_rule="clamp")
    assert g0 == 1e-5 and not codes0.any()


def test_explicit_threshold_per_channel():
    codes, alpha = ternarize_threshold(W, [0.15, 0.99], axis=0)
    np.testing.assert_array_equal(codes, [[1, -1, 0, 0], [1, 1, -1, 0]])
    np.testing.assert_allclose(alpha.ravel(), [0.35, 1.0])


def test_bad_input():
    with pytest.raises(RefquantError, match="zero must be"):
        binarize(W, zero="1")
    with pytest.raises(RefquantError, match="NaN"):
        binarize([np.nan])
    with pytest.raises(RefquantError, match="threshold"):
        ternarize_threshold(W, -1.0)
    with pytest.raises(RefquantError, match="eps_rule"):
        ternarize_absmean(W, eps_rule="max")


def test_empty_weights_per_channel_keep_the_keepdims_scale_shape():
    # (3, 0) per output channel: alpha must be (3, 1) as for (3, 2), and TWN must not crash
    codes, alpha = binarize_xnor(np.zeros((3, 0)), axis=0)
    assert codes.shape == (3, 0) and alpha.shape == (3, 1) and (alpha == 0).all()
    codes, alpha, delta = ternarize_twn(np.zeros((3, 0)), axis=0)
    assert codes.shape == (3, 0) and alpha.shape == (3, 1) and delta.shape == (3, 1)


def test_bad_thresholds_and_eps_raise_refquant_errors():
    with pytest.raises(RefquantError, match="threshold"):
        ternarize_threshold(np.ones((3, 4)), [0.1, 0.2], axis=0)  # 2 thresholds for 3 channels
    with pytest.raises(RefquantError, match="threshold"):
        ternarize_threshold(np.ones((3, 4)), "a")
    with pytest.raises(RefquantError, match="eps"):
        ternarize_absmean(np.ones(3), eps="a")


def test_more_bad_arguments_raise_refquant_errors():
    # delta_factor='a' and alpha='a' raised TypeError / ValueError, zero=[1] "unhashable type"
    with pytest.raises(RefquantError, match="delta_factor"):
        ternarize_twn(np.ones(3), delta_factor="a")
    with pytest.raises(RefquantError, match="alpha"):
        ternarize_threshold(np.ones(3), 0.5, alpha="a")
    with pytest.raises(RefquantError, match="zero"):
        binarize(np.ones(3), zero=[1])


def test_absmean_of_infinite_weights_is_refused():
    # gamma = Inf makes W / gamma NaN (Inf / Inf), whose int8 cast is undefined: codes came out 0
    with pytest.raises(RefquantError, match="Inf"):
        ternarize_absmean(np.array([np.inf, 1.0]))


def test_absmean_clamp_rule_multiplies_by_the_reciprocal_as_the_released_code():
    # BitNet b1.58's weight_quant: s = 1 / w.abs().mean().clamp_(min=1e-5); (w * s).round().
    # gamma = (0.4 + 0.6 + 0.2) / 3 = 0.39999999999999997, 1 / gamma = 2.5 exactly, and
    # 0.2 * 2.5 = 0.5 rounds half to even to 0; dividing gave 0.2 / gamma = 0.5000000000000001 -> 1
    w = np.array([0.4, -0.6, 0.2])
    codes, g = ternarize_absmean(w, eps_rule="clamp")
    np.testing.assert_array_equal(codes, [1, -1, 0])
    assert g == (0.4 + 0.6 + 0.2) / 3
    codes, _ = ternarize_absmean(w, eps_rule="add", eps=1e-300)  # the paper's W / (gamma + eps)
    np.testing.assert_array_equal(codes, [1, -1, 1])


def test_absmean_eps_given_as_a_string_number_is_a_number():
    # eps="1e-5" passed float(eps) and then raised TypeError in gamma + eps
    codes, g = ternarize_absmean(np.array([0.3, -0.1, 0.05, -0.9]), eps="1e-5")
    np.testing.assert_array_equal(codes, [1, 0, 0, -1])
    assert g == pytest.approx(0.3375 + 1e-5)


def test_ragged_weights_raise_refquant_error():
    # np.asarray of a ragged list raised NumPy's ValueError
    for fn in (binarize, ternarize_twn, ternarize_absmean):
        with pytest.raises(RefquantError, match="w must be"):
            fn([[1.0], [2.0, 3.0]])
