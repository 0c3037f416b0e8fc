"""The compiled training engine: many MIR-head runs trained at once, each run's loop fully inside XLA.

One call to `train` trains R runs (seeds x schedules x per-run hyperparameters) that share shapes: the
step loop runs inside XLA (a `lax.scan` over history blocks, each a loop over its steps) and the runs are
a `vmap` over it, so there is no Python dispatch per step and no per-run compile. Runs of one schedule
share a compiled program, which the number of steps does not change (only the history's length does), and
each program computes only what its schedule trains (a single-task head never evaluates the commonality
branch; an alternating step computes only the loss of the task it trains):

  schedule     parameter groups updated at step t                     loss of the update
  joint        both                                                   CE + lambda * BCE
  alternating  commonality if (t // P) even (P = alternate_every),    lambda * BCE
               classifier otherwise                                   CE
  single       classifier (on the raw embedding)                      CE

(plus L2 on the updated weights). Each parameter group (see `model.COMMONALITY_PARAMS` /
`CLASSIFIER_PARAMS`) has its own optimizer state, and a group that is not updated at a step keeps its
parameters *and* its optimizer state bit-for-bit, so "fixing one task while learning the other" is exact
(Adam's moments would otherwise keep moving frozen weights).
"""

import dataclasses
import functools
from typing import Dict, List, NamedTuple, Sequence

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
  """What differs between the runs of one program, as per-run arrays (leading axis R) for `vmap`."""

  key: jax.Array
  bce_weight: jax.Array
  learning_rate: jax.Array
  l2: jax.Array
  steps: jax.Array


def run_arrays(runs: Sequence[Run]) -> RunArrays:
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  return RunArrays(
    key=jnp.stack([jax.random.key_data(jax.random.key(r.seed)) for r in runs]),
    bce_weight=f32([r.commonality_weight for r in runs]),
    learning_rate=f32([r.learning_rate for r in runs]),
    l2=f32([r.l2 for r in runs]),
    steps=jnp.asarray([r.steps for r in runs], jnp.int32),
  )


class Program(NamedTuple):
  """What fixes a run's compiled step, beyond `StaticOptions`: runs that share it train in one program."""

  schedule: str
  alternate_every: int = 0  # alternating only: steps per phase


def program_of(run: Run) -> Program:
  return Program(run.schedule, run.alternate_every if run.schedule == 'alternating' else 0)


# What one update trains (parameter groups) and which losses it computes; 'single' also skips the branch.
UPDATES = {
  'joint': (('commonality', 'classifier'), ('ce', 'bce')),
  'single': (('classifier',), ('ce',)),
  'commonality phase': (('commonality',), ('bce',)),
  'classifier phase': (('classifier',), ('ce',)),
}


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


def _l2_mask(params, which: str):
  return jax.tree_util.tree_map_with_path(lambda path, _: which == 'all' or path[-1].key == 'kernel', params)


def _l2_half_sum(params, mask):
  """TensorFlow's `tf.nn.l2_loss` summed over the penalised weights: sum(w^2) / 2."""
  leaves = jax.tree.leaves(jax.tree.map(lambda p, m: 0.5 * jnp.sum(p * p) if m else 0.0, params, mask))
  return sum(leaves)


