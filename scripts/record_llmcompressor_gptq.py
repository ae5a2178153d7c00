"""Record llmcompressor's GPTQ, SparseGPT and Wanda on fixed inputs into tests/data/llmcompressor/gptq_64x256.npz.

llmcompressor pins transformers, datasets, accelerate and compressed-tensors, so it
lives in its own virtual environment that sees the system torch::

    python -m venv --system-site-packages /work/venv-llmc
    /work/venv-llmc/bin/pip install llmcompressor==0.14.0.1
    /work/venv-llmc/bin/python scripts/record_llmcompressor_gptq.py

Inputs (seeded): a 64x256 float32 weight with a few outlier columns, 512 calibration
rows of width 256 stored as float16 (exact in float32) with per-channel magnitudes
spread over two decades and one dead input channel (all zeros). The Hessian is
llmcompressor's own (``accumulate_hessian`` on an ``nn.Linear``, divided by its
sample count as ``prepare_batch`` does); qparams come from its weight observer
(``memoryless_minmax``, compressed-tensors ``calculate_qparams``) on the original
weights; ``quantize_weight`` runs on torch CPU (eager block update). For each
configuration (bits 4 / 8, symmetric / asymmetric, group 128 / channel, actorder
None / "weight") the file holds the codes (recovered from the dequantized
weights, checked to reproduce them bit for bit), scales, zero points, g_idx and
the loss. torch's upper Cholesky factor of the damped inverse Hessian (one per
actorder) is stored as its upper triangle so that the test can feed it back.
SparseGPT (``sgpt_sparsify.sparsify_weight``, given the same Hessian) and Wanda
(``wanda_sparsify``: row scalars streamed over the 8 sequences, then the mask) run
at 50 % unstructured and 2:4; the file holds SparseGPT's pruned weights, Wanda's
row scalars and masks.
"""

from __future__ import annotations

import itertools
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from compressed_tensors.quantization import QuantizationArgs
from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight
from llmcompressor.modifiers.gptq.helpers import (
    accumulate_hessian,
    apply_activation_ordering,
    factorize_hessian,
)
from llmcompressor.modifiers.pruning.sparsegpt import sgpt_sparsify
from llmcompressor.modifiers.pruning.wanda import wanda_sparsify
from llmcompressor.observers import Observer

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "llmcompressor" / "gptq_64x256.npz"
ROWS, COLS, N = 64, 256, 512
DAMP, BLOCK = 0.01, 128


def inputs():
    rng = np.random.default_rng(20261206)
    w = (rng.standard_normal((ROWS, COLS)) * 0.05).astype(np.float32)
    w[:, rng.choice(COLS, 4, replace=False)] *= 8  # outlier columns
    mag = np.exp(rng.uniform(np.log(0.1), np.log(10.0), COLS))
    x = (rng.standard_normal((N, COLS)) * mag).astype(np.float16)
    x[:, 17] = 0  # a dead input channel
    return w, x


def config_name(bits, sym, gs, act):
    return f"b{bits}_{'sym' if sym else 'asym'}_g{gs}_{act or 'none'}"


def peer_hessian(x: np.ndarray, rows: int = ROWS, batches=(3, 5)) -> np.ndarray:
    """llmcompressor's Hessian of ``x`` (sequences of 64 rows, fed in ``batches``)."""
    cols = x.shape[1]
    linear = torch.nn.Linear(cols, rows, bias=False)
    h = torch.zeros((cols, cols), dtype=torch.float32)
    n = torch.zeros((), dtype=torch.int64)
    xt = torch.from_numpy(x.astype(np.float32)).reshape(-1, 64, cols)
    start = 0
    for size in batches:
        h, n = accumulate_hessian(xt[start:start + size], linear, h, n)
        start += size
    return (h / n).numpy()


def peer_factor(w: np.ndarray, h: np.ndarray, act) -> np.ndarray:
    """torch's upper factor of the damped (and permuted) inverse Hessian."""
    wt, ht = torch.from_numpy(w)[None].clone(), torch.from_numpy(h)[None].clone()
    wt, ht, _ = apply_activation_ordering(wt, ht, act)
    fb = torch.zeros(1, dtype=torch.bool)
    u = factorize_hessian(wt, ht, DAMP, fb)[0].numpy()
    assert not fb.item()
    return u


