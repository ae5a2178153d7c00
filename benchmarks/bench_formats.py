"""Quantization formulas: refquant against the peers it reproduces, in the same run.

refquant's formulas are NumPy references, written to be read and to be exact; the
peers are C/C++ kernels. This script measures what that costs, on the same
float32 weights (N elements, a (N // 4096, 4096) matrix, standard normal, seed 0),
page cache and allocator warm (every call runs once before timing), best of 5:

* int8 per tensor: ``compat.torch.quantize_per_tensor`` vs ``torch.quantize_per_tensor``
  and ``compat.onnx.quantize_linear`` vs onnxruntime's QuantizeLinear; ``out=``: the same
  codes through ``quantize(..., out=buf)`` into one reused buffer (onnxruntime's arena
  reuses its output memory, a fresh NumPy array pays its page faults);
* int8 per channel (one scale per row): ``compat.torch.quantize_per_channel`` vs
  ``torch.quantize_per_channel`` and ``compat.onnx.quantize_linear(axis=0)`` vs onnxruntime;
* int4 blocked (block 128): ``compat.onnx.quantize_linear`` vs onnxruntime (opset 21,
  its int4 output cast to int8 in the same graph); onnxruntime runs on every core
  (its default), as torch and the Numba kernels do;
* the affine kernels' first calls (compile, or Numba's on-disk cache) are timed;
* float8 e4m3fn: ``formats.floats.encode`` (from the bits) vs ml_dtypes' cast;
* ggml, every type with a Numba kernel: quantize vs libggml's C reference
  ``quantize_row_<type>_ref`` (single-threaded, through ctypes; libggml-python or
  llama-cpp-python) with the kernel on one thread and on every core (and the NumPy
  reference once, for Q4_K), Q4_0 / Q8_0 quantize vs gguf-py, and dequantize vs
  gguf-py (NumPy); each kernel's first call (compile, or Numba's on-disk cache) is timed;
* NF4 (block 64): ``compat.bnb.quantize_4bit`` vs bitsandbytes' CPU ``quantize_4bit``.

Every timed pair is also checked for equal output first, so a ratio is never
printed for two functions that disagree. The ratio column is refquant's time
divided by the peer's: above 1, refquant is slower. The ``copy bw`` column is the
time of a NumPy copy of the same float32 bytes divided by refquant's time: the
share of the memory-bandwidth floor refquant reaches (1.0: as fast as a copy).
The backend column says what ran refquant's side (``numpy``: the reference;
``cpu x1`` / ``cpu xN``: the Numba kernel on 1 / N threads; ``default``: the
function's default backend, whatever it resolves to). The ggml ``cpu x1`` rows
time both sides in CPU time of the process (``time.process_time``: both are
single-threaded, and the figure does not grow when other processes share the
cores); every other row in wall-clock time. A peer that is not installed gives a
row "(peer not installed)".

Usage::

    python benchmarks/bench_formats.py               # 4M weights, then 64M
    python benchmarks/bench_formats.py --size 4194304 --only-affine   # the affine rows
    python benchmarks/bench_formats.py --size 65536  # quick
    python benchmarks/bench_formats.py --only-ggml --ggml q4_k,q6_k   # some ggml rows only
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.util
import time
import warnings

import numpy as np


def _best(fn, repeat=5, clock=time.perf_counter):
    fn()  # warm: first-call imports, allocations, lazily built tables
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best


def _have(name):
    return importlib.util.find_spec(name) is not None


def _ort_session(op, x, attrs, opset, out_type):
    """An onnxruntime session for QuantizeLinear with a constant scale (every core).

    int4 outputs get a Cast to int8 after them: onnxruntime cannot hand int4 to NumPy.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    scale = attrs.pop("_scale")
    zero = attrs.pop("_zero")
    inits = [numpy_helper.from_array(scale, "s"), helper.make_tensor("z", out_type, zero.shape,
                                                                      zero.ravel().tolist())]
    nodes = [helper.make_node(op, ["x", "s", "z"], ["q"], **attrs)]
    if out_type == TensorProto.INT4:
        nodes.append(helper.make_node("Cast", ["q"], ["y"], to=TensorProto.INT8))
        out_type = TensorProto.INT8
    else:
        nodes.append(helper.make_node("Identity", ["q"], ["y"]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", out_type, x.shape)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    so = ort.SessionOptions()  # intra-op threads: onnxruntime's default, every core
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, {"x": x})[0]


#: the ggml types timed (every type with a Numba kernel; ``--ggml`` picks fewer)
GGML_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q8_k",
              "tq1_0", "tq2_0", "ggml_mxfp4", "iq4_nl", "iq4_xs")


