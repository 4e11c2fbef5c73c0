"""`siglip train`: fine-tune a checkpoint or train from scratch with the sigmoid loss (options = TrainConfig)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing

from ..precision import TRAINING_PRECISIONS
from ..training.trainer import TrainConfig, train
from ._options import integer, output_folder, real

# What each option of TrainConfig may be, checked while parsing (TrainConfig checks how options combine).
_VALUES: dict[str, dict[str, typing.Any]] = {
    "output_dir": {"type": output_folder},
    "batch_size": {"type": integer(1)},
    "grad_accum": {"type": integer(1)},
    "epochs": {"type": real(0, above=True)},
    "steps": {"type": integer(1)},
    "lr": {"type": real(0, above=True)},
    "warmup_steps": {"type": integer(0)},
    "weight_decay": {"type": real(0)},
    "beta2": {"type": real(0, 1)},
    "grad_clip": {"type": real(0)},
    "precision": {"choices": TRAINING_PRECISIONS},
    "loss": {"choices": ("all_gather", "ring")},
    "loss_chunk_size": {"type": integer(1)},
    "workers": {"type": integer(0)},
    "log_every": {"type": integer(1)},
    "save_every": {"type": integer(0)},
    "keep_checkpoints": {"type": integer(1)},
    "eval_every": {"type": integer(0)},
    "max_num_patches": {"type": integer(1)},
    "max_image_pixels": {"type": integer(1)},
    "max_bad_fraction": {"type": real(0, 1)},
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train with the sigmoid loss (one process, or many under torchrun)",
        description=(
            "Fine-tune a checkpoint (--model) or train from a config (--config) on image-caption pairs. "
            "Multi-process: torchrun --nproc-per-node N -m siglip train ..."
        ),
    )
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        help_text = f.metadata.get("help", "")
        if kind is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text
            )
        elif typing.get_origin(kind) is list:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
            parser.add_argument(flag, nargs="+", default=default, help=f"{help_text} (default: {default})")
        else:
            scalar = next(t for t in _alternatives(kind) if t is not type(None))
            default = None if required else f.default
            parser.add_argument(
                flag,
                **{"type": scalar, **_VALUES.get(f.name, {})},
                required=required,
                default=default,
                help=f"{help_text} (default: {default})",
            )
    parser.set_defaults(run=run)


def _alternatives(kind: typing.Any) -> tuple:
    return typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)


def run(args: argparse.Namespace) -> int:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    final = train(TrainConfig(**values))
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one process speaks
        print(f"model saved to {final}")
    return 0
