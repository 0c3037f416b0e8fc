"""The compiled training engine: learning, schedules, determinism, vmap equivalence, bad input."""

import dataclasses
import os

import jax
import numpy as np
import pytest

from mir_jax import embedding_sets
from mir_jax import engine
from mir_jax.evaluators import identification

NUM_CLASSES = 12


@pytest.fixture(scope='module')
def synthetic():
  # Overlapping clusters (spread 2.5 around unit-variance centres in 32-D): learnable, not trivial.
  return embedding_sets.synthetic_identities(NUM_CLASSES, per_class=20, dim=32, seed=0, spread=2.5)


def opts(**kw):
  base = dict(num_classes=NUM_CLASSES, steps=300, log_every=10)
  base.update(kw)
  return engine.StaticOptions(**base)


def leaves_equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def run_params(result, i):
  return jax.tree.map(lambda v: np.asarray(v[i]), result.params)


@pytest.mark.parametrize('schedule', engine.SCHEDULES)
def test_each_schedule_learns(synthetic, schedule):
  # Alternating trains each task half of the steps, so it gets twice as many.
  o = opts(steps=600 if schedule == 'alternating' else 300)
  runs = [engine.Run(schedule=schedule, learning_rate=1e-2)]
  result = engine.train(synthetic.x, synthetic.labels, o, runs)
  loss = np.asarray(result.history['ce'][0])
  assert loss[-1] < 0.5 * loss[0], loss
  acc = identification.classification_accuracy(
    engine.apply_runs(result, synthetic.x, runs, o).logits, synthetic.labels
  )[0]
  assert acc > 5.0 / NUM_CLASSES, acc  # chance is 1/12


def test_single_never_updates_the_commonality_branch(synthetic):
  runs = [engine.Run(schedule='single')]
  short = engine.train(synthetic.x, synthetic.labels, opts(steps=1, log_every=1), runs)
  long = engine.train(synthetic.x, synthetic.labels, opts(steps=40), runs)
  for group in ('hidden', 'commonality'):
    assert leaves_equal(short.params[group], long.params[group])
  assert not leaves_equal(short.params['classifier'], long.params['classifier'])
  assert np.all(np.isnan(long.history['bce']))  # its program never evaluates the branch


def test_alternating_freezes_the_task_it_does_not_train(synthetic):
  runs = [engine.Run(schedule='alternating', alternate_every=5)]
  after = {s: engine.train(synthetic.x, synthetic.labels, opts(steps=s, log_every=1), runs) for s in (1, 5, 10)}
  # Steps 0-4 train only the commonality task: the classifier stays at its initial value.
  assert leaves_equal(after[1].params['classifier'], after[5].params['classifier'])
  assert not leaves_equal(after[1].params['commonality'], after[5].params['commonality'])
  # Steps 5-9 train only the classifier: the commonality branch stays where step 4 left it.
  for group in ('hidden', 'commonality'):
    assert leaves_equal(after[5].params[group], after[10].params[group])
  assert not leaves_equal(after[5].params['classifier'], after[10].params['classifier'])


def test_joint_updates_both_tasks(synthetic):
  runs = [engine.Run(schedule='joint')]
  a = engine.train(synthetic.x, synthetic.labels, opts(steps=1, log_every=1), runs)
  b = engine.train(synthetic.x, synthetic.labels, opts(steps=5, log_every=1), runs)
  for group in ('hidden', 'commonality', 'classifier'):
    assert not leaves_equal(a.params[group], b.params[group])


def test_classification_gradient_reaches_commonality_only_in_joint(synthetic):
  # With lambda = 0 the commonality branch can only move through the classification loss.
  o = opts(steps=10, log_every=1)
  for schedule, moves in (('joint', True), ('alternating', False)):
    runs = [engine.Run(schedule=schedule, commonality_weight=0.0, l2=0.0, alternate_every=100)]
    a = engine.train(synthetic.x, synthetic.labels, opts(steps=1, log_every=1), runs)
    b = engine.train(synthetic.x, synthetic.labels, o, runs)
    assert leaves_equal(a.params['hidden'], b.params['hidden']) != moves, schedule


def test_same_seed_same_numbers_other_seed_other_numbers(synthetic):
  o = opts(steps=50)
  a = engine.train(synthetic.x, synthetic.labels, o, [engine.Run(seed=3)])
  b = engine.train(synthetic.x, synthetic.labels, o, [engine.Run(seed=3)])
  c = engine.train(synthetic.x, synthetic.labels, o, [engine.Run(seed=4)])
  assert leaves_equal(a.params, b.params)
  assert np.array_equal(a.history['loss'], b.history['loss'])
  assert not leaves_equal(a.params, c.params)


