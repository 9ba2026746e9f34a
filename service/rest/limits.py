"""uvicorn's httptools protocol with the limits it lacks: a header deadline, a body deadline, a header size cap.

uvicorn 0.54 with httptools keeps a connection that trickles its headers forever (its keep-alive timer is armed
only after a response, and disarmed by the first byte of the next request) and takes headers of any size.
Slow or hostile clients could hold every connection and all the memory. Here, per connection:

- the request line and headers must be complete `header_timeout` seconds after the connection opens or the
  request's first byte arrives, else the connection is closed (408 if part of a request came);
- the body must be complete `body_timeout` seconds after the headers, else the connection is closed;
- more than `max_header_bytes` of request line and headers is answered 431 and the connection closed.

Each timer is one `call_later` per request, cancelled when its part arrives.

And a lingering close (`linger`) for every connection closed while its request's body is still arriving (a
refusal before the body was read, 431, 408): without it the client is reset and never reads its answer.

And one send per answer: uvicorn writes a response's status line and headers, then its body, each with its own
`send()` (strace); `OneWrite` holds the first back until the second comes.
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.core.settings import Settings

log = logging.getLogger("tabserve.protocol")


class HeadersTooLarge(Exception):
    """Raised in a parser callback to stop parsing; uvicorn then calls `send_400_response`."""


def _answer(status: bytes, message: str) -> bytes:
    body = b'{"error": "%s", "reason": "%s"}' % (message.encode(), status.split(b" ", 1)[1].lower().replace(b" ", b"_"))
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
    )  # fmt: skip


REQUEST_TIMEOUT = _answer(b"408 Request Timeout", "the request's headers did not arrive in time")
HEADERS_TOO_LARGE = _answer(b"431 Request Header Fields Too Large", "request line and headers are too large")


class OneWrite:
    """uvicorn's request cycle writes here: the response's head is held back and sent with the first body chunk,
    in one `send()` instead of two (at c=16 the second write was a tenth of the HTTP process's time, py-spy).

    Only the head is held, never `100 Continue` (the client waits for it before sending the body); `close` sends
    a head still held, so nothing written is ever lost.
    """

    __slots__ = ("head", "protocol", "started", "transport")

    def __init__(self, transport: asyncio.Transport, protocol: GuardedHttpToolsProtocol):
        self.transport, self.protocol, self.head, self.started = transport, protocol, None, False

    def write(self, data: bytes) -> None:
        if not self.started and not data.startswith(b"HTTP/1.1 100 "):
            self.started, self.head = True, data
            return
        if self.head is not None:
            data, self.head = self.head + data, None
        self.transport.write(data)

    def close(self) -> None:
        if self.head is not None:
            self.transport.write(self.head)
            self.head = None
        cycle = self.protocol.cycle
        if cycle is not None and cycle.more_body:  # answered before the body was read: linger, or it is lost
            self.protocol.linger()
        else:
            self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()


LINGER_BYTES = 16 * 1024 * 1024
"""A lingering close ends at the client's close, or after `lingering_close_seconds` or this many discarded bytes,
whichever comes first: a client that keeps sending cannot hold the connection or the CPU."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout = 10.0
    body_timeout = 60.0
    linger_seconds = 2.0
    max_header_bytes = 32 * 1024
    requests: set[asyncio.Task] | None = None
    """uvicorn's request tasks in this process, shared by every connection (one is added when a request's headers
    arrive, before it runs; removed once answered): how the inline lane (service/dataplane/inline.py) tells a lone
    request."""

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        type(self).requests = self.tasks
        self.header_bytes = 0
        self.started = False  # whether a byte of the current request has arrived
        self.deadline: asyncio.TimerHandle | None = None
        self.lingering: int | None = None  # bytes still to discard, while closing (`linger`)
        self._arm(self.header_timeout, self._headers_late)

    def linger(self) -> None:
        """A lingering close (RFC 9112 §9.6, nginx's `lingering_close`): the answer went out before the request's
        body was read, and closing now, with that body still arriving, would make the kernel reset the
        connection and the client lose the answer (its 503 and Retry-After). So stop writing (FIN), keep reading
        and discarding, unparsed, until the client closes, or `linger_seconds` or `LINGER_BYTES` run out."""
        if self.transport.is_closing() or self.lingering is not None:
            return
        if not self.linger_seconds:  # configured off: close at once
            self.transport.close()
            return
        self.lingering = LINGER_BYTES
        if self.transport.can_write_eof():
            self.transport.write_eof()  # after what is buffered: the answer
        self.flow.resume_reading()
        self._arm(self.linger_seconds, self._linger_over)

    def _linger_over(self) -> None:
        self.deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.lingering is None:
            return super().data_received(data)
        self.lingering -= len(data)
        if self.lingering <= 0:
            self._linger_over()

    def _arm(self, seconds: float, callback) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        self.deadline = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to any parser error, including ours from `_count` (httptools wraps it)."""
        if self.header_bytes > self.max_header_bytes:
            self._close_with(HEADERS_TOO_LARGE)
        else:
            super().send_400_response(msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.header_bytes = 0
        self.started = True
        if self.deadline is None:
            self._arm(self.header_timeout, self._headers_late)

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count(self, size: int) -> None:
        self.header_bytes += size
        if self.header_bytes > self.max_header_bytes:
            raise HeadersTooLarge

    def on_headers_complete(self) -> None:
        self._arm(self.body_timeout, self._body_late)
        super().on_headers_complete()
        if self.cycle is not None:  # made just now; its task has not run yet
            self.cycle.transport = OneWrite(self.transport, self)

    def on_message_complete(self) -> None:
        self._disarm()
        self.started = False
        super().on_message_complete()

    def _headers_late(self) -> None:
        self.deadline = None
        if self.started:
            log.info("closing a connection whose headers took over %.0f s", self.header_timeout)
            self._close_with(REQUEST_TIMEOUT)
        elif not self.transport.is_closing():
            self.transport.close()  # silent since it opened: nothing to answer

    def _body_late(self) -> None:
        self.deadline = None
        log.info("closing a connection whose body took over %.0f s", self.body_timeout)
        if not self.transport.is_closing():
            self.transport.close()  # the request's handler sees a disconnect

    def _close_with(self, response: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(response)
            self.linger()  # what the client still sends must not reset the connection before it reads this


def protocol_for(settings: Settings) -> type[GuardedHttpToolsProtocol]:
    """The protocol class uvicorn instantiates per connection, with this server's limits."""
    return type(
        "TabserveHttpProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "header_timeout": settings.header_timeout,
            "body_timeout": settings.body_timeout,
            "max_header_bytes": settings.max_header_bytes,
            "linger_seconds": settings.lingering_close_seconds,
        },
    )
