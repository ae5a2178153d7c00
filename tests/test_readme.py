"""The README's Python examples run as written (in order, in one namespace)."""

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
    rio.save({"lm_head.weight": p["head.weight"]}, "model.safetensors")
    ns = {"W": p["blocks.0.weight"], "X_calib": p["x_calib"] @ p["embed.weight"].T, "np": np}
    for block in BLOCKS:
        try:
            exec(compile(block, str(README), "exec"), ns)
        except AssertionError as e:
            # the verification example demonstrates a failing assertion on purpose
            assert "one step off at an exact rounding tie: 2" in str(e)
    assert ns["W_sparse"].shape == ns["W"].shape
    assert ns["w_hat"].shape == p["head.weight"].shape
    assert rq_sqnr(p["head.weight"], ns["w_hat"]) > 15  # 4.5 bits per weight
    with pytest.raises(Exception):  # noqa: B017 - the demonstration must keep failing
        exec("assert_quantized_equal(theirs, rq.quantize(x, 0.5), x=x, scale=0.5)", ns)
