"""Sanity anchors for a classification task: what simple classifiers reach on the original embeddings.

Table I's (b) rows are a softmax head trained on the original embeddings. A head far below cosine 1-NN or
logistic regression on the same splits has not fit the features, and then "(a) > (b)" would say more about
training than about MIR; the anchors show where (b) stands. Both use each seed's training split and score
its test split, so they pair with the heads by seed. Logistic regression's inverse L2 strength C is chosen
on validation data, never the test split: a validation split carved from the first seed's training split
(the heads tune on the first two seeds; one is enough for a one-parameter choice). scikit-learn's
default C = 1 is far too strong a penalty for unit-norm embeddings with hundreds of classes.
"""

from typing import Dict, List, Sequence, Tuple

from mir_jax import protocols
from mir_jax import tuning
from mir_jax.evaluators import identification

ANCHORS = ('cosine 1-NN', 'logistic regression')


def choose_c(task: protocols.Classification, cs: Sequence[float], val_fraction: float) -> Tuple[float, Dict]:
  """The C of `cs` with the best validation accuracy on the first seed (ties: the smaller C, the stronger
  penalty), and every C's validation accuracy in percent."""
  fit, val = tuning.validation_split(task.labels, task.train_idx[0], task.seeds[0], val_fraction)
  scores = {
    c: 100
    * identification.logistic_regression_accuracy(task.x[fit], task.labels[fit], task.x[val], task.labels[val], c=c)
    for c in cs
  }
  best = max(scores.values())
  return min(c for c, s in scores.items() if s == best), scores


def run(task: protocols.Classification, c: float) -> Dict[str, List[float]]:
  """{anchor: per-seed test accuracy in percent} on the task's splits, logistic regression at C = `c`."""
  out = {name: [] for name in ANCHORS}
  for train_idx, test_idx in zip(task.train_idx, task.test_idx):
    fit = (task.x[train_idx], task.labels[train_idx], task.x[test_idx], task.labels[test_idx])
    out['cosine 1-NN'].append(100 * identification.one_nn_accuracy(*fit))
    out['logistic regression'].append(100 * identification.logistic_regression_accuracy(*fit, c=c))
  return out
