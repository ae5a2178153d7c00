"""``refquant verify``: exit status 0 / 1 / 2, the report it prints, .npy and .npz inputs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from refquant.cli import main


@pytest.fixture
def files(tmp_path):
    def save(name, arr=None, **arrays):
        p = tmp_path / name
        if name.endswith(".npz"):
            np.savez(p, **arrays)
        else:
            np.save(p, arr)
        return str(p)

    return save


def test_equal_npy_files_exit_0(files, capsys):
    a = files("a.npy", np.int8([1, 2, 3]))
    b = files("b.npy", np.int8([1, 2, 3]))
    assert main(["verify", a, b]) == 0
    out = capsys.readouterr().out
    assert "OK (3 elements equal)" in out
    assert "1 of 1 array(s) match" in out


def test_mismatch_exits_1_and_names_the_tie_when_x_and_scale_are_given(files, capsys):
    a = files("a.npy", np.int8([3, 0, 5]))
    b = files("b.npy", np.int8([2, 0, 5]))
    x = files("x.npy", np.float32([1.25, 0.0, 2.5]))
    assert main(["verify", a, b, "--x", x, "--scale", "0.5"]) == 1
    out = capsys.readouterr().out
    assert "Mismatched elements: 1 / 3 (33.3%)" in out
    assert "one step off at an exact rounding tie: 1 (first at index (0,))" in out


def test_per_axis_scale_from_a_npy_file(files, capsys):
    a = files("a.npy", np.int8([[1, 2], [3, 4]]))
    b = files("b.npy", np.int8([[0, 2], [3, 4]]))
    x = files("x.npy", np.float32([[0.25, 1.0], [3.0, 8.0]]))
    s = files("s.npy", np.float32([0.5, 2.0]))
    assert main(["verify", a, b, "--x", x, "--scale", s, "--axis", "0"]) == 1
    assert "one step off at an exact rounding tie: 1" in capsys.readouterr().out


def test_max_step_diff_accepts_one_step(files, capsys):
    a = files("a.npy", np.uint8([3, 7]))
    b = files("b.npy", np.uint8([2, 7]))
    assert main(["verify", a, b, "--max-step-diff", "1"]) == 0
    assert main(["verify", a, b]) == 1


def test_npz_files_are_compared_key_by_key(files, capsys):
    a = files("a.npz", w=np.int8([1, 2]), v=np.float32([1.0]))
    b = files("b.npz", w=np.int8([1, 2]), v=np.float32([1.5]), extra=np.int8([0]))
    assert main(["verify", a, b]) == 1
    out = capsys.readouterr().out
    assert "w: OK" in out
    assert "v: MISMATCH" in out and "Dequantized values are not close" in out
    assert "array 'extra' is missing from ACTUAL" in out
    assert "1 of 3 array(s) match" in out


def test_key_selects_one_array_of_an_npz(files, capsys):
    a = files("a.npz", w=np.int8([1, 2]), v=np.float32([1.0]))
    b = files("b.npz", w=np.int8([1, 2]), v=np.float32([9.0]))
    assert main(["verify", a, b, "--key", "w"]) == 0
    c = files("c.npy", np.int8([1, 2]))
    assert main(["verify", c, a, "--key", "w"]) == 0  # .npy against one key of an .npz


def test_float_arrays_with_rtol_and_max_ulp(files):
    one = np.float32(1.0)
    a = files("a.npy", np.float32([np.nextafter(one, np.float32(2))]))
    b = files("b.npy", np.float32([one]))
    assert main(["verify", a, b, "--max-ulp", "1"]) == 0
    assert main(["verify", a, b, "--max-ulp", "0"]) == 1
    assert main(["verify", a, b, "--rtol", "0"]) == 1


def test_json_output_is_a_report_per_array(files, capsys):
    a = files("a.npy", np.int8([3, 0]))
    b = files("b.npy", np.int8([2, 0]))
    assert main(["verify", a, b, "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)
    assert rep[""]["counts"] == {"one_step": 1}
    assert rep[""]["ok"] is False


@pytest.mark.parametrize("case", ["missing", "extension", "pickle", "bad_scale", "no_key",
                                  "npy_vs_many", "truncated_npz"])
def test_bad_input_exits_2_with_a_message(files, tmp_path, capsys, case):
    a = files("a.npy", np.int8([1]))
    args = {
        "missing": [a, str(tmp_path / "nope.npy")],
        "extension": [a, str(_write(tmp_path / "b.txt"))],
        "pickle": [a, str(_pickled(tmp_path / "p.npy"))],
        "bad_scale": [a, a, "--scale", "abc"],
        "no_key": [files("z.npz", w=np.int8([1])), files("y.npz", w=np.int8([1])), "--key", "q"],
        "npy_vs_many": [a, files("m.npz", w=np.int8([1]), v=np.int8([2]))],
        # a zip header and nothing after it: zipfile.BadZipFile once escaped as a traceback
        "truncated_npz": [a, str(_write(tmp_path / "t.npz", b"PK\x03\x04" + b"x" * 64))],
    }[case]
    assert main(["verify", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("refquant verify: error:")
    assert {"missing": "does not exist", "extension": "unrecognised checkpoint format",
            "pickle": "without pickle", "bad_scale": "scale must be a number",
            "no_key": "has no array 'q'", "npy_vs_many": "pass --key",
            "truncated_npz": "without pickle"}[case] in err


def _write(p, data=b"1 2 3"):
    p.write_bytes(data)
    return p


def _pickled(p):
    np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return p


def test_console_script_exit_status(files):
    a = files("a.npy", np.int8([1]))
    b = files("b.npy", np.int8([2]))
    r = subprocess.run([sys.executable, "-m", "refquant", "verify", a, b], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 1
    assert "Mismatched elements: 1 / 1 (100%)" in r.stdout


def test_verify_reads_checkpoints_through_refquant_io(tmp_path, capsys):
    import refquant.io as rio

    rio.save({"w": np.int8([1, 2, 3])}, tmp_path / "a.safetensors")
    rio.save({"w": np.int8([1, 2, 4])}, tmp_path / "b.safetensors")
    assert main(["verify", str(tmp_path / "a.safetensors"), str(tmp_path / "a.safetensors")]) == 0
    assert main(["verify", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")]) == 1
    assert "Mismatched elements: 1 / 3" in capsys.readouterr().out
