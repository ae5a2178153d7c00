"""refquant.compat.torch: PyTorch's semantics worked by hand, and bad input with torch's reasons.

(The bit-for-bit comparison with torch itself is in tests/peers/test_torch_quant.py.)
"""

from __future__ import annotations

import numpy as np
import pytest

from refquant import RefquantError
from refquant.compat import torch as rt
from refquant.quant.affine import quantize

F = np.float32

# ------------------------------------------------------------------ reciprocal (pytorch#139464)

X_ISSUE, S_ISSUE = F(0.273939937), F(0.00214854861)


def test_reciprocal_multiply_rounds_the_issue_example_up():
    # float32: x * (1/s) = 127.5 exactly (a tie, -> 128 half to even); x / s = 127.49999
    inv = F(F(1) / S_ISSUE)
    assert F(X_ISSUE * inv) == F(127.5)
    assert F(X_ISSUE / S_ISSUE) < F(127.5)
    assert rt.quantize_per_tensor(np.array([X_ISSUE]), S_ISSUE, 0, "quint8")[0] == 128
    assert rt.quantize_per_tensor(np.array([X_ISSUE]), S_ISSUE, 0, "qint32")[0] == 128
    # qint8 saturates 128 to 127
    assert rt.quantize_per_tensor(np.array([X_ISSUE]), S_ISSUE, 0, "qint8")[0] == 127


def test_core_with_reciprocal_float32_gives_torchs_128_and_divide_gives_127():
    x = np.array([X_ISSUE])
    assert quantize(x, S_ISSUE, dtype="uint8", scale_op="reciprocal", precision="float32")[0] == 128
    assert quantize(x, S_ISSUE, dtype="uint8", scale_op="divide", precision="float32")[0] == 127


# ------------------------------------------------------------------ zero point stage


def test_quint8_per_tensor_adds_the_zero_point_before_rounding():
    # s = 0.5, x = 0.25: x * 2 = 0.5; fma(0.25, 2, 3) = 3.5 -> 4 (even).
    # Adding after rounding would give rint(0.5) + 3 = 3.
    x = np.array([0.25, 0.75, -0.25], F)
    np.testing.assert_array_equal(rt.quantize_per_tensor(x, 0.5, 3, "quint8"), [4, 4, 2])


def test_per_channel_adds_the_zero_point_before_rounding_too():
    x = np.array([[0.25], [0.25]], F)
    q = rt.quantize_per_channel(x, np.array([0.5, 0.5]), np.array([3, 0]), 0, "quint8")
    np.testing.assert_array_equal(q, [[4], [0]])  # 3.5 -> 4; 0.5 -> 0


def test_fake_quantize_adds_the_zero_point_after_rounding():
    # rint(0.5) = 0 -> q = 3 -> (3 - 3) * 0.5 = 0
    y = rt.fake_quantize_per_tensor_affine(np.array([0.25], F), 0.5, 3, 0, 255)
    assert y.dtype == np.float32 and float(y[0]) == 0.0


def test_fake_quantize_adds_the_zero_point_in_float32():
    # torch writes z + nearbyint(x * inv_scale): an integer plus a float, a float32
    # sum. x = 2^24 + 2, s = 1, z = 1: 2^24 + 3 is a float32 tie -> 2^24 + 4 (even),
    # so q = 2^24 + 4 and q - z = 2^24 + 3 -> 2^24 + 4 again; exact integers give
    # q - z = 2^24 + 2. Negative: -2^24 - 1 -> -2^24 (even), q - z -> -2^24.
    x = np.array([2.0**24 + 2, -(2.0**24) - 2], F)
    want = np.array([2.0**24 + 4, -(2.0**24)], F)
    qmin, qmax = -(2**31), 2**31 - 1
    np.testing.assert_array_equal(rt.fake_quantize_per_tensor_affine(x, 1.0, 1, qmin, qmax), want)
    np.testing.assert_array_equal(
        rt.fake_quantize_learnable_per_tensor_affine(x, [1.0], [1.0], qmin, qmax), want
    )
    y = rt.fake_quantize_per_channel_affine(
        x.reshape(1, 2), np.array([1.0], F), np.array([1], np.int32), 0, qmin, qmax
    )
    np.testing.assert_array_equal(y, want.reshape(1, 2))


