#!/usr/bin/env bash
# Build the CPU peer for benchmarks/bench_executor.py: llama-cpp-python's OpenAI-compatible server,
# compiled from source into its own venv (not a dependency of corea_engine or of CI).
#
#   nice -n 19 benchmarks/setup_llamacpp.sh        # ~10 min on 2 cores
#
# Generic AVX2 build: a native build (-march=native) died with "Illegal instruction" on this
# machine (see stack.md, "CPU decode speed"). LLAMACPP_VENV and PYTHON override the defaults.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
venv="${LLAMACPP_VENV:-$here/.llamacpp-venv}"
python="${PYTHON:-python3}"
version="0.3.36"

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import llama_cpp, llama_cpp.server; assert llama_cpp.__version__ == '$version'" 2>/dev/null; then
    echo "llama-cpp-python $version already in $venv"
    exit 0
fi

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF" \
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
    "$venv/bin/python" -m pip install -q --no-binary llama-cpp-python --no-cache-dir \
    "llama-cpp-python[server]==$version"
"$venv/bin/python" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'in $venv')"
