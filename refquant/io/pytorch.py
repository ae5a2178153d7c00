"""PyTorch checkpoints (``torch.save``) read without torch and without running pickle code.

Two containers (PyTorch ``torch/serialization.py``: ``_save`` / ``_legacy_save``,
``_load`` / ``_legacy_load``):

* **zip** (default since 1.6)::

      <top>/data.pkl            pickled object graph (protocol 2)
      <top>/byteorder           b"little" (absent in files before 1.10: little)
      <top>/data/<key>          raw bytes of storage <key>, stored (uncompressed),
                                each entry's data aligned to 64 bytes
      <top>/version, .format_version, .storage_alignment, .data/serialization_id

  A tensor in data.pkl is ``REDUCE(torch._utils._rebuild_tensor_v2, (storage,
  offset, size, stride, requires_grad, hooks[, metadata]))`` (``_v3`` adds the dtype,
  used with untyped storages), where ``storage`` is ``BINPERSID(("storage",
  <storage type>, key, location, numel))``. refquant computes each storage's data
  offset from the zip's local file header (30 bytes + name + extra field) and
  memory-maps it; compressed entries are read (decompressed) instead.

* **legacy** (``_use_new_zipfile_serialization=False``): five pickles back to back
  then the raw storages::

      pickle(0x1950a86a20f9469cfc6c)   magic number
      pickle(1001)                      protocol version
      pickle({"protocol_version", "little_endian", "type_sizes"})
      pickle(object graph)              persistent ids ("storage", type, key,
                                        location, numel, view_metadata)
      pickle([key, ...])                storage keys, in the order that follows
      for each key: u64 LE element count, then count * itemsize raw bytes

Pickles are interpreted by :func:`refquant.io._pickle.restricted_load` with the
allowlist below (a subset of ``torch/_weights_only_unpickler.py``
``_get_allowed_globals``): nothing is imported, nothing outside it is resolved.
Integrity: storage bytes equal numel x itemsize; sizes and strides are
non-negative ints; the largest element a view touches,
``offset + sum((size_i - 1) * stride_i)``, lies inside its storage; little endian
only.
"""

from __future__ import annotations

import re
import struct
import sys
import zipfile
from collections import Counter

import numpy as np

from .._errors import RefquantError
from ._common import (
    MAX_INDEX,
    TORCH_DTYPES,
    TORCH_STORAGE_DTYPES,
    LazyCheckpoint,
    MappedFile,
    TensorInfo,
    checked_numel,
    describe_value,
    fail,
)
from ._pickle import Allowed, AttrDict, check_hashable_depth, describe, restricted_load

__all__ = [
    "LEGACY_MAGIC",
    "LEGACY_PROTOCOL",
    "TORCH_REFUSAL_HINTS",
    "TorchZipCheckpoint",
    "TorchLegacyCheckpoint",
    "open_torch",
    "torch_allowlist",
]

#: ``MAGIC_NUMBER`` and ``PROTOCOL_VERSION`` of torch/serialization.py.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


class TorchDtype:
    __slots__ = ("name", "np")

    def __init__(self, name, npdtype):
        self.name, self.np = name, npdtype

    def __repr__(self):
        return f"torch.{self.name}"


class StorageType:
    __slots__ = ("name", "np")

    def __init__(self, name, npdtype):
        self.name, self.np = name, npdtype

    def __repr__(self):
        return f"torch.{self.name}"


class Storage:
    """A storage named by a persistent id; its bytes are located later."""

    __slots__ = ("key", "dtype", "nbytes", "location", "root", "root_offset", "typed")

    def __init__(self, key, dtype, nbytes, location, typed, root=None, root_offset=0):
        self.key, self.dtype, self.nbytes, self.location = key, dtype, nbytes, location
        self.typed, self.root, self.root_offset = typed, root, root_offset


class LazyTensor:
    """A tensor known by its storage, offset, size and stride; data not read."""

    __slots__ = ("storage", "offset", "size", "stride", "dtype", "dtype_name", "name")

    def __init__(self, storage, offset, size, stride, dtype, dtype_name):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride
        self.dtype, self.dtype_name, self.name = dtype, dtype_name, None

    def __repr__(self):
        return f"<tensor {self.dtype_name} {list(self.size)}>"

    def __sizeof__(self):
        # the size / stride tuples may be new (built from lists), counted by the
        # pickle's build budget
        return object.__sizeof__(self) + sys.getsizeof(self.size) + sys.getsizeof(self.stride)


