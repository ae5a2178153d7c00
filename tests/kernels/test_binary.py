"""Bit-packed binary / ternary matmuls: every backend and CPU path equals the NumPy reference."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from helpers import run_without_jit
from hypothesis import given, settings
from hypothesis import strategies as st

from refquant import RefquantError
from refquant.kernels.binary import matmul_binary, matmul_ternary, pack_signs, pack_ternary
from refquant.kernels.cpu._features import has_feature
from refquant.quant import bitmatmul

BACKENDS = [("numpy", None), ("cpu", "popcnt"), ("cpu", "portable")]
if has_feature("avx512f", "avx512vpopcntdq"):  # each path this CPU can run
    BACKENDS.append(("cpu", "avx512"))
SETTINGS = settings(max_examples=25, deadline=None)


def _pm1(rng, shape):
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)


def test_sign_bits_are_least_significant_first_and_zero_packs_as_plus_one():
    # elements 1, -1, 0, -0.0, -2 -> bits 0 1 0 0 1 (bit 0 first): 0b10010
    w = pack_signs(np.array([1.0, -1.0, 0.0, -0.0, -2.0]))
    assert w.dtype == np.uint64 and w.tolist() == [0b10010]
    assert pack_signs([-np.inf, np.inf], word="uint8").tolist() == [1]


def test_uint64_words_hold_the_bytes_of_lce_uint32_words():
    x = _pm1(np.random.default_rng(1), (3, 100))
    w32 = pack_signs(x, word="uint32")
    w64 = pack_signs(x, word="uint64")
    b32 = w32.astype("<u4").view(np.uint8).reshape(3, -1)
    b64 = w64.astype("<u8").view(np.uint8).reshape(3, -1)
    np.testing.assert_array_equal(b64[:, : b32.shape[1]], b32)
    assert not b64[:, b32.shape[1]:].any()


def test_nan_is_refused_with_its_index():
    with pytest.raises(RefquantError, match=r"NaN .*\(0, 2\)"):
        pack_signs(np.array([[1.0, 2.0, np.nan]]))


@SETTINGS
@given(st.integers(1, 9), st.integers(1, 9), st.integers(0, 200), st.integers(0, 2**32 - 1))
def test_binary_matmul_equals_float_matmul_of_signs_on_every_backend(m, n, k, seed):
    rng = np.random.default_rng(seed)
    a, b = _pm1(rng, (m, k)), _pm1(rng, (n, k))
    want = (a.astype(np.float64) @ b.T.astype(np.float64)).astype(np.int32)
    pa, pb = pack_signs(a), pack_signs(b)
    np.testing.assert_array_equal(bitmatmul.matmul_binary(pa, pb, k), want)
    for backend, path in BACKENDS:
        got = matmul_binary(pa, pb, k, backend=backend, path=path)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, want, err_msg=f"{backend}/{path}")


@SETTINGS
@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 150), st.sampled_from(["uint8", "uint32"]),
       st.integers(0, 2**32 - 1))
def test_narrow_words_give_the_same_products_as_uint64(m, n, k, word, seed):
    rng = np.random.default_rng(seed)
    a, b = _pm1(rng, (m, k)), _pm1(rng, (n, k))
    want = matmul_binary(pack_signs(a), pack_signs(b), k, backend="numpy")
    for backend, path in BACKENDS:
        got = matmul_binary(pack_signs(a, word=word), pack_signs(b, word=word), k,
                            backend=backend, path=path)
        np.testing.assert_array_equal(got, want)


def test_all_equal_and_all_opposite_rows_reach_plus_and_minus_k():
    k = 4096 + 7
    ones = np.ones((5, k), np.float32)
    for backend, path in BACKENDS:
        r = matmul_binary(pack_signs(ones), pack_signs(np.vstack([ones, -ones])), k,
                          backend=backend, path=path)
        assert (r[:, :5] == k).all() and (r[:, 5:] == -k).all()


def test_alpha_per_row_and_column_scales_in_float32_in_the_stated_order():
    rng = np.random.default_rng(2)
    a, b = _pm1(rng, (5, 70)), _pm1(rng, (6, 70))
    acc = matmul_binary(pack_signs(a), pack_signs(b), 70, backend="numpy")
    row = rng.random(5).astype(np.float32)
    col = rng.random(6).astype(np.float32)
    for backend, path in BACKENDS:
        pa, pb = pack_signs(a), pack_signs(b)
        got = matmul_binary(pa, pb, 70, alpha=(row, col), backend=backend, path=path)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, (acc.astype(np.float32) * row[:, None]) * col[None, :])
        got = matmul_binary(pa, pb, 70, alpha=col, backend=backend, path=path)
        np.testing.assert_array_equal(got, acc.astype(np.float32) * col)
    with pytest.raises(RefquantError, match="alpha of shape"):
        matmul_binary(pack_signs(a), pack_signs(b), 70, alpha=np.ones(5))


def _ternary(rng, shape):
    return rng.integers(-1, 2, shape).astype(np.int8)


@SETTINGS
@given(st.integers(1, 9), st.integers(1, 9), st.integers(0, 200), st.integers(0, 2**32 - 1))
def test_ternary_matmul_equals_integer_matmul_on_every_backend(m, n, k, seed):
    rng = np.random.default_rng(seed)
    t = _ternary(rng, (n, k))
    planes = pack_ternary(t)
    np.testing.assert_array_equal(bitmatmul.ternary_codes(*planes, k), t)
    a = _pm1(rng, (m, k))
    x = rng.integers(-128, 128, (m, k)).astype(np.int8)
    want_a = (a.astype(np.int64) @ t.T.astype(np.int64)).astype(np.int32)
    want_x = (x.astype(np.int64) @ t.T.astype(np.int64)).astype(np.int32)
    for backend, path in BACKENDS:
        np.testing.assert_array_equal(
            matmul_ternary(pack_signs(a), planes, k, backend=backend, path=path), want_a)
        np.testing.assert_array_equal(
            matmul_ternary(x, planes, k, backend=backend, path=path), want_x)


def test_ternary_int8_extremes_sum_exactly():
    k = 3000
    x = np.full((2, k), -128, np.int8)
    t = np.vstack([np.full(k, -1, np.int8), np.ones(k, np.int8), np.zeros(k, np.int8)])
    for backend, path in BACKENDS:
        r = matmul_ternary(x, pack_ternary(t), k, backend=backend, path=path)
        np.testing.assert_array_equal(r, [[128 * k, -128 * k, 0]] * 2)


def test_non_contiguous_operands_are_copied():
    rng = np.random.default_rng(3)
    a, b = _pm1(rng, (8, 130)), _pm1(rng, (8, 130))
    pa, pb = pack_signs(a), pack_signs(b)
    for backend, path in BACKENDS:
        np.testing.assert_array_equal(
            matmul_binary(pa[::2], pb[::2], 130, backend=backend, path=path),
            matmul_binary(pa[::2].copy(), pb[::2].copy(), 130, backend="numpy"))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: matmul_binary(np.zeros((2, 2), np.int64), np.zeros((2, 2), np.uint64), 128),
         "a_packed must be packed unsigned words"),
        (lambda: matmul_binary(np.zeros((2, 2), np.uint64), np.zeros((2, 3), np.uint64), 128),
         r"b_packed has 3 uint64 words per row; k = 128 needs 2"),
        (lambda: matmul_binary(np.zeros((2, 2), np.uint64), np.zeros((2, 2), np.uint64), 100),
         None),
        (lambda: matmul_binary(np.array([[0, 1 << 40]], np.uint64), np.zeros((1, 2), np.uint64), 100),
         "padding bits set beyond k = 100"),
        (lambda: matmul_binary(np.zeros((2, 2), np.uint64), np.zeros((2, 2), np.uint64), -1),
         "k must be >= 0"),
        (lambda: matmul_binary(np.zeros((2, 2), np.uint64), np.zeros((2, 2), np.uint64), 128,
                               backend="cuda"), "backend=.cuda. was asked for"),
        (lambda: matmul_binary(np.zeros(2, np.uint64), np.zeros((2, 2), np.uint64), 128),
         "must be 2-D"),
        (lambda: matmul_binary(np.zeros((1, 1), np.uint64), np.zeros((1, 1), np.uint64), 1,
                               path="avx9"), "path must be one of"),
        (lambda: pack_ternary([0, 2, -1]), r"only -1, 0 and \+1; got 2"),
        (lambda: pack_signs([1, 2], word="int64"), "word must be one of"),
        (lambda: matmul_ternary(np.zeros((1, 3), np.int8), pack_ternary(np.zeros((1, 4))), 4),
         r"int8 x must have shape \(M, k=4\)"),
        (lambda: matmul_ternary(np.zeros((1, 1), np.uint64),
                                (np.zeros((1, 1), np.uint64), np.ones((1, 1), np.uint64)), 1),
         "zero weight cannot be negative"),
        (lambda: matmul_ternary(np.zeros((1, 4), np.float32), pack_ternary(np.zeros((1, 4))), 4),
         "packed unsigned words .* or int8"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    if match is None:  # control: a well-formed call with padding passes
        assert call().shape == (2, 2)
        return
    with pytest.raises(RefquantError, match=match):
        call()


def test_cpu_path_forced_by_environment_and_foreign_names_ignored(monkeypatch):
    x = pack_signs(np.ones((2, 3)))
    monkeypatch.setenv("REFQUANT_CPU_PATH", "portable")
    assert matmul_binary(x, x, 3, backend="cpu").tolist() == [[3, 3], [3, 3]]
    monkeypatch.setenv("REFQUANT_CPU_PATH", "avx512vnni")  # an int8 path name: not ours
    assert matmul_binary(x, x, 3, backend="cpu").tolist() == [[3, 3], [3, 3]]


def test_forced_numpy_backend_by_environment(monkeypatch):
    monkeypatch.setenv("REFQUANT_BACKEND", "numpy")
    x = pack_signs(np.ones((2, 3)))
    assert matmul_binary(x, x, 3, backend="cpu").tolist() == [[3, 3], [3, 3]]


def test_kernel_bodies_run_as_python_without_the_jit():
    code = textwrap.dedent(
        """
        import numpy as np
        from refquant.kernels.cpu import binary as kb
        from refquant.quant import bitmatmul as ref
        from refquant.kernels.binary import pack_signs, pack_ternary
        rng = np.random.default_rng(0)
        for m, n, k in [(1, 1, 1), (5, 6, 70), (4, 9, 129), (8, 4, 600)]:
            a = pack_signs(rng.standard_normal((m, k)))
            b = pack_signs(rng.standard_normal((n, k)))
            want = ref.matmul_binary(a, b, k)
            assert (kb.matmul_binary_popcnt(a, b, k) == want).all()
            assert (kb.matmul_binary_portable(a, b, k) == want).all()
            w = a.shape[1]
            a8 = np.concatenate([a, np.zeros((m, -w % 8), np.uint64)], axis=1)
            b8 = np.concatenate([b, np.zeros((n, -w % 8), np.uint64)], axis=1)
            assert (kb.matmul_binary_avx512(a8, b8, k) == want).all()
            t = rng.integers(-1, 2, (n, k))
            nz, neg = pack_ternary(t)
            want = ref.matmul_ternary_binary(a, nz, neg, k)
            assert (kb.matmul_ternary_binary_popcnt(a, nz, neg) == want).all()
            assert (kb.matmul_ternary_binary_portable(a, nz, neg) == want).all()
            x = rng.integers(-128, 128, (m, k)).astype(np.int8)
            assert (kb.matmul_ternary_int8(x, t.astype(np.int8)) == ref.matmul_ternary_int8(x, nz, neg, k)).all()
        print("ok")
        """
    )
    assert run_without_jit(code).strip() == "ok"


def test_warmup_compiles_every_path_this_cpu_runs():
    from refquant.kernels import binary

    binary._warmup()
