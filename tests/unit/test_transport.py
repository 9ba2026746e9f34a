"""The pipes between the HTTP process and the workers: whole messages, large messages, and no blocked loop."""

import asyncio
import multiprocessing as mp
import pickle
import struct

import numpy as np

from service.transport import PIPE_BYTES, Channel, FrameReader, Responses


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


def _answer_from_another_process(channel: Channel, uid: int, rows: int) -> None:
    channel.put((uid, (np.ones((rows, 16), np.float32), 200, "regular", 0)))


def test_an_answer_larger_than_the_pipe_reaches_its_waiting_request():
    """Regression: the event loop's fd is non-blocking, so a large answer arrives in pieces."""
    channel = Channel()
    rows = 3 * PIPE_BYTES // 64  # three pipes' worth

    async def main():
        responses = Responses(channel)
        future = responses.expect(7)
        worker = mp.get_context("spawn").Process(target=_answer_from_another_process, args=(channel, 7, rows))
        worker.start()
        data = await asyncio.wait_for(future, 30)
        await asyncio.to_thread(worker.join)
        return data

    data = asyncio.run(main())
    assert data.shape == (rows, 16) and data.sum() == rows * 16


def test_aput_never_blocks_the_event_loop_on_a_full_pipe():
    channel = Channel()
    big = np.zeros(2 * PIPE_BYTES // 4, np.float32)  # twice the pipe: a blocking write would hang here

    async def main():
        ticks = 0
        writing = asyncio.create_task(channel.aput(("big", big)))
        while not writing.done() and ticks < 3:  # the loop keeps running while the write waits for a reader
            await asyncio.sleep(0.01)
            ticks += 1
        assert not writing.done()
        first = await asyncio.to_thread(channel.get)
        await writing
        await channel.aput("small")  # fits: written at once
        return first, await asyncio.to_thread(channel.get)

    (tag, array), small = asyncio.run(main())
    assert tag == "big" and array.shape == big.shape and small == "small"
