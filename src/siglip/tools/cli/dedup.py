"""`siglip dedup`: groups of near-duplicate images, from an index or from image folders; a JSON and HTML report,
and with --move-to (only then) the duplicates moved into a folder, undoable with --undo."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ...errors import UsageError
from ..embeddings.options import ModelOptions
from ..inputs.files import display_path
from ..inputs.tar_shards import scan_inputs
from ..search.dedup import (
    DEFAULT_THRESHOLD,
    MANIFEST_NAME,
    embed_folder,
    find_groups,
    index_vectors,
    move_duplicates,
    neighbour_pairs,
    report_html,
    report_json,
    undo_moves,
)
from ..search.index import SearchIndex
from ..search.store import replace_atomically
from ._options import (
    COMPILE_BY_JOB,
    add_loader_options,
    add_model_options,
    compile_by_job,
    integer,
    load_model,
    loader_kwargs,
    output_file,
    output_folder,
    print_json,
    real,
    report_skipped,
    say_compile_choice,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dedup",
        help="find near-duplicate images (an index's, or a folder's)",
        description=(
            "Group near-duplicate images (resized, re-encoded, cropped copies, bursts) by the cosine similarity of "
            "their embeddings: the images of --index (its stored vectors, no model run), or the images of PATHs "
            "(embedded first). Each group has a keeper (largest resolution, then oldest file) and members at "
            "least --threshold similar to it. Prints the groups (or --json); nothing is moved or deleted "
            f"unless --move-to DIR is given, which moves the non-keepers into DIR and writes DIR/{MANIFEST_NAME} "
            "for --undo."
        ),
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="image files, folders or glob patterns")
    parser.add_argument(
        "--index", default=None, help="an index folder made by `siglip index`, instead of PATHs"
    )
    parser.add_argument(
        "--threshold",
        type=real(0, 1, above=True),
        default=DEFAULT_THRESHOLD,
        help=f"cosine similarity from which two images are duplicates (default: {DEFAULT_THRESHOLD}: re-encoded, "
        "resized and slightly cropped copies score above it, similar but distinct photos below)",
    )
    parser.add_argument(
        "--neighbours",
        type=integer(1),
        default=None,
        metavar="K",
        help="with --index: look for duplicates among each image's K nearest neighbours through the index's "
        "search, for indexes too large to compare all pairs (approximate on ANN indexes; a group of more "
        "than K+1 copies may split). Default: all pairs, exactly (10k images: ~2 s; the cost grows as N squared)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--html", type=output_file, metavar="OUT.html", help="also write a page of the groups"
    )
    parser.add_argument(
        "--move-to",
        type=output_folder,
        metavar="DIR",
        help="move the duplicates (never the keepers) into DIR at their relative paths, never over a file",
    )
    parser.add_argument(
        "--undo", metavar="MANIFEST", help=f"put back the files of a --move-to ({MANIFEST_NAME})"
    )
    add_model_options(parser, compile_default=COMPILE_BY_JOB)
    add_loader_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.undo is not None:
        if args.paths or args.index or args.move_to:
            raise UsageError("--undo MANIFEST puts files back and does nothing else: drop the other inputs")
        restored = undo_moves(args.undo)
        print(f"moved {restored} file(s) back; removed {args.undo}")
        return 0
    if bool(args.paths) == bool(args.index):
        raise UsageError(
            "give the images to compare (files, folders or globs) or --index DIR (one of the two)"
        )
    if args.neighbours is not None and not args.index:
        raise UsageError("--neighbours searches an index: give --index DIR")
    start = time.perf_counter()
    skipped: list[tuple[str, str]] = []
    pairs = None
    if args.index:
        # the index's vectors: no model runs, so the precision "auto" means on this machine (the default) need
        # not be the index's; one asked for must be
        args.compile = bool(args.compile)
        options = ModelOptions.from_args(args)
        options = options.replace(precision=None) if options.precision == "auto" else options
        with SearchIndex(args.index, None, args.device, options=options) as index:
            ids, paths, vectors = index_vectors(index)
            model = index.model
            if args.neighbours is not None:
                pairs = neighbour_pairs(index, ids, vectors, args.threshold, args.neighbours)
    else:
        scan = scan_inputs(args.paths)
        compiled = compile_by_job(args, len(scan.files))
        embedder = load_model(args)
        paths, vectors, skipped = embed_folder(embedder, scan.files, **loader_kwargs(args))
        say_compile_choice(embedder, compiled, file=sys.stderr)
        skipped = scan.skipped + skipped
        model = embedder.name
    groups = find_groups(paths, vectors, args.threshold, pairs=pairs)
    report = report_json(groups, args.threshold, model, len(paths))
    seconds = time.perf_counter() - start
    if args.html:
        page = report_html(groups, args.threshold)
        replace_atomically(Path(args.html), lambda tmp: tmp.write_text(page, encoding="utf-8"))
    if args.json:
        print_json(report)
    else:
        for number, group in enumerate(groups, start=1):
            print(f"group {number}: keep {display_path(group.keeper)}")
            for member in group.members:
                print(f"  {member.similarity:.4f}  {display_path(member.path)}")
    print(
        f"{len(groups)} group(s), {report['duplicates']} duplicate(s) among {len(paths)} images at similarity "
        f">= {args.threshold} ({seconds:.1f} s)",
        file=sys.stderr,
    )
    if args.html:
        print(f"wrote {args.html}", file=sys.stderr)
    if args.move_to and groups:
        manifest = move_duplicates(groups, args.move_to)
        print(
            f"moved {report['duplicates']} duplicate(s) into {args.move_to}; undo: siglip dedup --undo {manifest}",
            file=sys.stderr,
        )
    report_skipped("dedup", skipped)
    return 0
