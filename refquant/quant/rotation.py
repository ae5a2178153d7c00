"""Hadamard rotations (QuaRot / SpinQuant's R1 and R2 without the training).

A linear layer ``y = x W^T`` (``W`` of shape ``(out, in)``, ``x`` of shape
``(tokens, in)``) is unchanged when an orthogonal ``R`` (``R R^T = I``) is
folded into both operands along the input axis:

.. math:: y = (x R)(W R)^T .

A Hadamard matrix :math:`H` (entries ±1, :math:`H H^T = n I`) scaled by
:math:`1/\\sqrt n`, with a random sign flip :math:`D = \\operatorname{diag}(\\pm 1)`
in front, is such an ``R = D H / \\sqrt n``. It spreads an outlier input
channel over all channels, so the rotated weights and activations have a much
smaller kurtosis and quantize with a smaller error (see :func:`kurtosis`).
Nothing is stored but the signs: ``x R`` is computed by the fast transform in
:math:`O(n \\log n)` per row.

Sizes
-----
``n = K * 2**m``: ``m`` butterfly stages (the fast Walsh-Hadamard transform,
Sylvester's construction :math:`H_{2n} = [[H, H], [H, -H]]`) and one stage with
a K x K Hadamard matrix ``base``. refquant builds the base for

* ``K = 1``: every power of two (Sylvester; ``scipy.linalg.hadamard`` and
  compressed-tensors' ``deterministic_hadamard_matrix`` give the same matrix);
* Paley's constructions with a prime ``q``: type I, ``K = q + 1`` for
  ``q ≡ 3 (mod 4)``; type II, ``K = 2(q + 1)`` for ``q ≡ 1 (mod 4)``
  (:data:`PALEY_BASE_SIZES`: 12, 20, 24, 28, 36, 44, 48, 60, 68, 72, 76, 80, 84,
  104, 108, 124, 132, 140, ... up to 252) — see :func:`paley_hadamard`.

QuaRot (spcl/QuaRot ``fake_quant/hadamard_utils.py`` ``get_hadK``) and SpinQuant
(facebookresearch/SpinQuant ``utils/hadamard_utils.py``, the same function)
support ``K`` in {172, 156, 140, 108, 60, 52, 36, 28, 40, 20, 12} and powers of
two, with each base matrix hard-coded (``get_had172`` ... ``get_had12``, from N.
J. A. Sloane's library of Hadamard matrices); compressed-tensors 0.20
(``transform/utils/hadamard.py`` ``random_hadamard_matrix`` / ``_matmul_hadU``)
ships Sloane's matrices of every order 1, 2, 4, 8, 12, 16, ..., 256 in
``hadamards.safetensors`` and picks the largest stored ``K`` with ``n / K`` a
power of two. Of QuaRot's sizes, Paley with a prime ``q`` gives 12, 20, 28, 36,
60, 108, 140 (and 40 = 2 x 20); 52 (Paley II over GF(25)), 156 and 172
(Williamson type) are not built here: pass such a matrix as ``base=`` (for
instance compressed-tensors' own, which makes the rotation identical to
theirs). Sloane's matrices are other Hadamard matrices of the same order than
Paley's, so a rotation with refquant's own base differs from compressed-tensors'
for those sizes (both are orthogonal; the quantization benefit is the same).
For powers of two from 256 on compressed-tensors' ``random_hadamard_matrix``
uses its stored order-256 matrix as the base; that stored matrix is exactly
Sylvester's H_256 (checked entry by entry), so its rotation is refquant's default
given the same signs; ``deterministic_hadamard_matrix`` is Sylvester's too.

Layout (compressed-tensors ``_matmul_hadU``, QuaRot ``matmul_hadU``): the
butterflies pair entries at distance ``c = 1, 2, ..., n/(2K)``; the base stage
maps ``v[k * (n/K) + t]`` to ``sum_k base[j, k] v[k * (n/K) + t]``. With these
the transform of row ``e_i`` is row ``i`` of the matrix :func:`hadamard_matrix`
returns, and ``x @ M`` is the transform of ``x``.

Rounding
--------
Butterflies are single additions / subtractions and the base stage adds the
exact products ``±v`` in the order ``k = 0 .. K-1`` from 0, then every element is
divided by :math:`\\sqrt n` (rounded to the working dtype; ``n`` a power of 4
makes it exact). Forward followed by inverse is the identity up to
:func:`round_trip_bound`.
"""

