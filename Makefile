# `make test` creates .venv when missing, installs the project into it and runs the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-fast bench clean predict

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile -m 'not slow' $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/ops.py
	$(PY) benchmarks/evaluation.py

clean:
	rm -rf $(VENV) build *.egg-info

predict: $(STAMP)
	@echo "predict is not available yet: the predict command and the bundled model are not built." >&2
	@exit 2
