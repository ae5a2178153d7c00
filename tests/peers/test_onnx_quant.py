"""refquant's core and refquant.compat.onnx bit for bit against onnx.reference and onnxruntime.

Each operator runs in a one-node ONNX model (plus Casts around it so that int4 /
int2 / float8 tensors travel as int32 / float32, which both peers' Python APIs
take), built once per signature (type, axis, block size, opset) and cached. Scale
and zero point are graph inputs, so one session serves every drawn example.

Inputs are drawn with hypothesis and always include exact ties x = (k + 1/2)·s
(with power-of-two and short-mantissa scales, for which the float32 quotient is
exactly k + 1/2), values far outside the range, ±Inf / NaN, per-axis along
several axes and blocked quantization with a partial last block.
"""

from __future__ import annotations

import functools
import platform

import ml_dtypes
import numpy as np
import pytest
from helpers import import_peer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import refquant
from refquant.compat import onnx as ronnx
from refquant.formats.integer import int_format

pytestmark = [
    pytest.mark.peer,
    # onnx.reference's own int32 cast of NaN / Inf / huge quotients (the quirk pinned below)
    pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:overflow encountered in divide:RuntimeWarning"),
]

SETTINGS = settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
X86 = platform.machine().lower() in ("x86_64", "amd64")

INT_TYPES = {  # name: (TensorProto enum, numpy dtype, opset that has it)
    "uint8": (2, np.uint8, 21), "int8": (3, np.int8, 21), "uint16": (4, np.uint16, 21),
    "int16": (5, np.int16, 21), "uint4": (21, ml_dtypes.uint4, 21),
    "int4": (22, ml_dtypes.int4, 21), "uint2": (25, ml_dtypes.uint2, 25),
    "int2": (26, ml_dtypes.int2, 25),
}
FLOAT8_TYPES = {"float8e4m3fn": 17, "float8e4m3fnuz": 18, "float8e5m2": 19, "float8e5m2fnuz": 20}
# Scales whose float32 quotients (k + 1/2)·s / s are exactly k + 1/2, and some that are not.
SCALES = [0.5, 0.25, 1.0, 2.0, 0.125, 1.5, 3.0, 0.0625, 0.75, 0.1, 0.3, 0.007, 2.0**-10]


@functools.cache
def _peers():
    return import_peer("onnx"), import_peer("onnxruntime")


@pytest.fixture(scope="module", autouse=True)
def peers():
    return _peers()


@functools.cache
def _runner(build_key):
    """(onnxruntime session, ReferenceEvaluator) for a model signature, built once."""
    onnx, ort = _peers()
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    nodes, inputs, outputs, opset = _GRAPHS[build_key[0]](helper, *build_key[1:])
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, t, None) for n, t in inputs],
        [helper.make_tensor_value_info(n, t, None) for n, t in outputs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 11
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.log_severity_level = 4  # the refusals pinned below are expected; keep stderr quiet
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess, ReferenceEvaluator(model)


def _run(key, feeds):
    sess, ref = _runner(key)
    return sess.run(None, feeds), ref.run(None, feeds)


def _ql_graph(helper, out_enum, axis, block_size, opset, saturate, with_zp):
    FLOAT, INT32 = 1, 6
    is_float = out_enum in FLOAT8_TYPES.values()
    attrs = {"axis": axis, "block_size": block_size} if block_size else {"axis": axis}
    if is_float:
        attrs.update(saturate=saturate, output_dtype=out_enum)
    nodes = []
    names = ["x", "s"]
    inputs = [("x", FLOAT), ("s", FLOAT)]
    if with_zp:
        nodes.append(helper.make_node("Cast", ["z32"], ["z"], to=out_enum))
        names.append("z")
        inputs.append(("z32", INT32))
    nodes.append(helper.make_node("QuantizeLinear", names, ["q"], **attrs))
    nodes.append(helper.make_node("Cast", ["q"], ["y"], to=FLOAT if is_float else INT32))
    return nodes, inputs, [("y", FLOAT if is_float else INT32)], opset


def _dql_graph(helper, in_enum, axis, block_size, opset):
    FLOAT, INT32 = 1, 6
    attrs = {"axis": axis, "block_size": block_size} if block_size else {"axis": axis}
    nodes = [
        helper.make_node("Cast", ["x32"], ["xq"], to=in_enum),
        helper.make_node("Cast", ["z32"], ["z"], to=in_enum),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["y"], **attrs),
    ]
    return nodes, [("x32", INT32), ("s", FLOAT), ("z32", INT32)], [("y", FLOAT)], opset


def _dyn_graph(helper):
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])]
    return nodes, [("x", 1)], [("y", 2), ("s", 1), ("z", 2)], 11


def _mmi_graph(helper, a_enum, b_enum):
    nodes = [helper.make_node("MatMulInteger", ["a", "b", "za", "zb"], ["y"])]
    return nodes, [("a", a_enum), ("b", b_enum), ("za", a_enum), ("zb", b_enum)], [("y", 6)], 10


def _qlmm_graph(helper, a_enum, b_enum, y_enum):
    nodes = [helper.make_node(
        "QLinearMatMul", ["a", "sa", "za", "b", "sb", "zb", "sy", "zy"], ["y"])]
    inputs = [("a", a_enum), ("sa", 1), ("za", a_enum), ("b", b_enum), ("sb", 1),
              ("zb", b_enum), ("sy", 1), ("zy", y_enum)]
    return nodes, inputs, [("y", y_enum)], 21


_GRAPHS = {"ql": _ql_graph, "dql": _dql_graph, "dyn": _dyn_graph, "mmi": _mmi_graph,
           "qlmm": _qlmm_graph}


# ---------------------------------------------------------------- drawn cases


