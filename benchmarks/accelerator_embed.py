r"""Alignment and FaceNet embedding on an accelerator (or CPU): images/s, and agreement with the CPU.

  python -m benchmarks.accelerator_embed --image_dir=../shared/data/lfw/lfw-deepfunneled --num_images=256 \
      --out=outputs/accelerator_embed.json

FaceNet's released weights are not on every machine (nor on this project's test machines); the network
is run with random weights saved to a file and loaded through the `weights=` path, which measures
throughput and checks the device path, not accuracy. MTCNN's weights ship in facenet-pytorch.
"""

import json
import os
import pathlib
import platform
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from benchmarks import machine
from mir_jax import align
from mir_jax import backbones
from mir_jax import images
from mir_jax import paths

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('out', 'outputs/accelerator_embed.json', 'Where to write the JSON.')
  flags.DEFINE_string('image_dir', None, 'Folder-per-identity images (default: shared LFW).')
  flags.DEFINE_integer('num_images', 256, 'Images to time on.')
  flags.DEFINE_integer('batch_size', 64, 'Images per MTCNN / FaceNet call.')


def _files(n):
  root = FLAGS.image_dir or (paths.shared_data_dir() and paths.shared_data_dir() / 'lfw' / 'lfw-deepfunneled')
  if not root or not pathlib.Path(root).is_dir():
    raise app.UsageError(f'no image folder: pass --image_dir (looked for {root})')
  files = sorted(p for p in pathlib.Path(root).rglob('*') if images.is_image_file(p))[:n]
  if not files:
    raise app.UsageError(f'no images under {root}')
  return files


def _timed(fn, sync):
  fn()  # warm-up: CUDA context, cuDNN autotuning
  sync()
  start = time.perf_counter()
  out = fn()
  sync()
  return out, time.perf_counter() - start


def main(argv):
  del argv
  from facenet_pytorch import InceptionResnetV1  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  files = _files(FLAGS.num_images)
  imgs = [images.load_rgb(f) for f in files]
  devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
  report = {
    'machine': {
      'platform': platform.platform(),
      'torch': torch.__version__,
      'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
      'cpus': os.cpu_count(),
    },
    'num_images': len(imgs),
    'batch_size': FLAGS.batch_size,
    'devices': {},
  }
  with tempfile.TemporaryDirectory() as tmp:
    weights = os.path.join(tmp, 'random_facenet.pt')
    torch.manual_seed(0)
    torch.save(InceptionResnetV1(pretrained=None, classify=False).state_dict(), weights)
    embeddings, boxes = {}, {}
    for device in devices:
      sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
      aligner = align.Aligner(align.AlignerConfig(detector='mtcnn-torch'), device=device, batch_size=FLAGS.batch_size)
      dets, t_detect = _timed(lambda a=aligner: a.detect_batch(imgs), sync)
      net = backbones.get_backbone('facenet-vggface2', weights=weights, device=device, batch_size=FLAGS.batch_size)
      inputs = [net.preprocess(im, d) for im, d in zip(imgs, dets)]
      emb, t_embed = _timed(lambda n=net, x=inputs: n.embed(x), sync)
      embeddings[device], boxes[device] = emb, np.stack([d.box for d in dets])
      report['devices'][device] = {
        'mtcnn_images_per_s': len(imgs) / t_detect,
        'facenet_images_per_s': len(imgs) / t_embed,
        'detection_fallbacks': int(sum(not d.detected for d in dets)),
      }
      print(
        f'{device}: MTCNN {len(imgs) / t_detect:.1f} img/s, FaceNet (random weights) {len(imgs) / t_embed:.1f} img/s',
        flush=True,
      )
  if 'cuda' in embeddings:
    report['cuda_vs_cpu'] = {
      'max_abs_box_diff_px': float(np.abs(boxes['cuda'] - boxes['cpu']).max()),
      'max_abs_embedding_diff': float(np.abs(embeddings['cuda'] - embeddings['cpu']).max()),
      'speedup_mtcnn': report['devices']['cuda']['mtcnn_images_per_s'] / report['devices']['cpu']['mtcnn_images_per_s'],
      'speedup_facenet': report['devices']['cuda']['facenet_images_per_s']
      / report['devices']['cpu']['facenet_images_per_s'],
    }
    print('cuda vs cpu:', json.dumps(report['cuda_vs_cpu']))
  machine.write_json(FLAGS.out, report)


if __name__ == '__main__':
  define_flags()
  app.run(main)