def flops_per_run(opts: StaticOptions, dim: int, n_train: int, run: Run) -> int:
  """Multiply-adds x2 of the matmuls of one run's updates, forward and backward, as its program computes them.

  The branch: x W1 and h W2 forward, the gradients of W1 and W2 and the one into h (2 d^2 + 3 d k). The
  classifier: c W3 forward and the gradient of W3 (2 d K), plus the gradient into c (d K) where the branch
  needs it and `model.MIRHead` cannot route it through a k-vector instead. No update needs the gradient
  into x. An alternating classifier step runs the branch forward only (d^2 + d k).
  """
  b = n_train if opts.batch_size in (0, None) or opts.batch_size >= n_train else opts.batch_size
  d, classes = dim, opts.num_classes
  k = opts.commonality_dim
  branch = 2 * d * d + 3 * d * k
  classify = 2 * d * classes
  into_character = 0 if (k == 1 and opts.subtract_from == 'input') else d * classes
  steps = run.steps or opts.steps
  if run.schedule == 'joint':
    per_example = steps * (branch + classify + into_character)
  elif run.schedule == 'single':
    per_example = steps * classify
  else:
    p = run.alternate_every
    commonality_steps = steps // (2 * p) * p + min(steps % (2 * p), p)
    per_example = commonality_steps * branch + (steps - commonality_steps) * (d * d + d * k + classify)
  return 2 * b * per_example


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
    raise ValueError(
      f'{missing.size} class(es) have no training example (e.g. {missing[:5].tolist()}); '
      'their logits would never be trained'
    )


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
  parts = []
  for program, members in _by_program(runs).items():
    parts.append(
      (
        members,
        _train_sharded(
          x,
          labels,
          train_idx[members],
          None if eval_idx is None else eval_idx[members],
          [runs[i] for i in members],
          opts,
          program,
        ),
      )
    )
  return _in_run_order(parts)


def _by_program(runs: Sequence[Run]) -> Dict[Program, np.ndarray]:
  """Run indices per program, in order of first appearance."""
  groups: Dict[Program, List[int]] = {}
  for i, run in enumerate(runs):
    groups.setdefault(program_of(run), []).append(i)
  return {p: np.asarray(i) for p, i in groups.items()}


def _in_run_order(parts):
  """Per-program results [(run indices, result)] as one result in the runs' order."""
  if len(parts) == 1:
    return parts[0][1]
  order = np.argsort(np.concatenate([members for members, _ in parts]))
  return jax.tree.map(lambda *a: jnp.concatenate(a)[order], *[result for _, result in parts])


# XLA:CPU maps each compiled training program's code into hundreds of memory regions
# (`python -m benchmarks.compiled_maps` counts them), and Linux allows a process vm.max_map_count (65,530). Tuning
# compiles one program per (schedule, options, shapes), so a process that tunes many heads (the test suite,
# `reproduce.all`) would pass the limit, and LLVM then aborts the process ("Cannot allocate memory"). So
# at most this many stay compiled (of each jitted function here); one dropped is compiled again if it is
# asked for again.
MAX_COMPILED_PROGRAMS = 32


def _bound_compiled(fn):
  if fn._cache_size() >= MAX_COMPILED_PROGRAMS:  # pylint: disable=protected-access
    fn.clear_cache()


def _train_sharded(
  x, labels, train_idx, eval_idx, runs: List[Run], opts: StaticOptions, program: Program
) -> TrainResult:
  """Spreads the runs over the local devices (each CPU core is one: `mir_jax/__init__.py`), padding them to
  a multiple of the device count with copies of the last run, whose results are dropped."""
  _bound_compiled(_train_compiled)
  program_opts, block_steps, num_blocks = _program_options(opts)
  devices = jax.local_devices()
  count = len(runs)
  if len(devices) < 2 or count < 2:
    return _train_compiled(
      jnp.asarray(x, jnp.float32),
      jnp.asarray(labels, jnp.int32),
      jnp.asarray(train_idx, jnp.int32),
      eval_idx,
      run_arrays(runs),
      block_steps,
      program_opts,
      program,
      num_blocks,
    )
  pad = -count % len(devices)
  runs = runs + [runs[-1]] * pad
  train_idx = np.concatenate([train_idx, np.repeat(train_idx[-1:], pad, axis=0)])
  mesh = jax.sharding.Mesh(np.array(devices), ('runs',))
  by_run = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('runs'))
  everywhere = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  if eval_idx is not None:
    eval_idx = jax.device_put(jnp.concatenate([eval_idx, jnp.repeat(eval_idx[-1:], pad, axis=0)]), by_run)
  result = _train_compiled(
    jax.device_put(jnp.asarray(x, jnp.float32), everywhere),
    jax.device_put(jnp.asarray(labels, jnp.int32), everywhere),
    jax.device_put(jnp.asarray(train_idx, jnp.int32), by_run),
    eval_idx,
    jax.device_put(run_arrays(runs), by_run),
    jax.device_put(block_steps, everywhere),
    program_opts,
    program,
    num_blocks,
  )
  return jax.tree.map(lambda a: a[:count], result)