_TORCH_MARK = object()  # torch.Tensor / Parameter as types for _rebuild_from_type_v2
#: What ``_rebuild_from_type_v2`` may call: the functions that build a tensor directly.
_REBUILDS = frozenset(f"torch._utils.{n}" for n in (
    "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
    "_rebuild_parameter_with_state"))


def _ints(x, what, path):
    if not isinstance(x, tuple | list):
        raise fail(path, f"pickle refused: {what} {describe(x)} is not a tuple of ints")
    for v in x:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v > MAX_INDEX:
            # describe_value, not repr: repr of a 100,000-deep tuple recurses past the
            # interpreter's limit, and of a 5,001-digit int hits the int-to-str limit
            raise fail(path, f"pickle refused: {what} {describe_value(x)} holds {describe(v)}; "
                             "expected ints in [0, 2**62]")
    return tuple(x)


_QUANTIZED = ("quantized tensors are not read; save q.int_repr() with q.q_scale() / "
              "q.q_per_channel_scales() and the zero points as plain tensors")
#: Why some globals that torch.load(weights_only=True) accepts are refused here.
TORCH_REFUSAL_HINTS = {
    "torch.complex32": "torch.complex32 (ComplexHalf) has no NumPy dtype",
    "torch.ComplexHalfStorage": "torch.complex32 (ComplexHalf) has no NumPy dtype",
    "torch._utils._rebuild_qtensor": _QUANTIZED,
    **{f"torch.{q}": _QUANTIZED for q in ("qint8", "quint8", "qint32", "quint4x2", "quint2x4",
                                         "per_tensor_affine", "per_channel_affine",
                                         "per_channel_affine_float_qparams")},
    "torch._utils._rebuild_sparse_tensor": "sparse tensors are not read; save to_dense() or "
                                           "the indices and values as plain tensors",
}


