"""refquant.formats.nvfp4 against compressed-tensors 0.20.0 and torchao 0.18.0 (torch CPU).

compressed-tensors: the observer's amin / amax (what llm-compressor's minmax observer
gives) through ``generate_gparam`` and ``calculate_qparams`` (the NVFP4 preset's
weight args: tensor_group, group 16, e4m3 scales), then
``NVFP4PackedCompressor.compress`` / ``decompress``: the packed bytes, the e4m3 scale
bytes, the global scale and the bfloat16 weights equal refquant's, on drawn float32 /
bfloat16 tensors with exact e2m1 ties, zero blocks, -0.0, an all-zero tensor and tiny
blocks. torchao: ``nvfp4_quantize`` with ``per_tensor_amax_to_scale`` and
``NVFP4Tensor.dequantize``; and the cases where the two peers differ, pinned.
"""

from __future__ import annotations

import functools
import warnings

import ml_dtypes
import numpy as np
import pytest
from helpers import import_peer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refquant import RefquantError
from refquant.formats.nvfp4 import (
    dequantize_nvfp4,
    nvfp4_global_scale,
    pack_nvfp4,
    quantize_nvfp4,
    unpack_nvfp4,
)

pytestmark = pytest.mark.peer

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float32)


@functools.cache
def _ct():
    import_peer("torch")
    warnings.filterwarnings("ignore", message=".*deprecated.*")
    import_peer("compressed_tensors")
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import preset_name_to_scheme
    from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam

    scheme = preset_name_to_scheme("NVFP4", ["Linear"])
    return BaseCompressor.get_value_from_registry("nvfp4-pack-quantized"), scheme, calculate_qparams, \
        generate_gparam


def _t(a):
    import torch

    a = np.ascontiguousarray(a)
    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


