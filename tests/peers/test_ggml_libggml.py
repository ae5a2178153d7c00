"""refquant's ggml block formats against ggml's own C reference, live, on fresh data.

Calls ``quantize_row_<type>_ref``, ``dequantize_row_<type>`` and
``ggml_quantize_chunk`` of a built ``libggml-base.so`` (through
:class:`refquant.compat.ggml.LibGGML`, ctypes; no Python module of the peer is
imported). Two peers ship one:

* **libggml-python** (``pip install libggml-python==0.20.2.post1``: a prebuilt
  2.5 MB wheel of ggml 0.20.2, ``libggml/lib64/libggml-base.so``). CI installs
  it, so under ``REFQUANT_REQUIRE_PEERS=1`` its absence is a failure.
* **llama-cpp-python** (``llama_cpp/lib/libggml-base.so``, ggml as vendored by
  llama.cpp): a second live peer wherever it is installed; it takes a 17-minute
  source build, so CI does not install it and its tests skip even under
  ``REFQUANT_REQUIRE_PEERS=1``.

Every test runs once per peer. Inputs are hypothesis-drawn: exact ties on a
grid, equal values, ±max of a block (both signs of the same magnitude: the first
index wins), blocks of +0.0, of -0.0 and of mixed-sign zeros, ±FLT_MAX, tiny
values whose scale underflows, and bytes whose fp16 (Q8_K: float32) scales are
±Inf, NaN, ±max, subnormal or -0. NaN/Inf *inputs* to the quantizers are not
compared: ggml's result for them is undefined behaviour in C (a NaN converted to
an integer), and refquant refuses them (tests/compat/test_ggml.py).
"""

from __future__ import annotations

import ctypes
import glob
import importlib.metadata
import os
import re

import numpy as np
import pytest
from helpers import REQUIRE_PEERS
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refquant.compat import ggml
from refquant.formats.ggml import KVALUES_IQ4NL

# the lattice IQ types (formats.ggml_iq) are compared in test_ggml_iq_libggml.py: their
# quantizers abort the process on inputs this file draws (GGML_ASSERT on float32 overflow)
IQ_LATTICE = ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M"]
ALL_TYPES = [t for t in ggml.GGML_TYPES if t not in IQ_LATTICE]
# ggml_quantize_chunk aborts on Q8_1 and Q8_K, and calls quantize_iq4_nl with ntry = 7 where
# quantize_row_iq4_nl_ref passes -1 (compared in test_iq4_quantize_with_and_without_imatrix)
CHUNK_TYPES = [t for t in ALL_TYPES if t not in ("Q8_1", "Q8_K", "IQ4_NL")]
IQ4_TYPES = ["IQ4_NL", "IQ4_XS"]
DEQUANT_TYPES = [t for t in ALL_TYPES if t != "Q8_1"]  # ggml has no dequantize_row_q8_1
ANY_BYTES_TYPES = DEQUANT_TYPES + IQ_LATTICE
REQUIRED_PEER = "libggml-python"
PEERS = [REQUIRED_PEER, "llama-cpp-python"]
F32_MAX = np.finfo(np.float32).max
VECTORS = os.path.join(os.path.dirname(__file__), "..", "data", "ggml")


