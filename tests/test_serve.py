"""`siglip serve`: every endpoint against the library's own results, every error status, the batcher, and the
real server in a subprocess stopped with SIGTERM while requests are in flight."""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from _material import BUNDLED, write_photos
from _serving import start_server
from siglip import Embedder, SearchIndex, pipeline
from siglip.tools.cli import main
from siglip.tools.search.thumbnails import thumbnail_jpeg
from siglip.tools.serve import Batcher, QueueFull, ServeSettings, Timeout, create_app
from siglip.tools.serve.batcher import wait_until

LABELS = ["an astronaut", "a cat", "a cup of coffee", "a rocket"]
SETTINGS = ServeSettings(max_upload_bytes=2 * 2**20, max_image_pixels=1_000_000, max_items=8, max_k=50)


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.from_pretrained(BUNDLED, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def material(tmp_path_factory, embedder) -> tuple[Path, list[Path]]:
    """(index folder, indexed photos): scikit-image's photos, indexed with the fp32 model."""
    root = tmp_path_factory.mktemp("serve")
    files = write_photos(root / "photos", corrupt=False)
    with SearchIndex(root / "index", embedder) as index:
        index.update([root / "photos"], workers=0, progress=False)
    return root / "index", files


@pytest.fixture(scope="module")
def client(embedder, material):
    with TestClient(create_app(embedder, material[0], SETTINGS)) as client:
        yield client


@pytest.fixture(scope="module")
def index(embedder, material):
    with SearchIndex(material[0], embedder) as index:
        yield index


def test_the_direct_embedding_routes_answer_count_and_document_as_the_fastapi_ones(
    client, embedder, material
):
    """/v1/embeddings, /v1/embed/text and /v1/embed/image are answered by plain Starlette routes
    (routes/embed.py): labelled in the metrics by their path, listed in the OpenAPI schema, and refusing what
    the FastAPI routes refuse."""
    from siglip.tools.serve.routes.embed import DIRECT_ROUTES

    assert client.app.router.routes[: len(DIRECT_ROUTES)] == DIRECT_ROUTES
    assert {route.path for route in DIRECT_ROUTES} == {"/v1/embeddings", "/v1/embed/text", "/v1/embed/image"}
    texts = ["a red dress", "shoes"]
    answer = client.post("/v1/embed/text", json={"texts": texts})
    np.testing.assert_allclose(answer.json()["embeddings"], embedder.embed_texts(texts), atol=1e-5)
    assert client.post("/v1/embeddings", json={"input": "shoes"}).status_code == 200
    data = material[1][0].read_bytes()
    for request in ({"json": {"images": [_b64(data)]}}, {"files": {"file": ("x.jpg", data, "image/jpeg")}}):
        answer = client.post("/v1/embed/image", **request)
        np.testing.assert_allclose(answer.json()["embeddings"], embedder.embed_images([data]), atol=1e-5)
    _error(client.post("/v1/embed/image", json={"images": []}), 422, "no image")
    metrics = client.get("/metrics").text
    for path in ("/v1/embed/text", "/v1/embeddings", "/v1/embed/image"):
        assert f'siglip_requests_total{{method="POST",route="{path}",status="200"}}' in metrics
        assert path in client.get("/openapi.json").json()["paths"]
    _error(client.get("/v1/embeddings"), 405)
    _error(client.post("/v1/embed/text", content=b"[1"), 415, "application/json")
    _error(client.post("/v1/embed/text", json={"texts": []}), 422, "texts")
    _error(client.post("/v1/embeddings", json={"input": "x", "colour": 1}), 422, "colour")


def _error(response: httpx.Response, status: int, *phrases: str) -> str:
    """The message of a JSON error with this status, checked to contain each phrase."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["status"] == status
    for phrase in phrases:
        assert phrase in error["message"]
    return error["message"]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- results equal the library's ----------------------------------------------------------------------------
def test_text_embeddings_and_the_openai_api_equal_embed_texts(client, embedder):
    texts = ["a photo of a cat", "an astronaut", "ünïcödé & <b>markup</b> " * 3]
    expected = embedder.embed_texts(texts)

    answer = client.post("/v1/embed/text", json={"texts": texts}).json()
    assert (answer["model"], answer["dims"]) == (BUNDLED, embedder.dims)
    np.testing.assert_allclose(answer["embeddings"], expected, atol=1e-5)

    openai = client.post("/v1/embeddings", json={"input": texts, "model": BUNDLED}).json()
    assert openai["object"] == "list" and openai["model"] == BUNDLED
    assert [d["index"] for d in openai["data"]] == [0, 1, 2]
    np.testing.assert_allclose([d["embedding"] for d in openai["data"]], expected, atol=1e-5)
    positions = embedder.model.config.text_config.max_position_embeddings
    with pytest.warns(UserWarning, match="tokens"):  # the markup text is longer than the model reads
        lengths = [len(ids) for ids in embedder.processor.tokenizer(texts)["input_ids"]]
    tokens = sum(min(length, positions) for length in lengths)
    assert tokens < sum(lengths)
    assert openai["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}

    packed = client.post("/v1/embeddings", json={"input": texts[0], "encoding_format": "base64"}).json()
    vector = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vector, expected[0], atol=1e-5)

    _error(client.post("/v1/embeddings", json={"input": "x", "model": "gpt-4"}), 404, "'gpt-4' is not served")
    _error(client.post("/v1/embeddings", json={"input": "x", "dimensions": 3}), 400, "have 128")
    _error(client.post("/v1/embeddings", json={"input": [[1, 2, 3]]}), 422, "input")


def test_image_embeddings_from_uploads_and_base64_equal_embed_images(client, embedder, material):
    files = material[1]
    datas = [f.read_bytes() for f in files[:3]]
    expected = embedder.embed_images(datas)

    uploads = [("file", (f"photo{i}.jpg", data, "image/jpeg")) for i, data in enumerate(datas)]
    answer = client.post("/v1/embed/image", files=uploads).json()
    np.testing.assert_allclose(answer["embeddings"], expected, atol=1e-5)

    as_json = {"images": [_b64(datas[0]), "data:image/jpeg;base64," + _b64(datas[1]), _b64(datas[2])]}
    np.testing.assert_allclose(
        client.post("/v1/embed/image", json=as_json).json()["embeddings"], expected, atol=1e-5
    )
    # the PNG sent under a text file's name and type is still an image: its bytes decide
    png = files[-1].read_bytes()
    renamed = client.post("/v1/embed/image", files={"file": ("notes.txt", png, "text/plain")}).json()
    np.testing.assert_allclose(renamed["embeddings"], embedder.embed_images([png]), atol=1e-5)


def test_classify_equals_the_pipeline(client, embedder, material):
    photo = next(f for f in material[1] if f.name == "chelsea.jpg").read_bytes()
    classifier = pipeline(model=embedder)
    templates = ["a photo of {}.", "a picture of {}"]

    answer = client.post("/v1/classify", files={"file": ("cat.jpg", photo)}, data={"labels": LABELS}).json()
    _assert_same_labels(answer["results"], classifier(photo, candidate_labels=LABELS))

    ensembled = client.post(
        "/v1/classify", json={"image": _b64(photo), "labels": LABELS, "templates": templates}
    ).json()
    _assert_same_labels(
        ensembled["results"], classifier(photo, candidate_labels=LABELS, hypothesis_template=templates)
    )

    _error(client.post("/v1/classify", files={"file": ("c.jpg", photo)}), 422, "labels")
    _error(client.post("/v1/classify", json={"image": _b64(photo), "labels": [" "]}), 400, "non-empty string")
    _error(
        client.post("/v1/classify", json={"image": _b64(photo), "labels": ["a"], "templates": ["no slot"]}),
        400,
        "must contain '{}'",
    )
    _error(client.post("/v1/classify", json={"labels": ["a"]}), 422, "exactly one image")


def _assert_same_labels(got: list[dict], expected: list[dict]) -> None:
    assert [r["label"] for r in got] == [r["label"] for r in expected]
    np.testing.assert_allclose(
        [r["score"] for r in got], [r["score"] for r in expected], rtol=1e-4, atol=1e-7
    )


def test_search_by_text_image_and_id_equals_the_index(client, index, material):
    files = material[1]
    by_text = client.post("/v1/search", json={"text": "a cat on a sofa", "k": 3}).json()
    _assert_same_hits(by_text["results"], index.search_text("a cat on a sofa", k=3), index)
    assert by_text["query"] == {"text": "a cat on a sofa"}

    rocket = next(f for f in files if f.name == "rocket.jpg").read_bytes()
    by_image = client.post("/v1/search", files={"file": ("q.jpg", rocket)}, data={"k": "10"}).json()
    _assert_same_hits(by_image["results"], index.search_image(rocket, k=10), index)
    assert len(by_image["results"]) == len(files)  # k beyond the index size gives all

    first = by_image["results"][0]["id"]
    by_id = client.post("/v1/search", json={"id": first, "k": 2}).json()
    _assert_same_hits(by_id["results"], index.search(index.entry(first)[1], k=2)[0], index)
    assert by_id["results"][0]["id"] == first and by_id["query"] == {"id": first}

    _error(client.post("/v1/search", json={"k": 3}), 422, "exactly one of text, image or id; got none")
    _error(client.post("/v1/search", json={"text": "a", "id": 1}), 422, "got text, id")
    _error(client.post("/v1/search", json={"text": "a", "k": 0}), 422, "k")
    _error(client.post("/v1/search", json={"text": "a", "k": 51}), 422, "at most 50")


def _assert_same_hits(results: list[dict], hits, index) -> None:
    assert [r["id"] for r in results] == [h.id for h in hits]
    np.testing.assert_allclose([r["score"] for r in results], [h.score for h in hits], atol=1e-5)
    for result, hit in zip(results, hits, strict=True):
        assert result["name"] == Path(hit.path).name
        assert result["thumbnail_url"] == f"/v1/images/{hit.id}/thumbnail"
        assert result["image_url"] == f"/v1/images/{hit.id}"
        assert index.entry(hit.id)[0] == hit.path


def test_thumbnails_and_images_are_addressed_by_id(client, index, material):
    for path in material[1]:
        hit = index.search_image(str(path), k=1)[0]
        thumbnail = client.get(f"/v1/images/{hit.id}/thumbnail")
        assert thumbnail.headers["content-type"] == "image/jpeg"
        assert thumbnail.content == thumbnail_jpeg(str(path), 256)
        assert max(Image.open(io.BytesIO(thumbnail.content)).size) <= 256
        full = client.get(f"/v1/images/{hit.id}")
        assert full.content == path.read_bytes()
        assert full.headers["content-type"] == ("image/png" if path.suffix == ".png" else "image/jpeg")


def test_info_health_readiness_and_metrics(client, index):
    info = client.get("/v1/info").json()
    assert (info["model"], info["dims"], info["index"]) == (BUNDLED, 128, {"size": len(index)})
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}

    client.get("/v1/images/1/thumbnail")
    client.get("/v1/images/424242/thumbnail")
    client.post("/v1/search", json={"text": "a cat on a sofa", "k": 1})  # its own: tests may run in any order
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'siglip_requests_total{method="GET",route="/v1/images/{image_id}/thumbnail",status="200"}' in text
    assert 'route="/v1/images/{image_id}/thumbnail",status="404"' in text
    assert "424242" not in text  # routes by template: the label set cannot grow with the requests
    assert 'siglip_request_duration_seconds_bucket{le="0.005",route="/v1/search"}' in text
    assert 'siglip_batch_size_count{kind="text"}' in text and 'siglip_queue_depth{kind="image"} 0.0' in text


def test_concurrent_requests_share_model_calls(embedder, material):
    settings = ServeSettings(max_batch_size=16, max_wait_ms=200)
    texts = [f"photo number {i}" for i in range(12)]
    with TestClient(create_app(embedder, None, settings)) as client:
        answers: dict[int, list[float]] = {}

        def ask(i: int) -> None:
            answers[i] = client.post("/v1/embed/text", json={"texts": [texts[i]]}).json()["embeddings"][0]

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(texts))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        metrics = client.get("/metrics").text
    np.testing.assert_allclose(
        [answers[i] for i in range(len(texts))], embedder.embed_texts(texts), atol=1e-5
    )
    calls = float(_metric(metrics, 'siglip_batch_size_count{kind="text"}'))
    assert float(_metric(metrics, 'siglip_batch_size_sum{kind="text"}')) == len(texts)
    assert calls < len(texts) / 2  # 12 requests arriving within the 200 ms wait share a few model calls


def _metric(text: str, name: str) -> str:
    return next(line.split()[-1] for line in text.splitlines() if line.startswith(name))


# --- errors -------------------------------------------------------------------------------------------------
def test_bad_requests_get_json_errors_with_the_right_status(client, material):
    photo = material[1][0].read_bytes()
    _error(
        client.post("/v1/embed/text", content=b"{not json", headers={"content-type": "application/json"}),
        400,
        "not valid JSON",
    )
    _error(
        client.post("/v1/embed/image", json={"images": ["@@not base64@@"]}),
        400,
        "images[0] is not valid base64",
    )
    _error(client.post("/v1/embed/text", json={"texts": []}), 422, "texts")
    _error(client.post("/v1/embed/text", json={"text": ["typo"]}), 422, "texts")
    _error(client.post("/v1/embed/text", json={"texts": ["x"] * 9}), 413, "9 texts in one request")
    _error(
        client.post("/v1/embed/image", content=photo, headers={"content-type": "image/jpeg"}),
        415,
        "multipart/form-data",
    )
    _error(client.post("/v1/embed/image", files={"x": (None, "1")}), 422, "Extra inputs")
    _error(client.post("/v1/embed/image", json={}), 422, "no image")
    _error(client.get("/v1/nothing-here"), 404, "no such endpoint: /v1/nothing-here")
    _error(client.get("/v1/search"), 405)
    truncated = ("half.jpg", photo[: len(photo) // 2])
    _error(client.post("/v1/embed/image", files={"file": truncated}), 422, "upload 'half.jpg' cannot be read")


def test_uploads_are_judged_by_their_bytes_and_size(client, material):
    _error(
        client.post(
            "/v1/embed/image", files={"file": ("cat.jpg", b"just some text, not a JPEG", "image/jpeg")}
        ),
        415,
        "upload 'cat.jpg' is not an image",
    )
    _error(
        client.post("/v1/classify", files={"file": ("empty.png", b"")}, data={"labels": "a"}), 400, "is empty"
    )

    oversized = ("big.jpg", os.urandom(3 * 2**20))
    _error(
        client.post("/v1/embed/image", files={"file": oversized}),
        413,
        "larger than the limit of 2097152 bytes",
    )

    def chunks():  # no Content-Length: refused once the bytes received pass the limit
        for _ in range(40):
            yield b"\0" * 2**16

    streamed = client.post("/v1/embed/text", content=chunks(), headers={"content-type": "application/json"})
    _error(streamed, 413, "larger than the limit")

    bomb = io.BytesIO()
    Image.new("1", (9000, 9000)).save(bomb, format="PNG")  # 81 million pixels
    assert len(bomb.getvalue()) < 20_000
    _error(client.post("/v1/embed/image", files={"file": ("bomb.png", bomb.getvalue())}), 422, "9000 x 9000")
    big = io.BytesIO()
    Image.new("RGB", (1001, 1000)).save(big, format="PNG")
    _error(
        client.post("/v1/search", json={"image": _b64(big.getvalue())}), 422, "more than the limit of 1000000"
    )


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/images/424242", 404),
        ("/v1/images/424242/thumbnail", 404),
        ("/v1/images/..%2F..%2F..%2Fetc%2Fpasswd", 404),
        ("/v1/images/%2Fetc%2Fpasswd/thumbnail", 404),
        ("/v1/images/..%5C..%5Cwin.ini", 400),
        ("/v1/images/1.jpg/thumbnail", 400),
        ("/v1/images/-1", 400),
        ("/v1/images/%20/thumbnail", 400),
        ("/v1/images/%D9%A3", 400),  # an Arabic-Indic digit: decimal to Python, not an id
    ],
)
def test_unknown_and_path_like_ids_are_refused(client, path, status):
    _error(client.get(path), status)


def test_search_refuses_path_like_queries(client):
    _error(client.post("/v1/search", json={"id": "../../etc/passwd"}), 422, "id")
    _error(
        client.post("/v1/search", json={"path": "/etc/passwd"}), 422, "path: Extra inputs are not permitted"
    )


def test_without_an_index_search_and_images_are_404(embedder):
    with TestClient(create_app(embedder)) as client:
        assert client.get("/v1/info").json()["index"] is None
        _error(client.post("/v1/search", json={"text": "a cat"}), 404, "no index")
        _error(client.get("/v1/images/1/thumbnail"), 404, "no index")


def test_a_full_queue_and_a_timeout_answer_503_with_retry_after(embedder):
    with TestClient(create_app(embedder, None, ServeSettings(max_queue=2))) as client:
        full = client.post("/v1/embed/text", json={"texts": ["a", "b", "c"]})
        _error(full, 503, "the queue is full (2 items waiting)")
        assert full.headers["retry-after"] == "1"
    with TestClient(create_app(embedder, None, ServeSettings(timeout_s=1e-6))) as client:
        late = client.post("/v1/embed/text", json={"texts": ["a"]})
        _error(late, 503, "no answer within 1e-06 s")
        assert late.headers["retry-after"] == "1"


# --- security -----------------------------------------------------------------------------------------------
def test_an_api_key_guards_every_api_route(embedder, material):
    with TestClient(create_app(embedder, material[0], ServeSettings(api_key="s3cret"))) as client:
        for method, path in [("get", "/v1/info"), ("get", "/metrics"), ("get", "/v1/images/1/thumbnail")]:
            _error(getattr(client, method)(path), 401, "no API key")
            _error(
                getattr(client, method)(path, headers={"Authorization": "Bearer wrong"}),
                401,
                "a wrong API key",
            )
        _error(client.post("/v1/embed/text", json={"texts": ["a"]}, headers={"X-API-Key": "s3cre"}), 401)
        assert client.get("/v1/info", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/v1/images/1/thumbnail", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get("/v1/info", headers={"Cookie": "siglip_api_key=s3cret"}).status_code == 200
        assert client.get("/healthz").status_code == 200 and client.get("/").status_code == 200


def test_a_non_loopback_bind_needs_an_api_key(capsys, monkeypatch):
    monkeypatch.delenv("SIGLIP_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--model", BUNDLED]) == 2
    assert "binding 0.0.0.0 exposes the server to other machines: give --api-key" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's, raised by the limit
def test_max_image_pixels_is_the_one_limit_and_max_pixels_its_old_name(embedder, tmp_path, monkeypatch):
    """The server and the processor share one limit: Pillow's (by default) refuses nothing below it."""
    import uvicorn

    Image.new("RGB", (300, 200), "blue").save(tmp_path / "big.png")
    expected = embedder.embed_images([tmp_path / "big.png"])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)  # Pillow's limit (89 million), scaled down
    answers, processors = [], []

    def serve_one_request(
        server: uvicorn.Server, sockets: None = None
    ) -> None:  # in place of listening on a port
        with TestClient(server.config.app) as client:
            processors.append(client.app.state.service.embedder.processor.image_processor)
            answers.append(
                client.post(
                    "/v1/embed/image", files={"file": ("big.png", (tmp_path / "big.png").read_bytes())}
                )
            )

    monkeypatch.setattr(uvicorn.Server, "run", serve_one_request)
    monkeypatch.setattr(signal, "signal", lambda *_: None)  # serve's SIGTERM handler stays out of pytest
    serve = ["serve", "--model", BUNDLED, "--precision", "fp32", "--workers", "1"]
    assert main([*serve, "--max-image-pixels", "60000"]) == 0
    assert answers[0].status_code == 200, answers[0].text
    np.testing.assert_allclose(answers[0].json()["embeddings"], expected, atol=1e-5)
    assert main([*serve, "--max-pixels", "59999"]) == 0
    _error(answers[1], 422, "upload 'big.png' has 300 x 200 = 60000 pixels, more than the limit of 59999")
    assert [p.max_image_pixels for p in processors] == [60_000, 59_999]


