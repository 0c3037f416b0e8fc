"""Tests for the dataset readers and protocol parsers, on the shared LFW/YTF files and on fixtures."""

import collections
import json
import os
import shutil

import fixtures
import pytest

from mir_jax import datasets
from mir_jax import paths
from mir_jax.datasets import DatasetError
from mir_jax.datasets import folder
from mir_jax.datasets import lfw
from mir_jax.datasets import megaface
from mir_jax.datasets import ytf

LFW_DIR = fixtures.lfw_images_dir()
SHARED = paths.shared_data_dir()
needs_lfw = pytest.mark.skipif(LFW_DIR is None, reason=fixtures.MISSING_DATA_REASON)
needs_ytf_splits = pytest.mark.skipif(
  SHARED is None or not (SHARED / 'ytf' / 'splits.txt').is_file(), reason=fixtures.MISSING_DATA_REASON
)


def _protocol(name):
  return SHARED / 'lfw' / 'protocol' / name


def _header(path):
  return [int(t) for t in path.read_text().splitlines()[0].split()]


# Shared-data lookup and registry (no data needed).


def test_shared_data_dir_follows_env_var(tmp_path, monkeypatch):
  monkeypatch.setenv(paths.ENV_VAR, str(tmp_path))
  assert paths.shared_data_dir() == tmp_path
  monkeypatch.setenv(paths.ENV_VAR, str(tmp_path / 'absent'))
  assert paths.shared_data_dir() is None
  assert paths.shared_data_location() == tmp_path / 'absent'
  monkeypatch.delenv(paths.ENV_VAR)
  assert paths.shared_data_location() == paths.repo_root().parent / 'shared' / 'data'
  assert paths.shared_data_dir() in (None, paths.shared_data_location())


def test_registry():
  assert datasets.get_reader('lfw') is lfw.read_lfw
  assert datasets.get_reader('ytf') is ytf.read_ytf
  assert datasets.get_reader('megaface') is megaface.read_megaface
  assert datasets.get_reader('folder') is folder.read_folder
  with pytest.raises(ValueError, match='unknown dataset'):
    datasets.get_reader('casia')


@pytest.mark.parametrize(
  'read,expected',
  [
    (folder.read_folder, '<identity>'),
    (lfw.read_lfw, 'vis-www.cs.umass.edu/lfw'),
    (ytf.read_ytf, 'aligned_images_DB'),
    (megaface.read_megaface, 'megaface_features_list.json_<N>_1'),
  ],
)
def test_missing_dataset_dir_explains_layout(tmp_path, read, expected):
  with pytest.raises(DatasetError) as info:
    read(tmp_path / 'nowhere')
  assert 'nowhere' in str(info.value) and expected in str(info.value)


# LFW on the shared copy: official counts.


@needs_lfw
def test_lfw_official_counts_and_order():
  listing = lfw.read_lfw(LFW_DIR)
  per_identity = collections.Counter(r.identity for r in listing)
  assert len(listing) == 13233
  assert len(per_identity) == 5749
  assert sum(1 for n in per_identity.values() if n >= 2) == 1680
  assert not listing.skipped and not listing.ignored
  keys = [(r.identity, os.path.basename(r.path)) for r in listing]
  assert keys == sorted(keys)
  first = listing.items[0]
  assert first.image_id == f'{first.identity}/{os.path.splitext(os.path.basename(first.path))[0]}'
  assert os.path.isabs(first.path) and os.path.isfile(first.path)


@needs_lfw
def test_lfw_view2_pairs_resolve_on_disk():
  pairs = lfw.read_pairs(_protocol('pairs.txt'), images_dir=LFW_DIR)
  assert len(pairs) == 6000 and not pairs.skipped
  assert sum(p.same for p in pairs) == 3000
  per_fold = collections.Counter((p.fold, p.same) for p in pairs)
  assert per_fold == {(f, s): 300 for f in range(10) for s in (True, False)}
  image_ids = {r.image_id for r in lfw.read_lfw(LFW_DIR)}
  assert all(p.image_id_a in image_ids and p.image_id_b in image_ids for p in pairs)
  for p in pairs:
    same_name = p.image_id_a.split('/')[0] == p.image_id_b.split('/')[0]
    assert same_name == p.same


