#!/usr/bin/env bash
# The vLLM checks that need a GPU, as one prepared run: CUDA vLLM (the `gpu` extra) in its own
# venv, the `vllm` tests (the tensor-parallel one needs 2 GPUs and is skipped on one), and the
# engine benchmark, whose section in docs/benchmarks.md then names the card.
#   bash bench/gpu_vllm.sh 2>&1 | tee gpu_vllm.log
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi -L
test -x .venv-gpu/bin/python || python3 -m venv .venv-gpu
.venv-gpu/bin/pip install -q torch
.venv-gpu/bin/pip install -q -e ".[dev,gpu]"
.venv-gpu/bin/python -c "import torch, vllm; print(torch.__version__, vllm.__version__, torch.cuda.get_device_name(0))"
.venv-gpu/bin/pytest -q -m "vllm or slow" tests/test_vllm.py
.venv-gpu/bin/python bench/vllm_engine.py --repeats 5
