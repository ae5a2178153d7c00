"""safetensors: refquant's own strict reader and writer.

File layout (huggingface/safetensors ``safetensors/src/tensor.rs``,
``SafeTensors::read_metadata`` / ``Metadata::validate`` / ``prepare``)::

    +----------------+---------------------------------+---------------------------+
    | u64 LE: n      | n bytes of UTF-8 JSON header    | byte buffer               |
    | (8 bytes)      | {"__metadata__": {str: str},    | tensors back to back,     |
    |                |  "name": {"dtype": "F32",       | data_offsets relative to  |
    |                |   "shape": [2, 3],              | the buffer's first byte   |
    |                |   "data_offsets": [b, e]}, ...} |                           |
    +----------------+---------------------------------+---------------------------+

Rules checked by the reader (each failure names the file and the rule):

* ``n <= 100_000_000`` (``MAX_HEADER_SIZE``) and ``8 + n <= file size``;
* the header is UTF-8 JSON, an object that starts with ``{`` (after any JSON
  whitespace: space, tab, LF, CR, which serde_json skips), no duplicate keys,
  no lone surrogate escapes (``"\\ud800"``) and no ``-0`` (serde_json, which
  safetensors parses with, refuses both: ``-0`` is a float to it),
  ``__metadata__`` maps str to str, every entry has ``dtype``, ``shape`` and
  ``data_offsets`` (other fields are ignored, as safetensors' serde struct
  ignores them). Departure: safetensors keeps the *last* of two tensors of the
  same name (serde builds a map), refquant refuses the file (duplicate fields
  *within* an entry both refuse);
* sorted by offsets the tensors tile the buffer: the first begins at 0, each
  begins where the previous ended, and the last ends at the end of the file (no
  gaps, no overlaps, no trailing bytes);
* ``end - begin == numel * bitsize / 8`` exactly, computed with Python integers
  and refused beyond 2**62 elements, so nothing is allocated for a lying header.

Sub-byte dtypes (``Dtype::bitsize``: F4 = 4 bits, F6_E2M3 / F6_E3M2 = 6 bits) are
stored packed, ``numel * bits`` a multiple of 8. The spec fixes only the sizes; the
bit order below is the one of PyTorch's ``float4_e2m1fn_x2`` (which safetensors'
torch API writes as ``F4`` with the last dimension doubled), extended LSB-first to
F6::

    F4, two codes per byte (element 2k in the low nibble):
        byte k:  [ e(2k+1) : bits 7..4 | e(2k) : bits 3..0 ]

    F6, four codes in three bytes, a little-endian bit stream (element i in
    stream bits 6i .. 6i+5):
        byte 0:  [ e1 bits 1..0 | e0 bits 5..0 ]
        byte 1:  [ e2 bits 3..0 | e1 bits 5..2 ]
        byte 2:  [ e3 bits 5..0 | e2 bits 5..4 ]

Those two dtypes are unpacked into one-code-per-byte ml_dtypes arrays on read (a
copy); every other dtype is a zero-copy view of the memory map.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .._errors import RefquantError
from ..kernels.packing import pack_nibbles, unpack_nibbles
from ._common import (
    SAFETENSORS_BITS,
    SAFETENSORS_DTYPES,
    LazyCheckpoint,
    MappedFile,
    TensorInfo,
    atomic_write,
    checked_numel,
    fail,
    is_being_read,
    safetensors_name_of,
)

__all__ = [
    "MAX_HEADER_SIZE",
    "SafetensorsCheckpoint",
    "open_safetensors",
    "parse_header",
    "save_safetensors",
    "pack_subbyte",
    "unpack_subbyte",
]

#: ``MAX_HEADER_SIZE`` of safetensors/src/tensor.rs.
MAX_HEADER_SIZE = 100_000_000
#: What serde_json (and RFC 8259) skips around a value.
JSON_WHITESPACE = " \t\n\r"


# ---------------------------------------------------------------------------
# sub-byte packing (layouts drawn in the module docstring)
# ---------------------------------------------------------------------------


def unpack_subbyte(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Unpack ``count`` codes of ``bits`` (4 or 6) bits from ``packed`` uint8 bytes.

    Returns a uint8 array of codes, LSB-first as drawn in the module docstring
    (4 bits: :func:`refquant.kernels.packing.unpack_nibbles`, ``order="low_first"``).
    """
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1)
    if bits == 4:
        return unpack_nibbles(packed, count, order="low_first")
    if bits == 6:
        b = packed.reshape(-1, 3).astype(np.uint8)
        out = np.empty((b.shape[0], 4), dtype=np.uint8)
        out[:, 0] = b[:, 0] & 0x3F
        out[:, 1] = (b[:, 0] >> 6) | ((b[:, 1] & 0x0F) << 2)
        out[:, 2] = (b[:, 1] >> 4) | ((b[:, 2] & 0x03) << 4)
        out[:, 3] = b[:, 2] >> 2
        return out.reshape(-1)[:count]
    raise RefquantError(f"bits={bits!r}; expected 4 or 6")


