"""refquant.io.layouts' MLX layout against mlx 0.32.4 (``mlx[cpu]``, Linux CPU backend).

``mx.dequantize`` on drawn codes packed by refquant, with scales and biases drawn as raw
float16 / bfloat16 / float32 bit patterns (NaN, Inf, subnormals, overflowing products),
against ``ck.dequantize`` of a folder written by ``refquant.io.save(..., layout="mlx")``;
and ``mx.quantize``'s words re-read and re-packed by refquant unchanged, for every bit
width and group size MLX accepts.
"""

from __future__ import annotations

import functools

import ml_dtypes
import numpy as np
import pytest
from helpers import import_peer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import refquant.io as rio
from refquant.io.layouts import pack_bitstream, unpack_bitstream
from refquant.io.layouts.mlx import MLX_BITS, MLX_GROUPS, mlx_tensors

pytestmark = pytest.mark.peer

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
FLOATS = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16),
          "float32": np.dtype(np.float32)}


@functools.cache
def _mx():
    return import_peer("mlx.core")


def _to_mx(a):
    mx = _mx()
    dt = {"float16": mx.float16, "bfloat16": mx.bfloat16, "float32": mx.float32}[a.dtype.name]
    # float32 holds every float16 / bfloat16 value exactly, so the cast back is exact
    return mx.array(a.astype(np.float32)).astype(dt)


def _raw(draw, dtype, shape):
    dt = FLOATS[dtype]
    n = int(np.prod(shape))
    raw = draw(st.lists(st.integers(0, (1 << (8 * dt.itemsize)) - 1), min_size=n, max_size=n))
    a = np.array(raw, dtype=f"<u{dt.itemsize}").view(dt).reshape(shape)
    if draw(st.booleans()):
        with np.errstate(invalid="ignore"):
            a = np.nan_to_num(a.astype(np.float64) % 7, nan=0.5).astype(dt)
    return a


@SETTINGS
@given(st.data(), st.sampled_from(MLX_BITS), st.sampled_from(MLX_GROUPS), st.sampled_from(sorted(FLOATS)),
       st.integers(1, 3))
def test_mx_dequantize_matches_refquant(tmp_path_factory, data, bits, gs, dtype, rows):
    mx = _mx()
    k = 2 * 128
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    q = rng.integers(0, 1 << bits, size=(rows, k))
    s = _raw(data.draw, dtype, (rows, k // gs))
    b = _raw(data.draw, dtype, (rows, k // gs))
    t = mlx_tensors("m.l", q, s, b, bits)
    folder = tmp_path_factory.mktemp("mlx")
    rio.save(t, folder, layout="mlx", bits=bits, group_size=gs, overwrite=True)
    with rio.open(folder) as ck:
        ours = ck.dequantize("m.l.weight")
    theirs = mx.dequantize(mx.array(t["m.l.weight"]), _to_mx(s), _to_mx(b), group_size=gs, bits=bits)
    np.testing.assert_array_equal(np.array(theirs.astype(mx.float32)), ours)


@pytest.mark.parametrize("bits", MLX_BITS)
@pytest.mark.parametrize("gs", MLX_GROUPS)
def test_mx_quantize_words_are_refquants_bit_stream(bits, gs):
    mx = _mx()
    w = np.random.default_rng(bits * gs).standard_normal((4, 384)).astype(np.float32)
    wq, _, _ = mx.quantize(mx.array(w), group_size=gs, bits=bits)
    words = np.array(wq)
    assert words.dtype == np.uint32 and words.shape == (4, 384 * bits // 32)
    codes = unpack_bitstream(words, bits, 384)
    np.testing.assert_array_equal(pack_bitstream(codes, bits), words)
    # and MLX reads refquant's codes back as those codes (scale 1, bias 0)
    ones = mx.ones((4, 384 // gs), dtype=mx.float32)
    back = mx.dequantize(mx.array(pack_bitstream(codes, bits)), ones, ones * 0, group_size=gs, bits=bits)
    np.testing.assert_array_equal(np.array(back), codes.astype(np.float32))
