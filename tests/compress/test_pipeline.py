"""refquant compress / decompress: streaming, exact parts, the report, nothing partial, nothing lost."""

import hashlib
import json
import os

import numpy as np
import pytest

import refquant as rq
import refquant.io as rio
from refquant import RefquantError
from refquant.cli import main
from refquant.compress import PRESETS, compress, decompress, get_scheme, load_recipe
from refquant.compress.recipe import Recipe, Rule

RNG = np.random.default_rng(7)


def _model(tmp_path, name="m.safetensors", **extra):
    w = {
        "model.embed_tokens.weight": RNG.standard_normal((64, 256)).astype(np.float32),
        "model.layers.0.mlp.up_proj.weight": RNG.standard_normal((96, 256)).astype(np.float32),
        "model.layers.0.mlp.down_proj.weight": RNG.standard_normal((256, 96)).astype(np.float32),
        "model.layers.0.self_attn.q_proj.weight": RNG.standard_normal((256, 256)).astype(
            np.float32),
        "model.layers.0.input_layernorm.weight": np.ones(256, np.float32),
        "model.layers.0.mlp.up_proj.bias": np.zeros(96, np.float32),
        "odd.weight": RNG.standard_normal((4, 30)).astype(np.float32),
        "lm_head.weight": RNG.standard_normal((64, 256)).astype(np.float32),
        "step": np.array([3], np.int64),
        **extra,
    }
    return rio.save(w, tmp_path / name), w


def _sha(p):
    return hashlib.sha256(open(p, "rb").read()).hexdigest()


@pytest.mark.parametrize("scheme", PRESETS)
def test_every_preset_round_trips_through_its_own_parts(tmp_path, scheme):
    src, w = _model(tmp_path)
    before = _sha(src)
    rep = compress(src, tmp_path / "c.safetensors", scheme=scheme)
    assert _sha(src) == before  # the input is only read
    sch = get_scheme(scheme)
    rows = {r.name: r for r in rep.rows}
    back = tmp_path / "d.safetensors"
    decompress(tmp_path / "c.safetensors", back)
    with rio.open(tmp_path / "c.safetensors") as ck, rio.open(back) as dk:
        for name, a in w.items():
            r = rows[name]
            if r.scheme == "keep":
                assert np.array_equal(ck[name], a) and np.array_equal(dk[name], a), name
                continue
            # the stored parts are exactly what the scheme computes, and decompress gives
            # exactly the scheme's dequantization
            parts = sch.quantize(a)
            for suf, arr in parts.items():
                assert np.array_equal(np.atleast_1d(ck[name + suf]).view(np.uint8),
                                      np.atleast_1d(arr).view(np.uint8)), (name, suf)
            w_hat = sch.dequantize(parts, a.shape)
            assert np.array_equal(dk[name], w_hat), name
            assert r.bytes_out == sum(ck.info(name + s).nbytes for s in parts)
            assert r.sqnr_db == pytest.approx(rq.sqnr_db(a, w_hat), rel=1e-9)
    # 1-D, integer, the head and the embeddings are kept by default
    for kept in ("model.layers.0.input_layernorm.weight", "model.layers.0.mlp.up_proj.bias",
                 "step", "lm_head.weight", "model.embed_tokens.weight"):
        assert rows[kept].scheme == "keep", kept
    assert rows["model.layers.0.mlp.up_proj.weight"].scheme == scheme


def test_int8_parts_are_refquants_per_channel_symmetric_codes(tmp_path):
    src, w = _model(tmp_path)
    compress(src, tmp_path / "c.safetensors", scheme="int8")
    a = w["model.layers.0.mlp.up_proj.weight"]
    qp = rq.choose_qparams(a, dtype="int8", symmetric=True, axis=0)
    with rio.open(tmp_path / "c.safetensors") as ck:
        name = "model.layers.0.mlp.up_proj.weight"
        assert np.array_equal(ck[name], qp.quantize(a))
        assert np.array_equal(ck[name + "_scale"], qp.scale.astype(np.float32))
        doc = json.loads(ck.metadata["refquant.compress"])
        assert doc["tensors"][name]["scheme"] == "int8" and doc["tensors"][name]["axis"] == 0


