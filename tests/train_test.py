"""The training entry point: config file + absl flags -> metrics JSON + orbax checkpoint."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.configs import test_tiny
from mir_jax import checkpoint
from mir_jax import embedding_sets
from mir_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def npz(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('data') / 'synthetic.npz')
  embedding_sets.save_npz(
    path, embedding_sets.synthetic_identities(num_classes=10, per_class=8, dim=128, seed=1, spread=2.0)
  )
  return path


def test_cli_trains_and_writes_metrics_and_checkpoint(npz, tmp_path):
  workdir = tmp_path / 'run'
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'mir_jax.train',
      '--config=experiments/configs/test_tiny.py',
      f'--config.data.source={npz}',
      '--config.train.seed=5',
      f'--workdir={workdir}',
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'test Ac' in proc.stdout
  metrics = json.loads((workdir / 'metrics.json').read_text())
  assert [(r['schedule'], r['seed']) for r in metrics['runs']] == [
    (s, seed) for s in ('joint', 'alternating', 'single') for seed in (5, 6)
  ]
  assert metrics['num_classes'] == 10 and metrics['dim'] == 128
  for run in metrics['runs']:
    assert run['loss_curve'][-1] < run['loss_curve'][0]
    assert run['test_accuracy'] > 0.3  # chance is 0.1

  # The checkpoint restores to the same predictions the metrics were computed from.
  full = embedding_sets.load(npz)
  logits = checkpoint.predict(str(workdir / 'checkpoint'), full.x)
  train_acc = np.mean(np.argmax(logits, -1) == full.labels[None], axis=1)
  reported = np.array(
    [
      (r['train_accuracy'] * metrics['num_train'] + r['test_accuracy'] * metrics['num_test']) / metrics['num_examples']
      for r in metrics['runs']
    ]
  )
  np.testing.assert_allclose(train_acc, reported, atol=1e-6)


def test_checkpoint_rejects_embeddings_of_another_dimension(npz, tmp_path):
  config = test_tiny.get_config()
  config.data.source = npz
  config.train.steps = 20
  train.train_and_evaluate(config, str(tmp_path))
  with pytest.raises(ValueError, match='trained on 128-D embeddings'):
    checkpoint.predict(str(tmp_path / 'checkpoint'), np.zeros((2, 512), np.float32))


def test_schedules_with_the_same_seed_share_a_split(npz):
  config = test_tiny.get_config()
  task = train.make_task(config, embedding_sets.load(npz))
  labels, names, seeds, train_idx, test_idx = task.labels, task.class_names, task.seeds, task.train_idx, task.test_idx
  assert seeds == [0, 1] and len(names) == 10
  assert not np.array_equal(train_idx[0], train_idx[1])  # another seed, another split
  for tr, te in zip(train_idx, test_idx):
    assert not set(tr) & set(te)
    assert set(labels[tr]) == set(labels[te]) == set(range(10))


def test_bad_sources_raise_clearly(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    embedding_sets.load(str(tmp_path / 'absent.npz'))
  bad = tmp_path / 'bad.npz'
  np.savez(bad, embeddings=np.zeros((3, 4)))
  with pytest.raises(ValueError, match=r"lacks array\(s\) \['labels', 'x'\]"):
    embedding_sets.load(str(bad))
  config = test_tiny.get_config()
  config.data.protocol = 'leave_one_out'
  with pytest.raises(ValueError, match='unknown data.protocol'):
    train.make_task(config, embedding_sets.synthetic_identities(3, 5, 8))


def test_tuning_chooses_on_validation_and_records_the_choice(npz):
  config = test_tiny.get_config()
  config.data.source = npz
  config.tune.enabled = True
  config.tune.learning_rates = (1e-5, 3e-2)
  config.tune.l2s = (0.0,)
  config.tune.first_steps = 25
  config.tune.max_steps = 200
  config.tune.max_extensions = 0
  metrics = train.train_and_evaluate(config)
  assert set(metrics['tuning']) == {'joint', 'alternating', 'single'}
  for run in metrics['runs']:
    chosen = metrics['tuning'][run['schedule']]
    assert run['learning_rate'] == chosen['learning_rate'] == 3e-2  # 1e-5 cannot fit in 200 steps
    assert run['steps'] == chosen['steps'] and run['steps'] in (25, 50, 100, 200)
