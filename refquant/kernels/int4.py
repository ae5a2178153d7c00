"""int4 weight-only matmul (W4A16 / W4A32): float activations times packed 4-bit weights.

``matmul_int4(x, w_packed, scales, zero_points, group_size=..., layout=...)``
computes ``x @ W.T`` with ``W[n, k] = (q[n, k] - z[n, g]) * s[n, g]``,
``g = k // group_size``: codes ``q`` in 0..15, one scale and one zero point
per group of ``group_size`` consecutive weights along K of each output row.
The NumPy reference and its fixed float32 summation order are in
``refquant.quant.weight_only``; the Numba kernel (``refquant.kernels.cpu.int4``)
reproduces it bit for bit (no ULP bound needed: the same roundings in the same
order, checked by the tests on every path).

Layouts (``layout=``), all written by ``refquant.kernels.packing``; each row
is an output channel n, K is the packed axis::

    "nibbles"            uint8 (N, ceil(K/2)): pack_nibbles(q) - byte j holds
                         q[2j] in bits 0-3 and q[2j+1] in bits 4-7 (ONNX int4,
                         ggml); an odd K leaves a zero high nibble.
    "nibbles_high_first" uint8 (N, ceil(K/2)): pack_nibbles(q, order="high_first")
                         (bitsandbytes' order: q[2j] in bits 4-7).
    "int32"              int32 (N, ceil(K/8)): pack(q, 4, word="uint32").view(int32)
                         or compressed-tensors' pack_int4_to_int32(q - 8): eight
                         codes per word, q[8j] in bits 0-3 (as little-endian
                         bytes this *is* the "nibbles" layout).
    "int32_gptq"         int32 (ceil(K/8), N): the same words packed along K on
                         axis 0, one column per output channel (GPTQ / AutoGPTQ
                         ``qweight``: pack(q.T, 4, axis=0, word="uint32")).
    "codes"              uint8 (N, K) holding 0..15, unpacked.

What the kernels read: ``"nibbles"`` (N, ceil(K/2)) uint8, low nibble first;
every other layout is converted to it first (``"int32"`` by a byte view, no
copy; ``"int32_gptq"`` and ``"nibbles_high_first"`` by a repack, one pass over
the weights). A CUDA kernel reading the same bytes gets the same codes.

Zero points: ``zero_points=None`` means 8 for every group (symmetric int4
stored with a +8 offset, as compressed-tensors' ``pack_to_int32`` and GPTQ's
``sym=True`` store it). GPTQ checkpoints' ``qzeros`` (v1 format, z - 1) and
AWQ's are converted by the reader, not here; torchao's ``(q - 8) * s + zero``
form is ``z = 8 - zero / s`` (not exact in floating point: convert knowingly).
"""

from __future__ import annotations

import operator

import numpy as np

from .._errors import RefquantError
from ..quant import weight_only as _ref
from ._backend import resolve_backend
from .packing import pack_nibbles, unpack

__all__ = ["INT4_LAYOUTS", "matmul_int4"]

INT4_LAYOUTS = ("nibbles", "nibbles_high_first", "int32", "int32_gptq", "codes")
_THRESHOLD = 1 << 15
_ACT_DTYPES = ("float32", "float16", "bfloat16")


def _activations(x):
    try:
        a = np.asarray(x)
    except (TypeError, ValueError):
        raise RefquantError("x must be a rectangular float array") from None
    if a.dtype.name not in _ACT_DTYPES:
        raise RefquantError(
            f"x must be float32, float16 or bfloat16 (W4A32 / W4A16), got dtype {a.dtype}; "
            "cast float64 to float32 yourself (that rounds)"
        )
    if a.ndim == 0:
        raise RefquantError("x must have at least one dimension (..., K), got a scalar")
    return a.astype(np.float32)  # exact widening; a copy, C-contiguous


