"""``refquant compress``: a whole checkpoint, streamed tensor by tensor, with its report.

The pipeline reads any checkpoint :func:`refquant.io.open` reads, decides each
tensor's scheme from the recipe, plans the whole output (names, dtypes, shapes,
bytes) from the headers alone, writes the output's header, then reads,
quantizes, checks and writes one tensor at a time: peak memory is a few copies
of the largest tensor, whatever the checkpoint's size. Output goes to a
temporary file that is renamed into place at the end; the input is only ever
read.

Outputs
-------
``.safetensors``
    refquant's self-describing layout: each quantized tensor's parts (see
    :mod:`refquant.compress.schemes`) and, in ``__metadata__["refquant.compress"]``,
    a JSON document naming every tensor's scheme, shape and dtype, which is all
    :func:`decompress` needs.
Hugging Face folder (``--scheme gptq-int4-g128`` ...)
    GPTQ / AWQ / compressed-tensors / FP8-block layouts: :mod:`refquant.compress.hf`.
``.gguf``
    llama.cpp's container: ggml block schemes (``q4_0`` ... ``q6_k``) stored as
    their ggml types, kept tensors as F32 / F16 / BF16 / integer; from a GGUF
    input every metadata key is copied with its type and ``general.file_type``
    and ``general.quantization_version`` are set. With a llama.cpp preset
    (``q4_k_m`` ...: :mod:`refquant.compress.llamacpp`) from an F32 / F16 / BF16
    GGUF the file is the one llama-quantize writes, byte for byte (tested
    against llama.cpp's library on a tiny llama model).
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._errors import RefquantError
from .recipe import LlamaCppRecipe, Recipe, preset_recipe
from .report import CompressReport, TensorRow
from .schemes import KEEP, Part, Scheme, get_scheme

__all__ = ["compress", "decompress", "plan"]

_META_KEY = "refquant.compress"
# llama.cpp's GGML_QNT_VERSION (ggml.h), written as general.quantization_version
_GGML_QNT_VERSION = 2


@dataclass
class Planned:
    """One input tensor's fate: its scheme (None: kept) and the output parts it becomes."""

    name: str
    shape: tuple
    dtype: np.dtype
    bytes_in: int
    scheme: Scheme | None
    reason: str
    parts: list[Part] = field(default_factory=list)
    raw_type: str | None = None  # a kept GGUF tensor already in a ggml block type
    treat: object = None  # a methods.Treatment (gptq / awq / pruning) or None: round to nearest

    def out_name(self, part: Part) -> str:
        return self.name + part.suffix


def _recipe_of(scheme, recipe, fmt=None) -> Recipe:
    if (scheme is None) == (recipe is None):
        raise RefquantError("give exactly one of scheme= (a preset or format name) and recipe=")
    if recipe is not None:
        if isinstance(recipe, Recipe):
            return recipe
        from .recipe import load_recipe

        return load_recipe(recipe)
    return preset_recipe(scheme, fmt)


def _output_format(dst, output_format) -> str:
    if output_format is not None:
        if output_format not in ("safetensors", "gguf", "sharded"):
            raise RefquantError(f"output_format must be 'safetensors', 'gguf' or 'sharded', got "
                                f"{output_format!r}")
        return output_format
    name = os.fspath(dst)
    if name.endswith(".safetensors"):
        return "safetensors"
    if name.endswith(".gguf"):
        return "gguf"
    if name.endswith(".index.json") or os.path.isdir(name) or name.endswith(("/", os.sep)) or (
            not os.path.splitext(os.path.basename(name))[1]):
        return "sharded"
    raise RefquantError(f"output {name!r}: cannot tell the format from the suffix; name it "
                        "*.safetensors, *.gguf, a folder or FOLDER/model.safetensors.index.json "
                        "(sharded), or pass output_format=")


def _n_layer(ck) -> int | None:
    """``{arch}.block_count`` of a GGUF input (llama.cpp's ``hparams.n_layer``), or None."""
    meta = getattr(ck, "metadata", None) or {}
    arch = meta.get("general.architecture")
    n = meta.get(f"{arch}.block_count") if isinstance(arch, str) else None
    return int(n) if isinstance(n, (int, np.integer)) else None


