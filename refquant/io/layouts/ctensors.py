"""compressed-tensors checkpoints: ``pack-quantized``, ``int-quantized``, ``float-quantized``,
``naive-quantized``, ``nvfp4-pack-quantized``, ``mxfp4-pack-quantized``,
``mxfp6-pack-quantized``, ``mxfp8-quantized``.

Per module ``base`` (weight of shape (N, K), ``b`` bits, G groups):

=====================  ===========================  ===========================================
tensor                 dtype                        shape
=====================  ===========================  ===========================================
base.weight_packed     int32                        (N, ceil(K * b / 32))  (pack-quantized)
base.weight            int8 / float8_e4m3fn         (N, K)                 (the other formats)
base.weight_scale      float32 / float16 / bf16     (N, G) group, (N, 1) channel, (1,) tensor,
                                                    (ceil(N/bn), ceil(K/bk)) block
base.weight_zero_point int32 packed along dim 0     (ceil(N * b / 32), G)  (pack-quantized, asym.)
                       or int8                      like weight_scale      (the other formats)
base.weight_shape      int64 / int32                (2,)                   (pack-quantized)
base.weight_g_idx      int32                        (K,)                   (act-order, before 0.20)
=====================  ===========================  ===========================================

The float formats of compressed-tensors 0.20 (``compressors/nvfp4``, ``mxfp4``,
``mxfp6``, ``mxfp8``), groups along the input dimension:

======================  ======================================  ===========================  =====
format                  weight                                  weight_scale                 group
======================  ======================================  ===========================  =====
nvfp4-pack-quantized    weight_packed uint8 (N, K/2), e2m1,     float8_e4m3fn (N, K/16);     16
                        low nibble first                        weight_global_scale f32 (1,)
mxfp4-pack-quantized    weight_packed uint8 (N, K/2), e2m1      uint8 E8M0 (N, K/32)         32
mxfp6-pack-quantized    weight_packed uint8 (N, 3K/4), e2m3,    uint8 E8M0 (N, K/32)         32
                        4 codes in 3 bytes little-endian
mxfp8-quantized         weight float8_e4m3fn (N, K)             uint8 E8M0 (N, K/32)         32
======================  ======================================  ===========================  =====
"""

from __future__ import annotations

import re

import ml_dtypes
import numpy as np

from ..._errors import RefquantError
from ...formats.floats import decode
from ...formats.nvfp4 import pack_nvfp4, unpack_nvfp4
from ._base import LayoutView, Scheme, pack_bitstream, round_to, unpack_bitstream

__all__ = ["CompressedTensorsView", "CT_FORMATS", "CT_FLOAT_FORMATS", "ct_tensors", "ct_fp_tensors",
           "ct_fp_quantize",
           "ct_config", "pack_fp6", "unpack_fp6"]

# format -> (element bits, group size, element format, strategy, scale dtype name)
CT_FLOAT_FORMATS = {
    "nvfp4-pack-quantized": (4, 16, "float4_e2m1fn", "tensor_group", "float8_e4m3fn"),
    "mxfp4-pack-quantized": (4, 32, "float4_e2m1fn", "group", "uint8"),
    "mxfp6-pack-quantized": (6, 32, "float6_e2m3fn", "group", "uint8"),
    "mxfp8-quantized": (8, 32, "float8_e4m3fn", "group", "uint8"),
}
CT_FORMATS = ("pack-quantized", "int-quantized", "float-quantized", "naive-quantized",
              *CT_FLOAT_FORMATS)
_SCALE = (np.float32, np.float16, ml_dtypes.bfloat16)
_E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)


def _weight_args(view, base, qcfg, fmt_default):
    groups = qcfg.get("config_groups") or {}
    if not isinstance(groups, dict):
        raise RefquantError(f"{view.ck.path}: config_groups {groups!r}; expected a mapping")
    by_re, by_class = [], []
    for gname, g in groups.items():
        if not isinstance(g, dict) or not isinstance(g.get("weights"), dict):
            continue
        for t in g.get("targets") or []:
            if isinstance(t, str) and t.startswith("re:"):
                if re.match(t[3:], base):
                    by_re.append((gname, g))
                    break
            elif isinstance(t, str):
                by_class.append((gname, g))
                break
    pick = by_re or by_class
    if not pick:
        raise view.err(base, f"no config group of {sorted(groups)} targets this module")
    args = [p[1]["weights"] for p in pick]
    if any(a != args[0] for a in args[1:]):
        raise view.err(base, f"config groups {[p[0] for p in pick]} target this module with "
                             "different weight args; refquant cannot tell which applies")
    return args[0], pick[0][1].get("format") or fmt_default


