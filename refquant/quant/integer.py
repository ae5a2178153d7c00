"""Integer-only inference: exact integer matmul, fixed-point multipliers, requantization.

An integer-only linear layer (Jacob et al., CVPR 2018, §2.2-2.4) computes

.. math::

    \\mathrm{acc}_{mn} = \\sum_k (a_{mk} - z_a)(b_{kn} - z_b) + \\mathrm{bias}_n,
    \\qquad
    y_{mn} = \\mathrm{clamp}\\big(z_y + \\mathrm{round}(M_n \\cdot \\mathrm{acc}_{mn}),
             q_{min}, q_{max}\\big),
    \\qquad M_n = \\frac{s_a s_{b,n}}{s_y}

with the real multiplier :math:`M` either applied in floating point (ONNX
QLinearMatMul in onnxruntime) or as a 32-bit fixed-point number
:math:`M \\approx m \\cdot 2^{e - 31}` with :math:`m \\in [2^{30}, 2^{31})`
(gemmlowp, TFLite). The pieces here are the references that ``kernels/``
accelerates:

====================================  ===============================================
function                              what it pins down
====================================  ===============================================
:func:`integer_matmul`                exact accumulation (int64), per-row / per-column
                                      zero points, int32 wraparound emulated on demand
:func:`accumulator_range`,            worst-case accumulator for a depth and operand
:func:`int32_accumulation_fits`,      ranges, exactly, with Python integers
:func:`max_int32_depth`
:func:`quantize_multiplier`           frexp into (int32 multiplier, shift), TFLite's
                                      2^31 and shift < -31 cases
:func:`multiply_by_quantized_multiplier`  double rounding (gemmlowp) or single rounding
                                      (TFLITE_SINGLE_ROUNDING); the int64 variant
:func:`requantize`                    int32 accumulators to int8 / uint8 by float or
                                      fixed-point multiplier, activation clamp
:func:`quantize_bias`                 int32 bias with scale :math:`s_a s_b`
====================================  ===============================================

The fixed-point primitives carry gemmlowp's names (``fixedpoint.h``);
:mod:`refquant.compat.tflite` exposes them under TFLite's names and arguments.
All integer arithmetic is done in int64 NumPy arrays, where every intermediate
of these formulas fits, so results are exact.
"""

from __future__ import annotations

import numpy as np

from .._core.granularity import broadcast_param, normalize_axis
from .._core.rounding import round_to_int
from .._errors import RefquantError
from ..formats.integer import int_format

__all__ = [
    "INT32_MIN",
    "INT32_MAX",
    "integer_matmul",
    "accumulator_range",
    "int32_accumulation_fits",
    "max_int32_depth",
    "saturating_rounding_doubling_high_mul",
    "rounding_divide_by_pot",
    "quantize_multiplier",
    "multiply_by_quantized_multiplier",
    "multiply_by_quantized_multiplier_int64",
    "requantize",
    "quantize_bias",
]

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
_ACCUMULATE = ("int64", "int32_wrap", "int32_checked")


def _int_array(x, name, *, lo=None, hi=None, what=None) -> np.ndarray:
    """``x`` as an int64 array; integer dtypes only; optional range check."""
    a = np.asarray(x)
    if a.dtype.kind == "b" or (a.dtype.kind not in "iu" and a.dtype.name not in (
        "int2", "int4", "uint2", "uint4"
    )):
        raise RefquantError(f"{name} must be an integer array, got dtype {a.dtype}")
    if a.dtype == np.uint64 and a.size and int(a.max()) > 2**63 - 1:
        raise RefquantError(f"{name} holds values above 2^63 - 1, got {int(a.max())}")
    a = a.astype(np.int64)
    if a.size:
        bad = np.zeros(a.shape, bool)
        if lo is not None:
            bad |= a < lo
        if hi is not None:
            bad |= a > hi
        if bad.any():
            raise RefquantError(
                f"{name} must lie in [{lo}, {hi}]{' (' + what + ')' if what else ''}; "
                f"got {int(a[bad].reshape(-1)[0])}"
            )
    return a


