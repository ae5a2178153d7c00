"""
# 05 — Small floating-point formats: FP8, FP6, FP4 from the bits

What an 8-, 6- or 4-bit float can represent, how a real number is rounded to
it, what happens above the largest value (saturation or overflow), and how a
shared scale (per tensor, per block, MX) makes the narrow range usable.
"""

# %% [markdown]
# ## The bit fields
#
# A code is a sign $S$, an exponent field $e$ of $E$ bits and a mantissa field
# $m$ of $M$ bits. With bias $b$:
#
# $$v = (-1)^S\, 2^{e-b}\,\Bigl(1 + \frac{m}{2^M}\Bigr) \quad (e > 0), \qquad
#   v = (-1)^S\, 2^{1-b}\,\frac{m}{2^M} \quad (e = 0,\ \text{subnormal}).$$
#
# | format | E | M | bias | max | special values |
# |---|---|---|---|---|---|
# | float8_e4m3fn | 4 | 3 | 7 | 448 | NaN only at S.1111.111; no Inf |
# | float8_e5m2 | 5 | 2 | 15 | 57344 | IEEE: Inf and NaN at e = 11111 |
# | float4_e2m1fn | 2 | 1 | 1 | 6 | none |
#
# **By hand:** the e4m3fn code `0x5B = 0 1011 011` has $e = 11$, $m = 3$:
# $v = 2^{11-7}(1 + 3/8) = 16 \cdot 1.375 = 22$.
# The largest e4m3fn value is `0 1111 110` $= 2^8 \cdot 1.75 = 448$ (the code
# `0 1111 111` is NaN), and the smallest subnormal `0 0000 001` $= 2^{-6}/8 = 2^{-9}$.

# %%
import numpy as np

from refquant.formats.floats import FLOAT_FORMATS, decode, encode

for name in ("float8_e4m3fn", "float8_e5m2", "float4_e2m1fn"):
    f = FLOAT_FORMATS[name]
    print(f"{name:<15} E={f.exponent_bits} M={f.mantissa_bits} bias={f.bias:<3} max={f.max:<8g}"
          f" min normal={f.min_normal:<10g} min subnormal={f.min_subnormal:g}")
print("0x5B in e4m3fn =", decode(np.array([0x5B]), "float8_e4m3fn")[0])

# %% [markdown]
# Drawing the fields of one value, 22, in each format (e2m1 cannot hold 22:
# it saturates to 6):

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt

# plots go into one folder the tutorial names (REFQUANT_TUTORIAL_OUT), not the working directory
OUT = Path(os.environ.get("REFQUANT_TUTORIAL_OUT", "tutorial_output"))
OUT.mkdir(parents=True, exist_ok=True)


def fields(code, f):
    bits = format(int(code), f"0{f.bits}b")
    return bits[0], bits[1 : 1 + f.exponent_bits], bits[1 + f.exponent_bits :]


fig, ax = plt.subplots(figsize=(7, 2.4))
colours = {"S": "#d62728", "E": "#1f77b4", "M": "#2ca02c"}
for row, name in enumerate(("float8_e4m3fn", "float8_e5m2", "float4_e2m1fn")):
    f = FLOAT_FORMATS[name]
    code = encode(np.array([22.0]), name)[0]
    s, e, m = fields(code, f)
    x = 0
    for kind, part in (("S", s), ("E", e), ("M", m)):
        for bit in part:
            ax.add_patch(plt.Rectangle((x, -row), 0.95, 0.8, color=colours[kind], alpha=0.35))
            ax.text(x + 0.47, -row + 0.4, bit, ha="center", va="center", family="monospace")
            x += 1
    ax.text(8.5, -row + 0.4, f"{name}: 22 -> {decode(np.array([code]), name)[0]:g}", va="center")
ax.set_xlim(-0.2, 16)
ax.set_ylim(-2.3, 1)
ax.axis("off")
ax.set_title("sign (red), exponent (blue), mantissa (green)")
plt.savefig(OUT / "float_fields.png", dpi=80, bbox_inches="tight")

# %% [markdown]
# ## The grid of representable values
#
# Between consecutive powers of two each format has $2^M$ evenly spaced values,
# so the relative spacing is $2^{-M}$: e4m3 trades range for one more mantissa
# bit than e5m2. Subnormals fill $[0, 2^{1-b})$ evenly.

