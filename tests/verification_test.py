"""Tests for the k-fold pair verification protocol on synthetic embeddings and distances."""

import numpy as np
import pytest

from mir_jax.evaluators import verification


def _unit(rng, n, d):
  x = rng.normal(size=(n, d))
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _pairs(rng, n_folds=10, per_fold=60, d=16, noise=0.05):
  """Same pairs are a vector and a slightly perturbed copy; different pairs are independent vectors."""
  a = _unit(rng, n_folds * per_fold, d)
  b = _unit(rng, n_folds * per_fold, d)
  same = np.tile(np.arange(per_fold) < per_fold // 2, n_folds)
  b[same] = a[same] + noise * rng.normal(size=(same.sum(), d))
  folds = np.repeat(np.arange(n_folds), per_fold)
  return a, b, same, folds


def test_pair_distances_ranges_and_agree():
  rng = np.random.default_rng(0)
  a, b = _unit(rng, 50, 8), _unit(rng, 50, 8)
  sq = verification.pair_distances(a, b, 'sqeuclidean')
  cos = verification.pair_distances(a, b, 'cosine')
  ang = verification.pair_distances(a, b, 'angular')
  # On the unit sphere ||a-b||^2 = 2 (1 - cos).
  np.testing.assert_allclose(sq, 2 * cos, atol=1e-12)
  assert np.all((ang >= 0) & (ang <= 1))
  # Unnormalised inputs are normalised first.
  np.testing.assert_allclose(verification.pair_distances(3 * a, b), sq, atol=1e-12)
  np.testing.assert_allclose(verification.pair_distances(a, a), 0, atol=1e-12)
  with pytest.raises(ValueError):
    verification.pair_distances(a, b, 'manhattan')


def test_best_threshold_exact():
  d = np.array([0.1, 0.2, 0.3, 0.9, 1.0, 1.1])
  y = np.array([1, 1, 1, 0, 0, 0], bool)
  assert verification.best_threshold(d, y) == pytest.approx(0.6)
  # One outlier: best is still the gap 0.3 | 0.9 (5 of 6 correct); other gaps score lower.
  y2 = np.array([1, 1, 1, 0, 0, 1], bool)
  assert verification.best_threshold(d, y2) == pytest.approx(0.6)
  # All same: accept everything.
  assert verification.best_threshold(d, np.ones(6, bool)) > 1.1
  # All different: accept nothing.
  assert verification.best_threshold(d, np.zeros(6, bool)) < 0.1


def test_best_threshold_ties_are_not_split():
  # Equal distances with different labels: no threshold separates them, so they count as one group.
  d = np.array([0.5, 0.5, 0.5, 2.0])
  y = np.array([1, 1, 0, 0], bool)
  t = verification.best_threshold(d, y)
  assert 0.5 < t < 2.0


def test_separable_gives_perfect_accuracy():
  rng = np.random.default_rng(1)
  a, b, same, folds = _pairs(rng, noise=0.01)
  r = verification.evaluate(a, b, same, folds)
  assert r.accuracy_mean == 1.0
  assert r.accuracy_std == 0.0
  assert r.auc == 1.0
  assert np.all(r.val == 1.0)
  # FAR is not asserted 0: the VAL threshold is the loosest one admissible on the training folds (the
  # smallest training different-pair distance here), which a held-out different pair may undercut.
  assert len(r.accuracy) == 10


def test_random_embeddings_give_chance_accuracy():
  rng = np.random.default_rng(2)
  n = 6000
  a, b = _unit(rng, n, 16), _unit(rng, n, 16)
  same = rng.random(n) < 0.5
  folds = np.repeat(np.arange(10), n // 10)
  r = verification.evaluate(a, b, same, folds)
  # Tuned on 5,400 random pairs the threshold can overfit a little, but not past a few percent.
  assert 0.45 < r.accuracy_mean < 0.56
  assert 0.45 < r.auc < 0.55


def test_threshold_ignores_held_out_labels():
  rng = np.random.default_rng(3)
  a, b, same, folds = _pairs(rng, noise=0.5)
  base = verification.evaluate(a, b, same, folds)
  flipped = same.copy()
  flipped[folds == 4] = ~flipped[folds == 4]
  r = verification.evaluate(a, b, flipped, folds)
  # Fold 4's own threshold is chosen on the other folds, whose labels did not change.
  assert r.threshold[4] == base.threshold[4]
  assert r.val_threshold[4] == base.val_threshold[4]
  # Its accuracy is scored against the flipped labels, so it becomes 1 - the old accuracy.
  assert r.accuracy[4] == pytest.approx(1 - base.accuracy[4])
  # Every other fold trains on fold 4's flipped labels, so their thresholds may move; this proves the test
  # can see a change when labels do influence a threshold.
  assert not np.array_equal(np.delete(r.threshold, 4), np.delete(base.threshold, 4))


def test_threshold_matches_brute_force_on_training_folds():
  rng = np.random.default_rng(4)
  a, b, same, folds = _pairs(rng, noise=0.6)
  r = verification.evaluate(a, b, same, folds)
  dist = verification.pair_distances(a, b)
  grid = np.linspace(0, 4, 4001)
  for i, f in enumerate(r.folds):
    train = folds != f
    best_grid = max(np.mean((dist[train] < t) == same[train]) for t in grid)
    assert np.mean((dist[train] < r.threshold[i]) == same[train]) >= best_grid - 1e-12


def test_val_at_far_threshold_respects_far_on_training():
  rng = np.random.default_rng(5)
  d = rng.random(3000)
  y = rng.random(3000) < 0.5
  for far in (1e-3, 1e-2, 0.1):
    t = verification.threshold_at_far(d, y, far)
    train_far = np.mean(d[~y] < t)
    assert train_far <= far
    # The threshold is the loosest admissible one: the next different-pair distance would exceed the target.
    dd = np.sort(d[~y])
    assert np.mean(dd <= t) > far
  assert verification.threshold_at_far(d, y, 1.0) == np.inf


def test_metrics_rank_pairs_identically():
  # All three metrics are monotone in the cosine of the normalised rows, and thresholds are exact, so they
  # must give the same accuracies; only the threshold values differ.
  rng = np.random.default_rng(9)
  a, b, same, folds = _pairs(rng, noise=0.6)
  accs = [verification.evaluate(a, b, same, folds, metric=m).accuracy for m in verification.METRICS]
  np.testing.assert_array_equal(accs[0], accs[1])
  np.testing.assert_array_equal(accs[0], accs[2])


def test_subtract_mean_uses_training_folds_only():
  rng = np.random.default_rng(6)
  a, b, same, folds = _pairs(rng, noise=0.4)
  # A common offset dominates the normalised directions; subtracting the mean removes it.
  a, b = a + 2.0, b + 2.0
  plain = verification.evaluate(a, b, same, folds, metric='cosine')
  sub = verification.evaluate(a, b, same, folds, metric='cosine', subtract_mean=True)
  assert sub.accuracy_mean > plain.accuracy_mean
  # Changing a held-out fold's embeddings must not move its own threshold (mean from training folds only) ...
  a2 = a.copy()
  a2[folds == 2] += 5.0
  moved = verification.evaluate(a2, b, same, folds, metric='cosine', subtract_mean=True)
  assert moved.threshold[2] == sub.threshold[2]
  # ... while it does move the other folds' thresholds, which train on fold 2.
  assert moved.threshold[3] != sub.threshold[3]


def test_evaluate_rejects_single_fold_and_bad_lengths():
  rng = np.random.default_rng(7)
  a, b = _unit(rng, 10, 4), _unit(rng, 10, 4)
  with pytest.raises(ValueError, match='two folds'):
    verification.evaluate(a, b, np.ones(10, bool), np.zeros(10))
  with pytest.raises(ValueError, match='same length'):
    verification.evaluate(a, b[:5], np.ones(10, bool), np.zeros(10))


def test_summary_is_json_ready():
  import json

  rng = np.random.default_rng(8)
  a, b, same, folds = _pairs(rng, noise=0.5)
  s = verification.evaluate(a, b, same, folds).summary()
  json.dumps(s)
  assert s['accuracy_mean'] == pytest.approx(np.mean(s['accuracy_per_fold']))


def test_match_pairs_reports_every_missing_pair():
  pairs = [(1, 'x/1', 'x/2', True), (1, 'x/1', 'y/1', False), (2, 'y/1', 'z/1', False), (2, 'x/2', 'w/1', False)]
  ids = ['x/1', 'x/2', 'y/1']
  ra, rb, same, folds, missing = verification.match_pairs(
    pairs, ids, failed={'z/1': 'corrupt JPEG'}, universe=['x/1', 'x/2', 'y/1', 'z/1']
  )
  assert ra.tolist() == [0, 0] and rb.tolist() == [1, 2]
  assert same.tolist() == [True, False] and folds.tolist() == [1, 1]
  assert len(missing) == 2
  assert 'failed to embed (corrupt JPEG)' in missing[0]['reason']
  assert 'not in the cached subset' in missing[1]['reason']


def test_overall_auc_uses_each_pairs_held_out_distance():
  from sklearn.metrics import roc_auc_score

  rng = np.random.default_rng(10)
  a, b, same, folds = _pairs(rng, noise=0.8)
  a, b = a + 1.0, b + 1.0
  r = verification.evaluate(a, b, same, folds, metric='cosine', subtract_mean=True)
  d = np.empty(len(same))
  for f in range(10):
    tr = folds != f
    m = np.mean(np.concatenate([a[tr], b[tr]]), axis=0)
    d[~tr] = verification.pair_distances(a[~tr] - m, b[~tr] - m, 'cosine')
  assert r.auc == pytest.approx(roc_auc_score(same, -d))
  plain = verification.evaluate(a, b, same, folds)
  assert plain.auc == pytest.approx(roc_auc_score(same, -verification.pair_distances(a, b)))
