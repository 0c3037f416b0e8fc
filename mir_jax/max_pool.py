"""A faster stand-in, with the same outputs, for the max pooling layers inside facenet-pytorch's MTCNN.

Profiling `mir_jax.embed` on LFW put more of MTCNN's time in `torch.max_pool2d` than in all of its
convolutions: torch's CPU kernel for contiguous NCHW input is slow for MTCNN's shapes, while a window
maximum written as `k` strided `torch.maximum`s per axis (first along the width, then the height) is
several times faster on them (`python -m benchmarks.max_pool_speed`; DEVELOPING.md has the figures).

A maximum is exact whatever the order of comparison, so the output holds the same values as torch's, in
the same memory layout, and the cache key need not change. (The one freedom: a window whose maximum is a
tie of -0.0 and +0.0 may give either zero, as torch's own SIMD and scalar paths do; no later arithmetic in
MTCNN can tell them apart.) Tests compare the two element by element on every small size and on MTCNN's,
compare the three networks' raw outputs, and compare MTCNN's boxes with and without the swap.
"""

import math
from typing import Any

import torch
from torch import nn


def _pooled_length(n: int, kernel: int, stride: int, ceil_mode: bool) -> int:
  """torch's output length for one axis of an unpadded, undilated pool."""
  if ceil_mode:
    out = math.ceil((n - kernel) / stride) + 1
    if (out - 1) * stride >= n:  # torch drops a last window that would start past the input
      out -= 1
    return out
  return (n - kernel) // stride + 1


def _pool_axis(x: torch.Tensor, dim: int, kernel: int, stride: int, ceil_mode: bool) -> torch.Tensor:
  n = x.shape[dim]
  out = _pooled_length(n, kernel, stride, ceil_mode)
  span = (out - 1) * stride + kernel
  if span > n:  # ceil_mode's last window hangs over the edge: torch ignores the missing cells
    shape = list(x.shape)
    shape[dim] = span - n
    x = torch.cat([x, x.new_full(shape, -math.inf)], dim)
  step = (slice(None),) * dim + (slice(None, None, stride),)
  length = (out - 1) * stride + 1  # from a window's first cell to the last window's first cell
  result = x.narrow(dim, 0, length)[step]
  for offset in range(1, kernel):
    result = torch.maximum(result, x.narrow(dim, offset, length)[step])
  return result


def max_pool2d(x: torch.Tensor, kernel: int, stride: int, ceil_mode: bool = False) -> torch.Tensor:
  """`torch.nn.functional.max_pool2d(x, kernel, stride, ceil_mode=ceil_mode)` for (N, C, H, W) input."""
  if x.dim() != 4 or min(_pooled_length(n, kernel, stride, ceil_mode) for n in x.shape[2:]) < 1:
    # Shapes torch rejects (or that MTCNN never makes) get torch's own answer and error messages.
    return torch.nn.functional.max_pool2d(x, kernel, stride, ceil_mode=ceil_mode)
  out = _pool_axis(_pool_axis(x, 3, kernel, stride, ceil_mode), 2, kernel, stride, ceil_mode)
  # torch's pool writes its output in the input's memory format (conv layers hand MTCNN's pools
  # channels-last tensors at some sizes), and the next convolution picks its algorithm, and so its
  # rounding, by that format: the layout has to match as well as the values.
  if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
    return out.contiguous(memory_format=torch.channels_last)
  return out.contiguous()


class MaxPool2d(nn.Module):
  """Drop-in for an `nn.MaxPool2d` with square kernel and stride, no padding, no dilation."""

  def __init__(self, kernel: int, stride: int, ceil_mode: bool):
    super().__init__()
    self.kernel, self.stride, self.ceil_mode = kernel, stride, ceil_mode

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return max_pool2d(x, self.kernel, self.stride, self.ceil_mode)

  def extra_repr(self) -> str:
    return f'kernel={self.kernel}, stride={self.stride}, ceil_mode={self.ceil_mode}'


def _square(value: Any):
  if isinstance(value, (tuple, list)):
    return value[0] if len(set(value)) == 1 else None
  return value


def replace_max_pools(module: nn.Module) -> int:
  """Swaps every plain `nn.MaxPool2d` inside `module` for `MaxPool2d`, in place; returns how many.

  Pools with padding, dilation, index output or non-square windows are left to torch.
  """
  swapped = 0
  for name, child in list(module.named_children()):
    if isinstance(child, nn.MaxPool2d):
      kernel, stride = _square(child.kernel_size), _square(child.stride)
      if (
        kernel and stride and _square(child.padding) == 0 and _square(child.dilation) == 1 and not child.return_indices
      ):
        setattr(module, name, MaxPool2d(kernel, stride, child.ceil_mode))
        swapped += 1
    else:
      swapped += replace_max_pools(child)
  return swapped
