"""The worker processes of a cache build, and what keeps them from outliving their parent or its memory.

Each worker holds one `pipeline.RecordEmbedder`; the building process hands it tasks of a few records and
reads the results back in input order (`prepared_stream`).
"""

import concurrent.futures
import ctypes
import itertools
import math
import multiprocessing
import os
import time
from typing import Callable, Iterator, List, Optional, Sequence

from mir_jax import compilation_cache
from mir_jax.cache import pipeline as pipeline_lib
from mir_jax.datasets.records import FaceRecord

_WORKER: Optional[pipeline_lib.RecordEmbedder] = None
# Tasks (of `task_size` images) per worker before the pool is replaced by a fresh one; see prepared_stream.
# With _work's trimming a worker's memory stays near its working set between tasks, so this is a backstop,
# not a routine.
WORKER_MAX_TASKS = 256
# A worker above this resident size after a task gives its freed heap back (see _work).
TRIM_ABOVE_MIB = 1024


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


def start_worker(pipeline: pipeline_lib.Pipeline) -> pipeline_lib.RecordEmbedder:
  """What every worker process of a cache build does once before it embeds, whichever runner started it
  (this module's pool or Beam's `EmbedChunk.setup`); returns its embedder."""
  compilation_cache.enable()
  # Each worker is one of several processes sharing the cores; letting torch/BLAS spawn a thread per core
  # in every one of them oversubscribes the machine. One torch thread also fixes FaceNet's last bits, so
  # every runner's workers compute the same embeddings.
  for var in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS'):
    os.environ[var] = '1'
  embedder = pipeline_lib.RecordEmbedder(pipeline, embed=True)
  try:
    import torch  # pylint: disable=g-import-not-at-top

    torch.set_num_threads(1)
  except ImportError:
    pass
  return embedder


def _init_worker(pipeline: pipeline_lib.Pipeline, parent_pid: Optional[int] = None) -> None:
  if parent_pid is not None:
    _exit_with_parent(parent_pid)
  global _WORKER
  _WORKER = start_worker(pipeline)


def _release_freed_memory() -> Callable[[], None]:
  """glibc's malloc_trim(0), or a no-op where the C library has none (musl, macOS)."""
  try:
    trim = ctypes.CDLL(None).malloc_trim
  except (OSError, AttributeError):
    return lambda: None
  trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
  return lambda: trim(0)


_TRIM = _release_freed_memory()


def _resident_mib() -> float:
  try:
    with open('/proc/self/statm') as f:
      return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20
  except (OSError, ValueError, IndexError):  # no /proc: trim every time
    return math.inf


def _work(records: Sequence[FaceRecord]) -> List[pipeline_lib.Prepared]:
  out = _WORKER(records)
  # MTCNN's tensors change size every batch and glibc keeps the freed pages, so a worker's RSS grows
  # without bound over a long run. Trimming holds it near its working set, but the pages it returns are
  # faulted in again by the next batch, so it runs only once the worker has grown past TRIM_ABOVE_MIB
  # rather than after every task. (On LFW, MTCNN's working set lifts a worker past the threshold after
  # most tasks anyway; DEVELOPING.md, "Embedding speed and memory", has the measurements.)
  if _resident_mib() > TRIM_ABOVE_MIB:
    _TRIM()
  return out


def prepared_stream(
  records: Sequence[FaceRecord],
  pipeline: pipeline_lib.Pipeline,
  embedder: Optional[pipeline_lib.RecordEmbedder],
  num_workers: int,
  task_size: int,
) -> Iterator[pipeline_lib.Prepared]:
  """Prepared records in input order; with workers, a bounded window of tasks runs ahead of the consumer.

  Args:
    records: the records to prepare.
    pipeline: what each worker builds its `RecordEmbedder` from.
    embedder: the `RecordEmbedder` of this process, used when `num_workers <= 0`.
    num_workers: worker processes; 0 runs everything in this process.
    task_size: records handed to a worker at once.
  """
  tasks = [records[i : i + task_size] for i in range(0, len(records), task_size)]
  if num_workers <= 0:
    for t in tasks:
      yield from embedder(t)
    return
  # A worker's resident memory creeps up over thousands of MTCNN batches (DEVELOPING.md), so the workers are
  # replaced after about WORKER_MAX_TASKS tasks each. Replacement is by whole pools, one after another:
  # ProcessPoolExecutor(max_tasks_per_child=...) deadlocks on Python 3.11 (fixed only in later releases)
  # once a worker retires with tasks still queued (CPython gh-115634), and a drained pool's workers are
  # gone before the next pool starts, so old and new workers never hold memory at the same time.
  per_pool = max(1, num_workers * WORKER_MAX_TASKS)
  for start in range(0, len(tasks), per_pool):
    yield from _pool_stream(tasks[start : start + per_pool], pipeline, num_workers)


def _pool_stream(
  tasks: Sequence[Sequence[FaceRecord]], pipeline: pipeline_lib.Pipeline, num_workers: int
) -> Iterator[pipeline_lib.Prepared]:
  """Runs `tasks` on one fresh pool of worker processes, yielding their records in input order."""
  # spawn, not fork: the parent may hold threads (torch, grain, JAX) that fork would copy mid-lock.
  ctx = multiprocessing.get_context('spawn')
  with concurrent.futures.ProcessPoolExecutor(
    num_workers, mp_context=ctx, initializer=_init_worker, initargs=(pipeline, os.getpid())
  ) as pool:
    window = 2 * num_workers + 2  # enough to keep every worker busy, bounded so memory stays flat
    it = iter(tasks)
    pending = [pool.submit(_work, t) for t in itertools.islice(it, window)]
    while pending:
      result = pending.pop(0).result()
      nxt = next(it, None)
      if nxt is not None:
        pending.append(pool.submit(_work, nxt))
      yield from result