def _n_gqa(ck) -> int | None:
    """``hparams.n_gqa()`` (heads per KV head, layer 0) from GGUF keys or a config.json."""
    meta = getattr(ck, "metadata", None) or {}
    arch = meta.get("general.architecture")
    if isinstance(arch, str):
        h = meta.get(f"{arch}.attention.head_count")
        kv = meta.get(f"{arch}.attention.head_count_kv")
    else:
        cfg = meta.get("config") if isinstance(meta.get("config"), dict) else {}
        h, kv = cfg.get("num_attention_heads"), cfg.get("num_key_value_heads")
    h = h[0] if isinstance(h, (list, tuple)) and h else h
    kv = kv[0] if isinstance(kv, (list, tuple)) and kv else kv
    if kv is None:
        kv = h  # llama.cpp: n_head_kv defaults to n_head
    if not isinstance(h, (int, np.integer)) or not isinstance(kv, (int, np.integer)):
        return None
    return int(h) // int(kv) if kv else 0


def _llama_decisions(ck, recipe: LlamaCppRecipe,
                     has_imatrix: bool = False) -> dict[str, tuple[str, str]]:
    from .llamacpp import select_types

    tensors = []
    for name, info in ck.infos.items():
        is_float = info.scheme is None and (info.dtype.kind == "f" or info.dtype.name == "bfloat16")
        tensors.append((name, tuple(info.logical_shape or info.shape), is_float))
    out = {}
    for name, c in select_types(tensors, recipe.preset, n_layer=_n_layer(ck),
                                n_gqa=_n_gqa(ck), has_imatrix=has_imatrix).items():
        info = ck.info(name)
        if c.ggml_type is None:
            out[name] = (KEEP, c.reason)
        elif c.ggml_type == "F16" and info.dtype == np.float16:
            out[name] = (KEEP, c.reason + " (already F16)")
        else:
            out[name] = (c.ggml_type.lower(), c.reason)
    return out


def plan(ck, recipe: Recipe, fmt: str = "safetensors", has_imatrix: bool = False) -> list[Planned]:
    """Decide every tensor's scheme and output parts from ``ck``'s headers alone
    (``has_imatrix``: a non-empty importance matrix, which llama.cpp's type choice reads)."""
    out = []
    llama = (_llama_decisions(ck, recipe, has_imatrix) if isinstance(recipe, LlamaCppRecipe)
             else None)
    for name, info in ck.infos.items():
        shape = tuple(info.logical_shape or info.shape)
        raw = info.stored_dtype.upper() if info.scheme and info.scheme.startswith("ggml:") else None
        if raw is not None and not any(r.matches(name) for r in recipe.rules):
            sname, why = KEEP, f"already {raw} (requantizing compounds the error)"
        elif llama is not None:
            sname, why = llama[name]
        else:
            sname, why = recipe.decide(name, np.dtype(np.float32) if raw else info.dtype, shape)
        scheme = None
        if sname in ("dense", "sparse24"):  # pruned weights in their own float type
            kind = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}.get(
                np.dtype(np.float32 if raw else info.dtype).name, "f32")
            sname = kind if sname == "dense" else f"sparse24-{kind}"
        if sname != KEEP:
            scheme = get_scheme(sname)
            bad = scheme.unsupported(shape)
            if bad is not None:
                scheme, why = None, f"kept: {bad}"
            elif fmt == "gguf" and scheme.gguf_type is None:
                raise RefquantError(f"tensor {name!r}: scheme {sname!r} has no ggml type, so it "
                                    "cannot be written to GGUF; use a ggml type (q8_0, q4_k, ...) "
                                    "or write .safetensors")
        p = Planned(name, shape, np.dtype(info.dtype), int(info.nbytes), scheme, why,
                    raw_type=raw)
        if scheme is not None and llama is None:
            p.treat = recipe.treatment(name)
            if p.treat is not None:
                p.reason += f" ({p.treat.label()})"
        if scheme is None:
            p.parts = [Part("", np.dtype(info.dtype), tuple(info.shape))]
        else:
            p.parts = scheme.parts(shape)
        out.append(p)
    recipe.check_required()
    return out


def _finite_or_refuse(name, w, nonfinite):
    if w.dtype == np.float32 and w.flags.c_contiguous:
        from ..kernels.cpu.ggml_quant import all_finite

        if all_finite(w):  # one pass over the bits, no boolean array, the GIL released
            return True
    bad = ~np.isfinite(w)
    if not bad.any():
        return True
    if nonfinite == "keep":
        return False
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    raise RefquantError(f"tensor {name!r} holds {int(bad.sum())} NaN/Inf value(s), the first "
                        f"{w[idx].item()!r} at index {idx}; refused (pass nonfinite='keep' to "
                        "store such tensors unquantized)")


