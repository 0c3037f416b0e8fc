# Two commands do all the set-up (README): `make reproduce` (the main job) and `make test`.
# Both create the virtual environment from requirements*.txt when it is missing or stale.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: env test reproduce benchmarks clean-env

$(VENV)/.installed: requirements.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	# facenet-pytorch's metadata pins torch<2.3/numpy<2; it runs with ours (BUILD.md), hence --no-deps.
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $@

env: $(VENV)/.installed

test: env
	$(PY) -m pytest -q tests

clean-env:
	rm -rf $(VENV)
