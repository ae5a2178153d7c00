"""PyTorch's quantization semantics by name, on NumPy arrays (torch is never imported).

Functions carry PyTorch's names and argument names and reproduce its CPU
results bit for bit (torch 2.13, x86 build with FBGEMM), quirks included:

=====================================================  =====================================================
quirk                                                  where in PyTorch
=====================================================  =====================================================
multiply by the float32 reciprocal ``1.0f / scale``     fbgemm ``Quantize`` (QuantUtils.h), pytorch#139464:
instead of dividing (x = 0.273939937, s = 0.00214854861   ``x * (1/s)`` is 127.5 in float32, x / s is
gives 128 for quint8 / qint32, ONNX gives 127)            127.49999...
quint8 / qint8 per tensor: zero point added *before*   fbgemm ``QuantizeAvx2<T, LEGACY=true>``
rounding, in one fused multiply-add                    (src/QuantUtilsAvx2.cc): ``_mm256_fmadd_ps(x, 1/s, z)``
``fma(x, 1/s, z)`` (one rounding), ties to even        then ``_mm256_cvtps_epi32``; called by
                                                       ``quantize_tensor_per_tensor_affine_cpu``
                                                       (QuantizedOpKernels.cpp) with the default LEGACY
qint32 per tensor and every per-channel quantize:      fbgemm ``Quantize<T, LEGACY=true>`` (scalar):
``nearbyint(float(z) + x * (1/s))``: zero point added   ``std::nearbyint(zero_point + transformed_val)``
before rounding, two float32 roundings                 via ``at::native::quantize_val``
NaN → qmax (quint8/qint8 per tensor), → code 0          ``_mm256_min_ps(NaN, c)`` returns c; the scalar
(8-bit per channel), → INT32_MIN (qint32)               path casts NaN to int32 (INT_MIN, low byte 0)
fake-quant: integer zero point added *after*            ``fake_quantize_tensor_cachemask_kernel`` /
rounding, as a float32 sum (codes above 2^24 round);   ``..._per_channel_cachemask_kernel``
float zero points before (float32: one fma; float16:   (aten/src/ATen/native/quantized/cpu/kernels/
two roundings); float64 / float16 / bfloat16 inputs    QuantizedOpKernels.cpp)
keep their dtype                                       ``_fake_quant_per_channel_cachemask_cpu_helper``
fake-quant per channel: ``|round(x/s) + z| >= 2^63``,   ``static_cast<int64_t>(...)`` overflows to INT64_MIN,
±Inf and NaN all give ``quant_min``                     then clamps to quant_min
learnable fake-quant forward: the zero point is         ``_fake_quantize_learnable_per_tensor_affine``
``clamp(nearbyint(z))`` first, then the ordinary        (FakeQuantPerTensorAffine.cpp,
fake-quant (zero point after rounding); only the        ``_get_zero_point_from_tensor``); the backward's
*backward* mask uses ``nearbyint(z + x/s)``              ``xqi = nearbyint(z + x * inv_scale)``
dequantize per tensor: ``float(q - z) * s`` in float32   fbgemm ``Dequantize`` (QuantUtils.h)
dequantize per channel: ``(float(q) - z) * double(s)``   ``dequantize_tensor_per_channel_affine_cpu``
observers: symmetric scale ``amax / ((qmax-qmin)/2)``   observer.py ``_calculate_qparams``
(127.5 for 8 bits); quint8 symmetric zero point 128,
custom range ``(qmin + qmax) // 2``; affine zero
point int32, symmetric int64; empty observer → scale
1, zero point 0 with a warning; NaN → scale NaN
(float_qparams: scale 1, zero point NaN); ±Inf →
scale Inf; eps = 0 lets a zero range keep scale 0
=====================================================  =====================================================

Arguments keep PyTorch's names, ``input`` included (it shadows the builtin on
purpose, so that calls written for torch run unchanged).

PyTorch accepts a scale of 0, a negative or a NaN scale and returns garbage;
refquant raises :class:`RefquantError` there instead (documented departure).

The vectorised CPU dequantize of other ATen ops uses
``fma(s, q, -z*s)``; ``torch.dequantize`` on x86 with FBGEMM does not (measured
bit for bit: ``float(q - z) * s``), so neither does :func:`dequantize`.
"""

from __future__ import annotations

import warnings

import numpy as np

from .._core.rounding import round_to_int
from .._errors import RefquantError
from ..formats.integer import IntRange, int_format
from ..quant._float32 import fma_f32
from ..quant.affine import dequantize as _core_dequantize
from ..quant.affine import quantize as _core_quantize
from ..quant.calibration import TorchHistogram
from ..quant.qparams import qparams_from_range

__all__ = [
    "quantize_per_tensor",
    "quantize_per_channel",
    "dequantize",
    "fake_quantize_per_tensor_affine",
    "fake_quantize_per_channel_affine",
    "fake_quantize_learnable_per_tensor_affine",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "PerChannelMinMaxObserver",
    "MovingAveragePerChannelMinMaxObserver",
    "HistogramObserver",
    "QSCHEMES",
    "DTYPES",
]

_F = np.float32
FLOAT32_EPS = float(np.finfo(np.float32).eps)
QSCHEMES = (
    "per_tensor_affine",
    "per_tensor_symmetric",
    "per_channel_affine",
    "per_channel_symmetric",
    "per_channel_affine_float_qparams",
)


DTYPES = {
    "quint8": (0, 255, np.uint8),
    "qint8": (-128, 127, np.int8),
    "qint32": (-(2**31), 2**31 - 1, np.int32),
    "quint4x2": (0, 15, np.uint8),
}
_ALIASES = {"uint8": "quint8", "int8": "qint8", "int32": "qint32"}


def _dtype_name(dtype, allowed=("quint8", "qint8", "qint32", "quint4x2")) -> str:
    name = str(dtype)
    name = name[len("torch.") :] if name.startswith("torch.") else name
    name = _ALIASES.get(name, name)
    if name not in allowed:
        raise RefquantError(f"dtype must be one of {', '.join(allowed)}; got {dtype!r}")
    return name


def _grid(name: str):
    qmin, qmax, storage = DTYPES[name]
    if name == "qint8":
        return int_format("int8")
    if name == "quint8":
        return int_format("uint8")
    if name == "quint4x2":
        return int_format("uint4")
    return IntRange(qmin, qmax, storage, name)


def _range_grid(quant_min: int, quant_max: int):
    return IntRange(quant_min, quant_max, np.int64, f"[{quant_min}, {quant_max}]")


def _float_input(x, name="input"):
    """torch's quantize ops take float32 only ("Quantize only works on Float Tensor")."""
    a = _asarray(x, name) if not isinstance(x, np.ndarray) else x
    if isinstance(x, np.ndarray) and a.dtype != np.float32:
        raise RefquantError(
            f"{name} must be float32 (torch: 'Quantize only works on Float Tensor, got {a.dtype}')"
        )
    if a.dtype.kind not in "fiub":
        raise RefquantError(f"{name} must be a real array, got dtype {a.dtype}")
    return a.astype(np.float32, copy=False)  # never modified: no copy of float32 input


