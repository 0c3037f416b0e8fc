r"""Ablations of the readings the paper leaves open, each against the paper-literal head, same table format.

  python -m reproduce.ablations [--config=experiments/configs/reproduce.py] [--output_dir=outputs/reproduce]

On the LFW identity protocol, the jointly trained MIR head with one choice changed at a time:

  commonality_dim   1 (the paper's 128x1 W2: a scalar y) | d (one commonality unit per feature)
  subtract_from     input (c = x - y, the paper's words) | hidden (c = relu(x W1 + b1) - y)
  center            off | on (the paper's "centralize the data": subtract the training mean first)
  lambda            1 | 0.1 | 10 (weight of the commonality task); 0 keeps the architecture, drops the task
  optimizer         adam | sgd | momentum | rmsprop
  lr_schedule       the tuned reading's (warm-up then cosine decay) | constant

plus the single-task head for reference. Every variant is trained under each reading of `config.readings`;
under "tuned", learning rate, L2 and steps are chosen for each variant separately (so SGD is not judged at
Adam's learning rate). Each row's note gives the paired t-interval of its difference from the base row
over seeds.

Writes ablations.{md,csv,json,tex} to --output_dir and prints the markdown.
"""

import dataclasses

from absl import app

from experiments import paper_claims
from mir_jax import options
from mir_jax import report
from mir_jax.evaluators import significance
from reproduce import cli
from reproduce import context
from reproduce import embedding_store


def variants(base: options.Variant):
  """(name, variant) pairs: the base, then one change at a time."""
  out = [('base (paper-literal model)', base)]
  changes = [
    ('commonality_dim', 'd' if base.commonality_dim == '1' else '1'),
    ('subtract_from', 'hidden' if base.subtract_from == 'input' else 'input'),
    ('center', not base.center),
  ]
  changes += [('commonality_weight', w) for w in (0.0, 0.1, 10.0) if w != base.commonality_weight]
  changes += [('optimizer', o) for o in ('sgd', 'momentum', 'rmsprop') if o != base.optimizer]
  changes += [('lr_schedule', 'constant' if base.lr_schedule != 'constant' else 'warmup_cosine')]
  for field, value in changes:
    v = dataclasses.replace(base, **{field: value})
    if field == 'commonality_weight':
      shown = f'{value:g}'
    else:
      shown = value
    out.append((f'{"lambda" if field == "commonality_weight" else field} = {shown}', v))
  return out


def build(ctx: context.Context) -> report.Table:
  rows, notes = [], []
  chosen = [b.strip() for b in ctx.config.ablations.backbones.split(',') if b.strip()]
  for backbone in ctx.backbones():
    if chosen and backbone not in chosen:
      notes.append(
        f'{backbone}: not run (config.ablations.backbones={ctx.config.ablations.backbones!r}); '
        f'--config.ablations.backbones={backbone} runs it, tuning every variant its stored choices lack'
      )
      continue
    try:
      task = ctx.lfw_identity(backbone, num_seeds=ctx.config.ablations.num_seeds)
    except embedding_store.Unavailable as e:
      notes.append(f'{backbone}: {e}')
      continue
    key = embedding_store.data_key('lfw', backbone)
    for reading in [r.strip() for r in ctx.config.ablations.readings.split(',') if r.strip()]:
      base_values = None
      for name, variant in [('single-task (reference)', ctx.base_variant)] + variants(ctx.base_variant):
        schedule = 'single' if name.startswith('single-task') else 'joint'
        runs = ctx.trained(task, key, [schedule], reading, variant)
        values = runs.accuracy[schedule]
        note = f'{variant.label()}; {runs.describe(schedule)}; mean y {runs.mean_commonality[schedule].mean():.3f}'
        if name.startswith('base'):
          base_values = values
        elif base_values is not None and schedule == 'joint':
          t = significance.paired_t(values, base_values)
          ci = 'CI undefined' if t.ci_low is None else f'95% CI [{t.ci_low:+.2f}, {t.ci_high:+.2f}]'
          note += f'; vs base: {t.mean_diff:+.2f} pp ({ci}, paired over {t.n} seeds)'
        cells = {'LFW': report.Cell(values, task.seeds, f'Ac = TP/AP ({task.name})', flag=runs.flag(schedule))}
        rows.append(report.Row(f'{paper_claims.row_label(backbone)} [{reading}] {name}', cells, note=note))
  notes = [
    'Joint MIR heads on the LFW identity protocol, one choice changed at a time from the head read '
    'literally (BUILD.md, "The MIR head and its open choices"). The paper reports no ablation numbers, so every '
    'verdict is "no paper claim"; the notes give each change\'s paired difference from the base.'
  ] + notes
  return report.Table('Ablations: the open choices of the MIR head', ['LFW'], rows, notes=notes)


if __name__ == '__main__':
  cli.define_flags('ablations.{md,csv,json,tex}')
  app.run(cli.table_command('ablations', build))