@pytest.fixture(scope="module", params=PEERS)
def lib(request):
    path = ggml.libggml_paths().get(request.param)
    if path is None:
        if request.param == REQUIRED_PEER and REQUIRE_PEERS:
            pytest.fail(
                f"peer {REQUIRED_PEER!r} is required (REFQUANT_REQUIRE_PEERS=1) but not installed"
            )
        pytest.skip(f"{request.param} (libggml-base) is not installed")
    return ggml.LibGGML(path)


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
    """1-3 blocks of one kind; zeros then get a drawn sign each (mixed-sign zero blocks)."""
    n = draw(st.integers(1, 3))
    kind = draw(
        st.sampled_from(
            ["normal", "grid", "scaled", "sparse", "equal", "zero", "pm_max", "huge", "nl_ties"]
        )
    )
    if kind == "nl_ties":
        # IQ4's levels and the midpoints between them, times s, with ±127 s the largest |x|:
        # x/d lands exactly on a level or a midpoint (d = ±s), so best_index_int8's ties occur
        lv = KVALUES_IQ4NL.astype(np.float32)
        pts = np.concatenate([lv, (lv[:-1] + lv[1:]) / 2])
        pts = np.concatenate([pts, -pts])
        idx = draw(hnp.arrays(np.int64, (n, bs), elements=st.integers(0, pts.size - 1)))
        s = np.float32(draw(st.sampled_from([2.0**-6, 0.25, 1.0, 8.0])))
        x = (pts[idx] * s).astype(np.float32)
        x[:, draw(st.integers(0, bs - 1))] = np.float32(draw(st.sampled_from([-127, 127]))) * s
    elif kind == "grid":  # exact ties for every rounding rule
        ints = draw(hnp.arrays(np.int32, (n, bs), elements=st.integers(-20, 20)))
        x = (ints * np.float32(draw(st.sampled_from([0.0625, 0.25, 1.0, 3.0])))).astype(np.float32)
    elif kind == "equal":
        x = np.full((n, bs), draw(st.floats(-1e5, 1e5, width=32)), np.float32)
    elif kind == "zero":
        x = np.zeros((n, bs), np.float32)
    elif kind == "sparse":
        x = np.zeros((n, bs), np.float32)
        k = draw(st.integers(0, 6))
        idx = draw(st.lists(st.integers(0, n * bs - 1), min_size=k, max_size=k))
        x.reshape(-1)[idx] = draw(st.lists(st.floats(-1e3, 1e3, width=32), min_size=k, max_size=k))
    else:
        seed = draw(st.integers(0, 2**32 - 1))
        x = np.random.default_rng(seed).standard_normal((n, bs)).astype(np.float32)
        if kind == "scaled":  # tiny (subnormal scales) to huge (fp16 Inf, float32 overflow)
            x = (x * np.float32(10.0 ** draw(st.integers(-42, 32)))).astype(np.float32)
        if kind in ("pm_max", "huge"):  # +m and -m in one block: which sign the scale takes
            m = F32_MAX if kind == "huge" else np.float32(draw(st.sampled_from([1.0, 7.5, 1e4])))
            if kind == "huge":
                x = (x * np.float32(1e37)).astype(np.float32)
            x = np.clip(x, -m, m)
            for row in x:
                i, j = draw(st.lists(st.integers(0, bs - 1), min_size=2, max_size=2, unique=True))
                row[i], row[j] = m, -m
    zeros = np.flatnonzero(x == 0)
    if zeros.size:  # each zero's sign drawn: +0, -0 or mixed within a block
        signs = draw(hnp.arrays(np.bool_, zeros.size))
        x.reshape(-1)[zeros[signs]] = -0.0
    return x


# special fp16 scale bit patterns: ±Inf, NaN (quiet and another payload), ±max, smallest
# subnormal, -0
_F16_SPECIAL = [0x7C00, 0xFC00, 0x7E00, 0x7D01, 0x7BFF, 0xFBFF, 0x0001, 0x8000, 0x3C00]
_F32_SPECIAL = [0x7F800000, 0xFF800000, 0x7FC00000, 0x7F7FFFFF, 0x00000001, 0x80000000]
# byte offset of each fp16 scale in the block structs (ggml-common.h); Q8_K's d is a float32
# at 0 and MXFP4's is an E8M0 byte at 0
_SCALE_OFFSETS = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
    "TQ1_0": [52], "TQ2_0": [64], "IQ4_NL": [0], "IQ4_XS": [0],
    "IQ2_XXS": [0], "IQ2_XS": [0], "IQ2_S": [0], "IQ3_XXS": [0], "IQ3_S": [0], "IQ1_S": [0],
}  # fmt: skip (IQ1_M's fp16 d is spread over the top nibbles of its scales: no offset)


@st.composite
def raw_blocks(draw, qtype):
    """Any bytes, then (mostly) special scale values written into the scale fields."""
    n = draw(st.integers(1, 3))
    raw = draw(hnp.arrays(np.uint8, (n, ggml.type_size(qtype))))
    for row in raw:
        if not draw(st.booleans()):
            continue
        if qtype == "Q8_K":
            row[0:4] = np.array([draw(st.sampled_from(_F32_SPECIAL))], "<u4").view(np.uint8)
        elif qtype == "MXFP4":
            row[0] = draw(st.sampled_from([0, 1, 126, 127, 128, 253, 254, 255]))
        else:
            for off in _SCALE_OFFSETS.get(qtype, []):
                row[off : off + 2] = np.array([draw(st.sampled_from(_F16_SPECIAL))], "<u2").view(
                    np.uint8
                )
    return raw


def test_scale_offsets_point_at_the_scales():
    # the offsets above must hold each type's fp16 scale(s): a block of zeros with 1.0 written
    # there must dequantize to something non-zero, with 0 there to all zeros
    for qtype, offs in _SCALE_OFFSETS.items():
        bs = ggml.block_size(qtype)
        raw = np.full((1, ggml.type_size(qtype)), 0x11, np.uint8)
        for off in offs:
            raw[0, off : off + 2] = [0, 0]
        assert not np.any(ggml.dequantize(raw, qtype, (1, bs))), qtype
        raw[0, offs[0] : offs[0] + 2] = [0x00, 0x3C]
        assert np.any(ggml.dequantize(raw, qtype, (1, bs))), qtype