def _measure(w, w_hat, scheme, parts, shape) -> tuple[float | None, float | None, bool]:
    """SQNR in dB (None when exact), max error in steps (None without steps), exact."""
    from ..kernels.cpu.stats import error_sums

    def flat(a):  # float32 / float64 as they are; float16, bfloat16 widened exactly
        a = np.ascontiguousarray(a).reshape(-1)
        return a if a.dtype in (np.float32, np.float64) else a.astype(np.float32)

    wf, hf = flat(w), flat(w_hat)
    # one pass in float64, the order of the sums fixed (kernels.cpu.stats); it releases the
    # GIL, so the workers' reports overlap
    signal, noise = error_sums(wf, hf)
    if noise == 0:
        return None, (0.0 if scheme.has_steps else None), True
    sq = 10 * math.log10(signal / noise) if signal > 0 else -math.inf
    steps = None
    gs = scheme.group_steps(parts, shape)
    if gs is not None:
        from ..kernels.cpu.stats import max_steps

        st, group = gs
        steps = float(max_steps(wf.reshape(st.shape[0], -1), hf.reshape(st.shape[0], -1),
                                np.ascontiguousarray(st), max(1, group)))
    return (sq if math.isfinite(sq) else None), steps, False


def _gguf_fields(src):
    """(key, value, type) of every metadata key of a GGUF input, through gguf-py's reader."""
    import gguf

    r = gguf.GGUFReader(src)
    fields = []
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type",
                                              "general.quantization_version"):
            continue
        vtype = f.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = f.types[-1] if len(f.types) > 1 else None
            fields.append((key, (f.contents(), sub), vtype))
        else:
            fields.append((key, f.contents(), vtype))
    arch = r.fields.get("general.architecture")
    return fields, (arch.contents() if arch is not None else None)


def _imatrix_fields(path, data) -> list:
    """The keys llama-quantize adds when given ``--imatrix path`` (``data``: the file's
    :class:`~refquant.io.imatrix.ImatrixData`), in its order.

    llama.cpp tools/quantize/quantize.cpp ``main`` passes them as KV overrides (after
    ``prepare_imatrix``), and src/llama-quant.cpp ``llama_model_quantize_impl`` sets
    them after ``general.quantization_version`` / ``general.file_type`` with
    ``gguf_set_val_*`` (an existing key is removed, then appended):

    * ``quantize.imatrix.file`` (string): the path as given, cut to 127 bytes
      (``strncpy(kvo.val_str, imatrix_file.c_str(), 127)``);
    * ``quantize.imatrix.dataset`` (string, when the file names a dataset): the first
      dataset, cut to 127 bytes;
    * ``quantize.imatrix.entries_count`` (uint32: ``LLAMA_KV_OVERRIDE_TYPE_INT`` is
      written with ``gguf_set_val_u32``, llama.cpp PR 14182): the number of entries;
    * ``quantize.imatrix.chunks_count`` (uint32, when above 0): the file's chunk count
      (legacy: its last chunk count; GGUF: ``imatrix.chunk_count``).

    llama.cpp builds before PR 14182 wrote the two counts as int32; the records of
    tests/data/llama_quantize/imatrix/ (llama-cpp-cffi 0.4.42) do, and differ from
    refquant's file in those two type tags only.
    """
    import gguf

    n = len(data.sums)
    if n == 0:  # llama-quantize: no imatrix data, no keys
        return []

    def cut(text: str, what: str) -> str:
        b = os.fsencode(text) if what == "file" else text.encode("utf-8")
        try:
            return b[:127].decode("utf-8")
        except UnicodeDecodeError:
            raise RefquantError(f"imatrix {what} {text!r}: its first 127 bytes (what "
                                "llama-quantize stores) end inside a UTF-8 character, which "
                                "a GGUF string cannot hold") from None

    s, u32 = gguf.GGUFValueType.STRING, gguf.GGUFValueType.UINT32
    out = [("quantize.imatrix.file", cut(os.fspath(path), "file"), s)]
    if data.datasets:
        out.append(("quantize.imatrix.dataset", cut(str(data.datasets[0]), "dataset"), s))
    out.append(("quantize.imatrix.entries_count", n, u32))
    if data.chunk_count > 0:
        out.append(("quantize.imatrix.chunks_count", int(data.chunk_count), u32))
    return out


