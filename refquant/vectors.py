"""Golden vectors: inputs, parameters and refquant's outputs for every compat edge case.

An implementation in C++, CUDA or Rust can be tested against refquant without
Python by reading these files (layout in ``docs/vectors.md``)::

    OUTDIR/index.json                  one entry per case (function, arguments, outputs)
    OUTDIR/<family>/<case>.npz         the arrays: ``in.<arg>`` and ``out.<k>``

Each compat family registers a generator with :func:`register`; a generator
returns a list of :class:`Case`. :func:`write_vectors` writes them (each file
through a temporary file and a rename), :func:`check_vectors` reloads a folder
and recomputes every case with refquant.

Arrays of ml_dtypes types are stored as plain integers so that any npz reader
can load them: sub-byte integers (int4, uint4, int2, uint2) as int8 / uint8
values, 8-bit floats as their uint8 bit patterns, bfloat16 as uint16 bits. The
index records both ``dtype`` (the logical type) and ``stored_dtype``.
"""

from __future__ import annotations

import importlib
import json
import os
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ._errors import RefquantError
from .io._common import atomic_write

__all__ = [
    "Case",
    "register",
    "families",
    "generate",
    "write_vectors",
    "load_vectors",
    "check_vectors",
    "FORMAT_VERSION",
]

FORMAT_VERSION = 1
_GENERATORS: dict[str, Callable[[], list]] = {}


@dataclass
class Case:
    """One golden vector: ``function(*positional, **keyword)`` and its expected outputs.

    ``args`` maps argument names to values in call order: NumPy arrays (stored in
    the npz; use 0-d arrays for float scalars so that their bits survive) or JSON
    scalars (int, bool, str, None). The first ``positional`` of them are passed
    by position, the rest by keyword. ``outputs`` holds the result (one array) or
    the items of a tuple result, in order.
    """

    name: str
    function: str
    args: dict
    outputs: list
    description: str
    semantics: str = ""
    edge_cases: list = field(default_factory=list)
    positional: int = 0


def register(family: str):
    """Decorator: register ``fn() -> list[Case]`` as the generator of ``family``."""

    def deco(fn):
        _GENERATORS[family] = fn
        return fn

    return deco


def families() -> list[str]:
    """Names of the registered families, in registration order."""
    return list(_GENERATORS)


# The modules whose public functions a vectors folder may name: check_vectors reads the
# function from index.json, which is input and must not pick what runs.
_CALLABLE_MODULES = ("refquant.compat.", "refquant.quant.")


def _function(name):
    """The public refquant.compat / refquant.quant function ``name`` (RefquantError otherwise)."""
    mod, _, fname = str(name).rpartition(".")
    if not mod.startswith(_CALLABLE_MODULES) or not fname:
        raise RefquantError(
            f"function {name!r} is not a public function of refquant.compat or refquant.quant"
        )
    module = importlib.import_module(mod)
    fn = getattr(module, fname, None)
    if fname not in getattr(module, "__all__", ()) or not callable(fn):
        raise RefquantError(f"function {name!r} is not a public function of {mod}")
    return fn


def _call(case: Case):
    fn = _function(case.function)
    names = list(case.args)
    pos = [case.args[n] for n in names[: case.positional]]
    kw = {n: case.args[n] for n in names[case.positional:]}
    out = fn(*pos, **kw)
    return list(out) if isinstance(out, tuple) else [out]


def generate(family: str) -> list[Case]:
    """Build the cases of ``family`` with their expected outputs computed by refquant.

    Raises :class:`RefquantError` naming the missing module when the family's
    compat module is not importable (see :func:`write_vectors` for skipping).
    """
    if family not in _GENERATORS:
        raise RefquantError(f"unknown vector family {family!r}; known: {', '.join(_GENERATORS)}")
    cases = _GENERATORS[family]()
    for c in cases:
        c.outputs = [np.asarray(o) for o in _call(c)]
    return cases


# --------------------------------------------------------------------------- storage

_SUBBYTE = {"int4": np.int8, "int2": np.int8, "uint4": np.uint8, "uint2": np.uint8}


def _storable(a: np.ndarray):
    """(array a plain npz reader can load, logical dtype name, stored dtype name)."""
    name = a.dtype.name
    if name in _SUBBYTE:
        s = a.astype(_SUBBYTE[name])
    elif a.dtype.kind == "V":  # ml_dtypes floats (float8_*, float4_e2m1fn, bfloat16, ...)
        s = a.view({1: np.uint8, 2: np.uint16}[a.dtype.itemsize])
    else:
        s = a
    return s, name, s.dtype.name


