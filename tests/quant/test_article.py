import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refquant as rq
from refquant.quant.article import article_integer_dequantize, article_integer_quantize


def test_hand_worked_recipe():
    w = np.array([0.5, -1.0, 0.26, 0.0])
    q, a = article_integer_quantize(w, levels=10)
    # normalise by max|w| = 1: [0.5, -1, 0.26, 0] -> x10 -> [5, -10, 2.6, 0] -> round
    assert a == 1.0
    np.testing.assert_array_equal(q, [5, -10, 3, 0])
    np.testing.assert_array_equal(article_integer_dequantize(q, a, 10), np.float32([0.5, -1, 0.3, 0]))


@given(hnp.arrays(np.float32, st.integers(1, 300), elements=st.floats(-4, 4, width=32)))
def test_recipe_is_symmetric_quantization_with_scale_amax_over_levels(w):
    q, a = article_integer_quantize(w, 127)
    if a == 0:
        assert not q.any()
        return
    core = rq.quantize(w, a / 127, dtype="int16", out_dtype=np.int64)
    assert np.abs(q - core).max() <= 1  # both round w·127/a; the quotients may differ in the last ulp
    assert np.mean(q != core) < 0.01


def test_all_zero_weights_keep_a_zero_normaliser():
    q, a = article_integer_quantize(np.zeros(3))
    assert a == 0.0 and not q.any()
    assert not article_integer_dequantize(q, a).any()


@pytest.mark.parametrize("levels", [0, -3, 2.5, True])
def test_levels_must_be_a_positive_integer(levels):
    with pytest.raises(rq.RefquantError, match="levels"):
        article_integer_quantize(np.ones(2), levels)


def test_non_finite_weights_are_refused():
    with pytest.raises(rq.RefquantError, match="finite"):
        article_integer_quantize(np.array([1.0, np.nan]))


@pytest.mark.parametrize(
    "call",
    [
        lambda: article_integer_quantize([1.0, 2.0], "a"),  # ValueError from int()
        lambda: article_integer_quantize([1.0, 2.0], float("nan")),  # ValueError
        lambda: article_integer_quantize([1.0, 2.0], float("inf")),  # OverflowError
        lambda: article_integer_quantize([1.0, 2.0], None),  # TypeError
        lambda: article_integer_quantize([1.0, 2.0], 10**400),  # OverflowError in x * levels
        lambda: article_integer_quantize("abc"),  # ValueError from np.asarray
        lambda: article_integer_quantize([1 + 2j]),  # TypeError
        lambda: article_integer_quantize([[1.0], [1.0, 2.0]]),  # ragged: ValueError
        lambda: article_integer_dequantize([1, 2], "x"),  # ValueError
        lambda: article_integer_dequantize(["a"], 1.0),  # ValueError
        lambda: article_integer_dequantize([1, 2], 1.0, "a"),  # TypeError from numpy
        lambda: article_integer_dequantize([1, 2], 1.0, 0),  # scale inf (RuntimeWarning)
        lambda: article_integer_dequantize([1.5, 2], 1.0),  # 1.5 was truncated to code 1
    ],
)
def test_bad_arguments_raise_refquant_error(call):
    with pytest.raises(rq.RefquantError):
        call()
