r"""mtcnn-jax against facenet-pytorch's MTCNN on the same LFW images, in one run: chosen face, box and
landmark differences, and images/s of each.

  python -m benchmarks.mtcnn_equality --out=benchmarks/results/mtcnn_equality.json            # all 13,233
  python -m benchmarks.mtcnn_equality --limit=200 --out=outputs/mtcnn_equality_sample.json    # a sample

The torch side is the project's aligner (`align.Aligner`: batches of 32 same-size images, its max pools);
the JAX side is `mir_jax.detectors.mtcnn_jax.Detector`, its compile timed apart. Both pick the face with
`align.select_face`. An image whose chosen face differs by more than --same_px, or that only one detector
finds a face in, is listed. The images are every --stride-th LFW image in sorted path order, up to --limit.
"""

import json
import os
import time

from absl import app
from absl import flags
import numpy as np

from benchmarks import machine
from mir_jax import align
from mir_jax import images
from mir_jax import paths
from mir_jax.detectors import mtcnn_jax

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('out', 'benchmarks/results/mtcnn_equality.json', 'Where to write the JSON.')
  flags.DEFINE_integer('limit', 0, 'At most this many images (0: all).')
  flags.DEFINE_integer('stride', 1, 'Every stride-th image in sorted order.')
  flags.DEFINE_integer('batch_size', 8, "mtcnn-jax's batch size.")
  flags.DEFINE_float('same_px', 1.0, 'A chosen box within this many pixels (every coordinate) is the same face.')


def _chosen(boxes, points, shape):
  if boxes is None:
    return None, None
  i = align.select_face(boxes, shape) if len(boxes) > 1 else 0
  return np.asarray(boxes[i], np.float64), np.asarray(points[i], np.float64)


def compare(root, files, batch_size: int, same_px: float) -> dict:
  """Both detectors on the LFW images `files` (paths under `root`): the summary that main() writes."""
  stack = np.stack([images.load_rgb(root / f) for f in files])  # LFW: all 250 x 250

  aligner = align.Aligner()
  start = time.perf_counter()
  torch_dets = aligner.detect_batch(list(stack))
  torch_s = time.perf_counter() - start

  detector = mtcnn_jax.Detector(batch_size=batch_size)
  start = time.perf_counter()
  detector.detect(stack[:batch_size])
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  jax_out = detector.detect(stack)
  jax_s = time.perf_counter() - start

  box_d, mark_d, differ = [], [], []
  for f, image, det, (boxes, _, points) in zip(files, stack, torch_dets, jax_out):
    box, marks = _chosen(boxes, points, image.shape)
    if not det.detected or box is None:
      if det.detected != (box is not None):
        differ.append({'image': f, 'reason': f'face found by {"torch" if det.detected else "jax"} only'})
      continue
    d = float(np.abs(box - det.box).max())
    if d > same_px:
      differ.append({'image': f, 'reason': f'another face chosen ({d:.1f} px apart)'})
      continue
    box_d.append(d)
    mark_d.append(float(np.abs(marks - det.landmarks).max()))
  return {
    'images': len(files),
    'same_face': len(box_d),
    'same_face_fraction': (len(files) - len(differ)) / len(files),
    'differ': differ,
    'jax_overflowed': int(sum(detector.overflowed)),
    'jax_retried': detector.num_retried,
    'box_px': {'max': max(box_d, default=0.0), 'p99.9': float(np.percentile(box_d, 99.9)) if box_d else 0.0},
    'landmark_px': {'max': max(mark_d, default=0.0), 'p99.9': float(np.percentile(mark_d, 99.9)) if mark_d else 0.0},
    'torch_images_per_s': len(files) / torch_s,
    'jax_images_per_s': len(files) / jax_s,
    'jax_compile_s': compile_s,
    'jax_over_torch': torch_s / jax_s,
  }


def lfw_files(stride: int, limit: int):
  """(the LFW folder, every `stride`-th image path under it in sorted order, up to `limit`; 0 = all)."""
  shared = paths.shared_data_dir()
  if shared is None or not (shared / 'lfw' / 'lfw-deepfunneled').is_dir():
    raise app.UsageError(f'LFW is not under {paths.shared_data_location()} (set $MIR_SHARED_DATA)')
  root = shared / 'lfw' / 'lfw-deepfunneled'
  files = sorted(str(p.relative_to(root)) for p in root.glob('*/*.jpg'))[::stride]
  return root, files[:limit] if limit else files


def main(argv) -> None:
  del argv
  root, files = lfw_files(FLAGS.stride, FLAGS.limit)
  result = {
    'command': 'python -m benchmarks.mtcnn_equality ' + ' '.join(f'--{k}={v}' for k, v in _flags().items()),
    'machine': machine.basic_info(),
    **compare(root, files, FLAGS.batch_size, FLAGS.same_px),
  }
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  with open(FLAGS.out, 'w') as fh:
    json.dump(result, fh, indent=2)
  print(json.dumps({k: v for k, v in result.items() if k != 'differ'}, indent=2))


def _flags():
  return {k: FLAGS[k].value for k in ('limit', 'stride', 'batch_size', 'same_px')}


if __name__ == '__main__':
  define_flags()
  app.run(main)
