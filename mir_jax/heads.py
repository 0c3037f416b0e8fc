"""Training the heads a table compares, on one protocol, under one named training reading.

A *reading* fixes what the paper leaves open about training (BUILD.md, "Training heads fairly"):

  paper-literal  the paper's learning rate and L2 (0.001 each, TensorFlow's `l2 * l2_loss(W)`), Adam at a
                 constant rate, and our reading of what it does not state (steps, batch), the same for every
                 schedule. Whether it meets the convergence rule is checked (`tuning.check`) and shown.
  tuned          learning rate, L2 and steps chosen per schedule on a validation split carved from the
                 training split of the first seeds (`mir_jax.tuning`), by one rule for every head, under the
                 configured learning-rate schedule. The choice is stored in a JSON file (`save_choices`) so
                 that tables are regenerated without re-tuning; the file records the grid, the data it was
                 chosen on, the validation curves and whether the choice met the rule.

`train_classification` trains every (schedule, seed) of a `protocols.Classification` under a reading and
returns per-seed test accuracies and per-example correctness (for McNemar's test); `character_features`
maps embeddings through a trained head (the MIR feature of Table I's "(a)" rows).
"""

import dataclasses
import json
import os
import time
from typing import Dict, List, NamedTuple, Optional, Sequence

import jax
import numpy as np
import scipy.special

from mir_jax import engine
from mir_jax import protocols
from mir_jax import tuning


@dataclasses.dataclass(frozen=True)
class Setting:
  """Learning rate, L2 and steps of one schedule."""
  learning_rate: float
  l2: float
  steps: int


@dataclasses.dataclass(frozen=True)
class Reading:
  name: str
  settings: Dict[str, Setting]  # schedule -> setting
  source: str = ''  # where the settings come from (the paper; a tuning file)
  lr_schedule: str = 'constant'
  # schedule -> whether the setting met the convergence rule (`mir_jax.tuning`), and how it was judged.
  converged: Dict[str, bool] = dataclasses.field(default_factory=dict)
  evidence: Dict[str, str] = dataclasses.field(default_factory=dict)

  def setting(self, schedule: str) -> Setting:
    if schedule not in self.settings:
      raise KeyError(f'reading {self.name!r} has no setting for schedule {schedule!r} (it has '
                     f'{sorted(self.settings)}); re-run the tuning with that schedule')
    return self.settings[schedule]


def literal_reading(steps: int, learning_rate: float = 1e-3, l2: float = 1e-3,
                    checks: Optional[Dict[str, tuning.Check]] = None, checked_in: str = '') -> Reading:
  """The paper's numbers for every schedule; `steps` is ours (the paper names none). `checks`: the
  convergence rule applied to this setting, per schedule (unchecked schedules are marked so), stored in
  the file `checked_in`."""
  s = Setting(learning_rate, l2, steps)
  checks = checks or {}
  evidence = {k: (f'validation Ac {100 * c.val_accuracy:.2f} at {c.steps} steps, '
                  + ', '.join(f'{100 * a:.2f} at {b}' for b, a in sorted(c.later.items(), key=lambda i: int(i[0]))))
              for k, c in checks.items()}
  return Reading('paper-literal', {k: s for k in engine.SCHEDULES},
                 f'paper: lr {learning_rate:g}, L2 {l2:g}; constant rate, {steps} steps (not stated in the paper)'
                 + (f'; rule checked in {checked_in}' if checked_in else ''),
                 'constant', {k: c.converged for k, c in checks.items()}, evidence)


