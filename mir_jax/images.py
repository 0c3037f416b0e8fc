"""Decoding one face image file into the uint8 RGB array every backbone expects.

Face datasets mix JPEG, PNG and PGM files in grayscale, palette, CMYK, 16-bit and alpha modes, and some
files are empty or damaged. `load_rgb` turns all valid ones into the same HxWx3 uint8 array and turns
every invalid one into an `ImageError` naming the file, so a bad file stops a run with a useful message
instead of silently becoming a gray or black face.

Limit: libjpeg only warns about damaged entropy-coded data inside an otherwise complete JPEG, and
Pillow ignores those warnings, so such a file decodes (with visible artefacts) rather than failing.
Truncated files and broken headers or segments do fail.
"""

import errno
import os
import pathlib
from typing import Union

import numpy as np
from PIL import Image
from PIL import ImageFile
from PIL import ImageOps
from PIL import UnidentifiedImageError

PathLike = Union[str, os.PathLike]

# Extensions the folder readers treat as images (compared lower-cased); anything else is counted and
# ignored. Kept to formats the face datasets actually ship in.
IMAGE_EXTENSIONS = frozenset({'.jpg', '.jpeg', '.png', '.pgm', '.ppm', '.bmp'})

# Modes holding more than 8 bits per sample. `Image.convert('RGB')` clips these at 255 instead of
# rescaling, which turns almost every pixel of a 16-bit image white.
_WIDE_INT_MODES = frozenset({'I;16', 'I;16L', 'I;16B', 'I;16N', 'I'})

# Signatures of accepted formats; only used to word the error for a file Pillow cannot identify.
_MAGIC = ((b'\xff\xd8\xff', 'JPEG'), (b'\x89PNG\r\n\x1a\n', 'PNG'), (b'BM', 'BMP'))


class ImageError(ValueError):
  """An image file that cannot be turned into pixels (missing, empty, not an image, or corrupt)."""


def is_image_file(path: PathLike) -> bool:
  """Whether a file name has one of the accepted image extensions (case-insensitive)."""
  return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def load_rgb(path: PathLike, *, exif_transpose: bool = False) -> np.ndarray:
  """Decodes an image file fully into an RGB array.

  Mode handling: grayscale (L, 1) is repeated into three channels; palette (P) is expanded; CMYK is
  converted by Pillow's standard formula; 16-bit (I;16*, and 32-bit I assumed to hold 16-bit samples)
  is rescaled by dropping the low byte; images with alpha (RGBA, LA, PA, P with transparency) are
  composited onto black, so fully transparent pixels become black whatever colour the file stored in
  them (dropping alpha would expose that arbitrary colour).

  Args:
    path: the image file.
    exif_transpose: rotate/flip by the EXIF orientation tag. Off by default because the face datasets
      here are already aligned and the reference tools (dlib, FaceNet) ignore the tag too.

  Returns:
    A C-contiguous uint8 array of shape (height, width, 3).

  Raises:
    ImageError: the file is missing (or a broken or looping symlink), unreadable, empty, not a recognised
      image, or corrupt/truncated.
    RuntimeError: some other code set `PIL.ImageFile.LOAD_TRUNCATED_IMAGES`, which would make Pillow
      pad truncated files with gray instead of failing.
  """
  if ImageFile.LOAD_TRUNCATED_IMAGES:
    raise RuntimeError(
      'PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set by some imported code); load_rgb refuses to '
      'run because truncated images would then decode as silently gray-padded faces.'
    )
  path = pathlib.Path(path)
  try:
    size = path.stat().st_size
  except FileNotFoundError:
    if path.is_symlink():
      raise ImageError(f'{path}: broken symbolic link (its target {os.readlink(path)} does not exist)') from None
    raise ImageError(f'{path}: file does not exist') from None
  except OSError as e:
    if e.errno == errno.ELOOP:
      raise ImageError(f'{path}: symbolic link loop (the link resolves back to itself)') from None
    raise ImageError(f'{path}: cannot stat file: {e}') from e
  if not path.is_file():
    raise ImageError(f'{path}: not a regular file')
  if size == 0:
    raise ImageError(f'{path}: file is empty (0 bytes)')
  try:
    with Image.open(path) as img:
      # `open` only parses the header; `load` decodes every byte, which is what exposes truncation.
      img.load()
      if exif_transpose:
        img = ImageOps.exif_transpose(img)
      rgb = _to_rgb(img)
  except ImageError as e:
    raise ImageError(f'{path}: {e}') from None
  except UnidentifiedImageError:
    kind = _claimed_format(path)
    if kind:
      raise ImageError(f'{path}: starts like a {kind} file but its header is corrupt') from None
    raise ImageError(f'{path}: not a recognised image file ({size} bytes)') from None
  except PermissionError:
    raise ImageError(f'{path}: permission denied (the file is not readable by this user)') from None
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise ImageError(f'{path}: corrupt or truncated image data: {e}') from e
  return np.ascontiguousarray(rgb)


def _claimed_format(path: pathlib.Path) -> str:
  """The format a file's magic bytes claim ('' if none), to tell corrupt images from non-images."""
  with open(path, 'rb') as f:
    head = f.read(8)
  for magic, kind in _MAGIC:
    if head.startswith(magic):
      return kind
  return ''


def _to_rgb(img: Image.Image) -> np.ndarray:
  """Converts a decoded Pillow image of any supported mode to uint8 RGB."""
  if img.mode in _WIDE_INT_MODES:
    wide = np.asarray(img).astype(np.int64)
    gray = (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)
  if img.mode == 'F':
    raise ImageError('floating-point (mode F) images are not supported')
  has_alpha = img.mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La') or (img.mode == 'P' and 'transparency' in img.info)
  if has_alpha:
    rgba = img.convert('RGBA')
    black = Image.new('RGBA', rgba.size, (0, 0, 0, 255))
    img = Image.alpha_composite(black, rgba)
  rgb = np.asarray(img.convert('RGB'), dtype=np.uint8)
  if rgb.ndim != 3 or rgb.shape[2] != 3:
    raise ImageError(f'unexpected decoded shape {rgb.shape} from mode {img.mode}')
  return rgb
