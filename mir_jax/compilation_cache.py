"""JAX's persistent compilation cache, for the processes that build embedding caches.

A cache build starts fresh processes: its workers, a new pool of them every few thousand images
(`cache.workers.WORKER_MAX_TASKS`), and Beam's. Without a persistent cache each compiles mtcnn-jax's
programs and the JAX backbones' anew, and so do the larger-capacity programs of any image the detector
retries; with it they are compiled once per machine and read back (benchmarks/mtcnn_startup.py). Only the
embedding path turns it on, so that the training engine's compile counts and timings
(benchmarks/reproduce_compiles.py) measure what they say.
"""

from mir_jax import paths


def enable() -> None:
  """Keeps this process's compiled programs in $JAX_COMPILATION_CACHE_DIR when set, else in
  `<paths.user_cache_dir()>/xla`.

  Call it before the process compiles anything: JAX decides once per process, at its first compile,
  whether it uses the cache.
  """
  import jax  # pylint: disable=g-import-not-at-top

  if not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', str(paths.user_cache_dir() / 'xla'))
