"""Training readings: what the paper leaves open about training a head, and how each reading fills it in.

A *reading* fixes the learning rate, L2 and steps of every schedule (BUILD.md, "Training heads fairly"):

  paper-literal  the paper's learning rate and L2 (0.001 each, TensorFlow's `l2 * l2_loss(W)`), Adam at a
                 constant rate, and our reading of what it does not state (steps, batch), the same for every
                 schedule. Whether it meets the convergence rule is checked (`tuning.check`) and shown.
  tuned          learning rate, L2 and steps chosen per schedule on a validation split carved from the
                 training split of the first seeds (`mir_jax.tuning`), by one rule for every head, under the
                 configured learning-rate schedule; stored by `mir_jax.choice_store` so that tables are
                 regenerated without re-tuning.
"""

import dataclasses
from typing import Dict, Optional

from mir_jax import engine
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
  # schedule -> {steps: mean validation accuracy} of its setting at every budget the rule trained: the
  # curve the report draws beside the training loss.
  validation: Dict[str, Dict[int, float]] = dataclasses.field(default_factory=dict)

  def setting(self, schedule: str) -> Setting:
    if schedule not in self.settings:
      raise KeyError(
        f'reading {self.name!r} has no setting for schedule {schedule!r} (it has '
        f'{sorted(self.settings)}); re-run the tuning with that schedule'
      )
    return self.settings[schedule]


def literal_reading(
  steps: int,
  learning_rate: float,
  l2: float,
  checks: Optional[Dict[str, tuning.Check]] = None,
  checked_in: str = '',
) -> Reading:
  """The paper's setting for every schedule (config.train's learning_rate and l2 hold the paper's numbers;
  `steps` is ours, the paper names none). `checks`: the
  convergence rule applied to this setting, per schedule (unchecked schedules are marked so), stored in
  the file `checked_in`."""
  s = Setting(learning_rate, l2, steps)
  checks = checks or {}
  evidence = {
    k: (
      f'validation Ac {100 * c.val_accuracy:.2f} at {c.steps} steps, '
      + ', '.join(f'{100 * a:.2f} at {b}' for b, a in sorted(c.later.items(), key=lambda i: int(i[0])))
    )
    for k, c in checks.items()
  }
  return Reading(
    'paper-literal',
    {k: s for k in engine.SCHEDULES},
    f'paper: lr {learning_rate:g}, L2 {l2:g}; constant rate, {steps} steps (not stated in the paper)'
    + (f'; rule checked in {checked_in}' if checked_in else ''),
    'constant',
    {k: c.converged for k, c in checks.items()},
    evidence,
    {k: {c.steps: c.val_accuracy, **{int(b): a for b, a in c.later.items()}} for k, c in checks.items()},
  )


def tuned_reading(choices: Dict[str, tuning.Choice], source: str, lr_schedule: str) -> Reading:
  evidence = {}
  for s, c in choices.items():
    parts = []
    curve = c.curve.get(f'({c.learning_rate:g}, {c.l2:g})', {})
    later = [(int(b), a) for b, a in curve.items() if int(b) > c.steps]
    if c.converged and later:
      parts.append(
        'validation Ac vs its steps: '
        + ', '.join(f'{b} steps {100 * (a - c.val_accuracy):+.2f} pp' for b, a in sorted(later))
      )
    elif not c.converged:
      half = curve.get(str(c.steps // 2))
      gain = '' if half is None else f', {100 * (c.val_accuracy - half):+.2f} pp over {c.steps // 2} steps'
      parts.append(f'not settled at the {c.steps}-step maximum{gain}')
    if c.better_unconverged:
      b = c.better_unconverged
      parts.append(
        f'lr {b["learning_rate"]:g}, L2 {b["l2"]:g} reached validation Ac '
        f'{100 * b["val_accuracy"]:.2f} at {b["steps"]} steps without meeting the rule'
      )
    if c.extended:
      parts.append('grid extended: ' + '; '.join(c.extended))
    if c.edge:
      parts.append(f"still on the grid's edge ({c.edge}) after {len(c.extended)} extension(s)")
    evidence[s] = '; '.join(parts)
  return Reading(
    'tuned',
    {s: Setting(c.learning_rate, c.l2, c.steps) for s, c in choices.items()},
    source,
    lr_schedule,
    {s: c.converged for s, c in choices.items()},
    evidence,
    {
      s: {int(b): a for b, a in c.curve.get(f'({c.learning_rate:g}, {c.l2:g})', {}).items()} for s, c in choices.items()
    },
  )
