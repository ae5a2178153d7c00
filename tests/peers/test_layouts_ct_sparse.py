"""compressed-tensors ``sparse-bitmask`` / ``sparse-24-bitmask`` against its 0.14.0.1 compressors.

compressed-tensors dropped these compressors after 0.14 (0.20 keeps only the format
names), so the peer's outputs are recorded by scripts/record_ct_sparse.py from a
venv with compressed-tensors 0.14.0.1 on torch 2.13 CPU into
tests/data/ct_sparse/ct_sparse_0.14.npz: for float32 / bfloat16 / float16 /
float8_e4m3fn weights with zeros, -0.0, NaN and tied magnitudes, what
``BitmaskCompressor`` / ``Sparse24BitMaskCompressor`` ``compress`` wrote and what
``decompress_from_state_dict`` gave back. refquant's writers give the same tensors
bit for bit, ``refquant.io.save(..., layout=NAME)`` writes them, and ``ck.dequantize``
gives the decompressed weights. compressed-tensors 0.20's ``pack_bitmasks`` /
``unpack_bitmasks`` (still shipped) are checked live.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from helpers import import_peer

import refquant.io as rio
from refquant import RefquantError
from refquant.io.layouts.ctsparse import (
    sparse24_bitmask_tensors,
    sparse_bitmask_tensors,
    unpack_mask,
)

pytestmark = pytest.mark.peer

DATA = Path(__file__).resolve().parents[1] / "data" / "ct_sparse" / "ct_sparse_0.14.npz"
VIEW = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16,
        "float8_e4m3fn": ml_dtypes.float8_e4m3fn}
CASES = [(kind, dt) for kind in ("bitmask", "24") for dt in VIEW]


def _rec():
    return np.load(DATA)


def _f(a, dt):
    return np.ascontiguousarray(a).view(VIEW[dt])


def test_recording_names_its_peer():
    assert "compressed-tensors 0.14.0.1" in list(_rec()["versions"])


@pytest.mark.parametrize(("kind", "dt"), CASES)
def test_writers_and_dequantize_match_the_recorded_compressor(tmp_path, kind, dt):
    r = _rec()
    key = f"{kind}_{dt}"
    dense = _f(r[key + "_dense"], dt)
    write = sparse_bitmask_tensors if kind == "bitmask" else sparse24_bitmask_tensors
    t = write("m.l", dense)
    parts = ["shape", "compressed", "bitmask"] + (["row_offsets"] if kind == "bitmask" else [])
    assert sorted(t) == sorted(f"m.l.{p}" for p in parts)
    for p in parts:
        ours = t[f"m.l.{p}"]
        theirs = r[f"{key}_{p}"]
        if p == "compressed":
            ours = ours.view(theirs.dtype)
        assert ours.shape == theirs.shape, p
        np.testing.assert_array_equal(ours, theirs, err_msg=p)
    layout = "sparse-bitmask" if kind == "bitmask" else "sparse-24-bitmask"
    rio.save(t, tmp_path / "m", layout=layout)
    back = _f(r[key + "_back"], dt).astype(np.float32)
    for folder in (tmp_path / "m", tmp_path / "m" / "model.safetensors"):  # by config, by tensors
        with rio.open(folder) as ck:
            assert ck.logical_names() == ["m.l.weight"]
            assert ck.scheme("m.l.weight").format == layout
            ours = ck.dequantize("m.l.weight")
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(back))
        ok = ~np.isnan(back)
        np.testing.assert_array_equal(ours[ok].view(np.uint32), back[ok].view(np.uint32))


def test_bitmask_packing_is_compressed_tensors_0_20_helpers():
    import_peer("torch")
    import_peer("compressed_tensors")
    import torch
    from compressed_tensors.utils import pack_bitmasks, unpack_bitmasks

    rng = np.random.default_rng(5)
    for k in (1, 7, 8, 9, 33):
        m = rng.random((3, k)) < 0.5
        packed = pack_bitmasks(torch.from_numpy(m)).numpy()
        np.testing.assert_array_equal(sparse_bitmask_tensors("a", np.where(m, 1.0, 0.0).astype(np.float32))
                                      ["a.bitmask"], packed)
        np.testing.assert_array_equal(unpack_mask(packed, k),
                                      unpack_bitmasks(torch.from_numpy(packed), [3, k]).numpy())


def test_parts_that_disagree_are_refused(tmp_path):
    w = np.array([[0, 1, 0, 2, 3, 0, 0, 0], [0, 0, 0, 0, 5, 6, 7, 8]], np.float32)
    t = sparse_bitmask_tensors("m.l", w)
    bad = dict(t, **{"m.l.compressed": t["m.l.compressed"][:-1]})
    rio.save(bad, tmp_path / "a", layout="sparse-bitmask")
    with rio.open(tmp_path / "a") as ck, pytest.raises(RefquantError, match=r"m\.l\.compressed.*6 kept.*7"):
        ck.dequantize("m.l.weight")
    bad = dict(t, **{"m.l.row_offsets": np.array([0, 2], np.int64)})
    rio.save(bad, tmp_path / "b", layout="sparse-bitmask")
    with rio.open(tmp_path / "b") as ck, pytest.raises(RefquantError, match=r"row_offsets\[1\] = 2.*at 3"):
        ck.dequantize("m.l.weight")
    bad = dict(t, **{"m.l.bitmask": t["m.l.bitmask"][:1]})
    with pytest.raises(RefquantError, match=r"m\.l\.bitmask.*shape \(1, 1\); expected \(2, 1\)"):
        rio.save(bad, tmp_path / "c", layout="sparse-bitmask")
    t24 = sparse24_bitmask_tensors("m.l", w)
    with pytest.raises(RefquantError, match=r"m\.l\.shape.*\(2,\)"):  # 24 parts under the other name
        rio.save(t24, tmp_path / "d", layout="sparse-bitmask")
    rio.save(t24, tmp_path / "e", layout="sparse-24-bitmask")
    cfg = json.loads((tmp_path / "e" / "config.json").read_text())
    cfg["quantization_config"]["config_groups"] = {"group_0": {"targets": ["Linear"], "weights": {}}}
    (tmp_path / "e" / "config.json").write_text(json.dumps(cfg))
    with rio.open(tmp_path / "e") as ck, pytest.raises(RefquantError, match="stacked on quantization"):
        ck.dequantize("m.l.weight")
    with pytest.raises(RefquantError, match="multiple of 4"):
        sparse24_bitmask_tensors("m.l", np.ones((2, 6), np.float32))


def test_mask_24_keeps_what_torch_topk_keeps_on_ties():
    """get_24_bytemasks' selection (``abs().topk(2)`` then scatter) live on torch, every tie pattern."""
    import_peer("torch")
    import itertools

    import torch

    from refquant.io.layouts.ctsparse import mask_24

    vals = [0.0, 1.0, -1.0, 2.0, np.nan]
    groups = np.array(list(itertools.product(vals, repeat=4)), np.float32)  # 625 groups of four
    t = torch.from_numpy(groups)
    idx = t.abs().topk(2, dim=1).indices
    theirs = torch.zeros_like(t, dtype=torch.bool).scatter_(1, idx, True).numpy()
    np.testing.assert_array_equal(mask_24(groups), theirs)
    e4 = np.arange(256, dtype=np.uint8)[np.random.default_rng(1).integers(0, 256, (400, 4))]
    te = torch.from_numpy(e4.copy()).view(torch.int8)
    idx = te.abs().topk(2, dim=1).indices
    theirs = torch.zeros(te.shape, dtype=torch.bool).scatter_(1, idx, True).numpy()
    np.testing.assert_array_equal(mask_24(e4.view(ml_dtypes.float8_e4m3fn)), theirs)


