"""`siglip classify`: zero-shot classification of images against labels you choose, or a fine-tuned
classifier's own classes (`siglip train --task classify`)."""

from __future__ import annotations

import argparse
import functools

from ...errors import NoImagesError, UsageError
from ..classifier import ImageClassifier, is_classifier
from ..embeddings.options import ModelOptions
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
        help="score images against labels you choose (zero-shot), or with a fine-tuned classifier",
        description=(
            "Score each image against each label with SigLIP's sigmoid probability (independent per label). "
            "Example: siglip classify photos/ --labels cat dog 'a red car'. A classifier trained with "
            "siglip train --task classify needs no labels: siglip classify --model runs/probe/model photos/ "
            "shows its classes' probabilities (softmax)."
        ),
    )
    parser.add_argument(
        "images", nargs="+", metavar="IMAGE", help="image files, folders (recursive) or globs"
    )
    parser.add_argument(
        "--labels",
        nargs="*",
        default=None,
        metavar="LABEL",
        help="candidate labels (required, except with a fine-tuned classifier's --model)",
    )
    add_template_option(parser)
    parser.add_argument("--top-k", type=integer(1), default=5, help="labels shown per image (default: 5)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_model_options(parser)
    add_loader_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.labels is not None:
        check_labels(args.labels)  # before the model loads: a typo should cost no time
    fine_tuned = is_classifier(args.model)
    if fine_tuned and args.labels is not None:
        raise UsageError(f"'{args.model}' is a fine-tuned classifier with its own classes: drop --labels")
    if not fine_tuned and args.labels is None:
        raise UsageError("--labels is required: the classes to score (or a fine-tuned classifier's --model)")
    scan = scan_images(args.images)
    results, skipped = [], list(scan.skipped)
    if fine_tuned:
        model = ImageClassifier.from_pretrained(args.model, args.device, ModelOptions.from_args(args))
        batches = model.classify_files(scan.files, **loader_kwargs(args))
        rank = functools.partial(model.top_k, k=args.top_k)
    else:
        pipe = ZeroShotImageClassificationPipeline(load_model(args))
        model = pipe.embedder
        classes = pipe.label_embeddings(args.labels, templates_of(args))
        batches = model.embed_files(scan.files, **loader_kwargs(args))
        rank = functools.partial(
            pipe.rank, class_embeds=classes, candidate_labels=args.labels, top_k=args.top_k
        )
    for batch in batches:
        ranked = rank(batch.vectors)
        results += [{"path": f.path, "labels": labels} for f, labels in zip(batch.files, ranked, strict=True)]
        skipped += [(f.path, reason) for f, reason in batch.failed]
    if not results:
        report_skipped("classify", skipped)
        raise NoImagesError(f"none of the {len(scan.files)} images could be read")
    if args.json:
        print_json({"model": model.name, "results": results, "skipped": skipped_as_json(skipped)})
    else:
        rows = [
            [display_path(result["path"]) if i == 0 else "", item["label"], score_text(item["score"])]
            for result in results
            for i, item in enumerate(result["labels"])
        ]
        print(table(rows, ["image", "label", "score"]))
    report_skipped("classify", skipped)
    return 0
