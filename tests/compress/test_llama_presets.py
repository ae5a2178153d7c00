"""llama.cpp presets (q4_k_m, ...): llama-quantize's type per tensor and its very bytes.

The expectations of the type tests are derived by hand from llama.cpp's
src/llama-quant.cpp (see refquant.compress.llamacpp) for the tiny model of
tests/tiny_llama.py: 8 blocks, so use_more_bits(i, 8) holds for i = 0 (i < 8 // 8),
6 and 7 (i >= 7 * 8 // 8 = 7 ... and (6 - 1) % 3 == 2) and 3 ((3 - 1) % 3 == 2);
ffn_down rows of 96 in layers 1, 2, 4, 5, 7.

The records under tests/data/llama_quantize/ are what llama.cpp's own
llama_model_quantize wrote for the same model (scripts/record_llama_quantize.py,
llama-cpp-cffi 0.4.42), without and (imatrix/) with an importance matrix.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import import_peer
from tiny_llama import N_FF, N_LAYER, tiny_llama_tensors, write_tiny_imatrix, write_tiny_llama

import refquant.io as rio
from refquant import RefquantError
from refquant.compress import compress, decompress
from refquant.compress.llamacpp import (
    LLAMA_CPP_PRESETS,
    allows_quantization,
    category,
    select_types,
    use_more_bits,
)

RECORDS = Path(__file__).resolve().parents[1] / "data" / "llama_quantize"
MORE_BITS_8 = {0, 3, 6, 7}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import_peer("gguf")
    path = tmp_path_factory.mktemp("tiny") / "tiny-f16.gguf"
    return path, write_tiny_llama(path)


def _expected(preset):
    """Hand-derived types of the tiny model under ``preset`` (None: kept as it is)."""
    base = {"q4_k_m": "Q4_K", "q5_k_m": "Q5_K", "q3_k_m": "Q3_K", "q4_k_s": "Q4_K",
            "q5_k_s": "Q5_K", "q6_k": "Q6_K", "q8_0": "Q8_0", "q4_0": "Q4_0",
            "iq4_xs": "IQ4_XS"}[preset]
    fallback = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "Q3_K": "Q4_0",
                "IQ4_XS": "IQ4_NL"}
    out = {"token_embd.weight": base, "output_norm.weight": None,
           "output.weight": "Q8_0" if preset == "q8_0" else "Q6_K"}
    for i in range(N_LAYER):
        p = f"blk.{i}."
        out[p + "attn_norm.weight"] = out[p + "ffn_norm.weight"] = None
        for t in ("attn_q", "attn_k", "ffn_gate", "ffn_up"):
            out[p + t + ".weight"] = base
        out[p + "attn_output.weight"] = "Q4_K" if preset == "q3_k_m" else base
        v = down = base
        if preset in ("q4_k_m", "q5_k_m"):
            v = "Q6_K" if i in MORE_BITS_8 else base
            down = "Q6_K" if i in MORE_BITS_8 else base
        elif preset == "q3_k_m":
            v = "Q5_K" if i < 2 else "Q4_K"
            down = "Q4_K"  # i < 8 // 16 never holds; not Falcon
        elif preset == "q4_k_s":
            v = "Q5_K" if i < 4 else base
            down = "Q5_K" if i < 1 else base
        elif preset == "iq4_xs":  # 4 heads / 2 KV heads: n_gqa 2 < 4, attn_v unchanged
            down = "Q5_K" if i < 1 else base  # i < 8 // 8, no imatrix
        out[p + "attn_v.weight"] = v
        if N_FF[i] % 256 and down in fallback:
            down = fallback[down]
        out[p + "ffn_down.weight"] = down
    return out


@pytest.mark.parametrize("preset", list(LLAMA_CPP_PRESETS))
def test_types_chosen_per_tensor_follow_llama_quantize_rules(preset):
    tensors = tiny_llama_tensors()
    got = select_types([(n, a.shape, True) for n, a in tensors.items()], preset, n_layer=N_LAYER)
    assert {n: c.ggml_type for n, c in got.items()} == _expected(preset)


def test_iq4_xs_gives_attn_v_q5_k_from_four_heads_per_kv_head():
    t = tiny_llama_tensors()
    spec = [(n, a.shape, True) for n, a in t.items()]
    for n_gqa, want in ((2, "IQ4_XS"), (4, "Q5_K"), (None, "IQ4_XS")):
        got = select_types(spec, "iq4_xs", n_layer=N_LAYER, n_gqa=n_gqa)
        assert {got[f"blk.{i}.attn_v.weight"].ggml_type for i in range(N_LAYER)} == {want}


def test_use_more_bits_picks_the_first_and_last_eighth_and_every_third_layer():
    assert {i for i in range(8) if use_more_bits(i, 8)} == MORE_BITS_8
    # 32 layers: i < 4, i >= 28, and (i - 4) % 3 == 2: 6, 9, ..., 27
    assert {i for i in range(32) if use_more_bits(i, 32)} == (
        {0, 1, 2, 3, 28, 29, 30, 31} | set(range(6, 28, 3)))


def test_tied_embeddings_give_token_embd_the_output_type():
    t = tiny_llama_tensors(tied=True)
    got = select_types([(n, a.shape, True) for n, a in t.items()], "q4_k_m")
    assert got["token_embd.weight"].ggml_type == "Q6_K"
    assert "output tensor" in got["token_embd.weight"].reason


def test_rows_no_type_divides_fall_back_to_f16_or_are_kept():
    t = [("blk.0.ffn_down.weight", (256, 48), True), ("blk.0.attn_v.weight", (64, 256), True)]
    got = select_types(t, "q4_k_m", n_layer=1)
    # Q6_K (layer 0 of 1 gets more bits) -> Q8_0 needs rows of 32: F16
    assert got["blk.0.ffn_down.weight"].ggml_type == "F16"
    assert "row size 48" in got["blk.0.ffn_down.weight"].reason
    # llama-quantize has no fallback for Q8_0 and throws; refquant keeps the tensor
    got = select_types(t, "q8_0", n_layer=1)
    assert got["blk.0.ffn_down.weight"].ggml_type is None
    assert "no fallback for Q8_0" in got["blk.0.ffn_down.weight"].reason


def test_which_tensors_llama_quantize_leaves_alone():
    assert not allows_quantization("blk.0.attn_norm.weight", (256, 4))  # a norm, even 2-D
    assert not allows_quantization("blk.0.ffn_gate_inp.weight", (8, 256))
    assert not allows_quantization("blk.0.attn_q.bias", (256, 256))  # not a weight
    assert not allows_quantization("blk.0.attn_q.weight", (1, 256))  # ggml_n_dims == 1
    assert allows_quantization("blk.0.attn_q.weight", (256, 1))
    assert not allows_quantization("position_embd.weight", (64, 256))
    assert allows_quantization("token_embd.weight", (64, 256))


def test_hugging_face_names_map_to_llama_cpp_categories():
    assert category("model.layers.3.self_attn.v_proj.weight") == "attn_v"
    assert category("model.layers.3.mlp.down_proj.weight") == "ffn_down"
    assert category("lm_head.weight") == "output"
    assert category("model.embed_tokens.weight") == "token_embd"
    assert category("model.layers.3.mlp.up_proj.weight") == "ffn_up"
    assert category("model.norm.weight") == "other"


def _records(preset, folder=RECORDS):
    path = folder / f"{preset}.json"
    if not path.exists():
        pytest.fail(f"{path} is missing: run scripts/record_llama_quantize.py")
    return json.loads(path.read_text())


@pytest.mark.parametrize("preset", list(LLAMA_CPP_PRESETS))
def test_gguf_file_is_byte_identical_to_llama_model_quantize(tiny, tmp_path, preset):
    import gguf

    src, _ = tiny
    rec = _records(preset)
    assert hashlib.sha256(src.read_bytes()).hexdigest() == rec["input_sha256"], (
        "tiny_llama.py no longer writes the recorded model: rerun "
        "scripts/record_llama_quantize.py")
    rep = compress(src, tmp_path / "q.gguf", scheme=preset)
    r = gguf.GGUFReader(tmp_path / "q.gguf")
    assert [t.name for t in r.tensors] == rec["tensor_order"]  # the loader's order
    for t in r.tensors:
        want = rec["tensors"][t.name]
        assert t.tensor_type.name == want["type"], t.name
        assert hashlib.sha256(t.data.tobytes()).hexdigest() == want["sha256"], t.name
    for key, value in rec["metadata"].items():
        assert r.fields[key].contents() == value, key
    rows = {x.name: x for x in rep.rows}
    assert rows["output.weight"].scheme == rec["tensors"]["output.weight"]["type"].lower()
    # and the whole file: header, metadata in llama-quantize's key order, padding, data
    data = (tmp_path / "q.gguf").read_bytes()
    assert len(data) == rec["file_size"]
    assert hashlib.sha256(data).hexdigest() == rec["file_sha256"]


def _int_keys_as_int32(data: bytes, reader, keys) -> bytes:
    """``data`` with the value-type tag of each of ``keys`` (UINT32) set to INT32."""
    import gguf

    b = bytearray(data)
    for k in keys:
        f = reader.fields[k]
        at = f.offset + 8 + len(k.encode())  # uint64 key length, key bytes, then the type
        assert int.from_bytes(b[at:at + 4], "little") == gguf.GGUFValueType.UINT32, k
        b[at:at + 4] = int(gguf.GGUFValueType.INT32).to_bytes(4, "little")
    return bytes(b)


@pytest.mark.parametrize("preset", list(LLAMA_CPP_PRESETS))
def test_with_an_imatrix_the_file_is_llama_model_quantizes(tiny, tmp_path, monkeypatch, preset):
    """``--imatrix``: the tensors llama.cpp's library wrote given llama-quantize's imatrix map
    and KV overrides (scripts/record_llama_quantize.py), byte for byte, with the imatrix's
    effect on the type choice (q4_0: ffn_down of layer 0 in Q4_1; iq4_xs: no Q5_K), and the
    whole file once the two count keys are typed as the recorded build types them.

    The recorded llama.cpp (llama-cpp-cffi 0.4.42) writes ``LLAMA_KV_OVERRIDE_TYPE_INT``
    overrides with ``gguf_set_val_i32``; llama.cpp since PR 14182 (June 2025) writes them
    with ``gguf_set_val_u32``, and refquant follows the current llama.cpp: its file differs
    from the record in those two type tags and nowhere else."""
    import gguf

    src, _ = tiny
    rec = _records(preset, RECORDS / "imatrix")
    monkeypatch.chdir(tmp_path)  # the path as given is stored: the recorded run gave it bare
    entries = write_tiny_imatrix(tmp_path / "tiny-imatrix.dat")
    assert hashlib.sha256((tmp_path / "tiny-imatrix.dat").read_bytes()).hexdigest() == rec[
        "imatrix_sha256"], "tiny_llama.py no longer writes the recorded imatrix"
    rep = compress(src, "q.gguf", scheme=preset, imatrix="tiny-imatrix.dat")
    r = gguf.GGUFReader(tmp_path / "q.gguf")
    assert [t.name for t in r.tensors] == rec["tensor_order"]
    for t in r.tensors:
        want = rec["tensors"][t.name]
        assert t.tensor_type.name == want["type"], t.name
        assert hashlib.sha256(t.data.tobytes()).hexdigest() == want["sha256"], t.name
    assert [k for k in r.fields if not k.startswith("GGUF.")] == rec["key_order"]
    for key, value in rec["metadata"].items():
        assert r.fields[key].contents() == value, key
    counts = ["quantize.imatrix.entries_count", "quantize.imatrix.chunks_count"]
    assert rec["metadata"]["quantize.imatrix.entries_count"] == len(entries)
    for k in counts:
        assert rec["metadata_types"][k] == ["INT32"]
        assert r.fields[k].types == [gguf.GGUFValueType.UINT32]
    data = (tmp_path / "q.gguf").read_bytes()
    assert len(data) == rec["file_size"]
    assert hashlib.sha256(_int_keys_as_int32(data, r, counts)).hexdigest() == rec["file_sha256"]
    if preset == "q4_0":
        assert {x.name: x.scheme for x in rep.rows}["blk.0.ffn_down.weight"] == "q4_1"


def test_has_imatrix_changes_only_the_rules_llama_cpp_gives_it():
    tensors = [(n, a.shape, True) for n, a in tiny_llama_tensors().items()]
    for preset in LLAMA_CPP_PRESETS:
        plain = select_types(tensors, preset)
        imx = select_types(tensors, preset, has_imatrix=True)
        diff = {n for n in plain if plain[n].ggml_type != imx[n].ggml_type}
        if preset == "q4_0":
            assert diff == {"blk.0.ffn_down.weight"}
            assert imx["blk.0.ffn_down.weight"].ggml_type == "Q4_1"
        elif preset == "iq4_xs":
            assert diff == {"blk.0.ffn_down.weight"}
            assert (plain["blk.0.ffn_down.weight"].ggml_type,
                    imx["blk.0.ffn_down.weight"].ggml_type) == ("Q5_K", "IQ4_XS")
        else:
            assert not diff, preset


def test_q4_k_m_bytes_are_refquants_ggml_quantize_of_the_same_rows(tiny, tmp_path):
    import gguf

    from refquant.compat import ggml

    src, tensors = tiny
    compress(src, tmp_path / "q.gguf", scheme="q4_k_m")
    r = gguf.GGUFReader(tmp_path / "q.gguf")
    seen = set()
    for t in r.tensors:
        ty = t.tensor_type.name
        if ty in ("F32", "F16") or (ty in seen and "blk.7" not in t.name):
            continue  # one tensor of each type (and the last layer), to keep the test short
        seen.add(ty)
        a = np.asarray(tensors[t.name], np.float32)
        assert np.array_equal(t.data.reshape(-1).view(np.uint8),
                              ggml.quantize(a, ty).reshape(-1)), t.name
    assert seen == {"Q4_K", "Q6_K", "Q5_0", "Q8_0"}


def test_gguf_input_keeps_every_metadata_key_and_sets_the_file_type(tiny, tmp_path):
    import gguf

    src, _ = tiny
    compress(src, tmp_path / "q.gguf", scheme="q8_0")
    a, b = gguf.GGUFReader(src), gguf.GGUFReader(tmp_path / "q.gguf")
    for key, f in a.fields.items():
        if key.startswith("GGUF.") or key == "general.file_type":
            continue
        assert b.fields[key].types == f.types and b.fields[key].contents() == f.contents(), key
    assert b.fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q8_0)


def test_q4_k_m_on_hugging_face_names_writes_a_mixed_refquant_safetensors(tmp_path):
    rng = np.random.default_rng(3)
    w = {"model.embed_tokens.weight": rng.standard_normal((16, 256)).astype(np.float32),
         "lm_head.weight": rng.standard_normal((16, 256)).astype(np.float32),
         "model.norm.weight": np.ones(256, np.float32)}
    for i in range(2):
        p = f"model.layers.{i}."
        w[p + "self_attn.v_proj.weight"] = rng.standard_normal((64, 256)).astype(np.float32)
        w[p + "mlp.down_proj.weight"] = rng.standard_normal((256, 64)).astype(np.float32)
    src = rio.save(w, tmp_path / "m.safetensors")
    rep = compress(src, tmp_path / "c.safetensors", scheme="q4_k_m")
    got = {r.name: r.scheme for r in rep.rows}
    # 2 layers: use_more_bits(i, 2) holds for i = 0 (i < 0 fails; 7*2//8 = 1 <= i for i = 1;
    # (0 - 0) % 3 != 2) -> only layer 1 of attn_v / ffn_down gets Q6_K
    assert [use_more_bits(i, 2) for i in range(2)] == [False, True]
    assert got["model.layers.0.self_attn.v_proj.weight"] == "q4_k"
    assert got["model.layers.1.self_attn.v_proj.weight"] == "q6_k"
    assert got["model.layers.0.mlp.down_proj.weight"] == "q5_0"  # rows of 64: Q4_K -> Q5_0
    assert got["model.layers.1.mlp.down_proj.weight"] == "q8_0"  # Q6_K -> Q8_0
    assert got["lm_head.weight"] == "q6_k" and got["model.embed_tokens.weight"] == "q4_k"
    assert got["model.norm.weight"] == "keep"
    decompress(tmp_path / "c.safetensors", tmp_path / "d.safetensors")
    from refquant.compat import ggml

    with rio.open(tmp_path / "d.safetensors") as d:
        a = w["model.layers.1.self_attn.v_proj.weight"]
        assert np.array_equal(d["model.layers.1.self_attn.v_proj.weight"],
                              ggml.dequantize(ggml.quantize(a, "q6_k"), "q6_k", a.shape))


def test_a_llama_preset_is_not_one_tensors_scheme(tmp_path):
    rec = tmp_path / "r.toml"
    rec.write_text('[[rules]]\npattern = "*"\nscheme = "q4_k_m"\n')
    from refquant.compress import load_recipe

    with pytest.raises(RefquantError, match="llama-quantize's mix"):
        load_recipe(rec)


def test_cli_scheme_q8_0_writes_llama_quantizes_file(tiny, tmp_path, capsys):
    from refquant.cli import main

    src, _ = tiny
    assert main(["compress", str(src), "-o", str(tmp_path / "q.gguf"), "--scheme", "q8_0"]) == 0
    assert "output.weight" in capsys.readouterr().out  # the per-tensor table
    data = (tmp_path / "q.gguf").read_bytes()
    assert hashlib.sha256(data).hexdigest() == _records("q8_0")["file_sha256"]


@pytest.mark.parametrize("fmt", ["gguf", "dat"])
def test_imatrix_adds_llama_quantizes_four_keys_after_the_file_type(tiny, tmp_path, fmt):
    """llama-quantize --imatrix (tools/quantize/quantize.cpp main: KV overrides, set by
    src/llama-quant.cpp after general.file_type): quantize.imatrix.file (the path as
    given, cut to 127 bytes), .dataset (the first dataset), .entries_count and
    .chunks_count (uint32), here with a GGUF and a legacy imatrix, a dataset name and a
    path longer than 127 bytes (test_with_an_imatrix_the_file_is_llama_model_quantizes
    checks a recorded run)."""
    import gguf

    from refquant.io.imatrix import compute_imatrix, read_imatrix, save_imatrix

    src, tensors = tiny
    rng = np.random.default_rng(3)
    names = [n for n, a in tensors.items() if np.ndim(a) == 2 and n.startswith("blk.")]
    acts = {n: rng.normal(size=(600, np.shape(tensors[n])[1])).astype(np.float32)
            for n in names}
    folder = tmp_path / ("d" * 130)  # the path runs past llama-quantize's 127 bytes
    folder.mkdir()
    imx = folder / f"m.{fmt}"
    save_imatrix(compute_imatrix(acts, chunk_size=256, datasets=["wiki.train.raw"]), imx,
                 file_format=fmt)
    data = read_imatrix(imx)
    assert data.chunk_count > 0 and len(data.sums) == len(names)
    compress(src, tmp_path / "q.gguf", scheme="q4_k_m", imatrix=imx)
    compress(src, tmp_path / "p.gguf", scheme="q4_k_m")
    r = gguf.GGUFReader(tmp_path / "q.gguf")
    keys = [k for k in r.fields if not k.startswith("GGUF.")]
    plain = [k for k in gguf.GGUFReader(tmp_path / "p.gguf").fields if not k.startswith("GGUF.")]
    new = ["quantize.imatrix.file", "quantize.imatrix.dataset",
           "quantize.imatrix.entries_count", "quantize.imatrix.chunks_count"]
    assert keys == plain + new
    assert plain[-2:] == ["general.quantization_version", "general.file_type"]
    S, U = gguf.GGUFValueType.STRING, gguf.GGUFValueType.UINT32
    want = {"quantize.imatrix.file": (S, str(imx).encode()[:127].decode()),
            "quantize.imatrix.dataset": (S, "wiki.train.raw"),
            "quantize.imatrix.entries_count": (U, len(names)),
            "quantize.imatrix.chunks_count": (U, data.chunk_count)}
    for k, (ty, value) in want.items():
        assert r.fields[k].types == [ty] and r.fields[k].contents() == value, k
    assert len(str(imx).encode()) > 127 and len(r.fields["quantize.imatrix.file"].contents()) == 127
    # the tensors are still llama-quantize's with that imatrix (same types as without)
    assert [(t.name, t.tensor_type) for t in r.tensors] == [
        (t.name, t.tensor_type) for t in gguf.GGUFReader(tmp_path / "p.gguf").tensors]


def test_imatrix_keys_of_the_input_move_to_the_end(tiny, tmp_path):
    """gguf_set_val_* of a key the input already has removes it and appends it: a GGUF
    requantized with another imatrix carries the new keys, once, last."""
    import gguf

    from refquant.io.imatrix import compute_imatrix, read_imatrix, save_imatrix

    src, tensors = tiny
    n = "blk.0.attn_q.weight"
    acts = {n: np.ones((1024, np.shape(tensors[n])[1]), np.float32)}
    save_imatrix(compute_imatrix(acts, chunk_size=512), tmp_path / "a.imatrix")
    assert read_imatrix(tmp_path / "a.imatrix").chunk_count == 2
    compress(src, tmp_path / "f32.gguf", scheme="f32", imatrix=tmp_path / "a.imatrix")
    compress(tmp_path / "f32.gguf", tmp_path / "q.gguf", scheme="q8_0",
             imatrix=tmp_path / "a.imatrix")
    r = gguf.GGUFReader(tmp_path / "q.gguf")
    keys = [k for k in r.fields if not k.startswith("GGUF.")]
    assert keys[-5:] == ["general.quantization_version", "general.file_type",
                         "quantize.imatrix.file", "quantize.imatrix.entries_count",
                         "quantize.imatrix.chunks_count"]  # no dataset named: no key
    mid = [k for k in gguf.GGUFReader(tmp_path / "f32.gguf").fields if not k.startswith("GGUF.")]
    assert "quantize.imatrix.file" in mid[:-1]  # not last in the input, last in the output
    assert keys.count("quantize.imatrix.file") == 1
    assert r.fields["quantize.imatrix.entries_count"].contents() == 1
    assert r.fields["quantize.imatrix.chunks_count"].contents() == 2