def pack_subbyte(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack uint8 ``codes`` (each < 2**bits) LSB-first; ``codes.size * bits % 8 == 0``."""
    c = np.asarray(codes, dtype=np.uint8).reshape(-1)
    if bits == 4:
        return pack_nibbles(c & 0x0F, order="low_first")
    if bits == 6:
        q = (c & 0x3F).reshape(-1, 4)
        out = np.empty((q.shape[0], 3), dtype=np.uint8)
        out[:, 0] = q[:, 0] | ((q[:, 1] & 0x03) << 6)
        out[:, 1] = (q[:, 1] >> 2) | ((q[:, 2] & 0x0F) << 4)
        out[:, 2] = (q[:, 2] >> 4) | (q[:, 3] << 2)
        return out.reshape(-1)
    raise RefquantError(f"bits={bits!r}; expected 4 or 6")


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


def _is_unicode(s: str) -> bool:
    """Whether ``s`` holds Unicode scalars only (a ``\\ud800`` escape decodes to a lone surrogate)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _no_duplicates(path):
    def hook(pairs):
        d = {}
        for k, v in pairs:
            if k in d:
                raise fail(path, f"header holds the key {k!r} twice")
            for x in (k, v):
                if isinstance(x, str) and not _is_unicode(x):
                    # serde_json refuses lone surrogate escapes
                    raise fail(path, f"header string {x!r:.60} holds a lone surrogate escape")
            d[k] = v
        return d

    return hook


def _json_int(s: str):
    # serde_json reads "-0" as the float -0.0 (no usize): refused as a non-integer
    return -0.0 if s == "-0" else int(s)


def parse_header(raw: bytes, file_size: int, path="<bytes>"):
    """Validate a safetensors header; return ``(header_len, metadata, infos, offsets)``.

    ``raw`` holds at least the first ``8 + n`` bytes of the file (or all of it);
    ``file_size`` is the size of the whole file. ``offsets[name]`` is the absolute
    byte offset of the tensor's data in the file.
    """
    if file_size < 8 or len(raw) < 8:
        raise fail(path, f"file of {file_size} bytes is too short for a safetensors header")
    (n,) = struct.unpack("<Q", bytes(raw[:8]))
    if n > MAX_HEADER_SIZE:
        raise fail(path, f"header length {n} exceeds the {MAX_HEADER_SIZE}-byte limit")
    if 8 + n > file_size or 8 + n > len(raw):
        raise fail(path, f"header length {n} runs past the end of the file ({file_size} bytes): truncated")
    try:
        text = bytes(raw[8 : 8 + n]).decode("utf-8")
    except UnicodeDecodeError as e:
        raise fail(path, f"header is not UTF-8 ({e.reason} at byte {8 + e.start})") from None
    # serde_json skips JSON whitespace (space, tab, LF, CR) before the object, and
    # the crate's own tests read b"\t\n{}\r " as an empty header; form feed and
    # vertical tab are not JSON whitespace and safetensors refuses them
    if not text.lstrip(JSON_WHITESPACE).startswith("{"):
        raise fail(path, "header does not start with '{' (after JSON whitespace)")
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates(path), parse_int=_json_int)
    except RefquantError:
        raise
    except (ValueError, RecursionError) as e:
        raise fail(path, f"header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise fail(path, "header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise fail(path, "__metadata__ must map strings to strings")
    entries = []
    for name, e in header.items():
        if not isinstance(e, dict) or not {"dtype", "shape", "data_offsets"} <= set(e):
            raise fail(
                path,
                f"tensor {name!r}: entry {e!r:.200} must hold dtype, shape and data_offsets",
            )
        dt = e["dtype"]
        if not isinstance(dt, str) or dt not in SAFETENSORS_DTYPES:
            raise fail(path, f"tensor {name!r}: unknown dtype {dt!r:.60}")
        numel = checked_numel(e["shape"], path, f"tensor {name!r}", SAFETENSORS_DTYPES[dt].itemsize)
        off = e["data_offsets"]
        if (
            not isinstance(off, list)
            or len(off) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in off)
            or off[0] > off[1]
        ):
            raise fail(path, f"tensor {name!r}: data_offsets {off!r:.80} is not [begin, end], 0 <= begin <= end")
        nbits = numel * SAFETENSORS_BITS[dt]
        if nbits % 8:
            raise fail(path, f"tensor {name!r}: {numel} elements of {dt} are not a whole number of bytes")
        if off[1] - off[0] != nbits // 8:
            raise fail(
                path,
                f"tensor {name!r}: data_offsets {off} span {off[1] - off[0]} bytes, but {dt} "
                f"x shape {e['shape']} needs {nbits // 8}",
            )
        entries.append((off[0], off[1], name, dt, tuple(e["shape"])))
    entries.sort(key=lambda t: (t[0], t[1]))
    pos = 0
    for b, end, name, _, _ in entries:
        if b != pos:
            what = "overlaps the previous tensor" if b < pos else f"leaves a gap of {b - pos} bytes"
            raise fail(path, f"tensor {name!r} begins at buffer byte {b}: {what}")
        pos = end
    if 8 + n + pos != file_size:
        if 8 + n + pos > file_size:
            raise fail(path, f"tensors need {8 + n + pos} bytes but the file has {file_size}: truncated")
        raise fail(path, f"{file_size - 8 - n - pos} trailing bytes after the last tensor")
    infos, offsets = {}, {}
    for b, end, name, dt, shape in entries:
        infos[name] = TensorInfo(name, SAFETENSORS_DTYPES[dt], shape, end - b, dt)
        offsets[name] = 8 + n + b
    return n, metadata, infos, offsets


