"""Numba kernels for ggml's grid quantizers: IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S and IQ1_M.

The exact twins of the NumPy references in :mod:`refquant.formats._iq_quant`, and
so of ggml's ``quantize_iq2_xxs``, ``quantize_iq2_xs``, ``quantize_iq2_s``,
``quantize_iq1_s`` and ``quantize_iq1_m`` (ggml-quants.c, ggml v0.20.2): float32
super-blocks of 256 and their importance weights in, uint8 blocks out. Each
kernel is a ``prange`` over super-blocks; inside one, the code follows
``quantize_row_<type>_impl`` statement by statement, including its C
conversions (``make_qp_quants`` stores ``nearest_int`` results into a
``uint8_t`` buffer, so a negative level wraps to 256 - k and is read back as
such), its strict comparisons (the first best candidate wins) and its sort
(glibc's ``qsort`` of 32 or 16 floats is a stable merge sort: an insertion sort
with ``>`` gives the same order).

The grid tables come from the caller (built by ``iq2xs_init_impl``'s rules in
:mod:`refquant.formats._iq_quant`): ``grid`` (g, 8) int8 points ``2*l + 1``,
``kmap`` (43692,) int32 (the grid index of an 8-level pattern ``u``, else
``-(offset + 1)`` into ``neigh``), ``neigh`` int32 (at each offset a count, then
that many grid indices).

Where ggml aborts (``GGML_ASSERT`` / ``GGML_ABORT``: no neighbour with a finite
distance, a pattern off the grid when the block is packed) the kernel sets
``status[block] = 1`` and the caller raises; the bytes of such a block are
undefined.

Float rules as in :mod:`refquant.kernels.cpu.ggml_quant`: every operation a
float32 operation in C's order, fastmath off (no FMA: libggml-base has none).
Nothing compiles at import.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .ggml_quant import _fp16_bits, _nearest_int, _put_u16

__all__ = ["IQ_QUANTIZE_KERNELS", "quantize_iq_blocks"]

QK_K = 256
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_HALF = np.float32(0.5)
_TENTH = np.float32(0.1)
_FLT_MAX = np.float32(3.4028234663852886e38)
_EPS15 = np.float32(1e-15)  # GROUP_MAX_EPS
_EPS_IQ2_S = np.float32(1e-8)  # GROUP_MAX_EPS_IQ2_S
_EPS_IQ1_M = np.float32(1e-7)  # GROUP_MAX_EPS_IQ1_M
_EPS_IQ1_S = np.float32(1e-12)  # GROUP_MAX_EPS_IQ1_S
_DELTA = np.float32(0.125)  # IQ1S_DELTA = IQ1M_DELTA
# {-1 + delta, delta, 1 + delta} and {-1 - delta, -delta, 1 - delta} (float32, exact)
_X_P = np.array([-0.875, 0.125, 1.125], np.float32)
_X_M = np.array([-1.125, -0.125, 0.875], np.float32)

_OPTS = dict(cache=True, nogil=True, error_model="numpy")
_PAR = dict(cache=True, nogil=True, error_model="numpy", parallel=True)


@njit(**_OPTS)
def _f(v):
    return np.float32(v)


@njit(**_OPTS)
def _max_c(a, b):
    """C's MAX(a, b): ``a > b ? a : b``."""
    return a if a > b else b


