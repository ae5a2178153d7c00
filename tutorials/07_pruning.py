"""
# 07 — Unstructured pruning: magnitude, Taylor, Wanda and LAMP

We state four importance scores, prune a small matrix by hand, then prune
the bundled digits model with each score at sparsities from 0 to 95 % and
plot what it costs in accuracy. Along the way: how an `amount` becomes a
count, and why the founding article's PyTorch pruning snippet does not do
what its text says.
"""

# %% [markdown]
# ## The scores
#
# A mask $m \in \{0, 1\}$ keeps a weight where $m = 1$; unstructured pruning
# zeroes the $k$ weights of lowest *importance* $s$:
#
# | score | formula | compared |
# |---|---|---|
# | magnitude | $s_{ij} = \lvert W_{ij} \rvert$ | per tensor |
# | Taylor (Molchanov et al. 2019) | $s_{ij} = (g_{ij} W_{ij})^2$, $g = \partial L / \partial W$ | per tensor |
# | Wanda (Sun et al. 2023) | $s_{ij} = \lvert W_{ij} \rvert \, \lVert X_{:,j} \rVert_2$ | per output row $i$ |
# | LAMP (Lee et al. 2021) | $s_u = w_u^2 / \sum_{v \ge u} w_v^2$ (sorted ascending) | across all tensors |
#
# Taylor estimates the loss change of removing a weight, $\Delta L \approx
# -g_{ij} W_{ij}$; Wanda weighs each weight by how large its input is on
# calibration data; LAMP rescales magnitudes so that one global threshold
# gives each layer a sensible sparsity (the largest weight of every tensor
# scores 1).
#
# The count: with a fraction $s$ of $N$ weights, torch prunes
# $\mathrm{round}(sN)$ (half to even), tfmot keeps $\max(\mathrm{rint}(N(1-s)), 1)$,
# Wanda prunes $\lfloor sN \rfloor$ per row, Torch-Pruning keeps
# $\lfloor N_0 (1-s) \rfloor$. Ties: refquant prunes the lower flat index first.

# %% [markdown]
# ## By hand
#
# $W = \begin{pmatrix} 0.5 & -0.1 & 0.3 \\ -0.2 & 0.05 & 0.4 \end{pmatrix}$,
# amount $0.5$: torch's rule prunes $\mathrm{round}(0.5 \cdot 6) = 3$ weights,
# the three smallest magnitudes $0.05, 0.1, 0.2$:
# $m = \begin{pmatrix} 1 & 0 & 1 \\ 0 & 0 & 1 \end{pmatrix}$.
#
# Wanda with input column norms $\lVert X_{:,j} \rVert = (1, 10, 1)$ scores
# $\begin{pmatrix} 0.5 & 1 & 0.3 \\ 0.2 & 0.5 & 0.4 \end{pmatrix}$ and compares
# per row, pruning $\mathrm{round}(0.5 \cdot 3) = 2$ per row: row 1 keeps $-0.1$
# (its large input makes it matter), row 2 keeps $0.05$:
# $m = \begin{pmatrix} 0 & 1 & 0 \\ 0 & 1 & 0 \end{pmatrix}$.

# %%
import numpy as np

from refquant.prune import apply_mask, unstructured_mask, wanda

W = np.array([[0.5, -0.1, 0.3], [-0.2, 0.05, 0.4]])
hand_magnitude = np.array([[1, 0, 1], [0, 0, 1]], dtype=bool)
mask = unstructured_mask(np.abs(W), 0.5)
print(mask.astype(int))

X = np.array([[1.0, 10.0, 1.0]])  # one calibration token: column norms (1, 10, 1)
hand_wanda = np.array([[0, 1, 0], [0, 1, 0]], dtype=bool)
wmask = unstructured_mask(wanda(W, X), 0.5, per_row=True)
print(wmask.astype(int))
print(apply_mask(W, wmask))

# %% [markdown]
# ## The model, its gradients and its activations
#
# The bundled model is a residual MLP on 8×8 digits:
# $h_0 = \mathrm{relu}(x W_e^\top + b_e)$, $h_{i+1} = h_i + \mathrm{relu}(h_i W_i^\top + b_i)$,
# logits $= h_4 W_h^\top + b_h$. Taylor needs $\partial L / \partial W$; five
# matrices are few enough to backpropagate by hand in NumPy (exact, unlike
# finite differences, which would need one forward pass per weight: 36 000):
#
# $\delta_{\text{logits}} = (\mathrm{softmax} - \mathrm{onehot}) / n$,
# $\partial L / \partial W_h = \delta^\top h_4$,
# $\delta_{h_i} = \delta_{h_{i+1}} + (\delta_{h_{i+1}} \odot [z_i > 0]) W_i$.
#
# The calibration images have no labels, so the loss is taken against the
# model's own predictions (a label-free stand-in common in post-training
# pruning). One finite difference checks the backward pass.

