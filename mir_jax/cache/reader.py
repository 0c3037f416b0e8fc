"""Reading a complete cache back: by directory, name or key, as a TFDS data source or into memory."""

import json
import os
import pathlib
from typing import Any, Dict, Optional, Tuple

import numpy as np

from mir_jax.cache import key
from mir_jax.cache import verify as verify_lib


def resolve(source: os.PathLike, data_dir: Optional[os.PathLike] = None) -> pathlib.Path:
  """The TFDS dataset directory named by `source`.

  Args:
    source: a dataset directory (`.../<name>/1.0.0`), its parent (`.../<name>`), a cache name, or a key
      (looked up under `data_dir`).
    data_dir: where to look up names and keys.

  Returns:
    The directory holding `dataset_info.json`.

  Raises:
    CacheError: nothing complete matches.
  """
  p = pathlib.Path(source)
  candidates = [p, p / key.VERSION]
  if data_dir is not None and not p.is_absolute():
    root = pathlib.Path(data_dir)
    candidates += [root / p / key.VERSION]
    if root.is_dir():
      candidates += sorted(d / key.VERSION for d in root.iterdir() if d.name.endswith('_' + str(source)))
  for c in candidates:
    if key.is_complete(c):
      return c
  for c in candidates:
    if (c / key.WORK_DIR / 'plan.json').is_file():
      raise key.CacheError(f'{c} is incomplete (an interrupted run); rerun the same embed command to finish it.')
  raise key.CacheError(f'no complete embedding cache found for {source!r}' + (f' under {data_dir}' if data_dir else ''))


def data_source(source: os.PathLike, data_dir: Optional[os.PathLike] = None):
  """The random-access TFDS data source of a cache (usable directly or via `grain.MapDataset.source`)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  directory = resolve(source, data_dir)
  return tfds.builder_from_directory(os.fspath(directory)).as_data_source()[key.SPLIT]


def read_info(source: os.PathLike, data_dir: Optional[os.PathLike] = None) -> Dict[str, Any]:
  """The cache's `mir_cache.json` plus its skipped-images sidecar under 'skipped'."""
  directory = resolve(source, data_dir)
  info = json.loads((directory / key.INFO_FILE).read_text())
  info['skipped'] = json.loads((directory / key.SKIPPED_FILE).read_text())
  return info


def _text(v) -> str:
  return v.decode('utf-8') if isinstance(v, bytes) else str(v)


def _damage_error(directory: pathlib.Path, damaged) -> key.CacheError:
  shards = '\n'.join(f'  {d}' for d in damaged)
  return key.CacheError(
    f'{len(damaged)} shard(s) of the embedding cache {directory} are damaged:\n{shards}\n'
    f'Recompute exactly those with:\n  {verify_lib.repair_command(directory)}'
  )


def load_embeddings(
  source: os.PathLike, data_dir: Optional[os.PathLike] = None, *, verify: bool = False
) -> Tuple[np.ndarray, np.ndarray, Dict[str, Any]]:
  """Reads a whole cache into memory.

  Args:
    source: see `resolve`.
    data_dir: see `resolve`.
    verify: first check every shard against the sha256 recorded when it was written (`mir_jax.cache.verify`); a
      damaged one raises. Without it a read that fails does the same check to say which shard is damaged.

  Returns:
    (x, labels, meta): float32 (n, dim) embeddings, int64 (n,) labels indexing `meta['names']`, and a dict
    with per-row `image_ids`, `identities`, `video_ids` (None for stills), `roles` (None when unused),
    `detected` (bool array), `boxes` (float32 (n, 4) face boxes), `embeddings_flip` (float32 (n, dim) or
    None), plus `names` (all class names),
    `info` (mir_cache.json + skipped images) and `directory`.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  directory = resolve(source, data_dir)
  if verify and (damaged := verify_lib.check(directory)):
    raise _damage_error(directory, damaged)
  builder = tfds.builder_from_directory(os.fspath(directory))
  ds = builder.as_data_source()[key.SPLIT]
  n = len(ds)
  try:
    rows = ds.__getitems__(list(range(n))) if n else []
  except Exception as e:  # pylint: disable=broad-except
    # array_record's RuntimeError names neither the shard nor a remedy ("block header hash mismatch").
    try:
      damaged = verify_lib.check(directory)
    except key.CacheError:
      raise e from None
    if damaged:
      raise _damage_error(directory, damaged) from e
    raise
  dim = builder.info.features['embedding'].shape[0]
  x = np.stack([r['embedding'] for r in rows]).astype(np.float32) if n else np.zeros((0, dim), np.float32)
  labels = np.asarray([r['label'] for r in rows], np.int64)
  flip = None
  if 'embedding_flip' in builder.info.features:
    flip = np.stack([r['embedding_flip'] for r in rows]).astype(np.float32) if n else x.copy()
  meta = {
    'names': list(builder.info.features['label'].names),
    'image_ids': [_text(r['image_id']) for r in rows],
    'identities': [_text(r['identity']) for r in rows],
    'video_ids': [_text(r['video_id']) or None for r in rows],
    'roles': [_text(r['role']) or None for r in rows],
    'detected': np.asarray([bool(r['detected']) for r in rows], bool),
    'boxes': (np.stack([r['box'] for r in rows]).astype(np.float32) if n else np.zeros((0, 4), np.float32)),
    'embeddings_flip': flip,
    'info': read_info(directory),
    'directory': directory,
  }
  return x, labels, meta
