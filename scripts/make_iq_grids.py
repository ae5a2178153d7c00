"""Regenerate refquant/formats/_iq_grids.py from ggml's C sources.

The IQ formats of llama.cpp (IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M)
store indices into fixed lattices ("grids") of 4 or 8 values. Their tables are
constants in ggml's sources; this script copies them verbatim (the very hex and
decimal literals) into a Python module::

    python scripts/make_iq_grids.py GGML_SRC [--out refquant/formats/_iq_grids.py]

``GGML_SRC`` is a folder holding ``ggml-common.h`` and ``ggml-quants.c``
(``ggml/src`` of llama.cpp, ``src`` of ggml-org/ggml). The committed module was
made from ggml-org/ggml at commit 8c63e709 ("ggml : bump version to 0.20.2"),
the ggml that the libggml-python 0.20.2.post1 wheel wraps::

    git -C ggml show 8c63e709:src/ggml-common.h > /tmp/src/ggml-common.h
    git -C ggml show 8c63e709:src/ggml-quants.c > /tmp/src/ggml-quants.c
    python scripts/make_iq_grids.py /tmp/src

From ggml-common.h (``GGML_TABLE_BEGIN(type, name, size) ... GGML_TABLE_END()``):
``kmask_iq2xs``, ``ksigns_iq2xs``, ``iq2xxs_grid``, ``iq2xs_grid``, ``iq2s_grid``,
``iq3xxs_grid``, ``iq3s_grid``, ``iq1s_grid`` (the uint64 CPU table, not
``iq1s_grid_gpu``) and the defines ``IQ1S_DELTA``, ``IQ1M_DELTA``. From
ggml-quants.c, the quantizers' index tables (``static const uint16_t kgrid_*``
inside ``iq2xs_init_impl`` and ``iq3xs_init_impl``): each entry packs one grid
point's levels, 2 bits (iq2), 1 bit (iq1: 2 bits per level, values 0..2) or 3
bits (iq3) per coordinate.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "refquant" / "formats" / "_iq_grids.py"

# name in C -> (Python name, numpy dtype, expected size)
COMMON_TABLES = {
    "kmask_iq2xs": ("KMASK_IQ2XS", "uint8", 8),
    "ksigns_iq2xs": ("KSIGNS_IQ2XS", "uint8", 128),
    "iq2xxs_grid": ("IQ2XXS_GRID", "uint64", 256),
    "iq2xs_grid": ("IQ2XS_GRID", "uint64", 512),
    "iq2s_grid": ("IQ2S_GRID", "uint64", 1024),
    "iq3xxs_grid": ("IQ3XXS_GRID", "uint32", 256),
    "iq3s_grid": ("IQ3S_GRID", "uint32", 512),
    "iq1s_grid": ("IQ1S_GRID", "uint64", 2048),
}
QUANTS_TABLES = {
    "kgrid_2bit_256": ("KGRID_2BIT_256", "uint16", 256),  # iq2xs_init_impl: IQ2_XXS
    "kgrid_2bit_512": ("KGRID_2BIT_512", "uint16", 512),  # IQ2_XS
    "kgrid_1bit_2048": ("KGRID_1BIT_2048", "uint16", 2048),  # IQ1_S, IQ1_M
    "kgrid_2bit_1024": ("KGRID_2BIT_1024", "uint16", 1024),  # IQ2_S
    "kgrid_256": ("KGRID_IQ3_256", "uint16", 256),  # iq3xs_init_impl: IQ3_XXS
    "kgrid_512": ("KGRID_IQ3_512", "uint16", 512),  # IQ3_S
}


def _c_tables(text: str) -> dict[str, list[str]]:
    """Literal tokens of every ``GGML_TABLE_BEGIN`` table and ``static const uint16_t kgrid_*`` array."""
    out: dict[str, list[str]] = {}
    for m in re.finditer(r"GGML_TABLE_BEGIN\(\s*\w+\s*,\s*(\w+)\s*,\s*\w+\s*\)(.*?)GGML_TABLE_END\(\)", text, re.S):
        out.setdefault(m.group(1), _tokens(m.group(2)))  # first definition: iq1s_grid's CPU table
    for m in re.finditer(r"static const uint16_t (kgrid_\w+)\[\w+\]\s*=\s*\{(.*?)\};", text, re.S):
        out.setdefault(m.group(1), _tokens(m.group(2)))
    return out


def _tokens(body: str) -> list[str]:
    body = re.sub(r"//[^\n]*", "", body)
    return [t.strip() for t in body.split(",") if t.strip()]


def _define(text: str, name: str) -> str:
    m = re.search(rf"#define\s+{name}\s+([0-9.]+)f?", text)
    if m is None:
        raise SystemExit(f"#define {name} not found")
    return m.group(1)


def _emit(py_name: str, dtype: str, tokens: list[str], per_line: int) -> str:
    lines = [f"{py_name} = _table(", f'    "{dtype}",']
    for i in range(0, len(tokens), per_line):
        lines.append('    "' + " ".join(tokens[i : i + per_line]) + '",')
    lines.append(")")
    return "\n".join(lines)


def generate(src: Path, commit: str) -> str:
    common = (src / "ggml-common.h").read_text()
    quants = (src / "ggml-quants.c").read_text()
    blocks = []
    for tables, text in ((COMMON_TABLES, common), (QUANTS_TABLES, quants)):
        found = _c_tables(text)
        for c_name, (py_name, dtype, size) in tables.items():
            toks = found.get(c_name)
            if toks is None or len(toks) != size:
                raise SystemExit(f"{c_name}: expected {size} entries, found {None if toks is None else len(toks)}")
            per_line = {"uint8": 16, "uint16": 16, "uint32": 8, "uint64": 4}[dtype]
            src_file = "ggml-common.h" if tables is COMMON_TABLES else "ggml-quants.c"
            blocks.append(f"# {src_file}: {c_name}[{size}]\n" + _emit(py_name, dtype, toks, per_line))
    iq1s, iq1m = _define(common, "IQ1S_DELTA"), _define(common, "IQ1M_DELTA")
    header = f'''"""The IQ grids of llama.cpp's ggml, verbatim from its C sources (generated: do not edit).

