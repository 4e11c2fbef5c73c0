"""`siglip serve`: an HTTP API and a web page for embeddings, zero-shot classification and search."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from typing import Any

from ...errors import UsageError
from ..deps import require
from ..embeddings.embedder import DEFAULT_MODEL, Embedder
from ..embeddings.options import ModelOptions
from ._options import add_image_backend_option, add_model_options, integer, real


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..serve import API_KEY_ENV, ServeSettings

    defaults = ServeSettings()
    parser = subparsers.add_parser(
        "serve",
        help="serve an HTTP API and a web page (search, classification, embeddings)",
        description="A long-running service: one model load, concurrent requests batched together. "
        "The page is at http://HOST:PORT/, the API docs at /docs. Stop it with Ctrl+C or SIGTERM "
        "(requests in flight are answered first).",
    )
    add_model_options(parser, default=None)
    add_image_backend_option(parser)
    parser.add_argument("--index", help="index folder made by `siglip index`, to search (default: none)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)"
    )
    parser.add_argument("--port", type=integer(0, 65535), default=8000, help="port (default: 8000)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"key required on every API route (default: ${API_KEY_ENV}); needed to bind a non-loopback address",
    )
    parser.add_argument(
        "--cors-origin",
        dest="cors_origins",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let pages from ORIGIN call the API (repeatable; default: none)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=integer(1),
        default=defaults.max_batch_size,
        help="items per model call (default: %(default)s)",
    )
    parser.add_argument(
        "--max-wait-ms",
        type=_wait_ms,
        default=defaults.max_wait_ms,
        metavar="MS|auto",
        help="how long a batch waits for more requests after its first; auto (the default): while requests "
        "keep arriving, and not at all for a lone request",
    )
    parser.add_argument(
        "--max-queue",
        type=integer(1),
        default=defaults.max_queue,
        help="items waiting before 503 (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=real(0, above=True),
        default=defaults.timeout_s,
        help="seconds before a request gets 503 (default: %(default)s)",
    )
    parser.add_argument(
        "--max-upload-bytes",
        type=integer(1),
        default=defaults.max_upload_bytes,
        help="request body limit (default: %(default)s)",
    )
    parser.add_argument(
        "--max-image-pixels",
        "--max-pixels",  # its name before it was the one pixel limit of every command
        dest="max_image_pixels",
        type=integer(1),
        default=defaults.max_image_pixels,
        metavar="N",
        help="pixels of one image, refused from its header before decoding (default: %(default)s)",
    )
    parser.add_argument(
        "--max-request-pixels",
        type=integer(1),
        default=defaults.max_request_pixels,
        metavar="N",
        help="pixels of all the images of one request, idem (default: %(default)s)",
    )
    parser.add_argument(
        "--max-prompts",
        type=integer(1),
        default=defaults.max_prompts,
        metavar="N",
        help="labels x templates of one classification request (default: %(default)s)",
    )
    parser.add_argument(
        "--header-timeout",
        type=real(0, above=True),
        default=defaults.header_timeout_s,
        help="seconds a connection may take to send a request's headers (default: %(default)s)",
    )
    parser.add_argument(
        "--body-timeout",
        type=real(0, above=True),
        default=defaults.body_timeout_s,
        help="seconds a request may take to send its body (default: %(default)s)",
    )
    parser.add_argument(
        "--max-connections",
        type=integer(1),
        default=None,
        help="open connections; more are closed at once (default: 1000, at most half the open-file limit)",
    )
    parser.add_argument(
        "--ray",
        action="store_true",
        help="deploy on Ray Serve: --replicas copies of the app, each with its own batching "
        "(pip install 'siglip[ray]')",
    )
    parser.add_argument(
        "--replicas", type=integer(1), default=1, help="replicas with --ray (default: 1; one per GPU)"
    )
    parser.add_argument(
        "--ray-address", default=None, help="Ray cluster to join with --ray (default: start a local one)"
    )
    parser.set_defaults(run=run, reduced_decode=False)


def _wait_ms(text: str) -> float | None:
    """`--max-wait-ms`: `auto` (None, the batcher's adaptive gathering) or milliseconds >= 0."""
    if text == "auto":
        return None
    try:
        return real(0)(text)
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{err} (milliseconds >= 0, or auto)") from None


def run(args: argparse.Namespace) -> int:
    from ..serve import ServeSettings, is_loopback

    if not is_loopback(args.host) and not args.api_key:
        raise UsageError(
            f"binding {args.host} exposes the server to other machines: give --api-key KEY (or set SIGLIP_API_KEY)"
        )
    if args.timeout <= 0:
        raise UsageError("--timeout must be > 0")
    uvicorn = require("uvicorn", "serve", "siglip serve")
    for module in ("fastapi", "fastapi_offline", "multipart", "prometheus_client"):
        require(module, "serve", "siglip serve")
    from ..serve.app import create_app
    from ..serve.connections import MAX_HEAD_BYTES, guarded_protocol

    settings = ServeSettings(
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        timeout_s=args.timeout,
        max_prompts=args.max_prompts,
        max_upload_bytes=args.max_upload_bytes,
        max_image_pixels=args.max_image_pixels,
        max_request_pixels=args.max_request_pixels,
        api_key=args.api_key,
        cors_origins=tuple(args.cors_origins),
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        max_connections=args.max_connections or _default_connections(ServeSettings.max_connections),
    )
    if args.ray:
        return _run_on_ray(args, settings)
    embedder = Embedder.from_pretrained(_model_of(args), args.device, ModelOptions.from_args(args))
    app = create_app(embedder, args.index, settings)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            http=guarded_protocol(settings.header_timeout_s, settings.max_connections),
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
            timeout_graceful_shutdown=int(settings.timeout_s) + 5,
            access_log=False,
            log_level="info",
        )
    )
    # uvicorn handles SIGTERM by finishing the requests in flight, then raises it again once it is done; by
    # then there is nothing left to do, so that second delivery must not kill the process with status -15.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run()
    print("siglip serve: stopped", file=sys.stderr)
    return 0


def _run_on_ray(args: argparse.Namespace, settings: Any) -> int:
    """Deploy on Ray Serve and wait for Ctrl+C or SIGTERM, then take the deployment down."""
    import threading

    from ..serve import ray_serve

    if args.device:
        raise UsageError("with --ray, each replica uses its GPU (or a CPU): drop --device")
    ray_serve.deploy(
        _model_of(args),
        args.index,
        settings,
        replicas=args.replicas,
        host=args.host,
        port=args.port,
        address=args.ray_address,
        model_options=ModelOptions.from_args(args),
    )
    print(
        f"siglip serve: {args.replicas} replicas on Ray Serve at http://{args.host}:{args.port}/",
        file=sys.stderr,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    ray_serve.shutdown()
    print("siglip serve: stopped", file=sys.stderr)
    return 0


def _default_connections(default: int) -> int:
    """`default`, or half the process's open-file limit when that is lower (the model and index need some)."""
    try:
        files = os.sysconf("SC_OPEN_MAX")  # the soft RLIMIT_NOFILE; POSIX only
    except (AttributeError, ValueError, OSError):
        return default
    return default if files <= 0 else max(1, min(default, files // 2))


def _model_of(args: argparse.Namespace) -> str:
    """--model, else the model the index was built with, else the default model."""
    if args.model:
        return args.model
    if args.index:
        from ..search.index import SearchIndex

        with SearchIndex(args.index) as index:
            return index.model
    return DEFAULT_MODEL
