"""Labelled embedding sets for the head: from an `.npz` file or from the TFDS embedding cache."""

import os
from typing import NamedTuple, Optional

import numpy as np


class EmbeddingSet(NamedTuple):
  x: np.ndarray  # (n, d) float32
  labels: np.ndarray  # (n,) int32, 0..num_classes-1
  class_names: list  # name of each label
  image_ids: Optional[np.ndarray] = None  # (n,) str, when the source has them
  video_ids: Optional[np.ndarray] = None  # (n,) str '<person>/<video>' for video datasets (YTF), else None
  roles: Optional[np.ndarray] = None  # (n,) str 'probe' | 'distractor' for MegaFace, else None


def load(source: str) -> EmbeddingSet:
  """Reads an `.npz` with arrays `x` (n, d) and `labels` (n,) [and optionally `class_names`, `image_ids`,
  `video_ids`, `roles`],
  an embedding-cache dataset directory written by `python -m mir_jax.embed`, or `cache:<dataset>/<backbone>`:
  the cache that `python -m mir_jax.embed --dataset=<dataset> --backbone=<backbone>` (default settings) builds."""
  if not source:
    raise ValueError('no embedding source given: set --config.data.source to an .npz file or a cache dir')
  if source.startswith('cache:'):
    from mir_jax.cache import lookup  # pylint: disable=g-import-not-at-top  (TFDS, torch: only when used)

    dataset, _, backbone = source[len('cache:') :].partition('/')
    if not backbone:
      raise ValueError(f'a cache source reads cache:<dataset>/<backbone>, got {source!r}')
    source = str(lookup.find_cache(dataset, backbone))
  if not os.path.exists(source):
    raise FileNotFoundError(f'embedding source {source!r} does not exist')
  if source.endswith('.npz'):
    return _load_npz(source)
  from mir_jax.cache import reader  # pylint: disable=g-import-not-at-top  (TFDS import is slow; only when used)

  x, labels, meta = reader.load_embeddings(source)
  optional = lambda values: (
    np.asarray(['' if v is None else v for v in values]) if any(v is not None for v in values) else None
  )
  return EmbeddingSet(
    np.asarray(x, np.float32),
    np.asarray(labels, np.int32),
    list(meta['names']),
    np.asarray(meta['image_ids']),
    optional(meta['video_ids']),
    optional(meta['roles']),
  )


def _load_npz(path: str) -> EmbeddingSet:
  with np.load(path, allow_pickle=False) as f:
    missing = {'x', 'labels'} - set(f.files)
    if missing:
      raise ValueError(f'{path} lacks array(s) {sorted(missing)}; expected x (n, d) and labels (n,)')
    x, labels = f['x'], f['labels']
    num_classes = int(labels.max()) + 1 if labels.size else 0
    names = [str(n) for n in f['class_names']] if 'class_names' in f.files else [str(i) for i in range(num_classes)]
    image_ids, video_ids, roles = (f[k] if k in f.files else None for k in ('image_ids', 'video_ids', 'roles'))
  if x.ndim != 2 or labels.shape != (x.shape[0],):
    raise ValueError(f'{path}: x must be (n, d) and labels (n,), got {x.shape} and {labels.shape}')
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'{path}: labels must be integers, got {labels.dtype}')
  return EmbeddingSet(x.astype(np.float32), labels.astype(np.int32), names, image_ids, video_ids, roles)


def synthetic_identities(
  num_classes: int, per_class: int, dim: int, seed: int = 0, spread: float = 1.0, shared_offset: float = 2.0
) -> EmbeddingSet:
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
  for key in ('image_ids', 'video_ids', 'roles'):
    if getattr(data, key) is not None:
      arrays[key] = np.asarray(getattr(data, key))
  np.savez(path, **arrays)
