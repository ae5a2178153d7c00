"""Numba kernel of the int4 weight-only matmul, bit for bit with ``refquant.quant.weight_only``.

Input (validated by ``refquant.kernels.int4``): x float32 (M, K); ``packed``
uint8 (N, ceil(K / 2)) holding the codes 0..15 two per byte along K, the
first in the low nibble (``packing.pack_nibbles`` order, padding nibble 0);
scales and zeros float32 (N, K // group_size).

Per output row n (``prange``): the row is dequantized once into a float32
buffer, ``(float32(q) - z) * s``, then dotted with every row of x through 16
scalar float32 accumulators (lane ``k % 16``; LLVM's SLP vectoriser packs them
into SIMD registers without reordering any addition), reduced by the same tree
as the reference. fastmath is off and no multiply-add is fused (LLVM does not
contract ``fmul`` + ``fadd`` without the ``contract`` flag, which Numba sets
only under fastmath), so every rounding is the reference's.

Fast path (``group_size % 16 == 0``, so K is a multiple of 16): the dot is
written in LLVM IR (an ``@intrinsic``) on ``<16 x float>`` vectors: 8 packed
bytes are split into low / high nibbles and interleaved into the 16 codes of
one chunk, ``uitofp``, ``fsub`` the group's zero, ``fmul`` its scale,
``fmul`` by 16 activations and ``fadd`` into one 16-lane accumulator (lane j
holds exactly the reference's lane j), reduced by the reference's tree with
``shufflevector``. With at most 4 activation rows the weights are dequantized
inside the dot (no buffer: the decode shape reads each packed byte once);
with more, each weight row is dequantized once into a buffer that every
activation row reads.

``matmul_int4_avx512`` (AVX-512F, ``group_size % 32 == 0``; the caller
checks both): per group the 16 possible weights ``(float32(j) - z) * s`` form a
table in one register and each code picks its weight with ``vpermps`` (the
same float32 values as computing them per element); 16 bytes (32 codes) are
widened at once and re-interleaved into element order; four output rows run
together so that four independent ``fadd`` chains hide the latency of the one
chain a row's fixed order allows, and each activation vector is loaded once
for the four rows.

Bound against the reference: none needed, every path is bit for bit (the
tests compare float32 bits, NaN with NaN).
"""

from __future__ import annotations

import numpy as np
from numba import config, njit, prange, types
from numba.extending import intrinsic

__all__ = ["matmul_int4", "matmul_int4_avx512"]


@njit(cache=True)
def _dequantize_row(packed, scales, zeros, n, group_size, k, w):
    groups = k // group_size
    for g in range(groups):
        s = scales[n, g]
        z = zeros[n, g]
        for q in range(g * group_size, (g + 1) * group_size):
            code = (packed[n, q >> 1] >> ((q & 1) << 2)) & 15
            w[q] = (np.float32(code) - z) * s