def _canonical(w_packed, layout, k):
    """(N, ceil(K/2)) uint8 nibbles, low first, padding nibble checked zero."""
    if not isinstance(layout, str) or layout not in INT4_LAYOUTS:
        raise RefquantError(f"layout must be one of {INT4_LAYOUTS}, got {layout!r}")
    try:
        w = np.asarray(w_packed)
    except (TypeError, ValueError):
        raise RefquantError("w_packed must be an array") from None
    if w.ndim != 2:
        raise RefquantError(f"w_packed must be 2-D, got shape {w.shape}")
    want_dtype = {"nibbles": np.uint8, "nibbles_high_first": np.uint8, "int32": np.int32,
                  "int32_gptq": np.int32, "codes": np.uint8}[layout]
    if w.dtype != want_dtype and not (layout.startswith("int32") and w.dtype == np.uint32):
        raise RefquantError(
            f"w_packed for layout {layout!r} must be {np.dtype(want_dtype).name}, got {w.dtype}"
        )
    if layout == "int32_gptq":
        w = np.ascontiguousarray(w.T)
    n = w.shape[0]
    per = {"nibbles": 2, "nibbles_high_first": 2, "int32": 8, "int32_gptq": 8, "codes": 1}[layout]
    need = -(-k // per)
    if w.shape[1] != need:
        axis_txt = "rows" if layout == "int32_gptq" else "columns"
        raise RefquantError(
            f"w_packed ({layout!r}) has {w.shape[1]} {axis_txt} along K; K = {k} from x "
            f"needs {need}"
        )
    if layout == "codes":
        if w.size and int(w.max()) > 15:
            raise RefquantError(f"codes must be in 0..15, got {int(w.max())}")
        return pack_nibbles(w), n
    if layout == "nibbles_high_first":
        codes = unpack(w, 4, order="high_first")
        if k % 2 and codes[:, -1].any():
            raise RefquantError(f"w_packed has a nonzero padding nibble after K = {k}")
        return pack_nibbles(codes[:, :k]), n
    w = np.ascontiguousarray(w)
    b = w.astype(w.dtype.newbyteorder("<"), copy=False).view(np.uint8).reshape(n, -1)
    nb = -(-k // 2)
    if b.shape[1] > nb and b[:, nb:].any():
        raise RefquantError(f"w_packed has nonzero padding nibbles after K = {k}")
    if k % 2 and (b[:, nb - 1] >> 4).any():
        raise RefquantError(f"w_packed has a nonzero padding nibble after K = {k}")
    return np.ascontiguousarray(b[:, :nb]), n


_PATHS = ("avx512", "portable")


def _path(path):
    from .cpu._features import forced_path, has_feature

    p = path
    if p is None:
        env = forced_path()
        p = env if env in _PATHS else None
    if p is None:
        return "avx512" if has_feature("avx512f") else "portable"
    if p not in _PATHS:
        raise RefquantError(f"path must be one of {_PATHS} (or None), got {p!r}")
    if p == "avx512" and not has_feature("avx512f"):
        raise RefquantError("path='avx512' needs a CPU with AVX-512F; use 'portable'")
    return p


def _group_params(v, name, n, groups, default):
    if v is None:
        return np.full((n, groups), default, np.float32)
    try:
        a = np.asarray(v)
    except (TypeError, ValueError):
        raise RefquantError(f"{name} must be a real array") from None
    if a.dtype.kind not in "fiu" and a.dtype.name != "bfloat16":
        raise RefquantError(f"{name} must be real, got dtype {a.dtype}")
    if a.shape != (n, groups):
        raise RefquantError(
            f"{name} must have shape (N, K // group_size) = {(n, groups)}, got {a.shape}"
        )
    return np.ascontiguousarray(a.astype(np.float32))


def matmul_int4(x, w_packed, scales, zero_points=None, *, group_size, layout="nibbles",
                backend="auto", path=None):
    """Weight-only int4 matmul: ``x @ ((q - z) * s).T`` in float32.

    Parameters
    ----------
    x : (..., K) float32, float16 or bfloat16
        Activations (widened to float32 exactly).
    w_packed : packed 4-bit codes 0..15 of W (N, K) in ``layout`` (see the module docstring).
    scales : (N, K // group_size) float
        One scale per group (float16 / bfloat16 widen exactly; float64 rounds
        to float32, nearest even).
    zero_points : (N, K // group_size) float or integer, or None (8)
        The float zero point ``z`` of ``w = (q - z) * s``.
    group_size : int
        Weights per group along K; must divide K (K itself for per-channel).
    layout : str
    backend : {"auto", "numpy", "cpu"}
    path : {"avx512", "portable"} or None
        The CPU kernel's implementation: ``"avx512"`` (AVX-512F; a 16-entry
        weight table per group looked up with ``vpermps``, four output rows at a
        time; used when ``group_size % 32 == 0``, else ``"portable"`` serves the call) or ``"portable"`` (plain LLVM vectors, any CPU). None:
        ``REFQUANT_CPU_PATH`` if it names one of these, else ``"avx512"`` where the
        CPU has it. Both give the reference's bits.

    Returns
    -------
    float32 (..., N)

    Formula
    -------
    :math:`y_{mn} = \\sum_k x_{mk}\\,(q_{nk} - z_{n,g(k)})\\,s_{n,g(k)}`, summed in
    float32 in 16 lanes (lane :math:`k \\bmod 16`) reduced by a fixed tree:
    see ``refquant.quant.weight_only`` for every rounding.

    Reference
    ---------
    GPTQ (Frantar et al., 2023) and AWQ (Lin et al., 2024) group-wise
    dequantization ``(q - z) * s``; compressed-tensors ``pack-quantized``
    (``pack_to_int32``); torchao ``Int4WeightOnlyConfig`` /
    ``aten._weight_int4pack_mm_for_cpu`` for the shape of the computation
    (float activations, int4 weights, per-group scales, float accumulation).
    """
    xa = _activations(x)
    k = xa.shape[-1]
    try:
        gs = operator.index(group_size)
    except TypeError:
        raise RefquantError(f"group_size must be an integer, got {group_size!r}") from None
    if gs < 1 or k % gs:
        raise RefquantError(
            f"group_size {gs} does not divide K = {k} (groups must tile K exactly)"
        )
    packed, n = _canonical(w_packed, layout, k)
    groups = k // gs
    s = _group_params(scales, "scales", n, groups, 1.0)
    z = _group_params(zero_points, "zero_points", n, groups, 8.0)
    p = _path(path)
    lead = xa.shape[:-1]
    x2 = np.ascontiguousarray(xa.reshape(int(np.prod(lead, dtype=np.int64)), k))
    m = x2.shape[0]
    be = resolve_backend(backend, m * n * k, threshold=_THRESHOLD, cuda=True)
    if be == "numpy" or m == 0 or n == 0 or k == 0:
        codes = unpack(packed, 4, k) if k else np.zeros((n, 0), np.uint8)
        y = _ref.matmul_int4(x2, codes, s, z, gs)
    elif be == "cuda":
        # numba.cuda sums each output in ascending k (one float32 multiply and add per
        # term, never fused), not in the reference's 16-lane tree: within
        # gamma_(K+2) * sum |x| |w| of the exact result, not bit-identical to "numpy"
        from .cuda import matmul_int4 as _cuda_int4

        codes = np.ascontiguousarray(unpack(packed, 4, k), np.uint8)
        y = _cuda_int4(x2, codes, np.ascontiguousarray(s, np.float32),
                       np.ascontiguousarray(z, np.float32), gs)
    else:
        from .cpu import int4 as _cpu

        if p == "avx512" and gs % 32 == 0:
            y = _cpu.matmul_int4_avx512(x2, packed, s, z, np.int64(gs))
        else:
            y = _cpu.matmul_int4(x2, packed, s, z, np.int64(gs))
    return y.reshape(lead + (n,))


def _warmup() -> None:
    """Compile (or load from the disk cache) the int4 kernel's specialisations."""
    w = np.zeros((2, 16), np.uint8)
    for m in (1, 5):  # the fused (M <= 4) and buffered paths share one compiled function
        matmul_int4(np.ones((m, 32), np.float32), w, np.ones((2, 2), np.float32),
                    group_size=16, backend="cpu")
