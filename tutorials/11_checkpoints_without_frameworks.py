"""
# 11 — Checkpoints without frameworks: what is inside a .pt file, and how to read it safely

A PyTorch checkpoint is a zip archive holding a *pickle* (the object graph) and
raw *storages* (the numbers). We build one by hand, opcode by opcode, look at
every byte of it, see why loading a pickle runs code, read it with refquant's
restricted interpreter instead, and finish with the safetensors header, which
needs no interpreter at all.
"""

# %% [markdown]
# ## The formula: a tensor is a view of a storage
#
# A storage is a flat run of $N$ elements. A tensor on it has a storage offset
# $o$, a size $(d_1, \dots, d_k)$ and strides $(s_1, \dots, s_k)$, counted in
# elements; element $(i_1, \dots, i_k)$ of the tensor is storage element
#
# $$ \mathrm{addr}(i_1, \dots, i_k) = o + \sum_{j=1}^{k} i_j\, s_j, \qquad 0 \le i_j < d_j . $$
#
# The view is valid only if its last element lies inside the storage:
# $o + \sum_j (d_j - 1)\, s_j < N$ (when no $d_j$ is 0). A reader that skips
# this check lets a file point outside its own data.

# %% [markdown]
# ## A worked example by hand
#
# Storage: the six float32 values $[0, 1, 2, 3, 4, 5]$; tensor ``w`` is the
# $2 \times 3$ row-major view ($o = 0$, strides $(3, 1)$):
# $w = \begin{pmatrix} 0 & 1 & 2 \\ 3 & 4 & 5 \end{pmatrix}$.
#
# Its column ``w[:, 1]`` shares the storage with $o = 1$, size $(2,)$, stride
# $(3,)$: addresses $1 + 0 \cdot 3 = 1$ and $1 + 1 \cdot 3 = 4$, so the values
# are $[1, 4]$. Its last address $1 + (2 - 1)\cdot 3 = 4 < 6$: valid.
#
# The transpose ``w.T`` is size $(3, 2)$, strides $(1, 3)$: element $(2, 1)$ is
# at $0 + 2 \cdot 1 + 1 \cdot 3 = 5$.

# %%
hand_column = [1.0, 4.0]
hand_transpose_21 = 5.0

# %% [markdown]
# ## Writing a .pt file by hand
#
# ``torch.save`` pickles the object graph with protocol 2. A tensor becomes a
# call: ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
# requires_grad, backward_hooks)``, and the storage a *persistent id*
# ``("storage", torch.FloatStorage, key, location, numel)`` that the loader
# resolves to the archive entry ``<top>/data/<key>``. We write those opcodes
# ourselves (``c`` = GLOBAL, ``(`` = MARK, ``t`` = TUPLE, ``Q`` = BINPERSID,
# ``R`` = REDUCE, ``u`` = SETITEMS).

# %%
import io
import os
import pickletools
import struct
import zipfile
from pathlib import Path


def glob(module, name):
    return b"c" + f"{module}\n{name}\n".encode()


def text(s):
    return b"X" + struct.pack("<I", len(s)) + s.encode()


def num(n):
    return b"K" + bytes([n])  # BININT1: 0..255


def tup(*items):
    return b"(" + b"".join(num(i) for i in items) + b"t"


