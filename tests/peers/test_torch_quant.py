"""refquant.compat.torch and refquant's core bit for bit against PyTorch on the CPU.

Inputs are drawn with hypothesis and always include exact ties x = (k + 1/2)·s
(and their float32 neighbours, where the reciprocal multiply and the fused
multiply-add decide), values far outside the range, ±Inf and NaN (where torch
defines a result), lengths that are not a multiple of the SIMD width, and
per-channel tensors on every axis. Observers see several batches, with ranges
that grow, shrink and stay.

Every comparison is exact: codes equal, float results equal bit for bit
(``view(uint32)``), dtypes and shapes equal.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
from helpers import import_peer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refquant import RefquantError
from refquant.compat import torch as rt
from refquant.quant.affine import quantize
from refquant.quant.calibration import TorchHistogram, calibrate_range

pytestmark = pytest.mark.peer

SETTINGS = settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
F = np.float32
QDTYPES = ("quint8", "qint8", "qint32")


@functools.cache
def _torch():
    t = import_peer("torch")
    warnings.filterwarnings("ignore", message=".*deprecated.*")
    return t


@pytest.fixture(scope="module", autouse=True)
def torch():
    return _torch()


def _tdtype(name):
    return getattr(_torch(), name)


def _same(actual, desired):
    """Exact equality: dtype, shape and bits (NaN bit patterns compared as floats)."""
    a, d = np.asarray(actual), np.asarray(desired)
    assert a.dtype == d.dtype, (a.dtype, d.dtype)
    assert a.shape == d.shape, (a.shape, d.shape)
    if a.dtype.kind == "f":
        bad = ~((a == d) & (np.signbit(a) == np.signbit(d)) | (np.isnan(a) & np.isnan(d)))
    else:
        bad = a != d
    if bad.any():
        i = np.flatnonzero(bad.reshape(-1))[:5]
        raise AssertionError(
            f"{int(bad.sum())} / {a.size} differ; first at {i.tolist()}: "
            f"refquant {a.reshape(-1)[i].tolist()} torch {d.reshape(-1)[i].tolist()}"
        )


# ------------------------------------------------------------------ strategies

SCALES = st.one_of(
    st.sampled_from([0.5, 0.25, 1.0, 0.1, 0.3, 0.007, 2.0**-10, 0.00214854861, 3.0]),
    st.floats(1e-4, 10.0).map(lambda v: float(F(v))),
)


@st.composite
def tensors(draw, scale, n_min=1, n_max=70, special=True):
    """float32 values: exact ties (k + 1/2)·s, their neighbours, far values, ±Inf, NaN.

    ``scale`` is one scale, or one per element (then ``n_min == n_max == scale.size``):
    per-channel cases pass each element its own channel's scale, so every channel gets ties.
    """
    n = draw(st.integers(n_min, n_max))
    sc = np.asarray(scale, F).astype(np.float64)
    assert sc.ndim == 0 or sc.shape == (n,), (sc.shape, n)
    k = np.array(draw(st.lists(st.integers(-400, 400), min_size=n, max_size=n)), np.float64)
    kind = np.array(draw(st.lists(st.integers(0, 9), min_size=n, max_size=n)))
    x = ((k + 0.5) * sc).astype(F)  # ties (as float32 allows)
    x = np.where(kind == 1, np.nextafter(x, F(np.inf)), x)
    x = np.where(kind == 2, np.nextafter(x, F(-np.inf)), x)
    x = np.where(kind == 3, (k * sc).astype(F), x)
    if special:
        x = np.where(kind == 4, F(1e30) * np.sign(k + 0.5).astype(F), x)
        x = np.where(kind == 5, F(3e9) * np.sign(k + 0.5).astype(F), x)
        x = np.where(kind == 6, F(np.inf) * np.sign(k + 0.5).astype(F), x)
        x = np.where(kind == 7, F(np.nan), x)
    return x.astype(F)


@st.composite
def per_tensor_case(draw, dtypes=QDTYPES):
    name = draw(st.sampled_from(dtypes))
    s = draw(SCALES)
    lo, hi = rt.DTYPES[name][:2]
    z = draw(st.integers(max(lo, -2000), min(hi, 2000)))
    return name, s, z, draw(tensors(s))


@st.composite
def per_channel_case(draw, dtypes=QDTYPES, float_zp=False):
    name = draw(st.sampled_from(dtypes))
    ndim = draw(st.integers(1, 3))
    shape = draw(st.lists(st.integers(1, 5), min_size=ndim, max_size=ndim))
    axis = draw(st.integers(0, ndim - 1))
    s = draw(st.lists(SCALES, min_size=shape[axis], max_size=shape[axis]))
    lo, hi = rt.DTYPES[name][:2]
    z = draw(
        st.lists(
            st.integers(max(lo, -2000), min(hi, 2000)), min_size=shape[axis], max_size=shape[axis]
        )
    )
    n = int(np.prod(shape))
    per_element = np.broadcast_to(
        np.array(s).reshape([-1 if d == axis else 1 for d in range(ndim)]), shape).ravel()
    x = draw(tensors(per_element, n_min=n, n_max=n)).reshape(shape)
    return name, np.array(s), np.array(z), axis, x


# ------------------------------------------------------------------ the issue's example


def test_core_reciprocal_float32_equals_torch_on_the_issue_example(torch):
    x = np.array([0.273939937], F)
    s = 0.00214854861
    for name in ("quint8", "qint32"):
        t = torch.quantize_per_tensor(torch.from_numpy(x), s, 0, _tdtype(name)).int_repr()
        assert int(t[0]) == 128
    core = quantize(x, s, dtype="uint8", scale_op="reciprocal", precision="float32")
    assert int(core[0]) == 128
    assert int(quantize(x, s, dtype="uint8")[0]) == 127  # dividing (ONNX) gives 127


def test_fused_multiply_add_case_matches_torch(torch):
    x = np.array([F(-127.5 + 2.0**-16)])
    s = float(F(1 - 2.0**-23))
    for name in ("quint8", "qint32"):
        t = torch.quantize_per_tensor(torch.from_numpy(x), s, 128, _tdtype(name)).int_repr()
        _same(rt.quantize_per_tensor(x, s, 128, name), t.numpy())


# ------------------------------------------------------------------ quantize / dequantize


@SETTINGS
@given(per_tensor_case(dtypes=("quint8", "qint8", "qint32", "quint4x2")))
def test_quantize_per_tensor_bit_exact(case):
    torch = _torch()
    name, s, z, x = case
    qt = torch.quantize_per_tensor(torch.from_numpy(x), s, z, _tdtype(name))
    q = rt.quantize_per_tensor(x, s, z, name)
    if name == "quint4x2":  # torch packs two codes per byte, low nibble first
        q8 = q.astype(np.uint8)
        q8 = np.append(q8, np.uint8(0)) if q8.size % 2 else q8
        packed = (q8[0::2] | (q8[1::2] << 4)).astype(np.uint8)
        _same(packed, qt.int_repr().numpy())
        return
    _same(q, qt.int_repr().numpy())
    _same(rt.dequantize(q, s, z, dtype=name), qt.dequantize().numpy())


@SETTINGS
@given(per_channel_case())
def test_quantize_per_channel_and_dequantize_bit_exact(case):
    torch = _torch()
    name, s, z, axis, x = case
    qt = torch.quantize_per_channel(
        torch.from_numpy(x), torch.from_numpy(s), torch.from_numpy(z), axis, _tdtype(name)
    )
    q = rt.quantize_per_channel(x, s, z, axis, name)
    _same(q, qt.int_repr().numpy())
    _same(rt.dequantize(q, s, z, axis=axis, dtype=name), qt.dequantize().numpy())


@SETTINGS
@given(st.sampled_from(QDTYPES), SCALES, st.integers(0, 60), st.data())
def test_dequantize_of_arbitrary_codes_bit_exact(name, s, n, data):
    torch = _torch()
    lo, hi, storage = rt.DTYPES[name]
    q = np.array(data.draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n)), storage)
    z = data.draw(st.integers(max(lo, -2000), min(hi, 2000)))
    qt = torch._make_per_tensor_quantized_tensor(torch.from_numpy(q), s, z)
    _same(rt.dequantize(q, s, z, dtype=name), qt.dequantize().numpy())


# ------------------------------------------------------------------ fake quantize

RANGES = st.sampled_from([(0, 255), (-128, 127), (0, 15), (-8, 7), (0, 1), (-3, 3), (5, 5)])


@SETTINGS
@given(SCALES, RANGES, st.data())
def test_fake_quantize_per_tensor_affine_bit_exact(s, rng_, data):
    torch = _torch()
    qmin, qmax = rng_
    z = data.draw(st.integers(qmin, qmax))
    x = data.draw(tensors(s))
    want = torch.fake_quantize_per_tensor_affine(torch.from_numpy(x), s, z, qmin, qmax).numpy()
    _same(rt.fake_quantize_per_tensor_affine(x, s, z, qmin, qmax), want)


@SETTINGS
@given(per_channel_case(dtypes=("quint8",)), RANGES, st.booleans(), st.data())
def test_fake_quantize_per_channel_affine_bit_exact(case, rng_, float_zp, data):
    torch = _torch()
    _, s, _, axis, x = case
    qmin, qmax = rng_
    c = x.shape[axis]
    z = np.array(data.draw(st.lists(st.integers(qmin, qmax), min_size=c, max_size=c)), np.int32)
    if float_zp:
        off = data.draw(st.lists(st.sampled_from([0.0, 0.5, -0.5, 0.25]), min_size=c, max_size=c))
        z = np.clip(z + np.array(off), qmin, qmax).astype(F)
    s32 = s.astype(F)
    want = torch.fake_quantize_per_channel_affine(
        torch.from_numpy(x), torch.from_numpy(s32), torch.from_numpy(z), axis, qmin, qmax
    ).numpy()
    _same(rt.fake_quantize_per_channel_affine(x, s32, z, axis, qmin, qmax), want)


@SETTINGS
@given(SCALES, RANGES, st.floats(-10, 300), st.data())
def test_learnable_fake_quantize_forward_bit_exact(s, rng_, zf, data):
    torch = _torch()
    qmin, qmax = rng_
    x = data.draw(tensors(s))
    want = torch._fake_quantize_learnable_per_tensor_affine(
        torch.from_numpy(x), torch.tensor([s]), torch.tensor([zf]), qmin, qmax, 1.0
    ).numpy()
    _same(rt.fake_quantize_learnable_per_tensor_affine(x, [s], [zf], qmin, qmax), want)


# ------------------------------------------------------------------ observers


@st.composite
def batches(draw, shape=None, nmax=4):
    """Several float32 batches whose range grows, shrinks or stays the same."""
    k = draw(st.integers(1, nmax))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    out = []
    for i in range(k):
        sh = shape if shape is not None else (int(rng.integers(1, 300)),)
        mode = draw(st.sampled_from(["t", "grow", "same", "pos", "const"]))
        if mode == "same" and out and out[-1].shape == sh:
            out.append(out[-1][::-1].copy())
            continue
        x = rng.standard_t(3, size=sh) * rng.uniform(0.01, 10) + rng.normal()
        if mode == "grow":
            x = x * (3.0 ** (i + 1))
        elif mode == "pos":
            x = np.abs(x)
        elif mode == "const":
            x = np.full(sh, rng.normal())
        out.append(x.astype(F))
    return out


def _obs_kwargs(draw, name, qscheme):
    kw = {}
    symmetric = qscheme.endswith("symmetric")
    if name != "qint32" and draw(st.booleans()) and not (symmetric and name == "quint8"):
        kw["reduce_range"] = True
    if name != "qint32" and draw(st.integers(0, 3)) == 0:
        kw["quant_min"], kw["quant_max"] = (0, 15) if name == "quint8" else (-8, 7)
    return kw


def _compare_observer(cls_name, kw, xs, per_channel_kw=None):
    torch = _torch()
    from torch.ao.quantization import observer as tobs

    tkw = dict(kw)
    tkw["dtype"] = _tdtype(kw["dtype"])
    tkw["qscheme"] = getattr(torch, kw["qscheme"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = getattr(tobs, cls_name)(**tkw)
        r = getattr(rt, cls_name)(**kw)
        for x in xs:
            t(torch.from_numpy(x))
            assert r.forward(x) is x
        try:
            ts, tz = t.calculate_qparams()
        except AssertionError as e:
            # a moving average can leave min > max (float32 rounding); torch asserts
            assert "should be less than max" in str(e)
            with pytest.raises(RefquantError, match="should be less than max"):
                r.calculate_qparams()
            return
        rs, rz = r.calculate_qparams()
    _same(rs, ts.numpy())
    _same(rz, tz.numpy())


@SETTINGS
@given(
    st.sampled_from(["MinMaxObserver", "MovingAverageMinMaxObserver"]),
    st.sampled_from(QDTYPES),
    st.sampled_from(["per_tensor_affine", "per_tensor_symmetric"]),
    st.floats(0.01, 1.0),
    batches(),
    st.data(),
)
def test_per_tensor_observers_bit_exact(cls_name, name, qscheme, c, xs, data):
    kw = {"dtype": name, "qscheme": qscheme, **_obs_kwargs(data.draw, name, qscheme)}
    if cls_name.startswith("MovingAverage"):
        kw["averaging_constant"] = c
    _compare_observer(cls_name, kw, xs)


@SETTINGS
@given(
    st.sampled_from(["PerChannelMinMaxObserver", "MovingAveragePerChannelMinMaxObserver"]),
    st.sampled_from(QDTYPES),
    st.sampled_from(
        ["per_channel_affine", "per_channel_symmetric", "per_channel_affine_float_qparams"]
    ),
    st.floats(0.01, 1.0),
    st.lists(st.integers(1, 4), min_size=2, max_size=3),
    st.data(),
)
def test_per_channel_observers_bit_exact_on_every_axis(cls_name, name, qscheme, c, shape, data):
    ch_axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    xs = data.draw(batches(shape=tuple(shape)))
    kw = {"dtype": name, "qscheme": qscheme, "ch_axis": ch_axis}
    if qscheme != "per_channel_affine_float_qparams":
        kw.update(_obs_kwargs(data.draw, name, qscheme))
    if cls_name.startswith("MovingAverage"):
        kw["averaging_constant"] = c
    _compare_observer(cls_name, kw, xs)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["quint8", "qint8"]),
    st.sampled_from(["per_tensor_affine", "per_tensor_symmetric"]),
    batches(nmax=4),
    st.data(),
)
def test_histogram_observer_bit_exact_over_growing_batches(name, qscheme, xs, data):
    kw = {"dtype": name, "qscheme": qscheme, **_obs_kwargs(data.draw, name, qscheme)}
    _compare_observer("HistogramObserver", kw, xs)


def test_histogram_state_matches_torch_after_every_batch(torch):
    from torch.ao.quantization import HistogramObserver

    rng = np.random.default_rng(11)
    t, r = HistogramObserver(), TorchHistogram()
    for scale in (1.0, 0.5, 4.0, 4.0, 20.0):
        x = (rng.standard_t(2, size=700) * scale).astype(F)
        t(torch.from_numpy(x))
        r.update(x)
        _same(r.histogram, t.histogram.numpy())
        assert (r.min_val, r.max_val) == (t.min_val.item(), t.max_val.item())
    nmin, nmax = t._non_linear_param_search()
    assert r.search() == (F(nmin.item()), F(nmax.item()))


def test_histogram_calibration_method_equals_torch_observer(torch):
    from torch.ao.quantization import HistogramObserver

    x = np.random.default_rng(12).standard_t(2, size=3000).astype(F)
    t = HistogramObserver()
    t(torch.from_numpy(x))
    nmin, nmax = t._non_linear_param_search()
    lo, hi = calibrate_range(x, "histogram", dtype="uint8", symmetric=False)
    assert (float(lo), float(hi)) == (nmin.item(), nmax.item())


@pytest.mark.parametrize("name", QDTYPES)
@pytest.mark.parametrize("qscheme", ["per_tensor_affine", "per_tensor_symmetric"])
def test_nan_and_empty_observer_qparams_match_torch(name, qscheme):
    _compare_observer("MinMaxObserver", {"dtype": name, "qscheme": qscheme}, [])
    x = np.array([1.0, np.nan, -2.0], F)
    _compare_observer("MinMaxObserver", {"dtype": name, "qscheme": qscheme}, [x])


def test_float_zero_point_fake_quant_rounds_a_fused_multiply_add():
    # x * float32(1/s) = -28.5000003 exactly, which rounds to -28.5 in float32; with
    # z = 30 the fused x * (1/s) + z = 1.4999997 rounds to 1, the product rounded
    # first gives exactly 1.5 and then 2 (half to even)
    torch = _torch()
    s = np.array([0.0092148], np.float32)
    z = np.array([30.0], np.float32)
    x = np.array([[-0.2626218]], np.float32)
    assert np.float32(x[0, 0] * (np.float32(1) / s[0])) == np.float32(-28.5)
    want = torch.fake_quantize_per_channel_affine(
        torch.from_numpy(x), torch.from_numpy(s), torch.from_numpy(z), 0, 0, 255
    ).numpy()
    got = rt.fake_quantize_per_channel_affine(x, s, z, 0, 0, 255)
    _same(got, want)
    assert got[0, 0] == np.float32((1 - 30) * np.float64(s[0]))


def test_half_zero_point_fake_quant_rounds_the_product_first():
    # x * float32(1/s) rounds to exactly 49.5; with a float16 zero point -54 torch
    # adds it to the rounded product (-4.5 -> -4, half to even: code 50), where the
    # fused multiply-add of a float32 zero point gives -4.500001 -> -5 (code 49)
    torch = _torch()
    s = np.array([0.0015996582], F)
    x = np.array([[0.07918308]], F)
    assert F(x[0, 0] * (F(1) / s[0])) == F(49.5)
    for zdt, code in ((np.float16, 50), (np.float32, 49)):
        z = np.array([-54.0], zdt)
        want = torch.fake_quantize_per_channel_affine(
            torch.from_numpy(x), torch.from_numpy(s), torch.from_numpy(z), 0, -128, 127
        ).numpy()
        got = rt.fake_quantize_per_channel_affine(x, s, z, 0, -128, 127)
        _same(got, want)
        assert got[0, 0] == F(code * np.float64(s[0]))


@pytest.mark.parametrize("qrange", [(-(2**31), 2**31 - 1), (0, 2**31 - 1), (-(2**24), 2**26)])
def test_fake_quantize_with_32_bit_ranges_bit_exact(qrange):
    # codes above 2^24: torch adds the zero point in float32 (z + nearbyint(x/s))
    torch = _torch()
    qmin, qmax = qrange
    rng = np.random.default_rng(7)
    for s, z in ((F(0.0027255071), 47945767), (F(1.7), 7), (F(5.17), -1000)):
        z = min(max(z, qmin), qmax)
        x = (rng.uniform(-1, 1, 500) * float(s) * 2.0**rng.uniform(10, 33, 500)).astype(F)
        want = torch.fake_quantize_per_tensor_affine(torch.from_numpy(x), float(s), z, qmin, qmax)
        _same(rt.fake_quantize_per_tensor_affine(x, float(s), z, qmin, qmax), want.numpy())
        zc = np.array([z], np.int32)
        want = torch.fake_quantize_per_channel_affine(
            torch.from_numpy(x.reshape(1, -1)), torch.tensor([s]), torch.from_numpy(zc), 0, qmin, qmax
        )
        got = rt.fake_quantize_per_channel_affine(x.reshape(1, -1), np.array([s]), zc, 0, qmin, qmax)
        _same(got, want.numpy())


@pytest.mark.parametrize("name", QDTYPES)
@pytest.mark.parametrize("qscheme", ["per_tensor_affine", "per_tensor_symmetric"])
@pytest.mark.parametrize("eps", [F(np.finfo(F).eps), 0.0])
def test_infinite_and_zero_observer_ranges_match_torch(name, qscheme, eps):
    kw = {"dtype": name, "qscheme": qscheme, "eps": float(eps)}
    for xs in ([[1.0, np.inf, -2.0]], [[1.0, -np.inf]], [[-np.inf, np.inf]], [[0.0, 0.0]],
               [[-0.0]], [[2.0, 3.0], [np.inf]]):
        _compare_observer("MinMaxObserver", kw, [np.array(x, F) for x in xs])


@pytest.mark.parametrize("qscheme", ["per_channel_affine", "per_channel_affine_float_qparams"])
def test_per_channel_observer_with_nan_and_inf_channels_matches_torch(qscheme):
    x = np.array([[1.0, np.nan], [1.0, 3.0], [-np.inf, 2.0], [0.5, np.inf]], F)
    kw = {"dtype": "quint8", "qscheme": qscheme, "ch_axis": 0}
    _compare_observer("PerChannelMinMaxObserver", kw, [x])
    kw["averaging_constant"] = 0.5
    _compare_observer("MovingAveragePerChannelMinMaxObserver", kw, [x[::-1].copy(), x])


@pytest.mark.parametrize("dtype", ["float64", "float16", "bfloat16"])
def test_fake_quantize_of_float64_float16_bfloat16_inputs_bit_exact(dtype):
    import ml_dtypes

    torch = _torch()
    npdt = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    rng = np.random.default_rng(3)
    s = np.array([0.0123, 0.5, 0.07, 3.0], F)
    k = rng.integers(-300, 300, (4, 50))
    x = (k + 0.5) * s[:, None].astype(np.float64) * (1 + rng.choice([0, 1e-9, -1e-9], (4, 50)))
    x[0, :3] = [np.nan, np.inf, -np.inf]
    x = x.astype(npdt)

    def tt(a):
        if dtype == "bfloat16":
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(a)

    def back(t):
        return t.view(torch.int16).numpy().view(npdt) if dtype == "bfloat16" else t.numpy()

    want = back(torch.fake_quantize_per_tensor_affine(tt(x), 0.0123, 3, 0, 255))
    _same(rt.fake_quantize_per_tensor_affine(x, 0.0123, 3, 0, 255).view(want.dtype), want)
    for z in (np.array([3, 0, 250, 9], np.int32), np.array([3.5, 0, 2.25, 9], F),
              np.array([3.5, 0, 2.5, 9], np.float16)):
        want = back(
            torch.fake_quantize_per_channel_affine(tt(x), torch.from_numpy(s), torch.from_numpy(z), 0, 0, 255)
        )
        got = rt.fake_quantize_per_channel_affine(x, s, z, 0, 0, 255)
        _same(got.view(want.dtype), want)


@pytest.mark.filterwarnings("ignore:Please use quant_min")
@pytest.mark.parametrize("cls_name", ["MinMaxObserver", "PerChannelMinMaxObserver", "HistogramObserver"])
@pytest.mark.parametrize(
    "name,qrange,reduce",
    [("quint8", (-64, 300), False), ("qint8", (-127, 128), False), ("qint8", (0, 1), True),
     ("quint8", (0, 7), True), ("quint8", None, True), ("qint32", (-5, 2**31 - 1), False)],
)
def test_observer_custom_ranges_torch_accepts_give_torchs_qparams(cls_name, name, qrange, reduce):
    # torch checks a custom range against 256 (2^32) codes only, not against the dtype,
    # reduce_range may leave quant_min == quant_max, and HistogramObserver alone takes
    # quint8 + symmetric + reduce_range: refquant raised RefquantError on all of them
    if cls_name == "HistogramObserver" and name == "qint32":
        return
    pc = cls_name.startswith("PerChannel")
    x = np.random.default_rng(5).normal(0.3, 2.0, (3, 40)).astype(F)
    for qscheme in ("affine", "symmetric"):
        kw = {"dtype": name, "qscheme": ("per_channel_" if pc else "per_tensor_") + qscheme,
              "reduce_range": reduce}
        if qrange is not None:
            kw["quant_min"], kw["quant_max"] = qrange
        if reduce and name == "quint8" and qscheme == "symmetric" and not cls_name.startswith("Hist"):
            with pytest.raises(RefquantError, match="Cannot reduce range"):
                getattr(rt, cls_name)(**kw)
            continue
        _compare_observer(cls_name, kw, [x, x[::-1].copy() * 2])


_FLOAT_QPARAM_SPECIALS = [np.nan, np.inf, -np.inf, 3e9, -3e9, 2.2e9, 1e19, -1e19, 2.0**55,
                          2.0**54 + 512, 0.5, -0.5, 1.5, 2.5]


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), ax=st.integers(0, 1), dtype=st.sampled_from(["qint8", "quint8"]),
       n_special=st.integers(0, 3), zero_scale=st.booleans(), dyadic=st.booleans(), halves=st.booleans())
def test_quantize_per_channel_float_zero_points_bit_exact(torch, seed, ax, dtype, n_special,
                                                          zero_scale, dyadic, halves):
    # per_channel_affine_float_qparams: the zero point added before rounding, a zero scale
    # read as 1, NaN / Inf / huge values through lrintf's int64 and the int's low 32 bits
    rng = np.random.default_rng(seed)
    c, k = int(rng.integers(1, 4)), int(rng.integers(1, 12))
    x = (rng.standard_normal((c, k) if ax == 0 else (k, c)) * rng.choice([1, 10, 1e3])).astype(F)
    x.flat[rng.integers(0, x.size, n_special)] = rng.choice(_FLOAT_QPARAM_SPECIALS, n_special)
    s = (2.0 ** rng.integers(-4, 3, c)) if dyadic else rng.uniform(0.01, 2, c)
    s = s.astype(F)
    if zero_scale:
        s[0] = 0
    zp = rng.uniform(-300, 300, c).astype(F)
    if halves:
        zp = (np.round(zp * 2) / 2).astype(F)
    tq = torch.quantize_per_channel(torch.from_numpy(x), torch.from_numpy(s.astype(np.float64)),
                                    torch.from_numpy(zp), ax, _tdtype(dtype))
    _same(rt.quantize_per_channel(x, s.astype(np.float64), zp, ax, dtype), tq.int_repr().numpy())
    _same(rt.dequantize(tq.int_repr().numpy(), s, zp, axis=ax, dtype=dtype), tq.dequantize().numpy())


def test_quantize_per_channel_float_zero_points_by_hand(torch):
    # x * 1 + 0.5: 0.5 -> 0 and -0.5 -> -0 (ties to even), 1.5 -> 2; NaN and +Inf -> 0 (lrintf's
    # INT64_MIN keeps no low bits); 3e9 + 0.5 is 3e9 in float32, whose low 32 bits are
    # -1294967296 (clamped to -128); -3e9 -> +1294967296 (clamped to 127)
    x = F([[0.0, -1.0, 1.0, np.nan, np.inf, 3e9, -3e9]])
    want = [[0, 0, 2, 0, 0, -128, 127]]
    assert rt.quantize_per_channel(x, [1.0], F([0.5]), 0, "qint8").tolist() == want
    tq = torch.quantize_per_channel(torch.from_numpy(x), torch.tensor([1.0], dtype=torch.float64),
                                    torch.tensor([0.5]), 0, torch.qint8)
    assert tq.int_repr().tolist() == want
    with pytest.raises(RefquantError, match="SIGILL"):
        rt.quantize_per_channel(x, [1.0], F([0.5]), 0, "qint32")