def _restore(a: np.ndarray, dtype: str) -> np.ndarray:
    if a.dtype.name == dtype:
        return a
    import ml_dtypes  # noqa: F401  (registers the logical dtypes with NumPy)

    dt = np.dtype(getattr(ml_dtypes, dtype, dtype))
    if dtype in _SUBBYTE:
        return a.astype(dt)
    return a.view(dt)


def _entry_and_arrays(family: str, case: Case):
    arrays, args, outs = {}, [], []
    for i, (name, v) in enumerate(case.args.items()):
        item = {"name": name, "positional": i < case.positional}
        if isinstance(v, np.ndarray | np.generic):
            s, dt, sdt = _storable(np.asarray(v))
            key = f"in.{name}"
            arrays[key] = s
            item.update(kind="array", key=key, shape=list(s.shape), dtype=dt, stored_dtype=sdt)
        elif v is None or isinstance(v, bool | int | str | float):
            item.update(kind="scalar", value=v)
        else:
            raise RefquantError(f"case {case.name}: argument {name} has unsupported type "
                                f"{type(v).__name__}")
        args.append(item)
    for k, o in enumerate(case.outputs):
        s, dt, sdt = _storable(np.asarray(o))
        key = f"out.{k}"
        arrays[key] = s
        outs.append({"key": key, "shape": list(s.shape), "dtype": dt, "stored_dtype": sdt})
    entry = {
        "family": family, "name": case.name, "file": f"{family}/{case.name}.npz",
        "function": case.function, "semantics": case.semantics,
        "description": case.description, "edge_cases": list(case.edge_cases),
        "args": args, "outputs": outs,
    }
    return entry, arrays


def write_vectors(outdir, family=None) -> dict:
    """Write the vectors of ``family`` (a name, a list of names, or None for all).

    A family whose compat module cannot be imported (another part of refquant
    not installed or not written yet) is skipped and listed under ``"skipped"``
    with the reason, both in the returned summary and in ``index.json``.

    Returns
    -------
    dict with ``"cases"`` (number written per family) and ``"skipped"``.
    """
    names = families() if family is None else ([family] if isinstance(family, str) else list(family))
    for n in names:
        if n not in _GENERATORS:
            raise RefquantError(f"unknown vector family {n!r}; known: {', '.join(_GENERATORS)}")
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as err:  # a file in the way, no permission, missing parent under /proc ...
        raise RefquantError(f"outdir: cannot create folder {outdir!r}: {err}") from None
    index = {"format_version": FORMAT_VERSION, "generator": "refquant", "cases": [],
             "skipped": {}}
    counts = {}
    for n in names:
        try:
            cases = generate(n)
        except ImportError as e:
            index["skipped"][n] = f"module not importable: {e}"
            continue
        dup = {c.name for c in cases if sum(d.name == c.name for d in cases) > 1}
        if dup:
            raise RefquantError(f"family {n}: duplicate case names {sorted(dup)}")
        os.makedirs(os.path.join(outdir, n), exist_ok=True)
        for c in cases:
            entry, arrays = _entry_and_arrays(n, c)
            atomic_write(os.path.join(outdir, entry["file"]),
                         lambda f, a=arrays: np.savez(f, **a), overwrite=True)
            index["cases"].append(entry)
        counts[n] = len(cases)
    text = json.dumps(index, indent=1, sort_keys=False).encode()
    atomic_write(os.path.join(outdir, "index.json"), lambda f: f.write(text), overwrite=True)
    return {"cases": counts, "skipped": index["skipped"]}


