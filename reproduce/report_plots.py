"""The report's plots, from the JSON the reproduce commands wrote: each function draws one PNG and returns
its path. Matplotlib without a display (Agg), small figures, so that the page stays light."""

import os
from typing import Dict, List

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402

_DPI = 110


def _save(fig, path: str) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=_DPI, bbox_inches='tight')
  plt.close(fig)
  return path


def _verdict_word(converged) -> str:
  return {True: 'met the convergence rule', False: 'did NOT meet the convergence rule', None: 'rule not checked'}[
    converged
  ]


def head_curves(group: dict, path: str) -> str:
  """Training loss against steps (each seed thin, their mean thick) beside the validation accuracy of the
  same setting at every budget the convergence rule trained (the chosen budget marked). The group's name
  goes in the page's caption, not the figure."""
  fig, (left, right) = plt.subplots(1, 2, figsize=(8.4, 2.8))
  steps = np.asarray(group['loss_steps'])
  for seed_loss in group['loss_per_seed']:
    left.plot(steps, seed_loss, color='tab:blue', alpha=0.25, linewidth=0.8)
  # Markers, so that a head logged at one point only (a short test head) still shows it.
  left.plot(steps, group['loss_mean'], '.-', color='tab:blue', linewidth=2, label='loss (mean over seeds)')
  if any(np.isfinite(v) for v in group.get('ce_mean', [])):
    left.plot(steps, group['ce_mean'], '.-', color='tab:orange', linewidth=1.2, label='identity cross-entropy')
  left.set_yscale('log')
  left.set_xlabel('update')
  left.set_title('training loss (final heads)', fontsize=9)
  left.legend(fontsize=7)
  val = {int(b): a for b, a in group['validation'].items()}
  chosen = group['setting']['steps']
  if val:
    budgets = sorted(val)
    right.plot(budgets, [100 * val[b] for b in budgets], 'o-', color='tab:green')
    right.set_xscale('log', base=2)
    if chosen in val:
      right.plot([chosen], [100 * val[chosen]], 's', color='black', markersize=8, label=f'chosen: {chosen} steps')
      right.legend(fontsize=7)
  else:
    right.text(0.5, 0.5, 'no validation record', ha='center', va='center', transform=right.transAxes)
  right.set_xlabel('steps trained')
  right.set_ylabel('validation Ac (%)')
  right.set_title(f'validation Ac; {_verdict_word(group["converged"])}', fontsize=9)
  fig.tight_layout()
  return _save(fig, path)


def roc(verifications: List[dict], path: str) -> str:
  """ROC curves of the LFW pair protocol, one per evaluated cache, false-accept rate on a log axis."""
  fig, ax = plt.subplots(figsize=(5.2, 4))
  for v in verifications:
    fpr, tpr = np.asarray(v['roc']['fpr']), np.asarray(v['roc']['tpr'])
    keep = fpr > 0
    ax.plot(
      fpr[keep],
      tpr[keep],
      label=f'{v["label"]}: {100 * v["accuracy_mean"]:.2f}% ± {100 * v["accuracy_std"]:.2f}, AUC {v["auc"]:.4f}',
    )
  ax.set_xscale('log')
  ax.set_xlabel('false-accept rate')
  ax.set_ylabel('true-accept rate')
  ax.set_title('LFW View 2, 6,000 pairs, held-out thresholds', fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=6, loc='lower right')
  return _save(fig, path)


def fold_accuracy(verifications: List[dict], path: str) -> str:
  """Each fold's accuracy per evaluated cache, with their mean: the spread behind the ± of the table."""
  fig, ax = plt.subplots(figsize=(5.2, 0.6 + 0.55 * len(verifications)))
  for i, v in enumerate(verifications):
    acc = 100 * np.asarray(v['accuracy_per_fold'])
    ax.plot(acc, np.full(acc.shape, i), 'o', alpha=0.6, color='tab:blue')
    ax.plot([acc.mean()], [i], '|', color='black', markersize=18)
  ax.set_yticks(range(len(verifications)), [v['label'] for v in verifications], fontsize=7)
  ax.set_xlabel('accuracy per fold (%); bar: mean')
  ax.grid(axis='x', alpha=0.3)
  return _save(fig, path)


def open_set(curves: Dict[str, list], path: str) -> str:
  """Rank-1 against the number of distractors (log axis), original features and MIR (mean ± std over
  heads), one colour per protocol/backbone/reading."""
  fig, ax = plt.subplots(figsize=(6, 4))
  for i, c in enumerate(curves):
    colour = f'C{i % 10}'
    sizes = np.asarray(c['sizes'])
    ax.plot(sizes, 100 * np.asarray(c['original']), '--', color=colour, label=f'{c["label"]}: original')
    if c['mir']:
      mir = 100 * np.asarray(c['mir'])
      mean, std = mir.mean(axis=0), mir.std(axis=0)
      tag = '' if c['converged'] else ' (NOT CONVERGED)' if c['converged'] is False else ' (unchecked)'
      ax.plot(sizes, mean, '-', color=colour, label=f'{c["label"]}: MIR, {len(mir)} heads{tag}')
      ax.fill_between(sizes, mean - std, mean + std, color=colour, alpha=0.2)
  ax.set_xscale('log')
  ax.set_xlabel('distractors')
  ax.set_ylabel('rank-1 (%)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=6)
  return _save(fig, path)
