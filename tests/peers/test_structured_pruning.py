"""Declared dependency groups against Torch-Pruning's traced ones (VainF/Torch-Pruning, torch CPU).

Same channels removed from the same tensors (BatchNorm running statistics, the
columns after a flatten, residual adds), and the same group scores as
``GroupMagnitudeImportance(p=2, normalizer=None, bias=False)``, whose per-dependency
score is the root-free :math:`\\sum |w|^2` (refquant's ``norm="l2_squared"``).
"""

import numpy as np
import pytest
from helpers import import_peer

from refquant.prune.structured import (
    build_dependency_groups,
    group_channel_scores,
    structured_prune,
)

pytestmark = pytest.mark.peer


def _state(model):
    return {k: v.detach().numpy().astype(np.float64) for k, v in model.state_dict().items()
            if v.dtype.is_floating_point}


def _randomize(torch, model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dtype.is_floating_point:
                t.copy_(torch.rand(t.shape, generator=g) + 0.1 if "running_var" in name
                        else torch.randn(t.shape, generator=g))


def _linear_bn_linear(torch):
    nn = torch.nn
    model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).eval()
    _randomize(torch, model, 0)
    return model


LBL_COUPLINGS = {"0.weight:0": ["0.bias:0", "1.weight:0", "1.bias:0", "1.running_mean:0",
                                "1.running_var:0", "3.weight:1"]}


@pytest.mark.parametrize("reduction", ["sum", "mean", "max"])
def test_group_scores_equal_torch_pruning_group_magnitude(reduction):
    torch = import_peer("torch")
    tp = import_peer("torch_pruning")
    model = _linear_bn_linear(torch)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(2, 5))
    group = dg.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=list(range(6)))
    theirs = tp.importance.GroupMagnitudeImportance(p=2, group_reduction=reduction, normalizer=None)(group)
    arrays = _state(model)
    (g,) = build_dependency_groups(arrays, LBL_COUPLINGS)
    ours = group_channel_scores(arrays, g, norm="l2_squared", reduce=reduction,
                                members=["0.weight", "1.weight", "3.weight"])
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=2e-6)


def test_pruned_arrays_equal_torch_pruning_including_batchnorm_statistics():
    torch = import_peer("torch")
    tp = import_peer("torch_pruning")
    model = _linear_bn_linear(torch)
    arrays = _state(model)
    ours = structured_prune(arrays, LBL_COUPLINGS, 2, scores=np.array([5.0, 0.5, 4.0, 3.0, 0.1, 6.0]))
    assert ours.kept["0.weight:0"].tolist() == [0, 2, 3, 5]
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(2, 5))
    dg.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=[1, 4]).prune()
    theirs = _state(model)
    assert set(theirs) == set(ours.arrays)
    for name, a in theirs.items():
        np.testing.assert_array_equal(ours.arrays[name].astype(np.float32), a.astype(np.float32), err_msg=name)


def test_channel_to_columns_after_flatten_equals_torch_pruning():
    torch = import_peer("torch")
    tp = import_peer("torch_pruning")
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 2 * 2, 2)).eval()
    _randomize(torch, model, 1)
    arrays = _state(model)
    couplings = {"0.weight:0": ["0.bias:0", {"tensor": "3.weight", "axis": 1, "repeat": 4,
                                              "order": "channel_major"}]}
    ours = structured_prune(arrays, couplings, 1, scores=np.array([2.0, 1.0, 3.0]))
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 2, 2, 2))
    dg.get_pruning_group(model[0], tp.prune_conv_out_channels, idxs=[1]).prune()
    theirs = _state(model)
    assert theirs["3.weight"].shape == (2, 8)
    for name, a in theirs.items():
        np.testing.assert_array_equal(ours.arrays[name].astype(np.float32), a.astype(np.float32), err_msg=name)


def test_residual_add_ties_the_same_channels_as_torch_pruning():
    torch = import_peer("torch")
    tp = import_peer("torch_pruning")
    nn = torch.nn

    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc0, self.fc1, self.fc2, self.head = nn.Linear(3, 4), nn.Linear(4, 5), nn.Linear(5, 4), nn.Linear(4, 2)

        def forward(self, x):
            h = self.fc0(x)
            return self.head(h + self.fc2(torch.relu(self.fc1(h))))

    model = Res().eval()
    _randomize(torch, model, 2)
    arrays = _state(model)
    couplings = {"fc0.weight:0": ["fc0.bias:0", "fc1.weight:1", "head.weight:1"],
                 "fc2.weight:0": ["fc2.bias:0", "head.weight:1"]}  # shares head.weight:1 -> merged
    ours = structured_prune(arrays, couplings, 1, norm="l2_squared", reduce="sum",
                            score_members=["fc0.weight", "fc1.weight", "fc2.weight", "head.weight"])
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3))
    group = dg.get_pruning_group(model.fc0, tp.prune_linear_out_channels, idxs=list(range(4)))
    imp = tp.importance.GroupMagnitudeImportance(p=2, group_reduction="sum", normalizer=None)(group)
    np.testing.assert_allclose(ours.scores["fc0.weight:0"], imp.numpy(), rtol=2e-6)
    pruned = int(np.argmin(imp.numpy()))
    dg.get_pruning_group(model.fc0, tp.prune_linear_out_channels, idxs=[pruned]).prune()
    theirs = _state(model)
    for name, a in theirs.items():
        np.testing.assert_array_equal(ours.arrays[name].astype(np.float32), a.astype(np.float32), err_msg=name)
