"""ModelOpt NVFP4 checkpoints (``quant_method: modelopt``) in refquant.io.layouts.

Against NVIDIA ModelOpt 0.47.0's ``NVFP4QTensor`` outputs recorded by
scripts/record_modelopt_nvfp4.py (it does not install beside the shared
environment): refquant's writer stores the recorded packed bytes, e4m3 scales and
``weight_scale_2`` of its own ``quantize_nvfp4(w, convention="modelopt")`` bit for bit,
and ``ck.dequantize`` gives ModelOpt's ``dequantize``. compressed-tensors 0.20.0's
``ModelOptNvfp4Converter`` (live) maps the same tensors to ``nvfp4-pack-quantized``,
which refquant reads as compressed-tensors' decompressor does.
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
from refquant.formats.nvfp4 import quantize_nvfp4
from refquant.io.layouts.modelopt import modelopt_nvfp4_tensors

pytestmark = pytest.mark.peer

DATA = Path(__file__).resolve().parents[1] / "data" / "modelopt" / "nvfp4_0.47.npz"


def _cases():
    r = np.load(DATA)
    for key in sorted({k.rsplit("_", 1)[0] for k in r.files if k.endswith("_packed")}):
        w = r[key + "_w"]
        if key.endswith("bfloat16"):
            w = w.view(ml_dtypes.bfloat16)
        yield key, w, r


def test_written_and_read_as_modelopt_computes_it(tmp_path):
    for key, w, r in _cases():
        c, s, g = quantize_nvfp4(w, convention="modelopt")
        t = modelopt_nvfp4_tensors("m.l", c, s, g)
        np.testing.assert_array_equal(t["m.l.weight"], r[key + "_packed"], err_msg=key)
        np.testing.assert_array_equal(t["m.l.weight_scale"].view(np.uint8), r[key + "_scale"], err_msg=key)
        assert t["m.l.weight_scale_2"] == r[key + "_scale_2"][0]
        t["m.l.input_scale"] = np.float32(0.5).reshape(())
        folder = tmp_path / key
        rio.save(t, folder, layout="modelopt-nvfp4")
        for src in (folder, folder / "model.safetensors"):  # by config, by tensors
            with rio.open(src) as ck:
                assert ck.logical_names() == ["m.l.weight", "m.l.input_scale"]
                assert ck.scheme("m.l.weight").format == "modelopt-nvfp4"
                got = ck.dequantize("m.l.weight")
            np.testing.assert_array_equal(got.view(np.uint32), r[key + "_back"].view(np.uint32),
                                          err_msg=key)


def test_compressed_tensors_converter_output_reads_as_its_decompressor(tmp_path):
    import_peer("torch")
    import_peer("compressed_tensors")
    import torch
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.entrypoints.convert.converters.modelopt_nvfp4 import (
        ModelOptNvfp4Converter,
    )
    from compressed_tensors.quantization import preset_name_to_scheme

    w = np.random.default_rng(4).standard_normal((8, 64)).astype(np.float32)
    t = modelopt_nvfp4_tensors("m.l", *quantize_nvfp4(w, convention="modelopt"))
    tt = {k: torch.from_numpy(np.ascontiguousarray(v.view(np.uint8) if v.dtype == ml_dtypes.float8_e4m3fn
                                                   else v).copy()) for k, v in t.items()}
    tt["m.l.weight_scale"] = tt["m.l.weight_scale"].view(torch.float8_e4m3fn)
    conv = ModelOptNvfp4Converter(targets=["re:.*"]).process(dict(tt))
    assert sorted(conv) == ["m.l.weight_global_scale", "m.l.weight_packed", "m.l.weight_scale"]
    out = {k: (v.view(torch.uint8).numpy().view(ml_dtypes.float8_e4m3fn) if v.dtype == torch.float8_e4m3fn
               else v.reshape(1).numpy() if k.endswith("global_scale") else v.numpy()) for k, v in conv.items()}
    rio.save(out, tmp_path / "ct", layout="nvfp4-pack-quantized")
    scheme = preset_name_to_scheme("NVFP4A16", ["Linear"])
    comp = BaseCompressor.get_value_from_registry("nvfp4-pack-quantized")
    theirs = comp.decompress({k.split(".")[-1]: v.reshape(1) if k.endswith("global_scale") else v
                              for k, v in conv.items()}, scheme)["weight"].float().numpy()
    with rio.open(tmp_path / "ct") as ck:
        np.testing.assert_array_equal(ck.dequantize("m.l.weight"), theirs)
    with rio.open(_save_modelopt(tmp_path, t)) as ck:  # the two readings differ by the 1 / scale_2 rounding
        assert np.abs(ck.dequantize("m.l.weight") - theirs).max() <= 2.0**-7 * np.abs(theirs).max()


def _save_modelopt(tmp_path, t):
    rio.save(t, tmp_path / "mo", layout="modelopt-nvfp4")
    return tmp_path / "mo"


def test_parts_that_disagree_and_other_algos_are_refused(tmp_path):
    w = np.random.default_rng(5).standard_normal((4, 32)).astype(np.float32)
    t = modelopt_nvfp4_tensors("m.l", *quantize_nvfp4(w, convention="modelopt"))
    bad = dict(t, **{"m.l.weight_scale": t["m.l.weight_scale"][:, :1]})
    with pytest.raises(RefquantError, match=r"m\.l\.weight_scale.*shape \(4, 1\); expected \(4, 2\)"):
        rio.save(bad, tmp_path / "a", layout="modelopt-nvfp4")
    bad = dict(t, **{"m.l.weight_scale_2": np.ones(2, np.float32)})
    with pytest.raises(RefquantError, match=r"weight_scale_2.*\(2,\)"):
        rio.save(bad, tmp_path / "b", layout="modelopt-nvfp4")
    rio.save(t, tmp_path / "c", layout="modelopt-nvfp4")
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg["quantization_config"]["quant_algo"] = "FP8"
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    with rio.open(tmp_path / "c") as ck, pytest.raises(RefquantError, match="quant_algo 'FP8'"):
        ck.logical_names()
