"""Options and output helpers shared by the commands that run a model (classify, embed, index, search, eval).

Every numeric, enumerated, device or path option is checked while the command line is parsed, by the types
below (`integer`, `real`, `device`, `output_file`, `output_folder`), so that no value outside its meaning
reaches the work, and a mistake costs no time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from ...core.auto import AutoConfig, Siglip2ImageProcessor
from ...core.hub import locate
from ...core.two_tower.torch_resize import BACKENDS
from ...errors import UsageError
from ..embeddings.calibration import MAX_IMAGES
from ..embeddings.compiled import CACHED, CompileChoice, CompiledTower, compile_pays
from ..embeddings.embedder import DEFAULT_MODEL, Embedder, resolve_device
from ..embeddings.inference import InferenceMode
from ..embeddings.options import ModelOptions
from ..embeddings.precision import PRECISIONS
from ..inputs.files import VIDEO_EXTENSIONS, display_path
from ..inputs.video import DEFAULT_EVERY_S, EVERY, SCENE_THRESHOLD, Sampling, sampling_of
from ..values import Number, whole
from ..zeroshot import DEFAULT_TEMPLATE, check_templates

# `--compile`'s default where a command decides by its job's size (`compile_by_job`), said in its help
COMPILE_BY_JOB = (
    "when the job is big enough to pay it back, for a base model ~1,000 images on a CPU with AMX, "
    "~14,000 (int8) or ~12,000 (bf16) without; at any size where an earlier job compiled it; never in bf16 "
    "on a CPU with AMX for a base-size model, where the eager towers are as fast; never in fp32, whose eager "
    "towers are transformers' own bit for bit"
)


def add_model_options(
    parser: argparse.ArgumentParser,
    default: str | None = DEFAULT_MODEL,
    *,
    indexed: bool = False,
    compile_default: str = "",
) -> None:
    """--model, --device, --precision, --calibration, --compile and --max-num-patches. `indexed`: for an index, whose
    recorded precision and patch budget are the defaults (and the only values accepted) once it exists.
    `compile_default`: for a command that decides for itself whether to compile (what it does, in words for
    the help), `--compile` defaults to None and may be refused with `--no-compile`."""
    shown = f"default: {default}" if default else "default: the one the index was built with"
    parser.add_argument(
        "--model", default=default, help=f"bundled model name, local checkpoint folder or hub id ({shown})"
    )
    add_device_option(parser)
    recorded = "; an existing index's own value, the only one it accepts" if indexed else ""
    parser.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default=None if indexed else "auto",
        help="inference precision: auto (bf16 on GPUs with bf16 units and AMX CPUs, fp16 on older GPUs, int8 on other x86 CPUs, else fp32), fp32, bf16, "
        "bf16-autocast, fp16 (GPU), int8 (CPU: faster, less exact) or int8-static (CPU: int8 with activation "
        "scales calibrated ahead on --calibration inputs, compiled; about 1.1x int8 --compile); see BENCHMARKS.md "
        f"for the costs (default: auto{recorded})",
    )
    add_calibration_option(parser)
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction if compile_default else "store_true",
        default=None if compile_default else False,
        help="compile the model on first use: on a CPU, bf16 1.1-1.3x and int8 1.0-1.2x their eager modes "
        "(compiled ahead of time with frozen weights, 25-60 s per base tower the first time, then loaded from "
        "the cache in about a second; int8 needs the int8 extra), fp32 2.1-3.2x on CPUs whose MKL runs it "
        "with AVX2 only (AMD; within ~4e-6 of transformers' numbers, where eager fp32 is bit for bit: compiled "
        f"only when asked){f' (default: {compile_default})' if compile_default else ''}",
    )
    parser.add_argument(
        "--max-num-patches",
        type=integer(1, Siglip2ImageProcessor.MAX_NUM_PATCHES),  # the processor's bound, checked at once
        default=None,
        metavar="N",
        help="SigLIP 2 NaFlex models: patches per image (default: the checkpoint's, 256 for the released "
        f"ones{recorded}; 576 or 1024 see more detail, at more cost; at most "
        f"{Siglip2ImageProcessor.MAX_NUM_PATCHES})",
    )


def add_calibration_option(parser: argparse.ArgumentParser) -> None:
    """--calibration: the inputs int8-static calibrates its activation scales on."""
    parser.add_argument(
        "--calibration",
        nargs="+",
        default=None,
        metavar="PATH",
        help="--precision int8-static: image files, folders or glob patterns of images like those to embed (a "
        f"few dozen; at most {MAX_IMAGES} are used), and .txt files of texts like those to embed (one per line), "
        "that the activation scales are calibrated on; a tower without any runs int8 with per-call scales",
    )


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """--device, checked against the devices this machine has."""
    parser.add_argument(
        "--device", type=device, default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)"
    )


def add_loader_options(parser: argparse.ArgumentParser) -> None:
    """--batch-size, --workers, --no-progress, --reduced-decode and --max-image-pixels, for commands that
    read many image files."""
    parser.add_argument(
        "--batch-size", type=integer(1), default=32, help="images per model call (default: 32)"
    )
    parser.add_argument(
        "--workers",
        type=integer(0),
        default=None,
        help="image-decoding processes (default: one per core, at most 8; none for a model on a CPU of 2 cores "
        "or fewer)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--reduced-decode",
        action="store_true",
        help="decode large JPEGs at 1/2, 1/4 or 1/8 scale (about 2x faster decoding, slightly different pixels)",
    )
    add_image_limit_option(parser)


def add_image_limit_option(parser: argparse.ArgumentParser) -> None:
    """--max-image-pixels (the decompression-bomb limit of the image files a command decodes) and
    --image-backend."""
    parser.add_argument(
        "--max-image-pixels",
        type=integer(1),
        default=None,
        metavar="N",
        help="image files with more pixels are refused as possible decompression bombs (default: Pillow's "
        "limit, about 89 million)",
    )
    add_image_backend_option(parser)


def add_image_backend_option(parser: argparse.ArgumentParser) -> None:
    """--image-backend: the image preprocessing of the command's model (`ModelOptions.image_backend`)."""
    parser.add_argument(
        "--image-backend",
        choices=BACKENDS,
        default=None,
        help="image preprocessing: pil (transformers' PIL processors, the reference numbers) or torch "
        "(transformers 5's default torchvision processors, without torchvision); pixels differ by one "
        "8-bit level (default: torch, as transformers 5; an index keeps the one it was built with)",
    )


