"""compat.ocp: OFP8 and MX by the specifications' names."""

import numpy as np
import pytest

from refquant import RefquantError
from refquant.compat import ocp


def test_ofp8_names_and_saturation_modes():
    x = np.array([448.0, 500.0, -1e9, 57344.0, 61440.0])
    assert ocp.ofp8_encode(x[:3], "E4M3").tolist() == [0x7E, 0x7E, 0xFE]
    assert ocp.ofp8_encode(x[:3], "E4M3", saturate=False).tolist() == [0x7E, 0x7F, 0xFF]
    assert ocp.ofp8_encode(x[3:], "E5M2", saturate=False).tolist() == [0x7B, 0x7C]
    assert ocp.ofp8_decode(np.array([0x7E]), "E4M3")[0] == 448.0
    with pytest.raises(RefquantError, match="OFP8"):
        ocp.ofp8_encode(x, "E3M4")


def test_to_mx_returns_scale_then_elements_and_round_trips_the_grid():
    v = np.array([0.5, -1.5, 3.0, 6.0] * 8, np.float32)
    X, P = ocp.to_mx(v, ocp.MXFP4)
    assert X.tolist() == [127] and P.shape == (32,)
    assert np.array_equal(ocp.from_mx(X, P, ocp.MXFP4), v)


def test_mx_dot_is_the_scaled_sum_of_element_products():
    rng = np.random.default_rng(0)
    a = rng.standard_normal(70).astype(np.float32)
    b = rng.standard_normal(70).astype(np.float32)
    XA, PA = ocp.to_mx(a, ocp.MXFP8_E4M3)
    XB, PB = ocp.to_mx(b, ocp.MXFP8_E4M3)
    want = float(np.sum(ocp.from_mx(XA, PA).astype(np.float64) * ocp.from_mx(XB, PB).astype(np.float64)))
    assert ocp.mx_dot(XA, PA, XB, PB) == want
    # one hand-checked block: X_A = 2^1, X_B = 2^-1, P = [1, 2] . [3, 0.5] = 4 -> 4
    XA = np.array([128], np.uint8)
    XB = np.array([126], np.uint8)
    from refquant.formats.floats import encode

    PA = encode(np.array([1.0, 2.0]), "float8_e4m3fn")
    PB = encode(np.array([3.0, 0.5]), "float8_e4m3fn")
    assert ocp.mx_dot(XA, PA, XB, PB) == 4.0


def test_mx_dot_of_e5m2_products_that_cancel_keeps_the_small_one():
    # 57344^2 + 2^-32 - 57344^2 = 2^-32 exactly (a 64-bit spread of exponents, beyond float64's
    # 53 bits): a plain float64 sum returned 0.0
    from refquant.formats.floats import encode

    for pad in (0, 31):  # within one block, and across three blocks
        z = [0.0] * pad
        PA = encode(np.array([57344.0, *z, 2.0**-16, *z, -57344.0]), "float8_e5m2")
        PB = encode(np.array([57344.0, *z, 2.0**-16, *z, 57344.0]), "float8_e5m2")
        X = np.full(-(-PA.size // 32), 127, np.uint8)
        assert ocp.mx_dot(X, PA, X, PB, ocp.MXFP8_E5M2) == 2.0**-32


def test_mx_dot_and_shared_exponent_refuse_non_numeric_input():
    # XA='a' raised NumPy's AxisError; shared_exponent('a') a ValueError
    from refquant.formats.mx import shared_exponent

    P = np.zeros(4, np.uint8)
    with pytest.raises(RefquantError, match="XA"):
        ocp.mx_dot("a", P, "b", P)
    with pytest.raises(RefquantError, match="amax"):
        shared_exponent("a", "mxfp4")


def test_mx_dot_refuses_a_bad_k_and_scalar_scales_with_refquant_error():
    p = np.uint8([1, 2])
    for k in (None, 0, 1.5):
        with pytest.raises(RefquantError, match="block_size|k"):
            ocp.mx_dot(np.uint8([127]), p, np.uint8([127]), p, ocp.MXFP4, k=k)
    with pytest.raises(RefquantError, match="XA and XB"):
        ocp.mx_dot(np.uint8(127), p, np.uint8([127]), p, ocp.MXFP4)
