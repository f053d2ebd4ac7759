# The two commands of a fresh machine: `make run` and `make test`.
# Both create and use the project-local virtual environment in .venv/.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Quiet TensorFlow's C++ start-up chatter; errors still show.
export TF_CPP_MIN_LOG_LEVEL ?= 2

RUN_ARGS ?= --dataset digits --model conv --latent 10 --clusters 10 --epochs 30 --seed 0

.PHONY: run test test-slow lint typecheck venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## make run: train on scikit-learn's digits, export models/digits/1, evaluate it.
run: $(STAMP)
	$(PY) -m training train $(RUN_ARGS) --out models/digits/1 --overwrite
	$(PY) -m training evaluate --bundle models/digits/1 --dataset digits --split heldout \
		--json models/digits/1-evaluation.json

## make test: the default suite (slow tests excluded). pytest's exit 5 (no tests) fails too.
test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q

test-slow: $(STAMP)
	$(PY) -m pytest -m slow -q

lint: $(STAMP)
	$(PY) -m ruff check training service tests
	$(PY) -m mypy training service

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
