"""Identification metrics: MegaFace challenge 1 rank-1 / CMC, Ac = TP / AP, and the sanity anchors.

MegaFace rank-1 (challenge 1, as stated in the shared protocol notes). For every probe identity with M
images, each image i in turn joins the distractors as the gallery, and every other image j (j != i) of that
identity is a probe. Probe j is correct at rank r when fewer than r distractors score strictly higher than
the gallery image i, i.e. score(i, j) >= the r-th highest score of j against the distractors; at rank 1 this
is score(i, j) >= max_k score(j, distractor_k), so a tie counts as correct. Rank-r accuracy is
correct / (number of (identity, i, j != i) triples). An identity with a single image forms no triple and
contributes nothing. Scores are cosine similarities of L2-normalised features.

The distractor side depends only on the probe j, never on i, so the top-r distractor scores of every probe
are computed once, streaming over distractor blocks (a 1M x 3,530 score matrix is never held in memory);
the within-identity scores are then small M x M products.
"""

from typing import Dict, Optional

import numpy as np
from sklearn import linear_model

# Bytes of one probes x distractors score block; bounds the working memory of `megaface_rank1`.
DEFAULT_BLOCK_BYTES = 1 << 27
# The numpy backend's score dtype: float64 keeps a tie between a gallery image and an identical distractor
# exact in practice.
DEFAULT_DTYPE = np.float64


def _check_features(name: str, x, dim: Optional[int] = None) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f'{name} must have shape (n, d), got {x.shape}')
  if dim is not None and x.shape[1] != dim:
    raise ValueError(f'{name} have dimension {x.shape[1]}, expected {dim}')
  return x


def _l2_normalize(x, dtype, name: str, whole=None, start: int = 0) -> np.ndarray:
  """`x` L2-normalised in `dtype`. When `x` is the block of `whole` that starts at row `start`, a bad row
  raises naming how many rows of all of `whole` are bad, not just of this block."""
  x = np.asarray(x, dtype)
  norms = np.linalg.norm(x, axis=1, keepdims=True)
  if not (np.isfinite(x).all() and norms.all()):
    check_rows(x if whole is None else whole, name, dtype, start)
  return x / norms


def check_rows(features, name: str, dtype=DEFAULT_DTYPE, start: int = 0, block_rows: int = 1 << 16) -> None:
  """Raises ValueError if a row of `features[start:]` holds NaN or inf, or has norm 0 in `dtype`, saying how
  many such rows there are and the first one's index.

  A zero vector has no direction; a silent epsilon would give it cosine 0 to everything. `features` is read
  `block_rows` rows at a time (it may be a memory map), so this costs one pass and bounded memory.
  """
  counts, firsts = {'nonfinite': 0, 'zero': 0}, {}
  for s in range(start, features.shape[0], block_rows):
    x = np.asarray(features[s : s + block_rows], dtype)
    nonfinite = ~np.isfinite(x).all(axis=1)
    for kind, bad in (('nonfinite', nonfinite), ('zero', ~nonfinite & (np.linalg.norm(x, axis=1) == 0))):
      if bad.any():
        counts[kind] += int(bad.sum())
        firsts.setdefault(kind, s + int(np.argmax(bad)))
  if counts['nonfinite']:
    raise ValueError(
      f'{name}: {counts["nonfinite"]} row(s) contain NaN or inf (the first is row {firsts["nonfinite"]})'
    )
  if counts['zero']:
    raise ValueError(f'{name}: {counts["zero"]} all-zero row(s) (the first is row {firsts["zero"]})')