def _iq4_nl_defined(x, ours, theirs):
    """IQ4_NL's ref leaves the codes of a block with max|x| < 1e-15 undefined: compare d only there."""
    small = np.abs(x).max(axis=1) < 1e-15
    np.testing.assert_array_equal(ours[small, :2], theirs[small, :2])
    return ours[~small], theirs[~small]


@pytest.mark.parametrize("qtype", ALL_TYPES)
@settings(max_examples=30)
@given(data=st.data())
def test_quantize_row_ref_bit_exact(lib, qtype, data):
    x = data.draw(blocks(ggml.block_size(qtype)))
    ours = ggml.quantize(x.reshape(-1), qtype).reshape(-1, ggml.type_size(qtype))
    theirs = lib.quantize_row(x, qtype)
    if qtype == "IQ4_NL":
        ours, theirs = _iq4_nl_defined(x, ours, theirs)
    bad, total, first = _same(ours, theirs)
    assert bad == 0, f"{qtype}: {bad}/{total} blocks differ from quantize_row_*_ref, first {first}"


@pytest.mark.parametrize("qtype", IQ4_TYPES)
@settings(max_examples=30)
@given(data=st.data())
def test_iq4_quantize_with_and_without_imatrix(lib, qtype, data):
    # quantize_iq4_nl / quantize_iq4_xs (what ggml_quantize_chunk and llama-quantize call):
    # rows of 1-3 blocks, quant_weights NULL or one drawn imatrix row (zeros, ties, huge ratios)
    x = data.draw(blocks(ggml.block_size(qtype)))
    rows = x.reshape(1, -1) if data.draw(st.booleans()) else x
    imatrix = None
    if data.draw(st.booleans()):
        el = st.one_of(st.just(0.0), st.just(1.0), st.floats(float(np.float32(1e-6)), 1e6, width=32))
        imatrix = data.draw(hnp.arrays(np.float32, rows.shape[1], elements=el))
    fmt = ggml.resolve_type(qtype)
    qw = None if imatrix is None else np.tile(imatrix.reshape(-1, fmt.block_size), (rows.shape[0], 1))
    ours = fmt.quantize_blocks_weighted(rows.reshape(-1, fmt.block_size), qw)
    theirs = lib.quantize(rows, qtype, imatrix).reshape(ours.shape)
    bad, total, first = _same(ours, theirs)
    assert bad == 0, f"{qtype}: {bad}/{total} blocks differ from quantize_{qtype.lower()}, first {first}"
    if imatrix is None:
        np.testing.assert_array_equal(lib.quantize_chunk(rows, qtype).reshape(ours.shape), ours)


def test_enum_ggml_type_ids_are_those_of_the_installed_header(lib):
    # libggml-python ships ggml.h next to the library: GGML_TYPES must be its enum ggml_type
    header = os.path.join(os.path.dirname(lib.path), "..", "include", "ggml.h")
    if not os.path.exists(header):
        pytest.skip(f"no ggml.h beside {lib.path}")
    with open(header) as fh:
        ids = dict(re.findall(r"^\s*GGML_TYPE_(\w+)\s*=\s*(\d+),", fh.read(), re.M))
    assert {name: int(ids[name]) for name in ggml.GGML_TYPES} == ggml.GGML_TYPES


@pytest.mark.parametrize("qtype", CHUNK_TYPES)
@settings(max_examples=8)
@given(data=st.data())
def test_ggml_quantize_chunk_without_imatrix_is_the_ref(lib, qtype, data):
    x = data.draw(blocks(ggml.block_size(qtype)))
    x = np.concatenate([x, x[::-1] * np.float32(0.5)], axis=1)  # rows of two blocks
    np.testing.assert_array_equal(ggml.quantize(x, qtype), lib.quantize_chunk(x, qtype))


@pytest.mark.parametrize("qtype", ANY_BYTES_TYPES)
@settings(max_examples=30)
@given(data=st.data())
def test_dequantize_row_bit_exact_on_any_bytes(lib, qtype, data):
    raw = data.draw(raw_blocks(qtype))
    actual = ggml.dequantize(raw, qtype, (raw.shape[0], ggml.block_size(qtype)))
    bad, total, first = _same(actual, lib.dequantize_row(raw, qtype))
    assert bad == 0, f"{qtype}: {bad}/{total} blocks differ from dequantize_row_*, first {first}"