# %%
fig, axes = plt.subplots(3, 1, figsize=(8, 4), sharex=False)
for ax, name in zip(axes, ("float4_e2m1fn", "float8_e4m3fn", "float8_e5m2"), strict=True):
    f = FLOAT_FORMATS[name]
    v = decode(np.arange(1 << (f.bits - 1)), name).astype(np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    ax.vlines(v, 0, 1, linewidth=0.6)
    ax.set_xscale("log", base=2)
    ax.set_yticks([])
    ax.set_title(f"{name}: {len(v)} positive values from {v.min():g} to {v.max():g}", fontsize=9)
plt.tight_layout()
plt.savefig(OUT / "float_grids.png", dpi=80)

# %% [markdown]
# ## Rounding, saturation and overflow
#
# Rounding is to nearest, ties to the even mantissa. Above the largest finite
# value two conventions exist:
#
# * **saturating** (ONNX Cast ``saturate=1``, PyTorch's e4m3fn cast): $|x| > \max \to \pm\max$, $\pm\infty \to \pm\max$;
# * **non-saturating** (ml_dtypes, ONNX ``saturate=0``): the rounded value overflows to
#   Inf where the format has it (e5m2) or to NaN (e4m3fn).
#
# For e4m3fn the next value above 448 would be 480, so the rounding boundary is
# $(448 + 480)/2 = 464$: 464 itself rounds to 448 (mantissa 110 is even), anything
# larger overflows.

# %%
x = np.array([440.0, 456.0, 464.0, 465.0, 1000.0, np.inf])
sat = decode(encode(x, "float8_e4m3fn", saturate=True), "float8_e4m3fn")
nonsat = decode(encode(x, "float8_e4m3fn", saturate=False), "float8_e4m3fn")
for xi, a, b in zip(x, sat, nonsat, strict=True):
    print(f"x = {xi:>6}: saturating {a:>5}  non-saturating {b}")
print("ties: 1.0625 ->", decode(encode(np.array([1.0625]), "float8_e4m3fn"), "float8_e4m3fn")[0],
      " 1.1875 ->", decode(encode(np.array([1.1875]), "float8_e4m3fn"), "float8_e4m3fn")[0])

# %% [markdown]
# ## Check against ml_dtypes and PyTorch
#
# ml_dtypes' ``astype`` is the non-saturating cast; PyTorch's
# ``Tensor.to(torch.float8_e4m3fn)`` saturates.

# %%
import ml_dtypes

rng = np.random.default_rng(0)
probe = (rng.standard_normal(10_000) * 100).astype(np.float32)
with np.errstate(over="ignore"):
    ml = probe.astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
assert np.array_equal(encode(probe, "float8_e4m3fn", saturate=False), ml)
try:
    import torch

    tq = torch.from_numpy(probe).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
    assert np.array_equal(encode(probe, "float8_e4m3fn", saturate=True), tq)
    print("refquant == ml_dtypes (non-saturating) and == torch (saturating) on 10000 values")
except ImportError:
    print("torch not installed: saturating check skipped")

# %% [markdown]
# ## Scaling: per tensor, per block, MX
#
# A weight matrix rarely fits the grid by itself; dividing by
# $s = \mathrm{amax} / \max$ maps its largest magnitude to the format's max.
# MX (OCP Microscaling) shares a power-of-two scale
# $X = 2^{\lfloor\log_2 \mathrm{amax}\rfloor - e_{max}}$ per block of 32.

# %%
from refquant.formats.mx import dequantize_mx, quantize_mx
from refquant.models import load_digits_mlp
from refquant.quant.floatq import dequantize_float, quantize_float
from refquant.quant.metrics import sqnr_db

w = load_digits_mlp()["blocks.1.weight"].astype(np.float32)
rows = {}
for name in ("float8_e4m3fn", "float8_e5m2", "float4_e2m1fn"):
    q, s = quantize_float(w, name)
    rows[f"{name} per tensor"] = sqnr_db(w, dequantize_float(q, name, s))
    q, s = quantize_float(w, name, axis=1, block_size=32)
    rows[f"{name} per block of 32"] = sqnr_db(w, dequantize_float(q, name, s, axis=1, block_size=32))
for mx in ("mxfp8_e4m3", "mxfp4"):
    c, x_scale = quantize_mx(w, mx)
    rows[f"{mx} (power-of-two block scale)"] = sqnr_db(w, dequantize_mx(c, x_scale, mx))
for k, v in rows.items():
    print(f"{k:<40} SQNR {v:6.2f} dB")
plt.figure(figsize=(7, 3))
plt.barh(list(rows), list(rows.values()))
plt.xlabel("SQNR (dB)")
plt.tight_layout()
plt.savefig(OUT / "float_sqnr.png", dpi=80)
assert rows["float4_e2m1fn per block of 32"] > rows["float4_e2m1fn per tensor"]

# %% [markdown]
# ## The hand-decoded value
#
# `0x5B` in e4m3fn is $2^{4} \cdot 1.375 = 22$, and 22 encodes back to `0x5B`.

# %%
assert decode(np.array([0x5B]), "float8_e4m3fn")[0] == 2**4 * (1 + 3 / 8) == 22.0
assert encode(np.array([22.0]), "float8_e4m3fn")[0] == 0x5B
