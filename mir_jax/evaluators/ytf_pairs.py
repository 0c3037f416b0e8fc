"""YTF video-pair verification (10-fold) of original embeddings and of MIR character features.

A video is the mean of its frames' features (`protocols.ytf_pairs`); pairs whose videos have no embeddings
are counted, never dropped silently.
"""

import dataclasses
import os
from typing import Callable, List, Optional

import numpy as np

from mir_jax import embedding_sets
from mir_jax import paths
from mir_jax import protocols
from mir_jax.evaluators import verification


def splits_file(manual_dir: str) -> str:
  """`splits.txt` beside the user's YTF frames, else the copy in the shared data; FileNotFoundError if none."""
  for candidate in (
    os.path.join(manual_dir, 'splits.txt'),
    os.path.join(os.path.dirname(manual_dir.rstrip('/')), 'splits.txt'),
  ):
    if os.path.isfile(candidate):
      return candidate
  shared = paths.shared_data_dir()
  if shared is not None and (shared / 'ytf' / 'splits.txt').is_file():
    return str(shared / 'ytf' / 'splits.txt')
  raise FileNotFoundError(f'no YTF splits.txt beside {manual_dir} or in the shared data')


@dataclasses.dataclass
class Result:
  original: float  # percent, mean over folds
  mir: List[float]  # percent, one per head
  num_folds: int
  accounting: str  # how many pairs were evaluated, skipped, missing


def run(
  ds: embedding_sets.EmbeddingSet, pairs, character: Optional[Callable[[np.ndarray], np.ndarray]] = None
) -> Result:
  """`pairs`: a `datasets.ytf` splits reading (its `skipped` lists videos missing on disk); `character`:
  (n, d) frames -> (S, n, d) character features under each of S heads."""
  a, b, same, folds, missing = protocols.ytf_pairs(ds, pairs)  # protocols.NoMatchingPairs when none match
  num_folds = len(set(folds.tolist()))
  accounting = (
    f'{len(same)} pairs evaluated in {num_folds} folds; {len(pairs.skipped)} skipped by '
    f'the reader (video missing on disk), {len(missing)} without embeddings for both videos.'
  )
  corrected = sum(p.corrected for p in pairs)
  if corrected:
    accounting += f' {corrected} of the pairs read were corrected by the errata file.'
  original = 100 * verification.evaluate(a, b, same, folds).accuracy.mean()
  mir = []
  for feats in [] if character is None else character(ds.x):
    a, b, same, folds, _ = protocols.ytf_pairs(ds, pairs, feats)
    mir.append(100 * verification.evaluate(a, b, same, folds).accuracy.mean())
  return Result(original, mir, num_folds, accounting)
