"""llama.cpp importance matrices (``imatrix``): read, compute and write them.

=========================  =================================================================
function                   llama.cpp counterpart
=========================  =================================================================
:func:`load_imatrix`       llama-quantize ``load_imatrix`` (tools/quantize/quantize.cpp): the
                           per-column importance vector handed to ``quantize_<type>`` as
                           ``quant_weights``
:func:`read_imatrix`       the raw file contents (sums, counts, datasets, chunk count)
:func:`compute_imatrix`    ``IMatrixCollector::collect_imatrix`` (tools/imatrix/imatrix.cpp)
:class:`ImatrixCollector`  the same, streaming over batches
:func:`save_imatrix`       ``save_imatrix`` (GGUF) and ``save_imatrix_legacy`` (``.dat``)
=========================  =================================================================

Formats (ggml-org/llama.cpp tools/imatrix/imatrix.cpp):

* **legacy** ``.dat``, little-endian: int32 ``n_entries``; per entry int32 ``len``, ``len``
  name bytes, int32 ``ncall``, int32 ``nval``, ``nval`` float32 values; then (optional,
  "latest imatrix version") int32 last chunk count, int32 ``len`` and the dataset name.
  ``save_imatrix_legacy`` stores ``(sum / count) * ncall`` with
  ``ncall = ceil(max(count) / chunk_size)`` (chunk_size = ``n_ctx / n_parallel``).
* **GGUF**: ``general.type = "imatrix"``, ``imatrix.datasets`` (string array),
  ``imatrix.chunk_count`` and ``imatrix.chunk_size`` (uint32); per tensor ``W`` an F32
  tensor ``W.in_sum2`` of ne ``(ncols, nmat)`` holding the sums of x² and ``W.counts`` of
  ne ``(1, nmat)`` holding the number of rows accumulated (per expert for MoE).

What llama-quantize computes from them (``load_imatrix``): GGUF, per matrix ``j``,
``sum2[j, :] / count[j]`` in float32, and ``1`` everywhere where ``count[j] <= 0`` (an expert
never routed to); legacy, ``value / ncall`` in float32 where ``ncall > 0``, else the stored
values unchanged.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._errors import RefquantError

__all__ = [
    "ImatrixData",
    "ImatrixCollector",
    "compute_imatrix",
    "load_imatrix",
    "read_imatrix",
    "save_imatrix",
]

_F32 = np.float32


@dataclass
class ImatrixData:
    """An imatrix file's contents.

    ``sums[name]`` is float32 of shape ``(nmat, ncols)`` (GGUF ``in_sum2``; for the legacy
    format the stored values, shape ``(1, nval)``), ``counts[name]`` float32 of shape
    ``(nmat,)`` (GGUF ``counts``; legacy: ``[ncall]``).
    """

    sums: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    datasets: list = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int | None = None
    legacy: bool = False

    def importance(self) -> dict:
        """``{name: float32 vector}`` exactly as llama-quantize's ``load_imatrix`` builds it."""
        out = {}
        for name, s in self.sums.items():
            c = self.counts[name]
            s = np.asarray(s, dtype=_F32)
            if self.legacy:
                ncall = int(c[0])
                v = (s / _F32(ncall)).astype(_F32) if ncall > 0 else s.copy()
            else:
                v = np.empty_like(s)
                for j in range(s.shape[0]):
                    v[j] = s[j] / _F32(c[j]) if c[j] > 0 else _F32(1)
            out[name] = v.reshape(-1)
        return out


def _check_name(name_bytes: bytes, path, what):
    if not name_bytes or b"\x00" in name_bytes:
        raise RefquantError(f"{path}: {what}: tensor name {name_bytes!r:.80} is empty or holds NUL")
    try:
        return name_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise RefquantError(f"{path}: {what}: tensor name {name_bytes!r:.80} is not UTF-8") from None


