"""Face detection (MTCNN) and the FaceNet input crop.

Every backbone starts from the same `Detection`: MTCNN with facenet-pytorch's P/R/O-Net weights (they
ship inside its wheel, so detection works offline), run by `mir_jax.detectors.mtcnn_jax` (the default) or
by facenet-pytorch itself (`detector='mtcnn-torch'`). What each backbone does with the box is its own
business (FaceNet crops it with a margin, dlib fits its 5-point shape predictor inside it).

Rules, chosen to match davidsandberg/facenet's `align_dataset_mtcnn.py` (the reference pipeline
behind the FaceNet LFW numbers):

  * several faces: keep the one maximising `box_area - 2 * |box_centre - image_centre|^2`, i.e. big
    and central (LFW images are centred on the labelled person, but often show other people too);
  * no face: fall back to a centred box of LFW's typical face size (`center_box`) and mark
    `detected=False`, so the image still gets an embedding (LFW's protocol scores every pair) and
    the miss is countable. (Sandberg's script skips such images instead; the fallback is ours.)
    `AlignerConfig.fallback` chooses another policy: the whole image as the box, or a recorded skip.
    An image smaller than `min_face_size` cannot hold a face MTCNN looks for, so it goes straight to
    the fallback (MTCNN itself would fail on it with an empty scale pyramid), and an image on which
    MTCNN raises gets the fallback too, with the error as its reason, without taking its batchmates.
  * pre-cropped faces (`AlignerConfig(faces='precropped')`): no detector runs; every image is one
    face and the whole image is its box. For tight crops, where MTCNN misses most faces (it wants
    some context around a face) and the centre box would cut the face down to part of it.
  * the crop adds `margin` pixels of the *original* image (half on each side), clamps to the image
    and resizes bilinearly.

Detection is deterministic: MTCNN has no randomness, and the same images in the same batches give
bit-identical boxes. With mtcnn-torch, batch composition changes float summation order, which moves boxes
by float rounding (tested below 1e-2 px), which can tip a candidate near a threshold (BUILD.md, "Embedding
cache"); with mtcnn-jax an image's boxes do not depend on its batch.

mtcnn-torch's speed (`benchmarks/embed_speed.py`): batching same-size images beats one per call. torch's
intra-op threads hurt when the cores are shared: MTCNN runs thousands of tiny ops, and a thread pool
that loses a core to another process waits at every op. On a shared or busy machine, or beside other
worker processes, use `Aligner(num_threads=1)`. On CPU the detector's max pools are swapped for
`mir_jax.max_pool`'s, which give the same boxes and landmarks (tested bit for bit) for less CPU
(`benchmarks/max_pool_speed.py`).
"""

import dataclasses
from typing import List, Optional, Sequence, Tuple

from absl import logging
import numpy as np
from PIL import Image

from mir_jax.backbones.base import Detection

# Fallback box, as fractions (width, height) of the shorter image side: about the median size of
# MTCNN's boxes on LFW deep-funneled images, whose faces are centred, so a centred box of this size is
# where the LFW face usually is; face-centred crops from other datasets behave alike.
FALLBACK_FRACTIONS = (0.37, 0.50)

# What an image gets when no face is detected in it: a centred LFW-sized box, the whole image as the
# box, or a recorded skip (no embedding).
FALLBACKS = ('center', 'whole', 'skip')
# Where faces are: found by the detector in each image, or already cropped (the whole image is the box).
FACES = ('detect', 'precropped')
# Which MTCNN finds them: facenet-pytorch's (eager torch, image batches) or `mir_jax.detectors.mtcnn_jax`'s
# (the same nets and steps compiled with XLA, each image independent of its batchmates).
DETECTORS = ('mtcnn-torch', 'mtcnn-jax')
# The cache key's name for each: a change of detector re-detects (and re-embeds). mtcnn-jax-2: R-/O-Net in
# fixed-size calls, whose float rounding differs from -1's batch-sized pools; -3: O-Net's NMS gives an exact tie
# to the later candidate, as facenet-pytorch's ascending sort does.
_DETECTOR_KEYS = {'mtcnn-torch': 'mtcnn-facenet-pytorch-2.6', 'mtcnn-jax': 'mtcnn-jax-3'}


