"""Numba kernels for ggml's importance-matrix quantizers (``quantize_<type>`` with ``quant_weights``).

The exact twins of :mod:`refquant.formats.ggml_weighted` (the NumPy reference) and of
ggml's ``quantize_row_<type>_impl`` for q4_0, q4_1, q5_0, q5_1, q2_K, q3_K, q4_K, q5_K
and q6_K: ggml-quants.c's loops statement by statement, float32 operations in C's
order, sequential sums, fastmath off (no FMA contraction: libggml is built without
it), ``error_model="numpy"`` (a division by zero gives Inf/NaN as in C). The legacy
types need the whole row (``sigma2`` is the row's mean square), so their ``prange`` runs
over rows; the K-quants' blocks are independent, so theirs runs over blocks.

Nothing here imports from ``refquant.quant`` / ``formats`` / ``compat``; kernels
compile on first call (``cache=True``).

Reference: ggml-org/ggml 0.20.2 ``src/ggml-quants.c``: ``make_qx_quants``,
``make_qkx3_quants``, ``make_qp_quants``, ``quantize_row_{q4_0,q4_1,q5_0,q5_1,q2_K,
q3_K,q4_K,q5_K,q6_K}_impl``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .ggml_quant import (
    _FP16_TABLE,
    _fp16_bits,
    _k4_pack,
    _nearest_int,
    _nearest_int32,
    _pack_2bit_128,
    _put_u16,
    q6_k_finish,
)

__all__ = ["quantize_rows_weighted"]

QK_K = 256
_EPS = np.float32(1e-15)  # GROUP_MAX_EPS
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_TENTH = np.float32(0.1)
_OPTS = dict(cache=True, nogil=True, error_model="numpy")
_PAR = dict(cache=True, nogil=True, error_model="numpy", parallel=True)


# --------------------------------------------------------------------------- searches
@njit(**_OPTS)
def _make_qx(x, n, nmax, w, L):
    """make_qx_quants(n, nmax, x, L, rmse_type=1, w): returns the scale; L gets l + nmax."""
    amax = _ZERO
    mx = _ZERO
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            mx = x[i]
    if amax < _EPS:
        for i in range(n):
            L[i] = 0
        return _ZERO
    lo = np.int32(-nmax)
    hi = np.int32(nmax - 1)
    iscale = np.float32(np.float32(-nmax) / mx)
    sumlx = _ZERO
    suml2 = _ZERO
    for i in range(n):
        lq = max(lo, min(hi, _nearest_int32(np.float32(iscale * x[i]))))
        L[i] = lq + nmax
        lf = np.float32(lq)
        sumlx = np.float32(sumlx + np.float32(np.float32(w[i] * x[i]) * lf))
        suml2 = np.float32(suml2 + np.float32(np.float32(w[i] * lf) * lf))
    scale = np.float32(sumlx / suml2) if suml2 != 0 else _ZERO
    best = np.float32(scale * sumlx)
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = np.float32(-np.float32(np.float32(nmax) + np.float32(_TENTH * np.float32(step))) / mx)
        sumlx = _ZERO
        suml2 = _ZERO
        for i in range(n):
            lf = np.float32(max(lo, min(hi, _nearest_int32(np.float32(iscale * x[i])))))
            sumlx = np.float32(sumlx + np.float32(np.float32(w[i] * x[i]) * lf))
            suml2 = np.float32(suml2 + np.float32(np.float32(w[i] * lf) * lf))
        if suml2 > 0 and np.float32(sumlx * sumlx) > np.float32(best * suml2):
            for i in range(n):
                L[i] = nmax + max(lo, min(hi, _nearest_int32(np.float32(iscale * x[i]))))
            scale = np.float32(sumlx / suml2)
            best = np.float32(scale * sumlx)
    return scale


@njit(**_OPTS)
def _make_qkx3(x, n, nmax, w, L, Laux, rmin, rdelta, nstep):
    """make_qkx3_quants(n, nmax, x, w, L, &the_min, Laux, rmin, rdelta, nstep, false): (scale, the_min)."""
    mn = x[0]
    mx = x[0]
    sum_w = w[0]
    sum_x = np.float32(sum_w * x[0])
    for i in range(1, n):
        if x[i] < mn:
            mn = x[i]
        if x[i] > mx:
            mx = x[i]
        sum_w = np.float32(sum_w + w[i])
        sum_x = np.float32(sum_x + np.float32(w[i] * x[i]))
    if mn > 0:
        mn = _ZERO
    if mx <= mn:
        for i in range(n):
            L[i] = 0
        return _ZERO, np.float32(-mn)
    iscale = np.float32(np.float32(nmax) / np.float32(mx - mn))
    scale = np.float32(_ONE / iscale)
    best = _ZERO
    for i in range(n):
        lq = max(0, min(nmax, _nearest_int(np.float32(iscale * np.float32(x[i] - mn)))))
        L[i] = lq
        diff = np.float32(np.float32(np.float32(scale * np.float32(lq)) + mn) - x[i])
        best = np.float32(best + np.float32(w[i] * np.float32(diff * diff)))
    for step in range(nstep + 1):
        iscale = np.float32(
            np.float32(np.float32(rmin + np.float32(rdelta * np.float32(step))) + np.float32(nmax))
            / np.float32(mx - mn)
        )
        sum_l = _ZERO
        sum_l2 = _ZERO
        sum_xl = _ZERO
        for i in range(n):
            lq = max(0, min(nmax, _nearest_int(np.float32(iscale * np.float32(x[i] - mn)))))
            Laux[i] = lq
            lf = np.float32(lq)
            wl = np.float32(w[i] * lf)
            sum_l = np.float32(sum_l + wl)
            sum_l2 = np.float32(sum_l2 + np.float32(wl * lf))
            sum_xl = np.float32(sum_xl + np.float32(wl * x[i]))
        det = np.float32(np.float32(sum_w * sum_l2) - np.float32(sum_l * sum_l))
        if det > 0:
            this_scale = np.float32(np.float32(np.float32(sum_w * sum_xl) - np.float32(sum_x * sum_l)) / det)
            this_min = np.float32(np.float32(np.float32(sum_l2 * sum_x) - np.float32(sum_l * sum_xl)) / det)
            if this_min > 0:
                this_min = _ZERO
                this_scale = np.float32(sum_xl / sum_l2)
            cur = _ZERO
            for i in range(n):
                diff = np.float32(np.float32(np.float32(this_scale * np.float32(Laux[i])) + this_min) - x[i])
                cur = np.float32(cur + np.float32(w[i] * np.float32(diff * diff)))
            if cur < best:
                for i in range(n):
                    L[i] = Laux[i]
                best = cur
                scale = this_scale
                mn = this_min
    return scale, np.float32(-mn)


@njit(**_OPTS)
def _make_qp(x, n, nmax, qw, L):
    """make_qp_quants(n, nmax, x, L, qw): returns the scale; L holds uint8_t values (a negative code wraps)."""
    mx = _ZERO
    for i in range(n):
        mx = mx if mx > x[i] else x[i]  # MAX(max, x[i])
    if mx < _EPS:
        for i in range(n):
            L[i] = 0
        return _ZERO
    iscale = np.float32(np.float32(nmax) / mx)
    for i in range(n):
        L[i] = _nearest_int(np.float32(iscale * x[i])) & 0xFF
    scale = np.float32(_ONE / iscale)
    best = _ZERO
    for i in range(n):
        diff = np.float32(x[i] - np.float32(scale * np.float32(L[i])))
        best = np.float32(best + np.float32(np.float32(qw[i] * diff) * diff))
    for step in range(-4, 5):
        if step == 0:
            continue
        iscale_is = np.float32(np.float32(np.float32(_TENTH * np.float32(step)) + np.float32(nmax)) / mx)
        scale_is = np.float32(_ONE / iscale_is)
        mse = _ZERO
        for i in range(n):
            lf = np.float32(min(nmax, _nearest_int(np.float32(iscale_is * x[i]))))
            diff = np.float32(x[i] - np.float32(scale_is * lf))
            mse = np.float32(mse + np.float32(np.float32(qw[i] * diff) * diff))
        if mse < best:
            best = mse
            iscale = iscale_is
    sumlx = _ZERO
    suml2 = _ZERO
    for i in range(n):
        lq = min(nmax, _nearest_int(np.float32(iscale * x[i])))
        L[i] = lq & 0xFF
        lf = np.float32(lq)
        sumlx = np.float32(sumlx + np.float32(np.float32(qw[i] * x[i]) * lf))
        suml2 = np.float32(suml2 + np.float32(np.float32(qw[i] * lf) * lf))
    for _ in range(5):
        changed = 0
        for i in range(n):
            w = qw[i]
            li = np.float32(L[i])
            slx = np.float32(sumlx - np.float32(np.float32(w * x[i]) * li))
            sl2 = np.float32(suml2 - np.float32(np.float32(w * li) * li))
            if slx > 0 and sl2 > 0:
                new_l = min(nmax, _nearest_int(np.float32(np.float32(x[i] * sl2) / slx)))
                if new_l != L[i]:
                    nf = np.float32(new_l)
                    slx = np.float32(slx + np.float32(np.float32(w * x[i]) * nf))
                    sl2 = np.float32(sl2 + np.float32(np.float32(w * nf) * nf))
                    if np.float32(np.float32(slx * slx) * suml2) > np.float32(np.float32(sumlx * sumlx) * sl2):
                        L[i] = new_l & 0xFF
                        sumlx = slx
                        suml2 = sl2
                        changed += 1
        if changed == 0:
            break
    return np.float32(sumlx / suml2) if suml2 > 0 else _ZERO


@njit(**_OPTS)
def _sigma_weights(xb, qw, sigma2, out):
    """out[l] = qw[l] * sqrtf(sigma2 + x[l]*x[l]); returns the sequential sum of out."""
    s = _ZERO
    for j in range(xb.shape[0]):
        out[j] = np.float32(qw[j] * np.float32(np.sqrt(np.float32(sigma2 + np.float32(xb[j] * xb[j])))))
        s = np.float32(s + out[j])
    return s


@njit(**_OPTS)
def _sum_sq(x):
    s = _ZERO
    for j in range(x.shape[0]):
        s = np.float32(s + np.float32(x[j] * x[j]))
    return s


# --------------------------------------------------------------------------- legacy types
@njit(**_PAR)
def _quantize_q4_0_q5_0_w(x, qw, out, nmax):
    """quantize_row_q4_0_impl (nmax 8, 18-byte blocks) / quantize_row_q5_0_impl (nmax 16, 22)."""
    npr = x.shape[1]
    nb = npr // 32
    tsz = 18 if nmax == 8 else 22
    for r in prange(x.shape[0]):
        xr = x[r]
        o = out[r]
        sigma2 = np.float32(_sum_sq(xr) / np.float32(npr))
        w = np.empty(32, np.float32)
        L = np.empty(32, np.int64)
        for ib in range(nb):
            xb = xr[32 * ib : 32 * ib + 32]
            _sigma_weights(xb, qw[32 * ib : 32 * ib + 32], sigma2, w)
            d = _make_qx(xb, 32, nmax, w, L)
            off = tsz * ib
            _put_u16(o, off, _fp16_bits(d))
            if nmax == 8:
                for j in range(16):
                    o[off + 2 + j] = (L[j] | (L[j + 16] << 4)) & 0xFF
            else:
                qh = 0
                for j in range(16):
                    o[off + 6 + j] = ((L[j] & 0xF) | ((L[j + 16] & 0xF) << 4)) & 0xFF
                    qh |= (((L[j] & 0x10) >> 4) << j) | (((L[j + 16] & 0x10) >> 4) << (j + 16))
                for k in range(4):
                    o[off + 2 + k] = (qh >> (8 * k)) & 0xFF


@njit(**_PAR)
def _quantize_q4_1_q5_1_w(x, qw, out, nmax):
    """quantize_row_q4_1_impl (nmax 15, 20-byte blocks) / quantize_row_q5_1_impl (nmax 31, 24)."""
    npr = x.shape[1]
    nb = npr // 32
    tsz = 20 if nmax == 15 else 24
    for r in prange(x.shape[0]):
        xr = x[r]
        o = out[r]
        sigma2 = np.float32(_sum_sq(xr) / np.float32(npr))
        w = np.empty(32, np.float32)
        L = np.empty(32, np.int64)
        Laux = np.empty(32, np.int64)
        for ib in range(nb):
            xb = xr[32 * ib : 32 * ib + 32]
            _sigma_weights(xb, qw[32 * ib : 32 * ib + 32], sigma2, w)
            d, the_min = _make_qkx3(xb, 32, nmax, w, L, Laux, np.float32(-0.9), np.float32(0.05), 36)
            off = tsz * ib
            _put_u16(o, off, _fp16_bits(d))
            _put_u16(o, off + 2, _fp16_bits(np.float32(-the_min)))
            if nmax == 15:
                for j in range(16):
                    o[off + 4 + j] = (L[j] | (L[j + 16] << 4)) & 0xFF
            else:
                qh = 0
                for j in range(16):
                    o[off + 8 + j] = ((L[j] & 0xF) | ((L[j + 16] & 0xF) << 4)) & 0xFF
                    qh |= (((L[j] & 0x10) >> 4) << j) | (((L[j + 16] & 0x10) >> 4) << (j + 16))
                for k in range(4):
                    o[off + 4 + k] = (qh >> (8 * k)) & 0xFF


# --------------------------------------------------------------------------- K-quants
@njit(**_PAR)
def _quantize_q2_k_w(x, qw, out, t16):
    """quantize_row_q2_K_impl; x (nblocks, 256), qw (blocks per row, 256), out (nblocks, 84)."""
    nb = qw.shape[0]
    for i in prange(x.shape[0]):
        xb = x[i]
        q = qw[i % nb]
        o = out[i]
        L = np.empty(QK_K, np.int64)
        Laux = np.empty(16, np.int64)
        w = np.empty(16, np.float32)
        sw = np.empty(16, np.float32)
        scales = np.empty(16, np.float32)
        mins = np.empty(16, np.float32)
        sigma2 = np.float32(_sum_sq(xb) / np.float32(QK_K))
        for j in range(16):
            sw[j] = _sigma_weights(xb[16 * j : 16 * j + 16], q[16 * j : 16 * j + 16], sigma2, w)
            scales[j], mins[j] = _make_qkx3(xb[16 * j : 16 * j + 16], 16, 3, w, L[16 * j : 16 * j + 16], Laux,
                                            np.float32(-0.9), np.float32(0.05), 36)  # fmt: skip
        Ls = np.empty(16, np.int64)
        Lm = np.empty(16, np.int64)
        d16 = _fp16_bits(_make_qp(scales, 16, 15, sw, Ls))
        m16 = _fp16_bits(_make_qp(mins, 16, 15, sw, Lm))
        for j in range(16):
            sc = (Ls[j] | (Lm[j] << 4)) & 0xFF
            o[j] = sc
            d = np.float32(t16[d16] * np.float32(sc & 0xF))
            if d == 0:
                continue
            m = np.float32(t16[m16] * np.float32(sc >> 4))
            for k in range(16):
                v = np.float32(np.float32(xb[16 * j + k] + m) / d)
                L[16 * j + k] = max(0, min(3, _nearest_int(v)))
        _pack_2bit_128(L, o, 16)
        _put_u16(o, 80, d16)
        _put_u16(o, 82, m16)


@njit(**_PAR)
def _quantize_q3_k_w(x, qw, out, t16):
    """quantize_row_q3_K_impl; out (nblocks, 110)."""
    nb = qw.shape[0]
    for i in prange(x.shape[0]):
        xb = x[i]
        q = qw[i % nb]
        o = out[i]
        L = np.empty(QK_K, np.int64)
        w = np.empty(16, np.float32)
        sw = np.empty(16, np.float32)
        scales = np.empty(16, np.float32)
        sigma2 = np.float32(np.float32(np.float32(2) * _sum_sq(xb)) / np.float32(QK_K))
        for j in range(16):
            sw[j] = _sigma_weights(xb[16 * j : 16 * j + 16], q[16 * j : 16 * j + 16], sigma2, w)
            scales[j] = _make_qx(xb[16 * j : 16 * j + 16], 16, 4, w, L[16 * j : 16 * j + 16])
        Ls = np.empty(16, np.int64)
        d16 = _fp16_bits(_make_qx(scales, 16, 32, sw, Ls))
        sb = np.zeros(12, np.int64)
        for j in range(16):
            lv = Ls[j]
            if j < 8:
                sb[j] = lv & 0xF
            else:
                sb[j - 8] |= (lv & 0xF) << 4
            sb[8 + j % 4] |= (lv >> 4) << (2 * (j // 4))
        for j in range(16):
            lo = sb[j] & 0xF if j < 8 else (sb[j - 8] & 0xFF) >> 4
            s6 = (lo | (((sb[8 + j % 4] & 0xFF) >> (2 * (j // 4))) & 3) << 4) - 32
            d = np.float32(t16[d16] * np.float32(s6))
            if d == 0:
                continue
            for k in range(16):
                lq = _nearest_int(np.float32(xb[16 * j + k] / d))
                L[16 * j + k] = max(-4, min(3, lq)) + 4
        for m in range(32):
            o[m] = 0
        for j in range(QK_K):
            if L[j] > 3:
                o[j % 32] |= 1 << (j // 32)
                L[j] -= 4
        _pack_2bit_128(L, o, 32)
        for k in range(12):
            o[96 + k] = sb[k] & 0xFF
        _put_u16(o, 108, d16)


@njit(**_OPTS)
def _qk_affine_w(xb, q, nmax, L, t16, o):
    """quantize_row_q{4,5}_K_impl's search and scales: writes d, dmin, scales[12]; L gets the codes."""
    Laux = np.empty(32, np.int64)
    w = np.empty(32, np.float32)
    sw = np.empty(8, np.float32)
    scales = np.empty(8, np.float32)
    mins = np.empty(8, np.float32)
    sigma2 = np.float32(np.float32(np.float32(2) * _sum_sq(xb)) / np.float32(QK_K))
    for j in range(8):
        sw[j] = _sigma_weights(xb[32 * j : 32 * j + 32], q[32 * j : 32 * j + 32], sigma2, w)
        scales[j], mins[j] = _make_qkx3(xb[32 * j : 32 * j + 32], 32, nmax, w, L[32 * j : 32 * j + 32], Laux,
                                        np.float32(-0.9), np.float32(0.05), 36)  # fmt: skip
    Ls = np.empty(8, np.int64)
    Lm = np.empty(8, np.int64)
    d16 = _fp16_bits(_make_qp(scales, 8, 63, sw, Ls))
    m16 = _fp16_bits(_make_qp(mins, 8, 63, sw, Lm))
    if nmax == 31:  # quantize_row_q5_K_impl: MIN(63, ls), MIN(63, lm)
        for j in range(8):
            Ls[j] = min(63, Ls[j])
            Lm[j] = min(63, Lm[j])
    _put_u16(o, 0, d16)
    _put_u16(o, 2, m16)
    _k4_pack(Ls, Lm, o, 4)
    for j in range(8):  # get_scale_min_k4 on the bytes just written
        if j < 4:
            sc = o[4 + j] & 63
            mn = o[8 + j] & 63
        else:
            sc = (o[8 + j] & 0xF) | ((o[j] >> 6) << 4)
            mn = (o[8 + j] >> 4) | ((o[4 + j] >> 6) << 4)
        d = np.float32(t16[d16] * np.float32(sc))
        if d == 0:
            continue
        dm = np.float32(t16[m16] * np.float32(mn))
        for k in range(32):
            v = np.float32(np.float32(xb[32 * j + k] + dm) / d)
            L[32 * j + k] = max(0, min(nmax, _nearest_int(v)))


