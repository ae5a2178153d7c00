"""docs/peers.md is exactly what scripts/make_peers_table.py generates, and its ✓ values
are what the peers themselves return."""

from __future__ import annotations

import importlib.util
import os
import warnings

import numpy as np
import pytest
from helpers import import_peer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script():
    spec = importlib.util.spec_from_file_location(
        "make_peers_table", os.path.join(ROOT, "scripts", "make_peers_table.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SCRIPT = _script()
PEER_VALUES = [(r["topic"], label, v, peer) for r in SCRIPT.rows()
               for label, v, peer in r["results"] if peer is not None]


def test_docs_peers_md_equals_the_generated_page():
    with open(os.path.join(ROOT, "docs", "peers.md"), encoding="utf-8") as f:
        on_disk = f.read()
    assert on_disk == SCRIPT.render(), (
        "docs/peers.md is stale: run `python scripts/make_peers_table.py --write`")


def test_the_page_shows_the_pytorch_onnx_reciprocal_example():
    text = SCRIPT.render()
    assert "PyTorch quantize_per_tensor: **128**" in text
    assert "ONNX QuantizeLinear: **127**" in text


@pytest.mark.parametrize("topic,label,value,peer", PEER_VALUES,
                         ids=[f"{t[:30]}|{lbl}" for t, lbl, _, _ in PEER_VALUES])
def test_peer_returns_the_value_on_the_page(topic, label, value, peer):
    mod, fn = peer
    if mod != "recorded":  # "recorded": the peer's outputs stored in tests/data
        import_peer(mod)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = np.asarray(fn())
    np.testing.assert_array_equal(np.asarray(got, np.float64).reshape(-1),
                                  np.asarray(value, np.float64).reshape(-1))
