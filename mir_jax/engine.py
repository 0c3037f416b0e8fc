"""The compiled training engine: many MIR-head runs trained at once, each run's loop fully inside XLA.

One call to `train` trains R runs (seeds x schedules x per-run hyperparameters) that share shapes: the
step loop is a `lax.scan` and the runs are a `vmap` over it, so there is no Python dispatch per step and
no per-run compile. What differs between runs is numbers, never control flow:

  schedule     gate  ce_to_commonality  bce_weight  alternate_every  groups updated at step t
  joint          1          1             lambda          0          both
  alternating    1          0             lambda          P          commonality if (t // P) even, else classifier
  single         0          0               0             0          classifier

Each parameter group (see `model.COMMONALITY_PARAMS` / `CLASSIFIER_PARAMS`) has its own optimizer state,
and a group that is not updated at a step keeps its parameters *and* its optimizer state bit-for-bit, so
"fixing one task while learning the other" is exact (Adam's moments would otherwise keep moving frozen
weights).
"""

import dataclasses
import functools
from typing import List, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mir_jax import model as model_lib

SCHEDULES = ('joint', 'alternating', 'single')
OPTIMIZERS = ('adam', 'sgd', 'momentum', 'rmsprop')
# 'constant': the paper names no schedule, and a constant rate is TensorFlow's default. 'warmup_cosine': a
# linear warm-up over the first `warmup_fraction` of a run's own budget, then cosine decay to 0 at its end,
# so a minibatch head settles instead of ending on a noisy step.
LR_SCHEDULES = ('constant', 'warmup_cosine')
L2_FORMS = ('loss_half_sum', 'decoupled')
L2_PARAMS = ('kernels', 'all')
GROUPS = {'commonality': model_lib.COMMONALITY_PARAMS, 'classifier': model_lib.CLASSIFIER_PARAMS}


