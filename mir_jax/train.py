r"""Trains MIR heads on a classification task under a training reading: the one way heads are trained.

  python -m mir_jax.train --config=experiments/configs/default.py \
      --config.data.source=embeddings.npz --config.train.schedules=joint,single --config.train.num_seeds=10 \
      --workdir=runs/example

`train_heads` trains every (schedule, seed) of a `protocols.Classification` in one compiled call per
schedule program (`mir_jax.engine`) and scores each seed's test split; the reproduce tables and
`train_and_evaluate` (this command) both call it. A run's seed picks both its initialisation and its
train/test split, so schedules with the same seed see the same split. The command writes
`workdir/metrics.json` and the trained heads as an orbax checkpoint in `workdir/checkpoint`.
"""

import dataclasses
import json
import os
import time
from typing import Dict, List, NamedTuple, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np
import scipy.special

from mir_jax import checkpoint
from mir_jax import embedding_sets
from mir_jax import engine
from mir_jax import options
from mir_jax import protocols
from mir_jax import readings
from mir_jax import tuning


class HeadRuns(NamedTuple):
  task: protocols.Classification
  reading: readings.Reading
  opts: engine.StaticOptions
  runs: List[engine.Run]  # schedule-major: runs[i * S + j] is schedule i, seed j
  result: engine.TrainResult
  accuracy: Dict[str, np.ndarray]  # schedule -> (S,) test accuracy in percent
  correct: Dict[str, np.ndarray]  # schedule -> (S, n_test) bool
  mean_commonality: Dict[str, np.ndarray]  # schedule -> (S,) mean y on the test split
  train_loss: Dict[str, np.ndarray]  # schedule -> (S,) final cross-entropy on the whole training split
  train_accuracy: Dict[str, np.ndarray]  # schedule -> (S,) percent
  seconds: float
  flops: float  # the matmuls of every update, forward and backward (`engine.flops_per_run`)


def train_heads(
  task: protocols.Classification,
  schedules: Sequence[str],
  reading: readings.Reading,
  opts: engine.StaticOptions,
  commonality_weight: float = 1.0,
  alternate_every: int = 1,
) -> HeadRuns:
  """Trains every (schedule, seed) of `task` under `reading` in one compiled call.

  `opts.steps` is replaced by the longest setting; shorter runs stop updating at their own budget.
  """
  schedules = list(schedules)
  runs = [
    engine.Run(
      schedule=s,
      seed=seed,
      learning_rate=reading.setting(s).learning_rate,
      l2=reading.setting(s).l2,
      steps=reading.setting(s).steps,
      commonality_weight=commonality_weight,
      alternate_every=alternate_every,
    )
    for s in schedules
    for seed in task.seeds
  ]
  steps = max(r.steps for r in runs)
  opts = dataclasses.replace(
    opts, steps=steps, log_every=_largest_divisor_at_most(steps, 100), lr_schedule=reading.lr_schedule
  )
  train_idx = np.concatenate([task.train_idx] * len(schedules))
  test_idx = np.concatenate([task.test_idx] * len(schedules))
  start = time.perf_counter()
  result = jax.block_until_ready(engine.train(task.x, task.labels, opts, runs, train_idx))
  seconds = time.perf_counter() - start
  out = engine.apply_runs(result, task.x, runs, opts)
  pred = np.asarray(np.argmax(out.logits, axis=-1))
  correct = np.take_along_axis(pred == task.labels[None], test_idx, axis=1)
  y = np.take_along_axis(np.asarray(out.commonality).mean(-1), test_idx, axis=1).mean(axis=1)
  log_p = scipy.special.log_softmax(np.asarray(out.logits, np.float64), axis=-1)
  nll = -np.take_along_axis(log_p, task.labels[None, :, None], axis=2)[..., 0]
  train_loss = np.take_along_axis(nll, train_idx, axis=1).mean(axis=1)
  train_acc = 100.0 * np.take_along_axis(pred == task.labels[None], train_idx, axis=1).mean(axis=1)
  flops = sum(engine.flops_per_run(opts, task.x.shape[1], train_idx.shape[1], r) for r in runs)
  n = len(task.seeds)
  by = lambda a: {s: a[i * n : (i + 1) * n] for i, s in enumerate(schedules)}
  return HeadRuns(
    task,
    reading,
    opts,
    runs,
    result,
    by(100.0 * correct.mean(axis=1)),
    by(correct),
    by(y),
    by(train_loss),
    by(train_acc),
    seconds,
    flops,
  )


