"""
# 13 — Compress a checkpoint: a recipe, the report, and the accuracy ladder

``refquant compress`` is refquant's llama-quantize: it reads a checkpoint one
tensor at a time, decides a scheme for each tensor from a preset or a recipe,
writes the codes and scales, and reports per tensor what it did. This tutorial
saves the bundled digits MLP as a safetensors checkpoint, compresses it with a
TOML recipe written here, reads the report as a table and as JSON, then climbs
the ladder of presets (int8, int4-g128, q8_0, q4_0, nf4, fp8) and plots the
model's accuracy against the bits each weight costs.
"""

# %% [markdown]
# ## The checkpoint
#
# The digits MLP is a residual network on 8×8 images: an embedding
# $h_0 = \mathrm{relu}(W_e x + b_e)$, four blocks
# $h_{i+1} = h_i + \mathrm{relu}(W_i h_i + b_i)$ and a head $W_h h_4 + b_h$.
# Its weights are float32 matrices of 128×64, 128×128 and 10×128, plus biases.

# %%
import os
from pathlib import Path

import numpy as np

from refquant import io as rio
from refquant.models import digits_mlp_accuracy, load_digits_mlp

OUT = Path(os.environ.get("REFQUANT_TUTORIAL_OUT", "tutorial_output"))
OUT.mkdir(parents=True, exist_ok=True)

params = load_digits_mlp()
weights = {k: v for k, v in params.items() if not k.startswith(("x_", "y_"))}  # not the data
src = OUT / "digits_mlp.safetensors"
rio.save(weights, src, overwrite=True)
acc_float = digits_mlp_accuracy(params)
print(f"{src.name}: {src.stat().st_size} bytes, float32 accuracy {acc_float:.4f}")

# %% [markdown]
# ## A recipe
#
# A recipe is an ordered list of rules: the first rule whose pattern (a shell
# glob, or `re:` and a regular expression) matches a tensor's name decides its
# scheme; `"keep"` leaves it alone. Tensors no rule names get the top-level
# `scheme`, except the defaults every weight compressor applies: 1-D tensors
# (biases, norms), embeddings and the output head stay in full precision.
# Here the blocks get q4_0 (32 weights share one float16 scale $d$, codes
# $q \in [0, 15]$, $\hat w = d\,(q - 8)$), the first layer int8 per channel
# ($\hat w = s_r q$, $s_r = \max_j |w_{rj}| / 127$), and the head, small and
# sensitive, q8_0 on purpose. `required = true` makes a rule that matches
# nothing an error rather than a silent no-op.

# %%
recipe = OUT / "digits_recipe.toml"
recipe.write_text('''\
scheme = "q4_0"                 # the weights no rule names

[[rules]]
pattern = "embed.weight"
scheme = "int8"
required = true

[[rules]]
pattern = "head.weight"
scheme = "q8_0"
required = true
''', encoding="utf-8")

# %%
from refquant.compress import compress

dst = OUT / "digits_mlp.recipe.safetensors"
if dst.exists():
    dst.unlink()
report = compress(src, dst, recipe=recipe)
print(report.table())

# %% [markdown]
# ## The report
#
# One row per tensor: the scheme and why it was chosen, bits per weight
# (scales included: q4_0 spends 4 bits per code and 16 per 32 weights,
# $4 + 16/32 = 4.5$), the SQNR $10\log_{10}\frac{\sum w^2}{\sum (w-\hat w)^2}$, the
# largest error in quantization steps (at most $\tfrac12$ for round-to-nearest
# inside the grid) and the bytes. `to_json()` holds the same rows and the
# totals for a script; `to_csv()` for a spreadsheet.

# %%
import json

(OUT / "digits_mlp.recipe.json").write_text(report.to_json(), encoding="utf-8")
doc = json.loads(report.to_json())
rows = {r["name"]: r for r in doc["tensors"]}
print(json.dumps(doc["totals"], indent=1))
for name in ("embed.weight", "blocks.0.weight", "head.weight", "head.bias"):
    r = rows[name]
    print(f"{name:<16} {r['scheme']:<6} {r['bits_per_weight']:7.4f} bits/w  ({r['reason']})")

# %% [markdown]
# ## The accuracy ladder
#
# For each preset, compress, decompress to float32 (`refquant.compress.decompress`)
# and run the model on the held-out digits. The x axis is the cost of the
# quantized weights: $8 \cdot \text{bytes out} / \text{number of weights}$
# over the tensors the preset quantized (the head and biases are kept).

# %%
from refquant.compress import decompress

PRESETS = ["int8", "fp8", "q8_0", "int4-g128", "q4_0", "nf4"]


def quantized_bits(rep):
    q = [r for r in rep.rows if r.scheme != "keep"]
    return 8 * sum(r.bytes_out for r in q) / sum(int(np.prod(r.shape)) for r in q)


def accuracy_of(path):
    back = OUT / "roundtrip.safetensors"
    if back.exists():
        back.unlink()
    decompress(path, back)
    with rio.open(back) as ck:
        restored = {n: np.asarray(ck[n]) for n in ck.infos}
    return digits_mlp_accuracy({**params, **restored})


ladder = {}
for preset in PRESETS:
    path = OUT / f"digits_mlp.{preset}.safetensors"
    if path.exists():
        path.unlink()
    rep = compress(src, path, scheme=preset)
    sq = [r.sqnr_db for r in rep.rows if r.scheme != "keep"]
    ladder[preset] = (quantized_bits(rep), accuracy_of(path), float(np.mean(sq)))
