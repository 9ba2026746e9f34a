import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.codecs import bulk_json
from service.codecs.instances import decode_instances
from service.codecs.spec import InputSpec
from service.core.errors import BadRequest, InvalidInput, PayloadTooLarge

SPEC = InputSpec(features=("a", "b", "c"), max_rows=5)


@pytest.fixture(autouse=True, params=["bulk", "small"])
def path(request, monkeypatch):
    """Every test runs twice: with the simdjson path taking every body, and with no body large enough for it."""
    monkeypatch.setattr(bulk_json, "BULK_BYTES", 0 if request.param == "bulk" else 1 << 62)
    return request.param


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
        ({"instances": [[1, [2], 3]]}, InvalidInput, "non_numeric", "instances[0][1] (feature 'b')"),
        ({"instances": [[1, 2, 3, 4], [5, 6]]}, InvalidInput, "feature_count", "instances[0]: expected 3 features"),
        ({"instances": [[1, 2, 3], 4, [5, 6]]}, InvalidInput, "wrong_type", "instances[1]: expected a list"),
        (b'{"instances": [[1, 2, 3]], "instances": [[4]]}', InvalidInput, "feature_count", "got 1"),  # the last wins
        (b'{"instances": [[1, 2, 3]]', BadRequest, "malformed_json", "malformed JSON"),
        (b'{"instances": [[1, 2, 03]]}', BadRequest, "malformed_json", "malformed JSON"),
        (b'{"instances": [[1, 2, 1e400]]}', BadRequest, "non_finite", "NaN and Infinity"),
    ],
)
def test_every_problem_is_named(body, error, reason, fragment):
    with pytest.raises(error) as raised:
        decode(body)
    assert raised.value.reason == reason and fragment in raised.value.message
    assert raised.value.body()["error"] == raised.value.message


def test_a_large_body_of_numbers_keeps_every_value(path):
    rows = np.random.default_rng(0).normal(size=(5, 3)).round(6).tolist()
    spec = InputSpec(features=("a", "b", "c"), max_rows=5)
    body = json.dumps({"instances": rows}, indent=2).encode()  # whitespace and newlines between everything
    assert np.array_equal(decode_instances(body, spec), np.array(rows, dtype=np.float32))
    assert bulk_json.numbers(body, spec) is not None  # the bulk path does take it


def test_an_empty_row_is_refused_when_rows_hold_one_value():
    """With one feature, `[]` and `[5]` leave the same skeleton of brackets and commas: the count tells them apart."""
    with pytest.raises(InvalidInput) as raised:
        decode_instances(b'{"instances": [[], [5]]}', InputSpec(features=("a",), max_rows=5))
    assert raised.value.reason == "feature_count" and "instances[0]: expected 1 features, got 0" in raised.value.message


NUMBERS = st.one_of(st.integers(-(10**20), 10**20), st.floats(allow_nan=False, allow_infinity=False, width=64))
VALUES = st.recursive(NUMBERS, lambda inner: st.lists(inner, max_size=4), max_leaves=12)
"""Numbers and lists of them nested at any depth: every shape a body of numbers can take, right or wrong."""
ROWS = st.lists(st.lists(NUMBERS, min_size=2, max_size=4), min_size=1, max_size=5)
"""Rows of numbers, many of them the right length."""
ALMOST_ROWS = st.lists(st.one_of(NUMBERS, st.lists(st.one_of(NUMBERS, st.lists(NUMBERS, max_size=2)), max_size=4)))
"""Rows with numbers between them, or a list inside: the shapes whose commas and brackets come closest."""


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.one_of(ROWS, ALMOST_ROWS, st.lists(VALUES, max_size=6)), spaced=st.booleans())
def test_whatever_the_bulk_path_accepts_the_exact_path_decodes_the_same(rows, spaced):
    """Any nesting, raggedness, numbers between rows or values: the simdjson path takes a body only when it is
    right, and then reads the same numbers (declining costs nothing: the other paths take the body)."""
    body = json.dumps({"instances": rows}, separators=(", ", ": ") if spaced else (",", ":")).encode()
    bulk = bulk_json.numbers(body, SPEC)
    if bulk is not None:
        assert bulk.tolist() == decode_instances(body, SPEC, payload=json.loads(body)).tolist()
