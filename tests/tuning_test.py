"""Choosing what the paper leaves open on validation data, and the convergence rule behind every choice."""

import dataclasses
import json
import types

import numpy as np
import pytest

from experiments.configs import default
from mir_jax import embedding_sets
from mir_jax import engine
from mir_jax import options
from mir_jax import splits
from mir_jax import tuning


def _grid(**changes) -> tuning.Grid:
  """The default grid (experiments/configs/default.py) with `changes`."""
  return dataclasses.replace(options.grid(default.get_config().tune, 'adam'), **changes)


def test_validation_split_stays_inside_the_training_split():
  labels = np.repeat(np.arange(6), 10)
  train, test = splits.stratified_split(labels, 0.5, seed=0)
  fit, val = tuning.validation_split(labels, train, seed=0, val_fraction=0.2)
  assert set(fit) | set(val) == set(train)
  assert not set(fit) & set(val)
  assert not (set(fit) | set(val)) & set(test)
  assert np.all(np.bincount(labels[val], minlength=6) >= 1)


def _split(ds, seeds=(0, 1)):
  return np.stack([splits.stratified_split(ds.labels, 0.5, s)[0] for s in seeds]), list(seeds)


def test_choose_prefers_the_setting_that_fits_and_records_curves():
  ds = embedding_sets.synthetic_identities(8, per_class=16, dim=16, seed=2, spread=2.0)
  train_idx, seeds = _split(ds)
  grid = _grid(
    learning_rates=(1e-5, 3e-2), l2s=(0.0, 1e-3), first_steps=50, max_steps=400, max_extensions=0, tuning_seeds=2
  )
  choices = tuning.choose(
    ds.x, ds.labels, train_idx, engine.StaticOptions(num_classes=8), ['joint', 'single'], grid, seeds
  )
  for schedule, choice in choices.items():
    # lr 1e-5 cannot move a softmax head in 400 steps: validation accuracy must pick 3e-2.
    assert choice.learning_rate == 3e-2, (schedule, choice)
    assert choice.steps in grid.budgets() and choice.l2 in grid.l2s
    assert set(choice.curve) == {'(1e-05, 0)', '(1e-05, 0.001)', '(0.03, 0)', '(0.03, 0.001)'}
    best = max(max(c.values()) for c in choice.curve.values())
    np.testing.assert_allclose(choice.val_accuracy, best, atol=1e-4)
    # The record says which budgets verified it: the chosen steps, twice and four times them were trained.
    curve = choice.curve[f'({choice.learning_rate:g}, {choice.l2:g})']
    if choice.converged:
      for later in (2 * choice.steps, 4 * choice.steps):
        assert abs(curve[str(later)] - curve[str(choice.steps)]) <= grid.tolerance + 1e-4


# Identities behind a large offset shared by every face (the "commonality"): after L2 normalisation they
# differ by little, so the MIR head (whose character x - y*1 adds a shift of its own) needs over a thousand
# updates at this learning rate, while a few hundred would look like a finished run to a fixed cap.
def _slow_task():
  ds = embedding_sets.synthetic_identities(10, per_class=40, dim=32, seed=0, spread=1.5, shared_offset=3.0)
  return ds, *_split(ds)


@pytest.mark.parametrize('max_steps, converged', [(400, False), (12800, True)])
def test_the_rule_rejects_a_fixed_cap_that_stops_a_head_while_it_learns(max_steps, converged):
  ds, train_idx, seeds = _slow_task()
  grid = _grid(
    learning_rates=(3e-3,), l2s=(0.0,), first_steps=50, max_steps=max_steps, tolerance=0.02, max_extensions=0
  )
  opts = engine.StaticOptions(num_classes=10, batch_size=64, lr_schedule='warmup_cosine')
  choice = tuning.choose(ds.x, ds.labels, train_idx, opts, ['joint'], grid, seeds)['joint']
  assert choice.converged is converged, choice
  if converged:
    assert choice.steps > 400  # the cap of the other case stopped it while it was still learning
    assert abs(choice.gain_when_doubled) <= grid.tolerance
  # The same verdict from `check`, the rule applied to a fixed setting (the paper-literal reading's way).
  fixed = tuning.check(ds.x, ds.labels, train_idx, opts, ['joint'], 3e-3, 0.0, 200, grid, seeds)['joint']
  assert not fixed.converged and max(fixed.later.values()) - fixed.val_accuracy > grid.tolerance


