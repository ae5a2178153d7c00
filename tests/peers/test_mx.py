"""MX quantization against microxcaling's semantics.

microxcaling (microsoft/microxcaling) is not published on PyPI, so its PyTorch
path (``mx/mx_ops.py`` ``_quantize_mx`` with ``custom_cuda=False`` and
``mx/elemwise_ops.py`` ``_quantize_elemwise_core``, ``_round_mantissa``) is
reimplemented below, line for line, on torch float32 tensors.
"""

import numpy as np
import pytest
from helpers import import_peer

from refquant.formats.mx import dequantize_mx, quantize_mx

# microxcaling mx/formats.py _get_format_params: (ebits, mbits incl. sign and implicit bit, emax, max_norm)
PARAMS = {
    "mxfp8_e4m3": (4, 5, 8, 448.0),
    "mxfp8_e5m2": (5, 4, 15, 57344.0),
    "mxfp6_e3m2": (3, 4, 4, 28.0),
    "mxfp6_e2m3": (2, 5, 2, 7.5),
    "mxfp4": (2, 3, 2, 6.0),
    "mxint8": (0, 8, 0, 127 / 64),
}
FP32_MIN_NORMAL = 2.0**-126


def microxcaling_quantize_mx(torch, A, name, round_mode="nearest", block_size=32):
    """_quantize_mx(A, scale_bits=8, elem_format, axes=[-1], block_size, round) for a 1-D A."""
    ebits, mbits, emax, max_norm = PARAMS[name]
    n = A.numel()
    pad = (-n) % block_size
    A = torch.nn.functional.pad(A, (0, pad)).reshape(-1, block_size)
    shared_exp = torch.max(torch.abs(A), dim=1, keepdim=True)[0]
    shared_exp = torch.floor(torch.log2(shared_exp + FP32_MIN_NORMAL * (shared_exp == 0).type(A.dtype)))
    shared_exp = shared_exp - emax
    shared_exp[shared_exp > 127] = float("NaN")
    shared_exp[shared_exp < -127] = -127
    A = A / (2**shared_exp)
    # _quantize_elemwise_core(A, mbits, ebits, max_norm, round, allow_denorm=True, saturate_normals=True)
    out = A
    if ebits != 0:
        private_exp = torch.floor(torch.log2(torch.abs(A) + (A == 0).type(A.dtype)))
        private_exp = private_exp.clip(min=-(2 ** (ebits - 1)) + 2)
        out = out / (2**private_exp) * (2 ** (mbits - 2))
    else:
        private_exp = None
        out = out * (2 ** (mbits - 2))
    if round_mode == "nearest":
        out = torch.sign(out) * torch.floor(torch.abs(out) + 0.5)
    else:  # "even"
        absA = torch.abs(out)
        maskA = ((absA - 0.5) % 2 == torch.zeros_like(out)).type(out.dtype)
        out = torch.sign(out) * (torch.floor(absA + 0.5) - maskA)
    if private_exp is None:
        out = out / (2 ** (mbits - 2))
    else:
        out = out / (2 ** (mbits - 2)) * (2**private_exp)
    out = torch.clamp(out, min=-max_norm, max=max_norm)
    out = out * (2**shared_exp)
    return out.reshape(-1)[:n]


def _data(rng):
    parts = [
        rng.standard_normal(1000),
        rng.standard_normal(330) * np.exp(rng.uniform(-20, 20, 330)),  # blocks of very different scales
        np.zeros(40),  # a zero block and a partial one
        rng.uniform(-1, 1, 77) * 1e-30,
    ]
    return np.concatenate(parts).astype(np.float32)