def _read_legacy(data: bytes, path) -> ImatrixData:
    n = len(data)
    pos = 0

    def i32(what):
        nonlocal pos
        if pos + 4 > n:
            raise RefquantError(f"{path}: truncated legacy imatrix: {what} at byte {pos} needs 4 bytes, "
                                f"{n - pos} left")
        (v,) = struct.unpack_from("<i", data, pos)
        pos += 4
        return v

    n_entries = i32("entry count")
    # each entry is at least 16 bytes (len, one name byte padded in, ncall, nval, one value)
    if n_entries < 1 or n_entries > (n - 4) // 17:
        raise RefquantError(f"{path}: legacy imatrix entry count {n_entries} does not fit a file of "
                            f"{n} bytes (expected 1 to {(n - 4) // 17})")
    out = ImatrixData(legacy=True)
    for i in range(n_entries):
        length = i32(f"entry {i} name length")
        if length < 1 or length > n - pos:
            raise RefquantError(f"{path}: entry {i}: name length {length} does not fit the "
                                f"{n - pos} bytes left (expected 1 or more)")
        name = _check_name(data[pos:pos + length], path, f"entry {i}")
        pos += length
        if name in out.sums:
            raise RefquantError(f"{path}: entry {i}: duplicate tensor name {name!r}")
        ncall = i32(f"entry {i} ncall")
        nval = i32(f"entry {i} nval")
        if ncall < 0:
            raise RefquantError(f"{path}: entry {i} ({name!r}): ncall {ncall} is negative")
        if nval < 1 or 4 * nval > n - pos:
            raise RefquantError(f"{path}: entry {i} ({name!r}): nval {nval} does not fit the "
                                f"{n - pos} bytes left (expected 1 to {(n - pos) // 4})")
        vals = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(_F32)
        pos += 4 * nval
        out.sums[name] = vals.reshape(1, nval)
        out.counts[name] = np.array([ncall], dtype=_F32)
    if pos < n:  # "latest imatrix version": last chunk count and the dataset name
        out.chunk_count = i32("last chunk count")
        length = i32("dataset name length")
        if length < 0 or length != n - pos:
            raise RefquantError(f"{path}: dataset name length {length} does not match the "
                                f"{n - pos} bytes left")
        try:
            out.datasets = [data[pos:].decode("utf-8")]
        except UnicodeDecodeError:
            raise RefquantError(f"{path}: dataset name is not UTF-8") from None
    return out


def _read_gguf(path) -> ImatrixData:
    from .gguf import open_gguf

    out = ImatrixData(legacy=False)
    with open_gguf(path) as ck:
        meta = dict(ck.metadata)
        if meta.get("general.type", "imatrix") != "imatrix":
            raise RefquantError(f"{path}: general.type is {meta['general.type']!r}, expected 'imatrix'")
        ds = meta.get("imatrix.datasets", [])
        out.datasets = [ds] if isinstance(ds, str) else list(ds)
        out.chunk_count = int(meta.get("imatrix.chunk_count", 0))
        cs = meta.get("imatrix.chunk_size")
        out.chunk_size = None if cs is None else int(cs)
        names = list(ck)
        bases = sorted({k[: -len(".in_sum2")] for k in names if k.endswith(".in_sum2")})
        for k in names:
            if k.endswith(".counts") and k[: -len(".counts")] not in bases:
                raise RefquantError(f"{path}: {k!r} has no matching .in_sum2 tensor")
        for b in bases:
            if b + ".counts" not in names:
                raise RefquantError(f"{path}: {b + '.in_sum2'!r} has no matching .counts tensor")
            s = np.asarray(ck[b + ".in_sum2"])
            c = np.asarray(ck[b + ".counts"])
            if s.dtype != np.float32 or c.dtype != np.float32:
                raise RefquantError(f"{path}: {b!r}: in_sum2/counts must be F32, got {s.dtype}/{c.dtype}")
            nmat = c.size
            if s.ndim not in (1, 2) or nmat < 1 or s.size % nmat or (s.ndim == 2 and s.shape[0] != nmat):
                raise RefquantError(f"{path}: {b!r}: in_sum2 shape {s.shape} does not fit counts "
                                    f"shape {c.shape} (expected (nmat, ncols) with nmat={nmat})")
            out.sums[b] = s.reshape(nmat, -1).astype(_F32)
            out.counts[b] = c.reshape(-1).astype(_F32)
    return out


def read_imatrix(path) -> ImatrixData:
    """Read a llama.cpp imatrix file, GGUF or legacy ``.dat`` (told apart by the magic ``GGUF``).

    Raises RefquantError on truncation, counts that do not fit the file, empty / NUL /
    non-UTF-8 names, duplicate names and trailing bytes. Allocations are bounded by the file
    size: every count is checked against the bytes left before anything is read.

    Notes
    -----
    **Formula**: see the module docstring. **Reference**: llama.cpp tools/imatrix/imatrix.cpp
    ``save_imatrix_legacy`` / ``load_imatrix_legacy`` / ``save_imatrix``.
    """
    path = Path(os.fspath(path))
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise RefquantError(f"{path}: cannot open imatrix file: {e}") from None
    if head == b"GGUF":
        return _read_gguf(path)
    return _read_legacy(path.read_bytes(), path)


