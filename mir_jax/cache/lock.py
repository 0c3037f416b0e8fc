"""One writer per cache directory: an advisory `flock` on `<cache>/_work/lock`.

Two `embed` runs of the same settings name the same directory. Without the lock both embed every image and
race on the shard files; with it the second waits, then finds the cache complete (or resumes what the first
left) and embeds nothing twice. The kernel drops a `flock` when its holder dies, so a killed run never leaves
a stale lock. `flock` is local to one machine: on NFS two hosts may both hold it (BUILD.md).
"""

import contextlib
import fcntl
import json
import os
import pathlib
import socket
import sys
import time

from absl import logging

from mir_jax.cache import key

LOCK_FILE = 'lock'


def _holder(path: pathlib.Path) -> str:
  try:
    h = json.loads(path.read_text() or '{}')
  except (OSError, ValueError):
    return 'another process'
  if not h:
    return 'another process'
  return f'process {h.get("pid")} on {h.get("host")} (since {h.get("since")}: {h.get("command")})'


@contextlib.contextmanager
def exclusive(directory: os.PathLike, *, wait: bool = True, poll_seconds: float = 1.0):
  """Holds the cache directory's writer lock for the body.

  Args:
    directory: the cache directory (`key.cache_dir`); its `_work` folder is created.
    wait: when another process holds the lock, wait for it (saying so once, on stderr and in the log);
      False raises `key.CacheError` naming the holder instead.
    poll_seconds: how often a waiting process retries.
  """
  work = pathlib.Path(directory) / key.WORK_DIR
  work.mkdir(parents=True, exist_ok=True)
  path = work / LOCK_FILE
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    said = False
    while True:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
      except BlockingIOError:
        holder = _holder(path)
        if not wait:
          raise key.CacheError(f'{directory} is being built by {holder}; wait for it to finish') from None
        if not said:
          message = f'another process is building {directory}: {holder}; waiting for it to finish'
          print(message, file=sys.stderr, flush=True)
          logging.warning(message)
          said = True
        time.sleep(poll_seconds)
    me = {
      'pid': os.getpid(),
      'host': socket.gethostname(),
      'since': time.strftime('%Y-%m-%dT%H:%M:%S'),
      'command': ' '.join(sys.argv)[:500],
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    try:
      yield
    finally:
      os.ftruncate(fd, 0)
      fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)