# %%
from refquant.models import digits_mlp_accuracy, load_digits_mlp

P = load_digits_mlp()
LAYERS = ["embed.weight"] + [f"blocks.{i}.weight" for i in range(4)] + ["head.weight"]


def forward(params, x):
    """Logits, the input of every layer and the pre-activations (float64)."""
    x = np.asarray(x, dtype=np.float64)
    inputs, pre = {"embed.weight": x}, {}
    z = x @ params["embed.weight"].T + params["embed.bias"]
    pre["embed.weight"], h = z, np.maximum(z, 0)
    for i in range(4):
        name = f"blocks.{i}.weight"
        inputs[name] = h
        z = h @ params[name].T + params[f"blocks.{i}.bias"]
        pre[name], h = z, h + np.maximum(z, 0)
    inputs["head.weight"] = h
    return h @ params["head.weight"].T + params["head.bias"], inputs, pre


def loss_and_grads(params, x, y, per_sample=False):
    """Mean cross-entropy and dL/dW of every layer (per sample: shape (n, out, in))."""
    logits, inputs, pre = forward(params, x)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    n = len(y)
    loss = -np.mean(np.log(p[np.arange(n), y]))
    d = p.copy()
    d[np.arange(n), y] -= 1
    if not per_sample:
        d /= n

    def outer(dz, name):  # dL/dW = dz^T x, or one outer product per sample
        if per_sample:
            return np.einsum("ni,nj->nij", dz, inputs[name])
        return dz.T @ inputs[name]

    grads = {"head.weight": outer(d, "head.weight")}
    dh = d @ params["head.weight"]
    for i in reversed(range(4)):
        name = f"blocks.{i}.weight"
        dz = dh * (pre[name] > 0)
        grads[name] = outer(dz, name)
        dh = dh + dz @ params[name]
    dz = dh * (pre["embed.weight"] > 0)
    grads["embed.weight"] = outer(dz, "embed.weight")
    return loss, grads


params64 = {k: v.astype(np.float64) for k, v in P.items() if k.endswith(("weight", "bias"))}
x_cal = P["x_calib"].astype(np.float64)
y_cal = np.argmax(forward(params64, x_cal)[0], axis=1)  # pseudo-labels
loss, grads = loss_and_grads(params64, x_cal, y_cal)
_, acts, _ = forward(params64, x_cal)

# one finite-difference check of the backward pass
eps, (i, j) = 1e-6, (3, 5)
bumped = dict(params64)
bumped["blocks.1.weight"] = params64["blocks.1.weight"].copy()
bumped["blocks.1.weight"][i, j] += eps
fd = (loss_and_grads(bumped, x_cal, y_cal)[0] - loss) / eps
print(f"loss {loss:.4f}; dL/dW[3,5] backprop {grads['blocks.1.weight'][i, j]:.6e}, finite diff {fd:.6e}")
assert abs(fd - grads["blocks.1.weight"][i, j]) < 1e-5

# %% [markdown]
# ## Prune with each score, at each sparsity
#
# Magnitude and Taylor prune each weight matrix to the same sparsity; Wanda
# compares within output rows; LAMP prunes all matrices under one global
# threshold (so its layers end up with different sparsities). Biases are kept.
#
# The model is trained to convergence and nearly certain on its calibration
# images (the loss above is about $10^{-4}$), so the batch gradient is almost
# zero and first-order Taylor mostly ranks noise. The second-order diagonal
# fixes that: the empirical Fisher score $W_{ij}^2 \cdot rac1n \sum_n
# g_{n,ij}^2$ (`refquant.prune.fisher`, OBD's $	frac12 h W^2$ with the
# Fisher standing in for the Hessian) uses per-sample gradients, whose squares
# do not cancel. It is drawn as a fifth curve.

# %%
from refquant.prune import fisher, global_mask, lamp, magnitude, taylor

_, per_sample = loss_and_grads(params64, x_cal, y_cal, per_sample=True)
scores = {
    "magnitude": {n: magnitude(P[n]) for n in LAYERS},
    "Taylor": {n: taylor(P[n], grads[n], reduction="squared_sum") for n in LAYERS},
    "Wanda": {n: wanda(P[n], acts[n]) for n in LAYERS},
    "LAMP": {n: lamp(P[n]) for n in LAYERS},
    "Fisher": {n: fisher(P[n], per_sample[n]) for n in LAYERS},
}
del per_sample


