# The two set-up commands of the README: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

APP_STAMP := $(VENV)/.installed-app

.PHONY: demo app test lint venv clean toy-world constraints

# The core install (what `make demo` needs); the test extra (pytest, torch, apache-beam) on top.
# Both are pinned by constraints.txt.
$(STAMP): setup.py constraints.txt
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -c constraints.txt -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(VPY) -m pip install -q -c constraints.txt -e ".[test]"
	touch $(TEST_STAMP)

venv: $(TEST_STAMP)

demo: $(STAMP)
	$(VPY) -m maestro_jax.demo

$(APP_STAMP): $(STAMP)
	$(VPY) -m pip install -q -c constraints.txt -e ".[app]"
	touch $(APP_STAMP)

# The web app on the toy world's weights: http://127.0.0.1:8000/ (ARGS="--port 8080 ...").
app: $(APP_STAMP)
	$(VPY) -m maestro_jax.app $(ARGS)

# Rebuild the toy world's weights from scratch (about two hours on 2 CPU cores; resumable).
toy-world: $(STAMP)
	$(VPY) -m maestro_jax.toy.build

test: $(TEST_STAMP)
	$(VPY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=40 tests

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# Re-pin constraints.txt to the newest releases setup.py allows (then run `make test`).
constraints:
	rm -rf .venv-pin && $(PY) -m venv .venv-pin && .venv-pin/bin/pip install -q --upgrade pip
	.venv-pin/bin/pip install -q -e ".[test,data]"
	{ echo "# Versions 'make' installs (pip install -c constraints.txt): the exact set the tests"; \
	  echo "# passed with (Python 3.11, CPU). Regenerate after an intended upgrade: make constraints."; \
	  .venv-pin/bin/pip freeze --exclude-editable | sed 's/+cpu$$//'; } > constraints.txt
	rm -rf .venv-pin

clean:
	rm -rf $(VENV) build *.egg-info
