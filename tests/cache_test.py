"""Tests for the embedding cache: keying, layout, reading with tfds and grain, and crash-safe resumption.

A fake backbone and aligner stand in for the real networks so these run in seconds; the end-to-end test
with the real dlib backbone on LFW images is tests/embed_test.py.
"""

import collections
import dataclasses
import functools
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image
import pytest

from mir_jax.backbones.base import Detection
from mir_jax.cache import detections
from mir_jax.cache import key
from mir_jax.cache import pipeline as pipeline_lib
from mir_jax.cache import reader
from mir_jax.cache import workers
from mir_jax.cache import writer
from mir_jax.datasets.records import FaceRecord

_DIM = 8


class FakeBackbone:
  """Embeds the first `_DIM` pixel values of the image; optionally slow, optionally logging each call."""

  name = 'fake'
  dim = _DIM

  def __init__(self, delay: float = 0.0, log: str = ''):
    self.delay = delay
    self.log = log

  def config_key(self):
    return {'backbone': self.name, 'dim': self.dim}

  def preprocess(self, image, detection):
    # The detection flag enters the input so that a lost or mixed-up flag changes the embedding.
    x = image.reshape(-1)[:_DIM].astype(np.float32) + 1.0
    return x * (1.0 if detection.detected else -1.0)

  def embed(self, inputs):
    if self.log:
      with open(self.log, 'a') as f:
        f.write(f'{os.getpid()} {len(inputs)}\n')
    time.sleep(self.delay * len(inputs))
    x = np.stack(inputs).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class FakeAligner:
  """'Detects' a face in images whose top-left pixel is even; the others get the fallback."""

  def config_key(self):
    return {'detector': 'fake'}

  def detect_batch(self, images):
    out = []
    for im in images:
      h, w = im.shape[:2]
      out.append(
        Detection(
          box=np.array([w * 0.25, h * 0.25, w * 0.75, h * 0.75]),
          landmarks=np.array([[3.0, 3.0], [5.0, 3.0], [4.0, 4.0], [3.0, 6.0], [5.0, 6.0]]),
          detected=bool(im[0, 0, 0] % 2 == 0),
        )
      )
    return out


