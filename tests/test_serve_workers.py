"""`siglip serve --workers`: several processes on one port, each answering with the model's own vectors, all
stopped by one SIGTERM; and the rule of `--workers auto`."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import httpx
import numpy as np
import psutil
import pytest
import torch
import uvicorn

from _material import BUNDLED
from _serving import start_server
from siglip import Embedder, SiglipConfig
from siglip.core.cpu import usable_cores
from siglip.errors import UsageError
from siglip.tools.cli import serve as serve_cli


def test_two_workers_share_the_port_answer_right_and_stop_together():
    process, url = start_server(None, "--workers", "2")
    try:
        workers = [_worker_of(process)]
        assert httpx.get(f"{url}/v1/info", timeout=10).json()["workers"] == 2
        texts = [f"a photo of item {i}" for i in range(12)]
        answers: dict[int, httpx.Response] = {}

        def client(i: int) -> None:  # a connection of its own: the two processes share the connections
            with httpx.Client(base_url=url, timeout=60) as http:
                answers[i] = http.post("/v1/embeddings", json={"input": texts[i]})

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(texts))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        held = _connections_held_after_a_burst(url, [psutil.Process(process.pid), *workers], 64)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    threads = max(1, usable_cores() // 2)
    assert f"2 worker processes, {threads} torch threads each, on {url}" in output
    assert all(not w.is_running() or w.status() == psutil.STATUS_ZOMBIE for w in workers)
    expected = Embedder.from_pretrained(BUNDLED, device="cpu", precision="fp32").embed_texts(texts)
    assert all(answers[i].status_code == 200 for i in range(len(texts))), output
    got = [answers[i].json()["data"][0]["embedding"] for i in range(len(texts))]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert sum(held) == 64
    if sys.platform == "linux":  # a socket per worker: the kernel spreads connections (P(< 16 of 64) ~ 3e-5)
        assert min(held) >= 16, held


def _connections_held_after_a_burst(url: str, processes: list[psutil.Process], count: int) -> list[int]:
    """The connections each of `processes` has accepted once `count` were opened to `url` at once."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    _await_listeners(int(port), len(processes))  # a worker listens a moment after the first one answers
    burst = [socket.create_connection((host, int(port)), timeout=10) for _ in range(count)]
    try:
        deadline, held = time.monotonic() + 30, [0] * len(processes)
        while sum(held) < count and time.monotonic() < deadline:
            time.sleep(0.1)
            held = [
                sum(
                    c.status == psutil.CONN_ESTABLISHED and c.laddr.port == int(port)
                    for c in p.net_connections("tcp")
                )
                for p in processes
            ]
        return held
    finally:
        for connection in burst:
            connection.close()


def test_a_worker_that_dies_leaves_every_new_connection_to_the_others():
    # each worker has a socket of its own; once one dies, no new connection may be sent to its socket
    process, url = start_server(None, "--workers", "2")
    try:
        worker = _worker_of(process)
        port = int(url.rsplit(":", 1)[1])
        assert _await_listeners(port, 2) == 2
        worker.kill()
        # its main thread shows as a zombie before its other threads have let go of the socket: wait for that
        assert _await_listeners(port, 1) == 1
        statuses = []
        for i in range(24):  # a connection each: 24 chances to be sent to the dead worker's socket
            with httpx.Client(base_url=url, timeout=10) as http:
                statuses.append(http.post("/v1/embeddings", json={"input": f"item {i}"}).status_code)
        assert statuses == [200] * 24
    finally:
        process.kill()
        process.communicate(timeout=60)


def test_workers_stop_when_the_first_process_is_killed():
    # SIGKILL leaves the first process no chance to stop the others: they must notice and stop themselves
    process, url = start_server(None, "--workers", "2")
    worker = _worker_of(process)
    port = int(url.rsplit(":", 1)[1])
    process.kill()
    output, _ = process.communicate(timeout=60)  # once the worker, which shares its stdout, has exited too
    worker.wait(timeout=30)
    assert f"Finished server process [{worker.pid}]" in output  # uvicorn's own stop, as on SIGTERM
    assert _listeners(port) == 0


def _worker_of(process: subprocess.Popen) -> psutil.Process:
    """The one worker process a server with `--workers 2` spawned (not multiprocessing's resource tracker)."""
    (worker,) = (
        c
        for c in psutil.Process(process.pid).children(recursive=True)
        if "spawn_main" in " ".join(c.cmdline())
    )
    return worker


def _await_listeners(port: int, count: int, timeout_s: float = 30) -> int:
    """How many sockets listen on TCP `port` once `count` do, or once `timeout_s` has passed."""
    deadline = time.monotonic() + timeout_s
    while (listening := _listeners(port)) != count and time.monotonic() < deadline:
        time.sleep(0.1)
    return listening


def _listeners(port: int) -> int:
    """How many sockets on this machine listen on TCP `port` (/proc/net/tcp: no privileges needed)."""
    return sum(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in psutil.net_connections("tcp"))


def test_workers_listen_on_sockets_of_their_own_on_one_port():
    sockets = serve_cli._listening_sockets(uvicorn.Config(None, host="127.0.0.1", port=0), 3)
    try:
        ports = {sock.getsockname()[1] for sock in sockets}
        assert len(ports) == 1 and ports != {0}
        assert len({sock.fileno() for sock in sockets}) == (3 if sys.platform == "linux" else 1)
        for sock in set(sockets):
            sock.listen()
        # a second server on the same port is refused, as with one socket (not let into the first one's group)
        (port,) = ports
        with pytest.raises((UsageError, SystemExit)):
            serve_cli._listening_sockets(uvicorn.Config(None, host="127.0.0.1", port=port), 2)
    finally:
        for sock in set(sockets):
            sock.close()
    with socket.socket() as taken:  # a port another program listens on: refused, naming it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises((UsageError, SystemExit)) as refused:
            serve_cli._listening_sockets(uvicorn.Config(None, host="127.0.0.1", port=port), 2)
        if sys.platform == "linux":
            assert f"127.0.0.1:{port}" in str(refused.value)


def _text_tower(hidden: int, layers: int, length: int) -> SimpleNamespace:
    """An embedder on CPU whose SigLIP text tower has this shape (its config: the rule counts no weights)."""
    config = SiglipConfig(
        text_config=dict(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=hidden // 64, max_position_embeddings=length),
    )  # fmt: skip
    return SimpleNamespace(model=SimpleNamespace(config=config), device=torch.device("cpu"))


def test_auto_workers_is_one_per_core_for_a_small_text_tower_and_one_for_a_base_size_one(monkeypatch):
    tiny = Embedder.from_pretrained(
        BUNDLED, device="cpu", precision="int8"
    )  # int8: weights outside parameters()
    base_text = _text_tower(768, 12, 64)  # base16-224's text tower: 2 x 85M weights x 64 positions = 11 GFLOP
    small_text = _text_tower(256, 4, 64)  # 2 x 3.2M x 64 = 0.4 GFLOP
    for cores, expected in ((2, [2, 2, 1]), (4, [4, 4, 1]), (1, [1, 1, 1])):
        monkeypatch.setattr(serve_cli, "usable_cores", lambda cores=cores: cores)
        assert [serve_cli._auto_workers(e) for e in (tiny, small_text, base_text)] == expected


def test_workers_option_words(capsys):
    from siglip.tools.cli import build_parser, main

    def workers(word: str) -> int | None:
        return build_parser().parse_args(["serve", "--workers", word]).workers

    assert workers("auto") is None and workers("3") == 3

    with pytest.raises(SystemExit):
        main(["serve", "--workers", "0"])
    assert "--workers" in capsys.readouterr().err
