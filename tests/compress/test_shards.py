"""Sharded output: shard by shard, the index last, nothing partial, --resume, Dask workers."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import import_peer

import refquant.io as rio
from refquant import RefquantError
from refquant.cli import main
from refquant.compress import compress, decompress


def _sharded(tmp_path, n_layers=4):
    rng = np.random.default_rng(11)
    w = {"model.embed_tokens.weight": rng.standard_normal((32, 64)).astype(np.float32)}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        w[p + "mlp.up_proj.weight"] = rng.standard_normal((96, 64)).astype(np.float32)
        w[p + "mlp.down_proj.weight"] = rng.standard_normal((64, 96)).astype(np.float32)
        w[p + "input_layernorm.weight"] = np.ones(64, np.float32)
    w["lm_head.weight"] = rng.standard_normal((32, 64)).astype(np.float32)
    folder = tmp_path / "in"
    folder.mkdir()
    idx = rio.save(w, folder / "model.safetensors.index.json", max_shard_size=40_000)
    shards = set(json.loads(Path(idx).read_text())["weight_map"].values())
    assert len(shards) >= 3, shards
    return Path(idx), w


def _files(folder):
    return {f.name: f.read_bytes() for f in sorted(Path(folder).iterdir())}


def test_sharded_input_gives_one_output_shard_each_and_the_index(tmp_path):
    idx, w = _sharded(tmp_path)
    rep = compress(idx, tmp_path / "out", scheme="int8")
    in_shards = sorted(set(json.loads(idx.read_text())["weight_map"].values()))
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == sorted(in_shards + ["model.safetensors.index.json"])
    assert not any(n.startswith(".") for n in os.listdir(tmp_path))  # no staging left
    index = json.loads((out / "model.safetensors.index.json").read_text())
    # every stored part in the weight_map, each in the shard its input tensor came from
    in_map = json.loads(idx.read_text())["weight_map"]
    assert index["weight_map"]["model.layers.0.mlp.up_proj.weight_scale"] == in_map[
        "model.layers.0.mlp.up_proj.weight"]
    assert index["metadata"]["total_size"] == rep.bytes_out
    # the same parts as a single-file run, and decompress reads the index
    one = compress(idx, tmp_path / "one.safetensors", scheme="int8")
    with rio.open(out / "model.safetensors.index.json") as a, rio.open(
            tmp_path / "one.safetensors") as b:
        assert sorted(a) == sorted(b)
        for k in a:
            assert np.array_equal(a[k], b[k]), k
    decompress(out / "model.safetensors.index.json", tmp_path / "d.safetensors")
    decompress(tmp_path / "one.safetensors", tmp_path / "d1.safetensors")
    assert (tmp_path / "d.safetensors").read_bytes() == (tmp_path / "d1.safetensors").read_bytes()
    assert [r.name for r in rep.rows] == [r.name for r in one.rows] and len(one.rows) == len(w)
    assert [r.sqnr_db for r in rep.rows] == [r.sqnr_db for r in one.rows]


_KILLABLE = textwrap.dedent("""
    import sys, time
    from refquant.compress import compress, schemes
    real = schemes.IntegerScheme.quantize
    n = {"calls": 0}
    def slow(self, w):
        n["calls"] += 1
        if n["calls"] == int(sys.argv[3]):
            print("HALFWAY", flush=True)
            time.sleep(600)
        return real(self, w)
    schemes.IntegerScheme.quantize = slow
    # one worker: the patched quantize runs in this process, not in a pool's children
    compress(sys.argv[1], sys.argv[2], scheme="int8", workers=1)
