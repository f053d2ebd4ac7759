# The two commands of a fresh machine: `make run` and `make test`.
# Both create and use the project-local virtual environment in .venv/.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The lock the venv installs: every package at an exact version and hash (make lock).
LOCK   := requirements/dev.txt
# Quiet TensorFlow's C++ start-up chatter; errors still show.
export TF_CPP_MIN_LOG_LEVEL ?= 2

HTTP_PORT ?= 8501
GRPC_PORT ?= 8500
RUN_ARGS ?= --dataset digits --seed 0

.PHONY: run train test test-slow lint venv lock bench bench-quality clean

venv: $(STAMP)

# The venv is exactly the lock: a changed lock rebuilds it from scratch, so a package the
# lock dropped cannot linger. Nothing is resolved here (--no-deps, --require-hashes); the
# project itself goes in editable, built by the lock's setuptools (--no-build-isolation).
$(STAMP): $(LOCK) pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11" >&2; exit 1; }
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation --editable .
	$(PY) -m pip check
	touch $(STAMP)

## make lock: recompile requirements/*.txt from pyproject.toml (pins kept where they still
## resolve; UPGRADE=1 moves everything to the newest allowed release). Commit the result.
## It uses the venv's uv as it is: a pyproject.toml that no longer matches the old lock must
## not first rebuild the venv from that lock.
lock:
	@test -x $(VENV)/bin/uv || $(MAKE) venv
	$(PY) scripts/lock.py $(if $(UPGRADE),--upgrade,)

## make run: train the digits bundle into models/digits/1 if the repository has none
## (and evaluate it), then serve models/ on HTTP 8501 and gRPC 8500 until Ctrl-C.
run: $(STAMP)
	@if [ -z "$$(ls models/digits/*/manifest.json 2>/dev/null)" ]; then \
		$(PY) -m training train $(RUN_ARGS) --out models/digits/1 && \
		$(PY) -m training evaluate --bundle models/digits/1 --dataset digits --split heldout \
			--json models/digits-evaluation.json; \
	else echo "models/digits already holds a bundle: serving it (make train retrains)"; fi
	@$(PY) scripts/example_calls.py --model-repo models --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT)
	$(PY) -m service --model-repo models --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT)

## make train: (re)train the digits bundle and evaluate it, without serving.
train: $(STAMP)
	$(PY) -m training train $(RUN_ARGS) --out models/digits/1 --overwrite
	$(PY) -m training evaluate --bundle models/digits/1 --dataset digits --split heldout \
		--json models/digits-evaluation.json

## make test: the default suite (slow tests excluded). pytest's exit 5 (no tests) fails too.
test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q

test-slow: $(STAMP)
	$(PY) -m pytest -m slow -q

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy training service clients/python/aecluster_client

## make bench: the serving benchmark, against the in-process model and MLServer, with h2load
## and wrk (installed from Debian if absent); bench/results/serve.{json,md}. The first run
## trains a small Fashion-MNIST bundle into bench/work/; BUNDLE=DIR serves another version.
bench: $(STAMP)
	$(PY) bench/serve/run.py $(if $(BUNDLE),--bundle $(BUNDLE),)

## make bench-quality: the Fashion-MNIST clustering-quality table (all rows, 3 seeds; hours on
## 2 CPU cores). QUICK=1 runs one seed of the main rows. Finished runs are kept in
## bench/results/runs/ and reused; FRESH=1 runs them all again.
bench-quality: $(STAMP)
	$(PY) bench/quality.py $(if $(QUICK),--quick,) $(if $(FRESH),--fresh,)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
