"""`siglip serve`: an HTTP API (embeddings, OpenAI-compatible embeddings, zero-shot classification, search)
with dynamic batching, Prometheus metrics and a web page for search and classification.

`create_app` needs the `serve` extra (FastAPI and friends); the settings and the batcher do not.
"""

from typing import Any

from .batcher import Batcher, QueueFull, Timeout
from .settings import API_KEY_ENV, ServeSettings, is_loopback

__all__ = ["API_KEY_ENV", "Batcher", "QueueFull", "ServeSettings", "Timeout", "create_app", "is_loopback"]


def __getattr__(name: str) -> Any:
    if name == "create_app":  # imported on first use: it needs FastAPI
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
