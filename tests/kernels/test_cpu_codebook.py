"""The Numba codebook kernels (and compat.bnb's fused 4-bit path) reproduce the NumPy reference bit for bit."""

import numpy as np
import pytest
from helpers import run_without_jit
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refquant.compat import bnb
from refquant.formats import codebook as cb

BOOKS = ["nf4", "bnb_fp4", "bnb_dynamic8"]


def _same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    if a.dtype == np.float32:
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
    else:
        np.testing.assert_array_equal(a, b)


def _ties(name):
    """Every value, every float32 midpoint (the ties) and its float32 neighbours, in [-1, 1]."""
    v = np.unique(cb.codebook(name))
    mids = ((v[:-1] + v[1:]) / np.float32(2)).astype(np.float32)
    exact = (v[:-1].astype(np.float64) + v[1:]) / 2
    x = np.concatenate([v, mids, np.nextafter(mids, np.float32(2)), np.nextafter(mids, np.float32(-2))])
    return x.astype(np.float32), exact


@pytest.mark.parametrize("name", BOOKS)
def test_nearest_and_threshold_kernels_agree_on_every_tie(name):
    x32, exact = _ties(name)
    for x in (x32, exact, x32.astype(np.float16), (x32 * 100).astype(np.int16)):
        _same(cb.nearest_index(x, name, backend="cpu"), cb.nearest_index(x, name, backend="numpy"))
        t, order = cb.midpoint_thresholds(name)
        for o in (None, order, order.astype(np.uint8)):
            _same(cb.threshold_index(x, t, o, backend="cpu"), cb.threshold_index(x, t, o, backend="numpy"))


def test_nearest_kernel_returns_int64_for_a_codebook_above_256_values():
    values = np.linspace(-1, 1, 300, dtype=np.float32)
    x = np.random.default_rng(0).uniform(-1.2, 1.2, 1000)
    _same(cb.nearest_index(x, values, backend="cpu"), cb.nearest_index(x, values, backend="numpy"))


def test_unsorted_thresholds_run_the_reference_even_on_cpu():
    t = np.array([0.5, -0.5, 0.0], np.float32)
    x = np.linspace(-1, 1, 11)
    _same(cb.threshold_index(x, t, backend="cpu"), cb.threshold_index(x, t, backend="numpy"))


@settings(max_examples=60)
@given(
    name=st.sampled_from(BOOKS),
    x=hnp.arrays(np.float32, st.integers(0, 300), elements=st.floats(-2.0**100, 2.0**100, width=32)),
    block=st.sampled_from([1, 7, 32, 64, 256]),
    scale_op=st.sampled_from(["reciprocal", "divide"]),
    assign=st.sampled_from(["midpoints", "nearest"]),
    zero_absmax=st.sampled_from([1e-38, 1e-3]),
)
def test_blockwise_absmax_kernel_agrees_with_partial_blocks_zeros_and_subnormals(name, x, block, scale_op,
                                                                                 assign, zero_absmax):
    if x.size > 3:
        x[: min(block, x.size)] = 0  # an all-zero block
        x[-1] = 1e-40  # a subnormal in the (maybe partial) last block
    kw = dict(scale_op=scale_op, assign=assign, zero_absmax=zero_absmax)
    a = cb.quantize_blockwise_absmax(x, name, block, backend="cpu", **kw)
    b = cb.quantize_blockwise_absmax(x, name, block, backend="numpy", **kw)
    _same(a[0], b[0])
    _same(a[1], b[1])
    _same(cb.dequantize_blockwise_absmax(*a, name, block, backend="cpu"),
          cb.dequantize_blockwise_absmax(*b, name, block, backend="numpy"))


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32])
def test_blockwise_absmax_kernel_takes_every_input_dtype(dtype):
    x = (np.random.default_rng(2).standard_normal(1000) * 50).astype(dtype)
    a = cb.quantize_blockwise_absmax(x, "nf4", 64, backend="cpu")
    b = cb.quantize_blockwise_absmax(x, "nf4", 64, backend="numpy")
    _same(a[0], b[0])
    _same(a[1], b[1])


def _bnb_both(monkeypatch, fn, *args, **kw):
    """``fn`` with the Numba kernels (threshold 0) and with the NumPy bodies (REFQUANT_BACKEND=numpy)."""
    monkeypatch.setattr(bnb, "KERNEL_THRESHOLD", 0)
    k = fn(*args, **kw)
    monkeypatch.setenv("REFQUANT_BACKEND", "numpy")
    r = fn(*args, **kw)
    monkeypatch.delenv("REFQUANT_BACKEND")
    return k, r


