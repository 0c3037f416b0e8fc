"""The JAX sharded distractor top-k against the numpy scan and the literal MegaFace protocol.

`check_against_numpy` runs here on the devices tests/conftest.py gives (one per core), and again in a
subprocess with 4 CPU devices: XLA_FLAGS is read once, when JAX starts.
"""

import os
import subprocess
import sys

from evaluators_test import _brute_force_megaface
import jax
import numpy as np
import pytest

from mir_jax.evaluators import identification
from mir_jax.evaluators import sharded_topk

# 131 distractors: with blocks of 5 rows on 2 or 4 devices, neither a whole number of blocks per device
# nor of calls, and the last call holds fewer blocks than the others.
NUM_DISTRACTORS = 131
BLOCK_ROWS = 5


def _data():
  rng = np.random.default_rng(0)
  d = 6
  labels = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 5])
  centres = rng.normal(size=(6, d))
  probes = centres[labels] + 0.5 * rng.normal(size=(labels.size, d))
  distractors = rng.normal(size=(NUM_DISTRACTORS, d))
  distractors[[40, 97]] = distractors[2]  # equal scores across blocks and devices: the top-k keeps each
  return probes, labels, distractors


def check_against_numpy(num_devices: int) -> None:
  assert len(jax.devices()) == num_devices, jax.devices()
  probes, labels, distractors = _data()
  unit = identification._l2_normalize(probes, np.float64, 'probes')  # pylint: disable=protected-access
  block_bytes = BLOCK_ROWS * len(probes) * 4
  for k in (1, 4):
    expected = identification.top_distractor_scores(unit, distractors, k)
    for bb in (block_bytes, identification.DEFAULT_BLOCK_BYTES):
      for per_call in (1, 3):
        got = sharded_topk.top_distractor_scores(unit, distractors, k, np.float32, bb, blocks_per_call=per_call)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
  # Fewer distractors than k: the rest is -inf, as in the numpy scan.
  got = sharded_topk.top_distractor_scores(unit, distractors[:3], 5, np.float32, block_bytes)
  np.testing.assert_allclose(got, identification.top_distractor_scores(unit, distractors[:3], 5), atol=1e-6)
  assert np.isinf(got[:, 3:]).all()

  cmc, trials, correct = _brute_force_megaface(probes, labels, distractors, 4)
  for bb in (block_bytes, identification.DEFAULT_BLOCK_BYTES):
    out = identification.megaface_rank1(probes, labels, distractors, max_rank=4, block_bytes=bb, backend='jax')
    assert out['num_trials'] == trials
    np.testing.assert_array_equal(out['correct'], correct)
    np.testing.assert_allclose(out['cmc'], cmc)
    assert 0 < out['rank1'] < 1  # neither trivial
  _check_ties()


def _check_ties():
  # evaluators_test's exact tie: every score is exact in float32 too, and a tie counts as correct.
  gallery, probe = np.array([1.0, 0.0, 0.0, 0.0]), np.array([0.5, 0.5, 0.5, 0.5])
  distractors = np.stack([gallery, np.array([0.0, -1.0, 0.0, 0.0])])
  out = identification.megaface_rank1(np.stack([gallery, probe]), [0, 0], distractors, max_rank=2, backend='jax')
  np.testing.assert_array_equal(out['correct'], [True, False])
  np.testing.assert_allclose(out['cmc'], [0.5, 1.0])


def test_equals_numpy_on_this_process_devices():
  check_against_numpy(len(jax.devices()))


def test_equals_numpy_on_four_devices():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4', JAX_PLATFORMS='cpu')
  code = 'import sys; sys.path.insert(0, sys.argv[1]); import sharded_topk_test as t; t.check_against_numpy(4)'
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  proc = subprocess.run(
    [sys.executable, '-c', code, tests_dir],
    env=env,
    cwd=os.path.dirname(tests_dir),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.parametrize('backend', ['numpy', 'jax'])
def test_bad_distractor_rows_are_counted_and_located(backend):
  probes, labels, distractors = _data()
  bad = distractors.copy()
  bad[[7, 50, 90]] = np.nan  # in different blocks
  bad[91, 2] = np.inf
  kw = dict(block_bytes=BLOCK_ROWS * len(probes) * 8, backend=backend)
  with pytest.raises(ValueError, match=r'distractor_features: 4 row\(s\) contain NaN or inf \(the first is row 7\)'):
    identification.megaface_rank1(probes, labels, bad, **kw)
  zero = distractors.copy()
  zero[[60, 61]] = 0
  with pytest.raises(ValueError, match=r'2 all-zero row\(s\) \(the first is row 60\)'):
    identification.megaface_rank1(probes, labels, zero, **kw)
  with pytest.raises(ValueError, match='dimension 5, expected 6'):
    identification.megaface_rank1(probes, labels, distractors[:, :5], **kw)


def test_rejects_what_it_cannot_compute():
  probes, _, distractors = _data()
  with pytest.raises(ValueError, match='of the same d'):
    sharded_topk.top_distractor_scores(probes, distractors[:, :5], 1)
  if not jax.config.jax_enable_x64:
    with pytest.raises(ValueError, match='jax_enable_x64'):
      sharded_topk.top_distractor_scores(probes, distractors, 1, np.float64)
  with pytest.raises(ValueError, match="backend must be 'numpy' or 'jax'"):
    identification.megaface_rank1(probes, np.zeros(len(probes)), distractors, backend='torch')
