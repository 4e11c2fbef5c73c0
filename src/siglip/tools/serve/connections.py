"""Connection limits of the real server (uvicorn): a header-read deadline, a cap on open connections, and a
bound on the size of a request's line and headers.

uvicorn (0.54) has no header deadline: its keep-alive timeout starts only after a response, and
`limit_concurrency` answers 503 to a *complete* request but never closes a connection that trickles its
headers, so a client opening thousands of such connections holds them until the file-descriptor limit, after
which even `/healthz` is refused (slowloris). The ASGI app cannot help: it is called once the headers are in.
`guarded_protocol` subclasses uvicorn's httptools protocol (llhttp's C parser) with:

- a deadline for a request's line and headers, `header_timeout_s` after the connection opens or after the
  previous response: a connection still without a complete request then is closed;
- a cap on open connections, `max_connections`: one past it is closed as soon as it is accepted;
- a bound on a request's line and headers, `MAX_HEAD_BYTES`, answered with a 400: uvicorn's httptools protocol
  appends header and URL bytes without one for as long as the client sends them (its h11 protocol has the
  bound, but h11 parses in Python: 20% of a tiny-model server's busy time for texts, BENCHMARKS.md).

The body's deadline is the ASGI app's (`metrics.Guard`, 408), as it knows when a body is complete. Other stacks
(hypercorn, granian) were not taken: neither is a dependency yet, and the rules above are a few dozen lines over
the server the project already tests.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("siglip.serve")
MAX_HEAD_BYTES = 16 * 1024  # a request's line and headers (h11's default bound)
HEAD_TOO_LONG = f"Request line and headers longer than {MAX_HEAD_BYTES} bytes."


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol class with a header deadline, a connection cap and a bound on the size of
    a request's line and headers, for `uvicorn.Config(http=...)`."""

    class GuardedProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None
        # bytes read since the current request's head began, while it is incomplete; None between heads, -1
        # in the read where it began (how much of that read was the previous request's is not known)
        _head_bytes: int | None = None
        _head_too_long = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                log.warning(
                    "%d connections open, the limit (--max-connections): one refused", max_connections
                )
                transport.close()
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._head_bytes is None or self.transport.is_closing():
                return
            # an incomplete head: bounded once it has taken more than MAX_HEAD_BYTES over later reads (memory
            # then stays under the bound plus one read), or exactly when it completes (`on_headers_complete`)
            self._head_bytes = 0 if self._head_bytes < 0 else self._head_bytes + len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._head_too_long = True
                self.send_400_response(HEAD_TOO_LONG)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_bytes = -1

        def on_headers_complete(self) -> None:
            self._head_bytes = None
            # each header as sent is at least "name: value" and its line end
            size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
            if size > MAX_HEAD_BYTES:
                self._head_too_long = True
                raise ValueError(HEAD_TOO_LONG)  # the parser stops; uvicorn answers 400 (`send_400_response`)
            super().on_headers_complete()

        def send_400_response(self, msg: str) -> None:
            super().send_400_response(HEAD_TOO_LONG if self._head_too_long else msg)

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