Made by ``python scripts/make_iq_grids.py`` from ggml-org/ggml {commit}
(``src/ggml-common.h``, ``src/ggml-quants.c``): the ggml of the libggml-python
0.20.2.post1 wheel. Each table keeps the C literals (hex or decimal) as text and
is parsed once at import into a read-only NumPy array of the C element type.

* ``KMASK_IQ2XS`` (``kmask_iq2xs``): bit j = 1 << j.
* ``KSIGNS_IQ2XS`` (``ksigns_iq2xs``): 7 stored sign bits -> 8 sign bits, bit 7
  set so that the number of minus signs is even.
* ``IQ2XXS_GRID``, ``IQ2XS_GRID``, ``IQ2S_GRID`` (uint64: 8 magnitudes per entry, byte j
  = little-endian byte j; values 8, 25, 43), ``IQ3XXS_GRID``,
  ``IQ3S_GRID`` (uint32: 4 magnitudes per entry), ``IQ1S_GRID`` (uint64: 8 int8 values
  -1, 0, 1 per entry; IQ1_S and IQ1_M).
* ``IQ1S_DELTA``, ``IQ1M_DELTA``: the shift added to every IQ1 grid value (0.125f).
* ``KGRID_*``: the quantizers' own index tables (``iq2xs_init_impl``,
  ``iq3xs_init_impl``): entry k packs grid point k's levels, 2 bits per coordinate
  (``KGRID_2BIT_*``; the level l stands for 2l + 1), 2 bits per coordinate with
  values 0..2 (``KGRID_1BIT_2048``; l - 1), or 3 bits (``KGRID_IQ3_*``; 2l + 1).
"""

import numpy as np

__all__ = [
{chr(10).join(f'    "{v[0]}",' for t in (COMMON_TABLES, QUANTS_TABLES) for v in t.values())}
    "IQ1S_DELTA",
    "IQ1M_DELTA",
]


def _table(dtype: str, *rows: str) -> np.ndarray:
    arr = np.array([int(t, 0) for row in rows for t in row.split()], dtype=dtype)
    arr.setflags(write=False)
    return arr


# ggml-common.h: #define IQ1S_DELTA {iq1s}f, #define IQ1M_DELTA {iq1m}f
IQ1S_DELTA = np.float32({iq1s})
IQ1M_DELTA = np.float32({iq1m})

'''
    return header + "\n\n".join(blocks) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="folder with ggml-common.h and ggml-quants.c")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--commit", default="commit 8c63e709 (v0.20.2)", help="source version, for the docstring")
    args = ap.parse_args(argv)
    text = generate(args.src, args.commit)
    args.out.write_text(text)
    subprocess.run([sys.executable, "-m", "ruff", "format", "--quiet", str(args.out)], check=False)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
