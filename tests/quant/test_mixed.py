"""Mixed-precision bit allocation: DP = brute force, LP bound <= optimum <= greedy, plans."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refquant import RefquantError
from refquant.quant.gptq import HessianAccumulator
from refquant.quant.mixed import (
    allocate,
    integer_choices,
    load_plan,
    lp_lower_bound,
    plan_from_table,
    plan_mixed_precision,
    sensitivity,
)


def _total(E, S, pick):
    err = 0.0
    for i, c in enumerate(pick):
        err += E[i][c]
    return err, sum(S[i][c] for i, c in enumerate(pick))


@st.composite
def _tables(draw):
    n_layers = draw(st.integers(1, 5))
    E, S = [], []
    for _ in range(n_layers):
        k = draw(st.integers(1, 4))
        S.append(draw(st.lists(st.integers(0, 40), min_size=k, max_size=k)))
        E.append(draw(st.lists(st.floats(0, 100, allow_nan=False, allow_infinity=False),
                               min_size=k, max_size=k)))
    lo = sum(min(s) for s in S)
    hi = sum(max(s) for s in S)
    budget = draw(st.integers(lo, hi + 5))
    return E, S, budget


@settings(max_examples=300, deadline=None)
@given(_tables())
def test_dp_equals_brute_force_and_greedy_is_feasible_and_not_better(t):
    E, S, budget = t
    pd, used = allocate(E, S, budget, method="dp")
    assert used == "dp"
    pb, _ = allocate(E, S, budget, method="brute")
    pg, _ = allocate(E, S, budget, method="greedy")
    ed, sd = _total(E, S, pd)
    eb, sb = _total(E, S, pb)
    eg, sg = _total(E, S, pg)
    assert sd <= budget and sb <= budget and sg <= budget
    assert ed == eb  # both sum the errors layer by layer in the same order
    assert ed <= eg  # greedy is never better than the optimum
    lb = lp_lower_bound(E, S, budget)
    assert lb <= ed + 1e-9 * max(1.0, ed)


def test_random_medium_tables_greedy_close_to_dp():
    rng = np.random.default_rng(0)
    gaps = []
    for _ in range(20):
        n = 30
        bits = np.array([2, 3, 4, 5, 6, 8])
        numel = rng.integers(100, 2000, n)
        S = [list(numel[i] * bits + 17) for i in range(n)]
        E = [list(rng.uniform(0.5, 2) * numel[i] * 4.0 ** -bits) for i in range(n)]
        budget = int(4.2 * numel.sum())
        ed, sd = _total(E, S, allocate(E, S, budget, method="dp")[0])
        eg, sg = _total(E, S, allocate(E, S, budget, method="greedy")[0])
        assert sd <= budget and sg <= budget and ed <= eg
        gaps.append(eg / ed - 1)
    assert max(gaps) < 0.05  # on convex error curves the greedy is near the optimum


def test_auto_falls_back_to_greedy_on_a_huge_table(monkeypatch):
    import refquant.quant.mixed as mixed

    monkeypatch.setattr(mixed, "DP_MAX_CELLS", 10)
    E = [[3.0, 1.0, 0.0]] * 4
    S = [[1, 7, 13]] * 4
    pick, used = allocate(E, S, 30, method="auto")
    assert used == "greedy" and sum(S[i][c] for i, c in enumerate(pick)) <= 30
    with pytest.raises(RefquantError, match="method='greedy'"):
        allocate(E, S, 30, method="dp")


def test_budget_below_smallest_choice_names_it():
    with pytest.raises(RefquantError, match=r"budget 9 bits is below the smallest choice.*10 "
                                            r"bits.*'b'"):
        allocate([[1, 0], [1, 0]], [[3, 5], [7, 9]], 9, names=["a", "b"])
    w = {"l": np.ones((8, 32))}
    with pytest.raises(RefquantError, match=r"average_bits 1.5 is below the smallest choice: "
                                            r"2.562 bits/weight.*int2-g32"):
        plan_mixed_precision(w, average_bits=1.5, choices=integer_choices((2, 4), group_size=32))


@pytest.mark.parametrize("bad, match", [
    (dict(errors=[[1.0]], sizes=[[1, 2]], budget=5), "1 errors and 2 sizes"),
    (dict(errors=[[np.nan]], sizes=[[1]], budget=5), "finite"),
    (dict(errors=[[1.0]], sizes=[[1.5]], budget=5), "whole numbers"),
    (dict(errors=[], sizes=[], budget=5), "no layers"),
    (dict(errors=[[1.0]], sizes=[[1]], budget=float("inf")), "budget"),
])
def test_bad_tables(bad, match):
    with pytest.raises(RefquantError, match=match):
        allocate(**bad)


def test_bad_method_and_choices():
    with pytest.raises(RefquantError, match="method"):
        allocate([[1.0]], [[1]], 1, method="ilp")
    with pytest.raises(RefquantError, match="bits"):
        integer_choices((1, 4))
    with pytest.raises(RefquantError, match="group_size"):
        integer_choices(group_size=0)
    with pytest.raises(RefquantError, match="non-empty mapping"):
        plan_mixed_precision({}, average_bits=4)
    with pytest.raises(RefquantError, match="exactly one"):
        plan_mixed_precision({"a": np.ones((2, 4))}, average_bits=4, budget_bits=10)
    with pytest.raises(RefquantError, match=r"NaN or Inf at index \(0, 1\)"):
        plan_mixed_precision({"a": np.array([[0, np.inf]])}, average_bits=4)
    with pytest.raises(RefquantError, match="no Hessian for layer 'a'"):
        plan_mixed_precision({"a": np.ones((2, 4))}, average_bits=4, metric="hessian_diag",
                             hessians={})


def test_sensitivity_metrics_agree_with_their_formulas():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(6, 16))
    wh = np.round(w * 4) / 4
    x = rng.normal(size=(40, 16)) * rng.uniform(0.1, 3, 16)
    acc = HessianAccumulator(16).update(x)
    h = acc.hessian
    e = w - wh
    assert sensitivity(w, wh) == pytest.approx((e ** 2).sum())
    assert sensitivity(w, wh, metric="hessian_diag", hessian=h) == pytest.approx(
        ((e ** 2) * np.diag(h)).sum())
    assert sensitivity(w, wh, metric="hessian_trace", hessian=acc) == pytest.approx(
        np.trace(h) / 16 * (e ** 2).sum())
    # tr(E H E^T) with H = (2/n) X^T X is (2/n) ||X E^T||^2 = 2 * mean over rows of the sums
    full = sensitivity(w, wh, metric="hessian", hessian=h)
    out = sensitivity(w, wh, metric="output", x=x)
    assert full == pytest.approx(2 * out * 6)
    assert sensitivity(w, w, metric="output", x=x) == 0.0
    with pytest.raises(RefquantError, match="last axis 16"):
        sensitivity(w, wh, metric="output", x=x[:, :3])
    with pytest.raises(RefquantError, match="shape"):
        sensitivity(w, wh[:, :3])


def test_plan_on_the_demo_model_saves_loads_and_tightens_with_budget(tmp_path):
    from refquant.models import digits_mlp_accuracy, load_digits_mlp

    p = load_digits_mlp()
    layers = {k: v for k, v in p.items() if k.endswith(".weight")}
    choices = integer_choices(group_size=32)
    plans = {b: plan_mixed_precision(layers, average_bits=b, choices=choices) for b in (3, 4, 5)}
    errs = [plans[b].total_error for b in (3, 4, 5)]
    assert errs[0] > errs[1] > errs[2]
    for b, pl in plans.items():
        assert pl.total_bits <= pl.budget_bits == int(b * pl.numel)
        assert pl.method == "dp"
        assert "total" in pl.table() and "blocks.0.weight" in str(pl)
    pl = plans[4]
    for suffix in (".json", ".toml"):
        f = pl.save(tmp_path / f"plan{suffix}")
        back = load_plan(f)
        assert back.to_dict() == pl.to_dict()
    json.loads((tmp_path / "plan.json").read_text())  # strict JSON
    # the plan's weights keep the model's accuracy at 5 bits
    q = dict(p)
    by = {c.name: c for c in choices}
    for lp in plans[5].layers:
        q[lp.name] = by[lp.choice].quantize(p[lp.name]).astype(np.float32)
    assert digits_mlp_accuracy(q) >= digits_mlp_accuracy(p) - 0.02


def test_plan_with_hessians_and_inputs():
    rng = np.random.default_rng(2)
    layers = {"a": rng.normal(size=(16, 64)), "b": rng.normal(size=(16, 64)) * 0.1}
    xs = {"a": rng.normal(size=(100, 64)), "b": rng.normal(size=(100, 64)) * 10}
    hs = {k: HessianAccumulator(64).update(v).hessian for k, v in xs.items()}
    ph = plan_mixed_precision(layers, average_bits=5, hessians=hs,
                              choices=integer_choices((2, 4, 8), group_size=32))
    po = plan_mixed_precision(layers, average_bits=5, inputs=xs,
                              choices=integer_choices((2, 4, 8), group_size=32))
    assert ph.metric == "hessian_diag" and po.metric == "output"
    assert ph.total_bits <= ph.budget_bits


def test_plan_from_table_and_bad_files(tmp_path):
    pl = plan_from_table(["x", "y"], [10, 10], [{"a": (20, 5.0), "b": (40, 1.0)},
                                                {"a": (20, 3.0), "b": (40, 0.0)}],
                         budget_bits=60)
    assert pl.choices() == {"x": "b", "y": "a"} or pl.total_error == 4.0
    assert pl.total_error == 4.0
    with pytest.raises(RefquantError, match=r"\*.json or \*.toml"):
        pl.save(tmp_path / "plan.txt")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(RefquantError, match="not a mixed-precision plan"):
        load_plan(tmp_path / "bad.json")
    (tmp_path / "bad.toml").write_text("x = 1\n")
    with pytest.raises(RefquantError, match=r"no \[mixed_precision\]"):
        load_plan(tmp_path / "bad.toml")
    with pytest.raises(RefquantError, match="unique"):
        plan_from_table(["x", "x"], [1, 1], [{"a": (1, 0)}, {"a": (1, 0)}], budget_bits=5)
