"""refquant.compat.torchao on hand-derived examples, and its refusals of bad input.

Every expected value is worked out in the comment beside it from torchao 0.18's
formulas (float32 steps written with NumPy float32 where the rounding decides).
"""

from __future__ import annotations

import enum

import ml_dtypes
import numpy as np
import pytest

from refquant import RefquantError
from refquant.compat import torchao as ao

F = np.float32
BF16 = np.dtype(ml_dtypes.bfloat16)


# ------------------------------------------------------------------ choose_qparams_affine


def test_symmetric_int8_scale_divides_amax_by_127_5_and_zero_point_is_0():
    s, z = ao.choose_qparams_affine(F([-1.0, 0.5]), "SYMMETRIC", (2,), "int8")
    assert s.dtype == np.float32 and s.shape == ()  # per tensor, keepdim=False: 0-d
    assert s == F(1) / F(127.5)  # amax 1 / ((127 - -128) / 2)
    assert z.dtype == np.int32 and z == 0  # int((127 + -128 + 1) / 2)


def test_symmetric_uint8_zero_point_is_128():
    _, z = ao.choose_qparams_affine(F([-1.0, 0.5]), "SYMMETRIC", (2,), "uint8")
    assert z == 128  # int((255 + 0 + 1) / 2)


def test_symmetric_no_clipping_error_takes_the_larger_of_min_over_qmin_and_max_over_qmax():
    s, _ = ao.choose_qparams_affine(F([-1.0, 1.0]), "SYMMETRIC_NO_CLIPPING_ERR", (2,), "int8")
    assert s == F(1) / F(127)  # max(-1 / -128, 1 / 127)
    s, _ = ao.choose_qparams_affine(F([-2.0, 1.0]), "SYMMETRIC_NO_CLIPPING_ERR", (2,), "int8")
    assert s == F(2) / F(128)  # max(-2 / -128, 1 / 127)


def test_asymmetric_uint8_zero_point_rounds_min_over_scale():
    s, z = ao.choose_qparams_affine(F([-1.0, 3.0]), "ASYMMETRIC", (2,), "uint8")
    assert s == F(4) / F(255)
    # 0 - round(-1 / s); -1 / fl32(4/255) = -63.749996 in float32, which rounds to -64
    assert F(-63.76) < F(-1) / s < F(-63.74)
    assert z == 64


def test_asymmetric_range_is_widened_to_include_zero_unless_preserve_zero_is_false():
    s, z = ao.choose_qparams_affine(F([2.0, 4.0]), "ASYMMETRIC", (2,), "uint8")
    assert s == F(4) / F(255) and z == 0  # min clamped to 0
    s, z = ao.choose_qparams_affine(F([2.0, 4.0]), "ASYMMETRIC", (2,), "uint8",
                                    preserve_zero=False)
    assert s == F(2) / F(255)
    # 0 - round(2 / s) = -round(255) = -255, clamped to 0
    assert z == 0


def test_block_size_gives_per_tensor_per_channel_and_per_group_shapes():
    x = np.arange(8, dtype=F).reshape(2, 4) - F(3)
    assert ao.choose_qparams_affine(x, "SYMMETRIC", (2, 4), "int8")[0].shape == ()
    assert ao.choose_qparams_affine(x, "SYMMETRIC", (1, 4), "int8")[0].shape == (2,)
    assert ao.choose_qparams_affine(x, "SYMMETRIC", (2, 1), "int8")[0].shape == (4,)
    s, _ = ao.choose_qparams_affine(x, "SYMMETRIC", (1, 2), "int8")
    assert s.shape == (2, 2)
    # groups [-3, -2], [-1, 0], [1, 2], [3, 4]: amax 3, 1, 2, 4
    np.testing.assert_array_equal(s, F([[3, 1], [2, 4]]) / F(127.5))
    assert ao.choose_qparams_affine(x, "SYMMETRIC", (1, 2), "int8", keepdim=True)[0].shape == (2, 2)
    assert ao.choose_qparams_affine(x, "SYMMETRIC", (1, 4), "int8", keepdim=True)[0].shape == (2, 1)


def test_all_zero_block_scale_is_the_input_dtypes_smallest_normal_by_default():
    s, _ = ao.choose_qparams_affine(np.zeros(4, F), "SYMMETRIC", (4,), "int8")
    assert s == F(2.0**-126)
    s, _ = ao.choose_qparams_affine(np.zeros(4, np.float16), "SYMMETRIC", (4,), "int8")
    assert s.dtype == np.float16 and s == np.float16(2.0**-14)
    s, _ = ao.choose_qparams_affine(np.zeros(4, F), "SYMMETRIC", (4,), "int8", eps=1e-6)
    assert s == F(1e-6)


