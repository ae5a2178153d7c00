"""The NVFP4 quantize kernel (refquant.kernels.cpu.nvfp4) against the NumPy reference, bit for bit.

Every convention (compressed-tensors, torchao, ModelOpt), every input dtype the reference
takes (float32, bfloat16, float16: compressed-tensors rounds ``amax_b / 6`` to it), drawn
global scales: exact e2m1 ties, all-zero blocks, scales that underflow e4m3, ±max, -0.0.
"""

import ml_dtypes
import numpy as np
import pytest
from helpers import run_without_jit
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refquant import RefquantError
from refquant.formats import nvfp4
from refquant.formats.nvfp4 import NVFP4_CONVENTIONS, quantize_nvfp4

F32_MAX = float(np.finfo(np.float32).max)
DTYPES = [np.float32, ml_dtypes.bfloat16, np.float16]
# e2m1 ties and grid points (times a power of two below), e4m3 limits, tiny and huge values
EDGE = [0.0, -0.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, -6.0, 448.0, -448.0, 2688.0, 1e-30,
        -1e-38, 1e-45, 65504.0, 3e38, -F32_MAX, F32_MAX]


def _same(a, b):
    for u, v in zip(a, b, strict=True):
        u, v = np.asarray(u), np.asarray(v)
        assert u.dtype == v.dtype and u.shape == v.shape
        np.testing.assert_array_equal(u.view(f"u{u.dtype.itemsize}"), v.view(f"u{v.dtype.itemsize}"))


@st.composite
def tensors(draw):
    dt = draw(st.sampled_from(DTYPES))
    rows, blocks = draw(st.integers(0, 4)), draw(st.integers(0, 3))
    kind = draw(st.sampled_from(["any", "edge", "grid", "zeros", "tiny"]))
    if kind == "any":
        x = draw(hnp.arrays(np.float32, (rows, 16 * blocks),
                            elements=st.floats(width=32, allow_nan=False, allow_infinity=False)))
    elif kind == "edge":
        x = draw(hnp.arrays(np.float32, (rows, 16 * blocks), elements=st.sampled_from(EDGE)))
    elif kind == "grid":  # multiples of 0.25 * 2^k: exact ties once scaled
        k = draw(st.integers(-20, 20))
        x = draw(hnp.arrays(np.float32, (rows, 16 * blocks), elements=st.integers(-24, 24))) * np.float32(0.25 * 2.0**k)
    elif kind == "zeros":
        x = np.zeros((rows, 16 * blocks), np.float32)
        if x.size:
            x[..., :16] = -0.0
            x.reshape(-1)[-1] = draw(st.sampled_from([1.0, 0.0, -3.0, 1e-20]))
    else:  # block scales that underflow e4m3 beside a big block
        x = draw(hnp.arrays(np.float32, (rows, 16 * blocks),
                            elements=st.floats(-(0.5**20), 0.5**20, width=32)))
        if x.size:
            x.reshape(-1)[0] = draw(st.sampled_from([1.0, 1e4, -2688.0, 3e38]))
    with np.errstate(over="ignore"):
        x = x.astype(dt)
    if not np.all(np.isfinite(x.astype(np.float32))):  # float16 / bfloat16 overflow
        x = np.nan_to_num(x.astype(np.float32), posinf=1.0, neginf=-1.0).astype(dt)
    return x


@settings(max_examples=60, deadline=None)
@given(x=tensors(), conv=st.sampled_from(NVFP4_CONVENTIONS),
       gs=st.one_of(st.none(), st.sampled_from([1.0, 0.5, 1e-3, 1e-30, 1e-38, 3e-39, 2688.0, 1e30, 3e38]),
                    st.floats(0.5**99, 2.0**99, width=32)))
def test_cpu_quantize_is_bit_exact_with_the_numpy_reference(x, conv, gs):
    def run(backend):
        try:
            return quantize_nvfp4(x, global_scale=gs, convention=conv, backend=backend)
        except RefquantError as e:
            return str(e)

    got, want = run("cpu"), run("numpy")
    if isinstance(want, str):
        assert got == want
    else:
        _same(got, want)


@pytest.mark.parametrize("conv", NVFP4_CONVENTIONS)
def test_cpu_kernel_on_a_bigger_random_tensor_and_auto_takes_it(conv, monkeypatch):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((256, 512)) * rng.choice([1e-9, 1e-3, 1.0, 1e3], (256, 1))).astype(np.float32)
    x[::7, :16] = 0
    _same(quantize_nvfp4(x, convention=conv, backend="cpu"), quantize_nvfp4(x, convention=conv, backend="numpy"))
    calls = []
    real = nvfp4._quantize_cpu
    monkeypatch.setattr(nvfp4, "_quantize_cpu", lambda *a: calls.append(1) or real(*a))
    quantize_nvfp4(x, convention=conv)  # 131072 elements: auto runs the kernel
    quantize_nvfp4(x[:8], convention=conv)  # below the threshold: numpy
    assert calls == [1]
    monkeypatch.setenv("REFQUANT_BACKEND", "numpy")
    quantize_nvfp4(x, convention=conv)
    assert calls == [1]


def test_torchao_nan_codes_are_refused_on_both_backends():
    # 1/gs finite but 64/gs not: torchao's reciprocal overflows, 0 * Inf is NaN
    x = np.zeros((1, 16), np.float32)
    for backend in ("numpy", "cpu"):
        with pytest.raises(RefquantError):
            quantize_nvfp4(x, global_scale=1e-37, convention="torchao", backend=backend)