def _threads(fn, n):
    """``fn`` run with Numba's thread count set to ``n`` (None: all cores), then restored."""

    def call():
        import numba

        before = numba.get_num_threads()
        numba.set_num_threads(n or numba.config.NUMBA_NUM_THREADS)
        try:
            return fn()
        finally:
            numba.set_num_threads(before)

    return call


def _ggml_rows(x, same, types=GGML_TYPES):
    """Quantize against libggml's C reference (single-threaded: ``quantize_row_<t>_ref``
    through ctypes) on the Numba kernel with 1 thread and with every core, and once on the
    NumPy reference for Q4_K; dequantize against gguf-py; gguf-py's quantizers too."""
    from refquant.compat import ggml

    rows = []
    lib = ggml.LibGGML() if ggml.libggml_paths() else None
    every = f"cpu x{_cores()}"
    for name in types:
        fmt = ggml.resolve_type(name)
        flat = x.reshape(-1, fmt.block_size)
        up = "MXFP4" if name == "ggml_mxfp4" else name.upper()
        peer = None if lib is None else functools.partial(lib.quantize_row, flat, name)
        fn = functools.partial(fmt.quantize_blocks, flat, backend="cpu")
        rows.append((f"ggml {up} quantize", _threads(fn, 1), f"libggml quantize_row_{fmt.c_name}_ref",
                     peer, same, "cpu x1"))
        rows.append((f"ggml {up} quantize", _threads(fn, None), f"libggml quantize_row_{fmt.c_name}_ref",
                     peer, same, every))
        if name == "q4_k":  # the NumPy reference, for scale
            rows.append((f"ggml {up} quantize", functools.partial(fmt.quantize_blocks, flat,
                                                                  backend="numpy"),
                         f"libggml quantize_row_{fmt.c_name}_ref", peer, same, "numpy"))
        if name in ("q4_0", "q8_0") and _have("gguf"):
            from gguf import GGMLQuantizationType, quants

            rows.append((f"ggml {up} quantize", _threads(fn, None), "gguf-py",
                         functools.partial(quants.quantize, flat, GGMLQuantizationType[up]),
                         same, every))
        if not fmt.has_dequantize:
            continue
        raw = fmt.quantize_blocks(flat, backend="cpu")
        peer = None
        if _have("gguf"):
            from gguf import GGMLQuantizationType, quants

            peer = functools.partial(quants.dequantize, raw, GGMLQuantizationType[up])
            try:
                peer()
            except NotImplementedError:  # gguf-py cannot dequantize Q8_K
                peer = None
        fn = functools.partial(fmt.dequantize_blocks, raw, backend="cpu")
        rows.append((f"ggml {up} dequantize", _threads(fn, None), "gguf-py", peer,
                     lambda a, b: _same_floats(a, b), every))
    return rows


def _same_floats(a, b):
    a = np.ascontiguousarray(a, dtype=np.float32).reshape(-1)
    b = np.ascontiguousarray(b, dtype=np.float32).reshape(-1)
    return np.array_equal(a.view(np.uint32), b.view(np.uint32))


def _cores():
    import numba

    return numba.config.NUMBA_NUM_THREADS


def first_calls(types=GGML_TYPES, out=print):
    """Time each ggml kernel's first call in this process: compile, or load from Numba's disk cache."""
    from refquant.compat import ggml

    for name in types:
        fmt = ggml.resolve_type(name)
        xb = np.ones((1, fmt.block_size), np.float32)
        t0 = time.perf_counter()
        raw = fmt.quantize_blocks(xb, backend="cpu")
        t1 = time.perf_counter()
        fmt.dequantize_blocks(raw, backend="cpu")
        t2 = time.perf_counter()
        out(f"first call {name:6} quantize {t1 - t0:6.2f}s  dequantize {t2 - t1:6.2f}s")