def _fake_input(x, name="input"):
    """torch's fake-quant ops take float32, float64, float16 and bfloat16 tensors.

    Returns the input as an array of its own dtype (non-arrays become float32).
    float16 / bfloat16 are computed in float32 (``Half * float`` is a float
    product) and the result rounded back; float64 is computed in double.
    """
    a = _asarray(x, name) if not isinstance(x, np.ndarray) else x
    if isinstance(x, np.ndarray) and a.dtype not in _FAKE_DTYPES and a.dtype.name != "bfloat16":
        raise RefquantError(
            f"{name} must be float32, float64, float16 or bfloat16 (torch dispatches "
            f"fake-quant on floating types only), got {a.dtype}"
        )
    if a.dtype.kind not in "fiub" and a.dtype.name != "bfloat16":
        raise RefquantError(f"{name} must be a real array, got dtype {a.dtype}")
    if a.dtype in _FAKE_DTYPES or a.dtype.name == "bfloat16":
        return a
    return a.astype(np.float32)


_FAKE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16))


def _check_zp_range(zp, qmin, qmax, where):
    z = _asarray(zp, "zero_point")
    if z.dtype.kind == "f" and not np.all(np.isfinite(z) & (z == np.round(z))):
        raise RefquantError(f"{where}: zero_point must be an integer, got {z}")
    zi = z.astype(np.int64)
    if np.any(zi > qmax):
        raise RefquantError(
            f"{where} zero_point {int(zi[zi > qmax].flat[0])} is above upper bound."
        )
    if np.any(zi < qmin):
        raise RefquantError(
            f"{where} zero_point {int(zi[zi < qmin].flat[0])} is below lower bound."
        )
    return zi


def _check_torch_scale(scale, name="scale"):
    s = _asarray(scale, name, np.float64)
    bad = ~(np.isfinite(s) & (s > 0))
    if bad.any():
        raise RefquantError(
            f"{name} must be finite and > 0, got {s[bad].flat[0].item()!r} (PyTorch accepts it "
            "and returns codes computed from 1/scale; refquant refuses)"
        )
    return s


def _asarray(v, name, dtype=None):
    """``np.asarray`` whose failures (ragged lists, text, complex) are RefquantError."""
    try:
        a = np.asarray(v, dtype=dtype)
    except (TypeError, ValueError):
        raise RefquantError(f"{name} must be a rectangular array of real numbers") from None
    if dtype is None and a.dtype.kind not in "fiub" and a.dtype.name != "bfloat16":
        raise RefquantError(f"{name} must hold real numbers, got dtype {a.dtype}")
    return a


def _integer(v, name) -> int:
    """A Python int for torch's int64 arguments (axis, quant_min, ...); integral floats pass."""
    a = _asarray(v, name)
    if a.size != 1 or a.ndim > 1:
        raise RefquantError(f"{name} must be one integer, got shape {a.shape}")
    if a.dtype.kind in "iub":
        i = int(a.reshape(()))
    else:
        f = float(a.reshape(()).astype(np.float64))
        if not (np.isfinite(f) and f == np.round(f)):
            raise RefquantError(f"{name} must be an integer, got {v!r}")
        i = int(f)
    if not -(2**63) <= i < 2**63:
        raise RefquantError(f"{name} {i} does not fit torch's int64")
    return i


def _int64_cast_overflow(v):
    """Where ``static_cast<int64_t>(v)`` is undefined on x86 (gives INT64_MIN): NaN, ±Inf, |v| >= 2^63."""
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(v) | (np.abs(v) >= 2.0**63)


# --------------------------------------------------------------------------- quantize


def quantize_per_tensor(input, scale, zero_point, dtype):  # noqa: A002 (torch's name)
    """``torch.quantize_per_tensor`` → integer codes (``q.int_repr()``), NumPy in and out.

    Parameters
    ----------
    input : float32 array
    scale : float (> 0; converted to float32 as torch does)
    zero_point : int inside the dtype's range
    dtype : "quint8", "qint8", "qint32" or "quint4x2"

    Returns
    -------
    codes : uint8 / int8 / int32 array of ``input.shape`` (quint4x2: one unpacked
    code 0..15 per element in uint8; torch packs two per byte, low nibble first:
    ``refquant.kernels.packing.pack_nibbles(codes, order="low_first")``).

    Formula
    -------
    quint8 / qint8: :math:`q = \\mathrm{clamp}(\\mathrm{rint}(\\mathrm{fma}(x, 1/s, z)))`
    with ``1/s`` rounded to float32 and the fma rounded once to float32;
    NaN → qmax. qint32: :math:`q = \\mathrm{clamp}(\\mathrm{rint}(z + x \\cdot (1/s)))`
    with each operation rounded to float32; NaN → INT32_MIN. quint4x2:
    :math:`q = \\mathrm{clamp}(\\mathrm{rint}(x \\cdot (1/s)) + z, 0, 15)`; NaN and
    values whose code is not a valid ``long`` (|·| >= 2^63, ±Inf) → 0.
    rint is round half to even. Saturating.

    Reference
    ---------
    ``quantize_tensor_per_tensor_affine_cpu`` (QuantizedOpKernels.cpp) → fbgemm
    ``Quantize<T, LEGACY=true>`` / ``QuantizeAvx2`` (QuantUtilsAvx2.cc);
    ``quantize_tensor_per_tensor_affine_sub_byte_cpu`` for quint4x2.
    """
    name = _dtype_name(dtype)
    x = _float_input(input)
    _check_torch_scale(scale)
    qmin, qmax, storage = DTYPES[name]
    z = _integer(zero_point, "zero_point")
    z = int(_check_zp_range(z, qmin, qmax, "quantize_tensor_per_tensor_affine"))
    s32 = _F(scale)
    inv = _F(_F(1) / s32)
    grid = _grid(name)
    if name in ("quint8", "qint8"):
        # the fused multiply-add of QuantizeAvx2<LEGACY>: fma(x, float32(1/s), z), one rounding
        return _core_quantize(
            x, s32, z, dtype=grid, scale_op="reciprocal", precision="float32",
            zero_point_stage="fused", nan="qmax", out_dtype=storage,
        )
    if name == "qint32":
        return _core_quantize(
            x,
            s32,
            z,
            dtype=grid,
            scale_op="reciprocal",
            precision="float32",
            zero_point_stage="before_rounding",
            nan="qmin",
            out_dtype=storage,
        )
    q = _core_quantize(
        x,
        s32,
        z,
        dtype=grid,
        scale_op="reciprocal",
        precision="float32",
        nan="qmin",
        out_dtype=storage,
    )
    with np.errstate(over="ignore", invalid="ignore"):
        r = np.rint((x * inv).astype(np.float32)).astype(np.float64) + z
    return np.where(_int64_cast_overflow(r), np.uint8(qmin), q).astype(storage)


def _channel_axis(axis, ndim):
    a = _integer(axis, "axis")
    if not 0 <= a < ndim:
        raise RefquantError(
            f"Channel axis out of range in per channel affine quantization. Got: {axis} "
            f"Expected: [0, {ndim})"
        )
    return a


