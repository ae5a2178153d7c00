"""ggml's imatrix quantizers: the Numba kernels (refquant.kernels.cpu.ggml_weighted) give the
bytes of the NumPy reference (refquant.formats.ggml_weighted) bit for bit.

Both are pinned against libggml's quantize_<type>(..., quant_weights) in
tests/peers/test_ggml_imatrix.py.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from helpers import run_without_jit
from hypothesis import given, settings
from hypothesis import strategies as st

from refquant import RefquantError
from refquant.formats.ggml import GGML_BLOCK_TABLE
from refquant.formats.ggml_weighted import WEIGHTED_TYPES, quantize_rows_weighted

F32_MAX = np.finfo(np.float32).max
KINDS = ["normal", "grid", "zero", "equal", "sparse", "huge", "subnormal", "neg_zero"]


def _block(t):
    return GGML_BLOCK_TABLE[t][1]


@st.composite
def case(draw, t):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    bs = _block(t)
    rows, nb = draw(st.integers(1, 3)), draw(st.integers(1, 2 if bs == 256 else 10))
    cols = nb * bs
    kind = draw(st.sampled_from(KINDS))
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    if kind == "grid":
        x = rng.integers(-6, 7, (rows, cols)).astype(np.float32) * np.float32(0.5)
    elif kind in ("zero", "neg_zero"):
        x = np.full((rows, cols), -0.0 if kind == "neg_zero" else 0.0, np.float32)
    elif kind == "equal":
        x[:] = np.float32(rng.uniform(-100, 100))
    elif kind == "sparse":
        x = np.where(rng.random((rows, cols)) < 0.02, x, np.float32(0)).astype(np.float32)
    elif kind == "huge":
        with np.errstate(over="ignore"):
            x = np.clip(x * np.float32(1e37), -F32_MAX, F32_MAX).astype(np.float32)
    elif kind == "subnormal":
        x[rng.random((rows, cols)) < 0.5] *= np.float32(1e-40)
    w = (rng.uniform(0, 4, cols) ** 2).astype(np.float32)
    wkind = draw(st.sampled_from(["plain", "some_zero", "all_zero", "grid", "huge"]))
    if wkind == "some_zero":
        w[rng.random(cols) < 0.3] = 0
    elif wkind == "all_zero":
        w[:] = 0
    elif wkind == "grid":
        w = rng.integers(0, 3, cols).astype(np.float32)
    elif wkind == "huge":
        w *= np.float32(1e35)
    return x, w


@pytest.mark.parametrize("t", WEIGHTED_TYPES)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_weighted_kernel_is_bit_exact_with_the_numpy_reference(t, data):
    x, w = data.draw(case(t))
    ref = quantize_rows_weighted(t, x, w, backend="numpy")
    got = quantize_rows_weighted(t, x, w, backend="cpu")
    bad = np.flatnonzero(np.any(got != ref, axis=1))
    assert bad.size == 0, f"{t}: rows {bad} differ between the kernel and the reference"


@pytest.mark.parametrize("t", WEIGHTED_TYPES)
def test_a_zero_imatrix_and_a_zero_row_give_what_ggml_writes(t):
    # all-zero weights: every search keeps its first candidate; an all-zero row: d = 0,
    # codes 0 (make_qx_quants / make_qkx3_quants write L = 0), never the _ref's offset codes
    bs = _block(t)
    x = np.zeros((1, bs), np.float32)
    for backend in ("numpy", "cpu"):
        raw = quantize_rows_weighted(t, x, np.ones(bs, np.float32), backend=backend)
        assert not raw.any(), (t, backend, raw)
    x = np.random.default_rng(3).standard_normal((2, bs)).astype(np.float32)
    w = np.zeros(bs, np.float32)
    np.testing.assert_array_equal(quantize_rows_weighted(t, x, w, backend="cpu"),
                                  quantize_rows_weighted(t, x, w, backend="numpy"))


def test_bad_arguments_are_refused_naming_them():
    with pytest.raises(RefquantError, match="name"):
        quantize_rows_weighted("q8_0", np.ones((1, 32), np.float32), np.ones(32, np.float32))
    with pytest.raises(RefquantError, match="quant_weights"):
        quantize_rows_weighted("q4_0", np.ones((1, 32), np.float32), np.ones(16, np.float32))
    with pytest.raises(RefquantError, match="256-weight blocks"):
        quantize_rows_weighted("q4_k", np.ones((1, 32), np.float32), np.ones(32, np.float32))


@pytest.mark.parametrize("t", ["q4_0", "q4_1", "q3_k", "q4_k", "q6_k", "q2_k"])
def test_weighted_kernels_have_no_contracted_fma(t):
    # libggml is built without FMA contraction: a fused multiply-add would round once
    # where C rounds twice
    import numba

    from refquant.kernels.cpu import ggml_weighted as kw

    bs = _block(t)
    x = np.ones((2, bs if bs == 256 else 64), np.float32)
    qw = np.ones(x.shape[1], np.float32)
    if bs == 256:
        kern, tsz = kw._K_KERNELS[t]
        args = (x, qw.reshape(-1, 256), np.empty((2, tsz), np.uint8), kw._FP16_TABLE)
    else:
        kern = kw._quantize_q4_0_q5_0_w if t == "q4_0" else kw._quantize_q4_1_q5_1_w
        args = (x, qw, np.empty((2, 2 * GGML_BLOCK_TABLE[t][2]), np.uint8), 8 if t == "q4_0" else 15)
    fresh = numba.njit(error_model="numpy", parallel=True)(kern.py_func)
    fresh(*args)
    asm = "\n".join(fresh.inspect_asm().values())
    assert re.search(r"\bv?mulss\b|\bv?mulps\b", asm), "no float multiply found: wrong code inspected"
    assert not re.search(r"vf(n)?m(add|sub)", asm), f"{t}: contracted FMA in the weighted kernel"


def test_weighted_kernel_bodies_match_the_reference_as_plain_python():
    code = f"""
import numpy as np
from refquant.formats.ggml_weighted import quantize_rows_weighted
rng = np.random.default_rng(9)
for t in {list(WEIGHTED_TYPES)!r}:
    x = rng.standard_normal((2, 256)).astype(np.float32)
    x[1, :40] = 0.0
    x[1, 40:80] *= np.float32(1e-39)
    w = (rng.uniform(0, 3, 256) ** 2).astype(np.float32)
    w[::7] = 0
    ref = quantize_rows_weighted(t, x, w, backend="numpy")
    got = quantize_rows_weighted(t, x, w, backend="cpu")
    assert np.array_equal(got, ref), t
print("ok")
"""
    assert run_without_jit(code, timeout=600).strip() == "ok"
