"""Numba kernels for bit-packed binary and ternary matmuls (xor / and + popcount).

Each kernel reproduces its NumPy reference in ``refquant.quant.bitmatmul`` bit
for bit; integer sums, so there is no order to state. Inputs are validated by
``refquant.kernels.binary``: C-contiguous uint64 words (unsigned: the CUDA
simulator's ``popc`` miscounts negative int64, and the two backends share
inputs), padding bits zero, rows packed along K for both operands.

Three implementation paths, chosen by the caller (``refquant.kernels.binary``
picks ``"avx512"`` where the CPU has AVX-512F and VPOPCNTDQ, else ``"popcnt"``):

``"avx512"``
    one ``@intrinsic`` emits a 4 x 4 tile's whole K loop in LLVM IR on
    ``<8 x i64>`` vectors (512 bits: LLVM's ``prefer-256-bit`` tuning of these
    CPUs does not apply to explicit vector types): four rows of A and four of B
    loaded per 64 bytes of K, 16 ``xor`` + ``llvm.ctpop.v8i64`` (``vpopcntq
    zmm``) + ``add`` into 16 vector accumulators, reduced and stored once.
    It needs the rows padded with zero words to a multiple of 8 words (the
    caller pads: zero words add nothing to ``popcount(a ^ b)``).
``"popcnt"``
    popcount through ``llvm.ctpop.i64`` (an ``@intrinsic``). LLVM lowers it to
    ``popcnt`` on any x86-64 CPU with POPCNT, and vectorises the word loop to
    ``vpopcntq`` where the CPU has AVX-512 VPOPCNTDQ (Numba compiles for the
    host CPU, so that choice is made by the CPU the kernel first runs on).
    4 x 4 register tiles: four rows of A and four of B are read once per word
    and feed 16 accumulators; ``prange`` over the tiles.
``"portable"``
    popcount from a 256-entry byte table, one (row, column) at a time; no
    popcount instruction (LLVM does not recognise a table lookup as ctpop),
    the same integers. It is what the tests force to cover a CPU without one.

Under ``NUMBA_DISABLE_JIT=1`` the kernels run as Python (``int.bit_count``).
"""

from __future__ import annotations

import numpy as np
from numba import config, njit, prange, types
from numba.extending import intrinsic

__all__ = [
    "matmul_binary_avx512",
    "matmul_binary_popcnt",
    "matmul_binary_portable",
    "matmul_ternary_binary_popcnt",
    "matmul_ternary_binary_portable",
    "matmul_ternary_int8",
]

_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)

if config.DISABLE_JIT:  # pragma: no cover - exercised in a subprocess

    def _popcount(x):
        return int(x).bit_count()

else:

    @intrinsic
    def _popcount(typingctx, x):
        """``llvm.ctpop.i64`` of a uint64, as int64."""
        if x != types.uint64:
            return None

        def codegen(context, builder, signature, args):
            from llvmlite import ir
            from numba.core import cgutils

            i64 = ir.IntType(64)
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(i64, [i64]), "llvm.ctpop.i64"
            )
            return builder.call(fn, [args[0]])

        return types.int64(types.uint64), codegen


if config.DISABLE_JIT:  # pragma: no cover - exercised in a subprocess

    def _tile4x4_512(a, b, out, i0, j0, nvec, k):
        for r in range(4):
            for c in range(4):
                x = a[i0 + r, : 8 * nvec] ^ b[j0 + c, : 8 * nvec]
                out[i0 + r, j0 + c] = k - 2 * sum(int(v).bit_count() for v in x)

