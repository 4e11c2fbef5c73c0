"""The real `siglip serve` in a subprocess on a free loopback port, for the server and browser tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from _material import BUNDLED


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(index: Path | None, *options: str) -> tuple[subprocess.Popen, str]:
    """`siglip serve` (with the index in folder `index`, if any) on a free loopback port, once it is ready:
    (process, base URL). One worker process unless `options` say otherwise (the tests read its /metrics)."""
    port = _free_port()
    indexed = ["--index", str(index)] if index is not None else []
    if "--workers" not in options:
        options = ("--workers", "1", *options)
    process = subprocess.Popen(
        [sys.executable, "-m", "siglip", "serve", "--model", BUNDLED, *indexed, "--port", str(port),
         "--precision", "fp32", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError("the server did not become ready in 120 s")
