"""compat.bnb against bitsandbytes itself (CPU: its 4-bit path is the pure-PyTorch default backend)."""

import numpy as np
import pytest
from helpers import import_peer

from refquant.compat import bnb
from refquant.formats.codebook import midpoint_thresholds


@pytest.fixture(scope="module")
def F():
    import_peer("bitsandbytes")
    import bitsandbytes.functional as functional
    import torch._dynamo

    # bitsandbytes wraps its default-backend kernels in torch.compile, which recompiles per
    # shape (tens of seconds here); eager mode computes the same values
    old = torch._dynamo.config.disable
    torch._dynamo.config.disable = True
    yield functional
    torch._dynamo.config.disable = old


def default_dequantize_4bit(q, st):
    """bitsandbytes' default (pure-PyTorch) backend dequantizer, called directly."""
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
    from bitsandbytes.backends.utils import _get_4bit_code

    code = _get_4bit_code(st.quant_type, q.device)
    import torch

    out = _dequantize_4bit_compute(q.reshape(-1), st.absmax, code, st.blocksize, st.shape, st.dtype)
    return out.numpy() if out.element_size() == 4 else out.view(torch.int16).numpy()  # 16-bit: the bits


@pytest.fixture(scope="module")
def torch():
    return import_peer("torch")


def test_tables_equal_bitsandbytes_bit_for_bit(F):
    for qt in ("nf4", "fp4"):
        ref = F.get_4bit_type(qt, device="cpu").numpy()
        assert np.array_equal(bnb.get_4bit_type(qt).view(np.uint32), ref.view(np.uint32))
    for kw in ({}, {"signed": False}, {"max_exponent_bits": 5}, {"max_exponent_bits": 3, "total_bits": 4}):
        ref = F.create_dynamic_map(**kw).numpy()
        assert np.array_equal(bnb.create_dynamic_map(**kw).view(np.uint32), ref.view(np.uint32)), kw


def _inputs(rng):
    """Shapes with partial blocks and odd sizes, zero blocks, and the exact midpoint ties."""
    out = [rng.standard_normal((3, 70)), rng.standard_normal((129,)), rng.standard_normal((2, 3, 11)) * 1e-3]
    z = rng.standard_normal(200)
    z[64:128] = 0  # an all-zero full block
    out.append(z)
    z2 = rng.standard_normal(70)
    z2[64:] = 0  # an all-zero partial block
    out.append(z2)
    for qt in ("nf4", "fp4"):
        t, _ = midpoint_thresholds(bnb.get_4bit_type(qt))
        ties = np.concatenate([[1.0], t, -t, np.nextafter(t, np.float32(2)), np.nextafter(t, np.float32(-2))])
        out.append(ties)  # absmax 1 -> scaled values are exactly these
    return [np.asarray(a, np.float32) for a in out]


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("blocksize", [32, 64, 256, 4096])
def test_quantize_4bit_bit_for_bit(F, torch, quant_type, blocksize):
    rng = np.random.default_rng(blocksize)
    for A in _inputs(rng):
        q, st = F.quantize_4bit(torch.from_numpy(A), blocksize=blocksize, quant_type=quant_type)
        mq, ms = bnb.quantize_4bit(A, blocksize=blocksize, quant_type=quant_type)
        bad = np.flatnonzero(q.numpy().ravel() != mq.ravel())
        assert bad.size == 0, (A.shape, bad[:5], q.numpy().ravel()[bad[:5]], mq.ravel()[bad[:5]])
        assert q.shape == mq.shape
        assert np.array_equal(st.absmax.numpy().view(np.uint32), ms["absmax"].view(np.uint32))
        md = bnb.dequantize_4bit(mq, ms)
        d = default_dequantize_4bit(q, st)
        assert np.array_equal(d.view(np.uint32), md.view(np.uint32))
        if A.shape[-1] % 2 or A.shape[-1] % blocksize == 0:
            # the native CPU dequantizer (see the next test) returns shape (1, n) for 1-D input
            assert np.array_equal(F.dequantize_4bit(q, st).numpy().reshape(md.shape), md)


def test_native_cpu_dequantize_4bit_misplaces_blocks_when_rows_are_not_whole_blocks(F, torch):
    # bitsandbytes' libbitsandbytes_cpu dequantizer (even last dim, AVX-512) scales element
    # 128 of a (4, 96) tensor with blocksize 64 by absmax[1] instead of absmax[2];
    # its own default backend and refquant use absmax[2].
    rng = np.random.default_rng(3)
    A = rng.standard_normal((4, 96)).astype(np.float32)
    q, st = F.quantize_4bit(torch.from_numpy(A), blocksize=64, quant_type="nf4")
    mq, ms = bnb.quantize_4bit(A, blocksize=64, quant_type="nf4")
    md = bnb.dequantize_4bit(mq, ms)
    assert np.array_equal(md, default_dequantize_4bit(q, st))
    native = F.dequantize_4bit(q, st).numpy()
    if np.array_equal(native, md):
        pytest.skip("this bitsandbytes build's CPU dequantizer places blocks correctly")
    flat_q = bnb.get_4bit_type("nf4")[np.asarray(
        [(b >> 4, b & 15) for b in mq.ravel()]).ravel()]
    assert native.ravel()[128] == flat_q[128] * ms["absmax"][1]
    assert md.ravel()[128] == flat_q[128] * ms["absmax"][2]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_quantize_4bit_half_inputs(F, torch, dtype):
    rng = np.random.default_rng(3)
    A = rng.standard_normal((4, 96)).astype(np.float32)
    tA = torch.from_numpy(A).to(getattr(torch, dtype))
    q, st = F.quantize_4bit(tA, blocksize=64, quant_type="nf4")
    st_shape = st.shape
    a_np = tA.float().numpy().astype(np.float16) if dtype == "float16" else tA.view(torch.int16).numpy()
    if dtype == "bfloat16":
        import ml_dtypes

        a_np = a_np.view(ml_dtypes.bfloat16)
    mq, ms = bnb.quantize_4bit(a_np, blocksize=64, quant_type="nf4")
    assert np.array_equal(q.numpy(), mq)
    assert st_shape == ms["shape"] and np.array_equal(st.absmax.numpy(), ms["absmax"])
    d = default_dequantize_4bit(q, st)
    md = bnb.dequantize_4bit(mq, ms)
    assert str(md.dtype) == dtype
    assert np.array_equal(d, md.view(np.int16))