from __future__ import annotations

import math

import numpy as np

from .._errors import RefquantError
from ..kernels._backend import resolve_backend

__all__ = [
    "is_pow2", "sylvester_hadamard", "paley_hadamard", "hadamard_base", "hadamard_matrix",
    "hadamard_transform", "random_signs", "rotation_matrix", "rotate", "unrotate",
    "kurtosis", "round_trip_bound", "QUAROT_BASE_SIZES", "PALEY_BASE_SIZES",
]

#: base orders QuaRot / SpinQuant's ``get_hadK`` hard-codes
QUAROT_BASE_SIZES = (172, 156, 140, 108, 60, 52, 36, 28, 40, 20, 12)
_KERNEL_THRESHOLD = 1 << 14
_DTYPES = {"float32": np.float32, "float64": np.float64}


def is_pow2(n) -> bool:
    """True for 1, 2, 4, 8, ... (compressed-tensors ``is_pow2``)."""
    return isinstance(n, (int, np.integer)) and n > 0 and (n & (n - 1)) == 0


def _check_order(n, name="n") -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise RefquantError(f"{name} must be a positive int, got {n!r}")
    return int(n)


# --------------------------------------------------------------------------- constructions
def sylvester_hadamard(n) -> np.ndarray:
    """The Sylvester Hadamard matrix of order ``n`` (a power of two), int8 ±1.

    Formula
    -------
    :math:`H_1 = [1]`, :math:`H_{2n} = \\begin{pmatrix} H_n & H_n \\\\ H_n & -H_n \\end{pmatrix}`.

    Reference
    ---------
    Sylvester 1867; ``scipy.linalg.hadamard``; compressed-tensors 0.20
    ``deterministic_hadamard_matrix`` (the same matrix).
    """
    n = _check_order(n)
    if not is_pow2(n):
        raise RefquantError(f"n must be a power of two for Sylvester's construction, got {n}")
    h = np.ones((1, 1), np.int8)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def _is_prime(q: int) -> bool:
    if q < 2:
        return False
    return all(q % d for d in range(2, math.isqrt(q) + 1))


def _paley_kind(n: int):
    """("I", q) or ("II", q) when Paley's construction with a prime q gives order n, else None."""
    q = n - 1
    if _is_prime(q) and q % 4 == 3:
        return "I", q
    if n % 2 == 0:
        q = n // 2 - 1
        if _is_prime(q) and q % 4 == 1:
            return "II", q
    return None


def paley_hadamard(n) -> np.ndarray:
    """Paley's Hadamard matrix of order ``n`` (prime ``q``), int8 ±1.

    With the quadratic character :math:`\\chi` of GF(q) and the Jacobsthal matrix
    :math:`Q_{ij} = \\chi(j - i)`:

    * type I (``n = q + 1``, ``q ≡ 3 mod 4``): :math:`S = \\begin{pmatrix} 0 & 1^T \\\\ -1 & Q
      \\end{pmatrix}` is skew, :math:`H = I + S`;
    * type II (``n = 2(q + 1)``, ``q ≡ 1 mod 4``): :math:`C = \\begin{pmatrix} 0 & 1^T \\\\ 1 & Q
      \\end{pmatrix}` is symmetric, and :math:`H` replaces each 0 of ``C`` by
      :math:`\\begin{pmatrix} 1 & -1 \\\\ -1 & -1 \\end{pmatrix}` and each ±1 by
      :math:`\\pm\\begin{pmatrix} 1 & 1 \\\\ 1 & -1 \\end{pmatrix}`.

    Reference
    ---------
    R. E. A. C. Paley, "On orthogonal matrices", J. Math. Phys. 12 (1933).
    Only prime ``q`` (no prime powers): orders 12, 20, 24, 28, 32, 36, 44, 48, 60, ...
    """
    n = _check_order(n)
    kind = _paley_kind(n)
    if kind is None:
        raise RefquantError(
            f"n={n} is neither q+1 (q prime, q ≡ 3 mod 4) nor 2(q+1) (q prime, q ≡ 1 mod 4)"
        )
    form, q = kind
    residues = {(i * i) % q for i in range(1, q)}
    chi = np.array([0] + [1 if a in residues else -1 for a in range(1, q)], np.int64)
    idx = np.arange(q)
    jac = chi[(idx[None, :] - idx[:, None]) % q]
    if form == "I":
        s = np.zeros((q + 1, q + 1), np.int64)
        s[0, 1:] = 1
        s[1:, 0] = -1
        s[1:, 1:] = jac
        return (np.eye(q + 1, dtype=np.int64) + s).astype(np.int8)
    c = np.zeros((q + 1, q + 1), np.int64)
    c[0, 1:] = 1
    c[1:, 0] = 1
    c[1:, 1:] = jac
    zero = np.array([[1, -1], [-1, -1]], np.int64)
    one = np.array([[1, 1], [1, -1]], np.int64)
    h = np.kron(c, one) + np.kron((c == 0).astype(np.int64), zero)
    return h.astype(np.int8)