def make_images(root: pathlib.Path, identities=('carol', 'alice', 'bob', 'dave'), per_identity=5, bad=True):
  """Writes small PNGs (lossless, so pixel values are exact) plus one empty and one garbage file."""
  rng = np.random.default_rng(0)
  records = []
  for name in identities:
    (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(1, per_identity + 1):
      path = root / name / f'{name}_{i:04d}.png'
      Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(path)
      records.append(FaceRecord(str(path), name, f'{name}/{name}_{i:04d}'))
  if bad:
    empty = root / 'alice' / 'alice_0099.png'
    empty.write_bytes(b'')
    junk = root / 'bob' / 'bob_0099.png'
    junk.write_bytes(b'this is not a png')
    records += [FaceRecord(str(empty), 'alice', 'alice/alice_0099'), FaceRecord(str(junk), 'bob', 'bob/bob_0099')]
  return records


def make_spec(**overrides):
  kw = dict(
    dataset='toy',
    reader_options={'subset': None},
    backbone_config=FakeBackbone().config_key(),
    align_config=FakeAligner().config_key(),
    flip=False,
  )
  kw.update(overrides)
  return key.CacheSpec(**kw)


def build(records, data_dir, *, flip=False, delay=0.0, log='', **kw):
  pipeline = pipeline_lib.Pipeline(
    backbone_factory=lambda: FakeBackbone(delay, log), aligner_factory=FakeAligner, flip=flip
  )
  kw.setdefault('num_workers', 0)
  kw.setdefault('chunk_size', 4)
  return writer.build(records, make_spec(flip=flip), pipeline, data_dir=data_dir, progress=False, **kw)


def expected_embedding(path, detected=None):
  im = np.asarray(Image.open(path).convert('RGB'))
  x = im.reshape(-1)[:_DIM].astype(np.float32) + 1.0
  if detected is None:
    detected = im[0, 0, 0] % 2 == 0
  x = x * (1.0 if detected else -1.0)
  return x / np.linalg.norm(x)


def test_key_depends_on_every_input():
  base = make_spec()
  assert make_spec().name() == base.name()
  variants = [
    make_spec(dataset='other'),
    make_spec(reader_options={'subset': 'pairs_fold0'}),
    make_spec(backbone_config={'backbone': 'fake', 'dim': _DIM, 'num_jitters': 10}),
    make_spec(align_config={'detector': 'fake', 'min_face_size': 40}),
    make_spec(flip=True),
  ]
  names = {v.name() for v in variants}
  assert base.name() not in names and len(names) == len(variants)
  assert base.name().startswith('toy_fake_')
  # Key order in a config does not matter; values do.
  assert make_spec(reader_options={'a': 1, 'b': 2}).key() == make_spec(reader_options={'b': 2, 'a': 1}).key()


def test_build_and_load_roundtrip(tmp_path):
  records = make_images(tmp_path / 'img')
  result = build(records, tmp_path / 'cache')
  d = result.directory
  assert d == tmp_path / 'cache' / make_spec().name() / key.VERSION
  # 22 records in chunks of 4: six shards named the way TFDS expects.
  shards = sorted(p.name for p in d.glob('*.array_record-*'))
  assert shards == [f'{make_spec().name()}-full.array_record-{i:05d}-of-00006' for i in range(6)]
  assert result.chunks_computed == 6 and result.chunks_reused == 0

  x, labels, meta = reader.load_embeddings(d)
  good = sorted((r for r in records if not r.image_id.endswith('99')), key=lambda r: r.image_id)
  assert meta['image_ids'] == [r.image_id for r in good]  # each image exactly once, in image-id order
  assert x.dtype == np.float32 and x.shape == (20, _DIM)
  for row, r in zip(x, good):
    np.testing.assert_allclose(row, expected_embedding(r.path), rtol=1e-6)
  # Labels index the sorted identity names (including identities whose only images were bad).
  assert meta['names'] == ['alice', 'bob', 'carol', 'dave']
  assert [meta['names'][lab] for lab in labels] == meta['identities']
  assert meta['video_ids'] == [None] * 20 and meta['roles'] == [None] * 20
  assert meta['embeddings_flip'] is None
  np.testing.assert_array_equal(meta['boxes'], np.tile([1.5, 1.5, 4.5, 4.5], (20, 1)))

  info = meta['info']
  assert info['num_records'] == 22 and info['num_embedded'] == 20 and info['num_bad_images'] == 2
  bad = {b['image_id']: b for b in info['skipped']['bad_images']}
  assert set(bad) == {'alice/alice_0099', 'bob/bob_0099'}
  assert bad['alice/alice_0099']['path'].endswith('alice_0099.png')
  assert 'empty' in bad['alice/alice_0099']['reason']
  assert 'not a recognised image' in bad['bob/bob_0099']['reason']
  fallbacks = [i for i, det in zip(meta['image_ids'], meta['detected']) if not det]
  assert info['skipped']['detection_fallbacks'] == fallbacks
  assert info['num_detection_fallbacks'] == len(fallbacks) > 0
  assert info['spec']['backbone_config'] == {'backbone': 'fake', 'dim': _DIM}
  assert info['spec']['align_config'] == {'detector': 'fake'}

  # The TFDS metadata carries the same record of how the cache was made.
  import tensorflow_datasets as tfds

  builder = tfds.builder_from_directory(os.fspath(d))
  assert builder.info.splits['full'].num_examples == 20
  assert 'key ' + make_spec().key() in builder.info.description
  assert builder.info.metadata['mir']['num_bad_images'] == 2

  # A second build finds the complete cache and does nothing.
  again = build(records, tmp_path / 'cache', log=os.fspath(tmp_path / 'log'))
  assert again.chunks_computed == 0 and not (tmp_path / 'log').exists()
  # Lookup by key and by name under the data dir.
  assert reader.resolve(make_spec().key(), tmp_path / 'cache') == d
  assert reader.resolve(make_spec().name(), tmp_path / 'cache') == d


def test_grain_reads_the_cache(tmp_path):
  import grain

  records = make_images(tmp_path / 'img', bad=False)
  d = build(records, tmp_path / 'cache').directory
  ds = grain.MapDataset.source(reader.data_source(d)).map(
    lambda ex: (ex['image_id'].decode(), ex['embedding'], ex['label'])
  )
  rows = list(ds)
  assert [r[0] for r in rows] == sorted(r.image_id for r in records)
  x, labels, _ = reader.load_embeddings(d)
  np.testing.assert_array_equal(np.stack([r[1] for r in rows]), x)
  assert [int(r[2]) for r in rows] == labels.tolist()
  # Batched the usual grain way.
  batches = list(grain.MapDataset.source(reader.data_source(d)).batch(8))
  assert batches[0]['embedding'].shape == (8, _DIM)


def test_flip_embeddings_are_stored(tmp_path):
  records = make_images(tmp_path / 'img', bad=False)
  d = build(records, tmp_path / 'cache', flip=True).directory
  assert d.parent.name == make_spec(flip=True).name()
  x, _, meta = reader.load_embeddings(d)
  xf = meta['embeddings_flip']
  assert xf.shape == x.shape
  # The fake embeds the first pixels, which mirroring changes.
  assert not np.allclose(xf, x)
  r = sorted(records, key=lambda r: r.image_id)[0]
  mirrored = np.asarray(Image.open(r.path).convert('RGB'))[:, ::-1]
  np.testing.assert_allclose(xf[0], expected_embedding_from_array(mirrored, meta['detected'][0]), rtol=1e-6)


def expected_embedding_from_array(im, detected):
  x = im.reshape(-1)[:_DIM].astype(np.float32) + 1.0
  x = x * (1.0 if detected else -1.0)
  return x / np.linalg.norm(x)


def test_mirror_detection():
  det = Detection(
    box=np.array([10.0, 20.0, 50.0, 80.0]),
    landmarks=np.array([[20.0, 40.0], [40.0, 40.0], [30.0, 55.0], [22.0, 70.0], [38.0, 70.0]]),
    detected=True,
  )
  m = pipeline_lib.mirror_detection(det, 100)
  np.testing.assert_array_equal(m.box, [50.0, 20.0, 90.0, 80.0])
  # Left eye of the mirrored face is the mirror of the right eye, and so on.
  np.testing.assert_array_equal(m.landmarks, [[60.0, 40.0], [80.0, 40.0], [70.0, 55.0], [62.0, 70.0], [78.0, 70.0]])
  back = pipeline_lib.mirror_detection(m, 100)
  np.testing.assert_array_equal(back.box, det.box)
  np.testing.assert_array_equal(back.landmarks, det.landmarks)
  assert pipeline_lib.mirror_detection(Detection(det.box, None, False), 100).landmarks is None


def test_torn_or_missing_chunk_is_recomputed_alone(tmp_path):
  records = make_images(tmp_path / 'img', bad=False)
  d = build(records, tmp_path / 'cache').directory
  x0, _, meta0 = reader.load_embeddings(d)
  # Make it look like a run that died while chunk 2 was being written: no TFDS metadata, chunk 2's shard
  # truncated, chunk 4's shard gone.
  for f in ('dataset_info.json', key.INFO_FILE):
    (d / f).unlink()
  shards = sorted(d.glob('*.array_record-*'))
  mtimes = {p.name: p.stat().st_mtime_ns for p in shards}
  shards[2].write_bytes(shards[2].read_bytes()[:20])
  shards[4].unlink()
  time.sleep(0.01)
  log = tmp_path / 'log'
  result = build(records, tmp_path / 'cache', log=os.fspath(log))
  assert result.chunks_computed == 2 and result.chunks_reused == 3
  # Only the 8 images of the two broken chunks went through the backbone again.
  assert sum(int(line.split()[1]) for line in log.read_text().splitlines()) == 8
  for p in sorted(d.glob('*.array_record-*')):
    if p.name not in (shards[2].name, shards[4].name):
      assert p.stat().st_mtime_ns == mtimes[p.name]
  x1, _, meta1 = reader.load_embeddings(d)
  assert meta1['image_ids'] == meta0['image_ids']
  np.testing.assert_array_equal(x1, x0)


def test_changed_records_are_refused(tmp_path):
  records = make_images(tmp_path / 'img', bad=False)
  build(records, tmp_path / 'cache')
  with pytest.raises(key.CacheError, match='different list of images'):
    build(records[:-1], tmp_path / 'cache')


def test_incomplete_cache_is_not_read(tmp_path):
  records = make_images(tmp_path / 'img', bad=False)
  d = build(records, tmp_path / 'cache').directory
  (d / 'dataset_info.json').unlink()
  with pytest.raises(key.CacheError, match='incomplete'):
    reader.load_embeddings(d)
  with pytest.raises(key.CacheError, match='no complete embedding cache'):
    reader.load_embeddings(tmp_path / 'nowhere')


def test_worker_processes_give_the_same_cache(tmp_path):
  records = make_images(tmp_path / 'img')
  inline = build(records, tmp_path / 'a', num_workers=0).directory
  pooled = writer.build(
    records,
    make_spec(),
    pipeline_lib.Pipeline(backbone_factory=FakeBackbone, aligner_factory=FakeAligner),
    data_dir=tmp_path / 'b',
    num_workers=2,
    task_size=3,
    chunk_size=5,
    progress=False,
  )
  xa, la, ma = reader.load_embeddings(inline)
  xb, lb, mb = reader.load_embeddings(pooled.directory)
  assert ma['image_ids'] == mb['image_ids']
  np.testing.assert_array_equal(xa, xb)
  np.testing.assert_array_equal(ma['detected'], mb['detected'])
  assert ma['info']['skipped']['bad_images'] == mb['info']['skipped']['bad_images']


class JitBackbone(FakeBackbone):
  """FakeBackbone whose preprocessing is a compiled JAX program, run in the cache's worker processes."""

  def preprocess(self, image, detection):
    import jax  # pylint: disable=g-import-not-at-top

    return np.asarray(jax.jit(lambda x: x * 2.0)(super().preprocess(image, detection)))


def test_workers_keep_compiled_programs_in_the_persistent_cache(tmp_path, monkeypatch):
  # Spawned workers inherit the environment; a threshold of 0 s keeps even this small program.
  monkeypatch.setenv('MIR_JAX_CACHE', str(tmp_path / 'user_cache'))
  monkeypatch.setenv('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR', raising=False)
  records = make_images(tmp_path / 'img', bad=False)
  pipeline = pipeline_lib.Pipeline(backbone_factory=JitBackbone, aligner_factory=FakeAligner)
  writer.build(records, make_spec(), pipeline, data_dir=tmp_path / 'c', num_workers=1, chunk_size=5, progress=False)
  assert any((tmp_path / 'user_cache' / 'xla').iterdir())


def test_the_persistent_cache_goes_where_jax_is_told_first(tmp_path):
  script = 'import jax; from mir_jax import compilation_cache; compilation_cache.enable(); '
  script += 'print(jax.config.jax_compilation_cache_dir)'
  env = dict(os.environ, MIR_JAX_CACHE=str(tmp_path / 'mine'))
  env.pop('JAX_COMPILATION_CACHE_DIR', None)
  run = lambda e: subprocess.run([sys.executable, '-c', script], env=e, capture_output=True, text=True, check=True)
  assert run(env).stdout.strip() == str(tmp_path / 'mine' / 'xla')
  assert run(dict(env, JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'theirs'))).stdout.strip() == str(tmp_path / 'theirs')


