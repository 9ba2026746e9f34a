"""Feedback: true labels joined to the logged predictions they label, scored, stored and counted per version.

A call is checked whole before anything is written: every request id must be in the log for this model (404
`unknown_request`), every request gets one label per row (422 `wrong_label_count`), every label must be one of
the answering version's classes (422 `unknown_label`, naming them), and labels already received for a request
must be the same (200, counted once: retries are safe) or it is a conflict (409 `conflicting_feedback`). Then
one transaction stores a feedback record per prediction record (the client's answer, and a shadow's), and the
HTTP process counts the client's answers' scores in `tabserve_feedback_*`, exact across processes.

The database work runs on the HTTP process's database thread (service/predictions/database.py), behind a bound
on calls waiting for it: beyond it, 503 + Retry-After.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np
import orjson

from service.core import metrics
from service.core.errors import Conflict, InvalidInput, ModelNotFound, Overloaded, UnknownRequest
from service.core.schemas import Feedback
from service.predictions.database import Database
from service.predictions.store import Logged

LATE_SECONDS = 0.5
"""How long a call waits for request ids not found yet: an answer is logged up to ~50 ms after it was sent
(service/predictions/writer.py), and a label may follow its answer at once."""
LOOK_AGAIN_SECONDS = 0.05
MAX_WAITING = 64
"""Feedback calls that may wait for this process's database thread; more are refused with 503."""
EPSILON = 1e-15
"""Probabilities are clipped here for the log-loss (scikit-learn's convention): a wrong 0 costs 34.5, not ∞."""


@dataclass(frozen=True)
class Scored:
    """One prediction record's labels and what they earned."""

    record: Logged
    labels: str  # JSON text, as stored and compared
    classes: list[str]  # the answering version's
    truth: np.ndarray  # class index per labelled row
    predicted: np.ndarray  # predicted class index per labelled row
    log_loss: float
    brier: float

    def row(self, model: str, received_at: float) -> tuple:
        r = self.record
        correct = int((self.truth == self.predicted).sum())
        return (r.request_id, model, r.version, int(r.shadow), self.labels, r.predicted_at, received_at,
                len(self.truth), correct, self.log_loss, self.brier)  # fmt: skip


class FeedbackDesk:
    """Receives feedback calls for one HTTP process (service/rest/feedback.py)."""

    def __init__(self, database: Database):
        self.database = database
        self._waiting = 0

    async def receive(self, model: str, items: list[Feedback]) -> int:
        """Check, store and count `items` for `model`; returns the labelled rows matched."""
        if self.database.policy.kind == "off":
            raise ModelNotFound("feedback needs the prediction log; this server runs with TABSERVE_PREDICTION_LOG=off",
                                reason="prediction_log_off")  # fmt: skip
        _no_repeats(items)
        if self._waiting >= MAX_WAITING:
            raise Overloaded(f"{MAX_WAITING} feedback calls are already waiting for the prediction log")
        self._waiting += 1
        try:
            logged = await self._find(model, [item.request_id for item in items])
            versions = {record.version for records in logged.values() for record in records}
            classes, given = await self.database.run(
                lambda store: (store.classes(model, versions), store.labels_given(model, logged))
            )
            scored = [score(item, record, classes, index) for index, item in enumerate(items)
                      for record in logged[item.request_id]]  # fmt: skip
            fresh = [s for s in scored if _is_new(s, given, items)]
            received_at = time.time()
            stored = await self.database.run(
                lambda store: store.add_feedback([s.row(model, received_at) for s in fresh])
            )
        finally:
            self._waiting -= 1
        count([s for s in fresh if (s.record.request_id, s.record.version) in stored], model, received_at)
        return sum(len(s.truth) for s in scored if not s.record.shadow)

    async def _find(self, model: str, request_ids: list[str]) -> dict[str, list[Logged]]:
        """The log's records of every request id, waiting up to LATE_SECONDS for those still being written."""
        found = await self.database.run(lambda store: store.logged(model, request_ids))
        deadline = time.monotonic() + LATE_SECONDS
        while (missing := [i for i in request_ids if i not in found]) and time.monotonic() < deadline:
            await asyncio.sleep(LOOK_AGAIN_SECONDS)
            found.update(await self.database.run(lambda store, missing=missing: store.logged(model, missing)))
        if missing:
            where = "request_id" if len(request_ids) == 1 else f"feedback[{request_ids.index(missing[0])}].request_id"
            raise UnknownRequest(
                f"request {missing[0]!r} is not in the prediction log of model {model!r} (never answered by it, not "
                "sampled, or past retention)", field=where, got=missing[0],
            )  # fmt: skip
        return found