@dataclasses.dataclass(frozen=True)
class StaticOptions:
  """What fixes shapes or the compiled program; runs in one `train` call share these."""
  num_classes: int
  commonality_dim: int = 1
  subtract_from: str = 'input'
  optimizer: str = 'adam'
  l2_form: str = 'loss_half_sum'
  l2_params: str = 'kernels'
  steps: int = 2000
  batch_size: int = 0  # 0: full batch (the whole training set every step)
  center: bool = False  # subtract each run's training-set mean embedding (the paper's "centralize")
  log_every: int = 1  # loss history resolution, in steps
  lr_schedule: str = 'constant'
  warmup_fraction: float = 0.05  # of each run's budget; used by 'warmup_cosine'

  def __post_init__(self):
    _check_choice('optimizer', self.optimizer, OPTIMIZERS)
    _check_choice('lr_schedule', self.lr_schedule, LR_SCHEDULES)
    if not 0.0 <= self.warmup_fraction < 1.0:
      raise ValueError(f'warmup_fraction must lie in [0, 1), got {self.warmup_fraction}')
    _check_choice('l2_form', self.l2_form, L2_FORMS)
    _check_choice('l2_params', self.l2_params, L2_PARAMS)
    _check_choice('subtract_from', self.subtract_from, model_lib.SUBTRACT_FROM)
    if self.steps < 1 or self.log_every < 1 or self.steps % self.log_every:
      raise ValueError(f'steps ({self.steps}) must be a positive multiple of log_every ({self.log_every})')
    if self.num_classes < 2:
      raise ValueError(f'need at least 2 identities to classify, got num_classes={self.num_classes}')

  def model(self) -> model_lib.MIRHead:
    return model_lib.MIRHead(self.num_classes, self.commonality_dim, self.subtract_from)


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run: what may differ between runs trained together."""
  schedule: str = 'joint'
  seed: int = 0
  learning_rate: float = 1e-3
  l2: float = 1e-3
  commonality_weight: float = 1.0  # lambda, the weight of the commonality (BCE) task
  alternate_every: int = 1  # steps per phase of the alternating schedule
  steps: int = 0  # this run's budget: it stops updating after it, and its schedule ends there (0 = opts.steps)

  def __post_init__(self):
    _check_choice('schedule', self.schedule, SCHEDULES)
    if self.steps < 0:
      raise ValueError(f'steps must be >= 0, got {self.steps}')
    if self.schedule == 'alternating' and self.alternate_every < 1:
      raise ValueError(f'alternate_every must be >= 1, got {self.alternate_every}')


class RunArrays(NamedTuple):
  """`Run`s as per-run arrays (leading axis R), the form `vmap` consumes."""
  key: jax.Array
  gate: jax.Array
  ce_to_commonality: jax.Array
  bce_weight: jax.Array
  alternate_every: jax.Array
  learning_rate: jax.Array
  l2: jax.Array
  steps: jax.Array


def run_arrays(runs: Sequence[Run]) -> RunArrays:
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  return RunArrays(
      key=jnp.stack([jax.random.key_data(jax.random.key(r.seed)) for r in runs]),
      gate=f32([0.0 if r.schedule == 'single' else 1.0 for r in runs]),
      ce_to_commonality=f32([1.0 if r.schedule == 'joint' else 0.0 for r in runs]),
      bce_weight=f32([0.0 if r.schedule == 'single' else r.commonality_weight for r in runs]),
      alternate_every=jnp.asarray([r.alternate_every if r.schedule == 'alternating' else 0 for r in runs],
                                  jnp.int32),
      learning_rate=f32([r.learning_rate for r in runs]),
      l2=f32([r.l2 for r in runs]),
      steps=jnp.asarray([r.steps for r in runs], jnp.int32),
  )


class TrainResult(NamedTuple):
  params: dict  # every leaf has a leading run axis R
  input_mean: jax.Array  # (R, d): subtracted from embeddings before the head (zeros unless opts.center)
  # 'loss', 'ce', 'bce': (R, steps // log_every) mean training losses over each block of log_every steps,
  # for convergence checks; 'eval_accuracy': accuracy on each run's eval_idx after each block (if given).
  history: dict


def _check_choice(name, value, choices):
  if value not in choices:
    raise ValueError(f'unknown {name} {value!r}; choose one of {choices}')


def _direction(optimizer: str) -> optax.GradientTransformation:
  """The optimizer without its learning rate, which is per run and applied in `_step`."""
  return {
      'adam': optax.scale_by_adam(),
      'sgd': optax.identity(),
      'momentum': optax.trace(decay=0.9),
      'rmsprop': optax.scale_by_rms(),
  }[optimizer]


def _split(params):
  return {g: {k: params[k] for k in names} for g, names in GROUPS.items()}


def _merge(groups):
  return {k: v for g in groups.values() for k, v in g.items()}


def _l2_mask(params, which: str):
  return jax.tree_util.tree_map_with_path(
      lambda path, _: which == 'all' or path[-1].key == 'kernel', params)


def _l2_half_sum(params, mask):
  """TensorFlow's `tf.nn.l2_loss` summed over the penalised weights: sum(w^2) / 2."""
  leaves = jax.tree.leaves(jax.tree.map(lambda p, m: 0.5 * jnp.sum(p * p) if m else 0.0, params, mask))
  return sum(leaves)


def flops_per_step(opts: StaticOptions, dim: int, n_train: int) -> int:
  """Multiply-adds x2 of one run's matmuls in one update, forward and backward.

  Forward: x W1 (b d d), h W2 (b d k), c W3 (b d c). Backward: each weight gradient costs its forward; the
  input gradients of W2 and W3 flow on to h, the input gradient of W1 (into x) is not needed. Every
  schedule computes all three (single-task runs multiply the branch by a gate of 0).
  """
  b = n_train if opts.batch_size in (0, None) or opts.batch_size >= n_train else opts.batch_size
  k = dim if opts.commonality_dim == 0 else opts.commonality_dim
  return 2 * b * (2 * dim * dim + 3 * dim * k + 3 * dim * opts.num_classes)


