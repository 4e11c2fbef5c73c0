"""Prometheus metrics of the server, and the ASGI middleware that counts requests and guards every one."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError, error_response

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


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
    """Outermost ASGI middleware: counts and times requests, limits body size, adds protective headers.

    A body larger than `max_body` is refused with 413, before reading it when Content-Length says so, else
    as soon as the bytes received pass the limit. Routes are labelled by their template
    (`/v1/images/{image_id}`), never by the requested path, so metrics cannot grow without bound.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        received, too_large = 0, False

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), *_PROTECTIVE_HEADERS]
            await send(message)

        async def send_unless_too_large(message: Message) -> None:
            if not too_large:  # else the app's answer (to a body it could not read) gives way to the 413
                await send_with_headers(message)

        async def receive_limited() -> Message:
            nonlocal received, too_large
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                too_large = True
                raise ApiError(413, self._too_large())
            return message

        self.metrics.in_flight.inc()
        try:
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.max_body:
                too_large = True
            else:
                try:
                    await self.app(scope, receive_limited, send_unless_too_large)
                except Exception:
                    if not too_large:
                        raise
            if too_large:
                await error_response(413, self._too_large())(scope, receive, send_with_headers)
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
