"""
# 10 — Integer and binary matmul: the zero-point algebra, int32 depth, and xor-popcount

A quantized linear layer multiplies codes, not numbers: 8-bit activations with
a zero point times 8-bit weights, summed in int32; or ±1 activations times ±1
weights, one bit each, summed with a popcount. This tutorial derives what an
integer kernel actually computes, why it needs no multiplications by zero
points in its inner loop, how deep a sum can go before int32 overflows, and why
a binary dot product is ``k - 2·popcount(a xor b)``; then it checks
refquant's Numba kernels against the NumPy reference and times them.
"""

# %% [markdown]
# ## The zero-point algebra
#
# With affine codes $x = s_a (a - z_a)$ and $w = s_b (b - z_b)$, a matmul of
# the real values is $s_a s_b$ times the integer sum
#
# $$ c_{mn} = \sum_{k=1}^{K} (a_{mk} - z_a)(b_{kn} - z_b)
#    = \underbrace{\sum_k a_{mk} b_{kn}}_{\text{the GEMM}}
#    - z_b \underbrace{\sum_k a_{mk}}_{\text{row sums of } a}
#    - z_a \underbrace{\sum_k b_{kn}}_{\text{column sums of } b}
#    + K z_a z_b . $$
#
# Only the first term needs the $O(MNK)$ loop; it multiplies raw codes. The
# column sums of the weights and $K z_a z_b$ are computed once when the model is
# loaded; the row sums of the activations cost $O(MK)$ per call. A kernel that
# subtracted the zero points inside its loop would waste the instruction that
# makes it fast: x86's `VPDPBUSD` multiplies unsigned by signed bytes and adds
# four products into each int32 lane, nothing else.

# %% [markdown]
# ## A worked example by hand
#
# $a = [3, 5]$ (uint8, $z_a = 2$), $b = [4, -1]^\top$ (int8, $z_b = 1$):
#
# * directly: $(3-2)(4-1) + (5-2)(-1-1) = 3 - 6 = -3$;
# * expanded: $\sum ab = 12 - 5 = 7$, $z_b \sum a = 8$, $z_a \sum b = 6$,
#   $K z_a z_b = 4$, so $7 - 8 - 6 + 4 = -3$.

# %%
import os
from pathlib import Path

import numpy as np

from refquant.kernels import matmul_int
from refquant.quant.integer import integer_matmul

OUT = Path(os.environ.get("REFQUANT_TUTORIAL_OUT", "tutorial_output"))
OUT.mkdir(parents=True, exist_ok=True)

a = np.array([[3, 5]], np.uint8)
b = np.array([[4], [-1]], np.int8)
hand = -3
print("numpy reference:", integer_matmul(a, b, 2, 1)[0, 0])
print("cpu kernel:     ", matmul_int(a, b, 2, 1, backend="cpu")[0, 0])
assert integer_matmul(a, b, 2, 1)[0, 0] == hand == matmul_int(a, b, 2, 1, backend="cpu")[0, 0]

# %% [markdown]
# The four terms on a bigger problem, computed separately and added up, give
# the reference's integers exactly:

# %%
rng = np.random.default_rng(0)
M, K, N = 8, 300, 5
A = rng.integers(0, 256, (M, K)).astype(np.uint8)
B = rng.integers(-128, 128, (K, N)).astype(np.int8)
za, zb = 128, -3
A64, B64 = A.astype(np.int64), B.astype(np.int64)
gemm = A64 @ B64
terms = gemm - zb * A64.sum(1, keepdims=True) - za * B64.sum(0, keepdims=True) + K * za * zb
assert np.array_equal(terms, integer_matmul(A, B, za, zb))
assert np.array_equal(matmul_int(A, B, za, zb, backend="cpu"), terms)

# %% [markdown]
# ## Signed times signed with an unsigned instruction
#
# `VPDPBUSD` wants its first operand unsigned. For int8 activations
# $a \in [-128, 127]$ the kernel adds 128 (a bit flip) and subtracts the
# extra term it introduced:
#
# $$ \sum_k a_k b_k = \sum_k (a_k + 128)\, b_k \;-\; 128 \sum_k b_k , $$
#
# the second term being one more column sum of the weights. (onnxruntime's
# s8×s8 path does not do this on every CPU, which is why its `MatMulInteger`
# is 15× slower for s8×s8 than for u8×s8 on the machines in
# `benchmarks/bench_kernels.py`.)

# %%
As = rng.integers(-128, 128, (M, K)).astype(np.int8)
shifted = (As.astype(np.int64) + 128) @ B64 - 128 * B64.sum(0, keepdims=True)
assert np.array_equal(shifted, As.astype(np.int64) @ B64)
assert np.array_equal(matmul_int(As, B, backend="cpu"), shifted)

# %% [markdown]
# ## How deep can an int32 sum go?
#
# Each term of an s8×s8 sum is at most $128 \cdot 128 = 2^{14}$ in magnitude,
# so $K$ terms stay inside int32 while $K \cdot 2^{14} \le 2^{31} - 1$, i.e.
# $K \le 131071$. Zero points widen the factors: uint8 codes with $z_a = 0$
# against int8 weights with $z_b = -128$ reach $255 \cdot 255$, and the depth
# falls to 33025. refquant checks this before it runs and refuses a shape
# whose sum could overflow, or computes it in int64 when asked.

