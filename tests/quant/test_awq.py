import numpy as np
import pytest

from refquant import RefquantError
from refquant.models import DIGITS_MLP_BLOCKS, digits_mlp_forward, load_digits_mlp
from refquant.quant.awq import (
    ActivationMeanAccumulator,
    awq,
    awq_clip_search,
    awq_grid,
    awq_pseudo_quantize,
)


def test_pseudo_quantize_hand_worked_int2_group():
    # group [0, 1, 2, 3.3]: scale = 3.3 / 3 = 1.1, zero = -round(0) = 0,
    # codes round([0, 0.909, 1.818, 3]) = [0, 1, 2, 3] -> [0, 1.1, 2.2, 3.3]
    w = np.array([[0.0, 1.0, 2.0, 3.3]])
    np.testing.assert_allclose(awq_pseudo_quantize(w, bits=2, group_size=4),
                               [[0.0, 1.1, 2.2, 3.3]], rtol=1e-15)


def test_pseudo_quantize_range_need_not_contain_zero():
    # [1, 4] with 2 bits: scale = 3 / 3 = 1, zero = clip(-round(1), 0, 3) = 0, so the
    # codes round(w / 1) + 0 = [1, 2, 3, 4] clip to [0, 3]: the top saturates at 3.
    w = np.array([[1.0, 2.0, 3.0, 4.0]])
    np.testing.assert_array_equal(awq_pseudo_quantize(w, bits=2, group_size=4), [[1, 2, 3, 3]])


def test_pseudo_quantize_partial_last_group_uses_its_own_columns():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 10))
    got = awq_pseudo_quantize(w, bits=4, group_size=4)
    np.testing.assert_array_equal(got[:, 8:], awq_pseudo_quantize(w[:, 8:], bits=4, group_size=-1))


def test_accumulator_streams_to_the_full_mean():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 7, 5))
    acc = ActivationMeanAccumulator(5)
    acc.update(x[0])
    acc.update(x[1, :3])
    acc.update(x[1, 3:])
    np.testing.assert_allclose(acc.mean, np.abs(x).reshape(-1, 5).mean(0), rtol=1e-14)


def test_grids():
    np.testing.assert_allclose(awq_grid(20), np.arange(20) * 0.05, atol=1e-15)
    g = awq_grid(20, grid="llmcompressor")
    assert g[0] == 0 and g[-1] == 1 and g.size == 20


def test_alpha_zero_scales_are_one_and_equal_rtn():
    rng = np.random.default_rng(2)
    w, x = rng.normal(size=(8, 16)), rng.normal(size=(32, 16)) * np.arange(1, 17)
    r = awq(w, x, group_size=8, n_grid=1)
    assert r.alpha == 0.0
    np.testing.assert_array_equal(r.scales, np.ones(16))
    np.testing.assert_array_equal(r.weight_quantized, awq_pseudo_quantize(w, group_size=8))


def test_scales_follow_the_normalised_formula():
    rng = np.random.default_rng(3)
    w, x = rng.normal(size=(4, 6)), rng.normal(size=(50, 6)) * [1, 2, 4, 8, 16, 32]
    r = awq(w, x, group_size=6)
    s = np.maximum(np.abs(x).mean(0) ** r.alpha, 1e-4)
    np.testing.assert_allclose(r.scales, s / np.sqrt(s.max() * s.min()), rtol=1e-12)
    np.testing.assert_allclose(r.scales.max() * r.scales.min(), 1.0, rtol=1e-12)


def test_folded_layer_computes_the_same_function():
    rng = np.random.default_rng(4)
    w, x = rng.normal(size=(12, 20)), rng.normal(size=(40, 20))
    r = awq(w, x, group_size=10)
    np.testing.assert_allclose((x / r.scales) @ r.weight_scaled.T, x @ w.T, rtol=1e-12,
                               atol=1e-12)
    np.testing.assert_allclose(r.weight_effective, r.weight_quantized / r.scales)


def test_chosen_loss_is_the_grid_minimum_and_recomputes():
    rng = np.random.default_rng(5)
    w = rng.normal(size=(16, 32))
    x = rng.normal(size=(64, 32)) * np.exp(rng.normal(size=32))
    r = awq(w, [x[:20], x[20:]], group_size=16, duo_scaling=True)
    assert r.loss == r.losses.min()
    assert r.alpha == r.alphas[np.argmin(r.losses)]
    recomputed = np.mean((x @ w.T - x @ r.weight_effective.T) ** 2)
    np.testing.assert_allclose(r.loss, recomputed, rtol=1e-10)


