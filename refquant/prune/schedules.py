"""Sparsity schedules: gradual (Zhu & Gupta, tfmot) and iterative (lottery ticket).

=============================  ==============================================================
schedule                       sparsity at step :math:`t`
=============================  ==============================================================
:func:`gradual_sparsity`       :math:`s_f + (s_i - s_f)\\,(1 - \\frac{t - t_0}{n\\Delta t})^3`
                               (Zhu & Gupta 2017, eq. 1), clipped to :math:`[t_0, t_0 + n\\Delta t]`
:class:`PolynomialDecay`       tfmot's: the same with a free power, float32, pruning every
                               ``frequency`` steps in ``[begin_step, end_step]``
:class:`ConstantSparsity`      tfmot's: ``target_sparsity`` every ``frequency`` steps
:func:`iterative_sparsity`     after :math:`k` rounds of pruning :math:`p` of what remains:
                               :math:`1 - (1 - p)^k`
:func:`iterative_rate`         the per-round :math:`p = 1 - (1 - S)^{1/k}` that reaches :math:`S`
=============================  ==============================================================
"""

from __future__ import annotations

import numbers

import numpy as np

from .._errors import RefquantError
from ._arrays import as_array

__all__ = [
    "gradual_sparsity",
    "PolynomialDecay",
    "ConstantSparsity",
    "iterative_sparsity",
    "iterative_rate",
]