@njit(**_OPTS)
def _make_qp_quants(n, nmax, x, L, w):
    """make_qp_quants(n, nmax, x, L, quant_weights): the scale; L holds uint8_t values (0..255)."""
    mx = _ZERO
    for i in range(n):
        mx = _max_c(mx, x[i])
    if mx < _EPS15:
        for i in range(n):
            L[i] = 0
        return _ZERO
    fnmax = _f(nmax)
    iscale = _f(fnmax / mx)
    for i in range(n):
        L[i] = _nearest_int(_f(iscale * x[i])) & 0xFF
    scale = _f(_ONE / iscale)
    best_mse = _ZERO
    for i in range(n):
        diff = _f(x[i] - _f(scale * _f(L[i])))
        best_mse = _f(best_mse + _f(_f(w[i] * diff) * diff))
    for is_ in range(-4, 5):
        if is_ == 0:
            continue
        iscale_is = _f(_f(_f(_TENTH * _f(is_)) + fnmax) / mx)
        scale_is = _f(_ONE / iscale_is)
        mse = _ZERO
        for i in range(n):
            lv = min(nmax, _nearest_int(_f(iscale_is * x[i])))
            diff = _f(x[i] - _f(scale_is * _f(lv)))
            mse = _f(mse + _f(_f(w[i] * diff) * diff))
        if mse < best_mse:
            best_mse = mse
            iscale = iscale_is
    sumlx = _ZERO
    suml2 = _ZERO
    for i in range(n):
        lv = min(nmax, _nearest_int(_f(iscale * x[i])))
        L[i] = lv & 0xFF
        sumlx = _f(sumlx + _f(_f(w[i] * x[i]) * _f(lv)))
        suml2 = _f(suml2 + _f(_f(w[i] * _f(lv)) * _f(lv)))
    for _itry in range(5):
        n_changed = 0
        for i in range(n):
            wi = w[i]
            li = _f(L[i])
            slx = _f(sumlx - _f(_f(wi * x[i]) * li))
            sl2 = _f(suml2 - _f(_f(wi * li) * li))
            if slx > 0 and sl2 > 0:
                new_l = min(nmax, _nearest_int(_f(_f(x[i] * sl2) / slx)))
                if new_l != L[i]:
                    slx = _f(slx + _f(_f(wi * x[i]) * _f(new_l)))
                    sl2 = _f(sl2 + _f(_f(wi * _f(new_l)) * _f(new_l)))
                    if _f(_f(slx * slx) * suml2) > _f(_f(sumlx * sumlx) * sl2):
                        L[i] = new_l & 0xFF
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    return _f(sumlx / suml2) if suml2 > 0 else _ZERO


@njit(**_OPTS)
def _iq2_find_best_neighbour(neigh, off, grid, xval, waux, o, scale, L):
    """iq2_find_best_neighbour on xval[o:o+8]: the grid index (-1 where ggml asserts); L[o:o+8] set."""
    nn = neigh[off]
    best_d2 = _FLT_MAX
    gi = -1
    for j in range(1, nn + 1):
        g = neigh[off + j]
        d2 = _ZERO
        for i in range(8):
            diff = _f(_f(scale * _f(grid[g, i])) - xval[o + i])
            d2 = _f(d2 + _f(_f(waux[o + i] * diff) * diff))
        if d2 < best_d2:
            best_d2 = d2
            gi = g
    if gi >= 0:
        for i in range(8):
            L[o + i] = (grid[gi, i] - 1) // 2
    return gi


@njit(**_OPTS)
def _iq2_weights(xb, qwb, start, n, sigma2, has_qw, weight, waux):
    """weight = qw * sqrtf(sigma2 + x^2) (IQ2_S without an imatrix: 0.25*sigma2 + x^2); waux = sqrtf(weight)."""
    for i in range(n):
        v = xb[start + i]
        if has_qw:
            weight[i] = _f(qwb[start + i] * _f(np.sqrt(_f(sigma2 + _f(v * v)))))
        else:
            weight[i] = _f(_f(_f(0.25) * sigma2) + _f(v * v))
    for i in range(n):
        waux[i] = _f(np.sqrt(weight[i]))


@njit(**_OPTS)
def _iq2_signs(xb, start, k, weight, xval, even):
    """xval = |x| for group k of 8 (+ the signs byte); ``even``: flip the least important if odd."""
    nflip = 0
    s = 0
    for i in range(8):
        v = xb[start + 8 * k + i]
        if v >= 0:
            xval[8 * k + i] = v
        else:
            xval[8 * k + i] = -v
            nflip += 1
            s |= 1 << i
    if even and nflip % 2:
        imin = 0
        v0 = xb[start + 8 * k]
        mn = _f(_f(weight[8 * k] * v0) * v0)
        for i in range(1, 8):
            v = xb[start + 8 * k + i]
            ax = _f(_f(weight[8 * k + i] * v) * v)
            if ax < mn:
                mn = ax
                imin = i
        xval[8 * k + imin] = -xval[8 * k + imin]
        s ^= 1 << imin
    return s


@njit(**_OPTS)
def _iq2_sums(weight, xval, L, n):
    sumqx = _ZERO
    sumq2 = _ZERO
    for i in range(n):
        w = weight[i]
        q = _f(2 * L[i] + 1)
        sumqx = _f(sumqx + _f(_f(w * xval[i]) * q))
        sumq2 = _f(sumq2 + _f(_f(w * q) * q))
    return sumqx, sumq2


