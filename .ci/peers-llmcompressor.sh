#!/usr/bin/env bash
# Live llmcompressor peer tests in their own virtual environment.
#
# llmcompressor 0.14.0.1 pins compressed-tensors 0.19.0 (and transformers <= 5.17),
# which conflicts with the peers extra (compressed-tensors 0.20), so it cannot share
# CI's main environment. This script builds a venv with torch 2.13.0 (CPU),
# llmcompressor 0.14.0.1 and hqq 0.2.8.post1, installs refquant into it without its
# dependency resolution (--no-deps) plus the core / test pins of pyproject.toml, and
# runs the llmcompressor and hqq peer tests with the peers required:
# REFQUANT_REQUIRE_PEERS=1 fails a missing peer, REFQUANT_LLMCOMPRESSOR_LIVE=1 fails a
# live llmcompressor test that would otherwise skip.
#
# Usage: .ci/peers-llmcompressor.sh [VENV_DIR]     (default: .venv-llmcompressor)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-llmcompressor}"
PY="${PYTHON:-python3}"
start=$(date +%s)

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet torch==2.13.0 llmcompressor==0.14.0.1 hqq==0.2.8.post1
# refquant itself, with the core and test pins of pyproject.toml (numba-cuda not needed)
"$VENV/bin/pip" install --quiet "numpy>=2.0,<2.6" "numba>=0.68,<0.69" "scipy>=1.11,<1.18" \
    "ml_dtypes>=0.5.4,<0.8" "pytest>=8,<10" "hypothesis==6.155.2"
"$VENV/bin/pip" install --quiet --no-deps -e .
installed=$(date +%s)

REFQUANT_REQUIRE_PEERS=1 REFQUANT_LLMCOMPRESSOR_LIVE=1 CI="${CI:-1}" \
    "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
    tests/peers/test_gptq_llmcompressor.py \
    tests/peers/test_awq_sq_llmcompressor.py \
    tests/peers/test_hqq.py
done=$(date +%s)
echo "peers-llmcompressor: install $((installed - start)) s, tests $((done - installed)) s"
