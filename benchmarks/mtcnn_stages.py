r"""Where MTCNN's time goes, stage by stage, in facenet-pytorch and in mtcnn-jax, on the same LFW images in one
run: seconds, crops and GFLOP/s of each net, and what the nets' FLOPs allow at the machine's matmul peak.

  python -m benchmarks.mtcnn_stages --out=benchmarks/results/mtcnn_stages.json

The torch side is the project's aligner (`align.Aligner`, batches of 32), each net's forward timed by
hooks; the rest of `detect_face` (NMS, box arithmetic, cropping) is its remainder. The JAX side is
`mtcnn_jax.Detector` with one batch in flight (`THREADS = 1`, so stages do not overlap), each stage
blocked on; then the Detector as it runs (`THREADS` batches in flight), for its total. The FLOPs of a net
are XLA's cost analysis of its compiled program (multiply-adds x2, per crop for R-Net and O-Net, per batch
for P-Net over one image's pyramid levels at their own sizes), the same counts for both frameworks. The
bound divides one image's FLOPs by the float32 matmul peak measured here (`train_speed.matmul_peak`: the
best of a 2048^3 GEMM in JAX, NumPy and PyTorch): no detector that computes those nets can run faster on
this machine.
"""

import contextlib
import json
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import machine
from benchmarks import mtcnn_equality
from benchmarks import train_speed
from mir_jax import align
from mir_jax import images
from mir_jax.detectors import mtcnn_jax
from mir_jax.detectors import mtcnn_nets

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('out', 'benchmarks/results/mtcnn_stages.json', 'Where to write the JSON.')
  flags.DEFINE_integer('limit', 400, 'Images (every --stride-th LFW image in sorted order).')
  flags.DEFINE_integer('stride', 33, 'Every stride-th image.')
  flags.DEFINE_integer('repeats', 3, 'Timed passes of each detector, interleaved; medians are reported.')


def _flops(fn, *args) -> float:
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float(cost['flops'])


class _Clock:
  """Seconds and items (crops) per name."""

  def __init__(self):
    self.seconds, self.items = {}, {}

  def add(self, name, seconds, items=0):
    self.seconds[name] = self.seconds.get(name, 0.0) + seconds
    self.items[name] = self.items.get(name, 0) + items


def time_torch(stack, clock: _Clock) -> float:
  aligner = align.Aligner(align.AlignerConfig(detector='mtcnn-torch'))
  mtcnn = aligner._mtcnn  # pylint: disable=protected-access
  started = {}
  for name in ('pnet', 'rnet', 'onet'):
    net = getattr(mtcnn, name)
    net.register_forward_pre_hook(lambda m, inp, n=name: started.__setitem__(n, time.perf_counter()))
    net.register_forward_hook(
      lambda m, inp, out, n=name: clock.add(n, time.perf_counter() - started[n], int(inp[0].shape[0]))
    )
  start = time.perf_counter()
  aligner.detect_batch(list(stack))
  return time.perf_counter() - start


@contextlib.contextmanager
def _timed_stages(clock: _Clock):
  """mtcnn_jax's stage functions, each blocked on and timed, for the duration."""
  originals = {name: getattr(mtcnn_jax, name) for name in ('_propose', '_refine', '_finish', '_crop_net')}

  def wrap(name, fn):
    def timed(*args, **kwargs):
      start = time.perf_counter()
      out = jax.block_until_ready(fn(*args, **kwargs))
      stage = args[0] if name == '_crop_net' else name.strip('_')
      clock.add(stage, time.perf_counter() - start, len(args[4]) if name == '_crop_net' else 0)
      return out

    return timed

  for name, fn in originals.items():
    setattr(mtcnn_jax, name, wrap(name, fn))
  try:
    yield
  finally:
    for name, fn in originals.items():
      setattr(mtcnn_jax, name, fn)


def net_flops(height: int, width: int, min_face_size: int, factor: float) -> dict:
  """XLA's FLOPs of P-Net over one image's pyramid (its levels at their own sizes, as torch runs them) and of
  R-Net and O-Net per crop."""
  params = mtcnn_nets.load('')
  out = {}
  for net, size in (('rnet', 24), ('onet', 48)):
    crops = jnp.zeros((mtcnn_jax.CROPS_PER_CALL[net], size, size, 3), jnp.float32)
    out[f'{net}_per_crop'] = _flops(lambda p, x, n=net: mtcnn_nets.apply(n, p, x), params[net], crops) / len(crops)
  levels = [
    (int(height * s + 1), int(width * s + 1)) for s in mtcnn_jax.pyramid_scales(height, width, min_face_size, factor)
  ]
  out['pnet_per_image'] = sum(
    _flops(lambda p, x: mtcnn_nets.apply('pnet', p, x), params['pnet'], jnp.zeros((1, h, w, 3), jnp.float32))
    for h, w in levels
  )
  return out