else:

    @intrinsic
    def _tile4x4_512(typingctx, a, b, out, i0, j0, nvec, k):
        """out[i0:i0+4, j0:j0+4] = k - 2 * popcount(a[i] ^ b[j]) over the first 8*nvec words."""
        sig = types.void(a, b, out, types.intp, types.intp, types.intp, types.int64)

        def codegen(context, builder, signature, args):
            from llvmlite import ir
            from numba.core import cgutils

            arr_a = context.make_array(signature.args[0])(context, builder, args[0])
            arr_b = context.make_array(signature.args[1])(context, builder, args[1])
            arr_o = context.make_array(signature.args[2])(context, builder, args[2])
            i0_, j0_, nvec_, k_ = args[3], args[4], args[5], args[6]
            i64, i32 = ir.IntType(64), ir.IntType(32)
            v8 = ir.VectorType(i64, 8)
            mod = builder.module
            ctpop = cgutils.get_or_insert_function(
                mod, ir.FunctionType(v8, [v8]), "llvm.ctpop.v8i64")

            def const(v):
                return ir.Constant(i64, v)

            words = cgutils.unpack_tuple(builder, arr_a.shape, 2)[1]
            n_out = cgutils.unpack_tuple(builder, arr_o.shape, 2)[1]
            row_bytes = builder.mul(words, const(8))
            base_a = builder.ptrtoint(arr_a.data, i64)
            base_b = builder.ptrtoint(arr_b.data, i64)
            rows_a = [builder.add(base_a, builder.mul(builder.add(i0_, const(r)), row_bytes))
                      for r in range(4)]
            rows_b = [builder.add(base_b, builder.mul(builder.add(j0_, const(c)), row_bytes))
                      for c in range(4)]
            # allocas in the entry block; LLVM's mem2reg turns them into vector registers
            accs = [cgutils.alloca_once_value(builder, ir.Constant(v8, None)) for _ in range(16)]
            with cgutils.for_range(builder, nvec_) as loop:
                off = builder.mul(loop.index, const(64))
                va = [builder.load(builder.inttoptr(builder.add(p, off), v8.as_pointer()), align=8)
                      for p in rows_a]
                vb = [builder.load(builder.inttoptr(builder.add(p, off), v8.as_pointer()), align=8)
                      for p in rows_b]
                for r in range(4):
                    for c in range(4):
                        cnt = builder.call(ctpop, [builder.xor(va[r], vb[c])])
                        acc = accs[4 * r + c]
                        builder.store(builder.add(builder.load(acc), cnt), acc)
            # 16 horizontal sums by a transposing tree (42 vector ops instead of 16
            # separate reductions): pair lanes, then pairs of pairs, then halves, so that
            # one vector ends as [r0c0 r0c1 r0c2 r0c3 r1c0 r1c1 r1c2 r1c3].
            def pair_add(x, y, lo_idx, hi_idx):
                lo = builder.shuffle_vector(x, y, ir.Constant(ir.VectorType(i32, 8), lo_idx))
                hi = builder.shuffle_vector(x, y, ir.Constant(ir.VectorType(i32, 8), hi_idx))
                return builder.add(lo, hi)

            acc_v = [builder.load(a_) for a_ in accs]
            step1 = ([0, 8, 2, 10, 4, 12, 6, 14], [1, 9, 3, 11, 5, 13, 7, 15])
            step2 = ([0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15])
            step3 = ([0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15])
            rows = []
            for r in range(4):
                z0 = pair_add(acc_v[4 * r], acc_v[4 * r + 1], *step1)
                z1 = pair_add(acc_v[4 * r + 2], acc_v[4 * r + 3], *step1)
                rows.append(pair_add(z0, z1, *step2))
            base_o = builder.ptrtoint(arr_o.data, i64)
            kv = builder.insert_element(ir.Constant(v8, None), k_, ir.Constant(i32, 0))
            kv = builder.shuffle_vector(kv, kv, ir.Constant(ir.VectorType(i32, 8), [0] * 8))
            v4i32 = ir.VectorType(i32, 4)
            for rp in range(2):
                total = pair_add(rows[2 * rp], rows[2 * rp + 1], *step3)
                res = builder.trunc(builder.sub(kv, builder.shl(total, ir.Constant(v8, [1] * 8))),
                                    ir.VectorType(i32, 8))
                for h in range(2):
                    half = builder.shuffle_vector(
                        res, res, ir.Constant(v4i32, [4 * h + j for j in range(4)]))
                    idx = builder.add(builder.mul(builder.add(i0_, const(2 * rp + h)), n_out), j0_)
                    ptr = builder.inttoptr(builder.add(base_o, builder.mul(idx, const(4))),
                                           v4i32.as_pointer())
                    builder.store(half, ptr, align=4)
            return context.get_dummy_value()

        return sig, codegen


