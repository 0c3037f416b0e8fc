"""Training heads fairly: what the paper leaves open is chosen on validation data, by one rule for all heads.

The paper gives only a learning rate (0.001) and an L2 coefficient (0.001). Whether a softmax head fits
at all on L2-normalised embeddings depends on those and on the number of steps, so a comparison of heads
trained with one reading proves nothing about the heads unless each has converged. The rule, for every
head alike:

  A head trained for B steps has *converged* when it is more than `tolerance` more accurate on
  validation data than both always answering the largest identity and the same head untrained (its
  initial parameters), and the same head trained for 2B, 4B, ... steps (`plateau_doublings` doublings;
  its learning-rate schedule stretched to each budget) is within `tolerance` of it, neither more nor
  less accurate; accuracies are means over the tuning seeds.

The first half keeps a head that has not started to learn (stuck on the largest identity, or too slow to
move from where it started, where doubling changes little) from passing as converged. Two doublings, not
one, because a head can pause on the way: a plateau over one doubling, then a climb (the stored curves
of experiments/tuned/ show such heads; DEVELOPING.md quotes them). Both directions, because a setting
whose accuracy drops when it trains longer has found a lucky budget, not a resting point.
Validation cross-entropy is not part of the rule: on unit-norm embeddings it keeps falling long after
the accuracy has settled, as the logits grow.

Tuning, for each schedule separately:

  1. carve a validation split out of each tuning seed's *training* split (never the test split);
  2. train every (learning rate, L2) point of the grid with budgets first_steps, 2x, 4x, ... on the rest,
     until the rule holds at a budget (the point has converged there) or `max_steps` is reached (it has
     not; the largest budget the rule can confirm is max_steps / 2^plateau_doublings, and step 4 may
     raise the maximum); a point more than `prune_margin` behind the best point of its schedule at the
     same or a smaller budget stops climbing (successive halving: a slow learning rate that might have
     caught up much later is given up for cost; its curve shows where);
  3. choose the (learning rate, L2, steps) with the best validation accuracy among the points that met
     the rule (`prefer_converged`; among all points when none did, or when it is off), ties going to
     fewer steps, then the smaller learning rate, then the larger L2 (the most conservative fit); record
     whether the choice converged and, when a point that had not converged scored higher, that point: a
     head still climbing at `max_steps` is not a finished head to compare, but what it reached is shown;
  4. a choice on an edge of the learning-rate grid, or on its largest non-zero L2, extends the grid one
     step beyond that edge (same ratio) and goes back to 2, up to `max_extensions` times per edge; what
     was extended is recorded, and a choice still on an edge after that is flagged. When no point met the
     rule, or the choice sits on the smallest non-zero L2 while a weaker one scored higher without
     meeting it, the grid also gains an L2 below the smallest non-zero one (same ratio, up to
     `max_extensions` times): without L2 a softmax on separable embeddings has no finite minimum, its
     weights grow for ever and its validation accuracy keeps drifting, while the grid's smallest L2 may
     hold it far from fitting (the LFW-distractors head's stored curves show both). Last, a choice that has not converged and sits on
     the largest budget doubles the schedule's `max_steps` (up to `max_extensions` times): the points
     still climbing there train on, the rest keep their curves;
  5. the caller retrains on the whole training split with the chosen values and scores the test split.

All runs that share a budget train in one compiled call, so a point that has converged costs nothing more.
`check` applies the same rule to a fixed setting (the paper-literal reading).

A tuning can take hours (FaceNet's 512-D heads on two CPU cores), so with `progress` every point's
validation accuracy is written to that file as soon as its budget has trained, and a tuning started again
with the same file trains only the points it lacks. Each point is trained from its own initial parameters
for its own budget, so what is read back is what would be trained again, up to the last bits that a
different grouping of runs into one compiled call can change.
"""

import dataclasses
import itertools
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

from absl import logging
import numpy as np

from mir_jax import engine
from mir_jax import splits


