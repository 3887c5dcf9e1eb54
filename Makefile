# The two set-up commands of the README: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test lint venv clean toy-world

# The core install (what `make demo` needs); the test extra (pytest, torch, apache-beam) on top.
$(STAMP): setup.py
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(VPY) -m pip install -q -e ".[test]"
	touch $(TEST_STAMP)

venv: $(TEST_STAMP)

demo: $(STAMP)
	$(VPY) -m maestro_jax.demo

# Rebuild the toy world's weights from scratch (about an hour on 2 CPU cores; resumable).
toy-world: $(STAMP)
	$(VPY) -m maestro_jax.toy.build

test: $(TEST_STAMP)
	$(VPY) -m pytest -q -n 2 --dist loadfile tests

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info
