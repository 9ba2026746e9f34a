"""The prediction log's database as an HTTP process uses it: one thread with its own connection, so the event loop
never waits for the database; a database that cannot be reached is a 503 with Retry-After."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from service.core.errors import Unavailable
from service.core.log_policy import LogPolicy
from service.predictions.store import Store, StoreError

T = TypeVar("T")


class Database:
    def __init__(self, policy: LogPolicy):
        self.policy = policy
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tabserve-database")
        self._store: Store | None = None

    async def run(self, work: Callable[[Store], T]) -> T:
        """`work(store)` on the database thread (connecting first, and again after a failure)."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._with_store, work)
        except StoreError as e:
            raise Unavailable(f"the prediction log's database is unavailable: {e}", reason="prediction_log_unavailable",
                              retry_after=2) from None  # fmt: skip

    def _with_store(self, work: Callable[[Store], T]) -> T:
        try:
            self._store = self._store or Store(self.policy.kind, self.policy.target)
            return work(self._store)
        except StoreError:
            if self._store is not None:
                self._store.close()
            self._store = None
            raise
