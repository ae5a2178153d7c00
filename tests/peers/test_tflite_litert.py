"""refquant.compat.tflite bit for bit against LiteRT (ai-edge-litert), kernel by kernel.

Models are built with LiteRT's own flatbuffer schema (``test_tflite_models.py``), so
no TensorFlow is needed. Measured on ai-edge-litert 2.3.0, x86-64:

- QUANTIZE: the reference kernel divides and rounds half away; XNNPACK
  multiplies by a float32 reciprocal and rounds half to even; the optimized
  kernel does the latter on whole groups of 8 elements and the former on the tail;
  XNNPACK saturates NaN/Inf/huge values, the others go through x86's int32 cast.
- FULLY_CONNECTED (per tensor and per channel): reference and XNNPACK
  requantize with single rounding; CONV_2D per channel: reference with gemmlowp's double rounding,
  XNNPACK with single rounding. (The optimized ruy kernels match neither on
  every input and are not tested.)
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_tflite_models import run_conv2d, run_fully_connected, run_quantize

from refquant.compat import tflite as T

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

scales = st.floats(1e-3, 2.0, allow_nan=False).map(np.float32).filter(lambda s: s > 0)


@settings(max_examples=60)
@given(scale=scales, zp=st.integers(-128, 127), seed=st.integers(0, 2**32 - 1),
       kernel=st.sampled_from(["reference", "optimized", "xnnpack"]),
       dtype=st.sampled_from(["int8", "uint8", "int16"]), n=st.integers(0, 40))
def test_quantize_matches_litert(scale, zp, seed, kernel, dtype, n):
    rng = np.random.default_rng(seed)
    if dtype == "uint8":
        zp = zp + 128
    if dtype == "int16":
        zp = 0  # TFLite requires a zero int16 zero point
    k = rng.integers(-300, 300, 48)
    x = np.concatenate([
        ((k + 0.5) * np.float64(scale)).astype(np.float32),  # ties (up to float32 rounding)
        (k * np.float64(scale)).astype(np.float32),
        rng.normal(0, 100 * scale, 32).astype(np.float32),
        np.float32([0.0, -0.0, np.nan, np.inf, -np.inf, 3e9, -3e9, 1e38]),
        np.float32([0.5, 1.5, 2.5, -2.5][: n % 5]) * np.float32(scale),
    ])[: 100 + n]  # lengths that are and are not multiples of 8 (the SIMD tail)
    x = x.reshape(-1, 1) if n % 2 else x
    np.testing.assert_array_equal(T.affine_quantize(x, scale, zp, dtype=dtype, kernel=kernel),
                                  run_quantize(x, scale, zp, dtype=dtype, kernel=kernel))


def test_optimized_quantize_rounds_simd_groups_to_even_and_the_tail_away():
    x = np.float32([0.5, 1.5, 2.5, -2.5] * 3)  # 12 elements: 8 through SIMD, 4 scalar
    got = run_quantize(x, 1.0, 0, kernel="optimized")
    assert got.tolist() == [0, 2, 2, -2] * 2 + [1, 2, 3, -3]
    np.testing.assert_array_equal(T.affine_quantize(x, 1.0, 0, kernel="optimized"), got)


@settings(max_examples=40)
@given(seed=st.integers(0, 2**32 - 1), kernel=st.sampled_from(["reference", "xnnpack"]),
       activation=st.sampled_from(["NONE", "RELU", "RELU6", "RELU_N1_TO_1"]),
       per_channel=st.booleans())
def test_fully_connected_matches_litert(seed, kernel, activation, per_channel):
    rng = np.random.default_rng(seed)
    k, n = int(rng.integers(1, 40)), int(rng.integers(1, 9))
    x = rng.integers(-128, 128, (8, k)).astype(np.int8)
    w = rng.integers(-127, 128, (n, k)).astype(np.int8)
    w[0, :] = 127  # ±max weights
    b = rng.integers(-5000, 5000, n).astype(np.int32)
    s_in, z_in = np.float32(rng.uniform(1e-3, 0.1)), int(rng.integers(-128, 128))
    s_w = rng.uniform(1e-3, 0.05, n if per_channel else 1).astype(np.float32)
    s_out, z_out = np.float32(rng.uniform(0.01, 2.0)), int(rng.integers(-128, 128))
    m, e = T.populate_convolution_quantization_params(s_in, s_w, s_out, single_rounding=True)
    lo, hi = T.calculate_activation_range_quantized(activation, s_out, z_out)
    got = T.fully_connected(x, w, b, input_offset=-z_in, output_offset=z_out, output_multiplier=m,
                            output_shift=e, output_activation_min=lo, output_activation_max=hi,
                            single_rounding=True)
    want = run_fully_connected(x, w, b, s_in, z_in, s_w, s_out, z_out, activation, kernel=kernel)
    np.testing.assert_array_equal(got, want)


@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), padding=st.sampled_from(["SAME", "VALID"]),
       kernel=st.sampled_from(["reference", "xnnpack"]))
def test_conv2d_per_channel_matches_litert(seed, padding, kernel):
    rng = np.random.default_rng(seed)
    h, w_ = (int(v) for v in rng.integers(3, 8, 2))
    c, oc = (int(v) for v in rng.integers(1, 5, 2))
    kh, kw = (int(v) for v in rng.integers(1, 4, 2))
    stride = tuple(int(v) for v in rng.integers(1, 3, 2))
    dilation = tuple(int(v) for v in rng.integers(1, 3, 2))
    if padding == "VALID" and ((kh - 1) * dilation[0] + 1 > h or (kw - 1) * dilation[1] + 1 > w_):
        padding = "SAME"
    x = rng.integers(-128, 128, (2, h, w_, c)).astype(np.int8)
    wq = rng.integers(-127, 128, (oc, kh, kw, c)).astype(np.int8)
    b = rng.integers(-3000, 3000, oc).astype(np.int32)
    s_in, z_in = np.float32(rng.uniform(0.01, 0.1)), int(rng.integers(-128, 128))
    s_w = rng.uniform(1e-3, 0.05, oc).astype(np.float32)
    s_out, z_out = np.float32(rng.uniform(0.05, 1.0)), int(rng.integers(-128, 128))
    single = kernel == "xnnpack"
    m, e = T.populate_convolution_quantization_params(s_in, s_w, s_out, single_rounding=single)
    got = T.conv2d(x, wq, b, stride_height=stride[0], stride_width=stride[1],
                   dilation_height_factor=dilation[0], dilation_width_factor=dilation[1],
                   padding=padding, input_offset=-z_in, output_offset=z_out, output_multiplier=m,
                   output_shift=e, single_rounding=single)
    want = run_conv2d(x, wq, b, s_in, z_in, s_w, s_out, z_out, stride=stride, dilation=dilation,
                      padding=padding, kernel=kernel)
    np.testing.assert_array_equal(got, want)


def test_reference_conv_uses_double_rounding_not_single():
    """A case found by search where the two roundings differ: LiteRT's reference Conv sides
    with gemmlowp's double rounding."""
    rng = np.random.default_rng(7)
    for _ in range(200):
        x = rng.integers(-128, 128, (1, 3, 3, 2)).astype(np.int8)
        wq = rng.integers(-127, 128, (3, 2, 2, 2)).astype(np.int8)
        b = rng.integers(-3000, 3000, 3).astype(np.int32)
        s_w = rng.uniform(1e-3, 0.05, 3).astype(np.float32)
        kw = dict(input_offset=5, output_offset=0)
        outs = []
        for single in (False, True):
            m, e = T.populate_convolution_quantization_params(0.05, s_w, 0.1, single_rounding=single)
            outs.append(T.conv2d(x, wq, b, output_multiplier=m, output_shift=e, single_rounding=single, **kw))
        if not np.array_equal(*outs):
            want = run_conv2d(x, wq, b, 0.05, -5, s_w, 0.1, 0, kernel="reference")
            np.testing.assert_array_equal(outs[0], want)
            assert not np.array_equal(outs[1], want)
            return
    pytest.fail("no input found where double and single rounding differ")