@pytest.mark.parametrize("layer", ["embed"] + [f"blocks.{i}" for i in range(DIGITS_MLP_BLOCKS)])
def test_awq_error_not_above_rtn_on_digits_mlp(layer):
    p = load_digits_mlp()
    _, hidden = digits_mlp_forward(p, p["x_calib"], return_hidden=True)
    x = p["x_calib"] if layer == "embed" else hidden[int(layer.split(".")[1])]
    w = p[f"{layer}.weight"].astype(np.float64)
    x = np.asarray(x, np.float64)
    r = awq(w, x, bits=4, group_size=128)
    rtn = np.mean((x @ w.T - x @ awq_pseudo_quantize(w).T) ** 2)
    np.testing.assert_allclose(r.losses[0], rtn, rtol=1e-12)
    assert r.loss <= rtn


def _group_err(w, x, m, bits=4):
    q = awq_pseudo_quantize(np.clip(w, -m, m)[None, :], bits=bits, group_size=-1)[0]
    return np.mean((x @ q - x @ w) ** 2)


def test_clip_search_picks_the_brute_force_threshold_per_row_and_group():
    rng = np.random.default_rng(6)
    w = rng.normal(size=(5, 12))
    w[:, 0] *= 8  # an outlier per row, so that clipping pays
    x = rng.normal(size=(40, 12))
    clip_max, clipped = awq_clip_search(w, x, bits=3, group_size=6)
    for r in range(5):
        for gi in range(2):
            cols = slice(6 * gi, 6 * gi + 6)
            m0 = np.abs(w[r, cols]).max()
            cands = [m0 * (1 - i / 20) for i in range(10)]
            errs = [_group_err(w[r, cols], x[:, cols], m, bits=3) for m in cands]
            assert clip_max[r, gi] == cands[int(np.argmin(errs))]
            np.testing.assert_array_equal(clipped[r, cols],
                                          np.clip(w[r, cols], -clip_max[r, gi], clip_max[r, gi]))
    assert np.any(clip_max < np.abs(w).reshape(5, 2, 6).max(-1))


def test_clip_search_subsamples_rows_across_batches_like_one_array():
    rng = np.random.default_rng(7)
    w, x = rng.normal(size=(4, 8)), rng.normal(size=(50, 8))
    one = awq_clip_search(w, x, group_size=4, n_sample_token=7)
    split = awq_clip_search(w, [x[:13], x[13:31], x[31:]], group_size=4, n_sample_token=7)
    np.testing.assert_array_equal(one[0], split[0])
    np.testing.assert_array_equal(one[0], awq_clip_search(w, x[::7], group_size=4)[0])


@pytest.mark.parametrize("block", range(DIGITS_MLP_BLOCKS))
def test_awq_with_clip_beats_awq_on_digits_mlp(block):
    p = load_digits_mlp()
    _, hidden = digits_mlp_forward(p, p["x_calib"], return_hidden=True)
    w, x = p[f"blocks.{block}.weight"].astype(np.float64), hidden[block].astype(np.float64)
    r = awq(w, x, clip=True)
    err = np.mean((x @ w.T - (x / r.scales) @ r.weight_quantized.T) ** 2)
    assert err < r.loss
    np.testing.assert_array_equal(r.weight_scaled, awq(w, x).weight_scaled)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"weight": np.ones(3)}, "weight"),
        ({"weight": np.full((2, 3), np.nan)}, "weight"),
        ({"x": np.ones((4, 5))}, "x"),
        ({"x": np.full((4, 3), np.inf)}, "x"),
        ({"x": []}, "x"),
        ({"bits": 9}, "bits"),
        ({"group_size": 0}, "group_size"),
        ({"n_grid": 0}, "n_grid"),
        ({"grid": "paper"}, "grid"),
    ],
)
def test_bad_input_raises(kwargs, match):
    args = {"weight": np.ones((2, 3)), "x": np.ones((4, 3))}
    args.update(kwargs)
    w, x = args.pop("weight"), args.pop("x")
    with pytest.raises(RefquantError, match=match):
        awq(w, x, **args)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"n_grid": 0}, "n_grid"), ({"max_shrink": 0.0}, "max_shrink"),
     ({"n_sample_token": 0}, "n_sample_token"), ({"group_size": -2}, "group_size")],
)
def test_clip_search_bad_input_raises(kwargs, match):
    with pytest.raises(RefquantError, match=match):
        awq_clip_search(np.ones((2, 4)), np.ones((3, 4)), **kwargs)


def test_accumulator_bad_input():
    with pytest.raises(RefquantError, match="in_features"):
        ActivationMeanAccumulator(0)
    with pytest.raises(RefquantError, match="no rows"):
        _ = ActivationMeanAccumulator(3).mean