def _file_type(planned, recipe=None) -> int | None:
    """llama.cpp's ``general.file_type``: the preset's, or the one ggml type of every tensor."""
    import gguf

    if isinstance(recipe, LlamaCppRecipe):
        from .llamacpp import ftype_of

        return ftype_of(recipe.preset)

    types = {p.scheme.gguf_type for p in planned if p.scheme is not None}
    if len(types) != 1:
        return None
    name = "MOSTLY_" + types.pop().upper()
    return int(gguf.LlamaFileType[name]) if name in gguf.LlamaFileType.__members__ else None


def _plain_ggml(dtype) -> str:
    names = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64",
             "int8": "I8", "int16": "I16", "int32": "I32", "int64": "I64"}
    try:
        return names[np.dtype(dtype).name]
    except KeyError:
        raise RefquantError(f"dtype {np.dtype(dtype)} has no ggml type; GGUF stores "
                            f"{', '.join(sorted(names))}") from None


def compress(src, dst, *, scheme=None, recipe=None, output_format=None, overwrite=False,
             nonfinite="raise", progress=None, resume=False, scheduler=None,
             n_workers=None, calibration=None, workers=None, imatrix=None) -> CompressReport:
    """Compress every tensor of checkpoint ``src`` into ``dst``, one tensor in memory at a time.

    Parameters
    ----------
    src : path
        Any checkpoint :func:`refquant.io.open` reads (a file, an index, a folder).
    dst : path
        ``*.safetensors`` or ``*.gguf`` (see the module docstring), or a folder /
        ``FOLDER/model.safetensors.index.json``: sharded output, one shard per input
        shard, the index written last (:mod:`refquant.compress.shards`); never ``src``.
    scheme : str, optional
        A preset (:data:`refquant.compress.recipe.PRESETS`) or a format name of the
        registry; the defaults keep norms, biases, embeddings and the head. A name of
        :data:`refquant.compress.hf.HF_SCHEMES` (``gptq-int4-g128``, ``awq-int4-g128``,
        ``ct-int4-g128``, ``ct-int8``, ``hf-fp8-block``) writes ``dst`` as a Hugging
        Face folder in that layout (:func:`refquant.compress.hf.compress_hf`).
    recipe : path or Recipe, optional
        Rules by name pattern instead of ``scheme``.
    nonfinite : {"raise", "keep"}
        A tensor holding NaN / Inf is refused naming the tensor and the first index,
        or (``"keep"``) stored unquantized.
    progress : callable, optional
        Called as ``progress(i, n, name)`` after each tensor (sharded output: after
        each shard).
    resume : bool
        Sharded output: continue the run that was interrupted, keeping its finished
        shards; the result is byte for byte an uninterrupted run's.
    scheduler : {None, "local", "dask"} or str
        Sharded output: where the shards run. None / ``"local"``: here, ``workers``
        at a time; ``"dask"``: a Dask LocalCluster of ``n_workers`` (2) processes;
        ``"tcp://HOST:PORT"``: an existing Dask distributed scheduler whose workers
        see the same file system.
    n_workers : int, optional
        Workers of the LocalCluster (``scheduler="dask"``).
    calibration : path, optional
        Per-layer calibration inputs (``.npz``, :mod:`refquant.compress.methods`) for
        the recipe's ``gptq`` / ``awq`` / wanda / sparsegpt rules, for ``mixed:B``
        (Hessian-weighted sensitivity) and for ``gptq-int4-g128`` /
        ``awq-int4-g128``; overrides the recipe's ``calibration``.
    workers : int, optional
        Local parallelism: tensors quantized on this many threads (single-file
        output; written in order, so the bytes are the 1-worker run's) or shards
        on this many threads (sharded output, each shard its own file), each
        running Numba's kernels on one thread (``workers=1``: one thread in all).
        Default: the CPUs this process may use (``os.sched_getaffinity``). Peak memory grows to about ``workers``
        tensors (shards) in flight. Threads need Numba's ``omp`` or ``tbb``
        threading layer (its parallel kernels are not thread-safe under
        ``workqueue``); without one a single-file run uses one thread.
    imatrix : path or dict, optional
        llama-quantize's ``--imatrix``: an imatrix file (GGUF or legacy ``.dat``, read with
        :func:`refquant.io.imatrix.load_imatrix`) or ``{tensor name: vector}``. A tensor
        quantized to a ggml type whose name has an entry is quantized by
        ``quantize_<type>(..., quant_weights)`` (:func:`refquant.compat.ggml.quantize`);
        one without an entry as without an imatrix (llama-quantize: "did not find
        imatrix data"); an entry of another size than ``ne[0]*ne[2]`` is refused.
        Overrides the recipe's ``imatrix``.

    Returns
    -------
    CompressReport
        One row per tensor: scheme, bits per weight, SQNR (dB), max error in steps,
        bytes before and after.
    """
    from .. import io as rio
    from ..io.streaming import GGUFStreamWriter, SafetensorsStreamWriter

    if nonfinite not in ("raise", "keep"):
        raise RefquantError(f"nonfinite must be 'raise' or 'keep', got {nonfinite!r}")
    from .hf import HF_SCHEMES, compress_hf

    if scheme in HF_SCHEMES:
        if recipe is not None or output_format not in (None, "hf") or resume or (
                scheduler not in (None, "local")) or nonfinite != "raise" or imatrix is not None:
            raise RefquantError(f"scheme {scheme!r} writes a Hugging Face folder; it takes no "
                                "recipe=, output_format=, resume=, scheduler=, nonfinite= or "
                                "imatrix=")
        return compress_hf(src, dst, scheme, overwrite=overwrite, progress=progress,
                           calibration=calibration)
    fmt = _output_format(dst, output_format)
    workers = _workers(workers)
    rec = _recipe_of(scheme, recipe, "safetensors" if fmt == "sharded" else fmt)
    calib_path = calibration if calibration is not None else rec.calibration
    from .methods import Calibration
    from .mixed import MixedRecipe

    imx = imatrix if imatrix is not None else getattr(rec, "imatrix", None)
    calib = (Calibration(calib_path, imx) if calib_path is not None or imx is not None
             else None)
    has_imatrix = bool(calib is not None and calib.imatrix)  # llama.cpp's qs.has_imatrix
    if isinstance(rec, MixedRecipe):
        with rio.open(src) as ck0:
            rec = rec.resolve(ck0, calib)
    src_p, dst_p = Path(src), Path(dst)
    if dst_p.exists() and src_p.exists() and os.path.samefile(src_p, dst_p):
        raise RefquantError(f"output {os.fspath(dst)!r} is the input; refquant never "
                            "overwrites its input")
    if fmt == "sharded":
        from .shards import compress_sharded

        if calib is not None and calib.imatrix is not None and calib.imatrix_path is None:
            raise RefquantError("sharded output reads the imatrix in each shard's worker: give "
                                "imatrix= as a file path, not a dict")

        rep = compress_sharded(src, dst, rec, overwrite=overwrite, nonfinite=nonfinite,
                               progress=progress, resume=resume, scheduler=scheduler,
                               n_workers=n_workers, workers=workers,
                               calibration=None if calib is None else calib.path,
                               imatrix=None if calib is None else calib.imatrix_path,
                               has_imatrix=has_imatrix)
        if getattr(rec, "plan", None) is not None:
            rep.plan = rec.plan
        return rep
    if resume or scheduler not in (None, "local"):
        raise RefquantError("resume= and scheduler= work shard by shard: name the output a "
                            "folder or FOLDER/model.safetensors.index.json, not "
                            f"{os.fspath(dst)!r}")
    report = CompressReport(os.fspath(src), os.fspath(dst), rec.source)
    llama_hf = None  # a Hugging Face llama folder written as llama.cpp's GGUF
    if fmt == "gguf":
        from .hf_gguf import is_llama_folder

        if is_llama_folder(src):
            llama_hf = src
    with _open_input(src, llama_hf) as ck:
        planned = plan(ck, rec, fmt, has_imatrix=has_imatrix)
        if nonfinite == "keep":
            _keep_nonfinite(ck, planned)
        if fmt == "safetensors":
            layout = [(p.out_name(t), t.dtype, t.shape) for p in planned for t in p.parts]
            meta = {"format": "pt", _META_KEY: json.dumps(
                _record(os.path.basename(os.fspath(src)), rec.source, planned),
                separators=(",", ":"))}
            writer = SafetensorsStreamWriter(dst, layout, metadata=meta, overwrite=overwrite)
        else:
            import gguf

            fields, arch = ([], None)
            if llama_hf is not None:
                from .hf_gguf import llama_fields

                fields, note = llama_fields(ck)
                arch = "llama"
                report.notes.append(note)
            elif ck.format == "gguf":
                fields, arch = _gguf_fields(src)
            if isinstance(rec, LlamaCppRecipe):
                # llama-quantize writes the tensors in its model loader's order
                # (weight_name_comparer: by blk.N, the others first, then by name)
                from .llamacpp import loader_order

                planned = loader_order(planned, key=lambda p: p.name)
            layout = []
            for p in planned:
                t = p.parts[0]
                tname = (p.scheme.gguf_type if p.scheme else p.raw_type or _plain_ggml(p.dtype))
                layout.append((p.name, tname, p.shape, t.nbytes))
            # llama-quantize copies the input's keys, then sets general.quantization_version
            # and general.file_type, which (gguf_set_val of a key: removed, then appended)
            # puts the two last, in that order
            if isinstance(rec, LlamaCppRecipe) or any(p.scheme is not None for p in planned):
                fields.append(("general.quantization_version", _GGML_QNT_VERSION,
                               gguf.GGUFValueType.UINT32))
            ftype = _file_type(planned, rec)
            if ftype is not None:
                fields.append(("general.file_type", ftype, gguf.GGUFValueType.UINT32))
            if calib is not None and calib.imatrix_path is not None:
                extra = _imatrix_fields(calib.imatrix_path, calib.imatrix_data)
                keys = {k for k, _, _ in extra}
                fields = [f for f in fields if f[0] not in keys] + extra
            writer = GGUFStreamWriter(dst, layout, arch=arch or "refquant", fields=fields,
                                      overwrite=overwrite)
        try:
            with writer:
                _write_all(ck, planned, writer, fmt, nonfinite, calib, workers, report, progress)
        except OSError as e:  # disk full, permission, I/O error: the temporary file is gone
            raise RefquantError(f"cannot write {os.fspath(dst)!r}: "
                                f"{e.strerror or e} (nothing was written)") from None
    if getattr(rec, "plan", None) is not None:
        report.plan = rec.plan
    return report


