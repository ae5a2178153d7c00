"""Calibration methods: spec examples worked by hand, properties, bad input."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refquant import RefquantError
from refquant.quant._float32 import fma_f32
from refquant.quant.calibration import (
    MovingAverageMinMax,
    TorchHistogram,
    _torch_histc_f32,
    calibrate_range,
    entropy_range,
    histogram_range,
    mse_range,
    percentile_range,
)
from refquant.quant.qparams import choose_qparams, minmax_range, qparams_from_range

# ------------------------------------------------------------------ percentile


def test_percentile_interpolates_linearly_between_order_statistics():
    # h = (n - 1) p / 100 = 4 * 0.9 = 3.6 -> v3 + 0.6 (v4 - v3) = 3 + 0.6 = 3.6
    lo, hi = percentile_range(np.array([0.0, -1.0, 2.0, -3.0, 4.0]), 90, symmetric=True)
    assert float(hi) == pytest.approx(3.6, abs=1e-12) and float(lo) == -float(hi)


def test_percentile_affine_takes_both_tails():
    x = np.arange(11.0)  # 0..10: P10 = 1.0, P90 = 9.0 exactly
    lo, hi = percentile_range(x, 90, symmetric=False)
    assert (float(lo), float(hi)) == (1.0, 9.0)


def test_percentile_100_is_minmax_per_axis():
    x = np.random.default_rng(0).standard_normal((3, 7))
    lo, hi = percentile_range(x, 100, symmetric=False, axis=0)
    mlo, mhi = minmax_range(x, axis=0)
    np.testing.assert_array_equal(lo, mlo)
    np.testing.assert_array_equal(hi, mhi)


def test_percentile_ignores_nan_and_rejects_inf():
    lo, hi = percentile_range(np.array([1.0, np.nan, -2.0]), 100)
    assert (float(lo), float(hi)) == (-2.0, 2.0)
    with pytest.raises(RefquantError, match="Inf"):
        percentile_range(np.array([1.0, np.inf]), 99)


@pytest.mark.parametrize("p", [0, -1, 100.5])
def test_percentile_outside_0_100_is_rejected(p):
    with pytest.raises(RefquantError, match="percentile must be in"):
        percentile_range(np.ones(3), p)


# ------------------------------------------------------------------ MSE


def test_mse_picks_the_clipping_ratio_with_the_smaller_error():
    # int2 symmetric (codes -2..1, s = amax / 1), grid of ratios {1/2, 1}:
    # r = 1: s = 4, 1.5/4 -> 0, 4 -> 1: errors 3 * 1.5^2 = 6.75 -> MSE 1.6875
    # r = 1/2: s = 2, 1.5/2 = 0.75 -> 1 (2.0), 4/2 -> 1 (2.0): 3 * 0.25 + 4 = 4.75 -> 1.1875
    x = np.array([1.5, 1.5, 1.5, 4.0])
    lo, hi = mse_range(x, dtype="int2", symmetric=True, grid=2)
    assert (float(lo), float(hi)) == (-2.0, 2.0)


def test_mse_keeps_the_full_range_when_clipping_costs_more():
    # r = 1: s = 4, 1/4 -> 0, 4 -> 4: MSE 3/4; r = 1/2: s = 2, 1/2 -> 0 (tie to even), 4 -> 2: 7/4
    lo, hi = mse_range(np.array([1.0, 1.0, 1.0, 4.0]), dtype="int2", grid=2)
    assert (float(lo), float(hi)) == (-4.0, 4.0)


def test_mse_never_widens_the_range_and_is_at_most_minmax_error():
    x = np.random.default_rng(1).standard_t(2, size=500)
    lo, hi = mse_range(x, dtype="int4", symmetric=True)
    assert float(hi) <= np.abs(x).max()
    fq = lambda a: choose_qparams(x, dtype="int4", method="minmax" if a is None else "mse")  # noqa: E731
    e_mm = np.mean((x - fq(None).fake_quantize(x)) ** 2)
    e_mse = np.mean((x - fq(1).fake_quantize(x)) ** 2)
    assert e_mse <= e_mm


def test_mse_bad_grid():
    with pytest.raises(RefquantError, match="grid"):
        mse_range(np.ones(3), grid=0)


# ------------------------------------------------------------------ histogram (torch)


def test_histc_bins_by_float32_interpolation_and_closes_the_last_bin():
    # (x - 0) * 4 / 4: 0 -> 0, 1 -> 1, 3.999 -> 3, 4 -> bin 4 folded into 3; 5 outside
    h = _torch_histc_f32(np.array([0, 1, 3.999, 4, 5, -1], np.float32), 4, 0.0, 4.0)
    np.testing.assert_array_equal(h, [1, 1, 0, 2])


def test_histc_of_a_constant_widens_the_range_by_one():
    # lo == hi == 2 -> [1, 3]; 2 lands at (2 - 1) * 4 / 2 = bin 2
    np.testing.assert_array_equal(_torch_histc_f32(np.array([2.0, 2.0]), 4, 2.0, 2.0), [0, 0, 2, 0])


def test_histc_position_overflowing_float32_lands_in_bin_0_as_on_x86():
    # [-2e37, 2e37], 16 bins: (x - lo) * 16 is 0 for -2e37 (bin 0), 3.2e38 for 0 (/ 4e37
    # = bin 8) and Inf for 2e37: static_cast<int64_t>(Inf) is INT64_MIN, and the x86
    # pointer offset INT64_MIN * sizeof(float) wraps to 0, so torch counts it in bin 0
    # (refquant raised numpy's ValueError from a negative bincount index)
    h = _torch_histc_f32(np.array([-2e37, 2e37, 0.0], np.float32), 16, -2e37, 2e37)
    np.testing.assert_array_equal(h, [2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0])


def test_histc_of_a_range_wider_than_float32_counts_nothing():
    # hi - lo = 6e38 overflows: torch.linspace's step is Inf, its edges are
    # start + Inf * 0 = NaN, and no element compares inside [NaN, NaN]
    h = _torch_histc_f32(np.array([-3e38, 3e38, 0.0], np.float32), 16, -3e38, 3e38)
    np.testing.assert_array_equal(h, np.zeros(16))


def test_histogram_same_range_batches_add_exactly():
    x = np.linspace(-1, 1, 301, dtype=np.float32)
    h = TorchHistogram()
    h.update(x)
    first = h.histogram.copy()
    h.update(x[::-1])
    np.testing.assert_array_equal(h.histogram, 2 * first)


def test_histogram_growing_range_keeps_the_total_count():
    rng = np.random.default_rng(3)
    h = TorchHistogram()
    for scale in (1.0, 2.0, 5.0):
        h.update((rng.standard_normal(400) * scale).astype(np.float32))
    assert float(h.histogram.sum(dtype=np.float64)) == pytest.approx(1200.0, abs=1e-3)
    assert h.min_val <= h.max_val


def test_histogram_search_always_takes_its_first_step():
    # norm_min starts at +inf, so the first candidate is accepted whatever its
    # error. Uniform data, one value per bin: the first step moves the end bin
    # (l - start = 0 is not > end - r = 1), so at least the last bin is cut:
    # hi <= min + 2047 * (max - min) / 2048.
    x = ((np.arange(2048) + 0.5) / 2048).astype(np.float32)
    lo, hi = histogram_range(x)
    width = (np.float32(x.max()) - np.float32(x.min())) / np.float32(2048)
    assert float(lo) == float(x.min())
    assert float(hi) <= float(x.min()) + 2047 * float(width) + 1e-7
    assert float(hi) > 0.99  # and it stops soon: clipping uniform data costs


def test_histogram_search_returns_bin_edges_inside_the_data_range():
    x = np.random.default_rng(4).standard_t(1.5, size=5000).astype(np.float32)
    lo, hi = histogram_range(x)
    w = (float(x.max()) - float(x.min())) / 2048
    start, stop = (float(lo) - float(x.min())) / w, (float(hi) - float(x.min())) / w
    assert abs(start - round(start)) < 1e-3 and abs(stop - round(stop)) < 1e-3
    assert float(x.min()) <= float(lo) < float(hi) <= float(x.max())


def test_histogram_rejects_nan_as_torch_histc_does():
    with pytest.raises(RefquantError, match="NaN"):
        TorchHistogram().update(np.array([1.0, np.nan]))


def test_histogram_search_of_empty_histogram_is_an_error():
    with pytest.raises(RefquantError, match="empty"):
        TorchHistogram().search()


# ------------------------------------------------------------------ entropy


def test_entropy_of_uniform_magnitudes_keeps_the_maximum():
    # 2048 equal bins: at i = 2048, P is uniform and Q (16 bins per group,
    # expanded evenly) equals P: KL = 0; every i < 2048 puts the outliers in
    # P[i-1] and has KL > 0.
    # one value at the centre of each of the 2048 bins of [0, 8] (8.0 itself
    # falls in the closed last bin)
    x = np.append((np.arange(2047) + 0.5) / 2048 * 8.0, 8.0)
    lo, hi = entropy_range(x)
    assert (float(lo), float(hi)) == (-8.0, 8.0)


def test_entropy_clips_a_heavy_tail():
    x = np.random.default_rng(5).standard_t(1.5, size=20000)
    lo, hi = entropy_range(x)
    assert float(hi) < np.abs(x).max() / 4 and float(lo) == -float(hi)


def test_entropy_affine_clips_inside_the_data_range():
    x = np.concatenate([np.random.default_rng(6).uniform(0, 1, 4000), [50.0]])
    lo, hi = entropy_range(x, dtype="uint8", symmetric=False)
    assert float(lo) == float(x.min()) and float(hi) < 50


def test_entropy_bad_bins():
    with pytest.raises(RefquantError, match="quantized_bins"):
        entropy_range(np.ones(3), bins=64, quantized_bins=128)


# ------------------------------------------------------------------ dispatcher


@pytest.mark.parametrize("method", ["percentile", "mse", "histogram", "entropy"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_choose_qparams_dispatches_every_method_per_axis(method, symmetric):
    x = np.random.default_rng(7).standard_normal((4, 50)).astype(np.float32)
    x[2] *= 40  # rows of different spread, so a mixed-up row would show
    qp = choose_qparams(x, dtype="int8", axis=0, method=method, symmetric=symmetric)
    assert qp.scale.shape == (4,) and qp.zero_point.shape == (4,)
    # the method's own range, turned into qparams, row by row
    lo, hi = calibrate_range(x, method, dtype="int8", symmetric=symmetric, axis=0)
    want = qparams_from_range(np.ravel(lo), np.ravel(hi), dtype="int8", symmetric=symmetric)
    np.testing.assert_array_equal(qp.scale, want.scale)
    np.testing.assert_array_equal(qp.zero_point, want.zero_point)
    for i in range(4):
        row = choose_qparams(x[i], dtype="int8", method=method, symmetric=symmetric)
        assert qp.scale[i] == row.scale and qp.zero_point[i] == row.zero_point
    assert len(set(qp.scale.tolist())) == 4
    if method != "entropy" and symmetric:  # measured: entropy (and asymmetric mse) keep the
        # full range of these 50 samples, where the others clip it
        assert not np.array_equal(qp.scale, choose_qparams(x, dtype="int8", axis=0, symmetric=symmetric).scale)


def test_blocked_calibration_has_one_range_per_block_with_a_partial_last_block():
    x = np.arange(10.0).reshape(1, 10)
    lo, hi = calibrate_range(
        x, "percentile", dtype="int8", symmetric=False, axis=1, block_size=4, percentile=100
    )
    np.testing.assert_array_equal(lo, [[0.0, 4.0, 8.0]])
    np.testing.assert_array_equal(hi, [[3.0, 7.0, 9.0]])


def test_unknown_method_is_named_in_the_error():
    with pytest.raises(RefquantError, match="'kl'"):
        calibrate_range(np.ones(3), "kl", dtype="int8", symmetric=True)


def test_all_nan_group_is_an_error():
    with pytest.raises(RefquantError, match="all NaN"):
        calibrate_range(np.full(3, np.nan), "mse", dtype="int8", symmetric=True)


def test_empty_input_gives_a_zero_range():
    lo, hi = calibrate_range(np.zeros((0,)), "entropy", dtype="int8", symmetric=True)
    assert float(lo) == 0.0 and float(hi) == 0.0


def test_calibration_does_not_modify_its_input():
    x = np.array([3.0, -1.0, np.nan, 2.0])
    before = x.copy()
    for m in ("percentile", "mse", "entropy"):
        calibrate_range(x, m, dtype="int8", symmetric=True)
    np.testing.assert_array_equal(x, before)


@settings(max_examples=30)
@given(hnp.arrays(np.float64, st.integers(2, 60), elements=st.floats(-1e3, 1e3)))
def test_every_method_returns_a_range_inside_the_data(x):
    amax = np.abs(x).max()
    for m, opts in (("percentile", {}), ("mse", {}), ("entropy", {"bins": 256})):
        lo, hi = calibrate_range(x, m, dtype="int8", symmetric=True, **opts)
        assert -amax <= float(lo) <= float(hi) <= amax


# ------------------------------------------------------------------ moving average


def test_moving_average_moves_by_the_constant():
    # c = 0.5: [0, 4] then [2, 8]: lo = 0 + 0.5 (2 - 0) = 1, hi = 4 + 0.5 (8 - 4) = 6
    acc = MovingAverageMinMax(0.5)
    acc.update(np.array([0.0, 4.0])).update(np.array([2.0, 8.0]))
    lo, hi = acc.range()
    assert (float(lo), float(hi)) == (1.0, 6.0)
    qp = acc.qparams(dtype="uint8", symmetric=False)
    assert int(qp.zero_point) == 0 and float(qp.scale) == np.float32(6.0) / np.float32(255)


def test_moving_average_per_axis_and_empty_batch():
    acc = MovingAverageMinMax(1.0, axis=0)
    acc.update(np.zeros((2, 0)))
    acc.update(np.array([[1.0, 2.0], [-3.0, 5.0]]))
    lo, hi = acc.range()
    np.testing.assert_array_equal(lo, [1.0, -3.0])
    np.testing.assert_array_equal(hi, [2.0, 5.0])


def test_moving_average_bad_constant_and_no_data():
    with pytest.raises(RefquantError, match="averaging_constant"):
        MovingAverageMinMax(0.0)
    with pytest.raises(RefquantError, match="no batch"):
        MovingAverageMinMax().range()


# ------------------------------------------------------------------ float32 fma


def test_fma_rounds_once_where_multiply_then_add_rounds_twice():
    # a = 1 + 2^-12: a*a = 1 + 2^-11 + 2^-24; in float32 the product loses 2^-24,
    # the fused result 2^-11 + 2^-24 keeps it.
    a = np.float32(1 + 2.0**-12)
    assert float(fma_f32(a, a, np.float32(-1))) == 2.0**-11 + 2.0**-24
    assert float(np.float32(a * a) - np.float32(1)) == 2.0**-11


def test_fma_avoids_double_rounding_through_float64():
    # exact a*b + c = 1 + 2^-24 + 2^-60: just above the float32 tie between 1 and
    # 1 + 2^-23. Rounding to float64 first gives the tie 1 + 2^-24, then 1 (even).
    a = np.float32(-(1 - 2.0**-18) * 2.0**-12)
    b = np.float32((1 + 2.0**-18) * 2.0**-12)
    c = np.float32(1 + 2.0**-23)
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    assert exact == 1 + Fraction(1, 2**24) + Fraction(1, 2**60)
    assert float(fma_f32(a, b, c)) == 1 + 2.0**-23
    assert float(np.float32(float(a) * float(b) + float(c))) == 1.0


@pytest.mark.parametrize("method", ["percentile", "mse", "histogram", "entropy"])
def test_unknown_method_option_is_a_refquant_error_naming_it(method):
    # a misspelt option reached the method as a keyword and raised TypeError
    x = np.linspace(-1, 1, 50)
    with pytest.raises(RefquantError, match="percentil"):
        choose_qparams(x, method=method, method_options={"percentil": 99.0})
    choose_qparams(x, method="mse", method_options={"grid": 10, "eps": 0.0})  # qparams keyword


def test_moving_average_refuses_a_batch_with_another_parameter_shape():
    # 3 channels, then 2: numpy broadcasting raised ValueError
    mm = MovingAverageMinMax(0.5, axis=0).update(np.ones((3, 4)))
    with pytest.raises(RefquantError, match=r"shape \(2,\) but the running range has shape \(3,\)"):
        mm.update(np.ones((2, 4)))
    mm.update(np.zeros((3, 7)))  # same channels, other length: fine
    assert mm.range()[0].tolist() == [0.5, 0.5, 0.5]


@pytest.mark.parametrize(
    "call",
    [
        # ValueError / TypeError from float(), int() or dict(); 1.5 bins truncated to 1
        lambda: percentile_range(np.ones(4), "a"),
        lambda: mse_range(np.ones(4), grid="a"),
        lambda: mse_range(np.ones(4), grid=2.5),
        lambda: entropy_range(np.ones(4), bins="a"),
        lambda: TorchHistogram("a"),
        lambda: TorchHistogram(1.5),
        lambda: TorchHistogram(16, 0),
        lambda: MovingAverageMinMax("a"),
        lambda: TorchHistogram().update([[1.0], [1.0, 2.0]]),
        lambda: MovingAverageMinMax().update([[1.0], [1.0, 2.0]]),
        lambda: choose_qparams(np.ones(4), method="percentile", method_options=[1]),
        lambda: choose_qparams(np.ones(4), method="histogram", method_options={"bins": "a"}),
    ],
)
def test_bad_method_options_raise_refquant_error(call):
    with pytest.raises(RefquantError):
        call()
