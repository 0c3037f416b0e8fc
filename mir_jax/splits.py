"""Seeded, per-identity splits of labelled embeddings (the paper names no split; protocols are in BUILD.md)."""

import numpy as np


def _split_per_identity(labels, seed: int, num_train_of):
  """Shuffles each identity's examples and gives the first num_train_of(count) to train, the rest to test."""
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  train, test = [], []
  for label in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == label))
    k = num_train_of(label, idx.size)
    train.append(idx[:k])
    test.append(idx[k:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def stratified_split(labels, train_fraction: float, seed: int, min_train: int = 1, min_test: int = 1):
  """Splits each identity's examples into train and test, independently per identity.

  Each identity gives round(train_fraction * count) examples to train, clipped so that at least
  `min_train` go to train and `min_test` to test. Returns (train_idx, test_idx), sorted int arrays.
  """
  if not 0.0 < train_fraction < 1.0:
    raise ValueError(f'train_fraction must lie in (0, 1), got {train_fraction}')

  def num_train(label, count):
    if count < min_train + min_test:
      raise ValueError(
        f'identity {label} has {count} example(s), fewer than min_train + min_test = '
        f'{min_train + min_test}; filter identities by image count first'
      )
    return int(np.clip(round(train_fraction * count), min_train, count - min_test))

  return _split_per_identity(labels, seed, num_train)


def fixed_count_split(labels, num_train: int, seed: int):
  """davidsandberg/facenet's classifier split: `num_train` examples of each identity train, the rest test."""

  def count_check(label, count):
    if count <= num_train:
      raise ValueError(f'identity {label} has {count} example(s); a {num_train}-per-identity split needs more')
    return num_train

  return _split_per_identity(labels, seed, count_check)


def keep_identities_with_at_least(labels, min_count: int):
  """Returns (mask of examples whose identity has >= min_count examples, their labels re-indexed 0..K-1,
  the original label of each kept class)."""
  labels = np.asarray(labels)
  counts = np.bincount(labels)
  keep = counts[labels] >= min_count
  kept_classes = np.flatnonzero(counts >= min_count)
  remap = np.full(counts.size, -1)
  remap[kept_classes] = np.arange(kept_classes.size)
  return keep, remap[labels[keep]], kept_classes
