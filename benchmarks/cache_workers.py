r"""What the second core buys the real cache builder, and its memory: `mir_jax.embed` with 1 and 2 workers,
under the local runner and (--runners=local,beam) under Beam's DirectRunner.

  python -m benchmarks.cache_workers --out=benchmarks/results/cache_workers.json --limit=512 --repeats=2
  # the Beam runner's images/s per worker (BUILD.md's cost model), against the local runner in the same run
  python -m benchmarks.cache_workers --out=benchmarks/results/beam_workers.json --limit=512 --repeats=2 \
      --runners=local,beam
  # all of LFW, the default 2 workers only: wall time, CPU and memory of the issue's whole-LFW run
  python -m benchmarks.cache_workers --out=benchmarks/results/embed_whole_lfw.json --limit=0 \
      --worker_counts=2 --repeats=1
  # the same with the JAX detector and backbone (the MTCNN-in-JAX issue's whole-LFW run)
  python -m benchmarks.cache_workers --out=benchmarks/results/embed_whole_lfw_mtcnn_jax.json --limit=0 \
      --worker_counts=2 --repeats=1 --backbone=dlib-resnet-jax --embed_flag=--aligner=mtcnn-jax

Builds the cache of the first --limit LFW images (whole identities, name order; 0 = all) into a fresh
temporary directory with each of --worker_counts, alternating --repeats times, each in its own process,
exactly as `python -m mir_jax.embed --dataset=lfw --backbone=<backbone> --limit=<limit>` does. Reports
images/s from the cache's own timing (embedding only, not start-up), wall time with start-up, CPU seconds
of the whole process tree, the 2-worker / 1-worker ratio (median over repeats), and the peak memory of
each run's process tree (main + workers) three ways. Under Beam (`--runner=beam`, the DirectRunner in
multi-processing mode with --direct_num_workers equal to the worker count) the chunks run in parallel, so the
cache's timing adds up to worker-seconds: `images_per_worker_s` (images over the summed chunk seconds) is one
worker's rate, and `images_per_s_incl_startup` (images over wall time) compares the runners as a user sees
them. Memory:
  peak_tree_rss_mib     summed RSS, sampled every 0.2 s; counts pages the processes share (the torch
                        and dlib libraries they all map) once per process;
  peak_tree_pss_mib     summed PSS, sampled every --pss_every s; splits each shared page among its
                        sharers, so it adds up to the memory the run really holds;
  peak_process_rss_mib  the largest single process's own peak RSS (the kernel's VmHWM, which no
                        sampling interval can miss): what one worker reached at its worst.
The measuring costs CPU on the same cores (reading PSS walks the page tables), so each run records the
sampler's CPU seconds too. The box may be shared: the load average before and after is recorded.
"""

import json
import math
import os
import resource
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

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('out', 'outputs/cache_workers.json', 'Where to write the JSON.')
  flags.DEFINE_integer('limit', 512, 'LFW images to embed per run; 0 = all 13,233.')
  flags.DEFINE_list('worker_counts', ['1', '2'], 'Values of --num_workers (Beam: of --direct_num_workers) to run.')
  flags.DEFINE_list('runners', ['local'], 'Values of mir_jax.embed --runner to run (local, beam).')
  flags.DEFINE_integer('repeats', 2, 'Runs per worker count (alternating).')
  flags.DEFINE_string('backbone', 'dlib-resnet', 'Backbone to embed with.')
  flags.DEFINE_multi_string(
    'embed_flag', [], 'A further mir_jax.embed flag for every run, e.g. --embed_flag=--aligner=mtcnn-jax.'
  )
  flags.DEFINE_string(
    'keep_cache',
    None,
    'Build the cache here and keep it, e.g. to compare its embeddings '
    'with another build (one run only); default: a temporary directory, deleted.',
  )
  flags.DEFINE_float('pss_every', 5.0, 'Seconds between PSS samples (RSS: every 0.2 s).')


def _tree_pids(pid: int) -> list:
  """`pid` and all its descendants (cheap: reads /proc/<p>/task/<p>/children)."""
  out, todo = [], [pid]
  while todo:
    p = todo.pop()
    out.append(p)
    try:
      with open(f'/proc/{p}/task/{p}/children') as f:
        todo += [int(c) for c in f.read().split()]
    except (OSError, ValueError):  # the process exited meanwhile
      continue
  return out


def _pss_mib(pid: int) -> float:
  """Proportional set size of one process, in MiB (0 once it is gone).

  smaps_rollup walks every page table of the process in the kernel, so it is read every --pss_every
  seconds only: at 5 reads a second for the whole tree it took 15% of a core away from the workers it
  measured (about 8 ms of system time per read of a ~1 GB torch worker).
  """
  try:
    with open(f'/proc/{pid}/smaps_rollup') as f:
      for line in f:
        if line.startswith('Pss:'):
          return int(line.split()[1]) / 1024
  except (OSError, ValueError, IndexError):
    pass
  return 0.0


