"""refquant.compat.torch_prune: torch.nn.utils.prune's semantics on dicts, worked by hand.

(Named *_dicts so as not to clash with tests/peers/test_torch_prune.py under pytest's
default import mode.)
"""

import numpy as np
import pytest

from refquant import RefquantError
from refquant.compat import torch_prune as prune


def module(w, dtype=np.float32):
    return {"weight": np.array(w, dtype=dtype)}


def test_l1_unstructured_uses_torch_names_mask_dtype_and_the_signed_product():
    m = prune.l1_unstructured(module([[1.0, -4.0], [3.0, -2.0]]), "weight", amount=0.5)
    assert sorted(m) == ["weight", "weight_mask", "weight_orig"]
    assert m["weight_mask"].dtype == np.float32
    assert m["weight_mask"].tolist() == [[0.0, 1.0], [1.0, 0.0]]
    assert m["weight_orig"].tolist() == [[1.0, -4.0], [3.0, -2.0]]
    assert m["weight"][1, 1] == 0 and np.signbit(m["weight"][1, 1])  # -2 * 0 = -0.0


def test_plain_naming_keeps_only_the_pruned_weight_and_its_mask():
    m = prune.l1_unstructured(module([1.0, 2.0, 3.0]), "weight", 1, naming="plain")
    assert sorted(m) == ["weight", "weight_mask"] and m["weight"].tolist() == [0.0, 2.0, 3.0]
    prune.l1_unstructured(m, "weight", 1, naming="plain")
    assert m["weight"].tolist() == [0.0, 0.0, 3.0]


def test_a_pruned_nan_stays_nan_as_in_torch():
    m = prune.l1_unstructured(module([np.nan, 1.0, 2.0]), "weight", 1)  # |1| is lowest
    m = prune.custom_from_mask(m, "weight", np.array([0.0, 1.0, 1.0]))
    assert np.isnan(m["weight"][0]) and m["weight_mask"].tolist() == [0.0, 0.0, 1.0]


def test_repeated_l1_counts_on_the_remaining_entries_and_remove_makes_it_permanent():
    m = module(np.arange(1.0, 11.0))
    prune.l1_unstructured(m, "weight", 0.5)  # 5 pruned
    prune.l1_unstructured(m, "weight", 0.5)  # round(2.5) = 2 more of the 5 left
    assert m["weight_mask"].tolist() == [0] * 7 + [1] * 3
    prune.remove(m, "weight")
    assert sorted(m) == ["weight"] and m["weight"].tolist() == [0] * 7 + [8.0, 9.0, 10.0]


def test_importance_scores_are_ranked_by_absolute_value():
    m = prune.l1_unstructured(module([1.0, 2.0, 3.0, 4.0]), "weight", 2,
                              importance_scores=np.array([-10.0, 1.0, -2.0, 5.0]))
    assert m["weight_mask"].tolist() == [1.0, 0.0, 0.0, 1.0]


def test_ln_structured_drops_channels_of_lowest_norm_along_dim():
    w = [[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]]  # row norms 5, 1, 2; column norms sqrt 10, sqrt 20
    m = prune.ln_structured(module(w), "weight", 1, n=2, dim=0)
    assert m["weight_mask"].tolist() == [[1, 1], [0, 0], [1, 1]]
    m = prune.ln_structured(module(w), "weight", 1, n=2, dim=-1)
    assert m["weight_mask"].tolist() == [[0, 1], [0, 1], [0, 1]]
    m = prune.ln_structured(module(w), "weight", 1, n="fro", dim=0)
    assert m["weight_mask"].tolist() == [[1, 1], [0, 0], [1, 1]]


def test_repeated_structured_pruning_skips_channels_already_zero():
    m = prune.ln_structured(module([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]]), "weight", 1, n=1, dim=0)
    prune.ln_structured(m, "weight", 0.5, n=1, dim=0)  # 2 channels left: round(1.0) = 1
    assert m["weight_mask"].tolist() == [[1, 1], [0, 0], [0, 0]]


