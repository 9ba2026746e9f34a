"""Rollouts in an HTTP process: which version answers a request, the evidence, and the decision.

Every second each HTTP process saves its arms' totals to the database, reads the newest rollout of every model,
and, for a running automatic one, reads the evidence and applies `decision.decide`. A decision is claimed in the
database first (one process of one replica wins: records.conclude), then acted on: a promotion pins the
challenger in the model's `policy.json` (bundle/policy.py, the file `make rollback` writes too, so a rollback
afterwards still works), the winner appends it to the audit log (`<state_dir>/rollouts.jsonl`) and counts it.
Every process that sees a rollout end re-reads that model from the repository at once, so the promoted version
answers everywhere within about a second rather than at the next repository poll.

Routing: a request that names no version, for a model whose champion is the default version, is chosen when a hash
of `X-Rollout-Key` (else of its request id) falls in the first `percent` %: one client's traffic stays on one side.
A canary's chosen requests are answered by the challenger; a shadow's are answered by the champion and copied to
the challenger afterwards (service/dataplane/shadow.py). A challenger that became unavailable is skipped.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import json
import logging
import os
import socket
from pathlib import Path

from bundle import policy
from service.core import metrics
from service.core.settings import Settings
from service.predictions.database import Database
from service.rollouts import records
from service.rollouts.decision import ArmEvidence, Limits, decide
from service.rollouts.records import Rollout

log = logging.getLogger("tabserve.rollouts")

LOOK_SECONDS = 1.0
AUDIT_FILE = "rollouts.jsonl"


class Arm:
    """One process's counts of the answers one version gave in one rollout."""

    __slots__ = ("buckets", "errors", "requests")

    def __init__(self):
        self.requests = self.errors = 0
        self.buckets = [0] * (len(metrics.LATENCY_BUCKETS) + 1)

    def observe(self, status: int, seconds: float) -> None:
        self.requests += 1
        if status >= 500 and status != 503:  # a 503 is shed load (the server's), not the version's failure
            self.errors += 1
        self.buckets[bisect.bisect_left(metrics.LATENCY_BUCKETS, seconds)] += 1


def share(key: bytes) -> float:
    """Where `key` falls in [0, 1): the same in every process and replica."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2**64


class Rollouts:
    def __init__(self, settings: Settings, registry, reloader, database: Database):
        self.settings, self.registry, self.reloader, self.database = settings, registry, reloader, database
        self.limits = Limits(settings.rollout_alpha, settings.rollout_min_labels, settings.rollout_max_error_increase,
                             settings.rollout_max_p99_ratio)  # fmt: skip
        self.process = f"{socket.gethostname()}:{os.getpid()}"
        self.running: dict[str, Rollout] = {}
        self.arms: dict[tuple[int, int], Arm] = {}
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="tabserve-rollouts")

    def route(self, call, headers: dict) -> None:
        """For a request to the default version of a model in a rollout: the version that answers (canary) or
        the challenger that runs a copy afterwards (shadow), and the arms that count them, set on `call`."""
        model = call.model
        rollout = self.running.get(model.name)
        if rollout is None or model.version != rollout.champion:
            return
        challenger = None
        if share(headers.get(b"x-rollout-key") or call.request_id.encode()) < rollout.percent / 100:
            entry = self.registry.models.get(model.name, {}).get(rollout.challenger)
            challenger = entry if entry is not None and entry.state == "READY" else None
        if rollout.mode == "canary" and challenger is not None:
            call.model = challenger
        elif challenger is not None:
            call.shadow, call.shadow_arm = challenger, self.arm(rollout.id, challenger.version)
        call.arm = self.arm(rollout.id, call.model.version)

    def arm(self, rollout_id: int, version: int) -> Arm:
        arm = self.arms.get((rollout_id, version))
        if arm is None:
            arm = self.arms[rollout_id, version] = Arm()
        return arm

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception as e:  # the database is away, or a bug: serving goes on, the next look may go better
                log.warning("rollouts: %s", e)
            await asyncio.sleep(LOOK_SECONDS)

    async def tick(self) -> None:
        totals = {key: (a.requests, a.errors, list(a.buckets)) for key, a in self.arms.items()}

        def save_and_read(store):
            records.save_arms(store, self.process, totals)
            return records.newest_per_model(store)

        newest = await self.database.run(save_and_read)
        for name, rollout in newest.items():
            if name in self.running and rollout.state != "running":
                await self.reloader.reload({name})  # a decision elsewhere: follow it now, not at the next poll
        self.running = {name: r for name, r in newest.items() if r.state == "running"}
        for rollout in list(self.running.values()):
            if rollout.auto:
                arms = await self.database.run(lambda store, r=rollout: records.evidence(store, r))
                verdict = decide(arms[rollout.champion], arms[rollout.challenger], self.limits)
                if verdict is not None:
                    await self.conclude(rollout, *verdict, arms=arms)

    async def conclude(self, rollout: Rollout, state: str, reason: str,
                       arms: dict[int, ArmEvidence] | None = None) -> Rollout | None:  # fmt: skip
        """End `rollout` (promoted, rolled_back or stopped) if no one else did; act on it; the ended rollout."""
        arms = arms or await self.database.run(lambda store: records.evidence(store, rollout))
        evidence = records.public(rollout, arms)
        ended = await self.database.run(lambda store: records.conclude(store, rollout, state, reason, evidence))
        if ended is None:
            return None
        if state == "promoted":
            try:
                await asyncio.to_thread(pin, self.registry.root / rollout.model, rollout.challenger)
            except OSError as e:
                log.error("rollouts: %s v%d promoted, but %s could not be written: %s", rollout.model,
                          rollout.challenger, policy.POLICY_FILE, e)  # fmt: skip
        self.running.pop(rollout.model, None)
        await self.reloader.reload({rollout.model})
        metrics.rollout_decisions_total.labels(rollout.model, state).inc()
        await asyncio.to_thread(self._audit, ended, evidence)
        log.info("rollout of %s v%d against v%d: %s (%s)", rollout.model, rollout.challenger, rollout.champion,
                 state, reason)  # fmt: skip
        return ended

    def _audit(self, rollout: Rollout, evidence: dict) -> None:
        line = {"at": rollout.decided_at, "model": rollout.model, "rollout": rollout.id, "decision": rollout.state,
                "reason": rollout.reason, "champion": rollout.champion, "challenger": rollout.challenger,
                "mode": rollout.mode, "percent": rollout.percent, "auto": rollout.auto,
                "evidence": evidence}  # fmt: skip
        folder = Path(self.settings.state_dir)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / AUDIT_FILE, "a") as audit:
                audit.write(json.dumps(line) + "\n")
        except OSError as e:
            log.error("rollouts: the audit log %s could not be written: %s", folder / AUDIT_FILE, e)


def pin(model_folder: Path, version: int) -> None:
    """The promoted version answers by default from now on (policy.json, written atomically)."""
    current = policy.read(model_folder)
    policy.write(model_folder, current.model_copy(update={"pinned": version}))
