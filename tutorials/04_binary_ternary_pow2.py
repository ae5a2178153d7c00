"""
# 04 — Binary, ternary and power-of-two quantization

One bit per weight (sign and a scale), 1.58 bits (ternary), and logarithmic
codes (signed powers of two). We also take apart the founding article's
"binary quantization" formula, which is none of these.
"""

# %% [markdown]
# ## Binary weights: XNOR-Net's scale
#
# Approximate $W \in \mathbb{R}^n$ by $\alpha B$ with $B \in \{-1, +1\}^n$.
# Expanding $\lVert W - \alpha B\rVert^2 = \lVert W\rVert^2 - 2\alpha W^\top B + \alpha^2 n$,
# the best $B$ maximises $W^\top B$, so $B = \mathrm{sign}(W)$, and then
# $\alpha = W^\top B / n = \frac1n\sum_i |W_i|$ (Rastegari et al., 2016).
#
# By hand, for $W = [0.5, -0.2, 0.0, 0.1]$ with sign(0) = +1 (BinaryConnect's
# convention): $B = [1, -1, 1, 1]$ and $\alpha = 0.8 / 4 = 0.2$.

# %%
import numpy as np

from refquant.quant.binary import (
    binarize,
    binarize_xnor,
    ternarize_absmean,
    ternarize_twn,
)

w_small = np.array([[0.5, -0.2, 0.0, 0.1]])
codes, alpha = binarize_xnor(w_small, axis=0)
print(codes, alpha.ravel())
assert codes.tolist() == [[1, -1, 1, 1]] and np.isclose(alpha.item(), 0.2)
print("zero conventions:", binarize([0.0], zero="+1"), binarize([0.0], zero="0"),
      binarize([0.0], zero="-1"))

# %% [markdown]
# ## Ternary weights
#
# TWN (Li et al., 2016) keeps a dead zone $|W| \le \Delta$ with
# $\Delta = 0.7\,E|W|$, and $\alpha$ = the mean of the kept magnitudes.
# BitNet b1.58 (Ma et al., 2024) divides by $\gamma = E|W|$ and rounds into
# $\{-1, 0, 1\}$: $\tilde W = \mathrm{RoundClip}(W / (\gamma + \epsilon), -1, 1)$.

# %%
from refquant.models import load_digits_mlp
from refquant.quant import sqnr_db

w = load_digits_mlp()["blocks.2.weight"].astype(np.float64)
results = {}
b, a = binarize_xnor(w, axis=0)
results["binary (XNOR, per row)"] = sqnr_db(w, a * b)
t, a_t, _ = ternarize_twn(w, axis=0)
results["ternary (TWN, per row)"] = sqnr_db(w, a_t * t)
t2, g = ternarize_absmean(w)
results["ternary (BitNet absmean)"] = sqnr_db(w, g * t2)
for k, v in results.items():
    print(f"{k:<26} SQNR {v:6.2f} dB")
print("zeros in TWN codes:", f"{np.mean(t == 0):.1%}")
assert results["ternary (TWN, per row)"] > results["binary (XNOR, per row)"]

# %% [markdown]
# ## Powers of two
#
# $\tilde x = \mathrm{sign}(x)\, 2^{\mathrm{clip}(\mathrm{round}(\log_2|x|),\, e_{min},\, e_{max})}$:
# multiplication by $\tilde x$ is a shift. Where does a value between $2^k$ and
# $2^{k+1}$ switch? Rounding $\log_2|x|$ switches at $\sqrt2 \cdot 2^k$; rounding
# $|x|$ itself (nearest power in linear distance) switches at $1.5 \cdot 2^k$.
# By hand: $1.45$ is above $\sqrt 2 \approx 1.4142$, so the log rule gives 2;
# it is below 1.5, so the linear rule gives 1.

# %%
import matplotlib

matplotlib.use("Agg")
import os
from pathlib import Path

import matplotlib.pyplot as plt

# plots go into one folder the tutorial names (REFQUANT_TUTORIAL_OUT), not the working directory
OUT = Path(os.environ.get("REFQUANT_TUTORIAL_OUT", "tutorial_output"))
OUT.mkdir(parents=True, exist_ok=True)

from refquant.quant.pow2 import article_binary_formula, pow2_quantize

assert pow2_quantize([1.45], boundary="log")[0][0] == 2.0
assert pow2_quantize([1.45], boundary="linear")[0][0] == 1.0
xs = np.linspace(-3, 3, 1201)
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(xs, pow2_quantize(xs, min_exp=-3, max_exp=1, boundary="log")[0], label="log boundary")
ax.plot(xs, pow2_quantize(xs, min_exp=-3, max_exp=1, boundary="linear")[0], "--",
        label="linear boundary")
ax.plot(xs, xs, "k:", lw=0.8)
ax.set_xlabel("x")
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "04_pow2.png")

# %% [markdown]
# ## The founding article's "binary quantization"
#
# The article (§3.1.2) writes
# $x_{bin} = \mathrm{sign}(x) \times 2^{\mathrm{sign}(x) \times \lfloor \log_2|x| \rfloor}$.
# For $x > 0$ that is $2^{\lfloor\log_2 x\rfloor}$, a power-of-two quantizer with
# truncated exponent — not binary. For $x < 0$ the exponent is multiplied by
# $-1$: $x = -0.3$ gives $\lfloor\log_2 0.3\rfloor = -2$, so $-2^{2} = -4$ instead
# of $-0.25$. At $x = 0$ the formula is $0 \cdot 2^{0\cdot(-\infty)}$ = NaN.
# The intended formula is $\mathrm{sign}(x)\,2^{\lfloor\log_2|x|\rfloor}$, and
# binary quantization proper is $\alpha\,\mathrm{sign}(x)$ above.

# %%
lit = article_binary_formula(xs[xs != 0])
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(xs[xs != 0], lit, label="article, literally")
ax.plot(xs, pow2_quantize(xs, boundary="floor", min_exp=-8)[0], "--", label="intended")
ax.set_ylim(-10, 4)
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "04_article_formula.png")

# %% [markdown]
# The hand-worked values:

# %%
assert article_binary_formula(-0.3) == -4.0
assert pow2_quantize([-0.3], boundary="floor")[0][0] == -0.25
