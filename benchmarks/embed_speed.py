r"""Throughput of face alignment and of each backbone on real LFW images, against a naive loop.

  python -m benchmarks.embed_speed --out=outputs/embed_speed.json --num_images=200

On --num_images LFW images (every k-th file of the sorted list, so many identities), timed in one
process, in this order:
  load       JPEG decode (mir_jax.images.load_rgb);
  align      MTCNN detection alone: one image per call, and batched (same-size LFW images) with
             torch using 2 threads and 1 thread;
  dlib       preprocess (5-point shape + face chip) and embed with 1 and 2 worker processes
             (the speed-up from the second core), plus the cost of jitter / flip options;
  pipeline   the whole dlib path, file -> embedding, extrapolated to all 13,233 LFW images, three
             ways: sequential (detect a chunk of --batch_size with torch's default threads, then
             embed it on 2 dlib workers); overlapped (a thread embeds chunk k on the 2 workers while
             MTCNN detects chunk k+1 on one torch thread); multiprocess (2 single-threaded worker
             processes, each doing load + MTCNN + dlib on chunks of 16 files);
  facenet    Inception-ResNet-v1 with RANDOM weights (the pretrained files cannot be downloaded
             here): throughput only, the numbers it embeds mean nothing;
  naive      facenet-pytorch the way its README shows it: per image, `MTCNN(image_size=160)(PIL
             image)` then `InceptionResnetV1(...)(face.unsqueeze(0))` (random weights as above).
Every rate also records CPU seconds per image (this process plus its workers), which a busy box
inflates much less than wall time. Peak RSS (VmHWM) of this process and the summed peaks of its
worker processes are sampled at the end of each pipeline, while its pool is alive. The box is
shared: the load average is recorded before and after, and timings on a loaded machine are lower
bounds on what it can do.
"""

import functools
import json
import os
import pathlib
import queue
import resource
import threading
import time

from absl import app
from absl import flags
import numpy as np

from benchmarks import dlib_cxx
from benchmarks import machine
from mir_jax import align
from mir_jax import backbones
from mir_jax import images
from mir_jax import paths

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('out', 'outputs/embed_speed.json', 'Where to write the JSON.')
  flags.DEFINE_integer('num_images', 200, 'LFW images to time on.')
  flags.DEFINE_integer('batch_size', 64, 'Images per detection / embedding chunk.')
  flags.DEFINE_integer('jitter_images', 8, 'Images used to time num_jitters=10.')
  flags.DEFINE_integer('naive_images', 50, 'Images for the naive facenet-pytorch loop.')
  flags.DEFINE_integer('repeats', 3, 'Alternating runs of dlib with 1 and 2 workers (fastest kept).')
  flags.DEFINE_string('lfw_dir', None, 'LFW deep-funneled folder; default: <shared data>/lfw/lfw-deepfunneled.')


LFW_IMAGES = 13233


def _rss_mb():
  """Peak RSS so far of this process, plus the summed peaks of its live workers.

  Sampled while a pool is alive. Workers run beside the main process, so main + workers bounds the
  footprint from above.
  """
  own = machine.status_mib()['VmHWM']
  workers = sum(machine.status_mib(p)['VmHWM'] for p in machine.child_pids())
  return {
    'main_peak_mb': round(own, 1),
    'workers_peak_sum_mb': round(workers, 1),
    'total_mb': round(own + workers, 1),
    'getrusage_main_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
  }


def _machine():
  from importlib import metadata  # pylint: disable=g-import-not-at-top

  import dlib  # pylint: disable=g-import-not-at-top
  import facenet_pytorch  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import
  import torch  # pylint: disable=g-import-not-at-top

  return {
    **machine.basic_info(),
    'memory_gb': round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30, 1),
    'torch': torch.__version__,
    'torch_default_threads': torch.get_num_threads(),
    'cuda_available': torch.cuda.is_available(),
    'dlib': dlib.__version__,
    'facenet_pytorch': metadata.version('facenet-pytorch'),
    'numpy': np.__version__,
  }


