r"""Table I: original features (b) against MIR character features (a), per backbone, beside the paper's rows.

  python -m reproduce.table1 [--config=experiments/configs/reproduce.py] [--output_dir=outputs/reproduce]

Rows: for each backbone of `config.backbones` and each training reading (tuned, paper-literal), "(b)" and
"(a)", then two sanity anchors on the LFW column (cosine 1-NN and logistic regression on the original
embeddings, same splits and seeds: `mir_jax.evaluators.anchors`); then the paper's own rows (DeepID2+,
FaceNet, DeepFace, BaiDu), printed as claims because no public weights for them exist here. Columns:

  LFW              Ac = TP/AP of a softmax head, protocol `lfw_identity` (>= 10 images, half split):
                   (b) the single-task head on the original embedding, (a) the jointly trained MIR head.
  YTF              Ac on YTF frames with held-out videos (`ytf_frames`), same heads.
  YTF pairs        10-fold verification accuracy on YTF's 5,000 video pairs: (b) original embeddings,
                   (a) character features of the (a) heads of the YTF column.
  MegaFace         challenge-1 rank-1 (set size `config.megaface.set_size`): (b) original, (a) character
                   features of a MIR head trained on `config.megaface.head_dataset` (no probe identity);
                   the images on the configured noise lists left out, and counted in the cells' notes.
  LFW-distractors  the MegaFace protocol on LFW (offline stand-in, named as such; `lfw_distractors`).

Each cell: mean +- std and 95% CI over seeds, the paper's number, the difference and a verdict; a cell
whose data is not here says how to supply it. The paper prints no row for dlib; the FaceNet rows (Sandberg's
512-D Inception-ResNet-v1, `paper_claims.SUBSTITUTES`) are compared with the paper's 128-D FaceNet row, as
labelled substitutes. Every measured backbone also gets the
paper's direction claim "(a) > (b)" tested per column with a paired t-interval over seeds.

Writes table1.{md,csv,json,tex} to --output_dir and prints the markdown.
"""

from typing import Dict, List

from absl import app
import numpy as np

from experiments import paper_claims
from mir_jax import protocols
from mir_jax import report
from mir_jax.evaluators import anchors
from mir_jax.evaluators import open_set
from mir_jax.evaluators import ytf_pairs
from reproduce import cli
from reproduce import context
from reproduce import embedding_store

COLUMNS = ('LFW', 'YTF', 'YTF pairs', 'MegaFace', 'LFW-distractors')
_AC = 'Ac = TP/AP, identity classification'
_HOW = {
  'YTF': (
    'download YouTube Faces (aligned_images_DB and splits.txt, https://www.cs.tau.ac.il/~wolf/ytfaces/), '
    'run `python -m mir_jax.embed --dataset=ytf --backbone={backbone} --manual_dir=<YTF root>` and pass '
    '--config.ytf.manual_dir=<YTF root>'
  ),
  'MegaFace': (
    'arrange a copy of MegaFace challenge 1 as BUILD.md "Datasets" shows, run `python -m mir_jax.embed '
    '--dataset=megaface --backbone={backbone} --manual_dir=<root> --reader_option=set_size={set_size}` '
    'and pass --config.megaface.manual_dir=<root>'
  ),
}


def _cells_unavailable(columns, reason: str, paper: Dict[str, float]) -> Dict[str, report.Cell]:
  return {
    c: report.Cell(paper=paper.get(c), paper_metric=paper_claims.PAPER_METRIC if c in paper else '', reason=reason)
    for c in columns
  }


def _paper_row(backbone: str, which: str) -> Dict[str, float]:
  """The paper's numbers a substitute backbone's row is compared with ({} for dlib)."""
  if backbone not in paper_claims.SUBSTITUTES:
    return {}
  return {c: paper_claims.claim('I', f'FaceNet ({which})', c).value for c in paper_claims.COLUMNS}


