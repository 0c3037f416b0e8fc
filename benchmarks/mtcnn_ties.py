r"""Why mtcnn-jax and facenet-pytorch's MTCNN choose different faces on some LFW images: are those images ones
where facenet-pytorch's own choice turns on float32 rounding?

  python -m benchmarks.mtcnn_ties --out=benchmarks/results/mtcnn_ties.json

For the images benchmarks/mtcnn_equality.py listed as differing (--equality), and for a control sample of
every --control_stride-th LFW image, facenet-pytorch's MTCNN (the project's torch aligner) is run again with
the outputs of one of its three nets moved by independent uniform noise in [-eps, eps], --repeats times per
net, each time with another noise seed. An image whose chosen face moves by more than --same_px under such
noise is tie-sensitive at that stage: its choice is decided by differences as small as the two frameworks'
convolution rounding, which no reimplementation reproduces without reproducing torch's arithmetic order.
Each image is also run alone through the unperturbed detector to see whether its best O-Net probability is
an exact tie, shared by two or more candidates (float32 probabilities near 1 are a few ulps apart): there
the two implementations' tie rules decide (mir_jax/detectors/mtcnn_jax.py, `_nms`). The control sample
estimates how common such images are in LFW (Clopper-Pearson intervals, scipy.stats).
"""

import json
import os

from absl import app
from absl import flags
import numpy as np
from scipy import stats
import torch

from benchmarks import machine
from benchmarks import mtcnn_equality
from mir_jax import align
from mir_jax import images
from mir_jax import paths

FLAGS = flags.FLAGS
STAGES = ('pnet', 'rnet', 'onet')


def define_flags() -> None:
  flags.DEFINE_string('out', 'benchmarks/results/mtcnn_ties.json', 'Where to write the JSON.')
  flags.DEFINE_string(
    'equality', 'benchmarks/results/mtcnn_equality.json', "mtcnn_equality's JSON: its 'differ' lists."
  )
  flags.DEFINE_enum(
    'reference',
    'alone_stable_sort',
    list(mtcnn_equality.REFERENCES),
    "Which of the equality run's torch references to explain; the torch aligner here runs as that one did.",
  )
  flags.DEFINE_integer('control_stride', 26, 'Every n-th LFW image in sorted order, outside the differing ones.')
  flags.DEFINE_float('eps', 6e-8, 'Noise amplitude on every net output (6e-8: one float32 ulp just below 1).')
  flags.DEFINE_integer('repeats', 3, 'Noise seeds per net.')
  flags.DEFINE_float('same_px', 1.0, 'As in mtcnn_equality: a chosen box within this many pixels is the same face.')


class _Noisy(torch.nn.Module):
  """One of facenet-pytorch's nets, its outputs plus uniform noise in [-eps, eps] from a seeded generator."""

  def __init__(self, net, eps: float, seed: int):
    super().__init__()
    self.net, self.eps = net, eps
    self.generator = torch.Generator().manual_seed(seed)

  def forward(self, x):
    def noisy(t):
      u = torch.rand(t.shape, generator=self.generator, dtype=t.dtype)
      return t + self.eps * (2 * u - 1)

    return tuple(noisy(t) for t in self.net(x))


class _Recorded(torch.nn.Module):
  """O-Net, its face probabilities recorded."""

  def __init__(self, net):
    super().__init__()
    self.net, self.probs = net, []

  def forward(self, x):
    out = self.net(x)
    self.probs.append(out[2][:, 1].numpy().copy())
    return out


def top_ties(aligner, stack, threshold: float) -> np.ndarray:
  """(n,) per image, detected alone: how many O-Net candidates over `threshold` share its best probability."""
  onet = aligner._mtcnn.onet  # pylint: disable=protected-access
  recorded = aligner._mtcnn.onet = _Recorded(onet)  # pylint: disable=protected-access
  counts = []
  for image in stack:
    recorded.probs.clear()
    aligner.detect(image)
    p = np.concatenate(recorded.probs) if recorded.probs else np.zeros(0, np.float32)
    p = p[p > threshold]
    counts.append(int((p == p.max()).sum()) if p.size else 0)
  aligner._mtcnn.onet = onet  # pylint: disable=protected-access
  return np.asarray(counts)


def _choices(aligner, stack):
  """The chosen box of each image (None without a face)."""
  return [d.box if d.detected else None for d in aligner.detect_batch(list(stack))]


def _moved(a, b, same_px: float) -> bool:
  if a is None or b is None:
    return (a is None) != (b is None)
  return float(np.abs(np.asarray(a) - np.asarray(b)).max()) > same_px


