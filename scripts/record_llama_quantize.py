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

Writes ``tests/data/llama_quantize/<preset>.json`` for every preset.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
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

SHIM = r"""
#include <cxxabi.h>
#include <exception>
extern "C" void __cxa_call_terminate(void *ue) noexcept {
    if (ue) __cxxabiv1::__cxa_begin_catch(ue);
    std::terminate();
}
"""


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
        shim_dir = Path(tempfile.mkdtemp(prefix="cxa_shim_"))
        (shim_dir / "shim.cc").write_text(SHIM)
        subprocess.run(["g++", "-shared", "-fPIC", "-O2", "-o", str(shim_dir / "libshim.so"),
                        str(shim_dir / "shim.cc")], check=True)
        env = dict(os.environ, LD_PRELOAD=str(shim_dir / "libshim.so"), REFQUANT_SHIM_LOADED="1")
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    return mod.lib, mod.ffi, so


def _sha(b) -> str:
    return hashlib.sha256(bytes(b)).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "tests" / "data" / "llama_quantize"))
    args = ap.parse_args()
    import gguf
    from tiny_llama import write_tiny_llama

    lib, ffi, so = _load_lib()
    from importlib.metadata import version

    peer = f"llama-cpp-cffi {version('llama-cpp-cffi')} ({so.name})"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "tiny-f16.gguf"
        write_tiny_llama(src)
        src_sha = _sha(src.read_bytes())
        for preset, ftype in PRESETS.items():
            dst = Path(tmp) / f"tiny-{preset}.gguf"
            params = ffi.new("struct llama_model_quantize_params *")
            params[0] = lib.llama_model_quantize_default_params()
            params.ftype = getattr(lib, ftype)
            params.nthread = 2
            rc = lib.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
            if rc != 0:
                sys.exit(f"llama_model_quantize failed for {preset} (rc {rc})")
            r = gguf.GGUFReader(dst)
            rec = {
                "peer": peer,
                "call": f"llama_model_quantize(ftype={ftype}, nthread=2, defaults otherwise)",
                "input": "tests/tiny_llama.py: write_tiny_llama(path)",
                "input_sha256": src_sha,
                "file_sha256": _sha(dst.read_bytes()),
                "file_size": dst.stat().st_size,
                "gguf": version("gguf"),
                "metadata": {k: r.fields[k].contents() for k in
                             ("general.file_type", "general.quantization_version")},
                "tensor_order": [t.name for t in r.tensors],
                "tensors": {t.name: {"type": t.tensor_type.name,
                                     "shape": [int(d) for d in reversed(t.shape.tolist())],
                                     "nbytes": int(t.n_bytes),
                                     "sha256": _sha(t.data.tobytes())} for t in r.tensors},
            }
            (out / f"{preset}.json").write_text(json.dumps(rec, indent=1) + "\n")
            print(preset, {v["type"] for v in rec["tensors"].values()})


if __name__ == "__main__":
    main()
