"""A reader of TensorFlow GraphDef files (protobuf wire format), enough for a frozen inference graph.

No TensorFlow and no protobuf schema: the few messages a frozen graph uses (GraphDef, NodeDef, AttrValue,
TensorProto, TensorShapeProto) are decoded from their field numbers in tensorflow/core/framework/*.proto.
Every error names the byte offset where the file stopped making sense, so a truncated or corrupt download
says where it broke instead of failing later with a shape mismatch.
"""

import dataclasses
import os
import struct
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np

# tensorflow/core/framework/types.proto: the DataType values a frozen float graph uses.
DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 6: np.int8, 9: np.int64, 10: np.bool_}
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


class GraphDefError(ValueError):
  """The file is not a well-formed GraphDef (the message names the byte offset)."""


@dataclasses.dataclass
class Node:
  """One NodeDef: `inputs` are names ('^name' marks a control input); `attrs` hold decoded values."""

  name: str
  op: str
  inputs: List[str]
  attrs: Dict[str, Any]


def _fields(buf: memoryview, start: int, end: int) -> Iterator[Tuple[int, int, Any, int]]:
  """(field number, wire type, value, offset) of each field in buf[start:end].

  A varint is an int; a fixed32/64 is its raw bytes; a length-delimited field is (start, end) offsets.
  """
  pos = start
  while pos < end:
    offset = pos
    tag, pos = _varint(buf, pos, end)
    field, wire = tag >> 3, tag & 7
    if field == 0:
      raise GraphDefError(f'field number 0 at byte {offset}')
    if wire == _VARINT:
      value, pos = _varint(buf, pos, end)
    elif wire == _FIXED64:
      value, pos = bytes(buf[pos : pos + 8]), pos + 8
    elif wire == _FIXED32:
      value, pos = bytes(buf[pos : pos + 4]), pos + 4
    elif wire == _BYTES:
      length, pos = _varint(buf, pos, end)
      value, pos = (pos, pos + length), pos + length
    else:
      raise GraphDefError(f'unsupported wire type {wire} at byte {offset}')
    if pos > end:
      raise GraphDefError(f'field {field} at byte {offset} runs past the end of its message (byte {end})')
    yield field, wire, value, offset


def _varint(buf: memoryview, pos: int, end: int) -> Tuple[int, int]:
  result = shift = 0
  start = pos
  while True:
    if pos >= end:
      raise GraphDefError(f'truncated varint at byte {start}')
    b = buf[pos]
    pos += 1
    result |= (b & 0x7F) << shift
    if not b & 0x80:
      return result, pos
    shift += 7
    if shift > 63:
      raise GraphDefError(f'varint longer than 10 bytes at byte {start}')


def _text(buf: memoryview, span: Tuple[int, int], offset: int) -> str:
  try:
    return bytes(buf[span[0] : span[1]]).decode('utf-8')
  except UnicodeDecodeError as e:
    raise GraphDefError(f'string at byte {offset} is not UTF-8') from e


def _packed(buf, span, wire, value, fmt: str) -> List[Any]:
  """A repeated numeric field: packed (one length-delimited run) or one element."""
  if wire == _BYTES:
    raw = bytes(buf[span[0] : span[1]]) if span is not None else b''
    if fmt == 'varint':
      out, pos = [], 0
      view = memoryview(raw)
      while pos < len(raw):
        v, pos = _varint(view, pos, len(raw))
        out.append(v)
      return out
    return list(np.frombuffer(raw, dtype=fmt))
  if fmt == 'varint':
    return [value]
  return list(np.frombuffer(value, dtype=fmt))


def _shape(buf, start, end) -> List[int]:
  dims = []
  for field, _, value, _ in _fields(buf, start, end):
    if field == 2:  # Dim
      size = 0
      for f, _, v, _ in _fields(buf, *value):
        if f == 1:
          size = v - (1 << 64) if v >= 1 << 63 else v  # int64: -1 is an unknown size
      dims.append(size)
  return dims


