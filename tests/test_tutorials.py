"""Every tutorial runs as a script, headless, and ends with its own assertions."""

import os
import re
import runpy
import sys
from pathlib import Path

import pytest

TUTORIALS = sorted((Path(__file__).resolve().parents[1] / "tutorials").glob("[0-9][0-9]_*.py"))


def test_there_are_tutorials():
    assert TUTORIALS, "tutorials/ holds no NN_topic.py files"


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    cwd, out = tmp_path / "cwd", tmp_path / "out"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("REFQUANT_TUTORIAL_OUT", str(out))  # the folder tutorials write into
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setattr(sys, "argv", [str(path)])
    runpy.run_path(str(path), run_name="__main__")
    import matplotlib.pyplot as plt

    plt.close("all")
    # every figure the tutorial saves is there, and is a PNG with pixels in it
    saved = re.findall(r"savefig\(\s*OUT\s*/\s*[\"']([^\"']+)[\"']", path.read_text())
    assert saved, f"{path.name} saves no figure (each tutorial plots its formula)"
    for name in saved:
        png = out / name
        assert png.is_file(), f"{path.name} did not write {name}; the folder holds {os.listdir(out)}"
        head = png.read_bytes()
        assert head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) > 1000, f"{name} is not a PNG with content"
    assert os.listdir(cwd) == [], f"{path.name} wrote into the working directory: {os.listdir(cwd)}"


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_opens_as_a_notebook_with_maths_and_code(path):
    jupytext = pytest.importorskip("jupytext")
    nb = jupytext.read(path, fmt="py:percent")
    kinds = [c.cell_type for c in nb.cells]
    assert kinds.count("markdown") >= 2 and kinds.count("code") >= 2
    assert any("$" in c.source for c in nb.cells if c.cell_type == "markdown")
