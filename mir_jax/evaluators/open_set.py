"""Open-set rank-1 (the MegaFace challenge-1 protocol, and its LFW-distractors stand-in), before and after MIR.

The original features' rank-1 depends on no seed: one value. The MIR character features come from joint
heads trained on the task's head set (`head_task`), whose identities are disjoint from the probes'.
"""

from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

from mir_jax import protocols
from mir_jax.evaluators import identification


def head_task(task: protocols.OpenSet, seeds: Sequence[int]) -> protocols.Classification:
  """The head set as a classification task. The heads train on all of it (no probe or distractor enters);
  tuning carves its validation split from it, per identity (hence >= 2 images each). Its "test" split is
  the training set itself and is never reported."""
  labels = task.head_labels
  if (np.bincount(labels) < 2).any():
    raise ValueError('every head-set identity needs >= 2 images (tuning holds one out for validation)')
  everything = np.broadcast_to(np.arange(len(labels)), (len(seeds), len(labels)))
  desc = f'head set of {task.name}: {len(task.head_class_names)} identities, {len(labels)} images, all trained on'
  return protocols.Classification(
    f'{task.name}_head',
    task.head_x,
    labels,
    task.head_class_names,
    list(seeds),
    np.array(everything),
    np.array(everything),
    desc,
  )


def run(
  task: protocols.OpenSet,
  character: Callable[[np.ndarray], np.ndarray],
  curve_sizes: Sequence[int] = (),
  seed: int = 0,
) -> Tuple[Dict, List[Dict], Dict[str, object]]:
  """Rank-1 of the original features and, per head, of the character features, and both against the number
  of distractors (MegaFace's "rank-1 vs # distractors" plot).

  Args:
    task: probes and distractors.
    character: (n, d) embeddings -> (S, n, d) character features under each of S trained heads.
    curve_sizes: distractor-set sizes of the curve. Its sets are nested: the first m of one seeded
      permutation, for each m below the set's size, and the whole set last (the rank-1 above).
    seed: of that permutation.

  Returns:
    (original, per-head results, curve): `megaface_rank1`'s results, and {'sizes': [...], 'original':
    [rank-1 per size], 'mir': [[rank-1 per size] per head]}, rank-1 in [0, 1].
  """

  def rank1(probes, distractors):
    return identification.megaface_rank1(probes, task.probe_labels, distractors, max_rank=1, dtype=np.float32)

  features = list(zip(character(task.probe_x), character(task.distractor_x)))
  original = rank1(task.probe_x, task.distractor_x)
  mir = [rank1(p, d) for p, d in features]

  m = len(task.distractor_x)
  smaller = sorted({int(k) for k in curve_sizes if 0 < int(k) < m})
  order = np.random.default_rng(seed).permutation(m)

  def curve(probes, distractors, whole):
    return [rank1(probes, distractors[order[:k]])['rank1'] for k in smaller] + [whole['rank1']]

  by_size = {
    'sizes': smaller + [m],
    'original': curve(task.probe_x, task.distractor_x, original),
    'mir': [curve(p, d, r) for (p, d), r in zip(features, mir)],
  }
  return original, mir, by_size
