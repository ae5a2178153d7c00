"""llama.cpp's own llama_model_quantize, live: the records of tests/data/llama_quantize/ are
what it writes today, and refquant's files are byte-identical to the files it writes.

llama-cpp-cffi (the prebuilt llama.cpp library with ``llama_model_quantize``) cannot share
refquant's test environment (its wheel is ~290 MB and needs a g++-compiled shim, see
scripts/record_llama_quantize.py), so it lives in a venv of its own that
``.ci/peers-llamacpp.sh`` builds; these tests run its interpreter, named by
``REFQUANT_LLAMA_PYTHON``. Without it they skip, unless ``REFQUANT_LLAMA_LIVE=1`` (set by
that script), which makes a missing interpreter a failure.
"""

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers import import_peer
from tiny_llama import write_tiny_imatrix, write_tiny_llama

from refquant.compress import compress

ROOT = Path(__file__).resolve().parents[2]
RECORDS = ROOT / "tests" / "data" / "llama_quantize"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The records llama_model_quantize writes now (run once per module)."""
    py = os.environ.get("REFQUANT_LLAMA_PYTHON")
    if not py:
        if os.environ.get("REFQUANT_LLAMA_LIVE") == "1":
            pytest.fail("REFQUANT_LLAMA_LIVE=1 but REFQUANT_LLAMA_PYTHON names no interpreter")
        pytest.skip("REFQUANT_LLAMA_PYTHON is not set (.ci/peers-llamacpp.sh sets it)")
    out = tmp_path_factory.mktemp("live_records")
    r = subprocess.run([py, str(ROOT / "scripts" / "record_llama_quantize.py"), "--out",
                        str(out), "--keep", str(out / "files")], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def _load(folder, preset):
    return json.loads((folder / f"{preset}.json").read_text())


@pytest.mark.parametrize("sub", ["", "imatrix"])
def test_committed_records_are_what_llama_cpp_writes_now(live, sub):
    for path in sorted((RECORDS / sub).glob("*.json")):
        want = json.loads(path.read_text())
        got = _load(live / sub, path.stem)
        assert got == want, f"{sub}/{path.name}: rerun scripts/record_llama_quantize.py"


@pytest.mark.parametrize("preset", ["q4_k_m", "q8_0", "iq4_xs", "q4_0"])
def test_refquants_file_is_llama_model_quantizes_file(live, tmp_path, monkeypatch, preset):
    import_peer("gguf")
    src = tmp_path / "tiny-f16.gguf"
    write_tiny_llama(src)
    compress(src, tmp_path / "q.gguf", scheme=preset)
    peer = live / "files" / f"tiny-{preset}.gguf"
    assert (tmp_path / "q.gguf").read_bytes() == peer.read_bytes()
    # with an importance matrix: the same bytes but for the two count keys' type tags
    monkeypatch.chdir(tmp_path)
    write_tiny_imatrix(tmp_path / "tiny-imatrix.dat")
    compress(src, "qi.gguf", scheme=preset, imatrix="tiny-imatrix.dat")
    mine = (tmp_path / "qi.gguf").read_bytes()
    theirs = (live / "files" / "imatrix" / f"tiny-{preset}.gguf").read_bytes()
    assert len(mine) == len(theirs)
    diff = [i for i in range(len(mine)) if mine[i] != theirs[i]]
    # gguf type tag UINT32 (4) against the recorded build's INT32 (5): one byte each
    assert len(diff) == 2 and all((mine[i], theirs[i]) == (4, 5) for i in diff), diff[:8]
    assert hashlib.sha256(theirs).hexdigest() == _load(live / "imatrix", preset)["file_sha256"]