# s = float32(1 / (1 + 2^-23)) = 1 - 2^-23, so 1/s = 1 + 2^-23 in float32, and
# x = -127.5 + 2^-16 gives the exact product x * (1/s) = -127.5 + 2^-24 + 2^-39.
FMA_S = F(1 - 2.0**-23)
FMA_X = F(-127.5 + 2.0**-16)


def test_fused_multiply_add_rounds_once():
    assert F(F(1) / FMA_S) == F(1 + 2.0**-23)
    # two roundings: float32(x / s) = -127.5, + 128 = 0.5 -> 0 (even)
    assert F(FMA_X * F(1 + 2.0**-23)) == F(-127.5)
    # one rounding (quint8 per tensor): 0.5 + 2^-24 + 2^-39 -> 0.5 + 2^-24 -> 1
    assert rt.quantize_per_tensor(np.array([FMA_X]), FMA_S, 128, "quint8")[0] == 1
    # qint32 (fbgemm scalar path: float32 x * (1/s), then + z, then rint) gives 0
    assert rt.quantize_per_tensor(np.array([FMA_X]), FMA_S, 128, "qint32")[0] == 0


# ------------------------------------------------------------------ NaN, Inf, saturation


def test_nan_goes_where_each_torch_kernel_sends_it():
    x = np.array([np.nan], F)
    assert rt.quantize_per_tensor(x, 0.1, 3, "quint8")[0] == 255
    assert rt.quantize_per_tensor(x, 0.1, 3, "qint8")[0] == 127
    assert rt.quantize_per_tensor(x, 0.1, 0, "qint32")[0] == -(2**31)
    assert rt.quantize_per_channel(x[None], [0.1], [3], 0, "quint8")[0, 0] == 0
    assert rt.quantize_per_channel(x[None], [0.1], [3], 0, "qint8")[0, 0] == 0
    # fake-quant: NaN -> quant_min: (0 - 3) * 0.1
    assert rt.fake_quantize_per_tensor_affine(x, 0.1, 3, 0, 255)[0] == F(-3 * np.float64(F(0.1)))


def test_inf_saturates_per_tensor_but_goes_to_quant_min_in_per_channel_fake_quant():
    x = np.array([np.inf, -np.inf, 1e30], F)
    np.testing.assert_array_equal(rt.quantize_per_tensor(x, 0.1, 3, "quint8"), [255, 0, 255])
    y = rt.fake_quantize_per_tensor_affine(x, 0.5, 0, 0, 255)
    np.testing.assert_array_equal(y, [127.5, 0.0, 127.5])
    # per channel: the int64 cast of inf / 2e30 is INT64_MIN -> quant_min
    y = rt.fake_quantize_per_channel_affine(x[None], [0.5], np.array([0], np.int32), 0, 0, 255)
    np.testing.assert_array_equal(y, [[0.0, 0.0, 0.0]])
    y = rt.fake_quantize_per_channel_affine(
        np.array([[3e9]], F), [0.5], np.array([0], np.int32), 0, 0, 255
    )
    assert y[0, 0] == 127.5  # 6e9 fits in int64: saturates to quant_max


def test_quint4x2_codes_unpacked():
    # s = 0.1 (1/s = 10 in float32), z = 2: 0.5 -> 7, 1.0 -> 12, -3 -> 0, 0.7 -> 9
    q = rt.quantize_per_tensor(np.array([0.5, 1.0, -3.0, 0.7], F), 0.1, 2, "quint4x2")
    np.testing.assert_array_equal(q, [7, 12, 0, 9])
    assert q.dtype == np.uint8


# ------------------------------------------------------------------ dequantize


def test_dequantize_per_tensor_is_a_float32_product():
    q = np.array([0, 128, 255], np.uint8)
    y = rt.dequantize(q, 0.1, 128)
    np.testing.assert_array_equal(y, [F(-128) * F(0.1), 0.0, F(127) * F(0.1)])


def test_dequantize_qint32_rounds_q_minus_z_to_float32_first():
    q = np.array([2**24 + 1], np.int32)  # not a float32: float(q - 0) = 2^24
    y = rt.dequantize(q, 1.0, 0, dtype="qint32")
    assert float(y[0]) == 2.0**24
    yc = rt.dequantize(q, [1.0], [0], axis=0, dtype="qint32")
    assert float(yc[0]) == 2.0**24