def load_imatrix(path) -> dict:
    """``{tensor name: float32 importance vector}`` as llama-quantize's ``load_imatrix`` gives it.

    Notes
    -----
    **Formula**: GGUF: :math:`w_{j,i} = S_{j,i} / c_j` (float32 division) for matrix
    (expert) :math:`j`, and :math:`w_{j,i} = 1` where :math:`c_j \\le 0`; legacy:
    :math:`w_i = v_i / n_{call}` where :math:`n_{call} > 0`, else :math:`v_i`. The vector
    is the rows of all matrices concatenated (length ``nmat * ncols``).

    **Reference**: llama.cpp tools/quantize/quantize.cpp ``load_imatrix`` (GGUF) and its
    legacy branch (``e[j] /= ncall``).
    """
    return read_imatrix(path).importance()


class ImatrixCollector:
    """Accumulate llama-imatrix's statistics batch by batch (dense ``MUL_MAT`` tensors).

    ``add(name, x)`` takes the activations entering weight ``name`` (``src1`` of its
    ``MUL_MAT``): shape ``(rows, ncols)``. Per column it adds ``x**2`` row after row in
    float32 (``e.values[j] += x[j] * x[j]``, ``std::vector<float>``) and counts the rows
    (``e.counts[0] += ggml_nrows(src1)``).
    """

    def __init__(self):
        self.sums: dict = {}
        self.counts: dict = {}

    def add(self, name, x) -> None:
        if not isinstance(name, str) or not name or "\x00" in name:
            raise RefquantError(f"name must be a non-empty str without NUL, got {name!r:.80}")
        try:
            a = np.asarray(x)
        except (TypeError, ValueError):
            raise RefquantError(f"activations for {name!r} must be a real array") from None
        if a.dtype.kind not in "fiu" or a.ndim != 2:
            raise RefquantError(f"activations for {name!r} must be a real 2-D array (rows, ncols), "
                                f"got {a.dtype} {a.shape}")
        a = a.astype(_F32)
        if not np.isfinite(a).all():
            raise RefquantError(f"activations for {name!r} hold NaN/Inf (llama-imatrix aborts)")
        prev = self.sums.get(name)
        if prev is not None and prev.size != a.shape[1]:
            raise RefquantError(f"activations for {name!r} have {a.shape[1]} columns, earlier "
                                f"batches {prev.size} (llama-imatrix: inconsistent size)")
        if prev is None:
            prev = np.zeros(a.shape[1], dtype=_F32)
        # sequential float32 accumulation, one row after the other: cumsum runs left to right
        stacked = np.concatenate([prev[None, :], a * a], axis=0)
        s = np.cumsum(stacked, axis=0, dtype=_F32)[-1]
        if not np.isfinite(s).all():
            raise RefquantError(f"sum of squares for {name!r} overflows float32 (llama-imatrix aborts)")
        self.sums[name] = s
        self.counts[name] = self.counts.get(name, 0) + a.shape[0]

    def data(self, *, chunk_size: int = 512, datasets=()) -> ImatrixData:
        """The GGUF-format contents: ``chunk_count = max(count) // chunk_size``."""
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise RefquantError(f"chunk_size must be a positive int, got {chunk_size!r}")
        out = ImatrixData(legacy=False, chunk_size=chunk_size, datasets=[str(d) for d in datasets])
        for name in sorted(self.sums):
            out.sums[name] = self.sums[name].reshape(1, -1).copy()
            out.counts[name] = np.array([self.counts[name]], dtype=_F32)
        out.chunk_count = max(self.counts.values(), default=0) // chunk_size
        return out


