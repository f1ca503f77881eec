# make demo   : upscale the bundled image with the bundled model (installs into .venv on first use)
# make test   : run the test suite (CI runs this)
# make test-all: also the slow tests (training runs, large images)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch; an unpinned torch would pull gigabytes of CUDA packages.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: venv test test-all demo clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: venv
	mkdir -p outputs
	$(PY) demo.py --input assets/demo_lr.png --scale 4 --output outputs/demo_x4.png

clean:
	rm -rf $(VENV) .pytest_cache
