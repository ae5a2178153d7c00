"""A Hugging Face llama-family folder as the GGUF that llama.cpp loads.

What llama.cpp's ``convert_hf_to_gguf.py`` does for ``LlamaForCausalLM`` /
``MistralForCausalLM`` (its ``LlamaModel``), without torch or transformers, so that
``refquant compress MODEL_DIR -o model.gguf --scheme q4_k_m`` gives llama.cpp a file it
loads:

* **tensor names** through gguf-py's ``TensorNameMap`` for ``MODEL_ARCH.LLAMA``
  (``model.layers.0.self_attn.q_proj.weight`` -> ``blk.0.attn_q.weight``);
  ``rotary_emb.inv_freq`` buffers are dropped, any other unmapped tensor is refused;
* **q / k rows permuted** from Hugging Face's rotate-half RoPE layout to the interleaved
  pairs llama.cpp rotates: ``W.reshape(h, 2, d / 2, K).swapaxes(1, 2).reshape(W.shape)``
  with ``h`` the query heads for ``q_proj`` and the key-value heads for ``k_proj``
  (``LlamaModel.permute``);
* **1-D tensors** (the norms) in float32, as the script writes them;
* **hyper-parameters** from ``config.json``: ``llama.context_length``
  (``max_position_embeddings``), ``embedding_length``, ``block_count``,
  ``feed_forward_length``, ``attention.head_count`` / ``head_count_kv``,
  ``rope.freq_base`` (``rope_theta``), ``attention.layer_norm_rms_epsilon``,
  ``rope.dimension_count`` (``head_dim``), ``vocab_size``, ``attention.key_length`` /
  ``value_length`` when config.json names a ``head_dim``; linear rope scaling as
  ``rope.scaling.type`` / ``.factor``;
* **the tokenizer** from ``tokenizer.json`` when it is a byte-level BPE (Llama 3,
  SmolLM, Qwen-style): ``tokenizer.ggml.model = "gpt2"``, the tokens by id (ids the
  vocabulary lacks up to ``vocab_size`` as ``[PAD<i>]``, type UNUSED), their types
  (CONTROL for special added tokens, USER_DEFINED for other added tokens, NORMAL), and
  the merges, special token ids, ``add_bos`` / ``add_eos`` and chat template through
  gguf-py's ``SpecialVocab`` (the script's own helper).

``tokenizer.ggml.pre`` (which pre-tokenizer regex llama.cpp applies) is chosen by the
script from a hash of the Hugging Face tokenizer's output on a test text; refquant does not
run that tokenizer, and writes ``"default"`` (llama.cpp's GPT-2 regex) and says so in
the report's reason. A SentencePiece ``tokenizer.model`` (Llama 1 / 2, Mistral v0.1) is
not converted: refused with a RefquantError.

Recipe rules and imatrix entries then name the tensors as llama.cpp does
(``blk.*.attn_q.weight``), as llama-quantize and llama-imatrix name them.

Reference: ggml-org/llama.cpp ``convert_hf_to_gguf.py`` (``LlamaModel``, ``TextModel.
set_gguf_parameters``, ``get_vocab_base``, ``_set_vocab_gpt2``) and gguf-py 0.19.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .._errors import RefquantError
from ..io._common import LazyCheckpoint, TensorInfo

__all__ = ["is_llama_folder", "LlamaFolderView", "llama_fields"]

_ARCHS = ("LlamaForCausalLM", "MistralForCausalLM")
_DROPPED = ("rotary_emb.inv_freq",)


def _config(folder) -> dict | None:
    p = Path(folder) / "config.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_llama_folder(src) -> bool:
    """Whether ``src`` is a Hugging Face folder of a llama-family causal LM."""
    if not os.path.isdir(src):
        return False
    cfg = _config(src)
    return bool(cfg) and any(a in _ARCHS for a in cfg.get("architectures") or ())


def _hparams(cfg: dict, where) -> dict:
    def need(key):
        if not isinstance(cfg.get(key), int) or cfg[key] <= 0:
            raise RefquantError(f"{where}: config.json needs a positive integer {key!r} for a "
                                "llama GGUF")
        return cfg[key]

    n_head = need("num_attention_heads")
    hidden = need("hidden_size")
    n_kv = cfg.get("num_key_value_heads") or n_head
    head_dim = cfg.get("head_dim") or hidden // n_head
    return {"n_layer": need("num_hidden_layers"), "hidden": hidden,
            "ff": need("intermediate_size"), "n_head": n_head, "n_kv": int(n_kv),
            "head_dim": int(head_dim), "vocab": need("vocab_size"),
            "ctx": int(cfg.get("max_position_embeddings") or 4096),
            "eps": float(cfg.get("rms_norm_eps", 1e-5)),
            "theta": float(cfg.get("rope_theta", 10000.0))}


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face's rotate-half q / k rows in llama.cpp's interleaved order."""
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise RefquantError(f"q/k weight of {rows} rows is not {n_head} heads of even size")
    return np.ascontiguousarray(
        w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


class LlamaFolderView(LazyCheckpoint):
    """``inner`` (the folder opened by :func:`refquant.io.open`) under GGUF names, q / k
    permuted and 1-D tensors as float32."""

    def __init__(self, inner, folder):
        import gguf

        cfg = _config(folder) or {}
        self.folder, self.config = folder, cfg
        self.hp = _hparams(cfg, folder)
        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, self.hp["n_layer"])
        self._inner = inner
        self._src = {}
        infos = {}
        for name, info in inner.infos.items():
            if name.endswith(_DROPPED):
                continue
            new = names.get_name(name, try_suffixes=(".weight", ".bias"))
            if new is None:
                raise RefquantError(f"{folder}: tensor {name!r} has no llama.cpp name "
                                    "(gguf-py's TensorNameMap for LLAMA)")
            if info.scheme is not None:
                raise RefquantError(f"{folder}: tensor {name!r} is stored quantized "
                                    f"({info.scheme}); convert from the float checkpoint")
            one_d = len(info.shape) == 1
            dt = np.dtype(np.float32) if one_d else info.dtype
            infos[new] = TensorInfo(new, dt, tuple(info.shape),
                                    4 * info.numel if one_d else info.nbytes,
                                    "F32" if one_d else info.stored_dtype)
            self._src[new] = name
        # llama.cpp's hyper-parameter keys too: llama-quantize's type choice reads the
        # block count and the heads per KV head (iq4_xs) from them
        meta = dict(inner.metadata)
        meta.update({"general.architecture": "llama", "llama.block_count": self.hp["n_layer"],
                     "llama.attention.head_count": self.hp["n_head"],
                     "llama.attention.head_count_kv": self.hp["n_kv"]})
        super().__init__(inner.path, infos, meta)
        self.format = inner.format

    def _read(self, name):
        a = self._inner[self._src[name]]
        if a.ndim == 1:
            return np.asarray(a, np.float32)
        if name.endswith("attn_q.weight"):
            return permute_qk(a, self.hp["n_head"])
        if name.endswith("attn_k.weight"):
            return permute_qk(a, self.hp["n_kv"])
        return a

    def close(self):
        super().close()
        self._inner.close()


