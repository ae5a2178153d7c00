"""Numba kernels for the small float formats: encode (round to the format) and decode, from the bits.

Each kernel is the exact twin of :func:`refquant.formats.floats.encode` /
:func:`~refquant.formats.floats.decode` (the NumPy reference): one element at a
time, the same integer arithmetic on the float64 bit pattern of the input, the
same decisions in the same order, so every rounding mode, saturation and NaN
policy gives the same code. Elements are independent: the outer loop is a
``prange``.

Inputs are read in their own dtype and widened to float64 one element at a time
(no float64 copy of the array): float32 / float64 / integers by Numba's own
conversion (the C casts NumPy's ``astype`` uses); 8- and 16-bit dtypes Numba
cannot type (float16, ml_dtypes' bfloat16 and float8 types) through a table of
the float64 value of every bit pattern, built with NumPy's own ``astype`` (so the
widening is NumPy's by construction).

A format reaches the kernels as a small int64 parameter vector (:func:`format_params`),
and a rounding mode as an index into :data:`ROUNDING_CODES`; nothing here imports
from ``refquant.formats``: the public functions validate and call
:func:`encode_into` / :func:`decode_into`. Importing this module imports Numba
but compiles nothing; each kernel compiles on first call (``cache=True``).

Reference: :mod:`refquant.formats.floats` (OCP OFP8 rev. 1.0, OCP MX v1.0, IEEE 754-2019).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

__all__ = ["ROUNDING_CODES", "NAN_KINDS", "format_params", "encode_into", "decode_into", "widening_table"]

#: rounding mode -> the code the kernels branch on (the modes of refquant._core.rounding)
ROUNDING_CODES = {
    "half_even": 0,
    "half_away": 1,
    "half_up": 2,
    "half_down": 3,
    "half_zero": 4,
    "floor": 5,
    "ceil": 6,
    "trunc": 7,
    "stochastic": 8,
}
#: where a format keeps NaN -> code
NAN_KINDS = {"ieee": 0, "fn": 1, "fnuz": 2, "none": 3}

# the parameter vector, by position
_M, _EBITS, _EMIN, _SUBN, _SIGNED, _MAXCODE, _HASINF, _NANKIND, _SIGNBIT, _INFMAG, _NANMAG, _BITS, _BIAS = range(13)

#: marker written for a NaN in a format without NaN under nan="raise" (above every 6/4-bit code)
NAN_MARK = 0xFF

_OPTS = dict(cache=True, nogil=True)
_PAR = dict(cache=True, nogil=True, parallel=True)

_FRAC_MASK = np.uint64((1 << 52) - 1)
_IMPLICIT = np.uint64(1 << 52)
_U0 = np.uint64(0)
_U1 = np.uint64(1)
_U63 = np.uint64(63)
_U64 = np.uint64(64)


def format_params(*, mantissa_bits, exponent_bits, bias, emin, subnormals, signed, max_code, has_inf,
                  nan, sign_bit, bits) -> np.ndarray:
    """The int64 vector the kernels read a format from (fields of ``FloatFormat``)."""
    m = mantissa_bits
    if has_inf:
        inf_mag = ((1 << exponent_bits) - 1) << m
        nan_mag = inf_mag | (1 << (m - 1))
    else:
        inf_mag = 0
        nan_mag = (1 << (exponent_bits + m)) - 1 if nan == "fn" else 0
    p = np.zeros(13, np.int64)
    p[_M], p[_EBITS], p[_EMIN], p[_SUBN], p[_SIGNED] = m, exponent_bits, emin, int(subnormals), int(signed)
    p[_MAXCODE], p[_HASINF], p[_NANKIND], p[_SIGNBIT] = max_code, int(has_inf), NAN_KINDS[nan], sign_bit
    p[_INFMAG], p[_NANMAG], p[_BITS], p[_BIAS] = inf_mag, nan_mag, bits, bias
    return p


_TABLES: dict[str, np.ndarray] = {}


def widening_table(dtype) -> np.ndarray:
    """float64 value of every bit pattern of an 8- or 16-bit dtype, by NumPy's ``astype``."""
    dt = np.dtype(dtype)
    t = _TABLES.get(dt.str + dt.name)
    if t is None:
        word = np.uint8 if dt.itemsize == 1 else np.uint16
        with np.errstate(invalid="ignore", over="ignore"):
            t = np.arange(1 << (8 * dt.itemsize)).astype(word).view(dt).astype(np.float64)
        _TABLES[dt.str + dt.name] = t
    return t


