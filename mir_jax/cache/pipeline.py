"""The per-image work of a cache build: decode, detect, preprocess and, for one-core backbones, embed.

It runs in the worker processes (`workers`) or, without workers, in the building process; either way the
same `RecordEmbedder` does it, so both give the same cache.
"""

import dataclasses
from typing import Any, Callable, List, Optional, Sequence

import numpy as np

from mir_jax import align
from mir_jax.backbones.base import Detection
from mir_jax.cache import detections
from mir_jax.datasets.records import FaceRecord


@dataclasses.dataclass(frozen=True)
class Pipeline:
  """The per-image work, as picklable factories so that worker processes can build their own copies.

  Attributes:
    backbone_factory: () -> Backbone; called once per process.
    aligner_factory: () -> an object with `detect_batch(images) -> [Detection]` and `config_key()`.
    load_fn: path -> uint8 HxWx3 RGB, raising `ImageError` (a ValueError) for bad files.
    flip: also prepare the mirrored face for a second embedding.
    detections_dir: where detections are stored and read back (`detections.store_dir`); None detects
      every image.
  """

  backbone_factory: Callable[[], Any]
  aligner_factory: Callable[[], Any]
  load_fn: Optional[Callable[[str], np.ndarray]] = None
  flip: bool = False
  detections_dir: Optional[str] = None


@dataclasses.dataclass
class Prepared:
  """One record after decoding, detection and backbone preprocessing.

  Exactly one of these holds for each: `error` is set (the file could not be decoded or preprocessed: a
  bad image), `skipped` is set (no face detected and the fallback policy is 'skip'), or it has inputs (or
  an embedding) and `path` says how its box was found ('detected', 'center', 'whole'), `reason` why no
  detector box when it was not detected.
  """

  image_id: str
  inputs: Optional[np.ndarray] = None
  flipped: Optional[np.ndarray] = None
  detected: bool = False
  box: Optional[np.ndarray] = None
  error: Optional[str] = None
  skipped: Optional[str] = None
  path: str = ''
  reason: str = ''
  # Its detection was read from the detection store (`detections`), not computed by this run.
  detection_reused: bool = False
  # Set (and inputs dropped) when the worker embedded the record itself (`Backbone.embed_in_workers`).
  embedding: Optional[np.ndarray] = None
  embedding_flip: Optional[np.ndarray] = None


def mirror_detection(detection: Detection, width: int) -> Detection:
  """The same detection in the horizontally mirrored image.

  MTCNN's five landmarks are (left eye, right eye, nose, left mouth corner, right mouth corner) as seen in
  the image; mirroring swaps the sides, so the pairs are swapped back to keep that order.
  """
  x1, y1, x2, y2 = np.asarray(detection.box, np.float64)
  box = np.array([width - x2, y1, width - x1, y2])
  landmarks = None
  if detection.landmarks is not None:
    lm = np.asarray(detection.landmarks, np.float64).copy()
    lm[:, 0] = width - lm[:, 0]
    landmarks = lm[[1, 0, 2, 4, 3]]
  return dataclasses.replace(detection, box=box, landmarks=landmarks)


class RecordEmbedder:
  """Decodes, detects and preprocesses records, and embeds them too when asked; one per process.

  With `embed=True` and a backbone whose `embed_in_workers` is set (dlib's one-core C++ network), each
  returned `Prepared` holds its embedding instead of its network input; otherwise the caller embeds the
  inputs in large batches.
  """

  def __init__(self, pipeline: Pipeline, backbone=None, aligner=None, embed: bool = False):
    self.pipeline = pipeline
    self.backbone = backbone if backbone is not None else pipeline.backbone_factory()
    self.embed = embed and getattr(self.backbone, 'embed_in_workers', False)
    self.aligner = aligner if aligner is not None else pipeline.aligner_factory()
    if pipeline.load_fn is None:
      from mir_jax import images  # pylint: disable=g-import-not-at-top

      self.load_fn = images.load_rgb
    else:
      self.load_fn = pipeline.load_fn
    self.store = detections.DetectionStore(pipeline.detections_dir) if pipeline.detections_dir else None

  def _detect(self, records: Sequence[FaceRecord], images: List[np.ndarray]):
    """(detections, reused): the stored detections of this call when there are some, else the aligner's."""
    entry = self.store.entry(self.aligner, records) if self.store is not None else None
    if entry is not None:
      stored = self.store.load(entry, len(images))
      if stored is not None:
        return stored, True
    found = self.aligner.detect_batch(images)
    if entry is not None:
      self.store.save(entry, found)
    return found, False

  def __call__(self, records: Sequence[FaceRecord]) -> List[Prepared]:
    out = [Prepared(r.image_id) for r in records]
    loaded, where = [], []
    for i, r in enumerate(records):
      try:
        loaded.append(self.load_fn(r.path))
        where.append(i)
      except ValueError as e:  # ImageError: a bad file is recorded and skipped, never fatal
        out[i].error = str(e) or type(e).__name__
    found, reused = self._detect([records[i] for i in where], loaded) if loaded else ([], False)
    prepared = []
    for i, image, det in zip(where, loaded, found):
      p = out[i]
      p.detected, p.path, p.reason = bool(det.detected), det.path, det.reason
      p.detection_reused = reused
      if p.path == 'skip':
        p.skipped = det.reason or 'no face detected'
        continue
      p.box = np.asarray(det.box, np.float32).reshape(4)
      try:
        p.inputs = self.backbone.preprocess(image, det)
        if self.pipeline.flip:
          flip_input = getattr(self.backbone, 'flip_input', None)
          if flip_input is not None:
            p.flipped = flip_input(p.inputs)
          else:
            mirrored = np.ascontiguousarray(image[:, ::-1])
            p.flipped = self.backbone.preprocess(mirrored, mirror_detection(det, image.shape[1]))
      except (RuntimeError, ValueError) as e:  # one image the backbone cannot cut is recorded, not fatal
        if align.is_out_of_memory(e):
          raise
        p.inputs = p.flipped = None
        p.error = (
          f'{type(self.backbone).__name__} could not preprocess this {image.shape[1]}x{image.shape[0]} image: {e}'
        )
        continue
      prepared.append(i)
    where = prepared
    if self.embed and where:
      done = [out[i] for i in where]
      for p, e in zip(done, embed_all(self.backbone, [p.inputs for p in done], len(done))):
        p.embedding, p.inputs = e, None
      if self.pipeline.flip:
        for p, e in zip(done, embed_all(self.backbone, [p.flipped for p in done], len(done))):
          p.embedding_flip, p.flipped = e, None
    return out


def embed_all(backbone, inputs: List[np.ndarray], batch_size: int) -> np.ndarray:
  """float32 (len(inputs), dim): `backbone.embed` over `inputs`, `batch_size` at a time."""
  if not inputs:
    return np.zeros((0, int(backbone.dim)), np.float32)
  out = [np.asarray(backbone.embed(inputs[i : i + batch_size]), np.float32) for i in range(0, len(inputs), batch_size)]
  x = np.concatenate(out)
  if x.shape[0] != len(inputs):
    raise RuntimeError(f'backbone returned {x.shape[0]} embeddings for {len(inputs)} inputs')
  return x
