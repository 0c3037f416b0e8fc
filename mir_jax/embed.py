r"""Builds (or resumes) the embedding cache of a face dataset.

  python -m mir_jax.embed --dataset=lfw --backbone=dlib-resnet
  python -m mir_jax.embed --dataset=lfw --backbone=dlib-resnet --subset=pairs_head3   # CI-sized

The cache is a TFDS dataset (array_record) under `--data_dir` (default `$MIR_DATA_DIR` or
`<repo>/data_cache`); its directory name hashes every setting that changes the embeddings (see
`mir_jax.cache`). Rerunning an interrupted command resumes it; rerunning a finished one prints the
location and exits.

Subsets (`--subset`, LFW only; folds count from 0 as in `mir_jax.datasets.lfw`):
  pairs            every image named by View 2 pairs.txt (7,701 images)
  pairs_fold<k>    the images of fold k's 600 pairs
  pairs_head<m>    the images of the first m matched and first m mismatched pairs of every fold
                   (20*m pairs over all 10 folds, so 10-fold verification still runs on them)
`--limit=N` then keeps whole identities, in name order, while the total stays <= N images (the first N
images when even the first identity is larger), so a limited run still holds complete identities.

Runners (`--runner`): `local` (the default) computes the chunks in this process and `--num_workers` worker
processes; `beam` hands them to an Apache Beam runner named by `--beam_pipeline_options` (TFDS's form, e.g.
`--beam_pipeline_options=--runner=DirectRunner,--direct_num_workers=2,--direct_running_mode=multi_processing`;
Dataflow, Spark and Flink in BUILD.md, "Embedding with Apache Beam"). Both write the same cache.
"""

import sys
from typing import Sequence

from absl import app
from absl import flags
from absl import logging

from mir_jax import compilation_cache
from mir_jax.cache import detections
from mir_jax.cache import flags as cache_flags
from mir_jax.cache import key
from mir_jax.cache import lookup
from mir_jax.cache import reader
from mir_jax.cache import selection
from mir_jax.cache import writer

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('dataset', 'lfw', 'Dataset reader name (mir_jax.datasets.DATASETS).')
  cache_flags.define_cache_flags()
  flags.DEFINE_integer('num_workers', 2, 'Decode/detect/preprocess processes; 0 = all in this process.')
  flags.DEFINE_integer('chunk_size', writer.DEFAULT_CHUNK_SIZE, 'Images per shard (the unit of resumption).')
  flags.DEFINE_integer('batch_size', writer.DEFAULT_BATCH_SIZE, 'Images per backbone call.')
  flags.DEFINE_enum('runner', 'local', ['local', 'beam'], 'Who computes the chunks: this machine, or Apache Beam.')
  flags.DEFINE_string(
    'beam_pipeline_options',
    '',
    'With --runner=beam: Beam pipeline options, comma- or space-separated (default: the DirectRunner, one '
    'process per core; mir_jax/cache/beam_runner.py DEFAULT_OPTIONS).',
  )
  flags.DEFINE_bool(
    'verify',
    False,
    'Check every shard of the cache (sha256, record count, readability) and recompute exactly the damaged ones.',
  )


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  compilation_cache.enable()
  beam_options = None
  if FLAGS.runner == 'beam':
    from mir_jax.cache import beam_runner  # pylint: disable=g-import-not-at-top  (Beam loads slowly, and noisily)

    try:
      beam_options = beam_runner.pipeline_options(FLAGS.beam_pipeline_options)
    except beam_runner.BeamOptionsError as e:
      sys.exit(f'error: {e}')
  elif FLAGS.beam_pipeline_options:
    sys.exit('error: --beam_pipeline_options is for --runner=beam')
  try:
    args = cache_flags.find_cache_args()
    data_dir = args.pop('data_dir')
    records, spec, pipeline, model, left_out = lookup.prepare(FLAGS.dataset, **args, num_workers=FLAGS.num_workers)
  except selection.UsageError as e:
    sys.exit(f'error: {e}')
  print(f'{len(records)} images of {FLAGS.dataset} -> {key.cache_dir(data_dir, spec)}', flush=True)
  try:
    result = _build(records, spec, pipeline, model, left_out, args, data_dir, beam_options)
  except key.CacheError as e:  # the images changed under a cache, or none could be embedded
    sys.exit(f'error: {e}')
  except Exception as e:  # pylint: disable=broad-except
    if beam_options is None:
      raise
    # A worker's failure reaches here wrapped in the runner's own traces: the log keeps them, the user gets why.
    logging.exception('The Beam pipeline failed')
    last = [line for line in str(e).splitlines() if line.strip()]
    sys.exit(
      f'error: the Beam pipeline failed ({type(e).__name__}: {last[-1] if last else ""}). The chunks it finished '
      'are kept: rerun the same command to compute the rest.'
    )
  for damage in result.damaged:
    print(f'damaged, recomputed: {damage}', flush=True)
  info = reader.read_info(result.directory)
  if result.chunks_computed:
    rate = f', {result.chunks_computed} chunks in {result.seconds:.0f} s'
  elif FLAGS.verify:
    rate = f' (already complete; all {result.num_chunks} shards verified intact)'
  else:
    rate = ' (already complete; --verify checks its shards)'
  # Caches finished before the aligner's paths were counted had one fallback, the centre box.
  paths = info.get('alignment') or {
    'detected': info['num_embedded'] - info['num_detection_fallbacks'],
    'center': info['num_detection_fallbacks'],
    'whole': 0,
    'skipped_no_face': 0,
    'unreadable': info['num_bad_images'],
  }
  print(
    f'cache: {result.directory}{rate}\n'
    f'  embedded {info["num_embedded"]} of {info["num_records"]} images: {paths["detected"]} detected, '
    f'{paths["center"]} with the centre-box fallback, {paths["whole"]} with the whole image as the box; '
    f'{paths["skipped_no_face"]} skipped (no face), {paths["unreadable"]} unreadable; '
    f'{info.get("num_left_out_by_reader", 0)} entries the dataset reader left out '
    f'(reasons in {key.SKIPPED_FILE}); key {info["key"]}\n'
    f'  {info.get("num_detections_reused", 0)} images took their detection from an earlier cache of the same '
    f'images and aligner (the store under {detections.DIRECTORY}/)',
    flush=True,
  )


def _build(records, spec, pipeline, model, left_out, args, data_dir, beam_options) -> writer.BuildResult:
  return writer.build(
    records,
    spec,
    pipeline,
    data_dir=data_dir,
    backbone=model,
    chunk_size=FLAGS.chunk_size,
    batch_size=FLAGS.batch_size,
    num_workers=FLAGS.num_workers,
    description=f'{FLAGS.dataset} embedded with {args["backbone"]}',
    verify=FLAGS.verify,
    left_out=left_out,
    command=lookup.command_for(FLAGS.dataset, **args, data_dir=data_dir, absolute=True),
    beam_options=beam_options,
  )


if __name__ == '__main__':
  define_flags()
  app.run(main)
