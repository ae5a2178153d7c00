"""IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M quantization against libggml's quantize_<type>, live.

``compat.ggml.quantize(x, t, imatrix=w)`` (both backends) must write the very bytes of
libggml-python 0.20.2's ``quantize_iq2_xxs`` ... ``quantize_iq1_m`` with that importance
vector; IQ2_S and IQ1_M also without one (``quant_weights = NULL``: ``quantize_row_iq2_s_ref``,
``ggml_quantize_chunk``); IQ2_XXS, IQ2_XS and IQ1_S refuse without one, as
``ggml_quantize_requires_imatrix`` says. Where ggml aborts the process (float32 overflow in
its neighbour searches) refquant must raise, and only there: checked in child processes.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import REQUIRE_PEERS
from hypothesis import given, settings
from hypothesis import strategies as st

from refquant import RefquantError
from refquant.compat import ggml
from refquant.io.imatrix import compute_imatrix, load_imatrix, save_imatrix

REQUIRED_PEER = "libggml-python"
TYPES = ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M"]
NO_IMATRIX = ["IQ2_S", "IQ1_M"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def lib():
    path = ggml.libggml_paths().get(REQUIRED_PEER)
    if path is None:
        if REQUIRE_PEERS:
            pytest.fail(f"peer {REQUIRED_PEER!r} is required (REFQUANT_REQUIRE_PEERS=1) but not installed")
        pytest.skip(f"{REQUIRED_PEER} (libggml-base) is not installed")
    return ggml.LibGGML(path)


@st.composite
def rows_and_imatrix(draw):
    """(x, w): rows of 256*nb drawn with zeros, ties, spikes, tiny and wide magnitudes; w per column."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows, nb = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    x = rng.standard_normal((rows, 256 * nb)) * rng.uniform(0.01, 100, (rows, 1))
    for _ in range(draw(st.integers(0, 3))):
        a = draw(st.integers(0, 256 * nb - 32))
        kind = draw(st.sampled_from(["zero", "ties", "equal", "spike", "tiny", "wide"]))
        seg = x[:, a : a + draw(st.sampled_from([8, 16, 32, 64]))]
        if kind == "zero":
            seg[:] = draw(st.sampled_from([0.0, -0.0]))
        elif kind == "ties":
            seg[:] = np.round(seg * 2) / 2
        elif kind == "equal":
            seg[:] = draw(st.sampled_from([-3.0, 0.5, 7.25]))
        elif kind == "spike":
            seg[:] = 1e-3
            seg[:, 0] = draw(st.sampled_from([-100.0, 1e5]))
        elif kind == "tiny":
            seg *= 1e-9
        else:
            seg *= 10.0 ** rng.integers(-6, 7, seg.shape)
    wkind = draw(st.sampled_from(["uniform", "holes", "ones", "zero"]))
    w = np.ones(256 * nb) if wkind == "ones" else rng.uniform(0, 5, 256 * nb)
    if wkind == "holes":
        w[rng.integers(0, w.size, 20)] = 0
        w[64:72] = 0
    elif wkind == "zero":
        w[:] = 0
    return x.astype(np.float32), w.astype(np.float32)


@pytest.mark.parametrize("t", TYPES)
@settings(max_examples=6, deadline=None)
@given(case=rows_and_imatrix())
def test_quantize_with_imatrix_matches_libggml(lib, t, case):
    x, w = case
    want = lib.quantize(x, t, w)
    for backend in ("numpy", "cpu"):
        np.testing.assert_array_equal(ggml.quantize(x, t, imatrix=w, backend=backend), want)


@pytest.mark.parametrize("t", NO_IMATRIX)
@settings(max_examples=6, deadline=None)
@given(case=rows_and_imatrix())
def test_quantize_without_imatrix_matches_libggml(lib, t, case):
    x, _ = case
    want = lib.quantize(x, t, None)
    np.testing.assert_array_equal(lib.quantize_chunk(x, t), want)  # ggml_quantize_chunk, NULL
    if t == "IQ2_S":
        np.testing.assert_array_equal(lib.quantize_row(x, t).reshape(want.shape), want)
    for backend in ("numpy", "cpu"):
        np.testing.assert_array_equal(ggml.quantize(x, t, backend=backend), want)


