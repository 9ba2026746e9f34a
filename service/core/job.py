"""The `Job`: one validated request as every front-end hands it to the data plane, and as it travels to a worker.

REST and gRPC build it (service/dataplane/gateway.py `Gateway.job`), the batching loop and the workers read it
(service/engine), the codecs decode its raw body (service/codecs/bodies.py). It lives here, below them all, so that
no front-end imports the batching engine to name it.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, NamedTuple

import numpy as np


class Job(NamedTuple):
    """One validated request as it travels to the worker: rows for one model version, and how to answer.

    A NamedTuple because every job is pickled through a pipe: tuples pickle faster than dataclasses.
    """

    kind: str  # "predict" (simple JSON), "explain" (the same body, explain.onnx) or "infer" (Open Inference Protocol)
    model: str
    version: int
    features: np.ndarray | None  # float32 [rows, n_features], validated; None until `decode_job` ran
    request_id: str
    infer: Any = None  # the decoded `oip.InferRequest` for "infer" jobs
    generation: int = 0  # of the HTTP process's registry when the job was validated (service/models/reload.py)
    arrival: float = 0.0  # time.monotonic() when the request arrived (CLOCK_MONOTONIC: the same in every process)
    deadline: float = float("inf")  # not run after this (service/core/deadlines.py)
    body: bytes | None = None  # the raw request body, until decoded (large bodies are decoded by the worker)
    header_length: str | None = None  # OIP binary extension: Inference-Header-Content-Length
    target: int | None = None  # "explain" jobs: the class index named in the body, besides the predicted class
    protocol: str = "rest"  # the front-end it came by ("rest" or "grpc"), for the prediction log
    shadow: bool = False  # a copy for a shadow rollout's challenger: logged as such, its answer sent to nobody
    trace: tuple[int, int, float] | None = None  # a sampled request's (trace_id, span_id, queued_at): tracing.py

    @property
    def rows(self) -> int:
        """Rows to run: 0 while the body is not decoded (its size is counted in `nbytes` instead)."""
        return 0 if self.features is None else len(self.features)

    @property
    def nbytes(self) -> int:
        return len(self.body) if self.features is None else self.features.nbytes

    def __reduce__(self):
        """Pickled for the pipe with its features as raw bytes: a numpy array took 8 of the 11 µs a 1-row job
        cost to pickle, and 5 µs more to unpickle in the worker."""
        fields = list(self)
        if self.features is not None:
            fields[3] = (self.features.tobytes(), self.features.shape)
            if self.infer is not None:  # it holds the same array: restored from the bytes, not pickled twice
                fields[5] = replace(self.infer, features=None)
        return _unpickle_job, tuple(fields)


def _unpickle_job(*fields) -> Job:
    job = Job(*fields)
    if job.features is None:
        return job
    data, shape = job.features
    features = np.frombuffer(data, dtype=np.float32).reshape(shape)
    infer = replace(job.infer, features=features) if job.infer is not None else None
    return job._replace(features=features, infer=infer)


def request_ids() -> Iterator[bytes]:
    """Unique ids without a syscall per request: a random prefix per process, then a counter."""
    prefix = os.urandom(8).hex()
    return (f"{prefix}{n:016x}".encode() for n in itertools.count())
