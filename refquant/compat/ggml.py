"""llama.cpp / ggml quantization by ggml's type names: the very bytes llama.cpp writes.

=====================  ==============================================================
function               ggml / gguf-py counterpart
=====================  ==============================================================
:func:`quantize`       ``ggml_quantize_chunk(type, x, ..., imatrix=NULL)``, which calls
                       ``quantize_row_<type>_ref``; ``gguf.quants.quantize``
:func:`dequantize`     ``dequantize_row_<type>`` (``ggml_get_type_traits(t)->to_float``);
                       ``gguf.quants.dequantize``
:func:`type_size`,     ``ggml_type_size``, ``ggml_blck_size``, ``ggml_row_size``
:func:`block_size`,
:func:`row_size`
:class:`LibGGML`       calls a built ``libggml-base`` through ctypes (for verification):
                       libggml-python's or llama-cpp-python's (:func:`libggml_paths`)
=====================  ==============================================================

Type names are ggml's, case-insensitive (``"q4_0"``, ``"Q4_K"``, ``"q4_k"``,
``"mxfp4"``, ``"TQ1_0"``, ``"IQ4_XS"``), or the integer ids of ``enum ggml_type`` /
``gguf.GGMLQuantizationType`` (:data:`GGML_TYPES`), or a member of that enum.
Here ``"mxfp4"`` is ggml's MXFP4, registered in :mod:`refquant.formats` as
``ggml_mxfp4`` (the OCP ``mxfp4`` format is a different rule set: see
:mod:`refquant.formats.ggml`, class ``GGML_MXFP4``).

Semantics are those of :mod:`refquant.formats.ggml` (bit-exact with ggml's C
reference without an importance matrix). Where this module's behaviour differs
from ggml's:

* Input is converted to float32 first (ggml reads ``float *``; float64 values
  are rounded to nearest even, as a C cast does).
* NaN and ±Inf raise :class:`RefquantError`; ggml has no defined result (C
  undefined behaviour when a NaN is cast to ``int8_t``), so there is nothing to
  match.
* A row whose length is not a multiple of the block size raises; ggml asserts
  (``GGML_ASSERT(start % blck_size == 0)`` / ``assert(k % qk == 0)``), and with
  asserts compiled out would read past the row.
* IQ4_NL: :func:`quantize` gives ``quantize_row_iq4_nl_ref``'s bytes (no scale
  search), while ``ggml_quantize_chunk`` (so llama-quantize) calls
  ``quantize_iq4_nl``, which searches 15 more scales: those bytes, with or
  without an importance matrix, are
  ``get_format("iq4_nl").quantize_blocks_weighted(blocks, quant_weights)``
  (for IQ4_XS the ref and ``quantize_iq4_xs`` are one function). A block with
  max|x| < 1e-15 gets code 8 where ``quantize_row_iq4_nl_ref`` leaves its codes
  undefined (d = 0 in both).
* ``quantize(x, t, imatrix=w)`` (llama-quantize with ``--imatrix``; ``w`` from
  :func:`refquant.io.imatrix.load_imatrix`): Q4_0, Q4_1, Q5_0, Q5_1, Q2_K ... Q6_K, IQ4_NL,
  IQ4_XS and the lattice IQ types give ``quantize_<type>``'s bytes with that imatrix
  (:mod:`refquant.formats.ggml_weighted` for the first nine); Q8_0, TQ1_0, TQ2_0 and MXFP4
  ignore it as ggml does.
* The lattice types (:mod:`refquant.formats.ggml_iq`): IQ3_XXS / IQ3_S quantize as
  ``quantize_iq3_*`` (``quantize_row_iq3_*_ref`` is that function without an imatrix); where
  ggml aborts (``GGML_ASSERT`` on a float32 overflow in its neighbour search, |x| around
  1e12 and beyond) they raise RefquantError. IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S and IQ1_M
  quantize as ``quantize_iq2_*`` / ``quantize_iq1_*`` with ``imatrix=`` (the same aborts
  refused); without an imatrix IQ2_S (``quantize_row_iq2_s_ref``) and IQ1_M quantize with
  ``quant_weights = NULL`` and IQ2_XXS, IQ2_XS, IQ1_S raise RefquantError, where ggml
  asserts (``ggml_quantize_requires_imatrix``).
* Q8_1 and Q8_K are ggml's activation formats: ``ggml_quantize_chunk`` rejects
  them (aborts) but ``quantize_row_q8_1_ref`` / ``quantize_row_q8_K_ref`` exist
  and are what :func:`quantize` reproduces. ggml has no ``dequantize_row_q8_1``;
  :func:`dequantize` raises for it.
"""

