"""Sharded output: one output shard per input shard, resumable, spread over Dask workers.

``compress(src, "out/")`` or ``compress(src, "out/model.safetensors.index.json")``
writes refquant's safetensors layout shard by shard: each input shard
(``model-00001-of-00004.safetensors``, or the single input file) becomes an
output shard of the same name (``.safetensors``), and the index
(``model.safetensors.index.json``: ``weight_map`` of every stored part and, in
``metadata``, the compression record that :func:`~refquant.compress.decompress`
reads) is written last.

Nothing appears under the output's name before the end. The shards are written
into a staging folder beside it (``.NAME.refquant-partial``), each shard into a
temporary file renamed when complete, with a sidecar holding its report rows;
at the end the staging folder is renamed to the output folder (or, when that
folder exists, the shards are moved into it and the index written last). A run
that is killed leaves the staging folder: ``resume=True`` checks that it was
started for the same input, recipe and plan, keeps every shard that has its
sidecar, and does the rest; the result is byte for byte the output of an
uninterrupted run (every shard's bytes depend only on its input and its plan).

The types are decided for the whole model first (llama.cpp's mixes count layers
across shards), then each shard is an independent task: it opens its own input
shard, quantizes, and writes its own output shard, so shards may run in any
order on any worker that sees the same file system. ``scheduler="dask"`` starts
a Dask ``LocalCluster``; ``scheduler="tcp://HOST:PORT"`` uses an existing Dask
distributed scheduler (Dask in the ``dask`` extra, imported only then).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import astuple
from pathlib import Path

from .._errors import RefquantError

__all__ = ["sharded_target", "compress_sharded", "run_shard"]

_STAGING_SUFFIX = ".refquant-partial"
_MANIFEST = "refquant-manifest.json"


def sharded_target(dst) -> tuple[Path, str]:
    """(output folder, index file name) of a sharded output named ``dst``."""
    p = Path(dst)
    if p.name.endswith(".index.json"):
        return p.parent if str(p.parent) else Path("."), p.name
    return p, "model.safetensors.index.json"


def _staging(folder: Path) -> Path:
    return folder.parent / f".{folder.resolve().name}{_STAGING_SUFFIX}"


def _shard_map(ck, src) -> dict[str, list[str]]:
    """Input shard path -> its tensor names, in the input's order."""
    names = list(ck.infos)
    if ck.format == "sharded":
        index = json.loads(Path(ck.path).read_text(encoding="utf-8"))
        folder = Path(ck.path).resolve().parent
        out: dict[str, list[str]] = {}
        for n in names:
            out.setdefault(os.fspath(folder / index["weight_map"][n]), []).append(n)
        return dict(sorted(out.items()))
    return {os.fspath(Path(ck.path).resolve()): names}


def _out_name(shard_path: str) -> str:
    base = os.path.basename(shard_path)
    for suf in (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".npz", ".h5", ".msgpack"):
        if base.endswith(suf):
            return base[: -len(suf)] + ".safetensors"
    return base + ".safetensors"


def _atomic_json(path: Path, doc) -> None:
    from ..io._common import atomic_write

    text = json.dumps(doc, indent=1, allow_nan=False)  # key order kept: JSON round trips it
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), overwrite=True)


def run_shard(task: dict) -> dict:
    """Compress one shard (a Dask task): read ``task["input"]``, write ``task["output"]``.

    Returns (and writes beside the shard, as ``<shard>.report.json``) the shard's
    report rows, its compression record and its ``weight_map`` entries.
    """
    from dataclasses import asdict

    from .. import io as rio
    from ..io.streaming import SafetensorsStreamWriter
    from .methods import Calibration, Treatment
    from .pipeline import _META_KEY, Planned, _keep_nonfinite, _one, _record
    from .schemes import Part, get_scheme

    out = Path(task["output"])
    calib = (Calibration(task.get("calibration"), task.get("imatrix"))
             if task.get("calibration") or task.get("imatrix") else None)
    with rio.open(task["input"]) as ck:
        planned = []
        for name, sname, reason in task["tensors"]:
            info = ck.info(name)
            shape = tuple(info.logical_shape or info.shape)
            scheme = None if sname is None else get_scheme(sname)
            raw = (info.stored_dtype.upper() if info.scheme and info.scheme.startswith("ggml:")
                   else None)
            p = Planned(name, shape, info.dtype, int(info.nbytes), scheme, reason, raw_type=raw)
            if name in task.get("treat", {}):
                p.treat = Treatment(*task["treat"][name])
            p.parts = scheme.parts(shape) if scheme else [Part("", info.dtype, tuple(info.shape))]
            planned.append(p)
        if task["nonfinite"] == "keep":
            _keep_nonfinite(ck, planned)
        record = _record(task["source"], task["recipe"], planned)
        layout = [(p.out_name(t), t.dtype, t.shape) for p in planned for t in p.parts]
        meta = {"format": "pt", _META_KEY: json.dumps(record, separators=(",", ":"))}
        rows = []
        with SafetensorsStreamWriter(out, layout, metadata=meta, overwrite=True) as w:
            for p in planned:
                rows.append(asdict(_one(ck, p, w, "safetensors", task["nonfinite"], calib)))
    result = {"shard": out.name, "rows": rows, "record": record["tensors"],
              "weight_map": {name: out.name for name, _, _ in layout},
              "total_size": sum(int(t.nbytes) for p in planned for t in p.parts)}
    _atomic_json(out.with_name(out.name + ".report.json"), result)
    return result


