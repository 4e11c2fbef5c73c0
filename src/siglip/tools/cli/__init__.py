"""The `siglip` command line: `siglip <command> --help` for each command.

Every command lives in its own module of this package and registers itself through `add_parser(subparsers)`,
which sets `run` (a function of the parsed arguments returning an exit code) as the parser's default.
Exit status: 0 when the command did its work, files it had to leave out included (they are listed on stderr,
and in the `skipped` list of `--json` output); 2 for a user error, printed as one line on stderr: a
`SiglipError` (a missing file, a bad checkpoint, bad data, a bad option, rejected while parsing), or a
failure of the system under the command (an `OSError` with an errno: a full disk, permission denied, a
read-only file system). Any other exception is a bug and keeps its traceback. SIGLIP_DEBUG=1 shows the
traceback of a user error too. 130 after Ctrl-C; 143 after SIGTERM (what `kill`, `timeout`, systemd and
Kubernetes send), which a command unwinds from as from Ctrl-C: its temporary files removed, its finished work
kept for the next run to resume from (a SIGKILL leaves the same state, less the clean-up).
"""

from __future__ import annotations

import argparse
import errno
import functools
import importlib
import logging
import os
import signal
import sys
import threading
from typing import NoReturn

from ...errors import ImageInputError, SiglipError
from ..inputs.files import display_path

COMMANDS = (
    "train",
    "classify",
    "embed",
    "index",
    "search",
    "dedup",
    "eval",
    "export",
    "info",
    "serve",
    "convert",
)


class Parser(argparse.ArgumentParser):
    """argparse's parser, but a bad argument is one line (`siglip search: error: argument -k: ...`), as
    every other user error, with a pointer to --help instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="siglip", description="SigLIP models from the command line.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(subparsers)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C raises `KeyboardInterrupt`, so that a command unwinds the
    same way (Python's default for SIGTERM ends the process at once: no `finally`, no `atexit`)."""


def _terminate(command_pid: int, signum: int, frame: object) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM ends the process at once, clean-up or not
    if os.getpid() != command_pid:  # a child forked with the handler (a decoding worker): SIGTERM's default
        os.kill(os.getpid(), signum)
        return
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("siglip").setLevel(logging.INFO)
    logging.getLogger("huggingface_hub").propagate = False  # it prints its own lines: once, not twice
    # SIGTERM unwinds the command, where nothing else handles it (a program calling `main` may have its own
    # handler) and from the main thread only (the only one that may set handlers); `serve` sets its own
    handles_sigterm = (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    )
    if handles_sigterm:
        signal.signal(signal.SIGTERM, functools.partial(_terminate, os.getpid()))
    try:
        return int(args.run(args) or 0)
    except SiglipError as err:
        if os.environ.get("SIGLIP_DEBUG"):
            raise
        print(f"siglip {args.command}: error: {_user_error(err)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`siglip ... | head`): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as err:
        if err.errno is None or os.environ.get("SIGLIP_DEBUG"):
            raise
        print(f"siglip {args.command}: error: {_system_error(err)}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"siglip {args.command}: terminated", file=sys.stderr)
        raise SystemExit(143) from None  # ends a program that called `main` in-process too, as SIGTERM would
    except KeyboardInterrupt:
        print(f"siglip {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if handles_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _user_error(err: SiglipError) -> str:
    """The message of a user error as a command says it, on one line: an image file by its name, not by its
    place in the Python call that read it (`images[0] ('cat.jpg')`), and a listing (the Python API's
    checkpoint errors give a line per weight) folded into the line."""
    if isinstance(err, ImageInputError) and err.path is not None:
        return err.renamed(f"'{display_path(err.path)}'")
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    message = lines[0] if lines else type(err).__name__
    for line in lines[1:]:  # "heading:" runs on into its first item; the items are separated by "; "
        message += (" " if message.endswith(":") else "; ") + line
    return message


def _system_error(err: OSError) -> str:
    """One line for a failed system call: what failed, on which file, and the fix when there is one."""
    where = f" ('{display_path(os.fsdecode(err.filename))}')" if err.filename is not None else ""
    text = f"{err.strerror or err}{where}"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        text += "; free some space and run the command again (finished work is kept)"
    return text