@dataclasses.dataclass(frozen=True)
class Grid:
  """The grid and the rule's parameters; `options.grid` makes one from a config's tune block, whose values in
  experiments/configs/default.py are the one default."""

  learning_rates: Sequence[float]
  l2s: Sequence[float]
  first_steps: int  # the first budget; each next one doubles it
  max_steps: int  # the hard maximum: a point still gaining here has not converged
  tolerance: float  # validation accuracy (a fraction): how far longer training may move it
  plateau_doublings: int  # the budgets after B (2B, 4B, ...) that must stay within tolerance of B
  max_extensions: int  # per edge of the grid
  # A point stops climbing once it is this far (validation accuracy) behind the best point of its schedule
  # at the same or a smaller budget: successive halving, so slow learning rates cost a few budgets.
  prune_margin: float
  val_fraction: float  # of each identity's training examples, at least one
  tuning_seeds: int  # the first seeds' splits are used for tuning
  # Choose among the points that met the rule (True), or the best point whether or not it did (False).
  prefer_converged: bool

  def __post_init__(self):
    if self.first_steps < 1 or self.max_steps < self.first_steps:
      raise ValueError(f'need 1 <= first_steps ({self.first_steps}) <= max_steps ({self.max_steps})')
    if self.plateau_doublings < 1:
      raise ValueError(f'plateau_doublings must be >= 1, got {self.plateau_doublings}')
    if not self.learning_rates or not self.l2s:
      raise ValueError('the grid needs at least one learning rate and one L2')

  def rule_text(self) -> str:
    """The convergence rule in words, with this grid's numbers."""
    later = ', '.join(f'{2**j}B' for j in range(1, self.plateau_doublings + 1))
    return (
      f'a head of B steps has converged when its validation accuracy beats always answering the largest '
      f'identity and its own untrained start by more than {100 * self.tolerance:g} points, and {later} steps '
      f'stay within {100 * self.tolerance:g} points of it, either way; B doubles from {self.first_steps} up '
      f'to {self.max_steps} steps.'
    )

  def budgets(self) -> List[int]:
    out = [self.first_steps]
    while out[-1] * 2 <= self.max_steps:
      out.append(out[-1] * 2)
    return out


@dataclasses.dataclass(frozen=True)
class Choice:
  schedule: str
  learning_rate: float
  l2: float
  steps: int
  val_accuracy: float  # mean over tuning seeds at the chosen point
  curve: dict  # '(lr, l2)' -> {steps: mean validation accuracy} for every budget trained
  converged: bool = True  # the rule held at `steps`
  gain_when_doubled: Optional[float] = None  # validation accuracy at 2 x steps minus at steps
  extended: Tuple[str, ...] = ()  # grid extensions made to move the choice off an edge
  edge: str = ''  # which edge the choice still sits on after the extensions ('' when inside)
  # The best point that had not met the rule, when it scored higher than the choice: learning_rate, l2,
  # steps, val_accuracy.
  better_unconverged: Optional[dict] = None


def validation_split(labels, train_idx, seed: int, val_fraction: float):
  """Splits one run's training indices into (fit, validation), per identity, at least one each."""
  fit, val = splits.stratified_split(labels[train_idx], 1.0 - val_fraction, seed)
  return train_idx[fit], train_idx[val]


def _majority_accuracy(fit_labels, val_labels) -> float:
  """Validation accuracy of always answering the fit split's largest identity."""
  return float(np.mean(val_labels == np.bincount(fit_labels).argmax()))


def _key(lr, l2) -> str:
  return f'({lr:g}, {l2:g})'


