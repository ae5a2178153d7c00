"""refquant.compat.torch_prune against torch.nn.utils.prune (torch CPU), mask for mask.

Inputs are tie-free (distinct magnitudes; channel norms apart by more than
float64 noise), so torch.topk's undocumented tie order cannot matter; on ties
only the counts are compared, and refquant's own rule is pinned in
tests/compat/test_torch_prune_dicts.py. Tensors are float64 on both sides.
"""

import numpy as np
import pytest
from helpers import import_peer
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refquant import RefquantError
from refquant.compat import torch_prune as rp

pytestmark = pytest.mark.peer


@pytest.fixture(scope="module")
def torch():
    return import_peer("torch")


def tmodule(torch, w):
    m = torch.nn.Module()
    m.weight = torch.nn.Parameter(torch.tensor(np.asarray(w, dtype=np.float64)))
    return m


def distinct_abs(w):
    a = np.abs(w).ravel()
    return np.unique(a).size == a.size


shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6)
arrays = shapes.flatmap(lambda s: hnp.arrays(np.float64, s, elements=st.floats(-50, 50), unique=True))


def amounts(n):
    return st.one_of(st.floats(0, 1), st.integers(0, n))


def both(torch_call, ref_call):
    """Run both; they must both fail with the same message or both succeed."""
    try:
        torch_call()
        t_err = None
    except ValueError as e:
        t_err = str(e)
    try:
        ref_call()
        r_err = None
    except RefquantError as e:
        r_err = str(e)
    assert (t_err is None) == (r_err is None), (t_err, r_err)
    if t_err is not None:
        assert r_err == t_err
    return t_err is None


@settings(max_examples=60)
@given(arrays, st.data())
def test_l1_unstructured_masks_equal_torch(torch, w, data):
    assume(distinct_abs(w))
    from torch.nn.utils import prune

    amount = data.draw(amounts(w.size + 1))
    tm, rm = tmodule(torch, w), {"weight": w.copy()}
    if both(lambda: prune.l1_unstructured(tm, "weight", amount),
            lambda: rp.l1_unstructured(rm, "weight", amount)):
        np.testing.assert_array_equal(rm["weight_mask"], tm.weight_mask.numpy())
        np.testing.assert_array_equal(rm["weight"], tm.weight.detach().numpy())


def norms_tie_free(w, mask, dim, n):
    """Channel norms of the masked weight over still-alive channels, apart by > 1e-9 relative."""
    t = np.moveaxis(w * mask, dim, 0).reshape(w.shape[dim], -1)
    alive = np.moveaxis(mask, dim, 0).reshape(w.shape[dim], -1).sum(axis=1) != 0
    v = np.linalg.norm(t[alive], ord=n, axis=1) if n not in (np.inf, -np.inf) else (
        np.abs(t[alive]).max(axis=1) if n == np.inf else np.abs(t[alive]).min(axis=1))
    v = np.sort(v)
    return bool(np.all(np.diff(v) > 1e-9 * np.maximum(1.0, v[1:]))) if v.size > 1 else True


ops = st.lists(
    st.one_of(
        st.tuples(st.just("l1"), st.one_of(st.floats(0, 1), st.integers(0, 4))),
        st.tuples(st.just("ln"), st.one_of(st.floats(0, 1), st.integers(0, 3)),
                  st.sampled_from([1, 2, 3, np.inf, -np.inf]), st.integers(-2, 1)),
    ),
    min_size=1, max_size=4,
)


@settings(max_examples=40)
@given(hnp.array_shapes(min_dims=2, max_dims=3, min_side=2, max_side=5)
       .flatmap(lambda s: hnp.arrays(np.float64, s, elements=st.floats(-50, 50), unique=True)), ops)
def test_repeated_unstructured_and_structured_pruning_equals_torch(torch, w, seq):
    assume(distinct_abs(w))
    from torch.nn.utils import prune

    tm, rm = tmodule(torch, w), {"weight": w.copy()}
    all_ok = True
    for op in seq:
        mask = rm.get("weight_mask", np.ones_like(w))
        if op[0] == "l1":
            ok = both(lambda op=op: prune.l1_unstructured(tm, "weight", op[1]),
                      lambda op=op: rp.l1_unstructured(rm, "weight", op[1]))
        else:
            _, amount, n, dim = op
            dim = dim if dim < 0 else min(dim, w.ndim - 1)
            assume(norms_tie_free(w, mask, dim, n))
            kw = dict(amount=amount, n=n, dim=dim)
            ok = both(lambda kw=kw: prune.ln_structured(tm, "weight", **kw),
                      lambda kw=kw: rp.ln_structured(rm, "weight", **kw))
        if not ok:
            # torch has already unhooked the method when compute_mask fails inside a
            # PruningContainer, so its module can no longer be remove()d; stop here.
            all_ok = False
            break
        np.testing.assert_array_equal(rm["weight_mask"], tm.weight_mask.numpy())
    if "weight_mask" in rm and all_ok:
        np.testing.assert_array_equal(rm["weight_orig"], tm.weight_orig.detach().numpy())
        prune.remove(tm, "weight")
        rp.remove(rm, "weight")
        np.testing.assert_array_equal(rm["weight"], tm.weight.detach().numpy())


