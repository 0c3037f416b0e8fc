"""The cache a set of settings names: finding it complete (`find_cache`), or everything to build it (`prepare`).

Settings are what `python -m mir_jax.embed` takes: a dataset and its images, the subset and limit that
select them (`selection`), a backbone and its options, and whether mirrored faces are embedded too.
"""

import dataclasses
import functools
import os
import pathlib
from typing import Any, Dict, List, Optional, Tuple

from mir_jax import backbones
from mir_jax import paths
from mir_jax.cache import key
from mir_jax.cache import pipeline as pipeline_lib
from mir_jax.cache import reader
from mir_jax.cache import selection
from mir_jax.datasets.records import FaceRecord

DATA_DIR_ENV = 'MIR_DATA_DIR'


def default_data_dir() -> pathlib.Path:
  """`$MIR_DATA_DIR`, else `<repo>/data_cache` (git-ignored)."""
  env = os.environ.get(DATA_DIR_ENV)
  return pathlib.Path(env).expanduser() if env else paths.repo_root() / 'data_cache'


def backbone_name(name: Optional[str]) -> str:
  """`name`, or the default backbone's when it is empty."""
  if name:
    return name
  return backbones.default_backbone_name()


def make_backbone_factory(backbone: str, backbone_options: Dict[str, Any]):
  return functools.partial(backbones.get_backbone, backbone, **backbone_options)


def aligner_config(align_options: Optional[Dict[str, Any]] = None):
  """`align.AlignerConfig(**align_options)` (None or {} = the defaults).

  Raises:
    selection.UsageError: the options are not valid aligner settings.
  """
  from mir_jax import align  # pylint: disable=g-import-not-at-top

  options = dict(align_options or {})
  try:
    if 'thresholds' in options:
      options['thresholds'] = tuple(float(t) for t in options['thresholds'])
    return align.AlignerConfig(**options)
  except (TypeError, ValueError) as e:
    raise selection.UsageError(f'aligner options {options}: {e}') from None


def make_aligner_factory(num_threads: Optional[int], config=None):
  from mir_jax import align  # pylint: disable=g-import-not-at-top

  return functools.partial(align.Aligner, config, num_threads=num_threads)


def cache_spec(dataset: str, backbone: str, **settings: Any) -> Tuple[List[FaceRecord], key.CacheSpec]:
  """The records a cache of these settings holds and its spec, without building the backbone or aligner.

  Args:
    dataset, backbone: the dataset reader and backbone names.
    **settings: the keyword arguments of `cache_spec_and_listing` (manual_dir, subset, limit, pairs_file,
      backbone_options, reader_kwargs, flip, align_options).

  Raises:
    selection.UsageError: the images are missing, a subset does not apply, or an aligner option is invalid.
  """
  records, spec, _ = cache_spec_and_listing(dataset, backbone, **settings)
  return records, spec


def cache_spec_and_listing(
  dataset: str,
  backbone: str,
  *,
  manual_dir: Optional[os.PathLike] = None,
  subset: Optional[str] = None,
  limit: Optional[int] = None,
  pairs_file: Optional[os.PathLike] = None,
  backbone_options: Optional[Dict[str, Any]] = None,
  reader_kwargs: Optional[Dict[str, Any]] = None,
  flip: bool = False,
  align_options: Optional[Dict[str, Any]] = None,
) -> Tuple[List[FaceRecord], key.CacheSpec, Any]:
  """`cache_spec`, plus the dataset reader's listing (with what it left out, for `left_out`).

  `align_options` are `align.AlignerConfig` fields (faces, fallback, min_face_size, thresholds); None = defaults.

  Raises:
    selection.UsageError: the images are missing, a subset does not apply, or an aligner option is invalid.
  """
  from mir_jax import align  # pylint: disable=g-import-not-at-top

  manual_dir = manual_dir or selection.default_manual_dir(dataset)
  records, reader_options, listing = selection.select_records(
    dataset, manual_dir, subset=subset, limit=limit, pairs_file=pairs_file, reader_kwargs=reader_kwargs
  )
  backbone_config = backbones.config_key(backbone, **dict(backbone_options or {}))
  # The aligner's settings, read without loading MTCNN's weights.
  spec = key.CacheSpec(
    dataset=dataset,
    reader_options=reader_options,
    backbone_config=backbone_config,
    align_config=align.config_key(aligner_config(align_options)),
    flip=flip,
  )
  return records, spec, listing


def left_out(listing, root: Optional[os.PathLike] = None) -> List[Dict[str, str]]:
  """What the dataset reader left out (empty identity folders, nested folders, non-image files, files beside
  the identity folders), each with its reason: a cache records them so that nothing a user put in the folder
  vanishes without a trace."""
  top = os.path.abspath(root) if root else None

  def why(path: str) -> str:
    if top and os.path.dirname(os.path.abspath(path)) == top:
      return 'beside the identity folders, in none of them (the layout is <root>/<identity>/<image>)'
    return 'not an image file (by its extension)'

  return [{'path': s.where, 'reason': s.reason} for s in listing.skipped] + [
    {'path': path, 'reason': why(path)} for path in listing.ignored
  ]