def test_cors_is_off_unless_asked_for(embedder):
    preflight = {"Origin": "https://example.org", "Access-Control-Request-Method": "POST"}
    with TestClient(create_app(embedder)) as client:
        assert (
            "access-control-allow-origin" not in client.options("/v1/embed/text", headers=preflight).headers
        )
        assert "access-control-allow-origin" not in client.get("/v1/info", headers=preflight).headers
    with TestClient(
        create_app(embedder, None, ServeSettings(cors_origins=("https://example.org",)))
    ) as client:
        answer = client.options("/v1/embed/text", headers=preflight)
        assert answer.headers["access-control-allow-origin"] == "https://example.org"


def test_the_page_and_docs_load_nothing_from_other_hosts(client):
    page = client.get("/")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    for text in [page.text, client.get("/static/app.js").text, client.get("/static/app.css").text]:
        assert "http://" not in text and "https://" not in text
    assert "innerHTML" not in client.get("/static/app.js").text  # results are set as text, never parsed
    docs = client.get("/docs").text
    assets = [part.split('"')[1] for part in docs.split("src=")[1:] + docs.split("href=")[1:]]
    assert assets and all(a.startswith("/") for a in assets), assets
    assert all(client.get(a).status_code == 200 for a in assets)


# --- the batcher ----------------------------------------------------------------------------------------------
def _batcher(calls: list[list[int]], run_s: float = 0.01, **options) -> Batcher[int, int]:
    from concurrent.futures import ThreadPoolExecutor

    def square(items: list[int]) -> list[int]:
        calls.append(items)
        if -1 in items:
            raise ValueError("no negative ones")
        time.sleep(run_s)
        return [i * i for i in items]

    return Batcher(square, ThreadPoolExecutor(1), **options)


