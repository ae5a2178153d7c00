"""
# 12 — Quantized checkpoints: one layer in seven layouts, byte by byte

One small linear layer (a $64 \\times 256$ float32 weight) is stored the way
GPTQ, AWQ, bitsandbytes NF4, compressed-tensors ``pack-quantized``, FP8 block
(DeepSeek-V3 style), MLX and GGUF (Q4_K, IQ4_XS) store it. For each we list the
tensors written (names, dtypes, shapes, bytes per weight), take the first packed
word apart bit by bit, read it back with ``refquant.io.open`` (``logical_names``,
``scheme``, ``dequantize``), and finish with what ``refquant diff`` prints: the
SQNR of each layout against the original.
"""

# %% [markdown]
# ## The formulas: what the layouts store
#
# Every layout here stores small integer (or small float) *codes* $q$ plus a few
# numbers per group of $g$ weights. They differ in the dequantization formula:
#
# | layout | dequantization of weight $(n, k)$, group $j = \lfloor k / g \rfloor$ |
# |---|---|
# | GPTQ, AWQ | $\hat w = s_{nj}\,(q_{nk} - z_{nj})$, $q, z \in [0, 15]$ |
# | compressed-tensors (sym.) | $\hat w = s_{nj}\, q_{nk}$, $q \in [-8, 7]$ stored as $q + 8$ |
# | MLX | $\hat w = s_{nj}\, q_{nk} + b_{nj}$ (a *bias*, not a zero point) |
# | bitsandbytes NF4 | $\hat w = m_j \cdot \mathrm{NF4}[q]$, $m_j$ = absmax of the block |
# | FP8 block | $\hat w = s_{t}\, \mathrm{e4m3}(w / s_t)$, $s_t = \max_{\text{tile}} |w| / 448$ |
#
# With $b$-bit codes packed LSB first into 32-bit words, code $i$ of a row sits
# in word $\lfloor i b / 32 \rfloor$ at bits $[\, (i b) \bmod 32,\ (i b) \bmod 32 + b)$:
#
# $$ q_i = \left( \mathrm{word}_{\lfloor 8i/32 \rfloor} \gg 4\,(i \bmod 8) \right) \,\&\, 15
#    \qquad (b = 4). $$
#
# The layouts differ in *which axis* the words run along (GPTQ: the input
# dimension, so ``qweight`` is $(K/8, N)$; AWQ: the output dimension, $(K, N/8)$,
# with nibbles in the interleaved order $[0, 2, 4, 6, 1, 3, 5, 7]$; MLX and
# compressed-tensors: along each row, $(N, K/8)$) and in how scale and zero are
# shaped.

# %%
import json
import math
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import refquant.io as rio
from refquant.compress import compress
from refquant.io.layouts.bnb import bnb_4bit_tensors
from refquant.io.layouts.ctensors import ct_tensors
from refquant.io.layouts.fp8 import fp8_block_tensors
from refquant.io.layouts.gptq import AWQ_ORDER, awq_tensors, gptq_tensors
from refquant.io.layouts.mlx import mlx_tensors
from refquant.testing import compare_checkpoints

OUT = Path(os.environ.get("REFQUANT_TUTORIAL_OUT", "tutorial_output"))
OUT.mkdir(parents=True, exist_ok=True)

rng = np.random.default_rng(12)
N, K = 64, 256
W = (rng.standard_normal((N, K)) * 0.05).astype(np.float32)
NAME = "layer.weight"  # the logical name every layout is read back under
ORIG = rio.save({NAME: W}, OUT / "original.safetensors", overwrite=True)
print("original:", W.shape, W.dtype, W.nbytes, "bytes")

# %% [markdown]
# ## Codes by hand: min-max, 4 bits, groups of $g$
#
# For a group with minimum $\ell$ and maximum $h$: $s = (h - \ell) / 15$,
# $z = \mathrm{round}(-\ell / s)$, $q = \mathrm{clip}(\mathrm{round}(w/s) + z, 0, 15)$.
# The scale is rounded to float16 *before* the codes are computed, since float16
# is what the file holds. MLX stores the bias $b = \ell$ instead of $z$:
# $q = \mathrm{clip}(\mathrm{round}((w - b)/s), 0, 15)$.


