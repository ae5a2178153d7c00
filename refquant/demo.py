"""What ``refquant demo`` computes: a model's weights under the ladder of compression presets.

One row per scheme: bits per weight (codes plus every stored scale, zero point
and index, as the scheme's stored parts count them), total bytes, SQNR in dB
over all weights and, for the bundled digits MLP, its test accuracy. Library
code returns rows; the CLI prints them and plots accuracy (or SQNR) against bits
per weight.
"""

from __future__ import annotations

import numpy as np

from ._errors import RefquantError
from .models import DIGITS_MLP_BLOCKS, digits_mlp_accuracy, digits_mlp_forward, load_digits_mlp
from .quant import sqnr_db

__all__ = ["ladder_rows", "checkpoint_rows", "plot_rows", "LADDER", "WEIGHT_NAMES",
           "MAX_ELEMENTS"]

WEIGHT_NAMES = ("embed.weight", *(f"blocks.{i}.weight" for i in range(DIGITS_MLP_BLOCKS)),
                "head.weight")

#: (label, family, what) in the order printed; ``what`` is a scheme name of
#: :func:`refquant.compress.schemes.get_scheme`, or "gptq" / "2:4" / "sparsegpt-2:4"
LADDER = (
    ("int8", "integer", "int8"),
    ("fp8", "float", "fp8"),
    ("q8_0", "llama.cpp", "q8_0"),
    ("q6_k", "llama.cpp", "q6_k"),
    ("q4_k", "llama.cpp", "q4_k"),
    ("int4-g128", "integer", "int4-g128"),
    ("gptq int4-g128", "integer", "gptq"),
    ("q4_0", "llama.cpp", "q4_0"),
    ("nf4", "codebook", "nf4"),
    ("mxfp4", "mx", "mxfp4"),
    ("q3_k", "llama.cpp", "q3_k"),
    ("q2_k", "llama.cpp", "q2_k"),
    ("2:4 magnitude", "sparse", "2:4"),
    ("2:4 sparsegpt", "sparse", "sparsegpt-2:4"),
)

#: tensors above this many elements are skipped by :func:`checkpoint_rows`
MAX_ELEMENTS = 16 * 2**20

# 2:4 storage: the kept half in float16 plus a 2-bit index per kept value
# (NVIDIA's compressed layout for 16-bit sparse tensor cores): 0.5 * (16 + 2)
_BPW_2_4 = 9.0