def test_the_batcher_gathers_items_up_to_its_size_and_keeps_their_order():
    async def scenario():
        calls: list[list[int]] = []
        batcher = _batcher(calls, max_batch_size=4, max_wait_s=0.05)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit([i]) for i in range(10)), batcher.submit([20, 21]))
        await batcher.stop()
        return calls, results

    calls, results = asyncio.run(scenario())
    assert results == [[i * i] for i in range(10)] + [[400, 441]]
    assert [len(c) for c in calls] == [4, 4, 4] and sorted(itertools.chain(*calls)) == [*range(10), 20, 21]


def test_the_batcher_waits_at_most_its_wait_and_isolates_failing_batches():
    async def scenario():
        calls: list[list[int]] = []
        batcher = _batcher(calls, max_batch_size=8, max_wait_s=0.03)
        batcher.start()
        start = time.perf_counter()
        alone = await batcher.submit([3])
        waited = time.perf_counter() - start
        with pytest.raises(ValueError, match="no negative ones"):
            await batcher.submit([-1])
        after = await batcher.submit([5])
        await batcher.stop()
        return alone, waited, after, calls

    alone, waited, after, calls = asyncio.run(scenario())
    assert alone == [9] and after == [25] and calls == [[3], [-1], [5]]
    assert 0.03 <= waited < 0.5


