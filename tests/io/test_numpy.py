"""refquant.io.numpy: npy headers by hand, npz members memory-mapped, never pickle."""

import struct
import zipfile

import numpy as np
import pytest

import refquant.io as rio
from refquant import RefquantError
from refquant.io.numpy import open_npy, open_npz, save_npz


def _npy(tmp_path, header: str, data: bytes, version=(1, 0), name="a.npy"):
    h = header.encode("latin1")
    pre = 10 if version[0] == 1 else 12
    h += b" " * (-(pre + len(h) + 1) % 64) + b"\n"
    fmt = "<H" if version[0] == 1 else "<I"
    p = tmp_path / name
    p.write_bytes(b"\x93NUMPY" + bytes(version) + struct.pack(fmt, len(h)) + h + data)
    return p


def test_hand_built_npy_header_reads_values(tmp_path):
    p = _npy(tmp_path, "{'descr': '<i2', 'fortran_order': False, 'shape': (2, 2), }", struct.pack("<4h", 1, -2, 3, 4))
    with open_npy(p) as ck:
        np.testing.assert_array_equal(ck["array"], [[1, -2], [3, 4]])
        assert not ck["array"].flags.owndata


def test_fortran_order_is_honoured(tmp_path):
    p = _npy(tmp_path, "{'descr': '<i2', 'fortran_order': True, 'shape': (2, 2), }", struct.pack("<4h", 1, 2, 3, 4))
    with open_npy(p) as ck:
        np.testing.assert_array_equal(ck["array"], [[1, 3], [2, 4]])


