"""`siglip search`: the images of an index that best match a text or an image."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from ...errors import UsageError
from ..embeddings.options import ModelOptions
from ..inputs.files import display_path
from ..metadata import described
from ..search.filters import Filter, parse_filter
from ..search.index import SearchIndex
from ..search.page import results_html
from ._options import (
    add_calibration_option,
    add_device_option,
    add_image_limit_option,
    integer,
    output_file,
    print_json,
    score_text,
    table,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search",
        help="search an index by text or by image",
        description='Rank the images of an index by similarity to a text ("a dog on a beach") or to --image.',
    )
    parser.add_argument("text", nargs="?", help="what to look for")
    parser.add_argument("--image", help="search by this image instead of a text")
    parser.add_argument("--index", required=True, help="index folder made by `siglip index`")
    parser.add_argument("-k", type=integer(1), default=10, help="number of results (default: 10)")
    parser.add_argument(
        "--where",
        metavar="FILTER",
        type=where_filter,
        help="only images whose metadata match, e.g. \"year >= 2023 and orientation = 'landscape' and not "
        'screenshot" (fields and operators: README, Metadata and filters)',
    )
    parser.add_argument(
        "--html", type=output_file, metavar="OUT.html", help="also write a page of thumbnails"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--model",
        default=None,
        help="the index's model, at its new place if it moved (default: the one the index was built with)",
    )
    add_device_option(parser)
    add_calibration_option(parser)  # an index built with int8-static embeds its queries so
    add_image_limit_option(parser)
    parser.set_defaults(run=run)


def where_filter(text: str) -> Filter:
    """--where parsed while the command line is (a mistake is told before anything loads)."""
    try:
        return parse_filter(text)
    except UsageError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def run(args: argparse.Namespace) -> int:
    if (args.text is None) == (args.image is None):
        raise UsageError("give a text to search for, or --image QUERY.jpg (one of the two)")
    with SearchIndex(args.index, args.model, args.device, options=ModelOptions.from_args(args)) as index:
        hits = (
            index.search_text(args.text, args.k, args.where)
            if args.image is None
            else index.search_image(args.image, args.k, args.where)
        )
    query = args.text if args.image is None else f"images like {args.image}"
    if args.html:
        Path(args.html).write_text(results_html(query, hits), encoding="utf-8")
    if args.json:
        print_json({"query": query, "results": [asdict(hit) for hit in hits]})
    else:
        rows = [
            [str(rank), score_text(hit.score), *described(hit.metadata), display_path(hit.path)]
            for rank, hit in enumerate(hits, start=1)
        ]
        print(table(rows, ["rank", "score", "date", "camera", "path"]))
    if args.html:
        print(f"wrote {args.html}", file=sys.stderr)
    return 0
