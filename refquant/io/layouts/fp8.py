"""FP8 checkpoints: per-tensor ``weight_scale`` and block-wise ``weight_scale_inv``.

===========================  =============  ============================  =====================
layout                       weight         scale                         config
===========================  =============  ============================  =====================
``fp8`` (vLLM, llm-compr.)   e4m3 (N, K)    ``weight_scale`` f32 () / (1)  ``quant_method: fp8``
``fp8-block`` (DeepSeek-V3,  e4m3 (N, K)    ``weight_scale_inv`` f32       ``weight_block_size``
Qwen3-FP8)                                  (ceil(N/bn), ceil(K/bk))      ``[bn, bk]``
===========================  =============  ============================  =====================
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from ..._errors import RefquantError
from ._base import LayoutView, Scheme

__all__ = ["FP8View", "fp8_tensors", "fp8_block_tensors"]

_E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)


class FP8View(LayoutView):
    """Logical weights of an FP8 checkpoint (``quant_method: fp8``).

    Notes
    -----
    **Formula**: per tensor ``W = f32(w) * s`` (vLLM ``Fp8LinearMethod`` with a
    serialized checkpoint; one float32 rounding of the exact product). Block-wise,
    for the tile ``(i // bn, j // bk)``: ``W[i, j] = f32(w[i, j]) * s_inv[i // bn, j // bk]``
    (DeepSeek-V3 ``inference/kernel.py`` ``weight_dequant_kernel``: ``y = x.to(float32)
    * s``; that kernel then stores ``y`` in the default dtype, bfloat16 in its
    ``generate.py``; refquant returns the float32 product before that store).
    Edge tiles are partial: ``ceil`` tiles per dim.

    **Reference**: deepseek-ai/DeepSeek-V3 ``inference/kernel.py``; vLLM
    ``model_executor/layers/quantization/fp8.py``; transformers
    ``integrations/finegrained_fp8.py``.
    """

    name = "fp8"

    def __init__(self, ck, config, qcfg):
        super().__init__(ck, config)
        fmt = str(qcfg.get("fmt", "e4m3"))
        if fmt != "e4m3":
            raise RefquantError(f"{ck.path}: fp8 fmt {fmt!r}; refquant reads e4m3 weights")
        block = qcfg.get("weight_block_size")
        if block is not None:
            if (not isinstance(block, list | tuple) or len(block) != 2
                    or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)):
                raise RefquantError(f"{ck.path}: weight_block_size {block!r}; expected [rows, cols] "
                                    "of positive ints")
            self.name = "fp8-block"
        suffix = ".weight_scale_inv" if block is not None else ".weight_scale"
        bases = [n[: -len(suffix)] for n in ck if n.endswith(suffix)]
        if not bases:
            raise RefquantError(f"{ck.path}: config names the {self.name} layout but no tensor ends "
                                f"in {suffix!r}")
        for base in bases:
            w = self.need(base + ".weight", base + suffix)
            s = base + suffix
            self.expect_dtype(w, (_E4M3,), "weights")
            self.expect_dtype(s, (np.float32, np.float16, ml_dtypes.bfloat16), "scales")
            shape = tuple(ck.info(w).shape)
            if len(shape) != 2:
                raise self.err(w, f"shape {shape}; expected 2-D (out_features, in_features)")
            if block is not None:
                bn, bk = block
                want = (-(-shape[0] // bn), -(-shape[1] // bk))
                self.expect_shape(s, want, f"one scale per {bn}x{bk} tile of weight {shape}")
                strategy, gs = "block", None
            else:
                ss = tuple(ck.info(s).shape)
                if ss not in ((), (1,)):
                    raise self.err(s, f"shape {ss}; the per-tensor fp8 layout stores one scale "
                                      "(shape () or (1,)); per-channel scales are compressed-tensors "
                                      "'float-quantized'")
                strategy, gs = "tensor", None
            self.add(base + ".weight",
                     Scheme(format=self.name, bits=8, group_size=gs, symmetric=True, act_order=False,
                            packing="float8_e4m3fn", strategy=strategy, shape=shape,
                            block=tuple(block) if block is not None else None),
                     {"weight": w, "scale": s,
                      "input_scale": base + ".input_scale" if base + ".input_scale" in ck else None})

    def _dequantize(self, name, e):
        w = self.ck[e.roles["weight"]].astype(np.float32)
        s = self.ck[e.roles["scale"]].astype(np.float32)
        if e.scheme.block is None:
            return w * s.reshape(())
        bn, bk = e.scheme.block
        full = np.repeat(np.repeat(s, bn, axis=0), bk, axis=1)[: w.shape[0], : w.shape[1]]
        return w * full


def _e4m3_rne(x):
    """float32 -> e4m3fn, round to nearest even, saturating at +-448 (torch ``clamp`` + cast)."""
    return np.clip(np.asarray(x, np.float32), -448.0, 448.0).astype(_E4M3)


def fp8_tensors(base, w):
    """``weight`` / ``weight_scale`` of one per-tensor FP8 layer (scale = amax / 448).

    Formula: ``s = max|w| / 448`` (float32), ``q = e4m3(clamp(w / s, -448, 448))``
    rounded to nearest even, as llm-compressor's FP8 static scheme (minmax
    observer, symmetric). An all-zero ``w`` gets ``s = 1``.
    """
    w = np.asarray(w, np.float32)
    amax = np.float32(np.max(np.abs(w))) if w.size else np.float32(0)
    s = np.float32(amax / np.float32(448.0)) if amax > 0 else np.float32(1.0)
    return {base + ".weight": _e4m3_rne(w / s), base + ".weight_scale": np.array(s, np.float32)}


def fp8_block_tensors(base, w, block=(128, 128)):
    """``weight`` / ``weight_scale_inv`` of one block FP8 layer (per tile ``s = amax / 448``).

    Formula: as DeepSeek-V3 ``inference/kernel.py`` ``act_quant`` applied per weight
    tile: ``s = max|tile| / 448``, ``q = e4m3(tile / s)`` (round to nearest even);
    an all-zero tile gets ``s = 1``.
    """
    w = np.asarray(w, np.float32)
    bn, bk = block
    n, k = w.shape
    tn, tk = -(-n // bn), -(-k // bk)
    s = np.ones((tn, tk), np.float32)
    for i in range(tn):
        for j in range(tk):
            a = np.float32(np.max(np.abs(w[i * bn:(i + 1) * bn, j * bk:(j + 1) * bk]), initial=0))
            if a > 0:
                s[i, j] = a / np.float32(448.0)
    full = np.repeat(np.repeat(s, bn, 0), bk, 1)[:n, :k]
    return {base + ".weight": _e4m3_rne(w / full), base + ".weight_scale_inv": s}