@njit(**_PAR)
def _quantize_q4_k_w(x, qw, out, t16):
    nb = qw.shape[0]
    for i in prange(x.shape[0]):
        o = out[i]
        L = np.empty(QK_K, np.int64)
        _qk_affine_w(x[i], qw[i % nb], 15, L, t16, o)
        for j in range(4):
            for k in range(32):
                o[16 + 32 * j + k] = (L[64 * j + k] | (L[64 * j + 32 + k] << 4)) & 0xFF


@njit(**_PAR)
def _quantize_q5_k_w(x, qw, out, t16):
    nb = qw.shape[0]
    for i in prange(x.shape[0]):
        o = out[i]
        L = np.empty(QK_K, np.int64)
        _qk_affine_w(x[i], qw[i % nb], 31, L, t16, o)
        for k in range(32):
            o[16 + k] = 0
        for j in range(4):
            for k in range(32):
                l1 = L[64 * j + k]
                l2 = L[64 * j + 32 + k]
                o[16 + k] |= (((l1 >> 4) & 1) << (2 * j)) | (((l2 >> 4) & 1) << (2 * j + 1))
                o[48 + 32 * j + k] = (l1 & 0xF) | ((l2 & 0xF) << 4)


@njit(**_PAR)
def _quantize_q6_k_w(x, qw, out, t16):
    """quantize_row_q6_K_impl: make_qx_quants(16, 32, x, L, 1, qw) per 16, then as the _ref."""
    nb = qw.shape[0]
    for i in prange(x.shape[0]):
        xb = x[i]
        q = qw[i % nb]
        o = out[i]
        L = np.empty(QK_K, np.int64)
        scales = np.empty(16, np.float32)
        for j in range(16):
            scales[j] = _make_qx(xb[16 * j : 16 * j + 16], 16, 32, q[16 * j : 16 * j + 16],
                                 L[16 * j : 16 * j + 16])
        q6_k_finish(xb, scales, L, o, t16)


