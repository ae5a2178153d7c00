"""refquant's ggml block formats against llama.cpp's own C reference, live, on fresh data.

Calls ``quantize_row_<type>_ref``, ``dequantize_row_<type>`` and
``ggml_quantize_chunk`` of the ``libggml-base.so`` that llama-cpp-python ships
(through :class:`refquant.compat.ggml.LibGGML`, ctypes; ``llama_cpp`` is never
imported).

``.ci/run`` does not install llama-cpp-python (a source build takes ~17 minutes
on two cores), so this module skips wherever it is missing *even under
REFQUANT_REQUIRE_PEERS=1*: it deliberately does not use ``helpers.import_peer``.
Where it is missing, what checks the formats is tests/formats/test_ggml_vectors.py,
against vectors this same library produced (scripts/make_ggml_vectors.py); where
it is installed (as on the machine that ran CI on 2026-11-28), this module runs.
"""

from __future__ import annotations

import ctypes
import importlib.util

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refquant.compat import ggml

if importlib.util.find_spec("llama_cpp") is None:  # not import_peer: see the module docstring
    pytest.skip("llama-cpp-python (libggml-base) is not installed", allow_module_level=True)

ALL_TYPES = list(ggml.GGML_TYPES)
CHUNK_TYPES = [
    t for t in ALL_TYPES if t not in ("Q8_1", "Q8_K")
]  # ggml_quantize_chunk aborts on these


@pytest.fixture(scope="module")
def lib():
    return ggml.LibGGML()


def _same(actual, desired):
    """Per-block bit equality, except that any NaN matches any NaN.

    When both operands of ``x0*d + m`` are NaN (fp16 NaN scale and min), which
    payload comes out is the compiler's and CPU's choice: IEEE 754-2019 6.2.3
    only says it *should* be one of the inputs', and x86 returns the first
    operand's, so the payload follows the operand order the compiler picked.
    Non-NaN results must match bit for bit.
    """
    a, d = np.ascontiguousarray(actual), np.ascontiguousarray(desired)
    a = a.reshape(d.shape)
    if a.dtype == np.float32:
        both_nan = np.isnan(a) & np.isnan(d)
        a, d = a.view(np.uint32), d.view(np.uint32)
        bad = np.any((a != d) & ~both_nan, axis=-1)
    else:
        bad = np.any(a != d, axis=-1)
    return bad.sum(), bad.size, (int(np.argmax(bad)) if bad.any() else -1)


@st.composite
def blocks(draw, bs):
    n = draw(st.integers(1, 2))
    kind = draw(st.sampled_from(["normal", "grid", "scaled", "sparse", "equal"]))
    if kind == "grid":  # exact ties for every rounding rule
        ints = draw(hnp.arrays(np.int32, (n, bs), elements=st.integers(-20, 20)))
        return (ints * np.float32(draw(st.sampled_from([0.0625, 0.25, 1.0])))).astype(np.float32)
    if kind == "equal":
        return np.full((n, bs), draw(st.floats(-1e5, 1e5, width=32)), np.float32)
    if kind == "sparse":
        x = np.zeros((n, bs), np.float32)
        k = draw(st.integers(0, 6))
        idx = draw(st.lists(st.integers(0, n * bs - 1), min_size=k, max_size=k))
        x.reshape(-1)[idx] = draw(st.lists(st.floats(-1e3, 1e3, width=32), min_size=k, max_size=k))
        return x
    seed = draw(st.integers(0, 2**32 - 1))
    x = np.random.default_rng(seed).standard_normal((n, bs)).astype(np.float32)
    if kind == "scaled":  # tiny (subnormal scales) to huge (fp16 Inf, float32 overflow)
        x = (x * np.float32(10.0 ** draw(st.integers(-42, 32)))).astype(np.float32)
    return x


@pytest.mark.parametrize("qtype", ALL_TYPES)
@settings(max_examples=20)
@given(data=st.data())
def test_quantize_row_ref_bit_exact(lib, qtype, data):
    x = data.draw(blocks(ggml.block_size(qtype)))
    bad, total, first = _same(
        ggml.quantize(x.reshape(-1), qtype).reshape(-1, ggml.type_size(qtype)),
        lib.quantize_row(x, qtype),
    )
    assert bad == 0, f"{qtype}: {bad}/{total} blocks differ from quantize_row_*_ref, first {first}"


@pytest.mark.parametrize("qtype", CHUNK_TYPES)
def test_ggml_quantize_chunk_without_imatrix_is_the_ref(lib, qtype):
    x = np.random.default_rng(7).standard_normal((3, 512)).astype(np.float32)
    np.testing.assert_array_equal(ggml.quantize(x, qtype), lib.quantize_chunk(x, qtype))


@pytest.mark.parametrize("qtype", [t for t in ALL_TYPES if t != "Q8_1"])
@settings(max_examples=20)
@given(data=st.data())
def test_dequantize_row_bit_exact_on_any_bytes(lib, qtype, data):
    raw = data.draw(hnp.arrays(np.uint8, (data.draw(st.integers(1, 3)), ggml.type_size(qtype))))
    actual = ggml.dequantize(raw, qtype, (raw.shape[0], ggml.block_size(qtype)))
    bad, total, first = _same(actual, lib.dequantize_row(raw, qtype))
    assert bad == 0, f"{qtype}: {bad}/{total} blocks differ from dequantize_row_*, first {first}"


@pytest.mark.parametrize("qtype", ["Q4_1", "Q5_1", "Q4_K", "Q5_K"])
def test_nan_scale_and_min_dequantize_to_nan_like_libggml(lib, qtype):
    # The example CI's random draw found: fp16 NaN scale (0x7d00) and NaN min (0x7d7d).
    # Both sides give NaN everywhere; only the payload differs (see _same).
    raw = np.full((1, ggml.type_size(qtype)), 125, np.uint8)
    raw[0, 0] = 0
    ours = ggml.dequantize(raw, qtype, (1, ggml.block_size(qtype)))
    theirs = lib.dequantize_row(raw, qtype).reshape(ours.shape)
    assert np.isnan(theirs).all() and np.isnan(ours).all()
    assert _same(ours, theirs)[0] == 0


def test_fp16_scale_rounding_is_ggml_fp32_to_fp16(lib):
    # GGML_FP32_TO_FP16 (round to nearest even, overflow to Inf) on ties, subnormals and overflow
    f = lib._lib.ggml_fp32_to_fp16
    f.restype = ctypes.c_uint16
    f.argtypes = [ctypes.c_float]
    vals = np.array(
        [
            1 + 2**-11,
            1 + 3 * 2**-11,
            65504,
            65519.99,
            65520,
            2**-24,
            2**-25,
            3 * 2**-26,
            1e-8,
            -0.0,
        ],
        np.float32,
    )
    ours = vals.astype(np.float16).view(np.uint16)
    assert ours.tolist() == [f(float(v)) for v in vals]
