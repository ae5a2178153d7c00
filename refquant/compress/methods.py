"""The method and pruning axes of a recipe: gptq / awq with calibration data, pruning scores.

A recipe rule (or the whole recipe) may add, to a tensor's scheme::

    method = "rtn" | "gptq" | "awq"       # default "rtn" (round to nearest)
    prune  = "2:4" | "N:M" | "50%" | "0.5" | "rows:25%"
    score  = "magnitude" | "wanda" | "sparsegpt"   # default "magnitude"

llama.cpp types take an importance matrix instead (``imatrix = "model.imatrix"``
in the recipe: llama-imatrix's GGUF or legacy ``.dat``, read by
:func:`refquant.io.imatrix.load_imatrix`): every ggml-typed tensor it names is
quantized by :func:`refquant.compat.ggml.quantize` with its importance vector
(``quantize_<type>(..., quant_weights)``, as llama-quantize does).

Calibration data (``calibration = "acts.npz"`` in the recipe, relative to the
recipe file; ``compress(..., calibration=)``; ``--calibration``) is an ``.npz``
of **per-layer inputs**: one array per weight, keyed by the weight tensor's name
(``model.layers.0.mlp.down_proj.weight``) or by its module name (the name
without ``.weight``), of shape ``(..., in_features)``: the rows the layer saw on
calibration data (for a linear layer ``y = x W^T``, the ``x``). Each array is
read when its tensor is quantized (memory: one layer's inputs at a time).

HQQ (calibration-free, a float zero point) is a scheme, ``hqq-int{b}-g{G}``
(:class:`refquant.compress.schemes.HQQScheme`), not a method.

Methods (tensor by tensor, so nothing is folded into a neighbouring layer):

``rtn``        the scheme's own quantization.
``gptq``       :func:`refquant.quant.gptq.gptq` on ``H = (2/n) X^T X`` of the
               layer's inputs: the scheme's bits, symmetry and group size (integer
               schemes only), static groups, damping 0.01, float64; its codes,
               scales and zero points are stored in the scheme's parts.
``awq``        AWQ's clipping search (:func:`refquant.quant.awq.awq_clip_search`,
               AutoAWQ's ``apply_clip``) on the layer's inputs, then the scheme's
               round to nearest of the clipped weights. AWQ's *scale* search is not
               applied: its scales must be folded into the operation that produces
               the layer's input (a norm or the previous linear), which a
               tensor-by-tensor pipeline does not know; fold them with
               :func:`refquant.quant.awq.awq` on the model, then compress.

Pruning (before quantization; the pruned weights are zero in the output, kept
zero by the schemes whose grid holds 0): unstructured ``S%`` (``floor(in * S)``
weights per row), ``N:M`` (N nonzeros in every M consecutive weights of a row:
``2:4`` prunes 2 of 4), ``rows:S%`` (structured: whole output rows, lowest
row score first, zeroed in place). Scores: ``magnitude`` ``|W|``; ``wanda``
``|W| * ||X_j||_2`` (needs calibration inputs); ``sparsegpt``
(:func:`refquant.prune.sparsegpt.sparsegpt`: OBS updates of the kept weights,
needs calibration inputs; not for ``rows:``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

from .._errors import RefquantError

__all__ = ["Treatment", "Calibration", "parse_prune", "METHODS", "SCORES", "apply"]

METHODS = ("rtn", "gptq", "awq")
SCORES = ("magnitude", "wanda", "sparsegpt")


@dataclass(frozen=True)
class Treatment:
    """What a tensor gets besides its scheme, and the recipe line that said so."""

    method: str = "rtn"
    prune: str | None = None
    score: str = "magnitude"
    where: str = ""

    @property
    def needs_calibration(self) -> bool:
        return self.method in ("gptq", "awq") or (self.prune is not None and
                                                  self.score in ("wanda", "sparsegpt"))

    def label(self) -> str:
        bits = [] if self.method == "rtn" else [self.method]
        if self.prune:
            bits.append(f"prune {self.prune} ({self.score})")
        return ", ".join(bits)


def parse_prune(spec, where="prune"):
    """``(kind, a, b)``: ("nm", n_pruned, m), ("unstructured", fraction, 0) or ("rows", f, 0)."""
    if not isinstance(spec, str):
        raise RefquantError(f"{where}: prune must be a string like '2:4', '50%' or 'rows:25%', "
                            f"got {spec!r}")
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", spec)
    if m:
        n, mm = int(m.group(1)), int(m.group(2))
        if not 0 < n <= mm:
            raise RefquantError(f"{where}: prune {spec!r}: N:M needs 0 < N <= M (N nonzeros "
                                "of every M)")
        return "nm", mm - n, mm
    rows = spec.startswith("rows:")
    body = spec[5:] if rows else spec
    m = re.fullmatch(r"\s*([0-9.]+)\s*(%?)\s*", body)
    if not m:
        raise RefquantError(f"{where}: prune {spec!r} is not 'N:M', 'S%', a fraction or "
                            "'rows:S%'")
    try:
        f = float(m.group(1)) / (100 if m.group(2) else 1)
    except ValueError:
        raise RefquantError(f"{where}: prune {spec!r}: not a number") from None
    if not 0 <= f <= 1:
        raise RefquantError(f"{where}: prune {spec!r}: the fraction must be in [0, 1]")
    return ("rows" if rows else "unstructured"), f, 0


def check_treatment(method, prune, score, where) -> Treatment:
    if method == "hqq":
        raise RefquantError(f"{where}: HQQ needs no calibration and stores a float zero "
                            "point, so it is a scheme: scheme = 'hqq-int4-g64' (hqq-int{b}-g{G})")
    if method not in METHODS:
        raise RefquantError(f"{where}: method must be one of {', '.join(METHODS)}, got "
                            f"{method!r}")
    if score not in SCORES:
        raise RefquantError(f"{where}: score must be one of {', '.join(SCORES)}, got {score!r}")
    if prune is not None:
        kind, _, _ = parse_prune(prune, where)
        if kind == "rows" and score == "sparsegpt":
            raise RefquantError(f"{where}: score 'sparsegpt' prunes weights, not rows; use "
                                "magnitude or wanda with rows:")
        if method == "gptq":
            raise RefquantError(f"{where}: method 'gptq' would refill the pruned weights (its "
                                "error feedback); use score = 'sparsegpt' (OBS pruning) with "
                                "method 'rtn'")
    return Treatment(method, prune, score, where)


class Calibration:
    """Per-layer calibration inputs from an ``.npz`` (see the module docstring), and / or a
    llama.cpp importance matrix (``imatrix``) for the ggml block types."""

    def __init__(self, path=None, imatrix=None):
        self.imatrix_path = None
        self.imatrix = None
        #: the imatrix file's contents (``ImatrixData``), read once: its vectors and the
        #: GGUF keys llama-quantize adds come from it
        self.imatrix_data = None
        if isinstance(imatrix, (str, os.PathLike)):
            from ..io.imatrix import read_imatrix

            self.imatrix_path = os.fspath(imatrix)
            self.imatrix_data = read_imatrix(imatrix)
            self.imatrix = self.imatrix_data.importance()  # load_imatrix's vectors
        elif imatrix is not None:
            if not hasattr(imatrix, "items"):
                raise RefquantError("imatrix must be a path or a dict {tensor name: vector}, "
                                    f"got {type(imatrix).__name__}")
            self.imatrix = {str(k): np.asarray(v, np.float32).reshape(-1)
                            for k, v in imatrix.items()}
        self.path = None if path is None else os.fspath(path)
        self._z = None
        if path is None:
            return
        try:
            self._z = np.load(self.path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise RefquantError(f"calibration {self.path!r}: not a readable .npz: {e}") from None
        if not hasattr(self._z, "files"):
            raise RefquantError(f"calibration {self.path!r}: expected an .npz of per-layer "
                                "inputs, got a single array")

    def rows(self, name: str, width: int, where: str) -> np.ndarray:
        """The layer's inputs as float64 rows (n, width)."""
        if self._z is None:
            raise RefquantError(f"{where}: tensor {name!r} needs calibration inputs (an .npz: "
                                "calibration = 'acts.npz' in the recipe, or --calibration)")
        for key in (name, name[:-len(".weight")] if name.endswith(".weight") else None):
            if key is not None and key in self._z.files:
                x = self._z[key]
                break
        else:
            raise RefquantError(f"{where}: tensor {name!r} needs calibration inputs, but "
                                f"{self.path!r} has no key {name!r} (or its module name)")
        if x.dtype.kind not in "fiu" or x.ndim < 1 or x.shape[-1] != width:
            raise RefquantError(f"calibration {self.path!r}[{key!r}]: expected real rows "
                                f"(..., {width}) (the input width of {name!r}), got "
                                f"{x.dtype}{x.shape}")
        x = np.asarray(x, np.float64).reshape(-1, width)
        if not np.isfinite(x).all():
            bad = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
            raise RefquantError(f"calibration {self.path!r}[{key!r}]: NaN or Inf at row/column "
                                f"{bad}")
        return x

    def importance(self, name: str, shape):
        """llama-quantize's importance vector of ``name`` (None when the imatrix has none):
        ``ne[0]*ne[2]`` values, one row per expert of a 3-D tensor."""
        if self.imatrix is None or name not in self.imatrix:
            return None
        shape = tuple(shape)
        v = np.asarray(self.imatrix[name], np.float32).reshape(-1)
        want = (shape[-1] if shape else 1) * (shape[-3] if len(shape) == 3 else 1)
        if v.size != want or len(shape) > 3:
            src = "" if self.imatrix_path is None else f" {self.imatrix_path!r}"
            raise RefquantError(f"imatrix{src}: entry {name!r} has {v.size} values, the tensor "
                                f"of shape {shape} needs {want} (ne[0]*ne[2]); llama-quantize "
                                "refuses a mismatched imatrix")
        return v

    def close(self):
        if self._z is not None:
            self._z.close()


