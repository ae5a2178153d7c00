"""
# 01 — Integer quantization: the affine formula, by hand and with refquant

We derive uniform (affine) integer quantization, work one example by hand,
measure per-tensor vs per-channel vs per-group error on the bundled model's
weights, and take apart the founding article's recipe and its PyTorch snippet.
"""

# %% [markdown]
# ## The formula
#
# A uniform grid of $2^b$ integer codes $q \in [q_{min}, q_{max}]$ stands for
# the real values $\hat x = (q - z)\,s$: step (scale) $s > 0$ and zero point
# $z$, the code that stands for $0$. To quantize, invert the map and round to
# the nearest code, then clamp to the grid:
#
# $$ q = \mathrm{clamp}\big(\mathrm{round}(x / s) + z,\ q_{min},\ q_{max}\big),
#    \qquad \hat x = (q - z)\, s. $$
#
# To cover a range $[\alpha, \beta]$ (always widened to include 0, so that
# zero is exact):
#
# $$ s = \frac{\beta - \alpha}{q_{max} - q_{min}}, \qquad
#    z = q_{min} - \mathrm{round}(\alpha / s). $$
#
# Symmetric quantization fixes $z = 0$ and $s = \max(|\alpha|, |\beta|) / q_{max}$.
# Inside the range the error is at most half a step: $|x - \hat x| \le s/2$.

# %% [markdown]
# ## A worked example by hand
#
# Quantize $x = [-1.0, -0.1, 0.0, 0.37, 3.0]$ to uint8, affine, min-max range.
#
# * $\alpha = -1$, $\beta = 3$, so $s = 4 / 255 \approx 0.0156863$.
# * $\alpha / s = -63.75$, which rounds to $-64$, so $z = 0 - (-64) = 64$.
# * $0.37 / s = 23.5875 \to 24$, plus $z$: $q = 88$; back: $(88 - 64)\cdot s = 0.37647$.
# * $-0.1 / s = -6.375 \to -6$: $q = 58$; $3.0 / s = 191.25 \to 191$: $q = 255$.
# * $-1.0 / s = -63.75 \to -64$: $q = 0$; $0 \to 64$ exactly.

# %%
import numpy as np

import refquant as rq

x = np.array([-1.0, -0.1, 0.0, 0.37, 3.0], dtype=np.float32)
qp = rq.choose_qparams(x, dtype="uint8", symmetric=False)
q = qp.quantize(x)
print("scale", qp.scale, "zero point", qp.zero_point)
print("codes", q)
print("back ", qp.dequantize(q))
hand = np.array([0, 58, 64, 88, 255])
assert np.array_equal(q, hand)

# %% [markdown]
# ## The grid, drawn
#
# Every real number is sent to the nearest grid point; outside the range it is
# clamped to the end codes (saturation).

# %%
import matplotlib

matplotlib.use("Agg")
import os
from pathlib import Path

import matplotlib.pyplot as plt

# plots go into one folder the tutorial names (REFQUANT_TUTORIAL_OUT), not the working directory
OUT = Path(os.environ.get("REFQUANT_TUTORIAL_OUT", "tutorial_output"))
OUT.mkdir(parents=True, exist_ok=True)

xs = np.linspace(-1.6, 1.6, 2001)
fig, ax = plt.subplots(figsize=(6, 3.5))
for bits in (2, 3, 4):
    qb = rq.choose_qparams(np.array([-1.0, 1.0]), dtype=f"int{bits}", symmetric=True)
    ax.plot(xs, qb.fake_quantize(xs), label=f"int{bits}, s = {float(qb.scale):.3f}")
ax.plot(xs, xs, "k:", lw=0.8, label="identity")
ax.set_xlabel("x")
ax.set_ylabel("dequantize(quantize(x))")
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "01_grid.png")

# %% [markdown]
# ## Granularity on a real weight matrix
#
# One scale per tensor must cover the largest weight of the whole matrix; one
# per output channel (row) adapts to each row; one per group of 32 inputs adapts
# further at the cost of storing more scales. SQNR (signal-to-quantization-noise
# ratio, dB) measures the error: $10\log_{10}(\sum w^2 / \sum (w - \hat w)^2)$.

# %%
from refquant.models import load_digits_mlp

params = load_digits_mlp()
w = params["blocks.1.weight"]
rows = []
for bits in (8, 6, 4, 3, 2):
    row = [bits]
    for axis, block in ((None, None), (0, None), (1, 32)):
        qpw = rq.choose_qparams(w, dtype=f"int{bits}", axis=axis, block_size=block)
        row.append(rq.sqnr_db(w, qpw.fake_quantize(w)))
    rows.append(row)
