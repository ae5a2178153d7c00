"""refquant compress to Hugging Face folders: GPTQ, AWQ, compressed-tensors and FP8-block.

Each output is read back by ``refquant.io.open`` (whose layout views are pinned
against the peers in tests/peers/test_layouts_*.py) and must give the weights of
the scheme's own arithmetic, recomputed here from refquant's schemes.
"""

import json

import numpy as np
import pytest

import refquant.io as rio
from refquant import RefquantError
from refquant.cli import main
from refquant.compress import HF_SCHEMES, compress, get_scheme

RNG = np.random.default_rng(11)

QUANTIZED = ("model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.down_proj.weight",
             "model.layers.0.self_attn.q_proj.weight")


def _folder(tmp_path):
    w = {
        "model.embed_tokens.weight": RNG.standard_normal((64, 256)).astype(np.float32),
        "model.layers.0.mlp.up_proj.weight": RNG.standard_normal((384, 256)).astype(np.float32),
        "model.layers.0.mlp.down_proj.weight": (RNG.standard_normal((256, 384)) * 0.02).astype(
            np.float32),
        "model.layers.0.self_attn.q_proj.weight": RNG.standard_normal((256, 256)).astype(
            np.float32),
        "model.layers.0.input_layernorm.weight": np.ones(256, np.float32),
        "model.layers.0.mlp.up_proj.bias": np.zeros(384, np.float32),
        "odd.weight": RNG.standard_normal((4, 30)).astype(np.float32),
        "lm_head.weight": RNG.standard_normal((64, 256)).astype(np.float32),
    }
    src = tmp_path / "in"
    src.mkdir()
    rio.save(w, src / "model.safetensors")
    (src / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 256}))
    (src / "tokenizer.json").write_text('{"version": "1.0"}')
    (src / "tokenizer_config.json").write_text("{}")
    return src, w


def _expected(scheme, w):
    """The scheme's own dequantization, from refquant's schemes (module docstring of .hf)."""
    if scheme == "ct-int8":
        s = get_scheme("int8")
        return s.dequantize(s.quantize(w), w.shape)
    if scheme == "hf-fp8-block":
        s = get_scheme("fp8-block")
        return s.dequantize(s.quantize(w), w.shape)
    if scheme == "nvfp4":  # compressed-tensors' decompressor returns bfloat16
        import ml_dtypes

        s = get_scheme("nvfp4")
        return s.dequantize(s.quantize(w), w.shape).astype(ml_dtypes.bfloat16).astype(np.float32)
    s = get_scheme("int4-g128")
    parts = s.quantize(w)
    if scheme == "ct-int4-g128":
        return s.dequantize(parts, w.shape)
    # GPTQ / AWQ: the float16 scale, one float16 rounding of the exact product
    q = s._codes(parts, w.shape)
    cols = np.arange(w.shape[1]) // 128
    z = parts["_zero_point"].astype(np.int64)[:, cols]
    sc = parts["_scale"].astype(np.float16).astype(np.float64)[:, cols]
    return ((q - z) * sc).astype(np.float16).astype(np.float32)


@pytest.mark.parametrize("scheme", sorted(HF_SCHEMES))
def test_hf_output_reads_back_as_the_schemes_own_dequantization(tmp_path, scheme):
    src, w = _folder(tmp_path)
    out = tmp_path / "out"
    rep = compress(src, out, scheme=scheme)
    with rio.open(out) as ck:
        quantized = sorted(n for n in ck.logical_names() if ck.scheme(n) is not None)
        # groups of 128 cannot store the 30-wide odd.weight; per channel and fp8 tiles can
        odd = ("odd.weight",) if scheme in ("ct-int8", "hf-fp8-block") else ()
        assert quantized == sorted(QUANTIZED + odd)
        for name in QUANTIZED + odd:
            got = ck.dequantize(name)
            want = _expected(scheme, w[name])
            assert got.dtype == np.float32 and got.shape == w[name].shape
            np.testing.assert_array_equal(got, want, err_msg=name)
            assert not np.array_equal(got, w[name])  # it was quantized, not copied
        for name in ("model.embed_tokens.weight", "lm_head.weight",
                     "model.layers.0.input_layernorm.weight", "model.layers.0.mlp.up_proj.bias",
                     *(() if odd else ("odd.weight",))):
            np.testing.assert_array_equal(ck[name], w[name], err_msg=name)
    rows = {r.name: r for r in rep.rows}
    assert all(rows[n].scheme == scheme for n in QUANTIZED + odd)
    assert rows["odd.weight"].scheme == (scheme if odd else "keep")
    assert rows["lm_head.weight"].scheme == "keep"


