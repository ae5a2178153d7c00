"""compat.bnb: layout, tie rules of both backends, double quantization, round trips."""

import numpy as np
import pytest

from refquant import RefquantError
from refquant.compat import bnb
from refquant.formats.codebook import NF4_VALUES


def test_first_element_goes_in_the_high_nibble_and_odd_length_pads_with_zero_code():
    A = np.array([-1.0, 1.0, 0.0], np.float32)  # NF4 codes 0, 15, 7; pad 7
    packed, st = bnb.quantize_4bit(A, blocksize=64, quant_type="nf4")
    assert packed.shape == (2, 1) and packed.ravel().tolist() == [0x0F, 0x77]
    assert st["absmax"].tolist() == [1.0]
    assert bnb.dequantize_4bit(packed, st).tolist() == [-1.0, 1.0, 0.0]


def test_fp4_codes_of_hand_values():
    # absmax 12 -> x / 12: 12 -> 1.0 (0b0011), -6 -> -0.5 (0b1101), 2 -> 1/6 (0b0110), 3 -> 0.25 (0b0111)
    A = np.array([12.0, -6.0, 2.0, 3.0], np.float32)
    packed, st = bnb.quantize_4bit(A, blocksize=64, quant_type="fp4")
    assert packed.ravel().tolist() == [0x3D, 0x67]
    assert bnb.dequantize_4bit(packed, st).tolist() == [12.0, -6.0, 2.0, 3.0]


def test_cuda_fp4_literal_0_583333_differs_from_the_midpoint_at_7_12():
    x = np.float32(7 / 12)  # 0.58333331: above CUDA's 0.583333f, below the float32 midpoint 0.5833334
    A = np.array([1.0, x, -x, 0.0], np.float32)
    d, _ = bnb.quantize_4bit(A, blocksize=64, quant_type="fp4", backend="default")
    c, _ = bnb.quantize_4bit(A, blocksize=64, quant_type="fp4", backend="cuda")
    # default: x -> 0.5 (0b0101); its negative: -x is above the midpoint -0.5833334 -> -0.5 (0b1101)
    assert d.ravel().tolist() == [0x35, 0xD0]
    # cuda: |x| > 0.583333f -> 2/3 (0b0010), sign from x < 0
    assert c.ravel().tolist() == [0x32, 0xA0]


def test_cuda_all_zero_block_gives_nan_scaled_and_code_0():
    A = np.zeros(4, np.float32)
    c, st = bnb.quantize_4bit(A, blocksize=64, quant_type="nf4", backend="cuda")
    assert c.ravel().tolist() == [0x00, 0x00] and st["absmax"].tolist() == [0.0]
    d, _ = bnb.quantize_4bit(A, blocksize=64, quant_type="nf4", backend="default")
    assert d.ravel().tolist() == [0x77, 0x77]
    assert np.all(bnb.dequantize_4bit(c, st) == 0)


def test_default_backend_partial_zero_block_stores_1e_38():
    A = np.concatenate([np.ones(64, np.float32), np.zeros(3, np.float32)])
    _, st = bnb.quantize_4bit(A, blocksize=64, quant_type="nf4")
    assert st["absmax"].tolist() == [1.0, np.float32(1e-38)]


def test_double_quantization_round_trip_is_close():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((50, 64)).astype(np.float32)
    p1, s1 = bnb.quantize_4bit(A, blocksize=64, quant_type="nf4")
    p2, s2 = bnb.quantize_4bit(A, blocksize=64, quant_type="nf4", compress_statistics=True)
    assert np.array_equal(p1, p2)
    assert s2["absmax"].dtype == np.uint8 and s2["state2"]["blocksize"] == 256
    assert np.allclose(bnb.dequantize_4bit(p2, s2), bnb.dequantize_4bit(p1, s1), rtol=0.01)
    assert s2["offset"] == pytest.approx(s1["absmax"].mean(), rel=1e-6)


def test_blockwise_8bit_round_trip_error_is_within_half_a_code_gap():
    rng = np.random.default_rng(1)
    A = rng.standard_normal(5000).astype(np.float32)
    q, st = bnb.quantize_blockwise(A, blocksize=256)
    back = bnb.dequantize_blockwise(q, st)
    code = st["code"]
    gaps = np.diff(code).max()
    assert np.abs(back - A).max() <= gaps / 2 * np.abs(A).max()


def test_nf4_quantize_of_the_table_times_absmax_is_exact():
    A = (NF4_VALUES * np.float32(4)).astype(np.float32)
    packed, st = bnb.quantize_4bit(A, blocksize=32, quant_type="nf4")
    assert np.array_equal(bnb.dequantize_4bit(packed, st), A)


def test_bad_arguments():
    with pytest.raises(RefquantError, match="blocksize"):
        bnb.quantize_4bit(np.ones(4, np.float32), blocksize=48)
    with pytest.raises(RefquantError, match="quant_type"):
        bnb.quantize_4bit(np.ones(4, np.float32), blocksize=64, quant_type="int4")
    with pytest.raises(RefquantError, match="NaN"):
        bnb.quantize_4bit(np.array([np.nan], np.float32))
    p, st = bnb.quantize_4bit(np.ones(4, np.float32))
    with pytest.raises(RefquantError, match="packed"):
        bnb.dequantize_4bit(p[:1], st)


