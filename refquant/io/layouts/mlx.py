"""MLX affine-quantized checkpoints (mlx-lm ``convert -q``).

Per linear layer ``base`` (weight (N, K), ``b`` bits, group size ``gs``):
``base.weight`` uint32 (N, K * b / 32), ``base.scales`` and ``base.biases`` (N, K / gs)
in the model's float dtype; ``config.json`` says ``"quantization": {"group_size": gs,
"bits": b}`` (per-layer overrides keyed by the module path, as mlx-lm's mixed
recipes write them).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from ..._errors import RefquantError
from ._base import LayoutView, Scheme, pack_bitstream, unpack_bitstream

__all__ = ["MLXView", "MLX_BITS", "MLX_GROUPS", "mlx_tensors"]

MLX_BITS = (2, 3, 4, 5, 6, 8)
MLX_GROUPS = (32, 64, 128)
_FLOATS = (np.float16, np.float32, ml_dtypes.bfloat16)


def _qparams(view, qc, base):
    own = qc.get(base)
    if own is False:
        return None
    if isinstance(own, dict):
        qc = own
    bits, gs = qc.get("bits"), qc.get("group_size")
    mode = qc.get("mode", "affine")
    if mode != "affine":
        raise view.err(base + ".weight", f"MLX quantization mode {mode!r}; refquant reads 'affine'")
    if bits not in MLX_BITS:
        raise view.err(base + ".weight", f"MLX bits {bits!r}; expected one of {MLX_BITS}")
    if gs not in MLX_GROUPS:
        raise view.err(base + ".weight", f"MLX group_size {gs!r}; expected one of {MLX_GROUPS}")
    return bits, gs


class MLXView(LayoutView):
    """Logical weights of an MLX checkpoint.

    Notes
    -----
    **Formula** (``mx.dequantize``, affine mode)::

        q[n, k] = bits [k*b, (k+1)*b) of row n's little-endian uint32 words
        W[n, k] = T( T(scales[n, k // gs] * q[n, k]) + biases[n, k // gs] )

    in the scales' dtype ``T``: MLX's composed fallback multiplies then adds,
    rounding to ``T`` after each op (the product of a code of at most 8 bits and
    a float16 / bfloat16 scale is exact in float32; for float32 scales both
    steps round in float32). Returned as float32.

    **Reference**: ml-explore/mlx ``mlx/backend/cpu/quantized.cpp``
    (``extract_bits``: 3-bit codes as 8 in 3 bytes, 6-bit as 4 in 3 bytes,
    LSB-first; ``get_pack_factor``), ``python/mlx/nn/layers/quantized.py``
    (``QuantizedLinear``: ``weight``, ``scales``, ``biases``), mlx-lm
    ``utils.py`` (``"quantization"`` in ``config.json``).
    """

    name = "mlx"

    def __init__(self, ck, config, qc):
        super().__init__(ck, config)
        bases = [n[: -len(".scales")] for n in ck if n.endswith(".scales")]
        if not bases:
            raise RefquantError(f"{ck.path}: config names MLX quantization but no tensor ends in "
                                "'.scales'")
        for base in bases:
            p = _qparams(self, qc, base)
            if p is None:
                continue
            bits, gs = p
            w = self.need(base + ".weight", base + ".scales")
            b = self.need(base + ".biases", base + ".scales")
            s = base + ".scales"
            self.expect_dtype(w, (np.uint32,), "packed codes")
            dt = self.expect_dtype(s, _FLOATS, "scales")
            if self.ck.info(b).dtype != dt:
                raise self.err(b, f"dtype {self.ck.info(b).dtype.name}; expected the scales' {dt.name}")
            ws, ss = tuple(ck.info(w).shape), tuple(ck.info(s).shape)
            if len(ws) < 2 or len(ss) != len(ws):
                raise self.err(w, f"shape {ws} with scales {ss}; expected matching ranks >= 2")
            k = ws[-1] * 32 // bits
            if (ws[-1] * 32) % bits:
                raise self.err(w, f"{ws[-1]} words do not hold whole {bits}-bit codes")
            if k % gs:
                raise self.err(w, f"in_features {k} is not a multiple of group_size {gs}")
            want = (*ws[:-1], k // gs)
            self.expect_shape(s, want, f"one scale per {gs} of in_features {k} ({bits} bits)")
            self.expect_shape(b, want, "biases like scales")
            self.add(base + ".weight",
                     Scheme(format="mlx", bits=bits, group_size=gs, symmetric=False, act_order=False,
                            packing="uint32 little-endian, LSB-first bit stream per row",
                            strategy="group", shape=(*ws[:-1], k)),
                     {"weight": w, "scales": s, "biases": b})

    def _dequantize(self, name, e):
        ck, r, s = self.ck, e.roles, e.scheme
        k = s.shape[-1]
        q = unpack_bitstream(ck[r["weight"]], s.bits, k)
        sc, bi = ck[r["scales"]], ck[r["biases"]]
        T = sc.dtype
        sx = np.repeat(sc, s.group_size, axis=-1).astype(np.float64)
        bx = np.repeat(bi, s.group_size, axis=-1).astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):  # Inf and NaN propagate as in MLX
            prod = (sx * q).astype(T).astype(np.float64)
            return (prod + bx).astype(T).astype(np.float32)


def mlx_tensors(base, q, scales, biases, bits):
    """``weight`` / ``scales`` / ``biases`` of one MLX layer from codes ``q`` (N, K).

    Notes
    -----
    **Formula**: no arithmetic: codes packed LSB-first into each row's uint32 words.

    **Reference**: mlx ``mx.quantize``'s word layout (checked against it in
    tests/peers/test_layouts_mlx.py).
    """
    q = np.asarray(q)
    if bits not in MLX_BITS:
        raise RefquantError(f"bits={bits!r}; MLX stores {MLX_BITS}")
    if (q.shape[-1] * bits) % 32:
        raise RefquantError(f"weight {base!r}: in_features {q.shape[-1]} at {bits} bits do not fill "
                            "whole uint32 words")
    return {base + ".weight": pack_bitstream(q.astype(np.uint32), bits),
            base + ".scales": np.asarray(scales), base + ".biases": np.asarray(biases)}