def _auto_backend(n):
    """What ``backend="auto"`` of the affine functions runs on ``n`` elements."""
    from refquant.kernels._backend import resolve_backend
    from refquant.quant.affine import KERNEL_THRESHOLD

    b = resolve_backend("auto", n, threshold=KERNEL_THRESHOLD, cuda=False)
    return f"cpu x{_cores()}" if b == "cpu" else b


def _affine_rows(x, same):
    """int8 per tensor, int8 per channel and int4 blocked against torch and onnxruntime; where
    ``backend="auto"`` runs the Numba kernel, on one thread and on every core."""
    from refquant.compat import onnx, torch

    auto = _auto_backend(x.size)
    rows = []
    for name, fn, peer_name, peer, equal in _affine_row_list(x, same, torch, onnx):
        if auto == "numpy":
            rows.append((name, fn, peer_name, peer, equal, auto))
        else:
            rows.append((name, _threads(fn, 1), peer_name, peer, equal, "cpu x1"))
            rows.append((name, _threads(fn, None), peer_name, peer, equal, auto))
    return rows


def _affine_row_list(x, same, torch, onnx):
    """(name, refquant callable, peer name, peer callable or None, equal) of the affine rows."""
    rows = []
    scale = np.float32(np.abs(x).max() / 127)
    have_ort = _have("onnxruntime") and _have("onnx")

    peer = None
    if _have("torch"):
        import torch as th

        tx = th.from_numpy(x)

        def peer():
            return th.quantize_per_tensor(tx, float(scale), 0, th.qint8).int_repr().numpy()
    rows.append(("int8 per tensor", lambda: torch.quantize_per_tensor(x, scale, 0, "qint8"),
                 "torch.quantize_per_tensor", peer, same))

    peer = None
    if have_ort:
        from onnx import TensorProto

        peer = _ort_session("QuantizeLinear", x, {"_scale": scale, "_zero": np.int8(0)}, 21,
                            TensorProto.INT8)
    rows.append(("int8 per tensor", lambda: onnx.quantize_linear(x, scale, np.int8(0)),
                 "onnxruntime QuantizeLinear", peer, same))
    # the same codes written into one reused buffer (onnxruntime's arena reuses its memory;
    # a fresh NumPy output pays the kernel's page faults)
    from refquant.quant.affine import quantize as _quantize

    reuse = np.empty(x.shape, np.int8)
    rows.append(("int8 per tensor out=",
                 lambda: _quantize(x, scale, 0, precision="float32", nan="qmin", out=reuse),
                 "onnxruntime QuantizeLinear", peer, same))

    cscale = (np.abs(x).max(axis=1) / 127).astype(np.float32)
    cscale[cscale == 0] = 1
    czero = np.zeros(cscale.shape, np.int8)
    peer = None
    if _have("torch"):
        import torch as th

        tx = th.from_numpy(x)
        ts = th.from_numpy(cscale.astype(np.float64))
        tz = th.zeros(cscale.shape, dtype=th.int64)

        def peer():
            return th.quantize_per_channel(tx, ts, tz, 0, th.qint8).int_repr().numpy()
    rows.append(("int8 per channel",
                 lambda: torch.quantize_per_channel(x, cscale.astype(np.float64),
                                                    czero.astype(np.int64), 0, "qint8"),
                 "torch.quantize_per_channel", peer, same))
    peer = None
    if have_ort:
        from onnx import TensorProto

        peer = _ort_session("QuantizeLinear", x, {"_scale": cscale, "_zero": czero, "axis": 0},
                            21, TensorProto.INT8)
    rows.append(("int8 per channel", lambda: onnx.quantize_linear(x, cscale, czero, axis=0),
                 "onnxruntime QuantizeLinear", peer, same))

    block = 128
    bscale = (np.abs(x).reshape(x.shape[0], -1, block).max(-1) / 7).astype(np.float32)
    bscale[bscale == 0] = 1
    bzero = np.zeros(bscale.shape, np.int8)
    peer = None
    if have_ort:
        from onnx import TensorProto

        peer = _ort_session("QuantizeLinear", x,
                            {"_scale": bscale, "_zero": bzero, "axis": 1, "block_size": block},
                            21, TensorProto.INT4)
    rows.append(("int4 block 128",
                 lambda: onnx.quantize_linear(x, bscale, None, axis=1, block_size=block,
                                              output_dtype="int4"),
                 "onnxruntime QuantizeLinear", peer, same))
    return rows