def test_the_adaptive_batcher_sends_a_lone_item_at_once_and_keeps_a_burst_and_a_backlog_whole(monkeypatch):
    from siglip.tools.serve import batcher as batching

    monkeypatch.setattr(batching, "ADAPTIVE_CAP_S", 30.0)  # only the quiet turns can end a gathering

    from concurrent.futures import ThreadPoolExecutor

    held = threading.Event()  # the batch holding 100 runs until the backlog is queued: no timing involved

    def square(items: list[int]) -> list[int]:
        calls.append(items)
        if 100 in items:
            held.wait(10)
        return [i * i for i in items]

    calls: list[list[int]] = []

    async def scenario():
        batcher = Batcher(square, ThreadPoolExecutor(1), max_batch_size=32)  # adaptive: no max_wait_s
        batcher.start()
        start = time.perf_counter()
        alone = await batcher.submit([3])  # a lone item: dispatched when the loop is quiet, not after the cap
        waited = time.perf_counter() - start

        async def later(item: int, turns: int) -> list[int]:
            for _ in range(turns):
                await asyncio.sleep(0)
            return await batcher.submit([item])

        burst = await asyncio.gather(*(later(i, i) for i in range(10)))  # one a loop turn: one batch
        running = asyncio.ensure_future(batcher.submit([100]))  # a batch of one, running while...
        while not calls or calls[-1] != [100]:
            await asyncio.sleep(0.001)
        backlog = [
            asyncio.ensure_future(later(i, 3 * (i - 101))) for i in range(101, 121)
        ]  # ...these come in
        for _ in range(100):
            await asyncio.sleep(0)
        held.set()
        await running
        backlog = await asyncio.gather(*backlog)
        await batcher.stop()
        return alone, waited, burst, backlog

    alone, waited, burst, backlog = asyncio.run(scenario())
    assert alone == [9] and waited < 5
    assert burst == [[i * i] for i in range(10)] and backlog == [[i * i] for i in range(101, 121)]
    assert calls == [[3], list(range(10)), [100], list(range(101, 121))], calls


