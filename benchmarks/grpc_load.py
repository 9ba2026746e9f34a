"""gRPC load for `make bench`: the official client (`tritonclient.grpc.aio`), `concurrency` calls in flight for a
fixed duration, latencies measured per call.

ghz is not packaged here, so the load comes from Python, in the harness process, on the same cores as the server:
the figures include the client's own cost per call, which is higher than hey's (Go) on the REST rows.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import numpy as np
from tritonclient.grpc.aio import InferenceServerClient, InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from benchmarks.loadgen import Stats


def request(rows: np.ndarray) -> tuple[list[InferInput], list[InferRequestedOutput]]:
    """What the REST binary scenario sends: the rows as FP32, only `probabilities` back."""
    features = InferInput("features", list(rows.shape), "FP32")
    features.set_data_from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
    return [features], [InferRequestedOutput("probabilities")]


def probabilities(address: str, model: str, rows: np.ndarray) -> np.ndarray:
    """One call, for the check before the load (a fast wrong answer is not a result)."""

    async def once() -> np.ndarray:
        client = InferenceServerClient(address)
        try:
            inputs, outputs = request(rows)
            return (await client.infer(model, inputs, outputs=outputs, client_timeout=30)).as_numpy("probabilities")
        finally:
            await client.close()

    return asyncio.run(once())


def drive(address: str, model: str, rows: np.ndarray, concurrency: int, duration: float, timeout: float = 10) -> Stats:
    return asyncio.run(_drive(address, model, rows, concurrency, duration, timeout))


async def _drive(address, model, rows, concurrency, duration, timeout) -> Stats:
    client = InferenceServerClient(address)
    inputs, outputs = request(rows)
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    start = time.perf_counter()

    async def caller() -> None:
        while time.perf_counter() - start < duration:
            sent = time.perf_counter()
            try:
                await client.infer(model, inputs, outputs=outputs, client_timeout=timeout)
            except InferenceServerException as e:
                statuses[str(e.status())] += 1
                continue
            latencies.append(time.perf_counter() - sent)
            statuses["OK"] += 1

    try:
        await asyncio.gather(*(caller() for _ in range(concurrency)))
    finally:
        await client.close()
    seconds = time.perf_counter() - start
    p50, p99 = (float(v) * 1000 for v in np.percentile(latencies, [50, 99])) if latencies else (None, None)
    ok = len(latencies)
    return Stats(ok, sum(statuses.values()) - ok, seconds, len(rows), p50, p99, dict(statuses))
