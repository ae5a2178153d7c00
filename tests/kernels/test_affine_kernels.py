"""The Numba affine kernels (refquant.kernels.cpu.affine) against the NumPy reference, bit for bit.

quantize / dequantize / fake_quantize / minmax_range / dynamic quantization run
with ``backend="numpy"`` (the reference) and ``backend="cpu"`` (the kernels) on
the same hypothesis-drawn tensors: per tensor, per axis (any axis) and blocked
with a partial last block, exact ties ``(k + 1/2) s``, ±float32 max, NaN, ±Inf,
subnormal inputs and scales, empty arrays, every input dtype the reference takes,
every semantic choice. A condition the reference raises on must raise the same
message on the kernel path.
"""

import json
import os
import subprocess
import sys
import textwrap

import ml_dtypes
import numpy as np
import pytest
from helpers import import_peer, run_without_jit
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refquant import RefquantError, dequantize, fake_quantize, quantize
from refquant._core.granularity import broadcast_param, param_shape
from refquant.formats.integer import IntRange, int_format
from refquant.quant.affine import KERNEL_THRESHOLD
from refquant.quant.dynamic import dynamic_quantize, dynamic_quantize_per_token
from refquant.quant.qparams import choose_qparams, minmax_range

# One kernel is compiled per combination of the compile-time choices (and per array dtype),
# so the property tests run a fixed list of combinations that names every choice at least once,
# on float32 inputs and int64 codes; other dtypes have tests of their own.
COMBOS = [
    dict(),  # float64 divide, zero point after rounding, half_even, saturate
    dict(precision="float32"),  # ONNX QuantizeLinear
    dict(scale_op="reciprocal", precision="float32", zero_point_stage="fused", nan="qmax"),  # torch
    dict(scale_op="reciprocal", precision="float32", zero_point_stage="before_rounding",
         rounding="half_away", nan="zero"),
    dict(scale_op="reciprocal", clamp_stage="before_rounding", rounding="half_up",
         overflow="wrap", nan="zero_point"),
    dict(precision="float32", zero_point_stage="before_rounding", clamp_stage="before_rounding",
         rounding="half_down", overflow="raise", nan="qmin"),
    dict(rounding="half_zero", overflow="wrap", nan="qmax", inf="raise"),
    dict(precision="float32", rounding="floor", clamp_stage="before_rounding", nan="zero"),
    dict(rounding="ceil", zero_point_stage="before_rounding", overflow="raise", nan="zero"),
    dict(precision="float32", scale_op="reciprocal", rounding="trunc", overflow="wrap",
         nan="zero_point"),
]
GRIDS = ["int8", "uint8", "int4", "uint4", "int2", "int16", "int8_narrow"]

specials = st.sampled_from([0.0, -0.0, np.nan, np.inf, -np.inf, 3.4028235e38, -3.4028235e38,
                            1e-45, -1e-45, 1.1754942e-38, 2.0**-130])


@st.composite
def layouts(draw, max_side=6):
    """(shape, axis, block_size): per tensor, per axis or blocked (a partial last block)."""
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(0, max_side), min_size=ndim, max_size=ndim)))
    gran = draw(st.sampled_from(["tensor", "axis", "block"]))
    if gran == "tensor":
        return shape, None, None
    axis = draw(st.integers(-ndim, ndim - 1))
    return shape, axis, (draw(st.integers(1, 5)) if gran == "block" else None)


