"""ggml's importance-matrix quantizers (``quantize_<type>`` with ``quant_weights``), NumPy reference.

What llama-quantize writes for Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K and
Q6_K when it is given an imatrix: ``ggml_quantize_chunk`` calls
``quantize_<type>(src, dst, nrow, n_per_row, quant_weights)``, which runs
``quantize_row_<type>_impl`` on every row with the same ``quant_weights`` (one
float per column). Without weights these functions call ``quantize_row_<type>_ref``
(the bytes of :mod:`refquant.formats.ggml`'s ``quantize_blocks``), so only the
weighted path lives here.

=====  ============================================================================
type   ``quantize_row_<type>_impl`` with weights (ggml/src/ggml-quants.c, ggml 0.20.2)
=====  ============================================================================
q4_0   :math:`w = qw\\sqrt{\\sigma^2 + x^2}`, :math:`\\sigma^2 = \\sum_{row} x^2 / n_{row}`;
       ``make_qx_quants(32, 8, x, L, 1, w)``; d = fp16(scale)
q5_0   as q4_0 with nmax 16, the 5th bits in ``qh``
q4_1   same w; ``make_qkx3_quants(32, 15, x, w, rmin=-0.9, rdelta=0.05, nstep=36)``;
       d = fp16(scale), m = fp16(min)
q5_1   as q4_1 with nmax 31
q2_k   per 256: :math:`\\sigma^2 = \\sum x^2/256`; per 16: ``make_qkx3_quants(16, 3, ...)``;
       scales and mins to 4 bits with ``make_qp_quants(16, 15, ., sw)``
       (:math:`sw_j = \\sum w` of sub-block j); codes recomputed from the fp16 d, dmin
q3_k   per 256: :math:`\\sigma^2 = 2\\sum x^2/256`; per 16: ``make_qx_quants(16, 4, x, w)``;
       the 16 scales with ``make_qx_quants(16, 32, scales, sw)``; codes recomputed
q4_k   per 256: :math:`\\sigma^2 = 2\\sum x^2/256`; per 32: ``make_qkx3_quants(32, 15, ...)``;
       scales and mins with ``make_qp_quants(8, 63, ., sw)``; codes recomputed
q5_k   as q4_k with nmax 31, the 6-bit codes clamped ``MIN(63, .)``
q6_k   per 16: ``make_qx_quants(16, 32, x, qw)`` (the raw imatrix as weights); the rest
       as ``quantize_row_q6_K_ref``
=====  ============================================================================

Bit-exactness follows :mod:`refquant.formats.ggml`: float32 operations in C's
order (``w*x[i]*l`` is ``(w*x)*l``), sequential sums, ``sqrtf`` correctly rounded,
``nearest_int`` ggml's bit trick, fp16 by round to nearest even. ``make_qp_quants``
stores its codes in ``uint8_t``: a negative code wraps to 256 + l as in C (it then
enters the later sums as that byte), which only a negative sub-block scale can
cause.

Reference: ggml-org/ggml 0.20.2 (commit 8c63e70, the build of libggml-python
0.20.2.post1), ``src/ggml-quants.c``: ``quantize_q4_0`` ... ``quantize_q6_K``,
``quantize_row_*_impl``, ``make_qx_quants``, ``make_qkx3_quants``,
``make_qp_quants``.
"""

from __future__ import annotations

import numpy as np

from .._errors import RefquantError
from ..kernels._backend import resolve_backend
from .ggml import (
    _GROUP_MAX_EPS,
    KERNEL_THRESHOLD,
    QK_K,
    _f,
    _first_absmax,
    _fp16_bits,
    _fp16_to_f32,
    _k4_pack,
    _k4_unpack,
    _make_qkx2_quants,
    _make_qx_quants,
    _nearest_int,
    _pack_2bit_128,
    _q3_scales_pack,
    _q3_scales_unpack,
    _qh_pack,
    _seqsum,
    _u16_bytes,
)

__all__ = ["WEIGHTED_TYPES", "quantize_rows_weighted"]

_F32 = np.float32

#: the ggml types whose ``quantize_<type>`` reads ``quant_weights`` and that this module computes
WEIGHTED_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k")

_ROWS_AT_ONCE = 1 << 21  # weights per NumPy chunk (bounds the temporaries)


