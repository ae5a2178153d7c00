"""refquant.io.layouts' bitsandbytes layout against bitsandbytes 0.50.2 on torch CPU.

A folder written by ``refquant.io.save(..., layout="bitsandbytes-nf4" / "-fp4" / "-int8")``
is read back with safetensors' torch loader and handed to bitsandbytes' own
deserialization: ``QuantState.from_dict`` (the packed JSON tensor, nested statistics)
and ``functional.dequantize_4bit``; ``Linear8bitLt``'s ``SCB`` through
``int8_vectorwise_dequant``; and ``Params4bit.from_prequantized`` / ``Linear8bitLt.load_state_dict`` accept
the tensors. Weights are drawn (normal, with zero rows and extreme magnitudes) in
float16, bfloat16 and float32, with odd element counts and partial blocks.
"""

from __future__ import annotations

import functools
import json

import ml_dtypes
import numpy as np
import pytest
from helpers import import_peer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import refquant.io as rio
from refquant.io.layouts.bnb import bnb_4bit_tensors, bnb_int8_tensors

pytestmark = pytest.mark.peer

SETTINGS = settings(max_examples=20, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
DTYPES = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16),
          "float32": np.dtype(np.float32)}


@functools.cache
def _bnb():
    import_peer("torch")
    import_peer("bitsandbytes")
    import bitsandbytes as bnb
    import bitsandbytes.functional  # noqa: F401

    return bnb