class _Validator:
  """Validation accuracy of (schedule, lr, l2, budget) points, each trained once, batched by budget."""

  def __init__(self, x, labels, train_idx, opts, seeds, grid, commonality_weight, alternate_every, progress=None):
    self.x, self.labels, self.opts, self.grid = x, labels, opts, grid
    self.commonality_weight, self.alternate_every = commonality_weight, alternate_every
    self.tuning = list(range(min(grid.tuning_seeds, len(seeds))))
    self.seeds = [seeds[t] for t in self.tuning]
    self.fit_val = [validation_split(labels, train_idx[t], seeds[t], grid.val_fraction) for t in self.tuning]
    self.majority = float(np.mean([_majority_accuracy(labels[fit], labels[val]) for fit, val in self.fit_val]))
    self.acc: Dict[tuple, float] = {}  # (schedule, lr, l2, steps) -> mean validation accuracy
    self.untrained: Dict[str, float] = {}  # schedule -> mean validation accuracy of its initial heads
    self.progress = progress
    if progress and os.path.isfile(progress):
      with open(progress) as f:
        stored = json.load(f)
      self.acc = {tuple(k): a for k, a in stored['acc']}
      self.untrained = dict(stored['untrained'])
      logging.info('Resuming the tuning in %s: %d points already trained', progress, len(self.acc))
      print(f'resuming the tuning in {progress}: {len(self.acc)} points already trained', flush=True)

  def _save_progress(self):
    if not self.progress:
      return
    os.makedirs(os.path.dirname(os.path.abspath(self.progress)), exist_ok=True)
    tmp = f'{self.progress}.{os.getpid()}.tmp'
    with open(tmp, 'w') as f:
      json.dump({'acc': [[list(k), a] for k, a in sorted(self.acc.items())], 'untrained': self.untrained}, f)
      f.write('\n')
    os.replace(tmp, self.progress)  # whole or not at all: a killed tuning leaves the last complete file

  def floor(self, schedule: str) -> float:
    """What a head must beat to have learned: the largest identity, and the head before training."""
    if schedule not in self.untrained:
      # A learning rate of 0 leaves a run at its initial parameters, which depend on the seed alone.
      self.evaluate([(schedule, 0.0, 0.0, 1)])
      self.untrained[schedule] = self.acc.pop((schedule, 0.0, 0.0, 1))
      self._save_progress()
    return max(self.majority, self.untrained[schedule])

  def best(self, schedule: str, steps: int) -> float:
    """The best validation accuracy of any point of `schedule` trained for at most `steps`."""
    return max(a for k, a in self.acc.items() if k[0] == schedule and k[3] <= steps)

  def later(self, point: tuple, steps: int) -> List[tuple]:
    """The (schedule, lr, l2, budget) keys the rule compares with `point` at `steps`."""
    return [(*point, steps * 2**j) for j in range(1, self.grid.plateau_doublings + 1)]

  def holds(self, point: tuple, steps: int) -> bool:
    """The rule at `steps`: beats `floor`, and every later budget stays within tolerance of it."""
    base = self.acc[(*point, steps)]
    return base > self.floor(point[0]) + self.grid.tolerance and all(
      abs(self.acc[k] - base) <= self.grid.tolerance for k in self.later(point, steps)
    )

  def evaluate(self, points: Sequence[tuple]):
    """Trains every (schedule, lr, l2, steps) not yet known; one call per budget."""
    todo = sorted({p for p in points if p not in self.acc}, key=lambda p: p[3])
    for steps, group in itertools.groupby(todo, key=lambda p: p[3]):
      group = list(group)
      runs, fit, val = [], [], []
      for schedule, lr, l2, _ in group:
        for t, seed in enumerate(self.seeds):
          runs.append(
            engine.Run(
              schedule=schedule,
              seed=seed,
              learning_rate=lr,
              l2=l2,
              commonality_weight=self.commonality_weight,
              alternate_every=self.alternate_every,
            )
          )
          fit.append(self.fit_val[t][0])
          val.append(self.fit_val[t][1])
      opts = dataclasses.replace(self.opts, steps=steps, log_every=steps)
      result = engine.train(self.x, self.labels, opts, runs, np.stack(fit), np.stack(val))
      final = np.asarray(result.history['eval_accuracy'])[:, -1].reshape(len(group), len(self.seeds))
      for point, value in zip(group, final.mean(axis=1)):
        self.acc[point] = float(value)
      self._save_progress()


def _climb_all(v: _Validator, points: Sequence[tuple], max_steps: int) -> Dict[tuple, Tuple[int, bool]]:
  """Doubles the budget of every (schedule, lr, l2) point until the rule holds for it or `max_steps` is
  reached, all points budget by budget (one call each; budgets already trained are not trained again);
  returns {point: (steps, converged)}."""
  budgets = dataclasses.replace(v.grid, max_steps=max_steps).budgets()
  k = v.grid.plateau_doublings
  state = {p: None for p in points}  # None while still climbing
  for i in range(len(budgets) - k):
    climbing = [p for p, s in state.items() if s is None]
    if not climbing:
      break
    window = budgets[i : i + k + 1]
    v.evaluate([(*p, b) for p in climbing for b in window])
    for p in climbing:
      if v.holds(p, window[0]):
        state[p] = (window[0], True)
      elif v.acc[(*p, window[-1])] < v.best(p[0], window[-1]) - v.grid.prune_margin:
        state[p] = (window[-1], False)  # dropped: too far behind (its curve shows where it stopped)
  last = [p for p, s in state.items() if s is None]
  v.evaluate([(*p, budgets[-1]) for p in last])
  for p in last:
    state[p] = (budgets[-1], False)
  return state