def compute_imatrix(activations_by_tensor, *, chunk_size: int = 512, datasets=()) -> ImatrixData:
    """Importance matrix from calibration activations, as ``llama-imatrix`` accumulates it.

    Parameters
    ----------
    activations_by_tensor : mapping of str to array or iterable of arrays
        Per weight name, its input activations: one ``(rows, ncols)`` array or an iterable
        of such batches (streamed; nothing is concatenated).
    chunk_size : int
        llama-imatrix's ``n_ctx / n_parallel`` (stored as ``imatrix.chunk_size``).
    datasets : sequence of str

    Returns
    -------
    ImatrixData
        ``.importance()`` gives the vector llama-quantize uses: the mean over rows of x².

    Notes
    -----
    **Formula**: :math:`S_i = \\sum_r x_{r,i}^2` accumulated in float32 in row order,
    :math:`c = \\text{rows}`, importance :math:`S_i / c`.

    **Reference**: llama.cpp tools/imatrix/imatrix.cpp ``IMatrixCollector::collect_imatrix``
    (the ``MUL_MAT`` branch; MoE ``MUL_MAT_ID`` routing is not modelled).
    """
    col = ImatrixCollector()
    for name, acts in dict(activations_by_tensor).items():
        if hasattr(acts, "ndim"):  # one array (NumPy or array-like with a shape)
            batches = [acts]
        else:
            batches = acts
        for b in batches:
            col.add(name, b)
    return col.data(chunk_size=chunk_size, datasets=datasets)


def _legacy_bytes(d: ImatrixData, chunk_size: int) -> bytes:
    parts = [struct.pack("<i", len(d.sums))]
    for name in sorted(d.sums):
        s = np.asarray(d.sums[name], dtype=_F32)
        c = np.asarray(d.counts[name], dtype=_F32).reshape(-1)
        nb = name.encode("utf-8")
        parts.append(struct.pack("<i", len(nb)) + nb)
        if d.legacy:
            ncall = int(c[0])
            vals = s.reshape(-1)
        else:
            # ceiling division to avoid accidental zeros (save_imatrix_legacy)
            ncall = (int(c.max()) + chunk_size - 1) // chunk_size
            cc = np.repeat(c, s.shape[1]).astype(_F32)
            ss = s.reshape(-1).copy()
            zero = cc == 0
            ss[zero] = 1
            cc[zero] = 1
            vals = ((ss / cc).astype(_F32) * _F32(ncall)).astype(_F32)
        parts.append(struct.pack("<ii", ncall, vals.size))
        parts.append(vals.astype("<f4").tobytes())
    ds = (d.datasets[-1] if d.datasets else "").encode("utf-8")
    parts.append(struct.pack("<ii", d.chunk_count, len(ds)) + ds)
    return b"".join(parts)


def save_imatrix(data, path, *, file_format="gguf", chunk_size=None, overwrite=False):
    """Write an :class:`ImatrixData` as llama.cpp does: ``file_format="gguf"`` or ``"dat"`` (legacy).

    Notes
    -----
    **Formula**: GGUF stores sums and counts unchanged; legacy stores
    :math:`(S_i / c) \\cdot n_{call}` with :math:`n_{call} = \\lceil \\max c / \\text{chunk\\_size}
    \\rceil` (float32), 1 where :math:`c = 0`.

    **Reference**: llama.cpp tools/imatrix/imatrix.cpp ``save_imatrix`` /
    ``save_imatrix_legacy``.
    """
    from ._common import atomic_target

    if not isinstance(data, ImatrixData):
        raise RefquantError(f"data must be an ImatrixData, got {type(data).__name__}")
    if file_format not in ("gguf", "dat"):
        raise RefquantError(f"file_format must be 'gguf' or 'dat', got {file_format!r}")
    cs = chunk_size if chunk_size is not None else (data.chunk_size or 512)
    if not isinstance(cs, int) or cs < 1:
        raise RefquantError(f"chunk_size must be a positive int, got {cs!r}")
    path = Path(os.fspath(path))
    if file_format == "dat":
        raw = _legacy_bytes(data, cs)
        with atomic_target(path, overwrite=overwrite) as tmp:
            Path(tmp).write_bytes(raw)
        return path
    if data.legacy:
        raise RefquantError("a legacy imatrix has no per-row counts; write it with file_format='dat'")
    try:
        import gguf
    except ImportError:
        raise RefquantError("writing GGUF needs the gguf package: pip install 'refquant[gguf]'") from None
    with atomic_target(path, overwrite=overwrite) as tmp:
        w = gguf.GGUFWriter(tmp, "imatrix")
        w.add_string("general.type", "imatrix")
        w.add_array("imatrix.datasets", [str(x) for x in data.datasets])
        w.add_uint32("imatrix.chunk_count", int(data.chunk_count))
        w.add_uint32("imatrix.chunk_size", int(cs))
        for name in sorted(data.sums):
            s = np.ascontiguousarray(data.sums[name], dtype=_F32)
            c = np.ascontiguousarray(data.counts[name], dtype=_F32).reshape(-1, 1)
            w.add_tensor(name + ".in_sum2", s.reshape(c.shape[0], -1))
            w.add_tensor(name + ".counts", c)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return path
