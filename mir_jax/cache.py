"""The embedding cache: face embeddings stored as a TFDS dataset in array_record format.

Embedding a face dataset is the slow step of every experiment (minutes for LFW, hours for MegaFace), so it
runs once per (dataset, reader options, backbone, alignment) and every later step reads the cache.

Layout, under a data dir (default `<repo>/data_cache`, see `mir_jax.embed`):

  <data_dir>/<name>/1.0.0/
    <name>-full.array_record-00000-of-000NN ...   one shard per chunk of images (TFDS's file names)
    dataset_info.json, features.json, metadata.json   TFDS metadata, written once every shard exists
    mir_cache.json        what was embedded, how (key inputs), counts, timings
    skipped_images.json   images that could not be decoded (path + reason) and detection fallbacks
    _work/plan.json       the fixed chunking of this run (record order, chunk size, number of chunks)
    _work/chunk-000NN.json  per-chunk statistics, written just before the chunk's shard is renamed into place

`<name>` is `<dataset>_<backbone>_<key>` where `key` hashes everything that changes the embeddings: the
dataset name and reader options (which images), the backbone's `config_key()` (which network and input
preprocessing), the aligner's `config_key()` (which boxes), the flip option and `FORMAT_VERSION` (how
records are laid out). Changing any of them names a different directory, so stale shards are never reused.

Resumability: the records are sorted by image id and cut into fixed chunks whose number is decided before
the first shard is written, so shard names (`-0000i-of-0000n`) never change. Each chunk is written under a
temporary name, fsync'ed and renamed; a restart re-checks each existing shard's record count against its
chunk statistics and recomputes only the chunks that are missing or incomplete. The TFDS metadata is
written last, so a directory with `dataset_info.json` is always complete.

Reading needs neither TensorFlow nor JAX: `load_embeddings` goes through `tfds.builder_from_directory(...)
.as_data_source()`, and the same source plugs into grain (`grain.MapDataset.source(...)`).
"""

import concurrent.futures
import ctypes
import dataclasses
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import pathlib
import re
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from absl import logging
import numpy as np

from mir_jax.backbones.base import Detection
from mir_jax.datasets.records import FaceRecord

# Bump when the record layout or the meaning of a stored field changes: old caches then get a new key.
FORMAT_VERSION = 1
# The single TFDS split holding every image; experiments carve their own train/test splits from it.
SPLIT = 'full'
VERSION = '1.0.0'
DEFAULT_CHUNK_SIZE = 256
DEFAULT_BATCH_SIZE = 32
_WORK = '_work'
_INFO = 'mir_cache.json'
_SKIPPED = 'skipped_images.json'


class CacheError(RuntimeError):
  """A cache directory that is missing, incomplete, or inconsistent with the requested run."""


# ----------------------------------------------------------------------------------------------------------
# Keying.


def _canonical(obj: Any) -> Any:
  """JSON-stable form of config values (tuples -> lists, numpy scalars -> Python)."""
  if isinstance(obj, dict):
    return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
  if isinstance(obj, (list, tuple)):
    return [_canonical(v) for v in obj]
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, (str, int, float, bool)) or obj is None:
    return obj
  if isinstance(obj, os.PathLike):
    return os.fspath(obj)
  raise TypeError(f'cannot key a cache on {type(obj).__name__} value {obj!r}; use JSON-like values')


