"""A `Job`'s raw body decoded and validated, whichever protocol it came in: simple API, explain or OIP infer.

Small bodies are decoded in the HTTP process (service/rest/fastpath.py), large ones by the worker
(service/engine/worker.py): the same code and messages either way.
"""

from __future__ import annotations

from dataclasses import replace

from service.codecs import oip
from service.codecs.explain import decode_explain
from service.codecs.instances import decode_instances
from service.codecs.spec import InputSpec
from service.core import deadlines
from service.core.job import Job


def decode_job(job: Job, spec: InputSpec) -> Job:
    """The job with its body decoded and validated (a `ServiceError` naming the problem if it is bad), in the HTTP
    process for small bodies and in the worker for large ones: the same code and messages either way."""
    if job.kind == "predict":
        return job._replace(features=decode_instances(job.body, spec), body=None)
    if job.kind == "explain":
        features, target = decode_explain(job.body, spec)
        return job._replace(features=features, target=target, body=None)
    infer = oip.decode_infer(job.body, job.header_length, spec)
    if infer.id is None:
        infer = replace(infer, id=job.request_id)
    deadline = deadlines.shorten(job.deadline, job.arrival, infer.timeout_us)
    return job._replace(features=infer.features, infer=infer, deadline=deadline, body=None)