def add_template_option(parser: argparse.ArgumentParser) -> None:
    """--template, repeatable: prompt ensembles."""
    parser.add_argument(
        "--template",
        dest="templates",
        action="append",
        metavar="TEMPLATE",
        help=f"prompt with {{}} where the label goes; repeat to ensemble several (default: {DEFAULT_TEMPLATE!r})",
    )


def templates_of(args: argparse.Namespace) -> list[str]:
    """The --template values (checked), or the default template."""
    templates = args.templates or [DEFAULT_TEMPLATE]
    check_templates(templates)
    return templates


def loader_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "batch_size": args.batch_size,
        "workers": args.workers,
        "progress": False if args.no_progress else None,
    }


def compile_by_job(args: argparse.Namespace, images: int) -> CompileChoice | None:
    """Without --compile or --no-compile, whether a job of `images` images compiles its image tower
    (`compile_pays`: True, False, or `compiled.CACHED`), set in `args.compile`; None when the command line
    said."""
    if args.compile is not None:
        return None
    device = resolve_device(args.device)
    precision = InferenceMode(args.precision).resolve(device).precision
    choice = compile_pays(AutoConfig.from_pretrained(locate(args.model)), images, precision, device)
    args.compile = choice.compile
    return choice


def say_compile_choice(embedder: Embedder, choice: CompileChoice | None, file: TextIO | None = None) -> None:
    """Print whether a job's image tower ran compiled ahead of time, and why (`choice`, from
    `compile_by_job`); nothing when the command line said."""
    if choice is None:
        return
    done = isinstance(embedder.model.vision_model, CompiledTower)
    cache = ""
    if choice.compile == CACHED:
        cache = (
            "; its package was in the cache" if done else "; its package was not in the cache, or --compile"
        )
    print(f"{'compiled ahead of time' if done else 'not compiled'} ({choice.why}{cache})", file=file)


def load_model(args: argparse.Namespace) -> Embedder:
    """The `--model` of a command, loaded as its options say (`ModelOptions.from_args`)."""
    return Embedder.from_pretrained(args.model, device=args.device, options=ModelOptions.from_args(args))


_SURROGATE = re.compile(r"[\ud800-\udfff]")


