"""
# 06 — Block formats: llama.cpp's Q4_0 and Q4_K vs NF4, MXFP4 and int4-g128

A 4-bit weight format is mostly a question of *what is shared by a block*: one
fp16 scale per 32 weights (Q4_0), a scale and a min per 32 inside a 256-weight
super-block with its own fp16 scales (Q4_K), an absmax per 64 weights and a
non-uniform codebook (NF4), a power-of-two scale per 32 (MXFP4), or a scale
and zero point per 128 (int4-g128, as GPTQ/AWQ checkpoints store it). Here we
quantize a real weight matrix with each, at comparable bits per weight, and
compare the error.
"""

# %% [markdown]
# ## Q4_0 by the formula
#
# For each block of 32 weights, ggml's `quantize_row_q4_0_ref` takes the value
# $m$ of largest magnitude *with its sign* (the first one on ties), and
#
# $$d = \frac{m}{-8}, \qquad q_j = \min\!\bigl(15,\ \lfloor x_j/d + 8.5 \rfloor\bigr), \qquad
#   \hat x_j = (q_j - 8)\, d_{16},$$
#
# where the floor is C's truncation of a non-negative float (so ties round
# *up*), $d_{16}$ is $d$ rounded to fp16 (nearest even), and the codes are
# computed with the fp32 $1/d$. Because $d$ has the sign opposite to $m$, $m$
# itself lands exactly on code 0, i.e. $-8d = m$: the grid's extra negative
# level is spent on the largest weight. The block is 2 bytes of $d$ then 16
# bytes, byte $j$ holding $q_j$ (low nibble) and $q_{j+16}$ (high nibble):
# $(2 + 16)\cdot 8 / 32 = 4.5$ bits per weight.
#
# **By hand:** $x_j = (j - 16)/4$, $j = 0..31$, i.e. $-4, -3.75, \dots, 3.75$.
# Then $m = -4$ (at $j = 0$), $d = 0.5$, $1/d = 2$ and $q_j = \lfloor (j-16)/2 + 8.5\rfloor
# = \lfloor j/2 + 0.5 \rfloor$: $q_0 = 0$, $q_1 = 1$ ($x_1 = -3.75$ is a tie between
# $-4$ and $-3.5$ and goes up, $\hat x_1 = -3.5$), $q_2 = 1$, …, $q_{16} = 8$,
# and $q_{31} = \min(15, 16) = 15$, so $x_{31} = 3.75$ saturates to $\hat x_{31} = 3.5$.
# $d_{16} = 0.5$ is fp16 `0x3800`, stored little-endian as `00 38`; the first
# packed byte is $q_0 \,|\, q_{16} \ll 4 = 0 \,|\, 8 \ll 4 =$ `0x80`.

# %%
import numpy as np

from refquant.compat import ggml

x_hand = ((np.arange(32) - 16) / 4).astype(np.float32)
raw_hand = ggml.quantize(x_hand, "q4_0")
deq_hand = ggml.dequantize(raw_hand, "q4_0", (32,))
print("bytes:", " ".join(f"{b:02x}" for b in raw_hand[:6]), "...")
print("x[1], x[31] ->", deq_hand[1], deq_hand[31])

