"""Hadamard rotations: constructions, the fast transform (NumPy and Numba bit for bit),
the round-trip bound, and what a rotation does to an outlier channel."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from helpers import run_without_jit
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refquant import RefquantError
from refquant.quant import rotation as rot

SETTINGS = settings(max_examples=40, deadline=None)
ORDERS = [1, 2, 4, 8, 12, 16, 20, 24, 28, 36, 40, 48, 56, 60, 96, 108, 140, 256, 320]


def test_sylvester_order_4_by_hand():
    want = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]])
    assert np.array_equal(rot.sylvester_hadamard(4), want)
    assert np.array_equal(rot.hadamard_matrix(4), want)


def test_sylvester_equals_scipy():
    import scipy.linalg

    for n in (1, 2, 8, 64, 512):
        assert np.array_equal(rot.sylvester_hadamard(n), scipy.linalg.hadamard(n))


@pytest.mark.parametrize("k", rot.PALEY_BASE_SIZES)
def test_paley_matrices_are_hadamard(k):
    h = rot.paley_hadamard(k).astype(np.int64)
    assert np.array_equal(h @ h.T, k * np.eye(k, dtype=np.int64))


def test_paley_covers_quarot_sizes_with_prime_q():
    built = {k for k in rot.QUAROT_BASE_SIZES if k in rot.PALEY_BASE_SIZES}
    assert built == {12, 20, 28, 36, 60, 108, 140}
    assert rot.hadamard_base(40).shape == (20, 20)  # 40 = 2 x 20
    for k in (52, 156, 172):
        with pytest.raises(RefquantError, match="base="):
            rot.hadamard_base(k)


@pytest.mark.parametrize("n", ORDERS)
def test_hadamard_matrix_is_orthogonal_and_transform_is_x_times_m(n):
    m = rot.hadamard_matrix(n).astype(np.int64)
    assert np.array_equal(m @ m.T, n * np.eye(n, dtype=np.int64))
    x = np.random.default_rng(n).integers(-100, 100, (3, n)).astype(np.float64)
    # integer inputs: every sum is exact, so the transform equals x @ M exactly
    got = rot.hadamard_transform(x, normalize=False, backend="numpy")
    assert np.array_equal(got, x @ m)
    got_t = rot.hadamard_transform(x, normalize=False, transpose=True, backend="numpy")
    assert np.array_equal(got_t, x @ m.T)


@pytest.mark.parametrize("n", [12, 64, 96, 1024])
def test_rotation_preserves_the_layer_output(n):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((7, n))
    x = rng.standard_normal((5, n))
    y = rot.rotate(x, seed=3) @ rot.rotate(w, seed=3).T
    np.testing.assert_allclose(y, x @ w.T, rtol=0, atol=1e-12 * n)
    r = rot.rotation_matrix(n, seed=3)
    np.testing.assert_allclose(r @ r.T, np.eye(n), atol=1e-14 * n)
    np.testing.assert_allclose(rot.rotate(w, seed=3), w @ r, atol=1e-13 * n)


@given(
    n=st.sampled_from(ORDERS + [1024, 3072]),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**32 - 1),
    data=st.data(),
)
@SETTINGS
def test_round_trip_within_the_stated_bound(n, dtype, seed, data):
    x = data.draw(hnp.arrays(dtype, (3, n), elements=st.floats(
        -1e6, 1e6, width=32 if dtype == np.float32 else 64)))
    y = rot.unrotate(rot.rotate(x, seed=seed), seed=seed)
    assert y.dtype == dtype
    eps = np.finfo(dtype).eps
    factor = rot.round_trip_bound(n, dtype)
    # ||x||_2 without underflow (x**2 of 1e-186 is 0 in float64), plus an absolute term for
    # roundings among subnormals, where the relative bound does not hold
    big = np.abs(x.astype(np.float64)).max(axis=1, keepdims=True)
    norm = big[:, 0] * np.linalg.norm(np.divide(x, big, out=np.zeros(x.shape), where=big > 0),
                                      axis=1)
    bound = factor * (eps * norm + np.finfo(dtype).smallest_subnormal)
    assert np.all(np.abs(y.astype(np.float64) - x).max(axis=1) <= bound)


def _bits(a):
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


@given(
    n=st.sampled_from(ORDERS),
    rows=st.integers(0, 4),
    dtype=st.sampled_from([np.float32, np.float64]),
    transpose=st.booleans(),
    normalize=st.booleans(),
    data=st.data(),
)
@SETTINGS
def test_numba_kernel_equals_numpy_bit_for_bit(n, rows, dtype, transpose, normalize, data):
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, np.finfo(dtype).max, -np.finfo(dtype).max,
               np.finfo(dtype).smallest_subnormal, 1.0, 0.5]
    x = data.draw(hnp.arrays(dtype, (rows, n), elements=st.one_of(
        st.sampled_from(special),
        st.floats(allow_nan=True, allow_infinity=True, width=32 if dtype == np.float32 else 64))))
    a = rot.hadamard_transform(x, transpose=transpose, normalize=normalize, backend="numpy")
    b = rot.hadamard_transform(x, transpose=transpose, normalize=normalize, backend="cpu")
    assert a.dtype == b.dtype == dtype and a.shape == b.shape
    assert np.array_equal(_bits(a), _bits(b))


def test_kernel_bodies_run_as_python_without_the_jit():
    code = textwrap.dedent(
        """
        import numpy as np
        from refquant.quant import rotation as rot
        rng = np.random.default_rng(0)
        for n in (1, 2, 12, 16, 40):
            for dt in (np.float32, np.float64):
                x = rng.standard_normal((3, n)).astype(dt)
                a = rot.hadamard_transform(x, backend="numpy")
                b = rot.hadamard_transform(x, backend="cpu")
                assert a.tobytes() == b.tobytes(), (n, dt)
        print("ok")
        """
    )
    assert run_without_jit(code).strip() == "ok"


def test_rotation_spreads_an_outlier_channel():
    """kurtosis and the int4 per-channel error drop when a weight has an outlier input channel."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 256)) * 0.02
    w[:, 5] *= 40  # an outlier input channel
    wr = rot.rotate(w, seed=0)

    def int4_error(m):
        s = np.abs(m).max(axis=1, keepdims=True) / 7
        return np.mean((np.clip(np.round(m / s), -8, 7) * s - m) ** 2)

    assert rot.kurtosis(w) > 50 and rot.kurtosis(wr) < 4
    err_before = int4_error(w)
    err_after = int4_error(wr)  # the rotation is orthogonal: the error is the same in both bases
    assert err_after < 0.2 * err_before
    back = rot.unrotate(np.clip(np.round(wr / (np.abs(wr).max(1, keepdims=True) / 7)), -8, 7)
                        * (np.abs(wr).max(1, keepdims=True) / 7), seed=0)
    np.testing.assert_allclose(np.mean((back - w) ** 2), err_after, rtol=1e-9)


