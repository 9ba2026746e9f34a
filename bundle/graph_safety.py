"""Refuse ONNX graphs that reach outside their own file, read before ONNX Runtime ever opens them.

A graph can keep tensors in other files (`data_location: EXTERNAL`, a path the graph chooses: a way to read
any file the server can) and can call operators from any domain (custom operators: native code that a
runtime may provide). Our exports need neither: every tensor is inside the file and every operator is in the
standard sets, `""` (alias `"ai.onnx"`) and `"ai.onnx.ml"`. So a graph that uses either is refused, whatever
ONNX Runtime would do with it (recent releases refuse external data outside the model folder; this does not
rely on that).

The file is read with a small protobuf wire-format reader (field numbers from onnx/onnx.proto), so serving
needs no `onnx` package and nothing in the file is interpreted beyond these fields. Every place a tensor or a
node can hide is visited: graph initializers and sparse initializers, node attributes (tensors, sparse
tensors, subgraphs of If/Loop/Scan, at any depth), model-local functions, training graphs, and the model's
and functions' `opset_import`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from bundle.errors import BundleError

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
MAX_DEPTH = 64
"""Nested subgraphs deeper than this are refused (our graphs have none; it bounds the reader's recursion)."""

# Field numbers, onnx.proto. (wire type 2: length-delimited; 0: varint)
MODEL_GRAPH, MODEL_OPSET, MODEL_TRAINING, MODEL_FUNCTIONS = 7, 8, 20, 25
TRAINING_GRAPHS = (1, 2)  # TrainingInfoProto.initialization, .algorithm
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_SPARSE_INITIALIZER = 1, 5, 15
NODE_ATTRIBUTE, NODE_DOMAIN = 5, 7
ATTRIBUTE_TENSORS, ATTRIBUTE_GRAPHS, ATTRIBUTE_SPARSE = (5, 10), (6, 11), (22, 23)
TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION, EXTERNAL = 13, 14, 1
SPARSE_TENSORS = (1, 2)  # SparseTensorProto.values, .indices
FUNCTION_NODE, FUNCTION_OPSET, FUNCTION_DOMAIN = 7, 9, 10
OPSET_DOMAIN = 1


def check_graph_safety(path: Path) -> None:
    """Raise `BundleError` (`onnx_external_data`, `onnx_custom_domain`, `onnx_invalid`) unless the graph is
    self-contained and uses only the standard operator domains."""
    path = Path(path)
    try:
        _Walk(path).model(memoryview(path.read_bytes()))
    except OSError as e:
        raise BundleError(f"{path}: unreadable: {e}", "file_missing") from None


class _Walk:
    def __init__(self, path: Path):
        self.path = path

    def model(self, data: memoryview) -> None:
        for field, value in self.fields(data):
            if field == MODEL_GRAPH:
                self.graph(value, 0)
            elif field == MODEL_OPSET:
                self.opset(value, "opset_import")
            elif field == MODEL_TRAINING:
                for inner, graph in self.fields(value):
                    if inner in TRAINING_GRAPHS:
                        self.graph(graph, 0)
            elif field == MODEL_FUNCTIONS:
                self.function(value)

    def graph(self, data: memoryview, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise BundleError(f"{self.path}: subgraphs nested deeper than {MAX_DEPTH}", "onnx_invalid")
        for field, value in self.fields(data):
            if field == GRAPH_NODE:
                self.node(value, depth)
            elif field == GRAPH_INITIALIZER:
                self.tensor(value)
            elif field == GRAPH_SPARSE_INITIALIZER:
                self.sparse(value)

    def node(self, data: memoryview, depth: int) -> None:
        for field, value in self.fields(data):
            if field == NODE_DOMAIN:
                self.domain(value, "node")
            elif field == NODE_ATTRIBUTE:
                for inner, item in self.fields(value):
                    if inner in ATTRIBUTE_TENSORS:
                        self.tensor(item)
                    elif inner in ATTRIBUTE_GRAPHS:
                        self.graph(item, depth + 1)
                    elif inner in ATTRIBUTE_SPARSE:
                        self.sparse(item)

    def function(self, data: memoryview) -> None:
        for field, value in self.fields(data):
            if field == FUNCTION_NODE:
                self.node(value, 1)
            elif field == FUNCTION_OPSET:
                self.opset(value, "function opset_import")
            elif field == FUNCTION_DOMAIN:
                self.domain(value, "function")

    def tensor(self, data: memoryview) -> None:
        for field, value in self.fields(data):
            if field == TENSOR_EXTERNAL_DATA or (field == TENSOR_DATA_LOCATION and value == EXTERNAL):
                raise BundleError(
                    f"{self.path}: a tensor keeps its data in an external file; only self-contained graphs are served",
                    "onnx_external_data",
                )

    def sparse(self, data: memoryview) -> None:
        for field, value in self.fields(data):
            if field in SPARSE_TENSORS:
                self.tensor(value)

    def opset(self, data: memoryview, where: str) -> None:
        for field, value in self.fields(data):
            if field == OPSET_DOMAIN:
                self.domain(value, where)

    def domain(self, value: memoryview | int, where: str) -> None:
        name = bytes(value).decode(errors="replace") if isinstance(value, memoryview) else str(value)
        if name not in STANDARD_DOMAINS:
            raise BundleError(
                f"{self.path}: {where} uses operator domain {name[:60]!r}; only the standard domains "
                f"{sorted(STANDARD_DOMAINS)} are served",
                "onnx_custom_domain",
            )

    def fields(self, data: memoryview) -> Iterator[tuple[int, memoryview | int]]:
        """(field number, value) of one protobuf message: varints as ints, everything else as bytes."""
        position, end = 0, len(data)
        while position < end:
            key, position = self.varint(data, position)
            field, wire = key >> 3, key & 7
            if wire == 0:
                value, position = self.varint(data, position)
            elif wire == 2:
                length, position = self.varint(data, position)
                value, position = data[position : position + length], position + length
            elif wire in (1, 5):
                size = 8 if wire == 1 else 4
                value, position = data[position : position + size], position + size
            else:
                raise BundleError(
                    f"{self.path}: not a loadable ONNX model: bad protobuf wire type {wire}", "onnx_invalid"
                )
            if position > end:
                raise BundleError(f"{self.path}: not a loadable ONNX model: truncated protobuf", "onnx_invalid")
            yield field, value

    def varint(self, data: memoryview, position: int) -> tuple[int, int]:
        result = shift = 0
        while position < len(data) and shift < 64:
            byte = data[position]
            position += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result, position
            shift += 7
        raise BundleError(f"{self.path}: not a loadable ONNX model: truncated or malformed protobuf", "onnx_invalid")