def quantize_per_channel(input, scales, zero_points, axis, dtype):  # noqa: A002 (torch's name)
    """``torch.quantize_per_channel`` → integer codes.

    Parameters
    ----------
    input : float32 array
    scales : 1-D array (torch keeps them as float64 and casts each to float32 here)
    zero_points : 1-D array
        Integer: each inside the dtype's range (``per_channel_affine``). Floating
        point: torch's ``per_channel_affine_float_qparams`` instead, whatever the
        values: ``q = clamp(int(lrintf(fl32(fl32(x * fl32(1/s)) + z))))``, the zero
        point added before rounding, any finite value allowed (0.5 sends x = 1, s = 1
        to 2; 300.0 saturates qint8), a zero scale read as 1, NaN / ±Inf / |.| >= 2^55
        giving 0 and 3e9 wrapping through int32 (see ``_quantize_per_channel_float_qparams``);
        quint8 and qint8 only. :func:`dequantize` follows the same switch.
    axis : int in [0, ndim) (torch rejects negative axes)
    dtype : "quint8", "qint8" or "qint32"

    Formula
    -------
    :math:`q = \\mathrm{clamp}(\\mathrm{rint}(z_c + x \\cdot (1/s_c)))`, every
    operation in float32 (zero point added *before* rounding), round half to
    even, saturating. NaN → code 0 for quint8 / qint8 (the int32 cast of NaN is
    INT32_MIN, whose low byte is 0), INT32_MIN for qint32.

    Reference
    ---------
    ``quantize_tensor_per_channel_affine_cpu`` (QuantizedOpKernels.cpp) →
    ``at::native::quantize_val`` → fbgemm ``Quantize<T, LEGACY=true>`` (scalar).
    """
    name = _dtype_name(dtype, ("quint8", "qint8", "qint32"))
    x = _float_input(input)
    ax = _channel_axis(axis, x.ndim)
    zp = _asarray(zero_points, "zero_points").reshape(-1)
    if zp.dtype.kind == "f":
        return _quantize_per_channel_float_qparams(x, scales, zp, ax, name)
    s = _check_torch_scale(_asarray(scales, "scales", np.float64).reshape(-1), "scales")
    qmin, qmax, storage = DTYPES[name]
    if s.size != x.shape[ax]:
        raise RefquantError(
            f"length of scales must equal to channel, expected {x.shape[ax]} got, {s.size}"
        )
    if zp.size != x.shape[ax]:
        raise RefquantError(
            f"length of zero_points must equal to channel expected {x.shape[ax]} got, {zp.size}"
        )
    zi = _check_zp_range(zp, qmin, qmax, "quantize_tensor_per_channel_affine")
    return _core_quantize(
        x,
        s.astype(np.float32),
        zi,
        dtype=_grid(name),
        axis=ax,
        scale_op="reciprocal",
        precision="float32",
        zero_point_stage="before_rounding",
        nan="qmin" if name == "qint32" else "zero",
        out_dtype=storage,
    )


# A grid wide enough that every float32 at or beyond its ends has zero low 32 bits
# (a multiple of 2^38), as the int64 -> int cast below needs; see the function's Notes.
_FLOAT_QPARAMS_GRID = IntRange(-(2**62), 2**62, name="lrintf")


def _float_qparams(scales, zero_points, n, ax):
    s = _asarray(scales, "scales", np.float64).reshape(-1)
    z = _asarray(zero_points, "zero_points", np.float64).reshape(-1)
    if s.size != n or z.size != n:
        raise RefquantError(f"scales and zero_points must have {n} elements (the size of axis "
                            f"{ax}); got {s.size} and {z.size}")
    if not (np.all(np.isfinite(s)) and np.all(s >= 0)):
        raise RefquantError(f"scales must be finite and >= 0, got {s}")
    if not np.all(np.isfinite(z)):
        raise RefquantError(f"zero_points must be finite, got {z}")
    return s.astype(np.float32), z.astype(np.float32)


def _quantize_per_channel_float_qparams(x, scales, zero_points, ax, name):
    """torch's ``per_channel_affine_float_qparams`` quantize (float zero points).

    ``quantize_val_float_qparams`` (``ATen/native/quantized/AffineQuantizerBase.cpp``):
    ``int q = lrintf(value * inv_scale + zero_point)`` with ``inv_scale = 1.0f / scale``
    (1 for a zero scale), then clamped to the dtype's range. In float32: the product is
    rounded, then the sum, then rint (ties to even); the zero point is added *before*
    rounding (the core's ``zero_point_stage="before_rounding"``). Two x86-64 quirks of
    the ``int`` it lands in: ``lrintf`` gives INT64_MIN for NaN, ±Inf and anything past
    ±2^63, and the int64 -> int conversion keeps the low 32 bits, so those, and every
    float32 past ±2^55, become 0, while 3e9 wraps to -1294967296 and clamps to qmin.
    """
    if name == "qint32":
        raise RefquantError("quantize_per_channel with float zero_points (per_channel_affine_"
                            "float_qparams) takes quint8 or qint8; torch 2.13's CPU kernel dies "
                            "with SIGILL on qint32")
    qmin, qmax, storage = DTYPES[name]
    s32, z32 = _float_qparams(scales, zero_points, x.shape[ax], ax)
    s32 = np.where(s32 == 0, np.float32(1), s32)  # 1.0f / 1.0f == the kernel's inv_scale 1
    wide = _core_quantize(x, s32, z32, dtype=_FLOAT_QPARAMS_GRID, axis=ax, scale_op="reciprocal",
                          precision="float32", zero_point_stage="before_rounding", nan="zero")
    low32 = wide.astype(np.int64).astype(np.int32).astype(np.int64)  # keeps the low 32 bits
    return np.clip(low32, qmin, qmax).astype(storage)


