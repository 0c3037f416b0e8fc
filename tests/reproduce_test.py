"""The reproduce commands' table builders, end to end on a small synthetic LFW-shaped embedding set.

The real caches are exercised by tests/regression_test.py; here a Context whose embedding store serves
synthetic sets checks what each table holds, that missing data becomes "not supplied" cells with
instructions, that tuning choices are stored and reused, and that the PCA figure is written.
"""

import os

import numpy as np
import pytest

from experiments.configs import reproduce as reproduce_config
from mir_jax import embedding_sets
from mir_jax import report
from reproduce import context
from reproduce import embedding_store
from reproduce import pca_figure
from reproduce import table2


def lfw_like(seed=0, dim=16):
  """12 identities with 10-12 images, 8 with 2-9, 30 with one: the three groups the protocols use."""
  counts = [10, 11, 12] * 4 + [2, 3, 4, 5, 6, 7, 8, 9] + [1] * 30
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(len(counts), dim))
  labels = np.repeat(np.arange(len(counts)), counts)
  x = centres[labels] + 0.6 * rng.normal(size=(labels.size, dim)) + 2.0 * rng.normal(size=dim)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  names = [f'person_{i:02d}' for i in range(len(counts))]
  return embedding_sets.EmbeddingSet(
    x.astype(np.float32),
    labels.astype(np.int32),
    names,
    np.asarray([f'{names[lab]}/{i}' for i, lab in enumerate(labels)]),
  )


class SyntheticEmbeddings:
  """Serves a synthetic LFW for backbone 'fake'; every other dataset or backbone is 'not supplied'."""

  def get(self, dataset, backbone, manual_dir='', subset='', **reader_kwargs):
    if dataset == 'lfw' and backbone == 'fake':
      return lfw_like()
    raise embedding_store.Unavailable(f'no {dataset} cache for {backbone} in this test')

  def spec(self, key):
    return {'dataset': 'lfw', 'backbone_config': {'fake': 1}} if key == 'lfw_fake' else key


def synthetic_context(config, output_dir):
  return context.Context(config, output_dir, embeddings=SyntheticEmbeddings())


def tiny_config(tmp_path):
  config = reproduce_config.get_config()
  config.backbones = 'fake,facenet-vggface2'
  config.train.num_seeds = 3
  config.train.steps = 20
  config.tune.learning_rates = (0.03, 0.1)
  config.tune.l2s = (0.0,)
  config.tune.first_steps = 20
  config.tune.max_steps = 80
  config.tune.max_extensions = 1
  config.tuned_dir = str(tmp_path / 'tuned')
  config.ablations.backbones = 'fake'  # so the other backbone's ablations are left out, and say so
  return config


@pytest.fixture(scope='module')
def built(synthetic_run):
  """The tables and figures of `python -m reproduce.all` on this set (conftest.py makes the run once)."""
  r = synthetic_run
  return r.ctx, r.tables, r.figures, r.tmp_path


def _cell(table, row, column):
  return table.cell(row, column)


