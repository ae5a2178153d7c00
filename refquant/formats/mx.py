"""OCP Microscaling (MX) v1.0 block formats: MXFP8, MXFP6, MXFP4, MXINT8.

A block of ``k = 32`` consecutive elements along one axis shares one scale
``X`` stored as an E8M0 code (a power of two, 2^-127 .. 2^127, 0xFF = NaN);
each element ``P_i`` is stored in the element format; the value is ``X * P_i``::

    one block (k = 32):   [ X: 8 bits E8M0 ][ P_0 ][ P_1 ] ... [ P_31 ]
                                            element bits each: 8 (FP8, INT8), 6 (FP6), 4 (FP4)

=============  ================  =========  ====================  ==================
name           element           emax_elem  element max           bits per element
=============  ================  =========  ====================  ==================
mxfp8_e4m3     float8_e4m3fn     8          448                   8 + 8/32 = 8.25
mxfp8_e5m2     float8_e5m2       15         57344                 8.25
mxfp6_e2m3     float6_e2m3fn     2          7.5                   6.25
mxfp6_e3m2     float6_e3m2fn     4          28                    6.25
mxfp4          float4_e2m1fn     2          6                     4.25
mxint8         int8, scale 2^-6  0          127/64 = 1.984375     8.25
=============  ================  =========  ====================  ==================

Codes are returned unpacked: one element per uint8 (int8 for MXINT8), and the
scales as uint8 E8M0 codes; a length that is not a multiple of ``k`` has a
partial last block with its own scale (the same as padding with zeros, which is
what microxcaling does).

Scale rules (``scale_rule``)
----------------------------
``"floor"`` (OCP MX v1.0 §6.3): :math:`X = 2^{\\lfloor \\log_2 \\mathrm{amax} \\rfloor - e_{max,elem}}`.
The exponent is read exactly from the float's bits (microxcaling takes
``floor(log2(amax))`` in float32, which for an amax just below a large power of
two rounds up: see :func:`shared_exponent`). Elements above the element max
after scaling are clamped to it (the spec's "clamped to the max normal").

``"ceil"`` (the round-up rule of NVIDIA's MXFP8 recipe and of ONNX Cast to
FLOAT8E8M0 with ``round_mode="up"``): :math:`X = 2^{\\lceil \\log_2(\\mathrm{amax} / \\mathrm{max}_{elem}) \\rceil}`
with the quotient formed in float32; no element saturates.

An all-zero block gets the smallest scale 2^-127 (microxcaling takes log2 of FP32_MIN_NORMAL
minus emax_elem, clamped: the same 2^-127 for the float elements, but 2^-126 for MXINT8,
whose emax_elem is 0; the decoded zeros agree); exponents are clamped to [-127, 127]; a block containing NaN or ±Inf gets
the NaN scale 0xFF and its elements decode to NaN.

Reference
---------
OCP Microscaling Formats (MX) Specification v1.0 (2023) §5 (formats), §6.3
(conversion); microsoft/microxcaling ``mx/mx_ops.py`` ``_quantize_mx``,
``mx/elemwise_ops.py`` ``_quantize_elemwise_core``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._core.granularity import normalize_axis
from .._core.rounding import ROUNDING_MODES, round_to_int
from .._errors import RefquantError
from ..kernels._backend import resolve_backend
from ._registry import register
from .floats import FloatFormat, _check_codes, _params, decode, encode, float_format

__all__ = ["MXFormat", "MX_FORMATS", "mx_format", "shared_exponent", "quantize_mx", "dequantize_mx",
           "KERNEL_THRESHOLD"]

#: elements from which ``backend="auto"`` runs the Numba kernels of :mod:`refquant.kernels.cpu.mx`
#: (``quantize_mx`` / ``dequantize_mx`` take ``backend=``: ``"numpy"`` the NumPy body, the
#: reference; ``"cpu"`` the kernel, bit-identical; ``REFQUANT_BACKEND=numpy`` forces the reference)
KERNEL_THRESHOLD = 1 << 16
_STOCH_ROWS_ELEMENTS = 1 << 16  # stochastic draws are made for this many padded elements at a time

_SCALE_RULES = ("floor", "ceil")


@dataclass(frozen=True)
class MXFormat:
    """An MX block format: element format, block size ``k`` and an E8M0 scale."""

    name: str
    element: str  # a float format name, or "int8"
    block_size: int = 32
    family: str = "block"

    @property
    def element_format(self) -> FloatFormat | None:
        return None if self.element == "int8" else float_format(self.element)

    @property
    def element_bits(self) -> int:
        return 8 if self.element == "int8" else self.element_format.bits

    @property
    def bits(self) -> float:
        """Bits per element including the shared scale (8 / k)."""
        return self.element_bits + 8 / self.block_size

    @property
    def emax_elem(self) -> int:
        """Exponent of the element format's largest normal (0 for INT8, read as 1.6 fixed point)."""
        return 0 if self.element == "int8" else self.element_format.emax

    @property
    def element_max(self) -> float:
        return 127 / 64 if self.element == "int8" else self.element_format.max


