"""Calibration: choose the clipping range [lo, hi] that a quantizer maps onto its grid.

Every method here only *chooses a range*; :func:`refquant.quant.qparams.qparams_from_range`
turns the range into a scale and zero point. :func:`calibrate_range` is the one
entry point (``choose_qparams(x, method=...)`` dispatches to it):

=============  ==========================================================  ===============================
method         range                                                       reference
=============  ==========================================================  ===============================
``percentile``  symmetric: ``amax = P_p(|x|)``; affine: ``[P_{100-p}(x),     common practice (e.g. NVIDIA
               P_p(x)]``; linear interpolation between order statistics     pytorch-quantization)
``mse``        ``r* amax`` (or ``r* [lo, hi]``) for the ratio ``r`` on a     grid search, as in
               grid that minimises the MSE of fake quantization              pytorch-quantization / AIMET
``histogram``  PyTorch HistogramObserver's L2 "non-ideal" search            ``torch/ao/quantization/observer.py``
               (bit-exact: float32 arithmetic as torch evaluates it)
``entropy``    TensorRT's KL-divergence threshold on a 2048-bin histogram    Migacz, "8-bit Inference with
               of ``|x|``                                                    TensorRT", GTC 2017
=============  ==========================================================  ===============================

Per-axis and blocked granularity calibrate every group independently; the
result is parameter-shaped, as :func:`refquant.quant.qparams.minmax_range` returns.

Accumulators for static calibration over batches (calibrate once, reuse):
:class:`MovingAverageMinMax` (PyTorch's MovingAverage*MinMaxObserver update) and
:class:`TorchHistogram` (PyTorch's HistogramObserver histogram, with its
re-binning when the range grows).
"""

from __future__ import annotations

import numpy as np

from .._core.granularity import (
    as_array,
    check_block_size,
    normalize_axis,
    param_shape,
    positive_int,
)
from .._errors import RefquantError
from ..formats.integer import int_format
from ._float32 import torch_linspace_f32, torch_sum_f32
from .affine import fake_quantize
from .qparams import minmax_range, qparams_from_range, register_range_method

__all__ = [
    "calibrate_range",
    "percentile_range",
    "mse_range",
    "histogram_range",
    "entropy_range",
    "MovingAverageMinMax",
    "TorchHistogram",
    "METHODS",
]

METHODS = ("percentile", "mse", "histogram", "entropy")
_F = np.float32


# --------------------------------------------------------------------------- groups


def _real(value, name) -> float:
    """``value`` as one Python float; RefquantError for text, arrays of another size, ..."""
    v = as_array(value, name)
    if v.size != 1 or v.dtype.kind not in "fiu":
        raise RefquantError(f"{name} must be one real number, got {value!r}")
    return float(v.reshape(-1)[0])


def _check_x(x):
    xa = as_array(x, "x")
    if xa.dtype.kind not in "fiub":
        raise RefquantError(f"x must be a real array, got dtype {xa.dtype}")
    return xa


def _grouped(x, axis, block_size, fn):
    """Apply ``fn(values_1d) -> (lo, hi)`` to every group; parameter-shaped (lo, hi)."""
    if axis is not None:
        axis = normalize_axis(axis, x.ndim)
    block_size = check_block_size(block_size, axis)
    shape = param_shape(x.shape, axis, block_size)
    if x.size == 0:
        z = np.zeros(shape, dtype=np.float32)
        return z, z.copy()
    if axis is None:
        lo, hi = fn(x.reshape(-1))
        return np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    lo = np.empty(shape, dtype=np.float64)
    hi = np.empty(shape, dtype=np.float64)
    xm = np.moveaxis(x, axis, 0)
    if block_size is None:
        for c in range(x.shape[axis]):
            lo[c], hi[c] = fn(xm[c].reshape(-1))
        return lo, hi
    lom, him = np.moveaxis(lo, axis, 0), np.moveaxis(hi, axis, 0)
    for b in range(shape[axis]):
        blk = xm[b * block_size : (b + 1) * block_size]
        for idx in np.ndindex(blk.shape[1:]):
            sl = (slice(None),) + idx
            lom[(b,) + idx], him[(b,) + idx] = fn(blk[sl].reshape(-1))
    return lo, hi


