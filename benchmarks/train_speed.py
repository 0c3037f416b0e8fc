r"""Training speed of the engine on the Table II grid, against a PyTorch eager loop and scikit-learn.

  python -m benchmarks.train_speed --out=outputs/train_speed.json

The grid: 3 schedules (joint, alternating, single) x 10 seeds, each seed its own stratified half/half
split, the same number of full-batch steps for every run, on synthetic embeddings shaped like LFW's
identities with >= 10 images (4,324 x 128, 158 identities, LFW-like imbalance). Timed in one process:
  (a) this engine: all 30 runs in one compiled, vmapped call (timed with and without compilation);
  (b) a plain PyTorch eager loop of the same model, losses and optimizer, run after run, written the way
      one naturally would (the single-task run only evaluates the softmax layer; alternating phases only
      evaluate the loss of the task they train);
  (c) scikit-learn LogisticRegression (lbfgs) for the single-task baseline, with its test accuracy.
Plus this machine's matmul peak (a large float32 GEMM in JAX, NumPy and PyTorch; the best is the peak)
and the engine's achieved FLOP/s against it. Each timing is the median of --repeats.
"""

import os
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import machine
from mir_jax import engine
from mir_jax import splits

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('out', 'outputs/train_speed.json', 'Where to write the JSON.')
  flags.DEFINE_integer('steps', 300, 'Full-batch steps per run.')
  flags.DEFINE_integer('seeds', 10, 'Seeds per schedule.')
  flags.DEFINE_integer('repeats', 3, 'Timed repetitions of the engine and GEMM (median reported).')
  flags.DEFINE_integer('torch_repeats', 1, 'Timed repetitions of the whole PyTorch grid.')
  flags.DEFINE_string('torch_device', 'auto', "PyTorch device: 'auto' (cuda when available), 'cpu', 'cuda'.")


NUM_CLASSES, DIM, NUM_EXAMPLES, MIN_PER_CLASS = 158, 128, 4324, 10
LEARNING_RATE, L2, LAMBDA = 1e-3, 1e-3, 1.0


def lfw_like_embeddings(seed=0):
  """158 identities with >= 10 images each and a Zipf-like tail (LFW's largest has 530), 4,324 in all."""
  rng = np.random.default_rng(seed)
  weights = 1.0 / np.arange(1, NUM_CLASSES + 1) ** 1.2
  counts = MIN_PER_CLASS + rng.multinomial(NUM_EXAMPLES - MIN_PER_CLASS * NUM_CLASSES, weights / weights.sum())
  labels = np.repeat(np.arange(NUM_CLASSES), counts)
  x = rng.normal(size=(NUM_CLASSES, DIM))[labels] + 1.5 * rng.normal(size=(labels.size, DIM))
  x += 2.0 * rng.normal(size=DIM)  # a shared offset, the "commonality"
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  return x.astype(np.float32), labels.astype(np.int64)


def timed(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times), times


def matmul_peak(repeats, torch_device):
  """GFLOP/s of a large float32 GEMM in JAX, NumPy and PyTorch; the best of them is the machine's peak.

  2048^3 on a CPU; 8192^3 on an accelerator, where a smaller one would not fill the chip.
  """
  import torch  # pylint: disable=g-import-not-at-top

  n = 2048 if jax.default_backend() == 'cpu' else 8192
  flops = 2 * n**3
  a = np.random.default_rng(0).normal(size=(n, n)).astype(np.float32)
  ja = jnp.asarray(a)
  jdot = jax.jit(lambda m: m @ m)
  jdot(ja).block_until_ready()
  ta = torch.from_numpy(a).to(torch_device)
  sync = torch.cuda.synchronize if torch_device == 'cuda' else lambda: None
  results = {}
  for name, fn in (
    ('jax', lambda: jdot(ja).block_until_ready()),
    ('numpy', lambda: a @ a),
    ('torch', lambda: (ta @ ta, sync())),
  ):
    fn()
    med, _ = timed(lambda f=fn: [f() for _ in range(5)], repeats)
    results[name] = 5 * flops / med / 1e9
  return results


