"""compat: each peer's semantics by the peer's own names, one module per peer.

- :mod:`refquant.compat.onnx`: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear,
  MatMulInteger, QLinearMatMul as ``quantize_linear`` ... (the spec at ai.onnx opsets 10-28;
  ``reference_quirks=True`` for onnx.reference's departures).
- :mod:`refquant.compat.tflite`: TFLite / gemmlowp integer-only arithmetic:
  ``quantize_multiplier``, ``multiply_by_quantized_multiplier`` (double or single
  rounding), ``affine_quantize`` (LiteRT's reference, optimized and XNNPACK kernels),
  TF ``fake_quant_with_min_max_args``, int8 ``fully_connected`` and ``conv2d``.
- :mod:`refquant.compat.torch`: ``quantize_per_tensor``, ``quantize_per_channel``, ``dequantize``,
  ``fake_quantize_per_tensor_affine`` / ``_per_channel_affine``, the learnable fake-quant's
  forward, and the observers (``MinMaxObserver`` ... ``HistogramObserver``), bit for bit with
  torch's CPU kernels (float32 reciprocal, fused multiply-add, NaN codes, empty defaults).
- :mod:`refquant.compat.torchao`: torchao 0.18's ``choose_qparams_affine``, ``quantize_affine``,
  ``dequantize_affine``, ``fake_quantize_affine`` (``MappingType``, ``ZeroPointDomain``,
  ``block_size`` tuples), the float8 scale and cast (``choose_scale_float8``, tensorwise and
  rowwise), and the int8-dynamic / int4-tinygemm / float8 recipes, bit for bit on torch CPU
  (reciprocal multiply, zero point after rounding, float16 / bfloat16 ops rounded per op).
- :mod:`refquant.compat.torch_prune`: ``torch.nn.utils.prune`` on dicts of arrays
  (``l1_unstructured``, ``ln_structured``, ``global_unstructured``, ``remove``, ...):
  torch's masks, ``*_orig`` / ``*_mask`` names, PruningContainer repeats, error messages.
- :mod:`refquant.compat.torch_pruning`: Torch-Pruning's importance classes
  (``MagnitudeImportance``, ``TaylorImportance``, ``BNScaleImportance``,
  ``LAMPImportance``, ``RandomImportance``) on explicit (tensor, axis) groups.
- :mod:`refquant.compat.bnb`: bitsandbytes ``quantize_4bit`` / ``dequantize_4bit`` (NF4, FP4,
  double quantization), ``quantize_blockwise`` (8-bit dynamic map); the CPU build's lookup
  table, the pure-PyTorch default backend or the CUDA tie rules.
- :mod:`refquant.compat.ggml`: llama.cpp's block formats by ggml type name (``quantize(x, "q4_k")``
  -> the bytes ``quantize_row_q4_K_ref`` writes, ``dequantize(raw, "q4_k", shape)``), Q4_0 ... Q8_K,
  TQ1_0, TQ2_0, MXFP4, IQ4_NL, IQ4_XS; ``LibGGML`` calls a built libggml-base through ctypes.
- :mod:`refquant.compat.ocp`: OCP OFP8 (``E4M3``, ``E5M2``) and MX v1.0 (``to_mx``, ``from_mx``,
  ``mx_dot``; ``MXFP8_E4M3`` ... ``MXINT8``).
"""
