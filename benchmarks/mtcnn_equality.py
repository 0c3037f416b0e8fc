r"""mtcnn-jax against facenet-pytorch's MTCNN on the same LFW images, in one run: chosen face, box and
landmark differences, and images/s of each.

  python -m benchmarks.mtcnn_equality --out=benchmarks/results/mtcnn_equality.json            # all 13,233
  python -m benchmarks.mtcnn_equality --limit=200 --out=outputs/mtcnn_equality_sample.json    # a sample

The torch side is the project's aligner (`align.Aligner`, its max pools), once per --torch_references:

  * `batch32`: the torch aligner's batches of 32 same-size images, as `mir_jax.embed --aligner=mtcnn-torch`
    runs it. An image's choice there can depend on its batchmates: facenet-pytorch's O-Net NMS
    (`nms_numpy`) sorts the whole batch's candidates with numpy's argsort, which is not stable, so an exact
    tie between two crops of one face goes to whichever that batch's sort puts last.
  * `alone`: each image detected by itself. Its boxes are its own, yet an exact tie still goes where numpy's
    sort kernel puts it, and that kernel is the CPU's (SIMD sorting networks on AVX2 and AVX-512 machines).
  * `alone_stable_sort`: each image by itself with `nms_numpy`'s argsort made stable (`stable_tie_order`),
    so an exact tie goes to the later candidate on every machine. This is facenet-pytorch's algorithm with
    its one undefined step pinned, the reading mtcnn-jax implements, and the reference its equality targets
    are judged on; what is left is the two frameworks' arithmetic. The other two are reported beside it.

The JAX side is `mir_jax.detectors.mtcnn_jax.Detector`, its compile timed apart. Both pick the face with
`align.select_face`. An image whose chosen face differs by more than --same_px, or that only one detector
finds a face in, is listed. The images are every --stride-th LFW image in sorted path order, up to --limit.
"""

import contextlib
import json
import os
import time
import types
from typing import Sequence

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
  flags.DEFINE_list('torch_references', list(REFERENCES), 'Which torch runs to compare with (module docstring).')


# name -> (the torch aligner's batch size, whether nms_numpy's sort is made stable)
REFERENCES = {'batch32': (32, False), 'alone': (1, False), 'alone_stable_sort': (1, True)}


@contextlib.contextmanager
def stable_tie_order(stable: bool = True):
  """facenet-pytorch's `detect_face` with its one numpy sort (`nms_numpy`'s `np.argsort`) stable while inside."""
  from facenet_pytorch.models.utils import detect_face  # pylint: disable=g-import-not-at-top

  if not stable:
    yield
    return
  stable_np = types.ModuleType('numpy_stable_argsort')
  stable_np.__dict__.update(vars(np))
  stable_np.argsort = lambda a, axis=-1, **_: np.argsort(a, axis=axis, kind='stable')
  detect_face.np = stable_np
  try:
    yield
  finally:
    detect_face.np = np


def _chosen(boxes, points, shape):
  if boxes is None:
    return None, None
  i = align.select_face(boxes, shape) if len(boxes) > 1 else 0
  return np.asarray(boxes[i], np.float64), np.asarray(points[i], np.float64)


def _against(files, stack, reference, jax_out, same_px: float) -> dict:
  """How mtcnn-jax's chosen faces `jax_out` compare with torch's Detections `reference`."""
  box_d, mark_d, differ = [], [], []
  for f, image, det, (boxes, _, points) in zip(files, stack, reference, jax_out):
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

  def spread(values):
    return {'max': max(values, default=0.0), 'p99.9': float(np.percentile(values, 99.9)) if values else 0.0}

  return {
    'same_face': len(box_d),
    'same_face_fraction': (len(files) - len(differ)) / len(files),
    'differ': differ,
    'box_px': spread(box_d),
    'landmark_px': spread(mark_d),
  }


def compare(root, files, batch_size: int, same_px: float, references: Sequence[str] = tuple(REFERENCES)) -> dict:
  """Both detectors on the LFW images `files` (paths under `root`): the summary that main() writes, with one
  entry of `against` per torch reference (`REFERENCES`)."""
  stack = np.stack([images.load_rgb(root / f) for f in files])  # LFW: all 250 x 250

  detector = mtcnn_jax.Detector(batch_size=batch_size)
  start = time.perf_counter()
  detector.detect(stack[:batch_size])
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  jax_out = detector.detect(stack)
  jax_s = time.perf_counter() - start

  against = {}
  for name in references:
    torch_batch, stable = REFERENCES[name]
    aligner = align.Aligner(align.AlignerConfig(detector='mtcnn-torch'), batch_size=torch_batch)
    with stable_tie_order(stable):
      aligner.detect_batch(list(stack[:torch_batch]))  # warm-up, untimed as mtcnn-jax's compile is
      start = time.perf_counter()
      reference = aligner.detect_batch(list(stack))
      torch_s = time.perf_counter() - start
    against[name] = {
      **_against(files, stack, reference, jax_out, same_px),
      'torch_images_per_s': len(files) / torch_s,
      'jax_over_torch': torch_s / jax_s,
    }
  return {
    'images': len(files),
    'jax_images_per_s': len(files) / jax_s,
    'jax_compile_s': compile_s,
    'jax_overflowed': int(sum(detector.overflowed)),
    'jax_retried': detector.num_retried,
    'against': against,
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
  unknown = set(FLAGS.torch_references) - set(REFERENCES)
  if unknown:
    raise app.UsageError(f'--torch_references: {sorted(unknown)} are not among {list(REFERENCES)}')
  root, files = lfw_files(FLAGS.stride, FLAGS.limit)
  result = {
    'command': 'python -m benchmarks.mtcnn_equality ' + ' '.join(f'--{k}={v}' for k, v in _flags().items()),
    'machine': machine.basic_info(),
    **compare(root, files, FLAGS.batch_size, FLAGS.same_px, FLAGS.torch_references),
  }
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  with open(FLAGS.out, 'w') as fh:
    json.dump(result, fh, indent=2)
  brief = {**result, 'against': {k: {**v, 'differ': len(v['differ'])} for k, v in result['against'].items()}}
  print(json.dumps(brief, indent=2))


def _flags():
  values = {k: FLAGS[k].value for k in ('limit', 'stride', 'batch_size', 'same_px')}
  return {**values, 'torch_references': ','.join(FLAGS.torch_references)}


if __name__ == '__main__':
  define_flags()
  app.run(main)