def torch_grid(x, labels, train_idx, test_idx, schedules, steps, device):
  """The same runs as the engine's grid, one after another in PyTorch eager mode. Returns test accuracies."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(os.cpu_count() or 1)
  xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(labels).to(device)
  accs = []
  for schedule in schedules:
    for seed, (tr, te) in enumerate(zip(train_idx, test_idx)):
      torch.manual_seed(seed)
      xb, yb = xt[tr], yt[tr]
      hidden, common, classifier = (
        nn.Linear(DIM, DIM).to(device),
        nn.Linear(DIM, 1).to(device),
        nn.Linear(DIM, NUM_CLASSES).to(device),
      )
      branch = list(hidden.parameters()) + list(common.parameters())
      l2 = lambda *layers: sum(0.5 * (m.weight**2).sum() for m in layers)
      ones = torch.ones(len(tr), 1, device=device)

      def forward(inputs, common=common, hidden=hidden, classifier=classifier):
        y_logit = common(torch.relu(hidden(inputs)))
        return y_logit, classifier(inputs - torch.sigmoid(y_logit))

      if schedule == 'joint':
        opt = torch.optim.Adam(branch + list(classifier.parameters()), lr=LEARNING_RATE)
        for _ in range(steps):
          y_logit, logits = forward(xb)
          loss = (
            nn.functional.cross_entropy(logits, yb)
            + LAMBDA * nn.functional.binary_cross_entropy_with_logits(y_logit, ones)
            + L2 * l2(hidden, common, classifier)
          )
          opt.zero_grad()
          loss.backward()
          opt.step()
      elif schedule == 'alternating':
        opt_branch = torch.optim.Adam(branch, lr=LEARNING_RATE)
        opt_cls = torch.optim.Adam(classifier.parameters(), lr=LEARNING_RATE)
        for step in range(steps):
          if step % 2 == 0:  # commonality task; classifier fixed
            y_logit = common(torch.relu(hidden(xb)))
            loss = LAMBDA * nn.functional.binary_cross_entropy_with_logits(y_logit, ones) + L2 * l2(hidden, common)
            opt_branch.zero_grad()
            loss.backward()
            opt_branch.step()
          else:  # classification task; commonality fixed
            with torch.no_grad():
              character = xb - torch.sigmoid(common(torch.relu(hidden(xb))))
            loss = nn.functional.cross_entropy(classifier(character), yb) + L2 * l2(classifier)
            opt_cls.zero_grad()
            loss.backward()
            opt_cls.step()
      else:  # single task: the softmax layer on the raw embedding
        opt = torch.optim.Adam(classifier.parameters(), lr=LEARNING_RATE)
        for _ in range(steps):
          loss = nn.functional.cross_entropy(classifier(xb), yb) + L2 * l2(classifier)
          opt.zero_grad()
          loss.backward()
          opt.step()
      with torch.no_grad():
        logits = classifier(xt[te]) if schedule == 'single' else forward(xt[te])[1]
        accs.append(float((logits.argmax(1) == yt[te]).float().mean()))
  return accs


def sklearn_single_task(x, labels, train_idx, test_idx):
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top

  accs = []
  for tr, te in zip(train_idx, test_idx):
    clf = LogisticRegression(max_iter=1000).fit(x[tr], labels[tr])
    accs.append(float(clf.score(x[te], labels[te])))
  return accs


def main(argv):
  del argv
  import sklearn  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  x, labels = lfw_like_embeddings()
  seeds = list(range(FLAGS.seeds))
  train_idx, test_idx = map(np.stack, zip(*[splits.stratified_split(labels, 0.5, s) for s in seeds]))
  runs = [
    engine.Run(schedule=s, seed=seed, learning_rate=LEARNING_RATE, l2=L2, commonality_weight=LAMBDA)
    for s in engine.SCHEDULES
    for seed in seeds
  ]
  run_train = np.concatenate([train_idx] * len(engine.SCHEDULES))
  run_test = np.concatenate([test_idx] * len(engine.SCHEDULES))
  opts = engine.StaticOptions(num_classes=NUM_CLASSES, steps=FLAGS.steps, log_every=FLAGS.steps)
  n_train = train_idx.shape[1]

  torch_device = FLAGS.torch_device
  if torch_device == 'auto':
    torch_device = 'cuda' if torch.cuda.is_available() else 'cpu'
  print('matmul peak ...', flush=True)
  peak = matmul_peak(FLAGS.repeats, torch_device)

  print('engine ...', flush=True)
  start = time.perf_counter()
  result = jax.block_until_ready(engine.train(x, labels, opts, runs, run_train))
  engine_first = time.perf_counter() - start
  engine_median, engine_times = timed(
    lambda: jax.block_until_ready(engine.train(x, labels, opts, runs, run_train)), FLAGS.repeats
  )
  logits = np.asarray(engine.apply_runs(result, x, runs, opts).logits)
  correct = logits.argmax(-1) == labels[None]
  engine_acc = np.take_along_axis(correct, run_test, axis=1).mean(1)
  flops = sum(engine.flops_per_run(opts, DIM, n_train, r) for r in runs)

  print('pytorch eager loop ...', flush=True)
  torch_accs = []

  def run_torch():
    torch_accs.append(torch_grid(x, labels, train_idx, test_idx, engine.SCHEDULES, FLAGS.steps, torch_device))
    if torch_device == 'cuda':
      torch.cuda.synchronize()

  torch_median, torch_times = timed(run_torch, FLAGS.torch_repeats)

  print('scikit-learn ...', flush=True)
  sk_accs = []
  sk_median, _ = timed(lambda: sk_accs.append(sklearn_single_task(x, labels, train_idx, test_idx)), 1)

  def by_schedule(accs):
    accs = np.asarray(accs).reshape(len(engine.SCHEDULES), len(seeds))
    return {s: {'mean': float(a.mean()), 'std': float(a.std())} for s, a in zip(engine.SCHEDULES, accs)}

  best_peak = max(peak.values())
  report = {
    'command': 'python -m benchmarks.train_speed '
    + ' '.join(f'--{k}={v}' for k, v in (('steps', FLAGS.steps), ('seeds', FLAGS.seeds), ('repeats', FLAGS.repeats))),
    'machine': {
      **machine.basic_info(),
      'jax_backend': jax.default_backend(),
      'jax_device': str(jax.devices()[0].device_kind),
      'jax_devices': len(jax.local_devices()),
      'torch_device': torch_device,
      'jax': jax.__version__,
      'torch': torch.__version__,
      'sklearn': sklearn.__version__,
    },
    'grid': {
      'runs': len(runs),
      'schedules': list(engine.SCHEDULES),
      'seeds': len(seeds),
      'steps_per_run': FLAGS.steps,
      'num_train': int(n_train),
      'num_test': int(test_idx.shape[1]),
      'num_classes': NUM_CLASSES,
      'dim': DIM,
    },
    'matmul_peak_gflops': peak,
    'engine': {
      'seconds_median': engine_median,
      'seconds_all': engine_times,
      'seconds_first_call_incl_compile': engine_first,
      'model_gflop': flops / 1e9,
      'achieved_gflops': flops / engine_median / 1e9,
      'fraction_of_matmul_peak': flops / engine_median / 1e9 / best_peak,
      'test_accuracy': by_schedule(engine_acc),
    },
    'pytorch_eager': {
      'seconds_median': torch_median,
      'seconds_all': torch_times,
      'test_accuracy': by_schedule(torch_accs[-1]),
    },
    'sklearn_logistic_regression': {
      'seconds': sk_median,
      'runs': len(seeds),
      'test_accuracy': {'mean': float(np.mean(sk_accs[-1])), 'std': float(np.std(sk_accs[-1]))},
    },
    'speedup_engine_vs_pytorch': torch_median / engine_median,
    'speedup_engine_incl_compile_vs_pytorch': torch_median / engine_first,
  }
  machine.write_json(FLAGS.out, report)
  e = report['engine']
  print(f'matmul peak {best_peak:.1f} GFLOP/s ({", ".join(f"{k} {v:.1f}" for k, v in peak.items())})')
  print(
    f'engine: {len(runs)} runs x {FLAGS.steps} steps in {engine_median:.2f} s (median; first call incl. '
    f'compile {engine_first:.2f} s), {e["achieved_gflops"]:.1f} GFLOP/s = '
    f'{100 * e["fraction_of_matmul_peak"]:.0f}% of peak'
  )
  print(
    f'pytorch eager loop: {torch_median:.2f} s -> engine is {report["speedup_engine_vs_pytorch"]:.2f}x faster '
    f'({report["speedup_engine_incl_compile_vs_pytorch"]:.2f}x including compilation)'
  )
  print(
    f'sklearn LogisticRegression, {len(seeds)} single-task fits: {sk_median:.2f} s, test accuracy '
    f'{100 * report["sklearn_logistic_regression"]["test_accuracy"]["mean"]:.2f}%'
  )
  for name in ('engine', 'pytorch_eager'):
    accs = report[name]['test_accuracy']
    print(f'{name} test accuracy: ' + ', '.join(f'{s} {100 * a["mean"]:.2f}%' for s, a in accs.items()))


if __name__ == '__main__':
  define_flags()
  app.run(main)