class WorkerEmbeddingBackbone(FakeBackbone):
  """A backbone that asks the cache's worker processes to run it (as dlib's one-core network does)."""

  embed_in_workers = True


def test_backbone_that_embeds_in_workers_gives_the_same_cache(tmp_path):
  records = make_images(tmp_path / 'img')
  log = tmp_path / 'calls'
  inline = build(records, tmp_path / 'a', flip=True, num_workers=0).directory
  pooled = writer.build(
    records,
    make_spec(flip=True),
    pipeline_lib.Pipeline(
      backbone_factory=functools.partial(WorkerEmbeddingBackbone, log=str(log)), aligner_factory=FakeAligner, flip=True
    ),
    data_dir=tmp_path / 'b',
    num_workers=2,
    task_size=3,
    chunk_size=5,
    progress=False,
  )
  xa, _, ma = reader.load_embeddings(inline)
  xb, _, mb = reader.load_embeddings(pooled.directory)
  assert ma['image_ids'] == mb['image_ids']
  np.testing.assert_array_equal(xa, xb)
  assert ma['embeddings_flip'] is not None
  np.testing.assert_array_equal(ma['embeddings_flip'], mb['embeddings_flip'])
  callers = {int(line.split()[0]) for line in log.read_text().splitlines()}
  assert callers and os.getpid() not in callers  # every embed call ran in a worker


