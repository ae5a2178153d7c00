"""``refquant compress`` Hugging Face outputs loaded by transformers 5.23.0 on CPU.

A tiny random Llama saved by transformers (``save_pretrained``: config.json,
generation_config.json) is compressed by :func:`refquant.compress.compress` with
``ct-int4-g128``, ``ct-int8``, ``nvfp4`` (compressed-tensors 0.20.0 decompressing,
``CompressedTensorsConfig(dequantize=True)``) and ``hf-fp8-block``
(``FineGrainedFP8Config(dequantize=True)``, needs accelerate); the loaded model's
weights equal refquant's dequantization of the same folder, and the tensors kept
(embeddings, norms, the head) equal the input's.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
from helpers import import_peer

import refquant.io as rio
from refquant.compress import compress

pytestmark = pytest.mark.peer


@functools.cache
def _transformers():
    import_peer("torch")
    warnings.filterwarnings("ignore", message=".*deprecated.*")
    import_peer("compressed_tensors")
    return import_peer("transformers")


def _tiny_llama(tmp_path):
    transformers = _transformers()
    import torch

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=256, intermediate_size=384,
                                   num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=2)
    model = transformers.LlamaForCausalLM(cfg).to(torch.float32)
    model.save_pretrained(tmp_path / "in")
    return {k: v.float().numpy().copy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("scheme", ["ct-int4-g128", "ct-int8", "hf-fp8-block", "nvfp4"])
def test_transformers_loads_refquant_compress_output(tmp_path, scheme):
    transformers = _transformers()
    if scheme == "hf-fp8-block":
        import_peer("accelerate")
    import torch

    original = _tiny_llama(tmp_path)
    compress(tmp_path / "in", tmp_path / "out", scheme=scheme)
    qc = (transformers.FineGrainedFP8Config(dequantize=True) if scheme == "hf-fp8-block"
          else transformers.CompressedTensorsConfig(dequantize=True))
    with warnings.catch_warnings():  # "the model already has a quantization_config"
        warnings.simplefilter("ignore")
        loaded = transformers.AutoModelForCausalLM.from_pretrained(
            tmp_path / "out", quantization_config=qc, dtype=torch.float32)
    sd = {k: v.float().numpy() for k, v in loaded.state_dict().items()}
    with rio.open(tmp_path / "out") as ck:
        names = [n for n in ck.logical_names() if ck.scheme(n) is not None]
        assert len(names) == 7  # q, k, v, o, gate, up, down
        for name in names:
            np.testing.assert_array_equal(sd[name], ck.dequantize(name), err_msg=name)
            assert not np.array_equal(sd[name], original[name])
    for name in ("model.embed_tokens.weight", "model.norm.weight",
                 "model.layers.0.input_layernorm.weight"):
        np.testing.assert_array_equal(sd[name], original[name], err_msg=name)
