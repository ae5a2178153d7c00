"""refquant.io.pytorch on hand-built torch.save files (no torch needed)."""

import struct
import zipfile

import ml_dtypes
import numpy as np
import pytest
from picklekit import (
    EMPTY_DICT,
    INT,
    PROTO2,
    SETITEM,
    STOP,
    UNI,
    state_dict,
    tensor_v2,
    tensor_v3,
    torch_legacy,
    torch_zip,
)

import refquant.io as rio
from refquant import RefquantError

F32_0_5 = struct.pack("<6f", 0, 1, 2, 3, 4, 5)


def _zip(tmp_path, items, storages, **kw):
    return torch_zip(tmp_path / "m.pt", state_dict(items), storages, **kw)


def test_zip_state_dict_reads_values_shape_and_dtype(tmp_path):
    p = _zip(tmp_path, [("w", tensor_v2("0", "FloatStorage", 6, 0, (2, 3), (3, 1)))], {"0": F32_0_5})
    with rio.open(p) as ck:
        assert ck.format == "pytorch-zip"
        np.testing.assert_array_equal(ck["w"], np.arange(6, dtype=np.float32).reshape(2, 3))
        assert ck.info("w").stored_dtype == "torch.float32"


def test_zip_top_folder_may_have_any_name(tmp_path):
    # the storage is found under the pickle's own folder: values, not just a
    # shape (which the pickle alone decides), show the data entry was located
    p = _zip(tmp_path, [("w", tensor_v2("0", "FloatStorage", 6, 0, (6,), (1,)))], {"0": F32_0_5},
             top="some_other_name")
    names = zipfile.ZipFile(p).namelist()
    assert "some_other_name/data.pkl" in names and not any(n.startswith("archive/") for n in names)
    with rio.open(p) as ck:
        assert ck.format == "pytorch-zip" and list(ck) == ["w"]
        w = ck["w"]
        assert w.dtype == np.float32
        np.testing.assert_array_equal(w, np.arange(6, dtype=np.float32))


def test_views_sharing_a_storage_with_offset_and_transposed_strides(tmp_path):
    items = [
        ("full", tensor_v2("0", "FloatStorage", 6, 0, (2, 3), (3, 1))),
        ("row1", tensor_v2("0", "FloatStorage", 6, 3, (3,), (1,))),
        ("col2", tensor_v2("0", "FloatStorage", 6, 2, (2,), (3,))),
        ("t", tensor_v2("0", "FloatStorage", 6, 0, (3, 2), (1, 3))),
    ]
    with rio.open(_zip(tmp_path, items, {"0": F32_0_5})) as ck:
        full = np.arange(6, dtype=np.float32).reshape(2, 3)
        np.testing.assert_array_equal(ck["row1"], full[1])
        np.testing.assert_array_equal(ck["col2"], full[:, 2])
        np.testing.assert_array_equal(ck["t"], full.T)
        assert np.shares_memory(ck["full"], ck["t"])


def test_v3_untyped_storage_with_bf16_and_fp8(tmp_path):
    bf = np.array([1.5, -2, 3], ml_dtypes.bfloat16)
    f8 = np.array([448, -1, 0.5, 2], ml_dtypes.float8_e4m3fn)
    items = [("bf", tensor_v3("0", 6, 0, (3,), (1,), "bfloat16")),
             ("f8", tensor_v3("1", 4, 0, (2, 2), (2, 1), "float8_e4m3fn"))]
    with rio.open(_zip(tmp_path, items, {"0": bf.tobytes(), "1": f8.tobytes()})) as ck:
        np.testing.assert_array_equal(ck["bf"], bf)
        np.testing.assert_array_equal(ck["f8"].view(np.uint8), f8.view(np.uint8).reshape(2, 2))


@pytest.mark.parametrize("dtype", ["bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu"])
def test_transposed_ml_dtypes_tensor_reads_strided(tmp_path, dtype):
    # as_strided rebuilt the array through __array_interface__, whose typestr for
    # float8_e5m2 ('<f1') numpy cannot parse: TypeError on every non-contiguous
    # e5m2 tensor (torch.save of w.t())
    npdt = np.dtype(getattr(ml_dtypes, dtype))
    raw = bytes(range(1, 1 + 6 * npdt.itemsize))
    items = [("t", tensor_v3("0", len(raw), 0, (3, 2), (1, 3), dtype))]
    with rio.open(_zip(tmp_path, items, {"0": raw})) as ck:
        got = ck["t"]
    want = np.frombuffer(raw, npdt).reshape(2, 3).T  # element [i, j] is storage[i + 3j]
    assert got.dtype == npdt and got.shape == (3, 2)
    np.testing.assert_array_equal(got.view(f"u{npdt.itemsize}"), want.view(f"u{npdt.itemsize}"))


