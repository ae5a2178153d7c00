import json

from refquant.cli import main


def test_demo_prints_every_integer_scheme(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    for word in ("per-tensor", "per-channel", "per-group-32", "symmetric", "affine", "SQNR"):
        assert word in out
    assert out.count("\n") > 19


def test_demo_json_rows_are_consistent(capsys):
    assert main(["demo", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["integer"]
    by = {(r["scheme"], r["bits"], r["symmetric"]): r for r in rows}
    assert by[("float32", 32, None)]["bytes"] == 4 * 75008
    # more bits, less error; finer granularity, less error
    assert by[("per-tensor", 8, True)]["sqnr_db"] > by[("per-tensor", 4, True)]["sqnr_db"]
    assert by[("per-group-32", 4, True)]["sqnr_db"] > by[("per-tensor", 4, True)]["sqnr_db"]
    # round to nearest never errs by more than half a step when nothing clips
    assert all(r["max_err_steps"] <= 0.5 + 1e-6 for r in rows)
    assert by[("per-channel", 8, True)]["accuracy"] > 0.95


def test_demo_lists_float_codebook_and_block_formats(capsys):
    assert main(["demo", "--json"]) == 0
    fmts = {r["format"]: r for r in json.loads(capsys.readouterr().out)["formats"]}
    assert {"q4_k (llama.cpp)", "nf4 block 64 (bnb)", "mxfp4", "float8_e4m3fn per-channel"} <= set(fmts)
    # at equal bits per weight the K-quant's fitted scales and mins beat Q4_0's single scale
    assert fmts["q4_k (llama.cpp)"]["sqnr_db"] > fmts["q4_0 (llama.cpp)"]["sqnr_db"]
    assert fmts["q8_0 (llama.cpp)"]["sqnr_db"] > fmts["q4_0 (llama.cpp)"]["sqnr_db"] + 20
    assert 8.2 < fmts["float8_e4m3fn per-channel"]["bits_per_weight"] < 8.3
