"""refquant.vectors: the golden-vector files round-trip and hold the hand-derived values."""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import pytest

from refquant import RefquantError
from refquant import vectors as V
from refquant.cli import main


@pytest.fixture(scope="module")
def vecdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("vectors")
    summary = V.write_vectors(str(d))
    return str(d), summary


def test_every_builtin_family_writes_cases(vecdir):
    _, summary = vecdir
    for fam in ("integer", "affine", "tflite", "onnx"):
        assert summary["cases"][fam] > 0


def test_round_trip_recomputes_every_case_equal(vecdir):
    d, _ = vecdir
    assert V.check_vectors(d) == []


def test_index_describes_each_case_and_no_temp_files_remain(vecdir):
    d, _ = vecdir
    with open(os.path.join(d, "index.json"), encoding="utf-8") as f:
        index = json.load(f)
    assert index["format_version"] == V.FORMAT_VERSION
    tags = set()
    for e in index["cases"]:
        assert {"family", "name", "file", "function", "semantics", "description", "edge_cases",
                "args", "outputs"} <= set(e)
        assert os.path.exists(os.path.join(d, e["file"]))
        tags.update(e["edge_cases"])
    assert {"exact_ties", "max", "saturation", "nan_inf", "partial_blocks",
            "extreme_shifts"} <= tags
    leftovers = [f for _, _, fs in os.walk(d) for f in fs if f.startswith(".tmp-")]
    assert leftovers == []


def _case(d, family, name):
    return next(e for e in V.load_vectors(d) if e["family"] == family and e["name"] == name)


def test_stored_values_match_hand_derivations(vecdir):
    d, _ = vecdir
    e = _case(d, "affine", "pytorch_reciprocal_example")
    assert e["arrays"]["out.0"].tolist() == [128]
    assert _case(d, "affine", "divide_example")["arrays"]["out.0"].tolist() == [127]
    away = _case(d, "affine", "ties_half_away")["arrays"]["out.0"]
    # x = -2.5 -1.5 -0.5 0.5 1.5 2.5 126.5 127.5 -128.5 1e6 -1e6
    assert away.tolist() == [-3, -2, -1, 1, 2, 3, 127, 127, -128, 127, -128]
    even = _case(d, "affine", "ties_half_even")["arrays"]["out.0"]
    assert even.tolist() == [-2, -2, 0, 0, 2, 2, 126, 127, -128, 127, -128]
    srdhm = _case(d, "integer", "srdhm_edges")
    a, b = srdhm["arrays"]["in.a"][:, 0], srdhm["arrays"]["in.b"][0]
    i, j = int(np.flatnonzero(a == -(2**31))[0]), int(np.flatnonzero(b == -(2**31))[0])
    assert srdhm["arrays"]["out.0"][i, j] == 2**31 - 1
    tail = _case(d, "tflite", "affine_quantize_optimized_tail")["arrays"]["out.0"]
    assert tail.tolist() == [2] * 8 + [3, -3, -3, -3]
    wrap = _case(d, "integer", "integer_matmul_int32_wrap")["arrays"]["out.0"]
    assert int(wrap[0, 0]) == 16384 * 131073 - 2**32


def test_ml_dtypes_outputs_are_stored_as_plain_integers_and_restored(vecdir):
    d, _ = vecdir
    e = _case(d, "onnx", "quantize_linear_int4_blocked_partial")
    assert e["outputs"][0]["dtype"] == "int4" and e["outputs"][0]["stored_dtype"] == "int8"
    assert e["arrays"]["out.0"].dtype == ml_dtypes.int4
    f8 = _case(d, "onnx", "quantize_linear_float8_no_saturate")
    assert f8["outputs"][0]["stored_dtype"] == "uint8"
    with np.load(os.path.join(d, f8["file"]), allow_pickle=False) as z:
        bits = z["out.0"]
    assert bits.dtype == np.uint8
    # 500 and +-Inf overflow e4m3fn: NaN (0x7F / 0xFF) when saturate=0
    assert np.isnan(bits.view(ml_dtypes.float8_e4m3fn).astype(np.float32)[4])


def test_a_tampered_output_is_reported(tmp_path):
    d = str(tmp_path)
    V.write_vectors(d, "affine")
    e = _case(d, "affine", "ties_half_even")
    path = os.path.join(d, e["file"])
    with np.load(path) as z:
        arrays = dict(z)
    arrays["out.0"] = arrays["out.0"].copy()
    arrays["out.0"][0] += 1
    np.savez(path, **arrays)
    assert V.check_vectors(d) == ["affine/ties_half_even: output 0 differs"]


def test_missing_family_module_is_skipped_with_a_note(tmp_path, monkeypatch):
    def broken():
        raise ImportError("No module named 'refquant.compat.nothing'")

    monkeypatch.setitem(V._GENERATORS, "nothing", broken)
    summary = V.write_vectors(str(tmp_path), ["nothing", "integer"])
    assert "nothing" in summary["skipped"] and summary["cases"]["integer"] > 0
    with open(tmp_path / "index.json", encoding="utf-8") as f:
        assert "nothing" in json.load(f)["skipped"]