@needs_lfw
@pytest.mark.parametrize('name', ['pairsDevTrain.txt', 'pairsDevTest.txt'])
def test_lfw_view1_pairs_match_header(name):
  (n,) = _header(_protocol(name))
  pairs = lfw.read_pairs(_protocol(name), images_dir=LFW_DIR)
  assert len(pairs) == 2 * n and sum(p.same for p in pairs) == n
  assert {p.fold for p in pairs} == {0}


@needs_lfw
def test_lfw_people_files_agree_with_images():
  listing = lfw.read_lfw(LFW_DIR)
  people = lfw.read_people(_protocol('people.txt'), images_dir=LFW_DIR)
  assert {p.fold for p in people} == set(range(10))
  assert len(people) == len({r.identity for r in listing})
  assert sum(p.num_images for p in people) == len(listing)
  for name in ['peopleDevTrain.txt', 'peopleDevTest.txt']:
    (n,) = _header(_protocol(name))
    assert len(lfw.read_people(_protocol(name), images_dir=LFW_DIR)) == n


@needs_lfw
def test_pairs_line_with_missing_image_errors_or_is_skipped(tmp_path):
  path, bad_line = fixtures.write_pairs_with_missing_image(LFW_DIR, tmp_path / 'pairs.txt')
  with pytest.raises(DatasetError) as info:
    lfw.read_pairs(path, images_dir=LFW_DIR)
  assert f'{path}:{bad_line}' in str(info.value) and 'missing on disk' in str(info.value)
  listing = lfw.read_pairs(path, images_dir=LFW_DIR, skip_missing=True)
  assert len(listing) == 3
  assert [s.where for s in listing.skipped] == [f'{path}:{bad_line}']
  # Without an image tree nothing is checked against disk.
  assert len(lfw.read_pairs(path)) == 4


@pytest.mark.parametrize(
  'text,phrase',
  [
    ('1\t2\nA\t1\t2\nA\t1\tB\t1\n', 'promises 4'),
    ('1\t1\nA\t1\tB\t1\nA\t1\t2\n', 'matched'),
    ('1\t1\nA\tx\t2\nA\t1\tB\t1\n', 'integers'),
  ],
)
def test_malformed_pairs_file_names_the_problem(tmp_path, text, phrase):
  path = tmp_path / 'pairs.txt'
  path.write_text(text)
  with pytest.raises(DatasetError, match=phrase) as info:
    lfw.read_pairs(path)
  assert str(path) in str(info.value)


# Generic folder reader: bad inputs are recorded, never silent.


@needs_lfw
def test_folder_records_empty_identities_and_non_images(tmp_path):
  people = fixtures.lfw_people_with(LFW_DIR, min_images=2, count=2)
  for name, _ in people:
    shutil.copytree(LFW_DIR / name, tmp_path / name)
  (tmp_path / people[0][0] / 'notes.txt').write_text('x')
  empty = fixtures.make_empty_identity(tmp_path, 'Nobody_Here')
  (tmp_path / 'stray.csv').write_text('x')
  listing = folder.read_folder(tmp_path)
  assert len(listing) == sum(len(files) for _, files in people)
  assert {r.identity for r in listing} == {name for name, _ in people}
  assert [s.where for s in listing.skipped] == [str(empty)]
  assert 'no images' in listing.skipped[0].reason
  assert sorted(listing.ignored) == sorted(
    str(p) for p in [tmp_path / people[0][0] / 'notes.txt', empty / 'README.txt', tmp_path / 'stray.csv']
  )


def test_folder_without_any_image_is_an_error(tmp_path):
  fixtures.make_empty_identity(tmp_path, 'Nobody_Here')
  with pytest.raises(DatasetError, match='holds no images'):
    folder.read_folder(tmp_path)


# YouTube Faces.


