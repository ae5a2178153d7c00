"""Layer (depth) pruning: ablation, Block Influence, angular distance."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refquant import RefquantError
from refquant.models import digits_mlp_accuracy, digits_mlp_forward, load_digits_mlp
from refquant.prune.layers import (
    ablation_importance,
    angular_distances,
    block_influence,
    choose_layers_to_drop,
    choose_span_to_drop,
)

SQ = np.sqrt(0.5)


def test_block_influence_hand_example():
    x0 = np.array([[1.0, 0.0], [0.0, 1.0]])
    x1 = np.array([[2.0, 0.0], [1.0, 1.0]])  # token cosines 1 and 1/sqrt(2)
    x2 = np.array([[0.0, 3.0], [-1.0, -1.0]])  # cosines 0 and -1
    np.testing.assert_allclose(block_influence([x0, x1, x2]), [1 - (1 + SQ) / 2, 1 - (0 - 1) / 2], rtol=1e-15)


def test_block_influence_of_a_zero_state_uses_shortgpt_half():
    x0 = np.array([[0.0, 0.0], [1.0, 0.0]])
    x1 = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert block_influence([x0, x1]).tolist() == [1 - (0.5 + 1.0) / 2]
    assert block_influence([x0, x1], zero_cos=1.0).tolist() == [0.0]


def test_block_influence_averages_over_batch_and_sequence():
    rng = np.random.default_rng(0)
    h = [rng.standard_normal((2, 3, 4)) for _ in range(3)]
    flat = [x.reshape(6, 4) for x in h]
    np.testing.assert_allclose(block_influence(h), block_influence(flat), rtol=1e-15)


def shortgpt_block_influence(x_in, x_out):
    """sramshetty/ShortGPT metrics.py block_influence, re-expressed with NumPy (per token)."""
    d = x_in.shape[-1]
    a, b = x_in.reshape(-1, d), x_out.reshape(-1, d)
    na = np.linalg.norm(a, axis=-1, keepdims=True)
    nb = np.linalg.norm(b, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        sim = np.diagonal((a @ b.T) / (na * nb))
    return 1 - np.nan_to_num(sim, nan=0.5)


@settings(max_examples=30)
@given(hnp.arrays(np.float64, (3, 2, 3, 4), elements=st.floats(-4, 4, width=32)))
def test_block_influence_is_the_token_mean_of_shortgpt_per_token_score(h):
    want = [shortgpt_block_influence(h[i], h[i + 1]).mean() for i in range(2)]
    np.testing.assert_allclose(block_influence(list(h)), want, rtol=1e-9, atol=1e-12)


def test_angular_distance_hand_example_and_span_choice():
    x0, x1, x2 = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]), np.array([[1.0, 1.0]])
    np.testing.assert_allclose(angular_distances([x0, x1, x2], 1), [0.5, 0.25], rtol=1e-15)
    np.testing.assert_allclose(angular_distances([x0, x1, x2], 2), [0.25], rtol=1e-15)
    start, dist = choose_span_to_drop([x0, x1, x2], 1)
    assert start == 1 and dist.tolist() == pytest.approx([0.5, 0.25])


def test_angular_distance_uses_the_last_token_of_sequences():
    rng = np.random.default_rng(1)
    h = [rng.standard_normal((2, 5, 3)) for _ in range(3)]
    for x in h:
        x[:, -1, :] = [1.0, 2.0, 3.0]  # last token never moves
    assert angular_distances(h, 1).tolist() == [0.0, 0.0]
    assert (angular_distances(h, 1, token=None) > 0).all()


def test_angular_distance_of_opposite_vectors_is_one_despite_rounding():
    x = np.array([[0.1, 0.2, 0.3]])
    assert angular_distances([x, -x], 1).tolist() == [1.0]


# --------------------------------------------------------------------------- ablation


def test_ablation_importance_is_metric_lost_per_skipped_block():
    table = {(): 0.9, (0,): 0.5, (1,): 0.85, (2,): 0.9}
    calls = []

    def evaluate(skip):
        calls.append(skip)
        return table[tuple(skip)]

    r = ablation_importance(3, evaluate)
    assert r.baseline == 0.9 and r.metrics.tolist() == [0.5, 0.85, 0.9]
    np.testing.assert_allclose(r.importance, [0.4, 0.05, 0.0], atol=1e-15)
    assert calls == [(), (0,), (1,), (2,)]
    assert choose_layers_to_drop(r.importance, 1).tolist() == [2]


def test_ablation_for_a_loss_counts_the_increase():
    r = ablation_importance(2, lambda skip: {(): 1.0, (0,): 3.0, (1,): 1.5}[tuple(skip)],
                            higher_is_better=False)
    assert r.importance.tolist() == [2.0, 0.5]


def test_ablation_over_spans_and_progress_callback_without_printing(capsys):
    seen = []
    r = ablation_importance(4, lambda skip: -len(skip), candidates=[(0, 1), (2, 3), [1, 2]],
                            progress=lambda done, total: seen.append((done, total)))
    assert r.candidates == [(0, 1), (2, 3), (1, 2)]
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_ablation_with_a_tqdm_bar_still_returns_the_scores():
    r = ablation_importance(2, lambda skip: float(len(skip)), progress=True)
    assert r.importance.tolist() == [-1.0, -1.0]


def test_ablation_on_the_bundled_model_matches_skip_blocks():
    p = load_digits_mlp()
    r = ablation_importance(4, lambda skip: digits_mlp_accuracy(p, skip_blocks=skip))
    for i in range(4):
        assert r.metrics[i] == digits_mlp_accuracy(p, skip_blocks=(i,))
    _, hidden = digits_mlp_forward(p, p["x_calib"], return_hidden=True)
    bi = block_influence(hidden)
    assert bi.shape == (4,) and ((bi > 0) & (bi < 1)).all()


def test_choose_layers_to_drop_breaks_ties_toward_the_lower_index():
    assert choose_layers_to_drop([0.2, 0.1, 0.1, 0.1], 2).tolist() == [1, 2]
    assert choose_layers_to_drop([0.2, 0.1], 0).tolist() == []


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: block_influence([np.ones((2, 3))]), "at least 2"),
        (lambda: block_influence([np.ones((2, 3)), np.ones((3, 3))]), r"hidden\[1\] has shape"),
        (lambda: block_influence([np.ones((2, 3)), np.full((2, 3), np.nan)]), "NaN"),
        (lambda: block_influence([np.ones(3), np.ones(3)]), "tokens, d"),
        (lambda: angular_distances([np.ones((2, 3))] * 3, 3), r"n=3 must lie in \[1, 2\]"),
        (lambda: angular_distances([np.ones((1, 2, 3))] * 3, 1, token=5), "token 5"),
        (lambda: ablation_importance(0, lambda skip: 1.0), "n_layers"),
        (lambda: ablation_importance(2, 1.0), "evaluate"),
        (lambda: ablation_importance(2, lambda skip: 1.0, candidates=[(2,)]), "candidate"),
        (lambda: ablation_importance(2, lambda skip: np.nan), "NaN"),
        (lambda: ablation_importance(2, lambda skip: 1.0, progress="bar"), "progress"),
        (lambda: choose_layers_to_drop([0.1, 0.2], 3), r"n=3"),
        (lambda: choose_layers_to_drop([0.1, np.nan], 1), "NaN"),
    ],
)
def test_bad_layer_pruning_input_is_named(call, match):
    with pytest.raises(RefquantError, match=match):
        call()


@pytest.mark.parametrize("importance", ["a", [[1.0], [1.0, 2.0]], {"x": 1}, [10**400, 1]])
def test_unconvertible_importance_is_refused(importance):
    # float conversion raised ValueError / TypeError / OverflowError
    with pytest.raises(RefquantError, match="importance"):
        choose_layers_to_drop(importance, 1)
