"""Numba int8 GEMM: exact int32 ``(a - za) @ (b - zb)`` through VNNI ``vpdpbusd``.

The kernel computes one product only, ``P = a' @ b'`` with ``a'`` unsigned and
``b'`` signed bytes (what ``vpdpbusd`` multiplies: four u8 x s8 products summed
into each int32 lane, wrapping, never saturating), and folds everything else
into per-row and per-column corrections:

* a signed ``a`` becomes ``a' = a + 128`` (its byte with the top bit flipped),
  an unsigned ``b`` becomes ``b' = b - 128`` (likewise); so with
  ``ZA = za + oa`` and ``ZB = zb - ob`` (``oa``, ``ob`` the offsets, 0 or 128),
  ``a - za = a' - ZA`` and ``b - zb = b' - ZB``;
* ``(a' - ZA)(b' - ZB)`` summed over k expands into four terms::

      C[m, n] = P[m, n] - ZB[n] * rowsum(a')[m] - ZA[m] * colsum(b')[n] + K * ZA[m] * ZB[n]

  the row sums and column sums come out of the packing pass for free.

``P`` is accumulated in wrapping int32 and the corrections in int64, and the sum
is wrapped to int32 once at the end. Because all of this is arithmetic modulo
2^32, the result is exact whenever the true ``C`` lies in int32 (``P`` alone may
wrap: it does not matter). The public function refuses shapes for which it may
not (``int32_accumulation_fits``).

Packed layouts (``K`` padded with zeros to ``Kp = 4 * Kq``)::

    ap[m, k]                 = a'[m, k]            uint8, (M, Kp), row-major
    bp[p, q, 4 * c + t]      = b'[4 q + t, NW p + c]   int8, (N / NW, Kq, 4 NW)

so one step ``q`` of a panel ``p`` is ``NW`` columns x 4 depths = ``4 NW``
contiguous bytes: ``NW / lanes`` vectors, each holding ``lanes`` columns of four
consecutive depths, the operand layout of ``vpdpbusd``. The 4 bytes ``ap[m, 4q:4q+4]``
are broadcast to every lane. Padding (K up to Kp, N up to a whole panel) is zero
in both operands and adds nothing.

Paths (chosen at run time from the CPU's features, or forced by
``REFQUANT_CPU_PATH`` / ``path=``):

``"amx"``
    Intel AMX ``tdpbusd`` on 2 x 2 tiles of 16 x 16 (32 rows x 32 columns, K in
    steps of 64, blocked by 512), where the CPU has ``amx-int8`` and Linux grants
    the tile state (:mod:`refquant.kernels.cpu._amx`); the same packed operands
    (all of B packed first), rows padded to 32, ``prange`` over blocks of 32 rows.

``"avx512vnni"``
    ``llvm.x86.avx512.vpdpbusd.512``; a register tile of 8 rows x 48 columns
    (24 zmm accumulators kept in registers over a whole K block), K blocked by
    :data:`KC` bytes so a B micro-panel stays in L1, ``prange`` over B panels.
``"avxvnni"``
    the same with 256-bit vectors (``vpdpbusd ymm``, AVX-VNNI or AVX512-VL):
    4 rows x 24 columns.
``"portable"``
    plain integer loops over the same packed operands (any CPU; also what runs
    under ``NUMBA_DISABLE_JIT=1``).

Whatever the path, ``M <= 4`` (a decode step) runs :func:`_gemv`, which streams
``b`` row by row instead of packing it (plain loops that LLVM vectorises).

Every path gives the same bits. This module imports nothing from
``refquant.quant``: it takes validated, C-contiguous arrays and plain ints.
"""

from __future__ import annotations

import os

import numba
import numpy as np
from llvmlite import ir
from numba import config, njit, prange, types
from numba.extending import intrinsic

from ._amx import amx_tile_2x2, request_permission
from ._features import has_feature

__all__ = ["PATHS", "available_paths", "default_path", "matmul_int", "matmul_int_requant",
           "warmup"]

PATHS = ("amx", "avx512vnni", "avxvnni", "portable")

KC = 512  # bytes of K per block: a 48-column B micro-panel block is 24 KiB (fits L1d)
_KCQ = KC // 4
_SERIAL_WORK = 128**3  # multiply-adds below which a call runs on one thread
_GEMV_ROWS = 4  # at most this many rows of a: the unpacked row-streaming kernel
_GEMV_COLS = 512  # its column block (M x 512 int32 accumulators stay in L1)
_AMX_KT = 8  # AMX K block in steps of 64: a 32 x 512-byte slice of A (16 KiB) in L1

