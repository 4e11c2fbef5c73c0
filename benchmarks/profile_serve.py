"""Where `siglip serve`'s CPU goes under load: py-spy samples of the server while bench_serve's clients run.

    python benchmarks/profile_serve.py [--model tiny] [--kind openai] [--clients 32] [--seconds 8]
                                       [--config '[VAR=VALUE ...] [serve options]']

Starts one server (as bench_serve does), loads it with closed-loop clients, samples it with `py-spy record
--threads` (non-idle samples only: a thread waiting in epoll or on a lock is not counted) and splits the
samples by thread and by what the innermost recognisable frame is doing. The server runs one worker process
(`--workers 1`) unless the configuration says otherwise: py-spy samples one process. Needs the `py-spy` executable
(`pip install py-spy`) and permission to trace a child process.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_serve import TINY, base_checkpoint, load, start, stop, wait_ready

# (category, a substring of a frame): the innermost frame that matches one decides the sample's category
CATEGORIES = (
    ("model (torch)", "torch/"),
    ("model (torch)", "siglip/core/"),
    ("tokenizer", "tokeniz"),
    ("tokenizer", "sentencepiece"),
    ("image decode + preprocessing", "PIL/"),
    ("image decode + preprocessing", "serve/images.py"),
    ("image decode + preprocessing", "image_processing"),
    ("HTTP parsing (h11 / httptools)", "h11"),
    ("HTTP parsing (h11 / httptools)", "httptools"),
    ("HTTP parsing (h11 / httptools)", "multipart"),
    ("JSON + response model (pydantic, encoders)", "json"),
    ("JSON + response model (pydantic, encoders)", "pydantic"),
    ("JSON + response model (pydantic, encoders)", "encoders.py"),
    ("JSON + response model (pydantic, encoders)", "serialize_response"),
    ("batching (batcher, futures)", "serve/batcher.py"),
    ("siglip middleware + metrics", "serve/metrics.py"),
    ("siglip middleware + metrics", "prometheus"),
    ("routing + dependencies (starlette, fastapi)", "starlette/"),
    ("routing + dependencies (starlette, fastapi)", "fastapi/"),
    ("routes (siglip)", "serve/routes/"),
    ("routes (siglip)", "serve/service.py"),
    ("uvicorn protocol", "uvicorn/"),
    ("asyncio event loop", "asyncio/"),
    ("thread pool hand-off", "concurrent/futures"),
    ("thread pool hand-off", "threading.py"),
)


def category(frames: list[str]) -> str:
    if any(
        "serve/images.py" in frame for frame in frames
    ):  # the image processor's torch ops are not the model
        return "image decode + preprocessing"
    for frame in reversed(frames):
        for name, part in CATEGORIES:
            if part in frame:
                return name
    return "other"


def split(raw: str) -> dict[str, collections.Counter[str]]:
    """{thread kind: {category: samples}} of py-spy's raw output (one `frames;... count` line per stack)."""
    threads: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1].rstrip("0123456789_")
        threads[thread][category(frames[1:])] += int(count)
    return threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", choices=["tiny", "base"])
    parser.add_argument("--kind", default="openai", choices=["text", "openai", "image", "image64"])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--config", default="", help="'[VAR=VALUE ...] [serve options]' of the server")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    with tempfile.TemporaryDirectory() as tmp:
        model = TINY if args.model == "tiny" else str(base_checkpoint(Path(tmp) / "base"))
        # one worker process unless told: py-spy samples the one it is given
        config = args.config if "--workers" in args.config else f"{args.config} --workers 1"
        server = start("profiled", model, config, args.precision)
        try:
            asyncio.run(wait_ready(server))
            out = Path(tmp) / "raw.txt"
            options = ["--rate", "200", "--threads", "--format", "raw", "-o", str(out), "--nonblocking"]
            record = subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(server.process.pid),
                    "--duration",
                    str(int(args.seconds)),
                    *options,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            result = asyncio.run(load(server, args.kind, args.clients, args.seconds + 1))
            if record.wait(60) != 0 or not out.exists():
                raise SystemExit("py-spy could not sample the server (is ptrace allowed here?)")
            threads = split(out.read_text())
        finally:
            stop(server)
    total = sum(sum(counter.values()) for counter in threads.values())
    print(
        f"{args.model} model, {args.kind}, {args.clients} clients, config '{args.config}': "
        f"{result['rps']:.0f} req/s, server CPU {result['server_cpu']:.0f}% of one core, "
        f"load average {os.getloadavg()[0]:.1f}; {total} busy samples"
    )
    print("| thread | what | share of the server's busy samples |\n|---|---|---|")
    for thread, counter in sorted(threads.items(), key=lambda item: -sum(item[1].values())):
        for name, count in counter.most_common():
            if count / total >= 0.005:
                print(f"| {thread} | {name} | {100 * count / total:.1f}% |")


if __name__ == "__main__":
    main()
