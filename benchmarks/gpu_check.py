"""The prepared GPU check: parity with transformers on CUDA, image-tower throughput, and `siglip embed` images/s.

    python benchmarks/gpu_check.py                     # on a machine with a CUDA GPU: about 3 minutes
    python benchmarks/gpu_check.py --device cpu --batch 2 --images 16 --repeats 1   # a dry run of the script

1. Parity: a random-weight base/16-224 model in transformers and in siglip (the same files) on the device,
   full forward in fp32 and bf16; the largest difference of the logits relative to their largest magnitude.
2. Throughput: the image tower at `--batch` (256) in bf16 (fp16 where bf16 is missing), siglip against
   transformers, alternating, medians, with the device synchronised around each call.
3. Pipeline: `embed_to_file` (what `siglip embed` runs) on `--images` 640x480 JPEGs in its default mode
   (bf16 on such GPUs), decoding workers and pinned memory included, against the transformers loop.
4. Ray (when `ray` is installed): `siglip embed --engine ray` on a local cluster of this machine (one model
   actor per GPU, decoding in CPU tasks) on the same JPEGs, against the in-process job (bench_ray.py).
Prints a markdown block for BENCHMARKS.md, naming the device.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch

import siglip
from _common import make_jpegs, random_checkpoint, time_alternately
from bench_embed import siglip_embed, transformers_loop
from bench_ray import compare


def synchronised(call, device: torch.device):
    def run():
        out = call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    return run


def tower_throughput(
    ours: torch.nn.Module, theirs: torch.nn.Module, batch: int, repeats: int
) -> dict[str, float]:
    """Median seconds of the image tower of each model (both on one device, one dtype) at `batch`."""
    parameter = next(ours.parameters())
    pixels = torch.rand(batch, 3, 224, 224, device=parameter.device).to(parameter.dtype) * 2 - 1
    with torch.inference_mode():
        return time_alternately(
            {
                "transformers": synchronised(
                    lambda: theirs.get_image_features(pixel_values=pixels), parameter.device
                ),
                "siglip": synchronised(lambda: ours.get_image_features(pixels), parameter.device),
            },
            repeats,
            warmup=2,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    device = torch.device(args.device)

    import transformers

    warnings.simplefilter("ignore")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    half = torch.bfloat16 if device.type != "cuda" or torch.cuda.is_bf16_supported() else torch.float16
    print(f"device: {name}; torch {torch.__version__}, transformers {transformers.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = tmp / "model"
        theirs = random_checkpoint("base16-224", model_dir)
        ours = siglip.SiglipModel.from_pretrained(model_dir).eval()

        print("\n| check | value |\n|---|---|")
        generator = torch.Generator().manual_seed(0)
        pixels = torch.rand(4, 3, 224, 224, generator=generator) * 2 - 1
        ids = torch.randint(1000, (4, 64), generator=generator)
        for dtype in (torch.float32, half):
            a, b = ours.to(device, dtype), theirs.to(device, dtype)
            with torch.inference_mode():
                x, t = pixels.to(device, dtype), ids.to(device)
                mine = a(input_ids=t, pixel_values=x).logits_per_image.float()
                reference = b(input_ids=t, pixel_values=x).logits_per_image.float()
            error = ((mine - reference).abs().max() / reference.abs().max()).item()
            print(f"| parity, full forward, {str(dtype)[6:]} (max difference / max logit) | {error:.2e} |")

        seconds = tower_throughput(ours.to(device, half), theirs.to(device, half), args.batch, args.repeats)
        for side, s in seconds.items():
            print(
                f"| image tower, batch {args.batch}, {str(half)[6:]}, {side} | {args.batch / s:,.0f} images/s |"
            )
        print(f"| image tower speed-up | {seconds['transformers'] / seconds['siglip']:.2f}x |")
        ours, theirs = ours.cpu(), theirs.cpu()

        (tmp / "photos").mkdir()
        paths = [str(p) for p in make_jpegs(tmp / "photos", args.images)]
        processor = getattr(transformers, "SiglipImageProcessorPil", transformers.SiglipImageProcessor)()
        reference_model = theirs.to(device, half)
        start = time.perf_counter()
        transformers_loop(reference_model, processor, paths, 64)
        loop = time.perf_counter() - start
        start = time.perf_counter()
        siglip_embed(model_dir, paths, tmp / "vectors.npy", 64, device=args.device)
        embed = time.perf_counter() - start
        print(
            f"| transformers loop ({str(half)[6:]}, batch 64), {len(paths)} JPEGs | {len(paths) / loop:,.1f} images/s |"
        )
        print(f"| siglip embed, default mode, {len(paths)} JPEGs | {len(paths) / embed:,.1f} images/s |")
        try:
            import ray  # noqa: F401
        except ImportError:
            print("| siglip embed --engine ray | not run: pip install 'siglip[ray]' |")
            return
        seconds = compare(model_dir, paths, tmp, 64, args.device)
        for engine in ("in-process", "ray"):
            print(f"| siglip embed, {engine} job (model load included), {len(paths)} JPEGs | "
                  f"{len(paths) / seconds[engine]:,.1f} images/s |")  # fmt: skip
        print(f"| Ray overhead (cluster start {seconds['cluster start']:.1f} s not included) | "
              f"{seconds['ray'] / seconds['in-process'] - 1:+.1%} |")  # fmt: skip


if __name__ == "__main__":
    main()