MX_FORMATS = {
    f.name: f
    for f in (
        MXFormat("mxfp8_e4m3", "float8_e4m3fn"),
        MXFormat("mxfp8_e5m2", "float8_e5m2"),
        MXFormat("mxfp6_e2m3", "float6_e2m3fn"),
        MXFormat("mxfp6_e3m2", "float6_e3m2fn"),
        MXFormat("mxfp4", "float4_e2m1fn"),
        MXFormat("mxint8", "int8"),
    )
}
for _f in MX_FORMATS.values():
    register(_f)
del _f


def mx_format(name) -> MXFormat:
    """Resolve an MX format by name (``"mxfp4"``) or pass an :class:`MXFormat` through."""
    if isinstance(name, MXFormat):
        return name
    f = MX_FORMATS.get(name) if isinstance(name, str) else None
    if f is None:
        raise RefquantError(f"format {name!r} is not an MX format; MX formats: {', '.join(sorted(MX_FORMATS))}")
    return f


def shared_exponent(amax, fmt, scale_rule: str = "floor") -> np.ndarray:
    """The unbiased shared exponent of each block (float64 array; NaN for a NaN/Inf block).

    Parameters
    ----------
    amax : array_like
        Block absolute maxima.
    fmt : str or MXFormat
    scale_rule : {"floor", "ceil"}

    Formula
    -------
    ``floor``: :math:`e = \\lfloor \\log_2 \\mathrm{amax} \\rfloor - e_{max,elem}` (exact, from
    ``frexp``); ``ceil``: :math:`e = \\lceil \\log_2 \\mathrm{fl}_{32}(\\mathrm{amax} / \\mathrm{max}_{elem}) \\rceil`.
    Then :math:`e \\leftarrow \\max(e, -127)`; :math:`e > 127` is NaN. amax = 0 gives -127.
    Under ``ceil`` a quotient that underflows float32 gives -127 and an amax beyond
    float32's range (a float64 input) gives NaN, as E8M0 of 0 and of Inf do.

    Reference
    ---------
    OCP MX v1.0 §6.3; microxcaling ``_shared_exponents`` and ``_quantize_mx``.
    """
    f = mx_format(fmt)
    if not isinstance(scale_rule, str) or scale_rule not in _SCALE_RULES:
        raise RefquantError(f"scale_rule must be one of {_SCALE_RULES}, got {scale_rule!r}")
    am = np.asarray(amax)
    if am.dtype.kind not in "fiu":
        raise RefquantError(f"amax must be real numbers, got dtype {am.dtype}")
    a = np.abs(am.astype(np.float64))
    bad = ~np.isfinite(a)
    safe = np.where(bad | (a == 0), 1.0, a)
    if scale_rule == "floor":
        _, ex = np.frexp(safe)  # safe = m * 2^ex with m in [0.5, 1): floor(log2) = ex - 1
        e = (ex - 1).astype(np.float64) - f.emax_elem
    else:
        with np.errstate(over="ignore", under="ignore"):
            q = (safe.astype(np.float32) / np.float32(f.element_max)).astype(np.float64)
        m, ex = np.frexp(q)  # frexp(0) and frexp(inf) give exponent 0: handled below
        e = np.where(m == 0.5, ex - 1, ex).astype(np.float64)  # ceil(log2 q)
        e = np.where(q == 0, -127.0, e)  # a quotient that underflows float32 is below 2^-149
        bad = bad | np.isinf(q)  # amax beyond float32 (float64 input): as E8M0 of Inf, NaN
    e = np.where(a == 0, -127.0, e)
    e = np.maximum(e, -127.0)
    return np.where(bad | (e > 127), np.nan, e)


