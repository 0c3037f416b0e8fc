"""What a reproduce process holds: its configuration, the embedding store, the tuning-choice store and the
memo of trained heads, plus the protocols every table builds on a backbone's caches."""

from typing import Dict, List, Optional

from mir_jax import choice_store
from mir_jax import options
from mir_jax import paths
from mir_jax import protocols
from reproduce import embedding_store
from reproduce import head_memo


class Context:
  """One reproduce process. `embeddings` defaults to the caches under `config.data_dir`; tests pass any object
  with `EmbeddingStore`'s `get` and `spec`."""

  def __init__(self, config, output_dir: str = paths.OUTPUT_DIR, embeddings=None):
    self.config = config
    self.output_dir = output_dir
    self.seeds = options.seeds(config.train)
    self.base_variant = options.Variant.from_config(config)
    self.embeddings = (
      embeddings if embeddings is not None else embedding_store.EmbeddingStore(config.data_dir, config.aligner)
    )
    self.choices = choice_store.ChoiceStore(config, config.tuned_dir)
    self.heads = head_memo.HeadMemo(config, self.choices, self.embeddings.spec)
    # What the report plots beyond the tables, by kind (e.g. 'open_set': rank-1 against distractor-set
    # size); `all_curves()` adds every trained head's training and validation curves.
    self.curves: Dict[str, list] = {}
    # The manifest that will describe this process's outputs (`cli.run` names it; '' outside a command), so
    # each output can say which one.
    self.provenance_file = ''

  def backbones(self) -> List[str]:
    return [b.strip() for b in self.config.backbones.split(',') if b.strip()]

  def readings(self) -> List[str]:
    return [r.strip() for r in self.config.readings.split(',') if r.strip()]

  def trained(
    self, task: protocols.Classification, key: str, schedules, reading: str, variant: Optional[options.Variant] = None
  ) -> head_memo.Trained:
    return self.heads.trained(task, key, schedules, reading, variant or self.base_variant)

  def all_curves(self) -> Dict[str, list]:
    return {'heads': self.heads.curves(), **self.curves}

  @property
  def timings(self):
    """Seconds per part of the process: loading caches, tuning when no stored choice matched, training."""
    return {**getattr(self.embeddings, 'timings', {}), **self.choices.timings, **self.heads.timings}

  def lfw_identity(self, backbone: str, num_seeds: Optional[int] = None) -> protocols.Classification:
    c = self.config.lfw
    return protocols.lfw_identity(
      self.embeddings.get('lfw', backbone, subset=c.subset), self.seeds[:num_seeds], c.min_images, c.train_fraction
    )

  def lfw_distractors(self, backbone: str) -> protocols.OpenSet:
    c = self.config.lfw_distractors
    return protocols.lfw_distractors(
      self.embeddings.get('lfw', backbone),
      c.probe_min_images,
      c.distractor_max_images,
      (c.head_min_images, c.head_max_images),
    )
