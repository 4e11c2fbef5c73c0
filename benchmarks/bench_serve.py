"""`siglip serve` under load: an async load generator (aiohttp), one text or one 224x224 JPEG per request.

    python benchmarks/bench_serve.py [--models tiny base] [--kinds text openai image image64] [--clients 1 8 32 64]
                                     [--seconds 5] [--repeats 2] [--precision auto]
                                     [--config 'NAME [VAR=VALUE ...] [serve options ...]' ...]
                                     [--infinity VENV] [--check]

Every configuration (default: one, `default`, the server with its default options) is started once per model,
all at the same time, on free loopback ports; `VAR=VALUE` words of a configuration are environment variables
of its server process (e.g. `PYTHONPATH=/tmp/before/src` to measure another version of the code). Then, for
each repetition, kind and number of clients, the configurations are measured in turn (alternating, so a
change in the machine's load falls on all of them), and the median over repetitions is reported.

Closed-loop clients: each sends `POST /v1/embed/text` (`{"texts": [one text]}`, kind `text`), `POST
/v1/embeddings` (`{"input": one text}`, kind `openai`) or `POST /v1/embed/image` (one multipart `file` part, a
224x224 JPEG, kind `image`; `{"images": ["data:image/jpeg;base64,..."]}`, kind `image64`) and sends its next
request when answered, for --seconds. Reported:
requests/s, p50 and p99 latency seen by the client, errors (any non-200 or transport failure), the CPU time of
the load generator (this process) and of the server over the run as a percentage of one core (and the server's
per request: what a request costs it, which moves less with the machine's load than the rate), and the mean
size and time of the model calls (from the server's /metrics). The generator is one asyncio loop (uvloop when
installed) with pre-built request bodies: its CPU share shows how far it is from its own limit (100%).

infinity-emb side by side: `--infinity VENV` (made by `scripts/make_infinity_venv.sh`) and configurations
named `infinity` or `infinity-...` (their words are `infinity_emb v2` options, e.g. `--config 'infinity-int8
--dtype int8'`) serve the same checkpoint folder with `VENV/bin/infinity_emb v2 --device cpu`. Its requests
are the same items in its API's shape: `POST /embeddings` with `{"input": one text, "model": ...}` (kinds
text and openai) or `{"input": "data:image/jpeg;base64,...", "modality": "image", ...}` (image and image64).
Its server has no batch metrics (those columns are blank; so are they for a siglip server with several worker
processes, each with its own metrics). With `--check`, before the timed runs, each
server embeds texts of different lengths (one request each, concurrently, so they share batches) and images,
and the lowest cosine of its vectors to transformers' (`get_text_features` with the text padded to the
model's length, as the model was trained, and `get_image_features`) is printed.

"base" is the base16-224 shape with random weights (speed does not depend on the values), written to a
temporary folder with the bundled model's tokenizer; "tiny" is the bundled model.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import math
import os
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import psutil
import torch
from PIL import Image

from _common import SHAPES, machine_line
from siglip import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor, SiglipTokenizer
from siglip.core.hub import BUNDLED_DIR
from siglip.tools.embeddings.background_compile import BackgroundCompile
from siglip.tools.embeddings.embedder import Embedder

TINY = "siglip-tiny-fashion"
BOUNDARY = "siglipbenchboundary"


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


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    url: str
    model: str  # the checkpoint folder or name it serves (infinity's requests name it)

    @property
    def infinity(self) -> bool:
        return is_infinity(self.name)


def is_infinity(name: str) -> bool:
    return name == "infinity" or name.startswith("infinity-")


def start(name: str, model: str, config: str, precision: str, infinity: str | None = None) -> Server:
    """A `siglip serve` process for `model` with the configuration's environment variables and options (or
    infinity-emb's server from the venv `infinity`, for a configuration named `infinity...`)."""
    words = shlex.split(config)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}
    options = []
    for word in words:
        key, sep, value = word.partition("=")
        if sep and not word.startswith("-") and key.isupper():
            env[key] = value
        else:
            options.append(word)
    port = free_port()
    if is_infinity(name):
        if infinity is None:
            raise SystemExit(f"configuration '{name}' needs --infinity VENV (scripts/make_infinity_venv.sh)")
        env.pop("PYTHONPATH", None)
        command = [str(Path(infinity) / "bin" / "infinity_emb"), "v2", "--model-id", model, "--device", "cpu"]
        command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *options]
    else:
        command = [sys.executable, "-m", "siglip", "serve", "--model", model, "--port", str(port)]
        command += ["--precision", precision, "--max-queue", "4096", *options]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return Server(name, process, f"http://127.0.0.1:{port}", model)