def tensor(offset, size, stride):
    pid = b"(" + text("storage") + glob("torch", "FloatStorage") + text("0") + text("cpu") + num(6) + b"tQ"
    hooks = glob("collections", "OrderedDict") + b")R"
    return (glob("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + num(offset) + tup(*size)
            + tup(*stride) + b"\x89" + hooks + b"tR")


data_pkl = (b"\x80\x02" + glob("collections", "OrderedDict") + b")R("
            + text("w") + tensor(0, (2, 3), (3, 1))
            + text("w_col1") + tensor(1, (2,), (3,))
            + text("w_t") + tensor(0, (3, 2), (1, 3)) + b"u.")
storage = struct.pack("<6f", 0, 1, 2, 3, 4, 5)

work = Path(os.environ.get("REFQUANT_TUTORIAL_OUT", "tutorial_output")) / "checkpoints_11"
work.mkdir(parents=True, exist_ok=True)
pt = work / "handmade.pt"
with zipfile.ZipFile(pt, "w", zipfile.ZIP_STORED) as z:
    z.writestr("handmade/data.pkl", data_pkl)
    z.writestr("handmade/byteorder", b"little")
    z.writestr("handmade/data/0", storage)
    z.writestr("handmade/version", b"3\n")

# %% [markdown]
# ## What is inside: the zip, the opcodes, the storage

# %%
with zipfile.ZipFile(pt) as z:
    for info in z.infolist():
        kind = "stored" if info.compress_type == zipfile.ZIP_STORED else "deflated"
        print(f"{info.filename:<22}{info.file_size:>6} bytes  {kind}  local header at {info.header_offset}")

out = io.StringIO()
pickletools.dis(data_pkl, out=out)
print("\n".join(out.getvalue().splitlines()[:32]), "\n  ...")
print("storage 0 as float32:", struct.unpack("<6f", storage))

# %% [markdown]
# ## Why unpickling is code execution
#
# ``GLOBAL`` imports *any* attribute of *any* module; ``REDUCE`` calls it with
# arguments from the file. A class's ``__reduce__`` decides what that call is,
# so a "checkpoint" can hold ``os.system("...")`` as easily as a tensor. Here is
# a harmless gadget that calls ``print``: Python's own ``pickle.loads`` runs it.

# %%
import pickle


class Gadget:
    def __reduce__(self):
        return (print, ("  <- this line was printed by pickle.loads, i.e. by the file",))


gadget = pickle.dumps(Gadget(), protocol=2)
pickletools.dis(gadget)
pickle.loads(gadget)  # runs print(...) -- with os.system it would run a shell command

# %% [markdown]
# ## How refquant reads it instead
#
# ``refquant.io`` never calls ``pickle.load``. Its interpreter walks the
# opcodes with ``pickletools.genops`` (which only parses) and keeps its own
# stack and memo. ``GLOBAL`` may name only an allowlist (``OrderedDict``, the
# tensor rebuild functions, storage types, dtypes, ``torch.Size``, ...), each
# mapped to a validating stand-in written by refquant, and the rebuild checks
# the formula above: offset, sizes and strides must stay inside the storage,
# whose size must equal numel x itemsize. Storages are memory-mapped out of the
# zip (stored entries: data offset = local header + 30 + name + extra).

# %%
import numpy as np

import refquant.io as rio
from refquant import RefquantError

with rio.open(pt) as ck:
    print(ck)
    for name, info in ck.infos.items():
        print(f"  {name:<8}{info.stored_dtype:<16}{str(info.shape):<10}{info.nbytes} bytes")
    w_col1 = np.array(ck["w_col1"])
    w_t = np.array(ck["w_t"])
    print("w_col1 =", w_col1, " shares memory with w:", np.shares_memory(ck["w"], ck["w_col1"]))

evil = work / "evil.pt"
with zipfile.ZipFile(evil, "w") as z:
    z.writestr("evil/data.pkl", gadget)
try:
    rio.open(evil)
except RefquantError as e:
    print("refused:", str(e).split(": ", 1)[1])

# %% [markdown]
# ## Checking against PyTorch
#
# PyTorch's own ``torch.load(weights_only=True)`` (an allowlisting unpickler of
# its own) must read our hand-made file to the same numbers.

# %%
try:
    import torch
except ImportError:
    torch = None
    print("torch not installed: peer check skipped")
if torch is not None:
    ref = torch.load(pt, weights_only=True)
    for k in ("w", "w_col1", "w_t"):
        assert np.array_equal(ref[k].numpy(), rio.load_arrays(pt, k)), k
    print("torch.load(weights_only=True) agrees on", list(ref))

# %% [markdown]
# ## safetensors: a header you can draw
#
# safetensors needs no interpreter: 8 bytes of little-endian header length $n$,
# $n$ bytes of JSON (padded with spaces to a multiple of 8), then the tensors
# back to back. Each entry gives dtype, shape and ``data_offsets`` relative to
# the data; refquant checks that they tile the data exactly:
# $\mathrm{end} - \mathrm{begin} = \mathrm{numel} \cdot \mathrm{itemsize}$,
# no gaps, no overlap, nothing after the last tensor.

# %%
import json
import os
from pathlib import Path

import matplotlib.pyplot as plt

# plots go into one folder the tutorial names (REFQUANT_TUTORIAL_OUT), not the working directory
OUT = Path(os.environ.get("REFQUANT_TUTORIAL_OUT", "tutorial_output"))
OUT.mkdir(parents=True, exist_ok=True)

st = rio.save({"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], np.int8)},
              work / "tiny.safetensors", metadata={"made_by": "tutorial 11"}, overwrite=True)
raw = st.read_bytes()
(n,) = struct.unpack("<Q", raw[:8])
header = json.loads(raw[8 : 8 + n])
print(f"header length n = {n} (a multiple of 8)")
print(json.dumps(header))

segments = [("u64 n", 0, 8, "#888888"), ("JSON header", 8, 8 + n, "#4c72b0")]
colors = ["#dd8452", "#55a868", "#c44e52"]
for (name, e), c in zip(((k, v) for k, v in header.items() if k != "__metadata__"), colors, strict=False):
    b0, b1 = e["data_offsets"]
    segments.append((f"{name}: {e['dtype']} {e['shape']}", 8 + n + b0, 8 + n + b1, c))
fig, ax = plt.subplots(figsize=(9, 1.8))
for label, a, b, c in segments:
    ax.barh(0, b - a, left=a, color=c, edgecolor="black")
    ax.text((a + b) / 2, 0, label, ha="center", va="center", fontsize=8, rotation=0 if b - a > 40 else 90)
ax.set_yticks([])
ax.set_xlabel("byte offset in the file")
ax.set_title(f"{st.name}: {len(raw)} bytes")
fig.tight_layout()
plt.savefig(OUT / "safetensors_layout.png")

# %% [markdown]
# ## The hand-worked values, by refquant
#
# The column view read from the file is $[1, 4]$, as computed by hand from
# $o + i\,s$; element $(2, 1)$ of the transpose is storage element 5.

# %%
assert w_col1.tolist() == hand_column
assert w_t[2, 1] == hand_transpose_21
print("hand-worked values match refquant:", w_col1.tolist(), w_t[2, 1])
