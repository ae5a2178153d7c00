"""torchao's affine and float8 quantization primitives by name, on NumPy arrays.

torchao (and torch) are never imported: every function reproduces what torchao
0.18.0's ``torchao/quantization/quant_primitives.py`` computes in eager mode on
the CPU (torch 2.13), bit for bit, from the same arguments, with torchao's
names: ``choose_qparams_affine``, ``quantize_affine``, ``dequantize_affine``,
``fake_quantize_affine`` (torchao's ``_fake_quantize_affine``),
``choose_scale_float8``, ``quantize_affine_float8``, ``dequantize_affine_float8``
(``_choose_scale_float8`` ...), and the parameters two recipes pass to them
(:func:`int8_tensor_from_hp` for ``Int8DynamicActivationInt8WeightConfig``,
:func:`int4_tile_packed_to_4d_from_hp` for ``Int4WeightOnlyConfig``'s tinygemm
path).

How torchao computes (each item read from its source and checked against it)
==========================================================================  ===========================
what torchao does                                                           where
==========================================================================  ===========================
block_size: one tuple for per-tensor (the shape), per-channel (1 on the     ``_get_reduction_params``
channel axis) and per-group (the group on the grouped axis); a block must
divide its axis (no partial blocks); a block of 1 or the whole axis is not
split
every float op runs in the dtype of its operands (float32, or float16 /     torch's CPU kernels: reduced
bfloat16 computed in float32 and rounded once to 16 bits); mixed float16 /  floats compute in ``opmath``
bfloat16 or float32 operands promote to float32; integer zero points are     float32; type promotion
first cast to the float dtype
symmetric scale ``amax / ((qmax - qmin) / 2)`` (127.5 for int8), divided,    ``_choose_qparams_affine``
then ``clamp(scale, min=eps)``; eps defaults to the *input* dtype's
smallest normal; the zero point is ``int((qmax + qmin + 1) / 2)`` (128 for
uint8, 0 for int8)
symmetric-no-clipping-error: ``max(min_neg / qmin, max_pos / qmax)``        same
asymmetric: ``scale = (max_pos - min_neg) / (qmax - qmin)``, clamped to     same
eps; ``z = clamp(qmin - round(min_neg / scale), qmin, qmax)`` computed with
the scale *before* it is cast to ``scale_dtype``
quantize (zero-point domain INT): ``clamp(round(x * (1 / s)) + z, qmin,    ``_quantize_affine_no_dtype_cast``
qmax)``: a reciprocal in the scale's dtype, then a multiply; half-even
rounding; the zero point is added *after* rounding, in the float dtype;
the bounds are rounded to that dtype before the clamp
zero-point domain FLOAT (tinygemm): ``clamp(round((x - (z - s * mid)) /   ``_quantize_affine_tinygemm*``
s), qmin, qmax)`` with ``mid = (qmax + qmin + 1) / 2``, a true division;
dequantize ``(q - mid) * s + z``; choose: ``z = min + s * mid`` with no
clamp to zero (zero is not exactly representable)
zero-point domain NONE: ``clamp(round(x * (1 / s)), qmin, qmax)``;          ``_quantize_affine_no_zero_point*``
dequantize ``q * s``
dequantize INT: ``(float(q) - float(z)) * s`` in the output dtype           ``_dequantize_affine_no_dtype_check``
the cast to the integer dtype (x86): NaN and values at or beyond 2^31 give  ``Tensor.to`` (cvttss2si, then
INT32_MIN, then the low bits: NaN gives 0 in int8 / uint8; int32's bound    the low bits)
2^31 - 1 rounds to 2^31 in float32 and wraps to INT32_MIN
float8 scale: ``amax(|x|) / finfo.max`` in the input's dtype, optionally    ``_choose_scale_float8``
clamped to [hp_value_lb, hp_value_ub], optionally a power of two
``exp2(round(log2 s))`` (scale dtype float8_e8m0fnu), returned as float32
float8 cast: ``clamp(float32(x) / s, -max, max)`` (a true division, NaN      ``_quantize_affine_float8``
kept) then round to nearest even; a zero block has scale 0 and gives NaN
(0 / 0) codes
==========================================================================  ===========================

A block_size that reduces no axis (all ones, or blocks only on axes of size 1) hits a
torch quirk that torchao inherits: ``torch.amin(x, dim=[])`` reduces *every* axis, so
``choose_qparams_affine`` returns one scale for the whole tensor; with ``keepdim=True``
(and in ``_choose_scale_float8``) torch then fails to reshape it, and refquant raises.

Dtypes are named as torchao names them: strings (``"int8"``, ``"torch.int8"``,
``"bfloat16"``, ``"uint4"``, ``"int4"``, ``"float8_e4m3fn"``), NumPy / ml_dtypes
dtypes, or torch dtypes themselves (recognised by their ``str``).
``MappingType`` / ``ZeroPointDomain`` accept these enums, torchao's own
members, or their names as strings.

Departures (refquant raises :class:`RefquantError` where torchao asserts, raises
a Python ``TypeError`` or returns garbage): a block size of 0 or less (torchao
reads it as 1), ``quant_min >= quant_max``, a zero point of ``None`` in the INT
or FLOAT domain, a NaN integer zero point (the float-to-int cast of NaN is
undefined), float16 arithmetic with int32 bounds (torch refuses the bound), and
quantizing into ``int1`` ... ``int7`` (torch cannot store them; use int8 with
``quant_min=-8, quant_max=7``).

Not reproduced: ``Int4WeightOnlyConfig``'s default packing format (PLAIN) calls
``mslk``'s ``int4_row_quantize_zp`` (an external kernel library), and its HQQ
algorithm; :func:`int4_tile_packed_to_4d_from_hp` is its TILE_PACKED_TO_4D
format with the TINYGEMM algorithm, which torchao computes itself.
"""

from __future__ import annotations

import enum
import math

