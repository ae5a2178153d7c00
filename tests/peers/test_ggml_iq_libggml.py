"""ggml's lattice IQ types against libggml itself, live: every grid point, fresh bytes, IQ3 quantizers.

The peer is libggml-python's ``libggml-base.so`` (through :class:`refquant.compat.ggml.LibGGML`;
required under ``REFQUANT_REQUIRE_PEERS=1``), llama-cpp-python's where installed.

* Every index of every grid (``iq2xxs_grid`` ... ``iq1s_grid``) is decoded by
  ``dequantize_row_<type>`` from blocks built to hold each index once, and must give
  refquant's floats bit for bit and the constants of :mod:`refquant.formats._iq_grids` times
  the block's scale.
* ``quantize_iq3_xxs`` / ``quantize_iq3_s`` (with NULL or a drawn imatrix) and
  ``quantize_row_iq3_*_ref`` on hypothesis-drawn rows: exact ties, zeros of both signs,
  all-zero and near-zero (< 1e-8) sub-blocks, equal values, ±max pairs, tiny and large scales.
  ggml aborts the process (``GGML_ASSERT``) where a neighbour search overflows float32
  (|x| around 1e12 and up); refquant raises there instead, which a forked child checks
  (libggml is never called on such input in this process).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import REQUIRE_PEERS
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refquant import RefquantError
from refquant.compat import ggml
from refquant.formats import _iq_grids as G

PEERS = ["libggml-python", "llama-cpp-python"]
IQ3 = ["IQ3_XXS", "IQ3_S"]
ONE = np.array([0x3C00], "<u2").view(np.uint8)  # fp16 1.0


@pytest.fixture(scope="module", params=PEERS)
def lib(request):
    path = ggml.libggml_paths().get(request.param)
    if path is None:
        if request.param == PEERS[0] and REQUIRE_PEERS:
            pytest.fail(f"peer {PEERS[0]!r} is required (REFQUANT_REQUIRE_PEERS=1) but not installed")
        pytest.skip(f"{request.param} (libggml-base) is not installed")
    return ggml.LibGGML(path)


def _bits_equal(a, b):
    return np.array_equal(np.ascontiguousarray(a).view(np.uint32), np.ascontiguousarray(b).view(np.uint32))


# ----------------------------------------------------------------------------- every grid point
def _blocks_holding(qtype, n_idx):
    """Blocks with d = 1, scale codes 0, no signs, whose groups hold the indices 0..n_idx-1 in order.

    Returns (raw, db): db the float32 multiplier each group's grid bytes get.
    """
    groups = 64 if qtype in ("IQ3_XXS", "IQ3_S") else 32
    idx = np.arange(-(-n_idx // groups) * groups) % n_idx
    nb = idx.size // groups
    raw = np.zeros((nb, ggml.type_size(qtype)), np.uint8)
    g = idx.reshape(nb, groups)
    if qtype != "IQ1_M":
        raw[:, 0:2] = ONE
    if qtype == "IQ2_XXS":  # per 32: 4 index bytes then a uint32 of signs / scale (0)
        raw[:, 2:66].reshape(nb, 8, 8)[:, :, 0:4] = g.reshape(nb, 8, 4)
        db = np.float32(0.125)  # d * (0.5 + 0) * 0.25
    elif qtype == "IQ2_XS":
        raw[:, 2:66] = g.astype("<u2").view(np.uint8).reshape(nb, 64)
        db = np.float32(0.125)
    elif qtype == "IQ2_S":
        raw[:, 2:34] = g & 255
        hi = (g >> 8).reshape(nb, 8, 4) << (2 * np.arange(4))
        raw[:, 66:74] = hi.sum(axis=2)
        db = np.float32(0.125)
    elif qtype == "IQ3_XXS":
        raw[:, 2:66] = g
        db = np.float32(0.5 * 0.5)  # d * (0.5 + 0) * 0.5
    elif qtype == "IQ3_S":
        raw[:, 2:66] = g & 255
        raw[:, 66:74] = ((g >> 8).reshape(nb, 8, 8) << np.arange(8)).sum(axis=2)
        db = np.float32(1)  # d * (1 + 2*0)
    elif qtype == "IQ1_S":  # delta +1/8 (bit 15 clear), scale code 0 -> dl = d
        raw[:, 2:34] = g & 255
        qh = ((g >> 8).reshape(nb, 8, 4) << (3 * np.arange(4))).sum(axis=2)
        raw[:, 34:50] = qh.astype("<u2").view(np.uint8).reshape(nb, 16)
        db = np.float32(1)
    else:  # IQ1_M: d = 1.0 from the top nibbles of sc[2] (0xC) and sc[3] (0x3)
        raw[:, 0:32] = g & 255
        hi = (g >> 8).reshape(nb, 8, 2, 2) << (4 * np.arange(2))
        raw[:, 32:48] = hi.sum(axis=3).reshape(nb, 16)
        raw[:, 48:56] = np.array([0, 0, 0xC000, 0x3000], "<u2").view(np.uint8)
        db = np.float32(1)
    return raw, db


_GRIDS = {
    "IQ2_XXS": (G.IQ2XXS_GRID, 8, False), "IQ2_XS": (G.IQ2XS_GRID, 8, False),
    "IQ2_S": (G.IQ2S_GRID, 8, False), "IQ3_XXS": (G.IQ3XXS_GRID, 4, False),
    "IQ3_S": (G.IQ3S_GRID, 4, False), "IQ1_S": (G.IQ1S_GRID, 8, True), "IQ1_M": (G.IQ1S_GRID, 8, True),
}  # fmt: skip


@pytest.mark.parametrize("qtype", list(_GRIDS))
def test_every_grid_point_decodes_to_the_ggml_common_h_constant_in_libggml(lib, qtype):
    grid, width, signed = _GRIDS[qtype]
    raw, db = _blocks_holding(qtype, grid.size)
    theirs = lib.dequantize_row(raw, qtype)
    ours = ggml.dequantize(raw, qtype, (raw.shape[0], 256))
    assert _bits_equal(ours, theirs)
    vals = np.ascontiguousarray(grid.astype(f"<u{width}")).view(np.int8 if signed else np.uint8)
    vals = vals.reshape(-1, width).astype(np.float32)
    if signed:  # IQ1: dl * (grid + IQ1S_DELTA)
        vals = vals + G.IQ1S_DELTA
    expected = np.resize(db * vals, theirs.size)  # indices 0, 1, ... in order, wrapping
    np.testing.assert_array_equal(theirs.reshape(-1), expected)


def test_ksigns_and_kmask_are_what_libggml_applies(lib):
    # IQ2_XXS group 0 with grid index 0 (all 8s) and every ksigns index 0..127: the signs
    # libggml applies must be ksigns_iq2xs[i]'s bits
    raw = np.zeros((128, 66), np.uint8)
    raw[:, 0:2] = ONE
    raw[:, 6:10] = (np.arange(128, dtype="<u4")).view(np.uint8).reshape(128, 4)  # aux32[1]
    y = lib.dequantize_row(raw, "IQ2_XXS")[:, :8]
    neg = (G.KSIGNS_IQ2XS[:, None] & G.KMASK_IQ2XS[None, :]) != 0
    np.testing.assert_array_equal(y, np.where(neg, -1.0, 1.0).astype(np.float32))
    assert _bits_equal(ggml.dequantize(raw, "IQ2_XXS", (128, 256))[:, :8], y)


# ----------------------------------------------------------------------------- IQ3 quantizers
@st.composite
def iq3_rows(draw):
    """(rows, 256*k) float32 that libggml quantizes without aborting (|x| <= 1e6 here)."""
    nrows = draw(st.integers(1, 2))
    nb = draw(st.integers(1, 2))
    shape = (nrows, 256 * nb)
    kind = draw(st.sampled_from(
        ["normal", "grid", "scaled", "sparse", "equal", "zero", "pm_max", "subzero", "tiny", "heavy"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "grid":  # x/s on the odd levels 1..15 and the midpoints: ties in nearest_int
        x = rng.integers(-16, 17, shape) * np.float32(draw(st.sampled_from([0.0625, 0.5, 1.0, 3.0])))
    elif kind == "equal":
        x = np.full(shape, draw(st.floats(-1e4, 1e4, width=32)))
    elif kind == "zero":
        x = np.zeros(shape)
    elif kind == "sparse":
        x = np.where(rng.random(shape) < draw(st.sampled_from([0.01, 0.1, 0.5])), rng.standard_normal(shape), 0)
    elif kind == "tiny":  # around GROUP_MAX_EPS_IQ3_XXS = 1e-8
        x = rng.standard_normal(shape) * draw(st.sampled_from([1e-9, 4e-9, 1e-8, 3e-8]))
    elif kind == "heavy":
        x = rng.standard_t(2, shape)
    else:
        x = rng.standard_normal(shape)
        if kind == "scaled":
            x = x * 10.0 ** draw(st.integers(-30, 5))
        if kind == "subzero":  # all-zero sub-blocks of 32 (IQ3_S's pointer quirk)
            for i in draw(st.lists(st.integers(0, shape[1] // 32 - 1), max_size=4)):
                x[:, 32 * i : 32 * i + 32] = 0
        if kind == "pm_max":
            x[:, draw(st.integers(0, shape[1] - 1))] = 5.0
            x[:, draw(st.integers(0, shape[1] - 1))] = -5.0
    x = np.asarray(x, np.float32)
    zeros = np.flatnonzero(x == 0)
    if zeros.size:
        x.reshape(-1)[zeros[draw(hnp.arrays(np.bool_, zeros.size))]] = -0.0
    return x


def _imatrix(draw, n):
    el = st.one_of(st.just(0.0), st.just(1.0), st.floats(float(np.float32(1e-6)), 1e4, width=32))
    return draw(hnp.arrays(np.float32, n, elements=el))


@pytest.mark.parametrize("qtype", IQ3)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_iq3_quantize_gives_libggmls_bytes_with_and_without_imatrix(lib, qtype, data):
    x = data.draw(iq3_rows())
    imatrix = _imatrix(data.draw, x.shape[1]) if data.draw(st.booleans()) else None
    ours = ggml.quantize(x, qtype, imatrix=imatrix)  # raises where ggml would abort
    theirs = lib.quantize(x, qtype, imatrix)
    ts = ggml.type_size(qtype)
    bad = np.flatnonzero(np.any(ours.reshape(-1, ts) != theirs.reshape(-1, ts), axis=1))
    assert bad.size == 0, f"{qtype}: blocks {bad.tolist()} of {ours.size // ts} differ from quantize_{qtype.lower()}"
    if imatrix is None:  # quantize_row_iq3_*_ref is quantize_iq3_* with NULL
        np.testing.assert_array_equal(lib.quantize_row(x, qtype).reshape(-1), theirs.reshape(-1))
        np.testing.assert_array_equal(lib.quantize_chunk(x, qtype).reshape(-1), theirs.reshape(-1))
    # refquant's bytes decode to libggml's floats
    back = ggml.dequantize(ours, qtype, x.shape)
    assert _bits_equal(back.reshape(-1, 256), lib.dequantize_row(ours, qtype))


@pytest.mark.parametrize("qtype", IQ3)
def test_iq3_real_weights_sample_matches_libggml(lib, qtype):
    # a bigger sample of real-ish rows: heavy tails, per-row scale spread, an imatrix from
    # squared activations (as llama-imatrix accumulates)
    rng = np.random.default_rng(12)
    x = (rng.standard_t(4, (16, 512)) * 10.0 ** rng.uniform(-3, 0, (16, 1))).astype(np.float32)
    act = rng.standard_normal((64, 512)).astype(np.float32) * rng.gamma(0.5, size=512).astype(np.float32)
    imatrix = (act * act).mean(axis=0).astype(np.float32)
    for w in (None, imatrix):
        np.testing.assert_array_equal(ggml.quantize(x, qtype, imatrix=w), lib.quantize(x, qtype, w))


def _libggml_aborts(lib, x, qtype):
    """Whether libggml's quantize_<type>(x, NULL) aborts, run in a forked child."""
    pid = os.fork()
    if pid == 0:
        import faulthandler

        faulthandler.disable()  # pytest's handler would dump this child's stack on SIGABRT
        os.environ["GGML_NO_BACKTRACE"] = "1"
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        try:
            lib.quantize(x, qtype)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("qtype", IQ3)