def _round_trip(what, w, hessian=None):
    """(approximation in float32, stored bytes, note or None) for one 2-D tensor ``w``."""
    if what == "gptq":
        from .quant.gptq import gptq

        r = gptq(w, hessian, bits=4, symmetric=True, group_size=128)
        ngroups = r.scale.size
        return np.asarray(r.dequantized, np.float32), w.size // 2 + 4 * ngroups, None
    if what in ("2:4", "sparsegpt-2:4"):
        nbytes = int(np.ceil(w.size * _BPW_2_4 / 8))
        if w.shape[-1] % 4:
            return w.astype(np.float32), w.size * 4, "row not a multiple of 4: kept dense"
        if what == "2:4":
            from .prune import nm_mask

            mask = nm_mask(np.abs(w), keep=2, group=4, axis=-1)
            return np.where(mask, w, 0).astype(np.float16).astype(np.float32), nbytes, None
        from .prune.sparsegpt import sparsegpt

        r = sparsegpt(w, hessian, prune_n=2, prune_m=4)
        return np.asarray(r.weight, np.float32).astype(np.float16).astype(np.float32), \
            nbytes, None
    from .compress.schemes import GGMLScheme, MXScheme, get_scheme

    s = get_scheme(what)
    shape, note = w.shape, None
    if s.unsupported(shape):
        bs = s.fmt.block_size if isinstance(s, GGMLScheme) else None
        if bs and w.size % bs == 0:
            # llama.cpp needs whole blocks per row; the blocks are contiguous, so the
            # matrix read as rows of one block each quantizes to the same values
            shape, note = (w.size // bs, bs), (f"rows shorter than {bs} regrouped into {bs}-weight "
                                                "rows (llama-quantize would pick another type)")
        else:
            return w.astype(np.float32), w.size * 4, f"{s.unsupported(shape)}: kept float32"
    w2 = w.reshape(shape)
    parts = s.quantize(w2)
    nbytes = sum(p.nbytes for p in s.parts(shape))
    if isinstance(s, MXScheme):
        # refquant compress stores one element code per byte; the format packs its
        # elements at their own width (mxfp4: 4 bits) plus one e8m0 byte per 32
        ebits = int(what[4]) if what.startswith("mxfp") else 8
        nbytes = -(-w.size * ebits // 8) + s.parts(shape)[1].nbytes
    return s.dequantize(parts, shape).reshape(w.shape).astype(np.float32), nbytes, note


def _row(label, family, ref, approx, nbytes, notes):
    n = sum(r.size for r in ref)
    return {"scheme": label, "family": family, "bits_per_weight": 8 * nbytes / n,
            "bytes": int(nbytes),
            "sqnr_db": sqnr_db(np.concatenate([r.ravel() for r in ref]),
                               np.concatenate([a.ravel() for a in approx])),
            "notes": sorted(set(notes))}


def _hessians(p):
    """``X^T X / n`` of every weight's input on the model's calibration images."""
    x = p["x_calib"].astype(np.float64)
    _, hidden = digits_mlp_forward(p, x, return_hidden=True)
    ins = [x, *hidden[:DIGITS_MLP_BLOCKS], hidden[DIGITS_MLP_BLOCKS]]
    return {n: 2 * (h.T @ h) / len(h) for n, h in zip(WEIGHT_NAMES, ins, strict=True)}


def ladder_rows(params=None, schemes=LADDER):
    """One row per scheme of :data:`LADDER` on every weight matrix of the bundled MLP.

    Each row: ``scheme``, ``family``, ``bits_per_weight`` (stored bits over weights),
    ``bytes``, ``sqnr_db`` (over all weights), ``accuracy`` (test top-1 with those
    weights), ``notes``. The first row is float32. GPTQ and SparseGPT use the
    Hessian ``2 X^T X / n`` of each layer's float inputs on ``x_calib``.
    """
    p = load_digits_mlp() if params is None else params
    ref = [p[n] for n in WEIGHT_NAMES]
    base = _row("float32", "float", ref, ref, sum(r.nbytes for r in ref), [])
    base["accuracy"] = digits_mlp_accuracy(p)
    rows = [base]
    hess = _hessians(p) if any(w in ("gptq", "sparsegpt-2:4") for _, _, w in schemes) else {}
    for label, family, what in schemes:
        q_params, approx, nbytes, notes = dict(p), [], 0, []
        for n in WEIGHT_NAMES:
            wq, b, note = _round_trip(what, p[n], hess.get(n))
            q_params[n] = wq
            approx.append(wq)
            nbytes += b
            if note:
                notes.append(note)
        row = _row(label, family, ref, approx, nbytes, notes)
        row["accuracy"] = digits_mlp_accuracy(q_params)
        rows.append(row)
    return rows


def _is_float(dtype) -> bool:
    return np.dtype(dtype).kind == "f" or "float" in str(dtype)


def checkpoint_rows(path, schemes=LADDER, *, max_elements=MAX_ELEMENTS):
    """The ladder on the 2-D float tensors of a checkpoint (any format :mod:`refquant.io` reads).

    Returns ``(rows, notes)``: rows as :func:`ladder_rows` without ``accuracy``
    (no data to run the model on), and what was skipped. Schemes that need
    calibration inputs (GPTQ, SparseGPT) are left out; tensors with more than
    ``max_elements`` elements are skipped.
    """
    from . import io as rio

    schemes = [s for s in schemes if s[2] not in ("gptq", "sparsegpt-2:4")]
    notes, ref = [], {}
    with rio.open(path) as ck:
        for name, info in ck.infos.items():
            if len(info.shape) != 2 or not _is_float(info.dtype):
                continue
            size = int(np.prod(info.shape))
            if size > max_elements:
                notes.append(f"{name}: {size} elements > {max_elements}, skipped")
                continue
            ref[name] = np.asarray(ck[name]).astype(np.float32)
    if not ref:
        raise RefquantError(f"path {str(path)!r} holds no 2-D float tensor of at most "
                            f"{max_elements} elements; the demo has nothing to compress")
    notes.append("gptq and sparsegpt need calibration inputs: not run on a checkpoint")
    tensors = list(ref.values())
    rows = [_row("float32", "float", tensors, tensors, sum(t.nbytes for t in tensors), [])]
    for label, family, what in schemes:
        approx, nbytes, tnotes = [], 0, []
        for name, w in ref.items():
            wq, b, note = _round_trip(what, w)
            approx.append(wq)
            nbytes += b
            if note:
                tnotes.append(f"{name}: {note}")
        rows.append(_row(label, family, tensors, approx, nbytes, tnotes))
    return rows, notes


def plot_rows(rows, path, *, title="") -> None:
    """Accuracy (or SQNR when rows have no accuracy) against bits per weight, written to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "accuracy" if "accuracy" in rows[0] else "sqnr_db"
    fig, ax = plt.subplots(figsize=(8, 5))
    families = sorted({r["family"] for r in rows})
    placed = []
    for fam in families:
        sel = [r for r in rows if r["family"] == fam and np.isfinite(r[key])]
        ys = [100 * r[key] if key == "accuracy" else r[key] for r in sel]
        ax.scatter([r["bits_per_weight"] for r in sel], ys, label=fam)
        for r, y in zip(sel, ys, strict=True):
            x = r["bits_per_weight"]
            # labels of nearby points are stacked downwards instead of overprinted
            near = sum(abs(np.log2(x / px)) < 0.3 and abs(y - py) < 0.02 * (1 + abs(y))
                       for px, py in placed)
            placed.append((x, y))
            ax.annotate(r["scheme"], (x, y), fontsize=7, xytext=(4, 3 - 9 * near),
                        textcoords="offset points")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bits per weight (codes + scales + indices)")
    ax.set_ylabel("test accuracy %" if key == "accuracy" else "SQNR dB")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
