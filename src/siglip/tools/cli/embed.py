"""`siglip embed`: embeddings of image files (or `--texts`) into Parquet or .npy, resumable; in this process, or
on Ray."""

from __future__ import annotations

import argparse
import time

from ...errors import UsageError
from ..embeddings.compiled import CompileChoice
from ..embeddings.embedder import Embedder
from ..embeddings.options import ModelOptions
from ..embeddings.precision import auto_precision
from ..embeddings.writers import OUTPUT_FORMATS, embed_texts_to_file, embed_to_file, output_format
from ..inputs.tar_shards import scan_inputs
from ..inputs.texts import TEXT_COLUMNS, read_texts
from ._options import (
    COMPILE_BY_JOB,
    add_loader_options,
    add_model_options,
    add_video_options,
    compile_by_job,
    integer,
    load_model,
    loader_kwargs,
    rate_line,
    report_skipped,
    say_compile_choice,
    video_sampling,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "embed",
        help="embed image files (or with --texts, texts) into a Parquet or .npy file",
        description=(
            "Embed images (files, folders searched recursively, glob patterns) into --out: Parquet with columns "
            "path, vector, model, dims, or .npy with the paths in the manifest <out>.json. An interrupted run "
            "picks up where it stopped when run again. With --engine ray the job runs on a Ray cluster and --out "
            "is a folder of Parquet shards (pip install 'siglip[ray]'). With --texts FILE, the texts of FILE instead: "
            "Parquet columns id, text, vector, model, dims, or .npy with the ids in the manifest."
        ),
    )
    parser.add_argument(
        "paths",
        nargs="*",
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
        "--texts",
        metavar="FILE",
        default=None,
        help="embed texts instead of images: one per line of a text file, or a column of a .csv/.tsv file "
        "(with a header line) or .jsonl file; each row's id is its line number, or --id-column",
    )
    parser.add_argument(
        "--text-column",
        default=None,
        metavar="NAME",
        help=f"with --texts: the CSV/JSONL column of the texts (default: {' or '.join(TEXT_COLUMNS)})",
    )
    parser.add_argument(
        "--id-column", default=None, metavar="NAME", help="with --texts: a CSV/JSONL column of unique row ids"
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
    add_model_options(parser, compile_default=COMPILE_BY_JOB)
    add_loader_options(parser)
    add_video_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.texts is not None:
        return _run_texts(args)
    if args.text_column or args.id_column:
        raise UsageError("--text-column and --id-column go with --texts FILE")
    if not args.paths:
        raise UsageError("give the images to embed (files, folders or globs), or --texts FILE")
    if args.engine == "ray":
        return _run_on_ray(args)
    output_format(args.out)  # before the model loads: a typo should cost no time
    scan = scan_inputs(args.paths, video_sampling(args))
    compiled = compile_by_job(args, len(scan.files))
    embedder = load_model(args)
    start = time.perf_counter()
    report = embed_to_file(scan, args.out, embedder, **loader_kwargs(args))
    seconds = time.perf_counter() - start
    earlier = report.count + len(report.skipped) - len(scan.skipped) - report.embedded - report.failed
    print(
        f"wrote {report.count} embeddings ({embedder.dims}-d, model {embedder.name}) to {report.out}; "
        f"manifest {report.manifest}"
    )
    _print_precision(args, embedder, compiled)
    resumed = f"; {earlier} were done by an earlier run" if earlier else ""
    print(rate_line(report.embedded, report.failed, seconds) + resumed)
    report_skipped("embed", report.skipped)
    return 0


def _run_texts(args: argparse.Namespace) -> int:
    if args.paths:
        raise UsageError(
            "--texts embeds the texts of one file: drop the image paths, or embed them separately"
        )
    if args.engine == "ray":
        raise UsageError("--texts runs in this process: drop --engine ray")
    args.compile = bool(args.compile)  # texts: compiled when asked
    output_format(args.out)  # before the file is read and the model loads
    rows = read_texts(args.texts, args.text_column, args.id_column)
    embedder = load_model(args)
    start = time.perf_counter()
    report = embed_texts_to_file(rows, args.out, embedder, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    print(
        f"wrote {report.count} text embeddings ({embedder.dims}-d, model {embedder.name}) to {report.out}; "
        f"manifest {report.manifest}"
    )
    _print_precision(args, embedder)
    earlier = report.count - report.embedded
    resumed = f"; {earlier} were done by an earlier run" if earlier else ""
    print(f"embedded {report.embedded} texts in {seconds:.1f} s{resumed}")
    return 0


def _print_precision(
    args: argparse.Namespace, embedder: Embedder, compiled: CompileChoice | None = None
) -> None:
    """The precision the job ran in, with `auto` why it was chosen, and whether the job chose to compile."""
    why = f" ({auto_precision(embedder.device)[1]})" if args.precision == "auto" else ""
    print(f"precision {embedder.mode.precision}{why}")
    say_compile_choice(embedder, compiled)


def _run_on_ray(args: argparse.Namespace) -> int:
    from ..embeddings.ray_engine import embed_with_ray

    if video_sampling(args) is not None:
        raise UsageError("video input runs with --engine local (the default)")
    if args.device or args.workers is not None:
        raise UsageError(
            "with --engine ray, each actor uses its GPU (or CPUs) and Ray decodes: drop --device/--workers"
        )

    args.compile = bool(args.compile)  # each actor would compile: only when asked
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
