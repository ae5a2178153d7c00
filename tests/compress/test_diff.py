"""refquant diff: per-tensor SQNR, errors and steps of a quantized checkpoint against its original."""

import json

import numpy as np
import pytest

import refquant as rq
import refquant.io as rio
from refquant import RefquantError
from refquant.cli import main
from refquant.compress import compress
from refquant.testing import compare_checkpoints

RNG = np.random.default_rng(3)


def _orig(tmp_path):
    w = {"a.weight": RNG.standard_normal((32, 64)).astype(np.float32),
         "b.weight": (RNG.standard_normal((16, 64)) * 5).astype(np.float32),
         "norm.weight": np.ones(64, np.float32)}
    return rio.save(w, tmp_path / "orig.safetensors"), w


def test_diff_of_refquants_own_layout_recomputes_sqnr_and_steps(tmp_path):
    src, w = _orig(tmp_path)
    compress(src, tmp_path / "q.safetensors", scheme="int4-g128")
    rows = {r.name: r for r in compare_checkpoints(src, tmp_path / "q.safetensors")}
    qp = rq.choose_qparams(w["a.weight"], dtype="uint4", symmetric=False, axis=1, block_size=128)
    w_hat = qp.dequantize(qp.quantize(w["a.weight"]))
    assert rows["a.weight"].sqnr_db == pytest.approx(rq.sqnr_db(w["a.weight"], w_hat), rel=1e-9)
    assert rows["a.weight"].max_err_steps <= 0.5 + 1e-6  # round to nearest, nothing clips
    assert rows["norm.weight"].sqnr_db is None and rows["norm.weight"].max_abs_error == 0
    ordered = compare_checkpoints(src, tmp_path / "q.safetensors")
    sq = [r.sqnr_db for r in ordered if r.sqnr_db is not None]
    assert sq == sorted(sq)  # worst first


def test_diff_against_gguf_dequantizes_its_blocks(tmp_path):
    src, w = _orig(tmp_path)
    compress(src, tmp_path / "q.gguf", scheme="q4_0")
    rows = {r.name: r for r in compare_checkpoints(src, tmp_path / "q.gguf")}
    from refquant.compat import ggml

    want = ggml.dequantize(ggml.quantize(w["b.weight"], "q4_0"), "q4_0", (16, 64))
    assert rows["b.weight"].scheme == "ggml:Q4_0"
    assert rows["b.weight"].max_abs_error == pytest.approx(float(np.abs(w["b.weight"] - want).max()))


def test_hf_names_match_gguf_names_with_the_llama_q_permutation_undone(tmp_path):
    from helpers import import_peer

    gguf = import_peer("gguf")
    q = RNG.standard_normal((64, 64)).astype(np.float32)
    up = RNG.standard_normal((128, 64)).astype(np.float32)
    src = rio.save({"model.layers.0.self_attn.q_proj.weight": q,
                    "model.layers.0.mlp.up_proj.weight": up}, tmp_path / "hf.safetensors")
    n_head = 4
    perm = q.reshape(n_head, 2, 64 // n_head // 2, 64).swapaxes(1, 2).reshape(64, 64)
    wr = gguf.GGUFWriter(tmp_path / "m.gguf", "llama")
    wr.add_block_count(1)
    wr.add_head_count(n_head)
    wr.add_head_count_kv(n_head)
    wr.add_tensor("blk.0.attn_q.weight", perm)
    wr.add_tensor("blk.0.ffn_up.weight", up)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    rows = {r.name: r for r in compare_checkpoints(src, tmp_path / "m.gguf")}
    assert rows["model.layers.0.self_attn.q_proj.weight"].quantized_name == "blk.0.attn_q.weight"
    assert rows["model.layers.0.self_attn.q_proj.weight"].sqnr_db is None  # equal once unpermuted
    assert rows["model.layers.0.mlp.up_proj.weight"].sqnr_db is None


def test_nothing_in_common_is_an_error(tmp_path):
    src, _ = _orig(tmp_path)
    other = rio.save({"x": np.ones(3, np.float32)}, tmp_path / "o.safetensors")
    with pytest.raises(RefquantError, match="no tensor"):
        compare_checkpoints(src, other)


def test_cli_diff_prints_worst_first_and_writes_json_and_plot(tmp_path, capsys):
    src, _ = _orig(tmp_path)
    compress(src, tmp_path / "q.safetensors", scheme="int8")
    assert main(["diff", str(src), str(tmp_path / "q.safetensors"), "--json",
                 str(tmp_path / "d.json"), "--plot", str(tmp_path / "d.png")]) == 0
    out = capsys.readouterr().out
    assert "3 tensors compared, worst first" in out
    doc = json.loads((tmp_path / "d.json").read_text())
    assert {r["name"] for r in doc["tensors"]} == {"a.weight", "b.weight", "norm.weight"}
    assert (tmp_path / "d.png").stat().st_size > 1000


def test_diff_reads_a_gptq_folder_by_its_logical_names(tmp_path):
    from refquant.io.layouts.gptq import gptq_tensors

    n, k, gs = 32, 64, 32
    w = RNG.standard_normal((n, k)).astype(np.float32)
    qp = rq.choose_qparams(w, dtype="uint4", symmetric=False, axis=1, block_size=gs)
    q = qp.quantize(w).astype(np.int64)
    s = np.asarray(qp.scale, np.float32).reshape(n, k // gs).astype(np.float16)
    z = np.maximum(np.asarray(qp.zero_point).reshape(n, k // gs), 1)  # v1 stores zero - 1
    rio.save(gptq_tensors("l", q, s, z, 4), tmp_path / "gptq", layout="gptq", bits=4,
             group_size=gs, desc_act=False)
    src = rio.save({"l.weight": w}, tmp_path / "orig.safetensors")
    (row,) = compare_checkpoints(src, tmp_path / "gptq")
    g = np.arange(k) // gs
    want = (s[:, g].astype(np.float32) * (q - z[:, g])).astype(np.float16).astype(np.float32)
    assert row.quantized_name == "l.weight" and row.scheme == "gptq"
    assert row.max_abs_error == pytest.approx(float(np.abs(w - want).max()))