def test_the_adaptive_batcher_brings_the_clients_a_slow_batch_answered_into_the_next_one():
    """Clients that came in two groups (the second while the first's batch ran) end up in one batch: the
    gathering holds for a share of the previous batch's run time (MODEL_SHARE x 0.2 s = 10 ms), longer than
    the 1 ms the answered clients take to come back. Without the hold the groups alternate: 4, 4, 4, ..."""
    from concurrent.futures import ThreadPoolExecutor

    calls: list[list[int]] = []

    def slow_square(items: list[int]) -> list[int]:
        calls.append(items)
        time.sleep(0.2)
        return [i * i for i in items]

    async def scenario() -> list[list[int]]:
        batcher = Batcher(slow_square, ThreadPoolExecutor(1), max_batch_size=32)
        batcher.start()

        async def client(item: int, start_s: float) -> list[int]:
            await asyncio.sleep(start_s)
            answers = []
            for _ in range(3):
                answers += await batcher.submit([item])
                await asyncio.sleep(0.001)  # the client reads its answer and sends the next request
            return answers

        answers = await asyncio.gather(*(client(i, 0.0 if i < 4 else 0.05) for i in range(8)))
        await batcher.stop()
        return answers

    answers = asyncio.run(scenario())
    assert answers == [[i * i] * 3 for i in range(8)]
    assert [len(c) for c in calls] == [4, 8, 8, 4], calls