def test_safetensors_output_loads_with_the_safetensors_package(tmp_path):
    from helpers import import_peer

    st = import_peer("safetensors.numpy")
    src, _ = _model(tmp_path)
    compress(src, tmp_path / "c.safetensors", scheme="int4-g128")
    loaded = st.load_file(str(tmp_path / "c.safetensors"))
    with rio.open(tmp_path / "c.safetensors") as ck:
        assert sorted(loaded) == sorted(ck)
        for k, v in loaded.items():
            assert np.array_equal(v, ck[k])


def test_gguf_output_keeps_norms_and_partial_rows_in_f32_and_reads_in_gguf_py(tmp_path):
    from helpers import import_peer

    gguf = import_peer("gguf")
    src, w = _model(tmp_path)
    rep = compress(src, tmp_path / "c.gguf", scheme="q4_0")
    rows = {r.name: r for r in rep.rows}
    assert rows["odd.weight"].scheme == "keep" and "block size 32" in rows["odd.weight"].reason
    r = gguf.GGUFReader(tmp_path / "c.gguf")
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["model.layers.0.mlp.up_proj.weight"] == "Q4_0"
    assert types["odd.weight"] == "F32" and types["model.layers.0.input_layernorm.weight"] == "F32"
    assert r.fields["general.quantization_version"].contents() == 2
    assert r.fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q4_0)
    from refquant.compat import ggml

    for t in r.tensors:
        if t.tensor_type.name == "Q4_0":
            a = w[t.name]
            mine = ggml.dequantize(ggml.quantize(a, "q4_0"), "q4_0", a.shape)
            theirs = gguf.quants.dequantize(t.data, t.tensor_type).reshape(a.shape)
            assert np.array_equal(theirs, mine), t.name


def test_gguf_to_gguf_copies_every_metadata_key_with_its_type(tmp_path):
    from helpers import import_peer

    gguf = import_peer("gguf")
    path = tmp_path / "in.gguf"
    wr = gguf.GGUFWriter(path, "llama")
    wr.add_uint32("llama.context_length", 2048)
    wr.add_float32("llama.rope.freq_base", 10000.0)
    wr.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    wr.add_string("general.name", "tiny")
    wr.add_tensor("blk.0.ffn_up.weight", RNG.standard_normal((8, 64)).astype(np.float32))
    wr.add_tensor("blk.0.attn_norm.weight", np.ones(64, np.float32))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    compress(path, tmp_path / "out.gguf", scheme="q8_0")
    a, b = gguf.GGUFReader(path), gguf.GGUFReader(tmp_path / "out.gguf")
    for key, f in a.fields.items():
        if key.startswith("GGUF."):
            continue
        g = b.fields[key]
        assert g.types == f.types and g.contents() == f.contents(), key
    assert b.fields["general.architecture"].contents() == "llama"
    assert {t.name: t.tensor_type.name for t in b.tensors} == {
        "blk.0.ffn_up.weight": "Q8_0", "blk.0.attn_norm.weight": "F32"}


def test_nan_in_a_weight_is_refused_with_its_tensor_and_index_and_nothing_is_written(tmp_path):
    bad = RNG.standard_normal((8, 64)).astype(np.float32)
    bad[3, 5] = np.nan
    src, _ = _model(tmp_path, **{"z.weight": bad})
    with pytest.raises(RefquantError, match=r"'z.weight'.*index \(3, 5\)"):
        compress(src, tmp_path / "c.safetensors", scheme="int8")
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]  # no output, no temporary file
    rep = compress(src, tmp_path / "c.safetensors", scheme="int8", nonfinite="keep")
    row = {r.name: r for r in rep.rows}["z.weight"]
    assert row.scheme == "keep" and "NaN" in row.reason


def test_a_failure_midway_leaves_no_partial_output(tmp_path, monkeypatch):
    src, _ = _model(tmp_path)
    from refquant.compress import schemes

    calls = {"n": 0}
    real = schemes.IntegerScheme.quantize

    def flaky(self, w):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real(self, w)

    monkeypatch.setattr(schemes.IntegerScheme, "quantize", flaky)
    with pytest.raises(RefquantError, match=r"cannot write '.*c.safetensors': No space left"):
        compress(src, tmp_path / "c.safetensors", scheme="int8")
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]


