"""refquant.compat.torch_pruning against Torch-Pruning's importance classes on small real models.

The group Torch-Pruning builds for a layer's output channels is written out
by hand as (tensor name, axis) pairs in the same order. The models are float64,
so Torch-Pruning's per-tensor sums are float64 as refquant's are; both then
reduce and normalise in float32. No normaliser and the ``max`` and ``standarization``
normalisers agree bit for bit (asserted so); the normalisers that reduce in float32
(``sum``, ``mean``, ``lamp``, ``gaussian``) differ by summation order, and each is held
to the bound measured on these models (``ULPS``).
"""

import numpy as np
import pytest
from helpers import import_peer
from hypothesis import given, settings
from hypothesis import strategies as st

from refquant.compat import torch_pruning as rtp
from refquant.prune.masks import prune_count, unstructured_mask

pytestmark = pytest.mark.peer

REDUCTIONS = ["sum", "mean", "max", "prod", "first"]
NORMALIZERS = [None, "sum", "mean", "max", "gaussian", "standarization", "lamp"]


@pytest.fixture(scope="module")
def peers():
    torch = import_peer("torch")
    tp = import_peer("torch_pruning")
    return torch, tp


def build(torch, tp, kind, seed=0, width=None):
    nn = torch.nn
    torch.manual_seed(seed)
    if kind == "mlp":
        w = width or 6
        model = nn.Sequential(nn.Linear(8, w), nn.BatchNorm1d(w), nn.ReLU(), nn.Linear(w, 4))
        x = torch.randn(5, 8)
        root, fn = model[0], tp.prune_linear_out_channels
    else:
        w = width or 4
        model = nn.Sequential(nn.Conv2d(3, w, 3), nn.BatchNorm2d(w), nn.ReLU(), nn.Conv2d(w, 5, 3))
        x = torch.randn(2, 3, 7, 7)
        root, fn = model[0], tp.prune_conv_out_channels
    model = model.double()
    x = x.double()
    with torch.no_grad():
        model[1].weight.uniform_(-1, 1)
        model[1].bias.uniform_(-1, 1)
    model(x).pow(2).sum().backward()
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    n = root.out_channels if kind == "conv" else root.out_features
    group = dg.get_pruning_group(root, fn, idxs=list(range(n)))
    params = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()
              if v.dtype == torch.float64}
    grads = {k: p.grad.numpy().copy() for k, p in model.named_parameters()}
    return group, params, grads


GROUP = [("0.weight", 0), ("1.weight", 0), ("3.weight", 1)]

EXACT = (None, "max", "standarization")
# measured on the two models below, every reduction, p and bias (Torch-Pruning 1.6.1, torch
# 2.13): sum 2 ulp, mean 2, lamp 7 (LAMPImportance 5); gaussian 15 spacings of the largest
# |score| (its mean subtraction turns one ulp of the mean into many on scores near it)
ULPS = {"sum": 2, "mean": 2, "lamp": 7}
GAUSSIAN_SPACINGS = 15


def assert_bits_equal(got, want):
    assert got.dtype == want.dtype == np.float32 and got.shape == want.shape
    bad = (got.view(np.int32) != want.view(np.int32)) & ~(np.isnan(got) & np.isnan(want))
    assert not bad.any(), (np.flatnonzero(bad)[:5], got[bad][:5], want[bad][:5])


def assert_within_ulps(got, want, ulps):
    assert got.dtype == want.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    diff = np.abs(got[ok].view(np.int32).astype(np.int64) - want[ok].view(np.int32).astype(np.int64))
    assert diff.max(initial=0) <= ulps, (diff.max(), got, want)


def assert_as_claimed(got, want, normalizer):
    if normalizer in EXACT:
        assert_bits_equal(got, want)
    elif normalizer == "gaussian":
        assert np.abs(got - want).max() <= GAUSSIAN_SPACINGS * np.spacing(np.abs(want).max())
    else:
        assert_within_ulps(got, want, ULPS[normalizer])


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("normalizer", NORMALIZERS)
def test_magnitude_importance_equals_torch_pruning(peers, kind, reduction, normalizer):
    torch, tp = peers
    group, params, _ = build(torch, tp, kind)
    for p in (1, 2):
        for bias in (False, True):
            want = tp.importance.MagnitudeImportance(
                p=p, group_reduction=reduction, normalizer=normalizer, bias=bias)(group).numpy()
            got = rtp.MagnitudeImportance(p=p, group_reduction=reduction, normalizer=normalizer,
                                          bias=bias)(params, GROUP)
            assert_as_claimed(got, want, normalizer)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), width=st.integers(1, 40), kind=st.sampled_from(["mlp", "conv"]),
       normalizer=st.sampled_from(EXACT), p=st.sampled_from([1, 2]), bias=st.booleans())