def test_bfloat16_input_gives_a_bfloat16_scale_unless_scale_dtype_says_otherwise():
    x = np.array([1.0, -3.0], BF16)
    s, _ = ao.choose_qparams_affine(x, "SYMMETRIC", (2,), "int8")
    assert s.dtype == BF16
    assert s == np.array(F(3) / F(127.5), F).astype(BF16)  # computed in float32, rounded once
    s32, _ = ao.choose_qparams_affine(x, "SYMMETRIC", (2,), "int8", scale_dtype="float32")
    assert s32.dtype == np.float32 and s32 == F(s)  # divided in bfloat16, then widened


def test_float_zero_point_domain_is_tinygemms_min_plus_scale_times_mid():
    x = F([0.0, 1.5, 3.0])
    s, z = ao.choose_qparams_affine(x, "ASYMMETRIC", (3,), "uint4", zero_point_domain="FLOAT")
    assert s == F(3) / F(15)
    assert z.dtype == np.float32 and z == F(0) + s * F(8)  # mid = (15 + 0 + 1) / 2
    q = ao.quantize_affine(x, (3,), s, z, "uint4", zero_point_domain="FLOAT")
    assert q.dtype == np.uint8  # uintN is stored in uint8
    # (x - (z - s * 8)) / s, a true division: z - s * 8 = 0 exactly
    np.testing.assert_array_equal(q, np.rint(x / s).astype(np.uint8))
    d = ao.dequantize_affine(q, (3,), s, z, "uint4", zero_point_domain="FLOAT")
    np.testing.assert_array_equal(d, (q.astype(F) - F(8)) * s + z)


# ------------------------------------------------------------------ quantize / dequantize


def test_quantize_multiplies_by_the_float32_reciprocal():
    x, s = F(0.273939937), F(0.00214854861)
    assert x * (F(1) / s) == F(127.5)  # the product rounds to the tie; x / s does not
    assert x / s < F(127.5)
    q = ao.quantize_affine(F([x]), (1,), F([s]), np.int32([0]), "uint8")
    assert q.dtype == np.uint8 and q[0] == 128  # half to even


def test_zero_point_is_added_after_rounding():
    # round(2.5) = 2 (half to even), then + 1 = 3; adding before rounding would give 4
    q = ao.quantize_affine(F([2.5, 3.5]), (2,), F([1.0]), np.int32([1]), "int8")
    np.testing.assert_array_equal(q, np.int8([3, 5]))


def test_bfloat16_zero_point_sum_is_rounded_to_bfloat16():
    x = np.array([1000.0], BF16)
    # 1000 + 3 = 1003 in bfloat16 (spacing 4 in [512, 1024)) is 1004
    q = ao.quantize_affine(x, (1,), np.array([1.0], BF16), np.int32([3]), "int16")
    assert q.dtype == np.int16 and q[0] == 1004
    q32 = ao.quantize_affine(F([1000.0]), (1,), F([1.0]), np.int32([3]), "int16")
    assert q32[0] == 1003


def test_int32_top_bound_rounds_to_2_31_and_wraps_to_int32_min():
    q = ao.quantize_affine(F([3e9, -3e9, np.inf]), (3,), F([1.0]), np.int32([0]), "int32")
    np.testing.assert_array_equal(q, np.int32([-(2**31)] * 3))  # -3e9 clamps to -2^31 itself
    q = ao.quantize_affine(F([3e9, np.inf, -np.inf]), (3,), F([1.0]), np.int32([0]), "int8")
    np.testing.assert_array_equal(q, np.int8([127, 127, -128]))


def test_nan_input_gives_int32_min_and_its_low_bits():
    q = ao.quantize_affine(F([np.nan]), (1,), F([1.0]), np.int32([0]), "int32")
    assert q[0] == -(2**31)
    q = ao.quantize_affine(F([np.nan]), (1,), F([1.0]), np.int32([5]), "int8")
    assert q[0] == 0


def test_custom_int4_range_in_int8_storage():
    q = ao.quantize_affine(F([-20.0, -7.5, 6.5, 20.0]), (4,), F([1.0]), np.int32([0]), "int8",
                           -8, 7)
    np.testing.assert_array_equal(q, np.int8([-8, -8, 6, 7]))  # -7.5 -> -8, 6.5 -> 6


