"""Numba kernel for NVFP4 quantization: e2m1 codes and e4m3 block scales, per block of 16.

The exact twin of the block part of :func:`refquant.formats.nvfp4.quantize_nvfp4`
(the NumPy reference): the same float32 operations in the same order, per block,
for each convention (0 compressed-tensors, 1 torchao, 2 ModelOpt). The global
scale, the validation and the input's work dtype (float32, bfloat16, float16:
where compressed-tensors rounds ``amax_b / 6``) are decided by the caller, which
passes plain arrays and flags; nothing here imports from ``refquant.formats``.
The e4m3 rounding is :func:`refquant.kernels.cpu.floats.encode_one` (round half to
even, saturating) on the caller's format parameter vector; e2m1 (eight magnitudes)
is rounded by thresholds, ties to even, as the reference's ``encode`` rounds it.
Blocks are independent: the outer loop is a ``prange``.

Reference: :mod:`refquant.formats.nvfp4` (compressed-tensors 0.20.0, torchao 0.18.0,
NVIDIA ModelOpt 0.47.0).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .floats import decode_one, encode_one
from .ggml_quant import _fp16_bits

__all__ = ["CONVENTIONS", "WORK_DTYPES", "quantize_into", "dequantize_into"]

#: convention name -> the code the kernel branches on
CONVENTIONS = {"compressed-tensors": 0, "torchao": 1, "modelopt": 2}
#: compressed-tensors' work dtype for amax_b / 6 -> code
WORK_DTYPES = {"float32": 0, "bfloat16": 1, "float16": 2}

_OPTS = dict(cache=True, nogil=True, error_model="numpy")
_PAR = dict(cache=True, nogil=True, error_model="numpy", parallel=True)

_F32 = np.float32
_SIX = _F32(6.0)
_E4M3_MAX = _F32(448.0)
_ONE = _F32(1.0)
_ZERO = _F32(0.0)
_CT_MIN_CODE = 0x20  # e4m3 0.125, compressed-tensors' "eps" for a zero scale
_MIN_TORCHAO = _F32(2.0**-6)
_MIN_MODELOPT = _F32(2.0**-9)
_U0 = np.uint64(0)


@njit(**_OPTS)
def _round_work(v, work):
    """float32 ``v`` rounded to bfloat16 (1) / float16 (2) and back (RNE), or kept (0)."""
    if work == 1:
        u = np.int64(np.float32(v).view(np.uint32))
        if (u & 0x7FFFFFFF) > 0x7F800000:
            return v
        u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
        return np.uint32(u).view(np.float32)
    if work == 2:
        h = _fp16_bits(v)
        e = (h >> 10) & 0x1F
        m = h & 0x3FF
        if e == 0:
            r = np.float64(m) * 2.0**-24
        elif e == 31:
            r = np.inf if m == 0 else np.nan
        else:
            r = np.float64(m + 1024) * 2.0 ** (e - 25)
        return np.float32(-r if h & 0x8000 else r)
    return v


@njit(**_OPTS)
def _clip(v, lo, hi):
    """np.clip of one float32: NaN and -0.0 pass through."""
    if v < lo:
        return lo
    if v > hi:
        return hi
    return v


@njit(**_OPTS)
def _e2m1_index(a):
    """e2m1 magnitude code of ``a`` in [0, 6], round to nearest, ties to even (thresholds)."""
    return (np.int32(a > 0.25) + np.int32(a >= 0.75) + np.int32(a > 1.25) + np.int32(a >= 1.75)
            + np.int32(a > 2.5) + np.int32(a >= 3.5) + np.int32(a > 5.0))


@njit(**_OPTS)
def _code_ct(v):
    """compressed-tensors' cast_to_fp4 index (formats.nvfp4.e2m1_codes_ct) of one float32."""
    return _e2m1_index(abs(v)) | (np.int32(v < 0) << 3)


@njit(**_OPTS)
def _code_e2m1(v):
    """float4_e2m1fn encode (RNE, saturating) of a non-NaN float32 in [-6, 6]: sign bit kept (-0.0 -> 8)."""
    sign = np.int32(np.float32(v).view(np.int32) < 0)
    return _e2m1_index(abs(v)) | (sign << 3)


@njit(**_OPTS)
def _code_modelopt(v):
    """ModelOpt's _cast_fp4: searchsorted(bounds, |v|, 'left') + |v| in (0.75, 1.75, 3.5); NaN -> 7."""
    a = abs(v)
    if a != a:
        idx = np.int32(7)
    else:
        idx = (np.int32(0.25 < a) + np.int32(0.75 < a) + np.int32(1.25 < a) + np.int32(1.75 < a)
               + np.int32(2.5 < a) + np.int32(3.5 < a) + np.int32(5.0 < a))
        idx += np.int32(a == 0.75 or a == 1.75 or a == 3.5)
    return idx | (np.int32(v < 0) << 3)


