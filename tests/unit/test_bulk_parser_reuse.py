"""service/codecs/bulk_json.py reuses one simdjson parser per thread. simdjson refuses to reuse a parser while any proxy
into its last document is alive, and bulk_json then declines every later body: still right (the exact path takes
them), but slow for good. So every way a body can be declined must let go of the document."""

import json
import threading

import numpy as np
import pytest

from service.codecs import bulk_json
from service.codecs.spec import InputSpec

SPEC = InputSpec(features=("a", "b", "c"), max_rows=5)
ROWS = json.dumps({"instances": [[1, 2, 3], [4, 5, 6]]}).encode()
FLAT = json.dumps({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]})

DECLINED = [
    b'{"instances": [[1, 2, "x"], [4, 5, 6]]}',  # a string among the values
    b'{"instances": [[1, 2, 3], [4, 5',  # cut short
    b'{"instances": [[1, 2, 3]], "instances": [[4, 5, 6]]}',  # a duplicate key
    b'{"instances": [[1, 2, 1e999], [4, 5, 6]]}',  # beyond float64
    FLAT.replace('"data": [1, 2, 3, 4, 5, 6]', '"data": [[1, 2], [3, 4, 5, 6]]').encode(),  # ragged rows
    FLAT.replace('"name": "x"', '"name": "x", "name": "y"').encode(),  # a duplicate key in a tensor
    FLAT.replace('"data": [1, 2, 3, 4, 5, 6]', '"data": [1, 2, 3, 4, 5, true]').encode(),  # a boolean
    FLAT.replace('"inputs": [', '"inputs": [7, ').encode(),  # an input that is not an object
    b'{"inputs": {"data": [1]}}',  # inputs not a list
    b"[1, 2, 3]",  # not an object at all
]


@pytest.mark.parametrize("declined", DECLINED)
def test_after_a_declined_body_the_thread_parser_still_takes_the_next(declined):
    bulk_json.numbers(declined, SPEC)
    bulk_json.infer_request(declined)
    assert np.array_equal(bulk_json.numbers(ROWS, SPEC), [[1, 2, 3], [4, 5, 6]])
    assert bulk_json.infer_request(FLAT.encode())["inputs"][0]["data"].tolist() == [1, 2, 3, 4, 5, 6]


def test_threads_parse_at_once_each_with_its_own_parser():
    results = []

    def decode_many():
        results.append(all(bulk_json.numbers(ROWS, SPEC) is not None for _ in range(300)))

    threads = [threading.Thread(target=decode_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 4


def test_bodies_up_to_the_bound_share_the_thread_parser_and_larger_ones_get_their_own(monkeypatch):
    monkeypatch.setattr(bulk_json, "REUSE_BYTES", len(ROWS) - 1)
    small = b'{"instances": [[1, 2, 3]]}'
    held = bulk_json._parse(b"[1]")  # a proxy into the thread parser's document, kept alive
    assert bulk_json.numbers(small, SPEC) is None  # the thread's parser refuses: the small body shares it
    assert bulk_json.numbers(ROWS, SPEC) is not None  # a parser of its own
    del held
    assert bulk_json.numbers(small, SPEC) is not None
