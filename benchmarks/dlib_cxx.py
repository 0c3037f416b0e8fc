"""dlib's own C++ pipeline, for benchmarks and tests that compare the project's backbones against it.

  `dlib_chips`    face chips cut by dlib alone (its HOG detector, not the project's MTCNN aligner);
  `DlibProcesses` the `dlib-resnet` backbone with its embedding spread over worker processes.

They live here, not in mir_jax: the library never needs them. The cache builder uses more cores for
`dlib-resnet` by running a copy of the backbone in each of its own workers (`embed_in_workers`).
"""

import concurrent.futures
import multiprocessing
import os
from typing import Optional, Sequence, Tuple

import numpy as np

from mir_jax.backbones import base
from mir_jax.backbones import dlib_resnet


def dlib_chips(images: Sequence[np.ndarray], shape_predictor: Optional[os.PathLike] = None) -> Tuple[np.ndarray, int]:
  """Face chips cut by dlib alone, for checking against dlib without the project's aligner.

  dlib's frontal face detector (1 upsampling; the largest face; the centre half of the image when
  it finds none), the 5-point shape predictor in that box, `dlib.get_face_chip(150, 0.25)`.

  Returns:
    (uint8 (n, 150, 150, 3) chips, how many images fell back to the centre box).
  """
  import dlib  # pylint: disable=g-import-not-at-top

  detector = dlib.get_frontal_face_detector()
  predictor = dlib.shape_predictor(
    str(shape_predictor) if shape_predictor else str(dlib_resnet.models_dir() / dlib_resnet.SHAPE_PREDICTOR_FILE)
  )
  chips, fallbacks = [], 0
  for image in images:
    image = np.ascontiguousarray(image, dtype=np.uint8)
    found = detector(image, 1)
    if found:
      box = max(found, key=lambda r: r.area())
    else:
      fallbacks += 1
      h, w = image.shape[:2]
      box = dlib.rectangle(w // 4, h // 4, w - w // 4, h - h // 4)
    chips.append(dlib.get_face_chip(image, predictor(image, box), size=dlib_resnet.CHIP_SIZE, padding=0.25))
  return np.stack(chips), fallbacks


# Per-worker-process state: spawned workers build the backbone once, in the initializer (the whole
# backbone, shape predictor too, so that they embed through its public `embed`).
_WORKER_BACKBONE = None


def _worker_init(options: dict) -> None:
  global _WORKER_BACKBONE
  _WORKER_BACKBONE = dlib_resnet.DlibResNet(**options)


def _worker_embed(chips):
  return _WORKER_BACKBONE.embed(chips)


class DlibProcesses:
  """`dlib-resnet` whose `embed` runs on `num_workers` processes, each with its own copy of the network.

  dlib's descriptor call holds the GIL and runs on one core, so processes are the C++ backbone's way
  to use several cores in one call; the benchmarks weigh that against the JAX network's threads.
  Same preprocessing, options and embeddings as the backbone. Workers are started with 'spawn',
  which re-imports the main module: a script using this needs the usual
  `if __name__ == '__main__':` guard (absl's `app.run(main)` has it).
  """

  def __init__(self, num_workers: int = 2, **options):
    """Builds the backbone here; the workers start on the first `embed` of more than one chip.

    Args:
      num_workers: processes computing descriptors; 1 = in this process.
      **options: `dlib_resnet.DlibResNet` options.
    """
    if num_workers < 1:
      raise ValueError(f'num_workers must be >= 1, got {num_workers}')
    self.backbone = dlib_resnet.DlibResNet(**options)
    self.num_workers = int(num_workers)
    self._options = dict(options)
    self._executor = None

  def preprocess(self, image: np.ndarray, detection: base.Detection) -> np.ndarray:
    return self.backbone.preprocess(image, detection)

  def _pool(self) -> concurrent.futures.ProcessPoolExecutor:
    if self._executor is None:
      # 'spawn', not fork: the parent usually has torch/JAX thread pools running, and forking a
      # multithreaded process can deadlock the child.
      self._executor = concurrent.futures.ProcessPoolExecutor(
        max_workers=self.num_workers,
        mp_context=multiprocessing.get_context('spawn'),
        initializer=_worker_init,
        initargs=(self._options,),
      )
    return self._executor

  def close(self) -> None:
    """Stops the worker processes."""
    if self._executor is not None:
      self._executor.shutdown(wait=True, cancel_futures=True)
    self._executor = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def embed(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
    """(n, 150, 150, 3) uint8 chips -> float32 (n, 128), rows L2-normalised, as the backbone's."""
    chips = [np.ascontiguousarray(c, dtype=np.uint8) for c in inputs]
    if self.num_workers == 1 or len(chips) <= 1:
      return self.backbone.embed(chips)
    # A few chunks per worker, so one slow worker (the box is shared) does not hold up the batch.
    # Each row is normalised on its own, so the chunks' embeddings can simply be concatenated.
    n_chunks = min(len(chips), 4 * self.num_workers)
    bounds = np.linspace(0, len(chips), n_chunks + 1).astype(int)
    futures = [self._pool().submit(_worker_embed, chips[a:b]) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    try:
      return np.concatenate([f.result() for f in futures])
    except concurrent.futures.process.BrokenProcessPool as e:
      self.close()
      raise RuntimeError(
        'dlib worker processes died. The calling script needs an '
        "`if __name__ == '__main__':` guard (workers are spawned and re-import it); otherwise "
        'see the worker traceback above, or use num_workers=1.'
      ) from e
