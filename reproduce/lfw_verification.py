r"""LFW pair verification (View 2, 10 folds) from the embedding cache.

  python -m mir_jax.embed --dataset=lfw --backbone=dlib-resnet          # once: builds the cache
  python -m reproduce.lfw_verification --backbone=dlib-resnet

The protocol is `mir_jax.evaluators.verification`: per fold, the threshold maximising accuracy on the other nine folds
scores the held-out fold; accuracy mean +- std over folds, AUC, VAL@FAR=1e-3. Every pair whose image could
not be embedded is listed with the reason, never dropped silently. Results go to
`<output_dir>/lfw_verification_<cache name>[...].json`.

This script never embeds: when the cache is missing it prints the embed command that builds it.
"""

import json
import os
import pathlib
import sys
import time
from typing import Any, Dict, Sequence

from absl import app
from absl import flags

from mir_jax import cache
from mir_jax import embed
from mir_jax import paths
from mir_jax.evaluators import verification

FLAGS = flags.FLAGS


def define_flags() -> None:
  # Defined only when run as a script, so importing this module (tests) adds no global flags.
  flags.DEFINE_string('backbone', None, 'Backbone whose cache to evaluate (default: the default backbone).')
  flags.DEFINE_multi_string('backbone_option', [], 'key=value backbone options the cache was built with.')
  flags.DEFINE_string('data_dir', None, 'Cache root (default $MIR_DATA_DIR or <repo>/data_cache).')
  flags.DEFINE_string('manual_dir', None,
                      'LFW images (default: the shared data copy); used to find the cache.')
  flags.DEFINE_string('subset', None, 'The --subset the cache was built with.')
  flags.DEFINE_integer('limit', None, 'The --limit the cache was built with.')
  flags.DEFINE_string('pairs_file', None, 'pairs.txt (default: beside the images or in the shared data).')
  flags.DEFINE_bool('flip', False, 'The cache was built with --flip: average each embedding with its mirror.')
  flags.DEFINE_string('cache', None, 'Evaluate this cache directory (or key) instead of looking it up.')
  flags.DEFINE_enum('metric', 'sqeuclidean', list(verification.METRICS), 'Pair distance.')
  flags.DEFINE_bool('subtract_mean', False, 'Subtract the training folds\' mean embedding first.')
  flags.DEFINE_float('far_target', 1e-3, 'False-accept rate for VAL@FAR.')
  flags.DEFINE_string('output_dir', None, 'Where to write the JSON (default <repo>/outputs).')


def evaluate_cache(directory: os.PathLike, pairs: Sequence[Any], *, metric: str = 'sqeuclidean',
                   subtract_mean: bool = False, far_target: float = 1e-3,
                   flip: bool = False) -> Dict[str, Any]:
  """Verification of the pairs a cache covers, with the accounting of those it does not.

  Args:
    directory: a complete cache.
    pairs: LFW pairs (objects with fold, image_id_a, image_id_b, same).
    metric, subtract_mean, far_target: see `verification.evaluate`.
    flip: average each embedding with the cached mirrored-face embedding.

  Returns:
    A JSON-ready dict: the verification summary plus pair counts, missing pairs and cache facts.
  """
  x, _, meta = cache.load_embeddings(directory)
  info = meta['info']
  if flip:
    if meta['embeddings_flip'] is None:
      raise ValueError(f'{directory} has no mirrored-face embeddings; build the cache with --flip')
    x = verification.l2_normalize(x + meta['embeddings_flip'])
  failed = {b['image_id']: b['reason'] for b in info['skipped']['bad_images']}
  opts = info['spec']['reader_options']
  is_subset = bool(opts.get('subset') or opts.get('limit'))
  universe = (set(meta['image_ids']) | set(failed)) if is_subset else None
  tuples = [(p.fold, p.image_id_a, p.image_id_b, p.same) for p in pairs]
  rows_a, rows_b, same, folds, missing = verification.match_pairs(tuples, meta['image_ids'], failed, universe)
  outside = [m for m in missing if 'not in the cached subset' in m['reason'] and 'failed' not in m['reason']]
  lost = [m for m in missing if m not in outside]
  result = verification.evaluate(x[rows_a], x[rows_b], same, folds, metric=metric,
                                 subtract_mean=subtract_mean, far_target=far_target)
  detected = meta['detected']
  both = detected[rows_a] & detected[rows_b]
  summary = result.summary()
  summary.update({
      'n_pairs_in_protocol': len(tuples),
      'n_pairs_evaluated': int(len(same)),
      'n_pairs_missing': len(lost),
      'n_pairs_outside_subset': len(outside),
      'missing_pairs': lost,
      'n_pairs_with_detection_fallback': int((~both).sum()),
      'flip_averaged': flip,
      'cache': {
          'directory': os.fspath(meta['directory']),
          'key': info['key'],
          'spec': info['spec'],
          'num_records': info['num_records'],
          'num_embedded': info['num_embedded'],
          'num_bad_images': info['num_bad_images'],
          'num_detection_fallbacks': info['num_detection_fallbacks'],
          'seconds_embedding': info['seconds_embedding'],
      },
  })
  return summary


