"""NVFP4: e2m1 elements, an e4m3 scale per block of 16 and a float32 global scale.

::

    one block (16 elements):   [ s: float8_e4m3fn ][ P_0 .. P_15: float4_e2m1fn, two per byte ]
    one tensor:                one float32 global scale

    value = P_i * s / global_scale     (compressed-tensors: weight_global_scale = 448*6 / amax)
    value = P_i * s * per_tensor_scale (torchao, ModelOpt: per_tensor_scale = amax / (448*6))

Codes are returned unpacked (one 4-bit e2m1 code per uint8, sign in bit 3) and the
block scales as uint8 e4m3 codes; :func:`pack_nvfp4` packs two codes per byte,
the element of even index in the low nibble (compressed-tensors ``pack_fp4_to_uint8``,
torchao ``pack_uint4``). Blocks run along the last axis, whose length must be a
multiple of 16: compressed-tensors (``_process_group``) and torchao
(``nvfp4_quantize``) both refuse a partial block, and so does refquant.

Three conventions (``convention=``), each bit-exact with its library on torch CPU
(tests/peers/test_nvfp4.py):

``"compressed-tensors"`` (0.20.0; what llm-compressor writes as
``nvfp4-pack-quantized``), computed in float32 (in the input's dtype for the
two amax divisions, as torch does for bfloat16 / float16 weights)::

    gs   = fl(fl(1 / max(amax, tiny)) * 448*6)   NaN or Inf -> 1.0  (generate_gparam: torch's
                                                 2688 / t is t.reciprocal() * 2688)
    s_b  = e4m3(clamp(fl32(gs * fl(amax_b / 6)), -448, 448))      (calculate_qparams)
    s_b  = 0.125 where s_b == 0                   (the e4m3 "eps" of _get_dtype_eps)
    P_i  = e2m1(clamp(fl32(x_i / fl32(s_b / gs)), -6, 6))          (_quantize, cast_to_fp4)
    W_i  = fl32(P_i * fl32(s_b / gs))            (_dequantize; decompress returns bfloat16)

``"torchao"`` (0.18; ``nvfp4_quantize`` with a per-tensor scale, the two-level
recipe)::

    pts  = fl32(amax / (448*6))                  (per_tensor_amax_to_scale)
    s_b  = e4m3(clamp(fl32(fl32(amax_b / 6) / pts), 2**-6, 448))
    P_i  = e2m1(clamp(fl32(x_i * fl32(fl32(1 / pts) / s_b)), -6, 6))
    W_i  = fl32(P_i * fl32(pts * s_b))           (NVFP4Tensor.dequantize)

``"modelopt"`` (NVIDIA ModelOpt 0.47 ``NVFP4QTensor.quantize`` / ``dequantize``, what
its ``export_hf_checkpoint`` writes as ``weight`` / ``weight_scale`` / ``weight_scale_2``)::

    pts  = fl32(amax / (448*6))                  (get_weights_scaling_factor_2)
    s_b  = e4m3(clamp(fl32(amax_b / fl32(6 * pts)), 2**-9, 448)), 1.0 where the quotient is 0
    P_i  = e2m1(fl32(x_i / fl32(s_b * pts)))     (_cast_fp4: searchsorted on the midpoints,
                                                  ties to even, no clamp: |v| > 5 -> 6)
    W_i  = fl32(P_i * fl32(s_b * pts))

Where compressed-tensors and torchao differ: the global scale is the reciprocal of the other (rounded
once each way), torchao multiplies by a reciprocal where compressed-tensors
divides, an all-zero block gets scale 2**-6 in torchao and 0.125 in
compressed-tensors (either way its codes are 0), a block whose scale underflows
e4m3 gets 2**-6 in torchao and 0.125 in compressed-tensors, and ``-0.0`` encodes
as code 8 (negative zero) in torchao but as code 0 in compressed-tensors (its
``cast_to_fp4`` multiplies by ``torch.sign``, which is 0 for -0.0); a negative
value that rounds to zero is code 8 in both. e2m1 rounding is to nearest, ties
to even, in both. ModelOpt: a zero block's scale is 1.0 (0x38), a block whose scale
underflows e4m3 gets 2**-9 (0x01), -0.0 is code 0, and code 8 decodes to +0.0.

NaN and Inf are refused: compressed-tensors turns them into codes that depend
on a float-to-int8 cast (``pack_fp4_to_uint8``), not into a defined value.

Reference
---------
compressed-tensors 0.20.0: ``quantization/utils/helpers.py`` (``generate_gparam``,
``calculate_qparams``, ``_get_dtype_eps``), ``quantization/lifecycle/forward_helpers.py``
(``_quantize``, ``_dequantize``, ``_process_group``), ``quantization/quant_args.py``
(``FP4_E2M1_DATA.cast_to_fp4``), ``compressors/nvfp4/helpers.py``
(``pack_fp4_to_uint8``, ``unpack_fp4_from_uint8``). torchao 0.18.0:
``prototype/mx_formats/nvfp4_tensor.py`` (``per_tensor_amax_to_scale``,
``nvfp4_quantize``, ``NVFP4Tensor.dequantize``), ``prototype/mx_formats/kernels.py``
(``pack_uint4``). NVIDIA ModelOpt 0.47.0 ``torch/quantization/qtensor/nvfp4_tensor.py``
(``get_weights_scaling_factor_2``, ``get_weights_scaling_factor``,
``_cast_per_block_scale_to_fp8``, ``quantize``, ``_cast_fp4``, ``dequantize``; recorded by
scripts/record_modelopt_nvfp4.py, it does not install beside the shared environment).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._errors import RefquantError
from ..kernels._backend import resolve_backend
from ._registry import register
from .floats import decode, encode

#: elements from which ``backend="auto"`` runs the Numba kernel (:mod:`refquant.kernels.cpu.nvfp4`)
KERNEL_THRESHOLD = 1 << 16

__all__ = ["NVFP4Format", "NVFP4", "NVFP4_CONVENTIONS", "nvfp4_global_scale", "quantize_nvfp4",
           "dequantize_nvfp4", "pack_nvfp4", "unpack_nvfp4", "e2m1_codes_ct"]

NVFP4_CONVENTIONS = ("compressed-tensors", "torchao", "modelopt")
_MODELOPT_BOUNDS = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5], np.float32)
_E4M3_MAX = 448.0
_E2M1_MAX = 6.0
_TINY32 = np.float32(np.finfo(np.float32).tiny)


def _dtypes():
    import ml_dtypes  # not at import: `import refquant` loads no ml_dtypes (tests/test_import.py)

    return {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
            "float16": np.dtype(np.float16)}


@dataclass(frozen=True)
class NVFP4Format:
    """NVFP4: blocks of 16 e2m1 elements with an e4m3 scale, and a float32 global scale."""

    name: str = "nvfp4"
    block_size: int = 16
    family: str = "block"
    element_bits: int = 4

    @property
    def bits(self) -> float:
        """Bits per element with the block scale (4 + 8/16); the one global scale is not counted."""
        return self.element_bits + 8 / self.block_size


NVFP4 = register(NVFP4Format())


def _convention(convention):
    if not isinstance(convention, str) or convention not in NVFP4_CONVENTIONS:
        raise RefquantError(f"convention must be one of {NVFP4_CONVENTIONS}, got {convention!r}")
    return convention


def _input(x):
    """x as float32 (exact) and the dtype torch would compute its amax divisions in."""
    xa = np.asarray(x)
    dt = xa.dtype
    dts = _dtypes()
    if dt in (dts["bfloat16"], dts["float16"]):
        work = dt
    elif dt.kind == "f" or dt.kind in "iu":
        work = np.dtype(np.float32)
    else:
        raise RefquantError(f"x must be a real array (float32, bfloat16, float16), got dtype {dt}")
    if xa.ndim == 0:
        raise RefquantError("x must have at least one dimension (blocks of 16 run along the last)")
    x32 = xa.astype(np.float32)
    if dt.kind == "f" and dt.itemsize == 8 and not np.array_equal(x32.astype(np.float64), xa,
                                                                  equal_nan=True):
        raise RefquantError("x is float64 with values that float32 does not hold exactly; NVFP4's "
                            "peers compute in float32 (cast x first)")
    if not np.all(np.isfinite(x32)):
        bad = np.flatnonzero(~np.isfinite(x32.reshape(-1)))[0]
        raise RefquantError(f"x holds {x32.reshape(-1)[bad]} at flat index {bad}; NVFP4 needs finite "
                            "values (compressed-tensors packs NaN / Inf to undefined codes)")
    k = xa.shape[-1]
    if k % 16:
        raise RefquantError(f"x has {k} elements along its last axis; NVFP4 blocks of 16 need a "
                            "multiple of 16 (compressed-tensors and torchao refuse a partial block)")
    return x32, work


def _in(a32, work):
    """Round float32 values to ``work`` (torch's bfloat16 / float16 op result) and back."""
    if work == np.float32:
        return a32.astype(np.float32)
    return a32.astype(np.float32).astype(work).astype(np.float32)


def _f32(a):
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        return np.asarray(a, np.float32)


def nvfp4_global_scale(x, *, convention: str = "compressed-tensors") -> np.float32:
    """The tensor's global scale from its amax.

    Parameters
    ----------
    x : array_like
        The tensor (float32, bfloat16 or float16), finite.
    convention : {"compressed-tensors", "torchao", "modelopt"}

    Returns
    -------
    numpy.float32
        compressed-tensors: ``weight_global_scale = 448*6 / amax`` (dequantize divides
        by it); torchao and ModelOpt: ``amax / (448*6)`` (dequantize multiplies).

    Formula
    -------
    compressed-tensors ``generate_gparam``: :math:`g = \\mathrm{fl}(\\mathrm{fl}(1 / \\max(a,
    \\mathrm{tiny})) \\cdot 2688)` in the tensor's dtype (torch's ``2688 / t`` is
    ``t.reciprocal() * 2688``), then float32; NaN / Inf (an amax of 0 or one so small that
    the quotient overflows) give 1.0. torchao ``per_tensor_amax_to_scale``:
    :math:`\\mathrm{fl}_{32}(a / 2688)`.

    Reference
    ---------
    compressed-tensors 0.20.0 ``quantization/utils/helpers.py``; torchao 0.18.0
    ``prototype/mx_formats/nvfp4_tensor.py``.
    """
    conv = _convention(convention)
    x32, work = _input(x)
    return _global_scale(x32, work, conv)


def _global_scale(x32, work, conv):
    amax = np.float32(np.max(np.abs(x32))) if x32.size else np.float32(0)
    if conv in ("torchao", "modelopt"):
        return np.float32(_f32(np.float32(amax) / np.float32(_E4M3_MAX * _E2M1_MAX)))
    a = np.maximum(amax, _TINY32)
    with np.errstate(over="ignore", divide="ignore"):  # torch's scalar / tensor is reciprocal * scalar
        g = _in(_in(np.float32(1) / a, work) * np.float32(_E4M3_MAX * _E2M1_MAX), work)
    return np.float32(1.0) if not np.isfinite(g) else np.float32(g)


def e2m1_codes_ct(v):
    """compressed-tensors' ``cast_to_fp4`` + ``pack_fp4_to_uint8`` index of float32 values in [-6, 6].

    Formula
    -------
    Round to nearest, ties to even, as thresholds on :math:`|v|`: ``<= 0.25`` -> 0,
    ``< 0.75`` -> 0.5, ``<= 1.25`` -> 1, ``< 1.75`` -> 1.5, ``<= 2.5`` -> 2,
    ``< 3.5`` -> 3, ``<= 5`` -> 4, else 6; the sign bit (3) is set for ``v < 0``
    (``-0.0`` stays code 0: ``torch.sign(-0.0)`` is 0).
    """
    a = np.abs(v)
    idx = ((a > 0.25).astype(np.uint8) + (a >= 0.75) + (a > 1.25) + (a >= 1.75) + (a > 2.5)
           + (a >= 3.5) + (a > 5.0)).astype(np.uint8)
    return idx | ((v < 0).astype(np.uint8) << 3)


def quantize_nvfp4(x, *, global_scale=None, convention: str = "compressed-tensors", backend: str = "auto"):
    """Quantize ``x`` to NVFP4 along its last axis.

    Parameters
    ----------
    x : array_like
        float32, bfloat16 or float16 (an integer or exactly-float32 float64 array is
        taken as float32); the last axis a multiple of 16; finite.
    global_scale : float, optional
        The global scale in the convention's sense (compressed-tensors: ``448*6 / amax``;
        torchao, ModelOpt: ``amax / (448*6)``); computed from ``x`` by :func:`nvfp4_global_scale`
        when not given (a calibrated scale may be passed).
    convention : {"compressed-tensors", "torchao", "modelopt"}
    backend : {"auto", "numpy", "cpu"}
        ``"numpy"`` the NumPy body below (the reference), ``"cpu"`` the Numba kernel of
        :mod:`refquant.kernels.cpu.nvfp4` (bit-identical), ``"auto"`` the kernel from
        :data:`KERNEL_THRESHOLD` elements on; ``REFQUANT_BACKEND=numpy`` forces the reference.

    Returns
    -------
    codes : uint8 array of ``x``'s shape, e2m1 codes (sign in bit 3)
    scales : uint8 array of e4m3 codes, shape ``x.shape[:-1] + (K // 16,)``
    global_scale : numpy.float32

    Formula
    -------
    See the module docstring; each line is one float32 operation (bfloat16 /
    float16 inputs: the two amax divisions of compressed-tensors round to the input's
    dtype, as torch's operator on such tensors does).

    Reference
    ---------
    compressed-tensors 0.20.0 ``calculate_qparams``, ``generate_gparam``,
    ``_quantize``, ``cast_to_fp4``; torchao 0.18.0 ``nvfp4_quantize``.
    """
    conv = _convention(convention)
    x32, work = _input(x)
    if global_scale is None:
        gs = _global_scale(x32, work, conv)
    else:
        g = np.asarray(global_scale)
        if g.size != 1 or g.dtype.kind not in "fiu":
            raise RefquantError(f"global_scale must be one real number, got {global_scale!r}")
        gs = np.float32(g.reshape(()))
        if not (np.isfinite(gs) and gs > 0):
            raise RefquantError(f"global_scale must be finite and > 0, got {gs}")
    if conv == "torchao" and x32.size == 0:
        gs = np.float32(gs) if gs > 0 else np.float32(1)  # nothing to scale
    if resolve_backend(backend, x32.size, threshold=KERNEL_THRESHOLD, cuda=False) == "cpu":
        out = _quantize_cpu(x32, gs, conv, work)
        if out is not None:
            return out
    blocks = x32.reshape(*x32.shape[:-1], x32.shape[-1] // 16, 16)
    amax_b = np.max(np.abs(blocks), axis=-1) if blocks.size else np.zeros(blocks.shape[:-1], np.float32)
    if conv == "compressed-tensors":
        s = _f32(gs * _in(_f32(amax_b / np.float32(_E2M1_MAX)), work))
        s = np.clip(s, -_E4M3_MAX, _E4M3_MAX)
        s_codes = encode(s.astype(np.float64), "float8_e4m3fn")
        s_codes = np.where(decode(s_codes, "float8_e4m3fn") == 0, np.uint8(0x20), s_codes)  # 0.125
        s32 = decode(s_codes, "float8_e4m3fn").astype(np.float32)
        eff = _f32(s32 / gs)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            v = _f32(blocks / eff[..., None])
        v = np.clip(v, -_E2M1_MAX, _E2M1_MAX)
        codes = e2m1_codes_ct(v)
    elif conv == "modelopt":
        with np.errstate(all="ignore"):
            bs = _f32(amax_b / _f32(np.float32(_E2M1_MAX) * gs))
        bs = np.where(bs == 0, np.float32(1.0), bs)
        bs = np.clip(bs, np.float32(2.0**-9), np.float32(_E4M3_MAX))  # _cast_per_block_scale_to_fp8
        s_codes = encode(bs.astype(np.float64), "float8_e4m3fn")
        s32 = decode(s_codes, "float8_e4m3fn").astype(np.float32)
        with np.errstate(all="ignore"):
            v = _f32(blocks / _f32(s32 * gs)[..., None])
        a = np.abs(v)
        codes = (np.searchsorted(_MODELOPT_BOUNDS, a, side="left")  # NaN (0 / 0) sorts last: 7
                 + np.isin(a, _MODELOPT_BOUNDS[[1, 3, 5]])).astype(np.uint8) | ((v < 0).astype(np.uint8) << 3)
    else:
        with np.errstate(divide="ignore", over="ignore"):
            if not np.isfinite(np.float32(1) / gs):
                raise RefquantError(f"per_tensor_scale {gs} (amax / 2688) has no finite reciprocal; "
                                    "torchao multiplies by 1 / per_tensor_scale and gets NaN codes")
        bs = _f32(_f32(amax_b / np.float32(_E2M1_MAX)) / gs)
        bs = np.clip(bs, np.float32(2.0**-6), np.float32(_E4M3_MAX))
        s_codes = encode(bs.astype(np.float64), "float8_e4m3fn")
        s32 = decode(s_codes, "float8_e4m3fn").astype(np.float32)
        recip = _f32(_f32(np.float32(1.0) / gs) / s32)
        with np.errstate(over="ignore", invalid="ignore"):
            v = _f32(blocks * recip[..., None])
        v = np.clip(v, -_E2M1_MAX, _E2M1_MAX)
        codes = encode(v.astype(np.float64), "float4_e2m1fn")  # RNE, sign bit kept for -0.0
    return codes.reshape(x32.shape).astype(np.uint8), s_codes.astype(np.uint8), np.float32(gs)


def _quantize_cpu(x32, gs, conv, work):
    """The blocks through :func:`refquant.kernels.cpu.nvfp4.quantize_into`; None: run the reference."""
    from ..kernels.cpu import nvfp4 as kn
    from .floats import _params, float_format

    if conv == "torchao":  # the reference's check, before any block
        with np.errstate(divide="ignore", over="ignore"):
            if not np.isfinite(np.float32(1) / gs):
                return None
    flat = np.ascontiguousarray(x32).reshape(-1, 16)
    codes = np.empty(flat.shape, np.uint8)
    scales = np.empty(flat.shape[0], np.uint8)
    wname = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16"}.get(np.dtype(work), "bfloat16")
    if not kn.quantize_into(flat, gs, conv, wname, _params(float_format("float8_e4m3fn")), codes, scales):
        return None  # torchao met a NaN: the reference refuses it with its own message
    return codes.reshape(x32.shape), scales.reshape(x32.shape[:-1] + (x32.shape[-1] // 16,)), np.float32(gs)


def dequantize_nvfp4(codes, scales, global_scale, *, convention: str = "compressed-tensors",
                     dtype: str = "float32", backend: str = "auto") -> np.ndarray:
    """NVFP4 values from unpacked e2m1 codes, e4m3 block scale codes and the global scale.

    Parameters
    ----------
    codes : uint8 array (..., K), e2m1 codes in the low 4 bits
    scales : uint8 array (..., K // 16), e4m3 codes
    global_scale : float
    convention : {"compressed-tensors", "torchao", "modelopt"}
    dtype : {"float32", "bfloat16", "float16"}
        The output is computed in float32 and rounded once to ``dtype``; returned as
        float32 (compressed-tensors' ``NVFP4PackedCompressor.decompress`` returns
        bfloat16: ``dtype="bfloat16"``).
    backend : {"auto", "numpy", "cpu"}
        As for :func:`quantize_nvfp4` (the kernel is bit-identical).

    Formula
    -------
    compressed-tensors ``_dequantize``: :math:`W = \\mathrm{fl}_{32}(P \\cdot \\mathrm{fl}_{32}(s / g))`;
    torchao ``NVFP4Tensor.dequantize``: :math:`W = \\mathrm{fl}_{32}(P \\cdot \\mathrm{fl}_{32}(g \\cdot s))`.
    An e4m3 NaN scale (0x7F / 0xFF) gives NaN for its block. Code 8 is -0.0, but
    +0.0 under ModelOpt (its ``e2m1_values`` table).

    Reference
    ---------
    compressed-tensors 0.20.0 ``NVFP4PackedCompressor.decompress``,
    ``unpack_fp4_from_uint8``, ``_dequantize``; torchao 0.18.0 ``NVFP4Tensor.dequantize``.
    """
    conv = _convention(convention)
    dts = _dtypes()
    if not isinstance(dtype, str) or dtype not in dts:
        raise RefquantError(f"dtype must be one of {sorted(dts)}, got {dtype!r}")
    c = np.asarray(codes)
    s = np.asarray(scales)
    if c.dtype != np.uint8 or s.dtype != np.uint8:
        raise RefquantError(f"codes and scales must be uint8, got {c.dtype} and {s.dtype}")
    if c.ndim == 0 or c.shape[-1] % 16 or s.shape != c.shape[:-1] + (c.shape[-1] // 16,):
        raise RefquantError(f"codes of shape {c.shape} and scales of shape {s.shape}: expected codes "
                            "(..., K) with K a multiple of 16 and scales (..., K // 16)")
    if c.size and int(c.max()) > 15:
        raise RefquantError(f"codes: {int(c.max())} is not a 4-bit e2m1 code")
    g = np.asarray(global_scale)
    if g.size != 1 or g.dtype.kind not in "fiu":
        raise RefquantError(f"global_scale must be one real number, got {global_scale!r}")
    gs = np.float32(g.reshape(()))
    if resolve_backend(backend, c.size, threshold=KERNEL_THRESHOLD, cuda=False) == "cpu":
        out = _dequantize_cpu(c, s, gs, conv)
    else:
        out = _dequantize_numpy(c, s, gs, conv)
    if dtype != "float32":
        out = out.astype(dts[dtype]).astype(np.float32)
    return out


def _dequantize_cpu(c, s, gs, conv):
    from ..kernels.cpu import nvfp4 as kn

    t4 = decode(np.arange(16, dtype=np.uint8), "float4_e2m1fn").astype(np.float32)
    if conv == "modelopt":  # its e2m1_values table has +0 at code 8
        t4[8] = 0
    t8 = decode(np.arange(256, dtype=np.uint8), "float8_e4m3fn").astype(np.float32)
    out = np.empty(c.shape, np.float32)
    kn.dequantize_into(np.ascontiguousarray(c).reshape(-1, 16), np.ascontiguousarray(s).reshape(-1), gs, conv,
                       t4, t8, out.reshape(-1, 16))
    return out


def _dequantize_numpy(c, s, gs, conv):
    p = decode(c, "float4_e2m1fn").astype(np.float32)
    if conv == "modelopt":  # its e2m1_values table has +0 at code 8
        p = np.where(c == 8, np.float32(0), p)
    s32 = decode(s, "float8_e4m3fn").astype(np.float32)
    with np.errstate(all="ignore"):
        eff = _f32(s32 / gs) if conv == "compressed-tensors" else _f32(gs * s32)  # torchao, modelopt
        return _f32(p.reshape(*c.shape[:-1], c.shape[-1] // 16, 16) * eff[..., None]).reshape(c.shape)


def pack_nvfp4(codes) -> np.ndarray:
    """Two e2m1 codes per byte along the last axis: element ``2j`` low nibble, ``2j+1`` high.

    Reference
    ---------
    compressed-tensors 0.20.0 ``pack_fp4_to_uint8``; torchao 0.18.0 ``pack_uint4``.
    """
    c = np.asarray(codes)
    if c.dtype != np.uint8 or c.ndim == 0 or c.shape[-1] % 2:
        raise RefquantError(f"codes must be uint8 with an even last axis, got {c.dtype} {c.shape}")
    if c.size and int(c.max()) > 15:
        raise RefquantError(f"codes: {int(c.max())} does not fit in 4 bits")
    return (c[..., 0::2] | (c[..., 1::2] << 4)).astype(np.uint8)


def unpack_nvfp4(packed, count: int | None = None) -> np.ndarray:
    """Inverse of :func:`pack_nvfp4`: uint8 (..., n) -> codes (..., 2n) (``count`` checks the width).

    Reference
    ---------
    compressed-tensors 0.20.0 ``unpack_fp4_from_uint8`` (low nibble first).
    """
    p = np.asarray(packed)
    if p.dtype != np.uint8 or p.ndim == 0:
        raise RefquantError(f"packed codes must be a uint8 array, got {p.dtype} {p.shape}")
    if count is not None and count != 2 * p.shape[-1]:
        raise RefquantError(f"packed codes of shape {p.shape} hold {2 * p.shape[-1]} codes per row, "
                            f"not {count}")
    out = np.empty(p.shape[:-1] + (2 * p.shape[-1],), np.uint8)
    out[..., 0::2] = p & 0x0F
    out[..., 1::2] = p >> 4
    return out