from __future__ import annotations

import ctypes
import inspect
import operator
import os
from math import prod

import numpy as np

from .._errors import RefquantError
from ..formats.ggml import GGML_BLOCK_TABLE, GGMLBlockFormat, _real_dtype, ggml_block_formats
from ..formats.ggml_weighted import WEIGHTED_TYPES, quantize_rows_weighted

__all__ = [
    "GGML_TYPES",
    "quantize",
    "dequantize",
    "type_size",
    "block_size",
    "row_size",
    "resolve_type",
    "LibGGML",
    "libggml_paths",
]

# ggml type name (upper case, as in gguf.GGMLQuantizationType) -> refquant format name
_GGML_TO_REFQUANT = {
    "Q4_0": "q4_0", "Q4_1": "q4_1", "Q5_0": "q5_0", "Q5_1": "q5_1", "Q8_0": "q8_0", "Q8_1": "q8_1",
    "Q2_K": "q2_k", "Q3_K": "q3_k", "Q4_K": "q4_k", "Q5_K": "q5_k", "Q6_K": "q6_k", "Q8_K": "q8_k",
    "TQ1_0": "tq1_0", "TQ2_0": "tq2_0", "MXFP4": "ggml_mxfp4", "IQ4_NL": "iq4_nl", "IQ4_XS": "iq4_xs",
    "IQ2_XXS": "iq2_xxs", "IQ2_XS": "iq2_xs", "IQ2_S": "iq2_s", "IQ3_XXS": "iq3_xxs", "IQ3_S": "iq3_s",
    "IQ1_S": "iq1_s", "IQ1_M": "iq1_m",
}  # fmt: skip

#: ``enum ggml_type`` ids (ggml.h; ``gguf.GGMLQuantizationType``) of the block formats here.
GGML_TYPES: dict[str, int] = {k: GGML_BLOCK_TABLE[v][0] for k, v in _GGML_TO_REFQUANT.items()}
_BY_ID = {v: k for k, v in GGML_TYPES.items()}


def resolve_type(type_name) -> GGMLBlockFormat:
    """The block format for a ggml type name, id or ``GGMLQuantizationType`` member.

    Raises :class:`RefquantError` listing the known names for anything else.
    """
    fmts = ggml_block_formats()
    key = None
    if isinstance(type_name, (int, np.integer)) and not isinstance(type_name, bool):
        key = _BY_ID.get(int(type_name))  # also IntEnum members such as GGMLQuantizationType.Q4_0
    elif isinstance(type_name, str):
        up = type_name.upper()
        if up in _GGML_TO_REFQUANT:
            key = up
        elif type_name in fmts:  # refquant's own names, e.g. "ggml_mxfp4"
            return fmts[type_name]
    if key is None:
        known = ", ".join(f"{k} ({v})" for k, v in GGML_TYPES.items())
        raise RefquantError(f"unknown ggml type {type_name!r}; known types (name (id)): {known}")
    return fmts[_GGML_TO_REFQUANT[key]]


def type_size(type_name) -> int:
    """Bytes per block (``ggml_type_size``)."""
    return resolve_type(type_name).type_size


