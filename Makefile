# Two commands do all the set-up (README): `make reproduce` (the main job) and `make test`.
# Both create the virtual environment from requirements*.txt when it is missing or stale.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: env lint format test reproduce baseline benchmarks clean-env

$(VENV)/.installed: requirements.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	# facenet-pytorch's metadata pins torch<2.3/numpy<2; it runs with ours (BUILD.md), hence --no-deps.
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $@

env: $(VENV)/.installed

# Style first, in seconds (pyproject.toml configures ruff): a lint error fails `make test`, hence CI, before
# any test runs. `make format` fixes what the formatter and the import sorter can.
# Lint needs only ruff (its pin is requirements.txt's), so on a fresh clone it runs before the full install.
$(VENV)/bin/ruff: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $$(grep -E '^ruff==' requirements.txt | cut -d' ' -f1)
	touch $@

lint: $(VENV)/bin/ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/bin/ruff
	$(VENV)/bin/ruff check --fix --select I .
	$(VENV)/bin/ruff format .

# The 25 slowest tests are listed at the end, to keep CI's time in sight (under 30 minutes is the aim). Two
# workers (pytest-xdist): compiling, the suite's slowest part, keeps one core per process busy; tests/conftest.py
# keeps each module, and the tests that share the synthetic `reproduce.all` run, on one worker.
test: lint env
	$(PY) -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder --durations=25 tests

# The main job: embed all of LFW with the two offline backbones, dlib's ResNet and Sandberg's CASIA-WebFace FaceNet
# (resumable; skipped when cached; FaceNet with the mirrored faces too, for his flip-concatenated verification), LFW
# pair verification of each (FaceNet as Sandberg validated it, BUILD.md), then every table and figure (Table I,
# Table II, ablations, Figs. 2-3) into outputs/reproduce, and last the report page over all of it (its path printed).
reproduce: env
	$(PY) -m mir_jax.embed --dataset=lfw --backbone=dlib-resnet
	$(PY) -m mir_jax.embed --dataset=lfw --backbone=facenet-casia --flip
	$(PY) -m reproduce.lfw_verification --backbone=dlib-resnet
	$(PY) -m reproduce.lfw_verification --backbone=facenet-casia --flip --flip_combine=concat --metric=angular --subtract_mean
	$(PY) -m reproduce.all
	$(PY) -m reproduce.report

# Recompute the CI regression baselines (experiments/baselines/, one per reproduce.regression.CONFIGS) after an
# intended change of results.
baseline: env
	$(PY) -m mir_jax.embed --dataset=lfw --backbone=dlib-resnet --subset=min_images10
	$(PY) -m mir_jax.embed --dataset=lfw --backbone=facenet-casia --subset=min_images20
	$(PY) -m reproduce.regression --write
	$(PY) -m reproduce.regression --write --config=experiments/configs/regression_facenet.py

clean-env:
	rm -rf $(VENV)