@needs_ytf_splits
def test_ytf_official_splits():
  pairs = ytf.read_splits(SHARED / 'ytf' / 'splits.txt')
  assert len(pairs) == 5000
  per_fold = collections.Counter((p.fold, p.same) for p in pairs)
  assert per_fold == {(f, s): 250 for f in range(10) for s in (True, False)}
  assert all(p.video_a.count('/') == 1 and p.video_b.count('/') == 1 for p in pairs)


@needs_ytf_splits
def test_ytf_splits_with_a_row_missing_is_rejected(tmp_path):
  lines = (SHARED / 'ytf' / 'splits.txt').read_text().splitlines()
  path = tmp_path / 'splits.txt'
  path.write_text('\n'.join(lines[:-1]) + '\n')
  with pytest.raises(DatasetError, match='split 10 has 250 same and 249 different'):
    ytf.read_splits(path)


@pytest.fixture
def ytf_fixture(tmp_path):
  if LFW_DIR is None:
    pytest.skip(fixtures.MISSING_DATA_REASON)
  return fixtures.build_ytf_fixture_from_lfw(LFW_DIR, tmp_path / 'YouTubeFaces')


def test_ytf_fixture_reads_back_in_numeric_frame_order(ytf_fixture):
  listing = ytf.read_ytf(ytf_fixture.root)
  assert not listing.skipped and not listing.ignored
  by_video = collections.defaultdict(list)
  for r in listing:
    by_video[r.video_id].append(r.image_id)
    assert r.identity == r.video_id.split('/')[0] and os.path.isfile(r.path)
  assert dict(by_video) == ytf_fixture.frames
  assert list(by_video) == sorted(by_video, key=lambda v: (v.split('/')[0], int(v.split('/')[1])))
  # The aligned_images_DB folder itself is accepted as the root too.
  assert ytf.read_ytf(ytf_fixture.root / 'aligned_images_DB').items == listing.items


def test_ytf_max_frames_keeps_the_first_frames(ytf_fixture):
  listing = ytf.read_ytf(ytf_fixture.root, max_frames_per_video=2)
  by_video = collections.defaultdict(list)
  for r in listing:
    by_video[r.video_id].append(r.image_id)
  assert dict(by_video) == {v: ids[:2] for v, ids in ytf_fixture.frames.items()}


def test_ytf_records_junk_frames(ytf_fixture):
  video_dir = ytf_fixture.root / 'aligned_images_DB' / next(iter(ytf_fixture.frames))
  first_frame = sorted(video_dir.iterdir())[0]
  (video_dir / 'Thumbs.db').write_text('x')
  shutil.copyfile(first_frame, video_dir / 'frame_0001.jpg')
  listing = ytf.read_ytf(ytf_fixture.root)
  assert listing.ignored == [str(video_dir / 'Thumbs.db')]
  assert [s.where for s in listing.skipped] == [str(video_dir / 'frame_0001.jpg')]
  assert len(listing) == sum(len(v) for v in ytf_fixture.frames.values())


def test_ytf_fixture_splits_and_missing_video(ytf_fixture):
  fx = ytf_fixture
  pairs = ytf.read_splits(fx.splits_path, root=fx.root, num_folds=fx.num_folds, same_per_fold=fx.same_per_fold)
  assert [(p.fold, p.video_a, p.video_b, p.same) for p in pairs] == fx.pairs
  with pytest.raises(DatasetError, match='expected 10'):
    ytf.read_splits(fx.splits_path)  # the official counts are the default
  gone = fx.pairs[0][1]
  shutil.rmtree(fx.root / 'aligned_images_DB' / gone)
  with pytest.raises(DatasetError) as info:
    ytf.read_splits(fx.splits_path, root=fx.root, num_folds=None, same_per_fold=None)
  assert f'{fx.splits_path}:2' in str(info.value) and gone in str(info.value)
  kept = ytf.read_splits(fx.splits_path, root=fx.root, skip_missing=True, num_folds=None, same_per_fold=None)
  uses_gone = [p for p in fx.pairs if gone in p[1:3]]
  assert len(kept.skipped) == len(uses_gone) and len(kept) == len(fx.pairs) - len(uses_gone)