def _child_build(img_dir, data_dir, log):
  """Entry point of the subprocess that the SIGKILL test kills mid-run."""
  records = make_images(pathlib.Path(img_dir), bad=True)
  build(records, data_dir, delay=0.1, log=log)


def test_sigkill_midway_then_resume_equals_uninterrupted_run(tmp_path):
  img, data_dir, log = tmp_path / 'img', tmp_path / 'cache', tmp_path / 'log'
  records = make_images(img, bad=True)  # the child rewrites the same deterministic images
  d = key.cache_dir(data_dir, make_spec())
  code = (
    'import sys; sys.path.insert(0, sys.argv[1]); import cache_test; '
    'cache_test._child_build(sys.argv[2], sys.argv[3], sys.argv[4])'
  )
  child = subprocess.Popen(
    [sys.executable, '-c', code, os.path.dirname(__file__), os.fspath(img), os.fspath(data_dir), os.fspath(log)]
  )
  # 22 images in 6 chunks at 0.1 s per image: kill once two chunks are on disk, long before the end.
  deadline = time.time() + 60
  while time.time() < deadline and len(list(d.glob('*.array_record-*'))) < 2 and child.poll() is None:
    time.sleep(0.02)
  child.send_signal(signal.SIGKILL)
  child.wait()
  assert child.returncode == -signal.SIGKILL, 'the child finished before it could be killed'
  finished = sorted(d.glob('*.array_record-*'))
  assert 2 <= len(finished) < 6
  assert not key.is_complete(d)
  mtimes = {p.name: p.stat().st_mtime_ns for p in finished}
  with pytest.raises(key.CacheError, match='incomplete'):
    reader.load_embeddings(d)

  log.unlink()
  result = build(records, data_dir, log=os.fspath(log))
  assert result.chunks_reused == len(finished)
  assert result.chunks_computed == 6 - len(finished)
  for p in finished:
    assert p.stat().st_mtime_ns == mtimes[p.name]
  # Only images of unfinished chunks were embedded again (chunks hold 4 records; bad ones never embed).
  plan = json.loads((d / '_work' / 'plan.json').read_text())
  ordered = sorted(records, key=lambda r: r.image_id)
  done_ids = {r.image_id for c in range(len(finished)) for r in ordered[c * 4 : (c + 1) * 4]}
  assert [p.name for p in finished] == [key.shard_path(d, plan['name'], c, 6).name for c in range(len(finished))]
  redo = [r for r in ordered if r.image_id not in done_ids and not r.image_id.endswith('99')]
  assert sum(int(line.split()[1]) for line in log.read_text().splitlines()) == len(redo)

  x, labels, meta = reader.load_embeddings(d)
  ref = build(records, tmp_path / 'ref').directory
  xr, lr, mr = reader.load_embeddings(ref)
  assert meta['image_ids'] == mr['image_ids']
  assert len(set(meta['image_ids'])) == len(meta['image_ids']) == 20
  np.testing.assert_array_equal(x, xr)
  np.testing.assert_array_equal(labels, lr)
  np.testing.assert_array_equal(meta['detected'], mr['detected'])
  assert meta['info']['skipped'] == mr['info']['skipped']