def _finite(v, method):
    v = v.astype(np.float64, copy=False)
    v = v[~np.isnan(v)]
    if v.size == 0:
        raise RefquantError(f"method {method!r}: a group of x is all NaN; no range can be computed")
    if np.isinf(v).any():
        raise RefquantError(f"method {method!r}: x contains ±Inf; the range would be infinite")
    return v


# --------------------------------------------------------------------------- percentile


def percentile_range(x, percentile=99.99, *, symmetric=True, axis=None, block_size=None):
    """Clip at a percentile: ``amax = P_p(|x|)`` (symmetric) or ``[P_{100-p}(x), P_p(x)]``.

    Parameters
    ----------
    x : array_like of float
        Calibration data; NaN ignored, ±Inf rejected.
    percentile : float in (0, 100]
        ``p``; 100 gives min-max.
    symmetric : bool
    axis, block_size : granularity (each group calibrated alone).

    Returns
    -------
    (lo, hi) : parameter-shaped float64 arrays (``lo = -amax`` when symmetric).

    Formula
    -------
    With the sorted values :math:`v_0 \\le \\dots \\le v_{n-1}` and
    :math:`h = (n - 1)\\,p / 100`,
    :math:`P_p = v_{\\lfloor h\\rfloor} + (h - \\lfloor h\\rfloor)(v_{\\lfloor h\\rfloor+1} - v_{\\lfloor h\\rfloor})`
    (linear interpolation between order statistics: NumPy's default
    ``method="linear"``, Hyndman & Fan definition 7). No rounding beyond float64.

    Reference
    ---------
    Hyndman & Fan, "Sample Quantiles in Statistical Packages", 1996 (def. 7);
    NVIDIA pytorch-quantization ``HistogramCalibrator`` ("percentile" method,
    which reads the percentile off a histogram instead of the sorted data).
    """
    p = _real(percentile, "percentile")
    if not 0 < p <= 100:
        raise RefquantError(f"percentile must be in (0, 100], got {percentile!r}")
    xa = _check_x(x)

    def fn(v):
        v = _finite(v, "percentile")
        if symmetric:
            a = float(np.percentile(np.abs(v), p, method="linear"))
            return -a, a
        lo = float(np.percentile(v, 100.0 - p, method="linear"))
        hi = float(np.percentile(v, p, method="linear"))
        return lo, hi

    return _grouped(xa, axis, block_size, fn)


# --------------------------------------------------------------------------- MSE


def mse_range(
    x, *, dtype="int8", symmetric=True, axis=None, block_size=None, grid=100, **qparams_kwargs
):
    """Clipping ratio that minimises the MSE of fake quantization, searched on a grid.

    Candidates are the ratios :math:`r_k = k / K` for :math:`k = 1, \\dots, K`
    (``grid = K``): the range ``[-r amax, r amax]`` (symmetric) or
    ``[r lo, r hi]`` (affine, lo/hi the group's min and max). Each candidate is
    turned into parameters by :func:`qparams_from_range` (``qparams_kwargs``
    passed through), fake-quantized with the core's default semantics (divide,
    round half to even, saturate), and scored by the float64 MSE against ``x``.

    **Tie rule**: among equal MSEs the *largest* ratio wins (least clipping).

    Formula
    -------
    :math:`r^* = \\arg\\min_{r \\in \\{1/K, \\dots, 1\\}} \\frac1n \\sum_i (x_i - \\mathrm{fq}_r(x_i))^2`

    Reference
    ---------
    Banner et al., "Post training 4-bit quantization of convolutional networks
    for rapid-deployment" (ACIQ), NeurIPS 2019 (MSE-optimal clipping); NVIDIA
    pytorch-quantization ``HistogramCalibrator`` "mse" method.
    """
    K = positive_int(grid, "grid")
    if K < 1:
        raise RefquantError(f"grid must be a positive integer, got {grid!r}")
    xa = _check_x(x)
    fmt = int_format(dtype)

    def fn(v):
        v = _finite(v, "mse")
        lo0, hi0 = float(v.min()), float(v.max())
        if symmetric:
            a = max(-lo0, hi0)
            lo0, hi0 = -a, a
        if lo0 == hi0:
            return lo0, hi0
        best = (np.inf, None)
        for k in range(K, 0, -1):  # largest ratio first: ties keep the larger one
            r = k / K
            lo, hi = lo0 * r, hi0 * r
            qp = qparams_from_range(lo, hi, dtype=fmt, symmetric=symmetric, **qparams_kwargs)
            fq = fake_quantize(v, qp.scale, qp.zero_point, dtype=qp.dtype, out_dtype=np.float64)
            err = float(np.mean((v - fq) ** 2))
            if err < best[0]:
                best = (err, (lo, hi))
        return best[1]

    return _grouped(xa, axis, block_size, fn)


