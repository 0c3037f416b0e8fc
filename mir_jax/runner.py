"""The runner: trains the heads of a classification task under a training reading, the one way heads are trained.

`train_heads` trains every (schedule, seed) of a `protocols.Classification` in one compiled call per
schedule program (`mir_jax.engine`) and scores each seed's test split. The reproduce tables (through
`reproduce/head_memo.py`) and `mir_jax.train.train_and_evaluate` both call it. A run's seed picks both its
initialisation and its split, so schedules with the same seed see the same split.
"""

import dataclasses
import time
from typing import Dict, List, NamedTuple, Optional, Sequence

import jax
import numpy as np
import scipy.special

from mir_jax import engine
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
  progress: Optional[str] = None,
) -> Dict[str, tuning.Choice]:
  """`tuning.choose` on the task's first seeds' training splits (the test splits never enter); `progress`:
  as there."""
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
    progress=progress,
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