def test_dequantize_per_channel_uses_the_double_scale():
    s = np.array([0.1, 0.2])
    y = rt.dequantize(np.array([[3, 3]], np.uint8), s, [1, 0], axis=1)
    np.testing.assert_array_equal(y, [[F(2 * 0.1), F(3 * 0.2)]])


# ------------------------------------------------------------------ learnable


def test_learnable_forward_rounds_the_zero_point_first():
    # z = 2.5 -> nearbyint -> 2 (even); x = 0.25, s = 0.5: rint(0.5) + 2 = 2 -> (2 - 2) * 0.5 = 0
    y = rt.fake_quantize_learnable_per_tensor_affine(np.array([0.25], F), [0.5], [2.5], 0, 255)
    assert float(y[0]) == 0.0
    # a zero point outside [quant_min, quant_max] is clamped, not rejected
    y = rt.fake_quantize_learnable_per_tensor_affine(np.array([0.0], F), [1.0], [300.0], 0, 255)
    assert float(y[0]) == 0.0


# ------------------------------------------------------------------ observers


def test_minmax_observer_affine_by_hand():
    # [-2, 3]: s = 5 / 255 (float32), z = 0 - rint(-2 / s) = rint(102.0) = 102
    o = rt.MinMaxObserver()
    assert o.forward(np.array([1.0, -2.0, 3.0], F)) is not None
    s, z = o.calculate_qparams()
    assert s.dtype == np.float32 and s.shape == (1,) and s[0] == F(5) / F(255)
    assert z.dtype == np.int32 and z[0] == 102


def test_minmax_observer_symmetric_uses_half_the_span_and_zero_point_128():
    o = rt.MinMaxObserver(qscheme="per_tensor_symmetric")
    o.forward(np.array([1.0, -2.0, 3.0], F))
    s, z = o.calculate_qparams()
    assert s[0] == F(3) / F(127.5) and z.dtype == np.int64 and z[0] == 128


def test_symmetric_custom_range_zero_point_rounds_the_midpoint_down():
    o = rt.MinMaxObserver(qscheme="per_tensor_symmetric", quant_min=0, quant_max=15)
    o.forward(np.array([1.0, -2.0], F))
    s, z = o.calculate_qparams()
    assert z[0] == 7 and s[0] == F(2) / F(7.5)


def test_empty_observer_returns_scale_1_zero_point_0_with_a_warning():
    for obs in (rt.MinMaxObserver(), rt.PerChannelMinMaxObserver(), rt.HistogramObserver()):
        with pytest.warns(UserWarning, match="must run observer"):
            s, z = obs.calculate_qparams()
        assert s.tolist() == [1.0] and z.tolist() == [0] and z.dtype == np.int64


def test_nan_observed_gives_a_nan_scale():
    o = rt.MinMaxObserver()
    o.forward(np.array([1.0, np.nan], F))
    s, z = o.calculate_qparams()
    assert np.isnan(s[0]) and z[0] == 0


def test_moving_average_observer_by_hand():
    o = rt.MovingAverageMinMaxObserver(averaging_constant=0.5)
    o.forward(np.array([0.0, 4.0], F))
    o.forward(np.array([2.0, 8.0], F))
    assert (float(o.min_val), float(o.max_val)) == (1.0, 6.0)
    s, z = o.calculate_qparams()
    assert s[0] == F(6) / F(255) and z[0] == 0


def test_per_channel_float_qparams_zero_point_is_minus_min_over_scale():
    o = rt.PerChannelMinMaxObserver(qscheme="per_channel_affine_float_qparams")
    o.forward(np.array([[1.0, -2.0], [3.0, 4.0]], F))
    s, z = o.calculate_qparams()
    assert s.dtype == np.float32 and z.dtype == np.float32
    assert s[0] == F(3) / F(255) and z[0] == F(2) / s[0]  # range [-2, 1]
    assert s[1] == F(1) / F(255) and z[1] == F(-3) / s[1]  # range [3, 4], not widened to 0