def test_a_choice_on_the_edge_of_the_learning_rate_grid_extends_it():
  # 128 validation faces: fewer, and one face (3 points on 32) can hold a rate too slow to learn still
  # for two doublings.
  ds = embedding_sets.synthetic_identities(8, per_class=64, dim=16, seed=2, spread=2.0)
  train_idx, seeds = _split(ds)
  grid = _grid(learning_rates=(1e-4, 3e-4), l2s=(0.0,), first_steps=50, max_steps=400, max_extensions=2)
  choice = tuning.choose(ds.x, ds.labels, train_idx, engine.StaticOptions(num_classes=8), ['single'], grid, seeds)[
    'single'
  ]
  # 3e-4 is far too small for 400 steps, so the largest rate wins and the grid grows above it, by its own
  # ratio (3x), until the choice is inside or the extensions are spent; the record says which.
  assert choice.extended[0] == 'learning rate 0.0009 added above 0.0003'
  assert choice.learning_rate > 3e-4
  grown = sorted(float(k.strip('()').split(',')[0]) for k in choice.curve)
  assert grown[:2] == [1e-4, 3e-4]
  assert len(grown) == 2 + sum(e.startswith('learning rate') for e in choice.extended)
  assert (choice.edge == 'the largest learning rate') == (choice.learning_rate == grown[-1])


def test_a_head_stuck_on_the_largest_identity_has_not_converged():
  # Every face labelled 0 except a few: answering "0" is 90% accurate on validation and doubling changes
  # nothing, yet nothing was learned. The rule asks for more than the largest identity's share.
  rng = np.random.default_rng(0)
  labels = np.where(rng.random(400) < 0.9, 0, rng.integers(1, 4, 400)).astype(np.int32)
  labels[:12] = np.repeat(np.arange(4), 3)
  x = rng.normal(size=(400, 8)).astype(np.float32)  # no signal at all
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  train_idx = np.stack([splits.stratified_split(labels, 0.5, s)[0] for s in (0, 1)])
  grid = _grid(learning_rates=(1e-2,), l2s=(0.0,), first_steps=50, max_steps=200, max_extensions=0)
  choice = tuning.choose(x, labels, train_idx, engine.StaticOptions(num_classes=4), ['single'], grid, [0, 1])
  assert not choice['single'].converged


def test_grid_budgets_double_up_to_the_maximum():
  assert _grid(first_steps=250, max_steps=4000).budgets() == [250, 500, 1000, 2000, 4000]
  assert _grid(first_steps=300, max_steps=1000).budgets() == [300, 600]
  with pytest.raises(ValueError, match='first_steps'):
    _grid(first_steps=500, max_steps=100)


@pytest.mark.parametrize('prefer_converged', [True, False])
def test_a_point_still_climbing_at_the_maximum_is_not_chosen_over_one_that_converged(prefer_converged):
  # lr 0.1 is still gaining at the 3,200-step maximum; lr 0.3 met the rule at 400 steps, 2 points lower.
  grid = _grid(
    learning_rates=(0.1, 0.3), l2s=(0.0,), first_steps=400, max_steps=3200, prefer_converged=prefer_converged
  )
  acc = {
    ('joint', 0.1, 0.0, 400): 0.80,
    ('joint', 0.1, 0.0, 800): 0.85,
    ('joint', 0.1, 0.0, 1600): 0.88,
    ('joint', 0.1, 0.0, 3200): 0.90,
    ('joint', 0.3, 0.0, 400): 0.88,
    ('joint', 0.3, 0.0, 800): 0.878,
  }
  climbed = {('joint', 0.1, 0.0): (3200, False), ('joint', 0.3, 0.0): (400, True)}
  v = types.SimpleNamespace(acc=acc, grid=grid)
  choice = tuning._best(v, 'joint', [0.1, 0.3], [0.0], climbed, [])  # pylint: disable=protected-access
  if prefer_converged:
    assert (choice.learning_rate, choice.steps, choice.converged) == (0.3, 400, True)
    assert choice.better_unconverged == {'learning_rate': 0.1, 'l2': 0.0, 'steps': 3200, 'val_accuracy': 0.90}
  else:
    assert (choice.learning_rate, choice.steps, choice.converged) == (0.1, 3200, False)
    assert choice.better_unconverged is None