def _child_build_pooled(img_dir, data_dir):
  """Entry point of the subprocess whose worker processes must not outlive it."""
  records = make_images(pathlib.Path(img_dir), bad=False)
  pipeline = pipeline_lib.Pipeline(backbone_factory=FakeBackbone, aligner_factory=FakeAligner)
  writer.build(
    records,
    make_spec(),
    pipeline,
    data_dir=data_dir,
    backbone=FakeBackbone(delay=0.2),
    num_workers=2,
    chunk_size=4,
    task_size=2,
    progress=False,
  )


def _children(pid):
  out = []
  for entry in os.listdir('/proc'):
    if entry.isdigit():
      try:
        stat = pathlib.Path(f'/proc/{entry}/stat').read_text()
      except OSError:
        continue
      # Field 4 (after the parenthesised command, which may hold spaces) is the parent pid.
      if int(stat.rsplit(')', 1)[1].split()[1]) == pid:
        out.append(int(entry))
  return out


def _alive(pid):
  try:
    return pathlib.Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0] != 'Z'
  except OSError:
    return False


@pytest.mark.skipif(not os.path.isdir('/proc/self'), reason='needs Linux /proc to find worker processes')
def test_workers_exit_when_the_parent_is_killed(tmp_path):
  img, data_dir = tmp_path / 'img', tmp_path / 'cache'
  make_images(img, bad=False)
  d = key.cache_dir(data_dir, make_spec())
  code = (
    'import sys; sys.path.insert(0, sys.argv[1]); import cache_test; '
    'cache_test._child_build_pooled(sys.argv[2], sys.argv[3])'
  )
  child = subprocess.Popen([sys.executable, '-c', code, os.path.dirname(__file__), os.fspath(img), os.fspath(data_dir)])
  worker_pids = []
  try:
    deadline = time.time() + 60
    while time.time() < deadline and not list(d.glob('*.array_record-*')) and child.poll() is None:
      time.sleep(0.05)
    worker_pids = [p for p in _children(child.pid) if b'spawn_main' in pathlib.Path(f'/proc/{p}/cmdline').read_bytes()]
    assert len(worker_pids) == 2, 'the pooled build did not start its two workers'
    child.send_signal(signal.SIGKILL)
    child.wait()
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(p) for p in worker_pids):
      time.sleep(0.1)
    assert not any(_alive(p) for p in worker_pids), 'worker processes outlived their killed parent'
  finally:
    if child.poll() is None:
      child.kill()
    for p in worker_pids:
      if _alive(p):
        os.kill(p, signal.SIGKILL)


# More tasks than the workers' budget, each task one image: the shape that deadlocks
# ProcessPoolExecutor(max_tasks_per_child=...) on Python 3.11 (CPython gh-115634), hence the timeout.
@pytest.mark.timeout(300)
def test_workers_are_replaced_after_their_task_budget(tmp_path, monkeypatch):
  records = make_images(tmp_path / 'img', bad=False)  # 20 images
  log = tmp_path / 'calls'
  monkeypatch.setattr(workers, 'WORKER_MAX_TASKS', 2)
  pooled = writer.build(
    records,
    make_spec(),
    pipeline_lib.Pipeline(
      backbone_factory=functools.partial(WorkerEmbeddingBackbone, log=str(log)), aligner_factory=FakeAligner
    ),
    data_dir=tmp_path / 'b',
    num_workers=2,
    task_size=1,
    chunk_size=5,
    progress=False,
  )
  calls = collections.Counter(int(line.split()[0]) for line in log.read_text().splitlines())
  assert sum(calls.values()) == 20  # one embed call per task
  assert os.getpid() not in calls
  # 20 tasks, 2 workers x 2 tasks per pool: five pools, none of whose processes ran more than its pool's 4.
  assert len(calls) >= 5 and max(calls.values()) <= 4, calls
  inline = build(records, tmp_path / 'a', num_workers=0).directory
  np.testing.assert_array_equal(reader.load_embeddings(inline)[0], reader.load_embeddings(pooled.directory)[0])


def _records_in(img_dir):
  """The records of the images `make_images` wrote, read back without rewriting them."""
  paths = sorted(pathlib.Path(img_dir).glob('*/*.png'))
  return [FaceRecord(str(p), p.parent.name, f'{p.parent.name}/{p.stem}') for p in paths]


