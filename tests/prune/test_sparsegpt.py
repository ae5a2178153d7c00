"""SparseGPT's invariants and Wanda with streamed activation statistics."""

from __future__ import annotations

import numpy as np
import pytest

from refquant import RefquantError
from refquant.models import DIGITS_MLP_BLOCKS, digits_mlp_forward, load_digits_mlp
from refquant.prune.scores import WandaRowScalars, wanda
from refquant.prune.sparsegpt import sparsegpt
from refquant.prune.wanda_calibrated import wanda_prune
from refquant.quant.gptq import HessianAccumulator, gptq


def _layer(rows=16, cols=64, n=300, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    x = rng.standard_normal((n, cols)) * np.exp(rng.uniform(-1.5, 1.5, cols))
    return w, x, HessianAccumulator(cols).update(x).hessian


def _digits_layers():
    params = load_digits_mlp()
    x = params["x_calib"]
    _, hidden = digits_mlp_forward(params, x, return_hidden=True)
    yield "embed", params["embed.weight"], np.asarray(x, np.float32)
    for i in range(DIGITS_MLP_BLOCKS):
        yield f"blocks.{i}", params[f"blocks.{i}.weight"], hidden[i]


# --------------------------------------------------------------------------- SparseGPT
@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_zero_sparsity_leaves_the_weights_unchanged(precision):
    w, _, h = _layer()
    r = sparsegpt(w, h, sparsity=0.0, blocksize=24, precision=precision)
    assert not r.mask.any() and r.loss == 0
    np.testing.assert_array_equal(r.weight, w)


def test_llmcompressor_mask_rule_prunes_one_weight_per_block_at_zero_sparsity():
    w, _, h = _layer()
    r = sparsegpt(w, h, sparsity=0.0, blocksize=16, mask_rule="llmcompressor")
    assert [int(r.mask[:, c:c + 16].sum()) for c in range(0, 64, 16)] == [1, 1, 1, 1]


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.7])
def test_unstructured_mask_prunes_the_count_in_every_block(sparsity):
    w, _, h = _layer()
    r = sparsegpt(w, h, sparsity=sparsity, blocksize=24)
    for c in range(0, 64, 24):
        blk = r.mask[:, c:c + 24]
        assert blk.sum() == int(blk.size * sparsity)
    assert np.all(r.weight[r.mask] == 0)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
def test_n_m_mask_prunes_n_of_every_m(n, m):
    w, _, h = _layer()
    r = sparsegpt(w, h, prune_n=n, prune_m=m, blocksize=32)
    per_group = r.mask.reshape(16, -1, m).sum(axis=2)
    assert np.all(per_group == n)
    assert np.all(r.weight[r.mask] == 0)


@pytest.mark.parametrize("kwargs", [{"sparsity": 0.5}, {"prune_n": 2, "prune_m": 4},
                                    {"sparsity": 0.5, "bits": 4, "group_size": 16}])
def test_sparsegpt_reported_loss_equals_half_trace_of_error_times_damped_hessian(kwargs):
    w, _, h = _layer()
    h[3, :] = h[:, 3] = 0  # dead input column
    r = sparsegpt(w, h, blocksize=24, **kwargs)
    w0 = w.astype(np.float64).copy()
    w0[:, 3] = 0
    hd = h.copy()
    hd[3, 3] = 1
    hd[np.diag_indices_from(hd)] += r.dampening_frac * np.mean(np.diag(hd))
    d = w0 - r.weight
    assert r.loss == pytest.approx(0.5 * np.einsum("ri,ij,rj->", d, hd, d), rel=1e-9)


