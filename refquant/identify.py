"""Which semantics did an implementation use? Search refquant's named choices for a match.

Given float inputs ``x`` and the integer codes ``q`` some foreign implementation
produced from them with a known scale and zero point, :func:`identify` runs
:func:`refquant.quantize` under every combination of its semantic arguments

=====================  =====================================================
dimension              values tried
=====================  =====================================================
``rounding``           half_even, half_away, half_up, half_down, half_zero,
                       floor, ceil, trunc
``scale_op``           divide, reciprocal
``precision``          float64, float32
``zero_point_stage``   after_rounding, before_rounding, fused
``clamp_stage``        after_rounding, before_rounding
``overflow``           saturate, wrap
``narrow_range``       False, True (signed formats only)
``nan``                zero, zero_point, qmin, qmax (only when x has NaN)
=====================  =====================================================

and the peers' own functions (the compat presets: ONNX, onnx.reference,
PyTorch, TFLite's three QUANTIZE kernels), and reports the ones that reproduce
``q`` exactly. A dimension is *determined* when every match agrees on it; when
the inputs cannot tell two values apart (no exact ties, say) it is listed as
*undetermined* with the values that remain. When nothing matches, the closest
candidates are reported with the elements where they depart.

It turns "my kernel is off by one somewhere" into "your kernel rounds ties away
from zero".
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from ._errors import RefquantError
from .formats.integer import int_format
from .quant.affine import quantize

__all__ = ["identify", "IdentifyReport", "SEMANTIC_CHOICES"]

#: The dimensions searched and their values, in the order they are reported.
SEMANTIC_CHOICES = {
    "rounding": ("half_even", "half_away", "half_up", "half_down", "half_zero", "floor", "ceil",
                 "trunc"),
    "scale_op": ("divide", "reciprocal"),
    "precision": ("float64", "float32"),
    "zero_point_stage": ("after_rounding", "before_rounding", "fused"),
    "clamp_stage": ("after_rounding", "before_rounding"),
    "overflow": ("saturate", "wrap"),
    "narrow_range": (False, True),
    "nan": ("zero", "zero_point", "qmin", "qmax"),
}


@dataclass
class Candidate:
    """One candidate's result: its name, semantics, and how far it is from ``q``."""

    name: str
    semantics: dict
    mismatches: int
    departures: list = field(default_factory=list)  # (index, x, code in Q, code these semantics give)

    def to_dict(self):
        return {"name": self.name, "semantics": self.semantics, "mismatches": self.mismatches,
                "departures": [{"index": list(i), "x": xv, "q": e, "candidate": g}
                               for i, xv, e, g in self.departures]}


@dataclass
class IdentifyReport:
    """What :func:`identify` found. ``matches`` is True when any candidate reproduces ``q``."""

    n: int
    dtype: str
    matching: list
    presets: list
    determined: dict
    undetermined: dict
    closest: list
    not_applicable: list

    @property
    def matches(self) -> bool:
        return bool(self.matching or self.presets)

    def to_dict(self):
        return {"n": self.n, "dtype": self.dtype, "matches": self.matches,
                "matching_semantics": [c.semantics for c in self.matching],
                "matching_presets": [c.name for c in self.presets],
                "determined": self.determined, "undetermined": self.undetermined,
                "closest": [c.to_dict() for c in self.closest],
                "presets_not_applicable": self.not_applicable}

    def __str__(self):
        lines = [f"identify: {self.n} element(s), {self.dtype}"]
        if self.matches:
            lines.append(f"{len(self.matching)} combination(s) of refquant's semantics reproduce "
                         "Q exactly" + (f"; presets: {', '.join(c.name for c in self.presets)}"
                                        if self.presets else "; no preset does"))
            for k, v in self.determined.items():
                lines.append(f"  {k:<18}= {v}")
            for k, vs in self.undetermined.items():
                lines.append(f"  {k:<18}one of {', '.join(map(str, vs))} (these inputs do not "
                             "tell them apart)")
            if self.undetermined and self.matching:
                lines.append("  e.g. " + "; ".join(
                    ", ".join(f"{k}={c.semantics[k]}" for k in self.undetermined)
                    for c in self.matching[:3]))
        else:
            lines.append("no combination reproduces Q; closest:")
            for c in self.closest:
                sem = ", ".join(f"{k}={v}" for k, v in c.semantics.items())
                lines.append(f"  {c.name}: {c.mismatches} / {self.n} element(s) differ  [{sem}]")
                for idx, xv, e, g in c.departures:
                    lines.append(f"    at {tuple(idx)}: x={float(xv)!r}: Q has {e}, "
                                 f"these semantics give {g}")
        return "\n".join(lines)