@njit(cache=True)
def _dot16(x, i, w, k):
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
    a8 = a9 = a10 = a11 = a12 = a13 = a14 = a15 = np.float32(0.0)
    full = k // 16
    for c in range(full):
        b = c * 16
        a0 += x[i, b] * w[b]
        a1 += x[i, b + 1] * w[b + 1]
        a2 += x[i, b + 2] * w[b + 2]
        a3 += x[i, b + 3] * w[b + 3]
        a4 += x[i, b + 4] * w[b + 4]
        a5 += x[i, b + 5] * w[b + 5]
        a6 += x[i, b + 6] * w[b + 6]
        a7 += x[i, b + 7] * w[b + 7]
        a8 += x[i, b + 8] * w[b + 8]
        a9 += x[i, b + 9] * w[b + 9]
        a10 += x[i, b + 10] * w[b + 10]
        a11 += x[i, b + 11] * w[b + 11]
        a12 += x[i, b + 12] * w[b + 12]
        a13 += x[i, b + 13] * w[b + 13]
        a14 += x[i, b + 14] * w[b + 14]
        a15 += x[i, b + 15] * w[b + 15]
    b = full * 16
    r = k - b  # 0..15 trailing products go to lanes 0..r-1
    if r > 0:
        a0 += x[i, b] * w[b]
    if r > 1:
        a1 += x[i, b + 1] * w[b + 1]
    if r > 2:
        a2 += x[i, b + 2] * w[b + 2]
    if r > 3:
        a3 += x[i, b + 3] * w[b + 3]
    if r > 4:
        a4 += x[i, b + 4] * w[b + 4]
    if r > 5:
        a5 += x[i, b + 5] * w[b + 5]
    if r > 6:
        a6 += x[i, b + 6] * w[b + 6]
    if r > 7:
        a7 += x[i, b + 7] * w[b + 7]
    if r > 8:
        a8 += x[i, b + 8] * w[b + 8]
    if r > 9:
        a9 += x[i, b + 9] * w[b + 9]
    if r > 10:
        a10 += x[i, b + 10] * w[b + 10]
    if r > 11:
        a11 += x[i, b + 11] * w[b + 11]
    if r > 12:
        a12 += x[i, b + 12] * w[b + 12]
    if r > 13:
        a13 += x[i, b + 13] * w[b + 13]
    if r > 14:
        a14 += x[i, b + 14] * w[b + 14]
    # the reference's tree: [j] + [j + 8], then [j] + [j + 4], [j] + [j + 2], [0] + [1]
    b0 = a0 + a8
    b1 = a1 + a9
    b2 = a2 + a10
    b3 = a3 + a11
    b4 = a4 + a12
    b5 = a5 + a13
    b6 = a6 + a14
    b7 = a7 + a15
    c0 = b0 + b4
    c1 = b1 + b5
    c2 = b2 + b6
    c3 = b3 + b7
    d0 = c0 + c2
    d1 = c1 + c3
    return d0 + d1


def _tree16(acc):
    """The reference's lane reduction of a float32[16] (Python, for NUMBA_DISABLE_JIT)."""
    while acc.shape[0] > 1:
        h = acc.shape[0] // 2
        acc = acc[:h] + acc[h:]
    return acc[0]


