"""ONNX's own backend node tests for the quantization operators, run through refquant.compat.onnx.

The installed onnx wheel ships the test cases' code (``onnx/backend/test/case/node/
quantizelinear.py``, ``dequantizelinear.py``, ``dynamicquantizelinear.py``,
``matmulinteger.py``, ``qlinearmatmul.py``) but not the data it writes
(``onnx/backend/test/data/node`` is absent from the wheel). Importing a case module runs
its ``export_*`` functions, each of which calls ``expect(node, inputs, outputs, name)``
and appends a TestCase (a one-node model at the operator's newest opset, 28 for
QuantizeLinear / DequantizeLinear in onnx 1.23, and its inputs and expected outputs)
to ``onnx.backend.test.case.node._NodeTestCases``: the model and arrays from which
onnx's ``backend-test-tools generate-data`` writes the ``.pb`` files. Each case runs refquant's function of the node's operator with the
node's attributes and the model's opset, and must equal every expected output bit
for bit (dtype, shape and bytes, so the sign of a zero counts). Function-expanded
cases (``*_expanded``: DynamicQuantizeLinear as a graph of primitive nodes) run the
operator they expand, on their own inputs.
"""

from __future__ import annotations

import functools
import importlib

import numpy as np
import pytest
from helpers import import_peer

from refquant.compat import onnx as ronnx

pytestmark = [pytest.mark.peer]

_MODULES = ("quantizelinear", "dequantizelinear", "dynamicquantizelinear", "matmulinteger",
            "qlinearmatmul")
_FUNCTIONS = {
    "QuantizeLinear": ronnx.quantize_linear,
    "DequantizeLinear": ronnx.dequantize_linear,
    "DynamicQuantizeLinear": ronnx.dynamic_quantize_linear,
    "MatMulInteger": ronnx.matmul_integer,
    "QLinearMatMul": ronnx.qlinear_matmul,
}
_TAKES_OPSET = ("QuantizeLinear", "DequantizeLinear")


@functools.cache
def _cases():
    """{name: (op_type, attributes, opset, inputs, outputs)} of the installed onnx's cases."""
    onnx = import_peer("onnx")
    import onnx.backend.test.case.node as node_cases
    from onnx import helper

    # expect() keeps only the cases of _TargetOpType when collect_testcases(op) set it
    node_cases._TargetOpType = None
    for m in _MODULES:
        importlib.import_module(f"onnx.backend.test.case.node.{m}")
    by_name = {}
    for case in node_cases._NodeTestCases:
        nodes = case.model.graph.node
        if len(nodes) == 1 and nodes[0].op_type in _FUNCTIONS:
            by_name[case.name] = (nodes[0], case)
    out = {}
    for case in node_cases._NodeTestCases:
        base = case.name.removesuffix("_expanded")
        if base not in by_name:
            continue
        node = by_name[base][0]
        opset = next(o.version for o in case.model.opset_import if o.domain in ("", "ai.onnx"))
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        inputs, outputs = case.data_sets[0]
        out[case.name] = (node.op_type, attrs, opset, case.model, inputs, outputs)
    assert onnx.__version__  # the peer was imported
    return out


def _case_names():
    try:
        import onnx  # noqa: F401
    except ImportError:
        return ["onnx-is-missing"]  # the test then skips, or fails under REFQUANT_REQUIRE_PEERS
    return sorted(_cases())


def _array(v):
    from onnx import TensorProto, numpy_helper

    return numpy_helper.to_array(v) if isinstance(v, TensorProto) else np.asarray(v)


def _assert_bitwise_equal(got, want, what):
    got, want = np.asarray(got), _array(want)
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, expected {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    if got.tobytes() != want.tobytes():
        bad = np.flatnonzero(got.reshape(-1).view(np.uint8) != want.reshape(-1).view(np.uint8))
        raise AssertionError(
            f"{what}: {bad.size} of {want.size} elements differ in their bits; first at flat "
            f"index {bad[0]}: got {got.reshape(-1)[bad[0]]!r}, expected {want.reshape(-1)[bad[0]]!r}"
            f"\ngot      {got.reshape(-1)[:16]}\nexpected {want.reshape(-1)[:16]}"
        )


@pytest.mark.parametrize("name", _case_names())
def test_onnx_backend_node_case_matches_bit_for_bit(name):
    op, attrs, opset, _, inputs, outputs = _cases()[name]
    kw = dict(attrs)
    if op in _TAKES_OPSET:
        kw["opset"] = opset
    got = _FUNCTIONS[op](*[_array(a) for a in inputs], **kw)
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(outputs)
    for i, (g, w) in enumerate(zip(got, outputs, strict=True)):
        _assert_bitwise_equal(g, w, f"{name} output {i}")


def test_onnx_1_23_2_has_42_cases_of_these_operators_at_opsets_up_to_28():
    # pinned for the onnx release CI installs: a newer onnx that adds cases (or opsets beyond
    # 28) should be read before the pin moves
    onnx = import_peer("onnx")
    cases = _cases()
    if onnx.__version__ != "1.23.2":
        pytest.skip(f"the count is pinned for onnx 1.23.2, installed {onnx.__version__}")
    assert len(cases) == 42
    ops = {c[0] for c in cases.values()}
    assert ops == set(_FUNCTIONS)
    opsets = {(c[0], c[2]) for c in cases.values()}
    assert opsets == {("QuantizeLinear", 28), ("DequantizeLinear", 28),
                      ("DynamicQuantizeLinear", 11), ("MatMulInteger", 10), ("QLinearMatMul", 21)}


@pytest.mark.parametrize("name", [n for n in _case_names() if not n.endswith("_expanded")])
def test_onnx_reference_itself_passes_the_case(name):
    # the cases are what onnx.reference computes too: the departures refquant took from the
    # spec (zero points of shape (1,), +0 for -0.0 in float4e2m1) are the peer's behaviour
    import_peer("onnx")
    from onnx.reference import ReferenceEvaluator

    _, _, _, model, inputs, outputs = _cases()[name]
    feeds = {vi.name: _array(a) for vi, a in zip(model.graph.input, inputs, strict=True)}
    got = ReferenceEvaluator(model).run(None, feeds)
    for i, (g, w) in enumerate(zip(got, outputs, strict=True)):
        _assert_bitwise_equal(g, w, f"onnx.reference on {name} output {i}")