def test_kernel_body_matches_the_reference_as_plain_python():
    out = run_without_jit(
        "import numpy as np, ml_dtypes\n"
        "from refquant.formats.nvfp4 import quantize_nvfp4, dequantize_nvfp4, NVFP4_CONVENTIONS\n"
        "rng = np.random.default_rng(3)\n"
        "x = (rng.standard_normal((3, 32)) * [[1e-6], [1.0], [1e4]]).astype(np.float32)\n"
        "x[0, :16] = -0.0; x[1, 0] = 0.75; x[1, 1] = -2.5; x[2, 5] = 3e4\n"
        "for dt in (np.float32, ml_dtypes.bfloat16, np.float16):\n"
        "    for conv in NVFP4_CONVENTIONS:\n"
        "        a = quantize_nvfp4(x.astype(dt), convention=conv, backend='cpu')\n"
        "        b = quantize_nvfp4(x.astype(dt), convention=conv, backend='numpy')\n"
        "        assert all(np.array_equal(u, v) for u, v in zip(a, b)), (dt, conv)\n"
        "        c, s = np.arange(32, dtype=np.uint8).reshape(2, 16) % 16, np.uint8([[0x38], [0x7F]])\n"
        "        d1 = dequantize_nvfp4(c, s, 0.37, convention=conv, backend='cpu')\n"
        "        d2 = dequantize_nvfp4(c, s, 0.37, convention=conv, backend='numpy')\n"
        "        assert np.array_equal(d1.view(np.uint32), d2.view(np.uint32)), conv\n"
        "print('ok')\n")
    assert out.strip() == "ok"


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("conv", NVFP4_CONVENTIONS)
def test_every_e2m1_tie_and_signed_zero_with_unit_scales(conv, dt):
    # amax 6 and global scale 1: every convention's block scale is 1, the scaled values are x
    grid = [6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 0.2]
    x = np.array([grid, [-v for v in grid]], np.float32).astype(dt)
    x[1, 8] = -0.0
    got = quantize_nvfp4(x, global_scale=1.0, convention=conv, backend="cpu")
    _same(got, quantize_nvfp4(x, global_scale=1.0, convention=conv, backend="numpy"))
    assert len(set(got[0][0].tolist())) == 8  # the ties did not all round alike


@pytest.mark.parametrize("work", ["bfloat16", "float16"])
def test_the_work_dtype_rounding_is_numpys_cast(work):
    from refquant.kernels.cpu.nvfp4 import WORK_DTYPES, _round_work

    dt = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16}[work]
    rng = np.random.default_rng(5)
    bits = rng.integers(0, 1 << 32, 3000, dtype=np.uint64).astype(np.uint32)
    v = bits.view(np.float32)
    v = np.concatenate([v[np.isfinite(v)], np.float32([65504, 65519.99, 65520, 6e-8, 3e-8, 2.9e-8, 0.0, -0.0])])
    with np.errstate(over="ignore"):
        want = v.astype(dt).astype(np.float32)
    got = np.array([_round_work(np.float32(t), WORK_DTYPES[work]) for t in v], np.float32)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_the_kernel_has_no_contracted_fma():
    # the reference rounds every float32 product and quotient on its own (numpy): a fused
    # multiply-add would round once and could change a code
    import re

    import numba

    from refquant.formats.floats import _params, float_format
    from refquant.kernels.cpu import nvfp4 as kn

    fresh = numba.njit(error_model="numpy", parallel=True)(kn._quantize.py_func)  # cached code hides its asm
    x = np.ones((2, 16), np.float32)
    fresh(x, np.float32(1), 0, 1, _params(float_format("float8_e4m3fn")), np.empty((2, 16), np.uint8),
          np.empty(2, np.uint8))
    asm = "\n".join(fresh.inspect_asm().values())
    assert re.search(r"\bv?mulss\b|\bv?mulps\b|\bv?divss\b", asm), "no float arithmetic found: wrong code"
    assert not re.search(r"vf(n)?m(add|sub)", asm), "contracted FMA in the NVFP4 kernel"


@settings(max_examples=40, deadline=None)
@given(data=st.data(), conv=st.sampled_from(NVFP4_CONVENTIONS),
       dtype=st.sampled_from(["float32", "bfloat16", "float16"]),
       gs=st.sampled_from([1.0, 2688.0, 1e-3, 3e-39, 0.0, -2.0, np.inf, 3e38]))
def test_cpu_dequantize_is_bit_exact_on_any_codes_and_scale_bytes(data, conv, dtype, gs):
    rows, blocks = data.draw(st.integers(0, 3)), data.draw(st.integers(0, 3))
    codes = data.draw(hnp.arrays(np.uint8, (rows, 16 * blocks), elements=st.integers(0, 15)))
    scales = data.draw(hnp.arrays(np.uint8, (rows, blocks)))  # NaN scales 0x7F / 0xFF included
    got = nvfp4.dequantize_nvfp4(codes, scales, gs, convention=conv, dtype=dtype, backend="cpu")
    want = nvfp4.dequantize_nvfp4(codes, scales, gs, convention=conv, dtype=dtype, backend="numpy")
    _same([got], [want])


@pytest.mark.parametrize("conv", NVFP4_CONVENTIONS)
def test_cpu_dequantize_every_code_and_scale(conv):
    codes = np.tile(np.arange(16, dtype=np.uint8), (256, 1))
    scales = np.arange(256, dtype=np.uint8).reshape(256, 1)
    got = nvfp4.dequantize_nvfp4(codes, scales, 0.37, convention=conv, backend="cpu")
    _same([got], [nvfp4.dequantize_nvfp4(codes, scales, 0.37, convention=conv, backend="numpy")])
    assert np.signbit(got[56, 8]) == (conv != "modelopt")  # code 8: -0.0, but +0.0 under ModelOpt
