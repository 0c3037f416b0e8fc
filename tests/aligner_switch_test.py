"""benchmarks/aligner_switch.py: pairing stored choices across detectors, and table cells across runs."""

import copy
import json

import pytest

from benchmarks import aligner_switch


def _context(detector, variant='base'):
  return {
    'data': {'align_config': {'detector': detector, 'min_face_size': 20}, 'backbone_config': {'backbone': 'b'}},
    'task': 'identities',
    'variant': {'name': variant},
  }


def _choice(lr, steps, acc, converged=True):
  return {'learning_rate': lr, 'l2': 0.0, 'steps': steps, 'val_accuracy': acc, 'converged': converged, 'curve': {}}


def _write(path, context, choices):
  path.write_text(json.dumps({'context': context, 'choices': choices}))


def test_pairs_files_whose_contexts_differ_only_in_the_detector(tmp_path):
  _write(tmp_path / 'a_1.json', _context('torch'), {'joint': _choice(0.1, 4000, 0.99)})
  _write(tmp_path / 'a_2.json', _context('jax'), {'joint': _choice(0.1, 8000, 0.995, converged=False)})
  _write(tmp_path / 'b_1.json', _context('torch', 'other'), {'joint': _choice(0.1, 4000, 0.9)})
  (tmp_path / 'a_2.progress.json').write_text('{}')  # an unfinished tuning is not a choice

  result = aligner_switch.compare(str(tmp_path))

  assert result['detectors'] == ['jax', 'torch']
  assert result['unpaired'] == ['b_1.json']
  (pair,) = result['pairs']
  assert pair['files'] == ['a_2.json', 'a_1.json']
  assert not pair['same_setting'] and not pair['same_verdict']
  assert pair['val_accuracy_diff_points'] == pytest.approx(-0.5)
  assert pair['jax']['steps'] == 8000 and pair['torch']['steps'] == 4000


def test_tables_are_compared_cell_by_cell_and_seed_by_seed(tmp_path):
  cell = {'values': [99.0, 98.0], 'seeds': [0, 1], 'flag': ''}
  table = {'rows': [{'name': 'head', 'cells': {'LFW': cell, 'YTF': {'values': [], 'seeds': [], 'flag': ''}}}]}
  other = copy.deepcopy(table)
  other['rows'][0]['cells']['LFW'] = {'values': [99.5, 97.0], 'seeds': [0, 1], 'flag': 'not converged'}
  for name, content in (('ref', table), ('new', other)):
    (tmp_path / name).mkdir()
    for stem in aligner_switch.TABLES:
      (tmp_path / name / f'{stem}.json').write_text(json.dumps(content))

  result = aligner_switch.compare_tables(str(tmp_path / 'ref'), str(tmp_path / 'new'))

  assert len(result['cells']) == len(aligner_switch.TABLES)  # the unmeasured YTF cell is left out
  c = result['cells'][0]
  assert c['mean_diff_points'] == pytest.approx(-0.25)
  assert c['max_abs_diff_points'] == pytest.approx(1.0)
  assert c['flags'] == ['', 'not converged']

  other['rows'][0]['cells']['LFW']['seeds'] = [0, 2]
  for stem in aligner_switch.TABLES:
    (tmp_path / 'new' / f'{stem}.json').write_text(json.dumps(other))
  with pytest.raises(ValueError, match='other seeds'):
    aligner_switch.compare_tables(str(tmp_path / 'ref'), str(tmp_path / 'new'))