""")


def test_a_killed_run_leaves_no_output_and_resume_finishes_to_the_same_bytes(tmp_path):
    idx, _ = _sharded(tmp_path)
    compress(idx, tmp_path / "ref", scheme="int8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]))
    # the 6th quantized tensor lies in the second or a later shard: the first shard is done
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, str(idx), str(tmp_path / "out"),
                             "6"], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout.readline().strip() == "HALFWAY"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (tmp_path / "out").exists()  # nothing under the output's name
    staging = tmp_path / ".out.refquant-partial"
    left = sorted(os.listdir(staging))
    assert any(n.endswith(".safetensors") for n in left)  # a finished shard to keep
    assert any(n.endswith(".tmp") for n in left)  # the killed shard's temporary file
    with pytest.raises(RefquantError, match="interrupted run left"):
        compress(idx, tmp_path / "out", scheme="int8")
    with pytest.raises(RefquantError, match="another input, recipe or plan"):
        compress(idx, tmp_path / "out", scheme="int4-g32", resume=True)
    kept = {n: (staging / n).stat().st_mtime_ns for n in left if n.endswith(".safetensors")}
    assert main(["compress", str(idx), "-o", str(tmp_path / "out"), "--scheme", "int8",
                 "--resume", "-q"]) == 0
    for n, t in kept.items():  # finished shards were kept, not redone
        assert (tmp_path / "out" / n).stat().st_mtime_ns == t
    assert _files(tmp_path / "out") == _files(tmp_path / "ref")
    assert not staging.exists()
    with pytest.raises(RefquantError, match="no interrupted run to resume"):
        compress(idx, tmp_path / "out", scheme="int8", resume=True)


def test_existing_outputs_are_not_replaced_unasked(tmp_path):
    idx, _ = _sharded(tmp_path)
    compress(idx, tmp_path / "out" / "model.safetensors.index.json", scheme="int8")
    with pytest.raises(RefquantError, match="exists"):
        compress(idx, tmp_path / "out", scheme="int8")
    before = _files(tmp_path / "out")
    compress(idx, tmp_path / "out", scheme="int8", overwrite=True)
    assert _files(tmp_path / "out") == before
    with pytest.raises(RefquantError, match="holds the input"):
        compress(idx, idx.parent, scheme="int8", overwrite=True)
    with pytest.raises(RefquantError, match="shard by shard"):
        compress(idx, tmp_path / "x.safetensors", scheme="int8", resume=True)


def test_an_existing_folder_gets_the_shards_and_keeps_its_other_files(tmp_path):
    idx, _ = _sharded(tmp_path)
    compress(idx, tmp_path / "ref", scheme="q8_0")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text("{}")
    compress(idx, tmp_path / "out", scheme="q8_0")
    got = _files(tmp_path / "out")
    assert got.pop("config.json") == b"{}"
    assert got == _files(tmp_path / "ref")


def test_dask_local_cluster_of_two_workers_writes_the_same_bytes(tmp_path):
    import_peer("distributed")
    idx, _ = _sharded(tmp_path)
    local = compress(idx, tmp_path / "local", scheme="q4_0")
    dist = compress(idx, tmp_path / "dask", scheme="q4_0", scheduler="dask", n_workers=2)
    assert _files(tmp_path / "dask") == _files(tmp_path / "local")
    assert [r.name for r in dist.rows] == [r.name for r in local.rows]
    assert [r.sqnr_db for r in dist.rows] == [r.sqnr_db for r in local.rows]


def test_an_existing_dask_scheduler_by_address(tmp_path):
    distributed = import_peer("distributed")
    idx, _ = _sharded(tmp_path)
    compress(idx, tmp_path / "local", scheme="int8")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        compress(idx, tmp_path / "tcp", scheme="int8", scheduler=cluster.scheduler_address)
    assert _files(tmp_path / "tcp") == _files(tmp_path / "local")
    with pytest.raises(RefquantError, match="scheduler must be"):
        compress(idx, tmp_path / "x", scheme="int8", scheduler="yarn")


def test_a_llama_cpp_mix_is_decided_for_the_whole_model_across_shards(tmp_path):
    idx, _ = _sharded(tmp_path)
    one = compress(idx, tmp_path / "one.safetensors", scheme="q4_k_m")
    rep = compress(idx, tmp_path / "out", scheme="q4_k_m")
    got = {r.name: r.scheme for r in rep.rows}
    assert got == {r.name: r.scheme for r in one.rows}
    # 4 layers: use_more_bits(i, 4) for i = 2 ((2 - 4 // 8) % 3 == 2) and 3
    # (i >= 7 * 4 // 8 = 3); rows of 96 are not whole 256-blocks, so Q6_K -> Q8_0 and
    # Q4_K -> Q5_0
    assert [got[f"model.layers.{i}.mlp.down_proj.weight"] for i in range(4)] == [
        "q5_0", "q5_0", "q8_0", "q8_0"]