@st.composite
def problems(draw, grids=GRIDS, float_zero_point=False):
    """(x float32, scale, zero_point, grid name, axis, block_size)."""
    shape, axis, block = draw(layouts())
    grid = draw(st.sampled_from(grids))
    fmt = int_format(grid)
    ax = None if axis is None else axis % len(shape)
    pshape = param_shape(shape, ax, block)
    if draw(st.booleans()):  # a scalar shared by every group
        pshape = ()
    scale_el = st.one_of(st.floats(2.0**-13, 10.0, width=32),
                         st.sampled_from([1e-40, 2.0**-126, 1.0, 3.0e38]))
    s = draw(hnp.arrays(np.float32, pshape, elements=scale_el))
    if float_zero_point:
        z = draw(hnp.arrays(np.float64, pshape, elements=st.floats(fmt.qmin, fmt.qmax)))
    else:
        z = draw(hnp.arrays(np.int64, pshape, elements=st.integers(fmt.qmin, fmt.qmax)))
    n = int(np.prod(shape))
    sb = np.broadcast_to(broadcast_param(s, shape, ax, block, "s"), shape).reshape(-1)
    ks = draw(hnp.arrays(np.int64, n, elements=st.integers(-300, 300)))
    kind = draw(hnp.arrays(np.int8, n, elements=st.integers(0, 3)))
    noise = draw(hnp.arrays(np.float32, n, elements=st.floats(-1e6, 1e6, width=32)))
    spec = draw(hnp.arrays(np.float32, n, elements=specials))
    with np.errstate(over="ignore"):
        x = np.where(kind == 0, (ks + 0.5) * sb.astype(np.float64),
                     np.where(kind == 1, noise, np.where(kind == 2, spec, ks * 0.37)))
    return x.astype(np.float32).reshape(shape), s, z, grid, axis, block


class Raised(str):
    """The message of a RefquantError, as an outcome."""


def _outcome(fn):
    """The result of ``fn()``, or Raised(message) when it raises RefquantError."""
    try:
        return fn()
    except RefquantError as exc:
        return Raised(exc)


def _same(a, b):
    if isinstance(a, Raised) or isinstance(b, Raised):
        assert (type(a), a) == (type(b), b)
        return
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    if a.dtype.kind == "f":
        np.testing.assert_array_equal(a.view(f"u{a.itemsize}"), b.view(f"u{b.itemsize}"))
    else:
        np.testing.assert_array_equal(a, b)


def _both(fn, **kw):
    want = _outcome(lambda: fn(backend="numpy", **kw))
    got = _outcome(lambda: fn(backend="cpu", **kw))
    _same(got, want)
    return got


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: ",".join(f"{v}" for v in c.values())
                         or "default")
@settings(max_examples=40)
@given(data=st.data())
def test_quantize_kernel_equals_the_reference(combo, data):
    floatz = combo.get("zero_point_stage", "after_rounding") != "after_rounding"
    x, s, z, grid, axis, block = data.draw(problems(float_zero_point=floatz and data.draw(
        st.booleans())))
    # int64 codes: one kernel per combination (the storage dtypes have tests of their own)
    _both(lambda backend: quantize(x, s, z, dtype=grid, axis=axis, block_size=block,
                                   out_dtype=np.int64, backend=backend, **combo))


# float32 saturating codes with no flag that the caller needs (nan neither "raise" nor
# "zero", inf="saturate") into an output at most 4 bytes wide: the kernel's full-width float32
# row loop (_row_f32_saturate), as compat.onnx's QuantizeLinear runs it
FAST_COMBOS = [
    dict(precision="float32", nan="qmin"),
    dict(precision="float32", scale_op="reciprocal", nan="zero_point", rounding="half_away"),
    dict(precision="float32", nan="qmax", rounding="floor"),
    dict(precision="float32", scale_op="reciprocal", nan="qmin", rounding="trunc"),
]


@pytest.mark.parametrize("combo", FAST_COMBOS, ids=lambda c: ",".join(f"{v}" for v in c.values()))
@pytest.mark.parametrize("out_dtype", [None, np.int32, np.uint8])
@settings(max_examples=30)
@given(data=st.data())
def test_float32_saturating_row_loop_equals_the_reference(combo, out_dtype, data):
    x, s, z, grid, axis, block = data.draw(problems())
    _both(lambda backend: quantize(x, s, z, dtype=grid, axis=axis, block_size=block,
                                   out_dtype=out_dtype, backend=backend, **combo))


@settings(max_examples=40)
@given(problems(grids=["int8", "uint4"]))
def test_fake_quantize_kernel_equals_the_reference(p):
    x, s, z, grid, axis, block = p
    _both(lambda backend: fake_quantize(x, s, z, dtype=grid, axis=axis, block_size=block,
                                        nan="zero_point", backend=backend))


@pytest.mark.parametrize("dt", [np.float64, np.float16, ml_dtypes.bfloat16, np.int16, np.uint8,
                                np.bool_, np.int64])
