"""A tiny random Hugging Face llama folder (config.json, model.safetensors in bfloat16,
a byte-level BPE tokenizer.json), written without torch: the input of the HF -> GGUF tests.

The tokenizer is trained by the ``tokenizers`` package (a transformers dependency, in the
peers extra) on a fixed text, so its vocabulary and merges are deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np

N_LAYER, HIDDEN, FF, N_HEAD, N_KV, VOCAB = 2, 64, 128, 4, 2, 320
TEXT = ["The quick brown fox jumps over the lazy dog. " * 20,
        "Quantization maps real numbers to a small grid of codes. " * 20]


def hf_llama_tensors(seed: int = 21) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def w(*shape, scale=0.08):
        return (rng.standard_normal(shape) * scale).astype(ml_dtypes.bfloat16)

    hd = HIDDEN // N_HEAD
    t = {"model.embed_tokens.weight": w(VOCAB, HIDDEN, scale=0.5)}
    for i in range(N_LAYER):
        p = f"model.layers.{i}."
        t[p + "self_attn.q_proj.weight"] = w(N_HEAD * hd, HIDDEN)
        t[p + "self_attn.k_proj.weight"] = w(N_KV * hd, HIDDEN)
        t[p + "self_attn.v_proj.weight"] = w(N_KV * hd, HIDDEN)
        t[p + "self_attn.o_proj.weight"] = w(HIDDEN, N_HEAD * hd)
        t[p + "mlp.gate_proj.weight"] = w(FF, HIDDEN)
        t[p + "mlp.up_proj.weight"] = w(FF, HIDDEN)
        t[p + "mlp.down_proj.weight"] = w(HIDDEN, FF)
        t[p + "input_layernorm.weight"] = (1 + w(HIDDEN, scale=0.1).astype(np.float32)).astype(
            ml_dtypes.bfloat16)
        t[p + "post_attention_layernorm.weight"] = (
            1 + w(HIDDEN, scale=0.1).astype(np.float32)).astype(ml_dtypes.bfloat16)
    t["model.norm.weight"] = np.ones(HIDDEN, ml_dtypes.bfloat16)
    t["lm_head.weight"] = w(VOCAB, HIDDEN, scale=0.3)
    return t


def write_hf_llama(folder, seed: int = 21) -> dict[str, np.ndarray]:
    """Write the folder; returns the tensors by Hugging Face name."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from refquant.io.streaming import SafetensorsStreamWriter

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = hf_llama_tensors(seed)
    with SafetensorsStreamWriter(folder / "model.safetensors",
                                 [(n, a.dtype, a.shape) for n, a in tensors.items()],
                                 metadata={"format": "pt"}) as wr:
        for n, a in tensors.items():
            wr.write(n, a)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
           "vocab_size": VOCAB, "hidden_size": HIDDEN, "intermediate_size": FF,
           "num_hidden_layers": N_LAYER, "num_attention_heads": N_HEAD,
           "num_key_value_heads": N_KV, "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
           "rope_theta": 10000.0, "hidden_act": "silu", "bos_token_id": 0, "eos_token_id": 1,
           "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                  special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXT, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
        special_tokens=[("<|begin_of_text|>", 0)])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
         "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 128}, indent=1))
    return tensors
