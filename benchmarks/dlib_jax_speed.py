r"""dlib's face ResNet in JAX against dlib's C++: equality on LFW faces, and speed on this CPU.

  # number for number, on 1,000 LFW faces (every k-th file of the sorted list):
  python -m benchmarks.dlib_jax_speed --check_faces=1000 --nospeed --out=outputs/dlib_jax_check.json
  # speed, all in one run:
  python -m benchmarks.dlib_jax_speed --out=outputs/dlib_jax_speed.json

Chips: `benchmarks.dlib_cxx.dlib_chips`: dlib's frontal face detector (1 upsampling; the centre box
62..187 of the 250x250 LFW image when it finds nothing), dlib's 5-point shape predictor in that box,
`dlib.get_face_chip(150, 0.25)`: the chips both backbones see.

--check_faces=N: raw descriptors of dlib's `compute_face_descriptor(chip)` (the aligned-chip
overload, num_jitters=0) against the JAX network as the backbone runs it (affines folded into the
convs, space-to-depth stem, chunked stem), against the plain network (one Flax layer per dlib layer),
and in bfloat16; max / mean abs differences and the worst face.

Speed (on --num_chips chips, each rate the best and the median of repeats):
  matmul     float32 2048x2048 jnp matmul: this machine's practical float32 peak (FLOP/s);
  cxx        the C++ backbone: one thread calling compute_face_descriptor per chip; one call on a
             list of chips (dlib batches internally); two threads (does dlib release the GIL?); and
             `dlib-resnet` on two processes (`dlib_cxx.DlibProcesses`, the C++ backbone's way to use
             2 cores);
  jax        `DlibResNetJax.descriptors` (host uint8 chips in, numpy out) for each batch size and
             stem setting, float32 and bfloat16, with achieved FLOP/s (analytic conv + fc FLOPs, and
             XLA's cost analysis) against the matmul peak.
The box is shared: the load average is recorded before and after each part; timings on a loaded
machine are lower bounds, and the C++/JAX ratio is the figure to read (same run, same load).
"""

import concurrent.futures
import json
import os
import pathlib
import time

from absl import app
from absl import flags
import numpy as np

from benchmarks import dlib_cxx
from benchmarks import machine
from mir_jax import images
from mir_jax import paths
from mir_jax.backbones import dlib_resnet_jax

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('out', 'outputs/dlib_jax_speed.json', 'Where to write the JSON.')
  flags.DEFINE_integer('check_faces', 0, 'LFW faces for the equality check (0 = none).')
  flags.DEFINE_bool('speed', True, 'Run the speed benchmark.')
  flags.DEFINE_integer('num_chips', 128, 'Chips for the speed benchmark.')
  flags.DEFINE_integer('cxx_chips', 32, 'Chips per C++ timing (it is slow).')
  flags.DEFINE_list('batch_sizes', ['1', '4', '8', '16', '32', '64'], 'JAX batch sizes to time.')
  flags.DEFINE_list(
    'stems',
    ['plain', 's2d', 's2d_chunk1'],
    'Stem settings: plain (whole batch, 7x7/2 conv), s2d (space-to-depth), '
    's2d_chunkK (space-to-depth, K faces at a time).',
  )
  flags.DEFINE_bool(
    'bf16',
    True,
    'Also time and check bfloat16 compute (at the best float32 '
    'stem and batch size, with XLA convs and with convs as dots).',
  )
  flags.DEFINE_float('min_seconds', 2.0, 'Least time per JAX measurement.')
  flags.DEFINE_string('lfw_dir', None, 'LFW deep-funneled folder; default <shared data>/lfw/lfw-deepfunneled.')


LFW_IMAGES = 13233


def _stem_config(name):
  if name == 'plain':
    return 0, False
  if name == 's2d':
    return 0, True
  if name.startswith('s2d_chunk'):
    return int(name[len('s2d_chunk') :]), True
  raise ValueError(f'unknown stem setting {name!r}')


