r"""Trains MIR heads on an embedding set and evaluates identity accuracy Ac = TP / AP.

  python -m mir_jax.train --config=experiments/configs/default.py \
      --config.data.source=embeddings.npz --config.train.schedules=joint,single --config.train.num_seeds=10 \
      --workdir=runs/example

Every (schedule, seed) pair is one run; runs train together in one compiled, vmapped call. A run's seed
picks both its initialisation and its train/test split, so schedules with the same seed see the same split.
Writes `workdir/metrics.json` and the trained heads as an orbax checkpoint in `workdir/checkpoint`.
"""

import dataclasses
import json
import math
import os
import time

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np
from ml_collections import config_flags

from mir_jax import checkpoint
from mir_jax import embedding_sets
from mir_jax import engine
from mir_jax import protocols
from mir_jax import tuning

_CONFIG = config_flags.DEFINE_config_file('config', 'experiments/configs/default.py', 'Training configuration.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where metrics.json and the checkpoint are written.')


def prepare(config, dataset: embedding_sets.EmbeddingSet):
  """Filters identities, makes one split per seed (`mir_jax.protocols`). Returns (x, labels, class_names,
  seeds, train, test)."""
  seeds = [config.train.seed + i for i in range(config.train.num_seeds)]
  if config.data.protocol == 'stratified':
    task = protocols.lfw_identity(dataset, seeds, config.data.min_images_per_identity, config.data.train_fraction)
  elif config.data.protocol == 'fixed_count':
    task = protocols.facenet_classifier(dataset, seeds, config.data.min_images_per_identity,
                                        config.data.num_train_per_identity)
  else:
    raise ValueError(f'unknown data.protocol {config.data.protocol!r}; choose stratified or fixed_count')
  return task.x, task.labels, task.class_names, seeds, task.train_idx, task.test_idx


def static_options(config, num_classes: int) -> engine.StaticOptions:
  return engine.StaticOptions(
      num_classes=num_classes, commonality_dim=config.model.commonality_dim,
      subtract_from=config.model.subtract_from, center=config.model.center,
      optimizer=config.train.optimizer, l2_form=config.train.l2_form, l2_params=config.train.l2_params,
      steps=config.train.steps, batch_size=config.train.batch_size, log_every=config.train.log_every,
      lr_schedule=config.train.lr_schedule, warmup_fraction=config.train.warmup_fraction)


def make_runs(config, seeds):
  schedules = [s.strip() for s in config.train.schedules.split(',') if s.strip()]
  return [engine.Run(schedule=s, seed=seed, learning_rate=config.train.learning_rate, l2=config.train.l2,
                     commonality_weight=config.train.commonality_weight,
                     alternate_every=config.train.alternate_every)
          for s in schedules for seed in seeds]


def tune(config, x, labels, train_idx, seeds, opts):
  """Chooses learning rate, L2 and steps per schedule on validation data (mir_jax/tuning.py)."""
  grid = tuning.Grid.from_config(config.tune)
  schedules = [r.schedule for r in make_runs(config, seeds[:1])]
  return tuning.choose(x, labels, train_idx, opts, schedules, grid, seeds,
                       commonality_weight=config.train.commonality_weight,
                       alternate_every=config.train.alternate_every)


