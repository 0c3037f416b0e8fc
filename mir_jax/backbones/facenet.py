"""FaceNet (Inception-ResNet-v1, 512-D) from facenet-pytorch, VGGFace2 or CASIA-WebFace weights.

These are David Sandberg's TensorFlow models (20180402-114759 on VGGFace2, 20180408-102900 on
CASIA-WebFace) converted to PyTorch by facenet-pytorch. `InceptionResnetV1(pretrained=...)`
downloads the weights from GitHub when it is constructed and raises URLError offline, so we build
the network with `pretrained=None` and load the state dict ourselves from, in order:

  1. `weights=PATH` given explicitly;
  2. the file facenet-pytorch caches downloads in: `$TORCH_HOME/checkpoints/<file>` (TORCH_HOME
     defaults to `$XDG_CACHE_HOME/torch`, i.e. `~/.cache/torch`), so a machine that ever ran
     facenet-pytorch online already has them.
Neither present -> `WeightsNotFoundError` naming the expected path and the download URL; we never
download.

Input: `mir_jax.align.crop` (160x160, 32 px margin, Sandberg's convention) standardised as
facenet-pytorch's `fixed_image_standardization`, (x - 127.5) / 128.
"""

import os
import pathlib
from typing import Optional, Sequence

import numpy as np

from mir_jax import align
from mir_jax import backbones
from mir_jax.backbones import base

# variant -> (backbone name, file name, URL), as in facenet_pytorch/models/inception_resnet_v1.py
# (`load_weights`), facenet-pytorch 2.6.0.
_RELEASE = 'https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/'
VARIANTS = {
  'vggface2': ('facenet-vggface2', '20180402-114759-vggface2.pt'),
  'casia-webface': ('facenet-casia', '20180408-102900-casia-webface.pt'),
}
NAME_TO_VARIANT = {name: variant for variant, (name, _) in VARIANTS.items()}


class WeightsNotFoundError(FileNotFoundError):
  """Pretrained FaceNet weights are not on this machine (and we do not download them)."""


def torch_home() -> pathlib.Path:
  """facenet-pytorch's cache root: $TORCH_HOME, else $XDG_CACHE_HOME/torch, else ~/.cache/torch.

  Same rule as `facenet_pytorch.models.inception_resnet_v1.get_torch_home`, restated here so that
  finding the weights does not import torch.
  """
  default = os.path.join(os.getenv('XDG_CACHE_HOME', '~/.cache'), 'torch')
  return pathlib.Path(os.path.expanduser(os.getenv('TORCH_HOME', default)))


def weights_url(variant: str) -> str:
  return _RELEASE + VARIANTS[variant][1]


def cached_weights_path(variant: str) -> pathlib.Path:
  """Where facenet-pytorch caches (and we look for) the weights of `variant`."""
  return torch_home() / 'checkpoints' / VARIANTS[variant][1]


def find_weights(variant: str, weights: Optional[os.PathLike] = None) -> pathlib.Path:
  """The weights file to load.

  Args:
    variant: 'vggface2' or 'casia-webface'.
    weights: explicit path; when given it must exist.

  Returns:
    Path of an existing file.

  Raises:
    WeightsNotFoundError: with the path looked at and how to get the file.
  """
  if variant not in VARIANTS:
    raise ValueError(f'unknown FaceNet variant {variant!r}; known: {sorted(VARIANTS)}')
  if weights is not None:
    path = pathlib.Path(weights).expanduser()
    if not path.is_file():
      raise WeightsNotFoundError(f'FaceNet weights file {path} does not exist.')
    return path
  path = cached_weights_path(variant)
  if not path.is_file():
    raise WeightsNotFoundError(
      f'FaceNet ({variant}) weights not found at {path}. This suite does not download them: '
      f'fetch {weights_url(variant)} on a machine with internet access and put it at that path '
      f'(or set TORCH_HOME, or pass weights=PATH). Offline, use the dlib-resnet backbone.'
    )
  return path


def _variant(variant: str) -> str:
  """A variant, also given by its registry name."""
  return variant if variant in VARIANTS else NAME_TO_VARIANT.get(variant, variant)


def has_local_weights(variant: str) -> bool:
  """True when `find_weights(variant)` would succeed without an explicit path."""
  return cached_weights_path(variant).is_file()


def standardize(crops: np.ndarray) -> np.ndarray:
  """uint8 (..., 160, 160, 3) -> float32 (..., 3, 160, 160), standardised as (x - 127.5) / 128.

  Same as facenet-pytorch's `fixed_image_standardization`, which the released weights expect.
  """
  x = (np.asarray(crops, np.float32) - 127.5) / 128.0
  return np.moveaxis(x, -1, -3)


