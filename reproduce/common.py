"""What the reproduce commands share: finding caches, building protocols, training heads once per process.

A `Context` holds the configuration (experiments/configs/reproduce.py) and memoises every trained group of
heads, so `python -m reproduce.all` trains the LFW heads once for Table I, Table II, the ablations' baseline
and the PCA figure. Nothing here embeds images: a missing cache becomes a table cell that says which command
builds it.
"""

import dataclasses
import hashlib
import json
import os
import time
from typing import Dict, Optional, Sequence, Tuple

from absl import logging
import numpy as np

from mir_jax import cache
from mir_jax import embedding_sets
from mir_jax import engine
from mir_jax import heads
from mir_jax import paths
from mir_jax import protocols
from mir_jax import tuning
from mir_jax.evaluators import identification

OUTPUT_DIR = 'outputs/reproduce'


class Unavailable(Exception):
  """A cache (or the weights to build it) is missing; the message says how to supply it."""


@dataclasses.dataclass(frozen=True)
class Variant:
  """A head variant: what fixes the compiled program (the ablations change these)."""
  commonality_dim: int = 1  # 1, or 0 meaning "the embedding dimension d"
  subtract_from: str = 'input'
  center: bool = False
  optimizer: str = 'adam'
  commonality_weight: float = 1.0
  lr_schedule: str = 'warmup_cosine'  # of the tuned reading; the paper-literal reading is always constant

  def label(self) -> str:
    return (f'commonality_dim={"d" if self.commonality_dim == 0 else self.commonality_dim}, '
            f'subtract_from={self.subtract_from}, center={self.center}, optimizer={self.optimizer}, '
            f'lambda={self.commonality_weight:g}, lr_schedule={self.lr_schedule}')


