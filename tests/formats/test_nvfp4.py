"""refquant.formats.nvfp4 on its own: shapes, the grid, packing, refusals (peers: tests/peers/test_nvfp4.py)."""

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refquant import RefquantError, get_format
from refquant.formats.nvfp4 import (
    NVFP4_CONVENTIONS,
    dequantize_nvfp4,
    nvfp4_global_scale,
    pack_nvfp4,
    quantize_nvfp4,
    unpack_nvfp4,
)

E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float32)


def test_registered_as_a_block_format():
    f = get_format("nvfp4")
    assert (f.family, f.block_size, f.bits) == ("block", 16, 4.5)


@pytest.mark.parametrize("conv", NVFP4_CONVENTIONS)
@pytest.mark.parametrize("shape", [(0, 16), (3, 0), (16,), (2, 3, 32), (1, 16)])
def test_shapes_including_empty(conv, shape):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    codes, scales, g = quantize_nvfp4(x, convention=conv)
    assert codes.shape == shape and scales.shape == (*shape[:-1], shape[-1] // 16)
    y = dequantize_nvfp4(codes, scales, g, convention=conv)
    assert y.shape == shape and y.dtype == np.float32
    np.testing.assert_array_equal(unpack_nvfp4(pack_nvfp4(codes)), codes)


@settings(max_examples=30, deadline=None)
@given(hnp.arrays(np.int64, (4, 32), elements=st.integers(0, 15)), st.sampled_from(NVFP4_CONVENTIONS))
def test_values_on_the_grid_round_trip_exactly(idx, conv):
    """Each block holds +-6 (so its scale is exactly amax / 6 = 1 with a global amax of 6)."""
    v = np.where(idx >= 8, -1, 1) * E2M1[idx % 8]
    v[:, 0] = 6.0
    v[:, 16] = -6.0
    codes, scales, g = quantize_nvfp4(v.astype(np.float32), convention=conv)
    y = dequantize_nvfp4(codes, scales, g, convention=conv)
    np.testing.assert_array_equal(y, v.astype(np.float32))


def test_subnormal_and_tiny_tensors_stay_finite_and_small():
    for amax in (1e-45, 1e-40, 1e-30, 3e38):
        x = (np.linspace(-1, 1, 32) * amax).astype(np.float32).reshape(1, 32)
        for conv in NVFP4_CONVENTIONS:
            if conv == "torchao" and amax < 1e-35:  # amax / 2688 has no float32 reciprocal
                with pytest.raises(RefquantError, match="reciprocal"):
                    quantize_nvfp4(x, convention=conv)
                continue
            c, s, g = quantize_nvfp4(x, convention=conv)
            y = dequantize_nvfp4(c, s, g, convention=conv)
            assert np.isfinite(y).all()
            assert float(np.abs(y).max()) <= 1.5 * float(np.abs(x).max()) + 1e-44, (amax, conv)


def test_inputs_and_dtypes():
    x = np.random.default_rng(1).standard_normal((2, 16)).astype(np.float32)
    ref = quantize_nvfp4(x)
    got = quantize_nvfp4(x.astype(np.float64))  # exact float64 is float32
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(RefquantError, match="float64"):
        quantize_nvfp4(x.astype(np.float64) + 1e-12)
    with pytest.raises(RefquantError, match="real array"):
        quantize_nvfp4(x.astype(np.complex64))
    with pytest.raises(RefquantError, match="at least one dimension"):
        quantize_nvfp4(np.float32(1))
    b = quantize_nvfp4(x.astype(ml_dtypes.bfloat16))
    assert b[0].shape == (2, 16)
    assert nvfp4_global_scale(np.zeros((1, 16), np.float32)) == 1.0
    assert nvfp4_global_scale(np.zeros((1, 16), np.float32), convention="torchao") == 0.0
    with pytest.raises(RefquantError, match="dtype"):
        dequantize_nvfp4(*ref, dtype="float8")
    with pytest.raises(RefquantError, match="uint8"):
        dequantize_nvfp4(ref[0].astype(np.int8), ref[1], ref[2])
    with pytest.raises(RefquantError, match="even"):
        pack_nvfp4(np.zeros((1, 3), np.uint8))
    with pytest.raises(RefquantError, match="4 bits"):
        pack_nvfp4(np.full((1, 2), 16, np.uint8))
    with pytest.raises(RefquantError, match="hold 4 codes"):
        unpack_nvfp4(np.zeros((1, 2), np.uint8), 6)


def test_bfloat16_output_rounds_once_from_float32():
    c, s, g = quantize_nvfp4(np.random.default_rng(2).standard_normal((3, 32)).astype(np.float32))
    f32 = dequantize_nvfp4(c, s, g)
    bf = dequantize_nvfp4(c, s, g, dtype="bfloat16")
    np.testing.assert_array_equal(bf, f32.astype(ml_dtypes.bfloat16).astype(np.float32))
