"""Flax msgpack checkpoints (``flax.serialization.to_bytes``) without jax or flax.

Layout (google/flax ``flax/serialization.py``): a msgpack map (the state dict,
nested) whose array leaves are msgpack extension types::

    ExtType(1, packb((shape, dtype_name, raw_bytes)))   ndarray  (_MsgpackExtType.ndarray)
    ExtType(2, packb((real, imag)))                     complex  (native_complex)
    ExtType(3, packb((shape=(), dtype_name, raw_bytes))) numpy scalar (npscalar)

Arrays larger than ``MAX_CHUNK_SIZE`` (2**30 bytes) are written as
``{"__msgpack_chunked_array__": True, "shape": {"0": d0, ...}, "chunks": {"0": ext, ...}}``
(``_chunk``): flat 1-D pieces concatenated in index order. refquant decodes every
leaf with a dtype allowlist (the numeric dtypes, ml_dtypes' bfloat16 and fp8);
unknown extension codes and unknown dtype names are refused. Raw bytes are
native (little-endian) order, row-major. The whole file is parsed at open
(msgpack has no index), so this reader is not lazy.
"""

from __future__ import annotations

import numpy as np

from .._errors import RefquantError
from ._common import SAFETENSORS_DTYPES, LazyCheckpoint, MappedFile, TensorInfo, checked_numel, fail

__all__ = ["FlaxCheckpoint", "open_flax", "FLAX_DTYPES"]

#: dtype names flax writes (``arr.dtype.name``) that refquant accepts.
FLAX_DTYPES = {np.dtype(d).name: np.dtype(d).newbyteorder("<") if np.dtype(d).itemsize > 1 else np.dtype(d)
               for d in SAFETENSORS_DTYPES.values()} | {"complex128": np.dtype("<c16")}
_CHUNKED = "__msgpack_chunked_array__"


def _msgpack():
    try:
        import msgpack
    except ImportError:
        raise RefquantError("reading Flax msgpack checkpoints needs msgpack: pip install 'refquant[flax]'") from None
    return msgpack


def _decode_ndarray(payload, path, what):
    msgpack = _msgpack()
    try:
        shape, dname, raw = msgpack.unpackb(payload, raw=False, strict_map_key=True, max_bin_len=len(payload),
                                            max_str_len=len(payload), max_array_len=64, max_map_len=0)
    except (ValueError, TypeError, msgpack.exceptions.ExtraData, msgpack.exceptions.UnpackException) as e:
        raise fail(path, f"{what}: ndarray payload unreadable ({type(e).__name__})") from None
    if not isinstance(dname, str) or dname not in FLAX_DTYPES:
        raise fail(path, f"{what}: dtype {dname!r:.40} is not in the allowlist")
    dt = FLAX_DTYPES[dname]
    shape = tuple(shape) if isinstance(shape, list | tuple) else shape
    n = checked_numel(shape, path, what, dt.itemsize)
    if not isinstance(raw, bytes) or len(raw) != n * dt.itemsize:
        raise fail(path, f"{what}: {len(raw) if isinstance(raw, bytes) else '?'} data bytes for shape "
                         f"{list(shape)} x {dname} ({n * dt.itemsize} expected)")
    return np.frombuffer(raw, dtype=dt).reshape(shape)


class FlaxCheckpoint(LazyCheckpoint):
    """A Flax msgpack state dict: nested keys joined with ``.``."""

    format = "flax"

    def __init__(self, path):
        msgpack = _msgpack()
        m = MappedFile(path)
        try:
            data = bytes(m.view(0, m.size))
        finally:
            m.close()
        pth = m.path

        def ext_hook(code, payload):
            if code in (1, 3):
                return _decode_ndarray(payload, pth, f"ext type {code}")
            if code == 2:
                try:
                    re_, im = msgpack.unpackb(payload, max_array_len=2)
                except Exception:  # noqa: BLE001 - msgpack raises many kinds on bad bytes
                    raise fail(pth, "complex ext payload unreadable") from None
                return complex(re_, im)
            raise fail(pth, f"unknown msgpack ext type {code} refused")

        try:
            # unpackb bounds every container / string length by the buffer's length
            tree = msgpack.unpackb(data, raw=False, ext_hook=ext_hook, strict_map_key=False)
        except RefquantError:
            raise
        except Exception as e:  # noqa: BLE001 - msgpack raises many kinds on bad bytes
            raise fail(pth, f"not a readable msgpack file: {type(e).__name__}: {e}") from None
        if not isinstance(tree, dict):
            raise fail(pth, f"top level is {type(tree).__name__}, expected a map (a Flax state dict)")
        self._arrays, meta = {}, {}
        self._walk(tree, "", 0, meta, pth)
        infos = {k: TensorInfo(k, a.dtype, a.shape, a.nbytes, a.dtype.name) for k, a in self._arrays.items()}
        super().__init__(path, infos, meta)

    def _walk(self, node, prefix, depth, meta, path):
        if depth > 64:
            raise fail(path, f"state dict nested deeper than 64 levels at {prefix!r}")
        if isinstance(node, dict) and node.get(_CHUNKED) is True:
            self._arrays[prefix] = self._unchunk(node, prefix, path)
            return
        if isinstance(node, dict):
            for k, v in node.items():
                self._walk(v, f"{prefix}.{k}" if prefix else str(k), depth + 1, meta, path)
        elif isinstance(node, np.ndarray):
            self._arrays[prefix] = node
        else:
            meta[prefix] = node

    def _unchunk(self, node, prefix, path):
        shape, chunks = node.get("shape"), node.get("chunks")
        if not isinstance(shape, dict) or not isinstance(chunks, dict):
            raise fail(path, f"{prefix}: chunked array without shape / chunks maps")
        try:
            shape = tuple(shape[str(i)] for i in range(len(shape)))
            parts = [chunks[str(i)] for i in range(len(chunks))]
        except KeyError as e:
            raise fail(path, f"{prefix}: chunked array missing index {e}") from None
        n = checked_numel(shape, path, prefix)
        if not parts or not all(isinstance(p, np.ndarray) and p.ndim == 1 and p.dtype == parts[0].dtype
                                for p in parts):
            raise fail(path, f"{prefix}: chunks are not 1-D arrays of one dtype")
        if sum(p.size for p in parts) != n:
            raise fail(path, f"{prefix}: chunks hold {sum(p.size for p in parts)} elements, shape {list(shape)} needs {n}")
        return np.concatenate(parts).reshape(shape)

    def _read(self, name):
        return self._arrays[name]


def open_flax(path) -> FlaxCheckpoint:
    """Open a Flax msgpack checkpoint (``flax.serialization.to_bytes`` output).

    Notes
    -----
    **Formula**: each leaf is ``frombuffer(raw, dtype).reshape(shape)``; values bit
    for bit. **Reference**: google/flax ``flax/serialization.py``
    (``_ndarray_to_bytes``, ``_msgpack_ext_pack``, ``_chunk``, ``_unchunk``).
    """
    return FlaxCheckpoint(path)
