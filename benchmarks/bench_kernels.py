"""The int8 GEMM kernel against BLAS, onnxruntime and torch, side by side in one run.

For square sizes along a ladder (64 ... 2048, 4096 with ``--big``), 1024^3 among
them, and the LLM decode shape 1 x 4096 x 4096, every figure measured in the
same process, best of ``--repeat`` (each timing long enough to be above the
clock's noise), all on ``--threads`` threads (default 2):

* ``refquant u8s8`` / ``s8s8``: :func:`refquant.kernels.matmul_int` on the Numba
  CPU kernel (the path it picks: AVX-512 VNNI, AVX-VNNI or portable);
* ``numpy f32``: ``np.matmul`` on float32 copies (OpenBLAS sgemm), with
  ``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` removed from this process's
  environment (the script re-executes itself without them), so that the ratios
  are against numpy at its best;
* ``f64 route``: the exact int8 product through float64 BLAS (what the NumPy
  reference does), ``(a.astype(f64) @ b.astype(f64)).astype(int32)``;
* ``ort u8s8`` / ``ort s8s8``: onnxruntime ``MatMulInteger`` (operands as graph
  inputs, so it packs B on every call as refquant does);
* ``torch _int_mm``: ``torch._int_mm`` (s8 x s8 -> s32, oneDNN).

Every peer's integer output is compared with refquant's before it is timed. GOP/s
counts 2 M N K operations. It prints the CPU's model and features, the first-call
latency of the kernel (disk cache warm, and cold in a fresh process with an
empty cache), which peer was fastest, and saves a plot of GOP/s against size.

Usage::

    python benchmarks/bench_kernels.py            # ladder 64..2048 and the decode shape
    python benchmarks/bench_kernels.py --big      # ... and 4096^3
    python benchmarks/bench_kernels.py --quick    # a smoke run on tiny sizes
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time

_OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS")


def _reexec_if_needed(threads, keep_openblas):
    """Restart with the OpenBLAS variables unset and the thread counts set before numpy loads."""
    env = dict(os.environ)
    changed = False
    if not keep_openblas:
        for v in _OPENBLAS_VARS:
            if v in env:
                del env[v]
                changed = True
    for v in _THREAD_VARS:
        if env.get(v) != str(threads):
            env[v] = str(threads)
            changed = True
    if changed and env.get("_REFQUANT_BENCH_REEXEC") != "1":
        env["_REFQUANT_BENCH_REEXEC"] = "1"
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def _best(fn, repeat, min_time=0.05):
    """Best per-call time over ``repeat`` timings of enough calls to last ``min_time``."""
    fn()
    t0 = time.perf_counter()
    fn()
    one = time.perf_counter() - t0
    inner = max(1, int(min_time / max(one, 1e-7)))
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t0) / inner)
    return best


def _ort_matmul_integer(a_type, threads):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    t = {"u8": TensorProto.UINT8, "s8": TensorProto.INT8}
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "mmi",
        [helper.make_tensor_value_info("A", t[a_type], ["M", "K"]),
         helper.make_tensor_value_info("B", TensorProto.INT8, ["K", "N"])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, ["M", "N"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    del onnx
    return lambda a, b: sess.run(None, {"A": a, "B": b})[0]


def _peers(threads, out):
    """name -> (operand dtypes, callable(a, b) -> int matrix or None for float)."""
    import numpy as np

    peers = {}
    peers["numpy f32"] = ("f32", lambda a, b: np.matmul(a, b))
    peers["f64 route"] = ("u8s8", lambda a, b: np.matmul(a.astype(np.float64),
                                                         b.astype(np.float64)).astype(np.int32))
    try:
        peers["ort u8s8"] = ("u8s8", _ort_matmul_integer("u8", threads))
        peers["ort s8s8"] = ("s8s8", _ort_matmul_integer("s8", threads))
    except Exception as exc:  # noqa: BLE001 - a missing peer is a row, not a failure
        out(f"onnxruntime: not available ({exc})")
    try:
        import torch

        torch.set_num_threads(threads)

        def int_mm(a, b):
            return torch._int_mm(torch.from_numpy(a), torch.from_numpy(b)).numpy()

        peers["torch _int_mm"] = ("s8s8", int_mm)
    except Exception as exc:  # noqa: BLE001
        out(f"torch: not available ({exc})")
    return peers


def run(sizes, decode, repeat=5, threads=2, plot=None, cold=True, out=print):
    """Measure every kernel and peer; return {shape: {name: GOP/s}}."""
    import numpy as np

    from refquant.kernels import matmul as km
    from refquant.kernels.cpu import _features, int8

    feats = sorted(f for f in _features.cpu_features() if f in (
        "avx2", "avx512f", "avx512bw", "avx512vl", "avx512vnni", "avxvnni", "avx512vpopcntdq",
        "amx-tile", "amx-int8", "amx-bf16"))
    out(f"CPU: {_cpu_model()} (LLVM: {_features.cpu_name()}); features: {' '.join(feats)}")
    out(f"threads: {threads}; int8 kernel path: {int8.default_path()}; "
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')} "
        f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE')}")
    import numba

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))

    t0 = time.perf_counter()
    km.matmul_int(np.ones((9, 5), np.uint8), np.ones((5, 3), np.int8), backend="cpu")
    first = time.perf_counter() - t0
    out(f"first call of matmul_int (import, disk cache load or compile): {first * 1e3:.0f} ms")
    if cold:
        with tempfile.TemporaryDirectory() as d:
            code = ("import time, numpy as np; t=time.perf_counter();"
                    "from refquant.kernels import matmul as km;"
                    "km.matmul_int(np.ones((9,5),np.uint8), np.ones((5,3),np.int8), backend='cpu');"
                    "print(time.perf_counter()-t)")
            env = dict(os.environ, NUMBA_CACHE_DIR=d)
            res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                 text=True, check=True)
            out(f"first call with an empty cache (compiles one path, u8 x s8): "
                f"{float(res.stdout.split()[-1]):.1f} s")

    peers = _peers(threads, out)
    rng = np.random.default_rng(0)
    shapes = [(s, s, s) for s in sizes] + list(decode)
    results = {}
    header = ["shape", "refq u8s8", "refq s8s8", *peers]
    out("")
    out(f"GOP/s (2·M·N·K / time, best of {repeat})")
    out(" | ".join(f"{h:>13}" for h in header))
    for m, k, n in shapes:
        a_u8 = rng.integers(0, 256, (m, k)).astype(np.uint8)
        a_s8 = rng.integers(-128, 128, (m, k)).astype(np.int8)
        b_s8 = rng.integers(-128, 128, (k, n)).astype(np.int8)
        ops = 2.0 * m * n * k
        want_u8 = km.matmul_int(a_u8, b_s8, backend="numpy")
        want_s8 = km.matmul_int(a_s8, b_s8, backend="numpy")
        row = {}
        for name, (a, want) in {"refq u8s8": (a_u8, want_u8),
                                "refq s8s8": (a_s8, want_s8)}.items():
            got = km.matmul_int(a, b_s8, backend="cpu")
            np.testing.assert_array_equal(got, want)
            row[name] = ops / _best(lambda a=a, b=b_s8: km.matmul_int(a, b, backend="cpu"),
                                    repeat) / 1e9
        operands = {"u8s8": (a_u8, b_s8, want_u8), "s8s8": (a_s8, b_s8, want_s8),
                    "f32": (a_u8.astype(np.float32), b_s8.astype(np.float32), None)}
        for name, (kind, fn) in peers.items():
            a, b, want = operands[kind]
            try:
                got = fn(a, b)
            except Exception as exc:  # noqa: BLE001
                out(f"{name} at {m}x{k}x{n}: {type(exc).__name__}: {exc}")
                continue
            if want is not None:
                np.testing.assert_array_equal(got, want, err_msg=f"{name} disagrees")
            row[name] = ops / _best(lambda fn=fn, a=a, b=b: fn(a, b), repeat) / 1e9
        results[(m, k, n)] = row
        out(" | ".join([f"{f'{m}x{k}x{n}':>13}"] + [
            f"{row[h]:13.1f}" if h in row else f"{'-':>13}" for h in header[1:]]))

    out("")
    out("ratios of refquant u8s8 (shape: vs numpy f32, vs f64 route, vs fastest int8 peer)")
    for shape, row in results.items():
        ref = row["refq u8s8"]
        int_peers = {k: v for k, v in row.items() if k in ("ort u8s8", "ort s8s8",
                                                           "torch _int_mm")}
        best = max(int_peers, key=int_peers.get) if int_peers else None
        line = (f"{'x'.join(map(str, shape)):>16}: {ref / row['numpy f32']:5.2f}x sgemm, "
                f"{ref / row['f64 route']:5.2f}x f64 route")
        if best:
            line += f", {ref / int_peers[best]:5.2f}x {best} (fastest peer, {int_peers[best]:.0f})"
        out(line)
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        square = [s for s in results if s[0] == s[1] == s[2]]
        for name in header[1:]:
            xs = [s[0] for s in square if name in results[s]]
            ax.plot(xs, [results[(x, x, x)][name] for x in xs], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("M = N = K")
        ax.set_ylabel("GOP/s")
        ax.set_title(f"int8 GEMM, {threads} threads: {_cpu_model()}", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(plot, dpi=120)
        plt.close(fig)
        out(f"plot saved to {plot}")
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke run on tiny sizes")
    p.add_argument("--big", action="store_true", help="add 4096^3 to the ladder")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--sizes", type=int, nargs="+", help="square sizes instead of the ladder")
    p.add_argument("--no-decode", action="store_true", help="skip the 1 x 4096 x 4096 shape")
    p.add_argument("--no-cold", action="store_true", help="skip the empty-cache compile")
    p.add_argument("--plot", default=os.path.join(tempfile.gettempdir(),
                                                  "refquant_bench_kernels_int8.png"))
    p.add_argument("--keep-openblas-env", action="store_true",
                   help="do not unset OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE")
    p.add_argument("--int8-only", action="store_true",
                   help="skip the binary, int4 weight-only and ggml block-dot tables")
    args = p.parse_args(argv)
    if args.quick:
        res = run([64, 96], [(1, 256, 256)], repeat=1, threads=args.threads, plot=args.plot,
                  cold=False)
    else:
        sizes = args.sizes or [64, 128, 256, 512, 1024, 2048] + ([4096] if args.big else [])
        res = run(sizes, [] if args.no_decode else [(1, 4096, 4096)], repeat=args.repeat,
                  threads=args.threads, plot=args.plot, cold=not args.no_cold)
    if not args.int8_only:
        # one table per kernel: the low-bit kernels' tables, measured in the same process
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import bench_kernels_lowbit

        print()
        bench_kernels_lowbit.run(quick=args.quick)
    return res


if __name__ == "__main__":
    _a = sys.argv[1:]
    _t = int(_a[_a.index("--threads") + 1]) if "--threads" in _a else 2
    _reexec_if_needed(_t, "--keep-openblas-env" in _a)
    main()