# float32 arithmetic as PyTorch evaluates it lives in refquant/quant/_float32.py


def _div_floor_f32(a, b):
    """``torch.div(a, b, rounding_mode="floor")`` for float32 (c10 ``div_floor_floating``)."""
    a = np.asarray(a, dtype=np.float32)
    b = _F(b)
    mod = np.fmod(a, b).astype(np.float32)
    div = ((a - mod).astype(np.float32) / b).astype(np.float32)
    fix = (mod != 0) & ((b < 0) != (mod < 0))
    div = np.where(fix, div - _F(1), div).astype(np.float32)
    fl = np.floor(div).astype(np.float32)
    fl = np.where((div - fl).astype(np.float32) > _F(0.5), fl + _F(1), fl).astype(np.float32)
    return np.where(div == 0, np.copysign(_F(0), (a / b).astype(np.float32)), fl).astype(np.float32)


def _torch_histc_f32(x, bins, lo, hi):
    """``torch.histc(x, bins, min=lo, max=hi)`` for float32 x on CPU, bit for bit.

    Bin of an element (HistogramKernel.cpp, LINEAR_INTERPOLATION):
    ``pos = int64((x - lo) * bins / (hi - lo))`` in float32, the right edge
    folded into the last bin; elements outside [lo, hi] and NaN are skipped.
    With lo == hi the range becomes [lo - 1, hi + 1] (Histogram.cpp
    ``histc_select_outer_bin_edges``), rounded to float32.

    Huge ranges (x86-64 behaviour of torch's undefined casts): the outer edges
    come from ``torch.linspace``, whose float32 step ``(hi - lo) / bins`` is Inf
    when ``hi - lo`` overflows; its edges are then ``lo + Inf * 0`` = NaN and
    nothing is counted. Where ``(x - lo) * bins`` alone overflows, the Inf
    position casts to INT64_MIN and the pointer offset ``INT64_MIN *
    sizeof(float)`` wraps to 0: the element is counted in bin 0.
    """
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    lo64, hi64 = float(lo), float(hi)
    if lo64 == hi64:
        lo64, hi64 = lo64 - 1.0, hi64 + 1.0
    lo32, hi32 = _F(lo64), _F(hi64)
    with np.errstate(over="ignore"):
        width = _F(hi32 - lo32)
    if not np.isfinite(width):
        return np.zeros(bins, dtype=np.float32)  # linspace edges NaN: no element inside
    keep = (x >= lo32) & (x <= hi32)
    v = x[keep]
    with np.errstate(over="ignore", invalid="ignore"):
        pos = ((v - lo32).astype(np.float32) * _F(bins)).astype(np.float32) / width
    pos = pos.astype(np.float32)
    # static_cast<int64_t>(Inf) = INT64_MIN, an offset that wraps to bin 0 on x86-64
    pos = np.where(np.isfinite(pos), np.trunc(pos), 0).astype(np.int64)
    pos = np.where(pos == bins, bins - 1, pos)
    return np.bincount(pos, minlength=bins).astype(np.float32)


# --------------------------------------------------------------------------- histogram (torch)


