"""`siglip serve` under hostile input (issue 23): each request below once cost gigabytes, seconds of the only
model thread, a 500 or a crash in the log. In-process through the ASGI app, and against the real server in a
subprocess, whose time and memory (RSS from /proc) are measured with bounds. Loads go to 127.0.0.1 only."""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import re
import select
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from _material import BUNDLED, write_photos
from _serving import start_server
from siglip import Embedder
from siglip.tools.serve import ServeSettings, create_app
from siglip.tools.zeroshot import check_labels, check_templates, fill_template

SETTINGS = ServeSettings(max_prompts=100, max_image_pixels=4_000_000, max_request_pixels=10_000_000)
POST_ROUTES = ["/v1/embed/text", "/v1/embed/image", "/v1/embeddings", "/v1/classify", "/v1/search"]
MiB = 2**20


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.from_pretrained(BUNDLED, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> bytes:
    files = write_photos(tmp_path_factory.mktemp("photos"), corrupt=False)
    return next(f for f in files if f.name == "chelsea.jpg").read_bytes()


@pytest.fixture(scope="module")
def client(embedder):
    with TestClient(create_app(embedder, None, SETTINGS)) as client:
        yield client


def _error(response: httpx.Response, status: int, *phrases: str) -> str:
    assert response.status_code == status, response.text
    message = response.json()["error"]["message"]
    for phrase in phrases:
        assert phrase in message, message
    return message


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _huge_png(side: int) -> bytes:
    """A 1-bit PNG of side x side pixels: a few kilobytes that decode to side * side * 3 bytes of RGB."""
    data = io.BytesIO()
    Image.new("1", (side, side)).save(data, format="PNG")
    return data.getvalue()


# --- classification: templates and prompts -------------------------------------------------------------------
def test_templates_fill_the_label_where_braces_stand_and_never_evaluate_a_format_spec(client, photo):
    for template in ["This is a photo of {}.", "{{literal}} {} here", "{}", "a {} }}{{"]:
        assert fill_template(template, "a cat") == template.format("a cat")  # str.format is the oracle
    start = time.perf_counter()
    for template in ["{0:>50}", "{label}", "{!r}", "{}{}", "{", "{:>300000000}", "{:>999999999}"]:
        answer = client.post(
            "/v1/classify", json={"image": _b64(photo), "labels": ["a cat"], "templates": [template]}
        )
        _error(answer, 400, "must contain '{}'")
    assert time.perf_counter() - start < 5  # once 11 s and 3 GB for the 300-million-wide spec alone
    accepted = client.post(
        "/v1/classify", json={"image": _b64(photo), "labels": ["a"], "templates": ["{{x}} {}"]}
    )
    assert accepted.status_code == 200, accepted.text


def test_prompts_per_request_are_bounded_and_the_limit_is_in_info(client, photo):
    assert client.get("/v1/info").json()["limits"]["max_prompts"] == 100
    labels, templates = [f"label {i}" for i in range(20)], [f"photo {i} of {{}}" for i in range(6)]
    start = time.perf_counter()
    answer = client.post(
        "/v1/classify", json={"image": _b64(photo), "labels": labels, "templates": templates}
    )
    _error(answer, 413, "20 labels x 6 templates = 120 prompts, more than the limit of 100")
    assert time.perf_counter() - start < 2  # refused before the text model runs
    within = client.post(
        "/v1/classify", json={"image": _b64(photo), "labels": labels[:10], "templates": templates[:10]}
    )
    assert within.status_code == 200 and len(within.json()["results"]) == 10


def test_checking_labels_takes_linear_time():
    labels = [f"label number {i}" for i in range(50_000)]  # quadratic: 1.25 billion comparisons, minutes
    start = time.perf_counter()
    check_labels(labels)
    assert time.perf_counter() - start < 0.5
    with pytest.raises(ValueError, match="'label number 7' is given twice"):
        check_labels([*labels, "label number 7"])
    check_templates(["{}"])


# --- images: a decoded-pixel budget per request ---------------------------------------------------------------
def test_a_request_decodes_no_image_past_its_pixel_budget(client, embedder, monkeypatch):
    from PIL import ImageFile

    decoded: list[tuple[int, int]] = []
    load = ImageFile.ImageFile.load

    def counting_load(image):
        if image.tile:  # pixels still to decode (a loaded image has none)
            decoded.append(image.size)
        return load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    png = _huge_png(2000)  # 4 million pixels each, 10 million for the request
    assert len(png) < 5000
    start = time.perf_counter()
    answer = client.post("/v1/embed/image", files=[("file", (f"{i}.png", png)) for i in range(64)])
    _error(answer, 413, "upload '2.png' has 2000 x 2000 = 4000000 pixels", "--max-request-pixels")
    assert decoded == [(2000, 2000)] * 2  # the third, which would pass the budget, is never decoded
    assert time.perf_counter() - start < 10
    two = client.post("/v1/embed/image", json={"images": [_b64(png)] * 2})
    assert two.status_code == 200, two.text
    np.testing.assert_allclose(two.json()["embeddings"], embedder.embed_images([png, png]), atol=1e-5)
    assert client.get("/v1/info").json()["limits"]["max_request_pixels"] == 10_000_000


def test_a_naflex_model_decodes_uploads_as_embed_images_does(tmp_path, photo):
    from _material import save_tiny_naflex

    naflex = Embedder.from_pretrained(
        str(save_tiny_naflex(tmp_path / "naflex")), device="cpu", precision="fp32"
    )
    grey = io.BytesIO()
    Image.new("LA", (300, 120), (90, 128)).save(grey, format="PNG")  # transparency, another aspect ratio
    with TestClient(create_app(naflex, None, SETTINGS)) as client:
        answer = client.post("/v1/embed/image", json={"images": [_b64(photo), _b64(grey.getvalue())]})
    assert answer.status_code == 200, answer.text
    expected = naflex.embed_images([photo, grey.getvalue()])
    np.testing.assert_allclose(answer.json()["embeddings"], expected, atol=1e-5)


def test_base64_with_line_breaks_as_the_base64_command_prints_it_is_accepted(client, embedder, photo):
    wrapped = base64.encodebytes(photo).decode("ascii")  # 76 characters a line, as `base64` and MIME write it
    assert "\n" in wrapped
    images = [wrapped, "data:image/jpeg;base64," + wrapped.replace("\n", "\r\n")]
    answer = client.post("/v1/embed/image", json={"images": images})
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json()["embeddings"], embedder.embed_images([photo, photo]), atol=1e-5)
    _error(client.post("/v1/embed/image", json={"images": [wrapped + "*"]}), 400, "not valid base64")


