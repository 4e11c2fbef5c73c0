"""`siglip eval zeroshot|retrieval`: accuracy on your own data, computed as CLIP_benchmark does."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..classifier import ImageClassifier, is_classifier
from ..deps import require
from ..embeddings.options import ModelOptions
from ..evaluation import (
    CALIBRATION_BINS,
    evaluate_classifier,
    evaluate_retrieval,
    evaluate_zeroshot,
    plot_confusion_matrix,
    plot_reliability_diagram,
)
from ._options import (
    add_loader_options,
    add_model_options,
    add_template_option,
    load_model,
    loader_kwargs,
    output_file,
    print_json,
    report_skipped,
    table,
    templates_of,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="zero-shot accuracy or retrieval recall on your data")
    tasks = parser.add_subparsers(dest="task", required=True, metavar="TASK")

    zeroshot = tasks.add_parser(
        "zeroshot",
        help="top-1/top-5 accuracy, per-class recall and calibration on a folder of class folders",
        description="DATA holds one folder of images per class; the folder name (with _ as space) is the label. "
        "With a fine-tuned classifier as --model (siglip train --task classify), its head classifies the images "
        "and the folder names must be its classes.",
    )
    zeroshot.add_argument("--data", required=True, help="folder of class folders")
    add_template_option(zeroshot)
    zeroshot.add_argument(
        "--plot",
        type=output_file,
        default="confusion-matrix.png",
        help="confusion-matrix PNG (default: confusion-matrix.png)",
    )
    zeroshot.add_argument(
        "--reliability-plot",
        help="reliability-diagram PNG (default: reliability-diagram.png beside the confusion matrix)",
    )
    zeroshot.set_defaults(run=run_zeroshot)

    retrieval = tasks.add_parser(
        "retrieval",
        help="recall@1/5/10, image->text and text->image, on image-caption pairs",
        description="DATA is a .csv, .tsv or .jsonl file of (image path, caption) rows; paths relative to it.",
    )
    retrieval.add_argument("--data", required=True, help="pairs file")
    retrieval.add_argument("--image-column", default="image", help="column of image paths (default: image)")
    retrieval.add_argument(
        "--caption-column", default="caption", help="column of captions (default: caption)"
    )
    retrieval.set_defaults(run=run_retrieval)

    for task in (zeroshot, retrieval):
        task.add_argument("--json", action="store_true", help="machine-readable output")
        add_model_options(task)
        add_loader_options(task)


def run_zeroshot(args: argparse.Namespace) -> int:
    templates = templates_of(args)
    require("matplotlib", "eval", "the confusion-matrix plot")  # fail before the work, not after
    if is_classifier(args.model):  # a fine-tuned classifier: its head's probabilities, its own classes
        classifier = ImageClassifier.from_pretrained(args.model, args.device, ModelOptions.from_args(args))
        report = evaluate_classifier(args.data, classifier, **loader_kwargs(args))
    else:
        report = evaluate_zeroshot(args.data, load_model(args), templates, **loader_kwargs(args))
    plot = plot_confusion_matrix(report, args.plot)
    reliability_plot = plot_reliability_diagram(
        report, args.reliability_plot or Path(args.plot).with_name("reliability-diagram.png")
    )
    if args.json:
        print_json({**report.to_dict(), "plot": str(plot), "reliability_plot": str(reliability_plot)})
    else:
        print(f"{report.count} images, {len(report.classes)} classes")
        print(
            f"top-1 {report.top1:.2%}   top-5 {report.top5:.2%}   mean per-class recall {report.mean_per_class_recall:.2%}"
        )
        rows = [
            [name, "-" if recall is None else f"{recall:.4f}", str(int(report.confusion[i].sum()))]
            for i, (name, recall) in enumerate(report.per_class_recall.items())
        ]
        print(table(rows, ["class", "recall", "images"]))
        print(
            f"calibration of the top-1 probability: ECE {report.ece:.4f} ({CALIBRATION_BINS} bins); "
            f"median probability of the true class {report.median_true_class_probability:.4f}"
        )
        print(f"confusion matrix: {plot}")
        print(f"reliability diagram: {reliability_plot}")
    report_skipped("eval", report.skipped)
    return 0


def run_retrieval(args: argparse.Namespace) -> int:
    report = evaluate_retrieval(
        args.data, load_model(args), args.image_column, args.caption_column, **loader_kwargs(args)
    )
    if args.json:
        print_json(report.to_dict())
    else:
        print(f"{report.images} images, {report.captions} captions")
        rows = [
            [direction, *(f"{recalls[k]:.4f}" for k in recalls)]
            for direction, recalls in (
                ("image->text", report.image_to_text),
                ("text->image", report.text_to_image),
            )
        ]
        print(table(rows, ["", *(f"R@{k}" for k in report.image_to_text)]))
    report_skipped("eval", report.skipped)
    return 0
