"""Every tunable of the numba.cuda kernels, in one place.

A :class:`Tiles` fixes one kernel's launch configuration: a block of
``threads_y x threads_x`` threads computes a ``block_m x block_n`` tile of the
output, each thread a ``thread_m x thread_n`` register tile of it (rows
``ty + threads_y * i``, columns ``tx + threads_x * j``, strided so that the
threads of a warp read neighbouring shared-memory words), walking K in steps of
``block_k`` elements staged through shared memory. ``block_m = threads_y *
thread_m`` and ``block_n = threads_x * thread_n`` by construction.

The defaults are the usual shapes for a shared-memory GEMM on a GPU of compute
capability 7.5 or later (256 threads, a 64 x 64 output tile, 4 x 4 outputs per
thread); no GPU was available to tune them, so they are a starting point, not a
measured optimum. The tests pass small tiles (:data:`SMALL`) so that a tiny
problem still spans several blocks and several K steps under the simulator.

Nothing here imports numba.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Tiles",
    "INT8_TILES",
    "BINARY_TILES",
    "INT4_TILES",
    "SMALL",
    "USE_DP4A",
    "SUM_THREADS",
    "PTX_CC",
]


@dataclass(frozen=True)
class Tiles:
    """One launch configuration (see the module docstring)."""

    threads_x: int = 16
    threads_y: int = 16
    thread_m: int = 4
    thread_n: int = 4
    block_k: int = 32

    @property
    def block_m(self) -> int:
        return self.threads_y * self.thread_m

    @property
    def block_n(self) -> int:
        return self.threads_x * self.thread_n


#: int8 GEMM: ``block_k`` counts bytes of K and must be a multiple of 4 (one
#: dp4a word holds four consecutive K values); 64 x 32 bytes of each operand in
#: shared memory, 2 x 2 KiB.
INT8_TILES = Tiles(threads_x=16, threads_y=16, thread_m=4, thread_n=4, block_k=32)

#: binary GEMM: ``block_k`` counts uint64 words of K (8 words = 512 bits per
#: step); 64 x 8 words of each operand in shared memory, 2 x 4 KiB.
BINARY_TILES = Tiles(threads_x=16, threads_y=16, thread_m=4, thread_n=4, block_k=8)

#: int4 weight-only GEMM: ``block_k`` counts K elements; the activation tile is
#: float32 and the weight tile is dequantized to float32 as it is staged,
#: 64 x 16 floats each, 2 x 4 KiB.
INT4_TILES = Tiles(threads_x=16, threads_y=16, thread_m=4, thread_n=4, block_k=16)

#: A small configuration for tests under the simulator: 4 x 4 threads, 8 x 8
#: output tiles, 8-element (int8: 8 bytes, binary: 2 words) K steps.
SMALL = {
    "int8": Tiles(threads_x=4, threads_y=4, thread_m=2, thread_n=2, block_k=8),
    "binary": Tiles(threads_x=4, threads_y=4, thread_m=2, thread_n=2, block_k=2),
    "int4": Tiles(threads_x=4, threads_y=4, thread_m=2, thread_n=2, block_k=8),
}

#: Use the ``dp4a`` instruction (inline PTX) on a GPU. False compiles the plain
#: byte-by-byte device function instead (what the simulator always runs); both
#: give the same int32 for every input.
USE_DP4A = True

#: Threads per block of the int8 kernel's first pass (row sums of a, column
#: sums of b: one thread per row / column); fewer when M and N are smaller.
SUM_THREADS = 128

#: Compute capability that the PTX check in the tests compiles for (dp4a needs
#: sm_61; CUDA 13's NVVM starts at sm_75).
PTX_CC = (7, 5)
