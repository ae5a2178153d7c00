"""Checkpoints without the framework that wrote them: lazy, memory-mapped, strict.

``refquant.io.open(path)`` detects the format from the file's first bytes (never
its extension) and returns a :class:`LazyCheckpoint`: a read-only mapping
``name -> numpy.ndarray`` that has read only the header. ``.info(name)`` gives dtype,
shape and stored bytes without touching the data, ``.metadata`` what else the file
says, and ``with`` releases the memory maps.

=================  ==============================================  ========  ======
format             detected by                                     lazy      writer
=================  ==============================================  ========  ======
safetensors        u64 header length, whitespace, ``{``            mmap      yes
PyTorch zip        ``PK\\x03\\x04`` with ``*/data.pkl``               mmap      -
PyTorch legacy     pickled magic ``0x1950a86a20f9469cfc6c``          mmap      -
npy / npz          ``\\x93NUMPY`` / zip of ``*.npy``                  mmap      npz
GGUF               ``GGUF``                                         mmap      yes
ONNX               protobuf ModelProto (field 1, ir_version)        -         -
Keras              zip with ``model.weights.h5`` / HDF5 signature   child     -
Flax               msgpack map                                      -         -
TensorFlow         ``.index`` SSTable (footer magic) + ``.data-*``  mmap      -
sharded            ``*.index.json`` with ``weight_map``; a folder   per shard -
=================  ==============================================  ========  ======
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

from .._errors import RefquantError
from ._common import LazyCheckpoint, TensorInfo, fail

__all__ = [
    "open",
    "save",
    "load_arrays",
    "detect_format",
    "quant_schemes",
    "LazyCheckpoint",
    "TensorInfo",
    "ShardedCheckpoint",
]

_SAVE_FORMATS = ("safetensors", "npz", "gguf")
_TF_MAGIC = struct.pack("<Q", 0xDB4775248B80FB57)  # LevelDB/TF table footer magic
_LEGACY_TORCH = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."


def _safetensors_header_opens(p, head: bytes, size: int) -> bool:
    """Whether ``u64 n`` then JSON whitespace then ``{`` starts the file, ``8 + n <= size``.

    serde_json skips space, tab, LF and CR before the object (the safetensors
    crate's tests read ``b"\\x06\\0\\0\\0\\0\\0\\0\\0\\t\\n{}\\r "``); the
    whitespace may run past the 64 bytes sniffed, so the file is read on in
    64 KiB steps, at most 100 MB (safetensors' largest header) past byte 8.
    """
    (n,) = struct.unpack("<Q", head[:8])
    if 8 + n > size:
        return False
    ws = b" \t\n\r"
    rest = head[8:].lstrip(ws)
    if rest or len(head) == size:
        return rest[:1] == b"{"
    pos, end = len(head), min(size, 8 + 100_000_000)
    try:
        with p.open("rb") as f:
            f.seek(pos)
            while pos < end:
                chunk = f.read(min(1 << 16, end - pos))
                if not chunk:
                    return False
                pos += len(chunk)
                rest = chunk.lstrip(ws)
                if rest:
                    return rest[:1] == b"{"
    except OSError:
        return False
    return False


def detect_format(path) -> str:
    """Name the format of ``path`` from its content (see the module table), never its name.

    Notes
    -----
    **Formula**: first match wins, in the order of the checks: zip (then its
    entries decide), ``\x93NUMPY``, ``GGUF``, HDF5 signature, the legacy PyTorch
    magic pickle, ``u64 n`` followed by ``{`` (after JSON whitespace) with
    ``8 + n <=`` size (safetensors),
    a JSON object (an index), the LevelDB table magic in the last 8 bytes (TF),
    protobuf field 1 varint (ONNX), a msgpack map (Flax).

    **Reference**: the magic numbers of each format's specification (see the
    reader modules).
    """
    p = Path(path)
    if p.is_dir():
        return "directory"
    if not p.exists() and Path(f"{path}.index").is_file():
        return "tf"
    try:
        with p.open("rb") as f:
            head = f.read(64)
            size = os.fstat(f.fileno()).st_size
            tail = b""
            if size >= 48:
                f.seek(size - 8)
                tail = f.read(8)
    except OSError as e:
        raise RefquantError(f"{os.fspath(path)}: cannot open: {e.strerror or e}") from None
    if not head:
        raise fail(path, "empty file: no checkpoint format is empty")
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        import zipfile

        from .pytorch import _zip_errors

        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
        except _zip_errors() as e:
            raise fail(path, f"zip archive unreadable: {type(e).__name__}: {e}") from None
        if any(re.match(r"^(?:[^/]*/)?data\.pkl$", n) for n in names):
            return "pytorch-zip"
        if "model.weights.h5" in names:
            return "keras"
        if all(n.endswith(".npy") or n.endswith("/") for n in names):
            return "npz"
        raise fail(path, f"zip archive of unknown layout (entries {names[:5]})")
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"GGUF"):
        return "gguf"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "keras-h5"
    if head.startswith(_LEGACY_TORCH[:4]):
        return "pytorch-legacy"
    if len(head) >= 9 and _safetensors_header_opens(p, head, size):
        return "safetensors"
    if len(head) >= 10 and head[8:].lstrip(b" \t\n\r")[:2] in (b'{"', b"{}"):
        (n,) = struct.unpack("<Q", head[:8])
        if 8 + n > size and n <= 100_000_000:  # a safetensors file cut short
            raise fail(path, f"safetensors header of {n} bytes, but the file has only {size}: "
                       "truncated")
    if head.lstrip()[:1] == b"{":
        return "index"
    if tail == _TF_MAGIC:
        return "tf"
    if head[0] == 0x08:
        return "onnx"
    if 0x80 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF):
        return "flax"
    raise fail(path, f"unrecognised checkpoint format (first bytes {head[:16]!r})")


def open(path) -> LazyCheckpoint:  # noqa: A001 - the module's verb, like io.open
    """Open a checkpoint lazily; the format is detected from its content.

    Parameters
    ----------
    path : str or os.PathLike
        A file, a sharded index (``model.safetensors.index.json``,
        ``pytorch_model.bin.index.json``), a Hugging Face model folder, or a
        TensorFlow checkpoint prefix (``model.ckpt`` for ``model.ckpt.index``).

    Returns
    -------
    LazyCheckpoint
        Read-only mapping name -> numpy.ndarray; a context manager.

    Notes
    -----
    **Formula**: arrays are the stored bits reinterpreted, never converted: no
    rounding, no saturation (sub-byte safetensors and ggml blocks are unpacked
    exactly; see their modules).

    **Reference**: the format specifications cited by each reader module.

    Examples
    --------
    >>> with refquant.io.open("model.safetensors") as ckpt:  # doctest: +SKIP
    ...     w = ckpt["embed.weight"]
    """
    fmt = detect_format(path)
    if fmt == "safetensors":
        from .safetensors import SafetensorsCheckpoint

        return SafetensorsCheckpoint(path)
    if fmt == "pytorch-zip":
        from .pytorch import TorchZipCheckpoint

        return TorchZipCheckpoint(path)
    if fmt == "pytorch-legacy":
        from .pytorch import TorchLegacyCheckpoint

        return TorchLegacyCheckpoint(path)
    if fmt == "npy":
        from .numpy import NpyCheckpoint

        return NpyCheckpoint(path, Path(path).stem)
    if fmt == "npz":
        from .numpy import NpzCheckpoint

        return NpzCheckpoint(path)
    if fmt == "gguf":
        from .gguf import GGUFCheckpoint

        return GGUFCheckpoint(path)
    if fmt == "onnx":
        from .onnx import OnnxCheckpoint

        return OnnxCheckpoint(path)
    if fmt in ("keras", "keras-h5"):
        from .keras import KerasCheckpoint

        return KerasCheckpoint(path)
    if fmt == "flax":
        from .flax import FlaxCheckpoint

        return FlaxCheckpoint(path)
    if fmt == "tf":
        from .tf import TFCheckpoint

        return TFCheckpoint(path)
    if fmt == "index":
        return ShardedCheckpoint(path)
    return _open_directory(path)


class ShardedCheckpoint(LazyCheckpoint):
    """A checkpoint split over shards named by an index's ``weight_map``.

    Every shard is opened (headers only) at open; shard file names must stay
    inside the index's folder.
    """

    format = "sharded"

    def __init__(self, path):
        p = Path(path)
        try:
            if p.stat().st_size > 100_000_000:
                raise fail(path, "index file larger than 100 MB")
            index = json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, RecursionError, UnicodeDecodeError) as e:
            raise fail(path, f"index is not valid JSON: {e}") from None
        except OSError as e:
            raise fail(path, f"cannot read index: {e.strerror or e}") from None
        wm = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(wm, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in wm.items()):
            raise fail(path, "index has no weight_map of str -> str")
        folder = p.resolve().parent
        self._shards: dict[str, LazyCheckpoint] = {}
        self._where: dict[str, LazyCheckpoint] = {}
        infos = {}
        try:
            for name, shard in wm.items():
                if "\0" in shard:
                    raise fail(path, f"shard name {shard!r} holds a NUL byte")
                sp = (folder / shard).resolve()
                if sp.parent != folder and folder not in sp.parents:
                    raise fail(path, f"shard {shard!r} lies outside the index's folder")
                ck = self._shards.get(shard)
                if ck is None:
                    if not sp.is_file():
                        raise fail(path, f"shard {shard!r} is missing")
                    if detect_format(sp) == "index":  # an index of indexes recurses
                        raise fail(path, f"shard {shard!r} is itself an index")
                    ck = self._shards[shard] = open(sp)
                if name not in ck:
                    raise fail(path, f"tensor {name!r} is not in its shard {shard!r}")
                infos[name] = ck.info(name)
                self._where[name] = ck
        except BaseException:
            for ck in self._shards.values():
                ck.close()
            raise
        meta = index.get("metadata") if isinstance(index.get("metadata"), dict) else {}
        super().__init__(path, infos, meta)
        self._closers += [ck.close for ck in self._shards.values()]

    def _read(self, name):
        return self._where[name][name]


_DIR_CANDIDATES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
    "model.gguf",
    "flax_model.msgpack",
    "tf_model.h5",
    "model.onnx",
)


def _open_directory(path):
    p = Path(path)
    chosen = next((p / c for c in _DIR_CANDIDATES if (p / c).is_file()), None)
    if chosen is None:
        st = sorted(p.glob("*.safetensors"))
        if len(st) == 1:
            chosen = st[0]
    if chosen is None:
        raise fail(path, "folder holds no checkpoint (looked for " + ", ".join(_DIR_CANDIDATES)
                   + ", or a single *.safetensors)")
    ck = open(chosen)
    cfg = p / "config.json"
    if cfg.is_file() and cfg.stat().st_size < 10_000_000:
        try:
            config = json.loads(cfg.read_text(encoding="utf-8"))
        except (ValueError, RecursionError, UnicodeDecodeError):
            config = None
        if isinstance(config, dict):
            ck.metadata = type(ck.metadata)({**ck.metadata, "config": config})
    return ck


def save(tensors, path, format=None, *, overwrite=False, metadata=None, layout=None,  # noqa: A002
         **options):
    """Write ``tensors`` (name -> array) to ``path`` atomically.

    Parameters
    ----------
    tensors : mapping of str to array_like
    path : str or os.PathLike
    format : {"safetensors", "npz", "gguf"}, optional
        Default: from the suffix (``.safetensors``, ``.npz``, ``.gguf``;
        ``.safetensors.index.json`` means sharded safetensors).
    overwrite : bool
        Replace an existing file; refused by default, and always refused while a
        refquant checkpoint still reads that file.
    metadata : mapping, optional
        safetensors: str -> str ``__metadata__``; gguf: key/values.
    layout : str, optional
        A quantized layout (``gptq``, ``awq``, ``fp8``, ``fp8-block``,
        ``pack-quantized``, ``mlx`` ...): ``path`` is then a model folder, written
        by :func:`refquant.io.layouts.save_layout` with ``options``.
    **options
        ``max_shard_size`` (safetensors), ``arch`` / ``types`` (gguf).

    Notes
    -----
    **Formula**: values are written bit for bit (no conversion, no rounding).

    **Reference**: each writer's module; the write goes to a temporary file in the
    same folder that :func:`os.replace` renames into place.
    """
    if layout is not None:
        from .layouts import save_layout

        if format is not None or metadata:
            raise RefquantError("layout= writes a model folder; it takes no format= or metadata=")
        return save_layout(tensors, path, layout, overwrite=overwrite, **options)
    fmt = format
    if fmt is None:
        name = os.fspath(path)
        if name.endswith(".safetensors") or name.endswith(".safetensors.index.json"):
            fmt = "safetensors"
        elif name.endswith(".npz"):
            fmt = "npz"
        elif name.endswith(".gguf"):
            fmt = "gguf"
        else:
            raise RefquantError(f"path {name!r}: cannot tell the format from the suffix; pass "
                                f"format= one of {_SAVE_FORMATS}")
    if fmt == "safetensors":
        from .safetensors import save_safetensors

        return save_safetensors(tensors, path, metadata=metadata, overwrite=overwrite, **options)
    if fmt == "npz":
        from .numpy import save_npz

        if metadata or options:
            raise RefquantError("format='npz' takes no metadata or options")
        return save_npz(tensors, path, overwrite=overwrite)
    if fmt == "gguf":
        from .gguf import save_gguf

        return save_gguf(tensors, path, metadata=metadata, overwrite=overwrite, **options)
    raise RefquantError(f"format={format!r}; expected one of {_SAVE_FORMATS}")


def load_arrays(path, key=None):
    """Every tensor of a checkpoint as ``{name: ndarray}`` (or one array when ``key``).

    Arrays are read-only views of the file's memory map where the format allows;
    they stay valid after this returns. For ``refquant verify`` and scripts that
    want plain arrays.

    Parameters
    ----------
    path : str or os.PathLike
        Any format :func:`open` reads.
    key : str, optional
        Return only this tensor; RefquantError listing a few names when absent.

    Notes
    -----
    **Formula**: ``{k: open(path)[k] for k in open(path)}``: bits unchanged.

    **Reference**: :func:`open`.
    """
    with open(path) as ck:
        if key is not None:
            if key not in ck:
                names = list(ck)[:8]
                raise RefquantError(f"key {key!r} is not in {os.fspath(path)!r}; it holds {names}"
                                    + (" ..." if len(ck) > 8 else ""))
            return ck[key]
        return {k: ck[k] for k in ck}


# ---------------------------------------------------------------------------
# quantized-checkpoint naming conventions
# ---------------------------------------------------------------------------

_SUFFIX_ROLES = (
    (".weight_scale_inv", "block scale (inverse) of {base}.weight"),
    (".weight_scale", "scale of {base}.weight"),
    (".weight_zero_point", "zero point of {base}.weight"),
    (".weight_global_scale", "global scale of {base}.weight"),
    (".input_scale", "activation scale of {base}"),
    (".weight_shape", "original shape of {base}.weight"),
    (".scales", "scales of {base}.qweight"),
    (".qzeros", "packed zero points of {base}.qweight"),
    (".g_idx", "group index of {base}.qweight (GPTQ act-order)"),
    (".weight.absmax", "bitsandbytes absmax of {base}.weight"),
    (".weight.quant_map", "bitsandbytes code book of {base}.weight"),
    (".SCB", "bitsandbytes LLM.int8 row scales of {base}.weight"),
)


def quant_schemes(ck: LazyCheckpoint) -> dict:
    """Name the quantization scheme of each tensor from dtypes and naming conventions.

    Recognises ggml types (GGUF), GPTQ / AWQ (``.qweight`` / ``.scales`` /
    ``.qzeros`` / ``.g_idx``), compressed-tensors (``weight_packed``,
    ``weight_scale``, ``weight_zero_point``), FP8 checkpoints (``weight_scale``,
    ``weight_scale_inv``, ``input_scale``), bitsandbytes (``absmax``, ``quant_map``,
    ``SCB``) and int8 / fp8 weights with a ``_scale`` sibling. Returns
    ``{name: scheme or None}``.

    Notes
    -----
    **Formula**: a naming rule, no arithmetic: a tensor's role comes from its
    suffix and its siblings' names, its kind from its dtype.

    **Reference**: AutoGPTQ / AutoAWQ (``qweight``, ``qzeros``, ``scales``,
    ``g_idx``); neuralmagic compressed-tensors (``weight_packed``,
    ``weight_scale``, ``weight_zero_point``); DeepSeek-V3 FP8
    (``weight_scale_inv``); bitsandbytes (``absmax``, ``quant_map``, ``SCB``).
    """
    names = set(ck)
    out = {}
    for name in ck:
        info = ck.info(name)
        scheme = info.scheme
        if scheme is None:
            for suf, role in _SUFFIX_ROLES:
                if name.endswith(suf):
                    scheme = role.format(base=name[: -len(suf)])
                    break
        if scheme is None and name.endswith(".qweight"):
            base = name[: -len(".qweight")]
            kind = "GPTQ" if base + ".g_idx" in names else "GPTQ/AWQ"
            scheme = f"{kind} int4 packed in int32 (qweight/scales/qzeros)"
        elif scheme is None and name.endswith("weight_packed"):
            scheme = "compressed-tensors pack-quantized (weight_packed/weight_scale)"
        elif scheme is None and name.endswith(".weight"):
            has_scale = name + "_scale" in names or name + "_scale_inv" in names
            kind = info.dtype.name
            if has_scale and info.dtype.kind in "iu":
                scheme = f"{kind} weight + weight_scale"
            elif has_scale or kind.startswith("float8"):
                scheme = f"{kind} weight" + (" + weight_scale" if has_scale else "")
            elif name + ".absmax" in names:
                scheme = "bitsandbytes 4-bit (absmax/quant_map)"
            elif name.rsplit(".", 1)[0] + ".SCB" in names:
                scheme = "bitsandbytes LLM.int8 (SCB)"
        if scheme is None and info.dtype.name.startswith(("float8", "float6", "float4")):
            scheme = info.dtype.name
        out[name] = scheme
    return out
