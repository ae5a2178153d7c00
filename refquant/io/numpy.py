"""NumPy ``.npy`` and ``.npz`` files, read lazily and never with pickle.

``.npy`` layout (numpy/lib/format.py, NEP 1)::

    \\x93NUMPY | major u8 | minor u8 | header length (u16 LE for 1.0, u32 LE for 2.0 / 3.0)
    | header: a Python dict literal {'descr': '<f4', 'fortran_order': False,
      'shape': (2, 3), } padded with spaces and a newline so the data starts at
      a multiple of 64 | raw data, numel * itemsize bytes

refquant parses the header with :func:`ast.literal_eval` (no names, no calls),
refuses object dtypes (what ``allow_pickle`` would load), structured dtypes with
big-endian fields, shapes beyond 2**62 elements and any size mismatch with the
file, then memory-maps the data. A big-endian array (``'>f4'``, as ``np.save``
writes one on any machine) reads as the same values in a little-endian copy,
made when the tensor is read (it cannot be a view of the file). ``.npz`` is a zip of ``<key>.npy`` members: stored members are
memory-mapped in place (offset from the local file header), compressed ones
(``np.savez_compressed``) are decompressed on access.
"""

from __future__ import annotations

import ast
import struct
import zipfile

import numpy as np

from ._common import LazyCheckpoint, MappedFile, TensorInfo, checked_numel, fail
from .pytorch import _zip_errors, open_mapped_zip, read_zip_entry, zip_entry_offset

__all__ = ["NPY_MAGIC", "parse_npy_header", "NpyCheckpoint", "NpzCheckpoint", "open_npy", "open_npz",
           "save_npz"]

NPY_MAGIC = b"\x93NUMPY"
_MAX_HEADER = 100_000


def parse_npy_header(buf, total: int, path, what="npy"):
    """Parse an npy header from ``buf`` (the first bytes); ``total`` = bytes in the member.

    Returns ``(dtype, shape, fortran_order, data_offset)``.
    """
    b = bytes(buf[:12])
    if len(b) < 10 or not b.startswith(NPY_MAGIC):
        raise fail(path, f"{what}: wrong magic {b[:6]!r} (expected {NPY_MAGIC!r})")
    major, minor = b[6], b[7]
    if major not in (1, 2, 3) or minor != 0:
        raise fail(path, f"{what}: unsupported npy format version {major}.{minor}")
    if major == 1:
        (hlen,) = struct.unpack("<H", b[8:10])
        start = 10
    else:
        if len(b) < 12:
            raise fail(path, f"{what}: truncated header")
        (hlen,) = struct.unpack("<I", b[8:12])
        start = 12
    if hlen > _MAX_HEADER:
        raise fail(path, f"{what}: header length {hlen} exceeds {_MAX_HEADER}")
    if start + hlen > total or start + hlen > len(buf):
        raise fail(path, f"{what}: header of {hlen} bytes runs past the end (truncated)")
    raw = bytes(buf[start : start + hlen])
    try:
        text = raw.decode("latin1" if major < 3 else "utf-8")
        d = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, UnicodeDecodeError, TypeError) as e:
        raise fail(path, f"{what}: header is not a Python literal: {type(e).__name__}") from None
    if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
        raise fail(path, f"{what}: header {raw[:120]!r} must be a dict of descr, fortran_order, shape")
    if not isinstance(d["fortran_order"], bool):
        raise fail(path, f"{what}: fortran_order {d['fortran_order']!r} is not a bool")
    shape = d["shape"]
    if not isinstance(shape, tuple):
        raise fail(path, f"{what}: shape {shape!r:.80} is not a tuple")
    checked_numel(shape, path, what, 1)  # dims first: a bad shape is named before the dtype
    descr = d["descr"]
    try:
        if not isinstance(descr, str | list):
            raise TypeError("descr")
        dt = np.lib.format.descr_to_dtype(descr)
    except Exception:  # noqa: BLE001 - numpy raises many kinds on odd descrs
        raise fail(path, f"{what}: unreadable dtype descr {descr!r:.80}") from None
    if dt.hasobject:
        raise fail(path, f"{what}: dtype {descr!r:.80} holds Python objects (needs pickle; refused)")
    if dt.subdtype is not None:
        # an array of it would grow the subarray's dims: np.load cannot read it either
        raise fail(path, f"{what}: dtype {descr!r:.80} is a subarray dtype; expected a scalar or structured one")
    if any(f[0].byteorder == ">" for f in (dt.fields or {}).values()):
        raise fail(path, f"{what}: dtype {descr!r:.80} has big-endian fields; only little-endian "
                         "structured dtypes are supported")
    if dt.itemsize == 0:
        raise fail(path, f"{what}: dtype {descr!r:.80} has itemsize 0")
    numel = checked_numel(shape, path, what, dt.itemsize)
    need = numel * dt.itemsize
    have = total - start - hlen
    if need != have:
        raise fail(path, f"{what}: shape {list(shape)} x {dt} needs {need} data bytes, the file holds {have}"
                         + (" (truncated)" if have < need else ""))
    return dt, tuple(shape), d["fortran_order"], start + hlen