async def wait_ready(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(1200):
            try:
                ready = "/health" if server.infinity else "/readyz"
                async with http.get(f"{server.url}{ready}") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if server.process.poll() is not None:
                break
            await asyncio.sleep(0.2)
    server.process.kill()
    raise RuntimeError(f"the server '{server.name}' did not start")


async def wait_compiled(server: Server, precision: str, options: str, folder: str) -> None:
    """For a `siglip serve` that compiles its towers in the background (its default, where the model has
    packages that run faster than its eager towers: the server's own `BackgroundCompile.why_not`, asked here
    of the same checkpoint and precision), wait until its workers answer with compiled towers (at most 10
    minutes), and say how long that took: the runs measure the server once it is settled."""
    if server.infinity or {"--no-compile", "--compile"} & set(options.split()):  # nothing in the background
        return
    why_not = BackgroundCompile(Embedder.from_pretrained(folder, "cpu", precision=precision)).why_not
    if why_not is not None:
        print(f"{server.name}: eager towers ({why_not})")
        return
    started, in_a_row = time.monotonic(), 0
    # a connection per request: each worker process answers with its own towers
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        while in_a_row < 8 and time.monotonic() - started < 600:
            async with http.get(f"{server.url}/v1/info") as response:
                compiled = (await response.json())["compiled"]
            in_a_row = in_a_row + 1 if all(compiled.values()) else 0
            await asyncio.sleep(0.25)
    done = "compiled" if in_a_row == 8 else "NOT compiled (measured as they are)"
    print(f"{server.name}: towers {done} {time.monotonic() - started:.0f} s after the server was ready")


def stop(server: Server) -> None:
    server.process.send_signal(signal.SIGTERM)
    if server.process.wait(60) != 0 and not server.infinity:  # infinity's server exits with -15
        raise RuntimeError(f"the server '{server.name}' exited with {server.process.returncode}")


def jpeg_224(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def image_body(jpeg: bytes) -> bytes:
    """One multipart/form-data body with the JPEG as its `file` part (built once, sent many times)."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + jpeg + f"\r\n--{BOUNDARY}--\r\n".encode()


def data_url(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def bodies(kind: str, count: int, server: Server) -> tuple[str, dict[str, str], list[bytes]]:
    """(path, headers, distinct bodies) of one-item requests of `kind` to `server`."""
    text = "a photo of item {} on a plain background"
    json_type = {"Content-Type": "application/json"}
    if server.infinity:
        if kind in ("text", "openai"):
            items = [{"input": text.format(i), "model": server.model} for i in range(count)]
        else:
            items = [
                {"input": data_url(jpeg_224(i)), "model": server.model, "modality": "image"}
                for i in range(count)
            ]
        return "/embeddings", json_type, [json.dumps(item).encode() for item in items]
    if kind == "image64":
        items = [{"images": [data_url(jpeg_224(i))]} for i in range(count)]
        return "/v1/embed/image", json_type, [json.dumps(item).encode() for item in items]
    if kind == "text":
        texts = [f'{{"texts": ["{text.format(i)}"]}}'.encode() for i in range(count)]
        return "/v1/embed/text", {"Content-Type": "application/json"}, texts
    if kind == "openai":
        texts = [f'{{"input": "{text.format(i)}"}}'.encode() for i in range(count)]
        return "/v1/embeddings", {"Content-Type": "application/json"}, texts
    images = [image_body(jpeg_224(i)) for i in range(count)]
    return "/v1/embed/image", {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}, images


async def load(server: Server, kind: str, clients: int, seconds: float) -> dict[str, float]:
    """Closed-loop clients for `seconds`: rate, latency percentiles, errors, CPU of this process and the
    server's (with its child processes)."""
    path, headers, payloads = bodies(kind, 64, server)
    url = server.url
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=120)
    serving = psutil.Process(server.process.pid)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as http:

        async def client(number: int, deadline: float) -> None:
            nonlocal errors
            sent = 0
            while time.perf_counter() < deadline:
                body = payloads[(number + sent) % len(payloads)]
                sent += 1
                start = time.perf_counter()
                try:
                    async with http.post(path, data=body, headers=headers) as response:
                        await response.read()
                        ok = response.status == 200
                except aiohttp.ClientError:
                    ok = False
                latencies.append(time.perf_counter() - start)
                errors += not ok

        await asyncio.gather(*(client(i, time.perf_counter() + 0.5) for i in range(clients)))  # warm-up
        latencies.clear()
        errors = 0
        own, theirs = resource.getrusage(resource.RUSAGE_SELF), cpu_seconds(serving)
        start = time.perf_counter()
        await asyncio.gather(*(client(i, start + seconds) for i in range(clients)))
        elapsed = time.perf_counter() - start
        own_after, theirs_after = resource.getrusage(resource.RUSAGE_SELF), cpu_seconds(serving)
    latencies.sort()
    own_cpu = own_after.ru_utime + own_after.ru_stime - own.ru_utime - own.ru_stime
    server_cpu = theirs_after - theirs
    return {
        "rps": len(latencies) / elapsed,
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "errors": errors,
        "count": len(latencies),
        "client_cpu": 100 * own_cpu / elapsed,
        "server_cpu": 100 * server_cpu / elapsed,
    }


def cpu_seconds(process: psutil.Process) -> float:
    """CPU seconds of `process` and its living children (a server's model or worker processes)."""
    total = 0.0
    for each in [process, *process.children(recursive=True)]:
        try:
            times = each.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


async def batch_stats(url: str, kind: str) -> tuple[float, float, float]:
    """(model calls, items, seconds) of `kind` batches so far, from /metrics."""
    values = {}
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        for name in ("siglip_batch_size_count", "siglip_batch_size_sum", "siglip_batch_duration_seconds_sum"):
            if line.startswith(name + f'{{kind="{kind}"}}'):
                values[name] = float(line.split()[-1])
    return tuple(
        values.get(name, 0.0)
        for name in ("siglip_batch_size_count", "siglip_batch_size_sum", "siglip_batch_duration_seconds_sum")
    )  # type: ignore[return-value]


async def workers(server: Server) -> int:
    """The server's worker processes (each has its own /metrics)."""
    if server.infinity:
        return 1
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/v1/info") as response:
        return (await response.json()).get("workers", 1)


async def measure(server: Server, kind: str, clients: int, seconds: float) -> dict[str, float]:
    if server.infinity or await workers(server) > 1:  # no batch metrics, or one process's of several
        return {**await load(server, kind, clients, seconds), "per_call": math.nan, "call_ms": math.nan}
    batched = "image" if kind.startswith("image") else "text"
    before = await batch_stats(server.url, batched)
    result = await load(server, kind, clients, seconds)
    after = await batch_stats(server.url, batched)
    calls, items, model_s = (a - b for a, b in zip(after, before, strict=True))
    result["per_call"] = items / calls if calls else 0.0
    result["call_ms"] = 1000 * model_s / calls if calls else 0.0
    return result


CHECK_TEXTS = ("a red dress", "black leather boots with a low heel and a buckle", "shirt",
               "a long blue summer dress with white flowers, short sleeves and a belt at the waist, on a model",
               "sneakers", "a watch", "two white t-shirts folded on a wooden table", "handbag")  # fmt: skip


def reference_vectors(model: str) -> tuple[np.ndarray, np.ndarray]:
    """transformers' unit-length vectors of CHECK_TEXTS (padded to the model's length) and of 8 JPEGs."""
    import transformers

    folder = str(bundled_folder(model))
    reference = transformers.AutoModel.from_pretrained(folder).eval()
    processor = transformers.AutoProcessor.from_pretrained(folder)
    length = reference.config.text_config.max_position_embeddings
    with torch.no_grad():
        texts = processor(text=list(CHECK_TEXTS), padding="max_length", max_length=length, truncation=True,
                          return_tensors="pt")  # fmt: skip
        text = features(reference.get_text_features(input_ids=texts["input_ids"]))
        pixels = processor(
            images=[Image.open(io.BytesIO(jpeg_224(i))) for i in range(8)], return_tensors="pt"
        )
        image = features(reference.get_image_features(pixel_values=pixels["pixel_values"]))
    return (
        torch.nn.functional.normalize(text, dim=-1).numpy(),
        torch.nn.functional.normalize(image, dim=-1).numpy(),
    )


def features(output: object) -> torch.Tensor:
    """transformers 5 returns an output object from get_*_features, 4.x the tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output  # type: ignore[attr-defined]


async def served_vectors(server: Server) -> tuple[np.ndarray, np.ndarray]:
    """The server's vectors of CHECK_TEXTS and of the 8 JPEGs, one item per request, all sent at once."""
    async with aiohttp.ClientSession(server.url) as http:

        async def one(path: str, body: dict) -> list[float]:
            async with http.post(path, json=body) as response:
                answer = await response.json()
                if response.status != 200:
                    raise RuntimeError(f"{server.name}: {path} answered {response.status}: {answer}")
            return answer["data"][0]["embedding"] if "data" in answer else answer["embeddings"][0]

        jpegs = [data_url(jpeg_224(i)) for i in range(8)]
        if server.infinity:
            texts = [one("/embeddings", {"input": text, "model": server.model}) for text in CHECK_TEXTS]
            images = [
                one("/embeddings", {"input": j, "model": server.model, "modality": "image"}) for j in jpegs
            ]
        else:
            texts = [one("/v1/embeddings", {"input": text}) for text in CHECK_TEXTS]
            images = [one("/v1/embed/image", {"images": [j]}) for j in jpegs]
        return np.array(await asyncio.gather(*texts)), np.array(await asyncio.gather(*images))


async def check(servers: list[Server], model: str) -> None:
    """Print each server's lowest cosine to transformers' vectors, for texts and for images."""
    text, image = reference_vectors(model)
    for server in servers:
        served_text, served_image = await served_vectors(server)
        print(
            f"{server.name}: lowest cosine to transformers over {len(CHECK_TEXTS)} texts of 1-20 words "
            f"{float(np.min(np.sum(served_text * text, axis=1))):.6f}, over 8 images "
            f"{float(np.min(np.sum(served_image * image, axis=1))):.6f}",
            flush=True,
        )


def bundled_folder(model: str) -> Path:
    """The checkpoint folder of `model` (a bundled model's name or a folder)."""
    return BUNDLED_DIR / model if (BUNDLED_DIR / model).is_dir() else Path(model)


def median_row(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


async def bench(args: argparse.Namespace, name: str, model: str) -> None:
    configs = dict((shlex.split(config)[0], " ".join(shlex.split(config)[1:])) for config in args.config) or {
        "default": ""
    }
    if args.infinity and not any(is_infinity(label) for label in configs):
        configs["infinity"] = ""
    folder = str(bundled_folder(model))
    servers = [
        start(label, folder if is_infinity(label) else model, options, args.precision, args.infinity)
        for label, options in configs.items()
    ]
    try:
        await asyncio.gather(*(wait_ready(server) for server in servers))
        await asyncio.gather(
            *(wait_compiled(server, args.precision, configs[server.name], folder) for server in servers)
        )
        if args.check:
            await check(servers, model)
        results: dict[tuple[str, int, str], list[dict[str, float]]] = {}
        for _ in range(args.repeats):
            for kind in args.kinds:
                for clients in args.clients:
                    for server in servers:
                        run = await measure(server, kind, clients, args.seconds)
                        results.setdefault((kind, clients, server.name), []).append(run)
        for kind in args.kinds:
            print(f"\n{name} model, {kind}: one item per request, {args.precision}, median of {args.repeats}, "
                  f"{args.seconds:g} s runs")  # fmt: skip
            print(f"{machine_line()}; load average {os.getloadavg()[0]:.1f} (2-core machine)")
            print(
                "| clients | config | req/s | p50 ms | p99 ms | errors | items per model call "
                "| ms per model call | server CPU % | server CPU ms per request | load generator CPU % |"
            )
            print("|---|---|---|---|---|---|---|---|---|---|---|")
            for clients in args.clients:
                for server in servers:
                    runs = results[(kind, clients, server.name)]
                    row = median_row(runs)
                    digits = 0 if row["rps"] >= 100 else 1  # a slow model's few requests a second
                    spread = "/".join(f"{run['rps']:.{digits}f}" for run in runs)
                    print(
                        f"| {clients} | {server.name} | {row['rps']:.{digits}f} ({spread}) | {1000 * row['p50']:.1f} | "
                        f"{1000 * row['p99']:.1f} | {sum(run['errors'] for run in runs):.0f} of "
                        f"{sum(run['count'] for run in runs):.0f} | {blank_nan(row['per_call'])} | "
                        f"{blank_nan(row['call_ms'])} | {row['server_cpu']:.0f} | "
                        f"{10 * row['server_cpu'] / row['rps']:.2f} | {row['client_cpu']:.0f} |",
                        flush=True,
                    )
    finally:
        for server in servers:
            stop(server)


def blank_nan(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "base"], choices=["tiny", "base"])
    parser.add_argument(
        "--kinds", nargs="+", default=["text", "image"], choices=["text", "openai", "image", "image64"]
    )
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--precision", default="auto")
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        help="'NAME [VAR=VALUE ...] [serve options]': a server configuration to measure (repeatable)",
    )
    parser.add_argument(
        "--infinity", metavar="VENV", help="infinity-emb's venv (scripts/make_infinity_venv.sh)"
    )
    parser.add_argument(
        "--check", action="store_true", help="compare each server's vectors with transformers'"
    )
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model = TINY if name == "tiny" else str(base_checkpoint(Path(tmp) / "base"))
            asyncio.run(bench(args, name, model))


if __name__ == "__main__":
    main()