# --------------------------------------------------------------------------- scalar bodies
@njit(**_OPTS)
def _round_away(rem, half, shift, lsb, neg, mode, draw, excess):
    """Whether to step the truncated magnitude one unit away from zero (floats._round_away)."""
    if mode == 0:
        return rem > half or (rem == half and lsb == 1)
    if mode == 1:
        return rem >= half
    if mode == 2:
        return rem > half or (rem == half and not neg)
    if mode == 3:
        return rem > half or (rem == half and neg)
    if mode == 4:
        return rem > half
    if mode == 5:
        return rem != _U0 and neg
    if mode == 6:
        return rem != _U0 and not neg
    if mode == 7:
        return False
    u = draw >> (_U64 - shift)
    ex = np.uint64(min(excess, 63))
    return u < (rem >> ex)


@njit(**_OPTS)
def encode_one(v, p, mode, saturate, nan_ml, draw):
    """The code of one float64 ``v`` (floats.encode, element by element)."""
    m = p[_M]
    emin = p[_EMIN]
    subn = p[_SUBN] != 0
    signed = p[_SIGNED] != 0
    max_code = p[_MAXCODE]
    b = np.float64(v).view(np.uint64)
    neg_in = (b >> _U63) != _U0
    neg = neg_in and signed
    expf = np.int64((b >> np.uint64(52)) & np.uint64(0x7FF))
    frac = b & _FRAC_MASK
    finite = expf != 0x7FF
    isnan = (not finite) and frac != _U0
    isinf = (not finite) and frac == _U0
    if expf == 0:
        sig = frac
        e = np.int64(-1022)
    else:
        sig = frac | _IMPLICIT
        e = expf - 1023
    e_eff = max(e, emin) if subn else e
    shift_full = 52 - m + (e_eff - e)
    shift = np.uint64(min(max(shift_full, 0), 63))
    kept = sig >> shift
    rem = sig & ((_U1 << shift) - _U1)
    half = _U1 << (shift - _U1)
    step = _round_away(rem, half, shift, kept & _U1, neg, mode, draw, max(shift_full - 63, 0))
    n = np.int64(kept) + np.int64(step)
    if subn:
        mag = ((e_eff - emin) << m) + n
    else:
        mag = max(((e_eff - emin) << m) + n - (np.int64(1) << m), 0)
    if not finite or sig == _U0:
        mag = 0
    over = finite and mag > max_code
    if mode == 7:
        toward_zero = True
    elif mode == 5:
        toward_zero = not neg
    elif mode == 6:
        toward_zero = neg
    else:
        toward_zero = False
    nan_mag = p[_NANMAG]
    if not signed:  # E8M0
        if saturate:
            if over:
                mag = max_code
            return mag if finite else nan_mag
        bad = (not finite) or neg_in or sig == _U0 or (over and not toward_zero)
        if over:
            mag = max_code
        return nan_mag if bad else mag
    has_inf = p[_HASINF] != 0
    kind = p[_NANKIND]
    sign = p[_SIGNBIT] if neg else 0
    if saturate:
        if over or isinf:
            mag = max_code
        special = isnan
    else:
        if over and toward_zero:
            mag = max_code
        over_special = (over and not toward_zero) or isinf
        if has_inf:
            if over_special:
                mag = p[_INFMAG]
            special = isnan
        elif kind != 3:
            special = isnan or over_special
        else:
            if over_special:
                mag = max_code
            special = isnan
    code = sign | mag
    if kind == 2:  # fnuz
        if mag == 0:
            code = 0
        if special:
            code = 0x80
    elif kind != 3:
        if special:
            code = sign | nan_mag
    elif special:
        if nan_ml:
            code = 0 if neg else p[_SIGNBIT]
        else:
            code = NAN_MARK
    return code


@njit(**_OPTS)
def _pow2(k):
    """2.0**k as a float64, exactly, for -1022 <= k <= 1023."""
    return np.uint64((k + 1023) << 52).view(np.float64)


@njit(**_OPTS)
def decode_one(c, p):
    """The float32 value of one code (floats.decode, element by element)."""
    m = p[_M]
    bits = p[_BITS]
    signed = p[_SIGNED]
    magmask = (np.int64(1) << (bits - signed)) - 1
    mag = c & magmask
    field = mag >> m
    f = mag & ((np.int64(1) << m) - 1)
    if p[_SUBN] != 0:
        sig = f if field == 0 else f | (np.int64(1) << m)
        val = np.float64(sig) * _pow2(max(field, 1) - p[_BIAS] - m)
    else:
        val = _pow2(field - p[_BIAS])
    if (c & p[_SIGNBIT]) != 0:
        val = -val
    kind = p[_NANKIND]
    if kind == 0:
        if field == (np.int64(1) << p[_EBITS]) - 1:
            val = math.copysign(np.inf, val) if f == 0 else np.nan
    elif kind == 1:
        if mag == magmask:
            val = math.copysign(np.nan, val)
    elif kind == 2:
        if c == 0x80:
            val = np.nan
    return np.float32(val)


