"""bitsandbytes serialized checkpoints: 4-bit NF4 / FP4 (``Params4bit``) and LLM.int8 (``Int8Params``).

4-bit, per linear layer ``base`` (weight (N, K), ``n = N*K``, block ``B``), as
``QuantState.as_dict(packed=True)`` writes it beside the packed weight:

=============================================  =======  ================================
tensor                                         dtype    holds
=============================================  =======  ================================
base.weight                                    uint8    (ceil(n / 2), 1): two codes a byte,
                                                        first in the high nibble
base.weight.absmax                             float32  (ceil(n / B),); uint8 when nested
base.weight.quant_map                          float32  (16,) the NF4 / FP4 code book
base.weight.nested_absmax                      float32  (ceil(n_blocks / B2),) (nested)
base.weight.nested_quant_map                   float32  (256,) the dynamic map (nested)
base.weight.quant_state.bitsandbytes__<type>   uint8    JSON: quant_type, blocksize, dtype,
                                                        shape, nested_blocksize,
                                                        nested_dtype, nested_offset
=============================================  =======  ================================

LLM.int8: ``base.weight`` int8 (N, K), ``base.SCB`` float32 (N,), ``base.weight_format``
uint8 0 ("row", the only one bitsandbytes 0.45+ loads).
"""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np

from ..._errors import RefquantError
from ._base import LayoutView, Scheme

__all__ = ["BnbView", "bnb_4bit_tensors", "bnb_int8_tensors"]

_DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16),
           "bfloat16": np.dtype(ml_dtypes.bfloat16)}
_QS = "quant_state.bitsandbytes__"
_INV127 = np.float32(7.874015718698502e-3)


