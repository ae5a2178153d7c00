"""compat: each peer's semantics by the peer's own names, one module per peer.

- :mod:`refquant.compat.onnx`: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear,
  MatMulInteger, QLinearMatMul as ``quantize_linear`` ... (the spec through opset 25;
  ``reference_quirks=True`` for onnx.reference's departures).
"""