class FaceNet(base.Backbone):
  """facenet-pytorch Inception-ResNet-v1, 512-D embeddings."""

  dim = 512

  def __init__(
    self,
    variant: str = 'vggface2',
    weights: Optional[os.PathLike] = None,
    *,
    device: Optional[str] = None,
    batch_size: int = 64,
    image_size: int = 160,
    margin: int = 32,
    flip: bool = False,
    num_threads: Optional[int] = None,
  ):
    """Builds the network and loads its weights (never downloads).

    Args:
      variant: 'vggface2' (name facenet-vggface2) or 'casia-webface' (name facenet-casia).
      weights: explicit state-dict file; default: facenet-pytorch's cache file (module docstring).
      device: torch device; None = 'cuda' when available, else 'cpu'.
      batch_size: images per forward pass in `embed`.
      image_size: crop side (160 for these weights).
      margin: crop margin in pixels of the original image (align.crop).
      flip: add the embedding of the mirrored crop before normalising (an option of Sandberg's
        LFW evaluation); costs 2x.
      num_threads: if set, torch.set_num_threads (process-wide).

    Raises:
      WeightsNotFoundError: no weights file (see `find_weights`).
    """
    variant = _variant(variant)
    self.variant = variant
    self.weights_path = find_weights(variant, weights)
    self.name = VARIANTS[variant][0]
    # Heavy imports deferred so the registry (and dlib workers) can import this module cheaply.
    from facenet_pytorch import InceptionResnetV1  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top

    self._torch = torch
    if num_threads is not None:
      torch.set_num_threads(num_threads)
    self.device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    align.use_full_float32(torch, self.device.type)
    self.batch_size = int(batch_size)
    self.image_size = int(image_size)
    self.margin = int(margin)
    self.flip = bool(flip)
    model = InceptionResnetV1(pretrained=None, classify=False)
    state = torch.load(self.weights_path, map_location='cpu', weights_only=True)
    if isinstance(state, dict) and 'state_dict' in state:
      state = state['state_dict']
    # The released files carry the training classifier (logits.*, 8631 or 10575 classes), which an
    # embedding model built with classify=False does not have; everything else must match exactly.
    state = {k: v for k, v in state.items() if not k.startswith('logits.')}
    model.load_state_dict(state, strict=True)
    self.model = model.eval().to(self.device)

  @classmethod
  def key_from_arguments(cls, *, variant, weights, image_size, margin, flip, **unused) -> dict:
    del unused  # device, batch_size, num_threads: where and how fast it runs, not what it computes
    variant = _variant(variant)
    weights = find_weights(variant, weights)
    return {
      'backbone': VARIANTS[variant][0],
      'dim': cls.dim,
      'weights': backbones.file_fingerprint(weights),
      'image_size': int(image_size),
      'margin': int(margin),
      'standardization': 'fixed:(x-127.5)/128',
      'resize': 'bilinear',
      'flip': bool(flip),
    }

  def config_key(self) -> dict:
    return self.key_from_arguments(
      variant=self.variant, weights=self.weights_path, image_size=self.image_size, margin=self.margin, flip=self.flip
    )

  def preprocess(self, image: np.ndarray, detection: base.Detection) -> np.ndarray:
    """uint8 HxWx3 RGB + detection -> float32 (3, 160, 160) standardised crop."""
    return standardize(align.crop(image, detection.box, size=self.image_size, margin=self.margin))

  def embed(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
    """float32 (n, 3, 160, 160) inputs -> float32 (n, 512), rows L2-normalised."""
    torch = self._torch
    x_all = np.asarray(inputs, dtype=np.float32)
    if x_all.ndim != 4 or x_all.shape[1:] != (3, self.image_size, self.image_size):
      raise ValueError(f'{self.name} expects (n, 3, {self.image_size}, {self.image_size}) inputs, got {x_all.shape}')
    out = []
    with torch.inference_mode():
      for start in range(0, len(x_all), self.batch_size):
        x = torch.from_numpy(x_all[start : start + self.batch_size]).to(self.device)
        emb = self.model(x)  # Already L2-normalised by InceptionResnetV1 (classify=False).
        if self.flip:
          emb = emb + self.model(torch.flip(x, dims=[3]))
        out.append(emb.float().cpu().numpy())
    if not out:
      return np.zeros((0, self.dim), np.float32)
    emb = np.concatenate(out).astype(np.float32)
    # Renormalise in float32 here: after `flip` the sum is not unit-length, and it keeps the
    # promise independent of the network's own normalisation.
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