# %%
def minmax_codes(w, g):
    wg = w.reshape(w.shape[0], -1, g)
    lo, hi = wg.min(-1), wg.max(-1)
    s = ((hi - lo) / 15).astype(np.float16)
    z = np.clip(np.round(-lo / s.astype(np.float32)), 0, 15).astype(np.int64)
    q = np.clip(np.round(wg / s[..., None].astype(np.float32)) + z[..., None], 0, 15)
    return q.reshape(w.shape).astype(np.int64), s, z


def table(t):
    """The tensors a layout writes: name, dtype, shape, bytes, bits per weight."""
    rows = [f"    {'tensor':<46}{'dtype':<14}{'shape':<14}{'bytes':>7}"]
    total = 0
    for k, v in t.items():
        v = np.asarray(v)
        total += v.nbytes
        rows.append(f"    {k:<46}{str(v.dtype):<14}{str(v.shape):<14}{v.nbytes:>7}")
    rows.append(f"    total {total} bytes = {8 * total / W.size:.3f} bits per weight")
    print("\n".join(rows))
    return total


def nibbles(word):
    """The eight 4-bit fields of a 32-bit word, field 0 (lowest bits) first."""
    word = int(word) & 0xFFFFFFFF
    fields = [(word >> (4 * i)) & 15 for i in range(8)]
    bits = " ".join(f"{f:04b}" for f in reversed(fields))
    print(f"    0x{word:08x} = {bits}  (fields 7..0)")
    return fields


def read_back(folder):
    with rio.open(folder) as ck:
        names = ck.logical_names()
        sch = ck.scheme(NAME)
        w_hat = np.asarray(ck.dequantize(NAME), np.float32)
    print("    logical_names():", names)
    print("    scheme:", sch.format, "bits", sch.bits, "group", getattr(sch, "group_size", None))
    return w_hat


stored = {}  # layout -> (folder or file, bytes)

# %% [markdown]
# ## GPTQ (v1, AutoGPTQ)
#
# ``qweight`` int32 $(K/8, N)$: eight input rows of one output column per word.
# ``qzeros`` int32 $(G, N/8)$ holds $z - 1$ (the v1 off-by-one; so $z = 0$ has no
# encoding), ``scales`` float16 $(G, N)$, ``g_idx`` int32 $(K,)$: the group of
# each input (act-order checkpoints permute it).

# %%
G128 = 128
q, s, z = minmax_codes(W, G128)
assert z.min() >= 1  # v1 stores z - 1
t = gptq_tensors("layer", q, s, z, 4)
stored["GPTQ"] = (rio.save(t, OUT / "gptq", layout="gptq", bits=4, group_size=G128,
                           desc_act=False, overwrite=True), table(t))
print("qweight[0, 0] holds q[0, 0..7] (column 0, inputs 0..7):")
gptq_word = t["layer.qweight"][0, 0]
f = nibbles(gptq_word)
assert f == q[0, :8].tolist()
gptq_hat = read_back(OUT / "gptq")

# %% [markdown]
# ## AWQ (GEMM)
#
# The words run along the *output* dimension: ``qweight`` int32 $(K, N/8)$, and
# nibble $i$ of word $c$ of input row $r$ is output column $8c + o_i$ with
# $o = [0, 2, 4, 6, 1, 3, 5, 7]$ (the order the GEMM kernel unpacks in pairs).
# By hand for input 0, word 0: nibbles 0..7 are columns 0, 2, 4, 6, 1, 3, 5, 7.
# ``qzeros`` $(G, N/8)$ uses the same order and stores $z$ itself; ``scales``
# float16 $(G, N)$.

# %%
t = awq_tensors("layer", q, s, z)
stored["AWQ"] = (rio.save(t, OUT / "awq", layout="awq", group_size=G128, overwrite=True), table(t))
print("qweight[0, 0] holds input 0 of output columns 0, 2, 4, 6, 1, 3, 5, 7:")
awq_word = t["layer.qweight"][0, 0]
f = nibbles(awq_word)
hand_awq = [int(q[c, 0]) for c in (0, 2, 4, 6, 1, 3, 5, 7)]
assert f == hand_awq and list(AWQ_ORDER) == [0, 2, 4, 6, 1, 3, 5, 7]
awq_hat = read_back(OUT / "awq")

# %% [markdown]
# ## The first word of each, drawn
#
# GPTQ packs eight *inputs* of one output column, AWQ eight *outputs* of one
# input, interleaved; the drawing labels each nibble with the weight $(n, k)$ it
# holds.