# %% [markdown]
# ## The formats at comparable bits per weight
#
# | format | block | shared per block | bits / weight |
# |---|---|---|---|
# | Q4_0 (ggml) | 32 | fp16 $d$ | 4.5 |
# | Q4_K (ggml) | 256 = 8 × 32 | fp16 $d$, $d_{min}$; 6-bit scale and min per 32 | 4.5 |
# | NF4 (bitsandbytes) | 64 | fp32 absmax, 16 normal-quantile codes | 4.5 |
# | MXFP4 (OCP) | 32 | E8M0 exponent $2^{\lfloor\log_2 a\rfloor - 2}$, e2m1 elements | 4.25 |
# | int4-g128 | 128 | fp16 scale + zero point, codes 0..15 | 4.25 |
#
# Q4_K's scales are found by a weighted least-squares search
# (`make_qkx2_quants`): each sub-block gets an affine grid $\hat x = d s_j q - d_{min} m_j$
# with $q \in 0..15$, not just an absmax. MXFP4's scale is a power of two, so its
# grid is coarse when $a$ sits just below a power of two.
#
# **Block sizes on a 128-column matrix.** ggml blocks run along a row, and a
# row must hold whole blocks: 128 columns hold four Q4_0 blocks but not one
# Q4_K super-block of 256 (`quantize(w, "q4_k")` on a (128, 128) matrix raises
# "row size 128 is not a multiple of q4_k block size 256", and llama.cpp falls
# back to another type for such tensors). Padding a row with zeros would change
# Q4_K's fitted mins and scales, so instead we quantize the matrix as 64 rows
# of 256 (two consecutive rows concatenated): every super-block then holds two
# whole rows' halves of 128 weights, its 32-weight sub-blocks never straddle
# rows, and the error per weight is what a 256-wide row would see. NF4's
# 64-blocks and int4-g128's 128-blocks fit a row as they are.

# %%
from refquant import sqnr_db
from refquant.formats.codebook import (
    NF4_VALUES,
    dequantize_blockwise_absmax,
    quantize_blockwise_absmax,
)
from refquant.formats.mx import dequantize_mx, quantize_mx
from refquant.models import load_digits_mlp
from refquant.quant.qparams import choose_qparams

params = load_digits_mlp()
names = [f"blocks.{i}.weight" for i in range(4)]


def via_ggml(w, t):
    rows = w.reshape(-1, 256) if ggml.block_size(t) == 256 else w  # two rows per 256-row
    return ggml.dequantize(ggml.quantize(rows, t), t, rows.shape).reshape(w.shape)


def via_nf4(w):
    codes, absmax = quantize_blockwise_absmax(w, NF4_VALUES, 64)
    return dequantize_blockwise_absmax(codes, absmax, NF4_VALUES, 64).reshape(w.shape)


def via_mxfp4(w):
    codes, scales = quantize_mx(w, "mxfp4")
    return dequantize_mx(codes, scales, "mxfp4")


def via_int4_g128(w):
    return choose_qparams(w, dtype="uint4", symmetric=False, axis=1, block_size=128).fake_quantize(w)


methods = {
    "Q4_0": (4.5, lambda w: via_ggml(w, "q4_0")),
    "Q4_K": (4.5, lambda w: via_ggml(w, "q4_k")),
    "NF4": (4.5, via_nf4),
    "MXFP4": (4.25, via_mxfp4),
    "int4-g128": (4.25, via_int4_g128),
}
table = {}
for label, (bpw, fn) in methods.items():
    table[label] = [sqnr_db(params[n], fn(params[n])) for n in names]
    print(f"{label:<10} {bpw:5.3f} bpw  SQNR per block (dB): " + "  ".join(f"{s:5.2f}" for s in table[label]))

# %% [markdown]
# On these weights (measured when this was written): Q4_K leads Q4_0 by about
# 1.7 dB at the same 4.5 bits, thanks to its fitted scales and mins; NF4's
# normal-quantile codebook does not beat Q4_0's uniform grid on these
# (not very Gaussian) blocks; MXFP4 pays about 2 dB for its power-of-two scale
# (a block's absmax lands anywhere in $[4, 8)$ scale units, so the top codes
# are either unused or, above 6, clipped), and int4-g128 pays for its 4x
# larger groups.
#
# The ggml ladder from 2 to 8.5 bits per weight on the same matrices places
# these 4-bit formats on a curve: each extra bit is worth about 6 dB.