def dequantize(input, scale, zero_point, axis=None, dtype=None):  # noqa: A002 (torch's name)
    """``Tensor.dequantize()`` of codes ``input`` with their parameters → float32.

    Parameters
    ----------
    input : integer codes (as ``int_repr()`` returns them)
    scale, zero_point : per tensor (scalars) or per channel (1-D, with ``axis``)
    axis : int, optional
        The channel axis of a per-channel tensor.
    dtype : optional, "quint8" / "qint8" / "qint32"; only qint32 changes the arithmetic.

    Formula
    -------
    Per tensor: :math:`\\hat x = \\mathrm{fl}_{32}(\\mathrm{fl}_{32}(q - z) \\cdot s_{32})`
    (``q - z`` in int32; exact in float32 for 8-bit codes). Per channel:
    :math:`\\hat x = \\mathrm{fl}_{32}(\\mathrm{fl}_{32}(q - z_c) \\cdot s_c)` with the
    product in float64 (torch keeps per-channel scales as double; ``q - z`` is
    formed as ``float(q) - float(z)``, exact for 8-bit codes).

    Reference
    ---------
    fbgemm ``Dequantize`` (QuantUtils.h: ``scale * (src - zero_point)``) via
    ``dequantize_tensor_per_tensor_affine_cpu``; ``dequantize_tensor_per_channel_affine_cpu``.
    """
    q = _asarray(input, "input")
    if q.dtype.kind not in "iu":
        raise RefquantError(f"input must be integer codes, got dtype {q.dtype}")
    if q.dtype == np.uint64 and q.size and int(q.max()) > 2**63 - 1:
        raise RefquantError(f"input holds codes above 2^63 - 1 ({int(q.max())}), beyond any torch dtype")
    if axis is None:
        _check_torch_scale(scale)
        s32 = _F(scale)
        if dtype is not None and _dtype_name(dtype) == "qint32":
            return _dequantize_int32_float32(q, s32, _integer(zero_point, "zero_point"))
        return _core_dequantize(q, s32, _integer(zero_point, "zero_point"), out_dtype=np.float32)
    ax = _channel_axis(axis, q.ndim)
    if _asarray(zero_point, "zero_point").dtype.kind == "f":
        # per_channel_affine_float_qparams: (float(q) - z) * s, all float32
        # (dequantize_per_channel_affine_kernel<float, float, T>)
        s32, z32 = _float_qparams(scale, zero_point, q.shape[ax], ax)
        zero = s32 == 0  # the core refuses a zero scale; (q - z) * 0 is a signed zero
        d = _core_dequantize(q, np.where(zero, np.float32(1), s32), z32, axis=ax,
                             out_dtype=np.float32, precision="float32")
        if zero.any():
            view = [1] * q.ndim
            view[ax] = -1
            d = np.where(zero.reshape(view), d * np.float32(0), d)
        return d
    s = _check_torch_scale(_asarray(scale, "scale", np.float64).reshape(-1), "scale")
    z = _asarray(zero_point, "zero_point").reshape(-1).astype(np.int64)
    if s.size != q.shape[ax] or z.size != q.shape[ax]:
        raise RefquantError(
            f"scale and zero_point must have {q.shape[ax]} elements (the size of axis {ax}); "
            f"got {s.size} and {z.size}"
        )
    if dtype is not None and _dtype_name(dtype) == "qint32":
        view = [1] * q.ndim
        view[ax] = -1
        d = (q.astype(np.float32) - z.astype(np.float32).reshape(view)).astype(np.float32)
        # float(q) - float(z) rounded to float32 (inexact above 2^24), times the double scale
        return (d.astype(np.float64) * s.reshape(view)).astype(np.float32)
    # (float(q) - z) * double(s): a double product, then rounded again to float32
    return _core_dequantize(q, s, z, axis=ax, out_dtype=np.float64).astype(np.float32)


def _dequantize_int32_float32(q, s32, z):
    """qint32 dequantize: ``float(int32(q - z)) * s`` in float32.

    Two torch-specific steps on top of the core's ``precision="float32"``
    dequantize (which rounds ``q - z`` to float32 before multiplying): the
    difference is formed in int32 arithmetic, so it wraps.
    """
    d = (q.astype(np.int64) - z).astype(np.int64)
    d = ((d + 2**31) % 2**32) - 2**31  # int32 arithmetic wraps
    return _core_dequantize(d, s32, 0, out_dtype=np.float32, precision="float32")


# --------------------------------------------------------------------------- fake quantize


def _check_fake_args(quant_min, quant_max, zero_point):
    if _asarray(zero_point, "zero_point").dtype.kind not in "fiu":
        raise RefquantError(f"zero_point must hold numbers, got {zero_point!r}")
    if quant_min > quant_max:
        raise RefquantError("`quant_min` should be less than or equal to `quant_max`.")
    z = np.asarray(zero_point)
    if np.any(z < quant_min) or np.any(z > quant_max):
        raise RefquantError("`zero_point` must be between `quant_min` and `quant_max`.")


def fake_quantize_per_tensor_affine(input, scale, zero_point, quant_min, quant_max):  # noqa: A002 (torch's name)
    """``torch.fake_quantize_per_tensor_affine`` → an array of the input's dtype.

    ``input`` may be float32, float64, float16 or bfloat16, as in torch: float16 /
    bfloat16 are computed in float32 and the result rounded to their dtype;
    float64 forms ``x * (1/s)``, its rounding and ``+ z`` in double, and the
    result is still the float32 product ``float32(q - z) * s``.

    Formula
    -------
    :math:`q = \\mathrm{clamp}(\\mathrm{fl}_{32}(\\mathrm{rint}(\\mathrm{fl}_{32}(x \\cdot (1/s))) + z), q_{min}, q_{max})`,
    :math:`\\tilde x = \\mathrm{fl}_{32}(\\mathrm{fl}_{32}(q - z) \\cdot s)`. Zero point added
    *after* rounding (half to even), in float32 (inexact for codes above 2^24:
    x = 2^24 + 2, s = 1, z = 1 gives 2^24 + 4); +Inf and large values → quant_max,
    -Inf → quant_min, NaN → quant_min.

    Reference
    ---------
    ``fake_quantize_tensor_cachemask_kernel`` (QuantizedOpKernels.cpp).
    """
    x = _fake_input(input)
    qmin, qmax = _integer(quant_min, "quant_min"), _integer(quant_max, "quant_max")
    z = _integer(zero_point, "zero_point")
    _check_fake_args(qmin, qmax, z)
    _check_torch_scale(scale)
    s32 = _F(scale)
    # z_point + std::nearbyint(x * inv_scale): an int64 plus a float is a float32
    # sum, so codes above 2^24 (32-bit ranges) are rounded to float32 before clamping
    # (double input: the product, its rounding and the sum are in double)
    ft = np.float64 if x.dtype == np.float64 else _F
    inv = _F(_F(1) / s32)
    with np.errstate(over="ignore", invalid="ignore"):
        r = round_to_int((x.astype(ft) * ft(inv)).astype(ft), "half_even")
        qf = (r + ft(z)).astype(ft)
    qf = np.where(np.isnan(qf), qmin, qf).astype(np.float64)  # fmax(NaN, qmin) = qmin
    q = np.clip(qf, qmin, qmax).astype(np.int64)
    # (qval - z_point) * sc: the int64 difference converted to float32, times the float
    # scale, in float32 whatever the input dtype; then stored in the input's dtype
    y = _core_dequantize(q, s32, z, out_dtype=np.float32, precision="float32")
    return y.astype(x.dtype)


