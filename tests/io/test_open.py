"""refquant.io.open / save / load_arrays: detection by content, atomic writes, folders."""

import json
import os

import numpy as np
import pytest

import refquant.io as rio
from refquant import RefquantError


def test_detection_ignores_the_extension(tmp_path):
    p = rio.save({"w": np.ones(2, np.float32)}, tmp_path / "w.safetensors")
    q = tmp_path / "looks_like.pt"
    os.replace(p, q)
    assert rio.detect_format(q) == "safetensors"
    with rio.open(q) as ck:
        np.testing.assert_array_equal(ck["w"], [1, 1])


@pytest.mark.parametrize("content, match", [(b"", "empty file"), (b"\x00\x01garbage" * 3, "unrecognised"),
                                            (b"PK\x03\x04junk", "zip archive unreadable")])
def test_unknown_content_is_refused_naming_the_file(tmp_path, content, match):
    p = tmp_path / "x.bin"
    p.write_bytes(content)
    with pytest.raises(RefquantError, match=match) as e:
        rio.open(p)
    assert str(p) in str(e.value)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(RefquantError, match="cannot open"):
        rio.open(tmp_path / "nope.safetensors")


def test_save_refuses_to_replace_unless_asked(tmp_path):
    p = tmp_path / "w.safetensors"
    rio.save({"w": np.zeros(1)}, p)
    with pytest.raises(RefquantError, match="exists; pass overwrite=True"):
        rio.save({"w": np.ones(1)}, p)
    rio.save({"w": np.ones(1)}, p, overwrite=True)
    assert rio.load_arrays(p, "w")[0] == 1


def test_save_never_overwrites_an_input_still_being_read(tmp_path):
    p = tmp_path / "w.safetensors"
    rio.save({"w": np.arange(3.0)}, p)
    with rio.open(p) as ck:
        with pytest.raises(RefquantError, match="still open for reading"):
            rio.save({"w": ck["w"] * 2}, p, overwrite=True)
    rio.save({"w": np.zeros(3)}, p, overwrite=True)  # closed: allowed


