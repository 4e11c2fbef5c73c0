"""Preprocessing speed: siglip against transformers (the reference), in one process, at identical output.

    python benchmarks/bench_preprocessing.py [--captions 10000] [--images 64] [--repeats 7] [--backend pil|torch]

- Tokenizer: a batch of captions -> `input_ids` padded and truncated to 64 (what SigLIP needs), as torch
  tensors. The SentencePiece model is trained here on CPython's documentation (`pydoc_data`); the captions
  are sentences cut from the same text (mixed case, punctuation), 3 to 25 words.
- Image processor: 640x480 JPEGs made from scikit-image's photos, to 224x224 `pixel_values` as numpy
  arrays: from file paths (decoding included) and from already decoded PIL images, against transformers and
  hf-processors-rs (a Rust port of transformers' processors, `bench` extra), ours and the Rust one with one
  thread and with their default threads (one per core). `--backend pil` (the default here): the PIL backends,
  `SiglipImageProcessorPil` of siglip and transformers and the Rust port's `backend="pil"`. `--backend torch`:
  the default processors, siglip's and transformers' `SiglipImageProcessor` (transformers' on torchvision) and
  the Rust port's `backend="torchvision"`. With the PIL backend, siglip's processor is also timed with its
  compiled resize hidden (the `fast-resize` extra not installed: Pillow decodes and resizes).

All sides are timed alternately on the same inputs; the tables give medians and the speed-ups. Outputs are
compared first: a row is only timed when ours equals the reference exactly (the Rust port's largest difference
is printed).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image

from _common import machine_line, make_jpegs, time_alternately, train_tokenizer
from siglip import SiglipImageProcessor, SiglipImageProcessorPil, SiglipTokenizer
from siglip.core.two_tower import pil_resize

# --backend: (siglip's processor class, transformers' class name, hf-processors-rs's backend, table label)
BACKENDS = {
    "pil": (SiglipImageProcessorPil, "SiglipImageProcessorPil", "pil", "PIL"),
    "torch": (SiglipImageProcessor, "SiglipImageProcessor", "torchvision", "torchvision"),
}


def make_captions(count: int, seed: int = 0) -> list[str]:
    from pydoc_data.topics import topics

    words = " ".join(topics.values()).split()
    rng = random.Random(seed)
    captions = []
    for _ in range(count):
        start = rng.randrange(len(words) - 30)
        captions.append(" ".join(words[start : start + rng.randint(3, 25)]))
    return captions


def compare(name: str, ours: Callable, theirs: Callable, repeats: int, items: int) -> dict[str, object]:
    """Check identical outputs, then time both alternately; returns one table row."""
    mine, reference = ours(), theirs()
    for key in reference:
        if not torch.equal(mine[key], reference[key]):
            raise SystemExit(f"{name}: outputs differ on {key}; not timing")
    seconds = time_alternately({"theirs": theirs, "ours": ours}, repeats, warmup=0)
    ours_s, theirs_s = seconds["ours"], seconds["theirs"]
    return {"name": name, "ours": items / ours_s, "theirs": items / theirs_s, "speedup": theirs_s / ours_s}


def rust_processor(directory: Path, backend: str) -> Callable:
    """hf-processors-rs's port of the processor saved in `directory`, with its `backend` ("pil" or
    "torchvision"): a function (images, num_threads) -> pixel_values (the `bench` extra)."""
    import hf_processors_rs

    processor = hf_processors_rs.AutoImageProcessor.from_pretrained(directory, backend=backend)
    return lambda images, num_threads: processor(images, num_threads=num_threads)


def pillow_opened(processor: Callable) -> Callable:
    """`processor` called on paths opened by Pillow (and converted to RGB), on anything else as given."""

    def call(images: list, **kwargs: object) -> dict:
        opened = [Image.open(i).convert("RGB") if isinstance(i, str) else i for i in images]
        return processor(opened, **kwargs)

    return call


def compare_images(
    what: str,
    threads: int | None,
    images: list,
    ours: Callable,
    theirs: Callable,
    rust: Callable,
    repeats: int,
) -> dict[str, object]:
    """siglip, hf-processors-rs (the same threads) and transformers (one thread: it has no pool) on `images`:
    pixels compared with transformers' (ours must be identical to be timed), then timed alternately."""
    calls = {
        "siglip": lambda: ours(images, return_tensors="np")["pixel_values"],
        "rs": lambda: rust(images, threads),
        "transformers": lambda: theirs(images, return_tensors="np")["pixel_values"],
    }
    if pil_resize.kernels() is not None and ours.backend == "pil":
        calls["siglip, Pillow's resize"] = pillows_resize(calls["siglip"])
    reference = calls["transformers"]()
    diffs = {name: float(np.abs(call() - reference).max()) for name, call in calls.items()}
    for name in calls.keys() - {"rs"}:
        if diffs[name] != 0:
            raise SystemExit(f"image processor, {what}: {name}'s pixels differ by {diffs[name]}; not timing")
    seconds = time_alternately(calls, repeats, warmup=1)
    return {
        "input": what,
        "threads": "1" if threads == 1 else f"default ({os.cpu_count()} cores)",
        **{name: len(images) / s for name, s in seconds.items()},
        "diff_rs": diffs["rs"],
    }


