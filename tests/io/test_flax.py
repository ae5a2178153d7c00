"""refquant.io.flax on msgpack files built to flax's layout here (flax needs jax, which
is not installed in this environment; the ext codes and chunked form follow
google/flax flax/serialization.py: _MsgpackExtType ndarray=1, native_complex=2,
npscalar=3, and _chunk's {"__msgpack_chunked_array__", "shape", "chunks"})."""

import ml_dtypes
import numpy as np
import pytest

import refquant.io as rio
from refquant import RefquantError

msgpack = pytest.importorskip("msgpack")


def _nd(a):
    return msgpack.ExtType(1, msgpack.packb((a.shape, a.dtype.name, a.tobytes())))


def _chunked(a, chunk):
    flat = a.reshape(-1)
    parts = [flat[i : i + chunk] for i in range(0, flat.size, chunk)]
    return {"__msgpack_chunked_array__": True, "shape": {str(i): d for i, d in enumerate(a.shape)},
            "chunks": {str(i): _nd(p) for i, p in enumerate(parts)}}


def test_flax_state_dict_with_nested_params_scalars_and_chunks(tmp_path):
    k = np.arange(12, dtype=np.float32).reshape(3, 4)
    bf = np.array([1, -2.5], ml_dtypes.bfloat16)
    big = np.arange(10, dtype=np.int32).reshape(2, 5)
    state = {"params": {"Dense_0": {"kernel": _nd(k), "bias": _nd(bf)}, "emb": _chunked(big, 3)},
             "step": msgpack.ExtType(3, msgpack.packb(((), "int64", np.int64(5).tobytes()))),
             "name": "m"}
    p = tmp_path / "flax_model.msgpack"
    p.write_bytes(msgpack.packb(state))
    assert rio.detect_format(p) == "flax"
    with rio.open(p) as ck:
        np.testing.assert_array_equal(ck["params.Dense_0.kernel"], k)
        np.testing.assert_array_equal(ck["params.Dense_0.bias"], bf)
        np.testing.assert_array_equal(ck["params.emb"], big)
        assert ck["step"] == 5 and ck.metadata["name"] == "m"


@pytest.mark.parametrize("leaf, match", [
    (msgpack.ExtType(7, b"x"), "unknown msgpack ext type 7"),
    (msgpack.ExtType(1, msgpack.packb(((2,), "object", b"\0" * 16))), "not in the allowlist"),
    (msgpack.ExtType(1, msgpack.packb(((4,), "float32", b"\0" * 8))), "16 expected"),
    (msgpack.ExtType(1, msgpack.packb(((2**60,), "float32", b""))), "expected"),
])
def test_unknown_ext_types_dtypes_and_lying_sizes_are_refused(tmp_path, leaf, match):
    p = tmp_path / "f.msgpack"
    p.write_bytes(msgpack.packb({"w": leaf}))
    with pytest.raises(RefquantError, match=match):
        rio.open(p)