@settings(max_examples=25)
@given(p=problems(grids=["int8"]))
def test_every_input_dtype_the_reference_takes(dt, p):
    x, s, z, grid, axis, block = p
    with np.errstate(invalid="ignore", over="ignore"):
        if np.dtype(dt).kind in "iub":
            xd = np.nan_to_num(x, nan=0, posinf=0, neginf=0).clip(-1000, 1000).astype(dt)
        else:
            xd = x.astype(dt)
    _both(lambda backend: quantize(xd, s, z, dtype=grid, axis=axis, block_size=block,
                                   nan="qmin", backend=backend))


@pytest.mark.parametrize("out_dtype, grid", [(np.uint8, "uint8"), (np.int16, "int16"),
                                             (np.int64, "int4"), (np.int8, "int16")])
def test_output_dtypes_cast_as_numpys_astype(out_dtype, grid):
    x = np.random.default_rng(1).standard_normal((5, 300)).astype(np.float32) * 300
    _both(lambda backend: quantize(x, 0.5, 1, dtype=grid, out_dtype=out_dtype, backend=backend))


@st.composite
def codes(draw):
    shape, axis, block = draw(layouts())
    ax = None if axis is None else axis % len(shape)
    pshape = () if draw(st.booleans()) else param_shape(shape, ax, block)
    qdt = np.int32  # other code dtypes: test_dequantize_takes_every_code_dtype
    info = np.iinfo(qdt)
    q = draw(hnp.arrays(qdt, shape, elements=st.integers(int(info.min), int(info.max))))
    s = draw(hnp.arrays(np.float32, pshape, elements=st.one_of(
        st.floats(2.0**-20, 1e4, width=32), st.sampled_from([1e-45, 3.0e38, 1 / 3]))))
    if draw(st.booleans()):
        z = draw(hnp.arrays(np.int64, pshape, elements=st.integers(-2**31, 2**31 - 1)))
    else:
        z = draw(hnp.arrays(np.float64, pshape, elements=st.floats(-1e6, 1e6)))
    return q, s, z, axis, block


@pytest.mark.parametrize("precision", ["exact", "float32"])
@pytest.mark.parametrize("out_dtype", [np.float32, np.float64])
@settings(max_examples=40)
@given(c=codes())
def test_dequantize_kernel_equals_the_reference(precision, out_dtype, c):
    q, s, z, axis, block = c
    _both(lambda backend: dequantize(q, s, z, axis=axis, block_size=block, out_dtype=out_dtype,
                                     precision=precision, backend=backend))


def test_dequantize_rounds_the_exact_product_once_on_the_kernel():
    # float32(float64(3 * s)) rounds twice; the exact product rounds to 1 + 2^-23
    s = np.float64((1 + 2.0**-24) / 3)
    q = np.full(70000, 3, np.int8)
    got = dequantize(q, s, backend="cpu")
    assert got[0] == np.float32(1 + 2.0**-23)
    _same(got, dequantize(q, s, backend="numpy"))


@pytest.mark.parametrize("qdt", [np.uint16, np.int64, np.bool_, ml_dtypes.int4])
def test_dequantize_takes_every_code_dtype(qdt):
    q = (np.arange(-40, 60) % (2 if qdt is np.bool_ else 8)).astype(qdt).reshape(4, 25)
    s = np.linspace(0.1, 2, 4, dtype=np.float32)
    _both(lambda backend: dequantize(q, s, 3, axis=0, backend=backend))


@pytest.mark.parametrize("dt", [np.float32, np.float64, np.float16, np.int8, np.bool_])
@settings(max_examples=30)
@given(lay=layouts(max_side=7), data=st.data())
def test_minmax_kernel_equals_the_reference(dt, lay, data):
    shape, axis, block = lay
    el = (st.one_of(st.floats(-1e4, 1e4, width=16 if dt is np.float16 else 32), specials)
          if np.dtype(dt).kind == "f" else st.integers(-128, 127))
    x = data.draw(hnp.arrays(np.float32 if np.dtype(dt).kind == "f" else np.int16, shape,
                             elements=el))
    with np.errstate(over="ignore"):
        x = x.astype(dt)
    want = _outcome(lambda: minmax_range(x, axis=axis, block_size=block, backend="numpy"))
    got = _outcome(lambda: minmax_range(x, axis=axis, block_size=block, backend="cpu"))
    if isinstance(want, Raised) or isinstance(got, Raised):
        _same(got, want)
        return
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        # equal values; of +0 and -0 in one group NumPy's SIMD reduction keeps either
        np.testing.assert_array_equal(g, w)


