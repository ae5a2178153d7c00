"""The int8 GEMM kernels against the NumPy reference, bit for bit, on every CPU path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refquant import RefquantError
from refquant.kernels.matmul import matmul_int, matmul_int_requant
from refquant.quant.integer import integer_matmul, max_int32_depth, requantize

int8_cpu = pytest.importorskip("refquant.kernels.cpu.int8")
PATHS = int8_cpu.available_paths()
DTYPES = (np.uint8, np.int8)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _operand(rng, shape, dtype, fill):
    info = np.iinfo(dtype)
    if fill == "random":
        return rng.integers(info.min, info.max + 1, shape).astype(dtype)
    value = {"min": info.min, "max": info.max, "zero": 0, "one": 1}[fill]
    return np.full(shape, value, dtype)


def _zero_point(rng, n, dtype, kind):
    info = np.iinfo(dtype)
    if kind == "zero":
        return 0
    if kind == "min":
        return int(info.min)
    if kind == "max":
        return int(info.max)
    if kind == "scalar":
        return int(rng.integers(info.min, info.max + 1))
    z = rng.integers(info.min, info.max + 1, n)
    z[0] = info.min if n > 1 else z[0]
    return z


FILLS = st.sampled_from(["random", "random", "min", "max", "zero", "one"])
ZPS = st.sampled_from(["zero", "min", "max", "scalar", "vector"])


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=20)
@given(st.integers(1, 19), st.integers(0, 150), st.integers(1, 70), st.sampled_from(DTYPES),
       st.sampled_from(DTYPES), FILLS, FILLS, ZPS, ZPS, st.integers(0, 2**32 - 1))
def test_every_path_equals_integer_matmul_on_drawn_shapes_values_and_zero_points(
        path, m, k, n, adt, bdt, afill, bfill, zak, zbk, seed):
    rng = np.random.default_rng(seed)
    a = _operand(rng, (m, k), adt, afill)
    b = _operand(rng, (k, n), bdt, bfill)
    za = _zero_point(rng, m, adt, zak)
    zb = _zero_point(rng, n, bdt, zbk)
    got = matmul_int(a, b, za, zb, backend="cpu", cpu_path=path)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, integer_matmul(a, b, za, zb, accumulate="int32_checked"))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("adt, bdt, av, bv, za, zb", [
    (np.int8, np.int8, -128, -128, 0, 0),       # (-128)(-128) = 16384 per step
    (np.uint8, np.int8, 255, -128, 0, 0),       # the most negative u8 x s8 product
    (np.uint8, np.uint8, 0, 0, 255, 255),       # (-255)(-255): zero points at the range ends
    (np.int8, np.uint8, 127, 0, -128, 255),     # (255)(-255)
])
def test_deepest_int32_safe_k_at_the_extreme_products_is_exact(path, adt, bdt, av, bv, za, zb):
    k = max_int32_depth(np.dtype(adt).name, np.dtype(bdt).name, za, zb)
    a = np.full((9, k), av, adt)  # 9 rows: an 8-row register tile and a single-row tail
    a[1, ::3] = 0 if np.dtype(adt).kind == "i" else 1  # rows with other sums
    a[8, 1::2] = 0 if np.dtype(adt).kind == "i" else 1
    b = np.full((k, 3), bv, bdt)
    want = integer_matmul(a, b, za, zb)
    assert abs(int(want[0, 0])) > 2**31 - 2**20  # the exact sum sits at the edge of int32
    np.testing.assert_array_equal(matmul_int(a, b, za, zb, backend="cpu", cpu_path=path), want)
    # and the row-streaming kernel that serves M <= 4
    np.testing.assert_array_equal(matmul_int(a[:2], b, za, zb, backend="cpu", cpu_path=path),
                                  want[:2])


def test_one_step_deeper_is_refused_and_int64_accumulation_is_exact():
    k = max_int32_depth("int8", "int8") + 1
    a = np.full((1, k), -128, np.int8)
    b = np.full((k, 2), -128, np.int8)
    with pytest.raises(RefquantError, match=f"K={k} is too deep.*deepest safe K is {k - 1}"):
        matmul_int(a, b, backend="cpu")
    got = matmul_int(a, b, accumulate="int64", backend="cpu")
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, np.full((1, 2), 16384 * k))


@pytest.mark.parametrize("ashape, bshape", [
    ((2, 3, 5, 7), (7, 4)), ((3, 5, 7), (3, 7, 4)), ((1, 5, 7), (3, 7, 4)), ((7,), (7, 4)),
    ((5, 7), (7,)), ((7,), (2, 7, 3)),
])
def test_batched_and_vector_operands_follow_np_matmul_shapes(ashape, bshape):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, ashape).astype(np.uint8)
    b = rng.integers(-128, 128, bshape).astype(np.int8)
    m = ashape[-2] if len(ashape) > 1 else 1
    za = rng.integers(0, 256, m) if len(ashape) > 1 else 7
    got = matmul_int(a, b, za, 3, backend="cpu")
    want = integer_matmul(a, b, za, 3)
    assert got.shape == want.shape == np.matmul(a.astype(np.int64), b.astype(np.int64)).shape
    np.testing.assert_array_equal(got, want)


def test_non_contiguous_operands_are_copied_and_give_the_same_result():
    rng = np.random.default_rng(2)
    a = rng.integers(-128, 128, (9, 40)).astype(np.int8)
    b = rng.integers(0, 256, (33, 20)).astype(np.uint8)
    got = matmul_int(a[:, ::2][:, :11].T[:, :9].T, b[:11, ::2], 1, 2, backend="cpu")
    want = integer_matmul(a[:, ::2][:, :11], b[:11, ::2], 1, 2)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=20)
@given(st.integers(1, 12), st.integers(1, 90), st.integers(1, 40), st.sampled_from(DTYPES),
       st.sampled_from(DTYPES), st.sampled_from(["int8", "uint8", "int16"]),
       st.sampled_from([("fixed_point", False, "float32", "half_even"),
                        ("fixed_point", True, "float32", "half_even"),
                        ("float", False, "float32", "half_even"),
                        ("float", False, "float64", "half_even"),
                        ("float", False, "float32", "half_away")]),
       st.booleans(), st.booleans(), st.integers(0, 2**32 - 1))
def test_fused_requantization_equals_requantize_of_integer_matmul_plus_bias(
        path, m, k, n, adt, bdt, dtype, variant, per_col, clamp, seed):
    method, single, precision, rounding = variant
    rng = np.random.default_rng(seed)
    a = _operand(rng, (m, k), adt, "random")
    b = _operand(rng, (k, n), bdt, "random")
    za = _zero_point(rng, m, adt, "vector")
    zb = _zero_point(rng, n, bdt, "scalar")
    bias = rng.integers(-2**20, 2**20, n)
    # multipliers over many binades, and exact ties (powers of two) now and then
    mult = np.exp2(rng.uniform(-24, 2, n if per_col else ()))
    if seed % 3 == 0:
        mult = np.exp2(np.round(np.log2(mult)))
    info = np.iinfo(dtype)
    z = int(rng.integers(info.min, info.max + 1))
    lo, hi = (int(info.min) + 10, int(info.max) - 20) if clamp else (None, None)
    kw = dict(dtype=dtype, method=method, single_rounding=single, precision=precision,
              rounding=rounding, activation_min=lo, activation_max=hi)
    got = matmul_int_requant(a, b, bias, mult, z, a_zero_point=za, b_zero_point=zb,
                             backend="cpu", cpu_path=path, **kw)
    acc = integer_matmul(a, b, za, zb) + bias
    want = requantize(acc, mult, z, axis=-1 if per_col else None, **kw)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_requant_batched_matches_the_reference_backend():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (2, 3, 70)).astype(np.uint8)
    b = rng.integers(-128, 128, (70, 50)).astype(np.int8)
    kw = dict(a_zero_point=128, b_zero_point=0, dtype="uint8")
    got = matmul_int_requant(a, b, np.arange(50), 1 / 3000, 100, backend="cpu", **kw)
    want = matmul_int_requant(a, b, np.arange(50), 1 / 3000, 100, backend="numpy", **kw)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.uint8 and got.shape == (2, 3, 50)


@pytest.mark.parametrize("call, match", [
    (lambda: matmul_int(np.ones((2, 3), np.int16), np.ones((3, 2), np.int8)), "a must be a uint8"),
    (lambda: matmul_int(np.ones((2, 3), np.int8), np.ones((3, 2), np.float32)), "b must be"),
    (lambda: matmul_int(np.ones((2, 3), np.int8), np.ones((4, 2), np.int8)), "K=3.*K=4"),
    (lambda: matmul_int(np.ones((2, 2, 3), np.int8), np.ones((3, 3, 2), np.int8)),
     "batch dimensions"),
    (lambda: matmul_int(np.ones((2, 3), np.int8), np.ones((3, 2), np.int8), [1, 2, 3]),
     r"a_zero_point has shape \(3,\); expected .* \(2,\)"),
    (lambda: matmul_int(np.ones((2, 3), np.int8), np.ones((3, 2), np.int8), 0, 2**30),
     r"K=3 is too deep.*b in \[1073741824, 1073741824\]"),
    (lambda: matmul_int(np.ones((2, 3), np.uint8), np.ones((3, 2), np.int8), 0.5), "integers"),
    (lambda: matmul_int(np.ones((2, 3), np.int8), np.ones((3, 2), np.int8), accumulate="int16"),
     "accumulate"),
    (lambda: matmul_int(np.ones((2, 3), np.int8), np.ones((3, 2), np.int8), backend="gpu"),
     "backend"),
    (lambda: matmul_int(np.ones((2, 3), np.int8), np.ones((3, 2), np.int8), backend="cpu",
                        cpu_path="sse9"), "cpu_path"),
    (lambda: matmul_int_requant(np.ones((2, 3), np.int8), np.ones((3, 2), np.int8),
                                np.ones(2, np.float32), 0.1), "bias must be an integer"),
    (lambda: matmul_int_requant(np.ones((2, 3), np.int8), np.ones((3, 2), np.int8),
                                [2**31, 0], 0.1), "bias must lie in int32"),
    (lambda: matmul_int_requant(np.ones((2, 3), np.int8), np.ones((3, 2), np.int8), None,
                                [0.1, 0.2, 0.3]), "multiplier has shape"),
    (lambda: matmul_int_requant(np.ones((2, 3), np.int8), np.ones((3, 2), np.int8), None,
                                -0.1, backend="cpu"), "multiplier must be finite and > 0"),
    (lambda: matmul_int_requant(np.ones((2, 3), np.int8), np.ones((3, 2), np.int8), None,
                                0.1, 300, backend="cpu"), "zero_point 300 is outside"),
    (lambda: matmul_int_requant(np.full((1, 131071), -128, np.int8),
                                np.full((131071, 1), -128, np.int8), [2**20], 0.1),
     "too deep.*bias in"),
])
def test_bad_input_raises_refquant_error_naming_the_argument(call, match):
    with pytest.raises(RefquantError, match=match):
        call()


def test_cuda_backend_where_none_is_available_is_refused(monkeypatch):
    from refquant.kernels import _backend

    monkeypatch.setattr(_backend, "_cuda_state", lambda: (False, "no CUDA GPU is available"))
    with pytest.raises(RefquantError, match="backend='cuda'.*no CUDA GPU"):
        matmul_int(np.ones((2, 3), np.int8), np.ones((3, 2), np.int8), backend="cuda")


def test_refquant_backend_numpy_bypasses_the_kernel_and_its_path(monkeypatch):
    a, b = np.ones((2, 3), np.int8), np.ones((3, 2), np.int8)
    monkeypatch.setenv("REFQUANT_CPU_PATH", "no-such-path")
    with pytest.raises(RefquantError, match="cpu_path"):
        matmul_int(a, b, backend="cpu")
    monkeypatch.setenv("REFQUANT_BACKEND", "numpy")
    np.testing.assert_array_equal(matmul_int(a, b, backend="cpu"), np.full((2, 2), 3))


def _run_python(code, env_extra):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               **env_extra)
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_kernel_bodies_run_as_python_under_numba_disable_jit():
    out = _run_python("""
        import numpy as np
        from refquant.kernels.cpu import int8
        from refquant.kernels.matmul import matmul_int, matmul_int_requant
        from refquant.quant.integer import integer_matmul, requantize
        assert int8.available_paths() == ("portable",)
        rng = np.random.default_rng(0)
        for adt, bdt, m in ((np.uint8, np.int8, 3), (np.int8, np.int8, 6),
                            (np.uint8, np.uint8, 5), (np.int8, np.uint8, 2)):
            if True:  # m <= 4: the row-streaming kernel; m > 4: the packed one
                a = rng.integers(-128 if adt == np.int8 else 0, 128 if adt == np.int8 else 256,
                                 (m, 9)).astype(adt)
                b = rng.integers(-128 if bdt == np.int8 else 0, 128 if bdt == np.int8 else 256,
                                 (9, 17)).astype(bdt)
                za, zb = rng.integers(-100, 100, m), 5
                np.testing.assert_array_equal(matmul_int(a, b, za, zb, backend="cpu"),
                                              integer_matmul(a, b, za, zb))
                for method, single in (("fixed_point", False), ("fixed_point", True),
                                       ("float", False)):
                    got = matmul_int_requant(a, b, np.arange(17), 0.01, 3, a_zero_point=za,
                                             b_zero_point=zb, method=method,
                                             single_rounding=single, backend="cpu")
                    want = requantize(integer_matmul(a, b, za, zb) + np.arange(17), 0.01, 3,
                                      method=method, single_rounding=single)
                    np.testing.assert_array_equal(got, want)
        print("ok")
    """, {"NUMBA_DISABLE_JIT": "1"})
    assert out.strip() == "ok"


def test_a_second_process_loads_the_kernels_from_the_disk_cache():
    code = """
        import json
        import numpy as np
        import refquant
        import sys
        assert "numba" not in sys.modules  # nothing compiles or even loads at import
        from refquant.kernels import matmul
        from refquant.kernels.cpu import int8
        matmul.matmul_int(np.ones((9, 5), np.uint8), np.ones((5, 3), np.int8), backend="cpu",
                          cpu_path="portable")
        stats = int8._gemm_portable.stats
        print(json.dumps([sum(stats.cache_hits.values()), sum(stats.cache_misses.values())]))
    """
    _run_python(code, {})  # writes the cache if this checkout has none yet
    hits, misses = json.loads(_run_python(code, {}).strip().splitlines()[-1])
    assert (hits, misses) == (1, 0)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("m, k, n", [(0, 3, 2), (2, 0, 3), (2, 3, 0), (0, 0, 0), (6, 0, 40)])
def test_empty_dimensions_give_the_reference_shape_and_values(backend, m, k, n):
    a = np.ones((m, k), np.int8)
    b = np.full((k, n), 9, np.uint8)
    got = matmul_int(a, b, 1, 2, backend=backend)
    assert got.shape == (m, n) and got.dtype == np.int32
    np.testing.assert_array_equal(got, integer_matmul(a, b, 1, 2))
    q = matmul_int_requant(a, b, np.arange(n), 0.5, 1, backend=backend)
    want = requantize(integer_matmul(a, b, 1, 2) + np.arange(n), 0.5, 1)
    assert q.dtype == np.int8
    np.testing.assert_array_equal(q, want)
