"""Saving and restoring trained heads: parameters as an orbax checkpoint, what they mean as JSON beside it."""

import dataclasses
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from mir_jax import engine

_META = 'head_meta.json'


def save(directory: str, result: engine.TrainResult, opts: engine.StaticOptions, runs, class_names=None):
  """Writes `directory/params` (orbax) and `directory/head_meta.json` (options, runs, dimension, names)."""
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  tree = {'params': result.params, 'input_mean': result.input_mean}
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(os.path.join(directory, 'params'), tree, force=True)
  meta = {
    'dim': int(result.input_mean.shape[-1]),
    'options': dataclasses.asdict(opts),
    'runs': [dataclasses.asdict(r) for r in runs],
    'class_names': list(class_names) if class_names is not None else None,
  }
  with open(os.path.join(directory, _META), 'w') as f:
    json.dump(meta, f, indent=1)


def restore(directory: str):
  """Returns (TrainResult without history, StaticOptions, runs, meta dict)."""
  directory = os.path.abspath(directory)
  meta_path = os.path.join(directory, _META)
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f'{meta_path} not found: not a head checkpoint written by mir_jax.train')
  with open(meta_path) as f:
    meta = json.load(f)
  opts = engine.StaticOptions(**meta['options'])
  runs = [engine.Run(**r) for r in meta['runs']]
  with ocp.StandardCheckpointer() as ckpt:
    tree = ckpt.restore(os.path.join(directory, 'params'))
  tree = jax.tree.map(np.asarray, tree)
  return engine.TrainResult(tree['params'], tree['input_mean'], {}), opts, runs, meta


def predict(directory: str, x):
  """Logits of every run in the checkpoint for embeddings x; a clear error when x's dimension differs."""
  result, opts, runs, meta = restore(directory)
  x = np.asarray(x)
  if x.ndim != 2 or x.shape[1] != meta['dim']:
    raise ValueError(
      f'embeddings have shape {x.shape}; the checkpoint in {directory} was trained on '
      f'{meta["dim"]}-D embeddings (another backbone?)'
    )
  return engine.apply_runs(result, x, runs, opts).logits
