"""refquant.identify: planted semantics are recovered, and only those."""

from __future__ import annotations

import json

import numpy as np
import pytest

from refquant import RefquantError, quantize
from refquant.cli import main
from refquant.identify import identify

TIES = np.float32([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5, 10.5, -10.5])


@pytest.mark.parametrize("mode", ["half_even", "half_away", "half_up", "half_down", "trunc"])
def test_planted_rounding_mode_is_recovered_when_ties_exist(mode):
    x = np.concatenate([TIES, np.float32([0.2, -0.7, 3.9])])
    q = quantize(x, 1.0, 0, rounding=mode)
    rep = identify(x, q, 1.0, 0)
    assert rep.matches
    assert rep.determined["rounding"] == mode


def test_half_away_codes_are_not_identified_as_half_even():
    x = TIES * np.float32(0.25)
    q = quantize(x, 0.25, 0, rounding="half_away")
    rep = identify(x, q, 0.25, 0)
    assert {c.semantics["rounding"] for c in rep.matching} == {"half_away"}
    assert "onnx QuantizeLinear (onnxruntime)" not in [c.name for c in rep.presets]
    assert "tflite QUANTIZE (reference kernel)" in [c.name for c in rep.presets]


def test_without_ties_the_rounding_mode_is_reported_undetermined():
    x = np.float32([0.2, 0.7, -1.3, 2.9])
    rep = identify(x, quantize(x, 1.0), 1.0)
    assert {"half_even", "half_away"} <= set(rep.undetermined["rounding"])
    assert "floor" not in rep.undetermined["rounding"]


def test_pytorch_reciprocal_example_is_identified():
    # pytorch#139464: x * float32(1 / scale) = 128 where x / scale = 127 (ONNX)
    x, s = np.float32([0.273939937]), np.float32(0.00214854861)
    rep = identify(x, np.uint8([128]), s, 0)
    names = [c.name for c in rep.presets]
    assert "pytorch quantize_per_tensor" in names
    assert "onnx QuantizeLinear (onnxruntime)" not in names
    onnx_rep = identify(x, np.uint8([127]), s, 0)
    assert "onnx QuantizeLinear (onnxruntime)" in [c.name for c in onnx_rep.presets]



def test_pytorch_preset_adds_the_zero_point_in_a_fused_multiply_add():
    # torch.quantize_per_tensor (fbgemm QuantizeAvx2<LEGACY>) rounds fma(x, 1/s, z) once:
    # x = -13.65000057220459, 1/s = float32(1 / 0.1f) = 10, z = 208: x * 10 + 208 =
    # 71.49999428 -> 71 (torch 2.13 gives 71). Rounding x * 10 to float32 first gives -136.5,
    # + 208 = 71.5 -> 72: the preset once computed that and missed torch's codes.
    x = np.full(8, np.float32(-13.65000057220459))
    rep = identify(x, np.full(8, 71, np.uint8), np.float32(0.1), 208)
    assert "pytorch quantize_per_tensor" in [c.name for c in rep.presets]
    rep = identify(x, np.full(8, 72, np.uint8), np.float32(0.1), 208)
    assert "pytorch quantize_per_tensor" not in [c.name for c in rep.presets]
    # a one-element scale and zero point are per tensor too (int(z) once raised TypeError)
    rep = identify(x, np.full(8, 71, np.uint8), np.float32([0.1]), np.int64([208]))
    assert "pytorch quantize_per_tensor" in [c.name for c in rep.presets]


def test_onnxruntime_preset_sends_nan_to_qmin():
    # onnxruntime 1.32 QuantizeLinear, int8, s = 1, z = 5: NaN -> -128 (qmin), 2.5 -> 2 + 5;
    # the preset once sent NaN to code 0 and missed onnxruntime's own output
    x = np.float32([np.nan, 1.0, 2.5])
    rep = identify(x, np.int8([-128, 6, 7]), np.float32(1), 5)
    assert "onnx QuantizeLinear (onnxruntime)" in [c.name for c in rep.presets]

