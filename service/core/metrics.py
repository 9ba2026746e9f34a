"""Prometheus metrics, correct across every server process (the HTTP process and the inference workers).

prometheus-client's multiprocess mode keeps each process's values in memory-mapped files under one folder
and sums them at scrape time. The folder must be set before prometheus_client is first imported
(`service.cli.prepare_metrics_dir`; spawned workers inherit the environment variable), and each scrape
builds a fresh registry over it (`render`). Label values are bounded: model names and versions from the repository,
class labels and feature names from manifests, fixed reason codes — never raw input.

What the HTTP process records: requests, their latency, in-flight count and rejections, and which versions
take traffic (service/models/reload.py). What the workers record: queue and inference time, rows per ONNX Runtime
call, the predicted class mix, and out-of-range features (drift).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.openmetrics import exposition as openmetrics_exposition

from bundle.manifest import Manifest
from service.core import exemplars

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
)  # fmt: skip
"""Seconds: a single row answers in well under a millisecond, a 100,000-row request takes about a second."""

ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536)
"""Rows per ONNX Runtime call: powers of two up to the default max batch, then coarser for huge requests."""

requests_total = Counter(
    "tabserve_requests_total",
    "Prediction requests answered, by model, version, endpoint (predict: simple JSON, infer: Open Inference "
    "Protocol, grpc_infer: its gRPC ModelInfer, explain: explanations) and HTTP status code (for gRPC, the status "
    "the same error gets over REST; 499: the call was cancelled). model and version are empty when the request "
    "named no known model.",
    ["model", "version", "endpoint", "code"],
)
request_duration_seconds = Histogram(
    "tabserve_request_duration_seconds",
    "Time from the request's arrival in the HTTP process to its answer.",
    ["model", "endpoint"],
    buckets=LATENCY_BUCKETS,
)
requests_in_flight = Gauge(
    "tabserve_requests_in_flight", "Prediction requests received and not yet answered.", multiprocess_mode="livesum"
)
queue_duration_seconds = Histogram(
    "tabserve_queue_duration_seconds",
    "Time a validated request waited for an inference worker.",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
inference_duration_seconds = Histogram(
    "tabserve_inference_duration_seconds",
    "Time of one ONNX Runtime call (a batch of rows from one or more requests).",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
batch_rows = Histogram(
    "tabserve_batch_rows", "Rows per ONNX Runtime call.", ["model", "version"], buckets=ROW_BUCKETS
)  # fmt: skip
rows_total = Counter("tabserve_rows_total", "Rows run through the model.", ["model", "version"])
input_rejected_total = Counter(
    "tabserve_input_rejected_total",
    "Requests refused with a 4xx before reaching the model, by reason (see the `reason` field of error bodies).",
    ["model", "reason"],
)
requests_dropped_total = Counter(
    "tabserve_requests_dropped_total",
    "Requests answered without running the model, by reason: overloaded (admission control refused it), "
    "deadline_exceeded (its timeout passed before inference), cancelled (its client disconnected first), "
    "worker_unavailable (the worker holding it died, or none was running).",
    ["model", "reason"],
)
access_log_dropped_total = Counter(
    "tabserve_access_log_dropped_total",
    "Access-log lines dropped because stdout did not take them in time (the request was answered anyway).",
)
worker_restarts_total = Counter(
    "tabserve_worker_restarts_total", "Inference workers that died (crash, OOM kill, signal) and were replaced."
)
http_process_restarts_total = Counter(
    "tabserve_http_process_restarts_total", "HTTP processes that died (crash, OOM kill, signal) and were replaced."
)
model_control_requests_total = Counter(
    "tabserve_model_control_requests_total",
    "Repository load and unload requests, by action and HTTP status code (403: refused by the model control "
    "mode or for want of the management key).",
    ["action", "code"],
)
predictions_total = Counter(
    "tabserve_predictions_total",
    "Rows predicted, by predicted label: the live class mix.",
    ["model", "version", "label"],
)
feature_out_of_range_total = Counter(
    "tabserve_feature_out_of_range_total",
    "Rows whose standardized value of this feature (training mean and scale) is beyond ±TABSERVE_DRIFT_Z.",
    ["model", "version", "feature"],
)
class_prior = Gauge(
    "tabserve_class_prior",
    "Share of each class in the training split, to compare with the live class mix.",
    ["model", "version", "label"],
    multiprocess_mode="livemax",
)
model_info = Gauge(
    "tabserve_model_info",
    "1 for each model version verified and able to take traffic (0 once unloaded), with its execution provider.",
    ["model", "version", "provider"],
    multiprocess_mode="livemax",
)
served_version = Gauge(
    "tabserve_served_version",
    "The version that answers requests naming none (pinned by a rollback, else the newest READY); 0: none.",
    ["model"],
    multiprocess_mode="livemax",
)
model_load_failures_total = Counter(
    "tabserve_model_load_failures_total", "Model versions refused at load, by reason.", ["model", "reason"]
)
build_info = Gauge(
    "tabserve_build_info", "1, labelled with the tabserve version.", ["version"], multiprocess_mode="max"
)

prediction_log_rows_total = Counter(
    "tabserve_prediction_log_rows_total", "Predicted rows written to the prediction log (service/predictions)."
)
prediction_log_dropped_total = Counter(
    "tabserve_prediction_log_dropped_total",
    "Predicted rows not written to the prediction log, by reason: buffer_full (the database was slow or "
    "unreachable and the process's buffer full), unwritable (a bug, logged).",
    ["reason"],
)
prediction_log_pending_rows = Gauge(
    "tabserve_prediction_log_pending_rows",
    "Rows waiting in the processes' buffers for the prediction log's database.",
    multiprocess_mode="livesum",
)
feedback_requests_total = Counter(
    "tabserve_feedback_requests_total", "Feedback calls answered, by model and HTTP status code.", ["model", "code"]
)
feedback_rows_total = Counter(
    "tabserve_feedback_rows_total", "Predicted rows that received a label, by the version that answered them.",
    ["model", "version"],
)  # fmt: skip
feedback_correct_total = Counter(
    "tabserve_feedback_correct_total", "Labelled rows whose predicted label was right.", ["model", "version"]
)
feedback_log_loss_total = Counter(
    "tabserve_feedback_log_loss_total",
    "Sum over labelled rows of -ln(probability of the true label): ÷ feedback_rows is the live log-loss.",
    ["model", "version"],
)
feedback_brier_total = Counter(
    "tabserve_feedback_brier_total",
    "Sum over labelled rows of the Brier score (squared distance of the probabilities from the one-hot label).",
    ["model", "version"],
)
feedback_confusion_total = Counter(
    "tabserve_feedback_confusion_total",
    "Labelled rows by true label and predicted label.",
    ["model", "version", "label", "predicted"],
)
rollout_decisions_total = Counter(
    "tabserve_rollout_decisions_total",
    "Rollouts ended, by decision: promoted, rolled_back (automatic, or by hand), stopped.",
    ["model", "decision"],
)
shadow_requests_total = Counter(
    "tabserve_shadow_requests_total",
    "Requests copied to a shadow rollout's challenger, by outcome: agreed or disagreed (its labels against the "
    "answer the client got), answered (no labels to compare: binary or gRPC answers), failed, shed (no room, "
    "or too late: shadow work is the first refused under load).",
    ["model", "version", "outcome"],
)
shadow_duration_seconds = Histogram(
    "tabserve_shadow_duration_seconds",
    "Time a shadow copy took, from its submission to its answer.",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
FEEDBACK_SCORES = (feedback_rows_total, feedback_correct_total, feedback_log_loss_total, feedback_brier_total)
feedback_delay_seconds = Histogram(
    "tabserve_feedback_delay_seconds",
    "Time from a prediction to its label's arrival.",
    ["model"],
    buckets=(1, 10, 60, 300, 900, 3600, 4 * 3600, 86400, 7 * 86400, 30 * 86400),
)
offline_accuracy = Gauge(
    "tabserve_offline_accuracy",
    "Test-split accuracy of each loaded version, from its manifest, with the test split's size: what live "
    "accuracy is compared with.",
    ["model", "version"],
    multiprocess_mode="livemax",
)
offline_test_rows = Gauge(
    "tabserve_offline_test_rows", "Rows in each loaded version's test split.", ["model", "version"],
    multiprocess_mode="livemax",
)  # fmt: skip


class VersionSignals:
    """A worker's metrics for one loaded version: label children resolved once, drift bounds precomputed.

    Drift: a row's feature is out of range when |(x - mean) / scale| > z, i.e. |x - mean| > z * scale, with
    the training split's mean and scale from the manifest (the same standardization the graph applies).
    """

    def __init__(self, manifest: Manifest, drift_z: float):
        model, version = manifest.name, str(manifest.version)
        self.queue = queue_duration_seconds.labels(model, version)
        self.inference = inference_duration_seconds.labels(model, version)
        self.batch_rows = batch_rows.labels(model, version)
        self.rows = rows_total.labels(model, version)
        self.predicted = [predictions_total.labels(model, version, label) for label in manifest.classes]
        self.out_of_range = [feature_out_of_range_total.labels(model, version, f) for f in manifest.features]
        self.mean = np.asarray(manifest.scaler.mean, dtype=np.float32)
        self.bound = drift_z * np.asarray(manifest.scaler.scale, dtype=np.float32)

    def observe_call(self, rows: np.ndarray, probabilities: np.ndarray, seconds: float) -> None:
        self.inference.observe(seconds)
        self.batch_rows.observe(len(rows))
        self.rows.inc(len(rows))
        counts = np.bincount(probabilities.argmax(axis=1), minlength=len(self.predicted))
        for child, count in zip(self.predicted, counts.tolist(), strict=True):
            if count:
                child.inc(count)
        beyond = (np.abs(rows - self.mean) > self.bound).sum(axis=0)
        for index in np.flatnonzero(beyond).tolist():
            self.out_of_range[index].inc(int(beyond[index]))


FILE_PID = re.compile(r"_(\d+)\.db$")


def mark_dead_processes(folder: Path) -> None:
    """Drop the live gauges (in-flight requests, loaded models) of processes that are gone."""
    pids = {int(m.group(1)) for f in os.listdir(folder) if (m := FILE_PID.search(f))}
    for pid in pids:
        if not alive(pid):
            multiprocess.mark_process_dead(pid, str(folder))


def render(openmetrics: bool = False) -> tuple[bytes, str]:
    """The scrape: every process's values summed (a fresh registry each time, as multiprocess mode requires).

    `openmetrics` (Prometheus asks for it with exemplar storage on): the OpenMetrics format, with the exemplars
    of traced requests on the latency buckets (service/core/exemplars.py)."""
    folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    mark_dead_processes(folder)
    registry = CollectorRegistry()
    collector = multiprocess.MultiProcessCollector(registry, str(folder))
    if not openmetrics:
        return generate_latest(registry), CONTENT_TYPE_LATEST
    found = exemplars.load(folder, alive)
    with_exemplars = CollectorRegistry(auto_describe=False)
    with_exemplars.register(_Collected(list(exemplars.attach(collector.collect(), found, EXEMPLAR_LABELS))))
    return openmetrics_exposition.generate_latest(with_exemplars), openmetrics_exposition.CONTENT_TYPE_LATEST


EXEMPLAR_LABELS = {"tabserve_request_duration_seconds": ("model", "endpoint")}
"""The histograms that carry exemplars, with their label names in order (service/dataplane/telemetry.py)."""


class _Collected:
    """Metric families already collected, as a collector a registry can render."""

    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True
