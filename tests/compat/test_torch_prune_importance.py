"""refquant.compat.torch_pruning: Torch-Pruning's importance classes, worked by hand.

(Named test_torch_prune_importance so as not to clash with
tests/peers/test_torch_pruning.py under pytest's default import mode.)
"""

import numpy as np
import pytest

from refquant import RefquantError
from refquant.compat import torch_pruning as tp

P = {
    "0.weight": np.array([[1.0, 2.0, 2.0], [0.0, 3.0, 4.0]], dtype=np.float32),  # rows: sq 9, 25
    "0.bias": np.array([1.0, -3.0], dtype=np.float32),
    "1.weight": np.array([2.0, -1.0], dtype=np.float32),  # BN scale: sq 4, 1
    "1.bias": np.array([0.5, 0.0], dtype=np.float32),
    "2.weight": np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]], dtype=np.float32),  # cols: 2, 2
}
G = [("0.weight", 0), ("1.weight", 0), ("2.weight", 1)]


@pytest.mark.parametrize(
    "reduction, expected",
    [("sum", [15.0, 28.0]), ("mean", [5.0, 28 / 3]), ("max", [9.0, 25.0]), ("prod", [72.0, 50.0]),
     ("first", [9.0, 25.0])],
)
def test_magnitude_l2_is_the_squared_norm_reduced_over_the_group(reduction, expected):
    out = tp.MagnitudeImportance(p=2, group_reduction=reduction, normalizer=None)(P, G)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_magnitude_p1_and_the_mean_normalizer():
    np.testing.assert_allclose(tp.MagnitudeImportance(1, "sum", None)(P, G), [9.0, 10.0], rtol=1e-7)
    np.testing.assert_allclose(tp.MagnitudeImportance(2, "sum", "mean")(P, G),
                               [15 / 21.5, 28 / 21.5], rtol=1e-6)


def test_bias_true_adds_each_output_layers_bias_after_its_weight():
    # 0.bias sq [1, 9] and 1.bias sq [0.25, 0] join; the input-channel entry gets none
    out = tp.MagnitudeImportance(2, "sum", None, bias=True)(P, G)
    np.testing.assert_allclose(out, [16.25, 37.0], rtol=1e-7)
    out = tp.MagnitudeImportance(2, "first", None, bias=True)(P, G)
    np.testing.assert_allclose(out, [9.0, 25.0], rtol=1e-7)


def test_lamp_importance_and_its_nan_on_zero_scores():
    np.testing.assert_allclose(tp.LAMPImportance(group_reduction="sum")(P, G), [15 / 43, 1.0], rtol=1e-6)
    out = tp.LAMPImportance()({"w": np.zeros((2, 2))}, [("w", 0)])
    assert np.isnan(out).all()
    with pytest.raises(RefquantError, match="lamp"):
        tp.LAMPImportance(normalizer="mean")


def test_taylor_importance_sum_of_abs_or_abs_of_sum():
    params = {"w": np.array([[1.0, 2.0], [3.0, -1.0]])}
    grads = {"w": np.array([[0.5, -1.0], [1.0, 2.0]])}  # w*g = [[.5, -2], [3, -2]]
    np.testing.assert_allclose(tp.TaylorImportance(normalizer=None)(params, [("w", 0)], grads), [2.5, 5.0])
    np.testing.assert_allclose(
        tp.TaylorImportance(normalizer=None, multivariable=True)(params, [("w", 0)], grads), [1.5, 1.0])
    np.testing.assert_allclose(tp.TaylorImportance(normalizer=None)(params, [("w", 1)], grads), [3.5, 4.0])


def test_bn_scale_importance_uses_only_the_scales():
    np.testing.assert_allclose(tp.BNScaleImportance(normalizer=None)(P, G), [2.0, 1.0])


@pytest.mark.parametrize(
    "normalizer, expected",
    [("sum", [15 / 43, 28 / 43]), ("max", [15 / 28, 1.0]), ("standarization", [0.0, 13 / (13 + 1e-8)]),
     ("gaussian", [-6.5 / (np.std([15, 28], ddof=1) + 1e-8), 6.5 / (np.std([15, 28], ddof=1) + 1e-8)])],
)
def test_normalizers(normalizer, expected):
    out = tp.MagnitudeImportance(2, "sum", normalizer)(P, G)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_callable_normalizer_and_random_importance():
    out = tp.MagnitudeImportance(2, "sum", lambda s: s * 2)(P, G)
    np.testing.assert_allclose(out, [30.0, 56.0])
    a = tp.RandomImportance(seed=3)(P, G)
    assert a.shape == (2,) and np.array_equal(a, tp.RandomImportance(seed=3)(P, G))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: tp.MagnitudeImportance()(P, [("nope", 0)]), "not in params"),
        (lambda: tp.MagnitudeImportance()(P, [("0.weight", 2)]), "axis"),
        (lambda: tp.MagnitudeImportance()(P, [("0.weight", 0), ("2.weight", 0)]), "channels"),
        (lambda: tp.MagnitudeImportance()(P, []), "empty"),
        (lambda: tp.MagnitudeImportance(group_reduction="median"), "group_reduction"),
        (lambda: tp.TaylorImportance()(P, G, {}), "no gradient"),
        (lambda: tp.BNScaleImportance()(P, [("0.weight", 0)]), "1-D"),
    ],
)
def test_bad_groups_are_refused_naming_the_tensor_or_axis(call, match):
    with pytest.raises(RefquantError, match=match):
        call()