def test_reciprocal_multiply_is_determined_on_many_inputs():
    rng = np.random.default_rng(0)
    s = np.float32(0.00214854861)
    x = np.concatenate([np.float32([0.273939937]),
                        (rng.integers(0, 255, 4000) * s + np.float32(0.5) * s).astype(np.float32)])
    q = quantize(x, s, 0, dtype="uint8", scale_op="reciprocal", precision="float32")
    rep = identify(x, q, s, 0)
    assert rep.determined["scale_op"] == "reciprocal"
    assert rep.determined["precision"] == "float32"
    assert rep.determined["rounding"] == "half_even"


def test_nan_policy_and_zero_point_stage_are_recovered():
    x = np.float32([np.nan, 0.5, 1.5, -0.5, 100.0])
    q = quantize(x, 1.0, 3, nan="qmin", zero_point_stage="before_rounding", rounding="half_even")
    rep = identify(x, q, 1.0, 3)
    assert rep.determined["nan"] == "qmin"
    # with s = 1 the fused fma(x, 1, z) rounds exactly like x + z: both stay, after_rounding goes
    assert rep.undetermined["zero_point_stage"] == ["before_rounding", "fused"]


def test_when_nothing_matches_the_closest_and_their_departures_are_reported():
    x = np.float32([0.5, 1.5, 2.7])
    rep = identify(x, np.int8([1, 1, 3]), 1.0, 0)  # 0.5 -> 1 (away) but 1.5 -> 1: no mode
    assert not rep.matches
    best = rep.closest[0]
    assert best.mismatches == 1
    idx, xv, q, candidate = best.departures[0]
    assert xv in (0.5, 1.5) and q != candidate
    text = str(rep)
    assert "no combination reproduces Q" in text
    # the user's own codes are Q, not "expected"
    assert f"Q has {q}, these semantics give {candidate}" in text and "expected" not in text
    assert rep.to_dict()["closest"][0]["departures"][0]["q"] == q


def test_per_axis_and_blocked_granularity():
    x = np.float32([[0.5, -1.5, 2.5], [0.25, -0.75, 1.25]])  # ties of both signs
    s = np.float32([1.0, 0.5])
    q = quantize(x, s, 0, axis=0, rounding="half_away")
    assert identify(x, q, s, 0, axis=0).determined["rounding"] == "half_away"
    qb = quantize(x, np.float32([[1.0, 2.0], [0.5, 1.0]]), 0, axis=1, block_size=2)
    rep = identify(x, qb, np.float32([[1.0, 2.0], [0.5, 1.0]]), 0, axis=1, block_size=2)
    assert rep.matches


def test_identify_rejects_mismatched_shapes_and_unknown_dtype():
    with pytest.raises(RefquantError, match="shape"):
        identify(np.zeros(3), np.zeros(2, np.int8), 1.0)
    with pytest.raises(RefquantError, match="dtype="):
        identify(np.zeros(3), np.zeros(3, np.int64), 1.0)