def test_refquant_raises_exactly_where_libggml_aborts(lib, qtype):
    rng = np.random.default_rng(3)
    base = rng.standard_normal((1, 256)).astype(np.float32)
    outcomes = []
    for e in (6, 10, 11, 12, 13, 14, 20, 30, 38):
        x = (base * np.float32(10.0**e)).astype(np.float32)
        try:
            ggml.quantize(x, qtype)
            raised = False
        except RefquantError as err:
            assert "aborts" in str(err)
            raised = True
        aborts = _libggml_aborts(lib, x, qtype)
        assert raised == aborts, (qtype, e, raised, aborts)
        if not aborts:
            np.testing.assert_array_equal(ggml.quantize(x, qtype), lib.quantize(x, qtype))
        outcomes.append(aborts)
    assert not outcomes[0] and outcomes[-1]  # both behaviours met


# ----------------------------------------------------------------------------- GGUF and diff
def test_gguf_in_iq_types_reads_dequantizes_and_diffs_like_libggml_and_gguf_py(lib, tmp_path):
    # a GGUF with one tensor per IQ type (IQ3 quantized by refquant, the others by libggml with
    # an imatrix), read by refquant.io, dequantized as libggml and gguf-py do, and `refquant diff`
    gguf = pytest.importorskip("gguf")
    import refquant.io as rio
    from refquant.cli import main
    from refquant.io.gguf import save_gguf
    from refquant.testing import compare_checkpoints

    rng = np.random.default_rng(9)
    w = {f"t{i}.weight": rng.standard_normal((4, 512)).astype(np.float32) for i in range(7)}
    imatrix = (rng.gamma(1.0, size=512) + 0.1).astype(np.float32)
    types, blocks = {}, {}
    for (name, x), qtype in zip(w.items(), _GRIDS, strict=True):
        types[name] = qtype
        if qtype in IQ3:
            blocks[name] = ggml.quantize(x, qtype)
        else:
            blocks[name] = lib.quantize(x, qtype, imatrix).reshape(4, -1)
    src = rio.save(w, tmp_path / "orig.safetensors")
    save_gguf(blocks, tmp_path / "q.gguf", types=types)
    ck = rio.open(tmp_path / "q.gguf")
    for name, qtype in types.items():
        got = ck.dequantize(name)
        want = lib.dequantize_row(blocks[name], qtype).reshape(4, 512)
        assert _bits_equal(got, want), name
        via_gguf_py = gguf.quants.dequantize(blocks[name], gguf.GGMLQuantizationType[qtype])
        assert _bits_equal(got, via_gguf_py.astype(np.float32)), name
    rows = {r.name: r for r in compare_checkpoints(src, tmp_path / "q.gguf")}
    for name, qtype in types.items():
        assert rows[name].scheme == f"ggml:{qtype}"
        err = np.abs(w[name] - lib.dequantize_row(blocks[name], qtype).reshape(4, 512))
        assert rows[name].max_abs_error == pytest.approx(float(err.max()))
    assert main(["diff", str(src), str(tmp_path / "q.gguf")]) == 0