def run_once(num_workers: int, runner: str = 'local') -> dict:
  with tempfile.TemporaryDirectory() as scratch:
    data_dir = FLAGS.keep_cache or scratch
    if FLAGS.keep_cache and os.path.exists(data_dir):
      raise FileExistsError(f'--keep_cache={data_dir} exists; a fresh directory is needed for a full build')
    cmd = [
      sys.executable,
      '-m',
      'mir_jax.embed',
      '--dataset=lfw',
      f'--backbone={FLAGS.backbone}',
      f'--num_workers={num_workers}',
      f'--data_dir={data_dir}',
    ]
    if FLAGS.limit:
      cmd.append(f'--limit={FLAGS.limit}')
    cmd += FLAGS.embed_flag
    if runner == 'beam':
      cmd += [
        '--runner=beam',
        '--beam_pipeline_options=--runner=DirectRunner,--direct_running_mode=multi_processing,'
        f'--direct_num_workers={num_workers}',
      ]
    cpu_before, own_before = _children_cpu_seconds(), _own_cpu_seconds()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=paths.repo_root(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {'rss': 0.0, 'pss': 0.0}
    hwm = {}  # pid -> its own peak RSS (the kernel's high-water mark), kept after it exits

    def sample():
      last_pss = -math.inf
      while proc.poll() is None:
        pids = _tree_pids(proc.pid)
        rss = 0.0
        for p in pids:
          status = machine.status_mib(p)
          rss += status['VmRSS']
          hwm[p] = max(hwm.get(p, 0.0), status['VmHWM'])
        peak['rss'] = max(peak['rss'], rss)
        if time.monotonic() - last_pss >= FLAGS.pss_every:
          last_pss = time.monotonic()
          peak['pss'] = max(peak['pss'], sum(_pss_mib(p) for p in pids))
        time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    sampler.join()
    cpu = _children_cpu_seconds() - cpu_before  # the embed process and every worker it waited for
    sampler_cpu = _own_cpu_seconds() - own_before  # what measuring took from the machine
    if proc.returncode:
      raise RuntimeError(f'{" ".join(cmd)} failed:\n{err[-2000:]}')
    (info_path,) = [os.path.join(r, f) for r, _, fs in os.walk(data_dir) for f in fs if f == 'mir_cache.json']
    with open(info_path) as f:
      info = json.load(f)
  seconds, n = info['seconds_embedding'], info['num_embedded']
  return {
    'runner': runner,
    'num_workers': num_workers,
    'images': n,
    # The summed chunk seconds: wall time of the local runner's embedding, worker-seconds under Beam.
    'seconds': seconds,
    'images_per_s': n / seconds if runner == 'local' else None,
    'images_per_worker_s': n / seconds if runner == 'beam' else n / seconds / num_workers,
    'images_per_s_incl_startup': n / wall,
    'wall_seconds_incl_startup': wall,
    'cpu_seconds': cpu,
    'cores_busy': cpu / wall,
    'peak_tree_rss_mib': peak['rss'],
    'peak_tree_pss_mib': peak['pss'],
    'peak_process_rss_mib': max(hwm.values(), default=0.0),
    'sampler_cpu_seconds': sampler_cpu,
  }


def _own_cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _children_cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def main(argv):
  del argv
  counts = [int(c) for c in FLAGS.worker_counts]
  if FLAGS.keep_cache and len(counts) * len(FLAGS.runners) * FLAGS.repeats > 1:
    raise app.UsageError('--keep_cache keeps one cache: use one --worker_counts and --runners value, --repeats=1')
  load_before = os.getloadavg()
  runs = []
  for _ in range(FLAGS.repeats):
    for runner in FLAGS.runners:
      for workers in counts:
        runs.append(run_once(workers, runner))
        print(json.dumps(runs[-1]), flush=True)
  median = lambda field, runner, w: statistics.median(
    r[field] for r in runs if r['num_workers'] == w and r['runner'] == runner
  )
  rate = {w: median('images_per_s', 'local', w) for w in counts} if 'local' in FLAGS.runners else {}
  result = {
    'command': ' '.join(sys.argv),
    'machine': machine.basic_info(),
    'load_before': load_before,
    'load_after': os.getloadavg(),
    'runs': runs,
    'median_images_per_s': rate,
    'median_images_per_s_incl_startup': {
      f'{runner}:{w}': median('images_per_s_incl_startup', runner, w) for runner in FLAGS.runners for w in counts
    },
    'median_images_per_worker_s': {
      f'{runner}:{w}': median('images_per_worker_s', runner, w) for runner in FLAGS.runners for w in counts
    },
    'peak_tree_rss_mib': max(r['peak_tree_rss_mib'] for r in runs),
    'peak_tree_pss_mib': max(r['peak_tree_pss_mib'] for r in runs),
    'peak_process_rss_mib': max(r['peak_process_rss_mib'] for r in runs),
  }
  summary = ', '.join(
    f'{k} {v:.2f} img/s incl. start-up ({result["median_images_per_worker_s"][k]:.2f} per worker)'
    for k, v in result['median_images_per_s_incl_startup'].items()
  )
  if 1 in rate and 2 in rate:
    result['second_core_speedup'] = rate[2] / rate[1]
    summary += f': {result["second_core_speedup"]:.2f}x'
  machine.write_json(FLAGS.out, result)
  print(
    f'{summary}; peak tree RSS {result["peak_tree_rss_mib"]:.0f} MiB, PSS {result["peak_tree_pss_mib"]:.0f} '
    f'MiB -> {FLAGS.out}'
  )


if __name__ == '__main__':
  define_flags()
  app.run(main)
