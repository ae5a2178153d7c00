"""What ``refquant demo`` computes: every integer scheme on the bundled model's weights.

Library code returns rows; the CLI prints them.
"""

from __future__ import annotations

import numpy as np

from .models import DIGITS_MLP_BLOCKS, digits_mlp_accuracy, load_digits_mlp
from .quant import choose_qparams, sqnr_db

__all__ = ["integer_scheme_rows", "WEIGHT_NAMES"]

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