def test_the_batcher_bounds_its_queue_drops_timed_out_items_and_drains_on_stop():
    async def scenario():
        calls: list[list[int]] = []
        # batches of 100 ms, 20x the timeout: the queued item times out before its turn on a loaded machine too
        batcher = _batcher(calls, run_s=0.1, max_batch_size=2, max_wait_s=0.0, max_queue=3, timeout_s=0.005)
        batcher.start()
        with pytest.raises(QueueFull, match="the queue is full"):
            await batcher.submit([1, 2, 3, 4])
        first = asyncio.ensure_future(batcher.submit([1, 2]))  # the batch that runs (past the timeout)
        await asyncio.sleep(0)
        late = asyncio.ensure_future(batcher.submit([7]))  # queued behind it: timed out before its turn
        with pytest.raises(Timeout):
            await first
        with pytest.raises(Timeout):
            await late
        await asyncio.sleep(0.2)  # the running batch ends; the timed-out item is dropped, not run
        batcher.timeout_s = 5
        queued = [asyncio.ensure_future(batcher.submit([i])) for i in (8, 9, 10)]
        await asyncio.sleep(0)
        await batcher.stop()  # answers what was queued, then refuses
        with pytest.raises(QueueFull, match="shutting down"):
            await batcher.submit([11])
        return calls, [q.result() for q in queued]

    calls, answered = asyncio.run(scenario())
    assert answered == [[64], [81], [100]]
    assert [1, 2] in calls and all(7 not in c for c in calls)


