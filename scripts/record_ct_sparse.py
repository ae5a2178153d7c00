"""Record compressed-tensors' sparse-bitmask and sparse-24-bitmask compressors into tests/data/ct_sparse/.

compressed-tensors removed its sparse compressors after 0.14 (0.15 ... 0.20 keep the
``CompressionFormat`` names but no compressor; ``ModelCompressor.from_compression_config``
refuses them), and 0.14 pins transformers < 5, so the peer lives in its own virtual
environment that sees the system torch::

    python -m venv --system-site-packages /work/venv-nvfp4
    /work/venv-nvfp4/bin/pip install --no-deps compressed-tensors==0.14.0.1
    /work/venv-nvfp4/bin/python scripts/record_ct_sparse.py

For float32, bfloat16, float16 and float8_e4m3fn weights (seeded; zeros, -0.0,
NaN, repeated magnitudes so that 2:4 selection has ties) the file holds, per
compressor, the dense input (raw bits), what ``compress`` writes for one module
``m.l`` (``shape``, ``compressed``, ``bitmask``, and ``row_offsets`` for sparse-bitmask)
and what ``decompress_from_state_dict`` gives back. Raw bits: bfloat16 as uint16,
float8 as uint8.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from compressed_tensors.compressors.sparse_compressors.sparse_24_bitmask import (
    Sparse24BitMaskCompressor,
)
from compressed_tensors.compressors.sparse_compressors.sparse_bitmask import BitmaskCompressor
from compressed_tensors.config import BitmaskConfig, Sparse24BitMaskConfig

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "ct_sparse" / "ct_sparse_0.14.npz"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float8_e4m3fn": torch.float8_e4m3fn}
BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16,
        torch.float8_e4m3fn: torch.uint8}


def raw(t):
    if t.dtype in BITS:
        return t.contiguous().view(BITS[t.dtype]).numpy().copy()
    return t.numpy().copy()


def dense(kind, dtype, rng):
    if kind == "bitmask":
        n, k = 5, 19
        v = rng.choice([0.0, 0.0, 0.0, -0.0, 1.0, -2.5, 3.0], size=(n, k)) * rng.uniform(0.5, 2, (n, k))
        v[rng.random((n, k)) < 0.3] = rng.standard_normal(int((rng.random((n, k)) < 0.3).sum()))[:1]
        v[0, 3] = np.nan
        v[4, :] = 0.0  # an empty row
    else:
        n, k = 6, 16
        v = rng.choice([0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 0.5], size=(n, k))
        v[1, :4] = 1.0  # four equal magnitudes
        v[2, 4:8] = [-1.0, 1.0, -1.0, 1.0]
        v[3, :4] = 0.0
        v[5, 8:12] = [np.nan, 1.0, 2.0, 0.0]
    t = torch.from_numpy(v.astype(np.float32)).to(dtype)
    return t


def main():
    rng = np.random.default_rng(20261206)
    out = {"versions": np.array([f"compressed-tensors {metadata.version('compressed-tensors')}",
                                 f"torch {torch.__version__}"])}
    for kind, comp in (("bitmask", BitmaskCompressor(config=BitmaskConfig())),
                       ("24", Sparse24BitMaskCompressor(config=Sparse24BitMaskConfig()))):
        for name, dt in DTYPES.items():
            t = dense(kind, dt, rng)
            key = f"{kind}_{name}"
            out[key + "_dense"] = raw(t)
            cd = comp.compress({"m.l.weight": t})
            for part, v in cd.items():
                out[f"{key}_{part.split('.')[-1]}"] = raw(v)
            back = dict(comp.decompress_from_state_dict(cd))
            out[key + "_back"] = raw(back["m.l.weight"])
            assert back["m.l.weight"].dtype == dt
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({len(out)} arrays)", file=sys.stderr)


if __name__ == "__main__":
    main()