def load_vectors(outdir) -> list[dict]:
    """Read ``index.json`` and the npz files: each entry gains ``"arrays"`` (logical dtypes)."""
    path = os.path.join(outdir, "index.json")
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except FileNotFoundError:
        raise RefquantError(f"{path} not found: not a refquant vectors folder") from None
    except (OSError, ValueError) as err:
        raise RefquantError(f"{path} is not readable JSON: {err}") from None
    if not isinstance(index, dict) or index.get("format_version") != FORMAT_VERSION:
        version = index.get("format_version") if isinstance(index, dict) else None
        raise RefquantError(f"{path}: format_version {version!r}, expected {FORMAT_VERSION}")
    cases = index.get("cases", [])
    if not isinstance(cases, list):
        raise RefquantError(f"{path}: 'cases' must be a list, got {type(cases).__name__}")
    out = []
    for i, e in enumerate(cases):
        try:
            out.append(_load_case(outdir, e))
        except RefquantError:
            raise
        except (KeyError, TypeError, AttributeError, ValueError, OSError, EOFError,
                zipfile.BadZipFile, zlib.error) as err:
            name = e.get("name", i) if isinstance(e, dict) else i
            raise RefquantError(f"{path}: case {name!r} is malformed or its arrays are "
                                f"unreadable: {type(err).__name__}: {err}") from None
    return out


def _load_case(outdir, e) -> dict:
    for k in ("family", "name", "function", "args", "outputs"):  # KeyError: malformed
        e[k]
    for a in e["args"]:
        a["name"], a["positional"], a["key"] if a["kind"] == "array" else a["value"]
    fpath = os.path.normpath(os.path.join(outdir, e["file"]))
    if not fpath.startswith(os.path.normpath(outdir) + os.sep):
        raise RefquantError(f"case {e['name']}: file {e['file']!r} lies outside {outdir}")
    with np.load(fpath, allow_pickle=False) as z:
        arrays = {}
        for item in [a for a in e["args"] if a["kind"] == "array"] + e["outputs"]:
            arrays[item["key"]] = _restore(z[item["key"]], item["dtype"])
    return {**e, "arrays": arrays}


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind in "iub":
        return bool(np.array_equal(a, b))
    ia = _storable(a)[0]
    ib = _storable(b)[0]
    if ia.dtype.kind in "iu":
        return bool(np.array_equal(ia, ib))
    return bool(np.array_equal(ia, ib, equal_nan=True)) and bool(
        np.array_equal(np.signbit(ia), np.signbit(ib)))


def check_vectors(outdir) -> list[str]:
    """Recompute every case in ``outdir`` with refquant; return one line per mismatch."""
    problems = []
    for e in load_vectors(outdir):
        args = {}
        for item in e["args"]:
            args[item["name"]] = (e["arrays"][item["key"]] if item["kind"] == "array"
                                  else item["value"])
        npos = sum(1 for item in e["args"] if item["positional"])
        case = Case(e["name"], e["function"], args, [], e.get("description", ""), positional=npos)
        try:
            _function(case.function)  # a name outside refquant.compat / quant raises here
        except ImportError as err:
            problems.append(f"{e['family']}/{e['name']}: cannot import: {err}")
            continue
        try:
            got = _call(case)
        except ImportError as err:
            problems.append(f"{e['family']}/{e['name']}: cannot import: {err}")
            continue
        except RefquantError as err:  # refquant refuses what it once computed
            problems.append(f"{e['family']}/{e['name']}: refused: {err}")
            continue
        except TypeError as err:  # argument names or count from index.json do not fit
            raise RefquantError(f"case {e['name']!r}: {e['function']} does not take these "
                                f"arguments: {err}") from None
        want = [e["arrays"][o["key"]] for o in e["outputs"]]
        if len(got) != len(want):
            problems.append(f"{e['family']}/{e['name']}: {len(got)} outputs, expected {len(want)}")
            continue
        for k, (g, w) in enumerate(zip(got, want, strict=True)):
            if not _same(np.asarray(g), w):
                problems.append(f"{e['family']}/{e['name']}: output {k} differs")
    return problems


# ------------------------------------------------------------------------ generators
# Each generator lists its edge cases explicitly; expected outputs are filled in by
# generate() from refquant itself. Float scalars travel as 0-d arrays (exact bits).

_I32 = np.int64
_F32 = np.float32


def _f32(v):
    return np.asarray(v, dtype=np.float32)


