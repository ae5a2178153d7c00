"""NVIDIA ModelOpt's unified Hugging Face checkpoint, NVFP4 (``quant_method: modelopt``, ``quant_algo: NVFP4``).

Per module ``base`` (weight of shape (N, K)), as ``export_hf_checkpoint`` writes it and
vLLM's ``modelopt_fp4`` reads it:

===================  ==============  ========================================================
tensor               dtype           shape
===================  ==============  ========================================================
base.weight          uint8           (N, K/2), two e2m1 codes a byte, low nibble first
base.weight_scale    float8_e4m3fn   (N, K/16)
base.weight_scale_2  float32         () or (1,): amax / (6 * 448), multiplied on dequantization
base.input_scale     float32         () or (1,): the activations' (kept as a plain tensor)
===================  ==============  ========================================================

compressed-tensors 0.20's ``ModelOptNvfp4Converter`` turns this into
``nvfp4-pack-quantized`` by renaming ``weight`` to ``weight_packed`` and storing
``1 / weight_scale_2`` as ``weight_global_scale``.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from ..._errors import RefquantError
from ._base import LayoutView, Scheme

__all__ = ["ModelOptView", "modelopt_nvfp4_tensors", "modelopt_config", "modelopt_algo"]

_E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)


def modelopt_algo(qc) -> str:
    """``quant_algo`` of a ModelOpt quantization config (top level or under ``quantization``)."""
    q = qc.get("quantization") if isinstance(qc.get("quantization"), dict) else qc
    return str(q.get("quant_algo", "")).upper()


class ModelOptView(LayoutView):
    """Logical weights of a ModelOpt NVFP4 checkpoint.

    Notes
    -----
    **Formula** (ModelOpt 0.47 ``NVFP4QTensor.dequantize``)::

        W = fl32(P * fl32(float32(weight_scale) * weight_scale_2))     code 8 is +0.0

    (:func:`refquant.formats.nvfp4.dequantize_nvfp4` with ``convention="modelopt"``).

    **Reference**: NVIDIA ModelOpt 0.47.0 ``torch/quantization/qtensor/nvfp4_tensor.py``;
    ``torch/export/unified_export_hf.py`` (tensor names); compressed-tensors 0.20.0
    ``entrypoints/convert/converters/modelopt_nvfp4.py``.
    """

    name = "modelopt"

    def __init__(self, ck, config, qcfg):
        super().__init__(ck, config)
        algo = modelopt_algo(qcfg)
        if algo != "NVFP4":
            raise RefquantError(f"{ck.path}: ModelOpt quant_algo {algo!r}; refquant reads 'NVFP4' "
                                "(FP8, NVFP4_AWQ, W4A8 ... are not supported)")
        q = qcfg.get("quantization") if isinstance(qcfg.get("quantization"), dict) else qcfg
        gs = q.get("group_size", 16)
        if gs != 16:
            raise RefquantError(f"{ck.path}: ModelOpt NVFP4 group_size {gs!r}; NVFP4 blocks are 16")
        infos = ck.infos
        bases = sorted(n[: -len(".weight_scale_2")] for n in ck if n.endswith(".weight_scale_2"))
        if not bases:
            raise RefquantError(f"{ck.path}: config names ModelOpt NVFP4 but no tensor ends in "
                                "'.weight_scale_2'")
        for base in bases:
            w = self.need(base + ".weight", base + ".weight_scale_2")
            sc = self.need(base + ".weight_scale", w)
            s2 = base + ".weight_scale_2"
            self.expect_dtype(w, (np.uint8,), "packed e2m1 codes")
            self.expect_dtype(sc, (_E4M3,), "e4m3 block scales")
            self.expect_dtype(s2, (np.float32,), "the per-tensor scale")
            shp = tuple(infos[w].shape)
            if len(shp) != 2:
                raise self.err(w, f"shape {shp}; expected 2-D (out_features, in_features / 2)")
            n, k = shp[0], shp[1] * 2
            if k % 16:
                raise self.err(w, f"in_features {k} is not a multiple of the NVFP4 block of 16")
            self.expect_shape(sc, (n, k // 16), f"one scale per 16 inputs of weight {(n, k)}")
            if tuple(infos[s2].shape) not in ((), (1,)):
                raise self.err(s2, f"shape {tuple(infos[s2].shape)}; expected a scalar (one per tensor)")
            self.add(base + ".weight",
                     Scheme(format="modelopt-nvfp4", bits=4, group_size=16, symmetric=True,
                            act_order=False, packing="uint8, two e2m1 codes per byte, low nibble first",
                            strategy="tensor_group", shape=(n, k)),
                     {"weight": w, "scale": sc, "scale_2": s2})

    def _dequantize(self, name, e):
        from ...formats.nvfp4 import dequantize_nvfp4, unpack_nvfp4

        ck, r = self.ck, e.roles
        n, k = e.scheme.shape
        return dequantize_nvfp4(unpack_nvfp4(ck[r["weight"]], k), ck[r["scale"]].view(np.uint8),
                                np.float32(ck[r["scale_2"]].reshape(())), convention="modelopt")


def modelopt_nvfp4_tensors(base, codes, scales, scale_2):
    """Raw ModelOpt NVFP4 tensors of one module (``quantize_nvfp4(w, convention="modelopt")``'s output).

    Notes
    -----
    **Formula**: no arithmetic; ``weight`` = codes two per byte, low nibble first.

    **Reference**: ModelOpt 0.47.0 ``NVFP4QTensor.quantize`` (``packed_weight``).
    """
    from ...formats.nvfp4 import pack_nvfp4

    c = np.asarray(codes)
    s = np.asarray(scales)
    if c.dtype != np.uint8 or c.ndim != 2 or c.shape[1] % 16 or s.dtype != np.uint8 \
            or s.shape != (c.shape[0], c.shape[1] // 16):
        raise RefquantError(f"weight {base!r}: codes uint8 (N, K) with K a multiple of 16 and scales "
                            f"uint8 (N, K / 16), got {c.dtype} {c.shape} and {s.dtype} {s.shape}")
    return {base + ".weight": pack_nvfp4(c), base + ".weight_scale": s.view(_E4M3),
            base + ".weight_scale_2": np.asarray(scale_2, np.float32).reshape(())}


def modelopt_config(exclude=("lm_head",)):
    """``quantization_config`` of a ModelOpt NVFP4 export (as config.json carries it)."""
    return {"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16,
            "kv_cache_quant_algo": None, "exclude_modules": list(exclude)}