def _child_build_concurrent(img_dir, data_dir, log):
  """Entry point of the two processes the two-writer test starts at once."""
  build(_records_in(img_dir), data_dir, delay=0.03, log=log)


def _wait_for(path: pathlib.Path, text: str, timeout: float = 120.0) -> bool:
  deadline = time.time() + timeout
  while time.time() < deadline:
    if path.is_file() and text in path.read_text():
      return True
    time.sleep(0.05)
  return False


def test_two_writers_at_once_embed_each_image_once_into_one_intact_cache(tmp_path):
  from mir_jax.cache import lock

  img, data_dir, log = tmp_path / 'img', tmp_path / 'cache', tmp_path / 'log'
  records = make_images(img, bad=False)
  d = key.cache_dir(data_dir, make_spec())
  code = (
    'import sys; sys.path.insert(0, sys.argv[1]); import cache_test; '
    'cache_test._child_build_concurrent(sys.argv[2], sys.argv[3], sys.argv[4])'
  )
  args = [sys.executable, '-c', code, os.path.dirname(__file__), os.fspath(img), os.fspath(data_dir), os.fspath(log)]
  errs = [tmp_path / f'stderr{i}' for i in range(2)]
  # Both start while this process holds the lock, so both meet a writer (whatever their start-up times),
  # then race for it once it is released.
  with lock.exclusive(d):
    children = [subprocess.Popen(args, stderr=open(e, 'w')) for e in errs]
    for e in errs:
      assert _wait_for(e, 'another process is building'), e.read_text()[-3000:]
  for child in children:
    child.wait(timeout=300)
  assert [child.returncode for child in children] == [0, 0], [e.read_text()[-3000:] for e in errs]
  # One of them embedded every image once; the other waited for it and found the cache complete.
  lines = log.read_text().splitlines()
  assert len({line.split()[0] for line in lines}) == 1
  assert sum(int(line.split()[1]) for line in lines) == len(records)
  assert not list((d / key.WORK_DIR).glob('*.tmp'))
  x, _, meta = reader.load_embeddings(d, verify=True)
  xr, _, mr = reader.load_embeddings(build(records, tmp_path / 'ref').directory)
  assert meta['image_ids'] == mr['image_ids']
  np.testing.assert_array_equal(x, xr)


