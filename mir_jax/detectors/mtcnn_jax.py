"""MTCNN in JAX: facenet-pytorch's `detect_face`, compiled with static shapes, one image independent of another.

The steps are facenet-pytorch's (`facenet_pytorch/models/utils/detect_face.py`), in its float32 arithmetic:

  1. P-Net on an image pyramid (scales 12/min_face_size * factor^k while the shorter side stays >= 12 px),
     candidates with face probability >= thresholds[0], NMS 0.5 per scale, NMS 0.7 over all scales, box
     regression, squared boxes;
  2. R-Net on 24x24 crops, probability > thresholds[1], NMS 0.7, box regression, squared boxes;
  3. O-Net on 48x48 crops, probability > thresholds[2], landmarks, box regression, NMS 0.7 by
     intersection over the smaller box ('Min').

What changes to make it compile:

  * Resampling. torch's `interpolate(mode='area')` averages each output pixel's window, summing in float32
    and dividing by the window's height, then width. Here the window sums come from an integer integral
    image, so they are exact; torch's float32 sums are exact too while a window has at most 2^24 / 255
    (65,793) pixels, so the nets' inputs are bit-identical to torch's up to such windows (every pyramid
    level and every crop of a face up to 256 x 256 px). The integral image is uint32, whose wrap-around
    leaves window differences exact, so images up to 2^32 / 255 (16.8 M) pixels are taken.
  * Fixed capacities (`Capacities`). Each stage keeps its best candidates by score up to a capacity, with
    a mask for the unused slots; greedy NMS is a loop on device that picks the best remaining box and
    suppresses its overlaps. Greedy NMS keeps a box only for boxes scored above it, so a capacity changes
    nothing unless more candidates than it pass a threshold; when that happens the image's `overflow`
    flag says so, `Detector` detects it again with larger capacities, and the capacities are options.
  * Refinement in fixed-size calls. Per image, the candidates are a fraction of the capacity (a median of
    54 of 256 on LFW), and the nets cost the same on an empty slot as on a full one; so R-Net and O-Net
    run on exactly the batch's valid candidates, CROPS_PER_CALL at a time through one compiled program
    (the host reads P-Net's and R-Net's masks between the stages), never on every image's capacity.
  * Nothing else mixes images. The pyramid, P-Net and every NMS are `jax.vmap`ped over single images, and
    a crop's net outputs do not depend on where in a call it sits (tested to the last bit, with an image's
    crops first and after another's). The call has one fixed size for that reason too: XLA's float
    rounding of R-Net differs between input batch sizes (by up to 4.8e-7 here). facenet-pytorch's
    batched NMS instead shifts each image's boxes by a batch-dependent offset (its coordinate trick),
    which moves boxes by float rounding when batchmates change.

Each size bucket (`bucket_side` of the height and of the width) compiles its own program, as does each
batch size: an image is zero-padded to its bucket, its own pyramid levels and size are passed in and the
padding is masked, and `Detector` pads a short batch to its batch size so that one bucket compiles once.
"""

import concurrent.futures
import dataclasses
import functools
from typing import List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mir_jax.detectors import mtcnn_nets

# Images are taken up to this many pixels: the uint32 integral image's window sums are exact below it.
MAX_PIXELS = (2**32 - 1) // 255
_RETRIES = 2
# Crops per R-Net / O-Net call. On LFW, calls of 16/8 up to 128/32 crops ran at the same images/s within
# the noise on the 2-core Xeon; the larger keep an accelerator busier. At most one call's worth less one
# is wasted per batch.
CROPS_PER_CALL = {'rnet': 64, 'onet': 16}
THREADS = 2


@dataclasses.dataclass(frozen=True)
class Capacities:
  """How many candidates each stage holds (see the module docstring: more than these passing is flagged)."""

  # The defaults hold every LFW image with room to spare (on 400 LFW images at most 63 P-Net candidates
  # passed per level, NMS kept at most 165 over all levels, median 54, and 28 after R-Net, median 8), and
  # every slot costs work (P-Net's top-k and NMS, the pools below), so larger defaults cost time on every
  # image; an image that overflows is detected again with capacities x 4 (`Detector`).
  proposals_per_scale: int = 512  # P-Net candidates per pyramid level, by score, before NMS 0.5
  kept_per_scale: int = 128  # boxes NMS 0.5 may keep per level
  refine: int = 256  # boxes NMS 0.7 over all levels may keep
  output: int = 32  # boxes R-Net's NMS may keep (and the most faces per image)

  def scaled(self, k: int) -> 'Capacities':
    return Capacities(*(k * getattr(self, f.name) for f in dataclasses.fields(self)))

  def __post_init__(self):
    for f in dataclasses.fields(self):
      if int(getattr(self, f.name)) < 1:
        raise ValueError(f'Capacities.{f.name} must be >= 1, got {getattr(self, f.name)!r}')


