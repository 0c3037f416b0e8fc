"""What a cache holds (`CacheSpec`), the directory name that hashes it, and where its files live."""

import dataclasses
import hashlib
import json
import os
import pathlib
import re
from typing import Any, Dict, Sequence

import numpy as np

from mir_jax.datasets.records import FaceRecord

# Bump when the record layout or the meaning of a stored field changes: old caches then get a new key.
FORMAT_VERSION = 1
# The single TFDS split holding every image; experiments carve their own train/test splits from it.
SPLIT = 'full'
VERSION = '1.0.0'
# File names inside a cache directory (see the package docstring).
WORK_DIR = '_work'
INFO_FILE = 'mir_cache.json'
SKIPPED_FILE = 'skipped_images.json'


class CacheError(RuntimeError):
  """A cache directory that is missing, incomplete, or inconsistent with the requested run."""


def _canonical(obj: Any) -> Any:
  """JSON-stable form of config values (tuples -> lists, numpy scalars -> Python)."""
  if isinstance(obj, dict):
    return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
  if isinstance(obj, (list, tuple)):
    return [_canonical(v) for v in obj]
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, (str, int, float, bool)) or obj is None:
    return obj
  if isinstance(obj, os.PathLike):
    return os.fspath(obj)
  raise TypeError(f'cannot key a cache on {type(obj).__name__} value {obj!r}; use JSON-like values')


@dataclasses.dataclass(frozen=True)
class CacheSpec:
  """Everything that decides what a cache holds; its hash names the cache directory.

  Attributes:
    dataset: dataset name, e.g. 'lfw'.
    reader_options: options that select the images (subset, limit, ...); not the data location, so a moved
      copy of the same data hits the same cache.
    backbone_config: the backbone's `config_key()`.
    align_config: the aligner's `config_key()`.
    flip: whether the embedding of the horizontally mirrored face is stored too.
  """

  dataset: str
  reader_options: Dict[str, Any]
  backbone_config: Dict[str, Any]
  align_config: Dict[str, Any]
  flip: bool = False

  def as_dict(self) -> Dict[str, Any]:
    return _canonical(
      {
        'format_version': FORMAT_VERSION,
        'dataset': self.dataset,
        'reader_options': self.reader_options,
        'backbone_config': self.backbone_config,
        'align_config': self.align_config,
        'flip': self.flip,
      }
    )

  def key(self) -> str:
    blob = json.dumps(self.as_dict(), sort_keys=True, separators=(',', ':'))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]

  def name(self) -> str:
    backbone = self.backbone_config.get('backbone') or self.backbone_config.get('name') or 'backbone'
    # TFDS dataset names are lower-case identifiers; file names are built from them.
    return slug(f'{self.dataset}_{backbone}') + '_' + self.key()


def canonical_config(config: Dict[str, Any]) -> Dict[str, Any]:
  """`config` as the key hashes it: what two configs must agree on to name the same cache."""
  return _canonical(config)


def slug(text: str) -> str:
  """`text` as a lower-case identifier (TFDS dataset names, and the file names built from them)."""
  return re.sub(r'[^a-z0-9]+', '_', text.lower()).strip('_')


def cache_dir(data_dir: os.PathLike, spec: CacheSpec) -> pathlib.Path:
  """`<data_dir>/<name>/<version>`: where `spec`'s cache lives (whether or not it exists yet)."""
  return pathlib.Path(data_dir) / spec.name() / VERSION


def shard_path(directory: pathlib.Path, name: str, index: int, total: int) -> pathlib.Path:
  """Shard `index` of `total` in a cache directory, named the way TFDS expects."""
  return directory / f'{name}-{SPLIT}.array_record-{index:05d}-of-{total:05d}'


def is_complete(directory: os.PathLike) -> bool:
  d = pathlib.Path(directory)
  return (d / 'dataset_info.json').is_file() and (d / INFO_FILE).is_file()


def records_fingerprint(records: Sequence[FaceRecord]) -> str:
  """A digest of the image ids, identities, videos and roles a cache was built from, in any order."""
  h = hashlib.sha256()
  for r in sorted(records, key=lambda r: r.image_id):
    h.update(f'{r.image_id}\t{r.identity}\t{r.video_id or ""}\t{r.role or ""}\n'.encode())
  return h.hexdigest()[:16]
