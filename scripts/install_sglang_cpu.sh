#!/usr/bin/env bash
# Install SGLang's Python package into a CPU venv for the tests in tests/test_sglang_*.py.
#
# A plain `pip install sglang` resolves ~200 packages and replaces torch with a CUDA build, and
# its engine cannot run without a GPU anyway. The tests only need SGLang's pure-Python parts
# (SamplingParams, the xgrammar grammar backend, custom logit processors and the sampler helper),
# so sglang goes in with --no-deps, plus the pure-Python packages its imports need. torch is
# pinned to whatever is installed so nothing here can replace it.
#
# usage: scripts/install_sglang_cpu.sh [python]   (default: .venv/bin/python)
set -euo pipefail
PY=${1:-.venv/bin/python}
SGLANG_VERSION=${SGLANG_VERSION:-0.5.23}

torch_before=$("$PY" -c 'import torch; print(torch.__version__)')
pin=$(mktemp)
trap 'rm -f "$pin"' EXIT
echo "torch==${torch_before%%+*}" > "$pin"

"$PY" -m pip install -q --no-deps "sglang==${SGLANG_VERSION}"
"$PY" -m pip install -q -c "$pin" \
    orjson aiohttp pyzmq msgspec pybase64 setproctitle uvloop uvicorn fastapi python-multipart \
    prometheus-client partial_json_parser interegular psutil requests pillow einops xxhash \
    zstandard distro openai tiktoken sentencepiece scipy ipython dill
# compressed-tensors declares torch and transformers; both are already here.
"$PY" -m pip install -q --no-deps compressed-tensors

torch_after=$("$PY" -c 'import torch; print(torch.__version__)')
if [ "$torch_before" != "$torch_after" ]; then
    echo "install_sglang_cpu: torch changed from $torch_before to $torch_after" >&2
    exit 1
fi
# What tests/test_sglang_*.py use. (sglang.srt.layers.sampler also imports torchvision, whose PyPI
# wheels link CUDA torch; the tests compile SGLang's apply_custom_logit_processor from its source.)
"$PY" -c 'import sglang, sglang.srt.sampling.sampling_params, sglang.srt.constrained.xgrammar_backend, sglang.srt.sampling.sampling_batch_info, torch; print("sglang", sglang.__version__, "importable; torch", torch.__version__)'
