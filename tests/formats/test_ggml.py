"""ggml block formats: hand-derived blocks, layout, properties and bad input.

Expected bytes below are worked out by hand from ggml-quants.c / ggml-common.h
(the comment beside each says how), not taken from refquant's output.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refquant import RefquantError
from refquant.formats import get_format, list_formats
from refquant.formats.ggml import (
    GGML_BLOCK_TABLE,
    KVALUES_IQ4NL,
    KVALUES_MXFP4,
    ggml_block_formats,
)

FORMATS = ggml_block_formats()
ONE = [0x00, 0x3C]  # fp16 1.0, little endian


def _block(n, **vals):
    x = np.zeros(n, np.float32)
    for k, v in vals.items():
        x[int(k[1:])] = v
    return x[None, :]


# ----------------------------------------------------------------------------- registry and table
def test_every_ggml_format_is_registered_as_a_block_format():
    assert set(GGML_BLOCK_TABLE) <= set(list_formats("block"))
    assert "mxfp4" not in GGML_BLOCK_TABLE  # ggml's MXFP4 is "ggml_mxfp4"; "mxfp4" is OCP's


@pytest.mark.parametrize(
    "name, block, size, bits",
    [
        ("q4_0", 32, 18, 4.5), ("q4_1", 32, 20, 5.0), ("q5_0", 32, 22, 5.5), ("q5_1", 32, 24, 6.0),
        ("q8_0", 32, 34, 8.5), ("q8_1", 32, 36, 9.0), ("q2_k", 256, 84, 2.625), ("q3_k", 256, 110, 3.4375),
        ("q4_k", 256, 144, 4.5), ("q5_k", 256, 176, 5.5), ("q6_k", 256, 210, 6.5625), ("q8_k", 256, 292, 9.125),
        ("tq1_0", 256, 54, 1.6875), ("tq2_0", 256, 66, 2.0625), ("ggml_mxfp4", 32, 17, 4.25),
        ("iq4_nl", 32, 18, 4.5), ("iq4_xs", 256, 136, 4.25),
    ],
)  # fmt: skip
def test_block_and_type_sizes_match_ggml_common_h(name, block, size, bits):
    fmt = get_format(name)
    assert (fmt.block_size, fmt.type_size, fmt.bits, fmt.family) == (block, size, bits, "block")


# ----------------------------------------------------------------------------- hand-worked quantize
def test_q8_0_block_rounds_half_away_from_zero_with_unit_scale():
    # amax = 127 -> d = 1, id = 1; roundf: 0.5 -> 1, 1.5 -> 2, -0.5 -> -1, -2.5 -> -3
    x = _block(32, i0=-127, i1=0.5, i2=1.5, i3=-0.5, i4=-2.5, i5=126.49)
    expected = ONE + [0x81, 0x01, 0x02, 0xFF, 0xFD, 0x7E] + [0] * 26
    raw = FORMATS["q8_0"].quantize_blocks(x)
    assert raw[0].tolist() == expected
    assert FORMATS["q8_0"].dequantize_blocks(raw)[0, :6].tolist() == [-127, 1, 2, -1, -3, 126]


def test_q8_1_stores_fp16_of_code_sum_times_d():
    x = _block(32, i0=-127, i1=0.5, i2=1.5, i3=-0.5, i4=-2.5, i5=126.49)
    raw = FORMATS["q8_1"].quantize_blocks(x)[0]
    # codes sum to -127 + 1 + 2 - 1 - 3 + 126 = -2 -> s = fp16(-2.0) = 0xC000
    assert raw[:4].tolist() == ONE + [0x00, 0xC0]
    assert raw[4:10].tolist() == [0x81, 0x01, 0x02, 0xFF, 0xFD, 0x7E]


def test_q4_0_scale_from_first_signed_max_and_positive_twin_saturates_to_7():
    # max = -8 (first of largest |x|), d = -8 / -8 = 1; q = min(15, trunc(x + 8.5))
    # x=-8 -> 0, x=8 -> 16 -> 15 (dequantizes to 7), 0.5 -> 9, -0.5 -> 8 (half up), 3.49 -> 11,
    # x16 = 7.5 -> 16 -> 15, x17 = -7.5 -> 1, zeros -> 8
    x = _block(32, i0=-8, i1=8, i2=0.5, i3=-0.5, i4=3.49, i16=7.5, i17=-7.5)
    q = [0, 15, 9, 8, 11] + [8] * 11 + [15, 1] + [8] * 14
    expected = ONE + [lo | (hi << 4) for lo, hi in zip(q[:16], q[16:], strict=True)]
    raw = FORMATS["q4_0"].quantize_blocks(x)
    assert raw[0].tolist() == expected
    deq = FORMATS["q4_0"].dequantize_blocks(raw)[0]
    assert deq[[0, 1, 2, 3, 4, 16, 17]].tolist() == [-8, 7, 1, 0, 3, 7, -7]


def test_q4_1_rounds_half_up_from_the_minimum():
    # min 0, max 15 -> d = 1, m = 0; q = trunc(x + 0.5): 0.5 -> 1, 1.5 -> 2, 7.49 -> 7, 3 -> 3
    x = np.full((1, 32), 3.0, np.float32)
    x[0, :5] = [0, 15, 0.5, 1.5, 7.49]
    q = [0, 15, 1, 2, 7] + [3] * 27
    expected = ONE + [0, 0] + [lo | (hi << 4) for lo, hi in zip(q[:16], q[16:], strict=True)]
    assert FORMATS["q4_1"].quantize_blocks(x)[0].tolist() == expected


def test_q5_0_fifth_bits_go_to_qh_little_endian():
    # max = -16 -> d = 1; q = min(31, trunc(x + 16.5)): -16 -> 0, 15.5 -> 32 -> 31, 0.5 -> 17,
    # x17 = 3 -> 19, zeros -> 16; qh bit j = bit 4 of q[j] -> 0xFFFFFFFE
    x = _block(32, i0=-16, i1=15.5, i2=0.5, i17=3)
    expected = ONE + [0xFE, 0xFF, 0xFF, 0xFF] + [0x00, 0x3F, 0x01] + [0x00] * 13
    raw = FORMATS["q5_0"].quantize_blocks(x)
    assert raw[0].tolist() == expected
    assert FORMATS["q5_0"].dequantize_blocks(raw)[0, [0, 1, 2, 17]].tolist() == [-16, 15, 1, 3]


def test_ggml_mxfp4_ties_go_to_the_first_index_not_to_even():
    # amax = 6 -> e = floor(log2 6) - 2 + 127 = 127, d = 2^-1; grid k*d = e2m1 values.
    # 1.25 -> 1 (not 1.5), 5 -> 4, -0.25 -> +0 (index 0), 1.75 -> 1.5 (RNE would give 2),
    # 0.75 -> 0.5 (RNE: 1), 3.5 -> 3 (RNE: 4), -1.75 -> -1.5
    x = _block(32, i0=6, i1=1.25, i2=5, i3=-0.25, i4=1.75, i5=0.75, i6=3.5, i7=-1.75)
    raw = FORMATS["ggml_mxfp4"].quantize_blocks(x)
    assert raw[0].tolist() == [0x7F, 7, 2, 6, 0, 3, 1, 5, 0x0B] + [0] * 8
    deq = FORMATS["ggml_mxfp4"].dequantize_blocks(raw)[0]
    assert deq[:8].tolist() == [6, 1, 4, 0, 1.5, 0.5, 3, -1.5]
    assert not np.signbit(deq[3])


def test_tq2_0_rounds_half_away_and_packs_four_per_byte():
    # amax 2 -> d = 2; codes lroundf(x/2) + 1: 2 -> 2, 1 -> 2 (0.5 away), -1 -> 0, 0.99 -> 1, -2 -> 0
    x = _block(256, i0=2, i1=1, i2=-1, i3=0.99, i32=-2)
    raw = FORMATS["tq2_0"].quantize_blocks(x)[0]
    assert raw[:4].tolist() == [0x52, 0x56, 0x54, 0x55] and set(raw[4:64].tolist()) == {0x55}
    assert raw[64:].tolist() == [0x00, 0x40]
    assert FORMATS["tq2_0"].dequantize_blocks(raw[None])[0, [0, 1, 2, 3, 32]].tolist() == [
        2,
        2,
        -2,
        0,
        -2,
    ]


def test_tq1_0_base3_bytes_are_ceil_of_q_times_256_over_243():
    # qs[0] holds x[0], x[32], ..., x[128]: trits 2,0,1,1,1 -> 175 -> ceil(175*256/243) = 185
    # other qs: trits 1,1,1,1,1 -> 121 -> 128; qh[0]: x240=-1 -> trits 0,1,1,1 -> 13*3 = 39 -> 42;
    # qh[1]: x241 = 0.5 -> 2,1,1,1 -> 67*3 = 201 -> 212; qh[2], qh[3]: 40*3 = 120 -> 127
    x = _block(256, i0=1, i32=-1, i240=-1, i241=0.5)
    raw = FORMATS["tq1_0"].quantize_blocks(x)[0]
    assert raw[0] == 185 and set(raw[1:48].tolist()) == {128}
    assert raw[48:].tolist() == [42, 212, 127, 127] + ONE
    deq = FORMATS["tq1_0"].dequantize_blocks(raw[None])[0]
    assert deq[[0, 32, 240, 241, 1]].tolist() == [1, -1, -1, 1, 0]


def test_q8_k_uses_nearest_int_half_to_even_and_float32_scale():
    # max = -127 -> iscale = 1: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -3.5 -> -4; d = 1.0f; bsums[0] = -127
    x = _block(256, i0=-127, i1=0.5, i2=1.5, i3=2.5, i4=-3.5)
    raw = FORMATS["q8_k"].quantize_blocks(x)[0]
    assert raw[:4].tolist() == [0, 0, 0x80, 0x3F]
    assert raw[4:9].view(np.int8).tolist() == [-127, 0, 2, 2, -4]
    assert raw[260:264].tolist() == [0x81, 0xFF, 0, 0]


# ----------------------------------------------------------------------------- hand-built K-quant bytes
def test_q4_k_dequantize_reads_six_bit_scales_and_mins():
    raw = np.zeros((1, 144), np.uint8)
    raw[0, 0:4] = ONE + [0x00, 0x38]  # d = 1, dmin = 0.5
    # sub-block 0: sc 2, m 4 (bytes 0, 4); sub-block 5: sc 33, m 17 -> byte 9 = 0x11 low nibbles,
    # top two bits: byte 1 |= (33 >> 4) << 6, byte 5 |= (17 >> 4) << 6
    raw[0, 4 + 0], raw[0, 4 + 4], raw[0, 4 + 1], raw[0, 4 + 5], raw[0, 4 + 9] = (
        2,
        4,
        0x80,
        0x40,
        0x11,
    )
    raw[0, 16 + 0] = 0x03  # element 0: code 3
    raw[0, 16 + 64] = 0x70  # element 160 (chunk 2, high nibble): code 7
    y = FORMATS["q4_k"].dequantize_blocks(raw)[0]
    assert y[0] == 1 * 2 * 3 - 0.5 * 4 and np.all(y[1:32] == -2)
    assert y[160] == 33 * 7 - 0.5 * 17 and np.all(y[161:192] == -8.5)
    assert np.all(y[32:160] == 0) and np.all(y[192:] == 0)


def test_q6_k_dequantize_splits_low_and_high_bits():
    raw = np.zeros((1, 210), np.uint8)
    raw[0, 208:210] = [0x00, 0x34]  # d = 0.25
    raw[0, 192:208] = np.array([-3] + [0] * 14 + [100], np.int8).view(np.uint8)
    raw[0, 0], raw[0, 128] = 0x05, 0x02  # element 0: raw 37 -> q = 5
    raw[0, 127], raw[0, 128 + 63] = 0xF0, 0xC0  # element 255: raw 63 -> q = 31
    y = FORMATS["q6_k"].dequantize_blocks(raw)[0]
    assert y[0] == 0.25 * -3 * 5 and np.all(y[1:16] == 0.25 * -3 * -32)
    assert y[255] == 0.25 * 100 * 31 and np.all(y[240:255] == 0.25 * 100 * -32)
    assert np.all(y[16:240] == 0)


def test_q3_k_dequantize_hmask_and_offset_scales():
    raw = np.zeros((1, 110), np.uint8)
    raw[0, 108:110] = [0x00, 0x40]  # d = 2
    # six-bit scales s_0 = 33, s_9 = 0, all others 32 (i.e. 1, -32, 0 after the -32 offset)
    raw[0, 96] = 0x01
    raw[0, 96 + 8 : 96 + 12] = [0xAA, 0x8A, 0xAA, 0xAA]
    raw[0, 32 + 0], raw[0, 0] = 0x03, 0x01  # element 0: low 3, high bit set -> q = 3
    raw[0, 32 + 48], raw[0, 16] = (
        0x01,
        0x10,
    )  # element 144: low 1, high bit (bit 4 of hmask[16]) -> q = 1
    y = FORMATS["q3_k"].dequantize_blocks(raw)[0]
    assert y[0] == 6 and np.all(y[1:16] == -8)
    assert y[144] == -64 and np.all(y[145:160] == 256)
    assert np.all(y[16:144] == 0) and np.all(y[160:] == 0)


def test_q2_k_dequantize_scale_and_min_nibbles():
    raw = np.zeros((1, 84), np.uint8)
    raw[0, 80:84] = ONE + [0x00, 0x34]  # d = 1, dmin = 0.25
    raw[0, 0], raw[0, 15] = 0x23, 0xF1
    raw[0, 16 + 0] = 0x02  # element 0: code 2
    raw[0, 16 + 63] = 0xC0  # element 255: code 3 (bits 6-7 of byte 32 + 31 of chunk 1)
    y = FORMATS["q2_k"].dequantize_blocks(raw)[0]
    assert y[0] == 5.5 and np.all(y[1:16] == -0.5)
    assert y[255] == -0.75 and np.all(y[240:255] == -3.75)
    assert np.all(y[16:240] == 0)


def _quantize(fmt, x):
    """quantize_blocks; with unit quant_weights for the types ggml quantizes only with an imatrix."""
    if getattr(fmt, "requires_imatrix", False):
        return fmt.quantize_blocks_weighted(x, np.ones(fmt.block_size, np.float32))
    return fmt.quantize_blocks(x)


@pytest.mark.parametrize("name", list(GGML_BLOCK_TABLE))
def test_all_zero_block_dequantizes_to_zero(name):
    fmt = FORMATS[name]
    if not getattr(fmt, "has_quantize", True):
        pytest.skip(f"{name}: refquant has no quantizer for it")
    raw = _quantize(fmt, np.zeros((2, fmt.block_size), np.float32))
    assert np.array_equal(raw[0], raw[1])
    if fmt.has_dequantize:
        assert np.all(fmt.dequantize_blocks(raw) == 0)


# ----------------------------------------------------------------------------- properties
def _rows(bs):
    finite = st.floats(-1e3, 1e3, width=32, allow_subnormal=False)
    return hnp.arrays(np.float32, st.tuples(st.integers(1, 3), st.just(bs)), elements=finite)


_NO_OFFSET = ["q4_0", "q5_0", "q8_0", "q3_k", "q6_k", "q8_k", "tq1_0", "tq2_0", "ggml_mxfp4"]


@pytest.mark.parametrize("name", _NO_OFFSET)
@settings(max_examples=25)
@given(data=st.data(), k=st.integers(0, 3))
def test_scaling_input_by_power_of_two_scales_output_exactly(name, data, k):
    # every float op in these quantizers is exact under x -> x * 2^k while no value overflows
    # and no fp16 scale turns subnormal, so the codes stay and the dequantized values scale by 2^k.
    # (Formats with a min are left out: a fitted min near 0 is subnormal in fp16. |x| stays
    # <= 4096: make_q3_quants compares slx*slx*suml2 ~ x^8, which overflows float32 near 3e4.)
    fmt = FORMATS[name]
    mag = st.floats(0.0078125, 512.0, width=32)
    el = st.one_of(st.just(0.0), mag, mag.map(lambda v: -v))
    x = data.draw(hnp.arrays(np.float32, (2, fmt.block_size), elements=el))
    x[:, 0] = np.where(np.abs(x).max(axis=1) < 1, 1.0, x[:, 0])
    y1 = fmt.dequantize_blocks(fmt.quantize_blocks(x))
    y2 = fmt.dequantize_blocks(fmt.quantize_blocks(x * np.float32(2.0**k)))
    np.testing.assert_array_equal(y2, y1 * np.float32(2.0**k))


@pytest.mark.parametrize("name", ["q8_0", "q8_k", "tq1_0", "tq2_0", "ggml_mxfp4"])
@settings(max_examples=25)
@given(data=st.data())
def test_symmetric_formats_commute_with_negation(name, data):
    fmt = FORMATS[name]
    x = data.draw(_rows(fmt.block_size))
    y = fmt.dequantize_blocks(fmt.quantize_blocks(x))
    yn = fmt.dequantize_blocks(fmt.quantize_blocks(-x))
    np.testing.assert_array_equal(yn, -y)


@settings(max_examples=50)
@given(hnp.arrays(np.int32, (1, 32), elements=st.integers(-96, 96)))
def test_ggml_mxfp4_picks_nearest_code_and_smaller_magnitude_on_ties(ints):
    x = ints.astype(np.float32) / 16  # multiples of 2^-4: every |k*d - x| is exact in float32
    fmt = FORMATS["ggml_mxfp4"]
    raw = fmt.quantize_blocks(x)
    y = fmt.dequantize_blocks(raw)[0].astype(np.float64)
    amax = np.abs(x).max()
    d = 2.0 ** (np.floor(np.log2(amax)) - 3) if amax > 0 else 2.0**-128  # 2^(e-128), e = floor+125
    grid = np.unique(KVALUES_MXFP4.astype(np.float64) * d)
    for xi, yi in zip(x[0].astype(np.float64), y, strict=True):
        err = np.abs(grid - xi)
        best = grid[err == err.min()]
        assert yi == best[np.argmin(np.abs(best))]


@pytest.mark.parametrize("name", ["q4_0", "q5_0", "q8_0"])
@settings(max_examples=25)
@given(data=st.data())
def test_symmetric_legacy_codes_dequantize_onto_the_fp16_scale_grid(name, data):
    fmt = FORMATS[name]
    x = data.draw(_rows(32))
    raw = fmt.quantize_blocks(x)
    d = raw[:, 0:2].copy().view(np.float16).astype(np.float32)
    y = fmt.dequantize_blocks(raw)
    nz = d[:, 0] != 0
    steps = y[nz] / d[nz]
    assert np.array_equal(steps, np.round(steps))
    lo, hi = {"q4_0": (-8, 7), "q5_0": (-16, 15), "q8_0": (-127, 127)}[name]
    assert steps.size == 0 or (steps.min() >= lo and steps.max() <= hi)


@pytest.mark.parametrize("name", list(GGML_BLOCK_TABLE))
def test_quantize_does_not_modify_its_input(name):
    fmt = FORMATS[name]
    if not getattr(fmt, "has_quantize", True):
        pytest.skip(f"{name}: refquant has no quantizer for it")
    x = np.random.default_rng(0).standard_normal((2, fmt.block_size)).astype(np.float32)
    before = x.copy()
    _quantize(fmt, x)
    assert np.array_equal(x, before)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_refused(bad):
    x = np.zeros((1, 32), np.float32)
    x[0, 5] = bad
    with pytest.raises(RefquantError, match=r"non-finite value .* index \(0, 5\)"):
        FORMATS["q4_0"].quantize_blocks(x)


def test_wrong_block_shape_is_refused():
    with pytest.raises(
        RefquantError, match=r"blocks must be a 2-D array of shape \(n, 256\) for q4_k"
    ):
        FORMATS["q4_k"].quantize_blocks(np.zeros((2, 32), np.float32))
    with pytest.raises(RefquantError, match=r"raw must be a 2-D array of shape \(n, 18\) for q4_0"):
        FORMATS["q4_0"].dequantize_blocks(np.zeros((2, 17), np.uint8))
    with pytest.raises(RefquantError, match="raw must be a uint8 array"):
        FORMATS["q4_0"].dequantize_blocks(np.zeros((2, 18), np.int16))


@pytest.mark.parametrize("name", ["q4_0", "q4_k"])
def test_quantizing_in_chunks_of_blocks_gives_the_same_bytes(name, monkeypatch):
    import refquant.formats.ggml as ggml_module

    fmt = FORMATS[name]
    x = np.random.default_rng(4).standard_normal((10, fmt.block_size)).astype(np.float32)
    whole = fmt.quantize_blocks(x)
    monkeypatch.setattr(ggml_module, "_CHUNK", 3)
    assert np.array_equal(fmt.quantize_blocks(x), whole)
    assert np.array_equal(whole[4:5], fmt.quantize_blocks(x[4:5]))


def test_ggml_mxfp4_exponent_follows_float32_log2f_rounding():
    # amax = (2 - 2^-23) * 2^20: log2 = 21 - 1.7e-7 rounds to 21.0f (spacing 1.9e-6 there), so
    # e = 21 - 2 + 127 = 146, one more than floor(log2 amax) would give; at 2^0 the same mantissa
    # gives log2f = 0.99999988 (representable), floor 0, e = 125
    fmt = FORMATS["ggml_mxfp4"]
    for k, e in ((20, 146), (0, 125)):
        x = np.zeros((1, 32), np.float32)
        x[0, 0] = np.ldexp(np.float32(2 - 2**-23), k)
        assert fmt.quantize_blocks(x)[0, 0] == e


def test_q8_0_subnormal_scale_gives_zero_codes_as_x86_does():
    # amax = 1e-39 -> d = amax/127 ~ 7.9e-42, 1/d = +Inf, x*id = +-Inf or NaN (0*Inf); C's cast of
    # those to int8_t is undefined, x86-64's cvttss2si gives INT32_MIN whose low byte is 0
    x = _block(32, i0=1e-39, i1=-5e-40)
    assert FORMATS["q8_0"].quantize_blocks(x)[0].tolist() == [0] * 34


def test_ggml_mxfp4_equals_ocp_mxfp4_except_where_ocp_rounds_a_tie_up_to_even():
    from refquant.formats.mx import dequantize_mx, quantize_mx

    fmt = FORMATS["ggml_mxfp4"]
    # same scale rule (floor(log2 amax) - 2) and nearest e2m1 element away from ties
    x = np.random.default_rng(5).standard_normal((200, 32)).astype(np.float32)
    codes, scales = quantize_mx(x, "mxfp4")
    raw = fmt.quantize_blocks(x)
    assert np.array_equal(raw[:, 0], scales[:, 0])
    assert np.array_equal(fmt.dequantize_blocks(raw), dequantize_mx(codes, scales, "mxfp4"))
    # ties: OCP (half to even) 1.75 -> 2, 0.75 -> 1, 3.5 -> 4; ggml (first index) -> 1.5, 0.5, 3
    t = _block(32, i0=6, i1=1.75, i2=0.75, i3=3.5)
    codes, scales = quantize_mx(t, "mxfp4")
    assert dequantize_mx(codes, scales, "mxfp4")[0, 1:4].tolist() == [2, 1, 4]
    assert fmt.dequantize_blocks(fmt.quantize_blocks(t))[0, 1:4].tolist() == [1.5, 0.5, 3]


# ----------------------------------------------------------------------------- IQ4_NL / IQ4_XS
def test_kvalues_iq4nl_are_ggml_common_h():
    # ggml-common.h: GGML_TABLE_BEGIN(int8_t, kvalues_iq4nl, 16)
    assert KVALUES_IQ4NL.tolist() == [
        -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
    ]  # fmt: skip
    assert KVALUES_IQ4NL.dtype == np.int8


def test_iq4_nl_block_on_its_own_levels_is_stored_exactly():
    # x[j] = 0.25 * kvalues[j % 16]: max = x[0] = -31.75, d0 = max / -127 = 0.25, so x/d0 is
    # exactly level j % 16; then d = sum(w q x) / sum(w q^2) = 0.25 exactly (x = 0.25 q, and a
    # power of two scales every rounded term alike). fp16 0.25 = 0x3400; byte j holds the codes
    # of x[j] (low) and x[j+16] (high): j | j << 4
    x = (np.float32(0.25) * KVALUES_IQ4NL[np.arange(32) % 16].astype(np.float32))[None, :]
    fmt = FORMATS["iq4_nl"]
    for raw in (fmt.quantize_blocks(x), fmt.quantize_blocks_weighted(x)):
        assert raw[0].tolist() == [0x00, 0x34] + [j | j << 4 for j in range(16)]
        np.testing.assert_array_equal(fmt.dequantize_blocks(raw), x)


def test_iq4_nl_tie_between_two_levels_goes_to_the_upper_one():
    # best_index_int8: x - val[mu-1] < val[mu] - x ? mu-1 : mu. With d0 = 1 (max = -127),
    # -115.5 is the midpoint of -127 and -104, -4.5 of -10 and 1: both go up (codes 1 and 8);
    # -115.51 goes down (code 0). The ref keeps these first-pass codes.
    x = _block(32, i0=-127, i1=-115.5, i2=-4.5, i3=-115.51)
    raw = FORMATS["iq4_nl"].quantize_blocks(x)
    codes = [raw[0, 2 + j] & 0xF for j in range(4)]
    assert codes == [0, 1, 8, 0]


def test_iq4_xs_dequantizes_six_bit_scales_split_over_scales_l_and_scales_h():
    # d = 1.0; sub-block 0: scales_l[0] low nibble 1, scales_h bits 0-1 = 2 -> ls = 1 | 2 << 4 = 33,
    # dl = 1 * (33 - 32) = 1; sub-block 1: high nibble 0, bits 2-3 = 0 -> ls = 0, dl = -32;
    # sub-block 7: scales_l[3] high nibble 0xF, scales_h bits 14-15 = 3 -> ls = 63, dl = 31.
    # Codes: 0x10 in every qs byte -> low nibble 0 (-127) for x[j], high 1 (-104) for x[j+16]
    raw = np.zeros((1, 136), np.uint8)
    raw[0, 0:2] = ONE
    raw[0, 2:4] = np.array([2 | 3 << 14], "<u2").view(np.uint8)
    raw[0, 4] = 0x01
    raw[0, 7] = 0xF0
    raw[0, 8:] = 0x10
    y = FORMATS["iq4_xs"].dequantize_blocks(raw)[0].reshape(8, 32)
    assert y[0, :16].tolist() == [-127] * 16 and y[0, 16:].tolist() == [-104] * 16
    assert y[1, :16].tolist() == [-32 * -127] * 16 and y[1, 16:].tolist() == [-32 * -104] * 16
    assert y[7, 0] == 31 * -127 and y[7, 31] == 31 * -104


def test_iq4_xs_super_block_of_zeros_stores_a_negative_zero_scale():
    # max_scale = 0 -> d = -0/32 = -0.0 (fp16 0x8000), every 6-bit scale 0 + 32 = 32 (low nibbles
    # 0, high bits 2 = 0b10 in each of the 8 pairs of scales_h), and codes of 0 (level 1 = code 8)
    raw = FORMATS["iq4_xs"].quantize_blocks(np.zeros((1, 256), np.float32))[0]
    assert raw[:2].tolist() == [0x00, 0x80]
    assert raw[2:4].view("<u2")[0] == 0xAAAA and raw[4:8].tolist() == [0] * 4
    assert raw[8:].tolist() == [0x88] * 128


def test_iq4_imatrix_changes_the_weighting_and_is_validated():
    fmt = FORMATS["iq4_xs"]
    x = np.random.default_rng(6).standard_normal((2, 256)).astype(np.float32)
    w = np.ones(256, np.float32)
    w[:128] = 100.0
    plain, weighted = fmt.quantize_blocks_weighted(x), fmt.quantize_blocks_weighted(x, w)
    assert np.array_equal(plain, fmt.quantize_blocks(x)) and not np.array_equal(plain, weighted)
    assert np.array_equal(weighted, fmt.quantize_blocks_weighted(x, np.tile(w, (2, 1))))
    with pytest.raises(RefquantError, match=r"quant_weights must have shape \(256,\) or \(2, 256\)"):
        fmt.quantize_blocks_weighted(x, np.ones(32))
    with pytest.raises(RefquantError, match="finite and >= 0"):
        fmt.quantize_blocks_weighted(x, -w)


@pytest.mark.parametrize("name", ["iq4_nl", "iq4_xs"])
def test_iq4_weighted_quantize_in_chunks_slices_the_weights(name, monkeypatch):
    import refquant.formats.ggml as ggml_module

    fmt = FORMATS[name]
    rng = np.random.default_rng(7)
    x = rng.standard_normal((10, fmt.block_size)).astype(np.float32)
    w = rng.uniform(0, 2, x.shape).astype(np.float32)
    whole = fmt.quantize_blocks_weighted(x, w)
    monkeypatch.setattr(ggml_module, "_CHUNK", 3)
    assert np.array_equal(fmt.quantize_blocks_weighted(x, w), whole)
    assert np.array_equal(whole[7:8], fmt.quantize_blocks_weighted(x[7:8], w[7]))
