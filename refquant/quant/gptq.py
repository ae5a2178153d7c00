"""GPTQ: one-shot weight quantization with second-order error feedback (Frantar et al. 2022).

A linear layer ``y = W x`` (``W`` of shape ``(out, in)``) is quantized column by
column; after each column the remaining (not yet quantized) columns are
corrected so that the layer's output on the calibration inputs changes as
little as possible. Everything is driven by the layer Hessian

.. math:: H = \\frac{2}{n} \\sum_{k=1}^{n} x_k x_k^\\top

accumulated from calibration batches by :class:`HessianAccumulator`.

Steps of :func:`gptq` (Algorithm 1 of the paper, as llmcompressor 0.14 runs it):

1. act-order (optional): columns permuted by ``diag(H)`` descending;
2. dead inputs (``H_ii = 0``): ``H_ii = 1`` and ``W[:, i] = 0``;
3. damping: ``H += dampening_frac * mean(diag(H)) * I``;
4. ``U``: the upper Cholesky factor of ``H^{-1}`` (``H^{-1} = U^T U``), computed
   as LAPACK ``potrf`` (lower) → ``potri`` → ``potrf`` (upper), the three
   calls torch makes for ``cholesky`` → ``cholesky_inverse`` → ``cholesky(upper=True)``;
5. for each block of ``blocksize`` columns, for each column ``j`` in it::

       q_j   = Q(w_j)                                # fake-quantize with the group's qparams
       e_j   = (w_j - q_j) / U_jj
       W[:, j:block_end] -= e_j U[j, j:block_end]    # error feedback inside the block
       loss += e_j^2 / 2

   then ``W[:, block_end:] -= E U[block, block_end:]`` (the lazy batch update).

The loss is :math:`\\tfrac12 \\operatorname{tr}\\big((W-\\hat W) H_d (W-\\hat W)^\\top\\big)`
with the damped Hessian ``H_d`` (for ``H`` built with the factor 2/n this is the
mean squared output error :math:`\\tfrac1n \\|(W - \\hat W) X\\|_F^2` plus the damping
term): each OBS step adds :math:`e_j^2/2` exactly in exact arithmetic.

Group parameters
----------------
``static_groups=True`` (llmcompressor 0.14, the default): the scale and zero
point of every group are computed once, by min-max on the *original* weights,
before the column loop, and stay fixed; with act-order a column keeps the group
of its original position (``g_idx[c] = c // group_size``).

``static_groups=False`` (the paper's reference code, IST-DASLab ``gptq.py``): the
qparams of a group are recomputed from the current weights when the column loop
reaches the group's first column. Like the reference code (``W[:, i1+i :
i1+i+groupsize]`` of the full matrix), the slice is taken from the weights as they
were at the start of the current block (updates made by earlier columns of the
same block are not seen). With act-order the groups follow the processing
order: ``g_idx[perm[j]] = j // group_size``.

A ``group_size`` that does not divide ``in`` leaves a partial last group
(its qparams come from the columns it has).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.linalg.lapack as lapack

from .._errors import RefquantError
from .qparams import FLOAT32_EPS, qparams_from_range

__all__ = ["HessianAccumulator", "GPTQResult", "gptq", "gptq_hessian_factor", "GPTQ_BITS",
           "GPTQ_FORMATS"]

GPTQ_BITS = (2, 3, 4, 5, 6, 7, 8)
#: ``fmt`` values: the signed integer grid of ``bits`` bits, or fp8 e4m3fn (max 448)
GPTQ_FORMATS = ("int", "float8_e4m3fn", "nvfp4")
_FP8_MAX = 448.0  # float8_e4m3fn's largest finite value (compressed-tensors FP8_E4M3_DATA.max)
_PRECISIONS = {"float32": np.float32, "float64": np.float64}


# --------------------------------------------------------------------------- Hessian
class HessianAccumulator:
    """Running average of :math:`2 x x^T` over calibration rows, fed batch by batch.

    ``update(x)`` takes a batch of shape ``(..., in_features)`` (every leading
    axis counts as samples: tokens of all sequences). After ``n`` rows in all,
    ``hessian`` is :math:`\\frac{2}{n}\\sum x x^T`. Only one ``(in, in)`` matrix is
    held, so calibration data larger than memory can be streamed.

    Formula
    -------
    .. math:: H_{n+m} = \\frac{n}{n+m} H_n + \\frac{2}{n+m} X_m^\\top X_m

    Reference
    ---------
    IST-DASLab ``gptq.py`` ``add_batch`` (``H *= nsamples / (nsamples + tmp)``;
    ``inp = sqrt(2 / nsamples) * inp``; ``H += inp @ inp.T``), which counts samples
    per sequence; here every row is one sample. llmcompressor 0.14
    ``accumulate_hessian`` sums :math:`2 x x^T` in float32 and divides once by
    the number of *sequences* (a 2-D batch counts as one): its H differs from
    this one by a constant factor, which changes neither the damping (relative to
    mean diag H) nor the codes, only the reported loss.

    Parameters
    ----------
    in_features : int
    precision : "float64" or "float32"
        Accumulator dtype (the peer accumulates in float32).
    """

    def __init__(self, in_features: int, *, precision: str = "float64"):
        if isinstance(in_features, bool) or not isinstance(in_features, (int, np.integer)) \
                or in_features < 1:
            raise RefquantError(f"in_features must be a positive int, got {in_features!r}")
        self.in_features = int(in_features)
        self._dtype = _precision(precision)
        self._h = np.zeros((self.in_features, self.in_features), dtype=self._dtype)
        self.n_samples = 0

    def update(self, x) -> HessianAccumulator:
        """Add a batch of calibration rows (shape ``(..., in_features)``)."""
        a = calibration_rows(x, self.in_features, self._dtype)
        m = a.shape[0]
        if m == 0:
            return self
        total = self.n_samples + m
        self._h *= self._dtype(self.n_samples / total)
        a = a * self._dtype(math.sqrt(2.0 / total))
        self._h += a.T @ a
        self.n_samples = total
        return self

    @property
    def hessian(self) -> np.ndarray:
        """:math:`\\frac{2}{n}\\sum x x^T` (a copy); zeros before any update."""
        return self._h.copy()


def _precision(precision) -> type:
    if precision not in _PRECISIONS:
        raise RefquantError(f"precision must be 'float32' or 'float64', got {precision!r}")
    return _PRECISIONS[precision]


# --------------------------------------------------------------------------- result
@dataclass(frozen=True)
class GPTQResult:
    """What :func:`gptq` returns.

    Attributes
    ----------
    codes : int64 array (out, in)
        Integer codes in the original column order, on the signed ``bits`` grid.
    scale : float32 array (out, n_groups)
        One column per group (``n_groups = 1`` for per channel).
    zero_point : int64 array (out, n_groups)
        0 for symmetric.
    g_idx : int64 array (in,)
        Group of every input column (original order).
    dequantized : array (out, in)
        :math:`(q - z) s` in the working precision, the weights the layer runs with.
    loss : float
        :math:`\\sum_j e_j^2 / 2` over all rows and columns (see the module docstring).
    perm : int64 array (in,) or None
        Processing order of the columns (act-order), None without act-order.
    dampening_frac : float
        The damping fraction that made H positive definite.
    damping_retries : int
        How many times the damping was multiplied by 10 before the Cholesky
        factorisation succeeded (0: the requested damping worked).
    rtn_fallback : bool
        True when no damping made H positive definite and ``U = I`` was used
        (round-to-nearest with the same qparams, as llmcompressor falls back).
    global_scale : float or None
        ``fmt="nvfp4"``: the float32 global scale; the group scales in ``scale``
        are the e4m3fn values and the effective scale is ``scale / global_scale``.
    """

    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    g_idx: np.ndarray
    dequantized: np.ndarray
    loss: float
    perm: np.ndarray | None
    dampening_frac: float
    damping_retries: int
    rtn_fallback: bool
    global_scale: float | None = None


# --------------------------------------------------------------------------- Cholesky
def _potrf(a: np.ndarray, lower: bool):
    f = lapack.spotrf if a.dtype == np.float32 else lapack.dpotrf
    c, info = f(a, lower=lower, clean=True)
    return c, info


def _upper_inverse_factor(h: np.ndarray):
    """U with H^{-1} = U^T U, or None when H is not positive definite."""
    c, info = _potrf(h, lower=True)
    if info != 0:
        return None
    potri = lapack.spotri if h.dtype == np.float32 else lapack.dpotri
    inv, info = potri(c, lower=True)
    if info != 0:
        return None
    inv = np.tril(inv) + np.tril(inv, -1).T  # potri fills one triangle
    u, info = _potrf(inv, lower=False)
    if info != 0:
        return None
    return np.triu(u)


def gptq_hessian_factor(hessian, *, dampening_frac=0.01, precision="float64",
                        max_retries=8):
    """Damp ``hessian`` and return ``(U, dampening_frac_used, retries)`` with :math:`H_d^{-1} = U^T U`.

    Dead columns (``H_ii = 0``) get ``H_ii = 1`` first. When the Cholesky
    factorisation fails the damping fraction is multiplied by 10 and tried
    again, up to ``max_retries`` times; ``U`` is None when every try failed.

    Formula
    -------
    :math:`H_d = H + \\lambda\\,\\overline{\\operatorname{diag} H}\\, I`, :math:`H_d = L L^T`,
    :math:`H_d^{-1} = (L L^T)^{-1}`, :math:`H_d^{-1} = U^T U`.

    Reference
    ---------
    llmcompressor 0.14 ``gptq/helpers.py`` ``factorize_hessian`` (one try, then
    an identity factor and RTN); LAPACK ``potrf``/``potri`` as torch calls them.
    """
    dt = _precision(precision)
    h = _check_hessian(hessian, None).astype(dt)
    h = h.copy()
    d = np.diagonal(h).copy()
    d[d == 0] = 1
    np.fill_diagonal(h, d)
    return _factor(h, dampening_frac, max_retries)


def _prepared_factor(H, W, hessian_factor, dampening_frac, max_retries, dt):
    """Dead inputs, then the upper factor of the damped H^-1: ``(U, frac, retries, fallback)``.

    Dead inputs (``H_ii = 0``) get ``H_ii = 1`` and a zero weight column, in place
    (GPTQ's and SparseGPT's reference code). ``hessian_factor`` (torch's factor,
    say) is used as given; otherwise :func:`_factor` damps with retries, and when
    every try fails ``U`` is the identity and ``fallback`` is True (round to
    nearest, as llmcompressor falls back).
    """
    cols = H.shape[0]
    dead = np.diagonal(H) == 0
    if np.any(dead):
        H[dead, dead] = 1
        W[:, dead] = 0
    if hessian_factor is not None:
        U = np.asarray(hessian_factor).astype(dt)
        if U.shape != (cols, cols):
            raise RefquantError(f"hessian_factor has shape {U.shape}; expected ({cols}, {cols})")
        return U, float(dampening_frac), 0, False
    U, frac, retries = _factor(H, dampening_frac, max_retries)
    if U is None:
        return np.eye(cols, dtype=dt), frac, retries, True
    return U, frac, retries, False


def _factor(h: np.ndarray, dampening_frac: float, max_retries: int):
    dt = h.dtype.type
    base = np.diagonal(h).copy()
    mean = dt(np.mean(base, dtype=dt))
    frac = float(dampening_frac)
    for retry in range(max_retries + 1):
        hd = h.copy()
        np.fill_diagonal(hd, base + dt(dt(frac) * mean))
        u = _upper_inverse_factor(hd)
        if u is not None:
            return u, frac, retry
        frac = frac * 10 if frac > 0 else 1e-6
    return None, frac, max_retries


# --------------------------------------------------------------------------- checks
def _check_hessian(hessian, width):
    h = np.asarray(hessian)
    if h.dtype.kind not in "biuf" or h.ndim != 2 or h.shape[0] != h.shape[1]:
        raise RefquantError(
            f"hessian must be a square real matrix, got shape {h.shape} dtype {h.dtype}"
        )
    if width is not None and h.shape[0] != width:
        raise RefquantError(
            f"hessian has shape {h.shape} but weight has {width} input columns; "
            f"expected ({width}, {width})"
        )
    if not np.all(np.isfinite(h)):
        raise RefquantError("hessian contains NaN or Inf; calibration inputs must be finite")
    return h


def calibration_rows(x, in_features: int, dtype) -> np.ndarray:
    """A batch of calibration inputs ``(..., in_features)`` as finite 2-D rows of ``dtype``.

    The one check of every streaming statistic (GPTQ's Hessian, Wanda's row
    scalars): a real array whose last axis is the layer's input width, no NaN / Inf.
    """
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise RefquantError(f"x must be a real numeric array, got dtype {a.dtype}")
    if a.ndim == 0 or a.shape[-1] != in_features:
        raise RefquantError(
            f"x has shape {a.shape}; expected (..., {in_features}) "
            f"(the last axis is the layer's input width)"
        )
    a = a.reshape(-1, in_features).astype(dtype)
    if not np.all(np.isfinite(a)):
        bad = int(np.count_nonzero(~np.isfinite(a)))
        raise RefquantError(f"x contains {bad} NaN or Inf values; calibration inputs must be finite")
    return a


def _check_weight(weight):
    w = np.asarray(weight)
    if w.dtype.kind not in "biuf" or w.ndim != 2 or w.size == 0:
        raise RefquantError(
            f"weight must be a non-empty 2-D real matrix (out, in), got shape {w.shape} "
            f"dtype {w.dtype}"
        )
    if not np.all(np.isfinite(w)):
        raise RefquantError("weight contains NaN or Inf; expected finite weights")
    return w


# --------------------------------------------------------------------------- qparams
def _group_qparams(w: np.ndarray, bits: int, symmetric: bool):
    """Min-max qparams of each row of ``w`` (out, k) as compressed-tensors computes them."""
    lo = np.min(w, axis=1)
    hi = np.max(w, axis=1)
    qp = qparams_from_range(
        lo.astype(np.float32), hi.astype(np.float32), dtype=f"int{bits}", symmetric=symmetric,
        symmetric_divisor="half_span", zero_point_formula="round_difference",
        eps=FLOAT32_EPS, precision="float32", axis=0,
    )
    return np.asarray(qp.scale, np.float32), np.asarray(qp.zero_point, np.int64)


def _fp8_qparams(w: np.ndarray):
    """compressed-tensors ``calculate_qparams`` for FLOAT 8 symmetric: ``max|w| / 448`` per row.

    The range is widened to contain 0, ``max_val_pos / (896 / 2)`` in float32,
    a zero scale replaced by float32 eps; zero points are 0.
    """
    lo = np.minimum(np.min(w, axis=1), np.float32(0))
    hi = np.maximum(np.max(w, axis=1), np.float32(0))
    amax = np.maximum(np.abs(lo), np.abs(hi)).astype(np.float32)
    scale = amax / np.float32(_FP8_MAX)
    scale = np.where(scale == 0, np.float32(FLOAT32_EPS), scale).astype(np.float32)
    return scale, np.zeros(w.shape[0], np.int64)


def _fake_quantize_fp8(w, scale):
    """Bit patterns and dequantized values of one column, fp8 e4m3fn.

    compressed-tensors ``_quantize_dequantize`` for FLOAT 8 as llmcompressor's
    GPTQ calls it (``column_scale_window`` passes no zero point for symmetric
    args, so -0 stays -0): ``x / s``, clamp to [-448, 448], cast to
    ``float8_e4m3fn`` (round to nearest even), then ``q * s``.
    """
    import ml_dtypes

    dt = w.dtype.type
    s = scale.astype(dt)
    scaled = w / s
    q8 = np.clip(scaled, dt(-_FP8_MAX), dt(_FP8_MAX)).astype(ml_dtypes.float8_e4m3fn)
    return q8.view(np.uint8).astype(np.int64), q8.astype(dt) * s


def _nvfp4_global_scale(w: np.ndarray) -> np.float32:
    """compressed-tensors ``generate_gparam``: ``448 * 6 / max|w|`` over the whole tensor.

    float32; ``2688.0 / t`` with a Python float is torch's ``reciprocal(t) * 2688``
    (two roundings); ``max|w|`` at least float32 tiny; Inf / NaN become 1.
    """
    amax = np.float32(max(-min(np.min(w), 0.0), max(np.max(w), 0.0)))
    amax = max(amax, np.finfo(np.float32).tiny)
    with np.errstate(over="ignore"):
        g = (np.float32(1) / np.float32(amax)) * np.float32(448.0 * 6.0)
    return np.float32(g) if np.isfinite(g) else np.float32(1)


def _nvfp4_qparams(w: np.ndarray, global_scale):
    """compressed-tensors ``calculate_qparams`` for NVFP4 (TENSOR_GROUP): per row of ``w``
    ``fp8(global_scale * max|w| / 6)`` (clamped to ±448, cast to e4m3fn), 0 → 0.125."""
    import ml_dtypes

    lo = np.minimum(np.min(w, axis=1), np.float32(0))
    hi = np.maximum(np.max(w, axis=1), np.float32(0))
    amax = np.maximum(np.abs(lo), np.abs(hi)).astype(np.float32)
    s = np.float32(global_scale) * (amax / np.float32(6))
    s = np.clip(s, np.float32(-448), np.float32(448)).astype(ml_dtypes.float8_e4m3fn)
    s = s.astype(np.float32)
    s = np.where(s == 0, np.float32(0.125), s).astype(np.float32)  # float8_e4m3fn eps
    return s, np.zeros(w.shape[0], np.int64)


def _fake_quantize_fp4(w, eff_scale):
    """e2m1 bit patterns and dequantized values: ``x / s``, clamp ±6, round to the e2m1
    grid (half to even: compressed-tensors ``cast_to_fp4``'s thresholds), ``q * s``."""
    import ml_dtypes

    dt = w.dtype.type
    s = eff_scale.astype(dt)
    q4 = np.clip(w / s, dt(-6), dt(6)).astype(ml_dtypes.float4_e2m1fn)
    return q4.view(np.uint8).astype(np.int64), q4.astype(dt) * s


def _fake_quantize(w, scale, zp, qmin, qmax, symmetric):
    """Codes and dequantized values of one column, in ``w``'s dtype.

    compressed-tensors ``_quantize_dequantize``: ``x / s`` (+ ``z``), clamp to
    [qmin, qmax], ``torch.round`` (half to even), then ``(q - z) * s``.
    """
    dt = w.dtype.type
    s = scale.astype(dt)
    scaled = w / s
    if not symmetric:
        scaled = scaled + zp.astype(dt)
    code = np.round(np.clip(scaled, dt(qmin), dt(qmax)))
    deq = (code - zp.astype(dt)) * s if not symmetric else code * s
    return code.astype(np.int64), deq


# --------------------------------------------------------------------------- GPTQ
def gptq(
    weight,
    hessian,
    *,
    bits=4,
    symmetric=True,
    group_size=128,
    fmt="int",
    actorder=None,
    static_groups=True,
    dampening_frac=0.01,
    blocksize=128,
    precision="float64",
    hessian_factor=None,
    max_damping_retries=8,
    n_samples=None,
) -> GPTQResult:
    """Quantize ``weight`` (out, in) with GPTQ on the layer Hessian ``hessian`` (in, in).

    Parameters
    ----------
    weight : array_like (out, in)
    hessian : array_like (in, in) or HessianAccumulator
        :math:`\\frac{2}{n}\\sum x x^T`; an accumulator also gives ``n_samples``.
    bits : int
        2 to 8: the signed grid ``[-2^(bits-1), 2^(bits-1) - 1]`` for both
        symmetric and asymmetric quantization (compressed-tensors' INT type).
    symmetric : bool
        Symmetric: :math:`s = \\max|w| / ((q_{max} - q_{min})/2)` (7.5 for int4),
        ``z = 0``. Asymmetric: :math:`s = (\\max - \\min)/(q_{max} - q_{min})`,
        ``z = clamp(round(q_min - min/s))``; min and max are widened to contain 0.
    group_size : int, None or "tensor"
        Columns per group; ``None`` or ``-1``: one group per row (per channel);
        ``"tensor"``: one scale (and zero point) for the whole matrix, repeated
        in every row of ``scale`` (compressed-tensors' TENSOR strategy).
    fmt : "int", "float8_e4m3fn" or "nvfp4"
        The grid: signed integers of ``bits`` bits; fp8 e4m3fn (``bits`` is
        then ignored; symmetric only, ``s = max|w| / 448``; codes hold the
        e4m3fn bit patterns 0..255), llmcompressor's
        ``QuantizationArgs(num_bits=8, type="float")``; or NVFP4 (compressed-tensors'
        ``NVFP4`` preset: e2m1 codes 0..15, group scales rounded to e4m3fn, a
        float32 global scale ``448 * 6 / max|W|``, effective scale
        ``scale / global_scale``; group_size 16 in the preset).
    actorder : None or "weight"
        ``"weight"``: process columns by decreasing ``diag(H)`` (ties: lower
        index first; torch's unstable argsort may order ties differently).
    static_groups : bool
        See the module docstring.
    dampening_frac : float
        :math:`\\lambda` (llmcompressor's ``dampening_frac``, the paper's percdamp).
    blocksize : int
        Columns per lazy batch update.
    precision : "float64" or "float32"
        float32 follows llmcompressor's float32 arithmetic op by op (the block
        matmul and the Cholesky go through BLAS / LAPACK, whose summation order
        differs between OpenBLAS and MKL); float64 is the reference.
    hessian_factor : array_like (in, in), optional
        A ready upper factor ``U`` of the damped, permuted :math:`H^{-1}` (for
        instance torch's own), used instead of factorising ``hessian``.
    max_damping_retries : int
        Times the damping is multiplied by 10 when H is not positive definite.
    n_samples : int, optional
        Calibration rows behind ``hessian`` (taken from a HessianAccumulator);
        fewer than ``in`` warns
        (H is then singular and only the damping makes it definite).

    Returns
    -------
    GPTQResult

    Formula
    -------
    :math:`e_j = (w_j - Q(w_j)) / U_{jj}`,
    :math:`W_{:, j:} \\mathrel{-}= e_j U_{j, j:}`,
    :math:`\\mathcal L = \\tfrac12 \\sum_j \\|e_j\\|^2`.

    Reference
    ---------
    Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate Post-Training
    Quantization for Generative Pre-trained Transformers", ICLR 2023, Algorithm 1;
    llmcompressor 0.14.0.1 ``modifiers/gptq/gptq_quantize.py`` ``quantize_weight``
    and ``gptq_block_update`` with compressed-tensors 0.19 ``fake_quantize``:
    ``x / s`` in float32 (division, not a reciprocal), ``+ z``, clamp, then
    ``torch.round`` (half to even), dequantize ``(q - z) * s``.
    """
    w0 = _check_weight(weight)
    rows, cols = w0.shape
    if isinstance(hessian, HessianAccumulator):
        n_samples = hessian.n_samples if n_samples is None else n_samples
        hessian = hessian.hessian
    h0 = _check_hessian(hessian, cols)
    dt = _precision(precision)
    if isinstance(bits, bool) or bits not in GPTQ_BITS:
        raise RefquantError(f"bits must be one of {GPTQ_BITS}, got {bits!r}")
    if isinstance(group_size, str) and group_size != "tensor":
        raise RefquantError(f"group_size must be a positive int, -1, None or 'tensor', "
                            f"got {group_size!r}")
    if fmt not in GPTQ_FORMATS:
        raise RefquantError(f"fmt must be one of {GPTQ_FORMATS}, got {fmt!r}")
    is_fp8 = fmt == "float8_e4m3fn"
    is_fp4 = fmt == "nvfp4"
    if (is_fp8 or is_fp4) and not symmetric:
        raise RefquantError(f"fmt={fmt!r} is symmetric only; got symmetric=False")
    if is_fp4 and (isinstance(group_size, str) or group_size is None or group_size == -1):
        raise RefquantError(f"fmt='nvfp4' needs an int group_size (16), got {group_size!r}")
    per_tensor = isinstance(group_size, str) and group_size == "tensor"
    if per_tensor or group_size is None or (not isinstance(group_size, str)
                                            and group_size == -1):
        gs = cols
    elif isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) \
            or group_size < 1:
        raise RefquantError(f"group_size must be a positive int, -1 or None, got {group_size!r}")
    else:
        gs = int(group_size)
    if actorder not in (None, "weight"):
        raise RefquantError(f"actorder must be None or 'weight', got {actorder!r}")
    if isinstance(blocksize, bool) or not isinstance(blocksize, (int, np.integer)) \
            or blocksize < 1:
        raise RefquantError(f"blocksize must be a positive int, got {blocksize!r}")
    if not (isinstance(dampening_frac, (int, float)) and 0 <= dampening_frac < math.inf):
        raise RefquantError(f"dampening_frac must be a finite number >= 0, got {dampening_frac!r}")
    if n_samples is not None and n_samples < cols:
        warnings.warn(
            f"n_samples {n_samples} is below the input width {cols}: the Hessian is "
            f"singular and only the damping ({dampening_frac}) makes it definite",
            stacklevel=2,
        )
    fmt_min, fmt_max = -(1 << (bits - 1)), (1 << (bits - 1)) - 1

    W = w0.astype(dt, copy=True)
    H = h0.astype(dt, copy=True)
    n_groups = -(-cols // gs)

    global_scale = _nvfp4_global_scale(w0.astype(np.float32)) if is_fp4 else None

    def qparams(block):
        """Scale and zero point of each row of ``block`` (float32), or one for all rows."""
        b = block.astype(np.float32)
        if per_tensor:
            b = np.stack([b.min(initial=np.inf), b.max(initial=-np.inf)])[None, :]
        if is_fp4:
            sc, z = _nvfp4_qparams(b, global_scale)
        else:
            sc, z = _fp8_qparams(b) if is_fp8 else _group_qparams(b, bits, symmetric)
        if per_tensor:
            sc, z = np.repeat(sc, rows), np.repeat(z, rows)
        return sc, z

    # static qparams: the observer runs on the original weights (before dead columns are zeroed)
    if static_groups:
        scale = np.empty((rows, n_groups), np.float32)
        zp = np.zeros((rows, n_groups), np.int64)
        for g in range(n_groups):
            scale[:, g], zp[:, g] = qparams(w0[:, g * gs:(g + 1) * gs])

    perm = None
    if actorder == "weight":
        perm = np.argsort(-np.diagonal(H), kind="stable")
        W = W[:, perm]
        H = H[np.ix_(perm, perm)]
    U, frac, retries, fallback = _prepared_factor(H, W, hessian_factor, dampening_frac,
                                                  max_damping_retries, dt)

    order = perm if perm is not None else np.arange(cols)
    if static_groups:
        g_proc = order // gs  # group of the column processed at each position
    else:
        g_proc = np.arange(cols) // gs
        scale = np.empty((rows, n_groups), np.float32)
        zp = np.zeros((rows, n_groups), np.int64)

    codes = np.empty((rows, cols), np.int64)
    loss_rows = np.zeros(rows, dt)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].copy()
        Q1 = np.zeros_like(W1)
        E1 = np.zeros_like(W1)
        L1 = np.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i
            if not static_groups and j % gs == 0:
                g = j // gs
                scale[:, g], zp[:, g] = qparams(W[:, j:j + gs])
            g = g_proc[j]
            w = W1[:, i]
            if is_fp4:  # column_scale_window: s / global_scale in float32
                codes[:, j], q = _fake_quantize_fp4(w, scale[:, g] / global_scale)
            elif is_fp8:
                codes[:, j], q = _fake_quantize_fp8(w, scale[:, g])
            else:
                codes[:, j], q = _fake_quantize(w, scale[:, g], zp[:, g], fmt_min, fmt_max,
                                                symmetric)
            err = (w - q) / U1[i, i]
            Q1[:, i] = q
            E1[:, i] = err
            L1[:, i] = err * err
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
        W[:, i1:i2] = Q1
        loss_rows += np.sum(L1, axis=1) / dt(2)
        W[:, i2:] -= E1 @ U[i1:i2, i2:]

    g_idx = np.empty(cols, np.int64)
    g_idx[order] = g_proc
    if perm is not None:
        inv = np.argsort(perm)
        W = W[:, inv]
        codes = codes[:, inv]
    return GPTQResult(
        codes=codes, scale=scale, zero_point=zp, g_idx=g_idx, dequantized=W,
        loss=float(np.sum(loss_rows)), perm=perm,
        dampening_frac=frac, damping_retries=retries, rtn_fallback=fallback,
        global_scale=None if global_scale is None else float(global_scale),
    )