def test_a_second_writer_can_refuse_instead_of_waiting(tmp_path):
  from mir_jax.cache import lock

  d = tmp_path / 'cache_dir'
  code = (
    'import sys, time; from mir_jax.cache import lock\n'
    'with lock.exclusive(sys.argv[1]):\n'
    '  print("held", flush=True); time.sleep(60)\n'
  )
  holder = subprocess.Popen([sys.executable, '-c', code, os.fspath(d)], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(key.CacheError, match=f'being built by process {holder.pid} '):
      with lock.exclusive(d, wait=False):
        pass
  finally:
    holder.kill()
    holder.wait()
  # The kernel dropped the dead holder's lock.
  with lock.exclusive(d, wait=False):
    pass


def _flip_byte(path: pathlib.Path, position: int) -> None:
  data = bytearray(path.read_bytes())
  data[position] ^= 0xFF
  path.write_bytes(bytes(data))


def test_a_damaged_shard_is_named_on_read_and_verify_recomputes_exactly_it(tmp_path):
  records = make_images(tmp_path / 'img', bad=False)
  d = build(records, tmp_path / 'cache', command='python -m mir_jax.embed --dataset=toy').directory
  x0, _, _ = reader.load_embeddings(d)
  shards = sorted(d.glob('*.array_record-*'))
  mtimes = {p.name: p.stat().st_mtime_ns for p in shards}
  _flip_byte(shards[3], 300)  # inside the records: array_record's own hashes catch it on read
  with pytest.raises(key.CacheError) as raised:
    reader.load_embeddings(d)
  message = str(raised.value)
  assert shards[3].name in message and 'python -m mir_jax.embed --dataset=toy --verify' in message
  assert all(p.name not in message for p in shards if p != shards[3])
  with pytest.raises(key.CacheError, match=shards[3].name):
    reader.load_embeddings(d, verify=True)

  # A plain rerun trusts the complete cache; --verify recomputes the damaged chunk and nothing else.
  log = tmp_path / 'log'
  assert build(records, tmp_path / 'cache', log=os.fspath(log)).chunks_computed == 0
  result = build(records, tmp_path / 'cache', log=os.fspath(log), verify=True)
  assert result.chunks_computed == 1 and result.chunks_reused == 4
  assert len(result.damaged) == 1 and result.damaged[0].startswith(shards[3].name)
  assert sum(int(line.split()[1]) for line in log.read_text().splitlines()) == 4
  for p in shards:
    if p != shards[3]:
      assert p.stat().st_mtime_ns == mtimes[p.name]
  x1, _, _ = reader.load_embeddings(d, verify=True)
  np.testing.assert_array_equal(x1, x0)
  again = build(records, tmp_path / 'cache', log=os.fspath(log), verify=True)
  assert again.chunks_computed == 0 and again.damaged == []


def test_verify_catches_damage_that_reads_back_without_error(tmp_path):
  records = make_images(tmp_path / 'img', bad=False)
  d = build(records, tmp_path / 'cache').directory
  x0, _, _ = reader.load_embeddings(d)
  shard = sorted(d.glob('*.array_record-*'))[1]
  _flip_byte(shard, shard.stat().st_size - 1)  # the file's padding, which no array_record hash covers
  x1, _, _ = reader.load_embeddings(d)
  np.testing.assert_array_equal(x1, x0)
  with pytest.raises(key.CacheError, match=f'{shard.name}: its sha256 differs'):
    reader.load_embeddings(d, verify=True)
  assert build(records, tmp_path / 'cache', verify=True).chunks_computed == 1
  reader.load_embeddings(d, verify=True)


def test_verify_reads_every_record_of_a_cache_without_recorded_digests(tmp_path):
  records = make_images(tmp_path / 'img', bad=False)
  d = build(records, tmp_path / 'cache').directory
  for stats_path in (d / key.WORK_DIR).glob('chunk-*.json'):  # as caches written before digests were
    stats = json.loads(stats_path.read_text())
    del stats['sha256']
    stats_path.write_text(json.dumps(stats))
  reader.load_embeddings(d, verify=True)
  shard = sorted(d.glob('*.array_record-*'))[2]
  _flip_byte(shard, 300)
  with pytest.raises(key.CacheError, match=f'{shard.name}: it does not read back'):
    reader.load_embeddings(d, verify=True)
  assert build(records, tmp_path / 'cache', verify=True).chunks_computed == 1


def test_changed_records_message_says_what_changed_and_both_ways_on(tmp_path):
  records = make_images(tmp_path / 'img', bad=False)
  build(records, tmp_path / 'cache')
  with pytest.raises(key.CacheError) as raised:
    build(records[:-1] + [FaceRecord(records[0].path, 'zed', 'zed/zed_0001')], tmp_path / 'cache')
  message = str(raised.value)
  assert "1 images added or relabelled ('zed/zed_0001 of zed')" in message
  assert f"1 gone ('{records[-1].image_id} of {records[-1].identity}')" in message
  assert f'that run read {tmp_path / "img"}' in message
  assert 'pass another --data_dir' in message


def test_verify_distrusts_a_complete_cache_missing_its_statistics_or_plan(tmp_path):
  records = make_images(tmp_path / 'img', bad=False)
  d = build(records, tmp_path / 'cache').directory
  x0, _, _ = reader.load_embeddings(d)
  shards = sorted(d.glob('*.array_record-*'))
  (d / key.WORK_DIR / 'chunk-00001.json').unlink()  # a copy cut short: nothing vouches for shard 1
  with pytest.raises(key.CacheError, match=f'{shards[1].name}: its statistics .* are missing'):
    reader.load_embeddings(d, verify=True)
  assert build(records, tmp_path / 'cache', verify=True).chunks_computed == 1
  # Copied without _work/plan.json: the plan's copy in mir_cache.json names the shards.
  (d / key.WORK_DIR / 'plan.json').unlink()
  _flip_byte(shards[2], 300)
  with pytest.raises(key.CacheError, match=f'{shards[2].name}: its sha256 differs'):
    reader.load_embeddings(d)
  x1, _, _ = reader.load_embeddings(build(records, tmp_path / 'cache', verify=True).directory, verify=True)
  np.testing.assert_array_equal(x1, x0)


def test_a_cache_of_no_embedded_image_is_refused_not_completed(tmp_path):
  root = tmp_path / 'img'
  (root / 'ann').mkdir(parents=True)
  records = []
  for i in range(3):
    path = root / 'ann' / f'{i}.png'
    path.write_bytes(b'not a png at all')
    records.append(FaceRecord(str(path), 'ann', f'ann/{i}'))
  with pytest.raises(key.CacheError, match=r'none of the 3 images could be embedded, e\.g\.\n  .*0\.png: '):
    build(records, tmp_path / 'cache')
  assert not key.is_complete(key.cache_dir(tmp_path / 'cache', make_spec()))


class CountingAligner(FakeAligner):
  """FakeAligner that logs how many images each call detects (across processes: a file), and whose boxes
  carry a float64 tail that a lossy store would cut."""

  def __init__(self, log: str, tag: str = 'fake'):
    self.log, self.tag = log, tag

  def config_key(self):
    return {'detector': self.tag}

  def detect_batch(self, images):
    with open(self.log, 'a') as f:
      f.write(f'{len(images)}\n')
    return [
      dataclasses.replace(d, box=d.box + 1.0 / 3.0, landmarks=d.landmarks * np.pi) for d in super().detect_batch(images)
    ]


def _build_with(records, data_dir, backbone, aligner_log, tag='fake', num_workers=0):
  pipeline = pipeline_lib.Pipeline(
    backbone_factory=backbone, aligner_factory=functools.partial(CountingAligner, aligner_log, tag)
  )
  spec = make_spec(backbone_config=backbone().config_key(), align_config={'detector': tag})
  return writer.build(
    records, spec, pipeline, data_dir=data_dir, num_workers=num_workers, chunk_size=5, task_size=3, progress=False
  )


class OtherBackbone(FakeBackbone):
  name = 'other'


def _detected_images(log: pathlib.Path) -> int:
  return sum(int(n) for n in log.read_text().split()) if log.exists() else 0


def test_a_second_backbone_reads_the_first_ones_detections(tmp_path):
  records = make_images(tmp_path / 'img')  # 20 images and 2 unreadable files
  first_log, second_log, fresh_log = tmp_path / 'first', tmp_path / 'second', tmp_path / 'fresh'
  first = _build_with(records, tmp_path / 'cache', FakeBackbone, first_log, num_workers=2)
  second = _build_with(records, tmp_path / 'cache', OtherBackbone, second_log, num_workers=2)
  assert _detected_images(first_log) == 20 and _detected_images(second_log) == 0
  info_first, info_second = reader.read_info(first.directory), reader.read_info(second.directory)
  assert info_first['num_detections_reused'] == 0 and info_second['num_detections_reused'] == 20
  # What the second cache holds equals a build of it that detects for itself (another data dir: no store),
  # to the last bit of every box.
  fresh = _build_with(records, tmp_path / 'fresh_cache', OtherBackbone, fresh_log)
  assert _detected_images(fresh_log) == 20
  xs, _, ms = reader.load_embeddings(second.directory)
  xf, _, mf = reader.load_embeddings(fresh.directory)
  np.testing.assert_array_equal(xs, xf)
  np.testing.assert_array_equal(ms['boxes'], mf['boxes'])
  np.testing.assert_array_equal(ms['detected'], mf['detected'])
  assert ms['info']['skipped']['fallback_boxes'] == mf['info']['skipped']['fallback_boxes']


def test_stored_detections_round_trip_exactly_and_bad_entries_are_detected_again(tmp_path):
  records = make_images(tmp_path / 'img', bad=False)
  log = tmp_path / 'log'
  aligner = CountingAligner(os.fspath(log))
  images = [np.asarray(Image.open(r.path).convert('RGB')) for r in records[:3]]
  want = aligner.detect_batch(images)
  store = detections.DetectionStore(tmp_path / 'store')
  entry = store.entry(aligner, records[:3])
  store.save(entry, want)
  for got, w in zip(store.load(entry, 3), want):
    np.testing.assert_array_equal(got.box, w.box)
    np.testing.assert_array_equal(got.landmarks, w.landmarks)
    assert (got.detected, got.fallback, got.reason) == (w.detected, w.fallback, w.reason)
  # The key covers the call's images in order, the aligner's settings and each file's bytes on disk.
  assert store.entry(aligner, records[2::-1][::-1]) == entry
  assert store.entry(aligner, records[:3][::-1]) != entry
  assert store.entry(CountingAligner(os.fspath(log), 'other'), records[:3]) != entry
  # The bytes, not where the file is or when it was written: a copy of the images elsewhere, with other
  # modification times, reads the same entries, and a changed photo does not.
  copies = []
  for i, r in enumerate(records[:3]):
    copy = tmp_path / 'copy' / f'{i}.jpg'
    copy.parent.mkdir(exist_ok=True)
    copy.write_bytes(pathlib.Path(r.path).read_bytes())
    os.utime(copy, ns=(i, i))
    copies.append(dataclasses.replace(r, path=os.fspath(copy)))
  assert store.entry(aligner, copies) == entry
  pathlib.Path(copies[1].path).write_bytes(pathlib.Path(records[3].path).read_bytes())
  assert store.entry(aligner, copies) != entry
  assert store.entry(aligner, copies[:2] + [dataclasses.replace(copies[2], path=os.fspath(tmp_path / 'gone'))]) is None
  # A torn or foreign entry is not trusted: it reads as missing, so the call is detected again.
  path = tmp_path / 'store' / f'{entry}.json'
  path.write_text(path.read_text()[:40])
  assert store.load(entry, 3) is None
  store.save(entry, want)
  assert store.load(entry, 2) is None  # a different number of images than the call
  # Another aligner setting names another store directory.
  assert detections.store_dir(tmp_path, 'toy', {'detector': 'a'}) != detections.store_dir(
    tmp_path, 'toy', {'detector': 'b'}
  )


def test_a_changed_aligner_detects_again(tmp_path):
  records = make_images(tmp_path / 'img', bad=False)
  first_log, second_log = tmp_path / 'first', tmp_path / 'second'
  _build_with(records, tmp_path / 'cache', FakeBackbone, first_log, tag='fake')
  _build_with(records, tmp_path / 'cache', OtherBackbone, second_log, tag='fake-v2')
  assert _detected_images(first_log) == 20 and _detected_images(second_log) == 20
