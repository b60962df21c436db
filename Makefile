# Certify-Net: `make demo` and `make test` create or reuse .venv and install into it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast test-slow lint bench docs gpu-check gpu-check-prep install clean

$(STAMP): setup.py requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/quickstart.py

# Everything but the long statistical runs, with the 25 slowest tests listed (CI runs this, through .ci/run).
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --durations=25 tests

# The inner loop: no slow runs and no end-to-end tests (scripts, servers, torchrun, SLURM as subprocesses).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not e2e" tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests

# ruff, configured in ruff.toml (CI runs it after the tests).
lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks scripts

bench: $(STAMP)
	$(PY) benchmarks/bench_sampler.py
	$(PY) benchmarks/bench_dsrs.py

# The Sphinx site (docs/): Markdown pages + the API reference from the docstrings, warnings as errors.
docs: $(STAMP)
	$(VENV)/bin/sphinx-build -W --keep-going -q -b html docs docs/_build/html
	@echo "docs: docs/_build/html/index.html"

# The device check (issue #18): CUDA tests + sampler benchmarks in <= 6 min on one GPU -> results/gpu_check.json.
# No venv is made (a GPU machine may have no network): it uses .venv if present, else $(PYTHON).
gpu-check:
	PYTHON=$(if $(wildcard $(PY)),$(PY),$(PYTHON)) bash benchmarks/gpu_check.sh

# Here, before a GPU run: cache the bundled MNIST digits as data/mnist5k.npz (then carry that file).
gpu-check-prep: $(STAMP)
	PYTHONPATH=src $(PY) -c "from certifynet.data import get_dataset; get_dataset('mnist5k', 'test')"
	@ls -l data/mnist5k.npz

clean:
	rm -rf $(VENV) build src/*.egg-info