@register("integer")
def _integer_cases() -> list[Case]:
    m = "refquant.quant.integer."
    xs = np.array([-(2**31), -(2**31) + 1, -(2**30), -12345, -3, -1, 0, 1, 3, 5, 12345, 2**30,
                   2**31 - 1], dtype=np.int32)
    ms_any = np.array([-(2**31), -(2**30), 0, 1, 2**30, 2**30 + 1, 0x7FFF0000, 2**31 - 2,
                       2**31 - 1], dtype=np.int32)
    ms_pos = ms_any[ms_any >= 0]
    shifts = np.arange(-31, 31, dtype=np.int32)
    mults = np.array([0.0, 2.0**-34, 2.0**-33, 2.0**-32, 2.0**-31.5, 5e-324, 1e-10, 0.25,
                      0.5, 0.5 + 2.0**-32, 0.75, 1 - 2.0**-40, 1.0, 123.456, 2.0**30, 2.0**31,
                      2.0**40])
    rng = np.random.default_rng(20261128)
    a = rng.integers(-128, 128, (5, 37)).astype(np.int8)
    b = rng.integers(0, 256, (37, 3)).astype(np.uint8)
    big = 131073
    acc = np.array([[-10, 10, 14, -14, 2**31 - 1, -(2**31), 1000, -1000, 6, -6]], np.int64).T
    acc = np.repeat(acc, 2, axis=1).astype(np.int32)
    return [
        Case("srdhm_edges", m + "saturating_rounding_doubling_high_mul",
             {"a": xs[:, None], "b": ms_any[None, :]}, [],
             "gemmlowp SaturatingRoundingDoublingHighMul on int32 extremes, incl. "
             "INT32_MIN * INT32_MIN (saturates to INT32_MAX) and exact ties (rounded toward +Inf)",
             "gemmlowp", ["max", "saturation", "exact_ties"]),
        Case("rounding_divide_by_pot_edges", m + "rounding_divide_by_pot",
             {"x": xs[:, None], "exponent": np.arange(0, 32, dtype=np.int32)[None, :]}, [],
             "gemmlowp RoundingDivideByPOT for exponents 0..31: ties away from zero",
             "gemmlowp", ["exact_ties", "extreme_shifts", "max"]),
        Case("mbqm_double_rounding", m + "multiply_by_quantized_multiplier",
             {"x": xs[:, None, None], "quantized_multiplier": ms_any[None, :, None],
              "shift": shifts[None, None, :], "single_rounding": False}, [],
             "MultiplyByQuantizedMultiplier, double rounding (TFLite default build), every shift "
             "-31..30, multipliers near 2^31 and negative; x*2^left_shift wraps in int32",
             "tflite-double-rounding", ["extreme_shifts", "max", "saturation", "exact_ties"]),
        Case("mbqm_single_rounding", m + "multiply_by_quantized_multiplier",
             {"x": xs[:, None, None], "quantized_multiplier": ms_pos[None, :, None],
              "shift": shifts[None, None, :], "single_rounding": True}, [],
             "MultiplyByQuantizedMultiplier with TFLITE_SINGLE_ROUNDING: one rounding, half up; "
             "out-of-int32 results wrap",
             "tflite-single-rounding", ["extreme_shifts", "max", "exact_ties"]),
        Case("mbqm_int64", m + "multiply_by_quantized_multiplier_int64",
             {"x": np.array([-(2**47), -(2**40) - 1, -1, 0, 1, 2**32 + 7, 2**47 - 1])[:, None, None],
              "quantized_multiplier": ms_pos[None, :, None],
              "shift": np.arange(-31, 8, dtype=np.int32)[None, None, :]}, [],
             "the int64-input MultiplyByQuantizedMultiplier (15-bit reduced multiplier), x at "
             "+-2^47, shifts -31..7", "tflite", ["extreme_shifts", "max"]),
        Case("quantize_multiplier_double", m + "quantize_multiplier",
             {"real_multiplier": mults, "single_rounding": False}, [],
             "frexp into (int32 multiplier, shift): zero, tiny values flushed (shift < -31), "
             "subnormal, q rounding up to 2^31, a tie in q*2^31, large values",
             "tflite", ["extreme_shifts", "exact_ties"]),
        Case("quantize_multiplier_single", m + "quantize_multiplier",
             {"real_multiplier": mults, "single_rounding": True}, [],
             "as quantize_multiplier_double, with the single-rounding clamp of shift > 30",
             "tflite-single-rounding", ["extreme_shifts", "saturation"]),
        Case("integer_matmul_zero_points", m + "integer_matmul",
             {"a": a, "b": b, "a_zero_point": np.array([0, -128, 127, 5, -1], np.int64),
              "b_zero_point": np.array([128, 0, 255], np.int64)}, [],
             "exact int64 (a - z_a) @ (b - z_b), per-row and per-column zero points, K=37",
             "exact", ["max"]),
        Case("integer_matmul_int32_wrap", m + "integer_matmul",
             {"a": np.full((1, big), -128, np.int8), "b": np.full((big, 1), -128, np.int8),
              "accumulate": "int32_wrap"}, [],
             "K = 131073 products of (-128)(-128): the int32 accumulator overflows by "
             "16384*131073 - 2^31 and wraps", "int32-wrap", ["saturation", "max"]),
        Case("requantize_fixed_point_double", m + "requantize",
             {"acc": acc, "multiplier": np.array([0.25, 0.0078125]), "zero_point": 5,
              "axis": 1, "activation_min": -100, "activation_max": 120}, [],
             "fixed-point requantization per channel with an activation clamp; exact ties",
             "tflite-double-rounding", ["exact_ties", "saturation", "max"]),
        Case("requantize_fixed_point_single", m + "requantize",
             {"acc": acc, "multiplier": np.array([0.25, 0.0078125]), "zero_point": 5,
              "axis": 1, "single_rounding": True}, [],
             "as requantize_fixed_point_double with single rounding (ties up)",
             "tflite-single-rounding", ["exact_ties", "saturation"]),
        Case("requantize_float_half_even", m + "requantize",
             {"acc": acc, "multiplier": np.array([0.25, 0.0078125]), "zero_point": 5,
              "axis": 1, "method": "float", "dtype": "uint8"}, [],
             "float32 multiplier, round half to even (onnxruntime's QLinear requantization)",
             "onnxruntime", ["exact_ties", "saturation"]),
        Case("quantize_bias_half_even", m + "quantize_bias",
             {"bias": np.array([0.125, 0.375, -0.125, -0.375, 1e12, -1e12, 0.0]),
              "input_scale": np.float64(0.5), "weight_scale": np.float64(0.5)}, [],
             "int32 bias with scale s_in*s_w, ties to even, saturating", "onnx",
             ["exact_ties", "saturation"]),
    ]


