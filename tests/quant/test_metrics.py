"""refquant.quant.metrics: hand-worked values, extremes and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from refquant import RefquantError
from refquant.quant.metrics import error_in_steps, max_abs_error, mse, sqnr_db


def test_hand_worked_metrics():
    # x = [3, 4], y = [3, 3]: errors [0, 1]; mse 1/2; sqnr 10 log10(25 / 1) = 13.979 dB
    x, y = np.array([3.0, 4.0]), np.array([3.0, 3.0])
    assert mse(x, y) == 0.5 and max_abs_error(x, y) == 1.0
    assert sqnr_db(x, y) == pytest.approx(10 * np.log10(25.0), abs=1e-12)
    assert error_in_steps(x, y, 0.5).tolist() == [0.0, 2.0]
    assert sqnr_db(x, x) == np.inf and sqnr_db([0.0], [1.0]) == -np.inf


def test_sqnr_of_values_whose_squares_underflow_or_overflow_float64():
    # x = 1e-200, y = 0: the error is not zero, the ratio is 1 (0 dB); the squares
    # underflowed to 0 and the result was +inf ("error zero"). x = 1e200, y = 0:
    # inf / inf gave NaN. x = [1e-200, 2e-200], y = [1e-200, 1e-200]: 10 log10(5)
    assert sqnr_db([1e-200], [0.0]) == 0.0
    assert sqnr_db([1e200], [0.0]) == 0.0
    assert sqnr_db([1e-200, 2e-200], [1e-200, 1e-200]) == pytest.approx(10 * np.log10(5.0))
    assert sqnr_db([1e300, -1e300], [-1e300, 1e300]) == pytest.approx(10 * np.log10(0.25))


@pytest.mark.parametrize(
    "call",
    [
        lambda: mse("abc", "abd"),  # ValueError from np.asarray
        lambda: mse([1 + 2j], [1.0]),  # TypeError
        lambda: max_abs_error([[1.0], [1.0, 2.0]], [[1.0], [1.0, 2.0]]),  # ragged
        lambda: error_in_steps([1.0], [2.0], 0.0),  # division by zero, inf steps
        lambda: error_in_steps([1.0], [2.0], -0.5),  # negative steps
        lambda: error_in_steps([1.0], [2.0], "a"),  # ValueError
    ],
)
def test_bad_input_raises_refquant_error(call):
    with pytest.raises(RefquantError):
        call()
