"""What every benchmark records about where it ran, and the /proc plumbing they share."""

import json
import os
import pathlib
import platform
from typing import List


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo ('' where there is none)."""
  try:
    for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
      if line.startswith('model name'):
        return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def basic_info() -> dict:
  """Platform, Python, CPU and core counts; benchmarks add their libraries' versions."""
  return {
    'platform': platform.platform(),
    'python': platform.python_version(),
    'cpu_model': cpu_model(),
    'cpu_count': os.cpu_count(),
    'usable_cores': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else None,
  }


def xla_flags_with(extra: str) -> str:
  """This process's XLA_FLAGS with `extra` added, for a subprocess; a flag named in `extra` replaces the
  inherited one."""
  names = {f.split('=')[0] for f in extra.split()}
  kept = [f for f in os.environ.get('XLA_FLAGS', '').split() if f.split('=')[0] not in names]
  return ' '.join(kept + extra.split())


def child_pids() -> List[int]:
  """PIDs of this process's live children (e.g. dlib worker processes), read from /proc."""
  me, pids = os.getpid(), []
  for stat in pathlib.Path('/proc').glob('[0-9]*/stat'):
    try:
      fields = stat.read_text().rsplit(')', 1)[1].split()
    except OSError:
      continue
    if int(fields[1]) == me:
      pids.append(int(stat.parent.name))
  return pids


def status_mib(pid='self', fields=('VmRSS', 'VmHWM')) -> dict:
  """Memory fields of /proc/<pid>/status in MiB, e.g. VmRSS (resident now) and VmHWM (peak resident).

  Cheap (the kernel keeps these as counters). A process that is gone, or a field it lacks, reads 0.0.
  Not getrusage for peaks: Linux carries ru_maxrss across exec, so a spawned worker would report its
  parent's size at fork time.
  """
  out = dict.fromkeys(fields, 0.0)
  try:
    for line in pathlib.Path(f'/proc/{pid}/status').read_text().splitlines():
      key = line.split(':', 1)[0]
      if key in out:
        out[key] = int(line.split()[1]) / 1024
  except (OSError, ValueError, IndexError):
    pass
  return out


def write_json(path: str, report: dict) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(report, f, indent=1)
  print(f'wrote {path}')
