"""Labelled embedding sets for the head: from an `.npz` file or from the TFDS embedding cache."""

import os
from typing import NamedTuple, Optional

import numpy as np


class EmbeddingSet(NamedTuple):
  x: np.ndarray  # (n, d) float32
  labels: np.ndarray  # (n,) int32, 0..num_classes-1
  class_names: list  # name of each label
  image_ids: Optional[np.ndarray] = None  # (n,) str, when the source has them


def load(source: str) -> EmbeddingSet:
  """Reads an `.npz` with arrays `x` (n, d) and `labels` (n,) [and optionally `class_names`, `image_ids`],
  an embedding-cache dataset directory written by `python -m mir_jax.embed`, or `cache:<dataset>/<backbone>`:
  the cache that `python -m mir_jax.embed --dataset=<dataset> --backbone=<backbone>` (default settings) builds."""
  if not source:
    raise ValueError('no embedding source given: set --config.data.source to an .npz file or a cache dir')
  if source.startswith('cache:'):
    source = str(_default_cache_dir(*source[len('cache:'):].split('/', 1)))
  if not os.path.exists(source):
    raise FileNotFoundError(f'embedding source {source!r} does not exist')
  if source.endswith('.npz'):
    return _load_npz(source)
  from mir_jax import cache  # pylint: disable=g-import-not-at-top  (TFDS import is slow; only when used)
  x, labels, meta = cache.load_embeddings(source)
  return EmbeddingSet(np.asarray(x, np.float32), np.asarray(labels, np.int32), list(meta['names']),
                      np.asarray(meta['image_ids']))


def _default_cache_dir(dataset: str, backbone: str = ''):
  """The cache directory `mir_jax.embed` writes for a dataset and backbone with default settings."""
  from mir_jax import cache, embed  # pylint: disable=g-import-not-at-top
  if not backbone:
    raise ValueError(f'cache source must read cache:<dataset>/<backbone>, got cache:{dataset}')
  _, spec, _, _ = embed.prepare(dataset, backbone)
  directory = cache.cache_dir(embed.default_data_dir(), spec)
  if not cache.is_complete(directory):
    raise FileNotFoundError(f'no complete embedding cache for {dataset}/{backbone} at {directory}; build it with:\n'
                            f'  {embed.embed_command(dataset, backbone)}')
  return directory


def _load_npz(path: str) -> EmbeddingSet:
  with np.load(path, allow_pickle=False) as f:
    missing = {'x', 'labels'} - set(f.files)
    if missing:
      raise ValueError(f'{path} lacks array(s) {sorted(missing)}; expected x (n, d) and labels (n,)')
    x, labels = f['x'], f['labels']
    num_classes = int(labels.max()) + 1 if labels.size else 0
    names = [str(n) for n in f['class_names']] if 'class_names' in f.files else [str(i) for i in range(num_classes)]
    image_ids = f['image_ids'] if 'image_ids' in f.files else None
  if x.ndim != 2 or labels.shape != (x.shape[0],):
    raise ValueError(f'{path}: x must be (n, d) and labels (n,), got {x.shape} and {labels.shape}')
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'{path}: labels must be integers, got {labels.dtype}')
  return EmbeddingSet(x.astype(np.float32), labels.astype(np.int32), names, image_ids)


def synthetic_identities(num_classes: int, per_class: int, dim: int, seed: int = 0, spread: float = 1.0,
                         shared_offset: float = 2.0) -> EmbeddingSet:
  """Gaussian identity clusters plus one offset shared by every face, L2-normalised like FaceNet/dlib output.

  The shared offset is the "commonality" the paper's head is meant to remove.
  """
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(num_classes, dim))
  offset = shared_offset * rng.normal(size=dim)
  labels = np.repeat(np.arange(num_classes), per_class)
  x = centres[labels] + spread * rng.normal(size=(labels.size, dim)) + offset
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  return EmbeddingSet(x.astype(np.float32), labels.astype(np.int32), [f'id{i}' for i in range(num_classes)])


def save_npz(path: str, data: EmbeddingSet):
  arrays = {'x': data.x, 'labels': data.labels, 'class_names': np.asarray(data.class_names)}
  if data.image_ids is not None:
    arrays['image_ids'] = np.asarray(data.image_ids)
  np.savez(path, **arrays)
