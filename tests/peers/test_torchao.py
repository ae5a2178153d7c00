"""refquant.compat.torchao bit for bit against torchao 0.18 (eager, torch CPU).

Inputs come from the compat.torch peer tests' strategies (``SCALES`` and ``tensors``
from test_torch_quant: exact ties (k + 1/2)·s and their float32 neighbours, multiples
of s, far values, ±Inf, NaN), cast to float32, float16 or bfloat16, on per-tensor,
per-channel, per-group and two-axis block sizes; a quantize case draws one scale per
block and places ties on *each* block's own scale. Every mapping type, zero-point
domain, scale dtype and zero-point dtype is drawn. Comparisons are exact: dtype,
shape and bits (NaN compared as NaN).
"""

from __future__ import annotations

import functools
import math
import warnings

import ml_dtypes
import numpy as np
import pytest
from helpers import import_peer
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_torch_quant import SCALES, tensors

from refquant import RefquantError
from refquant.compat import torchao as ao

pytestmark = pytest.mark.peer

SETTINGS = settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
BF16 = np.dtype(ml_dtypes.bfloat16)
FLOATS = ("float32", "float16", "bfloat16")
NP = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16), "bfloat16": BF16}
MAPPINGS = ("SYMMETRIC", "SYMMETRIC_NO_CLIPPING_ERR", "ASYMMETRIC")


@functools.cache
def _peer():
    import_peer("torch")
    warnings.filterwarnings("ignore", message=".*deprecated.*")
    qp = import_peer("torchao.quantization.quant_primitives")
    return qp


@pytest.fixture(scope="module", autouse=True)
def qp():
    return _peer()


def _torch():
    import torch

    return torch


def _t(a):
    """NumPy (ml_dtypes included) to a torch tensor of the same dtype and bits."""
    torch = _torch()
    a = np.ascontiguousarray(a)
    if a.dtype == BF16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    if a.dtype.name.startswith("float8"):
        return torch.from_numpy(a.view(np.uint8)).view(getattr(torch, a.dtype.name))
    return torch.from_numpy(a)


def _n(t):
    torch = _torch()
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(BF16)
    name = str(t.dtype)[6:]
    if name.startswith("float8"):
        return t.view(torch.uint8).numpy().view(getattr(ml_dtypes, name))
    return t.numpy()


def _td(name):
    return getattr(_torch(), name)


def _same(actual, desired):
    a, d = np.asarray(actual), np.asarray(desired)
    assert a.dtype == d.dtype, (a.dtype, d.dtype)
    assert a.shape == d.shape, (a.shape, d.shape)
    if a.dtype.kind == "f" or a.dtype in (BF16,) or a.dtype.name.startswith("float8"):
        af, df = a.astype(np.float64), d.astype(np.float64)
        bad = ~(((af == df) & (np.signbit(af) == np.signbit(df))) | (np.isnan(af) & np.isnan(df)))
    else:
        bad = a != d
    if bad.any():
        i = np.flatnonzero(bad.reshape(-1))[:5]
        raise AssertionError(
            f"{int(bad.sum())} / {a.size} differ; first at {i.tolist()}: refquant "
            f"{a.reshape(-1)[i].tolist()} torchao {d.reshape(-1)[i].tolist()}")


# ------------------------------------------------------------------ strategies


@st.composite
def shapes_and_blocks(draw):
    """A shape and a block_size: per-tensor, per-channel, per-group or two-axis blocks."""
    kind = draw(st.sampled_from(["tensor", "channel", "group", "block2d"]))
    ndim = draw(st.integers(1, 3)) if kind != "block2d" else 2
    shape = draw(st.lists(st.integers(1, 6), min_size=ndim, max_size=ndim))
    if kind == "tensor":
        return tuple(shape), tuple(shape)
    if kind == "channel":
        axis = draw(st.integers(0, ndim - 1))
        block = list(shape)
        block[axis] = 1
        return tuple(shape), tuple(block)
    g = draw(st.sampled_from([1, 2, 4, 8]))
    shape[-1] = g * draw(st.integers(1, 4))
    if kind == "group":
        return tuple(shape), (1,) * (ndim - 1) + (g,)
    g0 = draw(st.sampled_from([1, 2, 3]))
    shape[0] = g0 * draw(st.integers(1, 3))
    return tuple(shape), (g0, g)


