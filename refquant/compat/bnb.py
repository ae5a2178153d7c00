"""bitsandbytes' blockwise quantization by its own names, in NumPy: NF4 / FP4 and the 8-bit dynamic map.

``quantize_4bit`` / ``dequantize_4bit`` / ``quantize_blockwise`` /
``dequantize_blockwise`` take and return NumPy arrays; the quant state is a plain
dict with bitsandbytes' ``QuantState`` field names (``absmax``, ``shape``,
``dtype``, ``blocksize``, ``quant_type``, ``code``, ``offset``, ``state2``).

Layout of the packed 4-bit output (``kQuantizeBlockwise``; the default backend's
``(q[::2] << 4) | q[1::2]``)::

    byte k:  bit 7 6 5 4 | 3 2 1 0
                 q[2k]     q[2k+1]        first element in the HIGH nibble

An odd element count is padded with the code of 0.0 (NF4: 7, FP4: 0), except that the
CUDA kernel scales the missing element like the rest of its block, so an all-zero last
block pads with code 0 (0 * Inf = NaN); the packed array has shape ``((n + 1) // 2, 1)``.

Three backends (bitsandbytes 0.50.2's dispatch targets), which differ on exact ties,
all-zero blocks, NaN / Inf, and the 8-bit assignment:

``backend="cpu"`` (the default) — what bitsandbytes runs for a CPU tensor: the
native ``libbitsandbytes_cpu`` kernel where ``backends/cpu/ops.py`` registers one
(``quantize_blockwise``, hence also the statistics of ``compress_statistics=True``),
the pure-PyTorch default backend otherwise (``quantize_4bit``). So ``quantize_4bit``
here equals ``backend="default"`` except for the nested statistics.

``backend="default"`` — bitsandbytes' pure-PyTorch backend (``backends/default/ops.py``):

* full blocks are scaled by ``x * float32(1 / max(absmax, 1e-38))``; the partial
  last block by ``x / max(absmax, 1e-38)`` (a divide) and its stored absmax is the
  clamped value (an all-zero partial block stores 1e-38, a full one stores 0);
* codes by ``torch.bucketize`` on float32 midpoints of the value-sorted table: a
  value exactly on a midpoint takes the lower value (``x > t`` decides);
* FP4 maps through ``argsort(code)``, whose two zeros sort index 0 before index 8,
  so a small *positive* value (0 < x / absmax <= 0.0026) gets code 8, the
  sign-bit-set zero;
* NaN propagates through ``torch.max``: a block holding a NaN stores absmax NaN and
  every element of it gets the last bucket (8-bit code 255, NF4 15, FP4 ``order[15]``,
  as ``bucketize`` places NaN); an Inf makes absmax Inf, the block's finite values
  scale to ±0 and the Inf itself to ``Inf * 0 = NaN`` (last bucket).

``backend="cpu"``'s 8-bit kernel (``csrc/cpu_ops.cpp`` ``quantize_cpu_impl``, bitsandbytes
0.50; read from its source and its x86-64 machine code, an FMA build) is not a nearest-value
search but a 65,536-entry lookup table:

* ``absmax = max(0, max |x|)`` with NaN skipped (``std::max(m, |x|)`` keeps ``m`` when
  ``|x|`` is NaN); an all-zero (or all-NaN) block stores absmax 0 and codes 0;
* ``v = x * float32(1 / absmax)`` for every block, the partial one included;
  ``i = trunc(fma((clamp(v, -1, 1) + 1) * 0.5, 65535, 0.5))`` in float32 (a NaN ``v``
  goes through ``cvttss2si`` to 0x80000000, whose low 16 bits are index 0);
* ``code = lut[i]``, where ``lut[i]`` counts the float32 midpoints ``0.5 (c_j + c_{j+1})``
  strictly below ``float32(2 i / 65535) - 1``. The grid step 2 / 65535 ≈ 3.1e-5 is
  coarser than the dynamic map near zero, so values are assigned by the grid point
  they round to, not by their own position: 0.0 gets code 131 (2.125e-5), not the
  zero at 127; on normal data about 0.15 % of elements land one code away from the
  nearest (x / absmax = 0.0240595 gets 164 = 0.0254687, where 163 = 0.0226562 is
  nearer). This was the "±1 code" earlier comparisons allowed; it is now reproduced
  bit for bit.
* Version: the table arrived in bitsandbytes 0.50.0; 0.49 searched the map per element
  (``lookup_code_index``), not reproduced here. refquant reproduces 0.50 (tested against
  0.50.2).

``backend="cuda"`` — the CUDA kernel (``csrc/kernels.cu`` ``kQuantizeBlockwise``), 4-bit only:

* every block is multiplied by ``1.0f / absmax``; an all-zero block gives
  0 * Inf = NaN, which every ``x > t`` test rejects: code 0 (NF4 -1.0 * 0 = -0);
* NF4 by ``dQuantizeNF4``'s decision tree on the float32 literals below;
  FP4 by ``dQuantizeFP4``: sign bit from ``x < 0``, the magnitude through a tree
  whose literal ``0.583333f`` sits 3e-7 below the midpoint 7/12;
* not reproduced (refused): NaN / Inf inputs, and the 8-bit ``dQuantize`` binary search
  that ``compress_statistics=True`` would use for the statistics.

Departure (double quantization): bitsandbytes takes ``offset = absmax.mean()`` in
torch's float32, whose summation order depends on the length and on torch's CPU
vector width; refquant rounds the float64 sum to float32 and then divides by the
count in float32 as torch does. The two agree exactly when every partial sum is
exact (tested) and otherwise within 3 float32 ulp (measured on 3,000 |normal| vectors of
log-uniform length 3 to 70,000, torch 2.13 with AVX-512: 65 % agree exactly, 28 % differ
by one ulp, 6 % by two, 0.3 % by three).
Given the same offset, the nested codes and statistics are bit for bit.

Kernels: for ``backend="cpu"`` and ``"default"``, ``quantize_4bit`` / ``dequantize_4bit`` /
``quantize_blockwise`` / ``dequantize_blockwise`` run fused Numba kernels
(:mod:`refquant.kernels.cpu.codebook`; scale, assignment and packing in one pass, bit for
bit the NumPy bodies here) from :data:`KERNEL_THRESHOLD` elements on;
``REFQUANT_BACKEND=numpy`` forces the NumPy bodies.

Reference
---------
bitsandbytes 0.50.2 ``functional.py`` (``quantize_4bit``, ``dequantize_4bit``,
``quantize_blockwise``, ``get_4bit_type``, ``create_dynamic_map``),
``backends/default/ops.py``, ``backends/cpu/ops.py``, ``csrc/cpu_ops.cpp``,
``csrc/kernels.cu``; Dettmers et al., "QLoRA" (2023).
"""

