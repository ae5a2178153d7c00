"""refquant.io.safetensors: the spec's rules, hand-built files, sub-byte packing, writer."""

import json
import struct

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refquant.io as rio
from refquant import RefquantError
from refquant.io.safetensors import (
    MAX_HEADER_SIZE,
    open_safetensors,
    pack_subbyte,
    save_safetensors,
    unpack_subbyte,
)


def _file(tmp_path, header, data=b"", name="x.safetensors", pad=True):
    hb = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad:
        hb += b" " * (-len(hb) % 8)
    p = tmp_path / name
    p.write_bytes(struct.pack("<Q", len(hb)) + hb + data)
    return p


def test_spec_example_from_safetensors_docs_reads_int32_zeros(tmp_path):
    # the doc example of SafeTensors::deserialize in safetensors/src/tensor.rs
    raw = (b"<\x00\x00\x00\x00\x00\x00\x00"
           b'{"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}}' + b"\x00" * 16)
    p = tmp_path / "doc.safetensors"
    p.write_bytes(raw)
    with open_safetensors(p) as ck:
        a = ck["test"]
        assert a.dtype == np.int32 and a.shape == (2, 2)
        assert not a.any()


def test_little_endian_f32_bytes_decode_to_values(tmp_path):
    data = struct.pack("<3f", 1.5, -2.0, 0.25)
    p = _file(tmp_path, {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}}, data)
    with open_safetensors(p) as ck:
        np.testing.assert_array_equal(ck["w"], np.array([1.5, -2.0, 0.25], np.float32))


def test_info_gives_dtype_shape_bytes_without_data(tmp_path):
    p = _file(tmp_path, {"w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]}}, b"\0" * 12)
    with open_safetensors(p) as ck:
        i = ck.info("w")
        assert (i.dtype, i.shape, i.nbytes, i.stored_dtype) == (np.dtype(ml_dtypes.bfloat16), (2, 3), 12, "BF16")


def test_arrays_are_readonly_views_of_the_map(tmp_path):
    p = _file(tmp_path, {"w": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]}}, bytes(range(8)))
    with open_safetensors(p) as ck:
        a = ck["w"]
        assert not a.flags.writeable and not a.flags.owndata
        with pytest.raises(ValueError):
            a[0] = 1
    # still valid after close (the map lives while the array does)
    np.testing.assert_array_equal(a, np.arange(8, dtype=np.uint8))


def test_reading_after_close_is_refused(tmp_path):
    p = _file(tmp_path, {"w": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]}}, bytes(8))
    ck = open_safetensors(p)
    ck.close()
    with pytest.raises(RefquantError, match="closed"):
        ck["w"]


@pytest.mark.parametrize(
    "header, data, match",
    [
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, "needs 8"),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 5, "1 trailing bytes"),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 3, "truncated"),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "gap of 4"),
        ({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
          "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}, b"\0" * 6, "overlaps"),
        ({"w": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "unknown dtype"),
        ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "expected integers >= 0"),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4, "begin <= end"),
        ({"w": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, "must hold dtype, shape and data_offsets"),
        ({"__metadata__": {"a": 1}}, b"", "strings to strings"),
        ({"w": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}}, b"\0\0", "whole number of bytes"),
        ({"w": {"dtype": "U8", "shape": [2**30, 2**30, 2**30], "data_offsets": [0, 8]}}, b"\0" * 8,
         "more than 2\\*\\*62"),
    ],
    ids=["size-mismatch", "trailing", "truncated", "gap", "overlap", "dtype", "negative-dim",
         "offsets-reversed", "missing-key", "metadata-not-str", "f4-odd", "2**90-elements"],
)
def test_each_spec_rule_is_enforced_with_a_named_reason(tmp_path, header, data, match):
    p = _file(tmp_path, header, data)
    with pytest.raises(RefquantError, match=match) as e:
        open_safetensors(p)
    assert str(p) in str(e.value)


def test_claimed_2_60_elements_are_refused_before_allocation(tmp_path):
    p = _file(tmp_path, {"w": {"dtype": "F32", "shape": [2**60], "data_offsets": [0, 2**62]}}, b"\0" * 8)
    with pytest.raises(RefquantError, match="needs 8 data bytes|truncated|needs"):
        open_safetensors(p)


def test_header_length_over_100mb_is_refused(tmp_path):
    p = tmp_path / "big.safetensors"
    p.write_bytes(struct.pack("<Q", MAX_HEADER_SIZE + 1) + b"{}")
    with pytest.raises(RefquantError, match="exceeds the 100000000-byte limit"):
        open_safetensors(p)


def test_duplicate_keys_are_refused(tmp_path):
    raw = b'{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'
    p = _file(tmp_path, raw, b"\0")
    with pytest.raises(RefquantError, match="twice"):
        open_safetensors(p)


