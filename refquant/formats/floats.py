"""Small floating-point formats from the bits: FP8, FP6, FP4, E8M0, bfloat16, float16.

Every format here is a sign bit (except E8M0), ``E`` exponent bits and ``M``
mantissa bits, stored in the low bits of one uint8 (uint16 for bfloat16 and
float16) code::

    float8_e4m3fn   S EEEE MMM     bias 7    max 448 = 0x1.Cp8        NaN S.1111.111, no Inf
    float8_e4m3fnuz S EEEE MMM     bias 8    max 240 = 0x1.Ep7        NaN 0x80 only, no Inf, no -0
    float8_e5m2     S EEEEE MM     bias 15   max 57344 = 0x1.8p15     IEEE: Inf S.11111.00, NaN S.11111.xx
    float8_e5m2fnuz S EEEEE MM     bias 16   max 57344 = 0x1.8p15     NaN 0x80 only, no Inf, no -0
    float6_e2m3fn   . . S EE MMM   bias 1    max 7.5                  no NaN, no Inf
    float6_e3m2fn   . . S EEE MM   bias 3    max 28                   no NaN, no Inf
    float4_e2m1fn   . . . . S EE M bias 1    max 6                    no NaN, no Inf
    float8_e8m0fnu  EEEEEEEE       bias 127  2^-127 .. 2^127          NaN 0xFF, no sign, no zero
    bfloat16        S E*8 M*7      bias 127  IEEE
    float16         S E*5 M*10     bias 15   IEEE

A code with exponent field ``e`` and mantissa field ``f`` stands for
:math:`(-1)^S 2^{1-b} (f / 2^M)` when ``e = 0`` (subnormal) and
:math:`(-1)^S 2^{e-b} (1 + f / 2^M)` otherwise; E8M0 stands for :math:`2^{e-127}`.

:func:`encode` rounds (half to even by default, every mode of
:mod:`refquant.quant.rounding` available) with integer arithmetic on the float64
bit pattern of the input: one rounding, exact, no cast through another library.
:func:`decode` builds the values from the fields with :func:`numpy.ldexp` (exact).

Overflow
--------
``saturate=True`` is ONNX Cast's ``saturate=1`` (onnx.reference: ``np.clip(x,
-max, max)`` then a round-to-nearest-even cast): values beyond ±max and ±Inf
become ±max, NaN stays NaN. PyTorch's ``Tensor.to(torch.float8_e4m3fn)`` does the
same for e4m3fn (PyTorch 2.13: 1e6 and +Inf give 448).

``saturate=False`` is ml_dtypes' ``astype`` (and ONNX ``saturate=0``, whose
reference is that ``astype``): a value whose rounded magnitude exceeds max becomes
Inf where the format has Inf (e5m2, bfloat16, float16), else NaN with the input's
sign where the format has NaN (e4m3fn: 0x7F / 0xFF; fnuz: 0x80); formats with
neither (fp6, fp4) saturate. Under round to nearest even the e4m3fn threshold is
464 = (448 + 480) / 2: 464 itself rounds to 448 (mantissa 110 is even) and anything
above it to NaN; e4m3fnuz's is 248 and that tie goes up (240 has mantissa 111),
so 248 is NaN. With a rounding toward zero (``trunc``; ``floor`` for positive,
``ceil`` for negative values) a finite overflow gives ±max (IEEE 754-2019 §7.4).

NaN and zero
------------
NaN encodes as the format's canonical NaN with the input's sign (IEEE formats: the
quiet NaN ``S.1..1.10..0`` as ml_dtypes writes it; payloads are not kept). Formats
without NaN (fp6, fp4) raise for NaN unless ``nan="ml_dtypes"``, which reproduces
ml_dtypes' code for it: a zero with the sign bit *opposite* to the NaN's
(float4_e2m1fn: +NaN -> 0x8, -NaN -> 0x0). fnuz formats have no -0: a negative
value that rounds to zero encodes as 0x00.

E8M0 (an exponent only) ties 1.5·2^k upward, as ml_dtypes, ONNX ``round_mode=
"nearest"`` and PyTorch do (there is no even mantissa to break the tie). With
``saturate=False`` (ml_dtypes) zero and negative inputs are NaN; with
``saturate=True`` (ONNX Cast-24 with saturate) the sign is ignored and zero encodes
as 2^-127, as ONNX's ``to_float8e8m0`` does. Values below 2^-127 round to 2^-127
(there is no zero); overflow is NaN, or 2^127 when saturating; ±Inf and NaN are
NaN (0xFF) in both modes (ONNX keeps the all-ones exponent).

Peer notes
----------
* ml_dtypes and PyTorch cast float64 to FP8 / bfloat16 through float32 (two
  roundings): 1 + 2^-4 + 2^-40 becomes 1.0 in e4m3fn there, 1.125 here (one
  rounding). Their float32 casts agree with refquant bit for bit.
* PyTorch writes the e5m2 NaN as S.11111.11 (0x7F), ml_dtypes and refquant as S.11111.10.
* onnxruntime's Cast (and QuantizeLinear) with ``saturate=0`` departs from the Cast
  table that onnx.reference and ``saturate=False`` follow: e4m3fn values in [480, 496)
  give ±448 instead of NaN, e5m2 values in [61440, 65536) NaN instead of ±Inf.
* PyTorch's float8_e8m0fnu ignores the sign, maps 0 to 2^-127 and ties up like
  ``saturate=True`` here, but overflows to NaN (1.5 * 2^127 -> 0xFF) where
  ``saturate=True`` gives 2^127.
* ml_dtypes' and PyTorch's E8M0 round a float32 *subnormal* on a linear grid of
  2^-126 (1.01 * 2^-127 -> 2^-126); ONNX's ``to_float8e8m0`` rounds one "up" to 2^-126
  (2^-128 -> 2^-126). refquant rounds the value: both give 2^-127 here.

Backends
--------
:func:`encode`, :func:`decode` and :func:`cast` take ``backend=``: ``"numpy"`` runs
the NumPy bodies here (the reference), ``"cpu"`` the Numba kernels of
:mod:`refquant.kernels.cpu.floats` (the same decisions element by element, bit for
bit; float32 input of a signed format through a branch-free vectorised loop; no
float64 copy of the input), ``"auto"`` (the default) the kernel from
:data:`KERNEL_THRESHOLD` elements on; ``REFQUANT_BACKEND=numpy`` forces the reference.

Reference
---------
OCP 8-bit Floating Point Specification (OFP8) rev. 1.0 (2023); OCP Microscaling
Formats (MX) v1.0 §5.3-5.4 (FP6, FP4, E8M0); ONNX Cast-19/24 spec and
``onnx/reference/ops/op_cast.py``, ``onnx.numpy_helper.saturate_cast`` /
``to_float8e8m0``; ml_dtypes ``float8.h`` ``ConvertImpl``; IEEE 754-2019.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._core.rounding import ROUNDING_MODES
from .._errors import RefquantError
from ..kernels._backend import resolve_backend
from ._registry import get_format, register

__all__ = ["FloatFormat", "float_format", "encode", "decode", "cast", "FLOAT_FORMATS", "KERNEL_THRESHOLD"]

#: elements from which ``backend="auto"`` runs the Numba kernel (below, the call overhead and a
#: first call's compile or cache load cost more than the NumPy body)
KERNEL_THRESHOLD = 1 << 16

_NAN_KINDS = ("ieee", "fn", "fnuz", "none")


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format given by its fields.

    Parameters
    ----------
    name : str
        The exact ml_dtypes-style name (``"float8_e4m3fn"``).
    exponent_bits, mantissa_bits, bias : int
    has_inf : bool
        Whether the all-ones exponent with a zero mantissa is ±Inf (IEEE formats).
    nan : {"ieee", "fn", "fnuz", "none"}
        Where NaN lives: ``"ieee"`` every all-ones exponent with a nonzero mantissa;
        ``"fn"`` only the all-ones magnitude ``S.1...1`` (E8M0: 0xFF); ``"fnuz"``
        only 0x80 (the would-be -0); ``"none"``: no NaN.
    signed : bool
        False only for E8M0.
    subnormals : bool
        False only for E8M0, whose exponent field 0 is the normal value 2^-127.
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    bias: int
    has_inf: bool
    nan: str
    signed: bool = True
    subnormals: bool = True
    family: str = "float"

    @property
    def bits(self) -> int:
        return int(self.signed) + self.exponent_bits + self.mantissa_bits

    @property
    def storage_dtype(self) -> np.dtype:
        """uint8, or uint16 for the 16-bit formats."""
        return np.dtype(np.uint8 if self.bits <= 8 else np.uint16)

    @property
    def ml_dtype(self) -> np.dtype:
        """The matching NumPy / ml_dtypes dtype (one element per byte for fp6 / fp4)."""
        if self.name == "float16":
            return np.dtype(np.float16)
        # imported here: ml_dtypes 0.7's import takes about a second of CPU, which
        # `import refquant` should not pay until a float8 / bfloat16 dtype is needed
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, self.name))

    @property
    def has_nan(self) -> bool:
        return self.nan != "none"

    @property
    def has_negative_zero(self) -> bool:
        return self.signed and self.nan != "fnuz"

    @property
    def sign_bit(self) -> int:
        """The sign bit's mask in the code (0 for unsigned E8M0)."""
        return (1 << (self.bits - 1)) if self.signed else 0

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal number (E8M0: -127)."""
        return 1 - self.bias if self.subnormals else -self.bias

    @property
    def max_code(self) -> int:
        """Magnitude code of the largest finite value."""
        m, e = self.mantissa_bits, self.exponent_bits
        if self.nan == "ieee":
            return (((1 << e) - 2) << m) | ((1 << m) - 1)
        if self.nan == "fn":
            return (1 << (e + m)) - 2
        return (1 << (e + m)) - 1

    @property
    def emax(self) -> int:
        """Exponent of the largest finite value, floor(log2(max)) (OCP MX's emax_elem)."""
        return (self.max_code >> self.mantissa_bits) - self.bias

    @property
    def max(self) -> float:
        """Largest finite value."""
        return float(decode(np.array(self.max_code, self.storage_dtype), self)[()])

    @property
    def min_normal(self) -> float:
        return float(np.ldexp(1.0, self.emin))

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value (E8M0, without subnormals: 2^-127)."""
        if not self.subnormals:
            return self.min_normal
        return float(np.ldexp(1.0, self.emin - self.mantissa_bits))

    def __repr__(self) -> str:
        return (
            f"FloatFormat({self.name!r}, e{self.exponent_bits}m{self.mantissa_bits}, bias={self.bias}, "
            f"max={self.max!r}, nan={self.nan!r}, inf={self.has_inf})"
        )


FLOAT_FORMATS = {
    f.name: f
    for f in (
        FloatFormat("float8_e4m3fn", 4, 3, 7, False, "fn"),
        FloatFormat("float8_e5m2", 5, 2, 15, True, "ieee"),
        FloatFormat("float8_e4m3fnuz", 4, 3, 8, False, "fnuz"),
        FloatFormat("float8_e5m2fnuz", 5, 2, 16, False, "fnuz"),
        FloatFormat("float6_e2m3fn", 2, 3, 1, False, "none"),
        FloatFormat("float6_e3m2fn", 3, 2, 3, False, "none"),
        FloatFormat("float4_e2m1fn", 2, 1, 1, False, "none"),
        FloatFormat("float8_e8m0fnu", 8, 0, 127, False, "fn", signed=False, subnormals=False),
        FloatFormat("bfloat16", 8, 7, 127, True, "ieee"),
        FloatFormat("float16", 5, 10, 15, True, "ieee"),
    )
}
for _f in FLOAT_FORMATS.values():
    register(_f)
del _f


def float_format(name) -> FloatFormat:
    """Resolve a name, a :class:`FloatFormat` or an ml_dtypes / NumPy float dtype."""
    if isinstance(name, FloatFormat):
        return name
    if name is None:  # np.dtype(None) would be float64
        raise RefquantError("format must be a float format name, got None")
    if not isinstance(name, str):
        try:
            name = np.dtype(name).name
        except TypeError:
            raise RefquantError(f"format must be a float format name, got {name!r}") from None
    fmt = FLOAT_FORMATS.get(name)
    if fmt is None:
        get_format(name)  # unknown names: the registry's error lists every known format
        raise RefquantError(
            f"format {name!r} is not a float format; float formats: {', '.join(sorted(FLOAT_FORMATS))}"
        )
    return fmt


def _as_float64(x, argname="x") -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind in "iub" or x.dtype.kind == "f" or x.dtype.kind == "V" and x.dtype.itemsize <= 2:
        try:
            with np.errstate(invalid="ignore"):
                return x.astype(np.float64)
        except (TypeError, ValueError):
            pass
    raise RefquantError(f"{argname} must be a real numeric array, got dtype {x.dtype}")


def _round_away(rem, half, shift, lsb, neg, rounding, rng, excess):
    """Whether to step the truncated magnitude one unit away from zero.

    ``rem`` is the discarded low part (``shift`` bits), ``half`` is ``1 << (shift - 1)``,
    ``lsb`` the kept magnitude's last bit, ``neg`` the sign. ``excess`` is how far the
    true shift exceeds ``shift`` (which is clipped at 63): the discarded part is
    really ``rem / 2**(shift + excess)`` of a unit.
    """
    nonzero = rem != 0
    above, tie = rem > half, rem == half
    if rounding == "half_even":
        return above | (tie & (lsb == 1))
    if rounding == "half_away":
        return above | tie
    if rounding == "half_zero":
        return above
    if rounding == "half_up":
        return above | (tie & ~neg)
    if rounding == "half_down":
        return above | (tie & neg)
    if rounding == "trunc":
        return np.zeros_like(nonzero)
    if rounding == "floor":
        return nonzero & neg
    if rounding == "ceil":
        return nonzero & ~neg
    # stochastic: away with probability rem / 2**(shift + excess) (u uniform on the
    # shift-bit integers; rem < 2**53, so an excess of 53 or more leaves probability 0,
    # below the 2**-63 resolution of the draw)
    draws = rng.integers(0, np.iinfo(np.uint64).max, size=rem.shape, dtype=np.uint64, endpoint=True)
    u = draws >> (np.uint64(64) - shift.astype(np.uint64))
    return u < (rem >> np.minimum(excess, 63).astype(np.uint64))


def encode(x, name, *, saturate: bool = True, rounding: str = "half_even", nan: str = "raise",
           seed=None, rng=None, backend: str = "auto") -> np.ndarray:
    """Round ``x`` to the float format ``name`` and return the codes.

    Parameters
    ----------
    x : array_like of real numbers
        Any float or integer dtype (float64 inputs are rounded once, from float64;
        integers beyond 2^53 are rounded to float64 first, a second rounding:
        2^60 + 2^52 + 1 becomes the tie 2^60 + 2^52, bfloat16 0x5D80 not 0x5D81); not modified.
    name : str or FloatFormat
        One of :data:`FLOAT_FORMATS`.
    saturate : bool
        True: ±overflow and ±Inf become ±max (ONNX ``saturate=1``; PyTorch's e4m3fn
        cast); E8M0 keeps Inf as NaN, as ONNX does. False: they become Inf / NaN as the format allows (ml_dtypes,
        ONNX ``saturate=0``). See the module docstring for every case.
    rounding : str
        A mode of :data:`refquant.quant.rounding.ROUNDING_MODES`, applied to the
        magnitude on the format's grid (``floor`` / ``ceil`` act on the signed value).
        ``half_even``: a value exactly halfway between two neighbours takes the one
        with an even mantissa.
    nan : {"raise", "ml_dtypes"}
        What a NaN becomes in a format without NaN (fp6, fp4): an error, or
        ml_dtypes' code (zero with the opposite sign bit). Ignored for formats with NaN.
    seed, rng
        Only for ``rounding="stochastic"``: one 64-bit draw per element, C order.
    backend : {"auto", "numpy", "cpu"}
        ``"numpy"`` the NumPy body below (the reference), ``"cpu"`` the Numba kernel
        of :mod:`refquant.kernels.cpu.floats` (bit-identical, no float64 copy of
        ``x``), ``"auto"`` the kernel from :data:`KERNEL_THRESHOLD` elements on;
        ``REFQUANT_BACKEND=numpy`` forces the reference.

    Returns
    -------
    numpy.ndarray of uint8 (uint16 for bfloat16 / float16), the shape of ``x``.

    Formula
    -------
    For finite :math:`x \\ne 0` with :math:`e = \\max(\\lfloor\\log_2|x|\\rfloor, e_{min})`,
    the magnitude is rounded to a multiple of :math:`2^{e - M}`:
    :math:`n = \\mathrm{round}(|x| / 2^{e-M})` (exact integer arithmetic on the
    53-bit significand), and the code is :math:`S \\cdot 2^{B-1} + ((e - e_{min}) \\ll M) + n`
    (a carry out of the mantissa moves to the next exponent by itself).

    Reference
    ---------
    OCP OFP8 rev. 1.0 §4 (rounding, saturation); ONNX Cast-19 (saturate table) and
    onnx.reference ``cast_to``; ml_dtypes ``ConvertImpl`` (non-saturating casts);
    IEEE 754-2019 §4.3, §7.4.
    """
    fmt = float_format(name)
    if not isinstance(rounding, str) or rounding not in ROUNDING_MODES:
        raise RefquantError(f"rounding must be one of {', '.join(ROUNDING_MODES)}; got {rounding!r}")
    if not isinstance(nan, str) or nan not in ("raise", "ml_dtypes"):
        raise RefquantError(f"nan must be 'raise' or 'ml_dtypes', got {nan!r}")
    if not isinstance(saturate, (bool, np.bool_)):
        raise RefquantError(f"saturate must be True or False, got {saturate!r}")
    gen = None
    if rounding == "stochastic":
        try:
            gen = rng if rng is not None else np.random.default_rng(seed)
        except (TypeError, ValueError):
            raise RefquantError(f"seed must be None or a non-negative integer, got {seed!r}") from None
        if not isinstance(gen, np.random.Generator):
            raise RefquantError(f"rng must be a numpy.random.Generator, got {type(gen).__name__}")
    xa = np.asarray(x)
    if resolve_backend(backend, xa.size, threshold=KERNEL_THRESHOLD, cuda=False) == "cpu" and _kernel_dtype(xa):
        return _encode_cpu(xa, fmt, saturate, rounding, nan, gen)
    xf = _as_float64(xa)
    isnan = np.isnan(xf)
    if not fmt.has_nan and nan == "raise" and isnan.any():
        _raise_nan(fmt, int(np.flatnonzero(isnan)[0]))

    bits64 = xf.view(np.uint64)
    neg_in = (bits64 >> np.uint64(63)).astype(bool)
    # E8M0 has no sign: ONNX (saturate) rounds |x|; ml_dtypes (not saturating) makes x < 0 NaN.
    neg = neg_in & fmt.signed
    expf = ((bits64 >> np.uint64(52)) & np.uint64(0x7FF)).astype(np.int64)
    frac = bits64 & np.uint64((1 << 52) - 1)
    isinf = np.isinf(xf)
    finite = ~(isnan | isinf)
    # Significand (53 bits with the implicit one) and exponent of |x| = sig * 2^(e - 52).
    sig = np.where(expf == 0, frac, frac | np.uint64(1 << 52))
    e = np.where(expf == 0, -1022, expf - 1023)
    m = fmt.mantissa_bits
    e_eff = np.maximum(e, fmt.emin) if fmt.subnormals else e
    shift_full = 52 - m + (e_eff - e)
    shift = np.clip(shift_full, 0, 63).astype(np.uint64)
    kept = sig >> shift
    rem = sig & ((np.uint64(1) << shift) - np.uint64(1))
    half = np.uint64(1) << (shift - np.uint64(1))
    step = _round_away(rem, half, shift, kept & np.uint64(1), neg, rounding, gen, np.maximum(shift_full - 63, 0))
    n = kept.astype(np.int64) + step
    if fmt.subnormals:  # exponent field 1 holds emin; a subnormal n < 2^M lands in field 0
        mag = ((e_eff - fmt.emin) << m) + n
    else:  # E8M0: field 0 holds 2^emin = 2^-127; below it there is nothing, so clamp up
        mag = np.maximum(((e_eff - fmt.emin) << m) + n - (1 << m), 0)
    mag = np.where(finite & (sig != 0), mag, 0)

    over = finite & (mag > fmt.max_code)
    if rounding == "trunc":
        toward_zero = np.ones_like(neg)
    elif rounding == "floor":
        toward_zero = ~neg
    elif rounding == "ceil":
        toward_zero = neg
    else:
        toward_zero = np.zeros_like(neg)

    if fmt.has_inf:
        inf_mag = ((1 << fmt.exponent_bits) - 1) << m
        nan_mag = inf_mag | (1 << (m - 1))
    else:
        inf_mag = None
        nan_mag = (1 << (fmt.exponent_bits + m)) - 1 if fmt.nan == "fn" else None

    sign = np.where(neg, fmt.sign_bit, 0).astype(np.int64)
    if not fmt.signed:  # E8M0
        if saturate:  # ONNX to_float8e8m0: sign ignored, zero -> exponent field 0
            sign = np.zeros_like(sign)
            mag = np.where(over, fmt.max_code, mag)
            code = np.where(finite, mag, nan_mag)
        else:  # ml_dtypes: zero, negatives, overflow, Inf and NaN are NaN
            bad = ~finite | neg_in | (sig == 0) | (over & ~toward_zero)
            mag = np.where(over, fmt.max_code, mag)
            code = np.where(bad, nan_mag, mag)
        return code.astype(fmt.storage_dtype)

    sat_mag = fmt.max_code
    if saturate:
        mag = np.where(over | isinf, sat_mag, mag)
        special = isnan
    else:
        mag = np.where(over & toward_zero, sat_mag, mag)
        over_special = (over & ~toward_zero) | isinf
        if fmt.has_inf:
            mag = np.where(over_special, inf_mag, mag)
            special = isnan
        elif fmt.has_nan:
            special = isnan | over_special
        else:  # fp6 / fp4: nothing to overflow to, so saturate as ml_dtypes does
            mag = np.where(over_special, sat_mag, mag)
            special = isnan
    code = sign | mag
    if fmt.nan == "fnuz":
        code = np.where(mag == 0, 0, code)  # no -0
        code = np.where(special, 0x80, code)
    elif fmt.has_nan:
        code = np.where(special, sign | nan_mag, code)
    else:  # nan="ml_dtypes": a zero whose sign bit is the NaN's sign bit flipped
        code = np.where(special, np.where(neg, 0, fmt.sign_bit), code)
    return code.astype(fmt.storage_dtype)


def _kernel_dtype(x) -> bool:
    """Whether the Numba kernel reads ``x``'s dtype (else the reference runs, e.g. longdouble)."""
    dt = x.dtype
    if dt.kind in "iub" and dt.itemsize <= 8:
        return True
    if dt.kind == "f" and dt.itemsize in (2, 4, 8):
        return True
    if dt.kind == "V" and dt.itemsize <= 2:
        try:
            np.zeros(1, dt).astype(np.float64)
        except (TypeError, ValueError):
            return False  # the reference names the bad dtype
        return True
    return False


def _params(fmt: FloatFormat) -> np.ndarray:
    from ..kernels.cpu.floats import format_params

    return format_params(mantissa_bits=fmt.mantissa_bits, exponent_bits=fmt.exponent_bits, bias=fmt.bias,
                         emin=fmt.emin, subnormals=fmt.subnormals, signed=fmt.signed, max_code=fmt.max_code,
                         has_inf=fmt.has_inf, nan=fmt.nan, sign_bit=fmt.sign_bit, bits=fmt.bits)


def _encode_cpu(x, fmt, saturate, rounding, nan, gen):
    """:func:`encode` through :func:`refquant.kernels.cpu.floats.encode_into` (validated arguments)."""
    from ..kernels.cpu import floats as kf

    flat = np.ascontiguousarray(x).reshape(-1)
    mark = not fmt.has_nan and nan == "raise"
    if mark and rounding == "stochastic" and x.dtype.kind in "fV":
        with np.errstate(invalid="ignore"):
            isnan = np.isnan(flat.astype(np.float32)) if x.dtype.kind == "V" else np.isnan(flat)
        if isnan.any():
            _raise_nan(fmt, int(np.flatnonzero(isnan)[0]))
    out = np.empty(flat.size, fmt.storage_dtype)
    kf.encode_into(flat, _params(fmt), kf.ROUNDING_CODES[rounding], bool(saturate), nan == "ml_dtypes", out, gen)
    if mark and out.size and out.max() == kf.NAN_MARK:
        _raise_nan(fmt, int(np.flatnonzero(out == kf.NAN_MARK)[0]))
    return out.reshape(x.shape)


def _raise_nan(fmt, index):
    raise RefquantError(
        f"x contains NaN at flat index {index}, which {fmt.name} cannot "
        "represent (it has no NaN); pass nan='ml_dtypes' for ml_dtypes' code"
    )


def _check_codes(c, fmt) -> None:
    """Integer codes in ``[0, 2**bits)``, or a RefquantError naming the first bad one."""
    if c.dtype.kind not in "iu":
        raise RefquantError(f"codes must be an integer array, got dtype {c.dtype}")
    if c.size and (c.min() < 0 or c.max() >= (1 << fmt.bits)):
        bad = c[(c < 0) | (c >= (1 << fmt.bits))].flat[0]
        raise RefquantError(f"codes must be in [0, {1 << fmt.bits}) for {fmt.name}; got {int(bad)}")


def decode(codes, name, *, backend: str = "auto") -> np.ndarray:
    """The float32 values of ``codes`` in the float format ``name``.

    Parameters
    ----------
    codes : array_like of unsigned integers
        Codes in ``[0, 2**bits)`` (uint8 / uint16 or any integer dtype); not modified.
    name : str or FloatFormat
    backend : {"auto", "numpy", "cpu"}
        As in :func:`encode`.

    Returns
    -------
    numpy.ndarray of float32 (every value of these formats is a float32 exactly).

    Formula
    -------
    :math:`v = (-1)^S \\, 2^{\\max(e, 1) - b - M} \\, (f + [e > 0] \\, 2^M)`, with NaN and
    Inf where the format puts them; E8M0: :math:`v = 2^{e - 127}`, 0xFF is NaN.

    Reference
    ---------
    OCP OFP8 rev. 1.0 Table 1; OCP MX v1.0 Tables 3, 4, 7; IEEE 754-2019 §3.4.
    """
    fmt = float_format(name)
    c = np.asarray(codes)
    _check_codes(c, fmt)
    if resolve_backend(backend, c.size, threshold=KERNEL_THRESHOLD, cuda=False) == "cpu":
        from ..kernels.cpu.floats import decode_into

        out = np.empty(c.size, np.float32)
        decode_into(np.ascontiguousarray(c).reshape(-1), _params(fmt), out)
        return out.reshape(c.shape)
    c = c.astype(np.int64)
    m = fmt.mantissa_bits
    mag = c & ((1 << (fmt.bits - int(fmt.signed))) - 1)
    field = mag >> m
    f = mag & ((1 << m) - 1)
    if fmt.subnormals:
        significand = np.where(field == 0, f, f | (1 << m))
        val = np.ldexp(significand.astype(np.float64), np.maximum(field, 1) - fmt.bias - m)
    else:
        val = np.ldexp(1.0, field - fmt.bias)
    neg = (c & fmt.sign_bit) != 0
    val = np.where(neg, -val, val)
    all_ones = (1 << fmt.exponent_bits) - 1
    if fmt.nan == "ieee":
        val = np.where(field == all_ones, np.where(f == 0, np.copysign(np.inf, val), np.nan), val)
    elif fmt.nan == "fn":
        val = np.where(mag == (1 << (fmt.bits - int(fmt.signed))) - 1, np.copysign(np.nan, val), val)
    elif fmt.nan == "fnuz":
        val = np.where(c == 0x80, np.nan, val)
    return val.astype(np.float32)


def cast(x, name, *, saturate: bool = True, rounding: str = "half_even", nan: str = "raise",
         backend: str = "auto"):
    """:func:`encode` viewed as the ml_dtypes (or NumPy float16) dtype of ``name``.

    A convenience: the values come from refquant's own rounding, the dtype only
    labels the codes (``encode(...).view(fmt.ml_dtype)``).

    Formula
    -------
    As :func:`encode`.

    Reference
    ---------
    ml_dtypes types (one element per byte for float6 / float4).
    """
    fmt = float_format(name)
    return encode(x, fmt, saturate=saturate, rounding=rounding, nan=nan, backend=backend).view(fmt.ml_dtype)