@register("affine")
def _affine_cases() -> list[Case]:
    f = "refquant.quant.affine.quantize"
    s = _f32(0.1)
    ties = _f32(np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 126.5, 127.5, -128.5, 1e6, -1e6]))
    x_blk = _f32(np.arange(-10, 11).reshape(3, 7) * 0.37)
    return [
        Case(f"ties_{mode}", f, {"x": ties, "scale": _f32(1.0), "zero_point": 0, "dtype": "int8",
                                 "rounding": mode}, [],
             f"exact ties x = k + 1/2 with rounding={mode}, and values beyond the range",
             mode, ["exact_ties", "saturation", "max"])
        for mode in ("half_even", "half_away", "half_up", "half_down", "trunc", "floor")
    ] + [
        Case("pytorch_reciprocal_example", f,
             {"x": _f32([0.273939937]), "scale": _f32(0.00214854861), "zero_point": 0,
              "dtype": "uint8", "scale_op": "reciprocal", "precision": "float32"}, [],
             "pytorch#139464: x * float32(1/scale) gives 128 where x / scale gives 127",
             "pytorch", ["exact_ties"]),
        Case("divide_example", f,
             {"x": _f32([0.273939937]), "scale": _f32(0.00214854861), "zero_point": 0,
              "dtype": "uint8", "precision": "float32"}, [],
             "the same input divided in float32 (ONNX): 127", "onnx", ["exact_ties"]),
        Case("blocked_partial_block", f,
             {"x": x_blk, "scale": _f32([[0.05, 0.1, 0.2]] * 3), "zero_point": 0, "dtype": "int4",
              "axis": 1, "block_size": 3}, [],
             "blocks of 3 along an axis of 7: the last block has one element", "onnx-21",
             ["partial_blocks", "saturation"]),
        Case("per_axis_uint8", f,
             {"x": x_blk, "scale": _f32([0.01, 0.02, 0.5]), "zero_point": np.array([128, 0, 255]),
              "dtype": "uint8", "axis": 0}, [],
             "per-axis scales and zero points (including qmin and qmax zero points)", "onnx",
             ["saturation"]),
        Case("nan_inf_policy", f,
             {"x": _f32([np.nan, np.inf, -np.inf, 0.05, -0.05]), "scale": s, "zero_point": 3,
              "dtype": "int8", "nan": "zero_point"}, [],
             "NaN -> zero point, +-Inf saturate; 0.05/0.1 is not an exact tie in float64",
             "refquant", ["nan_inf", "saturation"]),
        Case("overflow_wrap", f,
             {"x": _f32([127.0, 128.0, 200.0, -129.0, -300.0]), "scale": _f32(1.0),
              "zero_point": 0, "dtype": "int8", "overflow": "wrap"}, [],
             "two's-complement wrap instead of saturation", "wrap", ["saturation", "max"]),
    ]


