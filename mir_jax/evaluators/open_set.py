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


def run(task: protocols.OpenSet, character: Callable[[np.ndarray], np.ndarray]) -> Tuple[Dict, List[Dict]]:
  """Rank-1 of the original features and, per head, of the character features.

  Args:
    task: probes and distractors.
    character: (n, d) embeddings -> (S, n, d) character features under each of S trained heads.
  """
  original = identification.megaface_rank1(
    task.probe_x, task.probe_labels, task.distractor_x, max_rank=1, dtype=np.float32
  )
  mir = [
    identification.megaface_rank1(p, task.probe_labels, d, max_rank=1, dtype=np.float32)
    for p, d in zip(character(task.probe_x), character(task.distractor_x))
  ]
  return original, mir


def rank1_by_set_size(
  task: protocols.OpenSet, character: Callable[[np.ndarray], np.ndarray], sizes: Sequence[int], seed: int = 0
) -> Dict[str, object]:
  """Rank-1 against the number of distractors (MegaFace's "rank-1 vs # distractors" plot), original and MIR.

  The distractor sets are nested: the first m of one seeded permutation, for each m in `sizes` that is
  below the set's size, and the whole set. `character` as in `run`.

  Returns:
    {'sizes': [...], 'original': [rank-1 per size], 'mir': [[rank-1 per size] per head]}, rank-1 in [0, 1].
  """
  m = len(task.distractor_x)
  sizes = sorted({int(k) for k in sizes if 0 < int(k) < m} | {m})
  order = np.random.default_rng(seed).permutation(m)

  def curve(probes, distractors):
    return [
      identification.megaface_rank1(probes, task.probe_labels, distractors[order[:k]], max_rank=1, dtype=np.float32)[
        'rank1'
      ]
      for k in sizes
    ]

  mir = [curve(p, d) for p, d in zip(character(task.probe_x), character(task.distractor_x))]
  return {'sizes': sizes, 'original': curve(task.probe_x, task.distractor_x), 'mir': mir}
