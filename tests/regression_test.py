"""CI regression of the reproduced accuracies: recompute Table II's numbers on each fixed offline configuration
(experiments/configs/regression.py: dlib-resnet; regression_facenet.py: facenet-casia) and compare them with its
committed baseline.

Needs the shared LFW images; each configuration's cache (dlib-resnet of the >= 10-image identities, facenet-casia
of the >= 20-image ones) is built on first use into the default cache directory and reused afterwards.
"""

import copy
import importlib
import json
import subprocess
import sys

import fixtures
import pytest

from experiments import paper_claims
from mir_jax import paths
from mir_jax.cache import lookup
from reproduce import regression

LFW_DIR = fixtures.lfw_images_dir()
needs_lfw = pytest.mark.skipif(LFW_DIR is None, reason=fixtures.MISSING_DATA_REASON)


@pytest.fixture(scope='module', params=regression.CONFIGS, ids=lambda path: path.rsplit('/', 1)[-1][:-3])
def config(request):
  return importlib.import_module(request.param[: -len('.py')].replace('/', '.')).get_config()


@pytest.fixture(scope='module')
def numbers(config):
  c = config.regression_cache
  try:
    lookup.find_cache('lfw', c.backbone, subset=c.subset)
  except Exception:  # pylint: disable=broad-except  (missing: build it, as the docstring says)
    argv = [sys.executable, *regression.embed_command(config)]
    proc = subprocess.run(argv, cwd=paths.repo_root(), capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
  return regression.compute(config)


@pytest.fixture(scope='module')
def baseline(config):
  with open(regression.baseline_path(config)) as f:
    return json.load(f)


@needs_lfw
def test_reproduced_accuracies_match_the_committed_baseline(config, numbers, baseline):
  assert regression.compare(baseline, numbers) == []
  # The baseline covers every schedule under every reading, for every seed of the configuration.
  assert all(k.startswith(paper_claims.row_label(config.regression_cache.backbone)) for k in numbers)
  assert len(numbers) == 3 * len(config.readings.split(','))
  assert all(len(v['values']) == config.train.num_seeds for v in numbers.values())


@needs_lfw
def test_a_moved_number_is_reported(numbers, baseline):
  moved = copy.deepcopy(baseline)
  key = sorted(moved['numbers'])[0]
  moved['numbers'][key]['values'][1] += 2 * moved['tolerance_pp']
  problems = regression.compare(moved, numbers)
  assert len(problems) == 1 and problems[0].startswith(f'{key}, seed {moved["numbers"][key]["seeds"][1]}')
  # A number within the tolerance is not.
  within = copy.deepcopy(baseline)
  within['numbers'][key]['values'][0] += 0.5 * within['tolerance_pp']
  assert regression.compare(within, numbers) == []
  # Numbers that appear or vanish are reported too.
  extra = copy.deepcopy(baseline)
  extra['numbers']['another row / LFW'] = extra['numbers'][key]
  assert any('not computed now' in p for p in regression.compare(extra, numbers))


def test_compare_needs_matching_seeds():
  base = {'tolerance_pp': 0.5, 'numbers': {'r / LFW': {'seeds': [0, 1], 'values': [90.0, 91.0]}}}
  now = {'r / LFW': {'seeds': [0, 2], 'values': [90.0, 91.0]}}
  assert 'seeds' in regression.compare(base, now)[0]
  assert regression.compare(base, {'r / LFW': {'seeds': [0, 1], 'values': [90.4, 90.6]}}) == []
