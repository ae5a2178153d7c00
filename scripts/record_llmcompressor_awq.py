"""Record llmcompressor's AWQ scale search, SmoothQuant scales, fp8 and NVFP4 GPTQ into
tests/data/llmcompressor/awq_sq_fp8_64x256.npz.

A sibling of ``record_llmcompressor_gptq.py`` (same inputs: the seeded 64x256
weight and 512 calibration rows, 8 sequences of 64), run in the llmcompressor
virtual environment::

    python -m venv /work/venv-calib
    /work/venv-calib/bin/pip install torch==2.13.0 llmcompressor==0.14.0.1
    /work/venv-calib/bin/python scripts/record_llmcompressor_awq.py

AWQ: ``AWQModifier._compute_best_scale`` (llmcompressor 0.14.0.1,
``modifiers/transform/awq/base.py``) on one ``nn.Linear`` that is both the
parent and the balance layer, its weight initialised for quantization by
compressed-tensors (``initialize_module_for_quantization``) with a
``memoryless_minmax`` observer and its QDQ forward disabled
(``quantization_enabled = False``: the forward is the plain linear layer), ``_run_samples`` returning the layer's output on
4 batches of 2 sequences; the activation statistic is the modifier's hook
arithmetic (``|x|.float().sum(0)`` per batch, summed, divided by the row count).
Recorded: the best scales (float64, as the modifier computes them) and the loss
of every grid point (captured from ``_compute_loss``).

SmoothQuant: the hook arithmetic (``torch.min`` / ``torch.max`` over each batch,
``torch.minimum`` / ``torch.maximum`` across batches), ``max - min``, then
``SmoothQuantModifier._calculate_smoothing_scales`` and ``torch.maximum(s, 1e-5)``.

fp8 GPTQ: the ``memoryless_minmax`` observer and ``quantize_weight`` with
``QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy=channel|tensor)``;
recorded: the dequantized weights, scales and loss. NVFP4 GPTQ: the same with
compressed-tensors' ``NVFP4`` preset (TENSOR_GROUP, group 16, e4m3fn group scales,
the observer's float32 global scale), actorder None / "weight".
"""

from __future__ import annotations

import sys
import types
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from compressed_tensors.quantization import (
    QuantizationArgs,
    QuantizationScheme,
    initialize_module_for_quantization,
    preset_name_to_scheme,
)
from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight
from llmcompressor.modifiers.transform.awq.base import AWQModifier
from llmcompressor.modifiers.transform.smoothquant.base import (
    MINIMUM_SMOOTHING_SCALE,
    SmoothQuantModifier,
)
from llmcompressor.observers import Observer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_llmcompressor_gptq import BLOCK, DAMP, inputs, peer_hessian  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "llmcompressor" / \
    "awq_sq_fp8_64x256.npz"
SEQ = 64
AWQ_CONFIGS = {  # name: (bits, symmetric, group_size or None, duo_scaling)
    "b4_asym_g64_duo": (4, False, 64, True),
    "b4_sym_g128_noduo": (4, True, 128, False),
    "b8_asym_channel_duo": (8, False, None, True),
    "b3_asym_g32_both": (3, False, 32, "both"),
}
SQ_ALPHAS = (0.5, 0.8, 0.35)
FP8_CONFIGS = [("channel", None), ("channel", "weight"), ("tensor", None)]


def _qargs(bits, sym, gs, kind="int", strategy=None):
    if strategy is None:
        strategy = "group" if gs else "channel"
    return QuantizationArgs(num_bits=bits, type=kind, symmetric=sym, strategy=strategy,
                            group_size=gs)


def awq_inputs(x):
    """The calibration rows without the dead channel: with an all-zero input channel
    llmcompressor 0.14's grid search gave losses that changed from run to run
    (0.2, 5e-42: not reproducible), so AWQ is recorded on rows whose channel 17 is 0.5."""
    x = x.copy()
    x[:, 17] = 0.5
    return x


def peer_awq(w, x, bits, sym, gs, duo):
    cols = w.shape[1]
    lin = torch.nn.Linear(cols, w.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w))
    lin.weight.requires_grad_(False)
    qargs = _qargs(bits, sym, gs)
    initialize_module_for_quantization(lin, QuantizationScheme(targets=["Linear"], weights=qargs))
    lin.weight_observer = Observer.load_from_registry("memoryless_minmax", base_name="weight",
                                                      args=qargs)
    # the plain linear forward: the loss of the docstring, ||x W^T - x (Q(W s)/s)^T||; with
    # QDQ enabled the wrapped forward would fake-quantize again with the layer's own
    # (here uninitialised) weight_scale
    lin.quantization_enabled = False
    xt = torch.from_numpy(x.astype(np.float32)).reshape(-1, SEQ, cols)
    batches = [xt[i:i + 2] for i in range(0, xt.shape[0], 2)]
    x_sum, count = torch.zeros(cols), torch.zeros((), dtype=torch.int64)
    for b in batches:  # cache_smooth_activations_hook
        flat = b.abs().flatten(0, -2)
        x_sum += flat.float().sum(dim=0)
        count += torch.tensor(flat.size(0))
    mod = AWQModifier(duo_scaling=duo, n_grid=20)
    mod._smooth_activation_stats = {"smooth": [x_sum, count]}
    mapping = types.SimpleNamespace(smooth_name="smooth", parent=lin, balance_layers=[lin],
                                    parent_name="parent")
    mod._run_samples = lambda module: [module(b) for b in batches]
    losses = []

    def record_loss(fp, q):
        loss = AWQModifier._compute_loss(mod, fp, q)
        losses.append(loss)
        return loss

    mod._compute_loss = record_loss
    with torch.no_grad():
        fp = [lin(b) for b in batches]
        scales = mod._compute_best_scale(mapping, fp, {lin: lin.weight.clone()})
    return {"scales": scales.numpy(), "losses": np.array(losses, np.float64),
            "x_mean": (x_sum / count).numpy()}


