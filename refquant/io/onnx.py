"""ONNX initializers through the ``onnx`` package (optional extra ``refquant[onnx]``).

The model's protobuf is parsed by ``onnx.load(path, load_external_data=False)``;
initializers stored inside it are decoded by ``onnx.numpy_helper.to_array``.
Initializers with ``data_location == EXTERNAL`` (onnx/onnx ``docs/ExternalData.md``)
name ``location`` (a path relative to the model's folder), ``offset`` and
``length``; refquant refuses absolute locations and any location that resolves
outside the model's folder (``..``, symlinks), checks that ``length`` equals
numel x itemsize and that the range lies inside the file, and memory-maps it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .._errors import RefquantError
from ._common import LazyCheckpoint, MappedFile, TensorInfo, checked_numel, fail

__all__ = ["OnnxCheckpoint", "open_onnx"]

_PACKED_4BIT = {"INT4", "UINT4", "FLOAT4E2M1"}


def _onnx():
    try:
        import onnx
    except ImportError:
        raise RefquantError("reading ONNX models needs the onnx package: pip install 'refquant[onnx]'") from None
    return onnx


def _text(value, path, what: str) -> str:
    """A protobuf string field as str: the Python protobuf runtime hands back bytes
    for one that is not valid UTF-8 (which the protobuf spec forbids); refused."""
    if isinstance(value, str):
        return value
    raise fail(path, f"{what} {value!r:.80} is not valid UTF-8")


class OnnxCheckpoint(LazyCheckpoint):
    """The initializers of an ONNX model (main graph), name -> array."""

    format = "onnx"

    def __init__(self, path):
        onnx = _onnx()
        p = Path(path)
        try:
            model = onnx.load(os.fspath(p), load_external_data=False)
        except Exception as e:  # noqa: BLE001 - protobuf raises many kinds on bad bytes
            raise fail(path, f"not a readable ONNX model: {type(e).__name__}: {e}") from None
        folder = p.resolve().parent
        self._tensors, self._maps = {}, {}
        infos = {}
        try:
            for t in model.graph.initializer:
                name = _text(t.name, path, "initializer name")
                infos[name] = self._info(t, folder, path, onnx)
            meta = {"ir_version": model.ir_version,
                    "producer_name": _text(model.producer_name, path, "producer_name"),
                    "opset": {_text(o.domain, path, "opset domain") or "ai.onnx": o.version
                              for o in model.opset_import}}
            meta.update({_text(e.key, path, "metadata key"): _text(e.value, path, f"metadata value of {e.key!r}")
                         for e in model.metadata_props})
        except BaseException:
            for m in self._maps.values():
                m.close()
            raise
        super().__init__(path, infos, meta)
        self._closers += [m.close for m in self._maps.values()]

    def _info(self, t, folder, path, onnx):
        from onnx import helper

        try:
            dt = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
            tname = onnx.TensorProto.DataType.Name(t.data_type)
        except Exception:  # noqa: BLE001
            raise fail(path, f"initializer {t.name!r}: unsupported data type {t.data_type}") from None
        shape = tuple(int(d) for d in t.dims)
        n = checked_numel(list(shape), path, f"initializer {t.name!r}", dt.itemsize)
        nbytes = (n + 1) // 2 if tname in _PACKED_4BIT else n * dt.itemsize
        if t.data_location == onnx.TensorProto.EXTERNAL:
            ext = {_text(e.key, path, f"initializer {t.name!r}: external data key"):
                   _text(e.value, path, f"initializer {t.name!r}: external data value") for e in t.external_data}
            loc = ext.get("location")
            if not loc:
                raise fail(path, f"initializer {t.name!r}: external data without a location")
            if "\0" in loc:
                raise fail(path, f"initializer {t.name!r}: external location {loc!r} holds a NUL byte; refused")
            if os.path.isabs(loc):
                raise fail(path, f"initializer {t.name!r}: external location {loc!r} is absolute; refused")
            target = (folder / loc).resolve()
            if folder not in target.parents:
                raise fail(path, f"initializer {t.name!r}: external location {loc!r} lies outside the "
                                 f"model's folder; refused")
            try:
                off = int(ext.get("offset", 0))
                length = int(ext.get("length", nbytes))
            except ValueError:
                raise fail(path, f"initializer {t.name!r}: bad offset/length {ext}") from None
            if length != nbytes or off < 0:
                raise fail(path, f"initializer {t.name!r}: external length {length} at offset {off}, but "
                                 f"{tname} x {list(shape)} needs {nbytes} bytes")
            m = self._maps.get(target)
            if m is None:
                m = self._maps[target] = MappedFile(target)
            m.view(off, length, f"initializer {t.name!r}")
            self._tensors[t.name] = ("ext", m, off, t)
        else:
            self._tensors[t.name] = ("int", None, 0, t)
        return TensorInfo(t.name, dt, shape, nbytes, tname)

    def _read(self, name):
        kind, m, off, t = self._tensors[name]
        info = self._infos[name]
        if kind == "ext":
            buf = m.view(off, info.nbytes, f"initializer {name!r}")
            if info.stored_dtype not in _PACKED_4BIT:
                return np.frombuffer(buf, dtype=info.dtype).reshape(info.shape)
            onnx = _onnx()
            t2 = onnx.TensorProto()
            t2.CopyFrom(t)
            del t2.external_data[:]
            t2.data_location = onnx.TensorProto.DEFAULT
            t2.raw_data = bytes(buf)
            t = t2
        from onnx import numpy_helper

        try:
            return numpy_helper.to_array(t)
        except Exception as e:  # noqa: BLE001
            raise fail(self.path, f"initializer {name!r}: {type(e).__name__}: {e}") from None


def open_onnx(path) -> OnnxCheckpoint:
    """Open an ONNX model's initializers (external data memory-mapped, inside its folder only).

    Notes
    -----
    **Formula**: values bit for bit, as ``onnx.numpy_helper.to_array``.
    **Reference**: onnx/onnx ``docs/ExternalData.md``, ``onnx/external_data_helper.py``.
    """
    return OnnxCheckpoint(path)
