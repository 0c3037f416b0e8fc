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

# The main job: embed all of LFW with the offline dlib backbone (resumable; skipped when cached), LFW pair
# verification, then MIR / single-task heads on LFW identities with >= 10 images, paper-literal and tuned.
reproduce: env
	$(PY) -m mir_jax.embed --dataset=lfw --backbone=dlib-resnet
	$(PY) -m reproduce.lfw_verification --backbone=dlib-resnet
	$(PY) -m mir_jax.train --config=experiments/configs/lfw.py --workdir=runs/lfw_literal
	$(PY) -m mir_jax.train --config=experiments/configs/lfw_tuned.py --workdir=runs/lfw_tuned

clean-env:
	rm -rf $(VENV)
