"""Figs. 2-3 of the paper: two identities, five photos each, projected to 2-D by PCA, before and after MIR.

The paper draws the original embeddings (Fig. 2) and the MIR character features (Fig. 3) of "10 photos of
two of them" without saying how they were chosen. Here the choice is a stated, seeded rule
(`choose_identities`), the two spaces are drawn side by side, and each panel carries the between/within
class distance ratio (`mir_jax.evaluators.separation`) so that "the distance between different classes
become[s] larger" is a number, not an impression.
"""

import os
import textwrap
from typing import Dict, NamedTuple

from matplotlib import figure as mpl_figure
from matplotlib.backends import backend_agg
import numpy as np

from mir_jax.evaluators import separation

_MARKERS = ('o', 's', '^', 'D', 'v', 'P', 'X', '*')


class Selection(NamedTuple):
  identities: np.ndarray  # (k,) chosen labels, in the order they were drawn
  indices: np.ndarray  # (k, photos) row indices into `labels`, sorted within each identity
  rule: str  # the rule in words, with its seed, for the caption


def choose_identities(labels, seed: int, k: int = 2, photos: int = 5, pool: str = 'test') -> Selection:
  """Seeded choice of the identities and photos to draw.

  Rule: the eligible identities are those with at least `photos` examples in `labels` (pass the test
  split's labels so that the figure shows faces no head was trained on). A numpy Generator seeded with
  `seed` (`np.random.default_rng(seed)`) draws `k` of them without replacement from the sorted eligible
  labels, then, for each drawn identity in turn, `photos` of its examples without replacement. The same
  seed, labels and numpy version give the same choice. (The per-identity counts come from `labels`
  themselves, so they cannot disagree with them.)

  Raises:
    ValueError: when fewer than `k` identities have `photos` examples.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f'labels must be 1-D, got shape {labels.shape}')
  if k < 1 or photos < 1:
    raise ValueError(f'k and photos must be >= 1, got k={k} photos={photos}')
  classes, counts = np.unique(labels, return_counts=True)
  eligible = classes[counts >= photos]
  if eligible.size < k:
    raise ValueError(f'only {eligible.size} identities have >= {photos} examples; {k} are needed')
  rng = np.random.default_rng(seed)
  identities = rng.choice(eligible, size=k, replace=False)
  indices = np.stack([np.sort(rng.choice(np.flatnonzero(labels == c), size=photos, replace=False)) for c in identities])
  rule = (
    f'{k} identities drawn uniformly without replacement (np.random.default_rng({seed})) from the '
    f'{eligible.size} with >= {photos} {pool} images, then {photos} images of each by the same generator'
  )
  return Selection(identities, indices, rule)


def _panel(ax, points, labels, names, title, sep_pca, sep_full):
  for i, c in enumerate(dict.fromkeys(labels.tolist())):
    at = labels == c
    ax.scatter(
      points[at, 0],
      points[at, 1],
      s=60,
      marker=_MARKERS[i % len(_MARKERS)],
      color=f'C{i}',
      edgecolor='black',
      linewidth=0.5,
      label=str(names[c]),
    )
  ax.set_title(title)
  ax.set_xlabel('PC 1')
  ax.set_ylabel('PC 2')
  ax.grid(True, alpha=0.3)
  ax.legend(loc='best', fontsize=8)
  # Equal axes: a distance on the page is a distance in PCA space, which is what the ratio measures.
  ax.set_aspect('equal', adjustable='datalim')
  ax.text(
    0.02,
    0.02,
    f'between/within = {sep_pca.ratio:.2f} (2-D PCA)\nbetween/within = {sep_full.ratio:.2f} (full space)',
    transform=ax.transAxes,
    fontsize=8,
    va='bottom',
    bbox=dict(boxstyle='round', facecolor='white', alpha=0.8, linewidth=0.5),
  )


def pca_figure(original, mir, labels, names, out_stem: str, caption: str) -> Dict[str, object]:
  """Draws the two PCA panels and writes `out_stem`.png and `out_stem`.pdf.

  Args:
    original: (n, d) original embeddings of the chosen photos (e.g. rows `Selection.indices.ravel()`).
    mir: (n, d') the MIR character features (x - y) of the same photos, same order.
    labels: (n,) identity of each row.
    names: identity display names, indexable by label (a class-name list or a dict).
    out_stem: output path without extension; its directory is created.
    caption: drawn under the panels; include the selection rule (`Selection.rule`) and data source.

  Returns:
    dict with 'png' and 'pdf' paths, 'caption', and 'separation': {'original' | 'mir': {'full' | 'pca2':
    `separation.Separation`}}. Each panel's PCA is fitted on that panel's features only.
  """
  original = np.asarray(original)
  mir = np.asarray(mir)
  labels = np.asarray(labels)
  if original.shape[0] != labels.shape[0] or mir.shape[0] != labels.shape[0]:
    raise ValueError(
      f'original {original.shape}, mir {mir.shape} and labels {labels.shape} must have the same number of rows'
    )
  seps = {
    'original': separation.between_within_ratio(original, labels),
    'mir': separation.between_within_ratio(mir, labels),
  }
  panels = (('original', original, 'original features'), ('mir', mir, 'MIR character features'))

  fig = mpl_figure.Figure(figsize=(10, 5.4))
  backend_agg.FigureCanvasAgg(fig)
  axes = fig.subplots(1, 2)
  for ax, (key, feats, title) in zip(axes, panels):
    _panel(ax, separation.pca_2d(feats), labels, names, title, seps[key]['pca2'], seps[key]['full'])
  fig.text(0.5, 0.01, textwrap.fill(caption, 130), ha='center', va='bottom', fontsize=8, wrap=True)
  fig.tight_layout(rect=(0, 0.1, 1, 1))

  os.makedirs(os.path.dirname(os.path.abspath(out_stem)), exist_ok=True)
  paths = {'png': f'{out_stem}.png', 'pdf': f'{out_stem}.pdf'}
  fig.savefig(paths['png'], dpi=150)
  # No creation date in the PDF, so that the same inputs give the same file.
  fig.savefig(paths['pdf'], metadata={'CreationDate': None})
  return {**paths, 'caption': caption, 'separation': seps}