def print_json(data: Any) -> None:
    """`data` as JSON on stdout, valid for any file name: the bytes of a name that is not UTF-8 (which Python
    holds as lone surrogates) are written as `\\udcXX` escapes, which `json.loads` and `os.fsencode` undo."""
    text = json.dumps(data, indent=2, ensure_ascii=False)
    sys.stdout.write(_SURROGATE.sub(lambda m: f"\\u{ord(m[0]):04x}", text) + "\n")


def report_skipped(command: str, skipped: Sequence[tuple[str, str]]) -> None:
    """List the files left out on stderr (names printed safely): the command went on without them."""
    if skipped:
        print(f"siglip {command}: skipped {len(skipped)} unreadable file(s):", file=sys.stderr)
        for path, reason in skipped:
            print(f"  {display_path(path)}: {reason}", file=sys.stderr)


def score_text(score: float) -> str:
    """A probability or similarity for a table: 4 decimals, or 2 significant digits when that shows 0."""
    return f"{score:.4f}" if abs(score) >= 1e-4 or score == 0 else f"{score:.1e}"


def rate_line(done: int, failed: int, seconds: float) -> str:
    """How many images a command embedded and how fast."""
    if done + failed == 0:
        return "nothing new to embed"
    unreadable = f" ({failed} unreadable)" if failed else ""
    return f"embedded {done} images{unreadable} in {seconds:.1f} s ({(done + failed) / seconds:.1f} images/s)"


def table(rows: Sequence[Sequence[str]], header: Sequence[str] | None = None) -> str:
    """Columns two spaces apart: text left-aligned, numbers right-aligned; `header` is the first line."""
    body = [list(row) for row in rows]
    rows = [list(header), *body] if header else body
    columns = len(rows[0]) if rows else 0
    widths = [max(len(row[i]) for row in rows) for i in range(columns)]
    numeric = [all(_is_number(row[i]) for row in body) for i in range(columns)]
    lines = [
        "  ".join(
            cell.rjust(w) if num else cell.ljust(w) for cell, w, num in zip(row, widths, numeric, strict=True)
        )
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text == ""
    return True


# --- option types: each rejects, while parsing, a value outside the option's meaning --------------------------
def integer(low: int, high: float = math.inf) -> Callable[[str], int]:
    """An option type: a whole number from `low` to `high`."""
    return whole(low, high).parse


def real(low: float, high: float = math.inf, *, above: bool = False) -> Callable[[str], float]:
    """An option type: a finite number from `low` (excluded when `above`) to `high` (included)."""
    return Number(low, high, above=above).parse


def device(text: str) -> str:
    """An option type: a device torch knows and this machine has."""
    try:
        resolve_device(text)
    except UsageError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def output_file(text: str) -> str:
    """An option type: a file to write, which must not be an existing folder."""
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"'{text}' is an existing folder; give the name of a file to write")
    return text


def output_folder(text: str) -> str:
    """An option type: a folder to write into (created if needed), which must not be an existing file."""
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(
            f"'{text}' is an existing file; give a folder (it is created if needed)"
        )
    return text


def add_video_options(parser: argparse.ArgumentParser) -> None:
    """--videos, --video-every and --video-scenes: video files as inputs, one row per sampled frame."""
    parser.add_argument(
        "--videos",
        action="store_true",
        help=f"take video files too ({' '.join(VIDEO_EXTENSIONS)}; pip install 'siglip[video]'), one frame every "
        f"{DEFAULT_EVERY_S:g} s, each a row <video>#t=<seconds> (an index that has videos keeps its rule)",
    )
    parser.add_argument(
        "--video-every",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help=f"with videos, one frame every SECONDS (e.g. 2s or 0.5; implies --videos; default {DEFAULT_EVERY_S:g})",
    )
    parser.add_argument(
        "--video-scenes",
        type=SCENE_THRESHOLD.parse,
        default=None,
        metavar="THRESHOLD",
        help="with videos, a frame at each scene change: the first frame, then each one whose 32x32 greyscale "
        "copy differs from the last frame taken by more than THRESHOLD (mean absolute difference, 0-1; 0.1: "
        "cuts between shots); decodes every frame (implies --videos)",
    )


def _seconds(text: str) -> float:
    """A positive number of seconds, `2`, `2s` or `0.5s`."""
    return EVERY.parse(text.strip().removesuffix("s"))


def video_sampling(args: argparse.Namespace) -> Sampling | None:
    """The frame sampling of the video options, None when they leave video input off."""
    return sampling_of(args.video_every, args.video_scenes, args.videos)
