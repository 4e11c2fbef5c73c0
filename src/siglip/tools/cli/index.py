"""`siglip index`: build or update a persistent search index of image folders."""

from __future__ import annotations

import argparse
import time

from ...errors import UsageError
from ..embeddings.compiled import CACHED
from ..embeddings.embedder import DEFAULT_MODEL
from ..embeddings.options import ModelOptions
from ..inputs.files import check_inputs
from ..search.ann import INDEX_TYPES, STORAGES
from ..search.index import SearchIndex
from ._options import (
    add_loader_options,
    add_model_options,
    add_video_options,
    loader_kwargs,
    output_folder,
    rate_line,
    report_skipped,
    video_sampling,
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
    parser.add_argument("paths", nargs="*", metavar="PATH", help="image folders, files or glob patterns")
    parser.add_argument("--index", required=True, type=output_folder, help="index folder (created if needed)")
    parser.add_argument(
        "--from-embeddings",
        metavar="SOURCE",
        help="add the embeddings of a `siglip embed` Parquet file or a folder of `--engine ray` shards, without "
        "embedding again (the model is theirs)",
    )
    parser.add_argument(
        "--index-type",
        choices=INDEX_TYPES,
        default=None,
        help="search structure: exact flat, ivf, hnsw, compressed ivfpq, or auto by size (default: as the "
        "index has it, else auto); the recall@10 each build reaches is shown by `siglip info INDEX`",
    )
    parser.add_argument(
        "--storage",
        choices=STORAGES,
        default=None,
        help="vector precision in the index: fp32, fp16 (half the size), or auto: fp32 for flat, fp16 for "
        "the approximate types (default: as the index has it, else auto)",
    )
    parser.add_argument(
        "--memory-budget",
        metavar="SIZE",
        default=None,
        help="memory the index may hold while searching, e.g. 8GiB (default: as the index has it, else 8GiB): "
        "auto keeps the fp16 vectors in memory (ivf) while they fit, else compressed codes re-ranked from the "
        "vectors on disk (ivfpq)",
    )
    add_model_options(
        parser,
        default=None,
        indexed=True,
        compile_default="a package an earlier job compiled (siglip embed, or index --compile), loaded where "
        "it is in the cache; nothing compiled anew",
    )
    add_loader_options(parser)
    add_video_options(parser)
    parser.set_defaults(run=run, compile=CACHED)


def run(args: argparse.Namespace) -> int:
    if args.from_embeddings:
        return _run_from_embeddings(args)
    if not args.paths:
        raise UsageError("give image folders, files or patterns to index, or --from-embeddings SOURCE")
    check_inputs(args.paths)  # before the model loads: a typo should cost no time
    model = args.model or (None if SearchIndex.exists(args.index) else DEFAULT_MODEL)
    kinds = {"index_type": args.index_type, "storage": args.storage, "memory_budget": args.memory_budget}
    with SearchIndex(args.index, model, args.device, options=ModelOptions.from_args(args), **kinds) as index:
        _ = index.embedder  # load the model first: the rate printed below is the indexing rate
        start = time.perf_counter()
        report = index.update(args.paths, **loader_kwargs(args), sampling=video_sampling(args))
        seconds = time.perf_counter() - start
        print(
            f"{report.added} added, {report.updated} updated, {report.removed} removed, {report.unchanged} "
            f"unchanged, {len(report.skipped)} unreadable; the index holds {report.total} images "
            f"(model {index.model})"
        )
        print(rate_line(report.added + report.updated, len(report.skipped), seconds))
    report_skipped("index", report.skipped)
    return 0


def _run_from_embeddings(args: argparse.Namespace) -> int:
    from ..embeddings.readers import embeddings_model

    if args.paths:
        raise UsageError("give either image PATHs or --from-embeddings, not both")
    model = args.model or (None if SearchIndex.exists(args.index) else embeddings_model(args.from_embeddings))
    kinds = {"index_type": args.index_type, "storage": args.storage, "memory_budget": args.memory_budget}
    with SearchIndex(args.index, model, args.device, options=ModelOptions.from_args(args), **kinds) as index:
        start = time.perf_counter()
        report = index.import_embeddings(args.from_embeddings)
        seconds = time.perf_counter() - start
        print(
            f"{report.added} added, {report.updated} updated, {report.unchanged} unchanged from "
            f"{args.from_embeddings} in {seconds:.1f} s; the index holds {report.total} images (model {index.model})"
        )
    report_skipped("index", report.skipped)
    return 0