def test_minmax_all_nan_group_and_signed_zeros():
    x = np.zeros((3, 70000), np.float32)
    x[1] = np.nan
    x[2, ::2] = -0.0
    with pytest.raises(RefquantError, match="all NaN"):
        minmax_range(x, axis=0, backend="cpu")
    lo, hi = minmax_range(x[[0, 2]], axis=0, backend="cpu")
    np.testing.assert_array_equal(lo, [0, 0])


@settings(max_examples=30)
@given(lay=layouts(), data=st.data(), symmetric=st.booleans())
def test_choose_qparams_and_dynamic_quantization_on_the_kernels(lay, data, symmetric):
    shape, axis, block = lay
    x = data.draw(hnp.arrays(np.float32, shape, elements=st.one_of(
        st.floats(-1e3, 1e3, width=32), st.sampled_from([np.nan, np.inf, 0.0, -0.0]))))
    a = _outcome(lambda: choose_qparams(x, axis=axis, block_size=block, symmetric=symmetric,
                                        backend="numpy"))
    b = _outcome(lambda: choose_qparams(x, axis=axis, block_size=block, symmetric=symmetric,
                                        backend="cpu"))
    if isinstance(a, Raised):
        _same(b, a)
    else:
        _same(b.scale, a.scale)
        _same(b.zero_point, a.zero_point)
    a = _outcome(lambda: dynamic_quantize(x, axis=axis, block_size=block, nan="zero",
                                          backend="numpy"))
    b = _outcome(lambda: dynamic_quantize(x, axis=axis, block_size=block, nan="zero",
                                          backend="cpu"))
    if isinstance(a, Raised):
        _same(b, a)
    else:
        _same(b[0], a[0])
        _same(b[1].scale, a[1].scale)
    if x.ndim and x.shape[-1]:
        a = _outcome(lambda: dynamic_quantize_per_token(x, nan="qmin", backend="numpy"))
        b = _outcome(lambda: dynamic_quantize_per_token(x, nan="qmin", backend="cpu"))
        if isinstance(a, Raised):
            _same(b, a)
        else:
            _same(b[0], a[0])


def test_errors_of_the_reference_are_raised_on_the_kernel_path_with_its_messages():
    x = np.zeros(100000, np.float32)
    x[5] = np.nan
    x[7] = np.inf
    no_zero = IntRange(1, 10, np.uint8, "uint8[1:10]")  # code 0 outside the grid
    for kw in (dict(), dict(nan="zero", inf="raise"), dict(nan="zero", dtype=no_zero,
                                                          zero_point=3)):
        want = _outcome(lambda kw=kw: quantize(x, 1e-3, backend="numpy", **kw))
        assert isinstance(want, Raised)
        _same(_outcome(lambda kw=kw: quantize(x, 1e-3, backend="cpu", **kw)), want)
    y = np.full(100000, 1e30, np.float32)
    for kw in (dict(overflow="wrap"), dict(overflow="raise")):
        want = _outcome(lambda kw=kw: quantize(y, 1e-3, backend="numpy", **kw))
        assert isinstance(want, Raised)
        _same(_outcome(lambda kw=kw: quantize(y, 1e-3, backend="cpu", **kw)), want)


def test_auto_runs_the_kernel_from_the_threshold_and_the_environment_forces_numpy(monkeypatch):
    from refquant.quant import affine

    calls = []
    real = affine._quantize_cpu
    monkeypatch.setattr(affine, "_quantize_cpu", lambda *a, **k: calls.append(1) or real(*a, **k))
    quantize(np.ones(KERNEL_THRESHOLD - 1, np.float32), 0.1)
    assert calls == []
    quantize(np.ones(KERNEL_THRESHOLD, np.float32), 0.1)
    assert calls == [1]
    monkeypatch.setenv("REFQUANT_BACKEND", "numpy")
    quantize(np.ones(KERNEL_THRESHOLD, np.float32), 0.1, backend="cpu")
    assert calls == [1]
    with pytest.raises(RefquantError, match="backend must be one of"):
        quantize(np.ones(3), 0.1, backend="gpu")


