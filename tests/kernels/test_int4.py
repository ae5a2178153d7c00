"""int4 weight-only matmul: the Numba kernel equals the NumPy reference bit for bit, every layout."""

from __future__ import annotations

import textwrap

import ml_dtypes
import numpy as np
import pytest
from helpers import run_without_jit
from hypothesis import given, settings
from hypothesis import strategies as st

from refquant import RefquantError
from refquant.kernels.cpu._features import has_feature
from refquant.kernels.int4 import matmul_int4
from refquant.kernels.packing import pack, pack_int4_to_int32, pack_nibbles
from refquant.quant import weight_only

SETTINGS = settings(max_examples=30, deadline=None)
PATHS = ["portable"] + (["avx512"] if has_feature("avx512f") else [])  # each path this CPU runs


def _same_bits(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert a.shape == b.shape
    both_nan = np.isnan(a) & np.isnan(b)
    bad = (a.view(np.uint32) != b.view(np.uint32)) & ~both_nan
    assert not bad.any(), f"{bad.sum()} / {bad.size} differ; first {np.argwhere(bad)[0]}"


def _case(rng, m, n, gs, ng, zero_kind="float"):
    k = gs * ng
    x = (rng.standard_normal((m, k)) * 10.0 ** rng.integers(-3, 4, (m, k))).astype(np.float32)
    q = rng.integers(0, 16, (n, k)).astype(np.uint8)
    s = (rng.random((n, ng)) * 0.1).astype(np.float32)
    if zero_kind == "float":
        z = (rng.random((n, ng)) * 15).astype(np.float32)
    else:
        z = rng.integers(0, 16, (n, ng)).astype(np.float32)
    return x, q, s, z, k


@SETTINGS
@given(st.integers(1, 10), st.integers(1, 9), st.sampled_from([1, 2, 3, 8, 16, 32, 48, 64]),
       st.integers(1, 4), st.sampled_from(["float", "int"]), st.integers(0, 2**32 - 1))
def test_kernel_equals_reference_bit_for_bit(m, n, gs, ng, zero_kind, seed):
    rng = np.random.default_rng(seed)
    x, q, s, z, k = _case(rng, m, n, gs, ng, zero_kind)
    want = weight_only.matmul_int4(x, q, s, z, gs)
    got_np = matmul_int4(x, pack_nibbles(q), s, z, group_size=gs, backend="numpy")
    _same_bits(got_np, want)
    for path in PATHS:
        got_cpu = matmul_int4(x, pack_nibbles(q), s, z, group_size=gs, backend="cpu", path=path)
        _same_bits(got_cpu, want)
    exact = x.astype(np.float64) @ weight_only.dequantize_int4(q, s, z, gs).astype(np.float64).T
    bound = 2 * k * np.finfo(np.float32).eps * (np.abs(x).astype(np.float64) @ np.abs(
        weight_only.dequantize_int4(q, s, z, gs)).astype(np.float64).T) + 1e-30
    assert (np.abs(want - exact) <= bound).all()


def test_reference_sums_sixteen_lanes_then_a_tree():
    # 17 products: lane 0 gets k = 0 and 16, the others one each; big + small shows the order
    x = np.ones((1, 17), np.float32)
    x[0, 0], x[0, 16], x[0, 8] = 2.0**24, 1.0, -(2.0**24)
    q = np.full((1, 17), 9, np.uint8)  # (9 - 8) * 1 = 1
    y = weight_only.matmul_int4(x, q, np.ones((1, 1), np.float32), np.full((1, 1), 8.0,
                                np.float32), 17)
    # lane 0: 2^24 + 1 rounds to 2^24; lane 8: -2^24; tree: (2^24 - 2^24) + 14 ones = 14
    assert y[0, 0] == 14.0
    got = matmul_int4(x, pack_nibbles(q), np.ones((1, 1)), None, group_size=17, backend="cpu")
    assert got[0, 0] == 14.0


@pytest.mark.parametrize("m", [1, 3, 6])
def test_every_layout_gives_the_same_result(m):
    rng = np.random.default_rng(m)
    x, q, s, z, k = _case(rng, m, 5, 16, 3)
    want = matmul_int4(x, q, s, z, group_size=16, layout="codes", backend="numpy")
    layouts = {
        "nibbles": pack_nibbles(q),
        "nibbles_high_first": pack_nibbles(q, order="high_first"),
        "int32": pack(q, 4, word="uint32").view(np.int32),
        "int32_gptq": pack(q.T, 4, axis=0, word="uint32").view(np.int32),
        "codes": q,
    }
    for backend, path in [("numpy", None)] + [("cpu", p) for p in PATHS]:
        for layout, w in layouts.items():
            _same_bits(matmul_int4(x, w, s, z, group_size=16, layout=layout, backend=backend,
                                   path=path), want)
    # compressed-tensors stores signed codes + 8: the same words, zero point 8 by default
    ct = pack_int4_to_int32(q.astype(np.int16) - 8)
    _same_bits(matmul_int4(x, ct, s, None, group_size=16, layout="int32", backend="cpu"),
               matmul_int4(x, q, s, np.full_like(s, 8), group_size=16, layout="codes",
                           backend="numpy"))


def test_odd_k_and_half_precision_activations_and_batch_dims():
    rng = np.random.default_rng(5)
    x, q, s, z, k = _case(rng, 6, 4, 3, 5)  # K = 15: odd, not a multiple of 16
    for dt in (np.float16, ml_dtypes.bfloat16):
        xh = x.astype(dt)
        want = weight_only.matmul_int4(xh.astype(np.float32), q, s, z, 3)
        got = matmul_int4(xh.reshape(2, 3, k), pack_nibbles(q), s, z, group_size=3, backend="cpu")
        assert got.shape == (2, 3, 4)
        _same_bits(got.reshape(6, 4), want)


def test_infinities_and_nan_propagate_identically():
    rng = np.random.default_rng(6)
    x, q, s, z, k = _case(rng, 3, 9, 32, 2)
    x[0, 3], x[1, 5], x[2, 7] = np.inf, -np.inf, np.nan
    for path in PATHS:
        _same_bits(matmul_int4(x, pack_nibbles(q), s, z, group_size=32, backend="cpu",
                               path=path), weight_only.matmul_int4(x, q, s, z, 32))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(group_size=5), "group_size 5 does not divide K = 32"),
        (dict(group_size=0), "group_size 0 does not divide"),
        (dict(layout="gguf"), "layout must be one of"),
        (dict(x=np.zeros((2, 32))), "float64 to float32 yourself"),
        (dict(w=np.zeros((3, 15), np.uint8)), r"has 15 columns along K; K = 32 from x needs 16"),
        (dict(w=np.zeros((3, 16), np.int32)), "must be uint8, got int32"),
        (dict(scales=np.ones((3, 4))), r"scales must have shape .* \(3, 2\)"),
        (dict(layout="codes", w=np.full((3, 32), 16, np.uint8)), "codes must be in 0..15"),
        (dict(backend="cuda"), "backend=.cuda. was asked for"),
        (dict(path="sve"), "path must be one of"),
    ],
)
def test_bad_input_names_the_argument(kwargs, match):
    args = dict(x=np.zeros((2, 32), np.float32), w=np.zeros((3, 16), np.uint8),
                scales=np.ones((3, 2), np.float32), group_size=16, layout="nibbles",
                backend="auto")
    args.update(kwargs)
    with pytest.raises(RefquantError, match=match):
        matmul_int4(args["x"], args["w"], args["scales"], group_size=args["group_size"],
                    layout=args["layout"], backend=args["backend"], path=args.get("path"))


