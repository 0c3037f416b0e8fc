"""The MIR head of the paper (section III.C, Fig. 1) and its single-task baseline.

  x in R^d                      (a face embedding; d = 128 for dlib/the paper, 512 for facenet-pytorch)
  h = relu(x W1 + b1)           (hidden layer, d -> d)
  y = sigmoid(h W2 + b2)        (the "commonality": trained so that all faces are one class, target 1)
  c = base - y                  (the "character"; base = x in the paper's words "x subtract y", or h)
  logits = c W3 + b3            (softmax over identities)

The single-task baseline (Table II) is the same softmax layer on the raw embedding: logits = x W3 + b3.
Both have the same parameters (a single-task head leaves its branch at its initial value), so heads of
every schedule stack into one result; `single_task` is static, so the baseline's program has no branch.
"""

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

SUBTRACT_FROM = ('input', 'hidden')


class HeadOutputs(NamedTuple):
  logits: jax.Array  # (n, num_classes)
  commonality_logit: jax.Array  # (n, commonality_dim), pre-sigmoid, for a stable BCE
  commonality: jax.Array  # (n, commonality_dim), y in (0, 1)
  character: jax.Array  # (n, d), c = base - y (the raw embedding for the single-task head)


class MIRHead(nn.Module):
  """The MIR head. Parameters live in two groups, `commonality` and `classifier`, so that alternating
  training can freeze one while it trains the other.

  Attributes:
    num_classes: identities in the softmax.
    commonality_dim: 1 (the paper's W2 is 128x1, y a scalar broadcast over x) or d (one unit per feature).
    subtract_from: 'input' (c = x - y, the paper's text) or 'hidden' (c = h - y).
  """

  num_classes: int
  commonality_dim: int = 1
  subtract_from: str = 'input'

  @nn.compact
  def __call__(self, x, single_task: bool = False):
    """x: (n, d) embeddings; single_task: the baseline, logits = x W3 + b3 (a Python bool)."""
    if self.subtract_from not in SUBTRACT_FROM:
      raise ValueError(f'subtract_from must be one of {SUBTRACT_FROM}, got {self.subtract_from!r}')
    d = x.shape[-1]
    if self.commonality_dim not in (1, d):
      raise ValueError(f'commonality_dim must be 1 or the embedding dimension {d}, got {self.commonality_dim}')

    h = nn.relu(nn.Dense(d, name='hidden')(x))
    y_logit = nn.Dense(self.commonality_dim, name='commonality')(h)
    y = nn.sigmoid(y_logit)
    classifier = nn.Dense(self.num_classes, name='classifier')
    if single_task:
      return HeadOutputs(classifier(x), y_logit, y, x)

    character = (x if self.subtract_from == 'input' else h) - y
    if self.subtract_from == 'input' and self.commonality_dim == 1:
      # (x - y 1) W3 + b3 = x W3 + b3 - y (1 W3): the same logits, but the gradient into the scalar y is
      # then a k-vector product instead of the (n, k) x (k, d) one, a third of the classifier's cost.
      logits = classifier(x) - y * jnp.sum(classifier.variables['params']['kernel'], axis=0)
    else:
      logits = classifier(character)
    return HeadOutputs(logits, y_logit, y, character)


# Top-level parameter names of each group; `engine` updates the groups with separate optimizer states.
COMMONALITY_PARAMS = ('hidden', 'commonality')
CLASSIFIER_PARAMS = ('classifier',)


def init_params(rng, model: MIRHead, dim: int):
  return model.init(rng, jnp.zeros((1, dim), jnp.float32))['params']
