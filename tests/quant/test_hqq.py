"""HQQ: min-max start, the proximal zero-point solver, hqq's quirks, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refquant import RefquantError
from refquant.quant.hqq import hqq_dequantize, hqq_quantize, shrink_lp


def test_shrink_by_hand():
    x = np.array([-2.0, -0.05, 0.0, 0.05, 1.0])
    # lp = 1: soft threshold by 1/beta = 0.1
    np.testing.assert_array_equal(shrink_lp(x, 10.0, 1.0), [-1.9, 0.0, 0.0, 0.0, 0.9])
    # lp = 0.5: |x| - |x|^-0.5 / 10 -> 1.0 - 0.1 = 0.9 ; 2 - 0.0707.. ; small values vanish
    got = shrink_lp(x, 10.0, 0.5)
    np.testing.assert_allclose(got, [-(2 - 2**-0.5 / 10), 0, 0, 0, 0.9], rtol=1e-15)


def test_min_max_start_by_hand():
    w = np.array([[0.0, 0.5, 1.0, 1.5]], np.float32)
    r = hqq_quantize(w, bits=2, group_size=4, optimize=False)
    # s = 3 / 1.5 = 2 (inverse scale), z = 0: codes = round(2 w) = 0, 1, 2, 3
    assert r.codes.tolist() == [[0, 1, 2, 3]]
    assert r.scale.tolist() == [[0.5]] and r.zero.tolist() == [[0.0]]
    np.testing.assert_array_equal(r.dequantized, w)


@given(w=hnp.arrays(np.float32, (8, 32), elements=st.floats(-4, 4, width=32)),
       bits=st.sampled_from([2, 3, 4, 8]), axis=st.sampled_from([0, 1]),
       method=st.sampled_from(["legacy", "v2"]))
@settings(max_examples=40, deadline=None)
def test_solver_properties(w, bits, axis, method):
    r = hqq_quantize(w, bits=bits, group_size=16, axis=axis, method=method)
    assert r.codes.shape == w.shape and r.codes.max() <= 2**bits - 1
    # the errors strictly decrease except the last (legacy stops at the first non-improvement)
    e = r.errors
    assert all(e[i + 1] < e[i] for i in range(len(e) - 2))
    np.testing.assert_array_equal(
        r.dequantized, hqq_dequantize(r.codes, r.scale, r.zero, group_size=16, axis=axis))
    # float64 reference agrees on the codes except at rounding ties
    r64 = hqq_quantize(w, bits=bits, group_size=16, axis=axis, method=method,
                       precision="float64")
    assert np.mean(r64.codes != r.codes) <= 0.1


def test_solver_lowers_the_lp_error_on_gaussian_weights():
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((128, 512)) * 0.02).astype(np.float32)
    rtn = hqq_quantize(w, bits=3, group_size=64, optimize=False)
    opt = hqq_quantize(w, bits=3, group_size=64)
    lp = lambda r: np.mean(np.abs(r.dequantized - w) ** 0.7)  # noqa: E731
    assert lp(opt) < 0.99 * lp(rtn)
    assert opt.iterations > 1


def test_axis0_groups_are_strided_columns_of_the_reshaped_view():
    w = np.arange(32, dtype=np.float32).reshape(4, 8)
    r = hqq_quantize(w, bits=4, group_size=8, axis=0, optimize=False)
    # reshape(8, -1) -> (8, 4): group j holds w.flat[j::4]; each spans 28 -> scale 28/15
    assert r.scale.shape == (1, 4)
    np.testing.assert_allclose(r.scale, 28 / 15, rtol=1e-6)


def test_legacy_ignores_kappa():
    w = (np.random.default_rng(3).standard_normal((16, 64)) * 0.02).astype(np.float32)
    a = hqq_quantize(w, kappa=1.01)
    b = hqq_quantize(w, kappa=5.0)
    assert np.array_equal(a.zero, b.zero) and np.array_equal(a.codes, b.codes)
    c = hqq_quantize(w, kappa=5.0, method="v2")
    d = hqq_quantize(w, kappa=1.01, method="v2")
    assert c.errors != d.errors or c.iterations <= 2


@pytest.mark.parametrize("kwargs, match", [
    ({"bits": 7}, "bits must be one of"),
    ({"group_size": 60}, "group_size must be a positive int dividing weight.size 2048"),
    ({"axis": 2}, "axis must be 0 or 1"),
    ({"method": "sgd"}, "method must be"),
    ({"iters": 0}, "iters must be"),
    ({"lp_norm": 1.5}, "lp_norm"),
    ({"precision": "float16"}, "precision"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(RefquantError, match=match):
        hqq_quantize(np.ones((32, 64), np.float32), **kwargs)


def test_bad_weights():
    with pytest.raises(RefquantError, match="NaN or Inf"):
        hqq_quantize(np.array([[np.nan, 1.0]]), group_size=2)
    with pytest.raises(RefquantError, match="2-D"):
        hqq_quantize(np.ones(8), group_size=2)
