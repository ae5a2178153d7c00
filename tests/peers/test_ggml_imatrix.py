"""compat.ggml.quantize(x, t, imatrix=w) against libggml's quantize_<type>(..., quant_weights),
with w an importance vector computed and read back as llama-imatrix / llama-quantize do, and
on drawn rows and imatrices (ties, zeros, huge values, imatrix zeros) on both backends."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import REQUIRE_PEERS, import_peer
from hypothesis import given, settings
from hypothesis import strategies as st

from refquant import RefquantError
from refquant.compat import ggml
from refquant.formats.ggml_weighted import WEIGHTED_TYPES
from refquant.io.imatrix import compute_imatrix, load_imatrix, save_imatrix

REQUIRED_PEER = "libggml-python"
SEARCHED = [t.upper() for t in WEIGHTED_TYPES]  # Q4_0 ... Q6_K: refquant.formats.ggml_weighted
WEIGHTED = SEARCHED + ["IQ4_NL", "IQ4_XS"]
IGNORED = ["Q8_0", "TQ1_0", "TQ2_0", "MXFP4"]
F32_MAX = np.finfo(np.float32).max


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


ROW_KINDS = ["normal", "grid", "zero", "equal", "sparse", "pm_max", "huge", "tiny", "subnormal"]
IMATRIX_KINDS = ["activations", "uniform", "some_zero", "all_zero", "grid", "huge", "tiny"]


def _rows(rng, kind, rows, cols):
    """Rows of one kind: where ggml's searches meet ties, empty blocks and overflow."""
    if kind == "grid":  # exact ties of nearest_int and of the candidate errors
        return rng.integers(-8, 9, (rows, cols)).astype(np.float32) * np.float32(rng.choice([0.25, 1.0, 3.0]))
    if kind == "zero":
        return np.zeros((rows, cols), np.float32)
    if kind == "equal":
        return np.full((rows, cols), np.float32(rng.uniform(-1e3, 1e3)), np.float32)
    if kind == "sparse":
        x = np.zeros((rows, cols), np.float32)
        idx = rng.integers(0, rows * cols, rng.integers(1, 9))
        x.reshape(-1)[idx] = rng.uniform(-50, 50, idx.size)
        return x
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    if kind == "normal":  # real-ish: per-row scale, a few outlier columns
        x *= np.float32(rng.uniform(0.005, 2))
        x[:, rng.integers(0, cols, 3)] *= np.float32(8)
    elif kind == "pm_max":  # +m and -m in every block of 32
        for blk in x.reshape(-1, 32):
            i, j = rng.choice(32, 2, replace=False)
            blk[i], blk[j] = 4.0, -4.0
    elif kind == "huge":  # x*x overflows float32 (sigma2 = Inf) up to ±FLT_MAX
        x = np.clip(x * np.float32(1e37), -F32_MAX, F32_MAX).astype(np.float32)
        x[0, 0] = F32_MAX
    elif kind == "tiny":
        x *= np.float32(1e-20)
    elif kind == "subnormal":
        x[rng.random((rows, cols)) < 0.5] *= np.float32(1e-40)
    return x


def _imatrix(rng, kind, cols):
    if kind == "activations":  # llama-imatrix's mean of squared activations
        acts = rng.standard_normal((24, cols)).astype(np.float32) * rng.uniform(0.1, 9, cols).astype(np.float32)
        return compute_imatrix({"w": acts}).importance()["w"]
    if kind == "all_zero":
        return np.zeros(cols, np.float32)
    if kind == "grid":
        return rng.integers(0, 4, cols).astype(np.float32)
    w = rng.uniform(0, 5, cols).astype(np.float32) ** 2
    if kind == "some_zero":
        w[rng.random(cols) < 0.3] = 0
    elif kind == "huge":
        w *= np.float32(1e30)
    elif kind == "tiny":
        w *= np.float32(1e-30)
    return w


@st.composite
def weighted_case(draw, t):
    block = 256 if t.endswith("_K") else 32
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows, nb = draw(st.integers(1, 3)), draw(st.integers(1, 2 if block == 256 else 12))
    with np.errstate(over="ignore"):
        x = _rows(rng, draw(st.sampled_from(ROW_KINDS)), rows, nb * block)
    w = _imatrix(rng, draw(st.sampled_from(IMATRIX_KINDS)), nb * block)
    return np.ascontiguousarray(x, np.float32), np.asarray(w, np.float32)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("t", SEARCHED)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_weighted_search_gives_libggml_bytes_on_drawn_rows(lib, t, backend, data):
    x, w = data.draw(weighted_case(t))
    ours = ggml.quantize(x, t, imatrix=w, backend=backend)
    theirs = lib.quantize(x, t, w)
    bad = np.flatnonzero(np.any(ours != theirs, axis=1))
    assert bad.size == 0, f"{t} ({backend}): rows {bad} of {x.shape[0]} differ from libggml's quantize_{t}"


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
def test_imatrix_changes_the_bytes_like_libggml(lib, t):
    x, acts = _case(7, 3, 512, False)
    w = compute_imatrix({"w": acts}).importance()["w"]
    ours = ggml.quantize(x, t, imatrix=w)
    assert not np.array_equal(ours, lib.quantize(x, t, None))
    np.testing.assert_array_equal(ours, lib.quantize(x, t, w))


@pytest.mark.parametrize("t", SEARCHED)
def test_without_imatrix_quantize_is_the_ref_quantizer(lib, t):
    # quantize_<type>(..., NULL) calls quantize_row_<type>_ref for all nine types
    x, _ = _case(11, 2, 512, True)
    np.testing.assert_array_equal(ggml.quantize(x, t), lib.quantize(x, t, None))


