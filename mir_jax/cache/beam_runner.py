"""The Beam runner: a cache build's chunks computed by Apache Beam workers (Dataflow, Spark, Flink, or the
DirectRunner on one machine), each written through the local runner's own `write_chunk`.

The driver (`writer.build`) plans the chunks, holds the cache's lock, and writes the TFDS metadata once every
shard exists, as it does for the local runner; only the chunks run elsewhere. A chunk is one Beam element
(the cache's own chunks are the batches), and a worker loads its backbone and aligner once (`DoFn.setup`).
A chunk's shard is written under a name unique to its attempt and renamed into place, so a retried or
speculative attempt replaces the shard whole: a cache never holds an image twice or a chunk half, and the
driver's final check counts every shard's records against its statistics. Workers write to the cache
directory directly, so every worker must see `--data_dir` as the driver does (a shared or mounted
filesystem; BUILD.md, "Embedding with Apache Beam").
"""

import contextlib
import dataclasses
import io
import logging
import os
import re
import time
from typing import List, Sequence

import apache_beam as beam
from apache_beam import runners
from apache_beam.options import pipeline_options as po

from mir_jax import paths
from mir_jax.cache import workers

# What `--beam_pipeline_options` means when it is empty: the DirectRunner, one process per core (0 = Beam's
# count of them).
DEFAULT_OPTIONS = '--runner=DirectRunner,--direct_running_mode=multi_processing,--direct_num_workers=0'


class BeamOptionsError(ValueError):
  """Pipeline options that Beam or the chosen runner rejects; the message is Beam's own."""


def split_options(text: str) -> List[str]:
  """'--a=1,--b=2' (TFDS's `--beam_pipeline_options` form) or '--a=1 --b=2' -> ['--a=1', '--b=2']."""
  return [f for f in re.split(r'[,\s]+(?=--)', text.strip()) if f]


def pipeline_options(text: str):
  """Parses `text` into PipelineOptions, refusing what Beam would reject later or silently drop."""
  flags = split_options(text or DEFAULT_OPTIONS)
  bad = [f for f in flags if not f.startswith('--')]
  if bad:
    raise BeamOptionsError(f'pipeline options start with --, got {bad} in {text!r}')
  options = po.PipelineOptions(flags)
  stderr = io.StringIO()
  try:
    # argparse reports a bad value on stderr and exits; Beam parses the options only when asked.
    with contextlib.redirect_stderr(stderr):
      known = options.get_all_options()
      every = options.get_all_options(retain_unknown_options=True)
  except SystemExit:
    message = stderr.getvalue().strip().splitlines()
    raise BeamOptionsError(
      f'Beam rejects the pipeline options {flags}: {message[-1] if message else "bad value"}'
    ) from None
  unknown = sorted(set(every) - set(known))
  if unknown:
    # Beam only warns about these and drops them; an option a user typed was meant.
    raise BeamOptionsError(f'no Beam runner knows the pipeline option(s) {unknown} (in {flags})')
  try:
    runners.create_runner(options.view_as(po.StandardOptions).runner or 'DirectRunner')
  except ValueError as e:
    raise BeamOptionsError(str(e)) from None
  return options


class EmbedChunk(beam.DoFn):
  """(chunk index, its records) -> the chunk's shard, written; yields (index, records written)."""

  def __init__(self, writer):
    self.writer = writer

  def setup(self):
    # Once per worker: the backbone and the aligner are the expensive part of starting. The local runner's
    # worker start-up, thread limits included, so they do not hang on the aligner's `num_threads`.
    self.embedder = workers.start_worker(self.writer.pipeline)
    self.written = beam.metrics.Metrics.counter('mir_cache', 'images_written')

  def process(self, element):
    c, chunk = element
    started = time.time()
    # The local runner's task grouping (task_size records per aligner call), so MTCNN sees the same batches.
    prepared = list(workers.prepared_stream(chunk, self.writer.pipeline, self.embedder, 0, self.writer.task_size))
    n = self.writer.write_chunk(c, chunk, prepared, self.embedder.backbone, started)
    self.written.inc(n)
    yield c, n


def run(writer, todo: Sequence[int], options) -> None:
  """Writes the chunks `todo` of `writer` (a `writer._ShardWriter`) on Beam under `options`.

  A failure inside the pipeline propagates; the chunks that finished are kept, and rerunning the build
  computes only the rest.
  """
  # The DirectRunner's job service logs every worker message at INFO; the cache's own progress is enough.
  logging.getLogger('apache_beam').setLevel(logging.WARNING)
  # Worker processes the DirectRunner starts import this package by name: they need its root on their path.
  root = os.fspath(paths.repo_root())
  os.environ['PYTHONPATH'] = os.pathsep.join(
    [root] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]
  )
  # The records travel with their elements, not with every worker's copy of the DoFn.
  shipped = dataclasses.replace(writer, chunks=[[] for _ in writer.chunks], backbone=None, progress=False)
  elements = [(c, writer.chunks[c]) for c in todo]
  with beam.Pipeline(options=options) as p:
    (
      p
      | 'chunks' >> beam.Create(elements)
      # Spread the chunks over the workers (Create alone may hand them all to one).
      | 'spread' >> beam.Reshuffle()
      | 'embed' >> beam.ParDo(EmbedChunk(shipped))
    )
