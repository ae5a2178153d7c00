"""refquant.io.layouts' GPTQ and AWQ layouts against the producers' own code.

* AWQ: AutoAWQ 0.2.9's ``awq/utils/packing_utils.py`` ``dequantize_gemm`` (loaded from
  the installed package by path: ``import awq`` itself needs accelerate and a
  transformers 4 model zoo), on drawn codes, zeros and raw-bit float16 scales; and the
  packing loop of ``awq/modules/linear/gemm.py`` ``WQLinear_GEMM.from_linear``
  (transcribed below: it lives in a module that imports CUDA extensions).
* AWQ GEMV: AutoAWQ 0.2.9's ``awq/modules/linear/gemv.py`` ``WQLinear_GEMV.from_linear``
  itself, loaded by path with ``awq.utils.module`` (``try_import``) loaded beside it
  (its CUDA extension import fails softly on CPU): the qweight / qzeros / scales it
  packs from a float layer equal refquant's writer; refquant's dequantization of them
  gives the layer's weights back.
* GPTQ: AutoGPTQ's ``QuantLinear.pack`` (``auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py``,
  the 2/4/8-bit and the 3-bit word loops) transcribed, and the torch dequantization of
  ``qlinear_cuda.py`` / GPTQModel ``PackableQuantLinear.dequantize_weight``
  (``scales[g_idx] * (weight - zeros[g_idx])`` on float16 tensors) run in torch on
  refquant's unpacked codes. AutoGPTQ and GPTQModel build CUDA extensions at install,
  so neither installs here.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from helpers import import_peer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import refquant.io as rio
from refquant import RefquantError
from refquant.io.layouts import unpack_bitstream
from refquant.io.layouts.gptq import awq_gemv_tensors, awq_tensors, gptq_tensors

pytestmark = pytest.mark.peer

SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@functools.cache
def _packing_utils():
    import_peer("torch")
    spec = importlib.util.find_spec("awq")
    if spec is None or spec.origin is None:
        import_peer("awq")  # skips (or fails under REFQUANT_REQUIRE_PEERS=1)
    path = Path(spec.origin).parent / "utils" / "packing_utils.py"
    mod_spec = importlib.util.spec_from_file_location("_awq_packing_utils", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def _raw_f16(draw, shape):
    n = int(np.prod(shape))
    raw = draw(st.lists(st.integers(0, 0xFFFF), min_size=n, max_size=n))
    a = np.array(raw, np.uint16).view(np.float16).reshape(shape)
    if draw(st.booleans()):
        with np.errstate(invalid="ignore"):
            a = np.nan_to_num(np.abs(a.astype(np.float32)) % 1, nan=0.25).astype(np.float16)
    return a


def _awq_from_linear_pack(intweight):
    """AutoAWQ ``WQLinear_GEMM.from_linear``: column ``col`` of qweight ORs code
    ``intweight[:, col * 8 + order_map[i]] << (4 * i)`` for i in 0..7,
    ``order_map = [0, 2, 4, 6, 1, 3, 5, 7]`` (intweight is (in, out))."""
    order_map = [0, 2, 4, 6, 1, 3, 5, 7]
    out = np.zeros((intweight.shape[0], intweight.shape[1] // 8), np.uint32)
    for col in range(out.shape[1]):
        for i in range(8):
            out[:, col] |= intweight[:, col * 8 + order_map[i]].astype(np.uint32) << np.uint32(4 * i)
    return out.view(np.int32)


@SETTINGS
@given(st.data(), st.sampled_from([(16, 64, 32), (8, 128, 128), (24, 64, 64)]))
def test_awq_dequantize_gemm_matches_refquant(tmp_path_factory, data, dims):
    import torch

    pu = _packing_utils()
    n, k, gs = dims
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    q = rng.integers(0, 16, (n, k))
    z = rng.integers(0, 16, (n, k // gs))
    s = _raw_f16(data.draw, (n, k // gs))
    t = awq_tensors("m.l", q, s, z)
    np.testing.assert_array_equal(t["m.l.qweight"], _awq_from_linear_pack(q.T))
    np.testing.assert_array_equal(t["m.l.qzeros"], _awq_from_linear_pack(z.T))
    folder = tmp_path_factory.mktemp("awq")
    rio.save(t, folder, layout="awq", group_size=gs, overwrite=True)
    with rio.open(folder) as ck:
        ours = ck.dequantize("m.l.weight")
    theirs = pu.dequantize_gemm(torch.from_numpy(t["m.l.qweight"]), torch.from_numpy(t["m.l.qzeros"]),
                                torch.from_numpy(t["m.l.scales"]), 4, gs)
    assert theirs.dtype == torch.float16
    np.testing.assert_array_equal(theirs.float().numpy().T, ours)


def _autogptq_pack_rows(intweight, bits):
    """AutoGPTQ ``QuantLinear.pack``'s qweight loop over rows of ``intweight`` (in, out) uint32:
    2/4/8 bits OR ``32 // bits`` rows into one word; 3 bits spread 32 rows over 3 words
    (rows 0-9 at 3j, row 10 split 2|1 bits across words 0/1, rows 11-20 at 3j + 1,
    row 21 split 1|2 across words 1/2, rows 22-31 at 3j + 2)."""
    w = intweight.astype(np.uint32)
    out = np.zeros((w.shape[0] // 32 * bits, w.shape[1]), np.uint32)
    i = row = 0
    while row < out.shape[0]:
        if bits in (2, 4, 8):
            for j in range(i, i + 32 // bits):
                out[row] |= w[j] << np.uint32(bits * (j - i))
            i += 32 // bits
            row += 1
        else:
            for j in range(i, i + 10):
                out[row] |= w[j] << np.uint32(3 * (j - i))
            i += 10
            out[row] |= w[i] << np.uint32(30)
            row += 1
            out[row] |= (w[i] >> np.uint32(2)) & np.uint32(1)
            i += 1
            for j in range(i, i + 10):
                out[row] |= w[j] << np.uint32(3 * (j - i) + 1)
            i += 10
            out[row] |= w[i] << np.uint32(31)
            row += 1
            out[row] |= (w[i] >> np.uint32(1)) & np.uint32(3)
            i += 1
            for j in range(i, i + 10):
                out[row] |= w[j] << np.uint32(3 * (j - i) + 2)
            i += 10
            row += 1
    return out.view(np.int32)


@SETTINGS
@given(st.data(), st.sampled_from([2, 3, 4, 8]), st.booleans(), st.booleans())
def test_gptq_packing_and_float16_dequantization_match_autogptq(tmp_path_factory, data, bits, v1,
                                                                 act_order):
    torch = import_peer("torch")
    n, k, gs = 64, 128, 32
    G = k // gs
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    q = rng.integers(0, 1 << bits, (n, k))
    z = rng.integers(1 if v1 else 0, 1 << bits, (n, G))
    s = _raw_f16(data.draw, (n, G))
    g_idx = rng.permutation(np.arange(k) // gs) if act_order else np.arange(k) // gs
    t = gptq_tensors("m.l", q, s, z, bits, g_idx=g_idx, v1=v1)
    np.testing.assert_array_equal(t["m.l.qweight"], _autogptq_pack_rows(q.T, bits))
    stored_z = (z - 1) if v1 else z
    # qzeros: the same loop along the output (zeros (out, G) packed over out, transposed)
    np.testing.assert_array_equal(t["m.l.qzeros"], _autogptq_pack_rows(stored_z, bits).T)
    folder = tmp_path_factory.mktemp("gptq")
    rio.save(t, folder, layout="gptq" if v1 else "gptq_v2", bits=bits, group_size=gs,
             desc_act=act_order, overwrite=True)
    with rio.open(folder) as ck:
        ours = ck.dequantize("m.l.weight")
    # qlinear_cuda.py / GPTQModel dequantize_weight in torch: int8 (int16 for 8 bits)
    # codes and zeros, zeros + 1 in v1, then float16 scales[g_idx] * (weight - zeros[g_idx])
    idt = torch.int16 if bits == 8 else torch.int8
    weight = torch.from_numpy(unpack_bitstream(t["m.l.qweight"].T, bits, k).T.astype(np.int16)).to(idt)
    zeros = torch.from_numpy(unpack_bitstream(t["m.l.qzeros"], bits, n).astype(np.int16)).to(idt)
    if v1:
        zeros = zeros + 1
    gi = torch.from_numpy(t["m.l.g_idx"]).long()
    scales = torch.from_numpy(t["m.l.scales"])
    theirs = scales[gi] * (weight - zeros[gi])
    assert theirs.dtype == torch.float16
    np.testing.assert_array_equal(theirs.float().numpy().T, ours)


@functools.cache
def _gemv_module():
    import sys
    import types

    import_peer("torch")
    spec = importlib.util.find_spec("awq")
    if spec is None or spec.origin is None:
        import_peer("awq")
    root = Path(spec.origin).parent
    saved = {k: sys.modules.get(k) for k in ("awq", "awq.utils", "awq.utils.module")}
    try:  # gemv.py needs only awq.utils.module.try_import; `import awq` itself needs accelerate
        sys.modules["awq"] = types.ModuleType("awq")
        sys.modules["awq.utils"] = types.ModuleType("awq.utils")
        ms = importlib.util.spec_from_file_location("awq.utils.module", root / "utils" / "module.py")
        mod = importlib.util.module_from_spec(ms)
        ms.loader.exec_module(mod)
        sys.modules["awq.utils.module"] = mod
        gs = importlib.util.spec_from_file_location("_awq_gemv", root / "modules" / "linear" / "gemv.py")
        gemv = importlib.util.module_from_spec(gs)
        gs.loader.exec_module(gemv)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return gemv


@SETTINGS
@given(st.data(), st.sampled_from([(16, 64, 32), (8, 128, 64), (8, 256, 128), (16, 512, 256), (8, 96, 32)]))
def test_awq_gemv_is_autoawqs_from_linear(tmp_path_factory, data, dims):
    import torch

    gemv = _gemv_module()
    n, k, gs = dims
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    q = rng.integers(0, 16, (n, k))
    z = rng.integers(0, 16, (n, k // gs))
    s = (2.0 ** rng.integers(-10, 3, (n, k // gs))).astype(np.float16)  # (w + z s) / s is exact
    w = ((q - np.repeat(z, gs, 1)) * np.repeat(s.astype(np.float64), gs, 1)).astype(np.float32)
    lin = torch.nn.Linear(k, n, bias=False)
    lin.weight.data = torch.from_numpy(w)
    theirs = gemv.WQLinear_GEMV.from_linear(lin, 4, gs, scales=torch.from_numpy(s),
                                            zeros=torch.from_numpy(z))
    t = awq_gemv_tensors("m.l", q, s, z)
    np.testing.assert_array_equal(t["m.l.qweight"], theirs.qweight.numpy())
    np.testing.assert_array_equal(t["m.l.qzeros"], theirs.qzeros.numpy())
    np.testing.assert_array_equal(t["m.l.scales"], theirs.scales.numpy())
    folder = tmp_path_factory.mktemp("gemv")
    rio.save(t, folder, layout="awq-gemv", group_size=gs, overwrite=True)
    with rio.open(folder) as ck:
        sch = ck.scheme("m.l.weight")
        assert (sch.format, sch.group_size, sch.shape) == ("awq-gemv", gs, (n, k))
        np.testing.assert_array_equal(ck.dequantize("m.l.weight"), w)


def test_awq_gemv_parts_that_disagree_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    t = awq_gemv_tensors("m.l", rng.integers(0, 16, (8, 128)), np.ones((8, 2), np.float16),
                         rng.integers(0, 16, (8, 2)))
    bad = dict(t, **{"m.l.scales": t["m.l.scales"][:, :2]})
    with pytest.raises(RefquantError, match=r"m\.l\.scales.*shape \(8, 2\); expected \(8, 16\)"):
        rio.save(bad, tmp_path / "a", layout="awq-gemv", group_size=64)
    with pytest.raises(RefquantError, match="group_size 48"):
        rio.save(t, tmp_path / "b", layout="awq-gemv", group_size=48)
    with pytest.raises(RefquantError, match="32, 64 or >= 128"):
        awq_gemv_tensors("m.l", np.zeros((2, 32), int), np.ones((2, 2), np.float16), np.zeros((2, 2), int))
    rio.save(t, tmp_path / "c", layout="awq-gemv", group_size=64)
    (tmp_path / "c" / "config.json").unlink()
    with rio.open(tmp_path / "c" / "model.safetensors") as ck:  # by tensors: 1 zero word fits 64 only
        assert ck.scheme("m.l.weight").group_size == 64
