"""refquant.compat.onnx: the spec's examples worked by hand, its errors, its opset rules.

Bit-for-bit comparisons with onnx.reference and onnxruntime are in
tests/peers/test_onnx_quant.py.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refquant
from refquant import RefquantError
from refquant.compat import onnx as ronnx
from refquant.formats.integer import int_format

F32 = np.float32


def test_quantize_linear_spec_example_uint8():
    # QuantizeLinear docs: x / 2 rounded half to even, + 128, saturated to [0, 255].
    x = F32([0, 2, 3, 1000, -254, -1000])
    y = ronnx.quantize_linear(x, F32(2), np.uint8(128))
    assert y.dtype == np.uint8
    assert y.tolist() == [128, 129, 130, 255, 1, 0]  # 3/2 = 1.5 -> 2; -254/2 = -127 -> 1


def test_quantize_linear_ties_go_to_even():
    y = ronnx.quantize_linear(F32([0.5, 1.5, 2.5, -0.5, -1.5, -2.5]), F32(1), np.int8(0))
    assert y.tolist() == [0, 2, 2, 0, -2, -2]


def test_quantize_linear_default_output_is_uint8_with_zero_point_0():
    y = ronnx.quantize_linear(F32([-3.0, 3.0, 300.0]), F32(1))
    assert y.dtype == np.uint8 and y.tolist() == [0, 3, 255]


def test_quantize_linear_per_axis_default_axis_1():
    x = F32([[1.0, 1.0, 1.0], [4.0, 4.0, 4.0]])
    y = ronnx.quantize_linear(x, F32([1.0, 2.0, 4.0]), np.int8([0, 1, -1]))
    assert y.tolist() == [[1, 1, -1], [4, 3, 0]]  # 1/4 = 0.25 -> 0, -1; 4/2 = 2, +1


def test_quantize_linear_blocked_with_partial_last_block_int4():
    # x (1, 5), blocks of 2 along axis 1: scales 1 | 2 | 4 (the last block holds one value)
    x = F32([[3.0, -9.0, 5.0, 7.0, 20.0]])
    y = ronnx.quantize_linear(x, F32([[1.0, 2.0, 4.0]]), np.zeros((1, 3), ml_dtypes.int4),
                              block_size=2)
    assert y.dtype == ml_dtypes.int4
    assert y.astype(int).tolist() == [[3, -8, 2, 4, 5]]  # -9 saturates; 2.5 -> 2; 3.5 -> 4


def test_quantize_linear_int2_and_uint16_ranges():
    assert ronnx.quantize_linear(F32([-5, -2, 1, 5]), F32(1), np.zeros((), ml_dtypes.int2)
                                 ).astype(int).tolist() == [-2, -2, 1, 1]
    assert ronnx.quantize_linear(F32([-1, 70000]), F32(1), np.uint16(0)).tolist() == [0, 65535]


def test_quantize_linear_inf_saturates_and_nan_gives_qmin():
    y = ronnx.quantize_linear(F32([np.inf, -np.inf, np.nan, 3e9]), F32(1), np.int8(5))
    assert y.tolist() == [127, -128, -128, 127]


def test_quantize_linear_reference_quirk_wraps_through_int32():
    x = F32([np.inf, 3e9, -3e9, 1.0])
    assert ronnx.quantize_linear(x, F32(1), np.int8(0), reference_quirks=True).tolist() == [
        -128, -128, -128, 1]
    # INT32_MIN + (-1) wraps to INT32_MAX: clipped to qmax
    assert ronnx.quantize_linear(x, F32(1), np.int8(-1), reference_quirks=True).tolist() == [
        127, 127, 127, 0]


def _ml_dtypes_version():
    return tuple(int(p) for p in ml_dtypes.__version__.split(".")[:2])


def test_reference_quirk_bfloat16_out_of_range_follows_the_installed_ml_dtypes():
    # onnx.reference casts a bfloat16 quotient to int32 with ml_dtypes' own cast: NaN, ±Inf
    # and |q| >= 2**31 give INT32_MIN before ml_dtypes 0.7 (then + 3 clips to -128) and 0
    # from 0.7.0 on (then + 3 = 3); an in-range quotient (3 / 0.5 = 6) is unaffected
    bf = ml_dtypes.bfloat16
    x = np.array([1.5e9, -1.5e9, np.inf, np.nan, 3.0], np.float32).astype(bf)
    bad = -128 if _ml_dtypes_version() < (0, 7) else 3
    for opset, kw in ((19, {}), (21, {}), (23, {"precision": 16}), (25, {"precision": 16})):
        got = ronnx.quantize_linear(x, np.array(0.5, bf), np.int8(3), opset=opset,
                                    reference_quirks=True, **kw)
        assert got.tolist() == [bad, bad, bad, bad, 9], opset
    # a float32 quotient goes through NumPy's cast (x86-64: INT32_MIN) whatever the version
    got = ronnx.quantize_linear(x.astype(F32), F32(0.5), np.int8(3), reference_quirks=True)
    assert got.tolist() == [-128, -128, -128, -128, 9]
    # the spec's result saturates and is independent of ml_dtypes
    got = ronnx.quantize_linear(x, np.array(0.5, bf), np.int8(3), opset=21)
    assert got.tolist() == [127, -128, 127, -128, 9]


def test_reference_quirk_float64_quotient_to_float8_follows_the_installed_ml_dtypes():
    # int32 x / float32 y_scale is float64 in onnx.reference; ml_dtypes casts that to float8
    # through float32 before 0.7 (1 + 2^-4 + 2^-26 -> the float32 tie 1 + 2^-4 -> even, 1.0,
    # code 0x38) and once from 0.7.0 on (above the tie: 1.125, code 0x39)
    x, s = np.int32([2**26 + 2**22 + 1]), F32(2.0**26)
    want = 0x38 if _ml_dtypes_version() < (0, 7) else 0x39
    got = ronnx.quantize_linear(x, s, output_dtype="float8e4m3fn", reference_quirks=True)
    assert got.view(np.uint8).tolist() == [want]
    # the spec divides in y_scale's type, float32: the tie, whatever ml_dtypes does
    assert ronnx.quantize_linear(x, s, output_dtype="float8e4m3fn").view(np.uint8).tolist() == [
        0x38]


def test_precision_attribute_divides_in_float16():
    # 2049 / 1 = 2049 in float32, but float16 holds 2048 and 2050 only: the tie goes to 2048.
    x = F32([2049.0])
    assert ronnx.quantize_linear(x, F32(1), np.int16(0)).tolist() == [2049]
    assert ronnx.quantize_linear(x, F32(1), np.int16(0), precision=10).tolist() == [2048]
    # a float16 y_scale sets the precision by default (the spec) ...
    assert ronnx.quantize_linear(x, np.float16(1), np.int16(0)).tolist() == [2048]
    # ... while onnx.reference divides in NumPy's promotion, float32
    assert ronnx.quantize_linear(x, np.float16(1), np.int16(0),
                                 reference_quirks=True).tolist() == [2049]


def test_output_dtype_by_enum_name_and_dtype_agree():
    x = F32([1.4, -7.6])
    want = ronnx.quantize_linear(x, F32(1), output_dtype=3)
    for t in ("INT8", "int8", np.int8):
        got = ronnx.quantize_linear(x, F32(1), output_dtype=t)
        assert got.dtype == np.int8 and got.tolist() == want.tolist() == [1, -8]
    # a plain integer zero point is read in output_dtype
    assert ronnx.quantize_linear(x, F32(1), 3, output_dtype="int8").tolist() == [4, -5]


def test_float8_saturate_table():
    x = F32([np.inf, -1e6, 464.0, 465.0, np.nan])
    sat = ronnx.quantize_linear(x, F32(1), output_dtype="float8e4m3fn").astype(F32)
    assert sat[:4].tolist() == [448.0, -448.0, 448.0, 448.0] and np.isnan(sat[4])
    raw = ronnx.quantize_linear(x, F32(1), output_dtype="float8e4m3fn", saturate=0).astype(F32)
    assert np.isnan(raw[[0, 1, 3, 4]]).all() and raw[2] == 448.0  # 464 is a tie -> 448
    e5 = ronnx.quantize_linear(x[:2], F32(1), output_dtype=19, saturate=0).astype(F32)
    assert e5.tolist() == [np.inf, -np.inf]


def test_float8_round_trip_through_dequantize_linear():
    x = F32([0.3, -2.0, 100.0])
    q = ronnx.quantize_linear(x, F32(0.5), output_dtype="float8e5m2")
    assert q.dtype == ml_dtypes.float8_e5m2
    y = ronnx.dequantize_linear(q, F32(0.5))
    assert y.tolist() == [0.3125, -2.0, 96.0]  # 0.6 -> 0.625 ; 200 -> 192 (e5m2 grid)


def test_dequantize_linear_spec_example_and_blocked():
    y = ronnx.dequantize_linear(np.uint8([0, 3, 128, 255]), F32(2), np.uint8(128))
    assert y.dtype == np.float32 and y.tolist() == [-256.0, -250.0, 0.0, 254.0]
    q = np.array([[1, -8, 7, 3, 2]], ml_dtypes.int4)
    y = ronnx.dequantize_linear(q, F32([[0.5, 2.0, 3.0]]), np.array([[1, 0, -1]], ml_dtypes.int4),
                                block_size=2)
    assert y.tolist() == [[0.0, -4.5, 14.0, 6.0, 9.0]]


def test_dequantize_linear_output_dtype_float16():
    y = ronnx.dequantize_linear(np.int8([3]), F32(0.5), output_dtype=10)
    assert y.dtype == np.float16 and y.tolist() == [1.5]


def test_dequantize_linear_int32_rounds_through_float32():
    y = ronnx.dequantize_linear(np.int32([2**24 + 1]), F32(1))
    assert y.tolist() == [2.0**24]


def test_dynamic_quantize_linear_hand_example():
    # range [-1, 2]: scale 3/255, zero point round(0 + 1 / (3/255)) = 85
    y, s, z = ronnx.dynamic_quantize_linear(F32([-1.0, 2.0, 0.0]))
    assert s == F32(3) / F32(255) and int(z) == 85
    assert y.tolist() == [0, 255, 85]


def test_dynamic_quantize_linear_all_zero_scale():
    y, s, z = ronnx.dynamic_quantize_linear(np.zeros(3, F32))
    assert float(s) == 1.0 and int(z) == 0 and y.tolist() == [0, 0, 0]
    _, sq, _ = ronnx.dynamic_quantize_linear(np.zeros(3, F32), reference_quirks=True)
    assert sq == F32(1) / F32(255)


def test_dynamic_quantize_linear_positive_input_zero_point_is_0():
    y, s, z = ronnx.dynamic_quantize_linear(F32([0.5, 1.0]))
    # s = fl32(1/255) = 0.0039215689 is above 1/255, so 0.5 / s = 127.499992 -> 127: no tie
    assert int(z) == 0 and s == F32(1) / F32(255) and y.tolist() == [127, 255]



def test_dynamic_quantize_linear_range_beyond_float32_gives_infinite_scale():
    # max - min = 6e38 overflows float32: the spec's s = inf, z = rne(0 - (-3e38) / inf) = 0,
    # y = rne(x / inf) + 0 = 0 (onnxruntime and onnx.reference: the same); once RefquantError
    y, s, z = ronnx.dynamic_quantize_linear(F32([-3e38, 3e38, 1.0]))
    assert np.isinf(s) and s > 0 and s.dtype == np.float32 and int(z) == 0
    assert y.dtype == np.uint8 and y.tolist() == [0, 0, 0]

def test_matmul_integer_hand_example_and_per_column_zero_point():
    a = np.uint8([[1, 2], [3, 4]])
    b = np.int8([[1, -2], [3, 4]])
    assert ronnx.matmul_integer(a, b, np.uint8(1)).tolist() == [[3, 4], [11, 8]]
    # b - [1, -2] per column: [[0, 0], [2, 6]]
    y = ronnx.matmul_integer(a, b, None, np.int8([1, -2]))
    assert y.dtype == np.int32 and y.tolist() == [[4, 12], [8, 24]]


def test_matmul_integer_wraps_in_32_bits():
    k = 70000
    a = np.full((1, k), 255, np.uint8)
    b = np.full((k, 1), 255, np.uint8)
    exact = 255 * 255 * k  # 4_551_750_000 > 2^31
    want = (exact + 2**31) % 2**32 - 2**31
    assert ronnx.matmul_integer(a, b).tolist() == [[want]]


def test_qlinear_matmul_hand_example():
    a = np.uint8([[1, 2], [3, 4]])
    b = np.int8([[1, -2], [3, 4]])
    # C = (a - 1) @ b = [[3, 4], [11, 8]]; multiplier 0.1*0.2/0.05 = 0.4 (float32)
    # C * 0.4 = [1.2, 1.6, 4.4, 3.2] -> [1, 2, 4, 3] + 10
    y = ronnx.qlinear_matmul(a, F32(0.1), np.uint8(1), b, F32(0.2), np.int8(0), F32(0.05),
                             np.uint8(10))
    assert y.dtype == np.uint8 and y.tolist() == [[11, 12], [14, 13]]


# ---------------------------------------------------------------- what the spec rejects


@pytest.mark.parametrize("call, match", [
    (lambda: ronnx.quantize_linear(F32([1]), F32(1), np.int8(1), output_dtype=2),
     "output_dtype to equal the type of y_zero_point"),
    (lambda: ronnx.quantize_linear(F32([1]), F32(1), np.int64(1)), "no ONNX quantized type"),
    (lambda: ronnx.quantize_linear(F32([1]), F32(1), np.ones((), ml_dtypes.float8_e4m3fn)),
     "must be 0 for float8e4m3fn"),
    (lambda: ronnx.quantize_linear(F32(np.ones((2, 6))), F32(np.ones((2, 2))), np.int8(0),
                                   block_size=2),
     r"block_size 2 is not in the accepted range \[3, 5\]"),
    (lambda: ronnx.quantize_linear(F32(np.ones((2, 6))), F32(np.ones((2, 2))), block_size=-1),
     "block_size must be 0"),
    (lambda: ronnx.quantize_linear(F32(np.ones((2, 6))), F32(np.ones((3, 2))), block_size=3),
     "except along axis 1"),
    (lambda: ronnx.quantize_linear(F32(np.ones((2, 6))), F32(np.ones(5))),
     "needs length 6"),
    (lambda: ronnx.quantize_linear(F32(np.ones((2, 6))), F32(np.ones((2, 6)))),
     "without block_size it must be a scalar"),
    (lambda: ronnx.quantize_linear(F32(np.ones((2, 6))), F32(np.ones(6)), np.int8([0, 1])),
     "same shape"),
    (lambda: ronnx.quantize_linear(F32([1]), F32(0)), "y_scale must be finite and > 0"),
    (lambda: ronnx.quantize_linear(F32([1]), np.int32(1)), "pass precision="),
    (lambda: ronnx.quantize_linear(F32([1]), 0.5), "y_scale is float64"),
    (lambda: ronnx.quantize_linear(np.float64([1]), F32(1)), "x must be float32"),
    (lambda: ronnx.quantize_linear(F32([1]), F32(1), output_dtype="int32"),
     "not a QuantizeLinear output type"),
    (lambda: ronnx.quantize_linear(F32([1]), F32(1), output_dtype=999), "999"),
    (lambda: ronnx.dequantize_linear(np.int8([1]), F32(1), np.uint8(0)),
     "x_zero_point has type uint8 but x has type int8"),
    (lambda: ronnx.dequantize_linear(np.int32([1]), F32(1), np.int32(2)),
     "must be 0 for int32"),
    (lambda: ronnx.dequantize_linear(np.int64([1]), F32(1)), "int64"),
    (lambda: ronnx.dequantize_linear(np.int8([1]), F32(1), output_dtype="int8"),
     "must be float, float16 or bfloat16"),
    (lambda: ronnx.dynamic_quantize_linear(F32([np.nan, 1])), "NaN or ±Inf"),
    (lambda: ronnx.dynamic_quantize_linear(np.float64([1])), "float32"),
    (lambda: ronnx.matmul_integer(np.int16([[1]]), np.int8([[1]])), "int8 or uint8"),
    (lambda: ronnx.matmul_integer(np.int8([[1]]), np.int8([[1]]), np.uint8(0)), "same type"),
    (lambda: ronnx.matmul_integer(np.int8([[1, 2]]), np.int8([[1], [2]]), None,
                                  np.int8([1, 2, 3])), "does not fit"),
    (lambda: ronnx.qlinear_matmul(np.uint8([[1]]), F32(1), np.uint8(0), np.uint8([[1]]), F32(1),
                                  np.uint8(0), F32([1, 2]), np.uint8(0)), "must be scalars"),
    # a 2-element a_scale for a 1-row a (or b_scale for a 1-column b) once broadcast the
    # output to shape (2, 1) / (1, 2) instead of (1, 1)
    (lambda: ronnx.qlinear_matmul(np.uint8([[1]]), F32([1, 2]), np.uint8(0), np.uint8([[1]]),
                                  F32(1), np.uint8(0), F32(1), np.uint8(0)), "a_scale"),
    (lambda: ronnx.qlinear_matmul(np.uint8([[1, 2]]), F32(1), np.uint8(0), np.uint8([[1], [1]]),
                                  F32([1, 2]), np.uint8(0), F32(1), np.uint8(0)), "b_scale"),
    # TypeError once (operator.index)
    (lambda: ronnx.quantize_linear(F32([[1]]), F32([[1]]), np.int8([[0]]), block_size=1.5),
     "block_size must be an integer"),
    (lambda: ronnx.dequantize_linear(np.int8([[1]]), F32([[1]]), np.int8([[0]]), block_size="2"),
     "block_size must be an integer"),
])
def test_spec_rejects_with_its_reason(call, match):
    with pytest.raises(RefquantError, match=match):
        call()


@pytest.mark.parametrize("kw, match", [
    ({"y_zero_point": np.zeros((), ml_dtypes.int4), "opset": 19}, "type int4 needs opset >= 21"),
    ({"y_zero_point": np.zeros((), ml_dtypes.int2), "opset": 24}, "type int2 needs opset >= 25"),
    ({"output_dtype": "float4e2m1", "opset": 21}, "type float4e2m1 needs opset >= 23"),
    ({"precision": 1, "opset": 21}, "precision needs opset >= 23"),
    ({"output_dtype": 3, "opset": 19}, "output_dtype needs opset >= 21"),
    ({"saturate": 0, "opset": 13}, "saturate needs opset >= 19"),
    ({"opset": 9}, "opset must be an ai.onnx opset from 10"),
    ({"opset": 29}, "to 28"),
    ({"opset": 2.5}, "opset must be an integer"),
    ({"output_dtype": "float6e2m3", "opset": 27}, "type float6e2m3 needs opset >= 28"),
    ({"y_scale": np.array(1.0, ml_dtypes.float8_e8m0fnu), "opset": 23},
     "type float8e8m0 needs opset >= 24"),
])
def test_opset_rules(kw, match):
    kw = {"y_scale": F32(1), **kw}
    with pytest.raises(RefquantError, match=match):
        ronnx.quantize_linear(F32([1.0]), **kw)


def test_every_opset_accepts_what_it_defines():
    for opset in range(10, 29):
        assert ronnx.quantize_linear(F32([2.5]), F32(1), np.int8(0), opset=opset).tolist() == [2]
    z8 = np.zeros((), ml_dtypes.float8_e4m3fn)  # opset 19: the zero point's type decides
    assert ronnx.quantize_linear(F32([2.5]), F32(1), z8, opset=19).astype(F32).tolist() == [2.5]


def test_block_size_bounds_match_the_spec_range():
    x = F32(np.arange(12).reshape(2, 6))
    s = F32(np.ones((2, 2)))
    for b in (3, 4, 5):  # [ceil(6/2), ceil(6/1) - 1]
        ronnx.quantize_linear(x, s, block_size=b)
    with pytest.raises(RefquantError, match="accepted range"):
        ronnx.quantize_linear(x, s, block_size=6)


def test_inputs_are_not_modified():
    x = F32([1.5, np.nan, 3e9])
    s = F32(0.5)
    z = np.int8(3)
    before = x.copy()
    ronnx.quantize_linear(x, s, z, reference_quirks=True)
    np.testing.assert_array_equal(x, before)


def test_opset_10_is_per_tensor_only():
    with pytest.raises(RefquantError, match="per-axis scales came with opset 13"):
        ronnx.quantize_linear(F32([[1.0, 2.0]]), F32([1.0, 2.0]), np.int8([0, 0]), opset=10)
    assert ronnx.quantize_linear(F32([[1.0, 2.0]]), F32([1.0, 2.0]), np.int8([0, 0]),
                                 opset=13).tolist() == [[1, 1]]


# ---------------------------------------------------------------- properties

_TYPES = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16,
          "int4": ml_dtypes.int4, "uint4": ml_dtypes.uint4, "int2": ml_dtypes.int2,
          "uint2": ml_dtypes.uint2}


@given(name=st.sampled_from(sorted(_TYPES)), e=st.integers(-20, 10), data=st.data())
def test_dequantize_then_quantize_returns_every_code_for_power_of_two_scales(name, e, data):
    fmt = int_format(name)
    n = data.draw(st.integers(1, 30))
    q = np.array(data.draw(st.lists(st.integers(fmt.qmin, fmt.qmax), min_size=n, max_size=n)))
    z = data.draw(st.integers(fmt.qmin, fmt.qmax))
    s = F32(2.0**e)  # (q - z) * 2^e is exact in float32, and so is its quotient by 2^e
    dt = _TYPES[name]
    y = ronnx.dequantize_linear(q.astype(dt), s, np.array(z, dt))
    back = ronnx.quantize_linear(y, s, np.array(z, dt))
    assert back.dtype == np.dtype(dt)
    np.testing.assert_array_equal(back.astype(np.int64), q)


@given(x=st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=30),
       s=st.floats(2.0**-10, 1024.0, width=32), z=st.integers(-128, 127))
def test_quantize_linear_int8_equals_the_core_with_onnx_arguments(x, s, z):
    x = F32(x)
    want = refquant.quantize(x, F32(s), z, dtype="int8", rounding="half_even",
                             precision="float32")
    np.testing.assert_array_equal(ronnx.quantize_linear(x, F32(s), np.int8(z)), want)


def test_dequantize_linear_int32_to_float16_rounds_through_float32():
    # 28677 * fl16(0.1) = 2866.99988 exactly: 2866 in float16 rounded once (int16 codes),
    # but int32 codes multiply in float32 (2867.0, as onnx.reference and onnxruntime do),
    # and 2867 is a float16 tie that goes to even, 2868.
    s = np.float16(0.1)
    assert ronnx.dequantize_linear(np.int16([28677]), s).tolist() == [2866.0]
    assert ronnx.dequantize_linear(np.int32([28677]), s).tolist() == [2868.0]


def test_dynamic_quantize_linear_subnormal_range_gives_zero_scale_and_saturated_codes():
    # s = 3e-45 / 255 underflows to 0: z = sat(rne(0 - (-1e-45)/0)) = 255 and
    # y = sat(rne(x/0) + z) in IEEE arithmetic (tests/peers pins both peers on such ranges)
    y, s, z = ronnx.dynamic_quantize_linear(F32([0, 1e-45, -1e-45, 3e-45]))
    assert float(s) == 0.0 and int(z) == 255
    np.testing.assert_array_equal(y, np.uint8([0, 255, 0, 255]))


@pytest.mark.parametrize("call, match", [
    # QuantizeLinear-10/13: x is float or int32, y_scale float only
    (lambda: ronnx.quantize_linear(np.float16([1.0]), np.float16(1), np.int8(0), opset=13),
     "x of type float16 needs opset >= 19"),
    (lambda: ronnx.quantize_linear(F32([1.0]), np.float16(1), np.int8(0), opset=10),
     "y_scale of type float16 needs opset >= 19"),
    (lambda: ronnx.quantize_linear(np.array([1.0], ml_dtypes.bfloat16), F32(1), np.int8(0),
                                   opset=13), "x of type bfloat16 needs opset >= 19"),
    # QuantizeLinear-19/21: x and y_scale share the type T1
    (lambda: ronnx.quantize_linear(F32([1.0]), np.float16(1), np.int8(0), opset=21),
     "x and y_scale of one type"),
    # DequantizeLinear-10/13: x_scale (and the output) float only
    (lambda: ronnx.dequantize_linear(np.int8([1]), np.float16(1), np.int8(0), opset=13),
     "x_scale of type float16 needs opset >= 19"),
])
def test_opsets_before_19_take_float32_only_and_19_21_one_float_type(call, match):
    with pytest.raises(RefquantError, match=match):
        call()
    # what the same opsets define is accepted
    assert ronnx.quantize_linear(np.float16([2.5]), np.float16(1), np.int8(0),
                                 opset=19).tolist() == [2]
    assert ronnx.quantize_linear(F32([2.5]), np.float16(1), np.int8(0), opset=23).tolist() == [2]
    assert ronnx.dequantize_linear(np.int8([3]), np.float16(1), opset=19).tolist() == [3.0]


def test_one_block_accepts_any_block_size_from_the_axis_length_up():
    # Si = 1: the spec's accepted range is [Di, inf); 10**30 raised OverflowError in the core
    x = F32([[0.5, 1.5, 2.5], [3.5, -4.5, 5.0]])
    s = F32([[0.5], [1.0]])
    z = np.int8([[0], [1]])
    want = [[1, 3, 5], [5, -3, 6]]  # rne(x / s) + z, hand-derived
    for b in (3, 4, 10**30):
        assert ronnx.quantize_linear(x, s, z, block_size=b).tolist() == want
        q = ronnx.quantize_linear(x, s, z, block_size=b)
        assert ronnx.dequantize_linear(q, s, z, block_size=b).tolist() == [[0.5, 1.5, 2.5],
                                                                          [4.0, -4.0, 5.0]]


@pytest.mark.parametrize("attr", ["axis", "saturate", "block_size", "output_dtype", "precision",
                                  "opset"])
@pytest.mark.parametrize("value", [np.array([1.0, 2.0, 3.0]), np.array([]), [1, 2]])
def test_an_array_attribute_is_a_refquant_error(attr, value):
    # np.array([1., 2., 3.]) as an attribute raised numpy's "truth value of an array is ambiguous"
    x, s, z = F32([[1.5, -2.0, 3.0]]), F32([1.0, 2.0, 0.5]), np.int8([0, 0, 0])
    with pytest.raises(RefquantError, match=attr):
        ronnx.quantize_linear(x, s, z, **{attr: value})
    if attr not in ("saturate", "precision"):
        with pytest.raises(RefquantError, match=attr):
            ronnx.dequantize_linear(np.int8([[1, 2, 3]]), s, z, **{attr: value})


E8M0 = ml_dtypes.float8_e8m0fnu


def test_a_float8e8m0_scale_divides_in_float32_unless_precision_says_otherwise():
    # x / 0.5 = [2.6, -5.2, 15.8, 200, 1.5] -> rne [3, -5, 16, 200, 2] + 1, clipped to int8
    x = F32([1.3, -2.6, 7.9, 100.0, 0.75])
    s = np.array(0.5, E8M0)
    for opset in (24, 25, 26, 27, 28):
        y = ronnx.quantize_linear(x, s, np.int8(1), opset=opset)
        assert y.dtype == np.int8 and y.tolist() == [4, -4, 17, 127, 3]
    # 2^-127 (the smallest float8e8m0) is a float32 subnormal: 3 * 2^-127 / 2^-127 = 3 exactly;
    # with precision float16 x and the scale both become 0, and 0 / 0 (NaN) gives qmin
    tiny = np.array(2.0**-127, E8M0)
    x = F32([3 * 2.0**-127])
    assert ronnx.quantize_linear(x, tiny, np.int8(0)).tolist() == [3]
    assert ronnx.quantize_linear(x, tiny, np.int8(0), precision=10).tolist() == [-128]
    # float8e8m0's NaN (0xFF) is no scale
    with pytest.raises(RefquantError, match="y_scale must be finite"):
        ronnx.quantize_linear(x, np.uint8(255).view(E8M0), np.int8(0))


def test_a_float8e8m0_x_scale_dequantizes_exactly_and_needs_output_dtype():
    x, s = np.int8([1, 2, -3, 127]), np.array(0.25, E8M0)
    for od, dt in ((1, np.float32), (10, np.float16), (16, ml_dtypes.bfloat16)):
        y = ronnx.dequantize_linear(x, s, np.int8(1), output_dtype=od)
        assert y.dtype == dt and y.astype(np.float64).tolist() == [0.0, 0.25, -1.0, 31.5]
    with pytest.raises(RefquantError, match="float8e8m0 x_scale needs output_dtype"):
        ronnx.dequantize_linear(x, s, np.int8(1))
    with pytest.raises(RefquantError, match="float8e8m0 needs opset >= 24"):
        ronnx.dequantize_linear(x, s, np.int8(1), output_dtype=1, opset=23)
    with pytest.raises(RefquantError) as err:
        ronnx.quantize_linear(F32([1.0]), np.int32(2), np.int8(0))
    assert "float8e8m0" not in str(err.value)


def test_an_opset_runs_the_newest_operator_version_up_to_it():
    # opset 22 runs QuantizeLinear-21 (no precision attribute), opset 20 QuantizeLinear-19
    # (x and y_scale of one type), opsets 26 and 27 QuantizeLinear-25 (no float6)
    with pytest.raises(RefquantError, match="precision needs opset >= 23; got opset 22"):
        ronnx.quantize_linear(F32([1.0]), F32(1), precision=1, opset=22)
    with pytest.raises(RefquantError, match="x and y_scale of one type"):
        ronnx.quantize_linear(F32([1.0]), np.float16(1), np.int8(0), opset=20)
    with pytest.raises(RefquantError, match="per tensor only"):
        ronnx.quantize_linear(F32([[1.0, 2.0]]), F32([1, 1]), np.uint8([0, 0]), opset=12)
    for opset in (26, 27):
        with pytest.raises(RefquantError, match="float6e3m2 needs opset >= 28"):
            ronnx.quantize_linear(F32([1.0]), F32(1), output_dtype="float6e3m2", opset=opset)
    assert ronnx.quantize_linear(F32([[1.0, 2.0]]), F32([1, 1]), np.uint8([0, 0]),
                                 opset=14).tolist() == [[1, 2]]


@pytest.mark.parametrize("name, want", [
    # x / 0.5 = [0, -0, 2.6, -5.2, 15.8, 200]; e2m3 steps 0.25 in [2, 4), 0.5 in [4, 7.5];
    # e3m2 steps 0.5 in [2, 4), 1 in [4, 8), 4 in [16, 28]; both saturate to their max
    ("float6e2m3", [0.0, -0.0, 2.5, -5.0, 7.5, 7.5]),
    ("float6e3m2", [0.0, -0.0, 2.5, -5.0, 16.0, 28.0]),
])
def test_float6_outputs_round_to_nearest_even_and_saturate(name, want):
    x = F32([0.0, -0.0, 1.3, -2.6, 7.9, 100.0])
    for saturate in (0, 1):  # no Inf encoding: saturate has no effect
        y = ronnx.quantize_linear(x, F32(0.5), output_dtype=name, saturate=saturate)
        assert y.dtype == ronnx._NUMPY[name]
        got = y.astype(np.float32)
        assert got.tolist() == want and np.signbit(got).tolist() == np.signbit(want).tolist()
        back = ronnx.dequantize_linear(y, F32(2.0))
        assert back.tolist() == [2 * w for w in want]
    with pytest.raises(RefquantError, match="needs opset >= 28"):
        ronnx.quantize_linear(x, F32(0.5), output_dtype=name, opset=25)
    with pytest.raises(RefquantError, match="needs opset >= 28"):
        ronnx.dequantize_linear(np.zeros(2, ronnx._NUMPY[name]), F32(0.5), opset=27)


@pytest.mark.parametrize("name", ["float4e2m1", "float6e2m3", "float6e3m2"])
def test_minus_zero_gains_the_zero_point_s_sign_for_types_without_inf(name):
    # test_quantizelinear_float4e2m1: y = cast(x / s + z), -0.0 + 0 = +0.0; without a zero
    # point -0.0 stays -0.0, and a -0.0 zero point keeps it
    x, dt = F32([-0.0, 0.0, -1.0]), ronnx._NUMPY[name]
    signs = [(None, [True, False, True]), (0.0, [False, False, True]), (-0.0, [True, False, True])]
    for z, want in signs:
        zp = None if z is None else np.array([z], np.float32).astype(dt)
        y = ronnx.quantize_linear(x, F32(1), zp, output_dtype=name).astype(np.float32)
        assert np.signbit(y).tolist() == want, z
    # float8: the peers keep -0.0 whatever the zero point
    z8 = np.zeros(1, ml_dtypes.float8_e4m3fn)
    y = ronnx.quantize_linear(x, F32(1), z8).astype(np.float32)
    assert np.signbit(y).tolist() == [True, False, True]


def test_a_one_element_zero_point_goes_with_a_scalar_scale():
    # the backend node tests pass zero points of shape (1,) with scalar scales
    x = F32([1.0, 2.0, 3.0])
    for s, z in ((F32(0.5), np.int8([3])), (F32([0.5]), np.int8(3)), (F32([[0.5]]), np.int8(3))):
        y = ronnx.quantize_linear(x, s, z)
        assert y.shape == (3,) and y.tolist() == [5, 7, 9]
        assert ronnx.dequantize_linear(y, s, z).tolist() == [1.0, 2.0, 3.0]
    # the output keeps x's shape
    assert ronnx.quantize_linear(F32(1.0), F32([0.5]), np.int8([3])).shape == ()
    assert ronnx.dequantize_linear(np.int8(5), F32([0.5]), np.int8([3])).shape == ()
    # a zero point of two elements is not per tensor
    with pytest.raises(RefquantError, match="y_zero_point has shape"):
        ronnx.quantize_linear(x, F32(0.5), np.int8([3, 3]))
    with pytest.raises(RefquantError, match="x_zero_point has shape"):
        ronnx.dequantize_linear(np.int8([1]), F32(0.5), np.int8([3, 3]))