def torch_allowlist(path="<pickle>", on_storage_type=None) -> dict:
    """The globals a PyTorch pickle may name, mapped to refquant's stand-ins.

    Mirrors ``torch/_weights_only_unpickler.py`` ``_get_allowed_globals`` for what
    plain-tensor checkpoints use: OrderedDict, Counter, the tensor rebuild
    functions v1 / v2 / v3, Parameter and ``_rebuild_parameter(_with_state)``,
    ``_rebuild_from_type_v2``, torch.Size, torch.device, the dtypes, the storage
    types, ``_codecs.encode`` (bytes), builtins bytearray / set / complex.
    Quantized, sparse, nested and subclass tensors are not in it.
    """

    def make_tensor(storage, offset, size, stride, dtype: TorchDtype | None, how):
        if not isinstance(storage, Storage):
            raise fail(path, f"pickle refused: {how} with storage {describe(storage)}")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise fail(path, f"pickle refused: {how} with storage offset {describe(offset)}")
        size = _ints(size, "size", path)
        stride = _ints(stride, "stride", path)
        if len(size) != len(stride):
            raise fail(path, f"pickle refused: {how} size {list(size)} and stride {list(stride)} differ in length")
        if dtype is None:
            if not storage.typed:
                raise fail(path, f"pickle refused: {how} on an untyped storage without a dtype")
            npdt, dname = storage.dtype, _storage_dtype_name(storage.dtype)
        else:
            if not isinstance(dtype, TorchDtype):
                raise fail(path, f"pickle refused: {how} with dtype {describe(dtype)}")
            npdt, dname = dtype.np, dtype.name
            if storage.typed and storage.dtype != npdt:
                raise fail(path, f"pickle refused: {how} dtype {dname} on a {storage.dtype} storage")
        if storage.nbytes % npdt.itemsize:
            raise fail(path, f"storage {storage.key!r}: {storage.nbytes} bytes is not a multiple of "
                             f"{dname}'s {npdt.itemsize}")
        elems = storage.nbytes // npdt.itemsize
        numel = checked_numel(size, path, f"tensor on storage {storage.key!r}", npdt.itemsize)
        if numel:
            last = offset + sum((s - 1) * st for s, st in zip(size, stride, strict=True))
            if last >= elems:
                raise fail(path, f"tensor on storage {storage.key!r}: offset {offset}, size {list(size)}, "
                                 f"stride {list(stride)} reach element {last}, but the storage holds {elems}")
        return LazyTensor(storage, offset, size, stride, npdt, dname)

    def v1(storage, storage_offset, size, stride):
        return make_tensor(storage, storage_offset, size, stride, None, "_rebuild_tensor")

    def v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
        return make_tensor(storage, storage_offset, size, stride, None, "_rebuild_tensor_v2")

    def v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
        return make_tensor(storage, storage_offset, size, stride, dtype, "_rebuild_tensor_v3")

    def need_tensor(data, how):
        if not isinstance(data, LazyTensor):
            raise fail(path, f"pickle refused: {how} of {describe(data)}, which is not a tensor")
        return data

    def param(data, requires_grad=True, backward_hooks=None):
        return need_tensor(data, "_rebuild_parameter")

    def param_state(data, requires_grad, backward_hooks, state):
        return need_tensor(data, "_rebuild_parameter_with_state")

    def from_type(func, new_type, args, state):
        if new_type is not _TORCH_MARK:
            raise fail(path, f"pickle refused: _rebuild_from_type_v2 to type {describe(new_type)}")
        # torch._tensor.Tensor.__reduce_ex__ passes a tensor rebuild function here; only
        # those are accepted, never _rebuild_from_type_v2 itself (nesting it 3,000 deep
        # recursed through Python's stack)
        if not isinstance(func, Allowed) or func.name not in _REBUILDS or not isinstance(args, tuple):
            raise fail(path, f"pickle refused: _rebuild_from_type_v2 calling {describe(func)} "
                             f"(expected one of {sorted(_REBUILDS)})")
        return need_tensor(func.fn(*args), "_rebuild_from_type_v2")

    def odict(items=()):
        d = AttrDict()
        if isinstance(items, dict):  # Counter.__reduce__ passes (dict(self),)
            items = list(items.items())
        for kv in items:
            if not isinstance(kv, tuple | list) or len(kv) != 2:
                raise fail(path, f"pickle refused: OrderedDict item {describe(kv)}")
            check_hashable_depth(path, kv[0], "an OrderedDict key")
            d[kv[0]] = kv[1]
        return d

    def size_fn(dims=()):
        return _ints(dims, "torch.Size", path)

    def device(kind, index=None):
        if not isinstance(kind, str) or not (index is None or isinstance(index, int)):
            raise fail(path, f"pickle refused: torch.device({describe(kind)}, {describe(index)})")
        return kind if index is None else f"{kind}:{index}"

    def encode(s, encoding="utf-8"):
        if not isinstance(s, str) or encoding not in ("latin1", "latin-1"):
            raise fail(path, f"pickle refused: _codecs.encode({describe(s)}, {describe(encoding)})")
        return s.encode("latin-1")

    def barray(src=b"", *rest):
        if not isinstance(src, bytes) or rest:
            raise fail(path, f"pickle refused: bytearray({describe(src)}) (only from bytes)")
        return bytearray(src)

    def mkset(items=()):
        if not isinstance(items, list | tuple):
            raise fail(path, f"pickle refused: set({describe(items)})")
        for x in items:
            check_hashable_depth(path, x, "a set member")
        return set(items)

    def mkcomplex(re_=0.0, im=0.0):
        if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in (re_, im)):
            raise fail(path, f"pickle refused: complex({describe(re_)}, {describe(im)})")
        return complex(re_, im)

    rc = {
        "collections.OrderedDict": Allowed("collections.OrderedDict", odict, as_class=True),
        "collections.Counter": Allowed("collections.Counter", lambda *a: Counter(odict(*a)), as_class=True),
        "torch._utils._rebuild_tensor": Allowed("torch._utils._rebuild_tensor", v1),
        "torch._utils._rebuild_tensor_v2": Allowed("torch._utils._rebuild_tensor_v2", v2),
        "torch._utils._rebuild_tensor_v3": Allowed("torch._utils._rebuild_tensor_v3", v3),
        "torch._utils._rebuild_parameter": Allowed("torch._utils._rebuild_parameter", param),
        "torch._utils._rebuild_parameter_with_state": Allowed(
            "torch._utils._rebuild_parameter_with_state", param_state),
        "torch._tensor._rebuild_from_type_v2": Allowed("torch._tensor._rebuild_from_type_v2", from_type),
        "torch.nn.parameter.Parameter": _TORCH_MARK,
        "torch.Tensor": _TORCH_MARK,
        "torch.Size": Allowed("torch.Size", size_fn, as_class=True),
        "torch.device": Allowed("torch.device", device, as_class=True),
        "_codecs.encode": Allowed("_codecs.encode", encode),
        "builtins.bytearray": Allowed("builtins.bytearray", barray, as_class=True),
        "builtins.set": Allowed("builtins.set", mkset, as_class=True),
        "builtins.complex": Allowed("builtins.complex", mkcomplex, as_class=True),
    }
    for n, dt in TORCH_DTYPES.items():
        rc[f"torch.{n}"] = TorchDtype(n, dt)
    for n, dt in TORCH_STORAGE_DTYPES.items():
        st = StorageType(n, dt)
        rc[f"torch.{n}"] = st
        rc[f"torch.storage.{n}"] = st
    rc["torch.storage.TypedStorage"] = StorageType("TypedStorage", None)
    return rc


