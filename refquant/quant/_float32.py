"""Float32 arithmetic evaluated the way a peer's compiled code does, in NumPy.

Bit-exact emulation of peers sometimes depends on *how* a float32 expression
is evaluated: contracted into a fused multiply-add, or summed in a particular
cascade. These helpers spell that out; the formulas that use them say where.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fma_f32", "torch_linspace_f32", "torch_sum_f32"]

_F = np.float32

# PyTorch evaluates the HistogramObserver in float32 tensor ops. These helpers
# reproduce the few places where the result depends on *how* torch evaluates:


def fma_f32(a, b, c):
    """Correctly rounded float32 ``fma(a, b, c)`` of float32 inputs, in NumPy.

    ``a * b`` is exact in float64 (24 + 24 bits); the sum with ``c`` is computed
    with TwoSum (``s + e`` exactly), rounded to odd at float64 precision (if
    ``e != 0`` and ``s`` is even, step one ulp toward ``e``), then rounded once
    to float32. Round-to-odd at 53 bits followed by rounding to 24 bits equals
    a single correct rounding (Boldo & Melquiond, "Emulation of FMA and
    correctly rounded sums: proved algorithms using rounding to odd", 2008).
    """
    a = np.asarray(a, dtype=np.float32).astype(np.float64)
    b = np.asarray(b, dtype=np.float32).astype(np.float64)
    c = np.asarray(c, dtype=np.float32).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        p = a * b
        s = p + c
        bb = s - p
        e = (p - (s - bb)) + (c - bb)
        fin = np.isfinite(s) & np.isfinite(e)
        even = (np.asarray(s).view(np.int64) & 1) == 0
        step = fin & (e != 0) & even
        s = np.where(step, np.nextafter(s, np.where(e > 0, np.inf, -np.inf)), s)
    return np.asarray(s).astype(np.float32)


def torch_linspace_f32(start, end, steps):
    """``torch.linspace(start, end, steps)`` on float32 CPU tensors, bit for bit.

    ATen's ``linspace_kernel`` (aten/src/ATen/native/cpu/RangeFactoriesKernel.cpp)
    computes ``step = (end - start) / (steps - 1)`` in float32, then
    ``start + step * i`` for ``i < steps // 2`` and ``end - step * (steps - i - 1)``
    above. The x86 build contracts both into a fused multiply-add (measured:
    the plain two-rounding formula differs in about a third of the elements).
    """
    s0, s1 = _F(start), _F(end)
    if steps == 1:
        return np.array([s0], dtype=np.float32)
    step = _F(_F(s1 - s0) / _F(steps - 1))
    idx = np.arange(steps)
    low = fma_f32(step, idx.astype(np.float32), s0)
    high = fma_f32(-step, (steps - idx - 1).astype(np.float32), s1)
    return np.where(idx < steps // 2, low, high).astype(np.float32)


def _ceil_log2(n):
    return 0 if n <= 1 else int(n - 1).bit_length()


def _multi_row_sum(rows):
    # aten/src/ATen/native/cpu/SumKernel.cpp multi_row_sum: 4 cascade levels
    size = rows.shape[0]
    lp = max(4, _ceil_log2(size) // 4)
    step, mask = 1 << lp, (1 << lp) - 1
    acc = np.zeros((4,) + rows.shape[1:], dtype=np.float32)
    i = 0
    while i + step <= size:
        for _ in range(step):
            acc[0] = acc[0] + rows[i]
            i += 1
        for j in range(1, 4):
            acc[j] = acc[j] + acc[j - 1]
            acc[j - 1] = 0
            if i & (mask << (j * lp)):
                break
    while i < size:
        acc[0] = acc[0] + rows[i]
        i += 1
    for j in range(1, 4):
        acc[0] = acc[0] + acc[j]
    return acc[0]


def torch_sum_f32(x, width=8):
    """``torch.sum`` of a contiguous float32 vector on CPU (fewer than 32768 elements).

    ATen's cascade sum (SumKernel.cpp ``vectorized_inner_sum`` → ``row_sum`` →
    ``multi_row_sum``): 8-lane float32 vectors (the reduction kernels run at
    AVX2 width), four interleaved accumulators, cascade levels of
    ``2^max(4, ceil(log2 n)/4)`` rows, then the scalar tail and the lanes added
    in order. Larger inputs are split across threads by ATen and are not
    emulated (the observers only sum 2048-bin histograms).
    """
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    n = x.size
    if n < width:
        k = n // 4
        ps = _multi_row_sum(x[: k * 4].reshape(k, 4)) if k else np.zeros(4, np.float32)
        ps = ps.copy()
        for i in range(k * 4, n):
            ps[0] = _F(ps[0] + x[i])
        for j in range(1, 4):
            ps[0] = _F(ps[0] + ps[j])
        return _F(ps[0])
    nv = n // width
    vecs = x[: nv * width].reshape(nv, width)
    k = nv // 4
    ps = _multi_row_sum(vecs[: k * 4].reshape(k, 4, width)) if k else np.zeros((4, width), _F)
    ps = ps.copy()
    for i in range(k * 4, nv):
        ps[0] = ps[0] + vecs[i]
    for j in range(1, 4):
        ps[0] = ps[0] + ps[j]
    f = _F(0)
    for i in range(nv * width, n):
        f = _F(f + x[i])
    for lane in ps[0]:
        f = _F(f + lane)
    return f