class Context:
  """Configuration plus the caches and trained heads of one reproduce process."""

  def __init__(self, config, output_dir: str = OUTPUT_DIR):
    self.config = config
    self.output_dir = output_dir
    self.seeds = [config.seed + i for i in range(config.num_seeds)]
    self._sets: Dict[Tuple[str, str], embedding_sets.EmbeddingSet] = {}
    self._heads: Dict[tuple, heads.HeadRuns] = {}
    self.timings: Dict[str, float] = {}
    self.flops = 0.0  # of every head trained for the tables (not tuning): the engine's share of the peak
    self.data_specs: Dict[str, dict] = {}
    self.base_variant = Variant(
        commonality_dim=config.model.commonality_dim if config.model.commonality_dim == 1 else 0,
        subtract_from=config.model.subtract_from, center=config.model.center,
        optimizer=config.train.optimizer, commonality_weight=config.train.commonality_weight,
        lr_schedule=config.train.lr_schedule)

  # ---------------------------------------------------------------------------------------------------------
  # Data.

  def backbones(self):
    return [b.strip() for b in self.config.backbones.split(',') if b.strip()]

  def readings(self):
    return [r.strip() for r in self.config.readings.split(',') if r.strip()]

  def embeddings(self, dataset: str, backbone: str, manual_dir: str = '', subset: str = '', limit: int = 0,
                 **reader_kwargs) -> embedding_sets.EmbeddingSet:
    """The cached embeddings of `dataset` under `backbone` (built with those `mir_jax.embed` flags);
    raises Unavailable with the embed command that builds them."""
    key = (dataset, backbone, manual_dir, subset, limit, json.dumps(reader_kwargs, sort_keys=True))
    if key not in self._sets:
      from mir_jax import embed  # pylint: disable=g-import-not-at-top  (torch, dlib: only when used)
      from mir_jax.datasets import listing  # pylint: disable=g-import-not-at-top
      try:
        directory = embed.find_cache(dataset, backbone, data_dir=self.config.data_dir or None,
                                     manual_dir=manual_dir or None, subset=subset or None, limit=limit or None,
                                     reader_kwargs=reader_kwargs or None)
      except (cache.CacheError, listing.DatasetError, embed.UsageError) as e:
        raise Unavailable(str(e)) from None
      except (FileNotFoundError, RuntimeError, ImportError) as e:  # e.g. FaceNet weights absent offline
        raise Unavailable(f'{backbone} cannot run here: {e}') from None
      start = time.perf_counter()
      self._sets[key] = embedding_sets.load(str(directory))
      self.timings[f'load {os.path.basename(os.path.dirname(directory))}'] = time.perf_counter() - start
      spec = cache.read_info(directory)['spec']
      # What made the embeddings, not which subset of images was cached: a task built from the whole-LFW
      # cache and from a min_images10 cache is the same task, and shares its stored tuning.
      self.data_specs[self.data_key(dataset, backbone)] = {
          k: spec[k] for k in ('dataset', 'backbone_config', 'align_config', 'flip')}
    return self._sets[key]

  @staticmethod
  def data_key(dataset: str, backbone: str) -> str:
    return f'{dataset}_{backbone}'

  # ---------------------------------------------------------------------------------------------------------
  # Heads.

  def static_options(self, num_classes: int, dim: int, variant: Variant) -> engine.StaticOptions:
    t = self.config.train
    return engine.StaticOptions(
        num_classes=num_classes, commonality_dim=dim if variant.commonality_dim == 0 else variant.commonality_dim,
        subtract_from=variant.subtract_from, center=variant.center, optimizer=variant.optimizer,
        l2_form=t.l2_form, l2_params=t.l2_params, steps=1, batch_size=t.batch_size,
        lr_schedule=variant.lr_schedule, warmup_fraction=t.warmup_fraction)

  def grid(self, variant: Variant) -> tuning.Grid:
    g = self.config.tune
    # Plain SGD and momentum take steps of lr * gradient, not Adam's lr-sized ones: their useful learning
    # rates on unit-norm embeddings are 10-100x larger, so they get a grid of their own.
    lrs = g.sgd_learning_rates if variant.optimizer in ('sgd', 'momentum') else g.learning_rates
    return tuning.Grid.from_config(g, lrs)

  def reading(self, name: str, task: protocols.Classification, data_key: str, schedules: Sequence[str],
              variant: Variant) -> heads.Reading:
    """The named reading with its convergence verdict. 'tuned' loads the stored choice for this context or
    tunes and stores it; 'paper-literal' loads or makes the stored check of the paper's setting."""
    if name not in ('tuned', 'paper-literal'):
      raise ValueError(f'unknown reading {name!r}; choose tuned or paper-literal')
    grid = self.grid(variant)
    lit = self.config.literal
    literal = heads.Setting(lit.learning_rate, lit.l2, lit.steps)
    if name == 'paper-literal':
      variant = dataclasses.replace(variant, lr_schedule='constant')
    context = {'data': self.data_specs.get(data_key, data_key), 'task': task.description,
               'variant': dataclasses.asdict(variant), 'train': self.config.train.to_dict(),
               'grid': dataclasses.asdict(grid), 'tuning_seeds': self.seeds[:grid.tuning_seeds],
               'schedules': sorted(schedules)}
    if name == 'paper-literal':
      context['literal'] = dataclasses.asdict(literal)
    digest = hashlib.sha256(json.dumps(context, sort_keys=True).encode()).hexdigest()[:10]
    stem = f'{data_key}_{task.name}_{"-".join(sorted(schedules))}'
    path = os.path.join(self.config.tuned_dir, f'{stem}{"_literal" if name == "paper-literal" else ""}_{digest}.json')
    if not os.path.isabs(path):
      path = os.path.join(paths.repo_root(), path)
    kind = tuning.Check if name == 'paper-literal' else tuning.Choice
    records = heads.load_choices(path, context, kind)
    if records is None:
      what = 'checking the paper-literal setting' if name == 'paper-literal' else 'tuning'
      logging.warning('No stored %s for %s; making it now (slow) and writing %s', what, task.name, path)
      print(f'{what} {sorted(schedules)} on {task.name} ({variant.label()}): nothing stored, this takes a '
            'while; it is written to ' + os.path.relpath(path, paths.repo_root()))
      start = time.perf_counter()
      opts = self.static_options(len(task.class_names), task.x.shape[1], variant)
      if name == 'paper-literal':
        records = heads.check(task, schedules, opts, literal, grid, variant.commonality_weight,
                              self.config.train.alternate_every)
      else:
        records = heads.tune(task, schedules, opts, grid, variant.commonality_weight,
                             self.config.train.alternate_every)
      self.timings[f'tune {os.path.basename(path)}'] = time.perf_counter() - start
      heads.save_choices(path, records, context)
    source = os.path.relpath(path, paths.repo_root())
    if name == 'paper-literal':
      return heads.literal_reading(literal.steps, literal.learning_rate, literal.l2, records, source)
    return heads.tuned_reading(records, source, variant.lr_schedule)

  def train(self, task: protocols.Classification, data_key: str, schedules: Sequence[str], reading_name: str,
            variant: Optional[Variant] = None) -> 'Trained':
    """Trains (or returns the already trained) heads of `schedules` on `task` under a reading.

    Each schedule trains in its own compiled call, so a schedule with a short step budget does not pay for
    a long one, and a schedule trained for one table is reused by the next.
    """
    variant = variant or self.base_variant
    by_schedule = {}
    for schedule in schedules:
      key = (data_key, task.name, task.description, tuple(task.seeds), schedule, reading_name, variant)
      if key not in self._heads:
        reading = self.reading(reading_name, task, data_key, [schedule], variant)
        opts = self.static_options(len(task.class_names), task.x.shape[1], variant)
        runs = heads.train_classification(task, [schedule], reading, opts, variant.commonality_weight,
                                          self.config.train.alternate_every)
        self.timings[f'train {data_key} {task.name} {schedule} {reading_name} {variant.label()}'] = runs.seconds
        self.flops += runs.flops
        self._heads[key] = runs
      by_schedule[schedule] = self._heads[key]
    return Trained(by_schedule)

  # ---------------------------------------------------------------------------------------------------------
  # Protocols on a backbone's caches.

  def lfw_identity(self, backbone: str, num_seeds: Optional[int] = None) -> protocols.Classification:
    c = self.config.lfw
    return protocols.lfw_identity(self.embeddings('lfw', backbone, subset=c.subset), self.seeds[:num_seeds],
                                  c.min_images, c.train_fraction)

  def lfw_distractors(self, backbone: str) -> protocols.OpenSet:
    c = self.config.lfw_distractors
    return protocols.lfw_distractors(self.embeddings('lfw', backbone), c.probe_min_images,
                                     c.distractor_max_images, (c.head_min_images, c.head_max_images))

  def open_set_rank1(self, task: protocols.OpenSet, data_key: str, reading_name: str,
                     variant: Optional[Variant] = None):
    """Rank-1 of the original features (one value: no seed enters), of the MIR character features of joint
    heads trained on the task's head set (one per seed), those seeds (`lfw_distractors.num_seeds`) and the
    trained heads."""
    original = identification.megaface_rank1(task.probe_x, task.probe_labels, task.distractor_x,
                                             max_rank=1, dtype=np.float32)
    seeds = self.seeds[:self.config.lfw_distractors.num_seeds]
    head_task = open_set_head_task(task, seeds)
    runs = self.train(head_task, data_key, ['joint'], reading_name, variant)
    probe_c = runs.character('joint', task.probe_x)
    distractor_c = runs.character('joint', task.distractor_x)
    mir = [identification.megaface_rank1(p, task.probe_labels, d, max_rank=1, dtype=np.float32)
           for p, d in zip(probe_c, distractor_c)]
    return original, mir, seeds, runs