import ml_dtypes
import numpy as np

from .._errors import RefquantError
from ..formats.floats import cast as _float8_cast
from ..formats.floats import float_format

__all__ = [
    "MappingType",
    "ZeroPointDomain",
    "choose_qparams_affine",
    "choose_qparams_affine_with_min_max",
    "quantize_affine",
    "dequantize_affine",
    "fake_quantize_affine",
    "choose_scale_float8",
    "quantize_affine_float8",
    "dequantize_affine_float8",
    "get_block_size",
    "int8_tensor_from_hp",
    "int4_tile_packed_to_4d_from_hp",
    "float8_tensor_from_hp",
]


class MappingType(enum.Enum):
    """torchao's ``MappingType``: how the float range maps to the integer range."""

    SYMMETRIC = "SYMMETRIC"
    SYMMETRIC_NO_CLIPPING_ERR = "SYMMETRIC_NO_CLIPPING_ERR"
    ASYMMETRIC = "ASYMMETRIC"


class ZeroPointDomain(enum.Enum):
    """torchao's ``ZeroPointDomain``: an integer zero point, a float one (tinygemm), none."""

    INT = "INT"
    FLOAT = "FLOAT"
    NONE = "NONE"


F32 = np.dtype(np.float32)
_FLOATS = {
    "float32": F32,
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}
# torchao's _DTYPE_TO_QVALUE_BOUNDS (int1..int7 and uint1..uint7 included)
_INT_BOUNDS = {
    "uint8": (0, 255),
    "int8": (-128, 127),
    "int16": (-(2**15), 2**15 - 1),
    "int32": (-(2**31), 2**31 - 1),
    **{f"uint{b}": (0, 2**b - 1) for b in range(1, 8)},
    **{f"int{b}": (-(2 ** (b - 1)), 2 ** (b - 1) - 1) for b in range(1, 8)},
}
# what a quantize_affine result is stored in (uintN as uint8, as torchao's workaround)
_INT_STORAGE = {
    "uint8": np.dtype(np.uint8),
    "int8": np.dtype(np.int8),
    "int16": np.dtype(np.int16),
    "int32": np.dtype(np.int32),
    "int64": np.dtype(np.int64),
    **{f"uint{b}": np.dtype(np.uint8) for b in range(1, 8)},
}
_FLOAT8 = ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
_INT32_MIN = -(2**31)


# ----------------------------------------------------------------------------- arguments


def _enum(cls, value, argname):
    if isinstance(value, cls):
        return value
    name = getattr(value, "name", value)  # torchao's own enum members carry the same names
    if isinstance(name, str) and name.upper() in cls.__members__:
        return cls[name.upper()]
    raise RefquantError(
        f"{argname} = {value!r} is not a {cls.__name__}: expected one of "
        f"{', '.join(cls.__members__)}"
    )


def _dtype_name(value, argname, allowed) -> str:
    if isinstance(value, str):
        name = value.removeprefix("torch.")
    elif str(value).startswith("torch."):  # a torch.dtype, recognised without importing torch
        name = str(value)[len("torch."):]
    else:
        try:
            name = np.dtype(value).name
        except TypeError:
            name = None
    if name not in allowed:
        raise RefquantError(f"{argname} = {value!r} is not supported: expected one of "
                            f"{', '.join(allowed)}")
    return name


def _float_input(x, argname):
    a = np.asarray(x)
    if a.dtype not in _FLOATS.values():
        raise RefquantError(f"{argname} has dtype {a.dtype}: torchao takes float32, float16 or "
                            "bfloat16 tensors")
    return a


