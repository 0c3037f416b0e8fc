"""The embedding caches a reproduce process reads, each loaded once; nothing here embeds images.

A missing cache (or missing weights to build one) raises `Unavailable`, whose message says which command
builds it; the tables turn it into a cell that says so. Tests hand a `Context` any object with this
class's `get` and `spec` methods instead (e.g. one serving synthetic sets).
"""

import json
import os
import time
from typing import Dict, Tuple

from mir_jax import align
from mir_jax import embedding_sets
from mir_jax.cache import key as cache_key
from mir_jax.cache import reader


class Unavailable(Exception):
  """A cache (or the weights to build it) is missing; the message says how to supply it."""


def data_key(dataset: str, backbone: str) -> str:
  """How tuning files and timings name the embeddings of `dataset` under `backbone`."""
  return f'{dataset}_{backbone}'


class EmbeddingStore:
  """Finds the caches under `data_dir` ('' = the default root) made with MTCNN `aligner` ('' = the default,
  `mir_jax.embed --aligner`), and keeps each loaded set."""

  def __init__(self, data_dir: str = '', aligner: str = ''):
    self.data_dir = data_dir
    self.aligner = aligner
    self._sets: Dict[Tuple, embedding_sets.EmbeddingSet] = {}
    self._specs: Dict[str, dict] = {}
    self.timings: Dict[str, float] = {}
    # cache directory -> data key of every cache loaded, for the provenance manifest (reproduce/provenance.py).
    self.directories: Dict[str, str] = {}

  def get(
    self, dataset: str, backbone: str, manual_dir: str = '', subset: str = '', limit: int = 0, **reader_kwargs
  ) -> embedding_sets.EmbeddingSet:
    """The cached embeddings of `dataset` under `backbone` (built with those `mir_jax.embed` flags);
    raises Unavailable with the embed command that builds them."""
    key = (dataset, backbone, manual_dir, subset, limit, json.dumps(reader_kwargs, sort_keys=True))
    if key not in self._sets:
      from mir_jax.cache import lookup  # pylint: disable=g-import-not-at-top  (readers: only when used)
      from mir_jax.cache import selection  # pylint: disable=g-import-not-at-top
      from mir_jax.datasets import listing  # pylint: disable=g-import-not-at-top

      try:
        directory = lookup.find_cache(
          dataset,
          backbone,
          data_dir=self.data_dir or None,
          manual_dir=manual_dir or None,
          subset=subset or None,
          limit=limit or None,
          reader_kwargs=reader_kwargs or None,
          # The default aligner's caches are found without the option, so their commands do not spell it.
          align_options={'detector': self.aligner} if self.aligner not in ('', align.AlignerConfig.detector) else None,
        )
      except (cache_key.CacheError, listing.DatasetError, selection.UsageError) as e:
        raise Unavailable(str(e)) from None
      except (FileNotFoundError, ImportError) as e:  # FaceNet's weights (or facenet-pytorch) absent: its key needs them
        raise Unavailable(f'{backbone} cannot run here: {e}') from None
      start = time.perf_counter()
      self._sets[key] = embedding_sets.load(str(directory))
      self.directories[str(directory)] = data_key(dataset, backbone)
      self.timings[f'load {os.path.basename(os.path.dirname(directory))}'] = time.perf_counter() - start
      spec = reader.read_info(directory)['spec']
      # What made the embeddings, not which subset of images was cached nor whether the mirrored faces'
      # embeddings are stored beside them (--flip): a task built from the whole-LFW cache and from a
      # min_images10 cache is the same task, and shares its stored tuning.
      self._specs[data_key(dataset, backbone)] = {k: spec[k] for k in ('dataset', 'backbone_config', 'align_config')}
    return self._sets[key]

  def spec(self, key: str):
    """What made the embeddings named `key` (for the tuning context); the key itself before they load."""
    return self._specs.get(key, key)