def test_ties_prune_the_lower_index_first():
    m = prune.l1_unstructured(module([2.0, -2.0, 2.0, 1.0]), "weight", 2)
    assert m["weight_mask"].tolist() == [0.0, 1.0, 1.0, 0.0]
    m = prune.ln_structured(module([[1.0], [1.0], [1.0]]), "weight", 2, n=2, dim=0)
    assert m["weight_mask"].tolist() == [[0.0], [0.0], [1.0]]


def test_global_unstructured_ranks_all_tensors_and_repeats_on_survivors():
    a, b = module([1.0, 5.0]), module([2.0, 0.5, 7.0])
    prune.global_unstructured([(a, "weight"), (b, "weight")], prune.L1Unstructured, amount=2)
    assert a["weight_mask"].tolist() == [0.0, 1.0] and b["weight_mask"].tolist() == [1.0, 0.0, 1.0]
    prune.global_unstructured([(a, "weight"), (b, "weight")], prune.L1Unstructured, amount=0.34)
    # 3 survivors, round(1.02) = 1 more: the 2.0
    assert b["weight_mask"].tolist() == [0.0, 0.0, 1.0]


def test_global_unstructured_refuses_a_method_name_and_names_the_class():
    # torch 2.13: TypeError: 'str' object is not callable; refquant was the same Python error
    a = module([1.0, 5.0])
    with pytest.raises(prune.PruneTypeError, match=r"L1Unstructured.*pass refquant\.compat\.torch_prune\.L1Unstructured"):
        prune.global_unstructured([(a, "weight")], pruning_method="l1_unstructured", amount=1)
    with pytest.raises(RefquantError, match="RandomUnstructured"):
        prune.global_unstructured([(a, "weight")], pruning_method="random_unstructured", amount=1)
    for bad in ("l2", 5, None):
        with pytest.raises(TypeError, match="pruning method class"):  # also a TypeError, as torch's
            prune.global_unstructured([(a, "weight")], pruning_method=bad, amount=1)
    assert "weight_mask" not in a  # nothing was applied


def test_global_unstructured_takes_importance_as_a_list_or_by_name():
    a, b = module([1.0, 5.0]), module([2.0, 0.5])
    prune.global_unstructured([(a, "weight"), (b, "weight")], prune.L1Unstructured,
                              importance_scores=[np.array([9.0, 0.0]), None], amount=1)
    assert a["weight_mask"].tolist() == [1.0, 0.0]
    c, d = {"x": np.array([1.0, 2.0])}, {"y": np.array([3.0, 4.0])}
    prune.global_unstructured([(c, "x"), (d, "y")], prune.L1Unstructured,
                              importance_scores={"y": np.array([0.0, 9.0])}, amount=1)
    assert c["x_mask"].tolist() == [1.0, 1.0] and d["y_mask"].tolist() == [0.0, 1.0]


def test_random_methods_are_seeded_and_prune_exact_counts():
    m1 = prune.random_unstructured(module(np.ones(10)), "weight", 0.3, seed=5)
    m2 = prune.random_unstructured(module(np.ones(10)), "weight", 0.3, seed=5)
    assert np.array_equal(m1["weight_mask"], m2["weight_mask"])
    assert (m1["weight_mask"] == 0).sum() == 3
    prune.random_unstructured(m1, "weight", 2, seed=1)
    assert (m1["weight_mask"] == 0).sum() == 5
    s = prune.random_structured(module(np.ones((4, 6))), "weight", 0.5, dim=1, seed=3)
    assert (s["weight_mask"].sum(axis=0) == 0).sum() == 3