def _open_input(src, llama_hf):
    """The input checkpoint; a llama folder for GGUF output under llama.cpp's names."""
    from .. import io as rio

    ck = rio.open(src)
    if llama_hf is None:
        return ck
    from .hf_gguf import LlamaFolderView

    try:
        return LlamaFolderView(ck, llama_hf)
    except BaseException:
        ck.close()
        raise


def _workers(workers) -> int:
    if workers is None:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - not Linux
            return max(1, os.cpu_count() or 1)
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise RefquantError(f"workers must be a positive int, got {workers!r}")
    return int(workers)


def _numba_threadsafe() -> bool:
    """Whether Numba's parallel kernels may run from two threads at once: its ``omp`` and
    ``tbb`` threading layers are thread-safe, ``workqueue`` (the fallback when neither is
    installed) aborts the process on concurrent launches, so threads are not used then."""
    try:
        import numba
        from numba.np.ufunc import parallel

        parallel._launch_threads()
        return numba.threading_layer() in ("omp", "tbb")
    except Exception:  # pragma: no cover - numba internals moved: play safe
        return False


def _numba_threads(n):
    """Set this thread's Numba thread count to ``n``; returns the previous one (None: no
    Numba, or ``n`` None: nothing changed)."""
    if n is None:
        return None
    try:
        import numba

        prev = numba.get_num_threads()
        numba.set_num_threads(n)
        return prev
    except Exception:  # pragma: no cover - numba internals moved: keep its default
        return None