def _no_repeats(items: list[Feedback]) -> None:
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        if item.request_id in seen:
            raise InvalidInput(
                f"request {item.request_id!r} appears twice (feedback[{seen[item.request_id]}] and feedback[{index}])",
                reason="duplicate_request", field=f"feedback[{index}].request_id",
            )  # fmt: skip
        seen[item.request_id] = index


def score(item: Feedback, record: Logged, classes: dict[int, list[str]], index: int) -> Scored:
    """Check `item`'s labels against one prediction record and score them (log-loss, Brier, correct rows)."""
    where = "labels" if index == 0 else f"feedback[{index}].labels"
    if len(item.labels) != record.rows:
        raise InvalidInput(f"request {item.request_id!r} predicted {record.rows} row(s); got {len(item.labels)} "
                           "label(s) (one per row, null to skip one)", reason="wrong_label_count", field=where,
                           expected=record.rows, got=len(item.labels))  # fmt: skip
    names = classes.get(record.version, [])
    position = {name: i for i, name in enumerate(names)}
    rows, truth = [], []
    for row, label in enumerate(item.labels):
        if label is None:
            continue
        text = label if isinstance(label, str) else str(label)
        if text not in position:
            raise InvalidInput(f"label {label!r} (row {row}) is not a class of version {record.version}; "
                               f"classes: {names}", reason="unknown_label", field=f"{where}[{row}]",
                               expected=names, got=label)  # fmt: skip
        rows.append(row)
        truth.append(position[text])
    probabilities = record.probabilities[rows].astype(np.float64)
    truth_index = np.asarray(truth, dtype=np.int64)
    picked = probabilities[np.arange(len(rows)), truth_index] if rows else np.zeros(0)
    one_hot = np.zeros_like(probabilities)
    one_hot[np.arange(len(rows)), truth_index] = 1.0
    labels = orjson.dumps([None if v is None else (v if isinstance(v, str) else str(v)) for v in item.labels]).decode()
    return Scored(
        record, labels, names, truth_index, probabilities.argmax(axis=1) if rows else truth_index,
        float(-np.log(np.clip(picked, EPSILON, 1.0)).sum()), float(((probabilities - one_hot) ** 2).sum()),
    )  # fmt: skip


def _is_new(scored: Scored, given: dict[str, str], items: list[Feedback]) -> bool:
    """Labels received before for this request: the same → not new (a retry); different → 409."""
    before = given.get(scored.record.request_id)
    if before is None:
        return True
    if before != scored.labels:
        index = next(i for i, item in enumerate(items) if item.request_id == scored.record.request_id)
        raise Conflict(f"request {scored.record.request_id!r} already has other labels: {_short(before)}; feedback "
                       "is given once (the same labels again are accepted)", reason="conflicting_feedback",
                       field="labels" if len(items) == 1 else f"feedback[{index}].labels")  # fmt: skip
    return False


def _short(text: str) -> str:
    return text if len(text) <= 80 else text[:77] + "..."


def count(stored: list[Scored], model: str, received_at: float) -> None:
    """The client's answers' scores, per version that gave them (shadow answers are the rollout's evidence)."""
    for s in stored:
        if s.record.shadow or not len(s.truth):
            continue
        version = str(s.record.version)
        metrics.feedback_rows_total.labels(model, version).inc(len(s.truth))
        metrics.feedback_correct_total.labels(model, version).inc(int((s.truth == s.predicted).sum()))
        metrics.feedback_log_loss_total.labels(model, version).inc(s.log_loss)
        metrics.feedback_brier_total.labels(model, version).inc(s.brier)
        metrics.feedback_delay_seconds.labels(model).observe(max(0.0, received_at - s.record.predicted_at))
        pairs = np.unique(np.stack([s.truth, s.predicted]), axis=1, return_counts=True)
        for (truth, predicted), n in zip(pairs[0].T.tolist(), pairs[1].tolist(), strict=True):
            metrics.feedback_confusion_total.labels(model, version, s.classes[truth], s.classes[predicted]).inc(n)
