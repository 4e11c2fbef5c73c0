"""The options of `siglip serve` (importable without the server's dependencies, for the command line)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

API_KEY_ENV = "SIGLIP_API_KEY"


@dataclass(frozen=True)
class ServeSettings:
    """How the server batches, what it accepts, and who may call it (the options of `siglip serve`)."""

    max_batch_size: int = 32  # items per model call
    max_wait_ms: float = 5.0  # how long a batch waits for more items after its first
    max_queue: int = 512  # items waiting; past it, 503 with Retry-After
    timeout_s: float = 30.0  # a request not answered by then gets 503
    max_items: int = 64  # texts or images in one request
    max_upload_bytes: int = 20 * 2**20  # request body
    max_pixels: int = 40_000_000  # decoded pixels of one image
    max_k: int = 1000  # search results
    thumbnail_size: int = 256
    api_key: str | None = None  # when set, required on every /v1 route and /metrics
    cors_origins: tuple[str, ...] = field(default_factory=tuple)


def is_loopback(host: str) -> bool:
    """Whether `host` names only this machine (127.0.0.0/8, ::1 or localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
