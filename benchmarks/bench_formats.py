"""Quantization formulas: refquant against the peers it reproduces, in the same run.

refquant's formulas are NumPy references, written to be read and to be exact; the
peers are C/C++ kernels. This script measures what that costs, on the same
float32 weights (N elements, a (N // 4096, 4096) matrix, standard normal, seed 0),
page cache and allocator warm (every call runs once before timing), best of 5:

* int8 per tensor: ``compat.torch.quantize_per_tensor`` vs ``torch.quantize_per_tensor``
  and ``compat.onnx.quantize_linear`` vs onnxruntime's QuantizeLinear;
* int4 blocked (block 128): ``compat.onnx.quantize_linear`` vs onnxruntime (opset 21,
  its int4 output cast to int8 in the same graph);
* float8 e4m3fn: ``formats.floats.encode`` (from the bits) vs ml_dtypes' cast;
* ggml Q8_0 / Q4_0 quantize and Q4_K dequantize: ``compat.ggml`` vs gguf-py (NumPy too),
  and Q4_K quantize vs libggml's ``quantize_row_q4_K_ref`` where libggml-python or llama-cpp-python is installed;
* NF4 (block 64): ``compat.bnb.quantize_4bit`` vs bitsandbytes' CPU ``quantize_4bit``.

Every timed pair is also checked for equal output first, so a ratio is never
printed for two functions that disagree. The ratio column is refquant's time
divided by the peer's: above 1, refquant is slower. A peer that is not installed
gives a row "(peer not installed)".

Usage::

    python benchmarks/bench_formats.py               # 4M weights
    python benchmarks/bench_formats.py --size 65536  # quick
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.util
import time
import warnings

import numpy as np


def _best(fn, repeat=5):
    fn()  # warm: first-call imports, allocations, lazily built tables
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _have(name):
    return importlib.util.find_spec(name) is not None


def _ort_session(op, x, attrs, opset, out_type):
    """An onnxruntime session for QuantizeLinear with a constant scale.

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
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, {"x": x})[0]


def _rows(x):
    """(name, refquant callable, peer name, peer callable or None, equal(a, b))."""
    from refquant.compat import bnb, ggml, onnx, torch
    from refquant.formats import floats

    def same(a, b):
        return np.array_equal(np.asarray(a), np.asarray(b))

    rows = []
    scale = np.float32(np.abs(x).max() / 127)

    peer = None
    if _have("torch"):
        import torch as th

        tx = th.from_numpy(x)

        def peer():
            return th.quantize_per_tensor(tx, float(scale), 0, th.qint8).int_repr().numpy()
    rows.append(("int8 per tensor", lambda: torch.quantize_per_tensor(x, scale, 0, "qint8"),
                 "torch.quantize_per_tensor", peer, same))

    peer = None
    if _have("onnxruntime") and _have("onnx"):
        from onnx import TensorProto

        peer = _ort_session("QuantizeLinear", x, {"_scale": scale, "_zero": np.int8(0)}, 21,
                            TensorProto.INT8)
    rows.append(("int8 per tensor", lambda: onnx.quantize_linear(x, scale, np.int8(0)),
                 "onnxruntime QuantizeLinear", peer, same))

    block = 128
    bscale = (np.abs(x).reshape(x.shape[0], -1, block).max(-1) / 7).astype(np.float32)
    bscale[bscale == 0] = 1
    bzero = np.zeros(bscale.shape, np.int8)
    peer = None
    if _have("onnxruntime") and _have("onnx"):
        from onnx import TensorProto

        peer = _ort_session("QuantizeLinear", x,
                            {"_scale": bscale, "_zero": bzero, "axis": 1, "block_size": block},
                            21, TensorProto.INT4)
    rows.append(("int4 block 128",
                 lambda: onnx.quantize_linear(x, bscale, None, axis=1, block_size=block,
                                              output_dtype="int4"),
                 "onnxruntime QuantizeLinear", peer, same))

    peer = None
    if _have("ml_dtypes"):
        import ml_dtypes

        def peer():
            return x.astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
    rows.append(("float8_e4m3fn encode",
                 lambda: floats.encode(x, "float8_e4m3fn", saturate=False),
                 "ml_dtypes astype", peer, same))

    flat = x.reshape(-1, 256)
    for name in ("Q8_0", "Q4_0"):
        peer = None
        if _have("gguf"):
            from gguf import GGMLQuantizationType, quants

            peer = functools.partial(quants.quantize, flat, GGMLQuantizationType[name])
        rows.append((f"ggml {name} quantize", functools.partial(ggml.quantize, flat, name),
                     "gguf-py", peer, same))
    raw = ggml.quantize(flat, "Q4_K")
    peer = None
    if _have("gguf"):
        from gguf import GGMLQuantizationType, quants

        peer = functools.partial(quants.dequantize, raw, GGMLQuantizationType.Q4_K)
    rows.append(("ggml Q4_K dequantize", functools.partial(ggml.dequantize, raw, "Q4_K", flat.shape),
                 "gguf-py", peer, same))

    peer = None
    if ggml.libggml_paths():  # libggml-python's or llama-cpp-python's libggml-base
        lib = ggml.LibGGML()

        def peer():
            return lib.quantize_row(flat, "Q4_K")
    rows.append(("ggml Q4_K quantize", lambda: ggml.quantize(flat, "Q4_K"),
                 "libggml quantize_row_q4_K_ref", peer,
                 lambda a, b: np.array_equal(np.asarray(a).reshape(-1), np.asarray(b).reshape(-1))))

    peer = None
    if _have("bitsandbytes") and _have("torch"):
        import bitsandbytes.functional as bf
        import torch as th

        tx = th.from_numpy(x)

        def peer():
            return bf.quantize_4bit(tx, blocksize=64, quant_type="nf4")[0].numpy()
    rows.append(("nf4 block 64",
                 lambda: bnb.quantize_4bit(x, blocksize=64, quant_type="nf4")[0],
                 "bitsandbytes quantize_4bit (CPU)", peer,
                 lambda a, b: np.array_equal(np.asarray(a).reshape(-1), np.asarray(b).reshape(-1))))
    return rows


def run(size, repeat=5, out=print):
    """Time every row on ``size`` weights; return [(name, peer, t_ours, t_peer, ratio)]."""
    if size % 4096:
        raise SystemExit(f"--size must be a multiple of 4096, got {size}")
    x = np.random.default_rng(0).standard_normal((size // 4096, 4096)).astype(np.float32)
    warnings.filterwarnings("ignore", category=UserWarning)  # the peers' deprecation notes
    out(f"{size:,} float32 weights ({x.nbytes / 2**20:.1f} MiB), best of {repeat}")
    out(f"{'formula':24} {'peer':34} {'refquant':>10} {'peer':>10} {'ratio':>7}")
    results = []
    for name, ours, peer_name, peer, equal in _rows(x):
        if peer is None:
            out(f"{name:24} {peer_name:34} {'':>10} {'':>10}  (peer not installed)")
            continue
        if not equal(ours(), peer()):
            raise AssertionError(f"{name}: refquant and {peer_name} disagree; no ratio printed")
        t_ours, t_peer = _best(ours, repeat), _best(peer, repeat)
        ratio = t_ours / t_peer
        results.append((name, peer_name, t_ours, t_peer, ratio))
        out(f"{name:24} {peer_name:34} {t_ours * 1e3:8.1f}ms {t_peer * 1e3:8.1f}ms {ratio:6.1f}x")
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=4 << 20, help="weights (multiple of 4096)")
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args(argv)
    run(a.size, a.repeat)


if __name__ == "__main__":
    main()
