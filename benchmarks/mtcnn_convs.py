r"""MTCNN's convolutions one by one, XLA against torch, and under XLA's other CPU convolution paths.

  python -m benchmarks.mtcnn_convs --out=benchmarks/results/mtcnn_convs.json

`benchmarks.mtcnn_stages` finds XLA's convolutions slower than torch's (oneDNN) in P-Net and R-Net. This
says which layers, and whether XLA's own alternatives change it. Each of P-, R- and O-Net's convolutions
runs at the shape mtcnn-jax gives it: P-Net on a batch of 8 at the first pyramid level of a 250 x 250
image's 256 x 256 bucket (154 x 154), R-Net on a call of 64 crops and O-Net on a call of 16
(`mtcnn_jax.CROPS_PER_CALL`); random inputs and weights. XLA runs
`lax.conv_general_dilated` (NHWC, HWIO, HIGHEST) under jit, torch `conv2d` (NCHW, its default threads),
medians of --repeats rounds of --calls calls, GFLOP/s = 2 * H_out * W_out * C_out * C_in * k * k * batch.

XLA_FLAGS is read once per process, so every variant (VARIANTS) reruns this script in a subprocess; torch,
which does not read XLA_FLAGS, is timed in each as the yardstick for the machine's load at that time, and
each variant's number to compare is its XLA / torch time ratio.
"""

import json
import os
import subprocess
import sys

from absl import app
from absl import flags
import numpy as np

from benchmarks import machine
from benchmarks import train_speed

FLAGS = flags.FLAGS

# (net, layer, batch, input side, input channels, output channels, kernel side), walked from each net's
# input through its 'VALID' convolutions and ceil-mode pools (mir_jax/detectors/mtcnn_nets.py).
LAYERS = [
  ('pnet', 'conv1', 8, 154, 3, 10, 3),
  ('pnet', 'conv2', 8, 76, 10, 16, 3),
  ('pnet', 'conv3', 8, 74, 16, 32, 3),
  ('pnet', 'conv4_1+4_2', 8, 72, 32, 6, 1),
  ('rnet', 'conv1', 64, 24, 3, 28, 3),
  ('rnet', 'conv2', 64, 11, 28, 48, 3),
  ('rnet', 'conv3', 64, 4, 48, 64, 2),
  ('onet', 'conv1', 16, 48, 3, 32, 3),
  ('onet', 'conv2', 16, 23, 32, 64, 3),
  ('onet', 'conv3', 16, 10, 64, 64, 3),
  ('onet', 'conv4', 16, 4, 64, 128, 2),
]
VARIANTS = {
  'default': '',
  'no_multi_thread_eigen': '--xla_cpu_multi_thread_eigen=false',
  'xnnpack_convolution': '--xla_cpu_experimental_xnn_fusion_type=individual_convolution',
  'ynnpack_convolution': '--xla_cpu_experimental_ynn_fusion_type=individual_convolution',
  'onednn_convolution': '--xla_cpu_experimental_onednn_fusion_type=individual_convolution',
}


def define_flags() -> None:
  flags.DEFINE_string('out', 'benchmarks/results/mtcnn_convs.json', 'Where to write the JSON.')
  flags.DEFINE_integer('repeats', 7, 'Rounds per layer (the median is reported).')
  flags.DEFINE_integer('calls', 20, 'Calls per round.')
  flags.DEFINE_list('variants', list(VARIANTS), f'XLA flag variants, each in a subprocess ({list(VARIANTS)}).')
  flags.DEFINE_bool('in_subprocess', False, "Time this process's XLA as it is and print the JSON (internal).")


def _median_ms(fn, args, repeats: int, calls: int) -> float:
  fn(*args)  # compile / warm up
  return 1e3 * train_speed.timed(lambda: [fn(*args) for _ in range(calls)], repeats)[0] / calls


def time_layers(repeats: int, calls: int) -> list:
  """Each layer of LAYERS: its GFLOP and the milliseconds of XLA and torch, in this process."""
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  conv = jax.jit(
    lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=jax.lax.Precision.HIGHEST
    )
  )
  rng = np.random.default_rng(0)
  rows = []
  for net, layer, n, side, cin, cout, k in LAYERS:
    x = rng.uniform(-1, 1, (n, side, side, cin)).astype(np.float32)
    w = rng.uniform(-1, 1, (k, k, cin, cout)).astype(np.float32)
    xj, wj = jax.device_put(x), jax.device_put(w)
    xt, wt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(w.transpose(3, 2, 0, 1).copy())
    out = side - k + 1
    gflop = 2 * n * out * out * cout * cin * k * k / 1e9
    with torch.inference_mode():
      torch_ms = _median_ms(torch.nn.functional.conv2d, (xt, wt), repeats, calls)
    xla_ms = _median_ms(lambda a, b: conv(a, b).block_until_ready(), (xj, wj), repeats, calls)
    rows.append(
      {
        'net': net,
        'layer': layer,
        'shape': f'{n}x{side}x{side}x{cin} -> {cout}, {k}x{k}',
        'gflop': gflop,
        'xla_ms': xla_ms,
        'torch_ms': torch_ms,
        'xla_gflops': gflop / xla_ms * 1e3,
        'torch_gflops': gflop / torch_ms * 1e3,
        'xla_over_torch_time': xla_ms / torch_ms,
      }
    )
  return rows


def _by_net(rows) -> dict:
  out = {}
  for net in dict.fromkeys(r['net'] for r in rows):
    mine = [r for r in rows if r['net'] == net]
    xla, torch_ = sum(r['xla_ms'] for r in mine), sum(r['torch_ms'] for r in mine)
    out[net] = {'xla_ms': xla, 'torch_ms': torch_, 'xla_over_torch_time': xla / torch_}
  return out


def main(argv) -> None:
  del argv
  if FLAGS.in_subprocess:
    print(json.dumps(time_layers(FLAGS.repeats, FLAGS.calls)))
    return
  unknown = set(FLAGS.variants) - set(VARIANTS)
  if unknown:
    raise app.UsageError(f'--variants: {sorted(unknown)} are not among {list(VARIANTS)}')
  result = {'command': ' '.join(['python -m benchmarks.mtcnn_convs', *sys.argv[1:]]), 'machine': machine.basic_info()}
  result['variants'] = {}
  for name in FLAGS.variants:
    env = dict(os.environ, XLA_FLAGS=machine.xla_flags_with(VARIANTS[name]))
    cmd = [sys.executable, '-m', 'benchmarks.mtcnn_convs', '--in_subprocess', f'--repeats={FLAGS.repeats}']
    proc = subprocess.run([*cmd, f'--calls={FLAGS.calls}'], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
      result['variants'][name] = {'xla_flags': VARIANTS[name], 'error': proc.stderr[-2000:]}
      continue
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    result['variants'][name] = {'xla_flags': VARIANTS[name], 'by_net': _by_net(rows), 'layers': rows}
    print(name, json.dumps(result['variants'][name]['by_net']), flush=True)
  machine.write_json(FLAGS.out, result)


if __name__ == '__main__':
  define_flags()
  app.run(main)
