r"""Figs. 2-3: two identities x five photos in 2-D PCA, original embeddings beside MIR character features.

  python -m reproduce.pca_figure [--config=experiments/configs/reproduce.py] [--figure_seed=0]

The photos come from the test split of seed `config.train.seed` of the LFW identity protocol (faces no head was
trained on), chosen by the seeded rule in `figures.pca.choose_identities` and named in the caption; the
MIR features are those of that seed's jointly trained head, under each training reading. One PNG and PDF
per (backbone, reading) go to --output_dir.

What the picture claims -- "the distance between different classes become[s] larger" -- is printed as a
number: the between/within class distance ratio (`mir_jax.evaluators.separation`) of the ten photos, and,
because ten photos are an anecdote, of every test image of all 158 identities, for each seed's head
(mean +- std over seeds). A ratio above the original's supports the figure's claim.
"""

import json
import os

from absl import app
from absl import flags
import numpy as np

from figures import pca
from mir_jax.evaluators import separation
from reproduce import cli
from reproduce import context
from reproduce import embedding_store


def figure(ctx: context.Context, backbone: str, reading: str, figure_seed: int) -> dict:
  task = ctx.lfw_identity(backbone)
  runs = ctx.trained(task, embedding_store.data_key('lfw', backbone), ['joint'], reading)
  test = task.test_idx[0]
  sel = pca.choose_identities(task.labels[test], seed=figure_seed, k=2, photos=5, pool='test')
  rows = test[sel.indices.ravel()]
  character = runs.character('joint', task.x)  # (S, n, d)
  caption = (
    f'LFW, {backbone} embeddings; MIR head: joint, {reading} reading, seed {task.seeds[0]} '
    f"(trained on that seed's training split). Photos: {sel.rule}. Ratios: mean distance between "
    'class centroids / mean distance of a photo to its own centroid.'
  )
  stem = os.path.join(ctx.output_dir, f'pca_{backbone}_{reading}')
  out = pca.pca_figure(task.x[rows], character[0][rows], task.labels[rows], task.class_names, stem, caption)

  # The same ratio over the whole test split, for every seed's head on its own test split.
  whole = {'original': [], 'mir': []}
  for s, idx in enumerate(task.test_idx):
    whole['original'].append(separation.separation(task.x[idx], task.labels[idx]).ratio)
    whole['mir'].append(separation.separation(character[s][idx], task.labels[idx]).ratio)
  seps = out['separation']
  return {
    'backbone': backbone,
    'reading': reading,
    'png': out['png'],
    'pdf': out['pdf'],
    'caption': caption,
    'identities': [task.class_names[k] for k in sel.identities],
    'heads': runs.describe('joint'),
    'converged': runs.converged('joint'),
    'ten_photos': {
      space: {where: seps[space][where].ratio for where in ('full', 'pca2')} for space in ('original', 'mir')
    },
    'whole_test_split': {
      space: {'mean': float(np.mean(v)), 'std': float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, 'per_seed': v}
      for space, v in whole.items()
    },
  }


def describe(result: dict) -> str:
  t, w = result['ten_photos'], result['whole_test_split']
  better = sum(m > o for m, o in zip(w['mir']['per_seed'], w['original']['per_seed']))
  return (
    f'{result["backbone"]} [{result["reading"]}] {", ".join(result["identities"])}: between/within ratio '
    f'of the ten photos {t["original"]["full"]:.2f} -> {t["mir"]["full"]:.2f} (full space), '
    f"{t['original']['pca2']:.2f} -> {t['mir']['pca2']:.2f} (2-D PCA); over each seed's whole test "
    f'split {w["original"]["mean"]:.3f} +- {w["original"]["std"]:.3f} -> {w["mir"]["mean"]:.3f} +- '
    f'{w["mir"]["std"]:.3f} (larger after MIR in {better} of {len(w["mir"]["per_seed"])} seeds). '
    + {True: '', False: 'MIR HEADS NOT CONVERGED. ', None: 'MIR heads: convergence not checked. '}[result['converged']]
    + f'{result["png"]}'
  )


def build(ctx: context.Context, figure_seed: int = 0):
  results = []
  for backbone in ctx.backbones():
    for reading in ctx.readings():
      try:
        results.append(figure(ctx, backbone, reading, figure_seed))
      except embedding_store.Unavailable as e:
        results.append({'backbone': backbone, 'reading': reading, 'unavailable': str(e)})
  for r in results:
    r['provenance'] = ctx.provenance_file
  os.makedirs(ctx.output_dir, exist_ok=True)
  with open(os.path.join(ctx.output_dir, 'pca_figure.json'), 'w') as f:
    json.dump(results, f, indent=1)
  return results


def lines(results):
  return [
    describe(r) if 'unavailable' not in r else f'{r["backbone"]} [{r["reading"]}]: {r["unavailable"]}' for r in results
  ]


if __name__ == '__main__':
  cli.define_flags('the PNG/PDF figures and pca_figure.json', figure=True)
  app.run(lambda argv: cli.run_command('pca_figure', lambda ctx: lines(build(ctx, flags.FLAGS.figure_seed)), argv))
