"""The inline lane: a lone small request runs in the HTTP process itself while every inference worker is idle.

At low load a request's two process hops (to a worker and back: pickling, two pipe writes, two wake-ups) cost
more than a small MLP's whole ONNX Runtime call, and a hand-written in-process server pays neither. So when a
request of at most `inline_max_rows` rows is the only one the HTTP process is handling and no worker has
anything outstanding, it is answered here, by the same code as in a worker (`InferenceAPI.answer`: deadline
check, ONNX Runtime call, encoding, worker metrics) on sessions opened and verified the same way (`Registry`,
parity probe included). As soon as requests overlap, they go to the workers, which batch them (worker idleness
alone would not do: a lane that answers everything keeps the workers idle, and one core does all the work):
under load the lane steps aside and costs nothing.

The lane's sessions live in a registry of its own, re-read in a thread whenever the HTTP process's registry
changes (service/models/reload.py); until it has caught up, requests go to the workers, so a version is never run
here before it was verified here. CPU only: where workers run on a GPU the lane stays off, so a request's
answer never depends on which process ran it.
"""

from __future__ import annotations

import asyncio
import logging

from bundle.session import providers_for
from service.codecs.answers import Answer
from service.core.job import Job
from service.core.settings import Settings
from service.engine.worker import InferenceAPI
from service.models.registry import Registry
from service.predictions.writer import PredictionLog

log = logging.getLogger("tabserve.inline")

KINDS = frozenset({"predict", "infer"})


class InlineLane:
    def __init__(self, settings: Settings):
        self.max_rows = settings.inline_max_rows
        self.api = InferenceAPI(settings)
        self.api.registry = Registry(
            settings.repository, "cpu", settings.max_rows_per_request, settings.default_model, sessions=True
        )
        self.api.generation = -1  # nothing loaded yet: no job is taken before the first `follow`
        self.api.prediction_log = PredictionLog.open(settings.log_policy)  # answers here are logged too
        self._loading: asyncio.Task | None = None

    @staticmethod
    def wanted(settings: Settings) -> bool:
        """On when configured and the workers run on the CPU (their provider is the lane's)."""
        return settings.inline_max_rows > 0 and providers_for(settings.device)[0] == "CPUExecutionProvider"

    def follow(self, generation: int) -> None:
        """Catch up with the HTTP process's registry in a thread (the loop never waits for a model to load)."""
        if generation == self.api.generation or (self._loading is not None and not self._loading.done()):
            return
        self._loading = asyncio.get_running_loop().create_task(self._load(generation), name="tabserve-inline-load")

    async def _load(self, generation: int) -> None:
        try:
            await asyncio.to_thread(self._refresh)
        except Exception:  # the workers still serve everything; the next change tries again
            log.exception("the inline lane could not read the repository")
            return
        self.api.generation = generation

    def _refresh(self) -> None:
        self.api.registry.refresh()
        self.api.count_from_zero()

    def takes(self, job: Job, alone: bool) -> bool:
        """Whether to run `job` here: it is small, the only request in this HTTP process, no worker holds anything
        from it (`alone`), and the lane has verified the job's version."""
        if not (alone and job.kind in KINDS and job.features is not None and len(job.features) <= self.max_rows):
            return False
        entry = self.api.registry.models.get(job.model, {}).get(job.version)
        return job.generation == self.api.generation and entry is not None and entry.state == "READY"

    def answer(self, job: Job) -> Answer:
        return self.api.answer([job], [0.0])[0]