_SPLITS_HEADER = 'split number, pair number in split, first name, second name, is same:\n'


def _write_splits(path, rows):
  path.write_text(_SPLITS_HEADER + ''.join(f'{", ".join(map(str, r))}\n' for r in rows))
  return path


def test_ytf_errata_replace_rows_by_split_and_pair(tmp_path):
  shipped = [
    (1, 1, 'ann/1', 'ann/2', 1),
    (1, 2, 'ann/1', 'bob/1', 0),
    (2, 1, 'bob/1', 'bob/2', 1),
    (2, 2, 'bob/2', 'cat/1', 0),
  ]
  splits = _write_splits(tmp_path / 'splits.txt', shipped)
  # Pair 2 of split 1 relabelled, pair 1 of split 2 given another video; (2, 2) repeated unchanged.
  errata = _write_splits(
    tmp_path / 'errata.txt', [(1, 2, 'ann/1', 'bob/1', 1), (2, 1, 'bob/1', 'bob/3', 1), (2, 2, 'bob/2', 'cat/1', 0)]
  )
  pairs = ytf.read_splits(splits, num_folds=None, same_per_fold=None, errata=errata)
  assert [(p.fold, p.video_a, p.video_b, p.same, p.corrected) for p in pairs] == [
    (0, 'ann/1', 'ann/2', True, False),
    (0, 'ann/1', 'bob/1', True, True),
    (1, 'bob/1', 'bob/3', True, True),
    (1, 'bob/2', 'cat/1', False, False),
  ]
  # The counts are those of the file as shipped (one same, one different per split), not the corrected ones.
  assert [p.same for p in ytf.read_splits(splits, num_folds=None, same_per_fold=None)] == [True, False] * 2


def test_ytf_errata_errors_name_the_line(tmp_path):
  splits = _write_splits(tmp_path / 'splits.txt', [(1, 1, 'ann/1', 'ann/2', 1), (1, 2, 'ann/1', 'bob/1', 0)])
  read = lambda errata: ytf.read_splits(splits, num_folds=None, same_per_fold=None, errata=errata)
  with pytest.raises(DatasetError, match=r'errata.txt:2: no row of .* has this split and pair number'):
    read(_write_splits(tmp_path / 'errata.txt', [(3, 1, 'ann/1', 'ann/2', 0)]))
  with pytest.raises(DatasetError, match=r'errata.txt:3: split 1 pair 2 is corrected twice \(also line 2\)'):
    read(_write_splits(tmp_path / 'errata.txt', [(1, 2, 'ann/1', 'bob/1', 1)] * 2))
  with pytest.raises(DatasetError, match='errata.txt:2: same must be 0 or 1'):
    read(_write_splits(tmp_path / 'errata.txt', [(1, 2, 'ann/1', 'bob/1', 2)]))
  with pytest.raises(DatasetError, match='no corrected rows'):
    read(_write_splits(tmp_path / 'errata.txt', []))
  with pytest.raises(DatasetError, match='does not exist'):
    read(tmp_path / 'nowhere.txt')


# MegaFace.


@pytest.fixture
def megaface_fixture(tmp_path):
  if LFW_DIR is None:
    pytest.skip(fixtures.MISSING_DATA_REASON)
  return fixtures.build_megaface_fixture_from_lfw(LFW_DIR, tmp_path / 'megaface')


def _check_megaface_listing(listing, fx):
  probes = [r for r in listing if r.role == 'probe']
  distractors = [r for r in listing if r.role == 'distractor']
  assert len(probes) + len(distractors) == len(listing)
  got = collections.defaultdict(list)
  for r in probes:
    got[r.identity].append(os.path.relpath(r.path, fx.root / 'facescrub_images'))
  assert dict(got) == fx.probes
  assert [r.identity for r in distractors] == [f'distractor/{p}' for p in sorted(fx.distractors)]
  assert len({r.image_id for r in listing}) == len(listing)
  assert all(os.path.isfile(r.path) for r in listing)