def _wrap_int32(v: np.ndarray) -> np.ndarray:
    """Two's-complement wrap of int64 values to int32 (what a C cast does on every target)."""
    return ((np.asarray(v, dtype=np.int64) + 2**31) % 2**32 - 2**31).astype(np.int32)


def _c_div_pow2(v: np.ndarray, k: int) -> np.ndarray:
    """C++ ``v / 2^k`` on int64: division truncating toward zero."""
    return np.where(v >= 0, v >> k, -((-v) >> k))


def _check_broadcast(**arrays) -> None:
    """RefquantError naming the shapes when the arrays do not broadcast together."""
    try:
        np.broadcast_shapes(*(np.shape(a) for a in arrays.values()))
    except ValueError:
        shapes = ", ".join(f"{k} {np.shape(a)}" for k, a in arrays.items())
        raise RefquantError(f"shapes do not broadcast together: {shapes}") from None


def _real(v, name, dtype=np.float64) -> np.ndarray:
    """``v`` as a real (float / integer) array of ``dtype``; RefquantError otherwise."""
    a = np.asarray(v)
    if a.dtype.kind not in "fiu" and a.dtype.name != "bfloat16":
        raise RefquantError(f"{name} must be real numbers, got {v!r} (dtype {a.dtype})")
    return a.astype(dtype)


def _int(v, name) -> int:
    """A Python int from an integer (or integral) scalar; RefquantError otherwise."""
    try:
        i = int(v)
    except (TypeError, ValueError):
        raise RefquantError(f"{name} must be an integer, got {v!r}") from None
    if i != v:
        raise RefquantError(f"{name} must be an integer, got {v!r}")
    return i


# ----------------------------------------------------------------------------- matmul


def _zero_point(zp, n, name, axis_name):
    z = _int_array(zp, name)
    if z.ndim == 0 or z.shape == (1,):
        return z.reshape(())
    if z.shape != (n,):
        raise RefquantError(
            f"{name} has shape {z.shape}; expected a scalar or one value per {axis_name} ({n},)"
        )
    return z