def _run_tasks(tasks, scheduler, n_workers, progress, workers=1):
    if not tasks:
        return []
    from .pipeline import _numba_threadsafe, _one_numba_thread

    if scheduler in (None, "local") and workers > 1 and len(tasks) > 1 and _numba_threadsafe():
        # shards on threads (NumPy and the Numba kernels release the GIL; a process pool's
        # start-up, seconds on a busy machine, costs more than it gains on most
        # checkpoints); each shard writes its own file, so the bytes are the one-worker
        # run's (results gathered in task order)
        from concurrent.futures import ThreadPoolExecutor

        results = []
        with ThreadPoolExecutor(min(workers, len(tasks)),
                                thread_name_prefix="refquant-shard",
                                initializer=_one_numba_thread) as pool:
            for i, r in enumerate(pool.map(run_shard, tasks)):
                results.append(r)
                if progress is not None:
                    progress(i + 1, len(tasks), os.path.basename(tasks[i]["output"]))
        return results
    if scheduler in (None, "local"):
        from .pipeline import _numba_threads

        results = []
        # one worker is one thread, Numba's kernels too (see pipeline._one_numba_thread)
        prev = _numba_threads(1 if workers <= 1 else None)
        try:
            for i, t in enumerate(tasks):
                results.append(run_shard(t))
                if progress is not None:
                    progress(i + 1, len(tasks), os.path.basename(t["output"]))
        finally:
            _numba_threads(prev)
        return results
    if not isinstance(scheduler, str) or not (scheduler == "dask" or "://" in scheduler):
        raise RefquantError(f"scheduler must be None, 'local', 'dask' or a Dask scheduler "
                            f"address such as 'tcp://HOST:8786', got {scheduler!r}")
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise RefquantError("scheduler='dask' needs Dask distributed: pip install "
                            "'refquant[dask]'") from None
    cluster = None
    try:
        if scheduler == "dask":
            cluster = LocalCluster(n_workers=n_workers or 2, threads_per_worker=1,
                                   processes=True, dashboard_address=None)
            client = Client(cluster)
        else:
            try:
                client = Client(scheduler, timeout=30)
            except OSError as e:
                raise RefquantError(f"scheduler {scheduler!r}: cannot connect: {e}") from None
        try:
            futures = client.map(run_shard, tasks, pure=False)
            results = client.gather(futures)
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()
    if progress is not None:
        progress(len(tasks), len(tasks), "shards")
    return results


