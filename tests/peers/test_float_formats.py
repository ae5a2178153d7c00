"""Float formats against ONNX's reference Cast (saturate=1 and 0) and PyTorch's float8 casts."""

import numpy as np
import pytest
from helpers import import_peer
from hypothesis import given, settings
from hypothesis import strategies as st

from refquant.formats.floats import FLOAT_FORMATS, decode, encode

FP8 = ["float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz"]
ONNX_TYPE = {
    "float8_e4m3fn": "FLOAT8E4M3FN",
    "float8_e4m3fnuz": "FLOAT8E4M3FNUZ",
    "float8_e5m2": "FLOAT8E5M2",
    "float8_e5m2fnuz": "FLOAT8E5M2FNUZ",
    "float4_e2m1fn": "FLOAT4E2M1",
    "float8_e8m0fnu": "FLOAT8E8M0",
}


def onnx_cast(x, name, **attrs):
    onnx = import_peer("onnx")
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    to = getattr(TensorProto, ONNX_TYPE[name])
    node = helper.make_node("Cast", ["x"], ["y"], to=to, **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", to, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 25)])
    assert onnx.__version__
    with np.errstate(over="ignore", invalid="ignore"):
        y = ReferenceEvaluator(model).run(None, {"x": np.asarray(x, np.float32)})[0]
    return y.view(np.uint8)


def probe_values(name):
    """Every code's value, every midpoint of neighbours (the ties), just beside them, specials."""
    fmt = FLOAT_FORMATS[name]
    v = np.sort(decode(np.arange(1 << fmt.bits), name).astype(np.float64))
    v = v[np.isfinite(v)]
    mids = (v[:-1] + v[1:]) / 2
    out = np.concatenate([v, mids, -mids, 2 * v, [fmt.max * 1.0625, fmt.max * 1.0001, 1e30, -1e30]])
    out = out.astype(np.float32)
    beside = np.concatenate([np.nextafter(out, np.float32(np.inf)), np.nextafter(out, np.float32(-np.inf))])
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan], np.float32)
    return np.concatenate([out, beside, special])


@pytest.mark.parametrize("name", FP8 + ["float4_e2m1fn"])
@pytest.mark.parametrize("saturate", [1, 0])
def test_fp8_fp4_encode_equals_onnx_reference_cast_on_ties_and_specials(name, saturate):
    x = probe_values(name)
    if name == "float4_e2m1fn":  # Cast-25 has no saturate for FLOAT4E2M1: ml_dtypes saturates
        ref = onnx_cast(x, name)
        got = encode(x, name, saturate=bool(saturate), nan="ml_dtypes")
    else:
        ref = onnx_cast(x, name, saturate=saturate)
        got = encode(x, name, saturate=bool(saturate))
    bad = np.flatnonzero(got != ref)
    assert bad.size == 0, [(float(x[i]), int(got[i]), int(ref[i])) for i in bad[:8]]


@settings(max_examples=40)
@given(
    name=st.sampled_from(FP8),
    saturate=st.sampled_from([0, 1]),
    xs=st.lists(st.floats(width=32, allow_subnormal=True), min_size=1, max_size=64),
)
def test_fp8_encode_equals_onnx_reference_cast_on_drawn_float32(name, saturate, xs):
    x = np.array(xs, np.float32)
    assert np.array_equal(encode(x, name, saturate=bool(saturate)), onnx_cast(x, name, saturate=saturate))


@pytest.mark.parametrize("round_mode, rounding", [("up", "ceil"), ("down", "floor"), ("nearest", "half_even")])
def test_e8m0_saturating_encode_equals_onnx_cast_24_round_modes(round_mode, rounding):
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            np.ldexp(1.0, np.arange(-126, 128)),
            1.5 * np.ldexp(1.0, np.arange(-126, 128)),  # the ties
            rng.uniform(0.5, 2, 200) * np.ldexp(1.0, rng.integers(-120, 120, 200)),
            [0.0, -3.0, -1.5, np.inf, np.nan, 3.3e38, 1.7e38],
        ]
    ).astype(np.float32)
    # ONNX rounds float32 subnormals (exponent field 0) by the field only: excluded here
    ref = onnx_cast(x, "float8_e8m0fnu", saturate=1, round_mode=round_mode)
    got = encode(x, "float8_e8m0fnu", saturate=True, rounding=rounding)
    bad = np.flatnonzero(got != ref)
    assert bad.size == 0, [(float(x[i]), int(got[i]), int(ref[i])) for i in bad[:8]]


def test_onnx_e8m0_round_up_of_a_float32_subnormal_is_2_to_the_minus_126():
    # ONNX quirk: x = 2^-128 (field 0, fraction nonzero) rounds "up" to 2^-126, not 2^-127.
    x = np.array([2.0**-128], np.float32)
    assert onnx_cast(x, "float8_e8m0fnu", saturate=1, round_mode="up")[0] == 1
    assert encode(x, "float8_e8m0fnu", saturate=True, rounding="ceil")[0] == 0


def torch_codes(x, name):
    torch = import_peer("torch")
    return torch.from_numpy(np.asarray(x, np.float32)).to(getattr(torch, name)).view(torch.uint8).numpy()


def test_torch_e4m3fn_cast_saturates_overflow_and_inf_like_onnx_saturate_1():
    x = probe_values("float8_e4m3fn")
    assert np.array_equal(torch_codes(x, "float8_e4m3fn"), encode(x, "float8_e4m3fn", saturate=True))