@st.composite
def quant_cases(draw, types=tuple(INT_TYPES), extremes=True):
    """(x, scale, zero point, axis, block_size, type name): granularity and values drawn."""
    name = draw(st.sampled_from(types))
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=ndim, max_size=ndim)))
    kind = draw(st.sampled_from(["tensor", "axis", "block"]))
    axis = draw(st.integers(-ndim, ndim - 1))
    block_size = 0
    if kind == "tensor":
        pshape = ()
    elif kind == "axis":
        pshape = (shape[axis],)
    else:
        block_size = draw(st.integers(1, 4))
        pshape = list(shape)
        pshape[axis] = -(-shape[axis] // block_size)  # partial last block when B does not divide
        pshape = tuple(pshape)
    n_par = int(np.prod(pshape, dtype=np.int64))
    scale = np.array(draw(st.lists(st.sampled_from(SCALES), min_size=n_par, max_size=n_par)),
                     dtype=np.float32).reshape(pshape)
    if name in INT_TYPES:
        fmt = int_format(name)
        zp = np.array(draw(st.lists(st.integers(fmt.qmin, fmt.qmax), min_size=n_par,
                                    max_size=n_par)), dtype=np.int64).reshape(pshape)
        qmax = fmt.qmax
    else:
        zp = np.zeros(pshape, dtype=np.int64)
        qmax = 64
    sb = refquant._core.granularity.broadcast_param(
        scale, shape, None if kind == "tensor" else axis % ndim, block_size or None, "s")
    sb = np.broadcast_to(sb, shape)
    n = int(np.prod(shape))
    ks = np.array(draw(st.lists(st.integers(-2 * qmax - 2, 2 * qmax + 2), min_size=n,
                                max_size=n))).reshape(shape)
    how = np.array(draw(st.lists(st.integers(0, 9), min_size=n, max_size=n))).reshape(shape)
    frac = np.array(draw(st.lists(st.floats(-0.4375, 0.4375), min_size=n,
                                  max_size=n))).reshape(shape)
    x = np.where(how < 5, (ks + 0.5) * sb, (ks + frac) * sb)  # half of the elements are ties
    if extremes:
        big = np.array(draw(st.lists(st.sampled_from(
            [1e4, -1e4, 3e9, -3e9, 1e12, -1e12, np.inf, -np.inf, np.nan, 65504.0, -65504.0]),
            min_size=n, max_size=n))).reshape(shape)
        x = np.where(how == 9, big * sb, x)
    return x.astype(np.float32), scale, zp, axis, block_size, name


def _axis_attr(axis, block_size, scale):
    return axis if (scale.ndim or block_size) else 1


# ---------------------------------------------------------------- QuantizeLinear


@SETTINGS
@given(case=quant_cases())
def test_quantize_linear_integer_types_match_onnxruntime_and_reference(case):
    x, scale, zp, axis, block_size, name = case
    enum, npdt, opset = INT_TYPES[name]
    key = ("ql", enum, _axis_attr(axis, block_size, scale), block_size, opset, 1, True)
    feeds = {"x": x, "s": scale, "z32": zp.astype(np.int32)}
    sess, ref = _runner(key)
    (ref_y,) = ref.run(None, feeds)
    zq = zp.astype(npdt)
    spec = ronnx.quantize_linear(x, scale, zq, axis=axis, block_size=block_size)
    quirks = ronnx.quantize_linear(x, scale, zq, axis=axis, block_size=block_size,
                                   reference_quirks=True)
    core = refquant.quantize(
        x, scale, zp, dtype=name, axis=None if scale.ndim == 0 else axis,
        block_size=block_size or None, rounding="half_even", precision="float32",
        inf="saturate", nan="qmin", out_dtype=np.int64)
    if _ort_refuses(scale, block_size):
        with pytest.raises(Exception, match="block_size must be 0"):
            sess.run(None, feeds)
    else:
        (ort_y,) = sess.run(None, feeds)
        np.testing.assert_array_equal(spec.astype(np.int64), ort_y, err_msg="compat vs ORT")
        np.testing.assert_array_equal(core, ort_y, err_msg="core vs onnxruntime")
    if X86:
        np.testing.assert_array_equal(quirks.astype(np.int64), ref_y,
                                      err_msg="compat(reference_quirks) vs onnx.reference")
    # Where no quotient leaves the int32 range, the reference evaluator agrees with the spec.
    with np.errstate(over="ignore"):
        inside = np.abs(x.astype(np.float64) / np.broadcast_to(refquant._core.granularity
                        .broadcast_param(scale, x.shape, None if scale.ndim == 0 else axis % x.ndim,
                                         block_size or None, "s"), x.shape)) < 2.0**30
    np.testing.assert_array_equal(spec.astype(np.int64)[inside], ref_y[inside],
                                  err_msg="compat vs onnx.reference inside int32")
    np.testing.assert_array_equal(core[inside], ref_y[inside], err_msg="core vs onnx.reference")


def _ort_refuses(scale, block_size):
    """onnxruntime quirk: a 1-D one-element scale is per tensor there, and then it refuses
    block_size > 0 ("block_size must be 0 for per-tensor quantization", quantize_linear.cc
    PrepareForQDQ), although the spec's blocked shape rule accepts it."""
    return bool(block_size) and scale.ndim <= 1 and scale.size == 1


def test_quantize_linear_nan_gives_qmin_like_onnxruntime():
    x = np.array([[np.nan, 1.0, np.nan]], dtype=np.float32)
    for name, (enum, npdt, opset) in INT_TYPES.items():
        fmt = int_format(name)
        z = np.array(fmt.qmax, dtype=np.int64)
        (ort_y,), _ = _run(("ql", enum, 1, 0, opset, 1, True),
                           {"x": x, "s": np.array(1, np.float32), "z32": z.astype(np.int32)})
        got = ronnx.quantize_linear(x, np.float32(1), z.astype(npdt))
        np.testing.assert_array_equal(got.astype(np.int64), ort_y, err_msg=name)
        assert got.astype(np.int64)[0, 0] == fmt.qmin


@pytest.mark.skipif(not X86, reason="the reference's out-of-range float->int32 cast is x86's")
def test_reference_evaluator_wraps_large_quotients_to_qmin_while_the_spec_saturates():
    x = np.array([2.0**31, 1e10, np.inf, -np.inf, -1e10], dtype=np.float32)
    key = ("ql", 3, 1, 0, 21, 1, True)
    for z, ref_want in ((0, [-128] * 5), (-100, [127] * 5)):
        (ort_y,), (ref_y,) = _run(key, {"x": x, "s": np.array(1, np.float32),
                                        "z32": np.array(z, np.int32)})
        assert ref_y.tolist() == ref_want  # the quirk, as the evaluator shows it
        assert ort_y.tolist() == [127, 127, 127, -128, -128]  # onnxruntime saturates
        spec = ronnx.quantize_linear(x, np.float32(1), np.int8(z))
        quirks = ronnx.quantize_linear(x, np.float32(1), np.int8(z), reference_quirks=True)
        assert spec.tolist() == ort_y.tolist()
        assert quirks.tolist() == ref_y.tolist()


@SETTINGS
@given(case=quant_cases(types=tuple(FLOAT8_TYPES), extremes=True),
       saturate=st.sampled_from([0, 1]), nan=st.booleans())
def test_quantize_linear_float8_matches_onnxruntime_and_reference(case, saturate, nan):
    x, scale, _, axis, block_size, name = case
    if nan:
        x = x.copy()
        x.reshape(-1)[0] = np.nan
    enum = FLOAT8_TYPES[name]
    key = ("ql", enum, _axis_attr(axis, block_size, scale), block_size, 21, saturate, False)
    got = ronnx.quantize_linear(x, scale, axis=axis, block_size=block_size, saturate=saturate,
                                output_dtype=enum)
    vals = got.astype(np.float32)
    sess, ref = _runner(key)
    (ref_y,) = ref.run(None, {"x": x, "s": scale})
    np.testing.assert_array_equal(vals, ref_y, err_msg="compat vs onnx.reference")
    _assert_same_bits(vals, ref_y, "compat vs onnx.reference")
    if block_size == 0:  # onnxruntime implements blocked QuantizeLinear for int4/uint4 only
        (ort_y,) = sess.run(None, {"x": x, "s": scale})
        keep = np.ones(x.shape, dtype=bool)
        if not saturate:  # onnxruntime's non-saturating overflow quirks: see the test below
            fmax = float(ml_dtypes.finfo(getattr(ml_dtypes, FLOAT8_NAMES[name])).max)
            q = np.abs(x.astype(np.float64) / _full(scale, x.shape, axis, block_size))
            keep = ~(np.isfinite(q) & (q > fmax))
        _assert_same_bits(vals[keep], ort_y[keep], "compat vs onnxruntime")


FLOAT8_NAMES = {"float8e4m3fn": "float8_e4m3fn", "float8e4m3fnuz": "float8_e4m3fnuz",
                "float8e5m2": "float8_e5m2", "float8e5m2fnuz": "float8_e5m2fnuz"}


def _full(scale, shape, axis, block_size):
    p = refquant._core.granularity.broadcast_param(
        scale, shape, None if scale.ndim == 0 else axis % len(shape), block_size or None, "s")
    return np.broadcast_to(p, shape).astype(np.float64)


def test_onnxruntime_non_saturating_float8_overflow_departs_from_the_cast_table():
    # Cast table, saturate=0: [x] > FLT_MAX -> NaN (e4m3fn), Inf (e5m2). refquant and
    # onnx.reference follow it; onnxruntime 1.32 gives 448 for e4m3fn x in [480, 496) (its
    # "(val & 0x7F) == 0x7F" fix-up turns the NaN pattern into 0x7E) and NaN for e5m2 x in
    # [61440, 65536) (Inf only from 65536 up).
    x = np.float32([480.0, 490.0, -480.0, 61440.0, 65535.0, -61440.0, 65536.0])
    for t, idx in ((17, [0, 1, 2]), (19, [3, 4, 5, 6])):
        key = ("ql", t, 1, 0, 21, 0, False)
        (ort_y,), (ref_y,) = _run(key, {"x": x[idx], "s": np.array(1, np.float32)})
        got = ronnx.quantize_linear(x[idx], np.float32(1), output_dtype=t, saturate=0)
        _assert_same_bits(got.astype(np.float32), ref_y, "compat vs onnx.reference")
        if t == 17:
            assert np.isnan(ref_y).all() and ort_y.tolist() == [448.0, 448.0, -448.0]
        else:
            assert ref_y.tolist() == [np.inf, np.inf, -np.inf, np.inf]
            assert np.isnan(ort_y[:3]).all() and ort_y[3] == np.inf


def _assert_same_bits(a, b, msg):
    """Equal float32 bit patterns, except that any NaN equals any NaN."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert a.shape == b.shape, msg
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    np.testing.assert_array_equal(nan_a, nan_b, err_msg=msg + ": NaN positions")
    np.testing.assert_array_equal(a[~nan_a].view(np.uint32), b[~nan_b].view(np.uint32),
                                  err_msg=msg)


# ---------------------------------------------------------------- DequantizeLinear


@SETTINGS
@given(case=quant_cases(extremes=False), data=st.data())
def test_dequantize_linear_integer_types_match_onnxruntime_and_reference(case, data):
    _, scale, zp, axis, block_size, name = case
    enum, npdt, opset = INT_TYPES[name]
    fmt = int_format(name)
    shape = case[0].shape
    n = int(np.prod(shape))
    codes = np.array(data.draw(st.lists(st.integers(fmt.qmin, fmt.qmax), min_size=n,
                                        max_size=n)), dtype=np.int64).reshape(shape)
    key = ("dql", enum, _axis_attr(axis, block_size, scale), block_size, opset)
    feeds = {"x32": codes.astype(np.int32), "s": scale, "z32": zp.astype(np.int32)}
    sess, ref = _runner(key)
    (ref_y,) = ref.run(None, feeds)
    if _ort_refuses(scale, block_size):
        with pytest.raises(Exception, match="block_size must be 0"):
            sess.run(None, feeds)
        ort_y = ref_y
    else:
        (ort_y,) = sess.run(None, feeds)
    got = ronnx.dequantize_linear(codes.astype(npdt), scale, zp.astype(npdt), axis=axis,
                                  block_size=block_size)
    core = refquant.dequantize(codes, scale, zp, axis=None if scale.ndim == 0 else axis,
                               block_size=block_size or None)
    for name_, y in (("compat", got), ("core", core)):
        _assert_same_bits(y, ort_y, f"{name_} vs onnxruntime")
        _assert_same_bits(y, ref_y, f"{name_} vs onnx.reference")


def test_dequantize_linear_int32_rounds_codes_beyond_2_24_like_both_peers():
    x = np.array([2**24 + 1, 2**30 + 65, -(2**31), 2**31 - 1, 12345], dtype=np.int32)
    s = np.array(0.1, dtype=np.float32)
    _, ort = _peers()
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    node = helper.make_node("DequantizeLinear", ["x", "s"], ["y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 6, None),
                                        helper.make_tensor_value_info("s", 1, None)],
                          [helper.make_tensor_value_info("y", 1, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    ort_y = ort.InferenceSession(m.SerializeToString(),
                                 providers=["CPUExecutionProvider"]).run(None, {"x": x, "s": s})[0]
    ref_y = ReferenceEvaluator(m).run(None, {"x": x, "s": s})[0]
    got = ronnx.dequantize_linear(x, s)
    _assert_same_bits(got, ort_y, "compat vs onnxruntime")
    _assert_same_bits(got, ref_y, "compat vs onnx.reference")


@SETTINGS
@given(case=quant_cases(types=tuple(FLOAT8_TYPES), extremes=False))
def test_dequantize_linear_float8_round_trip_matches_onnx_reference(case):
    x, scale, _, axis, block_size, name = case
    enum = FLOAT8_TYPES[name]
    onnx, _ = _peers()
    from onnx.reference.ops.op_dequantize_linear import DequantizeLinear_21

    q = ronnx.quantize_linear(x, scale, axis=axis, block_size=block_size, output_dtype=enum)
    got = ronnx.dequantize_linear(q, scale, axis=axis, block_size=block_size)
    want = DequantizeLinear_21.eval(q, scale, axis=axis, block_size=block_size)
    _assert_same_bits(got, want, "compat vs onnx.reference")


# ---------------------------------------------------------------- DynamicQuantizeLinear


@st.composite
def dynamic_inputs(draw):
    n = draw(st.integers(1, 24))
    kind = draw(st.sampled_from(["random", "positive", "negative", "ties", "constant"]))
    vals = draw(st.lists(st.floats(-100, 100, width=32), min_size=n, max_size=n))
    x = np.array(vals, dtype=np.float32)
    if kind == "positive":
        x = np.abs(x)
    elif kind == "negative":
        x = -np.abs(x)
    elif kind == "ties":  # range [-1, 1.55] -> scale 0.01; many values on half steps
        ks = draw(st.lists(st.integers(-100, 154), min_size=n, max_size=n))
        x = np.concatenate([np.array([-1.0, 1.55]), (np.array(ks) + 0.5) * 0.01]).astype(
            np.float32)
    elif kind == "constant":
        x = np.full(n, x[0], dtype=np.float32)
    return x


@SETTINGS
@given(x=dynamic_inputs())
@example(x=np.float32([1e-45]))
@example(x=np.float32([0, 1e-45]))
@example(x=np.float32([3e-45, 1e-45, 0, -1e-45]))
@example(x=np.float32([-2e-45, -1e-45]))
@example(x=np.float32([1e-43, -1e-43, 5e-44]))
def test_dynamic_quantize_linear_matches_onnxruntime_and_reference(x):
    (oy, os_, oz), (ry, rs, rz) = _run(("dyn",), {"x": x})
    y, s, z = ronnx.dynamic_quantize_linear(x)
    np.testing.assert_array_equal(y, oy)
    assert s.view(np.uint32) == np.asarray(os_, np.float32).view(np.uint32)
    assert z == oz
    if (x != 0).any():
        np.testing.assert_array_equal(y, ry)
        assert s.view(np.uint32) == np.asarray(rs, np.float32).view(np.uint32)
        assert z == rz
    lo, hi = np.float32(min(x.min(), 0)), np.float32(max(x.max(), 0))
    # a subnormal range: s underflows to 0 and the core refuses a zero scale; let hypothesis
    # draw another (the operator checks above have run on it)
    from hypothesis import assume  # here: the module's imports are another change's

    assume(not (hi > lo and (hi - lo) / np.float32(255) == 0))
    # the core alone, set to the operator's semantics
    qp = refquant.qparams_from_range(min(x.min(), 0), max(x.max(), 0), dtype="uint8",
                                     symmetric=False, eps=0.0, precision="float32",
                                     zero_point_formula="round_difference")
    assert qp.scale.view(np.uint32) == np.asarray(os_, np.float32).view(np.uint32)
    np.testing.assert_array_equal(qp.quantize(x, precision="float32"), oy)


def test_dynamic_quantize_linear_all_zero_scale_is_one_in_onnxruntime_and_1_255_in_reference():
    x = np.zeros(5, dtype=np.float32)
    (oy, os_, oz), (ry, rs, rz) = _run(("dyn",), {"x": x})
    assert float(os_) == 1.0
    assert np.float32(rs) == np.float32(1) / np.float32(255)
    y, s, z = ronnx.dynamic_quantize_linear(x)
    assert float(s) == float(os_) and int(z) == int(oz) == 0
    yq, sq, zq = ronnx.dynamic_quantize_linear(x, reference_quirks=True)
    assert sq.view(np.uint32) == np.asarray(rs, np.float32).view(np.uint32)
    np.testing.assert_array_equal(yq, ry)


# ---------------------------------------------------------------- MatMulInteger / QLinearMatMul

_I8 = {"uint8": (2, np.uint8), "int8": (3, np.int8)}


@st.composite
def int_matrices(draw):
    ta, tb = draw(st.sampled_from(["uint8", "int8"])), draw(st.sampled_from(["uint8", "int8"]))
    m, k, n = draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
    ia, ib = np.iinfo(_I8[ta][1]), np.iinfo(_I8[tb][1])
    a = np.array(draw(st.lists(st.integers(ia.min, ia.max), min_size=m * k, max_size=m * k)),
                 dtype=_I8[ta][1]).reshape(m, k)
    b = np.array(draw(st.lists(st.integers(ib.min, ib.max), min_size=k * n, max_size=k * n)),
                 dtype=_I8[tb][1]).reshape(k, n)
    za = np.array(draw(st.integers(ia.min, ia.max)), dtype=_I8[ta][1])
    zb = np.array(draw(st.integers(ib.min, ib.max)), dtype=_I8[tb][1])
    return ta, tb, a, b, za, zb


@SETTINGS
@given(mats=int_matrices())
def test_matmul_integer_matches_onnxruntime_and_reference(mats):
    ta, tb, a, b, za, zb = mats
    (oy,), (ry,) = _run(("mmi", _I8[ta][0], _I8[tb][0]), {"a": a, "b": b, "za": za, "zb": zb})
    got = ronnx.matmul_integer(a, b, za, zb)
    np.testing.assert_array_equal(got, oy)
    np.testing.assert_array_equal(got, ry)
    assert got.dtype == np.int32


# The type combinations onnxruntime's CPU QLinearMatMul implements (T1 = T3; int8 a needs int8 b).
ORT_QLMM = {("uint8", "uint8", "uint8"), ("uint8", "int8", "uint8"), ("int8", "int8", "int8")}


@SETTINGS
@given(mats=int_matrices(), ty=st.sampled_from(["uint8", "int8"]),
       sa=st.sampled_from([0.5, 0.25, 0.1, 0.02, 1.0]),
       sb=st.sampled_from([0.5, 0.125, 0.3, 0.05, 2.0]),
       sy=st.sampled_from([1.0, 0.5, 4.0, 0.7, 0.01]), data=st.data())
def test_qlinear_matmul_matches_onnxruntime_and_reference(mats, ty, sa, sb, sy, data):
    ta, tb, a, b, za, zb = mats
    iy = np.iinfo(_I8[ty][1])
    zy = np.array(data.draw(st.integers(iy.min, iy.max)), dtype=_I8[ty][1])
    sa, sb, sy = (np.array(v, dtype=np.float32) for v in (sa, sb, sy))
    feeds = {"a": a, "sa": sa, "za": za, "b": b, "sb": sb, "zb": zb, "sy": sy, "zy": zy}
    got = ronnx.qlinear_matmul(a, sa, za, b, sb, zb, sy, zy)
    got_ref = ronnx.qlinear_matmul(a, sa, za, b, sb, zb, sy, zy, reference_quirks=True)
    if (ta, tb, ty) in ORT_QLMM:
        (oy,), (ry,) = _run(("qlmm", _I8[ta][0], _I8[tb][0], _I8[ty][0]), feeds)
        np.testing.assert_array_equal(got, oy, err_msg="compat vs onnxruntime")
    else:
        from onnx.reference.ops.op_qlinear_matmul import QLinearMatMul

        ry = QLinearMatMul.eval(a, sa, za, b, sb, zb, sy, zy)
    np.testing.assert_array_equal(got_ref, ry, err_msg="compat(reference_quirks) vs reference")


def test_qlinear_matmul_float32_product_vs_reference_float64_product():
    # multiplier 0.1f = 0.100000001490116..., C = 5: the product 0.5000000075 is a tie in
    # float32 (onnxruntime: rne(0.5) = 0) but not in float64 (onnx.reference: 1).
    a, b = np.array([[5]], np.uint8), np.array([[1]], np.uint8)
    one, tenth = np.array(1, np.float32), np.array(0.1, np.float32)
    z = np.array(0, np.uint8)
    feeds = {"a": a, "sa": tenth, "za": z, "b": b, "sb": one, "zb": z, "sy": one,
             "zy": np.array(10, np.uint8)}
    (oy,), (ry,) = _run(("qlmm", 2, 2, 2), feeds)
    assert oy.tolist() == [[10]] and ry.tolist() == [[11]]
    args = (a, tenth, z, b, one, z, one, np.array(10, np.uint8))
    assert ronnx.qlinear_matmul(*args).tolist() == [[10]]
    assert ronnx.qlinear_matmul(*args, reference_quirks=True).tolist() == [[11]]


def test_matmul_integer_per_column_b_zero_point_matches_both_peers():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 5)).astype(np.uint8)
    b = rng.integers(-128, 128, (5, 4)).astype(np.int8)
    za, zb = np.array(7, np.uint8), np.int8([1, -128, 127, 0])
    (oy,), (ry,) = _run(("mmi", 2, 3), {"a": a, "b": b, "za": za, "zb": zb})
    got = ronnx.matmul_integer(a, b, za, zb)
    np.testing.assert_array_equal(got, oy)
    np.testing.assert_array_equal(got, ry)


def test_qlinear_matmul_reference_adds_zero_point_before_rounding():
    # C = (0 - 1) * (0 - 1) * 2 = 2, multiplier 0.5 * 0.5 / 1 = 0.25: x / y_scale = 0.5, a tie.
    # spec / onnxruntime: rne(0.5) + 1 = 1; onnx.reference: rne(0.5 + 1) = 2.
    a, b = np.uint8([[0, 0]]), np.uint8([[0], [0]])
    one, half = np.array(1, np.float32), np.array(0.5, np.float32)
    z1 = np.array(1, np.uint8)
    feeds = {"a": a, "sa": half, "za": z1, "b": b, "sb": half, "zb": z1, "sy": one, "zy": z1}
    (oy,), (ry,) = _run(("qlmm", 2, 2, 2), feeds)
    assert oy.tolist() == [[1]] and ry.tolist() == [[2]]
    args = (a, half, z1, b, half, z1, one, z1)
    assert ronnx.qlinear_matmul(*args).tolist() == [[1]]
    assert ronnx.qlinear_matmul(*args, reference_quirks=True).tolist() == [[2]]


def test_quantize_linear_float16_divides_in_float16_in_reference_and_float32_in_onnxruntime():
    # quotients that round in float16: 2049/1024 / (0.1 in float16), 3 / 2 (a tie), and
    # 60000 / 0.5 = 120000, beyond float16's 65504: Inf, which saturates to 32767
    x = np.float16([2048.0, 0.1, 3.0, -5.0, 60000.0, 1.0])
    s = np.float16([1.0, 0.1, 2.0, 2.0, 0.5, 3.0])
    onnx, ort = _peers()
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], axis=0)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 10, None),
                                        helper.make_tensor_value_info("s", 10, None),
                                        helper.make_tensor_value_info("z", 5, None)],
                          [helper.make_tensor_value_info("y", 5, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    z = np.int16([0, 0, 0, 1, 0, 0])
    # 274 / 0.1: float16 quotient 2740 (ulp 2), float32 2741.04 -> 2741: tells the two apart
    x16 = np.float16([274.0, -460.5, -918.0, 274.0, -460.5, -918.0])
    s16 = np.float16([0.1] * 6)
    assert ronnx.quantize_linear(x16, s16, np.zeros(6, np.int16), axis=0).tolist()[:3] == [
        2740, -4608, -9184]
    for xx, ss in ((x, s), (-x, s), (np.float16([2049.0 / 1024] * 6), s), (x16, s16)):
        feeds = {"x": xx, "s": ss, "z": z}
        ort_y = ort.InferenceSession(m.SerializeToString(),
                                     providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        ref_y = ReferenceEvaluator(m).run(None, feeds)[0]
        got = ronnx.quantize_linear(xx, ss, z, axis=0)
        quirks = ronnx.quantize_linear(xx, ss, z, axis=0, reference_quirks=True)
        in_float32 = ronnx.quantize_linear(xx, ss, z, axis=0, precision=1)
        # onnxruntime quirk: it divides float16 inputs in float32 (the spec: in float16)
        np.testing.assert_array_equal(in_float32, ort_y, err_msg="compat(float) vs onnxruntime")
        if X86:  # 60000 / 0.5 overflows float16 to Inf, which the reference wraps to qmin
            np.testing.assert_array_equal(quirks, ref_y, err_msg="compat quirks vs reference")
        finite = np.abs(xx.astype(np.float64) / ss) < 65504
        np.testing.assert_array_equal(got[finite], ref_y[finite], err_msg="spec vs reference")
    assert not np.array_equal(got, in_float32)  # the last inputs tell float16 and float32 apart


@pytest.mark.parametrize("scale", [0.1, 1.7, 0.0123])
def test_dequantize_linear_float16_output_peers_round_twice(scale):
    x = np.random.default_rng(0).integers(-32768, 32768, 40000).astype(np.int16)
    x[0] = 28677  # 28677 * fl16(0.1) = 2866.99988: 2866 rounded once, 2868 through float32
    s, z = np.array(scale, np.float16), np.array(3, np.int16)
    onnx, ort = _peers()
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    node = helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 5, None),
                                        helper.make_tensor_value_info("s", 10, None),
                                        helper.make_tensor_value_info("z", 5, None)],
                          [helper.make_tensor_value_info("y", 10, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    feeds = {"x": x, "s": s, "z": z}
    ort_y = ort.InferenceSession(m.SerializeToString(),
                                 providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    ref_y = ReferenceEvaluator(m).run(None, feeds)[0]
    quirks = ronnx.dequantize_linear(x, s, z, reference_quirks=True)
    np.testing.assert_array_equal(quirks.view(np.uint16), ort_y.view(np.uint16))
    np.testing.assert_array_equal(quirks.view(np.uint16), ref_y.view(np.uint16))
    once = ronnx.dequantize_linear(x, s, z)
    exact = (x.astype(np.float64) - 3) * float(s)  # exact in float64 (16 + 11 bits)
    np.testing.assert_array_equal(once, exact.astype(np.float16))  # one rounding
    differ = np.flatnonzero(once.view(np.uint16) != quirks.view(np.uint16))
    assert differ.size < 40  # rare: only near float16 ties
    if scale == 0.1:
        assert ronnx.dequantize_linear(np.int16([28677]), s, np.int16(0)).tolist() == [2866.0]
        assert ronnx.dequantize_linear(np.int16([28677]), s, np.int16(0),
                                       reference_quirks=True).tolist() == [2868.0]


def test_float4e2m1_quantize_and_dequantize_match_onnx_reference():
    # onnxruntime 1.32 has no float4e2m1 QuantizeLinear kernel; onnx.reference casts with
    # ml_dtypes (round half to even on the grid 0, .5, 1, 1.5, 2, 3, 4, 6; saturating).
    _peers()
    from onnx.reference.ops.op_dequantize_linear import DequantizeLinear_23
    from onnx.reference.ops.op_quantize_linear import QuantizeLinear_23

    grid = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float32)
    mids = (grid[1:] + grid[:-1]) / 2  # exact ties between grid points
    x = np.concatenate([grid, -grid, mids, -mids, [7.0, 100.0, -1e9, np.inf, -np.inf, 0.26]])
    x = x.astype(np.float32).reshape(2, -1)
    s = np.float32([[0.5, 2.0, 1.0], [1.0, 0.25, 3.0]])
    z = np.zeros(s.shape, ml_dtypes.float4_e2m1fn)
    block = -(-x.shape[1] // 3)
    want = QuantizeLinear_23.eval(x, s, z, axis=1, block_size=block)
    got = ronnx.quantize_linear(x, s, z, block_size=block, reference_quirks=True)
    assert got.dtype == want.dtype == ml_dtypes.float4_e2m1fn
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
    # the default adds the zero point as the evaluator does ("+ zero_point": -0.0 -> +0.0, the
    # result test_quantizelinear_float4e2m1 expects); without a zero point both keep -0.0
    spec = ronnx.quantize_linear(x, s, z, block_size=block)
    neg0 = (x == 0) & np.signbit(x)
    assert neg0.any() and (want.view(np.uint8)[neg0] == 0).all()
    np.testing.assert_array_equal(spec.view(np.uint8), want.view(np.uint8))
    no_zp = QuantizeLinear_23.eval(x, s, axis=1, block_size=block, output_dtype=23)
    got_no_zp = ronnx.quantize_linear(x, s, block_size=block, output_dtype=23)
    assert (no_zp.view(np.uint8)[neg0] == 8).all()
    np.testing.assert_array_equal(got_no_zp.view(np.uint8), no_zp.view(np.uint8))
    y_want = DequantizeLinear_23.eval(want, s, z, axis=1, block_size=block)
    _assert_same_bits(ronnx.dequantize_linear(got, s, z, block_size=block), y_want,
                      "dequantize vs onnx.reference")
    # NaN: ml_dtypes' zero with the opposite sign under reference_quirks, an error otherwise
    nan_ref = QuantizeLinear_23.eval(np.float32([np.nan]), np.float32(1), z[0, :1].reshape(()))
    nan_got = ronnx.quantize_linear(np.float32([np.nan]), np.float32(1), z[0, 0],
                                    reference_quirks=True)
    assert nan_got.view(np.uint8).tolist() == nan_ref.view(np.uint8).tolist()
    with pytest.raises(refquant.RefquantError):
        ronnx.quantize_linear(np.float32([np.nan]), np.float32(1), z[0, 0])


def test_bfloat16_input_and_scale_divide_in_bfloat16_like_onnx_reference():
    _peers()
    from onnx.reference.ops.op_quantize_linear import QuantizeLinear_21

    rng = np.random.default_rng(1)
    x = rng.uniform(-300, 300, 200).astype(ml_dtypes.bfloat16)
    x[:20] = (np.arange(20) + 0.5).astype(ml_dtypes.bfloat16)  # ties
    for sv in (1.0, 0.1, 0.7, 3.0):
        s = np.array(sv, ml_dtypes.bfloat16)
        want = QuantizeLinear_21.eval(x, s, np.int16(0))
        got = ronnx.quantize_linear(x, s, np.int16(0))
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", sorted(FLOAT8_TYPES))
def test_float8_dequantize_linear_matches_onnxruntime_through_a_quantize_dequantize_chain(name):
    # onnxruntime's Python API cannot feed float8 tensors: QuantizeLinear -> DequantizeLinear
    # in one graph, compared with refquant's two functions.
    _, ort = _peers()
    from onnx import helper

    t = FLOAT8_TYPES[name]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s"], ["q"], axis=0, output_dtype=t),
             helper.make_node("DequantizeLinear", ["q", "s"], ["y"], axis=0)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, None),
                                       helper.make_tensor_value_info("s", 1, None)],
                          [helper.make_tensor_value_info("y", 1, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((3, 50)) * rng.choice([1e-6, 0.3, 20, 1e4], (3, 50))).astype(F32)
    x[0, :4] = [0.0, -0.0, 1e9, -1e9]
    s = np.float32([0.5, 0.03, 7.0])
    y_ort = ort.InferenceSession(m.SerializeToString(),
                                 providers=["CPUExecutionProvider"]).run(None, {"x": x, "s": s})[0]
    q = ronnx.quantize_linear(x, s, axis=0, output_dtype=t)
    _assert_same_bits(ronnx.dequantize_linear(q, s, axis=0), y_ort, name)


F32 = np.float32


def test_qlinear_matmul_per_column_b_scale_and_zero_point_match_both_peers():
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (4, 6)).astype(np.uint8)
    b = rng.integers(-128, 128, (6, 3)).astype(np.int8)
    sa, sy = np.array(0.02, F32), np.array(0.5, F32)
    sb = F32([0.01, 0.25, 0.003])
    za, zb, zy = np.array(100, np.uint8), np.int8([0, 0, 0]), np.array(128, np.uint8)
    feeds = {"a": a, "sa": sa, "za": za, "b": b, "sb": sb, "zb": zb, "sy": sy, "zy": zy}
    (oy,), (ry,) = _run(("qlmm", 2, 3, 2), feeds)
    np.testing.assert_array_equal(ronnx.qlinear_matmul(a, sa, za, b, sb, zb, sy, zy), oy)
    np.testing.assert_array_equal(
        ronnx.qlinear_matmul(a, sa, za, b, sb, zb, sy, zy, reference_quirks=True), ry)


def test_matmul_integer_per_row_a_zero_point_departs_from_both_peers():
    # spec: a_zero_point [1, 2] per row of A; onnx.reference subtracts it per column (M = K),
    # onnxruntime refuses a non-scalar a_zero_point
    a, b, za = np.uint8([[1, 2], [3, 4]]), np.uint8([[1, 0], [0, 1]]), np.uint8([1, 2])
    zb = np.array(0, np.uint8)
    sess, ref = _runner(("mmi", 2, 2))
    feeds = {"a": a, "b": b, "za": za, "zb": zb}
    assert ref.run(None, feeds)[0].tolist() == [[0, 0], [2, 2]]
    with pytest.raises(Exception, match="zero point must be a scalar"):
        sess.run(None, feeds)
    assert ronnx.matmul_integer(a, b, za, zb).tolist() == [[0, 1], [1, 2]]


@pytest.mark.parametrize("xdt,sdt", [(np.float16, ml_dtypes.bfloat16),
                                     (ml_dtypes.bfloat16, np.float16)])
def test_reference_quirks_divide_mixed_float16_bfloat16_in_float32_like_onnx_reference(xdt, sdt):
    # opset 23+ lets x and y_scale differ; NumPy has no common type for float16 and
    # bfloat16 (np.result_type raises DTypePromotionError) but ml_dtypes' division loop
    # returns float32, which onnx.reference's ``x / y_scale`` then rounds. 0.6 / 0.25 =
    # 2.4 in float32 -> 2; a float16 quotient of x = 0.625 / 0.25 = 2.5 ties to 2.
    _peers()
    from onnx.reference.ops.op_quantize_linear import QuantizeLinear_25

    x = np.array([0.6, 0.625, -1.375, 100.0, 3.1, 1e4], dtype=xdt)
    s = np.array(0.25, dtype=sdt)
    for z in (np.int8(0), np.array(0, ml_dtypes.int4)):
        want = QuantizeLinear_25.eval(x, s, z)
        got = ronnx.quantize_linear(x, s, z, reference_quirks=True)
        np.testing.assert_array_equal(got.astype(np.int64), want.astype(np.int64))
    want = QuantizeLinear_25.eval(x, s, output_dtype=17)
    got = ronnx.quantize_linear(x, s, output_dtype=17, reference_quirks=True)
    _assert_same_bits(got.astype(np.float32), want.astype(np.float32), "float8e4m3fn")


@pytest.mark.parametrize("opset", [19, 21, 23, 25])
def test_onnxruntime_divides_float16_in_float32_only_at_opsets_19_and_21(opset):
    # float16 -9.25 / 0.1 (0.0999755859375): -92.5 in float16 (a tie, to even -92), -92.52 in
    # float32 (-93). onnxruntime's QuantizeLinear-19/21 kernels divide in float32; from
    # opset 23 it divides in y_scale's type as the spec says.
    _, ort = _peers()
    from onnx import helper

    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 10, None),
                                        helper.make_tensor_value_info("s", 10, None),
                                        helper.make_tensor_value_info("z", 3, None)],
                          [helper.make_tensor_value_info("y", 3, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    x, s, z = np.float16([-9.25, -9.6484375]), np.array(0.1, np.float16), np.int8(0)
    ort_y = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x, "s": s, "z": np.array(z)})[0]
    spec = ronnx.quantize_linear(x, s, z, opset=opset)
    assert spec.tolist() == [-92, -96]
    in_float32 = ronnx.quantize_linear(x, s, z, precision=1)
    assert in_float32.tolist() == [-93, -97]
    assert ort_y.tolist() == (in_float32 if opset < 23 else spec).tolist()


def test_qlinear_matmul_vector_a_with_per_column_b_scale_has_numpy_matmul_shape():
    # a of shape (K,): numpy.matmul (and onnxruntime) drop the M axis, so the result is (N,)
    # or (batch, N); the per-column multiplier of shape (1, N) / (batch, 1, N) must lose it too
    # (it gave (1, N), and a ValueError for a batched b).
    a = np.uint8([3, 200, 17])
    one, sy = np.array(1, F32), np.array(0.7, F32)
    za, zy = np.array(5, np.uint8), np.array(3, np.uint8)
    for b, sb, zb in (
        (np.uint8([[1, 2], [3, 4], [250, 6]]), F32([0.011, 0.3]), np.uint8([1, 128])),
        (np.arange(2 * 3 * 2).reshape(2, 3, 2).astype(np.uint8) * 9,
         F32([0.011, 0.3, 0.05, 0.125]).reshape(2, 1, 2), np.uint8([1, 128, 0, 7]).reshape(2, 1, 2)),
    ):
        feeds = {"a": a, "sa": one, "za": za, "b": b, "sb": sb, "zb": zb, "sy": sy, "zy": zy}
        (oy,), _ = _run(("qlmm", 2, 2, 2), feeds)
        got = ronnx.qlinear_matmul(a, one, za, b, sb, zb, sy, zy)
        assert got.shape == oy.shape == np.matmul(a, b).shape
        np.testing.assert_array_equal(got, oy)


_X_TYPES = {10: ("float",), 13: ("float",), 19: ("float", "float16", "bfloat16"),
            21: ("float", "float16", "bfloat16"), 23: ("float", "float16", "bfloat16"),
            24: ("float", "float16", "bfloat16"), 25: ("float", "float16", "bfloat16")}
_NP_FLOAT = {"float": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


@SETTINGS
@given(case=quant_cases(types=("uint8", "int8")), opset=st.sampled_from(sorted(_X_TYPES)),
       data=st.data())
def test_quantize_linear_every_opset_and_float_type_matches_onnx_reference(case, opset, data):
    # x / y_scale types per opset (one shared type at 19 / 21, independent from 23), the
    # precision attribute (23+): reference_quirks=True equals the evaluator's class for that
    # opset wherever the quotient stays inside int32 (outside, the x86 cast quirk pinned above)
    from onnx.reference.ops import op_quantize_linear as oq

    x, scale, zp, axis, block_size, name = case
    from hypothesis import assume

    assume(not (opset < 21 and block_size or opset < 13 and scale.ndim))  # not in that opset
    xt = data.draw(st.sampled_from(_X_TYPES[opset]))
    st_ = xt if opset < 23 else data.draw(st.sampled_from(_X_TYPES[opset]))
    prec = data.draw(st.sampled_from([0, 1, 10, 16])) if opset >= 23 else 0
    xa, sa = x.astype(_NP_FLOAT[xt]), scale.astype(_NP_FLOAT[st_])
    zq = zp.astype(INT_TYPES[name][1])
    attrs = {"axis": axis} if opset >= 13 else {}
    if block_size:
        attrs["block_size"] = block_size
    if prec:
        attrs["precision"] = prec
    cls = {10: oq.QuantizeLinear_10, 13: oq.QuantizeLinear_10, 19: oq.QuantizeLinear_19,
           21: oq.QuantizeLinear_21, 23: oq.QuantizeLinear_23, 24: oq.QuantizeLinear_23,
           25: oq.QuantizeLinear_25}[opset]
    want = cls.eval(xa, sa, zq, **attrs).astype(np.int64)
    got = ronnx.quantize_linear(xa, sa, zq, opset=opset, reference_quirks=True,
                                **attrs).astype(np.int64)
    with np.errstate(all="ignore"):
        q = np.abs(xa.astype(np.float64) / _full(sa.astype(np.float64), x.shape, axis, block_size))
    inside = q < 2.0**30
    np.testing.assert_array_equal(got[inside], want[inside])
    if X86:
        np.testing.assert_array_equal(got, want)


def test_matmul_integer_per_column_b_zero_point_with_a_batched_b_is_refused_by_onnxruntime():
    # b of shape (2, 3, 4) with b_zero_point of N = 4 elements: the spec's per-column zero
    # point, which onnx.reference and refquant apply; onnxruntime 1.32 refuses it
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (2, 2, 3)).astype(np.uint8)
    b = rng.integers(0, 256, (2, 3, 4)).astype(np.uint8)
    za, zb = np.array(3, np.uint8), np.uint8([1, 2, 3, 250])
    sess, ref = _runner(("mmi", 2, 2))
    feeds = {"a": a, "b": b, "za": za, "zb": zb}
    with pytest.raises(Exception, match="B zero point is not valid"):
        sess.run(None, feeds)
    want = np.matmul(a.astype(np.int64) - 3, b.astype(np.int64) - zb.astype(np.int64))
    np.testing.assert_array_equal(ref.run(None, feeds)[0], want)
    np.testing.assert_array_equal(ronnx.matmul_integer(a, b, za, zb), want)


# ---------------------------------------------------------------- opsets 24-28: float6, float8e8m0

FLOAT6_TYPES = {"float6e2m3": (27, ml_dtypes.float6_e2m3fn), "float6e3m2": (28, ml_dtypes.float6_e3m2fn)}
_E8M0 = ml_dtypes.float8_e8m0fnu


def _grid(dt):
    """Every value of a float6 type (both signs; all finite), from its 64 codes."""
    return np.arange(64, dtype=np.uint8).view(dt).astype(np.float32)


@st.composite
def _float6_quotients(draw, name, n):
    """n target quotients x / s: grid points, exact ties between neighbours, near-ties,
    zeros of both signs, beyond the largest value, ±Inf (and NaN, drawn by the test)."""
    g = np.unique(_grid(FLOAT6_TYPES[name][1]))
    mids = (g[1:] + g[:-1]) / 2
    pool = np.concatenate([g, mids, mids * np.float32(1 + 2**-10), mids * np.float32(1 - 2**-10),
                           [0.0, 1e3, -1e3, np.inf, -np.inf, 1e-3, -1e-3], [-0.0] * 16])
    idx = draw(st.lists(st.integers(0, pool.size - 1), min_size=n, max_size=n))
    return pool[idx].astype(np.float32)


@SETTINGS
@given(case=quant_cases(types=("uint8",), extremes=False), name=st.sampled_from(sorted(FLOAT6_TYPES)),
       zp=st.sampled_from([None, 0.0, -0.0]), nan=st.booleans(), saturate=st.sampled_from([0, 1]),
       data=st.data())
def test_quantize_linear_float6_matches_onnx_reference(case, name, zp, nan, saturate, data):
    # opset 28's float6 outputs; onnxruntime 1.32 has no float6 type (pinned below). Scales
    # are powers of two and short mantissas, so x = q * s gives exact grid ties.
    from onnx.reference.ops.op_quantize_linear import QuantizeLinear_25

    x0, scale, _, axis, block_size, _ = case
    enum, dt = FLOAT6_TYPES[name]
    q = data.draw(_float6_quotients(name, x0.size)).reshape(x0.shape)
    x = (q.astype(np.float64) * _full(scale, x0.shape, axis, block_size)).astype(np.float32)
    if nan:
        x.reshape(-1)[0] = np.nan
    z = None if zp is None else np.full(scale.shape, zp, np.float32).astype(dt)
    attrs = {"axis": axis, "block_size": block_size, "output_dtype": enum, "saturate": saturate}
    want = QuantizeLinear_25.eval(x, scale, z, **attrs)
    got = ronnx.quantize_linear(x, scale, z, opset=28, reference_quirks=True, **attrs)
    assert got.dtype == want.dtype == np.dtype(dt)
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
    if not nan:  # the spec's default leaves NaN undefined and refuses it; otherwise the same
        spec = ronnx.quantize_linear(x, scale, z, opset=28, **attrs)
        np.testing.assert_array_equal(spec.view(np.uint8), want.view(np.uint8))
    else:
        with pytest.raises(refquant.RefquantError):
            ronnx.quantize_linear(x, scale, z, opset=28, **attrs)


@SETTINGS
@given(case=quant_cases(types=("uint8",), extremes=False), name=st.sampled_from(sorted(FLOAT6_TYPES)),
       out=st.sampled_from([0, 1, 10, 16]), data=st.data())
def test_dequantize_linear_float6_matches_onnx_reference(case, name, out, data):
    from onnx.reference.ops.op_dequantize_linear import DequantizeLinear_25

    _, scale, _, axis, block_size, _ = case
    shape = case[0].shape
    dt = FLOAT6_TYPES[name][1]
    n = int(np.prod(shape))
    codes = np.array(data.draw(st.lists(st.integers(0, 63), min_size=n, max_size=n)),
                     np.uint8).reshape(shape).view(dt)
    z = np.zeros(scale.shape, np.float32).astype(dt)
    attrs = {"axis": axis, "block_size": block_size}
    if out:
        attrs["output_dtype"] = out
    want = DequantizeLinear_25.eval(codes, scale, z, **attrs)
    # the peer rounds the float32 product again to a float16 / bfloat16 output
    got = ronnx.dequantize_linear(codes, scale, z, opset=28, reference_quirks=out not in (0, 1),
                                  **attrs)
    assert got.dtype == want.dtype
    _assert_same_bits(got.astype(np.float32), want.astype(np.float32), "compat vs onnx.reference")
    if out in (0, 1):
        # float32 output: value times scale is exact in float64 and rounded once either way
        _assert_same_bits(ronnx.dequantize_linear(codes, scale, z, opset=28, **attrs), want,
                          "spec vs onnx.reference")


_E8M0_EXPONENTS = [-127, -126, -100, -20, -10, -4, -3, -2, -1, 0, 1, 2, 3, 5, 10, 20, 100, 126, 127]


@SETTINGS
@given(case=quant_cases(types=("uint8", "int8", "int4", "int16")),
       xt=st.sampled_from(["float", "float16", "bfloat16"]),
       prec=st.sampled_from([0, 1, 10, 16]), opset=st.sampled_from([24, 25, 26, 27, 28]),
       data=st.data())
def test_quantize_linear_float8e8m0_scale_matches_onnx_reference(case, xt, prec, opset, data):
    # opset 24's float8e8m0 scales, fed to the evaluator as ml_dtypes arrays (its Cast to
    # float8e8m0 fails in onnx 1.23; onnxruntime 1.32 has no kernel: pinned below)
    from onnx.reference.ops.op_quantize_linear import QuantizeLinear_25

    x, scale, zp, axis, block_size, name = case
    e = np.array(data.draw(st.lists(st.sampled_from(_E8M0_EXPONENTS), min_size=scale.size,
                                    max_size=scale.size)), np.float64).reshape(scale.shape)
    s8 = np.ldexp(1.0, e.astype(np.int64)).astype(np.float32).astype(_E8M0)
    assert (s8.astype(np.float64) == np.ldexp(1.0, e.astype(np.int64))).all()
    # x drawn against the float32 scales: rescale to the e8m0 ones (ties stay ties)
    ratio = _full(s8.astype(np.float32), x.shape, axis, block_size) / _full(scale, x.shape, axis,
                                                                              block_size)
    with np.errstate(over="ignore", invalid="ignore"):
        xa = (x.astype(np.float64) * ratio).astype(np.float32).astype(_NP_FLOAT[xt])
    zq = zp.astype(INT_TYPES[name][1])
    attrs = {"axis": axis, "block_size": block_size}
    if prec:
        attrs["precision"] = prec
    with np.errstate(all="ignore"):
        want = QuantizeLinear_25.eval(xa, s8, zq, **attrs).astype(np.int64)
        # the evaluator's own quotient (x may overflow float16 when precision is float16)
        sb = _full(s8.astype(np.float32), x.shape, axis, block_size)
        if prec:
            pdt = _NP_FLOAT[{1: "float", 10: "float16", 16: "bfloat16"}[prec]]
            q = xa.astype(pdt) / sb.astype(pdt)
        else:
            q = xa / sb.astype(np.float32).astype(_E8M0)
        q = np.abs(q.astype(np.float64))
    got = ronnx.quantize_linear(xa, s8, zq, opset=opset, reference_quirks=True, **attrs)
    inside = q < 2.0**30
    np.testing.assert_array_equal(got.astype(np.int64)[inside], want[inside])
    if X86:
        np.testing.assert_array_equal(got.astype(np.int64), want)
    spec = ronnx.quantize_linear(xa, s8, zq, opset=opset, **attrs).astype(np.int64)
    if prec or xt != "bfloat16":
        # the same precision as the evaluator's (float32 for float32 / float16 x, or the
        # attribute): the spec's saturation differs from it only outside int32
        np.testing.assert_array_equal(spec[inside], want[inside])


@SETTINGS
@given(case=quant_cases(types=("uint8", "int8", "int4", "uint16"), extremes=False),
       out=st.sampled_from([1, 10, 16]), data=st.data())
def test_dequantize_linear_float8e8m0_scale_matches_onnx_reference(case, out, data):
    from onnx.reference.ops.op_dequantize_linear import DequantizeLinear_25

    _, scale, zp, axis, block_size, name = case
    shape = case[0].shape
    fmt = int_format(name)
    n = int(np.prod(shape))
    codes = np.array(data.draw(st.lists(st.integers(fmt.qmin, fmt.qmax), min_size=n, max_size=n)),
                     np.int64).reshape(shape)
    e = np.array(data.draw(st.lists(st.sampled_from(_E8M0_EXPONENTS), min_size=scale.size,
                                    max_size=scale.size)), np.int64).reshape(scale.shape)
    s8 = np.ldexp(1.0, e).astype(np.float32).astype(_E8M0)
    npdt = INT_TYPES[name][1]
    attrs = {"axis": axis, "block_size": block_size, "output_dtype": out}
    with np.errstate(over="ignore"):
        want = DequantizeLinear_25.eval(codes.astype(npdt), s8, zp.astype(npdt), **attrs)
    # (x - z) * 2^e is exact in float32 (or beyond its range): one rounding, no quirk needed
    got = ronnx.dequantize_linear(codes.astype(npdt), s8, zp.astype(npdt), opset=28, **attrs)
    assert got.dtype == want.dtype
    _assert_same_bits(got.astype(np.float32), want.astype(np.float32), "compat vs onnx.reference")


def _ort_session(nodes, inputs, outputs, opset):
    onnx, ort = _peers()
    from onnx import helper

    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, t, None)
                                           for n, t in inputs],
                              [helper.make_tensor_value_info(n, t, None) for n, t in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 11
    so = ort.SessionOptions()
    so.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])


def test_onnxruntime_has_no_float6_outputs_nor_float8e8m0_scales():
    # what the float6 / float8e8m0 tests above can compare with onnx.reference only
    from onnx import helper

    for enum in (27, 28):
        with pytest.raises(Exception, match="is not currently registered or supported"):
            _ort_session([helper.make_node("QuantizeLinear", ["x", "s"], ["y"],
                                           output_dtype=enum)],
                         [("x", 1), ("s", 1)], [("y", enum)], 28)
    for op, inputs, out in (("QuantizeLinear", [("x", 1), ("s", 24), ("z", 3)], 3),
                            ("DequantizeLinear", [("x", 3), ("s", 24), ("z", 3)], 1)):
        attrs = {"output_dtype": 1} if op == "DequantizeLinear" else {}
        for opset in (24, 25, 28):
            with pytest.raises(Exception, match="Could not find an implementation"):
                _ort_session([helper.make_node(op, ["x", "s", "z"], ["y"], **attrs)], inputs,
                             [("y", out)], opset)


@SETTINGS
@given(case=quant_cases(), sshape=st.sampled_from([(), (1,)]), zshape=st.sampled_from([(), (1,)]))
def test_one_element_scale_and_zero_point_of_any_rank_match_both_peers(case, sshape, zshape):
    # ONNX's backend node tests pass zero points of shape (1,) with scalar scales; both peers
    # take a scalar or a one-element 1-D tensor for each, in any combination
    x, scale, zp, _, _, name = case
    enum, npdt, opset = INT_TYPES[name]
    s = scale.reshape(-1)[:1].reshape(sshape)
    z = zp.reshape(-1)[:1].reshape(zshape)
    feeds = {"x": x, "s": s, "z32": z.astype(np.int32)}
    (ort_y,), (ref_y,) = _run(("ql", enum, 1, 0, opset, 1, True), feeds)
    got = ronnx.quantize_linear(x, s, z.astype(npdt), opset=opset)
    assert got.shape == ort_y.shape == ref_y.shape == x.shape
    np.testing.assert_array_equal(got.astype(np.int64), ort_y)
    if X86:
        quirks = ronnx.quantize_linear(x, s, z.astype(npdt), opset=opset, reference_quirks=True)
        np.testing.assert_array_equal(quirks.astype(np.int64), ref_y)
    codes = got
    (ort_d,), (ref_d,) = _run(("dql", enum, 1, 0, opset),
                              {"x32": codes.astype(np.int32), "s": s, "z32": z.astype(np.int32)})
    back = ronnx.dequantize_linear(codes, s, z.astype(npdt), opset=opset)
    _assert_same_bits(back, ort_d, "dequantize vs onnxruntime")
    _assert_same_bits(back, ref_d, "dequantize vs onnx.reference")


_ALL_FLOAT_OUTPUTS = {**FLOAT8_TYPES, "float4e2m1": 23, "float6e2m3": 27, "float6e3m2": 28}


@SETTINGS
@given(name=st.sampled_from(sorted(_ALL_FLOAT_OUTPUTS)), saturate=st.sampled_from([0, 1]),
       e=st.integers(-4, 30), sdt=st.sampled_from([np.float32, np.float16]),
       opset=st.sampled_from([23, 25, 28]), with_zp=st.booleans(),
       x=st.lists(st.one_of(
           st.integers(-(2**31), 2**31 - 1), st.integers(-300, 300),
           # a tie of a short significand, (2k + 1) * 2^j, moved by one unit that float32 drops
           # (j >= 24): the float64 quotient is just off the tie, its float32 rounding on it
           st.builds(lambda k, j, d: ((2 * k + 1) << j) + d, st.integers(0, 15),
                     st.integers(24, 26), st.sampled_from([-1, 1]))),
           min_size=1, max_size=12))
@example(name="float8e4m3fn", saturate=1, e=24, sdt=np.float32, opset=23, with_zp=False,
         x=[(17 << 24) + 1, (17 << 24) - 1, (17 << 25) + 1])  # 17 +- 2^-24: off the tie 17
@example(name="float4e2m1", saturate=1, e=25, sdt=np.float32, opset=23, with_zp=True,
         x=[(5 << 24) + 1, (5 << 24) - 1])  # 2.5 +- 2^-25: off float4e2m1's tie 2.5
def test_int32_input_to_float_outputs_matches_onnx_reference_on_its_float64_quotient(
        name, saturate, e, sdt, opset, with_zp, x):
    # int32 x / a float32 or float16 y_scale is a float64 quotient in onnx.reference, cast by
    # ml_dtypes (through float32 before 0.7, once from 0.7.0): reference_quirks follows the
    # installed ml_dtypes. Scales 2^e put quotients near every tie of the float grids.
    from onnx.reference.ops.op_quantize_linear import QuantizeLinear_25

    enum = _ALL_FLOAT_OUTPUTS[name]
    if name.startswith("float6") and opset < 28:
        opset = 28
    xa = np.array(x, np.int32)
    s = np.array(np.ldexp(1.0, min(e, 15) if sdt == np.float16 else e), sdt)  # finite
    z = np.zeros((), ronnx._NUMPY[name]) if with_zp else None  # float4 / float6 add it
    want = QuantizeLinear_25.eval(xa, s, z, output_dtype=enum, saturate=saturate)
    got = ronnx.quantize_linear(xa, s, z, output_dtype=enum, saturate=saturate, opset=opset,
                                reference_quirks=True)
    assert got.dtype == want.dtype
    _assert_same_bits(got.astype(np.float32), want.astype(np.float32), "compat vs onnx.reference")


@SETTINGS
@given(case=quant_cases(), opset=st.sampled_from([26, 27]))
def test_opsets_26_and_27_run_version_25_like_both_peers(case, opset):
    # a model at opset 26 or 27 runs QuantizeLinear-25 / DequantizeLinear-25 (onnxruntime 1.32
    # runs them; it has no -28 kernels, pinned below)
    x, scale, zp, axis, block_size, name = case
    enum, npdt, _ = INT_TYPES[name]
    attr_axis = _axis_attr(axis, block_size, scale)
    feeds = {"x": x, "s": scale, "z32": zp.astype(np.int32)}
    sess, ref = _runner(("ql", enum, attr_axis, block_size, opset, 1, True))
    (ref_y,) = ref.run(None, feeds)
    zq = zp.astype(npdt)
    got = ronnx.quantize_linear(x, scale, zq, axis=axis, block_size=block_size, opset=opset)
    if X86:
        quirks = ronnx.quantize_linear(x, scale, zq, axis=axis, block_size=block_size,
                                       opset=opset, reference_quirks=True)
        np.testing.assert_array_equal(quirks.astype(np.int64), ref_y)
    dfeeds = {"x32": got.astype(np.int32), "s": scale, "z32": zp.astype(np.int32)}
    dsess, dref = _runner(("dql", enum, attr_axis, block_size, opset))
    back = ronnx.dequantize_linear(got, scale, zq, axis=axis, block_size=block_size, opset=opset)
    _assert_same_bits(back, dref.run(None, dfeeds)[0], "dequantize vs onnx.reference")
    if _ort_refuses(scale, block_size):  # onnxruntime's one-element blocked scale refusal
        with pytest.raises(Exception, match="block_size must be 0"):
            sess.run(None, feeds)
    else:
        (ort_y,) = sess.run(None, feeds)
        np.testing.assert_array_equal(got.astype(np.int64), ort_y,
                                      err_msg="compat vs onnxruntime")
        _assert_same_bits(back, dsess.run(None, dfeeds)[0], "dequantize vs onnxruntime")


def test_onnxruntime_has_no_version_28_kernels():
    from onnx import helper

    for op, inputs, out in (("QuantizeLinear", [("x", 1), ("s", 1), ("z", 3)], 3),
                            ("DequantizeLinear", [("x", 3), ("s", 1), ("z", 3)], 1)):
        _ort_session([helper.make_node(op, ["x", "s", "z"], ["y"])], inputs, [("y", out)], 27)
        with pytest.raises(Exception, match=rf"Could not find an implementation for {op}\(28\)"):
            _ort_session([helper.make_node(op, ["x", "s", "z"], ["y"])], inputs, [("y", out)], 28)