def check_training_data(x, labels, num_classes: int):
  """Raises ValueError on inputs that would silently train a wrong head."""
  x = np.asarray(x)
  labels = np.asarray(labels)
  if x.ndim != 2 or labels.ndim != 1 or x.shape[0] != labels.shape[0]:
    raise ValueError(f'expected x of shape (n, d) and labels of shape (n,), got {x.shape} and {labels.shape}')
  if x.shape[0] == 0:
    raise ValueError('no training examples')
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'labels must be integers, got dtype {labels.dtype}')
  bad = ~np.isfinite(x).all(axis=1)
  if bad.any():
    raise ValueError(f'{bad.sum()} embedding(s) contain NaN or inf, first at rows {np.flatnonzero(bad)[:5]}')
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f'labels must lie in [0, {num_classes}), got min {labels.min()} max {labels.max()}')
  missing = np.setdiff1d(np.arange(num_classes), labels)
  if missing.size:
    raise ValueError(f'{missing.size} class(es) have no training example (e.g. {missing[:5].tolist()}); '
                     'their logits would never be trained')


def train(x, labels, opts: StaticOptions, runs: Sequence[Run], train_idx=None, eval_idx=None) -> TrainResult:
  """Trains `len(runs)` heads in one compiled call. Deterministic given the runs.

  Args:
    x, labels: all embeddings (n, d) and their identities (n,).
    opts: what the runs share.
    runs: what differs between runs.
    train_idx: optional (R, n_train) indices of each run's training examples (e.g. a different seeded
      split per run; splits by the same rule have equal sizes). Default: every run trains on all of x.
    eval_idx: optional (R, n_eval) indices of held-out examples whose accuracy is recorded after every
      block of log_every steps, inside the compiled loop (for choosing the number of steps on validation
      data without retraining).
  """
  if not runs:
    raise ValueError('no runs to train')
  if max(r.steps for r in runs) > opts.steps:
    raise ValueError(f'a run asks for {max(r.steps for r in runs)} steps; the call trains {opts.steps}')
  x, labels = np.asarray(x), np.asarray(labels)
  if train_idx is None:
    train_idx = np.broadcast_to(np.arange(len(labels)), (len(runs), len(labels)))
  train_idx = np.asarray(train_idx)
  if train_idx.ndim != 2 or train_idx.shape[0] != len(runs):
    raise ValueError(f'train_idx must have shape (runs={len(runs)}, n_train), got {train_idx.shape}')
  check_training_data(x, labels, opts.num_classes)
  for idx in np.unique(train_idx, axis=0):
    check_training_data(x[idx], labels[idx], opts.num_classes)
  if eval_idx is not None:
    eval_idx = np.asarray(eval_idx)
    if eval_idx.ndim != 2 or eval_idx.shape[0] != len(runs):
      raise ValueError(f'eval_idx must have shape (runs={len(runs)}, n_eval), got {eval_idx.shape}')
    eval_idx = jnp.asarray(eval_idx, jnp.int32)
  return _train_sharded(x, labels, train_idx, eval_idx, list(runs), opts)


def _train_sharded(x, labels, train_idx, eval_idx, runs: List[Run], opts: StaticOptions) -> TrainResult:
  """Spreads the runs over the local devices (each CPU core is one: `mir_jax/__init__.py`), padding them to
  a multiple of the device count with copies of the last run, whose results are dropped."""
  devices = jax.local_devices()
  count = len(runs)
  if len(devices) < 2 or count < 2:
    return _train_compiled(jnp.asarray(x, jnp.float32), jnp.asarray(labels, jnp.int32),
                           jnp.asarray(train_idx, jnp.int32), eval_idx, run_arrays(runs), opts)
  pad = -count % len(devices)
  runs = runs + [runs[-1]] * pad
  train_idx = np.concatenate([train_idx, np.repeat(train_idx[-1:], pad, axis=0)])
  mesh = jax.sharding.Mesh(np.array(devices), ('runs',))
  by_run = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('runs'))
  everywhere = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  if eval_idx is not None:
    eval_idx = jax.device_put(jnp.concatenate([eval_idx, jnp.repeat(eval_idx[-1:], pad, axis=0)]), by_run)
  result = _train_compiled(jax.device_put(jnp.asarray(x, jnp.float32), everywhere),
                           jax.device_put(jnp.asarray(labels, jnp.int32), everywhere),
                           jax.device_put(jnp.asarray(train_idx, jnp.int32), by_run), eval_idx,
                           jax.device_put(run_arrays(runs), by_run), opts)
  return jax.tree.map(lambda a: a[:count], result)


