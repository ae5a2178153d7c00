"""refquant.io.gguf on GGUF bytes built by hand from ggml docs/gguf.md."""

import struct

import numpy as np
import pytest

import refquant.io as rio
from refquant import RefquantError
from refquant.io.gguf import open_gguf


def _s(text):
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def gguf_bytes(tensors, kv=(), version=3, align=32, n_tensors=None, n_dims=None, offset_bump=0):
    """tensors: list of (name, ne list, ggml type, raw bytes)."""
    out = b"GGUF" + struct.pack("<I", version)
    out += struct.pack("<QQ", len(tensors) if n_tensors is None else n_tensors, len(kv))
    for key, vtype, payload in kv:
        out += _s(key) + struct.pack("<I", vtype) + payload
    off, infos, data = 0, b"", b""
    for name, ne, ttype, raw in tensors:
        infos += _s(name) + struct.pack("<I", len(ne) if n_dims is None else n_dims)
        infos += b"".join(struct.pack("<Q", d) for d in ne)
        infos += struct.pack("<IQ", ttype, off + offset_bump)
        pad = -len(raw) % align
        data += raw + b"\0" * pad
        off += len(raw) + pad
    out += infos
    out += b"\0" * (-len(out) % align)
    return out + data


def test_hand_built_gguf_reads_metadata_and_reverses_dims(tmp_path):
    w = np.arange(6, dtype=np.float32).reshape(2, 3)  # ne = [3, 2]: ne[0] innermost
    kv = [("general.name", 8, _s("tiny")), ("x.count", 4, struct.pack("<I", 7)),
          ("x.list", 9, struct.pack("<IQ", 5, 2) + struct.pack("<2i", -1, 2))]
    p = tmp_path / "t.gguf"
    p.write_bytes(gguf_bytes([("w", [3, 2], 0, w.tobytes())], kv))
    with open_gguf(p) as ck:
        np.testing.assert_array_equal(ck["w"], w)
        assert ck.metadata["general.name"] == "tiny" and ck.metadata["x.count"] == 7
        assert list(ck.metadata["x.list"]) == [-1, 2]


def test_q8_0_block_is_raw_bytes_and_dequantizes(tmp_path):
    # one Q8_0 block: fp16 scale 0.5 (0x3800) then 32 int8 codes -16..15
    codes = np.arange(-16, 16, dtype=np.int8)
    raw = struct.pack("<H", 0x3800) + codes.tobytes()
    p = tmp_path / "q.gguf"
    p.write_bytes(gguf_bytes([("q", [32], 8, raw)]))
    with open_gguf(p) as ck:
        i = ck.info("q")
        assert (i.dtype, i.shape, i.scheme, i.logical_shape) == (np.dtype("u1"), (34,), "ggml:Q8_0", (32,))
        np.testing.assert_array_equal(ck.dequantize("q"), codes.astype(np.float32) * 0.5)


@pytest.mark.parametrize("kw, match", [
    ({"version": 1}, "unsupported GGUF version 1"),
    ({"version": 3 << 24}, "big-endian"),
    ({"n_tensors": 2**40}, "cannot fit"),
    ({"n_dims": 5}, "GGML_MAX_DIMS"),
    ({"offset_bump": 4}, "not a multiple of the alignment"),
])
def test_bad_headers_are_refused(tmp_path, kw, match):
    p = tmp_path / "b.gguf"
    p.write_bytes(gguf_bytes([("w", [4], 0, bytes(16))], **kw))
    with pytest.raises(RefquantError, match=match) as e:
        open_gguf(p)
    assert str(p) in str(e.value)


def test_truncated_data_and_wrong_magic(tmp_path):
    p = tmp_path / "b.gguf"
    p.write_bytes(gguf_bytes([("w", [64], 0, bytes(256))])[:-10])
    with pytest.raises(RefquantError, match="truncated"):
        open_gguf(p)
    p.write_bytes(b"GGUX" + bytes(40))
    with pytest.raises(RefquantError, match="wrong magic"):
        open_gguf(p)


def test_string_length_claiming_2_60_bytes_is_refused(tmp_path):
    p = tmp_path / "s.gguf"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**60) + b"key" + bytes(40))
    with pytest.raises(RefquantError, match="runs past the end"):
        rio.open(p)


def test_row_not_a_multiple_of_the_block_is_refused(tmp_path):
    p = tmp_path / "r.gguf"
    p.write_bytes(gguf_bytes([("q", [33], 8, bytes(34))]))
    with pytest.raises(RefquantError, match="not a multiple of Q8_0 block size 32"):
        open_gguf(p)


