"""The links between the HTTP process and the workers: whole messages, large messages in both directions, a
loop that never blocks, and a worker that dies mid-stream failing only what it held."""

import asyncio
import multiprocessing as mp
import os
import pickle
import signal
import struct
import time

import numpy as np
import pytest

from service.core.errors import WorkerUnavailable
from service.engine.dispatch import Dispatcher
from service.engine.links import PIPE_BYTES, FrameReader, Wiring


def frame(item) -> bytes:
    data = pickle.dumps(item)
    return struct.pack("!i", len(data)) + data


def test_frames_are_reassembled_whether_split_whole_or_several_per_read():
    stream = frame("a") + frame(list(range(1000))) + frame({"b": 2})
    reader = FrameReader()
    items = []
    for i in range(0, len(stream), 7):  # arbitrary split points, including inside length headers
        items += reader.feed(stream[i : i + 7])
    assert items == ["a", list(range(1000)), {"b": 2}]
    assert reader.feed(b"") == [] and not reader.buffer
    assert FrameReader().feed(stream) == ["a", list(range(1000)), {"b": 2}]


def echo_worker(wiring: Wiring, stall_after: int | None = None) -> None:
    """A worker that answers every job with the job itself; with `stall_after`, stops answering after that many."""
    port = wiring.port(0)
    answered = 0
    while True:
        for link, slot, job in port.get():
            if stall_after is not None and answered >= stall_after:
                continue
            port.answer(link, slot, job)
            answered += 1


def start_worker(wiring, *args) -> mp.Process:
    process = mp.get_context("spawn").Process(target=echo_worker, args=(wiring, *args), daemon=True)
    process.start()
    return process


async def until(condition, timeout=30.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_messages_larger_than_the_pipe_go_both_ways_without_blocking_the_loop():
    """Regression: a large request must not block the event loop, and a large answer arrives in pieces."""
    wiring = Wiring(1, 1)
    big = np.ones((3 * PIPE_BYTES // 64, 16), np.float32)  # three pipes' worth

    async def main():
        dispatcher = Dispatcher(wiring, 0)
        worker = start_worker(wiring)
        try:
            await until(lambda: dispatcher.live())
            connection = dispatcher.least_loaded()
            ticks = 0
            _, future = connection.send(
                big, rows=len(big), nbytes=big.nbytes
            )  # returns at once: the rest waits in the backlog
            while not future.done():
                ticks += 1
                await asyncio.sleep(0)
            _, small = connection.send("small", rows=1, nbytes=1)
            return await future, await small, ticks, connection.rows
        finally:
            worker.kill()

    echoed, small, ticks, rows = asyncio.run(main())
    assert np.array_equal(echoed, big) and small == "small"
    assert ticks > 1  # the loop kept turning while the message crossed
    assert rows == 0  # both answered: nothing outstanding


def test_a_dead_worker_fails_what_it_held_at_once_and_its_replacement_starts_clean():
    wiring = Wiring(1, 1)

    async def main():
        dispatcher = Dispatcher(wiring, 0)
        worker = start_worker(wiring, 1)  # answers one job, then holds the rest
        await until(lambda: dispatcher.live())
        connection = dispatcher.least_loaded()
        _, answered = connection.send("first", rows=1, nbytes=1)
        assert await answered == "first"
        held = [connection.send(f"held {i}", rows=1, nbytes=1)[1] for i in range(3)]
        half = pickle.dumps("never read")
        os.write(connection.write_fd, struct.pack("!i", len(half)) + half[:5])  # a message cut by the death
        os.kill(worker.pid, signal.SIGKILL)
        started = asyncio.get_running_loop().time()
        for future in held:
            with pytest.raises(WorkerUnavailable):
                await asyncio.wait_for(future, 5)
        failed_after = asyncio.get_running_loop().time() - started
        assert not dispatcher.live() and connection.rows == 0
        with pytest.raises(WorkerUnavailable):
            dispatcher.least_loaded()
        replacement = start_worker(wiring)
        await until(lambda: dispatcher.live())
        _, after = connection.send("after", rows=1, nbytes=1)
        result = await asyncio.wait_for(after, 10)
        replacement.kill()
        return failed_after, result

    failed_after, result = asyncio.run(main())
    assert failed_after < 1.0
    assert result == "after"  # the half message was drained, not misread


def test_a_replaced_http_process_sees_neither_its_predecessors_answers_nor_its_half_written_request():
    """What the monitor does when an HTTP process dies (service/engine/links.py `Wiring`): bump its epoch; the worker
    discards the fragment, the replacement discards the answers meant for its predecessor, then they talk."""
    wiring = Wiring(1, 1)
    link = wiring.links[0][0]
    worker = start_worker(wiring)
    try:
        deadline = time.monotonic() + 30
        while not wiring.pids[0]:
            assert time.monotonic() < deadline, "the worker never announced itself"
            time.sleep(0.01)
        link.requests_writer.send_bytes(pickle.dumps((0, "for the dead")))  # slot 0: the replacement's first slot
        assert link.answers_reader.poll(10)  # answered, and never read: its reader is dead
        half = frame("cut short by the death")
        os.write(link.requests_writer.fileno(), half[:9])
        wiring.epochs[0] += 1  # the replacement starts

        async def replacement():
            dispatcher = Dispatcher(wiring, 0)
            await until(lambda: dispatcher.live())
            connection = dispatcher.least_loaded()
            slot, answer = connection.send("fresh", rows=1, nbytes=1)
            return slot, await asyncio.wait_for(answer, 10)

        assert asyncio.run(replacement()) == (0, "fresh")
    finally:
        worker.kill()