def compress_sharded(src, dst, rec, *, overwrite, nonfinite, progress, resume, scheduler,
                     n_workers=None, workers=1, calibration=None, imatrix=None,
                     has_imatrix=False):
    """The sharded path of :func:`refquant.compress.compress` (see the module docstring)."""
    from .. import io as rio
    from .pipeline import _META_KEY, plan
    from .report import CompressReport, TensorRow

    folder, index_name = sharded_target(dst)
    index_path = folder / index_name
    staging = _staging(folder)
    if index_path.exists() and resume and not staging.exists() and not overwrite:
        raise RefquantError(f"output {os.fspath(index_path)!r} is complete: there is no "
                            "interrupted run to resume (overwrite=True redoes it)")
    if index_path.exists() and not overwrite:
        raise RefquantError(f"output {os.fspath(index_path)!r} exists; pass overwrite=True "
                            "(--overwrite) to replace it")
    if folder.exists() and not folder.is_dir():
        raise RefquantError(f"output {os.fspath(folder)!r} is a file; a sharded output is a "
                            "folder (or FOLDER/NAME.index.json)")
    if not folder.parent.is_dir():
        raise RefquantError(f"folder {os.fspath(folder.parent)!r} of the output does not exist")
    report = CompressReport(os.fspath(src), os.fspath(index_path), rec.source)
    source = os.path.basename(os.path.normpath(os.fspath(src)))
    with rio.open(src) as ck:
        if folder.exists() and os.path.samefile(folder, Path(ck.path).resolve().parent):
            raise RefquantError(f"output folder {os.fspath(folder)!r} holds the input; write "
                                "the compressed shards elsewhere")
        planned = plan(ck, rec, "safetensors", has_imatrix=has_imatrix)
        by_name = {p.name: p for p in planned}
        tasks = []
        for shard, names in _shard_map(ck, src).items():
            tasks.append({
                "input": shard, "output": os.fspath(staging / _out_name(shard)),
                "source": source, "recipe": rec.source, "nonfinite": nonfinite,
                "tensors": [(n, by_name[n].scheme.name if by_name[n].scheme else None,
                             by_name[n].reason) for n in names],
                "treat": {n: list(astuple(by_name[n].treat)) for n in names
                          if by_name[n].treat is not None},
                "calibration": calibration, "imatrix": imatrix})
    outs = [os.path.basename(t["output"]) for t in tasks]
    if len(set(outs)) != len(outs):
        raise RefquantError("two input shards map to the same output shard name: "
                            f"{sorted(o for o in outs if outs.count(o) > 1)[:3]}")
    if folder.exists() and not overwrite:
        clash = [o for o in outs if (folder / o).exists()]
        if clash:
            raise RefquantError(f"output shard {os.fspath(folder / clash[0])!r} exists; pass "
                                "overwrite=True to replace it")
    manifest = {"version": 1, "source": os.path.abspath(os.fspath(src)), "recipe": rec.source,
                "nonfinite": nonfinite,
                "shards": {os.path.basename(t["output"]): [list(x) for x in t["tensors"]]
                           for t in tasks}}
    done: dict[str, dict] = {}
    if staging.exists():
        if resume:
            try:
                old = json.loads((staging / _MANIFEST).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                old = None
            if old != manifest:
                raise RefquantError(
                    f"{os.fspath(staging)!r} was left by a run with another input, recipe or "
                    "plan; pass overwrite=True (--overwrite) to start over")
            for f in staging.iterdir():  # a killed run's temporary files
                if f.name.endswith(".tmp"):
                    f.unlink()
            for o in outs:
                side = staging / (o + ".report.json")
                if (staging / o).is_file() and side.is_file():
                    try:
                        done[o] = json.loads(side.read_text(encoding="utf-8"))
                    except ValueError:
                        pass
        elif overwrite:
            shutil.rmtree(staging)
        else:
            raise RefquantError(
                f"an interrupted run left {os.fspath(staging)!r}; pass resume=True (--resume) "
                "to continue it, or overwrite=True (--overwrite) to start over")
    if not staging.exists():
        staging.mkdir()
        _atomic_json(staging / _MANIFEST, manifest)
    todo = [t for t in tasks if os.path.basename(t["output"]) not in done]
    for r in _run_tasks(todo, scheduler, n_workers, progress, workers):
        done[r["shard"]] = r
    results = [done[o] for o in outs]
    for r in results:
        report.rows += [TensorRow(**row) for row in r["rows"]]
    order = {p.name: i for i, p in enumerate(planned)}
    report.rows.sort(key=lambda row: order[row.name])
    record = {"version": 1, "source": source, "recipe": rec.source,
              "tensors": {k: v for r in results for k, v in r["record"].items()}}
    record["tensors"] = dict(sorted(record["tensors"].items(), key=lambda kv: order[kv[0]]))
    index = {"metadata": {"total_size": sum(r["total_size"] for r in results),
                          "format": "pt", _META_KEY: json.dumps(record, separators=(",", ":"))},
             "weight_map": dict(sorted((k, v) for r in results
                                       for k, v in r["weight_map"].items()))}
    for f in list(staging.iterdir()):
        if f.name == _MANIFEST or f.name.endswith(".report.json"):
            f.unlink()
    if not folder.exists():
        _atomic_json(staging / index_name, index)  # the index last, then one rename
        os.replace(staging, folder)
    else:
        for o in outs:
            os.replace(staging / o, folder / o)
        _atomic_json(index_path, index)
        shutil.rmtree(staging)
    return report