def test_vmapped_runs_equal_runs_trained_one_at_a_time(synthetic):
  o = opts(steps=100, batch_size=64)
  runs = [
    engine.Run(schedule=s, seed=i, learning_rate=lr) for s in engine.SCHEDULES for i, lr in ((0, 1e-3), (1, 3e-3))
  ]
  together = engine.train(synthetic.x, synthetic.labels, o, runs)
  for i, run in enumerate(runs):
    alone = engine.train(synthetic.x, synthetic.labels, o, [run])
    for x, y in zip(jax.tree.leaves(run_params(together, i)), jax.tree.leaves(run_params(alone, 0))):
      # Batched and unbatched matmuls may round differently in the last bits; nothing more.
      np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(together.history['loss'][i], alone.history['loss'][0], rtol=1e-4)


def test_per_run_training_subsets(synthetic):
  idx = np.stack([np.arange(0, 240, 2), np.arange(1, 240, 2)])
  runs = [engine.Run(seed=0), engine.Run(seed=0)]
  result = engine.train(synthetic.x, synthetic.labels, opts(steps=20, center=True), runs, idx)
  np.testing.assert_allclose(result.input_mean[0], synthetic.x[idx[0]].mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(result.input_mean[1], synthetic.x[idx[1]].mean(0), rtol=1e-5, atol=1e-6)
  assert not leaves_equal(run_params(result, 0), run_params(result, 1))


def test_l2_forms_agree_without_l2_and_differ_with_it(synthetic):
  def final(form, l2):
    o = opts(steps=30, l2_form=form)
    return engine.train(synthetic.x, synthetic.labels, o, [engine.Run(l2=l2)]).params

  def max_diff(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

  # Two compiled programs: equal up to float rounding without L2, far apart with it.
  assert max_diff(final('loss_half_sum', 0.0), final('decoupled', 0.0)) < 1e-5
  assert max_diff(final('loss_half_sum', 0.1), final('decoupled', 0.1)) > 1e-3


def test_unknown_choices_raise():
  with pytest.raises(ValueError, match='unknown schedule'):
    engine.Run(schedule='sequential')
  with pytest.raises(ValueError, match='unknown optimizer'):
    opts(optimizer='lbfgs')
  with pytest.raises(ValueError, match='unknown l2_form'):
    opts(l2_form='l1')


@pytest.mark.parametrize(
  'corrupt, message',
  [
    (lambda x, y: (np.where(np.arange(x.shape[0])[:, None] == 3, np.nan, x), y), 'NaN or inf'),
    (lambda x, y: (np.where(np.arange(x.shape[0])[:, None] == 3, np.inf, x), y), 'NaN or inf'),
    (lambda x, y: (x, np.where(y == 0, NUM_CLASSES, y)), r'labels must lie in \[0, 12\)'),
    (lambda x, y: (x, np.where(y == 0, -1, y)), r'labels must lie in \[0, 12\)'),
    (lambda x, y: (x[y != 5], y[y != 5]), 'have no training example'),
    (lambda x, y: (x, y.astype(np.float32)), 'labels must be integers'),
    (lambda x, y: (x[:, None], y), 'expected x of shape'),
  ],
)
def test_bad_training_data_raises_clearly(synthetic, corrupt, message):
  x, y = corrupt(synthetic.x, synthetic.labels)
  with pytest.raises(ValueError, match=message):
    engine.train(x, y, opts(steps=10), [engine.Run()])


def test_class_missing_from_one_runs_subset_raises(synthetic):
  every_class = np.flatnonzero(np.arange(240) % 6 != 0)  # 200 indices, all 12 classes
  without_2 = np.flatnonzero(synthetic.labels != 2)[np.arange(220) % 11 != 0]  # 200 indices
  idx = np.stack([every_class, without_2])
  with pytest.raises(ValueError, match=r'have no training example \(e.g. \[2\]\)'):
    engine.train(synthetic.x, synthetic.labels, opts(steps=10), [engine.Run(), engine.Run()], idx)


def test_apply_rejects_other_dimension(synthetic):
  o = opts(steps=10)
  result = engine.train(synthetic.x, synthetic.labels, o, [engine.Run()])
  with pytest.raises(ValueError, match='trained on dimension 32'):
    engine.apply_runs(result, np.zeros((3, 128), np.float32), [engine.Run()], o)


def test_eval_accuracy_history_matches_a_separately_trained_head(synthetic):
  train_idx = np.flatnonzero(np.arange(240) % 4 != 0)[None]
  eval_idx = np.flatnonzero(np.arange(240) % 4 == 0)[None]
  runs = [engine.Run(learning_rate=1e-2)]
  full = engine.train(synthetic.x, synthetic.labels, opts(steps=100, log_every=25), runs, train_idx, eval_idx)
  assert full.history['eval_accuracy'].shape == (1, 4)
  for block in (1, 4):  # the accuracy logged after `block` blocks = that of a head trained that long
    short = engine.train(synthetic.x, synthetic.labels, opts(steps=25 * block, log_every=25), runs, train_idx)
    logits = engine.apply_runs(short, synthetic.x[eval_idx[0]], runs, opts()).logits
    expected = identification.classification_accuracy(logits, synthetic.labels[eval_idx[0]])[0]
    np.testing.assert_allclose(full.history['eval_accuracy'][0, block - 1], expected, atol=1e-6)


def test_a_run_with_its_own_step_budget_equals_a_run_trained_that_long(synthetic):
  runs = [engine.Run(schedule=s, steps=30) for s in engine.SCHEDULES] + [engine.Run(steps=0)]
  together = engine.train(synthetic.x, synthetic.labels, opts(steps=60, log_every=10), runs)
  for i, run in enumerate(runs[:3]):
    alone = engine.train(
      synthetic.x, synthetic.labels, opts(steps=30, log_every=10), [engine.Run(schedule=run.schedule)]
    )
    for a, b in zip(jax.tree.leaves(run_params(together, i)), jax.tree.leaves(run_params(alone, 0))):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  full = engine.train(synthetic.x, synthetic.labels, opts(steps=60, log_every=10), [engine.Run()])
  assert not leaves_equal(run_params(together, 0), run_params(full, 0))
  with pytest.raises(ValueError, match='asks for 90 steps'):
    engine.train(synthetic.x, synthetic.labels, opts(steps=60), [engine.Run(steps=90)])


def test_warmup_cosine_rate_rises_then_decays_to_zero_at_each_runs_own_budget():
  o = opts(lr_schedule='warmup_cosine', warmup_fraction=0.1, steps=200)
  runs = engine.run_arrays([engine.Run(learning_rate=0.5, steps=100)])
  run = jax.tree.map(lambda a: a[0], runs)
  lr = np.array([float(engine.learning_rate_at(jax.numpy.int32(t), jax.numpy.int32(100), run, o)) for t in range(100)])
  np.testing.assert_allclose(lr[:10], 0.5 * np.arange(1, 11) / 10, rtol=1e-6)  # warm-up: 10 steps to the peak
  np.testing.assert_allclose(lr[10], 0.5, rtol=1e-6)
  assert np.all(np.diff(lr[10:]) < 0) and lr[-1] < 1e-3  # cosine down to (almost) 0 at step 100
  const = float(engine.learning_rate_at(jax.numpy.int32(57), jax.numpy.int32(100), run, opts()))
  assert const == pytest.approx(0.5)


def test_train_step_alone_is_the_engines_update(synthetic):
  # One full-batch update through the top-level train_step equals a one-step engine run.
  o = opts(steps=1, log_every=1)
  run = engine.Run(schedule='joint', seed=5, learning_rate=1e-2)
  trained = engine.train(synthetic.x, synthetic.labels, o, [run])
  ra = jax.tree.map(lambda a: a[0], engine.run_arrays([run]))
  init_key, _ = jax.random.split(jax.random.wrap_key_data(ra.key))
  from mir_jax import model as model_lib  # pylint: disable=g-import-not-at-top

  params = model_lib.init_params(init_key, o.model(), synthetic.x.shape[1])
  tx = engine._direction(o.optimizer)  # pylint: disable=protected-access
  state = engine.TrainState(params, {g: tx.init({k: params[k] for k in names}) for g, names in engine.GROUPS.items()})
  state, losses = engine.train_step(
    state,
    jax.numpy.asarray(synthetic.x),
    jax.numpy.asarray(synthetic.labels),
    jax.numpy.int32(0),
    jax.numpy.int32(1),
    ra,
    o,
    engine.program_of(run),
  )
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(run_params(trained, 0))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(losses[0], trained.history['loss'][0, 0], rtol=1e-5)


def test_runs_are_sharded_over_every_local_device(synthetic):
  # tests/conftest.py makes each CPU core a device, as the entry points do; an odd number of runs is padded.
  if len(os.sched_getaffinity(0)) < 2:
    pytest.skip('one CPU core: nothing to shard over')
  assert len(jax.local_devices()) >= 2
  runs = [engine.Run(seed=i) for i in range(3)]
  result = engine.train(synthetic.x, synthetic.labels, opts(steps=10), runs)
  assert result.history['loss'].shape == (3, 1)
  assert jax.tree.leaves(result.params)[0].shape[0] == 3


def _matmul_flops(jaxpr):
  """2 x multiply-adds of every dot_general in a jaxpr, its sub-jaxprs included (each cond branch once)."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'dot_general':
      (contract, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * int(np.prod([lhs[i] for i in contract]))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else [param]:
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          total += _matmul_flops(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          total += _matmul_flops(sub)
  return total


@pytest.mark.parametrize('schedule', engine.SCHEDULES)
@pytest.mark.parametrize('variant', [dict(), dict(commonality_dim=32), dict(subtract_from='hidden')])
def test_flop_count_is_that_of_the_program_each_schedule_runs(synthetic, schedule, variant):
  # The single-task program has no branch, an alternating step computes one task, and the scalar-y head
  # routes the gradient into y around the (n, K) x (K, d) product: the count states exactly that.
  o = opts(steps=2, log_every=1, batch_size=0, **variant)
  run = engine.Run(schedule=schedule)
  ra = jax.tree.map(lambda a: a[0], engine.run_arrays([run]))
  params = engine.model_lib.init_params(jax.random.key(0), o.model(), synthetic.x.shape[1])
  tx = engine._direction(o.optimizer)  # pylint: disable=protected-access
  state = engine.TrainState(params, {g: tx.init({k: params[k] for k in names}) for g, names in engine.GROUPS.items()})
  step = lambda s: engine.train_step(
    s,
    jax.numpy.asarray(synthetic.x),
    jax.numpy.asarray(synthetic.labels),
    jax.numpy.int32(0),
    jax.numpy.int32(2),
    ra,
    o,
    engine.program_of(run),
  )
  jaxpr = jax.make_jaxpr(step)(state).jaxpr
  # What XLA runs: dead code removed first (a phase's unused forward, e.g. the logits of a commonality
  # step, is traced but never computed). JAX's own pass; it has no public name.
  from jax._src.interpreters import partial_eval as pe  # pylint: disable=g-import-not-at-top

  counted = _matmul_flops(pe.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))[0])
  # One step of joint or single; an alternating step's jaxpr holds both phases (the cond's two branches).
  expected = engine.flops_per_run(o, synthetic.x.shape[1], len(synthetic.labels), dataclasses.replace(run, steps=2))
  assert counted == (expected if schedule == 'alternating' else expected // 2)


def test_compiled_programs_stay_bounded(synthetic, monkeypatch):
  # Each program holds ~322 memory maps (benchmarks/compiled_maps.py); without a bound, a process that
  # tunes many heads passes the kernel's per-process limit and LLVM aborts it.
  monkeypatch.setattr(engine, 'MAX_COMPILED_PROGRAMS', 2)
  runs = [engine.Run(schedule='single', learning_rate=1e-2)]
  sizes = []
  for blocks in (3, 4, 5, 6):  # a history of another length is another program
    engine.train(synthetic.x, synthetic.labels, opts(steps=blocks, log_every=1), runs)
    sizes.append(engine._train_compiled._cache_size())  # pylint: disable=protected-access
  assert max(sizes) <= 2 and sizes[-1] >= 1, sizes


def test_budgets_share_one_compiled_program(synthetic):
  # Tuning trains budgets B, 2B, 4B, ... with one history block each: one program, not one per budget.
  engine._train_compiled.clear_cache()  # pylint: disable=protected-access
  runs = [engine.Run(schedule='joint', learning_rate=1e-2)]
  trained = {s: engine.train(synthetic.x, synthetic.labels, opts(steps=s, log_every=s), runs) for s in (5, 10, 20)}
  assert engine._train_compiled._cache_size() == 1  # pylint: disable=protected-access
  # Each budget is trained for its own steps: 10 steps are 5 steps and 5 more, not 5 steps again.
  assert not leaves_equal(trained[5].params, trained[10].params)
  # And as long as a call that trains 10 steps with a 10-step history, up to the history's resolution.
  blocks = engine.train(synthetic.x, synthetic.labels, opts(steps=10, log_every=1), runs)
  assert leaves_equal(blocks.params, trained[10].params)
  np.testing.assert_allclose(blocks.history['loss'].mean(), trained[10].history['loss'][0, 0], rtol=1e-5)