@pytest.mark.parametrize("qtype", DEQUANT_TYPES)
@settings(max_examples=10)
@given(data=st.data())
def test_round_trip_through_refquant_bytes_matches_libggml(lib, qtype, data):
    # refquant's own bytes, dequantized by both: catches a quantizer and dequantizer that
    # agree with each other but not with ggml's layout
    x = data.draw(blocks(ggml.block_size(qtype)))
    raw = ggml.quantize(x.reshape(-1), qtype)
    bad, total, first = _same(ggml.dequantize(raw, qtype, x.shape), lib.dequantize_row(raw, qtype))
    assert bad == 0, f"{qtype}: {bad}/{total} blocks differ, first {first}"


@pytest.mark.parametrize("qtype", ["Q4_1", "Q5_1"])
def test_mixed_sign_zero_block_stores_the_first_zero_as_its_min_like_libggml(lib, qtype):
    # quantize_row_q4_1_ref / q5_1_ref: min starts at FLT_MAX and is replaced only when
    # v < min, so among equal zeros the *first* one met is kept and its sign is stored in m
    # (fp16 +0 = 0x0000, -0 = 0x8000). gguf-py's np.min may return either zero
    # (tests/peers/test_ggml_gguf.py drops signed zeros for these two types for that reason).
    bs = ggml.block_size(qtype)
    x = np.zeros((4, bs), np.float32)
    x[0, 0], x[0, -1] = 1.0, -0.0  # [1, +0, ..., +0, -0]: m = +0
    x[1, 0], x[1, 1] = 1.0, -0.0  # [1, -0, +0, ..., +0]: m = -0
    x[2, 0] = -0.0  # all zero, -0 first: m = -0, d = 0
    x[3, 1] = -0.0  # all zero, +0 first: m = +0
    theirs = lib.quantize_row(x, qtype)
    ours = ggml.quantize(x.reshape(-1), qtype).reshape(theirs.shape)
    np.testing.assert_array_equal(ours, theirs)
    m_bits = theirs[:, 2:4].copy().view("<u2")[:, 0].tolist()
    assert m_bits == [0x0000, 0x8000, 0x8000, 0x0000]


def test_committed_vectors_are_what_this_libggml_writes(lib):
    # tests/data/ggml/*.npz were frozen from one libggml build (each file's ggml_version); the
    # live peer must still write and read exactly those bytes and floats, or the vectors (and
    # what tests/formats/test_ggml_vectors.py checks offline) describe another ggml
    files = sorted(glob.glob(os.path.join(VECTORS, "*.npz")))
    assert files
    for path in files:
        name = os.path.basename(path)[: -len(".npz")]
        with np.load(path) as z:
            v = {k: z[k] for k in z.files}
        assert str(v["ggml_version"]), name
        if name.upper() in IQ_LATTICE:  # quantize_<type>, the imatrix only where ggml requires one
            q = lib.quantize(v["x"], name, v["imatrix"] if "q_chunk" not in v else None)
        else:
            q = lib.quantize_row(v["x"], name)
        frozen = v["q"]
        if name == "iq4_nl":  # undefined codes of its tiny blocks (see _iq4_nl_defined)
            q, frozen = _iq4_nl_defined(v["x"], q, frozen)
        np.testing.assert_array_equal(q, frozen, err_msg=name)
        if "q_chunk" in v:
            np.testing.assert_array_equal(lib.quantize(v["x"], name), v["q_chunk"], err_msg=name)
        if "imatrix" in v:
            got = lib.quantize(v["x"], name, v["imatrix"])
            np.testing.assert_array_equal(got, v["q_imatrix"], err_msg=name)
        if "dq" in v:
            for q, dq in ((v["q"], v["dq"]), (v["raw"], v["raw_dq"])):
                got = lib.dequantize_row(q, name)
                assert _same(got, dq)[0] == 0, name


def test_libggml_reports_the_ggml_version_of_its_package(lib):
    assert lib.version and lib.version != "unknown"
    if "/libggml/" in lib.path.replace(os.sep, "/"):
        # libggml-python's version is ggml's plus a post-release: 0.20.2.post1 wraps ggml 0.20.2
        # (commit 8c63e70); LibGGML.version is "ggml_version() (ggml_commit())"
        assert re.fullmatch(r"\d+\.\d+\.\d+ \([0-9a-f]+\)", lib.version), lib.version
        pkg = importlib.metadata.version("libggml-python")
        assert pkg.split(".post")[0] == lib.version.split(" ")[0]


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
    with np.errstate(over="ignore"):  # 65520 rounds to Inf in both
        ours = vals.astype(np.float16).view(np.uint16)
    assert ours.tolist() == [f(float(v)) for v in vals]
