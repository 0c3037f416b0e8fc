"""mir-jax: a JAX/Flax reproducibility suite for "MIR: Multi-task Intra-Representation Learning for Face
Classification" (Cheng, Xu, Wang).

Data flows one way: images -> aligned faces -> embeddings (cached as TFDS shards) -> head -> metrics ->
tables/figures.
"""

import os as _os
import sys as _sys

# The training engine shards independent runs across devices. On a CPU, XLA gives one device one core for
# this workload (a second intra-op thread does not add runs/s; DEVELOPING.md), so each core is made a
# device before JAX starts. Set XLA_FLAGS yourself to choose otherwise; a JAX imported earlier keeps its own.
if 'jax' not in _sys.modules and 'xla_force_host_platform_device_count' not in _os.environ.get('XLA_FLAGS', ''):
  _os.environ['XLA_FLAGS'] = (
    _os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count='
    f'{len(_os.sched_getaffinity(0)) if hasattr(_os, "sched_getaffinity") else _os.cpu_count() or 1}'
  ).strip()