@pytest.mark.parametrize("vtype, payload", [(0, struct.pack("<B", 32)), (10, struct.pack("<Q", 32)),
                                            (5, struct.pack("<i", 32))])
def test_alignment_of_a_type_other_than_uint32_is_refused(tmp_path, vtype, payload):
    # gguf.md: general.alignment is a uint32; gguf-py raises "Bad type for
    # general.alignment field" and ggml's gguf_get_val_u32 asserts the type
    p = tmp_path / "a.gguf"
    p.write_bytes(gguf_bytes([("w", [4], 0, bytes(16))], kv=[("general.alignment", vtype, payload)]))
    with pytest.raises(RefquantError, match="general.alignment must be a uint32"):
        open_gguf(p)


def test_uint32_alignment_is_used(tmp_path):
    p = tmp_path / "a.gguf"
    p.write_bytes(gguf_bytes([("w", [4], 0, bytes(range(16)))], align=64,
                             kv=[("general.alignment", 4, struct.pack("<I", 64))]))
    with open_gguf(p) as ck:
        assert ck["w"].view(np.uint8).tolist() == list(range(16))


def test_block_quantized_tensor_with_no_dims_is_refused(tmp_path):
    # n_dims = 0: ggml takes ne = [1, 1, 1, 1], and 1 is not a multiple of Q4_0's 32;
    # refquant sized it as 0 bytes, then reshape to (18,) raised ValueError
    p = tmp_path / "z.gguf"
    p.write_bytes(gguf_bytes([("q", [], 2, bytes(32))]))
    with pytest.raises(RefquantError, match="row of 1 is not a multiple of Q4_0 block size 32"):
        rio.load_arrays(p)


@pytest.mark.parametrize("kw, match", [
    ({"metadata": {"k": object()}}, "metadata 'k'"),
    ({"metadata": {"k": {"x": 1}}}, "metadata 'k'"),
    ({"metadata": {"k": None}}, "metadata 'k'"),
    ({"metadata": {"k": [1, "a"]}}, "metadata 'k'.*same type"),
    ({"metadata": {"k": []}}, "metadata 'k'.*empty"),
    ({"metadata": {"k": 2**40}}, "metadata 'k'.*int32"),  # gguf-py types an int as INT32
    ({"metadata": {3: "v"}}, "metadata key 3"),
    ({"tensors": {1: np.zeros(4, np.float32)}}, "tensor name 1"),
    ({"tensors": [("a", np.zeros(4, np.float32))]}, "mapping"),
    ({"tensors": {"a": np.zeros((1, 1, 1, 1, 2), np.float32)}}, "GGML_MAX_DIMS"),
    ({"tensors": {"a": [[1.0], [1.0, 2.0]]}}, "tensor 'a'"),
])
def test_save_gguf_refuses_what_gguf_cannot_hold_and_writes_nothing(tmp_path, kw, match):
    # these escaped as ValueError / TypeError / struct.error / AttributeError from
    # gguf-py, and a 5-dim tensor was written although GGUF allows 4 (refquant's
    # own reader then refused the file)
    from refquant.io.gguf import save_gguf

    kw = {"tensors": {"a": np.zeros(4, np.float32)}, **kw}
    with pytest.raises(RefquantError, match=match):
        save_gguf(kw.pop("tensors"), tmp_path / "o.gguf", **kw)
    assert list(tmp_path.iterdir()) == []


def test_save_gguf_refuses_a_lone_surrogate_name(tmp_path):
    # UnicodeEncodeError escaped from the writer
    with pytest.raises(RefquantError, match="lone surrogate"):
        rio.save({"\ud800": np.ones(2, np.float32)}, tmp_path / "a.gguf")
    assert not (tmp_path / "a.gguf").exists()


def test_save_gguf_refuses_metadata_bytes_that_are_not_utf8(tmp_path):
    # b'\xff' was written as a GGUF string that open() then refused ("not UTF-8")
    with pytest.raises(RefquantError, match="not UTF-8"):
        rio.save({"a": np.ones(2, np.float32)}, tmp_path / "a.gguf", metadata={"k": b"\xff"})
    assert not (tmp_path / "a.gguf").exists()
    rio.save({"a": np.ones(2, np.float32)}, tmp_path / "b.gguf", metadata={"k": "é".encode()})
    assert rio.open(tmp_path / "b.gguf").metadata["k"] == "é"
