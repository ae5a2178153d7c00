"""Integer matmul at real sizes: exact int8 GEMM and its fused requantization.

These functions reproduce :func:`refquant.quant.integer.integer_matmul` and
``requantize(integer_matmul(...) + bias, ...)`` bit for bit; they validate,
pick a backend (``refquant.kernels._backend``), and run either the NumPy
reference or the Numba kernels of :mod:`refquant.kernels.cpu.int8` (AMX, AVX-512
VNNI, AVX-VNNI or portable loops, chosen from the CPU's features; imported,
and compiled or loaded from Numba's disk cache, on the first call that needs
it; never at import).

How the kernel reaches the same integers as the reference: it multiplies
unsigned by signed bytes with VNNI ``vpdpbusd`` and expands the zero points::

    sum_k (a - za)(b - zb) = sum_k a b  -  zb * sum_k a  -  za * sum_k b  +  K za zb

computing the row sums of ``a`` and the column sums of ``b`` while it packs the
operands into ``vpdpbusd`` / ``tdpbusd`` panels (a signed ``a`` and an unsigned ``b`` are first shifted by 128, which
moves the offset into the zero points). Its int32 arithmetic wraps; the result
is exact because every case whose true accumulator could leave int32 is refused
up front (or computed exactly in int64 with ``accumulate="int64"``).
"""

from __future__ import annotations

import numpy as np

from .._errors import RefquantError
from ..formats.integer import int_format
from ..quant.integer import (
    INT32_MAX,
    INT32_MIN,
    int32_accumulation_fits,
    integer_matmul,
    max_int32_depth,
    quantize_multiplier,
    requantize,
)
from ._backend import resolve_backend

__all__ = ["matmul_int", "matmul_int_requant", "warmup", "CPU_THRESHOLD"]

# multiply-adds from which backend="auto" runs the Numba kernel (below, the call
# and packing overhead is larger than the float64 BLAS route of the reference)
CPU_THRESHOLD = 2 * 128**3

_DTYPES = (np.dtype(np.uint8), np.dtype(np.int8))


def _operand(x, name):
    a = np.asarray(x)
    if a.dtype not in _DTYPES:
        raise RefquantError(f"{name} must be a uint8 or int8 array, got dtype {a.dtype}")
    if a.ndim == 0:
        raise RefquantError(f"{name} must have at least one dimension, got a scalar")
    return a


def _zero_points(zp, n, name, what):
    z = np.asarray(zp)
    if z.dtype.kind not in "iu" or z.dtype.kind == "b":
        if z.dtype.kind == "f" and np.all(np.isfinite(z)) and np.all(z == np.round(z)):
            z = z.astype(np.int64)
        else:
            raise RefquantError(f"{name} must be integers, got {zp!r} (dtype {z.dtype})")
    z = z.astype(np.int64)
    if z.ndim == 0 or z.shape == (1,):
        z = np.full(n, z.reshape(()), np.int64)
    elif z.shape != (n,):
        raise RefquantError(f"{name} has shape {z.shape}; expected a scalar or one value per "
                            f"{what} ({n},)")
    return z


def _fits(k, adt, bdt, za, zb, bias_range=(0, 0)):
    """Whether every partial sum (+ bias) fits int32 for every pair of zero points."""
    zas = {int(za.min()), int(za.max())} if za.size else {0}
    zbs = {int(zb.min()), int(zb.max())} if zb.size else {0}
    # the worst case is bilinear in (za, zb): its extremes sit at the extreme zero points
    return all(int32_accumulation_fits(k, np.dtype(adt).name, np.dtype(bdt).name, x, y,
                                       bias_range) for x in zas for y in zbs)


def _prepare(a, b, a_zero_point, b_zero_point):
    """Validated operands: 2-D-or-batched a, b; zero points as int64 (M,), (N,); shapes."""
    a = _operand(a, "a")
    b = _operand(b, "b")
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    k = a2.shape[-1]
    if b2.shape[-2] != k:
        raise RefquantError(f"inner dimensions differ: a has shape {a.shape} (K={k}), "
                            f"b has shape {b.shape} (K={b2.shape[-2]})")
    try:
        batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    except ValueError:
        raise RefquantError(f"batch dimensions do not broadcast: a has shape {a.shape}, "
                            f"b has shape {b.shape}") from None
    m, n = a2.shape[-2], b2.shape[-1]
    za = _zero_points(a_zero_point, m, "a_zero_point", "row of a")
    zb = _zero_points(b_zero_point, n, "b_zero_point", "column of b")
    return a, b, a2, b2, za, zb, batch, m, k, n


def _result_shape(a, b, batch, m, n):
    """``np.matmul``'s output shape (1-D operands lose their dimension)."""
    shape = tuple(batch)
    if a.ndim > 1:
        shape += (m,)
    if b.ndim > 1:
        shape += (n,)
    return shape


