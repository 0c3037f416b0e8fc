"""The provenance manifest (reproduce/provenance.py): what it records, and what `check` finds changed since."""

import hashlib
import json
import os

import pytest
import reproduce_test

from mir_jax import paths
from reproduce import cli
from reproduce import context
from reproduce import provenance
from reproduce import table2

WEIGHTS_NAME = 'fake_weights.dat'


def fake_cache(root, name='lfw_fake_0123456789ab'):
  """A cache directory with the files `read_info` and `is_complete` look at (no shards)."""
  directory = root / name / '1.0.0'
  directory.mkdir(parents=True)
  spec = {
    'dataset': 'lfw',
    'backbone_config': {'backbone': 'fake', 'weights': {'name': WEIGHTS_NAME, 'sha256': 'ab' * 32, 'size': 5}},
    'align_config': {'detector': 'none'},
    'reader_options': {'subset': None},
    'flip': False,
  }
  info = {'spec': spec, 'key': name[-12:], 'records_fingerprint': '60318f33412adc14', 'completed_at': 'then'}
  (directory / 'mir_cache.json').write_text(json.dumps(info))
  (directory / 'skipped_images.json').write_text('{}')
  (directory / 'dataset_info.json').write_text('{}')
  return directory


@pytest.fixture
def stored(tmp_path, monkeypatch):
  """A manifest written for a run that read one cache (with its weights), one protocol and one tuning file."""
  weights = tmp_path / WEIGHTS_NAME
  weights.write_bytes(b'12345')
  monkeypatch.setattr(provenance, '_locate_weights', lambda name: weights if name == WEIGHTS_NAME else None)
  tuning = tmp_path / 'tuned' / 'lfw_fake_lfw_identity_joint_0000000000.json'
  tuning.parent.mkdir()
  tuning.write_text('{"choices": {}}\n')
  pairs = tmp_path / 'pairs.txt'
  pairs.write_text('10\t300\n')
  cache = fake_cache(tmp_path / 'data_cache')
  manifest = provenance.collect(
    'table9',
    config={'a': 1},
    caches=[cache],
    tuning_files=[tuning],
    protocol_files=[pairs],
    timings={'train x': 1.5},
    total_seconds=2.0,
  )
  path = tmp_path / 'out' / provenance.file_name('table9')
  provenance.write(path, manifest)
  return path, {'weights': weights, 'tuning': tuning, 'pairs': pairs, 'cache': cache}


def test_manifest_records_what_produced_the_result(stored):
  path, files = stored
  m = json.loads(path.read_text())
  assert path.name == 'table9.provenance.json'
  assert m['schema'] == 1 and m['name'] == 'table9' and m['config'] == {'a': 1}
  assert m['seconds'] == {'total': 2.0, 'parts': {'train x': 1.5}}
  assert m['started'][:4].isdigit() and m['ended'][-6] in '+-'  # ISO 8601 with the zone
  assert m['packages']['numpy'] != 'not installed' and m['packages']['jax'] != 'not installed'
  assert m['device']['cpu_count'] == os.cpu_count() and m['device']['platform'] == 'cpu'
  assert len(m['git']['commit']) == 40 or m['git']['commit'].startswith('unavailable')
  (cache,) = m['caches']
  assert cache['name'] == 'lfw_fake_0123456789ab' and cache['key'] == '0123456789ab'
  assert cache['backbone_config']['backbone'] == 'fake' and cache['align_config'] == {'detector': 'none'}
  assert cache['images'] == {'records_fingerprint': '60318f33412adc14'}
  (weights,) = m['weights']
  assert weights['path'] == str(files['weights']) and weights['cache_sha256'] == 'ab' * 32
  assert weights['sha256'] == hashlib.sha256(b'12345').hexdigest()
  (tuning,) = m['tuning_files']
  assert tuning['path'] == str(files['tuning'])
  assert tuning['sha256'] == hashlib.sha256(files['tuning'].read_bytes()).hexdigest()
  assert [f['path'] for f in m['protocol_files']] == [str(files['pairs'])]


def test_fresh_manifest_matches(stored):
  path, _ = stored
  assert provenance.check(path) == []
  assert provenance.format_check(path) == 'matches'


def test_check_reports_a_changed_tuning_file(stored):
  path, files = stored
  files['tuning'].write_text('{"choices": {"joint": "another"}}\n')
  (line,) = provenance.check(path)
  assert line.startswith(f'tuning file {files["tuning"]}: sha256 differs')