def test_kurtosis_of_a_gaussian_is_three():
    x = np.random.default_rng(0).standard_normal(1_000_000)
    assert abs(rot.kurtosis(x) - 3) < 0.02
    from scipy.stats import kurtosis
    np.testing.assert_allclose(rot.kurtosis(x[:1000]), kurtosis(x[:1000], fisher=False), rtol=1e-12)


def test_bad_inputs_raise():
    with pytest.raises(RefquantError, match="power of two"):
        rot.sylvester_hadamard(12)
    with pytest.raises(RefquantError, match="n=10 is neither"):
        rot.paley_hadamard(10)  # 9 and 4 are not prime
    with pytest.raises(RefquantError, match="no Hadamard construction for n=10"):
        rot.hadamard_transform(np.ones(10))
    with pytest.raises(RefquantError, match="signs must be 8"):
        rot.rotate(np.ones(8), signs=np.ones(7))
    with pytest.raises(RefquantError, match="seed or signs"):
        rot.rotate(np.ones(8), seed=1, signs=np.ones(8))
    with pytest.raises(RefquantError, match="not a Hadamard"):
        rot.hadamard_transform(np.ones(4), base=np.ones((2, 2)))
    with pytest.raises(RefquantError, match="base has order 3"):
        rot.hadamard_transform(np.ones(4), base=np.ones((3, 3)))
    with pytest.raises(RefquantError, match="empty last axis"):
        rot.hadamard_transform(np.ones((2, 0)))
    with pytest.raises(RefquantError, match="precision"):
        rot.hadamard_transform(np.ones(4), precision="float16")


def test_rotation_on_the_digits_mlp_keeps_outputs_and_accuracy():
    """Real weights and activations: the bundled digits MLP's blocks.0 (128 -> 128)."""
    from refquant.models import digits_mlp_forward, load_digits_mlp

    params = load_digits_mlp()
    w = params["blocks.0.weight"].astype(np.float32)
    _, hidden = digits_mlp_forward(params, params["x_calib"], return_hidden=True)
    x = hidden[0].astype(np.float32)
    y = rot.rotate(x, seed=11) @ rot.rotate(w, seed=11).T
    np.testing.assert_allclose(y, x @ w.T, rtol=0, atol=1e-5 * np.abs(x @ w.T).max())
    back = rot.unrotate(rot.rotate(w, seed=11), seed=11)
    bound = rot.round_trip_bound(128, np.float32) * np.finfo(np.float32).eps \
        * np.linalg.norm(w, axis=1, keepdims=True)
    assert np.all(np.abs(back - w) <= bound)
