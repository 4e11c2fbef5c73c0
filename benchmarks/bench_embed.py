"""The whole image-embedding job: `siglip embed` against the obvious transformers loop, on a folder of JPEGs.

    python benchmarks/bench_embed.py [--images 500] [--batch-size 32] [--bf16] [--only TEXT ...]

A random-weight base/16-224 model is built in transformers and saved with a processor; siglip loads the same
files. The transformers loop is what its documentation shows: per batch of paths, open the images with PIL,
run `SiglipImageProcessorPil` (PIL backend), then `get_image_features` under `torch.inference_mode`, normalise.
siglip runs `embed_to_file` with the same PIL backend (`--image-backend pil`) (what `siglip embed --out vectors.npy` runs: decoding workers, the model, a
resumable journal, the .npy and its manifest) in its default mode and with the inference options. Every run
is timed once from the list of files to the embeddings in memory (transformers, its model already loaded) or
on disk (siglip, loading the model and quantising or compiling it included); the
table gives images/s, the speed-up against the transformers loop in fp32, and the lowest cosine between
each run's embeddings and that loop's.

The photos are `--images` distinct 640x480 JPEGs cut from scikit-image's sample photos.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import siglip
from _common import features_tensor, machine_line, make_jpegs, random_checkpoint
from siglip.tools.embeddings.writers import embed_to_file


def transformers_loop(
    model: torch.nn.Module, processor: object, paths: list[str], batch_size: int
) -> np.ndarray:
    chunks = []
    parameter = next(model.parameters())
    for start in range(0, len(paths), batch_size):
        images = [Image.open(p).convert("RGB") for p in paths[start : start + batch_size]]
        pixels = processor(images=images, return_tensors="pt")["pixel_values"].to(
            parameter.device, parameter.dtype
        )
        with torch.inference_mode():
            features = model.get_image_features(pixel_values=pixels)
        chunks.append(F.normalize(features_tensor(features).float(), dim=-1).cpu().numpy())
    return np.concatenate(chunks)


def siglip_embed(
    directory: Path, paths: list[str], out: Path, batch_size: int, **options: object
) -> np.ndarray:
    embedder = siglip.Embedder.from_pretrained(
        directory, **{"device": "cpu", "image_backend": "pil", **options}
    )
    embed_to_file(paths, out, embedder, batch_size=batch_size, progress=False)
    vectors = np.load(out)
    for leftover in (out, out.with_suffix(".npy.json")):
        leftover.unlink()
    return vectors


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--bf16", action="store_true", help="also bf16 runs (slow without bf16 units)")
    parser.add_argument(
        "--only", nargs="+", metavar="TEXT", help="only the siglip runs whose name contains one of these"
    )
    args = parser.parse_args()

    import transformers

    warnings.simplefilter("ignore")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = tmp / "model"
        model = random_checkpoint("base16-224", model_dir)
        image_processor = getattr(
            transformers, "SiglipImageProcessorPil", transformers.SiglipImageProcessor
        )()
        (tmp / "photos").mkdir()
        paths = [str(p) for p in make_jpegs(tmp / "photos", args.images)]
        out = tmp / "vectors.npy"

        runs: dict[str, Callable[[], np.ndarray]] = {
            "transformers loop, fp32": lambda: transformers_loop(
                model, image_processor, paths, args.batch_size
            ),
            "siglip embed, default mode": lambda: siglip_embed(model_dir, paths, out, args.batch_size),
            "siglip embed --reduced-decode": lambda: siglip_embed(
                model_dir, paths, out, args.batch_size, reduced_decode=True
            ),
            "siglip embed --precision int8": lambda: siglip_embed(
                model_dir, paths, out, args.batch_size, precision="int8"
            ),
            "siglip embed --precision int8 --reduced-decode": lambda: siglip_embed(
                model_dir, paths, out, args.batch_size, precision="int8", reduced_decode=True
            ),
            "siglip embed --compile": lambda: siglip_embed(
                model_dir, paths, out, args.batch_size, compile=True
            ),
        }
        if args.bf16:
            bf16 = transformers.SiglipModel.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
            runs["transformers loop, bf16"] = lambda: transformers_loop(
                bf16, image_processor, paths, args.batch_size
            )
            runs["siglip embed --precision bf16"] = lambda: siglip_embed(
                model_dir, paths, out, args.batch_size, precision="bf16"
            )
            runs["siglip embed --precision bf16 --compile"] = lambda: siglip_embed(
                model_dir, paths, out, args.batch_size, precision="bf16", compile=True
            )
        # the command as a user runs it: auto precision (bf16 with bf16 units, int8 on other x86 CPUs) and
        # the default image backend
        runs["siglip embed, all defaults"] = lambda: siglip_embed(
            model_dir, paths, out, args.batch_size, image_backend=None
        )

        if args.only:  # the transformers fp32 loop always runs: it is what the others are measured against
            runs = {
                n: r
                for n, r in runs.items()
                if n.startswith("transformers loop, fp32") or any(t in n for t in args.only)
            }
        results = {}
        for name, run in runs.items():
            start = time.perf_counter()
            vectors = run()
            results[name] = (time.perf_counter() - start, vectors)
            print(f"{name}: {len(paths) / results[name][0]:.2f} images/s", flush=True)

    base_seconds, reference = results["transformers loop, fp32"]
    print(f"\n{len(paths)} JPEGs (640x480), batch {args.batch_size}, base16-224; {machine_line()}")
    print("\n| run | images/s | vs transformers fp32 loop | min cosine vs that loop |\n|---|---:|---:|---:|")
    for name, (seconds, vectors) in results.items():
        cosine = (vectors * reference).sum(-1).min()
        print(f"| {name} | {len(paths) / seconds:.2f} | {base_seconds / seconds:.2f}x | {cosine:.5f} |")


if __name__ == "__main__":
    main()
