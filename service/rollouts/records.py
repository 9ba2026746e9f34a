"""Rollouts in the prediction log's database: the one durable record every HTTP process and replica follows.

`rollouts` holds one row per rollout (a partial unique index allows one `running` row per model, so two replicas
cannot start two); a decision is one `UPDATE … WHERE state = 'running'`, which exactly one process can win.
`rollout_arms` holds each process's running totals per arm (requests, errors, latency buckets), upserted every
second, so the evidence is the sum over every process of every replica.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from service.core import metrics
from service.predictions.store import Store
from service.rollouts.decision import ArmEvidence, p99_ms

COLUMNS = "id, model, champion, challenger, mode, percent, auto, state, started_at, decided_at, reason, evidence"


@dataclass(frozen=True)
class Rollout:
    id: int
    model: str
    champion: int
    challenger: int
    mode: str  # "canary" or "shadow"
    percent: float
    auto: bool
    state: str  # "running", "promoted", "rolled_back", "stopped"
    started_at: float
    decided_at: float | None = None
    reason: str | None = None
    evidence: str | None = None  # JSON, as decided


def _rollout(row) -> Rollout:
    values = list(row)
    values[6] = bool(values[6])
    return Rollout(*values)


class RolloutAlreadyRunning(Exception):
    pass


def start(store: Store, model: str, champion: int, challenger: int, mode: str, percent: float, auto: bool) -> Rollout:
    with store.transaction() as cursor:
        cursor.execute(store._sql(f"SELECT {COLUMNS} FROM rollouts WHERE model = ? AND state = 'running'"), (model,))
        if cursor.fetchone() is not None:
            raise RolloutAlreadyRunning(model)
        cursor.execute(
            store._sql("INSERT INTO rollouts (model, champion, challenger, mode, percent, auto, state, started_at)"
                       " VALUES (?, ?, ?, ?, ?, ?, 'running', ?)"),
            (model, champion, challenger, mode, percent, int(auto), time.time()),
        )  # fmt: skip
    return latest(store, model)


def latest(store: Store, model: str) -> Rollout | None:
    with store.transaction() as cursor:
        cursor.execute(store._sql(f"SELECT {COLUMNS} FROM rollouts WHERE model = ? ORDER BY id DESC LIMIT 1"), (model,))
        row = cursor.fetchone()
    return _rollout(row) if row else None


def newest_per_model(store: Store) -> dict[str, Rollout]:
    with store.transaction() as cursor:
        cursor.execute(f"SELECT {COLUMNS} FROM rollouts WHERE id IN (SELECT MAX(id) FROM rollouts GROUP BY model)")
        return {r.model: r for r in map(_rollout, cursor.fetchall())}


def conclude(store: Store, rollout: Rollout, state: str, reason: str, evidence: dict) -> Rollout | None:
    """End a running rollout; None if it had already ended (another process or replica decided first)."""
    with store.transaction() as cursor:
        cursor.execute(
            store._sql("UPDATE rollouts SET state = ?, reason = ?, decided_at = ?, evidence = ? "
                       "WHERE id = ? AND state = 'running'"),
            (state, reason, time.time(), json.dumps(evidence), rollout.id),
        )  # fmt: skip
        won = cursor.rowcount == 1
    return latest(store, rollout.model) if won else None


def save_arms(store: Store, process: str, totals: dict[tuple[int, int], tuple[int, int, list[int]]]) -> None:
    """This process's running totals per (rollout id, version): requests, errors, latency bucket counts."""
    if not totals:
        return
    with store.transaction() as cursor:
        cursor.executemany(
            store._sql("INSERT INTO rollout_arms VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (rollout_id, process, version)"
                       " DO UPDATE SET requests = excluded.requests, errors = excluded.errors,"
                       " latency = excluded.latency"),
            [(rid, process, version, n, errors, json.dumps(buckets))
             for (rid, version), (n, errors, buckets) in totals.items()],
        )  # fmt: skip


def public(rollout: Rollout, arms: dict[int, ArmEvidence]) -> dict:
    """The evidence as the API shows it and the database and audit log keep it."""
    return {"champion": arms[rollout.champion].public(), "challenger": arms[rollout.challenger].public()}


def evidence(store: Store, rollout: Rollout) -> dict[int, ArmEvidence]:
    """Per arm: requests, errors and p99 over every process, and labelled rows of answers given during the rollout."""
    arms = {}
    with store.transaction() as cursor:
        for version in (rollout.champion, rollout.challenger):
            cursor.execute(
                store._sql("SELECT requests, errors, latency FROM rollout_arms WHERE rollout_id = ? AND version = ?"),
                (rollout.id, version),
            )
            requests = errors = 0
            buckets = [0] * (len(metrics.LATENCY_BUCKETS) + 1)
            for n, e, latency in cursor.fetchall():
                requests, errors = requests + n, errors + e
                buckets = [a + b for a, b in zip(buckets, json.loads(latency), strict=True)]
            cursor.execute(
                store._sql("SELECT COALESCE(SUM(labelled), 0), COALESCE(SUM(correct), 0) FROM feedback"
                           " WHERE model = ? AND version = ? AND predicted_at >= ?"),
                (rollout.model, version, rollout.started_at),
            )  # fmt: skip
            labelled, correct = cursor.fetchone()
            p99 = p99_ms(list(metrics.LATENCY_BUCKETS), buckets)
            arms[version] = ArmEvidence(version, requests, errors, p99, int(labelled), int(correct))
    return arms
