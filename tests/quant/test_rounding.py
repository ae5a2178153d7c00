import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refquant import RefquantError, round_to_int
from refquant.quant.rounding import ROUNDING_MODES

TIES = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5])
EXPECTED = {
    "half_even": [-2, -2, -0, 0, 2, 2],
    "half_away": [-3, -2, -1, 1, 2, 3],
    "half_up": [-2, -1, 0, 1, 2, 3],
    "half_down": [-3, -2, -1, 0, 1, 2],
    "half_zero": [-2, -1, 0, 0, 1, 2],
    "floor": [-3, -2, -1, 0, 1, 2],
    "ceil": [-2, -1, 0, 1, 2, 3],
    "trunc": [-2, -1, 0, 0, 1, 2],
}


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_ties_go_where_the_mode_says(mode):
    np.testing.assert_array_equal(round_to_int(TIES, mode), EXPECTED[mode])


@pytest.mark.parametrize("mode", ["half_away", "half_up", "half_down", "half_zero"])
def test_largest_double_below_one_half_rounds_to_zero(mode):
    # floor(x + 0.5) gets this wrong: 0.49999999999999994 + 0.5 rounds to 1.0
    x = np.array([0.49999999999999994, -0.49999999999999994])
    np.testing.assert_array_equal(round_to_int(x, mode), [0.0, 0.0])


def _reference(v: float, mode: str) -> float:
    fl = math.floor(v)
    frac = v - fl  # exact in Python for these magnitudes? use fractions to be sure
    from fractions import Fraction

    frac = Fraction(v) - fl
    half = Fraction(1, 2)
    if mode == "half_even":
        return float(round(Fraction(v)))
    if mode == "half_away":
        return float(fl + 1) if (frac > half or (frac == half and v > 0)) else float(fl)
    if mode == "half_up":
        return float(fl + 1) if frac >= half else float(fl)
    if mode == "half_down":
        return float(fl + 1) if frac > half else float(fl)
    if mode == "half_zero":
        return float(fl + 1) if (frac > half or (frac == half and v < 0)) else float(fl)
    return float({"floor": math.floor, "ceil": math.ceil, "trunc": math.trunc}[mode](v))


@given(
    st.one_of(
        st.floats(-1e6, 1e6, allow_nan=False),
        st.integers(-10**6, 10**6).map(lambda k: k + 0.5),
        st.floats(-1e-300, 1e-300),
    ),
    st.sampled_from(sorted(EXPECTED)),
)
def test_every_mode_matches_exact_rational_rounding(v, mode):
    got = round_to_int(np.array([v]), mode)[0]
    assert got == _reference(v, mode)


@given(st.sampled_from(sorted(EXPECTED) + ["stochastic"]), st.sampled_from([np.float32, np.float64]))
def test_nan_and_inf_pass_through_and_dtype_is_kept(mode, dt):
    x = np.array([np.nan, np.inf, -np.inf, 1.25], dtype=dt)
    r = round_to_int(x, mode, seed=1)
    assert r.dtype == dt
    assert np.isnan(r[0]) and r[1] == np.inf and r[2] == -np.inf


def test_stochastic_rounding_is_seeded_and_unbiased():
    x = np.full(200_000, 0.3)
    a = round_to_int(x, "stochastic", seed=7)
    np.testing.assert_array_equal(a, round_to_int(x, "stochastic", seed=7))
    assert set(np.unique(a)) <= {0.0, 1.0}
    assert abs(a.mean() - 0.3) < 0.005
    b = round_to_int(-x, "stochastic", rng=np.random.default_rng(7))
    assert abs(b.mean() + 0.3) < 0.005
    np.testing.assert_array_equal(round_to_int(np.array([2.0, -3.0]), "stochastic", seed=0), [2, -3])


def test_unknown_mode_is_named_in_the_error():
    with pytest.raises(RefquantError, match="rounding must be one of.*'nearest'"):
        round_to_int(np.ones(2), "nearest")


@pytest.mark.parametrize("mode", [m for m in ROUNDING_MODES if m != "stochastic"])
def test_bfloat16_input_keeps_its_dtype(mode):
    # "same float dtype": bfloat16 (an ml_dtypes type, dtype kind 'V') came back as float64.
    # Every integer a bfloat16 with a fraction rounds to is below 2^8, so exact in bfloat16
    import ml_dtypes

    x = np.array([2.5, -2.5, 0.75, -127.5, 2.0**20], ml_dtypes.bfloat16)
    want = {"half_even": [2, -2, 1, -128], "half_away": [3, -3, 1, -128],
            "half_up": [3, -2, 1, -127], "half_down": [2, -3, 1, -128],
            "half_zero": [2, -2, 1, -127], "floor": [2, -3, 0, -128],
            "ceil": [3, -2, 1, -127], "trunc": [2, -2, 0, -127]}[mode]
    r = round_to_int(x, mode)
    assert r.dtype == x.dtype
    assert r.astype(np.float64).tolist() == [*want, 2.0**20]
