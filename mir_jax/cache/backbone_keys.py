"""A backbone's `config_key()` from its name and options, without building the network or loading weights.

Finding a cache needs only its key, and building a backbone to ask it would load its weights (and, for
FaceNet, import torch). Each function here states what that backbone class's `config_key()` returns for
the same constructor arguments, taking the defaults from the class's own signature; the weights files are
fingerprinted, never loaded. tests/backbone_keys_test.py holds each one to the built backbone's key, and
`lookup.prepare`, which builds the backbone anyway, refuses to embed when the two disagree.
"""

import inspect
import os
import pathlib
from typing import Any, Callable, Dict, Optional

from mir_jax import backbones


def _arguments(name: str, weights, options: Dict[str, Any]) -> Dict[str, Any]:
  """The constructor arguments `backbones.get_backbone(name, weights, **options)` passes, defaults filled.

  Raises:
    KeyError: unknown backbone name.
    TypeError: an option the backbone does not take (as building it would).
  """
  cls, fixed = _class_of(name)
  bound = inspect.signature(cls).bind(weights=weights, **fixed, **options)
  bound.apply_defaults()
  return dict(bound.arguments)


def _class_of(name: str):
  import importlib  # pylint: disable=g-import-not-at-top
  if name not in backbones.backbone_names():
    raise KeyError(f'unknown backbone {name!r}; known: {backbones.backbone_names()}')
  module_name, class_name, fixed = backbones._REGISTRY[name]  # pylint: disable=protected-access
  module = importlib.import_module(f'{backbones.__name__}.{module_name}')
  return getattr(module, class_name), fixed


def _dlib_chip_key(shape_predictor, padding, landmark_box) -> Dict[str, Any]:
  """The key entries saying how a dlib backbone cuts its chips (shape predictor, chip size, padding)."""
  from mir_jax.backbones import dlib_resnet  # pylint: disable=g-import-not-at-top
  if landmark_box not in dlib_resnet.LANDMARK_BOXES:
    raise ValueError(f'landmark_box must be one of {dlib_resnet.LANDMARK_BOXES}, got {landmark_box!r}')
  path = pathlib.Path(shape_predictor) if shape_predictor else (dlib_resnet.models_dir()
                                                                / dlib_resnet.SHAPE_PREDICTOR_FILE)
  _require_file(path)
  key = {
      'shape_predictor': backbones.file_fingerprint(path),
      'chip_size': dlib_resnet.CHIP_SIZE,
      'padding': float(padding),
  }
  if landmark_box != 'mtcnn':  # absent for the default, as in the backbone's own key
    key['landmark_box'] = landmark_box
  return key


def _require_file(path: pathlib.Path) -> None:
  if not path.is_file():
    raise FileNotFoundError(f'dlib-resnet: missing model file {path}')


def _dlib_resnet(args: Dict[str, Any]) -> Dict[str, Any]:
  from mir_jax.backbones import dlib_resnet  # pylint: disable=g-import-not-at-top
  if args['num_jitters'] < 0:
    raise ValueError(f'num_jitters must be >= 0, got {args["num_jitters"]}')
  weights = (pathlib.Path(args['weights']) if args['weights']
             else dlib_resnet.models_dir() / dlib_resnet.RECOGNITION_FILE)
  _require_file(weights)
  # dlib counts 0 and 1 jitters alike, and so does the backbone's key.
  num_jitters = args['num_jitters'] if args['num_jitters'] > 1 else 0
  key = {
      'backbone': dlib_resnet.DlibResNet.name,
      'dim': dlib_resnet.DlibResNet.dim,
      'weights': backbones.file_fingerprint(weights),
      **_dlib_chip_key(args['shape_predictor'], args['padding'], args['landmark_box']),
      'num_jitters': num_jitters,
      'flip': bool(args['flip']),
  }
  if num_jitters > 1:
    key['jitter'] = {'recipe': dlib_resnet.JITTER_RECIPE, 'seed': int(args['jitter_seed'])}
  return key


def _dlib_resnet_jax(args: Dict[str, Any]) -> Dict[str, Any]:
  from mir_jax.backbones import dlib_resnet_jax  # pylint: disable=g-import-not-at-top
  dtype = args['dtype']
  if dtype not in dlib_resnet_jax.DTYPES:
    raise ValueError(f'dtype must be one of {sorted(dlib_resnet_jax.DTYPES)}, got {dtype!r}')
  weights = pathlib.Path(args['weights']) if args['weights'] else dlib_resnet_jax.default_weights()
  key = {
      'backbone': dlib_resnet_jax.DlibResNetJax.name,
      'dim': dlib_resnet_jax.DIM,
      'weights': backbones.file_fingerprint(weights),
      **_dlib_chip_key(args['shape_predictor'], args['padding'], args['landmark_box']),
      'dtype': dtype,
  }
  if dtype != 'float32':
    dot_stages = args['dot_stages']
    if dot_stages is None:
      dot_stages = (1, 2, 3, 4) if dtype == 'bfloat16' else ()
    key['dot_stages'] = sorted(int(s) for s in dot_stages)
  return key


def _facenet(args: Dict[str, Any]) -> Dict[str, Any]:
  from mir_jax.backbones import facenet  # pylint: disable=g-import-not-at-top
  variant = args['variant']
  if variant not in facenet.VARIANTS:
    variant = facenet.NAME_TO_VARIANT.get(variant, variant)
  weights = facenet.find_weights(variant, args['weights'])
  return {
      'backbone': facenet.VARIANTS[variant][0],
      'dim': facenet.FaceNet.dim,
      'weights': backbones.file_fingerprint(weights),
      'image_size': int(args['image_size']),
      'margin': int(args['margin']),
      'standardization': 'fixed:(x-127.5)/128',
      'resize': 'bilinear',
      'flip': bool(args['flip']),
  }


_KEYS: Dict[str, Callable[[Dict[str, Any]], Dict[str, Any]]] = {
    'dlib-resnet': _dlib_resnet,
    'dlib-resnet-jax': _dlib_resnet_jax,
    'facenet-vggface2': _facenet,
    'facenet-casia': _facenet,
}


def backbone_config_key(name: str, weights: Optional[os.PathLike] = None, **options) -> Dict[str, Any]:
  """`backbones.get_backbone(name, weights, **options).config_key()`, without building the backbone.

  A backbone registered without an entry here is built and asked, so the key is right either way.

  Raises:
    KeyError: unknown backbone name.
    TypeError: an option the backbone does not take.
    FileNotFoundError: its weights are missing (facenet: `facenet.WeightsNotFoundError`).
  """
  args = _arguments(name, weights, options)
  if name not in _KEYS:
    return backbones.get_backbone(name, weights, **options).config_key()
  return _KEYS[name](args)
