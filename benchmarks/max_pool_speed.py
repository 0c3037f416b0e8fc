r"""MTCNN with torch's max pooling against `mir_jax.max_pool`'s, on real LFW images, and whether boxes agree.

  python -m benchmarks.max_pool_speed --out=benchmarks/results/max_pool_speed.json --num_images=320

Detects faces in --num_images LFW images (every k-th file of the sorted list) the way a cache worker
does: one torch thread, MTCNN batches of 16. Two aligners, `Aligner(fast_max_pool=False)` (torch's
pools) and `Aligner(fast_max_pool=True)`, run alternately --repeats times in this one process, so the
machine's noise hits both alike; the report gives CPU seconds per image (median over repeats) and the
ratio. It also counts the images whose boxes and landmarks are bit-identical between the two (all of
them, or the swap is wrong), and times each pool layer shape MTCNN meets on LFW in isolation.
"""

import os
import statistics
import sys
import time

from absl import app
from absl import flags
import numpy as np

from benchmarks import machine

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('out', 'outputs/max_pool_speed.json', 'Where to write the JSON.')
  flags.DEFINE_integer('num_images', 320, 'LFW images to detect faces in.')
  flags.DEFINE_integer('repeats', 3, 'Alternating runs of each variant.')


# (input shape, kernel) of MTCNN's pools on 250x250 LFW images in batches of 16: P-Net's first two
# pyramid levels, then R-Net and O-Net on typical numbers of candidate boxes.
_LAYER_SHAPES = [
  ((16, 10, 148, 148), 2),
  ((16, 10, 105, 105), 2),
  ((500, 28, 22, 22), 3),
  ((500, 48, 9, 9), 3),
  ((100, 32, 46, 46), 3),
  ((100, 64, 21, 21), 3),
  ((100, 64, 8, 8), 2),
]


def _lfw_images(n):
  from mir_jax import images  # pylint: disable=g-import-not-at-top
  from mir_jax.cache import selection  # pylint: disable=g-import-not-at-top

  records, _, _ = selection.select_records('lfw', selection.default_manual_dir('lfw'))
  records = sorted(records, key=lambda r: r.image_id)
  step = max(1, len(records) // n)
  return [images.load_rgb(r.path) for r in records[::step][:n]]


def _same(a, b) -> bool:
  if a.detected != b.detected or not np.array_equal(a.box, b.box):
    return False
  return (a.landmarks is None) == (b.landmarks is None) and (
    a.landmarks is None or np.array_equal(a.landmarks, b.landmarks)
  )


def _layer_times(torch):
  from mir_jax import max_pool  # pylint: disable=g-import-not-at-top

  rows = []
  for shape, kernel in _LAYER_SHAPES:
    x = torch.randn(*shape)
    ms = {}
    for name, fn in (
      ('torch', lambda x=x, kernel=kernel: torch.nn.functional.max_pool2d(x, kernel, 2, ceil_mode=True)),
      ('mir_jax', lambda x=x, kernel=kernel: max_pool.max_pool2d(x, kernel, 2, True)),
    ):
      fn()
      times = []
      for _ in range(7):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
      ms[name] = 1e3 * statistics.median(times)
    rows.append(
      {
        'shape': list(shape),
        'kernel': kernel,
        'torch_ms': ms['torch'],
        'mir_jax_ms': ms['mir_jax'],
        'speedup': ms['torch'] / ms['mir_jax'],
      }
    )
  return rows


def main(argv):
  del argv
  import torch  # pylint: disable=g-import-not-at-top

  from mir_jax import align  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(1)
  load_before = list(os.getloadavg())
  ims = _lfw_images(FLAGS.num_images)
  aligners = {
    'torch': align.Aligner(
      align.AlignerConfig(detector='mtcnn-torch'), num_threads=1, batch_size=16, fast_max_pool=False
    ),
    'mir_jax': align.Aligner(
      align.AlignerConfig(detector='mtcnn-torch'), num_threads=1, batch_size=16, fast_max_pool=True
    ),
  }
  cpu = {name: [] for name in aligners}
  detections = {}
  for _ in range(FLAGS.repeats):
    for name, aligner in aligners.items():
      start = time.process_time()
      detections[name] = aligner.detect_batch(ims)
      cpu[name].append((time.process_time() - start) / len(ims))
  per_image = {name: statistics.median(v) for name, v in cpu.items()}
  identical = sum(_same(a, b) for a, b in zip(detections['torch'], detections['mir_jax']))
  result = {
    'command': ' '.join(sys.argv),
    'machine': machine.basic_info(),
    'torch': torch.__version__,
    'load_before': load_before,
    'load_after': list(os.getloadavg()),
    'images': len(ims),
    'cpu_ms_per_image': {k: 1e3 * v for k, v in per_image.items()},
    'runs_cpu_ms_per_image': {k: [1e3 * x for x in v] for k, v in cpu.items()},
    'speedup': per_image['torch'] / per_image['mir_jax'],
    'identical_detections': identical,
    'layers': _layer_times(torch),
  }
  machine.write_json(FLAGS.out, result)
  print(
    f'MTCNN CPU ms/image: torch pools {1e3 * per_image["torch"]:.1f}, mir_jax pools '
    f'{1e3 * per_image["mir_jax"]:.1f} ({result["speedup"]:.2f}x); identical detections {identical} of '
    f'{len(ims)}'
  )


if __name__ == '__main__':
  define_flags()
  app.run(main)