def _one_numba_thread() -> None:
    """Thread-pool initializer: this thread's Numba parallel kernels run on one thread.

    With ``workers`` threads each quantizing its own tensor, the parallelism is per
    tensor; letting each kernel also fork onto every CPU put ``workers`` x CPUs OpenMP
    threads on the cores, and their spin-waits at every kernel's join cost ~9x the
    kernel's own CPU time on a busy 2-core machine (q4_0: 0.23 s against 0.026 s of
    CPU for 15M weights). ``numba.set_num_threads`` is thread-local: the caller's
    thread keeps its setting. The bytes do not change (the kernels' rows are
    independent).
    """
    _numba_threads(1)


def _write_all(ck, planned, writer, fmt, nonfinite, calib, workers, report, progress):
    """Quantize on ``workers`` threads, read and write here in plan order (so the bytes do not
    depend on ``workers``): the tensors in flight hold at most about twice the float32
    bytes of the largest tensor (and never more than ``8 * workers`` tensors)."""
    def done(i, p, row):
        report.rows.append(row)
        if progress is not None:
            progress(i + 1, len(planned), p.name)

    if workers > 1 and not _numba_threadsafe():
        workers = 1
    if workers <= 1:
        # one worker is one thread: Numba's parallel kernels too (see _one_numba_thread)
        prev = _numba_threads(1)
        try:
            for i, p in enumerate(planned):
                done(i, p, _one(ck, p, writer, fmt, nonfinite, calib))
        finally:
            _numba_threads(prev)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers, thread_name_prefix="refquant-compress",
                            initializer=_one_numba_thread) as pool:
        # (index, planned, future or None for a copy, float32 bytes in flight), in plan order
        window = deque()

        def drain_one():
            i, p, fut, _ = window.popleft()
            if fut is None:  # a tensor kept as it is: read and written in its turn
                done(i, p, _one(ck, p, writer, fmt, nonfinite, calib))
                return
            parts, row = fut.result()
            for name, a in parts:
                writer.write(name, a)
            done(i, p, row)

        # The window holds the tensors being quantized or waiting to be written. It may
        # run ahead of its oldest tensor (a large one, say the output head in Q6_K) by
        # up to twice the float32 bytes of the largest tensor, so that the other workers
        # keep going meanwhile; memory stays a constant times the largest tensor.
        budget = 2 * max((4 * math.prod(p.shape) for p in planned if p.scheme is not None),
                         default=0)
        try:
            busy = held = 0  # quantizations in the window, their float32 bytes
            for i, p in enumerate(planned):
                if p.scheme is None:  # no work to overlap, and it must not stall the window
                    window.append((i, p, None, 0))
                    continue
                w = _stored(ck, p)  # made float32 on the worker
                nbytes = 4 * math.prod(p.shape)
                window.append((i, p, pool.submit(_quantize_planned, p, w, nonfinite, calib),
                               nbytes))
                busy += 1
                held += nbytes
                while busy > workers and (held > budget or busy > 8 * workers):
                    _, _, f, nbytes = window[0]
                    busy -= f is not None
                    held -= nbytes
                    drain_one()
            while window:
                drain_one()
        except BaseException:
            for _, _, f, _ in window:
                if f is not None:
                    f.cancel()
            raise


