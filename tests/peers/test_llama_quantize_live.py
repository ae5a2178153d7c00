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


def _llama_python() -> str:
    py = os.environ.get("REFQUANT_LLAMA_PYTHON")
    if not py:
        if os.environ.get("REFQUANT_LLAMA_LIVE") == "1":
            pytest.fail("REFQUANT_LLAMA_LIVE=1 but REFQUANT_LLAMA_PYTHON names no interpreter")
        pytest.skip("REFQUANT_LLAMA_PYTHON is not set (.ci/peers-llamacpp.sh sets it)")
    return py


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The records llama_model_quantize writes now (run once per module)."""
    py = _llama_python()
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



def _llama_cpp(py, gguf_path, ids, text):
    r = subprocess.run([py, str(ROOT / "scripts" / "llama_cpp_logits.py"), str(gguf_path),
                        "--tokens", ",".join(map(str, ids)), "--text", text],
                       capture_output=True, text=True, timeout=300)
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    assert line, r.stderr[-3000:]
    return json.loads(line[0][7:])


def test_a_hugging_face_llama_folder_becomes_a_gguf_llama_cpp_runs(tmp_path):
    """The moonshot: refquant compress HF_FOLDER -o model.gguf, loaded by llama.cpp's
    library, gives transformers' logits (float32 weights: the same numbers; q8_0: close),
    and llama.cpp's tokenizer splits text as the Hugging Face tokenizer does."""
    import numpy as np

    py = _llama_python()
    torch = import_peer("torch")
    transformers = import_peer("transformers")
    import_peer("tokenizers")
    from hf_llama import VOCAB, write_hf_llama

    d = tmp_path / "tiny-llama"
    write_hf_llama(d)
    ids = [0, 5, 17, 40, 77, 120, 250, 299, 3]
    model = transformers.LlamaForCausalLM.from_pretrained(d, dtype=torch.float32)
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    text = "The quick brown fox jumps over the lazy dog."
    hf_ids = transformers.PreTrainedTokenizerFast(tokenizer_file=str(d / "tokenizer.json")
                                                  ).encode(text, add_special_tokens=False)
    # every matrix in F32 (the default keeps the embedding and the head in their bf16,
    # whose matmuls llama.cpp runs on bf16 activations: 0.4 % off)
    (tmp_path / "f32.toml").write_text('scheme = "f32"\nkeep_embeddings = false\n'
                                       'keep_head = false\n')
    compress(d, tmp_path / "f32.gguf", recipe=tmp_path / "f32.toml")
    got = _llama_cpp(py, tmp_path / "f32.gguf", ids, text)
    assert got["loaded"] and got["decode_rc"] == 0
    assert (got["n_vocab"], got["bos"], got["eos"]) == (VOCAB, 0, 1)
    np.testing.assert_allclose(np.array(got["logits"]), ref, rtol=0, atol=2e-3)
    assert got["text_ids"] == hf_ids
    compress(d, tmp_path / "q8.gguf", scheme="q8_0")
    q8 = _llama_cpp(py, tmp_path / "q8.gguf", ids, text)
    assert q8["loaded"] and q8["decode_rc"] == 0
    err = np.abs(np.array(q8["logits"]) - ref).max()
    assert err < 0.05 * np.abs(ref).max(), err
