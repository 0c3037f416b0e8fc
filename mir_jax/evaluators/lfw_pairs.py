"""LFW View 2 pair verification (10-fold) of an embedding cache, with the accounting of the pairs it lacks.

The protocol is `verification.evaluate`. A pair is evaluated when the cache holds both images; a pair whose
image could not be embedded is listed as missing with the reason, and one outside a cached subset is
counted apart, so no pair is dropped silently.
"""

import os
from typing import Any, Dict, Sequence

import numpy as np

from mir_jax.cache import reader
from mir_jax.evaluators import verification

FLIP_COMBINES = ('average', 'concat')


def run(
  directory: os.PathLike,
  pairs: Sequence[Any],
  *,
  metric: str = 'sqeuclidean',
  subtract_mean: bool = False,
  far_target: float = 1e-3,
  flip: bool = False,
  flip_combine: str = 'average',
) -> Dict[str, Any]:
  """Verification of the pairs a cache covers, with the accounting of those it does not.

  Args:
    directory: a complete cache.
    pairs: LFW pairs (objects with fold, image_id_a, image_id_b, same).
    metric, subtract_mean, far_target: see `verification.evaluate`.
    flip: combine each embedding with the cached mirrored-face embedding, by `flip_combine`:
      'average' (the normalised sum) or 'concat' (the two side by side, Sandberg's `--use_flipped_images`).

  Returns:
    A JSON-ready dict: the verification summary plus pair counts, missing pairs and cache facts.
  """
  x, _, meta = reader.load_embeddings(directory)
  info = meta['info']
  if flip:
    if meta['embeddings_flip'] is None:
      raise ValueError(f'{directory} has no mirrored-face embeddings; build the cache with --flip')
    if flip_combine not in FLIP_COMBINES:
      raise ValueError(f'unknown flip_combine {flip_combine!r}; known: {FLIP_COMBINES}')
    if flip_combine == 'average':
      x = verification.l2_normalize(x + meta['embeddings_flip'])
    else:
      x = np.concatenate([x, meta['embeddings_flip']], axis=1)
  failed = {b['image_id']: b['reason'] for b in info['skipped']['bad_images']}
  opts = info['spec']['reader_options']
  is_subset = bool(opts.get('subset') or opts.get('limit'))
  universe = (set(meta['image_ids']) | set(failed)) if is_subset else None
  tuples = [(p.fold, p.image_id_a, p.image_id_b, p.same) for p in pairs]
  rows_a, rows_b, same, folds, missing = verification.match_pairs(tuples, meta['image_ids'], failed, universe)
  outside = [m for m in missing if 'not in the cached subset' in m['reason'] and 'failed' not in m['reason']]
  lost = [m for m in missing if m not in outside]
  result = verification.evaluate(
    x[rows_a], x[rows_b], same, folds, metric=metric, subtract_mean=subtract_mean, far_target=far_target
  )
  detected = meta['detected']
  both = detected[rows_a] & detected[rows_b]
  summary = result.summary()
  summary.update(
    {
      'n_pairs_in_protocol': len(tuples),
      'n_pairs_evaluated': int(len(same)),
      'n_pairs_missing': len(lost),
      'n_pairs_outside_subset': len(outside),
      'missing_pairs': lost,
      'n_pairs_with_detection_fallback': int((~both).sum()),
      'flip_averaged': flip and flip_combine == 'average',
      'flip_concatenated': flip and flip_combine == 'concat',
      'cache': {
        'directory': os.fspath(meta['directory']),
        'key': info['key'],
        'spec': info['spec'],
        'num_records': info['num_records'],
        'num_embedded': info['num_embedded'],
        'num_bad_images': info['num_bad_images'],
        'num_detection_fallbacks': info['num_detection_fallbacks'],
        'seconds_embedding': info['seconds_embedding'],
      },
    }
  )
  return summary
