"""What one weight tensor becomes: a scheme's stored parts, its round trip, its cost.

A scheme turns one float tensor ``w`` into named stored arrays (its *parts*) and
back. Every scheme here is round to nearest with the calibration its format
defines (min-max per channel or per group, amax per block); the stored layout
is decided by the input shape alone, so a pipeline can plan a whole output file
(every part's dtype, shape and bytes) before it quantizes anything.

Part names are the tensor's name plus a suffix (compressed-tensors' naming where
there is one)::

    int8 / int4-g128 / intN     NAME (codes; 4-bit and narrower packed two per byte,
                                low nibble first), NAME_scale (float32),
                                NAME_zero_point (asymmetric schemes, the codes' dtype)
    fp8 / fp8-block / float*    NAME (float8 codes), NAME_scale (float32)
    nf4                         NAME (packed codes, high nibble first as bitsandbytes),
                                NAME_absmax (float32 per block of 64)
    mxfp4 / mxfp6 / mxfp8 ...   NAME (element codes, one per byte), NAME_scale (e8m0 codes)
    nvfp4                       NAME (e2m1 codes two per byte, low nibble first),
                                NAME_scale (e4m3 codes per 16), NAME_global_scale (float32)
    ggml types (q4_0 ... q6_k)  NAME (the raw llama.cpp blocks, uint8 rows)

The Formula and Reference of each format are those of the function each scheme
calls (``refquant.choose_qparams``, ``refquant.quant.floatq``,
``refquant.formats.mx``, ``refquant.compat.bnb``, ``refquant.compat.ggml``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._errors import RefquantError

__all__ = ["Scheme", "get_scheme", "KEEP"]

KEEP = "keep"


@dataclass(frozen=True)
class Part:
    """One stored array of a quantized tensor: its name suffix, dtype and shape."""

    suffix: str
    dtype: np.dtype
    shape: tuple

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


class Scheme:
    """A quantization scheme for one tensor (see the module docstring for the parts)."""

    name: str = ""
    #: the ggml type that stores the result in GGUF ("Q4_0"), or None
    gguf_type: str | None = None
    #: stores its result as one float32 scale per what (for the report)
    has_steps: bool = False

    def unsupported(self, shape) -> str | None:
        """Why this scheme cannot store a tensor of ``shape`` (None when it can)."""
        return None

    def parts(self, shape) -> list[Part]:
        raise NotImplementedError

    def quantize(self, w: np.ndarray) -> dict[str, np.ndarray]:
        """Stored parts by suffix, exactly as :meth:`parts` declares them."""
        raise NotImplementedError

    def dequantize(self, parts: dict[str, np.ndarray], shape) -> np.ndarray:
        """float32 of ``shape`` from the stored parts."""
        raise NotImplementedError

    def steps(self, parts: dict[str, np.ndarray], shape) -> np.ndarray | None:
        """The quantization step of every element (float64, broadcastable), or None."""
        return None

    def group_steps(self, parts: dict[str, np.ndarray], shape):
        """``(steps, group)``: the step of each group of ``group`` consecutive elements of a
        row, float64 of shape (rows, groups), what the report's largest error in steps is
        measured on; None for schemes without steps (:meth:`steps` expanded, compactly)."""
        return None

    def describe(self) -> dict:
        """The scheme as JSON-able metadata (enough to dequantize the parts)."""
        return {"scheme": self.name}


def _rows(shape) -> tuple[int, int]:
    """A tensor seen as (output channels, the rest): how per-channel schemes read it."""
    if len(shape) == 0:
        return 1, 1
    return shape[0], math.prod(shape[1:])


class IntegerScheme(Scheme):
    """Integer codes, per output channel or per group of ``group`` along the input dimension.

    Symmetric schemes scale by ``amax / qmax``; asymmetric ones map [min, max] onto
    the grid (:func:`refquant.choose_qparams`), round half to even.
    """

    has_steps = True

    def __init__(self, name, fmt, *, symmetric, group=None):
        from ..formats.integer import int_format

        self.name, self.fmt, self.symmetric, self.group = name, int_format(fmt), symmetric, group

    def _layout(self, shape):
        rows, cols = _rows(shape)
        groups = 1 if self.group is None else -(-cols // self.group)
        return rows, cols, groups

    def _code_dtype(self):
        return np.dtype(np.int8 if self.fmt.signed else np.uint8) if self.fmt.bits <= 8 else (
            np.dtype(np.int16 if self.fmt.signed else np.uint16))

    def _packed(self):
        return self.fmt.bits <= 4

    def parts(self, shape):
        rows, cols, groups = self._layout(shape)
        pshape = (rows, groups) if self.group else (rows,)
        code_shape = (rows, -(-cols // 2)) if self._packed() else tuple(shape)
        out = [Part("", np.dtype(np.uint8) if self._packed() else self._code_dtype(), code_shape),
               Part("_scale", np.dtype(np.float32), pshape)]
        if not self.symmetric:
            out.append(Part("_zero_point", self._code_dtype(), pshape))
        return out

    def _qparams(self, w2):
        from ..quant.qparams import choose_qparams

        if self.group is None:
            return choose_qparams(w2, dtype=self.fmt, symmetric=self.symmetric, axis=0)
        return choose_qparams(w2, dtype=self.fmt, symmetric=self.symmetric, axis=1,
                              block_size=self.group)

    def quantize(self, w):
        rows, cols, _ = self._layout(w.shape)
        w2 = w.reshape(rows, cols)
        qp = self._qparams(w2)
        return self.from_codes(qp.quantize(w2), qp.scale, qp.zero_point, w.shape)

    def from_codes(self, q, scale, zero_point, shape):
        """The stored parts of codes ``q`` (rows, cols) on this scheme's grid, with their
        scales and zero points (GPTQ's results land here)."""
        from ..kernels.packing import pack_nibbles

        q = np.asarray(q)
        scale = np.asarray(scale, np.float32).reshape(self.parts(shape)[1].shape)
        if self._packed():
            # two's complement nibbles for signed codes
            codes = pack_nibbles(q.astype(np.int64) & 0xF, axis=1)
        else:  # codes on the grid: the cast is exact (integral floats included)
            codes = q.astype(self._code_dtype(), copy=False).reshape(shape)
        out = {"": codes, "_scale": scale}
        if not self.symmetric:
            out["_zero_point"] = np.asarray(zero_point).astype(self._code_dtype()).reshape(
                scale.shape)
        return out

    def _codes(self, parts, shape):
        from ..kernels.packing import unpack_nibbles

        rows, cols, _ = self._layout(shape)
        if self._packed():
            return unpack_nibbles(parts[""], cols, axis=1, signed=self.fmt.signed).astype(
                np.int64)
        return parts[""].reshape(rows, cols).astype(np.int64)

    def _expand(self, p, shape):
        rows, cols, _ = self._layout(shape)
        p = np.asarray(p, np.float64)
        if self.group is None:
            return p.reshape(rows, 1)
        return np.repeat(p, self.group, axis=1)[:, :cols]

    def dequantize(self, parts, shape):
        # (q - z) * s in float64 with s the stored float32 scale, rounded once to float32;
        # by blocks of rows (~32 Ki elements: the float64 temporaries stay in cache) and with
        # q - z in float64, which holds every integer code difference exactly: the values
        # of the whole-tensor int64 / float64 expression, elementwise
        rows, cols, _ = self._layout(shape)
        if rows * cols == 0:
            return np.zeros(shape, np.float32)
        codes = np.asarray(parts[""]).reshape(rows, -1)
        scale = np.asarray(parts["_scale"]).astype(np.float32).reshape(rows, -1)
        zero = (None if self.symmetric
                else np.asarray(parts["_zero_point"]).reshape(rows, -1))
        if np.isfinite(scale).all() and (scale > 0).all():
            # refquant.dequantize computes the same exact (q - z) * s rounded once, on its
            # Numba kernel (the loop below stays for scales it refuses: zero, Inf, NaN)
            from ..quant.affine import dequantize

            q = (self._codes({"": codes}, (rows, cols)) if self._packed()
                 else codes.reshape(rows, cols))
            if self.group is None:
                out = dequantize(q, scale.reshape(rows),
                                 0 if zero is None else zero.reshape(rows), axis=0)
            else:
                out = dequantize(q, scale, 0 if zero is None else zero, axis=1,
                                 block_size=self.group)
            return out.reshape(shape)
        out = np.empty((rows, cols), np.float32)
        by = max(1, (1 << 15) // max(1, cols))
        for r in range(0, rows, by):
            sub = {"": codes[r:r + by]}
            n = sub[""].shape[0]
            q = self._codes(sub, (n, cols)).astype(np.float64)
            if zero is not None:
                q -= self._expand(zero[r:r + by], (n, cols))
            q *= self._expand(scale[r:r + by], (n, cols))
            out[r:r + by] = q
        return out.reshape(shape)

    def steps(self, parts, shape):
        return self._expand(parts["_scale"], shape).reshape(
            (shape[0], -1) if len(shape) else (1, 1))

    def group_steps(self, parts, shape):
        """``(steps, group)``: the step of each group, float64 of shape (rows, groups), and
        the group's width (``cols`` per channel); :meth:`steps` without the expansion."""
        rows, cols, groups = self._layout(shape)
        st = np.asarray(parts["_scale"], np.float64).reshape(rows, groups)
        return st, (cols if self.group is None else self.group)

    def describe(self):
        return {"scheme": self.name, "format": self.fmt.name, "symmetric": self.symmetric,
                "group_size": self.group, "axis": 0 if self.group is None else 1,
                "packing": "nibbles low_first" if self._packed() else None}


class FloatScheme(Scheme):
    """Float codes (fp8 / fp6 / fp4) with a float32 scale per tensor, channel or tile.

    The scale maps the block's amax onto the format's largest finite value
    (:func:`refquant.quant.floatq.quantize_float`); ``tile`` gives DeepSeek-V3's
    128 x 128 block scales (``weight_scale_inv`` in its checkpoints).
    """

    has_steps = False

    def __init__(self, name, fmt, *, axis=None, tile=None):
        from ..formats.floats import float_format

        self.name, self.fmt, self.axis, self.tile = name, float_format(fmt), axis, tile

    def unsupported(self, shape):
        if self.tile and len(shape) != 2:
            return f"{self.name} scales 2-D weights in {self.tile}x{self.tile} tiles"
        return None

    def _scale_shape(self, shape):
        rows, _ = _rows(shape)
        if self.tile:
            return (-(-shape[0] // self.tile), -(-shape[1] // self.tile))
        return (rows,) if self.axis == 0 else ()

    def parts(self, shape):
        return [Part("", np.dtype(self.fmt.ml_dtype), tuple(shape)),
                Part("_scale", np.dtype(np.float32), self._scale_shape(shape))]

    def _expand(self, s, shape):
        s = np.asarray(s, np.float32)
        if self.tile:
            t = self.tile
            return np.repeat(np.repeat(s, t, 0), t, 1)[:shape[0], :shape[1]]
        if self.axis == 0:
            return s.reshape((-1,) + (1,) * (len(shape) - 1))
        return s

    def quantize(self, w):
        from ..formats.floats import encode

        w32 = np.asarray(w, np.float32)
        if self.tile:
            t = self.tile
            r, c = w32.shape
            pad = np.zeros((-(-r // t) * t, -(-c // t) * t), np.float32)
            pad[:r, :c] = np.abs(w32)
            amax = pad.reshape(pad.shape[0] // t, t, pad.shape[1] // t, t).max(axis=(1, 3))
        elif self.axis == 0:
            amax = np.abs(w32.reshape(w32.shape[0], -1)).max(axis=1) if w32.size else np.zeros(
                w32.shape[0], np.float32)
        else:
            amax = np.float32(np.abs(w32).max()) if w32.size else np.float32(0)
        # scale = amax / max finite, in float32; an all-zero block gets scale 1
        scale = np.asarray(amax, np.float32) / np.float32(self.fmt.max)
        scale = np.where(scale > 0, scale, np.float32(1)).astype(np.float32)
        codes = encode(w32 / self._expand(scale, w32.shape), self.fmt.name, saturate=True)
        return {"": codes.view(self.fmt.ml_dtype).reshape(w.shape),
                "_scale": scale.reshape(self._scale_shape(w.shape))}

    def dequantize(self, parts, shape):
        from ..formats.floats import decode

        codes = np.asarray(parts[""]).view(np.uint8) if self.fmt.bits == 8 else np.asarray(
            parts[""])
        v = decode(codes, self.fmt.name).astype(np.float32)
        return (v * self._expand(parts["_scale"], shape)).astype(np.float32).reshape(shape)

    def describe(self):
        return {"scheme": self.name, "format": self.fmt.name,
                "granularity": "tile" if self.tile else "channel" if self.axis == 0 else "tensor",
                "tile": self.tile}


class NF4Scheme(Scheme):
    """bitsandbytes NF4: absmax per block of 64 consecutive weights, 4-bit codebook codes."""

    name = "nf4"
    blocksize = 64

    def parts(self, shape):
        n = math.prod(shape)
        return [Part("", np.dtype(np.uint8), ((n + 1) // 2,)),
                Part("_absmax", np.dtype(np.float32), (-(-n // self.blocksize),))]

    def quantize(self, w):
        from ..compat.bnb import quantize_4bit

        packed, state = quantize_4bit(np.asarray(w, np.float32), blocksize=self.blocksize,
                                      quant_type="nf4")
        return {"": packed.reshape(-1), "_absmax": np.asarray(state["absmax"], np.float32)}

    def dequantize(self, parts, shape):
        from ..compat.bnb import dequantize_4bit
        from ..formats.codebook import NF4

        state = {"absmax": parts["_absmax"], "shape": tuple(shape), "dtype": np.dtype(np.float32),
                 "blocksize": self.blocksize, "quant_type": "nf4",
                 "code": np.asarray(NF4.values, np.float32), "nested": False}
        return dequantize_4bit(parts[""], state)

    def describe(self):
        return {"scheme": "nf4", "blocksize": self.blocksize, "packing": "nibbles high_first"}


class MXScheme(Scheme):
    """OCP MX: blocks of 32 along the last axis, an e8m0 scale each (refquant.formats.mx)."""

    def __init__(self, name):
        self.name = name

    def parts(self, shape):
        if not shape:
            shape = (1,)
        return [Part("", np.dtype(np.uint8), tuple(shape)),
                Part("_scale", np.dtype(np.uint8), (*shape[:-1], -(-shape[-1] // 32)))]

    def quantize(self, w):
        from ..formats.mx import quantize_mx

        codes, scales = quantize_mx(np.asarray(w, np.float32).reshape(w.shape or (1,)), self.name)
        return {"": codes, "_scale": scales}

    def dequantize(self, parts, shape):
        from ..formats.mx import dequantize_mx

        return np.asarray(dequantize_mx(parts[""], parts["_scale"], self.name),
                          np.float32).reshape(shape)

    def describe(self):
        return {"scheme": self.name, "block_size": 32, "axis": -1}


class GGMLScheme(Scheme):
    """A llama.cpp block type: rows of whole blocks, the very bytes libggml writes."""

    def __init__(self, name):
        from ..formats import get_format

        self.name = name
        self.fmt = get_format(name)
        self.gguf_type = self.fmt.c_name.upper() if hasattr(self.fmt, "c_name") else name.upper()

    def unsupported(self, shape):
        bs = self.fmt.block_size
        if len(shape) == 0 or shape[-1] % bs:
            row = shape[-1] if shape else 1
            return f"row size {row} is not a multiple of the {self.name} block size {bs}"
        return None

    def parts(self, shape):
        bs, ts = self.fmt.block_size, self.fmt.type_size
        return [Part("", np.dtype(np.uint8), (*shape[:-1], shape[-1] // bs * ts))]

    def quantize(self, w, imatrix=None):
        """``imatrix``: llama-quantize's importance vector of this tensor (``ne[0]*ne[2]``
        floats: one row per expert of a 3-D tensor), handed to ``quantize_<type>``."""
        from ..compat.ggml import quantize

        w32 = np.asarray(w, np.float32)
        if imatrix is not None:
            qw = np.asarray(imatrix, np.float32).reshape(-1)
            if w32.ndim == 3 and qw.size == w32.shape[0] * w32.shape[-1]:
                # llama_tensor_quantize_impl: expert i03 gets imatrix + i03 * n_per_row
                n = w32.shape[-1]
                return {"": np.stack([quantize(w32[e], self.name, imatrix=qw[e * n : (e + 1) * n])
                                      for e in range(w32.shape[0])])}
            return {"": quantize(w32, self.name, imatrix=qw)}
        if self.name == "iq4_nl":
            # ggml_quantize_chunk (so llama-quantize) calls quantize_iq4_nl, which searches
            # scales that quantize_row_iq4_nl_ref does not (refquant.compat.ggml's notes)
            bs = self.fmt.block_size
            raw = self.fmt.quantize_blocks_weighted(w32.reshape(-1, bs))
            return {"": raw.reshape(*w32.shape[:-1], w32.shape[-1] // bs * self.fmt.type_size)}
        return {"": quantize(w32, self.name)}

    def dequantize(self, parts, shape):
        from ..compat.ggml import dequantize

        return np.asarray(dequantize(parts[""], self.name, tuple(shape)), np.float32)

    def describe(self):
        return {"scheme": self.name, "ggml_type": self.gguf_type}


class F16Scheme(Scheme):
    """IEEE half precision, each weight cast on its own (round to nearest even).

    llama-quantize's last fallback for a row no block type divides
    (``ggml_fp32_to_fp16_row``); stored in GGUF as F16.
    """

    name = "f16"
    gguf_type = "F16"

    def parts(self, shape):
        return [Part("", np.dtype(np.float16), tuple(shape))]

    def quantize(self, w):
        with np.errstate(over="ignore"):
            return {"": np.asarray(w, np.float32).astype(np.float16)}

    def dequantize(self, parts, shape):
        return np.asarray(parts[""], np.float32).reshape(shape)


class NVFP4Scheme(Scheme):
    """NVFP4 (refquant.formats.nvfp4, compressed-tensors' arithmetic): blocks of 16 along the last axis."""

    name = "nvfp4"

    def unsupported(self, shape):
        if len(shape) == 0 or shape[-1] % 16:
            return f"row size {shape[-1] if shape else 1} is not a multiple of the NVFP4 block of 16"
        return None

    def parts(self, shape):
        return [Part("", np.dtype(np.uint8), (*shape[:-1], shape[-1] // 2)),
                Part("_scale", np.dtype(np.uint8), (*shape[:-1], shape[-1] // 16)),
                Part("_global_scale", np.dtype(np.float32), (1,))]

    def quantize(self, w):
        from ..formats.nvfp4 import pack_nvfp4, quantize_nvfp4

        codes, scales, g = quantize_nvfp4(np.asarray(w, np.float32))
        return {"": pack_nvfp4(codes), "_scale": scales, "_global_scale": np.array([g], np.float32)}

    def dequantize(self, parts, shape):
        from ..formats.nvfp4 import dequantize_nvfp4, unpack_nvfp4

        return dequantize_nvfp4(unpack_nvfp4(parts[""]), parts["_scale"],
                                parts["_global_scale"][0]).reshape(shape)

    def describe(self):
        return {"scheme": "nvfp4", "block_size": 16, "axis": -1, "convention": "compressed-tensors",
                "packing": "nibbles low_first", "scale": "float8_e4m3fn codes"}


class Sparse24Scheme(Scheme):
    """2:4-sparse weights stored compactly, as compressed-tensors' ``sparse-24-bitmask``
    encodes them: ``NAME`` the two kept values of every four consecutive inputs, shape
    (rows, cols / 2), in the float type (float32, float16 or bfloat16), and
    ``NAME_bitmask`` which four positions they came from, one bit per weight, LSB first
    (rows, ceil(cols / 8)) uint8. The two kept are the two largest magnitudes of the four
    (:func:`refquant.io.layouts.ctsparse.mask_24`, compressed-tensors 0.14's
    ``get_24_bytemasks`` with torch's tie order); after 2:4 pruning they are the weights the
    pruning kept. 2-D weights whose width is a multiple of 4; refquant's own safetensors
    only (no ggml type; transformers with compressed-tensors 0.20 no longer decompresses
    the format, see ctsparse)."""

    has_steps = False

    def __init__(self, name, dtype):
        import ml_dtypes

        self.name = name
        self.dtype = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)

    def unsupported(self, shape):
        if len(shape) != 2 or shape[1] % 4:
            return "2:4 storage needs a 2-D weight whose width is a multiple of 4"
        return None

    def parts(self, shape):
        rows, cols = shape
        return [Part("", self.dtype, (rows, cols // 2)),
                Part("_bitmask", np.dtype(np.uint8), (rows, -(-cols // 8)))]

    def quantize(self, w):
        from ..io.layouts.ctsparse import sparse24_bitmask_tensors

        t = sparse24_bitmask_tensors("w", np.asarray(w, np.float32).astype(self.dtype))
        return {"": t["w.compressed"], "_bitmask": t["w.bitmask"]}

    def dequantize(self, parts, shape):
        from ..io.layouts.ctsparse import unpack_mask

        rows, cols = shape
        mask = unpack_mask(np.asarray(parts["_bitmask"]).reshape(rows, -1), cols)
        out = np.zeros((rows, cols), np.float32)
        out[mask] = np.asarray(parts[""], np.float32).reshape(-1)
        return out

    def describe(self):
        return {"scheme": self.name, "layout": "sparse-24-bitmask", "dtype": self.dtype.name}


def _named():
    return {
        "sparse24-f32": lambda: Sparse24Scheme("sparse24-f32", np.float32),
        "sparse24-f16": lambda: Sparse24Scheme("sparse24-f16", np.float16),
        "sparse24-bf16": lambda: Sparse24Scheme("sparse24-bf16", "bfloat16"),
        "int8": lambda: IntegerScheme("int8", "int8", symmetric=True),
        "int4-g128": lambda: IntegerScheme("int4-g128", "uint4", symmetric=False, group=128),
        "int4-g32": lambda: IntegerScheme("int4-g32", "uint4", symmetric=False, group=32),
        "fp8": lambda: FloatScheme("fp8", "float8_e4m3fn"),
        "fp8-channel": lambda: FloatScheme("fp8-channel", "float8_e4m3fn", axis=0),
        "fp8-block": lambda: FloatScheme("fp8-block", "float8_e4m3fn", tile=128),
        "nf4": NF4Scheme,
        "f16": F16Scheme,
        "f32": lambda: CastScheme("f32", np.float32, "F32"),
        "bf16": lambda: CastScheme("bf16", "bfloat16", "BF16"),
    }


class HQQScheme(Scheme):
    """HQQ (half-quadratic quantization, calibration-free): ``hqq-int{b}-g{G}``.

    :func:`refquant.quant.hqq.hqq_quantize` with hqq's defaults (``axis=1``: groups of
    ``G`` consecutive inputs of a row, min-max inverse scale, the proximal solver of the
    zero point, 20 iterations, float32). Parts: ``NAME`` (uint codes in
    ``[0, 2^b - 1]``, two per byte low nibble first for ``b <= 4``), ``NAME_scale``
    (float32 ``1/s`` per row and group) and ``NAME_zero`` (float32: HQQ's zero point is
    not an integer). ``W = (q - z) * scale`` in float32.
    """

    has_steps = False

    def __init__(self, name, bits, group):
        if bits == 7:
            raise RefquantError(f"scheme {name!r}: hqq quantizes 2, 3, 4, 5, 6 or 8 bits")
        self.name, self.bits, self.group = name, bits, group

    def unsupported(self, shape):
        if len(shape) != 2:
            return f"{self.name} quantizes 2-D weights"
        if shape[1] % self.group:
            return f"in_features {shape[1]} is not a multiple of the hqq group size {self.group}"
        return None

    def parts(self, shape):
        rows, cols = shape
        code = (rows, -(-cols // 2)) if self.bits <= 4 else (rows, cols)
        g = (rows, cols // self.group)
        return [Part("", np.dtype(np.uint8), code), Part("_scale", np.dtype(np.float32), g),
                Part("_zero", np.dtype(np.float32), g)]

    def quantize(self, w):
        from ..kernels.packing import pack_nibbles
        from ..quant.hqq import hqq_quantize

        rows, cols = w.shape
        r = hqq_quantize(np.asarray(w, np.float32), bits=self.bits, group_size=self.group,
                         axis=1)
        g = (rows, cols // self.group)
        q = np.asarray(r.codes, np.uint8).reshape(rows, cols)
        codes = pack_nibbles(q, axis=1) if self.bits <= 4 else q
        return {"": codes, "_scale": np.asarray(r.scale, np.float32).reshape(g),
                "_zero": np.asarray(r.zero, np.float32).reshape(g)}

    def dequantize(self, parts, shape):
        from ..kernels.packing import unpack_nibbles

        rows, cols = shape
        q = (unpack_nibbles(parts[""], cols, axis=1) if self.bits <= 4 else parts[""])
        q = q.astype(np.float32).reshape(rows, cols // self.group, self.group)
        z = parts["_zero"].astype(np.float32)[..., None]
        s = parts["_scale"].astype(np.float32)[..., None]
        return ((q - z) * s).reshape(rows, cols)

    def describe(self):
        return {"scheme": self.name, "bits": self.bits, "group_size": self.group, "axis": 1,
                "zero_point": "float32", "packing": "nibbles low_first" if self.bits <= 4
                else None}


class CastScheme(Scheme):
    """A plain float type (the ``dense`` storage of pruned weights): float32 or bfloat16."""

    def __init__(self, name, dtype, gguf_type):
        import ml_dtypes

        self.name, self.gguf_type = name, gguf_type
        self.dtype = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)

    def parts(self, shape):
        return [Part("", self.dtype, tuple(shape))]

    def quantize(self, w):
        return {"": np.asarray(w, np.float32).astype(self.dtype)}

    def dequantize(self, parts, shape):
        return np.asarray(parts[""], np.float32).reshape(shape)


def get_scheme(name: str) -> Scheme:
    """The scheme called ``name``: a preset above, or a format name of refquant's registry.

    Registry names take their family's default: integer formats per output channel
    (symmetric when signed, min-max affine when unsigned), float formats with one
    scale per output channel, MX formats and ggml block types as they define.
    """
    if not isinstance(name, str):
        raise RefquantError(f"scheme must be a name, got {name!r}")
    named = _named()
    if name in named:
        return named[name]()
    import re

    m = re.fullmatch(r"hqq-int([2-8])-g([1-9][0-9]*)", name)
    if m:
        return HQQScheme(name, int(m.group(1)), int(m.group(2)))
    m = re.fullmatch(r"int([2-8])-g([1-9][0-9]*)", name)
    if m:  # int4-g128's family at any width and group: uint{b}, min-max per group
        return IntegerScheme(name, f"uint{m.group(1)}", symmetric=False, group=int(m.group(2)))
    from ..formats import get_format, list_formats

    try:
        fmt = get_format(name)
    except RefquantError:
        import difflib

        from .llamacpp import LLAMA_CPP_PRESETS

        if name in LLAMA_CPP_PRESETS:
            raise RefquantError(f"{name!r} is llama-quantize's mix of types, a preset of "
                                "--scheme / compress(scheme=...), not one tensor's scheme; use "
                                "a ggml type (q4_k, q6_k, ...) in a recipe rule") from None
        known = sorted(set(named) | set(list_formats()) | set(LLAMA_CPP_PRESETS))
        near = difflib.get_close_matches(name, known, n=3, cutoff=0.7)
        hint = f"; did you mean {' or '.join(map(repr, near))}?" if near else ""
        raise RefquantError(
            f"unknown scheme {name!r}{hint} (presets: {', '.join(sorted(named))}; or a format "
            "name of refquant.list_formats(): int4, uint8, float8_e4m3fn, mxfp4, q4_0, q6_k, ...)"
        ) from None
    if fmt.family == "integer":
        return IntegerScheme(name, fmt.name, symmetric=fmt.signed)
    if fmt.family == "float" and fmt.bits <= 8:
        return FloatScheme(name, fmt.name, axis=0)
    if name == "nvfp4":
        return NVFP4Scheme()
    if fmt.family == "block" and name.startswith("mx"):
        return MXScheme(name)
    if fmt.family == "block" and hasattr(fmt, "type_size"):
        return GGMLScheme(name)
    if name == "nf4":
        return NF4Scheme()
    raise RefquantError(f"format {name!r} ({fmt.family}) has no compression scheme yet; use one "
                        f"of {', '.join(sorted(named))} or a ggml / MX / integer / fp8 format")
