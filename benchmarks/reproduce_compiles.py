r"""How much of `reproduce.all` on the tests' synthetic set (the session fixture `synthetic_run`, CI's slowest) is
compiling: its seconds, its training calls, and the XLA compiles and compile seconds of the whole run.

  python -m benchmarks.reproduce_compiles --out=benchmarks/results/reproduce_compiles.json

Its budgets are 20-160 steps on a few hundred embeddings, so training itself takes milliseconds and the
run's time is that of tracing and compiling programs. JAX's monitoring events give the compile seconds
(`/jax/core/compile/backend_compile_duration`, XLA's part, and the jaxpr-to-MLIR lowering); the training
calls are counted at `engine._train_sharded`, with whether each one compiled.
"""

import json
import os
import pathlib
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax

from benchmarks import machine
from mir_jax import engine
from mir_jax import paths

FLAGS = flags.FLAGS

_EVENTS = ('/jax/core/compile/backend_compile_duration', '/jax/core/compile/jaxpr_to_mlir_module_duration')


def define_flags() -> None:
  flags.DEFINE_string('out', 'benchmarks/results/reproduce_compiles.json', 'Where to write the JSON.')


def measure() -> dict:
  """Runs the synthetic `reproduce.all` once in this process and returns what it compiled."""
  sys.path.insert(0, os.path.join(paths.repo_root(), 'tests'))
  import reproduce_test  # pylint: disable=g-import-not-at-top  (the tests' synthetic set and tiny config)

  from reproduce import all as all_command  # pylint: disable=g-import-not-at-top
  from reproduce import cli  # pylint: disable=g-import-not-at-top

  durations = {e: [] for e in _EVENTS}

  def listen(event, seconds, **kwargs):
    del kwargs
    if event in durations:
      durations[event].append(seconds)

  jax.monitoring.register_event_duration_secs_listener(listen)
  calls = []
  train_sharded = engine._train_sharded  # pylint: disable=protected-access

  def counted(x, labels, train_idx, eval_idx, runs, opts, program):
    before = engine._train_compiled._cache_size()  # pylint: disable=protected-access
    start = time.perf_counter()
    out = jax.block_until_ready(train_sharded(x, labels, train_idx, eval_idx, runs, opts, program))
    compiled = engine._train_compiled._cache_size() != before  # pylint: disable=protected-access
    calls.append({'seconds': time.perf_counter() - start, 'compiled': compiled, 'runs': len(runs)})
    return out

  engine._train_sharded = counted  # pylint: disable=protected-access
  try:
    tmp = pathlib.Path(tempfile.mkdtemp())
    ctx = reproduce_test.synthetic_context(reproduce_test.tiny_config(tmp), output_dir=str(tmp / 'out'))
    start = time.perf_counter()
    cli.run('all', lambda c: (all_command.run(c), [])[1], ctx)
    total = time.perf_counter() - start
  finally:
    engine._train_sharded = train_sharded  # pylint: disable=protected-access
  return {
    'total_s': total,
    'training_calls': len(calls),
    'training_calls_that_compiled': sum(c['compiled'] for c in calls),
    'training_s': sum(c['seconds'] for c in calls),
    'training_s_in_calls_that_did_not_compile': sum(c['seconds'] for c in calls if not c['compiled']),
    'xla_compiles': len(durations[_EVENTS[0]]),
    'xla_compile_s': sum(durations[_EVENTS[0]]),
    'lowering_s': sum(durations[_EVENTS[1]]),
  }


def main(argv) -> None:
  del argv
  result = {
    'command': 'python -m benchmarks.reproduce_compiles',
    'machine': {**machine.basic_info(), 'jax': jax.__version__, 'devices': len(jax.devices())},
    **measure(),
  }
  print(json.dumps(result, indent=2))
  machine.write_json(FLAGS.out, result)


if __name__ == '__main__':
  define_flags()
  app.run(main)
