"""The command-line side every reproduce command shares: its flags, running it, timing it, recording what
produced its outputs."""

import json
import os
import time

from absl import app
from absl import flags
from absl import logging

from mir_jax import paths
from reproduce import context


def define_flags(outputs: str, config: str = 'experiments/configs/reproduce.py', figure: bool = False):
  """The flags every reproduce command takes (defined only when run as a script); `figure`: also the PCA
  figure's --figure_seed."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  config_flags.DEFINE_config_file('config', config, 'Reproduction configuration.', lock_config=True)
  flags.DEFINE_string('output_dir', paths.OUTPUT_DIR, f'Where {outputs} are written.')
  if figure:
    flags.DEFINE_integer('figure_seed', 0, "Seed of the rule choosing the PCA figure's identities and photos.")


def quiet_logs():
  """Orbax and TFDS log every file at INFO; the tables are the output. `-v 0` brings the logs back."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)


def run_command(name: str, body, argv):
  """main() of the command `name`: runs body(ctx) -> lines to print on a Context of the flags (`run`)."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  quiet_logs()
  run(name, body, context.Context(flags.FLAGS.config, flags.FLAGS.output_dir))


def run(name: str, body, ctx: context.Context):
  """Runs body(ctx) -> lines to print, timing it into <output_dir>/<name>_timings.json and recording what
  produced its outputs in <output_dir>/<name>.provenance.json."""
  from reproduce import provenance  # pylint: disable=g-import-not-at-top

  # The code that runs is the code at the start; tuning files written on the way make the tree dirty.
  started, git = provenance.now(), provenance.git_state()
  start = time.perf_counter()
  ctx.provenance_file = provenance.file_name(name)
  for line in body(ctx):
    print(line)
  total = time.perf_counter() - start
  write_timings(ctx, name, total)
  write_curves(ctx, name)
  manifest = provenance.collect(name, ctx=ctx, total_seconds=total, started=started, git=git)
  provenance.write(os.path.join(ctx.output_dir, ctx.provenance_file), manifest)
  print(f'{name}: done in {total:.1f} s; outputs in {ctx.output_dir}')


def table_body(name: str, build):
  """The body (for `run`) of a command that builds one `report.Table`, writes it in every format and returns
  its summary."""
  from mir_jax import report  # pylint: disable=g-import-not-at-top

  def body(ctx):
    table = build(ctx)
    report.write_all(table, ctx.output_dir, name, provenance=ctx.provenance_file)
    return [report.render_summary(table)]

  return body


def table_command(name: str, build):
  """main() of a command that builds one `report.Table` (`table_body`)."""
  return lambda argv: run_command(name, table_body(name, build), argv)


def write_timings(ctx: context.Context, name: str, total: float):
  os.makedirs(ctx.output_dir, exist_ok=True)
  timings = ctx.timings
  flops = ctx.heads.flops
  with open(os.path.join(ctx.output_dir, f'{name}_timings.json'), 'w') as f:
    train_seconds = sum(v for k, v in timings.items() if k.startswith('train '))
    json.dump(
      {
        'total_seconds': total,
        'parts': timings,
        # The heads' matmuls, forward and backward, of every update trained for the tables (not
        # tuning), and their rate over the training calls: to compare with a matmul peak
        # (`python -m benchmarks.train_speed` measures one).
        'train_seconds': train_seconds,
        'train_gflop': flops / 1e9,
        'train_gflops_per_second': flops / 1e9 / train_seconds if train_seconds else None,
      },
      f,
      indent=1,
    )


def write_curves(ctx: context.Context, name: str):
  """<output_dir>/<name>_curves.json: what the report plots beside the tables (`Context.all_curves`)."""
  with open(os.path.join(ctx.output_dir, f'{name}_curves.json'), 'w') as f:
    json.dump(ctx.all_curves(), f)