# %%
fig, axes = plt.subplots(2, 1, figsize=(9, 2.6))
for ax, (title, word, who) in zip(axes, (
        ("GPTQ qweight[0, 0]", int(gptq_word), [(0, i) for i in range(8)]),
        ("AWQ qweight[0, 0]", int(awq_word), [(o, 0) for o in AWQ_ORDER])), strict=True):
    for i in range(8):
        x = 7 - i  # most significant nibble drawn on the left
        ax.add_patch(plt.Rectangle((x, 0), 1, 1, facecolor=plt.cm.tab10(i % 10), alpha=0.5,
                                   edgecolor="black"))
        ax.text(x + 0.5, 0.5, f"bits {4 * i}-{4 * i + 3}\n{(word >> 4 * i) & 15:04b}\nw{who[i]}",
                ha="center", va="center", fontsize=7)
    ax.set_xlim(0, 8)
    ax.set_ylim(0, 1)
    ax.axis("off")
    ax.set_title(f"{title} = 0x{word & 0xFFFFFFFF:08x}", fontsize=9)
fig.tight_layout()
fig.savefig(OUT / "first_words.png")

# %% [markdown]
# ## compressed-tensors ``pack-quantized`` (llm-compressor W4A16)
#
# Symmetric: $s = \max|w| / 7$ per group, $q = \mathrm{clip}(\mathrm{round}(w/s), -8, 7)$,
# stored as the unsigned $q + 8$ packed along each row: ``weight_packed`` int32
# $(N, K/8)$, ``weight_scale`` $(N, G)$ and ``weight_shape`` (the logical shape,
# since a packed width can round up).

# %%
wg = W.reshape(N, -1, G128)
s_ct = (np.abs(wg).max(-1) / 7).astype(np.float16)
q_ct = np.clip(np.round(wg / s_ct[..., None].astype(np.float32)), -8, 7).reshape(N, K).astype(np.int64)
t = ct_tensors("layer", q_ct, s_ct, "pack-quantized", 4)
stored["compressed-tensors"] = (rio.save(t, OUT / "ct", layout="pack-quantized", bits=4,
                                         group_size=G128, overwrite=True), table(t))
print("weight_packed[0, 0] holds q[0, 0..7] + 8:")
f = nibbles(t["layer.weight_packed"][0, 0])
assert f == (q_ct[0, :8] + 8).tolist()
ct_hat = read_back(OUT / "ct")

# %% [markdown]
# ## MLX
#
# ``weight`` uint32 $(N, K/8)$ packed along rows, ``scales`` and ``biases``
# float16 $(N, K/g)$, here $g = 64$ (mlx-lm's default). No zero point: the
# bias is the group minimum, so $\hat w = s q + b$ is exact at $q = 0$.

# %%
G64 = 64
wg = W.reshape(N, -1, G64)
b_mlx = wg.min(-1).astype(np.float16)
s_mlx = ((wg.max(-1) - wg.min(-1)) / 15).astype(np.float16)
q_mlx = np.clip(np.round((wg - b_mlx[..., None].astype(np.float32)) / s_mlx[..., None].astype(np.float32)),
                0, 15).reshape(N, K).astype(np.int64)
t = mlx_tensors("layer", q_mlx, s_mlx, b_mlx, 4)
stored["MLX"] = (rio.save(t, OUT / "mlx", layout="mlx", bits=4, group_size=G64, overwrite=True), table(t))
print("weight[0, 0] holds q[0, 0..7]:")
f = nibbles(t["layer.weight"][0, 0])
assert f == q_mlx[0, :8].tolist()
mlx_hat = read_back(OUT / "mlx")

# %% [markdown]
# ## bitsandbytes NF4
#
# The weight is flattened, cut into blocks of 64, each scaled by its absmax
# $m_j$ into $[-1, 1]$ and rounded to the nearest of the 16 NF4 levels (normal
# quantiles). Two codes per byte, the *first* code in the *high* nibble:
# ``weight`` uint8 $(NK/2, 1)$, ``absmax`` float32 per block, ``quant_map`` the 16
# levels, and a ``quant_state.bitsandbytes__nf4`` tensor that is JSON in uint8.