def _fmt(s: Dict[str, Any]) -> str:
  c = s['cache']
  lines = [
      f'LFW View 2 verification ({s["metric"]}{", mean-subtracted" if s["subtract_mean"] else ""}'
      f'{", flip-averaged" if s["flip_averaged"] else ""}) on {c["directory"]}',
      f'  accuracy     {100 * s["accuracy_mean"]:.2f}% +- {100 * s["accuracy_std"]:.2f}% '
      f'over {len(s["folds"])} folds',
      f'  AUC          {s["auc"]:.4f} (all pairs); per fold {s["auc_per_fold_mean"]:.4f} '
      f'+- {s["auc_per_fold_std"]:.4f}',
      f'  VAL@FAR={s["far_target"]:g}  {100 * s["val_mean"]:.2f}% +- {100 * s["val_std"]:.2f}% '
      f'(held-out FAR {100 * s["far_mean"]:.3f}%)',
      f'  pairs        {s["n_pairs_evaluated"]} evaluated of {s["n_pairs_in_protocol"]}; '
      f'{s["n_pairs_missing"]} missing (image failed or absent); {s["n_pairs_outside_subset"]} outside the '
      f'cached subset',
      f'  detection    {c["num_detection_fallbacks"]} of {c["num_embedded"]} images used the centre-box '
      f'fallback; {s["n_pairs_with_detection_fallback"]} evaluated pairs involve one',
  ]
  for m in s['missing_pairs'][:10]:
    lines.append(f'  missing pair fold {m["fold"]} {m["a"]} {m["b"]}: {m["reason"]}')
  if len(s['missing_pairs']) > 10:
    lines.append(f'  ... and {len(s["missing_pairs"]) - 10} more (see the JSON)')
  return '\n'.join(lines)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from mir_jax.datasets import lfw  # pylint: disable=g-import-not-at-top
  backbone = embed.backbone_name(FLAGS.backbone)
  data_dir = pathlib.Path(FLAGS.data_dir) if FLAGS.data_dir else embed.default_data_dir()
  options = embed.parse_options(FLAGS.backbone_option)
  try:
    if FLAGS.cache:
      directory = cache.resolve(FLAGS.cache, data_dir)
    else:
      directory = embed.find_cache('lfw', backbone, data_dir=data_dir, manual_dir=FLAGS.manual_dir,
                                   subset=FLAGS.subset, limit=FLAGS.limit, pairs_file=FLAGS.pairs_file,
                                   backbone_options=options, flip=FLAGS.flip)
  except (embed.UsageError, cache.CacheError) as e:
    sys.exit(f'error: {e}')
  manual_dir = FLAGS.manual_dir or embed.default_manual_dir('lfw')
  pairs_file = pathlib.Path(FLAGS.pairs_file) if FLAGS.pairs_file else embed.default_pairs_file(manual_dir)
  if pairs_file is None:
    sys.exit('error: LFW pairs.txt not found; pass --pairs_file=<path to View 2 pairs.txt>')
  pairs = list(lfw.read_pairs(pairs_file))
  summary = evaluate_cache(directory, pairs, metric=FLAGS.metric, subtract_mean=FLAGS.subtract_mean,
                           far_target=FLAGS.far_target, flip=FLAGS.flip)
  summary['pairs_file'] = os.fspath(pairs_file)
  summary['evaluated_at'] = time.strftime('%Y-%m-%dT%H:%M:%S%z')
  print(_fmt(summary))
  out_dir = pathlib.Path(FLAGS.output_dir) if FLAGS.output_dir else paths.repo_root() / 'outputs'
  out_dir.mkdir(parents=True, exist_ok=True)
  suffix = ''.join([f'_{FLAGS.metric}' if FLAGS.metric != 'sqeuclidean' else '',
                    '_meansub' if FLAGS.subtract_mean else '', '_flip' if FLAGS.flip else ''])
  out = out_dir / f'lfw_verification_{pathlib.Path(summary["cache"]["directory"]).parent.name}{suffix}.json'
  out.write_text(json.dumps(summary, indent=1) + '\n')
  print(f'wrote {out}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
