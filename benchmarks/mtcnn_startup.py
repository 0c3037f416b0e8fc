r"""What a fresh process pays before mtcnn-jax detects at speed, with JAX's persistent compilation cache cold
and warm: what each worker of a cache build (and each pool that replaces them) pays.

  python -m benchmarks.mtcnn_startup --out=benchmarks/results/mtcnn_startup.json

Each row is its own subprocess, so that nothing is compiled before it starts; the cache directory is a new
temporary one, used cold by the first run and warm by the second, as `mir_jax.compilation_cache.enable()`
uses `$JAX_COMPILATION_CACHE_DIR`. A subprocess times, in order: an eager Flax init of the three nets (the
way their weight shapes were found before `jax.eval_shape`, which compiles each op), loading the weights
(`mtcnn_nets.load`), the detector's first batch of --batch_size LFW images (compiling its programs), and
then the first --num_images LFW images in sorted order, whose images detected again with larger capacities
compile those programs too (`retried`).
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

from benchmarks import machine
from benchmarks import mtcnn_equality

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('out', 'benchmarks/results/mtcnn_startup.json', 'Where to write the JSON.')
  flags.DEFINE_integer('num_images', 1600, 'LFW images detected after the first batch.')
  flags.DEFINE_integer('batch_size', 8, "mtcnn-jax's batch size.")
  flags.DEFINE_bool('in_subprocess', False, 'Time this process and print the JSON (internal).')


def _timed(fn):
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def time_startup(num_images: int, batch_size: int) -> dict:
  from mir_jax import compilation_cache  # pylint: disable=g-import-not-at-top

  compilation_cache.enable()
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from mir_jax import images  # pylint: disable=g-import-not-at-top
  from mir_jax.detectors import mtcnn_jax  # pylint: disable=g-import-not-at-top
  from mir_jax.detectors import mtcnn_nets  # pylint: disable=g-import-not-at-top

  root, files = mtcnn_equality.lfw_files(1, num_images)
  stack = [images.load_rgb(root / f) for f in files]
  out = {
    'eager_flax_init_s': _timed(
      lambda: [
        net().init(jax.random.PRNGKey(0), jnp.zeros((1, mtcnn_nets.INPUT_SIZES[name], mtcnn_nets.INPUT_SIZES[name], 3)))
        for name, net in mtcnn_nets.NETS.items()
      ]
    ),
    'weights_load_s': _timed(mtcnn_nets.load),
  }
  detector = mtcnn_jax.Detector(batch_size=batch_size)
  out['first_batch_s'] = _timed(lambda: detector.detect(stack[:batch_size]))
  out['images'] = len(stack)
  out['all_images_s'] = _timed(lambda: detector.detect(stack))
  out['retried'] = detector.num_retried
  out['images_per_s'] = len(stack) / out['all_images_s']
  return out


def main(argv) -> None:
  del argv
  if FLAGS.in_subprocess:
    print(json.dumps(time_startup(FLAGS.num_images, FLAGS.batch_size)))
    return
  result = {'command': ' '.join(['python -m benchmarks.mtcnn_startup', *sys.argv[1:]]), 'machine': machine.basic_info()}
  with tempfile.TemporaryDirectory() as cache:
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache)
    cmd = [sys.executable, '-m', 'benchmarks.mtcnn_startup', '--in_subprocess']
    cmd += [f'--num_images={FLAGS.num_images}', f'--batch_size={FLAGS.batch_size}']
    for row in ('cold_cache', 'warm_cache'):
      proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
      result[row] = json.loads(proc.stdout.strip().splitlines()[-1])
      print(row, json.dumps(result[row]), flush=True)
  machine.write_json(FLAGS.out, result)


if __name__ == '__main__':
  define_flags()
  app.run(main)
