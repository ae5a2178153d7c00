"""The Numba float-format kernels reproduce formats.floats' NumPy reference bit for bit."""

import ml_dtypes
import numpy as np
import pytest
from helpers import run_without_jit
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refquant import RefquantError
from refquant._core.rounding import ROUNDING_MODES
from refquant.formats.floats import FLOAT_FORMATS, KERNEL_THRESHOLD, cast, decode, encode

NAMES = sorted(FLOAT_FORMATS)
DETERMINISTIC = [m for m in ROUNDING_MODES if m != "stochastic"]


def _ties_and_edges(fmt):
    """Every code's value, every midpoint between neighbours (the ties), their float32
    neighbours, ±max and beyond, the overflow thresholds, NaN, ±Inf, float32 subnormals."""
    n = 1 << fmt.bits
    vals = decode(np.arange(n).astype(fmt.storage_dtype), fmt, backend="numpy").astype(np.float64)
    fin = np.unique(vals[np.isfinite(vals)])
    mids = (fin[:-1] + fin[1:]) / 2
    base = np.concatenate([fin, mids, [fmt.max * 1.0625, fmt.max * 1.125, fmt.max * 2, 1e30, 2.0**-149,
                                       1e-45, 3e-39, 2.0**-127, 1.5 * 2.0**127, np.nan, np.inf]])
    base = np.concatenate([base, -base])
    with np.errstate(over="ignore"):
        b32 = base.astype(np.float32)
    near = np.concatenate([np.nextafter(b32, np.float32(np.inf)), np.nextafter(b32, np.float32(-np.inf))])
    return np.concatenate([base, b32.astype(np.float64), near.astype(np.float64)])


def _same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("saturate", [True, False])
@pytest.mark.parametrize("rounding", DETERMINISTIC)
def test_encode_kernel_equals_reference_on_every_tie_edge_and_special(name, saturate, rounding):
    fmt = FLOAT_FORMATS[name]
    x = _ties_and_edges(fmt)
    with np.errstate(over="ignore"):
        x32 = x.astype(np.float32)
    for xx in (x, x32):  # float32 runs the vectorised path, float64 the general one
        kw = dict(saturate=saturate, rounding=rounding, nan="ml_dtypes")
        _same(encode(xx, name, backend="cpu", **kw), encode(xx, name, backend="numpy", **kw))


@pytest.mark.parametrize("name", NAMES)
def test_decode_kernel_equals_reference_on_every_code_bit_for_bit(name):
    fmt = FLOAT_FORMATS[name]
    codes = np.arange(1 << min(fmt.bits, 16)).astype(fmt.storage_dtype)
    for c in (codes, codes.astype(np.int64), codes.reshape(-1, 2 if codes.size % 2 == 0 else 1)[::-1]):
        got, want = decode(c, name, backend="cpu"), decode(c, name, backend="numpy")
        assert got.dtype == want.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))  # NaN signs, -0


_INPUT_DTYPES = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn,
                 np.int8, np.uint8, np.int16, np.int32, np.int64, np.uint64, np.bool_]


