"""The Numba MX kernels reproduce formats.mx's NumPy reference bit for bit."""

import numpy as np
import pytest
from helpers import run_without_jit
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refquant import RefquantError
from refquant._core.rounding import ROUNDING_MODES
from refquant.formats.mx import MX_FORMATS, dequantize_mx, quantize_mx

NAMES = sorted(MX_FORMATS)


def _same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    if a.dtype == np.float32:
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
    else:
        np.testing.assert_array_equal(a, b)


def _both(x, name, **kw):
    got = quantize_mx(x, name, backend="cpu", **kw)
    want = quantize_mx(x, name, backend="numpy", **kw)
    _same(got[0], want[0])
    _same(got[1], want[1])
    dkw = {k: v for k, v in kw.items() if k in ("axis", "block_size")}
    _same(dequantize_mx(*want, name, backend="cpu", **dkw), dequantize_mx(*want, name, backend="numpy", **dkw))


def _edge_rows():
    """Blocks of ties, ±max, a NaN, an Inf, zeros, float32 subnormals, values near float32's max."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((12, 70)) * np.exp2(rng.integers(-30, 30, (12, 1)))).astype(np.float32)
    x[0, :32] = 0
    x[1, 3] = np.nan
    x[2, 40] = -np.inf
    x[3] = 1e-42
    x[4, 0] = 3.4e38
    x[5, :8] = [448, -448, 464, 0.75, 1.25, -2.5, 6, 7.5]  # element maxima and ties after scaling
    x[6, :4] = [2.0**127, 2.0**-127, 1.5 * 2.0**-127, -(2.0**126)]
    return x


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale_rule", ["floor", "ceil"])
@pytest.mark.parametrize("rounding", ROUNDING_MODES)
def test_mx_kernel_equals_reference_on_edge_blocks(name, scale_rule, rounding):
    x = _edge_rows()
    with np.errstate(over="ignore"):
        for xx, kw in ((x, {}), (x, {"axis": 0}), (x.astype(np.float64) * 1e10, {"block_size": 16}),
                       (x[:, :20], {}), (x.astype(np.float16), {"axis": 1})):
            _both(xx, name, scale_rule=scale_rule, rounding=rounding, seed=11, **kw)


@settings(max_examples=40)
@given(
    name=st.sampled_from(NAMES),
    x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=40),
                 elements=st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True)),
    scale_rule=st.sampled_from(["floor", "ceil"]),
    rounding=st.sampled_from(ROUNDING_MODES),
    block=st.sampled_from([None, 1, 5, 32]),
    data=st.data(),
)
def test_mx_kernel_equals_reference_on_drawn_arrays(name, x, scale_rule, rounding, block, data):
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    with np.errstate(over="ignore", invalid="ignore"):
        _both(x, name, axis=axis, block_size=block, scale_rule=scale_rule, rounding=rounding, seed=1)


@pytest.mark.parametrize("name", ["mxfp4", "mxint8"])
def test_stochastic_mx_draws_in_row_chunks_are_the_reference_stream(name):
    x = np.random.default_rng(5).standard_normal((300, 333)).astype(np.float32)  # 300 rows, padded width 352
    _both(x, name, rounding="stochastic", rng=None, seed=123)


def test_mx_dequantize_kernel_checks_like_the_reference():
    codes, scales = quantize_mx(np.ones((2, 64), np.float32), "mxfp4", backend="numpy")
    for backend in ("numpy", "cpu"):
        with pytest.raises(RefquantError, match="need"):
            dequantize_mx(codes, scales[:, :1], "mxfp4", backend=backend)
        with pytest.raises(RefquantError, match="codes must be in"):
            dequantize_mx(codes + 16, scales, "mxfp4", backend=backend)


def test_mx_kernel_bodies_run_as_python_without_jit():
    code = """
import numpy as np
from refquant._core.rounding import ROUNDING_MODES
from refquant.formats.mx import MX_FORMATS, dequantize_mx, quantize_mx
x = np.random.default_rng(0).standard_normal((3, 40)).astype(np.float32) * 10
x[0, :32] = 0
x[1, 5] = np.nan
x[2, 39] = np.inf
for name in MX_FORMATS:
    for rule in ("floor", "ceil"):
        for mode in ROUNDING_MODES:
            a = quantize_mx(x, name, scale_rule=rule, rounding=mode, seed=2, backend="cpu")
            b = quantize_mx(x, name, scale_rule=rule, rounding=mode, seed=2, backend="numpy")
            assert all(np.array_equal(u, v) for u, v in zip(a, b)), (name, rule, mode)
            d1 = dequantize_mx(*a, name, backend="cpu")
            d2 = dequantize_mx(*a, name, backend="numpy")
            assert np.array_equal(d1.view(np.uint32), d2.view(np.uint32))
print("ok")
"""
    assert run_without_jit(code, timeout=600).strip() == "ok"
