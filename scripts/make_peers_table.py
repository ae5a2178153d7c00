"""Generate docs/peers.md: one row per known disagreement between peers, computed by refquant.

Usage (from the repository root)::

    python scripts/make_peers_table.py              # print the page
    python scripts/make_peers_table.py --write      # write docs/peers.md
    python scripts/make_peers_table.py --check-peers  # also run each installed peer

Every value on the page is computed here with refquant's compat functions, so the
page cannot drift from the code (tests/test_peers_table.py regenerates it and
compares). ``--check-peers`` (and tests/test_peers_table.py) runs the peer library
itself on the same input wherever it is installed and fails if any value differs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "peers.md")
F32 = np.float32


def _fmt(v) -> str:
    a = np.asarray(v)
    if a.dtype.kind == "f" or a.dtype.kind == "V":
        a = a.astype(np.float64)
        vals = ["NaN" if np.isnan(t) else f"{t:.9g}" for t in a.reshape(-1)]
    else:
        vals = [str(int(t)) for t in a.reshape(-1)]
    return vals[0] if len(vals) == 1 else "[" + ", ".join(vals) + "]"


# ---------------------------------------------------------------- peer runners (optional)

def _quantize_model(scale, zp):
    """A one-node QuantizeLinear-21 model with a per-tensor scale and zero point."""
    from onnx import TensorProto, helper

    zt = TensorProto.UINT8 if np.asarray(zp).dtype == np.uint8 else TensorProto.INT8
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])
    g = helper.make_graph([node], "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("y", zt, None)],
                          [helper.make_tensor("s", TensorProto.FLOAT, [], [float(scale)]),
                           helper.make_tensor("z", zt, [], [int(zp)])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    return m


def _ort_quantize(x, scale, zp):
    import onnxruntime as ort

    sess = ort.InferenceSession(_quantize_model(scale, zp).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": np.asarray(x, np.float32)})[0]


def _ref_quantize(x, scale, zp):
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(_quantize_model(scale, zp)).run(None, {"x": np.asarray(x, np.float32)})[0]


def _dql(runner):
    from onnx import TensorProto, helper

    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])
    g = helper.make_graph([node], "d", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("y", TensorProto.UINT8, None),
                           helper.make_tensor_value_info("s", TensorProto.FLOAT, None),
                           helper.make_tensor_value_info("z", TensorProto.UINT8, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    x = np.zeros(3, np.float32)
    if runner == "ort":
        import onnxruntime as ort

        return ort.InferenceSession(m.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, {"x": x})[1]
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(m).run(None, {"x": x})[1]


def _zero_sign(runner, enum, opset):
    """Sign bits of QuantizeLinear(x = [-0.0, 1], scale 1, zero point +0 of type ``enum``)."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("Cast", ["q"], ["y"], to=TensorProto.FLOAT)]
    g = helper.make_graph(nodes, "z", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [helper.make_tensor("s", TensorProto.FLOAT, [], [1.0]),
                           helper.make_tensor("z", enum, [], [0.0])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 11
    x = {"x": np.float32([-0.0, 1.0])}
    if runner == "ort":
        import onnxruntime as ort

        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        y = sess.run(None, x)[0]
    else:
        from onnx.reference import ReferenceEvaluator

        y = ReferenceEvaluator(m).run(None, x)[0]
    return np.signbit(y).astype(np.int64)


def _litert_quantize(x, scale, zp, kernel, dtype="int8"):
    sys.path[:0] = [os.path.join(ROOT, "tests"), os.path.join(ROOT, "tests", "peers")]
    from test_tflite_models import run_quantize

    return run_quantize(np.asarray(x, np.float32), scale, zp, dtype=dtype, kernel=kernel)


def _litert_fc(acc, kernel):
    """LiteRT FULLY_CONNECTED on acc = x (one input, weight 1), s_in = 1/4, s_w = 1, s_out = 4."""
    sys.path[:0] = [os.path.join(ROOT, "tests"), os.path.join(ROOT, "tests", "peers")]
    from test_tflite_models import run_fully_connected

    x = np.asarray(acc, np.int8).reshape(-1, 1)
    return run_fully_connected(x, np.ones((1, 1), np.int8), None, 0.25, 0, [1.0], 4.0, 0,
                               kernel=kernel)[:, 0]


def _torch_quantize(x, scale, zp, dtype="quint8"):
    import torch

    return torch.quantize_per_tensor(torch.tensor(np.asarray(x, np.float32)), float(scale), zp,
                                     getattr(torch, dtype)).int_repr().numpy()


def _torch_minmax_scale():
    import torch

    o = torch.ao.quantization.MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    o(torch.tensor([-1.0, 1.0]))
    return o.calculate_qparams()[0].numpy()


def _torch_fake(x, scale, zp, qmin, qmax):
    import torch

    return torch.fake_quantize_per_tensor_affine(torch.tensor(np.float32(x)), float(scale), zp,
                                                 qmin, qmax).numpy()


def _torchao(name, *args, **kw):
    """Call torchao.quantization.quant_primitives.<name>: NumPy float32 / integer arrays become
    tensors, dtype names become torch dtypes, mapping and domain names become torchao's enums."""
    import torch
    from torchao.quantization import quant_primitives as qp

    def conv(a):
        if isinstance(a, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(a))
        if isinstance(a, str) and hasattr(qp.MappingType, a):
            return getattr(qp.MappingType, a)
        if isinstance(a, str) and a.startswith("torch."):
            return getattr(torch, a[6:])
        return a

    out = getattr(qp, name)(*[conv(a) for a in args], **{k: conv(v) for k, v in kw.items()})
    if isinstance(out, tuple):
        out = out[0]
    return out.float().numpy() if out.dtype.is_floating_point else out.numpy()


def _torch_observer_scale(x, dtype="quint8", qscheme="per_tensor_affine"):
    import torch

    o = torch.ao.quantization.MinMaxObserver(dtype=getattr(torch, dtype),
                                             qscheme=getattr(torch, qscheme))
    o(torch.tensor(np.asarray(x, np.float32)))
    return o.calculate_qparams()[0].numpy()


def _ct_nvfp4(w, packed=None):
    """compressed-tensors 0.20: observer amin / amax -> generate_gparam -> calculate_qparams
    -> NVFP4PackedCompressor.compress: (global scale, e4m3 scale bytes, 4-bit codes); with
    ``packed`` (one row of 16 codes, scale 1, global scale 1) the decompressed row instead."""
    import torch
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import preset_name_to_scheme
    from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam

    from refquant.formats.nvfp4 import unpack_nvfp4

    scheme = preset_name_to_scheme("NVFP4", ["Linear"])
    comp = BaseCompressor.get_value_from_registry("nvfp4-pack-quantized")
    if packed is not None:
        out = {"weight_packed": torch.from_numpy(packed), "weight_global_scale": torch.ones(1),
               "weight_scale": torch.ones(1, 1).to(torch.float8_e4m3fn)}
        return comp.decompress(out, scheme)["weight"].float().numpy()
    t = torch.from_numpy(np.ascontiguousarray(w))
    gs = generate_gparam(t.amin(), t.amax())
    g = t.unflatten(-1, (t.shape[-1] // 16, 16))
    s, z = calculate_qparams(g.amin(-1), g.amax(-1), scheme.weights, global_scale=gs)
    out = comp.compress({"weight": t, "weight_scale": s, "weight_global_scale": gs,
                         "weight_zero_point": z}, scheme)
    return (out["weight_global_scale"].numpy(), out["weight_scale"].view(torch.uint8).numpy(),
            unpack_nvfp4(out["weight_packed"].numpy(), w.shape[1]))


def _torchao_nvfp4(w, packed=None):
    """torchao 0.18 nvfp4_quantize with per_tensor_amax_to_scale: (global scale, e4m3 scale
    bytes, 4-bit codes); with ``packed``: NVFP4Tensor(...).dequantize of that row."""
    import warnings

    import torch

    from refquant.formats.nvfp4 import unpack_nvfp4

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchao.prototype.mx_formats import nvfp4_tensor as nv
    if packed is not None:
        t = nv.NVFP4Tensor(torch.from_numpy(packed), torch.ones(1, 1).to(torch.float8_e4m3fn), 16,
                           torch.float32, per_tensor_scale=torch.tensor(1.0))
        return t.dequantize(torch.float32).numpy()
    t = torch.from_numpy(np.ascontiguousarray(w))
    pts = nv.per_tensor_amax_to_scale(t.abs().max())
    s8, packed = nv.nvfp4_quantize(t, per_tensor_scale=pts)
    return (np.float32(pts), s8.view(torch.uint8).numpy(), unpack_nvfp4(packed.numpy(), w.shape[1]))


MODELOPT_NPZ = os.path.join(ROOT, "tests", "data", "modelopt", "nvfp4_0.47.npz")


def _modelopt_recorded(what):
    """From NVIDIA ModelOpt 0.47's NVFP4QTensor outputs recorded in tests/data (by
    scripts/record_modelopt_nvfp4.py; ModelOpt is not installed here): the e4m3 scale of
    a recorded all-zero float32 block (``"zero"``) or of one whose scale underflows e4m3
    (``"tiny"``, amax below 2^-9 · 6 · global scale), the code of a recorded -0.0
    (``"neg0"``), the sign bit of the recorded dequantization of code 8 (``"code8"``)."""
    import ml_dtypes

    from refquant.formats.nvfp4 import unpack_nvfp4

    r = np.load(MODELOPT_NPZ)
    keys = sorted({k.rsplit("_", 1)[0] for k in r.files if k.endswith("_packed")
                   and "float32" in k})
    found = []
    for key in keys:
        w, sc, g = r[key + "_w"], r[key + "_scale"], np.float32(r[key + "_scale_2"][0])
        codes = unpack_nvfp4(r[key + "_packed"], w.shape[1])
        blocks = np.abs(w).reshape(w.shape[0], -1, 16).max(-1)
        if what == "zero":
            found += list(sc[blocks == 0])
        elif what == "tiny":
            found += list(sc[(blocks > 0) & (blocks / (g * F32(6)) < F32(2.0 ** -10))])
        elif what == "neg0":
            found += list(codes[(w == 0) & np.signbit(w)])
        else:
            found += list(np.signbit(r[key + "_back"][codes == 8]).astype(np.int64))
    found = np.unique(np.asarray(found))
    if found.size != 1:
        raise AssertionError(f"the ModelOpt recording has {found} for {what!r}")
    if what in ("zero", "tiny"):
        return found.astype(np.uint8).view(ml_dtypes.float8_e4m3fn).astype(F32)
    return found


# ------------------------------------------------------------------------------- rows

def rows():
    """The disagreements: each a dict with the input and one result per peer.

    A result is (peer label, refquant's value, (peer module, callable) or None).
    """
    from refquant.compat import onnx as O
    from refquant.compat import tflite as T
    from refquant.compat import torch as P
    from refquant.compat import torchao as A
    from refquant.quant.integer import integer_matmul, multiply_by_quantized_multiplier
    from refquant.quant.qparams import qparams_from_range

    x_pt, s_pt = F32(0.273939937), F32(0.00214854861)
    x_fma = F32(-13.65000057)
    obs = P.MinMaxObserver(dtype="qint8", qscheme="per_tensor_symmetric")
    obs.forward(F32([-1.0, 1.0]))
    ml = importlib.import_module("ml_dtypes")
    a8 = np.int8([[100, 100]])
    b8 = np.int8([[100], [100]])
    fc_x, fc_w = np.int8([[7], [-8]]), np.int8([[1]])
    out = [
        dict(topic="Divide by the scale, or multiply by its float32 reciprocal",
             input="x = 0.273939937, scale = 0.00214854861, uint8, zero point 0",
             why="x / s = 127.49999 in float32 (exactly 127.4999953...), but x · fl32(1/s) "
                 "rounds to exactly 127.5, which half-even rounding sends to 128 (pytorch#139464)",
             results=[
                 ("PyTorch quantize_per_tensor", P.quantize_per_tensor(np.float32([x_pt]), float(s_pt), 0, "quint8"),
                  ("torch", lambda: _torch_quantize([x_pt], s_pt, 0))),
                 ("ONNX QuantizeLinear", O.quantize_linear(np.float32([x_pt]), s_pt, np.uint8(0)),
                  ("onnxruntime", lambda: _ort_quantize([x_pt], s_pt, np.uint8(0)))),
                 ("LiteRT QUANTIZE (reference kernel)",
                  T.affine_quantize([x_pt], s_pt, 0, dtype="uint8"),
                  ("ai_edge_litert", lambda: _litert_quantize([x_pt], s_pt, 0, "reference", "uint8"))),
             ]),
        dict(topic="One fused multiply-add, or a product rounded before the zero point is added",
             input="x = -13.65000057 (float32), scale = 0.1, zero point 208",
             why="x · fl32(1/s) is exactly -136.50000572...; PyTorch's 8-bit kernel (fbgemm "
                 "QuantizeAvx2) rounds fma(x, 1/s, z) = 71.4999943 once, to 71; its qint32 path "
                 "rounds the product to -136.5 first and half-even gives 72, as ONNX's division does",
             results=[
                 ("PyTorch quantize_per_tensor, quint8", P.quantize_per_tensor(F32([x_fma]), 0.1, 208, "quint8"),
                  ("torch", lambda: _torch_quantize([x_fma], 0.1, 208))),
                 ("PyTorch quantize_per_tensor, qint32", P.quantize_per_tensor(F32([x_fma]), 0.1, 208, "qint32"),
                  ("torch", lambda: _torch_quantize([x_fma], 0.1, 208, "qint32"))),
                 ("ONNX QuantizeLinear, uint8", O.quantize_linear(F32([x_fma]), F32(0.1), np.uint8(208)),
                  ("onnxruntime", lambda: _ort_quantize([x_fma], F32(0.1), np.uint8(208)))),
             ]),
        dict(topic="Ties: half to even or away from zero",
             input="x = [0.5, 1.5, 2.5, -2.5], scale = 1, int8, zero point 0",
             why="std::round (TfLiteRound) rounds ties away from zero; ONNX and PyTorch use "
                 "round-half-even",
             results=[
                 ("ONNX QuantizeLinear", O.quantize_linear(F32([0.5, 1.5, 2.5, -2.5]), F32(1), np.int8(0)),
                  ("onnxruntime", lambda: _ort_quantize(F32([0.5, 1.5, 2.5, -2.5]), 1.0, np.int8(0)))),
                 ("LiteRT QUANTIZE (reference kernel)", T.affine_quantize(F32([0.5, 1.5, 2.5, -2.5]), 1.0, 0),
                  ("ai_edge_litert", lambda: _litert_quantize(F32([0.5, 1.5, 2.5, -2.5]), 1.0, 0, "reference"))),
             ]),
        dict(topic="LiteRT's optimized QUANTIZE rounds by position",
             input="x = 2.5 repeated 9 times, scale = 1, int8, zero point 0",
             why="its vector loop takes whole groups of 8 (x · fl32(1/s), ties to even); the "
                 "remaining size % 8 elements are divided in double and rounded half away",
             results=[
                 ("LiteRT QUANTIZE (optimized kernel)",
                  T.affine_quantize(F32([2.5] * 9), 1.0, 0, kernel="optimized"),
                  ("ai_edge_litert", lambda: _litert_quantize(F32([2.5] * 9), 1.0, 0, "optimized"))),
                 ("LiteRT QUANTIZE (reference kernel)", T.affine_quantize(F32([2.5] * 9), 1.0, 0),
                  ("ai_edge_litert", lambda: _litert_quantize(F32([2.5] * 9), 1.0, 0, "reference"))),
             ]),
        dict(topic="Values at or beyond 2^31 and +Inf",
             input="x = [3e9, +Inf], scale = 1, uint8, zero point 3",
             why="onnx.reference casts to int32 first and wraps; LiteRT's x86 cast gives INT32_MIN; "
                 "onnxruntime and XNNPACK saturate",
             results=[
                 ("onnxruntime QuantizeLinear", O.quantize_linear(F32([3e9, np.inf]), F32(1), np.uint8(3)),
                  ("onnxruntime", lambda: _ort_quantize(F32([3e9, np.inf]), 1.0, np.uint8(3)))),
                 ("onnx.reference QuantizeLinear",
                  O.quantize_linear(F32([3e9, np.inf]), F32(1), np.uint8(3), reference_quirks=True),
                  ("onnx", lambda: _ref_quantize(F32([3e9, np.inf]), 1.0, np.uint8(3)))),
                 ("LiteRT QUANTIZE (reference, x86)", T.affine_quantize(F32([3e9, np.inf]), 1.0, 3, dtype="uint8"),
                  ("ai_edge_litert", lambda: _litert_quantize(F32([3e9, np.inf]), 1.0, 3, "reference", "uint8"))),
                 ("LiteRT QUANTIZE (XNNPACK)",
                  T.affine_quantize(F32([3e9, np.inf]), 1.0, 3, dtype="uint8", kernel="xnnpack"),
                  ("ai_edge_litert",
                   lambda: _litert_quantize(F32([3e9, np.inf]), 1.0, 3, "xnnpack", "uint8"))),
             ]),
        dict(topic="DynamicQuantizeLinear of an all-zero input (scale)",
             input="x = [0, 0, 0]",
             why="the spec's (max - min) / 255 is 0; the implementations pick different stand-ins",
             results=[
                 ("onnxruntime", O.dynamic_quantize_linear(np.zeros(3, F32))[1],
                  ("onnxruntime", lambda: _dql("ort"))),
                 ("onnx.reference", O.dynamic_quantize_linear(np.zeros(3, F32), reference_quirks=True)[1],
                  ("onnx", lambda: _dql("ref"))),
             ]),
        dict(topic="Symmetric int8 scale from amax",
             input="observed range [-1, 1], qint8, per-tensor symmetric",
             why="PyTorch divides amax by (qmax - qmin) / 2 = 127.5; TFLite, TensorRT and ONNX "
                 "tooling divide by qmax = 127",
             results=[
                 ("PyTorch MinMaxObserver", obs.calculate_qparams()[0],
                  ("torch", _torch_minmax_scale)),
                 ("amax / 127 (TFLite, TensorRT)",
                  qparams_from_range(-1.0, 1.0, dtype="int8", symmetric=True).scale, None),
             ]),
        dict(topic="float8 e4m3fn overflow",
             input="x = [500, +Inf], scale = 1",
             why="ml_dtypes' cast has no saturation (NaN above 464); ONNX saturate=1 clamps to ±448",
             results=[
                 ("ml_dtypes astype(float8_e4m3fn)",
                  F32([500.0, np.inf]).astype(ml.float8_e4m3fn), ("ml_dtypes", lambda: F32([500.0, np.inf]).astype(ml.float8_e4m3fn))),
                 ("ONNX QuantizeLinear saturate=1",
                  O.quantize_linear(F32([500.0, np.inf]), F32(1), output_dtype="float8e4m3fn", saturate=1), None),
                 ("ONNX QuantizeLinear saturate=0",
                  O.quantize_linear(F32([500.0, np.inf]), F32(1), output_dtype="float8e4m3fn", saturate=0), None),
             ]),
        dict(topic="-0.0 and the zero point of a float output type",
             input="x = [-0.0, 1], scale = 1, zero point +0 of the output type; shown: the sign "
                   "bit of y (1: -0.0)",
             why="onnx.reference adds the zero point for float4e2m1 and the float6 types "
                 "(x / s + z: -0.0 + 0 = +0.0, which ONNX's test_quantizelinear_float4e2m1 "
                 "expects) and ignores it for float8, as onnxruntime does (it has no float4 "
                 "kernel); refquant.compat.onnx follows each",
             results=[
                 ("onnx.reference QuantizeLinear, float4e2m1",
                  np.signbit(O.quantize_linear(F32([-0.0, 1.0]), F32(1),
                                               np.zeros((), ml.float4_e2m1fn)).astype(F32))
                  .astype(np.int64),
                  ("onnx", lambda: _zero_sign("ref", 23, 23))),
                 ("onnx.reference QuantizeLinear, float8e4m3fn",
                  np.signbit(O.quantize_linear(F32([-0.0, 1.0]), F32(1),
                                               np.zeros((), ml.float8_e4m3fn)).astype(F32))
                  .astype(np.int64),
                  ("onnx", lambda: _zero_sign("ref", 17, 21))),
                 ("onnxruntime QuantizeLinear, float8e4m3fn",
                  np.signbit(O.quantize_linear(F32([-0.0, 1.0]), F32(1),
                                               np.zeros((), ml.float8_e4m3fn)).astype(F32))
                  .astype(np.int64),
                  ("onnxruntime", lambda: _zero_sign("ort", 17, 21))),
             ]),
        dict(topic="Fixed-point requantization: double or single rounding",
             input="acc = 3, multiplier 2^31 - 1, shift -1 (M = 0.49999999977)",
             why="gemmlowp rounds 2.9999999986 to 3, then 3/2 = 1.5 away to 2; "
                 "TFLITE_SINGLE_ROUNDING rounds 1.4999999993 once to 1",
             results=[
                 ("TFLite (double rounding, gemmlowp)", multiply_by_quantized_multiplier(3, 2**31 - 1, -1), None),
                 ("TFLite (TFLITE_SINGLE_ROUNDING)",
                  multiply_by_quantized_multiplier(3, 2**31 - 1, -1, single_rounding=True), None),
             ]),
        dict(topic="Fake quantization ties",
             input="x = -0.75, scale 0.5, zero point 2, range [0, 3] (TF: min = -1, max = 0.5, 2 bits)",
             why="TF computes floor(v + 0.5) (ties up); PyTorch rounds half to even",
             results=[
                 ("TF fake_quant_with_min_max_args",
                  T.fake_quant_with_min_max_args(F32([-0.75]), -1.0, 0.5, num_bits=2), None),
                 ("PyTorch fake_quantize_per_tensor_affine",
                  P.fake_quantize_per_tensor_affine(F32([-0.75]), 0.5, 2, 0, 3),
                  ("torch", lambda: _torch_fake([-0.75], 0.5, 2, 0, 3))),
             ]),
        dict(topic="LiteRT's three int8 FULLY_CONNECTED kernels round acc · M three ways",
             input="acc = [7, -8] (x = acc, weight 1, no zero points), s_in = 1/4, s_w = 1, "
                   "s_out = 4: M = 1/16 exactly",
             why="acc · M = [0.4375, -0.5]. The reference kernel rounds acc · double(M) once, "
                 "half away; the builtin (ruy) kernel takes SRDHM(acc, 2^30) = [4, -4] (ties up), "
                 "then a shift by 3 rounding half up; XNNPACK rounds the float32 product to even; "
                 "gemmlowp's double rounding (TFLite's reference CONV_2D) gives the fourth row",
             results=[
                 ("LiteRT reference (BUILTIN_REF)",
                  T.fully_connected(fc_x, fc_w, input_scale=F32(0.25), filter_scale=F32(1),
                                    output_scale=F32(4))[:, 0],
                  ("ai_edge_litert", lambda: _litert_fc([7, -8], "reference"))),
                 ("LiteRT optimized (builtin, ruy)",
                  T.fully_connected(fc_x, fc_w, output_multiplier=2**30, output_shift=-3,
                                    kernel="optimized")[:, 0],
                  ("ai_edge_litert", lambda: _litert_fc([7, -8], "optimized"))),
                 ("LiteRT XNNPACK (default delegate)",
                  T.fully_connected(fc_x, fc_w, kernel="xnnpack",
                                    requantization_scale=T.xnnpack_requantization_scale(
                                        F32(0.25), F32(1), F32(4)))[:, 0],
                  ("ai_edge_litert", lambda: _litert_fc([7, -8], "xnnpack"))),
                 ("gemmlowp double rounding",
                  T.fully_connected(fc_x, fc_w, output_multiplier=2**30, output_shift=-3)[:, 0],
                  None),
             ]),
        dict(topic="int8 matmul accumulator",
             input="[[100, 100]] @ [[100], [100]], both int8",
             why="NumPy's int8 @ int8 returns int8 and wraps silently (20000 mod 256); MatMulInteger "
                 "and refquant accumulate exactly",
             results=[
                 ("NumPy int8 @ int8", a8 @ b8, ("numpy", lambda: a8 @ b8)),
                 ("ONNX MatMulInteger / refquant", integer_matmul(a8, b8), None),
             ]),
        *_torchao_rows(A, O, P),
        *_format_and_solver_rows(),
    ]
    return out


def _torchao_rows(A, O, P):
    """Where torchao (compat.torchao) departs from torch.ao (compat.torch) or ONNX."""
    x_pt, s_pt = F32(0.273939937), F32(0.00214854861)
    x_fma = F32(-13.65000057)
    z_fl = F32(s_pt * F32(128))  # tinygemm zero point s * mid, mid = (255 + 0 + 1) / 2
    zeros = np.zeros((1, 4), F32)
    pm1 = F32([-1.0, 1.0])
    big = F32([3e9])
    return [
        dict(topic="torchao: a reciprocal in the integer zero-point domain, a division in the "
                   "float (tinygemm) domain",
             input="x = 0.273939937, scale = 0.00214854861, uint8 (INT: zero point 0; FLOAT: "
                   "zero point scale · 128, so that x - (z - s · mid) = x)",
             why="quantize_affine computes x · fl32(1/s) = 127.5 and half-even gives 128, as "
                 "PyTorch does; _quantize_affine_tinygemm divides, (x - min) / s = 127.49999, "
                 "and gives 127, as ONNX does",
             results=[
                 ("torchao quantize_affine (INT)",
                  A.quantize_affine(F32([x_pt]), (1,), F32([s_pt]), np.int32([0]), "uint8"),
                  ("torchao", lambda: _torchao("quantize_affine", F32([x_pt]), (1,), F32([s_pt]),
                                               np.int32([0]), "torch.uint8"))),
                 ("torchao _quantize_affine_tinygemm (FLOAT)",
                  A.quantize_affine(F32([x_pt]), (1,), F32([s_pt]), F32([z_fl]), "uint8",
                                    zero_point_domain="FLOAT"),
                  ("torchao", lambda: _torchao("_quantize_affine_tinygemm", F32([x_pt]), [1],
                                               F32([s_pt]), F32([z_fl]), "torch.uint8"))),
                 ("ONNX QuantizeLinear", O.quantize_linear(F32([x_pt]), s_pt, np.uint8(0)),
                  ("onnxruntime", lambda: _ort_quantize([x_pt], s_pt, np.uint8(0)))),
             ]),
        dict(topic="torchao adds the zero point after rounding; PyTorch's 8-bit quantize adds it "
                   "inside one fused multiply-add",
             input="x = -13.65000057 (float32), scale = 0.1, zero point 208, uint8",
             why="torchao rounds fl32(x · fl32(1/s)) = -136.5 half to even (-136), then adds 208; "
                 "PyTorch's quint8 kernel rounds fma(x, 1/s, 208) = 71.4999943 once",
             results=[
                 ("torchao quantize_affine",
                  A.quantize_affine(F32([x_fma]), (1,), F32([0.1]), np.int32([208]), "uint8"),
                  ("torchao", lambda: _torchao("quantize_affine", F32([x_fma]), (1,), F32([0.1]),
                                               np.int32([208]), "torch.uint8"))),
                 ("PyTorch quantize_per_tensor, quint8",
                  P.quantize_per_tensor(F32([x_fma]), 0.1, 208, "quint8"),
                  ("torch", lambda: _torch_quantize([x_fma], 0.1, 208))),
                 ("ONNX QuantizeLinear, uint8",
                  O.quantize_linear(F32([x_fma]), F32(0.1), np.uint8(208)),
                  ("onnxruntime", lambda: _ort_quantize([x_fma], F32(0.1), np.uint8(208)))),
             ]),
        dict(topic="torchao's symmetric int8 scales",
             input="x = [-1, 1], int8, per tensor",
             why="SYMMETRIC divides amax by (qmax - qmin) / 2 = 127.5, as torch.ao's observers; "
                 "SYMMETRIC_NO_CLIPPING_ERR takes max(min / qmin, max / qmax) = 1 / 127, as "
                 "amax / 127 tooling (TFLite, TensorRT) does",
             results=[
                 ("torchao SYMMETRIC",
                  A.choose_qparams_affine(pm1, "SYMMETRIC", (2,), "int8")[0],
                  ("torchao", lambda: _torchao("choose_qparams_affine", pm1, "SYMMETRIC", (2,),
                                               "torch.int8"))),
                 ("torchao SYMMETRIC_NO_CLIPPING_ERR",
                  A.choose_qparams_affine(pm1, "SYMMETRIC_NO_CLIPPING_ERR", (2,), "int8")[0],
                  ("torchao", lambda: _torchao("choose_qparams_affine", pm1,
                                               "SYMMETRIC_NO_CLIPPING_ERR", (2,), "torch.int8"))),
                 ("PyTorch MinMaxObserver (per_tensor_symmetric)", _refquant_observer_scale(P, pm1),
                  ("torch", lambda: _torch_observer_scale(pm1, "qint8", "per_tensor_symmetric"))),
             ]),
        dict(topic="Scale of an all-zero block",
             input="x = [0, 0, 0, 0] (float32), int8 symmetric / uint8 asymmetric / float8 e4m3fn",
             why="torchao's eps defaults to the input dtype's smallest normal (2^-126); its int8 "
                 "recipe passes float32's machine epsilon (2^-23), the eps of torch.ao's "
                 "observers; its float8 scale has no eps at all: 0, and 0 / 0 gives NaN codes",
             results=[
                 ("torchao choose_qparams_affine (default eps)",
                  A.choose_qparams_affine(zeros, "ASYMMETRIC", (1, 4), "uint8")[0],
                  ("torchao", lambda: _torchao("choose_qparams_affine", zeros, "ASYMMETRIC",
                                               (1, 4), "torch.uint8"))),
                 ("torchao Int8DynamicActivationInt8WeightConfig (eps 2^-23)",
                  A.int8_tensor_from_hp(zeros)[1],
                  ("torchao", lambda: _torchao("choose_qparams_affine", zeros, "SYMMETRIC",
                                               (1, 4), "torch.int8", -128, 127,
                                               float(np.finfo(np.float32).eps), "torch.float32",
                                               "torch.int8", True))),
                 ("PyTorch MinMaxObserver (quint8, affine)",
                  _refquant_observer_scale(P, zeros, "quint8", "per_tensor_affine"),
                  ("torch", lambda: _torch_observer_scale(zeros, "quint8", "per_tensor_affine"))),
                 ("torchao _choose_scale_float8",
                  A.choose_scale_float8(zeros, (1, 4)),
                  ("torchao", lambda: _torchao("_choose_scale_float8", zeros, [1, 4]))),
                 ("torchao _quantize_affine_float8 with that scale",
                  A.quantize_affine_float8(zeros, A.choose_scale_float8(zeros, (1, 4)))
                  .astype(np.float32),
                  ("torchao", lambda: _torchao("_quantize_affine_float8", zeros,
                                               np.zeros((1, 1), F32)))),
             ]),
        dict(topic="int32 codes at the top of the range",
             input="x = 3e9 (float32), scale = 1, zero point 0, int32 (ONNX has no int32 "
                   "QuantizeLinear)",
             why="torchao clamps in float32, where the bound 2^31 - 1 rounds to 2^31, and the "
                 "cast of 2^31 to int32 gives INT32_MIN (x86); PyTorch's qint32 saturates",
             results=[
                 ("torchao quantize_affine",
                  A.quantize_affine(big, (1,), F32([1.0]), np.int32([0]), "int32"),
                  ("torchao", lambda: _torchao("quantize_affine", big, (1,), F32([1.0]),
                                               np.int32([0]), "torch.int32"))),
                 ("PyTorch quantize_per_tensor, qint32",
                  P.quantize_per_tensor(big, 1.0, 0, "qint32"),
                  ("torch", lambda: _torch_quantize(big, 1.0, 0, "qint32"))),
             ]),
    ]


def _format_and_solver_rows():
    """NVFP4 (compressed-tensors, torchao, ModelOpt), torch's pow, hqq's solver, 2:4 ties."""
    from refquant.formats.nvfp4 import dequantize_nvfp4, pack_nvfp4, quantize_nvfp4
    from refquant.io.layouts.ctsparse import mask_24
    from refquant.quant.hqq import hqq_quantize

    ml = importlib.import_module("ml_dtypes")
    nv_w = np.zeros((1, 48), F32)
    nv_w[0, 1] = F32(1e-9)  # block 0: its scale underflows e4m3
    nv_w[0, 16] = -0.0  # block 1: all zero, one -0.0
    nv_w[0, 32:] = np.linspace(-3, 5, 16, dtype=F32)  # block 2: amax 5
    nv = {c: quantize_nvfp4(nv_w, convention=c) for c in ("compressed-tensors", "torchao", "modelopt")}
    e4 = ml.float8_e4m3fn

    def nv_scales(c):  # the e4m3 scales of blocks 1 (zero) and 0 (underflowing)
        return nv[c][1][0, [1, 0]].view(e4).astype(F32)

    code8 = np.zeros((1, 16), np.uint8)
    code8[0, 0] = 8

    def nv_code8(c):  # sign bit of code 8 dequantized with scale 1, global scale 1
        return np.signbit(dequantize_nvfp4(code8, np.full((1, 1), 0x38, np.uint8), 1.0,
                                           convention=c)[0, 0]).astype(np.int64)

    hqq_w = (np.random.default_rng(4).standard_normal((1, 64)) * 0.02).astype(F32)
    hqq_r = {k: hqq_quantize(hqq_w, bits=4, group_size=64, kappa=k) for k in (1.01, 5.0)}
    hqq_v2 = hqq_quantize(hqq_w, bits=4, group_size=64, method="v2")
    ties = F32([[1, 1, 1, 1], [-2, 1, 1, -0.0]])
    pow_x = F32(0.16527636)
    return [
        dict(topic="NVFP4 global scale",
             input="w: 1 × 48 float32, amax 5 (block 0: 1e-9 and zeros; block 1: zeros and one "
                   "-0.0; block 2: linspace(-3, 5, 16))",
             why="compressed-tensors stores 448 · 6 / amax (quantize divides by the scale), "
                 "computed as torch's amax.reciprocal() * 2688: two roundings, 537.60004, not "
                 "2688 / 5 = 537.6; torchao and ModelOpt store amax / (448 · 6) (dequantize "
                 "multiplies)",
             results=[
                 ("compressed-tensors 0.20 generate_gparam", nv["compressed-tensors"][2],
                  ("compressed_tensors", lambda: _ct_nvfp4(nv_w)[0])),
                 ("torchao 0.18 per_tensor_amax_to_scale", nv["torchao"][2],
                  ("torchao", lambda: _torchao_nvfp4(nv_w)[0])),
                 ("ModelOpt 0.47 NVFP4QTensor (from its source)", nv["modelopt"][2], None),
                 ("2688 / 5 rounded once", F32(2688) / F32(5), None),
             ]),
        dict(topic="NVFP4 e4m3 block scale of an all-zero block and of one that underflows e4m3",
             input="the same w; shown: the scales of block 1 (all zero) and block 0 (amax 1e-9)",
             why="compressed-tensors clamps the scale to eps = 0.125 (0x20); torchao clamps "
                 "to e4m3's smallest normal 2^-6; ModelOpt sets a zero block's scale to 1.0 and "
                 "clamps the other to e4m3's smallest subnormal 2^-9",
             results=[
                 ("compressed-tensors 0.20", nv_scales("compressed-tensors"),
                  ("compressed_tensors", lambda: _ct_nvfp4(nv_w)[1][0, [1, 0]].view(e4).astype(F32))),
                 ("torchao 0.18 nvfp4_quantize", nv_scales("torchao"),
                  ("torchao", lambda: _torchao_nvfp4(nv_w)[1][0, [1, 0]].view(e4).astype(F32))),
                 ("ModelOpt 0.47 NVFP4QTensor", nv_scales("modelopt"),
                  ("recorded", lambda: np.concatenate([_modelopt_recorded("zero"),
                                                       _modelopt_recorded("tiny")]))),
             ]),
        dict(topic="NVFP4: the code of -0.0",
             input="the same w; shown: the 4-bit code of w[0, 16] = -0.0",
             why="compressed-tensors takes the sign from torch.sign(x), which is 0 for -0.0; "
                 "torchao keeps the sign bit (code 8, e2m1's -0); ModelOpt's _cast_fp4 gives "
                 "code 0 as compressed-tensors does",
             results=[
                 ("compressed-tensors 0.20", nv["compressed-tensors"][0][0, 16],
                  ("compressed_tensors", lambda: _ct_nvfp4(nv_w)[2][0, 16])),
                 ("torchao 0.18", nv["torchao"][0][0, 16],
                  ("torchao", lambda: _torchao_nvfp4(nv_w)[2][0, 16])),
                 ("ModelOpt 0.47", nv["modelopt"][0][0, 16],
                  ("recorded", lambda: _modelopt_recorded("neg0"))),
             ]),
        dict(topic="NVFP4: the value of code 8",
             input="code 8 (e2m1 sign bit set, magnitude 0), block scale 1, global scale 1; "
                   "shown: the sign bit of the dequantized value (1: -0.0)",
             why="compressed-tensors and torchao decode e2m1 bit for bit (-0.0); ModelOpt's "
                 "e2m1_values table holds +0 at index 8",
             results=[
                 ("compressed-tensors 0.20 decompress", nv_code8("compressed-tensors"),
                  ("compressed_tensors",
                   lambda: np.signbit(_ct_nvfp4(None, pack_nvfp4(code8))[0, 0]).astype(np.int64))),
                 ("torchao 0.18 NVFP4Tensor.dequantize", nv_code8("torchao"),
                  ("torchao",
                   lambda: np.signbit(_torchao_nvfp4(None, pack_nvfp4(code8))[0, 0]).astype(np.int64))),
                 ("ModelOpt 0.47 NVFP4QTensor.dequantize", nv_code8("modelopt"),
                  ("recorded", lambda: _modelopt_recorded("code8"))),
             ]),
        dict(topic="torch's float32 sqrt (and pow(x, 0.5)) is not correctly rounded",
             input="x = 0.16527636 (float32, bits 0x3E293E35); sqrt(x) = 0.4065419578...",
             why="torch 2.13's CPU float32 sqrt, and pow(tensor, 0.5) which calls it, differ "
                 "from the correctly rounded square root on 15.6 % of uniform [0, 10) inputs "
                 "(measured on an AMD EPYC Zen 5 under ATEN_CPU_CAPABILITY default, avx2 and avx512 "
                 "alike; not checked live, since which code path computes it may depend on the "
                 "CPU); "
                 "here 0.40654194 is 1.43e-8 from sqrt(x), 0.40654197 is 1.55e-8. llm-compressor's "
                 "SmoothQuant / AWQ scales use pow, and refquant.quant.smoothquant rounds once "
                 "from float64 and states the 1-ulp bound",
             results=[
                 ("correctly rounded (NumPy sqrt; refquant: float64 sqrt rounded once)",
                  np.float32(np.sqrt(np.float64(pow_x))),
                  ("numpy", lambda: np.sqrt(F32([pow_x]))[0])),
                 ("torch.sqrt, float32, CPU: one ulp above",
                  np.nextafter(np.float32(np.sqrt(np.float64(pow_x))), F32(np.inf)),
                  None),
                 ("torch.pow(x, 0.5), float32, CPU",
                  np.nextafter(np.float32(np.sqrt(np.float64(pow_x))), F32(np.inf)),
                  None),
             ]),
        dict(topic="hqq's legacy zero-point solver stops one step past its best",
             input="W = 0.02 · standard_normal((1, 64)) (NumPy default_rng(4)), 4 bits, group 64, "
                   "hqq's defaults (lp_norm 0.7, beta 10, kappa 1.01, 20 iterations); shown: "
                   "mean(abs(W - W_r)) in float32 (NumPy's mean of hqq's dequantized weight)",
             why="optimize_weights_proximal_legacy updates the zero point, then stops when the "
                 "error does not improve, returning the zero point it has just moved: here the "
                 "min-max start has the lowest error, iteration 2 finds its first update worse "
                 "and returns the zero point updated twice; it never multiplies beta by kappa, "
                 "so kappa = 5 gives the same result; optimize_weights_proximal_v2 (refquant "
                 "method='v2') goes back to the best",
             results=[
                 ("hqq 0.2.8.post1 Quantizer.quantize (legacy)",
                  np.abs(hqq_w - hqq_r[1.01].dequantized).mean(dtype=F32),
                  ("hqq", lambda: _hqq_error(hqq_w))),
                 ("the same with kappa = 5",
                  np.abs(hqq_w - hqq_r[5.0].dequantized).mean(dtype=F32),
                  ("hqq", lambda: _hqq_error(hqq_w, kappa=5.0))),
                 ("refquant method='v2' (keeps the best)",
                  np.abs(hqq_w - hqq_v2.dequantized).mean(dtype=F32), None),
             ]),
        dict(topic="2:4 sparsity: which of equal magnitudes torch.topk keeps",
             input="two groups of four: [1, 1, 1, 1] and [-2, 1, 1, -0.0]; shown: the kept "
                   "indices of each",
             why="compressed-tensors' get_24_bytemasks takes abs().topk(2); torch's CPU topk "
                 "runs std::nth_element (libstdc++ introselect) and keeps 2 and 3 of four "
                 "equal values, where a stable sort keeps 0 and 1",
             results=[
                 ("torch.topk (compressed-tensors 0.20 get_24_bytemasks)",
                  np.nonzero(mask_24(ties))[1],
                  ("torch", lambda: np.sort(__import__("torch").from_numpy(ties).abs()
                                            .topk(2, dim=1).indices.numpy(), axis=1).reshape(-1))),
                 ("stable sort of abs(w), descending",
                  np.sort(np.argsort(-np.abs(ties), axis=1, kind="stable")[:, :2], axis=1).reshape(-1),
                  ("numpy", lambda: np.sort(np.argsort(-np.abs(ties), axis=1, kind="stable")[:, :2],
                                            axis=1).reshape(-1))),
             ]),
    ]


def _hqq_error(w, kappa=None):
    """mean |W - W_r| (float32) of hqq 0.2.8.post1's Quantizer.quantize / dequantize; with
    ``kappa``, its optimize_weights (the legacy solver) given opt_params with that kappa."""
    import torch
    from hqq.core.quantize import Quantizer

    solver = Quantizer.optimize_weights
    if kappa is not None:
        params = {"lp_norm": 0.7, "beta": 10.0, "kappa": kappa, "iters": 20}
        Quantizer.optimize_weights = staticmethod(lambda **kw: solver(**kw, opt_params=params))
    try:
        wq, meta = Quantizer.quantize(torch.from_numpy(w), nbits=4, group_size=64, axis=1,
                                      round_zero=False, bitpack=False, device="cpu")
    finally:
        Quantizer.optimize_weights = solver
    back = Quantizer.dequantize(wq, meta).numpy().reshape(w.shape)
    return np.abs(w - back).mean(dtype=F32)


def _refquant_observer_scale(P, x, dtype="qint8", qscheme="per_tensor_symmetric"):
    obs = P.MinMaxObserver(dtype=dtype, qscheme=qscheme)
    obs.forward(np.asarray(x, F32))
    return obs.calculate_qparams()[0]


def _mark(peer) -> str:
    if peer is None:
        return ""
    return " ✓ (recorded)" if peer[0] == "recorded" else " ✓"


def render() -> str:
    lines = [
        "# Where the peers disagree",
        "",
        "Generated by `scripts/make_peers_table.py` from refquant's compat functions; "
        "do not edit by hand",
        "(`tests/test_peers_table.py` fails when this page and the script disagree, and checks "
        "each value marked ✓ against the peer library itself wherever it is installed).",
        "",
        "| # | disagreement | input | results | why |",
        "|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows(), 1):
        res = "<br>".join(f"{label}: **{_fmt(v)}**{_mark(peer)}"
                          for label, v, peer in r["results"])
        lines.append(f"| {i} | {r['topic']} | {r['input']} | {res} | {r['why']} |")
    lines += ["", "✓: value cross-checked against the peer (torch, torchao, onnxruntime, onnx.reference, "
              "ai-edge-litert, ml_dtypes, numpy, compressed-tensors, hqq) by `--check-peers` and the "
              "test suite.",
              "✓ (recorded): value cross-checked against the peer's outputs recorded in tests/data "
              "(the peer does not install beside the others; scripts/record_modelopt_nvfp4.py "
              "recorded them).", ""]
    return "\n".join(lines)


def check_peers(required=False) -> list[str]:
    """Run each installed peer; return a line per checked value. Raises on a mismatch."""
    report = []
    for r in rows():
        for label, v, peer in r["results"]:
            if peer is None:
                continue
            mod, fn = peer
            try:
                if mod != "recorded":
                    importlib.import_module(mod)
            except ImportError:
                if required:
                    raise
                report.append(f"skipped {label}: {mod} not installed")
                continue
            got = np.asarray(fn())
            want = np.asarray(v)
            same = np.array_equal(np.asarray(got, np.float64).reshape(-1),
                                  np.asarray(want, np.float64).reshape(-1), equal_nan=True)
            if not same:
                raise AssertionError(f"{r['topic']} / {label}: peer {mod} gives {_fmt(got)}, "
                                     f"refquant {_fmt(want)}")
            report.append(f"ok {label}: {_fmt(got)} ({mod})")
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="write docs/peers.md")
    ap.add_argument("--check-peers", action="store_true", help="run the installed peers too")
    args = ap.parse_args(argv)
    text = render()
    if args.check_peers:
        for line in check_peers():
            print(line, file=sys.stderr)
    if args.write:
        tmp = DOC + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, DOC)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
