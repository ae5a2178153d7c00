"""GPTQ and SparseGPT: refquant (NumPy float32) against llmcompressor (torch CPU), same run.

Every measurement runs in its own child process (so that its peak resident
memory is its own) on the same seeded weight and the same Hessian
(:math:`\\frac2n X^T X` of seeded activations, computed once in float32 by NumPy
and handed to both), and writes its output; the parent prints a table of
times, peak memory and the share of codes / mask entries on which the two agree.

    python benchmarks/bench_calibrated.py                      # 4096 x 4096, 2048 tokens
    python benchmarks/bench_calibrated.py --peer-python /work/venv-llmc/bin/python

llmcompressor is run by ``--peer-python`` (a venv that has it); when that
interpreter cannot import it, only refquant's rows are printed. Timings are noisy
on shared machines: compare ratios within one run and name the CPU (``lscpu``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_inputs(rows, cols, tokens, seed=0):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float32)
    x = rng.standard_normal((tokens, cols), dtype=np.float32)
    x *= np.exp(rng.uniform(-1.5, 1.5, cols)).astype(np.float32)
    h = (x.T @ x) * np.float32(2.0 / tokens)
    return w, h


def _child(args) -> None:
    w, h = make_inputs(args.rows, args.cols, args.tokens)
    act = None if args.actorder == "none" else args.actorder
    if args.impl == "refquant":
        sys.path.insert(0, str(ROOT))
        from refquant.prune.sparsegpt import sparsegpt
        from refquant.quant.gptq import gptq

        t = time.perf_counter()
        if args.method == "gptq":
            r = gptq(w, h, bits=4, group_size=args.group_size, actorder=act,
                     precision="float32")
            out = r.codes.astype(np.int8)
        else:
            r = sparsegpt(w, h, sparsity=0.5, precision="float32", mask_rule="llmcompressor")
            out = r.mask
        dt = time.perf_counter() - t
    else:
        import torch
        from compressed_tensors.quantization import QuantizationArgs
        from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight
        from llmcompressor.modifiers.pruning.sparsegpt import sgpt_sparsify
        from llmcompressor.observers import Observer

        wt = torch.from_numpy(w)
        if args.method == "gptq":
            qargs = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group",
                                     group_size=args.group_size, actorder=act)
            t = time.perf_counter()
            obs = Observer.load_from_registry("memoryless_minmax", base_name="weight",
                                              args=qargs)
            obs(wt)
            qp = obs.get_qparams()
            q, _, _ = quantize_weight(wt[None].clone(), torch.from_numpy(h)[None],
                                      qp["scale"][None], qp["zero_point"][None], None, qargs)
            dt = time.perf_counter() - t
            s = qp["scale"].numpy()[:, np.arange(args.cols) // args.group_size]
            out = np.round(q[0].numpy() / s).astype(np.int8)
        else:
            lin = torch.nn.Linear(args.cols, args.rows, bias=False)
            with torch.no_grad():
                lin.weight.copy_(wt)
            lin.weight.requires_grad_(False)
            t = time.perf_counter()
            _, q = sgpt_sparsify.sparsify_weight(lin, {lin: torch.from_numpy(h)}, 0.5, 0, 0,
                                                 128, 0.01, False)
            dt = time.perf_counter() - t
            out = q.numpy() == 0
    np.save(args.out, out)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": dt, "peak_mib": peak}))


def _run_child(python, impl, method, actorder, a, tmp):
    out = Path(tmp) / f"{impl}_{method}_{actorder}.npy"
    cmd = [python, __file__, "--child", impl, "--method", method, "--actorder", actorder,
           "--rows", str(a.rows), "--cols", str(a.cols), "--tokens", str(a.tokens),
           "--group-size", str(a.group_size), "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        return None, p.stderr.strip().splitlines()[-1:] or ["failed"]
    return json.loads(p.stdout.strip().splitlines()[-1]) | {"out": np.load(out)}, None


def run(a, out=print):
    peer_ok = subprocess.run([a.peer_python, "-c", "import llmcompressor"],
                             capture_output=True).returncode == 0
    out(f"GPTQ int4 sym group {a.group_size} / SparseGPT 50 %: {a.rows}x{a.cols}, "
        f"{a.tokens} tokens; peer {'llmcompressor via ' + a.peer_python if peer_ok else 'absent'}")
    out(f"{'case':<26}{'refquant s':>11}{'peer s':>9}{'ratio':>7}{'ref MiB':>9}"
        f"{'peer MiB':>9}{'agree':>9}")
    rows = []
    cases = [("gptq", "none"), ("gptq", "weight"), ("sparsegpt", "none")]
    with tempfile.TemporaryDirectory() as tmp:
        for method, act in cases:
            mine, err = _run_child(sys.executable, "refquant", method, act, a, tmp)
            if mine is None:
                raise SystemExit(f"refquant {method} failed: {err}")
            peer = _run_child(a.peer_python, "peer", method, act, a, tmp)[0] if peer_ok else None
            agree = np.mean(mine["out"] == peer["out"]) if peer else float("nan")
            name = f"{method} actorder={act}" if method == "gptq" else method
            ps = peer["seconds"] if peer else float("nan")
            pm = peer["peak_mib"] if peer else float("nan")
            out(f"{name:<26}{mine['seconds']:>11.2f}{ps:>9.2f}{ps / mine['seconds']:>7.2f}"
                f"{mine['peak_mib']:>9.0f}{pm:>9.0f}{agree:>9.5f}")
            rows.append((name, mine["seconds"], ps, agree))
    out("ratio = peer seconds / refquant seconds (> 1: refquant faster); agree = share of "
        "equal codes (GPTQ) or mask entries (SparseGPT)")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--peer-python", default=sys.executable)
    ap.add_argument("--child", choices=("refquant", "peer"))
    ap.add_argument("--method", default="gptq")
    ap.add_argument("--actorder", default="none")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    if a.child:
        a.impl = a.child
        _child(a)
    else:
        run(a)


if __name__ == "__main__":
    main()
