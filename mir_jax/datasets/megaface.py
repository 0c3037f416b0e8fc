"""MegaFace challenge 1: FaceScrub probes and a MegaFace distractor set, in the devkit's layout.

Assumed layout of `<root>` (the official MegaFace download next to its devkit, as also repackaged by
InsightFace's MegaFace evaluation bundle):

  <root>/facescrub_images/<Celebrity_Name>/<image>.{jpg,png}      probe images
  <root>/megaface_images/<dir>/<dir>/<image>.jpg                  distractor images (Flickr)
  <root>/devkit/templatelists/megaface_features_list.json_<N>_1   distractor set of size N, for N in
      10, 100, 1000, 10000, 100000, 1000000: JSON {"path": [...]} of paths relative to megaface_images
  <root>/devkit/templatelists/facescrub_features_list.json        optional probe list: JSON
      {"path": [...], "id": [...]} of paths relative to facescrub_images; without it every image
      under facescrub_images is a probe

A probe's identity is its celebrity folder (the first component of its path); every distractor is its
own identity `distractor/<path>`. Roles are 'probe' and 'distractor'. The set-size N list files hold
about N paths (the 1M list holds slightly more), so only non-emptiness and uniqueness are checked.

Noise lists (`read_noise_list`, `noise_mask`): text files naming mislabelled FaceScrub probes or MegaFace
distractors that show a FaceScrub identity, one image per line, in the format of InsightFace's
facescrub_noises.txt / megaface_noises.txt: '#' starts a comment line; a distractor is its path under
megaface_images (a line of tab-separated fields names it in the second field); a probe is its path under
facescrub_images (`<Celebrity_Name>/<file>`) or its bare file name, as InsightFace's list gives it.
Extensions are ignored, as the cache's image ids have none.
"""

import json
import os
import pathlib
from typing import List, Optional, Sequence, Tuple

from absl import logging
import numpy as np

from mir_jax import images
from mir_jax.datasets import folder
from mir_jax.datasets.listing import DatasetError
from mir_jax.datasets.listing import Listing
from mir_jax.datasets.listing import Skipped
from mir_jax.datasets.records import FaceRecord

SET_SIZES = (10, 100, 1000, 10000, 100000, 1000000)
PROBES_SUBDIR = 'facescrub_images'
DISTRACTORS_SUBDIR = 'megaface_images'
TEMPLATELISTS_SUBDIR = os.path.join('devkit', 'templatelists')
PROBE_LIST = 'facescrub_features_list.json'

_HELP = f"""\
  <root>/{PROBES_SUBDIR}/<Celebrity_Name>/<image>.jpg
  <root>/{DISTRACTORS_SUBDIR}/<dir>/<dir>/<image>.jpg
  <root>/{TEMPLATELISTS_SUBDIR}/megaface_features_list.json_<N>_1   (N = 10 ... 1000000)
  <root>/{TEMPLATELISTS_SUBDIR}/{PROBE_LIST}   (optional)
MegaFace was withdrawn by its authors and cannot be downloaded any more; if you hold a copy of the
challenge 1 data and devkit, arrange it as above and pass <root>."""


def distractor_list_name(set_size: int) -> str:
  """The devkit's file name of the distractor list for a set size."""
  return f'megaface_features_list.json_{set_size}_1'


