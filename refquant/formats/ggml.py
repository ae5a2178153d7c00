"""llama.cpp (ggml) block formats, bit-exact with ggml's C reference.

One class per block format, registered under its exact lower-case ggml name
(``q4_0``, ``q4_k``, ``tq1_0``, ...; ggml's MXFP4 as ``ggml_mxfp4``). Each
class has ``quantize_blocks`` / ``dequantize_blocks`` working on 2-D arrays of
whole blocks: ``(n, block_size)`` float32 in, ``(n, type_size)`` uint8 out, and
back. The bytes are the very bytes that ggml's ``quantize_row_<type>_ref``
writes, and the floats the very floats ``dequantize_row_<type>`` returns.

=========  ==========  ==========  ======  ==========================================
name       block size  type size   bits/w  C reference (ggml/src/ggml-quants.c)
=========  ==========  ==========  ======  ==========================================
q4_0       32          18          4.5     quantize_row_q4_0_ref / dequantize_row_q4_0
q4_1       32          20          5.0     quantize_row_q4_1_ref / dequantize_row_q4_1
q5_0       32          22          5.5     quantize_row_q5_0_ref / dequantize_row_q5_0
q5_1       32          24          6.0     quantize_row_q5_1_ref / dequantize_row_q5_1
q8_0       32          34          8.5     quantize_row_q8_0_ref / dequantize_row_q8_0
q8_1       32          36          9.0     quantize_row_q8_1_ref (ggml has no dequantizer)
q2_k       256         84          2.625   quantize_row_q2_K_ref / dequantize_row_q2_K
q3_k       256         110         3.4375  quantize_row_q3_K_ref / dequantize_row_q3_K
q4_k       256         144         4.5     quantize_row_q4_K_ref / dequantize_row_q4_K
q5_k       256         176         5.5     quantize_row_q5_K_ref / dequantize_row_q5_K
q6_k       256         210         6.5625  quantize_row_q6_K_ref / dequantize_row_q6_K
q8_k       256         292         9.125   quantize_row_q8_K_ref / dequantize_row_q8_K
tq1_0      256         54          1.6875  quantize_row_tq1_0_ref / dequantize_row_tq1_0
tq2_0      256         66          2.0625  quantize_row_tq2_0_ref / dequantize_row_tq2_0
ggml_mxfp4 32          17          4.25    quantize_row_mxfp4_ref / dequantize_row_mxfp4
iq4_nl     32          18          4.5     quantize_row_iq4_nl_ref / dequantize_row_iq4_nl
iq4_xs     256         136         4.25    quantize_row_iq4_xs_ref / dequantize_row_iq4_xs
=========  ==========  ==========  ======  ==========================================

The lattice types iq2_xxs, iq2_xs, iq2_s, iq3_xxs, iq3_s, iq1_s and iq1_m are in
:mod:`refquant.formats.ggml_iq` (their rows of :data:`GGML_BLOCK_TABLE` are here).

IQ4_NL and IQ4_XS also have ``quantize_blocks_weighted(blocks, quant_weights)``:
``quantize_iq4_nl`` / ``quantize_iq4_xs``, what ``ggml_quantize_chunk`` (and so
llama-quantize) calls, with or without an importance matrix.

How bit-exactness is kept
-------------------------
* Every float operation is a NumPy float32 operation in the order C evaluates it
  (``w*x[i]*l`` is ``(w*x)*l``), and every C accumulation loop is a sequential
  float32 sum (never ``np.sum``, whose pairwise order differs). libggml-base is
  built without FMA contraction (checked: no ``vfmadd`` in it), so no product is
  fused.
* Stored scales are rounded to fp16 by round to nearest, ties to even
  (``GGML_FP32_TO_FP16``), overflow to ±Inf. Where ggml goes on computing with
  the fp32 value (the ``*_0``/``*_1`` formats quantize with the fp32 ``id``) or
  with the rounded fp16 value (the K-quants requantize with
  ``GGML_FP16_TO_FP32(y.d)``) is stated per format.
* ``nearest_int`` adds 12582912 = 1.5·2^23 and reads the low mantissa bits:
  round half to even for |x| < 2^22 (and the same garbage as C beyond).
* C's float -> int conversions that ggml leaves undefined (Inf, NaN, out of
  range; they arise when a scale underflows to a subnormal and ``1/d`` overflows)
  follow x86-64's ``cvttss2si``: the result is INT32_MIN, then truncated to the
  stored width. ``lroundf`` of Inf/NaN gives LONG_MIN, whose low 32 bits are 0.

Backends
--------
``quantize_blocks`` / ``dequantize_blocks`` take ``backend=``: ``"numpy"`` runs the
NumPy bodies below (the reference: readable, vectorised over blocks), ``"cpu"`` the
Numba kernels of :mod:`refquant.kernels.cpu.ggml_quant` (one ``prange`` over blocks,
ggml-quants.c's loops statement by statement; bit-identical, tested against this
reference and libggml), ``"auto"`` (the default) the kernel from
:data:`KERNEL_THRESHOLD` weights on; ``REFQUANT_BACKEND=numpy`` forces the reference.
Nothing is compiled, and Numba not imported, until a kernel first runs.

Non-finite input (NaN, ±Inf) is rejected with :class:`RefquantError`: ggml's
result for it is undefined behaviour in C (a NaN cast to ``int8_t``) or
garbage from ``nearest_int``, so there is no "right" answer to match.

Reference: ggml-org/llama.cpp ``ggml/src/ggml-quants.c``, ``ggml/src/ggml-common.h``
(block structs), ``ggml/src/ggml-impl.h`` (fp16 and E8M0 helpers); gguf-py
``gguf/quants.py`` for the NumPy layout.
"""

from __future__ import annotations

import numpy as np

from .._errors import RefquantError
from ..kernels._backend import resolve_backend
from ._registry import register

__all__ = [
    "GGML_BLOCK_TABLE",
    "KERNEL_THRESHOLD",
    "GGMLBlockFormat",
    "ggml_block_formats",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q8_0",
    "Q8_1",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
    "Q8_K",
    "TQ1_0",
    "TQ2_0",
    "GGML_MXFP4",
    "KVALUES_MXFP4",
    "IQ4_NL",
    "IQ4_XS",
    "KVALUES_IQ4NL",
]

QK_K = 256