def center_box(image_shape: Sequence[int], fractions: Tuple[float, float] = FALLBACK_FRACTIONS) -> np.ndarray:
  """The centred box used when MTCNN finds no face.

  Args:
    image_shape: (height, width, ...) of the image.
    fractions: (width, height) of the box as fractions of min(height, width).

  Returns:
    float64 (4,) array (x1, y1, x2, y2) in pixels; 92.5 x 125 centred on (125, 125) for LFW.
  """
  h, w = float(image_shape[0]), float(image_shape[1])
  bw, bh = fractions[0] * min(h, w), fractions[1] * min(h, w)
  cx, cy = w / 2.0, h / 2.0
  return np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dtype=np.float64)


def whole_box(image_shape: Sequence[int]) -> np.ndarray:
  """The whole image as a box: float64 (4,) (0, 0, width, height)."""
  return np.array([0.0, 0.0, float(image_shape[1]), float(image_shape[0])], dtype=np.float64)


def select_face(boxes: np.ndarray, image_shape: Sequence[int]) -> int:
  """Index of the face davidsandberg/facenet keeps among several detections.

  Args:
    boxes: (k, 4) boxes (x1, y1, x2, y2), k >= 1.
    image_shape: (height, width, ...) of the image.

  Returns:
    argmax over boxes of `area - 2 * squared distance of the box centre from the image centre`.
  """
  boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
  if len(boxes) == 0:
    raise ValueError('select_face needs at least one box')
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  centre = np.array([image_shape[1] / 2.0, image_shape[0] / 2.0])
  offsets = (boxes[:, 0:2] + boxes[:, 2:4]) / 2.0 - centre
  # Squared offset weighted by 2 (Sandberg's constant): a face off to the side must be much bigger
  # than the central one to win.
  return int(np.argmax(area - 2.0 * np.sum(offsets**2, axis=1)))


def crop(image: np.ndarray, box: Sequence[float], size: int = 160, margin: int = 32) -> np.ndarray:
  """The FaceNet input crop (Sandberg's convention), uint8 (size, size, 3).

  Args:
    image: uint8 HxWx3 RGB.
    box: (x1, y1, x2, y2) in pixels of `image`.
    size: output side in pixels (160 for Inception-ResNet-v1).
    margin: pixels of the original image added around the box in total (margin/2 per side), the
      value Sandberg's README uses with 160-pixel crops.

  Returns:
    The clamped crop resized bilinearly to (size, size).
  """
  h, w = image.shape[:2]
  x1, y1, x2, y2 = [float(v) for v in box]
  # int() truncation, clamped to the image, exactly as align_dataset_mtcnn.py builds `bb`.
  left = int(max(x1 - margin / 2, 0))
  top = int(max(y1 - margin / 2, 0))
  right = int(min(x2 + margin / 2, w))
  bottom = int(min(y2 + margin / 2, h))
  if right <= left or bottom <= top:
    # A box entirely outside the image (can only come from a caller's box): use the whole image
    # rather than crash on an empty array; MTCNN boxes always overlap the image.
    left, top, right, bottom = 0, 0, w, h
  patch = Image.fromarray(np.ascontiguousarray(image[top:bottom, left:right]))
  return np.asarray(patch.resize((size, size), Image.BILINEAR), dtype=np.uint8)


def use_full_float32(torch, device) -> None:
  """Turns off TF32 in cuDNN/cuBLAS when running on a CUDA device (process-wide, as torch allows).

  cuDNN runs float32 convolutions in TF32 by default on Ampere and newer GPUs, which moves MTCNN's
  boxes by whole pixels from the CPU's (`benchmarks/accelerator_embed.py`); with TF32 off, GPU and CPU
  agree to float32 rounding. A cache must not depend on which machine built it.
  """
  if str(device).startswith('cuda'):
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def is_out_of_memory(error: BaseException) -> bool:
  """torch's out-of-memory errors are RuntimeErrors (CUDA's subclass it, the CPU allocator's say so)."""
  return type(error).__name__ == 'OutOfMemoryError' or 'out of memory' in str(error).lower()