def _tokenizer_fields(folder, hp) -> tuple[list, str]:
    """(fields, note) of the tokenizer: byte-level BPE only."""
    import gguf

    folder = Path(folder)
    tj = folder / "tokenizer.json"
    if not tj.is_file():
        what = "a SentencePiece tokenizer.model" if (folder / "tokenizer.model").is_file() \
            else "no tokenizer.json"
        raise RefquantError(f"{folder}: {what}; refquant writes llama.cpp's tokenizer from a "
                            "byte-level BPE tokenizer.json only")
    tok = json.loads(tj.read_text(encoding="utf-8"))
    model = tok.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise RefquantError(f"{folder}: tokenizer.json model type {model.get('type')!r}; "
                            "refquant converts byte-level BPE tokenizers only")
    vocab = dict(model["vocab"])
    added = {}
    for t in tok.get("added_tokens") or ():
        vocab[t["content"]] = int(t["id"])
        added[int(t["id"])] = t
    reverse = {i: t for t, i in vocab.items()}
    n = max(hp["vocab"], max(reverse, default=-1) + 1)
    tokens, types = [], []
    T = gguf.TokenType
    for i in range(n):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(int(T.UNUSED))
        elif i in added:
            t = added[i]
            special = t.get("special") or (t["content"].startswith("<|")
                                           and t["content"].endswith("|>"))
            tokens.append(t["content"] if special else t["content"].replace("\u2581", " "))
            types.append(int(T.CONTROL if special else T.USER_DEFINED))
        else:
            tokens.append(reverse[i])
            types.append(int(T.NORMAL))
    sv = gguf.SpecialVocab(folder, load_merges=True, n_vocab=n)
    V, K = gguf.GGUFValueType, gguf.Keys.Tokenizer
    out = [(K.MODEL, "gpt2", V.STRING), (K.PRE, "default", V.STRING),
           (K.LIST, (tokens, V.STRING), V.ARRAY), (K.TOKEN_TYPE, (types, V.INT32), V.ARRAY)]
    if sv.merges:
        out.append((K.MERGES, (list(sv.merges), V.STRING), V.ARRAY))
    # the keys SpecialVocab.add_to_gguf sets, for the types GGUFWriter has a setter of
    W = gguf.GGUFWriter
    for typ, tid in sv.special_token_ids.items():
        if hasattr(W, f"add_{typ}_token_id"):
            out.append((f"tokenizer.ggml.{typ}_token_id", int(tid), V.UINT32))
    for typ, value in sv.add_special_token.items():
        if hasattr(W, f"add_add_{typ}_token"):
            out.append((f"tokenizer.ggml.add_{typ}_token", bool(value), V.BOOL))
    if isinstance(sv.chat_template, str):
        out.append((K.CHAT_TEMPLATE, sv.chat_template, V.STRING))
    return out, ("tokenizer.ggml.pre 'default': refquant does not run the Hugging Face "
                 "tokenizer that convert_hf_to_gguf.py hashes to choose it")