@njit(**_OPTS)
def _iq2_levels(idv, xval, k, L):
    """L[8k:8k+8] = clamp(nearest_int(0.5*(id*xval - 1)), 0, 2); returns the pattern u."""
    u = 0
    for i in range(8):
        lv = _nearest_int(_f(_HALF * _f(_f(idv * xval[8 * k + i]) - _ONE)))
        lv = max(0, min(2, lv))
        L[8 * k + i] = lv
        u |= lv << (2 * i)
    return u


@njit(**_OPTS)
def _pattern(L, k):
    """(uint16_t) of sum(L[8k+i] << 2i), for levels that may lie outside 0..2."""
    u = 0
    for i in range(8):
        u |= L[8 * k + i] << (2 * i)
    return u & 0xFFFF


@njit(**_OPTS)
def _iq2_sub_search(xval, weight, waux, nsub, scale, is_lo, is_hi, divisor,
                    grid, kmap, neigh, L, Laux, on_grid, on_grid_aux, only_off_grid):
    """The candidate-scale loop and final requantization shared by IQ2_XXS/XS/S.

    Returns (scale, ok). IQ2_XXS (only_off_grid False): the final pass runs over all
    groups whenever scale > 0 and sets L from the grid point; IQ2_XS/S (True): only over
    the groups whose chosen pattern was off the grid, and only if there is one.
    """
    ngr = nsub // 8
    best = _ZERO
    for k in range(ngr):
        on_grid[k] = True
    for is_ in range(is_lo, is_hi + 1):
        idv = _f(_f(_f(5.0) + _f(_f(is_) * _TENTH)) / divisor)
        this_scale = _f(_ONE / idv)
        for k in range(ngr):
            u = _iq2_levels(idv, xval, k, Laux)
            gi = kmap[u]
            on_grid_aux[k] = True
            if gi < 0:
                on_grid_aux[k] = False
                gi = _iq2_find_best_neighbour(neigh, -gi - 1, grid, xval, waux, 8 * k, this_scale, Laux)
                if gi < 0:
                    return scale, False
        sumqx, sumq2 = _iq2_sums(weight, xval, Laux, nsub)
        if sumq2 > 0 and _f(sumqx * sumqx) > _f(best * sumq2):
            scale = _f(sumqx / sumq2)
            best = _f(scale * sumqx)
            for i in range(nsub):
                L[i] = Laux[i]
            for k in range(ngr):
                on_grid[k] = on_grid_aux[k]
    if only_off_grid:
        n_off = 0
        for k in range(ngr):
            if not on_grid[k]:
                n_off += 1
        run = n_off > 0 and scale > 0
    else:
        run = scale > 0
    if run:
        idv = _f(_ONE / scale)
        for k in range(ngr):
            if only_off_grid and on_grid[k]:
                continue
            u = _iq2_levels(idv, xval, k, L)
            gi = kmap[u]
            if gi < 0:
                gi = _iq2_find_best_neighbour(neigh, -gi - 1, grid, xval, waux, 8 * k, scale, L)
                if gi < 0:
                    return scale, False
            if not only_off_grid:
                for i in range(8):
                    L[8 * k + i] = (grid[gi, i] - 1) // 2
        sumqx, sumq2 = _iq2_sums(weight, xval, L, nsub)
        if sumq2 > 0:
            scale = _f(sumqx / sumq2)
    return scale, True


