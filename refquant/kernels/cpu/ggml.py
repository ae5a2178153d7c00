"""Numba kernels of llama.cpp's CPU block dots, bit for bit with ``refquant.quant.ggml_dot``.

The public ``refquant.kernels.ggml_dot.matmul_ggml`` quantizes the activations
and splits both operands into plain arrays (validated, C-contiguous):

* scales as float32 arrays (fp16 fields widened exactly in NumPy);
* q4_0: the packed weight bytes (N, nb, 16) (low nibble = element j, high =
  element j + 16, code - 8), decoded here; q8_0: int8 codes (N, nb, 32);
* q4_k / q6_k: the raw blocks (N, nb, type size), decoded here one block at
  a time into ``scale * code`` per weight (the 6-bit or int8 sub-block scale
  times the 4-bit or 6-bit code, as ggml's ``aux16`` / ``aux32`` loops multiply
  them) and q4_k's 6-bit mins;
* activation codes int8 (M, nb, bs) and, for Q8_K, ``bsums`` int16 (M, nb, 16).

Per (m, n) the integer sums are exact; the float steps are the reference's in
the reference's order, with the two contracted multiply-adds of q4_k written
as ``llvm.fma.f32`` (one rounding, as the wheel's ``vfmadd231ps`` /
``vfnmadd231ss``). ``prange`` runs over the weight rows.
"""

from __future__ import annotations

import math

import numpy as np
from numba import config, njit, prange, types
from numba.extending import intrinsic

__all__ = ["TYPE_IDS", "matmul_q4_0", "matmul_q8_0", "matmul_k"]

TYPE_IDS = {"q4_0": 0, "q8_0": 1, "q4_k": 2, "q6_k": 3}

if config.DISABLE_JIT:  # pragma: no cover - exercised in a subprocess

    def _fma32(a, b, c):
        p = float(a) * float(b)  # exact
        s = p + float(c)
        bb = s - p
        err = (p - (s - bb)) + (float(c) - bb)
        if err != 0 and math.isfinite(s) and not (np.float64(s).view(np.uint64) & 1):
            s = math.nextafter(s, math.inf if err > 0 else -math.inf)
        return np.float32(s)

else:

    @intrinsic
    def _fma32(typingctx, a, b, c):
        """``llvm.fma.f32``: a * b + c rounded once."""
        if not all(t == types.float32 for t in (a, b, c)):
            return None

        def codegen(context, builder, signature, args):
            from llvmlite import ir
            from numba.core import cgutils

            f32 = ir.FloatType()
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(f32, [f32, f32, f32]), "llvm.fma.f32")
            return builder.call(fn, list(args))

        return types.float32(types.float32, types.float32, types.float32), codegen


@njit(cache=True, parallel=True)
def matmul_q4_0(wqs, dw, qa, da):
    """q4_0 x Q8_0: ``sumf += (float(sumi) * d_w) * d_a`` per block."""
    n_rows, nb = dw.shape
    m_rows = da.shape[0]
    out = np.empty((m_rows, n_rows), np.float32)
    for n in prange(n_rows):
        for i in range(m_rows):
            sumf = np.float32(0.0)
            for b in range(nb):
                sumi = np.int32(0)
                for j in range(16):
                    byte = np.int32(wqs[n, b, j])
                    sumi += ((byte & 15) - 8) * np.int32(qa[i, b, j])
                    sumi += ((byte >> 4) - 8) * np.int32(qa[i, b, j + 16])
                sumf = sumf + (np.float32(sumi) * dw[n, b]) * da[i, b]
            out[i, n] = sumf
    return out


@njit(cache=True, parallel=True)
def matmul_q8_0(wq, dw, qa, da):
    """q8_0 x Q8_0: ``sumf += float(sumi) * (d_w * d_a)`` per block."""
    n_rows, nb = dw.shape
    m_rows = da.shape[0]
    out = np.empty((m_rows, n_rows), np.float32)
    for n in prange(n_rows):
        for i in range(m_rows):
            sumf = np.float32(0.0)
            for b in range(nb):
                sumi = np.int32(0)
                for j in range(32):
                    sumi += np.int32(wq[n, b, j]) * np.int32(qa[i, b, j])
                sumf = sumf + np.float32(sumi) * (dw[n, b] * da[i, b])
            out[i, n] = sumf
    return out