def llama_fields(view: LlamaFolderView) -> tuple[list, str]:
    """(key, value, type) of the llama GGUF's metadata, in convert_hf_to_gguf.py's order,
    and a note on what it could not reproduce."""
    import gguf

    V = gguf.GGUFValueType
    a = "llama"
    folder, cfg, hp = view.folder, view.config, view.hp
    out = [("general.name", Path(folder).resolve().name, V.STRING),
           (f"{a}.block_count", hp["n_layer"], V.UINT32),
           (f"{a}.context_length", hp["ctx"], V.UINT32),
           (f"{a}.embedding_length", hp["hidden"], V.UINT32),
           (f"{a}.feed_forward_length", hp["ff"], V.UINT32),
           (f"{a}.attention.head_count", hp["n_head"], V.UINT32),
           (f"{a}.attention.head_count_kv", hp["n_kv"], V.UINT32),
           (f"{a}.rope.freq_base", hp["theta"], V.FLOAT32),
           (f"{a}.attention.layer_norm_rms_epsilon", hp["eps"], V.FLOAT32),
           (f"{a}.vocab_size", hp["vocab"], V.UINT32),
           (f"{a}.rope.dimension_count", hp["head_dim"], V.UINT32)]
    if cfg.get("head_dim"):  # heads not hidden_size / n_head wide (Mistral-Nemo)
        out += [(f"{a}.attention.key_length", hp["head_dim"], V.UINT32),
                (f"{a}.attention.value_length", hp["head_dim"], V.UINT32)]
    scaling = cfg.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "linear" and "factor" in scaling:
        out += [(f"{a}.rope.scaling.type", "linear", V.STRING),
                (f"{a}.rope.scaling.factor", float(scaling["factor"]), V.FLOAT32)]
    elif scaling and kind not in (None, "default"):
        raise RefquantError(f"{folder}: rope scaling {kind!r} is not converted (llama 3.1's "
                            "'llama3' needs the rope_freqs tensor convert_hf_to_gguf.py builds)")
    tok, note = _tokenizer_fields(folder, hp)
    return out + tok, note
