"""`siglip index`: build or update a persistent search index of image folders."""

from __future__ import annotations

import argparse
import time

from ..embedder import DEFAULT_MODEL
from ..files import check_inputs
from ..index import SearchIndex
from ._options import (
    add_loader_options,
    add_model_options,
    loader_kwargs,
    model_kwargs,
    output_folder,
    rate_line,
    report_skipped,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "index",
        help="build or update a search index of image folders",
        description=(
            "Index the images under PATH (folders searched recursively, files, globs) into the folder --index. "
            "Run it again to update: only new or changed files are embedded, deleted ones drop out. An "
            "interrupted build completes when run again."
        ),
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image folders, files or glob patterns")
    parser.add_argument("--index", required=True, type=output_folder, help="index folder (created if needed)")
    add_model_options(parser, default=None)
    add_loader_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_inputs(args.paths)  # before the model loads: a typo should cost no time
    model = args.model or (None if SearchIndex.exists(args.index) else DEFAULT_MODEL)
    with SearchIndex(args.index, model, **model_kwargs(args)) as index:
        _ = index.embedder  # load the model first: the rate printed below is the indexing rate
        start = time.perf_counter()
        report = index.update(args.paths, **loader_kwargs(args))
        seconds = time.perf_counter() - start
        print(
            f"{report.added} added, {report.updated} updated, {report.removed} removed, {report.unchanged} "
            f"unchanged, {len(report.skipped)} unreadable; the index holds {report.total} images "
            f"(model {index.model})"
        )
        print(rate_line(report.added + report.updated, len(report.skipped), seconds))
    report_skipped("index", report.skipped)
    return 0
