"""``refquant compress`` on a whole checkpoint: throughput and peak memory against the peers.

A synthetic llama-shaped bf16 checkpoint (random normal weights, GGUF tensor
names) is written twice: as sharded safetensors (``model-0000k-of-0000n``) and as
one bf16 GGUF with llama metadata. Then, each in a fresh process (so that peak
RSS is that run's own), best of ``--repeat``:

* ``copy``: reading and writing the same bytes (``shutil.copyfile`` of every
  shard): the bandwidth ceiling of a streaming pipeline;
* ``refquant int8``: per-channel int8, sharded safetensors in, sharded out;
* ``refquant q4_0`` / ``refquant q4_k_m``: the bf16 GGUF to GGUF with
  llama-quantize's type selection (what ``refquant compress --scheme q4_k_m`` does),
  on every CPU of the process (the default ``workers``); ``... w1``: the same on
  one worker (the speed-up of ``--workers``; the bytes are checked identical);
* ``gguf-py q8_0`` / ``gguf-py q4_0``: gguf-py's NumPy quantizer
  (``gguf.quants.quantize``) over the same tensors, read and converted to
  float32 one at a time, nothing written (gguf-py has no Q4_K quantizer);
* ``llama-quantize q4_0`` / ``q4_k_m``: ``llama_model_quantize`` from llama.cpp's
  library on the same GGUF, when ``--llama-python`` names an interpreter with
  llama-cpp-cffi (see scripts/record_llama_quantize.py); its output is checked
  byte for byte against refquant's.

Throughput is GB/s of input (the bf16 bytes, 10^9 bytes per GB); ``cpu s`` is the
process's CPU time over the same interval (all its threads: the fairer figure on a
loaded machine, where wall time depends on what else runs). What each side does:

* refquant (GGUF in, GGUF out): read every tensor, convert bf16 to float32,
  check it finite, quantize with llama-quantize's type choice (so ``output.weight``
  becomes Q6_K under ``q4_0``, and 1-D norms stay F32), dequantize it and compute
  the report (SQNR, max error in steps), write the output file, rename it into
  place. Numba's cached kernels are loaded (a tiny compress) before its clock starts, and
  glibc's malloc is set to keep freed blocks (``refquant.cli.tune_allocator``, as the
  ``refquant`` command does; the library alone leaves the process's allocator as it is).
  ``w1`` runs on one thread in all (Numba's kernels included), like gguf-py.
* gguf-py: read every tensor (the safetensors shards), convert bf16 to float32 and
  quantize every 2-D tensor with ``gguf.quants.quantize`` (``output.weight`` in the
  named type too); no dequantize, no report, nothing written; one thread (NumPy).

Usage::

    python benchmarks/bench_compress.py --quick      # ~4 MB, seconds
    python benchmarks/bench_compress.py              # ~30 MB (2-core machines)
    python benchmarks/bench_compress.py --large      # ~2 GB, 16 layers of 2048
    python benchmarks/bench_compress.py --llama-python /work/venv-llamacpp/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = {  # hidden, feed-forward, layers, vocabulary
    "quick": (256, 768, 2, 512),
    "default": (512, 1408, 4, 2048),
    "large": (2048, 5632, 16, 32000),
}


def _tensors(hidden, ff, layers, vocab):
    """(name, shape) of a llama model without grouped attention, in file order."""
    out = [("token_embd.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"blk.{i}."
        out += [(p + "attn_norm.weight", (hidden,)), (p + "attn_q.weight", (hidden, hidden)),
                (p + "attn_k.weight", (hidden, hidden)), (p + "attn_v.weight", (hidden, hidden)),
                (p + "attn_output.weight", (hidden, hidden)), (p + "ffn_norm.weight", (hidden,)),
                (p + "ffn_gate.weight", (ff, hidden)), (p + "ffn_up.weight", (ff, hidden)),
                (p + "ffn_down.weight", (hidden, ff))]
    return out + [("output_norm.weight", (hidden,)), ("output.weight", (vocab, hidden))]


def _write_checkpoint(folder: Path, size: str) -> dict:
    import gguf
    import ml_dtypes
    import numpy as np

    from refquant.io.streaming import SafetensorsStreamWriter

    hidden, ff, layers, vocab = SIZES[size]
    spec = _tensors(hidden, ff, layers, vocab)
    rng = np.random.default_rng(0)
    n_shards = max(2, layers // 2)
    per = -(-len(spec) // n_shards)
    groups = [spec[i:i + per] for i in range(0, len(spec), per)]
    st = folder / "st"
    st.mkdir()
    weight_map, total = {}, 0
    wr = gguf.GGUFWriter(str(folder / "model-bf16.gguf"), "llama")
    for key, value in (("context_length", 2048), ("embedding_length", hidden),
                       ("block_count", layers), ("feed_forward_length", ff),
                       ("attention.head_count", hidden // 64),
                       ("attention.head_count_kv", hidden // 64)):
        wr.add_uint32(f"llama.{key}", value)
    wr.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    wr.add_file_type(int(gguf.LlamaFileType.MOSTLY_BF16))
    arrays = {}
    for k, group in enumerate(groups):
        name = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        layout = [(n, ml_dtypes.bfloat16, s) for n, s in group]
        with SafetensorsStreamWriter(st / name, layout) as w:
            for n, s in group:
                a = (rng.standard_normal(s, dtype=np.float32) * 0.02).astype(ml_dtypes.bfloat16)
                if len(s) == 1:
                    a = a.astype(np.float32)  # norms in F32, as convert_hf_to_gguf writes
                    w2 = a.astype(ml_dtypes.bfloat16)
                else:
                    w2 = a
                w.write(n, w2)
                weight_map[n] = name
                total += w2.nbytes
                arrays[n] = a
        for n, _ in group:
            a = arrays.pop(n)
            if a.dtype == np.float32:
                wr.add_tensor(n, a)
            else:
                wr.add_tensor(n, a.view(np.uint16), raw_dtype=gguf.GGMLQuantizationType.BF16)
    (st / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return {"index": str(st / "model.safetensors.index.json"),
            "gguf": str(folder / "model-bf16.gguf"), "bytes": total,
            "gguf_bytes": os.path.getsize(folder / "model-bf16.gguf"),
            "weights": sum(int(np.prod(s)) for _, s in spec)}


# ---- one measurement per process -------------------------------------------------

def _rss_mb() -> float:
    """Peak RSS of this process image (VmHWM; ru_maxrss would carry the parent's peak
    from before fork + exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _one(kind: str, ck: dict, out: str) -> dict:
    if kind == "copy":
        idx = Path(ck["index"])
        shards = sorted(set(json.loads(idx.read_text())["weight_map"].values()))
        os.makedirs(out, exist_ok=True)
        t0, c0 = time.perf_counter(), time.process_time()
        for s in shards:
            shutil.copyfile(idx.parent / s, Path(out) / s)
        return {"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0}
    if kind.startswith("refquant"):
        from refquant.cli import tune_allocator
        from refquant.compress import compress

        tune_allocator()  # as the refquant command does before it runs

        # load Numba's cached kernels (one per argument type: bf16 GGUF memmaps included)
        # and import what the run imports before the clock starts: the same compress on
        # the quick checkpoint (a one-off second or two per process, which a 30 MB
        # checkpoint would otherwise mostly measure)
        warm = Path(os.path.dirname(out)) / "warm"
        if not warm.exists():
            warm.mkdir()
            (warm / "ck.json").write_text(json.dumps(_write_checkpoint(warm, "quick")))
        wck = json.loads((warm / "ck.json").read_text())
        scheme = kind.split()[1]
        workers = 1 if kind.endswith(" w1") else None
        wsrc, wdst = ((wck["index"], str(warm / "out")) if scheme == "int8"
                      else (wck["gguf"], str(warm / "out.gguf")))
        compress(wsrc, wdst, scheme=scheme, overwrite=True, workers=workers)

        src, dst = (ck["index"], out) if scheme == "int8" else (ck["gguf"], out + ".gguf")
        t0, c0 = time.perf_counter(), time.process_time()
        compress(src, dst, scheme=scheme, overwrite=True, workers=workers)
        return {"seconds": time.perf_counter() - t0, "output": dst,
                "cpu": time.process_time() - c0}
    if kind.startswith("gguf-py"):
        import gguf
        import numpy as np

        import refquant.io as rio

        qt = gguf.GGMLQuantizationType[kind.split()[1].upper()]
        t0, c0 = time.perf_counter(), time.process_time()
        with rio.open(ck["index"]) as c:
            for name in c:
                a = np.asarray(c[name], np.float32)
                if a.ndim == 2:
                    gguf.quants.quantize(a, qt)
        return {"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0}
    raise SystemExit(f"unknown measurement {kind!r}")


_LLAMA = r"""
import json, sys, time
sys.path.insert(0, {scripts!r})
import record_llama_quantize as r
lib, ffi, so = r._load_lib()
params = ffi.new("struct llama_model_quantize_params *")
params[0] = lib.llama_model_quantize_default_params()
params.ftype = getattr(lib, {ftype!r})
params.nthread = {threads}
t0 = time.perf_counter()
rc = lib.llama_model_quantize({src!r}.encode(), {dst!r}.encode(), params)
dt = time.perf_counter() - t0
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
print("RESULT " + json.dumps({{"seconds": dt, "rc": rc,
      "rss_mb": int(hwm[0].split()[1]) / 1024}}))
"""


def _measure(kind, ck, tmp, args, repeat):
    best = None
    for i in range(repeat):
        out = os.path.join(tmp, f"out-{kind.replace(' ', '-')}-{i}")
        if kind.startswith("llama-quantize"):
            if not args.llama_python:
                return None
            preset = kind.split()[1]
            ftype = {"q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
                     "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0"}[preset]
            code = _LLAMA.format(scripts=str(ROOT / "scripts"), ftype=ftype,
                                 threads=os.cpu_count() or 1, src=ck["gguf"], dst=out + ".gguf")
            script = os.path.join(tmp, "llama_run.py")  # a file: the shim re-executes argv
            Path(script).write_text(code)
            p = subprocess.run([args.llama_python, script], capture_output=True, text=True)
            line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
            if not line:
                sys.exit(f"{kind} failed:\n{p.stderr[-2000:]}")
            res = json.loads(line[0][7:])
            res["output"] = out + ".gguf"
        else:
            p = subprocess.run([sys.executable, __file__, "--one", kind, "--ck", json.dumps(ck),
                                "--out", out], capture_output=True, text=True,
                               env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                                   [str(ROOT), os.environ.get("PYTHONPATH", "")])))
            line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
            if not line:
                sys.exit(f"{kind} failed:\n{p.stderr[-3000:]}")
            res = json.loads(line[0][7:])
        if best is None or res["seconds"] < best["seconds"]:
            best = res
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="a ~4 MB checkpoint")
    g.add_argument("--large", action="store_true", help="a ~2 GB checkpoint (16 layers of 2048)")
    ap.add_argument("--repeat", type=int, default=None, help="runs per measurement (best of)")
    ap.add_argument("--llama-python", default=None,
                    help="a Python with llama-cpp-cffi, to time llama_model_quantize too")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--ck", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        res = _one(args.one, json.loads(args.ck), args.out)
        res["rss_mb"] = _rss_mb()
        print("RESULT " + json.dumps(res))
        return
    size = "quick" if args.quick else "large" if args.large else "default"
    repeat = args.repeat or (3 if size == "quick" else 1)
    import platform

    cpu = "?"
    try:
        cpu = next(x.split(":", 1)[1].strip() for x in open("/proc/cpuinfo")
                   if x.startswith("model name"))
    except (OSError, StopIteration):
        pass
    with tempfile.TemporaryDirectory(prefix="bench_compress_") as tmp:
        t0 = time.perf_counter()
        ck = _write_checkpoint(Path(tmp), size)
        n_shards = len(set(json.loads(Path(ck["index"]).read_text())["weight_map"].values()))
        print(f"checkpoint: {size}, {ck['weights'] / 1e6:.1f}M weights, {ck['bytes'] / 1e6:.1f} MB "
              f"bf16 in {n_shards} shards (+ a {ck['gguf_bytes'] / 1e6:.1f} MB bf16 GGUF), written in "
              f"{time.perf_counter() - t0:.1f} s; {cpu}, {os.cpu_count()} CPUs, Python "
              f"{platform.python_version()}; best of {repeat}")
        kinds = ["copy", "refquant int8", "refquant int8 w1", "gguf-py q8_0", "refquant q4_0",
                 "refquant q4_0 w1", "gguf-py q4_0", "llama-quantize q4_0", "refquant q4_k_m",
                 "refquant q4_k_m w1", "llama-quantize q4_k_m"]
        res = {}
        for k in kinds:
            r = _measure(k, ck, tmp, args, repeat)
            if r is not None:
                res[k] = r
        peers = {"refquant int8": ["copy", "gguf-py q8_0", "refquant int8 w1"],
                 "refquant q4_0": ["copy", "gguf-py q4_0", "llama-quantize q4_0",
                                   "refquant q4_0 w1"],
                 "refquant int8 w1": ["gguf-py q8_0"],
                 "refquant q4_0 w1": ["gguf-py q4_0"],
                 "refquant q4_k_m": ["copy", "llama-quantize q4_k_m", "refquant q4_k_m w1"]}
        print(f"{'run':<24}{'seconds':>9}{'cpu s':>8}{'GB/s in':>9}{'peak RSS MB':>13}  "
              "refquant's speed / peer's (wall; cpu)")
        for k in kinds:
            r = res.get(k)
            if r is None:
                print(f"{k:<24}  (not measured: no --llama-python with llama-cpp-cffi)")
                continue
            vs = "  ".join(f"{p}: {res[p]['seconds'] / r['seconds']:.3f}x"
                           + (f"; {res[p]['cpu'] / r['cpu']:.3f}x" if res[p].get("cpu")
                              and r.get("cpu") else "")
                           for p in peers.get(k, []) if p in res)
            if k.endswith(" w1") and k.startswith("refquant") and k != "refquant int8 w1":
                mine = res.get(k[:-3], {}).get("output")
                if mine and Path(mine).read_bytes() != Path(r["output"]).read_bytes():
                    vs += "  OUTPUT DIFFERS FROM THE DEFAULT-WORKERS RUN"
            if k.startswith("llama-quantize"):
                mine = res.get("refquant " + k.split()[1], {}).get("output")
                if mine:
                    same = Path(mine).read_bytes() == Path(r["output"]).read_bytes()
                    vs = "output identical to refquant's" if same else "OUTPUT DIFFERS"
            cpu_s = f"{r['cpu']:>8.3f}" if r.get("cpu") is not None else f"{'-':>8}"
            print(f"{k:<24}{r['seconds']:>9.3f}{cpu_s}{ck['bytes'] / r['seconds'] / 1e9:>9.4f}"
                  f"{r['rss_mb']:>13.0f}  {vs}")


if __name__ == "__main__":
    main()
