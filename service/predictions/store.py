"""The prediction log's database: SQLite (embedded, WAL) or PostgreSQL (shared by replicas), one schema for both.

A record is one answered request for one model version: its rows' features as validated and their probabilities
(float32, little-endian, rows × n), the predicted labels (JSON), the protocol and the time. One record per request
rather than per row: a 1000-row request is one insert, not a thousand, which is what keeps the log within the cost
bar at bulk throughput (docs/production-loop.md); `rows` and the row's position give every row its index. Labels
that arrive later are `feedback` records, one per prediction record they label, with the scores they earned
(correct rows, log-loss and Brier sums), so live quality per version is one `SUM` away.

Drivers: the standard library's sqlite3 and psycopg 3. SQL is written once with `?` placeholders.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SQLITE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS predictions (
        id INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL, model TEXT NOT NULL, version INTEGER NOT NULL,
        shadow INTEGER NOT NULL, protocol TEXT NOT NULL, predicted_at REAL NOT NULL, rows INTEGER NOT NULL,
        features BLOB NOT NULL, probabilities BLOB NOT NULL, labels TEXT NOT NULL,
        UNIQUE (request_id, model, version))""",
    """CREATE TABLE IF NOT EXISTS versions (
        model TEXT NOT NULL, version INTEGER NOT NULL, features TEXT NOT NULL, classes TEXT NOT NULL,
        PRIMARY KEY (model, version))""",
    """CREATE TABLE IF NOT EXISTS feedback (
        request_id TEXT NOT NULL, model TEXT NOT NULL, version INTEGER NOT NULL, shadow INTEGER NOT NULL,
        labels TEXT NOT NULL, predicted_at REAL NOT NULL, received_at REAL NOT NULL, labelled INTEGER NOT NULL,
        correct INTEGER NOT NULL, log_loss REAL NOT NULL, brier REAL NOT NULL,
        PRIMARY KEY (request_id, model, version))""",
    "CREATE TABLE IF NOT EXISTS chores (name TEXT PRIMARY KEY, done_at REAL NOT NULL)",
    """CREATE TABLE IF NOT EXISTS rollouts (
        id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, champion INTEGER NOT NULL,
        challenger INTEGER NOT NULL, mode TEXT NOT NULL, percent REAL NOT NULL, auto INTEGER NOT NULL,
        state TEXT NOT NULL, started_at REAL NOT NULL, decided_at REAL, reason TEXT, evidence TEXT)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS rollouts_one_running ON rollouts (model) WHERE state = 'running'",
    """CREATE TABLE IF NOT EXISTS rollout_arms (
        rollout_id INTEGER NOT NULL, process TEXT NOT NULL, version INTEGER NOT NULL, requests INTEGER NOT NULL,
        errors INTEGER NOT NULL, latency TEXT NOT NULL, PRIMARY KEY (rollout_id, process, version))""",
    "CREATE INDEX IF NOT EXISTS predictions_time ON predictions (predicted_at)",
    "CREATE INDEX IF NOT EXISTS feedback_version_predicted ON feedback (model, version, predicted_at)",
)  # fmt: skip
POSTGRES_SCHEMA = tuple(
    ddl.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
    .replace("BLOB", "BYTEA")
    .replace("REAL", "DOUBLE PRECISION")
    for ddl in SQLITE_SCHEMA
)
PREDICTION_COLUMNS = "request_id, model, version, shadow, protocol, predicted_at, rows, features, probabilities, labels"
FEEDBACK_COLUMNS = (
    "request_id, model, version, shadow, labels, predicted_at, received_at, labelled, correct, log_loss, brier"
)
IN_CHUNK = 500
"""Request ids per `IN (...)` lookup: well under SQLite's 32,766 parameters."""


class StoreError(Exception):
    """The database could not be reached or written (locked, gone, full): transient, worth retrying."""


@dataclass(frozen=True)
class Logged:
    """One prediction record as read back: what a label is checked against and scored with."""

    request_id: str
    version: int
    shadow: bool
    rows: int
    probabilities: np.ndarray  # float32 [rows, classes]
    predicted_at: float


