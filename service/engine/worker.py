"""The LitServe inference worker: ONNX Runtime sessions for every model version, batched calls, encoded answers.

Requests reach it already validated (the API process does that, so a bad request never joins a batch). The
worker runs the model and encodes each response body, which spreads the JSON work over both processes.
"""

from __future__ import annotations

import gc
import logging
import time

import litserve as ls
import numpy as np
import orjson

from service.codecs import explain, oip
from service.codecs.answers import JSON, Answer, encode_predictions, error_answer
from service.codecs.bodies import decode_job
from service.core import metrics, tracing
from service.core.errors import ServiceError
from service.core.job import Job
from service.core.settings import Settings
from service.engine.batching import NoWaitBatchedLoop, plan_calls, run_calls
from service.models.registry import Registry
from service.predictions.writer import PredictionLog

log = logging.getLogger("tabserve.worker")

SERVER_TIMING = "queue;dur=%.3f, inference;dur=%.3f"
"""The W3C Server-Timing header of every answer the model ran for: the queue wait and the batch's ONNX Runtime
time, in milliseconds (the access log reads them too)."""
DROPPED = {
    "cancelled": "the client disconnected before inference",
    "deadline_exceeded": "request timeout expired before inference",
}


class InferenceAPI(ls.LitAPI):
    """One LitAPI serves every model: rows of different models queue together and are split per version."""

    def __init__(self, settings: Settings):
        super().__init__(
            max_batch_size=settings.max_batch_rows,
            batch_timeout=settings.max_batch_delay_ms / 1000,
            api_path="/predict",
            loop=NoWaitBatchedLoop(settings.max_batch_rows, settings.max_batch_delay_ms / 1000),
        )
        self.settings = settings
        self.registry: Registry | None = None
        self.signals: dict[tuple[str, int], metrics.VersionSignals] = {}
        self.generation = 0  # of the HTTP process's registry that this worker has caught up with
        self.prediction_log: PredictionLog | None = None  # where answered rows are recorded (service/predictions)

    def setup(self, device) -> None:
        s = self.settings
        s.configure_logging()
        tracing.start("worker")
        self.registry = Registry.load(s.repository, s.device, s.max_rows_per_request, s.default_model, sessions=True)
        for entry in self.registry.entries():
            if entry.reason_code == "session_error":  # only workers open sessions; the rest is counted at startup
                metrics.model_load_failures_total.labels(entry.name, entry.reason_code).inc()
        self.count_from_zero()
        self.prediction_log = PredictionLog.open(s.log_policy)
        gc.freeze()  # long-lived from here on: keep full collections (and their pauses) small

    def count_from_zero(self) -> None:
        """Give every READY version its metric series, at 0, when it is loaded rather than at its first call.

        A series born during traffic starts at its first scrape: `rate()` over it is extrapolated from there, and
        two counters of one call (rows, calls) born in different scrapes made a ratio of their rates wrong for as
        long as that scrape stayed in the window. Series that exist from the start avoid both (Prometheus's own
        advice for labelled metrics), and dashboards show a new version at 0 instead of no data."""
        for entry in self.registry.entries():
            if entry.state == "READY":
                self._signals(entry)

    def decode_request(self, request):  # LitServe requires the hook; requests arrive as decoded `Job`s
        return request

    def predict(self, model: str, version: int, features: np.ndarray) -> np.ndarray:
        entry = self.registry.ensure(model, version)
        start = time.perf_counter()
        with tracing.span("onnxruntime.run", {"tabserve.model": model, "tabserve.version": version,
                                              "tabserve.rows": len(features)}):  # fmt: skip
            probabilities = entry.predict(features)
        self._signals(entry).observe_call(features, probabilities, time.perf_counter() - start)
        return probabilities

    def explain(self, model: str, version: int, packed: np.ndarray) -> np.ndarray:
        """Explanations for rows packed by `explain.packed_rows` (not counted in the class mix or drift: a row
        explained is usually a row already predicted)."""
        with tracing.span("onnxruntime.run explain", {"tabserve.model": model, "tabserve.rows": len(packed)}):
            return self.registry.ensure(model, version).explain(packed)

    def _signals(self, entry) -> metrics.VersionSignals:
        key = entry.name, entry.version
        if key not in self.signals:
            self.signals[key] = metrics.VersionSignals(entry.manifest, self.settings.drift_z)
        return self.signals[key]

    def dropped(self, job: Job, reason: str) -> Answer:
        """The answer for a job skipped without running the model (`drop_reason` in service/engine/batching.py)."""
        metrics.requests_dropped_total.labels(job.model, reason).inc()
        waited = (time.monotonic() - job.arrival) * 1000
        status, body, headers = error_answer(503, f"{DROPPED[reason]} (waited {waited:.0f} ms)", reason)
        return status, body, [*headers, (b"retry-after", b"1")]

    def follow(self, generation: int) -> None:
        """The HTTP process saw the repository change: re-read it too (between batches, nothing in flight)."""
        if generation > self.generation:
            self.registry.refresh()
            self.count_from_zero()
            self.generation = generation

    def answer(self, jobs: list[Job], queue_seconds: list[float]) -> list[Answer]:
        """One answer per job: large bodies are decoded first (a bad one is refused alone, with the same message
        the HTTP process would give), then every runnable job shares the ONNX Runtime calls."""
        self.follow(max(job.generation for job in jobs))
        with tracing.batch(jobs, time.monotonic()):
            return self._answer(jobs, queue_seconds)

    def _answer(self, jobs: list[Job], queue_seconds: list[float]) -> list[Answer]:
        answers: list[Answer | None] = [None] * len(jobs)
        runnable: list[tuple[int, Job]] = []
        for index, job in enumerate(jobs):
            try:
                job = self._decoded(job)
            except ServiceError as e:
                answers[index] = self.refused(job, e)
                continue
            if time.monotonic() > job.deadline:  # an OIP `parameters.timeout` read only now
                answers[index] = self.dropped(job, "deadline_exceeded")
                continue
            runnable.append((index, job))
        start = time.perf_counter()
        results = self.run([job for _, job in runnable])
        inference_ms = (time.perf_counter() - start) * 1000
        with tracing.span("encode answers", {"tabserve.requests": len(runnable)}):
            self._encode_all(runnable, results, answers, queue_seconds, inference_ms)
        return answers

    def _encode_all(self, runnable, results, answers, queue_seconds, inference_ms) -> None:
        """Each run job's answer, with its Server-Timing; each prediction to the log (service/predictions/)."""
        for (index, job), result in zip(runnable, results, strict=True):
            if signals := self.signals.get((job.model, job.version)):  # made by `predict` for every version it ran
                signals.queue.observe(queue_seconds[index])
            status, body, headers = self._encode(job, result)
            timing = SERVER_TIMING % (queue_seconds[index] * 1000, inference_ms)
            answers[index] = status, body, [*headers, (b"server-timing", timing.encode())]
            if self.prediction_log is not None and job.kind != "explain" and isinstance(result, np.ndarray):
                manifest = self.registry.models[job.model][job.version].manifest  # `_encode` just found it READY
                self.prediction_log.record(job, result, manifest.classes, manifest.features, job.shadow)

    def run(self, jobs: list[Job]) -> list[np.ndarray | Exception]:
        """Predictions and explanations of one batch: the same loop, separate ONNX Runtime calls (different graphs)."""
        results: list[np.ndarray | Exception | None] = [None] * len(jobs)
        explaining = [job.kind == "explain" for job in jobs]
        for wanted, max_rows, run in (
            (False, self.settings.max_batch_rows, self.predict),
            (True, explain.ROWS_PER_CALL, self.explain),
        ):
            indices = [i for i, flag in enumerate(explaining) if flag == wanted]
            group = [jobs[i] for i in indices]
            if wanted:
                group = [job._replace(features=explain.packed_rows(job.features, job.target)) for job in group]
            calls = plan_calls(group, max_rows)
            if log.isEnabledFor(logging.DEBUG):
                for call in calls:
                    requests = len({index for index, _, _ in call.parts})
                    what = "explain " if wanted else ""
                    log.debug("onnxruntime %scall %s/%s rows=%d requests=%d", what, call.model, call.version,
                              call.rows, requests)  # fmt: skip
            for i, result in zip(indices, run_calls(group, calls, run), strict=True):
                results[i] = result
        return results

    def _decoded(self, job: Job) -> Job:
        if job.features is not None:
            return job
        return decode_job(job, self.registry.ensure(job.model, job.version).spec)

    def refused(self, job: Job, error: ServiceError) -> Answer:
        """A large body that failed validation here: answered and counted as the HTTP process would have."""
        if error.status < 500:
            metrics.input_rejected_total.labels(job.model, error.reason).inc()
        return error.status, orjson.dumps(error.body()), [(b"content-type", JSON)]

    def _encode(self, job: Job, result: np.ndarray | Exception) -> Answer:
        if isinstance(result, ServiceError):  # ModelNotReady (503), a version without explain.onnx (409)
            return error_answer(result.status, result.message, result.reason)
        if isinstance(result, Exception):
            return error_answer(500, f"inference failed: {type(result).__name__}", "inference_error")
        manifest = self.registry.get(job.model, job.version).manifest
        classes = manifest.classes
        if job.kind == "predict":
            return 200, encode_predictions(job.model, job.version, classes, result), [(b"content-type", JSON)]
        if job.kind == "explain":
            body = explain.encode_explanations(manifest, job.version, result, job.target is not None)
            return 200, body, [(b"content-type", JSON)]
        body, header_length = oip.encode_infer(job.model, job.version, job.infer, result, classes)
        if header_length is None:
            return 200, body, [(b"content-type", JSON)]
        return (
            200,
            body,
            [
                (b"content-type", b"application/octet-stream"),
                (b"inference-header-content-length", str(header_length).encode()),
            ],
        )
