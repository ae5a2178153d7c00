"""Record NVIDIA ModelOpt's NVFP4 quantization into tests/data/modelopt/nvfp4_0.47.npz.

ModelOpt pulls packages (ninja, PuLP, omegaconf, a newer setuptools) that the shared
environment does not take, so it lives in its own virtual environment that sees the
system torch::

    python -m venv --system-site-packages /work/venv-nvfp4
    /work/venv-nvfp4/bin/pip install nvidia-modelopt==0.47.0
    /work/venv-nvfp4/bin/python scripts/record_modelopt_nvfp4.py

For seeded float32 and bfloat16 weights (normal values over six decades, e2m1 grid
points and midpoints times power-of-two block scales, a zero block, a block whose
scale underflows e4m3, -0.0) the file holds ``NVFP4QTensor.quantize(w, 16)``'s
packed bytes, e4m3 block scales (as uint8) and ``weight_scale_2``, and
``dequantize(torch.float32, ...)``. Raw bits: bfloat16 as uint16.
"""

from __future__ import annotations

import sys
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")
from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "modelopt" / "nvfp4_0.47.npz"
E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6])


def weights(rng):
    mids = np.concatenate([E2M1, (E2M1[1:] + E2M1[:-1]) / 2])
    for i in range(12):
        rows, blocks = 1 + i % 4, 1 + i % 3
        n = rows * blocks * 16
        if i % 3 == 0:
            v = rng.choice(mids, n) * rng.choice([-1, 1], n) * np.repeat(2.0 ** rng.integers(-8, 8, rows * blocks), 16)
        elif i % 3 == 1:
            v = rng.standard_normal(n) * 10.0 ** rng.integers(-6, 4)
        else:
            v = rng.standard_normal(n)
            v[rng.random(n) < 0.3] = 0.0
            v[rng.random(n) < 0.1] = -0.0
        w = v.astype(np.float32).reshape(rows, blocks * 16)
        w[0, :16] = 0.0 if i % 2 else w[0, :16]
        if rows > 1 and i % 4 == 1:
            w[1, :16] = np.float32(1e-30) * rng.standard_normal(16)
        yield w


def main():
    rng = np.random.default_rng(20261206)
    out = {"versions": np.array([f"nvidia-modelopt {metadata.version('nvidia-modelopt')}",
                                 f"torch {torch.__version__}"])}
    for i, w in enumerate(weights(rng)):
        for name, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            t = torch.from_numpy(w).to(dt)
            q, s, s2 = NVFP4QTensor.quantize(t.clone(), 16)
            back = q.dequantize(torch.float32, scale=s, double_scale=s2, block_sizes={-1: 16})
            key = f"{i}_{name}"
            out[key + "_w"] = t.view(torch.int16).numpy() if dt == torch.bfloat16 else t.numpy()
            out[key + "_packed"] = q._quantized_data.numpy()
            out[key + "_scale"] = s.view(torch.uint8).numpy()
            out[key + "_scale_2"] = s2.float().numpy().reshape(1)
            out[key + "_back"] = back.numpy()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({len(out)} arrays)", file=sys.stderr)


if __name__ == "__main__":
    main()