class Store:
    """A connection to the log's database. Not thread-safe: each thread that uses the log opens its own."""

    def __init__(self, kind: str, target: str, busy_seconds: float = 5.0):
        self.kind = kind
        if kind == "sqlite":
            try:
                Path(target).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"sqlite {target}: {e}") from e
            self.errors: tuple[type[Exception], ...] = (sqlite3.OperationalError, sqlite3.DatabaseError)
            try:
                self.db = sqlite3.connect(target, timeout=busy_seconds, isolation_level=None, check_same_thread=False)
                # 64 KiB pages, for a new file: a 1000-row record (256 kB of features) then spans 5 pages instead
                # of 70 overflow pages, and the log costs a third of the CPU (1.0 → 0.38 ms per such record here).
                self.db.execute("PRAGMA page_size=65536")
                self.db.execute("PRAGMA journal_mode=WAL")  # readers (feedback) never wait for the writers
                self.db.execute("PRAGMA synchronous=NORMAL")  # durable across a crash of the process, not of power
            except self.errors as e:
                raise StoreError(f"sqlite {target}: {e}") from e
            schema = SQLITE_SCHEMA
        else:
            import psycopg  # only where PostgreSQL is configured

            self.errors = (psycopg.OperationalError, psycopg.InterfaceError)
            try:
                self.db = psycopg.connect(target, autocommit=True, connect_timeout=max(1, int(busy_seconds)))
            except self.errors as e:
                raise StoreError(f"postgresql: {e}") from e
            schema = POSTGRES_SCHEMA
        self._create(schema)

    def _create(self, schema: Sequence[str]) -> None:
        try:
            with self.transaction() as cursor:
                if self.kind == "postgresql":  # one process at a time: concurrent IF NOT EXISTS can still collide
                    cursor.execute("SELECT pg_advisory_xact_lock(7411)")
                for ddl in schema:
                    cursor.execute(ddl)
        except StoreError:
            raise
        except Exception as e:  # a database that refuses the schema: retried like an unreachable one
            raise StoreError(f"creating the schema: {e}") from e

    def _sql(self, text: str) -> str:
        return text if self.kind == "sqlite" else text.replace("?", "%s")

    def transaction(self):
        return _Transaction(self)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.db.close()

    # Writing (the log's writer thread)

    def insert(self, predictions: list[tuple], versions: list[tuple]) -> None:
        """Prediction records and the feature and class names of versions not seen before, in one transaction.
        A request id already logged for that version (a client's retry with the same X-Request-ID) keeps its first
        record."""
        marks = ", ".join("?" * 10)
        with self.transaction() as cursor:
            if versions:
                cursor.executemany(
                    self._sql("INSERT INTO versions VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING"), versions
                )
            cursor.executemany(
                self._sql(f"INSERT INTO predictions ({PREDICTION_COLUMNS}) VALUES ({marks}) ON CONFLICT DO NOTHING"),
                predictions,
            )

    def enforce_retention(self, max_age: float | None, max_rows: int | None, every: float) -> bool:
        """Delete records past the age or beyond the newest `max_rows` predicted rows (feedback with them), at most
        once per `every` seconds across every process and replica sharing the database. True when this one did."""
        now = time.time()
        with self.transaction() as cursor:
            claim = "INSERT INTO chores VALUES ('retention', ?) ON CONFLICT (name) DO UPDATE SET done_at = ? "
            cursor.execute(self._sql(claim + "WHERE chores.done_at < ?"), (now, now, now - every))
            if cursor.rowcount == 0:
                return False
            age_cutoff = now - max_age if max_age else float("-inf")
            rows_cutoff = float("-inf")  # the newest record beyond the newest `max_rows` rows: it and older go
            if max_rows:
                cursor.execute(
                    self._sql(
                        "SELECT predicted_at FROM (SELECT predicted_at, SUM(rows) OVER (ORDER BY predicted_at DESC, id"
                        " DESC) AS total FROM predictions) AS newest WHERE total > ? ORDER BY predicted_at DESC LIMIT 1"
                    ),
                    (max_rows,),
                )
                row = cursor.fetchone()
                rows_cutoff = row[0] if row is not None else rows_cutoff
            for table in ("predictions", "feedback"):
                cursor.execute(
                    self._sql(f"DELETE FROM {table} WHERE predicted_at < ? OR predicted_at <= ?"),
                    (age_cutoff, rows_cutoff),
                )
        return True

    # Reading (feedback, retraining)

    def logged(self, model: str, request_ids: Iterable[str]) -> dict[str, list[Logged]]:
        """Every record of these requests for `model` (the answer the client got, and a shadow's), by request id."""
        found: dict[str, list[Logged]] = {}
        query = "SELECT request_id, version, shadow, rows, probabilities, predicted_at FROM predictions WHERE model = ?"
        for request_id, version, shadow, rows, blob, predicted_at in self._by_request(query, model, request_ids):
            probabilities = np.frombuffer(bytes(blob), dtype="<f4").reshape(rows, -1)
            entry = Logged(request_id, version, bool(shadow), rows, probabilities, predicted_at)
            found.setdefault(request_id, []).append(entry)
        return found

    def _by_request(self, query: str, model: str, request_ids: Iterable[str]) -> list[tuple]:
        """The rows of `query` (with `model = ?`) for these request ids, looked up IN_CHUNK at a time."""
        ids, rows = list(request_ids), []
        with self.transaction() as cursor:
            for start in range(0, len(ids), IN_CHUNK):
                chunk = ids[start : start + IN_CHUNK]
                marks = ", ".join("?" * len(chunk))
                cursor.execute(self._sql(f"{query} AND request_id IN ({marks})"), (model, *chunk))
                rows += cursor.fetchall()
        return rows

    def classes(self, model: str, versions: Iterable[int]) -> dict[int, list[str]]:
        wanted = sorted(set(versions))
        if not wanted:
            return {}
        with self.transaction() as cursor:
            marks = ", ".join("?" * len(wanted))
            cursor.execute(
                self._sql(f"SELECT version, classes FROM versions WHERE model = ? AND version IN ({marks})"),
                (model, *wanted),
            )
            return {version: json.loads(classes) for version, classes in cursor.fetchall()}

    def labels_given(self, model: str, request_ids: Iterable[str]) -> dict[str, str]:
        """The labels (JSON text) already received for these requests, by request id."""
        query = "SELECT request_id, labels FROM feedback WHERE model = ? AND shadow = 0"
        return dict(self._by_request(query, model, request_ids))

    def add_feedback(self, rows: list[tuple]) -> set[tuple[str, int]]:
        """Feedback records (FEEDBACK_COLUMNS); returns the (request id, version) pairs this call stored, so a
        concurrent identical call elsewhere is not counted twice."""
        stored = set()
        marks = ", ".join("?" * 11)
        insert = self._sql(f"INSERT INTO feedback ({FEEDBACK_COLUMNS}) VALUES ({marks}) ON CONFLICT DO NOTHING")
        with self.transaction() as cursor:
            for row in rows:
                cursor.execute(insert, row)
                if cursor.rowcount:
                    stored.add((row[0], row[2]))
        return stored

    def labelled(self, model: str, since: float) -> list[tuple[int, int, bytes, str]]:
        """(version, rows, features, labels JSON) of the client's answers labelled since `since` (retraining)."""
        with self.transaction() as cursor:
            cursor.execute(
                self._sql(
                    "SELECT p.version, p.rows, p.features, f.labels FROM feedback AS f JOIN predictions AS p"
                    " ON p.request_id = f.request_id AND p.model = f.model AND p.version = f.version"
                    " WHERE f.model = ? AND f.shadow = 0 AND f.received_at >= ? ORDER BY f.received_at"
                ),
                (model, since),
            )
            return [(version, rows, bytes(blob), labels) for version, rows, blob, labels in cursor.fetchall()]

    def features_of(self, model: str) -> dict[int, list[str]]:
        with self.transaction() as cursor:
            cursor.execute(self._sql("SELECT version, features FROM versions WHERE model = ?"), (model,))
            return {version: json.loads(names) for version, names in cursor.fetchall()}

    def count(self, table: str) -> int:
        with self.transaction() as cursor:
            cursor.execute(f"SELECT COUNT(*) FROM {table}")
            return int(cursor.fetchone()[0])


class _Transaction:
    """`with store.transaction() as cursor`: BEGIN … COMMIT (ROLLBACK on error); driver errors → StoreError."""

    def __init__(self, store: Store):
        self.store = store

    def __enter__(self):
        try:
            self.cursor = self.store.db.cursor()
            self.cursor.execute("BEGIN")
        except self.store.errors as e:
            raise StoreError(str(e)) from e
        return self.cursor

    def __exit__(self, kind, error, traceback) -> bool:
        try:
            self.cursor.execute("ROLLBACK" if kind else "COMMIT")
        except self.store.errors as e:
            if kind is None:
                raise StoreError(str(e)) from e
        finally:
            self.cursor.close()
        if kind is not None and issubclass(kind, self.store.errors):
            raise StoreError(str(error)) from error
        return False
