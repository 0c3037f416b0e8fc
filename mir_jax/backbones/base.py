"""The interface every face-embedding backbone implements."""

import abc
import dataclasses
from typing import Optional, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Detection:
  """What the aligner found in one image.

  Attributes:
    box: (x1, y1, x2, y2) in pixels of the original image, float.
    landmarks: (5, 2) MTCNN landmarks (eyes, nose, mouth corners), or None.
    detected: False when the detector gave no box and `box` is a fallback.
    fallback: when not detected, which box stands in (`mir_jax.align.FALLBACKS`): 'center' (a centred
      LFW-sized box), 'whole' (the whole image) or 'skip' (none: the image is left out, `box` is None);
      '' reads as 'center', the only fallback earlier aligners had.
    reason: why the detector gave no box, in words (for the cache's records of fallbacks and skips).
  """

  box: Optional[np.ndarray]
  landmarks: Optional[np.ndarray]
  detected: bool
  fallback: str = ''
  reason: str = ''

  @property
  def path(self) -> str:
    """How the box was found: 'detected', or the fallback's name."""
    return 'detected' if self.detected else (self.fallback or 'center')


class Backbone(abc.ABC):
  """Maps RGB images plus their detections to L2-normalised embeddings.

  `preprocess` turns one image into the network input (the backbone's own alignment: a 160x160 MTCNN
  crop for FaceNet, a dlib 5-point face chip for dlib); `embed` runs a batch of those inputs.
  """

  name: str
  dim: int
  # True for a backbone that runs on one CPU core per call (dlib's C++ network): the cache builder's
  # worker processes then embed as well as detect, so every core runs the network. False for backbones
  # that use every core themselves (XLA, torch) or an accelerator: they embed large batches in the main
  # process while the workers detect.
  embed_in_workers: bool = False

  @abc.abstractmethod
  def preprocess(self, image: np.ndarray, detection: Detection) -> np.ndarray:
    """uint8 HxWx3 RGB image -> one network input (backbone-specific array)."""

  @abc.abstractmethod
  def embed(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
    """A batch of `preprocess` outputs -> float32 (n, dim), each row L2-normalised."""

  def config_key(self) -> dict:
    """Everything that changes the embeddings (the cache keys shards on it)."""
    return {'backbone': self.name, 'dim': self.dim}

  @classmethod
  def key_from_arguments(cls, **arguments) -> dict:
    """The `config_key()` of `cls(**arguments)`, the constructor's arguments with its defaults filled in.

    Finding a cache needs only its key, and building a backbone loads its network. A backbone overrides
    this to compute the key without building anything (and has its `config_key()` call it, so the key is
    written once); this default builds it, which is right, only slow.
    """
    return cls(**arguments).config_key()
