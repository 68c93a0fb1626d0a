"""Bounds on connections, which uvicorn alone does not set: how many, and how long those
that the app is done with stay open.

How many: uvicorn accepts every connection (its `limit_concurrency` answers requests 503
past a limit, but keeps their connections). Here, a connection made while
`max_connections` are open is answered 503 and closed at once, so file descriptors stay
bounded whatever clients do.

HTTP: a connection that holds no request.

uvicorn keeps a connection open until the head of its first request has come in: its
keep-alive timeout starts only once a response is complete, and it is restarted by every
byte received. So a client that connects and sends nothing, or trickles a request's
head a byte at a time, holds a file descriptor and a connection for good, however many
such clients there are. Here, a connection with no request in progress (none yet, or
its last one answered) is closed once it has held none for the deadline. A close waits
until the connection's answer has been written out (asyncio's), which for a client that
does not read it is never, and such connections, counted among `max_connections`, would
shut everyone else out: so a closing connection whose write buffer did not shrink over a
deadline is aborted (`_StallWatch`; a client that reads, however slowly, gets all of it).
A request in progress is bounded by the app (a body that stops coming gets 408), and a
connection upgraded to a WebSocket by the stream's own deadlines.

WebSocket: a connection whose stream has ended. uvicorn closes it once its write buffer
has drained, which for a client that stopped reading is never (asyncio's `close` waits for
the buffer; uvicorn's own close timer only calls `close` again). Here, once the stream's
handler has returned, the connection is watched the same way: aborted when its write
buffer does not shrink over a deadline.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.auto import AutoHTTPProtocol
from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol


_REFUSED = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


def protocol_with_request_deadline(seconds: float, max_connections: int | None = None,
                                   base: type = AutoHTTPProtocol) -> type:
    """uvicorn's HTTP protocol (`base`, the one it would pick) with the deadline, and the
    bound on connections (None: none): pass it as `uvicorn.Config(http=...)`."""

    class RequestDeadlineProtocol(base):
        _deadline: asyncio.TimerHandle | None = None
        _watch: "_StallWatch | None" = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            # Every open connection is in the server's set, WebSockets included (they take
            # the HTTP protocol's place in it on upgrade).
            if max_connections is not None and len(self.server_state.connections) > max_connections:
                transport.write(_REFUSED)  # a few bytes: the socket takes them at once
                transport.close()
                return
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # the next request's head has as long

        def connection_lost(self, exc) -> None:
            self._disarm()
            if self._watch is not None:
                self._watch.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._deadline_passed)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _deadline_passed(self) -> None:
            self._deadline = None
            if self.transport.get_protocol() is not self:
                return  # a WebSocket now
            if self.transport.is_closing():  # closed by uvicorn, its answer still not written out
                self._watch = _StallWatch(self.transport, self.loop, seconds)
            elif self.cycle is None or self.cycle.response_complete:  # no request in progress
                self.transport.close()
                if self.transport.get_write_buffer_size():
                    self._watch = _StallWatch(self.transport, self.loop, seconds)

    return RequestDeadlineProtocol


def websocket_protocol_with_close_deadline(seconds: float, base: type | None = AutoWebSocketsProtocol) -> type | None:
    """uvicorn's WebSocket protocol (`base`, the one it would pick) with the deadline: pass it
    as `uvicorn.Config(ws=...)`. None when no WebSocket library is installed (as uvicorn)."""
    if base is None:
        return None

    class CloseDeadlineProtocol(base):
        _lost = False
        _watch: "_StallWatch | None" = None

        async def run_asgi(self) -> None:
            try:
                await super().run_asgi()
            finally:
                if not self._lost:
                    self._watch = _StallWatch(self.transport, self.loop, seconds)

        def connection_lost(self, exc) -> None:
            self._lost = True
            if self._watch is not None:
                self._watch.cancel()
            super().connection_lost(exc)

    return CloseDeadlineProtocol


class _StallWatch:
    """Aborts a connection unless what it has left to write shrinks every `seconds`: a client
    that reads, however slowly, gets all of it; one that stopped reading loses the
    connection (its buffer, and its file descriptor) instead of holding it for good."""

    def __init__(self, transport, loop: asyncio.AbstractEventLoop, seconds: float):
        self.transport, self.loop, self.seconds = transport, loop, seconds
        self.left = transport.get_write_buffer_size()
        self.handle = loop.call_later(seconds, self._look)

    def _look(self) -> None:
        left = self.transport.get_write_buffer_size()
        if 0 < left < self.left:
            self.left, self.handle = left, self.loop.call_later(self.seconds, self._look)
        else:
            self.transport.abort()

    def cancel(self) -> None:
        self.handle.cancel()
