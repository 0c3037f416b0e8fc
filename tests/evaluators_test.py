"""Tests for the array evaluators: MegaFace rank-1 / CMC, accuracy and anchors, significance, separation.

Expected values are computed independently: MegaFace by a literal loop over (identity, i, j) triples,
p-values and t quantiles from closed forms (the t distribution with 2 degrees of freedom has
F(t) = 1/2 + t / (2 sqrt(2 + t^2))), centroid distances by hand.
"""

import itertools
import math

import numpy as np
import pytest
from sklearn import neighbors

from mir_jax.evaluators import identification
from mir_jax.evaluators import separation
from mir_jax.evaluators import significance


def _brute_force_megaface(probes, labels, distractors, max_rank):
  """The protocol read literally: one gallery = {i} + distractors per (identity, i, j != i) triple."""
  unit = lambda v: v / np.linalg.norm(v)
  hits = np.zeros(max_rank)
  trials = 0
  correct_rank1 = []
  for label in sorted(set(labels.tolist())):
    idx = [k for k in range(len(labels)) if labels[k] == label]
    for i in idx:
      for j in idx:
        if i == j:
          continue
        trials += 1
        s_gallery = float(unit(probes[i]) @ unit(probes[j]))
        higher = sum(float(unit(d) @ unit(probes[j])) > s_gallery for d in distractors)
        rank = 1 + higher  # ties with a distractor go to the gallery image (score(i, j) >= ...)
        for r in range(max_rank):
          hits[r] += rank <= r + 1
        correct_rank1.append(rank == 1)
  return hits / trials, trials, np.array(correct_rank1)


@pytest.mark.parametrize('block_bytes', [1 << 27, 64])  # 64 bytes: a few distractors per block
def test_megaface_matches_brute_force(block_bytes):
  rng = np.random.default_rng(0)
  d = 6
  labels = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 5])  # identities 2 and 5 have a single image
  centres = rng.normal(size=(6, d))
  probes = centres[labels] + 0.5 * rng.normal(size=(labels.size, d))
  distractors = rng.normal(size=(40, d))
  out = identification.megaface_rank1(probes, labels, distractors, max_rank=4, block_bytes=block_bytes)
  cmc, trials, correct = _brute_force_megaface(probes, labels, distractors, 4)
  assert out['num_trials'] == trials == 3 * 2 + 2 * 1 + 4 * 3
  assert out['num_identities'] == 3
  assert out['num_distractors'] == 40
  np.testing.assert_allclose(out['cmc'], cmc)
  assert out['rank1'] == pytest.approx(cmc[0])
  np.testing.assert_array_equal(out['correct'], correct)
  assert out['num_correct'] == correct.sum()
  # The test must be able to fail: the data give neither 0 nor 1, and the CMC rises.
  assert 0 < out['rank1'] < 1
  assert np.all(np.diff(out['cmc']) >= 0) and out['cmc'][-1] > out['cmc'][0]


def test_megaface_float32_agrees_on_random_data():
  rng = np.random.default_rng(1)
  labels = np.repeat(np.arange(5), 4)
  probes = rng.normal(size=(20, 8)) + 2 * rng.normal(size=(5, 8))[labels]
  distractors = rng.normal(size=(300, 8))
  a = identification.megaface_rank1(probes, labels, distractors)
  b = identification.megaface_rank1(probes, labels, distractors, dtype=np.float32)
  assert a['rank1'] == b['rank1']


def test_megaface_single_image_identity_contributes_nothing():
  rng = np.random.default_rng(2)
  labels = np.array([0, 0, 0, 1, 1])
  probes = rng.normal(size=(5, 4))
  distractors = rng.normal(size=(10, 4))
  base = identification.megaface_rank1(probes, labels, distractors)
  more = identification.megaface_rank1(np.vstack([probes, rng.normal(size=(1, 4))]), np.append(labels, 7), distractors)
  for key in ('rank1', 'num_trials', 'num_correct', 'num_identities'):
    assert more[key] == base[key]
  with pytest.raises(ValueError, match='>= 2 probe images'):
    identification.megaface_rank1(probes[:2], np.array([0, 1]), distractors)


