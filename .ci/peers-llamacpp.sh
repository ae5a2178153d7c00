#!/usr/bin/env bash
# Live llama.cpp peer tests: llama_model_quantize from llama-cpp-cffi 0.4.42.
#
# The wheel (the prebuilt llama.cpp library, ~290 MB) lives in a venv of its own with
# cffi and gguf 0.19.0; scripts/record_llama_quantize.py loads its library (compiling a
# small g++ shim when the system libstdc++ lacks __cxa_call_terminate) and quantizes the
# tiny llama of tests/tiny_llama.py under every preset, with and without an importance
# matrix. tests/peers/test_llama_quantize_live.py then checks, in CI's main environment,
# that the committed records are what the library writes today and that refquant's
# files are the library's, byte for byte. REFQUANT_LLAMA_LIVE=1 fails a test that would
# otherwise skip.
#
# Usage: .ci/peers-llamacpp.sh [VENV_DIR]     (default: .venv-llamacpp)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-llamacpp}"
PY="${PYTHON:-python3}"
start=$(date +%s)

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet llama-cpp-cffi==0.4.42 cffi gguf==0.19.0
installed=$(date +%s)

REFQUANT_REQUIRE_PEERS=1 REFQUANT_LLAMA_LIVE=1 REFQUANT_LLAMA_PYTHON="$VENV/bin/python" \
    python -m pytest -q -p no:cacheprovider tests/peers/test_llama_quantize_live.py
done=$(date +%s)
echo "peers-llamacpp: install $((installed - start)) s, tests $((done - installed)) s"
