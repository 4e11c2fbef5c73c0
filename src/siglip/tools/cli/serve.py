"""`siglip serve`: an HTTP API and a web page for embeddings, zero-shot classification and search."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...core.cpu import usable_cores
from ...errors import UsageError
from ..deps import require
from ..embeddings.compiled import linear_flop
from ..embeddings.embedder import DEFAULT_MODEL, Embedder
from ..embeddings.options import ModelOptions
from ._options import add_image_backend_option, add_model_options, integer, real

if TYPE_CHECKING:
    from ..embeddings.background_compile import BackgroundCompile

# --workers auto: the request path (HTTP, routing, JSON) costs a few hundred microseconds of one core per
# request, and one process has one core for it (the GIL). A text tower of a few hundred MFLOP per text or less
# (the bundled tiny model: 0.02) leaves the request path as the limit; a base-size one (11 GFLOP) is the limit
# itself, and wants every request in one batch on every core. Counted, not timed: on a busy machine one timed
# call of the same model varied 30-fold.
AUTO_WORKERS_TEXT_GFLOP = 1.0


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
    add_model_options(
        parser,
        default=None,
        compile_default="in the background where the model has packages that run faster than its eager "
        "towers (bf16, fp16 or int8 on a CPU, but not bf16 on a CPU with AMX for a base-size model; not with "
        "--ray): the eager towers answer until the compiled ones are in; --compile (and --precision int8-static, "
        "always compiled): before the first request",
    )
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
        type=_auto_or(real(0), "milliseconds >= 0"),
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
        "--workers",
        type=_auto_or(integer(1), "a count >= 1"),
        default=None,
        metavar="N|auto",
        help="server processes sharing the port, each with its own model, batching and share of the CPU "
        "threads; auto (the default): one per core for a text tower under "
        f"{AUTO_WORKERS_TEXT_GFLOP:g} GFLOP per text (a small model: the request path, one core per process, is "
        "the limit), else one (a large model: one process batches every request and uses every core)",
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


def _auto_or(parse: Callable[[str], float], what: str) -> Callable[[str], float | None]:
    """An option type reading `auto` as None (the server chooses) and anything else with `parse`, whose error
    then says what else is allowed (`what`)."""

    def parse_or_auto(text: str) -> float | None:
        if text == "auto":
            return None
        try:
            return parse(text)
        except argparse.ArgumentTypeError as err:
            raise argparse.ArgumentTypeError(f"{err} ({what}, or auto)") from None

    return parse_or_auto


def run(args: argparse.Namespace) -> int:
    from ..serve import ServeSettings, is_loopback

    if not is_loopback(args.host) and not args.api_key:
        raise UsageError(
            f"binding {args.host} exposes the server to other machines: give --api-key KEY (or set SIGLIP_API_KEY)"
        )
    if args.timeout <= 0:
        raise UsageError("--timeout must be > 0")
    for module in ("uvicorn", "fastapi", "fastapi_offline", "multipart", "prometheus_client"):
        require(module, "serve", "siglip serve")

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
    args.compile_in_background, args.compile = args.compile is None, bool(args.compile)
    if args.ray:
        if args.workers not in (None, 1):
            raise UsageError("--workers is for one machine; with --ray, use --replicas")
        return _run_on_ray(args, settings)
    embedder = Embedder.from_pretrained(_model_of(args), args.device, ModelOptions.from_args(args))
    workers = args.workers or _auto_workers(embedder)
    settings = dataclasses.replace(settings, workers=workers)
    if workers == 1:
        _serve(embedder, args, settings)
    else:
        _serve_processes(embedder, args, settings, workers)
    print("siglip serve: stopped", file=sys.stderr)
    return 0


def _uvicorn_config(app: Any, args: argparse.Namespace, settings: Any) -> Any:
    import uvicorn

    from ..serve.connections import MAX_HEAD_BYTES, guarded_protocol

    return uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        http=guarded_protocol(settings.header_timeout_s, settings.max_connections),
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        timeout_graceful_shutdown=int(settings.timeout_s) + 5,
        access_log=False,
        log_level="info",
    )


def _serve(
    embedder: Embedder,
    args: argparse.Namespace,
    settings: Any,
    sockets: list | None = None,
    parent: Any = None,
) -> None:
    """Serve until SIGINT or SIGTERM (on `sockets`, a listening socket shared with other workers, when given),
    or, for a worker, until `parent` (its `multiprocessing.parent_process()`) has gone."""
    import threading

    import uvicorn

    from ..serve.app import create_app

    server = uvicorn.Server(_uvicorn_config(create_app(embedder, args.index, settings), args, settings))
    if parent is not None:
        # however the server's first process stopped (SIGKILL included), its workers stop with it, answering
        # the requests in flight, rather than keep serving their share of the port alone
        def stop_when_parent_has_gone() -> None:
            parent.join()
            server.should_exit = True

        threading.Thread(target=stop_when_parent_has_gone, name="siglip-serve-parent", daemon=True).start()
    compiling = _compile(embedder, args)  # --compile: SIGTERM meanwhile unwinds it, as any command
    # uvicorn handles SIGTERM by finishing the requests in flight, then raises it again once it is done; by
    # then there is nothing left to do, so that second delivery must not kill the process with status -15.
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run(sockets=sockets)
    finally:
        if compiling is not None:
            compiling.stop()


def _compile(embedder: Embedder, args: argparse.Namespace) -> BackgroundCompile | None:
    """With --compile (and int8-static, which has no eager towers), the compiled towers loaded (or compiled)
    before the first request; by default, a `BackgroundCompile` started where the model has something to
    compile (returned, to be stopped)."""
    from ..embeddings.background_compile import BackgroundCompile, compile_now

    if args.compile or embedder.mode.precision == "int8-static":
        if compile_now(embedder):  # a GPU, or bf16-autocast: torch.compile on the first batch instead
            print("siglip serve: compiled towers loaded", file=sys.stderr)
        return None
    if not args.compile_in_background:
        return None

    def done(state: str) -> None:  # a failure is logged as a warning by BackgroundCompile
        if state.startswith("compiled"):
            print(f"siglip serve: towers {state}, in use", file=sys.stderr, flush=True)

    compiling = BackgroundCompile(embedder, on_done=done)
    if compiling.why_not is not None:
        print(f"siglip serve: eager towers: {compiling.why_not}", file=sys.stderr)
        return None
    compiling.start()
    print(
        "siglip serve: compiling the towers in the background; the eager ones answer meanwhile",
        file=sys.stderr,
    )
    return compiling


def _auto_workers(embedder: Embedder) -> int:
    """`--workers auto`: one per core for a model whose text tower costs under AUTO_WORKERS_TEXT_GFLOP per text,
    else 1 (see the option's help). The cost is counted from the config (`linear_flop`), as int8 modes keep
    their weights outside `parameters()`."""
    cores = usable_cores()
    if cores == 1 or embedder.device.type != "cpu":
        return 1
    text = embedder.model.config.text_config
    gflop = linear_flop(text, text.max_position_embeddings) / 1e9
    return cores if gflop < AUTO_WORKERS_TEXT_GFLOP else 1


def _serve_processes(embedder: Embedder, args: argparse.Namespace, settings: Any, workers: int) -> None:
    """Serve from `workers` processes on one port (`_listening_sockets`): this one (with `embedder`) and
    workers - 1 spawned ones that load the model again. Each runs torch on its share of the cores. All start
    accepting once all have loaded (a connection stays with the process that accepted it); the others are
    stopped (SIGTERM: requests in flight are answered) when this one stops, and stop by themselves when it is
    killed."""
    import multiprocessing
    import queue

    import torch

    sockets = _listening_sockets(_uvicorn_config(None, args, settings), workers)
    threads = max(1, usable_cores() // workers)
    context = multiprocessing.get_context("spawn")  # torch's threads do not survive a fork
    loaded, go = context.Queue(), context.Event()
    others = [
        context.Process(
            target=_worker, args=(args, settings, sockets[n], threads, loaded, go), name=f"siglip-serve-{n}"
        )
        for n in range(1, workers)
    ]
    for process in others:
        process.start()
    torch.set_num_threads(threads)
    try:
        waiting = len(others)
        while waiting:
            try:
                loaded.get(timeout=1)
                waiting -= 1
            except queue.Empty:
                failed = [process.name for process in others if process.exitcode is not None]
                if failed:
                    raise RuntimeError(f"worker process {failed[0]} failed while loading the model") from None
        # the workers hold their sockets now: one that dies takes its socket (and its share) with it
        for sock in set(sockets[1:]) - {sockets[0]}:
            sock.close()
        go.set()
        host, port = sockets[0].getsockname()[:2]
        url = f"http://[{host}]:{port}" if sockets[0].family == socket.AF_INET6 else f"http://{host}:{port}"
        print(
            f"siglip serve: {workers} worker processes, {threads} torch threads each, on {url}",
            file=sys.stderr,
        )
        _serve(embedder, args, settings, sockets=[sockets[0]])
    finally:
        for process in others:
            process.terminate()
        for process in others:
            process.join(settings.timeout_s + 10)


def _listening_sockets(config: Any, workers: int) -> list[socket.socket]:
    """One listening socket per worker process, all on the configured host and port.

    On Linux each has its own socket with SO_REUSEPORT, and the kernel spreads new connections over them
    evenly (by a hash of each connection's addresses). One socket shared by all, as elsewhere (or where the
    kernel refuses the option), lets whichever process wakes first accept a whole burst: 56 of 64 connections
    opened at once went to one of two tiny-model workers, which then ran GIL-bound on one core while the other
    idled (BENCHMARKS.md, "Connections spread over the workers"). A port another program (another `siglip
    serve` included) listens on is refused, as with one socket: it is tried without SO_REUSEPORT first, which
    leaves only the moment between that try and the group's binding for a second group to slip in."""
    if sys.platform != "linux" or not hasattr(socket, "SO_REUSEPORT"):
        return [config.bind_socket()] * workers
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    address = (
        f"[{config.host}]:{config.port}" if family == socket.AF_INET6 else f"{config.host}:{config.port}"
    )
    sockets: list[socket.socket] = []
    port = config.port
    try:
        if port:
            with socket.socket(family) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((config.host, port))
        for _ in range(workers):
            sock = socket.socket(family)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            except OSError:  # a kernel without it: one shared socket
                for each in sockets:
                    each.close()
                return [config.bind_socket()] * workers
            sock.bind((config.host, port))
            port = sock.getsockname()[1]  # port 0: the free port the first one got, for all
            sock.set_inheritable(True)
    except OSError as err:
        for sock in sockets:
            sock.close()
        raise UsageError(f"cannot listen on {address}: {err}") from None
    return sockets


def _worker(args: argparse.Namespace, settings: Any, sock: Any, threads: int, loaded: Any, go: Any) -> None:
    """A spawned worker of `_serve_processes`: load the model, say so, serve once told to."""
    import multiprocessing

    import torch

    torch.set_num_threads(threads)
    embedder = Embedder.from_pretrained(_model_of(args), args.device, ModelOptions.from_args(args))
    loaded.put(True)
    parent = multiprocessing.parent_process()
    while not go.wait(1):
        if parent is None or not parent.is_alive():
            return
    _serve(embedder, args, settings, sockets=[sock], parent=parent)


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
