"""siglip's inference modes against OpenVINO and ONNX Runtime on the same CPU, weights and inputs, in one process.

    python benchmarks/bench_runtimes.py [--part image|text] [--batches 1 8 32] [--threads 1] [--repeats 3]
                                        [--runtimes NAME ...] [--shape base16-224]

A random-weight model of `--shape` is built in transformers, saved and loaded by siglip (as
`bench_models.py` does: no weights can be downloaded here); both towers are exported to ONNX with
`siglip.tools.embeddings.onnx_export.export_onnx`, and every other runtime starts from that export:

- transformers: its SiglipModel with the same weights, float32 or bfloat16 (the issue's yardsticks);
- siglip: the precision words of `siglip.tools.embeddings.precision` (fp32, bf16, int8; `+compile`: compiled;
  int8-static, compiled, calibrated on the same `--calibration` inputs as OpenVINO's int8);
- OpenVINO (`openvino`, the `bench` extra): the export read by `Core.read_model`, reshaped to each batch
  size (static shapes: OpenVINO's best case) and compiled for the CPU with `INFERENCE_PRECISION_HINT` f32 or
  bf16 (OpenVINO's own default on a CPU with bf16 units is bf16: the fp32 row asks for f32), one stream,
  `--threads` threads; int8 is NNCF's post-training quantisation (`nncf.quantize`, transformer preset, static
  activation scales calibrated on `--calibration` inputs that are not the timed ones), compiled with f32 for
  what stays in floating point (as siglip's int8 keeps it in fp32);
- ONNX Runtime: the export in an `InferenceSession` (CPU provider, all graph optimisations, `--threads`
  intra-op threads); int8 is `onnxruntime.quantization.quantize_dynamic` (int8 weights, per-batch activation
  scales: the same scheme as siglip's int8). ONNX Runtime's CPU provider has no bf16 matrix products on x86.

The image tower's inputs are 640x480 photos (crops of scikit-image's samples) through the model's image
processor; the text tower's are captions padded to the model's 64 positions. Each table gives items/s
(medians of `--repeats` alternating rounds after a warm-up round that also compiles), the speed against
siglip fp32 (whose kernels are transformers' own: bench_models.py), the lowest cosine of each runtime's
embeddings to siglip fp32's, and how long each runtime took to prepare (export, convert, quantise, compile:
a one-off cost that a saved OpenVINO IR or ONNX file pays once, siglip's modes at every load). `--paired
RUNTIME` adds each runtime's speed against RUNTIME as the median and range of per-round ratios, the two timed
back to back (on a host whose speed drifts between minutes, the medians above can mislead).
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import siglip
from _common import SHAPES, features_tensor, machine_line, make_jpegs, paired_speedups, time_alternately
from bench_models import mode_runners, reference_and_ours
from bench_preprocessing import make_captions
from siglip.tools.embeddings.calibration import Calibration
from siglip.tools.embeddings.onnx_export import FIXRES_TOWER, TEXT_TOWER, export_onnx

RUNTIMES = (
    "transformers fp32", "transformers bf16",
    "siglip fp32", "siglip fp32+compile", "siglip bf16", "siglip bf16+compile", "siglip int8", "siglip int8+compile", "siglip int8-static",
    "openvino fp32", "openvino bf16", "openvino int8",
    "onnxruntime fp32", "onnxruntime int8",
)  # fmt: skip
Features = Callable[[np.ndarray], np.ndarray]  # a batch of tower inputs -> float32 features (unnormalised)


@dataclass
class Runtime:
    """A runtime's tower, ready to call, and what preparing it took (export, conversion, quantisation)."""

    features: Features
    prepare_s: float


def openvino_tower(
    onnx_path: Path, precision: str, threads: int, calibration: list[np.ndarray] | None = None
) -> Features:
    """An OpenVINO CPU tower from an ONNX export: `precision` "fp32", "bf16" or "int8" (NNCF, calibrated on
    `calibration` batches; the quantised model is kept beside the export and reused, as a user keeps the IR);
    compiled for each input shape it meets (static shapes), `threads` threads."""
    import openvino as ov

    core = ov.Core()
    quantized = onnx_path.with_name(f"{onnx_path.stem}.openvino-int8-{len(calibration or ())}.xml")
    if precision == "int8" and quantized.exists():
        model = core.read_model(str(quantized))
    elif precision == "int8":
        import nncf

        model = nncf.quantize(
            core.read_model(str(onnx_path)),
            nncf.Dataset(calibration),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=sum(len(batch) for batch in calibration),
        )
        ov.save_model(model, str(quantized))
    else:
        model = core.read_model(str(onnx_path))
    config = {
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
    }
    compiled: dict[tuple[int, ...], object] = {}

    def features(x: np.ndarray) -> np.ndarray:
        if x.shape not in compiled:
            static = model.clone()
            static.reshape({static.inputs[0].get_any_name(): list(x.shape)})
            compiled[x.shape] = core.compile_model(static, "CPU", config)
        return np.array(compiled[x.shape]({0: x})[0], dtype=np.float32)

    return features