def test_unknown_family_and_missing_folder_raise():
    with pytest.raises(RefquantError, match="unknown vector family"):
        V.write_vectors("/nonexistent-never-created", "nope")
    with pytest.raises(RefquantError, match="index.json"):
        V.load_vectors("/nonexistent")


def test_cli_vectors_writes_and_checks(tmp_path, capsys):
    assert main(["vectors", str(tmp_path), "--family", "tflite"]) == 0
    assert "tflite" in capsys.readouterr().out
    assert main(["vectors", str(tmp_path), "--check"]) == 0
    assert main(["vectors", str(tmp_path), "--family", "bogus"]) == 2


def test_check_runs_only_refquant_compat_and_quant_functions(tmp_path):
    # index.json is input: a tampered "function" once ran any importable callable
    # (os.system here) with arguments from the file.
    d = str(tmp_path)
    V.write_vectors(d, "affine")
    idx = tmp_path / "index.json"
    index = json.loads(idx.read_text())
    flag = tmp_path / "ran"
    for fn in ("os.system", "refquant.vectors.write_vectors", "refquant.compat.onnx._NUMPY"):
        index["cases"][0]["function"] = fn
        index["cases"][0]["args"] = [{"name": "command", "positional": True, "kind": "scalar",
                                      "value": f"touch {flag}"}]
        idx.write_text(json.dumps(index))
        with pytest.raises(RefquantError, match="function"):
            V.check_vectors(d)
        assert not flag.exists()


@pytest.mark.parametrize("tamper", [
    lambda ix, d: ix["cases"][0].pop("args"),
    lambda ix, d: ix["cases"][0].update(file="affine/missing.npz"),
    lambda ix, d: ix["cases"][0]["outputs"][0].update(key="out.99"),
    lambda ix, d: ix["cases"][0]["outputs"][0].update(dtype="no_such_dtype"),
    lambda ix, d: ix.update(cases=[1]),
    lambda ix, d: open(os.path.join(d, ix["cases"][0]["file"]), "wb").write(b"not a zip"),
    lambda ix, d: open(os.path.join(d, ix["cases"][0]["file"]), "wb").write(b"PK\x03\x04" * 9),
])
def test_a_malformed_vectors_folder_raises_refquant_error(tmp_path, tamper):
    d = str(tmp_path)
    V.write_vectors(d, "affine")
    idx = tmp_path / "index.json"
    index = json.loads(idx.read_text())
    tamper(index, d)
    idx.write_text(json.dumps(index))
    with pytest.raises(RefquantError):
        V.check_vectors(d)


def test_a_corrupt_index_raises_refquant_error(tmp_path):
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(RefquantError, match="index.json"):
        V.load_vectors(str(tmp_path))


@pytest.mark.parametrize("tamper", [
    lambda ix: ix["cases"][0].pop("name"),  # each of these raised KeyError / TypeError
    lambda ix: ix["cases"][0]["args"][0].pop("name"),
    lambda ix: ix["cases"][0]["args"][0].pop("positional"),
    lambda ix: [a for a in ix["cases"][0]["args"] if a["kind"] == "scalar"][0].pop("value"),
    lambda ix: ix["cases"][0]["args"][-1].update(name="bogus"),
    lambda ix: ix.update(cases=None),
])
def test_a_tampered_index_entry_raises_refquant_error(tmp_path, tamper):
    d = str(tmp_path)
    V.write_vectors(d, "affine")
    idx = tmp_path / "index.json"
    index = json.loads(idx.read_text())
    tamper(index)
    idx.write_text(json.dumps(index))
    with pytest.raises(RefquantError):
        V.check_vectors(d)


def test_an_outdir_that_cannot_be_created_is_a_refquant_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"x")  # FileExistsError / NotADirectoryError before
    with pytest.raises(RefquantError, match="outdir"):
        V.write_vectors(str(blocker), "integer")
    assert main(["vectors", str(blocker / "sub"), "--family", "integer"]) == 2
    assert "cannot create folder" in capsys.readouterr().err
    assert blocker.read_bytes() == b"x"


def test_a_case_that_refquant_now_refuses_is_reported_with_its_name(tmp_path):
    # a RefquantError from one case aborted the whole check without naming the case
    d = str(tmp_path)
    V.write_vectors(d, "affine")
    idx = tmp_path / "index.json"
    index = json.loads(idx.read_text())
    scalar = [a for a in index["cases"][0]["args"] if a["name"] == "zero_point"][0]
    scalar["value"] = [1, 2]
    idx.write_text(json.dumps(index))
    problems = V.check_vectors(d)
    assert len(problems) == 1
    assert problems[0].startswith(f"affine/{index['cases'][0]['name']}: refused:")
