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

  No pixels are read. Every entry of an identity folder with an image extension that is not a folder
  becomes a record, symlinks too (broken or looping ones included), so that decoding records why a bad
  one fails. Files whose extension is not an image extension, and files at the root, are ignored but
  returned in `ignored`; identity folders without a single image, subfolders inside an identity folder
  (not part of the layout, so their images are not read) and folders that cannot be listed are returned
  in `skipped` and logged, because an identity or images that vanish silently change what is embedded.

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
    if not _is_dir(entry):
      ignored.append(os.path.abspath(entry.path))
      continue
    identity = entry.name
    try:
      found, not_images, subfolders = _images_in(entry.path)
    except OSError as e:
      skipped.append(Skipped(os.path.abspath(entry.path), f'cannot list identity folder: {e}'))
      logging.warning('Skipping identity %r: %s', identity, skipped[-1].reason)
      continue
    ignored.extend(not_images)
    for sub in subfolders:
      skipped.append(
        Skipped(
          sub, f'subfolder inside identity folder {identity!r}: not read (the layout is <root>/<identity>/<image>)'
        )
      )
      logging.warning('Not reading %s: %s', sub, skipped[-1].reason)
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


def _is_dir(entry: os.DirEntry) -> bool:
  """`entry.is_dir()`, False for a symlink that cannot be followed (a loop raises ELOOP)."""
  try:
    return entry.is_dir()
  except OSError:
    return False


def _images_in(directory: str):
  """Sorted image file names in `directory`, absolute paths of other non-folder entries, and of subfolders."""
  found, others, subfolders = [], [], []
  with os.scandir(directory) as it:
    for entry in it:
      if _is_dir(entry):
        subfolders.append(os.path.abspath(entry.path))
      elif images.is_image_file(entry.name):
        found.append(entry.name)
      else:
        others.append(os.path.abspath(entry.path))
  return sorted(found), sorted(others), sorted(subfolders)