def _ties(name, rng):
    """Values exactly halfway between element grid neighbours, in blocks whose scale is 1."""
    ebits, mbits, emax, max_norm = PARAMS[name]
    from refquant.formats.mx import MX_FORMATS

    fmt = MX_FORMATS[name]
    if fmt.element == "int8":
        grid = np.arange(0, 128) / 64
    else:
        from refquant.formats.floats import decode

        v = decode(np.arange(1 << (fmt.element_format.bits - 1)), fmt.element_format).astype(np.float64)
        grid = np.unique(v[np.isfinite(v)])
    mids = (grid[:-1] + grid[1:]) / 2
    blocks = []
    for i in range(0, len(mids), 31):  # 2^emax in each block fixes the scale at 2^0
        chunk = mids[i : i + 31] * rng.choice([-1, 1], size=len(mids[i : i + 31]))
        blocks.append(np.concatenate([[2.0**emax], chunk, np.zeros(31 - len(chunk))]))
    return np.concatenate(blocks).astype(np.float32)


@pytest.mark.parametrize("name", sorted(PARAMS))
@pytest.mark.parametrize("round_mode, rounding", [("nearest", "half_away"), ("even", "half_even")])
def test_quantize_mx_equals_microxcaling(name, round_mode, rounding):
    torch = import_peer("torch")
    rng = np.random.default_rng(5)
    for x in (_data(rng), _ties(name, rng)):
        ref = microxcaling_quantize_mx(torch, torch.from_numpy(x), name, round_mode).numpy()
        c, s = quantize_mx(x, name, rounding=rounding)
        got = dequantize_mx(c, s, name)
        bad = np.flatnonzero(got.view(np.uint32) != ref.view(np.uint32))
        bad = bad[~((got[bad] == 0) & (ref[bad] == 0))]  # microxcaling's sign(x) * 0 is +0; refquant keeps -0
        assert bad.size == 0, [(float(x[i]), float(got[i]), float(ref[i])) for i in bad[:5]]


def test_microxcaling_floor_log2_rounds_up_just_below_a_power_of_two():
    # Quirk: log2(2^20 - 1/16) is 20.0 in float32, so microxcaling's shared exponent is
    # one too large and the block loses a bit; refquant reads the exponent from the bits.
    torch = import_peer("torch")
    x = np.zeros(32, np.float32)
    x[0] = np.float32(2.0**20 - 0.0625)
    x[1] = np.float32(3.0)
    ref = microxcaling_quantize_mx(torch, torch.from_numpy(x), "mxint8").numpy()
    c, s = quantize_mx(x, "mxint8", rounding="half_away")
    assert s[0] == 127 + 19
    assert ref[0] == 2.0**20  # scale 2^20: 0.99999994 * 64 rounds to 64, i.e. 1.0 * 2^20
    assert dequantize_mx(c, s, "mxint8")[0] == 127 * 2.0**13


def test_microxcaling_floor_plus_half_rounds_0_49999997_up():
    # Quirk: floor(|x| + 0.5) in float32 turns 0.49999997 into 1 (0.49999997 + 0.5 rounds to 1.0).
    torch = import_peer("torch")
    x = np.zeros(32, np.float32)
    x[0] = 64.0  # mxint8 scale 2^6: element lsb is 1
    x[1] = np.float32(0.49999997)
    ref = microxcaling_quantize_mx(torch, torch.from_numpy(x), "mxint8").numpy()
    c, s = quantize_mx(x, "mxint8", rounding="half_away")
    assert ref[1] == 1.0 and dequantize_mx(c, s, "mxint8")[1] == 0.0


def test_all_zero_mxint8_block_scale_is_2_to_the_minus_127_where_microxcaling_gives_minus_126():
    # microxcaling takes floor(log2(0 + FP32_MIN_NORMAL)) - emax: -126 - 0 for MXINT8 (emax 0),
    # which the clamp at -127 leaves; for the float elements (emax >= 2) it clamps to -127.
    # refquant gives every all-zero block the smallest scale, code 0. The values agree (0).
    torch = import_peer("torch")
    a = torch.zeros(32)
    shared = torch.floor(torch.log2(a.abs().max() + FP32_MIN_NORMAL)) - PARAMS["mxint8"][2]
    assert float(shared) == -126.0
    for name, (_, _, emax, _) in PARAMS.items():
        c, s = quantize_mx(np.zeros(32, np.float32), name)
        assert s.tolist() == [0], name
        assert (dequantize_mx(c, s, name) == 0).all()
        assert max(-126 - emax, -127) == (-126 if name == "mxint8" else -127)