def test_the_kernel_path_never_copies_the_input_to_float64():
    import tracemalloc

    x = np.random.default_rng(0).standard_normal((256, 4096)).astype(np.float32)
    s = np.full((256, 32), 0.05, np.float32)
    quantize(x, s, axis=1, block_size=128, dtype="int4", backend="cpu")  # compile first
    tracemalloc.start()
    quantize(x, s, axis=1, block_size=128, dtype="int4", backend="cpu")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # the int8 codes (x.size bytes) and O(groups) parameters, not float64 (8 bytes a weight)
    assert peak < 1.5 * x.size, peak
    q = np.zeros(x.shape, np.int8)
    for call, limit in ((lambda: dequantize(q, s, axis=1, block_size=128, backend="cpu"), 4.5),
                        (lambda: minmax_range(x, axis=1, block_size=128, backend="cpu"), 0.5),
                        (lambda: minmax_range(x, axis=0, backend="cpu"), 0.5)):
        call()
        tracemalloc.start()
        call()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < limit * x.size, peak  # the float32 output (4 bytes a weight) at most


def test_kernel_bodies_as_python_without_the_jit():
    out = run_without_jit(textwrap.dedent("""
        import numpy as np
        from refquant import quantize, dequantize, fake_quantize
        from refquant.quant.qparams import minmax_range
        rng = np.random.default_rng(3)
        x = rng.standard_normal((3, 5, 7)).astype(np.float32) * 40
        x[0, 0, 0], x[1, 1, 1], x[2, 2, 2] = np.nan, np.inf, 2.5
        s = rng.uniform(0.1, 2, (3, 2, 7)).astype(np.float32)
        z = rng.integers(-5, 5, (3, 2, 7))
        # precision="float32" with nan="qmax" and int8 codes: the float32 row loop
        combos = [dict(), dict(precision="float32"),
                  dict(precision="float32", scale_op="reciprocal", rounding="half_away"),
                  dict(scale_op="reciprocal", precision="float32", zero_point_stage="fused"),
                  dict(rounding="half_away", clamp_stage="before_rounding", overflow="wrap"),
                  dict(rounding="half_up"), dict(rounding="half_down"), dict(rounding="half_zero"),
                  dict(rounding="floor"), dict(rounding="ceil"), dict(rounding="trunc")]
        for kw in combos:
            for ax, bs, ss, zz in ((None, None, 0.3, 2), (1, 3, s, z), (2, None, s[0, 0], z[0, 0])):
                a = quantize(x, ss, zz, axis=ax, block_size=bs, nan="qmax", backend="cpu", **kw)
                b = quantize(x, ss, zz, axis=ax, block_size=bs, nan="qmax", backend="numpy", **kw)
                assert np.array_equal(a, b), kw
        q = quantize(x, s, z, axis=1, block_size=3, nan="zero")
        for prec in ("exact", "float32"):
            for odt in (np.float32, np.float64):
                a = dequantize(q, s, z, axis=1, block_size=3, precision=prec, out_dtype=odt,
                               backend="cpu")
                b = dequantize(q, s, z, axis=1, block_size=3, precision=prec, out_dtype=odt,
                               backend="numpy")
                assert np.array_equal(a.view(np.uint8), b.view(np.uint8)), (prec, odt)
        for xd in (x, x.astype(np.float16), x.astype("bfloat16") if False else x):
            for ax, bs in ((None, None), (1, None), (1, 3), (2, 4)):
                a = minmax_range(np.nan_to_num(xd, nan=1.0), axis=ax, block_size=bs, backend="cpu")
                b = minmax_range(np.nan_to_num(xd, nan=1.0), axis=ax, block_size=bs,
                                 backend="numpy")
                assert all(np.array_equal(u, v) and u.dtype == v.dtype for u, v in zip(a, b))
        bf = x.astype(__import__("ml_dtypes").bfloat16)
        assert np.array_equal(quantize(bf, 0.3, nan="zero", backend="cpu"),
                              quantize(bf, 0.3, nan="zero", backend="numpy"))
        h = x.astype(np.float16)
        assert np.array_equal(quantize(h, 0.3, nan="zero", backend="cpu"),
                              quantize(h, 0.3, nan="zero", backend="numpy"))
        print("ok")
    """))
    assert out.strip() == "ok"


