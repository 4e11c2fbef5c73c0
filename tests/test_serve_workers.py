"""`siglip serve --workers`: several processes on one port, each answering with the model's own vectors, all
stopped by one SIGTERM; and the rule of `--workers auto`."""

from __future__ import annotations

import os
import signal
import threading
import time
from types import SimpleNamespace

import httpx
import numpy as np
import psutil
import pytest

from _material import BUNDLED
from _serving import start_server
from siglip import Embedder
from siglip.tools.cli import serve as serve_cli


def test_two_workers_share_the_port_answer_right_and_stop_together():
    process, url = start_server(None, "--workers", "2")
    try:
        children = psutil.Process(process.pid).children(recursive=True)
        workers = [
            c for c in children if "siglip" in " ".join(c.cmdline()) or "spawn" in " ".join(c.cmdline())
        ]
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
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert f"2 worker processes, {max(1, (os.cpu_count() or 1) // 2)} torch threads each" in output
    assert len(workers) == 1 and all(
        not w.is_running() or w.status() == psutil.STATUS_ZOMBIE for w in workers
    )
    expected = Embedder.from_pretrained(BUNDLED, device="cpu", precision="fp32").embed_texts(texts)
    assert all(answers[i].status_code == 200 for i in range(len(texts))), output
    got = [answers[i].json()["data"][0]["embedding"] for i in range(len(texts))]
    np.testing.assert_allclose(got, expected, atol=1e-5)


class _TimedModel:
    """An embedder whose texts take `ms` milliseconds each."""

    def __init__(self, ms: float) -> None:
        self.ms = ms
        self.device = SimpleNamespace(type="cpu")

    def embed_texts(self, texts: list[str]) -> None:
        time.sleep(self.ms * len(texts) / 1000)


@pytest.mark.parametrize(("ms", "cores", "workers"), [(0.0, 2, 2), (0.0, 4, 4), (0.0, 1, 1), (12.0, 2, 1)])
def test_auto_workers_is_one_per_core_for_a_fast_model_and_one_for_a_slow_one(
    monkeypatch, ms, cores, workers
):
    monkeypatch.setattr(serve_cli.os, "cpu_count", lambda: cores)
    assert serve_cli._auto_workers(_TimedModel(ms)) == workers


def test_workers_option_words(capsys):
    assert serve_cli._workers("auto") is None and serve_cli._workers("3") == 3
    from siglip.tools.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--workers", "0"])
    assert "--workers" in capsys.readouterr().err