def onnxruntime_tower(onnx_path: Path, precision: str, threads: int, directory: Path) -> Features:
    """An ONNX Runtime CPU tower from an ONNX export: `precision` "fp32", or "int8" (`quantize_dynamic`,
    written into `directory`), `threads` intra-op threads."""
    import onnxruntime as ort

    if precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantized = directory / f"{onnx_path.stem}.int8.onnx"
        quantize_dynamic(onnx_path, quantized, weight_type=QuantType.QInt8)
        onnx_path = quantized
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0].astype(np.float32, copy=False)


def siglip_tower(
    model: siglip.SiglipModel, mode: str, part: str, directory: Path, calibration: list[np.ndarray]
) -> Features:
    """siglip's tower `part` in an inference mode of bench_models (e.g. "bf16+compile"; int8-static
    calibrated on the `calibration` batches)."""
    inputs = torch.from_numpy(np.concatenate(calibration))
    calibrated = Calibration(*((inputs, None) if part == "image" else (None, inputs)))
    images, texts = mode_runners(model, [mode], directory, calibrated)[mode]
    tower = images if part == "image" else texts
    return lambda x: tower(torch.from_numpy(x)).numpy()


def transformers_tower(reference: torch.nn.Module, precision: str, part: str) -> Features:
    """The transformers model's tower `part` with its weights in `precision` ("fp32" or "bf16")."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = copy.deepcopy(reference).to(dtype)

    def features(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            if part == "image":
                out = model.get_image_features(pixel_values=torch.from_numpy(x).to(dtype))
            else:
                out = model.get_text_features(input_ids=torch.from_numpy(x))
        return features_tensor(out).float().numpy()

    return features


def build_runtime(
    name: str, model: siglip.SiglipModel, onnx_paths: dict[str, Path], part: str, threads: int,
    calibration: list[np.ndarray], directory: Path, reference: torch.nn.Module | None = None,
) -> Runtime:  # fmt: skip
    """One runtime of RUNTIMES for the tower `part` ("image" or "text"), timed while it is prepared
    (`reference`: the transformers model with the same weights, for the transformers rows)."""
    start = time.perf_counter()
    library, precision = name.split(" ")
    onnx_path = onnx_paths["vision" if part == "image" else "text"]
    if library == "transformers":
        features = transformers_tower(reference, precision, part)
    elif library == "siglip":
        features = siglip_tower(model, precision, part, directory, calibration)
    elif library == "openvino":
        features = openvino_tower(onnx_path, precision, threads, calibration)
    else:
        features = onnxruntime_tower(onnx_path, precision, threads, directory)
    return Runtime(features, time.perf_counter() - start)


def onnx_files(model: siglip.SiglipModel, work: Path) -> dict[str, Path]:
    """siglip's ONNX export of `model` in `work`/onnx, made unless it is there (`--work`: runs of one shape,
    whose random weights are the same every time, share it and the quantised models beside it)."""
    directory = work / "onnx"
    paths = {"vision": directory / FIXRES_TOWER.filename, "text": directory / TEXT_TOWER.filename}
    if all(path.exists() for path in paths.values()):
        return paths
    return export_onnx(model, directory)


def tower_inputs(directory: Path, model_dir: Path, part: str, count: int, seed: int) -> np.ndarray:
    """`count` real inputs of the tower `part`: processed 640x480 photos, or captions padded to the model's
    length (each `seed` gives other photos or captions)."""
    processor = siglip.SiglipProcessor.from_pretrained(model_dir)
    if part == "image":
        folder = directory / f"photos{seed}"
        folder.mkdir()
        photos = [str(p) for p in make_jpegs(folder, count, seed=seed)]
        return processor.image_processor(photos, return_tensors="np")["pixel_values"]
    length = siglip.SiglipConfig.from_pretrained(model_dir).text_config.max_position_embeddings
    captions = make_captions(count, seed=seed)
    return processor.tokenizer(captions, padding="max_length", max_length=length, return_tensors="np")[
        "input_ids"
    ].astype(np.int64)


def drop_other_tower(model: torch.nn.Module, part: str) -> None:
    """Free the tower that is not timed (the modes copy the model; base's other tower is 0.4 GB)."""
    setattr(model, "text_model" if part == "image" else "vision_model", torch.nn.Identity())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=["image", "text"], default="image")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument(
        "--threads", type=int, default=1, help="threads of every runtime (torch, OpenVINO, ORT)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--calibration", type=int, default=32, help="int8 calibration inputs (OpenVINO, siglip int8-static)"
    )
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    parser.add_argument(
        "--paired",
        metavar="RUNTIME",
        help="also each runtime's speed against this one as the median of --paired-rounds ratios, each "
        "timing the two back to back (for a host whose speed drifts)",
    )
    parser.add_argument("--paired-rounds", type=int, default=15)
    parser.add_argument("--shape", default="base16-224", choices=list(SHAPES))
    parser.add_argument(
        "--work",
        type=Path,
        help="keep the ONNX export and OpenVINO's int8 model here, to reuse in later runs",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import transformers

    warnings.simplefilter("ignore")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    print(machine_line(), flush=True)
    runtimes = ["siglip fp32"] + [r for r in args.runtimes if r != "siglip fp32"]
    if args.paired and args.paired not in runtimes:
        parser.error(f"--paired {args.paired!r} is not one of the runtimes: {', '.join(runtimes)}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        theirs, model = reference_and_ours(args.shape, tmp / "model")
        drop_other_tower(theirs, args.part)
        start = time.perf_counter()
        onnx_paths = onnx_files(model, args.work / args.shape if args.work else tmp)
        export_s = time.perf_counter() - start
        drop_other_tower(model, args.part)
        gc.collect()
        inputs = tower_inputs(tmp, tmp / "model", args.part, max(args.batches), seed=1)
        calibration = list(tower_inputs(tmp, tmp / "model", args.part, args.calibration, seed=2)[:, None])
        built = {}
        for name in runtimes:
            built[name] = build_runtime(
                name, model, onnx_paths, args.part, args.threads, calibration, tmp, theirs
            )
            print(f"{name}: prepared in {built[name].prepare_s:.1f} s", flush=True)
        del model, theirs
        gc.collect()

        unit = "images" if args.part == "image" else "texts"
        tower = TEXT_TOWER if args.part == "text" else FIXRES_TOWER
        print(
            f"\nONNX export of both towers (or its reuse from --work): {export_s:.1f} s; OpenVINO and ONNX Runtime start from it"
        )
        for batch in args.batches:
            x = np.ascontiguousarray(inputs[:batch])
            first = {}
            for name, runtime in built.items():  # warm-up: compiles (torch.compile, OpenVINO's shapes)
                start = time.perf_counter()
                first[name] = runtime.features(x)
                first[name] = (first[name], time.perf_counter() - start)
            reference = torch.from_numpy(first["siglip fp32"][0])
            seconds = time_alternately(
                {name: (lambda f=runtime.features, x=x: f(x)) for name, runtime in built.items()},
                args.repeats,
                warmup=0,
            )
            print(
                f"\n{args.shape} {args.part} tower ({tower.method}), batch {batch}, {args.threads} thread(s); "
                f"{machine_line()}"
            )
            print(
                f"\n| runtime | {unit}/s | vs siglip fp32 | min cosine vs siglip fp32 | prepare s | first call s |"
            )
            print("|---|---:|---:|---:|---:|---:|")
            base = seconds["siglip fp32"]
            for name, s in seconds.items():
                cosine = F.cosine_similarity(torch.from_numpy(first[name][0]).float(), reference).min().item()
                print(
                    f"| {name} | {batch / s:.2f} | {base / s:.2f}x | {cosine:.6f} | {built[name].prepare_s:.1f} | "
                    f"{first[name][1]:.1f} |",
                    flush=True,
                )
            if args.paired:
                speedups = paired_speedups(
                    {name: (lambda f=runtime.features, x=x: f(x)) for name, runtime in built.items()},
                    args.paired,
                    args.paired_rounds,
                )
                print(f"\n| runtime | vs {args.paired}, paired rounds: median | range |\n|---|---:|---:|")
                for name, ratios in speedups.items():
                    print(
                        f"| {name} | {statistics.median(ratios):.2f}x | {ratios[0]:.2f}-{ratios[-1]:.2f}x |"
                    )
            print("\n| precision | siglip best | vs openvino | vs onnxruntime |\n|---|---|---:|---:|")
            for precision in ("fp32", "bf16", "int8"):
                ours = {n: s for n, s in seconds.items() if n.startswith(f"siglip {precision}")}
                if not ours:
                    continue
                best = min(ours, key=ours.get)
                ratios = [
                    f"{seconds[f'{library} {precision}'] / ours[best]:.2f}x"
                    if f"{library} {precision}" in seconds
                    else "n/a"
                    for library in ("openvino", "onnxruntime")
                ]
                print(f"| {precision} | {best} | {' | '.join(ratios)} |", flush=True)


if __name__ == "__main__":
    main()
