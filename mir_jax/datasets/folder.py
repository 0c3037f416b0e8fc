"""Reader for the plainest face dataset layout: `<root>/<identity>/<image>`.

LFW uses exactly this layout, and any user collection arranged the same way can be read with it.
"""

import os
import pathlib
from typing import List, Optional

from absl import logging

from mir_jax import images
from mir_jax.datasets.listing import DatasetError
from mir_jax.datasets.listing import Listing
from mir_jax.datasets.listing import Skipped
from mir_jax.datasets.records import FaceRecord

LAYOUT = """\
  <root>/<identity>/<image>.<ext>     ext in: jpg jpeg png pgm ppm bmp (any case)
  one folder per identity; the folder name is the identity; image ids are <identity>/<file stem>"""


def read_folder(root: images.PathLike, *, missing_help: Optional[str] = None) -> Listing[FaceRecord]:
  """Lists every image of a folder-per-identity tree, sorted by identity then file name.

  No pixels are read. Files whose extension is not an image extension (and stray subfolders) are
  ignored but returned in `ignored`; identity folders without a single image are returned in
  `skipped` and logged, because an identity that vanishes silently changes the class count.

  Args:
    root: the directory holding one subfolder per identity.
    missing_help: text appended to the error when `root` is missing (a dataset-specific layout and
      where to get the data); defaults to the generic layout.

  Returns:
    A listing of FaceRecord(path, identity, image_id=`<identity>/<stem>`).

  Raises:
    DatasetError: `root` is not a directory, or holds no images at all.
  """
  root = pathlib.Path(root)
  if not root.is_dir():
    raise DatasetError(f'dataset directory {root} does not exist. Expected layout:\n{missing_help or LAYOUT}')
  records: List[FaceRecord] = []
  skipped: List[Skipped] = []
  ignored: List[str] = []
  with os.scandir(root) as it:
    entries = sorted(it, key=lambda e: e.name)
  for entry in entries:
    if not entry.is_dir():
      ignored.append(os.path.abspath(entry.path))
      continue
    identity = entry.name
    found, not_images = _images_in(entry.path)
    ignored.extend(not_images)
    if not found:
      skipped.append(
        Skipped(os.path.abspath(entry.path), f'identity folder has no images ({len(not_images)} other entries)')
      )
      logging.warning('Skipping identity %r: %s', identity, skipped[-1].reason)
      continue
    for name in found:
      records.append(
        FaceRecord(
          path=os.path.abspath(os.path.join(entry.path, name)),
          identity=identity,
          image_id=f'{identity}/{os.path.splitext(name)[0]}',
        )
      )
  if not records:
    raise DatasetError(f'{root} holds no images. Expected layout:\n{missing_help or LAYOUT}')
  logging.info(
    '%s: %d images of %d identities; %d identity folders skipped, %d non-image entries ignored',
    root,
    len(records),
    len({r.identity for r in records}),
    len(skipped),
    len(ignored),
  )
  return Listing(records, skipped, ignored)


def _images_in(directory: str):
  """Sorted image file names in `directory`, and absolute paths of every other entry."""
  found, others = [], []
  with os.scandir(directory) as it:
    for entry in it:
      if entry.is_file() and images.is_image_file(entry.name):
        found.append(entry.name)
      else:
        others.append(os.path.abspath(entry.path))
  return sorted(found), sorted(others)
