"""GPTQ (AutoGPTQ / GPTQModel, v1 and v2) and AWQ GEMM checkpoints.

GPTQ, per linear layer ``base`` with ``in_features`` = K, ``out_features`` = N,
``bits`` = b and G groups:

=============  ==========  ====================  =====================================
tensor         dtype       shape                 holds
=============  ==========  ====================  =====================================
base.qweight   int32       (K * b / 32, N)       codes packed along the input (dim 0)
base.qzeros    int32       (G, N * b / 32)       zero points packed along the output
base.scales    float16     (G, N)                one scale per group and output
base.g_idx     int32       (K,)                  group of each input column
=============  ==========  ====================  =====================================

AWQ GEMM (AutoAWQ ``WQLinear_GEMM``), 4 bits only: ``qweight`` int32 (K, N / 8) and
``qzeros`` int32 (G, N / 8) packed along the *output* in the interleaved order
[0, 2, 4, 6, 1, 3, 5, 7] (nibble i of a word holds column ``8*w + order[i]``),
``scales`` float16 (G, N); group of input column k is ``k // group_size``.
"""

from __future__ import annotations

import numpy as np

from ..._errors import RefquantError
from ._base import LayoutView, Scheme, pack_bitstream, round_to, unpack_bitstream

__all__ = ["GPTQView", "AWQView", "AWQ_ORDER", "gptq_tensors", "awq_tensors"]

#: AutoAWQ ``awq/utils/packing_utils.py`` ``AWQ_ORDER``: nibble i of a packed word
#: holds output column ``order[i]`` of its 8.
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def _scale_dtypes():
    import ml_dtypes

    return (np.float16, np.float32, ml_dtypes.bfloat16)


def _groups_of(view, base, qcfg):
    gs = qcfg.get("group_size", -1)
    if gs is None:
        gs = -1
    if isinstance(gs, bool) or not isinstance(gs, int) or (gs != -1 and gs <= 0):
        raise view.err(base, f"config group_size {gs!r}; expected a positive int or -1")
    return gs


