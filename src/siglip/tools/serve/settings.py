"""The options of `siglip serve` (importable without the server's dependencies, for the command line).

Each limit bounds what one request (or one connection) may cost; README's serve section lists them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

API_KEY_ENV = "SIGLIP_API_KEY"


@dataclass(frozen=True)
class ServeSettings:
    """How the server batches, what it accepts, and who may call it (the options of `siglip serve`)."""

    max_batch_size: int = 32  # items per model call
    max_wait_ms: float | None = (
        None  # a batch's wait for more items after its first; None: adaptive (batcher)
    )
    max_queue: int = 512  # items waiting; past it, 503 with Retry-After
    timeout_s: float = 30.0  # a request not answered by then gets 503
    max_items: int = 64  # texts or images in one request
    max_prompts: int = 1024  # labels x templates of one classification (the text model runs once per prompt)
    max_upload_bytes: int = 20 * 2**20  # request body
    max_image_pixels: int = 40_000_000  # pixels of one image, refused before it is decoded
    max_request_pixels: int = 120_000_000  # pixels of all the images of one request, idem
    max_k: int = 1000  # search results
    thumbnail_size: int = 256
    api_key: str | None = None  # when set, required on every /v1 route and /metrics
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    # connections (`connections.GuardedProtocol`, the real server only; the ASGI app alone cannot see them)
    header_timeout_s: float = 10.0  # a request's line and headers must arrive within this
    body_timeout_s: float = 60.0  # its body within this, once the headers are in
    max_connections: int = 1000  # open connections; more are closed at once
    workers: int = 1  # server processes sharing the port (`siglip serve --workers`); each has its own metrics


def is_loopback(host: str) -> bool:
    """Whether `host` names only this machine (127.0.0.0/8, ::1 or localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