def prepare(dataset: str, backbone: str, *, num_workers: int = 2, **settings: Any):
  """Everything needed to build a cache, without embedding anything: the backbone is built here.

  Args:
    dataset, backbone: as for `cache_spec`.
    num_workers: the pipeline's worker processes (0 = none).
    **settings: the other keyword arguments of `cache_spec` (manual_dir, subset, backbone_options, flip, ...).

  Returns:
    (records, spec, pipeline, backbone_instance, left_out): `left_out` is `left_out(listing)`, for
    `writer.build`.

  Raises:
    selection.UsageError: the images are missing or a subset does not apply.
    RuntimeError: the built backbone's key is not the one `find_cache` computes for these settings, so the
      cache would be built where no lookup finds it.
  """
  records, spec, listing = cache_spec_and_listing(dataset, backbone, **settings)
  backbone_factory = make_backbone_factory(backbone, dict(settings.get('backbone_options') or {}))
  # Workers share the cores, so each pins torch to one thread; alone, this process may use them all.
  aligner_factory = make_aligner_factory(1 if num_workers > 0 else None, aligner_config(settings.get('align_options')))
  model = backbone_factory()
  if key.canonical_config(model.config_key()) != key.canonical_config(spec.backbone_config):
    raise RuntimeError(
      f'{backbone}: its key_from_arguments computes {spec.backbone_config}, but the built '
      f'backbone keys itself {model.config_key()}; make the two agree'
    )
  spec = dataclasses.replace(spec, backbone_config=model.config_key())
  pipeline = pipeline_lib.Pipeline(backbone_factory=backbone_factory, aligner_factory=aligner_factory, flip=spec.flip)
  root = settings.get('manual_dir') or selection.default_manual_dir(dataset)
  return records, spec, pipeline, model, left_out(listing, root)


def find_cache(dataset: str, backbone: str, *, data_dir: Optional[os.PathLike] = None, **settings: Any) -> pathlib.Path:
  """The complete cache `python -m mir_jax.embed` builds for these settings.

  Args:
    dataset, backbone: the dataset reader and backbone names.
    data_dir: the cache root (default `default_data_dir()`).
    **settings: the keyword arguments of `cache_spec_and_listing` (manual_dir, subset, limit, pairs_file,
      backbone_options, reader_kwargs, flip, align_options).

  Raises:
    key.CacheError: it is missing or incomplete; the message holds the embed command that builds it.
    selection.UsageError: the images are missing or a subset does not apply.
  """
  data_dir = pathlib.Path(data_dir) if data_dir else default_data_dir()
  flip, manual_dir = settings.get('flip', False), settings.get('manual_dir')
  records, spec = cache_spec(dataset, backbone, **settings)
  directory = key.cache_dir(data_dir, spec)
  if not flip and not key.is_complete(directory):
    # A cache built with --flip holds these very embeddings too (and the mirrored faces' beside them), so
    # one embedding run serves the tables and Sandberg's flip-concatenated verification.
    flipped = key.cache_dir(data_dir, dataclasses.replace(spec, flip=True))
    if key.is_complete(flipped):
      directory = flipped
  if key.is_complete(directory):
    # The key holds the settings, not where the images live: a cache of another copy with other images
    # (a fixture, an older download) has the same key and must not stand in for this one.
    if reader.read_info(directory).get('records_fingerprint') != key.records_fingerprint(records):
      raise key.CacheError(
        f'the embedding cache {directory} was built from a different list of images than '
        f'{manual_dir or selection.default_manual_dir(dataset)} holds now; delete it or '
        'pass another --data_dir to rebuild'
      )
    return directory
  command = command_for(dataset, backbone, data_dir=None if data_dir == default_data_dir() else data_dir, **settings)
  state = 'is incomplete (interrupted run)' if directory.exists() else 'does not exist'
  raise key.CacheError(f'the embedding cache {directory} {state}. Build it first with:\n  {command}')


def command_for(
  dataset: str,
  backbone: str,
  *,
  data_dir=None,
  manual_dir=None,
  subset=None,
  limit=None,
  pairs_file=None,
  backbone_options=None,
  flip=False,
  reader_kwargs=None,
  align_options=None,
  absolute: bool = False,
) -> str:
  """The embed command of `find_cache`'s settings; `absolute` spells its paths from the root, so that the
  command a cache records rebuilds that very cache from any directory."""
  where = lambda p: os.path.abspath(p) if absolute and p else p
  return embed_command(
    dataset,
    backbone,
    subset=subset,
    limit=limit,
    flip=flip,
    manual_dir=where(manual_dir),
    pairs_file=where(pairs_file),
    data_dir=where(data_dir),
    backbone_option=[f'{k}={v}' for k, v in (backbone_options or {}).items()],
    reader_option=[f'{k}={v}' for k, v in (reader_kwargs or {}).items()],
    # --thresholds is one comma-separated flag, and AlignerConfig's detector is the --aligner flag.
    **{
      'aligner' if k == 'detector' else k: ','.join(map(str, v)) if k == 'thresholds' else v
      for k, v in (align_options or {}).items()
    },
  )


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