print(f"{'bits':>4} {'per-tensor':>11} {'per-channel':>12} {'per-group-32':>13}")
for r in rows:
    print(f"{r[0]:>4} {r[1]:>11.2f} {r[2]:>12.2f} {r[3]:>13.2f}")
sq = np.array(rows)
assert np.all(sq[:, 2] >= sq[:, 1]) and np.all(sq[:, 3] >= sq[:, 2] - 0.5)

fig, ax = plt.subplots(figsize=(5, 3.5))
for j, name in enumerate(("per-tensor", "per-channel", "per-group-32"), start=1):
    ax.plot(sq[:, 0], sq[:, j], "o-", label=name)
ax.set_xlabel("bits")
ax.set_ylabel("SQNR (dB)")
ax.set_title("about 6 dB per bit")
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "01_error_vs_bits.png")

# %% [markdown]
# Each extra bit halves the step and so adds $20\log_{10} 2 \approx 6.02$ dB.

# %%
slope = np.polyfit(sq[:3, 0], sq[:3, 2], 1)[0]
print(f"per-channel slope: {slope:.2f} dB per bit")
assert 5.0 < slope < 7.0

# %% [markdown]
# ## The founding article's recipe
#
# The article (§3.1.1) says: normalise the weights to $[-1, 1]$, convert to
# integers with $x_{int} = \mathrm{round}(x_{float} \times scale)$, rescale.
# Dividing by $a = \max|w|$ and multiplying by $L$ (the article's `scale`) is
# symmetric quantization with step $s = a / L$:
# $\mathrm{round}(w / a \cdot L) = \mathrm{round}(w / s)$. What the article
# leaves out is that $a$ and $L$ must be kept: the codes mean nothing without
# them.

# %%
from refquant.quant.article import article_integer_dequantize, article_integer_quantize

codes, a = article_integer_quantize(w, levels=127)
same = rq.quantize(w, a / 127, dtype="int8")
print("codes equal to symmetric int8 with s = max|w|/127:", np.array_equal(codes, same))
assert np.abs(codes - same).max() <= 1
print("SQNR of the recipe:", round(rq.sqnr_db(w, article_integer_dequantize(codes, a)), 2), "dB")

# %% [markdown]
# ### Why the article's PyTorch snippet does not run
#
# ```python
# parameters = model.parameters()          # a generator, not a tensor
# mean = torch.mean(parameters)            # TypeError: mean() needs a Tensor
# std = torch.std(parameters)
# parameters = (parameters - mean) / std   # (not into [-1, 1]: |z| > 1 beyond one std)
# parameters = torch.round(parameters * scale)
# model.weight.data = parameters           # the normaliser is thrown away
# ```
#
# `torch.mean` receives a generator and raises `TypeError`. Even fixed
# (`torch.cat([p.flatten() for p in model.parameters()])`), standardising by mean
# and std does not map into $[-1, 1]$; the weight and the bias would be mixed in
# one statistic; and the codes $\mathrm{round}(10 z)$ are written into the weight
# without keeping mean, std or scale, so the layer's output is scaled by
# roughly $10/\sigma$ and shifted. We run it when torch is installed.

# %%
try:
    import torch
except ImportError:
    torch = None
if torch is not None:
    model = torch.nn.Linear(10, 1)
    try:
        torch.mean(model.parameters())
        raise AssertionError("the snippet was expected to fail")
    except TypeError as e:
        print("torch.mean(model.parameters()) ->", type(e).__name__, str(e).splitlines()[0][:80])

# %% [markdown]
# ## Checking against a peer
#
# PyTorch's `quantize_per_tensor` multiplies by a float32 reciprocal of the
# scale instead of dividing (pytorch#139464); refquant names that choice
# `scale_op="reciprocal"` with `precision="float32"`. With those arguments the
# two agree on every code.

# %%
if torch is not None:
    s, z = float(qp.scale), int(qp.zero_point)
    xr = np.random.default_rng(1).uniform(-1.2, 3.2, 10_000).astype(np.float32)
    theirs = torch.quantize_per_tensor(torch.from_numpy(xr), s, z, torch.quint8).int_repr().numpy()
    ours = rq.quantize(xr, s, z, dtype="uint8", scale_op="reciprocal", precision="float32")
    assert np.array_equal(ours, theirs)
    print("torch.quantize_per_tensor: all", xr.size, "codes equal")

# %% [markdown]
# The hand-worked codes, once more:

# %%
assert np.array_equal(rq.quantize(x, 4 / 255, 64, dtype="uint8", precision="float32"), hand)