@settings(max_examples=50)
@given(st.lists(shapes, min_size=1, max_size=3), st.data())
def test_repeated_global_unstructured_equals_torch(torch, shape_list, data):
    from torch.nn.utils import prune

    sizes = [int(np.prod(s)) for s in shape_list]
    vals = data.draw(hnp.arrays(np.float64, sum(sizes), elements=st.floats(0.01, 50), unique=True))
    signs = data.draw(hnp.arrays(np.float64, sum(sizes), elements=st.sampled_from([-1.0, 1.0])))
    vals = vals * signs
    parts = np.split(vals, np.cumsum(sizes)[:-1])
    ws = [p.reshape(s) for p, s in zip(parts, shape_list, strict=True)]
    tms = [tmodule(torch, w) for w in ws]
    rms = [{"weight": w.copy()} for w in ws]
    for _ in range(data.draw(st.integers(1, 3))):
        amount = data.draw(amounts(sum(sizes)))
        if not both(
            lambda amount=amount: prune.global_unstructured(
                [(m, "weight") for m in tms], prune.L1Unstructured, amount=amount),
            lambda amount=amount: rp.global_unstructured(
                [(m, "weight") for m in rms], rp.L1Unstructured, amount=amount),
        ):
            break
        for tm, rm in zip(tms, rms, strict=True):
            np.testing.assert_array_equal(rm["weight_mask"], tm.weight_mask.numpy())


@pytest.mark.parametrize("amount", [0.0, 0, 1.0, 0.5, 7], ids=["0.0", "0", "1.0", "0.5", "N"])
def test_boundary_amounts_on_odd_n_equal_torch(torch, amount):
    from torch.nn.utils import prune

    w = np.array([0.3, -1.2, 2.5, -0.7, 0.05, 4.0, -3.1])
    tm, rm = tmodule(torch, w), {"weight": w.copy()}
    prune.l1_unstructured(tm, "weight", amount)
    rp.l1_unstructured(rm, "weight", amount)
    np.testing.assert_array_equal(rm["weight_mask"], tm.weight_mask.numpy())
    expected = {0.0: 0, 1.0: 7, 0.5: 4, 7: 7}[amount]  # round(3.5) = 4
    assert (rm["weight_mask"] == 0).sum() == expected


def test_with_ties_refquant_prunes_the_same_count_as_torch(torch):
    from torch.nn.utils import prune

    w = np.array([[1.0, -1.0, 1.0], [2.0, 1.0, -2.0]])
    tm, rm = tmodule(torch, w), {"weight": w.copy()}
    prune.l1_unstructured(tm, "weight", 0.5)
    rp.l1_unstructured(rm, "weight", 0.5)
    assert (rm["weight_mask"] == 0).sum() == (tm.weight_mask.numpy() == 0).sum() == 3
    assert rm["weight_mask"].tolist() == [[0, 0, 0], [1, 1, 1]]  # refquant: lower index first


def test_importance_scores_and_custom_masks_equal_torch(torch):
    from torch.nn.utils import prune

    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 5))
    s = rng.standard_normal((4, 5))
    tm, rm = tmodule(torch, w), {"weight": w.copy()}
    prune.l1_unstructured(tm, "weight", 0.3, importance_scores=torch.tensor(s))
    rp.l1_unstructured(rm, "weight", 0.3, importance_scores=s)
    custom = (rng.random((4, 5)) > 0.3).astype(np.float64)
    prune.custom_from_mask(tm, "weight", torch.tensor(custom))
    rp.custom_from_mask(rm, "weight", custom)
    prune.ln_structured(tm, "weight", 1, n=1, dim=1, importance_scores=torch.tensor(s))
    rp.ln_structured(rm, "weight", 1, n=1, dim=1, importance_scores=s)
    np.testing.assert_array_equal(rm["weight_mask"], tm.weight_mask.numpy())
    np.testing.assert_array_equal(rm["weight"], tm.weight.detach().numpy())