def _tensor(buf, start, end) -> np.ndarray:
  dtype, shape, content, values = None, [], None, []
  for field, wire, value, offset in _fields(buf, start, end):
    if field == 1:
      if value not in DTYPES:
        raise GraphDefError(f'tensor at byte {start}: unsupported dtype {value} (byte {offset})')
      dtype = DTYPES[value]
    elif field == 2:
      shape = _shape(buf, *value)
    elif field == 4:
      content = bytes(buf[value[0] : value[1]])
    elif field == 5:
      values += _packed(buf, value if wire == _BYTES else None, wire, value, '<f4')
    elif field == 6:
      values += _packed(buf, value if wire == _BYTES else None, wire, value, '<f8')
    elif field in (7, 10):
      values += _packed(buf, value if wire == _BYTES else None, wire, value, 'varint')
  if dtype is None:
    raise GraphDefError(f'tensor at byte {start} has no dtype')
  count = int(np.prod(shape)) if shape else 1
  if content is not None:
    array = np.frombuffer(content, dtype=np.dtype(dtype).newbyteorder('<'))
    if array.size != count:
      raise GraphDefError(f'tensor at byte {start}: {array.size} values for shape {shape}')
    return array.astype(dtype).reshape(shape)
  # TensorFlow stores a constant fill as one value, to be repeated across the shape.
  if not values:
    values = [0]
  if len(values) not in (1, count):
    raise GraphDefError(f'tensor at byte {start}: {len(values)} values for shape {shape}')
  array = np.array(values).astype(dtype)
  return np.broadcast_to(array, (count,)).reshape(shape).copy() if len(values) == 1 else array.reshape(shape)


def _attr(buf, start, end) -> Any:
  for field, _, value, _ in _fields(buf, start, end):
    if field == 1:  # ListValue
      items: List[Any] = []
      for f, w, v, o in _fields(buf, *value):
        if f == 2:
          items.append(_text(buf, v, o))
        elif f == 3:
          items += [
            x - (1 << 64) if x >= 1 << 63 else x for x in _packed(buf, v if w == _BYTES else None, w, v, 'varint')
          ]
        elif f == 4:
          items += [float(x) for x in _packed(buf, v if w == _BYTES else None, w, v, '<f4')]
        elif f == 6:
          items += _packed(buf, v if w == _BYTES else None, w, v, 'varint')
        elif f == 7:
          items.append(_shape(buf, *v))
        elif f == 8:
          items.append(_tensor(buf, *v))
      return items
    if field == 2:
      return bytes(buf[value[0] : value[1]]).decode('utf-8', 'replace')
    if field == 3:
      return value - (1 << 64) if value >= 1 << 63 else value
    if field == 4:
      return struct.unpack('<f', value)[0]
    if field == 5:
      return bool(value)
    if field == 6:
      return ('dtype', value)
    if field == 7:
      return _shape(buf, *value)
    if field == 8:
      return _tensor(buf, *value)
  return None


def _node(buf, start, end) -> Node:
  name, op, inputs, attrs = None, None, [], {}
  for field, wire, value, offset in _fields(buf, start, end):
    if wire != _BYTES:
      continue
    if field == 1:
      name = _text(buf, value, offset)
    elif field == 2:
      op = _text(buf, value, offset)
    elif field == 3:
      inputs.append(_text(buf, value, offset))
    elif field == 5:  # map<string, AttrValue> entry
      key, attr = None, None
      for f, _, v, o in _fields(buf, *value):
        if f == 1:
          key = _text(buf, v, o)
        elif f == 2:
          attr = _attr(buf, *v)
      if key is None:
        raise GraphDefError(f'attribute without a name at byte {offset}')
      attrs[key] = attr
  if not name or not op:
    raise GraphDefError(f'node at byte {start} lacks a name or an op')
  return Node(name=name, op=op, inputs=inputs, attrs=attrs)


def parse(data: bytes) -> List[Node]:
  """The nodes of a serialized GraphDef, in file order.

  Raises:
    GraphDefError: the bytes are not a GraphDef (with the offset where they stop being one).
  """
  buf = memoryview(data)
  nodes = []
  for field, wire, value, offset in _fields(buf, 0, len(buf)):
    if field == 1:
      if wire != _BYTES:
        raise GraphDefError(f'node field with wire type {wire} at byte {offset}')
      nodes.append(_node(buf, *value))
  if not nodes:
    raise GraphDefError('no nodes: not a GraphDef')
  return nodes


def read(path: os.PathLike) -> List[Node]:
  """`parse` of a file; the error also names the file."""
  with open(path, 'rb') as f:
    data = f.read()
  try:
    return parse(data)
  except GraphDefError as e:
    raise GraphDefError(f'{os.fspath(path)}: {e}') from None
