"""A deadline for HTTP connections that hold no request.

uvicorn keeps a connection open until the head of its first request has come in: its
keep-alive timeout starts only once a response is complete, and it is restarted by every
byte received. So a client that connects and sends nothing, or trickles a request's
head a byte at a time, holds a file descriptor and a connection for good, however many
such clients there are. Here, a connection with no request in progress (none yet, or
its last one answered) is closed once it has held none for the deadline. A request in
progress is bounded by the app (a body that stops coming gets 408), and a connection
upgraded to a WebSocket by the stream's own deadlines.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.auto import AutoHTTPProtocol


def protocol_with_request_deadline(seconds: float, base: type = AutoHTTPProtocol) -> type:
    """uvicorn's HTTP protocol (`base`, the one it would pick) with the deadline: pass it
    as `uvicorn.Config(http=...)`."""

    class RequestDeadlineProtocol(base):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # the next request's head has as long

        def connection_lost(self, exc) -> None:
            self._disarm()
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
            if self.transport.is_closing() or self.transport.get_protocol() is not self:
                return  # closed already, or a WebSocket now
            if self.cycle is None or self.cycle.response_complete:  # no request in progress
                self.transport.close()

    return RequestDeadlineProtocol