def train_and_evaluate(config, workdir: str | None = None, dataset: embedding_sets.EmbeddingSet | None = None):
  """Trains every (schedule, seed) run, returns the metrics dict (also written to workdir)."""
  dataset = dataset if dataset is not None else embedding_sets.load(config.data.source)
  x, labels, class_names, seeds, train_idx, test_idx = prepare(config, dataset)
  opts = static_options(config, len(class_names))
  runs = make_runs(config, seeds)
  choices = {}
  if config.tune.enabled:
    choices = tune(config, x, labels, train_idx, seeds, opts)
    runs = [dataclasses.replace(r, learning_rate=choices[r.schedule].learning_rate, l2=choices[r.schedule].l2,
                                steps=choices[r.schedule].steps) for r in runs]
    steps = max(r.steps for r in runs)
    opts = dataclasses.replace(opts, steps=steps, log_every=math.gcd(*[r.steps for r in runs], steps))
  seed_pos = {s: i for i, s in enumerate(seeds)}
  run_train = train_idx[[seed_pos[r.seed] for r in runs]]
  run_test = test_idx[[seed_pos[r.seed] for r in runs]]
  logging.info('training %d runs on %d embeddings of dim %d, %d identities', len(runs), len(x), x.shape[1],
               len(class_names))

  start = time.perf_counter()
  result = jax.block_until_ready(engine.train(x, labels, opts, runs, run_train))
  train_seconds = time.perf_counter() - start
  out = engine.apply_runs(result, x, runs, opts)
  correct = np.asarray(np.argmax(out.logits, axis=-1) == labels[None])  # (R, n)
  test_acc = np.take_along_axis(correct, run_test, axis=1).mean(axis=1)
  train_acc = np.take_along_axis(correct, run_train, axis=1).mean(axis=1)
  mean_y = np.take_along_axis(np.asarray(out.commonality).mean(-1), run_test, axis=1).mean(axis=1)

  metrics = {
      'source': config.data.source,
      'num_examples': int(len(x)), 'dim': int(x.shape[1]), 'num_classes': len(class_names),
      'num_train': int(run_train.shape[1]), 'num_test': int(run_test.shape[1]),
      'train_seconds_incl_compile': train_seconds,
      'config': config.to_dict(),
      'tuning': {s: dataclasses.asdict(c) for s, c in choices.items()},
      'runs': [],
  }
  for i, run in enumerate(runs):
    metrics['runs'].append({
        'schedule': run.schedule, 'seed': run.seed,
        'learning_rate': run.learning_rate, 'l2': run.l2, 'steps': run.steps or opts.steps,
        'test_accuracy': float(test_acc[i]), 'train_accuracy': float(train_acc[i]),
        'mean_commonality_y': float(mean_y[i]),
        'final_loss': float(result.history['loss'][i, -1]),
        'loss_curve': np.asarray(result.history['loss'][i]).round(5).tolist(),
    })
  summary = {}
  for schedule in dict.fromkeys(r.schedule for r in runs):
    accs = test_acc[[r.schedule == schedule for r in runs]]
    summary[schedule] = {'test_accuracy_mean': float(accs.mean()), 'test_accuracy_std': float(accs.std()),
                         'num_seeds': int(accs.size)}
  metrics['summary'] = summary

  if workdir:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'metrics.json'), 'w') as f:
      json.dump(metrics, f, indent=1)
    checkpoint.save(os.path.join(workdir, 'checkpoint'), result, opts, runs, class_names)
  return metrics


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:  # orbax logs every file it writes at INFO; -v 0 brings it back
    logging.set_verbosity(logging.WARNING)
  metrics = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  print(f'{metrics["num_classes"]} identities, {metrics["num_train"]} train / {metrics["num_test"]} test '
        f'embeddings of dim {metrics["dim"]}; {len(metrics["runs"])} runs trained in '
        f'{metrics["train_seconds_incl_compile"]:.1f} s (incl. compile)')
  for schedule, s in metrics['summary'].items():
    chosen = metrics['tuning'].get(schedule)
    note = (f'  (chosen on validation: lr {chosen["learning_rate"]:g}, L2 {chosen["l2"]:g}, {chosen["steps"]} steps,'
            f' val Ac {100 * chosen["val_accuracy"]:.2f} %, '
            f'{"met" if chosen["converged"] else "did NOT meet"} the convergence rule)' if chosen else '')
    print(f'  {schedule:12s} test Ac = {100 * s["test_accuracy_mean"]:.2f} +- {100 * s["test_accuracy_std"]:.2f} %'
          f' over {s["num_seeds"]} seed(s){note}')
  if _WORKDIR.value:
    print(f'metrics and checkpoint written to {_WORKDIR.value}')


if __name__ == '__main__':
  app.run(main)
