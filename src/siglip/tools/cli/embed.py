"""`siglip embed`: embeddings of image files into Parquet or .npy, resumable."""

from __future__ import annotations

import argparse
import time

from ..embedding_files import OUTPUT_FORMATS, embed_to_file, output_format
from ..files import scan_images
from ._options import (
    add_loader_options,
    add_model_options,
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
            "picks up where it stopped when run again."
        ),
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or glob patterns")
    parser.add_argument("--out", required=True, help=f"output file ({' or '.join(OUTPUT_FORMATS)})")
    add_model_options(parser)
    add_loader_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    output_format(args.out)  # before the model loads: a typo should cost no time
    scan = scan_images(args.paths)
    embedder = load_model(args)
    start = time.perf_counter()
    report = embed_to_file(scan, args.out, embedder, **loader_kwargs(args))
    seconds = time.perf_counter() - start
    earlier = report.count + len(report.skipped) - len(scan.skipped) - report.embedded - report.failed
    print(
        f"wrote {report.count} embeddings ({embedder.dims}-d, model {embedder.name}) to {report.out}; "
        f"manifest {report.manifest}"
    )
    resumed = f"; {earlier} were done by an earlier run" if earlier else ""
    print(rate_line(report.embedded, report.failed, seconds) + resumed)
    report_skipped("embed", report.skipped)
    return 0
