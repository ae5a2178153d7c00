"""The Open Compute Project's number formats by the specifications' names: OFP8 and MX v1.0.

OFP8 (OCP 8-bit Floating Point Specification rev. 1.0): ``E4M3`` is
``float8_e4m3fn`` (no Inf, NaN S.1111.111, max 448) and ``E5M2`` is
``float8_e5m2`` (IEEE-like, max 57344). The spec's conversion saturates or not
as a mode; :func:`ofp8_encode` takes it as ``saturate``.

MX (OCP Microscaling Formats v1.0): blocks of ``k = 32`` elements sharing one
E8M0 scale ``X``; :func:`to_mx` follows §6.3 ("Conversion from vector of FP32
to MX") and returns ``(X, P)`` by the spec's letters: ``X`` the E8M0 scale codes,
``P`` the element codes. :func:`mx_dot` is §6.2's ``Dot``:
:math:`X^{(A)} X^{(B)} \\sum_i P_i^{(A)} P_i^{(B)}` summed over blocks: every
scaled product is exact in float64 and their exact sum is rounded once
(``math.fsum``; a plain float64 sum is not exact, E5M2 products span 64 bits).

=============  ==================  ==========================
spec name      element             refquant format
=============  ==================  ==========================
MXFP8_E4M3     FP8 (E4M3)          ``mxfp8_e4m3``
MXFP8_E5M2     FP8 (E5M2)          ``mxfp8_e5m2``
MXFP6_E2M3     FP6 (E2M3)          ``mxfp6_e2m3``
MXFP6_E3M2     FP6 (E3M2)          ``mxfp6_e3m2``
MXFP4          FP4 (E2M1)          ``mxfp4``
MXINT8         INT8 (scale 2^-6)   ``mxint8``
=============  ==================  ==========================

Reference
---------
OCP 8-bit Floating Point Specification (OFP8) rev. 1.0, 2023; OCP Microscaling
Formats (MX) Specification v1.0, 2023, §5.2 (scale), §5.3 (elements), §6.2 (dot
product), §6.3 (conversion).
"""

from __future__ import annotations

import math

import numpy as np

from .._errors import RefquantError
from ..formats.floats import decode, encode
from ..formats.mx import dequantize_mx, mx_format, quantize_mx

__all__ = [
    "E4M3",
    "E5M2",
    "E8M0",
    "MXFP8_E4M3",
    "MXFP8_E5M2",
    "MXFP6_E2M3",
    "MXFP6_E3M2",
    "MXFP4",
    "MXINT8",
    "ofp8_encode",
    "ofp8_decode",
    "to_mx",
    "from_mx",
    "mx_dot",
]

E4M3 = "float8_e4m3fn"
E5M2 = "float8_e5m2"
E8M0 = "float8_e8m0fnu"
MXFP8_E4M3 = "mxfp8_e4m3"
MXFP8_E5M2 = "mxfp8_e5m2"
MXFP6_E2M3 = "mxfp6_e2m3"
MXFP6_E3M2 = "mxfp6_e3m2"
MXFP4 = "mxfp4"
MXINT8 = "mxint8"

_OFP8 = {"E4M3": E4M3, "E5M2": E5M2, E4M3: E4M3, E5M2: E5M2}


def _ofp8(fmt):
    try:
        return _OFP8[fmt]
    except (KeyError, TypeError):
        raise RefquantError(f"fmt must be 'E4M3' or 'E5M2' (OFP8), got {fmt!r}") from None


def ofp8_encode(x, fmt="E4M3", *, saturate: bool = True) -> np.ndarray:
    """OFP8 conversion, round to nearest even, saturating (to ±max) or not (Inf / NaN).

    Formula
    -------
    :math:`q = \\mathrm{RNE}_{fmt}(x)`; with ``saturate`` :math:`|x| > \\mathrm{max}` and ±Inf
    give ±max; without it, E4M3 overflow (above 464) is NaN, E5M2 overflow (from 61440) is Inf.

    Reference
    ---------
    OFP8 rev. 1.0 §5 (conversion, saturation mode).
    """
    return encode(x, _ofp8(fmt), saturate=saturate)


