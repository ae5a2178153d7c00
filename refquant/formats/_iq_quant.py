"""ggml's grid quantizers (IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M): tables and NumPy reference.

Placeholder header; see the docstrings below.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from . import _iq_grids as _iq_kgrid

QK_K = 256
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


@lru_cache(maxsize=None)
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
    kgrid = np.asarray(getattr(_iq_kgrid, table), dtype=np.int64)
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
        d2 = (pos * pos).sum(axis=1)[:, None] + g2[None, :] - 2 * cross
        order = np.argsort(d2, axis=1, kind="stable")  # (d2, j): ties in index order
        ds = np.take_along_axis(d2, order, axis=1)
        rank = np.concatenate(
            [np.zeros((ds.shape[0], 1), np.int64), np.cumsum(ds[:, 1:] > ds[:, :-1], axis=1)], axis=1
        )
        keep = rank < nwant
        counts = keep.sum(axis=1)
        # each pattern's slice: its count, then its kept neighbours (row-major = C's order)
        rows = np.concatenate([counts[:, None], order], axis=1)
        parts.append(rows[np.concatenate([np.ones((pts.size, 1), bool), keep], axis=1)])
        kmap[pts] = -(counter + np.concatenate([[0], np.cumsum(1 + counts)[:-1]]) + 1)
        counter += int((1 + counts).sum())
    neigh = np.concatenate(parts).astype(np.int32)
    grid.setflags(write=False)
    kmap = kmap.astype(np.int32)
    kmap.setflags(write=False)
    neigh.setflags(write=False)
    return grid, kmap, neigh