def _native(dt):
    """The dtype an array is returned in: a big-endian scalar dtype becomes little-endian."""
    return dt.newbyteorder("<") if dt.byteorder == ">" else dt


def _array(buf, dt, shape, fortran):
    """The array in ``buf``: a zero-copy view, or a byteswapped copy for big-endian data."""
    a = np.frombuffer(buf, dtype=dt)
    if dt.byteorder == ">":  # np.save(">f4") on any machine: same values, native bytes
        a = a.astype(_native(dt))
    return a.reshape(shape, order="F" if fortran else "C")


class NpyCheckpoint(LazyCheckpoint):
    """One ``.npy`` file as a one-tensor mapping (key ``"array"``, or the file stem)."""

    format = "npy"

    def __init__(self, path, key="array"):
        m = MappedFile(path)
        try:
            head = m.view(0, min(m.size, 12 + _MAX_HEADER), "npy header")
            dt, shape, fortran, off = parse_npy_header(head, m.size, m.path)
        except BaseException:
            m.close()
            raise
        self._m, self._rec = m, (dt, shape, fortran, off)
        info = TensorInfo(key, _native(dt), shape, m.size - off, dt.str)
        super().__init__(path, {key: info}, {})
        self._closers.append(m.close)

    def _read(self, name):
        dt, shape, fortran, off = self._rec
        return _array(self._m.view(off, self._m.size - off), dt, shape, fortran)


class NpzCheckpoint(LazyCheckpoint):
    """``.npz``: members ``<key>.npy``; stored ones memory-mapped, compressed ones read."""

    format = "npz"

    def __init__(self, path):
        m, zf, infos = open_mapped_zip(path, self._scan)
        super().__init__(path, infos, {})
        self._closers += [m.close, zf.close]

    def _scan(self, m, zf):
        self._m, self._zf, self._recs = m, zf, {}
        infos = {}
        try:
            members = zf.infolist()
        except _zip_errors() as e:
            raise fail(m.path, f"zip directory: {e}") from None
        for zi in members:
            if zi.is_dir():
                continue
            if not zi.filename.endswith(".npy"):
                raise fail(m.path, f"npz member {zi.filename!r} is not a .npy file")
            key = zi.filename[:-4]
            what = f"npz member {zi.filename!r}"
            if zi.compress_type == zipfile.ZIP_STORED:
                if zi.compress_size != zi.file_size:
                    raise fail(m.path, f"{what}: stored sizes differ")
                off0 = zip_entry_offset(m, zi)
                head = m.view(off0, min(zi.file_size, 12 + _MAX_HEADER), what)
            else:
                if zi.file_size > 1032 * zi.compress_size + 1024:
                    raise fail(m.path, f"{what} claims {zi.file_size} bytes from {zi.compress_size}")
                off0 = None
                try:
                    with zf.open(zi) as fh:
                        head = fh.read(min(zi.file_size, 12 + _MAX_HEADER))
                except Exception as e:  # noqa: BLE001 - each codec raises its own (lzma.LZMAError ...)
                    raise fail(m.path, f"{what}: {type(e).__name__}: {e}") from None
            dt, shape, fortran, off = parse_npy_header(head, zi.file_size, m.path, what)
            if key in infos:
                raise fail(m.path, f"npz holds the key {key!r} twice")
            infos[key] = TensorInfo(key, _native(dt), shape, zi.file_size - off, dt.str)
            self._recs[key] = (zi, off0, dt, shape, fortran, off)
        return infos

    def _read(self, name):
        zi, off0, dt, shape, fortran, off = self._recs[name]
        if off0 is not None:
            buf = self._m.view(off0 + off, zi.file_size - off, f"npz member {zi.filename!r}")
        else:
            buf = read_zip_entry(self._zf, self._m, zi, zi.file_size)[off:]
        return _array(buf, dt, shape, fortran)