def _keep_nonfinite(ck, planned) -> None:
    """A tensor with NaN / Inf falls back to being kept (``nonfinite="keep"``).

    Its parts change, so the check runs before the layout is fixed (one extra read
    of each quantized tensor).
    """
    for p in planned:
        if p.scheme is not None:
            w = _logical(ck, p)
            if not np.isfinite(w).all():
                p.scheme, p.reason = None, "kept: holds NaN/Inf"
                p.parts = [Part("", p.dtype, tuple(ck.info(p.name).shape))]


def _record(source: str, recipe_source: str, planned) -> dict:
    """The compression record of ``__metadata__["refquant.compress"]`` (what decompress reads)."""
    return {"version": 1, "source": source, "recipe": recipe_source,
            "tensors": {p.name: {"shape": list(p.shape), "dtype": p.dtype.name,
                                 **(p.scheme.describe() if p.scheme else {"scheme": KEEP})}
                        for p in planned}}


def _logical(ck, p: Planned) -> np.ndarray:
    """Tensor ``p`` as float32 in its logical shape (GGUF blocks dequantized)."""
    return np.asarray(_stored(ck, p), np.float32)


def _stored(ck, p: Planned) -> np.ndarray:
    """Tensor ``p`` in its logical shape, in whatever float type the reader gives it (GGUF
    blocks dequantized): what a worker turns into float32 (for a memory-mapped input that
    is also where the bytes are read)."""
    info = ck.info(p.name)
    if info.scheme is not None and hasattr(ck, "dequantize"):
        return ck.dequantize(p.name)
    return ck[p.name]


def _one(ck, p: Planned, writer, fmt, nonfinite, calib=None) -> TensorRow:
    numel = math.prod(p.shape)
    if p.scheme is None:
        a = ck[p.name]
        writer.write(p.name, a.view(np.uint8) if fmt == "gguf" and p.raw_type else a)
        return TensorRow(p.name, list(p.shape), p.dtype.name, KEEP, p.reason,
                         8 * p.bytes_in / numel if numel else 0.0, p.bytes_in, p.bytes_in,
                         exact=True)
    parts, row = _quantize_planned(p, _stored(ck, p), nonfinite, calib)
    for name, a in parts:
        writer.write(name, a)
    return row


