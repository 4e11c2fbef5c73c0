"""The `siglip` command line: `siglip <command> --help` for each command.

Every command lives in its own module of this package and registers itself through `add_parser(subparsers)`,
which sets `run` (a function of the parsed arguments returning an exit code) as the parser's default.
A user error (a missing file, a bad checkpoint, bad data) ends with one line on stderr and exit code 2; set
SIGLIP_DEBUG=1 to see the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from ...core.hub import CheckpointError
from ...core.image_processing import ImageInputError
from ..embedder import MissingDependencyError
from ..training.data import DataError

COMMANDS = ("train", "classify", "embed", "index", "search", "eval", "export", "info", "convert")
USER_ERRORS = (
    CheckpointError,
    DataError,
    ImageInputError,
    FileNotFoundError,
    ValueError,
    MissingDependencyError,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="siglip", description="SigLIP models from the command line.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("siglip").setLevel(logging.INFO)
    try:
        return int(args.run(args) or 0)
    except USER_ERRORS as err:
        if os.environ.get("SIGLIP_DEBUG"):
            raise
        print(f"siglip {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`siglip ... | head`): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"siglip {args.command}: interrupted", file=sys.stderr)
        return 130