def measured_rows(ctx: context.Context, backbone: str, reading: str) -> List[report.Row]:
  """The (b) and (a) rows of one backbone under one training reading."""
  tag = f' [{reading}]'
  names = {w: f'{paper_claims.row_label(backbone)} ({w}){tag}' for w in ('b', 'a')}
  paper = {w: _paper_row(backbone, w) for w in ('b', 'a')}
  cells = {'b': {}, 'a': {}}
  note = paper_claims.substitute_note(backbone)
  try:
    lfw = ctx.lfw_identity(backbone)
  except embedding_store.Unavailable as e:
    reason = str(e)
    return [report.Row(names[w], _cells_unavailable(COLUMNS, reason, paper[w]), note=note) for w in ('b', 'a')]
  key = embedding_store.data_key('lfw', backbone)

  # LFW: Ac of the single-task head (b) and the joint MIR head (a) on the same splits and seeds.
  _identity_cells(ctx, lfw, key, reading, 'LFW', cells, paper)

  # YTF frames and pairs, MegaFace: from caches of a user's copy, else how to supply them.
  _ytf(ctx, backbone, reading, cells, paper)
  _megaface(ctx, backbone, reading, cells, paper)

  # LFW-distractors: the MegaFace protocol on LFW images.
  task = ctx.lfw_distractors(backbone)
  original, mir, seeds, heads = _open_set_rank1(ctx, task, key, reading, f'LFW-distractors {backbone} {reading}')
  metric = 'rank-1 identification, MegaFace challenge-1 protocol on LFW (stand-in)'
  cells['b']['LFW-distractors'] = report.Cell(
    [100 * original['rank1']] * len(seeds),
    seeds,
    metric,
    note=f'{task.description}. The original features do not depend on the seed: one value, repeated per seed '
    'so that (a) - (b) pairs by seed.',
  )
  cells['a']['LFW-distractors'] = report.Cell(
    [100 * m['rank1'] for m in mir],
    seeds,
    metric,
    note=f'MIR heads on the head set: {heads.describe("joint")}.',
    flag=heads.flag('joint'),
  )
  return [report.Row(names[w], cells[w], note=note) for w in ('b', 'a')]


def _identity_cells(ctx, task, key, reading, column, cells, paper):
  """The (b) single-task and (a) joint heads' Ac cells of an identity column; returns the heads."""
  runs = ctx.trained(task, key, ['single', 'joint'], reading)
  for w, schedule in (('b', 'single'), ('a', 'joint')):
    cells[w][column] = report.Cell(
      runs.accuracy[schedule],
      task.seeds,
      f'{_AC} ({task.name})',
      paper[w].get(column),
      paper_claims.PAPER_METRIC if paper[w] else '',
      note=f'{task.name}: {task.description}. Heads: {runs.describe(schedule)}.',
      flag=runs.flag(schedule),
    )
  return runs


def anchor_rows(ctx: context.Context, backbone: str) -> List[report.Row]:
  """Sanity rows: cosine 1-NN and logistic regression on the original embeddings, on the LFW column's
  splits and seeds (none when the cache is missing: the measured rows say why)."""
  try:
    lfw = ctx.lfw_identity(backbone)
  except embedding_store.Unavailable:
    return []
  c, scores = anchors.choose_c(lfw, ctx.config.anchors.logistic_cs, ctx.config.tune.val_fraction)
  values = anchors.run(lfw, c)
  chosen = (
    f"C = {c:g} chosen on a validation split of seed {lfw.seeds[0]}'s training split (validation Ac "
    + ', '.join(f'{s:.2f} at C = {k:g}' for k, s in scores.items())
    + ')'
  )
  how = {
    'cosine 1-NN': 'nearest training embedding by cosine similarity',
    'logistic regression': f'scikit-learn LogisticRegression (lbfgs, L2, {chosen})',
  }
  return [
    report.Row(
      f'{paper_claims.row_label(backbone)} (b) features, {name} (anchor)',
      {
        'LFW': report.Cell(
          values[name], lfw.seeds, f'{_AC} ({lfw.name})', note=f'{lfw.name}: {how[name]}; no head, no training reading.'
        )
      },
      note='A sanity anchor, not a paper row: what a simple classifier reaches on the same (b) features; '
      'a softmax head far below it has not fit them.',
    )
    for name in anchors.ANCHORS
  ]


