r"""Whether two embedding caches hold the same thing, bit for bit: e.g. before and after a speed change.

  python -m benchmarks.compare_caches data_cache/lfw_dlib_resnet_d09f4106856d/1.0.0 \
      /tmp/new/lfw_dlib_resnet_d09f4106856d/1.0.0

Compares image ids (order included), labels, detection flags, and the embeddings and face boxes as raw
float32 bits; prints how many rows differ and the largest difference. Exits 1 when anything differs.

  python -m benchmarks.compare_caches --common_images A B

compares two backbones' caches of overlapping image lists instead (e.g. facenet-jax's `--subset=pairs`
cache against facenet-casia's whole-LFW one): on the images both hold, the largest embedding difference
where the two face boxes agree bit for bit (what the backbones compute) apart from where they do not
(MTCNN's batch dependence, BUILD.md "Embedding cache"), mirrored embeddings too when both have them.
"""

import json
import sys

from absl import app
from absl import flags
import numpy as np

from mir_jax.cache import reader

FLAGS = flags.FLAGS
flags.DEFINE_bool('common_images', False, 'Compare two backbones on the images both caches hold (see above).')
flags.DEFINE_string('out', '', 'With --common_images: also write the result as JSON here.')


def compare(a_dir: str, b_dir: str) -> dict:
  xa, la, ma = reader.load_embeddings(a_dir)
  xb, lb, mb = reader.load_embeddings(b_dir)
  if list(ma['image_ids']) != list(mb['image_ids']):
    return {'same_images': False, 'rows': [len(xa), len(xb)]}
  rows_differing = (xa.view(np.uint32) != xb.view(np.uint32)).any(axis=1)
  boxes_differing = (ma['boxes'].view(np.uint32) != mb['boxes'].view(np.uint32)).any(axis=1)
  return {
    'same_images': True,
    'rows': len(xa),
    'embedding_rows_differing': int(rows_differing.sum()),
    'max_abs_embedding_difference': float(np.abs(xa - xb).max()) if len(xa) else 0.0,
    'box_rows_differing': int(boxes_differing.sum()),
    'labels_equal': bool(np.array_equal(la, lb)),
    'detected_equal': bool(np.array_equal(ma['detected'], mb['detected'])),
  }


def compare_common(a_dir: str, b_dir: str) -> dict:
  xa, _, ma = reader.load_embeddings(a_dir)
  xb, _, mb = reader.load_embeddings(b_dir)
  where = {i: k for k, i in enumerate(mb['image_ids'])}
  a_rows = np.array([k for k, i in enumerate(ma['image_ids']) if i in where], int)
  b_rows = np.array([where[ma['image_ids'][k]] for k in a_rows], int)
  same_box = (ma['boxes'][a_rows].view(np.uint32) == mb['boxes'][b_rows].view(np.uint32)).all(axis=1)
  out = {'a': a_dir, 'b': b_dir, 'common_images': len(a_rows), 'same_box': int(same_box.sum())}
  pairs = [('embedding', xa, xb)]
  if ma['embeddings_flip'] is not None and mb['embeddings_flip'] is not None:
    pairs.append(('embedding_flip', ma['embeddings_flip'], mb['embeddings_flip']))
  for name, ea, eb in pairs:
    diff = np.abs(ea[a_rows] - eb[b_rows]).max(axis=1)
    out[f'max_abs_{name}_difference_same_box'] = float(diff[same_box].max()) if same_box.any() else None
    out[f'max_abs_{name}_difference_other_box'] = float(diff[~same_box].max()) if (~same_box).any() else None
  out['max_box_difference_px'] = float(np.abs(ma['boxes'][a_rows] - mb['boxes'][b_rows]).max())
  return out


def main(argv):
  if FLAGS.common_images:
    if len(argv) != 3:
      raise app.UsageError('usage: python -m benchmarks.compare_caches --common_images CACHE_DIR_A CACHE_DIR_B')
    result = compare_common(argv[1], argv[2])
    print(json.dumps(result, indent=1))
    if FLAGS.out:
      with open(FLAGS.out, 'w') as f:
        json.dump({'command': ' '.join(['python -m benchmarks.compare_caches', *sys.argv[1:]]), **result}, f, indent=1)
    return
  if len(argv) != 3:
    raise app.UsageError('usage: python -m benchmarks.compare_caches CACHE_DIR_A CACHE_DIR_B')
  result = compare(argv[1], argv[2])
  print(result)
  identical = (
    result['same_images']
    and not result['embedding_rows_differing']
    and not result['box_rows_differing']
    and result['labels_equal']
    and result['detected_equal']
  )
  print('identical' if identical else 'DIFFERENT')
  sys.exit(0 if identical else 1)


if __name__ == '__main__':
  app.run(main)