# --------------------------------------------------------------------------- array kernels
@njit(**_PAR)
def _encode_native(x, p, mode, saturate, nan_ml, draws, out):
    stoch = mode == 8
    for i in prange(x.size):
        d = draws[i] if stoch else _U0
        out[i] = encode_one(np.float64(x[i]), p, mode, saturate, nan_ml, d)


@njit(**_PAR)
def _encode_table(x, table, p, mode, saturate, nan_ml, draws, out):
    stoch = mode == 8
    for i in prange(x.size):
        d = draws[i] if stoch else _U0
        out[i] = encode_one(table[np.int64(x[i])], p, mode, saturate, nan_ml, d)


@njit(**_PAR)
def _encode_f32(u, p, mode, saturate, nan_ml, out):
    """encode_one for float32 input of a signed format, deterministic modes, without branches.

    The same decisions as :func:`encode_one` on the float32 bits ``u`` (a float32 widens
    to float64 exactly, so its significand and the discarded part are the same numbers,
    23 instead of 52 bits wide). Every option is turned into a 0/1 mask before the loop
    and every decision is arithmetic on masks (no branch on an option inside the loop),
    so that LLVM vectorises the loop whatever the options.
    """
    m, emin, max_code, sign_bit = p[_M], p[_EMIN], p[_MAXCODE], p[_SIGNBIT]
    kind, inf_mag, nan_mag = p[_NANKIND], p[_INFMAG], p[_NANMAG]
    # rounding: step = above | tie & (even_rule) | (rem != 0) & directed_rule
    t_odd = mode == 0  # half_even: ties to the odd kept value step up
    t_all = mode == 1  # half_away
    t_pos = mode == 2  # half_up: ties step away from zero when positive
    t_neg = mode == 3  # half_down: ... when negative
    use_above = mode <= 4
    d_neg = mode == 5  # floor: any remainder steps a negative magnitude up
    d_pos = mode == 6  # ceil
    tz_all = mode == 7
    # overflow handling
    sat = saturate
    ieee = (not sat) and p[_HASINF] != 0
    withnan = (not sat) and p[_HASINF] == 0 and kind != 3
    nonan = (not sat) and p[_HASINF] == 0 and kind == 3
    fnuz = kind == 2
    hasnan_code = kind != 2 and kind != 3
    ml = nan_ml
    for i in prange(u.size):
        b = np.int64(u[i])
        neg = b >= 0x80000000
        a = b & 0x7FFFFFFF
        expf = a >> 23
        sig = (a & 0x7FFFFF) | ((expf != 0) * 0x800000)
        e = max(expf, 1) - 127
        e_eff = max(e, emin)
        shift = min(23 - m + e_eff - e, 31)
        kept = sig >> shift
        rem = sig & ((np.int64(1) << shift) - 1)
        half = np.int64(1) << (shift - 1)
        above = rem > half
        tie = rem == half
        nz = rem != 0
        step = (use_above & above) | (tie & ((t_odd & ((kept & 1) == 1)) | t_all | (t_pos & (not neg))
                                             | (t_neg & neg))) | (nz & ((d_neg & neg) | (d_pos & (not neg))))
        finite = expf != 0xFF
        isnan = a > 0x7F800000
        isinf = a == 0x7F800000
        mag = (((e_eff - emin) << m) + kept + np.int64(step)) * finite
        over = finite & (mag > max_code)
        toward_zero = tz_all | (d_neg & (not neg)) | (d_pos & neg)
        over_tz = over & toward_zero
        over_special = (over & (not toward_zero)) | isinf
        if sat:
            mag = max_code if (over | isinf) else mag
        mag = max_code if ((not sat) & (over_tz | (nonan & over_special))) else mag
        mag = inf_mag if (ieee & over_special) else mag
        special = isnan | (withnan & over_special)
        sign = sign_bit * neg
        code = sign | mag
        code = 0 if (fnuz & (mag == 0)) else code
        alt = 0x80 if fnuz else ((sign | nan_mag) if hasnan_code else ((sign_bit * (not neg)) if ml else NAN_MARK))
        out[i] = alt if special else code


