"""`refquant inspect`: the table, totals, metadata, schemes and --json."""

import json

import numpy as np

import refquant.io as rio
from refquant.cli import main


def _ckpt(tmp_path):
    t = {"l.weight": np.zeros((4, 2), np.int8), "l.weight_scale": np.ones(4, np.float32)}
    return rio.save(t, tmp_path / "q.safetensors", metadata={"quant": "int8"})


def test_inspect_prints_table_totals_metadata_and_schemes(tmp_path, capsys):
    p = _ckpt(tmp_path)
    assert main(["inspect", str(p)]) == 0
    out = capsys.readouterr().out
    assert "safetensors, 2 tensors, 12 elements, 24 bytes" in out
    assert "l.weight        int8            4x2" in out
    assert "int8 weight + weight_scale" in out and "scale of l.weight" in out
    assert "quant: int8" in out


def test_inspect_json_is_machine_readable(tmp_path, capsys):
    p = _ckpt(tmp_path)
    assert main(["inspect", str(p), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["format"] == "safetensors" and d["total_bytes"] == 24
    rows = {r["name"]: r for r in d["tensors"]}
    assert rows["l.weight"] == {"name": "l.weight", "dtype": "int8", "stored_dtype": "I8",
                                "shape": [4, 2], "bytes": 8, "scheme": "int8 weight + weight_scale"}
    assert d["metadata"] == {"quant": "int8"}


def test_inspect_bad_file_exits_2_with_the_reason(tmp_path, capsys):
    p = tmp_path / "x.bin"
    p.write_bytes(b"\x00garbage-garbage")
    assert main(["inspect", str(p)]) == 2
    assert "unrecognised checkpoint format" in capsys.readouterr().err


def test_inspect_names_dtypes_alike_whatever_the_format(tmp_path, capsys):
    # F32 (safetensors), torch.float32 (.pt) and <f4 (npz) are one dtype to the user
    w = {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.int8)}
    paths = [rio.save(w, tmp_path / "m.safetensors")]
    np.savez(tmp_path / "m.npz", **w)
    paths.append(tmp_path / "m.npz")
    for p in paths:
        assert main(["inspect", str(p)]) == 0
        lines = capsys.readouterr().out.splitlines()
        row = {ln.split()[0]: ln.split()[1] for ln in lines if ln[:2] in ("w ", "b ")}
        assert row == {"w": "float32", "b": "int8"}, (p, lines)
