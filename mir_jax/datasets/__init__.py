"""Face dataset readers, by name.

Every reader takes the dataset's root directory (plus keyword options) and returns a `Listing` of
`FaceRecord`s in sorted order, with whatever it left out in `skipped`/`ignored`; a missing or
malformed directory raises `DatasetError` with the expected layout and where to get the data.
"""

from typing import Callable, Dict

from mir_jax.datasets import folder
from mir_jax.datasets import lfw
from mir_jax.datasets import megaface
from mir_jax.datasets import ytf
from mir_jax.datasets.listing import DatasetError
from mir_jax.datasets.listing import Listing
from mir_jax.datasets.listing import Skipped
from mir_jax.datasets.records import FaceRecord

Reader = Callable[..., Listing[FaceRecord]]

DATASETS: Dict[str, Reader] = {
  'folder': folder.read_folder,
  'lfw': lfw.read_lfw,
  'ytf': ytf.read_ytf,
  'megaface': megaface.read_megaface,
}


def get_reader(name: str) -> Reader:
  """The reader registered under `name` (one of DATASETS)."""
  try:
    return DATASETS[name]
  except KeyError:
    raise ValueError(f'unknown dataset {name!r}; known: {sorted(DATASETS)}') from None


__all__ = ['DATASETS', 'DatasetError', 'FaceRecord', 'Listing', 'Reader', 'Skipped', 'get_reader']
