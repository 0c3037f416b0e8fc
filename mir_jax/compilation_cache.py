"""JAX's persistent compilation cache, for the processes that build embedding caches.

A cache build starts fresh processes: its workers, replaced by a new pool every few thousand images
(`cache.workers.WORKER_MAX_TASKS`), and Beam's. Each used to compile mtcnn-jax's programs anew: on the
2-core AMD EPYC 14 s for the first batch, and about 11 s more for the larger-capacity programs of the
images detected again after an overflow (3 of the first 1,600 LFW images). Kept on disk, they are
compiled once per machine and read back in about 4 s. Only the embedding path turns the cache on, so the
training engine's compile counts and timings (`benchmarks/reproduce_compiles.py`) measure what they say.
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