@pytest.mark.parametrize("name", ["float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"])
def test_torch_other_fp8_casts_do_not_saturate(name):
    x = probe_values(name)
    ref = torch_codes(x, name)
    got = encode(x, name, saturate=False)
    if name == "float8_e5m2":
        # PyTorch's e5m2 NaN is S.11111.11 (0x7F / 0xFF); ml_dtypes and refquant write S.11111.10
        nan = np.isnan(x)
        assert ((ref[nan] & 0x7F) == 0x7F).all() and ((got[nan] & 0x7F) == 0x7E).all()
        x, ref, got = x[~nan], ref[~nan], got[~nan]
    bad = np.flatnonzero(got != ref)
    assert bad.size == 0, [(float(x[i]), int(got[i]), int(ref[i])) for i in bad[:8]]


def test_torch_e8m0_ignores_the_sign_and_rounds_ties_up_but_overflows_to_nan():
    # PyTorch's float8_e8m0fnu: sign ignored and 0 -> 2^-127 (as ONNX saturate), ties up,
    # but 1.5 * 2^127 -> NaN (not saturated): refquant's saturate=True differs only there.
    x = np.array([1.5, 0.75, 3.0, 1.4, -1.5, 0.0, 2.0**-127, 1.5 * 2.0**127], np.float32)
    assert torch_codes(x, "float8_e8m0fnu").tolist() == [128, 127, 129, 127, 128, 0, 0, 255]
    assert encode(x, "float8_e8m0fnu", saturate=True).tolist() == [128, 127, 129, 127, 128, 0, 0, 254]


def test_quantize_float_per_channel_equals_torch_divide_then_e4m3fn_cast():
    torch = import_peer("torch")
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((16, 33)) * np.logspace(-3, 3, 16)[:, None]).astype(np.float32)
    w[3, 5] = 0.0
    from refquant.quant.floatq import quantize_float

    codes, s = quantize_float(w, "float8_e4m3fn", axis=0)
    tw = torch.from_numpy(w)
    ts = torch.from_numpy(s)[:, None]
    ref = (tw / ts).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
    assert np.array_equal(codes, ref)
    # and a scale that makes the largest values overflow: torch saturates, so does saturate=True
    half = (s / 2).astype(np.float32)
    codes2, _ = quantize_float(w, "float8_e4m3fn", half, axis=0)
    ref2 = (tw / torch.from_numpy(half)[:, None]).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
    assert np.array_equal(codes2, ref2)


def test_onnxruntime_cast_saturate_0_overflow_departs_from_the_cast_table():
    # Cast-19+ saturate=0: x > FLT_MAX after rounding is NaN (e4m3fn) / Inf (e5m2), as
    # onnx.reference and encode(saturate=False) give; onnxruntime gives 448 for e4m3fn in
    # [480, 496) and NaN for e5m2 in [61440, 65536) (Inf only from 65536).
    import_peer("onnx")
    ort = import_peer("onnxruntime")
    from onnx import TensorProto, helper

    cases = {"float8_e4m3fn": ([480.0, 490.0, -484.0, 496.0], [448.0, 448.0, -448.0, np.nan]),
             "float8_e5m2": ([61440.0, -64000.0, 65536.0], [np.nan, np.nan, np.inf])}
    for name, (xs, ort_want) in cases.items():
        to = getattr(TensorProto, ONNX_TYPE[name])
        nodes = [helper.make_node("Cast", ["x"], ["q"], to=to, saturate=0),
                 helper.make_node("Cast", ["q"], ["y"], to=TensorProto.FLOAT)]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, None)],
                              [helper.make_tensor_value_info("y", 1, None)])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
        m.ir_version = 10
        x = np.array(xs, np.float32)
        y = ort.InferenceSession(m.SerializeToString(),
                                 providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_array_equal(y, np.array(ort_want, np.float32))
        got = decode(encode(x, name, saturate=False), name)
        assert np.array_equal(got, decode(onnx_cast(x, name, saturate=0), name), equal_nan=True)
        assert not np.array_equal(got, y, equal_nan=True)


def test_quantize_float_reciprocal_equals_torchao_amax_to_scale_multiply():
    # torchao.float8 (float8_utils.amax_to_scale / to_fp8_saturated): scale = fl32(448 / amax)
    # with the quotient in float64, then (x * scale).clamp(-448, 448).to(float8_e4m3fn).
    # refquant multiplied by fl32(1 / fl32(amax / 448)), one ulp off here: 0.38123959 * it
    # gave code 35 where torchao gives 36.
    torch = import_peer("torch")
    from refquant.quant.floatq import quantize_float

    def torchao(x):
        t = torch.from_numpy(x)
        amax = t.abs().max().to(torch.float64)
        scale = (448.0 / torch.clamp(amax, min=1e-12)).to(torch.float32)
        return (t * scale).clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8).numpy()

    x = np.float32([950.5132446289062, 0.3812395930290222, -0.3812395930290222])
    codes, s = quantize_float(x, "float8_e4m3fn", scale_op="reciprocal")
    assert codes[1] == torchao(x)[1] == 36
    assert s == np.float32(950.5132446289062 / 448)  # the returned scale is still amax / max
    rng = np.random.default_rng(0)
    for _ in range(50):
        x = (rng.standard_normal(64) * 10.0 ** rng.uniform(-3, 3)).astype(np.float32)
        np.testing.assert_array_equal(quantize_float(x, "float8_e4m3fn", scale_op="reciprocal")[0],
                                      torchao(x))