def _one(v, name):
    """The single value of a per-tensor ``scale`` / ``zero_point`` (scalar or one element)."""
    a = np.asarray(v)
    if a.size != 1:
        raise RefquantError(f"{name} has shape {a.shape}; a per-tensor preset needs one value")
    return a.reshape(-1)[0]


def _presets(fmt, axis, block_size):
    """(name, fn(x, scale, zp) -> codes) for every peer preset that applies here."""
    out, na = [], []
    per_tensor = axis is None and block_size is None
    name = fmt.name

    def add(label, ok, fn, why):
        (out.append((label, fn)) if ok else na.append(f"{label}: {why}"))

    def core(nan="zero", **sem):
        return lambda x, s, z: quantize(x, s, z, dtype=fmt, axis=axis, block_size=block_size,
                                        nan=nan, **sem)

    # onnxruntime's MLAS kernels send NaN to qmin (compat.onnx.quantize_linear)
    add("onnx QuantizeLinear (onnxruntime)", not fmt.narrow_range,
        core(rounding="half_even", scale_op="divide", precision="float32", nan="qmin"),
        "narrow range")
    try:
        from .compat import onnx as _onnx

        add("onnx.reference QuantizeLinear", name in ("int8", "uint8", "int16", "uint16")
            and per_tensor,
            lambda x, s, z: np.asarray(_onnx.quantize_linear(
                np.asarray(x, np.float32), np.float32(s),
                np.asarray(z).astype(fmt.storage_dtype), reference_quirks=True)).astype(np.int64),
            "per-tensor 8/16-bit only here")
    except ImportError as e:  # pragma: no cover - the module ships with refquant
        na.append(f"onnx.reference: {e}")
    from .compat import torch as _torch  # torch's own semantics: fma(x, 1/s, z), NaN -> qmax

    add("pytorch quantize_per_tensor", name in ("int8", "uint8") and per_tensor,
        lambda x, s, z: _torch.quantize_per_tensor(
            np.asarray(x, np.float32), float(_one(s, "scale")), int(_one(z, "zero_point")),
            "qint8" if name == "int8" else "quint8").astype(np.int64),
        "per-tensor int8/uint8 only")
    if per_tensor and name in ("int8", "uint8", "int16"):
        from .compat import tflite as _tfl

        for k in ("reference", "optimized", "xnnpack"):
            out.append((f"tflite QUANTIZE ({k} kernel)",
                        lambda x, s, z, k=k: _tfl.affine_quantize(
                            x, _one(s, "scale"), int(_one(z, "zero_point")), dtype=name,
                            kernel=k)))
    else:
        na.append("tflite QUANTIZE: per-tensor int8/uint8/int16 only")
    return out, na


