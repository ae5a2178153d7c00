"""TensorFlow checkpoints (tensor bundles: ``<prefix>.index`` + ``<prefix>.data-*``) without TensorFlow.

``<prefix>.index`` is a LevelDB-format table (tensorflow/core/lib/io/table.cc,
format.cc) mapping tensor names to ``BundleEntryProto``; the empty key holds
the ``BundleHeaderProto`` (tensorflow/core/protobuf/tensor_bundle.proto)::

    file:   data blocks | metaindex block | index block | footer (48 bytes)
    footer: varint64 metaindex (offset, size) | varint64 index (offset, size)
            | zero padding to 40 bytes | u64 LE magic 0xdb4775248b80fb57
    block:  entries | u32 restart offsets ... | u32 n_restarts, then a 5-byte
            trailer (u8 compression: 0 none, 1 snappy | u32 masked crc32c)
    entry:  varint32 shared | varint32 non_shared | varint32 value_len
            | key[shared:] delta (non_shared bytes) | value (value_len bytes)
    index block values: BlockHandle (varint64 offset, varint64 size) of a data block

    BundleEntryProto: 1 dtype (DataType) | 2 shape (TensorShapeProto: 2 dim {1 size})
                      | 3 shard_id | 4 offset | 5 size | 6 crc32c (fixed32) | 7 slices
    BundleHeaderProto: 1 num_shards | 2 endianness (0 little, 1 big) | 3 version

Tensor bytes live in ``<prefix>.data-<shard:05d>-of-<num_shards:05d>`` at
``offset``, ``size`` bytes, row-major; refquant memory-maps them. The protobufs
are parsed by hand (wire types 0, 1, 2, 5; unknown fields skipped). Not
supported, each with a RefquantError naming it: snappy-compressed index blocks
(TensorFlow writes bundles uncompressed), partitioned variables (``slices``),
string tensors, big-endian bundles.
"""

from __future__ import annotations

import os
import struct

import ml_dtypes
import numpy as np

from .._errors import RefquantError
from ._common import MAX_INDEX, LazyCheckpoint, MappedFile, TensorInfo, checked_numel, fail

__all__ = ["TFCheckpoint", "open_tf", "TF_DTYPES", "TABLE_MAGIC"]

TABLE_MAGIC = 0xDB4775248B80FB57

#: tensorflow/core/framework/types.proto DataType -> numpy dtype.
TF_DTYPES = {
    1: ("DT_FLOAT", np.dtype("<f4")), 2: ("DT_DOUBLE", np.dtype("<f8")), 3: ("DT_INT32", np.dtype("<i4")),
    4: ("DT_UINT8", np.dtype("u1")), 5: ("DT_INT16", np.dtype("<i2")), 6: ("DT_INT8", np.dtype("i1")),
    8: ("DT_COMPLEX64", np.dtype("<c8")), 9: ("DT_INT64", np.dtype("<i8")), 10: ("DT_BOOL", np.dtype("?")),
    14: ("DT_BFLOAT16", np.dtype(ml_dtypes.bfloat16)), 17: ("DT_UINT16", np.dtype("<u2")),
    18: ("DT_COMPLEX128", np.dtype("<c16")), 19: ("DT_HALF", np.dtype("<f2")),
    22: ("DT_UINT32", np.dtype("<u4")), 23: ("DT_UINT64", np.dtype("<u8")),
    24: ("DT_FLOAT8_E5M2", np.dtype(ml_dtypes.float8_e5m2)),
    25: ("DT_FLOAT8_E4M3FN", np.dtype(ml_dtypes.float8_e4m3fn)),
}


def _varint(buf: bytes, pos: int, path, what):
    result, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise fail(path, f"{what}: varint runs past the end")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise fail(path, f"{what}: varint longer than 10 bytes")


