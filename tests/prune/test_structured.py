"""Structured pruning with declared dependency groups."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refquant import RefquantError
from refquant.models import digits_mlp_forward, load_digits_mlp
from refquant.prune.structured import (
    build_dependency_groups,
    channel_to_columns,
    structured_prune,
)


def small_net():
    """fc1 (3 out, 2 in) -> bn1 (3) -> fc2 (2 out, 3 in); channel norms of fc1 rows 5, 1, 13 (L2^2)."""
    return {
        "fc1.weight": np.array([[1.0, 2.0], [0.0, 1.0], [2.0, 3.0]]),
        "fc1.bias": np.array([0.5, 0.25, 0.125]),
        "bn1.weight": np.array([1.0, 2.0, 3.0]),
        "bn1.bias": np.array([0.0, 0.1, 0.2]),
        "bn1.running_mean": np.array([10.0, 20.0, 30.0]),
        "bn1.running_var": np.array([1.0, 4.0, 9.0]),
        "fc2.weight": np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
        "fc2.bias": np.array([7.0, 8.0]),
    }


COUPLINGS = {"fc1.weight:0": ["fc1.bias:0", "bn1.weight:0", "bn1.bias:0", "bn1.running_mean:0",
                              "bn1.running_var:0", "fc2.weight:1"]}


def test_removing_an_output_channel_removes_bias_norm_statistics_and_consumer_columns():
    p = small_net()
    # score from fc1.weight only, L1: rows give 3, 1, 5 -> channel 1 is pruned
    r = structured_prune(p, COUPLINGS, 1, norm="l1", score_members=["fc1.weight"])
    assert r.kept["fc1.weight:0"].tolist() == [0, 2]
    assert r.scores["fc1.weight:0"].tolist() == [3.0, 1.0, 5.0]
    assert r.arrays["fc1.weight"].tolist() == [[1.0, 2.0], [2.0, 3.0]]
    assert r.arrays["fc1.bias"].tolist() == [0.5, 0.125]
    assert r.arrays["bn1.running_mean"].tolist() == [10.0, 30.0]
    assert r.arrays["bn1.running_var"].tolist() == [1.0, 9.0]
    assert r.arrays["fc2.weight"].tolist() == [[1.0, 3.0], [4.0, 6.0]]
    assert r.arrays["fc2.bias"] is p["fc2.bias"]  # untouched tensors pass through
    assert r.masks["fc2.weight"].tolist() == [[True, False, True], [True, False, True]]
    assert "fc2.bias" not in r.masks


def test_default_score_sums_the_l2_norms_of_every_coupled_tensor():
    p = small_net()
    r = structured_prune(p, COUPLINGS, 0)
    members = ["fc1.weight", "fc1.bias", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"]
    want = []
    for c in range(3):
        s = sum(np.linalg.norm(np.atleast_1d(p[m][c])) for m in members)
        want.append(s + np.linalg.norm(p["fc2.weight"][:, c]))
    np.testing.assert_allclose(r.scores["fc1.weight:0"], want, rtol=1e-15)
    assert r.kept["fc1.weight:0"].tolist() == [0, 1, 2]


@pytest.mark.parametrize(("reduce", "want"), [("sum", [8.0, 3.0]), ("mean", [4.0, 1.5]), ("max", [5.0, 2.0])])
def test_group_reductions_over_coupled_tensors(reduce, want):
    arrays = {"a": np.array([[3.0], [1.0]]), "b": np.array([[5.0, 2.0]])}
    r = structured_prune(arrays, {"a:0": ["b:1"]}, 0, norm="l1", reduce=reduce)
    assert r.scores["a:0"].tolist() == want


def test_root_free_l2_squared_is_torch_pruning_magnitude():
    arrays = {"a": np.array([[3.0, 4.0], [1.0, 0.0]])}
    assert structured_prune(arrays, {"a:0": []}, 0, norm="l2_squared").scores["a:0"].tolist() == [25.0, 1.0]
    assert structured_prune(arrays, {"a:0": []}, 0, norm="l2").scores["a:0"].tolist() == [5.0, 1.0]
    assert structured_prune(arrays, {"a:0": []}, 0, norm="linf").scores["a:0"].tolist() == [4.0, 1.0]


def test_equal_scores_prune_the_lower_channel_first():
    arrays = {"a": np.ones((4, 2))}
    assert structured_prune(arrays, {"a:0": []}, 2).kept["a:0"].tolist() == [2, 3]


def test_precomputed_scores_replace_the_norm():
    p = small_net()
    r = structured_prune(p, COUPLINGS, 2, scores=np.array([3.0, 2.0, 1.0]))
    assert r.kept["fc1.weight:0"].tolist() == [0]
    assert r.arrays["fc2.weight"].tolist() == [[1.0], [4.0]]


# --------------------------------------------------------------------------- flatten expansion


def test_channel_to_columns_both_c_order_flatten_conventions():
    # 3 channels of a 2x2 map: NCHW flatten -> channel 1 owns columns 4..7;
    # NHWC flatten -> channel 1 owns columns 1, 4, 7, 10
    assert channel_to_columns([1], 3, 4, "channel_major").tolist() == [4, 5, 6, 7]
    assert channel_to_columns([1], 3, 4, "channel_minor").tolist() == [1, 4, 7, 10]


@pytest.mark.parametrize("order", ["channel_major", "channel_minor"])
def test_pruning_conv_channels_after_a_flatten_matches_zeroing_them(order):
    rng = np.random.default_rng(0)
    c, h, w = 3, 2, 2
    fmap = rng.standard_normal((5, c, h, w))  # (batch, C, H, W) feature map of conv "conv"
    flat = fmap.reshape(5, -1) if order == "channel_major" else fmap.transpose(0, 2, 3, 1).reshape(5, -1)
    arrays = {"conv.weight": rng.standard_normal((c, 4, 3, 3)), "fc.weight": rng.standard_normal((2, c * h * w))}
    couplings = {"conv.weight:0": [{"tensor": "fc.weight", "axis": 1, "repeat": h * w, "order": order}]}
    r = structured_prune(arrays, couplings, 1, scores=np.array([2.0, 1.0, 3.0]))
    kept = r.kept["conv.weight:0"]
    assert kept.tolist() == [0, 2]
    small = fmap[:, kept]
    small_flat = small.reshape(5, -1) if order == "channel_major" else small.transpose(0, 2, 3, 1).reshape(5, -1)
    zeroed = flat * r.masks["fc.weight"][0]
    np.testing.assert_allclose(small_flat @ r.arrays["fc.weight"].T, zeroed @ arrays["fc.weight"].T, rtol=1e-12)
    assert r.arrays["conv.weight"].shape == (2, 4, 3, 3)


# --------------------------------------------------------------------------- residual ties, depthwise


def test_couplings_sharing_a_member_merge_into_one_group():
    # a and b are added together (residual); c consumes the sum
    arrays = {"a": np.array([[1.0], [0.0], [4.0]]), "b": np.array([[0.0], [2.0], [0.0]]),
              "c": np.array([[1.0, 1.0, 1.0]])}
    groups = build_dependency_groups(arrays, {"a:0": ["c:1"], "b:0": ["c:1"]})
    assert len(groups) == 1 and {m.key for m in groups[0].members} == {"a:0", "b:0", "c:1"}
    r = structured_prune(arrays, {"a:0": ["c:1"], "b:0": ["c:1"]}, 1, norm="l1")
    # summed over a, b, c: channel scores 2, 3, 5 -> channel 0 pruned from all three
    assert r.scores["a:0"].tolist() == [2.0, 3.0, 5.0]
    assert r.arrays["a"].tolist() == [[0.0], [4.0]] and r.arrays["b"].tolist() == [[2.0], [0.0]]
    assert r.arrays["c"].tolist() == [[1.0, 1.0]]


def test_depthwise_weight_shrinks_with_its_channels_and_reports_groups():
    rng = np.random.default_rng(1)
    arrays = {"pw.weight": rng.standard_normal((4, 3, 1, 1)), "dw.weight": rng.standard_normal((4, 1, 3, 3)),
              "next.weight": rng.standard_normal((6, 4, 1, 1))}
    couplings = {"pw.weight:0": [{"tensor": "dw.weight", "axis": 0, "depthwise": True}, "next.weight:1"]}
    r = structured_prune(arrays, couplings, 0.5)
    assert r.arrays["dw.weight"].shape == (2, 1, 3, 3)
    assert r.arrays["next.weight"].shape == (6, 2, 1, 1)
    assert r.depthwise_groups == {"dw.weight": 2}


def test_bundled_model_residual_group_removes_dead_units_exactly():
    p = load_digits_mlp()
    dead = [3, 50, 77]
    for c in dead:  # make residual channels c identically zero
        p["embed.weight"][c] = 0
        p["embed.bias"][c] = 0
        for i in range(4):
            p[f"blocks.{i}.weight"][c] = 0
            p[f"blocks.{i}.bias"][c] = 0
    resid = ["embed.bias:0", "head.weight:1"] + [
        f"blocks.{i}.{t}" for i in range(4) for t in ("weight:0", "weight:1", "bias:0")]
    before = {k: v.copy() for k, v in p.items()}
    r = structured_prune(p, {"embed.weight:0": resid}, 3, norm="l1", score_members=["embed.weight"])
    assert sorted(set(range(128)) - set(r.kept["embed.weight:0"].tolist())) == dead
    assert r.arrays["blocks.2.weight"].shape == (125, 125) and r.arrays["head.weight"].shape == (10, 125)
    x = p["x_test"][:50]
    np.testing.assert_allclose(digits_mlp_forward(r.arrays, x), digits_mlp_forward(p, x), rtol=1e-5, atol=1e-5)
    assert all(np.array_equal(before[k], p[k]) for k in p)  # inputs untouched


@settings(max_examples=30)
@given(st.integers(1, 6), st.integers(0, 10**6), st.floats(0, 1))
def test_arrays_are_the_masked_elements_and_counts_follow_the_rule(c, seed, amount):
    rng = np.random.default_rng(seed)
    arrays = {"w": rng.standard_normal((c, 3)), "b": rng.standard_normal(c), "v": rng.standard_normal((2, c, 2))}
    r = structured_prune(arrays, {"w:0": ["b:0", "v:1"]}, amount)
    k = int(round(amount * c))
    assert r.kept["w:0"].size == c - k
    for name, a in arrays.items():
        assert np.array_equal(r.arrays[name].ravel(), a[r.masks[name]])


# --------------------------------------------------------------------------- count rules


def pruned(amount, n, rule="torch"):
    arrays = {"w": np.arange(1.0, n + 1.0)[:, None]}
    return n - structured_prune(arrays, {"w:0": []}, amount, count_rule=rule).kept["w:0"].size


@pytest.mark.parametrize(
    ("rule", "counts"),
    # amounts 0, 1, 0.5 of N = 5, 0.5 of N = 4, 0.3 of N = 5. tfmot keeps
    # rint(5 * 0.7 = 3.5) = 4 and at least 1 (so amount 1 prunes 4 of 5)
    [("torch", [0, 5, 2, 2, 2]), ("floor", [0, 5, 2, 2, 1]),
     ("torch_pruning", [0, 5, 3, 2, 2]), ("tfmot", [0, 4, 3, 2, 1])],
)
def test_count_rules_on_boundary_amounts(rule, counts):
    got = [pruned(0.0, 5, rule), pruned(1.0, 5, rule), pruned(0.5, 5, rule),
           pruned(0.5, 4, rule), pruned(0.3, 5, rule)]
    assert got == counts


def test_an_int_amount_is_a_count_up_to_n():
    assert pruned(5, 5) == 5 and pruned(0, 5) == 0 and pruned(2, 5, "tfmot") == 2


def test_pruned_channels_are_the_lowest_scores():
    arrays = {"w": np.array([[3.0], [1.0], [4.0], [1.5], [9.0]])}
    assert structured_prune(arrays, {"w:0": []}, 2).kept["w:0"].tolist() == [0, 2, 4]


@pytest.mark.parametrize(("amount", "match"), [(6, r"\[0, 5\]"), (-1, r"\[0, 5\]"), (1.5, r"\[0, 1\]"),
                                              (-0.1, r"\[0, 1\]"), (True, "amount"), ("half", "amount")])
def test_bad_amounts_are_named(amount, match):
    with pytest.raises(RefquantError, match=match):
        pruned(amount, 5)


def test_unknown_count_rule_is_named():
    with pytest.raises(RefquantError, match="count_rule"):
        pruned(0.5, 5, "round_half_even")


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("couplings", "match"),
    [
        ({"fc1.weight:0": ["fc3.weight:1"]}, "fc3.weight"),
        ({"fc1.weight:0": ["fc2.weight:2"]}, "axis 2 does not exist"),
        ({"fc1.weight:0": ["fc2.weight:0"]}, "mismatched lengths"),
        ({"fc1.weight:0": ["fc2.weight"]}, "tensor_name:axis"),
        ({"fc1.weight:x": []}, "non-integer axis"),
        ({"fc1.weight:0": [{"tensor": "fc2.weight", "axis": 1, "repeat": 2}]}, "not a multiple of repeat"),
        ({"fc1.weight:0": [{"tensor": "fc2.weight", "axis": 1, "order": "F"}]}, "order"),
        ({"fc1.weight:0": [{"tensor": "fc2.weight"}]}, "'axis'"),
        ({"fc1.weight:0": [{"tensor": "fc2.weight", "axis": 1, "depthwise": True}]}, "depthwise"),
        ({"fc1.weight:0": ["fc2.weight:1", {"tensor": "fc2.weight", "axis": 1, "repeat": 1,
                                            "depthwise": False, "order": "channel_minor"}]}, "declared twice"),
        ({}, "non-empty"),
    ],
)
def test_bad_couplings_are_named(couplings, match):
    with pytest.raises(RefquantError, match=match):
        structured_prune(small_net(), couplings, 1)


def test_nan_weights_empty_tensors_and_bad_scores_are_named():
    p = small_net()
    p["fc2.weight"] = p["fc2.weight"].copy()
    p["fc2.weight"][0, 0] = np.nan
    with pytest.raises(RefquantError, match="fc2.weight.*NaN"):
        structured_prune(p, COUPLINGS, 1)
    with pytest.raises(RefquantError, match="empty"):
        structured_prune({"a": np.zeros((3, 0))}, {"a:0": []}, 1)
    with pytest.raises(RefquantError, match=r"expected \(3,\)"):
        structured_prune(small_net(), COUPLINGS, 1, scores=np.ones(4))
    with pytest.raises(RefquantError, match="NaN"):
        structured_prune(small_net(), COUPLINGS, 1, scores=np.array([1.0, np.nan, 2.0]))
    with pytest.raises(RefquantError, match="unknown group"):
        structured_prune(small_net(), COUPLINGS, {"fc9.weight:0": 1})
    with pytest.raises(RefquantError, match="norm"):
        structured_prune(small_net(), COUPLINGS, 1, norm="l3")


@pytest.mark.parametrize(
    "args, match",
    [
        # channel 5 of 4 gave flat indices [10, 11] past C*R = 8; -1 gave [-2, -1];
        # 'a' / None raised ValueError / TypeError; repeat=-1 returned nothing
        (([5], 4, 2), "channels"),
        (([-1], 4, 2), "channels"),
        ((["a"], 4, 2), "channels"),
        ((None, 4, 2), "channels"),
        (([1], 4, -1), "repeat"),
        (([1], "a", 2), "n_channels"),
        (([1], 4, 2, "rows"), "order"),
    ],
)
def test_channel_to_columns_refuses_channels_outside_the_axis(args, match):
    with pytest.raises(RefquantError, match=match):
        channel_to_columns(*args)