@settings(max_examples=60)
@given(
    name=st.sampled_from(NAMES),
    rounding=st.sampled_from(DETERMINISTIC),
    saturate=st.booleans(),
    dtype=st.sampled_from(_INPUT_DTYPES),
    data=st.data(),
)
def test_encode_kernel_equals_reference_on_drawn_arrays_of_every_input_dtype(name, rounding, saturate, dtype,
                                                                               data):
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=9))
    bits = data.draw(hnp.arrays(np.uint64, shape))  # every bit pattern of the dtype, NaN payloads included
    dt = np.dtype(dtype)
    x = (bits & np.uint64((1 << (8 * dt.itemsize)) - 1) if dt.itemsize < 8 else bits).astype(
        {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[dt.itemsize]).view(dt)
    if dt == np.bool_:
        x = x.view(np.uint8) > 0
    kw = dict(saturate=saturate, rounding=rounding, nan="ml_dtypes")
    _same(encode(x, name, backend="cpu", **kw), encode(x, name, backend="numpy", **kw))


@settings(max_examples=40)
@given(name=st.sampled_from(NAMES), x=hnp.arrays(np.float64, st.integers(0, 40)), seed=st.integers(0, 2**32))
def test_stochastic_encode_kernel_uses_the_same_draws(name, x, seed):
    kw = dict(rounding="stochastic", nan="ml_dtypes", seed=seed)
    _same(encode(x, name, backend="cpu", **kw), encode(x, name, backend="numpy", **kw))


def test_stochastic_draws_in_chunks_are_the_reference_stream():
    # the kernel draws 65,536 at a time; one reference draw of the whole size must agree
    x = np.random.default_rng(1).standard_normal(150_001).astype(np.float32)
    for name in ("float8_e4m3fn", "float4_e2m1fn", "bfloat16"):
        a = encode(x, name, rounding="stochastic", rng=np.random.default_rng(7), backend="cpu")
        b = encode(x, name, rounding="stochastic", rng=np.random.default_rng(7), backend="numpy")
        _same(a, b)


@pytest.mark.parametrize("name", ["float4_e2m1fn", "float6_e2m3fn", "float6_e3m2fn"])
@pytest.mark.parametrize("rounding", ["half_even", "stochastic"])
def test_nan_in_a_format_without_nan_raises_the_same_error_on_both_backends(name, rounding):
    x = np.zeros(100, np.float32)
    x[37] = np.nan
    x[60] = np.nan
    msgs = []
    for backend in ("numpy", "cpu"):
        with pytest.raises(RefquantError, match="flat index 37") as e:
            encode(x, name, rounding=rounding, seed=0, backend=backend)
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1]


def test_auto_runs_the_kernel_from_the_threshold_and_env_forces_numpy(monkeypatch):
    from refquant.kernels.cpu import floats as kf

    calls = []
    real = kf.encode_into
    monkeypatch.setattr(kf, "encode_into", lambda *a, **k: calls.append(1) or real(*a, **k))
    encode(np.ones(KERNEL_THRESHOLD - 1, np.float32), "float8_e4m3fn")
    assert calls == []
    encode(np.ones(KERNEL_THRESHOLD, np.float32), "float8_e4m3fn")
    assert calls == [1]
    monkeypatch.setenv("REFQUANT_BACKEND", "numpy")
    encode(np.ones(KERNEL_THRESHOLD, np.float32), "float8_e4m3fn", backend="cpu")
    assert calls == [1]


def test_cast_takes_the_backend_and_bad_backends_are_named():
    x = np.linspace(-500, 500, 1001, dtype=np.float32)
    a = cast(x, "float8_e4m3fn", backend="cpu")
    assert a.dtype == ml_dtypes.float8_e4m3fn
    _same(a.view(np.uint8), cast(x, "float8_e4m3fn", backend="numpy").view(np.uint8))
    with pytest.raises(RefquantError, match="backend"):
        encode(x, "float8_e4m3fn", backend="gpu")
    with pytest.raises(RefquantError, match="backend"):
        decode(np.zeros(3, np.uint8), "float8_e4m3fn", backend=None)


def test_kernel_input_is_not_modified_and_non_contiguous_views_work():
    x = np.random.default_rng(0).standard_normal((64, 33)).astype(np.float32)
    keep = x.copy()
    for v in (x.T, x[::3, 1::2], np.asfortranarray(x)):
        _same(encode(v, "float8_e5m2", backend="cpu"), encode(v, "float8_e5m2", backend="numpy"))
    np.testing.assert_array_equal(x, keep)


def test_kernel_bodies_run_as_python_without_jit():
    # kernel bodies (every branch: both encode paths, each rounding mode, decode) as plain Python
    code = """
import numpy as np
from refquant._core.rounding import ROUNDING_MODES
from refquant.formats.floats import FLOAT_FORMATS, decode, encode
x = np.array([0.0, -0.0, 1.0, -1.5, 2.75, 464.0, -480.0, 6.5, 1e-7, -2.0**-9, 3e38, np.inf, -np.inf, np.nan,
              0.1875, 0.3125, 57344.0, 61440.0, 2.0**-127], np.float64)
for name, fmt in FLOAT_FORMATS.items():
    for mode in ROUNDING_MODES:
        for sat in (True, False):
            for xx in (x, x.astype(np.float32)):
                a = encode(xx, name, saturate=sat, rounding=mode, nan="ml_dtypes", seed=3, backend="cpu")
                b = encode(xx, name, saturate=sat, rounding=mode, nan="ml_dtypes", seed=3, backend="numpy")
                assert np.array_equal(a, b), (name, mode, sat, xx.dtype, a, b)
    c = np.arange(1 << min(fmt.bits, 8)).astype(fmt.storage_dtype)
    assert np.array_equal(decode(c, name, backend="cpu").view(np.uint32),
                          decode(c, name, backend="numpy").view(np.uint32)), name
print("ok")
"""
    assert run_without_jit(code, timeout=600).strip() == "ok"


