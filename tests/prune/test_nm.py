"""N:M masks, transposable N:M (apex ASP) and tfmot block sparsity."""

import collections
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refquant import RefquantError
from refquant.prune.nm import (
    block_mask,
    block_scores,
    is_nm_sparse,
    nm_keywords,
    nm_mask,
    transposable_nm_mask,
    valid_2d_patterns,
)

# --------------------------------------------------------------------------- re-expressions of apex
# NVIDIA/apex apex/contrib/sparsity/sparse_masklib.py, rewritten line by line in NumPy
# (apex needs CUDA to import); only the torch calls are replaced.


def apex_mn_1d_best(matrix, m, n):
    patterns = np.zeros(m)
    patterns[:n] = 1
    valid = np.array(sorted(set(itertools.permutations(patterns.tolist()))))
    mat = matrix.reshape(-1, m)
    pmax = np.argmax(np.abs(mat) @ valid.T, axis=1)
    return valid[pmax].reshape(matrix.shape).astype(bool)


def apex_mn_2d_greedy(mat, m, n):
    mask = np.ones(mat.shape, dtype=int)
    row_count = int(mat.shape[0] / m) * m
    col_count = int(mat.shape[1] / m) * m
    for r0 in range(0, row_count, m):
        for c0 in range(0, col_count, m):
            sub = np.absolute(np.squeeze(mat[r0:r0 + m, c0:c0 + m]))
            mask_sub = np.squeeze(mask[r0:r0 + m, c0:c0 + m])
            mask_sub.fill(0)
            linear = np.argsort(sub.reshape(-1))
            idx = [(int(x / m), x % m) for x in linear]
            rows, cols = collections.Counter(), collections.Counter()
            for cur in range(len(linear) - 1, -1, -1):
                e = idx[cur]
                if rows[e[0]] == n or cols[e[1]] == n:
                    continue
                mask_sub[e[0], e[1]] = 1
                rows[e[0]] += 1
                cols[e[1]] += 1
    return mask.astype(bool)


def apex_compute_valid_2d_patterns(m, n):
    patterns = np.zeros(m)
    patterns[:n] = 1
    patterns = list(set(itertools.permutations(patterns.tolist())))
    patterns = patterns + patterns
    patterns = np.array(list(set(itertools.permutations(patterns, m))))
    valid = ((patterns.sum(axis=1) <= n).sum(axis=1) == m).nonzero()[0]
    return patterns[valid]