def fake_quantize_per_channel_affine(input, scale, zero_point, axis, quant_min, quant_max):  # noqa: A002 (torch's name)
    """``torch.fake_quantize_per_channel_affine`` → an array of the input's dtype.

    ``input`` may be float32, float64, float16 or bfloat16, as in torch (float16
    and bfloat16 computed in float32; float64 in double; the dequantized value
    ``(q - z) * s`` is formed in double and rounded to the input's dtype, via
    float32 for float16 / bfloat16).

    ``zero_point`` must be int32 or float (torch: "Zero-point must be Int32,
    Float or Half, found Long" — refquant accepts any integer array). Float zero
    points are added *before* rounding (``nearbyint(x/s + z)``); integer ones after.

    Formula
    -------
    Integer z: :math:`q = \\mathrm{clamp}(\\mathrm{fl}_{32}(\\mathrm{rint}(\\mathrm{fl}_{32}(x/s)) + z_c))`
    (the zero point added in float32, inexact for codes above 2^24);
    float32 z: :math:`q = \\mathrm{clamp}(\\mathrm{rint}(\\mathrm{fma}_{32}(x, 1/s, z_c)))` —
    torch's scalar kernel writes ``zero_point + self * inv_scale`` and the x86
    build contracts it into a fused multiply-add (one rounding: x = -28.5·s + ε,
    z = 30 gives code 1, where rounding the product first gives 1.5 → 2);
    float16 z: :math:`q = \\mathrm{clamp}(\\mathrm{rint}(\\mathrm{fl}_{32}(z_c + \\mathrm{fl}_{32}(x \\cdot (1/s)))))`
    — the ``Half + float`` operator is not contracted, so the product is rounded
    first (x·(1/s) = 49.5 exactly, z = -54 gives -4.5 → -4: code 50, not 49);
    ``x/s`` is ``x * fl32(1/s)``; then :math:`\\tilde x = (q - z_c)\\,s_c`.
    Quirk: before clamping, the code is cast to int64, so NaN, ±Inf and
    :math:`|q| \\ge 2^{63}` become INT64_MIN and clamp to quant_min (+Inf gives
    quant_min here but quant_max in the per-tensor version).

    Reference
    ---------
    ``fake_quantize_per_channel_cachemask_kernel`` /
    ``_fake_quantize_per_channel_affine`` float-zero-point kernel (QuantizedOpKernels.cpp).
    """
    x = _fake_input(input)
    ax = _channel_axis(axis, x.ndim)
    qmin, qmax = _integer(quant_min, "quant_min"), _integer(quant_max, "quant_max")
    s = _check_torch_scale(_asarray(scale, "scale", np.float64).reshape(-1)).astype(np.float32)
    z = _asarray(zero_point, "zero_point").reshape(-1)
    if s.size != x.shape[ax] or z.size != x.shape[ax]:
        raise RefquantError(
            f"scale and zero_point must have {x.shape[ax]} elements (the size of axis {ax}); "
            f"got {s.size} and {z.size}"
        )
    if z.size == 0 and z.dtype.kind != "f":
        # integer zero points only: torch's float-zero-point kernel returns the empty result
        raise RefquantError(
            f"axis {ax} of input shape {x.shape} has no channel (torch's integer zero_point "
            "range check raises: 'min(): Expected reduction dim to be specified for "
            "input.numel() == 0')"
        )
    _check_fake_args(qmin, qmax, z)
    view = [1] * x.ndim
    view[ax] = -1
    inv = (_F(1) / s).astype(np.float32).reshape(view)
    # float16 / bfloat16 self times the float inv_scale is a float product; double
    # self makes the product, its rounding and the integer zero point's sum double
    ft = np.float64 if x.dtype == np.float64 else _F
    xw = x.astype(ft)
    with np.errstate(over="ignore", invalid="ignore"):
        v = (xw * inv.astype(ft)).astype(ft)
        if z.dtype.kind == "f":
            zf = z.astype(np.float32).reshape(view)
            if ft is np.float64:
                # std::lrintf(zero_point + self * inv_scale): the double sum is
                # converted to float for lrintf
                pre = np.rint((v + zf.astype(np.float64)).astype(np.float32))
            elif z.dtype == np.float16:
                # an at::Half zero point: the Half + float operator converts first and is
                # not contracted, so the product is rounded to float32 before the zero
                # point is added (two roundings)
                pre = np.rint((v + zf).astype(np.float32))
            else:
                # a float zero point: the scalar cpu_kernel's zero_point + self * inv_scale
                # is contracted into one fused multiply-add (one rounding)
                pre = np.rint(fma_f32(xw, inv, zf))
            zq = z.astype(np.float32).astype(np.float64)
        else:
            # int32 zero_point + std::nearbyint(self * inv_scale) is a float32 sum
            # (double for double self)
            zq = z.astype(np.int64)
            pre = (np.rint(v) + zq.astype(ft).reshape(view)).astype(ft)
        pre = pre.astype(np.float64)
        # static_cast<int64_t> / lrintf of NaN, ±Inf or |v| >= 2^63 is INT64_MIN -> quant_min
        q = np.clip(np.where(_int64_cast_overflow(pre), qmin, pre), qmin, qmax).astype(np.int64)
    # (double(q) - z) * scale in double, returned as the input's dtype (Half via float):
    # rounded to double first, then again (torch rounds twice)
    y = _core_dequantize(q, s.astype(np.float64), zq, axis=ax, out_dtype=np.float64)
    return (y if x.dtype == np.float64 else y.astype(np.float32)).astype(x.dtype)


def fake_quantize_learnable_per_tensor_affine(
    input,  # noqa: A002 (torch's name)
    scale,
    zero_point,
    quant_min,
    quant_max,
    grad_factor=1.0,
):
    """Forward of ``torch._fake_quantize_learnable_per_tensor_affine`` → the input's dtype.

    ``scale`` and ``zero_point`` are float (1-element) parameters. The forward
    rounds the zero point first, ``z = clamp(nearbyint(float32(zero_point)),
    quant_min, quant_max)``, then runs the ordinary per-tensor fake-quant (zero
    point added *after* rounding). The "zero point before rounding" form,
    ``nearbyint(z + x / s)``, is only the backward's in-range mask.
    ``grad_factor`` only scales gradients and is accepted for the signature.

    Formula
    -------
    :math:`z' = \\mathrm{clamp}(\\mathrm{rint}(z)),\\;
    \\tilde x = \\mathrm{fake\\_quantize\\_per\\_tensor\\_affine}(x, s, z')`

    Reference
    ---------
    aten/src/ATen/native/quantized/FakeQuantPerTensorAffine.cpp:
    ``_fake_quantize_learnable_per_tensor_affine``, ``_get_zero_point_from_tensor``.
    """
    del grad_factor
    quant_min, quant_max = _integer(quant_min, "quant_min"), _integer(quant_max, "quant_max")
    s = _asarray(scale, "scale", np.float32).reshape(-1)
    zf = _asarray(zero_point, "zero_point", np.float32).reshape(-1)
    if s.size < 1 or zf.size < 1:
        raise RefquantError("scale and zero_point must hold at least one element")
    zr = _F(np.rint(zf[0]))
    if np.isnan(zr):  # std::min / std::max keep NaN; its int64 cast fails torch's range check
        raise RefquantError("`zero_point` must be between `quant_min` and `quant_max`.")
    zc = int(min(max(zr, _F(quant_min)), _F(quant_max)))
    return fake_quantize_per_tensor_affine(input, s[0], zc, quant_min, quant_max)


_fake_quantize_learnable_per_tensor_affine = fake_quantize_learnable_per_tensor_affine


# --------------------------------------------------------------------------- observers


