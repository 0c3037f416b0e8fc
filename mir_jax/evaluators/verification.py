"""Pair verification with 10-fold threshold selection (the LFW View 2 protocol).

For each fold the distance threshold is chosen on the other folds only, then the held-out fold is scored;
accuracy is reported as mean +- std over folds (population std, as davidsandberg/facenet and insightface
print it). VAL@FAR follows facenet's `calculate_val`: on the training folds take the threshold at which the
false-accept rate is at most `far_target`, then measure VAL and FAR on the held-out fold. Where facenet
interpolates FAR over a fixed threshold grid, this module computes the threshold exactly from the sorted
training distances, so the result does not depend on a grid step.

A pair is predicted "same" when its distance is strictly below the threshold. Everything here is numpy and
scikit-learn, so it runs on any cache without JAX or TensorFlow.
"""

import dataclasses
from typing import Dict, List, Optional, Sequence

import numpy as np
from sklearn import metrics as sk_metrics

METRICS = ('sqeuclidean', 'cosine', 'angular')


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


def pair_distances(emb_a: np.ndarray, emb_b: np.ndarray, metric: str = 'sqeuclidean') -> np.ndarray:
  """Distance of each row pair; smaller means more alike.

  Args:
    emb_a: (n, d) embeddings of the first image of each pair.
    emb_b: (n, d) embeddings of the second image.
    metric: 'sqeuclidean' (squared L2 of the L2-normalised rows, in [0, 4]), 'cosine' (1 - cos, in [0, 2])
      or 'angular' (arccos(cos) / pi, in [0, 1]).

  Returns:
    float64 (n,) distances.
  """
  if metric not in METRICS:
    raise ValueError(f'Unknown metric {metric!r}; expected one of {METRICS}.')
  a = l2_normalize(emb_a)
  b = l2_normalize(emb_b)
  if metric == 'sqeuclidean':
    return np.sum(np.square(a - b), axis=1)
  cos = np.clip(np.sum(a * b, axis=1), -1.0, 1.0)
  if metric == 'cosine':
    return 1.0 - cos
  return np.arccos(cos) / np.pi


def best_threshold(distances: np.ndarray, same: np.ndarray) -> float:
  """The threshold maximising accuracy of `distance < threshold <=> same` on these pairs.

  Every threshold strictly between two consecutive distinct distances classifies the pairs the same way, so
  the exact optimum is found over those gaps (plus "accept none" and "accept all"); the midpoint of the first
  best gap is returned so that a held-out pair sitting at a training distance is not decided by a tie.
  """
  d = np.asarray(distances, np.float64)
  y = np.asarray(same, bool)
  if d.size == 0:
    raise ValueError('best_threshold needs at least one pair.')
  order = np.argsort(d, kind='stable')
  d, y = d[order], y[order]
  # Boundaries between groups of equal distance: threshold candidate k accepts the first k pairs (by sorted
  # position), which is only realisable where d[k-1] < d[k].
  n = d.size
  cut = np.concatenate([[0], np.nonzero(np.diff(d) > 0)[0] + 1, [n]])
  tp = np.concatenate([[0], np.cumsum(y)])  # same pairs accepted when the first k are accepted
  fp = np.concatenate([[0], np.cumsum(~y)])
  n_diff = int((~y).sum())
  correct = tp[cut] + (n_diff - fp[cut])
  best = int(np.argmax(correct))
  k = cut[best]
  if k == 0:
    return float(d[0]) - 1.0
  if k == n:
    return float(d[-1]) + 1.0
  return 0.5 * (float(d[k - 1]) + float(d[k]))


def threshold_at_far(distances: np.ndarray, same: np.ndarray, far_target: float) -> float:
  """The largest threshold whose false-accept rate on these pairs is at most `far_target`.

  With the different-identity distances sorted as dd[0] <= dd[1] <= ..., accepting `d < dd[k]` lets through
  at most k of them, so k = floor(far_target * n_diff) gives the loosest admissible threshold.
  """
  d = np.asarray(distances, np.float64)
  y = np.asarray(same, bool)
  dd = np.sort(d[~y])
  if dd.size == 0:
    raise ValueError('threshold_at_far needs at least one different-identity pair.')
  # The small epsilon guards against far_target * n_diff landing a hair below an integer in floating point.
  k = int(np.floor(far_target * dd.size + 1e-9))
  if k >= dd.size:
    return float(np.inf)
  return float(dd[k])


