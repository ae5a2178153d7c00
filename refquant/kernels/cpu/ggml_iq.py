"""Numba kernels for ggml's IQ3_XXS and IQ3_S: ``quantize_iq3_*`` and ``dequantize_row_iq3_*``.

The twins of :class:`refquant.formats.ggml_iq.IQ3_XXS` / ``IQ3_S`` (the NumPy reference):
one ``prange`` over super-blocks, ``quantize_row_iq3_xxs_impl`` /
``quantize_row_iq3_s_impl`` and ``iq3_find_best_neighbour`` statement by statement,
every float a float32 in C's order, fastmath off (see :mod:`refquant.kernels.cpu.ggml_quant`
for the rules). The grid tables are arguments (the format module passes its grid, map
and neighbour lists); nothing here imports from ``refquant.formats``.

Where ggml aborts (``GGML_ASSERT(grid_index >= 0)`` in the neighbour search, or
``GGML_ASSERT(scale >= 0)`` on a NaN scale) the kernel stops that block and sets its
``status`` to 1; the caller raises.

Reference: ggml-org/ggml 0.20.2 ``src/ggml-quants.c``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..._errors import RefquantError
from .ggml_quant import _FP16_TABLE, _fp16_bits, _get_u16, _nearest_int, _put_u16

__all__ = ["quantize_iq3", "dequantize_iq3"]

_F32 = np.float32
_FLT_MAX = np.float32(np.finfo(np.float32).max)
_OPTS = dict(cache=True, nogil=True, error_model="numpy")
_PAR = dict(cache=True, nogil=True, error_model="numpy", parallel=True)


@njit(**_OPTS)
def _best_neighbour(nbr, cnt, grid, xval, waux, off, scale, L):
    """iq3_find_best_neighbour: the grid index (levels into L[off:off+4]), or -1 (ggml aborts)."""
    best_d2 = _FLT_MAX
    gi = -1
    for j in range(cnt):
        g = nbr[j]
        d2 = np.float32(0)
        for i in range(4):
            diff = np.float32(np.float32(scale * np.float32(grid[g, i])) - xval[off + i])
            d2 = np.float32(d2 + np.float32(np.float32(waux[off + i] * diff) * diff))
        if d2 < best_d2:
            best_d2 = d2
            gi = g
    if gi >= 0:
        for i in range(4):
            L[off + i] = (grid[gi, i] - 1) // 2
    return gi


@njit(**_OPTS)
def _snap(k, idv, scale, xval, waux, L, grid, kmap, nbrs, counts):
    """Levels of group k at 1/scale = idv, moved onto the grid; returns (grid index, was on grid)."""
    u = 0
    for i in range(4):
        l = _nearest_int(np.float32(np.float32(0.5) * np.float32(np.float32(idv * xval[4 * k + i]) - np.float32(1))))
        l = max(0, min(7, l))
        L[4 * k + i] = l
        u |= l << (3 * i)
    gi = kmap[u]
    if gi >= 0:
        return gi, True
    return _best_neighbour(nbrs[u], counts[u], grid, xval, waux, 4 * k, scale, L), False


@njit(**_OPTS)
def _sums(weight, xval, L):
    sumqx = np.float32(0)
    sumq2 = np.float32(0)
    for i in range(32):
        q = np.float32(2 * L[i] + 1)
        sumqx = np.float32(sumqx + np.float32(np.float32(weight[i] * xval[i]) * q))
        sumq2 = np.float32(sumq2 + np.float32(np.float32(weight[i] * q) * q))
    return sumqx, sumq2


@njit(**_PAR)
def _quantize_iq3(x, qw, use_qw, out, grid, kmap, nbrs, counts, is_xxs, status):
    nsteps = 15 if is_xxs else 9
    for ibl in prange(x.shape[0]):
        xbl = x[ibl]
        o = out[ibl]
        for j in range(o.shape[0]):
            o[j] = 0
        status[ibl] = 0
        scales = np.zeros(8, np.float32)
        weight = np.empty(32, np.float32)
        waux = np.empty(32, np.float32)
        xval = np.empty(32, np.float32)
        L = np.zeros(32, np.int64)
        Laux = np.zeros(32, np.int64)
        on_grid = np.zeros(8, np.bool_)
        on_aux = np.zeros(8, np.bool_)
        signs = np.zeros(4, np.int64)
        gidx = np.zeros(8, np.int64)
        sumx2 = np.float32(0)
        for i in range(256):
            sumx2 = np.float32(sumx2 + np.float32(xbl[i] * xbl[i]))
        sigma2 = np.float32(np.float32(np.float32(2) * sumx2) / np.float32(256))
        max_scale = np.float32(0)
        slot = 0  # IQ3_S: qs / signs advance only past written sub-blocks
        failed = False
        for ib in range(8):
            if failed:
                break
            b0 = 32 * ib
            for i in range(32):
                v = xbl[b0 + i]
                if use_qw:
                    weight[i] = np.float32(qw[ibl, b0 + i] * np.float32(np.sqrt(np.float32(sigma2 + np.float32(v * v)))))
                else:
                    weight[i] = np.float32(v * v)
            for i in range(32):
                waux[i] = np.float32(np.sqrt(weight[i]))
            for k in range(4):
                nflip = 0
                s = 0
                for i in range(8):
                    v = xbl[b0 + 8 * k + i]
                    if v >= 0:
                        xval[8 * k + i] = v
                    else:
                        xval[8 * k + i] = -v
                        nflip += 1
                        s |= 1 << i
                if is_xxs and nflip % 2 == 1:
                    imin = 0
                    v0 = xbl[b0 + 8 * k]
                    mn = np.float32(np.float32(weight[8 * k] * v0) * v0)
                    for i in range(1, 8):
                        v = xbl[b0 + 8 * k + i]
                        ax = np.float32(np.float32(weight[8 * k + i] * v) * v)
                        if ax < mn:
                            mn = ax
                            imin = i
                    xval[8 * k + imin] = -xval[8 * k + imin]
                    s ^= 1 << imin
                signs[k] = (s & 127) if is_xxs else s
            mx = xval[0]
            for i in range(1, 32):
                mx = mx if mx > xval[i] else xval[i]
            for i in range(32):
                L[i] = 0
            if (is_xxs and mx < np.float32(1e-8)) or (not is_xxs and mx == 0):
                scales[ib] = 0
                continue
            best = np.float32(0)
            scale = np.float32(mx / np.float32(15))
            for k in range(8):
                on_grid[k] = is_xxs
            for step in range(-nsteps, nsteps + 1):
                idv = np.float32(np.float32(np.float32(15) + np.float32(np.float32(step) * np.float32(0.2))) / mx)
                this_scale = np.float32(np.float32(1) / idv)
                for k in range(8):
                    gi, on = _snap(k, idv, this_scale, xval, waux, Laux, grid, kmap, nbrs, counts)
                    if gi < 0:
                        failed = True
                    on_aux[k] = on
                if failed:
                    break
                sumqx, sumq2 = _sums(weight, xval, Laux)
                if sumq2 > 0 and np.float32(sumqx * sumqx) > np.float32(best * sumq2):
                    scale = np.float32(sumqx / sumq2)
                    best = np.float32(scale * sumqx)
                    for i in range(32):
                        L[i] = Laux[i]
                    for k in range(8):
                        on_grid[k] = on_aux[k]
            if failed:
                break
            n_off = 0
            for k in range(8):
                if not on_grid[k]:
                    n_off += 1
            if n_off > 0 and scale > 0:
                idv = np.float32(np.float32(1) / scale)
                for k in range(8):
                    if is_xxs and on_grid[k]:
                        continue
                    gi, _ = _snap(k, idv, scale, xval, waux, L, grid, kmap, nbrs, counts)
                    if gi < 0:
                        failed = True
                        break
                if failed:
                    break
                sumqx, sumq2 = _sums(weight, xval, L)
                if sumq2 > 0:
                    scale = np.float32(sumqx / sumq2)
            if scale != scale:  # GGML_ASSERT(scale >= 0) fails on NaN
                failed = True
                break
            if scale < 0:
                scale = -scale
                for k in range(4):
                    signs[k] = (~signs[k]) & (127 if is_xxs else 255)
            for k in range(8):
                u = L[4 * k] | (L[4 * k + 1] << 3) | (L[4 * k + 2] << 6) | (L[4 * k + 3] << 9)
                gidx[k] = kmap[u]
            if is_xxs:
                for k in range(8):
                    o[2 + 8 * ib + k] = gidx[k]
                sas = signs[0] | (signs[1] << 7) | (signs[2] << 14) | (signs[3] << 21)
                for t in range(4):
                    o[66 + 4 * ib + t] = (sas >> (8 * t)) & 255
            else:
                for k in range(8):
                    o[2 + 8 * slot + k] = gidx[k] & 255
                    o[66 + ib] |= (gidx[k] >> 8) << k
                for k in range(4):
                    o[74 + 4 * slot + k] = signs[k]
                slot += 1
            scales[ib] = scale
            max_scale = max_scale if max_scale > scale else scale
        if failed:
            status[ibl] = 1
            continue
        if not (max_scale != 0):
            if is_xxs:
                for j in range(o.shape[0]):
                    o[j] = 0
            continue
        d = np.float32(max_scale / np.float32(31))
        dh = np.float32(d * (np.float32(1.0125) if is_xxs else np.float32(1.033)))
        _put_u16(o, 0, _fp16_bits(dh))
        idd = np.float32(np.float32(1) / d)
        for ib in range(8):
            l = _nearest_int(np.float32(np.float32(0.5) * np.float32(np.float32(idd * scales[ib]) - np.float32(1))))
            l = max(0, min(15, l))
            if is_xxs:
                o[66 + 4 * ib + 3] |= l << 4
            else:
                o[106 + ib // 2] |= l << (4 * (ib % 2))


@njit(**_PAR)
def _dequantize_iq3(raw, out, t16, gridv, ksigns, is_xxs):
    for i in prange(raw.shape[0]):
        r = raw[i]
        y = out[i]
        d = t16[_get_u16(r, 0)]
        for ib in range(8):
            if is_xxs:
                aux = np.int64(r[66 + 4 * ib]) | (np.int64(r[67 + 4 * ib]) << 8)
                aux |= (np.int64(r[68 + 4 * ib]) << 16) | (np.int64(r[69 + 4 * ib]) << 24)
                db = np.float32(np.float32(d * np.float32(np.float32(0.5) + np.float32(aux >> 28))) * np.float32(0.5))
            else:
                sc = (np.int64(r[106 + ib // 2]) >> (4 * (ib % 2))) & 0xF
                db = np.float32(d * np.float32(1 + 2 * sc))
            for l in range(4):
                if is_xxs:
                    sg = np.int64(ksigns[(aux >> (7 * l)) & 127])
                else:
                    sg = np.int64(r[74 + 4 * ib + l])
                for h in range(2):
                    k = 2 * l + h
                    g = np.int64(r[2 + 8 * ib + k])
                    if not is_xxs:
                        g |= ((np.int64(r[66 + ib]) >> k) & 1) << 8
                    for j in range(4):
                        v = np.float32(db * gridv[g, j])
                        y[32 * ib + 8 * l + 4 * h + j] = -v if (sg >> (4 * h + j)) & 1 else v


#: format name -> (grid, kmap, neighbours, counts, dequantization grid, ksigns_iq2xs), set by
#: :mod:`refquant.formats.ggml_iq` before its first kernel call (kernels import no formats)
TABLES: dict[str, tuple] = {}


def quantize_iq3(name: str, x: np.ndarray, out: np.ndarray, qw=None) -> None:
    """``quantize_iq3_xxs`` / ``quantize_iq3_s`` of C-contiguous finite float32 (n, 256) into ``out``.

    ``qw``: None (NULL) or (n, 256) float32 quant_weights. Raises RefquantError where ggml aborts.
    """
    grid, kmap, nbrs, counts, _, _ = TABLES[name]
    status = np.zeros(x.shape[0], np.int64)
    if x.shape[0]:
        use_qw = qw is not None
        q = np.ascontiguousarray(qw, dtype=_F32) if use_qw else np.zeros((1, 1), _F32)
        with np.errstate(all="ignore"):
            _quantize_iq3(x, q, use_qw, out, grid, kmap, nbrs, counts, name == "iq3_xxs", status)
    if status.any():
        raise RefquantError(
            f"x: block {int(np.argmax(status))}: iq3_find_best_neighbour finds no grid point with a "
            "finite distance, or a fitted scale is NaN (float32 overflow): ggml aborts "
            "(GGML_ASSERT) on this input"
        )


def dequantize_iq3(name: str, raw: np.ndarray, out: np.ndarray) -> None:
    """``dequantize_row_iq3_xxs`` / ``dequantize_row_iq3_s`` of (n, type_size) uint8 into ``out``."""
    gridv, ksigns = TABLES[name][4:]
    if raw.shape[0]:
        with np.errstate(all="ignore"):
            _dequantize_iq3(raw, out, _FP16_TABLE, gridv, ksigns, name == "iq3_xxs")