def _storage_dtype_name(npdt) -> str:
    for n, d in TORCH_DTYPES.items():
        if d == npdt:
            return n
    return str(npdt)


def _storage_from_type(stype, key, location, numel, path):
    if not isinstance(stype, StorageType) or stype.np is None:
        raise fail(path, f"pickle refused: persistent id names storage type {describe(stype)}")
    if not isinstance(key, str) or not isinstance(location, str):
        raise fail(path, f"pickle refused: persistent id key {describe(key)} / location {describe(location)}")
    if isinstance(numel, bool) or not isinstance(numel, int) or not 0 <= numel <= MAX_INDEX:
        raise fail(path, f"pickle refused: persistent id numel {describe(numel)}")
    typed = stype.name != "UntypedStorage"
    return Storage(key, stype.np, numel * stype.np.itemsize, location, typed)


def _flatten(obj, path, max_nodes=None, max_chars=None):
    """name -> LazyTensor and name -> plain value, dict keys joined with '.'.

    A container reached twice (shared, as torch.load returns it) is flattened under
    each of its names; one that contains itself is recorded as ``"<cycle>"``.
    Sharing can make the tree exponentially larger than the pickle (``t = (t, t)``
    forty times), so at most ``max_nodes`` nodes are visited; and a long key
    repeated through the memo (one 1 MB string as the key of many dicts) would
    make the names far larger than the file, so they hold at most ``max_chars``
    characters in all.
    """
    tensors, meta = {}, {}
    stack = [("", obj, 0)]
    on_path = set()  # ids of the containers that enclose the node being visited
    visited = chars = 0
    while stack:
        prefix, o, depth = stack.pop()
        if prefix is None:  # every child of container id ``o`` is done
            on_path.discard(o)
            continue
        visited += 1
        if max_nodes is not None and visited > max_nodes:
            raise fail(path, f"object graph flattens to more than {max_nodes} entries "
                             "(containers shared over and over)")
        if depth > 64:
            raise fail(path, f"object graph nested deeper than 64 levels at {prefix!r}")
        if isinstance(o, LazyTensor):
            name = prefix or "tensor"
            k = 2
            while name in tensors:
                name = f"{prefix}#{k}"
                k += 1
            tensors[name] = o
            continue
        if isinstance(o, dict | list | tuple):
            if id(o) in on_path:
                meta[prefix] = "<cycle>"
                continue
            on_path.add(id(o))
            stack.append((None, id(o), depth))
            items = o.items() if isinstance(o, dict) else enumerate(o)
            kids = []
            for k, v in items:
                if isinstance(k, int) and not isinstance(k, bool) and k.bit_length() > 128:
                    # str() of an int over 4,300 digits raises ValueError; no state dict
                    # has such a key
                    raise fail(path, f"a key at {prefix or 'the top'!r} is an int of {k.bit_length()} "
                                     "bits; expected a name")
                if isinstance(k, tuple | frozenset):
                    try:  # a tuple key holding a 5,001-digit int cannot be str()-ed
                        k = str(k)
                    except (ValueError, RecursionError):
                        k = describe_value(k)
                name = f"{prefix}.{k}" if prefix else str(k)
                chars += len(name)
                if max_chars is not None and chars > max_chars:
                    raise fail(path, f"object graph's names add up to more than {max_chars} characters "
                                     "(long keys repeated)")
                kids.append((name, v, depth + 1))
            if not kids and prefix:
                meta[prefix] = type(o)()
            stack.extend(reversed(kids))
            continue
        if isinstance(o, TorchDtype | StorageType):
            o = repr(o)
        elif isinstance(o, Storage):
            o = f"<storage {o.key}>"
        meta[prefix or "value"] = o
    return tensors, meta