def _rates(distances: np.ndarray, same: np.ndarray, threshold: float):
  accept = distances < threshold
  n_same = int(same.sum())
  n_diff = int((~same).sum())
  val = float(np.sum(accept & same) / n_same) if n_same else float('nan')
  far = float(np.sum(accept & ~same) / n_diff) if n_diff else float('nan')
  acc = float(np.mean(accept == same))
  return acc, val, far


@dataclasses.dataclass
class VerificationResult:
  """Per-fold numbers and their summaries (the folds are those with at least one evaluated pair)."""

  folds: List[int]
  accuracy: np.ndarray
  threshold: np.ndarray
  val: np.ndarray
  far: np.ndarray
  val_threshold: np.ndarray
  auc_per_fold: np.ndarray
  auc: float  # over all pairs, each at its held-out distance
  # The ROC over all pairs at their held-out distances (sklearn's, collinear points dropped): what the
  # report plots.
  roc_fpr: np.ndarray
  roc_tpr: np.ndarray

  n_pairs: int
  metric: str
  subtract_mean: bool
  far_target: float

  @property
  def accuracy_mean(self) -> float:
    return float(np.mean(self.accuracy))

  @property
  def accuracy_std(self) -> float:
    return float(np.std(self.accuracy))

  def summary(self) -> Dict[str, object]:
    """JSON-ready dictionary."""
    return {
      'protocol': 'k-fold; threshold chosen on the other folds; population std over folds',
      'metric': self.metric,
      'subtract_mean': self.subtract_mean,
      'n_pairs': self.n_pairs,
      'folds': [int(f) for f in self.folds],
      'accuracy_mean': self.accuracy_mean,
      'accuracy_std': self.accuracy_std,
      'accuracy_per_fold': self.accuracy.tolist(),
      'threshold_per_fold': self.threshold.tolist(),
      'auc': self.auc,
      'auc_per_fold_mean': float(np.nanmean(self.auc_per_fold)),
      'auc_per_fold_std': float(np.nanstd(self.auc_per_fold)),
      'auc_per_fold': self.auc_per_fold.tolist(),
      'far_target': self.far_target,
      'val_mean': float(np.nanmean(self.val)),
      'val_std': float(np.nanstd(self.val)),
      'far_mean': float(np.nanmean(self.far)),
      'val_per_fold': self.val.tolist(),
      'far_per_fold': self.far.tolist(),
      'val_threshold_per_fold': self.val_threshold.tolist(),
      'roc': {'fpr': self.roc_fpr.tolist(), 'tpr': self.roc_tpr.tolist()},
    }


def _auc(distances: np.ndarray, same: np.ndarray) -> float:
  if same.all() or (~same).all():
    return float('nan')
  return float(sk_metrics.roc_auc_score(same, -distances))