def test_wait_until_answers_in_time_and_raises_the_builtin_timeout_after():
    # the one deadline of the request path (a body, a batch, an answer): the built-in TimeoutError on every
    # Python (3.10's asyncio had its own class, which `except TimeoutError` does not catch)
    async def scenario():
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        loop.call_later(0.01, ready.set_result, 42)
        answered = await wait_until(ready, loop.time() + 5)
        never = loop.create_future()
        started = loop.time()
        with pytest.raises(TimeoutError) as raised:
            await wait_until(never, loop.time() + 0.05)
        return answered, type(raised.value), loop.time() - started, never.cancelled()

    answered, raised, waited, cancelled = asyncio.run(scenario())
    assert answered == 42 and raised is TimeoutError and cancelled
    assert 0.04 <= waited < 2


def test_an_answer_that_comes_as_the_deadline_passes_is_kept(monkeypatch):
    # the timer and the answer in the same loop turn: the deadline's cancellation reaches a caller whose
    # answer is already set; it gets the answer, not a Timeout (what asyncio.wait_for did on Python 3.11)
    import siglip.tools.serve.batcher as batcher_module

    async def answered_as_time_ran_out(awaitable, deadline):
        await awaitable
        raise TimeoutError

    monkeypatch.setattr(batcher_module, "wait_until", answered_as_time_ran_out)

    async def scenario():
        batcher = _batcher([], run_s=0.0, max_batch_size=4, max_wait_s=0.0, max_queue=8, timeout_s=5)
        batcher.start()
        answers = [await batcher.submit([3]), await batcher.submit([4, 5])]
        await batcher.stop()
        return answers

    assert asyncio.run(scenario()) == [[9], [16, 25]]


