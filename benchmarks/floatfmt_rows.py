"""Float-format / codebook rows for bench_formats.py: refquant (default backend) vs its peer."""
import gc
import sys
import time

import numpy as np


def _best(fn, repeat=5):
    fn()
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def floatfmt_rows(x):
    """(name, refquant callable, peer name, peer callable, equal(a, b)) for the float8 / NF4 targets."""
    import bitsandbytes.functional as bf
    import ml_dtypes
    import torch as th

    from refquant.compat import bnb
    from refquant.formats import floats

    rows = []
    for name in ("float8_e4m3fn", "float8_e5m2"):
        dt = getattr(ml_dtypes, name)
        rows.append((f"{name} encode", lambda name=name: floats.encode(x, name, saturate=False),
                     "ml_dtypes astype", lambda dt=dt: x.astype(dt).view(np.uint8), np.array_equal))
        codes = floats.encode(x, name, saturate=False)
        rows.append((f"{name} decode", lambda name=name, codes=codes: floats.decode(codes, name),
                     "ml_dtypes astype", lambda dt=dt, codes=codes: codes.view(dt).astype(np.float32),
                     lambda a, b: np.array_equal(a.view(np.uint32), b.view(np.uint32))))
    tx = th.from_numpy(x)
    rows.append(("nf4 block 64 quantize", lambda: bnb.quantize_4bit(x, blocksize=64, quant_type="nf4")[0],
                 "bitsandbytes quantize_4bit (CPU)",
                 lambda: bf.quantize_4bit(tx, blocksize=64, quant_type="nf4")[0].numpy(),
                 lambda a, b: np.array_equal(np.asarray(a).ravel(), np.asarray(b).ravel())))
    p, s = bnb.quantize_4bit(x, blocksize=64, quant_type="nf4")
    tp, ts = bf.quantize_4bit(tx, blocksize=64, quant_type="nf4")
    rows.append(("nf4 block 64 dequantize", lambda: bnb.dequantize_4bit(p, s),
                 "bitsandbytes dequantize_4bit (CPU)", lambda: bf.dequantize_4bit(tp, ts).numpy(),
                 lambda a, b: np.array_equal(a.reshape(-1).view(np.uint32), b.reshape(-1).view(np.uint32))))
    return rows


if __name__ == "__main__":
    for n in [int(a) for a in sys.argv[1:]] or [1 << 22]:
        x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
        copy = _best(x.copy)
        for name, ours, peer_name, peer, same in floatfmt_rows(x):
            assert same(ours(), peer()), name
            t_o, t_p = _best(ours), _best(peer)
            print(f"{n:>9} {name:<26} refquant {t_o*1e3:8.2f} ms  {peer_name:<36} {t_p*1e3:8.2f} ms  "
                  f"ratio {t_o/t_p:5.2f}  copy {copy*1e3:6.2f} ms", flush=True)
