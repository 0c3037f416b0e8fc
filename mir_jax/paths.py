"""Where the project finds the shared, read-only face data.

The data lives beside the checkout (`<repo root>/../shared/data`) so that nothing from it can be
committed by accident; `MIR_SHARED_DATA` points elsewhere (e.g. on a cluster). Everything that needs the
shared data, tests included, asks here so there is one rule to change.
"""

import os
import pathlib
from typing import Optional

ENV_VAR = 'MIR_SHARED_DATA'
# Where every command writes its tables, figures and JSON unless told otherwise (relative to the working dir).
OUTPUT_DIR = 'outputs/reproduce'


def user_cache_dir() -> pathlib.Path:
  """Where derived files that are safe to delete are kept (parsed weights, compiled programs):
  $MIR_JAX_CACHE, else $XDG_CACHE_HOME/mir_jax, else ~/.cache/mir_jax."""
  env = os.environ.get('MIR_JAX_CACHE')
  if env:
    return pathlib.Path(env).expanduser()
  return pathlib.Path(os.environ.get('XDG_CACHE_HOME', '~/.cache')).expanduser() / 'mir_jax'


def repo_root() -> pathlib.Path:
  """The checkout's root directory (the parent of the `mir_jax` package)."""
  return pathlib.Path(__file__).resolve().parent.parent


def shared_data_location() -> pathlib.Path:
  """Where the shared data is looked for, whether or not it exists there.

  That is `$MIR_SHARED_DATA` when set, else `<repo root>/../shared/data`; messages use it to tell the
  user where to put the data.
  """
  override = os.environ.get(ENV_VAR)
  if override:
    return pathlib.Path(override).expanduser().absolute()
  return repo_root().parent / 'shared' / 'data'


def shared_data_dir() -> Optional[pathlib.Path]:
  """The shared data directory, or None when it does not exist.

  `$MIR_SHARED_DATA` wins when set, even if it names a missing directory: a user who set it meant that
  directory, and silently falling back to another copy would hide the mistake.

  Returns:
    The directory as an absolute path, or None when it is absent (callers skip or explain).
  """
  location = shared_data_location()
  return location if location.is_dir() else None
