"""Combine queued requests into ONNX Runtime calls, and a LitServe loop that never waits for nothing.

LitServe's own batched loop waits the whole `batch_timeout` even for a lone request (or busy-polls with a
timeout of 0), and one exception fails the whole batch. `NoWaitBatchedLoop` blocks until a request arrives
(no CPU while idle), drains what is already queued (plus an optional `max_batch_delay`), runs one ORT call
per model version for all of it, and answers each request on its own: an error stays with its request.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from queue import Empty
from typing import Any, NamedTuple

import numpy as np
from litserve.loops import BatchedLoop
from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError
from litserve.utils import LitAPIStatus, LoopResponseType

log = logging.getLogger("tabserve.batching")


class Job(NamedTuple):
    """One validated request as it travels to the worker: rows for one model version, and how to answer.

    A NamedTuple because every job is pickled through a pipe: tuples pickle faster than dataclasses.
    """

    kind: str  # "predict" (simple JSON) or "infer" (Open Inference Protocol)
    model: str
    version: int
    features: np.ndarray  # float32 [rows, n_features], already validated
    request_id: str
    infer: Any = None  # the decoded `oip.InferRequest` for "infer" jobs
    generation: int = 0  # of the HTTP process's registry when the job was validated (service/reload.py)

    @property
    def rows(self) -> int:
        return len(self.features)


@dataclass(frozen=True)
class Call:
    """One ONNX Runtime call: consecutive row ranges of several jobs of the same model version."""

    model: str
    version: int
    parts: list[tuple[int, int, int]]  # (job index, first row, end row)

    @property
    def rows(self) -> int:
        return sum(end - start for _, start, end in self.parts)


def plan_calls(jobs: list[Job], max_rows: int) -> list[Call]:
    """Pack jobs into as few calls as possible, at most `max_rows` rows each, one model version per call.

    A job larger than `max_rows` is split across calls, so it is served (correctly) no matter its size.
    """
    by_version: dict[tuple[str, int], list[int]] = defaultdict(list)
    for index, job in enumerate(jobs):
        by_version[(job.model, job.version)].append(index)
    calls = []
    for (model, version), indices in by_version.items():
        parts: list[tuple[int, int, int]] = []
        room = max_rows
        for index in indices:
            start, total = 0, jobs[index].rows
            while start < total:
                take = min(room, total - start)
                parts.append((index, start, start + take))
                start += take
                room -= take
                if room == 0:
                    calls.append(Call(model, version, parts))
                    parts, room = [], max_rows
        if parts:
            calls.append(Call(model, version, parts))
    return calls


def run_calls(jobs: list[Job], calls: list[Call], predict) -> list[np.ndarray | Exception]:
    """Run each call with `predict(model, version, rows)`, then reassemble every job's probabilities.

    A failing call fails only the jobs with rows in it; each job gets its array or the exception.
    """
    pieces: dict[int, list[tuple[int, np.ndarray]]] = defaultdict(list)
    failed: dict[int, Exception] = {}
    for call in calls:
        inputs = [jobs[i].features[start:end] for i, start, end in call.parts]
        try:
            outputs = predict(call.model, call.version, inputs[0] if len(inputs) == 1 else np.concatenate(inputs))
        except Exception as e:  # ORT failures are per call; keep the other calls' jobs alive
            log.exception("inference failed for %s/%s", call.model, call.version)
            for i, _, _ in call.parts:
                failed[i] = e
            continue
        offset = 0
        for i, start, end in call.parts:
            pieces[i].append((start, outputs[offset : offset + end - start]))
            offset += end - start
    results: list[np.ndarray | Exception] = []
    for i in range(len(jobs)):
        if i in failed:
            results.append(failed[i])
        else:
            parts = [p for _, p in sorted(pieces[i], key=lambda item: item[0])]
            results.append(parts[0] if len(parts) == 1 else np.concatenate(parts))
    return results


class NoWaitBatchedLoop(BatchedLoop):
    """Block for the first request, take what is queued (up to the row budget), answer each request alone.

    Relies on LitServe 0.2.19's queue item `(response_queue_id, uid, enqueued_at, payload)` and response
    tuple; `litserve` is pinned and tests/unit/test_batching.py runs this loop against LitServe's queues.
    """

    def __init__(self, max_batch_rows: int, max_batch_delay: float):
        super().__init__()
        self.max_batch_rows = max_batch_rows
        self.max_batch_delay = max_batch_delay

    def take(self, request_queue) -> Iterator[tuple[str, str, float, Job]]:
        item = request_queue.get()  # blocks without polling: no CPU while idle
        deadline = time.monotonic() + self.max_batch_delay
        rows = 0
        while True:
            if item == _SENTINEL_VALUE:
                raise _StopLoopError()
            yield item
            rows += item[3].rows
            if rows >= self.max_batch_rows:
                return
            try:
                remaining = deadline - time.monotonic()
                item = request_queue.get(timeout=remaining) if remaining > 0 else request_queue.get_nowait()
            except Empty:
                return

    def __call__(
        self,
        lit_api,
        device,
        worker_id,
        request_queue,
        transport,
        workers_setup_status,
        callback_runner,
        *args,
        **kwargs,
    ):
        while True:
            try:
                batch = list(self.take(request_queue))
            except _StopLoopError:
                return
            except (EOFError, OSError, BrokenPipeError):
                return  # the queue's owner is gone: the server is shutting down
            jobs = [payload for _, _, _, payload in batch]
            answers = lit_api.answer(jobs, [time.monotonic() - enqueued for _, _, enqueued, _ in batch])
            for (response_queue_id, uid, _, _), answer in zip(batch, answers, strict=True):
                self.put_response(transport, response_queue_id, uid, answer, LitAPIStatus.OK, LoopResponseType.REGULAR)
