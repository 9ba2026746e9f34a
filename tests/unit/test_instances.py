import json

import numpy as np
import pytest

from service.errors import BadRequest, InvalidInput, PayloadTooLarge
from service.instances import InputSpec, decode_instances

SPEC = InputSpec(features=("a", "b", "c"), max_rows=5)


def decode(body):
    return decode_instances(body if isinstance(body, bytes) else json.dumps(body).encode(), SPEC)


def test_positional_rows_take_the_fast_path_and_keep_values():
    array = decode({"instances": [[1, 2.5, -3], [0, 0, 1e-3]]})
    assert array.dtype == np.float32 and array.tolist() == [[1, 2.5, -3], [0, 0, np.float32(1e-3)]]


def test_named_rows_are_put_in_feature_order():
    assert decode({"instances": [{"c": 3, "a": 1, "b": 2}]}).tolist() == [[1, 2, 3]]


@pytest.mark.parametrize(
    ("body", "error", "reason", "fragment"),
    [
        (b"[1,", BadRequest, "malformed_json", "malformed JSON"),
        (b'{"instances": [[1, NaN, 2]]}', BadRequest, "non_finite", "NaN and Infinity"),
        (b'{"instances": [[1, 1e999, 2]]}', BadRequest, "non_finite", "NaN and Infinity"),
        ([1, 2], InvalidInput, "wrong_type", "expected a JSON object"),
        ({"rows": []}, InvalidInput, "missing_field", "missing field 'instances'; got unknown fields ['rows']"),
        ({"instances": [[1, 2, 3]], "x": 1}, InvalidInput, "unknown_field", "unknown fields ['x']"),
        ({"instances": []}, InvalidInput, "empty", "empty"),
        ({"instances": [[1, 2, 3]] * 6}, PayloadTooLarge, "too_many_rows", "6 rows, the limit per request is 5"),
        ({"instances": [[1, 2, 3], [1, 2]]}, InvalidInput, "feature_count", "instances[1]: expected 3 features, got 2"),
        ({"instances": [[1, 2, "3"]]}, InvalidInput, "non_numeric", "instances[0][2] (feature 'c')"),
        ({"instances": [[1, None, 3]]}, InvalidInput, "non_numeric", "got None"),
        ({"instances": [[1, False, 3]]}, InvalidInput, "non_numeric", "got False"),
        ({"instances": [[1, 2, 1e300]]}, InvalidInput, "non_finite", "not a finite float32"),
        ({"instances": [[1, 2, 3], {"a": 1}]}, InvalidInput, "wrong_type", "all positional lists or all named"),
        ({"instances": [{"a": 1, "b": 2}]}, InvalidInput, "missing_feature", "missing features ['c']"),
        ({"instances": [{"a": 1, "b": 2, "c": 3, "d": 4}]}, InvalidInput, "unknown_feature", "unknown features ['d']"),
        ({"instances": [{"a": 1, "b": "x", "c": 3}]}, InvalidInput, "non_numeric", "instances[0]['b']"),
        ({"instances": [7]}, InvalidInput, "wrong_type", "instances[0]: expected a list of 3 numbers"),
    ],
)
def test_every_problem_is_named(body, error, reason, fragment):
    with pytest.raises(error) as raised:
        decode(body)
    assert raised.value.reason == reason and fragment in raised.value.message
    assert raised.value.body()["error"] == raised.value.message
