"""Explanations on the serving side: decode an explain body, shape its rows for the worker, encode the answer.

An explain body is a predict body (`{"instances": [...]}`) with an optional `"class"`: a label to explain as
well as the predicted one. The worker runs `explain.onnx` (integrated gradients from the training mean,
written at training: training/explain.py) in the same batching loop as predictions, in separate ONNX Runtime
calls. Each answer says which baseline and how many quadrature steps were used, and per explained class its
probability, the baseline's, the attributions and the completeness error (Σ attributions − (p − p_baseline)),
so a caller can see how exact this row's explanation is.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from bundle.manifest import Manifest
from service.codecs.instances import decode_instances
from service.codecs.spec import InputSpec, parse_json
from service.core.errors import Conflict, InvalidInput, describe

CLASS_FIELD = "class"
FIELDS = frozenset({"instances", CLASS_FIELD})
PREDICTED = -1
"""The explain graph's target for "the predicted class"."""
ROWS_PER_CALL = 64
"""Request rows per explain call: each row becomes `steps` path points (32 for most models), so this keeps one
call's intermediate tensors to a few MB while still running many rows as one matmul per layer."""


def decode_explain(body: bytes, spec: InputSpec) -> tuple[np.ndarray, int | None]:
    """The rows (exactly as predict decodes them) and the index of the requested class, if one is named."""
    payload = parse_json(body)
    if not isinstance(payload, dict) or not (set(payload) - {"instances"}):
        return decode_instances(body, spec, payload), None
    unknown = sorted(set(payload) - FIELDS)
    if unknown:
        raise InvalidInput(
            f"unknown fields {unknown}; an explain body holds 'instances' and optionally 'class'",
            reason="unknown_field",
            field=unknown[0],
        )
    rest = {key: value for key, value in payload.items() if key != CLASS_FIELD}
    return decode_instances(body, spec, rest), class_index(payload[CLASS_FIELD], spec.classes)


def class_index(name: Any, classes: tuple[str, ...]) -> int | None:
    if name is None:
        return None
    if not isinstance(name, str):
        raise InvalidInput(
            f"class: expected a class label (string), got {describe(name)}",
            reason="wrong_type",
            field=CLASS_FIELD,
            expected=list(classes),
            got=describe(name),
        )
    if name not in classes:
        raise InvalidInput(
            f"class: unknown class {name!r}; this model's classes are {list(classes)}",
            reason="unknown_class",
            field=CLASS_FIELD,
            expected=list(classes),
            got=name,
        )
    return classes.index(name)


def require_explanation(model: str, version: int, manifest: Manifest) -> None:
    """409 for a version published before explanations existed (it has no explain.onnx)."""
    if manifest.explanation is None:
        raise Conflict(
            f"model {model!r} version {version} has no explanation graph (published before explanations existed); "
            "retrain to publish a version that has one",
            reason="no_explanation_graph",
            field="version",
            got=version,
        )


def work_rows(rows: int, target: int | None, manifest: Manifest) -> int:
    """Rows of model work in an explain request, for the queue bounds and the drain rate: each of its rows runs
    the graph over `steps` path points per class explained (a forward and a backward pass each)."""
    return rows * manifest.explanation.steps * (1 if target is None else 2)


def packed_rows(features: np.ndarray, target: int | None) -> np.ndarray:
    """The rows the worker runs for one job: each row for its predicted class, then again for the requested
    class; the target rides as a last column, so batching splits and joins explain rows like any others."""
    targets = [PREDICTED] if target is None else [PREDICTED, target]
    rows = np.concatenate([features] * len(targets)) if len(targets) > 1 else features
    column = np.repeat(np.asarray(targets, dtype=np.float32), len(features))[:, None]
    return np.hstack([rows, column])


def run_packed(session, packed: np.ndarray) -> np.ndarray:
    """Run `explain.onnx` on packed rows; per row: class index, its probability, the baseline's, attributions."""
    features = np.ascontiguousarray(packed[:, :-1])
    target = packed[:, -1].astype(np.int64)
    probabilities, index, baseline, attributions = session.run(None, {"features": features, "target": target})
    chosen = probabilities[np.arange(len(index)), index]
    return np.hstack([index[:, None].astype(np.float32), chosen[:, None], baseline[:, None], attributions])


def encode_explanations(manifest: Manifest, version: int, result: np.ndarray, requested: bool) -> bytes:
    """The answer: the method and baseline once, then per row the predicted class (and the requested one)."""
    features, classes = manifest.features, manifest.classes
    explained = [_class_explanation(row, features, classes) for row in result.tolist()]
    rows = len(explained) // 2 if requested else len(explained)
    answers = explained[:rows]
    if requested:
        answers = [{**answer, "requested": extra} for answer, extra in zip(answers, explained[rows:], strict=True)]
    return orjson.dumps(
        {
            "model": manifest.name,
            "version": version,
            "method": manifest.explanation.method,
            "steps": manifest.explanation.steps,
            "baseline": _baseline(manifest),
            "explanations": answers,
        }
    )


_BASELINES: dict[int, tuple[Manifest, orjson.Fragment]] = {}


def _baseline(manifest: Manifest) -> orjson.Fragment:
    """The answer's `baseline`, serialized once per loaded version: rebuilding it was half of encoding a 1-row
    answer of a 64-feature model (20 of 36 µs)."""
    cached = _BASELINES.get(id(manifest))
    if cached is None or cached[0] is not manifest:
        if len(_BASELINES) > 256:  # versions come and go with reloads; never let old ones pile up
            _BASELINES.clear()
        features = dict(zip(manifest.features, manifest.scaler.mean, strict=True))
        cached = manifest, orjson.Fragment(orjson.dumps({"kind": manifest.explanation.baseline, "features": features}))
        _BASELINES[id(manifest)] = cached
    return cached[1]


def _class_explanation(row: list[float], features: list[str], classes: list[str]) -> dict[str, Any]:
    index, probability, baseline, attributions = int(row[0]), row[1], row[2], row[3:]
    return {
        "label": classes[index],
        "probability": probability,
        "baseline_probability": baseline,
        "attributions": dict(zip(features, attributions, strict=True)),
        "completeness_error": sum(attributions) - (probability - baseline),
    }