class TorchHistogram:
    """PyTorch HistogramObserver's running histogram and its L2 range search, in NumPy.

    ``update(x)`` follows ``HistogramObserver.forward``: ±Inf elements are
    dropped (torch warns); the first batch is binned over its own [min, max]
    with ``torch.histc``; a later batch is binned over the union range and, if
    the range grew, the old histogram is re-binned (``_upscale_histogram``:
    each old bin split into ``upsample_rate`` equal parts whose float32
    mid-points are bucketed into the new bins, ``torch.bucketize(right=True)``,
    and added with ``torch.bincount`` in order) before the two are added.

    ``search()`` is ``_non_linear_param_search``: starting from the whole
    range, repeatedly move whichever end (start or end bin) crosses more bins
    to the next 1e-5 quantile step, compute the L2 error of quantizing the
    histogram into ``dst_nbins`` levels over the new bin range
    (``_compute_quantization_error``, uniform density within a bin), and stop at
    the first step whose error is larger than the best so far. Returns
    ``(new_min, new_max)`` as float32.

    Everything is evaluated in float32 in the order torch evaluates it; the
    reductions reproduce ATen's summation order (:func:`torch_sum_f32`), the
    cumulative sum accumulates in float64 as ATen's CPU ``cumsum`` does.
    Measured bit for bit against torch 2.13 on x86-64 (AVX2 / AVX-512 builds);
    other builds may differ in the last bits where their SIMD width or FMA
    contraction differs (``torch.linspace``, ``torch.sum``).

    Reference
    ---------
    ``torch/ao/quantization/observer.py``: ``HistogramObserver.forward``,
    ``_combine_histograms``, ``_upscale_histogram``, ``_non_linear_param_search``,
    ``_compute_quantization_error``, ``_get_norm``; the search itself follows
    caffe2 ``NormMinimization::NonlinearQuantizationParamsSearch``.
    """

    def __init__(self, bins=2048, dst_nbins=256, upsample_rate=16):
        self.bins = positive_int(bins, "bins")
        self.dst_nbins = positive_int(dst_nbins, "dst_nbins")
        self.upsample_rate = positive_int(upsample_rate, "upsample_rate")
        self.histogram = np.zeros(self.bins, dtype=np.float32)
        self.min_val = _F(np.inf)
        self.max_val = _F(-np.inf)

    @property
    def initialized(self) -> bool:
        return not (self.min_val == np.inf or self.max_val == -np.inf)

    def update(self, x) -> None:
        x = as_array(x, "x")
        if x.dtype.kind not in "fiub":
            raise RefquantError(f"x must be a real array, got dtype {x.dtype}")
        x = x.astype(np.float32).reshape(-1)
        if x.size == 0:
            return
        if np.isnan(x).any():
            raise RefquantError(
                "x contains NaN; torch.histc rejects it too ('range of [nan, nan] is not finite')"
            )
        x = x[np.abs(x) != np.inf]
        if x.size == 0:
            return
        x_min, x_max = _F(x.min()), _F(x.max())
        if not self.initialized:
            self.min_val, self.max_val = x_min, x_max
            self.histogram = _torch_histc_f32(x, self.bins, x_min, x_max)
            return
        new_min = _F(min(self.min_val, x_min))
        new_max = _F(max(self.max_val, x_max))
        upd = _torch_histc_f32(x, self.bins, new_min, new_max)
        if new_min == self.min_val and new_max == self.max_val:
            self.histogram = (self.histogram + upd).astype(np.float32)
            return
        if self.min_val == self.max_val:
            total = torch_sum_f32(self.histogram)
            moved = (
                _torch_histc_f32(np.array([self.min_val]), self.bins, new_min, new_max) * total
            ).astype(np.float32)
        else:
            moved = self._upscale(new_min, new_max)
        self.histogram = (upd + moved).astype(np.float32)
        self.min_val, self.max_val = new_min, new_max

    def _upscale(self, new_min, new_max):
        u = self.upsample_rate
        n = self.bins * u
        hist = (np.repeat(self.histogram, u) / _F(u)).astype(np.float32)
        bin_size = _F(_F(self.max_val - self.min_val) / _F(n))
        mids = (
            torch_linspace_f32(self.min_val, self.max_val, n + 1)[:-1] + _F(_F(0.5) * bin_size)
        ).astype(np.float32)
        edges = torch_linspace_f32(new_min, new_max, self.bins + 1)
        b = np.searchsorted(edges, mids, side="right") - 1
        b = np.clip(b, 0, self.bins - 1)
        out = np.zeros(self.bins, dtype=np.float32)
        np.add.at(out, b, hist)  # sequential float32 accumulation, as torch.bincount
        return out

    # ----------------------------------------------------------------- search

    def _quantization_error(self, start_bin, end_bin):
        bins = self.bins
        bin_width = (float(self.max_val) - float(self.min_val)) / bins
        dst_w = bin_width * (end_bin - start_bin + 1) / self.dst_nbins
        if dst_w == 0.0:
            return 0.0
        bw32, dw32 = _F(bin_width), _F(dst_w)
        src = np.arange(bins, dtype=np.int64)
        src_begin = ((src - start_bin).astype(np.float32) * bw32).astype(np.float32)
        src_end = (src_begin + bw32).astype(np.float32)
        top = _F(self.dst_nbins - 1)
        dbin_begin = np.clip(_div_floor_f32(src_begin, dw32), _F(0), top).astype(np.float32)
        dbin_begin_center = ((dbin_begin + _F(0.5)).astype(np.float32) * dw32).astype(np.float32)
        dbin_end = np.clip(_div_floor_f32(src_end, dw32), _F(0), top).astype(np.float32)
        density = (self.histogram / bw32).astype(np.float32)

        def get_norm(db, de, dens):
            de3 = ((de * de).astype(np.float32) * de).astype(np.float32)
            db3 = ((db * db).astype(np.float32) * db).astype(np.float32)
            nrm = ((de3 - db3).astype(np.float32) / _F(3)).astype(np.float32)
            return (dens * nrm).astype(np.float32)

        norm = np.zeros(bins, dtype=np.float32)
        delta_begin = (src_begin - dbin_begin_center).astype(np.float32)
        half = _F(dst_w / 2)
        norm = (norm + get_norm(delta_begin, np.full(bins, half, np.float32), density)).astype(_F)
        mid = get_norm(_F(-dst_w / 2), half, density)
        cnt = ((dbin_end - dbin_begin).astype(np.float32) - _F(1)).astype(np.float32)
        norm = (norm + (cnt * mid).astype(np.float32)).astype(np.float32)
        dbin_end_center = ((dbin_end * dw32).astype(np.float32) + half).astype(np.float32)
        delta_end = (src_end - dbin_end_center).astype(np.float32)
        norm = (norm + get_norm(np.full(bins, _F(-dst_w / 2), _F), delta_end, density)).astype(_F)
        return float(torch_sum_f32(norm))

    def search(self):
        """The L2 search; returns float32 ``(new_min, new_max)``."""
        if not self.initialized:
            raise RefquantError("the histogram is empty: update() it with data first")
        bins = self.bins
        bin_width = _F(_F(self.max_val - self.min_val) / _F(bins))
        total = float(torch_sum_f32(self.histogram))
        csum = np.cumsum(self.histogram.astype(np.float64)).astype(np.float32)
        stepsize = 1e-5
        alpha, beta = 0.0, 1.0
        start_bin, end_bin = 0, bins - 1
        norm_min = float("inf")
        while alpha < beta:
            next_alpha = alpha + stepsize
            next_beta = beta - stepsize
            # torch compares float32 cSum[l] with a Python float: done in float32
            t_lo, t_hi = _F(next_alpha * total), _F(next_beta * total)
            left = min(max(start_bin, int(np.searchsorted(csum, t_lo, side="left"))), end_bin)
            right = int(np.searchsorted(csum, t_hi, side="right")) - 1
            right = max(min(right, end_bin), start_bin)
            next_start, next_end = start_bin, end_bin
            if (left - start_bin) > (end_bin - right):
                next_start = left
                alpha = next_alpha
            else:
                next_end = right
                beta = next_beta
            if next_start == start_bin and next_end == end_bin:
                continue
            norm = self._quantization_error(next_start, next_end)
            if norm > norm_min:
                break
            norm_min = norm
            start_bin, end_bin = next_start, next_end
        new_min = _F(self.min_val + _F(bin_width * _F(start_bin)))
        new_max = _F(self.min_val + _F(bin_width * _F(end_bin + 1)))
        return new_min, new_max