def test_transformers_with_compressed_tensors_0_20_does_not_read_sparse_bitmask(tmp_path):
    """Pinned hazard: transformers 5.23 + compressed-tensors 0.20 load a sparse-bitmask
    checkpoint without an error, but leave every sparse weight newly initialized (missing)."""
    import_peer("torch")
    import_peer("compressed_tensors")
    transformers = import_peer("transformers")
    import warnings

    import torch

    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    model = transformers.LlamaForCausalLM(cfg)
    t = {}
    for name, v in model.state_dict().items():
        w = v.float().numpy().copy()
        if name.startswith("model.layers") and name.endswith("proj.weight"):
            w[np.abs(w) < 0.02] = 0
            t.update(sparse_bitmask_tensors(name[: -len(".weight")], w))
        else:
            t[name] = w
    rio.save(t, tmp_path / "m", layout="sparse-bitmask", config=json.loads(cfg.to_json_string()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded, info = transformers.AutoModelForCausalLM.from_pretrained(
            tmp_path / "m", dtype=torch.float32, output_loading_info=True)
    name = "model.layers.0.mlp.up_proj.weight"
    assert name in set(info["missing_keys"])
    with rio.open(tmp_path / "m") as ck:
        assert not np.array_equal(loaded.state_dict()[name].numpy(), ck.dequantize(name))
