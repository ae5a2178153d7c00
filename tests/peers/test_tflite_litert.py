"""refquant.compat.tflite bit for bit against LiteRT (ai-edge-litert), kernel by kernel.

Models are built with LiteRT's own flatbuffer schema (``test_tflite_models.py``), so
no TensorFlow is needed. Measured on ai-edge-litert 2.3.0, x86-64:

- QUANTIZE: the reference kernel divides and rounds half away; XNNPACK
  multiplies by a float32 reciprocal and rounds half to even; the optimized
  kernel does the latter on whole groups of 8 elements and the former on the tail;
  XNNPACK saturates NaN/Inf/huge values, the others go through x86's int32 cast.
- FULLY_CONNECTED and CONV_2D (per tensor and per channel), by resolver:
  ``BUILTIN_REF`` FC (int8, uint8, int16) multiplies the accumulator by the real
  multiplier ``double(s_in) double(s_w) / double(s_out)`` in double and rounds half away
  (``input_scale=`` / ``filter_scale=`` / ``output_scale=``), through x86's int32 cast;
  the reference Conv is gemmlowp's double rounding. ``BUILTIN_WITHOUT_DEFAULT_DELEGATES``
  (ruy): SRDHM then a right shift rounding half up (``kernel="optimized"``).
  ``AUTO`` (XNNPACK): float32 ``acc * fl32(fl32(s_in s_w) / s_out)``, ties to even,
  with its own activation bounds (``kernel="xnnpack"``).
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
    # every draw carries the special values and the explicit ties; the rest fills up to
    # 100 + n elements (lengths that are and are not multiples of 8, the SIMD tail), and a
    # permutation spreads the specials over SIMD groups and the tail
    special = np.concatenate([
        np.float32([0.0, -0.0, np.nan, np.inf, -np.inf, 3e9, -3e9, 1e38]),
        np.float32([0.5, 1.5, 2.5, -2.5]) * np.float32(scale),
    ])
    rest = np.concatenate([
        ((k + 0.5) * np.float64(scale)).astype(np.float32),  # ties (up to float32 rounding)
        (k * np.float64(scale)).astype(np.float32),
        rng.normal(0, 100 * scale, 32).astype(np.float32),
    ])
    x = np.concatenate([special, rest[: 100 + n - special.size]])
    x = x[rng.permutation(x.size)]
    assert x.size == 100 + n and np.isnan(x).sum() == 1 and np.isinf(x).sum() == 2
    x = x.reshape(-1, 1) if n % 2 else x
    np.testing.assert_array_equal(T.affine_quantize(x, scale, zp, dtype=dtype, kernel=kernel),
                                  run_quantize(x, scale, zp, dtype=dtype, kernel=kernel))


def test_optimized_quantize_rounds_simd_groups_to_even_and_the_tail_away():
    x = np.float32([0.5, 1.5, 2.5, -2.5] * 3)  # 12 elements: 8 through SIMD, 4 scalar
    got = run_quantize(x, 1.0, 0, kernel="optimized")
    assert got.tolist() == [0, 2, 2, -2] * 2 + [1, 2, 3, -3]
    np.testing.assert_array_equal(T.affine_quantize(x, 1.0, 0, kernel="optimized"), got)


def _requant_args(kernel, s_in, s_w, s_out, z_out, activation="NONE"):
    """fully_connected / conv2d keyword arguments for one LiteRT kernel, from the float scales."""
    if kernel == "xnnpack":
        lo, hi = T.xnnpack_activation_range(activation, s_out, z_out)
        return dict(requantization_scale=T.xnnpack_requantization_scale(s_in, s_w, s_out),
                    output_activation_min=lo, output_activation_max=hi, kernel=kernel)
    single = False
    m, e = T.populate_convolution_quantization_params(s_in, s_w, s_out, single_rounding=single)
    lo, hi = T.calculate_activation_range_quantized(activation, s_out, z_out)
    return dict(output_multiplier=m, output_shift=e, output_activation_min=lo,
                output_activation_max=hi, kernel=kernel)


@settings(max_examples=60)
@given(seed=st.integers(0, 2**32 - 1), kernel=st.sampled_from(["optimized", "xnnpack"]),
       activation=st.sampled_from(["NONE", "RELU", "RELU6", "RELU_N1_TO_1"]),
       per_channel=st.booleans(), has_bias=st.booleans(), batch=st.integers(1, 9))
def test_fully_connected_optimized_and_xnnpack_match_litert(seed, kernel, activation, per_channel,
                                                             has_bias, batch):
    rng = np.random.default_rng(seed)
    k, n = int(rng.integers(1, 40)), int(rng.integers(1, 9))
    x = rng.integers(-128, 128, (batch, k)).astype(np.int8)
    x[0, : k // 2] = -128  # extremes of the input grid
    x[-1, k // 2:] = 127
    w = rng.integers(-127, 128, (n, k)).astype(np.int8)
    w[0, :] = rng.choice([-127, 127], k)  # ±max weights
    b = rng.integers(-5000, 5000, n).astype(np.int32) if has_bias else None
    s_in, z_in = np.float32(rng.uniform(1e-3, 0.1)), int(rng.integers(-128, 128))
    s_w = rng.uniform(1e-3, 0.05, n if per_channel else 1).astype(np.float32)
    s_out, z_out = np.float32(rng.uniform(0.01, 2.0)), int(rng.integers(-128, 128))
    got = T.fully_connected(x, w, b, input_offset=-z_in, output_offset=z_out,
                            **_requant_args(kernel, s_in, s_w, s_out, z_out, activation))
    want = run_fully_connected(x, w, b, s_in, z_in, s_w, s_out, z_out, activation, kernel=kernel)
    np.testing.assert_array_equal(got, want)


_ACT_RANGE = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}


def _scales(rng, n_w, dyadic):
    """(s_in, s_w, s_out), float32. ``dyadic``: s_in = a 2^-p, s_w = b 2^-q (a, b odd) and
    s_out = 2^(j - p - q), so that M = ab / 2^j with j in 1..5 and exact ties of acc * M are common."""
    if not dyadic:
        return (np.float32(rng.uniform(1e-3, 0.1)), rng.uniform(1e-3, 0.05, n_w).astype(np.float32),
                np.float32(rng.uniform(0.01, 2.0)))
    p, q, j = int(rng.integers(4, 7)), int(rng.integers(5, 8)), int(rng.integers(1, 6))
    s_w = rng.choice([1, 3, 5], n_w) * 2.0**-q
    return np.float32(rng.choice([1, 3]) * 2.0**-p), s_w.astype(np.float32), np.float32(2.0 ** (j - p - q))


@settings(max_examples=100)
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(["int8", "uint8", "int16"]),
       activation=st.sampled_from(["NONE", "RELU", "RELU6"]), per_channel=st.booleans(),
       bias=st.sampled_from([None, "int32", "int64"]), batch=st.integers(1, 6),
       dyadic=st.booleans())
def test_reference_fully_connected_matches_litert(seed, dtype, activation, per_channel, bias, batch,
                                                  dyadic):
    """BUILTIN_REF FC bit for bit: int8 / uint8 / int16 activations, per tensor and per channel,
    with and without bias, batch > 1, grid extremes; ``dyadic`` draws small accumulators and
    dyadic multipliers, where exact ties of acc * M are common."""
    rng = np.random.default_rng(seed)
    qmin, qmax = _ACT_RANGE[dtype]
    k, n = int(rng.integers(1, 30)), int(rng.integers(1, 7))
    if dtype == "uint8":
        per_channel = False  # TFLite: per-channel weights need int8 / int16 activations
    qbt = None
    if dtype == "int16":  # zero points 0; default quantized_bias_type reads the bias as int64
        z_in = z_out = 0
        if bias == "int32":
            qbt = "int32"
    else:
        z_in, z_out = (int(v) for v in rng.integers(qmin, qmax + 1, 2))
        bias = "int32" if bias else None
    z_w = int(rng.integers(0, 256)) if dtype == "uint8" else 0
    w_span = 3 if dyadic else 127
    w = z_w + rng.integers(-w_span, w_span + 1, (n, k))
    w[0, :] = z_w + rng.choice([-w_span, w_span], k)  # the extremes of the weights drawn
    w = np.clip(w, 0, 255) if dtype == "uint8" else w
    if dyadic:
        x = np.clip(z_in + rng.integers(-4, 5, (batch, k)), qmin, qmax)
    else:
        x = rng.integers(qmin, qmax + 1, (batch, k))
        x[0, : k // 2] = qmin  # extremes of the input grid
        x[-1, k // 2:] = qmax
    b = None if bias is None else rng.integers(-300 if dyadic else -5000, 300 if dyadic else 5000, n).astype(bias)
    s_in, s_w, s_out = _scales(rng, n if per_channel else 1, dyadic)
    lo, hi = T.calculate_activation_range_quantized(activation, s_out, z_out, dtype=dtype)
    got = T.fully_connected(x.astype(dtype), w.astype("uint8" if dtype == "uint8" else "int8"), b,
                            input_offset=-z_in, filter_offset=-z_w, output_offset=z_out,
                            input_scale=s_in, filter_scale=s_w, output_scale=s_out,
                            output_activation_min=lo, output_activation_max=hi, output_dtype=dtype)
    want = run_fully_connected(x, w, b, s_in, z_in, s_w, s_out, z_out, activation, kernel="reference",
                               dtype=dtype, z_w=z_w, quantized_bias_type=qbt)
    np.testing.assert_array_equal(got, want)


# acc = x (one input, weight 1, no zero points), s_in = 1/4, s_w = 1, s_out = 4: M = 1/16
# exactly (m = 2^30, shift -3), so acc = 8j + 4 are exact ties and acc = 8j + 3 lie 1/16
# below one.
_TIE_X = np.arange(-128, 128, dtype=np.int8).reshape(-1, 1)
_TIE_W = np.ones((1, 1), np.int8)


@pytest.mark.parametrize("kernel", ["optimized", "xnnpack"])
def test_exact_multiplier_ties_match_litert(kernel):
    s_in, s_w, s_out = np.float32(0.25), np.float32([1.0]), np.float32(4.0)
    got = T.fully_connected(_TIE_X, _TIE_W, None, **_requant_args(kernel, s_in, s_w, s_out, 0))
    np.testing.assert_array_equal(got, run_fully_connected(_TIE_X, _TIE_W, None, s_in, 0, s_w, s_out,
                                                           0, kernel=kernel))
    conv = T.conv2d(_TIE_X.reshape(1, 16, 16, 1), _TIE_W.reshape(1, 1, 1, 1), None,
                    **_requant_args(kernel, s_in, s_w, s_out, 0))
    want = run_conv2d(_TIE_X.reshape(1, 16, 16, 1), _TIE_W.reshape(1, 1, 1, 1), np.int32([0]), s_in, 0,
                      s_w, s_out, 0, kernel=kernel)
    np.testing.assert_array_equal(conv, want)


def test_optimized_kernel_rounds_twice_and_ties_up_by_hand():
    """acc * M for acc = 7, -4, -20, 3 with M = 1/16: 0.4375, -0.25, -1.25, 0.1875.
    SRDHM(acc, 2^30) = acc / 2 rounded (ties up): 4, -2, -10, 2; then (h + 4) >> 3: 1, 0, -1, 0.
    Single rounding gives 0, 0, -1, 0 and gemmlowp's double rounding 1, 0, -1, 0; acc = -8
    (-0.5 exactly): optimized 0 (half up), gemmlowp -1 (away), XNNPACK 0 (to even)."""
    idx = np.array([7, -4, -20, 3, -8]) + 128
    want_opt = [1, 0, -1, 0, 0]
    got = run_fully_connected(_TIE_X[idx], _TIE_W, None, 0.25, 0, [1.0], 4.0, 0, kernel="optimized")
    assert got[:, 0].tolist() == want_opt
    assert T.fully_connected(_TIE_X[idx], _TIE_W, output_multiplier=2**30, output_shift=-3,
                             kernel="optimized")[:, 0].tolist() == want_opt


def test_xnnpack_rounds_a_float32_product_that_lands_on_a_tie_to_even():
    """Dyadic scales (exact in float32): acc * s_in * s_w / s_out = -48.5000030..., which the
    single- and double-rounding fixed point round to -49; XNNPACK's float32 sigma * acc is
    exactly -48.5 and rounds to even, -48."""
    s_in, s_w, s_out = 0.2137451171875, np.float32([0.0603790283203125]), 0.571044921875
    x = np.zeros((1, 1), np.int8)
    b = np.int32([-2146])
    want = run_fully_connected(x, _TIE_W, b, s_in, 0, s_w, s_out, 0, kernel="xnnpack")
    assert want.tolist() == [[-48]]
    args = _requant_args("xnnpack", s_in, s_w, s_out, 0)
    assert T.fully_connected(x, _TIE_W, b, **args).tolist() == [[-48]]
    m, e = T.populate_convolution_quantization_params(s_in, s_w, s_out)
    for single in (False, True):
        assert T.fully_connected(x, _TIE_W, b, output_multiplier=m, output_shift=e,
                                 single_rounding=single).tolist() == [[-49]]


@pytest.mark.parametrize("activation, s_out, z_out, want", [
    ("RELU6", 12.0, 0, (0, 0)),  # 6/12 + 0 = 0.5 -> 0 (builtin: 1)
    ("RELU6", 12.0, 1, (1, 2)),  # 1.5 -> 2 (builtin: 2)
    ("RELU6", 4.0, 3, (3, 4)),  # 4.5 -> 4 (builtin: 5)
    ("RELU_N1_TO_1", 2.0, 2, (2, 2)),  # 1.5 -> 2, 2.5 -> 2 (builtin: 1, 3)
])
def test_xnnpack_activation_bounds_round_ties_to_even_after_the_zero_point(activation, s_out, z_out,
                                                                            want):
    assert T.xnnpack_activation_range(activation, s_out, z_out) == want
    got = run_fully_connected(_TIE_X, _TIE_W, None, s_out, 0, [1.0], s_out, z_out, activation,
                              kernel="xnnpack")
    assert (int(got.min()), int(got.max())) == want
    ours = T.fully_connected(_TIE_X, _TIE_W, None, output_offset=z_out,
                             **_requant_args("xnnpack", s_out, [1.0], s_out, z_out, activation))
    np.testing.assert_array_equal(ours, got)


def test_reference_fully_connected_rounds_exact_ties_half_away_with_the_real_multiplier():
    """acc = x (weight 1). M = 1/4 / (1/2) = 1/2 exactly: acc * M = -0.5, -1.5, 0.5, 1.5, -2.5, 2.5
    round half away to -1, -2, 1, 2, -3, 3 (gemmlowp's single rounding, half up: 0, -1, 1, 2, -2, 3).
    M = (1 + 2^-20)(1 - 2^-20) / 2 = (1 - 2^-40) / 2 quantizes to exactly (2^30, 0), a tie for the
    fixed point, but LiteRT multiplies by the double M: acc * M lies just inside each half, so
    -1, -3, 1, 3, -5, 5 give 0, -1, 0, 1, -2, 2 (the fixed point sees ties: acc = 1 gives 1)."""
    x = np.int8([[-1], [-3], [1], [3], [-5], [5]])
    want_tie = [-1, -2, 1, 2, -3, 3]
    assert run_fully_connected(x, _TIE_W, None, 0.25, 0, [1.0], 0.5, 0)[:, 0].tolist() == want_tie
    got = T.fully_connected(x, _TIE_W, input_scale=0.25, filter_scale=1.0, output_scale=0.5)
    assert got[:, 0].tolist() == want_tie
    fixed = T.fully_connected(x, _TIE_W, output_multiplier=2**30, output_shift=0, single_rounding=True)
    assert fixed[:, 0].tolist() == [0, -1, 1, 2, -2, 3]

    a, c = 1 + 2.0**-20, 1 - 2.0**-20  # exact in float32
    assert [int(v[0]) for v in T.populate_convolution_quantization_params(a, c, 2.0)] == [2**30, 0]
    want_near = [0, -1, 0, 1, -2, 2]
    assert run_fully_connected(x, _TIE_W, None, a, 0, [c], 2.0, 0)[:, 0].tolist() == want_near
    got = T.fully_connected(x, _TIE_W, input_scale=a, filter_scale=[c], output_scale=2.0)
    assert got[:, 0].tolist() == want_near
    for single in (False, True):
        fixed = T.fully_connected(x, _TIE_W, output_multiplier=2**30, output_shift=0,
                                  single_rounding=single)
        assert fixed[2, 0] == 1


def test_reference_fully_connected_ties_per_channel_with_bias_and_batches():
    """Per channel (M = 1/2, 1/4, 3/8 exactly), biases that move acc onto ties, batch 256."""
    x = _TIE_X
    w = np.int8([[1], [1], [1]])
    b = np.int32([0, 2, -1])
    s_w = np.float32([1.0, 0.5, 0.75])
    want = run_fully_connected(x, w, b, 0.25, 0, s_w, 0.5, 0)
    got = T.fully_connected(x, w, b, input_scale=0.25, filter_scale=s_w, output_scale=0.5)
    np.testing.assert_array_equal(got, want)
    acc = x.astype(np.int64) + b  # hand-derived: half away from zero of acc * M
    m = np.array([0.5, 0.25, 0.375])
    hand = np.clip(np.sign(acc * m) * np.floor(np.abs(acc * m) + 0.5), -128, 127)
    np.testing.assert_array_equal(got, hand)


@pytest.mark.parametrize("z_out, want, want_arm", [(0, [-128, -128, 127], [127, -128, 127]),
                                                   (-5, [127, 127, 127], [127, 127, 127])])
def test_reference_fully_connected_casts_products_beyond_int32_to_int32_min_on_x86(z_out, want,
                                                                                    want_arm):
    """M = 1 / 1e-6: acc * M = 1.6e10 and -1.6e10 leave int32; static_cast<int32_t> (cvttsd2si)
    gives INT32_MIN, clamped to -128 (a positive overflow comes out as the minimum); with
    zero point -5 the int32 addition wraps INT32_MIN - 5 to INT32_MAX - 4: 127. ARM's fcvtzs
    saturates instead (INT32_MAX, INT32_MIN), with the same wrapping addition."""
    x = np.int8([[127], [-128], [1]])
    w = np.int8([[127]])
    assert run_fully_connected(x, w, None, 1.0, 0, [1.0], 1e-6, z_out)[:, 0].tolist() == want
    kw = dict(output_offset=z_out, input_scale=1.0, filter_scale=1.0, output_scale=1e-6)
    assert T.fully_connected(x, w, **kw)[:, 0].tolist() == want
    assert T.fully_connected(x, w, cast="arm", **kw)[:, 0].tolist() == want_arm


@pytest.mark.parametrize("bias_dtype, qbt, exact", [("int64", None, True), ("int32", "int32", False)])
def test_int16_reference_fully_connected_accumulates_in_the_bias_type(bias_dtype, qbt, exact):
    """K = 600 products 32767 * 127 sum to 2.5e9 > 2^31: an int64 bias (the default
    quantized_bias_type) keeps it exact, an int32 one wraps."""
    x = np.full((1, 600), 32767, np.int16)
    w = np.full((1, 600), 127, np.int8)
    b = np.zeros(1, bias_dtype)
    want = run_fully_connected(x, w, b, 1.0, 0, [1.0], 2.0**20, 0, dtype="int16",
                               quantized_bias_type=qbt)
    acc = 600 * 32767 * 127
    acc = acc if exact else (acc + 2**31) % 2**32 - 2**31
    assert want[0, 0] == np.sign(acc) * np.floor(abs(acc) / 2**20 + 0.5)
    got = T.fully_connected(x, w, b, input_scale=1.0, filter_scale=1.0, output_scale=2.0**20,
                            output_dtype="int16")
    np.testing.assert_array_equal(got, want)


def test_reference_conv_rounds_with_the_quantized_multiplier_unlike_reference_fc():
    """M = (1 - 2^-40) / 2 quantizes to exactly 1/2: LiteRT's reference CONV_2D sees the ties
    (gemmlowp double rounding: acc = 1 -> 1, -1 -> 0), its reference FC does not (0, 0)."""
    a, c = 1 + 2.0**-20, np.float32([1 - 2.0**-20])
    x = np.int8([1, -1, 3, -3]).reshape(1, 2, 2, 1)
    m, e = T.populate_convolution_quantization_params(a, c, 2.0)
    conv = run_conv2d(x, _TIE_W.reshape(1, 1, 1, 1), np.int32([0]), a, 0, c, 2.0, 0, kernel="reference")
    assert conv.reshape(-1).tolist() == [1, 0, 2, -1]
    ours = T.conv2d(x, _TIE_W.reshape(1, 1, 1, 1), None, output_multiplier=m, output_shift=e)
    np.testing.assert_array_equal(ours, conv)
    fc = run_fully_connected(x.reshape(4, 1), _TIE_W, None, a, 0, c, 2.0, 0, kernel="reference")
    assert fc[:, 0].tolist() == [0, 0, 1, -1]


@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), padding=st.sampled_from(["SAME", "VALID"]),
       kernel=st.sampled_from(["reference", "optimized", "xnnpack"]),
       activation=st.sampled_from(["NONE", "RELU", "RELU6"]), per_channel=st.booleans())
def test_conv2d_matches_litert(seed, padding, kernel, activation, per_channel):
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
    wq[0] = 127
    b = rng.integers(-3000, 3000, oc).astype(np.int32)
    s_in, z_in = np.float32(rng.uniform(0.01, 0.1)), int(rng.integers(-128, 128))
    s_w = rng.uniform(1e-3, 0.05, oc if per_channel else 1).astype(np.float32)
    s_out, z_out = np.float32(rng.uniform(0.05, 1.0)), int(rng.integers(-128, 128))
    got = T.conv2d(x, wq, b, stride_height=stride[0], stride_width=stride[1],
                   dilation_height_factor=dilation[0], dilation_width_factor=dilation[1],
                   padding=padding, input_offset=-z_in, output_offset=z_out,
                   **_requant_args(kernel, s_in, s_w, s_out, z_out, activation))
    want = run_conv2d(x, wq, b, s_in, z_in, s_w, s_out, z_out, stride=stride, dilation=dilation,
                      padding=padding, activation=activation, kernel=kernel)
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