@njit(cache=True)
def _decode_q4_k(wb, sc_buf, out):
    """One block_q4_K (144 bytes) -> out[k] = sc[k // 32] * q4[k]; mins into sc_buf[8:16]."""
    for j in range(4):  # get_scale_min_k4
        sc_buf[j] = np.int32(wb[4 + j]) & 63
        sc_buf[8 + j] = np.int32(wb[8 + j]) & 63
        sc_buf[4 + j] = (np.int32(wb[12 + j]) & 15) | ((np.int32(wb[4 + j]) >> 6) << 4)
        sc_buf[12 + j] = (np.int32(wb[12 + j]) >> 4) | ((np.int32(wb[8 + j]) >> 6) << 4)
    for g in range(4):  # 64 weights: byte l holds element 64g + l (low) and 64g + 32 + l (high)
        s_lo = sc_buf[2 * g]
        s_hi = sc_buf[2 * g + 1]
        for lo in range(32):
            byte = np.int32(wb[16 + 32 * g + lo])
            out[64 * g + lo] = s_lo * (byte & 15)
            out[64 * g + 32 + lo] = s_hi * (byte >> 4)


@njit(cache=True)
def _decode_q6_k(wb, out):
    """One block_q6_K (210 bytes) -> out[k] = sc[k // 16] * (q6[k] - 32)."""
    for h in range(2):
        for lo in range(32):
            ql0 = np.int32(wb[64 * h + lo])
            ql1 = np.int32(wb[64 * h + 32 + lo])
            qh = np.int32(wb[128 + 32 * h + lo])
            k = 128 * h + lo
            out[k] = (ql0 & 15) | ((qh & 3) << 4)
            out[k + 32] = (ql1 & 15) | (((qh >> 2) & 3) << 4)
            out[k + 64] = (ql0 >> 4) | (((qh >> 4) & 3) << 4)
            out[k + 96] = (ql1 >> 4) | (((qh >> 6) & 3) << 4)
    for k in range(256):
        sc = np.int32(wb[192 + k // 16])
        if sc >= 128:
            sc -= 256
        out[k] = sc * (out[k] - 32)


@njit(cache=True, parallel=True)
def matmul_k(w, dw, dminw, qa, da, bsums, is_q4k):
    """q4_k / q6_k raw blocks (N, nb, type size) x Q8_K codes: eight int32 lanes per block.

    Float steps as the wheel's build: q4_k ``sums[l] = fma(d, aux[l], sums[l])`` and
    ``sumf = fma(-dmin, summ, sumf)``; q6_k ``sums[l] = sums[l] + d * aux[l]``; then
    ``sumf + sums[0] + ... + sums[7]``.
    """
    n_rows, nb = dw.shape
    m_rows = da.shape[0]
    out = np.empty((m_rows, n_rows), np.float32)
    for n in prange(n_rows):
        wk = np.empty(256, np.int32)
        scm = np.empty(16, np.int32)
        aux = np.empty(8, np.int32)
        sums = np.zeros((m_rows, 8), np.float32)
        sumf = np.zeros(m_rows, np.float32)
        for b in range(nb):
            if is_q4k:
                _decode_q4_k(w[n, b], scm, wk)
            else:
                _decode_q6_k(w[n, b], wk)
            for i in range(m_rows):
                aux[:] = 0
                for c in range(32):
                    for lane in range(8):
                        q = c * 8 + lane
                        aux[lane] += wk[q] * np.int32(qa[i, b, q])
                d = dw[n, b] * da[i, b]
                if is_q4k:
                    summ = np.int32(0)
                    for j in range(16):
                        summ += np.int32(bsums[i, b, j]) * scm[8 + j // 2]
                    for lane in range(8):
                        sums[i, lane] = _fma32(d, np.float32(aux[lane]), sums[i, lane])
                    dmin = dminw[n, b] * da[i, b]
                    sumf[i] = _fma32(-dmin, np.float32(summ), sumf[i])
                else:
                    for lane in range(8):
                        sums[i, lane] = sums[i, lane] + d * np.float32(aux[lane])
        for i in range(m_rows):
            acc = sumf[i]
            for lane in range(8):
                acc = acc + sums[i, lane]
            out[i, n] = acc
    return out
