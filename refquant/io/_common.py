"""Shared pieces of the checkpoint readers: the lazy mapping, tensor records, dtype tables.

Every reader in :mod:`refquant.io` returns a :class:`LazyCheckpoint`: a read-only
mapping ``name -> numpy.ndarray`` whose :meth:`~LazyCheckpoint.info` answers dtype,
shape and stored size from the file's header alone, and whose arrays are views of
a memory map of the file wherever the format stores raw little-endian bytes.

Rules every reader follows (DESIGN.md, "Bad input gets a clear error"):

* no size or offset from a file is trusted: every count is checked against the
  bytes that are actually there *before* anything is allocated;
* every failure is a :class:`~refquant.RefquantError` whose message starts with the
  file's path and says what was wrong;
* arrays handed out are read-only.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import ml_dtypes
import numpy as np

from .._errors import RefquantError

__all__ = [
    "TensorInfo",
    "LazyCheckpoint",
    "MappedFile",
    "fail",
    "checked_numel",
    "describe_value",
    "readonly",
    "atomic_target",
    "atomic_write",
    "SAFETENSORS_DTYPES",
    "SAFETENSORS_BITS",
    "safetensors_name_of",
    "TORCH_DTYPES",
    "TORCH_STORAGE_DTYPES",
    "MAX_INDEX",
]

#: Largest element count or byte count any reader accepts (2**62): beyond it the
#: arithmetic would leave int64, and no file on a disk holds that much anyway.
MAX_INDEX = 1 << 62


def fail(path, reason: str) -> RefquantError:
    """The one error shape of the readers: ``"<path>: <reason>"``."""
    return RefquantError(f"{os.fspath(path)}: {reason}")


@dataclass(frozen=True)
class TensorInfo:
    """What a checkpoint says about one tensor, known without reading its data.

    Attributes
    ----------
    name : str
        Key in the checkpoint mapping.
    dtype : numpy.dtype
        dtype of the array that reading returns (ml_dtypes for bf16, fp8, fp6, fp4).
    shape : tuple of int
        Shape of the array that reading returns.
    nbytes : int
        Bytes the tensor occupies in the file (packed formats: the packed size).
    stored_dtype : str
        The format's own name for the dtype (``"BF16"``, ``"torch.float8_e4m3fn"``,
        ``"Q4_0"``).
    scheme : str or None
        For quantized storage, the scheme that decodes it (``"ggml:Q4_0"``); ``None``
        for plain numbers. Naming conventions of quantized checkpoints
        (``.weight_scale``, ``.qweight``) are recognised by :func:`refquant.io.quant_schemes`.
    logical_shape : tuple of int or None
        For block-quantized storage returned as raw bytes: the shape of the numbers
        those bytes decode to.
    """

    name: str
    dtype: np.dtype
    shape: tuple
    nbytes: int
    stored_dtype: str
    scheme: str | None = None
    logical_shape: tuple | None = None

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def checked_numel(shape, path, what: str, itemsize: int = 16) -> int:
    """Product of a shape read from a file, checked so that any array of it can exist.

    Every dim must be an int in ``[0, 2**62]``, and the *extent* -- the product
    of the dims with each 0 counted as 1, times ``itemsize`` -- at most
    ``MAX_INDEX`` bytes. The element count alone is not enough: ``[0, 2**62]``
    has no elements, yet NumPy refuses to make such an array ("array is too
    big"), since it bounds the product of the non-zero dims times the itemsize
    by the largest ``intp``. ``itemsize`` defaults to 16, the widest dtype any
    reader returns (complex128), for callers that do not know it yet.
    Python ints cannot overflow, so every check is on exact values, before
    anything is allocated.
    """
    if not isinstance(shape, list | tuple):
        raise fail(path, f"{what}: shape {describe_value(shape)} is not a list of integers")
    if len(shape) > 64:
        # NumPy's NPY_MAXDIMS; a longer shape could never become an array
        raise fail(path, f"{what}: shape has {len(shape)} dims; at most 64 are supported")
    n = 1
    extent = max(int(itemsize), 1)
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise fail(path, f"{what}: shape {describe_value(list(shape))} holds {describe_value(d)}; "
                             "expected integers >= 0")
        if d > MAX_INDEX:
            raise fail(path, f"{what}: shape {describe_value(list(shape))} has a dim above 2**62")
        n *= d
        extent *= max(d, 1)
        if extent > MAX_INDEX:
            raise fail(path, f"{what}: shape {describe_value(list(shape))} spans more than 2**62 bytes "
                             f"(the product of its non-zero dims times the itemsize {itemsize}); "
                             "no array can have that shape, even one with zero elements")
    return n


def describe_value(x, limit: int = 80) -> str:
    """``repr`` for error messages that cannot recurse, blow up or hit the int-digit limit.

    Containers are shown one level deep (``[0, 4611686018427387904]``,
    ``(<tuple>, ...)``), strings and the whole text cut at ``limit`` characters.
    """
    def one(v):
        if isinstance(v, bool) or v is None or isinstance(v, float):
            return repr(v)
        if isinstance(v, int):
            return repr(v) if v.bit_length() <= 128 else f"<int of {v.bit_length()} bits>"
        if isinstance(v, str | bytes):
            return repr(v[:limit])
        return f"<{type(v).__name__}>"

    if isinstance(x, list | tuple):
        parts, total = [], 0
        for v in x:
            s = one(v)
            parts.append(s)
            total += len(s) + 2
            if total > limit:
                parts.append("...")
                break
        text = ("[" if isinstance(x, list) else "(") + ", ".join(parts) + ("]" if isinstance(x, list) else ")")
    else:
        text = one(x)
    return text if len(text) <= limit + 8 else text[:limit] + "..."


def readonly(a: np.ndarray) -> np.ndarray:
    """Return ``a`` with its writeable flag off (a view when ``a`` was writeable)."""
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


# ---------------------------------------------------------------------------
# memory maps and the registry of files being read
# ---------------------------------------------------------------------------

_OPEN_LOCK = threading.Lock()
_OPEN_FILES: dict[tuple[int, int], int] = {}  # (st_dev, st_ino) -> open count


def _file_id(path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class MappedFile:
    """A file opened read-only and memory-mapped whole (empty files: no map).

    ``view(offset, n, what)`` returns a read-only memoryview after checking the
    range lies inside the file. :meth:`close` unmaps; where arrays still point into
    the map, Python keeps the map alive until the last of them is gone (the close
    only drops refquant's own reference), so closing never invalidates an array.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            self._fh = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        except OSError as e:
            raise fail(path, f"cannot open: {e.strerror or e}") from None
        self.size = os.fstat(self._fh.fileno()).st_size
        self._map = None
        if self.size:
            try:
                self._map = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError) as e:
                self._fh.close()
                raise fail(path, f"cannot memory-map: {e}") from None
            self._mv = memoryview(self._map)
        else:
            self._mv = memoryview(b"")
        st = os.fstat(self._fh.fileno())
        self._id = (st.st_dev, st.st_ino)
        with _OPEN_LOCK:
            _OPEN_FILES[self._id] = _OPEN_FILES.get(self._id, 0) + 1
        self.closed = False

    def view(self, offset: int, n: int, what: str = "data") -> memoryview:
        if self.closed:
            raise fail(self.path, "the checkpoint is closed")
        if offset < 0 or n < 0 or offset + n > self.size:
            raise fail(
                self.path,
                f"{what} at bytes [{offset}, {offset + n}) lies outside the file "
                f"({self.size} bytes): truncated or corrupt",
            )
        return self._mv[offset : offset + n]

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with _OPEN_LOCK:
            left = _OPEN_FILES.get(self._id, 1) - 1
            if left:
                _OPEN_FILES[self._id] = left
            else:
                _OPEN_FILES.pop(self._id, None)
        self._mv.release()
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                pass  # arrays still view it; it unmaps when the last one goes
            self._map = None
        self._fh.close()


def is_being_read(path) -> bool:
    """Whether a checkpoint opened by refquant currently reads the file at ``path``."""
    fid = _file_id(path)
    with _OPEN_LOCK:
        return fid is not None and fid in _OPEN_FILES


@contextlib.contextmanager
def atomic_target(path, *, overwrite: bool):
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The temporary file lives in the destination folder (so :func:`os.replace` is
    atomic) and is removed when the body fails: no partial output is ever left
    under ``path``. An existing ``path`` is replaced only when ``overwrite`` is
    true, and never while a refquant checkpoint still reads it.
    """
    path = Path(path)
    if path.exists():
        if path.is_dir():
            raise RefquantError(f"path {os.fspath(path)!r} is a directory; expected a file name")
        if not overwrite:
            raise RefquantError(
                f"path {os.fspath(path)!r} exists; pass overwrite=True to replace it"
            )
        if is_being_read(path):
            raise RefquantError(
                f"path {os.fspath(path)!r} is an input still open for reading; "
                "write elsewhere or close it first"
            )
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise RefquantError(f"folder {os.fspath(folder)!r} of path does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as e:  # a folder that takes no new files (/proc, read-only, full)
        raise RefquantError(f"cannot create a file in {os.fspath(folder)!r}: {e.strerror or e}") from None
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:  # (an OSError while writing, disk full, propagates as itself)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write(path, write: Callable, *, overwrite: bool) -> Path:
    """Write a file through ``write(fileobj)`` into a temporary file, then rename it.

    The temporary file is flushed and fsynced before the rename; see
    :func:`atomic_target` for where it lives and when ``path`` may be replaced.
    """
    with atomic_target(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


# ---------------------------------------------------------------------------
# the lazy mapping
# ---------------------------------------------------------------------------

class LazyCheckpoint(Mapping):
    """A read-only mapping ``name -> numpy.ndarray`` over a checkpoint file.

    Opening reads the header only; ``ckpt[name]`` reads (or maps) one tensor.
    Use it as a context manager, or call :meth:`close`, to release the file.

    Attributes
    ----------
    path : str
        The file (or index / folder) that was opened.
    format : str
        ``"safetensors"``, ``"pytorch-zip"``, ``"pytorch-legacy"``, ``"npy"``,
        ``"npz"``, ``"gguf"``, ``"onnx"``, ``"keras"``, ``"flax"``, ``"tf"``,
        ``"sharded"``.
    metadata : mapping
        What the file says besides its tensors (safetensors ``__metadata__``, GGUF
        key/values, the non-tensor leaves of a PyTorch checkpoint, ...).
    """

    format = "?"

    def __init__(self, path, infos: dict[str, TensorInfo], metadata=None):
        self.path = os.fspath(path)
        self._infos = dict(infos)
        self.metadata = MappingProxyType(dict(metadata or {}))
        self._closers: list[Callable[[], None]] = []
        self.closed = False

    # subclasses implement this one
    def _read(self, name: str) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def info(self, name: str) -> TensorInfo:
        """dtype, shape and stored size of ``name``, without reading its data."""
        try:
            return self._infos[name]
        except KeyError:
            raise KeyError(name) from None

    @property
    def infos(self) -> Mapping[str, TensorInfo]:
        """All :class:`TensorInfo` records, in file order."""
        return MappingProxyType(self._infos)

    @property
    def nbytes(self) -> int:
        return sum(i.nbytes for i in self._infos.values())

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._infos:
            raise KeyError(name)
        if self.closed:
            raise fail(self.path, f"tensor {name!r} requested after the checkpoint was closed")
        return readonly(self._read(name))

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)

    def __len__(self) -> int:
        return len(self._infos)

    def __contains__(self, name) -> bool:
        return name in self._infos

    def close(self) -> None:
        """Release the file and its maps (arrays already handed out stay valid)."""
        if self.closed:
            return
        self.closed = True
        for c in reversed(self._closers):
            c()
        self._closers.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass

    # the logical view of quantized layouts (refquant.io.layouts)
    def logical_names(self) -> list[str]:
        """Logical weights (``x.weight``, not ``x.qweight`` / ``x.scales``), then plain tensors.

        The layout is detected by :func:`refquant.io.layouts.layout_of` (the
        folder's ``config.json``, else the tensors); unknown layouts raise.
        """
        from .layouts import layout_of

        return layout_of(self).logical_names()

    def scheme(self, name: str):
        """:class:`refquant.io.layouts.Scheme` of logical weight ``name``; ``None`` when plain."""
        from .layouts import layout_of

        return layout_of(self).scheme(name)

    def dequantize(self, name: str) -> np.ndarray:
        """Logical weight ``name`` as float32, as its layout's own dequantization computes it."""
        from .layouts import layout_of

        return layout_of(self).dequantize(name)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self)} tensors, {self.nbytes} bytes"
        return f"<{type(self).__name__} {self.format} {self.path!r}: {state}>"


