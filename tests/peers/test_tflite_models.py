"""Helpers (no tests): one-operator .tflite models built with LiteRT's flatbuffer schema."""

from __future__ import annotations

import numpy as np
from helpers import import_peer

__all__ = ["litert", "run_quantize", "run_fully_connected", "run_conv2d", "RESOLVERS"]


def litert():
    """(schema, Interpreter, OpResolverType, flatbuffers), or skip."""
    import_peer("ai_edge_litert")
    fb = import_peer("flatbuffers")
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    return schema, Interpreter, OpResolverType, fb


RESOLVERS = {"reference": "BUILTIN_REF", "optimized": "BUILTIN_WITHOUT_DEFAULT_DELEGATES",
             "xnnpack": "AUTO"}


def _tensor(S, name, shape, ttype, buffer, scale=None, zp=None, qdim=0):
    t = S.TensorT()
    t.name = name
    t.shape = list(shape)
    t.type = ttype
    t.buffer = buffer
    if scale is not None:
        q = S.QuantizationParametersT()
        q.scale = [float(v) for v in np.atleast_1d(scale)]
        q.zeroPoint = [int(v) for v in np.atleast_1d(zp)]
        q.quantizedDimension = qdim
        t.quantization = q
    return t


def _model(op_code, tensors, op_inputs, op_outputs, buffers, opts_type=0, opts=None):
    S, _, _, fb = litert()
    m = S.ModelT()
    m.version = 3
    oc = S.OperatorCodeT()
    oc.builtinCode = op_code
    oc.deprecatedBuiltinCode = min(op_code, 127)
    oc.version = 1
    m.operatorCodes = [oc]
    sg = S.SubGraphT()
    sg.tensors = tensors
    sg.inputs = [op_inputs[0]]
    sg.outputs = list(op_outputs)
    op = S.OperatorT()
    op.opcodeIndex = 0
    op.inputs = list(op_inputs)
    op.outputs = list(op_outputs)
    op.builtinOptionsType = opts_type
    op.builtinOptions = opts
    sg.operators = [op]
    m.subgraphs = [sg]
    bufs = []
    for b in buffers:
        B = S.BufferT()
        if b is not None:
            B.data = np.frombuffer(np.ascontiguousarray(b).tobytes(), np.uint8)
        bufs.append(B)
    m.buffers = bufs
    bld = fb.Builder(1024)
    bld.Finish(m.Pack(bld), file_identifier=b"TFL3")
    return bytes(bld.Output())


def _run(buf, x, kernel):
    _, Interpreter, OpResolverType, _ = litert()
    it = Interpreter(model_content=buf,
                     experimental_op_resolver_type=getattr(OpResolverType, RESOLVERS[kernel]))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"]).copy()


def run_quantize(x, scale, zero_point, dtype="int8", kernel="reference"):
    S = litert()[0]
    x = np.ascontiguousarray(x, dtype=np.float32)
    tt = {"int8": S.TensorType.INT8, "uint8": S.TensorType.UINT8, "int16": S.TensorType.INT16}[dtype]
    tensors = [_tensor(S, "x", x.shape, S.TensorType.FLOAT32, 1),
               _tensor(S, "q", x.shape, tt, 2, scale, zero_point)]
    buf = _model(S.BuiltinOperator.QUANTIZE, tensors, [0], [1], [None, None, None])
    return _run(buf, x, kernel)


_ACT = {"NONE": 0, "RELU": 1, "RELU_N1_TO_1": 2, "RELU6": 3}


