"""The simple API's answer text (service/codecs/answers.py `encode_predictions`), held byte for byte to orjson writing
the same answer as dicts, the obvious encoding it replaces for speed."""

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from service.codecs.answers import encode_predictions

LABELS = st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=12, unique=True)
"""Labels with quotes, backslashes, `%`, commas, colons and non-ASCII: nothing in them may shift the values."""


def reference(model: str, version: int, classes: list[str], probabilities: np.ndarray) -> bytes:
    predictions = [
        {"label": classes[int(row.argmax())], "probabilities": dict(zip(classes, row, strict=True))}
        for row in probabilities.astype(np.float32)
    ]
    answer = {"model": model, "version": version, "predictions": predictions}
    return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)


@settings(max_examples=300, deadline=None)
@given(classes=LABELS, rows=st.integers(0, 40), seed=st.integers(0, 2**32 - 1), model=st.text(min_size=1))
def test_the_answer_is_what_orjson_writes_for_the_same_dicts(classes, rows, seed, model):
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet(np.full(len(classes), 0.2), rows).astype(np.float32)
    probabilities[rng.random(probabilities.shape) < 0.1] = 0.0  # exact zeros, and rows with ties
    assert encode_predictions(model, 7, classes, probabilities) == reference(model, 7, classes, probabilities)


def test_tiny_and_certain_values_keep_their_float32_form():
    probabilities = np.array([[1.0, 0.0, 1.5555587e-7], [1e-45, 0.5, 0.5]], dtype=np.float32)
    text = encode_predictions("m", 1, ["a", "b", "c"], probabilities)
    assert text == reference("m", 1, ["a", "b", "c"], probabilities)
    answer = orjson.loads(text)
    assert [p["label"] for p in answer["predictions"]] == ["a", "b"]
    assert np.array_equal(
        np.array([list(p["probabilities"].values()) for p in answer["predictions"]], dtype=np.float32), probabilities
    )
