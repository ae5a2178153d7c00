"""compressed-tensors' float formats in refquant.io.layouts against compressed-tensors 0.20.0.

``nvfp4-pack-quantized``, ``mxfp4-pack-quantized``, ``mxfp6-pack-quantized`` and
``mxfp8-quantized``: every element code and every scale byte (NaN, Inf-making E8M0
255, subnormals) drawn, written by ``refquant.io.save(..., layout=NAME)``, read back
by ``ck.dequantize`` and by the format's own ``decompress``: the same bfloat16 values.
The compressors' ``compress`` of those values with those scales gives refquant's
bytes; NVFP4 quantized from float weights (``quantize_nvfp4``) gives the
compressor's tensors from llm-compressor's qparams. transformers 5.23 loads a
refquant-written tiny Llama in each format (``CompressedTensorsConfig(dequantize=True)``)
to refquant's weights.
"""

from __future__ import annotations

import functools
import json
import warnings

import ml_dtypes
import numpy as np
import pytest
from helpers import import_peer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import refquant.io as rio
from refquant import RefquantError
from refquant.formats.nvfp4 import quantize_nvfp4
from refquant.io.layouts.ctensors import CT_FLOAT_FORMATS, ct_fp_tensors, pack_fp6, unpack_fp6

pytestmark = pytest.mark.peer

SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
FORMATS = sorted(CT_FLOAT_FORMATS)
PRESET = {"nvfp4-pack-quantized": "NVFP4A16", "mxfp4-pack-quantized": "MXFP4A16",
          "mxfp6-pack-quantized": "MXFP6A16", "mxfp8-quantized": "MXFP8A16"}
NEG_ZERO = {4: 0x8, 6: 0x20, 8: 0x80}


@functools.cache
def _ct():
    import_peer("torch")
    warnings.filterwarnings("ignore", message=".*deprecated.*")
    import_peer("compressed_tensors")
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import preset_name_to_scheme

    return BaseCompressor, preset_name_to_scheme


def _comp(fmt):
    base, preset = _ct()
    return base.get_value_from_registry(fmt), preset(PRESET[fmt], ["Linear"])


def _t(a):
    import torch

    a = np.ascontiguousarray(a)
    if a.dtype == ml_dtypes.float8_e4m3fn:
        return torch.from_numpy(a.view(np.uint8).copy()).view(torch.float8_e4m3fn)
    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


def _np(t):
    import torch

    if t.dtype == torch.float8_e4m3fn:
        return t.view(torch.uint8).numpy().view(ml_dtypes.float8_e4m3fn)
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _same(theirs_bf16, ours_f32):
    theirs = theirs_bf16.astype(np.float32)
    np.testing.assert_array_equal(np.isnan(theirs), np.isnan(ours_f32))
    ok = ~np.isnan(theirs)
    np.testing.assert_array_equal(theirs[ok].view(np.uint32), ours_f32[ok].view(np.uint32))


def _codes(rng, fmt, shape, finite=False):
    bits = CT_FLOAT_FORMATS[fmt][0]
    c = rng.integers(0, 1 << bits, shape).astype(np.uint8)
    if finite and bits == 8:
        c[(c & 0x7F) == 0x7F] = 0x3C  # e4m3 NaN -> 1.5
    return c


@SETTINGS
@given(st.sampled_from(FORMATS), st.integers(1, 5), st.integers(1, 3), st.booleans(),
       st.randoms(use_true_random=False))
def test_decompress_matches_dequantize_on_any_bytes(tmp_path_factory, fmt, n, groups, wild, rnd):
    comp, scheme = _comp(fmt)
    gs = CT_FLOAT_FORMATS[fmt][1]
    rng = np.random.default_rng(rnd.getrandbits(32))
    c = _codes(rng, fmt, (n, groups * gs))
    if fmt == "nvfp4-pack-quantized":
        s = rng.integers(0, 256, (n, groups)).astype(np.uint8)  # every e4m3 byte, NaN included
        g = np.float32(rng.choice([1.0, 448 * 6 / 3.7, 1e-3, 3e38, 1e-38])) if wild \
            else np.float32(rng.uniform(1, 5000))
    else:
        s = (rng.integers(0, 256, (n, groups)) if wild else rng.integers(100, 150, (n, groups))).astype(np.uint8)
        g = None
    t = ct_fp_tensors("m.l", c, s, fmt, g)
    folder = tmp_path_factory.mktemp("ctf")
    rio.save(t, folder, layout=fmt, overwrite=True)
    with rio.open(folder) as ck:
        assert ck.scheme("m.l.weight").format == fmt
        ours = ck.dequantize("m.l.weight")
    sd = {k.split(".")[-1]: _t(v) for k, v in t.items()}
    with np.errstate(all="ignore"):
        theirs = comp.decompress(sd, scheme)["weight"]
    assert str(theirs.dtype) == "torch.bfloat16"
    _same(_np(theirs), ours)


