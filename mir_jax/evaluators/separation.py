"""How far apart identities lie relative to their spread: the number printed beside the PCA figures.

The paper (Figs. 2-3) says "the distance between different classes become[s] larger" after MIR, judged by
eye from a 2-D PCA plot. This module puts a number on that:

  centroid c_k        the mean of the features of class k
  within  W           the mean, over all points x, of the Euclidean distance ||x - c_{y(x)}|| to the
                      point's own class centroid (each point weighs equally)
  between B           the mean, over all unordered pairs of distinct classes {k, l}, of ||c_k - c_l||
                      (for two classes, simply the distance between the two centroids)
  ratio               B / W

The ratio is invariant to translating, rotating or uniformly scaling the features, so it can compare the
original embedding with the MIR character features although their scales differ. Features are used as
given (no L2 normalisation). It is computed in the full feature space and in the 2-D PCA projection that
the figure draws; the two can disagree, since PCA keeps the directions of largest total variance, not of
largest class separation.
"""

import dataclasses
import itertools

import numpy as np
from sklearn import decomposition


@dataclasses.dataclass(frozen=True)
class Separation:
  between: float
  within: float
  ratio: float  # between / within; inf when every class collapses onto its centroid


def pca_2d(features) -> np.ndarray:
  """The (n, 2) projection of `features` on their first two principal components (centred, unwhitened)."""
  x = np.asarray(features, np.float64)
  if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2:
    raise ValueError(f'PCA to 2-D needs at least 2 points of dimension >= 2, got shape {x.shape}')
  # The full SVD is exact and deterministic; randomized solvers would make the figure depend on a seed.
  return decomposition.PCA(n_components=2, svd_solver='full').fit_transform(x)


def separation(features, labels) -> Separation:
  """Between / within class distance ratio of `features` in their own space (see the module docstring)."""
  x = np.asarray(features, np.float64)
  labels = np.asarray(labels)
  if x.ndim != 2 or labels.shape != (x.shape[0],):
    raise ValueError(f'expected features (n, d) and labels (n,), got {x.shape} and {labels.shape}')
  if not np.isfinite(x).all():
    raise ValueError('features contain NaN or inf')
  classes = np.unique(labels)
  if classes.size < 2:
    raise ValueError('need at least 2 classes to measure a between-class distance')
  centroids = np.stack([x[labels == k].mean(axis=0) for k in classes])
  own = centroids[np.searchsorted(classes, labels)]
  within = float(np.linalg.norm(x - own, axis=1).mean())
  between = float(
    np.mean([np.linalg.norm(centroids[i] - centroids[j]) for i, j in itertools.combinations(range(classes.size), 2)])
  )
  ratio = between / within if within > 0 else float('inf')
  return Separation(between, within, ratio)


def between_within_ratio(features, labels) -> dict:
  """The separation of `features` in the full space and in their own 2-D PCA projection.

  Returns:
    {'full': Separation, 'pca2': Separation}; the PCA is fitted on exactly these features, as in the
    figure panel that shows them.
  """
  return {'full': separation(features, labels), 'pca2': separation(pca_2d(features), labels)}
