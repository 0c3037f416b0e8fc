"""Checking a cache's shards against what was written, and marking the damaged ones for recomputation.

A shard is damaged when it is missing, holds another number of records than its chunk statistics say, fails
to read back (array_record's own block hashes), or no longer has the sha256 recorded when it was written.
The digest matters: array_record hashes its block headers and record data, not the rest of the file, so a
flipped byte in a shard's padding or its first block reads back without an error (`tests/cache_test.py`
flips one of each). Caches written before the digest was recorded are checked by reading every record.

`invalidate` removes the damaged shards, their statistics and the completion markers, so the next build
(`python -m mir_jax.embed ... --verify`, or `writer.build(verify=True)`) recomputes exactly those chunks.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
from typing import List, Optional

from mir_jax.cache import key


@dataclasses.dataclass(frozen=True)
class Damage:
  chunk: int
  shard: pathlib.Path
  reason: str

  def __str__(self) -> str:
    return f'{self.shard.name}: {self.reason}'


def file_sha256(path: os.PathLike) -> str:
  with open(path, 'rb') as f:
    return hashlib.file_digest(f, 'sha256').hexdigest()


def chunk_stats_path(directory: pathlib.Path, c: int) -> pathlib.Path:
  return directory / key.WORK_DIR / f'chunk-{c:05d}.json'


def _read_all(path: pathlib.Path) -> int:
  """Reads every record of an array_record file (raising on a hash mismatch); returns how many."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  reader = array_record_module.ArrayRecordReader(os.fspath(path))
  try:
    n = int(reader.num_records())
    if n:
      reader.read_all()
    return n
  finally:
    reader.close()


def check_chunk(directory: pathlib.Path, plan: dict, c: int, complete: bool) -> Optional[Damage]:
  """The damage of chunk `c`'s shard, or None when it is intact (or, in a cache still being built, was never
  finished: nothing to check yet)."""
  shard = key.shard_path(directory, plan['name'], c, plan['num_chunks'])
  stats_path = chunk_stats_path(directory, c)
  if not stats_path.is_file():
    # A complete cache had statistics for every chunk: without them nothing vouches for the shard.
    return Damage(c, shard, f'its statistics {key.WORK_DIR}/{stats_path.name} are missing') if complete else None
  try:
    stats = json.loads(stats_path.read_text())
  except ValueError as e:
    return Damage(c, shard, f'its statistics {stats_path.name} do not parse ({e})')
  if not shard.is_file():
    return Damage(c, shard, 'the shard is missing')
  digest = stats.get('sha256')
  if digest is not None and file_sha256(shard) != digest:
    return Damage(c, shard, 'its sha256 differs from the one recorded when it was written')
  try:
    n = _read_all(shard)
  except Exception as e:  # pylint: disable=broad-except
    # array_record raises RuntimeError with Riegeli's message (e.g. "block header hash mismatch").
    return Damage(c, shard, f'it does not read back: {str(e).splitlines()[0] if str(e) else type(e).__name__}')
  if n != stats['num_written']:
    return Damage(c, shard, f'it holds {n} records, its statistics say {stats["num_written"]}')
  return None


def read_plan(directory: pathlib.Path) -> dict:
  """The build's plan (shard name and count, the command): `_work/plan.json`, else the copy of it in
  `mir_cache.json` (a cache copied without its `_work` folder)."""
  for path in (directory / key.WORK_DIR / 'plan.json', directory / key.INFO_FILE):
    try:
      return json.loads(path.read_text())
    except (OSError, ValueError):
      continue
  raise key.CacheError(f'{directory} has neither {key.WORK_DIR}/plan.json nor {key.INFO_FILE}: not an embedding cache')


def check(directory: os.PathLike) -> List[Damage]:
  """Every damaged shard of a (complete or partial) cache directory."""
  directory = pathlib.Path(directory)
  plan = read_plan(directory)
  complete = key.is_complete(directory)
  return [d for c in range(plan['num_chunks']) if (d := check_chunk(directory, plan, c, complete)) is not None]


def invalidate(directory: os.PathLike, damaged: List[Damage]) -> None:
  """Makes the next build recompute exactly the `damaged` chunks: the cache reads as incomplete until then."""
  directory = pathlib.Path(directory)
  if not damaged:
    return
  # Completion markers first: from here on no reader trusts the directory.
  for name in (key.INFO_FILE, 'dataset_info.json'):
    (directory / name).unlink(missing_ok=True)
  for d in damaged:
    chunk_stats_path(directory, d.chunk).unlink(missing_ok=True)
    d.shard.unlink(missing_ok=True)


def repair_command(directory: pathlib.Path) -> str:
  """The command that recomputes a cache's damaged shards, as recorded when it was built."""
  try:
    command = read_plan(directory).get('command')
  except (key.CacheError, ValueError):
    command = None
  if command:
    return command if ' --verify' in command else command + ' --verify'
  return 'the `python -m mir_jax.embed` command that built it, with --verify added'
