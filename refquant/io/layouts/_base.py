"""Shared pieces of the quantized-checkpoint layouts: the scheme record, the view, bit packing.

A *layout* turns the raw tensors of a checkpoint (``qweight``, ``qzeros``,
``scales``, ``weight_packed``, ``weight_scale_inv`` ...) into *logical* weights:
one name per weight of the model (``model.layers.0.mlp.up_proj.weight``), a
:class:`Scheme` describing how it is stored, and a float32 dequantization that
reproduces the layout's own code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np

from ..._errors import RefquantError

__all__ = ["Scheme", "Entry", "LayoutView", "unpack_bitstream", "pack_bitstream", "layout_error"]


@dataclass(frozen=True)
class Scheme:
    """How one logical weight is stored.

    Attributes
    ----------
    format : str
        The layout's name: ``"gptq"``, ``"gptq_v2"``, ``"awq"``, ``"awq-gemv"``, ``"fp8"``,
        ``"fp8-block"``, ``"pack-quantized"``, ``"int-quantized"``,
        ``"float-quantized"``, ``"naive-quantized"``, ``"nvfp4-pack-quantized"``,
        ``"mxfp4-pack-quantized"``, ``"mxfp6-pack-quantized"``, ``"mxfp8-quantized"``,
        ``"sparse-bitmask"``, ``"sparse-24-bitmask"``, ``"mlx"``.
    bits : int or float
        Bits per stored code (ggml block types: bits per weight with the block
        scales included, e.g. 4.5 for Q4_0).
    group_size : int or None
        Input columns sharing one scale (``None``: per channel or per tensor).
    symmetric : bool
        No zero point (or a fixed one) is applied. GPTQ without ``sym`` in its
        config: whether every stored zero is the midpoint.
    act_order : bool
        A ``g_idx`` maps each input column to its group (GPTQ ``desc_act``).
    packing : str
        How codes sit in storage words.
    strategy : str
        ``"group"``, ``"channel"``, ``"tensor"``, ``"block"``, ``"tensor_group"``
        (NVFP4: groups with a global scale) or ``"sparse"``.
    block : tuple of int or None
        Tile of one scale for ``"block"`` strategy (rows, cols).
    parts : tuple of str
        The raw tensors this weight is made of.
    shape : tuple of int
        Shape of the logical (dequantized) weight, ``(out_features, in_features)``.
    """

    format: str
    bits: int
    group_size: int | None
    symmetric: bool
    act_order: bool
    packing: str
    strategy: str
    shape: tuple
    block: tuple | None = None
    parts: tuple = field(default=())


@dataclass
class Entry:
    """A logical weight: its scheme and the raw tensor names playing each role."""

    scheme: Scheme
    roles: dict


def layout_error(path, tensor: str, reason: str) -> RefquantError:
    """``"<path>: tensor '<name>': <reason>"`` -- the one error shape of the layouts."""
    return RefquantError(f"{os.fspath(path)}: tensor {tensor!r}: {reason}")


class LayoutView:
    """The logical weights of a checkpoint under one layout.

    Subclasses fill ``self.entries`` (logical name -> :class:`Entry`) in
    ``__init__`` after checking every part's dtype and shape against the others,
    and implement :meth:`_dequantize`.
    """

    name = "?"

    def __init__(self, ck, config: dict | None):
        self.ck = ck
        self.config = config or {}
        self.entries: dict[str, Entry] = {}
        self._parts: set[str] = set()

    # -- building -------------------------------------------------------
    def add(self, logical: str, scheme: Scheme, roles: dict) -> None:
        parts = tuple(v for v in roles.values() if v is not None)
        self.entries[logical] = Entry(
            Scheme(**{**scheme.__dict__, "parts": parts}), dict(roles))
        self._parts.update(parts)

    def err(self, tensor: str, reason: str) -> RefquantError:
        return layout_error(self.ck.path, tensor, reason)

    def need(self, tensor: str, owner: str) -> str:
        if tensor not in self.ck:
            raise self.err(owner, f"the {self.name} layout needs its part {tensor!r}, which is absent")
        return tensor

    def expect_dtype(self, tensor: str, allowed, what: str) -> np.dtype:
        dt = self.ck.info(tensor).dtype
        names = [np.dtype(a).name for a in allowed]
        if dt.name not in names:
            raise self.err(tensor, f"dtype {dt.name}; the {self.name} layout stores {what} as "
                                   f"{' or '.join(names)}")
        return dt

    def expect_shape(self, tensor: str, shape: tuple, why: str) -> None:
        got = tuple(self.ck.info(tensor).shape)
        if got != tuple(shape):
            raise self.err(tensor, f"shape {got}; expected {tuple(shape)} ({why})")

    # -- the public view --------------------------------------------------
    def logical_names(self) -> list[str]:
        """Logical weights first, then every raw tensor that is no weight's part."""
        rest = [n for n in self.ck if n not in self._parts and n not in self.entries]
        return list(self.entries) + rest

    def scheme(self, name: str) -> Scheme | None:
        if name in self.entries:
            return self.entries[name].scheme
        if name in self.ck and name not in self._parts:
            return None
        raise KeyError(name)

    def dequantize(self, name: str) -> np.ndarray:
        if name in self.entries:
            out = self._dequantize(name, self.entries[name])
            return np.ascontiguousarray(out, dtype=np.float32)
        if name in self.ck and name not in self._parts:
            a = self.ck[name]
            if a.dtype.kind not in "fiub" and not _is_ml_float(a.dtype):
                raise self.err(name, f"dtype {a.dtype} does not convert to float32")
            return a.astype(np.float32)
        raise KeyError(name)

    def _dequantize(self, name: str, entry: Entry) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