@dataclasses.dataclass(frozen=True)
class AlignerConfig:
  """Aligner settings; MTCNN's defaults are facenet-pytorch's (and Sandberg's: 20 px, [.6, .7, .7], .709).

  Attributes:
    min_face_size: the smallest face MTCNN looks for, in pixels.
    thresholds: MTCNN's P-, R- and O-Net score thresholds, each in (0, 1].
    factor: MTCNN's scale-pyramid factor.
    fallback_fractions: the 'center' fallback box's size (see `center_box`).
    fallback: what an image without a detected face gets, one of FALLBACKS.
    faces: 'detect' (MTCNN finds the face) or 'precropped' (no detector: the whole image is the box,
      and the MTCNN settings above must stay at their defaults, since nothing reads them).
    detector: which MTCNN, one of DETECTORS.
  """

  min_face_size: int = 20
  thresholds: Tuple[float, float, float] = (0.6, 0.7, 0.7)
  factor: float = 0.709
  fallback_fractions: Tuple[float, float] = FALLBACK_FRACTIONS
  fallback: str = 'center'
  faces: str = 'detect'
  # mtcnn-jax: facenet-pytorch's nets and steps, equal to its boxes on 13,231 of 13,233 LFW images and
  # independent of batchmates (BUILD.md, "Alignment and backbones"); mtcnn-torch stays one flag away.
  detector: str = 'mtcnn-jax'

  def __post_init__(self):
    if self.detector not in DETECTORS:
      raise ValueError(f'detector must be one of {DETECTORS}, got {self.detector!r}')
    if self.fallback not in FALLBACKS:
      raise ValueError(f'fallback must be one of {FALLBACKS}, got {self.fallback!r}')
    if self.faces not in FACES:
      raise ValueError(f'faces must be one of {FACES}, got {self.faces!r}')
    if isinstance(self.min_face_size, bool) or not isinstance(self.min_face_size, int) or self.min_face_size < 1:
      raise ValueError(f'min_face_size must be a positive integer (pixels), got {self.min_face_size!r}')
    if len(self.thresholds) != 3 or not all(0.0 < float(t) <= 1.0 for t in self.thresholds):
      raise ValueError(f'thresholds must be three scores in (0, 1] (P-, R-, O-Net), got {self.thresholds!r}')
    if self.faces == 'precropped':
      unused = [
        f'{f.name}={getattr(self, f.name)!r}'
        for f in dataclasses.fields(self)
        if f.name != 'faces' and getattr(self, f.name) != f.default
      ]
      if unused:
        raise ValueError(f"faces='precropped' runs no detector, so {', '.join(unused)} would have no effect")


def config_key(config: Optional[AlignerConfig] = None) -> dict:
  """`Aligner(config).config_key()` without loading MTCNN (None = default settings).

  Thread count, device and batch size are left out: they move boxes by float rounding only. The
  default settings keep the key they had before `fallback` and `faces` existed (those enter the key
  only when they differ from their defaults), so existing caches keep their directories.
  """
  config = config or AlignerConfig()
  if config.faces == 'precropped':
    return {'detector': 'none', 'faces': 'precropped'}
  key = {
    'detector': _DETECTOR_KEYS[config.detector],
    'min_face_size': config.min_face_size,
    'thresholds': [float(t) for t in config.thresholds],
    'factor': config.factor,
    'fallback_fractions': list(config.fallback_fractions),
  }
  if config.fallback != AlignerConfig.fallback:
    key['fallback'] = config.fallback
  return key


def too_small(image_shape: Sequence[int], min_face_size: int) -> bool:
  """Whether MTCNN's scale pyramid is empty for this image (facenet-pytorch's own test, its arithmetic).

  Such an image is smaller than `min_face_size` on its shorter side: no face of the wanted size fits, and
  facenet-pytorch's `detect_face` fails on it (`torch.cat()` of an empty list).
  """
  return min(image_shape[0], image_shape[1]) * (12.0 / min_face_size) < 12


