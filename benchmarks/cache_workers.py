r"""What the second core buys the real cache builder, and its memory: `mir_jax.embed` with 1 and 2 workers.

  python -m benchmarks.cache_workers --out=benchmarks/results/cache_workers.json --limit=512 --repeats=2

Builds the cache of the first --limit LFW images (whole identities, name order) into a fresh temporary
directory with --num_workers=1 and then 2, alternating --repeats times, each in its own process, exactly as
`python -m mir_jax.embed --dataset=lfw --backbone=<backbone> --limit=<limit>` does. Reports images/s from
the cache's own timing (embedding only, not start-up), the 2-worker / 1-worker ratio (median over repeats),
and the peak summed RSS of each run's process tree (main + workers), sampled every 0.2 s. The box may be
shared: the load average before and after is recorded.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from absl import app
from absl import flags

from benchmarks import machine
from mir_jax import paths

_OUT = flags.DEFINE_string('out', 'outputs/cache_workers.json', 'Where to write the JSON.')
_LIMIT = flags.DEFINE_integer('limit', 512, 'LFW images to embed per run.')
_REPEATS = flags.DEFINE_integer('repeats', 2, 'Runs per worker count (alternating).')
_BACKBONE = flags.DEFINE_string('backbone', 'dlib-resnet', 'Backbone to embed with.')


def _tree_rss_mb(pid: int) -> float:
  """Summed VmRSS of `pid` and all its descendants, in MiB."""
  total, todo = 0, [pid]
  while todo:
    p = todo.pop()
    try:
      with open(f'/proc/{p}/status') as f:
        total += next((int(l.split()[1]) for l in f if l.startswith('VmRSS:')), 0)
      with open(f'/proc/{p}/task/{p}/children') as f:
        todo += [int(c) for c in f.read().split()]
    except (OSError, ValueError):
      continue
  return total / 1024


def run_once(num_workers: int) -> dict:
  with tempfile.TemporaryDirectory() as data_dir:
    cmd = [sys.executable, '-m', 'mir_jax.embed', '--dataset=lfw', f'--backbone={_BACKBONE.value}',
           f'--limit={_LIMIT.value}', f'--num_workers={num_workers}', f'--data_dir={data_dir}']
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=paths.repo_root(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0.0]

    def sample():
      while proc.poll() is None:
        peak[0] = max(peak[0], _tree_rss_mb(proc.pid))
        time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    sampler.join()
    if proc.returncode:
      raise RuntimeError(f'{" ".join(cmd)} failed:\n{err[-2000:]}')
    (info_path,) = [os.path.join(r, f) for r, _, fs in os.walk(data_dir) for f in fs if f == 'mir_cache.json']
    with open(info_path) as f:
      info = json.load(f)
  seconds, n = info['seconds_embedding'], info['num_embedded']
  return {'num_workers': num_workers, 'images': n, 'seconds': seconds, 'images_per_s': n / seconds,
          'wall_seconds_incl_startup': time.perf_counter() - start, 'peak_tree_rss_mib': peak[0]}


def main(argv):
  del argv
  load_before = os.getloadavg()
  runs = []
  for _ in range(_REPEATS.value):
    for workers in (1, 2):
      runs.append(run_once(workers))
      print(json.dumps(runs[-1]), flush=True)
  rate = {w: statistics.median(r['images_per_s'] for r in runs if r['num_workers'] == w) for w in (1, 2)}
  result = {
      'command': ' '.join(sys.argv), 'machine': machine.basic_info(), 'load_before': load_before,
      'load_after': os.getloadavg(), 'runs': runs, 'median_images_per_s': rate,
      'second_core_speedup': rate[2] / rate[1],
      'peak_tree_rss_mib': max(r['peak_tree_rss_mib'] for r in runs),
  }
  machine.write_json(_OUT.value, result)
  print(f'1 worker {rate[1]:.2f} img/s, 2 workers {rate[2]:.2f} img/s: {result["second_core_speedup"]:.2f}x; '
        f'peak tree RSS {result["peak_tree_rss_mib"]:.0f} MiB -> {_OUT.value}')


if __name__ == '__main__':
  app.run(main)