# --------------------------------------------------------------------------- searches
def _make_qkx3_quants(x, weights, nmax, rmin, rdelta, nstep):
    """make_qkx3_quants(n, nmax, x, weights, ..., use_mad=false) with weights given.

    With weights it is make_qkx2_quants's search (:func:`refquant.formats.ggml._make_qkx2_quants`)
    with ``max <= min`` for the flat test (the same for finite x, since min <= max).
    Returns (scale, the_min = -min, L).
    """
    return _make_qkx2_quants(x, weights, nmax, rmin, rdelta, nstep, False)


def _make_qp_quants(x, nmax, qw):
    """make_qp_quants(n, nmax, x, L, quant_weights) on every row of ``x`` (scales >= 0, mostly).

    ``max`` = the largest x from 0; all below 1e-15 -> (0, L = 0). Else
    ``L = nearest_int(nmax/max * x)``, then 8 more inverse scales
    ``(0.1 is + nmax)/max`` (is = -4..4, 0 skipped) keep the one of least
    weighted squared error (strictly less); the codes of that scale (``MIN(nmax, .)``,
    no lower clamp) give ``sumlx``, ``suml2``, and up to 5 sweeps of coordinate
    descent move one code at a time to ``nearest_int(x sl2/slx)`` when
    ``slx^2 suml2 > sumlx^2 sl2``. Returns (sumlx/suml2 or 0, L as uint8 values).
    """
    m, n = x.shape
    mx = np.max(np.where(x > 0, x, _f(0)), axis=1, initial=_f(0)).astype(_F32)
    zero = mx < _GROUP_MAX_EPS
    mx = np.where(zero, _f(1), mx).astype(_F32)  # rows that return early, kept finite
    iscale = _f(nmax) / mx
    L8 = _nearest_int(iscale[:, None] * x) & 0xFF
    scale = _f(1) / iscale
    best = _seqsum((qw * (x - scale[:, None] * L8.astype(_F32))) * (x - scale[:, None] * L8.astype(_F32)))
    for step in range(-4, 5):
        if step == 0:
            continue
        iscale_is = (_f(0.1) * _f(step) + _f(nmax)) / mx
        scale_is = _f(1) / iscale_is
        lf = np.minimum(nmax, _nearest_int(iscale_is[:, None] * x)).astype(_F32)
        diff = x - scale_is[:, None] * lf
        mse = _seqsum((qw * diff) * diff)
        better = mse < best
        best = np.where(better, mse, best)
        iscale = np.where(better, iscale_is, iscale).astype(_F32)
    lint = np.minimum(nmax, _nearest_int(iscale[:, None] * x))
    lf = lint.astype(_F32)
    sumlx = _seqsum((qw * x) * lf)
    suml2 = _seqsum((qw * lf) * lf)
    L8 = lint & 0xFF  # uint8_t L[i] = l
    active = ~zero
    for _ in range(5):
        changed = np.zeros(m, dtype=bool)
        for i in range(n):
            w = qw[:, i]
            li = L8[:, i].astype(_F32)
            slx = sumlx - (w * x[:, i]) * li
            sl2 = suml2 - (w * li) * li
            ok = active & (slx > 0) & (sl2 > 0)
            new_l = np.minimum(nmax, _nearest_int((x[:, i] * sl2) / slx))
            ok &= new_l != L8[:, i]
            nf = new_l.astype(_F32)
            slx2 = slx + (w * x[:, i]) * nf
            sl22 = sl2 + (w * nf) * nf
            ok &= (slx2 * slx2) * suml2 > (sumlx * sumlx) * sl22
            L8[:, i] = np.where(ok, new_l & 0xFF, L8[:, i])
            sumlx = np.where(ok, slx2, sumlx).astype(_F32)
            suml2 = np.where(ok, sl22, suml2).astype(_F32)
            changed |= ok
        active &= changed
        if not active.any():
            break
    out = np.where(suml2 > 0, sumlx / np.where(suml2 > 0, suml2, _f(1)), _f(0)).astype(_F32)
    out[zero] = 0
    L8[zero] = 0
    return out, L8


def _sigma_weights(x, qw, sigma2):
    """``qw[l] * sqrtf(sigma2 + x[l]*x[l])`` (sigma2 one value per row of x)."""
    return (qw * np.sqrt(sigma2[:, None] + x * x)).astype(_F32)