@njit(**_PAR)
def _quantize_iq2_xxs(x, qw, out, grid, kmap, neigh, status):
    for ibl in prange(x.shape[0]):
        xbl = x[ibl]
        qwb = qw[ibl]
        o = out[ibl]
        status[ibl] = 0
        scales = np.zeros(8, np.float32)
        weight = np.zeros(32, np.float32)
        waux = np.zeros(32, np.float32)
        xval = np.zeros(32, np.float32)
        L = np.zeros(32, np.int64)
        Laux = np.zeros(32, np.int64)
        on_grid = np.zeros(4, np.bool_)
        on_grid_aux = np.zeros(4, np.bool_)
        signs = np.zeros(4, np.int64)
        q2 = np.zeros(16, np.int64)
        max_scale = _ZERO
        sumx2 = _ZERO
        for i in range(QK_K):
            sumx2 = _f(sumx2 + _f(xbl[i] * xbl[i]))
        sigma2 = _f(sumx2 / _f(QK_K))
        for ib in range(8):
            start = 32 * ib
            _iq2_weights(xbl, qwb, start, 32, sigma2, True, weight, waux)
            for k in range(4):
                signs[k] = _iq2_signs(xbl, start, k, weight, xval, True) & 127
            mx = xval[0]
            for i in range(1, 32):
                mx = _max_c(mx, xval[i])
            if mx < _EPS15:
                scales[ib] = 0
                continue
            scale = _make_qp_quants(32, 4, xval, L, weight)
            eff_max = _f(scale * _f(3.0))
            if eff_max <= 0:
                scales[ib] = 0
                continue
            scale, ok = _iq2_sub_search(xval, weight, waux, 32, scale, -6, 6, eff_max,
                                        grid, kmap, neigh, L, Laux, on_grid, on_grid_aux, False)
            if not ok:
                status[ibl] = 1
                break
            if scale < 0:
                scale = -scale
                for k in range(4):
                    signs[k] = (~signs[k]) & 127
            if not scale >= 0:  # GGML_ASSERT(scale >= 0): a NaN scale
                status[ibl] = 1
                break
            for k in range(4):
                u = _pattern(L, k)
                gi = kmap[u] if u < kmap.shape[0] else -1
                if gi < 0:
                    status[ibl] = 1
                    break
                q2[2 * ib] |= gi << (8 * k)
                q2[2 * ib + 1] |= signs[k] << (7 * k)
            if status[ibl]:
                break
            scales[ib] = scale
            max_scale = _max_c(max_scale, scale)
        for j in range(out.shape[1]):
            o[j] = 0
        if max_scale == 0:
            continue
        d = _f(max_scale / _f(31.0))
        _put_u16(o, 0, _fp16_bits(d))
        idv = _f(_ONE / d)
        for ib in range(8):
            lv = _nearest_int(_f(_HALF * _f(_f(idv * scales[ib]) - _ONE)))
            lv = max(0, min(15, lv))
            q2[2 * ib + 1] |= lv << 28
        for j in range(16):
            for b in range(4):
                o[2 + 4 * j + b] = (q2[j] >> (8 * b)) & 0xFF


