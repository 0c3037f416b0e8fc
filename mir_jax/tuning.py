"""Training heads fairly: what the paper leaves open is chosen on validation data, by one rule for all heads.

The paper gives only a learning rate (0.001) and an L2 coefficient (0.001). Whether a softmax head fits
at all on L2-normalised embeddings depends on those and on the number of steps, so a comparison of heads
trained with one reading proves nothing about the heads. Here, for each schedule separately:

  1. carve a validation split out of each tuning seed's *training* split (never the test split),
  2. train every (learning rate, L2) pair of the grid on the rest, logging validation accuracy every
     `eval_every` steps inside the compiled loop,
  3. choose the (learning rate, L2, steps) with the best validation accuracy averaged over tuning seeds
     (ties: fewer steps, then the smaller learning rate, then the larger L2 -- the most conservative fit),
  4. the caller retrains on the whole training split with the chosen values and scores the test split.

The same grid and rule serve the original-feature (single-task) head, the MIR heads and every ablation.
"""

import dataclasses
import itertools
from typing import Sequence

import numpy as np

from mir_jax import engine
from mir_jax import splits


@dataclasses.dataclass(frozen=True)
class Grid:
  learning_rates: Sequence[float] = (1e-3, 1e-2, 3e-2)
  l2s: Sequence[float] = (0.0, 1e-4, 1e-3)
  max_steps: int = 2000
  eval_every: int = 100
  val_fraction: float = 0.2  # of each identity's training examples, at least one
  tuning_seeds: int = 2  # the first seeds' splits are used for tuning


@dataclasses.dataclass(frozen=True)
class Choice:
  schedule: str
  learning_rate: float
  l2: float
  steps: int
  val_accuracy: float  # mean over tuning seeds at the chosen point
  curve: dict  # '(lr, l2)' -> mean validation accuracy after each eval_every steps


def validation_split(labels, train_idx, seed: int, val_fraction: float):
  """Splits one run's training indices into (fit, validation), per identity, at least one each."""
  fit, val = splits.stratified_split(labels[train_idx], 1.0 - val_fraction, seed)
  return train_idx[fit], train_idx[val]


def choose(x, labels, train_idx, base_opts: engine.StaticOptions, schedules: Sequence[str], grid: Grid,
           seeds: Sequence[int], commonality_weight: float = 1.0, alternate_every: int = 1):
  """Chooses (learning rate, L2, steps) per schedule on validation data. Returns {schedule: Choice}.

  Args:
    x, labels: all embeddings and identities.
    train_idx: (num_seeds, n_train) training indices of each seed's split (test indices never enter).
    base_opts: shared options; its `steps` and `log_every` are replaced by the grid's.
    schedules: schedules to tune, each separately, all in one compiled call.
    grid: the search space and validation rule.
    seeds: the seed of each row of train_idx; the first `grid.tuning_seeds` are used.
  """
  if grid.max_steps % grid.eval_every:
    raise ValueError(f'max_steps ({grid.max_steps}) must be a multiple of eval_every ({grid.eval_every})')
  tuning = list(range(min(grid.tuning_seeds, len(seeds))))
  fit_val = [validation_split(labels, train_idx[i], seeds[i], grid.val_fraction) for i in tuning]
  points = list(itertools.product(schedules, grid.learning_rates, grid.l2s, tuning))
  runs = [engine.Run(schedule=s, seed=seeds[t], learning_rate=lr, l2=l2, commonality_weight=commonality_weight,
                     alternate_every=alternate_every) for s, lr, l2, t in points]
  opts = dataclasses.replace(base_opts, steps=grid.max_steps, log_every=grid.eval_every)
  result = engine.train(x, labels, opts, runs, np.stack([fit_val[t][0] for *_, t in points]),
                        np.stack([fit_val[t][1] for *_, t in points]))
  acc = np.asarray(result.history['eval_accuracy']).reshape(
      len(schedules), len(grid.learning_rates), len(grid.l2s), len(tuning), -1).mean(axis=3)

  choices = {}
  for si, schedule in enumerate(schedules):
    best = None
    for (li, lr), (ri, l2) in itertools.product(enumerate(grid.learning_rates), enumerate(grid.l2s)):
      for block, value in enumerate(acc[si, li, ri]):
        # Larger is better; ties go to fewer steps, a smaller learning rate, a larger L2.
        key = (round(float(value), 6), -block, -lr, l2)
        if best is None or key > best[0]:
          best = (key, lr, l2, (block + 1) * grid.eval_every, float(value))
    curve = {f'({lr:g}, {l2:g})': acc[si, li, ri].round(4).tolist()
             for (li, lr), (ri, l2) in itertools.product(enumerate(grid.learning_rates), enumerate(grid.l2s))}
    _, lr, l2, steps, value = best
    choices[schedule] = Choice(schedule, lr, l2, steps, value, curve)
  return choices