def _machine():
  import dlib  # pylint: disable=g-import-not-at-top
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  info = {
    **machine.basic_info(),
    'jax': jax.__version__,
    'flax': flax.__version__,
    'dlib': dlib.__version__,
    'jax_backend': jax.default_backend(),
    'XLA_FLAGS': os.environ.get('XLA_FLAGS', ''),
  }
  try:
    text = pathlib.Path('/proc/cpuinfo').read_text()
    for line in text.splitlines():
      if line.startswith('flags'):
        flags_ = set(line.split(':', 1)[1].split())
        info['cpu_flags'] = sorted(f for f in flags_ if f.startswith(('avx', 'fma', 'amx')))
        break
    mhz = [float(ln.split(':')[1]) for ln in text.splitlines() if ln.startswith('cpu MHz')]
    if mhz:
      info['cpu_mhz'] = mhz[0]
    caches = {}
    for index in sorted(pathlib.Path('/sys/devices/system/cpu/cpu0/cache').glob('index*')):
      level = (index / 'level').read_text().strip()
      kind = (index / 'type').read_text().strip()
      caches[f'L{level}_{kind}'] = (index / 'size').read_text().strip()
    info['cpu0_caches'] = caches
  except OSError:
    pass
  return info


def _load():
  return list(os.getloadavg())


def _lfw_files(n):
  root = pathlib.Path(FLAGS.lfw_dir) if FLAGS.lfw_dir else None
  if root is None:
    shared = paths.shared_data_dir()
    root = shared / 'lfw' / 'lfw-deepfunneled' if shared else None
  if root is None or not root.is_dir():
    raise SystemExit(f'LFW images not found (looked in {root or paths.shared_data_location()}); pass --lfw_dir')
  files = sorted(root.glob('*/*.jpg'))
  step = max(1, len(files) // n)
  return files[::step][:n]


def make_chips(files):
  """dlib chips for LFW files (`dlib_cxx.dlib_chips`); (chips, detector fallbacks)."""
  return dlib_cxx.dlib_chips([images.load_rgb(f) for f in files])


def _cxx_net():
  import dlib  # pylint: disable=g-import-not-at-top

  return dlib.face_recognition_model_v1(str(dlib_resnet_jax.default_weights()))


def _cxx_descriptors(net, chips):
  return np.asarray([np.asarray(net.compute_face_descriptor(c)) for c in chips], np.float64)


def check(n):
  """JAX vs dlib C++ raw descriptors on n LFW faces."""
  import jax  # pylint: disable=g-import-not-at-top

  files = _lfw_files(n)
  t = time.perf_counter()
  chips, fallbacks = make_chips(files)
  t_chips = time.perf_counter() - t
  t = time.perf_counter()
  ref = _cxx_descriptors(_cxx_net(), chips)
  t_ref = time.perf_counter() - t
  out = {
    'faces': len(chips),
    'detector_fallbacks': fallbacks,
    'files_first_last': [
      str(files[0].relative_to(files[0].parents[1])),
      str(files[-1].relative_to(files[-1].parents[1])),
    ],
    'seconds_chips': t_chips,
    'seconds_cxx': t_ref,
    'descriptor_norms': {
      'min': float(np.linalg.norm(ref, axis=1).min()),
      'max': float(np.linalg.norm(ref, axis=1).max()),
    },
  }

  def compare(name, got):
    diff = np.abs(got.astype(np.float64) - ref)
    worst = int(diff.max(axis=1).argmax())
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)
    out[name] = {
      'max_abs': float(diff.max()),
      'mean_abs': float(diff.mean()),
      'max_abs_unit_norm': float(np.abs(unit(got.astype(np.float64)) - unit(ref)).max()),
      'worst_face': str(files[worst].name),
    }
    print(f'{name}: max abs {diff.max():.3g} mean abs {diff.mean():.3g} over {len(chips)} faces', flush=True)

  backbone = dlib_resnet_jax.DlibResNetJax()
  out['backbone_config'] = {
    'batch_size': backbone.batch_size,
    'stem_chunk': backbone.stem_chunk,
    'space_to_depth': backbone.space_to_depth,
    'fold': backbone.fold,
    'dot_stages': list(backbone.dot_stages),
  }
  t = time.perf_counter()
  compare('jax_backbone_float32', backbone.descriptors(chips))
  out['seconds_jax'] = time.perf_counter() - t
  params, _ = dlib_resnet_jax.load_params()
  plain = jax.jit(dlib_resnet_jax.DlibFaceResNet().apply)
  compare(
    'jax_plain_float32',
    np.concatenate([np.asarray(plain({'params': params}, chips[i : i + 32])) for i in range(0, len(chips), 32)]),
  )
  if FLAGS.bf16:
    bf16 = dlib_resnet_jax.DlibResNetJax(dtype='bfloat16')
    got = bf16.descriptors(chips)
    compare('jax_backbone_bfloat16', got)
    out['bfloat16_vs_float32_max_abs'] = float(np.abs(got - backbone.descriptors(chips)).max())
  return out