def test_compressed_storage_entry_is_read(tmp_path):
    p = _zip(tmp_path, [("w", tensor_v2("0", "FloatStorage", 6, 0, (6,), (1,)))], {"0": F32_0_5},
             compress=("0",))
    with rio.open(p) as ck:
        np.testing.assert_array_equal(ck["w"], np.arange(6, dtype=np.float32))


def test_training_checkpoint_nested_dicts_ints_and_strings(tmp_path):
    model = state_dict([("w", tensor_v2("0", "FloatStorage", 6, 0, (6,), (1,)))])[2:-1]
    pkl = (PROTO2 + EMPTY_DICT + UNI("model") + model + SETITEM + UNI("epoch") + INT(7) + SETITEM
           + UNI("note") + UNI("hello") + SETITEM + STOP)
    with rio.open(torch_zip(tmp_path / "c.pt", pkl, {"0": F32_0_5})) as ck:
        assert list(ck) == ["model.w"]
        assert ck.metadata["epoch"] == 7 and ck.metadata["note"] == "hello"


def test_big_endian_byteorder_record_is_refused(tmp_path):
    p = _zip(tmp_path, [("w", tensor_v2("0", "FloatStorage", 6, 0, (6,), (1,)))], {"0": F32_0_5},
             byteorder=b"big")
    with pytest.raises(RefquantError, match="big-endian") as e:
        rio.open(p)
    assert str(p) in str(e.value)


@pytest.mark.parametrize(
    "tensor, storage, match",
    [
        (tensor_v2("0", "FloatStorage", 6, 0, (7,), (1,)), F32_0_5, "reach element 6"),
        (tensor_v2("0", "FloatStorage", 6, 4, (2, 2), (1, 1)), F32_0_5, "reach element 6"),
        (tensor_v2("0", "FloatStorage", 6, 0, (2, 3), (4, 1)), F32_0_5, "reach element 6"),
        (tensor_v2("0", "FloatStorage", 8, 0, (6,), (1,)), F32_0_5, "the pickle says"),
        (tensor_v2("0", "FloatStorage", 2**40, 0, (2**40,), (1,)), F32_0_5, "the pickle says"),
        (tensor_v2("9", "FloatStorage", 6, 0, (6,), (1,)), F32_0_5, "no entry"),
        (tensor_v3("0", 6, 0, (3,), (1,), "float32"), F32_0_5, "not a multiple"),
    ],
    ids=["size-past-end", "offset-past-end", "stride-past-end", "storage-bytes", "2**40-numel",
         "missing-entry", "untyped-not-multiple"],
)
def test_lying_sizes_offsets_and_strides_are_refused(tmp_path, tensor, storage, match):
    with pytest.raises(RefquantError, match=match):
        rio.open(_zip(tmp_path, [("w", tensor)], {"0": storage}))


def test_negative_size_is_refused(tmp_path):
    with pytest.raises(RefquantError, match="size"):
        rio.open(_zip(tmp_path, [("w", tensor_v2("0", "FloatStorage", 6, 0, (-1,), (1,)))],
                      {"0": F32_0_5}))


def _legacy(tmp_path, **kw):
    pkl = state_dict([("w", tensor_v2("k1", "FloatStorage", 6, 0, (2, 3), (3, 1), legacy=True))])
    return torch_legacy(tmp_path / "l.pt", pkl, [("k1", 6, F32_0_5)], **kw)


def test_legacy_format_reads_values(tmp_path):
    with rio.open(_legacy(tmp_path)) as ck:
        assert ck.format == "pytorch-legacy"
        np.testing.assert_array_equal(ck["w"], np.arange(6, dtype=np.float32).reshape(2, 3))
        assert not ck["w"].flags.owndata  # memory-mapped


@pytest.mark.parametrize("kw, match", [({"protocol": 1000}, "unsupported legacy protocol version 1000"),
                                       ({"little_endian": False}, "big-endian")])
def test_legacy_unsupported_version_and_big_endian_are_refused(tmp_path, kw, match):
    with pytest.raises(RefquantError, match=match):
        rio.open(_legacy(tmp_path, **kw))


def test_legacy_wrong_magic_is_refused(tmp_path):
    from refquant.io.pytorch import TorchLegacyCheckpoint

    with pytest.raises(RefquantError, match="wrong magic"):
        TorchLegacyCheckpoint(_legacy(tmp_path, magic=12345))