def peer_smoothquant(weights, x, alpha):
    cols = x.shape[1]
    xt = torch.from_numpy(x.astype(np.float32)).reshape(-1, SEQ, cols)
    lo = hi = None
    for b in (xt[0:3], xt[3:8]):  # hook_fn: per-batch min / max, running minimum / maximum
        out = b.reshape(-1, cols)
        bl, bh = torch.min(out, dim=0)[0], torch.max(out, dim=0)[0]
        lo = bl if lo is None else torch.minimum(lo, bl)
        hi = bh if hi is None else torch.maximum(hi, bh)
    act = hi - lo
    layers = []
    for w in weights:
        lin = torch.nn.Linear(cols, w.shape[0], bias=False)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
        layers.append(lin)
    mod = SmoothQuantModifier(smoothing_strength=alpha)
    with torch.no_grad():
        s = mod._calculate_smoothing_scales(layers, act)
        s = torch.maximum(s, torch.Tensor([MINIMUM_SMOOTHING_SCALE]).to(s.device))
    return act.numpy(), s.numpy()


def peer_fp8_gptq(w, h, strategy, act):
    qargs = QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy=strategy,
                             actorder=act)
    obs = Observer.load_from_registry("memoryless_minmax", base_name="weight", args=qargs)
    obs(torch.from_numpy(w))
    qp = obs.get_qparams()
    scale, zp = qp["scale"].float(), qp["zero_point"]
    q, loss, fb = quantize_weight(torch.from_numpy(w)[None].clone(),
                                  torch.from_numpy(h)[None].clone(),
                                  scale[None], zp[None], None, qargs, BLOCK, DAMP)
    assert not fb.item()
    return {"dequantized": q[0].numpy(), "scale": scale.numpy(),
            "loss": np.float32(loss.item())}


def peer_nvfp4_gptq(w, h, act):
    """compressed-tensors' NVFP4 preset (e2m1, group 16, e4m3fn group scales, float32
    global scale) through the observer and quantize_weight."""
    qargs = preset_name_to_scheme("NVFP4", ["Linear"]).weights.model_copy(
        update={"actorder": act})
    obs = Observer.load_from_registry("memoryless_minmax", base_name="weight", args=qargs)
    obs(torch.from_numpy(w))
    qp = obs.get_qparams()
    q, loss, fb = quantize_weight(torch.from_numpy(w)[None].clone(),
                                  torch.from_numpy(h)[None].clone(),
                                  qp["scale"][None], qp["zero_point"][None], qp["global_scale"],
                                  qargs, BLOCK, DAMP)
    assert not fb.item()
    return {"dequantized": q[0].numpy(), "scale": qp["scale"].float().numpy(),
            "global_scale": qp["global_scale"].numpy(), "loss": np.float32(loss.item())}


def main() -> int:
    torch.manual_seed(0)
    w, x = inputs()
    h = peer_hessian(x)
    w2 = (np.random.default_rng(7).standard_normal((48, w.shape[1])) * 0.03).astype(np.float32)
    out = {"weight2": w2, "versions": np.array(
        [f"{p}=={metadata.version(p)}" for p in
         ("llmcompressor", "compressed-tensors", "torch", "numpy")])}
    x_awq = awq_inputs(x)
    out["x_awq"] = x_awq
    for name, (bits, sym, gs, duo) in AWQ_CONFIGS.items():
        for key, value in peer_awq(w, x_awq, bits, sym, gs, duo).items():
            out[f"awq_{name}/{key}"] = value
    for alpha in SQ_ALPHAS:
        for tag, ws in (("one", [w]), ("two", [w, w2])):
            act, s = peer_smoothquant(ws, x, alpha)
            out[f"sq_a{alpha}_{tag}/scales"] = s
        out["sq_act_range"] = act
    for strategy, act in FP8_CONFIGS:
        for key, value in peer_fp8_gptq(w, h, strategy, act).items():
            out[f"fp8_{strategy}_{act or 'none'}/{key}"] = value
    for act in (None, "weight"):
        for key, value in peer_nvfp4_gptq(w, h, act).items():
            out[f"nvfp4_{act or 'none'}/{key}"] = value
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes); {out['versions'].tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
