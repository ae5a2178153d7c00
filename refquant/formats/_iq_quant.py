"""ggml's grid quantizers IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M: tables and the NumPy reference.

``quantize_iq2_xxs``, ``quantize_iq2_xs``, ``quantize_iq2_s``, ``quantize_iq1_s`` and
``quantize_iq1_m`` of ggml-quants.c (ggml v0.20.2, commit 8c63e709: the library of
libggml-python 0.20.2.post1), vectorised over sub-blocks: every float operation a
float32 operation in C's order, every C accumulation a sequential float32 sum,
every search's "first strictly better candidate wins" kept. The Numba twins are in
:mod:`refquant.kernels.cpu.ggml_iq_quant` (bit-identical; tested).

Common shape of the IQ2 searches (``quantize_row_iq2_*_impl``), per sub-block of
32 (IQ2_XXS) or 16 weights: importance ``w = qw sqrt(sigma2 + x^2)``; signs folded
into ``|x|`` (IQ2_XXS / IQ2_XS store 7 sign bits per 8 and make the count of
minus signs even by flipping the element of least ``w x^2``); for candidate
inverse scales ``(5 + 0.1 t)/m`` the levels ``l = clamp(nearest_int((x/s - 1)/2), 0, 2)``
per group of 8, a pattern that is not a grid point replaced by its best
neighbour (smallest ``sum sqrt(w) (s q - x)^2``, ``q = 2l + 1``); the weighted fit
``s = sum w x q / sum w q^2`` kept when strictly better; a final requantization
at the best scale. IQ1_S / IQ1_M split the sorted sub-block exhaustively into
three level groups (``-1 +- delta, +- delta, 1 +- delta``) and snap to the 2048-point
grid by weighted distance.

Where ggml aborts (``GGML_ASSERT`` / ``GGML_ABORT``: a neighbour search finds no
finite distance, a NaN scale; reached only when float32 sums of ``w x^2``
overflow, |x| around 1e19 and beyond) refquant raises :class:`RefquantError`.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from .._errors import RefquantError
from ..kernels._backend import resolve_backend
from . import _iq_grids
from .ggml import KERNEL_THRESHOLD, _f, _fp16_bits, _nearest_int, _seqsum, _u16_bytes

_F32 = np.float32
_FLT_MAX = np.finfo(_F32).max
_X_P = np.array([-0.875, 0.125, 1.125], _F32)  # {-1 + IQ1S_DELTA, IQ1S_DELTA, 1 + IQ1S_DELTA}
_X_M = np.array([-1.125, -0.125, 0.875], _F32)  # {-1 - IQ1S_DELTA, -IQ1S_DELTA, 1 - IQ1S_DELTA}

QK_K = 256
_CHUNK = 256  # blocks per NumPy pass (the neighbour searches hold ~blocks * 300 * 8 floats)
_NO_DIST = 32767  # above every squared distance (<= 8 * 6^2)
KMAP_SIZE = 43692  # iq2xs_init_impl: kmap_size (every pattern of 8 levels 0..2 is below it)

# type -> (kgrid table, nwant): iq2xs_init_impl's grid_size and nwant
_INIT = {
    "iq2_xxs": ("KGRID_2BIT_256", 2),
    "iq2_xs": ("KGRID_2BIT_512", 2),
    "iq2_s": ("KGRID_2BIT_1024", 1),
    "iq1_s": ("KGRID_1BIT_2048", 3),
    "iq1_m": ("KGRID_1BIT_2048", 3),
}


def _levels(codes: np.ndarray) -> np.ndarray:
    """(n,) patterns -> (n, 8) levels l_i = (code >> 2i) & 3."""
    return (codes[:, None] >> (2 * np.arange(8))) & 3


@cache
def iq2xs_tables(name: str):
    """``iq2xs_init_impl(type)``: (grid, kmap, neigh) for one grid quantizer.

    ``grid``: (g, 8) int8, the points ``2*l + 1`` of the kgrid table. ``kmap``: (43692,)
    int32, for each pattern ``u = sum(l_i << 2i)`` the grid index whose levels are
    ``l``, else ``-(offset + 1)``: at ``neigh[offset]`` the count n, then n grid indices,
    the points nearest to ``2*l + 1`` in squared distance, ordered by (distance, index)
    (qsort with ``iq2_compare_func``), all those at the ``nwant`` smallest distances.
    Offsets follow the patterns in increasing order.
    """
    table, nwant = _INIT[name]
    kgrid = np.asarray(getattr(_iq_grids, table), dtype=np.int64)
    grid = (2 * _levels(kgrid) + 1).astype(np.int8)
    kmap = np.full(KMAP_SIZE, -1, dtype=np.int64)
    kmap[kgrid] = np.arange(kgrid.size)
    off_grid = np.flatnonzero(kmap < 0)
    g = grid.astype(np.int64)
    g2 = (g * g).sum(axis=1)
    parts = []
    counter = 0
    for start in range(0, off_grid.size, 2048):
        pts = off_grid[start : start + 2048]
        pos = 2 * _levels(pts) + 1
        # squared distances, exact in float64 (integers below 2^10), through BLAS
        cross = (pos.astype(np.float64) @ g.T.astype(np.float64)).astype(np.int64)
        d2 = ((pos * pos).sum(axis=1)[:, None] + g2[None, :] - 2 * cross).astype(np.int16)  # <= 288
        # the nwant smallest distinct distances of each row (all rows when there are fewer)
        cut = d2.min(axis=1)
        for _ in range(nwant - 1):
            cut = np.where(d2 > cut[:, None], d2, np.int16(_NO_DIST)).min(axis=1)
        keep = d2 <= cut[:, None]
        counts = keep.sum(axis=1)
        r, j = np.nonzero(keep)
        order = np.lexsort((j, d2[r, j], r))  # by pattern, then (distance, index): C's qsort order
        # each pattern's slice: its count, then its neighbours
        heads = np.concatenate([[0], np.cumsum(1 + counts)[:-1]])
        flat = np.empty(int((1 + counts).sum()), np.int64)
        flat[heads] = counts
        rs = r[order]
        flat[np.arange(rs.size) + rs + 1] = j[order]
        parts.append(flat)
        kmap[pts] = -(counter + heads + 1)
        counter += flat.size
    neigh = np.concatenate(parts).astype(np.int32)
    grid.setflags(write=False)
    kmap = kmap.astype(np.int32)
    kmap.setflags(write=False)
    neigh.setflags(write=False)
    return grid, kmap, neigh


@cache
def _padded_neighbours(name: str) -> np.ndarray:
    """The neighbour lists of :func:`iq2xs_tables` as (43692, width) int64, padded with -1."""
    _, kmap, neigh = iq2xs_tables(name)
    off = np.flatnonzero(kmap < 0)
    start = -kmap[off].astype(np.int64) - 1
    counts = neigh[start].astype(np.int64)
    out = np.full((KMAP_SIZE, int(counts.max())), -1, np.int64)
    cols = np.arange(out.shape[1])
    have = cols[None, :] < counts[:, None]
    src = np.where(have, start[:, None] + 1 + cols[None, :], 0)
    out[off] = np.where(have, neigh[src], -1)
    out.setflags(write=False)
    return out


def _aborts(what: str) -> RefquantError:
    return RefquantError(
        f"x: {what} (a float32 overflow of the weighted sums: |x| too large): ggml aborts "
        "(GGML_ASSERT) on this input, so there are no bytes to reproduce"
    )


def _first_min(d2: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Index of C's ``if (d2 < best) {best = d2; j}`` from best = FLT_MAX along the last axis; -1 if none."""
    d2 = np.where(valid & (d2 < _FLT_MAX), d2, np.inf)
    j = np.argmin(d2, axis=-1)
    ok = np.isfinite(np.take_along_axis(d2, j[..., None], axis=-1)[..., 0])
    return np.where(ok, j, -1)


