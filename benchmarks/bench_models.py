"""Model speed and inference modes: siglip against transformers, the same weights, in one process.

    python benchmarks/bench_models.py peak
    python benchmarks/bench_models.py towers [--shapes base16-224 so400m14-384] [--batches 1 8 32] [--bf16]
    python benchmarks/bench_models.py modes [--batch 8] [--bf16]
    python benchmarks/bench_models.py accuracy [--images 2000]
    python benchmarks/bench_models.py profile [--profile-modes fp32 int8]

- peak: this machine's matrix-product rate (fp32, bf16), the yardstick for the rest.
- towers: image tower, text tower and full forward of a random-weight model of each shape, built in
  transformers, saved, and loaded by siglip; outputs are compared first, then both run alternately. Each
  row gives medians, the speed-up, and GFLOP/s as a fraction of the fp32 (or bf16) matmul peak. FLOPs are
  counted by `torch.utils.flop_counter` (matrix products, convolution and attention).
- modes: the base/16-224 image tower at one batch size in every inference mode of `siglip.tools.embeddings.inference`
  (fp32, int8, fp32+compile (a package), ONNX Runtime; bf16, bf16-autocast and bf16+compile with --bf16; or --modes), against
  transformers fp32 (and transformers bf16 with --bf16).
- profile: the operators the base image tower spends its time in, per mode (torch.profiler).
- accuracy: what each mode costs against fp32: cosine of image embeddings and zero-shot top-1 agreement,
  on the bundled tiny model (Fashion-MNIST test images, its 10 classes) and on a random-weight
  base/16-224 model (640x480 photos, 10 labels); int8-static calibrated on other images (64 Fashion-MNIST
  training images; 32 other crops of the same scikit-image photos) and on the labels in other words than the
  zero-shot prompt.

bf16 rows are opt-in: on CPUs without bf16 units (no AMX or AVX-512 BF16) bf16 products are emulated,
tens of times slower than fp32.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import siglip
from _common import (
    EMULATED_CPUS,
    RELEASED_SHAPES,
    SHAPES,
    emulate_cpu,
    features_tensor,
    machine_line,
    make_jpegs,
    matmul_peak,
    random_checkpoint,
    time_alternately,
)
from siglip.core.two_tower.processing import fixed_length_ids
from siglip.tools.embeddings.calibration import Calibration
from siglip.tools.embeddings.inference import InferenceMode
from siglip.tools.embeddings.onnx_export import check_onnx, export_onnx

FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["t-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle boot"]  # fmt: skip
# int8-static's calibration captions: the labels in other words than the zero-shot prompt ("a photo of {}.")
CALIBRATION_TEMPLATES = ("an image of the {}", "this is {}", "a picture showing {}, seen up close")
PHOTO_LABELS = ["an astronaut", "a cat", "a cup of coffee", "a rocket", "stained tissue", "galaxies", "a retina",
                "a dog", "a car", "a mountain"]  # fmt: skip


def reference_and_ours(shape: str, directory: Path) -> tuple[torch.nn.Module, siglip.SiglipModel]:
    """A random transformers SiglipModel of `shape`, and the same weights loaded by siglip."""
    theirs = random_checkpoint(shape, directory, PHOTO_LABELS)
    return theirs, siglip.SiglipModel.from_pretrained(directory).eval()


def inputs(model: siglip.SiglipModel, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    vision, text = model.config.vision_config, model.config.text_config
    generator = torch.Generator().manual_seed(batch)
    pixels = torch.rand(batch, 3, vision.image_size, vision.image_size, generator=generator) * 2 - 1
    ids = torch.randint(text.vocab_size, (batch, text.max_position_embeddings), generator=generator)
    return pixels, ids


def parts(
    model: torch.nn.Module, pixels: torch.Tensor, ids: torch.Tensor
) -> dict[str, Callable[[], torch.Tensor]]:
    """The three benchmarked calls of a model (transformers' or ours: same method names)."""

    def full() -> torch.Tensor:
        return model(input_ids=ids, pixel_values=pixels).logits_per_image

    return {
        "image": lambda: features_tensor(model.get_image_features(pixel_values=pixels)),
        "text": lambda: features_tensor(model.get_text_features(input_ids=ids)),
        "full": full,
    }


def gflop(call: Callable[[], object]) -> float:
    """GFLOPs of one call (its module hooks need autograd on, so not under inference_mode)."""
    counter = FlopCounterMode(display=False)
    with torch.enable_grad(), counter:
        call()
    return counter.get_total_flops() / 1e9


def check_same(name: str, ours: torch.Tensor, theirs: torch.Tensor, rel: float) -> None:
    scale = theirs.abs().max().item() or 1.0
    error = (ours.float() - theirs.float()).abs().max().item() / scale
    if error > rel:
        raise SystemExit(f"{name}: siglip and transformers differ by {error:.2e} of the maximum; not timing")


def run_towers(args: argparse.Namespace, peaks: dict[str, float]) -> None:
    print(
        "\n| shape | part | batch | dtype | transformers items/s | siglip items/s | speed-up | siglip % of peak |"
    )
    print("|---|---|---:|---|---:|---:|---:|---:|")
    dtypes = [torch.float32] + ([torch.bfloat16] if args.bf16 else [])
    for shape in args.shapes:
        with tempfile.TemporaryDirectory() as tmp:
            theirs, ours = reference_and_ours(shape, Path(tmp))
        for dtype in dtypes:
            theirs, ours = theirs.to(dtype), ours.to(dtype)
            peak = peaks["fp32" if dtype == torch.float32 else "bf16"]
            for batch in args.batches:
                pixels, ids = inputs(ours, batch)
                pixels = pixels.to(dtype)
                mine, reference = parts(ours, pixels, ids), parts(theirs, pixels, ids)
                for part in args.parts:
                    with torch.inference_mode():
                        check_same(
                            f"{shape} {part}",
                            mine[part](),
                            reference[part](),
                            1e-4 if dtype == torch.float32 else 3e-2,
                        )
                        work = gflop(reference[part])  # the same operations; its weights are plain tensors
                        seconds = time_alternately(
                            {"theirs": reference[part], "ours": mine[part]}, args.repeats, warmup=1
                        )
                    rate = work / seconds["ours"]
                    print(
                        f"| {shape} | {part} | {batch} | {str(dtype)[6:]} | {batch / seconds['theirs']:.2f} | "
                        f"{batch / seconds['ours']:.2f} | {seconds['theirs'] / seconds['ours']:.2f}x | "
                        f"{100 * rate / peak:.0f}% ({rate:.0f} GFLOP/s) |",
                        flush=True,
                    )


def mode_runners(
    model: siglip.SiglipModel, names: list[str], directory: Path, calibration: Calibration | None = None
) -> dict[str, tuple[Callable, Callable]]:
    """name -> (f(pixels), f(input_ids)) giving float32 image and text features, per inference mode
    (`calibration`: int8-static's inputs)."""
    runners: dict[str, tuple[Callable, Callable]] = {}
    for name in names:
        if name == "onnx":
            import onnxruntime as ort

            paths = export_onnx(model, directory)
            print(f"ONNX export checked with onnxruntime: {check_onnx(model, paths)}", file=sys.stderr)
            sessions = {
                t: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for t, p in paths.items()
            }

            def run(session: object, key: str, x: torch.Tensor) -> torch.Tensor:
                return torch.from_numpy(session.run(None, {key: x.numpy()})[0])

            runners[name] = (
                partial(run, sessions["vision"], "pixel_values"),
                partial(run, sessions["text"], "input_ids"),
            )
            continue
        precision, compiled = (
            (name.removesuffix("+compile"), True) if name.endswith("+compile") else (name, False)
        )
        mode = InferenceMode(precision, compiled, calibration).resolve("cpu")
        moded = mode.apply(copy.deepcopy(model))

        def images(pixels: torch.Tensor, moded=moded, mode=mode) -> torch.Tensor:
            with torch.inference_mode(), mode.autocast("cpu"):
                return moded.get_image_features(pixels.to(mode.dtype)).float()

        def texts(ids: torch.Tensor, moded=moded, mode=mode) -> torch.Tensor:
            with torch.inference_mode(), mode.autocast("cpu"):
                return moded.get_text_features(ids).float()

        runners[name] = (images, texts)
    return runners


def mode_names(args: argparse.Namespace) -> list[str]:
    if args.modes:
        return args.modes
    return ["fp32", "int8", "fp32+compile", "int8+compile", "int8-static", "onnx"] + (
        ["bf16", "bf16-autocast", "bf16+compile"] if args.bf16 else []
    )


def run_modes(args: argparse.Namespace, peaks: dict[str, float]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        theirs, ours = reference_and_ours("base16-224", Path(tmp))
        pixels, _ = inputs(ours, args.batch)
        work = gflop(lambda: theirs.get_image_features(pixel_values=pixels))
        # int8-static calibrated on other random inputs, of the kind timed (`inputs` seeds by their count)
        calibration = Calibration(*inputs(ours, args.batch + 1))
        runners = mode_runners(ours, mode_names(args), Path(tmp), calibration)
        modes = {name: image for name, (image, _) in runners.items()}
        calls = {"transformers fp32": lambda: theirs.get_image_features(pixel_values=pixels)}
        if args.bf16:
            theirs_bf16 = copy.deepcopy(theirs).to(torch.bfloat16)
            calls["transformers bf16"] = lambda: theirs_bf16.get_image_features(
                pixel_values=pixels.bfloat16()
            )
        calls.update({f"siglip {name}": lambda f=f: f(pixels) for name, f in modes.items()})
        with torch.inference_mode():
            reference = features_tensor(calls["transformers fp32"]()).float()
            cosines = {
                name: F.cosine_similarity(features_tensor(call()).float(), reference).min().item()
                for name, call in calls.items()
            }
            seconds = time_alternately(calls, args.repeats, warmup=1)
    base = seconds["transformers fp32"]
    print(
        f"\nbase16-224 image tower, batch {args.batch}, {work / args.batch:.1f} GFLOP per image; {machine_line()}"
    )
    print("\n| mode | images/s | vs transformers fp32 | % of fp32 peak | min cosine vs transformers fp32 |")
    print("|---|---:|---:|---:|---:|")
    for name, s in seconds.items():
        print(
            f"| {name} | {args.batch / s:.2f} | {base / s:.2f}x | {100 * work / s / peaks['fp32']:.0f}% | "
            f"{cosines[name]:.6f} |"
        )


def run_profile(args: argparse.Namespace) -> None:
    """Where the time of the base image tower goes, per operator, in each mode of --profile-modes, with each
    thread count of --profile-threads (one call each, after a warm-up; the thread counts take turns)."""
    from torch.profiler import ProfilerActivity, profile

    with tempfile.TemporaryDirectory() as tmp:
        _, ours = reference_and_ours("base16-224", Path(tmp))
        runners = mode_runners(ours, args.profile_modes, Path(tmp))
        pixels, _ = inputs(ours, args.batch)
        threads = args.profile_threads or [torch.get_num_threads()]
        for name, (image_features, _) in runners.items():
            per_thread: dict[int, dict[str, tuple[float, int]]] = {}
            wall: dict[int, float] = {}
            for count in threads:
                torch.set_num_threads(count)
                image_features(pixels)
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    start = time.perf_counter()
                    image_features(pixels)
                    wall[count] = (time.perf_counter() - start) * 1e3
                events = prof.key_averages()
                per_thread[count] = {e.key: (e.self_cpu_time_total / 1e3, e.count) for e in events}
            first = threads[0]
            total = sum(ms for ms, _ in per_thread[first].values())
            ranked = sorted(per_thread[first], key=lambda k: -per_thread[first][k][0])[: args.profile_top]
            heads = " | ".join(f"ms, {n} thr" for n in threads)
            scaling = f" | {threads[0]}->{threads[-1]} thr speed-up" if len(threads) > 1 else ""
            print(f"\n{name}, batch {args.batch}: self CPU time per operator; {machine_line()}\n")
            print(f"| operator | calls | share ({first} thr) | {heads}{scaling} |")
            print("|---|---:|---:|" + "---:|" * len(threads) + ("---:|" if scaling else ""))
            for key in ranked:
                ms = [per_thread[n].get(key, (0.0, 0))[0] for n in threads]
                row = f"| {key} | {per_thread[first][key][1]} | {100 * ms[0] / total:.1f}% | "
                row += " | ".join(f"{m:.0f}" for m in ms)
                print(row + (f" | {ms[0] / ms[-1]:.2f}x |" if scaling and ms[-1] else " |"))
            sums = [sum(ms for ms, _ in per_thread[n].values()) for n in threads]
            row = "| all operators | | 100% | " + " | ".join(f"{s:.0f}" for s in sums)
            print(row + (f" | {sums[0] / sums[-1]:.2f}x |" if scaling else " |"))
            row = "| the call (wall) | | | " + " | ".join(f"{wall[n]:.0f}" for n in threads)
            print(row + (f" | {wall[first] / wall[threads[-1]]:.2f}x |" if scaling else " |"), flush=True)


def fashion_train_images(count: int) -> np.ndarray:
    """The first `count` Fashion-MNIST training images (int8-static's calibration: not among the test ones)."""
    with gzip.open(FASHION / "train-images-idx3-ubyte.gz") as f:
        return np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:count]


def fashion_test_images(count: int) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(FASHION / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:count]
    with gzip.open(FASHION / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)[:count]
    return images, labels


def accuracy_rows(
    model: siglip.SiglipModel, processor: siglip.SiglipProcessor, images: list, labels: list[str],
    names: list[str], directory: Path, truth: np.ndarray | None = None, calibration_images: list = (),
) -> list[str]:  # fmt: skip
    """One table row per mode: cosine of image embeddings and zero-shot agreement with fp32, both towers
    running in the mode (int8-static calibrated on `calibration_images`, not among `images`, and on captions
    of the labels in other words than the zero-shot prompt)."""
    pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    text_config = model.config.text_config
    ids = fixed_length_ids(processor.tokenizer, [f"a photo of {label}." for label in labels], text_config)
    captions = [t.format(label) for label in labels for t in CALIBRATION_TEMPLATES]
    calibration = Calibration(
        processor.image_processor(calibration_images, return_tensors="pt")["pixel_values"] if calibration_images else None,
        fixed_length_ids(processor.tokenizer, captions, text_config),
    )  # fmt: skip
    embeddings, predictions = {}, {}
    runners = mode_runners(model, ["fp32", *names], directory, calibration)
    for name, (image_features, text_features) in runners.items():
        chunks = [F.normalize(image_features(pixels[i : i + 64]), dim=-1) for i in range(0, len(pixels), 64)]
        embeddings[name] = torch.cat(chunks)
        predictions[name] = (embeddings[name] @ F.normalize(text_features(ids), dim=-1).T).argmax(-1).numpy()
    reference, predicted = embeddings.pop("fp32"), predictions.pop("fp32")
    rows = []
    for name, vectors in embeddings.items():
        cosine = (vectors * reference).sum(-1)
        agree = (predictions[name] == predicted).mean()
        top1 = "" if truth is None else f"{100 * (predictions[name] == truth).mean():.2f}%"
        rows.append(f"| {name} | {cosine.min():.5f} | {cosine.mean():.6f} | {100 * agree:.2f}% | {top1} |")
    if truth is not None:
        rows.append(f"| fp32 (reference) | 1 | 1 | 100% | {100 * (predicted == truth).mean():.2f}% |")
    return rows


def run_accuracy(args: argparse.Namespace) -> None:
    names = [n for n in mode_names(args) if n != "fp32"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiny = siglip.SiglipModel.from_pretrained("siglip-tiny-fashion")
        processor = siglip.SiglipProcessor.from_pretrained("siglip-tiny-fashion")
        images, truth = fashion_test_images(args.images)
        calibration = fashion_train_images(64)
        print(f"\nbundled siglip-tiny-fashion, {len(images)} Fashion-MNIST test images, 10 classes")
        print(
            "\n| mode | min cosine | mean cosine | top-1 agreement with fp32 | top-1 accuracy |\n|---|---:|---:|---:|---:|"
        )
        rows = accuracy_rows(
            tiny, processor, list(images), FASHION_CLASSES, names, tmp / "tiny", truth, list(calibration)
        )
        for row in rows:
            print(row, flush=True)

        _, base = reference_and_ours("base16-224", tmp / "base")
        processor = siglip.SiglipProcessor.from_pretrained(tmp / "base")
        photos = [str(p) for p in make_jpegs(tmp, args.photos)]
        print(f"\nrandom-weight base16-224, {len(photos)} 640x480 photos, 10 labels")
        print("\n| mode | min cosine | mean cosine | top-1 agreement with fp32 | |\n|---|---:|---:|---:|---|")
        (tmp / "calibration").mkdir()
        others = [str(p) for p in make_jpegs(tmp / "calibration", 32, seed=2)]
        for row in accuracy_rows(
            base, processor, photos, PHOTO_LABELS, names, tmp / "base-onnx", None, others
        ):
            print(row, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["peak", "towers", "modes", "accuracy", "profile"])
    parser.add_argument("--shapes", nargs="+", default=list(RELEASED_SHAPES), choices=list(SHAPES))
    parser.add_argument(
        "--parts", nargs="+", default=["image", "text", "full"], choices=["image", "text", "full"]
    )
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--batch", type=int, default=8, help="modes: the batch size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="also time bf16 (slow without bf16 units)")
    parser.add_argument("--images", type=int, default=2000, help="accuracy: Fashion-MNIST test images")
    parser.add_argument("--photos", type=int, default=64, help="accuracy: photos for the base model")
    parser.add_argument(
        "--modes", nargs="+", help="modes/accuracy: only these siglip modes (e.g. bf16 bf16+compile)"
    )
    parser.add_argument("--profile-modes", nargs="+", default=["fp32", "int8"], help="profile: the modes")
    parser.add_argument(
        "--profile-threads", nargs="+", type=int, help="profile: thread counts to compare (default: torch's)"
    )
    parser.add_argument("--profile-top", type=int, default=12, help="profile: operators listed")
    parser.add_argument(
        "--threads", type=int, help="torch threads (1: ratios that a shared, loaded machine disturbs least)"
    )
    parser.add_argument(
        "--emulate-cpu", choices=list(EMULATED_CPUS),
        help="hold torch's kernel libraries to the instructions of an older CPU (see _common.EMULATED_CPUS)",
    )  # fmt: skip
    args = parser.parse_args()
    emulate_cpu(args.emulate_cpu)
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformers

    warnings.simplefilter("ignore")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    print(machine_line())
    peaks = {
        "fp32": matmul_peak(torch.float32),
        "bf16": matmul_peak(torch.bfloat16, sizes=(1024,), repeats=2),
    }
    print(f"matmul peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.1f} GFLOP/s")
    if args.what == "towers":
        run_towers(args, peaks)
    elif args.what == "modes":
        run_modes(args, peaks)
    elif args.what == "accuracy":
        run_accuracy(args)
    elif args.what == "profile":
        run_profile(args)


if __name__ == "__main__":
    main()
