"""refquant's safetensors reader and writer against the safetensors package, both ways."""

import ml_dtypes
import numpy as np
import pytest
from helpers import import_peer
from hypothesis import given, settings
from hypothesis import strategies as st

import refquant.io as rio
from refquant import RefquantError

pytestmark = pytest.mark.peer

NP_DTYPES = [np.float32, np.float64, np.float16, np.int8, np.uint8, np.int16, np.uint16,
             np.int32, np.uint32, np.int64, np.uint64, np.bool_, np.complex64]


def _tensors():
    rng = np.random.default_rng(0)
    out = {}
    for dt in NP_DTYPES:
        x = rng.normal(size=(3, 5)) * 50
        out[np.dtype(dt).name] = (x > 0) if dt is np.bool_ else x.astype(dt)
    out["bfloat16"] = rng.normal(size=(4, 2)).astype(ml_dtypes.bfloat16)
    out["empty"] = np.zeros((0, 2), np.float32)
    out["scalar"] = np.array(1.5, np.float32)
    return out


def test_package_numpy_api_reads_refquant_files(tmp_path):
    stnp = import_peer("safetensors.numpy")
    t = _tensors()
    p = rio.save(t, tmp_path / "r.safetensors", metadata={"who": "refquant"})
    got = stnp.load_file(p)
    for k, v in t.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
        assert got[k].dtype == v.dtype
    safetensors = import_peer("safetensors")
    with safetensors.safe_open(p, "np") as f:
        assert f.metadata() == {"who": "refquant"}


def test_refquant_reads_package_files(tmp_path):
    stnp = import_peer("safetensors.numpy")
    t = _tensors()
    stnp.save_file(t, tmp_path / "s.safetensors", metadata={"a": "b"})
    with rio.open(tmp_path / "s.safetensors") as ck:
        assert dict(ck.metadata) == {"a": "b"}
        for k, v in t.items():
            np.testing.assert_array_equal(ck[k], v, err_msg=k)


FP8 = {"float8_e4m3fn": ml_dtypes.float8_e4m3fn, "float8_e5m2": ml_dtypes.float8_e5m2,
       "float8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz, "float8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
       "float8_e8m0fnu": ml_dtypes.float8_e8m0fnu}


@pytest.mark.parametrize("name", sorted(FP8))
def test_fp8_both_ways_through_the_torch_api(tmp_path, name):
    torch = import_peer("torch")
    sttorch = import_peer("safetensors.torch")
    codes = np.arange(256, dtype=np.uint8).reshape(16, 16)
    t = torch.from_numpy(codes.copy()).view(getattr(torch, name))
    sttorch.save_file({"w": t}, tmp_path / "t.safetensors")
    with rio.open(tmp_path / "t.safetensors") as ck:
        assert ck["w"].dtype == np.dtype(FP8[name])
        np.testing.assert_array_equal(ck["w"].view(np.uint8), codes)
    rio.save({"w": codes.view(FP8[name])}, tmp_path / "r.safetensors")
    back = sttorch.load_file(tmp_path / "r.safetensors")["w"]
    assert back.dtype == getattr(torch, name)
    np.testing.assert_array_equal(back.view(torch.uint8).numpy(), codes)


def test_fp4_x2_from_torch_is_f4_with_doubled_last_dim(tmp_path):
    torch = import_peer("torch")
    sttorch = import_peer("safetensors.torch")
    if not hasattr(torch, "float4_e2m1fn_x2"):
        pytest.skip("this torch has no float4_e2m1fn_x2")
    packed = np.array([[0x21, 0x43], [0xF0, 0x7E]], np.uint8)
    sttorch.save_file({"w": torch.from_numpy(packed).view(torch.float4_e2m1fn_x2)}, tmp_path / "f4.safetensors")
    with rio.open(tmp_path / "f4.safetensors") as ck:
        w = ck["w"]
        assert w.shape == (2, 4)
        # low nibble first: 0x21 -> codes 1, 2 -> 0.5, 1.0; 0xF0 -> 0, 15 -> 0, -6
        np.testing.assert_array_equal(w.astype(np.float32), [[0.5, 1, 1.5, 2], [0, -6, -4, 6]])
    rio.save({"w": w}, tmp_path / "back.safetensors")
    back = sttorch.load_file(tmp_path / "back.safetensors")["w"]
    np.testing.assert_array_equal(back.view(torch.uint8).numpy(), packed)