# --- request bodies: the same answer on every route --------------------------------------------------------
@pytest.mark.parametrize("route", POST_ROUTES)
def test_deeply_nested_json_is_a_400_on_every_route(client, route):
    depth = 100_000
    body = b'{"texts": ' + b"[" * depth + b"]" * depth + b"}"
    _error(client.post(route, content=body, headers={"content-type": "application/json"}), 400, "too deeply")


@pytest.mark.parametrize("route", POST_ROUTES)
def test_json_sent_with_a_form_content_type_is_a_415_naming_it(client, route):
    answer = client.post(
        route, content=b'{"texts": ["a"]}', headers={"content-type": "application/x-www-form-urlencoded"}
    )
    _error(answer, 415, "application/json", "not 'application/x-www-form-urlencoded'")


def test_head_of_health_and_readiness_is_200(client):
    for path in ("/healthz", "/readyz"):
        answer = client.head(path)
        assert answer.status_code == 200 and answer.content == b""


# --- errors: 4xx for the client's input, 500 with an id for the rest -------------------------------------------
def test_an_unexpected_exception_is_a_500_with_a_request_id_and_its_details_only_in_the_log(
    client, embedder, monkeypatch, caplog
):
    def broken(*_args, **_kwargs):
        raise ValueError("secret detail of the model code")

    monkeypatch.setattr(embedder, "embed_token_ids", broken)
    with caplog.at_level(logging.ERROR, logger="siglip.serve"):
        answer = client.post("/v1/embed/text", json={"texts": ["a"]})
    message = _error(answer, 500, "internal error")
    request_id = answer.headers["x-request-id"]
    assert request_id in message and re.fullmatch(r"[0-9a-f]{16}", request_id)
    assert "secret" not in answer.text and "ValueError" not in answer.text
    [record] = [r for r in caplog.records if request_id in r.getMessage()]
    assert record.exc_info is not None and "secret detail" in str(record.exc_info[1])
    # the core's documented input errors stay client errors, with their message
    photo = _b64(_huge_png(8))
    _error(client.post("/v1/classify", json={"image": photo, "labels": ["a", "a"]}), 400, "given twice")
    assert client.get("/healthz").headers["x-request-id"] != request_id