def _nblocks(shape, block):
    return tuple(n // b for n, b in zip(shape, block, strict=True))


TARGETS = st.sampled_from([
    ("int8", None, None), ("uint8", None, None), ("int16", None, None), ("int32", None, None),
    ("uint4", None, None), ("int8", -8, 7), ("uint8", 0, 15), ("int8", -127, 127),
    ("int32", 0, 15), ("uint8", 3, 200), ("int16", -1000, 999),
])


@st.composite
def choose_case(draw):
    dt = draw(st.sampled_from(FLOATS))
    shape, block = draw(shapes_and_blocks())
    s = draw(SCALES)
    n = math.prod(shape)
    special = draw(st.booleans())
    x = draw(tensors(s, n_min=n, n_max=n, special=special)).reshape(shape)
    with np.errstate(over="ignore"):
        x = x.astype(NP[dt])
    target = draw(TARGETS)
    eps = draw(st.sampled_from([None, None, 1e-6, float(np.finfo(np.float32).eps), 0.01]))
    sdt = draw(st.sampled_from([None, "float32", "float16", "bfloat16"]))
    zdt = draw(st.sampled_from(["int32", "int8", "int64", "float32", "bfloat16", None]))
    return dt, x, block, target, eps, sdt, zdt


def _both(ours, theirs):
    """Both results, or None where refquant refuses and torchao raises (or casts NaN)."""
    try:
        a = ours()
    except RefquantError as e:
        _check_refusal(e, theirs)
        return None
    return a, theirs()


def _check_refusal(err, theirs):
    """refquant refused: torchao must raise too, or produce an undefined cast (NaN to int)."""
    msg = str(err)
    if "NaN" in msg:  # torch casts NaN to an integer: undefined behaviour, refused here
        return
    assert "reduces nothing" in msg or "float16" in msg or "blocks" in msg, msg
    with pytest.raises((RuntimeError, AssertionError)):
        theirs()


# ------------------------------------------------------------------ choose_qparams_affine


@SETTINGS
@given(choose_case(), st.sampled_from(MAPPINGS), st.booleans())
def test_choose_qparams_affine_bit_exact(case, mapping, keepdim):
    qp = _peer()
    dt, x, block, (tname, qmin, qmax), eps, sdt, zdt = case
    args = (ao.MappingType[mapping], block, tname, qmin, qmax, eps, sdt, zdt, keepdim)

    def peer():
        return qp.choose_qparams_affine(
            _t(x), getattr(qp.MappingType, mapping), block, _td(tname), qmin, qmax, eps,
            None if sdt is None else _td(sdt), None if zdt is None else _td(zdt), keepdim)

    try:
        ours = ao.choose_qparams_affine(x, *args)
    except RefquantError as e:
        _check_refusal(e, peer)
        return
    theirs = peer()
    _same(ours[0], _n(theirs[0]))
    _same(ours[1], _n(theirs[1]))


@SETTINGS
@given(choose_case(), st.sampled_from(["FLOAT", "INT"]))
def test_choose_qparams_that_do_not_preserve_zero_bit_exact(case, domain):
    """FLOAT: ``_choose_qparams_affine_tinygemm``; INT: ``_dont_preserve_zero``."""
    qp = _peer()
    dt, x, block, (tname, qmin, qmax), eps, sdt, zdt = case
    fn = (qp._choose_qparams_affine_tinygemm if domain == "FLOAT"
          else qp._choose_qparams_affine_dont_preserve_zero)
    if domain == "FLOAT" and zdt is not None and not zdt.startswith(("float", "bfloat")):
        zdt = None

    def peer():
        return fn(_t(x), qp.MappingType.ASYMMETRIC, block, _td(tname), qmin, qmax, eps,
                  None if sdt is None else _td(sdt), None if zdt is None else _td(zdt))

    try:
        ours = ao.choose_qparams_affine(x, "ASYMMETRIC", block, tname, qmin, qmax, eps, sdt, zdt,
                                        zero_point_domain=domain, preserve_zero=False)
    except RefquantError as e:
        _check_refusal(e, peer)
        return
    theirs = peer()
    _same(ours[0], _n(theirs[0]))
    _same(ours[1], _n(theirs[1]))


# ------------------------------------------------------------------ quantize / dequantize


@st.composite
def quantize_case(draw, domain):
    """Per-block scales (in a drawn dtype) with ties on each block's own scale."""
    dt = draw(st.sampled_from(FLOATS))
    sdt = draw(st.sampled_from(FLOATS))
    shape, block = draw(shapes_and_blocks())
    nb = _nblocks(shape, block)
    s = np.array(draw(st.lists(SCALES, min_size=math.prod(nb), max_size=math.prod(nb))),
                 np.float32).reshape(nb).astype(NP[sdt])
    s_full = s.astype(np.float64)
    for ax, b in enumerate(block):
        s_full = np.repeat(s_full, b, axis=ax)
    n = math.prod(shape)
    # the compat.torch strategy's kinds, on each element's own block scale
    unit = draw(tensors(1.0, n_min=n, n_max=n, special=draw(st.booleans())))
    unit = unit.astype(np.float64).reshape(shape)
    with np.errstate(over="ignore", invalid="ignore"):
        x = np.where(np.isfinite(unit) & (np.abs(unit) < 1e4),
                     unit * s_full, unit).astype(np.float32)
        x = np.where(draw(st.booleans()), np.nextafter(x, np.float32(np.inf)), x)
        x = x.astype(NP[dt])
    tname, qmin, qmax = draw(TARGETS)
    lo, hi = ao._INT_BOUNDS[tname]
    lo = lo if qmin is None else qmin
    hi = hi if qmax is None else qmax
    if domain == "INT":
        # integer zero points, or integral values in a float dtype (promotion decides the sum)
        zdt = draw(st.sampled_from(["int32", "int8", "int64", "float32", "float16", "bfloat16"]))
        zr = (max(lo, -128), min(hi, 127)) if zdt == "int8" else (max(lo, -3000), min(hi, 3000))
        z = np.array(draw(st.lists(st.integers(*zr), min_size=s.size, max_size=s.size)))
        z = (z.astype(np.float32).astype(NP[zdt]) if zdt in NP else z.astype(zdt)).reshape(nb)
    elif domain == "FLOAT":
        zdt = draw(st.sampled_from(FLOATS))
        z = (np.array(draw(st.lists(st.integers(-40, 40), min_size=s.size, max_size=s.size)))
             .reshape(nb) * s.astype(np.float64) * 0.5).astype(np.float32).astype(NP[zdt])
    else:
        z = None
    return x, block, s, z, (tname, qmin, qmax)


def _q_fn(qp, domain):
    return {"INT": qp.quantize_affine, "FLOAT": qp._quantize_affine_tinygemm,
            "NONE": qp._quantize_affine_no_zero_point}[domain]


def _dq_fn(qp, domain):
    return {"INT": qp.dequantize_affine, "FLOAT": qp._dequantize_affine_tinygemm,
            "NONE": qp._dequantize_affine_no_zero_point}[domain]


@SETTINGS
@given(st.sampled_from(["INT", "FLOAT", "NONE"]), st.data())
def test_quantize_and_dequantize_affine_bit_exact_in_every_domain(domain, data):
    qp = _peer()
    x, block, s, z, (tname, qmin, qmax) = data.draw(quantize_case(domain))
    assume(tname != "int32" or x.dtype != np.float16)  # torch refuses the float16 bound
    zt = None if z is None else _t(z)
    q = ao.quantize_affine(x, block, s, z, tname, qmin, qmax, zero_point_domain=domain)
    qt = _q_fn(qp, domain)(_t(x), block, _t(s), zt, _td(tname), qmin, qmax)
    _same(q, _n(qt))
    for out in FLOATS:
        assume(not (out == "float16" and tname == "int32"))
        d = ao.dequantize_affine(q, block, s, z, tname, qmin, qmax, output_dtype=out,
                                 zero_point_domain=domain)
        dt = _dq_fn(qp, domain)(qt, block, _t(s), zt, _td(tname), qmin, qmax,
                                output_dtype=_td(out))
        _same(d, _n(dt))


@SETTINGS
@given(st.sampled_from(["INT", "FLOAT", "NONE"]), st.data())
def test_fake_quantize_affine_bit_exact_in_every_domain(domain, data):
    qp = _peer()
    x, block, s, z, (tname, qmin, qmax) = data.draw(quantize_case(domain))
    tname = "int4" if (tname, qmin, qmax) == ("int8", -8, 7) else tname
    if tname == "int4":
        qmin = qmax = None
    try:
        ours = ao.fake_quantize_affine(x, block, s, z, tname, qmin, qmax, domain)
    except RefquantError as e:
        assert "float16" in str(e), e
        return
    theirs = qp._fake_quantize_affine(_t(x), block, _t(s), None if z is None else _t(z),
                                      _td(tname), qmin, qmax, getattr(qp.ZeroPointDomain, domain))
    _same(ours, _n(theirs))


@SETTINGS
@given(choose_case(), st.sampled_from(MAPPINGS))
def test_choose_quantize_dequantize_pipeline_bit_exact(case, mapping):
    qp = _peer()
    dt, x, block, (tname, qmin, qmax), eps, sdt, zdt = case
    assume(tname != "int32" or x.dtype != np.float16)
    zdt = "int32" if zdt is None or zdt.startswith(("float", "bfloat")) else zdt
    try:
        s, z = ao.choose_qparams_affine(x, mapping, block, tname, qmin, qmax, eps, sdt, zdt)
    except RefquantError:
        return
    r = _both(lambda: ao.quantize_affine(x, block, s, z, tname, qmin, qmax),
              lambda: qp.quantize_affine(_t(x), block, _t(s), _t(z), _td(tname), qmin, qmax))
    assume(r is not None)  # a block_size that reduces nothing: one scale, refused by both
    q, qt = r
    _same(q, _n(qt))
    d = ao.dequantize_affine(q, block, s, z, tname, qmin, qmax, output_dtype=dt)
    _same(d, _n(qp.dequantize_affine(qt, block, _t(s), _t(z), _td(tname), qmin, qmax,
                                     output_dtype=_td(dt))))


# ------------------------------------------------------------------ float8

F8 = ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")


@SETTINGS
@given(choose_case(), st.sampled_from(F8), st.sampled_from(["float32", "float8_e8m0fnu"]),
       st.sampled_from([(None, None), (1e-4, None), (None, 2.0), (0.01, 100.0)]))
def test_float8_scale_cast_and_back_bit_exact(case, f8, sdt, bounds):
    qp = _peer()
    dt, x, block, *_ = case
    lb, ub = bounds
    r = _both(lambda: ao.choose_scale_float8(x, block, f8, sdt, lb, ub),
              lambda: qp._choose_scale_float8(_t(x), list(block), _td(f8), _td(sdt), lb, ub))
    assume(r is not None)
    s, st_ = r
    _same(s, _n(st_))
    y = ao.quantize_affine_float8(x, s, f8)
    yt = qp._quantize_affine_float8(_t(x), st_, _td(f8))
    _same(y, _n(yt))
    for out in FLOATS:
        _same(ao.dequantize_affine_float8(y, s, out),
              _n(qp._dequantize_affine_float8(yt, st_, _td(out))))


def test_e8m0_scale_rounds_log2_half_to_even_near_sqrt2_powers():
    """Scales next to sqrt(2)·2^k, where log2 rounds to k + 1/2 in float32 or bfloat16."""
    qp = _peer()
    base = np.float32(np.sqrt(2.0)) * np.float32(448.0)
    vals = [np.float32(base * np.float32(2.0**k)) for k in range(-12, 12)]
    x = np.array([np.nextafter(v, np.float32(d * np.inf)) for v in vals for d in (-1, 0, 1)]
                 + vals, np.float32)
    x = np.stack([x, -x], axis=1)  # rowwise: one scale per row
    for dt in FLOATS:
        xd = x.astype(NP[dt])
        s = ao.choose_scale_float8(xd, (1, 2), "float8_e4m3fn", "float8_e8m0fnu")
        _same(s, _n(qp._choose_scale_float8(_t(xd), [1, 2], _td("float8_e4m3fn"),
                                            _td("float8_e8m0fnu"))))


# ------------------------------------------------------------------ recipes


@SETTINGS
@given(choose_case(), st.sampled_from(["per_row", "per_tensor"]),
       st.sampled_from(["SYMMETRIC", "ASYMMETRIC"]), st.booleans())
def test_int8_dynamic_activation_int8_weight_recipe_bit_exact(case, gran, mapping, reduce):
    _peer()
    from torchao.quantization.granularity import PerRow, PerTensor
    from torchao.quantization.quantize_.workflows.int8.int8_tensor import Int8Tensor

    x = case[1]
    r = _both(lambda: ao.int8_tensor_from_hp(x, gran, mapping, reduce),
              lambda: Int8Tensor.from_hp(_t(x), PerRow() if gran == "per_row" else PerTensor(),
                                         mapping_type=getattr(_peer().MappingType, mapping),
                                         reduce_range=reduce))
    assume(r is not None)
    (q, s, z, block), t = r
    _same(q, _n(t.qdata))
    _same(s, _n(t.scale))
    _same(z, _n(t.zero_point))
    assert list(block) == list(t.block_size)


@SETTINGS
@given(st.integers(1, 4), st.sampled_from([32, 64, 128]), st.integers(1, 2), st.data())
def test_int4_weight_only_tinygemm_recipe_bit_exact(rows, group, ngroups, data):
    """The calls Int4TilePackedTo4dTensor.from_hp makes (it needs CUDA to run whole)."""
    qp = _peer()
    torch = _torch()
    n = rows * group * ngroups
    s = data.draw(SCALES)
    w = data.draw(tensors(s, n_min=n, n_max=n, special=False)).reshape(rows, group * ngroups)
    w = w.astype(BF16)
    q, sc, zp = ao.int4_tile_packed_to_4d_from_hp(w, group)
    block = (1, group)
    st_, zt = qp._choose_qparams_affine_tinygemm(
        _t(w), qp.MappingType.ASYMMETRIC, block, torch.int32, 0, 15,
        scale_dtype=torch.bfloat16, zero_point_dtype=torch.bfloat16)
    qt = qp._quantize_affine_tinygemm(_t(w), list(block), st_, zt, torch.int32, 0, 15)
    _same(sc, _n(st_))
    _same(zp, _n(zt))
    _same(q, _n(qt))


@SETTINGS
@given(choose_case(), st.sampled_from(["per_row", "per_tensor"]), st.sampled_from(F8[:2]))
def test_float8_tensor_recipe_bit_exact_on_the_torch_kernel_path(case, gran, f8):
    _peer()
    from torchao.quantization.granularity import PerRow, PerTensor
    from torchao.quantization.quantize_.workflows.float8.float8_tensor import Float8Tensor

    x = case[1]
    r = _both(lambda: ao.float8_tensor_from_hp(x, f8, gran),
              lambda: Float8Tensor.from_hp(_t(x), _td(f8),
                                           PerRow() if gran == "per_row" else PerTensor()))
    assume(r is not None)
    (y, s), t = r
    _same(y, _n(t.qdata))
    _same(s, _n(t.scale))


@pytest.mark.parametrize("dt", FLOATS)
@pytest.mark.parametrize("mapping", MAPPINGS)
@pytest.mark.parametrize("fill", [0.0, -0.0, 1.5, -2.0, 1e-40])
def test_zero_range_blocks_bit_exact(dt, mapping, fill):
    """Constant blocks (zero, negative zero, one value, a subnormal): eps decides the scale."""
    qp = _peer()
    x = np.full((2, 4), fill, np.float32).astype(NP[dt])
    x[1, :2] = np.array(0.5, np.float32).astype(NP[dt])
    for tname in ("int8", "uint8", "uint4"):
        s, z = ao.choose_qparams_affine(x, mapping, (1, 2), tname)
        st_, zt = qp.choose_qparams_affine(_t(x), getattr(qp.MappingType, mapping), (1, 2),
                                           _td(tname))
        _same(s, _n(st_))
        _same(z, _n(zt))
        _same(ao.quantize_affine(x, (1, 2), s, z, tname),
              _n(qp.quantize_affine(_t(x), (1, 2), st_, zt, _td(tname))))
    s8 = ao.choose_scale_float8(x, (1, 2))
    st8 = qp._choose_scale_float8(_t(x), [1, 2])
    _same(s8, _n(st8))
    _same(ao.quantize_affine_float8(x, s8), _n(qp._quantize_affine_float8(_t(x), st8)))


def test_partial_blocks_are_refused_by_both():
    qp = _peer()
    x = np.ones((2, 6), np.float32)
    with pytest.raises(RefquantError, match="block_size"):
        ao.choose_qparams_affine(x, "SYMMETRIC", (1, 4), "int8")
    with pytest.raises(AssertionError, match="divisible"):
        qp.choose_qparams_affine(_t(x), qp.MappingType.SYMMETRIC, (1, 4), _td("int8"))


@SETTINGS
@given(choose_case(), st.sampled_from(MAPPINGS))
def test_choose_qparams_affine_with_min_max_bit_exact(case, mapping):
    qp = _peer()
    dt, x, block, (tname, qmin, qmax), eps, sdt, zdt = case
    mn, mx = np.minimum(x, x[::-1]), np.maximum(x, x[::-1])  # any min / max pairs, NaN kept

    def peer():
        return qp.choose_qparams_affine_with_min_max(
            _t(mn), _t(mx), getattr(qp.MappingType, mapping), block, _td(tname), qmin, qmax, eps,
            None if sdt is None else _td(sdt), None if zdt is None else _td(zdt))

    r = _both(lambda: ao.choose_qparams_affine_with_min_max(mn, mx, mapping, block, tname, qmin,
                                                            qmax, eps, sdt, zdt), peer)
    assume(r is not None)
    (s, z), (st_, zt) = r
    _same(s, _n(st_))
    _same(z, _n(zt))