@functools.partial(jax.jit, static_argnames='opts')
def _train_compiled(x, labels, train_idx, eval_idx, runs: RunArrays, opts: StaticOptions) -> TrainResult:
  eval_axis = None if eval_idx is None else 0
  return jax.vmap(_train_one, in_axes=(None, None, 0, eval_axis, 0, None))(
      x, labels, train_idx, eval_idx, runs, opts)


class TrainState(NamedTuple):
  params: dict
  opt_state: dict  # group -> that group's optimizer state


def learning_rate_at(step, budget, run: RunArrays, opts: StaticOptions):
  """The run's learning rate at `step` of its `budget` steps."""
  if opts.lr_schedule == 'constant':
    return run.learning_rate
  budget = budget.astype(jnp.float32)
  warmup = jnp.maximum(jnp.round(opts.warmup_fraction * budget), 1.0)
  t = step.astype(jnp.float32)
  rise = (t + 1.0) / warmup
  progress = jnp.clip((t - warmup) / jnp.maximum(budget - warmup, 1.0), 0.0, 1.0)
  fall = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
  return run.learning_rate * jnp.where(t < warmup, rise, fall)


def loss_fn(params, xb, yb, run: RunArrays, opts: StaticOptions, l2_mask):
  """CE + lambda * BCE(commonality, 1) + l2 * sum(w^2)/2; returns (total, (ce, bce))."""
  out = opts.model().apply({'params': params}, xb, run.gate, run.ce_to_commonality)
  ce = optax.softmax_cross_entropy_with_integer_labels(out.logits, yb).mean()
  # The commonality task: every face belongs to the one class "face" (target 1).
  bce = optax.sigmoid_binary_cross_entropy(out.commonality_logit, jnp.ones_like(out.commonality_logit)).mean()
  reg = _l2_half_sum(params, l2_mask) if opts.l2_form == 'loss_half_sum' else 0.0
  return ce + run.bce_weight * bce + run.l2 * reg, (ce, bce)