def _qscheme_name(qscheme) -> str:
    name = str(qscheme)
    name = name[len("torch.") :] if name.startswith("torch.") else name
    if name not in QSCHEMES:
        raise RefquantError(
            "Default Observer only works for per_tensor_affine, per_tensor_symmetric, "
            "per_channel_affine, per_channel_symmetric and per_channel_float_qparams "
            f"quantization scheme; got {qscheme!r}"
        )
    return name


class _UniformObserver:
    """``UniformQuantizationObserverBase``: grid, qscheme and ``_calculate_qparams``."""

    _per_channel = False
    # MinMaxObserver and PerChannelMinMaxObserver (and their moving averages) refuse
    # quint8 + symmetric + reduce_range in __init__; HistogramObserver does not
    _refuses_symmetric_reduce_range = True

    def __init__(
        self,
        dtype="quint8",
        qscheme="per_tensor_affine",
        reduce_range=False,
        quant_min=None,
        quant_max=None,
        eps=FLOAT32_EPS,
    ):
        self.dtype = _dtype_name(dtype, ("quint8", "qint8", "qint32"))
        self.qscheme = _qscheme_name(qscheme)
        is_pc = self.qscheme.startswith("per_channel")
        if is_pc != self._per_channel:
            kind = "per_channel" if self._per_channel else "per_tensor"
            raise RefquantError(
                f"{type(self).__name__}'s qscheme only supports {kind} schemes; got {self.qscheme!r}"
            )
        self.reduce_range = bool(reduce_range)
        if self.reduce_range:
            warnings.warn(
                "Please use quant_min and quant_max to specify the range for observers. "
                "reduce_range will be deprecated in a future release of PyTorch.",
                stacklevel=2,
            )
        e = _asarray(eps, "eps", np.float64)
        if e.size != 1:
            raise RefquantError(f"eps must be one number, got {eps!r}")
        self.eps = _F(e.reshape(-1)[0])
        self.has_customized_qrange = quant_min is not None and quant_max is not None
        if self.has_customized_qrange:
            quant_min, quant_max = _integer(quant_min, "quant_min"), _integer(quant_max, "quant_max")
            if not quant_min <= 0 <= quant_max:
                raise RefquantError("Used-specified quantization range must include 0.")
            if quant_min >= quant_max:
                raise RefquantError(
                    "qmin must be strictly less than qmax for user-specified quantization range."
                )
            qlen = quant_max - quant_min + 1
            if self.dtype == "qint8" and not 0 < qlen <= 256:
                raise RefquantError(
                    "quantization range should be positive and not exceed the maximum bit "
                    "range (=256)."
                )
            if self.dtype == "qint32" and not 0 < qlen <= 2**32:
                raise RefquantError(
                    "quantization range should be positive and not exceed the maximum bit "
                    "range (=4294967296)."
                )
            qmin, qmax = int(quant_min), int(quant_max)
            if self.reduce_range:
                qmin, qmax = qmin // 2, qmax // 2
        else:
            qmin, qmax = DTYPES[self.dtype][:2]
            if self.reduce_range and self.dtype == "qint8":
                qmin, qmax = -64, 63
            elif self.reduce_range and self.dtype == "quint8":
                qmin, qmax = 0, 127
        self.quant_min, self.quant_max = qmin, qmax
        if (self.qscheme.endswith("symmetric") and self.reduce_range and self.dtype == "quint8"
                and self._refuses_symmetric_reduce_range):
            raise RefquantError("Cannot reduce range for symmetric quantization for quint8")

    # ---------------------------------------------------------------- qparams

    def _calculate_qparams(self, min_val, max_val):
        """observer.py ``_calculate_qparams`` on float32 min / max (per tensor: 0-d)."""
        min_val = np.asarray(min_val, dtype=np.float32)
        max_val = np.asarray(max_val, dtype=np.float32)
        if min_val.size == 0 or (min_val.ndim == 0 and min_val == np.inf and max_val == -np.inf):
            warnings.warn(
                "must run observer before calling calculate_qparams. Returning default values.",
                stacklevel=3,
            )
            return np.array([1.0], dtype=np.float32), np.array([0], dtype=np.int64)
        if np.any(min_val > max_val):
            raise RefquantError(f"min {min_val} should be less than max {max_val}")
        qmin, qmax = self.quant_min, self.quant_max
        # NaN / ±Inf bounds (and, with eps <= 0, a zero scale) are not ranges the core
        # takes: those groups get torch's float32 formula as written (_direct_qparams)
        special = ~(np.isfinite(min_val) & np.isfinite(max_val))
        with np.errstate(over="ignore", invalid="ignore"):
            # a finite range whose float32 width overflows (-3e38, 3e38): torch's scale is Inf
            width = (np.maximum(max_val, _F(0)) - np.minimum(min_val, _F(0))).astype(_F)
        special |= ~np.isfinite(width)
        lo = np.where(special, _F(0), min_val)
        hi = np.where(special, _F(0), max_val)
        if self.qscheme == "per_channel_affine_float_qparams":
            # no widening to 0: scale = (max - min) / (qmax - qmin), 1 where not > eps
            # (NaN included), zero point -min / scale, all float32
            with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
                scale = ((max_val - min_val).astype(_F) / _F(qmax - qmin)).astype(_F)
                scale = np.where(scale > self.eps, scale, _F(1)).astype(_F)
                zp = ((_F(-1) * min_val).astype(_F) / scale).astype(_F)
        else:
            symmetric = self.qscheme.endswith("symmetric")
            # torch checks a custom range only against 256 / 2^32 codes, not against the
            # dtype (quint8 with [-64, 300] is accepted), and reduce_range can leave
            # quant_min == quant_max: the grid is [quant_min, quant_max] as given
            if qmin >= qmax:
                special = np.ones(min_val.shape, dtype=bool)
                lo, hi = np.zeros_like(min_val), np.zeros_like(max_val)
            qp = qparams_from_range(
                lo,
                hi,
                dtype=_range_grid(min(qmin, qmax - 1), qmax),
                symmetric=symmetric,
                include_zero=True,
                eps=float(self.eps) if self.eps > 0 else 0.0,
                symmetric_divisor="half_span",
                zero_point_formula="qmin_minus_round",
                precision="float32",
            )
            scale = qp.scale
            if symmetric:
                zp = np.full(scale.shape, self._symmetric_zero_point(), dtype=np.int64)
            else:
                # torch forms quant_min - round(min / s).to(int) in int32, for every dtype
                # (a custom 2^32-code range makes quint8 wrap as qint32 does)
                zp = _qint32_zero_point(lo, qp.scale, qmin, qmax).astype(np.int32)
            dscale, dzp = self._direct_qparams(min_val, max_val)
            special = special | (dscale == 0) | np.isnan(dscale)
            scale = np.where(special, dscale, scale).astype(_F)
            zp = np.where(special, dzp, zp).astype(zp.dtype)
        if scale.ndim == 0:
            scale, zp = scale.reshape(1), zp.reshape(1)
        return scale, zp

    def _direct_qparams(self, min_val, max_val):
        """observer.py's affine / symmetric formula step by step in float32, for any bounds.

        ``torch.min`` / ``torch.max`` propagate NaN and return their first argument on
        a tie (so -0.0 survives: eps = 0 and an all-zero input give scale -0.0);
        ``torch.round(v).to(torch.int)`` of NaN, ±Inf or |v| >= 2^31 is INT32_MIN
        (cvttss2si), and ``quant_min - INT32_MIN`` wraps in int32 before the clamp:
        min = -Inf gives scale Inf, 0 / ... → NaN → zero point quant_max for signed grids.
        """
        qmin, qmax = self.quant_min, self.quant_max

        def tmin(a, b):
            return np.where(np.isnan(a) | np.isnan(b), _F(np.nan), np.where(b < a, b, a))

        def tmax(a, b):
            return np.where(np.isnan(a) | np.isnan(b), _F(np.nan), np.where(b > a, b, a))

        zero = np.zeros_like(min_val)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            neg, pos = tmin(min_val, zero).astype(_F), tmax(max_val, zero).astype(_F)
            if self.qscheme.endswith("symmetric"):
                amax = tmax((-neg).astype(_F), pos).astype(_F)
                scale = tmax((amax / _F((qmax - qmin) / 2)).astype(_F), self.eps).astype(_F)
                zp = np.full(scale.shape, self._symmetric_zero_point(), dtype=np.int64)
                return scale, zp
            scale = tmax(((pos - neg).astype(_F) / _F(qmax - qmin)).astype(_F), self.eps)
            scale = scale.astype(_F)
            r = np.rint((neg / scale).astype(_F)).astype(np.float64)
        r = np.where(np.isfinite(r) & (r >= -(2.0**31)) & (r < 2.0**31), r, -(2.0**31))
        z = ((qmin - r.astype(np.int64) + 2**31) % 2**32) - 2**31  # int32 subtraction wraps
        return scale, np.clip(z, qmin, qmax).astype(np.int32)

    def _symmetric_zero_point(self) -> int:
        # observer.py: quint8 -> 128 (custom range: (qmin + qmax) // 2); signed -> 0
        if self.dtype == "quint8":
            return (self.quant_min + self.quant_max) // 2 if self.has_customized_qrange else 128
        return 0

    @staticmethod
    def _as_float32(x):
        # torch's observers convert any floating input to float32 (x.to(min_val.dtype));
        # bfloat16 (an ml_dtypes type, dtype kind 'V') converts exactly
        a = _asarray(x, "x")
        if a.dtype.kind not in "fiub" and a.dtype.name != "bfloat16":
            raise RefquantError(f"x must be a real array, got dtype {a.dtype}")
        return a.astype(np.float32)