def test_per_channel_observer_on_a_negative_axis():
    o = rt.PerChannelMinMaxObserver(ch_axis=-1, qscheme="per_channel_symmetric", dtype="qint8")
    o.forward(np.array([[1.0, -2.0], [3.0, 0.5]], F))
    s, z = o.calculate_qparams()
    np.testing.assert_array_equal(s, [F(3) / F(127.5), F(2) / F(127.5)])
    assert z.dtype == np.int64 and z.tolist() == [0, 0]


def test_histogram_observer_forward_returns_its_input_and_drops_inf():
    o = rt.HistogramObserver()
    x = np.array([1.0, np.inf, -1.0], F)
    with pytest.warns(UserWarning, match="inf"):
        assert o.forward(x) is x
    assert (float(o.min_val), float(o.max_val)) == (-1.0, 1.0)


# ------------------------------------------------------------------ bad input, torch's reasons


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: rt.fake_quantize_per_tensor_affine(np.ones(2, F), 0.1, 3, 10, 5), "quant_min"),
        (lambda: rt.fake_quantize_per_tensor_affine(np.ones(2, F), 0.1, 300, 0, 255), "zero_point"),
        (
            lambda: rt.fake_quantize_per_channel_affine(
                np.ones((1, 2), F), [0.1], np.array([0], np.int32), 0, 255, 0
            ),
            "quant_min",
        ),
        # a channel axis of length 0 with int32 zero points: torch's zero_point.min() range
        # check raises (refquant returned an empty array); float zero points return it
        (
            lambda: rt.fake_quantize_per_channel_affine(
                np.ones((2, 0), F), np.ones(0, F), np.zeros(0, np.int32), 1, 0, 255
            ),
            "no channel",
        ),
        (lambda: rt.quantize_per_tensor(np.ones(2, F), 0.1, 300, "quint8"), "above upper bound"),
        (lambda: rt.quantize_per_tensor(np.ones(2, F), 0.1, -1, "quint8"), "below lower bound"),
        (lambda: rt.quantize_per_tensor(np.ones(2), 0.1, 0, "quint8"), "Float Tensor"),
        (lambda: rt.quantize_per_tensor(np.ones(2, F), 0.0, 0, "quint8"), "scale"),
        (lambda: rt.quantize_per_tensor(np.ones(2, F), float("nan"), 0, "quint8"), "scale"),
        (lambda: rt.quantize_per_tensor(np.ones(2, F), 0.1, 0, "quint16"), "dtype"),
        (
            lambda: rt.quantize_per_channel(
                np.ones((2, 2), F), [0.1, 0.1, 0.1], [0] * 3, 0, "qint8"
            ),
            "length of scales",
        ),
        (
            lambda: rt.quantize_per_channel(np.ones((2, 2), F), [0.1, 0.1], [0, 0], 2, "qint8"),
            "Channel axis out of range",
        ),
        (
            lambda: rt.quantize_per_channel(np.ones((2, 2), F), [0.1, 0.1], [0, 300], 0, "quint8"),
            "above upper bound",
        ),
        (lambda: rt.MinMaxObserver(qscheme="per_channel_affine"), "qscheme"),
        (lambda: rt.PerChannelMinMaxObserver(qscheme="per_tensor_affine"), "qscheme"),
        (lambda: rt.MinMaxObserver(qscheme="per_tensor_affine_float"), "per_channel_float_qparams"),
        (
            lambda: rt.MinMaxObserver(qscheme="per_tensor_symmetric", reduce_range=True),
            "Cannot reduce range for symmetric quantization for quint8",
        ),
        (lambda: rt.MinMaxObserver(quant_min=1, quant_max=10), "must include 0"),
        (lambda: rt.MinMaxObserver(quant_min=0, quant_max=0), "strictly less"),
        (
            lambda: rt.MinMaxObserver(dtype="qint8", quant_min=-200, quant_max=100),
            "maximum bit range",
        ),
        (lambda: rt.HistogramObserver().forward(np.array([np.nan], F)), "not finite"),
    ],
)
@pytest.mark.filterwarnings("ignore:Please use quant_min")
def test_bad_input_raises_with_torchs_reason(call, match):
    with pytest.raises(RefquantError, match=match):
        call()


