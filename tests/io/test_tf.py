"""refquant.io.tf on tensor bundles built to the spec here (TensorFlow is not installed
in this environment; the writer below follows tensorflow/core/lib/io/table_builder.cc,
block_builder.cc, format.cc and tensor_bundle.proto field by field)."""

import struct

import ml_dtypes
import numpy as np
import pytest

import refquant.io as rio
from refquant import RefquantError
from refquant.io.tf import TABLE_MAGIC, open_tf


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(fno, wt, payload):
    key = _varint(fno << 3 | wt)
    if wt == 0:
        return key + _varint(payload)
    return key + _varint(len(payload)) + payload


def _entry_proto(dtype, dims, offset, size, shard=0, slices=False):
    shape = b"".join(_field(2, 2, _field(1, 0, d)) for d in dims)
    msg = _field(1, 0, dtype) + _field(2, 2, shape) + (_field(3, 0, shard) if shard else b"")
    msg += _field(4, 0, offset) + _field(5, 0, size)
    if slices:
        msg += _field(7, 2, b"")
    return msg


def _block(entries, compression=0):
    body = b"".join(_varint(0) + _varint(len(k)) + _varint(len(v)) + k + v for k, v in entries)
    body += struct.pack("<I", 0) + struct.pack("<I", 1)
    return body, bytes([compression]) + b"\0\0\0\0"


def write_bundle(prefix, tensors, endianness=0, compression=0, slices=False):
    data, entries, off = b"", [], 0
    for name, a in sorted(tensors.items()):
        code = {np.dtype("<f4"): 1, np.dtype("<i8"): 9, np.dtype(ml_dtypes.bfloat16): 14}[a.dtype]
        entries.append((name.encode(), _entry_proto(code, a.shape, off, a.nbytes, slices=slices)))
        data += a.tobytes()
        off += a.nbytes
    header = _field(1, 0, 1) + (_field(2, 0, endianness) if endianness else b"")
    entries = [(b"", header)] + entries
    out = bytearray()
    body, trailer = _block(entries, compression)
    dh = (0, len(body))
    out += body + trailer
    meta_body, meta_tr = _block([])
    mh = (len(out), len(meta_body))
    out += meta_body + meta_tr
    idx_body, idx_tr = _block([(entries[-1][0] + b"\xff", _varint(dh[0]) + _varint(dh[1]))])
    ih = (len(out), len(idx_body))
    out += idx_body + idx_tr
    footer = _varint(mh[0]) + _varint(mh[1]) + _varint(ih[0]) + _varint(ih[1])
    footer += b"\0" * (40 - len(footer)) + struct.pack("<Q", TABLE_MAGIC)
    (prefix.parent / (prefix.name + ".index")).write_bytes(bytes(out + footer))
    (prefix.parent / (prefix.name + ".data-00000-of-00001")).write_bytes(data)
    return prefix


T = {"dense/kernel": np.arange(6, dtype=np.float32).reshape(2, 3),
     "dense/bias": np.array([1.5, -2], ml_dtypes.bfloat16),
     "global_step": np.array(7, np.int64)}


def test_bundle_built_to_spec_reads_every_tensor(tmp_path):
    prefix = write_bundle(tmp_path / "model.ckpt", T)
    for opener in (open_tf, rio.open):
        with opener(prefix) as ck:
            assert sorted(ck) == sorted(T)
            for k, v in T.items():
                np.testing.assert_array_equal(ck[k], v)
                assert ck[k].dtype == v.dtype
            assert not ck["dense/kernel"].flags.owndata
    with rio.open(str(prefix) + ".index") as ck:
        assert ck.format == "tf"


@pytest.mark.parametrize("kw, match", [({"endianness": 1}, "big-endian"),
                                       ({"compression": 1}, "snappy"),
                                       ({"slices": True}, "partitioned")])
def test_unsupported_bundles_are_refused_by_name(tmp_path, kw, match):
    prefix = write_bundle(tmp_path / "m", T, **kw)
    with pytest.raises(RefquantError, match=match):
        open_tf(prefix)


def test_wrong_magic_and_truncated_data_are_refused(tmp_path):
    prefix = write_bundle(tmp_path / "m", T)
    idx = tmp_path / "m.index"
    raw = idx.read_bytes()
    idx.write_bytes(raw[:-1] + b"\0")
    with pytest.raises(RefquantError, match="wrong table magic"):
        open_tf(prefix)
    idx.write_bytes(raw)
    d = tmp_path / "m.data-00000-of-00001"
    d.write_bytes(d.read_bytes()[:-3])
    with pytest.raises(RefquantError, match="outside the file"):
        open_tf(prefix)


def test_index_naming_one_data_block_over_and_over_is_refused(tmp_path):
    # an index block whose 20000 handles all name one empty 64 kB data block made
    # the reader copy and scan it 20000 times (1.3 GB of work from a 300 kB file;
    # work grows as the square of the file: a 5 MB file took 28 s). Table blocks
    # are disjoint: their sizes cannot add up to more than the file.
    size = 1 << 16
    nr = size // 4 - 1  # restart array fills the block: no entries
    data_block = struct.pack("<I", 0) * nr + struct.pack("<I", nr) + b"\0" * 5
    handle = _varint(0) + _varint(size)
    n = 20_000
    idx = b"".join(_varint(0) + _varint(4) + _varint(len(handle)) + struct.pack(">I", i) + handle
                   for i in range(n))
    # shared=0 for each entry: the keys are full and distinct; one restart point
    idx_body = idx + struct.pack("<I", 0) + struct.pack("<I", 1)
    out = data_block
    meta_body, meta_tr = _block([])
    mh = (len(out), len(meta_body))
    out += meta_body + meta_tr
    ih = (len(out), len(idx_body))
    out += idx_body + b"\0" * 5
    footer = _varint(mh[0]) + _varint(mh[1]) + _varint(ih[0]) + _varint(ih[1])
    footer += b"\0" * (40 - len(footer)) + struct.pack("<Q", TABLE_MAGIC)
    (tmp_path / "m.ckpt.index").write_bytes(out + footer)
    with pytest.raises(RefquantError, match="data blocks"):
        open_tf(tmp_path / "m.ckpt")