def identify(x, q, scale, zero_point=0, *, dtype=None, axis=None, block_size=None,
             closest=3, departures=5) -> IdentifyReport:
    """Find the semantics under which ``quantize(x, scale, zero_point)`` equals ``q``.

    Parameters
    ----------
    x : array_like of float
        The inputs given to the implementation under test.
    q : array_like of integers
        Its outputs, same shape as ``x``.
    scale, zero_point, axis, block_size
        As for :func:`refquant.quantize`.
    dtype : str or IntFormat, optional
        Integer format of ``q``; default from ``q``'s dtype (int8, uint8, int16,
        uint16, ml_dtypes int4 ...).
    closest : int
        How many nearest candidates to report when nothing matches.
    departures : int
        How many differing elements to list per candidate.

    Returns
    -------
    IdentifyReport
        ``str(report)`` is a readable summary; ``report.to_dict()`` is JSON-able.

    Formula
    -------
    A candidate :math:`c` matches when :math:`Q_c(x_i) = q_i` for every :math:`i`;
    candidates are ranked by :math:`|\\{i : Q_c(x_i) \\ne q_i\\}|`.

    Reference
    ---------
    The semantic arguments of :func:`refquant.quant.affine.quantize`; the compat
    modules for the presets (ONNX QuantizeLinear, PyTorch quantize_per_tensor,
    TFLite AffineQuantize).
    """
    arrays = []
    for name, v in (("x", x), ("q", q)):
        try:
            arrays.append(np.asarray(v))
        except (TypeError, ValueError):
            raise RefquantError(f"{name} must be a rectangular array of numbers") from None
    xa, qa = arrays
    if xa.shape != qa.shape:
        raise RefquantError(f"x has shape {xa.shape} but q has shape {qa.shape}; they must match")
    if qa.dtype.kind not in "iu" and qa.dtype.name not in ("int4", "uint4", "int2", "uint2"):
        raise RefquantError(f"q must hold integer codes, got dtype {qa.dtype}")
    if dtype is None:
        try:
            fmt = int_format(qa.dtype)
        except RefquantError:
            raise RefquantError(
                f"q has dtype {qa.dtype}; pass dtype= (e.g. 'int8', 'uint4') to name its format"
            ) from None
    else:
        fmt = int_format(dtype)
    qi = qa.astype(np.int64)
    if qi.size and (qi.min() < fmt.qmin or qi.max() > fmt.qmax):
        raise RefquantError(f"q holds values outside [{fmt.qmin}, {fmt.qmax}] of {fmt.name}")
    has_nan = False  # integers have none; quantize refuses complex, text, objects below
    if xa.dtype.kind in "fV":  # float16/32/64 and ml_dtypes floats (bfloat16 is kind "V")
        try:
            has_nan = bool(np.isnan(xa.astype(np.float64)).any())
        except (TypeError, ValueError):
            pass

    dims = dict(SEMANTIC_CHOICES)
    if not fmt.signed:
        dims["narrow_range"] = (False,)
    if not has_nan:
        dims["nan"] = ("zero",)
    names = list(dims)
    results, first_error = [], None
    for combo in itertools.product(*(dims[n] for n in names)):
        sem = dict(zip(names, combo, strict=True))
        try:
            got = quantize(xa, scale, zero_point, dtype=fmt.name.replace("_narrow", ""),
                           axis=axis, block_size=block_size, out_dtype=np.int64, **sem)
        except RefquantError as e:
            first_error = first_error or e
            continue  # e.g. wrap beyond 2^62, nan="zero" outside an unsigned narrow grid
        results.append(("semantics", sem, got))
    if not results:  # no semantics accepts these arguments: x, scale or zero_point is bad
        raise first_error
    presets, not_applicable = _presets(fmt, axis, block_size)
    zp = np.asarray(zero_point, dtype=np.float64)  # valid: quantize accepted it above
    if not np.array_equal(zp, np.round(zp)):  # the peers store it as an integer: no truncation
        not_applicable += [f"{label}: zero point {zero_point!r} is not an integer" for label, _ in presets]
        presets = []
    for label, fn in presets:
        try:
            got = np.asarray(fn(xa, scale, zero_point)).astype(np.int64)
        except RefquantError as e:
            not_applicable.append(f"{label}: {e}")
            continue
        results.append((label, {}, got))

    def cand(label, sem, got, detail):
        diff = got != qi
        c = Candidate(label if label != "semantics" else "refquant.quantize", sem, int(diff.sum()))
        if detail and c.mismatches:
            for idx in np.argwhere(diff)[:departures]:
                t = tuple(int(i) for i in idx)
                c.departures.append((t, float(xa[t]), int(qi[t]), int(got[t])))
        return c

    matching = [cand(lbl, sem, g, False) for lbl, sem, g in results
                if lbl == "semantics" and np.array_equal(g, qi)]
    preset_hits = [cand(lbl, sem, g, False) for lbl, sem, g in results
                   if lbl != "semantics" and np.array_equal(g, qi)]
    determined, undetermined = {}, {}
    if matching:
        for n in names:
            if len(dims[n]) == 1:
                continue
            vals = [v for v in dims[n] if any(c.semantics[n] == v for c in matching)]
            (determined.__setitem__(n, vals[0]) if len(vals) == 1
             else undetermined.__setitem__(n, vals))
    near = []
    if not matching and not preset_hits:
        ranked = sorted(results, key=lambda r: int((r[2] != qi).sum()))
        near = [cand(lbl, sem, g, True) for lbl, sem, g in ranked[:closest]]
    for c in matching + preset_hits + near:  # keep only the dimensions that vary
        c.semantics = {k: v for k, v in c.semantics.items() if len(dims[k]) > 1}
    return IdentifyReport(int(qi.size), fmt.name, matching, preset_hits, determined, undetermined,
                          near, not_applicable)