def test_a_damaged_quant_state_raises_refquant_error():
    p, st = bnb.quantize_4bit(np.ones(4, np.float32))
    for key, bad in (("blocksize", 0), ("blocksize", "x"), ("shape", "ab"), ("shape", (2.5,)),
                     ("code", np.zeros(4, np.float32))):
        with pytest.raises(RefquantError, match=key):  # were ZeroDivisionError, UFuncTypeError, IndexError
            bnb.dequantize_4bit(p, {**st, key: bad})
    q, st8 = bnb.quantize_blockwise(np.linspace(-1, 1, 300).astype(np.float32), blocksize=256)
    for key, bad in (("blocksize", 0), ("code", np.zeros(4, np.float32))):
        with pytest.raises(RefquantError, match=key):
            bnb.dequantize_blockwise(q, {**st8, key: bad})
    with pytest.raises(RefquantError, match="code"):
        bnb.quantize_blockwise(np.ones(4, np.float32), code="a")


def test_a_damaged_absmax_offset_or_dtype_and_a_ragged_input_raise_refquant_error():
    # absmax 'ab' and offset 'a' raised ValueError, dtype 'foo' / 5 TypeError, a ragged A ValueError
    p, st = bnb.quantize_4bit(np.ones(70, np.float32), blocksize=64, quant_type="nf4")
    pn, stn = bnb.quantize_4bit(np.ones(70, np.float32), blocksize=64, quant_type="nf4", compress_statistics=True)
    q, st8 = bnb.quantize_blockwise(np.ones(70, np.float32), blocksize=64)
    for fn, packed, state, key, bad in (
        (bnb.dequantize_4bit, p, st, "absmax", "ab"),
        (bnb.dequantize_4bit, p, st, "dtype", "foo"),
        (bnb.dequantize_4bit, p, st, "dtype", 5),
        (bnb.dequantize_4bit, pn, stn, "offset", "a"),
        (bnb.dequantize_blockwise, q, st8, "absmax", "ab"),
        (bnb.dequantize_blockwise, q, st8, "dtype", "foo"),
    ):
        with pytest.raises(RefquantError, match=key):
            fn(packed, {**state, key: bad})
    for fn in (bnb.quantize_4bit, bnb.quantize_blockwise):
        with pytest.raises(RefquantError, match="A must be"):
            fn([[1.0], [2.0, 3.0]])


def test_cuda_odd_length_pad_of_an_all_zero_last_block_is_code_0():
    # kQuantizeBlockwise loads the missing element as 0.0f and multiplies it by 1/absmax = Inf
    # like the others: NaN, which dQuantizeNF4 sends to 0b0000. The pad was the code of 0.0 (7).
    c, _ = bnb.quantize_4bit(np.zeros(3, np.float32), blocksize=64, quant_type="nf4", backend="cuda")
    assert c.ravel().tolist() == [0x00, 0x00]
    c, _ = bnb.quantize_4bit(np.float32([1, 0, 0]), blocksize=64, quant_type="nf4", backend="cuda")
    assert c.ravel().tolist() == [0xF7, 0x77]  # a block with absmax 1: 0 * 1 = 0 -> code 7
    A = np.concatenate([np.ones(64, np.float32), np.zeros(3, np.float32)])
    c, _ = bnb.quantize_4bit(A, blocksize=64, quant_type="fp4", backend="cuda")
    assert c.ravel()[-2:].tolist() == [0x00, 0x00]  # FP4: NaN and 0 both give 0b0000


def test_arguments_come_in_bitsandbytes_order_and_its_buffers_are_refused():
    # bitsandbytes: quantize_4bit(A, absmax=None, out=None, blocksize=None,
    # compress_statistics=False, quant_type='fp4', quant_storage=torch.uint8) and
    # quantize_blockwise(A, code=None, absmax=None, out=None, blocksize=4096, nested=False)
    A = np.linspace(-1, 1, 100).astype(np.float32)
    p1, s1 = bnb.quantize_4bit(A, None, None, 32, True, "nf4")
    p2, s2 = bnb.quantize_4bit(A, blocksize=32, compress_statistics=True, quant_type="nf4")
    assert np.array_equal(p1, p2) and s1["blocksize"] == 32 and s1["nested"] and s1["quant_type"] == "nf4"
    assert bnb.quantize_4bit(A)[1]["blocksize"] == 64  # blocksize=None: bitsandbytes' 64
    q1, _ = bnb.quantize_blockwise(A, None, None, None, 64)
    q2, _ = bnb.quantize_blockwise(A, blocksize=64)
    assert np.array_equal(q1, q2)
    for kw in (dict(absmax=np.ones(2, np.float32)), dict(out=np.zeros(50, np.uint8))):
        with pytest.raises(RefquantError, match="must be None"):
            bnb.quantize_4bit(A, **kw)
        with pytest.raises(RefquantError, match="must be None"):
            bnb.quantize_blockwise(A, **kw)
    with pytest.raises(RefquantError, match="quant_storage"):
        bnb.quantize_4bit(A, quant_storage="float32")
