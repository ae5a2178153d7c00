"""Rounding to integers, every mode by name.

All modes are exact: they decide on the fractional part ``x - floor(x)`` (or
``x - trunc(x)``), which is computed without rounding error for every finite
float, so no mode misfires near a tie the way ``floor(x + 0.5)`` does for
``x = 0.49999999999999994``. NaN and ±Inf pass through unchanged.

=================  ===========================================  ==========================
mode               ties (x = k + 1/2) go to                     used by
=================  ===========================================  ==========================
``half_even``      the even neighbour                           IEEE 754 default, np.rint,
                                                                std::nearbyint, ONNX, PyTorch
``half_away``      away from zero                               std::round (TFLite), C round
``half_up``        +Inf                                         floor(x + 0.5) (TF fake-quant)
``half_down``      -Inf                                         ceil(x - 0.5)
``half_zero``      toward zero                                  (rare; named for completeness)
``floor``          (no ties) largest integer <= x               power-of-two exponents
``ceil``           (no ties) smallest integer >= x
``trunc``          (no ties) toward zero                        C casts, static_cast<int>
``stochastic``     away from 0 with probability |x - trunc(x)|  stochastic rounding (seeded)
=================  ===========================================  ==========================
"""

from __future__ import annotations

import numpy as np

from .._errors import RefquantError

__all__ = ["ROUNDING_MODES", "round_to_int"]

ROUNDING_MODES = (
    "half_even",
    "half_away",
    "half_up",
    "half_down",
    "half_zero",
    "floor",
    "ceil",
    "trunc",
    "stochastic",
)


def round_to_int(x, mode: str = "half_even", *, seed=None, rng=None) -> np.ndarray:
    """Round ``x`` to integral values (same float dtype) with the named ``mode``.

    Parameters
    ----------
    x : array_like of float
    mode : str
        One of :data:`ROUNDING_MODES`.
    seed, rng : int or numpy.random.Generator, optional
        Only for ``"stochastic"``: the draws come from ``rng`` if given, else from
        ``np.random.default_rng(seed)``. One uniform draw per element, in C order.

    Formula
    -------
    With :math:`f = x - \\lfloor x \\rfloor` (exact), ``half_up`` is
    :math:`\\lfloor x \\rfloor + [f \\ge 1/2]`, ``half_down`` is
    :math:`\\lfloor x \\rfloor + [f > 1/2]`, ``half_even`` breaks :math:`f = 1/2`
    toward the even neighbour; ``stochastic`` is :math:`\\lfloor x \\rfloor + [u < f]`
    with :math:`u \\sim U[0, 1)` (implemented as a step away from zero with
    probability :math:`|x - \\mathrm{trunc}(x)|`, the same distribution).

    Reference
    ---------
    IEEE 754-2019 §4.3 (roundTiesToEven, roundTiesToAway, directed roundings).
    """
    if not isinstance(mode, str) or mode not in ROUNDING_MODES:
        raise RefquantError(f"rounding must be one of {', '.join(ROUNDING_MODES)}; got {mode!r}")
    x = np.asarray(x)
    if x.dtype.name == "bfloat16":
        # ml_dtypes' bfloat16 (kind 'V') has no rint/trunc loops: round its exact float32
        # value; every integer a bfloat16 with a fraction rounds to (< 2^8) is a bfloat16
        return round_to_int(x.astype(np.float32), mode, seed=seed, rng=rng).astype(x.dtype)
    if x.dtype.kind not in "f":
        if x.dtype.kind in "iub":
            return x.copy()
        x = x.astype(np.float64)
    if mode == "half_even":
        return np.rint(x)
    if mode == "floor":
        return np.floor(x)
    if mode == "ceil":
        return np.ceil(x)
    if mode == "trunc":
        return np.trunc(x)
    # t = trunc(x) and d = x - t are exact for every finite x (|d| < 1 and, for
    # |x| >= 1, x and t lie within a factor of two: Sterbenz). x - floor(x) is not
    # exact for small negative x, so every decision is made on |d| and the sign.
    t = np.trunc(x)
    with np.errstate(invalid="ignore"):
        a = np.abs(x - t)
        neg = x < 0
        if mode == "half_away":
            step = a >= 0.5
        elif mode == "half_zero":
            step = a > 0.5
        elif mode == "half_up":
            step = np.where(neg, a > 0.5, a >= 0.5)
        elif mode == "half_down":
            step = np.where(neg, a >= 0.5, a > 0.5)
        else:  # stochastic: away from zero with probability |d|
            try:
                gen = rng if rng is not None else np.random.default_rng(seed)
            except (TypeError, ValueError):
                raise RefquantError(
                    f"seed must be None or a non-negative integer, got {seed!r}"
                ) from None
            if not isinstance(gen, np.random.Generator):
                raise RefquantError(
                    f"rng must be a numpy.random.Generator, got {type(gen).__name__}"
                )
            step = gen.random(size=x.shape) < a
    out = t + np.copysign(step, x).astype(x.dtype, copy=False)
    return np.where(np.isfinite(x), out, x).astype(x.dtype, copy=False)