# ---------------------------------------------------------------------------
# dtype tables
# ---------------------------------------------------------------------------

#: safetensors dtype name -> numpy dtype of the array refquant returns.
#: Source: huggingface/safetensors ``safetensors/src/tensor.rs`` (``enum Dtype``,
#: ``Dtype::bitsize``). F4 / F6 are stored packed (see refquant.io.safetensors).
SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "F4": np.dtype(ml_dtypes.float4_e2m1fn),
    "F6_E2M3": np.dtype(ml_dtypes.float6_e2m3fn),
    "F6_E3M2": np.dtype(ml_dtypes.float6_e3m2fn),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E8M0": np.dtype(ml_dtypes.float8_e8m0fnu),
    "F8_E4M3FNUZ": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "F8_E5M2FNUZ": np.dtype(ml_dtypes.float8_e5m2fnuz),
    "I16": np.dtype("<i2"),
    "U16": np.dtype("<u2"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I32": np.dtype("<i4"),
    "U32": np.dtype("<u4"),
    "F32": np.dtype("<f4"),
    "C64": np.dtype("<c8"),
    "F64": np.dtype("<f8"),
    "I64": np.dtype("<i8"),
    "U64": np.dtype("<u8"),
}

#: Bits per element in a safetensors file (``Dtype::bitsize``).
SAFETENSORS_BITS: dict[str, int] = {
    k: (4 if k == "F4" else 6 if k.startswith("F6_") else 8 * v.itemsize)
    for k, v in SAFETENSORS_DTYPES.items()
}