from __future__ import annotations

import math
import operator

import numpy as np

from .._errors import RefquantError
from ..formats.codebook import (
    BNB_FP4_VALUES,
    NF4_VALUES,
    create_dynamic_map,
    midpoint_thresholds,
)
from ..kernels._backend import resolve_backend
from ..kernels.packing import pack_nibbles, unpack_nibbles

__all__ = [
    "get_4bit_type",
    "create_dynamic_map",
    "quantize_4bit",
    "dequantize_4bit",
    "quantize_blockwise",
    "dequantize_blockwise",
    "CUDA_NF4_THRESHOLDS",
    "CUDA_FP4_MAGNITUDE_THRESHOLDS",
]

_BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)

# dQuantizeNF4's comparisons `x > t`, sorted (csrc/kernels.cu).
CUDA_NF4_THRESHOLDS = np.array(
    [
        -0.8480964004993439, -0.6106329262256622, -0.4599952697753906, -0.33967943489551544,
        -0.23460740596055984, -0.13791173323988914, -0.045525018125772476, 0.03979014977812767,
        0.1202552504837513, 0.2035212516784668, 0.2920137718319893, 0.3893125355243683,
        0.5016634166240692, 0.6427869200706482, 0.8614784181118011,
    ],
    dtype=np.float32,
)  # fmt: skip
# dQuantizeFP4's comparisons on |x|, sorted, and the 3-bit code of each magnitude bucket.
CUDA_FP4_MAGNITUDE_THRESHOLDS = np.array(
    [0.00260417, 0.0859375, 0.20833333, 0.29166667, 0.4166667, 0.583333, 0.8333333], dtype=np.float32
)
_CUDA_FP4_MAGNITUDE_CODES = np.array([0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011], np.uint8)


