"""What a bundle's ONNX file declares, read from its protobuf bytes without the onnx package. Torch-free.

The device has ONNX Runtime (or OpenVINO, or a TensorRT engine), not the ``onnx`` package, and a bundle is
checked before any of them opens a graph. This reads only what that check needs:

* the main graph's inputs and outputs (name, element type, shape: ints, or strings for symbolic axes),
* the model's ``metadata_props`` (the exporter writes ``vlmedge.role`` and a ``vlmedge.manifest`` summary),
* every tensor that keeps its data outside the file (``data_location = EXTERNAL``), wherever a tensor can be:
  graph initializers, sparse initializers, node attributes (``Constant``), subgraphs (``If``/``Loop``/``Scan``
  bodies), functions and training graphs.

The file is memory-mapped and weight bytes are skipped by their length, never read: a 350 MB graph costs a
walk over its few thousand small messages. Field numbers are those of onnx/onnx.proto (stable since IR 3).
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path

from vlmedge.errors import ArtifactError

# onnx.TensorProto.DataType -> numpy dtype name (the names manifest.json uses)
ELEM_TYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "string",
              9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16"}
MAX_NESTING = 64  # subgraphs inside subgraphs; real models nest a few levels

# Message kinds and, for each, the length-delimited fields that hold a message to descend into.
_MODEL, _GRAPH, _NODE, _ATTRIBUTE, _SPARSE, _FUNCTION, _TRAINING = range(7)
_CHILDREN = {
    _MODEL: {7: _GRAPH, 20: _TRAINING, 25: _FUNCTION},  # graph, training_info, functions
    _GRAPH: {1: _NODE},  # node (initializers and inputs/outputs are read in _graph)
    _NODE: {5: _ATTRIBUTE},  # attribute
    _ATTRIBUTE: {6: _GRAPH, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},  # g, graphs, sparse_tensor(s)
    _SPARSE: {},  # values / indices are tensors (read in _walk)
    _FUNCTION: {7: _NODE},  # node
    _TRAINING: {1: _GRAPH, 2: _GRAPH},  # initialization, algorithm
}
_TENSOR_FIELDS = {_GRAPH: (5,), _ATTRIBUTE: (5, 10), _SPARSE: (1, 2)}  # initializer; t, tensors; values, indices
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


class _Malformed(Exception):
    pass


@dataclass(frozen=True)
class GraphTensor:
    name: str
    dtype: str  # numpy dtype name, or "onnx type N" for a type vlmedge has no name for
    shape: tuple  # ints; strings for symbolic axes; "?" where the file gives neither


@dataclass(frozen=True)
class OnnxFile:
    inputs: tuple[GraphTensor, ...]  # the main graph's inputs, initializers (IR < 4 lists them there) left out
    outputs: tuple[GraphTensor, ...]
    metadata: dict[str, str]  # metadata_props
    external_data: tuple[str, ...]  # locations of external data files (empty: the file is self-contained)
    external_tensors: int  # how many tensors refer to external data


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed(f"truncated varint at byte {pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(buf, pos: int, end: int):
    """(field, wire type, value) over one message: value is an int (varint) or a (start, end) span (bytes)."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield field, wire, value
        elif wire == 2:
            n, pos = _varint(buf, pos, end)
            if n > end - pos:
                raise _Malformed(f"field {field} at byte {pos} runs past its message ({n} bytes)")
            yield field, wire, (pos, pos + n)
            pos += n
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > end:
                raise _Malformed(f"fixed-size field {field} runs past its message")
        else:  # 3, 4 (groups) and 6, 7 do not occur in ONNX
            raise _Malformed(f"wire type {wire} of field {field} at byte {pos}")


def _text(buf, span: tuple[int, int]) -> str:
    return bytes(buf[span[0]:span[1]]).decode("utf-8", errors="replace")


def _entry(buf, span) -> tuple[str, str]:
    """A StringStringEntryProto: (key, value)."""
    key = value = ""
    for field, wire, v in _fields(buf, *span):
        if wire == 2 and field == 1:
            key = _text(buf, v)
        elif wire == 2 and field == 2:
            value = _text(buf, v)
    return key, value