# %%
t = bnb_4bit_tensors("layer", W, quant_type="nf4", blocksize=64)
stored["bnb NF4"] = (rio.save(t, OUT / "bnb", layout="bitsandbytes-nf4", overwrite=True), table(t))
byte0 = int(np.asarray(t["layer.weight"]).reshape(-1)[0])
qs = bytes(np.asarray(t["layer.weight.quant_state.bitsandbytes__nf4"])).decode()
print("quant_state JSON:", qs)
print(f"weight byte 0 = 0x{byte0:02x} = {byte0 >> 4:04b} {byte0 & 15:04b}: codes of w[0,0], w[0,1]")
nf4 = np.asarray(t["layer.weight.quant_map"], np.float64)
m0 = float(np.abs(W.reshape(-1)[:64]).max())
hand_nf4 = [int(np.argmin(np.abs(nf4 - W[0, i] / m0))) for i in range(2)]
assert [byte0 >> 4, byte0 & 15] == hand_nf4
assert json.loads(qs)["blocksize"] == 64
bnb_hat = read_back(OUT / "bnb")

# %% [markdown]
# ## FP8 block (DeepSeek-V3 / transformers ``FineGrainedFP8``)
#
# No packing: ``weight`` is float8_e4m3fn $(N, K)$, one byte per weight, and
# ``weight_scale_inv`` float32 holds one scale per $128 \times 128$ tile (the name
# says *inverse* because the loader multiplies by it). Byte $=$ sign (1 bit),
# exponent (4 bits, bias 7), mantissa (3 bits).

# %%
t = fp8_block_tensors("layer", W)
stored["FP8 block"] = (rio.save(t, OUT / "fp8", layout="fp8-block", block=(128, 128), overwrite=True),
                       table(t))
e = int(np.asarray(t["layer.weight"]).view(np.uint8)[0, 0])
sign, ex, man = e >> 7, (e >> 3) & 15, e & 7
v = (-1) ** sign * (2.0 ** (ex - 7) * (1 + man / 8) if ex else 2.0 ** -6 * man / 8)
print(f"weight[0, 0] byte 0x{e:02x} = {sign:b} {ex:04b} {man:03b} -> {v} (times the tile scale)")
assert v == float(np.asarray(t["layer.weight"])[0, 0].astype(np.float32))
fp8_hat = read_back(OUT / "fp8")

# %% [markdown]
# ## GGUF Q4_K and IQ4_XS
#
# GGUF stores each row as super-blocks of 256 weights. **Q4_K**: 144 bytes each:
# ``d`` and ``dmin`` float16, twelve bytes of 6-bit scales and mins for the
# eight sub-blocks of 32, then 128 bytes of nibbles ($\hat w = d\,s_i\,q - d_{\min} m_i$):
# $144 \cdot 8 / 256 = 4.5$ bits per weight. **IQ4_XS**: 136 bytes: ``d`` float16,
# the 6-bit sub-block scales split in ``scales_h`` (2 bytes) and ``scales_l``
# (4 bytes), and 128 bytes of nibbles indexing a fixed non-uniform table of 16
# levels: $136 \cdot 8 / 256 = 4.25$ bits per weight. We quantize with
# ``refquant compress`` and read the bytes of the first super-block; the first
# weight of Q4_K, $d \cdot s_0 \cdot q - d_{\min} \cdot m_0$ from those bytes by
# hand, is checked against ``dequantize`` at the end.

# %%
for scheme in ("q4_k", "iq4_xs"):
    dst = OUT / f"{scheme}.gguf"
    compress(ORIG, dst, scheme=scheme, overwrite=True)
    with rio.open(dst) as ck:
        (gname,) = ck.logical_names()
        info = ck.info(gname)
        raw = np.asarray(ck[gname]).view(np.uint8).reshape(-1)
        sch = ck.scheme(gname)
        print(f"{scheme}: tensor {gname!r} {sch.format} {info.nbytes} bytes "
              f"= {8 * info.nbytes / W.size} bits per weight")
        d = float(raw[:2].view(np.float16)[0])
        print(f"    first super-block: d = {d:.6g} (bytes {raw[0]:02x} {raw[1]:02x})")
        if scheme == "q4_k":  # d, dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles
            dmin = float(raw[2:4].view(np.float16)[0])
            sc = raw[4:16]
            sub0 = (int(sc[0]) & 63, int(sc[4]) & 63)  # sub-block 0: scale, min (6 bits each)
            print(f"    dmin = {dmin:.6g}; scales/mins bytes {sc.tobytes().hex(' ')}")
            print(f"    sub-block 0: scale {sub0[0]}, min {sub0[1]}; first nibble byte "
                  f"0x{raw[16]:02x} = codes {raw[16] & 15} (w[0,0]) and {raw[16] >> 4} (w[0,32])")
            blk = np.asarray(ck.dequantize(gname), np.float32)[0, 0]
            hand_q4k = np.float32(d * sub0[0] * (raw[16] & 15) - dmin * sub0[1])
        else:  # d, scales_h (2 bytes), scales_l (4 bytes), 128 bytes of nibbles
            print(f"    scales_h {raw[2:4].tobytes().hex(' ')}, scales_l {raw[4:8].tobytes().hex(' ')}, "
                  f"first nibble byte 0x{raw[8]:02x}")
    stored["GGUF " + scheme.upper()] = (dst, info.nbytes)
    assert info.nbytes == {"q4_k": 144, "iq4_xs": 136}[scheme] * W.size // 256

