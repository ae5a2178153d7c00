"""The founding article's weight pruning recipe, and what its PyTorch snippet does instead."""

import numpy as np
import pytest
from helpers import import_peer

from refquant import RefquantError
from refquant.prune.article import article_snippet_as_written, article_weight_pruning

W = np.array([[0.5, -0.1], [0.3, -2.0]])


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_recipe_drops_the_lowest_normalised_weights(norm):
    # normalised by max|w| = 2: [[.25, -.05], [.15, -1]]; 50 % of 4 = 2 dropped: -.05, .15
    pruned, mask = article_weight_pruning(W, 0.5, norm=norm)
    assert mask.tolist() == [[True, False], [False, True]]
    assert pruned.tolist() == [[0.5, 0.0], [0.0, -2.0]]


def test_recipe_by_units_drops_the_unit_of_lowest_norm():
    # rows as units: L1 norms of the normalised rows [.3, 1.15]; round(0.5 * 2) = 1 row
    pruned, mask = article_weight_pruning(W, 0.5, norm="l1", axis=0)
    assert mask.tolist() == [[False, False], [True, True]]
    assert pruned.tolist() == [[0.0, 0.0], [0.3, -2.0]]


def test_l1_and_l2_differ_only_for_units():
    w = np.array([[1.0, 1.0, 1.0, 1.0], [2.1, 0.0, 0.0, 0.0]])
    # L1 of rows: 4 vs 2.1 -> drop row 1; squared L2: 4 vs 4.41 -> drop row 0
    assert article_weight_pruning(w, 1, norm="l1", axis=0)[1][:, 0].tolist() == [True, False]
    assert article_weight_pruning(w, 1, norm="l2", axis=0)[1][:, 0].tolist() == [False, True]


def test_recipe_keeps_the_input_and_handles_all_zero_weights():
    w = W.copy()
    article_weight_pruning(w, 1)
    assert np.array_equal(w, W)
    pruned, mask = article_weight_pruning(np.zeros((2, 2)), 2)
    assert pruned.tolist() == [[0.0, 0.0], [0.0, 0.0]] and mask.sum() == 2


def test_snippet_keeps_the_unimportant_columns_and_zeroes_the_important_one():
    w = np.array([[0.5, -0.1, 0.3], [0.2, 0.05, -0.4]])
    # column sums [0.7, -0.05, -0.1]: only column 0 is >= 0.1, and it is the one zeroed
    assert article_snippet_as_written(w).tolist() == [[0.0, -0.1, 0.3], [0.0, 0.05, -0.4]]


def test_snippet_signed_sums_cancel():
    w = np.array([[5.0, 0.01], [-5.0, 0.01]])  # column 0 sums to 0 though its weights are large
    assert article_snippet_as_written(w).tolist() == [[5.0, 0.01], [-5.0, 0.01]]


def test_bad_input_is_refused():
    with pytest.raises(RefquantError, match="norm"):
        article_weight_pruning(W, 0.5, norm="l0")
    with pytest.raises(RefquantError, match="2-D"):
        article_snippet_as_written(np.ones(3))


def test_the_article_snippet_raises_in_torch_and_matches_once_made_to_run():
    torch = import_peer("torch")
    model = torch.nn.Linear(10, 1)
    with pytest.raises(TypeError):
        torch.sum(model.parameters(), dim=0)
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    parameters = model.weight.detach()
    importance = torch.sum(parameters, dim=0)
    unimportant = torch.where(importance < 0.1, parameters, torch.zeros_like(parameters))
    assert np.array_equal(article_snippet_as_written(parameters.numpy()), unimportant.numpy())


@pytest.mark.parametrize("call, match", [
    # ragged lists raised numpy's ValueError; threshold 'a' / None a ufunc TypeError
    (lambda: article_snippet_as_written([[1.0], [1.0, 2.0]]), "w"),
    (lambda: article_snippet_as_written(np.ones((2, 2)), "a"), "threshold"),
    (lambda: article_snippet_as_written(np.ones((2, 2)), None), "threshold"),
    (lambda: article_weight_pruning([[1.0], [1.0, 2.0]], 0.5), "w"),
])
def test_unconvertible_article_inputs_are_refused(call, match):
    with pytest.raises(RefquantError, match=match):
        call()