def _c_max(v: np.ndarray, start=None) -> np.ndarray:
    """C's ``m = MAX(m, v[i])`` (``m > v ? m : v``) along axis 1, from ``start`` (default v[:, 0])."""
    m = v[:, 0] if start is None else start
    for i in range(0 if start is not None else 1, v.shape[1]):
        m = np.where(m > v[:, i], m, v[:, i]).astype(_F32)
    return m


def _pattern(L: np.ndarray) -> np.ndarray:
    """(..., 8) levels -> (uint16_t) sum(l_i << 2i)."""
    return (L << (2 * np.arange(8))).sum(axis=-1) & 0xFFFF


# --------------------------------------------------------------------------- IQ2
def _iq2_best_neighbour(name, u, xv, wv, scale):
    """iq2_find_best_neighbour for rows of 8: the grid index (-1: ggml asserts)."""
    grid, _, _ = iq2xs_tables(name)
    cand = _padded_neighbours(name)[u]  # (r, m)
    q = grid[np.where(cand >= 0, cand, 0)].astype(_F32)  # (r, m, 8)
    diff = scale[:, None, None] * q - xv[:, None, :]
    t = (wv[:, None, :] * diff) * diff
    d2 = np.zeros(cand.shape, _F32)
    for i in range(8):
        d2 = d2 + t[:, :, i]
    j = _first_min(d2, cand >= 0)
    return np.where(j >= 0, np.take_along_axis(cand, np.maximum(j, 0)[:, None], axis=1)[:, 0], -1)


def _snap(name, lv, scale, xg, wg):
    """Levels (m, ngr, 8) -> on-grid levels at ``scale``, and whether each group was on the grid."""
    grid, kmap, _ = iq2xs_tables(name)
    u = _pattern(lv)
    on = kmap[u] >= 0
    if not on.all():
        r, k = np.nonzero(~on)
        found = _iq2_best_neighbour(name, u[r, k], xg[r, k], wg[r, k], scale[r])
        if (found < 0).any():
            raise _aborts("iq2_find_best_neighbour finds no grid point with a finite distance")
        lv = lv.copy()
        lv[r, k] = (grid[found].astype(np.int64) - 1) // 2
    return lv, on