def histogram_range(
    x, *, dtype="uint8", symmetric=False, axis=None, block_size=None, bins=2048, upsample_rate=16
):
    """PyTorch HistogramObserver's range on ``x`` observed as one batch (see :class:`TorchHistogram`).

    ``dst_nbins`` is ``2 ** bits`` of ``dtype`` (torch: ``2 ** torch.iinfo(dtype).bits``,
    whatever quant_min / quant_max / reduce_range say). ``symmetric`` does not
    change the search (torch searches the same way for both schemes).

    Formula
    -------
    For a candidate bin range :math:`[b_s, b_e]` with destination bin width
    :math:`\\Delta = w (b_e - b_s + 1) / N_{dst}`, the error is
    :math:`\\sum_j \\rho_j \\int (t - c(t))^2\\,dt` over each source bin's
    overlap with the destination bins (:math:`\\rho_j` the bin density,
    :math:`c` the destination bin centre), each part
    :math:`\\rho\\,(e^3 - b^3)/3`.

    Reference
    ---------
    ``torch.ao.quantization.HistogramObserver`` (observer.py), bit for bit on CPU.
    """
    fmt = int_format(dtype)
    xa = _check_x(x)

    def fn(v):
        h = TorchHistogram(bins, 2**fmt.bits, upsample_rate)
        h.update(v)
        if not h.initialized:
            raise RefquantError("method 'histogram': a group of x has no finite value")
        lo, hi = h.search()
        return float(lo), float(hi)

    return _grouped(xa, axis, block_size, fn)