def test_identity_hessian_is_magnitude_pruning_per_block_without_updates():
    w, _, _ = _layer()
    r = sparsegpt(w, np.eye(64), sparsity=0.5, blocksize=32)
    for c in (0, 32):
        blk = np.abs(w[:, c:c + 32]).ravel()
        expect = np.zeros(blk.size, bool)
        expect[np.argsort(blk, kind="stable")[: blk.size // 2]] = True
        np.testing.assert_array_equal(r.mask[:, c:c + 32].ravel(), expect)
    np.testing.assert_array_equal(r.weight, np.where(r.mask, 0, w))


def test_joint_quantization_at_zero_sparsity_is_gptq():
    w, _, h = _layer()
    r = sparsegpt(w, h, sparsity=0.0, bits=4, symmetric=False, group_size=16, blocksize=32)
    g = gptq(w, h, bits=4, symmetric=False, group_size=16, blocksize=32)
    np.testing.assert_array_equal(r.codes, g.codes)
    np.testing.assert_array_equal(r.scale, g.scale)
    np.testing.assert_allclose(r.weight, g.dequantized, rtol=0, atol=0)


def test_joint_quantization_gives_pruned_weights_the_code_of_zero():
    w, _, h = _layer()
    r = sparsegpt(w, h, sparsity=0.5, bits=4, symmetric=False, group_size=16)
    zp = r.zero_point[:, np.arange(64) // 16]
    np.testing.assert_array_equal(r.codes[r.mask], zp[r.mask])
    assert np.all(r.weight[r.mask] == 0)


def test_sparsegpt_output_error_is_below_wanda_on_the_digits_mlp():
    for name, w, x in _digits_layers():
        h = HessianAccumulator(w.shape[1]).update(x).hessian
        r = sparsegpt(w, h, sparsity=0.5)
        pruned, _ = wanda_prune(w, wanda(w, x), sparsity=0.5)
        xt = x.T.astype(np.float64)
        assert np.linalg.norm((w - r.weight) @ xt) < np.linalg.norm((w - pruned) @ xt), name


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"sparsity": 1.5}, r"sparsity must be a number in \[0, 1\]"),
        ({"prune_n": 2, "prune_m": 0}, "prune_n, prune_m = 2, 0"),
        ({"prune_n": 5, "prune_m": 4}, "prune_n, prune_m = 5, 4"),
        ({"prune_n": 2, "prune_m": 3}, "blocksize 128 is not a multiple of prune_m 3"),
        ({"mask_rule": "torch"}, "mask_rule must be one of"),
        ({"bits": 16}, "bits must be None or one of"),
    ],
)
def test_sparsegpt_bad_options_are_rejected_by_name(kwargs, match):
    w, _, h = _layer()
    with pytest.raises(RefquantError, match=match):
        sparsegpt(w, h, **kwargs)


def test_sparsegpt_hessian_width_mismatch_names_the_argument():
    w, _, h = _layer()
    with pytest.raises(RefquantError, match="hessian has shape"):
        sparsegpt(w, h[:10, :10])


# --------------------------------------------------------------------------- Wanda
def test_streamed_row_scalars_rank_like_wanda_on_all_rows():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 20))
    x = rng.standard_normal((90, 20))
    acc = WandaRowScalars(20)
    for part in np.array_split(x, [10, 11, 60]):
        acc.update(part)
    np.testing.assert_allclose(acc.row_scalars, np.mean(x * x, axis=0), rtol=1e-12)
    np.testing.assert_allclose(acc.scores(w) * np.sqrt(90), wanda(w, x), rtol=1e-12)


def test_row_scalars_count_sequences_like_llmcompressor():
    x = np.random.default_rng(4).standard_normal((6, 5, 3))
    acc = WandaRowScalars(3, count="sequences").update(x[:2]).update(x[2:])
    assert acc.n_samples == 6
    np.testing.assert_allclose(acc.row_scalars, np.sum(x * x, axis=(0, 1)) / 6, rtol=1e-12)


def test_row_scalars_reject_non_finite_activations():
    with pytest.raises(RefquantError, match="x contains 1 NaN or Inf"):
        WandaRowScalars(2).update(np.array([[1.0, np.inf]]))


def test_wanda_prunes_the_same_count_in_every_row_lower_column_first_on_ties():
    w = np.arange(1, 13, dtype=np.float64).reshape(2, 6)
    scores = np.array([[3, 1, 1, 2, 5, 6], [1, 1, 1, 1, 1, 1]], dtype=np.float64)
    out, mask = wanda_prune(w, scores, sparsity=0.5)
    np.testing.assert_array_equal(mask, [[0, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(out, np.where(mask, 0, w))


def test_wanda_n_m_prunes_the_n_lowest_of_every_group():
    scores = np.array([[4, 3, 2, 1, 1, 2, 3, 4]], dtype=np.float64)
    _, mask = wanda_prune(np.ones((1, 8)), scores, prune_n=2, prune_m=4)
    np.testing.assert_array_equal(mask, [[0, 0, 1, 1, 1, 1, 0, 0]])


def test_prune_wanda_stays_the_score_function_whatever_is_imported():
    # a module refquant/prune/wanda.py once shadowed the score function refquant.prune.wanda
    import importlib

    import refquant.prune as rp

    importlib.import_module("refquant.prune.wanda_calibrated")
    assert callable(rp.wanda) and callable(rp.wanda_prune) and callable(rp.sparsegpt)