@pytest.mark.parametrize(
  'curve, converged',
  [
    ({250: 0.59, 500: 0.594, 1000: 0.66, 2000: 0.99, 4000: 0.992, 8000: 0.99}, (2000, True)),  # a pause first
    ({250: 0.98, 500: 0.993, 1000: 0.967, 2000: 0.97, 4000: 0.96, 8000: 0.97}, (8000, False)),  # a lucky budget
  ],
)
def test_the_rule_needs_two_doublings_in_both_directions(curve, converged):
  # A pause (0.59 -> 0.594) passes one doubling; a drop (0.993 -> 0.967) passes a one-sided rule.
  grid = _grid(learning_rates=(0.1,), l2s=(0.0,), first_steps=250, max_steps=8000, prune_margin=1.0)
  v = types.SimpleNamespace(acc={('joint', 0.1, 0.0, b): a for b, a in curve.items()}, grid=grid)
  v.floor = lambda schedule: 0.1
  v.holds = lambda p, s: tuning._Validator.holds(v, p, s)  # pylint: disable=protected-access
  v.later = lambda p, s: tuning._Validator.later(v, p, s)  # pylint: disable=protected-access
  v.best = lambda schedule, steps: max(a for k, a in v.acc.items() if k[3] <= steps)
  v.evaluate = lambda points: None  # every budget is already "trained"
  assert tuning._climb_all(v, [('joint', 0.1, 0.0)], grid.max_steps) == {('joint', 0.1, 0.0): converged}  # pylint: disable=protected-access


def _choose_on_fake_curves(monkeypatch, accuracy, grid):
  """`tuning.choose` for one joint schedule where each (schedule, lr, l2, steps) point's validation
  accuracy is `accuracy(point)` instead of a trained head's, and the floor is 0.1."""

  def evaluate(self, points):
    for p in points:
      self.acc.setdefault(p, accuracy(*p))

  monkeypatch.setattr(tuning._Validator, 'evaluate', evaluate)  # pylint: disable=protected-access
  monkeypatch.setattr(tuning._Validator, 'floor', lambda self, schedule: 0.1)  # pylint: disable=protected-access
  labels = np.repeat(np.arange(4), 10)
  return tuning.choose(
    np.zeros((40, 4), np.float32),
    labels,
    np.stack([np.arange(40)] * 2),
    engine.StaticOptions(num_classes=4),
    ['joint'],
    grid,
    [0, 1],
  )['joint']


def _drifting(schedule, lr, l2, steps):
  del schedule, lr, l2
  return 0.5 + 0.4 * np.log2(steps) / 15  # still gaining ~2.7 points per doubling


def _fake_accuracy(schedule, lr, l2, steps):
  """Validation accuracy of a head that keeps drifting without L2, settles far from fitting under L2
  1e-5, and settles close to L2 0's accuracy under 1e-6; the grid's L2 1e-4 holds it at the floor (the
  LFW-distractors head's pattern)."""
  if l2 == 0.0:
    return _drifting(schedule, lr, l2, steps)
  if l2 >= 1e-4:
    return 0.1  # no better than the floor
  if l2 >= 1e-5:
    return 0.5
  return 0.85 if steps >= 500 else 0.6


@pytest.mark.parametrize(
  'l2s, chosen_l2, extended',
  [
    (
      (0.0, 1e-4),
      1e-6,
      (
        'L2 1e-05 added below 0.0001: no point met the rule',
        'L2 1e-06 added below 1e-05: a weaker L2 scored higher without meeting it',
      ),
    ),
    ((0.0,), 0.0, ()),  # no non-zero L2 to go below: the choice is reported as not converged
  ],
)
def test_a_grid_where_no_point_converges_gains_a_weaker_l2(monkeypatch, l2s, chosen_l2, extended):
  grid = _grid(learning_rates=(0.01,), l2s=l2s, first_steps=250, max_steps=8000, max_extensions=3)
  choice = _choose_on_fake_curves(monkeypatch, _fake_accuracy, grid)
  assert choice.l2 == chosen_l2
  assert choice.converged == bool(extended)
  assert tuple(e for e in choice.extended if 'L2' in e) == extended