def _check_fits(k, a, b, za, zb, bias_range=(0, 0)):
    if not _fits(k, a.dtype, b.dtype, za, zb, bias_range):
        depth = min(max_int32_depth(a.dtype.name, b.dtype.name, int(x), int(y))
                    for x in (za.min(), za.max()) for y in (zb.min(), zb.max()))
        extra = f" and bias in [{bias_range[0]}, {bias_range[1]}]" if bias_range != (0, 0) else ""
        raise RefquantError(
            f"K={k} is too deep for an int32 accumulator with {a.dtype.name} x {b.dtype.name}, "
            f"zero points a in [{int(za.min())}, {int(za.max())}], b in [{int(zb.min())}, "
            f"{int(zb.max())}]{extra}: a partial sum may leave int32 (the deepest safe K is "
            f"{depth}); use accumulate='int64' for the exact result"
        )


def _cpu_loop(fn, a2, b2, za, zb, batch, m, n, out_dtype):
    """Run the 2-D kernel ``fn(a2d, b2d, za, zb) -> (M, N)`` over the batch dimensions."""
    nb = int(np.prod(batch)) if batch else 1
    out = np.empty((nb, m, n), out_dtype)
    if b2.ndim == 2 and m > 0:
        # one weight matrix: fold the batch into rows (B is packed once)
        a_flat = np.ascontiguousarray(np.broadcast_to(a2, tuple(batch) + (m, a2.shape[-1]))
                                      ).reshape(nb * m, -1)
        res = fn(a_flat, np.ascontiguousarray(b2), np.tile(za, nb), zb)
        return res.reshape(tuple(batch) + (m, n))
    ab = np.broadcast_to(a2, tuple(batch) + a2.shape[-2:]).reshape((nb,) + a2.shape[-2:])
    bb = np.broadcast_to(b2, tuple(batch) + b2.shape[-2:]).reshape((nb,) + b2.shape[-2:])
    for i in range(nb):
        out[i] = fn(np.ascontiguousarray(ab[i]), np.ascontiguousarray(bb[i]), za, zb)
    return out.reshape(tuple(batch) + (m, n))


def _kernel_module(backend):
    if backend == "cuda":
        try:
            from .cuda import int8 as mod  # noqa: PLC0415 - numba.cuda only when asked for
        except ImportError as exc:
            raise RefquantError(f"backend='cuda': the CUDA int8 kernel is not available ({exc})"
                                ) from None
        return mod
    from .cpu import int8 as mod  # noqa: PLC0415 - Numba imported on first use only

    return mod


def _cpu_path(mod, path):
    try:
        return mod.default_path(path)
    except ValueError as exc:
        raise RefquantError(f"cpu_path: {exc} (REFQUANT_CPU_PATH or cpu_path=)") from None


