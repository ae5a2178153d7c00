"""refquant.testing: the messages themselves (each class, the layout) and the report object."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refquant
from refquant import RefquantError
from refquant.testing import (
    CLASSES,
    assert_dequantized_close,
    assert_quantized_equal,
    compare_dequantized,
    compare_quantized,
)


def _message(fn, *args, **kw):
    with pytest.raises(AssertionError) as info:
        fn(*args, **kw)
    return str(info.value)


def test_equal_codes_pass_and_report_ok():
    assert_quantized_equal(np.int8([1, -2, 3]), np.int8([1, -2, 3]))
    rep = compare_quantized(np.int8([1, -2, 3]), np.int8([1, -2, 3]))
    assert rep.ok and rep.n_mismatched == 0 and rep.counts == {}


def test_one_step_at_exact_tie_is_named_as_a_tie():
    # x / s = 2.5 exactly: half-even gives 2, half-away gives 3.
    msg = _message(assert_quantized_equal, np.int8([3]), np.int8([2]), x=np.float32([2.5]),
                   scale=1.0)
    assert "one step off at an exact rounding tie: 1 (first at index (0,))" in msg
    assert "(0,): 3, 2, x=2.5, tie" in msg


def test_tie_detected_per_axis_and_in_blocks():
    x = np.float32([[0.25, 1.0], [3.0, 0.5]])
    s = np.float32([0.5, 2.0])  # per row: 0.25/0.5 = 0.5 and 3/2 = 1.5 are ties
    rep = compare_quantized(np.int8([[1, 2], [2, 0]]), np.int8([[0, 2], [1, 0]]), x=x, scale=s,
                            axis=0)
    assert rep.counts == {"tie": 2}
    sb = np.float32([[0.5], [2.0]])  # blocks of 2 along axis 1: same scales
    rep = compare_quantized(np.int8([[1, 2], [2, 0]]), np.int8([[0, 2], [1, 0]]), x=x, scale=sb,
                            axis=1, block_size=2)
    assert rep.counts == {"tie": 2}


def test_tie_in_float32_arithmetic_counts_as_tie():
    # A peer dividing in float32 sees an exact tie where the float64 quotient has none.
    x, s = np.float32(0.3), np.float32(0.2)
    q32 = np.float32(x) / np.float32(s)
    q64 = np.float64(x) / np.float64(s)
    assert q32 == np.float32(1.5) and q64 != 1.5
    rep = compare_quantized(np.int8([1]), np.int8([2]), x=[x], scale=s)
    assert rep.counts == {"tie": 1}


def test_one_step_elsewhere_more_than_one_step_and_saturation_are_told_apart():
    x = np.float32([0.3, 1.0, 300.0])
    msg = _message(assert_quantized_equal, np.int8([0, 5, 127]), np.int8([1, 1, -128]), x=x,
                   scale=1.0)
    assert "one step off elsewhere: 1 (first at index (0,))" in msg
    assert "more than one step off: 1 (first at index (1,))" in msg
    assert "saturation (one side at qmin or qmax): 1 (first at index (2,))" in msg


def test_saturation_uses_given_qmin_qmax_for_narrow_grids():
    rep = compare_quantized(np.int8([-127, 5]), np.int8([3, 5]), qmin=-127, qmax=127)
    assert rep.counts == {"saturation": 1}
    rep = compare_quantized(np.int8([-100, 5]), np.int8([3, 5]), qmin=-127, qmax=127)
    assert rep.counts == {"multi_step": 1}


def test_nan_and_inf_inputs_are_classified_as_nan_inf_handling():
    msg = _message(assert_quantized_equal, np.int8([-128, 127, 0]), np.int8([0, -128, 0]),
                   x=np.float32([np.nan, np.inf, 0.0]), scale=1.0)
    assert "NaN/Inf handling: 2 (first at index (0,))" in msg


def test_message_layout_follows_numpy_testing():
    msg = _message(assert_quantized_equal, np.int8([1, 2, 3]), np.int8([1, 2, 5]),
                   err_msg="kernel v2")
    lines = msg.splitlines()
    assert lines[1] == "Quantized codes are not equal"
    assert lines[2] == "kernel v2"
    assert "Mismatched elements: 1 / 3 (33.3%)" in msg
    assert "Max absolute difference among violations: 2" in msg
    assert "Max relative difference among violations: 0.4" in msg
    assert " ACTUAL: array([1, 2, 3], dtype=int8)" in msg
    assert " DESIRED: array([1, 2, 5], dtype=int8)" in msg
    order = [msg.index(s) for s in ("not equal", "kernel v2", "Mismatched", "more than one step",
                                    "First mismatches", "Max absolute", " ACTUAL: array")]
    assert order == sorted(order)
    quiet = _message(assert_quantized_equal, np.int8([1]), np.int8([3]), verbose=False)
    assert "ACTUAL:" not in quiet


def test_max_step_diff_accepts_small_differences():
    assert_quantized_equal(np.int8([1, 2]), np.int8([2, 2]), max_step_diff=1)
    msg = _message(assert_quantized_equal, np.int8([1, 5]), np.int8([2, 2]), max_step_diff=1)
    assert "Quantized codes differ by more than 1 step(s)" in msg and "Mismatched elements: 1 / 2 (50%)" in msg


def test_shape_mismatch_is_reported_before_values():
    msg = _message(assert_quantized_equal, np.int8([1, 2]), np.int8([1, 2, 3]))
    assert "(shapes (2,), (3,) mismatch)" in msg
    assert "Mismatched elements" not in msg


def test_dtype_mismatch_is_reported_and_values_still_compared():
    msg = _message(assert_quantized_equal, np.int8([1, 2]), np.int16([1, 3]))
    assert "(dtypes int8, int16 mismatch)" in msg
    assert "Mismatched elements: 1 / 2 (50%)" in msg
    assert_quantized_equal(np.int8([1, 2]), np.int16([1, 2]), check_dtype=False)


def test_first_mismatches_are_listed_with_nd_indices_and_capped():
    a = np.zeros((4, 5), np.uint8)
    d = np.ones((4, 5), np.uint8)
    msg = _message(assert_quantized_equal, a, d)
    assert "(0, 0): 0, 1, one_step" in msg
    assert "(1, 4): 0, 1, one_step" in msg  # the tenth
    assert "(2, 0):" not in msg  # the eleventh is left out
    assert "Mismatched elements: 20 / 20 (100%)" in msg


def test_ml_dtypes_int4_codes_use_their_own_range():
    rep = compare_quantized(np.array([7, 0], ml_dtypes.int4), np.array([-8, 0], ml_dtypes.int4))
    assert rep.counts == {"saturation": 1}


def test_float_codes_are_refused_with_a_pointer_to_assert_dequantized_close():
    with pytest.raises(RefquantError, match="assert_dequantized_close"):
        compare_quantized(np.float32([1.0]), np.float32([1.0]))


def test_report_is_structured_and_json_serialisable():
    rep = compare_quantized(np.int8([3, 0, 5]), np.int8([2, 0, 1]), x=np.float32([2.5, 0, 1]),
                            scale=1.0)
    d = rep.to_dict()
    assert d["counts"] == {"tie": 1, "multi_step": 1}
    assert d["indices"] == {"tie": [0], "multi_step": [2]}
    assert d["first"][0]["class"] == "tie"
    json.dumps(d)
    assert set(rep.counts) <= set(CLASSES)


def test_dequantized_close_within_rtol_passes_and_tolerance_is_printed_first():
    assert_dequantized_close(np.float32([1.0, 2.0]), np.float32([1.0, 2.0000002]))
    msg = _message(assert_dequantized_close, np.float32([1.0]), np.float32([1.1]), rtol=1e-3,
                   atol=0.5e-2)
    assert msg.splitlines()[1] == "Dequantized values are not close (rtol=0.001, atol=0.005)"


def test_dequantized_steps_are_counted_with_scale():
    x = np.float32([0.75, 0.3, 2.0, 0.1])
    msg = _message(assert_dequantized_close, np.float32([1.0, 0.0, 0.0, 0.1000001]),
                   np.float32([0.5, 0.5, 2.0, 0.1]), x=x, scale=0.5, rtol=1e-9)
    assert "one step off at an exact rounding tie: 1 (first at index (0,))" in msg
    assert "one step off elsewhere: 1 (first at index (1,))" in msg
    assert "more than one step off: 1 (first at index (2,))" in msg
    assert "less than one step off (float arithmetic): 1 (first at index (3,))" in msg


def test_dequantized_saturation_needs_zero_point_and_grid():
    rep = compare_dequantized(np.float32([127.0]), np.float32([-128.0]), scale=1.0,
                              zero_point=0, qmin=-128, qmax=127)
    assert rep.counts == {"saturation": 1}


def test_dequantized_nan_positions_are_reported():
    msg = _message(assert_dequantized_close, np.float32([np.nan, 1.0]), np.float32([0.0, 1.0]))
    assert "nan location mismatch: 1 position(s) (flat indices 0)" in msg
    assert "NaN/Inf handling: 1" in msg
    assert_dequantized_close(np.float32([np.nan, np.inf]), np.float32([np.nan, np.inf]))


def test_dequantized_max_ulp():
    one = np.float32(1.0)
    two_ulp = np.nextafter(np.nextafter(one, np.float32(2)), np.float32(2))
    assert_dequantized_close(np.float32([two_ulp]), np.float32([one]), max_ulp=2)
    msg = _message(assert_dequantized_close, np.float32([two_ulp]), np.float32([one]), max_ulp=1)
    assert "(max_ulp=1)" in msg
    assert_dequantized_close(np.float32([-0.0]), np.float32([0.0]), max_ulp=0)


def test_dequantized_without_scale_is_unclassified():
    rep = compare_dequantized(np.float32([1.0]), np.float32([2.0]))
    assert rep.counts == {"unclassified": 1}


def test_assertions_hide_their_frames_from_pytest():
    # pytest drops every traceback frame whose locals hold __tracebackhide__ = True
    calls = ((assert_quantized_equal, np.int8([1, 2]), np.int8([1, 3])),
             (assert_dequantized_close, np.float32([1.0]), np.float32([2.0])))
    for fn, actual, desired in calls:
        with pytest.raises(AssertionError) as info:
            fn(actual, desired)
        frames = {e.frame.code.name: e.frame.f_locals for e in info.traceback}
        assert frames[fn.__name__].get("__tracebackhide__") is True


# ---------------------------------------------------------------- properties

codes = st.lists(st.integers(-128, 127), min_size=1, max_size=40)


@settings(max_examples=60)
@given(a=codes, data=st.data())
def test_report_counts_add_up_and_equal_arrays_pass(a, data):
    d = data.draw(st.lists(st.integers(-128, 127), min_size=len(a), max_size=len(a)))
    a, d = np.int8(a), np.int8(d)
    assert compare_quantized(a, a).ok
    rep = compare_quantized(a, d)
    assert rep.ok == bool((a == d).all())
    assert sum(rep.counts.values()) == rep.n_mismatched == int((a != d).sum())
    flat = np.sort(np.concatenate([v for v in rep.indices.values()] or [np.zeros(0, int)]))
    np.testing.assert_array_equal(flat, np.flatnonzero(a != d))
    if rep.n_mismatched:
        assert rep.max_abs_diff == np.abs(a.astype(int) - d).max()


@settings(max_examples=60)
@given(ks=st.lists(st.integers(-200, 200), min_size=1, max_size=30),
       scale=st.sampled_from([0.5, 0.25, 1.0, 0.125, 3.0]))
def test_rounding_mode_differences_are_all_classified_as_ties(ks, scale):
    # Half-even and half-away differ only at exact ties: the report must name every one a tie
    # (or saturation at the ends of the grid).
    x = ((np.array(ks) + 0.5) * scale).astype(np.float32)
    even = refquant.quantize(x, scale, dtype="int8", rounding="half_even")
    away = refquant.quantize(x, scale, dtype="int8", rounding="half_away")
    rep = compare_quantized(away, even, x=x, scale=scale)
    assert set(rep.counts) <= {"tie"}
    assert rep.counts.get("tie", 0) == int((away != even).sum())


@pytest.mark.parametrize("call", [
    lambda: compare_quantized(np.int8([1]), np.int8([2]), x=np.array(["a"]), scale=1.0),
    lambda: compare_quantized(np.int8([1]), np.int8([2]), x=[0.5], scale="a"),
    lambda: compare_quantized(np.int8([1]), np.int8([2]), max_step_diff="1"),
    lambda: compare_quantized(np.int8([1]), np.int8([2]), max_step_diff=0.5),
    lambda: compare_quantized(np.int8([1]), np.int8([2]), x=[0.5], scale=0.0),
    lambda: compare_dequantized(np.float32([1]), np.float32([2]), x=[0.5], scale=-1.0),
    lambda: compare_dequantized(np.float32([1]), np.float32([2]), scale=np.nan),
    lambda: compare_dequantized(np.float32([1]), np.float32([2]), x=np.array([None])),
])
def test_bad_x_scale_or_tolerance_raise_refquant_error(call):
    # once: ValueError / TypeError from NumPy, and a scale of 0 classed a 1-step gap "sub_step"
    with pytest.raises(RefquantError):
        call()


def test_tie_in_the_float16_arithmetic_of_x_and_scale_counts_as_tie():
    # ONNX QuantizeLinear divides float16 x by a float16 scale in float16:
    # 62.65625 / fl16(0.1) = 626.5 exactly there (spec: 626, half to even), 626.7156 in
    # float32 (onnxruntime: 627). The one-step gap sits on the spec's tie.
    x, s = np.float16([62.65625]), np.float16(0.1)
    assert float(x[0] / s) == 626.5 and float(np.float32(x[0]) / np.float32(s)) != 626.5
    rep = compare_quantized(np.int16([627]), np.int16([626]), x=x, scale=s)
    assert rep.counts == {"tie": 1}
    rep = compare_dequantized(np.float16([627]) * s, np.float16([626]) * s, x=x, scale=s)
    assert rep.counts == {"tie": 1}
    # bfloat16 alike: 3.0 / bf16(0.4) = 7.5 exactly in bfloat16 (7.49999 in float32)
    xb, sb = np.array([3.0], ml_dtypes.bfloat16), np.array(0.4, ml_dtypes.bfloat16)
    assert float((xb / sb)[0]) == 7.5
    assert compare_quantized(np.int8([7]), np.int8([8]), x=xb, scale=sb).counts == {"tie": 1}


def test_one_step_saturation_is_saturation_when_the_zero_point_shows_x_out_of_range():
    # int8, scale 1, zero point 0. x = 382 and 382.5 lie far beyond 127: one side saturates
    # (127), the other wrapped (382 - 256 = 126), one step apart by chance -- once classed
    # one_step and tie. x = 126.5 is inside the grid: a true tie that reaches qmax.
    x = np.float32([382.0, 382.5, 126.5])
    a, d = np.int8([126, 126, 127]), np.int8([127, 127, 126])
    rep = compare_quantized(a, d, x=x, scale=1.0, zero_point=0)
    assert rep.indices["saturation"].tolist() == [0, 1] and rep.indices["tie"].tolist() == [2]
    # the zero point moves the grid: with z = -100, x = 226.5 is 126.5 on the codes
    rep = compare_quantized(np.int8([127]), np.int8([126]), x=[226.5], scale=1.0,
                            zero_point=-100)
    assert rep.counts == {"tie": 1}
    # without a zero point nothing says where the grid ends: the old classes
    rep = compare_quantized(a, d, x=x, scale=1.0)
    assert rep.counts == {"one_step": 1, "tie": 2}
    rep = compare_dequantized(a.astype(np.float32), d.astype(np.float32), x=x, scale=1.0,
                              zero_point=0, qmin=-128, qmax=127)
    assert rep.indices["saturation"].tolist() == [0, 1] and rep.indices["tie"].tolist() == [2]


def test_uint64_codes_beyond_int64_are_refused_not_wrapped():
    # 2^64 - 1 vs 0 once read as -1 vs 0: "one step off"
    with pytest.raises(RefquantError, match="2\\^63"):
        compare_quantized(np.uint64([2**64 - 1]), np.uint64([0]))


def test_int64_codes_of_opposite_sign_are_counted_in_exact_steps():
    # 2^63 - 1 vs -1 are 2^63 steps apart; the int64 difference overflowed to -2^63,
    # whose abs() is still negative, and the pair was reported equal (2^63 - 1 is the
    # int64 grid's qmax: saturation)
    rep = compare_quantized(np.int64([2**63 - 1, 5]), np.int64([-1, 5]), max_step_diff=3)
    assert not rep.ok and rep.n_mismatched == 1 and rep.counts == {"saturation": 1}
    # 2^63 - 1 vs -2^63 (2^64 - 1 steps) wrapped to 1 step: "one step off"
    rep = compare_quantized(np.int64([2**63 - 1]), np.int64([-(2**63)]), qmin=-(2**63) - 1,
                            qmax=2**63)
    assert rep.counts == {"multi_step": 1}


def test_dequantized_difference_of_more_than_2_63_steps_is_multi_step():
    # |3e38 - (-3e38)| / 1 = 6e38 steps: the int64 cast of the step count gave INT64_MIN,
    # which no class takes, so the element came out 'unclassified' although scale was given
    rep = compare_dequantized(np.float32([3e38, 1e30]), np.float32([-3e38, 0.0]),
                              scale=np.float32(1e-10))
    assert rep.counts == {"multi_step": 2}


@pytest.mark.parametrize("kw, match", [
    (dict(rtol=float("nan")), "rtol must be a finite number >= 0"),
    (dict(rtol=-1.0), "rtol must be"),
    (dict(atol=float("inf")), "atol must be"),
    (dict(max_ulp=-3), "max_ulp must be an integer >= 0"),
    (dict(max_ulp=1.5), "max_ulp must be an integer"),
    (dict(qmin=5, qmax=1), "qmin 5 is greater than qmax 1"),
    (dict(qmin=0.5), "qmin must be an integer"),
    (dict(axis=5), "axis 5 is out of range"),
])
def test_compare_dequantized_refuses_tolerances_and_grids_that_mean_nothing(kw, match):
    # each was accepted before, and --rtol nan then made every element 'not close'
    with pytest.raises(RefquantError, match=match):
        compare_dequantized(np.float32([1, 2]), np.float32([1, 2.5]), **kw)


@pytest.mark.parametrize("kw, match", [(dict(qmin=5, qmax=1), "greater than qmax"),
                                       (dict(axis=-2), "out of range")])
def test_compare_quantized_refuses_an_empty_grid_and_a_missing_axis(kw, match):
    with pytest.raises(RefquantError, match=match):
        compare_quantized(np.int8([1, 2]), np.int8([1, 2]), **kw)
