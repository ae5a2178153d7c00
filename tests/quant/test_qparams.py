import numpy as np
import pytest

from refquant import QParams, RefquantError, choose_qparams, qparams_from_range
from refquant.quant import minmax_range


def test_symmetric_int8_maps_amax_onto_qmax():
    qp = choose_qparams(np.array([-2.0, 0.5, 1.27], np.float32))
    assert qp.scale == np.float32(2.0 / 127) and qp.zero_point == 0
    assert qp.quantize(np.float32(-2.0)) == -127


def test_half_span_divisor_is_pytorchs_127_5():
    qp = qparams_from_range(-2.0, 1.0, symmetric_divisor="half_span")
    assert qp.scale == np.float32(np.float32(2.0) / np.float32(127.5))


def test_unsigned_symmetric_zero_point_is_the_middle():
    assert qparams_from_range(-1.0, 1.0, dtype="uint8").zero_point == 128
    assert qparams_from_range(-1.0, 1.0, dtype="uint4").zero_point == 8


def test_affine_uint8_hand_example():
    # range [-1, 3] -> s = 4 / 255, z = 0 - round(-1 / s) = round(63.75) = 64
    qp = qparams_from_range(-1.0, 3.0, dtype="uint8", symmetric=False)
    assert qp.scale == np.float32(np.float32(4.0) / np.float32(255))
    assert qp.zero_point == 64
    assert qp.quantize(0.0) == 64


def test_range_is_widened_to_include_zero_unless_told_not_to():
    assert qparams_from_range(2.0, 4.0, dtype="uint8", symmetric=False).zero_point == 0
    qp = qparams_from_range(2.0, 4.0, dtype="uint8", symmetric=False, include_zero=False)
    assert qp.scale == np.float32(np.float32(2.0) / np.float32(255))
    assert qp.zero_point == 0  # -round(2 / s) = -255 clamps to 0


def test_zero_point_formulas_differ_only_for_odd_qmin():
    # narrow int8: qmin = -127 is odd. lo / s = -63.5 exactly gives different ties.
    kw = dict(dtype="int8_narrow", symmetric=False, include_zero=False, eps=0)
    a = qparams_from_range(-63.5, 190.5, **kw)
    b = qparams_from_range(-63.5, 190.5, zero_point_formula="round_difference", **kw)
    assert a.scale == b.scale == np.float32(1.0)
    assert (int(a.zero_point), int(b.zero_point)) == (-127 + 64, -64)


def test_all_zero_and_constant_inputs_get_the_eps_floor_or_scale_one():
    assert choose_qparams(np.zeros(8)).scale == np.float32(np.finfo(np.float32).eps)
    assert qparams_from_range(0.0, 0.0, eps=0).scale == 1.0
    qp = choose_qparams(np.full(5, 3.0), symmetric=False, dtype="uint8")
    assert qp.dequantize(qp.quantize(np.float32(3.0))) == np.float32(3.0)


def test_reduce_range_drops_one_bit():
    qp = qparams_from_range(-1.0, 1.0, dtype="uint8", symmetric=False, reduce_range=True)
    assert (qp.qmin, qp.qmax) == (0, 127)
    assert qparams_from_range(-1.0, 1.0, reduce_range=True).qmax == 63


def test_custom_quant_min_max_are_checked():
    qp = qparams_from_range(-1.0, 1.0, quant_min=-15, quant_max=15)
    assert (qp.qmin, qp.qmax) == (-15, 15)
    assert qp.quantize(100.0) == 15
    with pytest.raises(RefquantError, match="quant_min 10 and quant_max 5"):
        qparams_from_range(-1.0, 1.0, quant_min=10, quant_max=5)


def test_per_channel_and_blocked_shapes():
    x = np.random.default_rng(0).standard_normal((3, 10)).astype(np.float32)
    qp = choose_qparams(x, axis=0)
    assert qp.scale.shape == (3,)
    np.testing.assert_array_equal(qp.scale, (np.abs(x).max(axis=1) / np.float32(127)))
    qb = choose_qparams(x, axis=-1, block_size=4, dtype="int4", symmetric=False)
    assert qb.scale.shape == (3, 3) and qb.block_size == 4 and qb.axis == 1
    lo, hi = minmax_range(x, axis=1, block_size=4)
    np.testing.assert_array_equal(hi[:, 2], x[:, 8:].max(axis=1))
    assert isinstance(qb, QParams)
    # each block's scale and zero point are its own range's (the last block is partial)
    for j, cols in enumerate((slice(0, 4), slice(4, 8), slice(8, 10))):
        own = qparams_from_range(x[:, cols].min(axis=1),
                                 x[:, cols].max(axis=1), dtype="int4", symmetric=False)
        np.testing.assert_array_equal(qb.scale[:, j], own.scale)
        np.testing.assert_array_equal(qb.zero_point[:, j], own.zero_point)