def _fraction(v, name: str, *, upper_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise RefquantError(f"{name} must be a number in [0, 1], got {v!r}")
    f = float(v) if abs(v) <= 2 else 2.0  # a huge int overflows float(); any > 1 is out of range
    ok = 0.0 <= f < 1.0 if upper_open else 0.0 <= f <= 1.0
    if not ok:
        raise RefquantError(f"{name}={v!r} must be in range [0, {'1)' if upper_open else '1]'}")
    return f


def _int(v, name: str) -> int:
    # steps are int64 in tfmot (and the float conversions below overflow beyond it)
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not -(2**63) <= int(v) < 2**63:
        raise RefquantError(f"{name} must be an integer in the int64 range, got {v!r:.60}")
    return int(v)


def _real(v, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise RefquantError(f"{name} must be a real number, got {v!r:.60}")
    return float(v)


def gradual_sparsity(step, *, initial_sparsity=0.0, final_sparsity, begin_step=0, n_steps,
                     frequency=1, power=3):
    """Zhu & Gupta's gradual pruning schedule, in float64.

    Parameters
    ----------
    step : int or array_like of int
        Training step(s) :math:`t`.
    initial_sparsity, final_sparsity : float in [0, 1]
        :math:`s_i` and :math:`s_f`.
    begin_step : int
        :math:`t_0`.
    n_steps : int
        :math:`n`, the number of pruning steps (> 0).
    frequency : int
        :math:`\\Delta t`, steps between pruning steps (> 0).
    power : float
        3 in the paper.

    Formula
    -------
    :math:`s_t = s_f + (s_i - s_f)\\big(1 - \\frac{t - t_0}{n \\Delta t}\\big)^{p}`
    for :math:`t_0 \\le t \\le t_0 + n\\Delta t`; :math:`s_i` before :math:`t_0`
    and :math:`s_f` after. (Between pruning steps the formula is continuous; the
    mask changes only at :math:`t_0 + k\\Delta t`.) It is evaluated as written,
    so at :math:`t \\le t_0` the value is :math:`s_f + (s_i - s_f)`, which may
    differ from :math:`s_i` in the last bit (0.9 + (0.1 - 0.9) = 0.09999999999999998).

    Reference
    ---------
    Zhu, Gupta, "To prune, or not to prune: exploring the efficacy of pruning
    for model compression", 2017, eq. 1.
    """
    si = _fraction(initial_sparsity, "initial_sparsity")
    sf = _fraction(final_sparsity, "final_sparsity")
    t0 = _int(begin_step, "begin_step")
    n = _int(n_steps, "n_steps")
    dt = _int(frequency, "frequency")
    if n <= 0 or dt <= 0:
        raise RefquantError(f"n_steps and frequency must be > 0, got n_steps={n}, frequency={dt}")
    power = _real(power, "power")
    t = as_array(step, "step")
    if t.dtype.kind not in "iuf" or not np.all(np.isfinite(t)):
        raise RefquantError(f"step must be finite numbers, got {step!r:.60}")
    t = t.astype(np.float64)
    frac = np.clip((t - t0) / (n * dt), 0.0, 1.0)
    out = sf + (si - sf) * (1.0 - frac) ** power
    return float(out) if out.ndim == 0 else out


class _TfmotSchedule:
    """Shared step logic of tfmot's ``PruningSchedule``."""

    begin_step: int
    end_step: int
    frequency: int

    @staticmethod
    def _validate_step(begin_step, end_step, frequency, allow_negative_1):
        # tfmot pruning_schedule.py PruningSchedule._validate_step, same checks and order.
        if begin_step < 0:
            raise RefquantError("begin_step should be >= 0")
        if not allow_negative_1 and end_step == -1:
            raise RefquantError("end_step cannot be -1.")
        if end_step != -1:
            if end_step < 0:
                raise RefquantError("end_step can be -1 or >= 0")
            if end_step < begin_step:
                raise RefquantError("begin_step should be <= end_step if end_step != -1")
        if frequency <= 0:
            raise RefquantError("frequency should be > 0")

    @staticmethod
    def _validate_sparsity(sparsity, variable_name):
        if not 0.0 <= sparsity < 1.0:
            raise RefquantError(f"{variable_name} must be in range [0,1)")

    def should_prune_in_step(self, step) -> bool:
        """tfmot's ``_should_prune_in_step``.

        Formula
        -------
        :math:`t \\ge t_b \\wedge (t \\le t_e \\vee t_e < 0) \\wedge (t - t_b) \\bmod f = 0`
        (``floormod``: the sign of the divisor, so always in ``[0, f)``).
        """
        step = _int(step, "step")
        in_range = step >= self.begin_step and (step <= self.end_step or self.end_step < 0)
        return bool(in_range and (step - self.begin_step) % self.frequency == 0)


class ConstantSparsity(_TfmotSchedule):
    """tfmot's ``ConstantSparsity(target_sparsity, begin_step, end_step=-1, frequency=100)``.

    ``end_step=-1`` prunes until the end of training. Validation as tfmot:
    ``begin_step >= 0``; ``end_step`` is -1 or ``>= begin_step``;
    ``frequency > 0``; ``0 <= target_sparsity < 1``.

    Formula
    -------
    ``self(step) = (should_prune_in_step(step), float32(target_sparsity))``.

    Reference
    ---------
    tensorflow/model-optimization
    ``tensorflow_model_optimization/python/core/sparsity/keras/pruning_schedule.py``,
    ``ConstantSparsity``.
    """

    def __init__(self, target_sparsity, begin_step, end_step=-1, frequency=100):
        self.target_sparsity = target_sparsity
        self.begin_step = _int(begin_step, "begin_step")
        self.end_step = _int(end_step, "end_step")
        self.frequency = _int(frequency, "frequency")
        self._validate_step(self.begin_step, self.end_step, self.frequency, True)
        self._validate_sparsity(_real(target_sparsity, "target_sparsity"), "target_sparsity")

    def __call__(self, step):
        return self.should_prune_in_step(step), np.float32(self.target_sparsity)

    def get_config(self) -> dict:
        return {"class_name": "ConstantSparsity", "config": {
            "target_sparsity": self.target_sparsity, "begin_step": self.begin_step,
            "end_step": self.end_step, "frequency": self.frequency}}


class PolynomialDecay(_TfmotSchedule):
    """tfmot's ``PolynomialDecay(initial_sparsity, final_sparsity, begin_step, end_step, power=3, frequency=100)``.

    Validation as tfmot: ``begin_step >= 0``; ``end_step`` may **not** be -1
    and must be ``>= begin_step``; ``frequency > 0``; both sparsities in
    ``[0, 1)``. (``end_step == begin_step`` passes validation; tfmot then
    divides by zero: 0/0 = NaN at ``begin_step``, which ``maximum(0, NaN)``
    propagates; refquant follows that arithmetic.)

    Formula
    -------
    In float32, as the TF graph computes it:
    :math:`p = \\min(1, \\max(0, (t - t_b)/(t_e - t_b)))`,
    :math:`s = (s_i - s_f)(1 - p)^{\\mathrm{power}} + s_f`.
    ``self(step) = (should_prune_in_step(step), s)``.

    Reference
    ---------
    tfmot ``pruning_schedule.py`` ``PolynomialDecay.__call__``; Zhu & Gupta 2017.
    """

    def __init__(self, initial_sparsity, final_sparsity, begin_step, end_step, power=3,
                 frequency=100):
        self.initial_sparsity = initial_sparsity
        self.final_sparsity = final_sparsity
        self.power = power
        self.begin_step = _int(begin_step, "begin_step")
        self.end_step = _int(end_step, "end_step")
        self.frequency = _int(frequency, "frequency")
        self._validate_step(self.begin_step, self.end_step, self.frequency, False)
        self._validate_sparsity(_real(initial_sparsity, "initial_sparsity"), "initial_sparsity")
        self._validate_sparsity(_real(final_sparsity, "final_sparsity"), "final_sparsity")
        _real(power, "power")

    def sparsity(self, step) -> np.float32:
        """The float32 sparsity at ``step`` (any step, pruning turn or not)."""
        f32 = np.float32
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = f32(f32(_int(step, "step") - self.begin_step) / f32(self.end_step - self.begin_step))
        p = np.minimum(f32(1.0), np.maximum(f32(0.0), ratio))
        # tf.math.pow(1 - p, power) in float32. Evaluated in float64 and rounded once:
        # that matched TF 2.21 on every step tested, where NumPy's float32 power
        # is 1 ulp off at e.g. step 132 of (0, 0.5, 0, 1000).
        decay = f32(np.float64(f32(1.0) - p) ** float(self.power))
        return f32(f32(f32(self.initial_sparsity - self.final_sparsity) * decay)
                   + f32(self.final_sparsity))

    def __call__(self, step):
        return self.should_prune_in_step(step), self.sparsity(step)

    def get_config(self) -> dict:
        return {"class_name": "PolynomialDecay", "config": {
            "initial_sparsity": self.initial_sparsity, "final_sparsity": self.final_sparsity,
            "power": self.power, "begin_step": self.begin_step, "end_step": self.end_step,
            "frequency": self.frequency}}


def iterative_sparsity(rate, rounds):
    """Cumulative sparsity after ``rounds`` rounds that each prune ``rate`` of what remains.

    Formula
    -------
    :math:`S_k = 1 - (1 - p)^k` (exact in real numbers; per-round counts
    rounded by a count rule can differ by a weight per round).

    Reference
    ---------
    Frankle, Carbin, "The Lottery Ticket Hypothesis", ICLR 2019, section 2
    (iterative pruning, :math:`p^{1/n}\\%` per round).
    """
    p = _fraction(rate, "rate")
    k = as_array(rounds, "rounds")
    if k.dtype.kind not in "iu" or np.any(k < 0):
        raise RefquantError(f"rounds must be non-negative integers, got {rounds!r}")
    out = 1.0 - (1.0 - p) ** k.astype(np.float64)
    return float(out) if out.ndim == 0 else out


def iterative_rate(target_sparsity, rounds) -> float:
    """Per-round rate that reaches ``target_sparsity`` in ``rounds`` rounds of iterative pruning.

    Formula
    -------
    :math:`p = 1 - (1 - S)^{1/k}`; e.g. :math:`S = 0.875, k = 3 \\Rightarrow p = 0.5`.

    Reference
    ---------
    Frankle & Carbin 2019 (the inverse of :func:`iterative_sparsity`).
    """
    s = _fraction(target_sparsity, "target_sparsity")
    k = _int(rounds, "rounds")
    if k <= 0:
        raise RefquantError(f"rounds must be > 0, got {k}")
    return 1.0 - (1.0 - s) ** (1.0 / k)
