"""``refquant diff``: how far a quantized checkpoint is from its original, tensor by tensor.

Both checkpoints are opened lazily; each weight of the original is matched to
its counterpart in the quantized checkpoint by logical name, dequantized there
(refquant's compressed layout, GGUF block types, plain floats), compared, and
released before the next: one tensor pair in memory at a time.

Names are matched exactly first. When one side is GGUF and the other uses
Hugging Face names (``model.layers.0.mlp.up_proj.weight``), gguf-py's tensor
name map for the GGUF's architecture translates them (``blk.0.ffn_up.weight``),
and llama-family ``attn_q`` / ``attn_k`` weights, which convert_hf_to_gguf.py
stores with their rotary halves interleaved, are permuted back before the
comparison.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass

import numpy as np

from .._errors import RefquantError

__all__ = ["DiffRow", "compare_checkpoints"]


@dataclass
class DiffRow:
    """One matched tensor: SQNR in dB (None when identical), errors, sizes."""

    name: str
    quantized_name: str
    shape: list
    scheme: str
    sqnr_db: float | None
    max_abs_error: float
    max_err_steps: float | None
    bytes_original: int
    bytes_quantized: int


def _quantized_view(ck):
    """{logical name: (scheme label, bytes, loader -> (float32, steps or None))}.

    Every layout :mod:`refquant.io.layouts` reads (GPTQ, AWQ, compressed-tensors,
    FP8, MLX, bitsandbytes, GGUF, refquant's own) through ``ck.logical_names()``,
    ``ck.scheme()`` and ``ck.dequantize()``; steps where refquant's own integer
    schemes store one scale per step.
    """
    from ..io.layouts import layout_of

    view = layout_of(ck)
    own = getattr(view, "_schemes", {})  # refquant's layout: the compress schemes
    out = {}
    for name in view.logical_names():
        sch = view.scheme(name)
        if sch is None:
            info = ck.info(name)
            if info.dtype.kind == "f" or info.dtype.name == "bfloat16":
                out[name] = (info.dtype.name, info.nbytes,
                             lambda n=name: (np.asarray(ck[n], np.float32), None))
            continue
        nbytes = sum(ck.info(p).nbytes for p in sch.parts)

        def load(n=name, sch=sch):
            w_hat = np.asarray(ck.dequantize(n), np.float32)
            s = own.get(n)
            if s is None or not s.has_steps:
                return w_hat, None
            roles = view.entries[n].roles
            parts = {("" if k == "codes" else k): ck[v] for k, v in roles.items()}
            return w_hat, s.steps(parts, sch.shape)

        out[name] = (sch.format, nbytes, load)
    return out


def _gguf_name_map(ck_gguf, names):
    """{original (HF) name: (GGUF name, permute heads or None)} through gguf-py's map."""
    try:
        import gguf
    except ImportError:
        return {}
    arch = ck_gguf.metadata.get("general.architecture")
    n_blocks = ck_gguf.metadata.get(f"{arch}.block_count")
    if not isinstance(arch, str) or not isinstance(n_blocks, int):
        return {}
    archs = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    if arch not in archs:
        return {}
    tmap = gguf.get_tensor_name_map(archs[arch], n_blocks)
    heads = ck_gguf.metadata.get(f"{arch}.attention.head_count")
    heads_kv = ck_gguf.metadata.get(f"{arch}.attention.head_count_kv", heads)
    out = {}
    for n in names:
        g = tmap.get_name(n, try_suffixes=(".weight", ".bias"))
        if g is None:
            continue
        permute = None
        if arch in ("llama", "mistral", "granite") and g.endswith(("attn_q.weight",
                                                                    "attn_k.weight")):
            permute = heads if g.endswith("attn_q.weight") else heads_kv
        out[n] = (g, permute)
    return out


def _hf_to_gguf_rows(w, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute: interleave the rotary halves per head."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def compare_checkpoints(original, quantized, *, progress=None) -> list[DiffRow]:
    """Compare every float tensor of ``original`` with its match in ``quantized``.

    Returns the rows worst first (lowest SQNR). A tensor of the original with no
    match is skipped; RefquantError when nothing matches at all.

    Formula
    -------
    :math:`\\mathrm{SQNR} = 10 \\log_{10} \\frac{\\sum w^2}{\\sum (w - \\hat w)^2}`;
    max error :math:`\\max |w - \\hat w|`; in steps where the scheme stores one scale
    per step (refquant's integer layouts).
    """
    from .. import io as rio

    rows = []
    with rio.open(original) as a, rio.open(quantized) as b:
        view = _quantized_view(b)
        names = [n for n, i in a.infos.items() if i.dtype.kind == "f" or i.dtype.name ==
                 "bfloat16"]
        mapping = {n: (n, None) for n in names if n in view}
        if b.format == "gguf" and len(mapping) < len(names):
            for n, m in _gguf_name_map(b, [n for n in names if n not in mapping]).items():
                if m[0] in view:
                    mapping[n] = m
        if not mapping:
            raise RefquantError(f"no tensor of {os.fspath(original)!r} has a counterpart in "
                                f"{os.fspath(quantized)!r} (compared by name)")
        for i, (n, (qn, permute)) in enumerate(mapping.items()):
            w = np.asarray(a[n], np.float32)
            label, nbytes, load = view[qn]
            got, steps = load()
            if permute:
                w = _hf_to_gguf_rows(w, permute)
            if got.shape != w.shape:
                raise RefquantError(f"tensor {n!r} has shape {w.shape} in the original but "
                                    f"{got.shape} as {qn!r} in the quantized checkpoint")
            w64, e = w.astype(np.float64), w.astype(np.float64) - got.astype(np.float64)
            noise, signal = float(np.sum(e * e)), float(np.sum(w64 * w64))
            sq = None if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else
                                          -math.inf)
            st = None
            if steps is not None:
                r = np.abs(e.reshape(np.shape(steps)[0], -1)) / steps
                st = float(r.max()) if r.size else 0.0
            rows.append(DiffRow(n, qn, list(w.shape), label,
                                sq if sq is None or math.isfinite(sq) else None,
                                float(np.abs(e).max()) if e.size else 0.0, st,
                                int(a.info(n).nbytes), int(nbytes)))
            if progress is not None:
                progress(i + 1, len(mapping), n)
    rows.sort(key=lambda r: (math.inf if r.sqnr_db is None else r.sqnr_db, r.name))
    return rows


def diff_table(rows) -> str:
    w = max([len(r.name) for r in rows] + [6])
    head = (f"{'tensor':<{w}}  {'scheme':<14}{'SQNR dB':>9}{'max |err|':>12}{'max steps':>10}"
            f"{'bytes':>12}{'quantized':>12}")
    out = [head, "-" * len(head)]
    for r in rows:
        sq = "equal" if r.sqnr_db is None else f"{r.sqnr_db:.2f}"
        st = "-" if r.max_err_steps is None else f"{r.max_err_steps:.3f}"
        out.append(f"{r.name:<{w}}  {r.scheme[:13]:<14}{sq:>9}{r.max_abs_error:>12.4g}{st:>10}"
                   f"{r.bytes_original:>12}{r.bytes_quantized:>12}")
    out.append("-" * len(head))
    tot_a = sum(r.bytes_original for r in rows)
    tot_b = sum(r.bytes_quantized for r in rows)
    out.append(f"{len(rows)} tensors compared, worst first; {tot_a} -> {tot_b} bytes")
    return "\n".join(out)


def diff_json(rows) -> str:
    return json.dumps({"tensors": [asdict(r) for r in rows]}, indent=1, allow_nan=False)


def diff_plot(rows, path) -> None:
    """SQNR by tensor, in the original's order of layers (a bar per tensor)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(rows, key=lambda r: _layer_key(r.name))
    vals = [r.sqnr_db if r.sqnr_db is not None else float("nan") for r in order]
    fig, ax = plt.subplots(figsize=(max(6, len(order) * 0.25), 3.5))
    ax.bar(range(len(order)), vals)
    ax.set_xticks(range(len(order)), [r.name for r in order], rotation=90, fontsize=6)
    ax.set_ylabel("SQNR (dB)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _layer_key(name):
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