def _beyond(values: List[float], side: str) -> Optional[float]:
  """The next grid value past the `side` ('low'/'high') end, at the ratio of the two values nearest it."""
  vals = sorted(v for v in values if v > 0)
  if not vals:
    return None
  ratio = vals[1] / vals[0] if side == 'low' and len(vals) > 1 else (vals[-1] / vals[-2] if len(vals) > 1 else 10.0)
  ratio = min(ratio, 10.0)  # a sparse grid (1e-5, 3e-2) steps on by a decade, not by its own gap
  return float(f'{(vals[0] / ratio if side == "low" else vals[-1] * ratio):.3g}')


def choose(
  x,
  labels,
  train_idx,
  base_opts: engine.StaticOptions,
  schedules: Sequence[str],
  grid: Grid,
  seeds: Sequence[int],
  commonality_weight: float = 1.0,
  alternate_every: int = 1,
  progress: Optional[str] = None,
):
  """Chooses (learning rate, L2, steps) per schedule by the rule above. Returns {schedule: Choice}.

  Args:
    x, labels: all embeddings and identities.
    train_idx: (num_seeds, n_train) training indices of each seed's split (test indices never enter).
    base_opts: shared options; its `steps` and `log_every` are set per budget.
    schedules: schedules to tune, each separately; runs of one budget train in one call.
    grid: the search space and the rule.
    seeds: the seed of each row of train_idx; the first `grid.tuning_seeds` are used.
    progress: a JSON file of the points trained so far, read when it exists and rewritten after every
      budget (see the module docstring); the caller names it after everything the tuning depends on.
  """
  v = _Validator(x, labels, train_idx, base_opts, seeds, grid, commonality_weight, alternate_every, progress)
  lrs = {s: sorted(grid.learning_rates) for s in schedules}
  l2s = {s: sorted(grid.l2s) for s in schedules}
  max_steps = {s: grid.max_steps for s in schedules}
  extended = {s: [] for s in schedules}
  climbed: Dict[tuple, Tuple[int, bool]] = {}
  choices = {}
  pending = list(schedules)
  while pending:
    for s in pending:
      points = [(s, lr, l2) for lr in lrs[s] for l2 in l2s[s] if (s, lr, l2) not in climbed]
      climbed.update(_climb_all(v, points, max_steps[s]))
    still = []
    for s in pending:
      choice = _best(v, s, lrs[s], l2s[s], climbed, extended[s])
      grow = _extension(choice, lrs[s], l2s[s], max_steps[s], extended[s], grid.max_extensions)
      if grow is None:
        choices[s] = choice
        continue
      what, value, message = grow
      if what == 'steps':
        # Points that stopped at the old maximum without converging climb on; pruned ones stay pruned.
        for p in [p for p, c in climbed.items() if p[0] == s and c == (max_steps[s], False)]:
          del climbed[p]
        max_steps[s] = value
      else:
        (lrs if what == 'lr' else l2s)[s] = sorted((lrs if what == 'lr' else l2s)[s] + [value])
      extended[s].append(message)
      still.append(s)
    pending = still
  return choices


