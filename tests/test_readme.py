"""The README's Python examples run as written (in order, in one namespace)."""

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest

from refquant import sqnr_db as rq_sqnr

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 4


def test_readme_examples_run(tmp_path, monkeypatch):
    import refquant.io as rio
    from refquant.models import load_digits_mlp

    monkeypatch.chdir(tmp_path)
    p = load_digits_mlp()
    # a norm (1-D) and a row that is not a whole number of 32-element blocks: llama.cpp
    # keeps both in F32, and so must the README's GGUF example
    rio.save({"lm_head.weight": p["head.weight"], "norm.weight": np.ones(30, np.float32),
              "odd.weight": np.ones((4, 30), np.float32)}, "model.safetensors")
    ns = {"W": p["blocks.0.weight"], "X_calib": p["x_calib"] @ p["embed.weight"].T, "np": np}
    for block in BLOCKS:
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(block, str(README), "exec"), ns)
        except AssertionError as e:
            # the verification example demonstrates a failing assertion on purpose
            assert "one step off at an exact rounding tie: 2" in str(e)
        # every figure the README shows as printed ("# -> 43.2 dB") is what the code prints
        printed = out.getvalue().splitlines()
        shown = [ln.split("# -> ", 1)[1].strip() for ln in block.splitlines() if "# -> " in ln]
        assert printed[:len(shown)] == shown, (printed, shown)
    assert ns["W_sparse"].shape == ns["W"].shape
    assert ns["w_hat"].shape == p["head.weight"].shape
    with rio.open("model-q4_0.gguf") as ck:
        assert ck.info("norm.weight").stored_dtype == "F32"
        assert ck.info("odd.weight").stored_dtype == "F32"
        assert ck.info("lm_head.weight").stored_dtype == "Q4_0"
    assert rq_sqnr(p["head.weight"], ns["w_hat"]) > 15  # 4.5 bits per weight
    with pytest.raises(Exception):  # noqa: B017 - the demonstration must keep failing
        exec("assert_quantized_equal(theirs, rq.quantize(x, 0.5), x=x, scale=0.5)", ns)


def test_readme_cites_only_files_in_the_repository():
    root = README.parent
    for target in re.findall(r"\]\(([^)#:]+)\)", README.read_text(encoding="utf-8")):
        assert (root / target).exists(), target
    assert (root / "docs" / "DESIGN.md").exists()
