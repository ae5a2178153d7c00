"""refquant.io.layouts' FP8 layouts against transformers 5.23.0 and compressed-tensors 0.20.0.

* ``fp8-block`` (DeepSeek-V3 / Qwen3-FP8 ``weight_scale_inv`` per 128x128 tile): a Llama
  written by ``refquant.io.save(..., layout="fp8-block")`` loads through transformers'
  ``FineGrainedFP8Config(dequantize=True)`` (CPU; needs accelerate) to refquant's float32
  weights. transformers 5.23's ``_dequantize_one`` derives the tile from
  ``rows // scale_rows`` and refuses a shape with a partial edge tile, which DeepSeek's
  kernel and compressed-tensors accept: partial tiles are checked below instead.
* the same tiles under compressed-tensors' ``block`` strategy (``float-quantized``,
  ``_process_block``) and the per-tensor ``fp8`` scale under its ``tensor`` strategy, on
  drawn e4m3 codes (NaN included) and raw-bit float32 scales.
"""

from __future__ import annotations

import functools
import json
import warnings

import ml_dtypes
import numpy as np
import pytest
from helpers import import_peer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import refquant.io as rio
from refquant.io.layouts.fp8 import fp8_block_tensors

pytestmark = pytest.mark.peer

SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)


@functools.cache
def _ct():
    import_peer("torch")
    warnings.filterwarnings("ignore", message=".*deprecated.*")
    return import_peer("compressed_tensors")


def _t(a):
    import torch

    a = np.ascontiguousarray(a)
    if a.dtype == E4M3:
        return torch.from_numpy(a.view(np.uint8).copy()).view(torch.float8_e4m3fn)
    return torch.from_numpy(a.copy())


@SETTINGS
@given(st.data(), st.sampled_from([(130, 300), (128, 128), (40, 257)]), st.booleans())
def test_block_and_tensor_scales_match_compressed_tensors_dequantize(tmp_path_factory, data, shape,
                                                                      block):
    _ct()
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import dequantize

    n, k = shape
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    w = rng.integers(0, 256, size=shape).astype(np.uint8).view(E4M3)
    sshape = (-(-n // 128), -(-k // 128)) if block else ()
    raw = data.draw(st.lists(st.integers(0, 2**32 - 1), min_size=int(np.prod(sshape)),
                             max_size=int(np.prod(sshape))))
    s = np.array(raw, np.uint32).view(np.float32).reshape(sshape)
    if data.draw(st.booleans()):
        s = np.nan_to_num(np.abs(s) % 3, nan=1.0).astype(np.float32)
    name = ".weight_scale_inv" if block else ".weight_scale"
    folder = tmp_path_factory.mktemp("fp8")
    rio.save({"m.l.weight": w, "m.l" + name: s}, folder, layout="fp8-block" if block else "fp8",
             overwrite=True)
    with rio.open(folder) as ck:
        assert ck.scheme("m.l.weight").format == ("fp8-block" if block else "fp8")
        ours = ck.dequantize("m.l.weight")
    args = QuantizationArgs(num_bits=8, type="float", symmetric=True,
                            strategy="block" if block else "tensor",
                            block_structure=[128, 128] if block else None)
    theirs = dequantize(_t(w), _t(s), args=args)
    np.testing.assert_array_equal(theirs.float().numpy(), ours)


def test_transformers_finegrained_fp8_loads_a_refquant_fp8_block_llama(tmp_path):
    _ct()
    import_peer("accelerate")
    transformers = import_peer("transformers")
    import torch

    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=256, intermediate_size=384,
                                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    model = transformers.LlamaForCausalLM(cfg)
    t = {}
    for name, v in model.state_dict().items():
        a = v.float().numpy()
        if name.startswith("model.layers") and name.endswith("proj.weight"):
            t.update(fp8_block_tensors(name[: -len(".weight")], a))
        else:
            t[name] = a.astype(ml_dtypes.bfloat16)
    rio.save(t, tmp_path / "m", layout="fp8-block", config=json.loads(cfg.to_json_string()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = transformers.AutoModelForCausalLM.from_pretrained(
            tmp_path / "m", quantization_config=transformers.FineGrainedFP8Config(dequantize=True),
            dtype=torch.float32)
    sd = loaded.state_dict()
    with rio.open(tmp_path / "m") as ck:
        names = [n for n in ck.logical_names() if ck.scheme(n) is not None]
        assert len(names) == 7
        for name in names:
            np.testing.assert_array_equal(sd[name].float().numpy(), ck.dequantize(name), err_msg=name)
