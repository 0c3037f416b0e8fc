r"""LFW pair verification (View 2, 10 folds) from the embedding cache.

  python -m mir_jax.embed --dataset=lfw --backbone=dlib-resnet          # once: builds the cache
  python -m reproduce.lfw_verification --backbone=dlib-resnet

FaceNet as Sandberg validated it (`validate_on_lfw.py --distance_metric 1 --subtract_mean --use_flipped_images`):

  python -m mir_jax.embed --dataset=lfw --backbone=facenet-casia --flip
  python -m reproduce.lfw_verification --backbone=facenet-casia --flip --flip_combine=concat --metric=angular \
      --subtract_mean

The protocol is `mir_jax.evaluators.verification`: per fold, the threshold maximising accuracy on the other
nine folds scores the held-out fold; accuracy mean +- std over folds, AUC, VAL@FAR=1e-3. Every pair whose
image could not be embedded is listed with the reason, never dropped silently
(`mir_jax.evaluators.lfw_pairs`). Results go to `<output_dir>/lfw_verification_<cache name>[...].json`, and
what produced them to the `.provenance.json` beside it (reproduce/provenance.py).

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

from mir_jax import paths
from mir_jax.cache import flags as cache_flags
from mir_jax.cache import key
from mir_jax.cache import lookup
from mir_jax.cache import reader
from mir_jax.cache import selection
from mir_jax.evaluators import lfw_pairs
from mir_jax.evaluators import verification
from reproduce import provenance

FLAGS = flags.FLAGS


def define_flags() -> None:
  # Defined only when run as a script, so importing this module (tests) adds no global flags.
  cache_flags.define_cache_flags()
  flags.DEFINE_string('cache', None, 'Evaluate this cache directory (or key) instead of looking it up.')
  flags.DEFINE_enum('metric', 'sqeuclidean', list(verification.METRICS), 'Pair distance.')
  flags.DEFINE_bool('subtract_mean', False, "Subtract the training folds' mean embedding first.")
  flags.DEFINE_enum(
    'flip_combine',
    'average',
    list(lfw_pairs.FLIP_COMBINES),
    "With --flip: average each embedding with its mirrored face's, or concatenate the two (Sandberg's "
    '--use_flipped_images).',
  )
  flags.DEFINE_float('far_target', 1e-3, 'False-accept rate for VAL@FAR.')
  flags.DEFINE_string('output_dir', paths.OUTPUT_DIR, 'Where to write the JSON.')


def _fmt(s: Dict[str, Any]) -> str:
  c = s['cache']
  lines = [
    f'LFW View 2 verification ({s["metric"]}{", mean-subtracted" if s["subtract_mean"] else ""}'
    f'{", flip-averaged" if s["flip_averaged"] else ""}{", flip-concatenated" if s["flip_concatenated"] else ""}) '
    f'on {c["directory"]}',
    f'  accuracy     {100 * s["accuracy_mean"]:.2f}% +- {100 * s["accuracy_std"]:.2f}% over {len(s["folds"])} folds',
    f'  AUC          {s["auc"]:.4f} (all pairs); per fold {s["auc_per_fold_mean"]:.4f} +- {s["auc_per_fold_std"]:.4f}',
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

  started, git, start = provenance.now(), provenance.git_state(), time.perf_counter()
  try:
    args = cache_flags.find_cache_args()
    if FLAGS.cache:
      directory = reader.resolve(FLAGS.cache, args['data_dir'])
    else:
      directory = lookup.find_cache('lfw', **args)
  except (selection.UsageError, key.CacheError) as e:
    sys.exit(f'error: {e}')
  manual_dir = FLAGS.manual_dir or selection.default_manual_dir('lfw')
  pairs_file = pathlib.Path(FLAGS.pairs_file) if FLAGS.pairs_file else selection.default_pairs_file(manual_dir)
  if pairs_file is None:
    sys.exit('error: LFW pairs.txt not found; pass --pairs_file=<path to View 2 pairs.txt>')
  pairs = list(lfw.read_pairs(pairs_file))
  summary = lfw_pairs.run(
    directory,
    pairs,
    metric=FLAGS.metric,
    subtract_mean=FLAGS.subtract_mean,
    far_target=FLAGS.far_target,
    flip=FLAGS.flip,
    flip_combine=FLAGS.flip_combine,
  )
  summary['pairs_file'] = os.fspath(pairs_file)
  summary['evaluated_at'] = time.strftime('%Y-%m-%dT%H:%M:%S%z')
  print(_fmt(summary))
  out_dir = pathlib.Path(FLAGS.output_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  suffix = ''.join(
    [
      f'_{FLAGS.metric}' if FLAGS.metric != 'sqeuclidean' else '',
      '_meansub' if FLAGS.subtract_mean else '',
      ('_flip' if FLAGS.flip_combine == 'average' else '_flipconcat') if FLAGS.flip else '',
    ]
  )
  out = out_dir / f'lfw_verification_{pathlib.Path(summary["cache"]["directory"]).parent.name}{suffix}.json'
  summary['provenance'] = provenance.file_name(out.stem)
  out.write_text(json.dumps(summary, indent=1) + '\n')
  manifest = provenance.collect(
    out.stem,
    config=_flag_values(),
    caches=[directory],
    protocol_files=[pairs_file],
    total_seconds=time.perf_counter() - start,
    started=started,
    git=git,
  )
  provenance.write(out_dir / summary['provenance'], manifest)
  print(f'wrote {out} and {out_dir / summary["provenance"]}')


def _flag_values() -> Dict[str, Any]:
  """This command's flags (the cache's and its own, not absl's), as it ran."""
  return {f.name: f.value for m, fs in FLAGS.flags_by_module_dict().items() if not m.startswith('absl.') for f in fs}


if __name__ == '__main__':
  define_flags()
  app.run(main)