def integer_matmul(a, b, a_zero_point=0, b_zero_point=0, *, accumulate="int64") -> np.ndarray:
    """Exact integer matrix product with zero points: ``(a - z_a) @ (b - z_b)``.

    Parameters
    ----------
    a : array_like of integers, shape (..., M, K) or (K,)
        Left operand (activations), any integer dtype (int8, uint8, int4 codes ...).
    b : array_like of integers, shape (K, N) or (..., K, N)
        Right operand (weights).
    a_zero_point : int or array of shape (M,)
        Per tensor or per row of ``a`` (ONNX MatMulInteger allows both).
    b_zero_point : int or array of shape (N,)
        Per tensor or per column of ``b``.
    accumulate : {"int64", "int32_wrap", "int32_checked"}
        ``"int64"``: the exact sum, returned as int64. ``"int32_wrap"``: the
        result a wrapping int32 accumulator gives, i.e. the exact sum modulo
        :math:`2^{32}` in two's complement (the same for every summation order,
        because addition modulo :math:`2^{32}` is associative). ``"int32_checked"``:
        int32, raising :class:`RefquantError` if an exact result leaves int32.
        A particular summation order can overflow in a partial sum even when the
        final value fits; :func:`int32_accumulation_fits` bounds every partial sum.

    Returns
    -------
    numpy.ndarray of int64 (or int32), shape of ``np.matmul(a, b)``.

    Formula
    -------
    :math:`c_{mn} = \\sum_{k} (a_{mk} - z_{a,m})(b_{kn} - z_{b,n})`, exact. No
    rounding happens anywhere; inputs are never modified.

    Reference
    ---------
    ONNX MatMulInteger-10 ("The production MUST never overflow. The accumulation
    may overflow if and only if in 32 bits."); gemmlowp ``doc/low-precision.md``.
    """
    if accumulate not in _ACCUMULATE:
        raise RefquantError(f"accumulate must be one of {', '.join(_ACCUMULATE)}; got {accumulate!r}")
    ai = _int_array(a, "a")
    bi = _int_array(b, "b")
    if ai.ndim == 0 or bi.ndim == 0:
        raise RefquantError(f"a and b must have at least one dimension; got shapes {ai.shape}, {bi.shape}")
    k_a = ai.shape[-1]
    k_b = bi.shape[-2] if bi.ndim >= 2 else bi.shape[0]
    if k_a != k_b:
        raise RefquantError(
            f"inner dimensions differ: a has shape {ai.shape} (K={k_a}), b has shape {bi.shape} (K={k_b})"
        )
    try:
        np.broadcast_shapes(ai.shape[:-2], bi.shape[:-2])
    except ValueError:
        raise RefquantError(
            f"batch dimensions do not broadcast: a has shape {ai.shape}, b has shape {bi.shape}"
        ) from None
    m = ai.shape[-2] if ai.ndim >= 2 else 1
    n = bi.shape[-1] if bi.ndim >= 2 else 1
    za = _zero_point(a_zero_point, m, "a_zero_point", "row of a")
    zb = _zero_point(b_zero_point, n, "b_zero_point", "column of b")
    da = ai - (za[:, None] if za.ndim == 1 else za)
    db = bi - (zb[None, :] if zb.ndim == 1 else zb)
    # float64 matmul is exact while every partial sum stays below 2^53 (BLAS is
    # then an exact integer engine, ~50x faster than NumPy's int64 loop).
    amax = int(np.abs(da).max()) if da.size else 0
    bmax = int(np.abs(db).max()) if db.size else 0
    if k_a * amax * bmax < 2**53:
        c = np.matmul(da.astype(np.float64), db.astype(np.float64)).astype(np.int64)
    else:
        if k_a * amax * bmax >= 2**63:
            raise RefquantError(
                f"the exact product may exceed int64: K={k_a}, max |a - z_a|={amax}, "
                f"max |b - z_b|={bmax}"
            )
        c = np.matmul(da, db)
    if accumulate == "int64":
        return c
    if accumulate == "int32_checked":
        bad = (c < INT32_MIN) | (c > INT32_MAX)
        if bad.any():
            raise RefquantError(
                f"{int(bad.sum())} accumulator(s) overflow int32 (first: {int(c[bad].reshape(-1)[0])}) "
                "and accumulate='int32_checked'"
            )
        return c.astype(np.int32)
    return _wrap_int32(c)


def _range_of(r, name):
    if isinstance(r, tuple | list) and len(r) == 2:
        lo, hi = _int(r[0], name), _int(r[1], name)
        if lo > hi:
            raise RefquantError(f"{name} must be (lo, hi) with lo <= hi; got {r!r}")
        return lo, hi
    fmt = int_format(r)
    return fmt.qmin, fmt.qmax


def accumulator_range(depth, a_range="int8", b_range="int8", a_zero_point=0, b_zero_point=0,
                      bias_range=(0, 0)) -> tuple[int, int]:
    """Exact worst-case range of every partial sum of a zero-pointed dot product.

    Parameters
    ----------
    depth : int
        Number of products summed (K).
    a_range, b_range : str, IntFormat or (lo, hi)
        Ranges of the raw codes (``"int8"`` means [-128, 127]).
    a_zero_point, b_zero_point : int
    bias_range : (lo, hi), default (0, 0)
        Range of a bias added to the sum.

    Returns
    -------
    (lo, hi) : Python ints bounding every partial sum of ``depth`` or fewer
    terms, plus the bias, whatever the order.

    Formula
    -------
    With :math:`t \\in [t_{lo}, t_{hi}]` the range of one product
    :math:`(a - z_a)(b - z_b)` (the extremes of the four corner products),
    :math:`[\\min(0, K t_{lo}) + \\beta_{lo},\\; \\max(0, K t_{hi}) + \\beta_{hi}]`.

    Reference
    ---------
    gemmlowp ``doc/low-precision.md`` (the int32 accumulator); Jacob et al. 2018 §2.4.
    """
    k = _int(depth, "depth")
    if k < 0:
        raise RefquantError(f"depth must be >= 0, got {depth}")
    alo, ahi = _range_of(a_range, "a_range")
    blo, bhi = _range_of(b_range, "b_range")
    za, zb = _int(a_zero_point, "a_zero_point"), _int(b_zero_point, "b_zero_point")
    corners = [x * y for x in (alo - za, ahi - za) for y in (blo - zb, bhi - zb)]
    tlo, thi = min(corners), max(corners)
    blo_, bhi_ = _range_of(bias_range, "bias_range")
    return min(0, k * tlo) + min(0, blo_), max(0, k * thi) + max(0, bhi_)