@pytest.mark.parametrize("raw, match", [(b"[1]", "start with"), (b"{bad", "not valid JSON"),
                                        (b"{\xff}", "not UTF-8")])
def test_header_that_is_not_a_json_object_is_refused(tmp_path, raw, match):
    with pytest.raises(RefquantError, match=match):
        open_safetensors(_file(tmp_path, raw))


def test_f4_packs_two_codes_per_byte_low_nibble_first():
    # codes 1, 2, 3, 4 -> bytes 0x21, 0x43 (element 2k in bits 3..0)
    np.testing.assert_array_equal(pack_subbyte(np.array([1, 2, 3, 4], np.uint8), 4), [0x21, 0x43])
    np.testing.assert_array_equal(unpack_subbyte(np.array([0x21, 0x43], np.uint8), 4, 4), [1, 2, 3, 4])


def test_f6_packs_four_codes_in_three_bytes_lsb_first():
    # stream bits: e0=1 -> 000001, e1=2 -> 000010, e2=3 -> 000011, e3=4 -> 000100
    # byte0 = e0 | (e1 & 3) << 6 = 0x01 | 0x80; byte1 = e1 >> 2 | (e2 & 15) << 4 = 0x30;
    # byte2 = e2 >> 4 | e3 << 2 = 0x10
    np.testing.assert_array_equal(pack_subbyte(np.array([1, 2, 3, 4], np.uint8), 6), [0x81, 0x30, 0x10])