def apex_mn_2d_best(matrix, m, n, patterns):
    r, c = matrix.shape
    tiles = np.abs(matrix).reshape(r // m, m, c // m, m).transpose(0, 2, 1, 3).reshape(r // m, c // m, m * m)
    pmax = np.argmax(tiles @ patterns.reshape(len(patterns), m * m).T, axis=2)
    chosen = patterns.reshape(len(patterns), m * m)[pmax]
    return chosen.reshape(r // m, c // m, m, m).transpose(0, 2, 1, 3).reshape(r, c).astype(bool)


def tie_free(shape, seed):
    rng = np.random.default_rng(seed)
    return rng.permutation(np.arange(1, int(np.prod(shape)) + 1)).reshape(shape) * rng.choice([-1, 1], shape) / 7.0


def apex_create_mask_4d(tensor):
    """apex create_mask for a 4-D conv weight (K, C, R, S): m4n2_1d on permute(2, 3, 0, 1).view(-1, C)."""
    k, c, r, s = tensor.shape
    t = tensor.transpose(2, 3, 0, 1).reshape(r * s * k, c)
    mask = apex_mn_1d_best(t, 4, 2)
    return mask.reshape(r, s, k, c).transpose(2, 3, 0, 1)


def tfmot_generate_m_by_n_mask(weights, m_by_n):
    """tfmot pruning_utils.generate_m_by_n_mask on a rank-2 (C_out, C_in) array, NumPy re-expression.

    tf.math.top_k: "if two elements are equal, the lower-index element appears first".
    """
    num_zeros, block = m_by_n
    keep = block - num_zeros
    a = np.abs(weights)
    pad = -(-a.shape[-1] // block) * block - a.shape[-1]
    a = np.pad(a, [(0, 0), (0, pad)])
    blocks = a.reshape(-1, block)
    top = np.argsort(-blocks, axis=1, kind="stable")[:, :keep]
    mask = np.zeros(blocks.shape)
    np.put_along_axis(mask, top, 1.0, axis=1)
    return mask.reshape(a.shape)[:, : weights.shape[1]]


# --------------------------------------------------------------------------- naming clash


@pytest.mark.parametrize(
    ("spec", "convention", "keep"),
    [("2:4", "nvidia", 2), ("1:4", "nvidia", 1), ("1:4", "wanda", 3), ((1, 4), "tfmot", 3),
     ((2, 4), "tfmot", 2), ("2:4", "wanda", 2), ((0, 4), "tfmot", 4)],
)
def test_peer_nm_spellings_map_to_kept_count(spec, convention, keep):
    assert nm_keywords(spec, convention) == {"keep": keep, "group": 4}


def test_tfmot_refuses_m_equal_to_n_like_its_assert_less():
    with pytest.raises(RefquantError, match="m < n"):
        nm_keywords((4, 4), "tfmot")


def test_unknown_convention_is_named():
    with pytest.raises(RefquantError, match="convention"):
        nm_keywords("2:4", "cusparselt")


# --------------------------------------------------------------------------- 1-D N:M


def test_two_four_hand_example_keeps_two_largest_magnitudes_per_group():
    w = np.array([[0.1, -3.0, 2.0, 0.5, 4.0, 0.0, -0.2, 0.3]])
    got = nm_mask(np.abs(w), keep=2, group=4)
    assert got.tolist() == [[False, True, True, False, True, False, False, True]]


def test_ties_prune_lower_index_first_by_default():
    s = np.ones(4)
    assert nm_mask(s, keep=2, group=4).tolist() == [False, False, True, True]
    assert nm_mask(s, keep=2, group=4, tie_break="lower_index_kept").tolist() == [True, True, False, False]
    s = np.array([5.0, 1.0, 1.0, 1.0])
    assert nm_mask(s, keep=2, group=4).tolist() == [True, False, False, True]
    assert nm_mask(s, keep=2, group=4, tie_break="lower_index_kept").tolist() == [True, True, False, False]


def test_groups_run_along_the_chosen_axis():
    s = tie_free((8, 3), 1)
    assert np.array_equal(nm_mask(s, keep=1, group=4, axis=0), nm_mask(s.T, keep=1, group=4).T)


@pytest.mark.parametrize(("keep", "count"), [(0, 0), (4, 8)])
def test_keep_zero_and_keep_all(keep, count):
    assert nm_mask(np.arange(8.0), keep=keep, group=4).sum() == count


@settings(max_examples=40)
@given(
    st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4), (4, 8)]),
    st.integers(1, 3), st.integers(1, 3), st.integers(0, 10**6),
)
def test_nm_mask_equals_apex_best_pattern_on_tie_free_input(nm, rows, groups, seed):
    n, m = nm
    w = tie_free((rows, groups * m), seed)
    got = nm_mask(np.abs(w), keep=n, group=m)
    assert np.array_equal(got, apex_mn_1d_best(w, m, n))
    assert is_nm_sparse(np.where(got, w, 0), keep=n, group=m)
    assert (got.reshape(-1, m).sum(axis=1) == n).all()


@settings(max_examples=20)
@given(st.integers(0, 10**6))
def test_conv_weight_groups_along_input_channels_like_apex_create_mask(seed):
    w = tie_free((3, 8, 2, 2), seed)
    assert np.array_equal(nm_mask(np.abs(w), keep=2, group=4, axis=1), apex_create_mask_4d(w))


@settings(max_examples=40)
@given(hnp.arrays(np.float64, (2, 8), elements=st.sampled_from([0.0, 1.0, -1.0, 2.0])),
       st.sampled_from([(2, 4), (1, 4), (3, 4), (1, 2)]))
def test_tfmot_m_by_n_on_a_keras_kernel_including_ties(kernel_t, m_by_n):
    """A Keras Dense kernel is (C_in, C_out); tfmot groups along C_in, i.e. axis 0 of the kernel."""
    kernel = kernel_t.T
    want = tfmot_generate_m_by_n_mask(kernel.T, m_by_n).T.astype(bool)
    got = nm_mask(np.abs(kernel), **nm_keywords(m_by_n, "tfmot"), axis=0, tie_break="lower_index_kept")
    assert np.array_equal(got, want)


