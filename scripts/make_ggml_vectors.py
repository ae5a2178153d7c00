"""Regenerate tests/data/ggml/*.npz: ggml's own C reference output for every block format.

Needs a built ``libggml-base.so``: libggml-python's (``pip install
libggml-python==0.20.2.post1``; ``libggml/lib64/libggml-base.so``) or llama-cpp-python's
(``llama_cpp/lib/libggml-base.so``); neither package is imported. For each format it
writes ``<format>.npz`` with

* ``x``       float32 (n_blocks, block_size): inputs, edge cases first, then random rows;
* ``q``       uint8 (n_blocks, type_size): ``quantize_row_<type>_ref(x)``;
* ``dq``      float32 (n_blocks, block_size): ``dequantize_row_<type>(q)`` (absent for q8_1);
* ``imatrix``, ``q_chunk``, ``q_imatrix`` (IQ4_NL, IQ4_XS: the formats with
  ``quantize_blocks_weighted``): ``quantize_<type>(x, NULL)`` and
  ``quantize_<type>(x, imatrix)``, one block per row, ``imatrix`` float32 (block_size,);
* IQ2_XXS ... IQ1_M (the lattice types): ``q`` is ``quantize_<type>(x, NULL)``, or with
  ``imatrix`` where ggml requires one (IQ2_XXS, IQ2_XS, IQ1_S); rows on which libggml
  aborts (a ``GGML_ASSERT``: float32 overflow of a distance or a scale, e.g. the 1e30 rows)
  are dropped, found by quantizing each row in a forked child first;
* ``raw``     uint8: random bytes (every bit pattern of scales, NaN/Inf fp16 included);
* ``raw_dq``  float32: ``dequantize_row_<type>(raw)``;
* ``ggml_version``: which ggml wrote it: ``"ggml 0.20.2 (8c63e70), libggml-base.so of
  libggml-python 0.20.2.post1"`` (the library's ``ggml_version()`` / ``ggml_commit()``
  and the pip package that shipped it). Files written before this field named ggml's own
  version say only the package: ``"llama-cpp-python 0.3.36 (libggml-base.so)"``.

Usage: ``python scripts/make_ggml_vectors.py [--out tests/data/ggml] [--peer NAME]
[--only q4_0,...]``. Deterministic (fixed seed per format); total size stays well under
3 MB.

The committed files of the formats up to MXFP4 were written by llama-cpp-python 0.3.36 and
were not regenerated: libggml-python 0.20.2.post1 (ggml 0.20.2, commit 8c63e70) writes and
reads every byte and float of them (checked live by tests/peers/test_ggml_libggml.py::
test_committed_vectors_are_what_this_libggml_writes).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os

import numpy as np

from refquant.compat.ggml import LibGGML, libggml_paths
from refquant.formats.ggml import ggml_block_formats


def edge_cases(bs: int, rng: np.random.Generator) -> np.ndarray:
    """Blocks that pin down scales, ties and the special paths of each quantizer."""
    f = np.float32
    rows = [
        np.zeros(bs, f),  # all zero
        -np.zeros(bs, f),  # all -0.0
        np.full(bs, 1.0, f),  # all equal positive
        np.full(bs, -2.5, f),  # all equal negative
        np.arange(bs, dtype=f) - bs // 2,  # integer ramp: ties in most formats
        (np.arange(bs, dtype=f) - bs / 2) / 4,  # quarter steps
        np.where(np.arange(bs) % 2 == 0, 1.0, -1.0).astype(f),  # ±1: equal |max|, first index wins
        np.where(np.arange(bs) % 2 == 0, -1.0, 1.0).astype(f),
        np.eye(1, bs, 0, dtype=f)[0] * 7.0,  # one outlier, rest zero
        np.eye(1, bs, bs - 1, dtype=f)[0] * -7.0,
        (rng.standard_normal(bs) * 1e-3).astype(f)
        + np.eye(1, bs, 3, dtype=f)[0] * 100.0,  # outlier + noise
        (rng.standard_normal(bs) * 1e4).astype(f),  # large
        (rng.standard_normal(bs) * 1e-6).astype(f),  # small
        (rng.standard_normal(bs) * 1e-39).astype(f),  # subnormal: scale underflows, 1/d overflows
        (rng.standard_normal(bs) * 1e-30).astype(f),
        (rng.standard_normal(bs) * 6e4).astype(f),  # fp16 scale near its max (65504)
        (rng.standard_normal(bs) * 1e7).astype(f),  # fp16 scale overflows to Inf
        (rng.standard_normal(bs) * 1e30).astype(f),  # float32 intermediates overflow (x^3)
        np.abs(rng.standard_normal(bs)).astype(f),  # all positive (min clamps to 0)
        -np.abs(rng.standard_normal(bs)).astype(f),  # all negative
    ]
    # MXFP4 e2m1 midpoints: 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5 times 2^k with amax 6*2^k
    mids = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0], f)
    rows.append(np.resize(np.concatenate([mids, -mids]), bs).astype(f))
    # amax = (2 - 2^-23) * 2^k: log2f rounds up to k + 1 for large |k|
    for k in (-126, -60, -1, 0, 1, 5, 20, 100):
        r = (rng.uniform(-1, 1, bs) * np.ldexp(1.0, k)).astype(f)
        r[bs // 3] = np.ldexp(f(2 - 2**-23), k)
        rows.append(r)
    return np.stack(rows)


def random_rows(bs: int, n: int, rng: np.random.Generator) -> np.ndarray:
    parts = [
        rng.standard_normal((n // 2, bs)),
        rng.integers(-16, 17, (n // 4, bs)) * 0.125,  # on a grid: exact ties
        rng.laplace(size=(n - n // 2 - n // 4, bs))
        * 10.0 ** rng.uniform(-4, 3, (n - n // 2 - n // 4, 1)),
    ]
    return np.concatenate(parts).astype(np.float32)


#: ggml's lattice IQ types: quantize_<type> (no quantize_row_<type>_ref for some), inputs
#: that make ggml abort are dropped from their vectors
IQ_LATTICE = ("iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs", "iq3_s", "iq1_s", "iq1_m")


def lib_requires_imatrix(lib: LibGGML, name: str) -> bool:
    import ctypes

    f = lib._lib.ggml_quantize_requires_imatrix
    f.restype, f.argtypes = ctypes.c_bool, [ctypes.c_int]
    return bool(f(ggml_block_formats()[name].type_id))


def _quantize_iq(lib: LibGGML, x: np.ndarray, name: str, imatrix) -> np.ndarray:
    """``quantize_<type>`` one block per row, with the imatrix only where ggml requires one."""
    return lib.quantize(x, name, imatrix if lib_requires_imatrix(lib, name) else None)


def _survives(lib: LibGGML, row: np.ndarray, name: str, imatrix) -> bool:
    """Whether libggml quantizes this block (with and without the imatrix) without aborting."""
    lib._init_type(ggml_block_formats()[name], imatrix)  # build ggml's tables once, before forking
    pid = os.fork()
    if pid == 0:  # child: quantize, exit 0 if ggml returned
        os.environ["GGML_NO_BACKTRACE"] = "1"  # ggml_abort would run gdb for a backtrace
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        try:
            _quantize_iq(lib, row[None], name, imatrix)
            lib.quantize(row[None], name, imatrix)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data", "ggml")
    )
    ap.add_argument(
        "--peer", choices=["libggml-python", "llama-cpp-python"], default=None,
        help="which installed package's libggml-base to use (default: the first found)",
    )
    ap.add_argument("--only", default=None, help="comma-separated format names to (re)write")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    paths = libggml_paths()
    peer = args.peer or next(iter(paths), None)
    if peer not in paths:
        raise SystemExit(f"{peer or 'libggml-python'} is not installed")
    lib = LibGGML(paths[peer])
    version = (
        f"ggml {lib.version}, {os.path.basename(lib.path)} of "
        f"{peer} {importlib.metadata.version(peer)}"
    )
    only = set(args.only.split(",")) if args.only else None
    total = 0
    for name, fmt in ggml_block_formats().items():
        if only is not None and name not in only:
            continue
        rng = np.random.default_rng(sum(map(ord, name)))
        bs = fmt.block_size
        n_random = 48 if bs == 32 else 10
        x = np.concatenate([edge_cases(bs, rng), random_rows(bs, n_random, rng)])
        imatrix = None
        if hasattr(fmt, "quantize_blocks_weighted") or name in IQ_LATTICE:
            imatrix = (rng.gamma(0.5, size=bs) + 0.01).astype(np.float32)  # skewed, > 0
        if name in IQ_LATTICE:
            # ggml aborts (GGML_ASSERT) on some inputs of these types (distances that overflow
            # float32): keep the rows a forked child quantizes without dying
            x = x[[_survives(lib, row, name, imatrix) for row in x]]
            q = _quantize_iq(lib, x, name, imatrix)
        else:
            q = lib.quantize_row(x, name)
        data = {"x": x, "q": q, "ggml_version": np.array(version)}
        if imatrix is not None:
            data["imatrix"] = imatrix
            if not lib_requires_imatrix(lib, name):
                data["q_chunk"] = lib.quantize(x, name)
            data["q_imatrix"] = lib.quantize(x, name, imatrix)
        if fmt.has_dequantize:
            data["dq"] = lib.dequantize_row(q, name)
            raw = rng.integers(0, 256, (16 if bs == 32 else 6, fmt.type_size), dtype=np.uint8)
            data["raw"] = raw
            data["raw_dq"] = lib.dequantize_row(raw, name)
        path = os.path.join(args.out, f"{name}.npz")
        np.savez_compressed(path, **data)
        total += os.path.getsize(path)
        print(f"{name:11s} {x.shape[0]:4d} blocks  {os.path.getsize(path):7d} bytes")
    print(f"total {total} bytes from {version}")


if __name__ == "__main__":
    main()
