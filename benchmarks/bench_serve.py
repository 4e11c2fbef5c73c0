"""`siglip serve` under load: text-embedding requests from concurrent clients, dynamic batching on and off.

    python benchmarks/bench_serve.py [--models tiny base] [--clients 1 8 32 64] [--seconds 5]
                                     [--max-requests 3000] [--max-wait-ms 5] [--rss-requests 10000]

For each model, two servers are started in turn on a free loopback port: one batching (up to 64 texts per
model call, waiting at most --max-wait-ms) and one with --max-batch-size 1. Closed-loop clients (each sends
`POST /v1/embed/text` with one text and sends the next when answered) run for --seconds per point, or
--max-requests, whichever comes first, after a warm-up. Reported: requests/s, p50 and p99 latency seen by
the client, errors (any non-200 or transport failure), and the mean size and time of the model calls from
the server's /metrics. Then the batching server of the first model answers --rss-requests more requests,
and its resident memory before and after is reported.

"base" is the base16-224 shape with random weights (speed does not depend on the values), written to a
temporary folder with the bundled model's tokenizer; "tiny" is the bundled model. The clients run in this
process on the same machine as the server, so on a small machine they take part of its CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from _common import SHAPES, machine_line
from siglip import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor, SiglipTokenizer

TINY = "siglip-tiny-fashion"


def base_checkpoint(directory: Path) -> Path:
    """A base16-224-shaped model with random weights and the bundled model's vocabulary, saved in `directory`."""
    tokenizer = SiglipTokenizer.from_pretrained(TINY)
    shape = SHAPES["base16-224"]
    config = SiglipConfig(
        text_config=dict(shape["text_config"], vocab_size=tokenizer.vocab_size, max_position_embeddings=64),
        vision_config=shape["vision_config"],
    )
    SiglipModel(config).save_pretrained(directory)
    tokenizer.model_max_length = 64
    SiglipProcessor(SiglipImageProcessor(size={"height": 224, "width": 224}), tokenizer).save_pretrained(
        directory
    )
    return directory


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(model: str, *options: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "siglip", "serve", "--model", model, "--port", str(port), *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the server for {model} did not start")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    if process.wait(60) != 0:
        raise RuntimeError(f"the server exited with {process.returncode}")


async def load(url: str, clients: int, seconds: float, max_requests: int) -> dict[str, float]:
    """Closed-loop clients for `seconds` (or `max_requests` in all): rate, latency percentiles, errors."""
    latencies: list[float] = []
    errors = 0
    sent = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:

        async def client(number: int) -> None:
            nonlocal errors, sent
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                body = {"texts": [f"a photo of item {number}-{sent}"]}
                start = time.perf_counter()
                try:
                    ok = (await http.post("/v1/embed/text", json=body)).status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - start)
                errors += not ok

        start = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "errors": errors,
        "count": len(latencies),
    }


def batch_stats(url: str) -> tuple[float, float, float]:
    """(model calls, items, seconds) of text batches so far, from /metrics."""
    values = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        for name in ("siglip_batch_size_count", "siglip_batch_size_sum", "siglip_batch_duration_seconds_sum"):
            if line.startswith(name + '{kind="text"}'):
                values[name] = float(line.split()[-1])
    return (
        values["siglip_batch_size_count"],
        values["siglip_batch_size_sum"],
        values["siglip_batch_duration_seconds_sum"],
    )


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "base"], choices=["tiny", "base"])
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--max-requests", type=int, default=3000)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--rss-requests", type=int, default=10_000)
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    print(machine_line())
    memory = ""
    with tempfile.TemporaryDirectory() as tmp:
        models = {
            "tiny": TINY,
            "base": str(base_checkpoint(Path(tmp) / "base")) if "base" in args.models else "",
        }
        for name in args.models:
            print(f"\n{name} model, text embeddings, one text per request ({args.precision})")
            print(
                "| clients | batching | requests/s | p50 ms | p99 ms | errors | texts per model call | ms per model call |"
            )
            print("|---|---|---|---|---|---|---|---|")
            modes = {
                f"on (max 64, wait {args.max_wait_ms:g} ms)": [
                    "--max-batch-size",
                    "64",
                    "--max-wait-ms",
                    str(args.max_wait_ms),
                ],
                "off (batch size 1)": ["--max-batch-size", "1"],
            }
            for mode, options in modes.items():
                process, url = start(
                    models[name], "--precision", args.precision, "--max-queue", "1024", *options
                )
                try:
                    asyncio.run(load(url, 8, 1.0, 200))  # warm-up
                    for clients in args.clients:
                        before = batch_stats(url)
                        result = asyncio.run(load(url, clients, args.seconds, args.max_requests))
                        after = batch_stats(url)
                        calls, items, seconds = (a - b for a, b in zip(after, before, strict=True))
                        print(
                            f"| {clients} | {mode} | {result['rps']:.0f} | {1000 * result['p50']:.1f} | "
                            f"{1000 * result['p99']:.1f} | {result['errors']} of {result['count']} | "
                            f"{items / calls:.1f} | {1000 * seconds / calls:.1f} |",
                            flush=True,
                        )
                    if name == args.models[0] and mode.startswith("on") and args.rss_requests:
                        before = rss_mib(process.pid)
                        result = asyncio.run(load(url, 32, 3600, args.rss_requests))
                        after = rss_mib(process.pid)
                        memory = (
                            f"RSS of the {name} server over {result['count']} more requests (32 clients, "
                            f"{result['errors']} errors): {before:.0f} MiB before, {after:.0f} MiB after"
                        )
                finally:
                    stop(process)
            if memory:
                print(f"\n{memory}")
                memory = ""


if __name__ == "__main__":
    main()
