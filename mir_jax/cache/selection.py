"""Which images a cache holds: the dataset's listing with `--subset` and `--limit` applied.

Subsets (folds count from 0 as in `mir_jax.datasets.lfw`):
  min_images<k>    identities with >= k images (any dataset)
  pairs            every image named by LFW View 2 pairs.txt
  pairs_fold<k>    the images of fold k's pairs
  pairs_head<m>    the images of the first m matched and first m mismatched pairs of every fold
`limit` then keeps whole identities, in name order, while the total stays <= limit images (the first
`limit` images when even the first identity is larger).
"""

import collections
import hashlib
import os
import pathlib
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import logging

from mir_jax import paths
from mir_jax.cache import key
from mir_jax.datasets.records import FaceRecord

# Where each dataset's images live inside the shared data dir (README of ../shared/data).
_SHARED_LAYOUT = {
  'lfw': 'lfw/lfw-deepfunneled',
  'ytf': 'ytf',
  'megaface': 'megaface',
}

_WHAT_TO_PUT = {
  'lfw': (
    'the LFW deep-funneled tree: <dir>/<Name>/<Name>_<NNNN>.jpg (13,233 images), from '
    'https://vis-www.cs.umass.edu/lfw/ (lfw-deepfunneled.tgz)'
  ),
  'ytf': 'the YouTube Faces root holding aligned_images_DB/<Person>/<video>/aligned_detect_*.jpg',
  'megaface': 'the MegaFace challenge 1 root (facescrub_images/, megaface_images/, devkit/templatelists/)',
  'folder': 'a folder with one subfolder of images per identity',
}


# Datasets whose cache key holds the folder's resolved path and a digest of its image list (see select_records).
KEYED_ON_CONTENTS = ('folder',)


class UsageError(ValueError):
  """A command-line setting that cannot work, with what to do instead."""


def default_manual_dir(dataset: str) -> Optional[pathlib.Path]:
  """The dataset's images inside the shared data dir, or None when there is no shared data."""
  shared = paths.shared_data_dir()
  if shared is None or dataset not in _SHARED_LAYOUT:
    return None
  return shared / _SHARED_LAYOUT[dataset]


def default_pairs_file(manual_dir: Optional[os.PathLike] = None) -> Optional[pathlib.Path]:
  """LFW View 2 pairs.txt: beside the image tree (`../protocol/pairs.txt`) or in the shared data."""
  candidates = []
  if manual_dir is not None:
    candidates.append(pathlib.Path(manual_dir).parent / 'protocol' / 'pairs.txt')
  shared = paths.shared_data_dir()
  if shared is not None:
    candidates.append(shared / 'lfw' / 'protocol' / 'pairs.txt')
  for c in candidates:
    if c.is_file():
      return c
  return None


def _sha256(path: os.PathLike) -> str:
  return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()[:16]


def pairs_subset_ids(pairs: Sequence[Any], subset: str) -> List[str]:
  """The image ids a `pairs*` subset needs, given parsed pairs (objects with fold/image_id_a/b/same)."""
  if subset == 'pairs':
    chosen = list(pairs)
  elif m := re.fullmatch(r'pairs_fold(\d+)', subset):
    k = int(m.group(1))
    chosen = [p for p in pairs if p.fold == k]
    if not chosen:
      raise UsageError(f'--subset={subset}: pairs.txt has no fold {k} (folds count from 0)')
  elif m := re.fullmatch(r'pairs_head(\d+)', subset):
    n = int(m.group(1))
    seen: Dict[Tuple[int, bool], int] = {}
    chosen = []
    for p in pairs:
      key = (p.fold, bool(p.same))
      if seen.get(key, 0) < n:
        seen[key] = seen.get(key, 0) + 1
        chosen.append(p)
  else:
    raise UsageError(f'unknown --subset {subset!r}; use pairs, pairs_fold<k> or pairs_head<m>')
  return sorted({i for p in chosen for i in (p.image_id_a, p.image_id_b)})


def limit_records(records: Sequence[FaceRecord], limit: int) -> List[FaceRecord]:
  """Whole identities in name order while the total stays <= limit (first `limit` images if none fits)."""
  if limit <= 0:
    raise UsageError(f'--limit must be positive, got {limit}')
  by_identity: Dict[str, List[FaceRecord]] = {}
  for r in sorted(records, key=lambda r: (r.identity, r.image_id)):
    by_identity.setdefault(r.identity, []).append(r)
  out: List[FaceRecord] = []
  for identity in sorted(by_identity):
    group = by_identity[identity]
    if len(out) + len(group) > limit:
      break
    out.extend(group)
  if not out:
    out = sorted(records, key=lambda r: (r.identity, r.image_id))[:limit]
  return out


