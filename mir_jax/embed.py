r"""Builds (or resumes) the embedding cache of a face dataset.

  python -m mir_jax.embed --dataset=lfw --backbone=dlib-resnet
  python -m mir_jax.embed --dataset=lfw --backbone=dlib-resnet --subset=pairs_head3   # CI-sized

The cache is a TFDS dataset (array_record) under `--data_dir` (default `$MIR_DATA_DIR` or
`<repo>/data_cache`); its directory name hashes every setting that changes the embeddings (see
`mir_jax.cache`). Rerunning an interrupted command resumes it; rerunning a finished one prints the
location and exits.

Subsets (`--subset`, LFW only; folds count from 0 as in `mir_jax.datasets.lfw`):
  pairs            every image named by View 2 pairs.txt (7,701 images)
  pairs_fold<k>    the images of fold k's 600 pairs
  pairs_head<m>    the images of the first m matched and first m mismatched pairs of every fold
                   (20*m pairs over all 10 folds, so 10-fold verification still runs on them)
`--limit=N` then keeps whole identities, in name order, while the total stays <= N images (the first N
images when even the first identity is larger), so a limited run still holds complete identities.
"""

import collections
import functools
import hashlib
import os
import pathlib
import re
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging

from mir_jax import cache
from mir_jax import paths
from mir_jax.datasets.records import FaceRecord

DATA_DIR_ENV = 'MIR_DATA_DIR'

# Where each dataset's images live inside the shared data dir (README of ../shared/data).
_SHARED_LAYOUT = {
    'lfw': 'lfw/lfw-deepfunneled',
    'ytf': 'ytf',
    'megaface': 'megaface',
}

_WHAT_TO_PUT = {
    'lfw': ('the LFW deep-funneled tree: <dir>/<Name>/<Name>_<NNNN>.jpg (13,233 images), from '
            'https://vis-www.cs.umass.edu/lfw/ (lfw-deepfunneled.tgz)'),
    'ytf': 'the YouTube Faces root holding aligned_images_DB/<Person>/<video>/aligned_detect_*.jpg',
    'megaface': 'the MegaFace challenge 1 root (facescrub_images/, megaface_images/, devkit/templatelists/)',
    'folder': 'a folder with one subfolder of images per identity',
}


def default_data_dir() -> pathlib.Path:
  """`$MIR_DATA_DIR`, else `<repo>/data_cache` (git-ignored)."""
  env = os.environ.get(DATA_DIR_ENV)
  return pathlib.Path(env).expanduser() if env else paths.repo_root() / 'data_cache'


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


class UsageError(ValueError):
  """A command-line setting that cannot work, with what to do instead."""


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


def parse_options(items: Sequence[str]) -> Dict[str, Any]:
  """`key=value` strings -> dict, values parsed as int, float, bool or None when they look like one."""
  out: Dict[str, Any] = {}
  for item in items or ():
    if '=' not in item:
      raise UsageError(f'expected key=value, got {item!r}')
    k, v = item.split('=', 1)
    out[k.strip()] = _parse_value(v.strip())
  return out


def _parse_value(v: str) -> Any:
  low = v.lower()
  if low in ('true', 'false'):
    return low == 'true'
  if low in ('none', 'null'):
    return None
  for kind in (int, float):
    try:
      return kind(v)
    except ValueError:
      pass
  return v