def test_inputs_are_not_modified():
    x = np.array([0.25, np.nan, 3.0], F)
    before = x.copy()
    rt.quantize_per_tensor(x, 0.5, 3, "quint8")
    rt.fake_quantize_per_channel_affine(x[None], [0.5], np.array([1], np.int32), 0, 0, 255)
    rt.MinMaxObserver().forward(x)
    np.testing.assert_array_equal(x, before)


# ------------------------------------------------------------------ observers: bounds the core refuses


def _qparams(obs, *batches):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for x in batches:
            obs.forward(np.asarray(x, F))
        return obs.calculate_qparams()


def test_observer_with_infinite_bounds_returns_torchs_infinite_scale():
    # min = -Inf: scale (1 + Inf) / 255 = Inf; -Inf / Inf = NaN; round(NaN).to(int32) is
    # INT32_MIN and -128 - INT32_MIN = 2^31 - 128 (int32), clamped to 127
    s, z = _qparams(rt.MinMaxObserver(dtype="qint8"), [1.0, -np.inf])
    assert s.tolist() == [np.inf] and z.tolist() == [127] and z.dtype == np.int32
    # max = +Inf, min = -2: scale Inf, -2 / Inf = -0 -> zero point 0 - 0 = 0
    s, z = _qparams(rt.MinMaxObserver(dtype="quint8"), [1.0, np.inf, -2.0])
    assert s.tolist() == [np.inf] and z.tolist() == [0]
    s, z = _qparams(rt.MinMaxObserver(qscheme="per_tensor_symmetric"), [np.inf])
    assert s.tolist() == [np.inf] and z.tolist() == [128] and z.dtype == np.int64


def test_observer_with_eps_zero_keeps_a_zero_scale():
    # torch.max(scale, eps) with eps = 0: an all-zero input keeps scale 0 (symmetric:
    # max(-min(0, 0), 0) = max(-0.0, 0.0) = -0.0, torch.max keeping its first argument)
    s, z = _qparams(rt.MinMaxObserver(dtype="qint8", qscheme="per_tensor_symmetric", eps=0.0), [0, 0])
    assert s.tolist() == [0.0] and np.signbit(s[0]) and z.tolist() == [0]
    # affine: 0 / 0 = NaN -> INT32_MIN -> -128 - INT32_MIN wraps to 2^31 - 128 -> 127
    s, z = _qparams(rt.MinMaxObserver(dtype="qint8", eps=0.0), [0, 0])
    assert s.tolist() == [0.0] and not np.signbit(s[0]) and z.tolist() == [127]


def test_float_qparams_observer_maps_a_nan_scale_to_one():
    # scale = (max - min) / 255 is NaN, NaN > eps is False -> 1; zero point -min / 1
    obs = rt.PerChannelMinMaxObserver(qscheme="per_channel_affine_float_qparams")
    s, z = _qparams(obs, [[1.0, np.nan], [1.0, 3.0], [-np.inf, 2.0]])
    assert s[0] == 1 and s[1] == F(F(2) / F(255)) and s[2] == np.inf
    assert np.isnan(z[0]) and z[1] == F(F(-1) / s[1]) and np.isnan(z[2])


def test_histogram_observer_refuses_half_precision_input():
    # torch.histc bins a Half tensor in half arithmetic: (x - min) * 2048 overflows
    # half for x - min > 32, so the bins differ from float32's; refused, not guessed
    x = np.array([0.0, 1.0, 50.0, 100.0], np.float16)
    with pytest.raises(RefquantError, match="float16"):
        rt.HistogramObserver().forward(x)
    rt.HistogramObserver().forward(x.astype(np.float32))


def test_fake_quantize_keeps_float64_and_float16_inputs_in_their_dtype():
    # s = float32(0.1), 1/s = 10 in float32; x = 0.3 -> rint(3.0000000000000004) = 3.
    # Per tensor the output is float32(3 * s) stored as float64; per channel it is the
    # double product 3 * s; float16 input gets float16(float32(3 * s)) = 1229 / 4096
    s = F(0.1)
    y = rt.fake_quantize_per_tensor_affine(np.array([0.3]), s, 0, 0, 255)
    assert y.dtype == np.float64 and y[0] == float(F(3 * np.float64(s)))
    y = rt.fake_quantize_per_channel_affine(np.array([[0.3]]), np.array([s]), np.array([0]), 0, 0, 255)
    assert y.dtype == np.float64 and y[0, 0] == 3 * np.float64(s) != float(F(3 * np.float64(s)))
    y = rt.fake_quantize_per_tensor_affine(np.array([0.3], np.float16), s, 0, 0, 255)
    assert y.dtype == np.float16 and y[0] == 1229 / 4096
    with pytest.raises(RefquantError, match="float32, float64, float16 or bfloat16"):
        rt.fake_quantize_per_tensor_affine(np.array([3], np.int32), s, 0, 0, 255)


