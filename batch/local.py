"""The local engine: read, score and write at once, on the CPUs this process may use, in input order.

A producer thread reads chunks and submits each one's work to a pool of `workers` threads; the caller takes the
results in submission order. At most `depth` chunks are in flight, so memory holds a few chunks whatever the
table's size. The threads run in parallel where it counts: ONNX Runtime, Parquet decoding and Arrow IPC writes
release the GIL.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
_END = object()


def ordered_map(tasks: Iterator[Callable[[], T]], workers: int, depth: int) -> Iterator[T]:
    """Run each task (pulled from `tasks` in a producer thread) on `workers` threads; yield results in order."""
    in_flight: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    with ThreadPoolExecutor(workers, thread_name_prefix="batch-score") as pool:
        producer = threading.Thread(target=_produce, args=(tasks, pool, in_flight, stop), name="batch-read")
        producer.start()
        try:
            while (item := in_flight.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item.result()
        finally:
            stop.set()
            _drain(in_flight)
            producer.join()


def _produce(tasks: Iterator[Callable[[], T]], pool: ThreadPoolExecutor, in_flight: queue.Queue, stop) -> None:
    try:
        for task in tasks:
            if not _put(in_flight, pool.submit(task), stop):
                return
        _put(in_flight, _END, stop)
    except BaseException as e:  # reading failed: the consumer raises it
        _put(in_flight, e, stop)


def _put(in_flight: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Wait for room, unless the consumer has stopped; False when it has."""
    while not stop.is_set():
        try:
            in_flight.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    if isinstance(item, Future):
        item.cancel()
    return False


def _drain(in_flight: queue.Queue) -> None:
    while True:
        try:
            item = in_flight.get_nowait()
        except queue.Empty:
            return
        if isinstance(item, Future):
            item.cancel()