if config.DISABLE_JIT:  # pragma: no cover - exercised in a subprocess

    def _dot_fused16(x, i, packed, scales, zeros, n, group_size):
        acc = np.zeros(16, np.float32)
        for e in range(0, x.shape[1], 16):
            g = e // group_size
            b = packed[n, e // 2: e // 2 + 8]
            codes = np.stack([b & 15, b >> 4], axis=1).reshape(16)
            acc += x[i, e:e + 16] * ((codes.astype(np.float32) - zeros[n, g]) * scales[n, g])
        return _tree16(acc)

    def _dot_lut32(x, i, packed, scales, zeros, n, group_size):
        return _dot_fused16(x, i, packed, scales, zeros, n, group_size)

    def _dot_lut32_x4(x, i, packed, scales, zeros, n0, group_size, out):
        for r in range(4):
            out[i, n0 + r] = _dot_fused16(x, i, packed, scales, zeros, n0 + r, group_size)

    def _dot_buf16(x, i, w):
        acc = np.zeros(16, np.float32)
        for e in range(0, x.shape[1], 16):
            acc += x[i, e:e + 16] * w[e:e + 16]
        return _tree16(acc)

else:

    def _reduce_tree16(builder, acc):
        from llvmlite import ir

        i32 = ir.IntType(32)
        v = acc
        width = 16
        while width > 1:
            h = width // 2
            lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, h), list(range(h))))
            hi = builder.shuffle_vector(
                v, v, ir.Constant(ir.VectorType(i32, h), list(range(h, width))))
            v = builder.fadd(lo, hi)
            width = h
        return builder.extract_element(v, ir.Constant(i32, 0))

    def _splat16(builder, val):
        from llvmlite import ir

        f32 = ir.FloatType()
        v16 = ir.VectorType(f32, 16)
        i32 = ir.IntType(32)
        one = builder.insert_element(ir.Constant(v16, None), val, ir.Constant(i32, 0))
        return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(i32, 16), [0] * 16))

    @intrinsic
    def _dot_fused16(typingctx, x, i, packed, scales, zeros, n, group_size):
        """Row i of x dot the dequantized row n of the packed codes, 16 lanes, tree-reduced."""
        sig = types.float32(x, types.intp, packed, scales, zeros, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            from llvmlite import ir
            from numba.core import cgutils

            ax = context.make_array(signature.args[0])(context, builder, args[0])
            ap = context.make_array(signature.args[2])(context, builder, args[2])
            as_ = context.make_array(signature.args[3])(context, builder, args[3])
            az = context.make_array(signature.args[4])(context, builder, args[4])
            i_, n_, gs = args[1], args[5], args[6]
            i64, i32, i8 = ir.IntType(64), ir.IntType(32), ir.IntType(8)
            f32 = ir.FloatType()
            v16f, v8b = ir.VectorType(f32, 16), ir.VectorType(i8, 8)

            def const(v):
                return ir.Constant(i64, v)

            k = cgutils.unpack_tuple(builder, ax.shape, 2)[1]
            kp = cgutils.unpack_tuple(builder, ap.shape, 2)[1]
            groups = cgutils.unpack_tuple(builder, as_.shape, 2)[1]
            xrow = builder.add(builder.ptrtoint(ax.data, i64), builder.mul(builder.mul(i_, k), const(4)))
            prow = builder.add(builder.ptrtoint(ap.data, i64), builder.mul(n_, kp))
            goff = builder.mul(builder.mul(n_, groups), const(4))
            srow = builder.add(builder.ptrtoint(as_.data, i64), goff)
            zrow = builder.add(builder.ptrtoint(az.data, i64), goff)
            chunks = builder.sdiv(gs, const(16))
            acc = cgutils.alloca_once_value(builder, ir.Constant(v16f, None))
            fifteen = ir.Constant(v8b, [15] * 8)
            four = ir.Constant(v8b, [4] * 8)
            order = ir.Constant(ir.VectorType(i32, 16), [j // 2 + 8 * (j % 2) for j in range(16)])
            with cgutils.for_range(builder, groups) as gl:
                goff4 = builder.mul(gl.index, const(4))
                sv = _splat16(builder, builder.load(builder.inttoptr(builder.add(srow, goff4), f32.as_pointer())))
                zv = _splat16(builder, builder.load(builder.inttoptr(builder.add(zrow, goff4), f32.as_pointer())))
                gbase = builder.mul(gl.index, gs)
                with cgutils.for_range(builder, chunks) as cl:
                    e = builder.add(gbase, builder.mul(cl.index, const(16)))
                    bp = builder.inttoptr(builder.add(prow, builder.sdiv(e, const(2))), v8b.as_pointer())
                    by = builder.load(bp, align=1)
                    lo = builder.and_(by, fifteen)
                    hi = builder.lshr(by, four)
                    codes = builder.shuffle_vector(lo, hi, order)  # lo0 hi0 lo1 hi1 ...
                    w = builder.fmul(builder.fsub(builder.uitofp(codes, v16f), zv), sv)
                    xp = builder.inttoptr(builder.add(xrow, builder.mul(e, const(4))), v16f.as_pointer())
                    xv = builder.load(xp, align=4)
                    builder.store(builder.fadd(builder.load(acc), builder.fmul(xv, w)), acc)
            return _reduce_tree16(builder, builder.load(acc))

        return sig, codegen

    @intrinsic
    def _dot_lut32(typingctx, x, i, packed, scales, zeros, n, group_size):
        """As _dot_fused16 (same lanes, same values), for AVX-512F and group_size % 32 == 0.

        Per group the 16 possible weights ``(float32(q) - z) * s`` are computed once into
        a table (one zmm) and each code looks its weight up with ``vpermps``
        (``llvm.x86.avx512.permvar.sf.512``): the same float32 values as computing them
        per element. 16 bytes (32 codes) are widened to i32 at once, split into low /
        high nibbles and re-interleaved into element order.
        """
        sig = types.float32(x, types.intp, packed, scales, zeros, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            from llvmlite import ir
            from numba.core import cgutils

            ax = context.make_array(signature.args[0])(context, builder, args[0])
            ap = context.make_array(signature.args[2])(context, builder, args[2])
            as_ = context.make_array(signature.args[3])(context, builder, args[3])
            az = context.make_array(signature.args[4])(context, builder, args[4])
            i_, n_, gs = args[1], args[5], args[6]
            i64, i32, i8 = ir.IntType(64), ir.IntType(32), ir.IntType(8)
            f32 = ir.FloatType()
            v16f, v16i, v16b = ir.VectorType(f32, 16), ir.VectorType(i32, 16), ir.VectorType(i8, 16)
            permvar = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(v16f, [v16f, v16i]),
                "llvm.x86.avx512.permvar.sf.512")

            def const(v):
                return ir.Constant(i64, v)

            k = cgutils.unpack_tuple(builder, ax.shape, 2)[1]
            kp = cgutils.unpack_tuple(builder, ap.shape, 2)[1]
            groups = cgutils.unpack_tuple(builder, as_.shape, 2)[1]
            xrow = builder.add(builder.ptrtoint(ax.data, i64),
                               builder.mul(builder.mul(i_, k), const(4)))
            prow = builder.add(builder.ptrtoint(ap.data, i64), builder.mul(n_, kp))
            goff = builder.mul(builder.mul(n_, groups), const(4))
            srow = builder.add(builder.ptrtoint(as_.data, i64), goff)
            zrow = builder.add(builder.ptrtoint(az.data, i64), goff)
            chunks = builder.sdiv(gs, const(32))
            acc = cgutils.alloca_once_value(builder, ir.Constant(v16f, None))
            codes_f = ir.Constant(v16f, [float(j) for j in range(16)])
            fifteen = ir.Constant(v16i, [15] * 16)
            four = ir.Constant(v16i, [4] * 16)
            first = ir.Constant(v16i, [j // 2 + 16 * (j % 2) for j in range(16)])
            second = ir.Constant(v16i, [8 + j // 2 + 16 * (j % 2) for j in range(16)])
            with cgutils.for_range(builder, groups) as gl:
                goff4 = builder.mul(gl.index, const(4))
                sv = _splat16(builder, builder.load(
                    builder.inttoptr(builder.add(srow, goff4), f32.as_pointer())))
                zv = _splat16(builder, builder.load(
                    builder.inttoptr(builder.add(zrow, goff4), f32.as_pointer())))
                table = builder.fmul(builder.fsub(codes_f, zv), sv)  # (j - z) * s, j = 0..15
                gbase = builder.mul(gl.index, gs)
                with cgutils.for_range(builder, chunks) as cl:
                    e = builder.add(gbase, builder.mul(cl.index, const(32)))
                    bp = builder.inttoptr(builder.add(prow, builder.sdiv(e, const(2))),
                                          v16b.as_pointer())
                    by = builder.zext(builder.load(bp, align=1), v16i)
                    lo = builder.and_(by, fifteen)  # codes of elements e, e+2, ..., e+30
                    hi = builder.lshr(by, four)  # codes of elements e+1, e+3, ..., e+31
                    for half, order in ((0, first), (1, second)):
                        idx = builder.shuffle_vector(lo, hi, order)
                        w = builder.call(permvar, [table, idx])
                        off = builder.mul(builder.add(e, const(16 * half)), const(4))
                        xv = builder.load(builder.inttoptr(builder.add(xrow, off),
                                                           v16f.as_pointer()), align=4)
                        builder.store(builder.fadd(builder.load(acc), builder.fmul(xv, w)), acc)
            return _reduce_tree16(builder, builder.load(acc))

        return sig, codegen

    @intrinsic
    def _dot_lut32_x4(typingctx, x, i, packed, scales, zeros, n0, group_size, out):
        """_dot_lut32 for output rows n0 .. n0+3 at once, stored to out[i, n0:n0+4].

        Each row keeps its own accumulator and its own order (the reference's); four
        independent ``fadd`` chains hide the latency that one chain is bound by, and the
        activations are loaded once for the four rows.
        """
        sig = types.void(x, types.intp, packed, scales, zeros, types.intp, types.intp, out)

        def codegen(context, builder, signature, args):
            from llvmlite import ir
            from numba.core import cgutils

            ax = context.make_array(signature.args[0])(context, builder, args[0])
            ap = context.make_array(signature.args[2])(context, builder, args[2])
            as_ = context.make_array(signature.args[3])(context, builder, args[3])
            az = context.make_array(signature.args[4])(context, builder, args[4])
            ao = context.make_array(signature.args[7])(context, builder, args[7])
            i_, n0_, gs = args[1], args[5], args[6]
            i64, i32, i8 = ir.IntType(64), ir.IntType(32), ir.IntType(8)
            f32 = ir.FloatType()
            v16f, v16i, v16b = ir.VectorType(f32, 16), ir.VectorType(i32, 16), ir.VectorType(i8, 16)
            permvar = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(v16f, [v16f, v16i]),
                "llvm.x86.avx512.permvar.sf.512")

            def const(v):
                return ir.Constant(i64, v)

            k = cgutils.unpack_tuple(builder, ax.shape, 2)[1]
            kp = cgutils.unpack_tuple(builder, ap.shape, 2)[1]
            groups = cgutils.unpack_tuple(builder, as_.shape, 2)[1]
            n_out = cgutils.unpack_tuple(builder, ao.shape, 2)[1]
            xrow = builder.add(builder.ptrtoint(ax.data, i64),
                               builder.mul(builder.mul(i_, k), const(4)))
            rows = [builder.add(n0_, const(r)) for r in range(4)]
            prows = [builder.add(builder.ptrtoint(ap.data, i64), builder.mul(nr, kp))
                     for nr in rows]
            goffs = [builder.mul(builder.mul(nr, groups), const(4)) for nr in rows]
            srows = [builder.add(builder.ptrtoint(as_.data, i64), g) for g in goffs]
            zrows = [builder.add(builder.ptrtoint(az.data, i64), g) for g in goffs]
            chunks = builder.sdiv(gs, const(32))
            accs = [cgutils.alloca_once_value(builder, ir.Constant(v16f, None)) for _ in range(4)]
            tabs = [cgutils.alloca_once_value(builder, ir.Constant(v16f, None)) for _ in range(4)]
            codes_f = ir.Constant(v16f, [float(j) for j in range(16)])
            fifteen = ir.Constant(v16i, [15] * 16)
            four = ir.Constant(v16i, [4] * 16)
            orders = (ir.Constant(v16i, [j // 2 + 16 * (j % 2) for j in range(16)]),
                      ir.Constant(v16i, [8 + j // 2 + 16 * (j % 2) for j in range(16)]))
            with cgutils.for_range(builder, groups) as gl:
                goff4 = builder.mul(gl.index, const(4))
                for r in range(4):
                    sv = _splat16(builder, builder.load(
                        builder.inttoptr(builder.add(srows[r], goff4), f32.as_pointer())))
                    zv = _splat16(builder, builder.load(
                        builder.inttoptr(builder.add(zrows[r], goff4), f32.as_pointer())))
                    builder.store(builder.fmul(builder.fsub(codes_f, zv), sv), tabs[r])
                gbase = builder.mul(gl.index, gs)
                with cgutils.for_range(builder, chunks) as cl:
                    e = builder.add(gbase, builder.mul(cl.index, const(32)))
                    xv = [builder.load(builder.inttoptr(
                        builder.add(xrow, builder.mul(builder.add(e, const(16 * h)), const(4))),
                        v16f.as_pointer()), align=4) for h in range(2)]
                    half_e = builder.sdiv(e, const(2))
                    for r in range(4):
                        bp = builder.inttoptr(builder.add(prows[r], half_e), v16b.as_pointer())
                        by = builder.zext(builder.load(bp, align=1), v16i)
                        lo = builder.and_(by, fifteen)
                        hi = builder.lshr(by, four)
                        table = builder.load(tabs[r])
                        for h in range(2):
                            w = builder.call(permvar, [table, builder.shuffle_vector(lo, hi, orders[h])])
                            builder.store(builder.fadd(builder.load(accs[r]),
                                                       builder.fmul(xv[h], w)), accs[r])
            base_o = builder.add(builder.ptrtoint(ao.data, i64),
                                 builder.mul(builder.mul(i_, n_out), const(4)))
            for r in range(4):
                res = _reduce_tree16(builder, builder.load(accs[r]))
                ptr = builder.inttoptr(builder.add(base_o, builder.mul(rows[r], const(4))),
                                       f32.as_pointer())
                builder.store(res, ptr)
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def _dot_buf16(typingctx, x, i, w):
        """Row i of x dot a float32 buffer w (K a multiple of 16), 16 lanes, tree-reduced."""
        sig = types.float32(x, types.intp, w)

        def codegen(context, builder, signature, args):
            from llvmlite import ir
            from numba.core import cgutils

            ax = context.make_array(signature.args[0])(context, builder, args[0])
            aw = context.make_array(signature.args[2])(context, builder, args[2])
            i64 = ir.IntType(64)
            v16f = ir.VectorType(ir.FloatType(), 16)
            k = cgutils.unpack_tuple(builder, ax.shape, 2)[1]
            xrow = builder.add(builder.ptrtoint(ax.data, i64),
                               builder.mul(builder.mul(args[1], k), ir.Constant(i64, 4)))
            wrow = builder.ptrtoint(aw.data, i64)
            acc = cgutils.alloca_once_value(builder, ir.Constant(v16f, None))
            with cgutils.for_range(builder, builder.sdiv(k, ir.Constant(i64, 16))) as cl:
                off = builder.mul(cl.index, ir.Constant(i64, 64))
                xv = builder.load(builder.inttoptr(builder.add(xrow, off), v16f.as_pointer()), align=4)
                wv = builder.load(builder.inttoptr(builder.add(wrow, off), v16f.as_pointer()), align=4)
                builder.store(builder.fadd(builder.load(acc), builder.fmul(xv, wv)), acc)
            return _reduce_tree16(builder, builder.load(acc))

        return sig, codegen


@njit(cache=True, parallel=True)
def matmul_int4_avx512(x, packed, scales, zeros, group_size):
    """As :func:`matmul_int4` through the table-lookup dot (AVX-512F, group_size % 32 == 0)."""
    m_rows, k = x.shape
    n_rows = packed.shape[0]
    out = np.empty((m_rows, n_rows), np.float32)
    nq = n_rows // 4
    for t in prange(nq + (n_rows - 4 * nq)):
        if t < nq:
            for i in range(m_rows):
                _dot_lut32_x4(x, i, packed, scales, zeros, 4 * t, group_size, out)
        else:
            n = 4 * nq + (t - nq)
            for i in range(m_rows):
                out[i, n] = _dot_lut32(x, i, packed, scales, zeros, n, group_size)
    return out


@njit(cache=True, parallel=True)
def matmul_int4(x, packed, scales, zeros, group_size):
    """float32 (M, N): ``x @ ((q - z) * s).T`` in the reference's summation order."""
    m_rows, k = x.shape
    n_rows = packed.shape[0]
    out = np.empty((m_rows, n_rows), np.float32)
    if group_size % 16 == 0 and m_rows <= 4:
        for n in prange(n_rows):
            for i in range(m_rows):
                out[i, n] = _dot_fused16(x, i, packed, scales, zeros, n, group_size)
    elif group_size % 16 == 0:
        for n in prange(n_rows):
            w = np.empty(k, np.float32)
            _dequantize_row(packed, scales, zeros, n, group_size, k, w)
            for i in range(m_rows):
                out[i, n] = _dot_buf16(x, i, w)
    else:
        for n in prange(n_rows):
            w = np.empty(k, np.float32)
            _dequantize_row(packed, scales, zeros, n, group_size, k, w)
            for i in range(m_rows):
                out[i, n] = _dot16(x, i, w, k)
    return out
