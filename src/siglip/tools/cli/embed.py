"""`siglip embed`: embeddings of image files into Parquet or .npy, resumable; in this process, or on Ray."""

from __future__ import annotations

import argparse
import time

from ..embeddings.options import ModelOptions
from ..embeddings.precision import auto_precision
from ..embeddings.writers import OUTPUT_FORMATS, embed_to_file, output_format
from ..inputs.tar_shards import scan_inputs
from ._options import (
    add_loader_options,
    add_model_options,
    integer,
    load_model,
    loader_kwargs,
    rate_line,
    report_skipped,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "embed",
        help="embed image files into a Parquet or .npy file",
        description=(
            "Embed images (files, folders searched recursively, glob patterns) into --out: Parquet with columns "
            "path, vector, model, dims, or .npy with the paths in the manifest <out>.json. An interrupted run "
            "picks up where it stopped when run again. With --engine ray the job runs on a Ray cluster and --out "
            "is a folder of Parquet shards (pip install 'siglip[ray]')."
        ),
    )
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="image files, folders or glob patterns, WebDataset .tar shards (a path, glob or "
        "{000000..000099} pattern; rows named SHARD:KEY); with --engine ray also .txt or .parquet lists of "
        "paths or URIs, and URIs (s3://... through fsspec)",
    )
    parser.add_argument(
        "--out",
        required=True,
        help=f"output file ({' or '.join(OUTPUT_FORMATS)}); with --engine ray a folder of Parquet shards",
    )
    parser.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process and its decoding workers (default); ray: Ray Data, decoding in CPU tasks and "
        "the model in an actor pool, one actor per GPU",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to join (auto, ray://HOST:PORT; default: start a local one)",
    )
    parser.add_argument(
        "--shard-size", type=integer(1), default=10_000, help="images per output shard with --engine ray"
    )
    parser.add_argument(
        "--actors",
        type=integer(1),
        default=None,
        help="model actors with --engine ray (default: one per GPU, else one per 4 CPUs)",
    )
    add_model_options(parser)
    add_loader_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.engine == "ray":
        return _run_on_ray(args)
    output_format(args.out)  # before the model loads: a typo should cost no time
    scan = scan_inputs(args.paths)
    embedder = load_model(args)
    start = time.perf_counter()
    report = embed_to_file(scan, args.out, embedder, **loader_kwargs(args))
    seconds = time.perf_counter() - start
    earlier = report.count + len(report.skipped) - len(scan.skipped) - report.embedded - report.failed
    print(
        f"wrote {report.count} embeddings ({embedder.dims}-d, model {embedder.name}) to {report.out}; "
        f"manifest {report.manifest}"
    )
    why = f" ({auto_precision(embedder.device)[1]})" if args.precision == "auto" else ""
    print(f"precision {embedder.mode.precision}{why}")
    resumed = f"; {earlier} were done by an earlier run" if earlier else ""
    print(rate_line(report.embedded, report.failed, seconds) + resumed)
    report_skipped("embed", report.skipped)
    return 0


def _run_on_ray(args: argparse.Namespace) -> int:
    from ...errors import UsageError
    from ..embeddings.ray_engine import embed_with_ray

    if args.device or args.workers is not None:
        raise UsageError(
            "with --engine ray, each actor uses its GPU (or CPUs) and Ray decodes: drop --device/--workers"
        )

    start = time.perf_counter()
    report = embed_with_ray(
        args.paths,
        args.out,
        args.model,
        options=ModelOptions.from_args(args),
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        address=args.ray_address,
        actors=args.actors,
        progress=not args.no_progress,
    )
    seconds = time.perf_counter() - start
    print(
        f"wrote {report.count} embeddings in {report.shards} shards to {report.out} ({report.resumed} shards "
        f"done by an earlier run; this run's on {report.nodes} nodes); manifest {report.manifest}"
    )
    print(rate_line(report.embedded, report.failed, seconds))
    report_skipped("embed", report.skipped)
    return 0
