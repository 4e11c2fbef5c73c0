"""SigLIP 2 NaFlex speed: siglip against transformers, the same weights and inputs, in one process.

    python benchmarks/bench_naflex.py tower [--patches 256 1024] [--batch 8] [--layers 12] [--repeats 3]
    python benchmarks/bench_naflex.py processor [--patches 256 1024] [--images 32] [--repeats 5]
    python benchmarks/bench_naflex.py embed [--images 64] [--layers 12] [--batch 8]

- tower: a random-weight NaFlex base image tower (transformers `Siglip2VisionModel`, saved and loaded by
  `siglip.Siglip2VisionModel`), fp32, no grad, on a batch of mixed aspect ratios; outputs are checked to be
  identical first, then both run alternately, with our int8 mode (`InferenceMode("int8")`) beside them.
  Medians, the speed-ups against transformers fp32, and int8's smallest cosine to the fp32 output.
- embed: a folder of JPEGs of mixed aspect ratios (the SIZES below) embedded by `Embedder.embed_files` (decode
  workers, one padded batch of mixed aspect ratios per model call) with a random-weight NaFlex base model, fp32
  and int8, against a transformers loop (PIL decode, `Siglip2ImageProcessorPil`, `get_image_features`, one
  batch at a time); images/s, and the fraction of patch slots that are padding.
- processor: `Siglip2ImageProcessorPil` against transformers' `Siglip2ImageProcessorPil` on decoded PIL photos of
  mixed sizes (640x480, 480x640, 1280x320, 300x300 crops of scikit-image's photos); outputs are checked to be
  identical first.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

import siglip
from _common import machine_line, make_jpegs, time_alternately
from siglip.tools.embeddings.inference import InferenceMode

SIZES = [(640, 480), (480, 640), (1280, 320), (300, 300)]  # width, height


def _photos(count: int) -> list[Image.Image]:
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp), count)
        photos = [Image.open(p).convert("RGB") for p in paths]
    return [photo.resize(SIZES[i % len(SIZES)]) for i, photo in enumerate(photos)]


def bench_tower(args: argparse.Namespace) -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.Siglip2VisionConfig(num_hidden_layers=args.layers)
    theirs = transformers.Siglip2VisionModel(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        theirs.save_pretrained(tmp)
        ours = siglip.Siglip2VisionModel.from_pretrained(tmp)
    int8 = InferenceMode(precision="int8").apply(copy.deepcopy(ours))
    photos = _photos(args.batch)
    print(
        "| max_num_patches | batch | transformers fp32 (s) | siglip fp32 (s) | speed-up | siglip int8 (s) | "
        "speed-up | int8 min cosine |\n|---|---|---|---|---|---|---|---|"
    )
    for patches in args.patches:
        inputs = siglip.Siglip2ImageProcessor(max_num_patches=patches)(photos, return_tensors="pt")
        with torch.no_grad():
            reference = theirs(**inputs).pooler_output
            assert torch.equal(ours(**inputs).pooler_output, reference)
            cosine = F.cosine_similarity(int8(**inputs).pooler_output, reference).min().item()
            calls = {name: lambda m=model, x=inputs: m(**x)
                     for name, model in (("transformers", theirs), ("siglip", ours), ("int8", int8))}  # fmt: skip
            times = time_alternately(calls, args.repeats)
        print(
            f"| {patches} | {args.batch} | {times['transformers']:.3f} | {times['siglip']:.3f} | "
            f"{times['transformers'] / times['siglip']:.2f}x | {times['int8']:.3f} | "
            f"{times['transformers'] / times['int8']:.2f}x | {cosine:.5f} |"
        )


def bench_processor(args: argparse.Namespace) -> None:
    import transformers

    photos = _photos(args.images)
    theirs = transformers.Siglip2ImageProcessorPil(do_convert_rgb=True)
    print(
        "| max_num_patches | images | transformers PIL (ms/image) | siglip (ms/image) | speed-up |\n"
        "|---|---|---|---|---|"
    )
    for patches in args.patches:
        ours = siglip.Siglip2ImageProcessorPil(max_num_patches=patches)
        a = ours(photos, return_tensors="pt")
        b = theirs(photos, max_num_patches=patches, return_tensors="pt")
        assert all(torch.equal(a[k], b[k]) for k in b)
        calls = {
            "transformers": lambda p=patches: theirs(photos, max_num_patches=p, return_tensors="pt"),
            "siglip": lambda o=ours: o(photos, return_tensors="pt"),
        }
        times = time_alternately(calls, args.repeats)
        per = {k: 1000 * v / len(photos) for k, v in times.items()}
        print(
            f"| {patches} | {len(photos)} | {per['transformers']:.2f} | {per['siglip']:.2f} | "
            f"{times['transformers'] / times['siglip']:.2f}x |"
        )


def bench_embed(args: argparse.Namespace) -> None:
    import time

    import numpy as np
    import transformers

    from _common import train_tokenizer

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.Siglip2Config(vision_config={"num_hidden_layers": args.layers},
                                        text_config={"num_hidden_layers": 1, "vocab_size": 4000})  # fmt: skip
    theirs = transformers.Siglip2Model(config).eval()
    their_processor = transformers.Siglip2ImageProcessorPil(do_convert_rgb=True)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, folder = Path(tmp) / "model", Path(tmp) / "photos"
        folder.mkdir()
        theirs.save_pretrained(checkpoint)
        tokenizer = siglip.SiglipTokenizer(train_tokenizer(Path(tmp)))
        siglip.Siglip2Processor(siglip.Siglip2ImageProcessor(), tokenizer).save_pretrained(checkpoint)
        for i, photo in enumerate(_photos(args.images)):
            photo.save(folder / f"{i:04d}.jpg", quality=90)
        files = sorted(str(p) for p in folder.iterdir())

        def transformers_loop() -> np.ndarray:
            out = []
            for start in range(0, len(files), args.batch):
                images = [Image.open(f).convert("RGB") for f in files[start : start + args.batch]]
                with torch.no_grad():
                    features = theirs.get_image_features(**their_processor(images, return_tensors="pt"))
                features = getattr(features, "pooler_output", features)
                out.append(torch.nn.functional.normalize(features, dim=-1).numpy())
            return np.concatenate(out)

        rows = []
        start = time.perf_counter()
        reference = transformers_loop()
        rows.append(("transformers loop, fp32", time.perf_counter() - start, 1.0))
        for precision in ("fp32", "int8"):
            embedder = siglip.Embedder.from_pretrained(
                checkpoint,
                device="cpu",
                precision=precision,
                image_backend="pil",  # as the transformers loop
            )
            start = time.perf_counter()
            vectors = np.concatenate([b.vectors for b in embedder.embed_files(files, batch_size=args.batch)])
            seconds = time.perf_counter() - start
            cosine = float((vectors * reference).sum(axis=1).min())
            rows.append((f"siglip embed_files, {precision}", seconds, cosine))
        masks = siglip.Siglip2ImageProcessor()([Image.open(f) for f in files], return_tensors="pt")
        padding = 1 - masks["pixel_attention_mask"].float().mean().item()
    print(f"{len(files)} JPEGs of {len(SIZES)} aspect ratios, base NaFlex image tower ({args.layers} layers), "
          f"batch {args.batch}, 256 patches; {padding:.1%} of the patch slots are padding")  # fmt: skip
    print(
        "| job | seconds | images/s | vs transformers | min cosine to transformers |\n|---|---|---|---|---|"
    )
    for name, seconds, cosine in rows:
        print(
            f"| {name} | {seconds:.1f} | {len(files) / seconds:.2f} | {rows[0][1] / seconds:.2f}x | {cosine:.5f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["tower", "processor", "embed"])
    parser.add_argument("--patches", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(machine_line())
    {"tower": bench_tower, "processor": bench_processor, "embed": bench_embed}[args.what](args)


if __name__ == "__main__":
    main()
