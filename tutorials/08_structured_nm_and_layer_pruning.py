"""
# 08 — Structured pruning with dependencies, 2:4 sparsity, and layer pruning

Unstructured pruning (tutorial 07) zeroes single weights; the arrays keep their
shape. Here we remove whole **channels** (the arrays get physically smaller),
impose **2:4** semi-structured sparsity (what sparse tensor cores run), and
remove whole **layers** (blocks), judged by ablation and by Block Influence.
Everything runs on the bundled residual MLP.
"""

# %% [markdown]
# ## Channel pruning: what must go together
#
# The bundled model computes
#
# $$ h_0 = \mathrm{relu}(W_e x + b_e), \qquad h_{i+1} = h_i + \mathrm{relu}(W_i h_i + b_i), \qquad
#    y = W_h h_4 + b_h. $$
#
# Removing hidden unit $c$ of the embedding deletes row $c$ of $W_e$ and entry
# $c$ of $b_e$, and the consumers must lose their input column $c$. But the
# consumers here are residual blocks: $h_{i+1}$ is a **sum** of $h_i$ and the
# block's output, so unit $c$ of $h_0$ is also unit $c$ of $h_1, \dots, h_4$.
# Removing it from the embedding alone leaves a 127-wide $h_0$ added to a
# 128-wide block output. The residual stream ties all of them into one
# **group**: row $c$ **and** column $c$ of every $W_i$, entry $c$ of every
# $b_i$, and column $c$ of the head.
#
# A channel's score is a norm of everything the group removes with it,
# reduced over the group's tensors (Torch-Pruning's group reduction):
#
# $$ s_c = \sum_{t \in G} \lVert W_t[\ldots, c, \ldots] \rVert_2 . $$

# %%
import numpy as np

from refquant.models import digits_mlp_accuracy, digits_mlp_forward, load_digits_mlp
from refquant.prune.structured import structured_prune

params = load_digits_mlp()
base_acc = digits_mlp_accuracy(params)
print(f"dense accuracy: {base_acc:.4f}")

# the naive coupling: embed rows -> embed bias and the input columns of blocks.0 only
naive = structured_prune(params, {"embed.weight:0": ["embed.bias:0", "blocks.0.weight:1"]}, 0.25)
try:
    digits_mlp_accuracy(naive.arrays)
    naive_ok = True
except ValueError as e:  # numpy: operands could not be broadcast (96 vs 128)
    naive_ok = False
    print("naive coupling breaks the residual add:", str(e).splitlines()[0])
assert not naive_ok

# %% [markdown]
# The residual-tied group, declared once: every tensor whose axis indexes the
# residual stream.

# %%
residual = ["embed.bias:0", "head.weight:1"] + [
    f"blocks.{i}.{t}" for i in range(4) for t in ("weight:0", "weight:1", "bias:0")
]
couplings = {"embed.weight:0": residual}
r = structured_prune(params, couplings, 0.25)
print({k: v.shape for k, v in r.arrays.items() if k in r.masks})
print(f"25% of the residual width removed: accuracy {digits_mlp_accuracy(r.arrays):.4f}")

fractions = np.linspace(0, 0.75, 7)
acc_group = [digits_mlp_accuracy(structured_prune(params, couplings, f).arrays) for f in fractions]
acc_embed_only = [
    digits_mlp_accuracy(structured_prune(params, couplings, f, score_members=["embed.weight"]).arrays)
    for f in fractions
]

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt

# plots go into one folder the tutorial names (REFQUANT_TUTORIAL_OUT), not the working directory
OUT = Path(os.environ.get("REFQUANT_TUTORIAL_OUT", "tutorial_output"))
OUT.mkdir(parents=True, exist_ok=True)

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(fractions, acc_group, "o-", label="score: L2 summed over the whole group")
ax.plot(fractions, acc_embed_only, "s--", label="score: L2 of embed rows only")
ax.axhline(base_acc, color="grey", lw=0.8)
ax.set_xlabel("fraction of residual channels removed")
ax.set_ylabel("test accuracy")
ax.legend()
fig.tight_layout()
plt.savefig(OUT / "channel_pruning.png")