# --- the real server ---------------------------------------------------------------------------------------
def _wait_for_requests_in_flight(url: str, count: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
        if float(_metric(metrics, "siglip_requests_in_flight")) >= count + 1:  # + this request
            return
        time.sleep(0.05)
    raise AssertionError(f"{count} requests were not in flight within 30 s")


def test_the_server_answers_concurrent_clients_and_finishes_requests_in_flight_on_sigterm(
    embedder, index, material
):
    files = material[1]
    process, url = start_server(material[0], "--max-wait-ms", "3000", "--max-batch-size", "64")
    try:
        texts = [f"a photo of {label}" for label in LABELS] * 3
        expected = embedder.embed_texts(texts)
        images = [f.read_bytes() for f in files]
        expected_images = embedder.embed_images(images)
        results: dict[str, object] = {}

        def text_client(i: int) -> None:
            with httpx.Client(base_url=url, timeout=60) as http:
                results[f"text{i}"] = http.post("/v1/embed/text", json={"texts": [texts[i]]})

        def image_client(i: int) -> None:
            with httpx.Client(base_url=url, timeout=60) as http:
                results[f"image{i}"] = http.post("/v1/embed/image", files={"file": ("p", images[i])})

        def search_client() -> None:
            with httpx.Client(base_url=url, timeout=60) as http:
                results["search"] = http.post("/v1/search", json={"text": "a rocket", "k": 3})

        threads = [threading.Thread(target=text_client, args=(i,)) for i in range(len(texts))]
        threads += [threading.Thread(target=image_client, args=(i,)) for i in range(len(images))]
        threads.append(threading.Thread(target=search_client))
        for thread in threads:
            thread.start()
        _wait_for_requests_in_flight(url, len(threads))  # held by the batchers' 3 s wait
        process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(60)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert len(results) == len(threads)
    assert all(r.status_code == 200 for r in results.values()), {k: r.text for k, r in results.items()}
    got = [results[f"text{i}"].json()["embeddings"][0] for i in range(len(texts))]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    got = [results[f"image{i}"].json()["embeddings"][0] for i in range(len(images))]
    np.testing.assert_allclose(got, expected_images, atol=1e-5)
    hits = index.search_text("a rocket", k=3)
    assert [r["id"] for r in results["search"].json()["results"]] == [h.id for h in hits]
    assert "Waiting for application shutdown" in output and "siglip serve: stopped" in output
    # fp32 (these tests' precision) runs eagerly, transformers' products bit for bit (its package only with
    # --compile), and the server says so
    assert "siglip serve: eager towers: fp32 computes transformers' products bit for bit" in output