def _is_ml_float(dt) -> bool:
    return np.dtype(dt).type in (ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2)


# ---------------------------------------------------------------------------
# bit streams
# ---------------------------------------------------------------------------

def unpack_bitstream(words: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Codes of ``bits`` bits read LSB-first from little-endian 32-bit words, last axis.

    Code ``i`` of a row occupies bits ``[i*bits, (i+1)*bits)`` of the row's words
    taken as one little-endian bit string (bit ``k`` of the string is bit
    ``k % 32`` of word ``k // 32``). This is the packing of GPTQ (AutoGPTQ
    ``QuantLinear.pack``: 32 // bits codes per word for 2, 4, 8 bits; 32 codes
    in 3 words for 3 bits), of compressed-tensors 0.20 ``pack_to_int32`` (dense,
    codes straddle words) and of MLX (``uint32`` words; 3 and 6 bits as
    byte triples, which on a little-endian view is the same string).
    Returns uint8 codes of shape ``words.shape[:-1] + (count,)``.
    """
    w = np.ascontiguousarray(words).view("<u4")
    lead = w.shape[:-1]
    if 32 % bits == 0:
        per = 32 // bits
        shifts = np.arange(per, dtype=np.uint32) * np.uint32(bits)
        codes = (w[..., :, None] >> shifts) & np.uint32((1 << bits) - 1)
        codes = codes.reshape(*lead, -1)
    else:
        b = np.unpackbits(w.view(np.uint8).reshape(*lead, -1), axis=-1, bitorder="little")
        n = (b.shape[-1] // bits) * bits
        b = b[..., :n].reshape(*lead, -1, bits).astype(np.uint32)
        codes = (b << np.arange(bits, dtype=np.uint32)).sum(axis=-1, dtype=np.uint32)
    return codes[..., :count].astype(np.uint8)


def pack_bitstream(codes: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`unpack_bitstream`: codes along the last axis into uint32 words.

    The row's bit string is zero-padded to ``ceil(count * bits / 32)`` words.
    """
    c = np.asarray(codes).astype(np.uint32)
    if c.size and int(c.max()) >= (1 << bits):
        raise RefquantError(f"codes: largest code {int(c.max())} does not fit in {bits} bits")
    lead, count = c.shape[:-1], c.shape[-1]
    nwords = -(-count * bits // 32)
    b = ((c[..., :, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)
    b = b.reshape(*lead, count * bits)
    pad = nwords * 32 - count * bits
    if pad:
        b = np.concatenate([b, np.zeros((*lead, pad), np.uint8)], axis=-1)
    return np.packbits(b, axis=-1, bitorder="little").view("<u4").reshape(*lead, nwords)


def round_to(x64: np.ndarray, dtype) -> np.ndarray:
    """Round exact float64 values once to ``dtype`` (float16 / bfloat16 / float32).

    Callers pass products that are exact in float64 (a code of at most 9 bits
    times a scale of at most 24 significant bits), so the one cast is the one
    rounding that torch's ``scale * (q - z)`` in ``dtype`` performs.
    """
    with np.errstate(over="ignore"):  # beyond the dtype's range: Inf, as torch's cast
        return np.asarray(x64, dtype=np.float64).astype(dtype)