# %% [markdown]
# ## 2:4 semi-structured sparsity
#
# Keep the $N = 2$ largest of every $M = 4$ consecutive weights along the
# input axis (the axis a sparse tensor core reduces over):
#
# $$ \text{mask}_i = [\ \mathrm{rank}_{G_j}(|w_i|) \ge M - N\ ]. $$
#
# The peers do not agree on what "N:M" means: NVIDIA's 2:4 keeps 2, wanda's
# `prune_n=1, prune_m=4` **prunes** 1, tfmot's `(1, 4)` means 1 zero. refquant
# takes explicit keywords, `keep=` and `group=`.
#
# By hand, for the row $w = [0.3, -1.2, 0.05, 0.8 \mid -0.4, 0.0, 2.0, -2.0]$:
# group 1 keeps $-1.2$ and $0.8$; group 2 keeps $2.0$ and $-2.0$:
# mask $= [0,1,0,1 \mid 0,0,1,1]$.
#
# In PyTorch's compressed layout each group stores its two kept values and a
# 4-bit code, the two kept positions $i_0 | i_1 \ll 2$: group 1 keeps positions
# 1 and 3, so $1 | 3 \ll 2 = 13 = \mathtt{0b1101}$; group 2 keeps 2 and 3:
# $2 | 3 \ll 2 = 14 = \mathtt{0b1110}$.

# %%
from refquant.prune.nm import nm_keywords, nm_mask, transposable_nm_mask

w_row = np.array([0.3, -1.2, 0.05, 0.8, -0.4, 0.0, 2.0, -2.0])
mask_row = nm_mask(np.abs(w_row), **nm_keywords("2:4", "nvidia"))
print("2:4 mask of the hand row:", mask_row.astype(int))
print("wanda '1:4' means", nm_keywords("1:4", "wanda"), "; tfmot (1, 4) means", nm_keywords((1, 4), "tfmot"))


def two_four(p, names, scores=None):
    out = dict(p)
    for n in names:
        s = np.abs(p[n]) if scores is None else scores[n]
        out[n] = np.where(nm_mask(s, keep=2, group=4, axis=1), p[n], 0).astype(p[n].dtype)
    return out


blocks = [f"blocks.{i}.weight" for i in range(4)]
acc_one = digits_mlp_accuracy(two_four(params, ["blocks.1.weight"]))
acc_all = digits_mlp_accuracy(two_four(params, blocks))
# Wanda's score |W_ij| * ||X_j||_2, with X_j the calibration input of the block
_, hidden = digits_mlp_forward(params, params["x_calib"], return_hidden=True)
wanda = {f"blocks.{i}.weight": np.abs(params[f"blocks.{i}.weight"]) * np.linalg.norm(hidden[i], axis=0)
         for i in range(4)}
acc_wanda = digits_mlp_accuracy(two_four(params, blocks, wanda))
print(f"2:4 on blocks.1: {acc_one:.4f}; on all blocks (|w|): {acc_all:.4f}; (Wanda): {acc_wanda:.4f}")

# a transposable 2:4 mask (apex ASP): rows and columns of every 4x4 tile keep 2
t_mask = transposable_nm_mask(np.abs(params["blocks.1.weight"]), method="exhaustive")
assert (t_mask.reshape(32, 4, 32, 4).sum(axis=1) == 2).all()
kept_1d = np.abs(params["blocks.1.weight"])[nm_mask(np.abs(params["blocks.1.weight"]), keep=2, group=4)].sum()
kept_2d = np.abs(params["blocks.1.weight"])[t_mask].sum()
print(f"|w| kept: 1-D 2:4 {kept_1d:.2f}, transposable 2:4 {kept_2d:.2f} (a stricter pattern keeps less)")

# %% [markdown]
# The compressed layout PyTorch's sparse kernels take: half the values, plus
# one 16-bit metadata word per 16 dense columns, reordered for CUTLASS.

# %%
from refquant.prune.layouts import semi_structured_compress, semi_structured_decompress

w24 = two_four(params, ["blocks.1.weight"])["blocks.1.weight"].astype(np.float16)
values, meta = semi_structured_compress(w24)
print("values", values.shape, values.dtype, "metadata", meta.shape, meta.dtype)
assert np.array_equal(semi_structured_decompress(values, meta), w24)
try:
    import torch
    from torch.sparse._semi_structured_conversions import sparse_semi_structured_from_dense_cutlass

    tv, tm = sparse_semi_structured_from_dense_cutlass(torch.from_numpy(w24))
    assert np.array_equal(values, tv.numpy()) and np.array_equal(meta, tm.numpy())
    print("torch's CPU conversion gives the same values and metadata, bit for bit")