def _default_backend_quantize_blockwise(torch, A, code, blocksize):
    """bitsandbytes backends/default/ops.py quantize_blockwise, as published (reimplemented)."""
    A_flat = A.reshape(-1).float()
    n = A_flat.numel()
    rem = n % blocksize
    full = n - rem
    blocks = full // blocksize
    A_com = A_flat[:full].reshape(blocks, blocksize)
    absmax = A_com.abs().max(dim=-1)[0]
    scaled = torch.clamp(A_com * (1.0 / absmax.clamp(min=1e-38).view(-1, 1)), -1, 1).reshape(-1)
    if rem:
        am = A_flat[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, am.unsqueeze(0)])
        scaled = torch.cat([scaled, torch.clamp(A_flat[full:] / am, -1, 1)])
    bounds = (code[:-1] + code[1:]) / 2
    q = torch.bucketize(scaled, bounds, out_int32=True).to(torch.uint8)
    return q.reshape(A.shape), absmax


@pytest.mark.parametrize("blocksize", [64, 256, 4096])
def test_quantize_blockwise_equals_the_default_backend(F, torch, blocksize):
    rng = np.random.default_rng(blocksize)
    code = F.create_dynamic_map()
    A = rng.standard_normal(9000).astype(np.float32)
    A[:64] = 0
    mids = ((code[:-1] + code[1:]) / 2).numpy()
    A[100:355] = np.where(np.arange(255) % 2, mids, -mids)[:255]  # ties, scaled by that block's absmax
    A[99] = 1.0
    q, am = _default_backend_quantize_blockwise(torch, torch.from_numpy(A), code, blocksize)
    mq, ms = bnb.quantize_blockwise(A, blocksize=blocksize)
    assert np.array_equal(q.numpy(), mq)
    assert np.array_equal(am.numpy(), ms["absmax"])


def test_quantize_blockwise_vs_native_cpu_library_is_at_most_one_code_and_never_farther(F, torch):
    rng = np.random.default_rng(7)
    A = rng.standard_normal(50_000).astype(np.float32)
    q, st = F.quantize_blockwise(torch.from_numpy(A), blocksize=256)
    mq, ms = bnb.quantize_blockwise(A, blocksize=256)
    assert np.array_equal(st.absmax.numpy(), ms["absmax"])
    qn = q.numpy().astype(int)
    diff = qn - mq.astype(int)
    assert np.abs(diff).max() <= 1
    assert (diff != 0).mean() < 0.005  # measured 0.15 %: bitsandbytes' approximate binary search
    code = ms["code"].astype(np.float64)
    s = A.astype(np.float64) / np.repeat(ms["absmax"], 256)[: A.size]
    ours, theirs = np.abs(s - code[mq]), np.abs(s - code[qn])
    assert np.all(ours <= theirs + 1e-7)
    same = diff == 0
    d = bnb.dequantize_blockwise(mq, ms)
    assert np.array_equal(d[same], F.dequantize_blockwise(q, st).numpy()[same])


def test_double_quantization_against_bitsandbytes(F, torch):
    rng = np.random.default_rng(11)
    A = rng.standard_normal((300, 64)).astype(np.float32)
    q, st = F.quantize_4bit(torch.from_numpy(A), blocksize=64, quant_type="nf4", compress_statistics=True)
    mq, ms = bnb.quantize_4bit(A, blocksize=64, quant_type="nf4", compress_statistics=True)
    assert np.array_equal(q.numpy(), mq)
    # torch's float32 mean sums in its own order: within a few ulp of the float64 mean
    assert abs(float(st.offset) - float(ms["offset"])) <= 4 * np.spacing(np.float32(ms["offset"]))
    assert np.array_equal(st.state2.absmax.numpy(), ms["state2"]["absmax"])
    # nested codes come from the native 8-bit path on CPU (see the previous test): +-1 code at most
    assert np.abs(st.absmax.numpy().astype(int) - ms["absmax"].astype(int)).max() <= 1
    assert np.allclose(F.dequantize_4bit(q, st).numpy(), bnb.dequantize_4bit(mq, ms), rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("name", ["quantize_4bit", "dequantize_4bit", "quantize_blockwise",
                                  "dequantize_blockwise"])
def test_positional_parameters_are_bitsandbytes_own_in_its_order(F, name):
    import inspect

    theirs = list(inspect.signature(getattr(F, name)).parameters)
    ours = [p.name for p in inspect.signature(getattr(bnb, name)).parameters.values()
            if p.kind is not p.KEYWORD_ONLY]
    assert theirs[:len(ours)] == ours
