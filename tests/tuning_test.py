"""Choosing what the paper leaves open on validation data."""

import numpy as np

from mir_jax import data
from mir_jax import engine
from mir_jax import splits
from mir_jax import tuning


def test_validation_split_stays_inside_the_training_split():
  labels = np.repeat(np.arange(6), 10)
  train, test = splits.stratified_split(labels, 0.5, seed=0)
  fit, val = tuning.validation_split(labels, train, seed=0, val_fraction=0.2)
  assert set(fit) | set(val) == set(train)
  assert not set(fit) & set(val)
  assert not (set(fit) | set(val)) & set(test)
  assert np.all(np.bincount(labels[val], minlength=6) >= 1)


def test_choose_prefers_the_setting_that_fits_and_records_curves():
  ds = data.synthetic_identities(8, per_class=16, dim=16, seed=2, spread=2.0)
  seeds = [0, 1]
  train_idx = np.stack([splits.stratified_split(ds.labels, 0.5, s)[0] for s in seeds])
  grid = tuning.Grid(learning_rates=(1e-5, 3e-2), l2s=(0.0, 1e-3), max_steps=200, eval_every=50, tuning_seeds=2)
  opts = engine.StaticOptions(num_classes=8)
  choices = tuning.choose(ds.x, ds.labels, train_idx, opts, ['joint', 'single'], grid, seeds)
  for schedule, choice in choices.items():
    # lr 1e-5 cannot move a softmax head in 200 steps: validation accuracy must pick 3e-2.
    assert choice.learning_rate == 3e-2, (schedule, choice)
    assert choice.steps in (50, 100, 150, 200)
    assert choice.l2 in grid.l2s
    curves = choice.curve
    assert len(curves) == 4 and all(len(c) == 4 for c in curves.values())
    best = max(max(c) for c in curves.values())
    np.testing.assert_allclose(choice.val_accuracy, best, atol=1e-4)