def pyramid_scales(height: int, width: int, min_face_size: int, factor: float) -> List[float]:
  """facenet-pytorch's scale pyramid, its arithmetic (Python floats)."""
  m = 12.0 / min_face_size
  minl = min(height, width) * m
  scales, scale = [], m
  while minl >= 12:
    scales.append(scale)
    scale, minl = scale * factor, minl * factor
  return scales


def _windows(slots: int, out, size):
  """ATen's adaptive-pooling windows of an `out`-pixel resampling of `size` pixels, for `slots` >= out
  outputs: [floor(a * size / out), ceil((a + 1) * size / out)) for each a < out, the last one repeated
  after it. `out` and `size` may be traced (an image's own size inside its bucket)."""
  a = jnp.minimum(jnp.arange(slots), out - 1)
  return (a * size) // out, -((-(a + 1) * size) // out)


def bucket_side(n: int) -> int:
  """The side of the compiled program an n-pixel side runs in: n rounded up to a multiple of a quarter to
  an eighth of it (at least 16), so sizes within ~12-25% of each other share one program."""
  step = max(16, 1 << max(0, n.bit_length() - 3))
  return -(-n // step) * step


def _integral(image):
  """(h + 1, w + 1, 3) uint32 integral image (wrapping; differences of it are exact window sums)."""
  s = jnp.cumsum(jnp.cumsum(image.astype(jnp.uint32), axis=0), axis=1)
  return jnp.pad(s, ((1, 0), (1, 0), (0, 0)))


def _area_average(integral, y0, y1, x0, x1, image=None):
  """Window means, torch's rounding: exact sum, / height, / width. y0, y1: (o,) rows; x0, x1: (p,) columns.

  `integral` is one image's, or with `image` a batch's, of which `image` picks one.
  """
  at = (lambda y, x: integral[y, x]) if image is None else (lambda y, x: integral[image, y, x])
  total = at(y1[:, None], x1[None, :]) - at(y0[:, None], x1[None, :]) - at(y1[:, None], x0[None, :])
  total = total + at(y0[:, None], x0[None, :])
  total = total.astype(jnp.float32)
  # XLA rewrites a / broadcast(b) as a * broadcast(1 / b), and (a / b) / c as a / (b * c), both an ulp off
  # torch's two divisions now and then (460 / 2 / 3 gave 76.66667, not 76.666664); such ulps moved the
  # chosen face on 37 of 13,233 LFW images by 1-9 px. Adding 0 * total (a float product XLA may not fold: it
  # is NaN for an infinite total, and total is finite) makes each divisor a full array, not a broadcast; a
  # select between the divisions (kh >= 1 always, which XLA cannot know) keeps them two.
  zero = 0.0 * total
  kh = (y1 - y0).astype(jnp.float32)[:, None, None] + zero
  kw = (x1 - x0).astype(jnp.float32)[None, :, None] + zero
  return jnp.where(kh > 0, total / kh, 0.0) / kw


def _normalise(x):
  return (x - 127.5) * 0.0078125


def _crop_windows(start, length, out: int):
  """Windows of an `out`-pixel area resampling of [start, start + length), as integral-image indices."""
  a = jnp.arange(out)
  return start + (a * length) // out, start + (-((-(a + 1) * length) // out))


def _crops(integrals, image, boxes, sizes, out: int):
  """facenet-pytorch's `pad` then `imresample(img[y-1:ey, x-1:ex], (out, out))` for each box.

  `integrals` are the batch's integral images, `image` (n,) says which one each of the n boxes is in and
  `sizes` (n, 2) that image's own height and width. Returns (n, out, out, 3) normalised crops and (n,)
  whether the crop is non-empty.
  """
  b = jnp.trunc(boxes).astype(jnp.int32)
  x, y = jnp.maximum(b[:, 0], 1), jnp.maximum(b[:, 1], 1)
  ex, ey = jnp.minimum(b[:, 2], sizes[:, 1]), jnp.minimum(b[:, 3], sizes[:, 0])
  ok = (ey > y - 1) & (ex > x - 1)
  # An empty crop is replaced by a 1-pixel one (masked out below) so that the arithmetic stays finite.
  x0, y0 = jnp.where(ok, x - 1, 0), jnp.where(ok, y - 1, 0)
  cw, ch = jnp.where(ok, ex - (x - 1), 1), jnp.where(ok, ey - (y - 1), 1)

  def one(i, y0, ch, x0, cw):
    ys, ye = _crop_windows(y0, ch, out)
    xs, xe = _crop_windows(x0, cw, out)
    return _area_average(integrals, ys, ye, xs, xe, image=i)

  return _normalise(jax.vmap(one)(image, y0, ch, x0, cw)), ok


@functools.partial(jax.jit, static_argnums=(0, 6))
def _crop_net(net: str, params, integrals, image, boxes, sizes, out: int):
  """Net `net` on the `out`-pixel crops of `boxes` (CROPS_PER_CALL[net], 4), each in image `image` of the
  batch: its outputs, and whether each crop was non-empty."""
  crops, ok = _crops(integrals, image, boxes, sizes, out)
  return mtcnn_nets.apply(net, params, crops), ok


def _pooled(net: str, params, integrals, sizes, boxes, valid, out: int):
  """Net `net` on the `out`-pixel crops of every valid box of the batch, CROPS_PER_CALL[net] at a time.

  boxes (n, slots, 4) and valid (n, slots) are per image (numpy); the valid boxes, in (image, slot)
  order, go through one compiled fixed-size program call after call, the last call's spare places filled
  with copies of its first box, whose outputs are discarded. Returns the net's outputs per slot
  (n, slots, ...), zero where no crop ran, and (n, slots) whether a non-empty crop ran there.
  """
  n, slots = valid.shape
  idx = np.flatnonzero(valid.reshape(-1))
  flat_boxes = boxes.reshape(-1, 4)
  per_call = CROPS_PER_CALL[net]
  outputs, ok = None, np.zeros(n * slots, bool)
  for start in range(0, len(idx), per_call):
    part = idx[start : start + per_call]
    take = np.concatenate([part, np.full(per_call - len(part), part[0])])
    image = (take // slots).astype(np.int32)
    result, crop_ok = _crop_net(net, params, integrals, image, flat_boxes[take], sizes[image], out)
    result = [np.asarray(r)[: len(part)] for r in result]
    if outputs is None:
      outputs = [np.zeros((n * slots, *r.shape[1:]), r.dtype) for r in result]
    for full, r in zip(outputs, result):
      full[part] = r
    ok[part] = np.asarray(crop_ok)[: len(part)]
  if outputs is None:  # no valid box in the batch: the net's outputs, all zero
    shapes = jax.eval_shape(lambda x: mtcnn_nets.apply(net, params, x), jnp.zeros((1, out, out, 3)))
    outputs = [np.zeros((n * slots, *r.shape[1:]), r.dtype) for r in shapes]
  return [o.reshape(n, slots, *o.shape[1:]) for o in outputs], ok.reshape(n, slots)


def _nms(boxes, scores, valid, threshold: float, capacity: int, mode: str = 'union'):
  """Greedy NMS: (capacity,) indices of the kept boxes in pick order (best first), their mask, and whether
  boxes were left over when the capacity was full.

  mode 'union' is torchvision's `nms` (areas (x2 - x1) * (y2 - y1), suppress IoU > threshold); equal scores
  go to the lower index, as its stable descending sort orders them. 'min' is facenet-pytorch's
  `nms_numpy(..., 'Min')` (areas with +1, intersection over the smaller area), which sorts ascending and
  takes the last: equal scores go to the higher index, as a stable sort would order them. numpy's
  argsort is not stable, so facenet-pytorch breaks such a tie by where the two sit in its whole batch's
  array and by the CPU's sort kernel; with its sort made stable it agrees with this rule (on 13,231 of
  13,233 LFW images, benchmarks/mtcnn_equality.py). Exact ties are real there: O-Net's face probabilities
  near 1 are float32 values a few ulps (6e-8) apart, so two crops of one face can share one
  (benchmarks/mtcnn_ties.py).
  """
  plus = 1.0 if mode == 'min' else 0.0
  area = (boxes[:, 2] - boxes[:, 0] + plus) * (boxes[:, 3] - boxes[:, 1] + plus)
  neg_inf = jnp.array(-jnp.inf, scores.dtype)

  index = jnp.arange(len(scores))

  def step(state):
    alive, picks, count = state
    if mode == 'min':
      i = len(scores) - 1 - jnp.argmax(jnp.where(alive, scores, neg_inf)[::-1])
    else:
      i = jnp.argmax(jnp.where(alive, scores, neg_inf))
    xx1 = jnp.maximum(boxes[i, 0], boxes[:, 0])
    yy1 = jnp.maximum(boxes[i, 1], boxes[:, 1])
    xx2 = jnp.minimum(boxes[i, 2], boxes[:, 2])
    yy2 = jnp.minimum(boxes[i, 3], boxes[:, 3])
    inter = jnp.maximum(0.0, xx2 - xx1 + plus) * jnp.maximum(0.0, yy2 - yy1 + plus)
    if mode == 'min':
      overlap = inter / jnp.minimum(area[i], area)
    else:
      overlap = inter / (area[i] + area - inter)
    return alive & ~((overlap > threshold) | (index == i)), picks.at[count].set(i), count + 1

  # A while loop, not a scan over the capacity: it runs as many steps as boxes are kept (under vmap, the
  # most any image of the batch keeps), which is far fewer than the capacity on real photos.
  alive, picks, count = jax.lax.while_loop(
    lambda state: jnp.any(state[0]) & (state[2] < capacity),
    step,
    (valid, jnp.zeros(capacity, jnp.int32), jnp.int32(0)),
  )
  return picks, jnp.arange(capacity) < count, jnp.any(alive)


def _rerec(b):
  """facenet-pytorch's `rerec`: the box squared on its longer side, about its centre."""
  h, w = b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]
  side = jnp.maximum(w, h)
  x1 = b[:, 0] + w * 0.5 - side * 0.5
  y1 = b[:, 1] + h * 0.5 - side * 0.5
  return jnp.stack([x1, y1, x1 + side, y1 + side], axis=1)


def _bbreg(b, reg):
  """facenet-pytorch's `bbreg`: regression offsets in units of the box's size (with +1)."""
  w = b[:, 2] - b[:, 0] + 1
  h = b[:, 3] - b[:, 1] + 1
  return jnp.stack(
    [b[:, 0] + reg[:, 0] * w, b[:, 1] + reg[:, 1] * h, b[:, 2] + reg[:, 2] * w, b[:, 3] + reg[:, 3] * h], 1
  )


def _stage1(params, integral, size, level_sizes, scales, threshold, caps: Capacities):
  """P-Net over the pyramid of one image of `size` (2,) = (h, w), zero-padded to its bucket (`integral`'s
  size); `level_sizes` (levels, 2) is each pyramid level's (h, w) for this image, (0, 0) past its last."""
  boxes, scores, regs, valid, overflow = [], [], [], [], jnp.array(False)
  bucket_h, bucket_w = integral.shape[0] - 1, integral.shape[1] - 1
  for k, scale in enumerate(scales):
    oh, ow = level_sizes[k, 0], level_sizes[k, 1]
    ys, ye = _windows(int(bucket_h * scale + 1), jnp.maximum(oh, 1), size[0])
    xs, xe = _windows(int(bucket_w * scale + 1), jnp.maximum(ow, 1), size[1])
    level = _normalise(_area_average(integral, ys, ye, xs, xe))
    reg, prob = mtcnn_nets.apply('pnet', params, level[None], valid_hw=level_sizes[k][None])
    reg, prob = reg[0].reshape(-1, 4), prob[0]
    rows, cols = np.meshgrid(np.arange(prob.shape[0]), np.arange(prob.shape[1]), indexing='ij')
    # P-Net's own output size on this level: 3x3 conv, 2x2 ceil-mode pool, two 3x3 convs.
    inside = (rows < (oh - 1) // 2 - 4) & (cols < (ow - 1) // 2 - 4)
    prob = prob.reshape(-1)
    passing = (prob >= threshold) & inside.reshape(-1)
    k = min(caps.proposals_per_scale, prob.shape[0])
    # top_k keeps the lower index first among equal keys, the row-major order torch's nonzero() gives.
    key, idx = jax.lax.top_k(jnp.where(passing, prob, -jnp.inf), k)
    overflow |= jnp.sum(passing) > k
    ok = key > -jnp.inf
    xy = jnp.asarray(np.stack([cols.reshape(-1), rows.reshape(-1)], 1), jnp.float32)[idx]
    q1 = jnp.floor((2 * xy + 1) / scale)
    q2 = jnp.floor((2 * xy + 12) / scale)
    b = jnp.concatenate([q1, q2], 1)
    picks, kept, left = _nms(b, prob[idx], ok, 0.5, min(caps.kept_per_scale, k))
    overflow |= left
    boxes.append(b[picks])
    scores.append(prob[idx][picks])
    regs.append(reg[idx][picks])
    valid.append(kept)
  boxes, scores, regs, valid = (jnp.concatenate(v) for v in (boxes, scores, regs, valid))
  picks, kept, left = _nms(boxes, scores, valid, 0.7, min(caps.refine, len(scores)))
  b, r = boxes[picks], regs[picks]
  w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
  b = jnp.stack([b[:, 0] + r[:, 0] * w, b[:, 1] + r[:, 1] * h, b[:, 2] + r[:, 2] * w, b[:, 3] + r[:, 3] * h], 1)
  return _rerec(b), kept, overflow | left


@functools.partial(jax.jit, static_argnums=(4, 5, 6))
def _propose(params, images, sizes, level_sizes, scales, threshold, caps: Capacities):
  """(n, H, W, 3) uint8 images, each zero-padded from its own `sizes` (n, 2) to the bucket (H, W), with
  `level_sizes` (n, levels, 2) -> their integral images, P-Net's boxes (n, refine, 4) and mask, overflow (n,)."""
  integrals = jax.vmap(_integral)(images)
  return integrals, *jax.vmap(lambda i, s, levels: _stage1(params, i, s, levels, scales, threshold, caps))(
    integrals, sizes, level_sizes
  )


@functools.partial(jax.jit, static_argnums=(4,))
def _refine(boxes, reg, prob, passing, capacity: int):
  """Per image, R-Net's NMS 0.7 on the passing boxes, then regression and squaring: boxes (n, capacity, 4),
  their mask, and whether boxes were left over."""

  def one(b, r, p, v):
    picks, kept, left = _nms(b, p, v, 0.7, capacity)
    return _rerec(_bbreg(b[picks], r[picks])), kept, left

  return jax.vmap(one)(boxes, reg, prob, passing)


@jax.jit
def _finish(boxes, reg, marks, prob, passing):
  """Per image, O-Net's landmarks, regression and NMS 0.7 'Min': boxes, probs, landmarks, mask, best first."""

  def one(boxes, reg, marks, prob, passing):
    w, h = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
    points = jnp.stack(
      [w[:, None] * marks[:, :5] + boxes[:, :1] - 1, h[:, None] * marks[:, 5:] + boxes[:, 1:2] - 1], -1
    )
    boxes = _bbreg(boxes, reg)
    picks, kept, _ = _nms(boxes, prob, passing, 0.7, len(prob), mode='min')
    return boxes[picks], prob[picks], points[picks], kept

  return jax.vmap(one)(boxes, reg, marks, prob, passing)


def _detect_batch(params, images, sizes, level_sizes, scales, thresholds, caps: Capacities):
  """The three stages on one bucket's batch (see `_propose`) -> per image boxes (c, 4), scores (c,),
  landmarks (c, 5, 2), mask (c,), overflow (n,), numpy."""
  integrals, boxes, valid, overflow = _propose(params['pnet'], images, sizes, level_sizes, scales, thresholds[0], caps)
  boxes, valid, overflow = np.asarray(boxes), np.asarray(valid), np.asarray(overflow)
  (reg, prob), ok = _pooled('rnet', params['rnet'], integrals, sizes, boxes, valid, 24)
  passing = valid & ok & (prob > thresholds[1])
  boxes, kept, left = (np.asarray(v) for v in _refine(boxes, reg, prob, passing, min(caps.output, boxes.shape[1])))
  (reg, marks, prob), ok = _pooled('onet', params['onet'], integrals, sizes, boxes, kept, 48)
  passing = kept & ok & (prob > thresholds[2])
  return (*(np.asarray(v) for v in _finish(boxes, reg, marks, prob, passing)), overflow | left)


class Detector:
  """facenet-pytorch's `MTCNN.detect(..., landmarks=True)` for same-size uint8 RGB stacks, compiled.

  `detect(stack)` returns, per image, (boxes (k, 4), probs (k,), landmarks (k, 5, 2)) best first, or
  (None, None, None) when no face passed, and `overflowed` (which images hit a capacity even after the
  retries). `num_retried` counts the images detected again with larger capacities so far.
  """

  def __init__(
    self,
    min_face_size: int = 20,
    thresholds: Sequence[float] = (0.6, 0.7, 0.7),
    factor: float = 0.709,
    capacities: Optional[Capacities] = None,
    batch_size: int = 8,
    weights_dir: str = '',
  ):
    self.min_face_size, self.factor = int(min_face_size), float(factor)
    self.thresholds = tuple(float(t) for t in thresholds)
    self.capacities = capacities or Capacities()
    self.batch_size = int(batch_size)
    self.params = mtcnn_nets.load(weights_dir)
    self.num_retried = 0

  def detect(self, images: Sequence[np.ndarray]):
    """Per image (uint8 HxWx3 RGB, any sizes), its faces; see the class docstring."""
    images = [np.asarray(im) for im in images]
    for im in images:
      if im.dtype != np.uint8 or im.ndim != 3 or im.shape[-1] != 3:
        raise ValueError(f'expected uint8 HxWx3 RGB images, got {im.dtype} {im.shape}')
      height, width = im.shape[:2]
      if height * width > MAX_PIXELS:
        raise ValueError(
          f'a {width}x{height} image has more than {MAX_PIXELS:,} pixels, beyond mtcnn-jax exact resampling; '
          'downscale it first or use --aligner=mtcnn-torch'
        )
      if not pyramid_scales(height, width, self.min_face_size, self.factor):
        raise ValueError(f'a {width}x{height} image is smaller than min_face_size={self.min_face_size}')
    # Images of nearby sizes share a bucket, hence a compiled program and a batch.
    buckets = {}
    for i, im in enumerate(images):
      buckets.setdefault((bucket_side(im.shape[0]), bucket_side(im.shape[1])), []).append(i)
    out, overflowed = [None] * len(images), [False] * len(images)
    jobs = [
      (bucket, members[start : start + self.batch_size])
      for bucket, members in buckets.items()
      for start in range(0, len(members), self.batch_size)
    ]

    def first_try(job):
      bucket, chunk = job
      return self._run([images[i] for i in chunk], bucket, self.capacities, self.batch_size)

    # Batches run THREADS at a time: one batch's host work and small XLA ops leave a core idle (1.3 of
    # 2 cores busy with one batch at a time), and the results do not depend on the order.
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
      for (bucket, chunk), results in zip(jobs, pool.map(first_try, jobs)):
        for i, result in zip(chunk, results):
          caps = self.capacities
          # Capacities x 4, then x 16, for an image that filled one: its boxes are then exactly the
          # uncapped ones; one still full after that is flagged (`overflowed`).
          for _ in range(_RETRIES):
            if not result[3]:
              break
            caps = caps.scaled(4)
            self.num_retried += 1
            result = self._run([images[i]], bucket, caps, 1)[0]
          out[i], overflowed[i] = result[:3], result[3]
    self.overflowed = overflowed
    return out

  def _run(self, chunk, bucket, caps, batch_size):
    scales = pyramid_scales(*bucket, self.min_face_size, self.factor)
    canvas = np.zeros((batch_size, *bucket, 3), np.uint8)
    sizes = np.tile(np.array(bucket, np.int32), (batch_size, 1))  # the padding slots: blank buckets
    level_sizes = np.zeros((batch_size, len(scales), 2), np.int32)
    level_sizes[:] = [[int(bucket[0] * s + 1), int(bucket[1] * s + 1)] for s in scales]
    for j, im in enumerate(chunk):
      h, w = im.shape[:2]
      canvas[j, :h, :w] = im
      sizes[j] = h, w
      # The image's own pyramid: facenet-pytorch's levels (the same scales, fewer of them for a smaller
      # image) and sizes, in its float64 arithmetic.
      own = pyramid_scales(h, w, self.min_face_size, self.factor)
      level_sizes[j] = 0
      level_sizes[j, : len(own)] = [[int(h * s + 1), int(w * s + 1)] for s in own]
    result = _detect_batch(self.params, canvas, sizes, level_sizes, tuple(scales), self.thresholds, caps)
    boxes, probs, points, kept, overflow = (np.asarray(v)[: len(chunk)] for v in result)
    return [
      (boxes[i][kept[i]], probs[i][kept[i]], points[i][kept[i]], bool(overflow[i]))
      if kept[i].any()
      else (None, None, None, bool(overflow[i]))
      for i in range(len(chunk))
    ]
