import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refquant import RefquantError
from refquant.kernels.packing import (
    pack,
    pack_bits,
    pack_int4_to_int32,
    pack_nibbles,
    unpack,
    unpack_int4_from_int32,
    unpack_nibbles,
)


def test_nibble_orders_by_hand():
    # ONNX: first element in the low nibble; bitsandbytes: in the high nibble
    np.testing.assert_array_equal(pack_nibbles([1, 2, 3]), [0x21, 0x03])
    np.testing.assert_array_equal(pack_nibbles([1, 2, 3], order="high_first"), [0x12, 0x30])
    np.testing.assert_array_equal(pack_nibbles([-8, 7, -1, 0]), [0x78, 0x0F])


def test_compressed_tensors_pack_quantized_layout():
    # eight int4 per int32, offset by +8, first element in the lowest nibble
    w = pack_int4_to_int32(np.arange(-8, 8))
    np.testing.assert_array_equal(w.view(np.uint32), [0x76543210, 0xFEDCBA98])
    np.testing.assert_array_equal(unpack_int4_from_int32(w, 16), np.arange(-8, 8))


@given(hnp.arrays(np.uint8, st.tuples(st.integers(1, 4), st.integers(1, 70)),
                  elements=st.integers(0, 1)),
       st.sampled_from([("low_first", "little"), ("high_first", "big")]))
def test_one_bit_packing_matches_numpy_packbits(b, orders):
    order, bitorder = orders
    np.testing.assert_array_equal(pack_bits(b, order=order), np.packbits(b, axis=-1, bitorder=bitorder))
    np.testing.assert_array_equal(pack_bits(b.T, axis=0, order=order),
                                  np.packbits(b.T, axis=0, bitorder=bitorder))


@given(st.sampled_from([1, 2, 4, 8]), st.sampled_from(["uint8", "uint16", "uint32", "uint64"]),
       st.sampled_from(["low_first", "high_first"]), st.integers(1, 100), st.data())
