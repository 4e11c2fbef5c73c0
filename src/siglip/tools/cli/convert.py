"""`siglip convert`: open_clip, timm and big_vision checkpoints into siglip folders, and siglip folders to open_clip."""

from __future__ import annotations

import argparse

from ...core.convert import Architecture, convert, to_open_clip


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert open_clip / timm / big_vision checkpoints, or write ours for open_clip",
        description="Convert an open_clip SigLIP checkpoint (file, or folder with open_clip_config.json), a timm "
        "SigLIP image tower or a big_vision .npz (SigLIP, or SigLIP 2 NaFlex) into a checkpoint folder that "
        "siglip and transformers load (--to); or write a siglip checkpoint folder as an open_clip checkpoint "
        "(--to-open-clip; not NaFlex, which open_clip lacks).",
    )
    parser.add_argument("src", metavar="SRC", help="the checkpoint file or folder to convert")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--to", metavar="DIR", help="write a siglip/transformers checkpoint folder (new or empty)"
    )
    target.add_argument(
        "--to-open-clip", metavar="OUT", help="write SRC (a siglip folder) as an open_clip checkpoint folder"
    )
    parser.add_argument(
        "--arch",
        default=None,
        help="override the detected architecture: open_clip, timm, big_vision, an open_clip configuration name "
        "(ViT-B-16-SigLIP) or a timm tower name (vit_base_patch16_siglip_224)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.to_open_clip:
        if args.arch:
            raise ValueError("--arch applies to --to (the source's architecture), not to --to-open-clip")
        architecture = to_open_clip(args.src, args.to_open_clip)
        _report(architecture, args.to_open_clip)
        return 0
    architecture = convert(args.src, args.to, arch=args.arch)
    _report(architecture, args.to)
    return 0


def _report(architecture: Architecture, out: str) -> None:
    print(f"architecture: {architecture}")
    for note in architecture.notes:
        print(f"note: {note}")
    print(f"written: {out}")