# %%
ladder = ["q2_k", "q3_k", "q4_0", "q4_k", "q5_0", "q5_k", "q6_k", "q8_0"]
ladder_bits = [ggml.resolve_type(t).bits for t in ladder]
ladder_sqnr = [np.mean([sqnr_db(params[n], via_ggml(params[n], t)) for n in names]) for t in ladder]
for t, b, s in zip(ladder, ladder_bits, ladder_sqnr, strict=True):
    print(f"{t:<6} {b:6.4f} bpw  {s:6.2f} dB")

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt

# plots go into one folder the tutorial names (REFQUANT_TUTORIAL_OUT), not the working directory
OUT = Path(os.environ.get("REFQUANT_TUTORIAL_OUT", "tutorial_output"))
OUT.mkdir(parents=True, exist_ok=True)

fig, ax = plt.subplots(1, 2, figsize=(11, 4))
labels = list(table)
ax[0].bar(labels, [np.mean(table[k]) for k in labels], color="tab:blue")
ax[0].set_ylabel("SQNR (dB), mean over blocks.*.weight")
ax[0].set_title("4-bit block formats on the digits MLP")
ax[0].set_ylim(min(np.mean(v) for v in table.values()) - 2, max(np.mean(v) for v in table.values()) + 1)
ax[1].plot(ladder_bits, ladder_sqnr, "o-", label="ggml ladder")
for k in labels:
    ax[1].plot(methods[k][0], np.mean(table[k]), "s", label=k)
ax[1].set_xlabel("bits per weight")
ax[1].set_ylabel("SQNR (dB)")
ax[1].legend(fontsize=8)
fig.tight_layout()
plt.savefig(OUT / "block_formats.png")

# %% [markdown]
# ## What it costs the model
#
# The accuracy of the digits MLP with its four residual blocks' weights
# replaced by each format's dequantized values.

# %%
from refquant.models import digits_mlp_accuracy

base = digits_mlp_accuracy(params)
print(f"float32 accuracy {base:.4f}")
for label, (_, fn) in methods.items():
    p = dict(params)
    for n in names:
        p[n] = fn(params[n]).astype(np.float32)
    print(f"{label:<10} accuracy {digits_mlp_accuracy(p):.4f}")

# %% [markdown]
# ## Checked against the peers
#
# gguf-py (llama.cpp's Python package) dequantizes every format here; its
# dequantization of refquant's Q4_0 and Q4_K bytes must be the same floats.
# Where libggml-python (or llama-cpp-python) is installed, its `libggml-base`
# (ggml's own C reference, through ctypes) must write the very same bytes.

# %%
w0 = params["blocks.0.weight"]
try:
    import gguf
except ImportError:
    gguf = None
if gguf is None:
    print("gguf not installed: peer check skipped")
else:
    for t in ("Q4_0", "Q4_K"):
        rows = w0.reshape(-1, 256) if t == "Q4_K" else w0
        theirs = gguf.quants.dequantize(ggml.quantize(rows, t), gguf.GGMLQuantizationType[t])
        assert np.array_equal(theirs.reshape(w0.shape), via_ggml(w0, t.lower()))
    print("gguf-py dequantizes refquant's Q4_0 / Q4_K bytes to the same floats")

try:
    lib = ggml.LibGGML()
except Exception as e:  # neither libggml-python nor llama-cpp-python installed
    print("libggml not available, C check skipped:", e)
else:
    for t in ("q4_0", "q4_k"):
        rows = w0.reshape(-1, 256) if t == "q4_k" else w0
        assert np.array_equal(ggml.quantize(rows, t).reshape(-1, ggml.type_size(t)), lib.quantize_row(rows, t))
    print("libggml's quantize_row_q4_0_ref / quantize_row_q4_K_ref write the same bytes")

# %% [markdown]
# ## The hand-worked block, checked

# %%
assert raw_hand[:3].tolist() == [0x00, 0x38, 0x80]
assert raw_hand.size == 18
assert deq_hand[0] == -4.0 and deq_hand[1] == -3.5 and deq_hand[16] == 0.0 and deq_hand[31] == 3.5
print("hand-worked Q4_0 block matches refquant")
