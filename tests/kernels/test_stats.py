"""kernels.cpu.stats.error_sums: the compression report's float64 sums in their stated order."""

import math
import textwrap

import numpy as np
import pytest
from helpers import run_without_jit
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refquant.kernels.cpu.stats import LANES, error_sums


def _ordered(w, h):
    """The documented order, in Python floats: lane i % LANES, then the lanes in order."""
    s, e = [0.0] * LANES, [0.0] * LANES
    for i, (a, b) in enumerate(zip(w.tolist(), h.tolist(), strict=True)):
        d = a - b
        s[i % LANES] += a * a
        e[i % LANES] += d * d
    signal = noise = 0.0
    for k in range(LANES):
        signal += s[k]
        noise += e[k]
    return signal, noise


_F = st.floats(width=32, allow_nan=False, allow_infinity=False)


@settings(deadline=None)
@given(w=hnp.arrays(np.float32, st.integers(0, 700), elements=_F),
       noise=hnp.arrays(np.float32, 700, elements=st.sampled_from([0.0, -0.0, 1e-30, 0.5, 3e38])),
       wide=st.booleans())
def test_error_sums_are_the_documented_order_bit_for_bit(w, noise, wide):
    h = (w + noise[:w.size]).astype(np.float32)
    if wide:
        h = h.astype(np.float64)
    got = error_sums(w, h)
    want = _ordered(w, h)
    for g, x in zip(got, want, strict=True):
        assert g == x or (math.isnan(g) and math.isnan(x))


def test_error_sums_agree_with_numpy_to_float64_rounding():
    rng = np.random.default_rng(2)
    w = rng.standard_normal(1 << 20).astype(np.float32)
    h = (w + 0.01 * rng.standard_normal(w.size)).astype(np.float32)
    s, e = error_sums(w, h)
    w64 = w.astype(np.float64)
    d = w64 - h
    assert s == pytest.approx(float(np.dot(w64, w64)), rel=1e-12)
    assert e == pytest.approx(float(np.dot(d, d)), rel=1e-12)
    assert error_sums(w[:0], h[:0]) == (0.0, 0.0)
    inf = w.copy()
    inf[7] = np.inf
    assert math.isinf(error_sums(inf, h)[0]) and math.isnan(error_sums(inf, inf)[1])


def test_error_sums_without_jit():
    run_without_jit(textwrap.dedent("""
        import numpy as np
        from refquant.kernels.cpu.stats import error_sums
        w = np.arange(300, dtype=np.float32) / 8
        h = (w + 0.25).astype(np.float32)
        s, e = error_sums(w, h)
        assert abs(s - float((w.astype(np.float64) ** 2).sum())) < 1e-9, s
        assert e == 300 * 0.0625, e
    """))


@settings(deadline=None, max_examples=150)
@given(data=st.data())
def test_max_steps_is_numpys_max_of_the_quotients(data):
    from refquant.kernels.cpu.stats import max_steps

    rows, cols = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 40) | st.integers(250, 600))
    group = data.draw(st.sampled_from([cols, 1, 3, 8, 16, 300]))
    groups = -(-cols // group)
    el = st.floats(-1e3, 1e3, width=32) | st.sampled_from([0.0, -0.0, np.nan])
    w = data.draw(hnp.arrays(np.float32, (rows, cols), elements=el))
    h = data.draw(hnp.arrays(np.float32, (rows, cols), elements=el))
    steps = data.draw(hnp.arrays(np.float64, (rows, groups), elements=st.sampled_from(
        [0.5, 1e-3, 3.0, 0.0, np.inf, 1e-300])))
    with np.errstate(all="ignore"):
        want = (np.abs(w.astype(np.float64) - h) / np.repeat(steps, group, axis=1)[:, :cols]).max()
    got = max_steps(w, h, steps, group)
    assert got == want or (np.isnan(got) and np.isnan(want))


def test_max_steps_past_its_256_element_chunks():
    from refquant.kernels.cpu.stats import max_steps

    rng = np.random.default_rng(4)
    w = rng.standard_normal((3, 700)).astype(np.float32)
    h = (w + 0.01 * rng.standard_normal(w.shape)).astype(np.float32)
    h[2, 611] = w[2, 611] + 5  # the largest error, in a third chunk
    steps = np.array([[0.5], [0.25], [0.125]])
    want = (np.abs(w.astype(np.float64) - h) / steps).max()
    assert max_steps(w, h, steps, 700) == want
    h[1, 513] = np.nan
    assert np.isnan(max_steps(w, h, steps, 700))
    g = np.full((3, 3), 0.5)
    h[1, 513] = w[1, 513]
    assert max_steps(w, h, g, 300) == (np.abs(w.astype(np.float64) - h) / 0.5).max()