# --------------------------------------------------------------------------- legacy types
def _legacy(name, x, qw):
    """quantize_row_{q4_0,q4_1,q5_0,q5_1}_impl on rows ``x`` (nrow, n_per_row); qw (n_per_row,)."""
    nrow, npr = x.shape
    nb = npr // 32
    sigma2 = _seqsum(x * x) / _f(npr)  # sum over the whole row, then / n_per_row
    xb = x.reshape(nrow * nb, 32)
    w = _sigma_weights(xb, np.tile(qw.reshape(nb, 32), (nrow, 1)), np.repeat(sigma2, nb))
    if name in ("q4_0", "q5_0"):
        d, L = _make_qx_quants(xb, 8 if name == "q4_0" else 16, w)
        head = [_u16_bytes(_fp16_bits(d))]
    else:
        d, the_min, L = _make_qkx3_quants(xb, w, 15 if name == "q4_1" else 31, -0.9, 0.05, 36)
        head = [_u16_bytes(_fp16_bits(d)), _u16_bytes(_fp16_bits(-the_min))]
    L = L.astype(np.int64)
    if name in ("q5_0", "q5_1"):
        head.append(_qh_pack(L))
    qs = ((L[:, :16] & 0xF) | ((L[:, 16:] & 0xF) << 4)).astype(np.uint8)
    return np.concatenate(head + [qs], axis=1).reshape(nrow, -1)


# --------------------------------------------------------------------------- K-quants
def _q2_k(x, qw):
    """quantize_row_q2_K_impl on (n, 256) blocks with their (n, 256) quant_weights."""
    n = x.shape[0]
    sigma2 = _seqsum(x * x) / _f(QK_K)
    xs = x.reshape(n * 16, 16)
    w = _sigma_weights(xs, qw.reshape(n * 16, 16), np.repeat(sigma2, 16))
    sw = _seqsum(w).reshape(n, 16)
    scales, mins, L = _make_qkx3_quants(xs, w, 3, -0.9, 0.05, 36)
    dm, Ls = _make_qp_quants(scales.reshape(n, 16), 15, sw)
    mm, Lm = _make_qp_quants(mins.reshape(n, 16), 15, sw)
    sc = ((Ls | (Lm << 4)) & 0xFF).astype(np.uint8)
    d16, m16 = _fp16_bits(dm), _fp16_bits(mm)
    d = _fp16_to_f32(d16)[:, None] * (sc & 0xF).astype(_F32)
    m = _fp16_to_f32(m16)[:, None] * (sc >> 4).astype(_F32)
    lq = np.clip(_nearest_int((x.reshape(n, 16, 16) + m[:, :, None]) / d[:, :, None]), 0, 3)
    L = np.where((d != 0)[:, :, None], lq, L.reshape(n, 16, 16)).reshape(n, QK_K)
    return np.concatenate([sc, _pack_2bit_128(L), _u16_bytes(d16), _u16_bytes(m16)], axis=1)


def _q3_k(x, qw):
    """quantize_row_q3_K_impl: make_qx_quants per 16 with sigma weights, then on the 16 scales."""
    n = x.shape[0]
    sigma2 = _f(2) * _seqsum(x * x) / _f(QK_K)
    xs = x.reshape(n * 16, 16)
    w = _sigma_weights(xs, qw.reshape(n * 16, 16), np.repeat(sigma2, 16))
    sw = _seqsum(w).reshape(n, 16)
    scales, L = _make_qx_quants(xs, 4, w)
    d_block, Ls = _make_qx_quants(scales.reshape(n, 16), 32, sw)
    sbytes = _q3_scales_pack(Ls.astype(np.int64))
    d16 = _fp16_bits(d_block)
    d = _fp16_to_f32(d16)[:, None] * _q3_scales_unpack(sbytes).astype(_F32)
    lq = np.clip(_nearest_int(x.reshape(n, 16, 16) / d[:, :, None]), -4, 3) + 4
    L = np.where((d != 0)[:, :, None], lq, L.reshape(n, 16, 16)).reshape(n, QK_K)
    high = L > 3
    hb = high.reshape(n, 8, 32).astype(np.uint8) << np.arange(8, dtype=np.uint8)[None, :, None]
    hmask = np.bitwise_or.reduce(hb, axis=1).astype(np.uint8)
    L = np.where(high, L - 4, L)
    return np.concatenate([hmask, _pack_2bit_128(L), sbytes, _u16_bytes(d16)], axis=1)


