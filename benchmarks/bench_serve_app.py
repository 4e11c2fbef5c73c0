"""The CPU time `siglip serve`'s ASGI app spends on one text request, the model and HTTP left out.

    python benchmarks/bench_serve_app.py [--requests 2000] [--repeats 5]

Builds the app on the bundled model with the service's text embedding replaced by a constant (no model, no
batching), and calls it in-process with ready-made ASGI messages, one `POST /v1/embeddings` (`{"input": one
text}`) and one `POST /v1/embed/text` at a time: what is left is the request path this process's event loop
pays per request (middleware, routing, dependencies, body reading and validation, the response's JSON). The
process's CPU time per request is printed, the lowest and the median of --repeats rounds. Run it with another
version's `src` on PYTHONPATH to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

import numpy as np

from _common import machine_line
from siglip import Embedder
from siglip.tools.serve import create_app
from siglip.tools.serve.service import Service

ROUTES = {
    "/v1/embeddings": b'{"input": "a photo of item 1 on a plain background"}',
    "/v1/embed/text": b'{"texts": ["a photo of item 1 on a plain background"]}',
}


async def one(app, path: str, body: bytes) -> None:
    """One request through the app, answered 200."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"x"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {}}  # fmt: skip
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []

    async def receive() -> dict:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the client stays: never a disconnect
        raise AssertionError

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent[0]["status"] == 200, sent


async def bench(requests: int, repeats: int) -> None:
    embedder = Embedder.from_pretrained("siglip-tiny-fashion", device="cpu", precision="fp32")
    vector = np.full((1, embedder.dims), embedder.dims**-0.5, np.float32)

    async def constant(_: Service, texts: list[str]) -> tuple[np.ndarray, int]:
        return np.repeat(vector, len(texts), axis=0), 12

    Service.embed_texts_counted = constant  # type: ignore[method-assign]
    app = create_app(embedder)
    async with app.router.lifespan_context(app):
        for path, body in ROUTES.items():
            for _ in range(200):  # warm-up
                await one(app, path, body)
            rounds = []
            for _ in range(repeats):
                start = time.process_time()
                for _ in range(requests):
                    await one(app, path, body)
                rounds.append(1e6 * (time.process_time() - start) / requests)
            print(f"POST {path}: {min(rounds):.0f} us of CPU per request (lowest of {repeats}), median "
                  f"{statistics.median(rounds):.0f}; load average {os.getloadavg()[0]:.1f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(machine_line())
    asyncio.run(bench(args.requests, args.repeats))


if __name__ == "__main__":
    main()
