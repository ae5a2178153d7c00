"""llama.cpp imatrix files: legacy .dat bytes built by hand from save_imatrix_legacy's layout,
GGUF round trips, llama-quantize's load_imatrix arithmetic, and hostile headers."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from refquant import RefquantError
from refquant.io.imatrix import (
    ImatrixCollector,
    ImatrixData,
    compute_imatrix,
    load_imatrix,
    read_imatrix,
    save_imatrix,
)

pytest.importorskip("gguf")


def _entry(name: bytes, ncall: int, vals) -> bytes:
    v = np.asarray(vals, dtype="<f4")
    return struct.pack("<i", len(name)) + name + struct.pack("<ii", ncall, v.size) + v.tobytes()


def _legacy(entries, tail=b"") -> bytes:
    return struct.pack("<i", len(entries)) + b"".join(entries) + tail


def test_legacy_hand_built_file_divides_by_ncall(tmp_path):
    p = tmp_path / "m.dat"
    vals = [3.0, 6.0, 0.75, 1e-3]
    tail = struct.pack("<ii", 7, 8) + b"wiki.txt"
    p.write_bytes(_legacy([_entry(b"blk.0.attn_k.weight", 3, vals),
                           _entry(b"output.weight", 0, [2.5, 4.0])], tail))
    d = read_imatrix(p)
    assert d.legacy and d.chunk_count == 7 and d.datasets == ["wiki.txt"]
    w = load_imatrix(p)
    expect = np.asarray(vals, np.float32) / np.float32(3)
    np.testing.assert_array_equal(w["blk.0.attn_k.weight"], expect)
    assert w["blk.0.attn_k.weight"].dtype == np.float32
    # ncall == 0: llama-quantize keeps the values unchanged
    np.testing.assert_array_equal(w["output.weight"], np.float32([2.5, 4.0]))


def test_legacy_without_tail_is_read(tmp_path):
    p = tmp_path / "old.dat"
    p.write_bytes(_legacy([_entry(b"a.weight", 2, [4.0, 8.0])]))
    d = read_imatrix(p)
    assert d.datasets == [] and d.chunk_count == 0
    np.testing.assert_array_equal(d.importance()["a.weight"], np.float32([2.0, 4.0]))


@pytest.mark.parametrize("cut", [1, 3, 4, 7, 10, 20, 30, 33])
def test_legacy_truncation_raises(tmp_path, cut):
    raw = _legacy([_entry(b"blk.0.x.weight", 1, [1.0, 2.0, 3.0])], struct.pack("<ii", 1, 4) + b"data")
    p = tmp_path / "t.dat"
    p.write_bytes(raw[: len(raw) - cut])
    with pytest.raises(RefquantError):
        read_imatrix(p)


@pytest.mark.parametrize("raw", [
    struct.pack("<i", 0),                                            # no entries
    struct.pack("<i", -1),
    struct.pack("<i", 2**31 - 1) + _entry(b"a", 1, [1.0]),           # count far past the file
    struct.pack("<i", 1) + struct.pack("<i", 2**30) + b"a",          # name length past the file
    struct.pack("<i", 1) + struct.pack("<i", -5) + b"abcdefghijklmnop",
    struct.pack("<i", 1) + struct.pack("<i", 1) + b"a" + struct.pack("<ii", 1, 2**29) + b"\0" * 8,
    struct.pack("<i", 1) + struct.pack("<i", 1) + b"a" + struct.pack("<ii", 1, 0) + b"\0" * 8,
    struct.pack("<i", 1) + struct.pack("<i", 1) + b"a" + struct.pack("<ii", -1, 1) + b"\0" * 4,
    _legacy([_entry(b"a\x00b", 1, [1.0])]),                           # NUL in name
    _legacy([_entry(b"\xff\xfe", 1, [1.0])]),                         # not UTF-8
    _legacy([_entry(b"a", 1, [1.0]), _entry(b"a", 1, [1.0])]),        # duplicate
    _legacy([_entry(b"a", 1, [1.0])], struct.pack("<ii", 1, 9) + b"short"),  # dataset length
    _legacy([_entry(b"a", 1, [1.0])], b"\x01\x02"),                  # stray trailing bytes
], ids=lambda r: r[:12].hex())
def test_legacy_bad_counts_and_names_raise(tmp_path, raw):
    p = tmp_path / "bad.dat"
    p.write_bytes(raw)
    with pytest.raises(RefquantError):
        read_imatrix(p)


def _rows(rng, n, c):
    return rng.standard_normal((n, c)).astype(np.float32) * rng.uniform(0.1, 10, c).astype(np.float32)


def test_compute_imatrix_is_sequential_float32_sum_of_squares():
    rng = np.random.default_rng(1)
    b1, b2 = _rows(rng, 33, 64), _rows(rng, 17, 64)
    d = compute_imatrix({"blk.0.ffn_up.weight": [b1, b2]}, chunk_size=16)
    s = np.zeros(64, np.float32)
    for r in np.concatenate([b1, b2]):  # collect_imatrix: e.values[j] += x[j] * x[j], in float
        s = (s + r * r).astype(np.float32)
    np.testing.assert_array_equal(d.sums["blk.0.ffn_up.weight"][0], s)
    assert d.counts["blk.0.ffn_up.weight"].tolist() == [50.0]
    assert d.chunk_count == 50 // 16
    w = d.importance()["blk.0.ffn_up.weight"]
    np.testing.assert_array_equal(w, s / np.float32(50))
    np.testing.assert_allclose(w, (np.concatenate([b1, b2]).astype(np.float64) ** 2).mean(0), rtol=1e-5)


def test_streaming_equals_one_batch():
    rng = np.random.default_rng(2)
    x = _rows(rng, 40, 32)
    a = compute_imatrix({"w": x})
    c = ImatrixCollector()
    for i in range(0, 40, 7):
        c.add("w", x[i:i + 7])
    np.testing.assert_array_equal(a.sums["w"], c.data().sums["w"])


def test_gguf_round_trip_and_metadata(tmp_path):
    import gguf

    rng = np.random.default_rng(3)
    d = compute_imatrix({"blk.0.attn_q.weight": _rows(rng, 20, 32),
                         "blk.1.ffn_down.weight": [_rows(rng, 9, 64), _rows(rng, 4, 64)]},
                        chunk_size=8, datasets=["calib.txt"])
    p = save_imatrix(d, tmp_path / "m.gguf")
    r = gguf.GGUFReader(p)  # the layout llama.cpp's save_imatrix writes
    assert r.fields["imatrix.chunk_count"].types == [gguf.GGUFValueType.UINT32]
    assert {t.name: t.shape.tolist() for t in r.tensors}["blk.0.attn_q.weight.in_sum2"] == [32, 1]
    e = read_imatrix(p)
    assert e.datasets == ["calib.txt"] and e.chunk_count == 20 // 8 and e.chunk_size == 8
    for k in d.sums:
        np.testing.assert_array_equal(e.sums[k], d.sums[k])
        np.testing.assert_array_equal(e.counts[k], d.counts[k])
    w = load_imatrix(p)
    for k, v in d.importance().items():
        np.testing.assert_array_equal(w[k], v)


def test_gguf_zero_count_matrix_gets_ones(tmp_path):
    d = ImatrixData(sums={"blk.0.ffn_up_exps.weight": np.float32([[4, 8], [5, 6], [2, 2]])},
                    counts={"blk.0.ffn_up_exps.weight": np.float32([2, 0, 4])}, chunk_count=0)
    p = save_imatrix(d, tmp_path / "moe.gguf")
    w = load_imatrix(p)["blk.0.ffn_up_exps.weight"]
    np.testing.assert_array_equal(w, np.float32([2, 4, 1, 1, 0.5, 0.5]))


def test_legacy_writer_stores_mean_times_ncall(tmp_path):
    rng = np.random.default_rng(4)
    d = compute_imatrix({"b.weight": _rows(rng, 37, 16), "a.weight": _rows(rng, 5, 8)},
                        chunk_size=16, datasets=["x.txt"])
    p = save_imatrix(d, tmp_path / "m.dat", file_format="dat")
    raw = p.read_bytes()
    # entries are sorted by name; first "a.weight": ncall = ceil(5 / 16) = 1
    assert struct.unpack_from("<i", raw, 0)[0] == 2
    assert struct.unpack_from("<i", raw, 4)[0] == 8 and raw[8:16] == b"a.weight"
    assert struct.unpack_from("<ii", raw, 16) == (1, 8)
    e = read_imatrix(p)
    assert e.datasets == ["x.txt"] and e.chunk_count == 37 // 16
    ncall = -(-37 // 16)
    mean = d.sums["b.weight"][0] / np.float32(37)
    np.testing.assert_array_equal(e.sums["b.weight"][0], mean * np.float32(ncall))
    np.testing.assert_array_equal(load_imatrix(p)["b.weight"], (mean * np.float32(ncall)) / np.float32(ncall))
    # and the legacy data writes back to the same bytes
    q = save_imatrix(e, tmp_path / "again.dat", file_format="dat")
    assert q.read_bytes() == raw


def test_gguf_unpaired_tensor_raises(tmp_path):
    from refquant.io.gguf import save_gguf

    p = tmp_path / "x.gguf"
    save_gguf({"a.weight.in_sum2": np.ones((1, 4), np.float32)}, p, metadata={"general.type": "imatrix"})
    with pytest.raises(RefquantError, match="counts"):
        read_imatrix(p)


def test_collector_rejects_bad_input():
    c = ImatrixCollector()
    with pytest.raises(RefquantError):
        c.add("w", np.ones(4))
    with pytest.raises(RefquantError):
        c.add("w", np.float32([[np.nan, 1]]))
    c.add("w", np.ones((2, 4)))
    with pytest.raises(RefquantError, match="columns"):
        c.add("w", np.ones((2, 5)))
