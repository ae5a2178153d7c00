"""GGUF (llama.cpp): a strict lazy reader, and a writer through the ``gguf`` package.

Layout (ggml-org/ggml ``docs/gguf.md``; llama.cpp ``ggml/src/gguf.cpp``)::

    "GGUF" | u32 version (2 or 3) | u64 n_tensors | u64 n_kv
    n_kv x  { string key | u32 value type | value }          string = u64 length + UTF-8
    n_tensors x { string name | u32 n_dims (<= 4) | u64 ne[n_dims] | u32 ggml type | u64 offset }
    padding to general.alignment (default 32)
    tensor data: each at data_start + offset, offset a multiple of the alignment

Dimension order: ``ne[0]`` is the innermost (fastest-varying) dimension, so the
NumPy shape is ``ne`` reversed (gguf-py's GGUFReader does the same). A quantized
tensor of type T (block size B, type size S) stores ``ne[0] / B`` blocks of S
bytes per row; refquant returns it as raw ``uint8`` blocks of shape
``(*reversed(ne[1:]), ne[0] / B * S)`` (memory-mapped) with ``scheme="ggml:T"``,
and :meth:`GGUFCheckpoint.dequantize` decodes it with refquant's own
:mod:`refquant.formats.ggml`.

Every count (string lengths, array lengths, n_tensors, n_kv, dims) is checked
against the bytes left in the file before it is used; nothing is allocated for
a count the file cannot back.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Mapping
from pathlib import Path

import ml_dtypes
import numpy as np

from .._errors import RefquantError
from ._common import (
    LazyCheckpoint,
    MappedFile,
    TensorInfo,
    atomic_target,
    checked_numel,
    fail,
)

__all__ = ["GGUFCheckpoint", "open_gguf", "save_gguf", "GGML_PLAIN_TYPES", "ggml_type_table"]

#: ggml type id -> (name, numpy dtype) for unquantized types (ggml.h ``enum ggml_type``).
GGML_PLAIN_TYPES = {
    0: ("F32", np.dtype("<f4")),
    1: ("F16", np.dtype("<f2")),
    24: ("I8", np.dtype("i1")),
    25: ("I16", np.dtype("<i2")),
    26: ("I32", np.dtype("<i4")),
    27: ("I64", np.dtype("<i8")),
    28: ("F64", np.dtype("<f8")),
    30: ("BF16", np.dtype(ml_dtypes.bfloat16)),
}

# GGUF metadata value types (gguf.md ``gguf_metadata_value_type``)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@functools.lru_cache(maxsize=1)
def ggml_type_table() -> dict[int, tuple[str, int, int]]:
    """ggml type id -> (NAME, block size, type size) for quantized types.

    refquant's own table (:data:`refquant.formats.ggml.GGML_BLOCK_TABLE`), extended
    by the ``gguf`` package's ``GGML_QUANT_SIZES`` when installed (IQ types).
    """
    from ..formats.ggml import GGML_BLOCK_TABLE

    table = {}
    try:
        import gguf

        for t, (bs, ts) in gguf.GGML_QUANT_SIZES.items():
            if int(t) not in GGML_PLAIN_TYPES:
                table[int(t)] = (t.name, bs, ts)
    except ImportError:
        pass
    for name, (tid, bs, ts) in GGML_BLOCK_TABLE.items():
        table[tid] = ("MXFP4" if name == "ggml_mxfp4" else name.upper(), bs, ts)
    return table


class _Cursor:
    def __init__(self, m: MappedFile):
        self.m, self.pos = m, 0

    def left(self):
        return self.m.size - self.pos

    def take(self, n, what):
        b = self.m.view(self.pos, n, what)
        self.pos += n
        return b

    def unpack(self, fmt, what):
        s = struct.calcsize(fmt)
        return struct.unpack(fmt, bytes(self.take(s, what)))[0]

    def string(self, what):
        n = self.unpack("<Q", what)
        if n > self.left():
            raise fail(self.m.path, f"{what}: string of {n} bytes runs past the end of the file")
        try:
            return bytes(self.take(n, what)).decode("utf-8")
        except UnicodeDecodeError:
            raise fail(self.m.path, f"{what}: string is not UTF-8") from None

    def value(self, vtype, what, depth=0):
        if vtype in _SCALARS:
            v = self.unpack(_SCALARS[vtype], what)
            return bool(v) if vtype == 7 else v
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            if depth > 2:
                raise fail(self.m.path, f"{what}: arrays nested deeper than 2")
            etype = self.unpack("<I", what)
            n = self.unpack("<Q", what)
            if etype in _SCALARS:
                size = struct.calcsize(_SCALARS[etype])
                if n * size > self.left():
                    raise fail(self.m.path, f"{what}: array of {n} values runs past the end of the file")
                a = np.frombuffer(self.take(n * size, what), dtype=np.dtype(_SCALARS[etype]))
                return a.astype(bool) if etype == 7 else a.copy()
            if etype not in (_STRING, _ARRAY):
                raise fail(self.m.path, f"{what}: unknown array element type {etype}")
            if n * 8 > self.left():  # every string / array element takes >= 8 bytes
                raise fail(self.m.path, f"{what}: array of {n} values runs past the end of the file")
            return [self.value(etype, what, depth + 1) for _ in range(n)]
        raise fail(self.m.path, f"{what}: unknown value type {vtype}")


class GGUFCheckpoint(LazyCheckpoint):
    """A GGUF file: metadata parsed, tensors memory-mapped (quantized ones as raw blocks)."""

    format = "gguf"

    def __init__(self, path):
        m = MappedFile(path)
        try:
            infos, meta = self._parse(m)
        except BaseException:
            m.close()
            raise
        super().__init__(path, infos, meta)
        self._m = m
        self._closers.append(m.close)

    def _parse(self, m):
        path = m.path
        c = _Cursor(m)
        if m.size < 4 or bytes(m.view(0, 4)) != b"GGUF":
            raise fail(path, "wrong magic (expected b'GGUF')")
        c.pos = 4
        version = c.unpack("<I", "version")
        if version not in (2, 3):
            hint = " (big-endian file?)" if version > 0xFFFF else ""
            raise fail(path, f"unsupported GGUF version {version}{hint}; expected 2 or 3")
        n_tensors = c.unpack("<Q", "tensor count")
        n_kv = c.unpack("<Q", "metadata count")
        if n_kv * 13 > c.left() or n_tensors * 24 > c.left():
            raise fail(path, f"{n_tensors} tensors / {n_kv} metadata entries cannot fit in {m.size} bytes")
        meta = {"gguf.version": version}
        for i in range(n_kv):
            key = c.string(f"metadata key {i}")
            vtype = c.unpack("<I", f"metadata {key!r} type")
            if key in meta:
                raise fail(path, f"metadata key {key!r} appears twice")
            if key == "general.alignment" and vtype != 4:
                # gguf.md types it uint32; gguf-py refuses other types, ggml asserts
                raise fail(path, f"general.alignment must be a uint32 (value type 4), not value type {vtype}")
            meta[key] = c.value(vtype, f"metadata {key!r}")
        align = meta.get("general.alignment", 32)
        if isinstance(align, bool) or not isinstance(align, int) or align <= 0 or align & (align - 1) or align > 1 << 20:
            raise fail(path, f"general.alignment {align!r} is not a power of two in [1, 2**20]")
        quant = ggml_type_table()
        raw_infos = []
        names = set()
        for i in range(n_tensors):
            name = c.string(f"tensor {i} name")
            if name in names:
                raise fail(path, f"tensor {name!r} appears twice")
            names.add(name)
            nd = c.unpack("<I", f"tensor {name!r} n_dims")
            if nd > 4:
                raise fail(path, f"tensor {name!r}: {nd} dimensions (GGML_MAX_DIMS is 4)")
            ne = [c.unpack("<Q", f"tensor {name!r} dims") for _ in range(nd)]
            ttype = c.unpack("<I", f"tensor {name!r} type")
            off = c.unpack("<Q", f"tensor {name!r} offset")
            raw_infos.append((name, ne, ttype, off))
        data_start = -(-c.pos // align) * align
        infos, self._recs = {}, {}
        spans = []
        for name, ne, ttype, off in raw_infos:
            numel = checked_numel(ne, path, f"tensor {name!r}")
            shape = tuple(reversed(ne))
            if ttype in GGML_PLAIN_TYPES:
                tname, dt = GGML_PLAIN_TYPES[ttype]
                nbytes = numel * dt.itemsize
                out_shape, scheme, logical = shape, None, None
            elif ttype in quant:
                tname, bs, ts = quant[ttype]
                ne0 = ne[0] if ne else 1  # ggml: missing dims are 1
                if ne0 % bs:
                    raise fail(path, f"tensor {name!r}: row of {ne0} is not a multiple of {tname} block size {bs}")
                row = ne0 // bs * ts
                nbytes = (numel // bs) * ts
                dt, out_shape, scheme, logical = np.dtype("u1"), (*shape[:-1], row), f"ggml:{tname}", shape
            else:
                raise fail(path, f"tensor {name!r}: unknown ggml type {ttype}")
            if off % align:
                raise fail(path, f"tensor {name!r}: offset {off} is not a multiple of the alignment {align}")
            if data_start + off + nbytes > m.size:
                raise fail(path, f"tensor {name!r}: data [{off}, {off + nbytes}) runs past the end of the file (truncated)")
            spans.append((off, off + nbytes, name))
            infos[name] = TensorInfo(name, dt, out_shape, nbytes, tname, scheme, logical)
            self._recs[name] = (data_start + off, ttype)
        spans.sort()
        for (_, e0, n0), (b1, _, n1) in zip(spans, spans[1:], strict=False):
            if b1 < e0:
                raise fail(path, f"tensors {n0!r} and {n1!r} overlap")
        return infos, meta

    def _read(self, name):
        info = self._infos[name]
        off, _ = self._recs[name]
        return np.frombuffer(self._m.view(off, info.nbytes, f"tensor {name!r}"), dtype=info.dtype).reshape(info.shape)

    def dequantize(self, name) -> np.ndarray:
        """Tensor ``name`` as float32 in its logical shape (plain types: converted exactly).

        Block formats are decoded by :mod:`refquant.formats.ggml` (bit-exact with
        ggml's ``dequantize_row_<type>``).
        """
        info = self.info(name)
        a = self[name]
        if info.scheme is None:
            return a.astype(np.float32)
        from ..formats import get_format

        tname = info.stored_dtype.lower()
        try:
            fmt = get_format("ggml_mxfp4" if tname == "mxfp4" else tname)
        except (RefquantError, KeyError):
            raise RefquantError(f"{self.path}: tensor {name!r}: refquant has no decoder for ggml type "
                                f"{info.stored_dtype}") from None
        return fmt.dequantize_blocks(a.reshape(-1, fmt.type_size)).reshape(info.logical_shape)


def open_gguf(path) -> GGUFCheckpoint:
    """Open a GGUF file lazily (metadata parsed, tensors memory-mapped).

    Notes
    -----
    **Formula**: tensor data at :math:`\\lceil p / a \\rceil a + \\text{offset}`
    (:math:`p` = end of the tensor infos, :math:`a` = alignment); NumPy shape =
    reversed ``ne``. Quantized blocks are returned unchanged.

    **Reference**: ggml-org/ggml docs/gguf.md; gguf-py ``gguf/gguf_reader.py``
    (the same dimension reversal and raw-block shape).
    """
    return GGUFCheckpoint(path)


def _gguf_value_kind(v, key):
    """gguf-py's ``GGUFValueType.get_type`` classes, checked so that packing cannot fail."""
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise RefquantError(f"metadata {key!r}: string {v!r:.60} is not Unicode text") from None
        return "str"
    if isinstance(v, bytes | bytearray):
        try:  # GGUF strings are UTF-8: the reader refuses any other bytes
            bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            raise RefquantError(f"metadata {key!r}: bytes {bytes(v)!r:.60} are not UTF-8 text") from None
        return "str"
    if isinstance(v, float):
        return "float"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        # gguf-py types every Python int as INT32
        if not -(2**31) <= v < 2**31:
            raise RefquantError(f"metadata {key!r}: {v} is outside int32, the type gguf-py gives an int")
        return "int"
    if isinstance(v, list):
        if not v:
            raise RefquantError(f"metadata {key!r}: an empty list cannot be stored (GGUF arrays are typed)")
        kinds = {_gguf_value_kind(x, key) for x in v}
        if len(kinds) != 1:
            raise RefquantError(f"metadata {key!r}: list items must all have the same type, got {sorted(kinds)}")
        return "list"
    raise RefquantError(f"metadata {key!r}: value of type {type(v).__name__}; expected str, bool, int, "
                        "float or a list of one of those")


def _check_gguf_inputs(tensors, metadata):
    if not isinstance(tensors, Mapping):
        raise RefquantError(f"tensors must be a mapping name -> array, got {type(tensors).__name__}")
    arrays = {}
    for name, a in tensors.items():
        if not isinstance(name, str):
            raise RefquantError(f"tensor name {name!r} must be a str")
        if any(0xD800 <= ord(c) <= 0xDFFF for c in name):  # GGUF strings are UTF-8
            raise RefquantError(f"tensor name {name!r:.60} holds a lone surrogate; expected Unicode text")
        try:
            a = np.asarray(a)
        except (ValueError, TypeError) as e:
            raise RefquantError(f"tensor {name!r} is not an array: {e}") from None
        if a.ndim > 4:
            raise RefquantError(f"tensor {name!r} has {a.ndim} dims; GGUF holds at most 4 (GGML_MAX_DIMS)")
        arrays[name] = a
    meta = {}
    for k, v in dict(metadata or {}).items():
        if not isinstance(k, str):
            raise RefquantError(f"metadata key {k!r} must be a str")
        if isinstance(v, np.ndarray):
            v = v.tolist()
        _gguf_value_kind(v, k)
        meta[k] = v
    return arrays, meta


def save_gguf(tensors, path, *, metadata=None, overwrite=False, arch="refquant", types=None):
    """Write tensors and metadata as GGUF through the ``gguf`` package's GGUFWriter.

    Parameters
    ----------
    tensors : mapping of str to ndarray
        Plain arrays (float32, float16, bfloat16, float64, int8/16/32/64), or raw
        ggml blocks (uint8, shape ``(..., n_blocks * type_size)``) whose type is
        named in ``types``.
    path : str or os.PathLike
    metadata : mapping of str to value, optional
        Extra key/values (str, bool, int, float, non-empty lists of one of those),
        typed by gguf-py's ``GGUFValueType.get_type``: an int is stored as INT32
        (outside its range: RefquantError) and a float as FLOAT32 (rounded).
    overwrite : bool
    arch : str
        ``general.architecture``.
    types : mapping of str to str, optional
        Tensor name -> ggml type name (``"Q4_0"``) for raw-block tensors.

    Notes
    -----
    **Formula**: values are written bit for bit. **Reference**: gguf-py
    ``gguf/gguf_writer.py`` (``GGUFWriter.add_tensor(raw_dtype=...)``).
    """
    tensors, metadata = _check_gguf_inputs(tensors, metadata)
    try:
        import gguf
    except ImportError:
        raise RefquantError("writing GGUF needs the gguf package: pip install 'refquant[gguf]'") from None
    path = Path(path)
    types = dict(types or {})
    plain = {np.dtype("<f4"): "F32", np.dtype("<f2"): "F16", np.dtype(ml_dtypes.bfloat16): "BF16",
             np.dtype("<f8"): "F64", np.dtype("i1"): "I8", np.dtype("<i2"): "I16",
             np.dtype("<i4"): "I32", np.dtype("<i8"): "I64"}
    with atomic_target(path, overwrite=overwrite) as tmp:
        w = gguf.GGUFWriter(tmp, arch)
        for k, v in metadata.items():
            w.add_key_value(k, v, gguf.GGUFValueType.get_type(v))
        for name, a in tensors.items():
            a = np.asarray(a)
            if name in types:
                try:
                    qt = gguf.GGMLQuantizationType[types[name].upper()]
                except KeyError:
                    raise RefquantError(f"types[{name!r}]={types[name]!r} is not a ggml type name") from None
                _, ts = gguf.GGML_QUANT_SIZES[qt]
                if a.dtype != np.uint8 or a.ndim == 0 or a.shape[-1] % ts:
                    raise RefquantError(f"tensor {name!r}: raw {types[name]} blocks must be uint8 with the "
                                        f"last dimension a multiple of {ts}, got {a.dtype} {a.shape}")
                # gguf-py takes the byte shape and converts it (quant_shape_from_byte_shape)
                w.add_tensor(name, np.ascontiguousarray(a), raw_dtype=qt)
            elif a.dtype in plain:
                t = gguf.GGMLQuantizationType[plain[a.dtype]]
                arr = np.ascontiguousarray(a.view(np.uint16) if plain[a.dtype] == "BF16" else a)
                w.add_tensor(name, arr, raw_shape=a.shape if plain[a.dtype] == "BF16" else None,
                             raw_dtype=t if plain[a.dtype] == "BF16" else None)
            else:
                raise RefquantError(f"tensor {name!r}: dtype {a.dtype} has no ggml type; expected one of "
                                    f"{sorted(set(plain.values()))} or raw blocks named in types=")
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return path