def _program_options(opts: StaticOptions):
  """(the options that fix the compiled program, steps per history block, number of blocks).

  The budget is not part of the program, only the history's length (a shape) is: tuning trains budgets
  B, 2B, 4B, ... of every point with one history block each, and one program serves them all (compiling,
  not training, is most of the time of short budgets). The program's own `steps` and `log_every` are
  placeholders that the traced code never reads."""
  num_blocks = opts.steps // opts.log_every
  return dataclasses.replace(opts, steps=1, log_every=1), jnp.int32(opts.log_every), num_blocks


@functools.partial(jax.jit, static_argnames=('opts', 'program', 'num_blocks'))
def _train_compiled(
  x,
  labels,
  train_idx,
  eval_idx,
  runs: RunArrays,
  block_steps,
  opts: StaticOptions,
  program: Program,
  num_blocks: int,
) -> TrainResult:
  eval_axis = None if eval_idx is None else 0
  return jax.vmap(_train_one, in_axes=(None, None, 0, eval_axis, 0, None, None, None, None))(
    x, labels, train_idx, eval_idx, runs, block_steps, opts, program, num_blocks
  )


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


def loss_fn(trained, frozen, xb, yb, run: RunArrays, opts: StaticOptions, update: str):
  """The objective of one `update` (see `UPDATES`) of the `trained` parameters: CE and/or
  lambda * BCE(commonality, 1), plus l2 * sum(w^2)/2 over the trained weights. Returns (total, (ce, bce)),
  a loss the update does not compute being NaN."""
  terms = UPDATES[update][1]
  out = opts.model().apply({'params': {**frozen, **trained}}, xb, update == 'single')
  nan = jnp.float32(jnp.nan)
  ce, bce, total = nan, nan, 0.0
  if 'ce' in terms:
    ce = optax.softmax_cross_entropy_with_integer_labels(out.logits, yb).mean()
    total += ce
  if 'bce' in terms:
    # The commonality task: every face belongs to the one class "face" (target 1).
    bce = optax.sigmoid_binary_cross_entropy(out.commonality_logit, jnp.ones_like(out.commonality_logit)).mean()
    total += run.bce_weight * bce
  if opts.l2_form == 'loss_half_sum':
    total += run.l2 * _l2_half_sum(trained, _l2_mask(trained, opts.l2_params))
  return total, (ce, bce)


def _update(state: TrainState, xb, yb, lr, live, run: RunArrays, opts: StaticOptions, update: str):
  """One `update` of the groups it trains; with `live` False (the run's budget is spent) nothing moves."""
  names = [k for g in UPDATES[update][0] for k in GROUPS[g]]
  trained = {k: state.params[k] for k in names}
  frozen = {k: v for k, v in state.params.items() if k not in names}
  (total, (ce, bce)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trained, frozen, xb, yb, run, opts, update)
  tx = _direction(opts.optimizer)
  params, opt_state = dict(state.params), dict(state.opt_state)
  keep = lambda new, old: jnp.where(live, new, old)
  for g in UPDATES[update][0]:
    p = {k: state.params[k] for k in GROUPS[g]}
    direction, new_state = tx.update({k: grads[k] for k in GROUPS[g]}, state.opt_state[g], p)
    if opts.l2_form == 'decoupled':  # AdamW-style: decay applied beside, not through, the optimizer
      direction = jax.tree.map(lambda d, w, m: d + run.l2 * w if m else d, direction, p, _l2_mask(p, opts.l2_params))
    params.update(jax.tree.map(keep, jax.tree.map(lambda w, d: w - lr * d, p, direction), p))
    opt_state[g] = jax.tree.map(keep, new_state, state.opt_state[g])
  return TrainState(params, opt_state), jnp.stack([total, ce, bce])