def open_npy(path, key="array"):
    """Open a ``.npy`` file lazily (memory-mapped), never unpickling.

    Notes
    -----
    **Formula**: data of ``shape`` and ``descr`` is ``prod(shape) * itemsize`` bytes
    right after the header, read bit for bit.

    **Reference**: numpy/lib/format.py (``read_array_header_1_0`` / ``_2_0``,
    ``descr_to_dtype``), NEP 1.
    """
    return NpyCheckpoint(path, key)


def open_npz(path):
    """Open a ``.npz`` archive lazily; stored members memory-mapped (see :func:`open_npy`).

    Notes
    -----
    **Formula**: member data at local header offset + 30 + name + extra + npy
    header length. **Reference**: numpy/lib/npyio.py (``NpzFile``), PKWARE
    APPNOTE.TXT 4.3.7 (local file header).
    """
    return NpzCheckpoint(path)


def save_npz(tensors, path, *, overwrite=False):
    """Write ``tensors`` as an uncompressed ``.npz`` (members memory-mappable), atomically.

    Notes
    -----
    **Formula**: values bit for bit. **Reference**: ``numpy.lib.format.write_array``
    with ``allow_pickle=False`` inside a ``ZIP_STORED`` archive (as ``np.savez``).
    """
    import io
    from collections.abc import Mapping

    from .._errors import RefquantError
    from ._common import atomic_write

    if not isinstance(tensors, Mapping):
        raise RefquantError(f"tensors must be a mapping name -> array, got {type(tensors).__name__}")
    arrays = {}
    for k, v in dict(tensors).items():
        if not isinstance(k, str):
            raise RefquantError(f"tensor name {k!r} must be a str")
        # a zip member name is UTF-8 and stops at a NUL ('a\x00b' came back as 'a')
        if "\0" in k or any(0xD800 <= ord(c) <= 0xDFFF for c in k):
            raise RefquantError(f"tensor name {k!r:.60} holds a NUL or a lone surrogate; a zip member name cannot")
        try:
            a = np.asarray(v)
        except (ValueError, TypeError) as e:
            raise RefquantError(f"tensor {k!r} is not an array: {e}") from None
        if a.dtype.hasobject:
            raise RefquantError(f"tensor {k!r} has dtype object; npz without pickle cannot hold it")
        if a.dtype.fields and any(f[0].byteorder == ">" for f in a.dtype.fields.values()):
            raise RefquantError(f"tensor {k!r} has big-endian fields ({a.dtype}); the npz reader takes little-endian")
        if a.dtype.byteorder == ">":  # stored little-endian (native on every machine refquant runs on)
            a = a.astype(a.dtype.newbyteorder("<"))
        arrays[k] = a

    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
            for k, a in arrays.items():
                bio = io.BytesIO()
                np.lib.format.write_array(bio, a, allow_pickle=False)
                z.writestr(k + ".npy", bio.getvalue())

    return atomic_write(path, write, overwrite=overwrite)
