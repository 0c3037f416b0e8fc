r"""What switching the detector (`--aligner`) changes downstream: the stored tuning choices, and every table cell.

  python -m benchmarks.aligner_switch --out=benchmarks/results/aligner_switch.json \
      [--outputs=outputs/reproduce,outputs/reproduce_mtcnn_jax]

Choices: pairs every two files in --tuned_dir whose contexts are equal except for the detector that made the
embeddings (`context.data.align_config.detector`), so the same backbone, protocol, head variant, training
reading, grid and tuning seeds. For a tuned choice it compares the chosen learning rate, L2 and steps, the
validation accuracy there and the convergence verdict; for a paper-literal check, the verdict and the
validation accuracy. A file with no partner is listed as unpaired (not yet tuned for the other detector).

Tables (with --outputs, two `reproduce.all --output_dir`s, the first the reference): every cell that both
runs measured in table1/table2/ablations.json, paired by seed, as the second minus the first in points (mean
and largest absolute per-seed difference) with both cells' convergence flags. Nothing is trained here.
"""

import collections
import copy
import glob
import json
import os

from absl import app
from absl import flags

from benchmarks import machine
from mir_jax import paths

FLAGS = flags.FLAGS
TABLES = ('table1', 'table2', 'ablations')


def define_flags() -> None:
  # Only when run as a script: tests import this module beside other benchmarks that define --out.
  flags.DEFINE_string('tuned_dir', 'experiments/tuned', 'The stored choices (relative: to the repo).')
  flags.DEFINE_string('out', 'benchmarks/results/aligner_switch.json', 'Where to write the JSON.')
  flags.DEFINE_list('outputs', [], 'Two reproduce output directories to compare cell by cell, the reference first.')


def _without_detector(context: dict) -> str:
  rest = copy.deepcopy(context)
  del rest['data']['align_config']['detector']
  return json.dumps(rest, sort_keys=True)


def _record(stored: dict, schedule: str) -> dict:
  c = stored['choices'][schedule]
  if 'learning_rate' in c:  # a tuned choice (mir_jax.tuning.Choice)
    keys = ('learning_rate', 'l2', 'steps', 'val_accuracy', 'converged')
  else:  # a paper-literal check (mir_jax.tuning.Check)
    keys = ('steps', 'val_accuracy', 'converged')
  return {k: c[k] for k in keys}


def compare(tuned_dir: str) -> dict:
  groups = collections.defaultdict(dict)  # context without the detector -> {detector: file name}
  stored = {}
  for path in sorted(glob.glob(os.path.join(tuned_dir, '*.json'))):
    if path.endswith('.progress.json'):
      continue
    with open(path) as f:
      stored[path] = json.load(f)
    detector = stored[path]['context']['data']['align_config']['detector']
    groups[_without_detector(stored[path]['context'])][detector] = path
  pairs, unpaired = [], []
  for by_detector in groups.values():
    if len(by_detector) != 2:
      unpaired += [os.path.basename(p) for p in by_detector.values()]
      continue
    (da, pa), (db, pb) = sorted(by_detector.items())
    for schedule in sorted(stored[pa]['choices']):
      a, b = _record(stored[pa], schedule), _record(stored[pb], schedule)
      setting = [k for k in ('learning_rate', 'l2', 'steps') if k in a]
      pairs.append(
        {
          'files': [os.path.basename(pa), os.path.basename(pb)],
          'schedule': schedule,
          da: a,
          db: b,
          'same_setting': all(a[k] == b[k] for k in setting),
          'same_verdict': a['converged'] == b['converged'],
          'val_accuracy_diff_points': round(100 * (b['val_accuracy'] - a['val_accuracy']), 4),
        }
      )
  detectors = sorted({d for g in groups.values() for d in g})
  return {
    'detectors': detectors,
    'diff': f'{detectors[-1]} - {detectors[0]}' if len(detectors) == 2 else '',
    'pairs': pairs,
    'same_setting': sum(p['same_setting'] for p in pairs),
    'same_verdict': sum(p['same_verdict'] for p in pairs),
    'unpaired': sorted(unpaired),
  }


def compare_tables(reference_dir: str, other_dir: str) -> dict:
  cells = []
  for table in TABLES:
    runs = []
    for directory in (reference_dir, other_dir):
      with open(os.path.join(directory, f'{table}.json')) as f:
        runs.append({r['name']: r['cells'] for r in json.load(f)['rows']})
    for row in runs[0]:
      for column, a in runs[0][row].items():
        b = runs[1].get(row, {}).get(column)
        if not a['values'] or not b or not b['values']:
          continue
        seeds = a['seeds'] or list(range(len(a['values'])))
        if (b['seeds'] or list(range(len(b['values'])))) != seeds:
          raise ValueError(f'{table} {row!r} {column}: the two runs measured other seeds')
        diffs = [y - x for x, y in zip(a['values'], b['values'])]  # cells hold percentages
        cells.append(
          {
            'table': table,
            'row': row,
            'column': column,
            'seeds': len(seeds),
            'reference_mean': sum(a['values']) / len(seeds),
            'mean_diff_points': sum(diffs) / len(seeds),
            'max_abs_diff_points': max(abs(d) for d in diffs),
            'flags': [a['flag'], b['flag']],
          }
        )
  return {'reference': reference_dir, 'other': other_dir, 'cells': cells}


def main(argv):
  del argv
  tuned_dir = FLAGS.tuned_dir if os.path.isabs(FLAGS.tuned_dir) else os.path.join(paths.repo_root(), FLAGS.tuned_dir)
  result = compare(tuned_dir)
  for p in result['pairs']:
    d0, d1 = result['detectors']
    print(
      f'{p["files"][0][: -len(".json")]:<60} {p["schedule"]:<12} same setting {str(p["same_setting"]):<5} '
      f'same verdict {str(p["same_verdict"]):<5} val {p[d0]["val_accuracy"]:.4f} -> {p[d1]["val_accuracy"]:.4f}'
    )
  print(
    f'{len(result["pairs"])} pairs: {result["same_setting"]} with the same setting, {result["same_verdict"]} with the '
    f'same verdict; {len(result["unpaired"])} files unpaired'
  )
  if FLAGS.outputs:
    if len(FLAGS.outputs) != 2:
      raise app.UsageError(f'--outputs takes two directories, not {FLAGS.outputs}')
    result['tables'] = compare_tables(*FLAGS.outputs)
    for c in result['tables']['cells']:
      print(
        f'{c["table"]:<10} {c["row"][:58]:<58} {c["column"]:<16} {c["reference_mean"]:7.2f} '
        f'{c["mean_diff_points"]:+.2f} (max {c["max_abs_diff_points"]:.2f}) {" / ".join(c["flags"]).strip(" /")}'
      )
  machine.write_json(FLAGS.out, result)


if __name__ == '__main__':
  define_flags()
  app.run(main)
