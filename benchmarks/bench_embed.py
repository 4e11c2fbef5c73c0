"""The whole image-embedding job: `siglip embed` against the obvious transformers loop, on a folder of JPEGs.

    python benchmarks/bench_embed.py [--images 500] [--batch-size 32] [--bf16] [--only TEXT ...]
                                     [--runtimes "openvino int8" "onnxruntime int8" ...] [--rounds 1]
                                     [--paired ROUNDS]

A random-weight base/16-224 model is built in transformers and saved with a processor; siglip loads the same
files. The transformers loop is what its documentation shows: per batch of paths, open the images with PIL,
run `SiglipImageProcessorPil` (PIL backend), then `get_image_features` under `torch.inference_mode`, normalise.
siglip runs `embed_to_file` with the same PIL backend (`--image-backend pil`) (what `siglip embed --out vectors.npy` runs: decoding workers, the model, a
resumable journal, the .npy and its manifest) in its default mode and with the inference options. Every run
is timed `--rounds` times (the runs taking turns; the table gives medians) from the list of files to the embeddings in memory (transformers, its model already loaded) or
on disk (siglip, loading the model and quantising or compiling it included); the
table gives images/s, the speed-up against the transformers loop in fp32, and the lowest cosine between
each run's embeddings and that loop's.

`--runtimes` adds the same loop with the image tower in OpenVINO or ONNX Runtime (bench_runtimes.py: converted
from siglip's ONNX export, int8 calibrated or quantised there, all cores): what a user of those runtimes runs,
their one-off conversion and quantisation not counted.

`--paired ROUNDS` then times each run back to back with the transformers fp32 loop, the two taking turns at
going first, and gives the median and range of those per-round speed-ups (`_common.paired_speedups`): on a
host whose speed drifts over minutes, the medians of the first table can move more than the runs differ.

The photos are `--images` distinct 640x480 JPEGs cut from scikit-image's sample photos.
"""

from __future__ import annotations

import argparse
import os
import statistics
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
from _common import (
    EMULATED_CPUS,
    SHAPES,
    emulate_cpu,
    features_tensor,
    machine_line,
    make_jpegs,
    paired_speedups,
    random_checkpoint,
)
from bench_runtimes import RUNTIMES
from siglip.tools.embeddings.compiled import CACHED, compile_pays
from siglip.tools.embeddings.precision import resolve_precision
from siglip.tools.embeddings.writers import embed_to_file


def processor_loop(
    features: Callable[[torch.Tensor], torch.Tensor], processor: object, paths: list[str], batch_size: int
) -> np.ndarray:
    """The documented loop: per batch of paths, PIL open, the processor, `features`, normalise."""
    chunks = []
    for start in range(0, len(paths), batch_size):
        images = [Image.open(p).convert("RGB") for p in paths[start : start + batch_size]]
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            chunks.append(F.normalize(features(pixels).float(), dim=-1).cpu().numpy())
    return np.concatenate(chunks)


