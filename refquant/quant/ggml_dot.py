"""NumPy reference of llama.cpp's CPU block dot products (weights in a ggml block format).

``ggml_mul_mat`` on the CPU quantizes each activation row to the weight type's
``vec_dot_type`` (Q8_0 for q4_0 / q8_0, Q8_K for the K-quants), then calls
``ggml_vec_dot_<w>_q8_<0|K>`` for every (weight row, activation row): an
integer dot per block, scaled by the float scales of both blocks and summed
over the blocks in float32. This module computes exactly what the scalar
``ggml_vec_dot_<w>_q8_<0|K>_generic`` of ``libggml-cpu.so`` computes (ggml
0.20.2, ``ggml/src/ggml-cpu/quants.c``, as built in the ``libggml-python``
wheel), rounding for rounding:

q4_0 x q8_0, per block b of 32:
    ``sumi = sum_j (q4[j] - 8) * q8[j]`` (int32, exact);
    ``sumf = sumf + (float(sumi) * d_w) * d_a`` (two float32 products, left to right).
q8_0 x q8_0:
    ``sumf = sumf + float(sumi) * (d_w * d_a)`` (the scales multiplied first).
q4_k x q8_K, per super-block of 256:
    eight int32 lanes ``aux[l] = sum_{k = l mod 8} sc[k // 32] * q4[k] * q8[k]``,
    ``summ = sum_j bsums[j] * m[j // 2]`` (the 16-weight sums of the Q8_K block);
    ``d = fp16(d_w) * d_a``, ``dmin = fp16(dmin_w) * d_a`` (float32);
    ``sums[l] = fma(d, float(aux[l]), sums[l])`` and ``sumf = fma(-dmin, float(summ), sumf)``:
    the wheel's GCC build contracts these two into ``vfmadd231ps`` /
    ``vfnmadd231ss`` (one rounding each; checked in its disassembly); after the
    last block ``sumf = sumf + sums[0] + ... + sums[7]`` in that order.
q6_k x q8_K:
    the same lanes with the signed 8-bit scale per 16 weights and codes
    ``q6 - 32``; ``sums[l] = sums[l] + d * float(aux[l])`` (not contracted in
    this build: ``vmulps`` then ``vaddps``); ``sumf = 0 + sums[0] + ... + sums[7]``.

fp16 scales convert to float32 exactly (ggml's table). The activations are
quantized with refquant's bit-exact ``quantize_row_q8_0_ref`` /
``quantize_row_q8_K_ref`` (``refquant.formats.ggml``). llama.cpp's x86 build
quantizes activations with its SIMD ``quantize_row_q8_0``, which rounds half
to even where ``_ref`` rounds half away from zero (a code differs by one at an
exact tie), and its SIMD ``vec_dot`` sums the blocks in another order: against
those the float result differs by the summation rounding, bounded by
``(number of blocks + 8) * eps32 * sum_b |block term|``; against the
``_generic`` functions it is bit for bit.
"""

from __future__ import annotations

import numpy as np

from ..formats.ggml import GGML_BLOCK_TABLE, ggml_block_formats

__all__ = ["GGML_DOT_TYPES", "ggml_dot_type", "quantize_activations", "matmul_ggml"]

# weight type -> activation (vec_dot) type
GGML_DOT_TYPES = {"q4_0": "q8_0", "q8_0": "q8_0", "q4_k": "q8_k", "q6_k": "q8_k"}

_F32 = np.float32


def ggml_dot_type(type_name: str) -> str:
    """The activation block type (``vec_dot_type``) ggml pairs with a weight type."""
    return GGML_DOT_TYPES[type_name]