def _run_python(code, env):
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                       text=True, env={**os.environ, **env}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_a_second_process_loads_the_affine_kernels_from_the_disk_cache():
    code = """
        import json, sys
        import numpy as np
        import refquant
        assert "numba" not in sys.modules  # nothing compiles or even loads at import
        x = np.ones((4, 33), np.float32)
        refquant.quantize(x, 0.5, 1, backend="cpu")
        refquant.dequantize(x.astype(np.int8), 0.5, 1, backend="cpu")  # float32 product
        refquant.dequantize(x.astype(np.int32), 0.5, 1, backend="cpu")  # the exact product
        refquant.quant.qparams.minmax_range(x, axis=1, backend="cpu")
        from refquant.kernels.cpu import affine
        ks = [affine.quantize_kernel(0, False, 0, 0, False, 0, 0),
              affine.dequantize_kernel(True, False, False),
              affine.dequantize_kernel(False, False, False), affine.minmax_kernel]
        print(json.dumps([[sum(k.stats.cache_hits.values()), sum(k.stats.cache_misses.values())]
                          for k in ks]))
    """
    _run_python(code, {})  # writes the cache if this checkout has none yet
    stats = json.loads(_run_python(code, {}).strip().splitlines()[-1])
    assert stats == [[1, 0]] * 4


