"""Every registered format: the numpy and cpu backends agree bit for bit on encode and decode.

A format is checked the moment it registers: each family has one adapter (how to
encode and decode with a given backend), and a format with no Numba kernel yet
must be named in :data:`NO_CPU_KERNEL_YET`, so that the list can only shrink (a
listed format that gains a kernel fails here until it is taken off the list).
"""

import inspect

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refquant as rq
from refquant.formats import codebook, floats, mx, nvfp4

ALL = rq.list_formats()

# Explicit names: a format registered without a Numba kernel must be added here by hand.
NO_CPU_KERNEL_YET: set[str] = set()


def _float_round_trip(f, x, backend):
    codes = floats.encode(x, f, saturate=False, nan="ml_dtypes", backend=backend)
    return [codes, floats.decode(codes, f, backend=backend)]


def _codebook_round_trip(f, x, backend):
    x = np.nan_to_num(x, nan=0.0, posinf=1e30, neginf=-1e30)
    q = codebook.nearest_index(np.clip(x, -1, 1), f, backend=backend)
    t, order = codebook.midpoint_thresholds(f)
    q2 = codebook.threshold_index(np.clip(x, -1, 1), t, order, backend=backend)
    codes, absmax = codebook.quantize_blockwise_absmax(x, f, 16, backend=backend)
    return [q, q2, codes, absmax, codebook.dequantize_blockwise_absmax(codes, absmax, f, 16, backend=backend)]


def _mx_round_trip(f, x, backend):
    codes, scales = mx.quantize_mx(x, f, block_size=16, backend=backend)
    return [codes, scales, mx.dequantize_mx(codes, scales, f, block_size=16, backend=backend)]


def _ggml_round_trip(f, x, backend):
    # at least one block: zero blocks are the ggml module's own test (and its iq4_nl / iq4_xs
    # NumPy bodies raise ValueError on them, reported to the lead)
    n = max(1, x.size // f.block_size) * f.block_size
    x = np.resize(x, n) if x.size else np.zeros(n, np.float32)
    # bounded: ggml's lattice (IQ) searches abort on float32 overflow from |x| ~ 1e12 (refquant
    # raises there, on both backends alike; tests/peers/test_ggml_iq_* pin where)
    blocks = np.clip(np.nan_to_num(x[:n], nan=0.0, posinf=1e4, neginf=-1e4), -1e6, 1e6)
    blocks = blocks.reshape(-1, f.block_size)
    if not getattr(f, "has_kernel", False):  # IQ2 / IQ1: a Numba quantizer (with an imatrix) only
        return [f.quantize_blocks_weighted(blocks, np.ones_like(blocks), backend=backend)]
    raw = f.quantize_blocks(blocks, backend=backend)
    out = [raw]
    if getattr(f, "has_dequantize", True):
        out.append(f.dequantize_blocks(raw, backend=backend))
    return out


def _nvfp4_round_trip(f, x, backend):
    # finite (NVFP4 refuses NaN / Inf on both backends), whole blocks of 16, every convention
    x = np.nan_to_num(x, nan=0.0, posinf=3e38, neginf=-3e38)
    n = max(1, -(-x.size // 16)) * 16
    x = np.resize(x, n) if x.size else np.zeros(n, np.float32)
    out = []
    for conv in nvfp4.NVFP4_CONVENTIONS:
        try:
            codes, scales, gs = nvfp4.quantize_nvfp4(x.reshape(-1, 16), convention=conv, backend=backend)
        except rq.RefquantError as e:  # torchao refuses an all-zero tensor: the same refusal
            out.append(np.array(str(e)))
            continue
        out += [codes, scales, np.asarray(gs),
                nvfp4.dequantize_nvfp4(codes, scales, gs, convention=conv, backend=backend)]
    return out


def _integer_round_trip(f, x, backend):
    x = np.nan_to_num(x, nan=0.0, posinf=1e30, neginf=-1e30)
    q = rq.quantize(x, 0.37, dtype=f, backend=backend)
    return [q, rq.dequantize(q, 0.37, backend=backend)]


def adapter(name):
    """The backend-taking round trip of a format, or None where it has no Numba kernel."""
    f = rq.get_format(name)
    if isinstance(f, floats.FloatFormat):
        return _float_round_trip
    if isinstance(f, codebook.Codebook):
        return _codebook_round_trip
    if isinstance(f, mx.MXFormat):
        return _mx_round_trip
    if isinstance(f, nvfp4.NVFP4Format):
        takes = "backend" in inspect.signature(nvfp4.quantize_nvfp4).parameters
        return _nvfp4_round_trip if takes else None
    if hasattr(f, "quantize_blocks"):
        weighted = getattr(f, "quantize_blocks_weighted", None)
        weighted_kernel = weighted is not None and "backend" in inspect.signature(weighted).parameters
        return _ggml_round_trip if getattr(f, "has_kernel", False) or weighted_kernel else None
    if f.family == "integer":
        takes = all("backend" in inspect.signature(fn).parameters for fn in (rq.quantize, rq.dequantize))
        return _integer_round_trip if takes else None
    return None


def test_the_list_of_formats_without_a_kernel_only_names_registered_formats():
    assert NO_CPU_KERNEL_YET <= set(ALL), sorted(NO_CPU_KERNEL_YET - set(ALL))


@pytest.mark.parametrize("name", ALL)
def test_format_has_a_cpu_kernel_or_is_listed_without_one(name):
    has = adapter(name) is not None
    if name in NO_CPU_KERNEL_YET:
        assert not has, f"{name} has a cpu kernel now: take it off NO_CPU_KERNEL_YET"
    else:
        assert has, f"{name} has no cpu kernel (or no adapter here): add one, or list it in NO_CPU_KERNEL_YET"


def _values():
    edge = st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 448.0, 464.0, 57344.0, 6.0, 7.5, 1e-40, 3e38,
                            np.inf, -np.inf, np.nan])
    return st.one_of(st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True), edge)


@settings(max_examples=5)
@given(data=st.data())
@pytest.mark.parametrize("name", [n for n in ALL if n not in NO_CPU_KERNEL_YET])
def test_numpy_and_cpu_backends_agree_bit_for_bit(name, data):
    run = adapter(name)
    f = rq.get_format(name)
    block = getattr(f, "block_size", 16)
    n = data.draw(st.integers(0, 3)) * max(block, 16) + data.draw(st.integers(0, 17))  # partial blocks
    x = data.draw(hnp.arrays(np.float32, n, elements=_values()))
    with np.errstate(all="ignore"):
        got, want = run(f, x, "cpu"), run(f, x, "numpy")
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        if g.dtype.kind == "f":
            g, w = g.view(f"u{g.dtype.itemsize}"), w.view(f"u{w.dtype.itemsize}")
        np.testing.assert_array_equal(g, w, err_msg=name)
