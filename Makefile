# The two commands the README promises: `make demo` and `make test`. Both set up .venv first, idempotently.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
export OMP_NUM_THREADS ?= 1
# pytest-xdist workers: the suite is CPU-bound and each worker uses one torch thread.
TEST_WORKERS ?= 2

.PHONY: setup test test-fast demo check-env bench lint

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup_env.sh
	bash scripts/setup_env.sh
	touch $@

check-env: setup
	$(PY) -m mae_app.env

test: setup
	$(PY) -m pytest -n $(TEST_WORKERS) tests

test-fast: setup
	$(PY) -m pytest -n $(TEST_WORKERS) -m "not slow" tests

demo: setup
	$(PY) tools/demo.py

bench: setup
	$(PY) tools/bench_pretrain.py
	$(PY) tools/bench_backbone.py

lint: setup
	$(PY) -m ruff check .