# --------------------------------------------------------------------------- entropy


def _smooth(p, eps=1e-4):
    """Replace zeros by ``eps`` and take the same mass off the non-zeros (MXNet)."""
    zeros = p == 0
    nz = p.size - int(zeros.sum())
    if nz == 0:
        raise RefquantError("entropy calibration: a distribution has no mass")
    eps1 = eps * float(zeros.sum()) / float(nz)
    return p + np.where(zeros, eps, -eps1)


def _kl(p, q):
    p = p / p.sum()
    q = q / q.sum()
    m = p > 0
    return float(np.sum(p[m] * np.log(p[m] / q[m])))


def entropy_range(
    x,
    *,
    dtype="int8",
    symmetric=True,
    axis=None,
    block_size=None,
    bins=2048,
    quantized_bins=None,
    start_bin=None,
    smoothing=1e-4,
):
    """TensorRT's entropy calibration: the threshold minimising KL(P || Q).

    1. Histogram of ``|x|`` in ``bins`` (2048) equal bins over ``[0, max|x|]``
       (``np.histogram``: right edge closed).
    2. For each threshold bin ``i`` from ``start_bin`` (= ``quantized_bins``) to
       ``bins``: the reference ``P = hist[:i]`` with the outliers
       ``sum(hist[i:])`` added to ``P[i-1]``; the candidate ``Q``: ``hist[:i]``
       merged into ``quantized_bins`` groups (group ``j`` holds the bins
       ``floor(j i / nq) .. floor((j+1) i / nq) - 1``, as
       ``np.linspace(0, i, nq + 1)`` digitises them), each group's mass
       *expanded* back evenly over its **non-zero** bins (zero bins stay zero).
    3. Both smoothed (``_smooth``: zeros get ``smoothing``, the same mass taken
       evenly off the non-zeros; MXNet ``_smooth_distribution``), normalised,
       and compared by :math:`KL(P\\|Q) = \\sum P \\log(P/Q)`.
    4. The threshold is the right edge of bin ``i*`` (the first minimum: ties go
       to the smallest threshold). Range ``[-t, t]`` (symmetric) or
       ``[max(min x, -t), min(max x, t)]`` (affine).

    ``quantized_bins`` defaults to ``2 ** (bits - 1)`` (128 for int8: magnitudes
    of a signed grid) and to ``2 ** bits`` for unsigned dtypes (pytorch-quantization's
    ``1 << (num_bits - 1 + unsigned)``).

    Formula
    -------
    :math:`t^* = \\frac{i^*}{B}\\max|x|,\\quad i^* = \\arg\\min_i KL(\\tilde P_i \\| \\tilde Q_i)`

    Reference
    ---------
    S. Migacz, "8-bit Inference with TensorRT", GTC 2017 (the algorithm);
    NVIDIA pytorch-quantization ``calib/histogram.py::_compute_amax_entropy``
    (the expansion over non-zero bins); Apache MXNet
    ``contrib/quantization.py::_get_optimal_threshold`` / ``_smooth_distribution``
    (the smoothing, eps = 1e-4).
    """
    fmt = int_format(dtype)
    nq = (
        positive_int(quantized_bins, "quantized_bins")
        if quantized_bins is not None
        else (2 ** (fmt.bits - 1) if fmt.signed else 2**fmt.bits)
    )
    nb = positive_int(bins, "bins")
    sb = nq if start_bin is None else positive_int(start_bin, "start_bin")
    if not 1 <= nq <= nb:
        raise RefquantError(f"quantized_bins must be in [1, bins={nb}], got {nq}")
    if not 1 <= sb <= nb:
        raise RefquantError(f"start_bin must be in [1, bins={nb}], got {sb}")
    xa = _check_x(x)

    def fn(v):
        v = _finite(v, "entropy")
        a = np.abs(v)
        amax = float(a.max())
        if amax == 0:
            return 0.0, 0.0
        hist, edges = np.histogram(a, bins=nb, range=(0.0, amax))
        hist = hist.astype(np.float64)
        best_i, best_kl = None, np.inf
        for i in range(sb, nb + 1):
            p = hist[:i].copy()
            p[i - 1] += hist[i:].sum()
            if p.sum() == 0:
                continue
            grp = np.digitize(np.arange(i), np.linspace(0, i, nq + 1)) - 1
            src = hist[:i]
            nzm = src != 0
            mass = np.bincount(grp, weights=src, minlength=nq)
            cnt = np.bincount(grp, weights=nzm.astype(np.float64), minlength=nq)
            q = np.where(nzm, mass[grp] / np.where(cnt[grp] > 0, cnt[grp], 1), 0.0)
            if q.sum() == 0:
                continue
            kl = _kl(_smooth(p, smoothing), _smooth(q, smoothing))
            if kl < best_kl:
                best_i, best_kl = i, kl
        t = float(edges[best_i]) if best_i is not None else amax
        if symmetric:
            return -t, t
        return max(float(v.min()), -t), min(float(v.max()), t)

    return _grouped(xa, axis, block_size, fn)