def evaluate(
  emb_a: np.ndarray,
  emb_b: np.ndarray,
  same: Sequence[bool],
  folds: Sequence[int],
  *,
  metric: str = 'sqeuclidean',
  subtract_mean: bool = False,
  far_target: float = 1e-3,
) -> VerificationResult:
  """K-fold verification of embedding pairs.

  Args:
    emb_a: (n, d) embeddings of each pair's first image.
    emb_b: (n, d) embeddings of each pair's second image.
    same: (n,) whether the pair shows one identity.
    folds: (n,) fold of each pair (any integer labels); each fold is scored with a threshold chosen on all
      the others.
    metric: see `pair_distances`.
    subtract_mean: subtract the mean embedding of the training folds' images before measuring distance (as
      facenet's `--subtract_mean`). It only changes cosine/angular distances: squared L2 is shift-invariant.
    far_target: the false-accept rate for VAL@FAR.

  Returns:
    A VerificationResult.
  """
  emb_a = np.asarray(emb_a, np.float64)
  emb_b = np.asarray(emb_b, np.float64)
  same = np.asarray(same, bool)
  folds = np.asarray(folds)
  if not (len(emb_a) == len(emb_b) == len(same) == len(folds)):
    raise ValueError('emb_a, emb_b, same and folds must have the same length.')
  fold_ids = sorted(set(folds.tolist()))
  if len(fold_ids) < 2:
    raise ValueError(f'Need at least two folds with pairs to choose thresholds on held-out data; got {fold_ids}.')

  fixed = None if subtract_mean else pair_distances(emb_a, emb_b, metric)
  # Each pair's distance as its own fold saw it (with mean subtraction the folds use different means).
  held_out = np.empty(len(same)) if fixed is None else fixed
  acc, thr, val, far, vthr, aucs = [], [], [], [], [], []
  for f in fold_ids:
    test = folds == f
    train = ~test
    if fixed is None:
      mean = np.mean(np.concatenate([emb_a[train], emb_b[train]]), axis=0)
      dist = pair_distances(emb_a - mean, emb_b - mean, metric)
      held_out[test] = dist[test]
    else:
      dist = fixed
    t = best_threshold(dist[train], same[train])
    a, _, _ = _rates(dist[test], same[test], t)
    vt = threshold_at_far(dist[train], same[train], far_target)
    _, v, fa = _rates(dist[test], same[test], vt)
    acc.append(a)
    thr.append(t)
    val.append(v)
    far.append(fa)
    vthr.append(vt)
    aucs.append(_auc(dist[test], same[test]))
  if same.all() or (~same).all():
    fpr = tpr = np.zeros(0)
  else:
    fpr, tpr, _ = sk_metrics.roc_curve(same, -held_out)
  return VerificationResult(
    folds=fold_ids,
    accuracy=np.asarray(acc),
    threshold=np.asarray(thr),
    val=np.asarray(val),
    far=np.asarray(far),
    val_threshold=np.asarray(vthr),
    auc_per_fold=np.asarray(aucs),
    auc=_auc(held_out, same),
    roc_fpr=fpr,
    roc_tpr=tpr,
    n_pairs=int(len(same)),
    metric=metric,
    subtract_mean=subtract_mean,
    far_target=far_target,
  )


def match_pairs(
  pairs: Sequence[tuple],
  image_ids: Sequence[str],
  failed: Optional[Dict[str, str]] = None,
  universe: Optional[Sequence[str]] = None,
):
  """Looks up each pair's two images among the embedded ones.

  Args:
    pairs: (fold, image_id_a, image_id_b, same) tuples.
    image_ids: the image ids that have embeddings, in embedding-row order.
    failed: image_id -> reason for images that could not be embedded.
    universe: image ids the embedding run was asked to cover (a subset run covers fewer than the dataset);
      None means "all of them".

  Returns:
    (rows_a, rows_b, same, folds, missing): int arrays of row indices for the evaluated pairs, their labels
    and folds, and a list of dicts for every pair left out and why.
  """
  index = {k: i for i, k in enumerate(image_ids)}
  failed = failed or {}
  universe = None if universe is None else set(universe)
  rows_a, rows_b, same, folds, missing = [], [], [], [], []
  for fold, a, b, s in pairs:
    if a in index and b in index:
      rows_a.append(index[a])
      rows_b.append(index[b])
      same.append(bool(s))
      folds.append(int(fold))
      continue
    reasons = []
    for k in (a, b):
      if k in index:
        continue
      if k in failed:
        reasons.append(f'{k}: failed to embed ({failed[k]})')
      elif universe is not None and k not in universe:
        reasons.append(f'{k}: not in the cached subset')
      else:
        reasons.append(f'{k}: not in the dataset')
    missing.append({'fold': int(fold), 'a': a, 'b': b, 'same': bool(s), 'reason': '; '.join(reasons)})
  return (
    np.asarray(rows_a, np.int64),
    np.asarray(rows_b, np.int64),
    np.asarray(same, bool),
    np.asarray(folds, np.int64),
    missing,
  )