ladder["recipe"] = (quantized_bits(report), accuracy_of(dst),
                    float(np.mean([r.sqnr_db for r in report.rows if r.scheme != "keep"])))
print(f"{'scheme':<10}{'bits/w':>8}{'accuracy':>10}{'mean SQNR dB':>14}")
for name, (bits, acc, sq) in ladder.items():
    print(f"{name:<10}{bits:8.3f}{acc:10.4f}{sq:14.2f}")

# %%
import matplotlib.pyplot as plt

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
for i, (name, (bits, acc, sq)) in enumerate(ladder.items()):
    lift = (4, -12 + 9 * (i % 3))  # labels of neighbouring rungs on different heights
    ax1.scatter(bits, 100 * acc)
    ax1.annotate(name, (bits, 100 * acc), textcoords="offset points", xytext=lift, fontsize=8)
    ax2.scatter(bits, sq)
    ax2.annotate(name, (bits, sq), textcoords="offset points", xytext=lift, fontsize=8)
ax1.axhline(100 * acc_float, color="gray", ls="--", label="float32")
ax1.set_xlabel("bits per quantized weight")
ax1.set_ylabel("test accuracy (%)")
ax1.set_ylim(96, 100)
ax1.legend()
ax2.set_xlabel("bits per quantized weight")
ax2.set_ylabel("mean SQNR of the weights (dB)")
fig.tight_layout()
fig.savefig(OUT / "13_accuracy_ladder.png")
print("plot:", OUT / "13_accuracy_ladder.png")

# %% [markdown]
# A model this small is robust: every rung keeps its accuracy within a few
# tenths of a percent, while the weights' SQNR on the integer grids falls by
# about 6 dB per bit removed ($20 \log_{10} 2 \approx 6.02$: from int8 to the
# 4-bit rungs, about 24 dB), the rule of thumb for a uniform grid. fp8
# (e4m3, 3 mantissa bits) sits lower than int8 at the same cost: its grid is
# logarithmic, with a relative error near $2^{-4}$ at every magnitude. Larger models are where the ladder bends, and where a recipe that
# keeps the sensitive tensors at more bits earns its place.
#
# ## 2:4 sparsity, stored dense or compact
#
# `--scheme 2:4` keeps the two largest magnitudes of every four consecutive
# inputs of each weight row (the layout sparse tensor cores run) and stores the
# result as plain floats, zeros included, which any framework loads.
# `2:4-sparse` stores the same weights as compressed-tensors' sparse-24-bitmask
# encodes them: the kept values, half as many, and one bit per weight saying where
# each came from. For float32 weights that is $16 + 1 = 17$ bits per weight instead
# of 32; decompressing gives back exactly the dense pruned weights.

# %%
dense_rep = compress(src, OUT / "digits_mlp.2-4.safetensors", scheme="2:4", overwrite=True)
sparse_rep = compress(src, OUT / "digits_mlp.2-4-sparse.safetensors", scheme="2:4-sparse",
                      overwrite=True)
back = OUT / "digits_mlp.2-4-sparse.dense.safetensors"
decompress(OUT / "digits_mlp.2-4-sparse.safetensors", back, overwrite=True)
pruned = rio.load_arrays(OUT / "digits_mlp.2-4.safetensors")
restored = rio.load_arrays(back)
for r in sparse_rep.rows:
    if r.scheme != "keep":
        print(f"{r.name:<18}{r.scheme:<16}{r.bits_per_weight:6.2f} bits/w")
acc_24 = digits_mlp_accuracy({**params, **{n: np.asarray(a, np.float32) for n, a in
                                             restored.items()}})
print(f"2:4 dense {dense_rep.bytes_out} bytes, 2:4-sparse {sparse_rep.bytes_out} bytes; "
      f"accuracy after 2:4 pruning {acc_24:.4f} (float32 {acc_float:.4f})")

# %% [markdown]
# ## Checks
#
# Bits per weight worked by hand equal the report's: int8 per channel on a
# 128×128 matrix costs $8 + 32/128 = 8.25$; q4_0 $4 + 16/32 = 4.5$; q8_0
# $8 + 16/32 = 8.5$; on the 128×64 embedding int8 costs $8 + 32/64 = 8.5$.

# %%
assert rows["blocks.0.weight"]["scheme"] == "q4_0"
assert rows["blocks.0.weight"]["bits_per_weight"] == 4 + 16 / 32
assert rows["embed.weight"]["scheme"] == "int8"
assert rows["embed.weight"]["bits_per_weight"] == 8 + 32 / 64
assert rows["head.weight"]["bits_per_weight"] == 8 + 16 / 32
assert rows["head.bias"]["scheme"] == "keep"
hand_total = (8 * 64 * 128 + 32 * 128) + 4 * (4 * 128 * 128 + 16 * 128 * 128 // 32) \
    + (8 * 10 * 128 + 16 * 10 * 128 // 32) + 32 * (4 * 128 + 128 + 10)
assert doc["totals"]["bytes_out"] == hand_total // 8
assert ladder["int8"][0] == 8 * (4 * 128 * 132 + 128 * 68) / (4 * 128 * 128 + 128 * 64)
for _bits, acc, _sq in ladder.values():
    assert acc >= acc_float - 0.02
w24 = {r.name: r for r in sparse_rep.rows}["blocks.0.weight"]
assert w24.scheme == "sparse24-f32" and w24.bits_per_weight == 16 + 1
for n in pruned:
    np.testing.assert_array_equal(np.asarray(restored[n], np.float32),
                                  np.asarray(pruned[n], np.float32))
