"""Detections found once per (dataset, aligner settings) and read back by every backbone's embedding cache.

With a fast backbone MTCNN is most of an embedding run, and it does not depend on the backbone: the cache
of a second backbone over the same images reads the boxes the first run found instead of detecting again.

An entry holds one aligner call's detections (one worker task: up to `task_size` images), keyed by what
decides them: the aligner's `config_key()` and batch size, and each image's id and the sha256 of its bytes,
in the call's order. The bytes, not the path and modification time, because a copy of the same photos
(re-extracted, copied without `-p`, mounted afresh) has the same boxes and should not be detected again.
facenet-pytorch's MTCNN moves boxes by float rounding when an image's batchmates change (BUILD.md,
"Embedding cache"), so keying on the whole call keeps a reused detection bit-identical to the one the call
would compute, whatever was built before. Two backbones'
caches of the same images cut the same calls (the records sorted by id, the same chunk and task sizes), so
they share every entry; another subset of the images cuts other calls, and detects them itself.

Layout: `<data_dir>/detections/<dataset>_<hash of the aligner key>/<sha256 of the call>.json`. Each entry
is written whole (a temporary file, then a rename), so concurrent workers and killed runs leave no half
entry; one that cannot be read is detected again and rewritten.
"""

import hashlib
import json
import os
import pathlib
from typing import Any, Dict, List, Optional, Sequence
import uuid

from absl import logging
import numpy as np

from mir_jax.backbones.base import Detection
from mir_jax.cache import key
from mir_jax.cache import verify
from mir_jax.datasets.records import FaceRecord

DIRECTORY = 'detections'
# Bump when an entry's layout or what its key covers changes: older entries are then never read.
FORMAT_VERSION = 2  # 2: images keyed by content digest, not path and mtime


def _digest(obj: Any) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(',', ':')).encode()).hexdigest()


def store_dir(data_dir: os.PathLike, dataset: str, align_config: Dict[str, Any]) -> pathlib.Path:
  """Where the detections of `dataset` under these aligner settings live."""
  return pathlib.Path(data_dir) / DIRECTORY / f'{key.slug(dataset)}_{_digest(align_config)[:12]}'


def _to_json(d: Detection) -> dict:
  as_list = lambda a: None if a is None else np.asarray(a, np.float64).tolist()
  return {
    'box': as_list(d.box),
    'landmarks': as_list(d.landmarks),
    'detected': bool(d.detected),
    'fallback': d.fallback,
    'reason': d.reason,
  }


def _from_json(d: dict) -> Detection:
  as_array = lambda a: None if a is None else np.asarray(a, np.float64)
  return Detection(
    box=as_array(d['box']),
    landmarks=as_array(d['landmarks']),
    detected=bool(d['detected']),
    fallback=d['fallback'],
    reason=d['reason'],
  )


class DetectionStore:
  """The entries of one (dataset, aligner settings) directory (`store_dir`)."""

  def __init__(self, directory: os.PathLike):
    self.directory = pathlib.Path(directory)

  def entry(self, aligner, records: Sequence[FaceRecord]) -> Optional[str]:
    """The key of one aligner call over `records`' images, in this order (None: a file cannot be read, so
    the call is not stored)."""
    images = []
    for r in records:
      try:
        # The call's images were just decoded from these files, so this reads the page cache, not the disk.
        digest = verify.file_sha256(r.path)
      except (OSError, TypeError, ValueError):
        return None
      images.append([r.image_id, digest])
    return _digest(
      {
        'format_version': FORMAT_VERSION,
        'aligner': aligner.config_key(),
        'batch_size': getattr(aligner, 'batch_size', None),
        'images': images,
      }
    )

  def _path(self, entry: str) -> pathlib.Path:
    return self.directory / f'{entry}.json'

  def load(self, entry: str, count: int) -> Optional[List[Detection]]:
    """The call's stored detections, or None when there are none (or they cannot be read)."""
    path = self._path(entry)
    try:
      stored = json.loads(path.read_text())
      if stored['format_version'] != FORMAT_VERSION or len(stored['detections']) != count:
        raise ValueError(f'holds {len(stored["detections"])} detections, the call has {count} images')
      return [_from_json(d) for d in stored['detections']]
    except FileNotFoundError:
      return None
    except (OSError, ValueError, KeyError, TypeError) as e:
      logging.warning('Detection entry %s is unreadable (%s: %s); detecting again', path, type(e).__name__, e)
      return None

  def save(self, entry: str, detections: Sequence[Detection]) -> None:
    self.directory.mkdir(parents=True, exist_ok=True)
    path = self._path(entry)
    tmp = path.with_name(f'{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp')
    tmp.write_text(json.dumps({'format_version': FORMAT_VERSION, 'detections': [_to_json(d) for d in detections]}))
    os.replace(tmp, path)