# name -> (ggml type id as in GGMLQuantizationType, block size, bytes per block)
GGML_BLOCK_TABLE: dict[str, tuple[int, int, int]] = {
    "q4_0": (2, 32, 2 + 16),
    "q4_1": (3, 32, 2 + 2 + 16),
    "q5_0": (6, 32, 2 + 4 + 16),
    "q5_1": (7, 32, 2 + 2 + 4 + 16),
    "q8_0": (8, 32, 2 + 32),
    "q8_1": (9, 32, 2 + 2 + 32),
    "q2_k": (10, QK_K, QK_K // 16 + QK_K // 4 + 2 + 2),
    "q3_k": (11, QK_K, QK_K // 8 + QK_K // 4 + 12 + 2),
    "q4_k": (12, QK_K, 2 + 2 + 12 + QK_K // 2),
    "q5_k": (13, QK_K, 2 + 2 + 12 + QK_K // 8 + QK_K // 2),
    "q6_k": (14, QK_K, QK_K // 2 + QK_K // 4 + QK_K // 16 + 2),
    "q8_k": (15, QK_K, 4 + QK_K + 2 * (QK_K // 16)),
    "tq1_0": (34, QK_K, (QK_K - 4 * QK_K // 64) // 5 + QK_K // 64 + 2),
    "tq2_0": (35, QK_K, QK_K // 4 + 2),
    "ggml_mxfp4": (39, 32, 1 + 16),
    "iq4_nl": (20, 32, 2 + 16),
    "iq4_xs": (23, QK_K, 2 + 2 + QK_K // 64 + QK_K // 2),
    # the lattice IQ types: classes in refquant.formats.ggml_iq (block structs of ggml-common.h)
    "iq2_xxs": (16, QK_K, 2 + QK_K // 4),
    "iq2_xs": (17, QK_K, 2 + QK_K // 4 + QK_K // 32),
    "iq3_xxs": (18, QK_K, 2 + 3 * QK_K // 8),
    "iq1_s": (19, QK_K, 2 + QK_K // 8 + QK_K // 16),
    "iq3_s": (21, QK_K, 2 + 13 * QK_K // 32 + QK_K // 64),
    "iq2_s": (22, QK_K, 2 + QK_K // 4 + QK_K // 16),
    "iq1_m": (29, QK_K, QK_K // 8 + QK_K // 16 + QK_K // 32),
}

# ggml-common.h kvalues_mxfp4: the e2m1 values doubled, sign in bit 3.
KVALUES_MXFP4 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=np.int8)

_F32 = np.float32
_GROUP_MAX_EPS = _F32(1e-15)
_CHUNK = 8192  # blocks quantized at a time (K-quant temporaries: ~1 MB per 256-block)
#: weights from which ``backend="auto"`` runs the Numba kernel (below, its call overhead and a
#: first call's compile or cache load cost more than the NumPy body)
KERNEL_THRESHOLD = 1 << 16


# --------------------------------------------------------------------------- helpers
def _f(v) -> np.float32:
    return _F32(v)


def _fp16_bits(x: np.ndarray) -> np.ndarray:
    """GGML_FP32_TO_FP16: round to nearest even, overflow to ±Inf (as uint16 bits)."""
    with np.errstate(over="ignore"):
        return np.asarray(x, dtype=_F32).astype(np.float16).view(np.uint16)


def _fp16_to_f32(bits: np.ndarray) -> np.ndarray:
    """GGML_FP16_TO_FP32: exact."""
    return np.ascontiguousarray(bits, dtype=np.uint16).view(np.float16).astype(_F32)


def _u16_bytes(bits: np.ndarray) -> np.ndarray:
    """(n,) uint16 -> (n, 2) little-endian bytes."""
    return np.ascontiguousarray(bits.astype("<u2")).view(np.uint8).reshape(-1, 2)


def _bytes_u16(raw: np.ndarray) -> np.ndarray:
    """(n, 2) little-endian bytes -> (n,) uint16."""
    return np.ascontiguousarray(raw).view("<u2").reshape(-1).astype(np.uint16)


def _real_dtype(dt: np.dtype) -> bool:
    """Integers, floats and the ml_dtypes floats (bfloat16, float8_*: kind "V" or "f", exact in float32)."""
    if np.issubdtype(dt, np.floating) or np.issubdtype(dt, np.integer):
        return True
    if dt.kind not in "fV" or dt.fields is not None:
        return False
    try:
        np.zeros(1, dt).astype(_F32)
    except (TypeError, ValueError):
        return False
    return True


def _nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: bits of (v + 12582912.f), low 23 bits minus 2^22.

    Round half to even for |v| < 2^22 (1.5·2^23 fixes the exponent so the
    addition itself rounds to an integer); the same bits as C beyond.
    """
    s = (np.asarray(v, dtype=_F32) + _f(12582912.0)).view(np.int32)
    return (s & 0x007FFFFF).astype(np.int64) - 0x00400000


def _cvtt(v: np.ndarray) -> np.ndarray:
    """C float -> int32 conversion on x86-64 (cvttss2si): truncate; NaN/Inf/out of range -> INT32_MIN."""
    v64 = np.asarray(v, dtype=np.float64)
    bad = ~(np.abs(v64) < 2.0**31)
    out = np.trunc(np.where(bad, 0.0, v64)).astype(np.int64)
    out[bad] = -(2**31)
    return out


def _roundf(v: np.ndarray) -> np.ndarray:
    """C roundf: half away from zero, exact (in float64, which holds x + 0.5 exactly)."""
    v64 = np.asarray(v, dtype=np.float64)
    return np.sign(v64) * np.floor(np.abs(v64) + 0.5)


def _lroundf_int(v: np.ndarray) -> np.ndarray:
    """(int)lroundf(v) on x86-64 glibc: half away from zero; NaN/Inf -> LONG_MIN -> low 32 bits 0."""
    r = _roundf(v)
    bad = ~np.isfinite(r)
    return np.where(bad, 0.0, r).astype(np.int64)


def _seqsum(terms: np.ndarray) -> np.ndarray:
    """Sum along axis 1 left to right in float32, as a C ``for`` loop accumulates."""
    acc = np.zeros(terms.shape[0], dtype=_F32)
    for i in range(terms.shape[1]):
        acc = acc + terms[:, i]
    return acc


def _first_absmax(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``if (fabsf(v) > amax) {amax = fabsf(v); max = v;}`` from amax = max = 0: (amax, signed max).

    The first element of largest magnitude wins; NaN never compares greater, and
    an all-zero row gives (+0, +0) even when it holds -0.0.
    """
    ax = np.abs(x)
    ax = np.where(np.isnan(ax), _f(-1), ax)
    idx = np.argmax(ax, axis=1)  # first occurrence of the largest |v|
    rows = np.arange(x.shape[0])
    hit = ax[rows, idx] > 0
    return np.where(hit, ax[rows, idx], _f(0)).astype(_F32), np.where(
        hit, x[rows, idx], _f(0)
    ).astype(_F32)


def _running_max0(v: np.ndarray) -> np.ndarray:
    """``m = 0; if (v > m) m = v;`` along axis 1: NaN never replaces, result >= +0."""
    m = np.max(np.where(np.isnan(v), _f(0), v), axis=1, initial=_f(0))
    return np.where(m > 0, m, _f(0)).astype(_F32)


def _pack_2bit_128(L: np.ndarray) -> np.ndarray:
    """Q2_K / Q3_K low-bit packing: per 128 values, byte l = L[l] | L[l+32]<<2 | L[l+64]<<4 | L[l+96]<<6."""
    n = L.shape[0]
    q = L.reshape(n, QK_K // 128, 4, 32).astype(np.uint8)
    out = q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)
    return out.reshape(n, QK_K // 4)


def _unpack_2bit_128(qs: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_pack_2bit_128`: (n, 64) bytes -> (n, 256) values 0..3."""
    n = qs.shape[0]
    q = qs.reshape(n, QK_K // 128, 1, 32) >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)
    return (q & 3).reshape(n, QK_K)


# --------------------------------------------------------------------------- K-quant searches
def _make_qx_quants(x: np.ndarray, nmax: int, qw: np.ndarray | None = None):
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw) on every row of ``x`` at once.

    Returns (scale, L) with L in [0, 2*nmax - 1] (already offset by nmax).
    Weights are ``qw`` or, when None, x*x (rmse_type 1). Tries iscale =
    -(nmax + 0.1*is)/max for is in -9..9 and keeps a candidate only when it is
    strictly better (``sumlx^2 > best*suml2``).
    """
    amax, mx = _first_absmax(x)
    w = x * x if qw is None else qw
    wx = w * x

    def fit(iscale):
        lq = np.clip(_nearest_int(iscale[:, None] * x), -nmax, nmax - 1)
        lf = lq.astype(_F32)
        return lq, _seqsum(wx * lf), _seqsum((w * lf) * lf)

    L, sumlx, suml2 = fit(_f(-nmax) / mx)
    scale = np.where(suml2 != 0, sumlx / suml2, _f(0))
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(_f(nmax) + _f(0.1) * _f(step)) / mx
        lq, slx, sl2 = fit(iscale)
        better = (sl2 > 0) & (slx * slx > best * sl2)
        L = np.where(better[:, None], lq, L)
        scale = np.where(better, slx / sl2, scale)
        best = np.where(better, scale * slx, best)
    zero = amax < _GROUP_MAX_EPS
    L = L + nmax
    L[zero] = 0
    scale = np.where(zero, _f(0), scale).astype(_F32)
    return scale, L


def _make_q3_quants(x: np.ndarray, nmax: int):
    """make_q3_quants(n, nmax, x, L, do_rmse=true): weighted (w = x^2) coordinate descent, 5 sweeps.

    Each sweep visits the elements in order and moves one element to the level
    that is optimal given all the others, when it strictly improves
    ``sumlx^2/suml2``; a row stops after a sweep without change.
    """
    m, n = x.shape
    amax, mx = _first_absmax(x)
    iscale = _f(-nmax) / mx
    L = np.clip(_nearest_int(iscale[:, None] * x), -nmax, nmax - 1)
    w = x * x
    wx = w * x
    sumlx = _seqsum(wx * L.astype(_F32))
    suml2 = _seqsum((w * L.astype(_F32)) * L.astype(_F32))
    active = np.ones(m, dtype=bool)
    for _ in range(5):
        changed = np.zeros(m, dtype=bool)
        for i in range(n):
            li = L[:, i].astype(_F32)
            slx = sumlx - wx[:, i] * li
            ok = active & (slx > 0)
            sl2 = suml2 - (w[:, i] * li) * li
            new_l = np.clip(_nearest_int((x[:, i] * sl2) / slx), -nmax, nmax - 1)
            ok &= new_l != L[:, i]
            nf = new_l.astype(_F32)
            slx2 = slx + wx[:, i] * nf
            sl22 = sl2 + (w[:, i] * nf) * nf
            ok &= (sl22 > 0) & ((slx2 * slx2) * suml2 > (sumlx * sumlx) * sl22)
            L[:, i] = np.where(ok, new_l, L[:, i])
            sumlx = np.where(ok, slx2, sumlx)
            suml2 = np.where(ok, sl22, suml2)
            changed |= ok
        active &= changed
        if not active.any():
            break
    scale = np.where(suml2 > 0, sumlx / suml2, _f(0)).astype(_F32)
    L = L + nmax
    zero = amax < _GROUP_MAX_EPS
    L[zero] = 0
    scale[zero] = 0
    return scale, L


def _make_qkx2_quants(x, weights, nmax, rmin, rdelta, nstep, use_mad):
    """make_qkx2_quants: affine (scale, min) fit with levels 0..nmax, weighted least squares.

    Starts from min = min(x, 0), scale = (max - min)/nmax, then for
    is = 0..nstep tries iscale = (rmin + rdelta*is + nmax)/(max - min) (with
    the current best min), solves the 2x2 weighted least-squares system for
    (scale, min) (min clamped to <= 0) and keeps it when its error (|diff| or
    diff^2, weighted) is strictly smaller. Returns (scale, the_min = -min, L).
    """
    m, n = x.shape
    mn = x[:, 0].copy()
    mx = x[:, 0].copy()
    sum_w = weights[:, 0].copy()
    sum_x = sum_w * x[:, 0]
    for i in range(1, n):
        mn = np.where(x[:, i] < mn, x[:, i], mn)
        mx = np.where(x[:, i] > mx, x[:, i], mx)
        sum_w = sum_w + weights[:, i]
        sum_x = sum_x + weights[:, i] * x[:, i]
    mn = np.where(mn > 0, _f(0), mn).astype(_F32)
    flat = mx == mn

    def err(scale, mins, lf):
        diff = (scale[:, None] * lf + mins[:, None]) - x
        diff = np.abs(diff) if use_mad else diff * diff
        return _seqsum(weights * diff)

    iscale = _f(nmax) / (mx - mn)
    scale = _f(1) / iscale
    L = np.clip(_nearest_int(iscale[:, None] * (x - mn[:, None])), 0, nmax)
    best = err(scale, mn, L.astype(_F32))
    for step in range(nstep + 1):
        iscale = (_f(rmin) + _f(rdelta) * _f(step) + _f(nmax)) / (mx - mn)
        laux = np.clip(_nearest_int(iscale[:, None] * (x - mn[:, None])), 0, nmax)
        lf = laux.astype(_F32)
        wl = weights * lf
        sum_l = _seqsum(wl)
        sum_l2 = _seqsum(wl * lf)
        sum_xl = _seqsum(wl * x)
        det = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
        pos = this_min > 0
        this_min = np.where(pos, _f(0), this_min).astype(_F32)
        this_scale = np.where(pos, sum_xl / sum_l2, this_scale).astype(_F32)
        cur = err(this_scale, this_min, lf)
        better = (det > 0) & (cur < best)
        L = np.where(better[:, None], laux, L)
        best = np.where(better, cur, best)
        scale = np.where(better, this_scale, scale)
        mn = np.where(better, this_min, mn)
    L[flat] = 0
    scale = np.where(flat, _f(0), scale).astype(_F32)
    return scale, (-mn).astype(_F32), L


# --------------------------------------------------------------------------- base class
class GGMLBlockFormat:
    """A ggml block format: ``block_size`` weights stored in ``type_size`` bytes.

    Subclasses implement ``_quantize`` / ``_dequantize`` on validated 2-D arrays;
    the public ``quantize_blocks`` / ``dequantize_blocks`` validate.
    """

    name: str = ""
    family = "block"
    type_id: int = -1
    block_size: int = 0
    type_size: int = 0
    c_name: str = ""  # the suffix in quantize_row_<c_name>_ref / dequantize_row_<c_name>
    has_dequantize = True
    #: whether :mod:`refquant.kernels.cpu.ggml_quant` has this type's quantize and dequantize
    has_kernel = False

    def __init_subclass__(cls, name: str = "", **kw):
        super().__init_subclass__(**kw)
        if name:
            cls.name = name
            cls.type_id, cls.block_size, cls.type_size = GGML_BLOCK_TABLE[name]

    @property
    def bits(self) -> float:
        """Bits per weight including the block's scales: 8 * type_size / block_size."""
        return 8.0 * self.type_size / self.block_size

    def __repr__(self) -> str:
        return f"GGMLBlockFormat({self.name!r}, block_size={self.block_size}, type_size={self.type_size})"

    def quantize_blocks(self, blocks: np.ndarray, backend: str = "auto") -> np.ndarray:
        """Quantize ``(n, block_size)`` floats to ``(n, type_size)`` bytes, as ggml's ``*_ref``.

        Input is converted to float32 first (ggml reads float32). NaN and ±Inf
        are rejected (ggml's result is undefined for them).

        ``backend``: ``"numpy"`` runs the NumPy body here (the reference), ``"cpu"``
        the Numba kernel of :mod:`refquant.kernels.cpu.ggml_quant` (bit-identical),
        ``"auto"`` the kernel from :data:`KERNEL_THRESHOLD` weights on (and where
        the type has one: :attr:`has_kernel`); ``REFQUANT_BACKEND=numpy`` forces the
        reference.
        """
        cpu = self._backend(backend, np.size(blocks)) == "cpu"
        x = self._checked_blocks(blocks, finite=not cpu)
        if cpu:  # the kernel (or one Numba pass over the bits) tests finiteness
            from ..kernels.cpu import ggml_quant

            out = ggml_quant.quantize_finite_blocks(self.name, x, self.type_size)
            if out is not None:
                return out
            self._check_finite(x)  # the slow path: find the first index for the message
        return self._quantize_chunked(x, lambda part, _: self._quantize(part))

    def _backend(self, backend, work: int) -> str:
        """"numpy" or "cpu" for a call on ``work`` weights (see :func:`resolve_backend`)."""
        chosen = resolve_backend(backend, work, threshold=KERNEL_THRESHOLD, cuda=False)
        if chosen == "cpu" and not self.has_kernel:
            if backend == "cpu":
                raise RefquantError(
                    f"backend='cpu': {self.name} has no Numba kernel yet; use backend='numpy'"
                )
            return "numpy"
        return chosen

    def _checked_blocks(self, blocks, finite: bool = True) -> np.ndarray:
        x = np.asarray(blocks)
        if x.ndim != 2 or x.shape[1] != self.block_size:
            raise RefquantError(
                f"blocks must be a 2-D array of shape (n, {self.block_size}) for {self.name}, got shape {x.shape}"
            )
        if not _real_dtype(x.dtype):
            raise RefquantError(f"blocks must be a real array, got dtype {x.dtype}")
        x = np.ascontiguousarray(x, dtype=_F32)
        if finite:
            self._check_finite(x)
        return x

    def _check_finite(self, x: np.ndarray) -> None:
        """Refuse NaN / ±Inf in float32 ``x``, naming the first one and its index."""
        bad = ~np.isfinite(x)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise RefquantError(
                f"blocks contains a non-finite value {x[where].item()!r} at index {where}; ggml's "
                f"quantize_row_{self.c_name}_ref has no defined result for NaN/Inf input"
            )

    def _quantize_chunked(self, x: np.ndarray, fn) -> np.ndarray:
        """``fn(x[start:stop], start)`` per chunk of blocks, into one ``(n, type_size)`` array."""
        out = np.empty((x.shape[0], self.type_size), dtype=np.uint8)
        with np.errstate(all="ignore"):
            # blocks are independent: bound the temporaries by working on chunks of blocks
            for start in range(0, x.shape[0], _CHUNK):
                part = x[start : start + _CHUNK]
                out[start : start + _CHUNK] = fn(part, start)
        return out

    def dequantize_blocks(self, raw: np.ndarray, backend: str = "auto") -> np.ndarray:
        """Dequantize ``(n, type_size)`` bytes to ``(n, block_size)`` float32, as ggml's ``dequantize_row_*``.

        ``backend`` as in :meth:`quantize_blocks`.
        """
        r = np.asarray(raw)
        if r.dtype != np.uint8:
            raise RefquantError(f"raw must be a uint8 array, got dtype {r.dtype}")
        if r.ndim != 2 or r.shape[1] != self.type_size:
            raise RefquantError(
                f"raw must be a 2-D array of shape (n, {self.type_size}) for {self.name}, got shape {r.shape}"
            )
        if self._backend(backend, r.shape[0] * self.block_size) == "cpu":
            from ..kernels.cpu import ggml_quant

            return ggml_quant.dequantize_blocks(self.name, np.ascontiguousarray(r), self.block_size)
        with np.errstate(all="ignore"):
            out = self._dequantize(np.ascontiguousarray(r))
        return out.astype(_F32, copy=False)

    def _quantize(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _dequantize(self, raw: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


# --------------------------------------------------------------------------- legacy formats
# block_q4_0 (18 bytes, 32 weights):
#   byte  0      1      2 ............................ 17
#        +------+------+-------------------------------+
#        | d (fp16 LE) | qs[16]: low nibble = x[j],     |
#        |             |         high nibble = x[j+16]  |
#        +------+------+-------------------------------+
#   x[j] = (q - 8) * d
class Q4_0(GGMLBlockFormat, name="q4_0"):
    """Q4_0: symmetric 4-bit, d = max/-8 where max is the signed value of largest |x| (first one).

    **Formula**: :math:`d = m/(-8)`, :math:`q = \\min(15, \\lfloor x/d + 8.5 \\rfloor)`
    (truncation of a value >= 0), :math:`\\hat x = (q - 8)\\,d_{16}`.
    Quantizes with the fp32 ``id = 1/d``; stores d rounded to fp16; the value
    of largest magnitude lands on code 0 (-8·d) exactly. Ties: +8.5 then
    truncation = round half up. **Reference**: ``quantize_row_q4_0_ref``,
    ``dequantize_row_q4_0``.
    """

    c_name = "q4_0"
    has_kernel = True
    _nmax = 8

    def _scale_codes(self, x):
        _, mx = _first_absmax(x)
        d = mx / _f(-self._nmax)
        idd = np.where(d != 0, _f(1) / d, _f(0)).astype(_F32)
        c = (
            _cvtt(x * idd[:, None] + _f(self._nmax + 0.5)) & 0xFF
        )  # (int8_t)(x*id + 8.5f), as a byte
        # MIN(15, int8): a negative int8 (byte >= 128) passes through unchanged
        q = np.where(c >= 128, c, np.minimum(2 * self._nmax - 1, c)).astype(np.uint8)
        return d, q

    def _quantize(self, x):
        d, q = self._scale_codes(x)
        qs = q[:, :16] | (q[:, 16:] << 4)
        return np.concatenate([_u16_bytes(_fp16_bits(d)), qs], axis=1)

    def _dequantize(self, raw):
        d = _fp16_to_f32(_bytes_u16(raw[:, 0:2]))
        qs = raw[:, 2:]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int32) - 8
        return q.astype(_F32) * d[:, None]


# block_q4_1 (20 bytes): | d fp16 | m fp16 | qs[16] (low nibble x[j], high x[j+16]) |
#   x[j] = q * d + m
class Q4_1(GGMLBlockFormat, name="q4_1"):
    """Q4_1: asymmetric 4-bit, d = (max - min)/15, m = min.

    **Formula**: :math:`q = \\min(15, \\lfloor (x - m)/d + 0.5\\rfloor)`,
    :math:`\\hat x = q\\,d_{16} + m_{16}`. Quantizes with the fp32 ``min`` and
    ``id = 1/d``; stores both rounded to fp16. Ties round half up.
    **Reference**: ``quantize_row_q4_1_ref``, ``dequantize_row_q4_1``.
    """

    c_name = "q4_1"
    has_kernel = True
    _levels = 15

    def _affine(self, x):
        rows = np.arange(x.shape[0])
        mn = x[rows, np.argmin(x, axis=1)]  # first occurrence (-0.0 vs +0.0 as C's `v < min`)
        mx = x[rows, np.argmax(x, axis=1)]
        d = (mx - mn) / _f(self._levels)
        idd = np.where(d != 0, _f(1) / d, _f(0)).astype(_F32)
        v = (x - mn[:, None]) * idd[:, None] + _f(0.5)
        return d, mn, _cvtt(v) & 0xFF

    def _quantize(self, x):
        d, mn, c = self._affine(x)
        q = np.where(c >= 128, c, np.minimum(15, c)).astype(np.uint8)  # MIN(15, (int8_t)...)
        qs = q[:, :16] | (q[:, 16:] << 4)  # C does not mask the low nibble either
        return np.concatenate([_u16_bytes(_fp16_bits(d)), _u16_bytes(_fp16_bits(mn)), qs], axis=1)

    def _dequantize(self, raw):
        d = _fp16_to_f32(_bytes_u16(raw[:, 0:2]))
        m = _fp16_to_f32(_bytes_u16(raw[:, 2:4]))
        qs = raw[:, 4:]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(_F32)
        return q * d[:, None] + m[:, None]


def _qh_pack(q: np.ndarray) -> np.ndarray:
    """The 5th bit of each of 32 codes into a little-endian uint32: bit j <- code j."""
    bits = ((q >> 4) & 1).astype(np.uint32) << np.arange(32, dtype=np.uint32)
    return (
        np.ascontiguousarray(np.bitwise_or.reduce(bits, axis=1).astype("<u4"))
        .view(np.uint8)
        .reshape(-1, 4)
    )


def _qh_unpack(qh: np.ndarray) -> np.ndarray:
    u = np.ascontiguousarray(qh).view("<u4").reshape(-1, 1)
    return ((u >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8) << 4


# block_q5_0 (22 bytes): | d fp16 | qh[4] (uint32 LE: bit j = 5th bit of x[j]) | qs[16] |
#   qs[j]: low nibble = low 4 bits of x[j], high nibble = low 4 bits of x[j+16]
#   x[j] = (q - 16) * d
class Q5_0(Q4_0, name="q5_0"):
    """Q5_0: symmetric 5-bit, d = max/-16, codes 0..31, :math:`\\hat x = (q - 16)\\,d_{16}`.

    Same rule as Q4_0 with 16 for 8 (+16.5, MIN(31, ...)); the fifth bits go
    to ``qh``. **Reference**: ``quantize_row_q5_0_ref``, ``dequantize_row_q5_0``.
    """

    c_name = "q5_0"
    has_kernel = True
    _nmax = 16

    def _quantize(self, x):
        d, q = self._scale_codes(x)
        qs = (q[:, :16] & 0x0F) | ((q[:, 16:] & 0x0F) << 4)
        return np.concatenate([_u16_bytes(_fp16_bits(d)), _qh_pack(q), qs], axis=1)

    def _dequantize(self, raw):
        d = _fp16_to_f32(_bytes_u16(raw[:, 0:2]))
        hi = _qh_unpack(raw[:, 2:6])
        qs = raw[:, 6:]
        q = (np.concatenate([qs & 0x0F, qs >> 4], axis=1) | hi).astype(np.int32) - 16
        return q.astype(_F32) * d[:, None]


# block_q5_1 (24 bytes): | d fp16 | m fp16 | qh[4] | qs[16] |   x[j] = q * d + m
class Q5_1(Q4_1, name="q5_1"):
    """Q5_1: asymmetric 5-bit, d = (max - min)/31; codes are ``(uint8_t)((x-m)*id + 0.5)``, no clamp.

    **Reference**: ``quantize_row_q5_1_ref``, ``dequantize_row_q5_1``.
    """

    c_name = "q5_1"
    has_kernel = True
    _levels = 31

    def _quantize(self, x):
        d, mn, c = self._affine(x)
        q = c.astype(np.uint8)
        qs = (q[:, :16] & 0x0F) | ((q[:, 16:] & 0x0F) << 4)
        head = [_u16_bytes(_fp16_bits(d)), _u16_bytes(_fp16_bits(mn)), _qh_pack(q), qs]
        return np.concatenate(head, axis=1)

    def _dequantize(self, raw):
        d = _fp16_to_f32(_bytes_u16(raw[:, 0:2]))
        m = _fp16_to_f32(_bytes_u16(raw[:, 2:4]))
        hi = _qh_unpack(raw[:, 4:8])
        qs = raw[:, 8:]
        q = (np.concatenate([qs & 0x0F, qs >> 4], axis=1) | hi).astype(_F32)
        return q * d[:, None] + m[:, None]


# block_q8_0 (34 bytes): | d fp16 | qs[32] int8 |   x[j] = q[j] * d
class Q8_0(GGMLBlockFormat, name="q8_0"):
    """Q8_0: symmetric 8-bit, d = amax/127, :math:`q = \\mathrm{roundf}(x \\cdot (1/d))`.

    ``roundf`` rounds half away from zero; quantizes with the fp32 ``id``;
    stores d rounded to fp16. **Reference**: ``quantize_row_q8_0_ref``,
    ``dequantize_row_q8_0``.
    """

    c_name = "q8_0"
    has_kernel = True

    def _codes(self, x):
        amax = np.abs(x).max(axis=1)
        d = amax / _f(127)
        idd = np.where(d != 0, _f(1) / d, _f(0)).astype(_F32)
        q = (_cvtt(_roundf(x * idd[:, None])) & 0xFF).astype(np.uint8)
        return d, q

    def _quantize(self, x):
        d, q = self._codes(x)
        return np.concatenate([_u16_bytes(_fp16_bits(d)), q], axis=1)

    def _dequantize(self, raw):
        d = _fp16_to_f32(_bytes_u16(raw[:, 0:2]))
        return raw[:, 2:].view(np.int8).astype(_F32) * d[:, None]


# block_q8_1 (36 bytes): | d fp16 | s fp16 = fp16(sum(q) * d) | qs[32] int8 |
class Q8_1(Q8_0, name="q8_1"):
    """Q8_1: Q8_0 plus ``s = fp16(float(sum q) * d)`` (d the fp32 scale).

    ggml has no ``dequantize_row_q8_1``; ``dequantize_blocks`` here returns
    ``q * d`` (as Q8_0 would). **Reference**: ``quantize_row_q8_1_ref``.
    """

    c_name = "q8_1"
    has_kernel = True
    has_dequantize = False

    def _quantize(self, x):
        d, q = self._codes(x)
        total = q.view(np.int8).astype(np.int64).sum(axis=1)
        s = total.astype(_F32) * d
        return np.concatenate([_u16_bytes(_fp16_bits(d)), _u16_bytes(_fp16_bits(s)), q], axis=1)

    def _dequantize(self, raw):
        d = _fp16_to_f32(_bytes_u16(raw[:, 0:2]))
        return raw[:, 4:].view(np.int8).astype(_F32) * d[:, None]


# --------------------------------------------------------------------------- ggml MXFP4
def _e8m0_half(e: np.ndarray) -> np.ndarray:
    """ggml_e8m0_to_fp32_half: 2^(e - 128) (e < 2 gives the subnormals 2^-128, 2^-127)."""
    e = np.asarray(e, dtype=np.uint32)
    bits = np.where(e < 2, np.uint32(0x00200000) << e, (e - 1) << np.uint32(23)).astype(np.uint32)
    return bits.view(_F32)


# block_mxfp4 (17 bytes): | e (E8M0) | qs[16]: low nibble = x[j], high nibble = x[j+16] |
#   nibble = sign(bit 3) | e2m1 magnitude index;  x[j] = kvalues_mxfp4[nibble] * 2^(e-128)
class GGML_MXFP4(GGMLBlockFormat, name="ggml_mxfp4"):
    """ggml's MXFP4: E8M0 scale e = floor(log2 amax) - 2 + 127, e2m1 elements by a first-index search.

    **Formula**: :math:`e = \\lfloor \\log_2 a \\rfloor + 125` (0 when a = 0),
    :math:`d = 2^{e-128}` (half the OCP scale, since ``kvalues_mxfp4`` holds
    the e2m1 values doubled); each element takes the first index i of
    ``kvalues_mxfp4`` that minimises :math:`|k_i d - x|` (float32). Ties go to
    the lower index: the smaller magnitude (x = 1.5·2d -> 1, not 2), and +0
    (index 0) for ±0. ``log2f`` is taken as log2 correctly rounded to float32,
    so (2 - 2^-23)·2^k gets e one higher for |k| large enough that the rounding
    reaches the next integer (checked against glibc's log2f in libggml for every
    exponent, subnormal amax included, with mantissas near 1 and 2). A scale below
    2^-125 makes C convert a negative float to ``uint8_t`` (undefined): x86-64
    keeps the low byte (-1 -> 255), and so does this.
    **Reference**: ``quantize_row_mxfp4_ref``, ``best_index_mxfp4``,
    ``dequantize_row_mxfp4``; ``ggml_e8m0_to_fp32_half`` in ggml-impl.h.
    OCP Microscaling v1.0 for the e2m1 values; the OCP ``mxfp4`` format (its
    scale and rounding rules) lives in :mod:`refquant.formats.mx`.
    """

    c_name = "mxfp4"
    has_kernel = True

    def _quantize(self, x):
        amax = np.abs(x).max(axis=1)
        with np.errstate(divide="ignore"):
            lg = np.log2(amax.astype(np.float64)).astype(_F32)  # log2f, correctly rounded
        ev = np.floor(lg) - _f(2) + _f(127)
        e = np.where(amax > 0, _cvtt(ev) & 0xFF, 0).astype(np.uint8)
        d = _e8m0_half(e)
        grid = KVALUES_MXFP4.astype(_F32)[None, None, :] * d[:, None, None]
        errs = np.abs(grid - x[:, :, None])
        q = np.argmin(errs, axis=2).astype(np.uint8)  # first index of the smallest error
        qs = q[:, :16] | (q[:, 16:] << 4)
        return np.concatenate([e[:, None], qs], axis=1)

    def _dequantize(self, raw):
        d = _e8m0_half(raw[:, 0])
        qs = raw[:, 1:]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=1)
        return KVALUES_MXFP4[q].astype(_F32) * d[:, None]


# --------------------------------------------------------------------------- ternary
def _tq_codes(x):
    amax = np.abs(x).max(axis=1)
    idd = np.where(amax != 0, _f(1) / amax, _f(0)).astype(_F32)
    return amax, _lroundf_int(x * idd[:, None]) + 1  # -1, 0, 1 -> 0, 1, 2


def _base3_byte(trits: np.ndarray) -> np.ndarray:
    """Horner (first trit most significant) in uint8, then ceil(q * 256 / 243)."""
    q = np.zeros(trits.shape[:-1], dtype=np.int64)
    for k in range(trits.shape[-1]):
        q = (q * 3 + trits[..., k]) & 0xFF
    return (((q & 0xFF) * 256 + 242) // 243).astype(np.uint8)


def _base3_digits(byte: np.ndarray, n: int) -> np.ndarray:
    """Trit n of a TQ1_0 byte: ((uint8)(q * 3^n) * 3) >> 8, for n = 0..n-1 (last axis)."""
    p = np.array([1, 3, 9, 27, 81, 243][:n], dtype=np.int64)
    q = (byte.astype(np.int64)[..., None] * p) & 0xFF
    return (q * 3) >> 8


# block_tq1_0 (54 bytes, 256 weights):
#   qs[0:32]  : byte m holds x[m + 32n], n = 0..4, as 5 trits (n = 0 most significant),
#               stored as ceil(t * 256 / 243) so that trit n = ((byte*3^n mod 256) * 3) >> 8
#   qs[32:48] : byte m holds x[160 + m + 16n], n = 0..4
#   qh[0:4]   : byte j holds x[240 + j + 4n], n = 0..3, shifted one trit up (x3)
#   d         : fp16 = amax;   x = (t - 1) * d
class TQ1_0(GGMLBlockFormat, name="tq1_0"):
    """TQ1_0: ternary 1.6875 bpw, d = amax, t = lroundf(x/d) + 1 in {0, 1, 2}, 5 trits per byte.

    ``lroundf`` rounds half away from zero (x = ±d/2 -> ±1). Quantizes with the
    fp32 ``id = 1/amax``. **Reference**: ``quantize_row_tq1_0_ref``,
    ``dequantize_row_tq1_0``.
    """

    c_name = "tq1_0"
    has_kernel = True

    def _quantize(self, x):
        n = x.shape[0]
        d, t = _tq_codes(x)
        a = t[:, :160].reshape(n, 5, 32).transpose(0, 2, 1)
        b = t[:, 160:240].reshape(n, 5, 16).transpose(0, 2, 1)
        c = t[:, 240:].reshape(n, 4, 4).transpose(0, 2, 1)
        qh = _base3_byte(np.concatenate([c, np.zeros((n, 4, 1), dtype=np.int64)], axis=2))
        return np.concatenate(
            [_base3_byte(a), _base3_byte(b), qh, _u16_bytes(_fp16_bits(d))], axis=1
        )

    def _dequantize(self, raw):
        n = raw.shape[0]
        d = _fp16_to_f32(_bytes_u16(raw[:, 52:54]))
        a = _base3_digits(raw[:, 0:32], 5).transpose(0, 2, 1).reshape(n, 160)
        b = _base3_digits(raw[:, 32:48], 5).transpose(0, 2, 1).reshape(n, 80)
        c = _base3_digits(raw[:, 48:52], 4).transpose(0, 2, 1).reshape(n, 16)
        t = np.concatenate([a, b, c], axis=1)
        return (t - 1).astype(_F32) * d[:, None]


# block_tq2_0 (66 bytes): qs[64]: for each 128 weights, byte m holds x[m + 32n] in bits 2n..2n+1
#   (code t = lroundf(x/d) + 1 in {0, 1, 2}), then d fp16 = amax;   x = (t - 1) * d
class TQ2_0(GGMLBlockFormat, name="tq2_0"):
    """TQ2_0: ternary 2.0625 bpw, 2 bits per weight, d = amax, ties away from zero.

    **Reference**: ``quantize_row_tq2_0_ref``, ``dequantize_row_tq2_0``.
    """

    c_name = "tq2_0"
    has_kernel = True

    def _quantize(self, x):
        d, t = _tq_codes(x)
        qs = _pack_2bit_128(t & 3)
        return np.concatenate([qs, _u16_bytes(_fp16_bits(d))], axis=1)

    def _dequantize(self, raw):
        d = _fp16_to_f32(_bytes_u16(raw[:, 64:66]))
        t = _unpack_2bit_128(raw[:, :64]).astype(np.int32)
        return (t - 1).astype(_F32) * d[:, None]


# --------------------------------------------------------------------------- K-quants
# block_q2_K (84 bytes, 256 weights in 16 sub-blocks of 16):
#   scales[16]: low nibble = sub-block scale code (0..15), high nibble = min code (0..15)
#   qs[64]    : 2-bit codes; per 128 weights, byte l = L[l] | L[l+32]<<2 | L[l+64]<<4 | L[l+96]<<6
#   d, dmin   : fp16 super-scales;   x = d*sc * q - dmin*m
class Q2_K(GGMLBlockFormat, name="q2_k"):
    """Q2_K: 2-bit codes with a 4-bit scale and 4-bit min per 16 weights.

    Each sub-block: ``make_qkx2_quants(16, 3, x, |x|, rmin=-0.5, rdelta=0.1,
    nstep=15, use_mad=true)``; the scales and mins are quantized to 4 bits
    against their maxima (``nearest_int``, half to even), d = fp16(max/15);
    the codes are then recomputed with the *fp16-rounded* d·sc and dmin·m:
    :math:`q = \\mathrm{clip}(\\mathrm{nearest\\_int}((x + d_m)/d), 0, 3)`.
    **Reference**: ``quantize_row_q2_K_ref``, ``dequantize_row_q2_K``.
    """

    c_name = "q2_K"
    has_kernel = True

    def _quantize(self, x):
        n = x.shape[0]
        xs = x.reshape(n * 16, 16)
        scales, mins, L = _make_qkx2_quants(xs, np.abs(xs), 3, -0.5, 0.1, 15, True)
        scales = scales.reshape(n, 16)
        mins = mins.reshape(n, 16)
        L = L.reshape(n, 16, 16)
        max_scale = _running_max0(scales)
        max_min = _running_max0(mins)
        has_s = max_scale > 0
        has_m = max_min > 0
        ls = np.where(has_s[:, None], _nearest_int((_f(15) / max_scale)[:, None] * scales), 0)
        lm = np.where(has_m[:, None], _nearest_int((_f(15) / max_min)[:, None] * mins), 0)
        sc = ((ls & 0xFF) | ((lm << 4) & 0xFF)).astype(np.uint8)
        d16 = _fp16_bits(np.where(has_s, max_scale / _f(15), _f(0)))
        m16 = _fp16_bits(np.where(has_m, max_min / _f(15), _f(0)))
        d = _fp16_to_f32(d16)[:, None] * (sc & 0xF).astype(_F32)
        dm = _fp16_to_f32(m16)[:, None] * (sc >> 4).astype(_F32)
        lq = np.clip(_nearest_int((x.reshape(n, 16, 16) + dm[:, :, None]) / d[:, :, None]), 0, 3)
        L = np.where((d != 0)[:, :, None], lq, L).reshape(n, QK_K)
        return np.concatenate([sc, _pack_2bit_128(L), _u16_bytes(d16), _u16_bytes(m16)], axis=1)

    def _dequantize(self, raw):
        n = raw.shape[0]
        sc = raw[:, 0:16]
        q = _unpack_2bit_128(raw[:, 16:80]).reshape(n, 16, 16).astype(_F32)
        d = _fp16_to_f32(_bytes_u16(raw[:, 80:82]))
        dmin = _fp16_to_f32(_bytes_u16(raw[:, 82:84]))
        dl = d[:, None] * (sc & 0xF).astype(_F32)
        ml = dmin[:, None] * (sc >> 4).astype(_F32)
        return (dl[:, :, None] * q - ml[:, :, None]).reshape(n, QK_K)


def _q3_scales_pack(l6: np.ndarray) -> np.ndarray:
    """16 six-bit values -> 12 bytes: low nibbles in bytes 0..7 (j and j+8 share byte j), high 2 bits in 8..11."""
    n = l6.shape[0]
    out = np.zeros((n, 12), dtype=np.int64)
    out[:, 0:8] = (l6[:, 0:8] & 0xF) | ((l6[:, 8:16] & 0xF) << 4)
    hi = (l6 >> 4) & 3
    for j in range(16):
        out[:, 8 + j % 4] |= hi[:, j] << (2 * (j // 4))
    return out.astype(np.uint8)


def _q3_scales_unpack(b: np.ndarray) -> np.ndarray:
    lo = np.concatenate([b[:, 0:8] & 0xF, b[:, 0:8] >> 4], axis=1).astype(np.int64)
    j = np.arange(16)
    hi = (b[:, 8 + j % 4].astype(np.int64) >> (2 * (j // 4))) & 3
    return (lo | (hi << 4)) - 32


# block_q3_K (110 bytes, 256 weights in 16 sub-blocks of 16):
#   hmask[32] : bit b of byte m = high bit of the 3-bit code of x[32*b + m]
#   qs[64]    : low 2 bits, packed as in Q2_K
#   scales[12]: 16 six-bit scales (stored +32): byte j (j<8) = s[j] & 0xF | (s[j+8] & 0xF) << 4,
#               byte 8 + j%4 bits 2*(j/4).. = s[j] >> 4
#   d fp16    ;   x = d * (s - 32) * (q - 4)   (q = low | high << 2)
class Q3_K(GGMLBlockFormat, name="q3_k"):
    """Q3_K: 3-bit signed codes with a 6-bit signed scale per 16 weights.

    Each sub-block: ``make_q3_quants(16, 4, x, do_rmse=true)``; scales to 6
    bits against the signed scale of largest magnitude, d = fp16(1/iscale);
    codes recomputed with the fp16 d times the 6-bit scale,
    :math:`q = \\mathrm{clip}(\\mathrm{nearest\\_int}(x/(d s)), -4, 3) + 4`.
    **Reference**: ``quantize_row_q3_K_ref``, ``dequantize_row_q3_K``.
    """

    c_name = "q3_K"
    has_kernel = True

    def _quantize(self, x):
        n = x.shape[0]
        scales, L = _make_q3_quants(x.reshape(n * 16, 16), 4)
        scales = scales.reshape(n, 16)
        L = L.reshape(n, 16, 16)
        _, max_scale = _first_absmax(scales)
        nz = max_scale != 0
        iscale = _f(-32) / max_scale
        l8 = _nearest_int(iscale[:, None] * scales) & 0xFF
        l8 = np.where(l8 >= 128, l8 - 256, l8)  # int8_t
        l6 = np.where(nz[:, None], np.clip(l8, -32, 31) + 32, 0)
        sbytes = np.where(nz[:, None], _q3_scales_pack(l6), 0).astype(np.uint8)
        d16 = _fp16_bits(np.where(nz, _f(1) / iscale, _f(0)))
        s = _q3_scales_unpack(sbytes)
        d = _fp16_to_f32(d16)[:, None] * s.astype(_F32)
        lq = np.clip(_nearest_int(x.reshape(n, 16, 16) / d[:, :, None]), -4, 3) + 4
        L = np.where((d != 0)[:, :, None], lq, L).reshape(n, QK_K)
        high = L > 3
        hb = high.reshape(n, 8, 32).astype(np.uint8) << np.arange(8, dtype=np.uint8)[None, :, None]
        hmask = np.bitwise_or.reduce(hb, axis=1).astype(np.uint8)
        L = np.where(high, L - 4, L)
        return np.concatenate([hmask, _pack_2bit_128(L), sbytes, _u16_bytes(d16)], axis=1)

    def _dequantize(self, raw):
        n = raw.shape[0]
        hmask = raw[:, 0:32]
        low = _unpack_2bit_128(raw[:, 32:96]).astype(np.int32)
        s = _q3_scales_unpack(raw[:, 96:108])
        d = _fp16_to_f32(_bytes_u16(raw[:, 108:110]))
        hb = (hmask[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
        q = low - np.where(hb.reshape(n, QK_K) != 0, 0, 4)
        dl = d[:, None] * s.astype(_F32)
        return (dl[:, :, None] * q.reshape(n, 16, 16).astype(_F32)).reshape(n, QK_K)


def _k4_pack(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """8 six-bit scales and mins -> 12 bytes (get_scale_min_k4's layout).

    bytes 0..3 : sc[j] low 6 bits | (sc[j+4] >> 4) << 6
    bytes 4..7 : m[j]  low 6 bits | (m[j+4]  >> 4) << 6
    bytes 8..11: (sc[j+4] & 0xF) | (m[j+4] & 0xF) << 4
    """
    out = np.zeros((ls.shape[0], 12), dtype=np.int64)
    out[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    out[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    return (out & 0xFF).astype(np.uint8)


def _k4_unpack(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """get_scale_min_k4 for j = 0..7: (scales, mins), each (n, 8) ints 0..63."""
    b = b.astype(np.int64)
    sc = np.empty((b.shape[0], 8), dtype=np.int64)
    mn = np.empty_like(sc)
    sc[:, 0:4] = b[:, 0:4] & 63
    mn[:, 0:4] = b[:, 4:8] & 63
    sc[:, 4:8] = (b[:, 8:12] & 0xF) | ((b[:, 0:4] >> 6) << 4)
    mn[:, 4:8] = (b[:, 8:12] >> 4) | ((b[:, 4:8] >> 6) << 4)
    return sc, mn


def _qk_affine_search(x, nmax, rmin, rdelta, nstep):
    """Q4_K / Q5_K: per 32-weight sub-block, weights av_x + |x| with av_x = sqrt(sum x^2 / 32)."""
    n = x.shape[0]
    xs = x.reshape(n * 8, 32)
    av_x = np.sqrt(_seqsum(xs * xs) / _f(32))
    w = av_x[:, None] + np.abs(xs)
    scales, mins, L = _make_qkx2_quants(xs, w, nmax, rmin, rdelta, nstep, False)
    scales = scales.reshape(n, 8)
    mins = mins.reshape(n, 8)
    max_scale = _running_max0(scales)
    max_min = _running_max0(mins)
    inv_s = np.where(max_scale > 0, _f(63) / max_scale, _f(0)).astype(_F32)
    inv_m = np.where(max_min > 0, _f(63) / max_min, _f(0)).astype(_F32)
    ls = np.minimum(63, _nearest_int(inv_s[:, None] * scales) & 0xFF)  # uint8_t, then MIN(63, .)
    lm = np.minimum(63, _nearest_int(inv_m[:, None] * mins) & 0xFF)
    sbytes = _k4_pack(ls, lm)
    d16 = _fp16_bits(max_scale / _f(63))
    m16 = _fp16_bits(max_min / _f(63))
    d = _fp16_to_f32(d16)[:, None] * ls.astype(_F32)
    dm = _fp16_to_f32(m16)[:, None] * lm.astype(_F32)
    lq = np.clip(_nearest_int((x.reshape(n, 8, 32) + dm[:, :, None]) / d[:, :, None]), 0, nmax)
    L = np.where((d != 0)[:, :, None], lq, L.reshape(n, 8, 32)).reshape(n, QK_K)
    return sbytes, d16, m16, L


def _qk_affine_dequant(raw_d, raw_m, sbytes, q):
    n = q.shape[0]
    d = _fp16_to_f32(_bytes_u16(raw_d))
    dmin = _fp16_to_f32(_bytes_u16(raw_m))
    sc, mn = _k4_unpack(sbytes)
    d1 = d[:, None] * sc.astype(_F32)
    m1 = dmin[:, None] * mn.astype(_F32)
    return (d1[:, :, None] * q.reshape(n, 8, 32).astype(_F32) - m1[:, :, None]).reshape(n, QK_K)


# block_q4_K (144 bytes, 256 weights in 8 sub-blocks of 32):
#   d, dmin fp16 | scales[12] (6-bit scale and min per sub-block, see _k4_pack) |
#   qs[128]: per 64 weights, byte l = L[l] | L[l+32] << 4
#   x = d*sc * q - dmin*m
class Q4_K(GGMLBlockFormat, name="q4_k"):
    """Q4_K: 4-bit codes, 6-bit scale and min per 32 weights, fp16 super-scales.

    Each sub-block: ``make_qkx2_quants(32, 15, x, av_x + |x|, rmin=-1,
    rdelta=0.1, nstep=20, use_mad=false)``; scale and min codes
    ``MIN(63, nearest_int(63/max * s))``; d = fp16(max_scale/63),
    dmin = fp16(max_min/63); codes recomputed with the fp16-rounded d·sc, dmin·m.
    **Reference**: ``quantize_row_q4_K_ref``, ``dequantize_row_q4_K``.
    """

    c_name = "q4_K"
    has_kernel = True

    def _quantize(self, x):
        n = x.shape[0]
        sbytes, d16, m16, L = _qk_affine_search(x, 15, -1.0, 0.1, 20)
        Lr = L.reshape(n, 4, 2, 32).astype(np.uint8)
        qs = (Lr[:, :, 0] | (Lr[:, :, 1] << 4)).reshape(n, 128)
        return np.concatenate([_u16_bytes(d16), _u16_bytes(m16), sbytes, qs], axis=1)

    def _dequantize(self, raw):
        n = raw.shape[0]
        qs = raw[:, 16:144].reshape(n, 4, 1, 32)
        q = np.concatenate([qs & 0xF, qs >> 4], axis=2).reshape(n, QK_K)
        return _qk_affine_dequant(raw[:, 0:2], raw[:, 2:4], raw[:, 4:16], q)


# block_q5_K (176 bytes): d, dmin fp16 | scales[12] as Q4_K | qh[32] | qs[128] as Q4_K (low 4 bits)
#   qh[l] bit 2k   = 5th bit of x[64k + l],  bit 2k+1 = 5th bit of x[64k + 32 + l]
class Q5_K(GGMLBlockFormat, name="q5_k"):
    """Q5_K: 5-bit codes, 6-bit scale and min per 32 weights (``make_qkx2_quants(32, 31, ..., -0.5, 0.1, 15)``).

    **Reference**: ``quantize_row_q5_K_ref``, ``dequantize_row_q5_K``.
    """

    c_name = "q5_K"
    has_kernel = True

    def _quantize(self, x):
        n = x.shape[0]
        sbytes, d16, m16, L = _qk_affine_search(x, 31, -0.5, 0.1, 15)
        Lr = L.reshape(n, 4, 2, 32)
        qs = ((Lr[:, :, 0] & 0xF) | ((Lr[:, :, 1] & 0xF) << 4)).astype(np.uint8).reshape(n, 128)
        hb = (Lr >> 4) & 1  # (n, 4, 2, 32)
        shifts = (2 * np.arange(4)[:, None] + np.arange(2)[None, :]).reshape(1, 4, 2, 1)
        qh = np.bitwise_or.reduce((hb << shifts).reshape(n, 8, 32), axis=1).astype(np.uint8)
        return np.concatenate([_u16_bytes(d16), _u16_bytes(m16), sbytes, qh, qs], axis=1)

    def _dequantize(self, raw):
        n = raw.shape[0]
        qh = raw[:, 16:48].astype(np.int64)
        qs = raw[:, 48:176].reshape(n, 4, 1, 32).astype(np.int64)
        low = np.concatenate([qs & 0xF, qs >> 4], axis=2)
        shifts = (2 * np.arange(4)[:, None] + np.arange(2)[None, :]).reshape(1, 4, 2, 1)
        high = ((qh[:, None, None, :] >> shifts) & 1) << 4
        return _qk_affine_dequant(
            raw[:, 0:2], raw[:, 2:4], raw[:, 4:16], (low + high).reshape(n, QK_K)
        )


# block_q6_K (210 bytes, 256 weights in 16 sub-blocks of 16):
#   ql[128]: per 128 weights (64 bytes): byte l      = low4(x[l])    | low4(x[l+64]) << 4
#                                        byte l + 32 = low4(x[l+32]) | low4(x[l+96]) << 4
#   qh[64] : per 128 weights (32 bytes): byte l = hi2(x[l]) | hi2(x[l+32])<<2 | hi2(x[l+64])<<4 | hi2(x[l+96])<<6
#   scales[16] int8 | d fp16;   x = d * scale * (q - 32)
class Q6_K(GGMLBlockFormat, name="q6_k"):
    """Q6_K: 6-bit codes with an 8-bit signed scale per 16 weights.

    Each sub-block: ``make_qx_quants(16, 32, x, rmse_type=1)`` (weights x^2);
    scale codes ``MIN(127, nearest_int(-128/max_scale * s))``, d = fp16(1/iscale);
    codes recomputed with the fp16 d times the int8 scale. A super-block
    whose scales are all below 1e-15 is all zero bytes.
    **Reference**: ``quantize_row_q6_K_ref``, ``dequantize_row_q6_K``.
    """

    c_name = "q6_K"
    has_kernel = True

    def _quantize(self, x):
        n = x.shape[0]
        scales, L = _make_qx_quants(x.reshape(n * 16, 16), 32)
        scales = scales.reshape(n, 16)
        L = L.reshape(n, 16, 16)
        max_abs, max_scale = _first_absmax(scales)
        zero = max_abs < _GROUP_MAX_EPS
        iscale = _f(-128) / max_scale
        d16 = _fp16_bits(_f(1) / iscale)
        sc = np.minimum(127, _nearest_int(iscale[:, None] * scales)) & 0xFF
        sc = np.where(sc >= 128, sc - 256, sc)
        d = _fp16_to_f32(d16)[:, None] * sc.astype(_F32)
        lq = np.clip(_nearest_int(x.reshape(n, 16, 16) / d[:, :, None]), -32, 31) + 32
        L = np.where((d != 0)[:, :, None], lq, L).reshape(n, 2, 4, 32)
        ql = np.concatenate(
            [
                (L[:, :, 0] & 0xF) | ((L[:, :, 2] & 0xF) << 4),
                (L[:, :, 1] & 0xF) | ((L[:, :, 3] & 0xF) << 4),
            ],
            axis=2,
        ).reshape(n, 128)
        qh = (
            (L[:, :, 0] >> 4)
            | ((L[:, :, 1] >> 4) << 2)
            | ((L[:, :, 2] >> 4) << 4)
            | ((L[:, :, 3] >> 4) << 6)
        )
        out = np.concatenate(
            [
                ql.astype(np.uint8),
                qh.reshape(n, 64).astype(np.uint8),
                (sc & 0xFF).astype(np.uint8),
                _u16_bytes(d16),
            ],
            axis=1,
        )
        out[zero] = 0
        return out

    def _dequantize(self, raw):
        n = raw.shape[0]
        ql = raw[:, 0:128].reshape(n, 2, 2, 32).astype(np.int64)
        qh = raw[:, 128:192].reshape(n, 2, 1, 32).astype(np.int64)
        sc = raw[:, 192:208].view(np.int8).astype(_F32)
        d = _fp16_to_f32(_bytes_u16(raw[:, 208:210]))
        low = np.stack(
            [ql[:, :, 0] & 0xF, ql[:, :, 1] & 0xF, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], axis=2
        )
        high = (qh >> (2 * np.arange(4)).reshape(1, 1, 4, 1)) & 3
        q = (low | (high << 4)) - 32  # (n, 2, 4, 32): group g of 32 within each 128
        dl = d[:, None] * sc  # (d * sc) first, then * q, as C evaluates d * sc[is] * q
        return (dl.reshape(n, 16, 1) * q.reshape(n, 16, 16).astype(_F32)).reshape(n, QK_K)


# block_q8_K (292 bytes): | d float32 | qs[256] int8 | bsums[16] int16 (sum of each 16 codes) |
class Q8_K(GGMLBlockFormat, name="q8_k"):
    """Q8_K: 8-bit codes with a float32 scale d = max/-127 (signed max), plus 16-weight sums.

    :math:`q = \\min(127, \\mathrm{nearest\\_int}(-127/m \\cdot x))` (half to
    even). An all-zero block leaves ``bsums`` unwritten in ggml (whatever the
    buffer held); refquant writes zeros there.
    **Reference**: ``quantize_row_q8_K_ref``, ``dequantize_row_q8_K``.
    """

    c_name = "q8_K"
    has_kernel = True

    def _quantize(self, x):
        n = x.shape[0]
        amax, mx = _first_absmax(x)
        iscale = _f(-127) / mx
        q = np.minimum(127, _nearest_int(iscale[:, None] * x)) & 0xFF
        q = np.where(q >= 128, q - 256, q)
        zero = amax == 0
        q[zero] = 0
        bsums = q.reshape(n, 16, 16).sum(axis=2)
        d = np.where(zero, _f(0), _f(1) / iscale).astype("<f4")
        return np.concatenate(
            [
                np.ascontiguousarray(d).view(np.uint8).reshape(n, 4),
                (q & 0xFF).astype(np.uint8),
                np.ascontiguousarray(bsums.astype("<i2")).view(np.uint8).reshape(n, 32),
            ],
            axis=1,
        )

    def _dequantize(self, raw):
        d = np.ascontiguousarray(raw[:, 0:4]).view("<f4").reshape(-1).astype(_F32)
        return d[:, None] * raw[:, 4:260].view(np.int8).astype(_F32)


# --------------------------------------------------------------------------- 4-bit non-linear
# ggml-common.h kvalues_iq4nl: the 16 levels of IQ4_NL / IQ4_XS (a non-uniform grid, denser
# near zero), as int8; a value decodes to d * KVALUES_IQ4NL[code].
KVALUES_IQ4NL = np.array(
    [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8
)
_IQ4_LEVELS = KVALUES_IQ4NL.astype(_F32)
_IQ4_NTRY = 7  # quantize_iq4_nl / quantize_iq4_xs; quantize_row_iq4_nl_ref passes -1


def _best_index_iq4(v: np.ndarray) -> np.ndarray:
    """ggml's ``best_index_int8(16, kvalues_iq4nl, v)``: the nearest level, ties to the upper.

    At or below the lowest level: 0; at or above the highest: 15; otherwise the
    binary search brackets ``val[mu-1] <= v < val[mu]`` and returns ``mu - 1``
    when ``v - val[mu-1] < val[mu] - v`` in float32, else ``mu`` (so ties and
    NaN go up).
    """
    mu = np.clip(np.searchsorted(_IQ4_LEVELS, v, side="right"), 1, 15)
    lower = (v - _IQ4_LEVELS[mu - 1]) < (_IQ4_LEVELS[mu] - v)
    idx = np.where(lower, mu - 1, mu)
    idx = np.where(v >= _IQ4_LEVELS[15], 15, idx)
    return np.where(v <= _IQ4_LEVELS[0], 0, idx)


def _iq4_sums(v: np.ndarray, x: np.ndarray, w: np.ndarray):
    """(L, sumqx, sumq2) for the codes of the scaled values ``v``: ``w*q*x`` and ``w*q*q`` summed in order."""
    L = _best_index_iq4(v)
    q = _IQ4_LEVELS[L]
    wq = w * q
    return L, _seqsum(wq * x), _seqsum(wq * q)


def _iq4_block_scales(x: np.ndarray, w: np.ndarray, ntry: int):
    """The per-32 search of ``quantize_row_iq4_nl_impl``: (scale, L, small) for rows of 32.

    Start from ``d = ±max/127`` (sign by ``ntry``), fit ``d = sumqx/sumq2`` on its codes,
    then for ``itry`` in ``-ntry..ntry`` try ``id = (itry - 127)/max`` and keep a candidate
    only when strictly better (``sumqx^2 > best*sumq2``). ``small`` marks rows with
    amax < 1e-15 (scale 0, codes left to the caller).
    """
    amax, mx = _first_absmax(x)
    small = amax < _GROUP_MAX_EPS
    mx = np.where(small, _f(1), mx).astype(_F32)  # rows skipped in C; any finite max here
    d = (-mx if ntry > 0 else mx) / _IQ4_LEVELS[0]
    L, sumqx, sumq2 = _iq4_sums((_f(1) / d)[:, None] * x, x, w)
    d = np.where(sumq2 > 0, sumqx / sumq2, _f(0)).astype(_F32)
    best = d * sumqx
    for itry in range(-ntry, ntry + 1):
        idn = _f(itry + int(KVALUES_IQ4NL[0])) / mx
        _, sqx, sq2 = _iq4_sums(idn[:, None] * x, x, w)
        better = (sq2 > 0) & (sqx * sqx > best * sq2)
        d = np.where(better, sqx / sq2, d).astype(_F32)
        best = np.where(better, d * sqx, best).astype(_F32)
    return np.where(small, _f(0), d).astype(_F32), L, small


def _iq4_weights(x: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    """``weight[j]``: ``x^2`` without an imatrix, else ``qw * sqrtf(sigma2 + x^2)``.

    ``sigma2 = 2/n * sum(x^2)`` over the whole (super-)block of n, summed in order.
    """
    x2 = x * x
    if qw is None:
        return x2
    sigma2 = _seqsum(x2) * _f(2.0 / x.shape[1])
    return qw * np.sqrt(sigma2[:, None] + x2)


def _iq4_pack(L: np.ndarray) -> np.ndarray:
    """Per 32 codes: byte j = L[j] | L[j + 16] << 4 (as Q4_0)."""
    n = L.shape[0]
    g = L.reshape(n, -1, 2, 16).astype(np.uint8)
    return (g[:, :, 0] | (g[:, :, 1] << 4)).reshape(n, -1)


def _iq4_unpack(qs: np.ndarray) -> np.ndarray:
    n = qs.shape[0]
    g = qs.reshape(n, -1, 16)
    return np.stack([g & 0xF, g >> 4], axis=2).reshape(n, -1)


class _IQ4Format(GGMLBlockFormat):
    """IQ4_NL and IQ4_XS: ``quantize_blocks`` is ``quantize_row_*_ref``, plus the imatrix path."""

    _ref_ntry = _IQ4_NTRY

    def quantize_blocks_weighted(self, blocks: np.ndarray, quant_weights=None) -> np.ndarray:
        """``quantize_<type>(x, ..., quant_weights)``: what ``ggml_quantize_chunk`` and llama-quantize write.

        ``quant_weights`` is the importance matrix (``imatrix``) entry of each weight: shape
        ``(block_size,)`` (the same for every block) or ``(n, block_size)``, finite and >= 0;
        ``None`` is ggml's ``NULL``. ggml passes ``quant_weights + block_size*ibl`` for block
        ``ibl`` of a row, so give a row's imatrix reshaped to ``(-1, block_size)`` and tiled
        over rows.
        """
        x = self._checked_blocks(blocks)
        qw = None
        if quant_weights is not None:
            try:
                qw = np.asarray(quant_weights, dtype=_F32)
            except (TypeError, ValueError):
                raise RefquantError("quant_weights must be a real array") from None
            if qw.shape not in ((self.block_size,), (x.shape[0], self.block_size)):
                raise RefquantError(
                    f"quant_weights must have shape ({self.block_size},) or ({x.shape[0]}, "
                    f"{self.block_size}) for {self.name}, got {qw.shape}"
                )
            if not np.all(np.isfinite(qw)) or np.any(qw < 0):
                raise RefquantError("quant_weights must be finite and >= 0")

        def fn(part, start):
            w = qw if qw is None or qw.ndim == 1 else qw[start : start + part.shape[0]]
            return self._quantize_iq4(part, w, _IQ4_NTRY)

        return self._quantize_chunked(x, fn)

    def _quantize(self, x):
        return self._quantize_iq4(x, None, self._ref_ntry)


# block_iq4_nl (18 bytes, 32 weights):
#   byte  0      1      2 ............................ 17
#        +------+------+-------------------------------+
#        | d (fp16 LE) | qs[16]: low nibble = code of   |
#        |             | x[j], high nibble = x[j+16]    |
#        +------+------+-------------------------------+
#   x[j] = d * kvalues_iq4nl[code]
class IQ4_NL(_IQ4Format, name="iq4_nl"):
    """IQ4_NL: 32 weights on the 16 non-uniform levels ``kvalues_iq4nl`` times an fp16 scale.

    **Formula**: with :math:`m` the signed value of largest :math:`|x|` (first
    one) and :math:`v_k` the levels, codes :math:`L_j = \\arg\\min_k |x_j/d_0 - v_k|`
    for :math:`d_0 = -m/127` (ties and equal distances to the upper level, in
    float32), then :math:`d = \\sum w q x / \\sum w q^2` with :math:`q = v_{L_j}`
    and :math:`w = x^2`; :math:`\\hat x = d_{16}\\, v_L`. Sums run left to right
    in float32; d is stored rounded to fp16 (nearest even); a block with
    :math:`\\max|x| < 10^{-15}` gets d = 0.

    :meth:`quantize_blocks` is ``quantize_row_iq4_nl_ref`` (``ntry = -1``: no
    scale search, the codes of :math:`d_0` kept). :meth:`quantize_blocks_weighted`
    is ``quantize_iq4_nl`` (what ``ggml_quantize_chunk`` calls, imatrix or not):
    :math:`d_0 = +m/127`, then 15 more candidate scales
    :math:`(t - 127)/m`, :math:`t = -7..7`, the best weighted fit kept only when
    strictly better, and the codes recomputed from the final d; with an imatrix
    :math:`w_j = qw_j \\sqrt{\\sigma^2 + x_j^2}`, :math:`\\sigma^2 = \\tfrac{2}{32}\\sum x^2`.

    Departure: for a block with :math:`\\max|x| < 10^{-15}`,
    ``quantize_row_iq4_nl_ref`` leaves the codes as whatever its ``L`` buffer
    held (the previous block's codes, uninitialised for the first: undefined);
    refquant writes code 8 (level 1, the one ``quantize_iq4_nl`` writes), so
    such a block's bytes may differ there while d = 0 in both.

    **Reference**: ``quantize_row_iq4_nl_impl``, ``quantize_row_iq4_nl_ref``,
    ``quantize_iq4_nl``, ``dequantize_row_iq4_nl``, ``best_index_int8``
    (ggml/src/ggml-quants.c); ``kvalues_iq4nl``, ``block_iq4_nl``
    (ggml/src/ggml-common.h).
    """

    c_name = "iq4_nl"
    has_kernel = True
    _ref_ntry = -1  # quantize_row_iq4_nl_ref

    def _quantize_iq4(self, x, qw, ntry):
        w = _iq4_weights(x, qw)
        d, L, small = _iq4_block_scales(x, w, ntry)
        if ntry > 0:
            idn = np.where(d != 0, _f(1) / d, _f(0)).astype(_F32)
            L = _best_index_iq4(idn[:, None] * x)
        L = np.where(small[:, None], 8, L)
        return np.concatenate([_u16_bytes(_fp16_bits(d)), _iq4_pack(L)], axis=1)

    def _dequantize(self, raw):
        d = _fp16_to_f32(_bytes_u16(raw[:, 0:2]))
        return d[:, None] * _IQ4_LEVELS[_iq4_unpack(raw[:, 2:18])]


# block_iq4_xs (136 bytes, 256 weights = 8 sub-blocks of 32):
#   | d fp16 | scales_h u16 | scales_l[4] | qs[128] |
#   sub-block ib's 6-bit scale ls = (scales_l[ib/2] >> 4*(ib%2)) & 0xF | ((scales_h >> 2*ib) & 3) << 4
#   x = d * (ls - 32) * kvalues_iq4nl[code]; qs as IQ4_NL per 32 weights
class IQ4_XS(_IQ4Format, name="iq4_xs"):
    """IQ4_XS: IQ4_NL's levels on sub-blocks of 32 with 6-bit scales under one fp16 scale per 256.

    **Formula**: each sub-block's scale :math:`s_b` comes from IQ4_NL's weighted
    search (``ntry = 7``, :math:`w = x^2` or the imatrix form); then
    :math:`d = -s_{max}/32` (:math:`s_{max}` the signed scale of largest
    magnitude, first one), :math:`l_b = \\mathrm{clamp}(\\mathrm{nearest\\_int}(s_b/d), -32, 31)`
    (half to even), stored as :math:`l_b + 32`, and the codes recomputed against
    :math:`d\\,l_b` in float32 (not the fp16 d);
    :math:`\\hat x = d_{16} (l_b) v_L`. ``quantize_row_iq4_xs_ref`` is
    ``quantize_iq4_xs`` without an imatrix, so :meth:`quantize_blocks` and
    :meth:`quantize_blocks_weighted` agree when no weights are given.

    **Reference**: ``quantize_row_iq4_nl_impl``, ``quantize_iq4_xs``,
    ``quantize_row_iq4_xs_ref``, ``dequantize_row_iq4_xs`` (ggml/src/ggml-quants.c);
    ``block_iq4_xs`` (ggml/src/ggml-common.h).
    """

    c_name = "iq4_xs"
    has_kernel = True

    def _quantize_iq4(self, x, qw, ntry):
        n = x.shape[0]
        w = _iq4_weights(x, qw).reshape(n * 8, 32)  # sigma2 over the whole 256
        xs = x.reshape(n * 8, 32)
        scales, _, _ = _iq4_block_scales(xs, w, ntry)
        _, max_scale = _first_absmax(scales.reshape(n, 8))
        d = -max_scale / _f(32)
        idn = np.where(d != 0, _f(1) / d, _f(0)).astype(_F32)
        lv = np.clip(_nearest_int(idn[:, None] * scales.reshape(n, 8)), -32, 31)
        dl = (d[:, None] * lv.astype(_F32)).reshape(n * 8)
        idl = np.where(dl != 0, _f(1) / dl, _f(0)).astype(_F32)
        L = _best_index_iq4(idl[:, None] * xs).reshape(n, QK_K)
        ls = (lv + 32).astype(np.int64)
        scales_l = ((ls[:, 0::2] & 0xF) | ((ls[:, 1::2] & 0xF) << 4)).astype(np.uint8)
        scales_h = np.bitwise_or.reduce((ls >> 4) << (2 * np.arange(8)), axis=1)
        return np.concatenate(
            [_u16_bytes(_fp16_bits(d)), _u16_bytes(scales_h.astype(np.uint16)), scales_l, _iq4_pack(L)],
            axis=1,
        )

    def _dequantize(self, raw):
        n = raw.shape[0]
        d = _fp16_to_f32(_bytes_u16(raw[:, 0:2]))
        sh = _bytes_u16(raw[:, 2:4]).astype(np.int64)
        sl = raw[:, 4:8].astype(np.int64)
        ib = np.arange(8)
        ls = ((sl[:, ib // 2] >> (4 * (ib % 2))) & 0xF) | (((sh[:, None] >> (2 * ib)) & 3) << 4)
        dl = d[:, None] * (ls - 32).astype(_F32)  # d * (ls - 32) first, then * level
        q = _IQ4_LEVELS[_iq4_unpack(raw[:, 8:136])].reshape(n, 8, 32)
        return (dl[:, :, None] * q).reshape(n, QK_K)


_FORMATS = tuple(
    register(cls())
    for cls in (
        Q4_0,
        Q4_1,
        Q5_0,
        Q5_1,
        Q8_0,
        Q8_1,
        Q2_K,
        Q3_K,
        Q4_K,
        Q5_K,
        Q6_K,
        Q8_K,
        TQ1_0,
        TQ2_0,
        GGML_MXFP4,
        IQ4_NL,
        IQ4_XS,
    )
)


def ggml_block_formats() -> dict[str, GGMLBlockFormat]:
    """The registered ggml block formats by name (in GGML_BLOCK_TABLE order).

    The IQ1 / IQ2 / IQ3 types are registered by :mod:`refquant.formats.ggml_iq`.
    """
    global _BLOCK_FORMATS
    if _BLOCK_FORMATS is None:  # get_format imports every family once; after that, fixed
        from ._registry import get_format

        _BLOCK_FORMATS = {name: get_format(name) for name in GGML_BLOCK_TABLE}
    return dict(_BLOCK_FORMATS)  # the caller's own dict


_BLOCK_FORMATS = None