def get_4bit_type(typename: str) -> np.ndarray:
    """The 16 float32 values of ``"nf4"`` or ``"fp4"`` (``functional.get_4bit_type``)."""
    if typename == "nf4":
        return NF4_VALUES.copy()
    if typename == "fp4":
        return BNB_FP4_VALUES.copy()
    raise RefquantError(f"quant_type must be 'nf4' or 'fp4', got {typename!r}")


def _as_input(A, backend):
    try:
        a = np.asarray(A)
    except (TypeError, ValueError):
        raise RefquantError("A must be a rectangular float array") from None
    if a.dtype.kind != "f" and a.dtype.name != "bfloat16":
        raise RefquantError(f"A must be a float array (float16, bfloat16 or float32), got dtype {a.dtype}")
    with np.errstate(invalid="ignore", over="ignore"):
        a32 = a.astype(np.float32, copy=False)
    if backend == "cuda" and not np.isfinite(a32).all():
        raise RefquantError("A contains NaN or Inf; backend='cuda' reproduces the CUDA kernel on finite "
                            "values only (backend='cpu' and 'default' follow bitsandbytes on NaN / Inf)")
    return a, a32.ravel()


def _check_backend(backend, allowed=("cpu", "default", "cuda")):
    if backend not in allowed:
        raise RefquantError(f"backend must be one of {allowed}, got {backend!r}")