def matmul_int(a, b, a_zero_point=0, b_zero_point=0, *, accumulate="int32", backend="auto",
               cpu_path=None) -> np.ndarray:
    """Exact integer matmul of 8-bit operands with zero points: ``(a - z_a) @ (b - z_b)``.

    Parameters
    ----------
    a : array of uint8 or int8, shape (..., M, K) or (K,)
        Activations. Non-contiguous arrays are accepted and copied.
    b : array of uint8 or int8, shape (K, N), (..., K, N) or (K,)
        Weights; batch dimensions broadcast as in ``np.matmul``.
    a_zero_point : int or array of shape (M,)
        Per tensor or per row of ``a`` (any integers, as in the reference; the
        int32 check below bounds them).
    b_zero_point : int or array of shape (N,)
        Per tensor or per column of ``b``.
    accumulate : {"int32", "int64"}
        ``"int32"``: an int32 result; shapes and zero points whose int32
        accumulation could overflow (:func:`~refquant.quant.integer.int32_accumulation_fits`,
        checked for the extreme zero points before anything runs) raise
        :class:`RefquantError`. ``"int64"``: the exact result as int64 for any
        depth (the reference serves what int32 cannot hold).
    backend : {"auto", "numpy", "cpu", "cuda"}
        See :mod:`refquant.kernels._backend`; ``"auto"`` runs the Numba kernel
        from :data:`CPU_THRESHOLD` multiply-adds on.
    cpu_path : {None, "amx", "avx512vnni", "avxvnni", "portable"}
        Force an implementation of the CPU kernel (default: ``REFQUANT_CPU_PATH``,
        else the fastest the CPU runs: AMX, then AVX-512 VNNI, AVX-VNNI, plain
        loops); a path the CPU cannot run raises. Every path gives the same bits.
        Whatever the path, ``M <= 4`` rows run a kernel that streams ``b`` unpacked.

    Returns
    -------
    numpy.ndarray of int32 (or int64), the shape of ``np.matmul(a, b)``.

    Formula
    -------
    :math:`c_{mn} = \\sum_k (a_{mk} - z_{a,m})(b_{kn} - z_{b,n})`, exact: nothing
    rounds or saturates. The kernel computes :math:`\\sum_k a'_{mk} b'_{kn}` with
    :math:`a' \\in [0, 255]`, :math:`b' \\in [-128, 127]` and adds
    :math:`-z'_{b,n} \\sum_k a'_{mk} - z'_{a,m} \\sum_k b'_{kn} + K z'_{a,m} z'_{b,n}`.

    Reference
    ---------
    :func:`refquant.quant.integer.integer_matmul` (``accumulate="int32_checked"``
    gives the same integers); ONNX MatMulInteger-10; Intel's ``VPDPBUSD``.
    """
    if accumulate not in ("int32", "int64"):
        raise RefquantError(f"accumulate must be 'int32' or 'int64'; got {accumulate!r}")
    a, b, a2, b2, za, zb, batch, m, k, n = _prepare(a, b, a_zero_point, b_zero_point)
    shape = _result_shape(a, b, batch, m, n)
    fits = _fits(k, a.dtype, b.dtype, za, zb)
    if not fits and accumulate == "int32":
        _check_fits(k, a, b, za, zb)
    nb = int(np.prod(batch)) if batch else 1
    which = resolve_backend(backend, nb * m * n * k, threshold=CPU_THRESHOLD)
    out_dtype = np.int32 if accumulate == "int32" else np.int64
    if which == "numpy" or not fits or m * n == 0:
        zra = za if np.unique(za).size > 1 else (za[:1].reshape(()) if m else 0)
        zrb = zb if np.unique(zb).size > 1 else (zb[:1].reshape(()) if n else 0)
        return integer_matmul(a, b, zra, zrb).astype(out_dtype).reshape(shape)
    mod = _kernel_module(which)
    if which == "cpu":
        path = _cpu_path(mod, cpu_path)

        def fn(x, y, p, q):
            return mod.matmul_int(x, y, p.astype(np.int32), q.astype(np.int32), path=path)
    else:
        def fn(x, y, p, q):
            return mod.matmul_int(x, y, p.astype(np.int32), q.astype(np.int32))
    res = _cpu_loop(fn, a2, b2, za, zb, batch, m, n, np.int32)
    return res.astype(out_dtype, copy=False).reshape(shape)


_MODES = {"fixed_point": {False: 1, True: 2}, "float": {"float32": 3, "float64": 4}}