# %% [markdown]
# ## ``refquant diff``: each layout against the original
#
# $\mathrm{SQNR} = 10 \log_{10} \sum w^2 / \sum (w - \hat w)^2$, in dB. Plain
# 4-bit min-max on a Gaussian layer lands near 20 dB (the range is set by the
# group's extremes, so most weights use few levels); Q4_K and IQ4_XS search
# their scales per sub-block of 32 and gain 2-3 dB; FP8 (3 mantissa bits and a
# floating exponent) gets about 31 dB for twice the bytes. GPTQ's bytes include
# ``g_idx`` (32 bits per *input*, 0.5 bits per weight for this small layer).

# %%
sqnr = {}
for label, (path, _) in stored.items():
    (row,) = compare_checkpoints(ORIG, path)
    sqnr[label] = row.sqnr_db
    print(f"{label:<20}{row.scheme:<16}{row.sqnr_db:7.2f} dB   max |err| {row.max_abs_error:.4g}  "
          f"{row.bytes_quantized} bytes ({8 * row.bytes_quantized / W.size:.2f} bits/weight)")

fig, ax = plt.subplots(figsize=(8, 3.2))
labels = list(sqnr)
ax.bar(labels, [sqnr[k] for k in labels], color="#4c72b0")
for i, k in enumerate(labels):
    ax.text(i, sqnr[k] + 0.3, f"{8 * stored[k][1] / W.size:.2f} b/w", ha="center", fontsize=8)
ax.set_ylabel("SQNR (dB)")
ax.set_ylim(0, max(sqnr.values()) + 4)
ax.set_title("one 64×256 layer, seven layouts (label: bits per weight stored)")
ax.tick_params(axis="x", labelrotation=25)
fig.tight_layout()
fig.savefig(OUT / "sqnr_by_layout.png")

# %% [markdown]
# ## The hand-worked values, by refquant
#
# GPTQ and AWQ hold the same codes, scales and zeros, so they dequantize to the
# same $s(q - z)$ (computed in float16, as the kernels do); compressed-tensors
# gives $s\,q$; MLX $s q + b$; the SQNR computed here by hand equals ``diff``'s.

# %%
g = np.arange(K) // G128
hand = ((q - z[:, g]) * s[:, g].astype(np.float32)).astype(np.float16).astype(np.float32)
assert np.array_equal(gptq_hat, hand) and np.array_equal(awq_hat, hand)
hand_ct = (q_ct * s_ct[:, g].astype(np.float32)).astype(np.float16).astype(np.float32)
assert np.array_equal(ct_hat, hand_ct)
g64 = np.arange(K) // G64
hand_mlx = (s_mlx[:, g64] * q_mlx.astype(np.float16) + b_mlx[:, g64]).astype(np.float32)
assert np.array_equal(mlx_hat, hand_mlx)
for label, w_hat in (("GPTQ", gptq_hat), ("bnb NF4", bnb_hat), ("FP8 block", fp8_hat)):
    e64 = W.astype(np.float64) - w_hat
    by_hand = 10 * math.log10(float(np.sum(W.astype(np.float64) ** 2)) / float(np.sum(e64 * e64)))
    assert math.isclose(by_hand, sqnr[label], rel_tol=1e-9), (label, by_hand, sqnr[label])
assert blk == hand_q4k, (blk, hand_q4k)  # Q4_K's first weight from its bytes, by hand
print("hand-worked values match refquant")