class BnbView(LayoutView):
    """Logical weights of a bitsandbytes checkpoint (``quant_method: bitsandbytes``).

    Notes
    -----
    **Formula** (bitsandbytes 0.50.2 ``functional.dequantize_4bit`` with
    ``backends/default/ops.py`` ``_dequantize_4bit_compute``)::

        absmax = dequantize_blockwise(absmax_u8, nested) + nested_offset   (nested, float32)
        W = dtype( quant_map[q] * absmax[i // B] )                         (float32 product)

    reshaped to ``shape`` and cast to the state's ``dtype`` (one rounding), returned
    as float32; the arithmetic is :func:`refquant.compat.bnb.dequantize_4bit`.
    LLM.int8 (``_ops.py`` ``int8_vectorwise_dequant``)::

        W = f32( f32(CB * SCB[n]) * f32(7.874015718698502e-3) )

    two float32 roundings (a multiply by the float32 reciprocal of 127, not a divide).

    **Reference**: bitsandbytes 0.50.2 ``functional.py`` (``QuantState.as_dict``,
    ``QuantState.from_dict``), ``utils.py`` (``pack_dict_to_tensor``: the JSON as
    uint8 bytes), ``nn/modules.py`` (``Linear8bitLt._save_to_state_dict``:
    ``SCB``, ``weight_format``).
    """

    name = "bitsandbytes"

    def __init__(self, ck, config, qcfg):
        super().__init__(ck, config)
        four = bool(qcfg.get("load_in_4bit")) or any(_QS in n for n in ck)
        eight = bool(qcfg.get("load_in_8bit")) or any(n.endswith(".SCB") for n in ck)
        if four:
            states = [n for n in ck if _QS in n]
            if not states:
                raise RefquantError(f"{ck.path}: config names bitsandbytes 4-bit but no tensor holds "
                                    f"'{_QS}<type>'")
            for st in states:
                self._add_4bit(st)
        if eight:
            scbs = [n for n in ck if n.endswith(".SCB")]
            if not scbs:
                raise RefquantError(f"{ck.path}: config names bitsandbytes 8-bit but no tensor ends "
                                    "in '.SCB'")
            for scb in scbs:
                self._add_int8(scb)
        if not four and not eight:
            raise RefquantError(f"{ck.path}: bitsandbytes config with neither load_in_4bit nor "
                                "load_in_8bit")

    def _add_4bit(self, st):
        ck = self.ck
        w, qtype = st.split("." + _QS)
        if qtype not in ("nf4", "fp4"):
            raise self.err(st, f"quant type {qtype!r}; expected nf4 or fp4")
        self.expect_dtype(st, (np.uint8,), "the packed JSON quant state")
        try:
            meta = json.loads(bytes(np.asarray(ck[st]).ravel()).decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise self.err(st, f"not the UTF-8 JSON of pack_dict_to_tensor: {e}") from None
        if not isinstance(meta, dict):
            raise self.err(st, "JSON is not an object")
        shape, bs, dt = meta.get("shape"), meta.get("blocksize"), meta.get("dtype")
        if (not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape)
                or not isinstance(bs, int) or bs <= 0 or dt not in _DTYPES
                or meta.get("quant_type") != qtype):
            raise self.err(st, f"quant state {meta!r}; expected quant_type {qtype!r}, shape as a list "
                               f"of ints, a positive blocksize and dtype one of {sorted(_DTYPES)}")
        n = int(np.prod(shape))
        self.need(w, st)
        self.expect_dtype(w, (np.uint8,), "packed 4-bit codes")
        if ck.info(w).numel != (n + 1) // 2:
            raise self.err(w, f"{ck.info(w).numel} bytes; shape {shape} needs {(n + 1) // 2}")
        am = self.need(w + ".absmax", w)
        qm = self.need(w + ".quant_map", w)
        self.expect_dtype(qm, (np.float32,), "the code book")
        self.expect_shape(qm, (16,), "16 code values")
        nb = -(-n // bs)
        nested = w + ".nested_absmax" in ck
        roles = {"weight": w, "absmax": am, "quant_map": qm, "state": st,
                 "nested_absmax": None, "nested_quant_map": None}
        if nested:
            self.expect_dtype(am, (np.uint8,), "nested (8-bit) absmax codes")
            nbs = meta.get("nested_blocksize")
            if not isinstance(nbs, int) or nbs <= 0 or meta.get("nested_dtype") != "float32" \
                    or not isinstance(meta.get("nested_offset"), int | float):
                raise self.err(st, f"quant state {meta!r}: nested_blocksize, nested_dtype 'float32' "
                                   "and nested_offset expected with nested_absmax")
            na, nq = w + ".nested_absmax", self.need(w + ".nested_quant_map", w)
            self.expect_dtype(na, (np.float32,), "nested absmax")
            self.expect_shape(na, (-(-nb // nbs),), f"{nb} absmax codes in blocks of {nbs}")
            self.expect_dtype(nq, (np.float32,), "the nested code book")
            self.expect_shape(nq, (256,), "the 256-value dynamic map")
            roles.update(nested_absmax=na, nested_quant_map=nq)
        else:
            self.expect_dtype(am, (np.float32,), "absmax")
        self.expect_shape(am, (nb,), f"{n} elements of shape {shape} in blocks of {bs}")
        self.meta = getattr(self, "meta", {})
        self.meta[w] = meta
        self.add(w, Scheme(format=f"bitsandbytes-{qtype}", bits=4, group_size=bs, symmetric=True,
                           act_order=False, packing="uint8, two codes a byte, first in the high nibble"
                           + (", nested absmax" if nested else ""), strategy="group",
                           shape=tuple(shape)), roles)

    def _add_int8(self, scb):
        ck = self.ck
        base = scb[: -len(".SCB")]
        w = self.need(base + ".weight", scb)
        self.expect_dtype(w, (np.int8,), "LLM.int8 codes")
        shape = tuple(ck.info(w).shape)
        if len(shape) != 2:
            raise self.err(w, f"shape {shape}; expected 2-D (out_features, in_features)")
        self.expect_dtype(scb, (np.float32,), "row scales")
        self.expect_shape(scb, (shape[0],), "one absmax per output row")
        fmt = base + ".weight_format"
        if fmt in ck and int(np.asarray(ck[fmt]).reshape(-1)[0]) != 0:
            raise self.err(fmt, f"weight_format {int(np.asarray(ck[fmt]).reshape(-1)[0])}; only 0 "
                                "('row') is loadable by bitsandbytes >= 0.45")
        self.add(w, Scheme(format="bitsandbytes-int8", bits=8, group_size=None, symmetric=True,
                           act_order=False, packing="int8 row-major", strategy="channel", shape=shape),
                 {"weight": w, "SCB": scb, "weight_format": fmt if fmt in ck else None})

    def _dequantize(self, name, e):
        from ...compat import bnb

        ck, r = self.ck, e.roles
        if e.scheme.format == "bitsandbytes-int8":
            a = ck[r["weight"]].astype(np.float32) * ck[r["SCB"]].reshape(-1, 1)
            return (a * _INV127).astype(np.float32)
        meta = self.meta[name]
        state = {"absmax": ck[r["absmax"]], "shape": tuple(meta["shape"]),
                 "dtype": _DTYPES[meta["dtype"]], "blocksize": meta["blocksize"],
                 "quant_type": meta["quant_type"], "code": ck[r["quant_map"]], "nested": False,
                 "offset": None, "state2": None}
        if r["nested_absmax"] is not None:
            state.update(nested=True, offset=np.float32(meta["nested_offset"]),
                         state2={"absmax": ck[r["nested_absmax"]], "code": ck[r["nested_quant_map"]],
                                 "blocksize": meta["nested_blocksize"], "dtype": np.dtype(np.float32),
                                 "nested": False})
        return bnb.dequantize_4bit(ck[r["weight"]], state).astype(np.float32)


# ---------------------------------------------------------------------------
# writers
# ---------------------------------------------------------------------------

def bnb_4bit_tensors(base, w, quant_type="nf4", blocksize=64, double_quant=False):
    """The tensors ``Params4bit`` serializes for weight ``w`` (float16 / bfloat16 / float32).

    Quantized by :func:`refquant.compat.bnb.quantize_4bit` (``backend="cpu"``: what
    bitsandbytes computes for a CPU tensor), statistics nested in blocks of 256 when
    ``double_quant``.
    """
    from ...compat import bnb

    w = np.asarray(w)
    if w.dtype.name not in _DTYPES:
        raise RefquantError(f"weight {base!r}: dtype {w.dtype}; expected one of {sorted(_DTYPES)}")
    packed, s = bnb.quantize_4bit(w, blocksize=blocksize, compress_statistics=double_quant,
                                  quant_type=quant_type)
    name = base + ".weight"
    meta = {"quant_type": quant_type, "blocksize": blocksize, "dtype": w.dtype.name,
            "shape": list(w.shape)}
    out = {name: packed, name + ".absmax": np.asarray(s["absmax"]),
           name + ".quant_map": np.asarray(s["code"], np.float32)}
    if double_quant:
        s2 = s["state2"]
        out[name + ".nested_absmax"] = np.asarray(s2["absmax"], np.float32)
        out[name + ".nested_quant_map"] = np.asarray(s2["code"], np.float32)
        meta.update(nested_blocksize=s2["blocksize"], nested_dtype="float32",
                    nested_offset=float(s["offset"]))
    out[name + "." + _QS + quant_type] = np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)
    return out


def bnb_int8_tensors(base, w):
    """``weight`` (int8), ``SCB``, ``weight_format`` of ``Linear8bitLt`` for weight ``w`` (N, K).

    Formula (bitsandbytes ``int8_vectorwise_quant``, no outlier threshold):
    ``SCB = max |w|`` per row (float32), ``CB = rint(w * f32(f32(1 / SCB) * 127))`` (half to
    even, as ``torch.round``), a zero row giving zero codes. The factor rounds twice: torch
    evaluates ``127.0 / row_stats`` as ``row_stats.reciprocal() * 127.0``
    (``Tensor.__rtruediv__``), which moves about 0.5 % of codes by one against a plain
    float32 divide.
    """
    w = np.asarray(w).astype(np.float32)
    scb = np.max(np.abs(w), axis=1).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = (np.float32(1) / scb) * np.float32(127)
        cb = np.rint(w * factor[:, None])
    cb = np.nan_to_num(cb, nan=0.0).clip(-127, 127).astype(np.int8)
    return {base + ".weight": cb, base + ".SCB": scb, base + ".weight_format": np.array(0, np.uint8)}
