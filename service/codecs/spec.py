"""What decoding needs to know about a model (`InputSpec`), and the one JSON parser every codec reads bodies with.

Kept apart from the codecs themselves, so that each of them (simple API, bulk JSON, Open Inference Protocol,
explain) depends on the spec and none on another's module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from service.core.errors import BadRequest


@dataclass(frozen=True)
class InputSpec:
    """What decoding needs to know about a model: its features (in graph order) and the row limit."""

    features: tuple[str, ...]
    max_rows: int
    classes: tuple[str, ...] = ()  # for explain bodies that name a class (service/codecs/explain.py)
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {name: i for i, name in enumerate(self.features)})

    @property
    def n_features(self) -> int:
        return len(self.features)


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        if b"NaN" in body or b"Infinity" in body or "infinity" in str(e):
            raise BadRequest(
                "NaN and Infinity are not accepted as feature values (and are not valid JSON)", reason="non_finite"
            ) from None
        raise BadRequest(f"malformed JSON: {e}", reason="malformed_json") from None