# --------------------------------------------------------------------------- dispatch
_K_KERNELS = {
    "q2_k": (_quantize_q2_k_w, 84),
    "q3_k": (_quantize_q3_k_w, 110),
    "q4_k": (_quantize_q4_k_w, 144),
    "q5_k": (_quantize_q5_k_w, 176),
    "q6_k": (_quantize_q6_k_w, 210),
}


def quantize_rows_weighted(name: str, x: np.ndarray, qw: np.ndarray, row_size: int) -> np.ndarray:
    """``quantize_<name>(x, dst, nrow, n_per_row, qw)``: x C-contiguous finite float32 (nrow, n_per_row),
    qw float32 (n_per_row,) finite >= 0 (no validation here) -> uint8 (nrow, row_size)."""
    nrow, npr = x.shape
    out = np.empty((nrow, row_size), dtype=np.uint8)
    if out.size == 0:
        return out
    with np.errstate(all="ignore"):  # only matters under NUMBA_DISABLE_JIT=1
        if name in _K_KERNELS:
            kernel, tsz = _K_KERNELS[name]
            kernel(x.reshape(-1, QK_K), qw.reshape(-1, QK_K), out.reshape(-1, tsz), _FP16_TABLE)
        elif name in ("q4_0", "q5_0"):
            _quantize_q4_0_q5_0_w(x, qw, out, 8 if name == "q4_0" else 16)
        else:
            _quantize_q4_1_q5_1_w(x, qw, out, 15 if name == "q4_1" else 31)
    return out
