"""Server settings: environment variables `TABSERVE_*`, each mirrored by a `python -m service` flag."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bundle import cpus
from service.core import logs
from service.core.log_policy import LogPolicy


def default_http_processes() -> int:
    """One HTTP process per CPU this process may use (its affinity and its container's CPU quota), at most eight.

    An HTTP process parses, validates and answers its requests on one core, and with a single one that core
    caps the server while the workers wait: on the 2-core development machine two HTTP processes served 1.4×
    the single-row requests of one at c=16 and 2.4× the 1000-row ones (docs/performance.md).
    """
    return max(1, min(8, cpus.usable()))


def default_workers(device: str) -> int:
    """Half the CPUs this process may use (at least 1, at most 8); 1 (per GPU) where the workers run on CUDA.

    Bulk requests are bound by the workers: a 1000-row JSON request cost a worker about as much CPU as the HTTP
    process that decoded it (3.2-3.4 ms against 3.6 ms here; docs/serving.md, Sizing), and a worker runs ONNX Runtime on
    one thread. One worker, whatever the machine, would cap a many-core server's bulk inference at one core; one
    per two CPUs keeps both sides of a bulk request about equally served. On this 2-core development machine
    that is 1, the count every figure in docs/performance.md was measured with. On CUDA each worker would hold a CUDA
    context of its own, and one per device keeps the GPU busy.
    """
    if device != "cpu":
        import onnxruntime as ort  # here only: reading settings should not load ONNX Runtime for a CPU server

        if "CUDAExecutionProvider" in ort.get_available_providers():
            return 1
    return max(1, min(8, cpus.usable() // 2))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TABSERVE_", extra="forbid", use_attribute_docstrings=True, populate_by_name=True
    )

    host: str = "127.0.0.1"
    """Interface to listen on; the container sets 0.0.0.0."""

    port: int = Field(8000, ge=1024, le=65535, validation_alias=AliasChoices("TABSERVE_PORT", "PORT"))
    """Port to listen on; `PORT` (set by KServe and Knative) is used when TABSERVE_PORT is not set."""

    health_port: int = Field(0, ge=0, le=65535)
    """A second port that answers only `/v2/health/live`, `/v2/health/ready` and `/metrics`: orchestrator probes
    there never queue behind client connections, however many a storm opens. 0: none (probes use `port`)."""

    grpc_port: int = Field(8001, ge=0, le=65535)
    """The Open Inference Protocol over gRPC (`tritonclient.grpc`, KServe `grpc-v2`), on `host`; 8001 is Triton's
    convention. 0: no gRPC. Every HTTP process listens on it (SO_REUSEPORT), so another server started on the
    same port by the same user would share its traffic: give each server its own."""

    repository: Path = Path("models")
    """The model repository: `<repository>/<name>/<version>/` as published by `python -m training train`."""

    default_model: str | None = None
    """Model answered by `POST /predict`; default: the only model, else `iris` if present, else the first by name."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`auto` uses CUDAExecutionProvider when onnxruntime-gpu sees a GPU, else the CPU."""

    max_batch_rows: int = Field(1024, ge=1)
    """Most rows combined into one ONNX Runtime call; larger requests are still served, in one call each."""

    max_batch_delay_ms: float = Field(0.0, ge=0.0, le=1000.0)
    """How long a batch may wait for more requests once one is waiting. 0: take what is queued, never wait."""

    workers: int | None = Field(None, ge=1, le=64)
    """Inference worker processes (per GPU on CUDA); each holds its own ONNX Runtime sessions of every model.
    Default: one per two CPUs this process may use (at least 1, at most 8), 1 on CUDA (docs/serving.md, Sizing)."""

    http_processes: int | None = Field(None, ge=1, le=64)
    """HTTP processes (LitServe's API servers) sharing the listening sockets, each with its own pipes to every
    worker; default: one per CPU this process may use (its cores, lowered to its container's CPU quota; at most 8),
    and 1 in `explicit` model control mode.
    Admission-control budgets are split among them."""

    inline_max_rows: int = Field(16, ge=0)
    """Requests of at most this many rows are run by the HTTP process itself while no worker has work outstanding
    (service/dataplane/inline.py): two process hops cost more than a small model. CPU only; 0: every request goes to a
    worker."""

    max_rows_per_request: int = Field(100_000, ge=1)
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024)

    max_queue_rows: int = Field(16_384, ge=1)
    """Admission control: rows that may wait at each inference worker (queued or running). A request that would
    pass it is refused at once with 503 + Retry-After (a worker with nothing queued takes any request)."""

    max_queue_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    """Admission control: bytes of requests that may wait at each inference worker (decoded features, or large
    raw bodies the worker decodes). Past it, 503 + Retry-After (a worker with nothing queued takes any request)."""

    max_pending_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    """Admission control: bytes of request bodies being read at once, reserved from Content-Length before the
    body is read; beyond it, 503 + Retry-After. One body of any allowed size is always let in when none is."""

    max_queue_time_ms: float = Field(5000.0, gt=0.0)
    """Deadline of every request, from its arrival: past it before inference, it is never run (503
    deadline_exceeded). `X-Request-Timeout-Ms` or OIP `parameters.timeout` (µs) may shorten it per request."""

    header_timeout: float = Field(10.0, gt=0.0, le=300.0)
    """Seconds a connection may take to send a request's headers (or stay silent before its first request);
    then it is closed. Stops clients that trickle bytes from holding connections forever."""

    body_timeout: float = Field(60.0, gt=0.0)
    """Seconds a request's body may take to arrive once its headers are in; then the connection is closed."""

    lingering_close_seconds: float = Field(2.0, ge=0.0, le=60.0)
    """How long a connection answered before its body was read (a 503, 413 or 401 refusal) keeps reading and
    discarding what the client still sends before it closes, so the client reads the answer instead of a reset
    (nginx's `lingering_time`); at most 16 MiB are discarded. 0 closes at once (resets then lose refusals)."""

    max_header_bytes: int = Field(32 * 1024, ge=1024)
    """Most bytes of request line and headers; more is answered 431 and the connection closed."""

    api_key: SecretStr | None = None
    """When set, every route except liveness requires `Authorization: Bearer <key>` or `X-API-Key: <key>`."""

    management_key: SecretStr | None = None
    """When set, the routes that change what is served (`POST /v2/repository/models/{name}/load|unload`) need
    this key (same headers as the API key) and refuse the API key; it also passes wherever the API key does."""

    model_control_mode: Literal["poll", "explicit", "none"] = "poll"
    """How the served models follow the repository (after Triton's --model-control-mode). Every mode loads
    every model present at start. `poll`: re-read the repository every poll_interval seconds; load and unload
    requests are refused. `explicit`: no polling; only `POST /v2/repository/models/{name}/load|unload` change
    what is served. `none`: what was there at start, nothing else (no polling, load and unload refused)."""

    poll_interval: float = Field(5.0, ge=0.0)
    """In `poll` mode, seconds between looks at the repository for new, removed or rolled-back versions;
    0: never look again (like `none`)."""

    drift_z: float = Field(4.0, gt=0.0)
    """A feature counts as out of range (`tabserve_feature_out_of_range_total`) when its value, standardized
    with the training mean and scale, is beyond ±drift_z."""

    metrics_dir: Path | None = None
    """Folder for the per-process metric files (emptied at start); default: a fresh temporary folder."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"

    log_format: Literal["text", "json"] = "text"
    """Server log lines on stderr: `text` for a terminal, `json` (one object a line, with trace ids while a traced
    request is handled) for a log pipeline; the images and manifests set `json` (docs/observe.md)."""

    access_log: Literal["off", "json"] = "off"
    """`json`: one line per request on stdout (REST and gRPC): request id, trace id, route, model, version, rows,
    status, reason, bytes, durations, client, process. Written by a thread; never delays a request."""

    access_log_buffer_lines: int = Field(10_000, ge=1)
    """Access-log lines a process may hold while stdout is slow; beyond them lines are dropped and counted
    (`tabserve_access_log_dropped_total`)."""

    state_dir: Path = Path(".tabserve")
    """Folder for what the server writes (the SQLite prediction log); not the model repository, which may be
    mounted read-only. Created when first needed."""

    prediction_log: str = "sqlite://"
    """Where every answered request is recorded, for feedback and retraining (docs/production-loop.md):
    `sqlite:///PATH`, `sqlite://` (the state folder's predictions.db), `postgresql://USER@HOST/DB` (shared by
    replicas) or `off`. A slow or dead database never fails or delays a request: see prediction_log_buffer_rows."""

    prediction_log_sample: str = "1"
    """Share of requests logged: `1`, `0.1`, or per model `digits=0.05,*=1` (decided by the request id)."""

    prediction_log_retention: str = "30d,10000000rows"
    """How long records are kept: an age (`30d`, `12h`), a count of predicted rows (`5000000rows`), both, or
    `none`; enforced in the background once a minute."""

    prediction_log_buffer_rows: int = Field(200_000, ge=1)
    """Rows each process may hold for the log while the database is slow or unreachable; beyond them rows are
    dropped and counted (`tabserve_prediction_log_dropped_total`), and writing resumes when the database is back."""

    rollout_alpha: float = Field(0.05, gt=0.0, lt=1.0)
    """An automatic rollout decides on accuracy when the always-valid p-value of the difference falls below this
    (a sequential test: valid however often it is looked at; docs/production-loop.md)."""

    rollout_min_labels: int = Field(200, ge=1)
    """Labelled rows each arm needs before an automatic rollout decides on accuracy."""

    rollout_max_error_increase: float = Field(0.02, ge=0.0, le=1.0)
    """An automatic rollout is rolled back, without waiting for labels, when the challenger's error rate (5xx
    other than 503) exceeds the champion's by this (after 100 requests per arm)."""

    rollout_max_p99_ratio: float = Field(1.5, ge=1.0)
    """… or when its p99 latency exceeds this × the champion's (+ 5 ms)."""

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if value != "localhost":
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ValueError(f"expected an IP address or 'localhost', got {value!r}") from None
        return value

    @field_validator("health_port", "grpc_port")
    @classmethod
    def _extra_port(cls, value: int) -> int:
        if value and value < 1024:
            raise ValueError(f"expected 0 (none) or a port from 1024 to 65535, got {value}")
        return value

    @field_validator("grpc_port")
    @classmethod
    def _grpc_port(cls, value: int, info: ValidationInfo) -> int:
        """Bound by every HTTP process with SO_REUSEPORT: on the HTTP or health port it would fail only there."""
        if value and value in (info.data.get("port"), info.data.get("health_port")):
            raise ValueError(f"port {value} is already the HTTP port or the health port")
        return value

    @field_validator("repository")
    @classmethod
    def _repository(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"{str(value)!r} is not a directory")
        return value.resolve()

    @model_validator(mode="after")
    def _log_policy(self) -> Settings:
        self.log_policy  # noqa: B018 (raises ValueError on a bad URL, rate or retention)
        return self

    @property
    def log_policy(self) -> LogPolicy:
        return LogPolicy.from_settings(
            self.prediction_log, self.state_dir, self.prediction_log_sample, self.prediction_log_retention,
            self.prediction_log_buffer_rows,
        )  # fmt: skip

    @model_validator(mode="after")
    def _workers(self) -> Settings:
        if self.workers is None:
            self.workers = default_workers(self.device)
        return self

    @model_validator(mode="after")
    def _http_processes(self) -> Settings:
        if self.http_processes is None:
            self.http_processes = 1 if self.model_control_mode == "explicit" else default_http_processes()
        elif self.model_control_mode == "explicit" and self.http_processes > 1:
            raise ValueError(
                "model_control_mode 'explicit' needs http_processes=1: a load or unload request reaches only the "
                "HTTP process that accepted it, and the others would keep serving what they had"
            )
        return self

    def configure_logging(self) -> None:
        """Called in every process (workers are spawned and do not inherit the parent's logging setup)."""
        logs.configure(self.log_level, self.log_format)