def matmul_int_requant(a, b, bias, multiplier, out_zero_point=0, *, a_zero_point=0,
                       b_zero_point=0, dtype="int8", method="fixed_point",
                       single_rounding=False, rounding="half_even", precision="float32",
                       activation_min=None, activation_max=None, backend="auto",
                       cpu_path=None) -> np.ndarray:
    """Integer matmul, bias, requantization and saturation in one pass.

    Parameters
    ----------
    a, b, a_zero_point, b_zero_point, backend, cpu_path
        As in :func:`matmul_int` (the accumulation must fit int32).
    bias : None, int or array of int of shape (N,)
        int32 bias per output column (``quantize_bias`` makes one).
    multiplier : float or array of shape (N,)
        Real multiplier :math:`M = s_a s_b / s_y` (> 0), per tensor or per column.
    out_zero_point : int
        Output zero point, inside the range of ``dtype``.
    dtype, method, single_rounding, rounding, precision, activation_min, activation_max
        As in :func:`refquant.quant.integer.requantize`: ``method="fixed_point"``
        is TFLite's ``QuantizeMultiplier`` + ``MultiplyByQuantizedMultiplier``
        (gemmlowp's double rounding, or ``single_rounding=True`` for
        TFLITE_SINGLE_ROUNDING, :mod:`refquant.compat.tflite`'s two variants);
        ``method="float"`` multiplies in ``precision`` and rounds with ``rounding``
        (onnxruntime: float32, half to even).

    Returns
    -------
    numpy.ndarray of ``dtype``'s storage type, the shape of ``np.matmul(a, b)``.

    Formula
    -------
    :math:`y = \\mathrm{clamp}(z_y + \\mathrm{round}(M_n (\\mathrm{acc}_{mn} + \\beta_n)),
    lo, hi)` with :math:`\\mathrm{acc}` the exact :func:`matmul_int`; the zero
    point is added after rounding, then saturated. The kernel fuses all of it
    (fixed point in int64, float in the stated precision with ``rint``); float
    roundings other than half to even run the kernel's int32 accumulators through
    the reference ``requantize``.

    Reference
    ---------
    ``requantize(integer_matmul(a, b, za, zb) + bias, multiplier, out_zero_point, ...)``
    of :mod:`refquant.quant.integer`; TFLite ``FullyConnectedPerChannel``
    (``reference/integer_ops/fully_connected.h``); onnxruntime ``MlasRequantizeOutput``.
    """
    a, b, a2, b2, za, zb, batch, m, k, n = _prepare(a, b, a_zero_point, b_zero_point)
    shape = _result_shape(a, b, batch, m, n)
    fmt = int_format(dtype)
    if bias is None:
        bias64 = np.zeros(n, np.int64)
    else:
        bz = np.asarray(bias)
        if bz.dtype.kind not in "iu":
            raise RefquantError(f"bias must be an integer (int32) array, got dtype {bz.dtype}")
        if bz.ndim > 1 or (bz.ndim == 1 and bz.shape[0] not in (1, n)):
            raise RefquantError(f"bias has shape {bz.shape}; expected a scalar or ({n},)")
        bias64 = np.broadcast_to(bz.astype(np.int64).reshape(-1), (n,)).copy()
        if bias64.size and (bias64.min() < INT32_MIN or bias64.max() > INT32_MAX):
            raise RefquantError(f"bias must lie in int32; got {int(np.abs(bias64).max())}")
    mult = np.asarray(multiplier)
    if mult.dtype.kind not in "fiu":
        raise RefquantError(f"multiplier must be real numbers, got dtype {mult.dtype}")
    if mult.ndim > 1 or (mult.ndim == 1 and mult.shape[0] not in (1, n)):
        raise RefquantError(f"multiplier has shape {mult.shape}; expected a scalar or ({n},)")
    per_col = mult.ndim == 1 and mult.shape[0] == n and n != 1
    brange = (min(0, int(bias64.min())), max(0, int(bias64.max()))) if n else (0, 0)
    _check_fits(k, a, b, za, zb, brange)

    def reference(acc):
        return requantize(acc, multiplier if per_col else mult.reshape(()), out_zero_point,
                          dtype=fmt, axis=-1 if per_col else None, method=method,
                          single_rounding=single_rounding, rounding=rounding,
                          precision=precision, activation_min=activation_min,
                          activation_max=activation_max)

    nb = int(np.prod(batch)) if batch else 1
    which = resolve_backend(backend, nb * m * n * k, threshold=CPU_THRESHOLD)
    if which in ("numpy", "cuda") or m * n == 0:
        acc = matmul_int(a, b, a_zero_point if m else 0, b_zero_point if n else 0,
                         accumulate="int64", backend="numpy" if m * n == 0 else which)
        return reference(acc.astype(np.int64) + (bias64 if b.ndim > 1 else bias64[0]))
    # validate what requantize validates, then hand the kernel plain numbers
    probe = reference(np.zeros((1, n) if per_col else (1,), np.int64))  # raises on bad input
    del probe
    mcol = np.broadcast_to(mult.astype(np.float64).reshape(-1), (n,))
    lo = fmt.qmin if activation_min is None else max(fmt.qmin, int(activation_min))
    hi = fmt.qmax if activation_max is None else min(fmt.qmax, int(activation_max))
    z = int(out_zero_point)
    fused = fmt.storage_dtype in (np.dtype(t) for t in (np.int8, np.uint8, np.int16,
                                                          np.uint16, np.int32))
    mode = 0
    qm = sh = np.zeros(n, np.int64)
    fm = mcol.copy()
    if method == "fixed_point":
        qm, sh = quantize_multiplier(mcol.copy(), single_rounding=single_rounding)
        qm, sh = np.asarray(qm, np.int64).reshape(n), np.asarray(sh, np.int64).reshape(n)
        mode = _MODES["fixed_point"][bool(single_rounding)]
    elif rounding == "half_even":
        mode = _MODES["float"][precision]
        if precision == "float32":
            fm = mcol.astype(np.float32).astype(np.float64)
    if not fused:
        mode = 0
    mod = _kernel_module("cpu")
    path = _cpu_path(mod, cpu_path)
    out_dtype = fmt.storage_dtype if mode else np.int32

    def fn(x, y, p, q):
        return mod.matmul_int_requant(x, y, p.astype(np.int32), q.astype(np.int32), bias64,
                                      mode, qm, sh, fm, z, lo, hi, out_dtype, path=path)

    res = _cpu_loop(fn, a2, b2, za, zb, batch, m, n, out_dtype).reshape(shape)
    if mode == 0:  # acc + bias from the kernel, requantized by the reference
        return reference(res)
    return res


def warmup() -> None:
    """Compile the CPU int8 kernels now (or load them from Numba's disk cache).

    The first call of each kernel otherwise pays this (seconds on a first run,
    a fraction of a second once the cache under ``__pycache__`` is written).
    """
    from .cpu import int8  # noqa: PLC0415

    int8.warmup()
