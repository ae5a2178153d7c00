"""The Numba IQ3 kernels (refquant.kernels.cpu.ggml_iq) against the NumPy reference, bit for bit.

The generic kernel tests (tests/kernels/test_ggml_quant.py) cover quantize_blocks and any-bytes
dequantization for IQ3_XXS / IQ3_S as for every type with a kernel; here: the imatrix path, the
inputs specific to IQ3 (sub-blocks under 1e-8, all-zero sub-blocks, overflow where ggml
aborts), the kernels as plain Python (NUMBA_DISABLE_JIT=1) and their machine code (no FMA).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refquant import RefquantError
from refquant.formats import get_format

IQ3 = ["iq3_xxs", "iq3_s"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@st.composite
def iq3_blocks(draw):
    n = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["normal", "grid", "tiny", "subzero", "equal", "scaled", "huge"]))
    x = rng.standard_normal((n, 256))
    if kind == "grid":
        x = rng.integers(-16, 17, (n, 256)) * draw(st.sampled_from([0.0625, 0.5, 3.0]))
    elif kind == "tiny":
        x = x * draw(st.sampled_from([1e-9, 1e-8, 2e-8, 1e-30]))
    elif kind == "subzero":
        for i in draw(st.lists(st.integers(0, 7), max_size=5)):
            x[:, 32 * i : 32 * i + 32] = 0
    elif kind == "equal":
        x = np.full((n, 256), draw(st.floats(-1e4, 1e4, width=32)))
    elif kind == "scaled":
        x = x * 10.0 ** draw(st.integers(-38, 14))
    elif kind == "huge":
        x = x * 1e30
    x = np.asarray(x, np.float32)
    zeros = np.flatnonzero(x == 0)
    if zeros.size:
        x.reshape(-1)[zeros[draw(hnp.arrays(np.bool_, zeros.size))]] = -0.0
    return x


def _same_or_both_refuse(f, x, qw):
    try:
        ref = f.quantize_blocks_weighted(x, qw, backend="numpy")
    except RefquantError as e:
        assert "ggml aborts" in str(e)
        with pytest.raises(RefquantError, match="ggml aborts"):
            f.quantize_blocks_weighted(x, qw, backend="cpu")
        return
    np.testing.assert_array_equal(f.quantize_blocks_weighted(x, qw, backend="cpu"), ref)


@pytest.mark.parametrize("name", IQ3)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_cpu_kernel_equals_the_numpy_reference_with_and_without_imatrix(name, data):
    f = get_format(name)
    x = data.draw(iq3_blocks())
    qw = None
    if data.draw(st.booleans()):
        el = st.one_of(st.just(0.0), st.just(1.0), st.floats(float(np.float32(1e-6)), 1e6, width=32))
        qw = data.draw(hnp.arrays(np.float32, 256, elements=el))
    _same_or_both_refuse(f, x, qw)


@pytest.mark.parametrize("name", IQ3)
def test_cpu_kernel_on_a_bigger_sample_and_per_block_imatrix(name):
    f = get_format(name)
    rng = np.random.default_rng(8)
    x = (rng.standard_t(3, (300, 256)) * 10.0 ** rng.uniform(-4, 2, (300, 1))).astype(np.float32)
    x[::7, 64:96] = 0
    x[::11, :32] = np.float32(3e-9)
    qw = rng.gamma(0.5, size=(300, 256)).astype(np.float32)
    _same_or_both_refuse(f, x, None)
    _same_or_both_refuse(f, x, qw)
    np.testing.assert_array_equal(f.quantize_blocks(x, backend="cpu"), f.quantize_blocks(x, backend="numpy"))


def test_iq3_kernels_have_no_contracted_fma():
    import numba

    from refquant.kernels.cpu import ggml_iq as K

    get_format("iq3_s")._kernels()  # tables
    grid, kmap, nbrs, counts, gridv, ksigns = K.TABLES["iq3_s"]
    x = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)
    out = np.empty((2, 110), np.uint8)
    status = np.zeros(2, np.int64)
    for fn, args in (
        (K._quantize_iq3, (x, x, True, out, grid, kmap, nbrs, counts, False, status)),
        (K._dequantize_iq3, (out, np.empty((2, 256), np.float32), K._FP16_TABLE, gridv, ksigns, False)),
    ):
        fresh = numba.njit(error_model="numpy", parallel=True)(fn.py_func)
        fresh(*args)
        asm = "\n".join(fresh.inspect_asm().values())
        assert re.search(r"\bv?mulss\b|\bv?mulps\b", asm), "no float multiply: wrong code inspected"
        assert not re.search(r"vf(n)?m(add|sub)", asm), f"{fn.__name__}: contracted FMA"


def test_iq3_kernels_match_the_reference_as_plain_python():
    code = """
        import numpy as np
        from refquant.formats import get_format
        rng = np.random.default_rng(4)
        for name in ("iq3_xxs", "iq3_s"):
            f = get_format(name)
            x = rng.standard_normal((2, 256)).astype(np.float32)
            x[1, 32:64] = 0.0
            x[1, 100:132] = np.float32(2e-9)
            qw = rng.random(256).astype(np.float32)
            for w in (None, qw):
                ref = f.quantize_blocks_weighted(x, w, backend="numpy")
                assert np.array_equal(f.quantize_blocks_weighted(x, w, backend="cpu"), ref), name
                a = f.dequantize_blocks(ref, backend="cpu").view(np.uint32)
                assert np.array_equal(a, f.dequantize_blocks(ref, backend="numpy").view(np.uint32))
            try:
                f.quantize_blocks(x * np.float32(1e30), backend="cpu")
                raise SystemExit("no error on overflow")
            except Exception as e:
                assert "ggml aborts" in str(e), e
        print("ok")
    """
    env = dict(os.environ, NUMBA_DISABLE_JIT="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))  # fmt: skip
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]