def _cpu_seconds():
  """CPU seconds of this process (all threads) plus its live children (the dlib workers)."""
  total = time.process_time()
  tick = os.sysconf('SC_CLK_TCK')
  for pid in machine.child_pids():
    try:
      fields = pathlib.Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    except OSError:
      continue
    total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
  return total


def _rates(fn, n, min_seconds, min_repeats=3):
  """fn() processes n faces; faces/s (best and median over repeats) and CPU seconds per face.

  On a shared box wall time depends on the other jobs; CPU time per face much less so, and
  2 / cpu_s_per_face is what two free cores would give at perfect scaling.
  """
  times = []
  start, cpu = time.perf_counter(), _cpu_seconds()
  while len(times) < min_repeats or time.perf_counter() - start < min_seconds:
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  cpu_per_face = (_cpu_seconds() - cpu) / (n * len(times))
  return {
    'best': n / min(times),
    'median': n / float(np.median(times)),
    'repeats': len(times),
    'cpu_s_per_face': cpu_per_face,
    'faces_per_cpu_s': 1 / max(cpu_per_face, 1e-9),
  }


def _matmul_peak():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  out = {}
  for dtype in ('float32', 'bfloat16'):
    a = jnp.asarray(np.random.RandomState(0).randn(2048, 2048), dtype)
    mm = jax.jit(lambda a: a @ a)
    mm(a).block_until_ready()
    r = _rates(lambda mm=mm, a=a: mm(a).block_until_ready(), 1, 1.0, 5)
    out[f'{dtype}_gflops'] = {k: r[k] * 2 * 2048**3 / 1e9 for k in ('best', 'median')}
  return out


def _cxx_speed(chips):
  net = _cxx_net()
  out = {}
  _cxx_descriptors(net, chips[:2])
  out['one_thread_per_chip'] = _rates(lambda: _cxx_descriptors(net, chips), len(chips), 0, 2)
  out['one_thread_list_call'] = _rates(lambda: net.compute_face_descriptor(list(chips)), len(chips), 0, 2)

  nets = [net, _cxx_net()]

  def two_threads():
    half = len(chips) // 2
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      list(pool.map(_cxx_descriptors, nets, [chips[:half], chips[half:]]))

  out['two_threads_per_chip'] = _rates(two_threads, len(chips), 0, 2)
  out['gil_released'] = out['two_threads_per_chip']['best'] > 1.5 * out['one_thread_per_chip']['best']
  with dlib_cxx.DlibProcesses(num_workers=2) as backbone:
    backbone.embed(chips[:4])  # starts the workers
    out['dlib_resnet_backbone_2_processes'] = _rates(lambda: backbone.embed(chips), len(chips), 0, 2)
  out['best_two_cores'] = max(out[k]['best'] for k in out if isinstance(out[k], dict))
  # What two free cores would give: the best CPU cost per face, twice over.
  out['two_free_cores_estimate'] = 2 * max(out[k]['faces_per_cpu_s'] for k in out if isinstance(out[k], dict))
  return out


