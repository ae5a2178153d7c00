"""``--scheme mixed:B``: a mixed-precision plan over a checkpoint at ``B`` bits per weight.

The tensors that the preset defaults would quantize (2-D weights; norms, biases,
embeddings and the output head kept) are read one at a time and quantized under
every scheme of the ladder that stores their shape; each choice's size is the
bytes of its stored parts and its error the sensitivity of
:mod:`refquant.quant.mixed` (``"weight"``: ``||W - Q(W)||^2``; with calibration
inputs, ``"hessian_diag"``: ``sum_ij H_jj (W - Q(W))_ij^2``). The allocation
(exact DP, or greedy for large models) then gives one rule per tensor, and the
pipeline compresses with those rules. ``B`` averages over the quantized tensors
only (the kept ones keep their size).

Ladder (:data:`LADDER`): llama.cpp's block types ``q2_k`` (2.625 bits/weight),
``q3_k`` (3.4375), ``q4_k`` (4.5), ``q5_k`` (5.5), ``q6_k`` (6.5625) for rows that
are a multiple of 256, ``q4_0`` (4.5), ``q5_0`` (5.5), ``q8_0`` (8.5) for
multiples of 32, and ``f16``: their exact stored sizes, and every one of them
writes to GGUF as well as to refquant's safetensors. ``mixed:B:S1,S2,...`` replaces the
ladder with the schemes named (``mixed:5:q4_k,q6_k,q8_0``; for GGUF output each needs a
ggml type).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from .._errors import RefquantError
from .recipe import Recipe, Rule
from .schemes import KEEP, get_scheme

__all__ = ["MixedRecipe", "LADDER", "plan_checkpoint"]

LADDER = ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q4_0", "q5_0", "q8_0", "f16")


@dataclass
class MixedRecipe(Recipe):
    """The recipe of ``mixed:B``; :meth:`resolve` turns it into rules for a checkpoint."""

    bits: float = 4.5
    ladder: tuple = LADDER
    plan: object = None

    @classmethod
    def from_preset(cls, name: str, output_format=None) -> MixedRecipe:
        """``mixed:B``, or ``mixed:B:S1,S2,...`` to choose among schemes ``S1, S2, ...``
        instead of :data:`LADDER` (any scheme names of refquant: ``mixed:5:q4_k,q6_k,q8_0``)."""
        m = re.fullmatch(r"mixed:([0-9]+(?:\.[0-9]+)?)(?::([^:]+))?", name)
        if not m or not 0 < float(m.group(1)) <= 32:
            raise RefquantError(f"scheme {name!r}: expected mixed:B with B the average bits per "
                                "weight, a number in (0, 32] (mixed:4.5), optionally followed "
                                "by :S1,S2,... the schemes to choose from (mixed:5:q4_k,q8_0)")
        ladder = LADDER
        if m.group(2) is not None:
            ladder = tuple(c.strip() for c in m.group(2).split(","))
            if any(not c for c in ladder):
                raise RefquantError(f"scheme {name!r}: an empty name in the list of schemes")
            if len(set(ladder)) != len(ladder):
                raise RefquantError(f"scheme {name!r}: a scheme is listed twice")
            for c in ladder:
                if c == KEEP or c.startswith("mixed"):
                    raise RefquantError(f"scheme {name!r}: {c!r} cannot be a choice of a "
                                        "mixed-precision plan")
                get_scheme(c)  # an unknown name raises, with its suggestions
        return cls(scheme="mixed", bits=float(m.group(1)), ladder=ladder,
                   source=f"--scheme {name} (mixed-precision plan)")

    def resolve(self, ck, calibration=None) -> Recipe:
        """Plan the checkpoint; the rules of the plan, plus the plan as ``.plan``."""
        self.plan = plan_checkpoint(ck, self.bits, ladder=self.ladder, calibration=calibration,
                                    defaults=self)
        from ..quant.mixed import plan_pattern

        rules = [Rule(plan_pattern(lp.name), lp.choice, True) for lp in self.plan.layers]
        rec = Recipe(scheme=KEEP, rules=rules, keep_embeddings=self.keep_embeddings,
                     keep_head=self.keep_head, source=self.source)
        rec.plan = self.plan
        return rec


def plan_checkpoint(ck, bits, *, ladder=LADDER, calibration=None, defaults=None, method="auto"):
    """A :class:`~refquant.quant.mixed.MixedPrecisionPlan` of checkpoint ``ck`` at ``bits``."""
    from ..quant.mixed import plan_from_table, sensitivity

    base = Recipe(scheme="mixed", keep_embeddings=getattr(defaults, "keep_embeddings", True),
                  keep_head=getattr(defaults, "keep_head", True))
    schemes = [get_scheme(n) for n in ladder]
    names, numels, cands = [], [], []
    metric = "weight" if calibration is None else "hessian_diag"
    for name, info in ck.infos.items():
        shape = tuple(info.logical_shape or info.shape)
        if info.scheme is not None:
            continue  # already quantized: kept
        sname, _ = base.decide(name, info.dtype, shape)
        if sname != "mixed":
            continue
        fits = [s for s in schemes if s.unsupported(shape) is None]
        if not fits:
            continue
        w = np.asarray(ck[name], np.float32)
        if not np.isfinite(w).all():
            raise RefquantError(f"tensor {name!r} holds NaN/Inf; a mixed-precision plan needs "
                                "finite weights")
        h = None
        if calibration is not None:
            from ..quant.gptq import HessianAccumulator

            x = calibration.rows(name, int(np.prod(shape[1:])), "mixed-precision plan")
            h = HessianAccumulator(x.shape[1]).update(x).hessian
        w2 = w.reshape(shape[0], -1).astype(np.float64)
        c = {}
        for s in fits:
            parts = s.quantize(w)
            w_hat = np.asarray(s.dequantize(parts, shape), np.float64).reshape(w2.shape)
            size = 8 * sum(p.nbytes for p in s.parts(shape))
            c[s.name] = (size, sensitivity(w2, w_hat, metric=metric, hessian=h))
        names.append(name)
        numels.append(math.prod(shape))
        cands.append(c)
    if not names:
        raise RefquantError("mixed-precision plan: no tensor to quantize (every tensor is kept "
                            "by the defaults or has no scheme of the ladder for its shape)")
    return plan_from_table(names, numels, cands, average_bits=bits, method=method,
                           metric=metric)