@dataclasses.dataclass(frozen=True)
class CacheSpec:
  """Everything that decides what a cache holds; its hash names the cache directory.

  Attributes:
    dataset: dataset name, e.g. 'lfw'.
    reader_options: options that select the images (subset, limit, ...); not the data location, so a moved
      copy of the same data hits the same cache.
    backbone_config: the backbone's `config_key()`.
    align_config: the aligner's `config_key()`.
    flip: whether the embedding of the horizontally mirrored face is stored too.
  """
  dataset: str
  reader_options: Dict[str, Any]
  backbone_config: Dict[str, Any]
  align_config: Dict[str, Any]
  flip: bool = False

  def as_dict(self) -> Dict[str, Any]:
    return _canonical({
        'format_version': FORMAT_VERSION,
        'dataset': self.dataset,
        'reader_options': self.reader_options,
        'backbone_config': self.backbone_config,
        'align_config': self.align_config,
        'flip': self.flip,
    })

  def key(self) -> str:
    blob = json.dumps(self.as_dict(), sort_keys=True, separators=(',', ':'))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]

  def name(self) -> str:
    backbone = self.backbone_config.get('backbone') or self.backbone_config.get('name') or 'backbone'
    # TFDS dataset names are lower-case identifiers; file names are built from them.
    return _slug(f'{self.dataset}_{backbone}') + '_' + self.key()


def _slug(text: str) -> str:
  return re.sub(r'[^a-z0-9]+', '_', text.lower()).strip('_')


def cache_dir(data_dir: os.PathLike, spec: CacheSpec) -> pathlib.Path:
  """`<data_dir>/<name>/<version>`: where `spec`'s cache lives (whether or not it exists yet)."""
  return pathlib.Path(data_dir) / spec.name() / VERSION


def is_complete(directory: os.PathLike) -> bool:
  d = pathlib.Path(directory)
  return (d / 'dataset_info.json').is_file() and (d / _INFO).is_file()


# ----------------------------------------------------------------------------------------------------------
# Per-image work (runs in worker processes).


@dataclasses.dataclass(frozen=True)
class Pipeline:
  """The per-image work, as picklable factories so that worker processes can build their own copies.

  Attributes:
    backbone_factory: () -> Backbone; called once per process.
    aligner_factory: () -> an object with `detect_batch(images) -> [Detection]` and `config_key()`.
    load_fn: path -> uint8 HxWx3 RGB, raising `ImageError` (a ValueError) for bad files.
    flip: also prepare the mirrored face for a second embedding.
  """
  backbone_factory: Callable[[], Any]
  aligner_factory: Callable[[], Any]
  load_fn: Optional[Callable[[str], np.ndarray]] = None
  flip: bool = False


@dataclasses.dataclass
class Prepared:
  """One record after decoding, detection and backbone preprocessing; `error` set when it failed."""
  image_id: str
  inputs: Optional[np.ndarray] = None
  flipped: Optional[np.ndarray] = None
  detected: bool = False
  box: Optional[np.ndarray] = None
  error: Optional[str] = None
  # Set (and inputs dropped) when the worker embedded the record itself (`Backbone.embed_in_workers`).
  embedding: Optional[np.ndarray] = None
  embedding_flip: Optional[np.ndarray] = None


def mirror_detection(detection: Detection, width: int) -> Detection:
  """The same detection in the horizontally mirrored image.

  MTCNN's five landmarks are (left eye, right eye, nose, left mouth corner, right mouth corner) as seen in
  the image; mirroring swaps the sides, so the pairs are swapped back to keep that order.
  """
  x1, y1, x2, y2 = np.asarray(detection.box, np.float64)
  box = np.array([width - x2, y1, width - x1, y2])
  landmarks = None
  if detection.landmarks is not None:
    lm = np.asarray(detection.landmarks, np.float64).copy()
    lm[:, 0] = width - lm[:, 0]
    landmarks = lm[[1, 0, 2, 4, 3]]
  return Detection(box=box, landmarks=landmarks, detected=detection.detected)


