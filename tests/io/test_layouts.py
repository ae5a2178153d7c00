"""Quantized checkpoint layouts: write -> read -> dequantize, hand-built examples, bad input."""

import json

import ml_dtypes
import numpy as np
import pytest
from helpers import import_peer

import refquant.io as rio
from refquant import RefquantError
from refquant.io.layouts import pack_bitstream, unpack_bitstream
from refquant.io.layouts.ctensors import ct_tensors
from refquant.io.layouts.fp8 import fp8_block_tensors, fp8_tensors
from refquant.io.layouts.gptq import AWQ_ORDER, awq_tensors, gptq_tensors
from refquant.io.layouts.mlx import mlx_tensors

RNG = np.random.default_rng(12)
BASE = "model.layers.0.mlp.up_proj"


def _bit_reference(words, bits, count):
    """Code i = bits [i*b, (i+1)*b) of the row read as one little-endian integer."""
    out = np.zeros((*words.shape[:-1], count), np.uint8)
    for idx in np.ndindex(*words.shape[:-1]):
        big = 0
        for j, w in enumerate(words[idx].astype(np.uint64)):
            big |= int(w) << (32 * j)
        for i in range(count):
            out[idx + (i,)] = (big >> (i * bits)) & ((1 << bits) - 1)
    return out