class SafetensorsCheckpoint(LazyCheckpoint):
    """A safetensors file: header parsed and validated at open, data memory-mapped."""

    format = "safetensors"

    def __init__(self, path):
        m = MappedFile(path)
        try:
            head = m.view(0, min(m.size, 8), "header length")
            if len(head) == 8:
                (n,) = struct.unpack("<Q", bytes(head))
                raw = m.view(0, min(m.size, 8 + min(n, MAX_HEADER_SIZE)), "header")
            else:
                raw = head
            _, metadata, infos, self._offsets = parse_header(raw, m.size, m.path)
        except BaseException:
            m.close()
            raise
        super().__init__(path, infos, metadata)
        self._file = m
        self._closers.append(m.close)

    def _read(self, name):
        info = self._infos[name]
        buf = self._file.view(self._offsets[name], info.nbytes, f"tensor {name!r}")
        bits = SAFETENSORS_BITS[info.stored_dtype]
        if bits in (4, 6):
            codes = unpack_subbyte(np.frombuffer(buf, np.uint8), bits, info.numel)
            return codes.view(info.dtype).reshape(info.shape)
        return np.frombuffer(buf, dtype=info.dtype).reshape(info.shape)


def open_safetensors(path) -> SafetensorsCheckpoint:
    """Open a safetensors file lazily (header read and validated, data memory-mapped).

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    SafetensorsCheckpoint

    Notes
    -----
    **Formula**: tensor ``t`` with dtype of :math:`b` bits and shape
    :math:`(d_1..d_k)` occupies exactly :math:`b \\prod_i d_i / 8` bytes at
    :math:`8 + n + \\text{begin}_t`. Nothing is rounded; values are returned bit for bit.

    **Reference**: huggingface/safetensors ``safetensors/src/tensor.rs``
    (``SafeTensors::read_metadata``, ``Metadata::validate``, ``Dtype::bitsize``).
    """
    return SafetensorsCheckpoint(path)


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------


