"""Assertions for quantized results, in numpy.testing's style, that say *why* they differ.

:func:`assert_quantized_equal` compares integer codes, :func:`assert_dequantized_close`
float results. Both go through one report (:func:`compare_quantized`,
:func:`compare_dequantized` return it as a :class:`QuantReport`) and one message
builder, which writes, in numpy.testing's order: the tolerances, a shape or dtype
mismatch, NaN positions, ``Mismatched elements: k / n (p%)``, then the class of
every mismatch, the first mismatching indices with ACTUAL and DESIRED (and ``x``),
and the largest absolute and relative differences.

Classes of mismatch (each element gets the first that applies):

==============  =================================================================
``nan_inf``     NaN/Inf handling: ``x`` is NaN or ±Inf there, or one side is
``saturation``  one side at ``qmin`` or ``qmax`` and more than one step apart, or
                one step apart where ``x / scale + zero_point`` lies more than half
                a step outside [qmin, qmax] (with ``x``, ``scale`` and ``zero_point``)
``tie``         one step apart where ``x / scale`` is exactly ``k + 1/2`` (in
                float64 or float32 arithmetic, or in float16 / bfloat16 when ``x``
                or ``scale`` has that type): the two sides break the tie
                differently (half to even, half away from zero, half up, ...)
``one_step``    one step apart elsewhere (divide vs reciprocal multiply, float32
                vs float64 quotient, zero point added before rounding, ...)
``multi_step``  more than one step apart (a different scale, zero point or formula)
``sub_step``    (dequantized values) closer than one step: float arithmetic only
``unclassified`` (dequantized values without ``scale``) not classified
==============  =================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._core.granularity import broadcast_param, check_block_size, normalize_axis
from ._errors import RefquantError
from .identify import IdentifyReport, identify
from .quant.affine import check_scale

__all__ = [
    "CLASSES",
    "QuantReport",
    "compare_quantized",
    "compare_dequantized",
    "assert_quantized_equal",
    "assert_dequantized_close",
    "load_arrays",
    "verify_files",
    "identify",
    "IdentifyReport",
    "compare_checkpoints",
]

CLASSES = {
    "nan_inf": "NaN/Inf handling",
    "saturation": "saturation (one side at qmin or qmax)",
    "tie": "one step off at an exact rounding tie",
    "one_step": "one step off elsewhere",
    "multi_step": "more than one step off",
    "sub_step": "less than one step off (float arithmetic)",
    "unclassified": "not classified (pass scale= to count steps)",
}
_FIRST = 10  # mismatching elements listed in a message


@dataclass
class QuantReport:
    """The outcome of one comparison, as data (for the CLI and for ``identify``).

    ``indices[c]`` holds the flat (C-order) indices of the mismatches of class
    ``c``; ``counts[c]`` their number. ``first`` lists the first mismatches as
    dicts (index, actual, desired, x, class).
    """

    header: str
    n_elements: int = 0
    n_mismatched: int = 0
    shape_mismatch: tuple | None = None
    dtype_mismatch: tuple | None = None
    nan_mismatch: np.ndarray | None = None
    counts: dict = field(default_factory=dict)
    indices: dict = field(default_factory=dict)
    first: list = field(default_factory=list)
    max_abs_diff: float = 0.0
    max_rel_diff: float = 0.0
    actual: np.ndarray | None = None
    desired: np.ndarray | None = None
    missing: str | None = None

    @property
    def ok(self) -> bool:
        """True when nothing differs beyond the tolerance."""
        return (self.missing is None and self.shape_mismatch is None
                and self.dtype_mismatch is None
                and self.n_mismatched == 0
                and (self.nan_mismatch is None or self.nan_mismatch.size == 0))

    def to_dict(self) -> dict:
        """JSON-friendly summary."""
        return {
            "ok": self.ok, "header": self.header, "missing": self.missing,
            "n_elements": self.n_elements,
            "n_mismatched": self.n_mismatched,
            "shape_mismatch": self.shape_mismatch, "dtype_mismatch": self.dtype_mismatch,
            "nan_mismatch": None if self.nan_mismatch is None else self.nan_mismatch.tolist(),
            "counts": dict(self.counts),
            "indices": {k: v.tolist() for k, v in self.indices.items()},
            "first": self.first, "max_abs_diff": self.max_abs_diff,
            "max_rel_diff": self.max_rel_diff,
        }

    def format(self, err_msg: str = "", verbose: bool = True) -> str:
        """The message, in numpy.testing's layout."""
        lines = ["", self.header]
        if err_msg:
            lines.append(str(err_msg))
        if self.missing is not None:
            lines.append(self.missing)
        if self.shape_mismatch is not None:
            lines.append(f"(shapes {self.shape_mismatch[0]}, {self.shape_mismatch[1]} mismatch)")
        if self.dtype_mismatch is not None:
            lines.append(f"(dtypes {self.dtype_mismatch[0]}, {self.dtype_mismatch[1]} mismatch)")
        if self.nan_mismatch is not None and self.nan_mismatch.size:
            pos = ", ".join(str(p) for p in self.nan_mismatch[:_FIRST].tolist())
            lines.append(f"x and y nan location mismatch: {self.nan_mismatch.size} position(s) "
                         f"(flat indices {pos})")
        if self.shape_mismatch is None and self.n_mismatched:
            pct = 100 * self.n_mismatched / self.n_elements
            lines.append(f"Mismatched elements: {self.n_mismatched} / {self.n_elements} "
                         f"({pct:.3g}%)")
            for c, label in CLASSES.items():
                k = self.counts.get(c, 0)
                if k:
                    first = np.unravel_index(int(self.indices[c][0]), self.actual.shape)
                    lines.append(f"  {label}: {k} (first at index {tuple(int(i) for i in first)})")
            has_x = any(r["x"] is not None for r in self.first)
            lines.append("First mismatches (index: ACTUAL, DESIRED" + (", x" if has_x else "")
                         + ", class):")
            for r in self.first:
                xs = f", x={r['x']!r}" if has_x else ""
                lines.append(f"  {r['index']}: {r['actual']!r}, {r['desired']!r}{xs}, "
                             f"{r['class']}")
            lines.append(f"Max absolute difference among violations: {self.max_abs_diff:.9g}")
            lines.append(f"Max relative difference among violations: {self.max_rel_diff:.9g}")
        if verbose and self.actual is not None:
            for name, arr in (("ACTUAL", self.actual), ("DESIRED", self.desired)):
                r = np.array_repr(arr)
                if r.count("\n") > 3:
                    r = "\n".join(r.splitlines()[:3]) + "..."
                lines.append(f" {name}: {r}")
        return "\n".join(lines)