def _open_set_rank1(ctx, task, key, reading, label):
  """`open_set.run` with joint heads trained on the task's head set, one per seed of
  `lfw_distractors.num_seeds`; returns (original, per-head results, those seeds, the heads). Rank-1
  against the distractor-set size goes to the process's curves under `label`, for the report."""
  seeds = ctx.seeds[: ctx.config.lfw_distractors.num_seeds]
  heads = ctx.trained(open_set.head_task(task, seeds), key, ['joint'], reading)
  original, mir, by_size = open_set.run(task, lambda x: heads.character('joint', x), ctx.config.open_set_curve_sizes)
  ctx.curves.setdefault('open_set', []).append(
    {'label': label, 'task': task.description, 'seeds': list(seeds), 'converged': heads.converged('joint'), **by_size}
  )
  return original, mir, seeds, heads


def _ytf(ctx, backbone, reading, cells, paper):
  c = ctx.config.ytf
  try:
    ds = ctx.embeddings.get('ytf', backbone, manual_dir=c.manual_dir)
  except embedding_store.Unavailable as e:
    how = _HOW['YTF'].format(backbone=backbone)
    for w in ('b', 'a'):
      for column in ('YTF', 'YTF pairs'):
        cells[w][column] = report.data_not_supplied(
          'YouTube Faces',
          how,
          paper=paper[w].get('YTF') if column == 'YTF' else None,
          paper_metric=paper_claims.PAPER_METRIC if paper[w] and column == 'YTF' else '',
          note=f'looked for the cache: {" ".join(str(e).split())}',
        )
    return
  key = embedding_store.data_key('ytf', backbone)
  task = protocols.ytf_frames(ds, ctx.seeds, c.min_videos, c.frames_per_video or None)
  runs = _identity_cells(ctx, task, key, reading, 'YTF', cells, paper)
  from mir_jax.datasets import listing  # pylint: disable=g-import-not-at-top
  from mir_jax.datasets import ytf as ytf_reader  # pylint: disable=g-import-not-at-top

  try:
    # Official counts (10 splits x 250 + 250) unless config.ytf.official_counts is off (a fixture, a subset).
    counts = {} if c.official_counts else {'num_folds': None, 'same_per_fold': None}
    pairs = ytf_reader.read_splits(
      ytf_pairs.splits_file(c.manual_dir),
      skip_missing=True,
      root=c.manual_dir,
      errata=c.splits_errata or None,
      **counts,
    )
    # Only reading and matching the pairs may fail into a cell; an error while scoring them is a bug.
    result = ytf_pairs.run(ds, pairs, lambda x: runs.character('joint', x))
  except (FileNotFoundError, listing.DatasetError, protocols.NoMatchingPairs) as e:
    for w in ('b', 'a'):
      cells[w]['YTF pairs'] = report.Cell(reason=f'YTF pair protocol not available: {e}')
    return
  metric = f'YTF pair verification accuracy ({result.num_folds}-fold)'
  if c.splits_errata:
    result.accounting += f' splits.txt rows replaced by those of {c.splits_errata}.'
  cells['b']['YTF pairs'] = report.Cell([result.original] * len(ctx.seeds), ctx.seeds, metric, note=result.accounting)
  cells['a']['YTF pairs'] = report.Cell(
    result.mir,
    ctx.seeds,
    metric,
    note=f'{result.accounting} (a): frames mapped by the YTF-column heads, '
    'which trained on frames of people that also appear in the pairs.',
    flag=runs.flag('joint'),
  )


