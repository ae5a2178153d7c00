"""Masks: count rules, tie rule, repeated pruning, per-row and global comparison."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refquant import RefquantError
from refquant.prune import article as _article
from refquant.prune import layouts as _layouts
from refquant.prune import nm as _nm
from refquant.prune import scores as _scores
from refquant.prune.masks import (
    COUNT_RULES,
    apply_mask,
    global_mask,
    prune_count,
    sparsity,
    unstructured_mask,
)

# --------------------------------------------------------------------------- count rules
# Boundary amounts on an odd N = 7, derived by hand from each peer's expression:
#   torch          round(s*N)            half to even: round(3.5) = 4
#   tfmot          N - max(rint(N(1-s)),1): rint(3.5) = 4 kept -> 3 pruned; s=1 keeps 1
#   floor          int(s*N)              int(3.5) = 3
#   torch_pruning  N - int(N(1-s))       7 - int(3.5) = 4
BOUNDARY = [  # (amount, {rule: count})
    (0.0, {"torch": 0, "tfmot": 0, "floor": 0, "torch_pruning": 0}),
    (0, {"torch": 0, "tfmot": 0, "floor": 0, "torch_pruning": 0}),
    (1.0, {"torch": 7, "tfmot": 6, "floor": 7, "torch_pruning": 7}),
    (0.5, {"torch": 4, "tfmot": 3, "floor": 3, "torch_pruning": 4}),
    (7, {"torch": 7, "tfmot": 7, "floor": 7, "torch_pruning": 7}),
]


@pytest.mark.parametrize("rule", COUNT_RULES)
@pytest.mark.parametrize("amount, counts", BOUNDARY, ids=["0.0", "0", "1.0", "0.5", "N"])
def test_each_count_rule_on_the_boundary_amounts_of_odd_n(rule, amount, counts):
    assert prune_count(amount, 7, rule=rule) == counts[rule]


@pytest.mark.parametrize(
    "rule, n, s, expected",
    [
        ("torch", 5, 0.5, 2),  # round(2.5) = 2 (even)
        ("tfmot", 5, 0.5, 3),  # keeps rint(2.5) = 2
        ("floor", 5, 0.5, 2),
        ("torch_pruning", 5, 0.5, 3),  # keeps int(2.5) = 2
        ("tfmot", 2, 0.75, 1),  # rint(0.5) = 0 kept -> at least 1 kept
        ("tfmot", 10, 0.75, 8),  # rint(2.5) = 2 kept
        ("torch_pruning", 10, 0.9, 10),  # 10 * (1 - 0.9) = 0.9999999999999998 -> keeps 0
        ("floor", 100, 0.57, 56),  # 0.57 * 100 = 56.99999999999999
        ("torch", 100, 0.57, 57),
    ],
)
def test_count_rules_evaluate_the_peers_float_expressions(rule, n, s, expected):
    assert prune_count(s, n, rule=rule) == expected


def test_int_amount_is_a_count_under_every_rule():
    for rule in COUNT_RULES:
        assert prune_count(3, 10, rule=rule) == 3


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), -1, True, "0.5", None])
def test_bad_amounts_are_refused_naming_amount(bad):
    with pytest.raises(RefquantError, match="amount"):
        prune_count(bad, 10)


def test_count_larger_than_n_is_refused():
    with pytest.raises(RefquantError, match="amount=11"):
        prune_count(11, 10)


def test_unknown_rule_is_refused():
    with pytest.raises(RefquantError, match="rule"):
        prune_count(0.5, 10, rule="nearest")


# --------------------------------------------------------------------------- unstructured
def test_lowest_scores_are_pruned():
    m = unstructured_mask([3.0, 1.0, 2.0, 0.5, 5.0], 0.4)  # round(2.0) = 2: 0.5 and 1.0
    assert m.tolist() == [True, False, True, False, True]


def test_ties_prune_the_lower_flat_index_first():
    m = unstructured_mask([[1.0, 1.0], [1.0, 2.0]], 2)
    assert m.tolist() == [[False, False], [True, True]]


def test_per_row_compares_each_row_alone():
    scores = np.array([[0.1, 0.2], [3.0, 4.0]])
    assert unstructured_mask(scores, 0.5).tolist() == [[False, False], [True, True]]
    assert unstructured_mask(scores, 0.5, per_row=True).tolist() == [[False, True], [False, True]]


def test_per_row_count_uses_the_row_length():
    # rows of 3 at 0.5: torch round(1.5) = 2 per row; floor int(1.5) = 1 per row
    s = np.arange(6.0).reshape(2, 3)
    assert np.count_nonzero(~unstructured_mask(s, 0.5, per_row=True)) == 4
    assert np.count_nonzero(~unstructured_mask(s, 0.5, per_row=True, rule="floor")) == 2


def test_repeated_pruning_relative_to_what_remains():
    s = np.arange(10.0)
    m1 = unstructured_mask(s, 0.5)
    m2 = unstructured_mask(s, 0.5, previous_mask=m1)  # 5 left, round(2.5) = 2 more
    assert np.flatnonzero(~m2).tolist() == [0, 1, 2, 3, 4, 5, 6]


def test_repeated_pruning_relative_to_the_initial_size():
    s = np.arange(10.0)
    m1 = unstructured_mask(s, 0.5)
    same = unstructured_mask(s, 0.5, previous_mask=m1, relative_to="initial")
    assert np.array_equal(same, m1)
    more = unstructured_mask(s, 0.8, previous_mask=m1, relative_to="initial")
    assert np.flatnonzero(~more).tolist() == list(range(8))
    less = unstructured_mask(s, 0.2, previous_mask=m1, relative_to="initial")
    assert np.array_equal(less, m1)  # never revives


def test_repeated_pruning_never_revives_even_if_scores_change():
    m1 = unstructured_mask([1.0, 2.0, 3.0, 4.0], 2)
    m2 = unstructured_mask([9.0, 9.0, 0.0, 1.0], 1, previous_mask=m1)
    assert m2.tolist() == [False, False, False, True]


def test_torch_pruning_rule_relative_to_initial_counts_kept_from_the_initial_size():
    s = np.arange(10.0)
    m1 = unstructured_mask(s, 0.3, rule="torch_pruning", relative_to="initial")  # keeps int(7.0) = 7
    assert np.count_nonzero(~m1) == 3
    m2 = unstructured_mask(s, 0.9, rule="torch_pruning", previous_mask=m1, relative_to="initial")
    assert np.count_nonzero(m2) == 0  # int(10 * 0.09999999999999998) = 0 kept


def test_global_mask_ranks_all_tensors_together():
    scores = {"a": np.array([0.5, 3.0]), "b": np.array([[1.0, 0.1], [2.0, 4.0]])}
    m = global_mask(scores, 0.5)  # 6 weights, 3 pruned: 0.1, 0.5, 1.0
    assert m["a"].tolist() == [False, True]
    assert m["b"].tolist() == [[False, False], [True, True]]


def test_global_ties_follow_the_dict_order():
    m = global_mask({"a": [1.0, 2.0], "b": [1.0, 2.0]}, 1)
    assert m["a"].tolist() == [False, True] and m["b"].tolist() == [True, True]
    m = global_mask({"b": [1.0, 2.0], "a": [1.0, 2.0]}, 1)
    assert m["b"].tolist() == [False, True] and m["a"].tolist() == [True, True]


def test_global_repeated_pruning_counts_the_survivors():
    scores = {"a": np.arange(4.0), "b": np.arange(4.0, 8.0)}
    m1 = global_mask(scores, 0.5)
    m2 = global_mask(scores, 0.5, previous_masks=m1)
    assert sparsity(m2) == 6 / 8


def test_apply_mask_zeroes_with_positive_zero_and_keeps_dtype_and_input():
    w = np.array([-3.0, 1.0, np.nan], dtype=np.float32)
    before = w.copy()
    out = apply_mask(w, [False, True, False])
    assert out.dtype == np.float32
    assert out[0] == 0 and not np.signbit(out[0]) and out[2] == 0
    assert np.array_equal(w, before, equal_nan=True)


def test_masks_do_not_modify_their_inputs():
    s = np.array([3.0, 1.0, 2.0])
    pm = np.array([True, True, False])
    unstructured_mask(s, 1, previous_mask=pm)
    assert s.tolist() == [3.0, 1.0, 2.0] and pm.tolist() == [True, True, False]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: unstructured_mask([1.0, np.nan], 1), "NaN"),
        (lambda: unstructured_mask([], 0.5), "empty"),
        (lambda: unstructured_mask([1.0, 2.0], 3), "amount=3"),
        (lambda: unstructured_mask([1.0, 2.0], 1.5), "amount"),
        (lambda: unstructured_mask([1.0, 2.0], 1, previous_mask=[True]), "previous_mask"),
        (lambda: unstructured_mask([1.0, 2.0], 1, per_row=True), "per_row"),
        (lambda: unstructured_mask([1.0, 2.0], 1, relative_to="start"), "relative_to"),
        (lambda: global_mask({}, 1), "non-empty dict"),
        (lambda: global_mask({"a": [1.0]}, 1, previous_masks={"b": [True]}), "not in scores"),
        (lambda: unstructured_mask(["a", "b"], 1), "numeric"),
    ],
)
def test_bad_input_is_refused_naming_the_argument(call, match):
    with pytest.raises(RefquantError, match=match):
        call()


# --------------------------------------------------------------------------- properties
scores_st = st.lists(st.floats(-100, 100, allow_nan=False), min_size=1, max_size=40)


@settings(max_examples=60)
@given(scores_st, st.floats(0, 1), st.sampled_from(COUNT_RULES))
def test_the_pruned_count_follows_the_rule_and_pruned_scores_are_lowest(vals, s, rule):
    a = np.array(vals)
    m = unstructured_mask(a, s, rule=rule)
    assert np.count_nonzero(~m) == prune_count(s, a.size, rule=rule)
    if m.any() and (~m).any():
        assert a[~m].max() <= a[m].min()
        # among scores equal to the threshold, pruned ones precede kept ones
        t = a[~m].max()
        tied = np.flatnonzero(a == t)
        pruned_tied = [i for i in tied if not m[i]]
        kept_tied = [i for i in tied if m[i]]
        if kept_tied:
            assert max(pruned_tied) < min(kept_tied)


@settings(max_examples=40)
@given(scores_st, st.floats(0, 1), st.floats(0, 1))
def test_two_rounds_relative_to_remaining_prune_the_second_fraction_of_the_survivors(vals, s1, s2):
    a = np.array(vals)
    m1 = unstructured_mask(a, s1)
    m2 = unstructured_mask(a, s2, previous_mask=m1)
    left = int(np.count_nonzero(m1))
    assert np.count_nonzero(m1 & ~m2) == prune_count(s2, left)
    assert not np.any(m2 & ~m1)


@settings(max_examples=40)
@given(st.lists(scores_st, min_size=1, max_size=4), st.floats(0, 1))
def test_global_mask_equals_the_mask_of_the_concatenation(parts, s):
    scores = {f"t{i}": np.array(p) for i, p in enumerate(parts)}
    m = global_mask(scores, s)
    flat = unstructured_mask(np.concatenate(list(scores.values())), s)
    assert np.array_equal(np.concatenate([m[k] for k in scores]), flat)


@pytest.mark.parametrize("call", [
    lambda: __import__("refquant.prune.masks").prune.masks.unstructured_mask([[1.0], [1.0, 2.0]], 1),
    lambda: __import__("refquant.prune.masks").prune.masks.apply_mask([[1.0], [2.0, 3.0]], [1]),
    lambda: __import__("refquant.prune.masks").prune.masks.sparsity([[1], [1, 0]]),
    lambda: __import__("refquant.prune.masks").prune.masks.prune_count(0.5, 3.7),
    lambda: __import__("refquant.prune.masks").prune.masks.prune_count(0.5, "x"),
    lambda: __import__("refquant.prune.nm").prune.nm.transposable_nm_mask([[1.0], [1.0, 2.0]]),
    lambda: __import__("refquant.prune.layouts").prune.layouts.bitmask_compress([[1.0], [1.0, 2.0]]),
    lambda: __import__("refquant.prune.layouts").prune.layouts.semi_structured_compress([[1.0], [2.0, 3.0]]),
    lambda: __import__("refquant.prune.layouts").prune.layouts.bitmask_decompress(
        np.zeros(0), np.zeros((1, 1), np.uint8), float("nan")),
    lambda: __import__("refquant.prune.scores").prune.scores.random_scores(float("nan")),
    lambda: __import__("refquant.prune.scores").prune.scores.random_scores([[2, 2]]),
])
def test_ragged_arrays_and_non_integer_counts_or_shapes_are_refquant_errors(call):
    # numpy's ValueError (ragged list, int(nan)) and TypeError escaped; prune_count
    # truncated n = 3.7 to 3
    with pytest.raises(RefquantError):
        call()


_ARR = np.array([])


@pytest.mark.parametrize("call", [
    lambda: unstructured_mask(np.ones(4), 0.5, rule=_ARR),
    lambda: unstructured_mask(np.ones(4), 0.5, relative_to=_ARR),
    lambda: prune_count(0.5, 4, rule=_ARR),
    lambda: _nm.nm_mask(np.ones((2, 4)), keep=2, group=4, tie_break=_ARR),
    lambda: _scores.group_reduce([np.ones(2)], _ARR),
    lambda: _scores.normalize_scores(np.ones(2), _ARR),
    lambda: _layouts.semi_structured_compress(np.zeros((32, 32), np.float16), nan_payloads=_ARR),
    lambda: _article.article_weight_pruning(np.ones((2, 2)), 0.5, norm=_ARR),
])
def test_an_array_given_as_an_option_name_is_refused(call):
    # `option not in CHOICES` with an array raised numpy's "truth value of an
    # empty array is ambiguous" ValueError
    with pytest.raises(RefquantError):
        call()