@pytest.mark.parametrize("bits", range(1, 9))
def test_bitstream_pack_matches_a_python_integer_reading(bits):
    codes = RNG.integers(0, 1 << bits, size=(3, 77), dtype=np.uint8)
    words = pack_bitstream(codes, bits)
    assert words.shape == (3, -(-77 * bits // 32))
    np.testing.assert_array_equal(_bit_reference(words, bits, 77), codes)
    np.testing.assert_array_equal(unpack_bitstream(words, bits, 77), codes)


def _open(folder):
    return rio.open(folder)


# ---------------------------------------------------------------------------
# GPTQ
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2"])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_round_trip_dequantizes_scale_times_code_minus_zero_in_float16(tmp_path, bits, fmt,
                                                                              act_order):
    n, k, gs = 64, 128, 32
    G = k // gs
    q = RNG.integers(0, 1 << bits, size=(n, k))
    lo = 1 if fmt == "gptq" else 0  # v1 cannot store zero point 0
    z = RNG.integers(lo, 1 << bits, size=(n, G))
    s = (RNG.random((n, G)) * 0.1 + 1e-3).astype(np.float16)
    g_idx = RNG.permutation(np.arange(k) // gs) if act_order else None
    t = gptq_tensors(BASE, q, s, z, bits, g_idx=g_idx, v1=fmt == "gptq")
    t["model.norm.weight"] = np.ones(n, np.float32)
    rio.save(t, tmp_path / "m", layout=fmt, bits=bits, group_size=gs, desc_act=act_order)
    g = g_idx if act_order else np.arange(k) // gs
    want = (s[:, g].astype(np.float32) * (q - z[:, g])).astype(np.float16).astype(np.float32)
    with _open(tmp_path / "m") as ck:
        assert ck.logical_names() == [BASE + ".weight", "model.norm.weight"]
        sc = ck.scheme(BASE + ".weight")
        assert (sc.format, sc.bits, sc.group_size, sc.act_order) == (fmt, bits, gs, act_order)
        got = ck.dequantize(BASE + ".weight")
        assert got.dtype == np.float32 and got.shape == (n, k)
        np.testing.assert_array_equal(got, want)
        assert ck[BASE + ".qweight"].dtype == np.int32  # the raw parts stay readable
        assert ck.scheme("model.norm.weight") is None


def test_gptq_v1_stores_zero_minus_one():
    q = np.zeros((32, 32), int)
    t = gptq_tensors("l", q, np.ones((32, 1), np.float16), np.full((32, 1), 8), 4, v1=True)
    assert t["l.qzeros"].view(np.uint32)[0, 0] == 0x77777777
    t2 = gptq_tensors("l", q, np.ones((32, 1), np.float16), np.full((32, 1), 8), 4, v1=False)
    assert t2["l.qzeros"].view(np.uint32)[0, 0] == 0x88888888


def test_gptq_hand_built_qweight_word_holds_eight_codes_low_nibble_first(tmp_path):
    # one 4-bit layer, in=8, out=32: qweight word [0, n] holds codes of rows 0..7
    qweight = np.zeros((1, 32), np.uint32)
    qweight[0, 0] = 0x76543210
    qzeros = np.full((1, 4), 0x77777777, np.uint32)  # v1: zero 8 stored as 7
    scales = np.full((1, 32), 0.5, np.float16)
    t = {"l.qweight": qweight.view(np.int32), "l.qzeros": qzeros.view(np.int32), "l.scales": scales,
         "l.g_idx": np.zeros(8, np.int32)}
    rio.save(t, tmp_path / "m", layout="gptq", bits=4, group_size=-1)
    with _open(tmp_path / "m") as ck:
        w = ck.dequantize("l.weight")
    np.testing.assert_array_equal(w[0], 0.5 * (np.arange(8) - 8))
    np.testing.assert_array_equal(w[1], 0.5 * -8)


def test_gptq_v1_zero_code_all_ones_is_refused(tmp_path):
    q = np.zeros((32, 32), int)
    t = gptq_tensors("l", q, np.ones((32, 1), np.float16), np.full((32, 1), 8), 4, v1=False)
    t["l.qzeros"] = np.full_like(t["l.qzeros"], -1)  # every stored zero code 15
    rio.save(t, tmp_path / "m", layout="gptq_v2", bits=4, group_size=-1)
    cfg = json.loads((tmp_path / "m/config.json").read_text())
    cfg["quantization_config"]["checkpoint_format"] = "gptq"
    (tmp_path / "m/config.json").write_text(json.dumps(cfg))
    with _open(tmp_path / "m") as ck, pytest.raises(RefquantError, match="l.qzeros.*no agreed"):
        ck.dequantize("l.weight")


# ---------------------------------------------------------------------------
# AWQ
# ---------------------------------------------------------------------------

def test_awq_round_trip_and_interleaved_order(tmp_path):
    n, k, gs = 64, 256, 128
    q = RNG.integers(0, 16, size=(n, k))
    z = RNG.integers(0, 16, size=(n, k // gs))
    s = (RNG.random((n, k // gs)) * 0.05).astype(np.float16)
    t = awq_tensors(BASE, q, s, z)
    # nibble i of word w of input row r is output column 8*w + AWQ_ORDER[i]
    w0 = int(t[BASE + ".qweight"].view(np.uint32)[5, 2])
    assert [(w0 >> (4 * i)) & 15 for i in range(8)] == [q[16 + AWQ_ORDER[i], 5] for i in range(8)]
    rio.save(t, tmp_path / "m", layout="awq", group_size=gs)
    g = np.arange(k) // gs
    want = ((q - z[:, g]) * s[:, g].astype(np.float32)).astype(np.float16).astype(np.float32)
    with _open(tmp_path / "m") as ck:
        assert ck.scheme(BASE + ".weight").format == "awq"
        np.testing.assert_array_equal(ck.dequantize(BASE + ".weight"), want)


def test_awq_and_gptq_detected_from_tensors_without_config(tmp_path):
    t = awq_tensors("a", RNG.integers(0, 16, (32, 64)), np.ones((32, 1), np.float16),
                    np.full((32, 1), 3))
    t.update(gptq_tensors("g", RNG.integers(0, 16, (32, 64)), np.ones((32, 2), np.float16),
                          np.full((32, 2), 3), 4))
    rio.save({k: v for k, v in t.items() if k.startswith("a.")}, tmp_path / "a.safetensors")
    rio.save({k: v for k, v in t.items() if k.startswith("g.")}, tmp_path / "g.safetensors")
    with rio.open(tmp_path / "a.safetensors") as ck:
        assert ck.scheme("a.weight").format == "awq" and ck.scheme("a.weight").group_size == 64
    with rio.open(tmp_path / "g.safetensors") as ck:
        s = ck.scheme("g.weight")
        assert (s.format, s.bits, s.group_size) == ("gptq", 4, 32)


# ---------------------------------------------------------------------------
# FP8
# ---------------------------------------------------------------------------

def test_fp8_per_tensor_round_trip(tmp_path):
    w = RNG.standard_normal((48, 80)).astype(np.float32)
    t = fp8_tensors(BASE, w)
    rio.save(t, tmp_path / "m", layout="fp8")
    want = t[BASE + ".weight"].astype(np.float32) * t[BASE + ".weight_scale"]
    with _open(tmp_path / "m") as ck:
        got = ck.dequantize(BASE + ".weight")
        assert ck.scheme(BASE + ".weight").strategy == "tensor"
    np.testing.assert_array_equal(got, want)
    assert np.max(np.abs(got - w)) <= np.max(np.abs(w)) / 16  # e4m3: 3 mantissa bits


def test_fp8_block_partial_tiles_use_their_own_scale(tmp_path):
    w = RNG.standard_normal((200, 300)).astype(np.float32)
    w[150:, 260:] *= 100  # the last (partial) tile has its own amax
    t = fp8_block_tensors(BASE, w)
    s = t[BASE + ".weight_scale_inv"]
    assert s.shape == (2, 3)
    rio.save(t, tmp_path / "m", layout="fp8-block")
    with _open(tmp_path / "m") as ck:
        got = ck.dequantize(BASE + ".weight")
        assert ck.scheme(BASE + ".weight").block == (128, 128)
    wq = t[BASE + ".weight"].astype(np.float32)
    assert got[199, 299] == wq[199, 299] * s[1, 2]
    assert got[127, 128] == wq[127, 128] * s[0, 1]
    assert got[128, 127] == wq[128, 127] * s[1, 0]


def test_fp8_block_detected_without_config(tmp_path):
    t = fp8_block_tensors("x", RNG.standard_normal((130, 64)).astype(np.float32))
    rio.save(t, tmp_path / "x.safetensors")
    with rio.open(tmp_path / "x.safetensors") as ck:
        assert ck.scheme("x.weight").format == "fp8-block"


# ---------------------------------------------------------------------------
# compressed-tensors
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("strategy", ["group", "channel", "tensor"])
@pytest.mark.parametrize("sym", [True, False])
def test_pack_quantized_round_trip(tmp_path, bits, strategy, sym):
    n, k, gs = 40, 96, 32
    off = 1 << (bits - 1)
    q = RNG.integers(-off, off, size=(n, k))
    sshape = {"group": (n, k // gs), "channel": (n, 1), "tensor": (1,)}[strategy]
    s = (RNG.random(sshape) * 0.1).astype(ml_dtypes.bfloat16)
    z = RNG.integers(-off, off, size=sshape) if not sym else None
    t = ct_tensors(BASE, q, s, "pack-quantized", bits, zero=z, strategy=strategy)
    rio.save(t, tmp_path / "m", layout="pack-quantized", bits=bits, symmetric=sym, strategy=strategy,
             group_size=gs if strategy == "group" else None)
    ex = {"group": lambda a: a[:, np.arange(k) // gs], "channel": lambda a: a,
          "tensor": lambda a: a.reshape(1, 1)}[strategy]
    d = q - (ex(z) if z is not None else 0)
    want = (d * ex(s).astype(np.float32)).astype(ml_dtypes.bfloat16).astype(np.float32)
    with _open(tmp_path / "m") as ck:
        sc = ck.scheme(BASE + ".weight")
        assert (sc.format, sc.bits, sc.strategy, sc.symmetric) == ("pack-quantized", bits, strategy, sym)
        np.testing.assert_array_equal(ck.dequantize(BASE + ".weight"), np.broadcast_to(want, (n, k)))


def test_int_and_float_quantized_round_trip(tmp_path):
    n, k = 16, 64
    q = RNG.integers(-128, 128, size=(n, k)).astype(np.int8)
    s = RNG.random((n, 1)).astype(np.float32)
    rio.save(ct_tensors(BASE, q, s, "int-quantized", 8, strategy="channel"), tmp_path / "i",
             layout="int-quantized", bits=8, strategy="channel")
    f = RNG.standard_normal((n, k)).astype(ml_dtypes.float8_e4m3fn)
    rio.save(ct_tensors(BASE, f, s, "float-quantized", 8, strategy="channel"), tmp_path / "f",
             layout="float-quantized", bits=8, type="float", strategy="channel")
    with _open(tmp_path / "i") as ck:
        np.testing.assert_array_equal(ck.dequantize(BASE + ".weight"), q * s)
    with _open(tmp_path / "f") as ck:
        np.testing.assert_array_equal(ck.dequantize(BASE + ".weight"), f.astype(np.float32) * s)


def test_pack_quantized_detected_without_config(tmp_path):
    q = RNG.integers(-8, 8, size=(8, 64))
    t = ct_tensors("p", q, np.ones((8, 2), np.float16), "pack-quantized", 4)
    rio.save(t, tmp_path / "p.safetensors")
    with rio.open(tmp_path / "p.safetensors") as ck:
        s = ck.scheme("p.weight")
        assert (s.bits, s.group_size, s.symmetric) == (4, 32, True)
        np.testing.assert_array_equal(ck.dequantize("p.weight"), q)


# ---------------------------------------------------------------------------
# MLX
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("gs", [32, 64, 128])
def test_mlx_round_trip_scale_times_code_plus_bias(tmp_path, bits, gs):
    n, k = 8, 256
    q = RNG.integers(0, 1 << bits, size=(n, k))
    s = (RNG.random((n, k // gs)) * 0.1).astype(np.float16)
    b = (RNG.standard_normal((n, k // gs))).astype(np.float16)
    rio.save(mlx_tensors(BASE, q, s, b, bits), tmp_path / "m", layout="mlx", bits=bits, group_size=gs)
    g = np.arange(k) // gs
    want = ((s[:, g] * q.astype(np.float16)) + b[:, g]).astype(np.float32)  # float16 ops round each
    with _open(tmp_path / "m") as ck:
        np.testing.assert_array_equal(ck.dequantize(BASE + ".weight"), want)
        assert ck.scheme(BASE + ".weight").bits == bits


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------

def _gptq_folder(tmp_path, **over):
    t = gptq_tensors("l", RNG.integers(0, 16, (32, 64)), np.ones((32, 2), np.float16),
                     np.full((32, 2), 3), 4)
    t.update(over)
    rio.save(t, tmp_path / "m.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(
        {"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 32}}))
    (tmp_path / "m.safetensors").rename(tmp_path / "model.safetensors")
    return tmp_path


def test_scales_of_inconsistent_shape_name_the_tensor(tmp_path):
    _gptq_folder(tmp_path, **{"l.scales": np.ones((3, 32), np.float16)})
    with rio.open(tmp_path) as ck, pytest.raises(RefquantError, match=r"'l\.scales'.*shape \(3, 32\)"):
        ck.logical_names()


def test_g_idx_out_of_range_is_refused(tmp_path):
    _gptq_folder(tmp_path, **{"l.g_idx": np.full(64, 2, np.int32)})
    with rio.open(tmp_path) as ck, pytest.raises(RefquantError, match=r"g_idx\[0\] = 2"):
        ck.dequantize("l.weight")


def test_group_size_that_does_not_divide_the_width_is_refused(tmp_path):
    with pytest.raises(RefquantError, match="not a multiple of group_size 48"):
        rio.save(gptq_tensors("l", RNG.integers(0, 16, (32, 64)), np.ones((32, 2), np.float16),
                              np.full((32, 2), 3), 4), tmp_path / "m", layout="gptq", bits=4,
                 group_size=48)
    assert not (tmp_path / "m/model.safetensors").exists()


def test_bit_width_the_layout_does_not_allow_is_refused(tmp_path):
    q = RNG.integers(0, 16, (32, 64))
    with pytest.raises(RefquantError, match="bits 5"):
        rio.save(gptq_tensors("l", q, np.ones((32, 2), np.float16), np.full((32, 2), 3), 4),
                 tmp_path / "m", layout="gptq", bits=5, group_size=32)
    with pytest.raises(RefquantError, match="MLX stores"):
        mlx_tensors("l", q, None, None, 7)


def test_config_naming_a_format_the_tensors_do_not_have(tmp_path):
    rio.save({"l.weight": np.ones((4, 4), np.float32)}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {
        "quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm"}}))
    with rio.open(tmp_path) as ck, pytest.raises(RefquantError, match="no tensor ends in '.qweight'"):
        ck.dequantize("l.weight")


def test_unknown_method_and_unconfigured_mlx_are_reported_not_guessed(tmp_path):
    rio.save({"l.weight": np.ones((4, 4), np.float32)}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "hqq"}}))
    with rio.open(tmp_path) as ck, pytest.raises(RefquantError, match="'hqq'.*unknown"):
        ck.logical_names()
    t = mlx_tensors("l", RNG.integers(0, 16, (4, 64)), np.ones((4, 1), np.float16),
                    np.zeros((4, 1), np.float16), 4)
    rio.save(t, tmp_path / "x.safetensors")
    with rio.open(tmp_path / "x.safetensors") as ck, pytest.raises(RefquantError, match="MLX.*unknown"):
        ck.logical_names()


def test_plain_checkpoint_logical_names_are_its_tensors(tmp_path):
    rio.save({"a": np.arange(4, dtype=np.float16)}, tmp_path / "p.safetensors")
    with rio.open(tmp_path / "p.safetensors") as ck:
        assert ck.logical_names() == ["a"] and ck.scheme("a") is None
        np.testing.assert_array_equal(ck.dequantize("a"), np.arange(4, dtype=np.float32))


# ---------------------------------------------------------------------------
# bitsandbytes
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", ["nf4", "fp4"])
@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_bnb_4bit_round_trip_is_compat_bnb_dequantize(tmp_path, qtype, nested, dtype):
    from refquant.compat import bnb
    from refquant.io.layouts.bnb import bnb_4bit_tensors

    w = RNG.standard_normal((24, 35)).astype(dtype)  # 840 elements: a partial last block
    t = bnb_4bit_tensors(BASE, w, qtype, blocksize=64, double_quant=nested)
    rio.save(t, tmp_path / "m", layout=f"bitsandbytes-{qtype}", double_quant=nested)
    packed, state = bnb.quantize_4bit(w, blocksize=64, compress_statistics=nested, quant_type=qtype)
    want = bnb.dequantize_4bit(packed, state).astype(np.float32)
    with _open(tmp_path / "m") as ck:
        assert BASE + ".weight.absmax" not in ck.logical_names()
        s = ck.scheme(BASE + ".weight")
        assert (s.format, s.group_size, s.shape) == (f"bitsandbytes-{qtype}", 64, (24, 35))
        got = ck.dequantize(BASE + ".weight")
        assert ck[BASE + ".weight"].dtype == np.uint8  # the raw packed bytes under the same name
    np.testing.assert_array_equal(got, want)
    assert np.max(np.abs(got - w.astype(np.float32))) < 0.5 * np.max(np.abs(w.astype(np.float32)))


def test_bnb_int8_multiplies_by_the_float32_reciprocal_of_127(tmp_path):
    from refquant.io.layouts.bnb import bnb_int8_tensors

    w = RNG.standard_normal((16, 32)).astype(np.float16)
    t = bnb_int8_tensors(BASE, w)
    rio.save(t, tmp_path / "m", layout="bitsandbytes-int8")
    cb, scb = t[BASE + ".weight"].astype(np.float32), t[BASE + ".SCB"]
    want = (cb * scb[:, None]) * np.float32(1 / 127)
    with _open(tmp_path / "m") as ck:
        np.testing.assert_array_equal(ck.dequantize(BASE + ".weight"), want)
    with rio.open(tmp_path / "m/model.safetensors") as ck:  # self-describing without config.json
        assert ck.scheme(BASE + ".weight").format == "bitsandbytes-int8"


def test_bnb_quant_state_that_disagrees_with_absmax_is_refused(tmp_path):
    from refquant.io.layouts.bnb import bnb_4bit_tensors

    t = bnb_4bit_tensors(BASE, RNG.standard_normal((8, 64)).astype(np.float16), "nf4", 64)
    t[BASE + ".weight.absmax"] = t[BASE + ".weight.absmax"][:-1]
    rio.save(t, tmp_path / "x.safetensors")
    with rio.open(tmp_path / "x.safetensors") as ck, pytest.raises(
            RefquantError, match=r"weight\.absmax'.*shape \(7,\); expected \(8,\)"):
        ck.logical_names()


def test_pack_quantized_parts_that_disagree_name_the_tensor(tmp_path):
    q = RNG.integers(-8, 8, size=(8, 64))
    t = ct_tensors("p", q, np.ones((8, 2), np.float16), "pack-quantized", 4)
    t["p.weight_shape"] = np.array([8, 96], np.int64)
    with pytest.raises(RefquantError, match=r"'p\.weight_packed'.*shape \(8, 8\); expected \(8, 12\)"):
        rio.save(t, tmp_path / "m", layout="pack-quantized", bits=4, group_size=32)
    t = ct_tensors("p", q, np.ones((8, 2), np.float16), "pack-quantized", 4)
    with pytest.raises(RefquantError, match="group_size 48 does not divide in_features 64"):
        rio.save(t, tmp_path / "m2", layout="pack-quantized", bits=4, group_size=48)
    t["p.weight_g_idx"] = np.full(64, 5, np.int32)
    rio.save(t, tmp_path / "m3", layout="pack-quantized", bits=4, group_size=32)
    with rio.open(tmp_path / "m3") as ck, pytest.raises(RefquantError, match=r"g_idx\[0\] = 5"):
        ck.dequantize("p.weight")


def test_compressed_tensors_format_refquant_does_not_read_is_reported(tmp_path):
    rio.save({"l.weight_packed": np.zeros((4, 4), np.int32), "l.weight_scale": np.ones((4, 1)),
              "l.weight_shape": np.array([4, 32])}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {
        "quant_method": "compressed-tensors", "format": "sparse-bitmask",
        "config_groups": {"g": {"targets": ["Linear"], "weights": {"num_bits": 4}}}}}))
    with rio.open(tmp_path) as ck, pytest.raises(RefquantError, match="'sparse-bitmask'; refquant reads"):
        ck.logical_names()


def test_awq_gemv_and_fp8_e5m2_are_refused_not_misread(tmp_path):
    t = awq_tensors("a", RNG.integers(0, 16, (32, 64)), np.ones((32, 1), np.float16),
                    np.full((32, 1), 3))
    rio.save(t, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {
        "quant_method": "awq", "bits": 4, "group_size": 64, "version": "gemv"}}))
    # a GEMM layer under a GEMV config: (64, 4) words read output-major give in_features 32
    with rio.open(tmp_path) as ck, pytest.raises(RefquantError, match=r"'a\.qweight'.*in_features 32 is "
                                                 "not a multiple of group_size 64"):
        ck.logical_names()
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {
        "quant_method": "awq", "bits": 4, "group_size": 64, "version": "gemv_fast"}}))
    with rio.open(tmp_path) as ck, pytest.raises(RefquantError, match="AWQ version 'gemv_fast'"):
        ck.logical_names()
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {
        "quant_method": "fp8", "fmt": "e5m2"}}))
    with rio.open(tmp_path) as ck, pytest.raises(RefquantError, match="fp8 fmt 'e5m2'"):
        ck.logical_names()


def test_fp8_block_scales_of_the_wrong_grid_are_refused(tmp_path):
    t = fp8_block_tensors("x", RNG.standard_normal((130, 64)).astype(np.float32))
    t["x.weight_scale_inv"] = np.ones((1, 1), np.float32)
    with pytest.raises(RefquantError, match=r"'x\.weight_scale_inv'.*expected \(2, 1\)"):
        rio.save(t, tmp_path / "m", layout="fp8-block")


def test_mlx_biases_of_another_dtype_are_refused(tmp_path):
    t = mlx_tensors("l", RNG.integers(0, 16, (4, 64)), np.ones((4, 1), np.float16),
                    np.zeros((4, 1), np.float32), 4)
    with pytest.raises(RefquantError, match=r"'l\.biases'.*float32; expected the scales' float16"):
        rio.save(t, tmp_path / "m", layout="mlx", bits=4, group_size=64)


def test_gguf_tensors_share_the_one_interface(tmp_path):
    from refquant.compat import ggml

    x = RNG.standard_normal((4, 64)).astype(np.float32)
    import_peer("gguf")  # the GGUF writer needs gguf-py
    raw = ggml.quantize(x, "q4_0")
    rio.save({"w": raw, "n": np.ones(4, np.float32)}, tmp_path / "m.gguf", types={"w": "Q4_0"})
    with rio.open(tmp_path / "m.gguf") as ck:
        assert ck.logical_names() == ["w", "n"]
        s = ck.scheme("w")
        assert (s.format, s.bits, s.group_size, s.shape) == ("ggml:Q4_0", 4.5, 32, (4, 64))
        assert ck.scheme("n") is None
        np.testing.assert_array_equal(ck.dequantize("w"), ggml.dequantize(raw, "q4_0", (4, 64)))


def test_gptq_symmetry_without_config_is_read_off_the_zeros(tmp_path):
    q = RNG.integers(0, 16, (32, 64))
    for z, sym in ((np.full((32, 2), 8), True), (RNG.integers(1, 16, (32, 2)), False)):
        rio.save(gptq_tensors("g", q, np.ones((32, 2), np.float16), z, 4), tmp_path / "g.safetensors",
                 overwrite=True)
        with rio.open(tmp_path / "g.safetensors") as ck:
            assert ck.scheme("g.weight").symmetric is sym


def test_gptq_desc_act_without_g_idx_is_refused(tmp_path):
    t = gptq_tensors("l", RNG.integers(0, 16, (32, 64)), np.ones((32, 2), np.float16),
                     np.full((32, 2), 3), 4)
    del t["l.g_idx"]
    with pytest.raises(RefquantError, match="desc_act.*no g_idx"):
        rio.save(t, tmp_path / "m", layout="gptq", bits=4, group_size=32, desc_act=True)


# ---------------------------------------------------------------------------
# fixtures shaped like published checkpoints (raw words drawn, not written by refquant)
# ---------------------------------------------------------------------------

def _raw_words(shape):
    return RNG.integers(-(2**31), 2**31, size=shape, dtype=np.int64).astype(np.int32)


def test_shapes_of_a_llama2_7b_gptq_4bit_g128_q_proj(tmp_path):
    # TheBloke/Llama-2-7B-GPTQ (main): q_proj qweight (512, 4096) I32, qzeros (32, 512) I32,
    # scales (32, 4096) F16, g_idx (4096,) I32; quantize_config bits 4, group_size 128
    p = "model.layers.0.self_attn.q_proj"
    z = np.full((32, 4096), 7, np.uint32)  # symmetric v1: zero 8 stored as 7
    t = {p + ".qweight": _raw_words((512, 4096)),
         p + ".qzeros": pack_bitstream(z, 4).view(np.int32),
         p + ".scales": (RNG.random((32, 4096)) * 0.01).astype(np.float16),
         p + ".g_idx": (np.arange(4096) // 128).astype(np.int32)}
    rio.save(t, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {
        "quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True}}))
    with rio.open(tmp_path) as ck:
        s = ck.scheme(p + ".weight")
        assert (s.format, s.shape, s.group_size, s.symmetric) == ("gptq", (4096, 4096), 128, True)
        w = ck.dequantize(p + ".weight")
    q0 = int(t[p + ".qweight"].view(np.uint32)[0, 5])
    want = [np.float16(t[p + ".scales"][0, 5] * np.float32(((q0 >> (4 * i)) & 15) - 8)) for i in range(8)]
    np.testing.assert_array_equal(w[5, :8], np.array(want, np.float32))


def test_shapes_of_a_deepseek_v3_fp8_kv_a_proj(tmp_path):
    # deepseek-ai/DeepSeek-V3: kv_a_proj_with_mqa.weight (576, 7168) F8_E4M3,
    # weight_scale_inv (5, 56) F32 -- 576 rows end in a half tile
    p = "model.layers.0.self_attn.kv_a_proj_with_mqa"
    w = RNG.integers(0, 256, size=(576, 7168)).astype(np.uint8)
    w[(w & 0x7F) == 0x7F] = 0  # no NaN codes in a real checkpoint
    t = {p + ".weight": w.view(ml_dtypes.float8_e4m3fn),
         p + ".weight_scale_inv": (RNG.random((5, 56)) * 1e-3).astype(np.float32)}
    rio.save(t, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {
        "quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
        "weight_block_size": [128, 128]}}))
    with rio.open(tmp_path) as ck:
        got = ck.dequantize(p + ".weight")
    s = t[p + ".weight_scale_inv"]
    assert got[575, 7167] == np.float32(t[p + ".weight"][575, 7167]) * s[4, 55]
    assert got[512, 0] == np.float32(t[p + ".weight"][512, 0]) * s[4, 0]


def test_shapes_of_an_mlx_community_4bit_llama_3_2_1b_q_proj(tmp_path):
    # mlx-community/Llama-3.2-1B-Instruct-4bit: q_proj weight (2048, 256) U32,
    # scales / biases (2048, 32) BF16; config "quantization": {"group_size": 64, "bits": 4}
    p = "model.layers.0.self_attn.q_proj"
    t = {p + ".weight": _raw_words((2048, 256)).view(np.uint32),
         p + ".scales": (RNG.random((2048, 32)) * 0.01).astype(ml_dtypes.bfloat16),
         p + ".biases": (RNG.standard_normal((2048, 32)) * 0.05).astype(ml_dtypes.bfloat16)}
    rio.save(t, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"quantization": {"group_size": 64, "bits": 4}}))
    with rio.open(tmp_path) as ck:
        assert ck.scheme(p + ".weight").shape == (2048, 2048)
        w = ck.dequantize(p + ".weight")
    word = int(t[p + ".weight"][3, 9])  # columns 72..79, group 1
    sc, bi = t[p + ".scales"][3, 1], t[p + ".biases"][3, 1]
    want = [(sc * ml_dtypes.bfloat16((word >> (4 * i)) & 15)).astype(ml_dtypes.bfloat16) + bi
            for i in range(8)]
    np.testing.assert_array_equal(w[3, 72:80], np.array(want, ml_dtypes.bfloat16).astype(np.float32))