class Preparer:
  """Decodes, detects and preprocesses records; one per process."""

  def __init__(self, pipeline: Pipeline, backbone=None, aligner=None, embed: bool = False):
    self.pipeline = pipeline
    self.backbone = backbone if backbone is not None else pipeline.backbone_factory()
    self.embed = embed and getattr(self.backbone, 'embed_in_workers', False)
    self.aligner = aligner if aligner is not None else pipeline.aligner_factory()
    if pipeline.load_fn is None:
      from mir_jax import images  # pylint: disable=g-import-not-at-top
      self.load_fn = images.load_rgb
    else:
      self.load_fn = pipeline.load_fn

  def __call__(self, records: Sequence[FaceRecord]) -> List[Prepared]:
    out = [Prepared(r.image_id) for r in records]
    loaded, where = [], []
    for i, r in enumerate(records):
      try:
        loaded.append(self.load_fn(r.path))
        where.append(i)
      except ValueError as e:  # ImageError: a bad file is recorded and skipped, never fatal
        out[i].error = str(e) or type(e).__name__
    detections = self.aligner.detect_batch(loaded) if loaded else []
    for i, image, det in zip(where, loaded, detections):
      out[i].detected = bool(det.detected)
      out[i].box = np.asarray(det.box, np.float32).reshape(4)
      out[i].inputs = self.backbone.preprocess(image, det)
      if self.pipeline.flip:
        flip_input = getattr(self.backbone, 'flip_input', None)
        if flip_input is not None:
          out[i].flipped = flip_input(out[i].inputs)
        else:
          mirrored = np.ascontiguousarray(image[:, ::-1])
          out[i].flipped = self.backbone.preprocess(mirrored, mirror_detection(det, image.shape[1]))
    if self.embed and where:
      done = [out[i] for i in where]
      for p, e in zip(done, _embed_all(self.backbone, [p.inputs for p in done], len(done))):
        p.embedding, p.inputs = e, None
      if self.pipeline.flip:
        for p, e in zip(done, _embed_all(self.backbone, [p.flipped for p in done], len(done))):
          p.embedding_flip, p.flipped = e, None
    return out


_WORKER: Optional[Preparer] = None
# Tasks (of `task_size` images) per worker before the pool is replaced by a fresh one; see _prepared_stream.
# With _work's trimming a worker rests near 850 MB between tasks, so this is a backstop, not a routine.
WORKER_MAX_TASKS = 256


def _exit_with_parent(parent_pid: int, interval: float = 1.0) -> None:
  """Ends this worker once its parent is gone.

  A parent killed by SIGTERM/SIGKILL never shuts its pool down, and the workers would sleep forever on
  their task queue, each holding a network's memory; the kernel reparents them, which this notices.
  """
  import threading  # pylint: disable=g-import-not-at-top

  def watch():
    while True:
      time.sleep(interval)
      if os.getppid() != parent_pid:
        os._exit(1)  # pylint: disable=protected-access

  threading.Thread(target=watch, name='exit-with-parent', daemon=True).start()


def _init_worker(pipeline: Pipeline, parent_pid: Optional[int] = None) -> None:
  if parent_pid is not None:
    _exit_with_parent(parent_pid)
  # Each worker is one of `num_workers` processes sharing the cores; letting torch/BLAS spawn a thread per
  # core in every one of them oversubscribes the machine.
  for var in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS'):
    os.environ[var] = '1'
  global _WORKER
  _WORKER = Preparer(pipeline, embed=True)
  try:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(1)
  except ImportError:
    pass


def _release_freed_memory() -> Callable[[], None]:
  """glibc's malloc_trim(0), or a no-op where the C library has none (musl, macOS)."""
  try:
    trim = ctypes.CDLL(None).malloc_trim
  except (OSError, AttributeError):
    return lambda: None
  trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
  return lambda: trim(0)


_TRIM = _release_freed_memory()


# A worker above this resident size after a task gives its freed heap back (see _work).
TRIM_ABOVE_MIB = 1024


def _resident_mib() -> float:
  try:
    with open('/proc/self/statm') as f:
      return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20
  except (OSError, ValueError, IndexError):  # no /proc: trim every time
    return math.inf


def _work(records: Sequence[FaceRecord]) -> List[Prepared]:
  out = _WORKER(records)
  # MTCNN's tensors change size every batch and glibc keeps the freed pages, so a worker's RSS grows
  # without bound (2.7 GB over all of LFW). Trimming holds it near its working set (853 vs ~1,270 MB after
  # 400 LFW images in one worker), but the pages it returns are faulted in again by the next batch, so it
  # runs only once the worker has grown past TRIM_ABOVE_MIB rather than after every task. (On LFW, MTCNN's
  # 16-image working set lifts a worker from ~850 MB to 1.0-1.3 GB, so in practice it trims after most tasks;
  # BUILD.md.)
  if _resident_mib() > TRIM_ABOVE_MIB:
    _TRIM()
  return out