def _largest_divisor_at_most(n: int, k: int) -> int:
  return max(d for d in range(1, min(n, k) + 1) if n % d == 0)


def character_features(head_runs: HeadRuns, schedule: str, x) -> np.ndarray:
  """(S, n, d) MIR character features c = base - y of x under each seed's head of `schedule`."""
  sel = [i for i, r in enumerate(head_runs.runs) if r.schedule == schedule]
  if not sel:
    raise KeyError(f'no {schedule!r} runs were trained')
  sub = engine.TrainResult(
    jax.tree.map(lambda a: a[np.asarray(sel)], head_runs.result.params),
    head_runs.result.input_mean[np.asarray(sel)],
    {},
  )
  out = engine.apply_runs(sub, x, [head_runs.runs[i] for i in sel], head_runs.opts)
  return np.asarray(out.character)


def tune(
  task: protocols.Classification,
  schedules: Sequence[str],
  opts: engine.StaticOptions,
  grid: tuning.Grid,
  commonality_weight: float = 1.0,
  alternate_every: int = 1,
) -> Dict[str, tuning.Choice]:
  """`tuning.choose` on the task's first seeds' training splits (the test splits never enter)."""
  return tuning.choose(
    task.x,
    task.labels,
    task.train_idx,
    opts,
    list(schedules),
    grid,
    task.seeds,
    commonality_weight=commonality_weight,
    alternate_every=alternate_every,
  )


def check(
  task: protocols.Classification,
  schedules: Sequence[str],
  opts: engine.StaticOptions,
  setting: readings.Setting,
  grid: tuning.Grid,
  commonality_weight: float = 1.0,
  alternate_every: int = 1,
) -> Dict[str, tuning.Check]:
  """`tuning.check` of a fixed setting on the same validation splits as `tune`."""
  return tuning.check(
    task.x,
    task.labels,
    task.train_idx,
    opts,
    list(schedules),
    setting.learning_rate,
    setting.l2,
    setting.steps,
    grid,
    task.seeds,
    commonality_weight=commonality_weight,
    alternate_every=alternate_every,
  )


def make_task(config, dataset: embedding_sets.EmbeddingSet) -> protocols.Classification:
  """The config's identity protocol on `dataset`, one split per seed (`mir_jax.protocols`)."""
  seeds = options.seeds(config.train)
  if config.data.protocol == 'stratified':
    return protocols.lfw_identity(dataset, seeds, config.data.min_images_per_identity, config.data.train_fraction)
  if config.data.protocol == 'fixed_count':
    return protocols.facenet_classifier(
      dataset, seeds, config.data.min_images_per_identity, config.data.num_train_per_identity
    )
  raise ValueError(f'unknown data.protocol {config.data.protocol!r}; choose stratified or fixed_count')


