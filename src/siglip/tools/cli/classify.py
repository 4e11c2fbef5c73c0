"""`siglip classify`: zero-shot classification of images against labels you choose."""

from __future__ import annotations

import argparse

from ...errors import NoImagesError
from ..inputs.files import display_path, scan_images, skipped_as_json
from ..pipelines import ZeroShotImageClassificationPipeline
from ..zeroshot import check_labels
from ._options import (
    add_loader_options,
    add_model_options,
    add_template_option,
    integer,
    load_model,
    loader_kwargs,
    print_json,
    report_skipped,
    score_text,
    table,
    templates_of,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "classify",
        help="score images against labels you choose (zero-shot)",
        description=(
            "Score each image against each label with SigLIP's sigmoid probability (independent per label). "
            "Example: siglip classify photos/ --labels cat dog 'a red car'"
        ),
    )
    parser.add_argument(
        "images", nargs="+", metavar="IMAGE", help="image files, folders (recursive) or globs"
    )
    parser.add_argument(
        "--labels", nargs="*", default=[], required=True, metavar="LABEL", help="candidate labels"
    )
    add_template_option(parser)
    parser.add_argument("--top-k", type=integer(1), default=5, help="labels shown per image (default: 5)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_model_options(parser)
    add_loader_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_labels(args.labels)  # before the model loads: a typo should cost no time
    templates = templates_of(args)
    scan = scan_images(args.images)
    pipe = ZeroShotImageClassificationPipeline(load_model(args))
    classes = pipe.label_embeddings(args.labels, templates)
    results, skipped = [], list(scan.skipped)
    for batch in pipe.embedder.embed_files(scan.files, **loader_kwargs(args)):
        ranked = pipe.rank(batch.vectors, classes, args.labels, args.top_k)
        results += [{"path": f.path, "labels": labels} for f, labels in zip(batch.files, ranked, strict=True)]
        skipped += [(f.path, reason) for f, reason in batch.failed]
    if not results:
        report_skipped("classify", skipped)
        raise NoImagesError(f"none of the {len(scan.files)} images could be read")
    if args.json:
        print_json({"model": pipe.embedder.name, "results": results, "skipped": skipped_as_json(skipped)})
    else:
        rows = [
            [display_path(result["path"]) if i == 0 else "", item["label"], score_text(item["score"])]
            for result in results
            for i, item in enumerate(result["labels"])
        ]
        print(table(rows, ["image", "label", "score"]))
    report_skipped("classify", skipped)
    return 0