def test_cli_identify_prints_the_determined_rounding(tmp_path, capsys):
    x = np.concatenate([TIES, np.float32([0.3])])
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "q.npy", quantize(x, 1.0, -2, rounding="half_away"))
    rc = main(["identify", str(tmp_path / "x.npy"), str(tmp_path / "q.npy"), "--scale", "1.0",
               "--zero-point", "-2", "--json"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["determined"]["rounding"] == "half_away"
    np.save(tmp_path / "bad.npy", np.int8([5] * x.size))
    assert main(["identify", str(tmp_path / "x.npy"), str(tmp_path / "bad.npy"),
                 "--scale", "0.5"]) == 1


def test_fused_multiply_add_is_identified_from_near_ties():
    # x * fl32(1/s) rounds to exactly k + 0.5 in float32, but the exact product does not:
    # only a kernel that rounds fma(x, 1/s, z) once (PyTorch's AVX2 quint8 path) gets these
    rng = np.random.default_rng(0)
    s = np.float32(0.1)
    inv = np.float32(1) / s
    xs = []
    while len(xs) < 40:
        k = int(rng.integers(-100, 100))
        x0 = np.float32((k + 0.5) / np.float64(inv))
        for v in (x0, np.nextafter(x0, np.float32(-1e9)), np.nextafter(x0, np.float32(1e9))):
            if np.float32(v * inv) == np.float32(k + 0.5) and np.float64(v) * np.float64(inv) != k + 0.5:
                xs.append(v)
                break
    x = np.array(xs, np.float32)
    q = quantize(x, s, 100, dtype="uint8", scale_op="reciprocal", precision="float32",
                 zero_point_stage="fused")
    report = identify(x, q.astype(np.uint8), s, 100)
    assert report.determined["zero_point_stage"] == "fused"
    assert "pytorch quantize_per_tensor" in [c.name for c in report.presets]


@pytest.mark.parametrize("scale, zero_point, x, what", [
    (0.0, 0, TIES, "scale must be finite and > 0"),  # used to report 'no combination reproduces Q'
    (float("nan"), 0, TIES, "scale must be finite and > 0"),
    (np.array(["a"]), 0, TIES, "scale must be a real"),  # ValueError from a preset's float()
    (None, 0, TIES, "scale must be a real"),  # TypeError from a preset's float()
    (1.0, "a", TIES, "zero_point must be"),  # ValueError from a preset's int()
    (1.0, 10**23, TIES, "zero_point must be"),  # OverflowError from a preset
    (1.0, 0, TIES.astype(np.complex64), "x must be an array of real numbers"),  # ComplexWarning, then 'matches'
    (1.0, 0, np.array(["a"] * TIES.size), "x must be an array of real numbers"),
    (1.0, 0, [[1.0], [2.0, 3.0]], "x must be"),  # ragged: NumPy's ValueError
])
def test_bad_scale_zero_point_or_x_is_an_error_not_a_search_result(scale, zero_point, x, what):
    with pytest.raises(RefquantError, match=what):
        identify(x, np.zeros(np.shape(TIES), np.int8), scale, zero_point)


def test_cli_identify_unreadable_npy_exits_2_with_a_message(tmp_path, capsys):
    np.save(tmp_path / "q.npy", np.int8([1, 2]))
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")  # header runs past the end
    (tmp_path / "empty.npy").write_bytes(b"")
    np.save(tmp_path / "obj.npy", np.array([None, 1], object), allow_pickle=True)
    for x in ("bad.npy", "empty.npy", "obj.npy"):  # ValueError / EOFError tracebacks before
        assert main(["identify", str(tmp_path / x), str(tmp_path / "q.npy"), "--scale", "1"]) == 2
        assert f"cannot read X '{tmp_path / x}'" in capsys.readouterr().err
    assert main(["identify", str(tmp_path / "q.npy"), str(tmp_path / "q.npy"),
                 "--scale", str(tmp_path / "obj.npy")]) == 2
    assert "cannot read scale" in capsys.readouterr().err


def test_nan_policy_is_searched_for_bfloat16_and_float16_inputs():
    # the NaN check looked at dtype.kind == "f" only: bfloat16 (kind "V") never searched nan=
    import ml_dtypes

    x = np.array([np.nan, 1.5, 2.5, -0.5], np.float32)
    q = np.int8([127, 2, 2, 0])  # NaN -> qmax, ties to even
    for dt in (ml_dtypes.bfloat16, np.float16):
        rep = identify(x.astype(dt), q, 1.0)
        assert rep.determined.get("nan") == "qmax", (dt, rep.determined)


def test_presets_do_not_truncate_a_fractional_zero_point():
    # zero_point 0.5 was cast to 0 by the onnx.reference, pytorch and tflite presets, which then
    # 'reproduced' codes made with zero point 0: x = [1, 2, 3], q = [1, 2, 3], scale 1
    rep = identify(np.float32([1, 2, 3]), np.int8([1, 2, 3]), 1.0, 0.5)
    assert rep.presets == []
    assert any("zero point" in line for line in rep.not_applicable)
    assert [c.name for c in identify(np.float32([1, 2, 3]), np.int8([1, 2, 3]), 1.0, 0).presets]