def _hessian(x):
    from ..quant.gptq import HessianAccumulator

    return HessianAccumulator(x.shape[1]).update(x)


def _prune(w, t: Treatment, x, name):
    """(pruned float64 weights, number of zeros it made)."""
    from ..prune.wanda_calibrated import wanda_prune

    kind, a, b = parse_prune(t.prune, t.where)
    w2 = w.reshape(w.shape[0], -1)
    if t.score == "sparsegpt":
        from ..prune.sparsegpt import sparsegpt

        if kind == "nm":
            r = sparsegpt(w2, _hessian(x).hessian, prune_n=a, prune_m=b)
        else:
            r = sparsegpt(w2, _hessian(x).hessian, sparsity=a)
        return np.where(r.mask, 0.0, r.weight).reshape(w.shape)
    scores = np.abs(w2)
    if t.score == "wanda":
        scores = scores * np.sqrt(np.einsum("ij,ij->j", x, x))[None, :]
    if kind == "rows":
        k = int(w2.shape[0] * a)
        order = np.argsort(scores.sum(axis=1), kind="stable")[:k]
        out = w2.copy()
        out[order] = 0.0
        return out.reshape(w.shape)
    if kind == "nm":
        out, _ = wanda_prune(w2, scores, prune_n=a, prune_m=b)
    else:
        out, _ = wanda_prune(w2, scores, sparsity=a)
    return out.reshape(w.shape)


