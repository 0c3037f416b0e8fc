"""Training heads under a named reading; stored tuning choices and their context."""

import dataclasses

import numpy as np
import pytest

from mir_jax import choice_store
from mir_jax import embedding_sets
from mir_jax import engine
from mir_jax import protocols
from mir_jax import readings
from mir_jax import runner
from mir_jax import tuning


@pytest.fixture(scope='module')
def task():
  ds = embedding_sets.synthetic_identities(num_classes=6, per_class=10, dim=16, seed=3, spread=1.5)
  return protocols.lfw_identity(ds, seeds=[0, 1], min_images=10)


def test_readings():
  lit = readings.literal_reading(steps=300, learning_rate=1e-3, l2=1e-3)
  assert lit.name == 'paper-literal'
  assert {s: (v.learning_rate, v.l2, v.steps) for s, v in lit.settings.items()} == {
    s: (1e-3, 1e-3, 300) for s in engine.SCHEDULES
  }
  choice = tuning.Choice('joint', 0.03, 1e-4, 200, 0.9, {})
  tuned = readings.tuned_reading({'joint': choice}, 'x.json', 'warmup_cosine')
  assert tuned.setting('joint') == readings.Setting(0.03, 1e-4, 200)
  assert tuned.lr_schedule == 'warmup_cosine' and lit.lr_schedule == 'constant'
  assert tuned.converged == {'joint': True} and lit.converged == {}  # the literal one was not checked
  with pytest.raises(KeyError, match="no setting for schedule 'single'"):
    tuned.setting('single')


def test_train_classification_reports_per_schedule_and_seed(task):
  opts = engine.StaticOptions(num_classes=len(task.class_names))
  reading = readings.Reading('r', {'joint': readings.Setting(3e-2, 0.0, 60), 'single': readings.Setting(3e-2, 0.0, 40)})
  runs = runner.train_heads(task, ['joint', 'single'], reading, opts)
  assert [(r.schedule, r.seed, r.steps) for r in runs.runs] == [
    ('joint', 0, 60),
    ('joint', 1, 60),
    ('single', 0, 40),
    ('single', 1, 40),
  ]
  assert runs.opts.steps == 60
  for s in ('joint', 'single'):
    assert runs.accuracy[s].shape == (2,) and runs.correct[s].shape == (2, task.test_idx.shape[1])
    np.testing.assert_allclose(runs.accuracy[s], 100 * runs.correct[s].mean(axis=1))
    assert (runs.accuracy[s] > 100 / len(task.class_names)).all()  # better than chance
  # Per-example correctness is that of the trained heads on each seed's own test split.
  out = engine.apply_runs(runs.result, task.x, runs.runs, runs.opts)
  pred = np.argmax(np.asarray(out.logits[0]), axis=-1)
  np.testing.assert_array_equal(runs.correct['joint'][0], (pred == task.labels)[task.test_idx[0]])


def test_character_features(task):
  opts = engine.StaticOptions(num_classes=len(task.class_names))
  reading = readings.literal_reading(steps=20, learning_rate=1e-3, l2=1e-3)
  runs = runner.train_heads(task, ['joint', 'single'], reading, opts)
  single = runner.character_features(runs, 'single', task.x)
  np.testing.assert_allclose(single, np.broadcast_to(task.x, single.shape), atol=1e-6)  # single-task: c = x
  joint = runner.character_features(runs, 'joint', task.x)
  out = engine.apply_runs(runs.result, task.x, runs.runs, runs.opts)
  np.testing.assert_allclose(joint, np.asarray(out.character[:2]), atol=1e-6)
  # c = x - y with a scalar y per face: every coordinate moves by the same amount.
  shift = task.x[None] - joint
  np.testing.assert_allclose(shift, np.broadcast_to(shift[..., :1], shift.shape), atol=1e-5)
  with pytest.raises(KeyError):
    runner.character_features(runs, 'alternating', task.x)


def test_stored_choices_roundtrip_and_context(tmp_path):
  choices = {
    'joint': tuning.Choice(
      'joint',
      0.1,
      0.0,
      300,
      0.97,
      {'(0.1, 0)': {'150': 0.5, '300': 0.97}},
      False,
      0.01,
      ('learning rate 0.3 added above 0.1',),
      'the largest L2',
    )
  }
  path = str(tmp_path / 'sub' / 'c.json')
  context = {'data': 'lfw', 'grid': {'lr': (0.1, 0.3)}}
  choice_store.save(path, choices, context)
  assert choice_store.load(path, context) == choices
  assert choice_store.load(path, {**context, 'data': 'ytf'}) is None  # made in another context
  assert choice_store.load(str(tmp_path / 'absent.json'), context) is None
  assert dataclasses.asdict(choice_store.load(path, context)['joint'])['steps'] == 300
  # A file of another kind (a check of a fixed setting, or a choice from before the rule) is not read as one.
  assert choice_store.load(path, context, tuning.Check) is None


def test_train_classification_records_final_training_loss_and_accuracy(task):
  opts = engine.StaticOptions(num_classes=len(task.class_names))
  short = runner.train_heads(task, ['single'], readings.literal_reading(steps=5, learning_rate=1e-3, l2=1e-3), opts)
  long = runner.train_heads(task, ['single'], readings.Reading('r', {'single': readings.Setting(3e-2, 0.0, 300)}), opts)
  assert short.train_loss['single'].shape == (2,) and short.train_accuracy['single'].shape == (2,)
  assert (long.train_loss['single'] < 0.5 * short.train_loss['single']).all()
  assert (long.train_accuracy['single'] > short.train_accuracy['single']).all()
  # A single-task update: the softmax layer forward and its weight gradient, 2 x (b d K) multiply-adds.
  b = min(long.opts.batch_size or task.train_idx.shape[1], task.train_idx.shape[1])
  assert long.flops == 2 * 300 * 2 * (2 * b * task.x.shape[1] * len(task.class_names))
