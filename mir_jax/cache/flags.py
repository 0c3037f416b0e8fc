"""The command-line flags that choose a cache, defined once for every entry point that builds or reads one.

  from mir_jax.cache import flags as cache_flags
  ...
  if __name__ == '__main__':
    cache_flags.define_cache_flags()
    app.run(main)

and in `main`, `lookup.find_cache(dataset, **cache_flags.find_cache_args())`.
"""

import pathlib
from typing import Any, Dict, Optional, Sequence

from absl import flags

from mir_jax import align
from mir_jax.cache import lookup
from mir_jax.cache import selection


def define_cache_flags() -> None:
  """Defines the flags naming a cache (called by an entry point, so importing a module defines none)."""
  flags.DEFINE_string('backbone', None, 'Backbone name (mir_jax.backbones); default: the default backbone.')
  flags.DEFINE_multi_string('backbone_option', [], 'key=value passed to the backbone, e.g. num_jitters=10.')
  flags.DEFINE_multi_string('reader_option', [], 'key=value passed to the dataset reader, e.g. set_size=100.')
  flags.DEFINE_string('data_dir', None, f'Cache root (default ${lookup.DATA_DIR_ENV} or <repo>/data_cache).')
  flags.DEFINE_string('manual_dir', None, 'Dataset images (default: the shared data copy).')
  flags.DEFINE_string(
    'subset',
    None,
    'min_images<k> (identities with >= k images), or the LFW pair subsets pairs, pairs_fold<k>, pairs_head<m>.',
  )
  flags.DEFINE_integer('limit', None, 'Keep whole identities, in name order, up to this many images.')
  flags.DEFINE_string('pairs_file', None, 'LFW pairs.txt (default: beside the images or in the shared data).')
  flags.DEFINE_bool(
    'flip',
    False,
    'The cache also holds the embedding of the mirrored face (evaluations then average each embedding with it).',
  )
  # The aligner's settings; their defaults are AlignerConfig's, and only values that differ enter the cache key.
  aligner = align.AlignerConfig()
  flags.DEFINE_enum(
    'faces',
    aligner.faces,
    align.FACES,
    'detect: MTCNN finds the face in each image. precropped: every image already is one face (a tight crop, '
    'e.g. from another detector); no detector runs and the whole image is the box.',
  )
  flags.DEFINE_enum(
    'fallback',
    aligner.fallback,
    align.FALLBACKS,
    "What an image without a detected face gets: center (a centred box of LFW's face size), whole (the "
    'whole image as the box) or skip (left out, recorded with its reason).',
  )
  flags.DEFINE_enum(
    'aligner',
    aligner.detector,
    align.DETECTORS,
    "Which MTCNN: mtcnn-torch (facenet-pytorch's) or mtcnn-jax (the same nets compiled with XLA, on the JAX "
    'default device; each image independent of its batchmates). The cache key records which.',
  )
  flags.DEFINE_integer('min_face_size', aligner.min_face_size, 'Smallest face MTCNN looks for, in pixels.')
  flags.DEFINE_list(
    'thresholds', [str(t) for t in aligner.thresholds], "MTCNN's P-, R- and O-Net score thresholds, comma-separated."
  )


def parse_options(items: Sequence[str]) -> Dict[str, Any]:
  """`key=value` strings -> dict, values parsed as int, float, bool or None when they look like one."""
  out: Dict[str, Any] = {}
  for item in items or ():
    if '=' not in item:
      raise selection.UsageError(f'expected key=value, got {item!r}')
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


def find_cache_args(flag_values: Optional[flags.FlagValues] = None) -> Dict[str, Any]:
  """The keyword arguments of `lookup.find_cache` that the cache flags set (all but the dataset).

  `lookup.prepare` takes the same ones but `data_dir`. The backbone defaults to the default backbone and
  `data_dir` to `lookup.default_data_dir()`.

  Raises:
    selection.UsageError: a `--backbone_option` or `--reader_option` is not key=value.
  """
  fv = flag_values if flag_values is not None else flags.FLAGS
  return {
    'backbone': lookup.backbone_name(fv.backbone),
    'data_dir': pathlib.Path(fv.data_dir) if fv.data_dir else lookup.default_data_dir(),
    'manual_dir': fv.manual_dir,
    'subset': fv.subset,
    'limit': fv.limit,
    'pairs_file': fv.pairs_file,
    'backbone_options': parse_options(fv.backbone_option),
    'reader_kwargs': parse_options(fv.reader_option),
    'flip': fv.flip,
    'align_options': align_options(fv),
  }


def align_options(fv: flags.FlagValues) -> Dict[str, Any]:
  """The aligner flags that differ from `AlignerConfig`'s defaults (what `lookup.cache_spec` takes).

  Raises:
    selection.UsageError: a value is malformed, or an MTCNN setting is given with --faces=precropped.
  """
  try:
    thresholds = tuple(float(t) for t in fv.thresholds)
  except ValueError:
    raise selection.UsageError(
      f'--thresholds takes three comma-separated numbers, got {",".join(fv.thresholds)}'
    ) from None
  given = {
    'faces': fv.faces,
    'fallback': fv.fallback,
    'detector': fv.aligner,
    'min_face_size': fv.min_face_size,
    'thresholds': thresholds,
  }
  defaults = align.AlignerConfig()
  return {k: v for k, v in given.items() if v != getattr(defaults, k)}