@settings(max_examples=40)
@given(hnp.arrays(np.float64, (3, 8), elements=st.sampled_from([0.0, 1.0, 2.0, -1.0])))
def test_every_kept_score_is_at_least_every_pruned_score_in_its_group(w):
    s = np.abs(w)
    mask = nm_mask(s, keep=2, group=4)
    for g_s, g_m in zip(s.reshape(-1, 4), mask.reshape(-1, 4), strict=True):
        assert g_s[g_m].min() >= g_s[~g_m].max()


def test_is_nm_sparse_counts_nonzeros_per_group():
    assert is_nm_sparse([1, 0, 0, 2, 0, 0, 0, 0], keep=2, group=4)
    assert not is_nm_sparse([1, 3, 0, 2, 0, 0, 0, 0], keep=2, group=4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(scores=np.ones(8), keep=5, group=4), "keep=5"),
        (dict(scores=np.ones(6), keep=2, group=4), "not a multiple of group=4"),
        (dict(scores=np.array([1.0, np.nan, 0, 0]), keep=2, group=4), "NaN"),
        (dict(scores=np.zeros((0, 4)), keep=2, group=4), "empty"),
        (dict(scores=np.ones(4), keep=2, group=0), "group"),
        (dict(scores=np.ones(4), keep=2, group=4, tie_break="random"), "tie_break"),
        (dict(scores=np.ones(4), keep=2, group=4, axis=1), "axis"),
    ],
)
def test_bad_nm_arguments_are_named(kwargs, match):
    with pytest.raises(RefquantError, match=match):
        nm_mask(**kwargs)


# --------------------------------------------------------------------------- transposable


def test_valid_2d_patterns_are_apex_patterns_90_for_two_four():
    ours = valid_2d_patterns(2, 4)
    assert ours.shape == (90, 4, 4)
    theirs = apex_compute_valid_2d_patterns(4, 2)
    assert {tuple(p.ravel().astype(int)) for p in ours} == {tuple(p.ravel().astype(int)) for p in theirs}
    assert (ours.sum(axis=1) == 2).all() and (ours.sum(axis=2) == 2).all()


def test_greedy_hand_example_walks_down_from_the_largest_with_row_and_column_caps():
    # The 4 largest values all sit in row 0 and column 0: greedy keeps 9 and 8
    # (row 0 full after 2), then 7 (col 0: 2), then walks down the rest.
    t = np.array([
        [9.0, 8.0, 0.1, 0.2],
        [7.0, 0.3, 0.4, 0.5],
        [6.0, 0.6, 0.7, 0.8],
        [0.9, 1.0, 1.1, 1.2],
    ])
    got = transposable_nm_mask(t, method="greedy").astype(int)
    # order: 9(0,0) 8(0,1) 7(1,0) 6(2,0)x(col0 full) 1.2(3,3) 1.1(3,2) 1.0(3,1)x(row3 full)
    # 0.9x 0.8(2,3) 0.7(2,2) 0.6x 0.5(1,3)x(col3 full) 0.4(1,2)x(col2 full) 0.3(1,1) ...
    assert got.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]


@settings(max_examples=30)
@given(st.integers(1, 2), st.integers(1, 2), st.integers(0, 10**6))
def test_greedy_equals_apex_mn_2d_greedy_on_tie_free_input(rt, ct, seed):
    w = tie_free((4 * rt, 4 * ct), seed)
    assert np.array_equal(transposable_nm_mask(np.abs(w), method="greedy"), apex_mn_2d_greedy(w, 4, 2))


@settings(max_examples=30)
@given(st.integers(1, 2), st.integers(1, 2), st.integers(0, 10**6))
def test_exhaustive_equals_apex_mn_2d_best_on_tie_free_input(rt, ct, seed):
    # continuous values: no two patterns of a tile have equal sums
    w = np.random.default_rng(seed).standard_normal((4 * rt, 4 * ct))
    got = transposable_nm_mask(np.abs(w), method="exhaustive")
    assert np.array_equal(got, apex_mn_2d_best(w, 4, 2, apex_compute_valid_2d_patterns(4, 2)))
    assert (got.reshape(rt, 4, ct, 4).sum(axis=1) == 2).all()
    assert (got.reshape(rt, 4, ct, 4).sum(axis=3) == 2).all()


def test_exhaustive_beats_greedy_whenever_greedy_fills_every_row_and_column():
    for seed in range(20):
        w = np.abs(tie_free((4, 4), seed))
        g = transposable_nm_mask(w, method="greedy")
        e = transposable_nm_mask(w, method="exhaustive")
        if (g.sum(axis=0) == 2).all() and (g.sum(axis=1) == 2).all():
            assert (w * e).sum() >= (w * g).sum()