def _jax_speed(chips, peak):
  flops = dlib_resnet_jax.flops_per_face()
  out = {'flops_per_face_analytic': flops, 'runs': []}

  def time_run(dtype, stem, bs, dot_stages=()):
    chunk, s2d = _stem_config(stem)
    backbone = dlib_resnet_jax.DlibResNetJax(
      batch_size=bs, dtype=dtype, stem_chunk=chunk, space_to_depth=s2d, dot_stages=dot_stages
    )
    t = time.perf_counter()
    backbone.descriptors(chips[:bs])
    compile_s = time.perf_counter() - t
    r = _rates(lambda: backbone.descriptors(chips), len(chips), FLAGS.min_seconds)
    run = {
      'dtype': dtype,
      'stem': stem,
      'batch_size': bs,
      'dot_stages': list(dot_stages),
      'faces_per_s': r,
      'compile_s': compile_s,
      'gflops_best': r['best'] * flops / 1e9,
      'fraction_of_matmul_peak': r['best'] * flops / 1e9 / peak,
    }
    out['runs'].append(run)
    print(
      f'jax {dtype} {stem} batch {bs} dot_stages {list(dot_stages)}: {r["best"]:.1f} faces/s '
      f'(median {r["median"]:.1f}), {run["gflops_best"]:.1f} GFLOP/s',
      flush=True,
    )
    return run

  for stem in FLAGS.stems:
    for bs in [int(b) for b in FLAGS.batch_sizes]:
      time_run('float32', stem, bs)
  if FLAGS.bf16:
    best = max(out['runs'], key=lambda r: r['faces_per_s']['best'])
    for dot_stages in ((), (1, 2, 3, 4)):
      time_run('bfloat16', best['stem'], best['batch_size'], dot_stages)
  # XLA's own count for one configuration, as a cross-check of the analytic FLOPs.
  try:
    params = dlib_resnet_jax.fold_affines(dlib_resnet_jax.load_params()[0])
    fn = dlib_resnet_jax.compiled_apply('float32', 0, False)
    cost = fn.lower(params, chips[:8]).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    out['flops_per_face_xla'] = float(cost['flops']) / 8
  except Exception as e:  # pylint: disable=broad-except
    out['flops_per_face_xla'] = f'unavailable: {e}'
  return out


def main(argv):
  del argv
  result = {'machine': _machine(), 'load_before': _load()}
  if FLAGS.check_faces:
    result['check'] = check(FLAGS.check_faces)
    result['load_after_check'] = _load()
  if FLAGS.speed:
    chips, fallbacks = make_chips(_lfw_files(FLAGS.num_chips))
    result['speed'] = {'chips': len(chips), 'detector_fallbacks': fallbacks}
    result['speed']['matmul'] = _matmul_peak()
    peak = result['speed']['matmul']['float32_gflops']['best']
    print(f'matmul float32 peak: {peak:.1f} GFLOP/s', flush=True)
    result['speed']['load_before_cxx'] = _load()
    result['speed']['cxx'] = _cxx_speed(chips[: FLAGS.cxx_chips])
    print('cxx:', json.dumps(result['speed']['cxx']), flush=True)
    result['speed']['load_before_jax'] = _load()
    result['speed']['jax'] = _jax_speed(chips, peak)
    runs = result['speed']['jax']['runs']
    cxx = result['speed']['cxx']['best_two_cores']
    cxx_cpu = result['speed']['cxx']['two_free_cores_estimate']
    summary = {'cxx_best_two_cores_faces_per_s': cxx, 'cxx_two_free_cores_estimate': cxx_cpu}
    for dtype in sorted({r['dtype'] for r in runs}):
      best = max((r for r in runs if r['dtype'] == dtype), key=lambda r: r['faces_per_s']['best'])
      summary[f'jax_{dtype}_best'] = {
        'faces_per_s': best['faces_per_s']['best'],
        'stem': best['stem'],
        'batch_size': best['batch_size'],
        'dot_stages': best['dot_stages'],
        'speedup_vs_cxx': best['faces_per_s']['best'] / cxx,
        'faces_per_cpu_s': best['faces_per_s']['faces_per_cpu_s'],
        'speedup_vs_cxx_per_cpu_s': best['faces_per_s']['faces_per_cpu_s'] / (cxx_cpu / 2),
        'gflops': best['gflops_best'],
        'fraction_of_matmul_peak': best['fraction_of_matmul_peak'],
      }
    result['summary'] = summary
    print('summary:', json.dumps(summary, indent=1), flush=True)
  result['load_after'] = _load()
  out = pathlib.Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=1) + '\n')
  print(f'wrote {out}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