def _live_children_cpu():
  """CPU seconds used so far by this process's live children (pool workers are not reaped, so
  RUSAGE_CHILDREN does not see them until they exit)."""
  total = 0.0
  for pid in machine.child_pids():
    try:
      fields = pathlib.Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    except OSError:
      continue
    total += (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')  # utime + stime
  return total


def _cpu_now():
  return time.process_time() + _live_children_cpu()


_LAST_CPU = [0.0]


def _rate(n, seconds):
  """Throughput; cpu_s_per_image covers this process and its workers during the last _timed call.

  On a box shared with other jobs wall time depends on their load while CPU time per image mostly
  does not, so `cpu_s_per_image` is the number to compare across runs.
  """
  return {
    'images': n,
    'seconds': round(seconds, 3),
    'images_per_s': round(n / seconds, 2),
    'cpu_s_per_image': round(_LAST_CPU[0] / n, 4),
    'cores_busy': round(_LAST_CPU[0] / seconds, 2),
  }


def _timed(fn):
  cpu, start = _cpu_now(), time.perf_counter()
  out = fn()
  seconds = time.perf_counter() - start
  _LAST_CPU[0] = _cpu_now() - cpu
  return out, seconds


def _chunks(seq, size):
  return [seq[i : i + size] for i in range(0, len(seq), size)]


def _pick_files(lfw_dir, n):
  files = sorted(lfw_dir.glob('*/*.jpg'))
  if not files:
    raise app.UsageError(f'no LFW images under {lfw_dir}')
  step = max(1, len(files) // n)
  return files[::step][:n]


def _dlib_pipeline(files, aligner, backbone, batch_size, overlap):
  """File -> embedding for all files; returns (embeddings, seconds)."""
  start = time.perf_counter()
  out = []
  if not overlap:
    for chunk in _chunks(files, batch_size):
      imgs = [images.load_rgb(f) for f in chunk]
      dets = aligner.detect_batch(imgs)
      out.append(backbone.embed([backbone.preprocess(im, d) for im, d in zip(imgs, dets)]))
  else:
    # embed() blocks on the worker processes without holding the GIL, so a plain thread lets the
    # main thread run MTCNN on the next chunk meanwhile.
    todo = queue.Queue(maxsize=2)
    results = []

    def consumer():
      while (chips := todo.get()) is not None:
        results.append(backbone.embed(chips))

    worker = threading.Thread(target=consumer)
    worker.start()
    for chunk in _chunks(files, batch_size):
      imgs = [images.load_rgb(f) for f in chunk]
      dets = aligner.detect_batch(imgs)
      todo.put([backbone.preprocess(im, d) for im, d in zip(imgs, dets)])
    todo.put(None)
    worker.join()
    out = results
  return np.concatenate(out), time.perf_counter() - start


_MP_STATE = {}


def _mp_init():
  # Each worker is single-threaded end to end: torch intra-op threads fight other processes for the
  # two cores (measured: MTCNN's many tiny ops slow down 2-10x when a 2-thread pool loses a core).
  _MP_STATE['aligner'] = align.Aligner(align.AlignerConfig(detector='mtcnn-torch'), num_threads=1)
  _MP_STATE['backbone'] = backbones.get_backbone('dlib-resnet')


def _mp_chunk(chunk):
  aligner, backbone = _MP_STATE['aligner'], _MP_STATE['backbone']
  imgs = [images.load_rgb(f) for f in chunk]
  dets = aligner.detect_batch(imgs)
  return backbone.embed([backbone.preprocess(im, d) for im, d in zip(imgs, dets)])


def _dlib_pipeline_multiprocess(files, num_workers, chunk_size):
  """File -> embedding with `num_workers` processes each doing load + MTCNN + dlib on its chunks.

  Returns:
    (embeddings, startup seconds, run seconds, cpu seconds of the run, _rss_mb() before shutdown).
  """
  import concurrent.futures  # pylint: disable=g-import-not-at-top
  import multiprocessing  # pylint: disable=g-import-not-at-top

  with concurrent.futures.ProcessPoolExecutor(
    num_workers, mp_context=multiprocessing.get_context('spawn'), initializer=_mp_init
  ) as pool:
    # Warm-up: start every worker (model loading) outside the timed run.
    _, startup = _timed(lambda: list(pool.map(_mp_chunk, [files[:1]] * num_workers)))
    emb, seconds = _timed(lambda: np.concatenate(list(pool.map(_mp_chunk, _chunks(files, chunk_size)))))
    cpu = _LAST_CPU[0]
    rss = _rss_mb()
  return emb, startup, seconds, cpu, rss


def main(argv):
  del argv
  from facenet_pytorch import MTCNN  # pylint: disable=g-import-not-at-top
  from facenet_pytorch import InceptionResnetV1  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  if FLAGS.lfw_dir:
    lfw_dir = pathlib.Path(FLAGS.lfw_dir)
  else:
    shared = paths.shared_data_dir()
    if shared is None:
      raise app.UsageError('shared data not found: pass --lfw_dir or set MIR_SHARED_DATA')
    lfw_dir = shared / 'lfw' / 'lfw-deepfunneled'
  files = _pick_files(lfw_dir, FLAGS.num_images)
  n, bs = len(files), FLAGS.batch_size
  default_threads = torch.get_num_threads()
  report = {
    'machine': _machine(),
    'load_average_before': os.getloadavg(),
    'num_images': n,
    'batch_size': bs,
    'lfw_dir': str(lfw_dir),
  }
  results = report['results'] = {}

  def log(key, value):
    results[key] = value
    print(f'{key}: {json.dumps(value)}', flush=True)

  imgs, t = _timed(lambda: [images.load_rgb(f) for f in files])
  log('load', _rate(n, t))

  # --- alignment --------------------------------------------------------------------------------
  aligner = align.Aligner(align.AlignerConfig(detector='mtcnn-torch'), batch_size=bs)
  aligner.detect_batch(imgs[:2])  # Warm-up: first calls allocate oneDNN primitives.
  torch.set_num_threads(default_threads)
  dets, t = _timed(lambda: [aligner.detect(im) for im in imgs])
  log('align_mtcnn_one_per_call', {**_rate(n, t), 'torch_threads': default_threads})
  for threads in sorted({default_threads, 1}, reverse=True):
    torch.set_num_threads(threads)
    before = aligner.num_fallbacks
    dets, t = _timed(lambda: aligner.detect_batch(imgs))
    log(
      f'align_mtcnn_batched_threads{threads}',
      {**_rate(n, t), 'torch_threads': threads, 'fallbacks': aligner.num_fallbacks - before},
    )
  torch.set_num_threads(default_threads)

  # --- dlib-resnet ------------------------------------------------------------------------------
  dlib1 = backbones.get_backbone('dlib-resnet')
  chips, t = _timed(lambda: [dlib1.preprocess(im, d) for im, d in zip(imgs, dets)])
  log('dlib_preprocess', _rate(n, t))
  dlib1.embed(chips[:2])
  dlib2 = dlib_cxx.DlibProcesses(num_workers=2)
  _, t_start = _timed(lambda: dlib2.embed(chips[:4]))  # Starts the worker processes.
  # Alternate 1 and 2 workers and keep each one's fastest run: other jobs on a shared box only ever
  # slow a run down, and alternating exposes both settings to the same background load.
  runs = {1: [], 2: []}
  for _ in range(FLAGS.repeats):
    for workers, bb in ((1, dlib1), (2, dlib2)):
      emb, t = _timed(lambda bb=bb: bb.embed(chips))
      runs[workers].append((t, _LAST_CPU[0], emb))
  (t1, _LAST_CPU[0], emb1) = min(runs[1], key=lambda r: r[0])
  log('dlib_embed_workers1', {**_rate(n, t1), 'all_seconds': [round(r[0], 2) for r in runs[1]]})
  (t2, _LAST_CPU[0], emb2) = min(runs[2], key=lambda r: r[0])
  log(
    'dlib_embed_workers2',
    {
      **_rate(n, t2),
      'all_seconds': [round(r[0], 2) for r in runs[2]],
      'worker_startup_s': round(t_start, 2),
      'speedup_vs_1_worker': round(t1 / t2, 2),
      # What two free cores would give: the work per image stays the same
      # (compare cpu_s_per_image), so the speed-up is 2 x cpu1 / cpu2.
      'speedup_estimate_if_2_cores_free': round(
        2 * results['dlib_embed_workers1']['cpu_s_per_image'] / (_LAST_CPU[0] / n), 2
      ),
      'max_abs_diff_vs_1_worker': float(np.abs(emb1 - emb2).max()),
    },
  )
  nj = FLAGS.jitter_images
  for name, options in (('num_jitters10', {'num_jitters': 10}), ('flip', {'flip': True})):
    with dlib_cxx.DlibProcesses(num_workers=2, **options) as tta:
      tta.embed(chips[:2])
      _, t = _timed(lambda: tta.embed(chips[:nj]))  # pylint: disable=cell-var-from-loop
    log(f'dlib_embed_workers2_{name}', {**_rate(nj, t), 'cost_vs_plain': round((t / nj) / (t2 / n), 1)})
  per_image_plain = t2 / n
  results['dlib_embed_workers2_num_jitters100_lfw_hours_estimate'] = round(100 * per_image_plain * LFW_IMAGES / 3600, 2)

  # --- whole dlib pipeline (files -> embeddings) --------------------------------------------------
  for overlap in (False, True):
    threads = 1 if overlap else default_threads
    torch.set_num_threads(threads)
    _dlib_pipeline(files[:4], aligner, dlib2, bs, overlap)  # Warm-up at this thread count.
    (emb, _), t = _timed(functools.partial(_dlib_pipeline, files, aligner, dlib2, bs, overlap))
    name = 'dlib_pipeline_overlapped' if overlap else 'dlib_pipeline_sequential'
    log(
      name,
      {
        **_rate(n, t),
        'mtcnn_torch_threads': threads,
        'dlib_workers': 2,
        'lfw_13233_minutes_extrapolated': round(LFW_IMAGES * t / n / 60, 1),
        'max_abs_diff_vs_stagewise': float(np.abs(emb - emb2).max()),
        'rss': _rss_mb(),
      },
    )
  torch.set_num_threads(default_threads)
  dlib2.close()
  emb, startup, t, cpu, rss = _dlib_pipeline_multiprocess(files, 2, 16)
  _LAST_CPU[0] = cpu
  log(
    'dlib_pipeline_multiprocess',
    {
      **_rate(n, t),
      'workers': 2,
      'note': 'each worker: load + MTCNN (1 torch thread) + dlib',
      'worker_startup_s': round(startup, 2),
      'lfw_13233_minutes_extrapolated': round(LFW_IMAGES * t / n / 60, 1),
      # MTCNN batches of 16 here vs 64 above move some boxes by ~1e-4 px, which can flip the
      # integer rounding of dlib's rectangle: a few embeddings differ slightly.
      'max_abs_diff_vs_stagewise': float(np.abs(emb - emb2).max()),
      'rss': rss,
    },
  )
  # CPU-bound estimate: what the best pipeline needs on an otherwise idle box with every core busy.
  cores = len(os.sched_getaffinity(0))
  cpu_per_image = min(
    results[k]['cpu_s_per_image']
    for k in ('dlib_pipeline_sequential', 'dlib_pipeline_overlapped', 'dlib_pipeline_multiprocess')
  )
  results['dlib_lfw_minutes_if_cpu_bound_on_idle_box'] = round(LFW_IMAGES * cpu_per_image / cores / 60, 1)

  # --- facenet, random weights --------------------------------------------------------------------
  tmp = pathlib.Path(os.environ.get('TMPDIR', '/tmp')) / f'embed_speed_random_facenet_{os.getpid()}.pt'
  torch.manual_seed(0)
  torch.save(InceptionResnetV1(pretrained=None, classify=False).state_dict(), tmp)
  try:
    facenet = backbones.get_backbone('facenet-vggface2', weights=tmp, batch_size=bs)
    inputs, t = _timed(lambda: np.stack([facenet.preprocess(im, d) for im, d in zip(imgs, dets)]))
    log('facenet_random_weights_preprocess', _rate(n, t))
    facenet.embed(inputs[:2])
    _, t = _timed(lambda: facenet.embed(inputs))
    log(
      'facenet_random_weights_embed',
      {**_rate(n, t), 'device': str(facenet.device), 'note': 'random weights: throughput only'},
    )
  finally:
    tmp.unlink(missing_ok=True)

  # --- naive facenet-pytorch loop (README style), random weights --------------------------------
  nn_ = min(FLAGS.naive_images, n)
  mtcnn = MTCNN(image_size=160, margin=0)
  resnet = InceptionResnetV1(pretrained=None, classify=False).eval()
  resnet(mtcnn(Image.fromarray(imgs[0])).unsqueeze(0))  # Warm-up.

  def naive():
    for im in imgs[:nn_]:
      face = mtcnn(Image.fromarray(im))
      if face is not None:
        resnet(face.unsqueeze(0))

  _, t_naive = _timed(naive)
  log(
    'naive_facenet_pytorch_loop',
    {**_rate(nn_, t_naive), 'note': 'random weights; grad enabled, one image per MTCNN and per network call'},
  )
  fn_rate = results['facenet_random_weights_embed']['images_per_s']
  al_rate = max(results[f'align_mtcnn_batched_threads{t}']['images_per_s'] for t in {default_threads, 1})
  pre_rate = results['facenet_random_weights_preprocess']['images_per_s']
  # Stages run one after another, so per-image times add.
  ours = 1 / (1 / al_rate + 1 / fn_rate + 1 / pre_rate)
  results['facenet_pipeline_estimate_images_per_s'] = round(ours, 2)
  naive_rate = results['naive_facenet_pytorch_loop']['images_per_s']
  results['facenet_speedup_vs_naive'] = round(ours / naive_rate, 2)

  results['peak_rss_end'] = _rss_mb()
  report['load_average_after'] = os.getloadavg()
  # Targets are judged on the overlapped pipeline: the fastest per CPU second that fits in memory
  # (the multiprocess one loads torch in every worker, ~0.7 GB each before any work).
  targets = report['targets'] = {}
  chosen = results['dlib_pipeline_overlapped']
  targets['lfw_dlib_minutes<=15'] = {
    'pipeline': 'dlib_pipeline_overlapped',
    'value': chosen['lfw_13233_minutes_extrapolated'],
    'met': chosen['lfw_13233_minutes_extrapolated'] <= 15,
    'idle_box_cpu_bound_estimate': results['dlib_lfw_minutes_if_cpu_bound_on_idle_box'],
    'load_average_during_run': report['load_average_after'],
  }
  rss_gb = chosen['rss']['total_mb'] / 1024
  targets['peak_rss_gb<3'] = {
    'pipeline': 'dlib_pipeline_overlapped (main + dlib workers)',
    'value': round(rss_gb, 2),
    'met': rss_gb < 3,
  }
  speedup = results['dlib_embed_workers2']['speedup_vs_1_worker']
  targets['second_core_speedup>=1.7'] = {
    'value': speedup,
    'met': speedup >= 1.7,
    'estimate_if_2_cores_free': results['dlib_embed_workers2']['speedup_estimate_if_2_cores_free'],
    'cores_busy_with_2_workers': results['dlib_embed_workers2']['cores_busy'],
  }
  out = pathlib.Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(report, indent=2))
  print(json.dumps(targets, indent=2))
  print(f'wrote {out}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
