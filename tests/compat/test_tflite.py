"""refquant.compat.tflite: hand-worked TFLite examples and a literal loop oracle for Conv."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refquant import RefquantError
from refquant.compat import tflite as T


def test_affine_quantize_ties_away_from_zero():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5], np.float32)
    np.testing.assert_array_equal(T.affine_quantize(x, 1.0, 0), [1, 2, 3, -1, -2])
    # optimized: whole groups of 8 go through x * fl(1/s) with ties to even, the tail of
    # size % 8 through the scalar path (ties away): 13 elements = 8 + 5
    x13 = np.concatenate([x, x[:3], x])
    np.testing.assert_array_equal(T.affine_quantize(x13, 1.0, 0, kernel="optimized"),
                                  [0, 2, 2, 0, -2, 0, 2, 2, 1, 2, 3, -1, -2])


def test_affine_quantize_x86_cast_sends_huge_values_to_int32_min():
    x = np.array([1e10, -1e10, np.inf, np.nan, 300.0], np.float32)
    # cvttss2si gives INT32_MIN; + 3 then clamp -> -128; with zero point -1 it wraps to INT32_MAX
    np.testing.assert_array_equal(T.affine_quantize(x, 1.0, 3), [-128, -128, -128, -128, 127])
    np.testing.assert_array_equal(T.affine_quantize(x, 1.0, -1), [127, 127, 127, 127, 127])
    # ARM saturates the cast (NaN -> 0); INT32_MAX + 3 then wraps, so zero point 0 shows it
    np.testing.assert_array_equal(T.affine_quantize(x, 1.0, 0, cast="arm"), [127, -128, 127, 0, 127])
    np.testing.assert_array_equal(T.affine_quantize(x, 1.0, 3, cast="arm"),
                                  [-128, -128, -128, 3, 127])
    np.testing.assert_array_equal(T.affine_quantize(x, 1.0, 3, kernel="xnnpack"),
                                  [127, -128, 127, 127, 127])


def test_affine_quantize_rejects_bad_zero_point_and_scale():
    with pytest.raises(RefquantError, match="zero_point 200"):
        T.affine_quantize([1.0], 1.0, 200)
    with pytest.raises(RefquantError, match="scale"):
        T.affine_quantize([1.0], 0.0, 0)


def test_nudge_moves_the_zero_point_onto_the_grid():
    # min=-0.4, max=1.1, 2 bits: s = 1.5/3 = 0.5, z_f = 0.8 -> 1 -> range [-0.5, 1.0]
    nmin, nmax, s, inv = T.nudge(-0.4, 1.1, 0, 3)
    assert (float(nmin), float(nmax), float(s), float(inv)) == (-0.5, 1.0, 0.5, 2.0)


def test_fake_quant_with_min_max_args_rounds_ties_up_and_clamps():
    x = np.array([0.25, -0.25, 2.0, -3.0, 0.74], np.float32)
    # grid {-0.5, 0, 0.5, 1.0}: 0.25 tie -> 0.5, -0.25 tie -> 0 (up), clamps, 0.74 -> 0.5
    out = T.fake_quant_with_min_max_args(x, -0.4, 1.1, num_bits=2)
    np.testing.assert_array_equal(out, np.array([0.5, 0.0, 1.0, -0.5, 0.5], np.float32))
    assert out.dtype == np.float32


def test_fake_quant_narrow_range_drops_code_zero():
    # narrow: quant range [1, 3], s = 1.0 / 2 = 0.5 for [-0.5, 0.5]; z_f = 1 - (-1) = 2
    out = T.fake_quant_with_min_max_args(np.float32([-1.0, 1.0]), -0.5, 0.5, 2, narrow_range=True)
    np.testing.assert_array_equal(out, [-0.5, 0.5])


def test_fake_quant_rejects_tf_invalid_attributes():
    with pytest.raises(RefquantError, match="smaller than max"):
        T.fake_quant_with_min_max_args([0.0], 1.0, 1.0)
    with pytest.raises(RefquantError, match="between 2 and 16"):
        T.fake_quant_with_min_max_args([0.0], num_bits=1)


def test_symmetric_bias_quantize_uses_float_reciprocal_and_half_away():
    # s = 0.5 * 0.5 = 0.25, 1/s = 4: 0.125 * 4 = 0.5 -> 1 (away), -0.375 * 4 = -1.5 -> -2
    np.testing.assert_array_equal(T.symmetric_bias_quantize([0.125, -0.375, 1e12], 0.5, 0.5),
                                  [1, -2, 2**31 - 1])
    assert T.symmetric_bias_quantize([-1e12], 1.0, 1.0)[0] == -(2**31 - 1)


def test_activation_ranges():
    assert T.calculate_activation_range_quantized("NONE", 0.1, 5) == (-128, 127)
    assert T.calculate_activation_range_quantized("RELU", 0.1, 5) == (5, 127)
    assert T.calculate_activation_range_quantized("RELU6", 0.1, -128) == (-128, -68)
    assert T.calculate_activation_range_quantized("RELU_N1_TO_1", 0.25, 0) == (-4, 4)


def test_compute_padding_same_puts_the_odd_pixel_at_the_end():
    assert T.compute_padding("SAME", 5, 2, 1, 1) == (5, 0)  # total 1: 0 before, 1 after
    assert T.compute_padding("SAME", 5, 3, 2, 1) == (3, 1)
    assert T.compute_padding("VALID", 7, 3, 2, 2) == (2, 0)
    with pytest.raises(RefquantError, match="no output"):
        T.compute_padding("VALID", 2, 3, 1, 1)


def test_fully_connected_hand_example():
    # x = [1, 2] (zero point -1 -> input_offset 1), w = [[3, -4]], bias 10:
    # acc = 3*2 + (-4)*3 + 10 = 4; M = 0.5 -> 2; + output zero point 7 = 9
    m, e = T.populate_convolution_quantization_params(1.0, 1.0, 2.0)
    out = T.fully_connected(np.int8([[1, 2]]), np.int8([[3, -4]]), np.int32([10]), input_offset=1,
                            output_offset=7, output_multiplier=m, output_shift=e)
    assert out.tolist() == [[9]] and out.dtype == np.int8


def test_reference_fully_connected_with_float_scales_rounds_the_double_product_half_away():
    # LiteRT's reference FC: round(double(acc) * (double(s_in) double(s_w) / double(s_out))).
    # M = 0.25 * 1 / 0.5 = 1/2: acc = -1, -3, 1, 3, -5 -> -0.5, -1.5, 0.5, 1.5, -2.5 -> half away
    # from zero: -1, -2, 1, 2, -3 (the fixed point, single rounding half up: 0, -1, 1, 2, -2).
    x = np.int8([[-1], [-3], [1], [3], [-5]])
    w = np.int8([[1]])
    out = T.fully_connected(x, w, input_scale=0.25, filter_scale=1.0, output_scale=0.5)
    assert out[:, 0].tolist() == [-1, -2, 1, 2, -3] and out.dtype == np.int8
    # per channel (M = 1/2, 1/8): acc = -1 + bias (0, -3) = -1, -4 -> -0.5, -0.5 -> -1, -1;
    # + zero point 2
    out = T.fully_connected(np.int8([[-1]]), np.int8([[1], [1]]), np.int32([0, -3]), output_offset=2,
                            input_scale=0.25, filter_scale=[1.0, 0.25], output_scale=0.5)
    assert out.tolist() == [[1, 1]]
    out = T.fully_connected(np.int8([[-1]]), np.int8([[1], [2]]), input_scale=0.25,
                            filter_scale=[1.0, 0.25], output_scale=0.5)
    assert out.tolist() == [[-1, 0]]  # -0.5 -> -1; -2 * 1/8 = -0.25 -> 0


def test_reference_fully_connected_uses_the_real_multiplier_not_the_quantized_one():
    # M = (1 + 2^-20)(1 - 2^-20) / 2 = 1/2 - 2^-41 quantizes to (2^30, 0) = exactly 1/2, but the
    # float-scale reference multiplies by the double M: acc = 1 -> 0.4999... -> 0, acc = -1 -> 0,
    # acc = 3 -> 1.4999... -> 1 (gemmlowp on the exact tie 1/2: SRDHM ties up: 1, 0, 2)
    a, c = 1 + 2.0**-20, 1 - 2.0**-20
    m, e = T.populate_convolution_quantization_params(a, c, 2.0)
    assert (m.tolist(), e.tolist()) == ([2**30], [0])
    x, w = np.int8([[1], [-1], [3]]), np.int8([[1]])
    out = T.fully_connected(x, w, input_scale=a, filter_scale=c, output_scale=2.0)
    assert out[:, 0].tolist() == [0, 0, 1]
    assert T.fully_connected(x, w, output_multiplier=m, output_shift=e)[:, 0].tolist() == [1, 0, 2]


def test_reference_fully_connected_int32_cast_of_a_huge_product_is_int32_min_on_x86():
    # 127 * 127 / 1e-6 = 1.6e10 leaves int32: x86's cvttsd2si gives INT32_MIN -> clamp -128;
    # ARM's fcvtzs saturates to INT32_MAX -> 127.
    kw = dict(input_scale=1.0, filter_scale=1.0, output_scale=1e-6)
    x, w = np.int8([[127], [-128]]), np.int8([[127]])
    assert T.fully_connected(x, w, **kw)[:, 0].tolist() == [-128, -128]
    assert T.fully_connected(x, w, cast="arm", **kw)[:, 0].tolist() == [127, -128]


def test_reference_fully_connected_int64_bias_accumulates_exactly():
    # 600 * 32767 * 127 = 2496845400 > 2^31 - 1: exact with an int64 bias, wrapped with int32
    x, w = np.full((1, 600), 32767, np.int16), np.full((1, 600), 127, np.int8)
    kw = dict(input_scale=1.0, filter_scale=1.0, output_scale=2.0**20, output_dtype="int16")
    exact = 2496845400
    wrapped = exact - 2**32
    assert T.fully_connected(x, w, np.zeros(1, np.int64), **kw).tolist() == [[round(exact / 2**20)]]
    assert T.fully_connected(x, w, np.zeros(1, np.int32), **kw).tolist() == [[round(wrapped / 2**20)]]


def test_fully_connected_default_activation_range_is_the_output_dtype_range():
    # uint8 output 200 and int16 output -1000 are not clipped to int8's [-128, 127]
    kw = dict(input_scale=1.0, filter_scale=1.0, output_scale=1.0)
    out = T.fully_connected(np.uint8([[200]]), np.uint8([[1]]), output_dtype="uint8", **kw)
    assert out.tolist() == [[200]] and out.dtype == np.uint8
    out = T.fully_connected(np.int16([[-1000]]), np.int8([[1]]), output_dtype="int16", **kw)
    assert out.tolist() == [[-1000]] and out.dtype == np.int16


def test_optimized_fully_connected_rounds_after_srdhm_half_up_by_hand():
    # M = 2^30 * 2^(-3 - 31) = 1/16. acc = 7: SRDHM(7, 2^30) = 3.5 -> 4, (4 + 4) >> 3 = 1,
    # where 7/16 = 0.4375 rounds once to 0. acc = -8: -4, (-4 + 4) >> 3 = 0 (half up);
    # gemmlowp's RoundingDivideByPOT gives -1 (away). acc = -24: -12 -> (-12 + 4) >> 3 = -1.
    x = np.int8([[7], [-8], [-24], [9]])
    w = np.int8([[1]])
    kw = dict(output_multiplier=1 << 30, output_shift=-3)
    assert T.fully_connected(x, w, kernel="optimized", **kw)[:, 0].tolist() == [1, 0, -1, 1]
    assert T.fully_connected(x, w, **kw)[:, 0].tolist() == [1, -1, -2, 1]
    assert T.fully_connected(x, w, single_rounding=True, **kw)[:, 0].tolist() == [0, 0, -1, 1]


def test_optimized_left_shift_applies_before_the_multiplier():
    # shift +2: (acc << 2) then SRDHM with m = 2^30 (x 1/2): acc = 3 -> 12 -> 6
    out = T.fully_connected(np.int8([[3], [-3]]), np.int8([[1]]), output_multiplier=1 << 30,
                            output_shift=2, kernel="optimized")
    assert out[:, 0].tolist() == [6, -6]


def test_xnnpack_fully_connected_is_a_float32_product_rounded_to_even():
    # sigma = 0.5 (exact): acc = 5 -> 2.5 -> 2, acc = -3 -> -1.5 -> -2, acc = 7 -> 3.5 -> 4;
    # + zero point 1, then clamp at output_activation_max 4
    sigma = T.xnnpack_requantization_scale(0.25, 1.0, 0.5)
    assert sigma.tolist() == [0.5] and sigma.dtype == np.float32
    out = T.fully_connected(np.int8([[5], [-3], [7]]), np.int8([[1]]), output_offset=1,
                            output_activation_max=4, kernel="xnnpack", requantization_scale=sigma)
    assert out[:, 0].tolist() == [3, -1, 4]


def test_xnnpack_requantization_scale_rounds_each_step_to_float32():
    # fl32(fl32(s_in * s_w) / s_out): (1 + 2^-20)(1 - 2^-20) = 1 - 2^-40 rounds to 1 in float32
    s = T.xnnpack_requantization_scale(1 + 2**-20, [1 - 2**-20, 0.5], 2.0)
    assert s.tolist() == [0.5, np.float32((1 + 2**-20) * 0.5) / 2]
    with pytest.raises(RefquantError, match="256"):
        T.xnnpack_requantization_scale(16.0, 16.0, 1.0)


def test_xnnpack_activation_range_ties_to_even_after_adding_the_zero_point():
    assert T.xnnpack_activation_range("RELU6", 12.0, 0) == (0, 0)  # 0.5 -> 0
    assert T.calculate_activation_range_quantized("RELU6", 12.0, 0) == (0, 1)  # away: 1
    assert T.xnnpack_activation_range("RELU6", 12.0, 1) == (1, 2)  # 1.5 -> 2
    assert T.xnnpack_activation_range("RELU", 0.1, 5) == (5, 127)
    assert T.xnnpack_activation_range("NONE", 0.1, 5) == (-128, 127)
    assert T.xnnpack_activation_range("RELU_N1_TO_1", 1e-3, 0) == (-128, 127)


def conv_literal(x, w, b, sh, sw, dh, dw, padding, in_off, out_off, m, e, lo, hi, sr):
    """TFLite reference ConvPerChannel written as its loops (skips taps outside the image)."""
    n, ih, iw, ic = x.shape
    oc, kh, kw, _ = w.shape
    oh, ph = T.compute_padding(padding, ih, kh, sh, dh)
    ow, pw = T.compute_padding(padding, iw, kw, sw, dw)
    out = np.zeros((n, oh, ow, oc), np.int64)
    for bb in range(n):
        for oy in range(oh):
            for ox in range(ow):
                for c in range(oc):
                    acc = 0
                    for fy in range(kh):
                        for fx in range(kw):
                            iy, ix = oy * sh - ph + dh * fy, ox * sw - pw + dw * fx
                            if not (0 <= iy < ih and 0 <= ix < iw):
                                continue
                            for k in range(ic):
                                acc += int(w[c, fy, fx, k]) * (int(x[bb, iy, ix, k]) + in_off)
                    acc += int(b[c])
                    v = int(T.multiply_by_quantized_multiplier(acc, m[c], e[c], single_rounding=sr))
                    out[bb, oy, ox, c] = min(max(v + out_off, lo), hi)
    return out


@settings(max_examples=40)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["SAME", "VALID"]), st.booleans())
def test_conv2d_matches_literal_loops(seed, padding, sr):
    rng = np.random.default_rng(seed)
    h, w_, c, oc = (int(v) for v in rng.integers(2, 6, 4))
    kh, kw = (int(v) for v in rng.integers(1, 4, 2))
    sh, sw, dh, dw = (int(v) for v in rng.integers(1, 3, 4))
    if padding == "VALID" and ((kh - 1) * dh + 1 > h or (kw - 1) * dw + 1 > w_):
        padding = "SAME"
    x = rng.integers(-128, 128, (2, h, w_, c)).astype(np.int8)
    wq = rng.integers(-127, 128, (oc, kh, kw, c)).astype(np.int8)
    b = rng.integers(-2000, 2000, oc).astype(np.int32)
    m, e = T.populate_convolution_quantization_params(0.05, rng.uniform(0.001, 0.02, oc), 0.3,
                                                      single_rounding=sr)
    z_in = int(rng.integers(-128, 128))
    got = T.conv2d(x, wq, b, stride_height=sh, stride_width=sw, dilation_height_factor=dh,
                   dilation_width_factor=dw, padding=padding, input_offset=-z_in, output_offset=3,
                   output_multiplier=m, output_shift=e, output_activation_min=-100,
                   output_activation_max=120, single_rounding=sr)
    want = conv_literal(x, wq, b, sh, sw, dh, dw, padding, -z_in, 3, m, e, -100, 120, sr)
    np.testing.assert_array_equal(got, want)


_M = {"output_multiplier": 1 << 30, "output_shift": 0}


@pytest.mark.parametrize("call", [
    # silently wrong once: float input truncated to integers, a negative scale giving an
    # activation range (0, -6), a zero point of 0.5 read as 0
    lambda: T.conv2d(np.float32(np.full((1, 3, 3, 1), 1.7)), np.int8(np.ones((1, 2, 2, 1))), **_M),
    lambda: T.conv2d(np.int8(np.ones((1, 3, 3, 1))), np.float32(np.ones((1, 2, 2, 1))), **_M),
    lambda: T.calculate_activation_range_quantized("RELU6", -1.0, 0),
    lambda: T.affine_quantize(np.float32([1]), 0.1, 0.5),
    # NumPy / Python errors once
    lambda: T.calculate_activation_range_quantized("RELU6", 0.0, 0),
    lambda: T.calculate_activation_range_quantized("RELU", 0.1, "a"),
    lambda: T.affine_quantize(np.float32([1]), np.float32([0.1, 0.2]), 0),
    lambda: T.affine_quantize(np.float32([1]), "a", 0),
    lambda: T.fully_connected(np.int8([[1, 2]]), np.int8([[1, 2]] * 3),
                              output_multiplier=[1 << 30] * 2, output_shift=0),
    lambda: T.fully_connected(np.int8([[1, 2]]), np.int8([[1, 2]]), input_offset="a", **_M),
    lambda: T.compute_padding("SAME", "a", 3, 1, 1),
    lambda: T.compute_padding("VALID", 5, 0, 1, 1),
    lambda: T.fake_quant_with_min_max_args(np.float32([1]), "a", 1.0),
    lambda: T.populate_convolution_quantization_params("a", 0.1, 0.2),
    lambda: T.fully_connected(np.int8([[1]]), np.int8([[1]]), kernel="ruy", **_M),
    lambda: T.fully_connected(np.int8([[1]]), np.int8([[1]]), kernel="optimized",
                              single_rounding=True, **_M),
    lambda: T.fully_connected(np.int8([[1]]), np.int8([[1]]), kernel="xnnpack"),
    lambda: T.fully_connected(np.int8([[1]]), np.int8([[1]])),
    lambda: T.fully_connected(np.int8([[1]]), np.int8([[1]]), kernel="xnnpack",
                              requantization_scale=[0.5, 0.5]),
    lambda: T.fully_connected(np.int8([[1]]), np.int8([[1]]), kernel="optimized",
                              output_multiplier=-1, output_shift=0),
    lambda: T.xnnpack_activation_range("TANH", 0.1, 0),
    # the float-scale reference: incomplete, mixed with the fixed point, other kernels, bad values
    lambda: T.fully_connected(np.int8([[1]]), np.int8([[1]]), input_scale=1.0, filter_scale=1.0),
    lambda: T.fully_connected(np.int8([[1]]), np.int8([[1]]), input_scale=1.0, filter_scale=1.0,
                              output_scale=1.0, **_M),
    lambda: T.fully_connected(np.int8([[1]]), np.int8([[1]]), input_scale=1.0, filter_scale=1.0,
                              output_scale=1.0, single_rounding=True),
    lambda: T.fully_connected(np.int8([[1]]), np.int8([[1]]), input_scale=1.0, filter_scale=1.0,
                              output_scale=1.0, kernel="optimized"),
    lambda: T.fully_connected(np.int8([[1]]), np.int8([[1]]), input_scale=1.0,
                              filter_scale=[1.0, 1.0], output_scale=1.0),
    lambda: T.fully_connected(np.int8([[1]]), np.int8([[1]]), input_scale=0.0, filter_scale=1.0,
                              output_scale=1.0),
    lambda: T.fully_connected(np.int8([[1]]), np.int8([[1]]), input_scale=1.0, filter_scale=1.0,
                              output_scale=1.0, cast="riscv"),
])
def test_bad_arguments_raise_refquant_error(call):
    with pytest.raises(RefquantError):
        call()
