"""Preprocessing speed: siglip against transformers (the reference), in one process, at identical output.

    python benchmarks/bench_preprocessing.py [--captions 10000] [--images 64] [--repeats 7]

- Tokenizer: a batch of captions -> `input_ids` padded and truncated to 64 (what SigLIP needs), as torch
  tensors. The SentencePiece model is trained here on CPython's documentation (`pydoc_data`); the captions
  are sentences cut from the same text (mixed case, punctuation), 3 to 25 words.
- Image processor: 640x480 JPEGs made from scikit-image's photos, to 224x224 `pixel_values`; "decode
  included" passes file paths, "decode excluded" passes already decoded PIL images. Ours runs with its
  default threads and with one thread.

Both sides are timed alternately on the same inputs; the table gives medians and the speed-up. Outputs are
compared first: a row is only timed when ours equals the reference exactly.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _common import make_jpegs, time_alternately, train_tokenizer
from siglip import SiglipImageProcessorPil, SiglipTokenizer


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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--captions", type=int, default=10_000)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    import transformers  # the reference, a test-only dependency

    warnings.simplefilter("ignore")
    transformers.logging.set_verbosity_error()
    rows = []
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
        theirs_img = transformers.SiglipImageProcessorPil()
        for threads in (None, 1):
            ours_img = SiglipImageProcessorPil(num_threads=threads)
            label = "default threads" if threads is None else "1 thread"
            for inputs, what in ((paths, "decode included"), (decoded, "decode excluded")):
                source = [str(p) for p in inputs] if what == "decode included" else inputs
                rows.append(
                    compare(
                        f"image processor, {what}, ours with {label} (images/s)",
                        lambda source=source, ours_img=ours_img: ours_img(source, return_tensors="pt"),
                        lambda source=source: theirs_img(source, return_tensors="pt"),
                        args.repeats,
                        args.images,
                    )
                )

    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"numpy {np.__version__}, {torch.get_num_threads()} torch threads")  # fmt: skip
    print("\n| benchmark | siglip | transformers | speed-up |\n|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['name']} | {row['ours']:,.0f} | {row['theirs']:,.0f} | {row['speedup']:.1f}x |")


if __name__ == "__main__":
    main()