class GPTQView(LayoutView):
    """Logical weights of a GPTQ checkpoint (``quant_method: gptq``).

    Notes
    -----
    **Formula** (AutoGPTQ ``qlinear_cuda_old.QuantLinear.forward``'s torch path and
    GPTQModel ``PackableQuantLinear.dequantize_weight``)::

        q[k, n] = code k of column n of qweight           (LSB-first, b bits)
        z[g, n] = code n of row g of qzeros  (+ 1 in the v1 format)
        W[n, k] = f16( scales[g_idx[k], n] * (q[k, n] - z[g_idx[k], n]) )

    computed in the scales' dtype as torch does: the product is exact in float32
    and rounded once to float16; returned as float32, transposed to
    (out_features, in_features).

    **v1 vs v2**: the v1 (``checkpoint_format: gptq``, AutoGPTQ's and the
    serialized default) stores ``zero - 1``; GPTQModel's v2 (``gptq_v2``) the zero
    itself. A v1 stored code of all ones (zero point 0) has no agreed meaning
    (AutoGPTQ reads 2**b, GPTQModel's ``convert_gptq_v1_to_v2_format`` adds 1 with
    a carry into the next code, and AutoGPTQ's ``pack`` corrupted the codes above
    it when writing it): refused.

    **Reference**: AutoGPTQ ``auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py``
    (``pack``: 3-bit codes as 32 codes in 3 words); GPTQModel
    ``gptqmodel/nn_modules/qlinear/__init__.py``.
    """

    name = "gptq"

    def __init__(self, ck, config, qcfg):
        super().__init__(ck, config)
        fmt = qcfg.get("checkpoint_format", qcfg.get("format", "gptq")) or "gptq"
        if fmt not in ("gptq", "gptq_v2"):
            raise RefquantError(f"{ck.path}: quantization_config checkpoint_format {fmt!r}; "
                                "refquant reads 'gptq' (v1) and 'gptq_v2'")
        self.v1 = fmt == "gptq"
        bits = qcfg.get("bits")
        if bits not in (2, 3, 4, 8):
            raise RefquantError(f"{ck.path}: quantization_config bits {bits!r}; GPTQ stores 2, 3, 4 or 8")
        sym = qcfg.get("sym")  # None: read off each layer's zeros
        desc = bool(qcfg.get("desc_act", False))
        bases = [n[: -len(".qweight")] for n in ck if n.endswith(".qweight")]
        if not bases:
            raise RefquantError(f"{ck.path}: config names quant_method 'gptq' but no tensor ends in "
                                "'.qweight'")
        for base in bases:
            gs = _groups_of(self, base, qcfg)
            self._add_layer(base, bits, gs, sym, desc)

    def _add_layer(self, base, bits, gs, sym, desc):
        ck = self.ck
        qw = self.need(base + ".qweight", base + ".weight")
        qz = self.need(base + ".qzeros", base + ".weight")
        sc = self.need(base + ".scales", base + ".weight")
        gi = base + ".g_idx" if base + ".g_idx" in ck else None
        for t in (qw, qz):
            self.expect_dtype(t, (np.int32, np.uint32), "packed codes")
        self.expect_dtype(sc, _scale_dtypes(), "scales")
        qs, zs, ss = ck.info(qw).shape, ck.info(qz).shape, ck.info(sc).shape
        if len(qs) != 2 or len(zs) != 2 or len(ss) != 2:
            raise self.err(qw, f"qweight {qs}, qzeros {zs}, scales {ss}; each must be 2-D")
        n = qs[1]
        k = qs[0] * 32 // bits
        if (qs[0] * 32) % bits or (bits == 3 and k % 32):
            raise self.err(qw, f"shape {qs}: {qs[0]} words do not hold whole {bits}-bit columns")
        if gi is not None:
            self.expect_dtype(gi, (np.int32, np.int64), "g_idx")
            self.expect_shape(gi, (k,), f"one group index per input column; qweight {qs} holds "
                                        f"{k} {bits}-bit rows")
        elif desc:
            raise self.err(qw, "desc_act (act-order) is set but the layer has no g_idx; the group of "
                               "each input column is unknown")
        if gs == -1:
            gs_eff = k
        else:
            gs_eff = gs
        if k % gs_eff:
            raise self.err(qw, f"in_features {k} is not a multiple of group_size {gs_eff}")
        groups = max(k // gs_eff, 1) if k else 0
        self.expect_shape(sc, (groups, n), f"{groups} groups of {gs_eff} of in_features {k}, "
                                           f"out_features {n} from qweight {qs}")
        if (n * bits) % 32 or (bits == 3 and n % 32):
            raise self.err(qz, f"out_features {n} do not pack into whole words of {bits}-bit zeros")
        self.expect_shape(qz, (groups, n * bits // 32), f"{groups} groups, {n} {bits}-bit zeros "
                                                        "per group")
        if sym is None:  # symmetric GPTQ stores the midpoint 2**(b-1) (v1: minus one) everywhere
            mid = (1 << (bits - 1)) - (1 if self.v1 else 0)
            sym = bool(np.all(unpack_bitstream(ck[qz], bits, n) == mid))
        self.add(base + ".weight",
                 Scheme(format="gptq" if self.v1 else "gptq_v2", bits=bits,
                        group_size=None if gs == -1 else gs, symmetric=sym,
                        act_order=desc, packing="int32 LSB-first along in_features (qweight), "
                        "along out_features (qzeros)", strategy="group" if gs != -1 else "channel",
                        shape=(n, k)),
                 {"qweight": qw, "qzeros": qz, "scales": sc, "g_idx": gi})

    def _dequantize(self, name, e):
        ck, s, r = self.ck, e.scheme, e.roles
        bits = s.bits
        n, k = s.shape
        q = unpack_bitstream(ck[r["qweight"]].T, bits, k).T.astype(np.int32)  # (k, n)
        z = unpack_bitstream(ck[r["qzeros"]], bits, n).astype(np.int32)  # (G, n)
        scales = ck[r["scales"]]
        groups = scales.shape[0]
        if r["g_idx"] is not None:
            g = ck[r["g_idx"]].astype(np.int64)
            bad = np.flatnonzero((g < 0) | (g >= groups))
            if bad.size:
                raise self.err(r["g_idx"], f"g_idx[{bad[0]}] = {g[bad[0]]}; expected a group in "
                                           f"[0, {groups}) (scales has {groups} rows)")
        else:
            g = np.arange(k) // (k // groups if groups else 1)
        if self.v1:
            top = (1 << bits) - 1
            hit = np.argwhere(z == top)
            if hit.size:
                gg, nn = hit[0]
                raise self.err(r["qzeros"], f"v1 stored zero code {top} (zero point 0) at group {gg}, "
                                            f"column {nn}: AutoGPTQ reads it as {top + 1}, GPTQModel "
                                            "carries it into the next code; no agreed value")
            z = z + 1
        prod = scales[g].astype(np.float64) * (q - z[g])
        return round_to(prod, scales.dtype).astype(np.float32).T


class AWQView(LayoutView):
    """Logical weights of an AutoAWQ GEMM checkpoint (``quant_method: awq``, ``version: gemm``).

    Notes
    -----
    **Formula** (AutoAWQ ``awq/utils/packing_utils.py`` ``dequantize_gemm``:
    ``unpack_awq``, ``reverse_awq_order``, then ``(iweight - izeros) * scales``
    with scales and zeros repeated ``group_size`` times along the input)::

        code i of word w of a row   -> column 8*w + AWQ_ORDER[i]
        W[n, k] = f16( (q[k, n] - z[k // gs, n]) * scales[k // gs, n] )

    in the scales' dtype (one rounding of the exact product); float32, transposed
    to (out_features, in_features).

    **Reference**: AutoAWQ ``awq/modules/linear/gemm.py`` ``WQLinear_GEMM.from_linear``
    (packing with ``order_map = [0, 2, 4, 6, 1, 3, 5, 7]``), ``awq/utils/packing_utils.py``.

    **GEMV** (``version: gemv``; AutoAWQ 0.2.9 ``awq/modules/linear/gemv.py``
    ``WQLinear_GEMV.from_linear``): output-major, codes in order along the input::

        qweight (N, K/8):  code of column 8*w + i in bits [4i, 4i+4) of word w   (order_map 0..7)
        qzeros  (N, zw):   zero of group 8*w + i likewise; zw = calculate_zeros_width(K, gs)
        scales  (N, 8 zw): group g in column g, columns from K/gs on zero padding
        W[n, k] = f16( (q[n, k] - z[n, k // gs]) * scales[n, k // gs] )

    AutoAWQ has no CPU dequantization for GEMV (its CUDA kernels never form W);
    refquant applies GEMM's ``dequantize_gemm`` arithmetic, one rounding to the
    scales' dtype. The padding is ignored, as the kernels ignore it.
    """

    name = "awq"

    def __init__(self, ck, config, qcfg):
        super().__init__(ck, config)
        version = str(qcfg.get("version", "gemm")).lower()
        if version not in ("gemm", "gemv"):
            raise RefquantError(f"{ck.path}: AWQ version {version!r}; refquant reads 'gemm' and "
                                "'gemv' (Marlin, exllama, gemv_fast layouts are not supported)")
        self.version = version
        bits = qcfg.get("bits", qcfg.get("w_bit", 4))
        if bits != 4:
            raise RefquantError(f"{ck.path}: quantization_config bits {bits!r}; AWQ GEMM stores 4")
        sym = not bool(qcfg.get("zero_point", True))
        if sym:
            raise RefquantError(f"{ck.path}: AWQ zero_point false; AutoAWQ GEMM always stores qzeros")
        bases = [n[: -len(".qweight")] for n in ck if n.endswith(".qweight")]
        if not bases:
            raise RefquantError(f"{ck.path}: config names quant_method 'awq' but no tensor ends in "
                                "'.qweight'")
        gs = qcfg.get("group_size", qcfg.get("q_group_size", 128))
        for base in bases:
            qw = self.need(base + ".qweight", base + ".weight")
            qz = self.need(base + ".qzeros", base + ".weight")
            sc = self.need(base + ".scales", base + ".weight")
            if base + ".g_idx" in ck:
                raise self.err(base + ".g_idx", "AWQ has no g_idx; this looks like GPTQ, not AWQ")
            for t in (qw, qz):
                self.expect_dtype(t, (np.int32, np.uint32), "packed codes")
            self.expect_dtype(sc, _scale_dtypes(), "scales")
            qs = ck.info(qw).shape
            if version == "gemv":
                self._add_gemv(base, qw, qz, sc, qs, gs)
                continue
            if len(qs) != 2:
                raise self.err(qw, f"shape {qs}; expected 2-D (in_features, out_features / 8)")
            k, n = qs[0], qs[1] * 8
            g = k if gs in (-1, None) else gs
            if isinstance(g, bool) or not isinstance(g, int) or g <= 0 or k % g:
                raise self.err(qw, f"in_features {k} is not a multiple of group_size {gs!r}")
            groups = k // g
            self.expect_shape(sc, (groups, n), f"{groups} groups of {g}, out_features {n}")
            self.expect_shape(qz, (groups, n // 8), f"{groups} groups, {n} 4-bit zeros per group")
            self.add(base + ".weight",
                     Scheme(format="awq", bits=4, group_size=g, symmetric=False, act_order=False,
                            packing="int32 along out_features, order [0, 2, 4, 6, 1, 3, 5, 7]",
                            strategy="group", shape=(n, k)),
                     {"qweight": qw, "qzeros": qz, "scales": sc})

    def _add_gemv(self, base, qw, qz, sc, qs, gs):
        """AutoAWQ GEMV: qweight (N, K/8) along the input, codes in order; qzeros (N, zw); scales (N, 8 zw)."""
        if len(qs) != 2:
            raise self.err(qw, f"shape {qs}; expected 2-D (out_features, in_features / 8) for GEMV")
        n, k = qs[0], qs[1] * 8
        g = k if gs in (-1, None) else gs
        if isinstance(g, bool) or not isinstance(g, int) or g <= 0 or k % g:
            raise self.err(qw, f"in_features {k} is not a multiple of group_size {gs!r}")
        zw = awq_gemv_zeros_width(k, g)
        if zw is None:
            raise self.err(qw, f"group_size {g}; AutoAWQ GEMV takes 32, 64 or >= 128 "
                               "(calculate_zeros_width)")
        self.expect_shape(sc, (n, zw * 8), f"{k // g} groups of {g} padded to {zw * 8} columns "
                                           "(calculate_zeros_width * 8)")
        self.expect_shape(qz, (n, zw), f"{k // g} 4-bit zeros per row in {zw} words")
        self.add(base + ".weight",
                 Scheme(format="awq-gemv", bits=4, group_size=g, symmetric=False, act_order=False,
                        packing="int32 along in_features, order [0, 1, ..., 7]", strategy="group",
                        shape=(n, k)),
                 {"qweight": qw, "qzeros": qz, "scales": sc})

    def _dequantize(self, name, e):
        ck, r = self.ck, e.roles
        n, k = e.scheme.shape
        g = e.scheme.group_size
        if e.scheme.format == "awq-gemv":
            q = unpack_bitstream(ck[r["qweight"]], 4, k).astype(np.int32)
            z = unpack_bitstream(ck[r["qzeros"]], 4, k // g).astype(np.int32)
            scales = ck[r["scales"]]
            cols = np.arange(k) // g
            prod = (q - z[:, cols]).astype(np.float64) * scales[:, cols].astype(np.float64)
            return round_to(prod, scales.dtype).astype(np.float32)
        q = _awq_unpack(ck[r["qweight"]]).astype(np.int32)
        z = _awq_unpack(ck[r["qzeros"]]).astype(np.int32)
        scales = ck[r["scales"]]
        rows = np.arange(k) // g
        prod = (q - z[rows]).astype(np.float64) * scales[rows].astype(np.float64)
        return round_to(prod, scales.dtype).astype(np.float32).T


def awq_gemv_zeros_width(in_features, group_size, pack_num=8):
    """AutoAWQ 0.2.9 ``gemv.calculate_zeros_width`` (None where it raises NotImplementedError)."""
    if group_size >= 128:
        mult = 1
    elif group_size in (64, 32):
        mult = 128 // group_size
    else:
        return None
    base = -(-(in_features // group_size) // pack_num)  # make_divisible is a ceiling division
    return -(-base // mult) * mult


def awq_gemv_tensors(base, q, scales, zeros):
    """Raw tensors of one AWQ GEMV layer from codes ``q`` (out, in), ``scales`` / ``zeros`` (out, G).

    Notes
    -----
    **Formula**: no arithmetic: ``qweight`` = codes packed in order along the input
    (8 a word, LSB first), ``qzeros`` likewise along the groups padded to
    ``calculate_zeros_width`` words, ``scales`` padded with zero columns to 8 per word.

    **Reference**: AutoAWQ 0.2.9 ``WQLinear_GEMV.from_linear`` (checked against it in
    tests/peers/test_layouts_gptq_awq.py).
    """
    q = np.asarray(q)
    sc = np.asarray(scales)
    z = np.asarray(zeros)
    n, k = q.shape
    G = sc.shape[1] if sc.ndim == 2 else 0
    if sc.shape != (n, G) or z.shape != (n, G) or G == 0 or k % G:
        raise RefquantError(f"weight {base!r}: scales {sc.shape} and zeros {z.shape} must both be "
                            f"(out_features, groups) = ({n}, G) with G dividing in_features {k}")
    zw = awq_gemv_zeros_width(k, k // G)
    if zw is None or k % 8 or n % 8:
        raise RefquantError(f"weight {base!r}: group size {k // G}, shape {(n, k)}; AutoAWQ GEMV "
                            "takes groups of 32, 64 or >= 128 and in / out features multiples of 8")
    zpad = np.zeros((n, zw * 8), np.uint32)
    zpad[:, :G] = z
    spad = np.zeros((n, zw * 8), sc.dtype)
    spad[:, :G] = sc
    return {base + ".qweight": pack_bitstream(q.astype(np.uint32), 4).view(np.int32),
            base + ".qzeros": pack_bitstream(zpad, 4).view(np.int32),
            base + ".scales": spad}


def _awq_unpack(words):
    codes = unpack_bitstream(words, 4, words.shape[-1] * 8)  # code i of each word, in word order
    lead = codes.shape[:-1]
    codes = codes.reshape(*lead, -1, 8)
    out = np.empty_like(codes)
    out[..., list(AWQ_ORDER)] = codes
    return out.reshape(*lead, -1)


def _awq_pack(codes):
    lead = codes.shape[:-1]
    c = codes.reshape(*lead, -1, 8)[..., list(AWQ_ORDER)].reshape(*lead, -1)
    return pack_bitstream(c, 4)


# ---------------------------------------------------------------------------
# writers
# ---------------------------------------------------------------------------

def gptq_tensors(base, q, scales, zeros, bits, g_idx=None, v1=True):
    """Raw tensors of one GPTQ layer from codes ``q`` (out, in), ``scales`` / ``zeros`` (out, G).

    ``zeros`` are the true zero points; the v1 format stores ``zero - 1`` (zero 0
    is refused there, see :class:`GPTQView`).

    Notes
    -----
    **Formula**: no arithmetic: codes bit-packed LSB-first, ``qweight`` along the
    input (32 // b codes a word; 3 bits: 32 codes in 3 words), ``qzeros`` along the
    output, ``scales`` transposed to (G, out), ``g_idx`` ``k // (K / G)`` unless given.

    **Reference**: AutoGPTQ ``qlinear_cuda_old.QuantLinear.pack`` (the same words,
    checked in tests/peers/test_layouts_gptq_awq.py).
    """
    q = np.asarray(q)
    n, k = q.shape
    if bits == 3 and (k % 32 or n % 32):
        raise RefquantError(f"weight {base!r}: 3-bit GPTQ needs in and out features multiples of "
                            f"32; got {(n, k)}")
    z = np.asarray(zeros).astype(np.int64).T  # (G, n)
    if v1:
        if (z <= 0).any():
            raise RefquantError(f"weight {base!r}: zero point 0 has no v1 encoding (stored zero - 1 "
                                "would be -1); write v2 (gptq_v2) or use zero >= 1")
        z = z - 1
    out = {
        base + ".qweight": np.ascontiguousarray(pack_bitstream(q.astype(np.uint32), bits).T)
        .view(np.int32),
        base + ".qzeros": pack_bitstream(z.astype(np.uint32), bits).view(np.int32),
        base + ".scales": np.ascontiguousarray(np.asarray(scales).T),
    }
    G = out[base + ".scales"].shape[0]
    out[base + ".g_idx"] = (np.asarray(g_idx, np.int32) if g_idx is not None
                            else (np.arange(k) // (k // G)).astype(np.int32))
    return out


def awq_tensors(base, q, scales, zeros):
    """Raw tensors of one AWQ GEMM layer from codes ``q`` (out, in), ``scales`` / ``zeros`` (out, G).

    Notes
    -----
    **Formula**: no arithmetic: nibble ``i`` of word ``w`` holds output column
    ``8*w + AWQ_ORDER[i]``, for ``qweight`` (in, out / 8) and ``qzeros`` (G, out / 8).

    **Reference**: AutoAWQ ``WQLinear_GEMM.from_linear`` (``order_map``).
    """
    q = np.asarray(q)
    return {
        base + ".qweight": _awq_pack(q.T.astype(np.uint32)).view(np.int32),
        base + ".qzeros": _awq_pack(np.asarray(zeros).T.astype(np.uint32)).view(np.int32),
        base + ".scales": np.ascontiguousarray(np.asarray(scales).T),
    }
