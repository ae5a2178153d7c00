"""Dynamic quantization: ONNX DynamicQuantizeLinear's worked example, per-token scales."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refquant import RefquantError
from refquant.quant.dynamic import dynamic_quantize, dynamic_quantize_per_token


def test_dynamic_quantize_linear_spec_example():
    # ONNX: s = (2 - (-1)) / 255, z = round(0 - (-1) / s) = 85;
    # codes: -1 -> 0, 0 -> 85, 2 -> 255, 0.5 -> rint(42.5) + 85 = 42 + 85 = 127
    x = np.array([-1.0, 0.0, 2.0, 0.5], np.float32)
    q, qp = dynamic_quantize(x)
    assert q.dtype == np.uint8
    np.testing.assert_array_equal(q, [0, 85, 255, 127])
    assert qp.scale == np.float32(3) / np.float32(255)
    assert int(qp.zero_point) == 85


def test_all_zero_input_gets_scale_one_not_a_division_by_zero():
    q, qp = dynamic_quantize(np.zeros(4, np.float32))
    np.testing.assert_array_equal(q, 0)
    assert float(qp.scale) == 1.0 and int(qp.zero_point) == 0


def test_positive_input_range_is_widened_to_zero():
    q, qp = dynamic_quantize(np.array([2.0, 4.0], np.float32))
    assert int(qp.zero_point) == 0
    # float32(4/255) = 0.0156862754 is above 4/255, so 2 / s = 127.49999 (not the
    # tie 127.5) and rounds down
    np.testing.assert_array_equal(q, [127, 255])


def test_per_token_scales_one_per_row_with_ties_to_even():
    # row 0: amax 127 -> s = 1: -63.5 -> -64 (even); row 1: amax 254 -> s = 2: 127.5/2 = 63.75 -> 64
    x = np.array([[127.0, -63.5], [254.0, 127.5]], np.float32)
    q, qp = dynamic_quantize_per_token(x)
    np.testing.assert_array_equal(q, [[127, -64], [127, 64]])
    np.testing.assert_array_equal(qp.scale, [[1.0], [2.0]])


def test_per_token_works_for_any_batch_shape_and_round_trips():
    x = np.random.default_rng(0).standard_normal((2, 3, 8)).astype(np.float32)
    q, qp = dynamic_quantize_per_token(x)
    assert q.shape == x.shape and qp.scale.shape == (2, 3, 1)
    err = np.abs(qp.dequantize(q) - x)
    assert np.all(err <= qp.scale / 2 + 1e-7)


def test_per_axis_dynamic_quantization():
    x = np.array([[1.0, -2.0, 4.0], [0.5, 0.25, -1.0]], np.float32)
    q, qp = dynamic_quantize(x, dtype="int8", symmetric=True, axis=0)
    assert qp.scale.shape == (2,)
    np.testing.assert_array_equal(q[:, 2], [127, -127])


def test_nan_policy_and_inf():
    x = np.array([1.0, np.nan, -1.0], np.float32)
    with pytest.raises(RefquantError, match="NaN"):
        dynamic_quantize(x)
    q, qp = dynamic_quantize(x, nan="zero_point")
    assert q[1] == qp.zero_point
    with pytest.raises(RefquantError, match="Inf"):
        dynamic_quantize(np.array([1.0, np.inf], np.float32))


def test_per_token_of_a_scalar_is_an_error():
    with pytest.raises(RefquantError, match="scalar"):
        dynamic_quantize_per_token(np.float32(1.0))


@settings(max_examples=40)
@given(hnp.arrays(np.float32, st.integers(1, 50), elements=st.floats(-1e4, 1e4, width=32)))
def test_dynamic_codes_use_the_ends_of_the_grid_and_reconstruct_within_half_a_step(x):
    q, qp = dynamic_quantize(x)
    before = x.copy()
    err = np.abs(qp.dequantize(q).astype(np.float64) - x)
    assert np.all(err <= float(qp.scale) * 0.5 * (1 + 1e-5) + 1e-30)
    if x.max() > 0:
        assert q.max() == 255 or x.max() == 0
    np.testing.assert_array_equal(x, before)


def test_a_subnormal_range_whose_float32_scale_underflows_gets_scale_1():
    # [0, 1e-43]: 1e-43 / 255 rounds to 0 in float32, and eps=0 maps a zero scale to 1
    # (as for a zero range); the codes are then all the zero point 0
    x = np.array([1e-43, 0.0, 5e-44], np.float32)
    q, qp = dynamic_quantize(x)
    assert float(qp.scale) == 1.0 and int(qp.zero_point) == 0 and q.tolist() == [0, 0, 0]