def test_table1_rows_cells_and_reasons(built):
  ctx, tables, _, _ = built
  t = tables['table1']
  names = [r.name for r in t.rows]
  for reading in ('tuned', 'paper-literal'):
    for w in ('b', 'a'):
      assert f'fake ({w}) [{reading}]' in names
      assert f'facenet-vggface2 (VGGFace2, 512-D) ({w}) [{reading}]' in names
  assert {'DeepID2+ (b)', 'FaceNet (a)', 'BaiDu (b)'} <= set(names)  # the paper's rows, as claims
  lfw_b = _cell(t, 'fake (b) [tuned]', 'LFW')
  assert len(lfw_b.values) == 3 and lfw_b.seeds == (0, 1, 2) and lfw_b.paper is None
  # (b) is the single-task head, (a) the joint head, of the same trained runs Table II uses.
  t2 = tables['table2']
  assert lfw_b.values == _cell(t2, 'fake Single-Task [tuned]', 'LFW').values
  assert _cell(t, 'fake (a) [tuned]', 'LFW').values == _cell(t2, 'fake Multi-Task (joint) [tuned]', 'LFW').values
  # Missing data: a reason that says how to supply it; never a number.
  ytf = _cell(t, 'fake (a) [tuned]', 'YTF')
  assert not ytf.values and 'not supplied' in ytf.reason and '--config.ytf.manual_dir' in ytf.reason
  mega = _cell(t, 'fake (b) [tuned]', 'MegaFace')
  assert not mega.values and 'set_size=1000000' in mega.reason
  # A backbone without a cache: every cell says so; the substitute rows carry the paper's FaceNet numbers.
  fn = _cell(t, 'facenet-vggface2 (VGGFace2, 512-D) (a) [tuned]', 'LFW')
  assert not fn.values and 'no lfw cache for facenet-vggface2' in fn.reason and fn.paper == 99.68
  # A FaceNet row says what it is and what its 512-D against the paper's 128-D can and cannot change.
  (row,) = [r for r in t.rows if r.name == 'facenet-vggface2 (VGGFace2, 512-D) (a) [tuned]']
  assert 'VGGFace2' in row.note and '128-D' in row.note and 'cannot change' in row.note
  # The LFW-distractors stand-in: (b) has one value repeated per seed, (a) one per seed's head.
  dist_b = _cell(t, 'fake (b) [tuned]', 'LFW-distractors')
  dist_a = _cell(t, 'fake (a) [tuned]', 'LFW-distractors')
  assert len(set(dist_b.values)) == 1 and len(dist_a.values) == 3
  assert all(0 <= v <= 100 for v in dist_a.values)
  md = report.render_markdown(t)
  assert 'not reproducible here' in md and 'LFW-distractors' in md


def test_table2_direction_claims_and_mcnemar(built):
  _, tables, _, _ = built
  t = tables['table2']
  claims = {(d.better, d.worse) for d in t.directions}
  assert ('fake Multi-Task (joint) [tuned]', 'fake Single-Task [tuned]') in claims
  assert ('fake Multi-Task (alternating) [paper-literal]', 'fake Single-Task [paper-literal]') in claims
  assert any(n.startswith('McNemar per seed') and 'joint' in n for n in t.notes)
  for d in t.directions:
    s = report.direction_summary(t, d)
    if d.better.startswith('fake'):
      assert s['n'] == 3 and s['verdict'] in (report.REPRODUCED, report.NOT_REPRODUCED)


def test_table1_anchor_rows_for_the_measured_backbone_only(built):
  _, tables, _, _ = built
  t = tables['table1']
  anchors = [r for r in t.rows if r.name.endswith('(anchor)')]
  assert [r.name for r in anchors] == [
    'fake (b) features, cosine 1-NN (anchor)',
    'fake (b) features, logistic regression (anchor)',
  ]
  single = _cell(t, 'fake (b) [tuned]', 'LFW')
  for r in anchors:
    assert list(r.cells) == ['LFW'] and r.cells['LFW'].seeds == single.seeds and len(r.cells['LFW'].values) == 3
  assert 'chosen on a validation split' in anchors[1].cells['LFW'].note
  assert not any(d.better.endswith('(anchor)') or d.worse.endswith('(anchor)') for d in t.directions)


def test_tuning_is_stored_and_reused(built):
  ctx, tables, _, tmp_path = built
  stored = sorted(os.listdir(tmp_path / 'tuned'))
  assert any('lfw_identity_joint' in f for f in stored) and any('lfw_identity_single' in f for f in stored)
  assert any(k.startswith('tune ') for k in ctx.timings)
  again = synthetic_context(tiny_config(tmp_path), output_dir=str(tmp_path / 'out2'))
  t2 = table2.build(again)
  assert not any(k.startswith('tune ') for k in again.timings)  # read back, not re-tuned
  assert (
    _cell(t2, 'fake Single-Task [tuned]', 'LFW').values
    == _cell(tables['table2'], 'fake Single-Task [tuned]', 'LFW').values
  )