def peer_gptq(w: np.ndarray, h: np.ndarray, bits, sym, gs, act) -> dict:
    """llmcompressor's observer + quantize_weight; codes recovered from its output."""
    cols = w.shape[1]
    qargs = QuantizationArgs(num_bits=bits, type="int", symmetric=sym,
                             strategy="group" if gs > 0 else "channel",
                             group_size=gs if gs > 0 else None, actorder=act)
    obs = Observer.load_from_registry("memoryless_minmax", base_name="weight", args=qargs)
    obs(torch.from_numpy(w))
    qp = obs.get_qparams()
    scale, zp = qp["scale"].float(), qp["zero_point"]
    q, loss, fb = quantize_weight(torch.from_numpy(w)[None].clone(),
                                  torch.from_numpy(h)[None].clone(),
                                  scale[None], zp[None], None, qargs, BLOCK, DAMP)
    assert not fb.item()
    q = q[0].numpy()
    g = np.arange(cols) // (gs if gs > 0 else cols)
    s_col = scale.numpy()[:, g]
    z_col = zp.numpy().astype(np.float32)[:, g]
    codes = np.round(q / s_col + (0 if sym else z_col)).astype(np.int64)
    again = (codes.astype(np.float32) - (0 if sym else z_col)) * s_col
    assert np.array_equal(again, q), "codes do not round-trip"  # -0.0 == 0.0
    return {"codes": codes.astype(np.int8), "scale": scale.numpy(),
            "zero_point": zp.numpy().astype(np.int8), "g_idx": g.astype(np.int16),
            "loss": np.float32(loss.item())}


def _linear(w: np.ndarray) -> torch.nn.Linear:
    linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(w))
    linear.weight.requires_grad_(False)
    return linear


def peer_sparsegpt(w: np.ndarray, h: np.ndarray, sparsity, n, m) -> np.ndarray:
    """llmcompressor's SparseGPT ``sparsify_weight`` on the given Hessian: pruned weights."""
    linear = _linear(w)
    _, out = sgpt_sparsify.sparsify_weight(linear, {linear: torch.from_numpy(h).clone()},
                                           sparsity, n, m, BLOCK, DAMP, False)
    return out.numpy()


def peer_wanda(w: np.ndarray, x: np.ndarray, sparsity, n, m, batches=(3, 5)):
    """llmcompressor's Wanda: row scalars streamed over sequences, then the mask."""
    linear = _linear(w)
    s = torch.zeros(w.shape[1])
    count = 0
    xt = torch.from_numpy(x.astype(np.float32)).reshape(-1, 64, w.shape[1])
    start = 0
    for size in batches:
        s, count = wanda_sparsify.accumulate_row_scalars(xt[start:start + size], linear, s,
                                                         count)
        start += size
    row_scalars = s.clone()
    out = wanda_sparsify.sparsify_weight(linear, {linear: s}, sparsity, n, m).numpy()
    return row_scalars.numpy(), out == 0


PRUNE_CONFIGS = [(0.5, 0, 0), (0.0, 2, 4)]


def prune_name(sparsity, n, m):
    return f"{n}of{m}" if n else f"s{int(sparsity * 100)}"


CONFIGS = list(itertools.product((4, 8), (True, False), (128, -1), (None, "weight")))


def main() -> int:
    torch.manual_seed(0)
    w, x = inputs()
    h = peer_hessian(x)
    out = {
        "weight": w, "x_calib": x, "hessian_upper": h[np.triu_indices(COLS)],
        "hessian_n": np.int64(N // 64), "dampening_frac": np.float64(DAMP),
        "blocksize": np.int64(BLOCK),
        "versions": np.array([f"{p}=={metadata.version(p)}" for p in
                              ("llmcompressor", "compressed-tensors", "torch", "numpy")]),
    }
    for act in (None, "weight"):
        out[f"torch_factor_{act or 'none'}"] = peer_factor(w, h, act)[np.triu_indices(COLS)]
    for bits, sym, gs, act in CONFIGS:
        name = config_name(bits, sym, gs, act)
        for key, value in peer_gptq(w, h, bits, sym, gs, act).items():
            out[f"{name}/{key}"] = value
    for cfg in PRUNE_CONFIGS:
        name = prune_name(*cfg)
        out[f"sparsegpt_{name}/weight"] = peer_sparsegpt(w, h, *cfg)
        scalars, mask = peer_wanda(w, x, *cfg)
        out[f"wanda_{name}/mask"] = mask
    out["wanda_row_scalars"] = scalars
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes); {out['versions'].tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