def _best(v: _Validator, schedule, lrs, l2s, climbed, extended) -> Choice:
  candidates = []
  for lr, l2 in itertools.product(lrs, l2s):
    steps, converged = climbed[(schedule, lr, l2)]
    value = v.acc[(schedule, lr, l2, steps)]
    # Larger is better; ties go to fewer steps, a smaller lr, a larger L2.
    rank = (converged and v.grid.prefer_converged, round(value, 6), -steps, -lr, l2)
    candidates.append((rank, lr, l2, steps, value, converged))
  _, lr, l2, steps, value, converged = max(candidates)
  unconverged = [c for c in candidates if not c[5] and c[4] > value]
  better = None
  if unconverged:
    _, b_lr, b_l2, b_steps, b_value, _ = max(unconverged, key=lambda c: c[0][1:])
    better = {'learning_rate': b_lr, 'l2': b_l2, 'steps': b_steps, 'val_accuracy': b_value}
  doubled = v.acc.get((schedule, lr, l2, 2 * steps))
  curve = {
    _key(a, b): {
      str(k[3]): round(acc, 4) for k, acc in sorted(v.acc.items(), key=lambda i: i[0][3]) if k[:3] == (schedule, a, b)
    }
    for a, b in itertools.product(lrs, l2s)
  }
  edges = []
  if lr == max(lrs):
    edges.append('the largest learning rate')
  if lr == min(lrs):
    edges.append('the smallest learning rate')
  if l2 == max(l2s) and l2 > 0:
    edges.append('the largest L2')
  return Choice(
    schedule,
    lr,
    l2,
    steps,
    value,
    curve,
    converged,
    None if doubled is None else doubled - value,
    tuple(extended),
    ' and '.join(edges),
    better,
  )


def _extension(choice: Choice, lrs, l2s, max_steps, extended, max_extensions) -> Optional[tuple]:
  """('lr' | 'l2' | 'steps', new value, message) that moves `choice` off an edge, or None."""
  count = lambda what, word: sum(e.startswith(what) and f' {word} ' in e for e in extended)
  if choice.learning_rate == max(lrs) and count('learning rate', 'above') < max_extensions:
    new = _beyond(lrs, 'high')
    return 'lr', new, f'learning rate {new:g} added above {choice.learning_rate:g}'
  if choice.learning_rate == min(lrs) and count('learning rate', 'below') < max_extensions:
    new = _beyond(lrs, 'low')
    return 'lr', new, f'learning rate {new:g} added below {choice.learning_rate:g}'
  if choice.l2 == max(l2s) and choice.l2 > 0 and count('L2', 'beyond') < max_extensions:
    new = _beyond(l2s, 'high')
    return 'l2', new, f'L2 {new:g} added beyond {choice.l2:g}'
  weakest = min((l2 for l2 in l2s if l2 > 0), default=None)
  better = choice.better_unconverged
  weaker_scored_higher = better is not None and better['l2'] < choice.l2 == weakest
  if weakest is not None and (not choice.converged or weaker_scored_higher) and count('L2', 'below') < max_extensions:
    new = _beyond(l2s, 'low')
    why = 'no point met the rule' if not choice.converged else 'a weaker L2 scored higher without meeting it'
    return 'l2', new, f'L2 {new:g} added below {weakest:g}: {why}'
  if not choice.converged and choice.steps == max_steps and count('budget', 'above') < max_extensions:
    return 'steps', 2 * max_steps, f'budget {2 * max_steps} added above {max_steps}: the choice was still moving'
  return None


@dataclasses.dataclass(frozen=True)
class Check:
  """The rule applied to one fixed setting: validation accuracy at its steps and at the later budgets."""

  schedule: str
  steps: int
  val_accuracy: float
  later: dict  # str(budget) -> validation accuracy, for 2x, 4x, ... the steps
  converged: bool


def check(
  x,
  labels,
  train_idx,
  base_opts: engine.StaticOptions,
  schedules: Sequence[str],
  learning_rate: float,
  l2: float,
  steps: int,
  grid: Grid,
  seeds: Sequence[int],
  commonality_weight: float = 1.0,
  alternate_every: int = 1,
) -> Dict[str, Check]:
  """Whether a fixed (learning rate, L2, steps) meets the rule, on the same validation splits as tuning."""
  v = _Validator(x, labels, train_idx, base_opts, seeds, grid, commonality_weight, alternate_every)
  points = [(s, learning_rate, l2) for s in schedules]
  v.evaluate([k for p in points for k in [(*p, steps)] + v.later(p, steps)])
  out = {}
  for s, point in zip(schedules, points):
    out[s] = Check(
      s, steps, v.acc[(*point, steps)], {str(k[3]): v.acc[k] for k in v.later(point, steps)}, v.holds(point, steps)
    )
  return out