def pruned_accuracy(method, s):
    if method == "LAMP":
        masks = global_mask(scores[method], s)
    else:
        masks = {n: unstructured_mask(scores[method][n], s, per_row=(method == "Wanda"))
                 for n in LAYERS}
    pruned = dict(P)
    for n in LAYERS:
        pruned[n] = apply_mask(P[n], masks[n])
    return digits_mlp_accuracy(pruned), masks


sparsities = [0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95]
curves = {m: [pruned_accuracy(m, s)[0] for s in sparsities] for m in scores}
print("sparsity " + " ".join(f"{m:>9}" for m in curves))
for k, s in enumerate(sparsities):
    print(f"{s:8.2f} " + " ".join(f"{curves[m][k]:9.3f}" for m in curves))

_, lamp_masks = pruned_accuracy("LAMP", 0.9)
print("LAMP at 90 % global: per-layer sparsity",
      {n: round(float(1 - lamp_masks[n].mean()), 3) for n in LAYERS})

# %% [markdown]
# What the table shows: up to about 50 % every score is nearly free. Beyond,
# LAMP holds up longest because its global threshold spares the small, dense
# layers (the 10×128 head keeps about half its weights at 90 % overall) while
# uniform per-layer pruning starves them; Fisher beats magnitude because it
# knows which weights the loss is sensitive to; first-order Taylor is worst
# at a converged model, as explained above. Wanda's per-row comparison helps
# little on this model, whose hidden activations have no outlier features
# (its strength on LLMs).

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt

# plots go into one folder the tutorial names (REFQUANT_TUTORIAL_OUT), not the working directory
OUT = Path(os.environ.get("REFQUANT_TUTORIAL_OUT", "tutorial_output"))
OUT.mkdir(parents=True, exist_ok=True)

fig, ax = plt.subplots(figsize=(6, 4))
for m, acc in curves.items():
    ax.plot(sparsities, acc, marker="o", label=m)
ax.set_xlabel("sparsity of the weight matrices")
ax.set_ylabel("test accuracy")
ax.set_title("Unstructured pruning of the digits MLP")
ax.legend()
ax.grid(alpha=0.3)
fig.tight_layout()
plt.savefig(OUT / "pruning_accuracy.png")

# %% [markdown]
# ## The founding article's snippet
#
# The article's recipe (normalise to $[-1, 1]$, importance by L1 or L2, drop
# the lowest) is magnitude pruning: `refquant.prune.article_weight_pruning`.
# Its PyTorch code does something else:
#
# ```python
# parameters = model.parameters()
# importance = torch.sum(parameters, dim=0)
# unimportant = torch.where(importance < 0.1, parameters, torch.zeros_like(parameters))
# model.weight.data = unimportant
# ```
#
# `torch.sum` of a generator raises `TypeError`. Read with `parameters =
# model.weight`, it sums each *column* with signs (no norm, no normalisation)
# and **keeps** the columns whose sum is below 0.1, the unimportant ones,
# zeroing the others. On the head layer:

# %%
from refquant.prune import article_snippet_as_written, article_weight_pruning

head = P["head.weight"]
snippet = article_snippet_as_written(head)
kept = np.mean(snippet != 0)
recipe, _ = article_weight_pruning(head, float(1 - kept))
acc_snippet = digits_mlp_accuracy(dict(P, **{"head.weight": snippet}))
acc_recipe = digits_mlp_accuracy(dict(P, **{"head.weight": recipe}))
print(f"snippet keeps {kept:.0%} of the head: accuracy {acc_snippet:.3f}; "
      f"the recipe at the same sparsity: {acc_recipe:.3f}")

# %% [markdown]
# ## Against torch.nn.utils.prune
#
# With torch installed, `l1_unstructured` on the same matrix gives the same
# mask as refquant (magnitudes here have no ties), repeated pruning included.

# %%
try:
    import torch
    from torch.nn.utils import prune as torch_prune
except ImportError:
    torch = None
    print("torch is not installed: peer check skipped")

if torch is not None:
    from refquant.compat import torch_prune as rq_prune

    lin = torch.nn.Linear(128, 128, bias=False)
    lin.weight.data = torch.tensor(P["blocks.2.weight"])
    module = {"weight": P["blocks.2.weight"]}
    for amount in (0.5, 0.3, 1000):
        torch_prune.l1_unstructured(lin, "weight", amount)
        rq_prune.l1_unstructured(module, "weight", amount)
    assert np.array_equal(module["weight_mask"], lin.weight_mask.numpy())
    print("torch and refquant masks agree; sparsity", 1 - module["weight_mask"].mean())

# %% [markdown]
# ## The hand-worked masks, once more

# %%
assert np.array_equal(unstructured_mask(np.abs(W), 0.5), hand_magnitude)
assert np.array_equal(unstructured_mask(wanda(W, X), 0.5, per_row=True), hand_wanda)