def test_greedy_can_keep_seven_of_eight_and_more_magnitude_than_any_full_pattern():
    # Greedy takes 16 15 14 13 12 11 8; then (1, 2) is the only cell left in
    # both the unfilled row 1 and the unfilled column 2, and it is taken.
    t = np.array([[3, 12, 4, 11], [1, 5, 8, 6], [15, 13, 7, 10], [14, 9, 2, 16]], dtype=float)
    g = transposable_nm_mask(t, method="greedy")
    e = transposable_nm_mask(t, method="exhaustive")
    assert g.astype(int).tolist() == [[0, 1, 0, 1], [0, 0, 1, 0], [1, 1, 0, 0], [1, 0, 0, 1]]
    assert (t * g).sum() == 89 and (t * e).sum() == 88


def test_exhaustive_ties_take_the_pattern_keeping_later_positions():
    got = transposable_nm_mask(np.ones((4, 4)), method="exhaustive").astype(int)
    assert got.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]]


@pytest.mark.parametrize(
    ("scores", "kwargs", "match"),
    [
        (np.ones(16), {}, "2-D"),
        (np.ones((4, 6)), {}, "multiples of group=4"),
        (np.ones((4, 4)), {"method": "annealing"}, "method"),
        (np.full((4, 4), np.nan), {}, "NaN"),
    ],
)
def test_bad_transposable_arguments_are_named(scores, kwargs, match):
    with pytest.raises(RefquantError, match=match):
        transposable_nm_mask(scores, **kwargs)


# --------------------------------------------------------------------------- block sparsity


def test_block_average_and_max_pooling_with_partial_edge_blocks():
    w = np.arange(15.0).reshape(3, 5)
    # blocks 2x2; last row and last column are partial (SAME padding: valid elements only)
    assert block_scores(w, (2, 2), "avg").tolist() == [[3.0, 5.0, 6.5], [10.5, 12.5, 14.0]]
    assert block_scores(-w, (2, 2), "max").tolist() == [[6.0, 8.0, 9.0], [11.0, 13.0, 14.0]]


def test_block_mask_keeps_tfmot_count_and_expands_blocks():
    w = np.arange(15.0).reshape(3, 5)
    # 6 blocks, sparsity 0.5 -> keep max(round(3.0), 1) = 3 blocks: the bottom row of blocks
    got = block_mask(w, (2, 2), 0.5)
    assert got.astype(int).tolist() == [[0] * 5, [0] * 5, [1] * 5]


def test_block_mask_count_rounds_half_to_even_and_keeps_at_least_one():
    w = np.arange(1.0, 6.0).reshape(1, 5)
    # 5 blocks of 1x1, sparsity 0.5 -> 2.5 rounds to 2 kept
    assert block_mask(w, (1, 1), 0.5).sum() == 2
    # sparsity 1 still keeps one block (max(..., 1))
    assert block_mask(w, (1, 1), 1.0).tolist() == [[False, False, False, False, True]]


def test_block_threshold_ties_keep_every_block_at_the_threshold_like_tfmot():
    w = np.array([[1.0, 2.0, 2.0, 2.0]])
    assert block_mask(w, (1, 1), 0.5, ties="threshold").tolist() == [[False, True, True, True]]
    assert block_mask(w, (1, 1), 0.5, ties="stable").tolist() == [[False, False, True, True]]


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((np.ones((2, 2, 2)), (1, 1), 0.5), {}, "2-D"),
        ((np.ones((2, 2)), (0, 1), 0.5), {}, "block"),
        ((np.ones((2, 2)), (1, 1), 1.5), {}, "sparsity"),
        ((np.ones((2, 2)), (1, 1), 0.5), {"pooling": "sum"}, "pooling"),
        ((np.ones((2, 2)), (1, 1), 0.5), {"ties": "random"}, "ties"),
    ],
)
def test_bad_block_arguments_are_named(args, kwargs, match):
    with pytest.raises(RefquantError, match=match):
        block_mask(*args, **kwargs)


def test_block_sparsity_beyond_float_range_is_refused():
    # float(10**400) raised OverflowError
    with pytest.raises(RefquantError, match="sparsity"):
        block_mask(np.ones((4, 4)), (2, 2), 10**400)