def ofp8_decode(codes, fmt="E4M3") -> np.ndarray:
    """float32 values of OFP8 codes (OFP8 rev. 1.0 Table 1).

    Formula
    -------
    :math:`(-1)^S 2^{e - b} (1 + m / 2^M)`, subnormal for :math:`e = 0`.

    Reference
    ---------
    OFP8 rev. 1.0 §3.
    """
    return decode(codes, _ofp8(fmt))


def to_mx(V, fmt=MXFP8_E4M3, *, k: int = 32, axis: int = -1, scale_rule: str = "floor",
          rounding: str = "half_even"):
    """§6.3 conversion of ``V`` to MX: returns ``(X, P)`` (E8M0 scale codes, element codes).

    Formula
    -------
    :math:`X = 2^{\\lfloor \\log_2 \\max_i |V_i| \\rfloor - e_{max,elem}}`,
    :math:`P_i = \\mathrm{quantize\\_to\\_element\\_format}(V_i / X)`, clamped to the
    element's max normal. The spec leaves the element rounding to the
    implementation; refquant's default is round half to even.

    Reference
    ---------
    OCP MX v1.0 §6.3; :func:`refquant.formats.mx.quantize_mx`.
    """
    P, X = quantize_mx(V, fmt, axis=axis, block_size=k, scale_rule=scale_rule, rounding=rounding)
    return X, P


def from_mx(X, P, fmt=MXFP8_E4M3, *, k: int = 32, axis: int = -1) -> np.ndarray:
    """Values :math:`X \\cdot P_i` in float32 (§5.2).

    Formula
    -------
    :math:`v_i = 2^{X - 127} \\, P_i`; X = 0xFF is NaN for the whole block.

    Reference
    ---------
    OCP MX v1.0 §5.2.
    """
    return dequantize_mx(P, X, fmt, axis=axis, block_size=k)


def mx_dot(XA, PA, XB, PB, fmt=MXFP8_E4M3, *, k: int = 32) -> float:
    """§6.2's dot product of two 1-D MX vectors of the same format, exactly.

    Formula
    -------
    :math:`\\mathrm{Dot}(A, B) = \\sum_j X_j^{(A)} X_j^{(B)} \\sum_{i \\in j} P_i^{(A)} P_i^{(B)}`.

    Reference
    ---------
    OCP MX v1.0 §6.2 (DotGeneral over blocks; the spec leaves the final precision
    to the implementation: here the exact value rounded once to float64).
    """
    f = mx_format(fmt)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise RefquantError(f"k (the block size) must be a positive integer, got {k!r}")
    pa, pb = np.asarray(PA), np.asarray(PB)
    if pa.ndim != 1 or pa.shape != pb.shape:
        raise RefquantError(f"PA and PB must be 1-D of equal length, got shapes {pa.shape} and {pb.shape}")
    xa, xb = np.asarray(XA), np.asarray(XB)
    if xa.dtype.kind not in "iu" or xb.dtype.kind not in "iu":
        raise RefquantError(f"XA and XB must be integer E8M0 codes, got dtypes {xa.dtype} and {xb.dtype}")
    if xa.ndim != 1 or xb.ndim != 1:
        raise RefquantError(f"XA and XB must be 1-D (one code per block), got shapes {xa.shape} and {xb.shape}")
    one = np.zeros_like(xa, dtype=np.uint8) + 127  # unit scales: element values only
    va = dequantize_mx(pa, one, f, block_size=k).astype(np.float64)
    vb = dequantize_mx(pb, one, f, block_size=k).astype(np.float64)
    n = pa.size
    nb = -(-n // k)
    pad = nb * k - n
    prod = np.concatenate([va * vb, np.zeros(pad)]).reshape(nb, k)  # exact: <= 16 significant bits
    xa, xb = xa.astype(np.int64), xb.astype(np.int64)
    if xa.shape != (nb,) or xb.shape != (nb,):
        raise RefquantError(f"XA and XB must have {nb} scale codes for {n} elements in blocks of {k}")
    scale = np.where((xa == 0xFF) | (xb == 0xFF), np.nan, np.ldexp(1.0, xa + xb - 254))
    # each term is exact (2^-286 .. 2^286); their sum is not (E5M2 products span 64 bits):
    # fsum rounds the exact sum once. NaN / Inf terms: the IEEE sum (fsum refuses inf - inf).
    terms = (scale[:, None] * prod).ravel()
    return math.fsum(terms) if np.isfinite(terms).all() else float(np.sum(terms))