def run_fully_connected(x_q, w_q, b_q, s_in, z_in, s_w, s_out, z_out, activation="NONE",
                        kernel="reference", *, dtype="int8", z_w=0, quantized_bias_type=None):
    """One FULLY_CONNECTED with per-tensor or per-channel weights; ``b_q=None``: no bias.

    ``dtype`` is the activations' type: ``"int8"`` (int8 weights), ``"uint8"`` (uint8
    weights with zero point ``z_w``, per tensor) or ``"int16"`` (int8 weights, zero points
    0; the bias's dtype, int32 or int64, is written as is). ``quantized_bias_type``
    (``"int32"``/``"int64"``) sets FullyConnectedOptions.quantized_bias_type.
    """
    S = litert()[0]
    act_np = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16}[dtype]
    act_tt = {"int8": S.TensorType.INT8, "uint8": S.TensorType.UINT8,
              "int16": S.TensorType.INT16}[dtype]
    w_np, w_tt = (np.uint8, S.TensorType.UINT8) if dtype == "uint8" else (np.int8, S.TensorType.INT8)
    x_q = np.ascontiguousarray(x_q, act_np)
    w_q = np.ascontiguousarray(w_q, w_np)
    s_w = np.atleast_1d(np.asarray(s_w, np.float32))
    s_b = (np.float32(s_in) * s_w).astype(np.float32)
    n_out = w_q.shape[0]
    tensors = [
        _tensor(S, "x", x_q.shape, act_tt, 1, s_in, z_in),
        _tensor(S, "w", w_q.shape, w_tt, 2, s_w, np.full(s_w.size, z_w, int), 0),
        _tensor(S, "y", (x_q.shape[0], n_out), act_tt, 3, s_out, z_out),
    ]
    buffers = [None, None, w_q, None]
    inputs = [0, 1, -1]
    if b_q is not None:
        b_q = np.ascontiguousarray(b_q)
        if b_q.dtype not in (np.int32, np.int64):
            b_q = b_q.astype(np.int32)
        b_tt = S.TensorType.INT64 if b_q.dtype == np.int64 else S.TensorType.INT32
        tensors.append(_tensor(S, "b", b_q.shape, b_tt, 4, s_b, np.zeros(s_b.size, int), 0))
        buffers.append(b_q)
        inputs = [0, 1, 3]
    o = S.FullyConnectedOptionsT()
    o.fusedActivationFunction = _ACT[activation]
    if quantized_bias_type is not None:
        o.quantizedBiasType = {"int32": S.TensorType.INT32,
                               "int64": S.TensorType.INT64}[quantized_bias_type]
    buf = _model(S.BuiltinOperator.FULLY_CONNECTED, tensors, inputs, [2], buffers,
                 S.BuiltinOptions.FullyConnectedOptions, o)
    return _run(buf, x_q, kernel)


def run_conv2d(x_q, w_q, b_q, s_in, z_in, s_w, s_out, z_out, *, stride=(1, 1), dilation=(1, 1),
               padding="VALID", activation="NONE", kernel="reference"):
    S = litert()[0]
    x_q = np.ascontiguousarray(x_q, np.int8)
    w_q = np.ascontiguousarray(w_q, np.int8)
    b_q = np.ascontiguousarray(b_q, np.int32)
    s_w = np.atleast_1d(np.asarray(s_w, np.float32))
    s_b = (np.float32(s_in) * s_w).astype(np.float32)
    n, h, w, _ = x_q.shape
    oc, kh, kw, _ = w_q.shape

    def out_size(size, k, s, d):
        eff = (k - 1) * d + 1
        return (size + s - 1) // s if padding == "SAME" else (size + s - eff) // s

    oh = out_size(h, kh, stride[0], dilation[0])
    ow = out_size(w, kw, stride[1], dilation[1])
    tensors = [
        _tensor(S, "x", x_q.shape, S.TensorType.INT8, 1, s_in, z_in),
        _tensor(S, "w", w_q.shape, S.TensorType.INT8, 2, s_w, np.zeros(s_w.size, int), 0),
        _tensor(S, "b", b_q.shape, S.TensorType.INT32, 3, s_b, np.zeros(s_b.size, int), 0),
        _tensor(S, "y", (n, oh, ow, oc), S.TensorType.INT8, 4, s_out, z_out),
    ]
    o = S.Conv2DOptionsT()
    o.padding = {"SAME": S.Padding.SAME, "VALID": S.Padding.VALID}[padding]
    o.strideH, o.strideW = stride
    o.dilationHFactor, o.dilationWFactor = dilation
    o.fusedActivationFunction = _ACT[activation]
    buf = _model(S.BuiltinOperator.CONV_2D, tensors, [0, 1, 2], [3],
                 [None, None, w_q, b_q, None], S.BuiltinOptions.Conv2DOptions, o)
    return _run(buf, x_q, kernel)
