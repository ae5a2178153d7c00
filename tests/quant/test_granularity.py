"""Granularity helpers, through the public entry points: block sizes and option names."""

import numpy as np
import pytest

import refquant


def test_a_block_longer_than_the_axis_is_one_partial_block_even_if_huge():
    # block_size=10**30 raised OverflowError from np.repeat / np.arange; ONNX allows any
    # block size from the axis length up, and it means one block
    x = np.arange(16, dtype=np.float32).reshape(2, 8) - 5
    s = np.float32([[0.5], [2.0]])
    want = refquant.quantize(x, s, axis=1, block_size=8)
    for b in (9, 10**6, 10**30):
        np.testing.assert_array_equal(refquant.quantize(x, s, axis=1, block_size=b), want)
        qp = refquant.choose_qparams(x, axis=1, block_size=b)
        assert qp.scale.shape == (2, 1)


@pytest.mark.parametrize("kw", [dict(rounding=np.array(["half_even"])), dict(scale_op=np.array([])),
                                dict(rounding=np.array([]))])
def test_an_array_as_an_option_name_is_a_refquant_error(kw):
    # np.array([]) raised numpy's 'truth value of an empty array is ambiguous' ValueError
    with pytest.raises(refquant.RefquantError, match="must be one of"):
        refquant.quantize(np.float32([1.5]), 1.0, **kw)
