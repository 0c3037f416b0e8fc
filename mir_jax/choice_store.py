"""Stored tuning choices and paper-literal checks, so that tables are regenerated without re-tuning.

One JSON file per (data, task, schedules, head variant, training reading). It records the context the
choice was made in (what made the embeddings, the task, the variant, the training settings, the grid and
the tuning seeds); its name ends in a digest of that context, and a file whose context no longer matches is
not used: the choice is made again (slow) and written beside it.
"""

import dataclasses
import hashlib
import json
import os
import time
from typing import Dict, Optional, Sequence, Set

from absl import logging

from mir_jax import options
from mir_jax import paths
from mir_jax import protocols
from mir_jax import readings
from mir_jax import runner
from mir_jax import tuning

READINGS = ('tuned', 'paper-literal')
# The train-block fields that do NOT enter a choice's context: the runner's (which schedules, which seeds)
# and what the reading itself sets (learning rate, L2, steps; the paper-literal check records those in
# 'literal'). Every other train field may change what a head learns, so a new one re-tunes by default.
NOT_IN_CONTEXT = ('schedules', 'seed', 'num_seeds', 'learning_rate', 'l2', 'steps')


def progress_path(path: str) -> str:
  """Where an unfinished tuning of the choice file `path` keeps the points it has trained (same context
  digest in the name, so a changed context starts afresh); commit it to carry a long tuning across machines."""
  return path[: -len('.json')] + '.progress.json'


def save(path: str, records: Dict[str, object], context: dict):
  """Writes tuning choices (or convergence checks) with the context they were made in."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(
      {'context': context, 'choices': {s: dataclasses.asdict(c) for s, c in records.items()}},
      f,
      indent=1,
      sort_keys=True,
    )
    f.write('\n')


def load(path: str, context: dict, kind=tuning.Choice) -> Optional[Dict[str, object]]:
  """The records of `kind` stored at `path`, or None when the file is missing, was made in another context
  or holds another kind of record (e.g. written before the convergence rule)."""
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    stored = json.load(f)
  if stored.get('context') != json.loads(json.dumps(context)):
    return None
  try:
    return {
      s: kind(**{k: tuple(v) if k == 'extended' else v for k, v in c.items()}) for s, c in stored['choices'].items()
    }
  except TypeError:
    return None


class ChoiceStore:
  """The readings of a config's train and tune blocks, stored under `directory` (relative: to the repo)."""

  def __init__(self, config, directory: str):
    self.config = config
    self.directory = directory if os.path.isabs(directory) else os.path.join(paths.repo_root(), directory)
    self.timings: Dict[str, float] = {}
    # Every choice file read back or written, for the provenance manifest (reproduce/provenance.py).
    self.used: Set[str] = set()

  def reading(
    self,
    name: str,
    task: protocols.Classification,
    data,
    data_key: str,
    schedules: Sequence[str],
    variant: options.Variant,
  ) -> readings.Reading:
    """The named reading with its convergence verdict. 'tuned' loads the stored choice or tunes and stores
    it; 'paper-literal' loads or makes the stored check of the paper's setting. `data` describes what made
    the embeddings (a cache's spec), `data_key` names them in the file name."""
    if name not in READINGS:
      raise ValueError(f'unknown reading {name!r}; choose one of {READINGS}')
    t = self.config.train
    grid = options.grid(self.config.tune, variant.optimizer)
    literal = readings.Setting(t.learning_rate, t.l2, t.steps)
    if name == 'paper-literal':
      variant = dataclasses.replace(variant, lr_schedule='constant')
    context = {
      'data': data,
      'task': task.description,
      'variant': dataclasses.asdict(variant),
      'train': {k: v for k, v in t.items() if k not in NOT_IN_CONTEXT},
      'grid': dataclasses.asdict(grid),
      'tuning_seeds': list(task.seeds[: grid.tuning_seeds]),
      'schedules': sorted(schedules),
    }
    if name == 'paper-literal':
      context['literal'] = dataclasses.asdict(literal)
    digest = hashlib.sha256(json.dumps(context, sort_keys=True).encode()).hexdigest()[:10]
    stem = f'{data_key}_{task.name}_{"-".join(sorted(schedules))}'
    path = os.path.join(self.directory, f'{stem}{"_literal" if name == "paper-literal" else ""}_{digest}.json')
    kind = tuning.Check if name == 'paper-literal' else tuning.Choice
    records = load(path, context, kind)
    if records is None:
      what = 'checking the paper-literal setting' if name == 'paper-literal' else 'tuning'
      logging.warning('No stored %s for %s; making it now (slow) and writing %s', what, task.name, path)
      print(
        f'{what} {sorted(schedules)} on {task.name} ({variant.label()}): nothing stored, this takes a '
        'while; it is written to ' + os.path.relpath(path, paths.repo_root())
      )
      start = time.perf_counter()
      opts = options.static_options(t, variant, len(task.class_names), task.x.shape[1])
      if name == 'paper-literal':
        records = runner.check(task, schedules, opts, literal, grid, variant.commonality_weight, t.alternate_every)
      else:
        records = runner.tune(
          task, schedules, opts, grid, variant.commonality_weight, t.alternate_every, progress_path(path)
        )
      self.timings[f'tune {os.path.basename(path)}'] = time.perf_counter() - start
      save(path, records, context)
      if os.path.exists(progress_path(path)):
        os.remove(progress_path(path))  # the choice holds every point's curve
    self.used.add(path)
    source = os.path.relpath(path, paths.repo_root())
    if name == 'paper-literal':
      return readings.literal_reading(literal.steps, literal.learning_rate, literal.l2, records, source)
    return readings.tuned_reading(records, source, variant.lr_schedule)
