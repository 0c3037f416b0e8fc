r"""What a user with pre-cropped faces sees: each aligner option on a tight-crop set made from LFW.

  python -m benchmarks.precropped --out=benchmarks/results/precropped.json

Builds a pre-cropped face set from the first --num_identities LFW identities (by name) with at least
--images_per_identity images, the first --images_per_identity images of each: every image is cut to the
central part of its MTCNN box (--shrink of the box's width and height cut off each side, so the crop runs
from the brows to the lower lip, as tight crops of other datasets do), resized to --crop_size, and, with
--lighting=hard, turned gray and lit hard from one side (alternating sides: a dark half face, a gamma of
1.8). Images in which MTCNN finds no face in the original are left out (counted).

Then, as a user would, for each aligner option: `python -m mir_jax.embed --dataset=folder` on that folder
(the default backbone), how many images were detected, got which fallback box or were skipped, and the
identity accuracy `python -m mir_jax.train` (experiments/configs/default.py, --schedules, --num_seeds) reaches
on the cache. The same identities' original LFW images, embedded with the defaults, are the reference row.
A row whose cache keeps no identity with the protocol's 10 images (the 'skip' policy on a set MTCNN
mostly misses) records the train command's error, and is trained again with
--config.data.min_images_per_identity=2 so that it has a number.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from benchmarks import machine
from mir_jax import paths

FLAGS = flags.FLAGS

# (row name, the aligner options that differ from the defaults); each becomes `--<option>=<value>` flags.
POLICIES = (
  ('center (default)', {}),
  ('whole', {'fallback': 'whole'}),
  ('skip', {'fallback': 'skip'}),
  ('precropped', {'faces': 'precropped'}),
)


def define_flags() -> None:
  flags.DEFINE_string('out', 'outputs/precropped.json', 'Where to write the JSON.')
  flags.DEFINE_integer('num_identities', 10, 'LFW identities in the set.')
  flags.DEFINE_integer('images_per_identity', 20, 'Images per identity (identities with fewer are passed over).')
  flags.DEFINE_float('shrink', 0.12, "Fraction of the MTCNN box's width and height cut off each side.")
  flags.DEFINE_list('crop_size', ['96', '112'], 'Width, height of each crop in pixels.')
  flags.DEFINE_enum('lighting', 'hard', ['hard', 'none'], 'Lighting change applied to each crop.')
  flags.DEFINE_string('schedules', 'joint,single', 'mir_jax.train schedules.')
  flags.DEFINE_integer('num_seeds', 3, 'mir_jax.train seeds (each its own stratified split).')
  flags.DEFINE_string('keep', None, 'Build everything under this directory and keep it (default: a temporary one).')


def hard_light(crop: np.ndarray, side: int) -> np.ndarray:
  """Gray, a gamma of 1.8 and a light ramp from 5% on one side to 140% on the other (`side` 0: dark left)."""
  gray = crop.astype(np.float32).mean(axis=2, keepdims=True) / 255.0
  ramp = np.linspace(0.05, 1.4, crop.shape[1], dtype=np.float32)[None, :, None]
  if side:
    ramp = ramp[:, ::-1]
  lit = np.clip(gray**1.8 * ramp * 1.3, 0.0, 1.0)
  return np.repeat(np.round(lit * 255).astype(np.uint8), 3, axis=2)


def build_set(root: pathlib.Path, originals: pathlib.Path) -> dict:
  """Writes the pre-cropped set under `root` and links the same originals under `originals`."""
  from mir_jax import align  # pylint: disable=g-import-not-at-top
  from mir_jax import images  # pylint: disable=g-import-not-at-top
  from mir_jax.cache import selection  # pylint: disable=g-import-not-at-top

  records, _, _ = selection.select_records(
    'lfw', selection.default_manual_dir('lfw'), subset=f'min_images{FLAGS.images_per_identity}'
  )
  names = sorted({r.identity for r in records})[: FLAGS.num_identities]
  chosen = [
    r
    for n in names
    for r in sorted((x for x in records if x.identity == n), key=lambda x: x.image_id)[: FLAGS.images_per_identity]
  ]
  aligner = align.Aligner(align.AlignerConfig(detector='mtcnn-torch'), num_threads=1)
  width, height = (int(v) for v in FLAGS.crop_size)
  written, no_face = 0, []
  for i, r in enumerate(chosen):
    image = images.load_rgb(r.path)
    det = aligner.detect(image)
    if not det.detected:
      no_face.append(r.image_id)
      continue
    x1, y1, x2, y2 = det.box
    dx, dy = FLAGS.shrink * (x2 - x1), FLAGS.shrink * (y2 - y1)
    left, top = int(max(x1 + dx, 0)), int(max(y1 + dy, 0))
    right, bottom = int(min(x2 - dx, image.shape[1])), int(min(y2 - dy, image.shape[0]))
    crop = np.asarray(Image.fromarray(image[top:bottom, left:right]).resize((width, height), Image.BILINEAR))
    if FLAGS.lighting == 'hard':
      crop = hard_light(crop, i % 2)
    (root / r.identity).mkdir(parents=True, exist_ok=True)
    (originals / r.identity).mkdir(parents=True, exist_ok=True)
    stem = os.path.basename(r.image_id)
    Image.fromarray(crop).save(root / r.identity / f'{stem}.jpg', quality=95)
    os.symlink(r.path, originals / r.identity / f'{stem}.jpg')
    written += 1
  return {
    'identities': names,
    'images_chosen': len(chosen),
    'images_written': written,
    'left_out_no_face_in_original': no_face,
  }


def _run(command: list) -> tuple:
  started = time.time()
  proc = subprocess.run(command, capture_output=True, text=True, cwd=paths.repo_root())
  return proc, time.time() - started


def embed_and_train(manual_dir: pathlib.Path, data_dir: pathlib.Path, workdir: pathlib.Path, options: dict) -> dict:
  """One row: embed `manual_dir` with these aligner options, then train on the cache."""
  from mir_jax.cache import lookup  # pylint: disable=g-import-not-at-top
  from mir_jax.cache import reader  # pylint: disable=g-import-not-at-top

  align_flags = [f'--{k}={v}' for k, v in options.items()]
  embed = [sys.executable, '-m', 'mir_jax.embed', '--dataset=folder', f'--manual_dir={manual_dir}']
  embed += [f'--data_dir={data_dir}', '--num_workers=0', *align_flags]
  proc, seconds = _run(embed)
  if proc.returncode != 0:
    raise RuntimeError(f'{" ".join(embed)} failed:\n{proc.stderr[-3000:]}')
  directory = lookup.find_cache(
    'folder', 'dlib-resnet', data_dir=data_dir, manual_dir=manual_dir, align_options=options
  )
  info = reader.read_info(directory)
  row = {
    'embed_command': ' '.join(['python', *embed[1:]]),
    'embed_seconds': round(seconds, 1),
    'num_records': info['num_records'],
    'alignment': info['alignment'],
    'fallback_reasons': sorted({b['reason'] for b in info['skipped']['fallback_boxes']}),
  }
  row['train'] = train(directory, workdir)
  if 'error' in row['train']:
    row['train_min_images_2'] = train(directory, workdir.with_name(workdir.name + '_min2'), min_images=2)
  return row


def train(directory: pathlib.Path, workdir: pathlib.Path, min_images: int = 0) -> dict:
  command = [
    sys.executable,
    '-m',
    'mir_jax.train',
    '--config=experiments/configs/default.py',
    f'--config.data.source={directory}',
    f'--config.train.schedules={FLAGS.schedules}',
    f'--config.train.num_seeds={FLAGS.num_seeds}',
    f'--workdir={workdir}',
  ]
  if min_images:
    command.append(f'--config.data.min_images_per_identity={min_images}')
  proc, seconds = _run(command)
  out = {'command': ' '.join(['python', *command[1:]]), 'seconds': round(seconds, 1)}
  if proc.returncode != 0:
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    out['error'] = lines[-1] if lines else f'exit status {proc.returncode}'
    return out
  metrics = json.loads((workdir / 'metrics.json').read_text())
  out.update(
    num_identities=metrics['num_classes'],
    num_train=metrics['num_train'],
    num_test=metrics['num_test'],
    test_accuracy={
      s: {'mean': round(v['test_accuracy_mean'], 4), 'std': round(v['test_accuracy_std'], 4)}
      for s, v in metrics['summary'].items()
    },
  )
  return out


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  started = time.time()
  base = pathlib.Path(FLAGS.keep or tempfile.mkdtemp(prefix='precropped_'))
  try:
    crops, originals = base / 'precropped', base / 'originals'
    built = build_set(crops, originals)
    print(f'{built["images_written"]} crops of {len(built["identities"])} identities in {crops}', flush=True)
    rows = {}
    rows['original LFW images, defaults (reference)'] = embed_and_train(
      originals, base / 'cache', base / 'train_originals', {}
    )
    for name, options in POLICIES:
      rows[name] = embed_and_train(crops, base / 'cache', base / f'train_{name.split()[0]}', options)
      print(name, json.dumps(rows[name]['alignment']), json.dumps(rows[name]['train'].get('test_accuracy')), flush=True)
    result = {
      'command': ' '.join(['python -m benchmarks.precropped', *(a for a in sys.argv[1:] if not a.startswith('--out'))]),
      'set': {
        **built,
        'shrink': FLAGS.shrink,
        'crop_size': [int(v) for v in FLAGS.crop_size],
        'lighting': FLAGS.lighting,
      },
      'rows': rows,
      'seconds': round(time.time() - started, 1),
      'machine': machine.basic_info(),
    }
  finally:
    if not FLAGS.keep:
      shutil.rmtree(base, ignore_errors=True)
  pathlib.Path(FLAGS.out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(FLAGS.out).write_text(json.dumps(result, indent=1) + '\n')
  print(f'wrote {FLAGS.out}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
