"""What every dataset reader and protocol parser returns, and the error they raise.

A reader never drops an input silently: whatever it leaves out is either a `Skipped` entry (something
that looked like data but could not be used) or an ignored file (not data by its extension), and both
are returned beside the items so callers can report them.
"""

import dataclasses
from typing import Generic, Iterator, List, TypeVar

T = TypeVar('T')


class DatasetError(ValueError):
  """A dataset directory or protocol file that is missing or does not match its documented layout."""


@dataclasses.dataclass(frozen=True)
class Skipped:
  """One input left out on purpose.

  Attributes:
    where: the file or directory, or `<file>:<line number>` for a protocol line.
    reason: why it was left out, in words.
  """

  where: str
  reason: str


@dataclasses.dataclass
class Listing(Generic[T]):
  """The items a reader found, in deterministic order, plus what it left out.

  Iterating over a listing or taking its length refers to `items`, so it reads like a list.

  Attributes:
    items: the records (or pairs) found.
    skipped: inputs left out, each with a reason.
    ignored: files ignored because their extension is not an image extension.
  """

  items: List[T]
  skipped: List[Skipped] = dataclasses.field(default_factory=list)
  ignored: List[str] = dataclasses.field(default_factory=list)

  def __iter__(self) -> Iterator[T]:
    return iter(self.items)

  def __len__(self) -> int:
    return len(self.items)
