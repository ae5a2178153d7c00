"""What the numba.cuda kernels share: the lazy import, the simulator switch,
host <-> device transfers, ``dp4a`` and non-contracting float32 arithmetic.

numba.cuda is imported by :func:`get_cuda` only, when a kernel is first built;
importing this module imports numpy and the standard library only. Whether the
simulator runs (``NUMBA_ENABLE_CUDASIM=1``) is fixed when numba.cuda is first
imported in a process, as numba-cuda reads its configuration then.
"""

from __future__ import annotations

import functools

import numpy as np

from ..._errors import RefquantError

__all__ = [
    "get_cuda",
    "simulator",
    "is_device_array",
    "to_device",
    "finish",
    "dp4a_function",
    "float_ops",
]


def get_cuda():
    """The ``numba.cuda`` module (numba-cuda's), imported on first use."""
    try:
        from numba import cuda
    except Exception as exc:  # noqa: BLE001 - any import failure means no CUDA
        raise RefquantError(
            f"the CUDA kernels need numba-cuda, which cannot be imported ({exc}); "
            "install refquant[cuda]"
        ) from exc
    return cuda


@functools.cache
def simulator() -> bool:
    """True when numba.cuda runs the simulator (``NUMBA_ENABLE_CUDASIM=1``)."""
    get_cuda()
    try:
        from numba.cuda.core import config  # numba-cuda
    except ImportError:  # pragma: no cover - the built-in, deprecated numba.cuda
        from numba.core import config
    return bool(config.ENABLE_CUDASIM)


def is_device_array(x) -> bool:
    """A numba device array (or the simulator's), or any object with
    ``__cuda_array_interface__`` (CuPy, PyTorch CUDA tensors)."""
    return bool(getattr(x, "__cuda_ndarray__", False)) or hasattr(x, "__cuda_array_interface__")


def to_device(x, dtype):
    """``x`` on the device with the exact ``dtype``: a device array is used as it
    is (no copy; its dtype must already be ``dtype``), a host array is made
    C-contiguous and copied over."""
    cuda = get_cuda()
    if is_device_array(x):
        if not getattr(x, "__cuda_ndarray__", False):
            x = cuda.as_cuda_array(x)
        if np.dtype(x.dtype) != np.dtype(dtype):
            raise RefquantError(f"device array of dtype {x.dtype} given where {dtype} is expected")
        return x
    return cuda.to_device(np.ascontiguousarray(x, dtype=dtype))


def finish(out, device_out: bool):
    """Return ``out`` as it is (a device array) or copied to a NumPy array."""
    return out if device_out else out.copy_to_host()


# --- dp4a ------------------------------------------------------------------
#
# One dp4a word holds four consecutive K values, byte j = bits 8j .. 8j+7:
#
#     bit 31        24 23        16 15         8 7          0
#        +-----------+------------+------------+------------+
#        |  x[k + 3] |  x[k + 2]  |  x[k + 1]  |  x[k + 0]  |
#        +-----------+------------+------------+------------+
#
# dp4a.{a}32.{b}32 d, a, b, c  sets  d = c + sum_j a.byte[j] * b.byte[j]  with
# each byte sign-extended (.s32) or zero-extended (.u32), modulo 2^32 (PTX ISA,
# "Integer Arithmetic Instructions: dp4a"; sm_61 and later).


@functools.cache
def dp4a_function(a_signed: bool, b_signed: bool, use_ptx: bool):
    """A device function ``dp4a(wa, wb, c) -> int32`` for one signedness pair.

    ``use_ptx`` (and not the simulator) gives the inline-PTX ``dp4a``
    instruction; otherwise a plain device function that unpacks the bytes and
    wraps the sum to int32 the way the instruction does, so that both give the
    same integer for every input.
    """
    cuda = get_cuda()
    if use_ptx and not simulator():
        return _dp4a_ptx(a_signed, b_signed)
    int64 = cuda.types.int64

    def dp4a(wa, wb, c):
        xa = int64(wa)
        xb = int64(wb)
        total = int64(c)
        for j in range(4):
            u = (xa >> (8 * j)) & 0xFF
            v = (xb >> (8 * j)) & 0xFF
            if a_signed:
                u -= (u & 0x80) << 1
            if b_signed:
                v -= (v & 0x80) << 1
            total += u * v
        # the sum modulo 2^32, as a two's-complement int32
        return ((total + 0x80000000) & 0xFFFFFFFF) - 0x80000000

    return _device(dp4a)


def _dp4a_ptx(a_signed: bool, b_signed: bool):
    from llvmlite import ir
    from numba.cuda import types
    from numba.cuda.extending import intrinsic

    asm_text = f"dp4a.{'s' if a_signed else 'u'}32.{'s' if b_signed else 'u'}32 $0, $1, $2, $3;"

    @intrinsic
    def dp4a(typingctx, wa, wb, c):
        sig = types.int32(types.uint32, types.uint32, types.int32)

        def codegen(context, builder, signature, args):
            i32 = ir.IntType(32)
            wa_v, wb_v, c_v = (
                context.cast(builder, v, ty, to)
                for v, ty, to in zip(args, signature.args, sig.args, strict=True)
            )
            fnty = ir.FunctionType(i32, [i32, i32, i32])
            asm = ir.InlineAsm(fnty, asm_text, "=r,r,r,r")
            return builder.call(asm, [wa_v, wb_v, c_v])

        return sig, codegen

    return dp4a


@functools.cache
def float_ops(use_libdevice: bool):
    """``(fmul, fadd)`` device functions on float32 that round each operation
    to nearest even and are never fused into an FMA.

    On a GPU NVVM contracts ``a * b + c`` into one FMA by default; libdevice's
    ``__nv_fmul_rn`` / ``__nv_fadd_rn`` are documented never to be merged, so the
    kernel's sums round exactly as NumPy's float32 ``*`` and ``+`` do. The
    simulator computes in NumPy float32 (each operation rounded once).
    """
    if use_libdevice and not simulator():
        from numba.cuda import libdevice

        return libdevice.fmul_rn, libdevice.fadd_rn
    else:
        float32 = np.float32 if simulator() else get_cuda().types.float32

        def fmul(x, y):
            return float32(x) * float32(y)

        def fadd(x, y):
            return float32(x) + float32(y)

    return _device(fmul), _device(fadd)


def _device(fn):
    """``fn`` as a device function; under the simulator the Python function
    itself (the simulator runs kernels as Python, and its device-function
    wrapper costs a lock and a module swap per call)."""
    return fn if simulator() else get_cuda().jit(device=True)(fn)
