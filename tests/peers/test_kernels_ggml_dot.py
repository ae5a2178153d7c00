"""matmul_ggml against libggml's scalar ggml_vec_dot_<type>_q8_<0|K>_generic, bit for bit.

The C functions come from ``libggml-cpu.so`` of the prebuilt ``libggml-python``
wheel (0.20.2.post1), called through ctypes with the weight row's bytes and the
activation row quantized by refquant (``quantize_row_q8_0_ref`` /
``quantize_row_q8_K_ref``, themselves bit-exact with ggml). Every (activation
row, weight row) pair is compared as float32 bits, on hypothesis-drawn shapes and
scales (tiny, huge, all-zero blocks, constant rows), for the numpy and cpu backends.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os

import numpy as np
import pytest
from helpers import import_peer
from hypothesis import given, settings
from hypothesis import strategies as st

from refquant.formats.ggml import GGML_BLOCK_TABLE, ggml_block_formats
from refquant.kernels.ggml_dot import matmul_ggml
from refquant.quant.ggml_dot import quantize_activations

C_NAMES = {
    "q4_0": "ggml_vec_dot_q4_0_q8_0_generic",
    "q8_0": "ggml_vec_dot_q8_0_q8_0_generic",
    "q4_k": "ggml_vec_dot_q4_K_q8_K_generic",
    "q6_k": "ggml_vec_dot_q6_K_q8_K_generic",
}


@pytest.fixture(scope="module")
def libcpu():
    import_peer("libggml")  # skip where missing; a failure under REFQUANT_REQUIRE_PEERS=1
    spec = importlib.util.find_spec("libggml")
    path = os.path.join(os.path.dirname(spec.origin), "lib64", "libggml-cpu.so")
    lib = ctypes.CDLL(path)
    lib.ggml_cpu_init()  # fills the fp16 -> fp32 table GGML_CPU_FP16_TO_FP32 reads
    for name in C_NAMES.values():
        f = getattr(lib, name)
        f.restype = None
        f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                      ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return lib


def _libggml_matmul(lib, x, w, t):
    f = getattr(lib, C_NAMES[t])
    a = quantize_activations(x, t)
    m, n, k = x.shape[0], w.shape[0], x.shape[1]
    out = np.zeros((m, n), np.float32)
    s = np.zeros(1, np.float32)
    for i in range(m):
        ai = np.ascontiguousarray(a[i])
        for j in range(n):
            wj = np.ascontiguousarray(w[j])
            f(k, s.ctypes.data, 0, wj.ctypes.data, 0, ai.ctypes.data, 0, 1)
            out[i, j] = s[0]
    return out


def _report(actual, desired):
    a, d = actual.view(np.uint32), desired.view(np.uint32)
    bad = a != d
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        pytest.fail(f"{bad.sum()} / {bad.size} outputs differ; first at {i}: "
                    f"refquant {actual[i]!r}, libggml {desired[i]!r}")


@st.composite
def _cases(draw, t):
    _, bs, ts = GGML_BLOCK_TABLE[t]
    m, n, nb = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["normal", "wide", "zero_block", "constant", "tiny"]))
    k = nb * bs
    x = rng.standard_normal((m, k)).astype(np.float32)
    wf = rng.standard_normal((n, k)).astype(np.float32)
    if kind == "wide":
        x *= (10.0 ** rng.integers(-6, 7, (m, k))).astype(np.float32)
        wf *= (10.0 ** rng.integers(-3, 4, (n, k))).astype(np.float32)
    elif kind == "zero_block":
        x[:, :bs] = 0
        wf[:, -bs:] = 0
    elif kind == "constant":
        x[:] = np.float32(draw(st.sampled_from([1.0, -3.5, 1e-30, 6e4])))
    elif kind == "tiny":
        x *= np.float32(1e-38)
    w = ggml_block_formats()[t].quantize_blocks(wf.reshape(-1, bs)).reshape(n, nb * ts)
    return x, w


@pytest.mark.parametrize("t", list(C_NAMES))
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_matmul_ggml_is_bit_exact_with_libggml_generic(libcpu, t, data):
    x, w = data.draw(_cases(t))
    want = _libggml_matmul(libcpu, x, w, t)
    for backend in ("numpy", "cpu"):
        _report(matmul_ggml(x, w, t, backend=backend), want)


def test_q4_k_needs_the_contracted_multiply_adds(libcpu, monkeypatch):
    # the wheel's build fuses sums[l] += d * aux[l] and sumf -= dmin * summ; unfused
    # float32 steps disagree with it on random data, so the reference's fma is load-bearing
    from refquant.quant import ggml_dot

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 512)).astype(np.float32)
    w = ggml_block_formats()["q4_k"].quantize_blocks(
        rng.standard_normal((8, 256)).astype(np.float32)).reshape(4, 2 * 144)
    want = _libggml_matmul(libcpu, x, w, "q4_k")
    _report(matmul_ggml(x, w, "q4_k", backend="numpy"), want)
    monkeypatch.setattr(ggml_dot, "_fma32", lambda a, b, c: (np.float32(a) * np.float32(b)
                                                             + np.float32(c)).astype(np.float32))
    assert (matmul_ggml(x, w, "q4_k", backend="numpy").view(np.uint32)
            != want.view(np.uint32)).any()