def train_and_evaluate(config, workdir: str | None = None, dataset: embedding_sets.EmbeddingSet | None = None):
  """Trains every (schedule, seed) run of the config, returns the metrics dict (also written to workdir).

  With `config.tune.enabled` the learning rate, L2 and steps of each schedule are chosen on validation data
  (`mir_jax.tuning`); otherwise they are `config.train`'s.
  """
  dataset = dataset if dataset is not None else embedding_sets.load(config.data.source)
  task = make_task(config, dataset)
  variant = options.Variant.from_config(config)
  opts = options.static_options(config.train, variant, len(task.class_names), task.x.shape[1])
  schedules = [s.strip() for s in config.train.schedules.split(',') if s.strip()]
  t = config.train
  choices = {}
  if config.tune.enabled:
    choices = tune(
      task, schedules, opts, options.grid(config.tune, variant.optimizer), t.commonality_weight, t.alternate_every
    )
    reading = readings.tuned_reading(choices, 'chosen on validation (mir_jax.tuning)', t.lr_schedule)
  else:
    setting = readings.Setting(t.learning_rate, t.l2, t.steps)
    reading = readings.Reading('config', {s: setting for s in schedules}, 'config.train', t.lr_schedule)
  logging.info(
    'training %d schedule(s) x %d seed(s) on %d embeddings of dim %d, %d identities',
    len(schedules),
    len(task.seeds),
    len(task.x),
    task.x.shape[1],
    len(task.class_names),
  )
  heads = train_heads(task, schedules, reading, opts, t.commonality_weight, t.alternate_every)

  metrics = {
    'source': config.data.source,
    'num_examples': int(len(task.x)),
    'dim': int(task.x.shape[1]),
    'num_classes': len(task.class_names),
    'num_train': int(task.train_idx.shape[1]),
    'num_test': int(task.test_idx.shape[1]),
    'train_seconds_incl_compile': heads.seconds,
    'config': config.to_dict(),
    'tuning': {s: dataclasses.asdict(c) for s, c in choices.items()},
    'runs': [],
  }
  n = len(task.seeds)
  for i, run in enumerate(heads.runs):
    s, j = run.schedule, i % n
    metrics['runs'].append(
      {
        'schedule': s,
        'seed': run.seed,
        'learning_rate': run.learning_rate,
        'l2': run.l2,
        'steps': run.steps,
        'test_accuracy': float(heads.accuracy[s][j] / 100),
        'train_accuracy': float(heads.train_accuracy[s][j] / 100),
        'mean_commonality_y': float(heads.mean_commonality[s][j]),
        'final_loss': float(heads.result.history['loss'][i, -1]),
        'loss_curve': np.asarray(heads.result.history['loss'][i]).round(5).tolist(),
      }
    )
  metrics['summary'] = {
    s: {
      'test_accuracy_mean': float(heads.accuracy[s].mean() / 100),
      'test_accuracy_std': float(heads.accuracy[s].std() / 100),
      'num_seeds': n,
    }
    for s in schedules
  }

  if workdir:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'metrics.json'), 'w') as f:
      json.dump(metrics, f, indent=1)
    checkpoint.save(os.path.join(workdir, 'checkpoint'), heads.result, heads.opts, heads.runs, task.class_names)
  return metrics


def _print_summary(metrics, workdir):
  print(
    f'{metrics["num_classes"]} identities, {metrics["num_train"]} train / {metrics["num_test"]} test '
    f'embeddings of dim {metrics["dim"]}; {len(metrics["runs"])} runs trained in '
    f'{metrics["train_seconds_incl_compile"]:.1f} s (incl. compile)'
  )
  for schedule, s in metrics['summary'].items():
    chosen = metrics['tuning'].get(schedule)
    note = (
      f'  (chosen on validation: lr {chosen["learning_rate"]:g}, L2 {chosen["l2"]:g}, {chosen["steps"]} steps,'
      f' val Ac {100 * chosen["val_accuracy"]:.2f} %, '
      f'{"met" if chosen["converged"] else "did NOT meet"} the convergence rule)'
      if chosen
      else ''
    )
    print(
      f'  {schedule:12s} test Ac = {100 * s["test_accuracy_mean"]:.2f} +- {100 * s["test_accuracy_std"]:.2f} %'
      f' over {s["num_seeds"]} seed(s){note}'
    )
  if workdir:
    print(f'metrics and checkpoint written to {workdir}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:  # orbax logs every file it writes at INFO; -v 0 brings it back
    logging.set_verbosity(logging.WARNING)
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  _print_summary(train_and_evaluate(config, workdir), workdir)


def define_flags():
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  config_flags.DEFINE_config_file(
    'config', 'experiments/configs/default.py', 'Training configuration.', lock_config=True
  )
  flags.DEFINE_string('workdir', None, 'Where metrics.json and the checkpoint are written.')


if __name__ == '__main__':
  define_flags()
  app.run(main)