def train_step(state: TrainState, xb, yb, step, budget, run: RunArrays, opts: StaticOptions, program: Program):
  """One update of one run on the minibatch (xb, yb); returns (state, [total, ce, bce])."""
  lr = learning_rate_at(step, budget, run, opts)
  # A run is frozen once its budget is spent (so runs of different lengths can share a call).
  live = step < budget
  if program.schedule != 'alternating':
    return _update(state, xb, yb, lr, live, run, opts, program.schedule)
  # The step counter is not batched over runs, so under vmap this stays a branch: each phase computes
  # only the loss of the task it trains.
  return jax.lax.cond(
    (step // program.alternate_every) % 2 == 0,
    lambda s: _update(s, xb, yb, lr, live, run, opts, 'commonality phase'),
    lambda s: _update(s, xb, yb, lr, live, run, opts, 'classifier phase'),
    state,
  )


def _train_one(
  x_all, labels_all, train_idx, eval_idx, run: RunArrays, block_steps, opts: StaticOptions, program: Program, num_blocks
) -> TrainResult:
  x, labels = x_all[train_idx], labels_all[train_idx]
  input_mean = x.mean(axis=0) if opts.center else jnp.zeros(x.shape[1], x.dtype)
  x = x - input_mean
  model = opts.model()
  single_task = program.schedule == 'single'
  init_key, data_key = jax.random.split(jax.random.wrap_key_data(run.key))
  params = model_lib.init_params(init_key, model, x.shape[1])
  tx = _direction(opts.optimizer)
  state = TrainState(params, {g: tx.init({k: params[k] for k in names}) for g, names in GROUPS.items()})
  budget = jnp.where(run.steps > 0, run.steps, num_blocks * block_steps)
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
    state, losses = train_step(state, xb, yb, step, budget, run, opts, program)
    return (state, perm), losses

  def eval_accuracy(params):
    if eval_idx is None:
      return jnp.float32(jnp.nan)
    logits = model.apply({'params': params}, x_all[eval_idx] - input_mean, single_task).logits
    return (jnp.argmax(logits, axis=-1) == labels_all[eval_idx]).mean()

  def log_block(carry, block):
    def one_step(i, acc):
      carry, total, count = acc
      carry, losses = step_fn(carry, block * block_steps + i)
      # A loss an update does not compute is NaN (alternating steps compute one each): the block's mean
      # is over the steps that computed it.
      computed = ~jnp.isnan(losses)
      return carry, total + jnp.where(computed, losses, 0.0), count + computed

    zeros = jnp.zeros(3, jnp.float32)
    carry, total, count = jax.lax.fori_loop(0, block_steps, one_step, (carry, zeros, zeros))
    return carry, jnp.concatenate([total / count, eval_accuracy(carry[0].params)[None]])

  carry = (state, jnp.zeros(n, jnp.int32))
  (state, _), hist = jax.lax.scan(log_block, carry, jnp.arange(num_blocks))
  history = {'loss': hist[:, 0], 'ce': hist[:, 1], 'bce': hist[:, 2]}
  if eval_idx is not None:
    history['eval_accuracy'] = hist[:, 3]
  return TrainResult(state.params, input_mean, history)


# The model, not the options, is static: heads trained for different budgets share one program.
@functools.partial(jax.jit, static_argnames=('model', 'single_task'))
def _apply_all(params, input_mean, x, model: model_lib.MIRHead, single_task: bool):
  apply = lambda p, mu: model.apply({'params': p}, x - mu, single_task)
  return jax.vmap(apply)(params, input_mean)


def apply_runs(result: TrainResult, x, runs: Sequence[Run], opts: StaticOptions) -> model_lib.HeadOutputs:
  """Head outputs of every run on x; each field has a leading run axis."""
  x = np.asarray(x, np.float32)
  dim = result.input_mean.shape[-1]
  if x.ndim != 2 or x.shape[1] != dim:
    raise ValueError(f'embeddings have shape {x.shape}, the heads were trained on dimension {dim}')
  if not np.isfinite(x).all():
    raise ValueError('embeddings contain NaN or inf')
  single = np.array([r.schedule == 'single' for r in runs])
  parts = []
  for flag in (False, True):
    members = np.flatnonzero(single == flag)
    if members.size:
      params = jax.tree.map(lambda a, m=members: a[m], result.params)
      _bound_compiled(_apply_all)
      parts.append((members, _apply_all(params, result.input_mean[members], jnp.asarray(x), opts.model(), bool(flag))))
  return _in_run_order(parts)