#: base orders up to 256 that :func:`paley_hadamard` builds (prime q)
PALEY_BASE_SIZES = tuple(k for k in range(2, 257) if _paley_kind(k) is not None)


def hadamard_base(n) -> np.ndarray:
    """The base refquant uses for order ``n``: the largest K with ``n / K`` a power of two.

    K = 1 (pure Sylvester) for powers of two, else the largest Paley order K
    dividing ``n`` with ``n / K`` a power of two (compressed-tensors' rule of the
    largest stored divisor, over Paley's orders instead of Sloane's file).
    """
    n = _check_order(n)
    if is_pow2(n):
        return np.ones((1, 1), np.int8)
    odd = n
    while odd % 2 == 0:
        odd //= 2
    k = odd
    best = None
    while k <= n:
        if _paley_kind(k) is not None:
            best = k
        k *= 2
    if best is None:
        raise RefquantError(
            f"no Hadamard construction for n={n}: n must be K * 2**m with K a power of two "
            f"or a Paley order {PALEY_BASE_SIZES[:12]}...; pass base= (a K x K ±1 Hadamard "
            f"matrix, e.g. compressed-tensors' or QuaRot's for 52, 156, 172)"
        )
    return paley_hadamard(best)


def _check_base(base, n: int) -> np.ndarray:
    b = np.asarray(base)
    if b.ndim != 2 or b.shape[0] != b.shape[1] or b.shape[0] < 1 or b.dtype.kind not in "biuf":
        raise RefquantError(f"base must be a square real ±1 matrix, got shape {b.shape}")
    k = b.shape[0]
    if n % k or not is_pow2(n // k):
        raise RefquantError(f"base has order {k}; n={n} must be {k} times a power of two")
    if not np.all(np.abs(b) == 1):
        raise RefquantError("base must have entries ±1")
    bi = b.astype(np.int64)
    if not np.array_equal(bi @ bi.T, k * np.eye(k, dtype=np.int64)):
        raise RefquantError(f"base is not a Hadamard matrix (base @ base.T != {k} I)")
    return bi.astype(np.int8)


# --------------------------------------------------------------------------- transform
def _transform_numpy(x: np.ndarray, base: np.ndarray, scale):
    rows, n = x.shape
    k = base.shape[0]
    width = n // k
    v = x.copy()
    with np.errstate(over="ignore", invalid="ignore"):
        return _transform_body(v, base, scale, rows, n, k, width)


def _transform_body(v, base, scale, rows, n, k, width):
    c = 1
    while c < width:
        blocks = v.reshape(rows, n // (2 * c), 2, c)
        a = blocks[:, :, 0, :].copy()
        b = blocks[:, :, 1, :]
        blocks[:, :, 0, :] = a + b
        blocks[:, :, 1, :] = a - b
        c *= 2
    if k > 1:
        vb = v.reshape(rows, k, width)
        bt = base.astype(v.dtype)
        acc = np.zeros_like(vb)
        for q in range(k):
            acc = acc + bt[None, :, q, None] * vb[:, q, None, :]
        v = acc.reshape(rows, n)
    if scale != 0:
        v = v / scale
    return v


def hadamard_transform(x, *, base=None, transpose=False, normalize=True,
                       precision=None, backend="auto") -> np.ndarray:
    """``x @ M`` (or ``x @ M.T``) along the last axis, ``M`` the Hadamard matrix of that order.

    Parameters
    ----------
    x : array_like (..., n)
    base : array_like (K, K), optional
        The base matrix (default :func:`hadamard_base`); ``transpose`` uses ``base.T``.
    transpose : bool
        ``x @ M.T`` (the inverse direction; ``M`` is symmetric for powers of two).
    normalize : bool
        Divide by :math:`\\sqrt n` (then ``M / sqrt(n)`` is orthogonal).
    precision : "float32", "float64" or None
        Working dtype; None: float32 for float32 / float16 input, else float64.
    backend : "auto", "numpy" or "cpu"

    Formula
    -------
    :math:`M = H_{2^m} \\otimes B` in the butterfly layout of the module docstring;
    :math:`y = x M / \\sqrt n`.

    Reference
    ---------
    compressed-tensors 0.20 ``transform/utils/hadamard.py`` ``_matmul_hadU``
    (QuaRot ``matmul_hadU``): the same butterflies and base stage.
    """
    a = np.asarray(x)
    if a.dtype.kind not in "biuf" or a.ndim == 0:
        raise RefquantError(f"x must be a real array with at least one axis, got {a.dtype}, "
                            f"shape {a.shape}")
    n = a.shape[-1]
    if n == 0:
        raise RefquantError("x has an empty last axis; expected the order n >= 1")
    if precision is None:
        dt = np.float32 if a.dtype in (np.float32, np.float16) else np.float64
    elif precision in _DTYPES:
        dt = _DTYPES[precision]
    else:
        raise RefquantError(f"precision must be 'float32', 'float64' or None, got {precision!r}")
    b = hadamard_base(n) if base is None else _check_base(base, n)
    if transpose:
        b = np.ascontiguousarray(b.T)
    rows2d = np.ascontiguousarray(a.reshape(-1, n).astype(dt))
    scale = dt(math.sqrt(n)) if normalize else dt(0)
    be = resolve_backend(backend, rows2d.size, threshold=_KERNEL_THRESHOLD, cuda=False)
    if be == "cpu" and rows2d.size:
        from ..kernels.cpu.hadamard import hadamard_rows
        out = rows2d.copy()
        hadamard_rows(out, b.astype(dt), scale)
    else:
        out = _transform_numpy(rows2d, b, scale)
    return out.reshape(a.shape)


def hadamard_matrix(n, *, base=None, dtype=np.int8) -> np.ndarray:
    """The unnormalised ±1 Hadamard matrix ``M`` of order ``n`` that :func:`hadamard_transform` applies.

    Row ``i`` is the transform of ``e_i``. For a power of two this is
    Sylvester's matrix.
    """
    n = _check_order(n)
    m = hadamard_transform(np.eye(n), base=base, normalize=False, precision="float64",
                           backend="numpy")
    return m.astype(dtype)


# --------------------------------------------------------------------------- rotation
def random_signs(n, seed) -> np.ndarray:
    """``n`` random signs ±1 (float64) from ``numpy.random.default_rng(seed)``.

    Bit ``integers(0, 2)`` mapped to ``2 b - 1`` (compressed-tensors draws the
    bits with ``torch.randint(0, 2, (n,), generator=gen)``; pass its signs as
    ``signs=`` to reproduce its rotation).
    """
    n = _check_order(n)
    bits = np.random.default_rng(seed).integers(0, 2, size=n)
    return (bits * 2 - 1).astype(np.float64)


def _signs(n: int, seed, signs):
    if signs is not None and seed is not None:
        raise RefquantError("give seed or signs, not both")
    if signs is None:
        return None if seed is None else random_signs(n, seed)
    s = np.asarray(signs)
    if s.shape != (n,) or not np.all(np.abs(s) == 1):
        raise RefquantError(f"signs must be {n} values ±1, got shape {s.shape}")
    return s.astype(np.float64)


def rotation_matrix(n, *, seed=None, signs=None, base=None, dtype=np.float64) -> np.ndarray:
    """The orthogonal ``R = D M / sqrt(n)`` that :func:`rotate` applies (``D = diag(signs)``).

    Without ``seed`` / ``signs``: ``D = I`` (a deterministic Hadamard rotation).

    Reference
    ---------
    compressed-tensors 0.20 ``random_hadamard_matrix`` returns ``D M`` (unnormalised)
    and ``HadamardTransform.forward`` divides by ``sqrt(n)``; QuaRot
    ``random_hadamard_matrix``.
    """
    n = _check_order(n)
    s = _signs(n, seed, signs)
    m = hadamard_matrix(n, base=base, dtype=np.float64)
    if s is not None:
        m = s[:, None] * m
    return (m / math.sqrt(n)).astype(dtype)


def rotate(x, *, seed=None, signs=None, base=None, precision=None, backend="auto"):
    """``x @ R`` along the last axis: rotate a weight's input axis or the activations alike.

    ``W (out, in)`` → ``W R``; activations ``x (tokens, in)`` → ``x R``; then
    :math:`(xR)(WR)^T = x W^T`.

    Formula
    -------
    :math:`x R = (x \\odot s) M / \\sqrt n`, ``s`` the signs (all 1 without seed).
    The sign flip is exact; the transform rounds as :func:`hadamard_transform`.

    Reference
    ---------
    Ashkboos et al., "QuaRot: Outlier-Free 4-Bit Inference in Rotated LLMs" (2024);
    Liu et al., "SpinQuant: LLM quantization with learned rotations" (2024), R1/R2
    with a fixed random Hadamard rotation.
    """
    a = np.asarray(x)
    if a.ndim == 0:
        raise RefquantError("x must have at least one axis")
    s = _signs(a.shape[-1], seed, signs)
    if s is not None:
        a = a * s.astype(a.dtype if a.dtype.kind == "f" else np.float64)
    return hadamard_transform(a, base=base, precision=precision, backend=backend)


def unrotate(y, *, seed=None, signs=None, base=None, precision=None, backend="auto"):
    """``y @ R^T``: the inverse of :func:`rotate` (same seed / signs / base)."""
    a = np.asarray(y)
    if a.ndim == 0:
        raise RefquantError("y must have at least one axis")
    s = _signs(a.shape[-1], seed, signs)
    out = hadamard_transform(a, base=base, transpose=True, precision=precision, backend=backend)
    if s is not None:
        out = out * s.astype(out.dtype)
    return out


def round_trip_bound(n, dtype) -> float:
    """Bound on ``max |unrotate(rotate(x)) - x|`` relative to ``eps(dtype) * ||x||_2``.

    Each output of the transform is a sum of ``n`` terms ``±x_i`` over a
    pairwise tree of depth ``log2 n`` (plus the base stage's K-term chain), so its
    absolute error is at most :math:`(\\log_2(n/K) + K)\\,u\\,\\sum_i |x_i|
    \\le (\\log_2(n/K) + K)\\,u\\,\\sqrt n\\,\\|x\\|_2`; dividing by
    :math:`\\sqrt n` adds one rounding (relative ``u``). The inverse repeats
    this on an orthogonally transformed error. With ``u = eps / 2``:

    .. math:: |x' - x|_\\infty \\le \\big(\\log_2(n/K) + K + 2\\big)\\,\\epsilon\\,\\|x\\|_2 .

    Where values are subnormal each rounding is absolute (at most the smallest
    subnormal), so the tests add ``factor * smallest_subnormal`` to the bound.

    Returns the factor :math:`\\log_2(n/K) + K + 2` (``K`` of :func:`hadamard_base`).
    """
    n = _check_order(n)
    np.dtype(dtype)  # validates
    k = hadamard_base(n).shape[0]
    return math.log2(n // k) + k + 2



def kurtosis(x, axis=None) -> np.ndarray:
    """Pearson kurtosis :math:`E[(x-\\mu)^4] / E[(x-\\mu)^2]^2` (3 for a Gaussian), float64.

    Reference
    ---------
    ``scipy.stats.kurtosis(x, axis, fisher=False, bias=True)``; QuaRot / SpinQuant
    report it to show how a rotation removes outliers.
    """
    a = np.asarray(x, dtype=np.float64)
    if a.size == 0:
        raise RefquantError("x is empty; kurtosis needs at least one value")
    d = a - a.mean(axis=axis, keepdims=True)
    m2 = np.mean(d * d, axis=axis)
    m4 = np.mean(d ** 4, axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return m4 / (m2 * m2)