def _as_codes(a, name):
    a = np.asarray(a)
    if a.dtype == np.uint64 and a.size and int(a.max()) > 2**63 - 1:
        raise RefquantError(f"{name} holds codes above 2^63 - 1 ({int(a.max())}), which the "
                            "step counts (int64) cannot hold")
    if a.dtype.kind in "iub" or a.dtype.name in ("int2", "int4", "uint2", "uint4"):
        return a, a.astype(np.int64)
    raise RefquantError(
        f"{name} must hold integer codes, got dtype {a.dtype} (compare float results with "
        "assert_dequantized_close)"
    )


def _as_float64(x, name):
    """``x`` (any real dtype, ml_dtypes floats included) as float64; else RefquantError."""
    a = np.asarray(x)
    if a.dtype.kind in "OSUcMmb":
        raise RefquantError(f"{name} must be a real array, got dtype {a.dtype}")
    try:
        return a.astype(np.float64)
    except (TypeError, ValueError):
        raise RefquantError(f"{name} must be a real array, got dtype {a.dtype}") from None


def _quotient(x, scale, axis, block_size, shape):
    """``x / scale`` broadcast to ``shape`` (for tie detection), as a tuple of flat float64
    arrays: the quotient in float64, in float32, and in each 16-bit float type (float16,
    bfloat16) that ``x`` or ``scale`` has (ONNX divides float16 inputs in float16)."""
    if x is None or scale is None:
        return None
    xr = np.asarray(x)
    xa = _as_float64(xr, "x")
    scale = check_scale(scale, "scale")
    if xa.shape != shape:
        raise RefquantError(f"x has shape {xa.shape} but the arrays have shape {shape}")
    ax = None if axis is None else normalize_axis(axis, len(shape))
    bs = check_block_size(block_size, ax)
    s = broadcast_param(np.asarray(scale), shape, ax, bs, "scale")
    narrow = [t for t in dict.fromkeys((xr.dtype, s.dtype)) if t.name in ("float16", "bfloat16")]
    with np.errstate(all="ignore"):
        qs = [xa / s.astype(np.float64),
              (xa.astype(np.float32) / s.astype(np.float32)).astype(np.float64)]
        # one correctly rounded division: NumPy and ml_dtypes divide 16-bit floats in float32
        qs += [(xr.astype(t) / s.astype(t)).astype(t).astype(np.float64) for t in narrow]
    return tuple(np.broadcast_to(q, shape).reshape(-1) for q in qs)