def _qk_affine_weighted(x, qw, nmax):
    """quantize_row_q{4,5}_K_impl's search: (sbytes, d16, m16, L)."""
    n = x.shape[0]
    sigma2 = _f(2) * _seqsum(x * x) / _f(QK_K)
    xs = x.reshape(n * 8, 32)
    w = _sigma_weights(xs, qw.reshape(n * 8, 32), np.repeat(sigma2, 8))
    sw = _seqsum(w).reshape(n, 8)
    scales, mins, L = _make_qkx3_quants(xs, w, nmax, -0.9, 0.05, 36)
    d_block, Ls = _make_qp_quants(scales.reshape(n, 8), 63, sw)
    m_block, Lm = _make_qp_quants(mins.reshape(n, 8), 63, sw)
    if nmax == 31:  # quantize_row_q5_K_impl: ls = MIN(63, ls), lm = MIN(63, lm)
        Ls, Lm = np.minimum(63, Ls), np.minimum(63, Lm)
    sbytes = _k4_pack(Ls, Lm)
    d16, m16 = _fp16_bits(d_block), _fp16_bits(m_block)
    sc, mn = _k4_unpack(sbytes)
    d = _fp16_to_f32(d16)[:, None] * sc.astype(_F32)
    dm = _fp16_to_f32(m16)[:, None] * mn.astype(_F32)
    lq = np.clip(_nearest_int((x.reshape(n, 8, 32) + dm[:, :, None]) / d[:, :, None]), 0, nmax)
    L = np.where((d != 0)[:, :, None], lq, L.reshape(n, 8, 32)).reshape(n, QK_K)
    return sbytes, d16, m16, L


def _q4_k(x, qw):
    n = x.shape[0]
    sbytes, d16, m16, L = _qk_affine_weighted(x, qw, 15)
    Lr = L.reshape(n, 4, 2, 32).astype(np.uint8)
    qs = (Lr[:, :, 0] | (Lr[:, :, 1] << 4)).reshape(n, 128)
    return np.concatenate([_u16_bytes(d16), _u16_bytes(m16), sbytes, qs], axis=1)


def _q5_k(x, qw):
    n = x.shape[0]
    sbytes, d16, m16, L = _qk_affine_weighted(x, qw, 31)
    Lr = L.reshape(n, 4, 2, 32)
    qs = ((Lr[:, :, 0] & 0xF) | ((Lr[:, :, 1] & 0xF) << 4)).astype(np.uint8).reshape(n, 128)
    hb = (Lr >> 4) & 1
    shifts = (2 * np.arange(4)[:, None] + np.arange(2)[None, :]).reshape(1, 4, 2, 1)
    qh = np.bitwise_or.reduce((hb << shifts).reshape(n, 8, 32), axis=1).astype(np.uint8)
    return np.concatenate([_u16_bytes(d16), _u16_bytes(m16), sbytes, qh, qs], axis=1)


def _q6_k(x, qw):
    """quantize_row_q6_K_impl: make_qx_quants(16, 32, x, L, 1, qw), then as the _ref."""
    n = x.shape[0]
    scales, L = _make_qx_quants(x.reshape(n * 16, 16), 32, qw.reshape(n * 16, 16))
    scales = scales.reshape(n, 16)
    L = L.reshape(n, 16, 16)
    max_abs, max_scale = _first_absmax(scales)
    zero = max_abs < _GROUP_MAX_EPS
    iscale = _f(-128) / np.where(zero, _f(1), max_scale)
    d16 = _fp16_bits(_f(1) / iscale)
    sc = np.minimum(127, _nearest_int(iscale[:, None] * scales)) & 0xFF
    sc = np.where(sc >= 128, sc - 256, sc)
    d = _fp16_to_f32(d16)[:, None] * sc.astype(_F32)
    lq = np.clip(_nearest_int(x.reshape(n, 16, 16) / d[:, :, None]), -32, 31) + 32
    L = np.where((d != 0)[:, :, None], lq, L).reshape(n, 2, 4, 32)
    ql = np.concatenate(
        [(L[:, :, 0] & 0xF) | ((L[:, :, 2] & 0xF) << 4), (L[:, :, 1] & 0xF) | ((L[:, :, 3] & 0xF) << 4)],
        axis=2,
    ).reshape(n, 128)
    qh = (L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4) | ((L[:, :, 3] >> 4) << 6)
    out = np.concatenate(
        [ql.astype(np.uint8), qh.reshape(n, 64).astype(np.uint8), (sc & 0xFF).astype(np.uint8), _u16_bytes(d16)],
        axis=1,
    )
    out[zero] = 0  # memset(&y[i], 0, sizeof(block_q6_K)); d = fp16(0)
    return out