def test_megaface_ties_count_as_correct():
  # Exactly representable unit vectors, so every score below is exact.
  gallery = np.array([1.0, 0.0, 0.0, 0.0])
  probe = np.array([0.5, 0.5, 0.5, 0.5])
  probes = np.stack([gallery, probe])
  labels = np.array([0, 0])
  # (i=gallery, j=probe): score 0.5; the distractor equal to `gallery` also scores 0.5 against `probe`: a
  # tie, which counts as correct. (i=probe, j=gallery): score 0.5, but that distractor scores 1.0 against
  # `gallery`: wrong at rank 1; right at rank 2, as the other distractor scores 0.0 against `gallery`.
  distractors = np.stack([gallery, np.array([0.0, -1.0, 0.0, 0.0])])
  out = identification.megaface_rank1(probes, labels, distractors, max_rank=2)
  assert out['num_trials'] == 2
  np.testing.assert_array_equal(out['correct'], [True, False])  # order: (i=0, j=1), then (i=1, j=0)
  np.testing.assert_allclose(out['cmc'], [0.5, 1.0])
  # Nudge the distractor above the tie: the first triple becomes wrong too.
  nudged = distractors.copy()
  nudged[0] = [1.0, 0.01, 0.0, 0.0]
  out = identification.megaface_rank1(probes, labels, nudged, max_rank=1)
  np.testing.assert_array_equal(out['correct'], [False, False])


def test_megaface_rejects_bad_input():
  x = np.ones((3, 4))
  with pytest.raises(ValueError):
    identification.megaface_rank1(x, np.zeros(2), x)
  with pytest.raises(ValueError):
    identification.megaface_rank1(x, np.zeros(3), np.ones((3, 5)))
  with pytest.raises(ValueError, match='all-zero'):
    identification.megaface_rank1(x, np.zeros(3), np.zeros((2, 4)))
  with pytest.raises(ValueError, match='no distractors'):
    identification.megaface_rank1(x, np.zeros(3), np.ones((0, 4)))


def test_classification_accuracy_logits_and_predictions():
  labels = np.array([0, 1, 2, 1])
  logits = np.array([[3.0, 0, 0], [0, 2, 1], [1, 0, 0], [0, 0, 5]])  # argmax 0, 1, 0, 2 -> 2 of 4 right
  assert identification.classification_accuracy(logits, labels) == 0.5
  assert identification.classification_accuracy(np.array([0, 1, 2, 0]), labels) == 0.75
  per_run = identification.classification_accuracy(np.stack([logits, np.eye(3)[labels]]), labels)
  np.testing.assert_allclose(per_run, [0.5, 1.0])
  with pytest.raises(ValueError):
    identification.classification_accuracy(np.zeros(3, int), labels)


def test_one_nn_matches_scikit_learn():
  rng = np.random.default_rng(3)
  train_y = np.repeat(np.arange(6), 5)
  centres = rng.normal(size=(6, 10))
  train_x = centres[train_y] + rng.normal(size=(30, 10))
  test_y = np.repeat(np.arange(6), 4)
  test_x = centres[test_y] + rng.normal(size=(24, 10))
  knn = neighbors.KNeighborsClassifier(n_neighbors=1, metric='cosine', algorithm='brute')
  expected = knn.fit(train_x, train_y).predict(test_x)
  np.testing.assert_array_equal(identification.one_nn_predict(train_x, train_y, test_x, block_bytes=64), expected)
  assert identification.one_nn_accuracy(train_x, train_y, test_x, test_y) == pytest.approx(np.mean(expected == test_y))


def test_logistic_regression_separable_and_label_space():
  rng = np.random.default_rng(4)
  names = np.array(['ann', 'bob', 'cy'])
  y = np.repeat(np.arange(3), 10)
  centres = 5 * np.eye(3, 6)
  x = centres[y] + 0.1 * rng.normal(size=(30, 6))
  pred = identification.logistic_regression_predict(x[::2], names[y[::2]], x[1::2])
  np.testing.assert_array_equal(pred, names[y[1::2]])
  assert identification.logistic_regression_accuracy(x[::2], y[::2], x[1::2], y[1::2]) == 1.0
  # Labels scrambled against the features: the test accuracy is then far from perfect.
  scrambled = rng.permutation(y)
  assert identification.logistic_regression_accuracy(x[::2], scrambled[::2], x[1::2], scrambled[1::2]) < 1.0