def _peer_input(rows=32, cols=4096):
    """Weights large enough for backend="auto" to run the kernels, with exact ties, NaN, ±Inf,
    ±float32 max and subnormals sprinkled in."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((rows, cols)) * 3).astype(np.float32)
    assert x.size >= KERNEL_THRESHOLD
    flat = x.reshape(-1)
    idx = rng.choice(flat.size, 64, replace=False)
    flat[idx] = np.array([np.nan, np.inf, -np.inf, 3.4028235e38, -3.4028235e38, 1e-45, -0.0,
                          2.0**-130] * 8, np.float32)
    flat[rng.choice(flat.size, 500, replace=False)] = (np.arange(500) - 250 + 0.5) * 0.0625
    return x


def test_torch_agrees_with_the_kernel_path_at_kernel_size():
    th = import_peer("torch")
    from refquant.compat import torch as ct

    x = _peer_input()
    # NaN and ±Inf included: torch's codes for them are part of the semantics
    for name, tdt in (("quint8", th.quint8), ("qint8", th.qint8)):
        want = th.quantize_per_tensor(th.from_numpy(x), 0.0625, 3 if name == "quint8" else 0,
                                      tdt).int_repr().numpy()
        got = ct.quantize_per_tensor(x, 0.0625, 3 if name == "quint8" else 0, name)
        np.testing.assert_array_equal(got, want)
    s = np.linspace(0.01, 0.2, x.shape[0])
    want = th.quantize_per_channel(th.from_numpy(x), th.from_numpy(s),
                                   th.zeros(x.shape[0], dtype=th.int64), 0,
                                   th.qint8).int_repr().numpy()
    np.testing.assert_array_equal(ct.quantize_per_channel(x, s, np.zeros(x.shape[0], np.int64),
                                                          0, "qint8"), want)


def test_onnxruntime_agrees_with_the_kernel_path_at_kernel_size():
    ort = import_peer("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    from refquant.compat import onnx as co

    x = _peer_input()
    cases = [(np.float32(0.0625), np.uint8(3), {}),
             (np.linspace(0.01, 0.2, x.shape[0]).astype(np.float32),
              np.arange(x.shape[0]).astype(np.int8), {"axis": 0}),
             (np.full((x.shape[0], x.shape[1] // 100 + 1), 0.05, np.float32),
              np.zeros((x.shape[0], x.shape[1] // 100 + 1), np.int8), {"axis": 1,
                                                                      "block_size": 100})]
    for s, z, attrs in cases:
        ztype = TensorProto.UINT8 if z.dtype == np.uint8 else TensorProto.INT8
        graph = helper.make_graph(
            [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], **attrs)], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
            [helper.make_tensor_value_info("y", ztype, x.shape)],
            initializer=[numpy_helper.from_array(s, "s"), numpy_helper.from_array(z, "z")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
        model.ir_version = 10
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        want = sess.run(None, {"x": x})[0]
        got = co.quantize_linear(x, s, z, **attrs)
        np.testing.assert_array_equal(got, want)
        deq = co.dequantize_linear(got, s, z, **attrs)
        dgraph = helper.make_graph(
            [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **attrs)], "g",
            [helper.make_tensor_value_info("q", ztype, x.shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)],
            initializer=[numpy_helper.from_array(s, "s"), numpy_helper.from_array(z, "z")])
        dmodel = helper.make_model(dgraph, opset_imports=[helper.make_opsetid("", 21)])
        dmodel.ir_version = 10
        dsess = ort.InferenceSession(dmodel.SerializeToString(), providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(deq.view(np.uint32),
                                      dsess.run(None, {"q": got})[0].view(np.uint32))


def test_no_contracted_fma_where_the_reference_rounds_twice():
    """fastmath stays off: a float32 multiply then add (scale_op="reciprocal" with the zero
    point before rounding) and Dekker's exact product in dequantize are separate roundings;
    only zero_point_stage="fused" asks for the fma."""
    import re

    from numba import njit

    from refquant.kernels.cpu import affine as kern

    def asm(kernel, *args):
        fresh = njit(error_model="numpy", nogil=True)(kernel.py_func)  # cached code has no asm
        fresh(*args)
        return fresh.inspect_asm(fresh.signatures[0])

    p = [np.ones((1, 1, 1), t) for t in (np.float32, np.float32, np.float32, np.float64,
                                         np.float64, np.float64, np.int64)]
    x, out = np.ones(8, np.float32), np.empty(8, np.int8)
    fma = re.compile(r"\bv?f(n?)m(add|sub)\w*")
    two = asm(kern.quantize_kernel(0, True, 1, 1, False, 0, 0), x, out, 1, 8, 1, 8, *p, -128,
              127, -128, 256, False, 0, 0, 1)
    assert not fma.search(two)
    fused = asm(kern.quantize_kernel(0, True, 1, 2, False, 0, 0), x, out, 1, 8, 1, 8, *p, -128,
                127, -128, 256, False, 0, 0, 1)
    assert fma.search(fused)
    dq = asm(kern.dequantize_kernel(False, False, False), out, np.empty(8, np.float32), 1, 8, 1,
             8, np.ones((1, 1, 1)), np.zeros((1, 1, 1), np.int64), 0, 1)
    assert not fma.search(dq)


def test_run_tasks_runs_every_task_once_whichever_thread_claims_it(monkeypatch):
    """run_tasks hands out chunks dynamically: every task runs exactly once, the flags of all
    chunks are OR-ed, and a big call gives the same codes on 1, 2 and 3 threads."""
    import threading

    import numba

    from refquant.kernels.cpu import affine as kern

    ran, lock = [], threading.Lock()

    def kernel(tag, t0, t1):
        with lock:
            ran.extend(range(t0, t1))
        return (4 if t0 == 0 else 0) | (8 if t1 == 1000 else 0)

    monkeypatch.setattr(numba, "get_num_threads", lambda: 3)
    assert kern.run_tasks(kernel, 1000, 1 << 22, "x") == 12
    assert sorted(ran) == list(range(1000))
    ran.clear()
    assert kern.run_tasks(kernel, 1000, kern.PARALLEL_MIN - 1, "x") == 12  # one thread
    assert sorted(ran) == list(range(1000))
    monkeypatch.undo()

    x = np.random.default_rng(5).standard_normal(kern.PARALLEL_MIN * 3).astype(np.float32)
    before = numba.get_num_threads()
    try:
        outs = []
        for n in range(1, min(3, numba.config.NUMBA_NUM_THREADS) + 1):
            numba.set_num_threads(n)
            outs.append(quantize(x, 0.01, 3, backend="cpu", axis=None))
    finally:
        numba.set_num_threads(before)
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
    np.testing.assert_array_equal(outs[0], quantize(x, 0.01, 3, backend="numpy"))


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_quantize_writes_into_out(backend):
    x = np.random.default_rng(8).standard_normal((300, 257)).astype(np.float32)
    want = quantize(x, 0.02, 3, axis=None, backend="numpy")
    buf = np.full(x.shape, 99, np.int8)
    got = quantize(x, 0.02, 3, out=buf, backend=backend)
    assert got is buf
    np.testing.assert_array_equal(buf, want)
    blocked = quantize(x, np.full((300, 3), 0.05), 0, axis=1, block_size=128, dtype="int4",
                       backend="numpy")
    buf4 = np.empty(x.shape, np.int8)
    assert quantize(x, np.full((300, 3), 0.05), 0, axis=1, block_size=128, dtype="int4",
                    out=buf4, backend=backend) is buf4
    np.testing.assert_array_equal(buf4, blocked)
    for bad, match in ((np.empty((300, 256), np.int8), "shape"),
                       (np.empty(x.shape, np.int16), "dtype"),
                       (np.empty((257, 300), np.int8).T, "C-contiguous"),
                       ([0] * 5, "numpy.ndarray")):
        with pytest.raises(RefquantError, match=match):
            quantize(x, 0.02, out=bad, backend=backend)
    ro = np.empty(x.shape, np.int8)
    ro.flags.writeable = False
    with pytest.raises(RefquantError, match="writeable"):
        quantize(x, 0.02, out=ro, backend=backend)
    xi = np.arange(64, dtype=np.int8)
    with pytest.raises(RefquantError, match="shares memory"):
        quantize(xi, 1.0, out=xi, backend=backend)


@settings(deadline=None, max_examples=200)
@given(data=st.data())
def test_minmax_lanes_on_long_groups_of_zeros_nan_and_inf(data):
    """Groups longer than the kernel's 64 lanes, of zeros of both signs, NaN, Inf and a few
    other values: the reference's values (a zero's sign is the CPU's: NumPy's
    minimum.reduce leaves it to its SIMD loop, so it is not compared)."""
    rows = data.draw(st.integers(1, 3))
    cols = data.draw(st.integers(0, 300))
    x = data.draw(hnp.arrays(np.float32, (rows, cols), elements=st.sampled_from(
        [0.0, -0.0, 0.0, -0.0, np.nan, 1.5, -2.0, np.inf])))
    for axis in (None, 0):
        if axis is None and rows * cols == 0:
            continue
        try:
            want = minmax_range(x, axis=axis, backend="numpy")
        except RefquantError:
            with pytest.raises(RefquantError):
                minmax_range(x, axis=axis, backend="cpu")
            continue
        got = minmax_range(x, axis=axis, backend="cpu")
        for g, w in zip(got, want, strict=True):
            assert g.dtype == w.dtype and g.shape == w.shape
            np.testing.assert_array_equal(g, w)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_dequantize_float32_scales_of_small_codes_take_the_float32_product(data):
    """int8 / uint8 / int16 codes, integer zero points and float32 scales: the kernel's
    float32 product (exact difference, one rounding) is the reference's exact product
    rounded once, subnormal and overflowing scales included."""
    qdt = data.draw(st.sampled_from([np.int8, np.uint8, np.int16, np.bool_]))
    rows, cols = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 300))
    info = np.iinfo(np.uint8 if qdt is np.bool_ else qdt)
    q = data.draw(hnp.arrays(qdt, (rows, cols), elements=st.booleans() if qdt is np.bool_
                             else st.integers(int(info.min), int(info.max))))
    s = data.draw(hnp.arrays(np.float32, rows, elements=st.floats(
        float(np.float32(1e-45)), float(np.float32(3e38)), width=32) | st.sampled_from(
        [np.float32(1e-45), np.float32(3.0e38), np.float32(1 / 3)])))
    z = data.draw(hnp.arrays(np.int64, rows, elements=st.integers(-1000, 1000)))
    want = dequantize(q, s, z, axis=0, backend="numpy")
    got = dequantize(q, s, z, axis=0, backend="cpu")
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