def sensitivity(aligner, stack, eps: float, repeats: int, same_px: float) -> dict:
  """{stage: (n,) how many of `repeats` noise seeds moved each image's chosen face}."""
  base = _choices(aligner, stack)
  moved = {}
  for s, stage in enumerate(STAGES):
    net = getattr(aligner._mtcnn, stage)  # pylint: disable=protected-access
    counts = np.zeros(len(stack), np.int64)
    for r in range(repeats):
      setattr(aligner._mtcnn, stage, _Noisy(net, eps, seed=1000 * s + r))  # pylint: disable=protected-access
      counts += [_moved(a, b, same_px) for a, b in zip(base, _choices(aligner, stack))]
    setattr(aligner._mtcnn, stage, net)  # pylint: disable=protected-access
    moved[stage] = counts
  return moved


def _reason(ties: int, counts: dict, repeats: int) -> str:
  said = [f'exact tie: {ties} O-Net candidates share the best probability'] if ties > 1 else []
  stages = [f'{stage} {int(c)}/{repeats}' for stage, c in counts.items() if c]
  if stages:
    said.append("torch's own choice moves under noise on " + ', '.join(stages))
  return '; '.join(said) or 'no exact tie, and not noise-sensitive at this eps: unexplained'


def _rate(flags_) -> dict:
  k, n = int(np.sum(flags_)), len(flags_)
  ci = stats.binomtest(k, n).proportion_ci(0.95, method='exact')
  return {'count': k, 'fraction': k / n, 'fraction_95ci': [ci.low, ci.high]}


def _summary(moved: dict, ties: np.ndarray, idx) -> dict:
  any_stage = np.zeros(len(idx), bool)
  for counts in moved.values():
    any_stage |= counts[idx] > 0
  return {
    'images': len(idx),
    'exact_top_tie': _rate(ties[idx] > 1),
    'noise_sensitive_any_stage': _rate(any_stage),
    'noise_sensitive_by_stage': {stage: int((counts[idx] > 0).sum()) for stage, counts in moved.items()},
    'tie_or_noise_sensitive': _rate(any_stage | (ties[idx] > 1)),
  }


def main(argv) -> None:
  del argv
  shared = paths.shared_data_dir()
  if shared is None or not (shared / 'lfw' / 'lfw-deepfunneled').is_dir():
    raise app.UsageError(f'LFW is not under {paths.shared_data_location()} (set $MIR_SHARED_DATA)')
  with open(FLAGS.equality) as f:
    equality = json.load(f)
  if equality['images'] != 13233:
    raise app.UsageError(f'{FLAGS.equality} covers {equality["images"]} images, not all of LFW')
  root = shared / 'lfw' / 'lfw-deepfunneled'
  # Runs before 2026-12-07 compared with the torch aligner's batches of 32 only, at the top level.
  against = equality.get('against', {'batch32': equality})
  if FLAGS.reference not in against:
    raise app.UsageError(f'{FLAGS.equality} has no {FLAGS.reference} comparison (it has {list(against)})')
  listed = against[FLAGS.reference]['differ']
  differ = [d['image'] for d in listed]
  everything = sorted(str(p.relative_to(root)) for p in root.glob('*/*.jpg'))
  controls = [f for f in everything[:: FLAGS.control_stride] if f not in set(differ)]
  files = differ + controls
  stack = np.stack([images.load_rgb(root / f) for f in files])
  torch_batch, stable = mtcnn_equality.REFERENCES[FLAGS.reference]
  aligner = align.Aligner(align.AlignerConfig(detector='mtcnn-torch'), batch_size=torch_batch)
  with mtcnn_equality.stable_tie_order(stable):
    ties = top_ties(aligner, stack, aligner.config.thresholds[2])
    moved = sensitivity(aligner, stack, FLAGS.eps, FLAGS.repeats, FLAGS.same_px)
  per_image = [
    {
      'image': f,
      'equality_reason': d['reason'],
      'reason': _reason(ties[i], {s: moved[s][i] for s in STAGES}, FLAGS.repeats),
    }
    for i, (f, d) in enumerate(zip(differ, listed))
  ]
  n_differ = len(differ)
  controls_summary = _summary(moved, ties, np.arange(n_differ, len(files)))
  result = {
    'command': 'python -m benchmarks.mtcnn_ties '
    + ' '.join(
      f'--{k}={FLAGS[k].value}' for k in ('equality', 'reference', 'control_stride', 'eps', 'repeats', 'same_px')
    ),
    'machine': machine.basic_info(),
    'differing': _summary(moved, ties, np.arange(n_differ)),
    'controls': controls_summary,
    # What the controls' rates mean for the 13,233 images: how many are expected to turn on rounding.
    'expected_in_lfw_95ci': {
      k: [round(13233 * p) for p in controls_summary[k]['fraction_95ci']]
      for k in ('exact_top_tie', 'tie_or_noise_sensitive')
    },
    'per_image': per_image,
  }
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  with open(FLAGS.out, 'w') as fh:
    json.dump(result, fh, indent=2)
  print(json.dumps({k: v for k, v in result.items() if k != 'per_image'}, indent=2))


if __name__ == '__main__':
  define_flags()
  app.run(main)