class Aligner:
  """MTCNN detector with the selection rule and fallback above (or none, for pre-cropped faces).

  Attributes:
    config: the aligner settings.
    num_fallbacks: how many images so far had no detected face (for reporting).
    num_overflowed: how many images so far filled one of mtcnn-jax's candidate capacities even after its
      retries (each is logged; always 0 with mtcnn-torch, which has none).
  """

  def __init__(
    self,
    config: Optional[AlignerConfig] = None,
    *,
    device: Optional[str] = None,
    num_threads: Optional[int] = None,
    batch_size: int = 32,
    fast_max_pool: bool = True,
  ):
    """Builds the detector.

    Args:
      config: MTCNN settings (defaults: facenet-pytorch's).
      device: torch device string; None picks 'cuda' when available, else 'cpu'.
      num_threads: if set, `torch.set_num_threads(num_threads)` (process-wide: torch has no
        per-module setting). None leaves torch's default (one thread per core).
      batch_size: images per MTCNN call in `detect_batch` (same-size images only).
      fast_max_pool: on CPU, swap MTCNN's max pools for `mir_jax.max_pool`'s faster ones (same outputs)
        (False keeps torch's, e.g. to check that the boxes agree).
    """
    self.config = config or AlignerConfig()
    self.batch_size = batch_size
    self.num_fallbacks = 0
    self.device = device
    self.num_overflowed = 0
    self._jax = None
    if num_threads is not None:
      # Process-wide and whichever detector runs (the backbone's torch shares it, and FaceNet's last bits depend
      # on the count), so that the option means the same with every detector.
      import torch  # pylint: disable=g-import-not-at-top

      torch.set_num_threads(num_threads)
    if self.config.faces == 'precropped':
      return  # no detector to load
    if self.config.detector == 'mtcnn-jax':
      # JAX picks its own device (the default backend: GPU or TPU when there is one); `device` is torch's.
      from mir_jax.detectors import mtcnn_jax  # pylint: disable=g-import-not-at-top

      self._jax = mtcnn_jax.Detector(
        min_face_size=self.config.min_face_size,
        thresholds=self.config.thresholds,
        factor=self.config.factor,
        # Each batch size compiles its own program; 8 was the fastest on LFW here (benchmarks/mtcnn_equality.py).
        batch_size=min(batch_size, 8),
      )
      return
    # torch is imported here, not at module import, so that modules that only need `crop` or the
    # selection rule (and subprocess workers) stay light.
    from facenet_pytorch import MTCNN  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top

    if device is None:
      device = 'cuda' if torch.cuda.is_available() else 'cpu'
    use_full_float32(torch, device)
    self.device = device
    self._torch = torch
    self._mtcnn = MTCNN(
      min_face_size=self.config.min_face_size,
      thresholds=list(self.config.thresholds),
      factor=self.config.factor,
      device=device,
      keep_all=True,
    )
    self._mtcnn.eval()
    if fast_max_pool and str(device) == 'cpu':
      from mir_jax import max_pool  # pylint: disable=g-import-not-at-top

      max_pool.replace_max_pools(self._mtcnn)

  def config_key(self) -> dict:
    """Settings that change the boxes (an embedding cache must key on these too)."""
    return config_key(self.config)

  def no_face(self, image_shape, reason: str) -> Detection:
    """The configured fallback for an image without a detected face."""
    self.num_fallbacks += 1
    policy = self.config.fallback
    if policy == 'center':
      box = center_box(image_shape, self.config.fallback_fractions)
    elif policy == 'whole':
      box = whole_box(image_shape)
    else:
      box = None
    return Detection(box=box, landmarks=None, detected=False, fallback=policy, reason=reason)

  def _to_detection(self, boxes, points, image_shape) -> Detection:
    if boxes is None:
      return self.no_face(image_shape, 'no face found by MTCNN')
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    points = np.asarray(points, dtype=np.float64).reshape(-1, 5, 2)
    i = select_face(boxes, image_shape) if len(boxes) > 1 else 0
    return Detection(box=boxes[i], landmarks=points[i], detected=True)

  def _detect_images(self, images: List[np.ndarray]) -> List[Detection]:
    """MTCNN on uint8 HxWx3 images (of one size for mtcnn-torch); every image gets a Detection.

    When MTCNN raises on them, each image is retried alone, so one image it cannot handle only costs that
    image its detection (it gets the fallback, the error as its reason).
    """
    out: List[Optional[Detection]] = [None] * len(images)
    todo = []
    for j, image in enumerate(images):
      if too_small(image.shape, self.config.min_face_size):
        h, w = image.shape[:2]
        out[j] = self.no_face(image.shape, f'{w}x{h} image is smaller than min_face_size={self.config.min_face_size}')
      else:
        todo.append(j)
    if not todo:
      return out
    try:
      boxes, points = self._run_detector([images[j] for j in todo])
    except (RuntimeError, ValueError, IndexError) as e:
      if is_out_of_memory(e):  # the machine's limit, not the image's fault: a fallback would key on the device
        raise
      if len(todo) == 1:
        shape = images[todo[0]].shape
        logging.warning('MTCNN failed on a %s image (%s: %s); it gets the fallback', shape, type(e).__name__, e)
        out[todo[0]] = self.no_face(shape, f'MTCNN failed: {type(e).__name__}: {e}')
        return out
      for j in todo:
        out[j] = self._detect_images([images[j]])[0]
      return out
    for j, b, p in zip(todo, boxes, points):
      out[j] = self._to_detection(b, p, images[j].shape)
    return out

  def _run_detector(self, images: List[np.ndarray]):
    """Per image, all its boxes and landmarks (or None), from the configured MTCNN."""
    if self._jax is None:
      with self._torch.inference_mode():
        boxes, _, points = self._mtcnn.detect(np.stack(images), landmarks=True)
      return boxes, points
    results = self._jax.detect(images)
    # An image still over a capacity after the detector's retries may have lost candidates: say so.
    for image, overflowed in zip(images, self._jax.overflowed):
      if overflowed:
        self.num_overflowed += 1
        logging.warning('mtcnn-jax: a %s image filled a candidate capacity; its boxes may miss faces', image.shape)
    return [r[0] for r in results], [r[2] for r in results]

  def detect(self, image: np.ndarray) -> Detection:
    """Detection for one uint8 HxWx3 RGB image."""
    return self.detect_batch([image])[0]

  def detect_batch(self, images: Sequence[np.ndarray]) -> List[Detection]:
    """Detections for many images, in order.

    Same-size images go through MTCNN together (up to `batch_size` per call): the P-Net pyramid and
    the R/O-Net stages then run as a few large tensor ops instead of many small ones. Images of
    other sizes are grouped by size (mtcnn-torch), or by size bucket inside mtcnn-jax's detector.

    Args:
      images: uint8 HxWx3 RGB arrays.

    Returns:
      One Detection per image; with faces='precropped', the whole image as the box of each.
    """
    out: List[Optional[Detection]] = [None] * len(images)
    by_shape = {}
    for i, image in enumerate(images):
      image = np.asarray(image)
      if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(f'expected uint8 HxWx3 RGB, got {image.dtype} {image.shape}')
      by_shape.setdefault(image.shape if self._jax is None else 'any size', []).append(i)
    if self.config.faces == 'precropped':
      reason = 'pre-cropped face (faces=precropped): the whole image is the box'
      return [
        Detection(box=whole_box(s), landmarks=None, detected=False, fallback='whole', reason=reason)
        for s in (np.shape(image) for image in images)
      ]
    for indices in by_shape.values():
      for start in range(0, len(indices), self.batch_size):
        chunk = indices[start : start + self.batch_size]
        for i, det in zip(chunk, self._detect_images([np.asarray(images[i]) for i in chunk])):
          out[i] = det
    return out