def _quantize_planned(p: Planned, w, nonfinite, calib):
    """([(output name, array)], report row) of one quantized tensor (thread-safe: no I/O)."""
    from .methods import apply

    numel = math.prod(p.shape)
    w = np.asarray(w, np.float32)
    _finite_or_refuse(p.name, w, nonfinite)
    parts = apply(p.scheme, w, p.treat, calib, p.name)
    out = []
    for t in p.parts:
        got = np.asarray(parts[t.suffix])
        if got.shape != tuple(t.shape) or got.dtype != t.dtype:  # a scheme bug, never input
            raise AssertionError(f"{p.name}{t.suffix}: {got.dtype}{got.shape} != planned "
                                 f"{t.dtype}{tuple(t.shape)}")
        out.append((p.out_name(t), got))
    w_hat = p.scheme.dequantize(parts, p.shape)
    sq, steps, exact = _measure(w, w_hat, p.scheme, parts, p.shape)
    out_bytes = sum(t.nbytes for t in p.parts)
    sparsity = float(np.count_nonzero(w_hat == 0) / numel) if p.treat is not None and (
        p.treat.prune) and numel else 0.0
    return out, TensorRow(p.name, list(p.shape), p.dtype.name, p.scheme.name, p.reason,
                          8 * out_bytes / numel if numel else 0.0, p.bytes_in, out_bytes, sq,
                          steps, sparsity=sparsity, exact=exact)


def decompress(src, dst, *, overwrite=False, dtype="float32", progress=None) -> int:
    """Restore float tensors from a compressed checkpoint (refquant's layout or any GGUF).

    Every tensor refquant can dequantize (refquant's own parts, GGUF block types,
    plain floats) is written as ``dtype`` (float32 by default) to ``dst``
    (``.safetensors``), streaming; other tensors are copied unchanged. Returns the
    number of tensors written.
    """
    from .. import io as rio
    from ..io.streaming import SafetensorsStreamWriter

    out_dt = np.dtype(dtype)
    if out_dt.kind != "f":
        raise RefquantError(f"dtype must be a float type, got {dtype!r}")
    if not os.fspath(dst).endswith(".safetensors"):
        raise RefquantError(f"decompress writes one .safetensors file, got {os.fspath(dst)!r}")
    with rio.open(src) as ck:
        meta = ck.metadata.get(_META_KEY)
        entries = []  # (name, shape, scheme or None, part names)
        if meta is not None:
            try:
                doc = json.loads(meta)
                tensors = doc["tensors"]
            except (ValueError, KeyError, TypeError):
                raise RefquantError(f"{os.fspath(src)}: metadata {_META_KEY!r} is not refquant's "
                                    "compression record") from None
            for name, d in tensors.items():
                sch = None if d.get("scheme") == KEEP else get_scheme(d["scheme"])
                shape = tuple(int(x) for x in d["shape"])
                names = [name + t.suffix for t in (sch.parts(shape) if sch else [Part("", 0, ())])]
                for n in names:
                    if n not in ck:
                        raise RefquantError(f"{os.fspath(src)}: part {n!r} of {name!r} is missing")
                entries.append((name, shape, sch, names))
        else:
            for name, info in ck.infos.items():
                entries.append((name, tuple(info.logical_shape or info.shape), None, [name]))
        layout = []
        for name, shape, sch, _ in entries:
            info = ck.info(name) if sch is None else None
            floaty = sch is not None or info.scheme is not None or info.dtype.kind == "f" or (
                info.dtype.name == "bfloat16")
            layout.append((name, out_dt if floaty else info.dtype,
                           shape if floaty else info.shape))
        with SafetensorsStreamWriter(dst, layout, overwrite=overwrite) as w:
            for i, ((name, shape, sch, names), (_, dt, _)) in enumerate(zip(entries, layout,
                                                                             strict=True)):
                if sch is not None:
                    parts = {n[len(name):]: ck[n] for n in names}
                    a = sch.dequantize(parts, shape)
                elif ck.info(name).scheme is not None and hasattr(ck, "dequantize"):
                    a = ck.dequantize(name)
                else:
                    a = ck[name]
                w.write(name, np.asarray(a).astype(dt, copy=False))
                if progress is not None:
                    progress(i + 1, len(entries), name)
    return len(entries)


def tqdm_progress(total_hint: str = "tensors"):
    """A progress callback drawing tqdm's bar on a terminal (None when not a terminal)."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    bar = {}

    def step(i, n, name):
        if "b" not in bar:
            bar["b"] = tqdm(total=n, unit=total_hint, file=sys.stderr)
        bar["b"].set_postfix_str(name[-40:])
        bar["b"].update(1)
        if i == n:
            bar["b"].close()

    return step