def test_nonzero_padding_nibble_is_refused():
    w = pack_nibbles(np.zeros((2, 4), np.uint8))
    w[1, 1] = 0x10  # high nibble of the last byte is padding for K = 3
    with pytest.raises(RefquantError, match="padding nibble after K = 3"):
        matmul_int4(np.zeros((1, 3), np.float32), w, np.ones((2, 1)), group_size=3)


def test_kernel_bodies_run_as_python_without_the_jit():
    code = textwrap.dedent(
        """
        import numpy as np
        from refquant.kernels.cpu import int4 as ki
        from refquant.quant import weight_only as ref
        from refquant.kernels.packing import pack_nibbles
        rng = np.random.default_rng(0)
        for m, n, gs, ng in [(1, 3, 16, 2), (5, 2, 32, 1), (2, 3, 3, 3), (6, 2, 16, 1), (2, 6, 32, 2)]:
            k = gs * ng
            x = rng.standard_normal((m, k)).astype(np.float32)
            q = rng.integers(0, 16, (n, k)).astype(np.uint8)
            s = rng.random((n, ng)).astype(np.float32)
            z = (rng.random((n, ng)) * 15).astype(np.float32)
            got = ki.matmul_int4(x, pack_nibbles(q), s, z, gs)
            want = ref.matmul_int4(x, q, s, z, gs)
            assert (got.view(np.uint32) == want.view(np.uint32)).all(), (m, n, gs)
            if gs % 32 == 0:
                got = ki.matmul_int4_avx512(x, pack_nibbles(q), s, z, gs)
                assert (got.view(np.uint32) == want.view(np.uint32)).all(), (m, n, gs)
        print("ok")
        """
    )
    assert run_without_jit(code).strip() == "ok"


def test_warmup_compiles_the_kernel():
    from refquant.kernels import int4

    int4._warmup()