def test_round_trip_with_padding(bits, word, order, n, data):
    codes = data.draw(hnp.arrays(np.int64, (2, n), elements=st.integers(0, (1 << bits) - 1)))
    packed = pack(codes, bits, order=order, word=word)
    per = np.dtype(word).itemsize * 8 // bits
    assert packed.shape == (2, -(-n // per)) and packed.dtype == np.dtype(word)
    np.testing.assert_array_equal(unpack(packed, bits, n, order=order), codes)


def test_words_are_little_endian_packed_bytes_when_low_first():
    b = np.random.default_rng(0).integers(0, 2, 64).astype(np.uint8)
    w64 = pack_bits(b, word="uint64")
    assert w64.astype("<u8").tobytes() == pack_bits(b).tobytes()


def test_signed_unpack_sign_extends():
    np.testing.assert_array_equal(unpack_nibbles(pack_nibbles([-8, -1, 7]), 3, signed=True),
                                  [-8, -1, 7])
    np.testing.assert_array_equal(unpack(pack([-2, 1, -1], 2), 2, 3, signed=True), [-2, 1, -1])


def test_bad_input():
    with pytest.raises(RefquantError, match="code 16 does not fit 4 bits"):
        pack_nibbles([16])
    with pytest.raises(RefquantError, match="bits must be 1, 2, 4 or 8"):
        pack([1], 3)
    with pytest.raises(RefquantError, match="order"):
        pack([1], 4, order="msb")
    with pytest.raises(RefquantError, match="n 5 is out of range"):
        unpack_nibbles(np.zeros(2, np.uint8), 5)
    with pytest.raises(RefquantError, match="int4 codes must be in"):
        pack_int4_to_int32([8])
    with pytest.raises(RefquantError, match="axis 1 is out of range"):
        pack_bits([1, 0], axis=1)


def test_out_of_range_wide_codes_are_refused_not_wrapped():
    # uint64 2^64 - 1 used to wrap to int64 -1 and pack as 0xF
    with pytest.raises(RefquantError, match="does not fit 4 bits"):
        pack(np.array([2**64 - 1], np.uint64), 4)
    assert pack(np.array([15, 2], np.uint64), 4).tolist() == [0x2F]


def test_pad_and_n_must_be_integers():
    for bad in (1.5, "a", None):
        with pytest.raises(RefquantError, match="pad must be an integer"):
            pack([1, 2, 3], 4, pad=bad)
        with pytest.raises(RefquantError, match="n must be an integer"):
            unpack(np.zeros(1, np.uint8), 4, bad if bad is not None else "1")


def test_unpack_nibbles_refuses_values_that_are_not_bytes():
    # int64 300 used to wrap to 0x2C (-> [12, 2]); uint16 0x1234 lost its high byte; 1.7 became 1
    for bad in (np.array([300]), np.array([-1]), np.array([0x1234], np.uint16), np.array([1.7])):
        with pytest.raises(RefquantError, match="packed must be bytes"):
            unpack_nibbles(bad)
    assert unpack_nibbles([0x21, 0xF0]).tolist() == [1, 2, 0, 15]


def test_bits_must_be_an_integer_and_ragged_codes_are_refused():
    # bits=4.0 passed the `in (1, 2, 4, 8)` test and then raised TypeError from `1 << (bits - 1)`;
    # a ragged list raised NumPy's ValueError
    for bad in (4.0, np.float64(4), True, "4"):
        with pytest.raises(RefquantError, match="bits must be 1, 2, 4 or 8"):
            pack([1, 2], bad)
        with pytest.raises(RefquantError, match="bits must be 1, 2, 4 or 8"):
            unpack(np.zeros(1, np.uint8), bad)
    with pytest.raises(RefquantError, match="codes must be"):
        pack([[1], [2, 3]], 4)
    assert pack([1, 2], np.int64(4)).tolist() == [0x21]


def test_unpack_names_packed_when_its_dtype_is_not_a_word():
    # the message said "word must be one of ..." though unpack has no word argument
    with pytest.raises(RefquantError, match=r"^packed must be uint8, uint16, uint32 or uint64 words"):
        unpack(np.array([1], np.int8), 4)


# ----------------------------------------------------------------- the Numba kernels


def _same_array(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)


@given(
    data=st.data(),
    bits=st.sampled_from([1, 2, 4, 8]),
    word=st.sampled_from(["uint8", "uint16", "uint32", "uint64"]),
    order=st.sampled_from(["low_first", "high_first"]),
    signed=st.booleans(),
    dtype=st.sampled_from([np.int8, np.int16, np.int64, np.uint8, np.uint32]),
)
def test_pack_and_unpack_kernels_equal_the_reference(data, bits, word, order, signed, dtype):
    if np.dtype(word).itemsize * 8 < bits or (signed and np.dtype(dtype).kind == "u"):
        return
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if np.dtype(dtype).kind == "i":
        hi = min(hi, np.iinfo(dtype).max)
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=70))
    c = data.draw(hnp.arrays(dtype, shape, elements=st.integers(lo, hi)))
    axis = data.draw(st.integers(-c.ndim, c.ndim - 1))
    pad = data.draw(st.integers(lo, hi))
    kw = dict(axis=axis, order=order, word=word, pad=pad)
    packed = pack(c, bits, backend="numpy", **kw)
    _same_array(pack(c, bits, backend="cpu", **kw), packed)
    n = data.draw(st.integers(0, packed.shape[axis] * (np.dtype(word).itemsize * 8 // bits)))
    ukw = dict(axis=axis, order=order, signed=signed)
    _same_array(unpack(packed, bits, n, backend="cpu", **ukw), unpack(packed, bits, n, backend="numpy", **ukw))


def test_nibble_kernels_take_ml_dtypes_int4_and_check_like_the_reference():
    import ml_dtypes

    c = np.arange(-8, 8).repeat(3).astype(ml_dtypes.int4)
    _same_array(pack_nibbles(c, backend="cpu"), pack_nibbles(c, backend="numpy"))
    for backend in ("numpy", "cpu"):
        with pytest.raises(RefquantError, match="does not fit"):
            pack(np.array([16]), 4, backend=backend)
        with pytest.raises(RefquantError, match="out of range"):
            unpack(np.zeros(2, np.uint8), 4, 5, backend=backend)


def test_packing_kernel_bodies_run_as_python_without_jit():
    from helpers import run_without_jit

    code = """
import numpy as np
from refquant.kernels.packing import pack, unpack
c = np.random.default_rng(0).integers(-8, 8, (3, 21))
for order in ("low_first", "high_first"):
    for word in ("uint8", "uint32"):
        p1 = pack(c, 4, order=order, word=word, pad=-8, backend="cpu")
        assert np.array_equal(p1, pack(c, 4, order=order, word=word, pad=-8, backend="numpy"))
        assert np.array_equal(unpack(p1, 4, 21, order=order, signed=True, backend="cpu"),
                              unpack(p1, 4, 21, order=order, signed=True, backend="numpy"))
print("ok")
"""
    assert run_without_jit(code).strip() == "ok"