@register("tflite")
def _tflite_cases() -> list[Case]:
    t = "refquant.compat.tflite."
    x = _f32([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 127.4, 127.5, -128.5, 1e10, -1e10, np.inf,
              -np.inf, np.nan, 0.0, -0.0])
    rng = np.random.default_rng(3)
    xq = rng.integers(-128, 128, (4, 19)).astype(np.int8)
    wq = rng.integers(-127, 128, (5, 19)).astype(np.int8)
    wq[0] = 127
    wq[1] = -127
    bq = rng.integers(-4000, 4000, 5).astype(np.int32)
    from .compat.tflite import populate_convolution_quantization_params as pcqp

    sw = rng.uniform(1e-3, 0.03, 5).astype(np.float32)
    md, ed = pcqp(0.05, sw, 0.2)
    ms, es = pcqp(0.05, sw, 0.2, single_rounding=True)
    xc = rng.integers(-128, 128, (1, 6, 5, 3)).astype(np.int8)
    wc = rng.integers(-127, 128, (5, 3, 2, 3)).astype(np.int8)
    cases = [
        Case(f"affine_quantize_{k}_zp{zp}".replace("-", "m"), t + "affine_quantize",
             {"input_data": x, "scale": _f32(1.0), "zero_point": zp, "kernel": k}, [],
             f"LiteRT QUANTIZE, {k} kernel, zero point {zp}: ties, +-max, beyond int32, "
             "NaN/Inf (x86 int32 cast: INT32_MIN, then + zero point with wraparound)",
             f"tflite-{k}", ["exact_ties", "max", "saturation", "nan_inf"])
        for k in ("reference", "optimized", "xnnpack") for zp in (3, -1)
    ]
    cases.append(Case(
        "affine_quantize_optimized_tail", t + "affine_quantize",
        {"input_data": _f32([2.5] * 9 + [-2.5] * 3), "scale": _f32(1.0), "zero_point": 0,
         "kernel": "optimized"}, [],
        "LiteRT's optimized QUANTIZE on 12 elements: the first 8 go through the vector loop "
        "(ties to even), the last 4 through the scalar tail (divide in double, ties away)",
        "tflite-optimized", ["exact_ties", "partial_blocks"]))
    cases += [
        Case("fake_quant_min_max_args_nudged", t + "fake_quant_with_min_max_args",
             {"inputs": _f32([-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 0.74, 1.0, 2.0]),
              "min_": _f32(-0.4), "max_": _f32(1.1), "num_bits": 2}, [],
             "TF fake quant: range nudged to [-0.5, 1.0], ties up (floor(x + 0.5)), clamping",
             "tensorflow", ["exact_ties", "saturation"]),
        Case("fake_quant_min_max_args_narrow16", t + "fake_quant_with_min_max_args",
             {"inputs": _f32(np.linspace(-7, 7, 29)), "min_": _f32(-6.0), "max_": _f32(6.0),
              "num_bits": 16, "narrow_range": True}, [],
             "16 bits, narrow range [1, 65535]", "tensorflow", ["saturation"]),
        Case("symmetric_bias_quantize", t + "symmetric_bias_quantize",
             {"bias": _f32([0.125, -0.375, 0.0, 1e12, -1e12]), "input_scale": _f32(0.5),
              "weight_scale": _f32(0.5)}, [],
             "converter bias: float reciprocal, ties away, clamp to +-INT32_MAX", "tflite",
             ["exact_ties", "saturation"]),
        Case("fully_connected_per_channel_double", t + "fully_connected",
             {"input_data": xq, "filter_data": wq, "bias_data": bq, "input_offset": 7,
              "output_offset": -3, "output_multiplier": md, "output_shift": ed,
              "output_activation_min": -128, "output_activation_max": 127}, [],
             "int8 FULLY_CONNECTED, per-channel multipliers, double rounding", "tflite",
             ["max", "saturation"]),
        Case("fully_connected_per_channel_single_relu6", t + "fully_connected",
             {"input_data": xq, "filter_data": wq, "bias_data": bq, "input_offset": 7,
              "output_offset": -3, "output_multiplier": ms, "output_shift": es,
              "output_activation_min": -3, "output_activation_max": 27, "single_rounding": True},
             [], "as above with single rounding (TFLITE_SINGLE_ROUNDING builds) and a RELU6 clamp",
             "tflite-single-rounding", ["max", "saturation"]),
        Case("fully_connected_litert_reference_ties", t + "fully_connected",
             {"input_data": np.int8([[-1], [1], [3], [-3], [-5], [5], [127], [-128]]),
              "filter_data": np.int8([[1]]), "input_offset": 0, "output_offset": 0,
              "input_scale": _f32(0.5), "filter_scale": _f32(1.0), "output_scale": _f32(1.0)},
             [], "LiteRT's reference FC: round(acc * double M) half away, M = 1/2 (exact ties)",
             "litert-reference", ["exact_ties", "max"]),
    ]
    for pad, st_, dl in (("SAME", 2, 1), ("VALID", 1, 2), ("SAME", 1, 2)):
        cases.append(Case(
            f"conv2d_{pad.lower()}_s{st_}_d{dl}", t + "conv2d",
            {"input_data": xc, "filter_data": wc, "bias_data": bq, "stride_width": st_,
             "stride_height": st_, "padding": pad, "dilation_width_factor": dl,
             "dilation_height_factor": dl, "input_offset": -5, "output_offset": 2,
             "output_multiplier": md, "output_shift": ed}, [],
            f"int8 CONV_2D NHWC/OHWI, padding {pad}, stride {st_}, dilation {dl} (taps outside "
            "the image skipped = padded with the input zero point), double rounding",
            "tflite", ["partial_blocks", "max"]))
    return cases