def _is_tie(q):
    with np.errstate(invalid="ignore"):
        return np.isfinite(q) & (q - np.floor(q) == 0.5)


def _outside(q, zero_point, axis, block_size, shape, qmin, qmax):
    """Flat mask: ``x / s + z`` more than half a step outside [qmin, qmax] (or None)."""
    if q is None or zero_point is None or qmin is None or qmax is None:
        return None
    ax = None if axis is None else normalize_axis(axis, len(shape))
    z = broadcast_param(_as_float64(zero_point, "zero_point"), shape, ax,
                        check_block_size(block_size, ax), "zero_point")
    v = q[0] + np.broadcast_to(z, shape).reshape(-1)
    with np.errstate(invalid="ignore"):
        return (v < qmin - 0.5) | (v > qmax + 0.5)


def _classify(mism, steps, x, q, at_end, nonfinite, outside=None):
    """Class name per mismatching element (flat arrays), in the documented precedence."""
    cls = np.full(mism.shape, "", dtype=object)
    rest = mism.copy()

    def take(name, cond):
        nonlocal rest
        hit = rest & cond
        cls[hit] = name
        rest = rest & ~hit

    take("nan_inf", nonfinite)
    if at_end is not None:
        far = steps > 1 if outside is None or steps is None else (steps > 1) | outside
        take("saturation", at_end & far)
    if steps is None:
        take("unclassified", np.ones_like(mism))
        return cls
    if q is not None:
        take("tie", (steps == 1) & np.logical_or.reduce([_is_tie(qi) for qi in q]))
    take("one_step", steps == 1)
    take("multi_step", steps > 1)
    take("sub_step", steps == 0)
    take("unclassified", np.ones_like(mism))
    return cls


def _finish(rep, a_flat, d_flat, mism, cls, x_flat, shape, a_show, d_show):
    rep.n_mismatched = int(mism.sum())
    idx = np.flatnonzero(mism)
    for c in CLASSES:
        sel = idx[cls[idx] == c]
        if sel.size:
            rep.counts[c] = int(sel.size)
            rep.indices[c] = sel
    for i in idx[:_FIRST]:
        rep.first.append({
            "index": tuple(int(j) for j in np.unravel_index(int(i), shape)),
            "actual": a_show[i].item(), "desired": d_show[i].item(),
            "x": None if x_flat is None else float(x_flat[i]), "class": cls[i],
        })
    if idx.size:
        with np.errstate(all="ignore"):
            da = np.abs(a_flat[idx].astype(np.float64) - d_flat[idx].astype(np.float64))
            rel = da / np.abs(d_flat[idx].astype(np.float64))
        fin = np.isfinite(da)
        rep.max_abs_diff = float(da[fin].max()) if fin.any() else float("nan")
        rel = rel[~np.isnan(rel)]
        rep.max_rel_diff = float(rel.max()) if rel.size else float("nan")
    return rep


def _check_grid(ndim, axis, qmin, qmax):
    """Validate the granularity axis and the code range shared by both comparisons."""
    if axis is not None:
        normalize_axis(axis, ndim)
    for name, v in (("qmin", qmin), ("qmax", qmax)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | np.integer)):
            raise RefquantError(f"{name} must be an integer, got {v!r}")
    if qmin is not None and qmax is not None and qmin > qmax:
        raise RefquantError(f"qmin {qmin} is greater than qmax {qmax}")


def _check_tolerance(name, v, integer=False):
    ok = isinstance(v, int | np.integer) if integer else isinstance(v, int | float | np.number)
    if isinstance(v, bool) or not ok or not np.isfinite(v) or v < 0:
        kind = "an integer" if integer else "a finite number"
        raise RefquantError(f"{name} must be {kind} >= 0, got {v!r}")


