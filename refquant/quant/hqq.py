"""HQQ: half-quadratic quantization, calibration-free (Badri & Shaji 2023).

Asymmetric ``bits``-bit quantization on the grid ``[0, 2^bits - 1]`` whose zero
point is fitted by a proximal (half-quadratic) solver that minimises the
:math:`\\ell_p` norm (``p < 1``, sparsity-promoting) of the weight error

.. math:: \\min_{z} \\; \\| W - (Q_z(W) - z) / s \\|_p^p ,

with HQQ's convention that ``s`` is the *inverse* scale (``W_q = round(W s + z)``;
the stored scale is ``1 / s``). One iteration (hqq ``optimize_weights_proximal_legacy_step``):

.. math::

    W_q &= \\operatorname{clamp}(\\operatorname{round}(W s + z), 0, 2^b - 1) \\\\
    W_r &= (W_q - z) / s \\\\
    W_e &= \\operatorname{shrink}_p(W - W_r, \\beta)
          = \\operatorname{sign}(x)\\, \\max(|x| - |x|^{p-1}/\\beta, 0) \\\\
    z   &\\leftarrow \\operatorname{mean}_{axis}\\big(W_q - (W - W_e)\\, s\\big)

and the loop stops at the first iteration whose mean absolute error
:math:`\\operatorname{mean}|W - W_r|` does not improve (``legacy``), or, for
``method="v2"`` (``optimize_weights_proximal_v2``), keeps the best ``(s, z)``,
stops when the error fails to improve by more than ``tol`` and multiplies
``beta`` by ``kappa`` each iteration.

Quirks of hqq 0.2.8.post1 that refquant follows (the code, not the paper):

* only the zero point is optimised: the scale stays the min-max one (the
  paper's alternating update of the scale is not in the code; v2's optional
  ``scale_gridsearch`` is not reproduced);
* ``legacy`` never multiplies ``beta`` by ``kappa`` (``kappa`` is unused), and
  when it stops, the zero point it returns is the one updated in the
  non-improving iteration (one step past the best);
* groups: ``axis=1`` reshapes the weight to ``(-1, group_size)`` (consecutive
  elements in row-major order), ``axis=0`` to ``(group_size, -1)`` (each group a
  column of that view: elements ``numel / group_size`` apart in row-major order);
* the min-max initial inverse scale is ``(2^b - 1) / (max - min)``, replaced by
  1 where ``|max - min| <= 1e-4`` and clamped to at most ``2e4``; ``zero = -min s``,
  rounded when ``round_zero``.

Precision
---------
``precision="float32"`` follows hqq on torch CPU op by op (float32 throughout,
Python-float constants cast to float32, ``torch.round`` half to even). Two
operations are not bit-identical with torch: ``|x|^(p-1)`` (torch's vectorised
SLEEF ``powf``, within 1 ulp; refquant's float64 ``pow`` rounded once agrees on
98.5 % of values) and the means (torch's cascade sum, whose order depends on the
SIMD width; refquant sums in float64 and rounds once). The solver is
discontinuous (``round``): a one-ulp difference at a rounding tie can move one
group to a neighbouring fixed point. tests/peers/test_hqq.py states the bounds.
``precision="float64"`` is the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._errors import RefquantError

__all__ = ["HQQResult", "hqq_quantize", "hqq_dequantize", "shrink_lp", "HQQ_BITS"]

HQQ_BITS = (1, 2, 3, 4, 5, 6, 8)  # hqq's SUPPORTED_BITS without 1.58
_PRECISIONS = {"float32": np.float32, "float64": np.float64}


@dataclass(frozen=True)
class HQQResult:
    """What :func:`hqq_quantize` returns.

    Attributes
    ----------
    codes : uint8 array, the weight's shape
        ``W_q`` in ``[0, 2^bits - 1]``.
    scale : array
        The stored (dequantization) scale ``1 / s``, shape ``(n_groups, 1)``
        (``axis=1``) or ``(1, n_groups)`` (``axis=0``), hqq's ``meta["scale"]``.
    zero : array
        The zero point (float, not rounded unless ``round_zero``), same shape.
    dequantized : array, the weight's shape
        ``(W_q - z) * scale`` in the working precision (hqq dequantizes in its
        ``compute_dtype``, float16 by default).
    iterations : int
        Solver iterations run (0 without optimisation).
    errors : tuple of float
        ``mean|W - W_r|`` of each iteration.
    """

    codes: np.ndarray
    scale: np.ndarray
    zero: np.ndarray
    dequantized: np.ndarray
    iterations: int
    errors: tuple


def shrink_lp(x, beta, lp_norm, *, precision="float64") -> np.ndarray:
    """HQQ's generalised soft-thresholding: :math:`\\operatorname{sign}(x)\\max(|x| - |x|^{p-1}/\\beta, 0)`.

    ``lp_norm == 1`` is plain soft-thresholding by ``1 / beta``.

    Reference
    ---------
    hqq 0.2.8.post1 ``core/optimize.py`` ``shrink_lp_op``.
    """
    dt = _precision(precision)
    a = np.asarray(x, dtype=dt)
    inv_beta = dt(1.0 / beta)
    out = np.abs(a)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if lp_norm == 1:
            out = np.maximum(out - inv_beta, dt(0))
        else:
            out = np.maximum(out - inv_beta * _pow(out, lp_norm - 1, dt), dt(0))
    return out * np.sign(a)


def _pow(a, exponent, dt):
    """``a ** exponent``; float32: in float64 with the exponent rounded to float32, then
    rounded (torch's float32 ``pow`` agreed on 98.5 % of values this way, on 80 %
    with NumPy's float32 ``powf``)."""
    if dt is np.float64:
        return np.power(a, exponent)
    return np.power(a.astype(np.float64), float(np.float32(exponent))).astype(np.float32)


def _precision(precision):
    if precision not in _PRECISIONS:
        raise RefquantError(f"precision must be 'float32' or 'float64', got {precision!r}")
    return _PRECISIONS[precision]


def _mean(a, axis, dt):
    # sum in float64, rounded once to the working dtype, then divided (torch: sum / n)
    s = np.sum(a, axis=axis, keepdims=True, dtype=np.float64).astype(dt)
    return s / dt(a.shape[axis]) if axis is not None else s / dt(a.size)


def _mean_abs(a, dt) -> float:
    return float(dt(np.sum(np.abs(a), dtype=np.float64)) / dt(a.size))


def _optimize(wf, scale, zero, qmax, axis, lp_norm, beta, kappa, iters, method, tol, dt,
              early_stop):
    """Zero-point solver: ``(scale, zero, iterations, errors)``."""
    errors = []
    lo, hi = dt(0), dt(qmax)
    it = 0
    if method == "legacy":
        best = np.inf
        while it < iters:
            it += 1
            wq = np.clip(np.round(wf * scale + zero), lo, hi)
            wr = (wq - zero) / scale
            we = shrink_lp(wf - wr, beta, lp_norm, precision=_name(dt))
            zero = _mean(wq - (wf - we) * scale, axis, dt)
            err = _mean_abs(wf - wr, dt)
            errors.append(err)
            if err < best or not early_stop:
                best = min(best, err)
            else:
                break
        return scale, zero, it, errors
    # v2: keep the best, stop when the error does not improve by more than tol
    lp = max(lp_norm, 0.1)
    best = 1e4
    prev = (scale.copy(), zero.copy())
    while it < iters:
        it += 1
        wq = np.clip(np.round(wf * scale + zero), lo, hi)
        wr = (wq - zero) / scale
        err = _mean_abs(wf - wr, dt)
        errors.append(err)
        if early_stop:
            if best - err > tol:
                best = err
                prev = (scale.copy(), zero.copy())
            else:
                scale, zero = prev[0].copy(), prev[1].copy()
                break
        we = shrink_lp(wf - wr, beta, lp, precision=_name(dt))
        zero = _mean(wq - (wf - we) * scale, axis, dt)
        beta *= kappa
    return scale, zero, it, errors


def _name(dt):
    return "float32" if dt is np.float32 else "float64"


def hqq_quantize(weight, *, bits=4, group_size=64, axis=1, optimize=True, round_zero=False,
                 lp_norm=0.7, beta=10.0, kappa=1.01, iters=20, method="legacy", tol=0.0,
                 early_stop=True, precision="float32") -> HQQResult:
    """Quantize ``weight`` with HQQ's min-max initialisation and proximal zero-point solver.

    Parameters
    ----------
    weight : array_like (out, in)
    bits : int
        1, 2, 3, 4, 5, 6 or 8: codes in ``[0, 2^bits - 1]``.
    group_size : int or None
        Must divide ``weight.size`` (hqq's rule); None: one group per row
        (``axis=1``) or per column (``axis=0``) of the weight itself.
    axis : 0 or 1
        See the module docstring (hqq's ``BaseQuantizeConfig`` default is 1,
        ``Quantizer.quantize``'s is 0).
    optimize : bool
        Run the solver (hqq's ``optimize``).
    round_zero : bool
        Round the initial zero point (``BaseQuantizeConfig`` sets it for 4 bits).
    lp_norm, beta, kappa, iters : float, float, float, int
        hqq's ``opt_params`` (defaults 0.7, 10, 1.01, 20).
    method : "legacy" or "v2"
        ``optimize_weights_proximal_legacy`` (hqq's default ``optimize_weights``)
        or ``optimize_weights_proximal_v2`` (``tol`` and early stop).
    tol : float
        v2's improvement threshold.
    early_stop : bool
        v2's ``early_stop``; False runs all ``iters`` iterations (for legacy
        too, which hqq always stops early: use it to replay a run that stopped
        at a known iteration, since the stop compares two errors that can tie
        to float32 rounding).
    precision : "float32" or "float64"

    Returns
    -------
    HQQResult

    Formula
    -------
    :math:`s = (2^b - 1)/(\\max - \\min)`, :math:`z_0 = -\\min\\,s`; the solver of the
    module docstring; :math:`W_q = \\operatorname{clamp}(\\operatorname{round}(W s + z), 0, 2^b - 1)`
    (half to even); stored scale :math:`1/s`.

    Reference
    ---------
    H. Badri, A. Shaji, "Half-Quadratic Quantization of Large Machine Learning
    Models" (Mobius Labs blog, 2023); hqq 0.2.8.post1 ``core/quantize.py``
    ``Quantizer.quantize`` and ``core/optimize.py``
    ``optimize_weights_proximal_legacy`` / ``optimize_weights_proximal_v2`` /
    ``shrink_lp_op``.
    """
    w = np.asarray(weight)
    if w.dtype.kind not in "biuf" or w.ndim != 2 or w.size == 0:
        raise RefquantError(f"weight must be a non-empty 2-D real matrix, got shape {w.shape} "
                            f"dtype {w.dtype}")
    if not np.all(np.isfinite(w)):
        raise RefquantError("weight contains NaN or Inf; expected finite weights")
    if isinstance(bits, bool) or bits not in HQQ_BITS:
        raise RefquantError(f"bits must be one of {HQQ_BITS}, got {bits!r}")
    if axis not in (0, 1) or isinstance(axis, bool):
        raise RefquantError(f"axis must be 0 or 1, got {axis!r}")
    if method not in ("legacy", "v2"):
        raise RefquantError(f"method must be 'legacy' or 'v2', got {method!r}")
    if group_size is not None:
        if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) \
                or group_size < 1 or w.size % group_size:
            raise RefquantError(
                f"group_size must be a positive int dividing weight.size {w.size}, "
                f"got {group_size!r}")
    if not (isinstance(iters, (int, np.integer)) and iters >= 1):
        raise RefquantError(f"iters must be a positive int, got {iters!r}")
    if not beta > 0 or not kappa > 0 or not 0 < lp_norm <= 1:
        raise RefquantError(f"expected beta > 0, kappa > 0, 0 < lp_norm <= 1; got beta={beta}, "
                            f"kappa={kappa}, lp_norm={lp_norm}")
    dt = _precision(precision)
    shape = w.shape
    wf = w.astype(dt)
    if group_size is not None:
        wf = wf.reshape(-1, group_size) if axis == 1 else wf.reshape(group_size, -1)
    lo = np.min(wf, axis=axis, keepdims=True)
    hi = np.max(wf, axis=axis, keepdims=True)
    qmax = (1 << bits) - 1
    denom = hi - lo
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        # torch's ``max_v / denom`` with a Python int is ``reciprocal(denom) * max_v``
        scale = (dt(1) / denom) * dt(qmax)
    scale = np.where(np.abs(denom) <= dt(1e-4), dt(1.0), scale)
    scale = np.minimum(scale, dt(2e4)).astype(dt)
    zero = (-lo * scale).astype(dt)
    if round_zero:
        zero = np.round(zero)
    it, errors = 0, []
    if optimize:
        scale, zero, it, errors = _optimize(wf, scale, zero, qmax, axis, lp_norm, float(beta),
                                            float(kappa), int(iters), method, float(tol), dt,
                                            bool(early_stop))
    codes = np.clip(np.round(wf * scale + zero), dt(0), dt(qmax))
    stored = (dt(1.0) / scale).astype(dt)
    deq = ((codes - zero) * stored).reshape(shape)
    return HQQResult(codes=codes.astype(np.uint8).reshape(shape), scale=stored, zero=zero,
                     dequantized=deq, iterations=it, errors=tuple(errors))


def hqq_dequantize(codes, scale, zero, *, group_size=64, axis=1, dtype=np.float32) -> np.ndarray:
    """``(W_q - z) * scale`` in ``dtype``, reshaped like hqq's ``Quantizer.dequantize``."""
    q = np.asarray(codes)
    shape = q.shape
    dt = np.dtype(dtype).type
    if group_size is not None:
        if q.size % group_size:
            raise RefquantError(f"group_size {group_size} does not divide codes.size {q.size}")
        q = q.reshape(-1, group_size) if axis == 1 else q.reshape(group_size, -1)
    return ((q.astype(dt) - np.asarray(zero, dt)) * np.asarray(scale, dt)).reshape(shape)