# Epilogue modes of the fused kernel.
MODE_INT32 = 0          # the int32 product (bias added when given)
MODE_FIXED_DOUBLE = 1   # gemmlowp MultiplyByQuantizedMultiplier, double rounding
MODE_FIXED_SINGLE = 2   # TFLITE_SINGLE_ROUNDING
MODE_FLOAT32 = 3        # float32(acc) * float32(M), rint (half to even)
MODE_FLOAT64 = 4        # float64(acc) * M, rint


# ------------------------------------------------------------------ VNNI register tiles


def _make_tile(mr, nrv, lanes):
    """An ``@intrinsic`` that runs the whole K loop of an ``mr`` x ``nrv * lanes`` tile.

    ``tile(a, a_off, lda, b, b_off, kq, c, c_off, ldc, first)`` (arrays; offsets and
    strides in bytes from their data pointers; ``kq >= 1`` steps of 4 depths): starts
    from zero (``first``) or from the int32 accumulators in ``C``, adds
    ``sum_q vpdpbusd(bcast(a[r, 4q:4q+4]), b[q, v])`` in registers (phi nodes), and
    stores them back once.
    """
    i32 = ir.IntType(32)
    i64 = ir.IntType(64)
    vec = ir.VectorType(i32, lanes)
    fname = f"llvm.x86.avx512.vpdpbusd.{32 * lanes}"
    fnty = ir.FunctionType(vec, [vec, vec, vec])
    vbytes = 4 * lanes

    @intrinsic
    def tile(typingctx, a, a_off, lda, b, b_off, kq, c, c_off, ldc, first):
        # arrays, not raw addresses: a reference keeps each buffer alive for the call
        sig = types.void(a, a_off, lda, b, b_off, kq, c, c_off, ldc, first)

        def codegen(context, builder, signature, args):
            def base(i):
                arr = context.make_array(signature.args[i])(context, builder, value=args[i])
                return builder.ptrtoint(arr.data, i64)

            def num(i):
                return context.cast(builder, args[i], signature.args[i], types.int64)

            a0 = builder.add(base(0), num(1))
            b0 = builder.add(base(3), num(4))
            c0 = builder.add(base(6), num(7))
            sa, nq, sc = num(2), num(5), num(8)
            mod = builder.module
            fn = mod.globals.get(fname)
            if fn is None:  # declared as a plain function (declare_intrinsic upsets numba)
                fn = ir.Function(mod, fnty, fname)
            vptr = vec.as_pointer()
            # the first K block starts from zero, later ones from what C holds
            start = builder.block
            load_bb = builder.append_basic_block("vnni.load")
            pre = builder.append_basic_block("vnni.pre")
            builder.cbranch(builder.icmp_signed("!=", num(9), ir.Constant(i64, 0)), pre, load_bb)
            builder.position_at_end(load_bb)
            loaded = []
            for r in range(mr):
                row = builder.add(c0, builder.mul(sc, ir.Constant(i64, r)))
                for v in range(nrv):
                    addr = builder.add(row, ir.Constant(i64, v * vbytes))
                    loaded.append(builder.load(builder.inttoptr(addr, vptr), align=4))
            builder.branch(pre)
            builder.position_at_end(pre)
            init = []
            for x in loaded:
                ph = builder.phi(vec)
                ph.add_incoming(ir.Constant(vec, None), start)
                ph.add_incoming(x, load_bb)
                init.append(ph)
            loop = builder.append_basic_block("vnni.loop")
            done = builder.append_basic_block("vnni.done")
            builder.branch(loop)
            builder.position_at_end(loop)
            q = builder.phi(i64)
            q.add_incoming(ir.Constant(i64, 0), pre)
            accs = []
            for x in init:
                ph = builder.phi(vec)
                ph.add_incoming(x, pre)
                accs.append(ph)
            boff = builder.add(b0, builder.mul(q, ir.Constant(i64, nrv * vbytes)))
            bvecs = [
                builder.load(builder.inttoptr(builder.add(boff, ir.Constant(i64, v * vbytes)),
                                              vptr), align=1)
                for v in range(nrv)
            ]
            aoff = builder.add(a0, builder.mul(q, ir.Constant(i64, 4)))
            zero_mask = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)
            new = []
            for r in range(mr):
                addr = builder.add(aoff, builder.mul(sa, ir.Constant(i64, r)))
                word = builder.load(builder.inttoptr(addr, i32.as_pointer()), align=1)
                one = builder.insert_element(ir.Constant(vec, ir.Undefined), word,
                                             ir.Constant(i32, 0))
                splat = builder.shuffle_vector(one, ir.Constant(vec, ir.Undefined), zero_mask)
                for v in range(nrv):
                    new.append(builder.call(fn, [accs[r * nrv + v], splat, bvecs[v]]))
            q1 = builder.add(q, ir.Constant(i64, 1))
            q.add_incoming(q1, loop)
            for ph, x in zip(accs, new, strict=True):
                ph.add_incoming(x, loop)
            builder.cbranch(builder.icmp_signed("<", q1, nq), loop, done)
            builder.position_at_end(done)
            for r in range(mr):
                row = builder.add(c0, builder.mul(sc, ir.Constant(i64, r)))
                for v in range(nrv):
                    addr = builder.add(row, ir.Constant(i64, v * vbytes))
                    builder.store(new[r * nrv + v], builder.inttoptr(addr, vptr), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


# 512-bit: 8 x 48 (24 accumulators + 3 B vectors + 1 broadcast of 32 zmm registers)
_MR512, _NRV512, _L512 = 8, 3, 16
_NW512 = _NRV512 * _L512
_tile512 = _make_tile(_MR512, _NRV512, _L512)
_tile512_row = _make_tile(1, _NRV512, _L512)
# 256-bit: 4 x 24 (12 accumulators; AVX-VNNI without AVX-512 has 16 ymm registers)
_MR256, _NRV256, _L256 = 4, 3, 8
_NW256 = _NRV256 * _L256
_tile256 = _make_tile(_MR256, _NRV256, _L256)
_tile256_row = _make_tile(1, _NRV256, _L256)
_NW_PORTABLE = 16

_NW = {"amx": 32, "avx512vnni": _NW512, "avxvnni": _NW256, "portable": _NW_PORTABLE}


# ------------------------------------------------------------------------- packing


@njit(cache=True)
def _pack_a(a, fa, kp, mp):
    """``a' = a ^ fa`` (bytes; ``fa = 0x80`` turns int8 into int8 + 128) as ``mp`` uint8
    rows padded with zeros to ``kp``; and the row sums of ``a'``."""
    m, k = a.shape
    ap = np.zeros((mp, kp), np.uint8)
    rs = np.zeros(m, np.int64)
    for i in range(m):
        s = 0
        for j in range(k):
            v = a[i, j] ^ fa
            ap[i, j] = v
            s += np.int64(v)
        rs[i] = s
    return ap, rs


@njit(cache=True)
def _pack_b_panel(b, fb, p, nw, kq, bpan, cs):
    """Panel ``p`` of ``b' = int8(b ^ fb)``: word ``bpan[q, c]`` holds ``b'[4q + t, nw p + c]``
    in its byte ``t`` (little-endian: byte ``4c + t`` of the row), zero beyond K and N; the
    column sums of ``b'`` into ``cs``."""
    k, n = b.shape
    c0 = p * nw
    c1 = min(n, c0 + nw)
    bpan[:, :] = 0
    cs[:] = 0
    for q in range(kq):
        j0 = 4 * q
        if j0 + 4 <= k:
            for c in range(c0, c1):
                x0 = b[j0, c] ^ fb
                x1 = b[j0 + 1, c] ^ fb
                x2 = b[j0 + 2, c] ^ fb
                x3 = b[j0 + 3, c] ^ fb
                bpan[q, c - c0] = (np.uint32(x0) | (np.uint32(x1) << 8) | (np.uint32(x2) << 16)
                                   | (np.uint32(x3) << 24))
                cs[c - c0] += (np.int64(np.int8(x0)) + np.int64(np.int8(x1))
                               + np.int64(np.int8(x2)) + np.int64(np.int8(x3)))
        else:
            for t in range(k - j0):
                for c in range(c0, c1):
                    x = b[j0 + t, c] ^ fb
                    bpan[q, c - c0] |= np.uint32(x) << (8 * t)
                    cs[c - c0] += np.int64(np.int8(x))


# ----------------------------------------------------------------------- epilogue


@njit(cache=True)
def _requant_one(x, mode, qm, sh, fm, z, lo, hi):
    """One int32 accumulator ``x`` (bias added) to the output grid, as the reference does."""
    if mode == MODE_FIXED_DOUBLE:
        left = sh if sh > 0 else 0
        right = -sh if sh < 0 else 0
        s = np.int64(np.int32(x << left))  # x * 2^left wraps to int32, as compiled C++ does
        if s == -2147483648 and qm == -2147483648:
            high = np.int64(2147483647)
        else:
            ab = s * qm
            nudge = np.int64(1 << 30) if ab >= 0 else np.int64(1 - (1 << 30))
            v = ab + nudge
            high = (v >> 31) if v >= 0 else -((-v) >> 31)  # C++ division truncates
        mask = (np.int64(1) << right) - 1
        thr = (mask >> 1) + (1 if high < 0 else 0)
        r = (high >> right) + (1 if (high & mask) > thr else 0)
        y = r + z
    elif mode == MODE_FIXED_SINGLE:
        total = 31 - sh
        r = np.int64(np.int32((x * qm + (np.int64(1) << (total - 1))) >> total))
        y = r + z
    elif mode == MODE_FLOAT32:
        v = np.float32(x) * np.float32(fm)
        y = np.int64(min(max(np.float64(np.rint(v)) + z, lo), hi))
    else:
        v = np.float64(x) * fm
        y = np.int64(min(max(np.rint(v) + z, lo), hi))
    if y < lo:
        y = lo
    if y > hi:
        y = hi
    return y


@njit(cache=True)
def _finish(acc, i0, i1, n0, n1, rs, za, zbp, wp, bias, mode, qm, sh, fm, z, lo, hi, out):
    """Rows ``i0:i1`` of the panel of columns ``n0:n1`` (``acc``, ``zbp`` and ``wp`` hold
    that panel's columns): zero-point corrections, bias, requantization.

    ``C = P - ZB rowsum(a') - ZA (colsum(b') - K ZB) + bias``, with ``wp`` the bracket;
    evaluated in int64 and wrapped to int32 once, which is exact because the true
    value lies in int32 (everything else is arithmetic modulo 2^32).
    """
    w = n1 - n0
    if mode == MODE_INT32:
        for i in range(i0, i1):
            zai = za[i]
            rsi = rs[i]
            for c in range(w):
                out[i, n0 + c] = np.int32(np.int64(acc[i, c]) - zbp[c] * rsi - zai * wp[c]
                                          + bias[n0 + c])
    else:
        for i in range(i0, i1):
            zai = za[i]
            rsi = rs[i]
            for c in range(w):
                x = np.int64(np.int32(np.int64(acc[i, c]) - zbp[c] * rsi - zai * wp[c]
                                      + bias[n0 + c]))
                j = n0 + c
                out[i, j] = _requant_one(x, mode, qm[j], sh[j], fm[j], z, lo, hi)


@njit(cache=True)
def _panel_terms(zb, cs, k, n0, n1):
    """The panel's ``ZB`` and ``colsum(b') - K ZB`` (int64, one per column)."""
    w = n1 - n0
    zbp = np.empty(w, np.int64)
    wp = np.empty(w, np.int64)
    for c in range(w):
        zbp[c] = zb[n0 + c]
        wp[c] = cs[c] - k * zb[n0 + c]
    return zbp, wp


# ------------------------------------------------------------------------- drivers
# One parallel region per call: A is packed once (serially: O(MK)), then each B panel
# is packed by the thread that owns it, right before its tiles use it (fresh in cache).
# ``a``, ``b`` arrive as uint8 views; ``fa``, ``fb`` are the byte flips (0 or 0x80);
# ``za``, ``zb`` the zero points with the offsets folded in (int64).


@njit(cache=True, parallel=True)
def _gemm_avx512vnni(a, b, fa, fb, za, zb, bias, mode, qm, sh, fm, z, lo, hi, out):
    m, k = a.shape
    n = b.shape[1]
    nw = _NW512
    npan = (n + nw - 1) // nw
    kq = max(1, (k + 3) // 4)  # K = 0: one step of zeros
    kp = 4 * kq
    ap, rs = _pack_a(a, fa, kp, m)
    accf = np.empty((m, npan * nw), np.int32)
    csf = np.empty(npan * nw, np.int64)
    ldc = np.int64(4 * npan * nw)
    mfull = m - m % _MR512
    for p in prange(npan):
        n0 = p * nw
        bpan = np.empty((kq, nw), np.uint32)
        _pack_b_panel(b, fb, p, nw, kq, bpan, csf[n0:n0 + nw])
        for q0 in range(0, kq, _KCQ):
            nq = min(_KCQ, kq - q0)
            boff = q0 * 4 * nw  # bytes
            for i in range(0, mfull, _MR512):
                _tile512(ap, i * kp + 4 * q0, kp, bpan, boff, nq, accf, i * ldc + 4 * n0, ldc,
                         q0 == 0)
            for i in range(mfull, m):
                _tile512_row(ap, i * kp + 4 * q0, kp, bpan, boff, nq, accf, i * ldc + 4 * n0,
                             ldc, q0 == 0)
    _finish_all(accf, k, rs, csf, za, zb, bias, mode, qm, sh, fm, z, lo, hi, out)
    return out


@njit(cache=True, parallel=True)
def _gemm_avxvnni(a, b, fa, fb, za, zb, bias, mode, qm, sh, fm, z, lo, hi, out):
    m, k = a.shape
    n = b.shape[1]
    nw = _NW256
    npan = (n + nw - 1) // nw
    kq = max(1, (k + 3) // 4)  # K = 0: one step of zeros
    kp = 4 * kq
    ap, rs = _pack_a(a, fa, kp, m)
    accf = np.empty((m, npan * nw), np.int32)
    csf = np.empty(npan * nw, np.int64)
    ldc = np.int64(4 * npan * nw)
    mfull = m - m % _MR256
    for p in prange(npan):
        n0 = p * nw
        bpan = np.empty((kq, nw), np.uint32)
        _pack_b_panel(b, fb, p, nw, kq, bpan, csf[n0:n0 + nw])
        for q0 in range(0, kq, _KCQ):
            nq = min(_KCQ, kq - q0)
            boff = q0 * 4 * nw  # bytes
            for i in range(0, mfull, _MR256):
                _tile256(ap, i * kp + 4 * q0, kp, bpan, boff, nq, accf, i * ldc + 4 * n0, ldc,
                         q0 == 0)
            for i in range(mfull, m):
                _tile256_row(ap, i * kp + 4 * q0, kp, bpan, boff, nq, accf, i * ldc + 4 * n0,
                             ldc, q0 == 0)
    _finish_all(accf, k, rs, csf, za, zb, bias, mode, qm, sh, fm, z, lo, hi, out)
    return out


@njit(cache=True, parallel=True)
def _gemm_amx(a, b, fa, fb, za, zb, bias, mode, qm, sh, fm, z, lo, hi, out):
    m, k = a.shape
    n = b.shape[1]
    nw = 32  # two 16-column B tiles
    npan = (n + nw - 1) // nw
    kt = max(1, (k + 63) // 64)  # steps of 64 depths (K padded with zeros)
    kp = 64 * kt
    mp = (m + 31) // 32 * 32  # rows padded to whole 2 x 16-row tiles (zeros)
    ap, rs = _pack_a(a, fa, kp, mp)
    # every B panel packed first (one region), then each thread takes blocks of 32 rows
    # and runs them against all panels: its 32 x KC slice of A stays in L1 while the
    # packed B streams from L2
    bp = np.empty((npan, 16 * kt, nw), np.uint32)
    csf = np.empty(npan * nw, np.int64)
    for p in prange(npan):
        _pack_b_panel(b, fb, p, nw, 16 * kt, bp[p], csf[p * nw:p * nw + nw])
    accf = np.empty((mp, npan * nw), np.int32)
    ldc = 4 * npan * nw
    pstride = 4 * nw * 16 * kt  # bytes per packed panel
    for ib in prange(mp // 32):
        i = 32 * ib
        for k0 in range(0, kt, _AMX_KT):
            nk = min(_AMX_KT, kt - k0)
            for p in range(npan):
                amx_tile_2x2(ap, i * kp + 64 * k0, kp, bp, p * pstride + k0 * 16 * 4 * nw,
                             4 * nw, nk, accf, i * ldc + 4 * nw * p, ldc, k0 == 0)
    _finish_all(accf, k, rs, csf, za, zb, bias, mode, qm, sh, fm, z, lo, hi, out)
    return out


@njit(cache=True, parallel=True)
def _finish_all(accf, k, rs, csf, za, zb, bias, mode, qm, sh, fm, z, lo, hi, out):
    """The epilogue as its own pass over whole rows (contiguous reads and writes)."""
    m, n = out.shape
    zbp, wp = _panel_terms(zb, csf, k, 0, n)
    for i in prange(m):
        _finish(accf, i, i + 1, 0, n, rs, za, zbp, wp, bias, mode, qm, sh, fm, z, lo, hi, out)


@njit(cache=True, parallel=True)
def _gemm_portable(a, b, fa, fb, za, zb, bias, mode, qm, sh, fm, z, lo, hi, out):
    m, k = a.shape
    n = b.shape[1]
    nw = _NW_PORTABLE
    kq = max(1, (k + 3) // 4)
    ap, rs = _pack_a(a, fa, 4 * kq, m)
    for p in prange((n + nw - 1) // nw):
        n0 = p * nw
        bpan = np.empty((kq, nw), np.uint32)
        cs = np.empty(nw, np.int64)
        _pack_b_panel(b, fb, p, nw, kq, bpan, cs)
        acc = np.zeros((m, nw), np.int32)
        for i in range(m):
            for q in range(kq):
                for t in range(4):
                    av = np.int32(ap[i, 4 * q + t])
                    for c in range(nw):
                        acc[i, c] += av * np.int32(np.int8((bpan[q, c] >> (8 * t)) & 0xFF))
        n1 = min(n, n0 + nw)
        zbp, wp = _panel_terms(zb, cs, k, n0, n1)
        _finish(acc, 0, m, n0, n1, rs, za, zbp, wp, bias, mode, qm, sh, fm, z, lo, hi, out)
    return out


@njit(cache=True, parallel=True)
def _gemv(a, b, fa, fb, za, zb, bias, mode, qm, sh, fm, z, lo, hi, out):
    """Few rows of ``a`` (decode): ``b`` read once, row by row, in blocks of columns.

    Packing ``b`` would cost as much as the product itself when ``M`` is tiny, so
    each row ``b'[j, :]`` of a column block is scaled by ``a'[i, j]`` and added to
    ``M`` int32 accumulator rows (vectorised by LLVM). Same sums, same bits.
    """
    m, k = a.shape
    n = b.shape[1]
    ap, rs = _pack_a(a, fa, k, m)
    for p in prange((n + _GEMV_COLS - 1) // _GEMV_COLS):
        n0 = p * _GEMV_COLS
        n1 = min(n, n0 + _GEMV_COLS)
        w = n1 - n0
        acc = np.zeros((m, _GEMV_COLS), np.int32)
        cs = np.zeros(_GEMV_COLS, np.int64)
        bv = np.empty(_GEMV_COLS, np.int32)
        for j in range(k):
            brow = b[j, n0:n1]
            for c in range(w):  # separate simple loops: each one vectorises
                bv[c] = np.int8(brow[c] ^ fb)
            for c in range(w):
                cs[c] += bv[c]
            for i in range(m):
                av = np.int32(ap[i, j])
                arow = acc[i]
                for c in range(w):
                    arow[c] = np.int32(arow[c] + av * bv[c])
        zbp, wp = _panel_terms(zb, cs, k, n0, n1)
        _finish(acc, 0, m, n0, n1, rs, za, zbp, wp, bias, mode, qm, sh, fm, z, lo, hi, out)
    return out


_DRIVERS = {"amx": _gemm_amx, "avx512vnni": _gemm_avx512vnni, "avxvnni": _gemm_avxvnni,
            "portable": _gemm_portable}


# ---------------------------------------------------------------------- dispatch


def available_paths() -> tuple[str, ...]:
    """The paths this CPU can run, fastest first (``"portable"`` always)."""
    if config.DISABLE_JIT:  # the intrinsics have no Python body
        return ("portable",)
    paths = []
    if has_feature("amx-int8", "amx-tile") and request_permission():
        paths.append("amx")
    if has_feature("avx512vnni", "avx512bw", "avx512f"):
        paths.append("avx512vnni")
    if has_feature("avxvnni") or has_feature("avx512vnni", "avx512vl"):
        paths.append("avxvnni")
    paths.append("portable")
    return tuple(paths)


def default_path(path: str | None = None) -> str:
    """``path`` if given, else ``REFQUANT_CPU_PATH``, else the fastest available path.

    A path the CPU cannot run is refused with ``ValueError`` (the public
    function turns it into ``RefquantError``).
    """
    want = path or os.environ.get("REFQUANT_CPU_PATH") or None
    avail = available_paths()
    if want is None:
        return avail[0]
    if want not in PATHS:
        raise ValueError(f"int8 CPU path must be one of {PATHS}; got {want!r}")
    if want not in avail:
        raise ValueError(f"int8 CPU path {want!r} cannot run on this CPU (it runs {avail})")
    return want


def _run(a, b, za, zb, bias, mode, qm, sh, fm, z, lo, hi, out, path):
    path = default_path(path)
    fa = 0x80 if a.dtype == np.int8 else 0  # a + 128 for int8: flip the top bit
    fb = 0x80 if b.dtype == np.uint8 else 0  # b - 128 for uint8: likewise
    za64 = za.astype(np.int64) + (128 if fa else 0)
    zb64 = zb.astype(np.int64) - (128 if fb else 0)
    args = (a.view(np.uint8), b.view(np.uint8), np.uint8(fa), np.uint8(fb), za64, zb64, bias,
            np.int64(mode), qm, sh, fm, np.int64(z), np.int64(lo), np.int64(hi), out)
    m, k = a.shape
    n = b.shape[1]
    driver = _gemv if m <= _GEMV_ROWS else _DRIVERS[path]
    if m * n * k < _SERIAL_WORK or n <= _NW[path]:
        # too small to share: one thread (no wait for a second one, which on a busy
        # machine can cost a whole scheduler time slice)
        threads = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            driver(*args)
        finally:
            numba.set_num_threads(threads)
    else:
        driver(*args)
    return out


def matmul_int(a, b, za, zb, *, path=None):
    """Exact int32 ``sum_k (a[m,k] - za[m]) * (b[k,n] - zb[n])``.

    ``a`` (M, K) and ``b`` (K, N) uint8 or int8, C-contiguous; ``za`` int32 (M,),
    ``zb`` int32 (N,). The caller has checked that every partial sum fits int32.
    """
    m, n = a.shape[0], b.shape[1]
    out = np.empty((m, n), np.int32)
    zero = np.zeros(n, np.int64)
    return _run(a, b, za, zb, zero, MODE_INT32, zero, zero, zero.astype(np.float64), 0, 0, 0,
                out, path)


def matmul_int_requant(a, b, za, zb, bias, mode, qm, sh, fm, z, lo, hi, out_dtype, *, path=None):
    """``matmul_int`` plus bias (int64 (N,)), then requantization fused per column.

    ``mode``: one of the ``MODE_*`` constants; ``qm``, ``sh`` (int64 (N,)) the
    fixed-point multiplier and shift, ``fm`` (float64 (N,)) the float multiplier
    (rounded to float32 by the caller for ``MODE_FLOAT32``); output zero point
    ``z`` and clamp ``[lo, hi]``; ``out_dtype`` int8, uint8 or int32 (``MODE_INT32``:
    the accumulators plus bias).
    """
    m, n = a.shape[0], b.shape[1]
    # the kernel always writes int32 (one compiled driver per path, whatever the output
    # format); the requantized values already lie in [lo, hi], so the cast is exact
    out = np.empty((m, n), np.int32)
    _run(a, b, za, zb, bias, mode, qm, sh, fm, z, lo, hi, out, path)
    return out.astype(out_dtype, copy=False)


def warmup(paths=None) -> None:
    """Compile (or load from the disk cache) every path this CPU runs, on a tiny problem."""
    a = np.ones((9, 5), np.uint8)
    za, zb = np.zeros(9, np.int32), np.zeros(3, np.int32)
    one = np.ones(3, np.int64)
    for path in paths or available_paths():
        for adt in (np.uint8, np.int8):
            for bdt in (np.int8, np.uint8):
                matmul_int(a.astype(adt), np.ones((5, 3), bdt), za, zb, path=path)
        matmul_int_requant(a, np.ones((5, 3), np.int8), za, zb, one, MODE_FIXED_DOUBLE,
                           one << 30, one, one.astype(np.float64), 0, 0, 1, np.int8, path=path)