def block_size(type_name) -> int:
    """Weights per block (``ggml_blck_size``)."""
    return resolve_type(type_name).block_size


def row_size(type_name, n_per_row: int) -> int:
    """Bytes of one row of ``n_per_row`` weights (``ggml_row_size``); n_per_row must be a multiple of the block."""
    fmt = resolve_type(type_name)
    try:
        n = operator.index(n_per_row)
    except TypeError:
        raise RefquantError(f"n_per_row must be an integer, got {n_per_row!r}") from None
    _check_row(n, fmt)
    return n // fmt.block_size * fmt.type_size


def _check_row(n: int, fmt: GGMLBlockFormat) -> None:
    if n < 0:
        raise RefquantError(f"row size {n} is negative")
    if n % fmt.block_size != 0:  # 0 is a multiple: ggml_row_size(t, 0) == 0
        raise RefquantError(
            f"row size {n} is not a multiple of {_ggml_name(fmt)} block size {fmt.block_size}"
        )


def _ggml_name(fmt: GGMLBlockFormat) -> str:
    return "mxfp4" if fmt.name == "ggml_mxfp4" else fmt.name


# ggml-quants.c: quantize_<type> that read quant_weights (an imatrix changes their bytes) and
# those that ignore it (GGML_UNUSED(quant_weights): quantize_q8_0, quantize_tq1_0,
# quantize_tq2_0, quantize_mxfp4 call the _ref row quantizer either way).
_IMATRIX_WEIGHTED = frozenset({"q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k",
                               "q6_k", "iq4_nl", "iq4_xs", "iq3_xxs", "iq3_s", "iq2_xxs", "iq2_xs",
                               "iq2_s", "iq1_s", "iq1_m"})
_IMATRIX_IGNORED = frozenset({"q8_0", "tq1_0", "tq2_0", "ggml_mxfp4"})