except ImportError:
    print("torch is not installed: peer check skipped")

fig, axes = plt.subplots(1, 2, figsize=(7, 3.2))
axes[0].imshow(nm_mask(np.abs(params["blocks.1.weight"]), keep=2, group=4)[:16, :16], cmap="gray_r")
axes[0].set_title("2:4 along rows (16x16 corner)")
axes[1].imshow(t_mask[:16, :16], cmap="gray_r")
axes[1].set_title("transposable 2:4")
fig.tight_layout()
plt.savefig(OUT / "two_four_masks.png")

# %% [markdown]
# ## Layer pruning: which blocks matter?
#
# **Ablation** (the founding article's "cross-validation" criterion): skip
# block $i$ and measure held-out accuracy; importance is the accuracy lost.
#
# **Block Influence** (ShortGPT): how much a block turns its input,
#
# $$ BI_i = 1 - \frac1T \sum_t \frac{h_{i,t}^\top h_{i+1,t}}{\lVert h_{i,t}\rVert\,\lVert h_{i+1,t}\rVert}, $$
#
# needs only one forward pass on calibration data. **Angular distance**
# (Gromov et al.) $d = \arccos(\cos)/\pi$ between $h_\ell$ and $h_{\ell+n}$ picks
# the span of $n$ blocks whose removal moves the state least.

# %%
from refquant.prune.layers import (
    ablation_importance,
    block_influence,
    choose_layers_to_drop,
    choose_span_to_drop,
)

abl = ablation_importance(4, lambda skip: digits_mlp_accuracy(params, skip_blocks=skip))
bi = block_influence(hidden)
start, dist = choose_span_to_drop(hidden, 2)
print("ablation importance (accuracy lost):", np.round(abl.importance, 4))
print("Block Influence:                    ", np.round(bi, 4))
print("drop 2 by ablation:", choose_layers_to_drop(abl.importance, 2),
      "by BI:", choose_layers_to_drop(bi, 2), "; contiguous span by angle starts at", start)
for drop in (choose_layers_to_drop(abl.importance, 2), choose_layers_to_drop(bi, 2)):
    print(f"  skipping {drop.tolist()}: accuracy {digits_mlp_accuracy(params, skip_blocks=tuple(drop)):.4f}")

fig, ax1 = plt.subplots(figsize=(6, 3.2))
xs = np.arange(4)
ax1.bar(xs - 0.2, abl.importance, 0.4, label="ablation: accuracy lost")
ax2 = ax1.twinx()
ax2.bar(xs + 0.2, bi, 0.4, color="tab:orange", label="Block Influence")
ax1.set_xticks(xs, [f"block {i}" for i in xs])
ax1.set_ylabel("accuracy lost")
ax2.set_ylabel("BI")
fig.legend(loc="lower center", ncol=2)
fig.tight_layout(rect=(0, 0.1, 1, 1))
plt.savefig(OUT / "layer_importance.png")

# %% [markdown]
# Block Influence is a cheap proxy: it measures how far a block rotates the
# hidden state, not how much the classifier needs that rotation. On this
# small model all four blocks have similar BI (about 0.11) while their
# ablation costs differ by a factor of three, so the two criteria can pick
# different blocks; ablation measures what we care about, at the price of
# one evaluation per candidate.
#
# ## Check: the hand-worked 2:4 mask and its metadata

# %%
hand_mask = np.array([0, 1, 0, 1, 0, 0, 1, 1], dtype=bool)
assert np.array_equal(mask_row, hand_mask)
row = np.where(hand_mask, w_row, 0).astype(np.float16)
_, meta_plain = semi_structured_compress(np.tile(row, (32, 4)), reorder=False)
nibbles = [(int(meta_plain[0, 0]) >> (4 * q)) & 0xF for q in range(2)]
assert nibbles == [0b1101, 0b1110]
print("hand-worked 2:4 mask and metadata nibbles confirmed:", hand_mask.astype(int), nibbles)
