"""Checkpoint reading: refquant.io against safetensors and torch.load, in the same run.

Writes N MB of float32 weights (64 tensors) once with safetensors' own ``save_file``
and once with ``torch.save``, then measures, page cache warm (every file is read
once before timing):

* lazy open: ``refquant.io.open`` vs ``safetensors.safe_open(framework="np")`` vs
  ``torch.load(weights_only=True, mmap=True)`` (median of 21 opens);
* read throughput: open, then take every tensor as an owned in-memory array (one
  copy out of the page cache each: ``np.array(ckpt[k])``, ``f.get_tensor(k)``,
  ``t.numpy().copy()``), best of 3;
* peak memory of reading one tensor (tracemalloc, which sees NumPy's and Python's
  allocations) relative to that tensor's size, for a zero-copy view and for an
  owned copy.

Usage::

    python benchmarks/bench_io.py                 # 1 GB
    python benchmarks/bench_io.py --size-mb 64    # quick
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
import tracemalloc

import numpy as np


def _make(folder, size_mb, n_tensors):
    import torch
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    per = size_mb * (1 << 20) // 4 // n_tensors
    rows = 1024
    cols = max(1, per // rows)
    t = {f"layers.{i}.weight": rng.random((rows, cols), dtype=np.float32) for i in range(n_tensors)}
    st = os.path.join(folder, "model.safetensors")
    pt = os.path.join(folder, "model.pt")
    save_file(t, st)
    torch.save({k: torch.from_numpy(v) for k, v in t.items()}, pt)
    return st, pt, sum(v.nbytes for v in t.values())


def _warm(path):
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def _median_time(fn, n=21):
    ts = []
    for _ in range(n):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _best_time(fn, n=3):
    ts = []
    for _ in range(n):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def _peak(fn):
    gc.collect()
    tracemalloc.start()
    try:
        out = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del out
    return peak


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--tensors", type=int, default=64)
    ap.add_argument("--dir", default=None, help="folder for the files (default: a temporary one)")
    ap.add_argument("--opens", type=int, default=21, help="lazy opens timed (median)")
    ap.add_argument("--reads", type=int, default=3, help="full reads timed (best)")
    args = ap.parse_args(argv)

    import safetensors
    import torch

    import refquant.io as rio

    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        st, pt, total = _make(d, args.size_mb, args.tensors)
        for p in (st, pt):
            _warm(p)
        names = list(rio.open(st))
        one = names[0]

        def rq_open(path):
            with rio.open(path) as ck:
                return len(ck)

        def st_open():
            with safetensors.safe_open(st, framework="np") as f:
                return len(f.keys())

        def pt_open():
            return len(torch.load(pt, weights_only=True, mmap=True))

        def rq_read(path):
            with rio.open(path) as ck:
                for k in ck:
                    np.array(ck[k])

        def st_read():
            with safetensors.safe_open(st, framework="np") as f:
                for k in f.keys():
                    f.get_tensor(k)

        def pt_read():
            sd = torch.load(pt, weights_only=True, mmap=True)
            for v in sd.values():
                v.numpy().copy()

        rows = []
        t_rq_st = _median_time(lambda: rq_open(st), args.opens)
        t_st = _median_time(st_open, args.opens)
        t_rq_pt = _median_time(lambda: rq_open(pt), args.opens)
        t_pt = _median_time(pt_open, args.opens)
        rows.append(("lazy open (ms), safetensors file", t_rq_st * 1e3, "safetensors.safe_open", t_st * 1e3))
        rows.append(("lazy open (ms), torch.save file", t_rq_pt * 1e3, "torch.load(mmap=True)", t_pt * 1e3))
        r_rq_st = total / _best_time(lambda: rq_read(st), args.reads) / 1e9
        r_st = total / _best_time(st_read, args.reads) / 1e9
        r_rq_pt = total / _best_time(lambda: rq_read(pt), args.reads) / 1e9
        r_pt = total / _best_time(pt_read, args.reads) / 1e9
        rows.append(("read all (GB/s), safetensors file", r_rq_st, "safetensors get_tensor", r_st))
        rows.append(("read all (GB/s), torch.save file", r_rq_pt, "torch.load(mmap) + copy", r_pt))

        with rio.open(st) as ck:
            nb = ck.info(one).nbytes
            p_view = _peak(lambda: ck[one])
            p_copy = _peak(lambda: np.array(ck[one]))
        with safetensors.safe_open(st, framework="np") as f:
            p_st = _peak(lambda: f.get_tensor(one))
        rows.append(("peak mem, one tensor (x its size), view", p_view / nb, "-", float("nan")))
        rows.append(("peak mem, one tensor (x its size), copy", p_copy / nb, "safetensors get_tensor", p_st / nb))

    print(f"bench_io: {total / 2**20:.0f} MB float32 in {args.tensors} tensors; page cache warm; "
          f"numpy {np.__version__}, torch {torch.__version__}, safetensors {safetensors.__version__}\n")
    head = f"{'measure':<44}{'refquant':>10}  {'peer':<26}{'peer':>10}{'ratio':>8}"
    print(head)
    print("-" * len(head))
    for what, ours, peer, theirs in rows:
        if "open" in what:
            ratio = theirs / ours  # > 1: refquant faster
        elif "GB/s" in what:
            ratio = ours / theirs
        else:
            ratio = float("nan") if np.isnan(theirs) else ours / theirs
        print(f"{what:<44}{ours:>10.3f}  {peer:<26}{theirs:>10.3f}{ratio:>8.2f}")
    print("\nratio: open = peer time / refquant time; read = refquant GB/s / peer GB/s "
          "(> 1: refquant faster); peak = refquant / peer")


if __name__ == "__main__":
    main()