def transformers_features(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """`get_image_features` of a transformers model, pixels cast to its device and dtype."""
    parameter = next(model.parameters())
    return lambda pixels: features_tensor(
        model.get_image_features(pixel_values=pixels.to(parameter.device, parameter.dtype))
    )


def runtime_features(
    model_dir: Path, directory: Path, names: list[str], threads: int, work: Path | None
) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The image tower in each OpenVINO / ONNX Runtime runtime `names` of bench_runtimes ("openvino int8"),
    built from siglip's ONNX export of the model in `model_dir` (int8 calibrated on other photos; the export
    and OpenVINO's int8 model reused from `work` when there)."""
    from bench_runtimes import build_runtime, onnx_files, tower_inputs

    model = siglip.SiglipModel.from_pretrained(model_dir).eval()
    onnx_paths = onnx_files(model, work or directory)
    calibration = list(tower_inputs(directory, model_dir, "image", 32, seed=2)[:, None])
    runtimes = {}
    for name in names:
        runtime = build_runtime(name, model, onnx_paths, "image", threads, calibration, directory)
        print(f"{name}: prepared in {runtime.prepare_s:.1f} s (not part of its loop's time)", flush=True)
        runtimes[name] = lambda pixels, f=runtime.features: torch.from_numpy(f(pixels.numpy()))
    return runtimes


LOADING: list[float] = []  # seconds each siglip run spent loading the model and putting it in its mode


def siglip_embed(
    directory: Path, paths: list[str], out: Path, batch_size: int, **options: object
) -> np.ndarray:
    start = time.perf_counter()
    embedder = siglip.Embedder.from_pretrained(
        directory, **{"device": "cpu", "image_backend": "pil", **options}
    )
    LOADING.append(time.perf_counter() - start)
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
    parser.add_argument("--shape", default="base16-224", choices=list(SHAPES))
    parser.add_argument(
        "--runtimes", nargs="+", default=[], choices=[r for r in RUNTIMES if r.startswith(("openvino", "onnxruntime"))],
        metavar="RUNTIME", help="also loops with these OpenVINO / ONNX Runtime towers (bench_runtimes.py names)",
    )  # fmt: skip
    parser.add_argument(
        "--work",
        type=Path,
        help="the ONNX export and OpenVINO's int8 model of bench_runtimes.py --work, reused",
    )
    parser.add_argument(
        "--skip", nargs="+", default=[], metavar="NAME", help="leave out the runs of exactly these names"
    )
    parser.add_argument("--rounds", type=int, default=1, help="time every run this many times, taking turns")
    parser.add_argument(
        "--paired", type=int, default=0, metavar="ROUNDS",
        help="then time each run back to back with the transformers fp32 loop this many times (speed-up ratios)",
    )  # fmt: skip
    parser.add_argument(
        "--emulate-cpu", choices=list(EMULATED_CPUS),
        help="hold torch's kernel libraries to the instructions of an older CPU (see _common.EMULATED_CPUS)",
    )  # fmt: skip
    args = parser.parse_args()
    emulate_cpu(args.emulate_cpu)

    import transformers

    warnings.simplefilter("ignore")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = tmp / "model"
        model = random_checkpoint(args.shape, model_dir)
        image_processor = getattr(
            transformers, "SiglipImageProcessorPil", transformers.SiglipImageProcessor
        )()
        (tmp / "photos").mkdir()
        paths = [str(p) for p in make_jpegs(tmp / "photos", args.images)]
        out = tmp / "vectors.npy"
        calibration = tmp / "calibration"
        calibration.mkdir()
        make_jpegs(calibration, 32, seed=2)

        runs: dict[str, Callable[[], np.ndarray]] = {
            "transformers loop, fp32": lambda: processor_loop(
                transformers_features(model), image_processor, paths, args.batch_size
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
            "siglip embed --precision int8 --compile": lambda: siglip_embed(
                model_dir, paths, out, args.batch_size, precision="int8", compile=True
            ),
            "siglip embed --precision fp32 --compile": lambda: siglip_embed(
                model_dir, paths, out, args.batch_size, precision="fp32", compile=True
            ),
            "siglip embed --precision fp32": lambda: siglip_embed(
                model_dir, paths, out, args.batch_size, precision="fp32"
            ),
            # calibrated on the 32 photos OpenVINO's int8 (NNCF) is calibrated on (`runtime_features`): other
            # crops of the same scikit-image photos as the embedded ones
            "siglip embed --precision int8-static": lambda: siglip_embed(
                model_dir,
                paths,
                out,
                args.batch_size,
                precision="int8-static",
                calibration=[str(calibration)],
            ),
        }
        if args.bf16:
            bf16 = transformers.SiglipModel.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
            runs["transformers loop, bf16"] = lambda: processor_loop(
                transformers_features(bf16), image_processor, paths, args.batch_size
            )
            runs["siglip embed --precision bf16"] = lambda: siglip_embed(
                model_dir, paths, out, args.batch_size, precision="bf16"
            )
            runs["siglip embed --precision bf16 --compile"] = lambda: siglip_embed(
                model_dir, paths, out, args.batch_size, precision="bf16", compile=True
            )
        # the command as a user runs it: auto precision (bf16 with bf16 units, int8 on other x86 CPUs), the
        # default image backend, and compiled where the job is big enough to pay it back, or where an earlier
        # run left the package in $SIGLIP_COMPILED_CACHE (`siglip embed`'s own choice; a compile is counted)
        cpu = torch.device("cpu")
        choice = compile_pays(
            siglip.AutoConfig.from_pretrained(model_dir), len(paths), resolve_precision("auto", cpu).name, cpu
        )
        said = {True: "compiled", CACHED: "compiled if its package is cached", False: "not compiled"}
        print(f"all defaults: {said[choice.compile]} ({choice.why})", flush=True)
        runs["siglip embed, all defaults"] = lambda: siglip_embed(
            model_dir, paths, out, args.batch_size, image_backend=None, compile=choice.compile
        )

        runtimes = {}
        if args.runtimes:
            work = args.work / args.shape if args.work else None
            runtimes = runtime_features(model_dir, tmp, args.runtimes, torch.get_num_threads(), work)
        for name, features in runtimes.items():
            runs[f"{name} loop"] = lambda f=features: processor_loop(
                f, image_processor, paths, args.batch_size
            )

        if (
            args.only
        ):  # the loops always run: the transformers fp32 one is what the others are measured against
            runs = {
                n: r for n, r in runs.items() if not n.startswith("siglip") or any(t in n for t in args.only)
            }
        runs = {name: run for name, run in runs.items() if name not in args.skip}
        times: dict[str, list[float]] = {name: [] for name in runs}
        loading: dict[str, list[float]] = {name: [] for name in runs}
        vectors: dict[str, np.ndarray] = {}
        for _ in range(args.rounds):  # the runs take turns, so that the machine's drift hits all alike
            for name, run in runs.items():
                LOADING.clear()
                start = time.perf_counter()
                vectors[name] = run()
                times[name].append(time.perf_counter() - start)
                loading[name].append(sum(LOADING))
                reference = vectors["transformers loop, fp32"]  # the first run
                cosine = (vectors[name] * reference).sum(-1).min()
                print(
                    f"{name}: {len(paths) / times[name][-1]:.2f} images/s, min cosine {cosine:.5f}, "
                    f"loading {loading[name][-1]:.1f} s; load {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
        results = {name: (statistics.median(times[name]), vectors[name]) for name in runs}
        paired = paired_speedups(runs, "transformers loop, fp32", args.paired) if args.paired else {}

    base_seconds, reference = results["transformers loop, fp32"]
    print(f"\n{len(paths)} JPEGs (640x480), batch {args.batch_size}, {args.shape}; {machine_line()}")
    print(
        "\n| run | images/s | vs transformers fp32 loop | min cosine vs that loop | loading the model s |"
        "\n|---|---:|---:|---:|---:|"
    )
    for name, (seconds, vectors) in results.items():
        cosine = (vectors * reference).sum(-1).min()
        load = statistics.median(loading[name])
        print(
            f"| {name} | {len(paths) / seconds:.2f} | {base_seconds / seconds:.2f}x | {cosine:.5f} | "
            f"{f'{load:.1f}' if load else ''} |"
        )
    if paired:
        print(
            f"\nPaired with the transformers fp32 loop, {args.paired} rounds: median (range) of the speed-ups"
        )
        print("\n| run | vs transformers fp32 loop |\n|---|---:|")
        for name, ratios in paired.items():
            print(f"| {name} | {statistics.median(ratios):.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f}) |")


if __name__ == "__main__":
    main()