def _bounds(dtype_name, quant_min, quant_max, argname="target_dtype"):
    lo, hi = _INT_BOUNDS[dtype_name]
    qmin = lo if quant_min is None else quant_min
    qmax = hi if quant_max is None else quant_max
    for nm, v in (("quant_min", qmin), ("quant_max", qmax)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise RefquantError(f"{nm} = {v!r} is not an integer")
    qmin, qmax = int(qmin), int(qmax)
    if qmin < lo:
        raise RefquantError(f"quant_min = {qmin} is below {argname} {dtype_name}'s bound {lo}")
    if qmax > hi:
        raise RefquantError(f"quant_max = {qmax} is above {argname} {dtype_name}'s bound {hi}")
    if qmin >= qmax:
        raise RefquantError(f"quant_min = {qmin} is not below quant_max = {qmax}")
    return qmin, qmax


def _reduction(shape, block_size):
    """torchao's ``_get_reduction_params``: the shape to view as and the axes to reduce."""
    if isinstance(block_size, (str, bytes)) or not hasattr(block_size, "__len__"):
        raise RefquantError(f"block_size = {block_size!r} is not a tuple of ints")
    block = tuple(block_size)
    if len(block) != len(shape):
        raise RefquantError(f"block_size {block} has {len(block)} entries for an input of "
                            f"{len(shape)} dimensions {tuple(shape)}")
    view, axes = [], []
    for i, (b, n) in enumerate(zip(block, shape, strict=True)):
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1:
            raise RefquantError(f"block_size[{i}] = {b!r} is not a positive integer")
        b = int(b)
        if b != n and b > 1:
            if n % b:
                raise RefquantError(f"block_size[{i}] = {b} does not divide the input's size "
                                    f"{n} on axis {i} (torchao has no partial blocks)")
            view += [n // b, b]
            axes.append(len(view) - 1)
        else:
            view.append(n)
            if b != 1:
                axes.append(len(view) - 1)
    return view, axes


def _axes(axes):
    """The axes torch reduces over: an empty list means *every* axis (``torch.amin(x, [])``),
    so a block_size of all ones (or a block that does not reduce) gives one scale overall."""
    return tuple(axes) if axes else None


def _blocks_shape(shape, block_size, size):
    out = tuple(n // int(b) for n, b in zip(shape, block_size, strict=True))
    if math.prod(out) != size:
        raise RefquantError(f"block_size {tuple(block_size)} reduces nothing on input "
                            f"{tuple(shape)}: torch's amin over no axes reduces them all, and "
                            f"its one value cannot be shaped {out}")
    return out


def _params_shape(shape, block_size):
    view, axes = _reduction(shape, block_size)
    return [1 if i in axes else v for i, v in enumerate(view)]


def _param(p, shape, block_size, argname, allowed=_FLOATS):
    """A scale or zero point viewed as torchao views it (any shape with one value per block)."""
    a = np.asarray(p)
    if a.dtype.name not in allowed and a.dtype not in allowed.values():
        raise RefquantError(f"{argname} has dtype {a.dtype}: expected one of {', '.join(allowed)}")
    target = _params_shape(shape, block_size)
    if a.size != math.prod(target):
        raise RefquantError(f"{argname} has {a.size} values for {math.prod(target)} blocks "
                            f"(input {tuple(shape)}, block_size {tuple(block_size)})")
    return a.reshape(target)


# ------------------------------------------------------------------- torch's float arithmetic


def _promote(*dtypes):
    """torch's promotion among float32 / float16 / bfloat16 (integers give way to floats)."""
    fl = {np.dtype(d) for d in dtypes if np.dtype(d) in _FLOATS.values()}
    if not fl:
        return F32
    if len(fl) == 1:
        return fl.pop()
    return F32  # float16 with bfloat16, or anything with float32


def _to(a, dtype):
    """``Tensor.to(dtype)`` for a float target: through float32 (as c10's Half / BFloat16)."""
    a = np.asarray(a)
    dtype = np.dtype(dtype)
    if a.dtype == dtype:
        return a
    with np.errstate(all="ignore"):
        return a.astype(F32).astype(dtype)


def _scalar(v):
    """A Python number on the right of a torch op: its kernels see it as float32 (opmath)."""
    return np.asarray(np.float32(v))


def _op(fn, a, b, out=None):
    """One elementwise torch op: operands cast to the common dtype, computed in float32,
    rounded once to the result dtype."""
    a, b = np.asarray(a), np.asarray(b)
    out = _promote(a.dtype, b.dtype) if out is None else np.dtype(out)
    with np.errstate(all="ignore"):
        r = fn(_to(_to(a, out), F32) if a.ndim else _to(a, F32),
               _to(_to(b, out), F32) if b.ndim else _to(b, F32))
    return _to(r, out)


def _clamp(a, lo=None, hi=None):
    """``torch.clamp`` with Python bounds: each bound first converted to the tensor's dtype
    (float32 first, as ``Scalar::to``); NaN stays NaN."""
    a = np.asarray(a)
    out = a
    for v, fn in ((lo, np.maximum), (hi, np.minimum)):
        if v is None:
            continue
        if a.dtype == np.float16 and abs(float(v)) > 65504:
            raise RefquantError(f"the bound {v} does not fit float16: torch refuses to clamp a "
                                "float16 tensor with it ('value cannot be converted to type "
                                "c10::Half without overflow')")
        with np.errstate(all="ignore"):
            b = np.asarray(np.float32(v)).astype(a.dtype)
        out = _to(fn(_to(out, F32), _to(b, F32)), a.dtype)
    return out


def _round(a):
    """``torch.round``: half to even, in the tensor's dtype (exact for every float dtype)."""
    return _to(np.rint(_to(a, F32)), np.asarray(a).dtype)


def _to_int(a, storage):
    """``Tensor.to(int dtype)`` on x86: truncation to int32 (NaN, ±Inf and values outside
    [-2^31, 2^31) give INT32_MIN, cvttss2si's 'integer indefinite'), then the low bits."""
    x = np.asarray(a).astype(np.float64)
    with np.errstate(invalid="ignore"):
        bad = ~((x >= -(2.0**31)) & (x < 2.0**31))
        i = np.where(bad, _INT32_MIN, np.trunc(np.where(bad, 0, x))).astype(np.int64)
    return i.astype(storage)


def _zero_point_out(zp, dtype_name):
    if dtype_name in _FLOATS:
        return _to(zp, _FLOATS[dtype_name])
    if np.isnan(_to(zp, F32)).any():
        raise RefquantError("the zero point is NaN (a NaN or infinite input range) and "
                            f"zero_point_dtype {dtype_name} cannot hold it: torch's cast of NaN "
                            "to an integer is undefined")
    return _to_int(zp, _INT_STORAGE[dtype_name])


# --------------------------------------------------------------------------------- choose


def _qparams_from_min_max(mn, mx, mapping, qmin, qmax, eps, preserve_zero, domain, zp_dtype):
    """The scale and zero point from per-block min / max, in their dtype (torchao's formulas)."""
    dt = mn.dtype
    if preserve_zero:
        mn = np.minimum(mn, np.zeros((), dt))  # torch.min / torch.max propagate NaN
        mx = np.maximum(mx, np.zeros((), dt))
    if mapping is not MappingType.ASYMMETRIC:
        if mapping is MappingType.SYMMETRIC:
            amax = np.maximum(-mn, mx)
            scale = _op(np.divide, amax, _scalar(float(qmax - qmin) / 2), dt)
        else:
            smin = _op(np.divide, mn, _scalar(float(qmin)), dt)
            smax = _op(np.divide, mx, _scalar(float(qmax)), dt)
            scale = np.where(smin > smax, smin, smax)
        # torch.full_like(scale, int(...)): a Python int in the scale's dtype
        zp = np.full(scale.shape, np.float32(int((qmax + qmin + 1) / 2))).astype(dt)
        scale = _clamp(scale, lo=eps)
        return scale, zp, zp_dtype
    scale = _op(np.divide, _op(np.subtract, mx, mn, dt), _scalar(float(qmax - qmin)), dt)
    scale = _clamp(scale, lo=eps)
    if domain is ZeroPointDomain.FLOAT:
        mid = (qmax + qmin + 1) / 2
        zp = _op(np.add, mn, _op(np.multiply, scale, _scalar(mid), dt), dt)
        return scale, zp, zp_dtype or dt.name
    # quant_min - round(min / scale): a Python int on the left is cast to the tensor's dtype
    zp = _op(np.subtract, np.asarray(np.float32(qmin)).astype(dt).reshape((1,) * mn.ndim),
             _round(_op(np.divide, mn, scale, dt)), dt)
    zp = _clamp(zp, qmin, qmax)
    return scale, zp, zp_dtype or "int32"


def _choose(input, mapping_type, block_size, target_dtype, quant_min, quant_max, eps,  # noqa: A002 (torchao's name)
            scale_dtype, zero_point_dtype, keepdim, zero_point_domain, preserve_zero):
    x = _float_input(input, "input")
    mapping = _enum(MappingType, mapping_type, "mapping_type")
    domain = _enum(ZeroPointDomain, zero_point_domain, "zero_point_domain")
    tname = _dtype_name(target_dtype, "target_dtype", _INT_BOUNDS)
    qmin, qmax = _bounds(tname, quant_min, quant_max)
    if preserve_zero is None:
        preserve_zero = domain is not ZeroPointDomain.FLOAT
    if not preserve_zero and (mapping is not MappingType.ASYMMETRIC
                              or domain is ZeroPointDomain.NONE):
        raise RefquantError(f"preserve_zero=False needs mapping_type ASYMMETRIC and zero point "
                            f"domain INT or FLOAT, got {mapping.name} / {domain.name}")
    if domain is ZeroPointDomain.FLOAT and preserve_zero:
        raise RefquantError("zero_point_domain FLOAT (tinygemm) does not preserve zero: "
                            "pass preserve_zero=False or None")
    if x.ndim == 0 or x.size == 0:
        raise RefquantError(f"input of shape {x.shape} has no block to reduce")
    sname = x.dtype.name if scale_dtype is None else _dtype_name(scale_dtype, "scale_dtype",
                                                                 _FLOATS)
    if isinstance(zero_point_dtype, str) and zero_point_dtype == "default":
        zero_point_dtype = None if domain is ZeroPointDomain.FLOAT else "int32"
    zname = None if zero_point_dtype is None else _dtype_name(
        zero_point_dtype, "zero_point_dtype", {**_FLOATS, **_INT_STORAGE})
    if eps is None:
        eps = float(np.finfo(x.dtype).smallest_normal)
    view, axes = _reduction(x.shape, block_size)
    xb = x.reshape(view)
    with np.errstate(invalid="ignore"):
        mn = np.min(xb, axis=_axes(axes), keepdims=keepdim)
        mx = np.max(xb, axis=_axes(axes), keepdims=keepdim)
    scale, zp, zname = _qparams_from_min_max(np.asarray(mn), np.asarray(mx), mapping, qmin, qmax,
                                             eps, preserve_zero, domain, zname)
    if keepdim:
        out_shape = _blocks_shape(x.shape, block_size, scale.size)
        scale, zp = scale.reshape(out_shape), zp.reshape(out_shape)
    scale = _to(scale, _FLOATS[sname])
    if domain is ZeroPointDomain.NONE:
        return scale, None
    return scale, _zero_point_out(zp, zname or x.dtype.name)


def choose_qparams_affine(input, mapping_type, block_size, target_dtype, quant_min=None,  # noqa: A002 (torchao's name)
                          quant_max=None, eps=None, scale_dtype=None, zero_point_dtype="default",
                          keepdim=False, *, zero_point_domain=ZeroPointDomain.INT,
                          preserve_zero=None):
    """torchao's ``choose_qparams_affine``: one scale and zero point per block.

    Parameters
    ----------
    input : ndarray of float32, float16 or bfloat16
        At least one dimension, not empty.
    mapping_type : MappingType or str
        SYMMETRIC, SYMMETRIC_NO_CLIPPING_ERR or ASYMMETRIC.
    block_size : tuple of int
        One entry per dimension, each dividing its axis (or equal to it, or 1).
    target_dtype : str or dtype
        ``uint8``, ``int8``, ``int16``, ``int32``, ``uint1`` ... ``uint7``, ``int1`` ... ``int7``.
    quant_min, quant_max : int, optional
        Default: the dtype's bounds.
    eps : float, optional
        Smallest scale; default: the smallest normal of the *input's* dtype (torchao).
    scale_dtype : str, optional
        float32 / float16 / bfloat16; default the input's dtype.
    zero_point_dtype : str, optional
        Default int32 (INT domain) or the input's dtype (FLOAT domain), as torchao's two
        functions; None keeps the float dtype (symmetric) or int32 (asymmetric), as torchao.
    keepdim : bool
        False: reduced axes removed (per-tensor gives a 0-d scale); True: shape
        ``input.shape // block_size``.
    zero_point_domain : ZeroPointDomain or str, keyword-only
        INT: torchao's ``choose_qparams_affine``; FLOAT: ``_choose_qparams_affine_tinygemm``
        (ASYMMETRIC only, zero point ``min + scale * mid`` in the input's dtype by default);
        NONE: the INT scale and ``None``.  (Not an argument of torchao 0.18's function;
        named here for its three variants.)
    preserve_zero : bool, optional, keyword-only
        False with INT is ``_choose_qparams_affine_dont_preserve_zero`` (min and max are
        not widened to include 0).

    Returns
    -------
    scale, zero_point : ndarray
        zero_point is None for the NONE domain.

    Formula
    -------
    With :math:`m^- = \\min(\\min x, 0)`, :math:`m^+ = \\max(\\max x, 0)` per block:
    symmetric :math:`s = \\max(-m^-, m^+) / ((q_{max} - q_{min}) / 2)`,
    :math:`z = \\lfloor (q_{max} + q_{min} + 1) / 2 \\rceil_0`;
    no-clipping-error :math:`s = \\max(m^- / q_{min}, m^+ / q_{max})`;
    asymmetric :math:`s = (m^+ - m^-) / (q_{max} - q_{min})`,
    :math:`z = \\mathrm{clamp}(q_{min} - \\mathrm{round}(m^- / s), q_{min}, q_{max})`;
    then :math:`s = \\max(s, \\epsilon)` (before z, asymmetric; after, symmetric).

    Reference
    ---------
    torchao 0.18.0 ``quant_primitives._choose_qparams_affine`` (and ``_tinygemm``,
    ``_dont_preserve_zero``). Every op runs in the input's dtype (float16 / bfloat16 ops
    computed in float32 and rounded once); ``round`` is half to even; the scale is divided,
    not multiplied by a reciprocal; eps is rounded to the input's dtype; NaN in a block gives
    a NaN scale (a NaN asymmetric zero point is refused for integer zero points).
    """
    return _choose(input, mapping_type, block_size, target_dtype, quant_min, quant_max, eps,
                   scale_dtype, zero_point_dtype, keepdim, zero_point_domain, preserve_zero)


def choose_qparams_affine_with_min_max(min_val, max_val, mapping_type, block_size, target_dtype,
                                       quant_min=None, quant_max=None, eps=None, scale_dtype=None,
                                       zero_point_dtype=None):
    """torchao's ``choose_qparams_affine_with_min_max``: the same formulas on given min / max.

    Formula
    -------
    As :func:`choose_qparams_affine` with :math:`\\min x`, :math:`\\max x` given per block.

    Reference
    ---------
    torchao 0.18.0 ``quant_primitives.choose_qparams_affine_with_min_max``; ``block_size``
    is accepted and unused, as there; eps defaults to ``min_val``'s dtype's smallest normal;
    the zero point dtype defaults to int32 (asymmetric) or stays float (symmetric).
    """
    mn = _float_input(min_val, "min_val")
    mx = _float_input(max_val, "max_val")
    if mn.dtype != mx.dtype or mn.shape != mx.shape:
        raise RefquantError(f"min_val ({mn.dtype}, {mn.shape}) and max_val ({mx.dtype}, "
                            f"{mx.shape}) differ in dtype or shape")
    mapping = _enum(MappingType, mapping_type, "mapping_type")
    tname = _dtype_name(target_dtype, "target_dtype", _INT_BOUNDS)
    qmin, qmax = _bounds(tname, quant_min, quant_max)
    sname = mn.dtype.name if scale_dtype is None else _dtype_name(scale_dtype, "scale_dtype",
                                                                  _FLOATS)
    zname = None if zero_point_dtype is None else _dtype_name(
        zero_point_dtype, "zero_point_dtype", {**_FLOATS, **_INT_STORAGE})
    if eps is None:
        eps = float(np.finfo(mn.dtype).smallest_normal)
    scale, zp, zname = _qparams_from_min_max(mn, mx, mapping, qmin, qmax, eps, True,
                                             ZeroPointDomain.INT, zname)
    return _to(scale, _FLOATS[sname]), _zero_point_out(zp, zname or mn.dtype.name)


# ------------------------------------------------------------------- quantize / dequantize


def _quantize_float(x, block_size, scale, zero_point, qmin, qmax, domain):
    """torchao's ``_quantize_affine*_no_dtype_cast``: rounded, clamped codes as floats."""
    s = _param(scale, x.shape, block_size, "scale")
    view, _ = _reduction(x.shape, block_size)
    xb = x.reshape(view)
    zp = None
    if zero_point is not None and np.asarray(zero_point).size > 0:
        zp = _param(zero_point, x.shape, block_size, "zero_point",
                    {**_FLOATS, **_INT_STORAGE})
    if domain is ZeroPointDomain.FLOAT:
        if zp is None:
            raise RefquantError("zero_point is None: the FLOAT domain needs a float zero point")
        mid = (qmax + qmin + 1) / 2
        min_val = _op(np.subtract, zp, _op(np.multiply, s, _scalar(mid), s.dtype))
        q = _op(np.divide, _op(np.subtract, xb, min_val), s)
        q = _round(q)
    else:
        recip = _op(np.divide, np.ones((1,) * s.ndim, s.dtype), s, s.dtype)  # 1.0 / scale
        q = _round(_op(np.multiply, xb, recip))
        if domain is ZeroPointDomain.INT:
            if zp is None:
                raise RefquantError("zero_point is None: torchao's INT domain adds a zero point "
                                    "(pass zero_point_domain='NONE' for none)")
            q = _op(np.add, q, zp)
    return _clamp(q, qmin, qmax).reshape(x.shape)


def quantize_affine(input, block_size, scale, zero_point, output_dtype, quant_min=None,  # noqa: A002 (torchao's name)
                    quant_max=None, *, zero_point_domain=ZeroPointDomain.INT):
    """torchao's ``quantize_affine`` (and its FLOAT / NONE domain variants): integer codes.

    Parameters
    ----------
    input : ndarray of float32, float16 or bfloat16
    block_size : tuple of int
    scale : ndarray
        One value per block (any shape with that many values, as torch's ``view``).
    zero_point : ndarray or None
        Integer or float, one per block; ignored in the NONE domain.
    output_dtype : str
        uint8, int8, int16, int32, or uint1 ... uint7 (stored as uint8).
    quant_min, quant_max : int, optional
    zero_point_domain : keyword-only
        INT (``quantize_affine``), FLOAT (``_quantize_affine_tinygemm``), NONE
        (``_quantize_affine_no_zero_point``).

    Formula
    -------
    INT :math:`q = \\mathrm{clamp}(\\mathrm{round}(x \\cdot (1/s)) + z, q_{min}, q_{max})`;
    FLOAT :math:`q = \\mathrm{clamp}(\\mathrm{round}((x - (z - s\\,m)) / s), q_{min}, q_{max})`,
    :math:`m = (q_{max} + q_{min} + 1) / 2`; NONE
    :math:`q = \\mathrm{clamp}(\\mathrm{round}(x \\cdot (1/s)), q_{min}, q_{max})`.

    Reference
    ---------
    torchao 0.18.0 ``_quantize_affine_no_dtype_cast``: ``1.0 / scale`` rounded to the scale's
    dtype, a multiply in the promoted dtype, ``torch.round`` (half to even), the zero point
    added after rounding in that float dtype, the bounds rounded to it, then ``.to(dtype)``
    (x86: NaN gives INT32_MIN's low bits; ±Inf saturate through the clamp).
    """
    x = _float_input(input, "input")
    domain = _enum(ZeroPointDomain, zero_point_domain, "zero_point_domain")
    oname = _dtype_name(output_dtype, "output_dtype", _INT_BOUNDS)
    qmin, qmax = _bounds(oname, quant_min, quant_max, "output_dtype")
    if oname not in _INT_STORAGE:
        raise RefquantError(f"output_dtype {oname}: torch cannot store it ('copy_' not implemented"
                            f"); use int8 with quant_min={qmin}, quant_max={qmax}")
    q = _quantize_float(x, block_size, scale, zero_point, qmin, qmax, domain)
    return _to_int(q, _INT_STORAGE[oname])


def _dequantize_float(q, block_size, scale, zero_point, qmin, qmax, out, domain):
    s = _param(scale, q.shape, block_size, "scale")
    view, _ = _reduction(q.shape, block_size)
    qb = q.reshape(view)
    zp = None
    if zero_point is not None:
        zp = _param(zero_point, q.shape, block_size, "zero_point", {**_FLOATS, **_INT_STORAGE})
    if domain is ZeroPointDomain.INT:
        d = _to(qb, out)
        if zp is not None:
            d = _op(np.subtract, d, _to(zp, out))
        d = _op(np.multiply, d, s)
    elif domain is ZeroPointDomain.FLOAT:
        mid = (qmax + qmin + 1) / 2
        # an integer tensor minus a Python float is float32; a float one keeps its dtype
        qf = qb if qb.dtype.kind == "f" else qb.astype(F32)
        d = _op(np.subtract, qf, _scalar(mid), qf.dtype)
        d = _to(d, out)
        d = _to(_op(np.multiply, d, s), out)  # in place: computed in the common dtype
        if zp is not None:
            d = _to(_op(np.add, d, zp), out)
    else:
        if zp is not None:
            raise RefquantError("zero_point must be None in the NONE domain")
        d = _op(np.multiply, _to(qb, out), s)
    return _to(d, out).reshape(q.shape)


def dequantize_affine(input, block_size, scale, zero_point, input_dtype, quant_min=None,  # noqa: A002 (torchao's name)
                      quant_max=None, *, output_dtype="float32",
                      zero_point_domain=ZeroPointDomain.INT):
    """torchao's ``dequantize_affine`` (and its FLOAT / NONE domain variants).

    Formula
    -------
    INT :math:`\\hat x = (q - z)\\,s`; FLOAT :math:`\\hat x = (q - m)\\,s + z`; NONE
    :math:`\\hat x = q\\,s`.

    Reference
    ---------
    torchao 0.18.0 ``_dequantize_affine_no_dtype_check``: ``q.to(output_dtype) -
    z.to(output_dtype)`` then ``* scale`` (promoted: a float32 scale makes a bfloat16 result
    float32 before the final cast), each op rounded once; tinygemm's ``q - mid`` is float32
    for integer codes.  ``input`` must have ``input_dtype`` (uintN: uint8).
    """
    q = np.asarray(input)
    domain = _enum(ZeroPointDomain, zero_point_domain, "zero_point_domain")
    iname = _dtype_name(input_dtype, "input_dtype", _INT_BOUNDS)
    if iname not in _INT_STORAGE:
        raise RefquantError(f"input_dtype {iname}: torch cannot store it; dequantize the int8 "
                            "codes with input_dtype='int8' and the same quant_min / quant_max")
    if q.dtype != _INT_STORAGE[iname]:
        raise RefquantError(f"input has dtype {q.dtype}, expected {_INT_STORAGE[iname]} for "
                            f"input_dtype {iname}")
    oname = _dtype_name(output_dtype, "output_dtype", _FLOATS)
    qmin, qmax = _bounds(iname, quant_min, quant_max, "input_dtype")
    return _dequantize_float(q, block_size, scale, zero_point, qmin, qmax, _FLOATS[oname],
                             domain)


def fake_quantize_affine(input, block_size, scale, zero_point, quant_dtype, quant_min=None,  # noqa: A002 (torchao's name)
                         quant_max=None, zero_point_domain=ZeroPointDomain.INT):
    """torchao's ``_fake_quantize_affine``: quantize then dequantize, no integer cast.

    Formula
    -------
    :math:`\\tilde x = \\mathrm{dequantize}(\\mathrm{quantize}(x))` with the codes kept as
    floats (of the promoted dtype) and the result in the input's dtype.

    Reference
    ---------
    torchao 0.18.0 ``_do_fake_quantize_affine``: the ``*_no_dtype_cast`` quantize and
    ``*_no_dtype_check`` dequantize of the chosen domain; NaN stays NaN, ±Inf saturate to
    the bounds.  ``int4`` (and int1 ... int7) are accepted here: no tensor of them is made.
    """
    x = _float_input(input, "input")
    domain = _enum(ZeroPointDomain, zero_point_domain, "zero_point_domain")
    if domain is ZeroPointDomain.NONE and zero_point is not None:
        raise RefquantError("zero_point should be None when zero_point_domain is NONE")
    qname = _dtype_name(quant_dtype, "quant_dtype", _INT_BOUNDS)
    qmin, qmax = _bounds(qname, quant_min, quant_max, "quant_dtype")
    q = _quantize_float(x, block_size, scale, zero_point, qmin, qmax, domain)
    return _dequantize_float(q, block_size, scale, zero_point, qmin, qmax, x.dtype, domain)


# ---------------------------------------------------------------------------------- float8


def _expand_scale(scale, shape, argname="scale"):
    """torchao's ``_maybe_expand_scale_to_tensor_shape``."""
    s = np.asarray(scale)
    shape = tuple(shape)
    if s.shape == shape or s.size == 1:
        return s
    if s.ndim == len(shape) and all(a in (b, 1) for a, b in zip(s.shape, shape, strict=True)):
        return s
    if s.ndim != len(shape):
        raise RefquantError(f"{argname} has {s.ndim} dimensions but the tensor has {len(shape)}")
    for i, (n, m) in enumerate(zip(shape, s.shape, strict=True)):
        if m == 0 or n % m:
            raise RefquantError(f"{argname} size {m} on axis {i} does not divide the tensor's "
                                f"size {n}")
    for i, (n, m) in enumerate(zip(shape, s.shape, strict=True)):
        if n // m > 1:
            s = np.repeat(s, n // m, axis=i)
    return s


def choose_scale_float8(tensor, block_size, float8_dtype="float8_e4m3fn", scale_dtype="float32",
                        hp_value_lb=None, hp_value_ub=None):
    """torchao's ``_choose_scale_float8``: one float32 scale per block (tensorwise, rowwise, ...).

    Formula
    -------
    :math:`s = \\mathrm{clamp}(\\max|x|, lb, ub) / \\mathrm{finfo.max}` per block; with
    ``scale_dtype="float8_e8m0fnu"``, :math:`s = 2^{\\mathrm{round}(\\log_2 s)}`.

    Reference
    ---------
    torchao 0.18.0 ``quant_primitives._choose_scale_float8``: amax and the division in the
    tensor's dtype (a bfloat16 tensor gives a bfloat16-rounded scale), ``torch.round`` half
    to even on the log, the result cast to float32 and shaped ``shape // block_size``.  A
    zero block gives scale 0 (no eps); NaN gives NaN.
    """
    x = _float_input(tensor, "tensor")
    fname = _dtype_name(float8_dtype, "float8_dtype", _FLOAT8)
    sname = _dtype_name(scale_dtype, "scale_dtype", ("float32", "float8_e8m0fnu"))
    if x.ndim == 0 or x.size == 0:
        raise RefquantError(f"tensor of shape {x.shape} has no block to reduce")
    view, axes = _reduction(x.shape, block_size)
    with np.errstate(invalid="ignore"):
        amax = np.max(np.abs(x.reshape(view)), axis=_axes(axes), keepdims=True)
    if hp_value_lb is not None or hp_value_ub is not None:
        amax = _clamp(amax, hp_value_lb, hp_value_ub)
    scale = _op(np.divide, amax, _scalar(float_format(fname).max), x.dtype)
    scale = scale.reshape(_blocks_shape(x.shape, block_size, scale.size))
    if sname != "float32":
        with np.errstate(all="ignore"):
            # float32 log2, correctly rounded (through float64), then in the scale's dtype
            lg = _to(np.log2(_to(scale, F32).astype(np.float64)).astype(F32), scale.dtype)
            scale = _to(np.exp2(_to(_round(lg), F32)), scale.dtype)
    return _to(scale, F32)


def quantize_affine_float8(tensor, scale, float8_dtype="float8_e4m3fn"):
    """torchao's ``_quantize_affine_float8``: scaled, clamped, rounded to float8.

    Formula
    -------
    :math:`y = \\mathrm{fp8}(\\mathrm{clamp}(x / s, -\\max, \\max))`.

    Reference
    ---------
    torchao 0.18.0 ``quant_primitives._quantize_affine_float8``: ``float32(x) / scale`` (a
    true division, the scale expanded block by block), ``clamp`` (NaN kept; 0 / 0 from a
    zero block is NaN), then ``Tensor.to(float8)``: round to nearest even.
    """
    x = _float_input(tensor, "tensor")
    fname = _dtype_name(float8_dtype, "float8_dtype", _FLOAT8)
    s = _expand_scale(_float_input(scale, "scale"), x.shape)
    t = _op(np.divide, _to(x, F32), s, F32)
    mx = float_format(fname).max
    t = _clamp(t, -mx, mx)
    return _float8_cast(t, fname, saturate=True)


def dequantize_affine_float8(tensor, scale, output_dtype="float32"):
    """torchao's ``_dequantize_affine_float8``.

    Formula
    -------
    :math:`\\hat x = \\mathrm{float32}(y) \\cdot s`, then cast to ``output_dtype``.

    Reference
    ---------
    torchao 0.18.0 ``quant_primitives._dequantize_affine_float8`` (one float32 multiply,
    one rounding to the output dtype).
    """
    y = np.asarray(tensor)
    _dtype_name(y.dtype, "tensor's dtype", _FLOAT8)
    oname = _dtype_name(output_dtype, "output_dtype", _FLOATS)
    s = _expand_scale(_float_input(scale, "scale"), y.shape)
    return _to(_op(np.multiply, y.astype(F32), s, F32), _FLOATS[oname])


# --------------------------------------------------------------------------------- recipes


def get_block_size(shape, granularity):
    """torchao's ``get_block_size`` for ``"per_tensor"``, ``"per_row"`` (last axis),
    ``"per_token"``, ``("per_axis", axis)`` and ``("per_group", group_size)``.

    Formula
    -------
    per-tensor: the shape; per-row / per-token: :math:`(1, \\ldots, 1, n_{-1})`; per-axis
    :math:`a`: the shape with 1 at :math:`a`; per-group :math:`g`: :math:`(1, \\ldots, 1, g)`.

    Reference
    ---------
    torchao 0.18.0 ``torchao/quantization/utils.py`` ``get_block_size``.
    """
    shape = tuple(int(n) for n in shape)
    kind, arg = (granularity, None) if isinstance(granularity, str) else tuple(granularity)
    if kind == "per_tensor":
        return shape
    if kind in ("per_row", "per_token"):
        return (1,) * (len(shape) - 1) + shape[-1:]
    if kind == "per_axis":
        b = list(shape)
        b[arg] = 1
        return tuple(b)
    if kind == "per_group":
        if shape[-1] % arg:
            raise RefquantError(f"last dimension {shape[-1]} is not divisible by group size {arg}")
        return (1,) * (len(shape) - 1) + (arg,)
    raise RefquantError(f"granularity = {granularity!r} is not one of per_tensor, per_row, "
                        "per_token, ('per_axis', axis), ('per_group', size)")


def int8_tensor_from_hp(hp_tensor, granularity="per_row", mapping_type=MappingType.SYMMETRIC,
                        reduce_range=False):
    """``Int8Tensor.from_hp``: what ``Int8DynamicActivationInt8WeightConfig`` does to a weight
    (and, with ``act_mapping_type``, to each activation).

    Returns
    -------
    qdata : int8 ndarray, scale : float32 ndarray (``keepdim``), zero_point : int8 ndarray,
    block_size : tuple

    Formula
    -------
    :func:`choose_qparams_affine` (target int8, bounds [-128, 127] or [-64, 63] with
    ``reduce_range``, ``eps = finfo(float32).eps`` = 2^-23 for every input dtype, scale
    float32, zero point int8, keepdim) then :func:`quantize_affine`.

    Reference
    ---------
    torchao 0.18.0 ``quantize_/workflows/int8/int8_tensor.py`` ``Int8Tensor.from_hp``;
    the config's defaults: weight and activation both PerRow, activations SYMMETRIC.
    """
    x = _float_input(hp_tensor, "hp_tensor")
    if granularity not in ("per_tensor", "per_row"):
        raise RefquantError(f"granularity = {granularity!r}: Int8DynamicActivationInt8WeightConfig "
                            "supports per_tensor and per_row")
    mapping = _enum(MappingType, mapping_type, "mapping_type")
    block = get_block_size(x.shape, granularity)
    qmin, qmax = _INT_BOUNDS["int8"]
    if reduce_range:
        qmin, qmax = qmin // 2, qmax // 2
    scale, zp = choose_qparams_affine(x, mapping, block, "int8", qmin, qmax,
                                      float(np.finfo(np.float32).eps), "float32", "int8",
                                      keepdim=True)
    q = quantize_affine(x, block, scale, zp, "int8", qmin, qmax)
    return q, scale, zp, block


def int4_tile_packed_to_4d_from_hp(weight, group_size=128):
    """``Int4WeightOnlyConfig(int4_packing_format="tile_packed_to_4d")`` with the TINYGEMM
    algorithm: unsigned 4-bit codes, bfloat16 scales and float-domain zero points, per group.

    Returns
    -------
    codes : int32 ndarray in [0, 15] (before tinygemm's packing), scale : bfloat16,
    zero_point : bfloat16 (both of shape ``(..., n_groups)``)

    Formula
    -------
    :func:`choose_qparams_affine` with ASYMMETRIC, zero point domain FLOAT, target int32
    with bounds [0, 15], eps the bfloat16 smallest normal (2^-126), scale and zero point
    bfloat16, block ``(1, ..., group_size)``; :func:`quantize_affine` in the FLOAT domain.

    Reference
    ---------
    torchao 0.18.0 ``Int4TilePackedTo4dTensor.from_hp`` (bfloat16 weights only).  torchao
    pads the weight with zeros to in_features a multiple of 1024 and out_features a multiple
    of the tile first: whole zero groups, which do not change the groups returned here.
    """
    w = _float_input(weight, "weight")
    if w.dtype != _FLOATS["bfloat16"]:
        raise RefquantError(f"weight has dtype {w.dtype}: Int4TilePackedTo4dTensor takes "
                            "bfloat16 only")
    if w.ndim < 1 or w.shape[-1] % group_size:
        raise RefquantError(f"weight's last dimension {w.shape[-1:]} is not a multiple of "
                            f"group_size {group_size} (torchao leaves such a weight unquantized)")
    block = get_block_size(w.shape, ("per_group", group_size))
    scale, zp = choose_qparams_affine(w, "ASYMMETRIC", block, "int32", 0, 15,
                                      scale_dtype="bfloat16", zero_point_dtype="bfloat16",
                                      zero_point_domain="FLOAT")
    q = quantize_affine(w, block, scale, zp, "int32", 0, 15, zero_point_domain="FLOAT")
    return q, scale, zp


def float8_tensor_from_hp(hp_tensor, float8_dtype="float8_e4m3fn", granularity="per_row",
                          hp_value_lb=None, hp_value_ub=None):
    """``Float8Tensor.from_hp`` on torch's kernel path (the CPU path of
    ``Float8DynamicActivationFloat8WeightConfig``): a tensorwise or rowwise float8 cast.

    Returns
    -------
    qdata : float8 ndarray, scale : float32 ndarray of shape ``shape // block_size``

    Formula
    -------
    :func:`choose_scale_float8` then :func:`quantize_affine_float8`.

    Reference
    ---------
    torchao 0.18.0 ``quantize_/workflows/float8/float8_tensor.py`` (``kernel_choice ==
    "torch"``; the mslk kernel used on SM90 GPUs is not reproduced).
    """
    x = _float_input(hp_tensor, "hp_tensor")
    if granularity not in ("per_tensor", "per_row"):
        raise RefquantError(f"granularity = {granularity!r}: expected per_tensor or per_row")
    block = get_block_size(x.shape, granularity)
    scale = choose_scale_float8(x, block, float8_dtype, "float32", hp_value_lb, hp_value_ub)
    return quantize_affine_float8(x, scale, float8_dtype), scale