@pytest.mark.parametrize("t", TYPES)
def test_refusing_without_imatrix_is_ggmls_requires_imatrix(lib, t):
    f = lib._lib.ggml_quantize_requires_imatrix
    f.restype, f.argtypes = ctypes.c_bool, [ctypes.c_int]
    required = f(ggml.GGML_TYPES[t])
    assert required == (t not in NO_IMATRIX)
    x = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)
    if required:
        with pytest.raises(RefquantError, match="requires an importance matrix"):
            ggml.quantize(x, t)
    else:
        np.testing.assert_array_equal(ggml.quantize(x, t), lib.quantize(x, t, None))


def test_quantize_real_weights_with_an_imatrix_file_matches_libggml(lib, tmp_path):
    # the digits MLP's four hidden layers side by side (128 x 512, real weights) and an
    # imatrix from their real inputs, written as llama-imatrix's GGUF file and read back
    from refquant.models import digits_mlp_forward, load_digits_mlp

    m = load_digits_mlp()
    _, hidden = digits_mlp_forward(m, m["x_calib"], return_hidden=True)
    W = [m[f"blocks.{i}.weight"] for i in range(4)]
    acts = hidden[:4]  # each block's input
    x = np.concatenate(W, axis=1).astype(np.float32)
    a = np.concatenate(acts, axis=1).astype(np.float32)
    p = tmp_path / "imatrix.gguf"
    save_imatrix(compute_imatrix({"blk.0.ffn.weight": a}, chunk_size=64), p)
    w = load_imatrix(p)["blk.0.ffn.weight"]
    for t in TYPES:
        want = lib.quantize(x, t, w)
        np.testing.assert_array_equal(ggml.quantize(x, t, imatrix=w), want)  # auto: the kernel
        np.testing.assert_array_equal(ggml.quantize(x[:16], t, imatrix=w, backend="numpy"), want[:16])
        # the imatrix matters, and the quantization is a quantization of x
        y = lib.dequantize_row(want, t).reshape(x.shape)
        assert np.sum((y - x) ** 2) < 0.5 * np.sum(x**2)


_CHILD = """
import os, sys, numpy as np
from refquant.compat import ggml
t = sys.argv[1]
lib = ggml.LibGGML()
lib.quantize(np.ones((1, 256), np.float32), t, np.ones(256, np.float32))  # ggml_quantize_init once
for scale in sys.argv[2:]:
    x = (np.random.default_rng(5).standard_normal((1, 256)) * float(scale)).astype(np.float32)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a forked child quantizes: an abort kills only it
        os.close(r)
        os.write(w, lib.quantize(x, t, np.ones(256, np.float32)).tobytes())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    print(scale, "abort" if status else data.hex())
"""


@pytest.mark.parametrize("t", TYPES)
def test_refquant_raises_exactly_where_ggml_aborts(lib, t):
    # float32 overflow of w*diff^2 in the neighbour searches: ggml's GGML_ASSERT kills the
    # process for some magnitudes and types (run in forked children), refquant must raise
    # there and give ggml's bytes everywhere else
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               GGML_NO_BACKTRACE="1")  # ggml_abort would attach gdb for a backtrace
    scales = ["1e15", "1e20", "1e30"]
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(_CHILD), t, *scales], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    results = dict(line.split() for line in r.stdout.splitlines())
    assert sorted(results) == sorted(scales)
    for scale in scales:
        x = (np.random.default_rng(5).standard_normal((1, 256)) * float(scale)).astype(np.float32)
        for backend in ("numpy", "cpu"):
            if results[scale] == "abort":
                with pytest.raises(RefquantError, match="ggml aborts"):
                    ggml.quantize(x, t, imatrix=np.ones(256, np.float32), backend=backend)
            else:
                got = ggml.quantize(x, t, imatrix=np.ones(256, np.float32), backend=backend)
                assert got.tobytes().hex() == results[scale]