def _prepared_stream(records: Sequence[FaceRecord], pipeline: Pipeline, preparer: Optional[Preparer],
                     num_workers: int, task_size: int) -> Iterator[Prepared]:
  """Prepared records in input order; with workers, a bounded window of tasks runs ahead of the consumer."""
  tasks = [records[i:i + task_size] for i in range(0, len(records), task_size)]
  if num_workers <= 0:
    for t in tasks:
      yield from preparer(t)
    return
  # A worker's resident memory creeps up over thousands of MTCNN batches (one reached 2.7 GB over all of
  # LFW before _work trimmed the heap), so the workers are replaced after about WORKER_MAX_TASKS tasks
  # each. Replacement is by whole pools, one after another: ProcessPoolExecutor(max_tasks_per_child=...)
  # deadlocks on Python 3.11 (fixed only in later releases) once a worker retires with tasks still queued
  # (CPython gh-115634), and a drained pool's workers are gone before the next pool starts, so old and new
  # workers never hold memory at the same time.
  per_pool = max(1, num_workers * WORKER_MAX_TASKS)
  for start in range(0, len(tasks), per_pool):
    yield from _pool_stream(tasks[start:start + per_pool], pipeline, num_workers)


def _pool_stream(tasks: Sequence[Sequence[FaceRecord]], pipeline: Pipeline,
                 num_workers: int) -> Iterator[Prepared]:
  """Runs `tasks` on one fresh pool of worker processes, yielding their records in input order."""
  # spawn, not fork: the parent may hold threads (torch, grain, JAX) that fork would copy mid-lock.
  ctx = multiprocessing.get_context('spawn')
  with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=ctx, initializer=_init_worker,
                                              initargs=(pipeline, os.getpid())) as pool:
    window = 2 * num_workers + 2  # enough to keep every worker busy, bounded so memory stays flat
    it = iter(tasks)
    pending = [pool.submit(_work, t) for t in itertools.islice(it, window)]
    while pending:
      result = pending.pop(0).result()
      nxt = next(it, None)
      if nxt is not None:
        pending.append(pool.submit(_work, nxt))
      yield from result


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


def _shard_path(directory: pathlib.Path, name: str, index: int, total: int) -> pathlib.Path:
  return directory / f'{name}-{SPLIT}.array_record-{index:05d}-of-{total:05d}'


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


def records_fingerprint(records: Sequence[FaceRecord]) -> str:
  """A digest of the image ids, identities, videos and roles a cache was built from, in any order."""
  h = hashlib.sha256()
  for r in sorted(records, key=lambda r: r.image_id):
    h.update(f'{r.image_id}\t{r.identity}\t{r.video_id or ""}\t{r.role or ""}\n'.encode())
  return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------
# Building.


@dataclasses.dataclass
class BuildResult:
  directory: pathlib.Path
  num_chunks: int
  chunks_computed: int
  chunks_reused: int
  seconds: float


