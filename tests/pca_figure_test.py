"""Tests for the seeded identity choice and the PCA figure (Figs. 2-3)."""

import numpy as np
from PIL import Image
import pytest

from figures import pca
from mir_jax.evaluators import separation


def _labels():
  # Identities 0..5 with 2, 5, 7, 3, 9, 5 examples, shuffled so that rows of an identity are not contiguous.
  labels = np.repeat(np.arange(6), [2, 5, 7, 3, 9, 5])
  return np.random.default_rng(0).permutation(labels)


def test_choose_identities_respects_the_rule():
  labels = _labels()
  counts = np.bincount(labels)
  for seed in range(20):
    sel = pca.choose_identities(labels, seed, k=2, photos=5)
    assert sel.identities.shape == (2,) and len(set(sel.identities.tolist())) == 2
    assert all(counts[c] >= 5 for c in sel.identities)
    assert sel.indices.shape == (2, 5)
    for c, rows in zip(sel.identities, sel.indices):
      assert np.all(labels[rows] == c) and len(set(rows.tolist())) == 5
    assert f'default_rng({seed})' in sel.rule and 'with >= 5' in sel.rule


def test_choose_identities_is_deterministic_per_seed():
  labels = _labels()
  a, b = pca.choose_identities(labels, 7), pca.choose_identities(labels, 7)
  np.testing.assert_array_equal(a.identities, b.identities)
  np.testing.assert_array_equal(a.indices, b.indices)
  # Different seeds do not all give the same choice (4 eligible identities, 7+ photos for some).
  choices = {
    (tuple(s.identities), tuple(s.indices.ravel())) for s in (pca.choose_identities(labels, seed) for seed in range(10))
  }
  assert len(choices) > 1


def test_choose_identities_needs_enough_eligible():
  labels = np.repeat(np.arange(3), [5, 4, 4])
  with pytest.raises(ValueError, match='only 1'):
    pca.choose_identities(labels, 0, k=2, photos=5)
  assert pca.choose_identities(labels, 0, k=3, photos=4).indices.shape == (3, 4)


def test_pca_figure_writes_valid_files_and_returns_separation(tmp_path):
  rng = np.random.default_rng(1)
  labels = np.repeat([3, 8], 5)
  # MIR-like features: a shared offset removed and the identities pushed apart, so the ratio must rise.
  original = rng.normal(size=(10, 16)) + 0.8 * np.eye(16)[labels]
  mir = original + 3.0 * np.eye(16)[labels]
  names = {3: 'Ann Example', 8: 'Bo Example'}
  out = pca.pca_figure(
    original,
    mir,
    labels,
    names,
    str(tmp_path / 'figs' / 'fig2_3'),
    'Two identities, five test images each; chosen by rule X (seed 0).',
  )
  with open(out['png'], 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  with Image.open(out['png']) as im:
    im.verify()
  with open(out['pdf'], 'rb') as f:
    data = f.read()
  assert data.startswith(b'%PDF-') and b'%%EOF' in data[-64:]
  for key, feats in (('original', original), ('mir', mir)):
    expected = separation.between_within_ratio(feats, labels)
    assert out['separation'][key]['full'] == expected['full']
    assert out['separation'][key]['pca2'].ratio == pytest.approx(expected['pca2'].ratio)
  assert out['separation']['mir']['full'].ratio > out['separation']['original']['full'].ratio
  assert 'rule X' in out['caption']