def ct_nvfp4(w):
    """compressed-tensors 0.20.0: observer amin/amax -> qparams -> compress -> decompress."""
    comp, scheme, calculate_qparams, generate_gparam = _ct()
    t = _t(w)
    gs = generate_gparam(t.amin(), t.amax())
    g = t.unflatten(-1, (t.shape[-1] // 16, 16))
    s, z = calculate_qparams(g.amin(-1), g.amax(-1), scheme.weights, global_scale=gs)
    out = comp.compress({"weight": t, "weight_scale": s, "weight_global_scale": gs,
                         "weight_zero_point": z}, scheme)
    back = comp.decompress(out, scheme)["weight"]
    return (out["weight_packed"].numpy(), out["weight_scale"].view(__import__("torch").uint8).numpy(),
            out["weight_global_scale"].numpy(), back.float().numpy())


def _tensor(data, dtype, rows, blocks):
    """Values built from e2m1 grid points and midpoints times a power-of-two block scale."""
    n = rows * blocks * 16
    kind = data.draw(st.sampled_from(["grid", "uniform", "mixed"]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    mids = np.concatenate([E2M1, (E2M1[1:] + E2M1[:-1]) / 2])
    if kind == "grid":
        v = rng.choice(mids, n) * rng.choice([-1, 1], n)
        v = v * np.repeat(2.0 ** rng.integers(-8, 8, rows * blocks), 16)
    elif kind == "uniform":
        v = rng.standard_normal(n) * 10.0 ** rng.integers(-6, 4)
    else:
        v = rng.standard_normal(n)
        v[rng.random(n) < 0.3] = 0.0
        v[rng.random(n) < 0.1] = -0.0
    w = v.astype(np.float32).reshape(rows, blocks * 16)
    if data.draw(st.booleans()):
        w[0, :16] = 0.0  # a zero block
    if data.draw(st.booleans()) and rows > 1:
        w[1, :16] = np.float32(1e-30) * rng.standard_normal(16)  # a block whose scale underflows e4m3
    return w.astype(dtype)


@SETTINGS
@given(st.data(), st.sampled_from([np.float32, ml_dtypes.bfloat16]), st.integers(1, 4), st.integers(1, 4))
def test_quantize_dequantize_is_compressed_tensors_nvfp4(data, dtype, rows, blocks):
    w = _tensor(data, dtype, rows, blocks)
    packed, scale_bytes, gs, back = ct_nvfp4(w)
    codes, scales, g = quantize_nvfp4(w)
    assert np.float32(gs[0]).view(np.uint32) == g.view(np.uint32)
    np.testing.assert_array_equal(scales, scale_bytes)
    np.testing.assert_array_equal(pack_nvfp4(codes), packed)
    np.testing.assert_array_equal(unpack_nvfp4(packed, w.shape[1]), codes)
    ours = dequantize_nvfp4(codes, scales, g, dtype="bfloat16")
    np.testing.assert_array_equal(ours.view(np.uint32), back.view(np.uint32))


def test_all_zero_tensor_and_zero_blocks_as_compressed_tensors():
    w = np.zeros((2, 32), np.float32)
    w[1, 16:] = -0.0
    packed, scale_bytes, gs, back = ct_nvfp4(w)
    codes, scales, g = quantize_nvfp4(w)
    assert g == gs[0] == 1.0  # 2688 / tiny overflows: generate_gparam's nan_to_num gives 1
    assert np.all(scale_bytes == 0x20) and np.array_equal(scales, scale_bytes)  # the 0.125 eps
    np.testing.assert_array_equal(pack_nvfp4(codes), packed)
    assert not packed.any()  # -0.0 is code 0 here (torch.sign(-0.0) is 0)
    np.testing.assert_array_equal(dequantize_nvfp4(codes, scales, g), back)


@functools.cache
def _torchao():
    import_peer("torch")
    import_peer("torchao")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchao.prototype.mx_formats import nvfp4_tensor
    return nvfp4_tensor


@SETTINGS
@given(st.data(), st.sampled_from([np.float32, ml_dtypes.bfloat16]), st.integers(1, 4), st.integers(1, 4))
def test_torchao_convention_is_torchao_nvfp4(data, dtype, rows, blocks):
    import torch

    nv = _torchao()
    w = _tensor(data, dtype, rows, blocks)
    t = _t(w)
    pts = nv.per_tensor_amax_to_scale(torch.max(torch.abs(t)))
    assume_nonzero = float(pts) > 0
    if not assume_nonzero:
        return  # torchao divides by a zero per-tensor scale (NaN everywhere); refquant refuses it
    s8, packed = nv.nvfp4_quantize(t, per_tensor_scale=pts)
    codes, scales, g = quantize_nvfp4(w, convention="torchao")
    assert np.float32(pts).view(np.uint32) == g.view(np.uint32)
    np.testing.assert_array_equal(scales, s8.view(torch.uint8).numpy())
    np.testing.assert_array_equal(pack_nvfp4(codes), packed.numpy())
    tens = nv.NVFP4Tensor(packed, s8, 16, t.dtype, per_tensor_scale=pts)
    back = tens.dequantize(torch.float32).numpy()
    np.testing.assert_array_equal(dequantize_nvfp4(codes, scales, g, convention="torchao").view(np.uint32),
                                  back.view(np.uint32))


def test_where_torchao_and_compressed_tensors_differ_pinned():
    import torch

    nv = _torchao()
    w = np.zeros((1, 48), np.float32)
    w[0, 16] = -0.0  # block 1: all zero with a -0.0
    w[0, 32:] = np.linspace(-3, 5, 16, dtype=np.float32)  # block 2: ordinary
    w[0, 1] = np.float32(1e-9)  # block 0: scale below e4m3's smallest subnormal
    c_ct, s_ct, g_ct = quantize_nvfp4(w)
    c_ao, s_ao, g_ao = quantize_nvfp4(w, convention="torchao")
    # zero / underflowing blocks: 0.125 (0x20) in compressed-tensors, 2**-6 (0x08) in torchao
    assert list(s_ct[0, :2]) == [0x20, 0x20] and list(s_ao[0, :2]) == [0x08, 0x08]
    # -0.0: code 0 in compressed-tensors, 8 (negative zero) in torchao
    assert c_ct[0, 16] == 0 and c_ao[0, 16] == 8
    # the global scales are reciprocals; compressed-tensors' 2688 / amax is torch's
    # amax.reciprocal() * 2688, two roundings: 537.60004, not 2688 / 5 = 537.6
    assert g_ct == (np.float32(1) / np.float32(5)) * np.float32(2688) != np.float32(2688) / np.float32(5)
    assert g_ao == np.float32(5) / np.float32(2688)
    assert ct_nvfp4(w)[2][0] == g_ct
    t = _t(w)
    s8, packed = nv.nvfp4_quantize(t, per_tensor_scale=nv.per_tensor_amax_to_scale(t.abs().max()))
    np.testing.assert_array_equal(pack_nvfp4(c_ao), packed.numpy())
    np.testing.assert_array_equal(s_ao, s8.view(torch.uint8).numpy())
    np.testing.assert_array_equal(pack_nvfp4(c_ct), ct_nvfp4(w)[0])


def test_bad_input_is_refused_as_the_peers_refuse_it():
    comp, scheme, *_ = _ct()
    with pytest.raises(RefquantError, match="multiple of 16"):
        quantize_nvfp4(np.ones((2, 24), np.float32))
    import torch

    with pytest.raises(ValueError, match="divisble|divisible"):  # compressed-tensors' own refusal
        comp.compress({"weight": torch.ones(2, 24), "weight_scale": torch.ones(2, 2),
                       "weight_global_scale": torch.ones(1)}, scheme)
    for bad in (np.nan, np.inf, -np.inf):
        w = np.ones((1, 16), np.float32)
        w[0, 3] = bad
        with pytest.raises(RefquantError, match="finite"):
            quantize_nvfp4(w)
        with pytest.raises(RefquantError, match="finite"):
            nvfp4_global_scale(w)
    with pytest.raises(RefquantError, match="convention"):
        quantize_nvfp4(np.ones((1, 16), np.float32), convention="modelopt2")
    with pytest.raises(RefquantError, match="scales"):
        dequantize_nvfp4(np.zeros((1, 16), np.uint8), np.zeros((1, 2), np.uint8), 1.0)
    with pytest.raises(RefquantError, match="4-bit"):
        dequantize_nvfp4(np.full((1, 16), 16, np.uint8), np.zeros((1, 1), np.uint8), 1.0)
    with pytest.raises(RefquantError, match="global_scale"):
        quantize_nvfp4(np.ones((1, 16), np.float32), global_scale=0.0)


MODELOPT = __import__("pathlib").Path(__file__).resolve().parents[1] / "data" / "modelopt" / "nvfp4_0.47.npz"


def test_modelopt_convention_is_modelopts_recorded_nvfp4():
    """NVIDIA ModelOpt 0.47 ``NVFP4QTensor`` (recorded by scripts/record_modelopt_nvfp4.py)."""
    r = np.load(MODELOPT)
    assert "nvidia-modelopt 0.47.0" in list(r["versions"])
    keys = sorted({k.rsplit("_", 1)[0] for k in r.files if k.endswith("_packed")})
    assert len(keys) == 24
    for key in keys:
        w = r[key + "_w"]
        if key.endswith("bfloat16"):
            w = w.view(ml_dtypes.bfloat16)
        codes, scales, g = quantize_nvfp4(w, convention="modelopt")
        assert g.view(np.uint32) == np.float32(r[key + "_scale_2"][0]).view(np.uint32), key
        np.testing.assert_array_equal(scales, r[key + "_scale"], err_msg=key)
        np.testing.assert_array_equal(pack_nvfp4(codes), r[key + "_packed"], err_msg=key)
        back = dequantize_nvfp4(codes, scales, g, convention="modelopt")
        np.testing.assert_array_equal(back.view(np.uint32), r[key + "_back"].view(np.uint32), err_msg=key)