@njit(**_PAR)
def _encode_f64(u, p, mode, saturate, nan_ml, out):
    """:func:`_encode_f32` for float64 input: the same code on the float64 bits ``u``
    (viewed as int64), 52 fraction bits instead of 23."""
    m, emin, max_code, sign_bit = p[_M], p[_EMIN], p[_MAXCODE], p[_SIGNBIT]
    kind, inf_mag, nan_mag = p[_NANKIND], p[_INFMAG], p[_NANMAG]
    # rounding: step = above | tie & (even_rule) | (rem != 0) & directed_rule
    t_odd = mode == 0  # half_even: ties to the odd kept value step up
    t_all = mode == 1  # half_away
    t_pos = mode == 2  # half_up: ties step away from zero when positive
    t_neg = mode == 3  # half_down: ... when negative
    use_above = mode <= 4
    d_neg = mode == 5  # floor: any remainder steps a negative magnitude up
    d_pos = mode == 6  # ceil
    tz_all = mode == 7
    # overflow handling
    sat = saturate
    ieee = (not sat) and p[_HASINF] != 0
    withnan = (not sat) and p[_HASINF] == 0 and kind != 3
    nonan = (not sat) and p[_HASINF] == 0 and kind == 3
    fnuz = kind == 2
    hasnan_code = kind != 2 and kind != 3
    ml = nan_ml
    for i in prange(u.size):
        b = u[i]
        neg = b < 0
        a = b & 0x7FFFFFFFFFFFFFFF
        expf = a >> 52
        sig = (a & 0xFFFFFFFFFFFFF) | ((expf != 0) * 0x10000000000000)
        e = max(expf, 1) - 1023
        e_eff = max(e, emin)
        shift = min(52 - m + e_eff - e, 63)
        kept = sig >> shift
        rem = sig & ((np.int64(1) << shift) - 1)
        half = np.int64(1) << (shift - 1)
        above = rem > half
        tie = rem == half
        nz = rem != 0
        step = (use_above & above) | (tie & ((t_odd & ((kept & 1) == 1)) | t_all | (t_pos & (not neg))
                                             | (t_neg & neg))) | (nz & ((d_neg & neg) | (d_pos & (not neg))))
        finite = expf != 0x7FF
        isnan = a > 0x7FF0000000000000
        isinf = a == 0x7FF0000000000000
        mag = (((e_eff - emin) << m) + kept + np.int64(step)) * finite
        over = finite & (mag > max_code)
        toward_zero = tz_all | (d_neg & (not neg)) | (d_pos & neg)
        over_tz = over & toward_zero
        over_special = (over & (not toward_zero)) | isinf
        if sat:
            mag = max_code if (over | isinf) else mag
        mag = max_code if ((not sat) & (over_tz | (nonan & over_special))) else mag
        mag = inf_mag if (ieee & over_special) else mag
        special = isnan | (withnan & over_special)
        sign = sign_bit * neg
        code = sign | mag
        code = 0 if (fnuz & (mag == 0)) else code
        alt = 0x80 if fnuz else ((sign | nan_mag) if hasnan_code else ((sign_bit * (not neg)) if ml else NAN_MARK))
        out[i] = alt if special else code


@njit(**_PAR)
def _decode(c, p, out):
    for i in prange(c.size):
        out[i] = decode_one(np.int64(c[i]), p)


_NATIVE = frozenset("bool int8 int16 int32 int64 uint8 uint16 uint32 uint64 float32 float64".split())
_STOCH_CHUNK = 1 << 16


def encode_into(x: np.ndarray, p: np.ndarray, mode: int, saturate: bool, nan_ml: bool, out: np.ndarray,
                rng=None) -> None:
    """Encode the flat array ``x`` (any dtype of 1, 2, 4 or 8 bytes) into the flat ``out``.

    ``rng`` (a numpy Generator) supplies one full-range uint64 draw per element, in
    order, for ``mode == 8`` (stochastic); drawn in chunks, which gives the same stream
    as one draw of the whole size (each full-range draw is one ``next_uint64``).
    """
    if x.dtype == np.float32 and mode != 8 and p[_SIGNED]:
        _encode_f32(x.view(np.uint32), p, mode, saturate, nan_ml, out)
        return
    if x.dtype == np.float64 and mode != 8 and p[_SIGNED]:
        _encode_f64(x.view(np.int64), p, mode, saturate, nan_ml, out)
        return
    if x.dtype.name in _NATIVE:
        src = x.view(np.uint8) if x.dtype == np.bool_ else x
        table = None
    else:
        table = widening_table(x.dtype)
        src = x.view(np.uint8 if x.dtype.itemsize == 1 else np.uint16)
    n = src.size
    empty = np.zeros(0, np.uint64)
    step = _STOCH_CHUNK if mode == 8 else max(n, 1)
    for start in range(0, n, step):
        stop = min(start + step, n)
        draws = (rng.integers(0, np.iinfo(np.uint64).max, size=stop - start, dtype=np.uint64, endpoint=True)
                 if mode == 8 else empty)
        if table is None:
            _encode_native(src[start:stop], p, mode, saturate, nan_ml, draws, out[start:stop])
        else:
            _encode_table(src[start:stop], table, p, mode, saturate, nan_ml, draws, out[start:stop])


def decode_into(codes: np.ndarray, p: np.ndarray, out: np.ndarray) -> None:
    """Decode the flat integer array ``codes`` (validated: in range) into the flat float32 ``out``."""
    c = codes.view(np.uint8) if codes.dtype == np.bool_ else codes
    _decode(c, p, out)
