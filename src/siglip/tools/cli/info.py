"""`siglip info`: what a model is (config, parameter count) and where its files are; or what a search index
holds (type, storage, recall measured at build, sizes)."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from ...core.auto import AutoConfig, AutoModel, is_naflex
from ...core.hub import CONFIG_NAME, locate
from ..embeddings.embedder import default_device
from ..embeddings.inference import InferenceMode
from ._options import print_json, table


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info",
        help="config, parameter count and files of a model, or what a search index holds",
        description="Describe a model without loading its weights (bundled name, local folder or hub id), or "
        "a search index folder: its type, storage, the recall@10 measured against exact search when it was "
        "built, and its size on disk.",
    )
    parser.add_argument(
        "model",
        metavar="MODEL|INDEX",
        help="bundled model name, local checkpoint folder or hub id; or an index folder",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(run=run)


def describe(name: str) -> dict[str, Any]:
    """Config summary, parameter counts and local files of a model (no weights are read)."""
    checkpoint = locate(name)
    config = AutoConfig.from_pretrained(checkpoint)
    with torch.device("meta"):  # shapes only: exact counts, no memory, no download of the weights
        model = AutoModel.from_config(config)
    location = checkpoint.file(CONFIG_NAME).parent
    vision, text = config.vision_config, config.text_config
    naflex = is_naflex(config)  # NaFlex: no image size, each image at its own patch grid
    device = default_device()
    return {
        "model": checkpoint.record_name,
        "location": str(location),
        "parameters": {
            "total": model.num_parameters(),
            "vision": sum(p.numel() for p in model.vision_model.parameters()),
            "text": sum(p.numel() for p in model.text_model.parameters()),
        },
        "embedding_dims": text.projection_size,
        "image": {
            "size": None if naflex else vision.image_size,
            "positions": vision.num_patches if naflex else None,
            "patch": vision.patch_size,
            "layers": vision.num_hidden_layers,
            "width": vision.hidden_size,
        },
        "text": {
            "positions": text.max_position_embeddings,
            "vocabulary": text.vocab_size,
            "layers": text.num_hidden_layers,
            "width": text.hidden_size,
        },
        "dtype": config.torch_dtype,
        "inference": {"device": str(device), "precision": InferenceMode().resolve(device).precision},
        "files": {f.name: f.stat().st_size for f in sorted(location.iterdir()) if f.is_file()},
        "config": config.to_dict(),
    }


def describe_index(directory: str) -> dict[str, Any]:
    """Model, size, build info (type, recall) and files of a search index."""
    from dataclasses import asdict

    from ..search.index import SearchIndex

    with SearchIndex(directory) as index:
        index.sync()  # the recall shown is the current file's
        build = index.build_info
        return {
            "index": str(index.directory),
            "model": index.model,
            "images": len(index),
            "dims": index.store.dims,
            "embedding": index.embedding_settings,  # Embedder.settings; None: not recorded
            "build": asdict(build) if build else None,
            "files": {f.name: f.stat().st_size for f in sorted(index.directory.iterdir()) if f.is_file()},
        }


def _run_index(args: argparse.Namespace) -> int:
    info = describe_index(args.model)
    if args.json:
        print_json(info)
        return 0
    build = info["build"]
    recall = (
        f"{build['recall_at_10']:.4f} against exact search ({build['recall_queries']} held-out queries, "
        f"{build['vectors_at_build']:,} vectors at build)"
        if build and build["recall_at_10"] is not None
        else "not measured (too few vectors)"
    )
    rows = [
        ["index", info["index"]],
        ["model", info["model"]],
        ["images", f"{info['images']:,} ({info['dims']}-d)"],
        ["embedded", _embedding_text(info["embedding"])],
        ["type", f"{build['kind']} ({build['factory']}), storage {build['storage']}" if build else "-"],
        ["search", (build["search_params"] or "exhaustive") if build else "-"],
        ["recall@10", recall],
    ]
    print(table(rows))
    print("files")
    print(table([[f"  {name}", _size(size)] for name, size in info["files"].items()]))
    return 0


def _embedding_text(settings: dict[str, Any] | None) -> str:
    if settings is None:
        return "precision and patch budget not recorded (an index made before they were kept)"
    patches = settings["max_num_patches"]
    reduced = ", reduced JPEG decoding" if settings.get("reduced_decode") else ""  # absent: an older index
    return (
        f"precision {settings['precision']}" + (f", max_num_patches {patches}" if patches else "") + reduced
    )


def run(args: argparse.Namespace) -> int:
    from ..search.index import SearchIndex

    if SearchIndex.exists(args.model):
        return _run_index(args)
    info = describe(args.model)
    if args.json:
        print_json(info)
        return 0
    params, image, text = info["parameters"], info["image"], info["text"]
    rows = [
        ["model", info["model"]],
        ["location", info["location"]],
        ["parameters", f"{params['total']:,} (vision {params['vision']:,}, text {params['text']:,})"],
        ["embedding", f"{info['embedding_dims']} dims"],
        [
            "image",
            (
                f"{image['size']} x {image['size']} pixels"
                if image["size"]
                else f"NaFlex: native aspect ratio, a {image['positions']}-position grid resized per image"
            )
            + f", patch {image['patch']}, {image['layers']} layers, width {image['width']}",
        ],
        [
            "text",
            f"{text['positions']} tokens, vocabulary {text['vocabulary']:,}, {text['layers']} layers, width {text['width']}",
        ],
        ["dtype", str(info["dtype"])],
        [
            "inference",
            f"--precision auto runs {info['inference']['precision']} on {info['inference']['device']}",
        ],
    ]
    print(table(rows))
    print("files")
    print(table([[f"  {name}", _size(size)] for name, size in info["files"].items()]))
    return 0


def _size(size: float) -> str:
    units = ("B", "kB", "MB", "GB", "TB")
    step = 0
    while size >= 1000 and step < len(units) - 1:
        size, step = size / 1000, step + 1
    return f"{size:.0f} B" if step == 0 else f"{size:.1f} {units[step]}"
