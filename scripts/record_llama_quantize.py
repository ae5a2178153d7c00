"""Record what llama.cpp's llama_model_quantize writes for the tiny llama GGUF of the tests.

llama-quantize is not installable in refquant's test environment (llama-cpp-python
is a 17-minute source build; the prebuilt llama-cpp-cffi wheel is ~290 MB and
needs a newer libstdc++), so its output is recorded once, here, and
``tests/compress/test_llama_presets.py`` compares refquant's output with the
records: the type chosen for every tensor, the sha256 of its bytes, and the
sha256 of the whole file.

Run it in a separate environment::

    python -m venv /work/venv-llamacpp
    /work/venv-llamacpp/bin/pip install llama-cpp-cffi==0.4.42 cffi gguf==0.19.0
    /work/venv-llamacpp/bin/python scripts/record_llama_quantize.py

The wheel's ``_llama_cpp_cpu*.so`` was built with GCC 14 and calls
``__cxa_call_terminate``, which the libstdc++ of GCC 12 lacks: this script
compiles a one-function shim with g++ and re-runs itself with it in
``LD_PRELOAD`` (the shim only runs if an exception leaves a noexcept function,
where it terminates, as GCC 14's does). It imports the library module directly
(``llama/__init__`` pulls in transformers and more).

Writes ``tests/data/llama_quantize/<preset>.json`` for every preset, and
``tests/data/llama_quantize/imatrix/<preset>.json`` for the same presets given the
importance matrix of ``tests/tiny_llama.py: write_tiny_imatrix`` (a legacy ``.dat``).

The library call takes the imatrix and the extra metadata as C++ objects
(``llama_model_quantize_params.imatrix`` points to a
``std::unordered_map<std::string, std::vector<float>>``, ``.kv_overrides`` to a
``std::vector<llama_model_kv_override>`` ended by an empty key). llama-quantize's
``main`` (tools/quantize/quantize.cpp) builds both; this script does what it does,
through a small C++ helper compiled here with g++:

* ``load_imatrix``, legacy branch: every stored vector divided by its ``ncall`` in
  float32 (``e[j] /= ncall``); the trailing chunk count and dataset name read back;
* the overrides, in ``main``'s order: ``quantize.imatrix.file`` (the path as given on
  the command line, here the relative ``tiny-imatrix.dat`` with the working directory
  set to the file's folder, so that the tests can give the same string),
  ``quantize.imatrix.dataset``, ``quantize.imatrix.entries_count`` and
  ``quantize.imatrix.chunks_count`` (``LLAMA_KV_OVERRIDE_TYPE_INT``).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

PRESETS = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
           "q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M", "q4_k_s": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
           "q5_k_s": "LLAMA_FTYPE_MOSTLY_Q5_K_S", "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
           "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
           "iq4_xs": "LLAMA_FTYPE_MOSTLY_IQ4_XS"}

IMATRIX_FILE = "tiny-imatrix.dat"

# Builds the two C++ objects llama_model_quantize_params points to. The override struct
# is llama.h's llama_model_kv_override; its size is checked against the library's.
HELPER = r"""
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>
struct kv_override {
    int tag;
    char key[128];
    union { int64_t val_i64; double val_f64; bool val_bool; char val_str[128]; };
};
using imatrix_map = std::unordered_map<std::string, std::vector<float>>;
extern "C" size_t rq_kv_size() { return sizeof(kv_override); }
extern "C" void *rq_imatrix_new() { return new imatrix_map(); }
extern "C" void rq_imatrix_put(void *m, const char *name, const float *v, size_t n) {
    (*(imatrix_map *)m)[name] = std::vector<float>(v, v + n);
}
extern "C" void rq_imatrix_free(void *m) { delete (imatrix_map *)m; }
extern "C" void *rq_kv_new(const void *items, size_t n) {
    auto *v = new std::vector<kv_override>(n + 1);
    std::memcpy(v->data(), items, n * sizeof(kv_override));
    std::memset(&v->back(), 0, sizeof(kv_override));  // the empty key that ends the list
    return v;
}
extern "C" void rq_kv_free(void *v) { delete (std::vector<kv_override> *)v; }
"""

SHIM = r"""
#include <cxxabi.h>
#include <exception>
extern "C" void __cxa_call_terminate(void *ue) noexcept {
    if (ue) __cxxabiv1::__cxa_begin_catch(ue);
    std::terminate();
}
"""


def _compile(source: str, name: str) -> Path:
    """``source`` (C++) compiled by g++ into a shared library in a new temporary folder."""
    d = Path(tempfile.mkdtemp(prefix=f"rq_{name}_"))
    (d / f"{name}.cc").write_text(source)
    subprocess.run(["g++", "-shared", "-fPIC", "-O2", "-std=c++17", "-o", str(d / f"{name}.so"),
                    str(d / f"{name}.cc")], check=True)
    return d / f"{name}.so"


def _load_lib():
    spec = importlib.util.find_spec("llama")
    if spec is None:
        sys.exit("llama-cpp-cffi is not installed in this interpreter")
    folder = Path(spec.submodule_search_locations[0])
    so = next(folder.glob("_llama_cpp_cpu*.so"))
    mspec = importlib.util.spec_from_file_location("_llama_cpp_cpu", so)
    try:
        mod = importlib.util.module_from_spec(mspec)
        mspec.loader.exec_module(mod)
    except ImportError as e:
        if "__cxa_call_terminate" not in str(e) or os.environ.get("REFQUANT_SHIM_LOADED"):
            raise
        env = dict(os.environ, LD_PRELOAD=str(_compile(SHIM, "shim")), REFQUANT_SHIM_LOADED="1")
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    return mod.lib, mod.ffi, so


def _helper(ffi):
    """The compiled HELPER through ctypes."""
    import ctypes

    h = ctypes.CDLL(str(_compile(HELPER, "helper")))
    h.rq_kv_size.restype = ctypes.c_size_t
    h.rq_imatrix_new.restype = h.rq_kv_new.restype = ctypes.c_void_p
    h.rq_imatrix_put.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p,
                                 ctypes.c_size_t]
    h.rq_kv_new.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    h.rq_imatrix_free.argtypes = h.rq_kv_free.argtypes = [ctypes.c_void_p]
    if h.rq_kv_size() != ffi.sizeof("struct llama_model_kv_override"):
        sys.exit("llama_model_kv_override: the helper's layout is not the library's")
    return h


def _read_legacy_imatrix(path):
    """tools/quantize/quantize.cpp ``load_imatrix`` on a legacy file: {name: values / ncall}
    (float32), the chunk count and the dataset name."""
    import struct

    import numpy as np

    b = Path(path).read_bytes()
    (n,), pos = struct.unpack_from("<i", b, 0), 4
    out = {}
    for _ in range(n):
        (ln,) = struct.unpack_from("<i", b, pos)
        name = b[pos + 4:pos + 4 + ln].decode()
        pos += 4 + ln
        ncall, nval = struct.unpack_from("<ii", b, pos)
        v = np.frombuffer(b, "<f4", nval, pos + 8).astype(np.float32)
        pos += 8 + 4 * nval
        out[name] = v / np.float32(ncall) if ncall > 0 else v.copy()
    chunks, dataset = 0, ""
    if pos < len(b):
        chunks, ln = struct.unpack_from("<ii", b, pos)
        dataset = b[pos + 8:pos + 8 + ln].decode()
    return out, chunks, dataset


def _overrides(ffi, lib, entries, chunks, dataset):
    """llama-quantize main's KV overrides for ``--imatrix IMATRIX_FILE``, in its order."""
    kv = []

    def add(key, tag, field, value):
        o = ffi.new("struct llama_model_kv_override *")
        o.key = key.encode()
        o.tag = getattr(lib, tag)
        setattr(o, field, value)
        kv.append(bytes(ffi.buffer(o)))

    add("quantize.imatrix.file", "LLAMA_KV_OVERRIDE_TYPE_STR", "val_str", IMATRIX_FILE.encode())
    if dataset:
        add("quantize.imatrix.dataset", "LLAMA_KV_OVERRIDE_TYPE_STR", "val_str",
            dataset.encode()[:127])
    add("quantize.imatrix.entries_count", "LLAMA_KV_OVERRIDE_TYPE_INT", "val_i64", len(entries))
    if chunks > 0:
        add("quantize.imatrix.chunks_count", "LLAMA_KV_OVERRIDE_TYPE_INT", "val_i64", chunks)
    return b"".join(kv), len(kv)