class Trained:
  """Heads of several schedules on one task, each trained in its own call (`Context.train`)."""

  def __init__(self, by_schedule: Dict[str, heads.HeadRuns]):
    self.by_schedule = by_schedule
    self.accuracy = {s: r.accuracy[s] for s, r in by_schedule.items()}
    self.correct = {s: r.correct[s] for s, r in by_schedule.items()}
    self.mean_commonality = {s: r.mean_commonality[s] for s, r in by_schedule.items()}

  def setting(self, schedule: str) -> heads.Setting:
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
    verdict = {True: 'met the convergence rule', False: 'did NOT meet the convergence rule',
               None: 'convergence rule not checked'}[reading.converged.get(schedule)]
    evidence = reading.evidence.get(schedule, '')
    return (f'lr {s.learning_rate:g}, L2 {s.l2:g}, {s.steps} steps, {reading.lr_schedule} rate '
            f'({reading.source}); {verdict}' + (f' ({evidence})' if evidence else '')
            + f'; final training loss {np.mean(runs.train_loss[schedule]):.4f}, training Ac '
              f'{np.mean(runs.train_accuracy[schedule]):.2f}%')

  def character(self, schedule: str, x) -> np.ndarray:
    return heads.character_features(self.by_schedule[schedule], schedule, x)