def test_identity_custom_from_mask_and_is_pruned():
    m = module([1.0, 2.0])
    assert not prune.is_pruned(m)
    prune.identity(m, "weight")
    assert prune.is_pruned(m) and m["weight_mask"].tolist() == [1.0, 1.0]
    prune.custom_from_mask(m, "weight", [0, 1])
    prune.custom_from_mask(m, "weight", [1, 0])
    assert m["weight_mask"].tolist() == [0.0, 0.0]


def test_the_weight_arrays_are_never_written_to():
    w = np.array([3.0, 1.0, 2.0], dtype=np.float32)
    m = {"weight": w}
    prune.l1_unstructured(m, "weight", 1)
    prune.remove(m, "weight")
    assert w.tolist() == [3.0, 1.0, 2.0]


@pytest.mark.parametrize(
    "amount, message",
    [
        (-1, "amount=-1 should either be a float in the range [0, 1] or a non-negative integer"),
        (1.5, "amount=1.5 should either be a float in the range [0, 1] or a non-negative integer"),
        (5, "amount=5 should be smaller than the number of parameters to prune=4"),
    ],
)
def test_amount_errors_carry_torch_messages(amount, message):
    m = module([1.0, 2.0, 3.0, 4.0])
    with pytest.raises(RefquantError) as e:
        prune.l1_unstructured(m, "weight", amount)
    assert str(e.value) == message
    assert sorted(m) == ["weight"]  # nothing changed


def test_type_and_dim_errors_are_also_type_and_index_errors():
    with pytest.raises(TypeError, match="Invalid type for amount: a. Must be int or float."):
        prune.l1_unstructured(module([1.0]), "weight", "a")
    with pytest.raises(IndexError, match="Invalid index 2"):
        prune.ln_structured(module([[1.0]]), "weight", 1, n=2, dim=2)
    with pytest.raises(RefquantError, match="Structured pruning can only be applied to multidimensional"):
        prune.ln_structured(module([1.0]), "weight", 1, n=2, dim=0)
    with pytest.raises(TypeError, match="unstructured"):
        prune.global_unstructured([(module([1.0]), "weight")], prune.LnStructured, amount=1, n=2)


def test_other_bad_input():
    with pytest.raises(RefquantError, match="has to be pruned before pruning can be removed"):
        prune.remove(module([1.0]), "weight")
    with pytest.raises(RefquantError, match="no tensor named 'bias'"):
        prune.l1_unstructured(module([1.0]), "bias", 0)
    with pytest.raises(RefquantError, match="importance_scores should have the same shape"):
        prune.l1_unstructured(module([1.0, 2.0]), "weight", 1, importance_scores=np.ones(3))
    with pytest.raises(RefquantError, match="nuc"):
        prune.ln_structured(module([[1.0]]), "weight", 1, n="nuc", dim=0)
    with pytest.raises(RefquantError, match="naming"):
        prune.l1_unstructured(module([1.0]), "weight", 0, naming="keras")


@pytest.mark.parametrize("fn, args", [("l1_unstructured", ()), ("random_unstructured", ()),
                                      ("ln_structured", (2, 0)), ("random_structured", (0,))])