@settings(max_examples=60)
@given(
    x=hnp.arrays(np.float32, st.integers(0, 300),
                 elements=st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True)),
    quant_type=st.sampled_from(["nf4", "fp4"]),
    blocksize=st.sampled_from([32, 64, 128]),
    backend=st.sampled_from(["cpu", "default"]),
    zero_block=st.booleans(),
)
def test_bnb_4bit_fused_kernel_equals_the_numpy_body(x, quant_type, blocksize, backend, zero_block):
    if zero_block:
        x[-blocksize // 2:] = 0  # an all-zero (partial) last block: stored absmax 1e-38
    with pytest.MonkeyPatch.context() as mp:
        (pk, sk), (pr, sr) = _bnb_both(mp, bnb.quantize_4bit, x, blocksize=blocksize, quant_type=quant_type,
                                       backend=backend)
        _same(pk, pr)
        _same(sk["absmax"], sr["absmax"])
        dk, dr = _bnb_both(mp, bnb.dequantize_4bit, pk, sk)
        _same(dk, dr)


@settings(max_examples=60)
@given(
    x=hnp.arrays(np.float32, st.integers(0, 600),
                 elements=st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True)),
    blocksize=st.sampled_from([64, 100, 256]),
    backend=st.sampled_from(["cpu", "default"]),
    nested=st.booleans(),
    zero_block=st.booleans(),
)
def test_bnb_8bit_kernels_equal_the_numpy_bodies(x, blocksize, backend, nested, zero_block):
    if zero_block:
        x[:blocksize] = 0
    with pytest.MonkeyPatch.context() as mp:
        (qk, sk), (qr, sr) = _bnb_both(mp, bnb.quantize_blockwise, x, blocksize=blocksize, backend=backend,
                                       nested=nested)
        _same(qk, qr)
        _same(np.asarray(sk["absmax"]), np.asarray(sr["absmax"]))
        dk, dr = _bnb_both(mp, bnb.dequantize_blockwise, qk, sk)
        _same(dk, dr)


def test_bnb_4bit_kernel_keeps_the_input_dtype_and_shape(monkeypatch):
    x = np.random.default_rng(3).standard_normal((33, 7)).astype(np.float16)
    (pk, sk), (pr, sr) = _bnb_both(monkeypatch, bnb.quantize_4bit, x, quant_type="nf4", compress_statistics=True)
    _same(pk, pr)
    dk, dr = _bnb_both(monkeypatch, bnb.dequantize_4bit, pk, sk)
    assert dk.dtype == np.float16 and dk.shape == (33, 7)
    np.testing.assert_array_equal(dk.view(np.uint16), dr.view(np.uint16))


def test_codebook_kernel_bodies_run_as_python_without_jit():
    code = """
import os
import numpy as np
from refquant.compat import bnb
from refquant.formats import codebook as cb
rng = np.random.default_rng(0)
x = rng.standard_normal(101).astype(np.float32)
x[:32] = 0
for name in ("nf4", "bnb_fp4", "bnb_dynamic8"):
    for asg in ("midpoints", "nearest"):
        for so in ("reciprocal", "divide"):
            a = cb.quantize_blockwise_absmax(x, name, 32, scale_op=so, assign=asg, backend="cpu")
            b = cb.quantize_blockwise_absmax(x, name, 32, scale_op=so, assign=asg, backend="numpy")
            assert all(np.array_equal(u, v) for u, v in zip(a, b)), name
            assert np.array_equal(cb.dequantize_blockwise_absmax(*a, name, 32, backend="cpu"),
                                  cb.dequantize_blockwise_absmax(*a, name, 32, backend="numpy"))
    t, o = cb.midpoint_thresholds(name)
    assert np.array_equal(cb.threshold_index(x, t, o, backend="cpu"), cb.threshold_index(x, t, o, backend="numpy"))
    assert np.array_equal(cb.nearest_index(x.astype(np.float16), name, backend="cpu"),
                          cb.nearest_index(x.astype(np.float16), name, backend="numpy"))
y = x.copy()
y[40] = np.nan
y[70] = np.inf
for xx in (x, y):
    for qt in ("nf4", "fp4"):
        bnb.KERNEL_THRESHOLD = 0
        pk, sk = bnb.quantize_4bit(xx, blocksize=32, quant_type=qt)
        dk = bnb.dequantize_4bit(pk, sk)
        os.environ["REFQUANT_BACKEND"] = "numpy"
        pr, sr = bnb.quantize_4bit(xx, blocksize=32, quant_type=qt)
        dr = bnb.dequantize_4bit(pr, sr)
        del os.environ["REFQUANT_BACKEND"]
        assert np.array_equal(pk, pr) and np.array_equal(sk["absmax"], sr["absmax"], equal_nan=True)
        assert np.array_equal(dk.view(np.uint32), dr.view(np.uint32))
    for be in ("cpu", "default"):
        qk, sk = bnb.quantize_blockwise(xx, blocksize=64, backend=be)
        dk = bnb.dequantize_blockwise(qk, sk)
        os.environ["REFQUANT_BACKEND"] = "numpy"
        qr, sr = bnb.quantize_blockwise(xx, blocksize=64, backend=be)
        dr = bnb.dequantize_blockwise(qr, sr)
        del os.environ["REFQUANT_BACKEND"]
        assert np.array_equal(qk, qr) and np.array_equal(sk["absmax"], sr["absmax"], equal_nan=True)
        assert np.array_equal(dk.view(np.uint32), dr.view(np.uint32))
print("ok")
"""
    assert run_without_jit(code, timeout=600).strip() == "ok"