def compare_quantized(actual, desired, *, max_step_diff=0, x=None, scale=None, zero_point=None,
                      axis=None, block_size=None, qmin=None, qmax=None,
                      check_dtype=True) -> QuantReport:
    """Compare integer codes and classify every difference (see the module docstring).

    Parameters
    ----------
    actual, desired : array_like of integer codes (NumPy or ml_dtypes integer types)
    max_step_diff : int
        Differences up to this many steps are accepted.
    x, scale : array_like, optional
        The quantized input and its scale (finite, > 0; per tensor, per ``axis`` or blocked
        with ``block_size``); with both, one-step differences at exact ties are told apart.
        Non-real ``x`` or an invalid scale raise RefquantError.
    zero_point : array_like, optional
        With ``x`` and ``scale``: a one-step difference at ``qmin`` / ``qmax`` whose
        ``x / scale + zero_point`` lies beyond the grid is classed saturation.
    qmin, qmax : int, optional
        Ends of the grid; default: the range of ``desired``'s dtype.
    check_dtype : bool
        Report differing dtypes as a mismatch.

    Returns
    -------
    QuantReport

    Formula
    -------
    Steps :math:`d = |a - b|`; a mismatch is :math:`d > ` ``max_step_diff``. A tie is
    :math:`x / s - \\lfloor x / s \\rfloor = 1/2` exactly, with the quotient taken in
    float64, in float32, or in the float16 / bfloat16 type of ``x`` or ``s``.

    Reference
    ---------
    numpy.testing ``assert_array_compare`` and ``build_err_msg``
    (``numpy/testing/_private/utils.py``) for the layout of the message.
    """
    if (not isinstance(max_step_diff, int | np.integer) or isinstance(max_step_diff, bool)
            or max_step_diff < 0):
        raise RefquantError(f"max_step_diff must be an integer >= 0, got {max_step_diff!r}")
    if scale is not None:  # checked even where it is not needed (without x), never ignored
        scale = check_scale(scale, "scale")
    a_raw, a = _as_codes(actual, "actual")
    d_raw, d = _as_codes(desired, "desired")
    rep = QuantReport(header="Quantized codes are not equal" if max_step_diff == 0 else
                      f"Quantized codes differ by more than {max_step_diff} step(s)",
                      actual=a_raw, desired=d_raw)
    if check_dtype and a_raw.dtype != d_raw.dtype:
        rep.dtype_mismatch = (str(a_raw.dtype), str(d_raw.dtype))
    if a.shape != d.shape:
        rep.shape_mismatch = (a.shape, d.shape)
        return rep
    _check_grid(a.ndim, axis, qmin, qmax)
    if qmin is None or qmax is None:
        info = np.iinfo(d_raw.dtype) if d_raw.dtype.kind in "iu" else None
        if info is None and d_raw.dtype.name in ("int2", "int4", "uint2", "uint4"):
            import ml_dtypes

            info = ml_dtypes.iinfo(d_raw.dtype)
        if info is not None and d_raw.dtype.kind != "b":
            qmin = info.min if qmin is None else qmin
            qmax = info.max if qmax is None else qmax
    rep.n_elements = a.size
    shape = a.shape
    a_f, d_f = a.reshape(-1), d.reshape(-1)
    # |a - d| exactly, as uint64: the int64 difference of codes of opposite sign overflows
    # (2^63 - 1 vs -1 gave -2^63, "equal")
    au, du = a_f.astype(np.uint64), d_f.astype(np.uint64)
    steps = np.where(a_f >= d_f, au - du, du - au)
    mism = steps > min(int(max_step_diff), 2**64 - 1)
    q = None
    x_flat = None
    nonfinite = np.zeros(a_f.shape, dtype=bool)
    if x is not None:
        x_flat = _as_float64(x, "x").reshape(-1)
        if x_flat.size != a.size:
            raise RefquantError(f"x has {x_flat.size} elements but the arrays have {a.size}")
        nonfinite = ~np.isfinite(x_flat)
        if scale is not None:
            q = _quotient(x, scale, axis, block_size, shape)
    at_end = None
    if qmin is not None and qmax is not None:
        at_end = (a_f == qmin) | (a_f == qmax) | (d_f == qmin) | (d_f == qmax)
    outside = _outside(q, zero_point, axis, block_size, shape, qmin, qmax)
    cls = _classify(mism, steps, x_flat, q, at_end, nonfinite, outside)
    return _finish(rep, a_f, d_f, mism, cls, x_flat, shape, a_raw.reshape(-1),
                   d_raw.reshape(-1))


