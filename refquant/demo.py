"""What ``refquant demo`` computes: every integer scheme on the bundled model's weights.

Library code returns rows; the CLI prints them.
"""

from __future__ import annotations

import numpy as np

from .models import DIGITS_MLP_BLOCKS, digits_mlp_accuracy, load_digits_mlp
from .quant import choose_qparams, sqnr_db

__all__ = ["integer_scheme_rows", "format_rows", "WEIGHT_NAMES"]

WEIGHT_NAMES = ("embed.weight", *(f"blocks.{i}.weight" for i in range(DIGITS_MLP_BLOCKS)),
                "head.weight")

GRANULARITIES = (("per-tensor", None, None), ("per-channel", 0, None), ("per-group-32", 1, 32))


def integer_scheme_rows(params=None):
    """One row per (granularity, bits, symmetric): the scheme applied to every weight matrix.

    Each row: scheme, bits, symmetric, SQNR in dB over all weights, the largest
    error in quantization steps, total bytes (codes packed at ``bits`` per weight
    plus float32 scales and, for affine schemes, zero points of ``bits`` bits),
    and the model's test accuracy with those weights.
    """
    p = load_digits_mlp() if params is None else params
    rows = [{"scheme": "float32", "bits": 32, "symmetric": None,
             "sqnr_db": float("inf"), "max_err_steps": 0.0,
             "bytes": sum(p[n].nbytes for n in WEIGHT_NAMES), "accuracy": digits_mlp_accuracy(p)}]
    for gname, axis, block in GRANULARITIES:
        for bits in (8, 4, 2):
            for symmetric in (True, False):
                dtype = f"int{bits}" if symmetric else f"uint{bits}"
                q_params = dict(p)
                ref, approx, worst, nbytes = [], [], 0.0, 0
                for n in WEIGHT_NAMES:
                    w = p[n]
                    qp = choose_qparams(w, dtype=dtype, symmetric=symmetric, axis=axis,
                                        block_size=block)
                    codes = qp.quantize(w)
                    wq = qp.dequantize(codes)
                    s = np.broadcast_to(_expand(qp, w.shape), w.shape)
                    worst = max(worst, float(np.max(np.abs(wq.astype(np.float64) - w) / s)))
                    nbytes += -(-w.size * bits // 8) + qp.scale.size * 4
                    if not symmetric:
                        nbytes += -(-qp.zero_point.size * bits // 8)
                    ref.append(w.ravel())
                    approx.append(wq.ravel())
                    q_params[n] = wq
                rows.append({
                    "scheme": gname, "bits": bits, "symmetric": symmetric,
                    "sqnr_db": sqnr_db(np.concatenate(ref), np.concatenate(approx)),
                    "max_err_steps": worst, "bytes": nbytes,
                    "accuracy": digits_mlp_accuracy(q_params),
                })
    return rows


def _expand(qp, shape):
    from .quant._granularity import broadcast_param

    return broadcast_param(qp.scale.astype(np.float64), shape, qp.axis, qp.block_size, "scale")


def _float_fmt(name, axis, block):
    def run(w):
        from .quant.floatq import dequantize_float, quantize_float

        codes, scale = quantize_float(w, name, axis=axis, block_size=block)
        return dequantize_float(codes, name, scale, axis=axis, block_size=block)

    return run


def _mx(name):
    def run(w):
        from .formats.mx import dequantize_mx, quantize_mx

        codes, scales = quantize_mx(w, name)
        return dequantize_mx(codes, scales, name)

    return run


def _nf4(w):
    from .compat.bnb import dequantize_4bit, quantize_4bit

    packed, state = quantize_4bit(w, blocksize=64, quant_type="nf4")
    return dequantize_4bit(packed, state)


def _ggml(name):
    def run(w):
        from .compat.ggml import dequantize, quantize

        rows = w.reshape(-1, 256)  # every matrix holds a multiple of 256 weights
        return dequantize(quantize(rows, name), name, rows.shape).reshape(w.shape)

    return run


# (label, bits per weight including scales ("per-row": 8 bits plus one float32 scale
# per output row), round trip)
FORMAT_SCHEMES = (
    ("float8_e4m3fn per-channel", "per-row", _float_fmt("float8_e4m3fn", 0, None)),
    ("mxfp8_e4m3", 8.25, _mx("mxfp8_e4m3")),
    ("q8_0 (llama.cpp)", 8.5, _ggml("q8_0")),
    ("q6_k (llama.cpp)", 6.5625, _ggml("q6_k")),
    ("q4_k (llama.cpp)", 4.5, _ggml("q4_k")),
    ("q4_0 (llama.cpp)", 4.5, _ggml("q4_0")),
    ("nf4 block 64 (bnb)", 4.5, _nf4),
    ("mxfp4", 4.25, _mx("mxfp4")),
    ("float4_e2m1fn g32", 4 + 32 / 32, _float_fmt("float4_e2m1fn", 1, 32)),
    ("q3_k (llama.cpp)", 3.4375, _ggml("q3_k")),
    ("q2_k (llama.cpp)", 2.625, _ggml("q2_k")),
    ("tq2_0 (ternary)", 2.0625, _ggml("tq2_0")),
)


def format_rows(params=None):
    """One row per float, codebook and block format on every weight matrix of the bundled model.

    Each row: format, bits per weight (codes plus stored scales), SQNR in dB
    over all weights, total bytes, and the model's test accuracy.
    """
    p = load_digits_mlp() if params is None else params
    rows = []
    n_weights = sum(p[n].size for n in WEIGHT_NAMES)
    n_rows = sum(p[n].shape[0] for n in WEIGHT_NAMES)
    for label, bpw, run in FORMAT_SCHEMES:
        if bpw == "per-row":
            bpw = 8 + 32 * n_rows / n_weights
        q_params = dict(p)
        ref, approx = [], []
        for n in WEIGHT_NAMES:
            wq = np.asarray(run(p[n]), dtype=np.float32)
            ref.append(p[n].ravel())
            approx.append(wq.ravel())
            q_params[n] = wq
        rows.append({
            "format": label, "bits_per_weight": bpw,
            "sqnr_db": sqnr_db(np.concatenate(ref), np.concatenate(approx)),
            "bytes": int(np.ceil(n_weights * bpw / 8)),
            "accuracy": digits_mlp_accuracy(q_params),
        })
    return rows