@njit(**_PAR)
def _quantize(x, gs, conv, work, p8, codes, scales):
    """Blocks ``x`` (n, 16) float32 -> codes (n, 16), scales (n,); returns the NaN codes met (torchao)."""
    nbad = 0
    for i in prange(x.shape[0]):
        amax = _ZERO
        for j in range(16):
            a = abs(x[i, j])
            if a > amax:
                amax = a
        q = np.float32(amax / _SIX)
        bad = 0
        if conv == 0:
            s = _clip(np.float32(gs * _round_work(q, work)), -_E4M3_MAX, _E4M3_MAX)
            c = encode_one(np.float64(s), p8, 0, True, False, _U0)
            s32 = decode_one(c, p8)
            if s32 == 0:
                c = _CT_MIN_CODE
                s32 = decode_one(c, p8)
            eff = np.float32(s32 / gs)
            for j in range(16):
                v = _clip(np.float32(x[i, j] / eff), -_SIX, _SIX)
                codes[i, j] = _code_ct(v)
        elif conv == 1:
            bs = _clip(np.float32(q / gs), _MIN_TORCHAO, _E4M3_MAX)
            c = encode_one(np.float64(bs), p8, 0, True, False, _U0)
            s32 = decode_one(c, p8)
            recip = np.float32(np.float32(_ONE / gs) / s32)
            for j in range(16):
                v = _clip(np.float32(x[i, j] * recip), -_SIX, _SIX)
                bad += np.int32(v != v)
                codes[i, j] = _code_e2m1(v)
        else:
            bs = np.float32(amax / np.float32(_SIX * gs))
            if bs == 0:
                bs = _ONE
            bs = _clip(bs, _MIN_MODELOPT, _E4M3_MAX)
            c = encode_one(np.float64(bs), p8, 0, True, False, _U0)
            s32 = decode_one(c, p8)
            den = np.float32(s32 * gs)
            for j in range(16):
                codes[i, j] = _code_modelopt(np.float32(x[i, j] / den))
        scales[i] = c
        nbad += bad
    return nbad


def quantize_into(x: np.ndarray, gs, convention: str, work: str, p_e4m3: np.ndarray, codes: np.ndarray,
                  scales: np.ndarray) -> bool:
    """Quantize C-contiguous float32 blocks ``x`` (n, 16) into ``codes`` (n, 16) / ``scales`` (n,).

    ``gs`` the float32 global scale (validated: finite, > 0), ``p_e4m3`` the
    :func:`refquant.kernels.cpu.floats.format_params` vector of float8_e4m3fn. Returns False where torchao's scaled value was NaN (the caller then
    runs the reference, which refuses it), else True.
    """
    if x.shape[0] == 0:
        return True
    with np.errstate(all="ignore"):  # only matters under NUMBA_DISABLE_JIT=1
        nbad = _quantize(x, np.float32(gs), CONVENTIONS[convention], WORK_DTYPES[work], p_e4m3, codes, scales)
    return nbad == 0


@njit(**_PAR)
def _dequantize(codes, scales, gs, divide, t4, t8, out):
    for i in prange(codes.shape[0]):
        s32 = t8[scales[i]]
        eff = np.float32(s32 / gs) if divide else np.float32(gs * s32)
        for j in range(16):
            out[i, j] = np.float32(t4[codes[i, j]] * eff)


def dequantize_into(codes: np.ndarray, scales: np.ndarray, gs, convention: str, t_e2m1: np.ndarray,
                    t_e4m3: np.ndarray, out: np.ndarray) -> None:
    """float32 ``out`` (n, 16) from codes (n, 16) and scale codes (n,), C-contiguous uint8.

    ``t_e2m1`` / ``t_e4m3``: the float32 value of each of the 16 / 256 codes, as the caller
    decodes them (ModelOpt's code 8 is +0.0 there); compressed-tensors divides the block
    scale by ``gs``, torchao and ModelOpt multiply: W = fl32(P * fl32(s / gs)) or fl32(P * fl32(gs * s)).
    """
    if codes.shape[0]:
        with np.errstate(all="ignore"):
            _dequantize(codes, scales, np.float32(gs), CONVENTIONS[convention] == 0, t_e2m1, t_e4m3, out)
