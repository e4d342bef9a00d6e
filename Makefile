# The two commands of the README:  make demo  and  make test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test lint format clean

install: $(STAMP)

# torch first: these machines hold a CPU wheel of torch 2.13.0 on disk; without it pip would pull a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: install
	$(PY) -m pipeline run recipes/toy

# One test process per core (at most 8), one thread each: most tests are tiny models and fresh interpreters,
# which a second thread barely speeds up; side by side they finish in about 60 % of the time of one process.
test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q --numprocesses auto --maxprocesses 8 --dist loadscope tests

# Ruff, configured in pyproject.toml (line length 119, as TRL): the format and the lint rules CI checks.
lint: install
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

# Rewrites the files: the formatter, then the lint rules that fix themselves (import order, modern syntax).
format: install
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean:
	rm -rf runs .pytest_cache
