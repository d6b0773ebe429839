# Two commands set everything up on a fresh machine:
#   make demo   - create .venv, install, train on the embedded offline sample
#   make test   - create .venv, install, run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test test-fast bench bench-perf bench-perf-quick clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/headstart demo

# Everything, including the tests marked slow (real embedded weights, ../shared/datasets;
# they skip when the data is missing). pytest's exit code 5 (no tests ran) fails the target.
test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

bench: install
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/head_vs_logreg.py
	$(PY) bench/fewshot.py
	$(PY) bench/multilabel.py
	$(PY) bench/prototypes.py
	$(PY) bench/image_recipes.py
	$(PY) bench/text_recipes.py
	$(PY) bench/wordvec.py
	$(PY) bench/performance.py

# The performance suite: every target measured side by side in one run, one table
# (about 30 min on 2 cores; the quick variant about 8 min, for checking, not for quoting).
bench-perf: install
	$(PY) bench/suite.py

bench-perf-quick: install
	$(PY) bench/suite.py --quick

clean:
	rm -rf $(VENV) .demo runs build *.egg-info