def test_learnable_fake_quant_with_a_nan_zero_point_fails_torchs_range_check():
    # nearbyint(NaN) survives std::max / std::min; torch rejects it (ValueError before)
    with pytest.raises(RefquantError, match="must be between"):
        rt.fake_quantize_learnable_per_tensor_affine(np.ones(3, F), [0.5], [np.nan], 0, 255)


def test_per_channel_observer_refuses_a_batch_with_another_channel_count():
    obs = rt.PerChannelMinMaxObserver()
    obs.forward(np.ones((2, 3), F))
    obs.forward(np.zeros((2, 5), F))  # same channels, other size: fine (as torch)
    assert obs.min_val.tolist() == [0, 0]
    with pytest.raises(RefquantError, match="3 channels"):
        obs.forward(np.ones((3, 3), F))


def test_per_channel_dequantize_rounds_twice_through_double_as_torch():
    # torch forms (q - z) * double(s) in double and then casts to float32:
    # 3 * float64((1 + 2^-24) / 3) is exactly the float32 tie 1 + 2^-24 in double,
    # which goes to 1.0 (the core's single rounding gives 1 + 2^-23)
    s = (1 + 2.0**-24) / 3
    assert rt.dequantize(np.array([[3]], np.uint8), [s], [0], axis=0)[0, 0] == 1.0


def test_affine_observer_with_a_32_bit_custom_range_wraps_the_zero_point_for_every_dtype():
    # quint8 with quant_min, quant_max = -2^31, 2^31 - 1 (torch accepts any 2^32-code
    # range) on [-512, 0]: scale = 512 / float32(2^32 - 1) = 2^-23; -512 / 2^-23 = -2^32 is
    # outside int32, .to(torch.int) gives INT32_MIN and -2^31 - INT32_MIN = 0 (was
    # 2^31 - 1: the int32 wrap was applied to qint32 only)
    for name in ("quint8", "qint32"):
        obs = rt.MinMaxObserver(dtype=name, quant_min=-(2**31), quant_max=2**31 - 1)
        s, z = _qparams(obs, [-512.0, 0.0])
        assert s.tolist() == [2.0**-23] and z.tolist() == [0], name


def test_observers_take_bfloat16_input_as_torch_does():
    # torch's observers convert any floating input to their float32 buffers; bfloat16
    # raised RefquantError ('x must be a real array'). [-1, 3]: scale 4/255, zero point
    # 0 - round(-1 / (4/255)) = round(63.75) = 64; per channel the same per row
    import ml_dtypes

    x = np.array([-1.0, 3.0], ml_dtypes.bfloat16)
    obs = rt.MinMaxObserver()
    assert obs.forward(x) is x
    s, z = obs.calculate_qparams()
    assert s.tolist() == [F(F(4) / F(255))] and z.tolist() == [64]
    obs = rt.MovingAveragePerChannelMinMaxObserver()
    obs.forward(np.stack([x, x]))
    s, z = obs.calculate_qparams()
    assert s.tolist() == [F(F(4) / F(255))] * 2 and z.tolist() == [64, 64]


