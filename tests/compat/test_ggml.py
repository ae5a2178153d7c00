"""refquant.compat.ggml: ggml type names and ids, row layout, and bad input."""

from __future__ import annotations

import enum

import numpy as np
import pytest
from helpers import REQUIRE_PEERS

from refquant import RefquantError
from refquant.compat import ggml
from refquant.formats import get_format


class _GGMLType(enum.IntEnum):  # a stand-in for gguf.GGMLQuantizationType (an IntEnum)
    Q4_K = 12


def test_type_ids_are_those_of_enum_ggml_type():
    # ggml/include/ggml.h: GGML_TYPE_Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, ..., IQ4_NL = 20, IQ4_XS = 23,
    # TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39 (checked against the installed header in
    # tests/peers/test_ggml_libggml.py)
    assert ggml.GGML_TYPES == {
        "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q8_1": 9, "Q2_K": 10, "Q3_K": 11,
        "Q4_K": 12, "Q5_K": 13, "Q6_K": 14, "Q8_K": 15, "TQ1_0": 34, "TQ2_0": 35, "MXFP4": 39,
        "IQ4_NL": 20, "IQ4_XS": 23, "IQ2_XXS": 16, "IQ2_XS": 17, "IQ3_XXS": 18, "IQ1_S": 19,
        "IQ3_S": 21, "IQ2_S": 22, "IQ1_M": 29,
    }  # fmt: skip


@pytest.mark.parametrize("spelling", ["q4_K", "Q4_K", "q4_k", 12, np.int64(12), _GGMLType.Q4_K])
def test_type_names_are_case_insensitive_and_ids_work(spelling):
    assert ggml.resolve_type(spelling) is get_format("q4_k")


def test_mxfp4_in_compat_ggml_means_ggmls_mxfp4():
    assert ggml.resolve_type("mxfp4") is get_format("ggml_mxfp4")
    assert ggml.resolve_type("MXFP4") is ggml.resolve_type(39)


def test_quantize_returns_row_major_bytes_of_each_row():
    x = np.random.default_rng(0).standard_normal((2, 3, 64)).astype(np.float32)
    raw = ggml.quantize(x, "q4_0")
    assert raw.shape == (2, 3, 36) and raw.dtype == np.uint8
    blocks = get_format("q4_0").quantize_blocks(x.reshape(-1, 32))
    assert np.array_equal(raw.reshape(-1, 18), blocks)
    assert (
        ggml.row_size("q4_0", 64) == 36
        and ggml.type_size("q4_k") == 144
        and ggml.block_size("q6_K") == 256
    )


def test_dequantize_restores_the_shape():
    x = np.random.default_rng(1).standard_normal((4, 512)).astype(np.float32)
    y = ggml.dequantize(ggml.quantize(x, "q4_k"), "q4_k", (4, 512))
    assert y.shape == (4, 512) and y.dtype == np.float32
    assert np.abs(y - x).max() < 0.25  # 4-bit codes with per-32 scales on N(0, 1) data


def test_float64_input_is_rounded_to_float32_first():
    x = np.random.default_rng(2).standard_normal(256)
    assert np.array_equal(ggml.quantize(x, "q3_k"), ggml.quantize(x.astype(np.float32), "q3_k"))


def test_row_length_not_a_multiple_of_the_block_is_refused():
    with pytest.raises(
        RefquantError, match=r"^row size 70 is not a multiple of q4_0 block size 32$"
    ):
        ggml.quantize(np.zeros(70, np.float32), "q4_0")
    with pytest.raises(
        RefquantError, match="row size 128 is not a multiple of q4_k block size 256"
    ):
        ggml.quantize(np.zeros((2, 128), np.float32), "q4_k")
    with pytest.raises(RefquantError, match="row size 48 is not a multiple of mxfp4 block size 32"):
        ggml.dequantize(np.zeros(34, np.uint8), "mxfp4", (2, 48))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_refused_with_its_index(bad):
    x = np.zeros((2, 32), np.float32)
    x[1, 7] = bad
    with pytest.raises(RefquantError, match=r"non-finite value at index \(1, 7\)"):
        ggml.quantize(x, "q8_0")


def test_unknown_type_lists_the_known_types():
    with pytest.raises(
        RefquantError, match=r"unknown ggml type 'q4_2'; known types .*Q4_0 \(2\).*MXFP4 \(39\)"
    ):
        ggml.quantize(np.zeros(32), "q4_2")
    with pytest.raises(RefquantError, match="unknown ggml type 1"):
        ggml.resolve_type(1)  # F16 is not a block format


def test_raw_of_the_wrong_size_is_refused():
    with pytest.raises(
        RefquantError, match=r"raw has 35 bytes but shape \(2, 32\) in q4_0 needs 36"
    ):
        ggml.dequantize(np.zeros(35, np.uint8), "q4_0", (2, 32))
    with pytest.raises(RefquantError, match="raw must be uint8 bytes"):
        ggml.dequantize(np.zeros(36, np.int8), "q4_0", (2, 32))
    with pytest.raises(RefquantError, match="shape must be"):
        ggml.dequantize(np.zeros(36, np.uint8), "q4_0", ())


def test_q8_1_has_no_ggml_dequantizer():
    raw = ggml.quantize(np.ones(32), "q8_1")
    with pytest.raises(RefquantError, match="ggml has no dequantize_row_q8_1"):
        ggml.dequantize(raw, "q8_1", (32,))