def tuned_reading(choices: Dict[str, tuning.Choice], source: str, lr_schedule: str) -> Reading:
  evidence = {}
  for s, c in choices.items():
    parts = []
    curve = c.curve.get(f'({c.learning_rate:g}, {c.l2:g})', {})
    later = [(int(b), a) for b, a in curve.items() if int(b) > c.steps]
    if c.converged and later:
      parts.append('validation Ac vs its steps: ' + ', '.join(
          f'{b} steps {100 * (a - c.val_accuracy):+.2f} pp' for b, a in sorted(later)))
    elif not c.converged:
      half = curve.get(str(c.steps // 2))
      gain = '' if half is None else f', {100 * (c.val_accuracy - half):+.2f} pp over {c.steps // 2} steps'
      parts.append(f'not settled at the {c.steps}-step maximum{gain}')
    if c.better_unconverged:
      b = c.better_unconverged
      parts.append(f'lr {b["learning_rate"]:g}, L2 {b["l2"]:g} reached validation Ac '
                   f'{100 * b["val_accuracy"]:.2f} at {b["steps"]} steps without meeting the rule')
    if c.extended:
      parts.append('grid extended: ' + '; '.join(c.extended))
    if c.edge:
      parts.append(f'still on the grid\'s edge ({c.edge}) after {len(c.extended)} extension(s)')
    evidence[s] = '; '.join(parts)
  return Reading('tuned', {s: Setting(c.learning_rate, c.l2, c.steps) for s, c in choices.items()}, source,
                 lr_schedule, {s: c.converged for s, c in choices.items()}, evidence)


def save_choices(path: str, choices: Dict[str, object], context: dict):
  """Writes tuning choices (or convergence checks) with the context they were made in."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    json.dump({'context': context, 'choices': {s: dataclasses.asdict(c) for s, c in choices.items()}}, f,
              indent=1, sort_keys=True)
    f.write('\n')


def load_choices(path: str, context: dict, kind=tuning.Choice) -> Optional[Dict[str, object]]:
  """The records of `kind` stored at `path`, or None when the file is missing, was made in another context
  or holds another kind of record (e.g. written before the convergence rule)."""
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    stored = json.load(f)
  if stored.get('context') != json.loads(json.dumps(context)):
    return None
  try:
    return {s: kind(**{k: tuple(v) if k == 'extended' else v for k, v in c.items()})
            for s, c in stored['choices'].items()}
  except TypeError:
    return None


class HeadRuns(NamedTuple):
  task: protocols.Classification
  reading: Reading
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


def train_classification(task: protocols.Classification, schedules: Sequence[str], reading: Reading,
                         opts: engine.StaticOptions, commonality_weight: float = 1.0,
                         alternate_every: int = 1) -> HeadRuns:
  """Trains every (schedule, seed) of `task` under `reading` in one compiled call.

  `opts.steps` is replaced by the longest setting; shorter runs stop updating at their own budget.
  """
  schedules = list(schedules)
  runs = [engine.Run(schedule=s, seed=seed, learning_rate=reading.setting(s).learning_rate,
                     l2=reading.setting(s).l2, steps=reading.setting(s).steps,
                     commonality_weight=commonality_weight, alternate_every=alternate_every)
          for s in schedules for seed in task.seeds]
  steps = max(r.steps for r in runs)
  opts = dataclasses.replace(opts, steps=steps, log_every=_largest_divisor_at_most(steps, 100),
                             lr_schedule=reading.lr_schedule)
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
  by = lambda a: {s: a[i * n:(i + 1) * n] for i, s in enumerate(schedules)}
  return HeadRuns(task, reading, opts, runs, result, by(100.0 * correct.mean(axis=1)), by(correct), by(y),
                  by(train_loss), by(train_acc), seconds, flops)


def _largest_divisor_at_most(n: int, k: int) -> int:
  return max(d for d in range(1, min(n, k) + 1) if n % d == 0)


def character_features(head_runs: HeadRuns, schedule: str, x) -> np.ndarray:
  """(S, n, d) MIR character features c = base - y of x under each seed's head of `schedule`."""
  sel = [i for i, r in enumerate(head_runs.runs) if r.schedule == schedule]
  if not sel:
    raise KeyError(f'no {schedule!r} runs were trained')
  sub = engine.TrainResult(jax.tree.map(lambda a: a[np.asarray(sel)], head_runs.result.params),
                           head_runs.result.input_mean[np.asarray(sel)], {})
  out = engine.apply_runs(sub, x, [head_runs.runs[i] for i in sel], head_runs.opts)
  return np.asarray(out.character)


def tune(task: protocols.Classification, schedules: Sequence[str], opts: engine.StaticOptions, grid: tuning.Grid,
         commonality_weight: float = 1.0, alternate_every: int = 1) -> Dict[str, tuning.Choice]:
  """`tuning.choose` on the task's first seeds' training splits (the test splits never enter)."""
  return tuning.choose(task.x, task.labels, task.train_idx, opts, list(schedules), grid, task.seeds,
                       commonality_weight=commonality_weight, alternate_every=alternate_every)


def check(task: protocols.Classification, schedules: Sequence[str], opts: engine.StaticOptions,
          setting: Setting, grid: tuning.Grid, commonality_weight: float = 1.0,
          alternate_every: int = 1) -> Dict[str, tuning.Check]:
  """`tuning.check` of a fixed setting on the same validation splits as `tune`."""
  return tuning.check(task.x, task.labels, task.train_idx, opts, list(schedules), setting.learning_rate,
                      setting.l2, setting.steps, grid, task.seeds, commonality_weight=commonality_weight,
                      alternate_every=alternate_every)