def test_exact_normalizers_equal_torch_pruning_bit_for_bit_on_random_models(
        peers, seed, width, kind, normalizer, p, bias):
    torch, tp = peers
    group, params, _ = build(torch, tp, kind, seed=seed, width=width)
    for reduction in REDUCTIONS:
        want = tp.importance.MagnitudeImportance(
            p=p, group_reduction=reduction, normalizer=normalizer, bias=bias)(group).numpy()
        got = rtp.MagnitudeImportance(p=p, group_reduction=reduction, normalizer=normalizer,
                                      bias=bias)(params, GROUP)
        assert_bits_equal(got, want)


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("multivariable", [False, True])
def test_taylor_importance_equals_torch_pruning_which_ignores_batchnorm(peers, kind, multivariable):
    torch, tp = peers
    group, params, grads = build(torch, tp, kind)
    for reduction in REDUCTIONS:
        want = tp.importance.TaylorImportance(group_reduction=reduction, normalizer="mean",
                                              multivariable=multivariable)(group).numpy()
        got = rtp.TaylorImportance(group_reduction=reduction, normalizer="mean",
                                   multivariable=multivariable)(
            params, [("0.weight", 0), ("3.weight", 1)], grads)
        assert_as_claimed(got, want, "mean")


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_bn_scale_and_lamp_importance_equal_torch_pruning(peers, kind):
    torch, tp = peers
    group, params, _ = build(torch, tp, kind)
    assert_as_claimed(rtp.BNScaleImportance()(params, GROUP),
                      tp.importance.BNScaleImportance()(group).numpy(), "mean")
    for reduction in REDUCTIONS:
        assert_as_claimed(rtp.LAMPImportance(group_reduction=reduction)(params, GROUP),
                          tp.importance.LAMPImportance(group_reduction=reduction)(group).numpy(), "lamp")


def run_pruner(torch, tp, n, ratio, steps):
    nn = torch.nn
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, n), nn.ReLU(), nn.Linear(n, 3))
    original = model[0].weight.detach().numpy().copy()
    pruner = tp.pruner.MagnitudePruner(
        model, example_inputs=torch.randn(2, 8), importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio, ignored_layers=[model[2]], iterative_steps=steps)
    params = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    kept = []
    for _ in range(steps):
        pruner.step()
        rows = model[0].weight.detach().numpy()
        kept.append(sorted(int(np.flatnonzero((original == r).all(axis=1))[0]) for r in rows))
    return params, kept


@pytest.mark.parametrize("n, ratio", [(7, 0.5), (5, 0.5), (10, 0.7), (7, 0.0), (9, 1 / 3)])
def test_torch_pruning_keeps_int_of_n_times_one_minus_ratio_and_the_same_channels(peers, n, ratio):
    torch, tp = peers
    params, kept = run_pruner(torch, tp, n, ratio, 1)
    scores = rtp.MagnitudeImportance(p=2)(params, [("0.weight", 0), ("2.weight", 1)])
    mask = unstructured_mask(scores, ratio, rule="torch_pruning", relative_to="initial")
    assert len(kept[0]) == n - prune_count(ratio, n, rule="torch_pruning")
    assert kept[0] == np.flatnonzero(mask).tolist()


def test_iterative_torch_pruning_counts_relative_to_the_initial_size(peers):
    torch, tp = peers
    params, kept = run_pruner(torch, tp, 10, 0.5, 3)
    scores = rtp.MagnitudeImportance(p=2)(params, [("0.weight", 0), ("2.weight", 1)])
    mask = None
    for step, k in enumerate(kept, start=1):
        ratio = step / 3 * 0.5  # tp's linear_scheduler
        mask = unstructured_mask(scores, ratio, rule="torch_pruning", previous_mask=mask,
                                 relative_to="initial")
        assert np.flatnonzero(mask).tolist() == k
    assert [len(k) for k in kept] == [8, 6, 5]  # int(10 * 5/6), int(10 * 2/3), int(5.0)


def test_torch_pruning_quirk_ratio_point_nine_of_ten_keeps_zero_so_prunes_nothing(peers):
    torch, tp = peers
    assert prune_count(0.9, 10, rule="torch_pruning") == 10  # int(10 * 0.09999999999999998) = 0 kept
    _, kept = run_pruner(torch, tp, 10, 0.9, 1)
    assert len(kept[0]) == 10  # check_pruning_group refuses to remove every channel


def test_torch_pruning_quirk_manual_prune_width_prunes_the_kept_fraction(peers):
    torch, tp = peers
    nn = torch.nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 10), nn.ReLU(), nn.Linear(10, 3))
    pruner = tp.pruner.MagnitudePruner(model, example_inputs=torch.randn(2, 8),
                                       importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=0.5, ignored_layers=[model[2]])
    pruner.manual_prune_width(model[0], tp.prune_linear_out_channels, 0.3)
    assert model[0].out_features == 3  # int(10 * (1 - 0.3)) = 7 pruned, not 3


@pytest.mark.parametrize("normalizer", ["standarization", "max"])
def test_min_max_normalizers_equal_torch_pruning_bit_for_bit(peers, normalizer):
    # torch evaluates (s - min) / (max - min + 1e-8) in float32; refquant evaluated
    # it in float64 and rounded once: 0.43157318 and 0.65774876 where torch (and
    # now refquant) give 0.43157321 and 0.65774882
    torch, tp = peers
    x = np.array([1.1360465288162231, 0.10970640182495117, 0.5526472926139832, 0.7847803831100464],
                 dtype=np.float32)
    model = torch.nn.Sequential(torch.nn.Linear(1, 4, bias=False)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor(x.astype(np.float64))[:, None])
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.ones(1, 1).double())
    group = dg.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=list(range(4)))
    want = tp.importance.MagnitudeImportance(p=1, group_reduction="first", normalizer=normalizer)(group).numpy()
    got = rtp.MagnitudeImportance(p=1, group_reduction="first", normalizer=normalizer)(
        {"0.weight": x[:, None].astype(np.float64)}, [("0.weight", 0)])
    assert got.dtype == want.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    if normalizer == "standarization":
        assert got[2] == np.float32(0.43157321214675903)
