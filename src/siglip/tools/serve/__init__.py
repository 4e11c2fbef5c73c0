"""`siglip serve`: an HTTP API (embeddings, OpenAI-compatible embeddings, zero-shot classification, search)
with dynamic batching, Prometheus metrics and a web page for search and classification."""

from .app import API_KEY_ENV, ServeSettings, create_app, is_loopback
from .batcher import Batcher, QueueFull, Timeout

__all__ = ["API_KEY_ENV", "Batcher", "QueueFull", "ServeSettings", "Timeout", "create_app", "is_loopback"]
