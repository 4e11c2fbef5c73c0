"""Connection limits of the real server (uvicorn): a header-read deadline, a cap on open connections, and a
bound on the size of a request's line and headers.

uvicorn (0.54) has no header deadline: its keep-alive timeout starts only after a response, and
`limit_concurrency` answers 503 to a *complete* request but never closes a connection that trickles its
headers, so a client opening thousands of such connections holds them until the file-descriptor limit, after
which even `/healthz` is refused (slowloris). The ASGI app cannot help: it is called once the headers are in.
`guarded_protocol` subclasses uvicorn's h11 protocol with:

- a deadline for a request's line and headers, `header_timeout_s` after the connection opens or after the
  previous response: a connection still without a complete request then is closed;
- a cap on open connections, `max_connections`: one past it is closed as soon as it is accepted.

h11, not httptools (uvicorn's pick when it is installed): h11 refuses a request line and headers longer than
`MAX_HEAD_BYTES` with a 400, while uvicorn's httptools protocol appends header and URL bytes without a bound
for as long as the client sends them. The body's deadline is the ASGI app's (`metrics.Guard`, 408), as it
knows when a body is complete. Other stacks (hypercorn, granian) were not taken: neither is a dependency
yet, and the two rules above are forty lines over the server the project already tests.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("siglip.serve")
MAX_HEAD_BYTES = 16 * 1024  # a request's line and headers (h11's default, given to uvicorn explicitly)


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol class with a header deadline and a connection cap, for `uvicorn.Config(http=...,
    h11_max_incomplete_event_size=MAX_HEAD_BYTES)`."""

    class GuardedProtocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                log.warning(
                    "%d connections open, the limit (--max-connections): one refused", max_connections
                )
                transport.close()
                return
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            if not self.transport.is_closing():
                self._deadline = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _headers_too_slow(self) -> None:
            self._deadline = None
            cycle: Any = self.cycle
            if cycle is not None and not cycle.response_complete:  # the headers are in: a request is running
                return
            self.transport.close()

    return GuardedProtocol
