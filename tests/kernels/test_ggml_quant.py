"""Numba kernels for ggml's block formats: bit for bit the NumPy reference, and libggml.

The NumPy reference (``backend="numpy"``, :mod:`refquant.formats.ggml`) defines the
bytes; the kernels (``backend="cpu"``) must give the same bytes on every drawn block,
and libggml's own C reference the same bytes again on a bigger random sample.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import REQUIRE_PEERS
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refquant import RefquantError
from refquant.compat import ggml
from refquant.formats import get_format, list_formats
from refquant.formats.ggml import GGMLBlockFormat

BLOCK_FORMATS = [n for n in list_formats("block") if isinstance(get_format(n), GGMLBlockFormat)]
KERNEL_FORMATS = [n for n in BLOCK_FORMATS if get_format(n).has_kernel]
F32_MAX = np.finfo(np.float32).max
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _kernels():
    from refquant.kernels.cpu import ggml_quant

    return ggml_quant


def _bad_blocks(actual, desired):
    """Blocks that differ bit for bit (float32 compared as bits; any NaN matches any NaN)."""
    a, d = np.ascontiguousarray(actual), np.ascontiguousarray(desired)
    assert a.shape == d.shape and a.dtype == d.dtype
    if a.dtype == np.float32:
        both_nan = np.isnan(a) & np.isnan(d)
        return np.flatnonzero(np.any((a.view(np.uint32) != d.view(np.uint32)) & ~both_nan, axis=1))
    return np.flatnonzero(np.any(a != d, axis=1))


def _drawn_kind(rng, kind, n, bs, draw=None):
    """n blocks of one kind: the cases where ggml's rounding, ties and scale edge cases live."""
    if kind == "grid":  # exact ties for every rounding rule
        return (rng.integers(-20, 21, (n, bs)) * np.float32(rng.choice([0.0625, 0.25, 1.0, 3.0])))
    if kind == "zero":
        return np.zeros((n, bs), np.float32)
    if kind == "equal":
        return np.full((n, bs), np.float32(rng.uniform(-1e5, 1e5)), np.float32)
    if kind == "sparse":
        x = np.zeros((n, bs), np.float32)
        idx = rng.integers(0, n * bs, rng.integers(0, 7))
        x.reshape(-1)[idx] = rng.uniform(-1e3, 1e3, idx.size)
        return x
    x = rng.standard_normal((n, bs)).astype(np.float32)
    if kind == "scaled":  # subnormal scales that underflow in fp16 / float32, up to fp16 Inf
        x = x * np.float32(10.0 ** rng.integers(-44, 33))
    elif kind == "subnormal":  # float32 subnormals mixed with ordinary values
        x[rng.random((n, bs)) < 0.5] *= np.float32(1e-40)
    elif kind in ("pm_max", "huge"):  # +m and -m in one block: which sign the scale takes
        m = F32_MAX if kind == "huge" else np.float32(rng.choice([1.0, 7.5, 1e4]))
        if kind == "huge":
            x = x * np.float32(1e37)
        x = np.clip(x, -m, m)
        for row in x:
            i, j = rng.choice(bs, 2, replace=False)
            row[i], row[j] = m, -m
    return x


KINDS = ["normal", "grid", "scaled", "subnormal", "sparse", "equal", "zero", "pm_max", "huge"]


def _rows_ggml_survives(fmt, x):
    """The blocks refquant quantizes; IQ3_XXS / IQ3_S refuse (RefquantError) those on which ggml
    aborts (GGML_ASSERT on a float32 overflow, tests/peers/test_ggml_iq_libggml.py), and
    must refuse the same ones on both backends."""
    keep = []
    for row in x:
        try:
            fmt.quantize_blocks(row[None], backend="cpu")
            keep.append(True)
        except RefquantError:
            with pytest.raises(RefquantError):
                fmt.quantize_blocks(row[None], backend="numpy")
            keep.append(False)
    return x[np.array(keep, bool)]


