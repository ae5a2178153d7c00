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


def test_version_and_a_bare_command_print_instead_of_erroring(capsys):
    import pytest

    import refquant

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"refquant {refquant.__version__}"
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: refquant") and "inspect" in out and "verify" in out


def test_identify_reads_the_files_it_is_given_npz_included(tmp_path, capsys):
    import numpy as np

    np.save(tmp_path / "x.npy", np.float32([0.5, 1.5, 2.5]))
    np.savez(tmp_path / "mine.npz", q=np.int8([0, 2, 2]))  # half to even
    assert main(["identify", str(tmp_path / "x.npy"), str(tmp_path / "mine.npz"),
                 "--scale", "1"]) == 0
    assert "rounding          = half_even" in capsys.readouterr().out
    np.savez(tmp_path / "two.npz", a=np.int8([0, 2, 2]), b=np.int8([1, 2, 3]))
    assert main(["identify", str(tmp_path / "x.npy"), str(tmp_path / "two.npz"),
                 "--scale", "1"]) == 2
    assert "pass --key" in capsys.readouterr().err
    assert main(["identify", str(tmp_path / "x.npy"), str(tmp_path / "two.npz"),
                 "--scale", "1", "--key", "a"]) == 0


def test_verify_refuses_a_bad_scale_even_without_x(tmp_path, capsys):
    import numpy as np

    np.save(tmp_path / "a.npy", np.int8([1, 2]))
    for bad in ("-1", "0", "nan", "inf"):
        assert main(["verify", str(tmp_path / "a.npy"), str(tmp_path / "a.npy"),
                     "--scale", bad]) == 2
        assert "scale must be finite and > 0" in capsys.readouterr().err


def test_messages_show_plain_numbers_and_the_public_error_class():
    import numpy as np
    import pytest

    import refquant

    assert repr(refquant.RefquantError("m")) == "RefquantError('m')"
    assert refquant.RefquantError.__module__ == "refquant"
    cases = [lambda: refquant.quantize(np.float32([1]), np.float64(-1.0)),
             lambda: refquant.quantize(np.float32([1]), 1.0, np.float64(0.5)),
             lambda: refquant.quantize_bias(np.float32([1]), np.float32(-2), 1.0)]
    for call in cases:
        with pytest.raises(refquant.RefquantError) as e:
            call()
        assert "np.float" not in str(e.value), str(e.value)


def test_unknown_format_suggests_the_nearest_name():
    import pytest

    import refquant

    with pytest.raises(refquant.RefquantError, match=r"did you mean 'q4_k'\?"):
        refquant.get_format("q4k")
    with pytest.raises(refquant.RefquantError, match=r"did you mean 'float8_e4m3fn'"):
        refquant.get_format("float8_e4m3")
    with pytest.raises(refquant.RefquantError) as e:
        refquant.get_format("zzzz")
    assert "did you mean" not in str(e.value)


def test_quantize_of_text_says_what_it_accepts():
    import pytest

    import refquant

    with pytest.raises(refquant.RefquantError, match="real numbers .floating-point, integer"):
        refquant.quantize("abc", 0.1)