@pytest.mark.parametrize("scheme", sorted(HF_SCHEMES))
def test_hf_output_keeps_config_keys_and_copies_tokenizer_files(tmp_path, scheme):
    src, _ = _folder(tmp_path)
    out = tmp_path / "out"
    compress(src, out, scheme=scheme)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["hidden_size"] == 256
    assert "quantization_config" in cfg
    assert (out / "tokenizer.json").read_text() == '{"version": "1.0"}'
    assert (out / "tokenizer_config.json").exists()
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors",
                                                     "tokenizer.json", "tokenizer_config.json"]
    assert not list(tmp_path.glob(".out.partial-*"))


def test_hf_quantization_configs_name_their_layouts(tmp_path):
    src, _ = _folder(tmp_path)
    want = {"gptq-int4-g128": ("gptq", "gptq"), "awq-int4-g128": ("awq", "awq"),
            "ct-int4-g128": ("compressed-tensors", "pack-quantized"),
            "ct-int8": ("compressed-tensors", "int-quantized"), "hf-fp8-block": ("fp8", "fp8-block"),
            "nvfp4": ("compressed-tensors", "nvfp4-pack-quantized")}
    for scheme, (method, view) in want.items():
        out = tmp_path / scheme
        compress(src, out, scheme=scheme)
        qc = json.loads((out / "config.json").read_text())["quantization_config"]
        assert qc["quant_method"] == method
        with rio.open(out) as ck:
            assert ck.scheme(QUANTIZED[0]).format == view


def test_hf_output_refuses_a_non_empty_folder_without_overwrite(tmp_path):
    src, _ = _folder(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("keep me")
    with pytest.raises(RefquantError, match="not empty"):
        compress(src, out, scheme="ct-int8")
    assert (out / "x").read_text() == "keep me"
    compress(src, out, scheme="ct-int8", overwrite=True)
    assert not (out / "x").exists()


def test_gptq_refuses_a_group_with_zero_point_0_and_leaves_nothing(tmp_path):
    w = {"l.weight": np.abs(RNG.standard_normal((8, 128))).astype(np.float32)}
    rio.save(w, tmp_path / "m.safetensors")
    with pytest.raises(RefquantError, match="zero point 0"):
        compress(tmp_path / "m.safetensors", tmp_path / "out", scheme="gptq-int4-g128")
    assert not (tmp_path / "out").exists()
    compress(tmp_path / "m.safetensors", tmp_path / "out", scheme="awq-int4-g128")
    with rio.open(tmp_path / "out") as ck:
        np.testing.assert_array_equal(ck.dequantize("l.weight"),
                                      _expected("awq-int4-g128", w["l.weight"]))


def test_hf_scheme_takes_no_recipe_options(tmp_path):
    src, _ = _folder(tmp_path)
    with pytest.raises(RefquantError, match="Hugging Face folder"):
        compress(src, tmp_path / "o", scheme="ct-int8", resume=True)


def test_cli_compress_writes_a_hf_folder(tmp_path, capsys):
    src, w = _folder(tmp_path)
    assert main(["compress", str(src), "-o", str(tmp_path / "o"), "--scheme", "ct-int4-g128",
                 "-q"]) == 0
    with rio.open(tmp_path / "o") as ck:
        name = QUANTIZED[0]
        np.testing.assert_array_equal(ck.dequantize(name), _expected("ct-int4-g128", w[name]))