_SAFETENSORS_BY_DTYPE = {v: k for k, v in SAFETENSORS_DTYPES.items()}


def safetensors_name_of(dtype) -> str:
    """The safetensors dtype name of a numpy dtype (little-endian only)."""
    dt = np.dtype(dtype)
    if dt.byteorder == ">" or (dt.byteorder == "=" and np.little_endian is False):
        raise RefquantError(f"dtype {dt!r} is big-endian; safetensors stores little-endian")
    try:
        return _SAFETENSORS_BY_DTYPE[dt.newbyteorder("<") if dt.itemsize > 1 else dt]
    except KeyError:
        raise RefquantError(
            f"dtype {dt!r} has no safetensors name; expected one of "
            f"{sorted(str(d) for d in SAFETENSORS_DTYPES.values())}"
        ) from None


#: ``torch.<name>`` dtype -> numpy dtype. Source: torch/_weights_only_unpickler.py
#: allows every dtype of torch.storage._dtype_to_storage_type_map / _new_dtypes.
TORCH_DTYPES: dict[str, np.dtype] = {
    "float64": np.dtype("<f8"),
    "double": np.dtype("<f8"),
    "float32": np.dtype("<f4"),
    "float": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "half": np.dtype("<f2"),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "complex128": np.dtype("<c16"),
    "complex64": np.dtype("<c8"),
    "int64": np.dtype("<i8"),
    "long": np.dtype("<i8"),
    "int32": np.dtype("<i4"),
    "int": np.dtype("<i4"),
    "int16": np.dtype("<i2"),
    "short": np.dtype("<i2"),
    "int8": np.dtype("i1"),
    "uint8": np.dtype("u1"),
    "uint16": np.dtype("<u2"),
    "uint32": np.dtype("<u4"),
    "uint64": np.dtype("<u8"),
    "bool": np.dtype(np.bool_),
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
    "float8_e4m3fnuz": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "float8_e5m2fnuz": np.dtype(ml_dtypes.float8_e5m2fnuz),
    "float8_e8m0fnu": np.dtype(ml_dtypes.float8_e8m0fnu),
    # two fp4 e2m1 codes per byte, low nibble first: returned as the raw bytes
    "float4_e2m1fn_x2": np.dtype("u1"),
}

#: Legacy typed storage classes (``torch.FloatStorage`` ...) -> numpy dtype.
TORCH_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": TORCH_DTYPES["float64"],
    "FloatStorage": TORCH_DTYPES["float32"],
    "HalfStorage": TORCH_DTYPES["float16"],
    "BFloat16Storage": TORCH_DTYPES["bfloat16"],
    "ComplexDoubleStorage": TORCH_DTYPES["complex128"],
    "ComplexFloatStorage": TORCH_DTYPES["complex64"],
    "LongStorage": TORCH_DTYPES["int64"],
    "IntStorage": TORCH_DTYPES["int32"],
    "ShortStorage": TORCH_DTYPES["int16"],
    "CharStorage": TORCH_DTYPES["int8"],
    "ByteStorage": TORCH_DTYPES["uint8"],
    "BoolStorage": TORCH_DTYPES["bool"],
    "UntypedStorage": np.dtype("u1"),
}