def select_records(dataset: str,
                   manual_dir: Optional[os.PathLike],
                   *,
                   subset: Optional[str] = None,
                   limit: Optional[int] = None,
                   pairs_file: Optional[os.PathLike] = None,
                   reader_kwargs: Optional[Dict[str, Any]] = None
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
    raise UsageError(f'no --manual_dir given and no shared data found for {dataset!r}. Pass '
                     f'--manual_dir=<dir> holding {_WHAT_TO_PUT.get(dataset, "the dataset")}.')
  manual_dir = pathlib.Path(manual_dir)
  if not manual_dir.is_dir():
    what = _WHAT_TO_PUT.get(dataset, 'the dataset')
    raise UsageError(f'{dataset} images not found at {manual_dir}. Put {what} there, or pass '
                     '--manual_dir=<dir>.')
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
      logging.warning('%d images named by %s are not in %s (e.g. %s); they will show up as missing pairs.',
                      len(missing), pairs_file, manual_dir, sorted(missing)[:3])
    # Which pairs.txt chose the subset matters; where it lives does not.
    options['pairs_sha256'] = _sha256(pairs_file)
  if limit:
    records = limit_records(records, limit)
  if not records:
    raise UsageError('the selection is empty')
  return records, options, listing


def make_backbone_factory(backbone: str, backbone_options: Dict[str, Any]):
  from mir_jax import backbones  # pylint: disable=g-import-not-at-top
  return functools.partial(backbones.get_backbone, backbone, **backbone_options)


def make_aligner_factory(num_threads: Optional[int]):
  from mir_jax import align  # pylint: disable=g-import-not-at-top
  return functools.partial(align.Aligner, num_threads=num_threads)


def prepare(dataset: str,
            backbone: str,
            *,
            manual_dir: Optional[os.PathLike] = None,
            subset: Optional[str] = None,
            limit: Optional[int] = None,
            pairs_file: Optional[os.PathLike] = None,
            backbone_options: Optional[Dict[str, Any]] = None,
            reader_kwargs: Optional[Dict[str, Any]] = None,
            flip: bool = False,
            num_workers: int = 2):
  """Everything needed to build or find a cache, without embedding anything.

  Returns:
    (records, spec, pipeline, backbone_instance).
  """
  manual_dir = manual_dir or default_manual_dir(dataset)
  records, reader_options, _ = select_records(dataset, manual_dir, subset=subset, limit=limit,
                                               pairs_file=pairs_file, reader_kwargs=reader_kwargs)
  backbone_factory = make_backbone_factory(backbone, dict(backbone_options or {}))
  # Workers share the cores, so each pins torch to one thread; alone, this process may use them all.
  aligner_factory = make_aligner_factory(1 if num_workers > 0 else None)
  model = backbone_factory()
  from mir_jax import align  # pylint: disable=g-import-not-at-top
  # The default aligner's settings, read without loading MTCNN's weights.
  spec = cache.CacheSpec(dataset=dataset, reader_options=reader_options, backbone_config=model.config_key(),
                         align_config=align.config_key(), flip=flip)
  pipeline = cache.Pipeline(backbone_factory=backbone_factory, aligner_factory=aligner_factory, flip=flip)
  return records, spec, pipeline, model


def find_cache(dataset: str, backbone: str, *, data_dir: Optional[os.PathLike] = None, manual_dir=None,
               subset=None, limit=None, pairs_file=None, backbone_options=None, flip=False,
               reader_kwargs=None) -> pathlib.Path:
  """The complete cache `python -m mir_jax.embed` builds for these settings.

  Raises:
    cache.CacheError: it is missing or incomplete; the message holds the embed command that builds it.
  """
  data_dir = pathlib.Path(data_dir) if data_dir else default_data_dir()
  records, spec, _, _ = prepare(dataset, backbone, manual_dir=manual_dir, subset=subset, limit=limit,
                                pairs_file=pairs_file, backbone_options=backbone_options, flip=flip,
                                reader_kwargs=reader_kwargs)
  directory = cache.cache_dir(data_dir, spec)
  if cache.is_complete(directory):
    # The key holds the settings, not where the images live: a cache of another copy with other images
    # (a fixture, an older download) has the same key and must not stand in for this one.
    if cache.read_info(directory).get('records_fingerprint') != cache.records_fingerprint(records):
      raise cache.CacheError(f'the embedding cache {directory} was built from a different list of images than '
                             f'{manual_dir or default_manual_dir(dataset)} holds now; delete it or pass another '
                             '--data_dir to rebuild')
    return directory
  command = embed_command(
      dataset, backbone, subset=subset, limit=limit, flip=flip, manual_dir=manual_dir, pairs_file=pairs_file,
      data_dir=None if data_dir == default_data_dir() else data_dir,
      backbone_option=[f'{k}={v}' for k, v in (backbone_options or {}).items()],
      reader_option=[f'{k}={v}' for k, v in (reader_kwargs or {}).items()])
  state = 'is incomplete (interrupted run)' if directory.exists() else 'does not exist'
  raise cache.CacheError(f'the embedding cache {directory} {state}. Build it first with:\n  {command}')


def embed_command(dataset: str, backbone: str, **flags_: Any) -> str:
  """The shell command that builds the cache for these settings (for error messages)."""
  parts = [f'python -m mir_jax.embed --dataset={dataset} --backbone={backbone}']
  for k, v in flags_.items():
    if v in (None, False, '', [], ()):
      continue
    if isinstance(v, (list, tuple)):
      parts += [f'--{k}={x}' for x in v]
    elif v is True:
      parts.append(f'--{k}')
    else:
      parts.append(f'--{k}={v}')
  return ' '.join(parts)


FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('dataset', 'lfw', 'Dataset reader name (mir_jax.datasets.DATASETS).')
  flags.DEFINE_string('backbone', None, 'Backbone name (mir_jax.backbones); default: the default backbone.')
  flags.DEFINE_multi_string('backbone_option', [], 'key=value passed to the backbone, e.g. num_jitters=10.')
  flags.DEFINE_multi_string('reader_option', [], 'key=value passed to the dataset reader, e.g. set_size=100.')
  flags.DEFINE_string('data_dir', None, f'Cache root (default ${DATA_DIR_ENV} or <repo>/data_cache).')
  flags.DEFINE_string('manual_dir', None, 'Dataset images (default: the shared data copy).')
  flags.DEFINE_string('subset', None, 'min_images<k> (identities with >= k images), or the LFW pair subsets '
                      'pairs, pairs_fold<k>, pairs_head<m>.')
  flags.DEFINE_integer('limit', None, 'Keep whole identities, in name order, up to this many images.')
  flags.DEFINE_string('pairs_file', None, 'LFW pairs.txt for --subset (default: beside the images).')
  flags.DEFINE_bool('flip', False, 'Also store the embedding of the mirrored face.')
  flags.DEFINE_integer('num_workers', 2, 'Decode/detect/preprocess processes; 0 = all in this process.')
  flags.DEFINE_integer('chunk_size', cache.DEFAULT_CHUNK_SIZE, 'Images per shard (the unit of resumption).')
  flags.DEFINE_integer('batch_size', cache.DEFAULT_BATCH_SIZE, 'Images per backbone call.')


def backbone_name(name: Optional[str]) -> str:
  if name:
    return name
  from mir_jax import backbones  # pylint: disable=g-import-not-at-top
  return backbones.default_backbone_name()


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  name = backbone_name(FLAGS.backbone)
  try:
    records, spec, pipeline, model = prepare(
        FLAGS.dataset, name, manual_dir=FLAGS.manual_dir, subset=FLAGS.subset, limit=FLAGS.limit,
        pairs_file=FLAGS.pairs_file, backbone_options=parse_options(FLAGS.backbone_option),
        reader_kwargs=parse_options(FLAGS.reader_option), flip=FLAGS.flip, num_workers=FLAGS.num_workers)
  except UsageError as e:
    sys.exit(f'error: {e}')
  data_dir = pathlib.Path(FLAGS.data_dir) if FLAGS.data_dir else default_data_dir()
  print(f'{len(records)} images of {FLAGS.dataset} -> {cache.cache_dir(data_dir, spec)}', flush=True)
  result = cache.build(records, spec, pipeline, data_dir=data_dir, backbone=model,
                       chunk_size=FLAGS.chunk_size, batch_size=FLAGS.batch_size, num_workers=FLAGS.num_workers,
                       description=f'{FLAGS.dataset} embedded with {name}')
  info = cache.read_info(result.directory)
  rate = (f', {result.chunks_computed} chunks in {result.seconds:.0f} s' if result.chunks_computed else
          ' (already complete)')
  print(f'cache: {result.directory}{rate}\n'
        f'  embedded {info["num_embedded"]} of {info["num_records"]} images; '
        f'{info["num_bad_images"]} unreadable; {info["num_detection_fallbacks"]} without a detected face '
        f'(centre-box fallback); key {info["key"]}', flush=True)


if __name__ == '__main__':
  define_flags()
  app.run(main)
