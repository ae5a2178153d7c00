"""GPTQ on the fp8 e4m3fn and NVFP4 grids, llmcompressor's AWQ search (float32), SmoothQuant float32:
invariants that need no peer."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from refquant import RefquantError
from refquant.quant.awq_llmcompressor import awq_llmcompressor
from refquant.quant.gptq import gptq
from refquant.quant.smoothquant import smoothing_scales


def _layer(seed=0, rows=16, cols=64, n=256):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
    x = (rng.standard_normal((n, cols)) * np.exp(rng.uniform(-1, 1, cols))).astype(np.float32)
    return w, x


@pytest.mark.parametrize("group_size", [None, "tensor"])
@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_fp8_gptq_with_identity_hessian_is_round_to_nearest(group_size, precision):
    w, _ = _layer()
    w[0, :3] = [0.0, -0.0, 1e-9]
    r = gptq(w, np.eye(w.shape[1]), fmt="float8_e4m3fn", group_size=group_size,
             precision=precision, dampening_frac=0.0)
    amax = np.abs(w).max(axis=1) if group_size is None else np.full(w.shape[0], np.abs(w).max())
    s = (amax.astype(np.float32) / np.float32(448)).astype(np.float32)
    np.testing.assert_array_equal(r.scale[:, 0], s)
    dt = np.float32 if precision == "float32" else np.float64
    q = (w.astype(dt) / s[:, None].astype(dt)).astype(ml_dtypes.float8_e4m3fn)
    np.testing.assert_array_equal(r.codes, q.view(np.uint8).astype(np.int64))
    assert r.codes[0, 1] == 0x80  # -0 stays -0 (no zero point is added for symmetric args)
    np.testing.assert_array_equal(r.dequantized, q.astype(dt) * s[:, None].astype(dt))


def test_fp8_gptq_beats_round_to_nearest_on_correlated_inputs():
    w, x = _layer(1, rows=32, cols=128, n=512)
    x[:, 1::2] = x[:, ::2] + 0.1 * x[:, 1::2]  # correlated input pairs
    h = 2 / len(x) * x.T.astype(np.float64) @ x
    g = gptq(w, h, fmt="float8_e4m3fn", group_size=None)
    rtn = gptq(w, h, fmt="float8_e4m3fn", group_size=None, hessian_factor=np.eye(128))

    def err(wh):
        return np.mean(((w - wh) @ x.T.astype(np.float64)) ** 2)

    assert err(g.dequantized) < 0.9 * err(rtn.dequantized)
    # the reported loss equals the recomputed one (damped Hessian)
    d = w - g.dequantized
    hd = h + 0.01 * np.mean(np.diag(h)) * np.eye(128)
    assert g.loss == pytest.approx(0.5 * np.trace(d @ hd @ d.T), rel=1e-6)


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_nvfp4_gptq_with_identity_hessian_is_round_to_nearest(precision):
    w, _ = _layer(5)
    r = gptq(w, np.eye(w.shape[1]), fmt="nvfp4", group_size=16, precision=precision,
             dampening_frac=0.0)
    amax = np.float32(np.abs(w).max())
    gs = (np.float32(1) / amax) * np.float32(2688)
    assert r.global_scale == float(gs)
    blocks = np.abs(w).reshape(16, 4, 16).max(axis=2)
    s = (gs * (blocks / np.float32(6))).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
    np.testing.assert_array_equal(r.scale, s)
    eff = np.repeat(s / gs, 16, axis=1)
    dt = np.float32 if precision == "float32" else np.float64
    q = np.clip(w.astype(dt) / eff.astype(dt), -6, 6).astype(ml_dtypes.float4_e2m1fn)
    np.testing.assert_array_equal(r.codes, q.view(np.uint8).astype(np.int64))
    np.testing.assert_array_equal(r.dequantized, q.astype(dt) * eff.astype(dt))


def test_e2m1_rounding_ties_are_compressed_tensors_thresholds():
    # cast_to_fp4: <=0.25 -> 0, 0.75 -> 1, 1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4
    v = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 5.01, -0.26], np.float32)
    got = v.astype(ml_dtypes.float4_e2m1fn).astype(np.float32)
    np.testing.assert_array_equal(got, [0, 1, 1, 2, 2, 4, 4, 6, -0.5])


def test_fp8_gptq_bad_arguments():
    w, _ = _layer()
    with pytest.raises(RefquantError, match="symmetric only"):
        gptq(w, np.eye(64), fmt="float8_e4m3fn", symmetric=False)
    with pytest.raises(RefquantError, match="fmt must be one of"):
        gptq(w, np.eye(64), fmt="float8_e5m2")
    with pytest.raises(RefquantError, match="'tensor'"):
        gptq(w, np.eye(64), group_size="row")
    with pytest.raises(RefquantError, match="needs an int group_size"):
        gptq(w, np.eye(64), fmt="nvfp4", group_size=None)


def test_int_gptq_per_tensor_uses_one_scale():
    w, x = _layer(2)
    h = 2 / len(x) * x.T.astype(np.float64) @ x
    r = gptq(w, h, bits=4, group_size="tensor", symmetric=True)
    assert r.scale.shape == (16, 1) and np.all(r.scale == r.scale[0, 0])
    assert r.scale[0, 0] == np.float32(np.abs(w).max()) / np.float32(7.5)


def test_awq_llmcompressor_ratio_zero_is_round_to_nearest_and_never_worse():
    w, x = _layer(3, rows=24, cols=128)
    r = awq_llmcompressor(w, [x[:128], x[128:]], bits=4, group_size=32)
    assert r.grid[0] == (0.0, False)
    assert r.losses.min() <= r.losses[0]
    assert r.ratio == r.grid[int(np.argmin(r.losses))][0]
    # the loss of the chosen point is the output MSE of Q(W s) / s
    wq = (r.weight_quantized / r.scales).astype(np.float32)
    mse = np.mean((x @ w.T - x @ wq.T).astype(np.float64) ** 2)
    assert float(np.min(r.losses)) == pytest.approx(mse, rel=1e-5)


def test_smoothquant_float32_is_float64_rounded_to_a_few_ulps():
    w, x = _layer(4)
    act = (x.max(0) - x.min(0)).astype(np.float32)
    for alpha in (0.0, 0.5, 0.8, 1.0):
        s32 = smoothing_scales(act, w, alpha, statistic="llmcompressor", precision="float32")
        s64 = smoothing_scales(act, w, alpha, statistic="llmcompressor")
        assert s32.dtype == np.float32
        np.testing.assert_allclose(s32, s64, rtol=4 * np.finfo(np.float32).eps)
    with pytest.raises(RefquantError, match="statistic='llmcompressor'"):
        smoothing_scales(act, w, 0.5, precision="float32")
    with pytest.raises(RefquantError, match="precision"):
        smoothing_scales(act, w, 0.5, statistic="llmcompressor", precision="float16")
