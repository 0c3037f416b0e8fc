r"""Every table and figure in one process, sharing the trained heads: Table I, Table II, Figs. 2-3, ablations.

  python -m reproduce.all [--config=experiments/configs/reproduce.py] [--output_dir=outputs/reproduce]

The same as running the four commands one after the other, except that heads trained for one (e.g. the
LFW single-task and joint heads of Table I) are reused by the next. Writes every output of the four
commands plus all_timings.json (seconds per part: cache loading, tuning when no stored choice matches,
training) and prints the tables.
"""

from absl import app
from absl import flags

from mir_jax import report
from reproduce import ablations
from reproduce import cli
from reproduce import context
from reproduce import pca_figure
from reproduce import table1
from reproduce import table2


def run(ctx: context.Context, figure_seed: int = 0):
  """Builds and writes everything; returns {name: Table} plus the figure results."""
  tables = {'table1': table1.build(ctx), 'table2': table2.build(ctx), 'ablations': ablations.build(ctx)}
  for name, table in tables.items():
    report.write_all(table, ctx.output_dir, name, provenance=ctx.provenance_file)
  figures = pca_figure.build(ctx, figure_seed)
  return tables, figures


def _body(ctx):
  tables, figures = run(ctx, flags.FLAGS.figure_seed)
  return [report.render_summary(t) for t in tables.values()] + pca_figure.lines(figures)


if __name__ == '__main__':
  cli.define_flags('every table and figure', figure=True)
  app.run(lambda argv: cli.run_command('all', _body, argv))
