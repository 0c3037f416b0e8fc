"""`build`: embeds records into a cache directory, one crash-safe shard per chunk, resuming earlier runs."""

import dataclasses
import json
import math
import os
import pathlib
import tempfile
import time
from typing import Any, List, Optional, Sequence
import uuid

from absl import logging
import numpy as np

from mir_jax import align
from mir_jax.cache import detections
from mir_jax.cache import key
from mir_jax.cache import lock
from mir_jax.cache import pipeline as pipeline_lib
from mir_jax.cache import verify as verify_lib
from mir_jax.cache import workers
from mir_jax.datasets.records import FaceRecord

DEFAULT_CHUNK_SIZE = 256
DEFAULT_BATCH_SIZE = 32
# Under _work: the records of the run, one `image_id<TAB>identity` per line, to say what changed.
RECORDS_FILE = 'records.tsv'


# ----------------------------------------------------------------------------------------------------------
# Files.


def _fsync_dir(directory: pathlib.Path) -> None:
  fd = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _atomic_write_text(path: pathlib.Path, text: str) -> None:
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix='.' + path.name + '.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  _fsync_dir(path.parent)


def _write_json(path: pathlib.Path, obj: Any) -> None:
  _atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + '\n')


def _num_records(path: pathlib.Path) -> Optional[int]:
  """Record count of an array_record file, or None when it is missing or unreadable."""
  if not path.is_file():
    return None
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  try:
    reader = array_record_module.ArrayRecordReader(os.fspath(path))
    try:
      return int(reader.num_records())
    finally:
      reader.close()
  except Exception:  # pylint: disable=broad-except
    # A torn or foreign file is not a finished chunk; it is rewritten.
    return None