def test_dequantize_subtracts_then_multiplies_in_the_output_dtype():
    q = np.uint8([0, 128, 255])
    d = ao.dequantize_affine(q, (3,), F([0.5]), np.int32([128]), "uint8")
    np.testing.assert_array_equal(d, F([-64.0, 0.0, 63.5]))
    d16 = ao.dequantize_affine(q, (3,), F([0.5]), np.int32([128]), "uint8",
                               output_dtype="bfloat16")
    assert d16.dtype == BF16
    np.testing.assert_array_equal(d16.astype(F), F([-64.0, 0.0, 63.5]))


def test_none_domain_has_no_zero_point():
    q = ao.quantize_affine(F([2.5, -3.5]), (2,), F([1.0]), None, "int8", zero_point_domain="NONE")
    np.testing.assert_array_equal(q, np.int8([2, -4]))
    d = ao.dequantize_affine(q, (2,), F([0.5]), None, "int8", zero_point_domain="NONE")
    np.testing.assert_array_equal(d, F([1.0, -2.0]))


def test_fake_quantize_keeps_the_input_dtype_and_propagates_nan():
    x = np.array([0.3, 2.5, np.nan, 100.0], np.float16)
    y = ao.fake_quantize_affine(x, (4,), np.float16([0.5]), np.int32([0]), "int4")
    assert y.dtype == np.float16
    # 0.3 / 0.5 -> 0.6 -> 1 -> 0.5; 2.5 / 0.5 = 5 -> 2.5; NaN; 200 -> clamp 7 -> 3.5
    np.testing.assert_array_equal(y, np.float16([0.5, 2.5, np.nan, 3.5]))


# ------------------------------------------------------------------ float8


def test_float8_rowwise_and_tensorwise_scales_and_codes():
    x = F([[1.0, -2.0], [448.0, 896.0]])
    s = ao.choose_scale_float8(x, (1, 2))
    np.testing.assert_array_equal(s, F([[2.0], [896.0]]) / F(448))
    y = ao.quantize_affine_float8(x, s)
    assert y.dtype == np.dtype(ml_dtypes.float8_e4m3fn)
    np.testing.assert_array_equal(y.astype(F), F([[224, -448], [224, 448]]))
    st = ao.choose_scale_float8(x, (2, 2))
    assert st.shape == (1, 1) and st[0, 0] == F(2)
    np.testing.assert_array_equal(ao.quantize_affine_float8(x, st).astype(F),
                                  F([[0.5, -1], [224, 448]]))
    np.testing.assert_array_equal(ao.dequantize_affine_float8(y, s), x)


def test_float8_e8m0_scale_is_a_power_of_two_rounded_in_the_log():
    s = ao.choose_scale_float8(F([[3.0, 0.0]]), (1, 2), scale_dtype="float8_e8m0fnu")
    assert s[0, 0] == F(2.0**-7)  # log2(3 / 448) = -7.22 -> -7


def test_float8_zero_block_has_scale_zero_and_nan_codes():
    x = np.zeros((1, 2), F)
    s = ao.choose_scale_float8(x, (1, 2))
    assert s[0, 0] == 0
    assert np.isnan(ao.quantize_affine_float8(x, s).astype(F)).all()


# ------------------------------------------------------------------ recipes


def test_int8_recipe_is_per_row_symmetric_with_float32_eps_and_int8_zero_points():
    x = F([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]])
    q, s, z, block = ao.int8_tensor_from_hp(x)
    assert block == (1, 3)
    assert s.shape == (2, 1) and s.dtype == np.float32 and z.dtype == np.int8
    assert s[0, 0] == F(2) / F(127.5) and s[1, 0] == F(2.0**-23)  # eps = finfo(float32).eps
    np.testing.assert_array_equal(q[0], np.rint(x[0] * (F(1) / s[0, 0])).astype(np.int8))
    _, s_rr, _, _ = ao.int8_tensor_from_hp(x, reduce_range=True)
    assert s_rr[0, 0] == F(2) / F(63.5)  # bounds [-64, 63]


def test_int4_tinygemm_recipe_uses_uint4_codes_and_bfloat16_float_zero_points():
    w = np.tile(np.linspace(-1, 1, 32, dtype=F), (2, 2)).astype(BF16)
    q, s, z = ao.int4_tile_packed_to_4d_from_hp(w, 32)
    assert q.dtype == np.int32 and q.min() == 0 and q.max() == 15
    assert s.shape == z.shape == (2, 2) and s.dtype == z.dtype == BF16
    with pytest.raises(RefquantError, match="group_size"):
        ao.int4_tile_packed_to_4d_from_hp(w[:, :48], 32)
    with pytest.raises(RefquantError, match="bfloat16"):
        ao.int4_tile_packed_to_4d_from_hp(w.astype(F), 32)