def build(records: Sequence[FaceRecord],
          spec: CacheSpec,
          pipeline: Pipeline,
          *,
          data_dir: os.PathLike,
          backbone=None,
          chunk_size: int = DEFAULT_CHUNK_SIZE,
          batch_size: int = DEFAULT_BATCH_SIZE,
          num_workers: int = 2,
          task_size: int = 16,
          progress: bool = True,
          description: str = '') -> BuildResult:
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
  directory = cache_dir(data_dir, spec)
  name = spec.name()
  work = directory / _WORK
  if is_complete(directory):
    info = json.loads((directory / _INFO).read_text())
    if info.get('records_fingerprint') != records_fingerprint(records):
      raise CacheError(_changed_message(directory))
    logging.info('Cache %s is complete; nothing to do.', directory)
    return BuildResult(directory, info['num_chunks'], 0, info['num_chunks'], 0.0)
  work.mkdir(parents=True, exist_ok=True)

  plan_path = work / 'plan.json'
  fingerprint = records_fingerprint(records)
  if plan_path.is_file():
    plan = json.loads(plan_path.read_text())
    if plan['records_fingerprint'] != fingerprint or plan['num_records'] != len(records):
      raise CacheError(_changed_message(directory))
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
    }
    _write_json(plan_path, plan)
  num_chunks = plan['num_chunks']
  chunks = [records[i * chunk_size:(i + 1) * chunk_size] for i in range(num_chunks)]
  names = sorted({r.identity for r in records})

  done, todo = [], []
  for c in range(num_chunks):
    (done if _chunk_done(directory, name, c, num_chunks) else todo).append(c)
  if done:
    logging.info('Resuming %s: %d of %d chunks already complete.', directory, len(done), num_chunks)

  if todo:
    _run_chunks(directory, name, chunks, todo, names, spec, pipeline, backbone, batch_size, num_workers,
                task_size, progress)
  _finalize(directory, name, chunks, names, spec, plan, backbone, pipeline, description)
  return BuildResult(directory, num_chunks, len(todo), len(done), time.time() - started)


def _changed_message(directory: pathlib.Path) -> str:
  return (f'{directory} was started on a different list of images (the dataset changed on disk since). '
          'Delete that directory to rebuild it.')


def _chunk_stats_path(directory: pathlib.Path, c: int) -> pathlib.Path:
  return directory / _WORK / f'chunk-{c:05d}.json'


def _chunk_done(directory: pathlib.Path, name: str, c: int, total: int) -> bool:
  stats_path = _chunk_stats_path(directory, c)
  if not stats_path.is_file():
    return False
  try:
    stats = json.loads(stats_path.read_text())
  except ValueError:
    return False
  return _num_records(_shard_path(directory, name, c, total)) == stats['num_written']


def _run_chunks(directory, name, chunks, todo, names, spec, pipeline, backbone, batch_size, num_workers,
                task_size, progress):
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  import tqdm  # pylint: disable=g-import-not-at-top

  preparer = None
  if num_workers <= 0:
    preparer = Preparer(pipeline, backbone=backbone)
    backbone = preparer.backbone
  elif backbone is None:
    backbone = pipeline.backbone_factory()
  features = None
  label_of = {n: i for i, n in enumerate(names)}
  work_records = [r for c in todo for r in chunks[c]]
  total = sum(len(c) for c in chunks)
  bar = tqdm.tqdm(total=total, initial=total - len(work_records), unit='img', disable=not progress,
                  desc=f'embedding {spec.dataset}', smoothing=0.1, dynamic_ncols=True)
  stream = _prepared_stream(work_records, pipeline, preparer, num_workers, task_size)
  try:
    for c in todo:
      chunk_started = time.time()
      chunk = chunks[c]
      prepared = [next(stream) for _ in chunk]
      waited = time.time() - chunk_started
      ok = [p for p in prepared if p.error is None]
      if ok and all(p.embedding is not None for p in ok):  # the workers ran the backbone
        embeddings = np.stack([p.embedding for p in ok])
        flipped = np.stack([p.embedding_flip for p in ok]) if spec.flip else None
      else:
        embeddings = _embed_all(backbone, [p.inputs for p in ok], batch_size)
        flipped = _embed_all(backbone, [p.flipped for p in ok], batch_size) if spec.flip else None
      embedded = time.time() - chunk_started - waited
      if features is None:
        dim = int(embeddings.shape[1]) if len(ok) else int(backbone.dim)
        features = features_for(dim, names, spec.flip)
      by_id = {r.image_id: r for r in chunk}
      final = _shard_path(directory, name, c, len(chunks))
      tmp = directory / _WORK / (final.name + '.tmp')
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
          'chunk': c,
          'num_records': len(chunk),
          'num_written': len(ok),
          'first_image_id': chunk[0].image_id,
          'last_image_id': chunk[-1].image_id,
          'bad_images': [{'image_id': p.image_id, 'path': by_id[p.image_id].path, 'reason': p.error}
                         for p in prepared if p.error is not None],
          'fallbacks': [p.image_id for p in ok if not p.detected],
          'seconds': time.time() - chunk_started,
          # Where this process spent the chunk: waiting for decoded/detected inputs vs running the
          # backbone; the larger one is the pipeline's bottleneck.
          'seconds_waiting_for_inputs': waited,
          'seconds_in_backbone': embedded,
          'num_workers': num_workers,
      }
      # Statistics first, shard second: a shard is only trusted when its statistics exist and agree.
      _write_json(_chunk_stats_path(directory, c), stats)
      os.replace(tmp, final)
      _fsync_dir(directory)
      bar.update(len(chunk))
  finally:
    bar.close()
    stream.close()