def _t2_cdf(t):
  return 0.5 + t / (2 * math.sqrt(2 + t * t))


def _t2_quantile(q):
  u = 2 * q - 1  # solves t / sqrt(2 + t^2) = u
  return u * math.sqrt(2 / (1 - u * u))


def test_mean_ci_three_values_closed_form():
  v = [1.0, 2.0, 4.0]
  mean = 7 / 3
  sd = math.sqrt(((1 - mean) ** 2 + (2 - mean) ** 2 + (4 - mean) ** 2) / 2)
  half = _t2_quantile(0.975) * sd / math.sqrt(3)
  r = significance.mean_ci(v)
  assert r.n == 3 and r.mean == pytest.approx(mean) and r.std == pytest.approx(sd)
  assert (r.ci_low, r.ci_high) == pytest.approx((mean - half, mean + half))
  r90 = significance.mean_ci(v, level=0.9)
  assert r90.ci_high - r90.ci_low == pytest.approx(2 * _t2_quantile(0.95) * sd / math.sqrt(3))


def test_mean_ci_single_seed_is_undefined():
  r = significance.mean_ci([97.5])
  assert r.mean == 97.5 and r.std is None and r.ci_low is None and r.ci_high is None
  assert 'undefined' in r.note
  with pytest.raises(ValueError):
    significance.mean_ci([])


def test_paired_t_closed_form():
  a, b = [1.0, 2.0, 3.0], [0.0, 0.0, 1.0]  # differences 1, 2, 2
  mean, sd = 5 / 3, math.sqrt(1 / 3)
  t = mean / (sd / math.sqrt(3))
  r = significance.paired_t(a, b)
  assert r.t == pytest.approx(t) == pytest.approx(5.0)
  assert r.p == pytest.approx(2 * (1 - _t2_cdf(t)))
  half = _t2_quantile(0.975) * sd / math.sqrt(3)
  assert (r.ci_low, r.ci_high) == pytest.approx((mean - half, mean + half))
  assert significance.paired_t(a, b, alternative='greater').p == pytest.approx(1 - _t2_cdf(t))
  # Swapping the arguments flips the sign, not the two-sided p.
  swapped = significance.paired_t(b, a)
  assert swapped.mean_diff == pytest.approx(-mean) and swapped.p == pytest.approx(r.p)