def test_nan_amount_is_a_refquant_error_with_torchs_message(fn, args):
    # round(nan * size) raised a bare ValueError (torch raises the same ValueError)
    m = module([[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(RefquantError, match="^cannot convert float NaN to integer$"):
        getattr(prune, fn)(m, "weight", float("nan"), *args)
    assert sorted(m) == ["weight"]


@pytest.mark.parametrize("fn, args, k", [("l1_unstructured", (), "topk"),
                                         ("random_unstructured", (), "topk"),
                                         ("random_structured", (0,), "kthvalue")])
def test_amount_true_is_a_type_error_where_torch_passes_it_to_topk(fn, args, k):
    # torch hands the bool count to torch.topk / torch.kthvalue, which refuse a bool k;
    # refquant pruned one entry (and its docstring said torch did too)
    m = module([[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(TypeError, match=f"^{k}\\(\\): argument 'k' must be int, not bool$"):
        getattr(prune, fn)(m, "weight", True, *args)
    assert sorted(m) == ["weight"]


def test_amount_true_prunes_one_channel_in_ln_structured_and_false_prunes_nothing():
    # ln_structured hands topk the count to keep (size - True, an int): it works in torch
    m = prune.ln_structured(module([[1.0, 2.0], [3.0, 4.0]]), "weight", True, n=1, dim=0)
    assert m["weight_mask"].tolist() == [[0.0, 0.0], [1.0, 1.0]]
    m = prune.l1_unstructured(module([1.0, 2.0]), "weight", False)
    assert m["weight_mask"].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("shape, dim", [((3, 0), 0), ((0, 3), 1)])
def test_ln_structured_on_channels_with_no_entries_gives_an_empty_mask(shape, dim):
    # torch.norm of an empty slice is 0: torch returns an (empty) mask; ln_norm refused
    m = prune.ln_structured(module(np.zeros(shape)), "weight", 1, n=2, dim=dim)
    assert m["weight_mask"].shape == shape and m["weight"].shape == shape


@pytest.mark.parametrize("n, keep", [(-1, [0, 1, 0]), (-2, [0, 1, 0]), (-0.5, [0, 1, 0])])
def test_ln_structured_accepts_negative_n_as_torch_norm_does(n, keep):
    # torch.norm(p<0) = (sum |x|^p)^(1/p): a zero entry gives |0|^p = inf, norm 0.
    # rows [1,2,0] -> 0, [1,2,4] -> (1 + 2^p + 4^p)^(1/p) > 0, [0,0,0] -> 0; prune
    # one channel: the ties at 0 lose the lower index (row 0)
    w = [[1.0, 2.0, 0.0], [1.0, 2.0, 4.0], [0.0, 0.0, 0.0]]
    m = prune.ln_structured(module(w), "weight", 1, n=n, dim=0)
    assert m["weight_mask"][:, 0].tolist() == [0.0, 1.0, 1.0]
    m = prune.ln_structured(module(w), "weight", 2, n=n, dim=0)
    assert m["weight_mask"][:, 0].tolist() == [float(x) for x in keep]


def _w():
    return {"weight": np.arange(12.0).reshape(3, 4) - 5}


@pytest.mark.parametrize(
    "call, kind",
    [
        # each raised a plain TypeError / ValueError / OverflowError / numpy error before
        (lambda: prune.ln_structured(_w(), "weight", 1, 2, "a"), TypeError),
        (lambda: prune.random_structured(_w(), "weight", 1, "a"), TypeError),
        (lambda: prune.l1_unstructured(_w(), None, 1), TypeError),
        (lambda: prune.l1_unstructured({"weight": np.array(["x", "y"])}, "weight", 1), TypeError),
        (lambda: prune.l1_unstructured({"weight": [[1.0], [1.0, 2.0]]}, "weight", 1), None),
        (lambda: prune.l1_unstructured(_w(), "weight", 2, importance_scores=[[1.0], [1.0, 2.0]]), None),
        (lambda: prune.custom_from_mask(_w(), "weight", [[1.0], [1.0, 2.0]]), None),
        (lambda: prune.random_unstructured(_w(), "weight", 2, seed="a"), None),
        (lambda: prune.random_structured(_w(), "weight", 1, 0, seed=-1), None),
        (lambda: prune.ln_structured(_w(), "weight", 1, 10**400, 0), None),
        (lambda: prune.global_unstructured(["a"], prune.L1Unstructured, amount=1), TypeError),
        (lambda: prune.global_unstructured(np.array(0.5), prune.L1Unstructured, amount=1), TypeError),
        (lambda: prune.global_unstructured([], prune.L1Unstructured, amount=1), None),
    ],
)
def test_malformed_arguments_are_refquant_errors(call, kind):
    with pytest.raises(RefquantError) as e:
        call()
    if kind is not None:
        assert isinstance(e.value, kind)