@st.composite
def blocks(draw, bs):
    """1-4 blocks of one kind, every zero then given a drawn sign (mixed-sign zero blocks)."""
    n = draw(st.integers(1, 4))
    kind = draw(st.sampled_from(KINDS))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    with np.errstate(over="ignore"):
        x = np.asarray(_drawn_kind(rng, kind, n, bs), dtype=np.float32)
    x[~np.isfinite(x)] = F32_MAX
    zeros = np.flatnonzero(x == 0)
    if zeros.size:
        signs = draw(hnp.arrays(np.bool_, zeros.size))
        x.reshape(-1)[zeros[signs]] = -0.0
    return x


# fp16 scale bit patterns (±Inf, NaNs, ±max, smallest subnormal, -0, 1) for the dequantizers
_F16_SPECIAL = [0x7C00, 0xFC00, 0x7E00, 0x7D01, 0x7BFF, 0xFBFF, 0x0001, 0x8000, 0x3C00]


@st.composite
def raw_blocks(draw, fmt):
    """Any bytes, with an fp16 special value written at a drawn even offset of some blocks."""
    n = draw(st.integers(1, 4))
    raw = draw(hnp.arrays(np.uint8, (n, fmt.type_size)))
    for row in raw:
        if draw(st.booleans()):
            off = draw(st.integers(0, fmt.type_size // 2 - 1)) * 2
            row[off : off + 2] = np.array([draw(st.sampled_from(_F16_SPECIAL))], "<u2").view(np.uint8)
    return raw


# ----------------------------------------------------------------------------- numpy vs cpu
@pytest.mark.parametrize("name", KERNEL_FORMATS)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_cpu_quantize_is_bit_exact_with_the_numpy_reference(name, data):
    fmt = get_format(name)
    x = data.draw(blocks(fmt.block_size))
    try:
        ref = fmt.quantize_blocks(x, backend="numpy")
    except RefquantError:  # an input on which ggml aborts (IQ3: float32 overflow): both refuse
        with pytest.raises(RefquantError, match="ggml aborts"):
            fmt.quantize_blocks(x, backend="cpu")
        return
    bad = _bad_blocks(fmt.quantize_blocks(x, backend="cpu"), ref)
    assert bad.size == 0, f"{name}: blocks {bad.tolist()} differ from the NumPy reference"


@pytest.mark.parametrize("name", KERNEL_FORMATS)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_cpu_dequantize_is_bit_exact_with_the_numpy_reference_on_any_bytes(name, data):
    fmt = get_format(name)
    raw = data.draw(raw_blocks(fmt))
    ref = fmt.dequantize_blocks(raw, backend="numpy")
    bad = _bad_blocks(fmt.dequantize_blocks(raw, backend="cpu"), ref)
    assert bad.size == 0, f"{name}: blocks {bad.tolist()} differ from the NumPy reference"


@pytest.mark.parametrize("name", BLOCK_FORMATS)
def test_every_registered_ggml_format_has_a_kernel_or_says_it_has_none(name):
    # a ggml type is checked the moment it registers: either its kernels agree with the
    # reference on a random sample of every kind, or backend="cpu" refuses and "auto" falls back
    fmt = get_format(name)
    rng = np.random.default_rng(7)
    x = np.concatenate([_drawn_kind(rng, k, 3, fmt.block_size) for k in KINDS]).astype(np.float32)
    x[~np.isfinite(x)] = F32_MAX
    kern = _kernels()
    assert (name in kern.QUANTIZE_KERNELS) == fmt.has_kernel
    assert (name in kern.DEQUANTIZE_KERNELS) == fmt.has_kernel
    if not fmt.has_kernel:
        with pytest.raises(RefquantError, match="no Numba kernel"):
            if hasattr(fmt, "requires_imatrix"):  # IQ2 / IQ1: a quantize kernel of their own
                fmt.dequantize_blocks(np.zeros((1, fmt.type_size), np.uint8), backend="cpu")
            fmt.quantize_blocks(x, backend="cpu")
        from refquant.formats.ggml import KERNEL_THRESHOLD

        assert fmt._backend("auto", 10 * KERNEL_THRESHOLD) == "numpy"
        return
    x = _rows_ggml_survives(fmt, x)
    ref = fmt.quantize_blocks(x, backend="numpy")
    assert _bad_blocks(fmt.quantize_blocks(x, backend="cpu"), ref).size == 0
    deq = fmt.dequantize_blocks(ref, backend="numpy")
    assert _bad_blocks(fmt.dequantize_blocks(ref, backend="cpu"), deq).size == 0


def test_empty_input_gives_empty_output_on_the_cpu_backend():
    fmt = get_format("q4_k")
    assert fmt.quantize_blocks(np.zeros((0, 256), np.float32), backend="cpu").shape == (0, 144)
    assert fmt.dequantize_blocks(np.zeros((0, 144), np.uint8), backend="cpu").shape == (0, 256)


def test_auto_runs_the_kernel_above_the_threshold_and_the_env_forces_numpy(monkeypatch):
    from refquant.formats.ggml import KERNEL_THRESHOLD

    fmt = get_format("q8_0")
    assert fmt._backend("auto", KERNEL_THRESHOLD) == "cpu"
    assert fmt._backend("auto", KERNEL_THRESHOLD - 1) == "numpy"
    monkeypatch.setenv("REFQUANT_BACKEND", "numpy")
    assert fmt._backend("cpu", KERNEL_THRESHOLD) == "numpy"
    with pytest.raises(RefquantError, match="backend must be one of"):
        fmt.quantize_blocks(np.zeros((1, 32), np.float32), backend="gpu")


def test_compat_quantize_and_dequantize_take_the_backend():
    x = np.random.default_rng(3).standard_normal((4, 512)).astype(np.float32)
    raw = ggml.quantize(x, "Q4_K", backend="cpu")
    np.testing.assert_array_equal(raw, ggml.quantize(x, "Q4_K", backend="numpy"))
    np.testing.assert_array_equal(
        ggml.dequantize(raw, "Q4_K", x.shape, backend="cpu").view(np.uint32),
        ggml.dequantize(raw, "Q4_K", x.shape, backend="numpy").view(np.uint32),
    )


# ----------------------------------------------------------------------------- libggml
@pytest.fixture(scope="module")
def lib():
    path = ggml.libggml_paths().get("libggml-python")
    if path is None:
        if REQUIRE_PEERS:
            pytest.fail("peer 'libggml-python' is required (REFQUANT_REQUIRE_PEERS=1) but missing")
        pytest.skip("libggml-python (libggml-base) is not installed")
    return ggml.LibGGML(path)


@pytest.mark.parametrize("name", KERNEL_FORMATS)
def test_cpu_kernels_give_libggml_bytes_on_a_bigger_random_sample(lib, name):
    fmt = get_format(name)
    rng = np.random.default_rng(11)
    n = 4096 // fmt.block_size * 8  # 32K weights of every kind
    with np.errstate(over="ignore"):
        x = np.concatenate([_drawn_kind(rng, k, n // len(KINDS) + 1, fmt.block_size) for k in KINDS])
    x = np.asarray(x, dtype=np.float32)
    x[~np.isfinite(x)] = F32_MAX
    x = _rows_ggml_survives(fmt, x)  # libggml would abort this process on the others
    ours = fmt.quantize_blocks(x, backend="cpu")
    theirs = lib.quantize_row(x, name)
    if name == "iq4_nl":  # the ref leaves the codes of a block with max|x| < 1e-15 undefined
        small = np.abs(x).max(axis=1) < 1e-15
        np.testing.assert_array_equal(ours[small, :2], theirs[small, :2])
        theirs[small, 2:] = ours[small, 2:]
    bad = _bad_blocks(ours, theirs)
    assert bad.size == 0, f"{name}: {bad.size}/{x.shape[0]} blocks differ from libggml, first {bad[:5]}"
    if fmt.has_dequantize:
        bad = _bad_blocks(fmt.dequantize_blocks(ours, backend="cpu"), lib.dequantize_row(ours, name))
        assert bad.size == 0, f"{name}: dequantize differs from libggml on blocks {bad[:5]}"


# ----------------------------------------------------------------------------- codegen
def _fresh_asm(kernel, *args):
    """The machine code of ``kernel`` compiled anew (cached code cannot be inspected)."""
    import numba

    fresh = numba.njit(error_model="numpy", parallel=True)(kernel.py_func)
    fresh(*args)
    return "\n".join(fresh.inspect_asm().values())


@pytest.mark.parametrize("name", ["q4_k", "q6_k", "q3_k", "q4_0", "q4_1", "q8_0", "q8_k"])
def test_kernels_have_no_contracted_fma(name):
    # libggml's C reference is built without FMA contraction; a fused multiply-add would
    # round once where C rounds twice, and change bytes
    kern = _kernels()
    fmt = get_format(name)
    x = np.ones((2, fmt.block_size), np.float32)
    out = np.empty((2, fmt.type_size), np.uint8)
    fn = getattr(kern, f"_quantize_{name}")
    args = (x, out, kern._FP16_TABLE) if name in ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k") else (x, out)
    asm = _fresh_asm(fn, *args)
    assert re.search(r"\bv?mulss\b|\bv?mulps\b", asm), "no float multiply found: wrong code inspected"
    assert not re.search(r"vf(n)?m(add|sub)", asm), f"{name}: contracted FMA in the kernel"


# ----------------------------------------------------------------------------- subprocesses
def _run(code, **env):
    full = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_kernel_bodies_match_the_reference_as_plain_python():
    # NUMBA_DISABLE_JIT=1 runs the kernels as Python, so their bodies are covered and checked
    code = f"""
        import numpy as np
        from refquant.formats import get_format
        rng = np.random.default_rng(5)
        for name in {KERNEL_FORMATS!r}:
            fmt = get_format(name)
            x = rng.standard_normal((2, fmt.block_size)).astype(np.float32)
            x[1, ::3] = 0.0
            x[1, 1::7] = -0.0
            x[1] *= np.float32(1e-39)
            ref = fmt.quantize_blocks(x, backend="numpy")
            got = fmt.quantize_blocks(x, backend="cpu")
            assert np.array_equal(got, ref), name
            deq = fmt.dequantize_blocks(ref, backend="cpu")
            assert np.array_equal(deq.view(np.uint32),
                                  fmt.dequantize_blocks(ref, backend="numpy").view(np.uint32)), name
        print("ok")
    """
    res = _run(code, NUMBA_DISABLE_JIT="1")
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]


def test_importing_the_formats_compiles_nothing_and_imports_no_numba():
    res = _run("""
        import sys
        import refquant.compat.ggml, refquant.formats.ggml
        print('numba' in sys.modules)
    """)
    assert res.returncode == 0 and res.stdout.strip() == "False", res.stderr[-3000:]


def test_a_type_without_a_kernel_refuses_cpu_and_auto_falls_back_to_numpy():
    from refquant.formats.ggml import KERNEL_THRESHOLD, Q4_0

    class NoKernel(Q4_0):
        has_kernel = False

    fmt = NoKernel()
    x = np.random.default_rng(2).standard_normal((4, 32)).astype(np.float32)
    with pytest.raises(RefquantError, match="q4_0 has no Numba kernel"):
        fmt.quantize_blocks(x, backend="cpu")
    assert fmt._backend("auto", 10 * KERNEL_THRESHOLD) == "numpy"
    np.testing.assert_array_equal(fmt.quantize_blocks(x), get_format("q4_0").quantize_blocks(x))


def test_a_second_process_loads_the_kernel_from_numbas_disk_cache(tmp_path):
    code = """
        import numpy as np
        from refquant.formats import get_format
        x = np.ones((2, 32), np.float32)
        print(get_format("q8_0").quantize_blocks(x, backend="cpu")[0, 0])
    """
    env = {"NUMBA_CACHE_DIR": str(tmp_path), "NUMBA_DEBUG_CACHE": "1"}
    first = _run(code, **env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "data saved" in first.stdout and "_quantize_q8_0" in first.stdout
    second = _run(code, **env)
    assert second.returncode == 0, second.stderr[-3000:]
    loaded = [ln for ln in second.stdout.splitlines() if "data loaded" in ln]
    assert any("_quantize_q8_0" in ln for ln in loaded), second.stdout[-3000:]
    assert "data saved" not in second.stdout


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_cpu_backend_refuses_nonfinite_input_naming_the_first_index(bad):
    # the cpu path tests finiteness in one Numba pass over the bits (ggml_quant.all_finite)
    fmt = get_format("q4_0")
    x = np.ones((300, 32), np.float32)
    x[123, 7] = bad
    x[200, 1] = np.nan
    with pytest.raises(RefquantError, match=r"index \(123, 7\)"):
        fmt.quantize_blocks(x, backend="cpu")
    assert _kernels().all_finite(np.ones((3, 32), np.float32))
    assert _kernels().all_finite(np.zeros((0, 32), np.float32))
    assert not _kernels().all_finite(np.full((1, 32), np.float32(bad)))


@pytest.mark.parametrize("name", sorted(_kernels().FINITE_CHECKING))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_the_kernels_that_check_finiteness_flag_every_nonfinite_block(name, data):
    # the legacy kernels fold the finiteness check into their code loop: any NaN / ±Inf,
    # wherever it sits in a block (first element, beside a tiny or an all-zero block,
    # with other NaN / Inf), must flag the call; a flagged finite call (1/d overflowing
    # for a tiny block) still returns the reference's bytes
    fmt = get_format(name)
    n = data.draw(st.integers(1, 6))
    base = data.draw(st.sampled_from([0.0, 1e-40, 3e-38, 1.0, -7.5, 1e30]))
    x = np.full((n, 32), np.float32(base), np.float32)
    x += np.float32(data.draw(st.sampled_from([0.0, 1e-39, 0.5]))) * np.arange(32, dtype=np.float32)
    hits = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 31),
                                        st.sampled_from([np.nan, np.inf, -np.inf])), max_size=4))
    for i, j, v in hits:
        x[i, j] = v
    k = _kernels()
    out = np.empty((n, fmt.type_size), np.uint8)
    with np.errstate(all="ignore"):
        flagged = k.QUANTIZE_KERNELS[name](x, out)
    if hits:
        assert flagged > 0
        assert k.quantize_finite_blocks(name, x, fmt.type_size) is None
        with pytest.raises(RefquantError, match="non-finite"):
            fmt.quantize_blocks(x, backend="cpu")
    else:
        np.testing.assert_array_equal(k.quantize_finite_blocks(name, x, fmt.type_size),
                                      fmt.quantize_blocks(x, backend="numpy"))


def test_compat_quantize_checks_finiteness_once_with_its_own_messages():
    x = np.ones((2, 64), np.float32)
    x[1, 40] = np.inf
    for backend in ("numpy", "cpu"):
        with pytest.raises(RefquantError, match=r"x contains a non-finite value at index \(1, 40\)"):
            ggml.quantize(x, "q4_0", backend=backend)
    big = np.ones((1, 32), np.float64)
    big[0, 5] = 1e300
    with pytest.raises(RefquantError, match=r"x holds 1e\+300 at index \(0, 5\), which overflows float32"):
        ggml.quantize(big, "q4_1", backend="cpu")
    w = np.ones((1, 256))
    w[0, 3] = np.nan
    with pytest.raises(RefquantError, match=r"x contains a non-finite value at index \(0, 3\)"):
        ggml.quantize(w, "iq2_xxs", imatrix=np.ones(256))