def features_for(dim: int, names: Sequence[str], flip: bool):
  """The TFDS features of one cached image."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  spec = {
    'embedding': tfds.features.Tensor(shape=(dim,), dtype=np.float32),
    'label': tfds.features.ClassLabel(names=list(names)),
    'identity': tfds.features.Text(),
    'image_id': tfds.features.Text(),
    'video_id': tfds.features.Text(),
    'role': tfds.features.Text(),
    'detected': tfds.features.Scalar(dtype=np.bool_),
    # (x1, y1, x2, y2) in image pixels: the detector's box, or the centre-box fallback.
    'box': tfds.features.Tensor(shape=(4,), dtype=np.float32),
  }
  if flip:
    spec['embedding_flip'] = tfds.features.Tensor(shape=(dim,), dtype=np.float32)
  return tfds.features.FeaturesDict(spec)


def _images_root(records: Sequence[FaceRecord]) -> str:
  """The folder holding every image (for messages), or '' when the paths share none."""
  try:
    return os.path.commonpath([os.path.dirname(os.path.abspath(r.path)) for r in records if r.path])
  except ValueError:
    return ''


def _record_lines(records: Sequence[FaceRecord]) -> List[str]:
  """What `key.records_fingerprint` hashes, one line per record: kept so that a changed list can be diffed."""
  return sorted(f'{r.image_id}\t{r.identity}' for r in records)


# ----------------------------------------------------------------------------------------------------------
# Building.


@dataclasses.dataclass
class BuildResult:
  directory: pathlib.Path
  num_chunks: int
  chunks_computed: int
  chunks_reused: int
  seconds: float
  # With `verify`: the shards found damaged (and recomputed), each with its reason; empty when all were intact.
  damaged: List[str] = dataclasses.field(default_factory=list)


def build(
  records: Sequence[FaceRecord],
  spec: key.CacheSpec,
  pipeline: pipeline_lib.Pipeline,
  *,
  data_dir: os.PathLike,
  backbone=None,
  chunk_size: int = DEFAULT_CHUNK_SIZE,
  batch_size: int = DEFAULT_BATCH_SIZE,
  num_workers: int = 2,
  task_size: int = 16,
  progress: bool = True,
  description: str = '',
  verify: bool = False,
  command: str = '',
  left_out: Sequence[dict] = (),
  beam_options=None,
) -> BuildResult:
  """Embeds `records` into the cache for `spec`, resuming whatever an earlier run finished.

  Args:
    records: the images, in any order (they are sorted by image id so chunks are reproducible).
    spec: the cache key inputs; `spec.flip` must equal `pipeline.flip`.
    pipeline: how to prepare one image (picklable, for worker processes).
    data_dir: root of all caches.
    backbone: the backbone running the batched `embed` in this process (built from the pipeline's factory
      when None).
    chunk_size: images per shard (the unit of resumption). An existing run's chunking wins over this value.
    batch_size: images per `backbone.embed` call.
    num_workers: processes decoding/detecting/preprocessing while this process embeds (a backbone with
      `embed_in_workers`, e.g. dlib's single-core C++ network, is run by the workers too); 0 does
      everything in this process.
    task_size: images handed to a worker at once (MTCNN batches same-size images within a task).
    progress: show a tqdm bar with images/s.
    description: human-readable text for the TFDS dataset description.
    verify: first check every finished shard (`verify.check`) and recompute exactly the damaged ones, even
      in a complete cache.
    command: the shell command that builds this cache, recorded so that error messages can name it.
    left_out: what the dataset reader found but did not list (`lookup.left_out`: path and reason each),
      recorded in `skipped_images.json`.
    beam_options: None computes the chunks here and in `num_workers` processes (the local runner); Beam
      PipelineOptions (`beam_runner.pipeline_options`) compute them on that Beam runner instead.

  Only one process builds a cache directory at a time (`lock`): a second one waits for the first, then
  finds the cache complete or resumes it.

  Returns:
    A BuildResult; `directory` is the TFDS dataset directory.

  Raises:
    CacheError: the directory holds a run over different records (the dataset changed on disk).
  """
  if spec.flip != pipeline.flip:
    raise ValueError('spec.flip and pipeline.flip disagree')
  started = time.time()
  records = sorted(records, key=lambda r: r.image_id)
  ids = [r.image_id for r in records]
  if len(set(ids)) != len(ids):
    dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
    raise ValueError(f'image ids must be unique; duplicated: {dup}')
  if not records:
    raise ValueError('nothing to embed: the record list is empty')
  directory = key.cache_dir(data_dir, spec)
  if pipeline.detections_dir is None and spec.align_config.get('detector') != 'none':
    # Every backbone's cache of these images reads the detections the first one stored.
    store = detections.store_dir(data_dir, spec.dataset, spec.align_config)
    pipeline = dataclasses.replace(pipeline, detections_dir=os.fspath(store))
  with lock.exclusive(directory):
    name = spec.name()
    work = directory / key.WORK_DIR
    fingerprint = key.records_fingerprint(records)
    # Shards a killed run left half-written; while this process holds the lock no other one is writing.
    for stale in work.glob('*.tmp'):
      stale.unlink(missing_ok=True)
    damaged: List[verify_lib.Damage] = []
    if key.is_complete(directory):
      info = json.loads((directory / key.INFO_FILE).read_text())
      if info.get('records_fingerprint') != fingerprint:
        raise key.CacheError(_changed_message(directory, records))
      if not verify:
        logging.info('Cache %s is complete; nothing to do.', directory)
        return BuildResult(directory, info['num_chunks'], 0, info['num_chunks'], 0.0)
      damaged = verify_lib.check(directory)
      if not damaged:
        logging.info('Cache %s is complete and its %d shards are intact.', directory, info['num_chunks'])
        return BuildResult(directory, info['num_chunks'], 0, info['num_chunks'], time.time() - started)
      verify_lib.invalidate(directory, damaged)

    plan_path = work / 'plan.json'
    if plan_path.is_file():
      plan = json.loads(plan_path.read_text())
      if plan['records_fingerprint'] != fingerprint or plan['num_records'] != len(records):
        raise key.CacheError(_changed_message(directory, records))
      if verify and not damaged:  # a partial cache: check what the earlier runs finished
        damaged = verify_lib.check(directory)
        verify_lib.invalidate(directory, damaged)
      for d in damaged:
        logging.warning('Damaged shard, recomputing it: %s', d)
      if command and not plan.get('command'):  # a cache from before commands were recorded
        plan['command'] = command
        _write_json(plan_path, plan)
      if plan['chunk_size'] != chunk_size:
        logging.info('Resuming with the existing chunk size %d (asked for %d).', plan['chunk_size'], chunk_size)
      chunk_size = plan['chunk_size']
    else:
      plan = {
        'spec': spec.as_dict(),
        'key': spec.key(),
        'name': name,
        'num_records': len(records),
        'records_fingerprint': fingerprint,
        'chunk_size': chunk_size,
        'num_chunks': math.ceil(len(records) / chunk_size),
        'images_root': _images_root(records),
        'command': command,
      }
      _atomic_write_text(work / RECORDS_FILE, ''.join(line + '\n' for line in _record_lines(records)))
      _write_json(plan_path, plan)
    num_chunks = plan['num_chunks']
    writer = _ShardWriter(
      directory=directory,
      name=name,
      spec=spec,
      pipeline=pipeline,
      chunks=[records[i * chunk_size : (i + 1) * chunk_size] for i in range(num_chunks)],
      identities=sorted({r.identity for r in records}),
      backbone=backbone,
      batch_size=batch_size,
      num_workers=num_workers,
      task_size=task_size,
      progress=progress,
    )

    done, todo = [], []
    for c in range(num_chunks):
      (done if writer.chunk_done(c) else todo).append(c)
    if done:
      logging.info('Resuming %s: %d of %d chunks already complete.', directory, len(done), num_chunks)

    if todo and beam_options is not None:
      from mir_jax.cache import beam_runner  # pylint: disable=g-import-not-at-top

      beam_runner.run(writer, todo, beam_options)
    elif todo:
      writer.write(todo)
    writer.finalize(plan, description, left_out)
    return BuildResult(directory, num_chunks, len(todo), len(done), time.time() - started, [str(d) for d in damaged])


def _changed_message(directory: pathlib.Path, records: Sequence[FaceRecord]) -> str:
  """Why a cache of the same settings does not fit these records: what differs, and both ways on."""
  work = directory / key.WORK_DIR
  text = f'{directory} was built from a different list of images than this run lists'
  try:
    plan = json.loads((work / 'plan.json').read_text())
  except (OSError, ValueError):
    plan = {}
  if plan.get('images_root'):
    text += f' (that run read {plan["images_root"]})'
  if (work / RECORDS_FILE).is_file():
    before = set((work / RECORDS_FILE).read_text().splitlines())
    now = set(_record_lines(records))
    added, removed = sorted(now - before), sorted(before - now)
    show = lambda lines: ', '.join(repr(x.replace('\t', ' of ')) for x in lines[:3])
    text += f': {len(added)} images added or relabelled ({show(added)}) and {len(removed)} gone ({show(removed)})'
  return (
    f'{text}. The images changed on disk since that cache was made. To keep it, pass another --data_dir; '
    f'to replace it with one of the images as they are now, delete {directory} and rerun.'
  )


@dataclasses.dataclass
class _ShardWriter:
  """One build's fixed chunking and how its chunks are computed: what writing and finalising share.

  Attributes:
    directory: the cache directory (`key.cache_dir`).
    name: the cache name, the prefix of every shard's file name.
    spec: what the cache holds.
    pipeline: the per-image work (see `pipeline.Pipeline`).
    chunks: the records of each shard, in shard order.
    identities: every identity name, sorted; an example's label indexes it.
    backbone: runs the batched `embed` in this process; None = built from the pipeline's factory.
    batch_size, num_workers, task_size, progress: see `build`.
  """

  directory: pathlib.Path
  name: str
  spec: key.CacheSpec
  pipeline: pipeline_lib.Pipeline
  chunks: List[List[FaceRecord]]
  identities: List[str]
  backbone: Any = None
  batch_size: int = DEFAULT_BATCH_SIZE
  num_workers: int = 2
  task_size: int = 16
  progress: bool = True

  def shard_path(self, c: int) -> pathlib.Path:
    return key.shard_path(self.directory, self.name, c, len(self.chunks))

  def chunk_done(self, c: int) -> bool:
    stats_path = verify_lib.chunk_stats_path(self.directory, c)
    if not stats_path.is_file():
      return False
    try:
      stats = json.loads(stats_path.read_text())
    except ValueError:
      return False
    return _num_records(self.shard_path(c)) == stats['num_written']

  def write(self, todo: Sequence[int]) -> None:
    """Computes and writes the chunks `todo` in this process and its worker pool (the local runner)."""
    import tqdm  # pylint: disable=g-import-not-at-top

    embedder = None
    backbone = self.backbone
    if self.num_workers <= 0:
      embedder = pipeline_lib.RecordEmbedder(self.pipeline, backbone=backbone)
      backbone = embedder.backbone
    elif backbone is None:
      backbone = self.pipeline.backbone_factory()
    work_records = [r for c in todo for r in self.chunks[c]]
    total = sum(len(c) for c in self.chunks)
    bar = tqdm.tqdm(
      total=total,
      initial=total - len(work_records),
      unit='img',
      disable=not self.progress,
      desc=f'embedding {self.spec.dataset}',
      smoothing=0.1,
      dynamic_ncols=True,
    )
    stream = workers.prepared_stream(work_records, self.pipeline, embedder, self.num_workers, self.task_size)
    try:
      for c in todo:
        chunk_started = time.time()
        prepared = [next(stream) for _ in self.chunks[c]]
        self.write_chunk(c, self.chunks[c], prepared, backbone, chunk_started)
        bar.update(len(self.chunks[c]))
    finally:
      bar.close()
      stream.close()

  def write_chunk(self, c: int, chunk: Sequence[FaceRecord], prepared, backbone, started: float) -> int:
    """Embeds what the workers left to embed of chunk `c` (its records `chunk`, prepared in order), writes its
    statistics and then its shard, renamed into place; returns the number of records written. Every runner
    writes a chunk through here, so a shard does not depend on which runner made it."""
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

    spec, directory = self.spec, self.directory
    waited = time.time() - started
    ok = [p for p in prepared if p.error is None and p.skipped is None]
    if ok and all(p.embedding is not None for p in ok):  # the workers ran the backbone
      embeddings = np.stack([p.embedding for p in ok])
      flipped = np.stack([p.embedding_flip for p in ok]) if spec.flip else None
    else:
      embeddings = pipeline_lib.embed_all(backbone, [p.inputs for p in ok], self.batch_size)
      flipped = pipeline_lib.embed_all(backbone, [p.flipped for p in ok], self.batch_size) if spec.flip else None
    embedded = time.time() - started - waited
    dim = int(embeddings.shape[1]) if len(ok) else int(backbone.dim)
    features = features_for(dim, self.identities, spec.flip)
    label_of = {n: i for i, n in enumerate(self.identities)}
    by_id = {r.image_id: r for r in chunk}
    final = self.shard_path(c)
    # Unique per process and attempt: a runner may run one chunk twice at once (a retry, a speculative copy).
    tmp = directory / key.WORK_DIR / f'{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp'
    writer = array_record_module.ArrayRecordWriter(os.fspath(tmp), 'group_size:1')
    for j, p in enumerate(ok):
      r = by_id[p.image_id]
      example = {
        'embedding': embeddings[j],
        'label': label_of[r.identity],
        'identity': r.identity,
        'image_id': r.image_id,
        'video_id': r.video_id or '',
        'role': r.role or '',
        'detected': p.detected,
        'box': p.box,
      }
      if spec.flip:
        example['embedding_flip'] = flipped[j]
      writer.write(features.serialize_example(example))
    writer.close()
    with open(tmp, 'rb') as f:
      os.fsync(f.fileno())
    stats = {
      'sha256': verify_lib.file_sha256(tmp),
      'chunk': c,
      'num_records': len(chunk),
      'num_written': len(ok),
      'first_image_id': chunk[0].image_id,
      'last_image_id': chunk[-1].image_id,
      'bad_images': [
        {'image_id': p.image_id, 'path': by_id[p.image_id].path, 'reason': p.error}
        for p in prepared
        if p.error is not None
      ],
      'fallbacks': [p.image_id for p in ok if not p.detected],
      # Which box each of those got ('center' or 'whole') and why; and the images the 'skip' policy left
      # out: with `detected` in each record, every image's path through the aligner is on record.
      'fallback_boxes': [{'image_id': p.image_id, 'box': p.path, 'reason': p.reason} for p in ok if not p.detected],
      'no_face_skips': [
        {'image_id': p.image_id, 'path': by_id[p.image_id].path, 'reason': p.skipped}
        for p in prepared
        if p.error is None and p.skipped is not None
      ],
      # Images whose detection was read from the detection store rather than computed (`detections`).
      'num_detections_reused': sum(p.detection_reused for p in prepared),
      'seconds': time.time() - started,
      # Where this process spent the chunk: waiting for decoded/detected inputs vs running the
      # backbone; the larger one is the pipeline's bottleneck.
      'seconds_waiting_for_inputs': waited,
      'seconds_in_backbone': embedded,
      'num_workers': self.num_workers,
    }
    # Statistics first, shard second: a shard is only trusted when its statistics exist and agree.
    _write_json(verify_lib.chunk_stats_path(directory, c), stats)
    os.replace(tmp, final)
    _fsync_dir(directory)
    return len(ok)

  def finalize(self, plan: dict, description: str, left_out: Sequence[dict] = ()) -> None:
    """Checks every shard against its statistics, then writes the TFDS metadata and `mir_cache.json`;
    `left_out`: what the dataset reader did not list as images (see `build`)."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    spec, directory, names = self.spec, self.directory, self.identities
    num_chunks = len(self.chunks)
    stats = [json.loads(verify_lib.chunk_stats_path(directory, c).read_text()) for c in range(num_chunks)]
    for c, s in enumerate(stats):
      n = _num_records(self.shard_path(c))
      if n != s['num_written']:
        raise key.CacheError(f'chunk {c} of {directory} holds {n} records, its statistics say {s["num_written"]}')
    dim = spec.backbone_config.get('dim')
    if dim is None:
      dim = int((self.backbone or self.pipeline.backbone_factory()).dim)
    features = features_for(int(dim), names, spec.flip)
    shard_lengths = [s['num_written'] for s in stats]
    num_bytes = sum(self.shard_path(c).stat().st_size for c in range(num_chunks))
    bad = [b for s in stats for b in s['bad_images']]
    fallbacks = [f for s in stats for f in s['fallbacks']]
    # Chunks written before these were recorded had only the centre-box fallback and no skips.
    fallback_boxes = [
      b
      for s in stats
      for b in s.get('fallback_boxes', [{'image_id': f, 'box': 'center', 'reason': ''} for f in s['fallbacks']])
    ]
    no_face_skips = [x for s in stats for x in s.get('no_face_skips', [])]
    n_written = sum(shard_lengths)
    if not n_written:
      # A cache of nothing would read as complete and fail later, far from the cause (a wrong folder, a
      # backbone failing on every image): left incomplete, it says why each time.
      why = [f'{b["path"]}: {b["reason"]}' for b in bad[:3]] + [
        f'{x["path"]}: {x["reason"]}' for x in no_face_skips[:3]
      ]
      raise key.CacheError(
        f'none of the {plan["num_records"]} images could be embedded, e.g.\n  ' + '\n  '.join(why[:3]) + '\n'
        f'(every reason is in {key.WORK_DIR}/chunk-*.json of {directory})'
      )
    alignment = {
      'detected': n_written - len(fallbacks),
      **{name: sum(b['box'] == name for b in fallback_boxes) for name in align.FALLBACKS if name != 'skip'},
      'skipped_no_face': len(no_face_skips),
      'unreadable': len(bad),
    }
    info = {
      **plan,
      'directory': os.fspath(directory),
      'split': key.SPLIT,
      'num_embedded': n_written,
      'num_bad_images': len(bad),
      'num_detection_fallbacks': len(fallbacks),
      'num_no_face_skips': len(no_face_skips),
      # Not images to this cache (never records): the reader's skips, e.g. an empty identity folder.
      'num_left_out_by_reader': len(left_out),
      # Images per path through the aligner: detected, each fallback box, left out; they sum to num_records.
      'alignment': alignment,
      'num_detections_reused': sum(s.get('num_detections_reused', 0) for s in stats),
      'num_identities': len(names),
      'embedding_dim': int(dim),
      'seconds_embedding': sum(s['seconds'] for s in stats),
      'completed_at': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
    }
    _write_json(
      directory / key.SKIPPED_FILE,
      {
        'bad_images': bad,
        'detection_fallbacks': fallbacks,
        'fallback_boxes': fallback_boxes,
        'no_face_skips': no_face_skips,
        'left_out_by_reader': list(left_out),
      },
    )
    text = description or f'{spec.dataset} embedded with {spec.backbone_config}'
    tfds.folder_dataset.write_metadata(
      data_dir=directory,
      features=features,
      split_infos=[
        tfds.core.SplitInfo(name=key.SPLIT, shard_lengths=shard_lengths, num_bytes=num_bytes, filename_template=None)
      ],
      check_data=False,
      description=(
        f'{text}\n\nmir-jax embedding cache (key {spec.key()}): {n_written} of '
        f'{plan["num_records"]} images embedded, {len(bad)} unreadable, {len(fallbacks)} '
        f'without a detected face (fallback box), {len(no_face_skips)} left out for having none. '
        'Full settings in mir_cache.json.'
      ),
      metadata=tfds.core.MetadataDict(mir=info),
    )
    # Written last: its presence is what `key.is_complete` checks.
    _write_json(directory / key.INFO_FILE, info)
    logging.info(
      'Cache complete: %s (%d embedded, %d bad images, %d detection fallbacks)',
      directory,
      n_written,
      len(bad),
      len(fallbacks),
    )