# --------------------------------------------------------------------------- dispatcher


def calibrate_range(x, method, *, dtype, symmetric, axis=None, block_size=None, **opts):
    """The clipping range of ``x`` chosen by ``method``, parameter-shaped ``(lo, hi)``.

    Parameters
    ----------
    x : array_like of float
    method : {"percentile", "mse", "histogram", "entropy"} (or "minmax")
    dtype, symmetric, axis, block_size
        The grid and granularity the range is for.
    **opts
        Method options: ``percentile`` (percentile); ``grid`` and qparams
        keywords (mse); ``bins``, ``upsample_rate`` (histogram); ``bins``,
        ``quantized_bins``, ``start_bin``, ``smoothing`` (entropy).

    Formula
    -------
    See each method.

    Reference
    ---------
    See each method's function.
    """
    if method == "minmax":
        if opts:
            raise RefquantError(f"method 'minmax' takes no options, got {sorted(opts)}")
        return minmax_range(x, axis=axis, block_size=block_size)
    allowed = _METHOD_OPTIONS.get(method)
    if allowed is not None:
        extra = _QPARAMS_OPTIONS if method == "mse" else ()
        unknown = sorted(set(opts) - set(allowed) - set(extra))
        if unknown:
            more = " and qparams_from_range keywords" if extra else ""
            raise RefquantError(
                f"method {method!r} takes the options {', '.join(allowed)}{more}; "
                f"got unknown option(s) {unknown}"
            )
    if method == "percentile":
        return percentile_range(x, symmetric=symmetric, axis=axis, block_size=block_size, **opts)
    if method == "mse":
        return mse_range(
            x, dtype=dtype, symmetric=symmetric, axis=axis, block_size=block_size, **opts
        )
    if method == "histogram":
        return histogram_range(
            x, dtype=dtype, symmetric=symmetric, axis=axis, block_size=block_size, **opts
        )
    if method == "entropy":
        return entropy_range(
            x, dtype=dtype, symmetric=symmetric, axis=axis, block_size=block_size, **opts
        )
    raise RefquantError(f"method must be one of minmax, {', '.join(METHODS)}; got {method!r}")