def int32_accumulation_fits(depth, a_range="int8", b_range="int8", a_zero_point=0,
                            b_zero_point=0, bias_range=(0, 0)) -> bool:
    """True when no partial sum of :func:`accumulator_range` can leave int32.

    Formula
    -------
    :math:`-2^{31} \\le \\mathrm{lo}` and :math:`\\mathrm{hi} \\le 2^{31} - 1`.

    Reference
    ---------
    ONNX MatMulInteger-10 (the accumulation "may overflow if and only if in 32 bits").
    """
    lo, hi = accumulator_range(depth, a_range, b_range, a_zero_point, b_zero_point, bias_range)
    return lo >= INT32_MIN and hi <= INT32_MAX


def max_int32_depth(a_range="int8", b_range="int8", a_zero_point=0, b_zero_point=0) -> int:
    """Largest depth K for which every int32 partial sum is safe (no bias).

    int8 x int8 with zero points 0: the worst product is (-128)(-128) = 16384,
    so K = floor((2^31 - 1) / 16384) = 131071.

    Formula
    -------
    :math:`K = \\min(\\lfloor (2^{31}-1) / t_{hi} \\rfloor, \\lfloor 2^{31} / |t_{lo}| \\rfloor)`.

    Reference
    ---------
    gemmlowp ``doc/low-precision.md``.
    """
    lo1, hi1 = accumulator_range(1, a_range, b_range, a_zero_point, b_zero_point)
    caps = []
    if hi1 > 0:
        caps.append(INT32_MAX // hi1)
    if lo1 < 0:
        caps.append((2**31) // (-lo1))
    return min(caps) if caps else 2**63 - 1


# -------------------------------------------------------------- gemmlowp fixed point


def saturating_rounding_doubling_high_mul(a, b) -> np.ndarray:
    """gemmlowp's ``SaturatingRoundingDoublingHighMul`` on int32 arrays.

    Formula
    -------
    :math:`\\mathrm{trunc}\\big((ab + \\nu) / 2^{31}\\big)` with
    :math:`\\nu = 2^{30}` if :math:`ab \\ge 0` else :math:`1 - 2^{30}` and
    truncating division (so the result is :math:`ab / 2^{31}` rounded to nearest
    with ties toward +Inf: 0.5 -> 1, -0.5 -> 0, -1.5 -> -1), except
    :math:`a = b = -2^{31}`, which saturates to :math:`2^{31} - 1`.

    Reference
    ---------
    gemmlowp ``fixedpoint/fixedpoint.h``, ``SaturatingRoundingDoublingHighMul(int32, int32)``.
    """
    a64 = _int_array(a, "a", lo=INT32_MIN, hi=INT32_MAX, what="int32")
    b64 = _int_array(b, "b", lo=INT32_MIN, hi=INT32_MAX, what="int32")
    _check_broadcast(a=a64, b=b64)
    ab = a64 * b64  # |ab| <= 2^62: exact in int64
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    high = _c_div_pow2(ab + nudge, 31)
    overflow = (a64 == b64) & (a64 == INT32_MIN)
    return np.where(overflow, INT32_MAX, high).astype(np.int32)


def rounding_divide_by_pot(x, exponent) -> np.ndarray:
    """gemmlowp's ``RoundingDivideByPOT``: ``x / 2^exponent`` rounded half away from zero.

    Formula
    -------
    With :math:`\\mu = 2^e - 1`, :math:`r = x \\,\\&\\, \\mu`,
    :math:`\\theta = \\lfloor \\mu / 2 \\rfloor + [x < 0]`:
    :math:`(x \\gg e) + [r > \\theta]` (arithmetic shift). Ties go away from zero.

    Reference
    ---------
    gemmlowp ``fixedpoint/fixedpoint.h``, ``RoundingDivideByPOT`` (exponent in [0, 31]).
    """
    x64 = _int_array(x, "x", lo=INT32_MIN, hi=INT32_MAX, what="int32")
    e = _int_array(exponent, "exponent", lo=0, hi=31)
    _check_broadcast(x=x64, exponent=e)
    mask = (np.int64(1) << e) - 1
    remainder = x64 & mask
    threshold = (mask >> 1) + (x64 < 0)
    return ((x64 >> e) + (remainder > threshold)).astype(np.int32)


def quantize_multiplier(real_multiplier, *, single_rounding=False):
    """Split a real multiplier into an int32 significand and a power-of-two shift.

    Parameters
    ----------
    real_multiplier : float or array_like of float
        Finite (TFLite passes :math:`s_a s_b / s_y`, computed in double).
    single_rounding : bool, default False
        Also apply the TFLITE_SINGLE_ROUNDING clamp: a shift above 30 becomes
        (multiplier :math:`2^{31}-1`, shift 30).

    Returns
    -------
    (quantized_multiplier, shift) : int32 arrays (Python ints for a scalar input).

    Formula
    -------
    :math:`M = q \\cdot 2^{e}` with :math:`q \\in [0.5, 1)` (``frexp``);
    :math:`m = \\mathrm{round}(q \\cdot 2^{31})` rounded half away from zero
    (``std::round``); if :math:`m = 2^{31}` then :math:`m = 2^{30}, e = e + 1`;
    if :math:`e < -31` then :math:`m = 0, e = 0` (tiny multipliers flush to zero);
    :math:`M = 0 \\Rightarrow (0, 0)`. So :math:`M \\approx m \\cdot 2^{e - 31}`.

    Reference
    ---------
    TFLite ``tensorflow/lite/kernels/internal/quantization_util.cc``, ``QuantizeMultiplier``.
    """
    m = np.asarray(real_multiplier)
    if m.dtype.kind not in "fiu":
        raise RefquantError(f"real_multiplier must be real numbers, got dtype {m.dtype}")
    m = m.astype(np.float64)
    if not np.isfinite(m).all():
        raise RefquantError(
            f"real_multiplier must be finite, got {m[~np.isfinite(m)].reshape(-1)[0].item()!r}"
        )
    q, e = np.frexp(m)
    qf = round_to_int(q * 2.0**31, "half_away").astype(np.int64)  # q * 2^31 is exact
    e = e.astype(np.int64)
    top = qf == 2**31
    qf = np.where(top, qf // 2, qf)
    e = np.where(top, e + 1, e)
    tiny = e < -31
    qf = np.where(tiny, 0, qf)
    e = np.where(tiny | (m == 0), 0, e)
    if single_rounding:
        big = e > 30
        qf = np.where(big, 2**31 - 1, qf)
        e = np.where(big, 30, e)
    if np.ndim(real_multiplier) == 0:
        return int(qf), int(e)
    return qf.astype(np.int32), e.astype(np.int32)


def multiply_by_quantized_multiplier(x, quantized_multiplier, shift, *, single_rounding=False):
    """``x * M`` for an int32 ``x`` and ``M = quantized_multiplier * 2^(shift - 31)``.

    Parameters
    ----------
    x : array_like of integers in int32
    quantized_multiplier : int or array (broadcasts with ``x``), int32
    shift : int or array (broadcasts with ``x``), in [-31, 30]
    single_rounding : bool, default False
        False: gemmlowp's double rounding (TFLite's default build). True:
        TFLITE_SINGLE_ROUNDING (one rounding of the 64-bit product; the
        multiplier must then be >= 0).

    Returns
    -------
    numpy.ndarray of int32.

    Formula
    -------
    Double rounding, with :math:`l = \\max(e, 0)`, :math:`r = \\max(-e, 0)`:
    :math:`\\mathrm{RDBPOT}(\\mathrm{SRDHM}(x \\cdot 2^{l}, m), r)`; SRDHM
    rounds ties toward +Inf and RDBPOT away from zero, so a value is rounded
    twice (the first rounding can create a tie that the second breaks away from
    zero, one step from the single-rounded result).
    ``x * 2^l`` wraps modulo :math:`2^{32}` when it overflows (signed overflow
    is undefined in C++; this is what the compiled code does).
    Single rounding, with :math:`t = 31 - e`:
    :math:`\\lfloor (x m + 2^{t-1}) / 2^{t} \\rfloor`, i.e. :math:`x m / 2^t`
    rounded half up (toward +Inf) once. A result outside int32 wraps (TFLite only
    DCHECKs it).

    Reference
    ---------
    TFLite ``tensorflow/lite/kernels/internal/common.h`` / ``common.cc``,
    ``MultiplyByQuantizedMultiplier(int32_t x, int32_t quantized_multiplier, int shift)``
    in both ``TFLITE_SINGLE_ROUNDING`` branches; gemmlowp ``fixedpoint.h``.
    """
    x64 = _int_array(x, "x", lo=INT32_MIN, hi=INT32_MAX, what="int32")
    qm = _int_array(quantized_multiplier, "quantized_multiplier", lo=INT32_MIN, hi=INT32_MAX,
                    what="int32")
    sh = _int_array(shift, "shift", lo=-31, hi=30)
    _check_broadcast(x=x64, quantized_multiplier=qm, shift=sh)
    if single_rounding:
        if qm.size and qm.min() < 0:
            raise RefquantError(
                f"quantized_multiplier must be >= 0 with single_rounding=True (TFLite DCHECKs "
                f"it); got {int(qm.min())}"
            )
        total = 31 - sh
        res = (x64 * qm + (np.int64(1) << (total - 1))) >> total
        return _wrap_int32(res)
    left = np.maximum(sh, 0)
    right = np.maximum(-sh, 0)
    shifted = _wrap_int32(x64 << left)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted, qm), right)


def multiply_by_quantized_multiplier_int64(x, quantized_multiplier, shift) -> np.ndarray:
    """TFLite's int64-input ``MultiplyByQuantizedMultiplier`` (16-bit reduced multiplier).

    The same code in both TFLITE_SINGLE_ROUNDING branches: the multiplier is
    first rounded to 15 bits, then one rounding of the 64-bit product.

    Parameters
    ----------
    x : array_like of integers in [-2^47, 2^47)
    quantized_multiplier : int32 >= 0
    shift : int in [-31, 7]

    Formula
    -------
    :math:`\\tilde m = (m + 2^{15}) \\gg 16` if :math:`m < \\mathtt{0x7FFF0000}`
    else :math:`\\mathtt{0x7FFF}`; :math:`t = 15 - e`;
    :math:`\\lfloor (x \\tilde m + 2^{t-1}) / 2^t \\rfloor` (half up), wrapped to int32.

    Reference
    ---------
    TFLite ``common.h``, ``MultiplyByQuantizedMultiplier(int64_t x, int32_t, int)``
    (used by 16x8 integer kernels).
    """
    x64 = _int_array(x, "x", lo=-(2**47), hi=2**47 - 1, what="TFLite's [-2^47, 2^47)")
    qm = _int_array(quantized_multiplier, "quantized_multiplier", lo=0, hi=INT32_MAX)
    sh = _int_array(shift, "shift", lo=-31, hi=7)
    _check_broadcast(x=x64, quantized_multiplier=qm, shift=sh)
    reduced = np.where(qm < 0x7FFF0000, (qm + (1 << 15)) >> 16, 0x7FFF)
    total = 15 - sh
    return _wrap_int32((x64 * reduced + (np.int64(1) << (total - 1))) >> total)


# ---------------------------------------------------------------------- requantize


def requantize(acc, multiplier, zero_point=0, *, dtype="int8", axis=None, method="fixed_point",
               single_rounding=False, rounding="half_even", precision="float32",
               activation_min=None, activation_max=None) -> np.ndarray:
    """Scale int32 accumulators to the output grid: ``clamp(z + round(M * acc))``.

    Parameters
    ----------
    acc : array_like of integers (int32 values)
        Accumulators, bias already added.
    multiplier : float or array_like
        The real multiplier :math:`M = s_a s_w / s_y` (> 0), per tensor or one
        per index of ``axis``.
    zero_point : int
        Output zero point, inside the range of ``dtype``.
    dtype : str or IntFormat, default "int8"
    axis : int, optional
        Axis of ``acc`` along which ``multiplier`` varies (per-channel weights).
    method : {"fixed_point", "float"}
        ``"fixed_point"``: :func:`quantize_multiplier` then
        :func:`multiply_by_quantized_multiplier` (TFLite, gemmlowp).
        ``"float"``: ``acc`` times ``M`` in ``precision``, rounded with ``rounding``
        (onnxruntime's QLinear kernels: float32, half to even).
    single_rounding : bool
        Fixed point only: TFLITE_SINGLE_ROUNDING.
    rounding, precision : str
        Float only. ``precision="float32"`` rounds ``acc`` and ``M`` to float32
        first (``acc`` above :math:`2^{24}` can lose bits there).
    activation_min, activation_max : int, optional
        Fused activation clamp (TFLite ``output_activation_min/max``); intersected
        with the range of ``dtype``.

    Returns
    -------
    numpy.ndarray of the format's storage dtype.

    Formula
    -------
    Fixed point: :math:`y = \\mathrm{clamp}(z + \\mathrm{MBQM}(\\mathrm{acc}, m, e), lo, hi)`.
    Float: :math:`y = \\mathrm{clamp}(z + \\mathrm{round}(\\mathrm{acc} \\cdot M), lo, hi)`.
    The zero point is added after rounding, then saturated, in both.

    Reference
    ---------
    TFLite ``reference/integer_ops/fully_connected.h`` (``FullyConnectedPerChannel``);
    onnxruntime ``MlasRequantizeOutput``; Jacob et al. 2018 eq. (7).
    """
    fmt = int_format(dtype)
    a = _int_array(acc, "acc", lo=INT32_MIN, hi=INT32_MAX, what="int32 accumulators")
    if axis is not None:
        axis = normalize_axis(axis, a.ndim)
    m = _real(multiplier, "multiplier")
    if not (np.isfinite(m) & (m > 0)).all():
        raise RefquantError(f"multiplier must be finite and > 0; got {m[~(np.isfinite(m) & (m > 0))].reshape(-1)[0].item()!r}")
    mb = broadcast_param(m, a.shape, axis, None, "multiplier")
    z = _int(zero_point, "zero_point")
    if not fmt.qmin <= z <= fmt.qmax:
        raise RefquantError(f"zero_point {z} is outside [{fmt.qmin}, {fmt.qmax}] of {fmt.name}")
    lo = fmt.qmin if activation_min is None else max(fmt.qmin, int(activation_min))
    hi = fmt.qmax if activation_max is None else min(fmt.qmax, int(activation_max))
    if lo > hi:
        raise RefquantError(f"activation_min {lo} > activation_max {hi}")
    if method == "fixed_point":
        qm, sh = quantize_multiplier(np.asarray(mb), single_rounding=single_rounding)
        qm, sh = np.asarray(qm), np.asarray(sh)
        if sh.size and sh.max() > 30:
            raise RefquantError(f"multiplier {float(mb.max())!r} is too large for a fixed-point shift")
        scaled = multiply_by_quantized_multiplier(a, qm, sh, single_rounding=single_rounding)
        r = scaled.astype(np.int64) + z
    elif method == "float":
        ft = {"float32": np.float32, "float64": np.float64}.get(precision)
        if ft is None:
            raise RefquantError(f"precision must be float32 or float64; got {precision!r}")
        v = a.astype(ft) * mb.astype(ft)
        r = round_to_int(v, rounding).astype(np.float64) + z
    else:
        raise RefquantError(f"method must be 'fixed_point' or 'float'; got {method!r}")
    return np.clip(r, lo, hi).astype(np.int64).astype(fmt.storage_dtype)


def quantize_bias(bias, input_scale, weight_scale, *, axis=None, rounding="half_even",
                  scale_op="divide", precision="float64", narrow_range=False) -> np.ndarray:
    """Quantize a float bias to int32 with scale :math:`s_a s_w` and zero point 0.

    Parameters
    ----------
    bias : array_like of float, shape (N,) (or any shape with ``axis``)
    input_scale : float
    weight_scale : float or array of shape ``(bias.shape[axis],)``
    axis : int, optional
        Axis of ``bias`` along which ``weight_scale`` varies; default: a 1-D bias
        with per-channel scales uses axis 0.
    rounding : str, default "half_even"
        ``"half_away"`` for TFLite (``TfLiteRound``).
    scale_op : {"divide", "reciprocal"}
        ``"reciprocal"``: multiply by ``1 / (s_a s_w)`` rounded to ``precision``
        (TFLite's ``scaling_factor_inv``).
    precision : {"float64", "float32"}
        Arithmetic of the scale product, its reciprocal and the product with the bias.
    narrow_range : bool
        Saturate to :math:`[-(2^{31}-1), 2^{31}-1]` (TFLite clamps to ``±kScale``).

    Formula
    -------
    :math:`b_q = \\mathrm{clamp}(\\mathrm{round}(b / (s_a s_w)), -2^{31}(+1), 2^{31}-1)`.

    Reference
    ---------
    TFLite ``tensorflow/lite/tools/optimize/quantization_utils.cc``,
    ``SymmetricPerLayerBiasQuantize`` / ``SymmetricPerChannelBiasQuantize``
    (float product of the scales, reciprocal computed in double then stored as
    float, float product, ``TfLiteRound`` = half away, clamp to ±INT32_MAX);
    ONNX QLinearConv ("bias ... quantized with scale x_scale * w_scale, zero point 0").
    """
    ft = {"float32": np.float32, "float64": np.float64}.get(precision)
    if ft is None:
        raise RefquantError(f"precision must be float32 or float64; got {precision!r}")
    if scale_op not in ("divide", "reciprocal"):
        raise RefquantError(f"scale_op must be 'divide' or 'reciprocal'; got {scale_op!r}")
    b = np.asarray(bias)
    if b.dtype.kind not in "fiu":
        raise RefquantError(f"bias must be real numbers, got dtype {b.dtype}")
    if not np.isfinite(b.astype(np.float64)).all():
        raise RefquantError("bias must be finite (TFLite's cast of NaN/Inf to int32 is undefined)")
    si = _real(input_scale, "input_scale")
    sw = _real(weight_scale, "weight_scale")
    for name, s in (("input_scale", si), ("weight_scale", sw)):
        if not (np.isfinite(s) & (s > 0)).all():
            raise RefquantError(f"{name} must be finite and > 0; got {s[~(np.isfinite(s) & (s > 0))].reshape(-1)[0].item()!r}")
    if si.size != 1:
        raise RefquantError(f"input_scale must be a scalar, got shape {si.shape}")
    if axis is None and sw.size > 1 and b.ndim == 1:
        axis = 0
    if axis is not None:
        axis = normalize_axis(axis, b.ndim)
    sw_b = broadcast_param(sw, b.shape, axis, None, "weight_scale")
    s = (si.reshape(()).astype(ft) * sw_b.astype(ft)).astype(ft)
    bf = b.astype(ft)
    with np.errstate(over="ignore"):
        if scale_op == "divide":
            v = bf / s
        else:
            inv = (1.0 / s.astype(np.float64)).astype(ft)
            v = (bf * inv).astype(ft)
    r = round_to_int(v, rounding).astype(np.float64)
    lo = -(2**31) + (1 if narrow_range else 0)
    return np.clip(r, lo, 2**31 - 1).astype(np.int64).astype(np.int32)
