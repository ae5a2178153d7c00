"""Low-bit matmul kernels against their peers, measured side by side in one run.

    python benchmarks/bench_kernels_lowbit.py [--quick]

Tables:

* binary GEMM (``refquant.kernels.matmul_binary``, each CPU path) against
  numpy float32 matmul on ±1 matrices of the same shape (OpenBLAS sgemm) and a
  pure-NumPy ``np.bitwise_count`` binary matmul; GOP/s count 2·M·N·K.
* int4 weight-only at the LLM decode shape 1 x 4096 x 4096 (group 128):
  ``matmul_int4`` against ``torch.ops.aten._weight_int4pack_mm_for_cpu``
  (float32 and bfloat16 activations) and a dense float32 numpy matvec.
* ``matmul_ggml`` (q4_0, q4_k) at the decode shape, cpu vs numpy backends.
* first-call latency of each kernel in a fresh process: cold (compiling into an
  empty Numba cache) and warm (loading the cache a previous process wrote).

Every figure is the best of at least ``--repeat`` runs (more for fast calls, up to
0.3 s of them). The machines here set
``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE``, which hold numpy's OpenBLAS back:
this script re-executes itself without them (its own process only), so the
ratios are against numpy at its best. Timings on shared cores are noisy:
report them with the command that produced them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time

_BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def _best(fn, repeat, min_total=0.3, max_runs=300):
    """Best time of at least ``repeat`` calls, more while they add up to under ``min_total`` s.

    Fast calls get many samples: on shared cores the minimum is what a quiet machine gives.
    """
    fn()  # warm (compilation, caches)
    best, total, runs = float("inf"), 0.0, 0
    while runs < repeat or (total < min_total and runs < max_runs):
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, total, runs = min(best, dt), total + dt, runs + 1
    return best


def _bitwise_count_matmul(a, b, k):
    """Pure NumPy: k - 2 * sum(bitwise_count(a[i] ^ b)) row by row (a, b uint64 packed)."""
    import numpy as np

    out = np.empty((a.shape[0], b.shape[0]), np.int32)
    for i in range(a.shape[0]):
        out[i] = k - 2 * np.bitwise_count(a[i] ^ b).sum(axis=1, dtype=np.int64)
    return out


def bench_binary(shapes, repeat, out):
    import numpy as np

    from refquant.kernels.binary import matmul_binary, pack_signs
    from refquant.kernels.cpu._features import has_feature

    paths = ["popcnt"] + (["avx512"] if has_feature("avx512f", "avx512vpopcntdq") else [])
    out("\n## binary GEMM (packed +-1, int32 out)  GOP/s = 2*M*N*K / time")
    head = f"{'M x N x K':>20} {'sgemm +-1':>10} {'bitwise_count':>13}"
    for p in paths:
        head += f" {'rq ' + p:>11} {'x sgemm':>8}"
    out(head)
    rng = np.random.default_rng(0)
    best_ratio = 0.0
    for m, n, k in shapes:
        af = np.where(rng.random((m, k)) < 0.5, -1.0, 1.0).astype(np.float32)
        bf = np.where(rng.random((n, k)) < 0.5, -1.0, 1.0).astype(np.float32)
        bt = np.ascontiguousarray(bf.T)
        pa, pb = pack_signs(af), pack_signs(bf)
        want = (af @ bt).astype(np.int32)
        ops = 2.0 * m * n * k
        assert (_bitwise_count_matmul(pa, pb, k) == want).all(), "bitwise_count route disagrees"
        t_sg = _best(lambda af=af, bt=bt: af @ bt, repeat)
        t_bc = _best(lambda pa=pa, pb=pb, k=k: _bitwise_count_matmul(pa, pb, k),
                     max(1, repeat // 2))
        line = f"{f'{m}x{n}x{k}':>20} {ops / t_sg / 1e9:10.0f} {ops / t_bc / 1e9:13.0f}"
        for p in paths:
            got = matmul_binary(pa, pb, k, backend="cpu", path=p)
            assert (got == want).all(), f"path {p} disagrees with the float matmul"
            t = _best(lambda p=p, pa=pa, pb=pb, k=k: matmul_binary(pa, pb, k, backend="cpu", path=p),
                      repeat)
            line += f" {ops / t / 1e9:11.0f} {t_sg / t:7.1f}x"
            if (m, n, k) == shapes[0]:
                best_ratio = max(best_ratio, t_sg / t)
        out(line)
    out(f"target: >= 12x numpy sgemm on +-1 at {shapes[0]}; best path: {best_ratio:.1f}x")


def bench_int4(repeat, out, m=1, n=4096, k=4096, group=128):
    import numpy as np

    from refquant.kernels.int4 import matmul_int4
    from refquant.kernels.packing import pack_nibbles

    rng = np.random.default_rng(1)
    x = rng.standard_normal((m, k)).astype(np.float32)
    q = rng.integers(0, 16, (n, k)).astype(np.uint8)
    s = (rng.random((n, k // group)) * 0.02).astype(np.float32)
    z = np.full((n, k // group), 8.0, np.float32)
    packed = pack_nibbles(q)
    out(f"\n## int4 weight-only, {m} x {n} x {k}, group {group}  (ms, best of {repeat})")
    t_rq = _best(lambda: matmul_int4(x, packed, s, z, group_size=group, backend="cpu"), repeat)
    wd = ((q.astype(np.float32) - z.repeat(group, 1)) * s.repeat(group, 1)).T.copy()
    t_np = _best(lambda: x @ wd, repeat)
    rows = [("refquant matmul_int4 (cpu)", t_rq), ("numpy float32 dense x @ W", t_np)]
    try:
        import torch

        wt = torch.from_numpy(q.astype(np.int32))
        packed_t = torch.ops.aten._convert_weight_to_int4pack_for_cpu(wt, 2)
        # torchao's form: w = (q - 8) * s + zero; zero = 0 gives the same weights as z = 8
        sz = torch.from_numpy(np.stack([s.T, np.zeros_like(s.T)], axis=-1).copy())
        for dt in (torch.float32, torch.bfloat16):
            xt = torch.from_numpy(x).to(dt)
            szt = sz.to(dt)

            def call(xt=xt, szt=szt):
                return torch.ops.aten._weight_int4pack_mm_for_cpu(xt, packed_t, group, szt)

            y = call().float().numpy()
            ref = matmul_int4(x, packed, s, z, group_size=group)
            err = float(np.abs(y - ref).max() / np.abs(ref).max())
            rows.append((f"torch _weight_int4pack_mm_for_cpu {str(dt)[6:]} (rel err {err:.1e})",
                         _best(call, repeat)))
        out(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    except Exception as exc:  # noqa: BLE001 - torch is optional here
        out(f"(torch int4 kernel not measured: {exc})")
    for name, t in rows:
        out(f"{name:>58}: {t * 1e3:8.3f} ms  ({t_rq and t / t_rq:5.2f}x refquant's time)")
    torch_f32 = [t for name, t in rows if "float32 (rel" in name]
    if torch_f32:
        out(f"target: refquant <= torch's int4 kernel: {t_rq * 1e3:.3f} vs {torch_f32[0] * 1e3:.3f} ms")


def bench_ggml(repeat, out, m=1, n=4096, k=4096):
    import numpy as np

    from refquant.formats.ggml import GGML_BLOCK_TABLE, ggml_block_formats
    from refquant.kernels.ggml_dot import matmul_ggml

    rng = np.random.default_rng(2)
    x = rng.standard_normal((m, k)).astype(np.float32)
    out(f"\n## matmul_ggml, {m} x {n} x {k}  (ms, best of {repeat})")
    for t in ("q4_0", "q4_k"):
        _, bs, _ = GGML_BLOCK_TABLE[t]
        w = ggml_block_formats()[t].quantize_blocks(
            rng.standard_normal((n * k // bs, bs)).astype(np.float32)).reshape(n, -1)
        t_cpu = _best(lambda w=w, t=t: matmul_ggml(x, w, t, backend="cpu"), repeat)
        t_np = _best(lambda w=w, t=t: matmul_ggml(x, w, t, backend="numpy"), 1)
        out(f"{t:>6}: cpu {t_cpu * 1e3:8.2f} ms   numpy reference {t_np * 1e3:8.2f} ms")


_FIRST_CALL = textwrap.dedent(
    """
    import time, numpy as np
    t0 = time.perf_counter()
    from refquant.kernels.binary import matmul_binary, matmul_ternary, pack_signs, pack_ternary
    from refquant.kernels.int4 import matmul_int4
    from refquant.kernels.ggml_dot import matmul_ggml
    from refquant.formats.ggml import ggml_block_formats
    print(f"import {time.perf_counter() - t0:.3f}")
    a = pack_signs(np.ones((4, 64)))
    def timed(name, fn):
        t = time.perf_counter(); fn(); print(f"{name} {time.perf_counter() - t:.3f}")
    for p in ("popcnt", "avx512", "portable"):
        try:
            timed(f"matmul_binary[{p}]", lambda: matmul_binary(a, a, 64, backend="cpu", path=p))
        except Exception:
            pass
    timed("matmul_ternary[packed]", lambda: matmul_ternary(a, pack_ternary(np.ones((4, 64))), 64,
                                                            backend="cpu"))
    timed("matmul_ternary[int8]", lambda: matmul_ternary(np.ones((4, 64), np.int8),
                                                          pack_ternary(np.ones((4, 64))), 64,
                                                          backend="cpu"))
    x = np.ones((1, 64), np.float32)
    timed("matmul_int4", lambda: matmul_int4(x, np.zeros((4, 32), np.uint8), np.ones((4, 2)),
                                            group_size=32, backend="cpu"))
    for t, bs in (("q4_0", 32), ("q8_0", 32), ("q4_k", 256), ("q6_k", 256)):
        w = ggml_block_formats()[t].quantize_blocks(np.ones((2, bs), np.float32))
        timed(f"matmul_ggml[{t}]", lambda: matmul_ggml(np.ones((1, bs), np.float32), w, t,
                                                       backend="cpu"))
    """
)


def bench_first_call(out):
    out("\n## first-call latency in a fresh process (s): cold = empty Numba cache, warm = cached")
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache,
                   PYTHONPATH=here + os.pathsep + os.environ.get("PYTHONPATH", ""))
        runs = []
        for _ in range(2):
            r = subprocess.run([sys.executable, "-c", _FIRST_CALL], env=env, capture_output=True,
                               text=True, timeout=900)
            if r.returncode:
                out(f"(first-call probe failed: {r.stderr.strip().splitlines()[-1]})")
                return
            runs.append(dict(line.rsplit(" ", 1) for line in r.stdout.strip().splitlines()))
    for name in runs[0]:
        out(f"{name:>26}: cold {float(runs[0][name]):7.3f}   warm {float(runs[1][name]):7.3f}")


def run(quick=False, repeat=None, out=print):
    import numba
    import numpy as np

    from refquant.kernels.cpu._features import cpu_name, has_feature

    repeat = repeat or (3 if quick else 7)
    feats = [f for f in ("avx2", "avx512f", "avx512vpopcntdq", "avx512vnni", "amx-int8")
             if has_feature(f)]
    out(f"CPU: {cpu_name()} ({', '.join(feats)}); numba threads {numba.get_num_threads()}; "
        f"numpy {np.__version__}; "
        + ", ".join(f"{v}={os.environ.get(v, 'unset')}" for v in _BLAS_VARS))
    if quick:
        shapes = [(256, 256, 1024), (1, 4096, 4096)]
    else:
        shapes = [(1024, 1024, 4096), (256, 256, 4096), (512, 512, 4096), (2048, 2048, 4096),
                  (1, 4096, 4096)]
    bench_binary(shapes, repeat, out)
    bench_int4(repeat, out)
    bench_ggml(max(1, repeat // 2), out)
    if not quick:
        bench_first_call(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, few repeats")
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument("--first-call", action="store_true",
                    help="also measure first-call latency in --quick mode")
    args = ap.parse_args(argv)
    if any(v in os.environ for v in _BLAS_VARS):  # numpy at its best: re-run without them
        env = {k: v for k, v in os.environ.items() if k not in _BLAS_VARS}
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:], env)
    run(quick=args.quick, repeat=args.repeat)
    if args.quick and args.first_call:
        bench_first_call(print)


if __name__ == "__main__":
    main()
