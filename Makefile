# The two commands the README promises: `make demo` and `make test`. Both set up .venv first, idempotently.
VENV ?= .venv
PY := $(VENV)/bin/python
# MMCV_OPS=1: mmcv with its compiled ops (a long C++ build, cached; docs/install.md); the default
# needs none of them.
MMCV_OPS ?= 0
export MMCV_OPS
STAMP := $(VENV)/.setup-done-mmcv-ops$(MMCV_OPS)
export OMP_NUM_THREADS ?= 1
# pytest-xdist workers: the suite is CPU-bound and each worker uses one torch thread.
TEST_WORKERS ?= 2

.PHONY: setup test test-fast demo check-env bench lint

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup_env.sh scripts/mmcv_ext_standin.py
	bash scripts/setup_env.sh
	rm -f $(VENV)/.setup-done*
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
