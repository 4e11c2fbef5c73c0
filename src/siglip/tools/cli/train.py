"""`siglip train`: fine-tune a checkpoint or train from scratch with the sigmoid loss, or train an image
classifier (`--task classify`); options = TrainConfig."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing

from ..training.trainer import TrainConfig, train
from ._options import output_folder


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train with the sigmoid loss (one process, or many under torchrun), or train a classifier",
        description=(
            "Fine-tune a checkpoint (--model) or train from a config (--config) on image-caption pairs. "
            "Multi-process: torchrun --nproc-per-node N -m siglip train ... With --task classify: an image "
            "classifier on a folder of class folders (--probe linear: only its head, on the frozen image tower)."
        ),
    )
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        flags = (flag, *f.metadata.get("aliases", ()))
        kind = hints[f.name]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        help_text = f.metadata.get("help", "")
        if kind is bool:
            parser.add_argument(
                *flags, action=argparse.BooleanOptionalAction, default=f.default, help=help_text
            )
        elif typing.get_origin(kind) is list:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
            parser.add_argument(*flags, nargs="+", default=default, help=f"{help_text} (default: {default})")
        else:
            scalar = next(t for t in _alternatives(kind) if t is not type(None))
            default = None if required else f.default
            parser.add_argument(
                *flags,
                **{"type": scalar, **_rule(f)},
                required=required,
                default=default,
                help=f"{help_text} (default: {default})",
            )
    parser.set_defaults(run=run)


def _rule(f: dataclasses.Field) -> dict[str, typing.Any]:
    """How the command line applies a field's value rule (the output folder: that it is no file)."""
    if f.name == "output_dir":
        return {"type": output_folder}
    return f.metadata["value"].argparse() if "value" in f.metadata else {}


def _alternatives(kind: typing.Any) -> tuple:
    return typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)


def run(args: argparse.Namespace) -> int:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    final = train(TrainConfig(**values))
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one process speaks
        print(f"model saved to {final}")
        metrics = final.parent / "metrics.jsonl"
        lines = metrics.read_text().splitlines() if metrics.is_file() else []
        last = json.loads(lines[-1]) if lines else {}
        if "eval_top1" in last:
            print(f"evaluation top-1 after step {last['step']}: {last['eval_top1']:.2%}")
    return 0