def affine_first_calls(out=print):
    """Time each affine kernel's first call in this process (compile, or Numba's disk cache)."""
    from refquant.quant.affine import dequantize, quantize
    from refquant.quant.qparams import minmax_range

    x = np.ones((4, 64), np.float32)
    s = np.ones((4, 1), np.float32)
    calls = [
        ("quantize torch fused", lambda: quantize(
            x, 1.0, 0, scale_op="reciprocal", precision="float32", zero_point_stage="fused",
            nan="qmax", backend="cpu")),
        ("quantize torch per channel", lambda: quantize(
            x, s[:, 0], 0, axis=0, scale_op="reciprocal", precision="float32",
            zero_point_stage="before_rounding", nan="zero", backend="cpu")),
        ("quantize onnx float32", lambda: quantize(
            x, 1.0, 0, precision="float32", nan="qmin", backend="cpu")),
        ("quantize float64 default", lambda: quantize(x, 1.0, 0, backend="cpu")),
        ("dequantize exact float32", lambda: dequantize(x.astype(np.int8), 1.0, backend="cpu")),
        ("minmax", lambda: minmax_range(x, axis=0, backend="cpu")),
    ]
    for name, fn in calls:
        t0 = time.perf_counter()
        fn()
        out(f"first call {name:28} {time.perf_counter() - t0:6.2f}s")


def _rows(x, ggml_types=GGML_TYPES):
    """(name, refquant callable, peer name, peer callable or None, equal(a, b))."""

    def same(a, b):
        return np.array_equal(np.asarray(a), np.asarray(b))

    rows = _affine_rows(x, same)
    rows.extend(_float_rows(x))
    rows.extend(_ggml_rows(x, same, ggml_types))
    rows.extend(_codebook_rows(x))
    return rows


def _bits_equal(a, b):
    a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    return a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def _float_rows(x):
    """float8 e4m3fn / e5m2 encode and decode against ml_dtypes' casts (default backend)."""
    from refquant.formats import floats

    rows = []
    ml = None
    if _have("ml_dtypes"):
        import ml_dtypes as ml
    for name in ("float8_e4m3fn", "float8_e5m2"):
        dt = None if ml is None else getattr(ml, name)
        codes = floats.encode(x, name, saturate=False)
        rows.append((f"{name} encode", lambda name=name: floats.encode(x, name, saturate=False),
                     "ml_dtypes astype",
                     None if dt is None else (lambda dt=dt: x.astype(dt).view(np.uint8)),
                     _bits_equal, "default"))
        rows.append((f"{name} decode",
                     lambda name=name, codes=codes: floats.decode(codes, name),
                     "ml_dtypes astype",
                     None if dt is None else (lambda dt=dt, codes=codes:
                                              codes.view(dt).astype(np.float32)),
                     _bits_equal, "default"))
    return rows


def _codebook_rows(x):
    """NF4 (block 64) quantize and dequantize against bitsandbytes' CPU functions."""
    from refquant.compat import bnb

    p, st = bnb.quantize_4bit(x, blocksize=64, quant_type="nf4")
    quant_peer = deq_peer = None
    if _have("bitsandbytes") and _have("torch"):
        import bitsandbytes.functional as bf
        import torch as th

        tx = th.from_numpy(x)
        tp, ts = bf.quantize_4bit(tx, blocksize=64, quant_type="nf4")

        def quant_peer():
            return bf.quantize_4bit(tx, blocksize=64, quant_type="nf4")[0].numpy()

        def deq_peer():
            return bf.dequantize_4bit(tp, ts).numpy()
    return [
        ("nf4 block 64 quantize", lambda: bnb.quantize_4bit(x, blocksize=64, quant_type="nf4")[0],
         "bitsandbytes quantize_4bit (CPU)", quant_peer, _bits_equal, "default"),
        ("nf4 block 64 dequantize", lambda: bnb.dequantize_4bit(p, st),
         "bitsandbytes dequantize_4bit (CPU)", deq_peer, _bits_equal, "default"),
    ]