@njit(**_PAR)
def _quantize_iq2_xs_s(x, qw, has_qw, out, grid, kmap, neigh, status, is_s):
    """IQ2_XS (is_s False) and IQ2_S (True): sub-blocks of 16, two groups of 8."""
    for ibl in prange(x.shape[0]):
        xbl = x[ibl]
        qwb = qw[ibl]
        o = out[ibl]
        status[ibl] = 0
        for j in range(out.shape[1]):
            o[j] = 0
        scales = np.zeros(16, np.float32)
        weight = np.zeros(16, np.float32)
        waux = np.zeros(16, np.float32)
        xval = np.zeros(16, np.float32)
        L = np.zeros(16, np.int64)
        Laux = np.zeros(16, np.int64)
        on_grid = np.zeros(2, np.bool_)
        on_grid_aux = np.zeros(2, np.bool_)
        signs = np.zeros(2, np.int64)
        q2 = np.zeros(32, np.int64)
        max_scale = _ZERO
        sumx2 = _ZERO
        for i in range(QK_K):
            sumx2 = _f(sumx2 + _f(xbl[i] * xbl[i]))
        if is_s:
            sigma2 = _f(_f(_f(2.0) * sumx2) / _f(QK_K))
        else:
            sigma2 = _f(sumx2 / _f(QK_K))
        eps = _EPS_IQ2_S if is_s else _EPS15
        for ib in range(16):
            start = 16 * ib
            _iq2_weights(xbl, qwb, start, 16, sigma2, has_qw, weight, waux)
            for k in range(2):
                s = _iq2_signs(xbl, start, k, weight, xval, not is_s)
                signs[k] = s if is_s else s & 127
            mx = xval[0]
            for i in range(1, 16):
                mx = _max_c(mx, xval[i])
            for i in range(16):
                L[i] = 0
            if mx < eps:
                scales[ib] = 0
                continue
            scale = _f(mx / _f(5.0))
            scale, ok = _iq2_sub_search(xval, weight, waux, 16, scale, -9, 9, mx,
                                        grid, kmap, neigh, L, Laux, on_grid, on_grid_aux, True)
            if not ok:
                status[ibl] = 1
                break
            if scale < 0:
                scale = -scale
                for k in range(2):
                    signs[k] = (~signs[k]) & (0xFF if is_s else 127)
            if not scale >= 0:  # GGML_ASSERT(scale >= 0): a NaN scale
                status[ibl] = 1
                break
            for k in range(2):
                u = _pattern(L, k)
                gi = kmap[u] if u < kmap.shape[0] else -1
                if gi < 0:
                    status[ibl] = 1
                    break
                if is_s:
                    i8 = 2 * ib + k
                    o[2 + i8] = gi & 255
                    o[2 + 64 + i8 // 4] |= (gi >> 8) << (2 * (i8 % 4))
                    o[2 + 32 + i8] = signs[k]
                else:
                    q2[2 * ib + k] = gi | (signs[k] << 9)
            if status[ibl]:
                break
            scales[ib] = scale
            max_scale = _max_c(max_scale, scale)
        if max_scale == 0:
            if is_s:
                continue
            for j in range(out.shape[1]):
                o[j] = 0
            continue
        d = _f(max_scale / _f(31.0))
        _put_u16(o, 0, _fp16_bits(_f(d * _f(0.9875)) if is_s else d))
        idv = _f(_ONE / d)
        soff = 2 + 64 + 8 if is_s else 2 + 64
        for ib in range(16):
            lv = _nearest_int(_f(_HALF * _f(_f(idv * scales[ib]) - _ONE)))
            lv = max(0, min(15, lv))
            if ib % 2 == 0:
                o[soff + ib // 2] = lv
            else:
                o[soff + ib // 2] |= lv << 4
        if not is_s:
            for j in range(32):
                _put_u16(o, 2 + 2 * j, q2[j])


@njit(**_OPTS)
def _stable_order(xb, start, n, idx):
    """idx = the order of xb[start:start+n] ascending, equal values in index order (glibc qsort)."""
    for j in range(n):
        idx[j] = j
    for j in range(1, n):
        key = idx[j]
        v = xb[start + key]
        m = j
        while m > 0 and xb[start + idx[m - 1]] > v:
            idx[m] = idx[m - 1]
            m -= 1
        idx[m] = key


@njit(**_OPTS)
def _iq1_find_best_neighbour2(neigh, off, grid, xb, o, weight, scale, xx, L):
    """iq1_find_best_neighbour2 on xb[o:o+8] (-1 where no neighbour has a distance < FLT_MAX)."""
    nn = neigh[off]
    best = _FLT_MAX
    gi = -1
    for j in range(1, nn + 1):
        g = neigh[off + j]
        d2 = _ZERO
        for i in range(8):
            q = xx[(grid[g, i] - 1) // 2]
            diff = _f(_f(scale * q) - xb[o + i])
            d2 = _f(d2 + _f(_f(weight[i] * diff) * diff))
        if d2 < best:
            best = d2
            gi = g
    # ggml then scans the whole grid reading xval[i] out of bounds: refused (status) instead
    if gi >= 0:
        for i in range(8):
            L[i] = (grid[gi, i] - 1) // 2
    return gi


@njit(**_PAR)
def _quantize_iq1_s(x, qw, out, grid, kmap, neigh, status):
    for ibl in prange(x.shape[0]):
        xbl = x[ibl]
        qwb = qw[ibl]
        o = out[ibl]
        status[ibl] = 0
        for j in range(out.shape[1]):
            o[j] = 0
        scales = np.zeros(8, np.float32)
        shifts = np.zeros(8, np.int64)
        weight = np.zeros(32, np.float32)
        sumx = np.zeros(33, np.float32)
        sumw = np.zeros(33, np.float32)
        idx = np.zeros(32, np.int64)
        L = np.zeros(32, np.int64)
        index = np.zeros(4, np.int64)
        qh = np.zeros(8, np.int64)
        max_scale = _ZERO
        sumx2 = _ZERO
        for i in range(QK_K):
            sumx2 = _f(sumx2 + _f(xbl[i] * xbl[i]))
        sigma2 = _f(_f(_f(2.0) * sumx2) / _f(QK_K))
        for ib in range(8):
            start = 32 * ib
            for i in range(32):
                v = xbl[start + i]
                weight[i] = _f(qwb[start + i] * _f(np.sqrt(_f(sigma2 + _f(v * v)))))
            mx = abs(xbl[start])
            for i in range(1, 32):
                mx = _max_c(mx, abs(xbl[start + i]))
            if mx < _EPS_IQ1_S:
                scales[ib] = 0
                shifts[ib] = 1
                continue
            _stable_order(xbl, start, 32, idx)
            sumx[0] = 0
            sumw[0] = 0
            for j in range(32):
                i = idx[j]
                sumx[j + 1] = _f(sumx[j] + _f(weight[i] * xbl[start + i]))
                sumw[j + 1] = _f(sumw[j] + weight[i])
            best_score = -_FLT_MAX
            scale = mx
            besti1 = -1
            besti2 = -1
            best_shift = 0
            for i1 in range(33):
                for i2 in range(i1, 33):
                    a = _f(sumx[i1] - sumx[0])
                    b = _f(sumx[i2] - sumx[i1])
                    c = _f(sumx[32] - sumx[i2])
                    wa = _f(sumw[i1] - sumw[0])
                    wb = _f(sumw[i2] - sumw[i1])
                    wc = _f(sumw[32] - sumw[i2])
                    for sh in range(2):
                        t = _X_P if sh == 0 else _X_M
                        sumqx = _f(_f(_f(a * t[0]) + _f(b * t[1])) + _f(c * t[2]))
                        sumq2 = _f(_f(_f(_f(wa * t[0]) * t[0]) + _f(_f(wb * t[1]) * t[1]))
                                   + _f(_f(wc * t[2]) * t[2]))
                        if sumq2 > 0 and _f(sumqx * sumqx) > _f(best_score * sumq2):
                            scale = _f(sumqx / sumq2)
                            best_score = _f(scale * sumqx)
                            besti1 = i1
                            besti2 = i2
                            best_shift = 1 if sh == 0 else -1
            if besti1 < 0 or besti2 < 0 or best_shift == 0:
                scales[ib] = 0
                shifts[ib] = 1
                continue
            for j in range(32):
                L[idx[j]] = 0 if j < besti1 else (1 if j < besti2 else 2)
            if scale < 0:
                for j in range(32):
                    L[j] = 2 - L[j]
                scale = -scale
                best_shift = -best_shift
            xx = _X_P if best_shift == 1 else _X_M
            all_on_grid = True
            for k in range(4):
                u = _pattern(L, k)
                gi = kmap[u]
                if gi < 0:
                    all_on_grid = False
                    gi = _iq1_find_best_neighbour2(neigh, -gi - 1, grid, xbl, start + 8 * k,
                                                   weight[8 * k:], scale, xx, L[8 * k:])
                    if gi < 0:
                        status[ibl] = 1
                        break
                index[k] = gi
            if status[ibl]:
                break
            if not all_on_grid:
                sumqx = _ZERO
                sumq2 = _ZERO
                for k in range(4):
                    for j in range(8):
                        w = weight[8 * k + j]
                        q = xx[(grid[index[k], j] - 1) // 2]
                        sumqx = _f(sumqx + _f(_f(w * q) * xbl[start + 8 * k + j]))
                        sumq2 = _f(sumq2 + _f(_f(w * q) * q))
                if sumqx > 0 and sumq2 > 0:
                    scale = _f(sumqx / sumq2)
            if not scale >= 0:  # GGML_ASSERT(scale >= 0): a NaN scale
                status[ibl] = 1
                break
            h = 0
            for k in range(4):
                o[2 + 4 * ib + k] = index[k] & 255
                h |= (index[k] >> 8) << (3 * k)
            qh[ib] = h
            scales[ib] = scale
            shifts[ib] = best_shift
            max_scale = _max_c(max_scale, scale)
        if max_scale != 0:
            d = _f(max_scale / _f(15.0))
            _put_u16(o, 0, _fp16_bits(_f(d * _f(1.125))))
            idv = _f(_ONE / d)
            for ib in range(8):
                lv = _nearest_int(_f(_HALF * _f(_f(idv * scales[ib]) - _ONE)))
                lv = max(0, min(7, lv))
                if shifts[ib] == -1:
                    lv |= 8
                qh[ib] |= lv << 12
        for ib in range(8):
            _put_u16(o, 34 + 2 * ib, qh[ib])


@njit(**_PAR)
def _quantize_iq1_m(x, qw, has_qw, out, grid, kmap, neigh, status):
    masks = np.array([0x00, 0x80, 0x08, 0x88], np.int64)
    for ibl in prange(x.shape[0]):
        xbl = x[ibl]
        qwb = qw[ibl]
        o = out[ibl]  # qs[32] | qh[16] | scales[8]
        status[ibl] = 0
        for j in range(out.shape[1]):
            o[j] = 0
        scales = np.zeros(16, np.float32)
        shifts = np.zeros(16, np.int64)
        weight = np.zeros(16, np.float32)
        idx = np.zeros(16, np.int64)
        L = np.zeros(16, np.int64)
        index = np.zeros(2, np.int64)
        sumqx = np.zeros(4, np.float32)
        sumq2 = np.zeros(4, np.float32)
        sc = np.zeros(4, np.int64)
        max_scale = _ZERO
        sumx2 = _ZERO
        for i in range(QK_K):
            sumx2 = _f(sumx2 + _f(xbl[i] * xbl[i]))
        sigma2 = _f(_f(_f(2.0) * sumx2) / _f(QK_K))
        for ib in range(16):
            start = 16 * ib
            for i in range(16):
                v = xbl[start + i]
                if has_qw:
                    weight[i] = _f(qwb[start + i] * _f(np.sqrt(_f(sigma2 + _f(v * v)))))
                else:
                    weight[i] = _f(v * v)
            mx = abs(xbl[start])
            for i in range(1, 16):
                mx = _max_c(mx, abs(xbl[start + i]))
            if mx < _EPS_IQ1_M:
                scales[ib] = 0
                shifts[ib] = 0
                continue
            _stable_order(xbl, start, 16, idx)
            best_score = -_FLT_MAX
            scale = mx
            besti1 = -1
            besti2 = -1
            best_k = -1
            for i1 in range(17):
                for i2 in range(i1, 17):
                    for k in range(4):
                        sumqx[k] = 0
                        sumq2[k] = 0
                    for j in range(16):
                        i = idx[j]
                        t = 0 if j < i1 else (1 if j < i2 else 2)
                        w = weight[i]
                        v = xbl[start + i]
                        for k in range(4):
                            if i < 8:
                                tab = _X_P if k < 2 else _X_M
                            else:
                                tab = _X_P if k % 2 == 0 else _X_M
                            sumqx[k] = _f(sumqx[k] + _f(_f(w * tab[t]) * v))
                            sumq2[k] = _f(sumq2[k] + _f(_f(w * tab[t]) * tab[t]))
                    for k in range(4):
                        if sumq2[k] > 0 and _f(sumqx[k] * sumqx[k]) > _f(best_score * sumq2[k]):
                            scale = _f(sumqx[k] / sumq2[k])
                            best_score = _f(scale * sumqx[k])
                            besti1 = i1
                            besti2 = i2
                            best_k = k
            if besti1 < 0 or besti2 < 0 or best_k < 0:
                scales[ib] = 0
                shifts[ib] = 0
                continue
            for j in range(16):
                L[idx[j]] = 0 if j < besti1 else (1 if j < besti2 else 2)
            if scale < 0:
                for j in range(16):
                    L[j] = 2 - L[j]
                scale = -scale
                best_k = 3 - best_k
            all_on_grid = True
            for k in range(2):
                if k == 0:
                    xx = _X_P if best_k < 2 else _X_M
                else:
                    xx = _X_P if best_k % 2 == 0 else _X_M
                u = _pattern(L, k)
                gi = kmap[u]
                if gi < 0:
                    all_on_grid = False
                    gi = _iq1_find_best_neighbour2(neigh, -gi - 1, grid, xbl, start + 8 * k,
                                                   weight[8 * k:], scale, xx, L[8 * k:])
                    if gi < 0:
                        status[ibl] = 1
                        break
                index[k] = gi
            if status[ibl]:
                break
            if not all_on_grid:
                sqx = _ZERO
                sq2 = _ZERO
                for k in range(2):
                    if k == 0:
                        xx = _X_P if best_k < 2 else _X_M
                    else:
                        xx = _X_P if best_k % 2 == 0 else _X_M
                    for j in range(8):
                        w = weight[8 * k + j]
                        q = xx[(grid[index[k], j] - 1) // 2]
                        sqx = _f(sqx + _f(_f(w * q) * xbl[start + 8 * k + j]))
                        sq2 = _f(sq2 + _f(_f(w * q) * q))
                if sqx > 0 and sq2 > 0:
                    scale = _f(sqx / sq2)
            if not scale >= 0:  # GGML_ASSERT(scale >= 0): a NaN scale
                status[ibl] = 1
                break
            o[2 * ib] = index[0] & 255
            o[2 * ib + 1] = index[1] & 255
            o[32 + ib] = (index[0] >> 8) | ((index[1] >> 8) << 4)
            scales[ib] = scale
            shifts[ib] = best_k
            max_scale = _max_c(max_scale, scale)
        if max_scale == 0:
            continue
        d = _f(max_scale / _f(15.0))
        idv = _f(_ONE / d)
        sqx = _ZERO
        sq2 = _ZERO
        for ib in range(16):
            start = 16 * ib
            lv = _nearest_int(_f(_HALF * _f(_f(idv * scales[ib]) - _ONE)))
            lv = max(0, min(7, lv))
            sc[ib // 4] |= lv << (3 * (ib % 4))
            o[32 + ib] |= masks[shifts[ib]]
            for i in range(16):
                v = xbl[start + i]
                if has_qw:
                    weight[i] = _f(qwb[start + i] * _f(np.sqrt(_f(sigma2 + _f(v * v)))))
                else:
                    weight[i] = _f(v * v)
            for k in range(2):
                if k == 0:
                    xx = _X_P if shifts[ib] < 2 else _X_M
                else:
                    xx = _X_P if shifts[ib] % 2 == 0 else _X_M
                g = np.int64(o[2 * ib + k]) + ((np.int64(o[32 + ib]) << (8 - 4 * k)) & 0x700)
                for j in range(8):
                    w = weight[8 * k + j]
                    q = _f(xx[(grid[g, j] - 1) // 2] * _f(2 * lv + 1))
                    sqx = _f(sqx + _f(_f(w * q) * xbl[start + 8 * k + j]))
                    sq2 = _f(sq2 + _f(_f(w * q) * q))
        if sq2 > 0:
            d = _f(sqx / sq2)
        s = _fp16_bits(_f(d * _f(1.1125)))
        sc[0] |= (s & 0x000F) << 12
        sc[1] |= (s & 0x00F0) << 8
        sc[2] |= (s & 0x0F00) << 4
        sc[3] |= s & 0xF000
        for j in range(4):
            _put_u16(o, 48 + 2 * j, sc[j])


def _run_iq2_xxs(x, qw, has_qw, out, grid, kmap, neigh, status):
    _quantize_iq2_xxs(x, qw, out, grid, kmap, neigh, status)


def _run_iq2_xs(x, qw, has_qw, out, grid, kmap, neigh, status):
    _quantize_iq2_xs_s(x, qw, True, out, grid, kmap, neigh, status, False)


def _run_iq2_s(x, qw, has_qw, out, grid, kmap, neigh, status):
    _quantize_iq2_xs_s(x, qw, has_qw, out, grid, kmap, neigh, status, True)


def _run_iq1_s(x, qw, has_qw, out, grid, kmap, neigh, status):
    _quantize_iq1_s(x, qw, out, grid, kmap, neigh, status)


def _run_iq1_m(x, qw, has_qw, out, grid, kmap, neigh, status):
    _quantize_iq1_m(x, qw, has_qw, out, grid, kmap, neigh, status)


#: ggml type -> callable(x, qw, has_qw, out, grid, kmap, neigh, status)
IQ_QUANTIZE_KERNELS = {
    "iq2_xxs": _run_iq2_xxs,
    "iq2_xs": _run_iq2_xs,
    "iq2_s": _run_iq2_s,
    "iq1_s": _run_iq1_s,
    "iq1_m": _run_iq1_m,
}


def quantize_iq_blocks(name, x, qw, type_size, grid, kmap, neigh):
    """``(n, 256)`` float32 and weights ``(n, 256)`` (or None) -> (``(n, type_size)`` uint8, status).

    ``status[i]`` is 1 where ggml would abort on block i (see the module docstring).
    """
    n = x.shape[0]
    out = np.zeros((n, type_size), dtype=np.uint8)
    status = np.zeros(n, dtype=np.int8)
    has_qw = qw is not None
    q = qw if has_qw else np.zeros((n, QK_K), np.float32)
    if n:
        with np.errstate(all="ignore"):
            IQ_QUANTIZE_KERNELS[name](x, q, has_qw, out, grid, kmap, neigh, status)
    return out, status