def _scale(a, blocksize, backend):
    """Per-element scaled values and the stored absmax per block (both float32)."""
    n = a.size
    nb = -(-n // blocksize)
    full = n // blocksize
    pad = nb * blocksize - n
    absmax = np.abs(np.concatenate([a, np.zeros(pad, np.float32)])).reshape(nb, blocksize).max(axis=1)
    absmax = absmax.astype(np.float32)
    per = np.repeat(absmax, blocksize)[:n]
    with np.errstate(divide="ignore", invalid="ignore"):
        if backend == "cuda":
            scaled = a * (np.float32(1) / per)  # 0 * inf = NaN for an all-zero block
        else:
            div = np.maximum(per, np.float32(1e-38))
            scaled = a * (np.float32(1) / div)
            if full < nb:  # the partial last block divides, and stores the clamped absmax
                scaled[full * blocksize :] = a[full * blocksize :] / div[full * blocksize :]
                absmax[-1] = np.maximum(absmax[-1], np.float32(1e-38))  # NaN stays NaN
    scaled = np.clip(scaled, np.float32(-1), np.float32(1))  # NaN stays NaN
    return scaled.astype(np.float32), absmax


def _bucketize(scaled, thresholds, order=None):
    """``torch.bucketize(scaled, thresholds)``: the count of thresholds strictly below, NaN last."""
    k = np.searchsorted(thresholds, scaled, side="left")  # NumPy, like torch, sorts NaN after all
    return (k if order is None else order[k]).astype(np.uint8)


def _codes_4bit(scaled, quant_type, backend):
    if backend != "cuda":
        t, order = midpoint_thresholds(get_4bit_type(quant_type))
        return _bucketize(scaled, t, order)
    nan = np.isnan(scaled)
    s = np.where(nan, 0, scaled).astype(np.float32)
    if quant_type == "nf4":
        q = np.searchsorted(CUDA_NF4_THRESHOLDS, s, side="left").astype(np.uint8)
    else:
        mag = np.searchsorted(CUDA_FP4_MAGNITUDE_THRESHOLDS, np.abs(s), side="left")
        q = _CUDA_FP4_MAGNITUDE_CODES[mag] + np.where(s < 0, 8, 0).astype(np.uint8)
    return np.where(nan, 0, q).astype(np.uint8)


def _no_buffers(**buffers):
    for name, v in buffers.items():
        if v is not None:
            raise RefquantError(f"{name} must be None: refquant returns new arrays instead of "
                                "filling bitsandbytes' preallocated output buffers")


def _check_blocksize(blocksize, allowed=_BLOCKSIZES):
    if blocksize not in allowed or isinstance(blocksize, bool):
        raise RefquantError(f"blocksize must be one of {allowed}, got {blocksize!r}")
    return int(blocksize)


def quantize_4bit(A, absmax=None, out=None, blocksize=None, compress_statistics: bool = False,
                  quant_type: str = "fp4", quant_storage="uint8", *, backend: str = "cpu"):
    """Blockwise 4-bit NF4 / FP4 quantization, packed two per byte (first element high).

    The arguments are bitsandbytes' own, in its order, so a call written for
    ``bitsandbytes.functional.quantize_4bit`` runs unchanged.

    Parameters
    ----------
    A : array_like of float16, bfloat16 or float32
        Flattened in C order; not modified.
    absmax, out : None
        bitsandbytes' preallocated output buffers; refquant returns new arrays, so
        these must be None.
    blocksize : int or None
        32, 64, ..., 4096 (bitsandbytes' list); the last block may be partial. None
        means 64, bitsandbytes' default on CPU and CUDA (128 on ROCm).
    compress_statistics : bool
        Double quantization: ``offset = mean(absmax)`` (float32; see the module docstring
        for how it departs from torch's summation), then ``absmax - offset`` is quantized
        with :func:`quantize_blockwise` (8-bit dynamic map, block 256) of the same backend.
        Refused with ``backend="cuda"`` (its 8-bit kernel is not reproduced).
    quant_type : {"fp4", "nf4"}
    quant_storage : "uint8"
        The packed bytes' dtype; only uint8 (bitsandbytes' default) is supported.
    backend : {"cpu", "default", "cuda"}
        Whose tie, zero-block, NaN / Inf and statistics behaviour to reproduce (module
        docstring). ``"cpu"`` and ``"default"`` differ only in the nested statistics.

    Returns
    -------
    packed : uint8 array of shape ``((n + 1) // 2, 1)``
    quant_state : dict

    Formula
    -------
    :math:`a_b = \\max_{i\\in b}|A_i|`, :math:`q_i = \\#\\{j : A_i / a_b > t_j\\}` mapped to the
    table's index, :math:`t` the midpoints (or kernel literals); ties take the lower value.

    Reference
    ---------
    bitsandbytes ``functional.quantize_4bit``; ``backends/default/ops.py``; ``kQuantizeBlockwise``.
    """
    _check_backend(backend)
    if compress_statistics and backend == "cuda":
        raise RefquantError("compress_statistics=True with backend='cuda' is not reproduced: the "
                            "statistics would go through CUDA's 8-bit dQuantize, which refquant does "
                            "not implement; use backend='cpu' or 'default'")
    _no_buffers(absmax=absmax, out=out)
    if not (isinstance(quant_storage, str) and quant_storage == "uint8") and not (
            isinstance(quant_storage, type) and quant_storage is np.uint8):
        raise RefquantError(f"quant_storage must be 'uint8' (bitsandbytes' default), got {quant_storage!r}")
    get_4bit_type(quant_type)
    blocksize = _check_blocksize(64 if blocksize is None else blocksize)
    a, flat = _as_input(A, backend)
    if backend != "cuda" and _kernel(flat.size):
        packed, absmax = _quantize_4bit_kernel(flat, blocksize, quant_type)
    else:
        scaled, absmax = _scale(flat, blocksize, backend)
        q = _codes_4bit(scaled, quant_type, backend)
        # the odd element's partner: 0.0 scaled as its block is (CUDA: 0 * (1 / absmax), NaN when
        # the last block is all zero, code 0; the default backend pads the scaled values with 0)
        zero = np.zeros(1, np.float32)
        if backend == "cuda" and absmax.size:
            with np.errstate(divide="ignore", invalid="ignore"):
                zero = (np.float32(0) * (np.float32(1) / absmax[-1:])).astype(np.float32)
        pad = int(_codes_4bit(zero, quant_type, backend)[0])
        packed = pack_nibbles(q, order="high_first", pad=pad).reshape(-1, 1)
    state = {
        "absmax": absmax,
        "shape": tuple(a.shape),
        "dtype": a.dtype,
        "blocksize": blocksize,
        "quant_type": quant_type,
        "code": get_4bit_type(quant_type),
        "nested": bool(compress_statistics),
        "offset": None,
        "state2": None,
    }
    if compress_statistics:
        offset = _mean32(absmax)
        qabs, state2 = quantize_blockwise(_sub32(absmax, offset), blocksize=256, backend=backend)
        state.update(absmax=qabs, offset=offset, state2=state2)
    return packed, state


#: elements from which the Numba kernels of :mod:`refquant.kernels.cpu.codebook` run the
#: 4-bit paths of the "cpu" / "default" backends (bit-identical to the NumPy bodies here;
#: ``REFQUANT_BACKEND=numpy`` forces those)
KERNEL_THRESHOLD = 1 << 16


def _kernel(n: int) -> bool:
    return resolve_backend("auto", n, threshold=KERNEL_THRESHOLD, cuda=False) == "cpu"


def _quantize_4bit_kernel(flat, blocksize, quant_type):
    """The default backend's scale, bucketize and high-first packing, fused in one Numba pass."""
    from ..kernels.cpu import codebook as kc

    t, order = midpoint_thresholds(get_4bit_type(quant_type))
    order = order.astype(np.int64)
    pad = int(_bucketize(np.zeros(1, np.float32), t, order)[0])
    n = flat.size
    packed = np.empty((n + 1) // 2, np.uint8)
    absmax = np.empty(-(-n // blocksize), np.float32)
    kc.bnb_4bit_packed_into(np.ascontiguousarray(flat), blocksize, t, order, pad, packed, absmax)
    return packed.reshape(-1, 1), absmax


def _mean32(x):
    """torch's float32 ``mean``: a float32 sum divided by the count in float32.

    The sum is the float64 sum (``math.fsum``, correctly rounded) rounded to float32;
    torch sums in float32 in an order that depends on the length and on its CPU vector
    width, so the two can differ by a few ulp (module docstring). Empty: NaN, as torch.
    """
    x = np.asarray(x, np.float32).ravel()
    with np.errstate(invalid="ignore", over="ignore"):
        total = np.float32(math.fsum(x.astype(np.float64))) if np.isfinite(x).all() else np.float32(
            np.sum(x.astype(np.float64)))
        return np.float32(total / np.float32(x.size))


def _sub32(x, offset):
    with np.errstate(invalid="ignore", over="ignore"):
        return (np.asarray(x, np.float32) - np.float32(offset)).astype(np.float32)


def _cpu_lut(code: np.ndarray) -> np.ndarray:
    """``build_quantize_lut``: for each of 65,536 grid points ``float32(2 i / 65535) - 1``,
    the number of float32 midpoints ``0.5 (c_j + c_{j+1})`` strictly below it."""
    key = code.tobytes()
    lut = _CPU_LUTS.get(key)
    if lut is None:
        mid = ((code[:-1] + code[1:]) * np.float32(0.5)).astype(np.float32)
        grid = (np.float32(2) * np.arange(65536, dtype=np.float32) / np.float32(65535)).astype(np.float32)
        grid = (grid - np.float32(1)).astype(np.float32)
        # the C loop walks `while (mid[k] < val) ++k` over sorted midpoints: searchsorted(left)
        lut = np.searchsorted(mid, grid, side="left").astype(np.uint8)
        if len(_CPU_LUTS) > 8:
            _CPU_LUTS.clear()
        _CPU_LUTS[key] = lut
    return lut


_CPU_LUTS: dict[bytes, np.ndarray] = {}


def _quantize_blockwise_cpu(a: np.ndarray, code: np.ndarray, blocksize: int):
    """libbitsandbytes_cpu ``quantize_cpu_impl`` on a flat float32 array: (codes, absmax)."""
    n = a.size
    nb = -(-n // blocksize)
    blocks = np.concatenate([a, np.full(nb * blocksize - n, np.nan, np.float32)]).reshape(nb, blocksize)
    mags = np.abs(blocks)
    # std::max(m, |x|) from m = 0 keeps m for a NaN |x|: NaN never enters absmax
    absmax = np.max(np.where(np.isnan(mags), np.float32(0), mags), axis=1, initial=np.float32(0))
    absmax = absmax.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inv = (np.float32(1) / absmax).astype(np.float32)
        v = (blocks * inv[:, None]).astype(np.float32)
        v = np.where(v < -1, np.float32(-1), np.where(v > 1, np.float32(1), v))  # std::clamp: NaN stays
        t = ((v + np.float32(1)).astype(np.float32) * np.float32(0.5)).astype(np.float32)
        # fma(t, 65535, 0.5), rounded once to float32: t is 0 or a float32 >= 2^-25 (v + 1 is a
        # float32 >= 2^-24), so t * 65535 + 0.5 spans at most 48 bits and is exact in float64
        w = (t.astype(np.float64) * 65535.0 + 0.5).astype(np.float32)
        # cvttss2si: truncation toward zero; NaN gives 0x80000000, whose low 16 bits are 0
        idx = np.where(np.isnan(w), np.float32(0), w).astype(np.int64) & 0xFFFF
    q = _cpu_lut(code)[idx]
    q[absmax == 0] = 0  # an all-zero (or all-NaN) block: the kernel writes zeros
    return q.ravel()[:n], absmax


def _state_code_blocksize(quant_state, maker):
    """``(code, blocksize)`` of a quant state dict, checked."""
    try:
        code, blocksize = quant_state["code"], quant_state["blocksize"]
    except (KeyError, TypeError) as e:
        raise RefquantError(f"quant_state must be the dict from {maker}; missing {e}") from None
    try:
        code = np.asarray(code, np.float32)
    except (TypeError, ValueError):
        raise RefquantError(f"quant_state['code'] must be float values, got {code!r}") from None
    if code.ndim != 1:
        raise RefquantError(f"quant_state['code'] must be 1-D, got shape {code.shape}")
    try:
        bs = operator.index(blocksize)
    except TypeError:
        bs = 0
    if bs <= 0:
        raise RefquantError(f"quant_state['blocksize'] must be a positive integer, got {blocksize!r}")
    return code, bs


def _state_float(state, key):
    try:
        return np.asarray(state[key], np.float32)
    except (KeyError, TypeError, ValueError):
        raise RefquantError(f"quant_state[{key!r}] must be float values, got {state.get(key)!r}") from None


def _state_absmax(state):
    if state.get("nested"):
        am = dequantize_blockwise(state["absmax"], state["state2"]).astype(np.float32)
        with np.errstate(invalid="ignore", over="ignore"):
            return (am + _state_float(state, "offset")).astype(np.float32)
    return _state_float(state, "absmax")


def _to_dtype(x, dtype):
    if dtype is None:
        return x
    try:
        return x.astype(dtype, copy=False)  # x is always a new array here
    except (TypeError, ValueError):
        raise RefquantError(f"quant_state['dtype'] must be a float dtype, got {dtype!r}") from None


def dequantize_4bit(A, quant_state) -> np.ndarray:
    """``code[q] * absmax`` (float32), reshaped to ``quant_state["shape"]`` and cast to its dtype.

    Formula
    -------
    :math:`\\hat A_i = c_{q_i} \\cdot a_{\\lfloor i / B \\rfloor}`; with double quantization
    :math:`a = \\mathrm{dequantize\\_blockwise}(q_a) + \\mathrm{offset}` first.

    Reference
    ---------
    bitsandbytes ``functional.dequantize_4bit``; ``_dequantize_4bit_compute``.
    """
    code, blocksize = _state_code_blocksize(quant_state, "quantize_4bit")
    try:
        shape = tuple(operator.index(d) for d in quant_state["shape"])
    except (TypeError, KeyError):
        raise RefquantError(
            f"quant_state['shape'] must be a tuple of ints, got {quant_state.get('shape')!r}"
        ) from None
    if any(d < 0 for d in shape):
        raise RefquantError(f"quant_state['shape'] must not have negative dims, got {shape}")
    if code.size != 16:
        raise RefquantError(f"quant_state['code'] must hold the 16 4-bit values, got {code.size}")
    n = int(np.prod(shape))
    packed = np.asarray(A)
    if packed.dtype != np.uint8 or packed.size != (n + 1) // 2:
        raise RefquantError(
            f"A must be {(n + 1) // 2} packed uint8 bytes for shape {shape}, got {packed.size} of {packed.dtype}"
        )
    absmax = _state_absmax(quant_state)
    nb = -(-n // blocksize)
    if absmax.size != nb:
        raise RefquantError(f"absmax has {absmax.size} values; {n} elements in blocks of {blocksize} need {nb}")
    if _kernel(n):
        from ..kernels.cpu import codebook as kc

        out = np.empty(n, np.float32)
        kc.dequantize_4bit_packed_into(np.ascontiguousarray(packed).reshape(-1), np.ascontiguousarray(absmax).reshape(-1),
                                       code, blocksize, n, out)
        return _to_dtype(out.reshape(shape), quant_state.get("dtype"))
    q = unpack_nibbles(packed.ravel(), 2 * packed.size, order="high_first")[:n]
    with np.errstate(invalid="ignore", over="ignore"):  # 0 * Inf absmax is NaN, as in bitsandbytes
        out = (code[q] * np.repeat(absmax, blocksize)[:n]).astype(np.float32)
    return _to_dtype(out.reshape(shape), quant_state.get("dtype"))


def quantize_blockwise(A, code=None, absmax=None, out=None, blocksize: int = 4096,
                       nested: bool = False, *, backend: str = "cpu"):
    """8-bit blockwise quantization onto ``code`` (default: the dynamic map).

    bitsandbytes' arguments in its order; ``absmax`` and ``out`` (its output
    buffers) must be None, since refquant returns new arrays.

    ``backend="cpu"`` (default: what bitsandbytes runs on a CPU tensor) is
    libbitsandbytes_cpu's lookup table: every block multiplied by ``float32(1 / absmax)``,
    the result rounded onto a grid of 65,536 points in [-1, 1], and the grid point's
    nearest code taken (module docstring: 0.0 gets code 131, and about 0.15 % of
    values land one code from the nearest); an all-zero block gets codes 0 and absmax
    0; NaN is skipped by absmax and gets code 0. ``backend="default"`` is the
    pure-PyTorch backend: full blocks multiplied by ``float32(1 / absmax)``, the partial
    last block divided, codes by float32 midpoints with ties to the lower value, NaN
    in a block makes its absmax NaN and its codes 255. ``nested`` quantizes
    ``absmax - mean(absmax)`` again with the same block size and backend.

    Returns
    -------
    codes : uint8 array of ``A``'s shape
    quant_state : dict (``absmax``, ``code``, ``blocksize``, ``dtype``, ``nested``, ``offset``, ``state2``)

    Formula
    -------
    :math:`q_i = \\#\\{j : A_i / a_b > (c_j + c_{j+1}) / 2\\}` on the sorted code.

    Reference
    ---------
    bitsandbytes ``functional.quantize_blockwise``; ``backends/cpu/ops.py`` and
    ``csrc/cpu_ops.cpp`` (``quantize_cpu_impl``, ``build_quantize_lut``); ``backends/default/ops.py``.
    """
    _check_backend(backend, ("cpu", "default"))
    _no_buffers(absmax=absmax, out=out)
    if isinstance(blocksize, bool) or not isinstance(blocksize, (int, np.integer)) or blocksize <= 0:
        raise RefquantError(f"blocksize must be a positive integer, got {blocksize!r}")
    blocksize = int(blocksize)
    try:
        c = create_dynamic_map() if code is None else np.asarray(code, np.float32)
    except (TypeError, ValueError):
        raise RefquantError(f"code must be 256 sorted float32 values, got {code!r}") from None
    if c.ndim != 1 or c.size != 256 or np.any(np.diff(c) < 0):
        raise RefquantError(f"code must be 256 sorted float32 values, got shape {c.shape}")
    a, flat = _as_input(A, backend)
    if _kernel(flat.size):
        from ..kernels.cpu import codebook as kc

        q = np.empty(flat.size, np.uint8)
        absmax = np.empty(-(-flat.size // blocksize), np.float32)
        flat = np.ascontiguousarray(flat)
        if backend == "cpu":
            kc.bnb_cpu_lut_into(flat, blocksize, _cpu_lut(c), q, absmax)
        else:
            kc.bnb_default_codes_into(flat, blocksize, ((c[:-1] + c[1:]) / np.float32(2)).astype(np.float32),
                                      q, absmax)
    elif backend == "cpu":
        q, absmax = _quantize_blockwise_cpu(flat, c, blocksize)
    else:
        scaled, absmax = _scale(flat, blocksize, "default")
        q = _bucketize(scaled, ((c[:-1] + c[1:]) / np.float32(2)).astype(np.float32))
    q = q.reshape(a.shape)
    state = {"absmax": absmax, "code": c, "blocksize": blocksize, "dtype": a.dtype, "nested": bool(nested),
             "offset": None, "state2": None}
    if nested:
        offset = _mean32(absmax)
        qabs, state2 = quantize_blockwise(_sub32(absmax, offset), blocksize=blocksize, nested=False,
                                          backend=backend)
        state.update(absmax=qabs, offset=offset, state2=state2)
    return q, state


def dequantize_blockwise(A, quant_state) -> np.ndarray:
    """``code[q] * absmax`` per block (float32), cast to the state's dtype.

    Formula
    -------
    :math:`\\hat A_i = c_{q_i} \\cdot a_{\\lfloor i / B \\rfloor}`.

    Reference
    ---------
    bitsandbytes ``functional.dequantize_blockwise``.
    """
    code, blocksize = _state_code_blocksize(quant_state, "quantize_blockwise")
    q = np.asarray(A)
    if q.dtype != np.uint8:
        raise RefquantError(f"A must be uint8 codes, got dtype {q.dtype}")
    if q.size and int(q.max()) >= code.size:
        raise RefquantError(f"quant_state['code'] has {code.size} values but A holds code {int(q.max())}")
    absmax = _state_absmax(quant_state)
    n = q.size
    nb = -(-n // blocksize)
    if absmax.size != nb:
        raise RefquantError(f"absmax has {absmax.size} values; {n} codes in blocks of {blocksize} need {nb}")
    if _kernel(n):
        from ..kernels.cpu import codebook as kc

        out = np.empty(n, np.float32)
        kc.dequantize_into(np.ascontiguousarray(q).reshape(-1), np.ascontiguousarray(absmax).reshape(-1), code,
                           blocksize, out)
        return _to_dtype(out.reshape(q.shape), quant_state.get("dtype"))
    with np.errstate(invalid="ignore", over="ignore"):
        out = (code[q.ravel()] * np.repeat(absmax, blocksize)[:n]).astype(np.float32).reshape(q.shape)
    return _to_dtype(out, quant_state.get("dtype"))