def test_package_rejects_what_refquant_rejects_trailing_bytes(tmp_path):
    safetensors = import_peer("safetensors")
    p = rio.save({"w": np.zeros(2, np.float32)}, tmp_path / "t.safetensors")
    p.write_bytes(p.read_bytes() + b"\0")
    with pytest.raises(Exception, match="MetadataIncompleteBuffer|incomplete"):
        safetensors.safe_open(p, "np")
    with pytest.raises(RefquantError, match="trailing"):
        rio.open(p)


def test_an_entry_with_an_extra_field_reads_as_safetensors_reads_it(tmp_path):
    # safetensors' serde struct ignores unknown fields; refquant refused the file
    # ("must hold exactly dtype, shape, data_offsets") though the docstring cites
    # safetensors' own rules
    import json
    import struct

    safetensors = import_peer("safetensors")
    h = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "x": {"n": [1]}}}).encode()
    h += b" " * (-len(h) % 8)
    p = tmp_path / "x.safetensors"
    p.write_bytes(struct.pack("<Q", len(h)) + h + np.array([1.5, -2.0], np.float32).tobytes())
    with safetensors.safe_open(p, "np") as f:
        want = f.get_tensor("w")
    with rio.open(p) as ck:
        np.testing.assert_array_equal(ck["w"], want)
        assert ck["w"].tolist() == [1.5, -2.0]


# ------------------------------------------------------------------ leading whitespace (JSON)

_WS = [b" ", b"\t", b"\n", b"\r", b"\x0b", b"\x0c", b"\xa0"]  # JSON's four, and three it excludes


def _ws_file(path, lead, trail, entries):
    import json
    import struct

    data = b"".join(np.asarray(v, np.float32).tobytes() for v in entries.pop("_values", []))
    h = lead + json.dumps(entries).encode() + trail
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)
    return path


def _both(p):
    """(safetensors' result or 'refused', refquant's result or 'refused') for file ``p``."""
    stnp = import_peer("safetensors.numpy")
    try:
        want = {k: v.tolist() for k, v in stnp.load_file(p).items()}
    except Exception:  # noqa: BLE001 - the package raises SafetensorError and others
        want = "refused"
    try:
        with rio.open(p) as ck:
            got = {k: ck[k].tolist() for k in ck}
    except RefquantError:
        got = "refused"
    return want, got


def test_the_crates_whitespace_padded_empty_header_reads_as_safetensors_reads_it(tmp_path):
    p = tmp_path / "ws.safetensors"
    p.write_bytes(b"\x06\0\0\0\0\0\0\0\t\n{}\r ")
    want, got = _both(p)
    assert want == got == {}


@settings(max_examples=60, deadline=None)
@given(lead=st.lists(st.sampled_from(_WS), max_size=6), trail=st.lists(st.sampled_from(_WS[:4]), max_size=4),
       with_tensor=st.booleans())
def test_whitespace_around_the_header_object_reads_as_safetensors_reads_it(tmp_path_factory, lead, trail,
                                                                          with_tensor):
    entries = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "_values": [[1.5, -2.0]]} \
        if with_tensor else {}
    p = _ws_file(tmp_path_factory.mktemp("ws") / "f.safetensors", b"".join(lead), b"".join(trail), entries)
    want, got = _both(p)
    assert got == want
    json_ws = all(c in (b" ", b"\t", b"\n", b"\r") for c in lead)
    assert (want != "refused") == json_ws  # what the package accepts: exactly JSON whitespace
