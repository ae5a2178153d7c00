import ml_dtypes
import numpy as np
import pytest

from refquant import IntFormat, RefquantError, get_format, list_formats
from refquant.formats import IntRange, int_format


@pytest.mark.parametrize(
    "name,qmin,qmax,storage",
    [
        ("int8", -128, 127, np.int8),
        ("uint8", 0, 255, np.uint8),
        ("int4", -8, 7, np.int8),
        ("uint4", 0, 15, np.uint8),
        ("int2", -2, 1, np.int8),
        ("uint2", 0, 3, np.uint8),
        ("int16", -32768, 32767, np.int16),
        ("uint16", 0, 65535, np.uint16),
        ("int8_narrow", -127, 127, np.int8),
        ("uint8_narrow", 0, 254, np.uint8),
        ("int3", -4, 3, np.int8),
        ("uint12", 0, 4095, np.uint16),
    ],
)
def test_named_integer_formats_have_the_documented_range(name, qmin, qmax, storage):
    f = int_format(name)
    assert (f.qmin, f.qmax, f.storage_dtype) == (qmin, qmax, np.dtype(storage))
    assert f.name == name
    assert get_format(name) == f
    assert f.levels == qmax - qmin + 1


def test_numpy_and_ml_dtypes_integer_types_resolve():
    assert int_format(np.int8) == IntFormat(8)
    assert int_format(np.uint16) == IntFormat(16, signed=False)
    assert int_format(ml_dtypes.int4) == IntFormat(4)
    assert int_format(ml_dtypes.uint2) == IntFormat(2, signed=False)
    assert int_format("int8", narrow_range=True).qmin == -127


@pytest.mark.parametrize("bits", [0, 1, 17, 32, 2.5, True])
def test_widths_outside_2_to_16_are_refused(bits):
    with pytest.raises(RefquantError, match="bits"):
        IntFormat(bits)


@pytest.mark.parametrize("bad", ["int1", "int17", "float8", "i8", np.float32, np.int32, object()])
def test_non_integer_or_out_of_range_dtypes_are_refused(bad):
    with pytest.raises(RefquantError):
        int_format(bad)


def test_unknown_format_name_lists_known_names():
    with pytest.raises(RefquantError, match=r"unknown format 'int99'.*known formats: .*int8"):
        get_format("int99")


def test_registry_holds_every_width_signedness_and_range():
    names = list_formats("integer")
    assert len(names) == 15 * 2 * 2
    assert "uint16_narrow" in names and "int2" in names


def test_custom_ranges_work_as_formats_and_compare_by_range():
    from refquant import quantize
    from refquant.formats import IntRange

    g = IntRange(0, 15, np.uint8)
    assert (g.qmin, g.qmax, g.storage_dtype, g.bits) == (0, 15, np.dtype(np.uint8), 8)
    np.testing.assert_array_equal(quantize([-3.0, 7.4, 99.0], 1.0, dtype=g), [0, 7, 15])
    assert g == IntRange(0, 15, np.uint8) and g != IntRange(0, 14, np.uint8)
    assert IntRange(-(2**31), 2**31 - 1).storage_dtype == np.int32
    with pytest.raises(RefquantError, match="quant_min 3 must be <= quant_max 2"):
        IntRange(3, 2)
    with pytest.raises(RefquantError, match="does not fit"):
        IntRange(0, 300, np.uint8)


def test_int_range_refuses_non_integral_bounds_and_names_the_storage_problem():
    # 1.5 used to be truncated to 1; 'a' raised ValueError; storage 'foo' TypeError; and
    # [0, 2^64] blamed a storage "float64" the caller never passed
    for bad in (1.5, "a", None):
        with pytest.raises(RefquantError, match="quant_min"):
            IntRange(bad, 3)
    with pytest.raises(RefquantError, match="storage"):
        IntRange(0, 3, "foo")
    with pytest.raises(RefquantError, match=r"\[0, 18446744073709551616\] does not fit any integer storage"):
        IntRange(0, 2**64)
    assert IntRange(np.int64(0), 15.0).qmax == 15