def pillows_resize(call: Callable) -> Callable:
    """`call` run with the PIL backend's compiled resize hidden: Pillow resizes (and decodes JPEGs), as
    without the `fast-resize` extra."""

    def pillow() -> object:
        loaded = pil_resize.kernels
        pil_resize.kernels = lambda wait=False: None
        try:
            return call()
        finally:
            pil_resize.kernels = loaded

    return pillow


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--captions", type=int, default=10_000)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--backend", default="pil", choices=sorted(BACKENDS), help="the image processors")
    args = parser.parse_args()
    ours_class, their_class, rust_backend, label = BACKENDS[args.backend]

    import transformers  # the reference, a test-only dependency

    warnings.simplefilter("ignore")
    transformers.logging.set_verbosity_error()
    rows, image_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        vocab = train_tokenizer(tmp)
        ours_tok, theirs_tok = SiglipTokenizer(vocab), transformers.SiglipTokenizer(str(vocab))
        captions = make_captions(args.captions)
        text_kwargs = dict(padding="max_length", truncation=True, max_length=64, return_tensors="pt")
        rows.append(
            compare(
                f"tokenizer, {args.captions} captions (texts/s)",
                lambda: ours_tok(captions, **text_kwargs),
                lambda: theirs_tok(captions, **text_kwargs),
                max(3, args.repeats // 2),
                args.captions,
            )
        )

        paths = make_jpegs(tmp, args.images)
        decoded = [Image.open(p).convert("RGB") for p in paths]
        theirs_img = getattr(transformers, their_class)()
        if args.backend == "torch":  # its torchvision decodes files with torchvision.io, broken by the CUDA
            # wheel here (tests/_torchvision.py): it gets each file opened by Pillow, as siglip decodes it
            theirs_img = pillow_opened(theirs_img)
        if args.backend == "pil":  # the compiled resize loaded before timing (the `fast-resize` extra)
            start = time.perf_counter()
            compiled = pil_resize.kernels(wait=True) is not None
            resize_note = (
                f"compiled resize loaded in {time.perf_counter() - start:.2f} s (numba {version('numba')})"
                if compiled
                else "numba not installed: Pillow resizes"
            )
        ours_class().save_pretrained(tmp / "processor")
        rust = rust_processor(tmp / "processor", rust_backend)
        for threads in (1, None):
            ours_img = ours_class(num_threads=threads)
            for source, what in (([str(p) for p in paths], "files"), (decoded, "decoded images")):
                image_rows.append(
                    compare_images(what, threads, source, ours_img, theirs_img, rust, args.repeats)
                )

    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"numpy {np.__version__}, {torch.get_num_threads()} torch threads")  # fmt: skip
    print(
        f"{machine_line()}; Pillow {PIL.__version__}" + (f"; {resize_note}" if args.backend == "pil" else "")
    )
    print("\n| benchmark | siglip | transformers | speed-up |\n|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['name']} | {row['ours']:,.0f} | {row['theirs']:,.0f} | {row['speedup']:.1f}x |")
    print(
        f"\nImage processors, {args.images} 640x480 JPEGs to 224x224 pixel_values, images/s (medians of "
        f"{args.repeats}); max abs diff of the pixels to transformers'"
    )
    pillow = "siglip, Pillow's resize"
    extra = f" {pillow} | siglip vs it |" if pillow in image_rows[0] else ""
    print(
        f"\n| input | threads | siglip | hf-processors-rs ({rust_backend}) | transformers ({label}) | siglip vs rs | "
        f"siglip vs transformers |{extra} max abs diff rs |"
    )
    print("|---|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if extra else "") + "---|")
    for row in image_rows:
        cells = f" {row[pillow]:,.0f} | {row['siglip'] / row[pillow]:.2f}x |" if extra else ""
        print(
            f"| {row['input']} | {row['threads']} | {row['siglip']:,.0f} | {row['rs']:,.0f} | "
            f"{row['transformers']:,.0f} | {row['siglip'] / row['rs']:.2f}x | "
            f"{row['siglip'] / row['transformers']:.2f}x |{cells} {row['diff_rs']:g} |"
        )


if __name__ == "__main__":
    main()