def test_libggml_path_that_does_not_exist_is_refused(tmp_path):
    with pytest.raises(RefquantError, match="path: no libggml-base at"):
        ggml.LibGGML(tmp_path / "nothing.so")


def test_row_size_and_shape_must_be_integers():
    for n in ("x", None, 32.5):
        with pytest.raises(RefquantError, match="n_per_row must be an integer"):
            ggml.row_size("q4_0", n)
    assert ggml.row_size("q4_0", np.int64(64)) == 36
    for shape in ((32.7,), (1, "32"), "32", (None,)):
        with pytest.raises(RefquantError, match="shape must be a tuple of ints"):
            ggml.dequantize(np.zeros(18, np.uint8), "q4_0", shape)
    assert ggml.dequantize(np.zeros(18, np.uint8), "q4_0", np.int64(32)).shape == (32,)


def test_a_finite_float64_beyond_float32_is_named_as_such():
    # 1e300 is finite: the error used to say "non-finite value" (it becomes Inf in float32)
    with pytest.raises(RefquantError, match=r"1e\+300 at index \(3,\), which overflows float32"):
        ggml.quantize(np.r_[np.zeros(3), 1e300, np.zeros(28)], "q4_0")


def test_ragged_input_is_refused():
    # np.asarray of a ragged list raised NumPy's ValueError
    with pytest.raises(RefquantError, match="x must be"):
        ggml.quantize([[1.0], [1.0, 2.0]], "q4_0")
    with pytest.raises(RefquantError, match="raw must be"):
        ggml.dequantize([[1], [1, 2]], "q4_0", (32,))


def test_libggml_refuses_what_it_cannot_call(tmp_path):
    # a file that is not a shared library raised OSError; dequantize_row for Q8_1 (which ggml
    # lacks) raised AttributeError from ctypes
    (tmp_path / "fake.so").write_bytes(b"not an ELF file")
    with pytest.raises(RefquantError, match="path: cannot load"):
        ggml.LibGGML(tmp_path / "fake.so")
    path = ggml.libggml_paths().get("libggml-python")
    if path is None:  # CI installs it (the peers extra)
        if REQUIRE_PEERS:
            pytest.fail("peer 'libggml-python' is required (REFQUANT_REQUIRE_PEERS=1)")
        pytest.skip("libggml-python (libggml-base) is not installed")
    with pytest.raises(RefquantError, match="dequantize_row_q8_1"):
        ggml.LibGGML(path).dequantize_row(np.zeros(36, np.uint8), "q8_1")


def test_libggml_paths_finds_packages_without_importing_them(monkeypatch, tmp_path):
    # libggml_paths locates libggml-python's lib64/ and llama-cpp-python's lib/ copies through
    # importlib.util.find_spec only: neither package's module may end up imported
    import sys

    for module, rel in (("libggml", "lib64"), ("llama_cpp", "lib")):
        pkg = tmp_path / module
        (pkg / rel).mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('imported')\n")
        (pkg / rel / "libggml-base.so").write_bytes(b"")
    monkeypatch.syspath_prepend(str(tmp_path))
    for module in ("libggml", "llama_cpp"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    found = ggml.libggml_paths()
    assert list(found) == ["libggml-python", "llama-cpp-python"]
    assert found["libggml-python"] == str(tmp_path / "libggml" / "lib64" / "libggml-base.so")
    assert found["llama-cpp-python"] == str(tmp_path / "llama_cpp" / "lib" / "libggml-base.so")
    assert "libggml" not in sys.modules and "llama_cpp" not in sys.modules
    # LibGGML() takes the first: libggml-python's (here an empty file, so it cannot load)
    with pytest.raises(RefquantError, match=r"path: cannot load .*libggml.*lib64"):
        ggml.LibGGML()


def test_rows_of_zero_weights_are_empty_like_ggml_row_size():
    # ggml_row_size(GGML_TYPE_Q4_0, 0) is 0; refquant raised "row size 0 is not a multiple of
    # q4_0 block size 32" (0 is a multiple)
    assert ggml.row_size("q4_0", 0) == 0
    raw = ggml.quantize(np.zeros((5, 0), np.float32), "q4_k")
    assert raw.shape == (5, 0) and raw.dtype == np.uint8
    assert ggml.dequantize(raw, "q4_k", (5, 0)).shape == (5, 0)
    with pytest.raises(RefquantError, match="row size -32"):
        ggml.row_size("q4_0", -32)


def test_bfloat16_and_float8_inputs_are_real_numbers():
    # "x must be a real array, got dtype bfloat16": ml_dtypes floats convert to float32 exactly
    import ml_dtypes

    x = np.linspace(-1, 1, 64).astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(ggml.quantize(x, "q4_0"), ggml.quantize(x.astype(np.float32), "q4_0"))
    fmt = get_format("q8_0")
    for d in (ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2):  # NumPy kinds "V" and "f"
        x8 = np.linspace(-1, 1, 32).astype(d).reshape(1, 32)
        np.testing.assert_array_equal(fmt.quantize_blocks(x8), fmt.quantize_blocks(x8.astype(np.float32)))
    with pytest.raises(RefquantError, match="real array"):
        ggml.quantize(np.zeros(32, "V4"), "q4_0")