class _Reader:
    def __init__(self, buf):
        self.buf = buf
        self.locations: list[str] = []
        self.external = 0

    def tensor(self, span) -> str:
        """A TensorProto: note external data; returns its name."""
        name, location, external = "", None, False
        for field, wire, v in _fields(self.buf, *span):
            if field == 8 and wire == 2:  # name
                name = _text(self.buf, v)
            elif field == 13 and wire == 2:  # external_data entry
                external = True
                key, value = _entry(self.buf, v)
                if key == "location":
                    location = value
            elif field == 14 and wire == 0 and v == _EXTERNAL:  # data_location
                external = True
        if external:
            self.external += 1
            loc = location if location is not None else "(no location)"
            if loc not in self.locations:
                self.locations.append(loc)
        return name

    def value_info(self, span) -> GraphTensor:
        """A ValueInfoProto of a tensor: name, element type, shape."""
        name, dtype, shape = "", "?", ()
        for field, wire, v in _fields(self.buf, *span):
            if field == 1 and wire == 2:
                name = _text(self.buf, v)
            elif field == 2 and wire == 2:  # TypeProto
                for f2, w2, v2 in _fields(self.buf, *v):
                    if f2 == 1 and w2 == 2:  # tensor_type
                        dtype, shape = self._tensor_type(v2)
        return GraphTensor(name, dtype, shape)

    def _tensor_type(self, span) -> tuple[str, tuple]:
        dtype, dims = "?", []
        for field, wire, v in _fields(self.buf, *span):
            if field == 1 and wire == 0:
                dtype = ELEM_TYPES.get(v, f"onnx type {v}")
            elif field == 2 and wire == 2:  # TensorShapeProto
                for f2, w2, v2 in _fields(self.buf, *v):
                    if f2 == 1 and w2 == 2:  # Dimension
                        dim: int | str = "?"
                        for f3, w3, v3 in _fields(self.buf, *v2):
                            if f3 == 1 and w3 == 0:
                                dim = v3 - (1 << 64) if v3 >= 1 << 63 else v3  # int64
                            elif f3 == 2 and w3 == 2:
                                dim = _text(self.buf, v3) or "?"
                        dims.append(dim)
        return dtype, tuple(dims)

    def walk(self, kind: int, span, depth: int = 0) -> None:
        """Every tensor reachable from a message (external data)."""
        if depth > MAX_NESTING:
            raise _Malformed(f"subgraphs nested more than {MAX_NESTING} deep")
        children = _CHILDREN[kind]
        tensors = _TENSOR_FIELDS.get(kind, ())
        for field, wire, v in _fields(self.buf, *span):
            if wire != 2:
                continue
            if field in tensors:
                self.tensor(v)
            elif kind == _GRAPH and field == 15:  # sparse_initializer
                self.walk(_SPARSE, v, depth + 1)
            elif field in children:
                self.walk(children[field], v, depth + 1)

    def main_graph(self, span) -> tuple[list[GraphTensor], list[GraphTensor]]:
        inputs, outputs, initializers = [], [], set()
        for field, wire, v in _fields(self.buf, *span):
            if wire != 2:
                continue
            if field == 11:
                inputs.append(self.value_info(v))
            elif field == 12:
                outputs.append(self.value_info(v))
            elif field == 5:
                initializers.add(self.tensor(v))
            elif field == 15:  # sparse initializer: its name is its values tensor's
                for f2, w2, v2 in _fields(self.buf, *v):
                    if w2 == 2 and f2 in (1, 2):
                        name = self.tensor(v2)
                        if f2 == 1:
                            initializers.add(name)
            elif field == 1:
                self.walk(_NODE, v, 1)
        return [t for t in inputs if t.name not in initializers], outputs


def read_onnx(path: str | Path) -> OnnxFile:
    """Inputs, outputs, metadata and external data references of the ONNX file at ``path``.

    Raises ArtifactError naming the file when it cannot be read or is not a well-formed ONNX protobuf."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise ArtifactError(f"{path}: empty file, not an ONNX model")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _read(buf, size, path)
    except OSError as e:
        raise ArtifactError(f"{path}: cannot be read ({e.strerror or e})") from None


def _read(buf, size: int, path: Path) -> OnnxFile:
    reader = _Reader(buf)
    inputs: list[GraphTensor] = []
    outputs: list[GraphTensor] = []
    metadata: dict[str, str] = {}
    graphs = 0
    try:
        for field, wire, v in _fields(buf, 0, size):
            if wire != 2:
                continue
            if field == 7:
                graphs += 1
                inputs, outputs = reader.main_graph(v)
            elif field == 14:
                key, value = _entry(buf, v)
                metadata[key] = value
            elif field in (20, 25):
                reader.walk(_CHILDREN[_MODEL][field], v, 1)
    except _Malformed as e:
        raise ArtifactError(f"{path}: not a well-formed ONNX file ({e})") from None
    if graphs != 1:
        raise ArtifactError(f"{path}: not an ONNX model ({graphs} graphs, expected 1)")
    return OnnxFile(tuple(inputs), tuple(outputs), metadata, tuple(reader.locations), reader.external)
