"""The bundled model: a small residual MLP trained on handwritten digits.

``digits_mlp.npz`` (in ``refquant/data``) holds a network trained by
``scripts/make_bundled_model.py`` on the UCI optical handwritten digits (8×8
images, 64 features with values 0..16, 10 classes; the copy shipped with
scikit-learn), plus a held-out test set and a calibration set:

====================  =========  =============================================
name                  shape      meaning
====================  =========  =============================================
``embed.weight``      (128, 64)  input projection (out, in), as torch.nn.Linear
``embed.bias``        (128,)
``blocks.{i}.weight`` (128, 128) residual block i = 0..3: h + relu(W h + b)
``blocks.{i}.bias``   (128,)
``head.weight``       (10, 128)  classifier
``head.bias``         (10,)
``x_test``, ``y_test``  (360, 64), (360,)   held-out images (scaled to [0, 1]) and labels
``x_calib``            (256, 64)  training images for calibration (GPTQ, Wanda, ...)
====================  =========  =============================================

The functions here run it in NumPy so that tutorials and the demo can measure
what quantization and pruning cost in accuracy.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

__all__ = ["load_digits_mlp", "digits_mlp_forward", "digits_mlp_accuracy", "DIGITS_MLP_BLOCKS"]

DIGITS_MLP_BLOCKS = 4


def load_digits_mlp() -> dict[str, np.ndarray]:
    """The bundled model's weights and data as a dict of NumPy arrays (a fresh copy)."""
    with resources.files("refquant.data").joinpath("digits_mlp.npz").open("rb") as f:
        with np.load(f, allow_pickle=False) as z:
            return {k: z[k].copy() for k in z.files}


def digits_mlp_forward(params, x, *, skip_blocks=(), return_hidden=False):
    """Logits of the residual MLP for images ``x`` of shape (n, 64), in float32.

    ``skip_blocks`` lists residual blocks to drop (layer pruning). With
    ``return_hidden`` the hidden states before each block and after the last
    one are returned too (for Block Influence and similar scores).
    """
    x = np.asarray(x, dtype=np.float32)
    h = np.maximum(x @ params["embed.weight"].T + params["embed.bias"], 0)
    hidden = [h]
    for i in range(DIGITS_MLP_BLOCKS):
        if i not in skip_blocks:
            w, b = params[f"blocks.{i}.weight"], params[f"blocks.{i}.bias"]
            h = h + np.maximum(h @ w.T + b, 0)
        hidden.append(h)
    logits = h @ params["head.weight"].T + params["head.bias"]
    return (logits, hidden) if return_hidden else logits


def digits_mlp_accuracy(params, x=None, y=None, **forward_kw) -> float:
    """Top-1 accuracy on the held-out digits (or on ``x``, ``y``)."""
    if x is None:
        x, y = params["x_test"], params["y_test"]
    return float(np.mean(np.argmax(digits_mlp_forward(params, x, **forward_kw), axis=1) == y))