def test_a_client_that_goes_away_is_neither_logged_nor_counted_as_an_error(client, caplog):
    body = b'{"labels": ["a"], "image": "'  # and then the client is gone
    messages = iter([{"type": "http.request", "body": body, "more_body": True}, {"type": "http.disconnect"}])
    sent: list[dict] = []

    async def receive() -> dict:
        return next(messages)

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/v1/classify", "raw_path": b"/v1/classify", "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"host", b"testserver")],
        "client": ("127.0.0.1", 5000), "server": ("testserver", 80),
    }  # fmt: skip
    errors_before = _errors(client.get("/metrics").text)
    with caplog.at_level(logging.INFO):
        client.portal.call(client.app, scope, receive, send)
    assert sent == [] and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    metrics = client.get("/metrics").text
    assert 'route="/v1/classify",status="499"} 1.0' in metrics
    assert _errors(metrics) == errors_before


def _errors(metrics: str) -> list[str]:
    """The request counts of status 500 in a /metrics text."""
    return [line for line in metrics.splitlines() if 'status="500"' in line]


# --- the real server: connections, time and memory --------------------------------------------------------------
def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in bytes."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {name: int(fields[name].split()[0]) * 1024 for name in ("VmRSS", "VmHWM")}


def _closed(sock: socket.socket) -> bool:
    """Whether the server has closed this connection."""
    sock.settimeout(0.01)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


@pytest.fixture(scope="module")
def server():
    options = ["--max-image-pixels", "10000000", "--max-request-pixels", "20000000", "--header-timeout", "1",
               "--body-timeout", "2", "--max-connections", "32"]  # fmt: skip
    process, url = start_server(None, *options)
    yield process, url
    if process.poll() is None:
        process.kill()
        process.communicate()


linux_only = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")


@linux_only
def test_huge_dimensions_in_small_files_cost_bounded_memory_and_the_memory_is_returned(server):
    process, url = server
    png = _huge_png(3000)  # 9 million pixels, 27 MB of RGB, in a few kilobytes
    with httpx.Client(base_url=url, timeout=60) as http:
        http.post("/v1/embed/image", files={"file": ("warm.png", _huge_png(64))})  # first-use allocations
        before = _status(process.pid)["VmRSS"]
        Path(f"/proc/{process.pid}/clear_refs").write_text("5")  # the peak starts again from here
        start = time.perf_counter()
        refused = http.post("/v1/embed/image", files=[("file", (f"{i}.png", png)) for i in range(64)])
        elapsed = time.perf_counter() - start
        _error(refused, 413, "--max-request-pixels")
        peak = _status(process.pid)["VmHWM"] - before
        assert elapsed < 15 and peak < 300 * MiB, (elapsed, peak / MiB)  # once 5.8 GB, 64 images at a time
        for _ in range(3):
            assert http.post("/v1/embed/image", json={"images": [_b64(png)] * 2}).status_code == 200
        small = _huge_png(
            500
        )  # under images.TRIM_PIXELS: the heap is not trimmed after it, its blocks reused
        for _ in range(60):
            assert http.post("/v1/embed/image", files={"file": ("small.png", small)}).status_code == 200
        kept = _status(process.pid)["VmRSS"] - before
        assert kept < 100 * MiB, kept / MiB  # handed back after each request, not kept by the allocator


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@linux_only
def test_slow_headers_are_cut_off_and_open_connections_are_capped(server):
    _, url = server
    opened = [socket.create_connection(("127.0.0.1", _port(url))) for _ in range(64)]
    try:
        for sock in opened:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        time.sleep(0.3)
        assert sum(_closed(sock) for sock in opened) >= 64 - 32  # past the cap: closed at once
        start = time.perf_counter()
        while not all(_closed(sock) for sock in opened):
            for sock in opened:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X")  # trickling a byte at a time does not keep a connection
            assert time.perf_counter() - start < 5, "slow headers were not cut off after --header-timeout 1"
            time.sleep(0.1)
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    finally:
        for sock in opened:
            sock.close()
    with socket.create_connection(("127.0.0.1", _port(url))) as sock:  # headers without end, at full speed
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: ")
        sock.settimeout(5)
        with contextlib.suppress(OSError):
            for _ in range(1024):
                sock.sendall(b"a" * 1024)  # a megabyte: refused after the first 16 KiB
        try:
            answer = sock.recv(4096)
        except ConnectionResetError:  # closed while the rest was still on its way
            answer = b""
        assert answer.startswith(b"HTTP/1.1 400") or answer == b"", answer  # not a read that waits on