def _sha(b) -> str:
    return hashlib.sha256(bytes(b)).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "tests" / "data" / "llama_quantize"))
    ap.add_argument("--keep", default=None, metavar="DIR",
                    help="also keep the quantized files (DIR/tiny-<preset>.gguf, "
                    "DIR/imatrix/tiny-<preset>.gguf)")
    args = ap.parse_args()
    import gguf
    from tiny_llama import write_tiny_imatrix, write_tiny_llama

    lib, ffi, so = _load_lib()
    from importlib.metadata import version

    peer = f"llama-cpp-cffi {version('llama-cpp-cffi')} ({so.name})"
    out = Path(args.out).resolve()
    if args.keep:
        args.keep = str(Path(args.keep).resolve())
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "tiny-f16.gguf"
        write_tiny_llama(src)
        src_sha = _sha(src.read_bytes())
        helper = _helper(ffi)
        write_tiny_imatrix(Path(tmp) / IMATRIX_FILE)
        imx_sha = _sha((Path(tmp) / IMATRIX_FILE).read_bytes())
        entries, chunks, dataset = _read_legacy_imatrix(Path(tmp) / IMATRIX_FILE)
        os.chdir(tmp)  # the imatrix path as given is the relative IMATRIX_FILE
        for with_imatrix in (False, True):
            folder = out / "imatrix" if with_imatrix else out
            folder.mkdir(parents=True, exist_ok=True)
            for preset, ftype in PRESETS.items():
                dst = Path(tmp) / f"tiny-{preset}.gguf"
                params = ffi.new("struct llama_model_quantize_params *")
                params[0] = lib.llama_model_quantize_default_params()
                params.ftype = getattr(lib, ftype)
                params.nthread = 2
                keep = []
                if with_imatrix:
                    m = helper.rq_imatrix_new()
                    for name, v in entries.items():
                        keep.append(v)
                        helper.rq_imatrix_put(m, name.encode(), v.ctypes.data, v.size)
                    items, n = _overrides(ffi, lib, entries, chunks, dataset)
                    kv = helper.rq_kv_new(items, n)
                    params.imatrix = ffi.cast("void *", m)
                    params.kv_overrides = ffi.cast("void *", kv)
                rc = lib.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
                if with_imatrix:
                    helper.rq_imatrix_free(m)
                    helper.rq_kv_free(kv)
                if rc != 0:
                    sys.exit(f"llama_model_quantize failed for {preset} (rc {rc})")
                if args.keep:
                    keep_dir = Path(args.keep) / ("imatrix" if with_imatrix else "")
                    keep_dir.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(dst, keep_dir / dst.name)
                r = gguf.GGUFReader(dst)
                meta = ["general.file_type", "general.quantization_version"]
                if with_imatrix:
                    meta += [k for k in r.fields if k.startswith("quantize.imatrix.")]
                rec = {
                    "peer": peer,
                    "call": (f"llama_model_quantize(ftype={ftype}, nthread=2, defaults otherwise"
                             + (", imatrix and kv_overrides as llama-quantize --imatrix "
                                f"{IMATRIX_FILE} builds them)" if with_imatrix else ")")),
                    "input": "tests/tiny_llama.py: write_tiny_llama(path)",
                    "input_sha256": src_sha,
                    **({"imatrix": f"tests/tiny_llama.py: write_tiny_imatrix('{IMATRIX_FILE}')",
                        "imatrix_sha256": imx_sha} if with_imatrix else {}),
                    "file_sha256": _sha(dst.read_bytes()),
                    "file_size": dst.stat().st_size,
                    "gguf": version("gguf"),
                    "metadata": {k: r.fields[k].contents() for k in meta},
                    "metadata_types": {k: [t.name for t in r.fields[k].types] for k in meta},
                    "key_order": [k for k in r.fields if not k.startswith("GGUF.")],
                    "tensor_order": [t.name for t in r.tensors],
                    "tensors": {t.name: {"type": t.tensor_type.name,
                                         "shape": [int(d) for d in reversed(t.shape.tolist())],
                                         "nbytes": int(t.n_bytes),
                                         "sha256": _sha(t.data.tobytes())} for t in r.tensors},
                }
                (folder / f"{preset}.json").write_text(json.dumps(rec, indent=1) + "\n")
                print("imatrix" if with_imatrix else "plain", preset,
                      sorted({v["type"] for v in rec["tensors"].values()}))

if __name__ == "__main__":
    main()