def test_megaface_fixture_reads_back(megaface_fixture):
  listing = megaface.read_megaface(megaface_fixture.root, set_size=megaface_fixture.set_size)
  assert not listing.skipped
  _check_megaface_listing(listing, megaface_fixture)


def test_megaface_probes_without_list_file_come_from_folders(megaface_fixture):
  (megaface_fixture.root / 'devkit' / 'templatelists' / megaface.PROBE_LIST).unlink()
  _check_megaface_listing(megaface.read_megaface(megaface_fixture.root), megaface_fixture)


def test_megaface_missing_distractor_errors_or_is_skipped(megaface_fixture):
  fx = megaface_fixture
  gone = fx.root / 'megaface_images' / fx.distractors[3]
  gone.unlink()
  with pytest.raises(DatasetError) as info:
    megaface.read_megaface(fx.root)
  assert str(gone) in str(info.value)
  listing = megaface.read_megaface(fx.root, skip_missing=True)
  assert [s.where for s in listing.skipped] == [str(gone)]
  assert sum(r.role == 'distractor' for r in listing) == len(fx.distractors) - 1


def test_megaface_bad_set_size_and_list_files(megaface_fixture):
  fx = megaface_fixture
  with pytest.raises(ValueError, match='set_size'):
    megaface.read_megaface(fx.root, set_size=50)
  with pytest.raises(DatasetError, match='json_100_1'):
    megaface.read_megaface(fx.root, set_size=100)
  list_file = fx.root / 'devkit' / 'templatelists' / megaface.distractor_list_name(fx.set_size)
  list_file.write_text(json.dumps({'path': fx.distractors + fx.distractors[:1]}))
  with pytest.raises(DatasetError, match='more than once'):
    megaface.read_megaface(fx.root)
  list_file.write_text('{"paths": []}')
  with pytest.raises(DatasetError, match='"path"'):
    megaface.read_megaface(fx.root)


def test_megaface_noise_lists(tmp_path):
  # InsightFace's layout: comment lines, bare FaceScrub file names, tab-separated MegaFace lines.
  facescrub = tmp_path / 'facescrub_noises.txt'
  facescrub.write_text('# noisy FaceScrub images\nAnn_Lee_12.png\nBob_Ray/Bob_Ray_3.jpg\n\nZed_Zo_1.png\n')
  megaface_list = tmp_path / 'megaface_noises.txt'
  megaface_list.write_text('#header\n1\t10/10@N0/1_0.jpg\n20/20@N0/2_0.jpg\n')
  assert megaface.read_noise_list(facescrub) == ['Ann_Lee_12', 'Bob_Ray/Bob_Ray_3', 'Zed_Zo_1']
  assert megaface.read_noise_list(megaface_list) == ['10/10@N0/1_0', '20/20@N0/2_0']
  ids = [
    'facescrub/Ann_Lee/Ann_Lee_12',  # by file name
    'facescrub/Ann_Lee/Ann_Lee_13',
    'facescrub/Bob_Ray/Bob_Ray_3',  # by path
    'facescrub/Bob_Ray/Bob_Ray_30',
    'megaface/10/10@N0/1_0',
    'megaface/10/10@N0/1_1',
    'megaface/Ann_Lee_12',  # a distractor is never matched by the FaceScrub list
  ]
  assert megaface.noise_mask(ids, megaface.read_noise_list(facescrub), 'probe').tolist() == [1, 0, 1, 0, 0, 0, 0]
  assert megaface.noise_mask(ids, megaface.read_noise_list(megaface_list), 'distractor').tolist() == [0] * 4 + [1, 0, 0]
  (tmp_path / 'empty.txt').write_text('# nothing\n')
  with pytest.raises(DatasetError, match='names no image'):
    megaface.read_noise_list(tmp_path / 'empty.txt')
  with pytest.raises(DatasetError, match='cannot be read'):
    megaface.read_noise_list(tmp_path / 'nowhere.txt')