def test_kernel_paths_allocate_the_output_and_no_float64_copy():
    import tracemalloc

    from refquant.compat import bnb
    from refquant.formats import codebook, mx

    n = 1 << 20
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    calls = {  # bytes of output each call must allocate, at most
        "encode": (lambda: encode(x, "float8_e4m3fn", backend="cpu"), n),
        "encode float64": (lambda: encode(x64, "float8_e5m2", backend="cpu"), n),
        "decode": (lambda: decode(c8, "float8_e4m3fn", backend="cpu"), 4 * n),
        "mx": (lambda: mx.quantize_mx(x, "mxfp4", backend="cpu"), n + n // 32),
        "blockwise": (lambda: codebook.quantize_blockwise_absmax(x, "nf4", 64, backend="cpu"), n + n // 16),
        "bnb nf4": (lambda: bnb.quantize_4bit(x, quant_type="nf4"), n // 2 + n // 16),
    }
    x64 = x.astype(np.float64)
    c8 = encode(x, "float8_e4m3fn", backend="cpu")
    for name, (fn, out_bytes) in calls.items():
        fn()  # compile / load outside the measurement
        tracemalloc.start()
        fn()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak <= out_bytes + (1 << 16), (name, peak, out_bytes)  # output + O(1) scratch


def test_a_second_process_loads_the_kernels_from_numbas_disk_cache(tmp_path):
    import os
    import subprocess
    import sys

    code = """
import numpy as np
from refquant.formats.floats import decode, encode
from refquant.kernels.cpu import floats as kf
x = np.linspace(-500, 500, 1000, dtype=np.float32)
decode(encode(x, "float8_e4m3fn", backend="cpu"), "float8_e4m3fn", backend="cpu")
print(sum(k.stats.cache_hits.total() if hasattr(k.stats.cache_hits, "total") else sum(k.stats.cache_hits.values())
          for k in (kf._encode_f32, kf._decode)))
"""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    hits = [int(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                               check=True).stdout.split()[-1]) for _ in range(2)]
    assert hits == [0, 2]  # the first process compiles and writes the cache, the second only loads


def test_float_codebook_and_mx_kernels_have_no_contracted_fma(tmp_path):
    # fastmath stays off: no a * b + c may become one fused rounding (the references round twice)
    import os
    import subprocess
    import sys

    code = """
import numpy as np
from refquant.compat import bnb
from refquant.formats import codebook, floats, mx
from refquant.kernels.cpu import codebook as kc, floats as kf, mx as km
x = np.random.default_rng(0).standard_normal(4096).astype(np.float32)
floats.encode(x, "float8_e4m3fn", backend="cpu"); floats.encode(x.astype(np.float64), "bfloat16", backend="cpu")
floats.encode(x, "float8_e8m0fnu", backend="cpu"); floats.decode(np.arange(256, dtype=np.uint8), "float8_e5m2", backend="cpu")
codebook.quantize_blockwise_absmax(x, "nf4", 64, backend="cpu")
codebook.quantize_blockwise_absmax(x, "nf4", 64, assign="nearest", backend="cpu")
mx.dequantize_mx(*mx.quantize_mx(x, "mxfp4", backend="cpu"), "mxfp4", backend="cpu")
bnb.KERNEL_THRESHOLD = 0
bnb.dequantize_4bit(*bnb.quantize_4bit(x, quant_type="nf4"))
bnb.dequantize_blockwise(*bnb.quantize_blockwise(x))
bnb.quantize_blockwise(x, backend="default")
n = 0
for mod in (kf, kc, km):
    for name in dir(mod):
        k = getattr(mod, name)
        if hasattr(k, "inspect_asm"):
            for sig in k.signatures:
                asm = k.inspect_asm(sig)
                assert "vfmadd" not in asm and "vfmsub" not in asm and "vfnmadd" not in asm, name
                n += 1
print(n)
"""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))  # a fresh cache: inspect_asm needs compiled code
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.split()[-1]) >= 10