def test_nan_is_ignored_by_minmax_but_all_nan_and_inf_are_refused():
    qp = choose_qparams(np.array([np.nan, -1.0, 2.0]))
    assert qp.scale == np.float32(2.0 / 127)
    with pytest.raises(RefquantError, match="all NaN"):
        choose_qparams(np.array([np.nan, np.nan]))
    with pytest.raises(RefquantError, match="must be finite"):
        choose_qparams(np.array([np.inf, 1.0]))


def test_empty_input_gives_eps_scale():
    # no data: the range is (0, 0), as for all zeros, so each channel gets the float32 eps
    # floor and the zero point all-zero data gets
    for dtype in ("int8", "uint8"):
        for symmetric in (True, False):
            qp = choose_qparams(np.zeros((0, 4)), axis=1, dtype=dtype, symmetric=symmetric)
            assert qp.scale.dtype == np.float32 and qp.scale.shape == (4,)
            np.testing.assert_array_equal(qp.scale, np.full(4, np.finfo(np.float32).eps, np.float32))
            zeros = choose_qparams(np.zeros((3, 4)), axis=1, dtype=dtype, symmetric=symmetric)
            np.testing.assert_array_equal(qp.zero_point, zeros.zero_point)
            np.testing.assert_array_equal(qp.scale, zeros.scale)


def test_qparams_reproduce_stored_semantics():
    qp = qparams_from_range(-1.0, 1.0, semantics={"rounding": "half_away"})
    s = float(qp.scale)
    assert qp.quantize(np.float64(0.5) * s) == 1
    assert qp.quantize(np.float64(0.5) * s, rounding="half_even") == 0


def test_zero_point_is_formed_in_integers_for_wide_grids():
    # qmin - round(lo / s) must not round in float32: int16 with a far-off lo
    qp = qparams_from_range(-1.0, 1000.0, dtype="uint16", symmetric=False, include_zero=False,
                            eps=0)
    s = np.float32(np.float32(1001.0) / np.float32(65535))
    assert qp.scale == s
    assert int(qp.zero_point) == -int(np.rint(np.float32(np.float32(-1.0) / s)))


def test_symmetric_grid_without_a_code_above_the_middle_is_refused():
    # int2 with reduce_range is [-1, 0]: qmax - 0 = 0 divided amax (scale Inf, a
    # RuntimeWarning, and the error only at quantize time)
    with pytest.raises(RefquantError, match="no code above the middle"):
        qparams_from_range(-1.0, 1.0, dtype="int2", reduce_range=True)
    with pytest.raises(RefquantError, match="no code above the middle"):
        qparams_from_range(-1.0, 1.0, dtype="uint8", quant_min=0, quant_max=1)
    qp = qparams_from_range(-1.0, 1.0, dtype="uint8", quant_min=0, quant_max=1,
                            symmetric_divisor="half_span")
    assert qp.scale == np.float32(2.0) and qp.zero_point == 1


@pytest.mark.parametrize(
    "call",
    [
        lambda: qparams_from_range(-1, 1, eps="a"),  # TypeError from a comparison
        lambda: qparams_from_range(-1, 1, eps=float("nan")),  # silently no floor
        lambda: qparams_from_range(-1, 1, eps=float("inf")),  # scale inf
        lambda: qparams_from_range(-1, 1, quant_min="a"),  # ValueError from int()
        lambda: qparams_from_range(-1, 1, quant_min=-1.5),  # truncated to -1
        lambda: qparams_from_range("a", 1),  # ValueError
        lambda: qparams_from_range([[1.0], [1.0, 2.0]], [[1.0], [1.0, 2.0]]),  # ragged
        # hi - lo overflows float32: scale inf with a RuntimeWarning
        lambda: qparams_from_range(-3e38, 3e38, symmetric=False),
        # the float64 scale 2e300 / 255 overflows the float32 it is returned in
        lambda: qparams_from_range(-1e300, 1e300, symmetric=False, precision="float64"),
        lambda: minmax_range([[1.0], [1.0, 2.0]]),
        lambda: choose_qparams([[1.0], [1.0, 2.0]]),
    ],
)
def test_bad_ranges_and_options_raise_refquant_error(call):
    with pytest.raises(RefquantError):
        call()