def _qint32_zero_point(lo, scale, qmin, qmax):
    """``quant_min - round(min_neg / scale).to(int32)``, clamped, in exact integers.

    Used for every dtype (the name is historical). Torch subtracts in int32
    arithmetic, which the core's exact integer zero point does not wrap. Quirk: a
    quotient outside int32 (|min / s| >= 2^31, possible only for a range of more
    than 2^31 codes: qint32, or quint8 with a custom 32-bit range) converts to
    INT32_MIN, and ``-2^31 - INT32_MIN = 0``: min = -300 gives zero point 0.
    """
    lo_neg = np.minimum(np.asarray(lo, dtype=np.float32), _F(0))
    r = np.rint((lo_neg / scale).astype(np.float32)).astype(np.float64)
    # .to(torch.int) of a float outside int32 is INT32_MIN on x86 (cvttss2si)
    r = np.where((r >= -(2.0**31)) & (r < 2.0**31), r, -(2.0**31)).astype(np.int64)
    z = ((qmin - r + 2**31) % 2**32) - 2**31  # int32 subtraction wraps
    return np.clip(z, qmin, qmax)


class MinMaxObserver(_UniformObserver):
    """``torch.ao.quantization.MinMaxObserver``: running min and max, per tensor.

    ``forward(x)`` records ``min(x)`` / ``max(x)`` (NaN propagates, as
    ``torch.aminmax`` / ``torch.min`` do) and returns ``x``;
    ``calculate_qparams()`` returns ``(scale, zero_point)``: float32 of shape
    (1,), zero point int32 (affine) or int64 (symmetric).

    Formula
    -------
    Affine: :math:`s = \\max((x_{max}^+ - x_{min}^-)/(q_{max} - q_{min}), \\epsilon)`,
    :math:`z = \\mathrm{clamp}(q_{min} - \\mathrm{rint}(x_{min}^- / s))`;
    symmetric: :math:`s = \\max(\\max(-x_{min}^-, x_{max}^+) / ((q_{max} - q_{min})/2), \\epsilon)`,
    all in float32 (:math:`x^\\pm` the range widened to contain 0).

    Reference
    ---------
    ``torch/ao/quantization/observer.py``: ``MinMaxObserver``,
    ``UniformQuantizationObserverBase._calculate_qparams``; ``utils.py``
    ``calculate_qmin_qmax``, ``validate_qmin_qmax``, ``check_min_max_valid``.
    """

    def __init__(
        self,
        dtype="quint8",
        qscheme="per_tensor_affine",
        reduce_range=False,
        quant_min=None,
        quant_max=None,
        eps=FLOAT32_EPS,
    ):
        super().__init__(dtype, qscheme, reduce_range, quant_min, quant_max, eps)
        self.min_val = _F(np.inf)
        self.max_val = _F(-np.inf)

    def forward(self, x):
        xf = self._as_float32(x)
        if xf.size == 0:
            return x
        cur_min, cur_max = _F(np.min(xf)), _F(np.max(xf))
        self._update(cur_min, cur_max)
        return x

    __call__ = forward

    def _update(self, cur_min, cur_max):
        self.min_val = _F(np.minimum(cur_min, self.min_val))
        self.max_val = _F(np.maximum(cur_max, self.max_val))

    def calculate_qparams(self):
        return self._calculate_qparams(self.min_val, self.max_val)

    def reset_min_max_vals(self):
        self.min_val, self.max_val = _F(np.inf), _F(-np.inf)


class MovingAverageMinMaxObserver(MinMaxObserver):
    """``torch.ao.quantization.MovingAverageMinMaxObserver``.

    The first batch sets min / max; later batches update
    :math:`m \\leftarrow m + c\\,(\\min X - m)` in float32 (c = averaging_constant).

    Reference
    ---------
    ``torch/ao/quantization/observer.py``: ``MovingAverageMinMaxObserver.forward``.
    """

    def __init__(
        self,
        averaging_constant=0.01,
        dtype="quint8",
        qscheme="per_tensor_affine",
        reduce_range=False,
        quant_min=None,
        quant_max=None,
        eps=FLOAT32_EPS,
    ):
        super().__init__(dtype, qscheme, reduce_range, quant_min, quant_max, eps)
        self.averaging_constant = float(_asarray(averaging_constant, "averaging_constant", np.float64))

    def _update(self, cur_min, cur_max):
        if self.min_val == np.inf and self.max_val == -np.inf:
            self.min_val, self.max_val = cur_min, cur_max
            return
        c = _F(self.averaging_constant)
        self.min_val = _F(self.min_val + _F(c * _F(cur_min - self.min_val)))
        self.max_val = _F(self.max_val + _F(c * _F(cur_max - self.max_val)))