def _prepare(tensors: Mapping):
    if not isinstance(tensors, Mapping):
        raise RefquantError(f"tensors must be a mapping name -> array, got {type(tensors).__name__}")
    rows = []
    for name, a in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise RefquantError(f"tensor name {name!r} must be a str other than '__metadata__'")
        if not _is_unicode(name):
            raise RefquantError(f"tensor name {name!r} holds a lone surrogate; expected Unicode text")
        try:
            a = np.asarray(a)
        except (ValueError, TypeError) as e:
            raise RefquantError(f"tensor {name!r} is not an array: {e}") from None
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        dt = safetensors_name_of(a.dtype)
        bits = SAFETENSORS_BITS[dt]
        if (a.size * bits) % 8:
            raise RefquantError(
                f"tensor {name!r}: {a.size} elements of {dt} ({bits} bits) do not fill whole "
                "bytes; safetensors needs numel * bits % 8 == 0"
            )
        rows.append((name, dt, a))
    # widest dtype first, then by name (keeps every tensor aligned to its itemsize,
    # like safetensors' own ``prepare``)
    rows.sort(key=lambda r: (-SAFETENSORS_BITS[r[1]], r[0]))
    return rows


def _payload(dt, a):
    bits = SAFETENSORS_BITS[dt]
    if bits in (4, 6):
        return pack_subbyte(np.ascontiguousarray(a).reshape(-1).view(np.uint8), bits)
    return np.ascontiguousarray(a)


def _header_bytes(rows, metadata) -> bytes:
    """The padded JSON header of one file; refused beyond ``MAX_HEADER_SIZE``.

    safetensors (and refquant's reader) refuse a header over 100 MB, so a file
    with one would be written only to be unreadable: it is refused before any
    file is created.
    """
    # a lower bound first (every character is at least one UTF-8 byte), so a 100 MB
    # metadata value is refused without serialising it
    floor = sum(len(k) + len(v) for k, v in (metadata or {}).items()) + sum(len(r[0]) for r in rows)
    if floor > MAX_HEADER_SIZE:
        raise RefquantError(
            f"the safetensors header would take more than {floor} bytes (metadata and {len(rows)} "
            f"tensor entries); safetensors reads at most {MAX_HEADER_SIZE} (MAX_HEADER_SIZE): store "
            "large values as tensors, not metadata"
        )
    header = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    off = 0
    for name, dt, a in rows:
        nbytes = a.size * SAFETENSORS_BITS[dt] // 8
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + nbytes]}
        off += nbytes
    hb = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    hb += b" " * (-len(hb) % 8)  # align the buffer to 8 bytes with spaces
    if len(hb) > MAX_HEADER_SIZE:
        raise RefquantError(
            f"the safetensors header would take {len(hb)} bytes (metadata and {len(rows)} tensor "
            f"entries); safetensors reads at most {MAX_HEADER_SIZE} (MAX_HEADER_SIZE): store large "
            "values as tensors, not metadata"
        )
    return hb


def _write_one(rows, metadata, f, hb=None):
    if hb is None:
        hb = _header_bytes(rows, metadata)
    f.write(struct.pack("<Q", len(hb)))
    f.write(hb)
    for _, dt, a in rows:
        p = _payload(dt, a)
        if p.size:
            f.write(memoryview(p.reshape(-1).view(np.uint8)))


def _check_metadata(metadata):
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise RefquantError(f"metadata must map str to str, got {metadata!r:.200}")
    for k, v in metadata.items():
        if not (_is_unicode(k) and _is_unicode(v)):
            raise RefquantError(f"metadata entry {k!r}: {v!r:.60} holds a lone surrogate; expected Unicode text")
    return dict(metadata)


