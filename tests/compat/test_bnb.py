"""compat.bnb: layout, tie rules of both backends, double quantization, round trips."""

import math

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


def test_double_quantization_round_trip_is_within_half_a_code_of_the_statistics():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((50, 64)).astype(np.float32)
    p1, s1 = bnb.quantize_4bit(A, blocksize=64, quant_type="nf4")
    p2, s2 = bnb.quantize_4bit(A, blocksize=64, quant_type="nf4", compress_statistics=True)
    assert np.array_equal(p1, p2)
    assert s2["absmax"].dtype == np.uint8 and s2["state2"]["blocksize"] == 256
    # each absmax comes back within half the widest gap of the dynamic map times the
    # statistics' own absmax (plus a float32 rounding), and the weights scale with it
    am = s1["absmax"].astype(np.float64)
    back = bnb.dequantize_blockwise(s2["absmax"], s2["state2"]).astype(np.float64) + float(s2["offset"])
    gap = np.diff(s2["state2"]["code"].astype(np.float64)).max() / 2
    bound = gap * s2["state2"]["absmax"].astype(np.float64).max() + 4 * np.spacing(np.float32(am.max()))
    assert 0 < np.abs(back - am).max() <= bound
    # offset: the float32 sum divided by the count in float32 (torch's mean), exact here
    assert s2["offset"] == np.float32(np.float32(math.fsum(s1["absmax"].astype(np.float64))) / np.float32(50))


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
        bnb.quantize_4bit(np.array([np.nan], np.float32), backend="cuda")
    with pytest.raises(RefquantError, match="backend"):
        bnb.quantize_blockwise(np.ones(4, np.float32), backend="cuda")
    with pytest.raises(RefquantError, match="compress_statistics"):
        bnb.quantize_4bit(np.ones(4, np.float32), compress_statistics=True, backend="cuda")
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


# ---------------------------------------------------------------- libbitsandbytes_cpu's 8-bit kernel


def test_cpu_8bit_quantizes_zero_to_code_131_not_the_zero_at_127():
    # the lookup grid point of 0.0 is fma(0.5, 65535, 0.5) = 32768 -> 2 * 32768 / 65535 - 1 =
    # 1.5259e-5, above the midpoint (7.75e-6 + 2.125e-5) / 2 of codes 130 and 131
    code = bnb.create_dynamic_map()
    assert code[127] == 0 and code[131] == np.float32(2.1249998e-05)
    q, st = bnb.quantize_blockwise(np.float32([1.0, 0.0, -0.0, 0.5]), blocksize=64)
    assert q.tolist()[1:3] == [131, 131]
    qd, _ = bnb.quantize_blockwise(np.float32([1.0, 0.0, -0.0, 0.5]), blocksize=64, backend="default")
    assert qd.tolist()[1:3] == [127, 127]


def test_cpu_8bit_is_one_code_from_the_nearest_where_the_grid_point_crosses_a_midpoint():
    # grid index trunc(fma((x + 1) / 2, 65535, 0.5)) = 33556, whose point 2 * 33556 / 65535 - 1 =
    # 0.02406347 lies above the midpoint 0.0240625 of codes 163 and 164; x itself lies below it
    x = np.float32(0.0240595)
    code = bnb.create_dynamic_map().astype(np.float64)
    q, _ = bnb.quantize_blockwise(np.float32([1.0, x]), blocksize=64)
    qd, _ = bnb.quantize_blockwise(np.float32([1.0, x]), blocksize=64, backend="default")
    assert (int(qd[1]), int(q[1])) == (163, 164)
    assert abs(float(x) - code[163]) < abs(float(x) - code[164])  # the default backend is nearest


def test_cpu_8bit_all_zero_block_stores_absmax_0_and_codes_0_and_nan_is_skipped():
    A = np.float32([0, 0, -0.0, 0, 1.0, np.nan, -1.0, 0, np.nan, np.nan, np.nan])
    q, st = bnb.quantize_blockwise(A, blocksize=4)
    assert st["absmax"].tolist() == [0.0, 1.0, 0.0]  # NaN never enters absmax (std::max keeps m)
    assert q[:4].tolist() == [0, 0, 0, 0] and q[8:].tolist() == [0, 0, 0]
    assert q[5] == 0  # NaN * (1 / absmax) -> cvttss2si 0x80000000 -> index 0 -> code 0
    assert q[4] == 255 and q[6] == 0  # +-1 -> grid points 65535 and 0 -> the ends of the map
    back = bnb.dequantize_blockwise(q, st)
    assert back[0] == 0 and np.signbit(back[0])  # code 0 is -1.0: -1 * 0 = -0


def test_default_8bit_nan_makes_the_block_absmax_nan_and_its_codes_255():
    A = np.float32([0.5, np.nan, -1.0, 0.25, 2.0, np.inf, -3.0, 0.0])
    q, st = bnb.quantize_blockwise(A, blocksize=4, backend="default")
    assert np.isnan(st["absmax"][0]) and st["absmax"][1] == np.inf
    assert q[:4].tolist() == [255] * 4
    zero = int(np.flatnonzero(bnb.create_dynamic_map() == 0)[0])
    assert q[4:].tolist() == [zero, 255, zero, zero]  # x * (1 / inf) = +-0; inf * 0 = NaN


def test_empty_inputs_give_empty_codes_and_nan_offset():
    for backend in ("cpu", "default"):
        for shape in ((0,), (3, 0)):
            q, st = bnb.quantize_blockwise(np.zeros(shape, np.float32), blocksize=64, backend=backend,
                                           nested=True)
            assert q.shape == shape and q.dtype == np.uint8 and st["absmax"].size == 0
            assert np.isnan(st["offset"])  # torch's mean of nothing
            assert bnb.dequantize_blockwise(q, st).shape == shape
        p, st = bnb.quantize_4bit(np.zeros((0, 4), np.float32), backend=backend, compress_statistics=True)
        assert p.shape == (0, 1) and np.isnan(st["offset"])
        assert bnb.dequantize_4bit(p, st).shape == (0, 4)
