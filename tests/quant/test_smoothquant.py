import numpy as np
import pytest

from refquant import RefquantError
from refquant.models import digits_mlp_forward, load_digits_mlp
from refquant.quant.smoothquant import (
    ActivationRangeAccumulator,
    fold_smoothing,
    smoothing_scales,
    smoothquant,
)


def test_scales_hand_worked_half_alpha():
    # max|X| = [16, 1], max|W_j| = [4, 4]: s = sqrt(16 / 4) = 2, sqrt(1 / 4) = 0.5
    w = np.array([[4.0, -1.0], [1.0, 4.0]])
    np.testing.assert_allclose(smoothing_scales([16.0, 1.0], w, 0.5), [2.0, 0.5], rtol=1e-15)


def test_paper_clamps_zero_weight_column_and_scale():
    w = np.array([[0.0, 1.0]])
    # column 0: denominator clamp(0, 1e-5); alpha 0 -> 1 / 1e-5; column 1 act 0 -> clamp 1e-5
    s = smoothing_scales([3.0, 0.0], w, 0.0)
    np.testing.assert_allclose(s, [1e5, 1.0], rtol=1e-12)
    s = smoothing_scales([3.0, 0.0], w, 1.0)
    np.testing.assert_allclose(s, [3.0, 1e-5], rtol=1e-12)


def test_llmcompressor_statistic_doubles_weight_max_and_falls_back_to_range():
    w = np.array([[0.0, 2.0]])
    # column 0: weight stat 0 -> s = act range 3; column 1: 4**0.5 / 4**0.5 = 1
    np.testing.assert_allclose(smoothing_scales([3.0, 4.0], w, 0.5, statistic="llmcompressor"),
                               [3.0, 1.0], rtol=1e-15)


def test_range_accumulator_streams():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4))
    acc = ActivationRangeAccumulator(4)
    for b in (x[:7], x[7:7], x[7:]):
        acc.update(b)
    np.testing.assert_array_equal(acc.range, x.max(0) - x.min(0))
    np.testing.assert_array_equal(acc.absmax, np.abs(x).max(0))


def test_folded_model_computes_the_same_function():
    rng = np.random.default_rng(1)
    x0 = rng.normal(size=(20, 6))
    w1, b1 = rng.normal(size=(5, 6)), rng.normal(size=5)
    w2 = rng.normal(size=(3, 5))
    h = np.maximum(x0 @ w1.T + b1, 0)
    s = smoothing_scales(np.abs(h).max(0), w2, 0.5)
    w1f, b1f = fold_smoothing(s, w1, b1)
    hf = np.maximum(x0 @ w1f.T + b1f, 0)  # ReLU commutes with s > 0
    np.testing.assert_allclose(hf, h / s, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(hf @ (w2 * s).T, h @ w2.T, rtol=1e-12, atol=1e-12)
    g, none = fold_smoothing(s, np.ones(5))
    np.testing.assert_allclose(g, 1 / s)
    assert none is None


def test_alpha_search_loss_is_grid_minimum_and_scales_match_formula():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(8, 16))
    x = rng.normal(size=(64, 16))
    x[:, 3] *= 50  # an outlier channel
    r = smoothquant(w, [x[:10], x[10:]])
    assert r.loss == r.losses.min() and r.alpha == r.alphas[np.argmin(r.losses)]
    np.testing.assert_allclose(r.scales, smoothing_scales(np.abs(x).max(0), w, r.alpha))
    assert r.alpha > 0  # smoothing the outlier beats no migration
    assert r.loss < r.losses[0]


def _w8a8_mse_without_smoothing(w, x):
    ws = np.abs(w).max(axis=1, keepdims=True) / 127
    wq = np.clip(np.round(w / ws), -127, 127) * ws
    xs = np.abs(x).max() / 127
    xq = np.clip(np.round(x / xs), -127, 127) * xs
    return np.mean((x @ w.T - xq @ wq.T) ** 2)


@pytest.mark.parametrize("block", range(4))
def test_smoothing_beats_plain_w8a8_on_digits_mlp(block):
    p = load_digits_mlp()
    _, hidden = digits_mlp_forward(p, p["x_calib"], return_hidden=True)
    w, x = p[f"blocks.{block}.weight"].astype(np.float64), hidden[block].astype(np.float64)
    r = smoothquant(w, x)
    assert r.loss < _w8a8_mse_without_smoothing(w, x)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: smoothing_scales([1.0], np.ones((2, 2))), "act_stat"),
        (lambda: smoothing_scales([1.0, -1.0], np.ones((2, 2))), "act_stat"),
        (lambda: smoothing_scales([1.0, 1.0], np.ones((2, 2)), 1.5), "alpha"),
        (lambda: smoothing_scales([1.0, 1.0], np.ones((2, 2)), statistic="x"), "statistic"),
        (lambda: smoothing_scales([1.0, 1.0], [np.ones((2, 2)), np.ones((2, 3))]), "weight"),
        (lambda: fold_smoothing([1.0, 0.0], np.ones((2, 2))), "scales"),
        (lambda: fold_smoothing([1.0, 1.0], np.ones((3, 2))), "prev_weight"),
        (lambda: fold_smoothing([1.0, 1.0], np.ones((2, 2)), np.ones(3)), "prev_bias"),
        (lambda: smoothquant(np.ones((2, 2)), np.ones((3, 4))), "x"),
        (lambda: smoothquant(np.ones((2, 2)), np.ones((3, 2)), alphas=[2.0]), "alphas"),
        (lambda: ActivationRangeAccumulator(2).range, "no rows"),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(RefquantError, match=match):
        call()