@SETTINGS
@given(st.sampled_from(FORMATS), st.integers(1, 4), st.integers(1, 3), st.randoms(use_true_random=False))
def test_compress_of_the_dequantized_values_gives_refquants_bytes(fmt, n, groups, rnd):
    comp, scheme = _comp(fmt)
    bits, gs = CT_FLOAT_FORMATS[fmt][:2]
    rng = np.random.default_rng(rnd.getrandbits(32))
    c = _codes(rng, fmt, (n, groups * gs), finite=True)
    c[c == NEG_ZERO[bits]] = 0  # -0.0 compresses to code 0 (cast_to_fp4 multiplies by torch.sign)
    if fmt == "nvfp4-pack-quantized":
        s = rng.integers(0x08, 0x7F, (n, groups)).astype(np.uint8)  # normal e4m3 scales
        g = np.float32(rng.uniform(1, 3000))
    else:
        s, g = rng.integers(110, 140, (n, groups)).astype(np.uint8), None
    t = ct_fp_tensors("m.l", c, s, fmt, g)
    sd = {k.split(".")[-1]: _t(v) for k, v in t.items()}
    dec = comp.decompress(sd, scheme)
    w, scale = dec["weight"], dec["weight_scale"].data
    if fmt == "nvfp4-pack-quantized":
        scale = sd["weight_scale"].float()  # the float scale the observer produced
    again = comp.compress({"weight": w.float(), "weight_scale": scale.float(),
                           **({"weight_global_scale": sd["weight_global_scale"]} if g is not None else {})},
                          scheme)
    for k, v in t.items():
        theirs = _np(again[k.split(".")[-1]])
        np.testing.assert_array_equal(theirs.view(np.uint8) if theirs.dtype.itemsize == 1 else theirs,
                                      v.view(np.uint8) if v.dtype.itemsize == 1 else v, err_msg=k)


def test_nvfp4_quantized_by_refquant_is_llm_compressors_checkpoint(tmp_path):
    comp, scheme = _comp("nvfp4-pack-quantized")
    from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam

    w = np.random.default_rng(3).standard_normal((6, 64)).astype(np.float32)
    w[2, 16:32] = 0
    tw = _t(w)
    gsc = generate_gparam(tw.amin(), tw.amax())
    grp = tw.unflatten(-1, (4, 16))
    s, _ = calculate_qparams(grp.amin(-1), grp.amax(-1), scheme.weights, global_scale=gsc)
    theirs = comp.compress({"weight": tw, "weight_scale": s, "weight_global_scale": gsc}, scheme)
    c, sc, g = quantize_nvfp4(w)
    ours = ct_fp_tensors("m.l", c, sc, "nvfp4-pack-quantized", g)
    for k, v in ours.items():
        np.testing.assert_array_equal(_np(theirs[k.split(".")[-1]]).view(v.dtype), v, err_msg=k)


def test_fp6_packing_is_compressed_tensors():
    _ct()
    import torch
    from compressed_tensors.compressors.mxfp6.helpers import (
        kE2M3ToFloat,
        pack_fp6_to_uint8,
        unpack_fp6_from_uint8,
    )

    codes = np.arange(64, dtype=np.uint8).reshape(4, 16)
    vals = kE2M3ToFloat[torch.from_numpy(codes & 0x1F).long()]
    vals = torch.where(torch.from_numpy(codes & 0x20 != 0), -vals, vals)
    packed = pack_fp6_to_uint8(vals).numpy()
    np.testing.assert_array_equal(pack_fp6(codes), packed)
    np.testing.assert_array_equal(unpack_fp6(packed, 16), codes)
    back = unpack_fp6_from_uint8(torch.from_numpy(packed), 4, 16, dtype=torch.float32).numpy()
    from refquant.formats.floats import decode

    np.testing.assert_array_equal(back, decode(codes, "float6_e2m3fn"))


def test_parts_that_disagree_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    c = _codes(rng, "nvfp4-pack-quantized", (4, 32))
    t = ct_fp_tensors("m.l", c, np.full((4, 2), 0x38, np.uint8), "nvfp4-pack-quantized", 10.0)
    bad = dict(t)
    bad["m.l.weight_scale"] = t["m.l.weight_scale"][:, :1]
    with pytest.raises(RefquantError, match=r"m\.l\.weight_scale.*shape \(4, 1\); expected \(4, 2\)"):
        rio.save(bad, tmp_path / "a", layout="nvfp4-pack-quantized")
    bad = dict(t)
    del bad["m.l.weight_global_scale"]
    with pytest.raises(RefquantError, match="weight_global_scale"):
        rio.save(bad, tmp_path / "b", layout="nvfp4-pack-quantized")
    with pytest.raises(RefquantError, match="uint8 E8M0|E8M0"):  # e4m3 scales under an mx config
        rio.save(t, tmp_path / "c", layout="mxfp4-pack-quantized")
    t6 = ct_fp_tensors("m.l", _codes(rng, "mxfp6-pack-quantized", (2, 32)), np.full((2, 1), 127, np.uint8),
                       "mxfp6-pack-quantized")
    t6["m.l.weight_packed"] = t6["m.l.weight_packed"][:, :23]
    with pytest.raises(RefquantError, match="multiple of 3"):
        rio.save(t6, tmp_path / "d", layout="mxfp6-pack-quantized")
    rio.save(ct_fp_tensors("m.l", _codes(rng, "mxfp4-pack-quantized", (2, 32)),
                           np.full((2, 1), 127, np.uint8), "mxfp4-pack-quantized"),
             tmp_path / "e", layout="mxfp4-pack-quantized")
    cfgd = tmp_path / "e"
    cfg = json.loads((cfgd / "config.json").read_text())
    cfg["quantization_config"]["config_groups"]["group_0"]["weights"]["group_size"] = 16
    (cfgd / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RefquantError, match=r"m\.l\.weight.*group_size 16"):
        with rio.open(cfgd) as ck:
            ck.dequantize("m.l.weight")