def quantize(x, type_name, *, backend="auto", imatrix=None) -> np.ndarray:
    """Quantize rows of ``x`` to ggml's bytes for ``type_name``.

    Parameters
    ----------
    x : array_like
        Real values, at least 1-D; each row (last axis) is quantized on its own,
        blocks running along the row. The row length must be a multiple of the
        type's block size (32 or 256).
    type_name : str or int
        ggml type (``"q4_0"``, ``"Q4_K"``, ``"mxfp4"``, ``12``, ``GGMLQuantizationType.Q4_K``).
    backend : {"auto", "numpy", "cpu"}
        ``"numpy"`` the NumPy reference, ``"cpu"`` the Numba kernel (bit-identical),
        ``"auto"`` the kernel on large inputs; ``REFQUANT_BACKEND=numpy`` forces the
        reference (see :meth:`refquant.formats.ggml.GGMLBlockFormat.quantize_blocks`).
    imatrix : array_like, optional
        The importance vector of this tensor, one float per column (length of a row), as
        :func:`refquant.io.imatrix.load_imatrix` gives it; llama-quantize passes it to
        ``ggml_quantize_chunk`` -> ``quantize_<type>(..., quant_weights)`` for every row.
        Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K: the bytes of
        ``quantize_<type>`` with that imatrix (the weighted ``quantize_row_<type>_impl``,
        :func:`refquant.formats.ggml_weighted.quantize_rows_weighted`, on ``backend``);
        IQ4_NL / IQ4_XS / IQ3_* / IQ2_* / IQ1_*: likewise (``quantize_blocks_weighted``);
        Q8_0, TQ1_0, TQ2_0, MXFP4: ignored, as ggml ignores it; Q8_1 / Q8_K: RefquantError
        (ggml has no ``quantize_<type>``).

    Returns
    -------
    numpy.ndarray
        uint8 of shape ``x.shape[:-1] + (row_size,)``: the bytes
        ``quantize_row_<type>_ref`` writes, row after row, which is also what a
        GGUF file stores (gguf-py's ``quant_shape_to_byte_shape``).

    Notes
    -----
    **Formula**: per format, see :mod:`refquant.formats.ggml` (e.g. Q4_0:
    :math:`d = m/(-8)`, :math:`q = \\min(15, \\lfloor x/d + 8.5\\rfloor)`).
    Rounding, ties and saturation are ggml's: round half up (``+0.5`` then
    truncation) for Q4/Q5, half away from zero (``roundf``) for Q8_0/Q8_1 and
    ``lroundf`` for TQ*, half to even (``nearest_int``) in the K-quants, first
    index on ties for MXFP4, the nearest level with ties to the upper one for IQ4_NL / IQ4_XS;
    scales stored as fp16 with round to nearest even.

    **Reference**: ggml ``ggml_quantize_chunk`` and ``quantize_row_*_ref``
    (ggml/src/ggml-quants.c); gguf-py ``gguf.quants.quantize``.
    """
    fmt = resolve_type(type_name)
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError):
        raise RefquantError("x must be a rectangular real array") from None
    if arr.ndim == 0:
        raise RefquantError(f"x must be at least 1-D, got a scalar {arr!r}")
    if not _real_dtype(arr.dtype):
        raise RefquantError(f"x must be a real array, got dtype {arr.dtype}")
    _check_row(arr.shape[-1], fmt)
    with np.errstate(over="ignore"):
        x32 = np.asarray(arr, dtype=np.float32)
    blocks = x32.reshape(-1, fmt.block_size)
    try:  # quantize_blocks refuses NaN / ±Inf (in its kernel's pass): no check of our own first
        if imatrix is not None and fmt.name not in _IMATRIX_IGNORED:
            raw = _quantize_weighted(blocks, fmt, imatrix, arr.shape[-1], backend)
        else:
            raw = fmt.quantize_blocks(blocks, backend=backend)
    except RefquantError:
        _check_finite_x(arr, x32, fmt)  # a non-finite x is named first, with x's own index
        raise
    return raw.reshape(*arr.shape[:-1], arr.shape[-1] // fmt.block_size * fmt.type_size)


def _check_finite_x(arr, x32, fmt):
    """Refuse ``x`` (float32 copy ``x32``) holding NaN / ±Inf or a value that overflows float32."""
    if np.isfinite(x32).all():
        return
    bad = tuple(int(i) for i in np.argwhere(~np.isfinite(x32))[0])
    if np.isfinite(arr[bad]):
        raise RefquantError(
            f"x holds {float(arr[bad])!r} at index {bad}, which overflows float32 (ggml reads float)"
        ) from None
    raise RefquantError(
        f"x contains a non-finite value at index {bad}; ggml's quantize_row_{fmt.c_name}_ref "
        "has no defined result for NaN/Inf (refquant refuses instead of guessing)"
    ) from None


def _quantize_weighted(blocks, fmt, imatrix, n_per_row, backend="auto"):
    name = _ggml_name(fmt)
    if fmt.name not in _IMATRIX_WEIGHTED:
        raise RefquantError(f"type_name: ggml has no quantize_{fmt.c_name} taking an imatrix "
                            f"({name} is quantized by quantize_row_{fmt.c_name}_ref only)")
    weighted = getattr(fmt, "quantize_blocks_weighted", None)
    if weighted is None and fmt.name not in WEIGHTED_TYPES:
        raise RefquantError(f"type_name: {name.upper()} with an imatrix (quantize_{fmt.c_name}'s "
                            "quant_weights path) is not implemented in refquant")
    try:
        w = np.asarray(imatrix, dtype=np.float32)
    except (TypeError, ValueError):
        raise RefquantError("imatrix must be a real 1-D array") from None
    if w.shape != (n_per_row,):
        raise RefquantError(f"imatrix must have shape ({n_per_row},) (one value per column), "
                            f"got {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise RefquantError("imatrix must be finite and >= 0")
    if fmt.name in WEIGHTED_TYPES:  # quantize_<type> row by row, the same quant_weights for each
        if n_per_row == 0:
            return np.zeros(0, dtype=np.uint8)
        return quantize_rows_weighted(fmt.name, blocks.reshape(-1, n_per_row), w, backend)
    # ggml passes quant_weights + block_size*ibl for block ibl of every row
    nrows = blocks.shape[0] * fmt.block_size // n_per_row if n_per_row else 0
    per_block = np.tile(w.reshape(-1, fmt.block_size), (nrows, 1))
    if "backend" in inspect.signature(weighted).parameters:  # the formats with a weighted kernel
        return weighted(blocks, per_block, backend=backend)
    return weighted(blocks, per_block)


def dequantize(raw, type_name, shape, *, backend="auto") -> np.ndarray:
    """Dequantize ggml bytes to float32 of ``shape``.

    Parameters
    ----------
    raw : array_like of uint8
        The bytes (any shape; only the total count matters), e.g. what
        :func:`quantize` returned or a GGUF tensor's data.
    type_name : str or int
        ggml type.
    shape : tuple of int
        Shape of the float tensor; the last axis is the row and must be a
        multiple of the block size, and ``raw`` must hold exactly
        ``prod(shape[:-1]) * row_size`` bytes.
    backend : {"auto", "numpy", "cpu"}
        As in :func:`quantize`.

    Returns
    -------
    numpy.ndarray
        float32 of ``shape``, bit for bit ``dequantize_row_<type>``.

    Notes
    -----
    **Formula**: per format, e.g. Q4_0 :math:`\\hat x = (q - 8) d`, Q4_K
    :math:`\\hat x = d\\,s_j q - d_{min} m_j`, all in float32 in ggml's order
    (``d * sc`` first, then times the code). Nothing rounds or saturates here;
    an fp16 scale of Inf/NaN propagates.

    **Reference**: ``dequantize_row_*`` (ggml/src/ggml-quants.c); gguf-py
    ``gguf.quants.dequantize``.
    """
    fmt = resolve_type(type_name)
    if not fmt.has_dequantize:
        raise RefquantError(f"type_name {type_name!r}: ggml has no dequantize_row_{fmt.c_name}")
    try:
        shp = tuple(operator.index(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
    except TypeError:
        raise RefquantError(f"shape must be a tuple of ints, got {shape!r}") from None
    if len(shp) == 0 or any(s < 0 for s in shp):
        raise RefquantError(f"shape must be a non-empty tuple of non-negative ints, got {shape!r}")
    _check_row(shp[-1], fmt)
    try:
        r = np.asarray(raw)
    except (TypeError, ValueError):
        raise RefquantError("raw must be a rectangular array of uint8 bytes") from None
    if r.dtype != np.uint8:
        raise RefquantError(f"raw must be uint8 bytes, got dtype {r.dtype}")
    n_blocks = prod(shp) // fmt.block_size
    expected = n_blocks * fmt.type_size
    if r.size != expected:
        raise RefquantError(
            f"raw has {r.size} bytes but shape {shp} in {_ggml_name(fmt)} needs {expected} "
            f"({n_blocks} blocks of {fmt.type_size} bytes)"
        )
    return fmt.dequantize_blocks(r.reshape(n_blocks, fmt.type_size), backend=backend).reshape(shp)


#: Where each pip package that ships a built ``libggml-base`` keeps it, relative to its
#: package folder: libggml-python (a prebuilt wheel of ggml itself) and llama-cpp-python
#: (built from llama.cpp's vendored ggml).
_LIBGGML_PACKAGES = {
    "libggml-python": ("libggml", ("lib64/libggml-base.so", "lib/libggml-base.so")),
    "llama-cpp-python": ("llama_cpp", ("lib/libggml-base.so",)),
}


def libggml_paths() -> dict[str, str]:
    """The ``libggml-base`` shared libraries that installed pip packages ship.

    Returns ``{package: path}`` for each of libggml-python (module ``libggml``,
    ``lib64/libggml-base.so``) and llama-cpp-python (module ``llama_cpp``,
    ``lib/libggml-base.so``) that is installed, in that order. The packages are
    located with :func:`importlib.util.find_spec`, never imported.
    """
    import importlib.util

    found = {}
    for package, (module, rels) in _LIBGGML_PACKAGES.items():
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            continue
        folder = list(spec.submodule_search_locations)[0]
        for rel in rels:
            path = os.path.join(folder, *rel.split("/"))
            if os.path.exists(path):
                found[package] = path
                break
    return found


class LibGGML:
    """ggml's own C reference, called through ctypes on a built ``libggml-base``.

    For verification only (refquant never needs it). ``path`` defaults to the
    first of :func:`libggml_paths`: the copy that libggml-python installs
    (``libggml/lib64/libggml-base.so``), else llama-cpp-python's
    (``llama_cpp/lib/libggml-base.so``), found without importing either;
    :class:`RefquantError` when neither is installed.

    ``quantize_row(x, t)`` calls ``quantize_row_<t>_ref``; ``dequantize_row(raw, t, n)``
    calls ``dequantize_row_<t>``; ``quantize_chunk(x, t)`` calls
    ``ggml_quantize_chunk(t, x, dst, 0, nrows, n_per_row, NULL)``. Output
    buffers are zero-filled first (``quantize_row_q8_K_ref`` leaves ``bsums``
    unwritten for an all-zero block). :attr:`version` is what the library's
    ``ggml_version()`` and ``ggml_commit()`` return (``"0.20.2 (8c63e70)"``), or
    ``"unknown"`` where it exports neither.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        if path is None:
            found = libggml_paths()
            if not found:
                raise RefquantError(
                    "path: neither libggml-python nor llama-cpp-python is installed and no "
                    "libggml-base path was given (pip install libggml-python)"
                )
            path = next(iter(found.values()))
        if not os.path.exists(path):
            raise RefquantError(f"path: no libggml-base at {str(path)!r}")
        self.path = str(path)
        try:
            self._lib = ctypes.CDLL(self.path)
        except OSError as e:  # not a shared library, wrong architecture, missing dependency
            raise RefquantError(f"path: cannot load {self.path!r}: {e}") from None
        self._lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        self._lib.ggml_quantize_chunk.argtypes = [
            ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
            ctypes.c_void_p,
        ]  # fmt: skip
        self.version = self._version()

    def _version(self) -> str:
        parts = []
        for name in ("ggml_version", "ggml_commit"):
            f = getattr(self._lib, name, None)
            if f is None:
                continue
            f.restype, f.argtypes = ctypes.c_char_p, []
            parts.append(f().decode("ascii", "replace"))
        if not parts:
            return "unknown"
        return parts[0] if len(parts) == 1 else f"{parts[0]} ({parts[1]})"

    def _fn(self, name):
        try:
            f = getattr(self._lib, name)
        except AttributeError:
            raise RefquantError(f"type_name: {self.path} has no {name}") from None
        f.restype = None
        f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        return f

    def _init_type(self, fmt: GGMLBlockFormat, quant_weights) -> None:
        """``ggml_quantize_init(type)``: the IQ1 / IQ2 / IQ3 quantizers assert their tables exist.

        Refuses (instead of letting ggml abort the process) a type that
        ``ggml_quantize_requires_imatrix`` says needs quant_weights when none are given.
        """
        needs = self._lib.ggml_quantize_requires_imatrix
        needs.restype, needs.argtypes = ctypes.c_bool, [ctypes.c_int]
        if quant_weights is None and needs(fmt.type_id):
            raise RefquantError(f"quant_weights: ggml's quantize_{fmt.c_name} requires an importance "
                                "matrix (GGML_ASSERT aborts without one)")
        init = self._lib.ggml_quantize_init
        init.restype, init.argtypes = None, [ctypes.c_int]
        init(fmt.type_id)

    def quantize_row(self, x, type_name) -> np.ndarray:
        fmt = resolve_type(type_name)
        self._init_type(fmt, None)
        xs = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
        _check_row(xs.size, fmt)
        out = np.zeros(xs.size // fmt.block_size * fmt.type_size, dtype=np.uint8)
        self._fn(f"quantize_row_{fmt.c_name}_ref")(xs.ctypes.data, out.ctypes.data, xs.size)
        return out.reshape(-1, fmt.type_size)

    def dequantize_row(self, raw, type_name) -> np.ndarray:
        fmt = resolve_type(type_name)
        r = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
        if r.size % fmt.type_size:
            raise RefquantError(
                f"raw: {r.size} bytes is not a whole number of {fmt.type_size}-byte blocks"
            )
        out = np.zeros(r.size // fmt.type_size * fmt.block_size, dtype=np.float32)
        self._fn(f"dequantize_row_{fmt.c_name}")(r.ctypes.data, out.ctypes.data, out.size)
        return out.reshape(-1, fmt.block_size)

    def quantize(self, x, type_name, quant_weights=None) -> np.ndarray:
        """``quantize_<type>(x, dst, nrows, n_per_row, quant_weights)`` on the rows of 2-D ``x``.

        ``quant_weights`` (one float per column, the imatrix row) or None for ``NULL``.
        """
        fmt = resolve_type(type_name)
        xs = np.ascontiguousarray(x, dtype=np.float32)
        if xs.ndim != 2:
            raise RefquantError(f"x must be 2-D (rows, n_per_row), got shape {xs.shape}")
        _check_row(xs.shape[1], fmt)
        qw = None
        if quant_weights is not None:
            qw = np.ascontiguousarray(quant_weights, dtype=np.float32).reshape(-1)
            if qw.size != xs.shape[1]:
                raise RefquantError(
                    f"quant_weights has {qw.size} values for rows of {xs.shape[1]}"
                )
        name = "quantize_" + fmt.c_name
        self._init_type(fmt, qw)
        try:
            f = getattr(self._lib, name)
        except AttributeError:
            raise RefquantError(f"type_name: {self.path} has no {name}") from None
        f.restype = ctypes.c_size_t
        f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        out = np.zeros(xs.size // fmt.block_size * fmt.type_size, dtype=np.uint8)
        if out.size:
            f(xs.ctypes.data, out.ctypes.data, xs.shape[0], xs.shape[1],
              None if qw is None else qw.ctypes.data)  # fmt: skip
        return out.reshape(xs.shape[0], -1)

    def quantize_chunk(self, x, type_name) -> np.ndarray:
        fmt = resolve_type(type_name)
        if fmt.name in ("q8_1", "q8_k"):
            raise RefquantError(
                f"type_name {type_name!r}: ggml_quantize_chunk aborts on {fmt.name}"
            )
        self._init_type(fmt, None)
        xs = np.ascontiguousarray(x, dtype=np.float32)
        if xs.ndim == 0:
            raise RefquantError("x must be at least 1-D")
        xs2 = xs.reshape(prod(xs.shape[:-1]), xs.shape[-1])
        _check_row(xs2.shape[1], fmt)
        out = np.zeros(xs2.size // fmt.block_size * fmt.type_size, dtype=np.uint8)
        if out.size == 0:
            return out.reshape(*xs.shape[:-1], xs.shape[-1] // fmt.block_size * fmt.type_size)
        self._lib.ggml_quantize_chunk(
            fmt.type_id, xs2.ctypes.data, out.ctypes.data, 0, xs2.shape[0], xs2.shape[1], None
        )
        return out.reshape(*xs.shape[:-1], -1)