@register("onnx")
def _onnx_cases() -> list[Case]:
    from .compat import onnx as _onnx  # noqa: F401  (ImportError: family skipped)

    o = "refquant.compat.onnx."
    ties = _f32([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 127.5, -128.5, 300.0, -300.0])
    big = _f32([0.0, 1.0, 2.0**31, 3e9, np.inf, -np.inf, -(2.0**31) - 256])
    x_blk = _f32(np.arange(-10, 11).reshape(3, 7) * 0.37)
    f8 = _f32([0.5, 1.5, 448.0, 464.0, 500.0, -1e9, np.inf, -np.inf, np.nan])
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (3, 9)).astype(np.uint8)
    b = rng.integers(-128, 128, (9, 4)).astype(np.int8)
    return [
        Case("quantize_linear_int8_ties", o + "quantize_linear",
             {"x": ties, "y_scale": _f32(1.0), "y_zero_point": np.int8(0)}, [],
             "QuantizeLinear int8: ties to even, saturation", "onnx", ["exact_ties", "saturation"]),
        Case("quantize_linear_uint8_beyond_int32", o + "quantize_linear",
             {"x": big, "y_scale": _f32(1.0), "y_zero_point": np.uint8(3)}, [],
             "values >= 2^31 and +-Inf saturate (the spec; onnxruntime)", "onnx",
             ["saturation", "nan_inf", "max"]),
        Case("quantize_linear_uint8_beyond_int32_reference", o + "quantize_linear",
             {"x": big, "y_scale": _f32(1.0), "y_zero_point": np.uint8(3),
              "reference_quirks": True}, [],
             "onnx.reference: values >= 2^31 and +Inf wrap to qmin", "onnx.reference",
             ["saturation", "nan_inf", "max"]),
        Case("quantize_linear_int4_blocked_partial", o + "quantize_linear",
             {"x": x_blk, "y_scale": _f32([[0.05, 0.1, 0.2]] * 3),
              "axis": 1, "block_size": 3, "output_dtype": "int4"}, [],
             "blocked int4 (opset 21+), 7 = 3 + 3 + 1: partial last block", "onnx-21",
             ["partial_blocks", "saturation"]),
        Case("quantize_linear_float8_saturate", o + "quantize_linear",
             {"x": f8, "y_scale": _f32(1.0), "output_dtype": "float8e4m3fn", "saturate": 1}, [],
             "float8 e4m3fn with saturate=1: beyond 448 -> +-448, NaN stays NaN", "onnx",
             ["saturation", "nan_inf"]),
        Case("quantize_linear_float8_no_saturate", o + "quantize_linear",
             {"x": f8, "y_scale": _f32(1.0), "output_dtype": "float8e4m3fn", "saturate": 0}, [],
             "float8 e4m3fn with saturate=0: overflow -> NaN", "onnx", ["saturation", "nan_inf"]),
        Case("dequantize_linear_blocked", o + "dequantize_linear",
             {"x": np.arange(-10, 11).reshape(3, 7).astype(np.int8),
              "x_scale": _f32([[0.5, 0.25, 2.0]] * 3), "x_zero_point": np.full((3, 3), 1, np.int8),
              "axis": 1, "block_size": 3}, [],
             "blocked DequantizeLinear with a partial last block", "onnx", ["partial_blocks"]),
        Case("dynamic_quantize_linear", o + "dynamic_quantize_linear",
             {"x": _f32([-1.0, -0.5, 0.0, 0.25, 2.0, 3.0])}, [],
             "DynamicQuantizeLinear: uint8, scale and zero point from the range including 0",
             "onnx", ["exact_ties"]),
        Case("dynamic_quantize_linear_all_zero", o + "dynamic_quantize_linear",
             {"x": _f32([0.0, 0.0, 0.0])}, [],
             "all-zero input: the spec's formula divides by zero; refquant's default is "
             "onnxruntime's scale", "onnx", ["nan_inf"]),
        Case("dynamic_quantize_linear_all_zero_reference", o + "dynamic_quantize_linear",
             {"x": _f32([0.0, 0.0, 0.0]), "reference_quirks": True}, [],
             "all-zero input as onnx.reference computes it", "onnx.reference", ["nan_inf"]),
        Case("matmul_integer", o + "matmul_integer",
             {"A": a, "B": b, "a_zero_point": np.uint8(128), "b_zero_point": np.int8(-1)}, [],
             "MatMulInteger u8 x s8 with zero points, int32", "onnx", ["max"]),
        Case("qlinear_matmul", o + "qlinear_matmul",
             {"a": a, "a_scale": _f32(0.02), "a_zero_point": np.uint8(128), "b": b,
              "b_scale": _f32(0.01), "b_zero_point": np.int8(0), "y_scale": _f32(0.05),
              "y_zero_point": np.uint8(120)}, [],
             "QLinearMatMul requantized to uint8", "onnx", ["saturation"]),
    ]