def test_random_methods_prune_torchs_counts(torch):
    from torch.nn.utils import prune

    for amount in (0.0, 0.3, 0.5, 3, 1.0):
        tm = tmodule(torch, np.ones((4, 6)))
        rm = {"weight": np.ones((4, 6))}
        prune.random_unstructured(tm, "weight", amount)
        rp.random_unstructured(rm, "weight", amount, seed=0)
        assert (rm["weight_mask"] == 0).sum() == (tm.weight_mask.numpy() == 0).sum()
        tm, rm = tmodule(torch, np.ones((4, 6))), {"weight": np.ones((4, 6))}
        prune.random_structured(tm, "weight", amount if amount != 3 else 2, dim=0)
        rp.random_structured(rm, "weight", amount if amount != 3 else 2, dim=0, seed=0)
        assert (rm["weight_mask"] == 0).sum() == (tm.weight_mask.numpy() == 0).sum()


@pytest.mark.parametrize("amount", [-1, 1.5, 9])
def test_amount_error_messages_equal_torch(torch, amount):
    from torch.nn.utils import prune

    with pytest.raises(ValueError) as te:
        prune.l1_unstructured(tmodule(torch, np.ones(4)), "weight", amount)
    with pytest.raises(RefquantError) as re_:
        rp.l1_unstructured({"weight": np.ones(4)}, "weight", amount)
    assert str(re_.value) == str(te.value)


def test_state_dict_names_equal_torch(torch):
    from torch.nn.utils import prune

    tm, rm = tmodule(torch, np.arange(4.0)), {"weight": np.arange(4.0)}
    prune.l1_unstructured(tm, "weight", 2)
    rp.l1_unstructured(rm, "weight", 2)
    assert set(tm.state_dict()) <= set(rm) and set(rm) - set(tm.state_dict()) == {"weight"}


def test_torch_mask_takes_the_importance_dtype_values_and_weight_equal(torch):
    # the docstring said masks have the weight's dtype "as torch's ones_like(orig)";
    # torch's ln_structured / repeated pruning build the mask in the importance
    # scores' dtype (float64 here, on a float32 weight)
    from torch.nn.utils import prune

    w = np.array([[0.5, -2.0, 1.0], [3.0, 0.25, -1.5]], dtype=np.float32)
    s = np.array([[1.0, 4.0, 2.0], [3.0, 0.5, 5.0]])
    tm = torch.nn.Module()
    tm.weight = torch.nn.Parameter(torch.tensor(w))
    rm = {"weight": w.copy()}
    prune.ln_structured(tm, "weight", 1, n=1, dim=1, importance_scores=torch.tensor(s))
    rp.ln_structured(rm, "weight", 1, n=1, dim=1, importance_scores=s)
    assert tm.weight_mask.dtype == torch.float64 and rm["weight_mask"].dtype == np.float32
    np.testing.assert_array_equal(rm["weight_mask"], tm.weight_mask.numpy())  # column 0 (norm 4) pruned
    assert rm["weight_mask"].tolist() == [[0, 1, 1], [0, 1, 1]]
    np.testing.assert_array_equal(rm["weight"], tm.weight.detach().numpy())
    assert tm.weight.dtype == torch.float32


def test_float32_exact_tie_is_ranked_by_torchs_rounding(torch):
    # two channels holding the same magnitudes in another order: equal L0.5 norms
    # in exact arithmetic, two float32 ulps apart in torch (its rounding decides),
    # as the docstring names; refquant's float64 norms agree to 1e-15
    c0 = [1.0, 2.0, 0.0, 2.0, -2.0, 2.0, -3.0, -3.0, 1.0, 3.0, 2.0, -3.0]
    c1 = [1.0, -2.0, 3.0, 2.0, -2.0, -3.0, -3.0, -2.0, 0.0, 2.0, -3.0, -1.0]
    assert sorted(np.abs(c0)) == sorted(np.abs(c1))
    w = np.array([c0, c1], dtype=np.float32).T.copy()
    norms = torch.norm(torch.tensor(w), p=0.5, dim=[0]).numpy()
    assert abs(int(norms.view(np.int32)[0]) - int(norms.view(np.int32)[1])) == 2
    ours = rp._compute_norm(w, 0.5, 1)
    assert abs(ours[0] - ours[1]) <= 1e-15 * ours[0]


@pytest.mark.parametrize("name", ["l1_unstructured", "random_unstructured"])
def test_global_unstructured_method_name_is_a_type_error_in_torch_and_in_refquant(torch, name):
    # torch 2.13 takes only the class (it calls pruning_method(**kwargs)); refquant refuses the
    # name too, with a TypeError that is a RefquantError and names the class to pass
    from torch.nn.utils import prune as tprune

    w = np.float32([[1.0, -2.0], [3.0, 0.5]])
    with pytest.raises(TypeError, match="not callable"):
        tprune.global_unstructured([(tmodule(torch, w), "weight")], pruning_method=name, amount=1)
    with pytest.raises(rp.PruneTypeError, match="Unstructured"):
        rp.global_unstructured([({"weight": w}, "weight")], pruning_method=name, amount=1)
