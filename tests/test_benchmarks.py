"""The benchmarks run, on tiny sizes, so that they cannot rot between releases.

bench_formats checks that refquant and each installed peer give equal outputs
before it times them, so this also cross-checks every pair once more.
"""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

BENCH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_formats_runs_and_every_pair_agrees():
    lines = []
    results = _load("bench_formats").run(2 * 4096, repeat=1, out=lines.append)
    assert results, "no peer installed: nothing was compared"
    assert all(r[2] > 0 and r[3] > 0 for r in results)
    assert any("int8 per tensor" in line for line in lines)


def test_bench_formats_rejects_a_size_that_is_not_whole_rows():
    with pytest.raises(SystemExit, match="multiple of 4096"):
        _load("bench_formats").run(100)


def test_bench_io_runs_on_a_small_file(tmp_path, capsys):
    _load("bench_io").main(["--size-mb", "2", "--tensors", "4", "--dir", str(tmp_path),
                            "--opens", "3", "--reads", "1"])
    assert "safetensors" in capsys.readouterr().out


def test_bench_kernels_quick_checks_every_peer_against_the_int8_kernel(tmp_path):
    lines = []
    plot = tmp_path / "int8.png"
    results = _load("bench_kernels").run([64], [(1, 96, 80)], repeat=1, plot=str(plot),
                                         cold=False, out=lines.append)
    assert set(results) == {(64, 64, 64), (1, 96, 80)}
    assert all(row["refq u8s8"] > 0 and row["numpy f32"] > 0 for row in results.values())
    assert any(line.startswith("CPU: ") for line in lines)
    assert plot.stat().st_size > 0


def test_bench_calibrated_runs_on_a_small_layer():
    lines = []
    mod = _load("bench_calibrated")
    args = mod.argparse.Namespace(rows=16, cols=64, tokens=80, group_size=32,
                                  peer_python=mod.sys.executable)
    rows = mod.run(args, out=lines.append)
    assert [r[0] for r in rows] == ["gptq actorder=none", "gptq actorder=weight", "sparsegpt"]
    assert all(r[1] > 0 for r in rows)
