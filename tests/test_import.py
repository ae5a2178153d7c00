"""`import refquant` stays light: nothing compiles, no heavy dependency loads until used."""

import json
import subprocess
import sys


def test_import_refquant_loads_neither_numba_nor_ml_dtypes_nor_any_peer():
    # ml_dtypes 0.7.0's own import takes about a second of CPU (0.6.0: 0.01 s), Numba's
    # half a second; `import refquant` needs neither until a kernel runs or a float8 /
    # bfloat16 dtype is asked for (issue 9: import under 0.5 s)
    code = ("import sys, time; t = time.perf_counter(); import refquant, refquant.kernels, "
            "refquant.compress, refquant.testing; "
            "print(__import__('json').dumps({'s': time.perf_counter() - t, "
            "'mods': sorted(m for m in ('numba', 'ml_dtypes', 'torch', 'onnx', 'gguf', "
            "'scipy.optimize', 'llvmlite') if m in sys.modules)}))")
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                    text=True, check=True).stdout)
    assert out["mods"] == [], out