@given(st.lists(st.integers(0, 63), min_size=0, max_size=40).map(lambda v: v[: len(v) // 4 * 4]))
def test_f6_pack_unpack_round_trip(codes):
    c = np.array(codes, np.uint8)
    np.testing.assert_array_equal(unpack_subbyte(pack_subbyte(c, 6), 6, c.size), c)


def test_f4_file_decodes_e2m1_values(tmp_path):
    # bytes 0x21, 0x43 hold codes 1, 2, 3, 4 = 0.5, 1.0, 1.5, 2.0 in e2m1
    p = _file(tmp_path, {"w": {"dtype": "F4", "shape": [2, 2], "data_offsets": [0, 2]}}, b"\x21\x43")
    with open_safetensors(p) as ck:
        np.testing.assert_array_equal(ck["w"].astype(np.float32), [[0.5, 1.0], [1.5, 2.0]])


_ALL = {
    "BOOL": np.array([True, False, True]),
    "U8": np.array([0, 255], np.uint8),
    "I8": np.array([-128, 127], np.int8),
    "U16": np.array([0, 65535], np.uint16),
    "I16": np.array([-32768, 7], np.int16),
    "U32": np.array([2**32 - 1], np.uint32),
    "I32": np.array([-(2**31)], np.int32),
    "U64": np.array([2**64 - 1], np.uint64),
    "I64": np.array([-(2**63)], np.int64),
    "F16": np.array([65504, -0.0, np.inf], np.float16),
    "BF16": np.array([1, -3.5, np.nan], ml_dtypes.bfloat16),
    "F32": np.array([np.nan, 1e-45], np.float32),
    "F64": np.array([np.pi], np.float64),
    "C64": np.array([1 + 2j], np.complex64),
    "F8_E4M3": np.array([448, -0.001953125], ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.array([57344, np.inf], ml_dtypes.float8_e5m2),
    "F8_E8M0": np.array([2.0**-127, 2.0**127], ml_dtypes.float8_e8m0fnu),
    "F8_E4M3FNUZ": np.array([240], ml_dtypes.float8_e4m3fnuz),
    "F8_E5M2FNUZ": np.array([57344], ml_dtypes.float8_e5m2fnuz),
    "F6_E2M3": np.array([7.5, -7.5, 0.125, 0], ml_dtypes.float6_e2m3fn),
    "F6_E3M2": np.array([28, -28, 0.0625, 0], ml_dtypes.float6_e3m2fn),
    "F4": np.array([6, -6, 0.5, 0], ml_dtypes.float4_e2m1fn),
}


@pytest.mark.parametrize("name", sorted(_ALL))
def test_every_spec_dtype_round_trips_bit_for_bit(tmp_path, name):
    a = _ALL[name]
    p = save_safetensors({"t": a, "m": a.reshape(1, -1)}, tmp_path / "a.safetensors")
    raw = p.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0 and raw[8 : 8 + n].rstrip(b" ").endswith(b"}")
    header = json.loads(raw[8 : 8 + n])
    assert header["t"]["dtype"] == name
    with rio.open(p) as ck:
        b = ck["t"]
        assert b.dtype == a.dtype and b.shape == a.shape
        ua = a.view(np.uint8) if a.dtype.itemsize == 1 else a.view(f"u{a.dtype.itemsize}")
        ub = b.view(np.uint8) if b.dtype.itemsize == 1 else b.view(f"u{b.dtype.itemsize}")
        np.testing.assert_array_equal(ub, ua)


def test_writer_pads_header_with_spaces_and_writes_metadata(tmp_path):
    p = save_safetensors({"w": np.zeros(3, np.float32)}, tmp_path / "m.safetensors", metadata={"format": "np"})
    raw = p.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    h = raw[8 : 8 + n]
    assert n % 8 == 0 and h == h.rstrip(b" ") + b" " * (len(h) - len(h.rstrip(b" ")))
    assert json.loads(h)["__metadata__"] == {"format": "np"}
    with rio.open(p) as ck:
        assert dict(ck.metadata) == {"format": "np"}


def test_writer_refuses_non_string_metadata_and_odd_fp4_counts(tmp_path):
    with pytest.raises(RefquantError, match="metadata"):
        save_safetensors({"w": np.zeros(2)}, tmp_path / "a.safetensors", metadata={"a": 1})
    with pytest.raises(RefquantError, match="whole"):
        save_safetensors({"w": np.zeros(3, ml_dtypes.float4_e2m1fn)}, tmp_path / "b.safetensors")
    with pytest.raises(RefquantError, match="no safetensors name"):
        save_safetensors({"w": np.zeros(3, object)}, tmp_path / "c.safetensors")


def test_sharded_save_writes_index_and_opens_as_one_mapping(tmp_path):
    t = {f"layer{i}.weight": np.full((4, 4), i, np.float32) for i in range(5)}
    idx = save_safetensors(t, tmp_path / "model.safetensors.index.json", max_shard_size=130)
    index = json.loads(idx.read_text())
    assert index["metadata"]["total_size"] == 5 * 64
    shards = sorted(set(index["weight_map"].values()))
    # 64 bytes each, at most 130 per shard: 2 + 2 + 1
    assert shards == [f"model-{i:05d}-of-00003.safetensors" for i in range(1, 4)]
    with rio.open(idx) as ck:
        assert ck.format == "sharded" and sorted(ck) == sorted(t)
        for k, v in t.items():
            np.testing.assert_array_equal(ck[k], v)
    with rio.open(tmp_path) as ck:  # the folder finds the index
        assert len(ck) == 5


@pytest.mark.parametrize("shape, offsets", [("[-0]", "[0,0]"), ("[1]", "[-0,4]")])
def test_minus_zero_in_shape_or_offsets_is_refused_like_serde(tmp_path, shape, offsets):
    # serde_json reads -0 as the float -0.0, which is no usize: safetensors refuses
    # ("invalid JSON in header"); Python's json read it as the int 0
    raw = f'{{"t":{{"dtype":"F32","shape":{shape},"data_offsets":{offsets}}}}}'.encode()
    p = _file(tmp_path, raw, b"\0" * (4 if shape == "[1]" else 0))
    with pytest.raises(RefquantError, match="-0.0"):
        open_safetensors(p)


@pytest.mark.parametrize("where", ["name", "metadata key", "metadata value"])
def test_lone_surrogate_escape_is_refused_as_not_unicode(tmp_path, where):
    # "\ud800" is valid JSON syntax but no Unicode scalar: serde_json (safetensors)
    # refuses it; Python's json returned a str that cannot be encoded back
    name = '"\\ud800"' if where == "name" else '"t"'
    meta = {"name": "", "metadata key": '"__metadata__":{"\\ud800":"v"},',
            "metadata value": '"__metadata__":{"k":"\\ud800"},'}[where]
    raw = f'{{{meta}{name}:{{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}}}'.encode()
    with pytest.raises(RefquantError, match="surrogate"):
        open_safetensors(_file(tmp_path, raw, b"\0" * 4))


@pytest.mark.parametrize("kw", [{"tensors": {"\ud800": np.zeros(1, np.float32)}},
                                {"metadata": {"k": "\udc80"}}])
def test_writer_refuses_a_lone_surrogate_and_leaves_no_file(tmp_path, kw):
    # json.dumps(ensure_ascii=False).encode("utf-8") raised UnicodeEncodeError
    tensors = kw.get("tensors", {"a": np.zeros(1, np.float32)})
    with pytest.raises(RefquantError, match="surrogate"):
        save_safetensors(tensors, tmp_path / "o.safetensors", metadata=kw.get("metadata"))
    assert list(tmp_path.iterdir()) == []


def test_sharded_save_onto_an_existing_index_writes_no_shard(tmp_path):
    # the index's existence was checked only after every shard had been written:
    # the refusal left model-0000k-of-00002.safetensors behind
    idx = tmp_path / "model.safetensors.index.json"
    idx.write_text("{}")
    t = {"a": np.zeros(4, np.float32), "b": np.ones(4, np.float32)}
    with pytest.raises(RefquantError, match="exists"):
        save_safetensors(t, idx, max_shard_size=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors.index.json"]


def test_sharded_save_that_fails_midway_removes_the_shards_it_wrote(tmp_path, monkeypatch):
    import refquant.io.safetensors as sm

    real, calls = sm._write_one, []

    def flaky(rows, metadata, f, *rest):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        real(rows, metadata, f, *rest)

    monkeypatch.setattr(sm, "_write_one", flaky)
    t = {"a": np.zeros(4, np.float32), "b": np.ones(4, np.float32)}
    with pytest.raises(OSError, match="disk full"):
        save_safetensors(t, tmp_path / "model.safetensors.index.json", max_shard_size=16)
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_a_ragged_list_as_a_refquant_error(tmp_path):
    # np.asarray([[1], [1, 2]]) raised numpy's ValueError
    with pytest.raises(RefquantError, match="tensor 'a'"):
        save_safetensors({"a": [[1.0], [1.0, 2.0]]}, tmp_path / "o.safetensors")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ JSON whitespace, header limit

#: The input the safetensors crate's own tests (safetensors/src/tensor.rs) require to
#: read: header length 6, then "\t\n{}\r ".
CRATE_WHITESPACE_HEADER = b"\x06\0\0\0\0\0\0\0\t\n{}\r "


def test_crate_whitespace_padded_empty_header_opens_through_detection(tmp_path):
    p = tmp_path / "ws.safetensors"
    p.write_bytes(CRATE_WHITESPACE_HEADER)
    assert rio.detect_format(p) == "safetensors"
    with rio.open(p) as ck:
        assert ck.format == "safetensors" and len(ck) == 0


@pytest.mark.parametrize("lead", [b" ", b"\t\n", b"\r\n" * 40, b" " * 70_000], ids=["1", "2", "80", "70000"])
def test_json_whitespace_before_a_real_tensor_entry_is_read(tmp_path, lead):
    # 70,000 bytes of whitespace run past the 64 bytes detection sniffs and its first read
    h = lead + json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    p = tmp_path / "ws.safetensors"
    p.write_bytes(struct.pack("<Q", len(h)) + h + np.array([1.5, -2.0], np.float32).tobytes())
    with rio.open(p) as ck:
        np.testing.assert_array_equal(ck["w"], np.array([1.5, -2.0], np.float32))


@pytest.mark.parametrize("lead", [b"\x0c", b"\x0b", b"\xc2\xa0"], ids=["ff", "vt", "nbsp"])
def test_whitespace_json_does_not_allow_is_refused(tmp_path, lead):
    p = tmp_path / "ws.safetensors"
    h = lead + b"{}"
    p.write_bytes(struct.pack("<Q", len(h)) + h)
    with pytest.raises(RefquantError):
        open_safetensors(p)
    with pytest.raises(RefquantError):
        rio.open(p)


def test_metadata_past_the_100mb_header_limit_is_refused_and_leaves_no_file(tmp_path):
    p = tmp_path / "big.safetensors"
    with pytest.raises(RefquantError, match="MAX_HEADER_SIZE"):
        rio.save({}, p, metadata={"m": "a" * 100_000_000})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sharded", [False, True])
def test_header_limit_is_exactly_the_readers(tmp_path, monkeypatch, sharded):
    # with the limit lowered, the largest header the writer accepts is the largest
    # the reader opens, and one byte more is refused before any file exists
    import refquant.io.safetensors as rst

    monkeypatch.setattr(rst, "MAX_HEADER_SIZE", 256)
    base = len(json.dumps({"__metadata__": {"m": ""}}, separators=(",", ":")))
    target = tmp_path / ("m.safetensors.index.json" if sharded else "m.safetensors")
    opts = {"max_shard_size": 1 << 20} if sharded else {}
    fits = 256 - base  # pads to 256 exactly (a multiple of 8)
    rio.save({}, target, metadata={"m": "a" * fits}, **opts)
    shard = tmp_path / "m-00001-of-00001.safetensors" if sharded else target
    assert struct.unpack("<Q", shard.read_bytes()[:8])[0] == 256
    with open_safetensors(shard) as ck:
        assert ck.metadata["m"] == "a" * fits
    for f in tmp_path.iterdir():
        f.unlink()
    with pytest.raises(RefquantError, match="MAX_HEADER_SIZE"):
        rio.save({}, target, metadata={"m": "a" * (fits + 1)}, **opts)
    assert list(tmp_path.iterdir()) == []