class PerChannelMinMaxObserver(_UniformObserver):
    """``torch.ao.quantization.PerChannelMinMaxObserver``: min / max per slice of ``ch_axis``.

    ``calculate_qparams()`` returns float32 scales and zero points of shape
    (channels,): int32 (per_channel_affine), int64 (per_channel_symmetric) or
    float32 (per_channel_affine_float_qparams: :math:`s = (max - min)/(q_{max}-q_{min})`,
    1 where not above eps, :math:`z = -min / s`, range not widened to 0).

    Reference
    ---------
    ``torch/ao/quantization/observer.py``: ``PerChannelMinMaxObserver``.
    """

    _per_channel = True

    def __init__(
        self,
        ch_axis=0,
        dtype="quint8",
        qscheme="per_channel_affine",
        reduce_range=False,
        quant_min=None,
        quant_max=None,
        eps=FLOAT32_EPS,
    ):
        super().__init__(dtype, qscheme, reduce_range, quant_min, quant_max, eps)
        self.ch_axis = _integer(ch_axis, "ch_axis")
        self.min_val = np.zeros(0, dtype=np.float32)
        self.max_val = np.zeros(0, dtype=np.float32)

    def _channel_minmax(self, x):
        xf = self._as_float32(x)
        if xf.ndim < 2:
            raise RefquantError(
                f"per-channel observers need at least 2 dimensions, got shape {xf.shape} "
                "(torch: 'Dimension out of range' from flatten(start_dim=1))"
            )
        if not -xf.ndim <= self.ch_axis < xf.ndim:
            raise RefquantError(f"ch_axis {self.ch_axis} is out of range for {xf.ndim} dims")
        y = np.moveaxis(xf, self.ch_axis, 0).reshape(xf.shape[self.ch_axis], -1)
        return y.min(axis=1).astype(_F), y.max(axis=1).astype(_F)

    def forward(self, x):
        if _asarray(x, "x").size == 0:
            return x
        cur_min, cur_max = self._channel_minmax(x)
        if self.min_val.size == 0:
            self.min_val, self.max_val = cur_min, cur_max
        else:
            if cur_min.size != self.min_val.size and 1 not in (cur_min.size, self.min_val.size):
                raise RefquantError(
                    f"the batch has {cur_min.size} channels along ch_axis {self.ch_axis} but the "
                    f"observer holds {self.min_val.size} (torch: 'The size of tensor a must "
                    "match the size of tensor b')"
                )
            self._update(cur_min, cur_max)
        return x

    __call__ = forward

    def _update(self, cur_min, cur_max):
        self.min_val = np.minimum(cur_min, self.min_val).astype(_F)
        self.max_val = np.maximum(cur_max, self.max_val).astype(_F)

    def calculate_qparams(self):
        return self._calculate_qparams(self.min_val, self.max_val)

    def reset_min_max_vals(self):
        self.min_val = np.zeros(0, dtype=np.float32)
        self.max_val = np.zeros(0, dtype=np.float32)


class MovingAveragePerChannelMinMaxObserver(PerChannelMinMaxObserver):
    """``torch.ao.quantization.MovingAveragePerChannelMinMaxObserver`` (float32 moving average).

    Reference
    ---------
    ``torch/ao/quantization/observer.py``: ``MovingAveragePerChannelMinMaxObserver.forward``.
    """

    def __init__(
        self,
        averaging_constant=0.01,
        ch_axis=0,
        dtype="quint8",
        qscheme="per_channel_affine",
        reduce_range=False,
        quant_min=None,
        quant_max=None,
        eps=FLOAT32_EPS,
    ):
        super().__init__(ch_axis, dtype, qscheme, reduce_range, quant_min, quant_max, eps)
        self.averaging_constant = float(_asarray(averaging_constant, "averaging_constant", np.float64))

    def _update(self, cur_min, cur_max):
        c = _F(self.averaging_constant)
        self.min_val = (self.min_val + (c * (cur_min - self.min_val).astype(_F))).astype(_F)
        self.max_val = (self.max_val + (c * (cur_max - self.max_val).astype(_F))).astype(_F)


class HistogramObserver(_UniformObserver):
    """``torch.ao.quantization.HistogramObserver``: running histogram and L2 range search.

    ``forward(x)`` bins ``x`` (±Inf dropped with a warning; NaN raises, as
    torch.histc does; float16 / bfloat16 input raises, as torch bins it in half
    precision, which is not reproduced); ``calculate_qparams()`` runs the search of
    :class:`refquant.quant.calibration.TorchHistogram` (``dst_nbins = 2 ** 8``
    for 8-bit dtypes) and computes the parameters of the found range as
    :class:`MinMaxObserver` does. Bit for bit with torch on CPU.

    Reference
    ---------
    ``torch/ao/quantization/observer.py``: ``HistogramObserver``.
    """

    _refuses_symmetric_reduce_range = False

    def __init__(
        self,
        bins=2048,
        dtype="quint8",
        qscheme="per_tensor_affine",
        reduce_range=False,
        quant_min=None,
        quant_max=None,
        eps=FLOAT32_EPS,
    ):
        super().__init__(dtype, qscheme, reduce_range, quant_min, quant_max, eps)
        self.bins = _integer(bins, "bins")
        self.dst_nbins = 2 ** (32 if self.dtype == "qint32" else 8)
        self.upsample_rate = 16
        self._hist = TorchHistogram(self.bins, self.dst_nbins, self.upsample_rate)

    @property
    def histogram(self):
        return self._hist.histogram

    @property
    def min_val(self):
        return self._hist.min_val

    @property
    def max_val(self):
        return self._hist.max_val

    def forward(self, x):
        a = _asarray(x, "x")
        if a.dtype == np.float16 or a.dtype.name == "bfloat16":
            # torch bins the input in its own dtype: torch.histc on a Half tensor rounds
            # every step of the bin position to half and counts in half, per thread
            raise RefquantError(
                f"HistogramObserver input must be float32 or float64, got {a.dtype}: torch "
                "histograms half-precision input in half precision, which is not reproduced; "
                "convert it with x.astype(np.float32) on both sides"
            )
        xf = self._as_float32(x)
        if xf.size and np.isinf(xf).any():
            warnings.warn("torch.inf detected in input tensor, ignoring input", stacklevel=2)
        if xf.size and np.isnan(xf).any():
            raise RefquantError("torch.histc: range of [nan, nan] is not finite")
        self._hist.update(xf)
        return x

    __call__ = forward

    def calculate_qparams(self):
        if not self._hist.initialized:
            warnings.warn(
                "must run observer before calling calculate_qparams. Returning default "
                "scale and zero point ",
                stacklevel=2,
            )
            return np.array([1.0], dtype=np.float32), np.array([0], dtype=np.int64)
        new_min, new_max = self._hist.search()
        return self._calculate_qparams(new_min, new_max)
