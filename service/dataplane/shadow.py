"""Shadow rollouts: a copy of a request runs on the challenger after the client has its champion's answer.

Never delays a client: the copy is made only once the answer was sent (the front-ends call `Shadows.after`),
runs as a task nobody waits for, and its failures are counted, never raised. Shed first: a copy is made only
while the least busy worker's queue is under a quarter of its bound and fewer than MAX_IN_FLIGHT copies are
out, and it must run within DEADLINE_SECONDS. The worker logs its answer as a shadow record (the feedback for
that request scores it too: the rollout's evidence), and here its labels are compared with the client's answer
(`tabserve_shadow_requests_total{outcome}`) and its time observed (`tabserve_shadow_duration_seconds`).
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson

from service.core import metrics
from service.core.job import Job

log = logging.getLogger("tabserve.shadow")

MAX_IN_FLIGHT = 64
DEADLINE_SECONDS = 1.0
QUEUE_SHARE = 4
"""A copy is made only while the least busy worker holds under 1/QUEUE_SHARE of TABSERVE_MAX_QUEUE_ROWS."""


def labels_of(body: bytes) -> list[str] | None:
    """The predicted labels of a JSON answer (simple API or Open Inference Protocol), or None."""
    if not body.startswith(b"{"):
        return None
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if "predictions" in answer:
        return [p["label"] for p in answer["predictions"]]
    outputs = [o for o in answer.get("outputs", []) if o.get("name") == "label"]
    return outputs[0].get("data") if outputs else None


class Shadows:
    def __init__(self, gateway):
        self.gateway = gateway
        self.tasks: set[asyncio.Task] = set()

    def after(self, call, status: int, body: bytes) -> None:
        """The client's answer was sent: copy the job to the shadow challenger `prepare` chose, if there is room."""
        challenger, job = call.shadow, call.job
        if challenger is None or job is None or status != 200 or job.features is None or job.kind == "explain":
            return  # an explanation is not a prediction: nothing to compare or log
        outcome = self.shed_reason(job)
        if outcome is not None:
            metrics.shadow_requests_total.labels(challenger.name, str(challenger.version), "shed").inc()
            return
        copy = job._replace(version=challenger.version, shadow=True, deadline=time.monotonic() + DEADLINE_SECONDS,
                            body=None)  # fmt: skip
        task = asyncio.get_running_loop().create_task(self._run(copy, call.shadow_arm, labels_of(body)))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def shed_reason(self, job: Job) -> str | None:
        admission = self.gateway.admission
        if len(self.tasks) >= MAX_IN_FLIGHT:
            return "too many shadow copies in flight"
        worker = self.gateway.dispatcher.least_loaded()
        if worker.rows + job.rows > admission.max_queue_rows // QUEUE_SHARE or not worker.free:
            return "the workers are busy"
        return None

    async def _run(self, job: Job, arm, baseline: list[str] | None) -> None:
        version = str(job.version)
        started = time.perf_counter()
        try:
            status, body, _ = await self.gateway.submit(job)
        except Exception as e:  # overload, a dead worker: the client never hears of it
            status, body = getattr(e, "status", 500), b""
        elapsed = time.perf_counter() - started
        if arm is not None:
            arm.observe(status, elapsed)
        if status == 503:
            outcome = "shed"
        elif status != 200:
            outcome = "failed"
        else:
            labels = labels_of(body)
            outcome = (
                "answered" if labels is None or baseline is None else "agreed" if labels == baseline else "disagreed"
            )
            metrics.shadow_duration_seconds.labels(job.model, version).observe(elapsed)
        metrics.shadow_requests_total.labels(job.model, version, outcome).inc()