def test_get_block_size_for_each_granularity():
    assert ao.get_block_size((4, 8), "per_tensor") == (4, 8)
    assert ao.get_block_size((4, 8), "per_row") == (1, 8)
    assert ao.get_block_size((4, 8), ("per_axis", 1)) == (4, 1)
    assert ao.get_block_size((4, 8), ("per_group", 4)) == (1, 4)


# ------------------------------------------------------------------ names and refusals


def test_enums_and_dtypes_accept_torchao_style_names():
    class Foreign(enum.Enum):  # stands for torchao's own MappingType
        SYMMETRIC = 1

    a = ao.choose_qparams_affine(F([1.0, -1.0]), Foreign.SYMMETRIC, (2,), "torch.int8")
    b = ao.choose_qparams_affine(F([1.0, -1.0]), ao.MappingType.SYMMETRIC, (2,), np.int8)
    assert a[0] == b[0] and a[1] == b[1]


@pytest.mark.parametrize("call,argname", [
    (lambda: ao.choose_qparams_affine(F([1.0]), "SYMM", (1,), "int8"), "mapping_type"),
    (lambda: ao.choose_qparams_affine(F([1.0]), "SYMMETRIC", (1,), "float32"), "target_dtype"),
    (lambda: ao.choose_qparams_affine(np.ones(2), "SYMMETRIC", (2,), "int8"), "input"),
    (lambda: ao.choose_qparams_affine(F([1.0, 2.0]), "SYMMETRIC", (2, 1), "int8"), "block_size"),
    (lambda: ao.choose_qparams_affine(np.ones(6, F), "SYMMETRIC", (4,), "int8"), "block_size"),
    (lambda: ao.choose_qparams_affine(np.ones(6, F), "SYMMETRIC", (0,), "int8"), "block_size"),
    (lambda: ao.choose_qparams_affine(F([1.0]), "SYMMETRIC", (1,), "int8", -200), "quant_min"),
    (lambda: ao.choose_qparams_affine(F([1.0]), "SYMMETRIC", (1,), "uint8", 0, 256), "quant_max"),
    (lambda: ao.choose_qparams_affine(F([1.0]), "SYMMETRIC", (1,), "int8", 5, 5), "quant_min"),
    (lambda: ao.choose_qparams_affine(F([1.0]), "SYMMETRIC", (1,), "int8",
                                      scale_dtype="int8"), "scale_dtype"),
    (lambda: ao.choose_qparams_affine(F([1.0]), "SYMMETRIC", (1,), "int8",
                                      zero_point_domain="HALF"), "zero_point_domain"),
    (lambda: ao.choose_qparams_affine(F([np.nan, 1.0]), "ASYMMETRIC", (2,), "uint8"), "NaN"),
    (lambda: ao.quantize_affine(F([1.0]), (1,), F([1.0, 2.0]), np.int32([0]), "int8"), "scale"),
    (lambda: ao.quantize_affine(F([1.0]), (1,), F([1.0]), None, "int8"), "zero_point"),
    (lambda: ao.quantize_affine(F([1.0]), (1,), F([1.0]), np.int32([0]), "int4"), "output_dtype"),
    (lambda: ao.quantize_affine(np.float16([1.0]), (1,), np.float16([1.0]), np.int32([0]),
                                "int32"), "float16"),
    (lambda: ao.dequantize_affine(np.int8([1]), (1,), F([1.0]), None, "uint8"), "input"),
    (lambda: ao.dequantize_affine(np.int8([1]), (1,), F([1.0]), None, "int8",
                                  output_dtype="int8"), "output_dtype"),
    (lambda: ao.fake_quantize_affine(F([1.0]), (1,), F([1.0]), np.int32([0]), "int8",
                                     zero_point_domain="NONE"), "zero_point"),
    (lambda: ao.choose_scale_float8(F([[1.0]]), (1, 1), "float8_e4m3"), "float8_dtype"),
    (lambda: ao.choose_scale_float8(F([[1.0]]), (1, 1), scale_dtype="bfloat16"), "scale_dtype"),
    (lambda: ao.quantize_affine_float8(np.ones((2, 4), F), np.ones((3, 1), F)), "scale"),
    (lambda: ao.int8_tensor_from_hp(F([[1.0]]), "per_group"), "granularity"),
])
def test_bad_input_raises_refquant_error_naming_the_argument(call, argname):
    with pytest.raises(RefquantError, match=argname):
        call()