def _ulp_distance(a, b):
    """Number of representable float32 values between a and b (numpy's nulp_diff rule)."""
    ia = a.astype(np.float32).view(np.int32).astype(np.int64)
    ib = b.astype(np.float32).view(np.int32).astype(np.int64)
    ia = np.where(ia < 0, -(2**31) - ia, ia)
    ib = np.where(ib < 0, -(2**31) - ib, ib)
    return np.abs(ia - ib)


def compare_dequantized(actual, desired, *, rtol=1e-6, atol=0.0, max_ulp=None, x=None,
                        scale=None, zero_point=None, axis=None, block_size=None, qmin=None,
                        qmax=None, check_dtype=True) -> QuantReport:
    """Compare float results (dequantized or fake-quantized values) and classify differences.

    A pair is close when ``|actual - desired| <= atol + rtol * |desired|`` or, with
    ``max_ulp``, when they are at most ``max_ulp`` float32 values apart; NaN must
    sit at the same positions and ±Inf must match exactly. With ``scale`` the
    difference is counted in steps (``round(|actual - desired| / scale)``); with
    ``zero_point``, ``qmin`` and ``qmax`` as well, values on the ends of the grid
    are recognised as saturation.

    Returns
    -------
    QuantReport

    Formula
    -------
    Close: :math:`|a - d| \\le atol + rtol\\,|d|`, or
    :math:`\\mathrm{ulp}(a, d) \\le` ``max_ulp`` (distance between the float32 bit
    patterns read as sign-magnitude integers, numpy's ``nulp_diff``). Steps:
    :math:`\\mathrm{rne}(|a - d| / s)`.

    Reference
    ---------
    numpy.testing ``assert_allclose`` / ``assert_array_max_ulp``.
    """
    a_raw, d_raw = np.asarray(actual), np.asarray(desired)
    for name, arr in (("actual", a_raw), ("desired", d_raw)):
        if arr.dtype.kind not in "fiu" and arr.dtype.name != "bfloat16":
            raise RefquantError(f"{name} must be a real array, got dtype {arr.dtype}")
    if max_ulp is not None:
        _check_tolerance("max_ulp", max_ulp, integer=True)
    _check_tolerance("rtol", rtol)
    _check_tolerance("atol", atol)
    tol = (f"max_ulp={max_ulp}" if max_ulp is not None else f"rtol={rtol:g}, atol={atol:g}")
    rep = QuantReport(header=f"Dequantized values are not close ({tol})", actual=a_raw,
                      desired=d_raw)
    if check_dtype and a_raw.dtype != d_raw.dtype:
        rep.dtype_mismatch = (str(a_raw.dtype), str(d_raw.dtype))
    if a_raw.shape != d_raw.shape:
        rep.shape_mismatch = (a_raw.shape, d_raw.shape)
        return rep
    _check_grid(a_raw.ndim, axis, qmin, qmax)
    shape = a_raw.shape
    a = a_raw.astype(np.float64).reshape(-1)
    d = d_raw.astype(np.float64).reshape(-1)
    rep.n_elements = a.size
    nan_a, nan_d = np.isnan(a), np.isnan(d)
    rep.nan_mismatch = np.flatnonzero(nan_a != nan_d)
    both_nan = nan_a & nan_d
    with np.errstate(all="ignore"):
        if max_ulp is not None:
            close = _ulp_distance(a, d) <= max_ulp
        else:
            close = np.abs(a - d) <= atol + rtol * np.abs(d)
        close |= a == d  # equal infinities
    mism = ~close & ~both_nan  # NaN on one side only: a mismatch of class nan_inf
    steps = None
    q = None
    x_flat = None
    nonfinite = ~np.isfinite(a) | ~np.isfinite(d)
    if x is not None:
        x_flat = _as_float64(x, "x").reshape(-1)
        if x_flat.size != a.size:
            raise RefquantError(f"x has {x_flat.size} elements but the arrays have {a.size}")
        nonfinite |= ~np.isfinite(x_flat)
    at_end = None
    if scale is not None:
        scale = check_scale(scale, "scale")
        ax = None if axis is None else normalize_axis(axis, len(shape))
        s = np.broadcast_to(broadcast_param(scale, shape, ax,
                                            check_block_size(block_size, ax), "scale"),
                            shape).reshape(-1).astype(np.float64)
        with np.errstate(all="ignore"):
            steps = np.rint(np.abs(a - d) / s)
            # beyond 2^62 steps the count only needs to stay > 1 (an int64 cast of 1e40
            # would be INT64_MIN); non-finite differences are the nan_inf class's
            steps = np.where(np.isfinite(steps), np.minimum(steps, 2.0**62), 0).astype(np.int64)
        if x is not None:
            q = _quotient(x, scale, axis, block_size, shape)
        if zero_point is not None and qmin is not None and qmax is not None:
            z = np.broadcast_to(broadcast_param(np.asarray(zero_point), shape, ax,
                                                check_block_size(block_size, ax), "zero_point"),
                                shape).reshape(-1)
            with np.errstate(all="ignore"):
                ca, cd = np.rint(a / s) + z, np.rint(d / s) + z
            at_end = (ca <= qmin) | (ca >= qmax) | (cd <= qmin) | (cd >= qmax)
    outside = _outside(q, zero_point, axis, block_size, shape, qmin, qmax)
    cls = _classify(mism, steps, x_flat, q, at_end, nonfinite, outside)
    return _finish(rep, a, d, mism, cls, x_flat, shape, a_raw.reshape(-1), d_raw.reshape(-1))