def _iq2_fit(weight, xval, L):
    q = (2 * L + 1).astype(_F32)
    return _seqsum((weight * xval) * q), _seqsum((weight * q) * q)


def _iq2_levels(idv, xval):
    return np.clip(_nearest_int(_f(0.5) * (idv[:, None] * xval - _f(1))), 0, 2)


def _iq2_search(name, xval, weight, waux, scale, divisor, steps, L, only_off_grid):
    """The candidate-scale loop and the final requantization: (scale, L) of rows of 16 or 32.

    IQ2_XXS (``only_off_grid`` False): the final pass requantizes every group when scale > 0;
    IQ2_XS / IQ2_S: only the groups whose kept pattern was off the grid, when there is one.
    """
    m, nsub = xval.shape
    ngr = nsub // 8
    xg = xval.reshape(m, ngr, 8)
    wg = waux.reshape(m, ngr, 8)
    best = np.zeros(m, _F32)
    L = L.copy()
    on_grid = np.ones((m, ngr), bool)
    for step in steps:
        idv = (_f(5) + _f(step) * _f(0.1)) / divisor
        this_scale = _f(1) / idv
        laux, on = _snap(name, _iq2_levels(idv, xval).reshape(m, ngr, 8), this_scale, xg, wg)
        laux = laux.reshape(m, nsub)
        sumqx, sumq2 = _iq2_fit(weight, xval, laux)
        acc = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
        scale = np.where(acc, sumqx / sumq2, scale).astype(_F32)
        best = np.where(acc, scale * sumqx, best).astype(_F32)
        L = np.where(acc[:, None], laux, L)
        on_grid = np.where(acc[:, None], on, on_grid)
    run = scale > 0
    if only_off_grid:
        run &= ~on_grid.all(axis=1)
    r = np.flatnonzero(run)
    if r.size:
        lv, _ = _snap(name, _iq2_levels(_f(1) / scale[r], xval[r]).reshape(r.size, ngr, 8), scale[r],
                      xg[r], wg[r])
        if only_off_grid:
            lv = np.where(on_grid[r][:, :, None], L[r].reshape(r.size, ngr, 8), lv)
        L[r] = lv.reshape(r.size, nsub)
        sumqx, sumq2 = _iq2_fit(weight[r], xval[r], L[r])
        scale[r] = np.where(sumq2 > 0, sumqx / sumq2, scale[r])
    return scale, L


def _make_qp_quants(x, nmax, w):
    """make_qp_quants(n, nmax, x, L, quant_weights) on rows: (scale, L as the uint8_t values)."""
    m, n = x.shape
    mx = _c_max(x, np.zeros(m, _F32))
    zero = mx < _f(1e-15)
    mx = np.where(zero, _f(1), mx).astype(_F32)
    fn = _f(nmax)
    iscale = (fn / mx).astype(_F32)
    L = _nearest_int(iscale[:, None] * x) & 0xFF
    sc = _f(1) / iscale
    diff = x - sc[:, None] * L.astype(_F32)
    best_mse = _seqsum((w * diff) * diff)
    for step in (-4, -3, -2, -1, 1, 2, 3, 4):
        iscale_is = ((_f(0.1) * _f(step) + fn) / mx).astype(_F32)
        scale_is = _f(1) / iscale_is
        lv = np.minimum(nmax, _nearest_int(iscale_is[:, None] * x))
        diff = x - scale_is[:, None] * lv.astype(_F32)
        mse = _seqsum((w * diff) * diff)
        better = mse < best_mse
        best_mse = np.where(better, mse, best_mse).astype(_F32)
        iscale = np.where(better, iscale_is, iscale).astype(_F32)
    lv = np.minimum(nmax, _nearest_int(iscale[:, None] * x))
    L = lv & 0xFF
    lf = lv.astype(_F32)
    sumlx = _seqsum((w * x) * lf)
    suml2 = _seqsum((w * lf) * lf)
    active = np.ones(m, bool)
    for _ in range(5):
        changed = np.zeros(m, np.int64)
        for i in range(n):
            wi, xi = w[:, i], x[:, i]
            li = L[:, i].astype(_F32)
            slx = sumlx - (wi * xi) * li
            sl2 = suml2 - (wi * li) * li
            new_l = np.minimum(nmax, _nearest_int((xi * sl2) / slx))
            cand = active & (slx > 0) & (sl2 > 0) & (new_l != L[:, i])
            nf = new_l.astype(_F32)
            slx = slx + (wi * xi) * nf
            sl2 = sl2 + (wi * nf) * nf
            acc = cand & ((slx * slx) * suml2 > (sumlx * sumlx) * sl2)
            L[:, i] = np.where(acc, new_l & 0xFF, L[:, i])
            sumlx = np.where(acc, slx, sumlx).astype(_F32)
            suml2 = np.where(acc, sl2, suml2).astype(_F32)
            changed += acc
        active &= changed > 0
    scale = np.where(suml2 > 0, sumlx / suml2, _f(0)).astype(_F32)
    return np.where(zero, _f(0), scale).astype(_F32), np.where(zero[:, None], 0, L)