def top_distractor_scores(
  probes: np.ndarray, distractors, max_rank: int, dtype=DEFAULT_DTYPE, block_bytes: int = DEFAULT_BLOCK_BYTES
) -> np.ndarray:
  """The `max_rank` highest cosine scores of each probe against the distractors, descending.

  Args:
    probes: (n, d) L2-normalised probe features, already in `dtype`.
    distractors: (m, d) features, not necessarily normalised; may be a memory map, as it is read one block
      of rows at a time.
    max_rank: how many top scores to keep per probe.
    dtype: dtype of the score computation.
    block_bytes: size bound of one probes x distractor-block score matrix.

  Returns:
    (n, max_rank) scores, descending along axis 1; padded with -inf when m < max_rank.
  """
  n = probes.shape[0]
  m = distractors.shape[0]
  top = np.full((n, max_rank), -np.inf, dtype)
  block = max(1, block_bytes // (max(n, 1) * np.dtype(dtype).itemsize))
  for start in range(0, m, block):
    chunk = _l2_normalize(distractors[start : start + block], dtype, 'distractor_features', distractors, start)
    scores = probes @ chunk.T
    if max_rank == 1:
      np.maximum(top[:, 0], scores.max(axis=1), out=top[:, 0])
      continue
    merged = np.concatenate([top, scores], axis=1)
    top = np.partition(merged, merged.shape[1] - max_rank, axis=1)[:, -max_rank:]
  return -np.sort(-top, axis=1)


def _top_scores_backend(backend: str):
  """(top-k distractor score function, its default dtype) of a `megaface_rank1` backend."""
  if backend == 'numpy':
    return top_distractor_scores, DEFAULT_DTYPE
  if backend == 'jax':
    from mir_jax.evaluators import sharded_topk  # pylint: disable=g-import-not-at-top  (JAX only when asked)

    return sharded_topk.top_distractor_scores, sharded_topk.DEFAULT_DTYPE
  raise ValueError(f"backend must be 'numpy' or 'jax', got {backend!r}")


def megaface_rank1(
  probe_features,
  probe_labels,
  distractor_features,
  max_rank: int = 10,
  dtype=None,
  block_bytes: Optional[int] = None,
  backend: str = 'numpy',
) -> Dict[str, object]:
  """MegaFace challenge 1 identification: rank-1 accuracy and the CMC curve up to `max_rank`.

  See the module docstring for the exact definition.

  Args:
    probe_features: (n, d) features of the probe set (e.g. the FaceScrub images).
    probe_labels: (n,) identity of each probe image.
    distractor_features: (m, d) distractor features (e.g. the 1M MegaFace set); may be a memory map. Pass
      the features the compared method produces for the distractors too (e.g. the MIR head's output), so
      probes and distractors live in the same space.
    max_rank: the CMC curve is computed for ranks 1..max_rank (its cost grows only mildly with it).
    dtype: dtype of the score computation; None = the backend's default (numpy: `DEFAULT_DTYPE`, float64;
      jax: `sharded_topk.DEFAULT_DTYPE`, float32). float32 halves the time and memory on large sets.
    block_bytes: bound of the working memory of one probes x distractors score block (per device for jax);
      None = the backend's default (`DEFAULT_BLOCK_BYTES`, `sharded_topk.DEFAULT_BLOCK_BYTES`).
    backend: what computes each probe's top distractor scores, the only part that grows with the
      distractors: 'numpy' (`top_distractor_scores`, blocked on the host) or 'jax'
      (`sharded_topk.top_distractor_scores`, the blocks sharded over `jax.devices()`). The rest of the
      protocol is the same code for both.

  Returns:
    dict with 'rank1' (float in [0, 1]), 'cmc' ((max_rank,) accuracy at ranks 1..max_rank), 'num_correct'
    (rank-1 correct triples), 'num_trials' (all triples), 'num_identities' (identities with >= 2 images),
    'num_distractors', and 'correct' ((num_trials,) bool rank-1 correctness per triple, ordered by identity
    (sorted), then gallery image i, then probe image j, each in input order; the same order for two feature
    sets of the same probes, so it can be paired, e.g. by `significance.mcnemar`).
  """
  if max_rank < 1:
    raise ValueError(f'max_rank must be >= 1, got {max_rank}')
  probes = _check_features('probe_features', probe_features)
  distractors = _check_features('distractor_features', distractor_features, probes.shape[1])
  labels = np.asarray(probe_labels)
  if labels.shape != (probes.shape[0],):
    raise ValueError(f'probe_labels must have shape ({probes.shape[0]},), got {labels.shape}')
  if distractors.shape[0] == 0:
    raise ValueError('no distractors: rank-1 would be trivially 1')

  scorer, default_dtype = _top_scores_backend(backend)
  dtype = default_dtype if dtype is None else dtype
  probes = _l2_normalize(probes, dtype, 'probe_features')
  top = scorer(probes, distractors, max_rank, dtype, **({} if block_bytes is None else {'block_bytes': block_bytes}))

  correct_at = []  # per identity: (max_rank, num_triples) bool
  num_identities = 0
  for label in np.unique(labels):
    idx = np.flatnonzero(labels == label)
    if idx.size < 2:
      continue
    num_identities += 1
    f = probes[idx]
    scores = f @ f.T  # scores[i, j]: gallery image i, probe image j
    off_diagonal = ~np.eye(idx.size, dtype=bool)
    gallery_score = scores[off_diagonal]  # row-major: i outer, j inner
    probe_pos = np.broadcast_to(np.arange(idx.size), scores.shape)[off_diagonal]
    thresholds = top[idx[probe_pos]]  # (triples, max_rank)
    correct_at.append((gallery_score[:, None] >= thresholds).T)

  if not correct_at:
    raise ValueError('no identity has >= 2 probe images, so there is no (gallery, probe) pair to score')
  correct_at = np.concatenate(correct_at, axis=1)
  return {
    'rank1': float(correct_at[0].mean()),
    'cmc': correct_at.mean(axis=1),
    'num_correct': int(correct_at[0].sum()),
    'num_trials': int(correct_at.shape[1]),
    'num_identities': num_identities,
    'num_distractors': int(distractors.shape[0]),
    'correct': correct_at[0].copy(),
  }


def classification_accuracy(logits_or_pred, labels):
  """Ac = TP / AP: the fraction of examples whose identity is predicted correctly.

  Args:
    logits_or_pred: predicted class ids with the shape of `labels` (optionally with leading axes, e.g. one
      per run), or scores with one more trailing axis (classes), from which the argmax is taken.
    labels: (n,) true class ids.

  Returns:
    A float, or an array over the leading axes of `logits_or_pred`.
  """
  labels = np.asarray(labels)
  pred = np.asarray(logits_or_pred)
  if labels.ndim != 1 or labels.size == 0:
    raise ValueError(f'labels must be a non-empty 1-D array, got shape {labels.shape}')
  if np.issubdtype(pred.dtype, np.floating):
    # Float input is scores: an argmax over classes; float "predictions" would be ambiguous.
    pred = np.argmax(pred, axis=-1)
  if pred.shape[-1:] != labels.shape:
    raise ValueError(f'predictions of shape {pred.shape} do not end in the {labels.shape} of labels')
  acc = (pred == labels).mean(axis=-1)
  return float(acc) if np.ndim(acc) == 0 else acc


def one_nn_predict(train_x, train_y, test_x, block_bytes: int = DEFAULT_BLOCK_BYTES) -> np.ndarray:
  """Cosine 1-nearest-neighbour labels of `test_x`; on equal scores the earliest training example wins."""
  train = _l2_normalize(_check_features('train_x', train_x), np.float64, 'train_x')
  test = _l2_normalize(_check_features('test_x', test_x, train.shape[1]), np.float64, 'test_x')
  train_y = np.asarray(train_y)
  if train_y.shape != (train.shape[0],):
    raise ValueError(f'train_y must have shape ({train.shape[0]},), got {train_y.shape}')
  block = max(1, block_bytes // (max(train.shape[0], 1) * 8))
  nearest = (
    np.concatenate([np.argmax(test[s : s + block] @ train.T, axis=1) for s in range(0, test.shape[0], block)])
    if test.shape[0]
    else np.zeros(0, int)
  )
  return train_y[nearest]


def one_nn_accuracy(train_x, train_y, test_x, test_y) -> float:
  """Sanity anchor: Ac of a cosine 1-NN classifier with the training embeddings as the gallery."""
  return classification_accuracy(one_nn_predict(train_x, train_y, test_x), test_y)


def logistic_regression_predict(train_x, train_y, test_x, c: float = 1.0, max_iter: int = 2000) -> np.ndarray:
  """Labels predicted by scikit-learn's multinomial logistic regression.

  Solver lbfgs, L2 penalty with inverse strength C = `c` (scikit-learn's default 1.0), intercept fitted,
  features used as given (no standardisation: the embeddings are already on a common scale, usually the
  unit sphere). `max_iter` is raised from scikit-learn's 100 because hundreds of classes on 128-512-D
  features often need more; a ConvergenceWarning still surfaces if it is not enough.
  """
  train_x = _check_features('train_x', train_x)
  test_x = _check_features('test_x', test_x, train_x.shape[1])
  model = linear_model.LogisticRegression(C=c, solver='lbfgs', max_iter=max_iter)
  model.fit(train_x, np.asarray(train_y))
  return model.predict(test_x)


def logistic_regression_accuracy(train_x, train_y, test_x, test_y, c: float = 1.0, max_iter: int = 2000) -> float:
  """Sanity anchor: Ac of `logistic_regression_predict` on the test split."""
  return classification_accuracy(logistic_regression_predict(train_x, train_y, test_x, c, max_iter), test_y)