def assert_quantized_equal(actual, desired, *, max_step_diff=0, x=None, scale=None,
                           zero_point=None, axis=None, block_size=None, qmin=None, qmax=None,
                           check_dtype=True, err_msg="", verbose=True):
    """Raise AssertionError unless integer codes agree within ``max_step_diff`` steps.

    The message follows numpy.testing (tolerance, shape / dtype, "Mismatched
    elements: k / n (p%)", first indices with ACTUAL and DESIRED, max differences)
    and adds the class of every mismatch (see :mod:`refquant.testing`). Pass ``x``
    and ``scale`` (with ``axis`` / ``block_size``) to have one-step differences at
    exact rounding ties recognised.

    Examples
    --------
    >>> import numpy as np
    >>> from refquant.testing import assert_quantized_equal
    >>> assert_quantized_equal(np.int8([1, 2]), np.int8([1, 2]))
    """
    __tracebackhide__ = True
    rep = compare_quantized(actual, desired, max_step_diff=max_step_diff, x=x, scale=scale,
                            zero_point=zero_point, axis=axis, block_size=block_size, qmin=qmin,
                            qmax=qmax, check_dtype=check_dtype)
    if not rep.ok:
        raise AssertionError(rep.format(err_msg=err_msg, verbose=verbose))


def assert_dequantized_close(actual, desired, *, rtol=1e-6, atol=0.0, max_ulp=None, x=None,
                             scale=None, zero_point=None, axis=None, block_size=None, qmin=None,
                             qmax=None, check_dtype=True, err_msg="", verbose=True):
    """Raise AssertionError unless float results agree within ``rtol``/``atol`` (or ``max_ulp``).

    NaN must be at the same positions. With ``scale`` the differences are counted
    in quantization steps and classified (see :mod:`refquant.testing`).
    """
    __tracebackhide__ = True
    rep = compare_dequantized(actual, desired, rtol=rtol, atol=atol, max_ulp=max_ulp, x=x,
                              scale=scale, zero_point=zero_point, axis=axis,
                              block_size=block_size, qmin=qmin, qmax=qmax,
                              check_dtype=check_dtype)
    if not rep.ok:
        raise AssertionError(rep.format(err_msg=err_msg, verbose=verbose))


