"""Intel AMX (``amx-int8``) for the int8 GEMM: the tile instructions from a Numba ``@intrinsic``.

AMX multiplies whole tiles: ``TDPBUSD tmm_c, tmm_a, tmm_b`` adds to a 16 x 16
int32 tile ``C`` the products of a 16 x 64 uint8 tile ``A`` (16 rows, 64 depths)
and a 64 x 16 int8 tile ``B`` stored "VNNI-packed" as 16 rows of 64 bytes, row
``q`` holding depths ``4q .. 4q+3`` of each of 16 columns, i.e. exactly the
``bpan[q, c]`` words of :mod:`refquant.kernels.cpu.int8` (four depths per
uint32, 16 columns per 64 bytes). Four u8 x s8 products are summed into each
int32 lane, wrapping, as ``vpdpbusd`` does, so the results are the same bits.

The register tile here is 2 x 2 ``C`` tiles (32 rows x 32 columns), with two
``A`` and two ``B`` tiles: the 8 tile registers. Tile numbers are immediates,
so the intrinsics are LLVM's ``llvm.x86.tileloadd64`` / ``tdpbusd`` /
``tilestored64`` with constant tile indices, each declared as a plain function
on the module.

Linux hands out the 8 KiB AMX register state only on request:
:func:`request_permission` calls ``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``
once for the process (every thread then may use AMX); without it the first
tile instruction dies with SIGILL. Each call of the tile kernel loads its own
tile configuration (``ldtilecfg``) and releases the state at its end, so the
threads of a ``prange`` need no other set-up.
"""

from __future__ import annotations

import ctypes
import functools
import sys

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = ["request_permission", "amx_tile_2x2"]

_SYS_ARCH_PRCTL = 158  # x86-64
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18


@functools.cache
def request_permission() -> bool:
    """Ask Linux for the AMX tile data state once; True when granted."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


_I8 = ir.IntType(8)
_I64 = ir.IntType(64)
_P8 = _I8.as_pointer()


def _declare(mod, name, ret, args):
    fn = mod.globals.get(name)
    if fn is None:  # a plain declaration (llvmlite's declare_intrinsic upsets numba)
        fn = ir.Function(mod, ir.FunctionType(ret, args), name)
    return fn


def _config_bytes():
    """``ldtilecfg``'s 64-byte block: palette 1, tiles 0-7 all 16 rows x 64 bytes."""
    cfg = bytearray(64)
    cfg[0] = 1
    for t in range(8):
        cfg[16 + 2 * t] = 64  # bytes per row (uint16, little-endian)
        cfg[48 + t] = 16  # rows
    return cfg


@intrinsic
def amx_tile_2x2(typingctx, a, a_off, lda, b, b_off, ldb, kt, c, c_off, ldc, first):
    """``C[32 x 32] = A[32 rows, 64 kt depths] @ B[panel, 64 kt depths, 32 columns]``.

    Arrays with byte offsets and byte strides: ``A`` rows at ``a + a_off + r lda``,
    ``B`` words at ``b + b_off + q ldb`` (``ldb`` = bytes per packed depth quad
    row), ``C`` int32 rows at ``c + c_off + r ldc``; ``kt >= 1`` steps of 64 depths.
    The tiles start from zero when ``first`` is true (the first K block), else from ``C``.
    """
    sig = types.void(a, a_off, lda, b, b_off, ldb, kt, c, c_off, ldc, first)

    def codegen(context, builder, signature, args):
        def base(i):
            arr = context.make_array(signature.args[i])(context, builder, value=args[i])
            return builder.ptrtoint(arr.data, _I64)

        def num(i):
            return context.cast(builder, args[i], signature.args[i], types.int64)

        def const(v):
            return ir.Constant(_I64, v)

        def tile(t):
            return ir.Constant(_I8, t)

        mod = builder.module
        void = ir.VoidType()
        ldtilecfg = _declare(mod, "llvm.x86.ldtilecfg", void, [_P8])
        release = _declare(mod, "llvm.x86.tilerelease", void, [])
        load = _declare(mod, "llvm.x86.tileloadd64", void, [_I8, _P8, _I64])
        store = _declare(mod, "llvm.x86.tilestored64", void, [_I8, _P8, _I64])
        zero = _declare(mod, "llvm.x86.tilezero", void, [_I8])
        dp = _declare(mod, "llvm.x86.tdpbusd", void, [_I8, _I8, _I8])

        cfg_ty = ir.ArrayType(_I8, 64)
        cfg = builder.alloca(cfg_ty)
        builder.store(ir.Constant(cfg_ty, _config_bytes()), cfg)
        builder.call(ldtilecfg, [builder.bitcast(cfg, _P8)])
        a0 = builder.add(base(0), num(1))
        b0 = builder.add(base(3), num(4))
        c0 = builder.add(base(7), num(8))
        sa, sb, nk, sc = num(2), num(5), num(6), num(9)
        # C tiles 0..3: (row block r, column block v) -> 2 r + v
        c_addrs = [builder.add(c0, builder.add(builder.mul(sc, const(16 * r)), const(64 * v)))
                   for r in range(2) for v in range(2)]
        is_first = builder.icmp_signed("!=", num(10), const(0))
        with builder.if_else(is_first) as (then, otherwise):
            with then:
                for t in range(4):
                    builder.call(zero, [tile(t)])
            with otherwise:
                for t in range(4):
                    builder.call(load, [tile(t), builder.inttoptr(c_addrs[t], _P8), sc])
        pre = builder.block
        loop = builder.append_basic_block("amx.loop")
        done = builder.append_basic_block("amx.done")
        builder.branch(loop)
        builder.position_at_end(loop)
        q = builder.phi(_I64)
        q.add_incoming(const(0), pre)
        a_step = builder.add(a0, builder.mul(q, const(64)))
        b_step = builder.add(b0, builder.mul(q, builder.mul(sb, const(16))))
        for r in range(2):  # A tiles 4, 5: rows 16 r .. 16 r + 15, 64 depths
            addr = builder.add(a_step, builder.mul(sa, const(16 * r)))
            builder.call(load, [tile(4 + r), builder.inttoptr(addr, _P8), sa])
        for v in range(2):  # B tiles 6, 7: 16 depth quads x columns 16 v .. 16 v + 15
            addr = builder.add(b_step, const(64 * v))
            builder.call(load, [tile(6 + v), builder.inttoptr(addr, _P8), sb])
        for r in range(2):
            for v in range(2):
                builder.call(dp, [tile(2 * r + v), tile(4 + r), tile(6 + v)])
        q1 = builder.add(q, const(1))
        q.add_incoming(q1, loop)
        builder.cbranch(builder.icmp_signed("<", q1, nk), loop, done)
        builder.position_at_end(done)
        for t in range(4):
            builder.call(store, [tile(t), builder.inttoptr(c_addrs[t], _P8), sc])
        builder.call(release, [])
        return context.get_dummy_value()

    return sig, codegen