# %%
from refquant import RefquantError
from refquant.quant.integer import max_int32_depth

print("s8 x s8:", max_int32_depth("int8", "int8"))
print("u8 x s8, z_b = -128:", max_int32_depth("uint8", "int8", 0, -128))
assert max_int32_depth("int8", "int8") == (2**31 - 1) // 2**14 == 131071
deep = 131072
ones_a = np.full((1, deep), -128, np.int8)
ones_b = np.full((deep, 1), -128, np.int8)
try:
    matmul_int(ones_a, ones_b)
except RefquantError as e:
    print("refused:", str(e)[:100], "...")
exact = matmul_int(ones_a, ones_b, accumulate="int64")[0, 0]
print("int64:", exact, "= 2**31, one more than int32 holds")
assert exact == 2**31

# %% [markdown]
# ## Binary: a dot product of signs is a popcount
#
# Store $\pm 1$ as one bit, 1 for $-1$ (Larq Compute Engine's convention). Two
# elements agree exactly when their bits are equal, so over $K$ elements
#
# $$ a \cdot b = \#\text{agree} - \#\text{disagree}
#    = K - 2\,\#\text{disagree} = K - 2\,\mathrm{popcount}(a \oplus b). $$
#
# Eight elements by hand: $a = [+,-,-,+,+,+,-,+]$, $b = [+,+,-,-,+,-,-,+]$
# disagree in positions 1, 3 and 5, so $a \cdot b = 8 - 2 \cdot 3 = 2$.

# %%
from refquant.kernels.binary import matmul_binary, pack_signs

sa = np.array([1, -1, -1, 1, 1, 1, -1, 1], np.float32)
sb = np.array([1, 1, -1, -1, 1, -1, -1, 1], np.float32)
pa, pb = pack_signs(sa[None], word="uint8"), pack_signs(sb[None], word="uint8")


def bits(word, n=8):
    """The bits of a packed word, element 0 first (least significant bit first)."""
    return "".join(str((int(word) >> i) & 1) for i in range(n))


print("a       ", bits(pa[0, 0]))
print("b       ", bits(pb[0, 0]))
print("a xor b ", bits(pa[0, 0] ^ pb[0, 0]), "-> popcount", int(pa[0, 0] ^ pb[0, 0]).bit_count())
hand_binary = 2
got = matmul_binary(pa, pb, 8)[0, 0]
assert got == hand_binary == int(sa @ sb)

# %% [markdown]
# On random ±1 matrices the packed kernel equals the float matmul of the signs
# for any $K$, including a $K$ that does not fill the last 64-bit word (its
# padding bits are zero in both operands, so they never differ):

# %%
Kb = 1000
X = np.where(rng.random((16, Kb)) < 0.5, -1.0, 1.0).astype(np.float32)
W = np.where(rng.random((12, Kb)) < 0.5, -1.0, 1.0).astype(np.float32)
C = matmul_binary(pack_signs(X), pack_signs(W), Kb, backend="cpu")
assert np.array_equal(C, (X @ W.T).astype(np.int32))

# %% [markdown]
# ## How fast
#
# `benchmarks/bench_kernels.py` prints the full table (every size, onnxruntime
# and torch side by side). Here a small ladder on this machine: GOP/s of the
# int8 kernel, the exact int8 route through float64 BLAS, and float32 BLAS on
# the same shapes (one op = one multiply-add counted as two).

# %%
import time

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt


def gops(fn, n, repeat=3):
    fn()  # compile / warm up
    best = min(_timed(fn) for _ in range(repeat))
    return 2 * n**3 / best / 1e9


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


sizes = [64, 128, 256, 512]
rows = []
for n in sizes:
    ai = rng.integers(0, 256, (n, n)).astype(np.uint8)
    bi = rng.integers(-128, 128, (n, n)).astype(np.int8)
    af, bf = ai.astype(np.float32), bi.astype(np.float32)
    ad, bd = ai.astype(np.float64), bi.astype(np.float64)
    rows.append((n, gops(lambda ai=ai, bi=bi: matmul_int(ai, bi, backend="cpu"), n),
                 gops(lambda ad=ad, bd=bd: ad @ bd, n), gops(lambda af=af, bf=bf: af @ bf, n)))
print(f"{'n':>5}{'int8 kernel':>14}{'float64 route':>15}{'float32 BLAS':>14}   GOP/s")
for n, k8, f64, f32 in rows:
    print(f"{n:>5}{k8:>14.1f}{f64:>15.1f}{f32:>14.1f}")

fig, ax = plt.subplots(figsize=(6, 3.5))
for i, label in enumerate(["int8 kernel (refquant, Numba)", "exact int8 via float64 BLAS",
                           "float32 BLAS"]):
    ax.plot(sizes, [r[i + 1] for r in rows], marker="o", label=label)
ax.set_xscale("log", base=2)
ax.set_xlabel("n (n x n x n)")
ax.set_ylabel("GOP/s")
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "10_matmul_gops.png")
print("plot:", OUT / "10_matmul_gops.png")

# %% [markdown]
# ## Checks
#
# The hand-worked values equal refquant's kernels.

# %%
assert matmul_int(a, b, 2, 1)[0, 0] == hand
assert matmul_binary(pa, pb, 8)[0, 0] == hand_binary
