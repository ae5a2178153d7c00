"""Writers that take a checkpoint one tensor at a time, with the layout declared first.

``refquant compress`` plans its whole output (every tensor's name, dtype and
shape) before it reads any data, so the header can be written first and each
tensor's bytes written as soon as they exist: memory holds one tensor, whatever
the checkpoint's size. Both writers write into a temporary file beside the
destination and rename it into place only after the last byte, so an
interrupted or failed run leaves nothing under the destination's name.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

import numpy as np

from .._errors import RefquantError
from ._common import SAFETENSORS_BITS, atomic_target, safetensors_name_of

__all__ = ["SafetensorsStreamWriter", "GGUFStreamWriter"]

#: the largest header the safetensors crate (and refquant's reader) accept
_MAX_HEADER = 100_000_000


class SafetensorsStreamWriter:
    """Write a safetensors file whose tensors arrive one by one, in any order.

    ``layout`` is ``[(name, dtype, shape), ...]``. Offsets are assigned widest
    dtype first (as safetensors' own ``prepare`` does, so every tensor stays
    aligned to its item size), the header is written at once and each
    :meth:`write` puts one tensor's bytes at its offset.

    Use as a context manager; the file appears under ``path`` on a clean exit only.
    """

    def __init__(self, path, layout, *, metadata=None, overwrite=False):
        self.path = Path(path)
        self._overwrite = overwrite
        header = {}
        if metadata:
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
                raise RefquantError("safetensors metadata must map str to str")
            header["__metadata__"] = dict(metadata)
        rows = []
        for i, (name, dtype, shape) in enumerate(layout):
            dt = safetensors_name_of(dtype)
            n = 1
            for d in shape:
                n *= int(d)
            if n * SAFETENSORS_BITS[dt] % 8:
                raise RefquantError(f"tensor {name!r}: {n} elements of {dt} do not fill whole bytes")
            rows.append((-SAFETENSORS_BITS[dt], i, name, dt, [int(d) for d in shape],
                         n * SAFETENSORS_BITS[dt] // 8))
        rows.sort()
        self._where = {}
        off = 0
        for _, _, name, dt, shape, nbytes in rows:
            if name in self._where or name == "__metadata__":
                raise RefquantError(f"tensor name {name!r} appears twice or is reserved")
            header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + nbytes]}
            self._where[name] = (off, nbytes, dt)
            off += nbytes
        hb = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        hb += b" " * (-len(hb) % 8)
        if len(hb) > _MAX_HEADER:
            raise RefquantError(f"the safetensors header would take {len(hb)} bytes; readers "
                                f"refuse more than {_MAX_HEADER}")
        self._header = struct.pack("<Q", len(hb)) + hb
        self._data_size = off
        self._written = set()

    def __enter__(self):
        self._ctx = atomic_target(self.path, overwrite=self._overwrite)
        self._tmp = self._ctx.__enter__()
        self._f = open(self._tmp, "r+b")  # noqa: SIM115 - closed in __exit__
        self._f.write(self._header)
        self._f.truncate(len(self._header) + self._data_size)
        return self

    def write(self, name: str, array) -> None:
        """Put tensor ``name``'s bytes at its planned offset (dtype and size must match)."""
        if name not in self._where:
            raise RefquantError(f"tensor {name!r} is not in the planned layout")
        if name in self._written:
            raise RefquantError(f"tensor {name!r} was written twice")
        off, nbytes, dt = self._where[name]
        a = np.ascontiguousarray(array)
        if safetensors_name_of(a.dtype) != dt or a.nbytes != nbytes:
            raise RefquantError(f"tensor {name!r}: got {a.dtype} of {a.nbytes} bytes, planned "
                                f"{dt} of {nbytes} bytes")
        self._f.seek(len(self._header) + off)
        if nbytes:
            self._f.write(memoryview(a.reshape(-1).view(np.uint8)))
        self._written.add(name)

    def __exit__(self, exc_type, exc, tb):
        missing = sorted(set(self._where) - self._written) if exc_type is None else []
        try:
            try:
                if exc_type is None and not missing:
                    self._f.flush()
                    os.fsync(self._f.fileno())
            finally:
                self._f.close()
        except OSError:  # disk full at the last flush: remove the temporary file too
            self._ctx.__exit__(*sys.exc_info())
            raise
        if missing:
            err = RefquantError(f"{len(missing)} tensors never written, e.g. {missing[:3]}")
            self._ctx.__exit__(RefquantError, err, None)  # removes the temporary file
            raise err
        return self._ctx.__exit__(exc_type, exc, tb)


class GGUFStreamWriter:
    """Write a GGUF file tensor by tensor through gguf-py's ``GGUFWriter``.

    ``layout`` is ``[(name, ggml type name, logical shape, nbytes), ...]`` in file
    order; :meth:`write` must then be called in that order with each tensor's
    bytes (raw blocks as uint8, plain types as their NumPy dtype). ``fields`` are
    (key, value, gguf.GGUFValueType or None) triples copied with their types.
    """

    def __init__(self, path, layout, *, arch, fields=(), overwrite=False):
        try:
            import gguf
        except ImportError:
            raise RefquantError("writing GGUF needs the gguf package: pip install "
                                "'refquant[gguf]'") from None
        self._gguf = gguf
        self.path = Path(path)
        self._overwrite = overwrite
        self._layout = list(layout)
        self._arch = arch
        self._fields = list(fields)
        self._next = 0

    def __enter__(self):
        g = self._gguf
        self._ctx = atomic_target(self.path, overwrite=self._overwrite)
        tmp = self._ctx.__enter__()
        try:
            w = g.GGUFWriter(tmp, self._arch)
            for key, value, vtype in self._fields:
                if key in ("general.architecture", "GGUF.version"):
                    continue
                if vtype is None:
                    vtype = g.GGUFValueType.get_type(value)
                if vtype == g.GGUFValueType.ARRAY:
                    sub = None
                    if isinstance(value, tuple):  # (items, element type)
                        value, sub = value
                    w.add_key_value(key, value, vtype, sub_type=sub)
                else:
                    w.add_key_value(key, value, vtype)
            for name, tname, shape, nbytes in self._layout:
                qt = g.GGMLQuantizationType[tname]
                w.add_tensor_info(name, list(shape), np.dtype(np.float32), nbytes, raw_dtype=qt)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
        except Exception:
            self._ctx.__exit__(*sys.exc_info())  # removes the temporary file
            raise
        self._w = w
        return self

    def write(self, name: str, array) -> None:
        lname, _, _, nbytes = self._layout[self._next]
        if name != lname:
            raise RefquantError(f"GGUF tensors must arrive in order: expected {lname!r}, got "
                                f"{name!r}")
        a = np.ascontiguousarray(array)
        if a.nbytes != nbytes:
            raise RefquantError(f"tensor {name!r}: {a.nbytes} bytes, planned {nbytes}")
        self._w.write_tensor_data(a.reshape(-1).view(np.uint8))
        self._next += 1

    def __exit__(self, exc_type, exc, tb):
        try:
            self._w.close()
        except OSError:  # disk full at the last flush: remove the temporary file too
            if exc_type is None:
                self._ctx.__exit__(*sys.exc_info())
                raise
        if exc_type is None and self._next != len(self._layout):
            err = RefquantError(f"{len(self._layout) - self._next} GGUF tensors never written")
            self._ctx.__exit__(RefquantError, err, None)
            raise err
        return self._ctx.__exit__(exc_type, exc, tb)
