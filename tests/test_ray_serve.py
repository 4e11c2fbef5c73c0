"""`siglip serve --ray`: two Ray Serve replicas on a local cluster answer like the in-process server."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from _material import BUNDLED, write_photos
from _ray_material import shutdown_ray
from siglip import Embedder, ModelOptions, SearchIndex
from siglip.tools.serve import ServeSettings

ray = pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    """(index folder, photo files) of a small index."""
    root = tmp_path_factory.mktemp("rayserve")
    files = write_photos(root / "photos")
    embedder = Embedder.from_pretrained(BUNDLED, device="cpu", precision="fp32")
    with SearchIndex(root / "index", embedder) as index:
        index.update([root / "photos"], workers=0, progress=False)
    return root / "index", files


@pytest.fixture(scope="module")
def served(material):
    from fastapi.testclient import TestClient

    from siglip.tools.serve import ray_serve
    from siglip.tools.serve.app import create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, log_to_driver=False
    )  # a new cluster, never one left running
    settings = ServeSettings(max_wait_ms=20)
    ray_serve.deploy(
        BUNDLED, material[0], settings, replicas=2, port=port, model_options=ModelOptions(precision="fp32")
    )
    embedder = Embedder.from_pretrained(BUNDLED, device="cpu", precision="fp32")
    with TestClient(create_app(embedder, material[0], settings)) as local:
        yield f"http://127.0.0.1:{port}", local
    ray_serve.shutdown()
    shutdown_ray()


def test_two_replicas_answer_like_the_in_process_server(served, material):
    from ray import serve

    url, local = served
    replicas = serve.status().applications["siglip"].deployments["siglip"].replica_states
    assert replicas.get("RUNNING") == 2

    texts = {"texts": ["a photo of a cat", "an astronaut", "a rocket"]}
    searches = [{"text": t, "k": 4} for t in ("a cat", "coffee", "a rocket at night", "a man")]
    rocket = next(f for f in material[1] if f.name == "rocket.jpg").read_bytes()

    def ask(_: int) -> tuple:  # concurrent callers, spread by the proxy over both replicas
        with httpx.Client(base_url=url, timeout=60) as client:
            embedded = client.post("/v1/embed/text", json=texts).json()
            found = [client.post("/v1/search", json=s).json()["results"] for s in searches]
            by_image = client.post("/v1/search", files={"file": ("q.jpg", rocket)}, data={"k": "3"}).json()
            thumbnail = client.get(by_image["results"][0]["thumbnail_url"])
            return embedded, found, by_image["results"], thumbnail.content

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(16)))
    expected_embeddings = local.post("/v1/embed/text", json=texts).json()
    expected_found = [local.post("/v1/search", json=s).json()["results"] for s in searches]
    expected_image = local.post("/v1/search", files={"file": ("q.jpg", rocket)}, data={"k": "3"}).json()
    expected_thumbnail = local.get(expected_image["results"][0]["thumbnail_url"]).content
    for embedded, found, by_image, thumbnail in answers:
        assert embedded["model"] == expected_embeddings["model"] == BUNDLED
        np.testing.assert_allclose(embedded["embeddings"], expected_embeddings["embeddings"], atol=1e-5)
        for got, want in zip(found, expected_found, strict=True):
            assert [r["id"] for r in got] == [r["id"] for r in want]
            np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in want], atol=1e-5)
        assert [r["id"] for r in by_image] == [r["id"] for r in expected_image["results"]]
        assert thumbnail == expected_thumbnail
    with httpx.Client(base_url=url) as client:
        assert client.get("/readyz").status_code == 200
        error = client.post("/v1/search", json={"k": 3})
        assert error.status_code == 422 and error.json() == local.post("/v1/search", json={"k": 3}).json()
