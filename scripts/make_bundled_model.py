"""Train the bundled residual MLP on scikit-learn's copy of the UCI digits and save it.

Run once (needs scikit-learn): ``python scripts/make_bundled_model.py``.
Writes ``refquant/data/digits_mlp.npz``; see :mod:`refquant.models`.
Plain NumPy training (Adam, softmax cross-entropy), deterministic for a seed.
"""

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from refquant.models import DIGITS_MLP_BLOCKS, digits_mlp_accuracy

OUT = Path(__file__).resolve().parents[1] / "refquant" / "data" / "digits_mlp.npz"
HIDDEN = 128


def init(rng):
    p = {}

    def lin(name, n_out, n_in):
        p[name + ".weight"] = (rng.standard_normal((n_out, n_in)) * np.sqrt(2 / n_in)).astype(
            np.float32
        )
        p[name + ".bias"] = np.zeros(n_out, np.float32)

    lin("embed", HIDDEN, 64)
    for i in range(DIGITS_MLP_BLOCKS):
        lin(f"blocks.{i}", HIDDEN, HIDDEN)
        p[f"blocks.{i}.weight"] *= 0.5
    lin("head", 10, HIDDEN)
    return p


def loss_and_grads(p, x, y):
    a0 = x @ p["embed.weight"].T + p["embed.bias"]
    h = np.maximum(a0, 0)
    cache = []
    for i in range(DIGITS_MLP_BLOCKS):
        a = h @ p[f"blocks.{i}.weight"].T + p[f"blocks.{i}.bias"]
        cache.append((h, a))
        h = h + np.maximum(a, 0)
    logits = h @ p["head.weight"].T + p["head.bias"]
    logits -= logits.max(axis=1, keepdims=True)
    prob = np.exp(logits)
    prob /= prob.sum(axis=1, keepdims=True)
    n = len(y)
    loss = -np.mean(np.log(prob[np.arange(n), y] + 1e-12))
    g = {}
    d = prob
    d[np.arange(n), y] -= 1
    d /= n
    g["head.weight"] = d.T @ h
    g["head.bias"] = d.sum(0)
    dh = d @ p["head.weight"]
    for i in reversed(range(DIGITS_MLP_BLOCKS)):
        hin, a = cache[i]
        da = dh * (a > 0)
        g[f"blocks.{i}.weight"] = da.T @ hin
        g[f"blocks.{i}.bias"] = da.sum(0)
        dh = dh + da @ p[f"blocks.{i}.weight"]
    da0 = dh * (a0 > 0)
    g["embed.weight"] = da0.T @ x
    g["embed.bias"] = da0.sum(0)
    return loss, g


def main(seed=0, epochs=60, batch=64, lr=2e-3):
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    test, train = order[:360], order[360:]
    p = init(rng)
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v2 = {k: np.zeros_like(v) for k, v in p.items()}
    t = 0
    for _ in range(epochs):
        for s in range(0, len(train), batch):
            idx = train[s : s + batch]
            _, g = loss_and_grads(p, x[idx], y[idx])
            t += 1
            for k in p:
                m[k] = 0.9 * m[k] + 0.1 * g[k]
                v2[k] = 0.999 * v2[k] + 0.001 * g[k] ** 2
                mh, vh = m[k] / (1 - 0.9**t), v2[k] / (1 - 0.999**t)
                p[k] = (p[k] - lr * mh / (np.sqrt(vh) + 1e-8)).astype(np.float32)
        train = train[rng.permutation(len(train))]
    out = dict(p)
    out["x_test"], out["y_test"] = x[test], y[test].astype(np.int64)
    out["x_calib"] = x[train[:256]]
    print("test accuracy", digits_mlp_accuracy(out))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **out)
    print("wrote", OUT, OUT.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
