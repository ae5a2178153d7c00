"""refquant's ggml block formats against vectors that libggml itself produced.

The vectors in tests/data/ggml/*.npz come from ``quantize_row_<type>_ref`` and
``dequantize_row_<type>`` of a libggml-base; each file's ``ggml_version`` says
which (the formats up to MXFP4: llama-cpp-python 0.3.36's; libggml-python
0.20.2.post1, ggml 0.20.2, commit 8c63e70, writes and reads the very same bytes
and floats, checked live in tests/peers/test_ggml_libggml.py). Regenerate with
``python scripts/make_ggml_vectors.py``. These tests need no peer, so they run
everywhere; the live comparison on fresh data is tests/peers/test_ggml_libggml.py.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from refquant.formats.ggml import GGML_BLOCK_TABLE, ggml_block_formats

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "ggml")
FORMATS = ggml_block_formats()
# the lattice IQ types: their vectors hold quantize_<type>'s bytes (with the imatrix where
# ggml requires one: no q_chunk), and leave out the rows on which ggml aborts (the 1e30 ones)
IQ_LATTICE = ("iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs", "iq3_s", "iq1_s", "iq1_m")


def _load(name):
    path = os.path.join(DATA, f"{name}.npz")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def assert_blocks_equal(actual, desired, what):
    """Byte/bit equality per block; the message gives the share of bad blocks and the first bad one."""
    __tracebackhide__ = True
    a = np.ascontiguousarray(actual)
    d = np.ascontiguousarray(desired)
    assert a.shape == d.shape, f"{what}: shape {a.shape} != {d.shape}"
    if a.dtype == np.float32:
        a, d = a.view(np.uint32), d.view(np.uint32)
    bad = np.any(a != d, axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        cols = np.nonzero(a[i] != d[i])[0]
        raise AssertionError(
            f"{what}: {bad.sum()} / {len(bad)} blocks differ ({100 * bad.mean():.1f}%); first bad block {i}, "
            f"positions {cols[:8].tolist()}: ACTUAL {a[i, cols[:8]].tolist()} DESIRED {d[i, cols[:8]].tolist()}"
        )


def test_every_format_has_committed_vectors():
    assert sorted(os.path.splitext(f)[0] for f in os.listdir(DATA) if f.endswith(".npz")) == sorted(
        GGML_BLOCK_TABLE
    )


@pytest.mark.parametrize("name", list(GGML_BLOCK_TABLE))
def test_each_vector_file_names_the_ggml_that_wrote_it(name):
    # "ggml 0.20.2 (8c63e70), libggml-base.so of libggml-python 0.20.2.post1", or for the
    # older files only the package: "llama-cpp-python 0.3.36 (libggml-base.so)"
    version = str(_load(name)["ggml_version"])
    assert re.search(r"(libggml-python|llama-cpp-python) \d+\.\d+\.\d+", version), version


@pytest.mark.parametrize("name", list(GGML_BLOCK_TABLE))
def test_quantize_matches_libggml_bytes(name):
    v = _load(name)
    if not getattr(FORMATS[name], "has_quantize", True):
        pytest.skip(f"{name}: refquant has no quantizer for it (its vectors check dequantize)")
    fmt = FORMATS[name]
    if getattr(fmt, "requires_imatrix", False):  # IQ2_XXS, IQ2_XS, IQ1_S: q was written with it
        ours, theirs = fmt.quantize_blocks_weighted(v["x"], v["imatrix"]), v["q"]
    else:
        ours, theirs = fmt.quantize_blocks(v["x"]), v["q"]
    if name == "iq4_nl":
        # quantize_row_iq4_nl_ref leaves the codes of a block with max|x| < 1e-15 as whatever
        # its buffer held (formats.ggml.IQ4_NL: the departure); its d (0) must still match
        small = np.abs(v["x"]).max(axis=1) < 1e-15
        assert small[0] and small.sum() < len(small) // 2
        np.testing.assert_array_equal(ours[small, :2], theirs[small, :2])
        ours, theirs = ours[~small], theirs[~small]
    assert_blocks_equal(ours, theirs, f"{name} quantize")


@pytest.mark.parametrize("name", ["iq4_nl", "iq4_xs", "iq3_xxs", "iq3_s", "iq2_s", "iq1_m"])
def test_weighted_quantize_matches_libggml_with_and_without_imatrix(name):
    # quantize_iq4_nl / quantize_iq4_xs (what ggml_quantize_chunk calls), one block per row
    v = _load(name)
    fmt = FORMATS[name]
    assert_blocks_equal(fmt.quantize_blocks_weighted(v["x"]), v["q_chunk"], f"{name} no imatrix")
    assert_blocks_equal(
        fmt.quantize_blocks_weighted(v["x"], v["imatrix"]), v["q_imatrix"], f"{name} imatrix"
    )
    assert np.any(v["q_chunk"] != v["q_imatrix"]), "the imatrix must change some block"


@pytest.mark.parametrize("name", [n for n in GGML_BLOCK_TABLE if n != "q8_1"])
def test_dequantize_matches_libggml_floats(name):
    v = _load(name)
    fmt = FORMATS[name]
    assert_blocks_equal(fmt.dequantize_blocks(v["q"]), v["dq"], f"{name} dequantize")
    assert_blocks_equal(
        fmt.dequantize_blocks(v["raw"]), v["raw_dq"], f"{name} dequantize random bytes"
    )


@pytest.mark.parametrize("name", list(GGML_BLOCK_TABLE))
def test_vectors_cover_zero_ties_and_extremes(name):
    # the vectors must exercise what they claim to: an all-zero block, and the
    # overflowing and subnormal scales (edge cases are the first rows)
    x = _load(name)["x"]
    big = 1e29 if name not in IQ_LATTICE or name in ("iq2_xxs", "iq1_s") else 1e7
    assert not np.any(x[0]) and np.abs(x).max() > big and 0 < np.abs(x[13]).max() < 1e-37