def test_version_2_header_with_u32_length(tmp_path):
    p = _npy(tmp_path, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", struct.pack("<f", 2.5), (2, 0))
    with open_npy(p) as ck:
        assert ck["array"][0] == 2.5


@pytest.mark.parametrize(
    "header, data, match",
    [
        ("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", b"\0" * 8, "Python objects"),
        ("{'descr': [('a', '>f4')], 'fortran_order': False, 'shape': (1,), }", b"\0" * 4,
         "big-endian fields"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", b"\0" * 4, "truncated"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", b"\0" * 5, "holds 5"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (1152921504606846976,), }", b"\0" * 4, "needs"),
        ("{'descr': '<f4', 'fortran_order': 0, 'shape': (1,), }", b"\0" * 4, "not a bool"),
        ("__import__('os').system('x')", b"", "not a Python literal"),
        ("{'descr': '<f4', 'shape': (1,), }", b"\0" * 4, "must be a dict"),
        ("{'descr': 'zz', 'fortran_order': False, 'shape': (1,), }", b"\0" * 4, "unreadable dtype"),
    ],
    ids=["object", "big-endian", "truncated", "trailing", "2**60", "fortran-int", "code", "keys", "descr"],
)
def test_bad_npy_headers_are_refused(tmp_path, header, data, match):
    p = _npy(tmp_path, header, data)
    with pytest.raises(RefquantError, match=match) as e:
        open_npy(p)
    assert str(p) in str(e.value)


def test_unsupported_version_and_wrong_magic(tmp_path):
    p = _npy(tmp_path, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", b"\0" * 4, (9, 0))
    with pytest.raises(RefquantError, match="unsupported npy format version 9.0"):
        open_npy(p)
    q = tmp_path / "b.npy"
    q.write_bytes(b"\x93NUMPX\x01\x00")
    with pytest.raises(RefquantError, match="wrong magic"):
        open_npy(q)


def test_npz_stored_members_are_memory_mapped_compressed_are_read(tmp_path):
    a, b = np.arange(5, dtype=np.int32), np.eye(3)
    np.savez(tmp_path / "s.npz", a=a, b=b)
    np.savez_compressed(tmp_path / "c.npz", a=a, b=b)
    with open_npz(tmp_path / "s.npz") as s, open_npz(tmp_path / "c.npz") as c:
        for ck in (s, c):
            np.testing.assert_array_equal(ck["a"], a)
            np.testing.assert_array_equal(ck["b"], b)
        assert not s["a"].flags.owndata


def test_npz_object_member_is_refused(tmp_path):
    np.savez(tmp_path / "o.npz", o=np.array([{"x": 1}], dtype=object))
    with pytest.raises(RefquantError, match="Python objects"):
        open_npz(tmp_path / "o.npz")


def test_npz_non_npy_member_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "x.npz", "w") as z:
        z.writestr("evil.pkl", b"\x80\x02N.")
    with pytest.raises(RefquantError, match="not a .npy"):
        open_npz(tmp_path / "x.npz")


def test_save_npz_round_trips_and_is_detected_by_content(tmp_path):
    p = save_npz({"w": np.arange(4.0)}, tmp_path / "weights.bin")  # extension says nothing
    assert rio.detect_format(p) == "npz"
    with rio.open(p) as ck:
        np.testing.assert_array_equal(ck["w"], np.arange(4.0))
    np.testing.assert_array_equal(np.load(p)["w"], np.arange(4.0))


def test_subarray_descr_is_refused(tmp_path):
    # '(2,)<f4' is a subarray dtype: frombuffer expands it to 6 floats and the
    # reshape to (3,) raised ValueError (np.load cannot read it either)
    p = _npy(tmp_path, "{'descr': '(2,)<f4', 'fortran_order': False, 'shape': (3,), }",
             np.arange(6, dtype="<f4").tobytes())
    with pytest.raises(RefquantError, match="subarray"):
        rio.load_arrays(p)


@pytest.mark.parametrize("tensors, match", [({"a": [[1.0], [1.0, 2.0]]}, "tensor 'a'"), (5, "mapping")])
def test_save_npz_refuses_ragged_lists_and_non_mappings(tmp_path, tensors, match):
    # numpy's ValueError (ragged) and dict(5)'s TypeError escaped
    from refquant.io.numpy import save_npz

    with pytest.raises(RefquantError, match=match):
        save_npz(tensors, tmp_path / "o.npz")
    assert list(tmp_path.iterdir()) == []


def test_save_npz_writes_big_endian_input_little_endian_so_it_reads_back(tmp_path):
    # a '>f4' array was written big-endian, which open() then refused
    a = np.array([1.5, -2.0, 65504.0], dtype=">f4")
    save_npz({"w": a}, tmp_path / "a.npz")
    with rio.open(tmp_path / "a.npz") as ck:
        assert ck["w"].dtype == np.dtype("<f4")
        assert ck["w"].tolist() == [1.5, -2.0, 65504.0]


@pytest.mark.parametrize("name", ["a\x00b", "\ud800"])
def test_save_npz_refuses_names_a_zip_member_cannot_hold(tmp_path, name):
    # 'a\x00b' wrote a member that read back as 'a' (then refused as an unknown
    # layout); '\ud800' raised UnicodeEncodeError
    with pytest.raises(RefquantError, match="NUL or a lone surrogate"):
        save_npz({name: np.ones(2)}, tmp_path / "a.npz")
    assert not (tmp_path / "a.npz").exists()


@pytest.mark.parametrize("dtype", [">f4", ">f8", ">i2", ">u4", ">c8", ">f2"])
@pytest.mark.parametrize("fortran", [False, True])
def test_big_endian_npy_and_npz_read_as_numpy_reads_them(tmp_path, dtype, fortran):
    # np.save keeps the byte order it is given; np.load returns the same values,
    # and so does refquant (in a little-endian copy: a view would keep the byte order)
    a = (np.arange(12).reshape(3, 4) * 1.5 - 7).astype(dtype)
    a = np.asfortranarray(a) if fortran else a
    np.save(tmp_path / "a.npy", a)
    np.savez(tmp_path / "a.npz", w=a)
    np.savez_compressed(tmp_path / "c.npz", w=a)
    want = np.load(tmp_path / "a.npy")
    for path, key in ((tmp_path / "a.npy", None), (tmp_path / "a.npz", "w"), (tmp_path / "c.npz", "w")):
        with rio.open(path) as ck:
            key = key or next(iter(ck))
            got = ck[key]
            assert got.dtype == np.dtype(dtype).newbyteorder("<")
            assert ck.info(key).dtype == got.dtype
            np.testing.assert_array_equal(got, want)