def _megaface(ctx, backbone, reading, cells, paper):
  c = ctx.config.megaface
  try:
    ds = ctx.embeddings.get('megaface', backbone, manual_dir=c.manual_dir, set_size=c.set_size)
    head = ctx.embeddings.get(
      c.head_dataset, backbone, manual_dir=c.head_manual_dir, subset=c.head_subset, limit=c.head_limit
    )
  except embedding_store.Unavailable as e:
    how = _HOW['MegaFace'].format(backbone=backbone, set_size=c.set_size)
    for w in ('b', 'a'):
      cells[w]['MegaFace'] = report.data_not_supplied(
        'MegaFace',
        how,
        paper=paper[w].get('MegaFace'),
        paper_metric=paper_claims.PAPER_METRIC if paper[w] else '',
        note=f'looked for the cache: {" ".join(str(e).split())}',
      )
    return
  try:
    noise, noise_note = _megaface_noise(c, ds)
    task = protocols.megaface(ds, head, noise=noise)
  except ValueError as e:  # e.g. the head set shares identities with the probes, or a noise list is unreadable
    for w in ('b', 'a'):
      cells[w]['MegaFace'] = report.Cell(
        paper=paper[w].get('MegaFace'),
        paper_metric=paper_claims.PAPER_METRIC if paper[w] else '',
        reason=f'MegaFace protocol not applicable to the supplied data: {e}',
      )
    return
  original, mir, seeds, heads = _open_set_rank1(
    ctx, task, embedding_store.data_key(c.head_dataset, backbone), reading, f'MegaFace {backbone} {reading}'
  )
  metric = f'MegaFace challenge-1 rank-1, {c.set_size} distractors'
  cells['b']['MegaFace'] = report.Cell(
    [100 * original['rank1']] * len(seeds),
    seeds,
    metric,
    paper['b'].get('MegaFace'),
    paper_claims.PAPER_METRIC if paper['b'] else '',
    note=noise_note,
  )
  cells['a']['MegaFace'] = report.Cell(
    [100 * m['rank1'] for m in mir],
    seeds,
    metric,
    paper['a'].get('MegaFace'),
    paper_claims.PAPER_METRIC if paper['a'] else '',
    note=f'{task.description}. Heads: {heads.describe("joint")}.',
    flag=heads.flag('joint'),
  )


def _megaface_noise(c, ds):
  """(rows of the MegaFace set on `c`'s noise lists, what was removed in words), or (None, '') when
  neither `c.facescrub_noise_list` nor `c.megaface_noise_list` is set."""
  lists = [('probe', c.facescrub_noise_list), ('distractor', c.megaface_noise_list)]
  if not any(path for _, path in lists):
    return None, ''
  from mir_jax.datasets import megaface as megaface_reader  # pylint: disable=g-import-not-at-top

  if ds.image_ids is None:
    raise ValueError('the noise lists name images, and this MegaFace set has no image ids')
  noise, removed = np.zeros(len(ds.labels), bool), []
  for role, path in lists:
    if path:
      entries = megaface_reader.read_noise_list(path)
      on_list = megaface_reader.noise_mask(ds.image_ids, entries, role)
      noise |= on_list
      removed.append(f'{on_list.sum()} {role} images named by {path} ({len(entries)} entries)')
  return noise, f'Noise lists applied before scoring, removed: {"; ".join(removed)}.'


def build(ctx: context.Context) -> report.Table:
  rows, directions = [], []
  for backbone in ctx.backbones():
    for reading in ctx.readings():
      b, a = measured_rows(ctx, backbone, reading)
      rows += [b, a]
      directions += [report.Direction(a.name, b.name, c) for c in COLUMNS]
    rows += anchor_rows(ctx, backbone)
  claims = paper_claims.claims_only_table('I')
  rows += claims.rows
  directions += claims.directions
  notes = [
    f'Paper metric: {paper_claims.PAPER_METRIC}. Our LFW/YTF columns measure the same quantity on our '
    'stated protocols; MegaFace and LFW-distractors are rank-1 identification; YTF pairs is verification.',
    'Readings: "tuned" = learning rate, L2 and steps chosen per schedule on validation data carved from the '
    'training split; "paper-literal" = the paper\'s learning rate and L2 (0.001 each) with our step count '
    f'({ctx.config.train.steps}). See BUILD.md, "Training heads fairly".',
    f'Seeds: {ctx.seeds[0]}..{ctx.seeds[-1]}; each seed draws its own split and initialisation.',
  ]
  return report.Table(
    'Table I: original features (b) vs MIR character features (a)', list(COLUMNS), rows, directions, notes=notes
  )


if __name__ == '__main__':
  cli.define_flags('table1.{md,csv,json,tex}')
  app.run(cli.table_command('table1', build))