def test_check_reports_a_changed_commit(stored):
  path, _ = stored
  m = json.loads(path.read_text())
  if m['git']['commit'].startswith('unavailable'):
    pytest.skip('this checkout has no git history to compare with')
  m['git']['commit'] = '0' * 40  # as if made at another commit
  path.write_text(json.dumps(m))
  (line,) = provenance.check(path)
  assert line == f'git commit: manifest 0000000..., now {provenance.git_state()["commit"][:7]}...'
  assert provenance.format_check(path) == f'1 difference(s) from now:\n  {line}'


def test_check_reports_missing_weights_and_cache(stored):
  path, files = stored
  files['weights'].unlink()
  for f in files['cache'].iterdir():
    f.unlink()
  assert provenance.check(path) == [
    f'weights {files["weights"]}: missing now',
    f'cache lfw_fake_0123456789ab: {files["cache"]} missing now',
  ]


def test_check_reports_a_rebuilt_cache(stored):
  path, files = stored
  info = json.loads((files['cache'] / 'mir_cache.json').read_text())
  info['records_fingerprint'] = 'ffffffffffffffff'
  (files['cache'] / 'mir_cache.json').write_text(json.dumps(info))
  assert provenance.check(path) == [
    'cache lfw_fake_0123456789ab: images differs (rebuilt since?)',
    'cache lfw_fake_0123456789ab: info_sha256 differs (rebuilt since?)',
  ]


def test_a_file_that_is_no_manifest_gets_a_clear_error(tmp_path):
  bad = tmp_path / 'bad.provenance.json'
  bad.write_text('{"schema": 1, ')
  with pytest.raises(
    provenance.ManifestError, match=r'bad\.provenance\.json: not a provenance manifest \(invalid JSON'
  ):
    provenance.check(bad)
  bad.write_text('{"name": "table1"}')
  with pytest.raises(ValueError, match='no "schema" field'):
    provenance.format_check(bad)
  with pytest.raises(provenance.ManifestError, match='cannot read'):
    provenance.check(tmp_path / 'absent.provenance.json')


def test_git_state_outside_a_checkout_says_so(tmp_path, monkeypatch):
  monkeypatch.setenv('GIT_CEILING_DIRECTORIES', str(tmp_path.parent))
  state = provenance.git_state(tmp_path)
  assert state['commit'].startswith('unavailable') and state['dirty'] is None


class CachedSyntheticEmbeddings(reproduce_test.SyntheticEmbeddings):
  """The synthetic LFW, with a (fake) cache directory that the manifest records, as EmbeddingStore's."""

  def __init__(self, directory):
    self.directories = {str(directory): 'lfw_fake'}


def test_a_reproduce_command_writes_its_manifest_beside_its_table(tmp_path, monkeypatch):
  monkeypatch.setattr(provenance, '_locate_weights', lambda name: None)
  config = reproduce_test.tiny_config(tmp_path)
  config.backbones = 'fake'
  config.readings = 'tuned'
  config.train.num_seeds = 2
  config.tune.learning_rates = (0.1,)  # a grid of one: what is stored matters here, not what is chosen
  config.tune.max_steps = 40
  out = tmp_path / 'out'
  cache = fake_cache(tmp_path / 'data_cache')
  ctx = context.Context(config, str(out), embeddings=CachedSyntheticEmbeddings(cache))
  cli.run('table2', cli.table_body('table2', table2.build), ctx)
  assert json.loads((out / 'table2.json').read_text())['provenance'] == 'table2.provenance.json'
  m = json.loads((out / 'table2.provenance.json').read_text())
  assert m['name'] == 'table2' and m['config']['readings'] == 'tuned'
  assert [c['directory'] for c in m['caches']] == [str(cache)]
  assert m['weights'] == [
    {
      'backbone': 'fake',
      'role': 'weights',
      'name': WEIGHTS_NAME,
      'path': None,
      'sha256': None,
      'cache_sha256': 'ab' * 32,
    }
  ]
  tuned = sorted(str(p) for p in (tmp_path / 'tuned').iterdir())
  assert tuned and sorted(f['path'] for f in m['tuning_files']) == tuned
  assert any(k.startswith('tune ') for k in m['seconds']['parts']) and m['seconds']['total'] > 0
  assert provenance.check(out / 'table2.provenance.json') == []


def test_paths_inside_the_checkout_are_stored_relative(tmp_path):
  inside = paths.repo_root() / 'experiments' / 'configs' / 'reproduce.py'
  (entry,) = provenance.collect('x', tuning_files=[inside])['tuning_files']
  assert entry['path'] == 'experiments/configs/reproduce.py'