@pytest.mark.parametrize("t", ["Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_legacy_sigma2_is_taken_over_the_whole_row(lib, t):
    # quantize_row_q4_0_impl etc. weight by qw*sqrt(sigma2 + x^2) with sigma2 the mean square of
    # the ROW: a block's bytes change when another block of its row changes
    x, acts = _case(5, 1, 256, False)
    w = compute_imatrix({"w": acts}).importance()["w"]
    y = x.copy()
    y[0, 128:] *= 100
    a, b = ggml.quantize(x, t, imatrix=w), ggml.quantize(y, t, imatrix=w)
    half = a.shape[1] // 2
    assert not np.array_equal(a[:, :half], b[:, :half])
    np.testing.assert_array_equal(b, lib.quantize(y, t, w))


def test_empty_rows_and_empty_tensors_with_an_imatrix():
    assert ggml.quantize(np.zeros((0, 256), np.float32), "q4_k", imatrix=np.ones(256)).shape == (0, 144)
    assert ggml.quantize(np.zeros((3, 0), np.float32), "q4_0", imatrix=np.ones(0)).shape == (3, 0)


def test_imatrix_shape_and_values_checked():
    x = np.ones((2, 64), np.float32)
    with pytest.raises(RefquantError, match="shape"):
        ggml.quantize(x, "iq4_nl", imatrix=np.ones(32))
    with pytest.raises(RefquantError, match="finite"):
        ggml.quantize(x, "iq4_nl", imatrix=np.full(64, -1.0))
    with pytest.raises(RefquantError, match="finite"):
        ggml.quantize(x, "q4_0", imatrix=np.full(64, np.nan))
    with pytest.raises(RefquantError, match="shape"):
        ggml.quantize(np.ones((2, 256), np.float32), "q4_k", imatrix=np.ones((2, 256)))
    with pytest.raises(RefquantError, match="q8_1"):
        ggml.quantize(x, "q8_1", imatrix=np.ones(64))


# ----------------------------------------------------------------------------- compress --imatrix
def _tiny_with_imatrix(tmp_path, skip_layer=1):
    import_peer("gguf")
    from tiny_llama import write_tiny_llama

    src = tmp_path / "tiny-f16.gguf"
    tensors = write_tiny_llama(src)
    rng = np.random.default_rng(4)
    acts = {}
    for name, a in tensors.items():
        if a.ndim == 2 and not name.startswith(f"blk.{skip_layer}."):  # blk.1: no entries
            acts[name] = (rng.standard_normal((48, a.shape[1]))
                          * rng.uniform(0.1, 5, a.shape[1])).astype(np.float32)
    im = tmp_path / "imatrix.gguf"
    save_imatrix(compute_imatrix(acts, chunk_size=16), im)
    return src, tensors, im


@pytest.mark.parametrize("preset", ["q4_k_m", "q3_k_m", "q4_0"])
def test_compress_with_imatrix_writes_quantize_with_quant_weights_per_tensor(lib, tmp_path, preset):
    import gguf

    from refquant.compress import compress

    src, tensors, im = _tiny_with_imatrix(tmp_path)
    w = load_imatrix(im)
    compress(src, tmp_path / "q.gguf", scheme=preset, imatrix=im)
    types = set()
    for t in gguf.GGUFReader(tmp_path / "q.gguf").tensors:
        ty = t.tensor_type.name
        if ty in ("F32", "F16"):
            continue
        types.add(ty)
        a = np.asarray(tensors[t.name], np.float32)
        # llama-quantize: the tensor's imatrix entry if it has one ("did not find imatrix
        # data" otherwise: quantize_<type>(..., NULL))
        want = lib.quantize(a, ty, w.get(t.name))
        assert np.array_equal(t.data.reshape(-1).view(np.uint8), want.reshape(-1)), (t.name, ty)
    assert types & set(SEARCHED)


def test_compress_imatrix_from_the_cli_and_refusals(lib, tmp_path, capsys):
    from refquant.cli import main
    from refquant.compress import compress

    src, tensors, im = _tiny_with_imatrix(tmp_path)
    assert main(["compress", str(src), "-o", str(tmp_path / "a.gguf"), "--scheme", "q4_k_m",
                 "--imatrix", str(im), "-q"]) == 0
    # the same file path: the same bytes, llama-quantize's quantize.imatrix.* keys included
    compress(src, tmp_path / "b.gguf", scheme="q4_k_m", imatrix=str(im))
    compress(src, tmp_path / "c.gguf", scheme="q4_k_m")
    a, b = (tmp_path / "a.gguf").read_bytes(), (tmp_path / "b.gguf").read_bytes()
    assert a == b and a != (tmp_path / "c.gguf").read_bytes()
    # a dict imatrix (no file to name, so no quantize.imatrix.* keys): the same tensor bytes
    compress(src, tmp_path / "b2.gguf", scheme="q4_k_m", imatrix=load_imatrix(im))
    import gguf

    ra, rb = gguf.GGUFReader(tmp_path / "a.gguf"), gguf.GGUFReader(tmp_path / "b2.gguf")
    assert [t.name for t in ra.tensors] == [t.name for t in rb.tensors]
    for ta, tb in zip(ra.tensors, rb.tensors, strict=True):
        assert bytes(ta.data) == bytes(tb.data), ta.name
    assert "quantize.imatrix.file" in ra.fields and "quantize.imatrix.file" not in rb.fields
    bad = {"blk.0.attn_q.weight": np.ones(100, np.float32)}
    with pytest.raises(RefquantError, match="blk.0.attn_q.weight"):
        compress(src, tmp_path / "d.gguf", scheme="q4_k_m", imatrix=bad)
    with pytest.raises(RefquantError, match="imatrix"):
        compress(src, tmp_path / "e", scheme="gptq-int4-g128", imatrix=im)
