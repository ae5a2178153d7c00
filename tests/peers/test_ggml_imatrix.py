"""compat.ggml.quantize(x, t, imatrix=w) against libggml's quantize_<type>(..., quant_weights),
with w an importance vector computed and read back as llama-imatrix / llama-quantize do."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import REQUIRE_PEERS
from hypothesis import given, settings
from hypothesis import strategies as st

from refquant import RefquantError
from refquant.compat import ggml
from refquant.io.imatrix import compute_imatrix, load_imatrix, save_imatrix

REQUIRED_PEER = "libggml-python"
WEIGHTED = ["IQ4_NL", "IQ4_XS"]
IGNORED = ["Q8_0", "TQ1_0", "TQ2_0", "MXFP4"]
MISSING = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


@pytest.fixture(scope="module")
def lib():
    path = ggml.libggml_paths().get(REQUIRED_PEER)
    if path is None:
        if REQUIRE_PEERS:
            pytest.fail(f"peer {REQUIRED_PEER!r} is required (REFQUANT_REQUIRE_PEERS=1) but not installed")
        pytest.skip(f"{REQUIRED_PEER} (libggml-base) is not installed")
    return ggml.LibGGML(path)


def _case(seed, rows, cols, tie):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, cols)) * rng.uniform(0.01, 50, (rows, 1))).astype(np.float32)
    if tie:  # exact ties, zeros and a block of zeros
        x[0, :32] = 0
        x[-1, 32:64] = np.float32(0.5) * np.sign(x[-1, 32:64])
    acts = rng.standard_normal((40, cols)).astype(np.float32) * rng.uniform(0.1, 20, cols).astype(np.float32)
    acts[:, :8] = 0  # columns that never see input: weight 0
    return x, acts


@pytest.mark.parametrize("fmt", ["gguf", "dat"])
@pytest.mark.parametrize("t", WEIGHTED + IGNORED)
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 4), nb=st.integers(1, 3), tie=st.booleans())
def test_quantize_with_imatrix_file_matches_libggml(lib, tmp_path_factory, fmt, t, seed, rows, nb, tie):
    x, acts = _case(seed, rows, 256 * nb, tie)
    p = tmp_path_factory.mktemp("im") / f"m.{fmt}"
    save_imatrix(compute_imatrix({"blk.0.w.weight": acts}, chunk_size=16), p, file_format=fmt)
    w = load_imatrix(p)["blk.0.w.weight"]
    np.testing.assert_array_equal(ggml.quantize(x, t, imatrix=w), lib.quantize(x, t, w))


@pytest.mark.parametrize("t", WEIGHTED)
def test_imatrix_changes_iq4_bytes_like_libggml(lib, t):
    x, acts = _case(7, 3, 512, False)
    w = compute_imatrix({"w": acts}).importance()["w"]
    ours = ggml.quantize(x, t, imatrix=w)
    assert not np.array_equal(ours, lib.quantize(x, t, None))
    np.testing.assert_array_equal(ours, lib.quantize(x, t, w))


@pytest.mark.parametrize("t", MISSING)
def test_weighted_types_without_refquant_path_raise_naming_the_type(lib, t):
    x, acts = _case(3, 2, 256, False)
    w = compute_imatrix({"w": acts}).importance()["w"]
    # libggml's bytes do depend on the imatrix for these, so ignoring it would be wrong
    assert not np.array_equal(lib.quantize(x, t, w), lib.quantize(x, t, None))
    with pytest.raises(RefquantError, match=t):
        ggml.quantize(x, t, imatrix=w)


def test_imatrix_shape_and_values_checked():
    x = np.ones((2, 64), np.float32)
    with pytest.raises(RefquantError, match="shape"):
        ggml.quantize(x, "iq4_nl", imatrix=np.ones(32))
    with pytest.raises(RefquantError, match="finite"):
        ggml.quantize(x, "iq4_nl", imatrix=np.full(64, -1.0))
    with pytest.raises(RefquantError, match="q8_1"):
        ggml.quantize(x, "q8_1", imatrix=np.ones(64))