def open_set_head_task(task: protocols.OpenSet, seeds: Sequence[int]) -> protocols.Classification:
  """The head set as a classification task. The heads train on all of it (no probe or distractor enters);
  tuning carves its validation split from it, per identity (hence >= 2 images each). Its "test" split is
  the training set itself and is never reported."""
  labels = task.head_labels
  if (np.bincount(labels) < 2).any():
    raise ValueError('every head-set identity needs >= 2 images (tuning holds one out for validation)')
  everything = np.broadcast_to(np.arange(len(labels)), (len(seeds), len(labels)))
  desc = f'head set of {task.name}: {len(task.head_class_names)} identities, {len(labels)} images, all trained on'
  return protocols.Classification(f'{task.name}_head', task.head_x, labels, task.head_class_names, list(seeds),
                                  np.array(everything), np.array(everything), desc)


def quiet_logs():
  """Orbax and TFDS log every file at INFO; the tables are the output. `-v 0` brings the logs back."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)


def ytf_splits_file(manual_dir: str) -> str:
  """`splits.txt` beside the user's YTF frames, else the copy in the shared data."""
  for candidate in (os.path.join(manual_dir, 'splits.txt'), os.path.join(os.path.dirname(manual_dir.rstrip('/')),
                                                                        'splits.txt')):
    if os.path.isfile(candidate):
      return candidate
  shared = paths.shared_data_dir()
  if shared is not None and (shared / 'ytf' / 'splits.txt').is_file():
    return str(shared / 'ytf' / 'splits.txt')
  raise Unavailable(f'no YTF splits.txt beside {manual_dir} or in the shared data')


def define_flags(outputs: str, config: str = 'experiments/configs/reproduce.py'):
  """The flags every reproduce command takes (defined only when run as a script)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file('config', config, 'Reproduction configuration.')
  flags.DEFINE_string('output_dir', OUTPUT_DIR, f'Where {outputs} are written.')


def run_command(name: str, body, argv):
  """Runs body(ctx) -> lines to print for the command `name`, timing it into <output_dir>/<name>_timings.json."""
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  quiet_logs()
  start = time.perf_counter()
  ctx = Context(flags.FLAGS.config, flags.FLAGS.output_dir)
  for line in body(ctx):
    print(line)
  total = time.perf_counter() - start
  write_timings(ctx, name, total)
  print(f'{name}: done in {total:.1f} s; outputs in {ctx.output_dir}')


def table_command(name: str, build):
  """main() of a command that builds one `report.Table`, writes it in every format and prints its summary."""
  from mir_jax import report  # pylint: disable=g-import-not-at-top

  def body(ctx):
    table = build(ctx)
    report.write_all(table, ctx.output_dir, name)
    return [report.render_summary(table)]

  return lambda argv: run_command(name, body, argv)


def write_timings(ctx: Context, name: str, total: float):
  os.makedirs(ctx.output_dir, exist_ok=True)
  with open(os.path.join(ctx.output_dir, f'{name}_timings.json'), 'w') as f:
    train_seconds = sum(v for k, v in ctx.timings.items() if k.startswith('train '))
    json.dump({'total_seconds': total, 'parts': ctx.timings,
               # The heads' matmuls, forward and backward, of every update trained for the tables (not
               # tuning), and their rate over the training calls: to compare with a matmul peak
               # (`python -m benchmarks.train_speed` measures one).
               'train_seconds': train_seconds, 'train_gflop': ctx.flops / 1e9,
               'train_gflops_per_second': ctx.flops / 1e9 / train_seconds if train_seconds else None}, f, indent=1)
