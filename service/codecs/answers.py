"""Answers as bytes: the simple API's predictions, and the JSON error every process answers with.

The worker encodes each answer body (spreading the JSON work over the processes); the HTTP process only sends it.
"""

from __future__ import annotations

import functools

import numpy as np
import orjson

Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]
"""(HTTP status, body, extra headers): what the worker sends back for each request."""

JSON = b"application/json"


def encode_predictions(model: str, version: int, classes: list[str], probabilities: np.ndarray) -> bytes:
    """The simple API's answer: per row, the top label and every label's probability.

    Built as text, not as a dict per row (which cost more than the model on a 1000-row request): orjson writes all
    values at once, each float32 in its shortest exact form, and one `join` interleaves them with the per-model
    pieces in between (`_pieces`), placed by slice assignment: no Python-level work per value. 1000 rows × 10
    classes take 1.2 ms, against 2.0-2.3 ms for a `%` template per row.
    """
    heads, separators = _pieces(tuple(classes))
    rows, n = probabilities.shape
    flat = np.ascontiguousarray(probabilities, dtype=np.float32).reshape(-1)
    values = orjson.dumps(flat, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",") if rows else []
    width = 2 * n + 1  # a row: head + first value, then a separator and a value per other class, then `}},`
    parts = [b"}},"] * (rows * width)
    parts[0::width] = [heads[best] for best in probabilities.argmax(axis=1).tolist()]
    for i in range(n):
        parts[1 + 2 * i :: width] = values[i::n]
        if i:
            parts[2 * i :: width] = [separators[i - 1]] * rows
    parts[-1:] = [b"}}"] if parts else []
    return b'{"model":%b,"version":%d,"predictions":[%b]}' % (orjson.dumps(model), version, b"".join(parts))


@functools.lru_cache(maxsize=256)
def _pieces(classes: tuple[str, ...]) -> tuple[list[bytes], list[bytes]]:
    """Per top class, the start of a row up to its first value (`{"label":…,"probabilities":{"first":`); and the
    text before each other class's value (`,"label":`)."""
    keys = [orjson.dumps(label) for label in classes]
    heads = [b'{"label":' + key + b',"probabilities":{' + keys[0] + b":" for key in keys]
    return heads, [b"," + key + b":" for key in keys[1:]]


def error_answer(status: int, message: str, reason: str) -> Answer:
    return status, orjson.dumps({"error": message, "reason": reason}), [(b"content-type", JSON)]