def _node_budget(pickle_bytes: int) -> int:
    """Nodes a flattened graph may have: an unshared node costs at least one opcode
    byte, so only sharing can exceed the pickle's size; allow it 8x."""
    return 8 * pickle_bytes + 4096


def _name_budget(pickle_bytes: int) -> int:
    """Characters the flattened names may hold: each name repeats its parents' keys,
    so a real checkpoint (nested a few levels) stays within a few times its pickle."""
    return 16 * pickle_bytes + (1 << 20)


class _TorchCheckpoint(LazyCheckpoint):
    def _setup(self, obj, path, metadata_extra, pickle_bytes):
        tensors, meta = _flatten(obj, path, _node_budget(pickle_bytes), _name_budget(pickle_bytes))
        self.tree = obj
        self._tensors = tensors
        infos = {}
        for n, t in tensors.items():
            t.name = n
            numel = 1
            for s in t.size:
                numel *= s
            infos[n] = TensorInfo(n, t.dtype, t.size, numel * t.dtype.itemsize, f"torch.{t.dtype_name}")
        meta.update(metadata_extra)
        LazyCheckpoint.__init__(self, path, infos, meta)

    def _storage_bytes(self, storage) -> memoryview:  # pragma: no cover - abstract
        raise NotImplementedError

    def _read(self, name):
        t = self._tensors[name]
        buf = self._storage_bytes(t.storage)
        isz = t.dtype.itemsize
        # a decompressed prefix (see _storage_reach) may end inside an element of
        # another dtype viewing the same untyped storage
        base = np.frombuffer(buf[: len(buf) // isz * isz], dtype=t.dtype)
        numel = 1
        for s in t.size:
            numel *= s
        if numel == 0:
            return np.empty(t.size, dtype=t.dtype)
        contiguous, expect = True, 1
        for s, st in zip(reversed(t.size), reversed(t.stride), strict=True):
            if s != 1 and st != expect:
                contiguous = False
            expect *= s
        if contiguous:
            return base[t.offset : t.offset + numel].reshape(t.size)
        # a dim of size 1 is never stepped over, so its stride is whatever the file says
        # (make_tensor cannot bound it by the extent): 2**62 elements times the itemsize
        # would leave int64 in np.ndarray. Any stride reads the same there; use 0.
        # np.ndarray over the buffer, not as_strided: as_strided goes through
        # __array_interface__, whose typestr numpy cannot parse for some ml_dtypes
        # ('<f1' for float8_e5m2). make_tensor checked the extent lies in the storage.
        isz = t.dtype.itemsize
        a = np.ndarray(t.size, dtype=t.dtype, buffer=base, offset=t.offset * isz,
                       strides=[st * isz if s != 1 else 0 for s, st in zip(t.size, t.stride, strict=True)])
        a.flags.writeable = False
        return a


def _storage_reach(tensors) -> dict:
    """storage key -> bytes from the storage's start that its tensors touch."""
    reach: dict = {}
    for t in tensors:
        if any(s == 0 for s in t.size):
            continue
        last = t.offset + sum((s - 1) * st for s, st in zip(t.size, t.stride, strict=True))
        key = t.storage.key
        reach[key] = max(reach.get(key, 0), (last + 1) * t.dtype.itemsize)
    return reach


_DATA_PKL = re.compile(r"^(?:[^/]*/)?data\.pkl$")
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")


def _pickle_limit(file_size: int) -> int:
    """Largest data.pkl accepted: 16x the file plus 16 MiB.

    torch writes data.pkl stored, so it is smaller than the file; a re-zipped
    checkpoint compresses its pickle a few times at most. The ratio ceiling
    alone (1,032x) let 1.6 GB of zeros deflated to 1.55 MB through. With the
    pickle's build budget (8x the pickle + 4 MiB), a file of ``s`` bytes makes
    the reader hold at most ~9 x (16 s + 16 MiB).
    """
    return 16 * file_size + (16 << 20)


def _zip_errors():
    """What zipfile and its codecs raise on damaged bytes.

    Each codec zipfile supports has its own error: zlib.error (deflate), OSError /
    EOFError (bzip2), lzma.LZMAError (method 14: a corrupt LZMA header, in a .pt
    or an .npz, escaped as itself), struct.error (zipfile parsing the LZMA
    properties), NotImplementedError (methods it lacks). Decompression sites
    also catch any other Exception (see :func:`read_zip_entry`).
    """
    import lzma
    import zlib

    return (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, KeyError,
            struct.error, NotImplementedError, OverflowError, UnicodeDecodeError, zlib.error,
            lzma.LZMAError, RuntimeError, IndexError)


def zip_entry_offset(m: MappedFile, info: zipfile.ZipInfo) -> int:
    """Absolute offset of an entry's data: local header at ``header_offset``, 30 bytes,
    then the file name and extra field (APPNOTE.TXT 4.3.7)."""
    head = m.view(info.header_offset, _LOCAL_HEADER.size, f"zip local header of {info.filename!r}")
    fields = _LOCAL_HEADER.unpack(bytes(head))
    if fields[0] != b"PK\x03\x04":
        raise fail(m.path, f"zip entry {info.filename!r}: no local file header at byte {info.header_offset}")
    start = info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10]
    m.view(start, info.compress_size, f"zip entry {info.filename!r}")  # bounds check
    return start


def read_zip_entry(zf: zipfile.ZipFile, m: MappedFile, info, limit: int, need: int | None = None) -> memoryview:
    """Bytes of a zip entry: a view of the map when stored, else decompressed (<= limit).

    ``limit`` is an absolute bound on the entry's size (what the caller can use),
    checked before anything is decompressed. With ``need``, only the first
    ``need`` bytes are decompressed and returned (the part the tensors on a
    storage reach); zipfile then cannot check the CRC, which covers the whole
    entry. Any error of any codec becomes a RefquantError.
    """
    if info.file_size > limit:
        raise fail(m.path, f"zip entry {info.filename!r} claims {info.file_size} bytes, expected at most {limit}")
    if info.compress_type == zipfile.ZIP_STORED:
        if info.compress_size != info.file_size:
            raise fail(m.path, f"stored zip entry {info.filename!r}: sizes {info.compress_size} != {info.file_size}")
        return m.view(zip_entry_offset(m, info), info.file_size, f"zip entry {info.filename!r}")
    # deflate expands at most ~1032x: a larger claim is a bomb or a lie
    if info.file_size > 1032 * info.compress_size + 1024:
        raise fail(m.path, f"compressed zip entry {info.filename!r} claims {info.file_size} bytes from "
                           f"{info.compress_size}")
    zip_entry_offset(m, info)
    want = info.file_size if need is None else min(need, info.file_size)
    try:
        with zf.open(info) as fh:
            data = fh.read(want + 1 if want == info.file_size else want)
    except RefquantError:
        raise
    except MemoryError:
        raise fail(m.path, f"zip entry {info.filename!r}: out of memory decompressing {want} bytes") from None
    except Exception as e:  # noqa: BLE001 - every codec has its own error type (see _zip_errors)
        raise fail(m.path, f"zip entry {info.filename!r}: {type(e).__name__}: {e}") from None
    if len(data) != want:
        raise fail(m.path, f"zip entry {info.filename!r}: {len(data)} bytes, the directory says {info.file_size}")
    return memoryview(data)


def open_zip(m: MappedFile) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(m.path)
    except _zip_errors() as e:
        raise fail(m.path, f"not a readable zip archive: {type(e).__name__}: {e}") from None


def open_mapped_zip(path, scan):
    """Map ``path``, open it as a zip and return ``(m, zf, scan(m, zf))``.

    Both the map and the archive are closed again when opening or ``scan`` fails,
    so a refused file holds nothing open.
    """
    m = MappedFile(path)
    try:
        zf = open_zip(m)
    except BaseException:
        m.close()
        raise
    try:
        return m, zf, scan(m, zf)
    except BaseException:
        zf.close()
        m.close()
        raise


class TorchZipCheckpoint(_TorchCheckpoint):
    """``torch.save`` zip format; storages memory-mapped from stored entries."""

    format = "pytorch-zip"

    def __init__(self, path):
        m, zf, _ = open_mapped_zip(path, self._open)
        self._closers += [m.close, zf.close]

    def _open(self, m, zf):
        path = m.path
        try:
            infos = {i.filename: i for i in zf.infolist()}
        except _zip_errors() as e:
            raise fail(path, f"zip directory: {e}") from None
        pkls = [n for n in infos if _DATA_PKL.match(n)]
        if len(pkls) != 1:
            raise fail(path, "not a PyTorch zip checkpoint: " + (
                "no */data.pkl entry" if not pkls else f"several data.pkl entries {pkls[:4]}"))
        prefix = pkls[0][: -len("data.pkl")]
        bo = infos.get(prefix + "byteorder")
        if bo is not None:
            order = bytes(read_zip_entry(zf, m, bo, 16))
            if order != b"little":
                raise fail(path, f"byteorder record says {order!r}: big-endian checkpoints are not supported")
        data = read_zip_entry(zf, m, infos[pkls[0]], _pickle_limit(m.size))
        storages: dict[str, Storage] = {}

        def persistent_load(pid):
            if not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage":
                raise fail(path, f"pickle refused: persistent id {describe(pid)} of the wrong form "
                                 "(expected ('storage', type, key, location, numel))")
            st = _storage_from_type(pid[1], pid[2], pid[3], pid[4], path)
            old = storages.setdefault(st.key, st)
            if old.nbytes != st.nbytes:
                raise fail(path, f"storage {st.key!r} named with {old.nbytes} and {st.nbytes} bytes")
            return old

        obj = restricted_load(data, allowed=torch_allowlist(path), persistent_load=persistent_load, path=path,
                              refusal_hints=TORCH_REFUSAL_HINTS)
        self._zip, self._m, self._cache = zf, m, {}
        self._entries = {}
        for key, st in storages.items():
            info = infos.get(f"{prefix}data/{key}")
            if info is None:
                raise fail(path, f"storage {key!r} has no entry {prefix}data/{key}")
            if info.file_size != st.nbytes:
                raise fail(path, f"storage {key!r}: entry holds {info.file_size} bytes, the pickle says "
                                 f"numel x itemsize = {st.nbytes}")
            if info.compress_type == zipfile.ZIP_STORED:
                zip_entry_offset(m, info)
            self._entries[key] = info
        self._setup(obj, path, {}, len(data))
        self._reach = _storage_reach(self._tensors.values())

    def _storage_bytes(self, storage):
        mv = self._cache.get(storage.key)
        if mv is None:
            # a compressed storage is decompressed only as far as its tensors reach:
            # a 2.2 GB deflated storage under a 10-element tensor costs 40 bytes
            mv = read_zip_entry(self._zip, self._m, self._entries[storage.key], storage.nbytes,
                                need=self._reach.get(storage.key, 0))
            self._cache[storage.key] = mv
        return mv


class TorchLegacyCheckpoint(_TorchCheckpoint):
    """``torch.save(..., _use_new_zipfile_serialization=False)`` (pre-1.6 format)."""

    format = "pytorch-legacy"

    def __init__(self, path):
        m = MappedFile(path)
        try:
            self._open(m)
        except BaseException:
            m.close()
            raise
        self._closers.append(m.close)

    def _open(self, m):
        path = m.path
        if m.size == 0:
            raise fail(path, "empty file")
        if m.size > 262 and bytes(m.view(257, 5)) == b"ustar":
            raise fail(path, "legacy tar checkpoint (PyTorch < 0.4) is not supported")
        mm = m._map
        mm.seek(0)
        magic = restricted_load(mm, allowed={}, persistent_load=None, path=path)
        if magic != LEGACY_MAGIC:
            raise fail(path, f"wrong magic number {describe(magic)}; not a legacy PyTorch checkpoint")
        proto = restricted_load(mm, allowed={}, persistent_load=None, path=path)
        if proto != LEGACY_PROTOCOL:
            raise fail(path, f"unsupported legacy protocol version {describe(proto)} (expected 1001)")
        sys_info = restricted_load(mm, allowed={}, persistent_load=None, path=path)
        if not isinstance(sys_info, dict):
            raise fail(path, f"sys info is {describe(sys_info)}, expected a dict")
        if sys_info.get("little_endian") is not True:
            raise fail(path, "sys info says little_endian is not True: big-endian checkpoints are not supported")
        roots: dict[str, Storage] = {}
        views: dict[str, Storage] = {}

        def persistent_load(pid):
            if not isinstance(pid, tuple) or len(pid) != 6 or pid[0] != "storage":
                raise fail(path, f"pickle refused: persistent id {describe(pid)} of the wrong form "
                                 "(expected ('storage', type, key, location, numel, view_metadata))")
            _, stype, key, location, numel, view = pid
            st = _storage_from_type(stype, key, location, numel, path)
            root = roots.setdefault(key, st)
            if root.nbytes != st.nbytes or root.dtype != st.dtype:
                raise fail(path, f"storage {key!r} named with two sizes or types")
            if view is None:
                return root
            if (not isinstance(view, tuple) or len(view) != 3 or not isinstance(view[0], str)
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in view[1:])):
                raise fail(path, f"pickle refused: storage view metadata {describe(view)}")
            vkey, voff, vsize = view
            isz = st.dtype.itemsize
            if (voff + vsize) * isz > root.nbytes:
                raise fail(path, f"storage view {vkey!r} [{voff}, {voff + vsize}) exceeds storage {key!r}")
            return views.setdefault(vkey, Storage(vkey, st.dtype, vsize * isz, location, st.typed, root, voff * isz))

        start = mm.tell()
        obj = restricted_load(mm, allowed=torch_allowlist(path), persistent_load=persistent_load, path=path,
                              refusal_hints=TORCH_REFUSAL_HINTS)
        pickle_bytes = mm.tell() - start
        keys = restricted_load(mm, allowed={}, persistent_load=None, path=path)
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise fail(path, f"storage key list is {describe(keys)}, expected a list of str")
        pos = mm.tell()
        self._offsets = {}
        for key in keys:
            st = roots.get(key)
            if st is None:
                raise fail(path, f"storage {key!r} is listed but no tensor names it (cannot size it)")
            (count,) = struct.unpack("<Q", bytes(m.view(pos, 8, f"element count of storage {key!r}")))
            if count * st.dtype.itemsize != st.nbytes:
                raise fail(path, f"storage {key!r}: record holds {count} elements, the pickle says "
                                 f"{st.nbytes // st.dtype.itemsize}")
            m.view(pos + 8, st.nbytes, f"storage {key!r}")
            self._offsets[key] = pos + 8
            pos += 8 + st.nbytes
        missing = set(roots) - set(self._offsets)
        if missing:
            raise fail(path, f"storages {sorted(missing)[:4]} are named but not stored: truncated")
        self._m = m
        extra = {"sys_info." + k: v for k, v in sys_info.items() if isinstance(v, int | str | bool)}
        self._setup(obj, path, extra, pickle_bytes)

    def _storage_bytes(self, storage):
        root = storage.root or storage
        off = self._offsets[root.key] + storage.root_offset
        return self._m.view(off, storage.nbytes, f"storage {storage.key!r}")


def open_torch(path):
    """Open a ``torch.save`` file (zip or legacy) lazily, without torch.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    TorchZipCheckpoint or TorchLegacyCheckpoint
        name -> array; nested dicts flattened with ``.`` (``optimizer.state.0.exp_avg``);
        non-tensor leaves (epoch, lr, strings) in ``.metadata``; the decoded object
        graph in ``.tree``.

    Notes
    -----
    **Formula**: element :math:`(i_1..i_k)` of a tensor is storage element
    :math:`o + \\sum_j i_j s_j` (offset :math:`o`, strides :math:`s_j`), read bit for
    bit; nothing is converted or rounded.

    **Reference**: torch/serialization.py (``_load``, ``_legacy_load``),
    torch/_utils.py (``_rebuild_tensor_v2``, ``_rebuild_tensor_v3``),
    torch/_weights_only_unpickler.py (the allowlist).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise fail(path, f"cannot open: {e.strerror or e}") from None
    if head == b"PK\x03\x04":
        return TorchZipCheckpoint(path)
    if head[:2] == b"\x80\x02" or head[:1] == b"\x80":
        return TorchLegacyCheckpoint(path)
    raise RefquantError(f"{path}: not a PyTorch checkpoint (first bytes {head!r})")
