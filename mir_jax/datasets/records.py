"""The one record type every face dataset reader yields."""

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class FaceRecord:
  """One image of one identity, as a dataset reader lists it (no pixels are read yet).

  Attributes:
    path: absolute path of the image file.
    identity: the identity's name as the dataset spells it (e.g. LFW's `Aaron_Peckham`).
    image_id: a key unique within the dataset and stable across runs (e.g. `Aaron_Peckham/Aaron_Peckham_0001`).
    video_id: the video the frame belongs to (YouTube Faces: `<person>/<video_number>`); None for stills.
    role: dataset-specific role of the image, e.g. MegaFace's 'probe' / 'distractor'; None when unused.
  """

  path: str
  identity: str
  image_id: str
  video_id: Optional[str] = None
  role: Optional[str] = None
