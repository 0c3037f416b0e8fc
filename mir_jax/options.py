"""The one converter from a config's `model`, `train` and `tune` blocks to what the engine and the tuning take.

The blocks are defined once, in experiments/configs/default.py; `python -m mir_jax.train` and the reproduce
tables read them only through here. A `Variant` is the part of them that fixes a head's compiled program and
that the ablations change one field at a time.
"""

import dataclasses

from mir_jax import engine
from mir_jax import tuning

# '1': the paper's W2 is 128x1, one scalar y broadcast in x - y. 'd': one commonality unit per feature.
COMMONALITY_DIMS = ('1', 'd')
# Plain SGD and momentum take steps of lr * gradient, not Adam's lr-sized ones: their useful learning rates
# on unit-norm embeddings are 10-100x larger, so they are tuned on a grid of their own.
_RAW_STEP_OPTIMIZERS = ('sgd', 'momentum')


@dataclasses.dataclass(frozen=True)
class Variant:
  """A head variant: the model and training choices that fix the compiled program. No defaults: the
  config's blocks (`from_config`) are the one place they are stated."""

  commonality_dim: str
  subtract_from: str
  center: bool
  optimizer: str
  commonality_weight: float
  lr_schedule: str  # of the tuned reading; the paper-literal reading is always constant

  def __post_init__(self):
    if self.commonality_dim not in COMMONALITY_DIMS:
      raise ValueError(f'unknown commonality_dim {self.commonality_dim!r}; choose one of {COMMONALITY_DIMS}')

  @classmethod
  def from_config(cls, config) -> 'Variant':
    m, t = config.model, config.train
    return cls(str(m.commonality_dim), m.subtract_from, m.center, t.optimizer, t.commonality_weight, t.lr_schedule)

  def label(self) -> str:
    return (
      f'commonality_dim={self.commonality_dim}, subtract_from={self.subtract_from}, center={self.center}, '
      f'optimizer={self.optimizer}, lambda={self.commonality_weight:g}, lr_schedule={self.lr_schedule}'
    )


def static_options(train, variant: Variant, num_classes: int, dim: int, steps: int = 1) -> engine.StaticOptions:
  """The engine's options for heads of `variant` on `dim`-D embeddings; `train` is a config's train block.
  `steps` is a placeholder where the caller (`runner.train_heads`, the tuning) sets each call's budget."""
  return engine.StaticOptions(
    num_classes=num_classes,
    commonality_dim=dim if variant.commonality_dim == 'd' else 1,
    subtract_from=variant.subtract_from,
    center=variant.center,
    optimizer=variant.optimizer,
    l2_form=train.l2_form,
    l2_params=train.l2_params,
    steps=steps,
    batch_size=train.batch_size,
    lr_schedule=variant.lr_schedule,
    warmup_fraction=train.warmup_fraction,
  )


def grid(tune, optimizer: str) -> tuning.Grid:
  """The tuning grid of a config's tune block for heads trained with `optimizer`."""
  lrs = tune.sgd_learning_rates if optimizer in _RAW_STEP_OPTIMIZERS else tune.learning_rates
  return tuning.Grid(
    learning_rates=tuple(lrs),
    l2s=tuple(tune.l2s),
    first_steps=tune.first_steps,
    max_steps=tune.max_steps,
    tolerance=tune.tolerance,
    plateau_doublings=tune.plateau_doublings,
    max_extensions=tune.max_extensions,
    prune_margin=tune.prune_margin,
    val_fraction=tune.val_fraction,
    tuning_seeds=tune.tuning_seeds,
    prefer_converged=tune.prefer_converged,
  )


def seeds(train) -> list:
  """The seeds of a config's train block: each picks a run's initialisation and its data split."""
  return [train.seed + i for i in range(train.num_seeds)]