def _block_size(f, block_size) -> int:
    """``k``: the format's 32 unless given; a positive integer."""
    k = f.block_size if block_size is None else block_size
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise RefquantError(f"block_size must be a positive integer, got {block_size!r}")
    return int(k)


def _blocked(x, axis, k):
    """Move ``axis`` last and pad it with zeros to whole blocks: shape (..., nblocks, k)."""
    xm = np.moveaxis(x, axis, -1)
    n = xm.shape[-1]
    nb = -(-n // k)
    if nb <= 1:  # one (partial) block or none: padding it to k zeros changes nothing
        k = max(n, 1)
    pad = nb * k - n
    if pad:
        xm = np.concatenate([xm, np.zeros(xm.shape[:-1] + (pad,), xm.dtype)], axis=-1)
    return xm.reshape(xm.shape[:-1] + (nb, k)), n


def _unblocked(y, n, axis):
    y = y.reshape(y.shape[:-2] + (y.shape[-2] * y.shape[-1],))[..., :n]  # not -1: a 0-size y
    return np.moveaxis(y, -1, axis)


def quantize_mx(x, fmt, *, axis: int = -1, block_size: int | None = None, scale_rule: str = "floor",
                rounding: str = "half_even", seed=None, rng=None, backend: str = "auto"):
    """Quantize ``x`` to an MX format: E8M0 scale codes and element codes.

    Parameters
    ----------
    x : array_like of float
        Not modified; float32 inputs are scaled exactly (division by a power of two,
        computed in float64).
    fmt : str or MXFormat
        ``"mxfp8_e4m3"``, ``"mxfp8_e5m2"``, ``"mxfp6_e2m3"``, ``"mxfp6_e3m2"``,
        ``"mxfp4"``, ``"mxint8"``.
    axis : int
        The axis along which blocks run (default the last).
    block_size : int, optional
        ``k``; 32 (the spec's) unless given.
    scale_rule : {"floor", "ceil"}
        See the module docstring.
    rounding : str
        Element rounding (:data:`refquant.quant.rounding.ROUNDING_MODES`);
        ``"half_even"`` by default, ``"half_away"`` is microxcaling's ``"nearest"``.
        Elements saturate at the element max (OCP: clamped to max normal).
    seed, rng
        For ``rounding="stochastic"`` only: the draws come from ``rng`` if given,
        else from ``numpy.random.default_rng(seed)``.
    backend : {"auto", "numpy", "cpu"}
        ``"numpy"`` the NumPy body (the reference), ``"cpu"`` the Numba kernel (bit-identical,
        no float64 copy of ``x``), ``"auto"`` the kernel from :data:`KERNEL_THRESHOLD` elements.

    Returns
    -------
    codes : uint8 array of ``x``'s shape (int8 for MXINT8)
    scales : uint8 array of E8M0 codes, ``x``'s shape with ``ceil(n / k)`` along ``axis``

    Formula
    -------
    :math:`X = 2^{e}` (:func:`shared_exponent`), :math:`P_i = \\mathrm{sat}(\\mathrm{round}_{elem}(V_i / X))`;
    MXINT8: :math:`P_i = \\mathrm{clip}(\\mathrm{round}(64 V_i / X), -127, 127)`.

    Reference
    ---------
    OCP MX v1.0 §6.3 (``X = 2^(floor(log2(max|V|)) - emax_elem)``, elements clamped);
    microxcaling ``_quantize_mx``.
    """
    f = mx_format(fmt)
    if not isinstance(rounding, str) or rounding not in ROUNDING_MODES:
        raise RefquantError(f"rounding must be one of {', '.join(ROUNDING_MODES)}; got {rounding!r}")
    k = _block_size(f, block_size)
    xa = np.asarray(x)
    if xa.dtype.kind not in "fiu":
        raise RefquantError(f"x must be a real array, got dtype {xa.dtype}")
    if xa.ndim == 0:
        raise RefquantError("x must have at least one dimension")
    ax = normalize_axis(axis, xa.ndim)
    if not isinstance(scale_rule, str) or scale_rule not in _SCALE_RULES:
        raise RefquantError(f"scale_rule must be one of {_SCALE_RULES}, got {scale_rule!r}")
    if (resolve_backend(backend, xa.size, threshold=KERNEL_THRESHOLD, cuda=False) == "cpu"
            and xa.dtype.itemsize <= 8):
        return _quantize_cpu(xa, f, ax, int(k), scale_rule, rounding, seed, rng)
    xa = xa.astype(np.float64)
    blocks, n = _blocked(xa, ax, int(k))
    with np.errstate(invalid="ignore"):
        amax = np.max(np.abs(blocks), axis=-1)
    e = shared_exponent(amax, f, scale_rule)
    nan_block = np.isnan(e)
    e_safe = np.where(nan_block, 0.0, e)
    scale_codes = np.where(nan_block, 0xFF, e_safe + 127).astype(np.uint8)
    scaled = np.where(nan_block[..., None], 0.0, blocks / np.ldexp(1.0, e_safe.astype(np.int64))[..., None])
    if f.element == "int8":
        q = np.clip(round_to_int(scaled * 64.0, rounding, seed=seed, rng=rng), -127, 127).astype(np.int8)
    else:
        q = encode(scaled, f.element_format, saturate=True, rounding=rounding, seed=seed, rng=rng)
    return _unblocked(q, n, ax), np.moveaxis(scale_codes, -1, ax)


def _generator(seed, rng):
    try:
        gen = rng if rng is not None else np.random.default_rng(seed)
    except (TypeError, ValueError):
        raise RefquantError(f"seed must be None or a non-negative integer, got {seed!r}") from None
    if not isinstance(gen, np.random.Generator):
        raise RefquantError(f"rng must be a numpy.random.Generator, got {type(gen).__name__}")
    return gen


def _quantize_cpu(xa, f, ax, k, scale_rule, rounding, seed, rng):
    """:func:`quantize_mx` through :func:`refquant.kernels.cpu.mx.quantize_into` (validated arguments)."""
    from ..kernels.cpu import mx as kmx
    from ..kernels.cpu.floats import ROUNDING_CODES, widening_table

    xm = np.moveaxis(xa, ax, -1)
    lead, n = xm.shape[:-1], xm.shape[-1]
    rows = int(np.prod(lead, dtype=np.int64))
    x2 = np.ascontiguousarray(xm).reshape(rows, n)
    nb = -(-n // k)
    k_eff = k if nb > 1 else max(n, 1)  # _blocked: one (partial) block is not padded
    if x2.dtype == np.float16:
        x2, table, conv = x2.view(np.uint16), widening_table(np.float16), True
    else:
        x2, table, conv = (x2.view(np.uint8) if x2.dtype == np.bool_ else x2), np.zeros(1), False
    is_int = f.element == "int8"
    p = np.zeros(13, np.int64) if is_int else _params(f.element_format)
    mode = ROUNDING_CODES[rounding]
    codes = np.empty((rows, n), np.int8 if is_int else np.uint8)
    scales = np.empty((rows, nb), np.uint8)
    emax32 = np.float32(f.element_max)
    no_u, no_f = np.zeros((1, 1), np.uint64), np.zeros((1, 1))
    if mode != 8:
        kmx.quantize_into(x2, conv, table, k_eff, scale_rule == "ceil", f.emax_elem, emax32, p, is_int, mode,
                          no_u, no_f, 0, codes, scales)
    else:  # the draws of the padded blocked array, C order, a few rows at a time
        gen = _generator(seed, rng)
        width = nb * k_eff
        step = max(1, _STOCH_ROWS_ELEMENTS // max(width, 1))
        for r0 in range(0, rows, step):
            r1 = min(r0 + step, rows)
            if is_int:
                du, df = no_u, gen.random(size=(r1 - r0, width))
            else:
                du = gen.integers(0, np.iinfo(np.uint64).max, size=(r1 - r0, width), dtype=np.uint64,
                                  endpoint=True)
                df = no_f
            kmx.quantize_into(x2[r0:r1], conv, table, k_eff, scale_rule == "ceil", f.emax_elem, emax32, p,
                              is_int, mode, du, df, 0, codes[r0:r1], scales[r0:r1])
    codes = np.moveaxis(codes.reshape(lead + (n,)), -1, ax)
    return codes, np.moveaxis(scales.reshape(lead + (nb,)), -1, ax)


def dequantize_mx(codes, scales, fmt, *, axis: int = -1, block_size: int | None = None,
                  backend: str = "auto") -> np.ndarray:
    """``X * P`` in float32 from element codes and E8M0 scale codes.

    Formula
    -------
    :math:`v_i = 2^{s - 127} \\cdot \\mathrm{decode}_{elem}(P_i)` (MXINT8: :math:`P_i / 64`);
    a scale code 0xFF makes the whole block NaN.

    ``backend`` as in :func:`quantize_mx`.

    Reference
    ---------
    OCP MX v1.0 §5.2.
    """
    f = mx_format(fmt)
    k = _block_size(f, block_size)
    c = np.asarray(codes)
    s = np.asarray(scales)
    if c.ndim == 0:
        raise RefquantError("codes must have at least one dimension")
    ax = normalize_axis(axis, c.ndim)
    if s.dtype != np.uint8:
        raise RefquantError(f"scales must be uint8 E8M0 codes, got dtype {s.dtype}")
    if f.element == "int8":
        if c.dtype != np.int8:
            raise RefquantError(f"mxint8 codes must be int8, got dtype {c.dtype}")
    else:
        _check_codes(c, f.element_format)
    if resolve_backend(backend, c.size, threshold=KERNEL_THRESHOLD, cuda=False) == "cpu":
        return _dequantize_cpu(c, s, f, ax, int(k))
    if f.element == "int8":
        vals = c.astype(np.float64) / 64.0
    else:
        vals = decode(c, f.element_format).astype(np.float64)
    blocks, n = _blocked(vals, ax, int(k))
    if s.ndim != c.ndim:
        raise RefquantError(f"scales have shape {s.shape}; codes of shape {c.shape} need scales "
                            f"of the same rank ({c.ndim}) with ceil(n / {k}) along axis {ax}")
    sm = np.moveaxis(s, ax, -1)
    if sm.shape != blocks.shape[:-1]:
        raise RefquantError(
            f"scales have shape {s.shape}; codes of shape {c.shape} in blocks of {k} along axis {ax} "
            f"need {np.moveaxis(np.empty(blocks.shape[:-1]), -1, ax).shape}"
        )
    x_scale = np.where(sm == 0xFF, np.nan, np.ldexp(1.0, sm.astype(np.int64) - 127))
    return _unblocked((blocks * x_scale[..., None]).astype(np.float32), n, ax)


def _dequantize_cpu(c, s, f, ax, k):
    from ..kernels.cpu import mx as kmx

    cm, sm = np.moveaxis(c, ax, -1), np.moveaxis(s, ax, -1)
    lead, n = cm.shape[:-1], cm.shape[-1]
    nb = -(-n // k)
    if s.ndim != c.ndim or sm.shape != lead + (nb,):
        # the reference's messages
        if s.ndim != c.ndim:
            raise RefquantError(f"scales have shape {s.shape}; codes of shape {c.shape} need scales "
                                f"of the same rank ({c.ndim}) with ceil(n / {k}) along axis {ax}")
        raise RefquantError(
            f"scales have shape {s.shape}; codes of shape {c.shape} in blocks of {k} along axis {ax} "
            f"need {np.moveaxis(np.empty(lead + (nb,)), -1, ax).shape}"
        )
    rows = int(np.prod(lead, dtype=np.int64))
    c2 = np.ascontiguousarray(cm).reshape(rows, n)
    s2 = np.ascontiguousarray(sm).reshape(rows, nb)
    is_int = f.element == "int8"
    p = np.zeros(13, np.int64) if is_int else _params(f.element_format)
    out = np.empty((rows, n), np.float32)
    kmx.dequantize_into(c2, s2, k, p, is_int, out)
    return np.moveaxis(out.reshape(lead + (n,)), -1, ax)