def test_failed_write_leaves_no_temporary_file_and_keeps_the_old_one(tmp_path):
    p = tmp_path / "w.safetensors"
    rio.save({"w": np.arange(3.0)}, p)
    with pytest.raises(RefquantError):
        rio.save({"w": np.zeros(3, object)}, p, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["w.safetensors"]
    np.testing.assert_array_equal(rio.load_arrays(p, "w"), np.arange(3.0))


def test_save_format_from_suffix_or_argument(tmp_path):
    with pytest.raises(RefquantError, match="cannot tell the format"):
        rio.save({"w": np.zeros(1)}, tmp_path / "w.xyz")
    with pytest.raises(RefquantError, match="format='bogus'"):
        rio.save({"w": np.zeros(1)}, tmp_path / "w.xyz", format="bogus")
    rio.save({"w": np.zeros(1)}, tmp_path / "w.xyz", format="npz")
    assert rio.detect_format(tmp_path / "w.xyz") == "npz"


def test_load_arrays_key_missing_lists_names(tmp_path):
    p = rio.save({"a": np.zeros(1), "b": np.zeros(1)}, tmp_path / "w.safetensors")
    with pytest.raises(RefquantError, match="key 'c' is not in .* it holds \\['a', 'b'\\]"):
        rio.load_arrays(p, "c")
    assert set(rio.load_arrays(p)) == {"a", "b"}


def test_hugging_face_folder_opens_its_weights_and_config(tmp_path):
    rio.save({"w": np.zeros(2, np.float32)}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mlp"}))
    with rio.open(tmp_path) as ck:
        assert list(ck) == ["w"] and ck.metadata["config"]["model_type"] == "mlp"


def test_shard_outside_the_index_folder_is_refused(tmp_path):
    sub = tmp_path / "m"
    sub.mkdir()
    rio.save({"w": np.zeros(1)}, tmp_path / "outside.safetensors")
    (sub / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../outside.safetensors"}}))
    with pytest.raises(RefquantError, match="outside the index's folder"):
        rio.open(sub / "model.safetensors.index.json")


def test_index_naming_a_missing_tensor_is_refused(tmp_path):
    rio.save({"w": np.zeros(1)}, tmp_path / "a.safetensors")
    (tmp_path / "i.json").write_text(json.dumps({"weight_map": {"v": "a.safetensors"}}))
    with pytest.raises(RefquantError, match="tensor 'v' is not in its shard"):
        rio.open(tmp_path / "i.json")


def test_quant_schemes_recognise_naming_conventions(tmp_path):
    t = {
        "l.weight": np.zeros((2, 2), np.int8), "l.weight_scale": np.ones(2, np.float32),
        "g.qweight": np.zeros((2, 2), np.int32), "g.scales": np.ones(2, np.float16),
        "g.qzeros": np.zeros((1, 1), np.int32), "g.g_idx": np.zeros(2, np.int32),
        "c.weight_packed": np.zeros((2, 1), np.int32),
        "p.weight": np.zeros(2, np.float32),
    }
    p = rio.save(t, tmp_path / "q.safetensors")
    with rio.open(p) as ck:
        s = rio.quant_schemes(ck)
    assert s["l.weight"] == "int8 weight + weight_scale"
    assert s["l.weight_scale"] == "scale of l.weight"
    assert s["g.qweight"].startswith("GPTQ int4")
    assert s["g.qzeros"] == "packed zero points of g.qweight"
    assert s["c.weight_packed"].startswith("compressed-tensors")
    assert s["p.weight"] is None


@pytest.mark.parametrize("module, extra, build", [
    ("onnx", "refquant[onnx]", lambda p: p.write_bytes(b"\x08\x07\x12\x04test")),
    ("msgpack", "refquant[flax]", lambda p: p.write_bytes(b"\x81\xa1a\x01")),
    ("h5py", "refquant[keras]", lambda p: p.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))),
])
def test_missing_optional_package_names_the_extra(tmp_path, monkeypatch, module, extra, build):
    import sys

    p = tmp_path / "f.bin"
    build(p)
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(RefquantError, match=extra.replace("[", "\\[").replace("]", "\\]")):
        rio.open(p)


def test_gguf_writer_missing_names_the_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(RefquantError, match="refquant\\[gguf\\]"):
        rio.save({"w": np.zeros(2, np.float32)}, tmp_path / "w.gguf")


def test_index_naming_itself_or_another_index_as_a_shard_is_refused(tmp_path):
    # the index opened itself recursively until RecursionError, reported as
    # "index is not valid JSON: maximum recursion depth exceeded"
    idx = tmp_path / "model.safetensors.index.json"
    idx.write_text(json.dumps({"weight_map": {"w": "model.safetensors.index.json"}}))
    with pytest.raises(RefquantError, match="is itself an index"):
        rio.open(idx)
    (tmp_path / "b.index.json").write_text(json.dumps({"weight_map": {"w": "model.safetensors.index.json"}}))
    idx.write_text(json.dumps({"weight_map": {"w": "b.index.json"}}))
    with pytest.raises(RefquantError, match="is itself an index"):
        rio.open(idx)


def test_shard_name_with_a_nul_byte_is_refused(tmp_path):
    # Path.resolve() raised ValueError("embedded null byte")
    idx = tmp_path / "model.safetensors.index.json"
    idx.write_text(json.dumps({"weight_map": {"w": "w\u0000.safetensors"}}))
    with pytest.raises(RefquantError, match="NUL"):
        rio.open(idx)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
@pytest.mark.parametrize("fmt", ["safetensors", "npz", "gguf"])
def test_a_folder_that_takes_no_files_is_a_refquant_error(fmt):
    # tempfile.mkstemp in /proc raised FileNotFoundError from every writer
    with pytest.raises(RefquantError, match="cannot create a file"):
        rio.save({"a": np.ones(2, np.float32)}, f"/proc/refquant-test.{fmt}")


def test_a_truncated_safetensors_file_is_reported_as_truncated(tmp_path):
    # a 100-byte prefix of a real file was "unrecognised checkpoint format"
    p = rio.save({"w": np.ones((64, 64), np.float32)}, tmp_path / "m.safetensors")
    cut = tmp_path / "cut.safetensors"
    for n in (40, 100):
        cut.write_bytes(p.read_bytes()[:n])
        with pytest.raises(RefquantError, match="truncated"):
            rio.open(cut)
