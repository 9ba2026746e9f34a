"""Hot reload: keep the HTTP process's registry in step with the repository, without a restart.

The HTTP process decides what takes traffic. In `poll` model control mode every `poll_interval` seconds (in
`explicit` mode on demand, one model at a time: service/models/control.py) it re-reads the repository in a thread: a
new version is verified (manifest, hashes, graph, parity probe) before the swap, so until then the old version
keeps answering; a broken one is listed with its reason and never answers. Each change sets `generation` to
the moment it was seen (the system-wide monotonic clock, in ns), which every queued job carries: a worker that
sees a newer generation re-reads the repository too, and a worker asked for a version it has not loaded loads
it on the spot, so requests already queued for an old version still finish. A timestamp rather than a count
keeps this right with several HTTP processes, each with its own reloader: they may see the same changes at
different moments and in different steps, but a later look always carries a larger number.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from service.core import metrics
from service.core.errors import ServiceError
from service.models.registry import Registry

log = logging.getLogger("tabserve.reload")


class Reloader:
    def __init__(self, registry: Registry, poll_interval: float):
        self.registry = registry
        self.poll_interval = poll_interval
        self.generation = 0
        self.counts_failures = True  # only one HTTP process's reloader counts load failures (all see the same)
        self._lock: asyncio.Lock | None = None
        self._task: asyncio.Task | None = None
        self._published: set[tuple[str, int, str]] = set()

    def start(self, look_now: bool = False) -> None:
        """In the HTTP process, once its event loop runs (ASGI lifespan startup); `look_now`: poll at once rather
        than after the first interval (a replaced HTTP process, whose registry dates from the server's start)."""
        if self._lock is not None:
            return
        self._lock = asyncio.Lock()
        self._publish()
        if self.poll_interval > 0:
            self._task = asyncio.create_task(self._poll(look_now), name="tabserve-repository-poll")

    async def _poll(self, look_now: bool) -> None:
        if not look_now:
            await asyncio.sleep(self.poll_interval)
        while True:
            try:
                await self.reload()
            except Exception:  # keep polling: the next look at the repository may go better
                log.exception("reading the repository failed")
            await asyncio.sleep(self.poll_interval)

    async def reload(self, names: set[str] | None = None) -> None:
        """Re-read the repository (only the models in `names`, if given) now; returns once the new state serves."""
        if self._lock is None:
            self.start()
        async with self._lock:
            before = {(e.name, e.version): e for e in self.registry.entries()}
            served_before = self._served()
            failures = await asyncio.to_thread(self.registry.refresh, names)
            after = {(e.name, e.version): e for e in self.registry.entries()}
            if before.keys() != after.keys() or any(after[k] is not before[k] for k in after):
                self.generation = time.monotonic_ns()
            for entry in failures if self.counts_failures else ():
                metrics.model_load_failures_total.labels(entry.name, entry.reason_code).inc()
            for name, version in self._served().items():
                if served_before.get(name) != version:
                    log.info("%s: version %s now answers by default (was %s)", name, version, served_before.get(name))
            self._publish()

    def _served(self) -> dict[str, int]:
        served = {}
        for name in self.registry.models:
            with contextlib.suppress(ServiceError):
                served[name] = self.registry.get(name).version
        return served

    def _publish(self) -> None:
        """Loaded versions, their class priors, and which version answers by default, as gauges."""
        ready = {(e.name, e.version, e.provider): e for e in self.registry.entries() if e.state == "READY"}
        for name, version, provider in self._published - ready.keys():
            metrics.model_info.labels(name, str(version), provider).set(0)
        for (name, version, provider), entry in ready.items():
            metrics.model_info.labels(name, str(version), provider).set(1)
            for label, share in entry.manifest.class_prior.items():
                metrics.class_prior.labels(name, str(version), label).set(share)
            for counter in metrics.FEEDBACK_SCORES:  # from 0 (not from the first label): rate() sees the first ones
                counter.labels(name, str(version))
            if "accuracy" in entry.manifest.metrics:  # what live accuracy is compared with (deploy/prometheus)
                metrics.offline_accuracy.labels(name, str(version)).set(entry.manifest.metrics["accuracy"])
                metrics.offline_test_rows.labels(name, str(version)).set(entry.manifest.dataset.split.get("test", 0))
        self._published = set(ready)
        served = self._served()
        for name in self.registry.models:
            metrics.served_version.labels(name).set(served.get(name, 0))
