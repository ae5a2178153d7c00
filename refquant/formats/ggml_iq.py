"""llama.cpp's lattice ("i-quant") formats IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M.

Each super-block of 256 weights is cut into groups of 8 (4 for IQ3); a group
stores the index of a point of a fixed grid (the tables of
:mod:`refquant.formats._iq_grids`, verbatim from ggml-common.h), its signs
(IQ2/IQ3: 7 stored bits, the 8th making the count of minus signs even, through
``ksigns_iq2xs``; IQ3_S and IQ2_S: all 8 stored) and a small integer scale per 16 or 32
weights under one fp16 scale.

=========  ==========  ==========  ======  =============================================
name       block size  type size   bits/w  C reference (ggml/src/ggml-quants.c)
=========  ==========  ==========  ======  =============================================
iq2_xxs    256         66          2.0625  quantize_iq2_xxs / dequantize_row_iq2_xxs
iq2_xs     256         74          2.3125  quantize_iq2_xs / dequantize_row_iq2_xs
iq2_s      256         82          2.5625  quantize_iq2_s / dequantize_row_iq2_s
iq3_xxs    256         98          3.0625  quantize_iq3_xxs / dequantize_row_iq3_xxs
iq3_s      256         110         3.4375  quantize_iq3_s / dequantize_row_iq3_s
iq1_s      256         50          1.5625  quantize_iq1_s / dequantize_row_iq1_s
iq1_m      256         56          1.75    quantize_iq1_m / dequantize_row_iq1_m
=========  ==========  ==========  ======  =============================================

Dequantization is bit for bit ``dequantize_row_<type>`` for any bytes (fp16 scales
of Inf / NaN included): every product in C's order, in float32. IQ3_XXS and IQ3_S
quantize as ``quantize_iq3_xxs`` / ``quantize_iq3_s`` (what ``ggml_quantize_chunk``
and llama-quantize call; ``quantize_row_iq3_*_ref`` is the same function without
quant_weights), with and without an importance matrix
(:meth:`IQ3Format.quantize_blocks_weighted`); ``backend="cpu"`` runs their Numba twins
(:mod:`refquant.kernels.cpu.ggml_iq`, bit-identical). IQ2_XXS, IQ2_XS, IQ2_S,
IQ1_S and IQ1_M quantize as ``quantize_iq2_xxs`` ... ``quantize_iq1_m``
(:class:`refquant.formats._iq_quant.GridQuantizer`: NumPy reference there, Numba twins in
:mod:`refquant.kernels.cpu.ggml_iq_quant`) with an importance matrix
(``quantize_blocks_weighted``); without one only IQ2_S and IQ1_M, as in ggml
(``ggml_quantize_requires_imatrix``: IQ2_XXS, IQ2_XS and IQ1_S raise).

Reference: ggml-org/ggml 0.20.2 (commit 8c63e709), ``src/ggml-quants.c``,
``src/ggml-common.h`` (block structs, grids).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from .._errors import RefquantError
from . import _iq_grids as G
from ._iq_quant import GridQuantizer
from ._registry import register
from .ggml import (
    QK_K,
    GGMLBlockFormat,
    _bytes_u16,
    _f,
    _fp16_bits,
    _fp16_to_f32,
    _nearest_int,
    _seqsum,
    _u16_bytes,
)

__all__ = ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "IQ_FORMATS"]

_F32 = np.float32


# --------------------------------------------------------------------------- grid helpers
def _grid_bytes(grid: np.ndarray, width: int, signed: bool = False) -> np.ndarray:
    """A grid table as (entries, width) float32: byte j of entry k is ``((uint8_t *)(grid + k))[j]``."""
    raw = np.ascontiguousarray(grid.astype(f"<u{width}")).view(np.int8 if signed else np.uint8)
    return raw.reshape(-1, width).astype(_F32)


@cache
def _dequant_tables():
    return {
        "iq2xxs": _grid_bytes(G.IQ2XXS_GRID, 8),
        "iq2xs": _grid_bytes(G.IQ2XS_GRID, 8),
        "iq2s": _grid_bytes(G.IQ2S_GRID, 8),
        "iq3xxs": _grid_bytes(G.IQ3XXS_GRID, 4),
        "iq3s": _grid_bytes(G.IQ3S_GRID, 4),
        "iq1s": _grid_bytes(G.IQ1S_GRID, 8, signed=True),
    }


def _apply_signs(v: np.ndarray, signs8: np.ndarray) -> np.ndarray:
    """``v[..., j] * (signs & kmask_iq2xs[j] ? -1.f : 1.f)`` for (..., 8) values and (...,) sign bytes.

    As a negation: libggml's compiled code flips the sign bit (so a NaN's sign flips too,
    where a multiplication by -1 would keep it); for every other value the two agree.
    """
    bits = (signs8[..., None].astype(np.int64) & G.KMASK_IQ2XS.astype(np.int64)) != 0
    return np.where(bits, -v, v).astype(_F32)


def _u32(raw: np.ndarray) -> np.ndarray:
    """(n, 4k) little-endian bytes -> (n, k) int64 of uint32 words."""
    return np.ascontiguousarray(raw).view("<u4").astype(np.int64)


def _u16(raw: np.ndarray) -> np.ndarray:
    """(n, 2k) little-endian bytes -> (n, k) int64 of uint16 words."""
    return np.ascontiguousarray(raw).view("<u2").astype(np.int64)


def _d(raw: np.ndarray) -> np.ndarray:
    """The fp16 d in bytes 0..1 as float32 (GGML_FP16_TO_FP32)."""
    return _fp16_to_f32(_bytes_u16(raw[:, 0:2]))


# --------------------------------------------------------------------------- base class
class _IQFormat(GGMLBlockFormat):
    """A 256-weight IQ format: dequantize here, quantize where the subclass has a quantizer."""

    #: whether refquant has this type's ggml quantizer (else only ``dequantize_row_<type>``)
    has_quantize = False

    def quantize_blocks(self, blocks: np.ndarray, backend: str = "auto") -> np.ndarray:
        self._backend(backend, 0)  # a bad or kernel-less backend is refused first, as for every type
        if not self.has_quantize:
            raise RefquantError(
                f"quantizing to {self.name} is not implemented in refquant (it reads and "
                f"dequantizes {self.name}: dequantize_row_{self.c_name})"
            )
        return super().quantize_blocks(blocks, backend=backend)


# --------------------------------------------------------------------------- IQ2
# block_iq2_xxs (66 bytes): | d fp16 | qs: 8 x (4 grid bytes, uint32 aux) |
#   per 32 weights (ib32): aux8[0..3] = iq2xxs_grid indices of the 4 groups of 8,
#   aux32 bits 7l..7l+6 = ksigns_iq2xs index of group l, bits 28..31 = scale s;
#   x = d * (0.5 + s) * 0.25 * grid[j] * (±1)
class IQ2_XXS(GridQuantizer, _IQFormat, name="iq2_xxs"):
    """IQ2_XXS: 2.0625 bits per weight, groups of 8 on the 256-point ``iq2xxs_grid``.

    **Formula**: :math:`\\hat x = ((d (0.5 + s) \\cdot 0.25)\\, g_j)\\, \\sigma_j` in float32,
    :math:`g` the grid bytes (8, 25, 43), :math:`\\sigma_j = \\pm 1` from ``ksigns_iq2xs``,
    :math:`s` 4 bits per 32 weights.

    **Reference**: ``dequantize_row_iq2_xxs`` (ggml-quants.c); ``block_iq2_xxs``,
    ``iq2xxs_grid``, ``ksigns_iq2xs``, ``kmask_iq2xs`` (ggml-common.h).
    """

    c_name = "iq2_xxs"

    def _dequantize(self, raw):
        n = raw.shape[0]
        d = _d(raw)
        q = raw[:, 2:66].reshape(n, 8, 8)
        aux1 = _u32(q[:, :, 4:8].reshape(n, 32))  # (n, 8)
        db = (d[:, None] * (_f(0.5) + (aux1 >> 28).astype(_F32))) * _f(0.25)
        signs = G.KSIGNS_IQ2XS[(aux1[:, :, None] >> (7 * np.arange(4))) & 127]  # (n, 8, 4)
        vals = _dequant_tables()["iq2xxs"][q[:, :, 0:4]]  # (n, 8, 4, 8)
        return _apply_signs(db[:, :, None, None] * vals, signs).reshape(n, QK_K)


# block_iq2_xs (74 bytes): | d fp16 | qs[32] uint16: bits 0..8 grid index, 9..15 ksigns index |
#   scales[8]: low nibble for groups 0, 1 of each 32, high nibble for groups 2, 3 |
class IQ2_XS(GridQuantizer, _IQFormat, name="iq2_xs"):
    """IQ2_XS: 2.3125 bits per weight, 512-point ``iq2xs_grid``, 4-bit scales per 16 weights.

    **Formula**: :math:`\\hat x = ((d (0.5 + s) \\cdot 0.25)\\, g_j)\\, \\sigma_j`.

    **Reference**: ``dequantize_row_iq2_xs`` (ggml-quants.c); ``block_iq2_xs``,
    ``iq2xs_grid`` (ggml-common.h).
    """

    c_name = "iq2_xs"

    def _dequantize(self, raw):
        n = raw.shape[0]
        d = _d(raw)
        qs = _u16(raw[:, 2:66]).reshape(n, 8, 4)
        sc = raw[:, 66:74].astype(np.int64)
        s = np.stack([sc & 0xF, sc >> 4], axis=2)  # (n, 8, 2)
        db = (d[:, None, None] * (_f(0.5) + s.astype(_F32))) * _f(0.25)
        dl = db[:, :, np.array([0, 0, 1, 1])]  # db[l/2]
        vals = _dequant_tables()["iq2xs"][qs & 511]
        signs = G.KSIGNS_IQ2XS[qs >> 9]
        return _apply_signs(dl[..., None] * vals, signs).reshape(n, QK_K)


# block_iq2_s (82 bytes): | d fp16 | qs[32] grid index low 8 bits | signs[32] | qh[8] | scales[8] |
#   group l of sub-block ib: index = qs[4ib+l] | (qh[ib] << (8-2l)) & 0x300, signs[4ib+l] 8 bits
class IQ2_S(GridQuantizer, _IQFormat, name="iq2_s"):
    """IQ2_S: 2.5625 bits per weight, 1024-point ``iq2s_grid``, all 8 signs stored.

    **Formula**: :math:`\\hat x = ((d (0.5 + s) \\cdot 0.25)\\, g_j)\\, \\sigma_j`.

    **Reference**: ``dequantize_row_iq2_s`` (ggml-quants.c); ``block_iq2_s``,
    ``iq2s_grid`` (ggml-common.h).
    """

    c_name = "iq2_s"
    requires_imatrix = False  # quantize_iq2_s takes NULL (quantize_row_iq2_s_ref passes it)

    def _dequantize(self, raw):
        n = raw.shape[0]
        d = _d(raw)
        qs = raw[:, 2:34].astype(np.int64).reshape(n, 8, 4)
        signs = raw[:, 34:66].reshape(n, 8, 4)
        qh = raw[:, 66:74].astype(np.int64)
        sc = raw[:, 74:82].astype(np.int64)
        idx = qs | ((qh[:, :, None] << (8 - 2 * np.arange(4))) & 0x300)
        s = np.stack([sc & 0xF, sc >> 4], axis=2)
        db = (d[:, None, None] * (_f(0.5) + s.astype(_F32))) * _f(0.25)
        dl = db[:, :, np.array([0, 0, 1, 1])]
        vals = _dequant_tables()["iq2s"][idx]
        return _apply_signs(dl[..., None] * vals, signs).reshape(n, QK_K)


# --------------------------------------------------------------------------- IQ1
# block_iq1_s (50 bytes): | d fp16 | qs[32] grid index low 8 bits | qh[8] uint16 |
#   qh[ib]: bits 3l..3l+2 = index bits 8..10 of group l, bits 12..14 = scale s, bit 15 = delta sign
#   x = d * (2s + 1) * (grid[j] + delta), delta = ±IQ1S_DELTA
class IQ1_S(GridQuantizer, _IQFormat, name="iq1_s"):
    """IQ1_S: 1.5625 bits per weight, 2048-point ``iq1s_grid`` of -1/0/1, shifted by ±1/8.

    **Formula**: :math:`\\hat x = (d (2s + 1))\\, (g_j + \\delta)`, :math:`\\delta = \\pm 0.125`
    per 32 weights, the sum :math:`g_j + \\delta` exact in float32.

    **Reference**: ``dequantize_row_iq1_s`` (ggml-quants.c); ``block_iq1_s``,
    ``iq1s_grid``, ``IQ1S_DELTA`` (ggml-common.h).
    """

    c_name = "iq1_s"

    def _dequantize(self, raw):
        n = raw.shape[0]
        d = _d(raw)
        qs = raw[:, 2:34].astype(np.int64).reshape(n, 8, 4)
        qh = _u16(raw[:, 34:50])  # (n, 8)
        dl = d[:, None] * (2 * ((qh >> 12) & 7) + 1).astype(_F32)
        delta = np.where(qh & 0x8000, -G.IQ1S_DELTA, G.IQ1S_DELTA).astype(_F32)
        idx = qs | (((qh[:, :, None] >> (3 * np.arange(4))) & 7) << 8)
        vals = _dequant_tables()["iq1s"][idx] + delta[:, :, None, None]
        return (dl[:, :, None, None] * vals).reshape(n, QK_K)


# block_iq1_m (56 bytes): | qs[32] | qh[16] | scales[8] = 4 uint16 sc |
#   fp16 d = (sc[0] >> 12) | (sc[1] >> 8) & 0xf0 | (sc[2] >> 4) & 0xf00 | sc[3] & 0xf000
#   sub-block ib: 3-bit scales at bits 6(ib%2) and 6(ib%2)+3 of sc[ib/2] (groups 0,1 / 2,3);
#   qh[2ib + h]: bits 0..2 / 4..6 = index bits 8..10 of group 2h / 2h+1, bit 3 / 7 = its delta sign
class IQ1_M(GridQuantizer, _IQFormat, name="iq1_m"):
    """IQ1_M: 1.75 bits per weight, ``iq1s_grid`` with a delta sign per group of 8.

    **Formula**: :math:`\\hat x = (d (2s + 1))\\, (g_j + \\delta)`, :math:`s` 3 bits per 16
    weights, :math:`d` an fp16 assembled from the top nibbles of the scale words.

    **Reference**: ``dequantize_row_iq1_m`` (ggml-quants.c); ``block_iq1_m``,
    ``iq1m_scale_t``, ``iq1s_grid`` (ggml-common.h).
    """

    c_name = "iq1_m"
    requires_imatrix = False  # quantize_iq1_m takes NULL (weights x^2)

    def _dequantize(self, raw):
        n = raw.shape[0]
        qs = raw[:, 0:32].astype(np.int64).reshape(n, 8, 4)
        qh = raw[:, 32:48].astype(np.int64).reshape(n, 8, 2)
        sc = _u16(raw[:, 48:56])  # (n, 4)
        u = (sc[:, 0] >> 12) | ((sc[:, 1] >> 8) & 0x00F0) | ((sc[:, 2] >> 4) & 0x0F00) | (sc[:, 3] & 0xF000)
        d = _fp16_to_f32(u.astype(np.uint16))
        ib = np.arange(8)
        shift = 6 * (ib % 2)
        s1 = (sc[:, ib // 2] >> shift) & 7
        s2 = (sc[:, ib // 2] >> (shift + 3)) & 7
        dl1 = d[:, None] * (2 * s1 + 1).astype(_F32)
        dl2 = d[:, None] * (2 * s2 + 1).astype(_F32)
        dl = np.stack([dl1, dl1, dl2, dl2], axis=2)  # (n, 8, 4)
        h = qh[:, :, np.array([0, 0, 1, 1])]  # qh byte of group l
        up = np.array([8, 4, 8, 4])  # group 0/2: qh << 8, group 1/3: qh << 4
        idx = qs | ((h << up) & 0x700)
        dbit = np.array([0x08, 0x80, 0x08, 0x80])
        delta = np.where(h & dbit, -G.IQ1S_DELTA, G.IQ1S_DELTA).astype(_F32)
        vals = _dequant_tables()["iq1s"][idx] + delta[..., None]
        return (dl[..., None] * vals).reshape(n, QK_K)


# --------------------------------------------------------------------------- IQ3
_IQ3_CHUNK = 256  # blocks per NumPy pass (the neighbour search holds ~blocks*64*nb*4 floats)


@cache
def iq3_tables(grid_size: int):
    """``iq3xs_init_impl(grid_size)``: (grid levels, kmap, neighbours, neighbour counts).

    * ``grid``: (grid_size, 4) int64, the quantizer's grid points ``2l + 1`` (1, 3, ..., 15)
      decoded from ``kgrid_256`` / ``kgrid_512`` (3 bits per coordinate).
    * ``kmap``: (4096,) int64: for a point ``u = l0 | l1 << 3 | l2 << 6 | l3 << 9`` its grid
      index, or -1 when ``u`` is not on the grid.
    * ``neighbours``: (4096, m) int64, for an off-grid ``u`` the grid indices of every grid
      point whose squared distance to ``u`` is among the ``nwant`` smallest distinct
      distances (2 for 256, 3 for 512), ordered by (distance, index) as ggml's ``qsort`` with
      ``iq3_compare_func`` leaves them; padded with -1. ``counts`` their number.
    """
    kgrid = {256: G.KGRID_IQ3_256, 512: G.KGRID_IQ3_512}[grid_size].astype(np.int64)
    nwant = 2 if grid_size == 256 else 3
    lv = (kgrid[:, None] >> (3 * np.arange(4))) & 7
    grid = 2 * lv + 1
    kmap = np.full(4096, -1, np.int64)
    kmap[kgrid] = np.arange(grid_size)
    off = np.flatnonzero(kmap < 0)
    pos = 2 * ((off[:, None] >> (3 * np.arange(4))) & 7) + 1
    d2 = ((grid[None, :, :] - pos[:, None, :]) ** 2).sum(axis=2)  # (n_off, grid_size)
    lists = []
    for row in d2:
        order = np.lexsort((np.arange(grid_size), row))
        cut = np.unique(row)[:nwant][-1]  # the nwant-th smallest distinct distance
        lists.append(order[row[order] <= cut])
    width = max(len(v) for v in lists)
    neighbours = np.full((4096, width), -1, np.int64)
    counts = np.zeros(4096, np.int64)
    for u, v in zip(off, lists, strict=True):
        neighbours[u, : len(v)] = v
        counts[u] = len(v)
    for a in (grid, kmap, neighbours, counts):
        a.setflags(write=False)
    return grid, kmap, neighbours, counts


def _iq3_best_neighbour(u, xv, wv, scale, grid, neighbours):
    """``iq3_find_best_neighbour`` for groups ``u`` (off the grid): the chosen grid index.

    ``d2 = sum_i (w_i diff_i) diff_i`` with ``diff = scale*q - x`` summed in order in
    float32; the first candidate with the smallest d2 below FLT_MAX wins (strict ``<``
    from ``best_d2 = FLT_MAX``; NaN never wins). -1 where none does (ggml aborts there).
    """
    cand = neighbours[u]  # (g, m)
    q = grid[np.where(cand >= 0, cand, 0)].astype(_F32)  # (g, m, 4)
    diff = scale[:, None, None] * q - xv[:, None, :]
    t = (wv[:, None, :] * diff) * diff
    d2 = np.zeros(cand.shape, _F32)
    for i in range(4):
        d2 = d2 + t[:, :, i]
    d2 = np.where((cand >= 0) & (d2 < np.finfo(_F32).max), d2, np.inf)
    j = np.argmin(d2, axis=1)
    rows = np.arange(cand.shape[0])
    return np.where(np.isfinite(d2[rows, j]), cand[rows, j], -1)


def _iq3_codes(l: np.ndarray) -> np.ndarray:
    """(..., 4) levels -> u = l0 | l1 << 3 | l2 << 6 | l3 << 9."""
    return l[..., 0] | (l[..., 1] << 3) | (l[..., 2] << 6) | (l[..., 3] << 9)


class _Aborts(RefquantError):
    pass


def _iq3_search(xval, weight, waux, grid_size, nsteps, on_grid_start, redo_all):
    """The per-32 scale search of ``quantize_row_iq3_xxs_impl`` / ``quantize_row_iq3_s_impl``.

    Rows are sub-blocks of 32 (already sign-folded: ``xval``); returns (scale, L) with L the
    (m, 8, 4) levels 0..7 of each group of 4 (on the grid).
    """
    grid, kmap, neighbours, _ = iq3_tables(grid_size)
    m = xval.shape[0]
    xg = xval.reshape(m, 8, 4)
    wg = waux.reshape(m, 8, 4)
    mx = xval[:, 0].copy()
    for i in range(1, 32):
        mx = np.where(mx > xval[:, i], mx, xval[:, i])
    # GROUP_MAX_EPS_IQ3_XXS = 1e-8f (IQ3_XXS); quantize_row_iq3_s_impl skips only max == 0
    skip = mx < _f(1e-8) if grid_size == 256 else mx == 0
    mxs = np.where(skip, _f(1), mx).astype(_F32)
    scale = (mxs / _f(15)).astype(_F32)
    best = np.zeros(m, _F32)
    L = np.zeros((m, 8, 4), np.int64)
    on_grid = np.full((m, 8), on_grid_start)

    def snap(lv, sc, xs, ws):
        """Levels -> on-grid levels (kmap, else the best neighbour at scale ``sc``)."""
        u = _iq3_codes(lv)
        gi = kmap[u]
        off = gi < 0
        if off.any():
            r, k = np.nonzero(off)
            found = _iq3_best_neighbour(u[r, k], xs[r, k], ws[r, k], sc[r], grid, neighbours)
            if (found < 0).any():
                raise _Aborts("x: iq3_find_best_neighbour finds no grid point with a finite "
                              "distance (float32 overflow of w*diff^2): ggml aborts "
                              "(GGML_ASSERT(grid_index >= 0)) on this input")
            lv = lv.copy()
            lv[r, k] = (grid[found] - 1) // 2
        return lv, ~off

    for step in range(-nsteps, nsteps + 1):
        idv = (_f(15) + _f(step) * _f(0.2)) / mxs
        this_scale = _f(1) / idv
        laux = np.clip(_nearest_int(_f(0.5) * (idv[:, None, None] * xg - _f(1))), 0, 7)
        laux, on = snap(laux, this_scale, xg, wg)
        q = (2 * laux + 1).astype(_F32).reshape(m, 32)
        sumqx = _seqsum((weight * xval) * q)
        sumq2 = _seqsum((weight * q) * q)
        acc = ~skip & (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
        scale = np.where(acc, sumqx / sumq2, scale).astype(_F32)
        best = np.where(acc, scale * sumqx, best).astype(_F32)
        L = np.where(acc[:, None, None], laux, L)
        on_grid = np.where(acc[:, None], on, on_grid)

    redo = ~skip & (~on_grid).any(axis=1) & (scale > 0)
    if redo.any():
        r = np.flatnonzero(redo)
        idv = _f(1) / scale[r]
        lv = np.clip(_nearest_int(_f(0.5) * (idv[:, None, None] * xg[r] - _f(1))), 0, 7)
        lv, _ = snap(lv, scale[r], xg[r], wg[r])
        keep = on_grid[r] if not redo_all else np.zeros_like(on_grid[r])
        Lr = np.where(keep[:, :, None], L[r], lv)
        L[r] = Lr
        q = (2 * Lr + 1).astype(_F32).reshape(len(r), 32)
        sumqx = _seqsum((weight[r] * xval[r]) * q)
        sumq2 = _seqsum((weight[r] * q) * q)
        scale[r] = np.where(sumq2 > 0, sumqx / sumq2, scale[r])
    if np.isnan(scale[~skip]).any():
        raise _Aborts("x: the fitted scale of a sub-block is NaN (float32 overflow of the weighted "
                      "sums): ggml aborts (GGML_ASSERT(scale >= 0)) on this input")
    scale = np.where(skip, _f(0), scale).astype(_F32)
    L[skip] = 0
    return scale, L, skip


def _iq3_weights(xb, x, qw):
    """weight[i]: x^2, or ``qw * sqrtf(sigma2 + x^2)`` with sigma2 = 2*sum(x^2)/256 per super-block."""
    x2 = xb * xb
    if qw is None:
        return x2
    sigma2 = (_f(2) * _seqsum(x * x)) / _f(QK_K)
    return qw.reshape(-1, 32) * np.sqrt(np.repeat(sigma2, 8)[:, None] + x2)


def _seq_max0(v: np.ndarray) -> np.ndarray:
    """``m = 0; for each: m = MAX(m, v)`` (MAX(a, b) = a > b ? a : b) along axis 1."""
    m = np.zeros(v.shape[0], _F32)
    for i in range(v.shape[1]):
        m = np.where(m > v[:, i], m, v[:, i]).astype(_F32)
    return m


class IQ3Format(_IQFormat):
    """IQ3_XXS and IQ3_S: ``quantize_iq3_*`` with or without quant_weights.

    ``backend="cpu"`` (or ``"auto"`` from :data:`refquant.formats.ggml.KERNEL_THRESHOLD`
    weights) runs the Numba twins in :mod:`refquant.kernels.cpu.ggml_iq`.
    """

    has_quantize = True
    has_kernel = True
    _grid_size = 256

    def _kernels(self):
        """The kernel module, its tables for this type set (the kernels import no formats)."""
        from ..kernels.cpu import ggml_iq

        if self.name not in ggml_iq.TABLES:
            grid, kmap, nbrs, counts = iq3_tables(self._grid_size)
            key = "iq3xxs" if self._grid_size == 256 else "iq3s"
            ggml_iq.TABLES[self.name] = (grid, kmap, nbrs, counts, _dequant_tables()[key], G.KSIGNS_IQ2XS)
        return ggml_iq

    def quantize_blocks(self, blocks: np.ndarray, backend: str = "auto") -> np.ndarray:
        if self._backend(backend, np.asarray(blocks).size) == "cpu":
            self._kernels()
        return super().quantize_blocks(blocks, backend=backend)

    def dequantize_blocks(self, raw: np.ndarray, backend: str = "auto") -> np.ndarray:
        if self._backend(backend, np.asarray(raw).size * self.block_size // self.type_size) == "cpu":
            self._kernels()
        return super().dequantize_blocks(raw, backend=backend)

    def _quantize(self, x):
        return self._quantize_iq3(x, None)

    def quantize_blocks_weighted(self, blocks: np.ndarray, quant_weights=None, backend: str = "auto") -> np.ndarray:
        """``quantize_<type>(x, ..., quant_weights)``: what ``ggml_quantize_chunk`` and llama-quantize write.

        ``quant_weights``: shape ``(256,)`` (every block) or ``(n, 256)``, finite and >= 0, or
        None (ggml's ``NULL``, the same bytes as :meth:`quantize_blocks`). ggml reads
        ``quant_weights + 256*ibl`` for block ``ibl`` of a row: give a row's imatrix reshaped
        to ``(-1, 256)`` and tiled over rows. ``backend`` as in :meth:`quantize_blocks`.
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
            qw = np.broadcast_to(qw, x.shape)
        if self._backend(backend, x.size) == "cpu":
            out = np.empty((x.shape[0], self.type_size), np.uint8)
            self._kernels().quantize_iq3(self.name, x, out, qw)
            return out

        def fn(part, start):
            return self._quantize_iq3(part, None if qw is None else qw[start : start + part.shape[0]])

        return self._quantize_chunked(x, fn)

    def _quantize_iq3(self, x, qw):
        out = np.empty((x.shape[0], self.type_size), np.uint8)
        for s in range(0, x.shape[0], _IQ3_CHUNK):
            w = None if qw is None else qw[s : s + _IQ3_CHUNK]
            try:
                out[s : s + _IQ3_CHUNK] = self._quantize_part(x[s : s + _IQ3_CHUNK], w)
            except _Aborts as e:
                raise RefquantError(str(e)) from None
        return out

    def _signs(self, xb, weight):
        """(xval, signs): |x| per weight and the sign byte of each group of 8."""
        neg = ~(xb >= 0)
        xval = np.where(neg, -xb, xb).astype(_F32)
        bits = (neg.reshape(-1, 4, 8).astype(np.int64) << np.arange(8)).sum(axis=2)
        return xval, bits


class IQ3_XXS(IQ3Format, name="iq3_xxs"):
    """IQ3_XXS: 3.0625 bits per weight, groups of 4 on the 256-point ``iq3xxs_grid``.

    **Formula** (``quantize_row_iq3_xxs_impl``, per 32 weights): weights
    :math:`w = x^2` (imatrix: :math:`qw\\sqrt{\\sigma^2 + x^2}`,
    :math:`\\sigma^2 = 2\\sum x^2/256`); signs folded into :math:`|x|`, an odd count of
    minus signs per 8 fixed by flipping the element of least :math:`w x^2` (first one); for
    :math:`t = -15..15`, :math:`1/s = (15 + 0.2t)/\\max`, levels
    :math:`l = \\mathrm{clamp}(\\mathrm{nearest\\_int}(((x/s) - 1)/2), 0, 7)` (half to even),
    a group off the grid moved to its best neighbour (smallest :math:`\\sum \\sqrt{w}(s q - x)^2`
    among the grid points nearest in squared distance, ``iq3xs_init_impl``), the fit
    :math:`s = \\sum w x q/\\sum w q^2` (:math:`q = 2l + 1`) kept only when strictly better;
    groups still off the grid re-snapped at the best :math:`s`. Then
    :math:`d = \\max s/31`, stored as fp16(:math:`1.0125 d`), scale codes
    :math:`\\mathrm{clamp}(\\mathrm{nearest\\_int}((s/d - 1)/2), 0, 15)`.
    Dequantized: :math:`\\hat x = ((d (0.5 + s_4) \\cdot 0.5)\\, g_j)\\, \\sigma_j`.

    A sub-block with :math:`\\max|x| < 10^{-8}` stores scale 0, index 0, no signs. ggml aborts
    (``GGML_ASSERT``) when a neighbour search meets only overflowing distances (weights
    around :math:`|x| > 10^{12}`); refquant raises :class:`RefquantError` there.

    **Reference**: ``quantize_row_iq3_xxs_impl``, ``quantize_iq3_xxs``,
    ``quantize_row_iq3_xxs_ref``, ``iq3xs_init_impl``, ``iq3_find_best_neighbour``,
    ``dequantize_row_iq3_xxs`` (ggml-quants.c); ``block_iq3_xxs``, ``iq3xxs_grid``
    (ggml-common.h).
    """

    c_name = "iq3_xxs"

    # block_iq3_xxs (98 bytes): | d fp16 | qs[64]: iq3xxs_grid index of each group of 4 |
    #   scales_and_signs[8] uint32: bits 7k..7k+6 = ksigns_iq2xs index of group of 8 k,
    #   bits 28..31 = scale s; x = d * (0.5 + s) * 0.5 * grid[j] * (±1)
    def _dequantize(self, raw):
        n = raw.shape[0]
        d = _d(raw)
        qs = raw[:, 2:66].reshape(n, 8, 8)
        aux = _u32(raw[:, 66:98])  # (n, 8)
        db = (d[:, None] * (_f(0.5) + (aux >> 28).astype(_F32))) * _f(0.5)
        signs = G.KSIGNS_IQ2XS[(aux[:, :, None] >> (7 * np.arange(4))) & 127]  # (n, 8, 4)
        vals = _dequant_tables()["iq3xxs"][qs].reshape(n, 8, 4, 8)
        return _apply_signs(db[:, :, None, None] * vals, signs).reshape(n, QK_K)

    def _quantize_part(self, x, qw):
        n = x.shape[0]
        xb = x.reshape(n * 8, 32)
        weight = _iq3_weights(xb, x, qw)
        waux = np.sqrt(weight)
        xval, bits = self._signs(xb, weight)
        # an odd number of minus signs in a group of 8: flip the first element of least w*x*x
        g8 = (weight * xb) * xb
        g8 = g8.reshape(-1, 4, 8)
        imin = np.zeros(g8.shape[:2], np.int64)
        mn = g8[:, :, 0].copy()
        for i in range(1, 8):
            lt = g8[:, :, i] < mn
            mn = np.where(lt, g8[:, :, i], mn)
            imin = np.where(lt, i, imin)
        odd = (np.bitwise_count(bits.astype(np.uint64)) % 2) == 1
        rows, ks = np.nonzero(odd)
        pos = ks * 8 + imin[rows, ks]
        xval[rows, pos] = -xval[rows, pos]
        bits = np.where(odd, bits ^ (1 << imin), bits) & 127
        scale, L, skip = _iq3_search(xval, weight, waux, 256, 15, True, False)
        neg = scale < 0
        scale = np.where(neg, -scale, scale).astype(_F32)
        bits = np.where(neg[:, None], ~bits & 127, bits)
        bits[skip] = 0
        _, kmap, _, _ = iq3_tables(256)
        gi = kmap[_iq3_codes(L)]  # (m, 8), all on the grid
        sas = bits[:, 0] | (bits[:, 1] << 7) | (bits[:, 2] << 14) | (bits[:, 3] << 21)
        scales = scale.reshape(n, 8)
        max_scale = _seq_max0(scales)
        zero = ~(max_scale != 0)
        d = (max_scale / _f(31)).astype(_F32)
        dh = np.where(zero, _f(0), d * _f(1.0125)).astype(_F32)
        idv = _f(1) / np.where(zero, _f(1), d)
        lsc = np.clip(_nearest_int(_f(0.5) * (idv[:, None] * scales - _f(1))), 0, 15)
        sas = sas.reshape(n, 8) | (lsc << 28)
        q3 = np.concatenate([gi.reshape(n, 64).astype(np.uint8),
                             np.ascontiguousarray(sas.astype("<u4")).view(np.uint8).reshape(n, 32)], axis=1)
        q3[zero] = 0
        return np.concatenate([_u16_bytes(_fp16_bits(dh)), q3], axis=1)


class IQ3_S(IQ3Format, name="iq3_s"):
    """IQ3_S: 3.4375 bits per weight, 512-point ``iq3s_grid``, all 8 signs stored.

    **Formula** (``quantize_row_iq3_s_impl``, block size 32): as IQ3_XXS but no sign
    parity fix (every sign stored), candidate scales :math:`t = -9..9`, every group
    re-snapped at the best scale when any was off the grid, :math:`d = \\max s / 31` stored
    as fp16(:math:`1.033 d`), two 4-bit scale codes per byte. Dequantized:
    :math:`\\hat x = ((d (1 + 2 s_4))\\, g_j)\\, \\sigma_j`.

    ggml's quirk kept: a sub-block whose :math:`\\max|x|` is 0 writes nothing *and does not
    advance* its ``qs`` / ``signs`` pointers, so the next sub-blocks' grid indices and signs
    land one slot earlier (``qh`` bits stay at their own sub-block's position); the block
    then dequantizes to different values than the zeros it held.

    **Reference**: ``quantize_row_iq3_s_impl``, ``quantize_iq3_s``,
    ``quantize_row_iq3_s_ref``, ``iq3xs_init_impl``, ``iq3_find_best_neighbour``,
    ``dequantize_row_iq3_s`` (ggml-quants.c); ``block_iq3_s``, ``iq3s_grid``
    (ggml-common.h).
    """

    c_name = "iq3_s"
    _grid_size = 512

    # block_iq3_s (110 bytes): | d fp16 | qs[64] grid index low 8 bits | qh[8] |
    #   signs[32] (8 bits per group of 8) | scales[4]: low / high nibble for sub-blocks 2i, 2i+1 |
    #   index of group (ib, k) = qs[8ib+k] | ((qh[ib] >> k) & 1) << 8
    #   x = d * (1 + 2 s) * grid[j] * (±1)
    def _dequantize(self, raw):
        n = raw.shape[0]
        d = _d(raw)
        qs = raw[:, 2:66].astype(np.int64).reshape(n, 8, 8)
        qh = raw[:, 66:74].astype(np.int64)
        signs = raw[:, 74:106].reshape(n, 8, 4)
        sc = raw[:, 106:110].astype(np.int64)
        s = np.stack([sc & 0xF, sc >> 4], axis=2).reshape(n, 8)
        db = d[:, None] * (1 + 2 * s).astype(_F32)
        idx = qs | (((qh[:, :, None] >> np.arange(8)) & 1) << 8)
        vals = _dequant_tables()["iq3s"][idx].reshape(n, 8, 4, 8)
        return _apply_signs(db[:, :, None, None] * vals, signs).reshape(n, QK_K)

    def _quantize_part(self, x, qw):
        n = x.shape[0]
        xb = x.reshape(n * 8, 32)
        weight = _iq3_weights(xb, x, qw)
        waux = np.sqrt(weight)
        xval, bits = self._signs(xb, weight)
        scale, L, skip = _iq3_search(xval, weight, waux, 512, 9, False, True)
        neg = scale < 0
        scale = np.where(neg, -scale, scale).astype(_F32)
        bits = np.where(neg[:, None], ~bits & 255, bits)
        _, kmap, _, _ = iq3_tables(512)
        gi = kmap[_iq3_codes(L)].reshape(n, 8, 8)
        bits = bits.reshape(n, 8, 4)
        keep = ~skip.reshape(n, 8)
        qs = np.zeros((n, 8, 8), np.uint8)
        sg = np.zeros((n, 8, 4), np.uint8)
        slot = np.cumsum(keep, axis=1) - 1  # the pointers advance only past written sub-blocks
        r, ib = np.nonzero(keep)
        qs[r, slot[r, ib]] = gi[r, ib] & 255
        sg[r, slot[r, ib]] = bits[r, ib]
        qh = np.where(keep, ((gi >> 8) << np.arange(8)).sum(axis=2), 0)
        scales = scale.reshape(n, 8)
        max_scale = _seq_max0(scales)
        zero = ~(max_scale != 0)
        d = (max_scale / _f(31)).astype(_F32)
        dh = np.where(zero, _f(0), d * _f(1.033)).astype(_F32)
        idv = _f(1) / np.where(zero, _f(1), d)
        lsc = np.clip(_nearest_int(_f(0.5) * (idv[:, None] * scales - _f(1))), 0, 15)
        sc = np.where(zero[:, None], 0, lsc[:, 0::2] | (lsc[:, 1::2] << 4))
        return np.concatenate(
            [_u16_bytes(_fp16_bits(dh)), qs.reshape(n, 64), qh.astype(np.uint8), sg.reshape(n, 32),
             sc.astype(np.uint8)],
            axis=1,
        )


IQ_FORMATS = tuple(register(cls()) for cls in (IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M))
