"""matmul_ggml: the Numba kernels equal the NumPy reference bit for bit; bad input is refused.

The reference itself is pinned against libggml in tests/peers/test_kernels_ggml_dot.py.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from helpers import run_without_jit
from hypothesis import given, settings
from hypothesis import strategies as st

from refquant import RefquantError
from refquant.formats.ggml import GGML_BLOCK_TABLE, ggml_block_formats
from refquant.kernels.ggml_dot import GGML_MATMUL_TYPES, matmul_ggml

SETTINGS = settings(max_examples=15, deadline=None)


def _weights(rng, t, n, nb):
    _, bs, ts = GGML_BLOCK_TABLE[t]
    wf = rng.standard_normal((n, nb * bs)).astype(np.float32)
    return ggml_block_formats()[t].quantize_blocks(wf.reshape(-1, bs)).reshape(n, nb * ts)


@SETTINGS
@given(st.sampled_from(GGML_MATMUL_TYPES), st.integers(1, 5), st.integers(1, 6),
       st.integers(1, 3), st.integers(0, 2**32 - 1))
def test_cpu_kernel_equals_reference_bit_for_bit(t, m, n, nb, seed):
    rng = np.random.default_rng(seed)
    _, bs, ts = GGML_BLOCK_TABLE[t]
    x = (rng.standard_normal((m, nb * bs)) * 10.0 ** rng.integers(-4, 5)).astype(np.float32)
    w = _weights(rng, t, n, nb)
    want = matmul_ggml(x, w, t, backend="numpy")
    got = matmul_ggml(x, w, t, backend="cpu")
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    # sanity: close to x @ dequantize(w).T; each activation moves by at most about
    # amax(block) / 254 (+ the fp16 scale's rounding), so the bound is per block
    wd = ggml_block_formats()[t].dequantize_blocks(w.reshape(-1, ts)).reshape(n, -1)
    exact = x.astype(np.float64) @ wd.astype(np.float64).T
    ab = (GGML_BLOCK_TABLE["q8_0" if bs == 32 else "q8_k"][1])
    amax = np.abs(x).reshape(m, -1, ab).max(axis=2).astype(np.float64)  # (m, blocks)
    wsum = np.abs(wd).reshape(n, -1, ab).sum(axis=2).astype(np.float64)  # (n, blocks)
    scale = np.abs(x).astype(np.float64) @ np.abs(wd).astype(np.float64).T
    assert (np.abs(want - exact) <= amax @ wsum.T / 100 + 1e-5 * scale + 1e-30).all()


def test_batch_dims_half_activations_and_three_d_weights():
    rng = np.random.default_rng(1)
    w = _weights(rng, "q4_0", 3, 2)
    x = rng.standard_normal((2, 2, 64)).astype(np.float16)
    got = matmul_ggml(x, w.reshape(3, 2, 18), "Q4_0", backend="cpu")
    assert got.shape == (2, 2, 3) and got.dtype == np.float32
    want = matmul_ggml(x.astype(np.float32).reshape(4, 64), w, "q4_0", backend="numpy")
    np.testing.assert_array_equal(got.reshape(4, 3), want)


def test_all_zero_activations_give_zero():
    w = _weights(np.random.default_rng(2), "q6_k", 2, 1)
    for backend in ("numpy", "cpu"):
        assert (matmul_ggml(np.zeros((1, 256), np.float32), w, "q6_k", backend=backend) == 0).all()


@pytest.mark.parametrize(
    "x, w, t, match",
    [
        (np.zeros((1, 32), np.float32), np.zeros((1, 18), np.uint8), "q5_0", "type_name must be"),
        (np.zeros((1, 40), np.float32), np.zeros((1, 18), np.uint8), "q4_0",
         "K = 40 is not a multiple of the q4_0 block size 32"),
        (np.zeros((1, 64), np.float32), np.zeros((1, 18), np.uint8), "q4_0",
         r"does not hold rows of K = 64 q4_0 weights: expected \(N, 36\)"),
        (np.zeros((1, 32), np.float32), np.zeros((1, 18), np.int8), "q4_0", "must be uint8"),
        (np.zeros((1, 32), np.float64), np.zeros((1, 18), np.uint8), "q4_0", "float32, float16"),
        (np.array([[np.nan] + [0.0] * 31], np.float32), np.zeros((1, 18), np.uint8), "q4_0",
         r"non-finite value nan at index \(0, 0\)"),
    ],
)
def test_bad_input_names_the_argument(x, w, t, match):
    with pytest.raises(RefquantError, match=match):
        matmul_ggml(x, w, t)


def test_kernel_bodies_run_as_python_without_the_jit():
    code = textwrap.dedent(
        """
        import numpy as np
        from refquant.formats.ggml import GGML_BLOCK_TABLE, ggml_block_formats
        from refquant.kernels.ggml_dot import matmul_ggml
        rng = np.random.default_rng(0)
        for t in ("q4_0", "q8_0", "q4_k", "q6_k"):
            _, bs, ts = GGML_BLOCK_TABLE[t]
            x = rng.standard_normal((2, bs)).astype(np.float32)
            w = ggml_block_formats()[t].quantize_blocks(
                rng.standard_normal((2, bs)).astype(np.float32))
            a = matmul_ggml(x, w, t, backend="cpu")
            b = matmul_ggml(x, w, t, backend="numpy")
            assert (a.view(np.uint32) == b.view(np.uint32)).all(), t
        print("ok")
        """
    )
    assert run_without_jit(code).strip() == "ok"


def test_warmup_compiles_every_type():
    from refquant.kernels import ggml_dot

    ggml_dot._warmup()