def _embed_all(backbone, inputs: List[np.ndarray], batch_size: int) -> np.ndarray:
  if not inputs:
    return np.zeros((0, int(backbone.dim)), np.float32)
  out = [np.asarray(backbone.embed(inputs[i:i + batch_size]), np.float32)
         for i in range(0, len(inputs), batch_size)]
  x = np.concatenate(out)
  if x.shape[0] != len(inputs):
    raise RuntimeError(f'backbone returned {x.shape[0]} embeddings for {len(inputs)} inputs')
  return x


def _finalize(directory, name, chunks, names, spec, plan, backbone, pipeline, description):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  num_chunks = len(chunks)
  stats = [json.loads(_chunk_stats_path(directory, c).read_text()) for c in range(num_chunks)]
  for c, s in enumerate(stats):
    n = _num_records(_shard_path(directory, name, c, num_chunks))
    if n != s['num_written']:
      raise CacheError(f'chunk {c} of {directory} holds {n} records, its statistics say {s["num_written"]}')
  dim = spec.backbone_config.get('dim')
  if dim is None:
    dim = int((backbone or pipeline.backbone_factory()).dim)
  features = features_for(int(dim), names, spec.flip)
  shard_lengths = [s['num_written'] for s in stats]
  num_bytes = sum(_shard_path(directory, name, c, num_chunks).stat().st_size for c in range(num_chunks))
  bad = [b for s in stats for b in s['bad_images']]
  fallbacks = [f for s in stats for f in s['fallbacks']]
  n_written = sum(shard_lengths)
  info = {
      **plan,
      'directory': os.fspath(directory),
      'split': SPLIT,
      'num_embedded': n_written,
      'num_bad_images': len(bad),
      'num_detection_fallbacks': len(fallbacks),
      'num_identities': len(names),
      'embedding_dim': int(dim),
      'seconds_embedding': sum(s['seconds'] for s in stats),
      'completed_at': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
  }
  _write_json(directory / _SKIPPED, {'bad_images': bad, 'detection_fallbacks': fallbacks})
  text = description or f'{spec.dataset} embedded with {spec.backbone_config}'
  tfds.folder_dataset.write_metadata(
      data_dir=directory,
      features=features,
      split_infos=[tfds.core.SplitInfo(name=SPLIT, shard_lengths=shard_lengths, num_bytes=num_bytes,
                                       filename_template=None)],
      check_data=False,
      description=(f'{text}\n\nmir-jax embedding cache (key {spec.key()}): {n_written} of '
                   f'{plan["num_records"]} images embedded, {len(bad)} unreadable, {len(fallbacks)} '
                   'without a detected face (centre-box fallback). Full settings in mir_cache.json.'),
      metadata=tfds.core.MetadataDict(mir=info),
  )
  # Written last: its presence is what `is_complete` checks.
  _write_json(directory / _INFO, info)
  logging.info('Cache complete: %s (%d embedded, %d bad images, %d detection fallbacks)', directory,
               n_written, len(bad), len(fallbacks))


# ----------------------------------------------------------------------------------------------------------
# Reading.