@pytest.mark.parametrize("fmt", FORMATS)
def test_transformers_loads_a_refquant_float_format_llama(tmp_path, fmt):
    _ct()
    transformers = import_peer("transformers")
    import torch

    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    model = transformers.LlamaForCausalLM(cfg)
    rng = np.random.default_rng(11)
    t = {}
    for name, v in model.state_dict().items():
        if name.startswith("model.layers") and name.endswith("proj.weight"):
            w = v.float().numpy()
            n, k = w.shape
            gs = CT_FLOAT_FORMATS[fmt][1]
            if fmt == "nvfp4-pack-quantized":
                c, s, g = quantize_nvfp4(w)
                t.update(ct_fp_tensors(name[: -len(".weight")], c, s, fmt, g))
            else:
                t.update(ct_fp_tensors(name[: -len(".weight")], _codes(rng, fmt, (n, k), finite=True),
                                       rng.integers(118, 128, (n, k // gs)).astype(np.uint8), fmt))
        else:
            t[name] = v.float().numpy().astype(ml_dtypes.bfloat16)
    rio.save(t, tmp_path / "m", layout=fmt, config=json.loads(cfg.to_json_string()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = transformers.AutoModelForCausalLM.from_pretrained(
            tmp_path / "m", quantization_config=transformers.CompressedTensorsConfig(dequantize=True),
            dtype=torch.float32)
    sd = loaded.state_dict()
    with rio.open(tmp_path / "m") as ck:
        names = [n for n in ck.logical_names() if ck.scheme(n) is not None]
        assert len(names) == 7
        for name in names:
            np.testing.assert_array_equal(sd[name].float().numpy(), ck.dequantize(name), err_msg=name)


@SETTINGS
@given(st.sampled_from(FORMATS), st.sampled_from(["float32", "bfloat16"]), st.integers(1, 4),
       st.integers(1, 3), st.sampled_from(["normal", "grid", "wide"]), st.randoms(use_true_random=False))
def test_ct_fp_quantize_is_llm_compressors_qparams_and_compress(fmt, dt, n, groups, kind, rnd):
    """observer amin / amax -> calculate_qparams (MX: generate_mx_scales; NVFP4 with
    generate_gparam) -> the format's compress: refquant's ct_fp_quantize gives its tensors."""
    comp, scheme = _comp(fmt)
    from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam

    from refquant.io.layouts.ctensors import ct_fp_quantize

    gs = CT_FLOAT_FORMATS[fmt][1]
    rng = np.random.default_rng(rnd.getrandbits(32))
    k = groups * gs
    if kind == "normal":
        w = rng.standard_normal((n, k)) * 10.0 ** rng.integers(-5, 4)
    elif kind == "grid":  # amax at and around the power-of-two rounding threshold, ties
        w = rng.choice([0, 0.5, 1, 1.5, 1.75, 1.875, 2, 3, 3.5, 4, 6, 7, 7.5], (n, k)) \
            * rng.choice([-1, 1], (n, k)) * 2.0 ** rng.integers(-20, 20)
    else:
        w = rng.standard_normal((n, k)) * 10.0 ** rng.integers(-30, 30, (n, 1))
    w = w.astype(np.float32)
    w[0, :gs] = 0.0
    if n > 1:
        w[1, 0] = -0.0
    w = w.astype(ml_dtypes.bfloat16 if dt == "bfloat16" else np.float32)
    t = _t(w)
    grp = t.unflatten(-1, (groups, gs))
    gsc = generate_gparam(t.amin(), t.amax()) if fmt == "nvfp4-pack-quantized" else None
    s, _ = calculate_qparams(grp.amin(-1), grp.amax(-1), scheme.weights, global_scale=gsc)
    sd = {"weight": t, "weight_scale": s}
    if gsc is not None:
        sd["weight_global_scale"] = gsc
    theirs = comp.compress(sd, scheme)
    ours = ct_fp_quantize("m.l", w, fmt)
    for key, v in ours.items():
        got = _np(theirs[key.split(".")[-1]])
        np.testing.assert_array_equal(got.view(np.uint8) if got.dtype.itemsize == 1 else got,
                                      v.view(np.uint8) if v.dtype.itemsize == 1 else v, err_msg=key)