def save_safetensors(tensors, path, *, metadata=None, overwrite=False, max_shard_size=None):
    """Write ``tensors`` (name -> array) as safetensors; optionally sharded with an index.

    Parameters
    ----------
    tensors : mapping of str to array_like
        Every dtype of the spec: bool, (u)int8-64, float16/32/64, complex64,
        ml_dtypes bfloat16, float8_e4m3fn / e5m2 / e4m3fnuz / e5m2fnuz / e8m0fnu,
        float6_e2m3fn / e3m2fn and float4_e2m1fn (the last three packed).
    path : str or os.PathLike
        The file; with ``max_shard_size`` the index file
        (``model.safetensors.index.json``), the shards written beside it as
        ``model-00001-of-00003.safetensors``.
    metadata : mapping of str to str, optional
        Written as ``__metadata__`` (into every shard when sharding).
    overwrite : bool
        Replace existing files; refused by default.
    max_shard_size : int, optional
        Largest data size of one shard in bytes (a bigger single tensor gets a shard
        of its own).

    Notes
    -----
    **Formula**: the header is padded with spaces to :math:`n \\equiv 0 \\pmod 8`;
    tensors follow widest dtype first, then by name, back to back.

    **Reference**: safetensors/src/tensor.rs ``prepare`` (8-byte alignment with
    spaces); the index layout of ``huggingface_hub.save_torch_state_dict``
    (``{"metadata": {"total_size": n}, "weight_map": {name: file}}``).
    """
    metadata = _check_metadata(metadata)
    rows = _prepare(tensors)
    if max_shard_size is None:
        hb = _header_bytes(rows, metadata)  # refused before any file exists
        return atomic_write(path, lambda f: _write_one(rows, metadata, f, hb), overwrite=overwrite)
    if isinstance(max_shard_size, bool) or not isinstance(max_shard_size, int) or max_shard_size < 1:
        raise RefquantError(f"max_shard_size={max_shard_size!r}; expected a positive int of bytes")
    path = Path(path)
    suffix = ".safetensors.index.json"
    if not path.name.endswith(suffix):
        raise RefquantError(f"path {os.fspath(path)!r}: a sharded save names the index file (*{suffix})")
    stem = path.name[: -len(suffix)]
    shards, cur, size = [], [], 0
    for r in rows:
        nb = r[2].size * SAFETENSORS_BITS[r[1]] // 8
        if cur and size + nb > max_shard_size:
            shards.append(cur)
            cur, size = [], 0
        cur.append(r)
        size += nb
    if cur or not shards:
        shards.append(cur)
    names = [f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    headers = [_header_bytes(shard, metadata) for shard in shards]  # all refused before any write
    # every target (shards and index) is checked before anything is written
    for target in [path.parent / nm for nm in names] + [path]:
        if target.is_dir():
            raise RefquantError(f"path {os.fspath(target)!r} is a directory; expected a file name")
        if target.exists() and not overwrite:
            raise RefquantError(f"path {os.fspath(target)!r} exists; pass overwrite=True to replace it")
        if target.exists() and is_being_read(target):
            raise RefquantError(f"path {os.fspath(target)!r} is an input still open for reading; "
                                "write elsewhere or close it first")
    weight_map, total, written = {}, 0, []
    try:
        for nm, shard, hb in zip(names, shards, headers, strict=True):
            atomic_write(path.parent / nm, lambda f, s=shard, h=hb: _write_one(s, metadata, f, h),
                         overwrite=overwrite)
            written.append(path.parent / nm)
            for name, dt, a in shard:
                weight_map[name] = nm
                total += a.size * SAFETENSORS_BITS[dt] // 8
    except BaseException:
        for w in written:  # no partial output: the shards of this call go
            w.unlink(missing_ok=True)
        raise
    index = {"metadata": {"total_size": total, **metadata}, "weight_map": dict(sorted(weight_map.items()))}
    text = json.dumps(index, indent=2).encode("utf-8")
    try:
        return atomic_write(path, lambda f: f.write(text), overwrite=overwrite)
    except BaseException:
        for w in written:
            w.unlink(missing_ok=True)
        raise
