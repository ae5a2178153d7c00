"""refquant.io.onnx against onnx.save (inline and external data)."""

import ml_dtypes
import numpy as np
import pytest
from helpers import import_peer

import refquant.io as rio
from refquant import RefquantError

pytestmark = pytest.mark.peer


def _model(onnx, inits):
    from onnx import helper, numpy_helper

    tensors = [numpy_helper.from_array(a, name=n) for n, a in inits.items()]
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y], initializer=tensors)
    return helper.make_model(g, producer_name="refquant-test")


INITS = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.array([1, -2], np.int8),
         "h": np.array([0.5, 65504], np.float16), "bf": np.array([1.5, -3], ml_dtypes.bfloat16),
         "f8": np.array([448, -0.5], ml_dtypes.float8_e4m3fn)}


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external"])
def test_initializers_read_bit_for_bit(tmp_path, external):
    onnx = import_peer("onnx")
    m = _model(onnx, INITS)
    p = tmp_path / "model.onnx"
    onnx.save(m, p, save_as_external_data=external, all_tensors_to_one_file=True, location="weights.bin",
              size_threshold=0)
    assert rio.detect_format(p) == "onnx"
    with rio.open(p) as ck:
        assert ck.metadata["producer_name"] == "refquant-test"
        for k, v in INITS.items():
            assert ck[k].dtype == v.dtype, k
            np.testing.assert_array_equal(ck[k].view(np.uint8), v.view(np.uint8), err_msg=k)
        if external:
            assert not ck["w"].flags.owndata


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd"])
def test_external_location_outside_the_model_folder_is_refused(tmp_path, location):
    onnx = import_peer("onnx")
    sub = tmp_path / "m"
    sub.mkdir()
    (tmp_path / "outside.bin").write_bytes(bytes(48))
    m = _model(onnx, {"w": np.zeros((3, 4), np.float32)})
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "48")):
        e = t.external_data.add()
        e.key, e.value = k, v
    onnx.save(m, sub / "model.onnx")
    with pytest.raises(RefquantError, match="outside the model's folder|absolute"):
        rio.open(sub / "model.onnx")


def test_external_length_that_lies_is_refused(tmp_path):
    onnx = import_peer("onnx")
    m = _model(onnx, {"w": np.zeros((3, 4), np.float32)})
    onnx.save(m, tmp_path / "model.onnx", save_as_external_data=True, location="w.bin", size_threshold=0)
    (tmp_path / "w.bin").write_bytes(bytes(20))
    with pytest.raises(RefquantError, match="outside the file"):
        rio.open(tmp_path / "model.onnx")


def test_external_location_with_a_nul_byte_is_refused(tmp_path):
    # Path.resolve() raised ValueError("embedded null byte")
    onnx = import_peer("onnx")
    m = _model(onnx, {"w": np.zeros((3, 4), np.float32)})
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", "w\x00.bin"), ("offset", "0"), ("length", "48")):
        e = t.external_data.add()
        e.key, e.value = k, v
    onnx.save(m, tmp_path / "model.onnx")
    with pytest.raises(RefquantError, match="NUL"):
        rio.open(tmp_path / "model.onnx")


@pytest.mark.parametrize("word", [b"weights.bin", b"wname", b"prodname", b"mkey", b"mval"])
def test_string_field_that_is_not_utf8_is_refused(tmp_path, word):
    # protobuf's Python runtime returns bytes for a string field holding invalid
    # UTF-8: an external location b'\xffeights.bin' raised TypeError ("\0" in loc);
    # a bytes initializer name became a bytes key, bytes metadata passed through
    onnx = import_peer("onnx")
    from onnx import helper

    m = _model(onnx, {"wname": np.arange(3, dtype=np.float32)})
    m.producer_name = "prodname"
    helper.set_model_props(m, {"mkey": "mval"})
    onnx.save(m, tmp_path / "m.onnx", save_as_external_data=True, location="weights.bin", size_threshold=0)
    raw = (tmp_path / "m.onnx").read_bytes()
    assert raw.count(word) == 1
    (tmp_path / "m.onnx").write_bytes(raw.replace(word, b"\xff" + word[1:]))
    with pytest.raises(RefquantError, match="not valid UTF-8"):
        rio.open(tmp_path / "m.onnx")