def test_paired_t_degenerate_cases():
  one = significance.paired_t([99.0], [98.0])
  assert one.mean_diff == 1.0 and one.p is None and one.ci_low is None
  flat = significance.paired_t([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
  assert flat.mean_diff == pytest.approx(1.0) and flat.p is None and 'zero' in flat.note
  with pytest.raises(ValueError):
    significance.paired_t([1.0, 2.0], [1.0])


def _correctness(only_a, only_b, both=3, neither=2):
  a = [True] * only_a + [False] * only_b + [True] * both + [False] * neither
  b = [False] * only_a + [True] * only_b + [True] * both + [False] * neither
  return np.array(a), np.array(b)


def test_mcnemar_exact_binomial():
  r = significance.mcnemar(*_correctness(1, 6))
  # Two-sided exact: 2 * P(X <= 1), X ~ Binomial(7, 1/2).
  assert r.method == 'exact-binomial' and (r.only_a, r.only_b, r.n) == (1, 6, 12)
  assert r.p == pytest.approx(2 * (math.comb(7, 0) + math.comb(7, 1)) / 2**7)


def test_mcnemar_chi_square_with_continuity():
  r = significance.mcnemar(*_correctness(30, 10))
  x = (abs(30 - 10) - 1) ** 2 / 40
  assert r.method == 'chi2-continuity' and r.statistic == pytest.approx(x)
  assert r.p == pytest.approx(math.erfc(math.sqrt(x / 2)))  # chi-square(1) survival function
  balanced = significance.mcnemar(*_correctness(15, 15), exact=False)
  assert balanced.statistic == 0 and balanced.p == pytest.approx(1.0)


def test_mcnemar_no_discordant_pairs_and_validation():
  r = significance.mcnemar(*_correctness(0, 0))
  assert r.p == 1.0 and r.method == 'no-discordant-pairs'
  with pytest.raises(ValueError):
    significance.mcnemar(np.array([1, 0]), np.array([1, 1]))
  with pytest.raises(ValueError):
    significance.mcnemar(np.array([True]), np.array([True, False]))


def test_separation_by_hand():
  x = np.array([[0.0, 0], [2, 0], [10, 0], [12, 0]])
  labels = np.array([0, 0, 1, 1])
  s = separation.separation(x, labels)
  assert (s.between, s.within, s.ratio) == pytest.approx((10.0, 1.0, 10.0))
  # Three classes: between is the mean of the three centroid distances.
  x3 = np.vstack([x, [[0, 4], [0, 6]]])  # class 2, centroid (0, 5)
  s3 = separation.separation(x3, np.array([0, 0, 1, 1, 2, 2]))
  c = [np.array([1.0, 0]), np.array([11.0, 0]), np.array([0.0, 5])]
  expected_between = np.mean([np.linalg.norm(c[i] - c[j]) for i, j in itertools.combinations(range(3), 2)])
  assert s3.between == pytest.approx(expected_between) and s3.within == pytest.approx(1.0)


def test_separation_invariances_and_pca():
  rng = np.random.default_rng(5)
  labels = np.repeat([0, 1], 5)
  x = rng.normal(size=(10, 7)) + 3 * np.eye(7)[labels]
  q, _ = np.linalg.qr(rng.normal(size=(7, 7)))
  base = separation.separation(x, labels).ratio
  assert separation.separation(2.5 * x @ q + 4.0, labels).ratio == pytest.approx(base)
  both = separation.between_within_ratio(x, labels)
  assert both['full'].ratio == pytest.approx(base)
  # For 2-D data the PCA projection is a rotation (and reflection) of the centred data: same ratio.
  x2 = x[:, :2]
  two = separation.between_within_ratio(x2, labels)
  assert two['pca2'].ratio == pytest.approx(two['full'].ratio)
  # Collapsed classes: no within-class spread.
  assert separation.separation(np.array([[0.0, 0], [0, 0], [1, 1]]), np.array([0, 0, 1])).ratio == math.inf
  with pytest.raises(ValueError):
    separation.separation(x, np.zeros(10))


def _anchor_task():
  from mir_jax import embedding_sets  # pylint: disable=g-import-not-at-top
  from mir_jax import protocols  # pylint: disable=g-import-not-at-top

  ds = embedding_sets.synthetic_identities(num_classes=6, per_class=12, dim=16, seed=4, spread=1.0)
  return protocols.lfw_identity(ds, seeds=[0, 1], min_images=10)


def test_anchor_c_is_the_best_on_validation_and_anchors_pair_by_seed():
  from mir_jax import tuning  # pylint: disable=g-import-not-at-top
  from mir_jax.evaluators import anchors  # pylint: disable=g-import-not-at-top

  task = _anchor_task()
  c, scores = anchors.choose_c(task, (0.01, 1.0, 100.0), val_fraction=0.25)
  fit, val = tuning.validation_split(task.labels, task.train_idx[0], task.seeds[0], 0.25)
  for k, s in scores.items():  # each score is logistic regression at that C on seed 0's validation split
    assert s == pytest.approx(
      100
      * np.mean(
        identification.logistic_regression_predict(task.x[fit], task.labels[fit], task.x[val], c=k) == task.labels[val]
      )
    )
  assert scores[c] == max(scores.values()) and c == min(k for k, s in scores.items() if s == scores[c])
  values = anchors.run(task, c)
  for s, (tr, te) in enumerate(zip(task.train_idx, task.test_idx)):
    nn = neighbors.KNeighborsClassifier(1, metric='cosine').fit(task.x[tr], task.labels[tr])
    assert values['cosine 1-NN'][s] == pytest.approx(100 * nn.score(task.x[te], task.labels[te]))
  assert len(values['logistic regression']) == len(task.seeds)