@register("torch")
def _torch_cases() -> list[Case]:
    from .compat import torch as _torch  # noqa: F401  (ImportError: family skipped)

    t = "refquant.compat.torch."
    x = _f32([0.273939937, -0.5, 0.5, 1.5, 2.5, 300.0, -300.0, 0.0])
    cases = [
        Case("quantize_per_tensor_quint8", t + "quantize_per_tensor",
             {"x": x, "scale": 0.00214854861, "zero_point": 0, "dtype": "quint8"}, [],
             "x * float32(1/scale), ties to even (pytorch#139464: 0.273939937 -> 128)",
             "pytorch", ["exact_ties", "saturation"], positional=4),
        Case("fake_quantize_per_tensor_affine", t + "fake_quantize_per_tensor_affine",
             {"x": x, "scale": 0.5, "zero_point": 3, "quant_min": -128, "quant_max": 127}, [],
             "fake quantization with PyTorch's reciprocal multiply", "pytorch",
             ["exact_ties", "saturation"], positional=5),
        Case("quantize_per_channel_qint8", t + "quantize_per_channel",
             {"x": x.reshape(2, 4), "scales": np.array([0.5, 0.00214854861]),
              "zero_points": np.array([0, -3]), "axis": 0, "dtype": "qint8"}, [],
             "per-channel qint8 with float64 scales rounded to float32 reciprocals",
             "pytorch", ["exact_ties", "saturation"], positional=5),
        Case("fake_quantize_per_channel_affine", t + "fake_quantize_per_channel_affine",
             {"x": x.reshape(2, 4), "scale": _f32([0.5, 0.25]),
              "zero_point": np.array([0, 2], np.int32), "axis": 0, "quant_min": 0,
              "quant_max": 255}, [],
             "per-channel fake quantization, uint8 range", "pytorch",
             ["exact_ties", "saturation"], positional=6),
    ]
    for c in cases:  # the module's API is another helper's: skip cleanly if it differs
        try:
            _call(c)
        except (TypeError, RefquantError, AttributeError) as e:
            raise ImportError(f"refquant.compat.torch API differs from the generator: {e}") from e
    return cases