_METHOD_OPTIONS = {
    "percentile": ("percentile",),
    "mse": ("grid",),
    "histogram": ("bins", "upsample_rate"),
    "entropy": ("bins", "quantized_bins", "start_bin", "smoothing"),
}
_QPARAMS_OPTIONS = (
    "narrow_range", "reduce_range", "include_zero", "eps", "symmetric_divisor",
    "zero_point_formula", "precision", "quant_min", "quant_max", "semantics",
)

for _name in METHODS:
    register_range_method(_name, calibrate_range)


# --------------------------------------------------------------------------- moving average


class MovingAverageMinMax:
    """Moving-average min / max over batches, for static calibration (calibrate once, reuse).

    The first batch sets the running range; each later batch moves it toward
    the batch's min and max by ``averaging_constant`` ``c``, in float32 as
    PyTorch's ``MovingAverageMinMaxObserver.forward`` evaluates it. NaN is
    ignored in a batch (PyTorch propagates it: see ``refquant.compat.torch``);
    an empty batch is skipped.

    Formula
    -------
    :math:`m_t = m_{t-1} + c\\,(\\min X_t - m_{t-1})`, likewise for the max,
    each operation rounded to float32.

    Reference
    ---------
    ``torch/ao/quantization/observer.py``: ``MovingAverageMinMaxObserver.forward``,
    ``MovingAveragePerChannelMinMaxObserver.forward``.
    """

    def __init__(self, averaging_constant=0.01, *, axis=None, block_size=None):
        c = _real(averaging_constant, "averaging_constant")
        if not 0 < c <= 1:
            raise RefquantError(f"averaging_constant must be in (0, 1], got {averaging_constant!r}")
        self.averaging_constant = c
        self.axis = axis
        self.block_size = block_size
        self.lo = None
        self.hi = None

    def update(self, x) -> MovingAverageMinMax:
        xa = _check_x(x)
        if xa.size == 0:
            return self
        lo, hi = minmax_range(xa.astype(np.float32), axis=self.axis, block_size=self.block_size)
        lo, hi = np.asarray(lo, np.float32), np.asarray(hi, np.float32)
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            if lo.shape != self.lo.shape:
                raise RefquantError(
                    f"this batch gives ranges of shape {lo.shape} but the running range has "
                    f"shape {self.lo.shape} (axis={self.axis}, block_size={self.block_size})"
                )
            c = _F(self.averaging_constant)
            self.lo = (self.lo + (c * (lo - self.lo).astype(_F)).astype(_F)).astype(_F)
            self.hi = (self.hi + (c * (hi - self.hi).astype(_F)).astype(_F)).astype(_F)
        return self

    def range(self):
        """The running ``(lo, hi)`` (float32, parameter-shaped)."""
        if self.lo is None:
            raise RefquantError("no batch observed yet: call update(x) first")
        return self.lo.copy(), self.hi.copy()

    def qparams(self, *, dtype="int8", symmetric=True, **kwargs):
        """:func:`qparams_from_range` of the running range (static quantization)."""
        lo, hi = self.range()
        return qparams_from_range(
            lo,
            hi,
            dtype=dtype,
            symmetric=symmetric,
            axis=self.axis,
            block_size=self.block_size,
            **kwargs,
        )