@njit(cache=True)
def _popcount_table(x):
    c = 0
    for s in range(8):
        c += _BYTE_POPCOUNT[(x >> np.uint64(8 * s)) & np.uint64(0xFF)]
    return c


@njit(cache=True, parallel=True)
def matmul_binary_popcnt(a, b, k):
    """``k - 2 * popcount(a[m] ^ b[n])`` for every (m, n): int32 (M, N); 4 x 4 tiles."""
    m_rows, nw = a.shape
    n_rows = b.shape[0]
    out = np.empty((m_rows, n_rows), np.int32)
    tm = (m_rows + 3) // 4
    tn = (n_rows + 3) // 4
    for t in prange(tm * tn):
        i0 = (t // tn) * 4
        j0 = (t % tn) * 4
        if i0 + 4 <= m_rows and j0 + 4 <= n_rows:
            c00 = c01 = c02 = c03 = 0
            c10 = c11 = c12 = c13 = 0
            c20 = c21 = c22 = c23 = 0
            c30 = c31 = c32 = c33 = 0
            for w in range(nw):
                a0 = a[i0, w]
                a1 = a[i0 + 1, w]
                a2 = a[i0 + 2, w]
                a3 = a[i0 + 3, w]
                b0 = b[j0, w]
                b1 = b[j0 + 1, w]
                b2 = b[j0 + 2, w]
                b3 = b[j0 + 3, w]
                c00 += _popcount(a0 ^ b0)
                c01 += _popcount(a0 ^ b1)
                c02 += _popcount(a0 ^ b2)
                c03 += _popcount(a0 ^ b3)
                c10 += _popcount(a1 ^ b0)
                c11 += _popcount(a1 ^ b1)
                c12 += _popcount(a1 ^ b2)
                c13 += _popcount(a1 ^ b3)
                c20 += _popcount(a2 ^ b0)
                c21 += _popcount(a2 ^ b1)
                c22 += _popcount(a2 ^ b2)
                c23 += _popcount(a2 ^ b3)
                c30 += _popcount(a3 ^ b0)
                c31 += _popcount(a3 ^ b1)
                c32 += _popcount(a3 ^ b2)
                c33 += _popcount(a3 ^ b3)
            out[i0, j0] = k - 2 * c00
            out[i0, j0 + 1] = k - 2 * c01
            out[i0, j0 + 2] = k - 2 * c02
            out[i0, j0 + 3] = k - 2 * c03
            out[i0 + 1, j0] = k - 2 * c10
            out[i0 + 1, j0 + 1] = k - 2 * c11
            out[i0 + 1, j0 + 2] = k - 2 * c12
            out[i0 + 1, j0 + 3] = k - 2 * c13
            out[i0 + 2, j0] = k - 2 * c20
            out[i0 + 2, j0 + 1] = k - 2 * c21
            out[i0 + 2, j0 + 2] = k - 2 * c22
            out[i0 + 2, j0 + 3] = k - 2 * c23
            out[i0 + 3, j0] = k - 2 * c30
            out[i0 + 3, j0 + 1] = k - 2 * c31
            out[i0 + 3, j0 + 2] = k - 2 * c32
            out[i0 + 3, j0 + 3] = k - 2 * c33
        else:  # a partial tile at the bottom or right edge
            for i in range(i0, min(i0 + 4, m_rows)):
                for j in range(j0, min(j0 + 4, n_rows)):
                    c = 0
                    for w in range(nw):
                        c += _popcount(a[i, w] ^ b[j, w])
                    out[i, j] = k - 2 * c
    return out


@njit(cache=True, parallel=True)
def matmul_binary_avx512(a, b, k):
    """As :func:`matmul_binary_popcnt` with 512-bit tiles; a and b have a multiple of 8 words."""
    m_rows, nw = a.shape
    n_rows = b.shape[0]
    out = np.empty((m_rows, n_rows), np.int32)
    nvec = nw // 8
    tm = (m_rows + 3) // 4
    tn = (n_rows + 3) // 4
    for t in prange(tm * tn):
        i0 = (t // tn) * 4
        j0 = (t % tn) * 4
        if i0 + 4 <= m_rows and j0 + 4 <= n_rows:
            _tile4x4_512(a, b, out, i0, j0, nvec, k)
        else:
            for i in range(i0, min(i0 + 4, m_rows)):
                for j in range(j0, min(j0 + 4, n_rows)):
                    c = 0
                    for w in range(nw):
                        c += _popcount(a[i, w] ^ b[j, w])
                    out[i, j] = k - 2 * c
    return out


@njit(cache=True, parallel=True)
def matmul_binary_portable(a, b, k):
    """As :func:`matmul_binary_popcnt`, with a byte-table popcount, one output at a time."""
    m_rows, nw = a.shape
    n_rows = b.shape[0]
    out = np.empty((m_rows, n_rows), np.int32)
    for t in prange(m_rows * n_rows):
        i = t // n_rows
        j = t % n_rows
        c = 0
        for w in range(nw):
            c += _popcount_table(a[i, w] ^ b[j, w])
        out[i, j] = k - 2 * c
    return out


@njit(cache=True, parallel=True)
def matmul_ternary_binary_popcnt(a, nonzero, negative):
    """``popcount(nz[n]) - 2 * popcount(nz[n] & (a[m] ^ neg[n]))``: int32 (M, N); 1 x 4 tiles."""
    m_rows, nw = a.shape
    n_rows = nonzero.shape[0]
    out = np.empty((m_rows, n_rows), np.int32)
    count = np.empty(n_rows, np.int64)
    for j in prange(n_rows):
        c = 0
        for w in range(nw):
            c += _popcount(nonzero[j, w])
        count[j] = c
    tn = (n_rows + 3) // 4
    for t in prange(m_rows * tn):
        i = t // tn
        j0 = (t % tn) * 4
        if j0 + 4 <= n_rows:
            c0 = c1 = c2 = c3 = 0
            for w in range(nw):
                x = a[i, w]
                c0 += _popcount(nonzero[j0, w] & (x ^ negative[j0, w]))
                c1 += _popcount(nonzero[j0 + 1, w] & (x ^ negative[j0 + 1, w]))
                c2 += _popcount(nonzero[j0 + 2, w] & (x ^ negative[j0 + 2, w]))
                c3 += _popcount(nonzero[j0 + 3, w] & (x ^ negative[j0 + 3, w]))
            out[i, j0] = count[j0] - 2 * c0
            out[i, j0 + 1] = count[j0 + 1] - 2 * c1
            out[i, j0 + 2] = count[j0 + 2] - 2 * c2
            out[i, j0 + 3] = count[j0 + 3] - 2 * c3
        else:
            for j in range(j0, n_rows):
                c = 0
                for w in range(nw):
                    c += _popcount(nonzero[j, w] & (a[i, w] ^ negative[j, w]))
                out[i, j] = count[j] - 2 * c
    return out


@njit(cache=True, parallel=True)
def matmul_ternary_binary_portable(a, nonzero, negative):
    """As :func:`matmul_ternary_binary_popcnt`, with a byte-table popcount."""
    m_rows, nw = a.shape
    n_rows = nonzero.shape[0]
    out = np.empty((m_rows, n_rows), np.int32)
    for t in prange(m_rows * n_rows):
        i = t // n_rows
        j = t % n_rows
        nz = 0
        c = 0
        for w in range(nw):
            nz += _popcount_table(nonzero[j, w])
            c += _popcount_table(nonzero[j, w] & (a[i, w] ^ negative[j, w]))
        out[i, j] = nz - 2 * c
    return out


@njit(cache=True, parallel=True)
def matmul_ternary_int8(x, t):
    """``sum_k x[m, k] * t[n, k]`` for int8 x (M, K) and ternary int8 codes t (N, K): int32."""
    m_rows, kk = x.shape
    n_rows = t.shape[0]
    out = np.empty((m_rows, n_rows), np.int32)
    for p in prange(m_rows * n_rows):
        i = p // n_rows
        j = p % n_rows
        c = np.int32(0)
        for q in range(kk):
            c += np.int32(x[i, q]) * np.int32(t[j, q])
        out[i, j] = c
    return out
