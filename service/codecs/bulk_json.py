"""Large JSON bodies of numbers straight into numpy, through simdjson: no Python object per value.

Parsing 1000 rows of 64 features with orjson, then handing the nested lists to numpy, made up two thirds of the
HTTP process's time on bulk requests (docs/performance.md); simdjson validates the same text and writes every
value into one flat C buffer. Each function here returns None for anything it cannot prove to be read exactly
as the exact path reads it: the exact path then takes the body, and says what is wrong with it if anything is.
Each thread reuses one parser for bodies up to `REUSE_BYTES` (a fresh parser per body spent more time allocating
and faulting in its buffers than parsing); a larger body gets a parser of its own, so no buffer stays at the size
of the largest body.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import orjson
import simdjson

from service.codecs.spec import InputSpec

BULK_BYTES = 4 * 1024
"""Bodies from this size try the simdjson path. Below it both paths cost the same (12 µs for one iris row); on
1000 rows of 64 features (570 kB) it took 1.6-2.0 ms where orjson and numpy took 4.6-5.1, on 10 rows 73 µs
against 93."""
REUSE_BYTES = 8 * 1024 * 1024
"""Bodies up to this size are parsed by their thread's parser, whose buffers then stay at about 2.5 times the
largest such body (8.6 MB after a 3.4 MB one): at most about 5 MB in an HTTP process, which parses bodies up to
2 MiB (service/rest/fastpath.py), and 20 MB in a worker, which parses the larger ones. On 1000 rows of 64 digits
features (340 kB) parsing and reading the values took 1.1 ms with a reused parser and 2.6 ms with a fresh one;
on 5000 rows of 64 floats (6.2 MB), 10.7 ms and 14.0 ms."""
_local = threading.local()
NUMERIC_BYTES = b"0123456789.eE+-[],: \t\r\n"
"""Every byte a JSON body of lists of numbers can hold besides its keys."""
NOT_STRUCTURE = NUMERIC_BYTES.translate(None, b"[],")
SKELETON_HEAD = b'{"instances":['.translate(None, NOT_STRUCTURE)
SKELETON_TAIL = b"]}"
"""A simple-API body of rows of numbers, with every byte but the key's, the brackets and the commas deleted, is
this head, `[` + n-1 commas + `]` per row (with a comma between rows) and this tail."""


def numbers(body: bytes, spec: InputSpec) -> np.ndarray | None:
    """A simple-API body's rows as float32 [rows, n_features], or None.

    The shape is proven from the bytes first, in one pass in C: deleting every byte but the key's, the brackets
    and the commas must leave the skeleton of `rows` lists of n values, no more, no less (so no list nests
    deeper, none is longer or shorter, and no number stands between them; with n = 1 an empty row leaves the
    same skeleton, and the count of values catches it). simdjson then validates the JSON and writes all values
    into one float64 buffer.
    """
    n = spec.n_features
    skeleton = body.translate(None, NOT_STRUCTURE)
    rows = (len(skeleton) - len(SKELETON_HEAD) - len(SKELETON_TAIL) + 1) // (n + 2)
    if not 0 < rows <= spec.max_rows or skeleton != SKELETON_HEAD + _rows_skeleton(rows, n)[1:-1] + SKELETON_TAIL:
        return None
    try:
        values = np.frombuffer(_parse(body)["instances"].as_buffer(of_type="d"), np.float64)
    except Exception:  # malformed JSON, or a number beyond float64: the exact path says which
        return None
    if values.size != rows * n:  # with n = 1, an empty row: `[[], [5]]`
        return None
    with np.errstate(over="ignore"):  # beyond float32: inf, refused below
        array = values.astype(np.float32).reshape(rows, n)
    return array if np.isfinite(array).all() else None


def infer_request(header: bytes) -> dict[str, Any] | None:
    """An Open Inference Protocol JSON header as orjson reads it, except that `inputs[0].data`, when it is a flat
    list of numbers, is already a float64 array; or None.

    Everything but the data becomes Python objects (small). Duplicate keys send the body to orjson, whose last
    one wins where simdjson's lookup takes the first. The data is flat when the header holds exactly one `[`
    more than the rest of the request written back as JSON, and rows of equally many numbers (KServe's examples
    nest them so) when `_rows_of` proves it. Both hold only without `\\u` escapes, one of which could write a `[`
    into a string that the header does not show: a header with any takes the other path.
    """
    if b"\\u" in header:
        return None
    try:
        document = _parse(header)
        request = _fields(document, keep="inputs")
        inputs = request.get("inputs")
        if not isinstance(inputs, simdjson.Array) or len(inputs) != 1 or not isinstance(inputs[0], simdjson.Object):
            return None
        tensor = _fields(inputs[0], keep="data")
        data = tensor.get("data")
        if not isinstance(data, simdjson.Array):
            return None
        values, rows = np.frombuffer(data.as_buffer(of_type="d"), np.float64), len(data)
        tensor["data"], request["inputs"] = None, [tensor]
        rest = orjson.dumps(request)
        if header.count(b"[") != rest.count(b"[") + 1 and not _rows_of(header, rest, rows, values.size):
            return None
    except Exception:  # malformed JSON, a value beyond 64 bits, true/false/null/strings in the data, ...
        return None
    tensor["data"] = values
    return request


def _rows_of(header: bytes, rest: bytes, rows: int, size: int) -> bool:
    """Whether the header's data is `rows` lists of `size / rows` numbers each (simdjson flattens any nesting).

    As for the simple API (`numbers`), with the bytes of numbers deleted: the header's skeleton must be the
    skeleton of the rest of the request (written back with `"data": null`) with the data's in place of the null.
    The rest's strings, keys and other values are the header's own, so only the data can make up the difference.
    """
    if not 0 < rows <= size or size % rows:
        return False
    skeleton, null = rest.translate(None, NOT_STRUCTURE), b'"data"null'
    if skeleton.count(null) != 1:
        return False
    data = b'"data"' + _rows_skeleton(rows, size // rows)
    return header.translate(None, NOT_STRUCTURE) == skeleton.replace(null, data)


def _rows_skeleton(rows: int, n: int) -> bytes:
    """What `rows` lists of `n` numbers leave with every byte but brackets and commas deleted."""
    return b"[" + b",".join([b"[" + b"," * (n - 1) + b"]"] * rows) + b"]"


def _parse(text: bytes) -> Any:
    """simdjson's document for `text`. Callers keep nothing from it past their return: a parser cannot be reused
    while proxies into its last document are alive (it raises, and the caller's exact path takes the body)."""
    if len(text) > REUSE_BYTES:
        return simdjson.Parser().parse(text)
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = simdjson.Parser()
    return parser.parse(text)


def _fields(document: simdjson.Object, keep: str) -> dict[str, Any]:
    """The object's fields as Python values, but `keep` as simdjson's proxy; KeyError for a duplicate key."""
    keys = list(document.keys())
    if len(set(keys)) != len(keys):
        raise KeyError("a duplicate key")
    return {key: _python(document[key]) if key != keep else document[key] for key in keys}


def _python(value: Any) -> Any:
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value
