"""A Hugging Face llama folder compressed to GGUF: llama.cpp's names, q / k permuted as
convert_hf_to_gguf.py permutes them, its hyper-parameters and tokenizer keys.
(tests/peers/test_llama_quantize_live.py loads the file with llama.cpp and compares its
logits with transformers.)"""

import json

import numpy as np
import pytest
from helpers import import_peer
from hf_llama import HIDDEN, N_HEAD, N_KV, N_LAYER, VOCAB, write_hf_llama

from refquant import RefquantError
from refquant.compress import compress
from refquant.compress.hf_gguf import permute_qk


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    import_peer("gguf")
    import_peer("tokenizers")
    d = tmp_path_factory.mktemp("hf") / "tiny-llama"
    return d, write_hf_llama(d)


def _read(path):
    import gguf

    r = gguf.GGUFReader(path)
    return r, {t.name: t for t in r.tensors}


def _f32(t):
    """A GGUF tensor's values as float32 in NumPy order (gguf-py dequantizes BF16 too)."""
    import gguf

    return gguf.quants.dequantize(t.data, t.tensor_type).reshape(
        [int(x) for x in reversed(t.shape.tolist())])


def test_f32_gguf_holds_every_weight_under_llama_cpp_names(folder, tmp_path):
    d, hf = folder
    rep = compress(d, tmp_path / "m.gguf", scheme="f32")
    r, t = _read(tmp_path / "m.gguf")
    assert r.fields["general.architecture"].contents() == "llama"
    assert len(t) == len(hf)
    f32 = {n: np.asarray(a, np.float32) for n, a in hf.items()}
    np.testing.assert_array_equal(_f32(t["token_embd.weight"]), f32["model.embed_tokens.weight"])
    np.testing.assert_array_equal(_f32(t["output.weight"]), f32["lm_head.weight"])
    for i in range(N_LAYER):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        q = f32[p + "self_attn.q_proj.weight"]
        k = f32[p + "self_attn.k_proj.weight"]
        np.testing.assert_array_equal(_f32(t[b + "attn_q.weight"]), permute_qk(q, N_HEAD))
        np.testing.assert_array_equal(_f32(t[b + "attn_k.weight"]), permute_qk(k, N_KV))
        # convert_hf_to_gguf.py's LlamaModel.permute, spelled out on one head's rows
        hd = HIDDEN // N_HEAD
        head = q[:hd]
        pairs = np.stack([head[:hd // 2], head[hd // 2:]], axis=1).reshape(hd, HIDDEN)
        np.testing.assert_array_equal(_f32(t[b + "attn_q.weight"])[:hd], pairs)
        np.testing.assert_array_equal(_f32(t[b + "attn_v.weight"]), f32[p + "self_attn.v_proj.weight"])
        np.testing.assert_array_equal(_f32(t[b + "ffn_down.weight"]), f32[p + "mlp.down_proj.weight"])
        assert t[b + "attn_norm.weight"].tensor_type.name == "F32"
    assert any("tokenizer.ggml.pre 'default'" in n for n in rep.notes)
    assert "tokenizer.ggml.pre" in json.loads(rep.to_json())["notes"][0]


def test_hyper_parameters_and_tokenizer_keys(folder, tmp_path):
    import gguf

    d, _ = folder
    compress(d, tmp_path / "m.gguf", scheme="q8_0")
    r, t = _read(tmp_path / "m.gguf")
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("GGUF.")}
    assert f["llama.block_count"] == N_LAYER and f["llama.embedding_length"] == HIDDEN
    assert f["llama.attention.head_count"] == N_HEAD
    assert f["llama.attention.head_count_kv"] == N_KV
    assert f["llama.rope.dimension_count"] == HIDDEN // N_HEAD
    assert f["llama.vocab_size"] == VOCAB and f["llama.context_length"] == 128
    assert f["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    tok = json.loads((d / "tokenizer.json").read_text())
    tokens = f["tokenizer.ggml.tokens"]
    assert len(tokens) == VOCAB  # the trained 300, then [PAD300] ... up to vocab_size
    for s, i in tok["model"]["vocab"].items():
        assert tokens[i] == s
    assert tokens[-1] == f"[PAD{VOCAB - 1}]"
    types = f["tokenizer.ggml.token_type"]
    assert types[0] == types[1] == int(gguf.TokenType.CONTROL)
    assert types[5] == int(gguf.TokenType.NORMAL) and types[-1] == int(gguf.TokenType.UNUSED)
    merges = tok["model"]["merges"]
    assert f["tokenizer.ggml.merges"] == [m if isinstance(m, str) else " ".join(m) for m in merges]
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "default"
    assert f["tokenizer.ggml.bos_token_id"] == 0 and f["tokenizer.ggml.eos_token_id"] == 1
    assert f["tokenizer.ggml.add_bos_token"] is True
    assert t["output.weight"].tensor_type.name == "Q8_0"


def test_what_is_not_converted_is_refused(folder, tmp_path):
    import shutil

    d, _ = folder
    bad = tmp_path / "spm"
    shutil.copytree(d, bad)
    (bad / "tokenizer.json").unlink()
    (bad / "tokenizer.model").write_bytes(b"\x00")
    with pytest.raises(RefquantError, match="SentencePiece tokenizer.model"):
        compress(bad, tmp_path / "a.gguf", scheme="q8_0")
    rope = tmp_path / "rope"
    shutil.copytree(d, rope)
    cfg = json.loads((rope / "config.json").read_text())
    cfg["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0}
    (rope / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RefquantError, match="rope scaling 'llama3'"):
        compress(rope, tmp_path / "b.gguf", scheme="q8_0")
    assert not (tmp_path / "a.gguf").exists() and not (tmp_path / "b.gguf").exists()
    # safetensors output of the same folder keeps the Hugging Face names
    compress(d, tmp_path / "c.safetensors", scheme="int8")
    import refquant.io as rio

    with rio.open(tmp_path / "c.safetensors") as ck:
        assert any(n.startswith("model.layers.0.self_attn.q_proj.weight") for n in ck)


def test_llama_cpp_mixes_read_the_folders_hyper_parameters(folder, tmp_path):
    """q4_k_m / iq4_xs from a Hugging Face folder choose types as llama-quantize does on the
    converted model: the layer count and heads per KV head come from config.json."""
    from refquant.compress.llamacpp import select_types

    d, hf = folder
    rep = compress(d, tmp_path / "m.gguf", scheme="iq4_xs")
    r, t = _read(tmp_path / "m.gguf")
    shapes = [(n, tuple(int(x) for x in reversed(v.shape.tolist())), True) for n, v in t.items()]
    want = select_types(shapes, "iq4_xs", n_layer=N_LAYER, n_gqa=N_HEAD // N_KV)
    for n, v in t.items():
        exp = want[n].ggml_type or ("F32" if v.tensor_type.name == "F32" else None)
        assert exp is None or v.tensor_type.name == exp, n
    assert {x.name for x in rep.rows} == set(t)


def test_the_folder_view_carries_llama_cpps_hyper_parameter_keys(folder):
    import refquant.io as rio
    from refquant.compress.hf_gguf import LlamaFolderView
    from refquant.compress.pipeline import _n_gqa, _n_layer

    d, _ = folder
    with LlamaFolderView(rio.open(d), d) as v:
        assert _n_layer(v) == N_LAYER and _n_gqa(v) == N_HEAD // N_KV
        assert v.info("blk.0.attn_norm.weight").dtype == np.float32
        assert v["blk.1.attn_k.weight"].shape == (N_KV * HIDDEN // N_HEAD, HIDDEN)


def test_an_explicit_head_dim_gives_the_key_and_value_lengths(folder, tmp_path):
    import shutil

    d, _ = folder
    hd = tmp_path / "hd"
    shutil.copytree(d, hd)
    cfg = json.loads((hd / "config.json").read_text())
    cfg["head_dim"] = HIDDEN // N_HEAD
    (hd / "config.json").write_text(json.dumps(cfg))
    compress(hd, tmp_path / "m.gguf", scheme="q8_0")
    r, _ = _read(tmp_path / "m.gguf")
    for k in ("llama.attention.key_length", "llama.attention.value_length",
              "llama.rope.dimension_count"):
        assert r.fields[k].contents() == HIDDEN // N_HEAD
    compress(d, tmp_path / "n.gguf", scheme="q8_0")
    assert "llama.attention.key_length" not in _read(tmp_path / "n.gguf")[0].fields
