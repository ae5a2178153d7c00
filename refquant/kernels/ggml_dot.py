"""llama.cpp's CPU matmul for ggml block-quantized weights: ``matmul_ggml(x, w_raw, type_name)``.

The activations are quantized per block to the weight type's ``vec_dot_type``
(Q8_0 for q4_0 and q8_0, Q8_K for q4_k and q6_k), then each (activation row,
weight row) pair is an integer dot per block, scaled by both blocks' float
scales and summed over the blocks in float32, exactly as the scalar
``ggml_vec_dot_<type>_q8_<0|K>_generic`` of ``libggml-cpu.so`` does. Every
rounding is listed in ``refquant.quant.ggml_dot`` (the NumPy reference); the
Numba kernel (``refquant.kernels.cpu.ggml``) reproduces it bit for bit.
"""

from __future__ import annotations

import numpy as np

from .._errors import RefquantError
from ..formats.ggml import GGML_BLOCK_TABLE
from ..quant import ggml_dot as _ref
from ._backend import resolve_backend

__all__ = ["GGML_MATMUL_TYPES", "matmul_ggml"]

GGML_MATMUL_TYPES = tuple(_ref.GGML_DOT_TYPES)
_THRESHOLD = 1 << 16
_ACT_DTYPES = ("float32", "float16", "bfloat16")


def matmul_ggml(x, w_raw, type_name, *, backend="auto"):
    """``x @ W.T`` as llama.cpp's CPU backend computes it for block-quantized W.

    Parameters
    ----------
    x : (..., K) float32 (float16 / bfloat16 widen exactly)
        Activations; finite (ggml's quantizers have no defined result for NaN / Inf).
    w_raw : uint8 (N, K // block_size * type_size) or (N, K // block_size, type_size)
        The weight rows as ggml stores them (a GGUF tensor's bytes, one row per
        output channel), e.g. ``refquant.formats.ggml`` ``quantize_blocks`` output.
    type_name : {"q4_0", "q8_0", "q4_k", "q6_k"} (case-insensitive)
    backend : {"auto", "numpy", "cpu"}

    Returns
    -------
    float32 (..., N)

    Formula
    -------
    :math:`y_{mn} = \\sum_b s^{w}_{nb}\\, s^{a}_{mb} \\sum_{j \\in b} q^{w}_{nj} q^{a}_{mj}`
    (plus the min term for q4_k), with :math:`q^a` the Q8_0 / Q8_K codes of
    row m of x; float32 arithmetic in ggml's order (see ``refquant.quant.ggml_dot``).

    Reference
    ---------
    ggml ``ggml/src/ggml-cpu/quants.c`` ``ggml_vec_dot_q4_0_q8_0_generic``,
    ``ggml_vec_dot_q8_0_q8_0_generic``, ``ggml_vec_dot_q4_K_q8_K_generic``,
    ``ggml_vec_dot_q6_K_q8_K_generic`` (the FMA contractions of the
    ``libggml-python`` 0.20.2 build included); activation quantization
    ``quantize_row_q8_0_ref`` / ``quantize_row_q8_K_ref``. The SIMD
    ``ggml_vec_dot_*`` and ``quantize_row_q8_0`` of an x86 build sum and round
    ties differently: see the bound in ``refquant.quant.ggml_dot``.
    """
    if not isinstance(type_name, str) or type_name.lower() not in _ref.GGML_DOT_TYPES:
        raise RefquantError(f"type_name must be one of {GGML_MATMUL_TYPES}, got {type_name!r}")
    t = type_name.lower()
    _, bs, ts = GGML_BLOCK_TABLE[t]
    try:
        xa = np.asarray(x)
    except (TypeError, ValueError):
        raise RefquantError("x must be a rectangular float array") from None
    if xa.dtype.name not in _ACT_DTYPES:
        raise RefquantError(
            f"x must be float32, float16 or bfloat16 (ggml's activations are float32), "
            f"got dtype {xa.dtype}"
        )
    if xa.ndim == 0:
        raise RefquantError("x must have at least one dimension (..., K), got a scalar")
    xa = xa.astype(np.float32)
    k = xa.shape[-1]
    if k % bs:
        raise RefquantError(f"K = {k} is not a multiple of the {t} block size {bs}")
    if not np.isfinite(xa).all():
        idx = tuple(int(i) for i in np.argwhere(~np.isfinite(xa))[0])
        raise RefquantError(
            f"x has a non-finite value {xa[idx]} at index {idx}; ggml's activation "
            "quantization has no defined result for NaN / Inf"
        )
    nb = k // bs
    try:
        w = np.asarray(w_raw)
    except (TypeError, ValueError):
        raise RefquantError("w_raw must be a uint8 array of ggml blocks") from None
    if w.dtype != np.uint8:
        raise RefquantError(f"w_raw must be uint8 bytes, got dtype {w.dtype}")
    if w.ndim == 2 and w.shape[1] == nb * ts:
        w = w.reshape(w.shape[0], nb, ts)
    elif not (w.ndim == 3 and w.shape[1:] == (nb, ts)):
        raise RefquantError(
            f"w_raw of shape {w.shape} does not hold rows of K = {k} {t} weights: expected "
            f"(N, {nb * ts}) or (N, {nb}, {ts}) ({nb} blocks of {ts} bytes per row)"
        )
    w = np.ascontiguousarray(w)
    lead = xa.shape[:-1]
    x2 = np.ascontiguousarray(xa.reshape(int(np.prod(lead, dtype=np.int64)), k))
    m, n = x2.shape[0], w.shape[0]
    be = resolve_backend(backend, m * n * k, threshold=_THRESHOLD, cuda=False)
    if m == 0 or n == 0 or k == 0:
        y = np.zeros((m, n), np.float32)
    elif be == "numpy":
        y = _ref.matmul_ggml(x2, w, t)
    else:
        y = _cpu_matmul(x2, w, t)
    return y.reshape(lead + (n,))


def _cpu_matmul(x2, w, t):
    """Split the blocks into the plain arrays the Numba kernels take, and call one."""
    from .cpu import ggml as _cpu

    a = _ref.quantize_activations(x2, t)

    def c(v):
        return np.ascontiguousarray(v)

    if t in ("q4_0", "q8_0"):
        da = c(_ref._fp16(a[..., 0:2]))
        qa = c(a[..., 2:34]).view(np.int8)
        dw = c(_ref._fp16(w[..., 0:2]))
        if t == "q4_0":
            return _cpu.matmul_q4_0(c(w[..., 2:18]), dw, qa, da)
        return _cpu.matmul_q8_0(c(w[..., 2:34]).view(np.int8), dw, qa, da)
    da = c(_ref._f32le(a[..., 0:4]))
    qa = c(a[..., 4:260]).view(np.int8)
    bsums = c(a[..., 260:292]).view("<i2").astype(np.int16)
    dw = _ref._fp16(w[..., 0:2]) if t == "q4_k" else _ref._fp16(w[..., 208:210])
    dminw = _ref._fp16(w[..., 2:4]) if t == "q4_k" else np.zeros_like(dw)
    return _cpu.matmul_k(w, c(dw), c(dminw), qa, da, bsums, t == "q4_k")


def _warmup() -> None:
    """Compile (or load from the disk cache) the ggml block-dot kernels."""
    from ..formats.ggml import ggml_block_formats

    for t in GGML_MATMUL_TYPES:
        bs = GGML_BLOCK_TABLE[t][1]
        w = ggml_block_formats()[t].quantize_blocks(np.ones((1, bs), np.float32))
        matmul_ggml(np.ones((1, bs), np.float32), w, t, backend="cpu")
