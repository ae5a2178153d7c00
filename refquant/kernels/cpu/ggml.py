"""Numba kernels of llama.cpp's CPU block dots, bit for bit with ``refquant.quant.ggml_dot``.

The public ``refquant.kernels.ggml_dot.matmul_ggml`` quantizes the activations
and splits both operands into plain arrays (validated, C-contiguous):

* scales as float32 arrays (fp16 fields widened exactly in NumPy);
* q4_0: the packed weight bytes (N, nb, 16) (low nibble = element j, high =
  element j + 16, code - 8), decoded here; q8_0: int8 codes (N, nb, 32);
* q4_k / q6_k: the products ``scale * code`` per weight as int16 (N, nb, 256)
  (the 6-bit or int8 sub-block scale times the 4-bit or 6-bit code, as ggml's
  ``aux16`` / ``aux32`` loops multiply them), q4_k's 6-bit mins (N, nb, 8);
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


@njit(cache=True, parallel=True)
def matmul_k(weighted, dw, dminw, mins, qa, da, bsums, is_q4k):
    """q4_k / q6_k x Q8_K: eight int32 lanes per super-block, float steps as ggml's build."""
    n_rows, nb = dw.shape
    m_rows = da.shape[0]
    out = np.empty((m_rows, n_rows), np.float32)
    for n in prange(n_rows):
        aux = np.empty(8, np.int32)
        sums = np.empty(8, np.float32)
        for i in range(m_rows):
            sums[:] = 0
            sumf = np.float32(0.0)
            for b in range(nb):
                aux[:] = 0
                for c in range(32):
                    for lane in range(8):
                        q = c * 8 + lane
                        aux[lane] += np.int32(weighted[n, b, q]) * np.int32(qa[i, b, q])
                d = dw[n, b] * da[i, b]
                if is_q4k:
                    summ = np.int32(0)
                    for j in range(16):
                        summ += np.int32(bsums[i, b, j]) * np.int32(mins[n, b, j // 2])
                    for lane in range(8):
                        sums[lane] = _fma32(d, np.float32(aux[lane]), sums[lane])
                    dmin = dminw[n, b] * da[i, b]
                    sumf = _fma32(-dmin, np.float32(summ), sumf)
                else:
                    for lane in range(8):
                        sums[lane] = sums[lane] + d * np.float32(aux[lane])
            for lane in range(8):
                sumf = sumf + sums[lane]
            out[i, n] = sumf
    return out
