"""refquant's own compressed layout: what ``refquant compress`` writes to safetensors.

The file describes itself: ``__metadata__["refquant.compress"]`` is a JSON
document naming every tensor's scheme, shape and dtype, and each quantized
tensor's parts follow :mod:`refquant.compress.schemes` (``NAME`` codes,
``NAME_scale``, ``NAME_zero_point``, ``NAME_absmax``). Dequantization is the
scheme's own (the same function ``refquant decompress`` runs).
"""

from __future__ import annotations

import json
import math

import numpy as np

from ._base import LayoutView, Scheme

META_KEY = "refquant.compress"


class RefquantView(LayoutView):
    """Logical weights of a ``refquant compress`` output, from its metadata record."""

    name = "refquant"

    def __init__(self, ck, config):
        super().__init__(ck, config)
        # compress sits above io; its schemes are imported only for this layout
        from ...compress.schemes import KEEP, get_scheme

        try:
            tensors = json.loads(ck.metadata[META_KEY])["tensors"]
            items = list(tensors.items())
        except (ValueError, KeyError, TypeError, AttributeError):
            raise self.err(META_KEY, "the metadata record is not refquant's compression record"
                           ) from None
        self._schemes = {}
        for name, d in items:
            if not isinstance(d, dict) or d.get("scheme") == KEEP:
                continue
            try:
                shape = tuple(int(x) for x in d["shape"])
                sch = get_scheme(d["scheme"])
            except (KeyError, TypeError, ValueError) as e:
                raise self.err(name, f"bad record {d!r:.120}: {e}") from None
            roles = {}
            for p in sch.parts(shape):
                part = self.need(name + p.suffix, name)
                self.expect_dtype(part, [p.dtype], f"{sch.name} part {p.suffix or 'codes'!r}")
                self.expect_shape(part, p.shape, f"{sch.name} of a {shape} weight")
                roles[p.suffix or "codes"] = part
            nbytes = sum(p.nbytes for p in sch.parts(shape))
            n = math.prod(shape)
            desc = sch.describe()
            self.add(name, Scheme(
                format=f"refquant:{sch.name}", bits=8 * nbytes / n if n else 0.0,
                group_size=desc.get("group_size") or desc.get("block_size")
                or desc.get("blocksize"), symmetric=bool(desc.get("symmetric", True)),
                act_order=False, packing=str(desc.get("packing") or "one code per element"),
                strategy="group" if desc.get("group_size") else str(
                    desc.get("granularity", "channel")), shape=shape,
                block=(desc["tile"],) * 2 if desc.get("tile") else None), roles)
            self._schemes[name] = sch

    def _dequantize(self, name, entry):
        sch = self._schemes[name]
        parts = {("" if k == "codes" else k): np.asarray(self.ck[v]) for k, v in entry.roles.items()}
        return sch.dequantize(parts, entry.scheme.shape)