def test_ablations_one_change_at_a_time(built):
  _, tables, _, _ = built
  names = [r.name for r in tables['ablations'].rows if r.name.startswith('fake [tuned]')]
  assert names[:2] == ['fake [tuned] single-task (reference)', 'fake [tuned] base (paper-literal model)']
  assert {
    'fake [tuned] commonality_dim = d',
    'fake [tuned] subtract_from = hidden',
    'fake [tuned] center = True',
    'fake [tuned] lambda = 0.1',
    'fake [tuned] optimizer = sgd',
  } <= set(names)
  notes = {r.name: r.note for r in tables['ablations'].rows}
  assert 'vs base' in notes['fake [tuned] optimizer = sgd']
  assert 'optimizer=sgd' in notes['fake [tuned] optimizer = sgd']
  assert 'lr_schedule=constant' in notes['fake [tuned] lr_schedule = constant']
  assert not any(r.name.startswith('facenet') for r in tables['ablations'].rows)
  assert any(
    n.startswith('facenet-vggface2: not run (config.ablations.backbones') and '--config.ablations.backbones' in n
    for n in tables['ablations'].notes
  )


def test_every_measured_head_cell_says_whether_it_converged(built):
  _, tables, _, _ = built
  for name in ('table1', 'table2', 'ablations'):
    for rec in report.summarize(tables[name]):
      if rec['values'] and rec['column'] in ('LFW', 'LFW-distractors') and '(b)' not in rec['row']:
        note = rec['note'] + ' '.join(r.note for r in tables[name].rows if r.name == rec['row'])
        assert 'convergence rule' in note, (name, rec['row'])
        # The flag is exactly the rule's verdict: empty when met, in the cell when not.
        assert ('did NOT meet' in note) == (rec['flag'] == 'not converged'), (name, rec['row'], note)
        assert 'final training loss' in note


def test_pca_figure_files_and_numbers(built):
  _, _, figures, _ = built
  ok = [f for f in figures if 'unavailable' not in f]
  assert {(f['backbone'], f['reading']) for f in ok} == {('fake', 'tuned'), ('fake', 'paper-literal')}
  for f in ok:
    assert os.path.getsize(f['png']) > 0 and os.path.getsize(f['pdf']) > 0
    assert len(f['identities']) == 2 and 'default_rng(0)' in f['caption']
    assert len(f['whole_test_split']['mir']['per_seed']) == 3
    assert pca_figure.describe(f).startswith('fake [')
  assert any('unavailable' in f and f['backbone'] == 'facenet-vggface2' for f in figures)


def test_the_tables_read_the_caches_of_the_configured_aligner(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top

  for name in ('ann', 'bob'):
    (tmp_path / 'faces' / name).mkdir(parents=True)
    Image.new('RGB', (40, 40)).save(tmp_path / 'faces' / name / f'{name}_0001.png')
  notes = {}
  for aligner in ('mtcnn-torch', 'mtcnn-jax'):
    store = embedding_store.EmbeddingStore(str(tmp_path / 'data'), aligner)
    with pytest.raises(embedding_store.Unavailable) as e:
      store.get('folder', 'dlib-resnet', manual_dir=str(tmp_path / 'faces'))
    notes[aligner] = str(e.value)
  # Each names its own cache, and the command that builds it: the default's without the flag.
  assert 'python -m mir_jax.embed --dataset=folder --backbone=dlib-resnet' in notes['mtcnn-jax']
  assert '--aligner' not in notes['mtcnn-jax'] and '--aligner=mtcnn-torch' in notes['mtcnn-torch']
  assert notes['mtcnn-torch'].split()[3] != notes['mtcnn-jax'].split()[3]
  assert reproduce_config.get_config().aligner == 'mtcnn-jax'
