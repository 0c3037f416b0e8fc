"""The heads a reproduce process has trained, so that `python -m reproduce.all` trains each group once.

Table I, Table II, the ablations' base row and the PCA figure share the LFW heads; `HeadMemo.trained`
returns the heads of a (task, schedule, reading, variant) trained earlier in the process, or trains them.
"""

import dataclasses
from typing import Dict, List, Optional, Sequence

import numpy as np

from mir_jax import choice_store
from mir_jax import options
from mir_jax import protocols
from mir_jax import readings
from mir_jax import runner


class Trained:
  """Heads of several schedules on one task, each trained in its own call (`HeadMemo.trained`)."""

  def __init__(self, by_schedule: Dict[str, runner.HeadRuns]):
    self.by_schedule = by_schedule
    self.accuracy = {s: r.accuracy[s] for s, r in by_schedule.items()}
    self.correct = {s: r.correct[s] for s, r in by_schedule.items()}
    self.mean_commonality = {s: r.mean_commonality[s] for s, r in by_schedule.items()}

  def setting(self, schedule: str) -> readings.Setting:
    return self.by_schedule[schedule].reading.setting(schedule)

  def converged(self, schedule: str) -> Optional[bool]:
    return self.by_schedule[schedule].reading.converged.get(schedule)

  def flag(self, schedule: str) -> str:
    """What the cell of this schedule's heads must say beside its number ('' when the rule was met)."""
    ok = self.converged(schedule)
    return 'not converged' if ok is False else 'convergence not checked' if ok is None else ''

  def describe(self, schedule: str) -> str:
    """'lr .., L2 .., N steps, schedule (source); the rule's evidence; final training loss and accuracy'."""
    s, runs = self.setting(schedule), self.by_schedule[schedule]
    reading = runs.reading
    verdict = {
      True: 'met the convergence rule',
      False: 'did NOT meet the convergence rule',
      None: 'convergence rule not checked',
    }[reading.converged.get(schedule)]
    evidence = reading.evidence.get(schedule, '')
    return (
      f'lr {s.learning_rate:g}, L2 {s.l2:g}, {s.steps} steps, {reading.lr_schedule} rate '
      f'({reading.source}); {verdict}'
      + (f' ({evidence})' if evidence else '')
      + f'; final training loss {np.mean(runs.train_loss[schedule]):.4f}, training Ac '
      f'{np.mean(runs.train_accuracy[schedule]):.2f}%'
    )

  def character(self, schedule: str, x) -> np.ndarray:
    return runner.character_features(self.by_schedule[schedule], schedule, x)


class HeadMemo:
  """Trains heads under the readings of `choices` (a `choice_store.ChoiceStore`), each group once."""

  def __init__(self, config, choices: choice_store.ChoiceStore, data_spec):
    self.config = config
    self.choices = choices
    self.data_spec = data_spec  # data key -> what made those embeddings (`EmbeddingStore.spec`)
    self._heads: Dict[tuple, runner.HeadRuns] = {}
    self.timings: Dict[str, float] = {}
    self.flops = 0.0  # of every head trained for the tables (not tuning): the engine's share of the peak

  def trained(
    self,
    task: protocols.Classification,
    data_key: str,
    schedules: Sequence[str],
    reading_name: str,
    variant: options.Variant,
  ) -> Trained:
    """The heads of `schedules` on `task` under a reading, trained now or earlier in this process.

    Each schedule trains in its own compiled call, so a schedule with a short step budget does not pay for
    a long one, and a schedule trained for one table is reused by the next.
    """
    t = self.config.train
    by_schedule = {}
    for schedule in schedules:
      key = (data_key, task.name, task.description, tuple(task.seeds), schedule, reading_name, variant)
      if key not in self._heads:
        reading = self.choices.reading(reading_name, task, self.data_spec(data_key), data_key, [schedule], variant)
        opts = options.static_options(t, variant, len(task.class_names), task.x.shape[1])
        runs = runner.train_heads(task, [schedule], reading, opts, variant.commonality_weight, t.alternate_every)
        self.timings[f'train {data_key} {task.name} {schedule} {reading_name} {variant.label()}'] = runs.seconds
        self.flops += runs.flops
        self._heads[key] = runs
      by_schedule[schedule] = self._heads[key]
    return Trained(by_schedule)

  def curves(self) -> List[dict]:
    """Per head group trained in this process: its training loss against steps (mean over seeds, and each
    seed's), the validation accuracy of its setting at every budget the convergence rule trained, and the
    rule's verdict; what the report plots to show that a head converged."""
    out = []
    for (data_key, task_name, _, seeds, schedule, reading_name, variant), runs in self._heads.items():
      # (seeds, blocks of log_every steps): the update's whole loss (L2 included) and its identity
      # cross-entropy, each averaged over the block.
      loss = np.asarray(runs.result.history['loss'], np.float64)
      ce = np.asarray(runs.result.history['ce'], np.float64)
      reading = runs.reading
      out.append(
        {
          'group': f'{data_key} {task_name} {schedule} {reading_name} {variant.label()}',
          'data_key': data_key,
          'task': task_name,
          'schedule': schedule,
          'reading': reading_name,
          'variant': variant.label(),
          'seeds': list(seeds),
          'setting': dataclasses.asdict(reading.setting(schedule)),
          'lr_schedule': reading.lr_schedule,
          'source': reading.source,
          'converged': reading.converged.get(schedule),
          'evidence': reading.evidence.get(schedule, ''),
          'loss_steps': [(i + 1) * runs.opts.log_every for i in range(loss.shape[1])],
          'loss_mean': np.nanmean(loss, axis=0).tolist(),
          'loss_per_seed': loss.tolist(),
          'ce_mean': np.nanmean(ce, axis=0).tolist(),
          'validation': {str(b): a for b, a in sorted(reading.validation.get(schedule, {}).items())},
          'test_accuracy': runs.accuracy[schedule].tolist(),
        }
      )
    return out