def resolve(source: os.PathLike, data_dir: Optional[os.PathLike] = None) -> pathlib.Path:
  """The TFDS dataset directory named by `source`.

  Args:
    source: a dataset directory (`.../<name>/1.0.0`), its parent (`.../<name>`), a cache name, or a key
      (looked up under `data_dir`).
    data_dir: where to look up names and keys.

  Returns:
    The directory holding `dataset_info.json`.

  Raises:
    CacheError: nothing complete matches.
  """
  p = pathlib.Path(source)
  candidates = [p, p / VERSION]
  if data_dir is not None and not p.is_absolute():
    root = pathlib.Path(data_dir)
    candidates += [root / p / VERSION]
    if root.is_dir():
      candidates += sorted(d / VERSION for d in root.iterdir() if d.name.endswith('_' + str(source)))
  for c in candidates:
    if is_complete(c):
      return c
  for c in candidates:
    if (c / _WORK / 'plan.json').is_file():
      raise CacheError(f'{c} is incomplete (an interrupted run); rerun the same embed command to finish it.')
  raise CacheError(f'no complete embedding cache found for {source!r}'
                   + (f' under {data_dir}' if data_dir else ''))


def data_source(source: os.PathLike, data_dir: Optional[os.PathLike] = None):
  """The random-access TFDS data source of a cache (usable directly or via `grain.MapDataset.source`)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  directory = resolve(source, data_dir)
  return tfds.builder_from_directory(os.fspath(directory)).as_data_source()[SPLIT]


def read_info(source: os.PathLike, data_dir: Optional[os.PathLike] = None) -> Dict[str, Any]:
  """The cache's `mir_cache.json` plus its skipped-images sidecar under 'skipped'."""
  directory = resolve(source, data_dir)
  info = json.loads((directory / _INFO).read_text())
  info['skipped'] = json.loads((directory / _SKIPPED).read_text())
  return info


def _text(v) -> str:
  return v.decode('utf-8') if isinstance(v, bytes) else str(v)


def load_embeddings(source: os.PathLike,
                    data_dir: Optional[os.PathLike] = None) -> Tuple[np.ndarray, np.ndarray, Dict[str, Any]]:
  """Reads a whole cache into memory.

  Args:
    source: see `resolve`.
    data_dir: see `resolve`.

  Returns:
    (x, labels, meta): float32 (n, dim) embeddings, int64 (n,) labels indexing `meta['names']`, and a dict
    with per-row `image_ids`, `identities`, `video_ids` (None for stills), `roles` (None when unused),
    `detected` (bool array), `boxes` (float32 (n, 4) face boxes), `embeddings_flip` (float32 (n, dim) or
    None), plus `names` (all class names),
    `info` (mir_cache.json + skipped images) and `directory`.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  directory = resolve(source, data_dir)
  builder = tfds.builder_from_directory(os.fspath(directory))
  ds = builder.as_data_source()[SPLIT]
  n = len(ds)
  rows = ds.__getitems__(list(range(n))) if n else []
  dim = builder.info.features['embedding'].shape[0]
  x = np.stack([r['embedding'] for r in rows]).astype(np.float32) if n else np.zeros((0, dim), np.float32)
  labels = np.asarray([r['label'] for r in rows], np.int64)
  flip = None
  if 'embedding_flip' in builder.info.features:
    flip = np.stack([r['embedding_flip'] for r in rows]).astype(np.float32) if n else x.copy()
  meta = {
      'names': list(builder.info.features['label'].names),
      'image_ids': [_text(r['image_id']) for r in rows],
      'identities': [_text(r['identity']) for r in rows],
      'video_ids': [_text(r['video_id']) or None for r in rows],
      'roles': [_text(r['role']) or None for r in rows],
      'detected': np.asarray([bool(r['detected']) for r in rows], bool),
      'boxes': (np.stack([r['box'] for r in rows]).astype(np.float32) if n else np.zeros((0, 4), np.float32)),
      'embeddings_flip': flip,
      'info': read_info(directory),
      'directory': directory,
  }
  return x, labels, meta