def _fields(buf: bytes, path, what):
    """Yield (field number, wire type, value) of a protobuf message."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos, path, what)
        fno, wt = key >> 3, key & 7
        if wt == 0:
            v, pos = _varint(buf, pos, path, what)
        elif wt == 1:
            if pos + 8 > len(buf):
                raise fail(path, f"{what}: truncated fixed64")
            v, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wt == 5:
            if pos + 4 > len(buf):
                raise fail(path, f"{what}: truncated fixed32")
            v, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        elif wt == 2:
            n, pos = _varint(buf, pos, path, what)
            if pos + n > len(buf):
                raise fail(path, f"{what}: length-delimited field runs past the end")
            v, pos = buf[pos : pos + n], pos + n
        else:
            raise fail(path, f"{what}: unsupported protobuf wire type {wt}")
        yield fno, wt, v


def _signed64(v):
    return v - (1 << 64) if v >= 1 << 63 else v


def _block(m: MappedFile, offset, size, what):
    raw = bytes(m.view(offset, size + 5, what))
    if raw[size] != 0:
        kind = "snappy" if raw[size] == 1 else f"type {raw[size]}"
        raise fail(m.path, f"{what}: {kind}-compressed table blocks are not supported (TensorFlow writes "
                           "bundles uncompressed)")
    contents = raw[:size]
    if size < 4:
        raise fail(m.path, f"{what}: block of {size} bytes is too small")
    (nr,) = struct.unpack_from("<I", contents, size - 4)
    if 4 * (nr + 1) > size:
        raise fail(m.path, f"{what}: {nr} restart points do not fit in {size} bytes")
    entries = contents[: size - 4 * (nr + 1)]
    pos, key, out = 0, b"", []
    while pos < len(entries):
        shared, pos = _varint(entries, pos, m.path, what)
        non_shared, pos = _varint(entries, pos, m.path, what)
        vlen, pos = _varint(entries, pos, m.path, what)
        if shared > len(key) or pos + non_shared + vlen > len(entries):
            raise fail(m.path, f"{what}: corrupt block entry")
        key = key[:shared] + entries[pos : pos + non_shared]
        pos += non_shared
        out.append((key, entries[pos : pos + vlen]))
        pos += vlen
    return out


def _handle(buf, path, what):
    off, p = _varint(buf, 0, path, what)
    size, _ = _varint(buf, p, path, what)
    return off, size


class TFCheckpoint(LazyCheckpoint):
    """A TensorFlow tensor bundle, name -> array (data files memory-mapped)."""

    format = "tf"

    def __init__(self, path):
        p = os.fspath(path)
        prefix = p[: -len(".index")] if p.endswith(".index") else p
        m = MappedFile(prefix + ".index")
        try:
            entries = self._read_table(m)
        finally:
            m.close()
        ipath = m.path
        header = entries.pop(b"", None)
        num_shards, endianness = 1, 0
        if header is not None:
            for fno, _, v in _fields(header, ipath, "BundleHeaderProto"):
                if fno == 1:
                    num_shards = v
                elif fno == 2:
                    endianness = v
        if endianness != 0:
            raise fail(ipath, "bundle header says BIG endian: big-endian checkpoints are not supported")
        if not 1 <= num_shards <= 100_000:
            raise fail(ipath, f"num_shards {num_shards} out of range")
        self._maps, self._recs, infos = {}, {}, {}
        try:
            for key, val in entries.items():
                name = key.decode("utf-8", errors="replace")
                dtype, dims, shard, offset, size, sliced = 0, [], 0, 0, 0, False
                for fno, _, v in _fields(val, ipath, f"entry {name!r}"):
                    if fno == 1:
                        dtype = v
                    elif fno == 2:
                        for f2, _, d in _fields(v, ipath, f"entry {name!r} shape"):
                            if f2 == 2:
                                size_d = 0
                                for f3, _, s in _fields(d, ipath, f"entry {name!r} dim"):
                                    if f3 == 1:
                                        size_d = _signed64(s)
                                dims.append(size_d)
                    elif fno == 3:
                        shard = v
                    elif fno == 4:
                        offset = v
                    elif fno == 5:
                        size = v
                    elif fno == 7:
                        sliced = True
                if sliced:
                    raise fail(ipath, f"tensor {name!r} is a partitioned variable (slices); not supported")
                if dtype not in TF_DTYPES:
                    raise fail(ipath, f"tensor {name!r}: DataType {dtype} is not supported (string and "
                                      "resource tensors cannot be arrays)")
                tname, dt = TF_DTYPES[dtype]
                n = checked_numel(dims, ipath, f"tensor {name!r}")
                if n * dt.itemsize != size or offset > MAX_INDEX:
                    raise fail(ipath, f"tensor {name!r}: {size} bytes stored, {tname} x {dims} needs {n * dt.itemsize}")
                if shard >= num_shards:
                    raise fail(ipath, f"tensor {name!r}: shard {shard} of {num_shards}")
                dm = self._maps.get(shard)
                if dm is None:
                    dm = self._maps[shard] = MappedFile(f"{prefix}.data-{shard:05d}-of-{num_shards:05d}")
                dm.view(offset, size, f"tensor {name!r}")
                self._recs[name] = (dm, offset)
                infos[name] = TensorInfo(name, dt, tuple(dims), size, tname)
        except BaseException:
            for dm in self._maps.values():
                dm.close()
            raise
        super().__init__(prefix, infos, {"num_shards": num_shards})
        self._closers += [dm.close for dm in self._maps.values()]

    @staticmethod
    def _read_table(m):
        if m.size < 48:
            raise fail(m.path, f"file of {m.size} bytes is too short for a table footer")
        footer = bytes(m.view(m.size - 48, 48, "footer"))
        (magic,) = struct.unpack_from("<Q", footer, 40)
        if magic != TABLE_MAGIC:
            raise fail(m.path, f"wrong table magic {magic:#x} (expected {TABLE_MAGIC:#x})")
        _, p = _varint(footer, 0, m.path, "footer")
        _, p = _varint(footer, p, m.path, "footer")
        ioff, p = _varint(footer, p, m.path, "footer")
        isize, _ = _varint(footer, p, m.path, "footer")
        entries = {}
        total = 0
        for _, handle in _block(m, ioff, isize, "index block"):
            off, size = _handle(handle, m.path, "block handle")
            # the blocks of a table are disjoint: an index naming one block many
            # times would make the work quadratic in the file's size
            total += size + 5
            if total > m.size:
                raise fail(m.path, f"index names {total} bytes of data blocks in a {m.size}-byte file "
                                   "(blocks repeated or overlapping)")
            for k, v in _block(m, off, size, "data block"):
                if k in entries:
                    raise fail(m.path, f"key {k!r} appears twice")
                entries[k] = v
        return entries

    def _read(self, name):
        dm, off = self._recs[name]
        info = self._infos[name]
        return np.frombuffer(dm.view(off, info.nbytes, f"tensor {name!r}"), dtype=info.dtype).reshape(info.shape)


def open_tf(path) -> TFCheckpoint:
    """Open a TensorFlow checkpoint by prefix (``model.ckpt``) or its ``.index`` file.

    Notes
    -----
    **Formula**: values bit for bit from ``data-*`` at each entry's offset.
    **Reference**: tensorflow/core/util/tensor_bundle/tensor_bundle.cc (BundleReader),
    tensorflow/core/lib/io/format.cc and block.cc (table layout),
    tensorflow/core/protobuf/tensor_bundle.proto.
    """
    if not isinstance(path, str | os.PathLike):
        raise RefquantError(f"path={path!r}; expected a path")
    return TFCheckpoint(path)
