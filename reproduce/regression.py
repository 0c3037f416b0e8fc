r"""Regression check of the reproduced accuracies against a committed baseline.

  python -m reproduce.regression            # recompute, compare with the baseline, exit 1 if a number moved
  python -m reproduce.regression --write    # recompute and overwrite the baseline (after an intended change)
  python -m reproduce.regression --config=experiments/configs/regression_facenet.py [--write]   # FaceNet's

The numbers are Table II's per-seed LFW accuracies (single-task, joint and alternating heads, under each
reading of the configuration), computed by the same code path as `python -m reproduce.table2`, on a fixed
offline configuration: experiments/configs/regression.py (dlib-resnet, LFW identities with >= 10 images) or
regression_facenet.py (facenet-casia, >= 20 images), fixed seeds. Each names its baseline file and the cache it
reads (`config.regression_cache`), built by `embed_command(config)`, e.g.

  python -m mir_jax.embed --dataset=lfw --backbone=dlib-resnet --subset=min_images10

A number "moves" when it differs from the baseline by more than the baseline's stated tolerance (per seed,
in percentage points); every moved number is listed. Tuning choices are read from experiments/tuned/, so a
refresh never silently re-tunes unless the stored choice no longer matches its context.
"""

import json
import os
import sys
import time
from typing import Dict, List

from absl import app
from absl import flags
from ml_collections import config_flags

from mir_jax import paths
from mir_jax import report
from reproduce import cli
from reproduce import context
from reproduce import table2

CONFIGS = ('experiments/configs/regression.py', 'experiments/configs/regression_facenet.py')


def embed_command(config) -> list:
  """The `python -m mir_jax.embed` argv that builds the cache `config` reads."""
  c = config.regression_cache
  return ['-m', 'mir_jax.embed', '--dataset=lfw', f'--backbone={c.backbone}', f'--subset={c.subset}']


def compute(config) -> Dict[str, dict]:
  """{'<row> / <column>': {'seeds': [...], 'values': [...]}} of every measured Table II cell."""
  ctx = context.Context(config, output_dir=os.path.join(paths.OUTPUT_DIR, 'regression'))
  table = table2.build(ctx)
  numbers = {}
  for rec in report.summarize(table):
    if rec['values']:
      numbers[f'{rec["row"]} / {rec["column"]}'] = {'seeds': rec['seeds'], 'values': rec['values']}
  if not numbers:
    raise RuntimeError('nothing was measured; is the embedding cache missing? (see the module docstring)')
  return numbers


def compare(baseline: dict, numbers: Dict[str, dict]) -> List[str]:
  """Every difference from the baseline beyond its tolerance, as readable lines ([] = no regression)."""
  tol = baseline['tolerance_pp']
  problems = []
  for key in sorted(set(baseline['numbers']) | set(numbers)):
    if key not in numbers:
      problems.append(f'{key}: in the baseline, not computed now')
      continue
    if key not in baseline['numbers']:
      problems.append(f'{key}: computed now, not in the baseline')
      continue
    old, new = baseline['numbers'][key], numbers[key]
    if old['seeds'] != new['seeds']:
      problems.append(f'{key}: seeds {new["seeds"]} != baseline {old["seeds"]}')
      continue
    for seed, a, b in zip(old['seeds'], old['values'], new['values']):
      if abs(a - b) > tol + 1e-9:
        problems.append(
          f'{key}, seed {seed}: {b:.4f} now, {a:.4f} in the baseline (|diff| {abs(a - b):.4f} > {tol:g} pp)'
        )
  return problems


def baseline_path(config) -> str:
  return os.path.join(paths.repo_root(), config.regression_baseline)


FLAGS = flags.FLAGS


def define_flags():
  config_flags.DEFINE_config_file(
    'config', 'experiments/configs/regression.py', 'The fixed configuration.', lock_config=True
  )
  flags.DEFINE_bool('write', False, 'Overwrite the baseline with the numbers computed now.')
  flags.DEFINE_string('baseline', None, "Baseline JSON (default: the configuration's regression_baseline).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.quiet_logs()
  path = FLAGS.baseline or baseline_path(FLAGS.config)
  start = time.perf_counter()
  numbers = compute(FLAGS.config)
  seconds = time.perf_counter() - start
  if FLAGS.write:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
      json.dump(
        {
          'command': ' '.join(['python -m reproduce.regression --write', *(a for a in sys.argv[1:] if a != '--write')]),
          'config': FLAGS.config.to_dict(),
          'tolerance_pp': FLAGS.config.regression_tolerance_pp,
          'numbers': numbers,
        },
        f,
        indent=1,
        sort_keys=True,
      )
      f.write('\n')
    print(f'wrote {len(numbers)} numbers to {path} ({seconds:.1f} s)')
    return
  with open(path) as f:
    baseline = json.load(f)
  problems = compare(baseline, numbers)
  if problems:
    print(f'{len(problems)} reproduced number(s) moved beyond {baseline["tolerance_pp"]:g} pp:')
    print('\n'.join(f'  {p}' for p in problems))
    sys.exit(1)
  print(f'all {len(numbers)} numbers within {baseline["tolerance_pp"]:g} pp of {path} ({seconds:.1f} s)')


if __name__ == '__main__':
  define_flags()
  app.run(main)