def test_output_never_replaces_the_input_or_an_existing_file_unasked(tmp_path):
    src, _ = _model(tmp_path)
    with pytest.raises(RefquantError, match="is the input"):
        compress(src, src, scheme="int8", overwrite=True)
    (tmp_path / "c.safetensors").write_bytes(b"mine")
    with pytest.raises(RefquantError, match="exists"):
        compress(src, tmp_path / "c.safetensors", scheme="int8")
    assert (tmp_path / "c.safetensors").read_bytes() == b"mine"
    with pytest.raises(RefquantError, match="no ggml type"):
        compress(src, tmp_path / "c.gguf", scheme="int8")


def test_peak_memory_follows_the_largest_tensor_not_the_checkpoint(tmp_path):
    import tracemalloc

    def peak(n, workers):
        big = {f"l{i}.weight": RNG.standard_normal((256, 1024)).astype(np.float32)
               for i in range(n)}  # 1 MiB each
        src = rio.save(big, tmp_path / f"big{n}.safetensors", overwrite=True)
        tracemalloc.start()
        compress(src, tmp_path / f"c{n}.safetensors", scheme="int8", workers=workers,
                 overwrite=True)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    peak(1, 1)  # imports and caches
    for workers in (1, 2):
        small, large = peak(5, workers), peak(15, workers)
        # three times the tensors, the same peak: `workers` tensors (and their float64
        # report copies, about ten times their size) at a time, never the checkpoint
        # (with threads, whether two tensors' float64 copies overlap in time varies by
        # about 2 MiB from run to run)
        assert large < small + (2**20 if workers == 1 else 3 * 2**20), (workers, small, large)
        assert large < (workers + (workers > 1)) * 12 * 2**20, (workers, large)