@linux_only
def test_a_request_head_is_bounded_whole_or_in_pieces_and_a_pipelined_body_is_not_counted_in_it(server):
    _, url = server

    def exchange(*sends: bytes) -> bytes:
        """What the server answers to `sends` (each a read of its own) on one connection, read until it closes
        the connection; sending stops once it answers (more would reset the connection)."""
        with socket.create_connection(("127.0.0.1", _port(url)), timeout=10) as sock:
            for data in sends:
                if select.select([sock], [], [], 0.02)[0]:
                    break
                sock.sendall(data)
            answer = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(65536):
                    answer += chunk
            return answer

    def head(pad: int, close: bool = True) -> bytes:
        lines = [b"GET /healthz HTTP/1.1", b"Host: x", b"X-Pad: " + b"a" * pad]
        return b"\r\n".join(lines + [b"Connection: close"] * close) + b"\r\n\r\n"

    assert exchange(head(15_000)).startswith(b"HTTP/1.1 200")  # under 16 KiB
    # still incomplete past 16 KiB, in many reads (its blank line never sent): refused while it comes in (a
    # whole head in one read is parsed as it is, as h11 does: the memory is that read's)
    pieces = [head(20_000)[i : i + 1000] for i in range(0, 20_000, 1000)]
    assert exchange(*pieces).startswith(b"HTTP/1.1 400")
    # a 63 KB body followed, in the same read, by the start of the next request's head: the body is not head
    body = b'{"texts": [' + b", ".join([b'"' + b"a" * 9_000 + b'"'] * 7) + b"]}"
    post = b"POST /v1/embed/text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    post += b"Content-Length: %d\r\n\r\n" % len(body) + body
    with socket.create_connection(("127.0.0.1", _port(url)), timeout=10) as sock:
        sock.sendall(post + head(10_000)[:5_000])
        time.sleep(0.2)
        sock.sendall(head(10_000)[5_000:])
        answers = b""
        while chunk := sock.recv(65536):
            answers += chunk
    assert answers.startswith(b"HTTP/1.1 200") and answers.count(b"HTTP/1.1 200") == 2, answers[:300]


@linux_only
def test_pipelined_requests_are_parsed_as_they_are_answered_not_all_at_once(server):
    # 7,000 small requests in one read on each of 4 connections, whose answers are never read: a parser that
    # queued every request of a read (uvicorn's httptools protocol does) held ~15 MB per read
    process, url = server
    burst = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 7_000
    before = _status(process.pid)["VmRSS"]
    opened = [socket.create_connection(("127.0.0.1", _port(url)), timeout=10) for _ in range(4)]
    try:
        for sock in opened:
            sock.sendall(burst)
        time.sleep(2)
        grown = _status(process.pid)["VmRSS"] - before
    finally:
        for sock in opened:
            sock.close()
    assert grown < 20 * MiB, grown / MiB
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200


@linux_only
def test_a_slow_body_is_a_408_and_a_client_that_leaves_is_no_error_in_metrics_or_log(server):
    process, url = server
    with socket.create_connection(("127.0.0.1", _port(url))) as sock:
        sock.sendall(b"POST /v1/embed/text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"texts\"")  # fmt: skip
        sock.settimeout(10)
        start = time.perf_counter()
        answer = sock.recv(4096)
        while b"}}" not in answer:  # the JSON body may come in a write of its own
            answer += sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"within 2 s" in answer and time.perf_counter() - start < 5
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", _port(url))) as sock:
            sock.sendall(b"POST /v1/embed/image HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                         b"boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; "
                         b'name="file"; filename="a.png"\r\n\r\n' + _huge_png(64)[:50])  # fmt: skip
            time.sleep(0.2)
    time.sleep(0.5)
    metrics = httpx.get(f"{url}/metrics", timeout=5).text
    assert 'route="/v1/embed/image",status="499"} 3.0' in metrics
    assert 'status="500"' not in metrics
    process.terminate()
    output, _ = process.communicate(timeout=60)
    assert "Traceback" not in output and "Exception in ASGI application" not in output, output