def test_legacy_truncated_storage_is_refused(tmp_path):
    p = _legacy(tmp_path)
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(RefquantError, match="truncated|outside the file"):
        rio.open(p)


def test_legacy_element_count_mismatch_is_refused(tmp_path):
    pkl = state_dict([("w", tensor_v2("k1", "FloatStorage", 6, 0, (6,), (1,), legacy=True))])
    p = torch_legacy(tmp_path / "l.pt", pkl, [("k1", 5, F32_0_5)])
    with pytest.raises(RefquantError, match="record holds 5 elements"):
        rio.open(p)


def test_zip_truncated_file_is_refused_naming_the_file(tmp_path):
    p = _zip(tmp_path, [("w", tensor_v2("0", "FloatStorage", 6, 0, (6,), (1,)))], {"0": F32_0_5})
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(RefquantError) as e:
        rio.open(p)
    assert str(p) in str(e.value)


# memo opcodes: BINPUT i / BINGET i (one-byte slot)
def _put(i):
    return b"q" + bytes([i])


def _get(i):
    return b"h" + bytes([i])


def test_container_shared_by_two_names_is_read_under_both_not_called_a_cycle(tmp_path):
    # {"a": [w], "b": <the same list>}: torch.load gives d["b"][0] is d["a"][0];
    # the flattener marked the second visit "<cycle>" and dropped b.0
    w = tensor_v2("0", "FloatStorage", 6, 0, (6,), (1,))
    pkl = (PROTO2 + EMPTY_DICT + UNI("a") + b"]" + _put(0) + w + b"a" + SETITEM
           + UNI("b") + _get(0) + SETITEM + STOP)
    with rio.open(torch_zip(tmp_path / "s.pt", pkl, {"0": F32_0_5})) as ck:
        assert list(ck) == ["a.0", "b.0"]
        assert "b" not in ck.metadata
        np.testing.assert_array_equal(ck["b.0"], np.arange(6, dtype=np.float32))


def test_list_that_contains_itself_is_a_cycle(tmp_path):
    pkl = PROTO2 + EMPTY_DICT + UNI("a") + b"]" + _put(0) + _get(0) + b"a" + SETITEM + STOP
    with rio.open(torch_zip(tmp_path / "c.pt", pkl, {})) as ck:
        assert len(ck) == 0 and ck.metadata["a.0"] == "<cycle>"


def test_tuple_sharing_bomb_is_refused_quickly(tmp_path):
    # t0 = (w,); t_{i+1} = (t_i, t_i): 40 levels, 2**40 paths to w in a ~300-byte
    # pickle. torch.load builds it at once (shared objects); the flattener walked
    # every path (a hang)
    w = tensor_v2("0", "FloatStorage", 6, 0, (6,), (1,))
    body = w + b"\x85" + _put(0) + b"0"  # TUPLE1, BINPUT, POP
    for i in range(40):
        body += _get(i) + _get(i) + b"\x86" + _put(i + 1) + b"0"
    body += _get(40)
    pkl = PROTO2 + EMPTY_DICT + UNI("a") + body + SETITEM + STOP
    with pytest.raises(RefquantError, match="shared"):
        rio.open(torch_zip(tmp_path / "b.pt", pkl, {"0": F32_0_5}))


@pytest.mark.parametrize("what", ["missing", "folder"])
def test_open_torch_on_a_missing_file_or_a_folder_is_a_refquant_error(tmp_path, what):
    # open_torch sniffed the first bytes with a bare open(): FileNotFoundError /
    # IsADirectoryError escaped
    from refquant.io.pytorch import open_torch

    p = tmp_path / "nope.pt" if what == "missing" else tmp_path
    with pytest.raises(RefquantError, match="cannot open"):
        open_torch(p)


def test_one_long_key_repeated_through_the_memo_is_refused(tmp_path):
    # a 64 kB key memoized once and used as the key of 40 dicts: 2.6 MB of names
    # from a 66 kB pickle (a 1 MB key in 100000 dicts: 100 GB from a 1.6 MB file)
    key = "k" * (1 << 16)
    body = PROTO2 + EMPTY_DICT + UNI("a") + b"](" + UNI(key) + _put(0) + b"0"
    body += (EMPTY_DICT + _get(0) + INT(0) + SETITEM) * 40
    pkl = body + b"e" + SETITEM + STOP  # APPENDS, SETITEM
    with pytest.raises(RefquantError, match="names add up"):
        rio.open(torch_zip(tmp_path / "k.pt", pkl, {}))