def train_step(state: TrainState, xb, yb, step, budget, run: RunArrays, opts: StaticOptions):
  """One update of one run on the minibatch (xb, yb); returns (state, [total, ce, bce])."""
  l2_mask = _l2_mask(state.params, opts.l2_params)
  (total, (ce, bce)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, xb, yb, run, opts, l2_mask)
  alternating = run.alternate_every > 0
  commonality_phase = (step // jnp.maximum(run.alternate_every, 1)) % 2 == 0
  # A run is frozen once its budget is spent (so runs of different lengths can share a call).
  within_budget = step < budget
  active = {
      'commonality': jnp.where(alternating, commonality_phase, run.gate > 0) & within_budget,
      'classifier': jnp.where(alternating, ~commonality_phase, True) & within_budget,
  }
  lr = learning_rate_at(step, budget, run, opts)
  tx = _direction(opts.optimizer)
  p_groups, g_groups, m_groups = _split(state.params), _split(grads), _split(l2_mask)
  new_params, new_state = {}, {}
  for g in GROUPS:
    direction, opt_state = tx.update(g_groups[g], state.opt_state[g], p_groups[g])
    if opts.l2_form == 'decoupled':  # AdamW-style: decay applied beside, not through, the optimizer
      direction = jax.tree.map(lambda d, p, m: d + run.l2 * p if m else d, direction, p_groups[g], m_groups[g])
    updated = jax.tree.map(lambda p, d: p - lr * d, p_groups[g], direction)
    keep = lambda new, old, a=active[g]: jnp.where(a, new, old)
    new_params[g] = jax.tree.map(keep, updated, p_groups[g])
    new_state[g] = jax.tree.map(keep, opt_state, state.opt_state[g])
  return TrainState(_merge(new_params), new_state), jnp.stack([total, ce, bce])


def _train_one(x_all, labels_all, train_idx, eval_idx, run: RunArrays, opts: StaticOptions) -> TrainResult:
  x, labels = x_all[train_idx], labels_all[train_idx]
  input_mean = x.mean(axis=0) if opts.center else jnp.zeros(x.shape[1], x.dtype)
  x = x - input_mean
  model = opts.model()
  init_key, data_key = jax.random.split(jax.random.wrap_key_data(run.key))
  params = model_lib.init_params(init_key, model, x.shape[1])
  tx = _direction(opts.optimizer)
  state = TrainState(params, {g: tx.init(p) for g, p in _split(params).items()})
  budget = jnp.where(run.steps > 0, run.steps, opts.steps)
  n = x.shape[0]
  batch = n if opts.batch_size in (0, None) or opts.batch_size >= n else opts.batch_size
  batches_per_epoch = n // batch

  def shuffled(epoch):
    return jax.random.permutation(jax.random.fold_in(data_key, epoch), n).astype(jnp.int32)

  def step_fn(carry, step):
    state, perm = carry
    if batch == n:
      xb, yb = x, labels
    else:
      epoch, i = jnp.divmod(step, batches_per_epoch)
      # The step counter is not batched over runs, so under vmap this stays a branch: one permutation
      # per epoch instead of one per step.
      perm = jax.lax.cond(i == 0, lambda: shuffled(epoch), lambda: perm)
      idx = jax.lax.dynamic_slice_in_dim(perm, i * batch, batch)
      xb, yb = x[idx], labels[idx]
    state, losses = train_step(state, xb, yb, step, budget, run, opts)
    return (state, perm), losses

  def eval_accuracy(params):
    if eval_idx is None:
      return jnp.float32(jnp.nan)
    logits = model.apply({'params': params}, x_all[eval_idx] - input_mean, run.gate).logits
    return (jnp.argmax(logits, axis=-1) == labels_all[eval_idx]).mean()

  def log_block(carry, block):
    carry, per_step = jax.lax.scan(step_fn, carry, block * opts.log_every + jnp.arange(opts.log_every))
    return carry, jnp.concatenate([per_step.mean(axis=0), eval_accuracy(carry[0].params)[None]])

  carry = (state, jnp.zeros(n, jnp.int32))
  (state, _), hist = jax.lax.scan(log_block, carry, jnp.arange(opts.steps // opts.log_every))
  history = {'loss': hist[:, 0], 'ce': hist[:, 1], 'bce': hist[:, 2]}
  if eval_idx is not None:
    history['eval_accuracy'] = hist[:, 3]
  return TrainResult(state.params, input_mean, history)


@functools.partial(jax.jit, static_argnames='opts')
def _apply_all(params, input_mean, x, gates, opts: StaticOptions):
  apply = lambda p, mu, g: opts.model().apply({'params': p}, x - mu, g)
  return jax.vmap(apply)(params, input_mean, gates)


def apply_runs(result: TrainResult, x, runs: Sequence[Run], opts: StaticOptions) -> model_lib.HeadOutputs:
  """Head outputs of every run on x; each field has a leading run axis."""
  x = np.asarray(x, np.float32)
  dim = result.input_mean.shape[-1]
  if x.ndim != 2 or x.shape[1] != dim:
    raise ValueError(f'embeddings have shape {x.shape}, the heads were trained on dimension {dim}')
  if not np.isfinite(x).all():
    raise ValueError('embeddings contain NaN or inf')
  return _apply_all(result.params, result.input_mean, jnp.asarray(x), run_arrays(runs).gate, opts)