class CompressedTensorsView(LayoutView):
    """Logical weights of a compressed-tensors checkpoint.

    Notes
    -----
    **Formula** (compressed-tensors 0.20 ``PackedQuantizationCompressor.decompress`` /
    ``NaiveQuantizationCompressor.decompress`` -> ``quantization.lifecycle.forward
    ._dequantize``), in the scale's dtype ``T``::

        q = unpack_from_int32(weight_packed, b, weight_shape) = code - 2**(b-1)
        z = unpack_from_int32(weight_zero_point, b, (N, G), packed_dim=0)   (asym.)
        W[n, k] = T( (T(q[n, k]) - T(z[n, g(k)])) * scale[n, g(k)] )

    with ``g(k) = k // group_size`` (``_process_group``; a width that the group
    size does not divide is refused as it raises there), or ``weight_g_idx[k]``
    where a checkpoint from before 0.20 stores one. Differences and products are
    exact, so each value is rounded once, to ``T``; returned as float32.
    ``pack_to_int32`` packs densely: code ``i`` of a row at bits ``[i*b, (i+1)*b)``
    of the row's little-endian words, codes offset by ``2**(b-1)``.

    **Reference**: compressed-tensors 0.20.0 ``compressors/pack_quantized/
    helpers.py`` (``pack_to_int32``, ``unpack_from_int32``), ``compressors/
    pack_quantized/base.py``, ``compressors/naive_quantized/base.py``,
    ``quantization/lifecycle/forward_helpers.py`` (``_dequantize``,
    ``_process_group``, ``_process_block``).
    """

    name = "compressed-tensors"

    def __init__(self, ck, config, qcfg):
        super().__init__(ck, config)
        fmt_default = qcfg.get("format", "dense")
        bases = sorted({n.rsplit(".", 1)[0] for n in ck
                        if n.endswith((".weight_packed", ".weight_scale"))})
        if not bases:
            raise RefquantError(f"{ck.path}: config names quant_method 'compressed-tensors' but no "
                                "tensor ends in '.weight_packed' or '.weight_scale'")
        for base in bases:
            args, fmt = _weight_args(self, base, qcfg, fmt_default)
            if fmt not in CT_FORMATS:
                raise self.err(base + ".weight", f"compressed-tensors format {fmt!r}; refquant reads "
                                                 f"{CT_FORMATS}")
            self._add_module(base, args, fmt)

    def _add_module(self, base, a, fmt):
        if fmt in CT_FLOAT_FORMATS:
            return self._add_float_module(base, a, fmt)
        ck = self.ck
        bits, typ = a.get("num_bits", 8), a.get("type", "int")
        sym, strat = bool(a.get("symmetric", True)), a.get("strategy")
        gs = a.get("group_size")
        if typ not in ("int", "float"):
            raise self.err(base + ".weight", f"weights type {typ!r}; expected 'int' or 'float'")
        if fmt == "pack-quantized":
            if typ != "int" or not (isinstance(bits, int) and 1 <= bits <= 8):
                raise self.err(base + ".weight_packed", f"pack-quantized with {typ} num_bits {bits!r}; "
                                                        "it packs int codes of 1 to 8 bits")
            wp = self.need(base + ".weight_packed", base + ".weight")
            shp = self.need(base + ".weight_shape", base + ".weight")
            self.expect_dtype(wp, (np.int32,), "packed codes")
            self.expect_dtype(shp, (np.int64, np.int32), "weight_shape")
            self.expect_shape(shp, (2,), "(out_features, in_features)")
            n, k = (int(v) for v in ck[shp])
            self.expect_shape(wp, (n, -(-k * bits // 32)), f"weight_shape {(n, k)} at {bits} bits "
                                                            "packed densely in int32")
            wname = wp
        else:
            wname = self.need(base + ".weight", base + ".weight_scale")
            if typ == "int":
                if bits != 8:
                    raise self.err(wname, f"num_bits {bits!r} for {fmt}; int weights here are int8")
                self.expect_dtype(wname, (np.int8,), "int codes")
            else:
                if bits != 8:
                    raise self.err(wname, f"num_bits {bits!r} for {fmt}; float weights here are fp8")
                self.expect_dtype(wname, (_E4M3,), "float codes")
            shape = tuple(ck.info(wname).shape)
            if len(shape) != 2:
                raise self.err(wname, f"shape {shape}; expected 2-D (out_features, in_features)")
            n, k = shape
        sc = self.need(base + ".weight_scale", base + ".weight")
        self.expect_dtype(sc, _SCALE, "scales")
        block = None
        if strat == "group":
            if isinstance(gs, bool) or not isinstance(gs, int) or gs <= 0 or k % gs:
                raise self.err(sc, f"group_size {gs!r} does not divide in_features {k}")
            want = (n, k // gs)
        elif strat == "channel":
            want = (n, 1)
        elif strat == "tensor":
            want = (1,)
        elif strat == "block":
            bs = a.get("block_structure")
            if not (isinstance(bs, list) and len(bs) == 2 and all(isinstance(v, int) and v > 0 for v in bs)):
                raise self.err(sc, f"block_structure {bs!r}; expected [rows, cols]")
            block = tuple(bs)
            want = (-(-n // bs[0]), -(-k // bs[1]))
        else:
            raise self.err(sc, f"strategy {strat!r}; refquant reads group, channel, tensor, block")
        ss = tuple(ck.info(sc).shape)
        if ss != want and not (strat == "tensor" and ss == ()):
            raise self.err(sc, f"shape {ss}; expected {want} for strategy {strat!r} of weight {(n, k)}")
        zp = base + ".weight_zero_point" if base + ".weight_zero_point" in ck else None
        if not sym:
            if zp is None:
                raise self.err(base + ".weight", "asymmetric scheme but no weight_zero_point")
            if fmt == "pack-quantized" and strat in ("group", "channel"):
                self.expect_dtype(zp, (np.int32,), "packed zero points")
                self.expect_shape(zp, (-(-n * bits // 32), want[1]),
                                  f"{n} {bits}-bit zero points packed along dim 0, {want[1]} columns")
            else:
                self.expect_dtype(zp, (np.int8, np.int32, *_SCALE), "zero points")
                zs = tuple(ck.info(zp).shape)
                if zs != ss:
                    raise self.err(zp, f"shape {zs}; expected the scale's {ss}")
        gi = base + ".weight_g_idx" if base + ".weight_g_idx" in ck else None
        if gi is not None:
            self.expect_dtype(gi, (np.int32, np.int64), "g_idx")
            self.expect_shape(gi, (k,), "one group per input column")
            if strat != "group":
                raise self.err(gi, f"g_idx with strategy {strat!r}; it only applies to 'group'")
        self.add(base + ".weight",
                 Scheme(format=fmt, bits=bits, group_size=gs if strat == "group" else None,
                        symmetric=sym, act_order=gi is not None,
                        packing="int32 dense LSB-first, offset 2**(bits-1)" if fmt == "pack-quantized"
                        else np.dtype(ck.info(wname).dtype).name, strategy=strat, shape=(n, k),
                        block=block),
                 {"weight": wname, "scale": sc, "zero_point": zp, "g_idx": gi,
                  "shape": base + ".weight_shape" if fmt == "pack-quantized" else None})

    def _add_float_module(self, base, a, fmt):
        ck = self.ck
        bits, gs, elem, strat, sdt = CT_FLOAT_FORMATS[fmt]
        if a.get("type", "int") != "float" or a.get("num_bits") != bits or a.get("group_size") != gs:
            raise self.err(base + ".weight", f"{fmt} with weights type {a.get('type')!r}, num_bits "
                                             f"{a.get('num_bits')!r}, group_size {a.get('group_size')!r}; "
                                             f"it stores float {bits}-bit elements in groups of {gs}")
        if not a.get("symmetric", True):
            raise self.err(base + ".weight", f"{fmt} with symmetric false; compressed-tensors' float "
                                             "formats have no zero point")
        if fmt == "mxfp8-quantized":
            wname = self.need(base + ".weight", base + ".weight_scale")
            self.expect_dtype(wname, (_E4M3,), "float8 e4m3 elements")
            shape = tuple(ck.info(wname).shape)
            if len(shape) != 2:
                raise self.err(wname, f"shape {shape}; expected 2-D (out_features, in_features)")
            n, k = shape
            packing = "float8_e4m3fn"
        else:
            wname = self.need(base + ".weight_packed", base + ".weight")
            self.expect_dtype(wname, (np.uint8,), "packed float codes")
            shape = tuple(ck.info(wname).shape)
            per = 2 if bits == 4 else 4 / 3
            if len(shape) != 2 or (bits == 6 and shape[1] % 3):
                raise self.err(wname, f"shape {shape}; expected 2-D (out_features, in_features * {bits} "
                                      "/ 8)" + (" with a multiple of 3 bytes per row" if bits == 6 else ""))
            n, k = shape[0], int(shape[1] * per)
            packing = ("uint8, two e2m1 codes per byte, low nibble first" if bits == 4 else
                       "uint8, four e2m3 codes per 3 bytes, little-endian, sign in bit 5")
        if k % gs:
            raise self.err(wname, f"in_features {k} is not a multiple of the group size {gs}")
        sc = self.need(base + ".weight_scale", wname)
        if sdt == "uint8":
            self.expect_dtype(sc, (np.uint8,), "E8M0 scale exponents")
        else:
            self.expect_dtype(sc, (_E4M3, *_SCALE), "block scales")
        self.expect_shape(sc, (n, k // gs), f"one scale per {gs} inputs of weight {(n, k)}")
        gsn = None
        if fmt == "nvfp4-pack-quantized":
            gsn = self.need(base + ".weight_global_scale", wname)
            self.expect_dtype(gsn, _SCALE, "the global scale")
            if tuple(ck.info(gsn).shape) not in ((1,), ()):
                raise self.err(gsn, f"shape {tuple(ck.info(gsn).shape)}; expected (1,), one per tensor")
        self.add(base + ".weight",
                 Scheme(format=fmt, bits=bits, group_size=gs, symmetric=True, act_order=False,
                        packing=packing, strategy=strat, shape=(n, k)),
                 {"weight": wname, "scale": sc, "global_scale": gsn, "zero_point": None, "g_idx": None,
                  "shape": None})

    def _dequantize_float(self, e):
        """compressed-tensors 0.20's float decompressors, which all return bfloat16.

        nvfp4: ``W = bf16(fl32(P * fl32(bf16(s) / g)))`` (``_dequantize`` with the global
        scale; a bfloat16 global scale divides in bfloat16); mx: ``W = bf16(P * 2**(e - 127))``
        with the scale made in bfloat16 (``decompress_mx_scale``: exponent 255 is 2**128 =
        Inf, so a zero element of such a group is NaN).
        """
        ck, s, r = self.ck, e.scheme, e.roles
        n, k = s.shape
        bits, gs, elem, _, _ = CT_FLOAT_FORMATS[s.format]
        w = ck[r["weight"]]
        if s.format == "mxfp8-quantized":
            codes = w.view(np.uint8)
        elif bits == 4:
            codes = unpack_nvfp4(w, k)
        else:
            codes = unpack_fp6(w, k)
        p = decode(codes, elem).astype(np.float64).reshape(n, k // gs, gs)
        bf = np.dtype(ml_dtypes.bfloat16)
        raw = ck[r["scale"]]
        if s.format == "nvfp4-pack-quantized":
            sc = raw.astype(np.float64).astype(bf).astype(np.float64)  # scale.to(bfloat16)
            g = ck[r["global_scale"]].reshape(())
            with np.errstate(all="ignore"):
                if g.dtype == bf:  # bfloat16 / bfloat16: a float32 quotient rounded to bfloat16
                    eff, edt = round_to(round_to(sc / g.astype(np.float64), np.float32), bf), bf
                else:  # bfloat16 / float32 or float16 promotes to float32
                    eff, edt = round_to(sc / np.float64(g.astype(np.float32)), np.float32), np.float32
                prod = p * eff.astype(np.float64)[..., None]
        else:
            with np.errstate(over="ignore"):
                sc = np.ldexp(1.0, raw.astype(np.int64) - 127).astype(np.float32).astype(bf)
            with np.errstate(invalid="ignore"):
                prod = p * sc.astype(np.float64)[..., None]
            edt = np.float32  # bfloat16 x bfloat16: the exact product rounded through float32
        out = round_to(round_to(prod, edt).astype(np.float64), bf) if edt is not bf else round_to(prod, bf)
        return out.reshape(n, k).astype(np.float32)

    def _dequantize(self, name, e):
        if e.scheme.format in CT_FLOAT_FORMATS:
            return self._dequantize_float(e)
        ck, s, r = self.ck, e.scheme, e.roles
        n, k = s.shape
        scale = ck[r["scale"]]
        T = scale.dtype
        if s.format == "pack-quantized":
            off = 1 << (s.bits - 1)
            q = unpack_bitstream(ck[r["weight"]], s.bits, k).astype(np.int64) - off
        else:
            q = ck[r["weight"]].astype(np.float64)
        z = None
        if not s.symmetric:
            zr = ck[r["zero_point"]]
            if s.format == "pack-quantized" and s.strategy in ("group", "channel"):
                z = unpack_bitstream(zr.T, s.bits, n).T.astype(np.int64) - (1 << (s.bits - 1))
            else:
                z = zr.astype(np.float64)
        if s.strategy == "block":
            bn, bk = s.block
            exp = lambda a: np.repeat(np.repeat(a, bn, 0), bk, 1)[:n, :k]  # noqa: E731
        elif s.strategy == "group":
            if r["g_idx"] is not None:
                cols = ck[r["g_idx"]].astype(np.int64)
                G = scale.shape[1]
                bad = np.flatnonzero((cols < 0) | (cols >= G))
                if bad.size:
                    raise self.err(r["g_idx"], f"g_idx[{bad[0]}] = {cols[bad[0]]}; expected a group "
                                               f"in [0, {G})")
            else:
                cols = np.arange(k) // s.group_size
            exp = lambda a: a[:, cols]  # noqa: E731
        else:
            exp = lambda a: np.broadcast_to(np.asarray(a).reshape(-1, 1) if np.ndim(a) else a,  # noqa: E731
                                            (n, k))
        d = q.astype(np.float64)
        if z is not None:
            d = d - exp(z).astype(np.float64)
        return round_to(d * exp(scale).astype(np.float64), T).astype(np.float32)


# ---------------------------------------------------------------------------
# writers
# ---------------------------------------------------------------------------

def ct_tensors(base, q, scale, fmt, bits, zero=None, strategy="group"):
    """Raw tensors of one compressed-tensors module.

    ``q`` holds the signed codes (int, in ``[-2**(b-1), 2**(b-1))``) or fp8 values
    (float-quantized), shape (N, K); ``scale`` / ``zero`` in the strategy's shape.

    Notes
    -----
    **Formula**: no arithmetic: ``weight_packed = pack_to_int32(q)`` (codes offset by
    ``2**(b-1)``, dense), zero points packed along dim 0 for group / channel.

    **Reference**: compressed-tensors 0.20.0 ``PackedQuantizationCompressor.compress``
    (bit for bit in tests/peers/test_layouts_compressed_tensors.py).
    """
    out = {}
    q = np.asarray(q)
    if fmt == "pack-quantized":
        off = 1 << (bits - 1)
        if q.min(initial=0) < -off or q.max(initial=0) >= off:
            raise RefquantError(f"weight {base!r}: codes outside [{-off}, {off}) for {bits} bits")
        out[base + ".weight_packed"] = pack_bitstream((q.astype(np.int64) + off).astype(np.uint32),
                                                      bits).view(np.int32)
        out[base + ".weight_shape"] = np.array(q.shape, np.int64)
        if zero is not None:
            z = np.asarray(zero)
            if strategy in ("group", "channel"):
                out[base + ".weight_zero_point"] = np.ascontiguousarray(pack_bitstream(
                    (z.T.astype(np.int64) + off).astype(np.uint32), bits).view(np.int32).T)
            else:
                out[base + ".weight_zero_point"] = z.astype(np.int8)
    else:
        out[base + ".weight"] = q
        if zero is not None:
            out[base + ".weight_zero_point"] = np.asarray(zero).astype(np.int8)
    out[base + ".weight_scale"] = np.asarray(scale)
    return out


def pack_fp6(codes) -> np.ndarray:
    """Four 6-bit codes per 3 bytes: ``word = c0 | c1 << 6 | c2 << 12 | c3 << 18``, little-endian.

    Reference
    ---------
    compressed-tensors 0.20.0 ``compressors/mxfp6/helpers.py`` ``pack_fp6_to_uint8``.
    """
    c = np.asarray(codes)
    if c.dtype != np.uint8 or c.ndim != 2 or c.shape[1] % 4:
        raise RefquantError(f"fp6 codes must be uint8 (N, K) with K a multiple of 4, got {c.dtype} {c.shape}")
    if c.size and int(c.max()) > 63:
        raise RefquantError(f"fp6 codes: {int(c.max())} does not fit in 6 bits")
    q = c.astype(np.uint32).reshape(c.shape[0], -1, 4)
    word = q[..., 0] | q[..., 1] << 6 | q[..., 2] << 12 | q[..., 3] << 18
    return np.stack([word, word >> 8, word >> 16], axis=-1).astype(np.uint8).reshape(c.shape[0], -1)


def unpack_fp6(packed, count) -> np.ndarray:
    """Inverse of :func:`pack_fp6` (``unpack_fp6_from_uint8``): (N, 3K/4) bytes -> (N, K) codes."""
    b = np.asarray(packed)
    if b.dtype != np.uint8 or b.ndim != 2 or b.shape[1] % 3 or count != b.shape[1] // 3 * 4:
        raise RefquantError(f"packed fp6 of {b.dtype} {b.shape} does not hold {count} codes per row")
    w = b.astype(np.uint32).reshape(b.shape[0], -1, 3)
    word = w[..., 0] | w[..., 1] << 8 | w[..., 2] << 16
    return np.stack([(word >> sh) & 0x3F for sh in (0, 6, 12, 18)], axis=-1).astype(
        np.uint8).reshape(b.shape[0], count)


def ct_fp_tensors(base, codes, scales, fmt, global_scale=None):
    """Raw tensors of one module in a compressed-tensors float format.

    Parameters
    ----------
    base : str
        The module's name (``model.layers.0.mlp.up_proj``).
    codes : uint8 array (N, K)
        Element codes: e2m1 (nvfp4, mxfp4; :func:`refquant.formats.nvfp4.quantize_nvfp4`,
        :func:`refquant.formats.mx.quantize_mx`), e2m3 (mxfp6), e4m3 bytes (mxfp8).
    scales : uint8 array (N, K / group)
        e4m3 codes (nvfp4) or E8M0 exponents (mx).
    fmt : str
        One of :data:`CT_FLOAT_FORMATS`.
    global_scale : float
        nvfp4 only: compressed-tensors' ``weight_global_scale`` (448*6 / amax).

    Notes
    -----
    **Formula**: no arithmetic; packing as ``pack_fp4_to_uint8`` / ``pack_fp6_to_uint8``.

    **Reference**: compressed-tensors 0.20.0 ``NVFP4PackedCompressor``,
    ``MXFP4PackedCompressor``, ``MXFP6PackedCompressor``, ``MXFP8QuantizationCompressor``
    ``compress`` (bit for bit in tests/peers/test_layouts_ct_float.py).
    """
    if fmt not in CT_FLOAT_FORMATS:
        raise RefquantError(f"fmt={fmt!r}; expected one of {tuple(CT_FLOAT_FORMATS)}")
    bits, gs, _, _, sdt = CT_FLOAT_FORMATS[fmt]
    c = np.asarray(codes)
    sc = np.asarray(scales)
    if c.dtype != np.uint8 or c.ndim != 2 or c.shape[1] % gs:
        raise RefquantError(f"weight {base!r}: codes must be uint8 (N, K) with K a multiple of {gs}, "
                            f"got {c.dtype} {c.shape}")
    if sc.dtype != np.uint8 or sc.shape != (c.shape[0], c.shape[1] // gs):
        raise RefquantError(f"weight {base!r}: scales must be uint8 codes of shape "
                            f"{(c.shape[0], c.shape[1] // gs)}, got {sc.dtype} {sc.shape}")
    if bits < 8 and c.size and int(c.max()) >= 1 << bits:
        raise RefquantError(f"weight {base!r}: code {int(c.max())} does not fit in {bits} bits")
    out = {}
    if fmt == "mxfp8-quantized":
        out[base + ".weight"] = c.view(_E4M3)
    elif bits == 4:
        out[base + ".weight_packed"] = pack_nvfp4(c)
    else:
        out[base + ".weight_packed"] = pack_fp6(c)
    out[base + ".weight_scale"] = sc.view(_E4M3) if sdt == "float8_e4m3fn" else sc
    if fmt == "nvfp4-pack-quantized":
        if global_scale is None:
            raise RefquantError(f"weight {base!r}: nvfp4-pack-quantized needs global_scale")
        out[base + ".weight_global_scale"] = np.asarray(global_scale, np.float32).reshape(1)
    elif global_scale is not None:
        raise RefquantError(f"weight {base!r}: {fmt} has no global scale")
    return out


_MX_OFFSET = {4: 2, 6: 2, 8: 8}  # floor(log2(element max)): compressed-tensors _MX_ELEM_OFFSET


def ct_fp_quantize(base, w, fmt):
    """Quantize a float weight as llm-compressor + compressed-tensors 0.20 do, into ``fmt``'s tensors.

    Parameters
    ----------
    base : str
        The module's name.
    w : array_like (N, K)
        float32 or bfloat16, finite; K a multiple of the group size.
    fmt : str
        One of :data:`CT_FLOAT_FORMATS`.

    Returns
    -------
    dict of str to numpy.ndarray
        The raw tensors :func:`ct_fp_tensors` writes.

    Notes
    -----
    **Formula** (nvfp4: :func:`refquant.formats.nvfp4.quantize_nvfp4`). MX, per group of 32
    with ``a`` its amax, all in the weight's dtype ``T`` (float32 or bfloat16)::

        p = round_to_power_2(a)      bits: (bits(a) + 2**(m_T - m_e - 1)) & sign_exponent_mask
                                     (m_e = 1, e2m3's 3 for mxfp6): a rounds up to the next
                                     power of two when its mantissa is >= 1.75 (1.875 for fp6)
        e = clamp(127 + floor(log2 p) - offset, 0, 255)        offset 2 (fp4, fp6), 8 (fp8)
        s = T(2 ** (e - 127))
        P = cast(clamp(T(fl32(x / s)), -max, max))             fp4: cast_to_fp4 (ties to even,
                                     -0.0 to code 0); fp6: cast_to_fp6 (ties to even, sign
                                     kept); fp8: to(float8_e4m3fn)

    An amax of 0 gives e = 0; one whose power of two is 2**128 or more (e = 255, a scale
    of Inf) is refused, as compressed-tensors' ``compress_mx_scale`` turns it into an
    undefined int cast.

    **Reference**: compressed-tensors 0.20.0 ``quantization/utils/mxfp_utils.py``
    (``round_to_power_2``, ``generate_mx_scales``, ``maybe_convert_from_mx_exp``),
    ``quantization/utils/helpers.py`` (``calculate_qparams``), ``quantization/utils/
    fp6_utils.py`` (``cast_to_fp6``), ``compressors/mx_utils.py`` (``compress_mx_scale``),
    the MXFP4 / MXFP6 / MXFP8 compressors' ``compress`` (bit for bit in
    tests/peers/test_layouts_ct_float.py).
    """
    from ...formats.floats import encode
    from ...formats.nvfp4 import e2m1_codes_ct, quantize_nvfp4

    if fmt not in CT_FLOAT_FORMATS:
        raise RefquantError(f"fmt={fmt!r}; expected one of {tuple(CT_FLOAT_FORMATS)}")
    if fmt == "nvfp4-pack-quantized":
        c, sc, g = quantize_nvfp4(w)
        return ct_fp_tensors(base, c, sc, fmt, g)
    bits, gs, _, _, _ = CT_FLOAT_FORMATS[fmt]
    a = np.asarray(w)
    bf = np.dtype(ml_dtypes.bfloat16)
    if a.ndim != 2 or a.dtype not in (np.dtype(np.float32), bf):
        raise RefquantError(f"weight {base!r}: a 2-D float32 or bfloat16 weight, got {a.dtype} {a.shape} "
                            "(float16: compressed-tensors' 2**(e - 127) underflows to 0 there and its "
                            "eps turns the scale into 1; cast to float32 first)")
    n, k = a.shape
    if k % gs:
        raise RefquantError(f"weight {base!r}: in_features {k} is not a multiple of {fmt}'s group {gs}")
    x32 = a.astype(np.float32)
    if not np.isfinite(x32).all():
        raise RefquantError(f"weight {base!r}: NaN or Inf; {fmt} needs finite weights")
    amax = np.abs(a).reshape(n, k // gs, gs).max(axis=-1)
    el_m = 3 if bits == 6 else 1
    if a.dtype == np.float32:
        ib = amax.view(np.uint32).astype(np.int64)
        p = ((ib + (1 << (23 - el_m - 1))) & (0x1FF << 23)).astype(np.uint32).view(np.float32)
    else:  # bfloat16: 7 mantissa bits, 8 exponent bits
        ib = amax.view(np.uint16).astype(np.int64)
        p = ((ib + (1 << (7 - el_m - 1))) & (0x1FF << 7)).astype(np.uint16).view(a.dtype)
    p = p.astype(np.float64)
    with np.errstate(divide="ignore"):
        e = np.where(p == 0, 0.0, np.clip(127 + np.floor(np.log2(np.where(p == 0, 1, p))) - _MX_OFFSET[bits],
                                          0, 255))
    if (e >= 255).any() or np.isinf(p).any():
        r = np.argwhere((e >= 255) | np.isinf(p))[0]
        raise RefquantError(f"weight {base!r}: group {tuple(int(v) for v in r)} has amax "
                            f"{float(amax[tuple(r)])!r}, whose E8M0 scale would be 2**128 (Inf)")
    e = e.astype(np.int64)
    with np.errstate(over="ignore"):
        s = np.ldexp(1.0, e - 127).astype(np.float32).astype(a.dtype).astype(np.float32)
    v = (x32.reshape(n, k // gs, gs) / s[..., None]).astype(np.float32)
    if a.dtype != np.float32:
        v = v.astype(a.dtype).astype(np.float32)
    emax = {4: 6.0, 6: 7.5, 8: 448.0}[bits]
    v = np.clip(v, -emax, emax).reshape(n, k)
    if bits == 4:
        codes = e2m1_codes_ct(v)
    elif bits == 6:
        codes = encode(np.abs(v).astype(np.float64), "float6_e2m3fn") | (np.signbit(v).astype(np.uint8) << 5)
    else:
        codes = encode(v.astype(np.float64), "float8_e4m3fn")
    return ct_fp_tensors(base, codes.astype(np.uint8), e.astype(np.uint8), fmt)


def ct_config(fmt, bits, typ, symmetric, strategy, group_size=None, block=None, ignore=("lm_head",)):
    """``quantization_config`` of a compressed-tensors checkpoint with one config group."""
    if fmt in CT_FLOAT_FORMATS:  # the presets NVFP4A16, MXFP4A16, MXFP6A16, MXFP8A16
        b, gs, _, strat, sdt = CT_FLOAT_FORMATS[fmt]
        w = {"num_bits": b, "type": "float", "symmetric": True, "group_size": gs, "strategy": strat,
             "dynamic": False, "scale_dtype": f"torch.{sdt}"}
        return {"quant_method": "compressed-tensors", "format": fmt, "quantization_status": "compressed",
                "config_groups": {"group_0": {"targets": ["Linear"], "weights": w, "input_activations": None,
                                              "output_activations": None, "format": fmt}},
                "ignore": list(ignore), "kv_cache_scheme": None, "sparsity_config": {}}
    w = {"num_bits": bits, "type": typ, "symmetric": symmetric, "strategy": strategy,
         "group_size": group_size, "block_structure": list(block) if block else None,
         "dynamic": False, "actorder": None, "observer": "minmax", "observer_kwargs": {}}
    return {"quant_method": "compressed-tensors", "format": fmt, "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": w, "input_activations": None,
                                          "output_activations": None, "format": fmt}},
            "ignore": list(ignore), "kv_cache_scheme": None, "sparsity_config": {}}
