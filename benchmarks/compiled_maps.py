r"""Memory regions (lines of /proc/self/maps) that each compiled training program holds, on Linux.

  python -m benchmarks.compiled_maps --out=outputs/compiled_maps.json

Trains the joint head on synthetic embeddings shaped like LFW's identities with >= 10 images at
--programs distinct budgets (each budget is its own compiled program, as in tuning), with
`engine.MAX_COMPILED_PROGRAMS` lifted so that nothing is dropped, counting the process's maps after each;
then drops the programs and counts again. The slope (the median increment after the first program,
which also maps one-time code) is what `engine.MAX_COMPILED_PROGRAMS` is sized against: the kernel's per-process limit is
/proc/sys/vm/max_map_count (65,530 by default).
"""

import gc
import json

from absl import app
from absl import flags
import jax
import numpy as np

from benchmarks import machine
from mir_jax import embedding_sets
from mir_jax import engine
from mir_jax import splits

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('out', 'outputs/compiled_maps.json', 'Where to write the JSON.')
  flags.DEFINE_integer('programs', 8, 'Distinct budgets (compiled programs) to train.')


def _maps() -> int:
  with open('/proc/self/maps') as f:
    return sum(1 for _ in f)


def main(argv):
  del argv
  ds = embedding_sets.synthetic_identities(158, per_class=27, dim=128, seed=0)
  x, labels = ds.x, ds.labels
  train_idx = np.stack([splits.stratified_split(labels, 0.5, s)[0] for s in range(2)])
  runs = [engine.Run(schedule='joint', seed=s, learning_rate=1e-2) for s in range(2)]
  engine_limit = engine.MAX_COMPILED_PROGRAMS
  engine.MAX_COMPILED_PROGRAMS = FLAGS.programs + 1
  counts = [_maps()]
  for i in range(FLAGS.programs):
    steps = 10 + i
    opts = engine.StaticOptions(num_classes=int(labels.max()) + 1, steps=steps, log_every=steps)
    jax.block_until_ready(engine.train(x, labels, opts, runs, train_idx))
    counts.append(_maps())
    print(f'{i + 1} programs: {counts[-1]} maps')
  engine._train_compiled.clear_cache()  # pylint: disable=protected-access
  gc.collect()
  dropped = _maps()
  per_program = float(np.median(np.diff(counts[1:]))) if len(counts) > 2 else float(counts[1] - counts[0])
  with open('/proc/sys/vm/max_map_count') as f:
    limit = int(f.read())
  result = {
    **machine.basic_info(),
    'devices': [str(d) for d in jax.local_devices()],
    'maps_after_each_program': counts,
    'maps_after_dropping_them': dropped,
    'maps_per_program_median': per_program,
    'max_map_count': limit,
    'programs_to_reach_the_limit': int((limit - counts[0]) / per_program),
    'engine_max_compiled_programs': engine_limit,
  }
  print(json.dumps(result, indent=1))
  machine.write_json(FLAGS.out, result)


if __name__ == '__main__':
  define_flags()
  app.run(main)