def quantize_activations(x: np.ndarray, type_name: str) -> np.ndarray:
    """Rows of float32 x (M, K) as raw Q8_0 / Q8_K blocks: uint8 (M, K // bs, type size)."""
    at = GGML_DOT_TYPES[type_name]
    _, bs, ts = GGML_BLOCK_TABLE[at]
    m, k = x.shape
    raw = ggml_block_formats()[at].quantize_blocks(x.reshape(m * (k // bs), bs))
    return raw.reshape(m, k // bs, ts)


def _fp16(raw2: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw2).view("<f2")[..., 0].astype(_F32)


def _f32le(raw4: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw4).view("<f4")[..., 0].astype(_F32)


def _fma32(a, b, c):
    """float32 fma(a, b, c) with one rounding: exact product in float64, sum rounded to odd."""
    a, b, c = (np.asarray(v, np.float64) for v in (a, b, c))
    p = a * b  # exact: 24 + 24 significant bits
    s = p + c
    bb = s - p
    err = (p - (s - bb)) + (c - bb)  # TwoSum: s + err == p + c exactly
    odd = (s.view(np.uint64) & np.uint64(1)) == 1
    fix = (err != 0) & ~odd & np.isfinite(s)
    s = np.where(fix, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
    return s.astype(_F32)  # round-to-odd at 53 bits, then nearest: correctly rounded


# ---------------------------------------------------------------- weight block decoders


def _codes_q4_0(w):  # (N, nb, 18) -> d (N, nb), codes (N, nb, 32) in -8..7
    qs = w[..., 2:18].astype(np.int64)
    return _fp16(w[..., 0:2]), np.concatenate([qs & 15, qs >> 4], axis=-1) - 8


def _codes_q8_0(w):
    return _fp16(w[..., 0:2]), np.ascontiguousarray(w[..., 2:34]).view(np.int8).astype(np.int64)


def _scales_min_k4(b):  # (..., 12) -> scales, mins (..., 8), 6-bit each (get_scale_min_k4)
    b = b.astype(np.int64)
    sc = np.concatenate([b[..., 0:4] & 63, (b[..., 8:12] & 15) | ((b[..., 0:4] >> 6) << 4)], -1)
    mn = np.concatenate([b[..., 4:8] & 63, (b[..., 8:12] >> 4) | ((b[..., 4:8] >> 6) << 4)], -1)
    return sc, mn


def _codes_q4_k(w):  # (N, nb, 144) -> d, dmin, sc (N,nb,8), mn, codes (N, nb, 256) in 0..15
    qs = w[..., 16:144].astype(np.int64).reshape(w.shape[:-1] + (4, 32))
    codes = np.stack([qs & 15, qs >> 4], axis=-2).reshape(w.shape[:-1] + (256,))
    sc, mn = _scales_min_k4(w[..., 4:16])
    return _fp16(w[..., 0:2]), _fp16(w[..., 2:4]), sc, mn, codes


def _codes_q6_k(w):  # (N, nb, 210) -> d, sc (N, nb, 16) int8, codes (N, nb, 256) in -32..31
    lead = w.shape[:-1]
    ql = w[..., 0:128].astype(np.int64).reshape(lead + (2, 2, 32))
    qh = w[..., 128:192].astype(np.int64).reshape(lead + (2, 32))
    low = np.stack([ql[..., 0, :] & 15, ql[..., 1, :] & 15, ql[..., 0, :] >> 4,
                    ql[..., 1, :] >> 4], axis=-2)  # (.., 2 halves, 4 groups, 32)
    high = np.stack([(qh >> s) & 3 for s in (0, 2, 4, 6)], axis=-2)
    codes = ((low | (high << 4)) - 32).reshape(lead + (256,))
    sc = np.ascontiguousarray(w[..., 192:208]).view(np.int8).astype(np.int64)
    return _fp16(w[..., 208:210]), sc, codes


# ---------------------------------------------------------------- the dot products


def _dot_legacy(type_name, w, a):
    """q4_0 / q8_0 against Q8_0 activations: float32 (M, N)."""
    dec = _codes_q4_0 if type_name == "q4_0" else _codes_q8_0
    dw, qw = dec(w)  # (N, nb), (N, nb, 32)
    da = _fp16(a[..., 0:2])  # (M, nb)
    qa = np.ascontiguousarray(a[..., 2:34]).view(np.int8).astype(np.int64)
    m, nb = da.shape
    n = dw.shape[0]
    out = np.zeros((m, n), _F32)
    for i in range(m):
        sumi = np.einsum("nbj,bj->nb", qw, qa[i]).astype(_F32)  # exact ints < 2^24
        sumf = np.zeros(n, _F32)
        for b in range(nb):
            if type_name == "q4_0":
                term = (sumi[:, b] * dw[:, b]) * da[i, b]
            else:
                term = sumi[:, b] * (dw[:, b] * da[i, b])
            sumf = sumf + term
        out[i] = sumf
    return out


def _dot_k(type_name, w, a):
    """q4_k / q6_k against Q8_K activations: float32 (M, N)."""
    da = _f32le(a[..., 0:4])  # (M, nb)
    qa = np.ascontiguousarray(a[..., 4:260]).view(np.int8).astype(np.int64)  # (M, nb, 256)
    bsums = np.ascontiguousarray(a[..., 260:292]).view("<i2").astype(np.int64)  # (M, nb, 16)
    m, nb = da.shape
    if type_name == "q4_k":
        dw, dminw, sc, mn, codes = _codes_q4_k(w)
        weighted = codes * np.repeat(sc, 32, axis=-1)  # sc[k // 32] * q4[k]
    else:
        dw, sc, codes = _codes_q6_k(w)
        weighted = codes * np.repeat(sc, 16, axis=-1)  # sc[k // 16] * (q6[k] - 32)
    n = dw.shape[0]
    lanes_w = weighted.reshape(n, nb, 32, 8)
    out = np.zeros((m, n), _F32)
    for i in range(m):
        aux = np.einsum("nbcl,bcl->nbl", lanes_w, qa[i].reshape(nb, 32, 8)).astype(_F32)
        sums = np.zeros((n, 8), _F32)
        sumf = np.zeros(n, _F32)
        if type_name == "q4_k":
            summ = np.einsum("bj,nbj->nb", bsums[i], np.repeat(mn, 2, axis=-1)).astype(_F32)
        for b in range(nb):
            d = dw[:, b] * da[i, b]
            if type_name == "q4_k":
                sums = _fma32(d[:, None], aux[:, b], sums)
                dmin = dminw[:, b] * da[i, b]
                sumf = _fma32(-dmin, summ[:, b], sumf)
            else:
                sums = sums + d[:, None] * aux[:, b]
        for lane in range(8):
            sumf = sumf + sums[:, lane]
        out[i] = sumf
    return out


def matmul_ggml(x: np.ndarray, w_blocks: np.ndarray, type_name: str) -> np.ndarray:
    """float32 (M, N): each row of x quantized to Q8_0 / Q8_K, dotted with each weight row.

    x float32 (M, K), finite; w_blocks uint8 (N, K // block size, type size).
    """
    a = quantize_activations(x, type_name)
    if type_name in ("q4_0", "q8_0"):
        return _dot_legacy(type_name, w_blocks, a)
    return _dot_k(type_name, w_blocks, a)