def select_records(
  dataset: str,
  manual_dir: Optional[os.PathLike],
  *,
  subset: Optional[str] = None,
  limit: Optional[int] = None,
  pairs_file: Optional[os.PathLike] = None,
  reader_kwargs: Optional[Dict[str, Any]] = None,
) -> Tuple[List[FaceRecord], Dict[str, Any], Any]:
  """Lists the dataset and applies `subset` and `limit`.

  Returns:
    (records, reader_options, listing): the records to embed, the options that selected them (they enter
    the cache key), and the reader's full listing (with what it skipped).

  Raises:
    UsageError: the manual dir is missing or a subset does not apply.
  """
  from mir_jax import datasets  # pylint: disable=g-import-not-at-top

  if manual_dir is None:
    raise UsageError(
      f'no --manual_dir given and no shared data found for {dataset!r}. Pass '
      f'--manual_dir=<dir> holding {_WHAT_TO_PUT.get(dataset, "the dataset")}.'
    )
  manual_dir = pathlib.Path(manual_dir)
  if not manual_dir.is_dir():
    what = _WHAT_TO_PUT.get(dataset, 'the dataset')
    raise UsageError(f'{dataset} images not found at {manual_dir}. Put {what} there, or pass --manual_dir=<dir>.')
  reader_kwargs = dict(reader_kwargs or {})
  listing = datasets.get_reader(dataset)(manual_dir, **reader_kwargs)
  records = list(listing)
  options: Dict[str, Any] = {'reader_kwargs': reader_kwargs, 'subset': subset, 'limit': limit}
  if subset and (m := re.fullmatch(r'min_images(\d+)', subset)):
    # Identities with >= k images: e.g. min_images10 is exactly what the LFW identity protocol reads.
    counts = collections.Counter(r.identity for r in records)
    records = [r for r in records if counts[r.identity] >= int(m.group(1))]
  elif subset:
    if dataset != 'lfw' or not subset.startswith('pairs'):
      raise UsageError(f'--subset={subset} applies to LFW only (or use min_images<k>)')
    from mir_jax.datasets import lfw  # pylint: disable=g-import-not-at-top

    pairs_file = pathlib.Path(pairs_file) if pairs_file else default_pairs_file(manual_dir)
    if pairs_file is None or not pairs_file.is_file():
      raise UsageError(f'--subset={subset} needs LFW pairs.txt; pass --pairs_file=<path>')
    wanted = set(pairs_subset_ids(list(lfw.read_pairs(pairs_file)), subset))
    records = [r for r in records if r.image_id in wanted]
    missing = wanted - {r.image_id for r in records}
    if missing:
      logging.warning(
        '%d images named by %s are not in %s (e.g. %s); they will show up as missing pairs.',
        len(missing),
        pairs_file,
        manual_dir,
        sorted(missing)[:3],
      )
    # Which pairs.txt chose the subset matters; where it lives does not.
    options['pairs_sha256'] = _sha256(pairs_file)
  if limit:
    records = limit_records(records, limit)
  if not records:
    raise UsageError('the selection is empty')
  if dataset in KEYED_ON_CONTENTS:
    # Any folder of anyone's photos reads as dataset 'folder': unlike a named dataset, whose copies hold the
    # same images wherever they live, two folders must not name one cache. So the key holds where the folder
    # is and what it lists; adding a photo names a new cache rather than refusing the old one.
    options['root'] = os.fspath(manual_dir.resolve())
    options['records_fingerprint'] = key.records_fingerprint(records)
    # A photo replaced under the same name must not keep its old embedding.
    options['files_fingerprint'] = files_fingerprint(records)
  return records, options, listing


def files_fingerprint(records: Sequence[FaceRecord]) -> str:
  """A digest of each image file's size and modification time (of the link itself where it leads nowhere)."""
  h = hashlib.sha256()
  for r in sorted(records, key=lambda r: r.image_id):
    try:
      st = os.stat(r.path)
    except OSError:
      st = os.lstat(r.path)
    h.update(f'{r.image_id}\t{st.st_size}\t{st.st_mtime_ns}\n'.encode())
  return h.hexdigest()[:16]
