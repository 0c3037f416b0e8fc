"""Per-identity splits."""

import numpy as np
import pytest

from mir_jax import splits


def test_stratified_split_partitions_each_identity():
  labels = np.repeat(np.arange(4), [10, 11, 3, 2])
  train, test = splits.stratified_split(labels, 0.5, seed=0)
  assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(labels.size))
  counts = np.bincount(labels[train], minlength=4)
  assert counts.tolist() == [5, 6, 2, 1]  # round(0.5 * n), at least one left for test
  assert np.all(np.bincount(labels[test], minlength=4) >= 1)


def test_stratified_split_is_seeded():
  labels = np.repeat(np.arange(5), 10)
  a, b, c = (splits.stratified_split(labels, 0.5, seed=s)[0] for s in (1, 1, 2))
  assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_too_small_identity_raises():
  with pytest.raises(ValueError, match='identity 1 has 1 example'):
    splits.stratified_split(np.array([0, 0, 1]), 0.5, seed=0)


def test_fixed_count_split():
  labels = np.repeat(np.arange(3), [12, 20, 11])
  train, test = splits.fixed_count_split(labels, 10, seed=0)
  assert np.bincount(labels[train]).tolist() == [10, 10, 10]
  assert np.bincount(labels[test]).tolist() == [2, 10, 1]
  with pytest.raises(ValueError, match='needs more'):
    splits.fixed_count_split(np.repeat(np.arange(2), [10, 12]), 10, seed=0)


def test_keep_identities_with_at_least():
  keep, labels, kept = splits.keep_identities_with_at_least(np.array([0, 1, 1, 2, 2, 2]), 2)
  assert keep.tolist() == [False, True, True, True, True, True]
  assert labels.tolist() == [0, 0, 1, 1, 1] and kept.tolist() == [1, 2]