_K_QUANTS = {"q2_k": _q2_k, "q3_k": _q3_k, "q4_k": _q4_k, "q5_k": _q5_k, "q6_k": _q6_k}


def _numpy_rows(name, x, qw):
    nrow, npr = x.shape
    with np.errstate(all="ignore"):
        if name in _K_QUANTS:
            nb = npr // QK_K
            per = max(1, _ROWS_AT_ONCE // max(npr, 1))
            parts = []
            for start in range(0, nrow, per):
                part = x[start : start + per]
                blocks = part.reshape(-1, QK_K)
                w = np.tile(qw.reshape(nb, QK_K), (part.shape[0], 1))
                parts.append(_K_QUANTS[name](blocks, w).reshape(part.shape[0], -1))
            return np.concatenate(parts, axis=0)
        per = max(1, _ROWS_AT_ONCE // max(npr, 1))
        return np.concatenate([_legacy(name, x[s : s + per], qw) for s in range(0, nrow, per)], axis=0)


def quantize_rows_weighted(name: str, x: np.ndarray, quant_weights: np.ndarray, backend: str = "auto"):
    """``quantize_<type>(x, dst, nrow, n_per_row, quant_weights)``: llama-quantize's bytes with an imatrix.

    Parameters
    ----------
    name : str
        One of :data:`WEIGHTED_TYPES` (refquant's lower-case ggml name).
    x : numpy.ndarray
        float32 ``(nrow, n_per_row)``, finite, ``n_per_row`` a multiple of the block size
        (32 or 256); validated by the caller (:func:`refquant.compat.ggml.quantize`).
    quant_weights : numpy.ndarray
        float32 ``(n_per_row,)``, finite and >= 0: the tensor's imatrix entry.
    backend : {"auto", "numpy", "cpu"}
        ``"numpy"`` this module's reference, ``"cpu"`` the Numba kernels of
        :mod:`refquant.kernels.cpu.ggml_weighted` (bit-identical), ``"auto"`` the kernel
        from :data:`refquant.formats.ggml.KERNEL_THRESHOLD` weights on.

    Returns
    -------
    numpy.ndarray
        uint8 ``(nrow, row_size)``.

    Notes
    -----
    **Formula**: see the table in this module's docstring; the imatrix enters as the
    weights of the least-squares searches, :math:`w_j = qw_j\\sqrt{\\sigma^2 + x_j^2}`
    (Q6_K: :math:`w_j = qw_j`). Rounding: ``nearest_int`` (half to even), fp16 by round
    to nearest even; candidates replace the current best only when strictly better.

    **Reference**: ggml 0.20.2 ``ggml-quants.c``: ``quantize_q4_0`` ... ``quantize_q6_K``.
    """
    if name not in WEIGHTED_TYPES:
        raise RefquantError(f"name: {name!r} has no weighted quantizer here; expected one of {WEIGHTED_TYPES}")
    x = np.ascontiguousarray(x, dtype=_F32)
    qw = np.ascontiguousarray(quant_weights, dtype=_F32)
    if x.ndim != 2 or qw.shape != (x.shape[1],):
        raise RefquantError(f"x must be (nrow, n_per_row) and quant_weights (n_per_row,), got {x.shape} "
                            f"and {qw.shape}")
    block = QK_K if name in _K_QUANTS else 32
    if x.shape[1] % block:
        raise RefquantError(f"x: rows of {x.shape[1]} are not a whole number of {block}-weight blocks")
    from .ggml import GGML_BLOCK_TABLE

    row_size = x.shape[1] // block * GGML_BLOCK_TABLE[name][2]
    if x.size == 0:
        return np.zeros((x.shape[0], row_size), dtype=np.uint8)
    if resolve_backend(backend, x.size, threshold=KERNEL_THRESHOLD, cuda=False) == "cpu":
        from ..kernels.cpu import ggml_weighted

        return ggml_weighted.quantize_rows_weighted(name, x, qw, row_size)
    return _numpy_rows(name, x, qw)