def test_weaker_l2s_are_added_at_most_max_extensions_times(monkeypatch):
  # Nothing ever settles: each extension is one more chance for noise to pass the rule, so they are capped.
  grid = _grid(learning_rates=(0.01, 0.03, 0.1), l2s=(0.0, 1e-4), first_steps=250, max_steps=4000, max_extensions=2)
  choice = _choose_on_fake_curves(monkeypatch, _drifting, grid)
  assert not choice.converged
  assert [e.split(':')[0] for e in choice.extended if e.startswith('L2') and ' below ' in e] == [
    'L2 1e-05 added below 0.0001',
    'L2 1e-06 added below 1e-05',
  ]


def test_a_choice_still_moving_at_the_maximum_budget_trains_on(monkeypatch):
  # Settles only after 4,000 steps; the maximum is 2,000, so the budget doubles until the rule can confirm it.
  grid = _grid(learning_rates=(0.01, 0.03, 0.1), l2s=(0.0,), first_steps=250, max_steps=2000, max_extensions=3)
  choice = _choose_on_fake_curves(
    monkeypatch, lambda s, lr, l2, steps: 0.9 if steps >= 4000 else 0.3 + 0.1 * np.log2(steps / 250), grid
  )
  assert (choice.steps, choice.converged) == (4000, True)
  assert [e.split(':')[0] for e in choice.extended if e.startswith('budget')] == [
    'budget 4000 added above 2000',
    'budget 8000 added above 4000',
    'budget 16000 added above 8000',
  ]


def test_a_tuning_resumed_from_its_progress_file_trains_only_what_it_lacks(tmp_path, monkeypatch):
  ds = embedding_sets.synthetic_identities(8, per_class=16, dim=16, seed=2, spread=2.0)
  train_idx, seeds = _split(ds)
  grid = _grid(
    learning_rates=(1e-5, 3e-2), l2s=(0.0, 1e-3), first_steps=50, max_steps=400, max_extensions=0, tuning_seeds=2
  )
  opts = engine.StaticOptions(num_classes=8)
  progress = str(tmp_path / 'choice.progress.json')
  trained = []
  real_train = engine.train

  def counting_train(x, labels, o, runs, *args, **kwargs):
    trained.extend((r.schedule, r.learning_rate, r.l2, o.steps) for r in runs)
    return real_train(x, labels, o, runs, *args, **kwargs)

  monkeypatch.setattr(engine, 'train', counting_train)
  whole = tuning.choose(ds.x, ds.labels, train_idx, opts, ['joint'], grid, seeds, progress=progress)
  assert trained
  with open(progress) as f:
    stored = json.load(f)
  # Every trained point is on file, with the untrained heads' floor.
  assert {tuple(k) for k, _ in stored['acc']} == {p for p in trained if p[1] > 0}
  assert set(stored['untrained']) == {'joint'}

  # A tuning killed half-way: its file holds the first points only; the rerun trains just the others.
  kept = stored['acc'][: len(stored['acc']) // 2]
  with open(progress, 'w') as f:
    json.dump({'acc': kept, 'untrained': stored['untrained']}, f)
  trained.clear()
  resumed = tuning.choose(ds.x, ds.labels, train_idx, opts, ['joint'], grid, seeds, progress=progress)
  assert trained and not {tuple(k) for k, _ in kept} & {p for p in trained}
  assert {p for p in trained} == {tuple(k) for k, _ in stored['acc']} - {tuple(k) for k, _ in kept}
  assert (resumed['joint'].learning_rate, resumed['joint'].l2, resumed['joint'].steps) == (
    whole['joint'].learning_rate,
    whole['joint'].l2,
    whole['joint'].steps,
  )

  # With every point on file, nothing trains at all.
  trained.clear()
  again = tuning.choose(ds.x, ds.labels, train_idx, opts, ['joint'], grid, seeds, progress=progress)
  assert not trained and again['joint'].curve == resumed['joint'].curve
