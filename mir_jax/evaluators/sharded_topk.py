"""Each probe's top-k cosine scores against a distractor set of any size, in JAX, sharded over devices.

The distractor side of MegaFace rank-1 (`identification.megaface_rank1(..., backend='jax')`), the one part
of the protocol that grows with the distractors. Memory stays bounded whatever their number: the host
feeds them one chunk at a time (a numpy memory map is read chunk by chunk), a chunk being up to
`blocks_per_call` fixed-size blocks per device; each device scans its own blocks, keeping a running top-k
per probe, and the per-device top-k are merged at the end. The last chunk is padded to whole blocks and its
padding scores -inf. The distractors are L2-normalised on the devices, so the host only copies rows.
"""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import numpy as np

from mir_jax.evaluators import identification

DEFAULT_DTYPE = np.float32
# Far below the numpy scan's bound: on a 2-core AMD EPYC, 3,530 probes x 20,000 512-D distractors took 1.7x
# (one device) to 2.4x (two) as long in 128 MiB score blocks as in 8 MiB ones, which stay in cache while
# they are reduced.
DEFAULT_BLOCK_BYTES = 1 << 23
_AXIS = 'blocks'


def top_distractor_scores(
  probes,
  distractors,
  max_rank: int,
  dtype=DEFAULT_DTYPE,
  block_bytes: int = DEFAULT_BLOCK_BYTES,
  blocks_per_call: int = 16,
  devices=None,
) -> np.ndarray:
  """The `max_rank` highest cosine scores of each probe against the distractors, descending.

  The same contract as `identification.top_distractor_scores`, computed on `devices`.

  Args:
    probes: (n, d) L2-normalised probe features.
    distractors: (m, d) features, not necessarily normalised; may be a memory map.
    max_rank: how many top scores to keep per probe.
    dtype: dtype of the score computation; float64 needs `jax_enable_x64`. Matmuls run at HIGHEST
      precision, so float32 stays float32 on GPUs too (their default is TF32).
    block_bytes: size bound of one probes x block score matrix, which sets the rows of a block.
    blocks_per_call: blocks each device scans per call; a call's chunk of distractors is
      len(devices) x blocks_per_call blocks.
    devices: the devices to shard over; None = `jax.devices()`.

  Returns:
    (n, max_rank) scores, descending along axis 1; padded with -inf when m < max_rank.

  Raises:
    ValueError: shapes that are not (n, d) and (m, d) of one d, a dtype JAX does not compute, or
      distractor rows with NaN or inf or norm 0 (how many, and the first one's index).
  """
  dtype = np.dtype(dtype)
  if jax.dtypes.canonicalize_dtype(dtype) != dtype:
    raise ValueError(f'JAX computes {dtype} only with jax_enable_x64 set; pass dtype=np.float32')
  probes = np.asarray(probes, dtype)
  if not isinstance(distractors, np.ndarray):  # a memory map is one, and is read chunk by chunk
    distractors = np.asarray(distractors)
  if probes.ndim != 2 or distractors.ndim != 2 or distractors.shape[1] != probes.shape[1]:
    raise ValueError(
      f'probes {probes.shape} and distractors {distractors.shape} must be (n, d) and (m, d) of the same d'
    )
  if max_rank < 1 or blocks_per_call < 1:
    raise ValueError(f'max_rank and blocks_per_call must be >= 1, got {max_rank} and {blocks_per_call}')
  mesh = Mesh(np.asarray(jax.devices() if devices is None else devices), (_AXIS,))
  num_devices = mesh.devices.size
  (n, d), m = probes.shape, distractors.shape[0]
  # A set smaller than the bound gets smaller blocks, so padding never outweighs the distractors.
  block_rows = max(1, min(block_bytes // (max(n, 1) * dtype.itemsize), -(-m // num_devices)))
  per_call = max(1, min(blocks_per_call, -(-m // (num_devices * block_rows))))
  sharded = NamedSharding(mesh, PartitionSpec(_AXIS))
  scan = _scan(mesh, max_rank)
  on_devices = jax.device_put(probes, NamedSharding(mesh, PartitionSpec()))
  top = jax.device_put(np.full((num_devices, n, max_rank), -np.inf, dtype), sharded)
  bad = jax.device_put(np.zeros(num_devices, np.int32), sharded)
  rows_per_call = num_devices * per_call * block_rows
  previous = None
  for start in range(0, m, rows_per_call):
    rows = min(rows_per_call, m - start)
    # The last chunk has as few blocks per device as hold its rows: at most two compiled shapes.
    blocks = per_call if rows == rows_per_call else -(-rows // (num_devices * block_rows))
    chunk = np.zeros((num_devices * blocks * block_rows, d), dtype)
    chunk[:rows] = distractors[start : start + rows]
    valid = np.clip(rows - block_rows * np.arange(num_devices * blocks), 0, block_rows).astype(np.int32)
    top, bad = scan(
      on_devices,
      top,
      bad,
      jax.device_put(chunk.reshape(num_devices, blocks, block_rows, d), sharded),
      jax.device_put(valid.reshape(num_devices, blocks), sharded),
    )
    # Dispatch is asynchronous: without this wait the host could queue chunk after chunk, and the memory
    # bound would be gone. One call runs while the next chunk is read.
    if previous is not None:
      previous.block_until_ready()
    previous = top
  if int(np.asarray(bad).sum()):
    identification.check_rows(distractors, 'distractor_features', dtype)
    raise AssertionError('the devices saw a NaN, inf or zero distractor row that the host check did not')
  per_device = np.concatenate(list(np.asarray(top)), axis=1)  # (n, num_devices * max_rank)
  return -np.sort(-per_device, axis=1)[:, :max_rank]


@functools.lru_cache(maxsize=None)
def _scan(mesh: Mesh, k: int):
  """jit(probes, top, bad, blocks, valid) -> (top, bad): every device folds its blocks into its own running
  top-k and its count of bad rows (NaN or inf, or norm 0) among the valid ones."""
  spec = PartitionSpec(_AXIS)

  def per_device(probes, top, bad, blocks, valid):
    def step(carry, block_and_valid):
      top, bad = carry
      block, num_valid = block_and_valid
      real = jnp.arange(block.shape[0]) < num_valid
      norms = jnp.linalg.norm(block, axis=1)
      usable = jnp.isfinite(block).all(axis=1) & (norms > 0)
      bad = bad + jnp.sum(real & ~usable).astype(bad.dtype)
      unit = block / jnp.where(real & usable, norms, 1)[:, None]
      scores = jnp.matmul(probes, unit.T, precision=jax.lax.Precision.HIGHEST)
      scores = jnp.where(real[None, :], scores, -jnp.inf)
      if k == 1:
        # The same value as top_k(k=1), without its cost: on a CPU top_k took as long as the matmul.
        top = jnp.maximum(top, scores.max(axis=1, keepdims=True))
      else:
        top = jax.lax.top_k(jnp.concatenate([top, scores], axis=1), k)[0]
      return (top, bad), None

    (top, bad), _ = jax.lax.scan(step, (top[0], bad[0]), (blocks[0], valid[0]))
    return top[None], bad[None]

  return jax.jit(
    jax.shard_map(per_device, mesh=mesh, in_specs=(PartitionSpec(), spec, spec, spec, spec), out_specs=(spec, spec))
  )
