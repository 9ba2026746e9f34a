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
from dataclasses import dataclass

import numpy as np
from litserve.loops import BatchedLoop

from service.core.job import Job
from service.engine.links import WorkerPort

log = logging.getLogger("tabserve.batching")


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

    Requests arrive on the worker's links (service/engine/links.py) as `(link, slot, job)`. A job whose client
    has gone (its slot cancelled) or whose deadline has passed is answered without being run. LitServe calls
    this with its `request_queue`, which is our `Wiring`; tests/unit/test_batching.py runs it for real.
    """

    def __init__(self, max_batch_rows: int, max_batch_delay: float):
        super().__init__()
        self.max_batch_rows = max_batch_rows
        self.max_batch_delay = max_batch_delay

    def take(self, port: WorkerPort) -> list[tuple[int, int, Job]]:
        batch = port.get()  # blocks without polling: no CPU while idle
        deadline = time.monotonic() + self.max_batch_delay
        rows = sum(job.rows for _, _, job in batch)
        while rows < self.max_batch_rows:
            more = port.get(timeout=max(0.0, deadline - time.monotonic()))
            if not more:
                break
            batch += more
            rows += sum(job.rows for _, _, job in more)
        return batch

    def __call__(self, lit_api, device, worker_id, request_queue, transport, *args, **kwargs):
        port = request_queue.port(worker_id)
        while True:
            try:
                batch = self.take(port)
            except (EOFError, OSError):
                return  # the other ends are gone: the server is shutting down
            runnable = []
            for link, slot, job in batch:
                if (dropped := drop_reason(port, link, slot, job)) is None:
                    runnable.append((link, slot, job))
                else:
                    port.answer(link, slot, lit_api.dropped(job, dropped))
            if not runnable:
                continue
            now = time.monotonic()
            answers = lit_api.answer([job for _, _, job in runnable], [now - job.arrival for _, _, job in runnable])
            for (link, slot, _), answer in zip(runnable, answers, strict=True):
                port.answer(link, slot, answer)


def drop_reason(port: WorkerPort, link: int, slot: int, job: Job) -> str | None:
    """Why this job must not run: its client is gone (`cancelled`) or its deadline passed; None: run it."""
    if port.cancelled(link, slot):
        return "cancelled"
    if time.monotonic() > job.deadline:
        return "deadline_exceeded"
    return None
