"""refquant.io.gguf against gguf-py's GGUFWriter / GGUFReader / quants, bit for bit."""

import ml_dtypes
import numpy as np
import pytest
from helpers import import_peer

import refquant.io as rio

pytestmark = pytest.mark.peer


def _writer_file(tmp_path, gguf):
    from gguf import GGMLQuantizationType as T
    from gguf import quants

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 64)).astype(np.float32)
    w = gguf.GGUFWriter(tmp_path / "m.gguf", "llama")
    w.add_uint32("llama.block_count", 2)
    w.add_string("general.name", "tiny")
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    w.add_tensor("f32", x)
    w.add_tensor("f16", x.astype(np.float16))
    w.add_tensor("bf16", x.astype(ml_dtypes.bfloat16).view(np.uint16), raw_shape=x.shape, raw_dtype=T.BF16)
    q = {}
    for t in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0):
        q[t.name] = quants.quantize(x, t)
        w.add_tensor(t.name, q[t.name], raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tmp_path / "m.gguf", x, q


def test_reads_gguf_writer_files_metadata_dims_and_blocks(tmp_path):
    gguf = import_peer("gguf")
    from gguf import GGMLQuantizationType as T
    from gguf import quants

    p, x, q = _writer_file(tmp_path, gguf)
    ref = gguf.GGUFReader(p)
    with rio.open(p) as ck:
        assert ck.metadata["general.name"] == "tiny" and ck.metadata["llama.block_count"] == 2
        assert ck.metadata["tokenizer.ggml.tokens"] == ["a", "b", "c"]
        np.testing.assert_array_equal(ck["f32"], x)
        np.testing.assert_array_equal(ck["f16"], x.astype(np.float16))
        np.testing.assert_array_equal(ck["bf16"], x.astype(ml_dtypes.bfloat16))
        for t in ref.tensors:
            assert ck.info(t.name).stored_dtype == t.tensor_type.name
            np.testing.assert_array_equal(np.asarray(ck[t.name]).reshape(-1).view(np.uint8),
                                          np.asarray(t.data).reshape(-1).view(np.uint8))
        for name, raw in q.items():
            assert ck.info(name).logical_shape == (3, 64)
            np.testing.assert_array_equal(ck.dequantize(name), quants.dequantize(raw, T[name]))


def test_k_quant_blocks_dequantize_like_gguf_py(tmp_path):
    gguf = import_peer("gguf")
    from gguf import GGMLQuantizationType as T
    from gguf import quants

    rng = np.random.default_rng(1)
    blocks = {}
    for t in (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K):
        _, ts = gguf.GGML_QUANT_SIZES[t]
        # random bytes: any fp16 scale, NaN/Inf included (assert_array_equal matches NaN to NaN)
        blocks[t.name] = rng.integers(0, 256, size=(2, 2 * ts), dtype=np.uint8)
    rio.save(blocks, tmp_path / "k.gguf", types={k: k for k in blocks})
    with rio.open(tmp_path / "k.gguf") as ck:
        for name, raw in blocks.items():
            np.testing.assert_array_equal(ck.dequantize(name), quants.dequantize(raw, T[name]))


def test_gguf_reader_reads_refquant_files(tmp_path):
    gguf = import_peer("gguf")
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    rio.save({"a": a, "h": a.astype(np.float16)}, tmp_path / "r.gguf", metadata={"k": "v", "n": 3})
    r = gguf.GGUFReader(tmp_path / "r.gguf")
    t = {x.name: x for x in r.tensors}
    assert list(t["a"].shape) == [4, 3]  # ne order: innermost first
    np.testing.assert_array_equal(np.asarray(t["a"].data).reshape(3, 4), a)
    assert bytes(r.fields["k"].parts[-1]).decode() == "v"