def test_report_is_strict_json_and_csv_with_the_totals(tmp_path):
    src, w = _model(tmp_path, **{"zero.weight": np.zeros((8, 64), np.float32)})
    rep = compress(src, tmp_path / "c.safetensors", scheme="q8_0")
    doc = json.loads(rep.to_json(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    rows = {r["name"]: r for r in doc["tensors"]}
    assert rows["zero.weight"]["exact"] and rows["zero.weight"]["sqnr_db"] is None
    assert doc["totals"]["bytes_in"] == sum(a.nbytes for a in w.values())
    assert doc["totals"]["bytes_out"] == sum(r["bytes_out"] for r in doc["tensors"])
    csv_lines = rep.to_csv().splitlines()
    assert csv_lines[0].startswith("name,shape,dtype,scheme") and len(csv_lines) == len(rows) + 1


def test_recipe_rules_first_match_wins_and_required_patterns_must_match(tmp_path):
    src, _ = _model(tmp_path)
    rec = tmp_path / "r.toml"
    rec.write_text('scheme = "q4_0"\n\n[[rules]]\npattern = "*.down_proj.weight"\n'
                   'scheme = "q8_0"\n\n[[rules]]\npattern = "lm_head.weight"\nscheme = "q6_k"\n'
                   '\n[[rules]]\npattern = "re:.*q_proj.*"\nscheme = "keep"\n')
    rep = compress(src, tmp_path / "c.gguf", recipe=rec)
    got = {r.name: r.scheme for r in rep.rows}
    assert got["model.layers.0.mlp.down_proj.weight"] == "q8_0"  # first matching rule
    assert got["odd.weight"] == "keep"  # 30 wide: not whole q4_0 blocks
    assert got["lm_head.weight"] == "q6_k" and got["model.layers.0.mlp.up_proj.weight"] == "q4_0"
    assert got["model.layers.0.self_attn.q_proj.weight"] == "keep"
    rec.write_text('[[rules]]\npattern = "nothing.*"\nscheme = "q8_0"\nrequired = true\n')
    with pytest.raises(RefquantError, match="line 1: pattern 'nothing.\\*' is required"):
        compress(src, tmp_path / "d.gguf", recipe=rec)


@pytest.mark.parametrize("text, what", [
    ('scheme = "q4_0"\nshceme = "q8_0"\n', "line 2: unknown key 'shceme'"),
    ('[[rules]]\npattern = "a"\nschem = "q8_0"\n', "line 1: unknown key 'schem'"),
    ('[[rules]]\npattern = "a"\nscheme = "q4k"\n', "did you mean 'q4_k'"),
    ('[[rules]]\npattern = "a"\nscheme = "q8_0"\n[[rules]]\npattern = "a"\nscheme = "q4_0"\n',
     "line 4: pattern 'a' conflicts with the rule at line 1"),
    ('scheme = 4\n', "line 1: scheme must be a string"),
    ('[[rules]]\npattern = "re:("\nscheme = "q8_0"\n', "not a regular expression"),
    ('scheme = \n', "not valid TOML"),
])
def test_bad_recipes_name_the_line(tmp_path, text, what):
    p = tmp_path / "r.toml"
    p.write_text(text)
    with pytest.raises(RefquantError, match=what.replace("(", r"\(").replace("*", r"\*")):
        load_recipe(p)


def test_rule_patterns_are_globs_or_regular_expressions():
    assert Rule("*.weight", "q8_0").matches("a.b.weight")
    assert not Rule("*.weight", "q8_0").matches("a.bias")
    assert Rule("re:layers\\.[0-3]\\..*", "q8_0").matches("layers.2.mlp")
    assert not Rule("re:layers\\.[0-3]\\..*", "q8_0").matches("xlayers.2.mlp")
    assert Recipe("q4_0").decide("x.weight", np.dtype(np.float16), (4, 32))[0] == "q4_0"


def test_cli_compress_prints_the_table_and_writes_reports(tmp_path, capsys):
    src, _ = _model(tmp_path)
    out = tmp_path / "c.safetensors"
    assert main(["compress", str(src), "-o", str(out), "--scheme", "int8", "--report",
                 str(tmp_path / "r.json"), "--report", str(tmp_path / "r.csv")]) == 0
    text = capsys.readouterr().out
    assert "model.layers.0.mlp.up_proj.weight" in text and "int8" in text and "bits per weight" in text
    assert json.loads((tmp_path / "r.json").read_text())["totals"]["quantized"] == 4
    assert (tmp_path / "r.csv").read_text().startswith("name,")
    assert main(["compress", str(src), "-o", str(tmp_path / "x.safetensors"), "--scheme",
                 "q4k"]) == 2
    assert "did you mean 'q4_k'" in capsys.readouterr().err
    assert main(["decompress", str(out), "-o", str(tmp_path / "d.safetensors")]) == 0
    assert "wrote 9 tensors" in capsys.readouterr().out


@pytest.mark.parametrize("scheme", ["int8", "int4-g128", "fp8-block", "nf4", "q4_k", "mxfp4"])
def test_refquant_io_reads_its_own_compressed_layout_by_logical_name(tmp_path, scheme):
    src, w = _model(tmp_path)
    compress(src, tmp_path / "c.safetensors", scheme=scheme)
    decompress(tmp_path / "c.safetensors", tmp_path / "d.safetensors")
    with rio.open(tmp_path / "c.safetensors") as ck, rio.open(tmp_path / "d.safetensors") as dk:
        assert sorted(ck.logical_names()) == sorted(w)
        sc = ck.scheme("model.layers.0.mlp.up_proj.weight")
        assert sc.format == f"refquant:{scheme}" and sc.shape == (96, 256)
        assert ck.scheme("model.layers.0.input_layernorm.weight") is None
        for n in w:
            got = ck.dequantize(n) if ck.scheme(n) is not None else ck[n]
            assert np.array_equal(got, dk[n]), n


@pytest.mark.parametrize("name", ["int8", "int4", "int4-g128", "int8-g64", "uint8", "uint4"])
@pytest.mark.parametrize("shape", [(300, 1000), (5000, 40), (7, 130), (3, 4, 64), (64,)])
def test_integer_dequantize_by_row_blocks_is_the_whole_tensor_formula(name, shape):
    """IntegerScheme.dequantize works on blocks of rows: the same float32 bits as
    ((q - z) * s).astype(float32) over the whole tensor (int64 codes, float64 z and s)."""
    from refquant.compress.methods import apply
    from refquant.compress.schemes import get_scheme

    sch = get_scheme(name)
    if sch.unsupported(shape):
        pytest.skip("shape not supported")
    rng = np.random.default_rng(len(name) * 100 + shape[0])
    w = (rng.standard_normal(shape) * rng.uniform(0.01, 10)).astype(np.float32)
    parts = apply(sch, w, None, None, "w")
    q = sch._codes(parts, shape)
    z = sch._expand(parts["_zero_point"], shape) if not sch.symmetric else 0.0
    s = sch._expand(parts["_scale"].astype(np.float32), shape)
    want = ((q - z) * s).astype(np.float32).reshape(shape)
    got = sch.dequantize(parts, shape)
    assert got.dtype == np.float32 and got.shape == shape
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
