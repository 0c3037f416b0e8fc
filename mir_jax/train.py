r"""Trains MIR heads on an embedding set from a config and evaluates them: `python -m mir_jax.train`.

  python -m mir_jax.train --config=experiments/configs/default.py \
      --config.data.source=embeddings.npz --config.train.schedules=joint,single --config.train.num_seeds=10 \
      --workdir=runs/example

`train_and_evaluate` builds the config's identity protocol and reading and trains through
`mir_jax.runner.train_heads`, the runner the reproduce tables use too. It writes `workdir/metrics.json`
and the trained heads as an orbax checkpoint in `workdir/checkpoint`.
"""

import dataclasses
import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
import numpy as np

from mir_jax import checkpoint
from mir_jax import embedding_sets
from mir_jax import options
from mir_jax import protocols
from mir_jax import readings
from mir_jax import runner
from mir_jax.cache import key as cache_key


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
    choices = runner.tune(
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
  heads = runner.train_heads(task, schedules, reading, opts, t.commonality_weight, t.alternate_every)

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
        'test_accuracy': float(heads.correct[s][j].mean()),
        'train_accuracy': float(heads.train_accuracy[s][j] / 100),
        'mean_commonality_y': float(heads.mean_commonality[s][j]),
        'final_loss': float(heads.result.history['loss'][i, -1]),
        'loss_curve': np.asarray(heads.result.history['loss'][i]).round(5).tolist(),
      }
    )
  metrics['summary'] = {
    s: {
      'test_accuracy_mean': float(heads.correct[s].mean(axis=1).mean()),
      'test_accuracy_std': float(heads.correct[s].mean(axis=1).std()),
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
  try:
    result = train_and_evaluate(config, workdir)
  except cache_key.CacheError as e:  # a missing, incomplete or damaged cache: the message says how to (re)build it
    sys.exit(f'error: {e}')
  _print_summary(result, workdir)


def define_flags():
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  config_flags.DEFINE_config_file(
    'config', 'experiments/configs/default.py', 'Training configuration.', lock_config=True
  )
  flags.DEFINE_string('workdir', None, 'Where metrics.json and the checkpoint are written.')


if __name__ == '__main__':
  define_flags()
  app.run(main)
