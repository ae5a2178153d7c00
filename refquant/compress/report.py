"""What compression cost, tensor by tensor: a table, strict JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field

__all__ = ["TensorRow", "CompressReport"]


@dataclass
class TensorRow:
    """One tensor of the report.

    ``sqnr_db`` is :math:`10 \\log_{10}(\\sum w^2 / \\sum (w - \\hat w)^2)` (``None``
    when the tensor is kept, or when the error is zero: JSON has no infinity);
    ``max_err_steps`` the largest :math:`|w - \\hat w|` in quantization steps,
    for schemes with one scale per step (``None`` otherwise).
    """

    name: str
    shape: list
    dtype: str
    scheme: str
    reason: str
    bits_per_weight: float
    bytes_in: int
    bytes_out: int
    sqnr_db: float | None = None
    max_err_steps: float | None = None
    sparsity: float = 0.0
    exact: bool = False


@dataclass
class CompressReport:
    """Every tensor's row and the totals; ``to_json`` / ``to_csv`` / ``table``."""

    source: str
    output: str
    recipe: str
    rows: list[TensorRow] = field(default_factory=list)
    #: remarks on the whole output (what a conversion could not reproduce, ...)
    notes: list[str] = field(default_factory=list)

    @property
    def bytes_in(self) -> int:
        return sum(r.bytes_in for r in self.rows)

    @property
    def bytes_out(self) -> int:
        return sum(r.bytes_out for r in self.rows)

    def totals(self) -> dict:
        q = [r for r in self.rows if r.scheme != "keep"]
        weights = sum(math.prod(r.shape) for r in self.rows)
        return {"tensors": len(self.rows), "quantized": len(q), "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out,
                "ratio": self.bytes_in / self.bytes_out if self.bytes_out else None,
                "bits_per_weight": 8 * self.bytes_out / weights if weights else None}

    def to_dict(self) -> dict:
        out = {"source": self.source, "output": self.output, "recipe": self.recipe,
               "tensors": [asdict(r) for r in self.rows], "totals": self.totals()}
        if self.notes:
            out["notes"] = list(self.notes)
        return out

    def to_json(self) -> str:
        # strict JSON: allow_nan=False refuses any NaN / Infinity that slipped through
        return json.dumps(self.to_dict(), indent=1, allow_nan=False)

    def to_csv(self) -> str:
        out = io.StringIO()
        fields = list(TensorRow.__dataclass_fields__)
        w = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            d = asdict(r)
            d["shape"] = "x".join(map(str, r.shape))
            w.writerow({k: "" if v is None else v for k, v in d.items()})
        return out.getvalue()

    def table(self) -> str:
        """llama-quantize's habit: one line per tensor, then the totals."""
        w = max([len(r.name) for r in self.rows] + [6])
        head = (f"{'tensor':<{w}}  {'shape':<16}{'scheme':<12}{'bits/w':>7}{'SQNR dB':>9}"
                f"{'max steps':>10}{'bytes in':>12}{'bytes out':>12}")
        lines = [head, "-" * len(head)]
        for r in self.rows:
            shape = "x".join(map(str, r.shape)) or "scalar"
            sq = "exact" if r.exact else "-" if r.sqnr_db is None else f"{r.sqnr_db:.2f}"
            st = "-" if r.max_err_steps is None else f"{r.max_err_steps:.3f}"
            scheme = r.scheme if r.scheme != "keep" else "keep"
            lines.append(f"{r.name:<{w}}  {shape:<16}{scheme:<12}{r.bits_per_weight:>7.3f}"
                         f"{sq:>9}{st:>10}{r.bytes_in:>12}{r.bytes_out:>12}")
        t = self.totals()
        lines.append("-" * len(head))
        ratio = f"{t['ratio']:.2f}x smaller" if t["ratio"] else ""
        lines.append(f"{t['tensors']} tensors, {t['quantized']} quantized: {t['bytes_in']} -> "
                     f"{t['bytes_out']} bytes ({ratio}, {t['bits_per_weight'] or 0:.3f} bits per "
                     "weight)")
        kept: dict[str, list[str]] = {}
        for r in self.rows:
            if r.scheme == "keep" and r.reason != "default":
                kept.setdefault(r.reason, []).append(r.name)
        for why, names in kept.items():
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            lines.append(f"kept ({why}): {shown}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)