def main(argv) -> None:
  del argv
  root, files = mtcnn_equality.lfw_files(FLAGS.stride, FLAGS.limit)
  stack = np.stack([images.load_rgb(root / f) for f in files])  # LFW: all 250 x 250
  n = len(stack)

  detector = mtcnn_jax.Detector()
  detector.detect(stack[: 2 * detector.batch_size])  # compile
  time_torch(stack[:32], _Clock())  # warm up
  torch_s, jax_s, staged_s, torch_clocks, jax_clocks = [], [], [], [], []
  for _ in range(FLAGS.repeats):
    clock = _Clock()
    torch_s.append(time_torch(stack, clock))
    torch_clocks.append(clock)
    start = time.perf_counter()
    detector.detect(stack)
    jax_s.append(time.perf_counter() - start)
    clock, threads = _Clock(), mtcnn_jax.THREADS
    mtcnn_jax.THREADS = 1
    try:
      with _timed_stages(clock):
        start = time.perf_counter()
        detector.detect(stack)
        staged_s.append(time.perf_counter() - start)
    finally:
      mtcnn_jax.THREADS = threads
    jax_clocks.append(clock)

  def stages(clocks, total):
    names = clocks[0].seconds
    rows = {k: float(np.median([c.seconds[k] for c in clocks])) for k in names}
    rows['rest (NMS, boxes, crops, host)'] = float(np.median(total)) - sum(rows.values())
    return rows

  flops = net_flops(*stack.shape[1:3], detector.min_face_size, detector.factor)
  crops = {net: float(np.median([c.items[net] for c in torch_clocks])) / n for net in ('rnet', 'onet')}
  jax_crops = {net: float(np.median([c.items[net] for c in jax_clocks])) / n for net in ('rnet', 'onet')}
  per_image = flops['pnet_per_image'] + sum(crops[k] * flops[f'{k}_per_crop'] for k in crops)
  peak_by_library = train_speed.matmul_peak(FLAGS.repeats, 'cpu')
  peak = max(peak_by_library.values())
  torch_stage = stages(torch_clocks, torch_s)
  jax_stage = stages(jax_clocks, staged_s)
  net_flops_total = {
    'pnet': flops['pnet_per_image'] * n,
    'rnet': crops['rnet'] * n * flops['rnet_per_crop'],
    'onet': crops['onet'] * n * flops['onet_per_crop'],
  }
  gflops = lambda rows, key, name: net_flops_total[name] / rows[key] / 1e9 if rows.get(key) else None
  result = {
    'command': 'python -m benchmarks.mtcnn_stages '
    + ' '.join(f'--{k}={FLAGS[k].value}' for k in ('limit', 'stride', 'repeats')),
    'machine': {**machine.basic_info(), 'jax': jax.__version__, 'device': str(jax.devices()[0])},
    'images': n,
    'torch_images_per_s': n / float(np.median(torch_s)),
    'jax_images_per_s': n / float(np.median(jax_s)),
    'jax_one_batch_in_flight_images_per_s': n / float(np.median(staged_s)),
    'jax_over_torch': float(np.median(torch_s)) / float(np.median(jax_s)),
    'torch_stage_s': torch_stage,
    'jax_stage_s (one batch in flight)': jax_stage,
    'crops_per_image': {'torch': crops, 'jax (with the padding of its fixed-size calls)': jax_crops},
    'flops': flops,
    'gflops_per_s': {
      'torch': {k: gflops(torch_stage, k, k) for k in ('pnet', 'rnet', 'onet')},
      # The JAX P-Net stage's time includes its pyramid, its bucket's padding and its NMS.
      'jax': {
        'pnet': gflops(jax_stage, 'propose', 'pnet'),
        'rnet': gflops(jax_stage, 'rnet', 'rnet'),
        'onet': gflops(jax_stage, 'onet', 'onet'),
      },
    },
    'gflop_per_image': per_image / 1e9,
    'matmul_peak_gflops': peak,
    'matmul_gflops_by_library': peak_by_library,
    'images_per_s_at_matmul_peak': peak * 1e9 / per_image,
    'five_times_torch_images_per_s': 5 * n / float(np.median(torch_s)),
  }
  print(json.dumps(result, indent=2))
  machine.write_json(FLAGS.out, result)


if __name__ == '__main__':
  define_flags()
  app.run(main)
