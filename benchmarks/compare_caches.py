r"""Whether two embedding caches hold the same thing, bit for bit: e.g. before and after a speed change.

  python -m benchmarks.compare_caches data_cache/lfw_dlib_resnet_d09f4106856d/1.0.0 \
      /tmp/new/lfw_dlib_resnet_d09f4106856d/1.0.0

Compares image ids (order included), labels, detection flags, and the embeddings and face boxes as raw
float32 bits; prints how many rows differ and the largest difference. Exits 1 when anything differs.
"""

import sys

from absl import app
import numpy as np

from mir_jax.cache import reader


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


def main(argv):
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