@pytest.mark.filterwarnings("ignore:Please use quant_min")
@pytest.mark.parametrize(
    "call",
    [
        # raised ValueError / TypeError / OverflowError / UFuncTypeError from int(), float(),
        # np.asarray or a comparison
        lambda: rt.quantize_per_tensor(np.ones(2, F), "a", 0, "quint8"),
        lambda: rt.quantize_per_tensor(np.ones(2, F), 0.1, "a", "quint8"),
        lambda: rt.quantize_per_tensor(np.ones(2, F), 0.1, 10**30, "qint32"),
        lambda: rt.quantize_per_tensor(np.ones(2, F), 0.1, [1, 2], "quint8"),
        lambda: rt.quantize_per_tensor([[1.0], [1.0, 2.0]], 0.1, 0, "quint8"),
        lambda: rt.quantize_per_channel(np.ones((2, 3), F), [0.1] * 3, [0] * 3, "a", "quint8"),
        lambda: rt.quantize_per_channel(np.ones((2, 3), F), [0.1] * 3, [0] * 3, None, "quint8"),
        lambda: rt.quantize_per_channel(np.ones((2, 3), F), ["a"] * 3, [0] * 3, 1, "quint8"),
        lambda: rt.dequantize(np.ones(3, np.uint8), 0.1, float("nan")),
        lambda: rt.dequantize(np.ones(3, np.uint8), 0.1, [1, 2]),
        lambda: rt.dequantize(np.ones((2, 3), np.uint8), [0.1] * 3, ["a"] * 3, axis=1),
        lambda: rt.fake_quantize_per_tensor_affine(np.ones(2, F), 0.1, 0, "a", 255),
        lambda: rt.fake_quantize_per_tensor_affine(np.ones(2, F), 0.1, 0, None, 255),
        lambda: rt.fake_quantize_per_tensor_affine(np.ones(2, F), 0.1, "a", 0, 255),
        lambda: rt.fake_quantize_per_tensor_affine(np.ones(2, F), 0.1, float("nan"), 0, 255),
        lambda: rt.fake_quantize_per_channel_affine(np.ones((2, 3), F), [0.1] * 3, ["a"] * 3, 1, 0, 255),
        lambda: rt.fake_quantize_learnable_per_tensor_affine(np.ones(2, F), [0.1], [0.0], "a", 255),
        lambda: rt.MinMaxObserver(quant_min="a", quant_max=5),
        lambda: rt.MinMaxObserver(eps="a"),
        lambda: rt.MinMaxObserver().forward([[1.0], [1.0, 2.0]]),
        lambda: rt.MovingAverageMinMaxObserver(averaging_constant="a"),
        lambda: rt.PerChannelMinMaxObserver(ch_axis="a"),
        lambda: rt.HistogramObserver(bins="a"),
        lambda: rt.HistogramObserver().forward([[1.0], [1.0, 2.0]]),
        # silently truncated or wrapped where torch refuses the argument's type
        lambda: rt.dequantize(np.ones(3, np.uint8), 0.1, 1.5),  # zero point 1
        lambda: rt.dequantize(np.array([2**64 - 1], np.uint64), 0.1, 0),  # code -1
        lambda: rt.fake_quantize_per_tensor_affine(np.ones(2, F), 0.1, 1.5, 0, 255),
        lambda: rt.fake_quantize_per_tensor_affine(np.ones(2, F), 0.1, 0, 0.5, 255),
        lambda: rt.fake_quantize_per_tensor_affine(np.ones(2, F), 0.1, 0, 0, 2**70),
        lambda: rt.quantize_per_channel(np.ones((2, 3), F), [0.1] * 3, [0] * 3, 1.5, "quint8"),
        lambda: rt.PerChannelMinMaxObserver(ch_axis=1.5),
    ],
)
def test_bad_argument_values_and_types_raise_refquant_error(call):
    with pytest.raises(RefquantError):
        call()


def test_observer_on_a_finite_range_whose_width_overflows_float32_gives_scale_inf():
    # [-3e38, 3e38]: (3e38 + 3e38) / 255 is Inf in float32; zero point qmin - round(-0)
    # (the core refuses such a range, so the observer takes torch's formula as written)
    for name, z in (("quint8", 0), ("qint8", -128)):
        s, zp = _qparams(rt.MinMaxObserver(dtype=name), [-3e38, 3e38])
        assert s.tolist() == [np.inf] and zp.tolist() == [z]


def test_fake_quantize_per_channel_with_no_channel_and_float_zero_points_is_empty():
    # torch's float-zero-point kernel has no integer range check: (2, 0) in, (2, 0) out
    for zdt in (np.float32, np.float16):
        y = rt.fake_quantize_per_channel_affine(np.ones((2, 0), F), np.ones(0, F), np.zeros(0, zdt), 1, 0, 255)
        assert y.shape == (2, 0) and y.dtype == np.float32