def load_arrays(path, what: str = "file") -> dict:
    """Arrays of a ``.npy`` file (key ``""``), ``.npz`` file or any checkpoint, never unpickling.

    ``.npy`` and ``.npz`` are read with ``allow_pickle=False``; every other file
    goes through :func:`refquant.io.load_arrays` (safetensors, PyTorch, GGUF,
    ONNX, Keras, Flax, TensorFlow; format detected from the bytes).

    Raises RefquantError for a missing file, an unrecognised format, an
    unreadable file or an object array (which would need pickle).
    """
    import os
    import zipfile
    import zlib

    p = os.fspath(path)
    if not os.path.isfile(p):
        raise RefquantError(f"{what} {p!r} does not exist or is not a file")
    ext = os.path.splitext(p)[1].lower()
    if ext not in (".npy", ".npz"):
        from .io import load_arrays as load_checkpoint

        try:
            return dict(load_checkpoint(p))
        except RefquantError as e:
            raise RefquantError(f"cannot read {what} {p!r}: {e}") from None
    try:
        loaded = np.load(p, allow_pickle=False)
        if ext == ".npy":
            return {"": np.asarray(loaded)}
        with loaded as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise RefquantError(f"cannot read {what} {p!r} as {ext} without pickle: {e}") from None


def _param(value, name):
    """A parameter given as a number, an array, or a .npy path (CLI strings)."""
    if value is None or not isinstance(value, str):
        return value
    if value.lower().endswith(".npy"):
        return load_arrays(value, name)[""]
    try:
        return float(value) if name == "scale" else int(value)
    except ValueError:
        raise RefquantError(f"{name} must be a number or a .npy file, got {value!r}") from None


def verify_files(actual, expected, *, scale=None, zero_point=None, axis=None, block_size=None,
                 x=None, max_step_diff=0, qmin=None, qmax=None, rtol=1e-6, atol=0.0,
                 max_ulp=None, key=None) -> dict:
    """Compare the arrays of two .npy / .npz files; a :class:`QuantReport` per array.

    ``.npz`` files are compared key by key (an array missing from one side is a
    mismatch) or only ``key``. Integer arrays are compared as codes
    (:func:`compare_quantized`), others as values (:func:`compare_dequantized`).
    ``scale`` and ``zero_point`` are numbers, arrays or ``.npy`` paths; ``x`` an
    array or a ``.npy`` / ``.npz`` path (an ``.npz`` is read by the same keys).
    This is what ``refquant verify`` runs.
    """
    a_all = load_arrays(actual, "ACTUAL")
    d_all = load_arrays(expected, "EXPECTED")
    x_all = None
    if isinstance(x, str):
        x_all = load_arrays(x, "x")
    scale = _param(scale, "scale")
    if scale is not None:
        scale = check_scale(scale, "scale")
    zero_point = _param(zero_point, "zero_point")
    if key is not None:
        for what, arrs in (("ACTUAL", a_all), ("EXPECTED", d_all)):
            if "" not in arrs and key not in arrs:
                raise RefquantError(f"{what} has no array {key!r}; it has {sorted(arrs)}")
        keys = [key]
    elif "" in a_all or "" in d_all:
        if len(a_all) != 1 or len(d_all) != 1:
            raise RefquantError(
                "one file is .npy and the other holds several arrays: pass --key to choose one"
            )
        keys = [""]
    else:
        keys = sorted(set(a_all) | set(d_all))
    out = {}
    for k in keys:
        a = a_all.get(k, a_all.get(""))
        d = d_all.get(k, d_all.get(""))
        if a is None or d is None:
            side = "ACTUAL" if a is None else "EXPECTED"
            out[k] = QuantReport(header="Arrays are not comparable",
                                 missing=f"array {k!r} is missing from {side}")
            continue
        xk = x
        if x_all is not None:
            xk = x_all.get(k, x_all.get(""))
            if xk is None:
                raise RefquantError(f"x has no array {k!r}")
        common = dict(x=xk, scale=scale, zero_point=zero_point, axis=axis,
                      block_size=block_size, qmin=qmin, qmax=qmax)
        if a.dtype.kind in "iu" and d.dtype.kind in "iu" or (
                a.dtype.name in ("int2", "int4", "uint2", "uint4")):
            out[k] = compare_quantized(a, d, max_step_diff=max_step_diff, **common)
        else:
            out[k] = compare_dequantized(a, d, rtol=rtol, atol=atol, max_ulp=max_ulp, **common)
    return out


def compare_checkpoints(original, quantized, *, progress=None):
    """Per-tensor SQNR / max error / steps of a quantized checkpoint against its original.

    What ``refquant diff`` prints: see :func:`refquant.compress.diff.compare_checkpoints`.
    """
    from .compress.diff import compare_checkpoints as _compare

    return _compare(original, quantized, progress=progress)