def _load_torch(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _weights(data, shape, dtype):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    w = rng.standard_normal(shape) * 10.0 ** data.draw(st.integers(-3, 3))
    if data.draw(st.booleans()):
        w[0] = 0  # an all-zero row (and block)
    return w.astype(DTYPES[dtype])


@SETTINGS
@given(st.data(), st.sampled_from(["nf4", "fp4"]), st.booleans(), st.sampled_from(sorted(DTYPES)),
       st.sampled_from([64, 128, 256]), st.sampled_from([(16, 64), (7, 33), (3, 129), (4, 256)]))
def test_quant_state_from_dict_and_dequantize_4bit_match(tmp_path_factory, data, qtype, nested, dtype,
                                                         bs, shape):
    bnb = _bnb()
    import torch

    w = _weights(data, shape, dtype)
    t = bnb_4bit_tensors("m.l", w, qtype, blocksize=bs, double_quant=nested)
    folder = tmp_path_factory.mktemp("bnb")
    rio.save(t, folder, layout=f"bitsandbytes-{qtype}", double_quant=nested, overwrite=True)
    with rio.open(folder) as ck:
        ours = ck.dequantize("m.l.weight")
    sd = _load_torch(folder)
    qs = bnb.functional.QuantState.from_dict(
        {k[len("m.l.weight."):]: v for k, v in sd.items() if k.startswith("m.l.weight.")},
        device=torch.device("cpu"))
    assert (qs.quant_type, qs.blocksize, tuple(qs.shape), qs.nested) == (qtype, bs, shape, nested)
    # the default (pure torch) backend's _dequantize_4bit_compute: bitsandbytes' reference,
    # flat blocks over the flattened weight as quantize_4bit and the CUDA kernel use them
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute

    absmax = qs.absmax
    if nested:
        absmax = bnb.functional.dequantize_blockwise(qs.absmax, qs.state2) + qs.offset
    theirs = _dequantize_4bit_compute(sd["m.l.weight"].view(-1), absmax.float(), qs.code, bs, qs.shape,
                                      qs.dtype)
    assert str(theirs.dtype).endswith(dtype)
    np.testing.assert_array_equal(theirs.float().numpy(), ours)
    if shape[-1] % bs == 0:
        # the native CPU kernel (cdequantize_blockwise_cpu_*) agrees only where no block
        # crosses a row: with shape[-1] % blocksize != 0 it indexes absmax per row
        # (bitsandbytes 0.50.2; e.g. (16, 64) in blocks of 128 differs by up to 1.6)
        native = bnb.functional.dequantize_4bit(sd["m.l.weight"], qs)
        np.testing.assert_array_equal(native.float().numpy(), ours)


@SETTINGS
@given(st.data(), st.sampled_from(sorted(DTYPES)))
def test_int8_vectorwise_dequant_matches(tmp_path_factory, data, dtype):
    _bnb()
    import torch

    w = _weights(data, (8, 48), dtype)
    t = bnb_int8_tensors("m.l", w)
    folder = tmp_path_factory.mktemp("int8")
    rio.save(t, folder, layout="bitsandbytes-int8", overwrite=True)
    with rio.open(folder) as ck:
        ours = ck.dequantize("m.l.weight")
    sd = _load_torch(folder)
    theirs = torch.ops.bitsandbytes.int8_vectorwise_dequant.default(sd["m.l.weight"], sd["m.l.SCB"])
    np.testing.assert_array_equal(theirs.numpy(), ours)
    # and bitsandbytes' own quantizer gives the codes and SCB refquant wrote
    cb, scb, _ = _bnb().functional.int8_vectorwise_quant(torch.from_numpy(w.astype(np.float32)))
    if not (w.astype(np.float32) == 0).all(axis=1).any():  # a zero row's codes are 0 * Inf
        np.testing.assert_array_equal(cb.numpy(), t["m.l.weight"])
    np.testing.assert_array_equal(scb.numpy(), t["m.l.SCB"])


def test_params4bit_from_prequantized_and_linear8bit_load_the_tensors(tmp_path):
    bnb = _bnb()
    import torch

    w = np.random.default_rng(3).standard_normal((32, 64)).astype(np.float16)
    rio.save(bnb_4bit_tensors("l", w, "nf4", 64, double_quant=True), tmp_path / "a",
             layout="bitsandbytes-nf4", double_quant=True)
    rio.save(bnb_int8_tensors("l", w), tmp_path / "b", layout="bitsandbytes-int8")
    # 4-bit: what transformers' bitsandbytes quantizer does with a prequantized checkpoint
    sd = _load_torch(tmp_path / "a")
    stats = {k[len("l.weight."):]: v for k, v in sd.items() if k.startswith("l.weight.")}
    p = bnb.nn.Params4bit.from_prequantized(data=sd["l.weight"], quantized_stats=stats,
                                            requires_grad=False, device="cpu")
    theirs = bnb.functional.dequantize_4bit(p.data, p.quant_state)
    with rio.open(tmp_path / "a") as ck:
        np.testing.assert_array_equal(theirs.float().numpy(), ck.dequantize("l.weight"))
    # LLM.int8: Linear8bitLt's own _load_from_state_dict (SCB, weight_format)
    layer = bnb.nn.Linear8bitLt(64, 32, bias=False, has_fp16_weights=False).to("cpu")  # quantizes
    layer.load_state_dict({k[2:]: v for k, v in _load_torch(tmp_path / "b").items()})
    theirs = torch.ops.bitsandbytes.int8_vectorwise_dequant.default(layer.weight.data, layer.weight.SCB)
    with rio.open(tmp_path / "b") as ck:
        np.testing.assert_array_equal(theirs.numpy(), ck.dequantize("l.weight"))
    cfg = json.loads((tmp_path / "a/config.json").read_text())["quantization_config"]
    assert cfg["bnb_4bit_quant_type"] == "nf4" and cfg["bnb_4bit_use_double_quant"] is True


@pytest.mark.parametrize("layout", ["bitsandbytes-nf4", "bitsandbytes-int8"])
def test_transformers_loads_a_refquant_bitsandbytes_llama(tmp_path, layout):
    bnb = _bnb()
    transformers = import_peer("transformers")
    import_peer("accelerate")
    import torch

    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                   dtype="float16")
    model = transformers.LlamaForCausalLM(cfg).half()
    t = {}
    for name, v in model.state_dict().items():
        a = v.numpy()
        if name.startswith("model.layers") and name.endswith("proj.weight"):
            base = name[: -len(".weight")]
            t.update(bnb_4bit_tensors(base, a, "nf4", 64, double_quant=True)
                     if layout.endswith("nf4") else bnb_int8_tensors(base, a))
        else:
            t[name] = a
    opts = {"double_quant": True, "compute_dtype": "float16"} if layout.endswith("nf4") else {}
    rio.save(t, tmp_path / "m", layout=layout, config=json.loads(cfg.to_json_string()), **opts)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m", device_map="cpu")
    modules = dict(loaded.named_modules())
    with rio.open(tmp_path / "m") as ck:
        names = [n for n in ck.logical_names() if ck.scheme(n) is not None]
        assert len(names) == 7
        for name in names:
            w = modules[name[: -len(".weight")]].weight
            if layout.endswith("nf4"):
                assert isinstance(w, bnb.nn.Params4bit)
                theirs = bnb.functional.dequantize_4bit(w.data, w.quant_state)
            else:
                assert isinstance(w, bnb.nn.Int8Params)
                theirs = torch.ops.bitsandbytes.int8_vectorwise_dequant.default(w.data, w.SCB)
            np.testing.assert_array_equal(theirs.float().numpy(), ck.dequantize(name), err_msg=name)