def gptq_parts(scheme, w, x):
    """GPTQ's codes, scales and zero points stored in an integer scheme's parts."""
    from ..quant.gptq import gptq
    from .schemes import IntegerScheme

    if not isinstance(scheme, IntegerScheme):
        raise RefquantError(f"method 'gptq' needs an integer scheme (int8, int4-g128, uintN ...), "
                            f"got {scheme.name!r}; for llama.cpp types give an imatrix instead")
    b = scheme.fmt.bits
    if not 2 <= b <= 8:
        raise RefquantError(f"method 'gptq' quantizes 2 to 8 bits; scheme {scheme.name!r} has {b}")
    rows, cols = w.shape[0], int(np.prod(w.shape[1:]))
    w2 = np.asarray(w, np.float64).reshape(rows, cols)
    r = gptq(w2, _hessian(x), bits=b, symmetric=scheme.symmetric,
             group_size=scheme.group, static_groups=True)
    off = 0 if scheme.fmt.signed else 1 << (b - 1)
    q = r.codes + off
    z = r.zero_point + off
    return scheme.from_codes(q, np.asarray(r.scale, np.float32), z, w.shape)


def apply(scheme, w, t: Treatment | None, calib: Calibration | None, name: str):
    """The scheme's parts for ``w`` under treatment ``t`` (prune, then quantize)."""
    from .schemes import GGMLScheme

    if isinstance(scheme, GGMLScheme) and calib is not None and calib.imatrix is not None:
        imp = calib.importance(name, np.shape(w))
        if imp is not None and (t is None or (t.method == "rtn")):
            if t is not None and t.prune is not None:
                w = _prune(np.asarray(w, np.float64), t, None if not t.needs_calibration else
                           calib.rows(name, int(np.prod(w.shape[1:])), t.where), name)
            return scheme.quantize(np.asarray(w, np.float32), imatrix=imp)
    if t is None or (t.method == "rtn" and t.prune is None):
        return scheme.quantize(w)
    x = None
    if t.needs_calibration:
        if calib is None:
            raise RefquantError(f"{t.where}: {t.label()} for {name!r} needs calibration inputs: "
                                "calibration = 'acts.npz' in the recipe, or --calibration")
        x = calib.rows(name, int(np.prod(w.shape[1:])), t.where)
    if w.ndim != 2 and (t.prune or t.method != "rtn"):
        raise RefquantError(f"{t.where}: {t.label()} works on 2-D weights; {name!r} has shape "
                            f"{w.shape}")
    w = np.asarray(w, np.float64)
    if t.prune is not None:
        w = _prune(w, t, x, name)
    if t.method == "gptq":
        return gptq_parts(scheme, w, x)
    if t.method == "awq":
        from ..quant.awq import awq_clip_search
        from .schemes import IntegerScheme

        if not (isinstance(scheme, IntegerScheme) and not scheme.symmetric and scheme.group):
            raise RefquantError(f"{t.where}: method 'awq' needs an asymmetric group scheme "
                                f"(int4-g128, int4-g32); got {scheme.name!r}")
        _, wc = awq_clip_search(w, x, bits=scheme.fmt.bits, group_size=scheme.group)
        if t.prune is not None:
            wc = np.where(w == 0, 0.0, wc)
        w = wc
    return scheme.quantize(np.asarray(w, np.float32))
