import contextlib
import io
import json

import pytest

from refquant.cli import main


@pytest.fixture(scope="module")
def demo_json(tmp_path_factory):
    plot = tmp_path_factory.mktemp("demo") / "ladder.png"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["demo", "--json", "--plot", str(plot)]) == 0
    return json.loads(buf.getvalue()), plot


def test_demo_prints_one_table_of_the_preset_ladder(capsys):
    assert main(["demo", "--no-plot"]) == 0
    out = capsys.readouterr().out
    for word in ("int8", "int4-g128", "gptq int4-g128", "fp8", "nf4", "mxfp4", "q8_0", "q6_k",
                 "q4_k", "q4_0", "q3_k", "q2_k", "2:4", "SQNR", "acc %", "bits/w"):
        assert word in out, word
    assert "max err" not in out and "plot:" not in out


def test_demo_sqnr_rises_with_bits_within_a_family(demo_json):
    rows = {r["scheme"]: r for r in demo_json[0]["rows"]}
    ladder = ["q8_0", "q6_k", "q4_k", "q3_k", "q2_k"]
    bpw = [rows[s]["bits_per_weight"] for s in ladder]
    sq = [rows[s]["sqnr_db"] for s in ladder]
    assert bpw == sorted(bpw, reverse=True) and sq == sorted(sq, reverse=True)
    assert rows["int8"]["sqnr_db"] > rows["int4-g128"]["sqnr_db"] + 15
    # llama.cpp's bits per weight, block bytes over block weights
    assert [rows[s]["bits_per_weight"] for s in ("q8_0", "q4_0", "q6_k", "q4_k", "q3_k",
                                                 "q2_k")] == [8.5, 4.5, 6.5625, 4.5, 3.4375,
                                                              2.625]
    assert rows["mxfp4"]["bits_per_weight"] == pytest.approx(4.25)
    assert rows["float32"]["bytes"] == 4 * 75008


def test_demo_int8_keeps_the_float_accuracy_and_gptq_beats_rtn(demo_json):
    rows = {r["scheme"]: r for r in demo_json[0]["rows"]}
    assert abs(rows["int8"]["accuracy"] - rows["float32"]["accuracy"]) <= 0.01
    assert rows["float32"]["accuracy"] > 0.95
    # GPTQ trades weight error for output error: worse SQNR, accuracy at least RTN's
    assert rows["gptq int4-g128"]["accuracy"] >= rows["int4-g128"]["accuracy"]
    assert rows["2:4 sparsegpt"]["accuracy"] > rows["2:4 magnitude"]["accuracy"]


def test_demo_writes_the_plot_it_names(demo_json, tmp_path, monkeypatch, capsys):
    out, plot = demo_json
    assert out["plot"] == str(plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.chdir(tmp_path)
    rows = [{"scheme": "a", "family": "x", "bits_per_weight": 4.0, "sqnr_db": 20.0}]
    from refquant.demo import plot_rows

    plot_rows(rows, "sqnr.png")
    assert (tmp_path / "sqnr.png").read_bytes()[:4] == b"\x89PNG"


def test_demo_path_runs_the_ladder_on_a_checkpoint(tmp_path, capsys):
    import numpy as np

    import refquant.io as rio

    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.safetensors"
    rio.save({"a.weight": rng.standard_normal((16, 256)).astype(np.float32),
              "b.weight": rng.standard_normal((8, 64)).astype(np.float32),
              "a.bias": np.zeros(16, np.float32)}, str(path))
    assert main(["demo", str(path), "--json", "--plot", str(tmp_path / "p.png")]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["scheme"]: r for r in out["rows"]}
    assert rows["float32"]["bytes"] == 4 * (16 * 256 + 8 * 64)  # the bias is not 2-D
    assert "accuracy" not in rows["int8"] and "gptq int4-g128" not in rows
    assert rows["q8_0"]["sqnr_db"] > rows["q4_0"]["sqnr_db"] > rows["q2_k"]["sqnr_db"]
    # b.weight's 64-wide rows cannot hold K-quant blocks of 256 but hold 512 weights
    assert any("b.weight" in n for n in rows["q4_k"]["notes"])
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["demo", str(path), "--no-plot"]) == 0
    text = capsys.readouterr().out
    assert "SQNR" in text and "acc %" not in text and "q4_k" in text
    from refquant.demo import checkpoint_rows

    rows, notes = checkpoint_rows(str(path), max_elements=1000)
    assert rows[0]["bytes"] == 4 * 8 * 64 and any("a.weight" in n and "skipped" in n
                                                  for n in notes)


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


def test_the_command_entry_tunes_glibcs_allocator(tmp_path):
    """tune_allocator (what console_main, the ``refquant`` command, calls first) takes on
    glibc, in a child process; ``python -m refquant`` runs through it."""
    import subprocess
    import sys

    code = ("import refquant.cli as c, sys; ok = c.tune_allocator(); "
            "sys.exit(0 if ok or not sys.platform.startswith('linux') else 1)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    r = subprocess.run([sys.executable, "-m", "refquant", "--version"], capture_output=True,
                       text=True)
    assert r.returncode == 0 and r.stdout.startswith("refquant ")
