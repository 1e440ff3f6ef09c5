# vsearch — set-up and everyday targets. `make demo` and `make test` work on a fresh machine with
# Python 3.11 and the package registries: each creates .venv if missing and installs what it needs.

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The CPU build of torch is installed first, on its own: with 2.13.0 already present, the project's
# `torch==2.13.0` pin is satisfied and pip never reaches for the multi-gigabyte CUDA build.
TORCH_CPU := torch==2.13.0+cpu

export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install demo test test-fast lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_CPU)" || $(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

# Debian's Chromium drives the browser test (Playwright launches it by path; Playwright's own
# browser download is not used). Installed with apt-get when missing, which needs root.
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends chromium >/dev/null; \
	else \
	  echo "make: $(CHROMIUM) is missing; install Debian's chromium (apt-get install chromium," \
	       "as root) for the browser test" >&2; exit 1; \
	fi

install: $(STAMP) $(CHROMIUM)

demo: $(STAMP)
	$(BIN)/vsearch demo --config configs/demo.yaml $(ARGS)

test: $(STAMP) $(CHROMIUM)
	$(BIN)/python -m pytest -q $(ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not ray and not slow" $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_index.py

clean:
	rm -rf var/ .pytest_cache
