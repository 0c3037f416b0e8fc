"""The MIR head of the paper (section III.C, Fig. 1) and its single-task baseline.

  x in R^d                      (a face embedding; d = 128 for dlib/the paper, 512 for facenet-pytorch)
  h = relu(x W1 + b1)           (hidden layer, d -> d)
  y = sigmoid(h W2 + b2)        (the "commonality": trained so that all faces are one class, target 1)
  c = base - y                  (the "character"; base = x in the paper's words "x subtract y", or h)
  logits = c W3 + b3            (softmax over identities)

The single-task baseline (Table II) is the same softmax layer on the raw embedding: logits = x W3 + b3.
It is expressed as this module with `gate = 0`, so single- and multi-task runs share parameter shapes and
train in one vmapped call; with gate 0 the commonality branch receives no gradient and is never updated.
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
  character: jax.Array  # (n, d), c = base - y (or the raw embedding when gate = 0)


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
  def __call__(self, x, gate=1.0, ce_to_commonality=1.0):
    """Args:
      x: (n, d) embeddings.
      gate: 1 = MIR, 0 = single-task (character = x, the commonality branch is cut out).
      ce_to_commonality: 1 lets the classification loss train the commonality branch (joint training),
        0 stops that gradient (alternating training, where only the commonality task trains the branch).
    """
    if self.subtract_from not in SUBTRACT_FROM:
      raise ValueError(f'subtract_from must be one of {SUBTRACT_FROM}, got {self.subtract_from!r}')
    d = x.shape[-1]
    if self.commonality_dim not in (1, d):
      raise ValueError(f'commonality_dim must be 1 or the embedding dimension {d}, got {self.commonality_dim}')

    h = nn.relu(nn.Dense(d, name='hidden')(x))
    y_logit = nn.Dense(self.commonality_dim, name='commonality')(h)
    y = nn.sigmoid(y_logit)

    base = x if self.subtract_from == 'input' else h
    mir_character = base - y
    # Same value, but the classification gradient into the branch is scaled by ce_to_commonality.
    mir_character = (ce_to_commonality * mir_character
                     + (1.0 - ce_to_commonality) * jax.lax.stop_gradient(mir_character))
    character = gate * mir_character + (1.0 - gate) * x
    logits = nn.Dense(self.num_classes, name='classifier')(character)
    return HeadOutputs(logits, y_logit, y, character)


# Top-level parameter names of each group; `engine` updates the groups with separate optimizer states.
COMMONALITY_PARAMS = ('hidden', 'commonality')
CLASSIFIER_PARAMS = ('classifier',)


def init_params(rng, model: MIRHead, dim: int):
  return model.init(rng, jnp.zeros((1, dim), jnp.float32))['params']