def run(size, repeat=5, out=print, ggml_types=GGML_TYPES, only_ggml=False, only_affine=False):
    """Time every row on ``size`` weights; return [(name, peer, t_ours, t_peer, ratio, backend,
    copy_bw)].

    ``backend`` says what ran refquant's side: ``numpy`` (the reference), ``cpu x1`` (the
    Numba kernel on one thread), ``cpu xN`` (on every core Numba uses) or ``default``.
    ``copy_bw`` is a NumPy copy's time of the same float32 weights over refquant's time.
    """
    if size % 4096:
        raise SystemExit(f"--size must be a multiple of 4096, got {size}")
    x = np.random.default_rng(0).standard_normal((size // 4096, 4096)).astype(np.float32)
    warnings.filterwarnings("ignore", category=UserWarning)  # the peers' deprecation notes
    t_copy = _best(x.copy, repeat)
    out(f"{size:,} float32 weights ({x.nbytes / 2**20:.1f} MiB), best of {repeat}; "
        f"NumPy copy {t_copy * 1e3:.2f} ms ({2 * x.nbytes / t_copy / 1e9:.1f} GB/s read + write)")
    if not only_ggml:
        affine_first_calls(out)
    if ggml_types and not only_affine:
        first_calls(ggml_types, out)
    out(f"{'formula':24} {'peer':34} {'backend':>8} {'refquant':>10} {'peer':>10} {'ratio':>7} "
        f"{'copy bw':>7}")
    if only_affine:
        rows = _affine_rows(x, _same_bytes)
    elif only_ggml:
        rows = _ggml_rows(x, _same_bytes, ggml_types)
    else:
        rows = _rows(x, ggml_types)
    results = []
    for row in rows:
        name, ours, peer_name, peer, equal = row[:5]
        backend = row[5] if len(row) > 5 else "numpy"
        if peer is None:
            out(f"{name:24} {peer_name:34} {backend:>8} {'':>10} {'':>10}  (peer not installed)")
            continue
        if not equal(ours(), peer()):
            raise AssertionError(f"{name}: refquant and {peer_name} disagree; no ratio printed")
        # single-threaded rows (the ggml "cpu x1" ones against libggml's C reference): CPU time
        # of the process, which other processes on a shared machine do not inflate
        single = backend == "cpu x1" and peer_name.startswith("libggml")
        clock = time.process_time if single else time.perf_counter
        t_ours, t_peer = _best(ours, repeat, clock), _best(peer, repeat, clock)
        ratio = t_ours / t_peer
        results.append((name, peer_name, t_ours, t_peer, ratio, backend, t_copy / t_ours))
        out(f"{name:24} {peer_name:34} {backend:>8} {t_ours * 1e3:8.2f}ms {t_peer * 1e3:8.2f}ms "
            f"{ratio:6.2f}x {t_copy / t_ours:6.2f}")
    return results


def _same_bytes(a, b):
    return np.array_equal(np.asarray(a).reshape(-1), np.asarray(b).reshape(-1))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, action="append",
                   help="weights (multiple of 4096); repeat for several (default 4M and 64M)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--ggml", default=",".join(GGML_TYPES),
                   help="comma-separated ggml types to time (empty: none)")
    p.add_argument("--only-ggml", action="store_true", help="time the ggml rows only")
    p.add_argument("--only-affine", action="store_true",
                   help="time the int8 / int4 affine rows only")
    a = p.parse_args(argv)
    types = tuple(t for t in a.ggml.split(",") if t)
    for size in a.size or (4 << 20, 64 << 20):
        run(size, a.repeat, ggml_types=types, only_ggml=a.only_ggml, only_affine=a.only_affine)


if __name__ == "__main__":
    main()
