"""Prometheus metrics of the server, and the ASGI middleware that counts requests and guards every one."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .batcher import wait_until
from .errors import REQUEST_ID_HEADER, ApiError, error_response, internal_error, log

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CLIENT_GONE = 499  # the status label of a request whose client went away before its answer


class Metrics:
    """Request counts, requests in flight, request latency, batch sizes and times, and queue depth, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "siglip_requests", "HTTP requests answered", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "siglip_request_duration_seconds",
            "Time to answer a request",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge("siglip_requests_in_flight", "Requests being answered", registry=self.registry)
        self.batch_size = Histogram(
            "siglip_batch_size",
            "Items per model call",
            ["kind"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "siglip_batch_duration_seconds",
            "Time of one model call",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "siglip_queue_depth", "Items waiting for a model call", ["kind"], registry=self.registry
        )

    def batch_observer(self, kind: str) -> Callable[[int, float], None]:
        """A `Batcher.on_batch` recording batches of `kind` ("text" or "image")."""
        sizes, seconds = self.batch_size.labels(kind), self.batch_seconds.labels(kind)

        def observe(size: int, duration: float) -> None:
            sizes.observe(size)
            seconds.observe(duration)

        return observe

    def watch_queue(self, kind: str, depth: Callable[[], int]) -> None:
        """Report `depth()` as the queue depth of `kind`."""
        self.queue_depth.labels(kind).set_function(depth)


class Guard:
    """Outermost ASGI middleware: gives each request an id (unique: the process's random prefix and a count),
    counts and times requests, limits the body's size and the time it takes to arrive, turns unexpected
    exceptions into a 500, and adds protective headers.

    A body larger than `max_body` is refused with 413, before reading it when Content-Length says so, else
    as soon as the bytes received pass the limit; a body not complete `body_timeout_s` after the request's
    headers is refused with 408. An exception no handler answered is logged with its traceback and the
    request's id, and the client gets only `errors.internal_error` (the id is in every response's
    `X-Request-ID` header). A client that goes away mid-request is neither logged nor counted as an error
    (status label 499, as nginx names it). Routes are labelled by their template (`/v1/images/{image_id}`),
    never by the requested path, so metrics cannot grow without bound.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body: int, body_timeout_s: float) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body
        self.body_timeout_s = body_timeout_s
        # request ids: a random prefix per process and a count (uuid4 read the system's random source on every
        # request: 7% of the event loop's time at 32 clients)
        self._id_prefix = os.urandom(4).hex()
        self._numbers = itertools.count()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"{self._id_prefix}{next(self._numbers):08x}"
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        body_deadline = loop.time() + self.body_timeout_s
        status, started, body_done, received = 500, False, False, 0
        refusal: ApiError | None = None  # the 413 or 408 this request gets instead of the app's answer

        async def send_with_headers(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                headers = [*message.get("headers", []), *_PROTECTIVE_HEADERS]
                message["headers"] = [*headers, (REQUEST_ID_HEADER.encode(), request_id.encode())]
            await send(message)

        async def send_unless_refused(message: Message) -> None:
            if (
                refusal is None
            ):  # else the app's answer (to a body it could not read) gives way to the refusal
                await send_with_headers(message)

        async def receive_guarded() -> Message:
            nonlocal received, refusal, body_done
            if body_done:  # e.g. a response listening for the client to go away: no deadline
                return await receive()
            try:
                message = await wait_until(receive(), body_deadline)
            except TimeoutError:
                refusal = ApiError(
                    408, f"the request body did not arrive within {self.body_timeout_s:g} s (--body-timeout)"
                )
                raise refusal from None
            received += len(message.get("body", b""))
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            if received > self.max_body:
                refusal = ApiError(413, self._too_large())
                raise refusal
            return message

        self.metrics.in_flight.inc()
        try:
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.max_body:
                refusal = ApiError(413, self._too_large())
            else:
                try:
                    await self.app(scope, receive_guarded, send_unless_refused)
                except ClientDisconnect:
                    status = CLIENT_GONE
                except Exception as err:
                    if refusal is None:
                        log.error("internal error, request id %s (%s %s)", request_id, scope["method"],
                                  scope["path"], exc_info=err)  # fmt: skip
                        if not started:
                            await internal_error(request_id)(scope, receive, send_with_headers)
            if refusal is not None and not started:
                await error_response(refusal.status, refusal.message)(scope, receive, send_with_headers)
        finally:
            self.metrics.in_flight.dec()
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)

    def _too_large(self) -> str:
        return f"the request body is larger than the limit of {self.max_body} bytes (--max-upload-bytes)"


_PROTECTIVE_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