def _iq2_weights(x, qw, nsub, sigma_twice, name):
    """(xb, weight, waux) for sub-blocks of ``nsub``: ``qw sqrtf(sigma2 + x^2)`` (IQ2_S without
    an imatrix: ``0.25 sigma2 + x^2``); sigma2 = (2*)sum(x^2)/256 per super-block."""
    n = x.shape[0]
    xb = x.reshape(-1, nsub)
    sumx2 = _seqsum(x * x)
    sigma2 = ((_f(2) * sumx2 if sigma_twice else sumx2) / _f(QK_K)).astype(_F32)
    s2 = np.repeat(sigma2, QK_K // nsub)[:, None]
    if qw is None:
        weight = (_f(0.25) * s2 + xb * xb).astype(_F32)
    else:
        weight = (qw.reshape(n * (QK_K // nsub), nsub) * np.sqrt(s2 + xb * xb)).astype(_F32)
    return xb, weight, np.sqrt(weight)


def _iq2_signs(xb, weight, even):
    """(xval, sign bits per group of 8): |x|; ``even``: an odd count of minus signs in a group
    flips the first element of least ``w x^2`` (its xval negated, its bit toggled)."""
    m, nsub = xb.shape
    neg = ~(xb >= 0)
    xval = np.where(neg, -xb, xb).astype(_F32)
    bits = (neg.reshape(m, -1, 8).astype(np.int64) << np.arange(8)).sum(axis=2)
    if even:
        g = ((weight * xb) * xb).reshape(m, -1, 8)
        imin = np.zeros(g.shape[:2], np.int64)
        mn = g[:, :, 0]
        for i in range(1, 8):
            lt = g[:, :, i] < mn
            mn = np.where(lt, g[:, :, i], mn)
            imin = np.where(lt, i, imin)
        odd = (neg.reshape(m, -1, 8).sum(axis=2) % 2) == 1
        r, k = np.nonzero(odd)
        xval[r, 8 * k + imin[r, k]] *= _f(-1)
        bits = np.where(odd, bits ^ (1 << imin), bits)
    return xval, bits


def _iq2_finish(scale, bits, L, mask, skip, name):
    """Positive scale (flipping every sign where it came out negative) and the grid indices."""
    if np.isnan(scale[~skip]).any():
        raise _aborts("a sub-block's fitted scale is NaN (GGML_ASSERT(scale >= 0))")
    neg = scale < 0
    scale = np.where(neg, -scale, scale).astype(_F32)
    bits = np.where(neg[:, None], ~bits & mask, bits & mask)
    _, kmap, _ = iq2xs_tables(name)
    u = _pattern(L.reshape(L.shape[0], -1, 8))
    gi = kmap[np.minimum(u, KMAP_SIZE - 1)]
    if ((gi < 0) | (u >= KMAP_SIZE))[~skip].any():
        raise _aborts("a sub-block's levels are not a grid point (GGML_ABORT)")
    scale = np.where(skip, _f(0), scale).astype(_F32)
    return scale, bits, np.where(skip[:, None], 0, gi).astype(np.int64)


def _scale_codes(scales, max_scale, div, top):
    """d = max_scale/div and the codes clamp(nearest_int(0.5*(s/d - 1)), 0, top) (d = 1 where 0)."""
    zero = ~(max_scale != 0)
    d = (np.where(zero, _f(1), max_scale) / _f(div)).astype(_F32)
    idv = _f(1) / d
    codes = np.clip(_nearest_int(_f(0.5) * (idv[:, None] * scales - _f(1))), 0, top)
    return d, codes, zero


def quantize_iq2_xxs(x, qw):
    """quantize_iq2_xxs on (n, 256) blocks with weights (n, 256): (n, 66) bytes."""
    n = x.shape[0]
    xb, weight, waux = _iq2_weights(x, qw, 32, False, "iq2_xxs")
    xval, bits = _iq2_signs(xb, weight, True)
    skip = _c_max(xval) < _f(1e-15)
    scale, L = _make_qp_quants(xval, 4, weight)
    eff_max = (scale * _f(3)).astype(_F32)
    skip |= eff_max <= 0
    act = np.flatnonzero(~skip)
    scale_a, L_a = _iq2_search("iq2_xxs", xval[act], weight[act], waux[act], scale[act], eff_max[act],
                               range(-6, 7), L[act], False)
    scale[act] = scale_a
    L[act] = L_a
    scale, bits, gi = _iq2_finish(scale, bits, L, 127, skip, "iq2_xxs")
    bits = np.where(skip[:, None], 0, bits)
    w0 = (gi << (8 * np.arange(4))).sum(axis=1).reshape(n, 8)
    w1 = (bits << (7 * np.arange(4))).sum(axis=1).reshape(n, 8)
    scales = scale.reshape(n, 8)
    d, codes, zero = _scale_codes(scales, _c_max(scales, np.zeros(n, _F32)), 31, 15)
    q2 = np.stack([w0, w1 | (codes << 28)], axis=2).reshape(n, 16)
    q2[zero] = 0
    dh = np.where(zero, _f(0), d).astype(_F32)
    return np.concatenate(
        [_u16_bytes(_fp16_bits(dh)), np.ascontiguousarray(q2.astype("<u4")).view(np.uint8)], axis=1
    )


def _iq2_16(x, qw, name):
    """IQ2_XS / IQ2_S's per-16 search: (scale, bits, gi, skip) of rows of 16."""
    is_s = name == "iq2_s"
    xb, weight, waux = _iq2_weights(x, qw, 16, is_s, name)
    xval, bits = _iq2_signs(xb, weight, not is_s)
    mx = _c_max(xval)
    skip = mx < _f(1e-8 if is_s else 1e-15)  # GROUP_MAX_EPS_IQ2_S, GROUP_MAX_EPS
    L = np.zeros(xval.shape, np.int64)
    scale = np.zeros(xval.shape[0], _F32)
    act = np.flatnonzero(~skip)
    scale[act], L[act] = _iq2_search(name, xval[act], weight[act], waux[act], mx[act] / _f(5), mx[act],
                                     range(-9, 10), L[act], True)
    scale, bits, gi = _iq2_finish(scale, bits, L, 255 if is_s else 127, skip, name)
    return scale, bits, gi, skip


def _nibbles(codes):
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)


def quantize_iq2_xs(x, qw):
    """quantize_iq2_xs on (n, 256) blocks with weights (n, 256): (n, 74) bytes."""
    n = x.shape[0]
    scale, bits, gi, skip = _iq2_16(x, qw, "iq2_xs")
    q2 = np.where(skip[:, None], 0, gi | (bits << 9)).reshape(n, 32)
    scales = scale.reshape(n, 16)
    d, codes, zero = _scale_codes(scales, _c_max(scales, np.zeros(n, _F32)), 31, 15)
    out = np.concatenate(
        [_u16_bytes(_fp16_bits(d)), np.ascontiguousarray(q2.astype("<u2")).view(np.uint8), _nibbles(codes)],
        axis=1,
    )
    out[zero] = 0
    return out


def quantize_iq2_s(x, qw):
    """quantize_iq2_s on (n, 256) blocks, weights (n, 256) or None: (n, 82) bytes."""
    n = x.shape[0]
    scale, bits, gi, skip = _iq2_16(x, qw, "iq2_s")
    gi = gi.reshape(n, 32)
    qs = np.where(skip.reshape(n, 16).repeat(2, axis=1), 0, gi & 255)
    sg = np.where(skip[:, None], 0, bits).reshape(n, 32)
    qh = ((gi >> 8).reshape(n, 8, 4) << (2 * np.arange(4))).sum(axis=2)
    scales = scale.reshape(n, 16)
    d, codes, zero = _scale_codes(scales, _c_max(scales, np.zeros(n, _F32)), 31, 15)
    dh = np.where(zero, _f(0), d * _f(0.9875)).astype(_F32)
    sc = np.where(zero[:, None], 0, _nibbles(codes))
    return np.concatenate(
        [_u16_bytes(_fp16_bits(dh)), qs.astype(np.uint8), sg.astype(np.uint8), qh.astype(np.uint8),
         sc.astype(np.uint8)],
        axis=1,
    )


# --------------------------------------------------------------------------- IQ1
def _iq1_neighbour2(u, xb, w, scale, xx):
    """iq1_find_best_neighbour2 on rows of 8: the grid index (-1: ggml asserts)."""
    grid, _, _ = iq2xs_tables("iq1_s")
    cand = _padded_neighbours("iq1_s")[u]
    lv = (grid[np.where(cand >= 0, cand, 0)].astype(np.int64) - 1) // 2  # (r, m, 8)
    q = np.take_along_axis(xx, lv.reshape(lv.shape[0], -1), axis=1).reshape(lv.shape)
    diff = scale[:, None, None] * q - xb[:, None, :]
    t = (w[:, None, :] * diff) * diff
    d2 = np.zeros(cand.shape, _F32)
    for i in range(8):
        d2 = d2 + t[:, :, i]
    j = _first_min(d2, cand >= 0)
    return np.where(j >= 0, np.take_along_axis(cand, np.maximum(j, 0)[:, None], axis=1)[:, 0], -1)


def _iq1_weights(x, qw, nsub):
    n = x.shape[0]
    xb = x.reshape(-1, nsub)
    if qw is None:
        return xb, (xb * xb).astype(_F32)
    sigma2 = ((_f(2) * _seqsum(x * x)) / _f(QK_K)).astype(_F32)
    s2 = np.repeat(sigma2, QK_K // nsub)[:, None]
    return xb, (qw.reshape(n * (QK_K // nsub), nsub) * np.sqrt(s2 + xb * xb)).astype(_F32)


def _iq1_pick(sumqx, sumq2):
    """Sequential ``sumq2 > 0 && sumqx^2 > best*sumq2`` over candidates (last axis): (index, scale)."""
    m = sumqx.shape[0]
    best = np.full(m, -_FLT_MAX, _F32)
    scale = np.zeros(m, _F32)
    pick = np.full(m, -1, np.int64)
    for c in range(sumqx.shape[1]):
        sx, s2 = sumqx[:, c], sumq2[:, c]
        acc = (s2 > 0) & (sx * sx > best * s2)
        scale = np.where(acc, sx / s2, scale).astype(_F32)
        best = np.where(acc, scale * sx, best).astype(_F32)
        pick = np.where(acc, c, pick)
    return pick, scale


def _iq1_groups(xb, weight, L, scale, tabs):
    """Snap each group of 8 to the grid (tabs: (m, ngr, 3) levels per group): (index, scale)."""
    _, kmap, _ = iq2xs_tables("iq1_s")
    grid, _, _ = iq2xs_tables("iq1_s")
    m, nsub = xb.shape
    ngr = nsub // 8
    u = _pattern(L.reshape(m, ngr, 8))
    index = kmap[u].astype(np.int64)
    off = index < 0
    if off.any():
        r, k = np.nonzero(off)
        found = _iq1_neighbour2(u[r, k], xb.reshape(m, ngr, 8)[r, k], weight.reshape(m, ngr, 8)[r, k],
                                scale[r], tabs[r, k])
        if (found < 0).any():
            raise _aborts("iq1_find_best_neighbour2 finds no grid point with a finite distance")
        index[r, k] = found
        redo = off.any(axis=1)
        lv = (grid[index].astype(np.int64) - 1) // 2  # (m, ngr, 8)
        q = np.take_along_axis(tabs, lv, axis=2).reshape(m, nsub)
        sumqx = _seqsum((weight * q) * xb)
        sumq2 = _seqsum((weight * q) * q)
        refit = redo & (sumqx > 0) & (sumq2 > 0)
        scale = np.where(refit, sumqx / sumq2, scale).astype(_F32)
    if np.isnan(scale).any():
        raise _aborts("a sub-block's fitted scale is NaN (GGML_ASSERT(scale >= 0))")
    return index, scale


def _sorted_levels(order, i1, i2):
    """L[order[j]] = 0 for j < i1, 1 for j < i2, else 2."""
    j = np.arange(order.shape[1])
    lv = (j[None, :] >= i1[:, None]).astype(np.int64) + (j[None, :] >= i2[:, None])
    L = np.empty_like(lv)
    np.put_along_axis(L, order, lv, axis=1)
    return L


def quantize_iq1_s(x, qw):
    """quantize_iq1_s on (n, 256) blocks with weights (n, 256): (n, 50) bytes."""
    n = x.shape[0]
    xb, weight = _iq1_weights(x, qw, 32)
    m = xb.shape[0]
    skip = _c_max(np.abs(xb)) < _f(1e-12)  # GROUP_MAX_EPS_IQ1_S
    order = np.argsort(xb, axis=1, kind="stable")  # glibc qsort (merge sort): stable
    ws = np.take_along_axis(weight, order, axis=1)
    tx = np.take_along_axis(weight * xb, order, axis=1)
    sumx = np.zeros((m, 33), _F32)
    sumw = np.zeros((m, 33), _F32)
    for j in range(32):
        sumx[:, j + 1] = sumx[:, j] + tx[:, j]
        sumw[:, j + 1] = sumw[:, j] + ws[:, j]
    i1, i2 = np.array([(a, b) for a in range(33) for b in range(a, 33)]).T
    a, b, c = sumx[:, i1] - sumx[:, :1], sumx[:, i2] - sumx[:, i1], sumx[:, 32:] - sumx[:, i2]
    wa, wb, wc = sumw[:, i1] - sumw[:, :1], sumw[:, i2] - sumw[:, i1], sumw[:, 32:] - sumw[:, i2]
    sx = [(a * t[0] + b * t[1]) + c * t[2] for t in (_X_P, _X_M)]
    s2 = [((wa * t[0]) * t[0] + (wb * t[1]) * t[1]) + (wc * t[2]) * t[2] for t in (_X_P, _X_M)]
    # candidates in C's order: per (i1, i2), the + shift then the - shift
    pick, scale = _iq1_pick(np.stack(sx, axis=2).reshape(m, -1), np.stack(s2, axis=2).reshape(m, -1))
    skip |= pick < 0
    pk = np.maximum(pick, 0)
    shift = np.where(pk % 2 == 0, 1, -1)
    L = _sorted_levels(order, i1[pk // 2], i2[pk // 2])
    neg = scale < 0
    L = np.where(neg[:, None], 2 - L, L)
    scale = np.where(neg, -scale, scale).astype(_F32)
    shift = np.where(neg, -shift, shift)
    act = np.flatnonzero(~skip)
    tabs = np.where((shift == 1)[:, None, None], _X_P, _X_M).repeat(4, axis=1).reshape(m, 4, 3)
    index = np.zeros((m, 4), np.int64)
    index[act], scale[act] = _iq1_groups(xb[act], weight[act], L[act], scale[act], tabs[act])
    scale = np.where(skip, _f(0), scale).astype(_F32)
    shift = np.where(skip, 1, shift)
    qs = (index & 255).reshape(n, 32)
    qh = ((index >> 8) << (3 * np.arange(4))).sum(axis=1).reshape(n, 8)
    scales = scale.reshape(n, 8)
    d, codes, zero = _scale_codes(scales, _c_max(scales, np.zeros(n, _F32)), 15, 7)
    codes = codes | np.where(shift.reshape(n, 8) == -1, 8, 0)
    qh = np.where(zero[:, None], qh, qh | (codes << 12))
    dh = np.where(zero, _f(0), d * _f(1.125)).astype(_F32)
    return np.concatenate(
        [_u16_bytes(_fp16_bits(dh)), qs.astype(np.uint8), np.ascontiguousarray(qh.astype("<u2")).view(np.uint8)],
        axis=1,
    )


def quantize_iq1_m(x, qw):
    """quantize_iq1_m on (n, 256) blocks, weights (n, 256) or None: (n, 56) bytes."""
    n = x.shape[0]
    xb, weight = _iq1_weights(x, qw, 16)
    m = xb.shape[0]
    skip = _c_max(np.abs(xb)) < _f(1e-7)  # GROUP_MAX_EPS_IQ1_M
    order = np.argsort(xb, axis=1, kind="stable")
    i1, i2 = np.array([(a, b) for a in range(17) for b in range(a, 17)]).T
    # table k: the first half of the sub-block on x_p for k < 2, the second for even k
    tab = np.stack([np.stack([_X_P if k < 2 else _X_M, _X_P if k % 2 == 0 else _X_M]) for k in range(4)])
    sumqx = np.zeros((m, i1.size, 4), _F32)
    sumq2 = np.zeros((m, i1.size, 4), _F32)
    for j in range(16):
        i = order[:, j]
        t = (j >= i1).astype(np.int64) + (j >= i2)  # (pairs,)
        half = (i >= 8).astype(np.int64)  # (m,)
        lev = tab[:, half, :].transpose(1, 0, 2)[:, None, :, :]  # (m, 1, 4, 3)
        v = np.take_along_axis(lev, np.broadcast_to(t[None, :, None, None], (m, t.size, 4, 1)), axis=3)[..., 0]
        wi = np.take_along_axis(weight, i[:, None], axis=1)[:, :, None]
        xi = np.take_along_axis(xb, i[:, None], axis=1)[:, :, None]
        sumqx = sumqx + (wi * v) * xi
        sumq2 = sumq2 + (wi * v) * v
    pick, scale = _iq1_pick(sumqx.reshape(m, -1), sumq2.reshape(m, -1))
    skip |= pick < 0
    pk = np.maximum(pick, 0)
    best_k = pk % 4
    L = _sorted_levels(order, i1[pk // 4], i2[pk // 4])
    neg = scale < 0
    L = np.where(neg[:, None], 2 - L, L)
    scale = np.where(neg, -scale, scale).astype(_F32)
    best_k = np.where(neg, 3 - best_k, best_k)
    tabs = tab[best_k]  # (m, 2, 3)
    act = np.flatnonzero(~skip)
    index = np.zeros((m, 2), np.int64)
    index[act], scale[act] = _iq1_groups(xb[act], weight[act], L[act], scale[act], tabs[act])
    scale = np.where(skip, _f(0), scale).astype(_F32)
    best_k = np.where(skip, 0, best_k)
    qs = (index & 255).reshape(n, 32)
    qh = ((index[:, 0] >> 8) | ((index[:, 1] >> 8) << 4)).reshape(n, 16)
    scales = scale.reshape(n, 16)
    d, codes, zero = _scale_codes(scales, _c_max(scales, np.zeros(n, _F32)), 15, 7)
    qh = np.where(zero[:, None], qh, qh | np.array([0x00, 0x80, 0x08, 0x88])[best_k.reshape(n, 16)])
    # the final fit of d over the whole super-block, with the stored grid points and codes
    grid, _, _ = iq2xs_tables("iq1_s")
    lv = (grid[index].astype(np.int64) - 1) // 2  # (m, 2, 8)
    q = np.take_along_axis(tab[best_k], lv, axis=2).reshape(n, QK_K)
    q = q * np.repeat((2 * codes + 1).astype(_F32), 16, axis=1)
    w = weight.reshape(n, QK_K)
    sqx = _seqsum((w * q) * x)
    sq2 = _seqsum((w * q) * q)
    d = np.where(sq2 > 0, sqx / sq2, d).astype(_F32)
    s = _fp16_bits(d * _f(1.1125)).astype(np.int64)
    sc = (codes.reshape(n, 4, 4) << (3 * np.arange(4))).sum(axis=2)
    sc = sc | np.stack([(s & 0x000F) << 12, (s & 0x00F0) << 8, (s & 0x0F00) << 4, s & 0xF000], axis=1)
    sc = np.where(zero[:, None], 0, sc)
    return np.concatenate(
        [qs.astype(np.uint8), qh.astype(np.uint8), np.ascontiguousarray(sc.astype("<u2")).view(np.uint8)],
        axis=1,
    )


#: ggml type -> the NumPy reference quantizer ``f(x (n, 256) float32, qw (n, 256) or None)``
QUANTIZERS = {
    "iq2_xxs": quantize_iq2_xxs,
    "iq2_xs": quantize_iq2_xs,
    "iq2_s": quantize_iq2_s,
    "iq1_s": quantize_iq1_s,
    "iq1_m": quantize_iq1_m,
}


class GridQuantizer:
    """Mixin of IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M: ``quantize_<type>`` with quant_weights.

    ``quantize_blocks_weighted(blocks, quant_weights, backend)`` is ggml's
    ``quantize_<type>`` (what ``ggml_quantize_chunk`` and llama-quantize call).
    ``quantize_blocks(blocks)`` is the same with ``quant_weights = NULL``, where
    ggml allows that (IQ2_S: also ``quantize_row_iq2_s_ref``; IQ1_M); for IQ2_XXS,
    IQ2_XS and IQ1_S ggml asserts an importance matrix
    (``ggml_quantize_requires_imatrix``) and refquant raises :class:`RefquantError`.
    """

    has_quantize = True
    #: ggml_quantize_requires_imatrix(type): quantize_<type> asserts quant_weights != NULL
    requires_imatrix = True

    def quantize_blocks(self, blocks: np.ndarray, backend: str = "auto") -> np.ndarray:
        """``quantize_<type>(x, ..., NULL)``: see :meth:`quantize_blocks_weighted`."""
        if self.requires_imatrix:
            raise RefquantError(
                f"{self.name}: ggml's quantize_{self.c_name} requires an importance matrix "
                "(ggml_quantize_requires_imatrix; GGML_ASSERT(quant_weights)): use "
                f"quantize_blocks_weighted(blocks, quant_weights) or "
                f"refquant.compat.ggml.quantize(x, {self.name!r}, imatrix=w)"
            )
        return self.quantize_blocks_weighted(blocks, None, backend=backend)

    def quantize_blocks_weighted(self, blocks: np.ndarray, quant_weights=None, backend: str = "auto"):
        """``quantize_<type>(x, ..., quant_weights)``: ``(n, 256)`` floats -> ``(n, type_size)`` bytes.

        ``quant_weights``: the importance matrix entry of each weight, shape ``(256,)`` (every
        block) or ``(n, 256)``, finite and >= 0; ggml reads ``quant_weights + 256*ibl`` for
        block ``ibl`` of a row, so give a row's imatrix reshaped to ``(-1, 256)`` and tiled
        over rows. ``None`` is ggml's ``NULL`` (refused where ggml asserts, see the class).
        ``backend`` as in :meth:`refquant.formats.ggml.GGMLBlockFormat.quantize_blocks`
        (the Numba kernel of :mod:`refquant.kernels.cpu.ggml_iq_quant` is bit-identical).
        """
        x = self._checked_blocks(blocks)
        qw = None
        if quant_weights is not None:
            try:
                qw = np.asarray(quant_weights, dtype=_F32)
            except (TypeError, ValueError):
                raise RefquantError("quant_weights must be a real array") from None
            if qw.shape not in ((QK_K,), (x.shape[0], QK_K)):
                raise RefquantError(
                    f"quant_weights must have shape ({QK_K},) or ({x.shape[0]}, {QK_K}) for "
                    f"{self.name}, got {qw.shape}"
                )
            if not np.all(np.isfinite(qw)) or np.any(qw < 0):
                raise RefquantError("quant_weights must be finite and >= 0")
            qw = np.ascontiguousarray(np.broadcast_to(qw, x.shape))
        elif self.requires_imatrix:
            return self.quantize_blocks(x)  # raises
        if resolve_backend(backend, x.size, threshold=KERNEL_THRESHOLD, cuda=False) == "cpu":
            from ..kernels.cpu import ggml_iq_quant

            out, status = ggml_iq_quant.quantize_iq_blocks(
                self.name, x, qw, self.type_size, *iq2xs_tables(self.name)
            )
            if status.any():
                raise _aborts(f"block {int(np.flatnonzero(status)[0])}: a neighbour search or a "
                              "scale fails")
            return out
        out = np.empty((x.shape[0], self.type_size), np.uint8)
        with np.errstate(all="ignore"):
            for s in range(0, x.shape[0], _CHUNK):
                w = None if qw is None else qw[s : s + _CHUNK]
                out[s : s + _CHUNK] = QUANTIZERS[self.name](x[s : s + _CHUNK], w)
        return out

    def _quantize(self, x):  # pragma: no cover - quantize_blocks is overridden
        return self.quantize_blocks_weighted(x, None, backend="numpy")