def read_megaface(
  root: images.PathLike,
  *,
  set_size: int = 10,
  skip_missing: bool = False,
  templatelists_dir: Optional[images.PathLike] = None,
) -> Listing[FaceRecord]:
  """Lists FaceScrub probes followed by the distractors of one set size, each part sorted by path.

  Args:
    root: the MegaFace root described in the module docstring.
    set_size: which distractor list to read; one of SET_SIZES.
    skip_missing: leave out (and record in `skipped`) listed images missing on disk instead of raising.
    templatelists_dir: where the list files are, if not `<root>/devkit/templatelists`.

  Returns:
    A listing of FaceRecord with role 'probe' (identity = celebrity, image_id = `facescrub/<path
    without extension>`) or 'distractor' (identity = `distractor/<path>`, image_id = `megaface/<path
    without extension>`).

  Raises:
    DatasetError: a folder or list file is missing or malformed, or (without `skip_missing`) a listed
      image is missing.
    ValueError: `set_size` is not one of SET_SIZES.
  """
  if set_size not in SET_SIZES:
    raise ValueError(f'set_size must be one of {SET_SIZES}, got {set_size}')
  root = pathlib.Path(root)
  lists = pathlib.Path(templatelists_dir) if templatelists_dir else root / TEMPLATELISTS_SUBDIR
  for needed in (root / PROBES_SUBDIR, root / DISTRACTORS_SUBDIR, lists):
    if not needed.is_dir():
      raise DatasetError(f'MegaFace folder {needed} does not exist. Expected layout:\n{_HELP}')
  skipped: List[Skipped] = []
  ignored: List[str] = []

  probe_list = lists / PROBE_LIST
  if probe_list.is_file():
    probe_paths = _checked_paths(probe_list, root / PROBES_SUBDIR, skip_missing, skipped)
  else:
    logging.info('No %s: every image under %s is a probe', probe_list, root / PROBES_SUBDIR)
    walked = folder.read_folder(root / PROBES_SUBDIR, missing_help=_HELP)
    skipped.extend(walked.skipped)
    ignored.extend(walked.ignored)
    probe_paths = [os.path.relpath(r.path, root / PROBES_SUBDIR) for r in walked]
  flat = [p for p in probe_paths if len(_parts(p)) < 2]
  if flat:
    raise DatasetError(
      f'probe {flat[0]!r} is not inside a <Celebrity_Name>/ folder, so it has no identity. Expected layout:\n{_HELP}'
    )
  records = [
    FaceRecord(
      path=str((root / PROBES_SUBDIR / p).absolute()),
      identity=_parts(p)[0],
      image_id=f'facescrub/{_without_ext(p)}',
      role='probe',
    )
    for p in sorted(probe_paths)
  ]

  distractor_list = lists / distractor_list_name(set_size)
  if not distractor_list.is_file():
    raise DatasetError(f'distractor list {distractor_list} does not exist. Expected layout:\n{_HELP}')
  distractor_paths = _checked_paths(distractor_list, root / DISTRACTORS_SUBDIR, skip_missing, skipped)
  records += [
    FaceRecord(
      path=str((root / DISTRACTORS_SUBDIR / p).absolute()),
      identity=f'distractor/{p}',
      image_id=f'megaface/{_without_ext(p)}',
      role='distractor',
    )
    for p in sorted(distractor_paths)
  ]
  for s in skipped:
    logging.warning('MegaFace: skipping %s: %s', s.where, s.reason)
  return Listing(records, skipped, ignored)


def _checked_paths(
  list_file: pathlib.Path, base: pathlib.Path, skip_missing: bool, skipped: List[Skipped]
) -> List[str]:
  """The relative paths a devkit JSON list names, checked to be unique and present under `base`."""
  try:
    data = json.loads(list_file.read_text())
  except (OSError, ValueError) as e:
    raise DatasetError(f'{list_file}: not a readable JSON list file: {e}') from e
  paths = data.get('path') if isinstance(data, dict) else None
  if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
    raise DatasetError(f'{list_file}: expected a JSON object whose "path" is a non-empty list of relative image paths')
  if len(set(paths)) != len(paths):
    raise DatasetError(f'{list_file}: lists {len(paths) - len(set(paths))} paths more than once')
  present = []
  for p in paths:
    if os.path.isabs(p) or '..' in _parts(p):
      raise DatasetError(f'{list_file}: path {p!r} must be relative to {base} and stay inside it')
    if (base / p).is_file():
      present.append(p)
      continue
    reason = f'listed in {list_file} but missing on disk'
    if not skip_missing:
      raise DatasetError(f'{base / p}: {reason}')
    skipped.append(Skipped(str((base / p).absolute()), reason))
  return present


def _parts(relative_path: str) -> Tuple[str, ...]:
  return tuple(pathlib.PurePosixPath(relative_path.replace(os.sep, '/')).parts)


def _without_ext(relative_path: str) -> str:
  return os.path.splitext(relative_path.replace(os.sep, '/'))[0]


def read_noise_list(path: images.PathLike) -> List[str]:
  """The images a noise list names (module docstring), in file order, extensions dropped."""
  path = pathlib.Path(path)
  try:
    lines = path.read_text().splitlines()
  except OSError as e:
    raise DatasetError(f'noise list {path} cannot be read: {e}') from e
  entries = []
  for line in lines:
    if not line.strip() or line.startswith('#'):
      continue
    fields = line.strip().split('\t')
    entries.append(_without_ext((fields[1] if len(fields) > 1 else fields[0]).strip()))
  if not entries:
    raise DatasetError(f'noise list {path} names no image')
  return entries


def noise_mask(image_ids: Sequence[str], entries: Sequence[str], role: str) -> np.ndarray:
  """(n,) bool: which of a MegaFace set's images (ids as `read_megaface` gives them) `entries` of a noise
  list of `role` ('probe' for FaceScrub's list, 'distractor' for MegaFace's) name."""
  if role not in ('probe', 'distractor'):
    raise ValueError(f"role must be 'probe' or 'distractor', got {role!r}")
  prefix = 'facescrub/' if role == 'probe' else 'megaface/'
  paths = {prefix + e for e in entries if role == 'distractor' or '/' in e}
  names = {e for e in entries if role == 'probe' and '/' not in e}
  return np.asarray(
    [i in paths or (i.startswith(prefix) and i.rsplit('/', 1)[-1] in names) for i in image_ids], bool
  ).reshape(len(image_ids))
